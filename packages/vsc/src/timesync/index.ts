/**
 * The guest half of time sync: computes host time from the sample and the reference time elapsed
 * since it was taken, steps the guest clock on Sync (and on a Sample more than a second off) and
 * slews half the offset otherwise; it answers with its clock reading from before the correction
 * and that reading's reference time (hvlab extension) so the host can report the offset.
 */
import { IcGuid, IcMessageType, IcStatus, type IcHeader, type IcVersion } from '@hvlab/protocol';
import { decodeTimeSync, encodeTimeSync, filetimeToMs, msToFiletime, TimeSyncFlags } from '@hvlab/protocol/timesync';
import type { DriverContext, GuestClock, GuestDriver } from '../driver.js';
import { IcClient, type IcReply } from '../ic/client.js';
import { decodeTimeSyncState, type TimeSyncState } from './state.js';

export class TimeSyncClient extends IcClient {
  readonly name = 'timesync';
  readonly interfaceType = IcGuid.timesync;
  readonly messageType = IcMessageType.TimeSync;
  protected readonly messageVersions: IcVersion[] = [{ major: 4, minor: 0 }, { major: 3, minor: 0 }];
  lastOffsetMs: number | null = null;

  constructor(private readonly clock: GuestClock) {
    super();
  }

  protected handle(_h: IcHeader, body: Uint8Array): IcReply {
    const t = decodeTimeSync(body);
    const guestMs = this.clock.now();
    const ref = process.hrtime.bigint() / 100n;
    // Host time now = the sample plus the reference time elapsed since it was taken.
    const hostMs = filetimeToMs(t.parentTime) + (t.referenceTime > 0n && ref >= t.referenceTime ? Number(ref - t.referenceTime) / 1e4 : 0);
    const offset = guestMs - hostMs;
    this.lastOffsetMs = offset;
    if (t.flags === TimeSyncFlags.Sync || Math.abs(offset) > 1000) this.clock.adjust(-offset);
    else if (t.flags === TimeSyncFlags.Sample) this.clock.adjust(-offset / 2);
    return { status: IcStatus.OK, body: encodeTimeSync({ ...t, parentTime: msToFiletime(guestMs), referenceTime: ref }) };
  }
}

export function createDriver(ctx: DriverContext): GuestDriver<TimeSyncState> {
  const c = new TimeSyncClient(ctx.clock);
  return {
    class: 'timesync',
    vmbus: c,
    save: () => ({ version: 1, ic: c.saveIc(), lastOffsetMs: c.lastOffsetMs }),
    decode: decodeTimeSyncState,
    restore: (s) => {
      c.restoreIc(s.ic);
      c.lastOffsetMs = s.lastOffsetMs;
    },
  };
}
