/**
 * Hypercall pages on the hypervisor's main thread: a two-page region per session (hypercall page
 * and event queue), the routes and events it hands the scheduler thread (which serves the pages:
 * hcloop.ts), and the calls that thread forwards here. A forwarded call is decoded once by
 * decodeHcCall, served by the same Hypervisor.hypercall as a call over the socket, and completed
 * on the page.
 *
 * Regions are named `hvlab-<host>-hc-…` (swept with the host's other regions) and unlinked when
 * the session closes and when the hypervisor exits.
 */
import { randomBytes } from 'node:crypto';
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import {
  HC_REGION_BYTES, HC_INPUT_OFFSET, HC_INPUT_MAX, HC_OUTPUT_OFFSET, HC_OUTPUT_MAX, HcWord, HvCall, HvStatus, SchedRegion,
  decodeHcCall, encodeHcOutput, type HcCall, type HcEvent,
} from '@hvlab/protocol';
import { waitForSuspension } from '@hvlab/runtime';
import { createRegion, unlinkRegion, futexWake, openWakeFd, closeWakeFd } from '@hvlab/shm';
import { SUSPENSION_WAIT_MS, type Hypervisor, type HypercallOutcome } from './hypervisor.js';
import { HcStateWord, HC_STATE_BYTES, completeHcCall, type PageRef, type FromHcThread, type ToHcThread, type HcThreadData } from './hcloop.js';

/**
 * A served call's status and output length: a success's output goes into the page's output area,
 * and one that does not fit there fails the call with INSUFFICIENT_BUFFERS.
 */
function writeOutput(p: PageSession, call: HcCall, r: HypercallOutcome): [status: number, outLen: number] {
  if (r.status !== HvStatus.SUCCESS) return [r.status, 0];
  const n = encodeHcOutput(call, r.output, p.u8.subarray(HC_OUTPUT_OFFSET, HC_OUTPUT_OFFSET + HC_OUTPUT_MAX));
  return n === null ? [HvStatus.INSUFFICIENT_BUFFERS, 0] : [HvStatus.SUCCESS, n];
}

/**
 * The calls after which the caller may suspend their partition through the scheduler thread (a
 * VM's worker makes them as it builds the partition or takes a migrated one: its first Suspend,
 * a migration's freeze, is then served there).
 */
const SUSPEND_ROUTE_CALLS: ReadonlySet<number> = new Set([HvCall.InitializePartition, HvCall.SetPartitionProperty, HvCall.CreateVp, HvCall.SetVpState, HvCall.GetVpState, HvCall.MapGpaPages]);

/** `HVLAB_HC_FAST_SUSPEND=0`: every Suspend through a page goes to the main thread (for comparisons). */
const FAST_SUSPEND = process.env.HVLAB_HC_FAST_SUSPEND !== '0';
/** Whether the scheduler thread may raise a registered SINT on a guest's line (hcloop.ts); HVLAB_SINT_LINE=0 turns it off. */
const SINT_LINE = process.env.HVLAB_SINT_LINE !== '0';

interface PageSession extends PageRef {
  name: string;
  /** The partitions the thread was told this session may suspend (installSuspendRoute). */
  suspendRoutes: Set<number>;
  u8: Uint8Array;
  /** The wake descriptor's number in this process (`hcWake` in the welcome), or -1. */
  wakeFd: number;
}

/** A session's page as the welcome names it: the region, and the wake descriptor its event loop may poll. */
export interface OpenedPage {
  region: string;
  /** This process's pid and the descriptor's number (watchWakeFd's arguments); null: none could be made. */
  wake: { pid: number; fd: number } | null;
}

export class HcService {
  private readonly stateI32: Int32Array;
  private readonly bellI32: Int32Array;
  private readonly port: MessagePort;
  private readonly pages = new Map<string, PageSession>();
  private hv: Hypervisor | null = null;
  private closed = false;
  /** What the scheduler thread needs to serve the pages (its end of the port, the private state). */
  readonly threadData: HcThreadData;

  /**
   * `bellName`/`bell`: the scheduler region, whose doorbell the sessions ring (and this object
   * rings after handing the thread something).
   */
  constructor(private readonly hostId: string, readonly bellName: string, private readonly bell: SharedArrayBuffer, private readonly logError: (o: object, m: string) => void) {
    const state = new SharedArrayBuffer(HC_STATE_BYTES);
    this.stateI32 = new Int32Array(state);
    this.bellI32 = new Int32Array(bell);
    const { port1, port2 } = new MessageChannel();
    this.threadData = { state, port: port2 };
    this.port = port1;
    port1.on('message', (m: FromHcThread) => this.onForward(m));
    port1.unref();
  }

  attach(hv: Hypervisor): void {
    this.hv = hv;
  }

  private post(m: ToHcThread): void {
    this.port.postMessage(m);
    Atomics.add(this.bellI32, SchedRegion.hcRings >> 2, 1);
    Atomics.add(this.bellI32, SchedRegion.doorbell >> 2, 1);
    futexWake(this.bell, SchedRegion.doorbell >> 2);
  }

  /** Every route handed out so far is stale. */
  routesChanged(): void {
    Atomics.add(this.stateI32, HcStateWord.epoch, 1);
  }

  /**
   * Makes session `sid`'s page and its wake descriptor; returns what the welcome names, or null
   * when the page could not be made (the session then uses the socket). Without a descriptor the
   * session's event loop is woken through the `attention` word.
   */
  openSession(sid: string): OpenedPage | null {
    if (this.closed) return null;
    const open = this.pages.get(sid);
    if (open) return { region: open.name, wake: open.wakeFd >= 0 ? { pid: process.pid, fd: open.wakeFd } : null };
    const name = `hvlab-${this.hostId}-hc-${randomBytes(8).toString('hex')}`;
    let region: SharedArrayBuffer;
    try {
      region = createRegion(name, HC_REGION_BYTES);
    } catch (e) {
      this.logError({ err: e }, 'a hypercall page could not be made; the session uses the socket');
      return null;
    }
    const wake = openWakeFd();
    this.pages.set(sid, { name, region, i32: new Int32Array(region), u8: new Uint8Array(region), wake: wake?.id ?? 0, wakeFd: wake?.fd ?? -1, suspendRoutes: new Set() });
    this.post({ t: 'session', sid, region, wake: wake?.id ?? 0 });
    return { region: name, wake: wake ? { pid: process.pid, fd: wake.fd } : null };
  }

  hasPage(sid: string): boolean {
    return this.pages.has(sid);
  }

  closeSession(sid: string): void {
    const p = this.pages.get(sid);
    if (!p) return;
    this.pages.delete(sid);
    this.post({ t: 'sessionGone', sid });
    unlinkRegion(p.name);
    // The scheduler thread may still signal it until it reads sessionGone: a closed id is ignored.
    if (p.wake > 0) closeWakeFd(p.wake);
  }

  /** An event for a root port owned by session `sid`, or an intercept for it (it has a page). */
  event(sid: string, ev: HcEvent): void {
    this.post({ t: 'event', sid, ev });
  }

  /** Where an intercept goes that did not fit in its session's event queue (the socket). */
  onUndelivered: (sid: string, ev: HcEvent) => void = () => {};

  get stats(): { fastCalls: number; forwarded: number; lineRaises: number } {
    return {
      fastCalls: Atomics.load(this.stateI32, HcStateWord.fastCalls), forwarded: Atomics.load(this.stateI32, HcStateWord.forwarded),
      lineRaises: Atomics.load(this.stateI32, HcStateWord.lineRaises),
    };
  }

  /**
   * Takes every message the thread sent that is still queued, now: a call over the socket that
   * reads or changes what a message may be about to change (a partition's suspension, served on
   * the thread) sees it first, as a later call through the page would.
   */
  drain(): void {
    for (let r = receiveMessageOnPort(this.port); r; r = receiveMessageOnPort(this.port)) this.onForward(r.message as FromHcThread);
  }

  /** A call the thread did not serve itself: serve it with the hypervisor's tables. Never throws. */
  private onForward(m: FromHcThread): void {
    if (m.t === 'suspended') {
      this.hv?.suspendedByThread(m.partitionId, m.on, m.seq);
      return;
    }
    if (m.t === 'undelivered') {
      try {
        this.onUndelivered(m.sid, m.ev);
      } catch (e) {
        this.logError({ err: e }, 'an intercept could not be sent');
      }
      return;
    }
    const p = this.pages.get(m.sid);
    const hv = this.hv;
    if (!p || !hv || m.t !== 'call') return;
    // The caller waits for exactly this call: a later request number means it gave up on it.
    if (Atomics.load(p.i32, HcWord.req) !== m.seq) return;
    let status: number = HvStatus.OPERATION_DENIED;
    let reps = 0;
    let outLen = 0;
    try {
      const code = Atomics.load(p.i32, HcWord.code);
      const inLen = Atomics.load(p.i32, HcWord.inLen);
      // One copy out of the shared page: the session cannot change the input while it is checked.
      const input = p.u8.slice(HC_INPUT_OFFSET, HC_INPUT_OFFSET + Math.max(0, Math.min(HC_INPUT_MAX, inLen | 0)));
      const d = decodeHcCall(code, inLen, input);
      if (!d.ok) {
        status = d.status;
      } else {
        // A SignalEvent with more flags (hvlab's extension, hcpage.ts) is one TLFS call per flag,
        // in order, every one of them: a flag that fails does not keep the next channels' flags
        // from being set. The first failure's status is the call's, and `reps` says which flag
        // it was (its index), for the caller's report.
        const c = d.call;
        const calls = c.code === HvCall.SignalEvent && c.input.moreFlags
          ? [c.input.flagNumber, ...c.input.moreFlags].map((flagNumber) => ({ connectionId: c.input.connectionId, flagNumber }))
          : [c.input as unknown as Record<string, unknown>];
        // A GetVpState behind the caller's Suspend may wait for the scheduler to take it: the page
        // stays the caller's meanwhile, and the call completes once it is taken (answerOnceSuspended).
        let r = hv.hypercall(m.sid, d.call.code, calls[0]!, c.code === HvCall.GetVpState ? { mayWait: true } : {});
        if (r.wait) {
          this.answerOnceSuspended(m.sid, m.seq, p, d.call, r.wait);
          return;
        }
        let failedAt = r.status === HvStatus.SUCCESS ? -1 : 0;
        for (let i = 1; i < calls.length; i++) {
          const ri = hv.hypercall(m.sid, d.call.code, calls[i]!);
          if (ri.status !== HvStatus.SUCCESS && failedAt < 0) {
            failedAt = i;
            r = ri;
          }
        }
        reps = calls.length > 1 && failedAt >= 0 ? failedAt : r.reps;
        [status, outLen] = writeOutput(p, d.call, r);
        if (r.status === HvStatus.SUCCESS) {
          if (SUSPEND_ROUTE_CALLS.has(d.call.code)) this.installSuspendRoute(m.sid, (d.call.input as { partitionId?: unknown }).partitionId);
          if (d.call.code === HvCall.SignalEvent) this.installRoute(m.sid, d.call.input.connectionId);
          if (d.call.code === HvCall.AssertVirtualInterrupt) this.installInterruptRoute(m.sid, d.call.input.partitionId, d.call.input.vpIndex);
        }
      }
    } catch (e) {
      this.logError({ err: e }, 'serving a hypercall page failed');
      status = HvStatus.OPERATION_DENIED;
    }
    completeHcCall(p, m.seq, status, reps, outLen);
  }

  /**
   * A GetVpState through the page that waits for a suspension (its `afterSuspension`): the same
   * call is made again, without waiting, once the scheduler has taken it or after
   * SUSPENSION_WAIT_MS (then it is refused unless taken by then), and completes the page, unless the
   * caller gave up on it meanwhile (a later request number), its session went, or this closed:
   * each of those also calls the wait off, so a session has at most one such wait here (a page
   * carries one call at a time, and a wait whose call was given up ends at its next look).
   */
  private answerOnceSuspended(sid: string, seq: number, p: PageSession, call: HcCall, wait: NonNullable<HypercallOutcome['wait']>): void {
    const gone = (): boolean => this.closed || this.pages.get(sid) !== p || Atomics.load(p.i32, HcWord.req) !== seq;
    void waitForSuspension(wait.vpRegion, wait.vpCount, wait.seq, { timeoutMs: SUSPENSION_WAIT_MS, calledOff: gone })
      .catch(() => undefined)
      .then(() => {
        const hv = this.hv;
        if (!hv || gone()) return;
        let status: number = HvStatus.OPERATION_DENIED;
        let outLen = 0;
        try {
          this.drain();
          [status, outLen] = writeOutput(p, call, hv.hypercall(sid, call.code, call.input as unknown as Record<string, unknown>, { waited: true }));
        } catch (e) {
          this.logError({ err: e }, 'answering a GetVpState that waited failed');
        }
        completeHcCall(p, seq, status, 0, outLen);
      });
  }

  /**
   * After a session's call on a partition it manages: the thread may serve that session's Suspend
   * of it from now on (Hypervisor.suspendRoute says whether the call would be allowed). Sent once
   * per session and partition.
   */
  private installSuspendRoute(sid: string, partitionId: unknown): void {
    if (typeof partitionId !== 'number' || !FAST_SUSPEND) return;
    const p = this.pages.get(sid);
    if (!p || p.suspendRoutes.has(partitionId) || !this.hv?.suspendRoute(sid, partitionId)) return;
    p.suspendRoutes.add(partitionId);
    this.post({ t: 'suspendRoute', sid, partitionId });
  }

  private installInterruptRoute(sid: string, partitionId: number, vpIndex: number): void {
    const r = this.hv?.interruptRoute(sid, partitionId, vpIndex);
    if (!r) return;
    this.post({ t: 'interruptRoute', sid, partitionId, vpIndex, epoch: Atomics.load(this.stateI32, HcStateWord.epoch), ...r });
  }

  private installRoute(sid: string, connectionId: number): void {
    const route = this.hv?.signalRoute(sid, connectionId);
    if (!route) return;
    const epoch = Atomics.load(this.stateI32, HcStateWord.epoch);
    // A root route's owner must have a page for the thread to deliver to it.
    if (route.kind === 'root' && !this.pages.has(route.ownerSession)) return;
    if (route.kind === 'child') {
      // The SINT line (hcloop.ts) wakes the target's session: the one with a page, when it is the only one.
      const paged = SINT_LINE ? route.targetSessions.filter((t) => this.pages.has(t)) : [];
      this.post({ t: 'route', sid, connectionId, epoch, route, lineSession: paged.length === 1 ? paged[0]! : null });
      return;
    }
    this.post({ t: 'route', sid, connectionId, epoch, route });
  }

  /** Removes every page (the hypervisor is closing; the scheduler thread stops with it). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.port.close();
    for (const p of this.pages.values()) {
      unlinkRegion(p.name);
      if (p.wake > 0) closeWakeFd(p.wake);
    }
    this.pages.clear();
  }
}
