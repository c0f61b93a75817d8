/**
 * The VP scheduling policy over N logical processors, free of threads and clocks so it can be
 * simulated in tests. The scheduler thread (`sched-thread.ts`) feeds it events with the current
 * time and carries out its decisions on the shared VP pages.
 *
 * Policy (Hyper-V's per-VM CPU controls, applied to each VP of the VM, REFERENCE "Scheduling"):
 *   - reserve R %: within every accounting period a VP that has run less than R % of the period
 *     is picked before any other, and that reserved time is not charged against its fair share;
 *   - maximum (cap) M %: a VP that has run M % of the period waits (Waiting, capped) until the
 *     next period; its LP is taken at the moment the budget is spent, not at the next tick;
 *   - weight W (1-10000): the rest is shared in proportion to weight, by virtual run time
 *     (run ns x 100 / W, the smallest runs next, as in stride scheduling and CFS). A VP that
 *     wakes from a halt starts no further back than one quantum behind the least-served runnable
 *     VP, so sleeping banks no credit.
 * Quantum-based: a VP keeps its LP for a quantum, then yields it if anyone else is waiting.
 * A halted VP holds no LP.
 *
 * Faults (ARCHITECTURE §9): a stalled VP (PartitionProperty.FaultStalledVps) is not dispatched,
 * like a suspended one; and the LPs in use can shrink to the first `activeLps` (the root's
 * `setLps`): a VP on an LP past them is preempted, and only those LPs are granted until they grow
 * back.
 */

export const DEFAULT_QUANTUM_NS = 10_000_000;
export const DEFAULT_PERIOD_NS = 100_000_000;

export type VpSchedState = 'Absent' | 'Ready' | 'Running' | 'Waiting' | 'Suspended';

export interface SchedVp {
  readonly partitionId: number;
  readonly index: number;
  /** Thread never started (StartVirtualProcessor not yet seen). */
  absent: boolean;
  halted: boolean;
  capped: boolean;
  partitionSuspended: boolean;
  interceptSuspended: boolean;
  /** Stalled by a fault (FaultStalledVps): not dispatched until cleared. */
  stalled: boolean;
  /** LP index while it holds one (including while a preemption is pending), else -1. */
  lp: number;
  preempting: boolean;
  weight: number;
  reserve: number; // fraction of one LP
  cap: number; // fraction of one LP
  vruntime: number;
  usedInPeriod: number;
  grantedAt: number;
  /** When it took the LP it holds (a fresh quantum moves grantedAt, not this). */
  heldSince: number;
  lastChargeAt: number;
  /** Accounting, ns. */
  runNs: number;
  readyNs: number;
  waitNs: number;
  dispatches: number;
  stateSince: number;
  shownState: VpSchedState;
}

export interface SchedDecisions {
  /** VPs whose LP must be taken back (they hold it until they acknowledge). */
  preempt: SchedVp[];
  /** VPs to dispatch now, with the LP each gets. */
  grant: Array<{ vp: SchedVp; lp: number }>;
  /** When the scheduler must run again at the latest (ns); Infinity: not before something changes. */
  deadline: number;
  /**
   * Runnable VPs still without an LP after this tick (they wait for a preemption or a release):
   * while there are any, a VP that halts must tell the scheduler at once (sched-thread.ts).
   */
  waiting: number;
}

export interface SchedulerOptions {
  lps: number;
  quantumNs?: number;
  periodNs?: number;
}

export class SchedulerCore {
  /** The LPs the scheduler was made with (the host's boot count). */
  readonly lps: number;
  /** The LPs it grants now: the first `activeLps` of them (setActiveLps). */
  private active: number;
  readonly quantumNs: number;
  readonly periodNs: number;
  private readonly vps = new Map<string, SchedVp>();
  private readonly lpOwner: Array<SchedVp | null>;
  private periodStart = 0;
  private minVruntime = 0;

  constructor(o: SchedulerOptions) {
    if (!Number.isInteger(o.lps) || o.lps < 1) throw new Error(`logical processor count ${o.lps} is invalid`);
    this.lps = o.lps;
    this.active = o.lps;
    this.quantumNs = o.quantumNs ?? DEFAULT_QUANTUM_NS;
    this.periodNs = o.periodNs ?? DEFAULT_PERIOD_NS;
    this.lpOwner = new Array<SchedVp | null>(o.lps).fill(null);
  }

  static key(partitionId: number, index: number): string {
    return `${partitionId}/${index}`;
  }

  get(partitionId: number, index: number): SchedVp | undefined {
    return this.vps.get(SchedulerCore.key(partitionId, index));
  }

  all(): IterableIterator<SchedVp> {
    return this.vps.values();
  }

  lpOwners(): ReadonlyArray<SchedVp | null> {
    return this.lpOwner;
  }

  get activeLps(): number {
    return this.active;
  }

  /**
   * Grants only the first `n` LPs (1..lps; anything else is clamped) from the next tick on; VPs on
   * the others are preempted there. `lps` restores them all.
   */
  setActiveLps(n: number): void {
    this.active = Number.isInteger(n) ? Math.min(this.lps, Math.max(1, n)) : this.lps;
  }

  add(partitionId: number, index: number, props: { weight: number; reserve: number; cap: number; suspended: boolean }, now: number): SchedVp {
    const vp: SchedVp = {
      partitionId, index, absent: true, halted: false, capped: false, partitionSuspended: props.suspended, interceptSuspended: false, stalled: false,
      lp: -1, preempting: false, weight: props.weight, reserve: props.reserve, cap: props.cap,
      vruntime: this.minVruntime, usedInPeriod: 0, grantedAt: 0, heldSince: 0, lastChargeAt: now,
      runNs: 0, readyNs: 0, waitNs: 0, dispatches: 0, stateSince: now, shownState: 'Absent',
    };
    this.vps.set(SchedulerCore.key(partitionId, index), vp);
    return vp;
  }

  /** Forgets a VP. The caller must already have taken it off its LP (or be tearing the partition down). */
  remove(vp: SchedVp): void {
    if (vp.lp >= 0 && this.lpOwner[vp.lp] === vp) this.lpOwner[vp.lp] = null;
    vp.lp = -1;
    this.vps.delete(SchedulerCore.key(vp.partitionId, vp.index));
  }

  setProps(vp: SchedVp, p: { weight?: number; reserve?: number; cap?: number }): void {
    if (p.weight !== undefined) vp.weight = p.weight;
    if (p.reserve !== undefined) vp.reserve = p.reserve;
    if (p.cap !== undefined) vp.cap = p.cap;
  }

  private runnable(vp: SchedVp): boolean {
    return !vp.absent && !vp.halted && this.runnableOnceWoken(vp);
  }

  /** Runnable but for a halt (or the thread not started yet): what `wake` clears. */
  private runnableOnceWoken(vp: SchedVp): boolean {
    return !vp.capped && !vp.partitionSuspended && !vp.interceptSuspended && !vp.stalled;
  }

  private stateOf(vp: SchedVp): VpSchedState {
    if (vp.lp >= 0) return 'Running';
    if (vp.absent) return 'Absent';
    if (vp.partitionSuspended || vp.interceptSuspended || vp.stalled) return 'Suspended';
    if (vp.halted || vp.capped) return 'Waiting';
    return 'Ready';
  }

  /** Brings the time accounting of `vp` up to `now` and updates its shown state. */
  private account(vp: SchedVp, now: number): void {
    const dt = Math.max(0, now - vp.stateSince);
    if (vp.shownState === 'Running') {
      vp.runNs += dt;
    } else if (vp.shownState === 'Ready') vp.readyNs += dt;
    else if (vp.shownState === 'Waiting' || vp.shownState === 'Suspended') vp.waitNs += dt;
    vp.stateSince = now;
    vp.shownState = this.stateOf(vp);
  }

  /** Charges run time since the last charge to the period budget and the virtual run time. */
  private charge(vp: SchedVp, now: number): void {
    const dt = Math.max(0, now - vp.lastChargeAt);
    vp.lastChargeAt = now;
    if (dt === 0) return;
    const reserveNs = vp.reserve * this.periodNs;
    const underReserve = Math.max(0, Math.min(dt, reserveNs - vp.usedInPeriod));
    vp.usedInPeriod += dt;
    vp.vruntime += ((dt - underReserve) * 100) / vp.weight;
  }

  /** The VP has left its LP (acknowledged a preemption, halted, or stopped on an intercept). */
  released(vp: SchedVp, now: number, why: 'preempted' | 'halted' | 'intercept'): void {
    if (vp.lp >= 0) {
      this.charge(vp, now);
      if (this.lpOwner[vp.lp] === vp) this.lpOwner[vp.lp] = null;
      vp.lp = -1;
    }
    vp.preempting = false;
    if (vp.cap < 1 && vp.usedInPeriod >= vp.cap * this.periodNs) vp.capped = true; // spent while acknowledging
    if (why === 'halted') vp.halted = true;
    if (why === 'intercept') vp.interceptSuspended = true;
    this.account(vp, now);
  }

  /** A halted VP has a deliverable interrupt (or an absent VP's thread started). */
  wake(vp: SchedVp, now: number): void {
    if (!vp.halted && !vp.absent) return;
    vp.halted = false;
    vp.absent = false;
    // No banked credit for the time asleep: at most one quantum behind the least-served.
    vp.vruntime = Math.max(vp.vruntime, this.minVruntime - (this.quantumNs * 100) / vp.weight);
    this.account(vp, now);
  }

  setSuspended(vp: SchedVp, on: boolean, now: number, kind: 'partition' | 'intercept' | 'stall' = 'partition'): void {
    if (kind === 'partition') vp.partitionSuspended = on;
    else if (kind === 'intercept') vp.interceptSuspended = on;
    else vp.stalled = on;
    this.account(vp, now);
  }

  private reservedNow(vp: SchedVp): boolean {
    return vp.reserve > 0 && vp.usedInPeriod < vp.reserve * this.periodNs;
  }

  /** Lower sorts first: reserved VPs (least of their reserve used), then least virtual run time. */
  private order(a: SchedVp, b: SchedVp): number {
    const ra = this.reservedNow(a);
    const rb = this.reservedNow(b);
    if (ra !== rb) return ra ? -1 : 1;
    if (ra && rb) return a.usedInPeriod / a.reserve - b.usedInPeriod / b.reserve;
    return a.vruntime - b.vruntime;
  }

  /**
   * Dispatches `vp` (just woken by an interrupt) at once when the policy could decide nothing else:
   * it is runnable and uncapped (a cap's budget end is a deadline only `tick` computes), the period
   * has not ended, an active LP is free, and no other VP waits for one. Returns the LP it got, or
   * -1 when the decision needs `tick`. The caller must tick within a quantum either way (the
   * deadlines). This is the signalling path's shortcut to a halted VP: it is woken before the
   * full pass, instead of after it.
   */
  dispatchNow(vp: SchedVp, now: number): number {
    if (vp.lp >= 0 || !this.runnable(vp)) return -1;
    const lp = this.lpForNow(vp, now, false);
    if (lp >= 0) this.grant(vp, lp, now);
    return lp;
  }

  /**
   * The LP `dispatchNow` would give `vp` at `now` once woken, or -1; changes nothing. With
   * `releasing`, `vp` still holds the LP it halted on (a halt the scheduler has not taken yet) and
   * counts as off it. The signalling path decides with this, wakes the VP's thread, and only then
   * does the bookkeeping (`released`, `wake`, `grantNow` with this LP), which then overlaps the
   * wake-up instead of coming before it.
   */
  lpForNow(vp: SchedVp, now: number, releasing: boolean): number {
    if ((vp.lp >= 0 && !releasing) || vp.cap < 1 || !this.runnableOnceWoken(vp)) return -1;
    if (this.periodStart === 0 || now - this.periodStart >= this.periodNs) return -1; // a roll-over is tick's
    let lp = -1;
    for (let i = 0; i < this.active && i < this.lpOwner.length; i++) {
      const o = this.lpOwner[i];
      if (o === null || o === vp) {
        lp = i;
        break;
      }
    }
    if (lp < 0) return -1;
    for (const o of this.vps.values()) if (o !== vp && o.lp < 0 && this.runnable(o)) return -1;
    return lp;
  }

  /**
   * Gives `vp`, woken and off any LP, the LP `lpForNow` just chose for it (nothing changed since).
   * False, changing nothing, when that LP is not free after all: the caller leaves it to `tick`
   * (this runs on the scheduler thread, which must never throw).
   */
  grantNow(vp: SchedVp, lp: number, now: number): boolean {
    if (vp.lp >= 0 || lp < 0 || lp >= this.lpOwner.length || this.lpOwner[lp] !== null) return false;
    this.grant(vp, lp, now);
    return true;
  }

  /** Gives `vp` logical processor `lp` at `now`. */
  private grant(vp: SchedVp, lp: number, now: number): void {
    this.lpOwner[lp] = vp;
    vp.lp = lp;
    vp.grantedAt = now;
    vp.heldSince = now;
    vp.lastChargeAt = now;
    vp.dispatches++;
    this.account(vp, now);
  }

  /** Runs the policy at `now`: period roll-over, budget and quantum checks, and dispatch. */
  tick(now: number): SchedDecisions {
    const out: SchedDecisions = { preempt: [], grant: [], deadline: Infinity, waiting: 0 };
    if (this.periodStart === 0) this.periodStart = now;
    for (const vp of this.vps.values()) if (vp.lp >= 0) this.charge(vp, now);
    if (now - this.periodStart >= this.periodNs) {
      this.periodStart = now - ((now - this.periodStart) % this.periodNs);
      for (const vp of this.vps.values()) {
        vp.usedInPeriod = 0;
        if (vp.capped) {
          vp.capped = false;
          this.account(vp, now);
        }
      }
    }
    const periodEnd = this.periodStart + this.periodNs;
    let minVr = Infinity;
    for (const vp of this.vps.values()) if (this.runnable(vp) || vp.lp >= 0) minVr = Math.min(minVr, vp.vruntime);
    if (minVr !== Infinity) this.minVruntime = Math.max(this.minVruntime, minVr);

    const waiting = [...this.vps.values()].filter((v) => v.lp < 0 && this.runnable(v)).sort((a, b) => this.order(a, b));
    let freeLps = 0;
    for (let lp = 0; lp < this.active; lp++) if (this.lpOwner[lp] === null) freeLps++;
    let reservedWaiting = Math.max(0, waiting.filter((v) => this.reservedNow(v)).length - freeLps);
    // Waiting VPs that the free LPs will not absorb: only these justify ending a quantum.
    let excessWaiting = Math.max(0, waiting.length - freeLps);
    /** How many VPs wait for an LP after this tick's grants (preemptions free theirs later). */
    const waitingAfter = excessWaiting;
    // Running VPs: out of budget, suspended, or at the end of their quantum with someone waiting.
    for (const vp of this.vps.values()) {
      if (vp.lp < 0 || vp.preempting) continue;
      const budget = vp.cap < 1 ? vp.cap * this.periodNs - vp.usedInPeriod : Infinity;
      let take = false;
      if (budget <= 0) {
        vp.capped = true;
        take = true;
      } else if (vp.partitionSuspended || vp.interceptSuspended || vp.stalled || vp.halted || vp.lp >= this.active) {
        take = true;
      } else if (now - vp.grantedAt >= this.quantumNs && excessWaiting > 0 && this.order(waiting[waiting.length - excessWaiting], vp) <= 0) {
        excessWaiting--;
        take = true;
      } else if (reservedWaiting > 0 && !this.reservedNow(vp)) {
        // A VP within its reserve does not wait behind a quantum of an unreserved one.
        reservedWaiting--;
        take = true;
      }
      if (!take && now - vp.grantedAt >= this.quantumNs) vp.grantedAt = now; // nobody waits: a fresh quantum
      if (take) {
        vp.preempting = true;
        out.preempt.push(vp);
        if (vp.capped) this.account(vp, now);
        continue;
      }
      // The quantum's end matters only to a VP that waits for this LP; one that starts waiting
      // later rings the scheduler, and the quantum is over by then or ends at its own deadline.
      out.deadline = Math.min(out.deadline, now + budget, waitingAfter > 0 ? vp.grantedAt + this.quantumNs : Infinity);
    }
    // Free LPs go to the best waiting VPs.
    let next = 0;
    for (let lp = 0; lp < this.active && next < waiting.length; lp++) {
      if (this.lpOwner[lp] !== null) continue;
      const vp = waiting[next++];
      if (vp.cap < 1 && vp.usedInPeriod >= vp.cap * this.periodNs) {
        vp.capped = true;
        this.account(vp, now);
        lp--;
        continue;
      }
      this.grant(vp, lp, now);
      out.grant.push({ vp, lp });
      const budget = vp.cap < 1 ? vp.cap * this.periodNs - vp.usedInPeriod : Infinity;
      out.deadline = Math.min(out.deadline, now + budget, waitingAfter > 0 ? now + this.quantumNs : Infinity);
    }
    for (const vp of this.vps.values()) this.account(vp, now);
    out.waiting = waiting.length - next;
    // The period's end matters only while a VP still waits for an LP (reserves decide who gets
    // one), waits out its cap, or runs under a cap. Otherwise there is no deadline for it (the
    // scheduler sleeps until rung, even while uncapped VPs run): the roll-over above catches up at
    // the next tick, as if it had ticked at every period's end.
    let periodMatters = out.waiting > 0;
    for (const vp of this.vps.values()) if (vp.capped || (vp.lp >= 0 && vp.cap < 1)) periodMatters = true;
    if (periodMatters) out.deadline = Math.min(out.deadline, periodEnd);
    return out;
  }
}
