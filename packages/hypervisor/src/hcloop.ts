/**
 * The hypercall pages' server, run by the hypervisor's scheduler thread (sched-thread.ts), which
 * never waits on an event loop: a session rings the host's doorbell (counting the ring as a
 * hypercall ring, so the thread can skip its scheduling pass), and the thread looks at every
 * session's page for a call it has not taken yet (`HcLoop.pass`).
 *
 * It carries out SignalEvent itself when it holds a current route for the connection (see
 * Hypervisor.signalRoute): it sets the event flags in the target's SIEF page and pends the SINT's
 * vector on the target VP's virtual APIC once (ringing the scheduler when that VP does not hold
 * its LP), or queues the events on the root port owner's event page. Routes come from the main thread, which
 * makes one each time it serves a SignalEvent, and each carries the route epoch it was made in: the
 * main thread bumps the epoch word whenever ports, connections, SynIC registers, partitions or
 * sessions may have changed, and a route from an older epoch is not used. Every other call, and a
 * SignalEvent without a current route, goes to the main thread (`fwd` on the page, then a message),
 * which serves it with the hypervisor's tables and completes it on the page.
 *
 * It also carries out a partition's Suspend (SetPartitionProperty Suspend, 0 or 1) for a session
 * the main thread has said may make it (`suspendRoute`: the session's partition is the target's
 * parent or the root, with the privilege, and the target is scheduled with a VP region): the
 * scheduler applies it on this thread (the SuspendHook) and the main thread is told after
 * (`suspended`, sent before the call completes, so it is there before any later call of that
 * session reaches the main thread). A migration's freeze starts with this call, and through the
 * main thread it took three wake-ups of other threads (this one forwarding, the main thread
 * serving and handing the suspension back here) before the pass that takes it, ~0.3 ms each in a
 * busy blackout on two CPUs.
 *
 * A page is written by an untrusted session: the thread reads only `req`, `code`, `inLen` and a
 * SignalEvent input (8 bytes, and 4 per flag beyond the first: hvlab's extension, hcpage.ts), an
 * AssertVirtualInterrupt input (16 bytes), each word once, or a SetPartitionProperty input (one
 * copy, through decodeHcCall); it takes each request number once,
 * and whatever those words hold, a call either completes with a status or goes to the main
 * thread, which decodes it with decodeHcCall.
 */
import {
  HcWord, HcWaiting, HcWakeBy, HC_INPUT_OFFSET, HC_INPUT_MAX, HC_OUTPUT_OFFSET, HC_SIGNAL_MORE_MAX, PartitionProperty, decodeHcCall, HC_PAGE_BYTES, HcEventWord, MAX_MESSAGE_PAYLOAD, HvCall, HvStatus, VirtualApicView, pendInterrupt, pushHcEvent, raiseSintLine, sintLineAccepts, type HcEvent,
} from '@hvlab/protocol';
import { futexWake, signalWakeFd } from '@hvlab/shm';
import type { SignalRoute } from './hypervisor.js';

/**
 * Int32 words of the hypercall server's private state (a SharedArrayBuffer of the hypervisor
 * process only, never a /dev/shm file: no session can write the epoch).
 */
export const HcStateWord = { epoch: 0, fastCalls: 1, forwarded: 2, lineRaises: 3 } as const;
export const HC_STATE_BYTES = 16;
/** Entries one session's backlog holds at most (see queueEvent). */
export const MAX_BACKLOG = 4096;

export type ToHcThread =
  /** `wake`: the session's wake descriptor (an id of this process's, 0: none). */
  | { t: 'session'; sid: string; region: SharedArrayBuffer; wake: number }
  /** Session `sid` may suspend and resume partition `partitionId` (see the file's comment). */
  | { t: 'suspendRoute'; sid: string; partitionId: number }
  | { t: 'sessionGone'; sid: string }
  /** `lineSession`: a child route's target session, whose loop a SINT raised on the guest's line wakes (null: no line). */
  | { t: 'route'; sid: string; connectionId: number; epoch: number; route: SignalRoute; lineSession?: string | null }
  /** AssertVirtualInterrupt by session `sid` on VP `vpIndex` of partition `partitionId` lands in that VP's APIC. */
  | { t: 'interruptRoute'; sid: string; partitionId: number; vpIndex: number; epoch: number; vpRegion: SharedArrayBuffer; vpOffset: number }
  /** An event for a root port whose owner has a page (the main thread served the SignalEvent), or an intercept for a session with a page. */
  | { t: 'event'; sid: string; ev: HcEvent }
  | { t: 'stop' };

export type FromHcThread =
  | { t: 'call'; sid: string; seq: number }
  /** This thread suspended (`on`) or resumed a partition; `seq` is a suspension's number (0 on a resume). */
  | { t: 'suspended'; partitionId: number; on: boolean; seq: number }
  /** An intercept that did not fit in the session's event queue: the main thread sends it over the socket. */
  | { t: 'undelivered'; sid: string; ev: HcEvent };

export interface HcThreadData {
  /** The private state (HcStateWord). */
  state: SharedArrayBuffer;
  port: import('node:worker_threads').MessagePort;
}

interface ChildRoute {
  kind: 'child';
  epoch: number;
  flags: Int32Array;
  flagsWord: number;
  flagCount: number;
  masked: boolean;
  vector: number;
  autoEoi: boolean;
  target: VpTarget;
  sint: number;
  /** The target partition's session (see raiseOnLine); null: always the APIC. */
  lineSession: string | null;
}
/** A VP that interrupts are pended on (pendInterrupt's arguments), and who it is (for the dispatch hook). */
interface VpTarget {
  apic: VirtualApicView;
  region: SharedArrayBuffer;
  offset: number;
  partitionId: number;
  vpIndex: number;
}
function vpTarget(region: SharedArrayBuffer, offset: number, partitionId: number, vpIndex: number): VpTarget {
  return { apic: new VirtualApicView(new Int32Array(region), offset), region, offset, partitionId, vpIndex };
}

/**
 * The scheduler's shortcut to a VP an interrupt was just pended on (SchedulerLoop.dispatchNow):
 * true when it granted the VP an LP and woke its thread.
 */
export type DispatchHook = (partitionId: number, vpIndex: number) => boolean;
/**
 * The scheduler's side of a Suspend served here (SchedulerLoop.suspendNow): applies it and says
 * whether it changed anything and the suspension's number (0 unless it suspended), or null when
 * the partition is not the scheduler's (the call then goes to the main thread).
 */
export type SuspendHook = (partitionId: number, on: boolean) => { changed: boolean; seq: number } | null;
/**
 * The scheduler's say on raising a SINT on a guest's line (SchedulerLoop.sintLineOk): true when
 * VP `vpIndex` of partition `partitionId` is halted, neither it nor its partition is suspended (or
 * stalled), and no interrupt delay holds the partition's interrupts. Asked on the scheduler thread,
 * which applies suspensions: none is taken between this answer and the raise.
 */
export type LineHook = (partitionId: number, vpIndex: number) => boolean;
interface RootRoute {
  kind: 'root';
  epoch: number;
  owner: string;
  portId: number;
  flagCount: number;
  sender: number;
}

interface SessionRec extends PageRef {
  sid: string;
  /** The page as f64 words (AssertVirtualInterrupt's partition id). */
  f64: Float64Array;
  /** The last request number taken. */
  taken: number;
  /** Messages and intercepts that did not fit in the event queue yet, in order. */
  backlog: HcEvent[];
  routes: Map<number, ChildRoute | RootRoute>;
  /** AssertVirtualInterrupt targets by "partition:vp". */
  vps: Map<string, { epoch: number; target: VpTarget }>;
  /** The partitions this session may suspend here (suspendRoute). */
  suspends: Set<number>;
}

/**
 * A session's page as both threads hold it: the region, its words, and the session's wake
 * descriptor (an id of this process's, `signalWakeFd`; 0 when it has none).
 */
export interface PageRef {
  region: SharedArrayBuffer;
  i32: Int32Array;
  wake: number;
}

/**
 * Tells the session's event loop to look at its page: `attention` counts up and the loop's watcher
 * is woken, through the session's wake descriptor when the session polls that (HcWord.wakeBy: one
 * wake-up, of the loop itself), through the word's futex otherwise (its watcher thread, which
 * then wakes the loop). `wakeBy` is the session's word: a session that claims the descriptor
 * without polling it only loses its own wake-ups.
 */
export function wakeAttention(p: PageRef): void {
  Atomics.add(p.i32, HcWord.attention, 1);
  if (p.wake > 0 && Atomics.load(p.i32, HcWord.wakeBy) === HcWakeBy.Descriptor) signalWakeFd(p.wake);
  else futexWake(p.region, HcWord.attention);
}

/**
 * Completes call `seq` on a session's page with `status`, and wakes the caller the way it waits:
 * nothing to wake while it watches `done` (the completion costs a few stores, no system call), a
 * futex wake while it sleeps on `done`, `attention` for its event loop.
 */
export function completeHcCall(p: PageRef, seq: number, status: number, reps = 0, outLen = 0): void {
  const i32 = p.i32;
  Atomics.store(i32, HcWord.status, status);
  Atomics.store(i32, HcWord.reps, reps);
  Atomics.store(i32, HcWord.outLen, outLen);
  Atomics.store(i32, HcWord.done, seq);
  const waiting = Atomics.load(i32, HcWord.waiting);
  if (waiting === HcWaiting.Watching || waiting === HcWaiting.Posted) return;
  if (waiting === HcWaiting.Asleep) futexWake(p.region, HcWord.done);
  else wakeAttention(p);
}

/** The thread's state and one pass, without the thread (tests drive it in-process). */
export class HcLoop {
  private readonly sessions = new Map<string, SessionRec>();
  private readonly state: Int32Array;
  running = true;
  /**
   * Set when a call pended an interrupt on a VP that does not hold its LP and the dispatch hook did
   * not dispatch it: the scheduling pass must run before the held-back completions (see `pass`).
   */
  wantSchedule = false;
  /** Set when the dispatch hook dispatched a VP: no scheduling pass is due for it (see runScheduler). */
  dispatched = false;
  /** A SignalEvent's flag numbers, reused from call to call. */
  private readonly flagScratch: number[] = [];
  private deferring = false;
  private readonly deferred: Array<{ page: PageRef; seq: number }> = [];

  constructor(
    state: SharedArrayBuffer, private readonly out: (m: FromHcThread) => void, private readonly dispatch: DispatchHook | null = null, private readonly suspend: SuspendHook | null = null,
    private readonly lineOk: LineHook | null = null,
  ) {
    this.state = new Int32Array(state);
  }

  handle(m: ToHcThread): void {
    switch (m.t) {
      case 'session': {
        const i32 = new Int32Array(m.region);
        // A fresh page: its first call is request 1, even if it was published before this thread
        // (still starting, say) learned of the session.
        this.sessions.set(m.sid, { sid: m.sid, region: m.region, i32, wake: m.wake, f64: new Float64Array(m.region), taken: 0, routes: new Map(), vps: new Map(), suspends: new Set(), backlog: [] });
        break;
      }
      case 'sessionGone':
        this.sessions.delete(m.sid);
        break;
      case 'route': {
        const s = this.sessions.get(m.sid);
        if (!s) break;
        const r = m.route;
        if (r.kind === 'root') {
          s.routes.set(m.connectionId, { kind: 'root', epoch: m.epoch, owner: r.ownerSession, portId: r.portId, flagCount: r.flagCount, sender: r.sender });
        } else {
          s.routes.set(m.connectionId, {
            kind: 'child', epoch: m.epoch, flags: new Int32Array(r.memory), flagsWord: r.flagsOffset >> 2, flagCount: r.flagCount, masked: r.masked,
            vector: r.vector, autoEoi: r.autoEoi, target: vpTarget(r.vpRegion, r.vpOffset, r.partitionId, r.vpIndex),
            sint: r.sint, lineSession: m.lineSession ?? null,
          });
        }
        break;
      }
      case 'suspendRoute':
        this.sessions.get(m.sid)?.suspends.add(m.partitionId);
        break;
      case 'interruptRoute': {
        const s = this.sessions.get(m.sid);
        if (!s) break;
        s.vps.set(`${m.partitionId}:${m.vpIndex}`, { epoch: m.epoch, target: vpTarget(m.vpRegion, m.vpOffset, m.partitionId, m.vpIndex) });
        break;
      }
      case 'event': {
        const owner = this.sessions.get(m.sid);
        if (owner) this.queueEvent(owner, m.ev);
        break;
      }
      case 'stop':
        this.running = false;
        break;
    }
  }

  private queueEvent(owner: SessionRec, ev: HcEvent): void {
    if (ev.kind === 'rootMessage' && ev.payload.length > MAX_MESSAGE_PAYLOAD) return; // never fits: PostMessage refuses these
    if (ev.kind === 'rootEvent') {
      pushHcEvent(owner.i32, ev); // a full ring counts it lost: the reader signals every port
    } else if (owner.backlog.length > 0 || !pushHcEvent(owner.i32, ev)) {
      // Order is kept: behind what already waits. Past the cap the session does not read its
      // page at all; what overflows goes over the socket (intercepts) or is dropped (messages,
      // as to a full SynIC queue).
      if (owner.backlog.length >= MAX_BACKLOG) {
        if (ev.kind === 'intercept') this.out({ t: 'undelivered', sid: owner.sid, ev });
        return;
      }
      owner.backlog.push(ev);
      Atomics.store(owner.i32, (HC_PAGE_BYTES >> 2) + HcEventWord.backlog, 1);
    }
    wakeAttention(owner);
  }

  /**
   * Serves every call published since the last pass; returns how many it took.
   *
   * A call that pended an interrupt on a VP without its LP (a halted VP) needs that VP dispatched.
   * The dispatch hook does it at once when the policy has nothing to decide; otherwise
   * `wantSchedule` asks for the scheduling pass. With `defer` (the scheduler thread), such a call's
   * completion waits for `completeDeferred`, which the thread calls once the VP was woken (after
   * this pass when the hook woke it, after the scheduling pass otherwise): the VP thread is woken
   * before the caller, as a hypervisor sends its wake-up IPI before it returns from the hypercall.
   * On two cores the order decides who gets the idle CPU first; woken after the caller (whose
   * process goes on to answer its own caller), the halted VP waited behind it (bench sched, the
   * halted VP through the page: p50 163.6 µs before this, 82-116 µs with it).
   */
  pass(defer = false): number {
    this.deferring = defer;
    let n = 0;
    for (const s of this.sessions.values()) {
      if (s.backlog.length > 0) this.flushBacklog(s);
      const req = Atomics.load(s.i32, HcWord.req);
      if (req === s.taken) continue;
      s.taken = req;
      n++;
      if (!this.fast(s, req)) {
        Atomics.add(this.state, HcStateWord.forwarded, 1);
        Atomics.store(s.i32, HcWord.done, ~req);
        if (Atomics.load(s.i32, HcWord.waiting) === HcWaiting.Asleep) futexWake(s.region, HcWord.done);
        this.out({ t: 'call', sid: s.sid, seq: req });
      }
    }
    return n;
  }

  /** Moves what fits of a session's backlog into its event queue. */
  private flushBacklog(s: SessionRec): void {
    let moved = 0;
    while (moved < s.backlog.length && pushHcEvent(s.i32, s.backlog[moved])) moved++;
    if (moved === 0) return;
    s.backlog.splice(0, moved);
    if (s.backlog.length === 0) Atomics.store(s.i32, (HC_PAGE_BYTES >> 2) + HcEventWord.backlog, 0);
    wakeAttention(s);
  }

  /** AssertVirtualInterrupt with a current route: pends the vector; false to forward the call. */
  private fastInterrupt(s: SessionRec, seq: number): boolean {
    const i32 = s.i32;
    if (Atomics.load(i32, HcWord.inLen) !== 16) return false;
    const base = HC_INPUT_OFFSET >> 2;
    const partitionId = s.f64[HC_INPUT_OFFSET >> 3]!;
    const vpIndex = Atomics.load(i32, base + 2) >>> 0;
    const vector = Atomics.load(i32, base + 3) >>> 0;
    // Anything out of range goes to the main thread, which explains it.
    if (vector < 16 || vector > 255 || !Number.isSafeInteger(partitionId)) return false;
    const r = s.vps.get(`${partitionId}:${vpIndex}`);
    if (!r || r.epoch !== Atomics.load(this.state, HcStateWord.epoch)) return false;
    const t = r.target;
    const halted = pendInterrupt(t.apic, t.region, t.offset, vector, false);
    Atomics.add(this.state, HcStateWord.fastCalls, 1);
    this.complete(s, seq, halted ? t : null);
    return true;
  }

  /**
   * Completes a fast call with success; `target`: the VP without its LP that it pended an interrupt
   * on (see `pass`). A caller still watching `done`, or not waiting at all (a posted call), is
   * completed first: that costs a few stores, and a watcher goes on at once instead of waiting for
   * a CPU behind the VP it woke.
   */
  private complete(s: SessionRec, seq: number, target: VpTarget | null): void {
    if (!target) return completeHcCall(s, seq, HvStatus.SUCCESS);
    const waiting = Atomics.load(s.i32, HcWord.waiting);
    const first = waiting === HcWaiting.Watching || waiting === HcWaiting.Posted || !this.deferring;
    if (first) completeHcCall(s, seq, HvStatus.SUCCESS);
    if (this.dispatch?.(target.partitionId, target.vpIndex)) this.dispatched = true;
    else this.wantSchedule = true;
    if (!first) this.deferred.push({ page: s, seq });
  }

  /** Completes the calls `pass(true)` held back; returns how many. */
  completeDeferred(): number {
    const n = this.deferred.length;
    for (const d of this.deferred) completeHcCall(d.page, d.seq, HvStatus.SUCCESS);
    this.deferred.length = 0;
    return n;
  }

  /**
   * A Suspend (SetPartitionProperty Suspend, value 0 or 1) of a partition the session may suspend
   * here: applied by the scheduler, the main thread told, and answered as the main thread would
   * (a suspending call's number as an i32, else no output). The input goes through decodeHcCall, the
   * main thread's decoder, from one copy of the page; anything else goes to the main thread.
   */
  private fastSuspend(s: SessionRec, seq: number): boolean {
    if (!this.suspend || s.suspends.size === 0) return false;
    const inLen = Atomics.load(s.i32, HcWord.inLen);
    if (inLen < 0 || inLen > HC_INPUT_MAX) return false;
    let d: ReturnType<typeof decodeHcCall>;
    try {
      d = decodeHcCall(HvCall.SetPartitionProperty, inLen, new Uint8Array(s.region, HC_INPUT_OFFSET, inLen).slice());
    } catch {
      return false; // never from the checking decoder; this thread must not end on a page's account
    }
    if (!d.ok || d.call.code !== HvCall.SetPartitionProperty) return false;
    const { partitionId, property, value } = d.call.input as { partitionId?: unknown; property?: unknown; value?: unknown };
    if (property !== PartitionProperty.Suspend || (value !== 0 && value !== 1) || typeof partitionId !== 'number' || !s.suspends.has(partitionId)) return false;
    const r = this.suspend(partitionId, value === 1);
    if (!r) return false;
    // Told before the call completes: the caller's next call comes after this message.
    if (r.changed) this.out({ t: 'suspended', partitionId, on: value === 1, seq: r.seq });
    let outLen = 0;
    if (r.changed && r.seq !== 0) {
      new DataView(s.region, HC_OUTPUT_OFFSET, 4).setInt32(0, r.seq, true);
      outLen = 4;
    }
    Atomics.add(this.state, HcStateWord.fastCalls, 1);
    // The pass that takes the suspension (or runs the resumed VPs) runs this turn.
    if (r.changed) this.wantSchedule = true;
    completeHcCall(s, seq, HvStatus.SUCCESS, 0, outLen);
    return true;
  }

  /**
   * The SINT line: a SINT for a halted VP whose guest kernel services that SINT on its main thread
   * (VpPage.sintLineOn) goes there directly, not through the VP. Taking the vector, that VP would
   * only raise the SINT on the kernel's line and halt again: one wake-up of the VP thread and one
   * of this thread (its halt) per signal, for nothing the VP itself does. The bit is set in the VP
   * page's sintLineRaised word and the target's session loop is rung through its page (attention),
   * where the kernel takes the word. False when the SINT must go to the APIC: no line session, not
   * registered, not auto-EOI, held back by the APIC's priority, or the scheduler says no (the VP
   * runs or is not halted, the partition or VP is suspended or stalled, interrupts are delayed).
   */
  private raiseOnLine(r: ChildRoute): boolean {
    if (r.lineSession === null || !this.lineOk) return false;
    const t = r.target;
    if (!sintLineAccepts(t.apic, t.offset, r.sint, r.vector, r.autoEoi)) return false;
    const owner = this.sessions.get(r.lineSession);
    if (!owner || !this.lineOk(t.partitionId, t.vpIndex)) return false;
    if (raiseSintLine(t.apic.words, t.offset, r.sint)) wakeAttention(owner);
    Atomics.add(this.state, HcStateWord.lineRaises, 1);
    return true;
  }

  /** Serves call `seq` here if it is a SignalEvent, AssertVirtualInterrupt or Suspend with a current route; false to forward it. */
  private fast(s: SessionRec, seq: number): boolean {
    const i32 = s.i32;
    const code = Atomics.load(i32, HcWord.code);
    if (code === HvCall.AssertVirtualInterrupt) return this.fastInterrupt(s, seq);
    if (code === HvCall.SetPartitionProperty) return this.fastSuspend(s, seq);
    if (code !== HvCall.SignalEvent) return false;
    const inLen = Atomics.load(i32, HcWord.inLen);
    const base = HC_INPUT_OFFSET >> 2;
    const w0 = Atomics.load(i32, base);
    const w1 = Atomics.load(i32, base + 1);
    // The flags beyond the first (hvlab's extension, hcpage.ts); a count or a length that does
    // not add up goes to the main thread, which explains it.
    const more = w1 >>> 16;
    if (more > HC_SIGNAL_MORE_MAX || inLen !== 8 + 4 * more) return false;
    const connectionId = w0 >>> 0;
    const r = s.routes.get(connectionId);
    if (!r || r.epoch !== Atomics.load(this.state, HcStateWord.epoch)) return false;
    // Each word read once, all checked before any flag is set: the call is served whole or forwarded.
    const flags = this.flagScratch;
    flags.length = 0;
    flags.push(w1 & 0xffff);
    for (let i = 0; i < more; i++) flags.push(Atomics.load(i32, base + 2 + i) >>> 0);
    for (const f of flags) if (f >= r.flagCount) return false;
    let halted: VpTarget | null = null;
    if (r.kind === 'root') {
      const owner = this.sessions.get(r.owner);
      if (!owner) return false;
      // Each flag once: a session repeating one would only fill the owner's queue sooner.
      for (let i = 0; i < flags.length; i++) if (flags.indexOf(flags[i]!) === i) this.queueEvent(owner, { kind: 'rootEvent', portId: r.portId, sender: r.sender, flag: flags[i]! });
    } else {
      // Every flag first, then the SINT once: the guest's VP takes it and scans them all.
      let raise = false;
      for (const flag of flags) {
        const bit = 1 << (flag & 31);
        if ((Atomics.or(r.flags, r.flagsWord + (flag >>> 5), bit) & bit) === 0) raise = true;
      }
      if (raise && !r.masked && !this.raiseOnLine(r) && pendInterrupt(r.target.apic, r.target.region, r.target.offset, r.vector, r.autoEoi)) halted = r.target;
    }
    Atomics.add(this.state, HcStateWord.fastCalls, 1);
    this.complete(s, seq, halted);
    return true;
  }
}
