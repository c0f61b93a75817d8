/**
 * A virtual processor of the guest: a worker thread that runs guest code in short steps, and only
 * while the hypervisor has given it a logical processor. Between steps it
 *   - checks its dispatch word: on a preemption it acknowledges and blocks (shared futex) until
 *     dispatched again, so a VP stops at a step boundary;
 *   - takes deliverable interrupts from its virtual APIC (priority rules, EOI, auto-EOI);
 *   - runs a step of its current task, switching task on the time-slice timer.
 * With nothing to run it arms its deadline timer for the earliest sleeper and halts: it hands the
 * LP back and blocks until an interrupt makes the hypervisor dispatch it again.
 *
 * Local mode (private memory, no scheduler): the VP page is process-local, the VP always holds its
 * "LP", emulates its own synthetic timers, and is woken by the kernel (documented fallback).
 *
 * Guest state is touched only through GuestMemory (each step's dirty marks are batched: see
 * TaskTable.step), and guest time is the partition's reference time (`ReferenceClock`). The VP
 * page is not guest memory: it is the hypervisor's register file, shared, and stays raw; two host
 * timestamps go there on purpose (CPU accounting, and the interrupt-latency probe of the bench).
 */
import { parentPort, workerData } from 'node:worker_threads';
import {
  Dispatch, VpPage, VpRegionHeader, VirtualApicView, SchedRegion, StimerConfig, stimerConfig, vpPageOffset, decodeStimerConfig,
  KERNEL_PAGE_GPA, KernelPage, Task, TaskKind, GuestVector, GUEST_SLICE_100NS, JITTER_RING_GPA, JITTER_RING_ENTRIES,
  MAX_VPS_PER_PARTITION, PROBE_VECTOR_MIN, STIMER_COUNT, STATUS_PAGE_GPA, StatusPage, StimerNextView, effectiveStimerPeriod, nextPeriodicExpiry, GoWord,
} from '@hvlab/protocol';
import { futexWait, futexWake } from '@hvlab/shm';
import { readRtc } from '@hvlab/vsc/cmos';
import { ReferenceClock } from './clock.js';
import { GuestMemory, type GuestMemoryHandle } from './memory.js';
import { TaskTable } from './workloads.js';
import { VP_THREAD_LOADED } from './spare.js';
import { sintRaiser, type SintLineHandle } from './sint-line.js';
import { codeCacheStatus } from '@hvlab/runtime/code-cache-status';

export interface VpStart {
  memory: GuestMemoryHandle;
  vpRegion: SharedArrayBuffer;
  /** The host's scheduler doorbell; null in local mode. */
  sched: SharedArrayBuffer | null;
  /** Int32 words: [0] stop request, [1] suspended (local mode only). */
  control: SharedArrayBuffer;
  vpIndex: number;
  vpCount: number;
  /** Vectors whose interrupts the kernel's main thread services (SINTs): vector -> SINT. */
  sintVectors: Record<number, number>;
  /** The line those SINTs are raised on (sint-line.ts); absent or null: a 'sint' message each. */
  sintLine?: SintLineHandle | null;
  /**
   * A migrated VM's go region (GoWord), when the word released its partition process: the VP says
   * it is online, then waits for Run before it asks for an LP (its state is not set before).
   */
  runGate?: SharedArrayBuffer | null;
}

export const CTL_STOP = 0;
export const CTL_SUSPENDED = 1;
/** How many VP threads are inside their loop (each counts itself in and out). */
export const CTL_LIVE = 2;
/**
 * 1 while VP threads started ahead of their kernel (GuestKernel.armVps) must not run yet, even
 * past their run gate: the kernel clears it (and wakes the word) once its own start has put the
 * kernel page as the VPs must find it. 0, the default, holds nobody.
 */
export const CTL_HELD = 3;

/**
 * Asks the VP threads that share `control` to stop, and wakes them (`wake`: a futex wake on each
 * dispatch word) until every one has left its loop. A halted VP waits on its dispatch word with no
 * timeout, and a wake that lands between its last look at the stop word and its wait is lost, so
 * one wake is not enough. Synchronous, and bounded by `timeoutMs`: safe right before process.exit,
 * which joins worker threads (one asleep in a futex would hold the process forever). Returns
 * whether every thread left.
 */
export function stopVpThreads(control: SharedArrayBuffer, wake: () => void, timeoutMs = 2000): boolean {
  const ctl = new Int32Array(control);
  Atomics.store(ctl, CTL_STOP, 1);
  const end = Date.now() + timeoutMs;
  for (;;) {
    wake();
    const live = Atomics.load(ctl, CTL_LIVE);
    if (live <= 0) return true;
    if (Date.now() >= end) return false;
    Atomics.wait(ctl, CTL_LIVE, live, 1);
  }
}

/**
 * Resume (a restored or migrated VM, before its VPs start): forgets the kernel page's note of the
 * deadline and slice timer each VP armed, so that each programs them again — its deadline at its
 * first halt, its slice with its first task — as a kernel reprograms its clock-event device on
 * resume. The note only spares a VP rewriting a timer it armed itself; after a restore the timers
 * are what the saved VP state holds, and that need not match it: a one-shot deadline that expired
 * as the hypervisor took its snapshot of the frozen VP (it reads the APIC, then the timers, while
 * its scheduler thread fires them) comes back expired with its interrupt neither pending nor
 * taken. Trusting the note, that VP would halt for good with its sleepers due (a moved counter VM
 * stopped counting). Re-arming a deadline that is already due fires it at once; a wake-up too
 * many finds nothing due and is harmless.
 */
export function forgetArmedTimers(mem: GuestMemory): void {
  for (let vp = 0; vp < MAX_VPS_PER_PARTITION; vp++) {
    mem.setF64(KERNEL_PAGE_GPA + KernelPage.deadlineArmed + vp * 8, 0);
    mem.setU32(KERNEL_PAGE_GPA + KernelPage.sliceArmed + vp * 4, 0);
  }
}

/** CMOS RTC ports and registers (MC146818). */

export class VpThread {
  private readonly mem: GuestMemory;
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;
  private readonly ctl: Int32Array;
  private readonly apic: VirtualApicView;
  private readonly timers: StimerNextView;
  private readonly tasks: TaskTable;
  private readonly off: number;
  private readonly disp: number;
  private readonly local: boolean;
  private readonly clock: ReferenceClock;
  private onLp = false;
  private cur = -1;
  private lastPick = -1;
  private sliceDue = false;
  /** A timer MSR was written since the last ring: the next halt rings, so the scheduler picks it up. */
  private timersWritten = false;
  /** Raises a SINT on the kernel's line (null: the VP posts a 'sint' message instead). */
  private readonly raiseSint: ((vp: number, sint: number) => void) | null;

  constructor(private readonly s: VpStart) {
    this.raiseSint = s.sintLine ? sintRaiser(s.sintLine) : null;
    this.mem = new GuestMemory(s.memory);
    this.i32 = new Int32Array(s.vpRegion);
    this.f64 = new Float64Array(s.vpRegion);
    this.ctl = new Int32Array(s.control);
    this.off = vpPageOffset(s.vpIndex);
    this.disp = (this.off + VpPage.dispatch) >> 2;
    this.apic = new VirtualApicView(this.i32, this.off);
    this.timers = new StimerNextView(s.vpRegion, this.off);
    this.tasks = new TaskTable(this.mem);
    this.local = s.sched === null;
    this.clock = new ReferenceClock(s.vpRegion);
  }

  /** Guest time: the partition's reference time (100 ns), never the host's clock. */
  private now(): number {
    return this.clock.now();
  }

  /** Kernel-page word and slot addresses. */
  private static k(off: number): number {
    return KERNEL_PAGE_GPA + off;
  }

  private ring(): void {
    this.timersWritten = false;
    if (!this.s.sched) return;
    Atomics.add(new Int32Array(this.s.sched), SchedRegion.doorbell >> 2, 1);
    futexWake(this.s.sched, SchedRegion.doorbell >> 2);
  }

  private stopped(): boolean {
    return Atomics.load(this.ctl, CTL_STOP) !== 0;
  }

  /**
   * When this VP gives the LP back, so the scheduler need not charge its own wake-up latency. Host
   * time on purpose: it is the hypervisor's CPU accounting, in the VP page, not guest state.
   */
  private stampRelease(): void {
    new BigInt64Array(this.s.vpRegion, this.off + VpPage.releasedNs, 1)[0] = process.hrtime.bigint();
  }

  private enterLp(): void {
    if (this.onLp) return;
    this.onLp = true;
    const mem = this.mem;
    const max = VpThread.k(KernelPage.maxRunning);
    const n = mem.atomicAdd32(VpThread.k(KernelPage.running), 1) + 1;
    for (let m = mem.atomicLoad32(max); n > m; m = mem.atomicLoad32(max)) {
      if (mem.cas32(max, m, n) === m) break;
    }
  }

  private leaveLp(): void {
    if (!this.onLp) return;
    this.onLp = false;
    this.mem.atomicSub32(VpThread.k(KernelPage.running), 1);
  }

  /**
   * The thread stops: a VP that holds its LP gives it back as a halt (and takes no interrupt back,
   * as release() would). A stopped VP thread used to leave its dispatch word Granted, and the
   * scheduler kept the LP for it (other VMs on that LP stood still) until its process was gone.
   */
  private leave(): void {
    this.leaveLp();
    if (this.local) return;
    this.stampRelease();
    if (Atomics.compareExchange(this.i32, this.disp, Dispatch.Granted, Dispatch.Halt) === Dispatch.Granted
      || Atomics.compareExchange(this.i32, this.disp, Dispatch.Preempt, Dispatch.Halt) === Dispatch.Preempt) this.ring();
  }

  /** Gives the LP back with `why` (Halt or Intercept), or acknowledges a pending preemption. */
  private release(why: number): void {
    // Leave the occupancy count before publishing the release: once the dispatch word changes,
    // the scheduler may hand the LP to another VP at once.
    this.leaveLp();
    this.stampRelease();
    let acked = false;
    if (Atomics.compareExchange(this.i32, this.disp, Dispatch.Granted, why) !== Dispatch.Granted) {
      acked = Atomics.compareExchange(this.i32, this.disp, Dispatch.Preempt, why) === Dispatch.Preempt;
    }
    // A halt needs no ring while no other VP waits for an LP (VpRegionHeader.haltRing): the
    // scheduler takes it at its next pass, and an idle VM costs it one wake-up per interrupt, not
    // two. The flag is read after the halt is stored (see the scheduler's side in its pass). A halt
    // that answers a preemption always rings: the scheduler waits for it (a suspension, a cap); so
    // does one after a timer MSR write (the deadline for its sleepers, say): the scheduler picks
    // timers up at a pass. A timer armed before stays on the scheduler's deadlines, so it fires
    // for a VP that halted quietly.
    if (why !== Dispatch.Halt || acked || this.timersWritten || Atomics.load(this.i32, VpRegionHeader.haltRing >> 2) !== 0) {
      this.ring();
      return;
    }
    // A quiet halt: the scheduler does not know yet, so nobody else looks at this VP's interrupts
    // and direct timers until its next pass. One that came since halt() looked would be left
    // pending: a signaller that saw Granted (it asserts, then reads the dispatch word) did not
    // dispatch, and a pass that saw Granted leaves a due direct timer to the VP. This VP stored its
    // halt before it looks again, so it sees what they stored: it fires its due timers, and with an
    // interrupt to take it takes its halt back and runs on, unless the scheduler took it first.
    if (!this.local) this.ownTimers();
    if (this.apic.deliverable() >= 0) Atomics.compareExchange(this.i32, this.disp, Dispatch.Halt, Dispatch.Granted);
  }

  /**
   * Blocks until the go word says Run (GoWord). False when asked to stop: the stopper wakes the
   * dispatch word, not this one, so the wait looks at the stop word every 20 ms.
   */
  private waitForRun(gate: SharedArrayBuffer): boolean {
    const w = new Int32Array(gate);
    while (!this.stopped()) {
      const v = Atomics.load(w, 0);
      if (v === GoWord.Run) return true;
      futexWait(gate, 0, v, 20);
    }
    return false;
  }

  /** Blocks while the kernel holds its VPs (CTL_HELD). False when asked to stop. */
  private waitWhileHeld(): boolean {
    while (!this.stopped()) {
      if (Atomics.load(this.ctl, CTL_HELD) === 0) return true;
      futexWait(this.s.control, CTL_HELD, 1, 20);
    }
    return false;
  }

  /** Blocks until the hypervisor dispatches this VP. False when asked to stop. */
  private waitForLp(): boolean {
    while (!this.stopped()) {
      const d = Atomics.load(this.i32, this.disp);
      if (d === Dispatch.Granted) {
        this.enterLp();
        return true;
      }
      if (d === Dispatch.Preempt) {
        this.leaveLp(); // before the acknowledgement, for the same reason as in release()
        this.stampRelease();
        if (Atomics.compareExchange(this.i32, this.disp, Dispatch.Preempt, Dispatch.Off) === Dispatch.Preempt) this.ring();
        continue;
      }
      this.leaveLp();
      // No timeout: the scheduler wakes this word when it dispatches the VP, and whoever stops the
      // VP wakes it until it has left (stopVpThreads).
      futexWait(this.s.vpRegion, this.disp, d, -1);
    }
    return false;
  }

  // ---- timers: MSR writes go to the VP page; the hypervisor picks them up ------------------

  private writeTimer(t: number, config: number, count: number): void {
    // The old expiration goes first, so that neither this VP nor the scheduler fires it under the
    // new MSRs; the scheduler arms the timer again when it sees timerGen move.
    if (!this.local) this.timers.set(t, 0);
    this.timersWritten = true;
    this.f64[((this.off + VpPage.stimerCount) >> 3) + t] = count;
    Atomics.store(this.i32, ((this.off + VpPage.stimerConfig) >> 2) + t, config);
    Atomics.add(this.i32, (this.off + VpPage.timerGen) >> 2, 1);
    if (this.local) this.timers.set(t, config & 1 ? (config & StimerConfig.periodic ? this.now() + count : count) : 0);
  }

  /**
   * Fires this VP's due direct-mode timers itself, at a step boundary while it holds its LP: as on
   * Hyper-V, an active VP's direct timer interrupt needs no scheduling decision (the scheduler
   * does not even wake for it). The expiration is advanced by compare-exchange, shared with the
   * scheduler (which fires them while the VP is not running), so each is delivered once. A periodic
   * timer stays on its grid and, unless lazy, delivers each missed period (bounded), the next one
   * only after this VP has taken the previous (a second assertion of a pending vector would merge).
   */
  private ownTimers(): void {
    let now = -1;
    for (let t = 0; t < STIMER_COUNT; t++) {
      const next = this.timers.get(t);
      if (!(next > 0)) continue;
      if (now < 0) now = this.now();
      if (next > now) continue;
      const cfgIdx = ((this.off + VpPage.stimerConfig) >> 2) + t;
      const cfg = decodeStimerConfig(Atomics.load(this.i32, cfgIdx));
      if (!cfg.enable || !cfg.direct || cfg.vector < 16 || this.apic.pending(cfg.vector)) continue;
      let after = 0;
      if (cfg.periodic) {
        const period = effectiveStimerPeriod(this.f64[((this.off + VpPage.stimerCount) >> 3) + t]!);
        after = period === null ? 0 : nextPeriodicExpiry(next, period, now, cfg.lazy);
      }
      if (!this.timers.advance(t, next, after)) continue; // the scheduler fired it, or it was re-armed
      if (!cfg.periodic) Atomics.and(this.i32, cfgIdx, ~StimerConfig.enable);
      this.apic.assert(cfg.vector);
    }
  }

  private armDeadline(at: number): void {
    const slot = VpThread.k(KernelPage.deadlineArmed) + this.s.vpIndex * 8;
    if (this.mem.f64(slot) === at) return;
    this.mem.setF64(slot, at);
    if (Number.isFinite(at) && at > 0) this.writeTimer(0, stimerConfig({ enable: true, direct: true, vector: GuestVector.Deadline }), at);
    else this.writeTimer(0, 0, 0);
  }

  private armSlice(on: boolean): void {
    const slot = VpThread.k(KernelPage.sliceArmed) + this.s.vpIndex * 4;
    if ((this.mem.atomicLoad32(slot) === 1) === on) return;
    this.mem.atomicStore32(slot, on ? 1 : 0);
    this.writeTimer(1, on ? stimerConfig({ enable: true, periodic: true, direct: true, vector: GuestVector.Slice }) : 0, on ? GUEST_SLICE_100NS : 0);
  }

  /** Local mode: the VP plays the hypervisor's timer role for itself. Returns ms to the next expiry. */
  private localTimers(): number {
    let next = Infinity;
    const now = this.now();
    for (let t = 0; t < STIMER_COUNT; t++) {
      const ni = ((this.off + VpPage.stimerNext) >> 3) + t;
      const at = this.f64[ni];
      if (!(at > 0)) continue;
      const cfg = decodeStimerConfig(Atomics.load(this.i32, ((this.off + VpPage.stimerConfig) >> 2) + t));
      if (at <= now) {
        this.apic.assert(cfg.vector);
        const period = effectiveStimerPeriod(this.f64[((this.off + VpPage.stimerCount) >> 3) + t]!);
        this.f64[ni] = cfg.periodic && period !== null ? nextPeriodicExpiry(at, period, now, true) : 0;
      }
      if (this.f64[ni] > 0) next = Math.min(next, (this.f64[ni] - now) / 10_000);
    }
    return next;
  }

  // ---- interrupts ---------------------------------------------------------------------------

  private takeInterrupts(): void {
    for (let v = this.apic.deliverable(); v >= 0; v = this.apic.deliverable()) {
      const needsEoi = this.apic.accept(v);
      this.interrupt(v);
      if (needsEoi) this.apic.eoi();
    }
  }

  private interrupt(v: number): void {
    if (v >= PROBE_VECTOR_MIN) {
      // The interrupt-latency probe of `pnpm bench sched`: host time into the VP page, not guest state.
      new BigInt64Array(this.s.vpRegion, this.off + VpPage.probeTakenNs, 1)[0] = process.hrtime.bigint();
      return;
    }
    const sint = this.s.sintVectors[v];
    if (sint !== undefined) {
      if (this.raiseSint) this.raiseSint(this.s.vpIndex, sint);
      else parentPort?.postMessage({ t: 'sint', vp: this.s.vpIndex, sint });
      return;
    }
    const now = this.now();
    if (v === GuestVector.Deadline) {
      this.mem.setF64(VpThread.k(KernelPage.deadlineArmed) + this.s.vpIndex * 8, 0);
      if (this.tasks.wakeDue(now) > 0) this.kickIdle();
    } else if (v === GuestVector.Slice) {
      this.sliceDue = true;
    } else if (v === GuestVector.SleepTick) {
      this.recordJitter(now);
      if (this.tasks.wakeDue(-1, TaskKind.Sleep) > 0) this.kickIdle();
    }
    // Reschedule IPIs need no work: the VP looks for tasks after every interrupt.
  }

  private recordJitter(now: number): void {
    const mem = this.mem;
    const arm = mem.f64(VpThread.k(KernelPage.sleepArmRef));
    const period = mem.f64(VpThread.k(KernelPage.sleepPeriod));
    if (!(period > 0)) return;
    const n = Math.round((now - arm) / period);
    const jitter = now - (arm + n * period);
    const count = mem.f64(VpThread.k(KernelPage.jitterCount));
    mem.setF64(JITTER_RING_GPA + (count % JITTER_RING_ENTRIES) * 8, jitter);
    mem.setF64(VpThread.k(KernelPage.jitterCount), count + 1);
  }

  /** A task became runnable while this VP is busy: send a reschedule IPI to one halted VP. */
  private kickIdle(): void {
    if (this.cur < 0) return;
    const lo = this.mem.atomicLoad32(VpThread.k(KernelPage.idleLo)) >>> 0;
    const hi = this.mem.atomicLoad32(VpThread.k(KernelPage.idleHi)) >>> 0;
    if (lo === 0 && hi === 0) return;
    const target = lo !== 0 ? 31 - Math.clz32(lo & -lo) : 32 + 31 - Math.clz32(hi & -hi);
    this.sendIpi(target, GuestVector.Reschedule);
  }

  /** ICR write: the hypervisor delivers the IPI and clears the busy bit (delivery status). */
  sendIpi(target: number, vector: number): void {
    const busy = (this.off + VpPage.icrBusy) >> 2;
    if (this.local) {
      return; // local mode: every VP polls its queue anyway
    }
    for (let i = 0; i < 1000 && Atomics.load(this.i32, busy) === 1; i++) futexWait(this.s.vpRegion, busy, 1, 1);
    Atomics.store(this.i32, (this.off + VpPage.icrVector) >> 2, vector);
    Atomics.store(this.i32, (this.off + VpPage.icrTargetsLo) >> 2, target < 32 ? 1 << target : 0);
    Atomics.store(this.i32, (this.off + VpPage.icrTargetsHi) >> 2, target >= 32 ? 1 << (target - 32) : 0);
    Atomics.store(this.i32, busy, 1);
    this.ring();
  }

  private setIdle(on: boolean): void {
    const i = this.s.vpIndex;
    const word = VpThread.k(i < 32 ? KernelPage.idleLo : KernelPage.idleHi);
    const bit = 1 << (i & 31);
    if (on) this.mem.atomicOr32(word, bit);
    else this.mem.atomicAnd32(word, ~bit);
  }

  // ---- port I/O (intercepted by the hypervisor, emulated by the VMWP) ------------------------

  private io(port: number, access: 1 | 2, size: number, value = 0): number {
    if (this.local) return 0xff;
    const o = this.off;
    Atomics.store(this.i32, (o + VpPage.ioPort) >> 2, port);
    Atomics.store(this.i32, (o + VpPage.ioAccess) >> 2, access);
    Atomics.store(this.i32, (o + VpPage.ioSize) >> 2, size);
    Atomics.store(this.i32, (o + VpPage.ioValue) >> 2, value);
    this.release(Dispatch.Intercept);
    if (!this.waitForLp()) return 0xff;
    return Atomics.load(this.i32, (o + VpPage.ioValue) >> 2) & (size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1);
  }

  // ---- the loop ---------------------------------------------------------------------------

  /** The VP's life; counted in CTL_LIVE while it lasts, so a stopper knows when it has left. */
  run(): void {
    Atomics.add(this.ctl, CTL_LIVE, 1);
    try {
      this.loop();
    } finally {
      Atomics.sub(this.ctl, CTL_LIVE, 1);
      Atomics.notify(this.ctl, CTL_LIVE);
    }
  }

  private loop(): void {
    const s = this.s;
    parentPort?.postMessage({ t: 'online', vp: s.vpIndex });
    if (s.runGate && !this.waitForRun(s.runGate)) return;
    if (!this.waitWhileHeld()) return;
    // Guest memory is read from here on: a VP started ahead of its migrated VM's memory (the
    // kernel's armVps) touches none of it before Run.
    this.cur = this.mem.atomicLoad32(KERNEL_PAGE_GPA + KernelPage.currentTask + s.vpIndex * 4);
    if (this.local) {
      Atomics.store(this.i32, this.disp, Dispatch.Granted);
    } else {
      Atomics.store(this.i32, this.disp, Dispatch.Start);
      this.ring();
    }
    while (!this.stopped()) {
      if (this.local) {
        if (Atomics.load(this.ctl, CTL_SUSPENDED) === 1) {
          Atomics.wait(this.ctl, CTL_SUSPENDED, 1, 200);
          continue;
        }
        this.localTimers();
      } else if (Atomics.load(this.i32, this.disp) !== Dispatch.Granted || !this.onLp) {
        if (!this.waitForLp()) break;
        this.setIdle(false);
        // Back from a halt: the interrupt that woke this VP first, as a CPU that leaves HLT vectors
        // to it before anything else; its own due timers (and what they assert) come next.
        this.takeInterrupts();
      }
      if (!this.local) this.ownTimers();
      this.takeInterrupts();
      if (s.vpIndex === 0 && this.mem.atomicLoad32(VpThread.k(KernelPage.rtcRequest)) === 1) {
        this.mem.setF64(VpThread.k(KernelPage.rtcFromCmosMs), readRtc((port, access, size, value) => this.io(port, access, size, value)) || -1);
        this.mem.atomicStore32(VpThread.k(KernelPage.rtcRequest), 0);
        // The kernel's main thread waits for this (the value is in its page already).
        parentPort?.postMessage({ t: 'rtc', vp: s.vpIndex });
        continue;
      }
      if (this.cur >= 0 && this.sliceDue && this.tasks.anyRunnable()) {
        this.tasks.requeue(this.cur);
        this.lastPick = this.cur;
        this.cur = -1;
      }
      this.sliceDue = false;
      if (this.cur < 0) {
        this.cur = this.tasks.claim(s.vpIndex, this.lastPick);
        this.mem.atomicStore32(VpThread.k(KernelPage.currentTask) + s.vpIndex * 4, this.cur);
      }
      if (this.cur >= 0) {
        this.armSlice(true);
        const task = this.cur;
        if (this.tasks.kind(task) === TaskKind.Sleep && !(this.tasks.field(task, Task.d) > 0)) this.armSleepTick(task);
        const r = this.tasks.step(task, this.now());
        this.mem.atomicAdd64(STATUS_PAGE_GPA + StatusPage.steps, 1n);
        if (r.kind === 'sleep') {
          this.tasks.sleep(task, r.until);
          this.lastPick = task;
          this.cur = -1;
          this.mem.atomicStore32(VpThread.k(KernelPage.currentTask) + s.vpIndex * 4, -1);
        }
        continue;
      }
      this.halt();
    }
    this.leave();
    parentPort?.postMessage({ t: 'stopped', vp: s.vpIndex });
  }

  /** The sleep workload's periodic timer (stimer2), armed once on the VP that first runs it. */
  private armSleepTick(task: number): void {
    const periodMs = this.tasks.field(task, Task.a);
    const period = Math.max(1, periodMs) * 10_000;
    this.mem.setF64(VpThread.k(KernelPage.sleepPeriod), period);
    this.writeTimer(2, stimerConfig({ enable: true, periodic: true, direct: true, vector: GuestVector.SleepTick }), period);
    this.mem.setF64(VpThread.k(KernelPage.sleepArmRef), this.now() + period);
    this.tasks.setField(task, Task.d, 1);
  }

  /** Nothing to run: arm the deadline timer for the earliest sleeper and give the LP back. */
  private halt(): void {
    this.armSlice(false);
    // Given now, a sleeper due past its longest sleep (reference time stepped back) is due now.
    const wake = this.tasks.earliestWake(this.now());
    this.armDeadline(Number.isFinite(wake) ? Math.max(1, wake) : 0);
    this.setIdle(true);
    if (!this.local) this.ownTimers();
    if (this.apic.deliverable() >= 0 || this.tasks.anyRunnable()) {
      this.setIdle(false);
      return;
    }
    if (this.local) {
      const ms = Math.min(200, Math.max(0, this.localTimers()));
      if (ms > 0) Atomics.wait(this.i32, this.disp, Dispatch.Granted, ms);
      this.setIdle(false);
    } else {
      this.release(Dispatch.Halt); // the idle bit stays set until the VP is dispatched again
    }
  }
}

if (parentPort && workerData && (workerData as VpStart).vpRegion) new VpThread(workerData as VpStart).run();
else if (parentPort && (workerData as { prestart?: boolean } | null)?.prestart) {
  // A spare thread, started before its VM was known: its VpStart comes in a message.
  parentPort.once('message', (m: { t?: string; start?: VpStart }) => {
    if (m?.t === 'start' && m.start?.vpRegion) new VpThread(m.start).run();
  });
  // Loaded: the partition process's entry waits for this before it compiles eagerly (spare.ts);
  // what became of this thread's code cache goes with it (the kernel logs it).
  parentPort.postMessage({ t: VP_THREAD_LOADED, codeCache: codeCacheStatus() ?? null });
}
