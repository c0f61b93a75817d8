/**
 * The wait for a suspension of a partition's VPs (a save's or a live migration's freeze), by the
 * partition process and by the hypervisor (a GetVpState with `afterSuspension`).
 */
import { VpRegionHeader, suspensionCounted, suspensionTaken } from '@hvlab/protocol';
import { watchWord, wordWatchAvailable } from '@hvlab/shm';

export interface SuspensionWait {
  timeoutMs: number;
  /** True once the wait is called off (a thaw): it then ends with an error. */
  calledOff: () => boolean;
  /** Given the function that ends the current sleep early (null once the wait is over), for whoever calls the wait off. */
  onSleep?: (wake: (() => void) | null) => void;
}

/**
 * Waits until the scheduler has taken suspension number `seq` (VpRegionHeader.suspendTaken has
 * reached it, in int32 arithmetic) and every VP page of the `vpCount` shows its VP suspended or
 * absent. The partition process waits for this with the number the VMWP's Suspend call will get,
 * sent beside that call, so the wait may begin before the hypervisor has even counted the
 * suspension (the hypervisor waits too, for a GetVpState given the number): the number is
 * given, never read here (a suspension read here might be an earlier one the scheduler has not yet
 * seen thawed, its VP pages still showing Suspended). The scheduler wakes the word when it stores
 * it, and a word watch brings that to this event loop; without the addon, or while a VP page still
 * lags behind the count, a look each millisecond.
 */
export async function waitForSuspension(vpRegion: SharedArrayBuffer, vpCount: number, seq: number, o: SuspensionWait): Promise<void> {
  const i32 = new Int32Array(vpRegion);
  const taken = (): boolean => suspensionCounted(i32, seq);
  const vps = Array.from({ length: vpCount }, (_, i) => i);
  const stopped = (): boolean => suspensionTaken(i32, seq, vps);
  if (stopped()) return;
  let wake: (() => void) | null = null;
  let unwatch: (() => void) | null = null;
  if (wordWatchAvailable()) {
    try {
      unwatch = watchWord(vpRegion, VpRegionHeader.suspendTaken >> 2, () => wake?.());
    } catch { /* no watch: the looks below */ }
  }
  try {
    const t0 = Date.now();
    while (!stopped()) {
      if (o.calledOff()) throw new Error('the suspension was called off');
      if (Date.now() - t0 > o.timeoutMs) throw new Error(`a VP did not stop at a step boundary within ${o.timeoutMs / 1000} s`);
      // Until the number is taken, the watch's wake (and a look each 20 ms: a wait called off, or
      // a number that never comes, must still end); after it, a look each millisecond.
      await new Promise<void>((r) => {
        const t = setTimeout(r, unwatch && !taken() ? 20 : 1);
        wake = () => {
          clearTimeout(t);
          r();
        };
        o.onSleep?.(wake);
      });
      wake = null;
    }
    // Called off while it slept and the VPs stopped meanwhile: still called off. Returning would
    // let the partition process park its kernel after the thaw that called the freeze off, with
    // nobody left to thaw it (a freeze that failed fast: CI saw the next save wait 15 s).
    if (o.calledOff()) throw new Error('the suspension was called off');
  } finally {
    o.onSleep?.(null);
    unwatch?.();
  }
}
