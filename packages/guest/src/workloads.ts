/**
 * Guest tasks and the built-in workloads. A task is a 64-byte record in the task table in guest
 * memory (state, kind, owner VP, wake-up time, work done, four kind-specific fields); a VP claims a
 * runnable task with compare-and-swap, runs it in short steps, and puts it back. Because every
 * field lives in guest memory, a saved VM continues each task exactly where it stopped.
 *
 *   spin             one CPU-bound task per VP; a step is one work unit (`spinUnit`)
 *   sleep[:MS]       one task, woken by the VP's periodic synthetic timer every MS ms
 *   memdirty[:SIZE]  QEMU's migration-test guest: increments the first byte of every 4 KiB page
 *                    from GPA 0x100000 over SIZE bytes, endlessly, page after page
 *   counter[:RATE]   one task that sleeps and adds RATE per second of run time to a counter
 *   idle             no tasks
 */
import {
  STATUS_PAGE_GPA, StatusPage, WORKLOAD_PAGE_GPA, WorkloadPage, WORKLOAD_DATA_GPA, TASK_TABLE_GPA, TASK_BYTES, MAX_TASKS,
  Task, TaskState, TaskKind, DEFAULT_COUNTER_RATE, PAGE,
} from '@hvlab/protocol';
import type { GuestMemory } from './memory.js';

/** One work unit of `spin`: a fixed xorshift loop. The benchmark runs the same function in a plain thread. */
export const SPIN_ITERATIONS = 20000;
export function spinUnit(seed: number): number {
  let x = seed | 1;
  for (let i = 0; i < SPIN_ITERATIONS; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
  }
  return x;
}

/** Pages memdirty touches per step. */
const MEMDIRTY_PAGES_PER_STEP = 256;

export function taskGpa(i: number): number {
  return TASK_TABLE_GPA + i * TASK_BYTES;
}

export type StepResult = { kind: 'continue' } | { kind: 'sleep'; until: number };

export class TaskTable {
  constructor(readonly mem: GuestMemory) {}

  private static at(i: number, off: number): number {
    return TASK_TABLE_GPA + i * TASK_BYTES + off;
  }
  state(i: number): number {
    return this.mem.atomicLoad32(TaskTable.at(i, Task.state));
  }
  kind(i: number): number {
    return this.mem.i32(TaskTable.at(i, Task.kind));
  }
  field(i: number, off: number): number {
    return this.mem.f64(TaskTable.at(i, off));
  }
  setField(i: number, off: number, v: number): void {
    this.mem.setF64(TaskTable.at(i, off), v);
  }
  private setOwner(i: number, vp: number): void {
    this.mem.setI32(TaskTable.at(i, Task.owner), vp);
  }

  /** Creates the workload's tasks on a freshly booted guest. */
  create(name: string, arg: number, vpCount: number): void {
    this.mem.fill(TASK_TABLE_GPA, MAX_TASKS * TASK_BYTES, 0);
    let n = 0;
    const add = (kind: number, init: (i: number) => void = () => {}): void => {
      const i = n++;
      this.mem.setI32(TaskTable.at(i, Task.kind), kind);
      this.setOwner(i, -1);
      init(i);
      this.mem.atomicStore32(TaskTable.at(i, Task.state), TaskState.Runnable);
    };
    if (name === 'spin') for (let v = 0; v < Math.min(vpCount, MAX_TASKS); v++) add(TaskKind.Spin);
    else if (name === 'sleep') add(TaskKind.Sleep, (i) => this.setField(i, Task.a, arg));
    else if (name === 'memdirty') add(TaskKind.MemDirty, (i) => this.setField(i, Task.b, arg / PAGE));
    else if (name === 'counter') {
      const rate = arg > 0 ? arg : DEFAULT_COUNTER_RATE;
      this.mem.setU32(WORKLOAD_PAGE_GPA + WorkloadPage.ratePerSecond, rate);
      add(TaskKind.Counter, (i) => this.setField(i, Task.a, rate));
    }
  }

  /** Claims a runnable task for `vp`, searching round-robin after `after`. */
  claim(vp: number, after: number): number {
    for (let k = 1; k <= MAX_TASKS; k++) {
      const i = (after + k) % MAX_TASKS;
      if (this.mem.cas32(TaskTable.at(i, Task.state), TaskState.Runnable, TaskState.Running) === TaskState.Runnable) {
        this.setOwner(i, vp);
        return i;
      }
    }
    return -1;
  }

  /** Puts a running task back in the run queue. */
  requeue(i: number): void {
    this.setOwner(i, -1);
    this.mem.atomicStore32(TaskTable.at(i, Task.state), TaskState.Runnable);
  }

  sleep(i: number, until: number): void {
    this.setField(i, Task.wakeAt, until);
    this.setOwner(i, -1);
    this.mem.atomicStore32(TaskTable.at(i, Task.state), TaskState.Sleeping);
  }

  /**
   * The longest a task of its kind ever sleeps (reference time, 100 ns units): a counter two of
   * its periods. A sleeper due further ahead than that went to sleep before reference time stepped
   * back (a clock fault undone, say), and waiting for its wake-up time would stall it for the
   * whole step; it is due now instead, as a kernel re-arms its timers when its clock is set back.
   */
  private maxSleep(i: number): number {
    if (this.kind(i) !== TaskKind.Counter) return Infinity;
    const rate = this.field(i, Task.a);
    return 2 * Math.max(10, 1000 / (rate > 0 ? rate : 1)) * 10_000;
  }

  /** When sleeper `i` is due, given `now` (a wake-up past its kind's longest sleep is due now). */
  private dueAt(i: number, now: number): number {
    const at = this.field(i, Task.wakeAt);
    return now >= 0 && at - now > this.maxSleep(i) ? now : at;
  }

  /** Wakes sleepers due by `now` (and, with `kind`, every sleeper of that kind). Returns how many. */
  wakeDue(now: number, kind = 0): number {
    let n = 0;
    for (let i = 0; i < MAX_TASKS; i++) {
      if (this.state(i) !== TaskState.Sleeping) continue;
      if (this.dueAt(i, now) <= now || (kind !== 0 && this.kind(i) === kind)) {
        if (this.mem.cas32(TaskTable.at(i, Task.state), TaskState.Sleeping, TaskState.Runnable) === TaskState.Sleeping) n++;
      }
    }
    return n;
  }

  /** The earliest finite wake-up time among sleepers, or Infinity; given `now`, one past its kind's longest sleep counts as `now`. */
  earliestWake(now = -1): number {
    let t = Infinity;
    for (let i = 0; i < MAX_TASKS; i++) if (this.state(i) === TaskState.Sleeping) t = Math.min(t, this.dueAt(i, now));
    return t;
  }

  anyRunnable(): boolean {
    for (let i = 0; i < MAX_TASKS; i++) if (this.state(i) === TaskState.Runnable) return true;
    return false;
  }

  /** Total work of all tasks. */
  totalWork(): number {
    let w = 0;
    for (let i = 0; i < MAX_TASKS; i++) if (this.state(i) !== TaskState.Free) w += this.field(i, Task.work);
    return w;
  }

  /** The VP timers were lost (a local-mode restore): the sleep workload arms its tick again. */
  timersLost(): void {
    for (let i = 0; i < MAX_TASKS; i++) if (this.state(i) !== TaskState.Free && this.kind(i) === TaskKind.Sleep) this.setField(i, Task.d, 0);
  }

  private addWork(i: number, n: number): void {
    this.setField(i, Task.work, this.field(i, Task.work) + n);
  }

  /** One step of task `i` at reference time `now` (100 ns units); its dirty marks are batched (GuestMemory.batch). */
  step(i: number, now: number): StepResult {
    return this.mem.batch(() => this.run(i, now));
  }

  private run(i: number, now: number): StepResult {
    const kind = this.kind(i);
    const progress = STATUS_PAGE_GPA + StatusPage.progress;
    switch (kind) {
      case TaskKind.Spin: {
        this.setField(i, Task.a, spinUnit(this.field(i, Task.a) + 1));
        this.addWork(i, 1);
        this.mem.atomicAdd64(progress, 1n);
        return { kind: 'continue' };
      }
      case TaskKind.Sleep: {
        // Woken by the periodic tick (see the kernel's SleepTick vector); nothing else wakes it.
        this.addWork(i, 1);
        this.mem.atomicAdd64(progress, 1n);
        return { kind: 'sleep', until: Infinity };
      }
      case TaskKind.MemDirty: {
        const pages = this.field(i, Task.b);
        let cursor = this.field(i, Task.a);
        const mem = this.mem;
        for (let k = 0; k < MEMDIRTY_PAGES_PER_STEP; k++) {
          const gpa = WORKLOAD_DATA_GPA + cursor * PAGE;
          mem.add8(gpa, 1);
          cursor = cursor + 1 >= pages ? 0 : cursor + 1;
        }
        this.setField(i, Task.a, cursor);
        this.addWork(i, MEMDIRTY_PAGES_PER_STEP);
        this.mem.atomicAdd64(progress, BigInt(MEMDIRTY_PAGES_PER_STEP));
        return { kind: 'continue' };
      }
      case TaskKind.Counter: {
        // Credit accrues with reference time, at most 50 ms per wake-up, so a paused or
        // descheduled VM does not burst afterwards.
        const rate = this.field(i, Task.a);
        const last = this.field(i, Task.b);
        let credit = this.field(i, Task.c);
        const periodMs = Math.max(10, 1000 / rate);
        // At most 50 ms, or two of the task's own periods for slow rates.
        const clamp = Math.max(500_000, 2 * periodMs * 10_000);
        // Reference time that stepped back (a clock fault undone) adds nothing, and takes nothing away.
        if (last > 0 && now > last) credit += (Math.min(now - last, clamp) * rate) / 10_000_000;
        this.setField(i, Task.b, now);
        const n = Math.floor(credit);
        if (n > 0) {
          credit -= n;
          const counter = WORKLOAD_PAGE_GPA + WorkloadPage.counter;
          const v = this.mem.atomicAdd64(counter, BigInt(n)) + BigInt(n);
          this.mem.atomicStore64(progress, v);
          this.addWork(i, n);
        }
        this.setField(i, Task.c, credit);
        return { kind: 'sleep', until: now + periodMs * 10_000 };
      }
      default:
        // A corrupt record: park it rather than spin on it.
        return { kind: 'sleep', until: Infinity };
    }
  }
}
