/** The guest half of heartbeat: answers with the sequence number plus one, as Linux's hv_utils does. */
import { IcGuid, IcMessageType, IcStatus, type IcHeader, type IcVersion } from '@hvlab/protocol';
import { decodeHeartbeat, encodeHeartbeat } from '@hvlab/protocol/heartbeat';
import type { DriverContext, GuestDriver } from '../driver.js';
import { IcClient, type IcReply } from '../ic/client.js';
import { decodeHeartbeatState, type HeartbeatState } from './state.js';

export class HeartbeatClient extends IcClient {
  readonly name = 'heartbeat';
  readonly interfaceType = IcGuid.heartbeat;
  readonly messageType = IcMessageType.Heartbeat;
  protected readonly messageVersions: IcVersion[] = [{ major: 3, minor: 0 }, { major: 1, minor: 0 }];
  sequence = 0n;

  protected handle(_h: IcHeader, body: Uint8Array): IcReply {
    const seq = decodeHeartbeat(body).sequence;
    this.sequence = (seq + 1n) & 0xffff_ffff_ffff_ffffn;
    return { status: IcStatus.OK, body: encodeHeartbeat(this.sequence) };
  }
}

export function createDriver(_ctx: DriverContext): GuestDriver<HeartbeatState> {
  const c = new HeartbeatClient();
  return {
    class: 'heartbeat',
    vmbus: c,
    save: () => ({ version: 1, ic: c.saveIc(), sequence: c.sequence.toString() }),
    decode: decodeHeartbeatState,
    restore: (s) => {
      c.restoreIc(s.ic);
      c.sequence = BigInt(s.sequence);
    },
  };
}
