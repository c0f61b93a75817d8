/**
 * A typed hypercall client over the hypervisor's ZeroMQ socket. The root's VID, every VMWP and
 * every guest kernel use one. A session first says hello with its partition id and the token the
 * hypervisor issued for it (the root's token is made by `hvlab up`); the hypervisor then knows
 * who is calling, as hardware knows which partition a hypercall came from.
 */
import {
  decode, encode, HvCall, hvStatusName, HvStatus,
  type HvCallName, type HvClientMsg, type HvServerMsg, type HypercallInputs,
} from '@hvlab/protocol';
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

export type Notification = Exclude<HvServerMsg, { k: 'welcome' } | { k: 'reject' } | { k: 'hr' } | { k: 'ctlr' }>;

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

export class HvClient {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly pending = new Map<number, (m: HvServerMsg) => void>();
  private welcome: ((m: HvServerMsg) => void) | null = null;
  private closed = false;
  session: HvSession | null = null;

  constructor(private readonly endpoint: string, private readonly onNotify: (n: Notification) => void = () => {}) {
    this.sock = dealer();
    this.q = new SendQueue(this.sock);
  }

  async connect(hello: { partitionId: number; token: string; role: string; vm: string | null }, timeoutMs = 5000): Promise<HvSession> {
    this.sock.connect(this.endpoint);
    void this.receiveLoop();
    const reply = await new Promise<HvServerMsg>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`the hypervisor at ${this.endpoint} did not answer within ${timeoutMs} ms`)), timeoutMs);
      this.welcome = (m) => {
        clearTimeout(t);
        resolve(m);
      };
      const msg: HvClientMsg = { k: 'hello', pid: process.pid, ...hello };
      this.q.send(encode(msg)).catch(reject);
    });
    if (reply.k === 'reject') throw new Error(`the hypervisor refused the session: ${reply.reason}`);
    if (reply.k !== 'welcome') throw new Error(`unexpected hypervisor reply ${reply.k}`);
    this.session = { partitionId: reply.partitionId, hostId: reply.hostId, memoryMode: reply.memoryMode, memoryRegion: reply.memoryRegion, memoryBytes: reply.memoryBytes, vpRegion: reply.vpRegion ?? null, schedRegion: reply.schedRegion ?? null };
    return this.session;
  }

  private async receiveLoop(): Promise<void> {
    try {
      for await (const [frame] of this.sock) {
        let m: HvServerMsg;
        try {
          m = decode<HvServerMsg>(frame);
        } catch {
          continue;
        }
        if (m.k === 'welcome' || m.k === 'reject') {
          this.welcome?.(m);
          this.welcome = null;
        } else if (m.k === 'hr' || m.k === 'ctlr') {
          const cb = this.pending.get(m.id);
          if (cb) {
            this.pending.delete(m.id);
            cb(m);
          }
        } else {
          this.onNotify(m);
        }
      }
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  /** Issues a hypercall by code with an arbitrary input (used by `hvlab debug hypercall`). */
  raw(code: number, input: Record<string, unknown>, opts: { repCount?: number; repStart?: number; fast?: boolean; timeoutMs?: number } = {}): Promise<HypercallResult> {
    if (this.closed) return Promise.reject(new Error('hypervisor session is closed'));
    const id = this.nextId++;
    const { timeoutMs = 10000, ...control } = opts;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the hypervisor did not answer hypercall 0x${code.toString(16)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, (m) => {
        clearTimeout(timer);
        if (m.k !== 'hr') return;
        resolve({ status: m.status, statusName: hvStatusName(m.status), reps: m.reps, output: m.output });
      });
      const msg: HvClientMsg = { k: 'hc', id, code, input, ...control };
      this.q.send(encode(msg)).catch((e) => {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e);
      });
    });
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

  ctl(op: 'shutdown' | 'stats'): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (m) => resolve(m.k === 'ctlr' ? m.result : null));
      this.q.send(encode({ k: 'ctl', id, op } satisfies HvClientMsg)).catch(reject);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.q.close();
    this.sock.close();
    for (const cb of this.pending.values()) cb({ k: 'hr', id: 0, status: HvStatus.INVALID_PARTITION_STATE, reps: 0, output: null });
    this.pending.clear();
  }
}
