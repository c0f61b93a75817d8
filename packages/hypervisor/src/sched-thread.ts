/**
 * The hypervisor's scheduler thread: the logical processors' dispatcher. It owns the policy
 * (`SchedulerCore`), the synthetic timers and IPI delivery, and talks to the VP threads of every
 * partition only through their shared VP pages and shared futexes, so a dispatch or a preemption
 * costs a futex wake, not a message. It sleeps on the host's doorbell word until the next
 * deadline (a quantum's end while a VP waits for an LP, budget exhaustion, a period's end while
 * caps or waiting VPs make it matter, a timer expiry) or until someone rings; VPs that run alone,
 * uncapped, with none waiting set no deadline, and with no timer armed it sleeps until a ring.
 * After serving hypercalls it watches the bell a while first (BellPoll: KVM's adaptive halt
 * polling, for the hypercall pages).
 *
 * Quiet halts: while no VP waits for an LP, a VP that halts does not ring (VpRegionHeader.haltRing,
 * which each pass keeps up to date): it stores its release stamp and Dispatch.Halt, and the next
 * pass (or the signalling path's dispatch of that VP) takes the halt, charged until the stamp. An
 * idle VM's interrupt then costs this thread one wake-up, not two, and a VP running alone costs it
 * none (it woke at every quantum's end before). What a halted VP needs while the scheduler still
 * thinks it runs is covered on both sides: the pass keeps a running VP's direct timers among its
 * deadlines (it fires them if the VP halted meanwhile); the VP looks at its timers and interrupts
 * again after it stored its halt (vp.ts `release`), and rings when it wrote a timer or answers a
 * preemption.
 *
 * The main thread sends it configuration over a MessagePort (read synchronously with
 * receiveMessageOnPort, then the doorbell is rung); it sends back what needs the main thread:
 * message-mode timer expirations (they go through the SynIC) and intercepted port accesses.
 *
 * Everything it reads from a VP page was written by an untrusted guest, so every word is taken as
 * arbitrary: unknown dispatch values are ignored, an I/O intercept record that no IN/OUT can
 * produce (size not 1, 2 or 4, access not read or write, port past 0xffff) is ignored as if the
 * port were unclaimed (decodeIoInterceptRecord), and timer counts that are not finite or below
 * MIN_STIMER_PERIOD (100 µs) are refused or raised to it, and no timer fires more often than that,
 * so no page content can make a pass throw or make the thread run again at once. What a guest can
 * still do is ring the doorbell in a loop: each ring costs one pass, paid for by the guest's own
 * spinning (a per-partition doorbell would let the scheduler throttle it).
 *
 * Faults it enforces (ARCHITECTURE §9; the main thread posts them as partition properties change):
 *   - interrupt delay: what the main thread would pend on a VP's APIC comes here instead
 *     (`interrupt`) and is pended that much later, as are IPIs between the partition's VPs; its
 *     direct-mode synthetic timers' expirations (VpPage.stimerNext, which the running VP fires by
 *     itself too) are pushed back by the delay, so whoever fires them fires them late. At most
 *     MAX_DELAYED_INTERRUPTS wait per partition (past that an interrupt is pended at once: never
 *     lost); clearing the delay pends what waits at once and brings the timers back;
 *   - stalled VPs: not dispatched (SchedulerCore's `stalled`);
 *   - fewer LPs (`lps`): SchedulerCore.setActiveLps;
 *   - clock faults: read from the VP region's clock words like every other reader of the
 *     partition's reference time (`ReferenceClockView`); a skewed clock's timer deadlines are
 *     turned into host time at its rate, and a step (`clockStep`) moves armed periodic timers
 *     with it.
 *
 * `SchedulerLoop` is the thread's body without the thread, so tests can drive passes in-process
 * with a plain SharedArrayBuffer as the VP region.
 */
import { availableParallelism } from 'node:os';
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import {
  Dispatch, VpPage, VpRunState, VirtualApicView, SchedRegion, STIMER_COUNT, MIN_STIMER_PERIOD, decodeStimerConfig, vpPageOffset,
  decodeIoInterceptRecord, effectiveStimerPeriod, nextPeriodicExpiry, StimerNextView, ReferenceClockView, pendInterrupt, FAULT_STALL_MAX_VP,
  VpRegionHeader, takeSuspensionNumber,
} from '@hvlab/protocol';
import { futexWait, futexWake, yieldCpu } from '@hvlab/shm';
import { SchedulerCore, type SchedVp, type VpSchedState } from './scheduler.js';
import { HcLoop, type HcThreadData, type ToHcThread } from './hcloop.js';

export type ToScheduler =
  | { t: 'addPartition'; id: number; region: SharedArrayBuffer; suspended: boolean; weight: number; reserve: number; cap: number }
  | { t: 'removePartition'; id: number }
  | { t: 'addVp'; id: number; index: number }
  | { t: 'removeVp'; id: number; index: number }
  | { t: 'props'; id: number; weight?: number; reserve?: number; cap?: number }
  /** `seq`: the suspension's number (VpRegionHeader.suspendAsked) when `on`, stored as taken after the next pass. */
  | { t: 'suspend'; id: number; on: boolean; seq?: number }
  | { t: 'interceptDone'; id: number; index: number }
  /** SetVpState restored a VP stopped in an intercept: it stays suspended until interceptDone. */
  | { t: 'interceptRestored'; id: number; index: number }
  | { t: 'timersRestored'; id: number; index: number }
  /** The partition's faults as they are now (PartitionProperty.FaultInterruptDelayUs, FaultStalledVps). */
  | { t: 'faults'; id: number; interruptDelayNs: number; stalledVps: number }
  /** An interrupt the main thread holds back by the partition's interrupt delay: pend it that much after this arrives. */
  | { t: 'interrupt'; id: number; index: number; vector: number; autoEoi: boolean }
  /** The partition's reference time stepped by `stepRef` (100 ns units; a clock fault changed): periodic timers move with it. */
  | { t: 'clockStep'; id: number; stepRef: number }
  /** Grant only the first `lps` LPs (the boot count: all of them). */
  | { t: 'lps'; lps: number }
  | { t: 'stop' };

export type FromScheduler =
  | { t: 'timer'; id: number; index: number; timer: number; sint: number; expiration: number; delivery: number }
  | { t: 'intercept'; id: number; index: number; port: number; access: number; size: number; value: number };

export interface SchedulerThreadData {
  lps: number;
  doorbell: SharedArrayBuffer;
  port: MessagePort;
  /** The hypercall pages' server (hcloop.ts) this thread runs too, when the host has pages. */
  hc?: HcThreadData;
  quantumNs?: number;
  periodNs?: number;
  /** BellPoll's longest window (ns); HC_POLL_MAX_NS when absent. */
  hcPollMaxNs?: number;
  /** SchedulerLoop's `yieldOnWake`; true when absent. */
  wakeYield?: boolean;
}

interface VpRec {
  sched: SchedVp;
  off: number; // byte offset of the VP page
  apic: VirtualApicView;
  /** VpPage.stimerNext, advanced by compare-exchange: the running VP fires its own direct timers too. */
  next: StimerNextView;
  timerGen: number;
  /** The timer MSR values the scheduler last acted on, per timer. */
  seen: Array<{ raw: number; count: number }>;
  /** Reference time of each timer's last expiration (spacing floor). */
  lastFire: number[];
  /** How far (reference time) each timer's expiration in VpPage.stimerNext is pushed back by the interrupt delay. */
  shift: number[];
  /** VpPage.firstRunNs is written (the VP was dispatched once). */
  firstRunSeen?: boolean;
}

/** An interrupt waiting out its partition's interrupt delay. */
interface DelayedInterrupt {
  due: number;
  index: number;
  vector: number;
  autoEoi: boolean;
}

/** Interrupts one partition may have waiting out its delay; past this they are pended at once. */
export const MAX_DELAYED_INTERRUPTS = 4096;

interface PartRec {
  id: number;
  region: SharedArrayBuffer;
  i32: Int32Array;
  f64: Float64Array;
  /** The partition's reference time (the header's clock words). */
  clock: ReferenceClockView;
  /** The whole region as i64 words (release stamps). */
  big2: BigInt64Array;
  props: { weight: number; reserve: number; cap: number; suspended: boolean; stalledVps: number };
  vps: Map<number, VpRec>;
  /** A suspension applied and not yet published as taken (VpRegionHeader.suspendTaken); 0: none. */
  suspendTaken?: number;
  /** The newest suspension published as taken. */
  lastTaken?: number;
  /** The interrupt delay (ns; 0: off) and what waits it out, in arrival order. */
  delayNs: number;
  delayed: DelayedInterrupt[];
}

/** Whether VP `index` is in a FaultStalledVps mask (bits 0..52 of a safe integer). */
export function stalledIn(mask: number, index: number): boolean {
  return index >= 0 && index <= FAULT_STALL_MAX_VP && Math.floor(mask / 2 ** index) % 2 === 1;
}

const STATE_CODE: Record<VpSchedState, number> = {
  Absent: VpRunState.Absent, Ready: VpRunState.Ready, Running: VpRunState.Running, Waiting: VpRunState.Waiting, Suspended: VpRunState.Suspended,
};


function nowNs(): number {
  return Number(process.hrtime.bigint());
}

export interface SchedulerLoopOptions {
  lps: number;
  quantumNs?: number;
  periodNs?: number;
  /** Whether a dispatch hands this thread's CPU to the VP thread it woke (see `yieldOnWake`); true when absent. */
  yieldOnWake?: boolean;
}

/** The scheduler thread's state and one pass of its loop (see the module comment). */
export class SchedulerLoop {
  readonly core: SchedulerCore;
  private readonly parts = new Map<number, PartRec>();
  /** False once the main thread asked it to stop. */
  running = true;
  /**
   * After waking a VP thread it dispatched from a halt (the signalling path's one at once, a
   * pass's once at its end), this thread yields its CPU (sched_yield), as a hypervisor enters the
   * VP it dispatched on the LP it runs on instead of finishing its own accounting first. The kernel
   * often queues the woken VP thread behind this one; a wake-up sent to another CPU instead costs
   * 25-40 µs on this 2-CPU virtual machine, and the thread then waited for the bookkeeping and the
   * loop's turn. bench sched measures the interrupt to a halted VP both ways in one run: with the
   * yield its p50 was 0.33-0.79 of the other's in nine runs of ten (31.8-59.2 µs against 60-99.4),
   * 1.15 in one. A VP that halts again at once gives the CPU straight back; one that runs on shares
   * it with this thread as the kernel decides, as it did before. HVLAB_WAKE_YIELD=0 turns it off.
   */
  private readonly yieldOnWake: boolean;
  /** The VPs the current pass woke from a halt (kept, cleared each pass): its yield is for them. */
  private readonly wokeFromHalt = new Set<SchedVp>();

  constructor(o: SchedulerLoopOptions, private readonly out: (m: FromScheduler) => void) {
    this.core = new SchedulerCore({ lps: o.lps, quantumNs: o.quantumNs, periodNs: o.periodNs });
    this.yieldOnWake = o.yieldOnWake ?? true;
  }

  /**
   * When VP `v` left its LP: what it reported, but never before the scheduler last charged it as
   * running (its grant, or a pass that saw it hold the LP), so a lying guest gains at most the time
   * since the scheduler last looked. A VP halts without a ring while no other VP waits for an LP
   * (VpRegionHeader.haltRing), and its halt is taken at the next pass, seconds later on an idle
   * host: its own stamp is what keeps the run time right. The look is at least every quantum
   * while another VP waits, and at the budget's end for a capped VP.
   */
  private releaseTime(p: PartRec, v: VpRec, now: number): number {
    const reported = Number(p.big2[(v.off + VpPage.releasedNs) >> 3]);
    // lastChargeAt is the grant's time or later (a grant charges from it).
    return Math.max(v.sched.lastChargeAt, Math.min(now, reported));
  }

  /**
   * VPs that hold an LP, still say Granted in their dispatch word (not halted quietly since) and
   * have held it for `minNs` or more at `now` (through fresh quanta too): VP threads that run
   * work, not ones that took an interrupt and are about to halt.
   */
  busyVps(now: number, minNs: number): number {
    let n = 0;
    for (const vp of this.core.lpOwners()) {
      if (!vp || now - vp.heldSince < minNs) continue;
      const p = this.parts.get(vp.partitionId);
      const v = p?.vps.get(vp.index);
      if (p && v && Atomics.load(p.i32, dispatchIdx(v)) === Dispatch.Granted) n++;
    }
    return n;
  }

  /** Takes a halt the VP stored in its dispatch word (Halt -> Off), charged until its release. */
  private takeHalt(p: PartRec, v: VpRec, now: number): void {
    const s = v.sched;
    if (s.lp >= 0 || !s.halted) this.core.released(s, s.lp >= 0 ? this.releaseTime(p, v, now) : now, 'halted');
    Atomics.compareExchange(p.i32, dispatchIdx(v), Dispatch.Halt, Dispatch.Off);
  }

  private refNow(p: PartRec): number {
    // Re-read the clock words each time: a restore or a clock fault moves them.
    return p.clock.now();
  }

  /** Host ns until reference time `ahead` (100 ns units) from now has passed, at the partition's clock rate. */
  private hostNsFor(p: PartRec, ahead: number): number {
    return (Math.max(0, ahead) * 100) / p.clock.rate();
  }

  /** The interrupt delay in reference time (100 ns units). */
  private delayRef(p: PartRec): number {
    return Math.round(p.delayNs / 100);
  }

  /**
   * Pends `vector` on VP `index` of `p`, or, while the partition's interrupts are delayed, queues
   * it to be pended `delayNs` after `now` (at once when the queue is full: late, never lost).
   */
  private interrupt(p: PartRec, index: number, vector: number, autoEoi: boolean, now: number): void {
    const v = p.vps.get(index);
    if (!v) return;
    if (p.delayNs > 0 && p.delayed.length < MAX_DELAYED_INTERRUPTS) {
      p.delayed.push({ due: now + p.delayNs, index, vector, autoEoi });
      return;
    }
    pendInterrupt(v.apic, p.region, v.off, vector, autoEoi);
  }

  /**
   * A partition's Suspend (`on`) or resume served on this thread (hcloop.ts, fastSuspend): applied
   * as the main thread's `suspend` message is, with the suspension's number taken here; the next
   * pass takes it. Null when the partition is not scheduled here.
   */
  suspendNow(id: number, on: boolean, now: number): { changed: boolean; seq: number } | null {
    const p = this.parts.get(id);
    if (!p) return null;
    if (p.props.suspended === on) return { changed: false, seq: 0 };
    // The suspension's number, as the main thread makes it (Hypervisor, SetPartitionProperty).
    const seq = on ? takeSuspensionNumber(p.i32) : 0;
    this.handle({ t: 'suspend', id, on, seq }, now);
    return { changed: true, seq };
  }

  /**
   * The signalling path's shortcut (HcLoop's dispatch hook): an interrupt was just pended on VP
   * `index` of partition `id`, which does not hold an LP. When the scheduler already took its halt
   * (dispatch word Off), the vector is deliverable and the policy has nothing else to decide
   * (SchedulerCore.dispatchNow), the VP gets an LP and its thread is woken here, at
   * once; otherwise false, and the scheduling pass decides. After true the caller must run a pass
   * within a quantum (the deadlines a pass would compute for the running VP).
   */
  dispatchNow(id: number, index: number, now: number): boolean {
    const p = this.parts.get(id);
    const v = p?.vps.get(index);
    if (!p || !v || p.delayNs > 0) return false;
    const s = v.sched;
    const di = dispatchIdx(v);
    const d = Atomics.load(p.i32, di);
    // A halt the VP made without a ring (no VP waited for an LP then): the scheduler has not taken
    // it, so the VP still holds its LP here. The dispatch takes it, as a pass would.
    const quiet = d === Dispatch.Halt && s.lp >= 0 && !s.preempting;
    if (!quiet && (d !== Dispatch.Off || !s.halted || s.lp >= 0)) return false;
    if (v.apic.deliverable() < 0) return false;
    const lp = this.core.lpForNow(s, now, quiet);
    if (lp < 0) return false;
    // The VP's thread first: its wake-up is what costs here (tens of microseconds to another CPU),
    // and the bookkeeping below, a few microseconds of code that ran last milliseconds ago, then
    // overlaps it instead of coming before it. A VP that took its quiet halt back itself (it saw
    // the vector) changed the word: the pass sorts that out.
    if (Atomics.compareExchange(p.i32, di, d, Dispatch.Granted) !== d) return false;
    futexWake(p.region, di);
    if (this.yieldOnWake) yieldCpu();
    if (quiet) this.core.released(s, this.releaseTime(p, v, now), 'halted');
    this.core.wake(s, now);
    // lpForNow's LP is free (nothing ran in between); were it not, the pass sorts the VP out.
    if (!this.core.grantNow(s, lp, now)) return false;
    this.woke++;
    this.publish(p, v, now);
    return true;
  }

  /**
   * HcLoop's line hook (hcloop.ts, raiseOnLine): whether a SINT for VP `index` of partition `id`
   * may go on its guest's line rather than to its APIC. The VP is halted (the scheduler took its
   * halt: dispatch word Off; or it halted quietly and the scheduler has not yet: Halt, not answering
   * a preemption), neither it nor its partition is suspended or stalled, its cap does not hold it back, and no interrupt delay
   * holds the partition's interrupts. A suspension is applied on this thread, so none comes between
   * this answer and the raise: a suspended partition gets nothing on its line.
   */
  sintLineOk(id: number, index: number): boolean {
    const p = this.parts.get(id);
    const v = p?.vps.get(index);
    if (!p || !v || p.delayNs > 0 || p.props.suspended) return false;
    const s = v.sched;
    // A VP its cap holds back (auto-converge throttles a migrating VM this way) gets its SINTs when
    // the cap lets it run, as before: the line would take the throttle off the VM's I/O.
    if (s.absent || s.partitionSuspended || s.interceptSuspended || s.stalled || s.capped) return false;
    const d = Atomics.load(p.i32, dispatchIdx(v));
    if (d === Dispatch.Off) return s.halted && s.lp < 0;
    return d === Dispatch.Halt && !s.preempting;
  }

  /** Publishes VP `v`'s state and accounting for observers (stats, `hvlab top`). */
  private publish(p: PartRec, v: VpRec, now: number): void {
    const s = v.sched;
    Atomics.store(p.i32, (v.off + VpPage.state) >> 2, STATE_CODE[s.shownState]);
    const live = s.shownState === 'Running' ? now - s.stateSince : 0;
    const fo = v.off >> 3;
    p.f64[fo + (VpPage.runMs >> 3)] = (s.runNs + live) / 1e6;
    p.f64[fo + (VpPage.readyMs >> 3)] = (s.readyNs + (s.shownState === 'Ready' ? now - s.stateSince : 0)) / 1e6;
    p.f64[fo + (VpPage.waitMs >> 3)] = (s.waitNs + (s.shownState === 'Waiting' || s.shownState === 'Suspended' ? now - s.stateSince : 0)) / 1e6;
    p.f64[fo + (VpPage.dispatches >> 3)] = s.dispatches;
    // The first dispatch's time: a VP is published in the pass (or the dispatch) that grants it its LP, at its `now`.
    if (s.dispatches > 0 && !v.firstRunSeen) {
      v.firstRunSeen = true;
      p.f64[fo + (VpPage.firstRunNs >> 3)] = now;
    }
    p.f64[fo + (VpPage.accountedNs >> 3)] = now;
  }

  /** Pends the delayed interrupts of `p` that are due at `now` (all of them with `all`); returns the next one's due time, or Infinity. */
  private deliverDelayed(p: PartRec, now: number, all = false): number {
    if (p.delayed.length === 0) return Infinity;
    let next = Infinity;
    const keep: DelayedInterrupt[] = [];
    for (const d of p.delayed) {
      if (all || d.due <= now) {
        const v = p.vps.get(d.index);
        if (v) pendInterrupt(v.apic, p.region, v.off, d.vector, d.autoEoi);
      } else {
        keep.push(d);
        next = Math.min(next, d.due);
      }
    }
    p.delayed = keep;
    return next;
  }

  /**
   * Moves VP `v`'s armed periodic timers by a step of the partition's reference time, so that they
   * keep firing once a period across it (a step back would stall them for its length, a step
   * forward would make them catch up). One-shot timers stay: their expirations are the guest's
   * absolute deadlines, and a clock that jumps makes them early or late, which is the fault.
   */
  private stepTimers(p: PartRec, v: VpRec, step: number): void {
    for (let t = 0; t < STIMER_COUNT; t++) {
      if (Number.isFinite(v.lastFire[t])) v.lastFire[t] += step;
      if (!decodeStimerConfig(Atomics.load(p.i32, ((v.off + VpPage.stimerConfig) >> 2) + t)).periodic) continue;
      for (let tries = 0; tries < 4; tries++) {
        const next = v.next.get(t);
        if (!(next > 0) || !Number.isFinite(next)) break;
        if (v.next.advance(t, next, Math.max(1, next + step))) break;
      }
    }
  }

  /**
   * Pushes each armed direct-mode timer's expiration of VP `v` back to the partition's current
   * interrupt delay (from whatever it was pushed back by before), by compare-exchange against the
   * VP firing it meanwhile. Message-mode timers are not pushed back: their messages are delayed.
   */
  private shiftTimers(p: PartRec, v: VpRec): void {
    const delay = this.delayRef(p);
    for (let t = 0; t < STIMER_COUNT; t++) {
      const direct = decodeStimerConfig(Atomics.load(p.i32, ((v.off + VpPage.stimerConfig) >> 2) + t)).direct;
      const want = direct ? delay : 0;
      if (v.shift[t] === want) continue;
      for (let tries = 0; tries < 4; tries++) {
        const next = v.next.get(t);
        if (!(next > 0) || !Number.isFinite(next)) break;
        if (v.next.advance(t, next, Math.max(1, next - v.shift[t] + want))) break;
      }
      v.shift[t] = want;
    }
  }

  handle(m: ToScheduler, now: number): void {
    const core = this.core;
    const parts = this.parts;
    switch (m.t) {
      case 'addPartition': {
        const i32 = new Int32Array(m.region);
        parts.set(m.id, {
          id: m.id, region: m.region, i32, f64: new Float64Array(m.region), clock: new ReferenceClockView(m.region), big2: new BigInt64Array(m.region),
          props: { weight: m.weight, reserve: m.reserve, cap: m.cap, suspended: m.suspended, stalledVps: 0 }, vps: new Map(), delayNs: 0, delayed: [],
        });
        break;
      }
      case 'removePartition': {
        const p = parts.get(m.id);
        if (!p) break;
        for (const v of p.vps.values()) {
          core.remove(v.sched);
          Atomics.store(p.i32, dispatchIdx(v), Dispatch.Off);
          futexWake(p.region, dispatchIdx(v));
        }
        parts.delete(m.id);
        break;
      }
      case 'addVp': {
        const p = parts.get(m.id);
        if (!p || p.vps.has(m.index)) break;
        const off = vpPageOffset(m.index);
        const sched = core.add(m.id, m.index, p.props, now);
        if (stalledIn(p.props.stalledVps, m.index)) core.setSuspended(sched, true, now, 'stall');
        p.vps.set(m.index, {
          sched, off, apic: new VirtualApicView(p.i32, off), next: new StimerNextView(p.region, off), timerGen: Atomics.load(p.i32, (off + VpPage.timerGen) >> 2),
          seen: Array.from({ length: STIMER_COUNT }, () => ({ raw: 0, count: 0 })), lastFire: new Array<number>(STIMER_COUNT).fill(-Infinity),
          shift: new Array<number>(STIMER_COUNT).fill(0),
        });
        break;
      }
      case 'removeVp': {
        const p = parts.get(m.id);
        const v = p?.vps.get(m.index);
        if (!p || !v) break;
        core.remove(v.sched);
        p.vps.delete(m.index);
        p.delayed = p.delayed.filter((d) => d.index !== m.index);
        break;
      }
      case 'props': {
        const p = parts.get(m.id);
        if (!p) break;
        if (m.weight !== undefined) p.props.weight = m.weight;
        if (m.reserve !== undefined) p.props.reserve = m.reserve;
        if (m.cap !== undefined) p.props.cap = m.cap;
        for (const v of p.vps.values()) core.setProps(v.sched, m);
        break;
      }
      case 'suspend': {
        const p = parts.get(m.id);
        if (!p) break;
        p.props.suspended = m.on;
        for (const v of p.vps.values()) core.setSuspended(v.sched, m.on, now, 'partition');
        if (m.on && typeof m.seq === 'number' && m.seq !== 0) p.suspendTaken = m.seq;
        break;
      }
      case 'interceptDone': {
        const v = parts.get(m.id)?.vps.get(m.index);
        if (v) core.setSuspended(v.sched, false, now, 'intercept');
        break;
      }
      case 'interceptRestored': {
        const v = parts.get(m.id)?.vps.get(m.index);
        if (v) core.setSuspended(v.sched, true, now, 'intercept');
        break;
      }
      case 'timersRestored': {
        const p = parts.get(m.id);
        const v = p?.vps.get(m.index);
        if (p && v) {
          v.timerGen = Atomics.load(p.i32, (v.off + VpPage.timerGen) >> 2);
          for (let t = 0; t < STIMER_COUNT; t++) v.seen[t] = { raw: Atomics.load(p.i32, ((v.off + VpPage.stimerConfig) >> 2) + t), count: p.f64[((v.off + VpPage.stimerCount) >> 3) + t] };
          // The saved expirations are true ones (GetVpState takes the delay out): push them back again.
          v.shift.fill(0);
          this.shiftTimers(p, v);
        }
        break;
      }
      case 'faults': {
        const p = parts.get(m.id);
        if (!p) break;
        const delayNs = Number.isFinite(m.interruptDelayNs) && m.interruptDelayNs > 0 ? m.interruptDelayNs : 0;
        if (delayNs !== p.delayNs) {
          p.delayNs = delayNs;
          // Undone at once: what waits is pended now. A changed delay applies to what comes next.
          if (delayNs === 0) this.deliverDelayed(p, now, true);
          for (const v of p.vps.values()) this.shiftTimers(p, v);
        }
        const mask = Number.isSafeInteger(m.stalledVps) && m.stalledVps > 0 ? m.stalledVps : 0;
        if (mask !== p.props.stalledVps) {
          p.props.stalledVps = mask;
          for (const v of p.vps.values()) {
            const on = stalledIn(mask, v.sched.index);
            if (on !== v.sched.stalled) core.setSuspended(v.sched, on, now, 'stall');
          }
        }
        break;
      }
      case 'interrupt': {
        const p = parts.get(m.id);
        if (p && Number.isInteger(m.vector) && m.vector >= 16 && m.vector <= 255) this.interrupt(p, m.index, m.vector, m.autoEoi === true, now);
        break;
      }
      case 'clockStep': {
        const p = parts.get(m.id);
        if (p && Number.isFinite(m.stepRef) && m.stepRef !== 0) for (const v of p.vps.values()) this.stepTimers(p, v, m.stepRef);
        break;
      }
      case 'lps':
        core.setActiveLps(m.lps);
        break;
      case 'stop':
        this.running = false;
        break;
    }
  }

  /**
   * Re-reads a VP's timer MSRs after the guest wrote some of them. Only a timer whose own MSRs
   * changed restarts: rewriting the slice timer must not push a periodic timer back. The VP clears
   * a timer's expiration when it writes the timer's MSRs (so that it cannot fire the old one
   * itself): an enabled timer with no expiration is re-armed even when its MSRs read as before
   * (the VP may have fired and disabled a one-shot timer since, and armed it again).
   */
  private reloadTimers(p: PartRec, v: VpRec): void {
    const ref = this.refNow(p);
    for (let t = 0; t < STIMER_COUNT; t++) {
      const raw = Atomics.load(p.i32, ((v.off + VpPage.stimerConfig) >> 2) + t);
      const cfg = decodeStimerConfig(raw);
      const count = p.f64[((v.off + VpPage.stimerCount) >> 3) + t];
      if (v.seen[t].raw === raw && Object.is(v.seen[t].count, count) && !(cfg.enable && v.next.get(t) === 0)) continue;
      v.seen[t] = { raw, count };
      let next = 0;
      if (cfg.enable && (cfg.direct ? cfg.vector >= 16 : true)) {
        if (cfg.periodic) {
          const period = effectiveStimerPeriod(count);
          if (period !== null) next = ref + period;
        } else if (Number.isFinite(count) && count > 0) {
          next = count;
        }
      }
      // A direct timer's interrupt is delayed by arming it that much later (see shiftTimers).
      v.shift[t] = next > 0 && cfg.direct ? this.delayRef(p) : 0;
      v.next.set(t, next > 0 ? next + v.shift[t] : 0);
    }
  }

  /**
   * Fires due timers; returns the earliest pending expiry in ns (host clock), or Infinity.
   *
   * Periodic timers stay on their grid (next = previous + period). A direct-mode timer that is not
   * lazy delivers every missed period (up to STIMER_MAX_CATCHUP), one at a time: the next only once
   * the VP has taken the previous one, since a second assertion of a pending vector would merge
   * into it. While the VP holds an LP (or is about to: ready, or woken by a deliverable interrupt)
   * its direct timers are its own business (it fires them at step boundaries: VpThread), so they
   * set no deadline here: the scheduler does not wake for a running VP's timers. Message-mode
   * timers are lazy (missed periods are skipped; the message carries expiration and delivery time).
   */
  private runTimers(p: PartRec, v: VpRec, now: number): number {
    let earliest = Infinity;
    // A suspended partition's timers do not fire: what comes due meanwhile fires at the pass that
    // resumes it. A save reads a frozen VP's APIC and then its timers (GetVpState on the main
    // thread); an expiry fired between the two reads came back as a timer already advanced and an
    // interrupt in neither, and a one-shot deadline was lost with it (a migrated VM that stopped).
    if (p.props.suspended) return earliest;
    const ref = this.refNow(p);
    const s = v.sched;
    const vpFiresOwn = s.lp >= 0 && !s.preempting;
    for (let t = 0; t < STIMER_COUNT; t++) {
      // The guest can write this word too: anything but a finite positive time means "not armed".
      let next = v.next.get(t);
      if (!(next > 0) || !Number.isFinite(next)) continue;
      const cfgIdx = ((v.off + VpPage.stimerConfig) >> 2) + t;
      const cfg = decodeStimerConfig(Atomics.load(p.i32, cfgIdx));
      if (!cfg.enable) {
        v.next.advance(t, next, 0);
        continue;
      }
      if (cfg.direct && vpFiresOwn) {
        // The VP fires it itself at a step boundary, and before it halts. But a VP that halts
        // without a ring (VpRegionHeader.haltRing) is seen halted only by a pass: look when this
        // timer comes due, and that pass fires it if the VP halted meanwhile.
        if (next > ref) earliest = Math.min(earliest, now + this.hostNsFor(p, next - ref));
        continue;
      }
      // Reference time went back (a restore, or a guest that moved its base): the spacing floor
      // counts from now, instead of holding the timer until the old time comes round again.
      if (v.lastFire[t] > ref) v.lastFire[t] = ref;
      if (next <= ref) {
        // Spacing floor: no timer fires twice within MIN_STIMER_PERIOD of reference time.
        const notBefore = v.lastFire[t] + MIN_STIMER_PERIOD;
        if (ref < notBefore) {
          earliest = Math.min(earliest, now + this.hostNsFor(p, notBefore - ref));
          continue;
        }
        if (cfg.direct && v.apic.pending(cfg.vector)) {
          // The previous expiration is still pending. A VP that can take it will, and fires this
          // one itself once it has; a VP that cannot (halted, the vector masked) merges it, as an
          // APIC merges a second request of a pending vector.
          if (!(s.halted && v.apic.deliverable() < 0) || s.partitionSuspended || s.interceptSuspended) continue;
          const merged = cfg.periodic ? this.periodicNext(p, v, t, next, ref, true) : 0;
          if (v.next.advance(t, next, merged) && !cfg.periodic) v.seen[t].raw = Atomics.and(p.i32, cfgIdx, ~1) & ~1;
          next = merged;
        } else {
          const after = cfg.periodic ? this.periodicNext(p, v, t, next, ref, cfg.lazy || !cfg.direct) : 0;
          if (!v.next.advance(t, next, after)) continue; // the VP fired it itself, or re-armed it
          v.lastFire[t] = ref;
          if (cfg.direct) {
            // Already as late as the interrupt delay wants (its expiration was pushed back).
            v.apic.assert(cfg.vector);
          } else {
            this.out({ t: 'timer', id: p.id, index: s.index, timer: t, sint: cfg.sint, expiration: next, delivery: ref });
          }
          // A one-shot timer disables itself; re-arming it with the same count is then a change.
          if (!cfg.periodic) v.seen[t].raw = Atomics.and(p.i32, cfgIdx, ~1) & ~1;
          next = after;
        }
      }
      // A timer still behind (catching up) comes again no sooner than the spacing floor allows.
      if (next > 0) earliest = Math.min(earliest, now + this.hostNsFor(p, Math.max(next, v.lastFire[t] + MIN_STIMER_PERIOD) - ref));
    }
    return earliest;
  }

  /** The expiration after `due` of periodic timer `t` (0 when its period is not valid). */
  private periodicNext(p: PartRec, v: VpRec, t: number, due: number, ref: number, lazy: boolean): number {
    const period = effectiveStimerPeriod(p.f64[((v.off + VpPage.stimerCount) >> 3) + t]);
    return period === null ? 0 : nextPeriodicExpiry(due, period, ref, lazy);
  }

  private deliverIpi(p: PartRec, v: VpRec, now: number): void {
    const base = v.off;
    const vector = Atomics.load(p.i32, (base + VpPage.icrVector) >> 2) & 0xff;
    const lo = Atomics.load(p.i32, (base + VpPage.icrTargetsLo) >> 2) >>> 0;
    const hi = Atomics.load(p.i32, (base + VpPage.icrTargetsHi) >> 2) >>> 0;
    if (vector >= 16) {
      for (const t of p.vps.values()) {
        const i = t.sched.index;
        const hit = i < 32 ? (lo >>> i) & 1 : (hi >>> (i - 32)) & 1;
        if (!hit) continue;
        if (p.delayNs > 0) this.interrupt(p, i, vector, false, now);
        else t.apic.assert(vector);
      }
    }
    Atomics.store(p.i32, (base + VpPage.icrBusy) >> 2, 0);
    futexWake(p.region, (base + VpPage.icrBusy) >> 2);
  }

  /** VP threads the last pass woke (granted an LP). */
  woke = 0;

  /**
   * One pass: takes what every VP wrote to its page, runs due timers, runs the policy and carries
   * out its grants and preemptions, and publishes states and accounting. Returns when the
   * scheduler must run again at the latest (ns, host clock).
   */
  pass(now: number): number {
    const core = this.core;
    let timerDeadline = Infinity;
    const wokeFromHalt = this.wokeFromHalt;
    wokeFromHalt.clear();
    for (const p of this.parts.values()) {
      this.deliverDelayed(p, now);
      for (const v of p.vps.values()) {
        const s = v.sched;
        const di = dispatchIdx(v);
        const d = Atomics.load(p.i32, di);
        if (s.lp >= 0 && d === Dispatch.Off) {
          core.released(s, this.releaseTime(p, v, now), 'preempted');
        } else if (d === Dispatch.Halt) {
          this.takeHalt(p, v, now);
        } else if (d === Dispatch.Intercept) {
          core.released(s, s.lp >= 0 ? this.releaseTime(p, v, now) : now, 'intercept');
          Atomics.compareExchange(p.i32, di, Dispatch.Intercept, Dispatch.Off);
          const o = v.off;
          const rec = decodeIoInterceptRecord(
            Atomics.load(p.i32, (o + VpPage.ioPort) >> 2), Atomics.load(p.i32, (o + VpPage.ioAccess) >> 2),
            Atomics.load(p.i32, (o + VpPage.ioSize) >> 2), Atomics.load(p.i32, (o + VpPage.ioValue) >> 2),
          );
          if (typeof rec === 'string') {
            // No IN/OUT produces this record: the access reads all ones, and the VP goes on.
            Atomics.store(p.i32, (o + VpPage.ioValue) >> 2, -1);
            core.setSuspended(s, false, now, 'intercept');
          } else {
            this.out({ t: 'intercept', id: p.id, index: s.index, port: rec.port, access: rec.access, size: rec.size, value: rec.value });
          }
        } else if (d === Dispatch.Start) {
          Atomics.compareExchange(p.i32, di, Dispatch.Start, Dispatch.Off);
          if (s.lp >= 0) core.released(s, now, 'preempted');
          s.halted = true; // wake() below treats a started VP like a woken one
          s.absent = false;
          core.wake(s, now);
        }
        const gen = Atomics.load(p.i32, (v.off + VpPage.timerGen) >> 2);
        if (gen !== v.timerGen) {
          v.timerGen = gen;
          this.reloadTimers(p, v);
        }
        if (Atomics.load(p.i32, (v.off + VpPage.icrBusy) >> 2) === 1) this.deliverIpi(p, v, now);
      }
      for (const v of p.vps.values()) timerDeadline = Math.min(timerDeadline, this.runTimers(p, v, now));
      // Delayed interrupts (IPIs of this pass among them) come due too.
      for (const d of p.delayed) timerDeadline = Math.min(timerDeadline, d.due);
      // Halted VPs with something to take become Ready.
      for (const v of p.vps.values()) {
        if (!v.sched.halted || v.apic.deliverable() < 0) continue;
        core.wake(v.sched, now);
        wokeFromHalt.add(v.sched);
      }
    }
    const dec = core.tick(now);
    for (const vp of dec.preempt) {
      const p = this.parts.get(vp.partitionId)!;
      const v = p.vps.get(vp.index)!;
      Atomics.compareExchange(p.i32, dispatchIdx(v), Dispatch.Granted, Dispatch.Preempt);
    }
    this.woke += dec.grant.length;
    let yieldAfter = false;
    for (const g of dec.grant) {
      const p = this.parts.get(g.vp.partitionId)!;
      const v = p.vps.get(g.vp.index)!;
      Atomics.store(p.i32, dispatchIdx(v), Dispatch.Granted);
      futexWake(p.region, dispatchIdx(v));
      if (wokeFromHalt.has(g.vp)) yieldAfter = true;
    }
    // Publish states and accounting for observers (stats, `hvlab top`).
    for (const p of this.parts.values()) for (const v of p.vps.values()) this.publish(p, v, now);
    // Then a suspension applied before this pass is taken: every page shows its state since.
    for (const p of this.parts.values()) {
      if (!p.suspendTaken) continue;
      // Never back to an older number (the main thread's and this thread's Suspends of one
      // partition at once): what is published here counts only up, whatever the word holds.
      if (p.lastTaken === undefined || ((p.suspendTaken - p.lastTaken) | 0) > 0) p.lastTaken = p.suspendTaken;
      Atomics.store(p.i32, VpRegionHeader.suspendTaken >> 2, p.lastTaken);
      futexWake(p.region, VpRegionHeader.suspendTaken >> 2); // the partition process may sleep on it (guest waitForSuspension)
      p.suspendTaken = 0;
    }
    // Whether a VP that halts must ring: only while another waits for an LP. Otherwise it halts
    // quietly (its dispatch word alone), and the next pass or dispatch takes the halt: on an idle
    // host, one wake-up of this thread per interrupt instead of two. The flag is stored before the
    // dispatch words are read again, and a VP stores its halt before it reads the flag, so one of
    // the two sees the other: a halt that missed the flag is found here and taken at once.
    const ring = dec.waiting > 0 ? 1 : 0;
    let missed = false;
    for (const p of this.parts.values()) {
      if (Atomics.load(p.i32, VpRegionHeader.haltRing >> 2) !== ring) Atomics.store(p.i32, VpRegionHeader.haltRing >> 2, ring);
      if (ring === 0) continue;
      for (const v of p.vps.values()) if (v.sched.lp >= 0 && Atomics.load(p.i32, dispatchIdx(v)) === Dispatch.Halt) missed = true;
    }
    // Once, after the halt-ring flag: to a VP this pass woke from a halt and granted (not to VPs a
    // quantum's end rotates, which run work and would hold this thread off for a time slice).
    if (yieldAfter && this.yieldOnWake) yieldCpu();
    wokeFromHalt.clear();
    return missed ? now : Math.min(dec.deadline, timerDeadline);
  }
}

function dispatchIdx(v: VpRec): number {
  return (v.off + VpPage.dispatch) >> 2;
}

/**
 * How long the thread watches the bell after serving hypercalls before it sleeps (ns): at least
 * HC_POLL_BASE_NS, at most HC_POLL_MAX_NS (KVM's halt_poll_ns default), as BellPoll adapts it.
 */
export const HC_POLL_BASE_NS = 25_000;
export const HC_POLL_MAX_NS = 200_000;

/**
 * The bell poll after a pass that served hypercalls, adapted as KVM adapts a vCPU's halt polling:
 * when the next hypercall came after the poll gave up but within HC_POLL_MAX_NS of the poll's
 * start, a longer poll would have caught it, and the window doubles; when it came later than that,
 * the window halves (never below HC_POLL_BASE_NS). So hypercalls that keep coming (a VMBus
 * ping-pong: a signal, its answer's signal) find the thread awake and cost no wake-up of it, and a
 * host whose hypercalls come farther apart (idle VMs: a heartbeat now and then) polls the base
 * window only.
 *
 * The thread does not poll while VP threads that run work (SchedulerLoop.busyVps) leave no CPU of
 * the machine free for it: they need the CPUs more (KVM stops polling when another task wants the
 * CPU); such a turn teaches the window nothing (`skipped`). A poll never runs past the
 * scheduler's next deadline.
 *
 * After a pass that woke a VP thread the thread polls only while the window is above the base,
 * i.e. while hypercalls stream: on two cores the woken thread may need this CPU, and a lone
 * interrupt to a halted VP is served sooner without the poll (bench sched, the halted VP through
 * the page: p50 152-166 µs polling, 136-156 not). In a stream the poll pays: the answer to the
 * signal that woke the VP comes back within the window (bench vmbus prints the signalled round
 * trip both ways in one run: 54 µs p50 adapting against 91.8 at the base, in a full run).
 */
export class BellPoll {
  /** The window now (ns). */
  ns = HC_POLL_BASE_NS;
  /** When the last poll started, if it gave up (ns); -1 when it caught a ring or none gave up since. */
  private gaveUpFrom = -1;

  /**
   * `maxNs`: the longest window (HC_POLL_MAX_NS unless the host says otherwise: HVLAB_HC_POLL_MAX_US).
   * At the base or below, the window never grows: the thread polls the base after a pass that
   * woke no VP and not at all after one that did, as before the poll adapted.
   */
  constructor(readonly maxNs = HC_POLL_MAX_NS) {}

  /** A pass served hypercalls at `now` (ns): learns from how long they took to come. */
  served(now: number): void {
    if (this.gaveUpFrom < 0) return;
    const waited = now - this.gaveUpFrom;
    this.gaveUpFrom = -1;
    if (waited <= this.maxNs) this.ns = Math.max(HC_POLL_BASE_NS, Math.min(this.maxNs, this.ns * 2));
    else this.ns = Math.max(HC_POLL_BASE_NS, this.ns / 2);
  }

  /** The window for a poll after a pass that served hypercalls (0: no poll); `woke`: the pass woke a VP thread. */
  window(woke: boolean): number {
    return woke && this.ns <= HC_POLL_BASE_NS ? 0 : this.ns;
  }

  /** A poll (or none, window 0) that started at `from` ended; `caught`: a ring ended it. */
  ended(from: number, caught: boolean): void {
    this.gaveUpFrom = caught ? -1 : from;
  }

  /**
   * No poll was possible (VP threads that run work took the CPUs): the next call teaches the
   * window nothing, so it is as it was when the contention ends.
   */
  skipped(): void {
    this.gaveUpFrom = -1;
  }
}

/**
 * The thread's loop. Each wake-up it serves the hypercall pages (when the host has them), then
 * runs a scheduling pass unless every ring since the last one was a hypercall that asked for none
 * (a hypercall ring adds to SchedRegion.hcRings before the doorbell; see hcloop.ts) and no
 * deadline is due: a SignalEvent to a VP that holds its LP, or to a root port, costs no pass.
 * A count read between a ring's two additions can hide another ring for one turn; the ring's
 * second addition wakes the loop again, and that turn runs the pass.
 */
export function runScheduler(data: SchedulerThreadData): void {
  const port = data.port;
  const loop = new SchedulerLoop({ lps: data.lps, quantumNs: data.quantumNs, periodNs: data.periodNs, yieldOnWake: data.wakeYield }, (m) => port.postMessage(m));
  const hcPort = data.hc?.port ?? null;
  const hc = data.hc && hcPort ? new HcLoop(data.hc.state, (m) => hcPort.postMessage(m), (id, index) => loop.dispatchNow(id, index, nowNs()), (id, on) => {
    // What the main thread sent before (its own Suspends, a partition finalized) is applied first:
    // the call is decided on the state as the main thread left it.
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) loop.handle(m.message as ToScheduler, nowNs());
    return loop.suspendNow(id, on, nowNs());
  }, (id, index) => loop.sintLineOk(id, index)) : null;
  const bell = new Int32Array(data.doorbell);
  const bellIdx = SchedRegion.doorbell >> 2;
  const hcIdx = SchedRegion.hcRings >> 2;
  const bellPoll = new BellPoll(data.hcPollMaxNs ?? HC_POLL_MAX_NS);
  const hostCpus = availableParallelism();
  let lastBell = Atomics.load(bell, bellIdx) - 1; // the first turn runs a pass
  let lastHc = Atomics.load(bell, hcIdx);
  let deadline = 0;
  while (loop.running) {
    const hcSeen = Atomics.load(bell, hcIdx);
    const seen = Atomics.load(bell, bellIdx);
    let now = nowNs();
    let schedule = false;
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
      loop.handle(m.message as ToScheduler, now);
      schedule = true;
    }
    if (!loop.running) break;
    let served = 0;
    loop.woke = 0;
    if (hc && hcPort) {
      for (let m = receiveMessageOnPort(hcPort); m; m = receiveMessageOnPort(hcPort)) hc.handle(m.message as ToHcThread);
      served = hc.pass(true);
      if (served > 0) bellPoll.served(now);
      if (hc.wantSchedule) {
        hc.wantSchedule = false;
        schedule = true;
      } else {
        // Only VPs the hypercall pass dispatched itself: their callers go on now, and the pass
        // (their deadlines) runs within a quantum, as after a grant, unless something else asks
        // for it sooner. Running it here would hold this CPU while the woken VP thread needs one.
        hc.completeDeferred();
      }
      // A VP the hypercall pass dispatched itself needs no pass within a quantum: dispatchNow
      // grants only to an uncapped VP while none waits and the period runs, and such a VP has no
      // deadline (SchedulerCore.tick). Its halt comes without a ring and is taken at the next pass.
      hc.dispatched = false;
    }
    if (((seen - lastBell) | 0) > ((hcSeen - lastHc) | 0)) schedule = true;
    lastBell = seen;
    lastHc = hcSeen;
    now = nowNs();
    if (schedule || now >= deadline) deadline = loop.pass(now);
    hc?.completeDeferred();
    // Right after serving hypercalls, the next often follows within microseconds (a caller that
    // signals in a loop, a reply to a reply): watch the bell a while before sleeping, as KVM polls
    // a halted vCPU, since waking a thread on another CPU costs far more here (BellPoll).
    // The poll ends by the next deadline at the latest (a timer, a quantum's end): the pass below
    // runs it on time.
    if (served > 0) {
      const from = nowNs();
      if (loop.busyVps(from, bellPoll.maxNs) >= hostCpus - 1) {
        bellPoll.skipped();
      } else {
        const until = Math.min(from + bellPoll.window(loop.woke !== 0), deadline);
        let caught = false;
        while (nowNs() < until) {
          if (Atomics.load(bell, bellIdx) !== seen) {
            caught = true;
            break;
          }
        }
        bellPoll.ended(from, caught);
      }
    }
    // Asleep until the next deadline, or until someone rings (a VP that halts, a hypercall, a
    // message from the main thread): with nothing due, no timeout at all. Observers extrapolate
    // the accounting from VpPage.accountedNs, so it need not be refreshed.
    if (deadline === Infinity) futexWait(data.doorbell, bellIdx, seen, -1);
    else {
      const waitMs = (deadline - nowNs()) / 1e6;
      if (waitMs > 0) futexWait(data.doorbell, bellIdx, seen, waitMs);
    }
  }
}

if (workerData && (workerData as { scheduler?: SchedulerThreadData }).scheduler) runScheduler((workerData as { scheduler: SchedulerThreadData }).scheduler);
