/**
 * The guest half of shutdown: answers OK, then calls the kernel's shutdown (which stops the VPs at
 * a step boundary, closes the channels and unloads VMBus).
 */
import { IcGuid, IcMessageType, IcStatus, type IcHeader, type IcVersion } from '@hvlab/protocol';
import { decodeShutdown, type ShutdownRequest } from '@hvlab/protocol/shutdown';
import type { DriverContext, GuestDriver } from '../driver.js';
import { IcClient, type IcReply } from '../ic/client.js';
import { decodeShutdownState, type ShutdownState } from './state.js';

export class ShutdownClient extends IcClient {
  readonly name = 'shutdown';
  readonly interfaceType = IcGuid.shutdown;
  readonly messageType = IcMessageType.Shutdown;
  protected readonly messageVersions: IcVersion[] = [{ major: 3, minor: 2 }, { major: 3, minor: 1 }, { major: 3, minor: 0 }, { major: 1, minor: 0 }];
  private request: ShutdownRequest | null = null;

  constructor(private readonly onShutdown: (r: ShutdownRequest) => void) {
    super();
  }

  protected handle(_h: IcHeader, body: Uint8Array): IcReply {
    this.request = decodeShutdown(body);
    return { status: IcStatus.OK, body: body.slice() };
  }

  protected override afterReply(_h: IcHeader, reply: IcReply): void {
    const r = this.request;
    this.request = null;
    if (r && reply.status === IcStatus.OK) setImmediate(() => this.onShutdown(r));
  }
}

export function createDriver(ctx: DriverContext): GuestDriver<ShutdownState> {
  const c = new ShutdownClient((r) => ctx.shutdown(r));
  return {
    class: 'shutdown',
    vmbus: c,
    save: () => ({ version: 1, ic: c.saveIc() }),
    decode: decodeShutdownState,
    restore: (s) => c.restoreIc(s.ic),
  };
}
