/**
 * The VP control region: the shared-memory contract between the hypervisor's scheduler and the
 * VP threads of a child partition. One region per partition (`hvlab-<host>-p<id>-vp`), created by
 * the hypervisor: a header page, then one 4 KiB page per VP holding
 *
 *   - the dispatch word: the hypervisor grants and revokes the LP here, the VP answers here
 *     (ack a preemption, halt, or stop on an intercepted port access);
 *   - the virtual APIC: IRR, ISR, TPR, and the auto-EOI bits of pending SINT vectors;
 *   - the synthetic-timer MSRs (4 timers) and the ICR (IPIs), which the guest writes here and the
 *     hypervisor picks up — hvlab's stand-in for WRMSR exits on these MSRs;
 *   - the I/O intercept record, the RAX/RIP mirror, and the scheduler's accounting.
 *
 * A host-wide scheduler region (`hvlab-<host>-sched`) holds one doorbell word; every change the
 * scheduler must see is followed by incrementing it and a futex wake. The hypervisor validates
 * everything it reads from a guest-writable page; a guest can only hurt itself.
 */
export const VP_PAGE_BYTES = 4096;
export const VP_REGION_MAGIC = 0x50565648; // "HVVP"

/** Header page (byte offsets). */
export const VpRegionHeader = {
  magic: 0x00, // u32
  vpCount: 0x04, // u32
  /** i64: hrtime (CLOCK_MONOTONIC ns) at which reference time was 0. */
  refBaseNs: 0x08,
  // 0x10-0x1f: the clock-fault words (VpRegionClock, hvwire.ts).
  /**
   * i32: the count of the partition's suspensions the hypervisor's main thread has set (a
   * Suspend of 1 that suspends it), and the count its scheduler has taken: stored at the end of
   * the first scheduling pass after it applied that suspension, when every VP page shows its
   * state since. A VP page showing Suspended while taken equals asked is not an earlier
   * suspension's (a thaw the scheduler had not yet taken may have let the VP run since).
   */
  suspendAsked: 0x20,
  suspendTaken: 0x24,
  /**
   * i32, scheduler-written: 1 while a VP that halts must ring the scheduler's doorbell (another VP
   * of the host waits for an LP), 0 while it halts quietly: it stores Dispatch.Halt (after its
   * release stamp) and the scheduler takes the halt at its next pass or dispatch of that VP. A VP
   * reads it after storing the halt; the scheduler looks at the dispatch words again after storing
   * it. A guest that writes it only changes when its own halts are seen.
   */
  haltRing: 0x28,
} as const;

/** The name of partition `partitionId`'s VP region on host `hostId` (made by its hypervisor, opened by its partition process and VMWP). */
export function vpRegionName(hostId: string, partitionId: number): string {
  return `hvlab-${hostId}-p${partitionId}-vp`;
}

export function vpRegionBytes(maxVps: number): number {
  return VP_PAGE_BYTES * (1 + maxVps);
}
export function vpPageOffset(vp: number): number {
  return VP_PAGE_BYTES * (1 + vp);
}

/** Per-VP page (byte offsets from the page start). */
export const VpPage = {
  dispatch: 0x000, // i32, Dispatch
  state: 0x004, // i32, VpRunState (scheduler-written, for observers)
  tpr: 0x008, // i32, task priority (bits 7-4 the class)
  icrBusy: 0x00c, // i32, 1 while an IPI request waits for the hypervisor
  icrVector: 0x010, // i32
  icrTargetsLo: 0x014, // i32, VP mask bits 0-31
  icrTargetsHi: 0x018, // i32, VP mask bits 32-63
  timerGen: 0x01c, // i32, bumped by the guest after writing timer MSRs here
  irr: 0x020, // 8 x i32
  isr: 0x040, // 8 x i32
  stimerConfig: 0x060, // 4 x i32
  stimerCount: 0x070, // 4 x f64 (100 ns units)
  ioPort: 0x090, // i32
  ioAccess: 0x094, // i32, 1 read, 2 write
  ioSize: 0x098, // i32, 1, 2 or 4
  ioValue: 0x09c, // i32, the value written, or (after emulation) the value read
  probeAssertNs: 0x0a0, // i64, when the hypervisor asserted the probe vector
  probeTakenNs: 0x0a8, // i64, when the VP took it
  releasedNs: 0x0b0, // i64, when the VP last gave its LP back (guest-reported; the scheduler bounds it)
  /**
   * f64: host time (CLOCK_MONOTONIC ns) of the VP's first dispatch, written once by the scheduler (0:
   * never dispatched). A migration's destination reads it for the instant its VM ran again (the end
   * of the downtime); the guest can write it too, so a reader bounds it by what it knows.
   */
  firstRunNs: 0x0b8,
  runMs: 0x0c0, // f64 accounting, scheduler-written
  readyMs: 0x0c8,
  waitMs: 0x0d0,
  dispatches: 0x0d8,
  /** f64: host time (CLOCK_MONOTONIC ns) the four numbers above are as of; observers add what passed since in the shown state. */
  accountedNs: 0x0e0,
  rax: 0x100, // f64 mirror of RAX (intercept results)
  rip: 0x108, // f64 mirror of RIP
  aeoi: 0x140, // 8 x i32: pending vectors that came from auto-EOI SINTs
  stimerNext: 0x180, // 4 x f64: next expiry (reference time) per timer, 0 = not armed (scheduler-owned)
  /**
   * i32, guest-written (hvlab's own, no TLFS register): bit s = the guest kernel services SINT s on
   * its main thread's SINT line (guest sint-line.ts) and lets the hypervisor raise it there
   * directly (sintLineAccepts says when it does). 0, the default, keeps the TLFS path: the vector
   * is pended on this APIC and a halted VP dispatched to take it.
   */
  sintLineOn: 0x1a0,
  /**
   * i32: bit s = SINT s raised on the line by the hypervisor and not yet taken by the kernel's main
   * thread, which takes the whole word (exchange with 0) each time its session's page rings
   * `attention`. The hypervisor sets a bit with an atomic OR and rings only when the word was 0.
   */
  sintLineRaised: 0x1a4,
} as const;

/** Vectors at or above this are probes: the VP records when it took them (interrupt-latency benchmark). */
export const PROBE_VECTOR_MIN = 0xf0;

/** Values of the dispatch word. The hypervisor writes Granted and Preempt (and Off after taking a halt or intercept); the VP writes the rest. */
export const Dispatch = {
  Off: 0,
  Granted: 1,
  Preempt: 2,
  Halt: 3,
  Intercept: 4,
  /** The VP thread is up and asks to run (StartVirtualProcessor). */
  Start: 5,
} as const;

/** Scheduler states (REFERENCE "Scheduling"); Absent = created but its thread never started. */
export const VpRunState = { Absent: 0, Ready: 1, Running: 2, Waiting: 3, Suspended: 4 } as const;

export type VpRunStateName = 'Absent' | 'Ready' | 'Running' | 'Waiting' | 'Suspended';
export function vpRunStateName(n: number): VpRunStateName {
  return (['Absent', 'Ready', 'Running', 'Waiting', 'Suspended'] as const)[n] ?? 'Absent';
}

/**
 * Whether the scheduler has taken suspension number `seq` of a partition (its VP region's
 * suspendTaken has reached it, in int32 arithmetic) and the pages of VPs `vps` all show their VP
 * suspended or absent: their state then stands still until a thaw. Read from the VP region, where
 * the scheduler writes these words (the guest maps it too: one that writes them fools only the
 * save of itself).
 */
export function suspensionTaken(vpRegion: Int32Array, seq: number, vps: Iterable<number>): boolean {
  if (!suspensionCounted(vpRegion, seq)) return false;
  for (const vp of vps) {
    const st = Atomics.load(vpRegion, (vpPageOffset(vp) + VpPage.state) >> 2);
    if (st !== VpRunState.Suspended && st !== VpRunState.Absent) return false;
  }
  return true;
}

/**
 * The first dispatch of any of VPs 0..`vpCount`-1 (VpPage.firstRunNs, CLOCK_MONOTONIC ns), read
 * from a VP region the guest can write: a value that is not a positive finite number counts as
 * never dispatched, and the result is bounded by `sinceNs` and `nowNs` (no VP ran before it was
 * let run, or after now). Null while none has run.
 */
export function firstRunOf(vpRegion: Float64Array, vpCount: number, sinceNs: number, nowNs: number): number | null {
  let first = Infinity;
  for (let vp = 0; vp < vpCount; vp++) {
    const t = vpRegion[(vpPageOffset(vp) + VpPage.firstRunNs) >> 3];
    if (t !== undefined && Number.isFinite(t) && t > 0 && t < first) first = t;
  }
  return first === Infinity ? null : Math.min(Math.max(first, sinceNs), nowNs);
}

/**
 * Takes the next suspension number of a partition (VpRegionHeader.suspendAsked: the last one
 * given, int32, 0 skipped): the hypervisor's main thread and its scheduler thread both give them,
 * so the word is advanced by compare-and-exchange and no number is given twice. The word lies in a
 * region the partition process maps: after a few lost exchanges (a process writing it all along)
 * the number is stored as it is, which only confuses that partition's own saves.
 */
export function takeSuspensionNumber(vpRegion: Int32Array): number {
  const w = VpRegionHeader.suspendAsked >> 2;
  for (let i = 0; ; i++) {
    const cur = Atomics.load(vpRegion, w);
    const next = ((cur + 1) | 0) || 1;
    if (Atomics.compareExchange(vpRegion, w, cur, next) === cur) return next;
    if (i >= 16) {
      Atomics.store(vpRegion, w, next);
      return next;
    }
  }
}

/** Whether the VP region's suspendTaken has reached suspension number `seq` (int32 arithmetic: the count wraps). */
export function suspensionCounted(vpRegion: Int32Array, seq: number): boolean {
  return ((Atomics.load(vpRegion, VpRegionHeader.suspendTaken >> 2) - seq) | 0) >= 0;
}

/** A guest-writable f64 as a time: finite and >= 0, else 0. */
function timeOrZero(x: number | undefined): number {
  return x !== undefined && Number.isFinite(x) && x >= 0 ? x : 0;
}

/**
 * A VP's accounting read from its page (at byte offset `off` of the VP region `i32`/`f64` view),
 * brought up to `nowNs` (CLOCK_MONOTONIC): the scheduler publishes it only when it runs, and it
 * sleeps while nothing is due, so the time since VpPage.accountedNs is added to the shown state's
 * total. A VP that halted without a ring (VpRegionHeader.haltRing), not yet taken by the
 * scheduler, ran until its release stamp (bounded to the time since) and waits since. Every field
 * is guest-writable: anything out of range reads as 0.
 */
export function vpAccounting(i32: Int32Array, f64: Float64Array, off: number, nowNs: number): { state: VpRunStateName; runMs: number; readyMs: number; waitMs: number } {
  const shown = vpRunStateName(Atomics.load(i32, (off + VpPage.state) >> 2));
  const at = timeOrZero(f64[(off + VpPage.accountedNs) >> 3]);
  const since = at > 0 ? Math.max(0, (nowNs - at) / 1e6) : 0;
  const base = (field: number): number => timeOrZero(f64[(off + field) >> 3]);
  let ran = shown === 'Running' ? since : 0;
  let state = shown;
  if (shown === 'Running' && at > 0 && Atomics.load(i32, (off + VpPage.dispatch) >> 2) === Dispatch.Halt) {
    const stamp = Number(new BigInt64Array(i32.buffer, i32.byteOffset + off + VpPage.releasedNs, 1)[0]);
    ran = Math.min(since, Math.max(0, (stamp - at) / 1e6));
    state = 'Waiting';
  }
  return {
    state,
    runMs: base(VpPage.runMs) + ran,
    readyMs: base(VpPage.readyMs) + (state === 'Ready' ? since : 0),
    waitMs: base(VpPage.waitMs) + (state === 'Waiting' || state === 'Suspended' ? since - ran : 0),
  };
}

/**
 * A VP's CPU % over `dtMs` of wall time from its run time then (`baseMs`) and now (`nowMs`), one
 * decimal. A VP runs at most all of the time, so a share past 101 % (a little over 100 is the
 * sampling's jitter, shown as 100) can only come from a guest that wrote its page's run time, and
 * reads as 0 as every out-of-range field does (a scribbled page showed 792 % for one VP).
 */
export function vpCpuPercent(nowMs: number, baseMs: number, dtMs: number): number {
  if (!(dtMs > 0) || !Number.isFinite(nowMs) || !Number.isFinite(baseMs)) return 0;
  const pct = Math.round(((nowMs - baseMs) / dtMs) * 1000) / 10;
  if (!(pct >= 0) || pct > 101) return 0;
  return Math.min(100, pct);
}

/** Scheduler region (byte offsets). */
/**
 * The host's scheduler region (mapped by every partition process and hypercall session): the
 * doorbell word the scheduler thread sleeps on, and the count of rings that were hypercalls (a
 * hypercall ring adds to `hcRings` first, then to `doorbell`, so the thread can tell that no
 * scheduling pass was asked for).
 */
export const SchedRegion = { doorbell: 0x00, hcRings: 0x04 } as const;
export const SCHED_REGION_BYTES = 4096;

// ---- virtual APIC ---------------------------------------------------------------------------
// Bit operations over the 256-bit IRR/ISR/AEOI arrays of one VP page, as Int32 word indexes into
// an Int32Array of the whole region. Priority rules from REFERENCE "SynIC and interrupts".

function highest(words: Int32Array, base: number): number {
  for (let w = 7; w >= 0; w--) {
    const v = Atomics.load(words, base + w) >>> 0;
    if (v !== 0) return w * 32 + 31 - Math.clz32(v);
  }
  return -1;
}

export class VirtualApicView {
  private readonly irr: number;
  private readonly isr: number;
  private readonly aeoi: number;
  private readonly tpr: number;
  constructor(readonly words: Int32Array, pageOffset: number) {
    this.irr = (pageOffset + VpPage.irr) >> 2;
    this.isr = (pageOffset + VpPage.isr) >> 2;
    this.aeoi = (pageOffset + VpPage.aeoi) >> 2;
    this.tpr = (pageOffset + VpPage.tpr) >> 2;
  }
  /** Whether `vector` is pending (set in IRR, not yet taken). */
  pending(vector: number): boolean {
    return (Atomics.load(this.words, this.irr + (vector >> 5)) & (1 << (vector & 31))) !== 0;
  }
  /** Sets `vector` pending (hypervisor side). Returns false when it was already pending. */
  assert(vector: number, autoEoi = false): boolean {
    const bit = 1 << (vector & 31);
    if (autoEoi) Atomics.or(this.words, this.aeoi + (vector >> 5), bit);
    return (Atomics.or(this.words, this.irr + (vector >> 5), bit) & bit) === 0;
  }
  highestPending(): number {
    return highest(this.words, this.irr);
  }
  highestInService(): number {
    return highest(this.words, this.isr);
  }
  getTpr(): number {
    return Atomics.load(this.words, this.tpr) & 0xff;
  }
  setTpr(v: number): void {
    Atomics.store(this.words, this.tpr, v & 0xff);
  }
  /** PPR = max(TPR class, highest in-service class) << 4. */
  ppr(): number {
    const isr = this.highestInService();
    return Math.max(this.getTpr() >> 4, isr < 0 ? 0 : isr >> 4) << 4;
  }
  /** The vector the VP would take now, or -1: the highest pending one whose class exceeds the PPR's. */
  deliverable(): number {
    const v = this.highestPending();
    if (v < 0) return -1;
    return v >> 4 > this.ppr() >> 4 ? v : -1;
  }
  /** Takes `vector`: IRR -> ISR, or just clears it when it came from an auto-EOI SINT. Returns whether it needs an EOI. */
  accept(vector: number): boolean {
    const w = vector >> 5;
    const bit = 1 << (vector & 31);
    Atomics.and(this.words, this.irr + w, ~bit);
    const auto = (Atomics.and(this.words, this.aeoi + w, ~bit) & bit) !== 0;
    if (!auto) Atomics.or(this.words, this.isr + w, bit);
    return !auto;
  }
  /** EOI: retires the highest in-service vector. Returns it, or -1 when none was in service. */
  eoi(): number {
    const v = this.highestInService();
    if (v >= 0) Atomics.and(this.words, this.isr + (v >> 5), ~(1 << (v & 31)));
    return v;
  }
  /** The whole APIC state as plain numbers (save). */
  snapshot(): { irr: number[]; isr: number[]; aeoi: number[]; tpr: number } {
    const read = (b: number): number[] => Array.from({ length: 8 }, (_, i) => Atomics.load(this.words, b + i) >>> 0);
    return { irr: read(this.irr), isr: read(this.isr), aeoi: read(this.aeoi), tpr: this.getTpr() };
  }
  load(s: { irr: number[]; isr: number[]; aeoi: number[]; tpr: number }): void {
    for (let i = 0; i < 8; i++) {
      Atomics.store(this.words, this.irr + i, s.irr[i] | 0);
      Atomics.store(this.words, this.isr + i, s.isr[i] | 0);
      Atomics.store(this.words, this.aeoi + i, s.aeoi[i] | 0);
    }
    this.setTpr(s.tpr);
  }
}

/**
 * The hypervisor's side of an interrupt to a VP (its main thread and its scheduler thread alike):
 * pends `vector` on the VP's virtual APIC, stamping the interrupt-latency probe of `bench sched`
 * when the vector is one, and says whether the scheduler must look. A VP that holds its LP
 * (dispatch word Granted, or Preempt: it will be Ready, not halted) takes the vector at its next
 * step boundary, so it needs no scheduling pass. That is safe against a VP halting at the same
 * moment: it publishes Halt after this IRR write was visible or not, then rings, and the scheduler
 * reads IRR after that ring.
 */
export function pendInterrupt(apic: VirtualApicView, region: SharedArrayBuffer, pageOffset: number, vector: number, autoEoi: boolean): boolean {
  if (vector >= PROBE_VECTOR_MIN) new BigInt64Array(region, pageOffset + VpPage.probeAssertNs, 1)[0] = process.hrtime.bigint();
  apic.assert(vector, autoEoi);
  const d = Atomics.load(apic.words, (pageOffset + VpPage.dispatch) >> 2);
  return d !== Dispatch.Granted && d !== Dispatch.Preempt;
}

/**
 * Whether SINT `sint` (vector `vector`, auto-EOI `autoEoi`) of the VP whose APIC is `apic` may be
 * raised on the guest kernel's SINT line instead of pended on the APIC: the guest registered the
 * SINT (VpPage.sintLineOn), the SINT is auto-EOI (nothing to EOI, nothing enters the ISR), and the
 * APIC would deliver the vector now (its class above the PPR: TPR and what is in service). Whether
 * the VP is halted and its partition not suspended is the scheduler's to say (the caller asks it).
 */
export function sintLineAccepts(apic: VirtualApicView, pageOffset: number, sint: number, vector: number, autoEoi: boolean): boolean {
  if (!autoEoi || sint < 0 || sint > 15) return false;
  if ((Atomics.load(apic.words, (pageOffset + VpPage.sintLineOn) >> 2) & (1 << sint)) === 0) return false;
  return vector >> 4 > apic.ppr() >> 4;
}

/** Raises SINT `sint` on the guest's line (VpPage.sintLineRaised); true when the word was 0: the guest's loop must be woken. */
export function raiseSintLine(words: Int32Array, pageOffset: number, sint: number): boolean {
  return Atomics.or(words, (pageOffset + VpPage.sintLineRaised) >> 2, 1 << sint) === 0;
}

// ---- synthetic timers -----------------------------------------------------------------------
export const STIMER_COUNT = 4;
/** Config bits (REFERENCE): 0 enable, 1 periodic, 3 lazy, 4-11 vector, 12 direct mode, 16-19 SINT. */
export const StimerConfig = { enable: 1, periodic: 2, lazy: 8, direct: 1 << 12 } as const;
export function stimerConfig(o: { enable: boolean; periodic?: boolean; lazy?: boolean; direct?: boolean; vector?: number; sint?: number }): number {
  return (o.enable ? 1 : 0) | (o.periodic ? 2 : 0) | (o.lazy ? 8 : 0) | ((o.vector ?? 0) & 0xff) << 4 | (o.direct ? 1 << 12 : 0) | ((o.sint ?? 0) & 0xf) << 16;
}
export function decodeStimerConfig(c: number): { enable: boolean; periodic: boolean; lazy: boolean; vector: number; direct: boolean; sint: number } {
  return { enable: (c & 1) !== 0, periodic: (c & 2) !== 0, lazy: (c & 8) !== 0, vector: (c >> 4) & 0xff, direct: (c & (1 << 12)) !== 0, sint: (c >> 16) & 0xf };
}

/**
 * How many missed periods a periodic timer delivers late. Hyper-V's periodic timers that are not
 * lazy catch up (each missed expiration is delivered, as soon as the previous one was taken);
 * hvlab bounds the backlog, and a timer further behind skips to its grid, phase kept.
 */
export const STIMER_MAX_CATCHUP = 100;

/**
 * The expiration after `due` of a periodic timer with `period`, at reference time `ref`: one period
 * later, always on the grid (phase-locked: `due + k * period`). It is the next missed period while
 * the timer is behind (catch-up), unless the timer is lazy or more than STIMER_MAX_CATCHUP periods
 * behind: then the first grid point after `ref`.
 */
export function nextPeriodicExpiry(due: number, period: number, ref: number, lazy: boolean): number {
  const next = due + period;
  if (next > ref) return next;
  if (!lazy && ref - next < STIMER_MAX_CATCHUP * period) return next;
  return ref + period - ((ref - next) % period);
}

const f64Scratch = new Float64Array(1);
const i64Scratch = new BigInt64Array(f64Scratch.buffer);
function f64Bits(x: number): bigint {
  f64Scratch[0] = x;
  return i64Scratch[0]!;
}

/**
 * A VP's synthetic-timer expirations (VpPage.stimerNext), read and advanced atomically: the
 * scheduler fires them for a VP that is not running, the VP itself fires its direct-mode timers at
 * its step boundaries while it runs (Hyper-V delivers an active VP's direct timers without a
 * scheduling decision), and whoever advances an expiration first delivers it (compare-exchange on
 * the word's bits), so none is delivered twice.
 */
export class StimerNextView {
  private readonly words: BigInt64Array;
  private readonly base: number;
  constructor(region: SharedArrayBuffer, pageOffset: number) {
    this.words = new BigInt64Array(region);
    this.base = (pageOffset + VpPage.stimerNext) >> 3;
  }
  /** Timer `t`'s next expiration (reference time), 0 when not armed; anything a guest wrote, unchecked. */
  get(t: number): number {
    i64Scratch[0] = Atomics.load(this.words, this.base + t);
    return f64Scratch[0]!;
  }
  set(t: number, next: number): void {
    Atomics.store(this.words, this.base + t, f64Bits(next));
  }
  /** Replaces expiration `expected` with `next`; false when someone changed it first (then deliver nothing). */
  advance(t: number, expected: number, next: number): boolean {
    const e = f64Bits(expected);
    return Atomics.compareExchange(this.words, this.base + t, e, f64Bits(next)) === e;
  }
}
/** TimerExpired message payload: timer index u32, reserved u32, expiration time u64, delivery time u64. */
export const TIMER_EXPIRED_PAYLOAD_BYTES = 24;

/** Reference time (100 ns units since the partition's reference base). */
export function referenceTime(refBaseNs: bigint, nowNs: bigint = process.hrtime.bigint()): number {
  return Number((nowNs - refBaseNs) / 100n);
}
