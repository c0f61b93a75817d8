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
  decodeHvServerMsg, encode, HvCall, hvStatusName, HvStatus,
  type HvCallName, type HvClientMsg, type HvCtlOp, type HvServerMsg, type HypercallInputs,
} from '@hvlab/protocol';
import { watchPid } from './anchor.js';
import { dealer, SendQueue, type zmq } from './zmq.js';

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
}

interface Pending {
  resolve: (m: HvServerMsg) => void;
  reject: (e: Error) => void;
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
  session: HvSession | null = null;

  constructor(private readonly endpoint: string, private readonly onNotify: (n: Notification) => void = () => {}, opts: HvClientOptions = {}) {
    this.sock = dealer();
    this.q = new SendQueue(this.sock);
    this.callTimeoutMs = opts.callTimeoutMs ?? 10000;
    this.ctlTimeoutMs = opts.ctlTimeoutMs ?? 10000;
    const pid = opts.watchPid;
    if (pid !== undefined) this.unwatch = watchPid(pid, () => this.hypervisorGone(pid), opts.watchIntervalMs);
  }

  private hypervisorGone(pid: number): void {
    this.unwatch?.();
    this.unwatch = null;
    if (this.gone) return;
    this.gone = new HypervisorGoneError(pid);
    this.failAll(this.gone);
  }

  private failAll(e: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e);
    const w = this.welcome;
    this.welcome = null;
    w?.reject(e);
  }

  async connect(hello: HvHelloInput, timeoutMs = 5000): Promise<HvSession> {
    if (this.gone) throw this.gone;
    this.sock.connect(this.endpoint);
    void this.receiveLoop();
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
    return this.session;
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
    const id = this.nextId++;
    const { timeoutMs = this.callTimeoutMs, ...control } = opts;
    const msg: HvClientMsg = { k: 'hc', id, code, input };
    if (control.fast !== undefined) msg.fast = control.fast;
    if (control.repCount !== undefined) msg.repCount = control.repCount;
    if (control.repStart !== undefined) msg.repStart = control.repStart;
    const m = await this.request(id, msg, timeoutMs, `hypercall 0x${code.toString(16)}`);
    if (m.k !== 'hr') throw new Error(`unexpected hypervisor reply ${m.k} to hypercall 0x${code.toString(16)}`);
    return { status: m.status, statusName: hvStatusName(m.status), reps: m.reps, output: m.output };
  }

  /** Issues a hypercall; resolves with its result whatever the status. */
  call<N extends keyof HypercallInputs & HvCallName>(name: N, input: HypercallInputs[N], timeoutMs?: number): Promise<HypercallResult> {
    return this.raw(HvCall[name], input as unknown as Record<string, unknown>, timeoutMs === undefined ? {} : { timeoutMs });
  }

  /** Issues a hypercall and throws HypercallError unless it succeeds. */
  async must<T = unknown, N extends keyof HypercallInputs & HvCallName = keyof HypercallInputs & HvCallName>(name: N, input: HypercallInputs[N]): Promise<T> {
    const r = await this.call(name, input);
    if (r.status !== HvStatus.SUCCESS) throw new HypercallError(name, r.status);
    return r.output as T;
  }

  /** A control request (root sessions only); resolves with its result, which may be `{error}`. */
  async ctl(op: HvCtlOp, timeoutMs = this.ctlTimeoutMs): Promise<unknown> {
    const id = this.nextId++;
    const m = await this.request(id, { k: 'ctl', id, op }, timeoutMs, `control request ${op}`);
    return m.k === 'ctlr' ? m.result : null;
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
    // Pending hypercalls end with a status (as before); pending control requests with null.
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.resolve({ k: 'hr', id: 0, status: HvStatus.INVALID_PARTITION_STATE, reps: 0, output: null });
    this.welcome?.reject(new Error('hypervisor session is closed'));
    this.welcome = null;
  }
}
