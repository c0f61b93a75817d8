/**
 * Built-in workloads. Each is a step function run by a VP between interrupt checks; it keeps all
 * of its state in guest memory (the workload page), so a paused VM holds still and a restored one
 * continues. `progress` is what the status page publishes.
 */
import { StatusPage, STATUS_PAGE_GPA, WORKLOAD_PAGE_GPA, WorkloadPage, DEFAULT_COUNTER_RATE } from '@hvlab/protocol';
import type { GuestMemory } from './memory.js';

export interface Workload {
  /** Runs one short step; returns how long the VP may halt before the next (ms). */
  step(nowMs: number): number;
}

/** Halts forever (woken only by interrupts). */
export function idleWorkload(): Workload {
  return { step: () => 1000 };
}

/**
 * Increments a 64-bit counter in guest memory at a steady rate. Credit accrues with running time,
 * capped at 50 ms per step, so a paused or descheduled VM does not burst afterwards.
 */
export function counterWorkload(mem: GuestMemory, rate: number): Workload {
  const r = rate > 0 ? rate : DEFAULT_COUNTER_RATE;
  mem.setU32(WORKLOAD_PAGE_GPA + WorkloadPage.ratePerSecond, r);
  const counter = mem.i64(WORKLOAD_PAGE_GPA + WorkloadPage.counter);
  const progress = mem.i64(STATUS_PAGE_GPA + StatusPage.progress);
  let last = -1;
  let credit = 0;
  const periodMs = Math.max(1, 1000 / r);
  return {
    step(now) {
      if (last >= 0) credit += (Math.min(now - last, 50) * r) / 1000;
      last = now;
      const n = Math.floor(credit);
      if (n > 0) {
        credit -= n;
        const v = Atomics.add(counter, 0, BigInt(n)) + BigInt(n);
        Atomics.store(progress, 0, v);
      }
      return periodMs;
    },
  };
}
