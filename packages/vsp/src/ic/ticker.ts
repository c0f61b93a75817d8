/**
 * One timer for the periodic work of a worker's integration services (the heartbeat's beat, time
 * sync's sample), so that an idle VM wakes its worker, the hypervisor and its VP once per period
 * of the most frequent service instead of once per service.
 *
 * A job may run up to `earlyMs` before it is due, and does so only when the timer fires for
 * another job: the job then rides on that wake-up instead of waking the process on its own, as
 * Windows' coalescable timers do with their tolerable delay. Its next due time counts from the
 * time it was due, not from when it ran, so its average period stays `periodMs`. A job that fell
 * behind (a blocked event loop) runs once and counts its next period from now.
 */
import { holdSignals } from '@hvlab/protocol';

/** Node may fire a timer a little before its time by this clock: within this, a job is due. */
const SLOP_MS = 2;

interface Job {
  periodMs: number;
  earlyMs: number;
  due: number;
  fn: () => void;
}

export class IcTicker {
  private readonly jobs = new Set<Job>();
  private readonly pollers = new Set<() => void>();
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /**
   * Calls `fn` every `periodMs` (the first time `periodMs` from now); it may run up to `earlyMs`
   * early to share a wake-up. Returns the function that stops it.
   */
  every(periodMs: number, earlyMs: number, fn: () => void): () => void {
    if (!(periodMs > 0) || !Number.isFinite(periodMs)) throw new RangeError(`an integration service's period must be a positive number of ms, not ${periodMs}`);
    const job: Job = { periodMs, earlyMs: Math.max(0, Math.min(earlyMs, periodMs / 2)), due: this.now() + periodMs, fn };
    this.jobs.add(job);
    this.arm();
    return () => {
      if (this.jobs.delete(job)) this.arm();
    };
  }

  /**
   * Calls `fn` at each wake-up of the ticker, before the jobs: a polled channel's reads (its
   * answers to the previous period's requests, read before the next requests go). It never wakes
   * the ticker by itself. Returns the function that stops it.
   */
  poll(fn: () => void): () => void {
    const entry = (): void => fn();
    this.pollers.add(entry);
    return () => void this.pollers.delete(entry);
  }

  /** How many jobs are scheduled (tests). */
  get size(): number {
    return this.jobs.size;
  }

  /** When the timer fires next, by `now`'s clock; Infinity when nothing is scheduled. */
  get nextAt(): number {
    return this.timerAt;
  }

  /** Drops every job and poller. */
  clear(): void {
    this.jobs.clear();
    this.pollers.clear();
    this.arm();
  }

  /** Runs what is due, and what may run early with it; exposed for tests with a fake clock. */
  fire(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const now = this.now();
    const cutoff = now + SLOP_MS;
    const jobs = [...this.jobs];
    // The wake-up's packets go out together: every job writes its own, and the signals for them
    // wait for the end of the step (holdSignals), so the guest is signalled once for all (one
    // hypercall with every channel's flag), instead of once per service: the second signal waited
    // for the first's completion, a wake-up of this process, the hypervisor's thread and the VP.
    if (jobs.some((j) => j.due <= cutoff)) holdSignals(() => this.runDue(jobs, now, cutoff));
    this.arm();
  }

  private runDue(jobs: Job[], now: number, cutoff: number): void {
    for (const p of [...this.pollers]) {
      try {
        p();
      } catch {
        // As a job: one that throws must not stop the others.
      }
    }
    for (const j of jobs) {
      if (!this.jobs.has(j) || j.due - j.earlyMs > cutoff) continue;
      j.due += j.periodMs;
      if (j.due <= now) j.due = now + j.periodMs;
      try {
        j.fn();
      } catch {
        // A service's tick handles its own errors; one that throws must not stop the others.
      }
    }
  }

  private arm(): void {
    let next = Infinity;
    for (const j of this.jobs) next = Math.min(next, j.due);
    if (next === this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = next;
    if (next === Infinity) return;
    this.timer = setTimeout(() => this.fire(), Math.max(0, Math.ceil(next - this.now())));
    this.timer.unref?.();
  }
}

/** The worker's ticker: one VM's integration services per worker process. */
export const icTicker = new IcTicker();
