/**
 * The guest halves of heartbeat, shutdown, time sync and KVP exchange.
 *
 * * Heartbeat answers with the sequence number plus one, as Linux's hv_utils does.
 * * Shutdown answers OK and then calls the kernel's shutdown (which stops the VPs at a step
 *   boundary, closes the channels and unloads VMBus).
 * * Time sync computes host time from the sample and the reference time elapsed since it was
 *   taken, steps the guest clock on Sync (and on a Sample more than a second off) and slews half
 *   the offset otherwise; it answers with its clock reading from before the correction and that
 *   reading's reference time (hvlab extension) so the host can report the offset.
 * * KVP holds the external pool (host-written), the guest pool (guest-written) and computes the
 *   auto pool (host name, OS name, uptime) when asked.
 */
import {
  decodeHeartbeat, encodeHeartbeat, decodeShutdown, decodeTimeSync, encodeTimeSync, decodeKvp, encodeKvp, filetimeToMs, msToFiletime,
  IcGuid, IcMessageType, IcStatus, KvpOperation, KvpPool, TimeSyncFlags, type IcHeader, type IcVersion, type ShutdownRequest,
} from '@hvlab/protocol';
import { IcClient, type IcReply } from './client.js';

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

/** The guest's wall clock: host-independent once booted, corrected by time sync. */
export interface GuestClock {
  now(): number;
  adjust(deltaMs: number): void;
}

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

export interface KvpAutoValues {
  (): Record<string, string>;
}

export class KvpClient extends IcClient {
  readonly name = 'kvp';
  readonly interfaceType = IcGuid.kvp;
  readonly messageType = IcMessageType.Kvp;
  protected readonly messageVersions: IcVersion[] = [{ major: 5, minor: 0 }, { major: 4, minor: 0 }, { major: 3, minor: 0 }];
  readonly external = new Map<string, string>();
  readonly guest = new Map<string, string>();

  constructor(private readonly auto: KvpAutoValues) {
    super();
  }

  private pool(n: number): Map<string, string> | null {
    if (n === KvpPool.External) return this.external;
    if (n === KvpPool.Guest) return this.guest;
    if (n === KvpPool.Auto) return new Map(Object.entries(this.auto()));
    return null;
  }

  protected handle(_h: IcHeader, body: Uint8Array): IcReply {
    const m = decodeKvp(body);
    const pool = this.pool(m.pool);
    const answer = (status: number, key = m.key, value = ''): IcReply => ({ status, body: status === IcStatus.OK ? encodeKvp({ ...m, key, value }) : body.slice() });
    if (!pool) return answer(IcStatus.NotSupported);
    switch (m.operation) {
      case KvpOperation.Get: {
        const v = pool.get(m.key);
        return v === undefined ? answer(IcStatus.NotFound) : answer(IcStatus.OK, m.key, v);
      }
      case KvpOperation.Set:
        // The host writes only the external pool.
        if (m.pool !== KvpPool.External || m.key.length === 0) return answer(IcStatus.NotSupported);
        pool.set(m.key, m.value);
        return answer(IcStatus.OK, m.key, m.value);
      case KvpOperation.Delete:
        if (m.pool !== KvpPool.External) return answer(IcStatus.NotSupported);
        return pool.delete(m.key) ? answer(IcStatus.OK) : answer(IcStatus.NotFound);
      case KvpOperation.Enumerate: {
        const keys = [...pool.keys()].sort();
        if (m.index >= keys.length) return answer(IcStatus.NoMoreItems);
        const k = keys[m.index];
        return answer(IcStatus.OK, k, pool.get(k)!);
      }
      default:
        return answer(IcStatus.NotSupported);
    }
  }
}
