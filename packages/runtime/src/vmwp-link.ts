/**
 * Both ends of the VMMS <-> VMWP control link (protocol/src/vmwp.ts): the VMWP serves a ROUTER in
 * the host's socket directory; the root (and a root that replaced a dead one) connects a DEALER,
 * proves itself with the VMWP's secret, then sends requests and receives notes. Requests never wait
 * on a dead peer: the client watches the VMWP's pid (a pidfd: see anchor.ts) and fails everything
 * pending once it is gone.
 */
import { encode, decodeVmwpFrame, decodeVmwpResult, VmwpDecodeError, type VmwpNote, type VmwpRequest, type VmwpResultOf } from '@hvlab/protocol';
import { statSync, unlinkSync } from 'node:fs';
import { watchPid } from './anchor.js';
import { dealer, router, SendQueue, type zmq } from './zmq.js';

type Log = { warn: (o: object, m?: string) => void; error: (o: object, m?: string) => void };

/** Notes a worker keeps for the first root that attaches. */
export const EARLY_NOTES = 16;

/** VmwpLinkError's code for an answer whose result does not decode (decodeVmwpResult): made by the link, not the worker's. */
export const VMWP_BAD_ANSWER = 'BadAnswer';

export class VmwpLinkError extends Error {
  override name = 'VmwpLinkError';
  /**
   * `code`: a management error code the VMWP chose (e.g. InvalidArgument), VMWP_BAD_ANSWER (the
   * worker answered with a result that does not decode: nothing of it is used), or null. `timedOut`:
   * no answer came within the request's time (the worker may still act on it). `gone`: the worker
   * exited or the link was closed (nothing more will come). Neither: the worker refused.
   */
  constructor(message: string, readonly code: string | null = null, readonly timedOut = false, readonly gone = false) {
    super(message);
  }
}

/** Throw one of these in a VMWP handler to give the root a management error code. */
export class VmwpFailure extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** The VMWP's side: answers requests from the attached root and pushes notes to it. */
export class VmwpControlServer {
  private readonly sock: zmq.Router = router();
  private readonly q = new SendQueue(this.sock);
  private attached: Buffer | null = null;
  /** Whether a root has attached (and been sent a note) since this worker started. */
  private everAttached = false;
  /** Notes from before the first root attached. */
  private readonly early: VmwpNote[] = [];
  private closed = false;

  constructor(
    readonly endpoint: string,
    private readonly secret: string,
    private readonly handle: (req: Exclude<VmwpRequest, { t: 'hello' }>) => Promise<unknown>,
    private readonly log: Log,
  ) {}

  /** The socket file this server bound (an ipc:// endpoint) and its inode, for close to remove. */
  private boundFile: { path: string; ino: number } | null = null;

  async bind(): Promise<void> {
    await this.sock.bind(this.endpoint);
    if (this.endpoint.startsWith('ipc://')) {
      const path = this.endpoint.slice('ipc://'.length);
      try {
        this.boundFile = { path, ino: statSync(path).ino };
      } catch { /* not there to remove later */ }
    }
    void this.serve();
  }

  get hasRoot(): boolean {
    return this.attached !== null;
  }

  private answer(peer: Buffer, id: number, ok: boolean, value: unknown): void {
    let body: Buffer;
    try {
      body = ok
        ? encode({ t: 'res', id, ok: true, result: value })
        : encode({ t: 'res', id, ok: false, error: value instanceof Error ? value.message : String(value), code: value instanceof VmwpFailure ? value.code : null });
    } catch (e) {
      body = encode({ t: 'res', id, ok: false, error: `the answer could not be encoded: ${(e as Error).message}` });
    }
    void this.q.send([peer, body]).catch(() => undefined);
  }

  private async serve(): Promise<void> {
    try {
      for await (const [peer, frame] of this.sock) {
        if (!frame) continue;
        let f;
        try {
          f = decodeVmwpFrame(frame);
        } catch (e) {
          const id = e instanceof VmwpDecodeError ? e.id : null;
          if (id !== null) this.answer(peer, id, false, (e as Error).message);
          continue;
        }
        if (f.t !== 'req') continue;
        const { id, body } = f;
        if (body.t === 'hello') {
          if (body.secret !== this.secret) {
            this.log.warn({}, 'a peer presented a wrong secret on the control link');
            this.answer(peer, id, false, 'wrong secret');
            continue;
          }
          this.attached = Buffer.from(peer);
          this.everAttached = true;
          this.answer(peer, id, true, { attached: true });
          // Notes from before the first root attached (a warm worker can boot its guest before
          // the root that claimed it has said hello): delivered now, in order.
          for (const n of this.early.splice(0)) this.note(n);
          continue;
        }
        if (!this.attached || !peer.equals(this.attached)) {
          this.answer(peer, id, false, 'say hello with the secret first');
          continue;
        }
        this.handle(body).then(
          (r) => this.answer(peer, id, true, r),
          (e: unknown) => this.answer(peer, id, false, e),
        );
      }
    } catch (e) {
      if (!this.closed) this.log.error({ err: e }, 'control link receive loop ended');
    }
  }

  /**
   * Sends a note to the attached root. Before any root attached, the last EARLY_NOTES notes wait
   * for the first hello; later, with no root attached (it died), a note is dropped (the next root
   * asks `describe`).
   */
  note(body: VmwpNote): void {
    if (this.closed) return;
    if (!this.attached) {
      if (!this.everAttached) {
        this.early.push(body);
        if (this.early.length > EARLY_NOTES) this.early.shift();
      }
      return;
    }
    void this.q.send([this.attached, encode({ t: 'note', body })]).catch(() => undefined);
  }

  /**
   * Closes the socket and removes its file, if it is still the one this server bound (a worker of
   * the same VM started since may have bound the path again). ZeroMQ unlinks it on its own I/O
   * thread, which a worker's process.exit right after cut short: a host kept a dead `w-…` socket
   * for every VM stopped, turned off, deleted or moved away.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.q.close();
    this.sock.close();
    const f = this.boundFile;
    this.boundFile = null;
    if (f) {
      try {
        if (statSync(f.path).ino === f.ino) unlinkSync(f.path);
      } catch { /* gone already */ }
    }
  }
}

/** The longest delay a Node timer takes (ms); a longer one fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The root's side of one VMWP's control link. */
export class VmwpControlClient {
  private readonly sock: zmq.Dealer = dealer();
  private readonly q = new SendQueue(this.sock);
  private nextId = 1;
  private readonly pending = new Map<number, { body: VmwpRequest; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout | undefined }>();
  private closed = false;
  private gone: string | null = null;
  private readonly unwatch: () => void;

  constructor(
    endpoint: string,
    private readonly pid: number,
    private readonly onNote: (n: VmwpNote) => void,
    private readonly log: Log,
  ) {
    this.sock.connect(endpoint);
    void this.loop();
    // The VMWP can die at any moment (kill -9): nobody waits on it once it is gone.
    this.unwatch = watchPid(this.pid, () => this.failAll(`the VM worker process (pid ${this.pid}) exited`));
  }

  private failAll(why: string): void {
    if (this.gone) return;
    this.gone = why;
    this.unwatch();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new VmwpLinkError(why, null, false, true));
    }
    this.pending.clear();
  }

  private async loop(): Promise<void> {
    try {
      for await (const [frame] of this.sock) {
        let f;
        try {
          f = decodeVmwpFrame(frame);
        } catch (e) {
          this.log.warn({ why: (e as Error).message }, 'ignoring a malformed frame from a VMWP');
          continue;
        }
        if (f.t === 'note') {
          try {
            this.onNote(f.body);
          } catch (e) {
            this.log.error({ err: e }, 'handling a VMWP note failed');
          }
        } else if (f.t === 'res') {
          const p = this.pending.get(f.id);
          if (!p) continue;
          this.pending.delete(f.id);
          clearTimeout(p.timer);
          if (!f.ok) {
            p.reject(new VmwpLinkError(f.error, f.code));
            continue;
          }
          // The result is checked against the request it answers: the worker is less trusted than
          // the root, and a result that does not decode fails its request, never the link.
          let result: unknown;
          try {
            result = decodeVmwpResult(p.body, f.result);
          } catch (e) {
            const why = e instanceof Error ? e.message : String(e);
            this.log.warn({ request: p.body.t, why }, 'refusing a malformed answer from a VMWP');
            p.reject(new VmwpLinkError(`the VM worker process answered "${p.body.t}" with a malformed result: ${why}`, VMWP_BAD_ANSWER));
            continue;
          }
          p.resolve(result);
        }
      }
    } catch (e) {
      if (!this.closed) this.log.error({ err: e }, 'VMWP link receive loop ended');
    }
  }

  /**
   * Asks the worker; fails after `timeoutMs` (Infinity: never; only an answer or the worker's end
   * settles it). Resolves with the answer as decodeVmwpResult checked it; an answer that does not
   * decode fails with code VMWP_BAD_ANSWER.
   */
  request<R extends VmwpRequest>(body: R, timeoutMs = 10000): Promise<VmwpResultOf<R>> {
    if (this.closed) return Promise.reject(new VmwpLinkError('the control link is closed', null, false, true));
    if (this.gone) return Promise.reject(new VmwpLinkError(this.gone, null, false, true));
    const id = this.nextId++;
    return new Promise<VmwpResultOf<R>>((resolve, reject) => {
      // Infinity (or more than a timer holds): no bound. Node runs a timer of more than 2^31 - 1 ms after 1 ms.
      const timer = timeoutMs > MAX_TIMER_MS ? undefined : setTimeout(() => {
        this.pending.delete(id);
        reject(new VmwpLinkError(`the VM worker process did not answer "${body.t}" within ${timeoutMs / 1000} s`, null, true));
      }, timeoutMs);
      this.pending.set(id, { body, resolve: resolve as (v: unknown) => void, reject, timer });
      this.q.send(encode({ t: 'req', id, body })).catch((e: Error) => {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e);
      });
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll('the control link is closed');
    this.unwatch();
    this.q.close();
    this.sock.close();
  }
}
