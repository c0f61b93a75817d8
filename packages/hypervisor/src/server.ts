/**
 * The hypervisor behind a ZeroMQ ROUTER at ipc://<sockdir>/hv. Each DEALER connection is a
 * session; its first message must be hello (see hypervisor.ts for how a session proves its
 * partition, and what that does and does not protect against). Hypercalls are answered in arrival
 * order; SynIC notifications are pushed to the sessions of the target partition.
 *
 * This is an edge: anyone who can reach the socket can send anything. Every frame is decoded once
 * by `decodeHvClientMsg`; a frame that does not decode is answered `{k:'bad', id?, reason}`, and
 * every handler runs inside a catch that turns an exception into an error answer (`hr` with an
 * HV status, `ctlr` with `{error}`, or `reject`), so each frame gets exactly one answer and no
 * frame can end the serve loop. Answers never wait on a peer: a peer that stops reading loses
 * answers once its ZeroMQ queue is full (send timeout 0, and at most MAX_SENDS_IN_FLIGHT sends
 * pending in all), instead of stalling every other session or growing a queue here.
 *
 * Sessions are tied to the pid named in their hello: when that process ends (a pid watch, see
 * runtime's anchor.ts), and whenever a peer disconnects, sessions whose process is gone are
 * dropped.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import { encode, decodeHvClientMsg, HvStatus, SchedRegion, SCHED_REGION_BYTES, HV_FRAME_MAX_BYTES, type HvClientMsg, type HvServerMsg } from '@hvlab/protocol';
import { router, pidAlive, watchPid, waitForSuspension, SendQueue, type zmq } from '@hvlab/runtime';
import { createRegion, unlinkRegion, futexWake, shmAvailable } from '@hvlab/shm';
import { Hypervisor, LogLimiter, SUSPENSION_WAIT_MS, type HvLog, type HypervisorOptions, type HypercallOutcome, type SchedulerLink } from './hypervisor.js';
import type { FromScheduler, SchedulerThreadData, ToScheduler } from './sched-thread.js';
import { HcService } from './hcall.js';

/**
 * HVLAB_HC_POLL_MAX_US: the longest bell poll of the scheduler thread after hypercalls (µs, a
 * whole number from 0 to 10000; BellPoll), like KVM's halt_poll_ns. 25 or less keeps the window
 * at its 25 µs base (the rule before it adapted). Null (the default, 200 µs) when unset or not such
 * a number.
 */
export function hcPollMaxNs(v: string | undefined): number | null {
  if (v === undefined || !/^\d{1,5}$/.test(v.trim())) return null;
  const us = Number(v.trim());
  return us <= 10_000 ? us * 1000 : null;
}

/**
 * HVLAB_WAKE_YIELD: 1 (the default) or 0; whether the scheduler thread yields its CPU to the VP
 * threads it wakes (SchedulerLoop's `yieldOnWake`). Null when not 0 or 1.
 */
export function wakeYield(v: string | undefined): boolean | null {
  const t = v?.trim();
  return t === '1' ? true : t === '0' ? false : null;
}

/** GetVpState calls one session may have waiting for a suspension over the socket (a client without a hypercall page makes one per VP; with one, they wait on the page: hcall.ts). */
const MAX_WAITING_CALLS = 1024;
/** The scheduler thread's entry: compiled, sched-thread.js; from sources, a shim that registers tsx first. */
const SCHED_THREAD_ENTRY = import.meta.url.endsWith('.ts') ? new URL('./sched-thread.mjs', import.meta.url) : new URL('./sched-thread.js', import.meta.url);

/** How often a session's pid is checked (ms) where it must be polled (no pidfd). */
export const SESSION_SWEEP_MS = 1000;
/** Answers handed to ZeroMQ and not yet taken; past this, answers are dropped (and counted). */
export const MAX_SENDS_IN_FLIGHT = 4096;

export class HypervisorServer {
  readonly hv: Hypervisor;
  private readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private readonly log: HvLog | undefined;
  private readonly badFrames: LogLimiter;
  private stopping = false;
  /** A watch on the process each hello named, by pid: its end drops its sessions. */
  private readonly pidWatches = new Map<number, () => void>();
  /** GetVpState calls waiting for a suspension, per session (answerOnceSuspended). */
  private readonly waitingCalls = new Map<string, number>();
  /** The waits for a suspension, per partition (its VP region): the number, and the calls it answers. */
  private readonly suspensionWaits = new Map<SharedArrayBuffer, { seq: number; calls: (() => void)[] }>();
  private sendsInFlight = 0;
  /** Answers and notifications dropped because too many sends were pending. */
  droppedSends = 0;
  /** Frames answered with `bad`. */
  badFrameCount = 0;
  onShutdownRequest: () => void = () => {};

  private sched: { worker: Worker; region: string; link: SchedulerLink; stopOnExit: () => void; doorbell: SharedArrayBuffer } | null = null;
  /** Hypercall pages and their thread (shared memory with a scheduler only). */
  private hc: HcService | null = null;

  constructor(opts: Omit<HypervisorOptions, 'notify' | 'scheduler'> & { lps?: number }) {
    this.log = opts.log;
    this.badFrames = new LogLimiter(opts.now ?? Date.now);
    // A send never waits (router(): ROUTER_SEND_OPTIONS), so no peer parks the answers queued behind it.
    this.sock = router();
    // ZeroMQ disconnects a peer whose frame is larger than any hypercall needs, before it is read.
    this.sock.maxMessageSize = HV_FRAME_MAX_BYTES;
    this.q = new SendQueue(this.sock);
    let scheduler: SchedulerLink | undefined;
    if (opts.lps && (opts.memoryMode ?? (shmAvailable() ? 'shared' : 'private')) === 'shared') scheduler = this.startScheduler(opts.hostId, opts.lps, process.env.HVLAB_HCPAGE !== 'off');
    const hc = this.hc;
    this.hv = new Hypervisor({
      ...opts, scheduler, notify: (sid, msg) => this.push(sid, msg),
      onSessionClosed: hc ? (sid) => hc.closeSession(sid) : undefined,
      onRoutesChanged: hc ? () => hc.routesChanged() : undefined,
      pageStats: hc ? () => hc.stats : undefined,
    });
    hc?.attach(this.hv);
    if (hc) hc.onUndelivered = (sid, ev) => {
      if (ev.kind === 'intercept') {
        const { kind: _kind, ...rest } = ev;
        this.push(sid, { k: 'intercept', ...rest }, true);
      }
    };
    // A peer that disconnects is usually a process that ended: check at once.
    this.sock.events.on('disconnect', () => this.expireSessions());
  }

  /** The scheduler thread: it dispatches VPs over `lps` logical processors (see sched-thread.ts). */
  private startScheduler(hostId: string, lps: number, pages: boolean): SchedulerLink {
    const region = `hvlab-${hostId}-sched`;
    unlinkRegion(region);
    const doorbell = createRegion(region, SCHED_REGION_BYTES);
    const { port1, port2 } = new MessageChannel();
    // The same thread serves the hypercall pages (hcloop.ts): a signal that wakes a VP then needs
    // no second thread to run the scheduling pass.
    if (pages) this.hc = new HcService(hostId, region, doorbell, (o, m) => this.logError(o, m));
    const data: SchedulerThreadData = { lps, doorbell, port: port2, hc: this.hc?.threadData };
    const pollMaxUs = process.env.HVLAB_HC_POLL_MAX_US;
    const pollMaxNs = hcPollMaxNs(pollMaxUs);
    if (pollMaxNs !== null) data.hcPollMaxNs = pollMaxNs;
    else if (pollMaxUs !== undefined) this.log?.warn({ HVLAB_HC_POLL_MAX_US: pollMaxUs.slice(0, 32) }, 'HVLAB_HC_POLL_MAX_US is not a whole number of µs from 0 to 10000: the bell poll keeps its default (200 µs)');
    const yieldEnv = process.env.HVLAB_WAKE_YIELD;
    const yieldOn = wakeYield(yieldEnv);
    if (yieldOn !== null) data.wakeYield = yieldOn;
    else if (yieldEnv !== undefined) this.log?.warn({ HVLAB_WAKE_YIELD: yieldEnv.slice(0, 32) }, 'HVLAB_WAKE_YIELD is neither 0 nor 1: the scheduler thread yields to the VPs it wakes (the default)');
    const transfer = this.hc ? [port2, this.hc.threadData.port] : [port2];
    const worker = new Worker(SCHED_THREAD_ENTRY, { workerData: { scheduler: data }, transferList: transfer, name: 'scheduler' });
    worker.on('error', (e) => {
      // VPs are no longer dispatched; hypercalls are still served, so the root can see and save.
      this.logError({ err: e }, 'the scheduler thread failed');
    });
    port1.on('message', (m: FromScheduler) => {
      try {
        this.hv.fromScheduler(m);
      } catch (e) {
        this.logError({ err: e }, 'handling a scheduler event failed');
      }
    });
    port1.unref();
    const bell = new Int32Array(doorbell);
    const link: SchedulerLink = {
      lps,
      regionName: region,
      post: (m: ToScheduler) => port1.postMessage(m),
      ring: () => {
        Atomics.add(bell, SchedRegion.doorbell >> 2, 1);
        futexWake(doorbell, SchedRegion.doorbell >> 2);
      },
    };
    // process.exit joins worker threads, and this one sleeps in a futex with no timeout while
    // nothing is due: however this process exits, the thread is asked to stop first.
    const stopOnExit = (): void => {
      link.post({ t: 'stop' });
      link.ring();
    };
    process.once('exit', stopOnExit);
    this.sched = { worker, region, link, stopOnExit, doorbell };
    return link;
  }

  private logError(o: object, msg: string): void {
    if (!this.log) return;
    (this.log.error ?? this.log.warn)(o, msg);
  }

  async bind(endpoint: string): Promise<void> {
    await this.sock.bind(endpoint);
  }

  /** Drops the sessions of process `pid` once it ends. */
  private watchSessionPid(pid: number): void {
    if (this.stopping || this.pidWatches.has(pid)) return;
    this.pidWatches.set(pid, watchPid(pid, () => {
      this.pidWatches.delete(pid);
      this.expireSessions();
    }, SESSION_SWEEP_MS));
  }

  /** Drops sessions whose process is gone (see Hypervisor.expireSessions). */
  expireSessions(): void {
    if (this.stopping) return;
    try {
      this.hv.expireSessions(pidAlive);
    } catch (e) {
      this.logError({ err: e }, 'the session sweep failed');
    }
  }

  private push(sessionId: string, msg: HvServerMsg, viaSocket = false): void {
    if (this.stopping) return;
    // A root port's events, and intercepts, go to the session's event page when it has one.
    if (msg.k === 'rootevent' && this.hc?.hasPage(sessionId)) {
      this.hc.event(sessionId, { kind: 'rootEvent', portId: msg.portId, sender: msg.sender, flag: msg.flagNumber });
      return;
    }
    if (msg.k === 'rootmsg' && this.hc?.hasPage(sessionId)) {
      this.hc.event(sessionId, { kind: 'rootMessage', portId: msg.portId, sender: msg.sender, messageType: msg.messageType, payload: msg.payload });
      return;
    }
    if (msg.k === 'intercept' && this.hc?.hasPage(sessionId) && !viaSocket) {
      const { k: _k, ...ev } = msg;
      this.hc.event(sessionId, { kind: 'intercept', ...ev });
      return;
    }
    if (this.sendsInFlight >= MAX_SENDS_IN_FLIGHT) {
      this.droppedSends++;
      return;
    }
    let frame: Buffer;
    try {
      frame = encode(msg);
    } catch (e) {
      this.logError({ err: e, k: msg.k }, 'an answer could not be encoded');
      return;
    }
    this.sendsInFlight++;
    void this.q.send([Buffer.from(sessionId, 'hex'), frame]).catch(() => undefined).finally(() => this.sendsInFlight--);
  }

  /**
   * The one answer to one frame from session `sid` (`parts`: the frame's message parts after the
   * routing id), or null when it comes later (a GetVpState that waits for a suspension:
   * answerOnceSuspended). Never throws. `after` runs once the answer is on its way (a shutdown request).
   */
  answer(sid: string, parts: Buffer[]): { reply: HvServerMsg | null; after?: () => void } {
    if (parts.length !== 1) return this.bad(sid, `a frame must be one message part, not ${parts.length}`);
    const d = decodeHvClientMsg(parts[0]);
    if (!d.ok) return this.bad(sid, d.error, d.id);
    const m: HvClientMsg = d.msg;
    try {
      switch (m.k) {
        case 'hello': {
          const reply = this.hv.hello(sid, m);
          if (reply.k === 'welcome') {
            this.watchSessionPid(m.pid);
            const page = this.hc?.openSession(sid);
            if (page && this.hc) return { reply: { ...reply, hcRegion: page.region, hcBell: this.hc.bellName, ...(page.wake ? { hcWake: page.wake } : {}) } };
          }
          return { reply };
        }
        case 'hc': {
          // What the scheduler thread served through the pages is known here first (a suspension).
          this.hc?.drain();
          const r = this.hv.hypercall(sid, m.code, m.input, { repCount: m.repCount, repStart: m.repStart, mayWait: true });
          if (r.wait) {
            this.answerOnceSuspended(sid, m, r.wait);
            return { reply: null };
          }
          return { reply: { k: 'hr', id: m.id, status: r.status, reps: r.reps, output: r.output } };
        }
        case 'ctl': {
          this.hc?.drain();
          const result = this.hv.control(sid, m.op, m.args);
          const granted = m.op === 'shutdown' && !(result as { error?: string }).error;
          return { reply: { k: 'ctlr', id: m.id, result }, after: granted ? () => this.onShutdownRequest() : undefined };
        }
      }
    } catch (e) {
      // A defect in a handler: answer this frame with an error and go on serving.
      this.logError({ err: e, k: m.k }, 'a handler threw');
      if (m.k === 'hc') return { reply: { k: 'hr', id: m.id, status: HvStatus.OPERATION_DENIED, reps: 0, output: null } };
      if (m.k === 'ctl') return { reply: { k: 'ctlr', id: m.id, result: { error: 'the hypervisor failed to carry out the request' } } };
      return { reply: { k: 'reject', reason: 'the hypervisor failed to open the session' } };
    }
    return this.bad(sid, 'unhandled message');
  }

  /**
   * A GetVpState that waits for a suspension (Hypervisor: `afterSuspension`): answered once the
   * scheduler has taken it (its wake of the VP region's count reaches this event loop through a
   * word watch, one per partition and suspension however many VPs ask, so one that joins late
   * waits less), or after SUSPENSION_WAIT_MS, by the same call made again without `mayWait`, which
   * then answers. A session has at most MAX_WAITING_CALLS calls waiting; one more is made again at
   * once (refused unless the suspension is taken by then). A client with a hypercall page makes
   * these calls through it instead (HcService.answerOnceSuspended), where the page carries one at a
   * time: a freezing VM's worker then signals nothing for the millisecond or two the suspension takes.
   */
  private answerOnceSuspended(sid: string, m: Extract<HvClientMsg, { k: 'hc' }>, wait: NonNullable<HypercallOutcome['wait']>): void {
    const again = (): void => {
      if (this.stopping) return;
      this.hc?.drain();
      const r = this.hv.hypercall(sid, m.code, m.input, { repCount: m.repCount, repStart: m.repStart, waited: true });
      this.push(sid, { k: 'hr', id: m.id, status: r.status, reps: r.reps, output: r.output });
    };
    const n = this.waitingCalls.get(sid) ?? 0;
    if (n >= MAX_WAITING_CALLS) return again();
    this.waitingCalls.set(sid, n + 1);
    const call = (): void => {
      const left = (this.waitingCalls.get(sid) ?? 1) - 1;
      if (left > 0) this.waitingCalls.set(sid, left);
      else this.waitingCalls.delete(sid);
      again();
    };
    const w = this.suspensionWaits.get(wait.vpRegion);
    if (w && w.seq === wait.seq) {
      w.calls.push(call);
      return;
    }
    const calls = [call];
    this.suspensionWaits.set(wait.vpRegion, { seq: wait.seq, calls });
    void waitForSuspension(wait.vpRegion, wait.vpCount, wait.seq, { timeoutMs: SUSPENSION_WAIT_MS, calledOff: () => this.stopping })
      .catch(() => undefined)
      .then(() => {
        if (this.suspensionWaits.get(wait.vpRegion)?.calls === calls) this.suspensionWaits.delete(wait.vpRegion);
        for (const c of calls) {
          try {
            c();
          } catch (e) {
            this.logError({ err: e }, 'answering a GetVpState that waited failed');
          }
        }
      });
  }

  private bad(sid: string, reason: string, id?: number): { reply: HvServerMsg } {
    this.badFrameCount++;
    const dropped = this.badFrames.take();
    if (dropped !== null && this.log) this.log.info({ session: sid, why: reason, ...(dropped ? { droppedSinceLast: dropped } : {}) }, 'undecodable frame');
    return { reply: id === undefined ? { k: 'bad', reason } : { k: 'bad', id, reason } };
  }

  async serve(): Promise<void> {
    try {
      for await (const [idFrame, ...parts] of this.sock) {
        try {
          const sid = idFrame.toString('hex');
          const { reply, after } = this.answer(sid, parts);
          if (reply) this.push(sid, reply);
          after?.();
        } catch (e) {
          this.logError({ err: e }, 'serving a frame failed');
        }
      }
    } catch (e) {
      // The socket itself failed (not a frame): only a closing server expects that.
      if (!this.stopping) this.logError({ err: e }, 'the hypervisor socket failed');
    }
  }

  async close(reason: string): Promise<void> {
    if (this.stopping) return;
    this.hv.shutdown(reason);
    await new Promise((r) => setTimeout(r, 20));
    this.stopping = true;
    for (const unwatch of this.pidWatches.values()) unwatch();
    this.pidWatches.clear();
    this.q.close();
    this.sock.close();
    this.hc?.close();
    this.hc = null;
    if (this.sched) {
      const { worker, region, link, stopOnExit } = this.sched;
      this.sched = null;
      process.off('exit', stopOnExit);
      // Ask the thread to stop, ring, and give it a moment before terminating it.
      link.post({ t: 'stop' });
      link.ring();
      await Promise.race([new Promise((r) => worker.once('exit', r)), new Promise((r) => setTimeout(r, 500))]);
      await worker.terminate();
      unlinkRegion(region);
    }
  }
}
