/**
 * The clock every hvlab host of a machine shares. The hosts of a cluster are processes of one
 * kernel (each in its own network namespace, none in its own time namespace), so CLOCK_MONOTONIC
 * reads the same in all of them: an instant one host records is comparable with another's. A
 * migration measures its downtime on it, from the source's freeze to the destination's first
 * dispatch of a VP, rather than to the moment the destination's answer reaches the source. The
 * kernel's boot id names the clock: two hosts whose ids differ (another machine, were there one)
 * do not share it.
 */
import { readFileSync } from 'node:fs';

let bootId: string | null | undefined;

/** This kernel's boot id (/proc/sys/kernel/random/boot_id), or null where it cannot be read. */
export function hostClockId(): string | null {
  if (bootId !== undefined) return bootId;
  try {
    const id = readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
    bootId = /^[0-9a-f-]{36}$/.test(id) ? id : null;
  } catch {
    bootId = null;
  }
  return bootId;
}

/** CLOCK_MONOTONIC now, in nanoseconds (as a number: exact below 2^53 ns, 104 days of uptime). */
export function monoNs(): number {
  return Number(process.hrtime.bigint());
}
