/**
 * A management API client: one DEALER, requests matched to answers by id.
 *
 * Answers are bytes from another process, so each is decoded once by `decodeMgmtResponse`, which
 * checks its shape; anything that is not `{id, ok, …}` is dropped and can never throw here.
 *
 * A dead peer never answers, and a timeout long enough for `vm save` (minutes) is far too long to
 * notice it. So a client may watch the host: while any request is pending it checks every 250 ms
 * that the hypervisor and root partition processes (pids from run/host.json) are alive, and as
 * soon as one is gone it fails every pending request with a sentence naming the process.
 */
import { encode, decodeMgmtResponse, MGMT_API_VERSION, type MgmtAnswer, type MgmtOp } from '@hvlab/protocol';
export { decodeMgmtResponse, type MgmtAnswer };
import { dealer, pidAlive, SendQueue, zmq } from '@hvlab/runtime';
import { procState } from '@hvlab/shm/procfs';

export class MgmtCallError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** The host processes a client watches: the `pids` of a host record. */
export interface HostWatch {
  pids: { hypervisor: number; root: number };
}

export interface MgmtClientOptions {
  /** Fail pending requests as soon as one of these processes is gone. */
  watch?: HostWatch | null;
  /** How often the watched pids are checked while a request is pending (default 250 ms). */
  checkEveryMs?: number;
  /** Receives one line per request sent, for HVLAB_DEBUG tracing. */
  debug?: ((line: string) => void) | undefined;
  /** Extra options of the DEALER, e.g. CURVE for a host of a cluster on another machine (runtime's curveClientOptions). */
  socket?: Record<string, unknown>;
  /**
   * Told once, while a request waits, that a watched process is stopped (SIGSTOP, a pause fault):
   * the request waits for it (the wait may be what the user wants), and the CLI says why it waits
   * instead of sitting silent for up to its 60 s.
   */
  onStopped?: (what: string) => void;
}

interface Pending {
  op: MgmtOp;
  settle: (a: MgmtAnswer) => void;
  fail: (e: MgmtCallError) => void;
}

export class MgmtClient {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;
  /** Set once a watched process is gone or the socket failed: every later request fails with it. */
  private broken: ((op: MgmtOp) => MgmtCallError) | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly watch: HostWatch | null;
  private readonly checkEveryMs: number;
  private readonly debug: ((line: string) => void) | undefined;
  private readonly onStopped: ((what: string) => void) | undefined;
  private stoppedSaid = false;

  constructor(private readonly endpoint: string, opts: MgmtClientOptions = {}) {
    this.watch = opts.watch ?? null;
    this.checkEveryMs = opts.checkEveryMs ?? 250;
    this.onStopped = opts.onStopped;
    this.debug = opts.debug;
    this.sock = opts.socket ? new zmq.Dealer({ linger: 0, sendHighWaterMark: 100000, receiveHighWaterMark: 100000, ...opts.socket } as never) : dealer();
    this.sock.connect(endpoint);
    this.q = new SendQueue(this.sock);
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for await (const frames of this.sock) {
        // A ROUTER answer arrives as one frame; anything else is not an answer.
        if (frames.length !== 1) continue;
        const a = decodeMgmtResponse(frames[0]);
        if (a === null) continue;
        const p = this.pending.get(a.id);
        if (!p) continue;
        this.pending.delete(a.id);
        p.settle(a);
      }
    } catch (e) {
      if (this.closed) return;
      const why = e instanceof Error ? e.message : String(e);
      this.breakAll((op) => new MgmtCallError('SocketFailed', `the management socket ${this.endpoint} failed while "${op}" was pending: ${why}`));
    }
  }

  /** The first watched process that is gone, as words for a sentence, or null. */
  private deadProcess(): string | null {
    if (!this.watch) return null;
    const { hypervisor, root } = this.watch.pids;
    // The hypervisor first: when it goes, the root follows it, and the cause is the hypervisor.
    if (!pidAlive(hypervisor)) return `the host's hypervisor process (pid ${hypervisor})`;
    if (!pidAlive(root)) return `the host's root partition process (pid ${root})`;
    return null;
  }

  private check(): void {
    if (this.pending.size === 0) return this.stopChecking();
    const dead = this.deadProcess();
    if (dead) return this.breakAll((op) => new MgmtCallError('HostGone', `${dead} exited while "${op}" was pending`), dead);
    if (this.onStopped && !this.stoppedSaid && this.watch) {
      const { hypervisor, root } = this.watch.pids;
      const stopped = procState(hypervisor) === 'T' ? `the host's hypervisor process (pid ${hypervisor})` : procState(root) === 'T' ? `the host's root partition process (pid ${root})` : null;
      if (stopped) {
        this.stoppedSaid = true;
        this.onStopped(stopped);
      }
    }
  }

  private stopChecking(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private breakAll(error: (op: MgmtOp) => MgmtCallError, dead?: string): void {
    this.broken = dead ? (op) => new MgmtCallError('HostGone', `${dead} has exited; "${op}" was not sent`) : error;
    this.stopChecking();
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.fail(error(p.op));
  }

  request<T = unknown>(op: MgmtOp, args: Record<string, unknown> = {}, timeoutMs = 60000): Promise<T> {
    if (this.closed) return Promise.reject(new MgmtCallError('Closed', `the management client is closed; "${op}" was not sent`));
    if (this.broken) return Promise.reject(this.broken(op));
    const dead = this.deadProcess();
    if (dead) return Promise.reject(new MgmtCallError('HostGone', `${dead} is not running; "${op}" was not sent`));
    const id = this.nextId++;
    // Absent and undefined mean the same; sending neither keeps the request's shape exact.
    const sent = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined));
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new MgmtCallError('Timeout', `the host did not answer "${op}" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const done = (): void => clearTimeout(t);
      this.pending.set(id, {
        op,
        settle: (a) => {
          done();
          if (a.ok) resolve(a.result as T);
          else if (a.error) reject(new MgmtCallError(a.error.code, a.error.message));
          else reject(new MgmtCallError('BadAnswer', `the host refused "${op}" without saying why`));
        },
        fail: (e) => {
          done();
          reject(e);
        },
      });
      if (this.watch && !this.timer) {
        this.timer = setInterval(() => this.check(), this.checkEveryMs);
        this.timer.unref();
      }
      this.q.send(encode({ v: MGMT_API_VERSION, id, op, args: sent })).then(
        () => this.debug?.(`sent "${op}" (request ${id}) to ${this.endpoint}`),
        (e: unknown) => {
          if (!this.pending.delete(id)) return;
          done();
          reject(new MgmtCallError('SendFailed', `could not send "${op}" to ${this.endpoint}: ${e instanceof Error ? e.message : String(e)}`));
        },
      );
    });
  }

  close(): void {
    this.closed = true;
    this.stopChecking();
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.fail(new MgmtCallError('Closed', `the management client was closed while "${p.op}" was pending`));
    this.q.close();
    this.sock.close();
  }
}

/**
 * Turns VM `name` off and deletes it through `c` (a run's or an experiment's own VM); gone already
 * is done, and so is a VM of the name with another id than `id`. A VM whose move is still being cancelled, or being moved in, refuses for a while
 * (InvalidState): that is tried again for up to 10 s.
 */
export async function removeVm(c: MgmtClient, name: string, id?: string): Promise<void> {
  // With `id`, only the VM of that id: a later VM of the name (the run's was deleted, someone made
  // another) is not the run's, and the root answers NotFound for it.
  const args = id === undefined ? { name } : { name, id };
  for (let i = 0; ; i++) {
    try {
      await c.request('vmTurnOff', args, 60_000).catch((e: unknown) => {
        // Off already (it never started, or a failed start left it off).
        if (!(e instanceof MgmtCallError && e.code === 'InvalidState')) throw e;
      });
      await c.request('vmDelete', args, 60_000);
      return;
    } catch (e) {
      if (e instanceof MgmtCallError && e.code === 'NotFound') return;
      if (!(e instanceof MgmtCallError && e.code === 'InvalidState') || i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
