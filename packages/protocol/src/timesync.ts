/**
 * Time-sync integration service, version 4 ("ref data"): the host's clock as a FILETIME with the
 * partition reference time it was taken at, so the guest can account for the delivery delay.
 */
import { IcError } from './ic.js';
import { viewOf, checkUint, checkU64, checkInt8, requireBytes } from './ic-bytes.js';

const TimeSyncAt = { parentTime: 0, referenceTime: 8, flags: 16, leapFlags: 17, stratum: 18, reserved: 19, size: 22 } as const;
export const TimeSyncFlags = { Probe: 0, Sync: 1, Sample: 2 } as const;
export interface TimeSample { parentTime: bigint; referenceTime: bigint; flags: number; leapFlags: number; stratum: number }

export function encodeTimeSync(t: TimeSample): Uint8Array {
  const out = new Uint8Array(TimeSyncAt.size);
  const v = viewOf(out);
  v.setBigUint64(TimeSyncAt.parentTime, checkU64('Time sync parentTime', t.parentTime), true);
  v.setBigUint64(TimeSyncAt.referenceTime, checkU64('Time sync referenceTime', t.referenceTime), true);
  v.setUint8(TimeSyncAt.flags, checkUint('Time sync flags', t.flags, TimeSyncFlags.Sample));
  v.setInt8(TimeSyncAt.leapFlags, checkInt8('Time sync leapFlags', t.leapFlags));
  v.setInt8(TimeSyncAt.stratum, checkInt8('Time sync stratum', t.stratum));
  return out;
}
export function decodeTimeSync(b: Uint8Array): TimeSample {
  const v = requireBytes('Time sync body', b, TimeSyncAt.size);
  const flags = v.getUint8(TimeSyncAt.flags);
  if (flags > TimeSyncFlags.Sample) throw new IcError(`Time sync flags ${flags} is none of probe (0), sync (1), sample (2).`);
  return {
    parentTime: v.getBigUint64(TimeSyncAt.parentTime, true),
    referenceTime: v.getBigUint64(TimeSyncAt.referenceTime, true),
    flags,
    leapFlags: v.getInt8(TimeSyncAt.leapFlags),
    stratum: v.getInt8(TimeSyncAt.stratum),
  };
}

/** Milliseconds from 1601-01-01 to 1970-01-01 UTC. */
const EPOCH_1601_MS = 11644473600000;
const TICKS_PER_MS = 10000n;

/** A Date.now()-style time (ms since 1970, fractions kept to 100 ns) as 100 ns units since 1601. */
export function msToFiletime(ms: number): bigint {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) throw new RangeError(`Time ${String(ms)} ms is not a finite number.`);
  const whole = Math.floor(ms);
  const ticks = BigInt(whole + EPOCH_1601_MS) * TICKS_PER_MS + BigInt(Math.round((ms - whole) * 10000));
  if (ticks < 0n) throw new RangeError(`Time ${ms} ms is before 1601.`);
  return ticks;
}
/** 100 ns units since 1601 as ms since 1970 (with a fractional part). */
export function filetimeToMs(ft: bigint): number {
  let q = ft / TICKS_PER_MS;
  let r = ft % TICKS_PER_MS;
  if (r < 0n) {
    q -= 1n;
    r += TICKS_PER_MS;
  }
  return Number(q) - EPOCH_1601_MS + Number(r) / 10000;
}
