/**
 * A typed hypercall client over the hypervisor's ZeroMQ socket. The root's VID, every VMWP and
 * every guest kernel use one. A session first says hello with its partition id and proof: the
 * token the hypervisor issued for the partition (the root's token comes from the hypervisor's
 * supervisor over a pipe) or, for a VMWP's root-partition session, a one-time ticket the root
 * asked for with `ticket()`. The hypervisor then knows who is calling, as hardware knows which
 * partition a hypercall came from.
 *
 * No call waits on a dead peer: every hypercall and control request has a timeout, and a client
 * made with `{ watchPid }` (the hypervisor's pid) fails every pending and later call as soon as that
 * process has ended (a pidfd watch; 0.2 s polling where there is none), with an error naming it.
 */
import {
  decodeHvServerMsg, encode, HvCall, hvStatusName, HvStatus, HcWord, HcWaiting, HcWakeBy, HC_PAGE_CALLS, HC_INPUT_OFFSET, HC_INPUT_MAX, HC_OUTPUT_OFFSET, HC_OUTPUT_MAX,
  HC_REGION_BYTES, HC_BELL_BYTES, HC_BELL_WORD, HC_RING_WORD, HC_PAGE_BYTES, HcEventWord, ROOT_PARTITION_ID, encodeHcInput, decodeHcOutput, drainHcEvents,
  type HvCallName, type HvClientMsg, type HvCtlArgs, type HvCtlOp, type HvServerMsg, type HypercallInputs,
  HC_SIGNAL_MORE_MAX, signalsHeld, whenReleased,
} from '@hvlab/protocol';
import { openRegion, futexWait, futexWake, watchWord, wordWatchAvailable, watchWakeFd, wakeFdAvailable } from '@hvlab/shm';
import { watchPid } from './anchor.js';
import { dealer, SendQueue, type zmq } from './zmq.js';
import { HV_ENDPOINT_ENV } from './paths.js';

export interface HypercallResult<T = unknown> {
  status: number;
  statusName: string;
  reps: number;
  output: T;
}

export class HypercallError extends Error {
  override name = 'HypercallError';
  constructor(readonly call: string, readonly status: number) {
    super(`${call} failed with ${hvStatusName(status)}`);
  }
}

/** The hypervisor process this client watches has ended. */
export class HypervisorGoneError extends Error {
  override name = 'HypervisorGoneError';
  constructor(readonly pid: number) {
    super(`the hypervisor (pid ${pid}) is gone`);
  }
}

export type Notification = Exclude<HvServerMsg, { k: 'welcome' } | { k: 'reject' } | { k: 'hr' } | { k: 'ctlr' } | { k: 'bad' }>;

export interface HvSession {
  partitionId: number;
  hostId: string;
  memoryMode: 'shared' | 'private';
  memoryRegion: string | null;
  memoryBytes: number;
  /** The partition's VP control region and the host's scheduler region, when VPs are scheduled. */
  vpRegion: string | null;
  schedRegion: string | null;
}

/** What a hello carries besides the pid: exactly one of token and ticket. */
export type HvHelloInput = { partitionId: number; role: string; vm: string | null } & ({ token: string; ticket?: undefined } | { ticket: string; token?: undefined });

export interface HvClientOptions {
  /** The hypervisor's pid: when it ends, every pending and later call fails at once. */
  watchPid?: number;
  /** How often the watched pid is checked (ms), where it must be polled (no pidfd). */
  watchIntervalMs?: number;
  /** Default timeout of a hypercall (ms). */
  callTimeoutMs?: number;
  /** Default timeout of a control request (ms). */
  ctlTimeoutMs?: number;
  /** Use the socket for every call even when the hypervisor offers a hypercall page (benches compare the two). */
  noPage?: boolean;
  /**
   * Watch the hypercall page through its `attention` word even when the hypervisor offers a wake
   * descriptor (benches compare the two; default: the environment's HVLAB_WAKE_FD=0).
   */
  noWakeFd?: boolean;
  /** Told of each posted SignalEvent (`signal`) that did not succeed. */
  onSignalFailed?: (f: SignalFailure) => void;
}

interface Pending {
  resolve: (m: HvServerMsg) => void;
  reject: (e: Error) => void;
}

/** The session's hypercall page (protocol's hcpage.ts), when the hypervisor gave one. */
interface Page {
  region: SharedArrayBuffer;
  i32: Int32Array;
  u8: Uint8Array;
  bell: SharedArrayBuffer;
  bellI32: Int32Array;
  unwatch: () => void;
  seq: number;
  /** The call on the page, waiting for its completion. */
  waiter: { seq: number; code: number; input: Record<string, unknown>; done: (r: HypercallResult) => void; fail: (e: Error) => void } | null;
  /** The request number of a posted SignalEvent (`HvClient.signal`) not yet seen completed, else 0. */
  posted: number;
  /** What the posted call was, for its failure report: its connection and every flag it carried. */
  postedWhat: { connectionId: number; flags: number[] } | null;
  /** Frees the page from a posted call the hypervisor never completes (armed only while a call waits for the page). */
  postedTimer: NodeJS.Timeout | null;
}

/** One call waiting for its turn (see HvClient.pump). */
interface Queued {
  kind: 'socket' | 'page';
  start: () => void;
  /** A posted SignalEvent's "connectionId:flag,flag,…": an identical one queued behind it adds nothing. */
  posted?: string;
}

/**
 * Reports the posted signals of `hv` that fail through `warn`: the first three, then every
 * thousandth (a channel whose connection went stale fails each signal; its log should not grow
 * with them).
 */
export function warnOnSignalFailures(hv: HvClient, warn: (obj: Record<string, unknown>, msg: string) => void): void {
  hv.onSignalFailed = (f) => {
    const n = hv.counts.postedFailed;
    if (n <= 3 || n % 1000 === 0) warn({ ...f, failures: n }, 'a SignalEvent failed (posted: nobody waited for it)');
  };
}

/** A posted SignalEvent that did not succeed (`HvClientOptions.onSignalFailed`). */
export interface SignalFailure {
  connectionId: number;
  flagNumber: number;
  /** The hypervisor's status, or null when it did not complete the call within the call timeout. */
  status: number | null;
  statusName: string;
}

/**
 * How long a SignalEvent through the page blocks its caller waiting for the hypervisor's thread
 * (ms); past it, or once the call went to the hypervisor's main thread, the wait goes on in the
 * event loop. A hypercall is synchronous in the TLFS; this bound keeps a stopped hypervisor from
 * holding a caller's event loop.
 */
export const PAGE_SYNC_WAIT_MS = 2;
/** How long that caller watches the page before it sleeps in the futex (ms). */
export const PAGE_SPIN_MS = 0.02;

/**
 * A client connected ahead of need to the hypervisor that HV_ENDPOINT_ENV names, or null when the
 * environment names none: a VM process started before it knows its VM (a warm or prestarted one)
 * pays the connection while it waits. `hvClientFor` later keeps it or replaces it.
 */
export function earlyHvClient(onNotify: (n: Notification) => void): HvClient | null {
  const endpoint = process.env[HV_ENDPOINT_ENV];
  if (!endpoint) return null;
  const c = new HvClient(endpoint, onNotify);
  c.preconnect();
  return c;
}

/** `early` if it was connected to `endpoint`; otherwise (closing `early`) a new client for it. */
export function hvClientFor(endpoint: string, early: HvClient | null, onNotify: (n: Notification) => void): HvClient {
  if (early && early.endpointName === endpoint) return early;
  early?.close();
  return new HvClient(endpoint, onNotify);
}

export class HvClient {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private welcome: Pending | null = null;
  private closed = false;
  /** Set once the watched hypervisor is gone: every call fails with it. */
  private gone: HypervisorGoneError | null = null;
  private unwatch: (() => void) | null = null;
  private readonly callTimeoutMs: number;
  private readonly ctlTimeoutMs: number;
  private readonly noPage: boolean;
  private readonly noWakeFd: boolean;
  /** How the hypercall page is watched: its wake descriptor, its `attention` word, or not at all (no page). */
  pageWatch: 'descriptor' | 'word' | null = null;
  session: HvSession | null = null;
  private page: Page | null = null;
  /** What else looks at the page's ring (onPageAttention). */
  private attentionHooks: Array<() => void> = [];
  private readonly queue: Queued[] = [];
  private socketCalls = 0;
  private pageBusy = false;
  /** Flags signalled during a holdSignals step, per connection: sent when it ends (releaseHeldSignals). */
  private readonly heldSignals = new Map<number, Set<number>>();
  /** Root ports this session created: all are signalled when events were lost to a full event queue. */
  private readonly rootPorts = new Set<number>();
  /** Calls carried by the page, and by the socket (for `hvlab debug` and the benches); `posted`: signals among the page's, `postedFailed`: those that did not succeed. */
  readonly counts = { page: 0, socket: 0, posted: 0, postedFailed: 0 };
  /** Told of each posted SignalEvent (`signal`) that did not succeed (settable after construction). */
  onSignalFailed: (f: SignalFailure) => void;

  /** The hypervisor socket this client talks to. */
  get endpointName(): string {
    return this.endpoint;
  }

  constructor(private readonly endpoint: string, private readonly onNotify: (n: Notification) => void = () => {}, opts: HvClientOptions = {}) {
    this.sock = dealer();
    this.q = new SendQueue(this.sock);
    this.callTimeoutMs = opts.callTimeoutMs ?? 10000;
    this.ctlTimeoutMs = opts.ctlTimeoutMs ?? 10000;
    this.noPage = opts.noPage ?? process.env.HVLAB_HCPAGE === 'off';
    this.noWakeFd = opts.noWakeFd ?? process.env.HVLAB_WAKE_FD === '0';
    this.onSignalFailed = opts.onSignalFailed ?? (() => {});
    if (opts.watchPid !== undefined) this.watchHypervisor(opts.watchPid, opts.watchIntervalMs);
  }

  /** Fails every call once process `pid` (the hypervisor) has ended (for a client made before its pid was known). */
  watchHypervisor(pid: number, intervalMs?: number): void {
    if (this.unwatch || this.closed) return;
    this.unwatch = watchPid(pid, () => this.hypervisorGone(pid), intervalMs);
  }

  private hypervisorGone(pid: number): void {
    this.unwatch?.();
    this.unwatch = null;
    if (this.gone) return;
    this.gone = new HypervisorGoneError(pid);
    this.failAll(this.gone);
  }

  private failAll(e: Error): void {
    if (this.page?.posted) this.dropPosted(this.page);
    const pw = this.page?.waiter;
    if (pw && this.page) {
      this.page.waiter = null;
      this.pageBusy = false;
      pw.fail(e);
    }
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e);
    const w = this.welcome;
    this.welcome = null;
    w?.reject(e);
    // With the hypervisor gone, calls queued behind the page (a posted signal, a call in flight)
    // start now and fail at once (this.gone): left in the queue, they waited for good, and so did
    // whatever awaited them (a worker's exit, its partition's FinalizePartition queued behind a
    // posted signal, never ended). A socket that failed with the hypervisor alive leaves them: the
    // page may still hold a call it serves.
    if (this.gone) {
      this.pageBusy = false;
      this.pump();
    }
  }

  private linked = false;

  /**
   * Connects the socket and starts reading, without opening a session: a process started ahead of
   * need (a warm VMWP, a prestarted partition process) pays ZeroMQ's context, its I/O thread and
   * the connection before it is given a VM; `connect` then only says hello. Idempotent.
   */
  preconnect(): void {
    if (this.linked || this.closed) return;
    this.linked = true;
    this.sock.connect(this.endpoint);
    void this.receiveLoop();
  }

  async connect(hello: HvHelloInput, timeoutMs = 5000): Promise<HvSession> {
    if (this.gone) throw this.gone;
    this.preconnect();
    const reply = await new Promise<HvServerMsg>((resolve, reject) => {
      const t = setTimeout(() => {
        this.welcome = null;
        reject(new Error(`the hypervisor at ${this.endpoint} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.welcome = {
        resolve: (m) => {
          clearTimeout(t);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      };
      const msg: HvClientMsg = { k: 'hello', pid: process.pid, ...hello };
      this.q.send(encode(msg)).catch((e: Error) => this.welcome?.reject(e));
    });
    if (reply.k === 'reject') throw new Error(`the hypervisor refused the session: ${reply.reason}`);
    if (reply.k === 'bad') throw new Error(`the hypervisor could not read the hello: ${reply.reason}`);
    if (reply.k !== 'welcome') throw new Error(`unexpected hypervisor reply ${reply.k}`);
    this.session = { partitionId: reply.partitionId, hostId: reply.hostId, memoryMode: reply.memoryMode, memoryRegion: reply.memoryRegion, memoryBytes: reply.memoryBytes, vpRegion: reply.vpRegion ?? null, schedRegion: reply.schedRegion ?? null };
    if (reply.hcRegion && reply.hcBell && !this.noPage) this.openPage(reply.hcRegion, reply.hcBell, reply.hcWake ?? null);
    return this.session;
  }

  /** Whether calls go through a hypercall page. */
  get paged(): boolean {
    return this.page !== null;
  }

  /**
   * Maps the session's hypercall page and watches it from the event loop: through the session's
   * wake descriptor (`wake`, the hypervisor's eventfd, which this process copies with pidfd_getfd)
   * when it can, so the hypervisor's signal wakes the loop itself; otherwise through the
   * `attention` word, whose watcher thread wakes the loop (a second wake-up, tens of microseconds
   * on a virtual machine whose idle CPUs halt).
   */
  private openPage(regionName: string, bellName: string, wake: { pid: number; fd: number } | null): void {
    if (!wordWatchAvailable()) return;
    try {
      const region = openRegion(regionName, HC_REGION_BYTES);
      const bell = openRegion(bellName, HC_BELL_BYTES);
      const i32 = new Int32Array(region);
      const page: Page = {
        region, i32, u8: new Uint8Array(region), bell, bellI32: new Int32Array(bell), unwatch: () => {}, seq: Atomics.load(i32, HcWord.req), waiter: null,
        posted: 0, postedWhat: null, postedTimer: null,
      };
      page.unwatch = this.watchPage(region, i32, wake);
      this.page = page;
    } catch {
      // No page (a region that vanished, no addon): every call uses the socket.
      this.page = null;
    }
  }

  /** Starts the page's watch (see openPage); returns what stops it. Throws when neither way works. */
  private watchPage(region: SharedArrayBuffer, i32: Int32Array, wake: { pid: number; fd: number } | null): () => void {
    if (wake && wakeFdAvailable() && !this.noWakeFd) {
      try {
        const stop = watchWakeFd(wake.pid, wake.fd, () => this.onAttention());
        Atomics.store(i32, HcWord.wakeBy, HcWakeBy.Descriptor);
        this.pageWatch = 'descriptor';
        // Whatever the hypervisor woke the word for before it read wakeBy: looked at once, here.
        setImmediate(() => this.onAttention());
        return stop;
      } catch {
        // Not allowed to take the descriptor here (a security module, an old kernel): the word.
      }
    }
    Atomics.store(i32, HcWord.wakeBy, HcWakeBy.Futex);
    const stop = watchWord(region, HcWord.attention, () => this.onAttention());
    this.pageWatch = 'word';
    return stop;
  }

  /**
   * Calls `fn` on this event loop each time the hypervisor rings the session page's `attention`
   * (and once soon after this call), after the page's own business: the guest kernel's SINT line
   * takes the SINTs the hypervisor raised on it there (guest sint-line.ts). Rings coalesce: `fn`
   * must look at whatever it serves. Null when calls do not go through a page (nothing rings);
   * else the function that removes `fn`.
   */
  onPageAttention(fn: () => void): (() => void) | null {
    if (!this.page || this.closed) return null;
    this.attentionHooks.push(fn);
    setImmediate(() => {
      if (this.attentionHooks.includes(fn)) fn();
    });
    return () => {
      this.attentionHooks = this.attentionHooks.filter((h) => h !== fn);
    };
  }

  /** The hypervisor completed a call or queued events: finish the one, deliver the others. */
  private onAttention(): void {
    const page = this.page;
    if (!page) return;
    try {
      this.pageAttention(page);
    } finally {
      for (const h of this.attentionHooks) h();
    }
  }

  private pageAttention(page: Page): void {
    const w = page.waiter;
    if (w && Atomics.load(page.i32, HcWord.done) === w.seq) this.finishPageCall(page);
    if (page.posted && this.settlePosted(page)) this.pump();
    const { overflowed } = drainHcEvents(page.i32, (e) => {
      if (e.kind === 'rootEvent') this.deliver({ k: 'rootevent', portId: e.portId, flagNumber: e.flag, sender: e.sender });
      else if (e.kind === 'rootMessage') this.deliver({ k: 'rootmsg', portId: e.portId, messageType: e.messageType, payload: e.payload, sender: e.sender });
      else {
        const { kind: _kind, ...rest } = e;
        this.deliver({ k: 'intercept', ...rest });
      }
    });
    if (overflowed) for (const portId of this.rootPorts) this.deliver({ k: 'rootevent', portId, flagNumber: 0, sender: 0 });
    // The hypervisor holds entries that did not fit: now there is room, ring for them.
    if (Atomics.load(page.i32, (HC_PAGE_BYTES >> 2) + HcEventWord.backlog) === 1) {
      Atomics.add(page.bellI32, HC_RING_WORD, 1);
      Atomics.add(page.bellI32, HC_BELL_WORD, 1);
      futexWake(page.bell, HC_BELL_WORD);
    }
  }

  private deliver(n: Notification): void {
    try {
      this.onNotify(n);
    } catch {
      // A notification handler's failure is its own.
    }
  }

  private finishPageCall(page: Page): void {
    const w = page.waiter;
    if (!w) return;
    page.waiter = null;
    w.done(this.pageResult(page, w.code, w.input));
  }

  /**
   * Whether the page is taken: by a call in flight, or by a posted signal the hypervisor has not
   * completed yet. A posted signal found completed frees it here; one not completed is asked to
   * ring `attention` when it is (the waiting word goes from Posted to EventLoop, then `done` is
   * read again: the hypervisor stores `done` before it reads `waiting`).
   */
  private pageHeld(): boolean {
    if (!this.pageBusy) return false;
    const page = this.page;
    if (!page || !page.posted) return true;
    if (this.settlePosted(page)) return false;
    Atomics.store(page.i32, HcWord.waiting, HcWaiting.EventLoop);
    if (this.settlePosted(page)) return false;
    if (!page.postedTimer) {
      const seq = page.posted;
      page.postedTimer = setTimeout(() => {
        page.postedTimer = null;
        if (page.posted !== seq) return;
        const what = page.postedWhat;
        this.dropPosted(page);
        this.postedFailed(what && { connectionId: what.connectionId, flagNumber: what.flags[0]! }, null);
        this.pump();
      }, this.callTimeoutMs);
    }
    return true;
  }

  /** Frees the page from its posted signal if the hypervisor completed it (reporting a failure); false if not yet. */
  private settlePosted(page: Page): boolean {
    if (Atomics.load(page.i32, HcWord.done) !== page.posted) return false;
    const what = page.postedWhat;
    this.dropPosted(page);
    const status = Atomics.load(page.i32, HcWord.status) >>> 0;
    if (status !== HvStatus.SUCCESS) {
      // A call with several flags says which failed first in `reps` (its index).
      const at = Atomics.load(page.i32, HcWord.reps);
      this.postedFailed(what && { connectionId: what.connectionId, flagNumber: what.flags[at >= 0 && at < what.flags.length ? at : 0]! }, status);
    }
    return true;
  }

  private dropPosted(page: Page): void {
    if (page.postedTimer) clearTimeout(page.postedTimer);
    page.postedTimer = null;
    page.posted = 0;
    page.postedWhat = null;
    this.pageBusy = false;
  }

  private postedFailed(what: { connectionId: number; flagNumber: number } | null, status: number | null): void {
    this.counts.postedFailed++;
    if (!what) return;
    try {
      this.onSignalFailed({ ...what, status, statusName: status === null ? 'no completion' : hvStatusName(status) });
    } catch {
      // The report's handler failing is its own.
    }
  }

  /** Starts queued calls in order: socket calls may overlap each other; a page call runs alone. */
  private pump(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0];
      if (head.kind === 'socket' ? this.pageHeld() : this.pageHeld() || this.socketCalls > 0) return;
      this.queue.shift();
      if (head.kind === 'socket') this.socketCalls++;
      else this.pageBusy = true;
      head.start();
    }
  }

  /**
   * Runs call `code` through the page: at once when the page is free and nothing waits before it,
   * else in turn. Null when the input cannot go through a page (the socket carries it).
   */
  private pageCall(page: Page, code: number, input: Record<string, unknown>, timeoutMs: number): Promise<HypercallResult> | null {
    if (this.queue.length === 0 && this.socketCalls === 0 && !this.pageHeld()) {
      const n = encodeHcInput(code, input, page.u8.subarray(HC_INPUT_OFFSET, HC_INPUT_OFFSET + HC_INPUT_MAX));
      if (n === null) return null;
      this.pageBusy = true;
      return this.runPage(page, code, input, n, timeoutMs);
    }
    const scratch = new Uint8Array(HC_INPUT_MAX);
    const n = encodeHcInput(code, input, scratch);
    if (n === null) return null;
    return new Promise((resolve, reject) => {
      this.queue.push({
        kind: 'page',
        start: () => {
          const p = this.page;
          if (!p || this.gone || this.closed) {
            this.pageBusy = false;
            reject(this.gone ?? new Error('hypervisor session is closed'));
            this.pump();
            return;
          }
          p.u8.set(scratch.subarray(0, n), HC_INPUT_OFFSET);
          this.runPage(p, code, input, n, timeoutMs).then(resolve, reject);
        },
      });
      this.pump();
    });
  }

  /**
   * Publishes the call whose input is on the page (the page is this caller's: pageBusy) and waits:
   * a SignalEvent blocks up to PAGE_SYNC_WAIT_MS for the hypervisor's thread, everything else (and
   * a SignalEvent that went to the hypervisor's main thread) waits in the event loop.
   */
  private runPage(page: Page, code: number, input: Record<string, unknown>, inLen: number, timeoutMs: number): Promise<HypercallResult> {
    this.counts.page++;
    const seq = (page.seq + 1) & 0x3fffffff || 1;
    page.seq = seq;
    const i32 = page.i32;
    const sync = code === HvCall.SignalEvent || code === HvCall.AssertVirtualInterrupt;
    Atomics.store(i32, HcWord.code, code);
    Atomics.store(i32, HcWord.inLen, inLen);
    Atomics.store(i32, HcWord.waiting, sync ? HcWaiting.Watching : HcWaiting.EventLoop);
    Atomics.store(i32, HcWord.req, seq);
    Atomics.add(page.bellI32, HC_RING_WORD, 1);
    Atomics.add(page.bellI32, HC_BELL_WORD, 1);
    futexWake(page.bell, HC_BELL_WORD);
    if (sync) {
      const start = performance.now();
      const end = start + PAGE_SYNC_WAIT_MS;
      // The hypervisor's thread answers in microseconds: watch first, then sleep (a thread that
      // slept costs tens of microseconds to wake on an idle CPU here).
      const spinUntil = start + PAGE_SPIN_MS;
      while (Atomics.load(i32, HcWord.done) !== seq && Atomics.load(i32, HcWord.done) !== ~seq && performance.now() < spinUntil) { /* poll */ }
      // Asleep from here: the hypervisor wakes `done` (it reads this after storing `done`).
      Atomics.store(i32, HcWord.waiting, HcWaiting.Asleep);
      for (;;) {
        const d = Atomics.load(i32, HcWord.done);
        if (d === seq) return Promise.resolve(this.pageResult(page, code, input));
        if (d === ~seq) break;
        const left = end - performance.now();
        if (left <= 0) break;
        futexWait(page.region, HcWord.done, d, left);
      }
      Atomics.store(i32, HcWord.waiting, HcWaiting.EventLoop);
      // Completed between the last look and the store: the hypervisor woke `done`, not `attention`.
      if (Atomics.load(i32, HcWord.done) === seq) return Promise.resolve(this.pageResult(page, code, input));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (page.waiter?.seq !== seq) return;
        page.waiter = null;
        this.pageBusy = false;
        reject(new Error(`the hypervisor did not answer hypercall 0x${code.toString(16)} within ${timeoutMs} ms`));
        this.pump();
      }, timeoutMs);
      page.waiter = {
        seq, code, input,
        done: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      // It may have completed before the waiter was in place.
      if (Atomics.load(i32, HcWord.done) === seq) this.finishPageCall(page);
    });
  }

  /** The result of the call that just completed on the page; frees the page for the next one. */
  private pageResult(page: Page, code: number, input: Record<string, unknown>): HypercallResult {
    const status = Atomics.load(page.i32, HcWord.status) >>> 0;
    const reps = Atomics.load(page.i32, HcWord.reps);
    const outLen = Atomics.load(page.i32, HcWord.outLen);
    const output = status === HvStatus.SUCCESS ? decodeHcOutput(code, input, outLen, page.u8.subarray(HC_OUTPUT_OFFSET, HC_OUTPUT_OFFSET + HC_OUTPUT_MAX)) : null;
    this.pageBusy = false;
    if (this.queue.length > 0) queueMicrotask(() => this.pump());
    return { status, statusName: hvStatusName(status), reps: Math.max(0, reps), output };
  }

  private notePort(input: Record<string, unknown>): void {
    if (input.partitionId === ROOT_PARTITION_ID && typeof input.portId === 'number') this.rootPorts.add(input.portId);
  }

  private async receiveLoop(): Promise<void> {
    try {
      for await (const [frame] of this.sock) {
        const d = decodeHvServerMsg(frame);
        if (!d.ok) continue; // nothing to match it with; the call it answered times out
        const m = d.msg;
        if (m.k === 'welcome' || m.k === 'reject' || (m.k === 'bad' && m.id === undefined && this.welcome)) {
          const w = this.welcome;
          this.welcome = null;
          w?.resolve(m);
        } else if (m.k === 'hr' || m.k === 'ctlr' || m.k === 'bad') {
          if (m.id === undefined) continue;
          const p = this.pending.get(m.id);
          if (!p) continue;
          this.pending.delete(m.id);
          if (m.k === 'bad') p.reject(new Error(`the hypervisor could not read request ${m.id}: ${m.reason}`));
          else p.resolve(m);
        } else {
          try {
            this.onNotify(m);
          } catch {
            // A notification handler's failure is its own; the receive loop goes on.
          }
        }
      }
    } catch (e) {
      if (!this.closed) this.failAll(e instanceof Error ? e : new Error('the hypervisor socket failed'));
    }
  }

  /** Sends one request and waits for the answer with id `id`, at most `timeoutMs`. */
  private request(id: number, msg: HvClientMsg, timeoutMs: number, what: string): Promise<HvServerMsg> {
    if (this.gone) return Promise.reject(this.gone);
    if (this.closed) return Promise.reject(new Error('hypervisor session is closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the hypervisor did not answer ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.q.send(encode(msg)).catch((e: Error) => {
        const p = this.pending.get(id);
        this.pending.delete(id);
        p?.reject(e);
      });
    });
  }

  /** Issues a hypercall by code with an arbitrary input (used by `hvlab debug hypercall`). */
  async raw(code: number, input: Record<string, unknown>, opts: { repCount?: number; repStart?: number; fast?: boolean; timeoutMs?: number } = {}): Promise<HypercallResult> {
    const { timeoutMs = this.callTimeoutMs, ...control } = opts;
    if (this.page) {
      if (this.gone) throw this.gone;
      if (this.closed) throw new Error('hypervisor session is closed');
      if (HC_PAGE_CALLS.includes(code) && control.fast === undefined && control.repCount === undefined && control.repStart === undefined) {
        const viaPage = this.pageCall(this.page, code, input, timeoutMs);
        if (viaPage && code !== HvCall.GetVpState) return viaPage;
        if (viaPage) {
          // A state too long for the output area (or one that did not decode) is asked for again
          // over the socket, which carries any size.
          const r = await viaPage;
          if (r.status !== HvStatus.INSUFFICIENT_BUFFERS && (r.status !== HvStatus.SUCCESS || r.output !== null)) return r;
        }
      }
      // In turn with page calls: the hypervisor serves the two paths apart, so order is kept here.
      await new Promise<void>((r) => {
        this.queue.push({ kind: 'socket', start: r });
        this.pump();
      });
      try {
        return await this.socketCall(code, input, timeoutMs, control);
      } finally {
        this.socketCalls--;
        this.pump();
      }
    }
    return this.socketCall(code, input, timeoutMs, control);
  }

  private async socketCall(code: number, input: Record<string, unknown>, timeoutMs: number, control: { repCount?: number; repStart?: number; fast?: boolean }): Promise<HypercallResult> {
    this.counts.socket++;
    const id = this.nextId++;
    const msg: HvClientMsg = { k: 'hc', id, code, input };
    if (control.fast !== undefined) msg.fast = control.fast;
    if (control.repCount !== undefined) msg.repCount = control.repCount;
    if (control.repStart !== undefined) msg.repStart = control.repStart;
    const m = await this.request(id, msg, timeoutMs, `hypercall 0x${code.toString(16)}`);
    if (m.k !== 'hr') throw new Error(`unexpected hypervisor reply ${m.k} to hypercall 0x${code.toString(16)}`);
    if (m.status === HvStatus.SUCCESS && code === HvCall.CreatePort) this.notePort(input);
    return { status: m.status, statusName: hvStatusName(m.status), reps: m.reps, output: m.output };
  }

  /**
   * SignalEvent, posted: published on the hypercall page and not waited for, as a VMBus endpoint
   * signals its peer and goes on (Linux's vmbus_setevent ignores the hypercall's status). Each
   * waited-for signal cost its caller a sleep and a wake-up (the hypervisor's thread takes tens of
   * microseconds to answer when it was asleep), or a 20 µs spin. Order is kept: the call waits its
   * turn behind queued calls, and the next call on the page waits for this one's completion. A
   * signal not yet published that repeats one queued before it is dropped: the flag is the same
   * and the earlier signal is still to come. A failure (a stale connection, say) is counted and
   * given to `onSignalFailed`. Without a page it is an ordinary call through the socket. Inside a
   * `holdSignals` step the flag waits for the step's end, and each connection's flags then go as
   * one call (hcpage.ts: SignalEvent with more flags), so `counts.posted` counts calls.
   */
  signal(connectionId: number, flagNumber: number): void {
    // Inside a holdSignals step (the integration services' tick), the flags wait for its end and
    // go as one call per connection (hvlab's SignalEvent with more flags, hcpage.ts).
    if (signalsHeld() && this.page && !this.gone && !this.closed) {
      let flags = this.heldSignals.get(connectionId);
      if (!flags) {
        if (this.heldSignals.size === 0) whenReleased(() => this.releaseHeldSignals());
        flags = new Set();
        this.heldSignals.set(connectionId, flags);
      }
      flags.add(flagNumber);
      return;
    }
    this.signalFlags(connectionId, [flagNumber]);
  }

  /** Sends the signals held since the step began: per connection, its flags in as few calls as the page takes. */
  private releaseHeldSignals(): void {
    const held = [...this.heldSignals];
    this.heldSignals.clear();
    for (const [connectionId, set] of held) {
      const flags = [...set];
      for (let i = 0; i < flags.length; i += HC_SIGNAL_MORE_MAX + 1) {
        try {
          this.signalFlags(connectionId, flags.slice(i, i + HC_SIGNAL_MORE_MAX + 1));
        } catch {
          // One connection's failure must not lose the others' flags (signalFlags reports its own).
        }
      }
    }
  }

  /** `signal` for one or more flags of a connection (at most 1 + HC_SIGNAL_MORE_MAX), posted as one call. */
  private signalFlags(connectionId: number, flags: number[]): void {
    const page = this.page;
    if (!page || this.gone || this.closed) {
      for (const f of flags) this.signalByCall(connectionId, f);
      return;
    }
    const flagNumber = flags[0]!;
    const key = `${connectionId}:${flags.join(',')}`;
    if (this.queue.some((q) => q.posted === key)) return;
    const publish = (p: Page): void => {
      const input = flags.length > 1 ? { connectionId, flagNumber, moreFlags: flags.slice(1) } : { connectionId, flagNumber };
      const n = encodeHcInput(HvCall.SignalEvent, input, p.u8.subarray(HC_INPUT_OFFSET, HC_INPUT_OFFSET + HC_INPUT_MAX));
      if (n === null) {
        // Not a page input (a number out of range): the socket carries it and explains.
        this.pageBusy = false;
        for (const f of flags) this.signalByCall(connectionId, f);
        return;
      }
      this.counts.page++;
      this.counts.posted++;
      const seq = (p.seq + 1) & 0x3fffffff || 1;
      p.seq = seq;
      p.posted = seq;
      p.postedWhat = { connectionId, flags };
      const i32 = p.i32;
      Atomics.store(i32, HcWord.code, HvCall.SignalEvent);
      Atomics.store(i32, HcWord.inLen, n);
      Atomics.store(i32, HcWord.waiting, HcWaiting.Posted);
      Atomics.store(i32, HcWord.req, seq);
      Atomics.add(p.bellI32, HC_RING_WORD, 1);
      Atomics.add(p.bellI32, HC_BELL_WORD, 1);
      futexWake(p.bell, HC_BELL_WORD);
    };
    if (this.queue.length === 0 && this.socketCalls === 0 && !this.pageHeld()) {
      this.pageBusy = true;
      publish(page);
      return;
    }
    this.queue.push({
      kind: 'page',
      posted: key,
      start: () => {
        const p = this.page;
        if (!p || this.gone || this.closed) {
          this.pageBusy = false;
          this.pump();
          return;
        }
        publish(p);
      },
    });
    this.pump();
  }

  /** `signal` as an ordinary call (no page, or an input no page takes), its failure reported the same way. */
  private signalByCall(connectionId: number, flagNumber: number): void {
    this.call('SignalEvent', { connectionId, flagNumber }).then((r) => {
      if (r.status !== HvStatus.SUCCESS) this.postedFailed({ connectionId, flagNumber }, r.status);
    }, () => undefined);
  }

  /** Issues a hypercall; resolves with its result whatever the status. */
  call<N extends keyof HypercallInputs & HvCallName>(name: N, input: HypercallInputs[N], timeoutMs?: number): Promise<HypercallResult> {
    return this.raw(HvCall[name], input as unknown as Record<string, unknown>, timeoutMs === undefined ? {} : { timeoutMs });
  }

  /**
   * Issues a hypercall and throws HypercallError unless it succeeds. `viaSocket`: over the socket
   * even when the call could go through the page (tests of the socket path). Order needs no
   * switch: a socket call made behind a page call is sent once the page call is done.
   */
  async must<T = unknown, N extends keyof HypercallInputs & HvCallName = keyof HypercallInputs & HvCallName>(name: N, input: HypercallInputs[N], opts: { viaSocket?: boolean } = {}): Promise<T> {
    const r = opts.viaSocket ? await this.raw(HvCall[name], input as unknown as Record<string, unknown>, { fast: false }) : await this.call(name, input);
    if (r.status !== HvStatus.SUCCESS) throw new HypercallError(name, r.status);
    return r.output as T;
  }

  /**
   * A control request (root sessions only); resolves with its result, which may be `{error}`.
   * `args`: the op's arguments (`setLps`: `{lps, forMs}`); a number there is the timeout (ms).
   */
  async ctl(op: HvCtlOp, args?: HvCtlArgs | number, timeoutMs?: number): Promise<unknown> {
    const timeout = typeof args === 'number' ? args : timeoutMs ?? this.ctlTimeoutMs;
    const id = this.nextId++;
    const msg: HvClientMsg = typeof args === 'object' && args !== null ? { k: 'ctl', id, op, args } : { k: 'ctl', id, op };
    const m = await this.request(id, msg, timeout, `control request ${op}`);
    return m.k === 'ctlr' ? m.result : null;
  }

  /**
   * The LP-shrink fault: the host's scheduler uses only its first `lps` logical processors for
   * `forMs` ms, then all of them again by itself (the hypervisor holds the deadline). `lps` equal to
   * the boot count, or `forMs` 0, restores them at once. Throws with the hypervisor's reason when
   * it refuses.
   */
  async setLps(lps: number, forMs: number, timeoutMs?: number): Promise<{ lpsBoot: number; lpsCurrent: number; lpShrink: { lps: number; remainingMs: number } | null }> {
    const r = (await this.ctl('setLps', { lps, forMs }, timeoutMs)) as { ok?: unknown; error?: unknown; lpsBoot?: number; lpsCurrent?: number; lpShrink?: { lps: number; remainingMs: number } | null } | null;
    if (!r || r.ok !== true) throw new Error(`the hypervisor refused setLps: ${r && typeof r.error === 'string' ? r.error : 'no answer'}`);
    return { lpsBoot: r.lpsBoot ?? lps, lpsCurrent: r.lpsCurrent ?? lps, lpShrink: r.lpShrink ?? null };
  }

  /** A one-time ticket that opens one more root-partition session (valid once, for 30 s). */
  async ticket(timeoutMs?: number): Promise<string> {
    const r = (await this.ctl('ticket', timeoutMs)) as { ticket?: unknown; error?: unknown } | null;
    if (r && typeof r.ticket === 'string') return r.ticket;
    throw new Error(`the hypervisor gave no ticket: ${r && typeof r.error === 'string' ? r.error : 'no answer'}`);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unwatch?.();
    this.unwatch = null;
    this.q.close();
    this.sock.close();
    const page = this.page;
    this.page = null;
    if (page) {
      page.unwatch();
      if (page.posted) this.dropPosted(page);
      const w = page.waiter;
      page.waiter = null;
      this.pageBusy = false;
      w?.done({ status: HvStatus.INVALID_PARTITION_STATE, statusName: hvStatusName(HvStatus.INVALID_PARTITION_STATE), reps: 0, output: null });
    }
    for (const q of this.queue.splice(0)) if (q.kind === 'socket') q.start();
    // Pending hypercalls end with a status (as before); pending control requests with null.
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.resolve({ k: 'hr', id: 0, status: HvStatus.INVALID_PARTITION_STATE, reps: 0, output: null });
    this.welcome?.reject(new Error('hypervisor session is closed'));
    this.welcome = null;
  }
}
