/** Shutdown provider: asks the guest to shut down (or reboot); the guest answers, then goes. */
import { IcGuid, IcMessageType, IcStatus, type IcVersion } from '@hvlab/protocol';
import { encodeShutdown } from '@hvlab/protocol/shutdown';
import type { DeviceContext, VirtualDevice } from '../device.js';
import { icDevice, type IcService } from '../ic/device.js';
import { IcProvider, IcRequestError } from '../ic/provider.js';
import { decodeShutdownState, type ShutdownState } from './state.js';

export const ShutdownFlags = { Shutdown: 0, Force: 1, Reboot: 2 } as const;

export class ShutdownProvider extends IcProvider implements IcService<ShutdownState> {
  readonly service = 'shutdown' as const;
  readonly interfaceType = IcGuid.shutdown;
  readonly messageType = IcMessageType.Shutdown;
  protected readonly messageVersions: IcVersion[] = [{ major: 3, minor: 2 }, { major: 3, minor: 1 }, { major: 3, minor: 0 }, { major: 1, minor: 0 }];

  /** Resolves when the guest accepted the request; rejects if it refuses or does not answer. */
  async shutdown(opts: { flags?: number; reason?: number; timeoutSeconds?: number; message?: string; answerTimeoutMs?: number } = {}): Promise<void> {
    if (!this.negotiated) throw new IcRequestError('the shutdown integration service is not connected');
    const a = await this.request(IcMessageType.Shutdown, encodeShutdown({
      reason: opts.reason ?? 0, timeoutSeconds: opts.timeoutSeconds ?? 30, flags: opts.flags ?? ShutdownFlags.Shutdown, message: opts.message ?? '',
    }), opts.answerTimeoutMs ?? 5000);
    if (a.header.status !== IcStatus.OK) throw new IcRequestError(`the guest refused to shut down (status 0x${a.header.status.toString(16)})`, a.header.status);
  }

  saveState(): ShutdownState {
    return { version: 1, ic: this.saveIc() };
  }

  restoreState(s: ShutdownState): void {
    this.restoreIc(s.ic);
  }
}

export function createDevice(ctx: DeviceContext): VirtualDevice<ShutdownState> {
  return icDevice(ctx, new ShutdownProvider(ctx.log), decodeShutdownState);
}
