/**
 * Request/answer over ZeroMQ between cluster members (the fabric's control socket, a host's peer
 * service): a ROUTER that decodes each frame once with a checking decoder and answers
 * `{ id, ok, result | error }`, and a DEALER client with per-request timeouts. The answer shape is
 * the management API's, so `decodeMgmtResponse` checks answers.
 *
 * Nothing a peer sends may end the server: a frame that does not decode is answered with its
 * sentence (id 0 when none could be read), a handler's throw becomes an error answer, an answer
 * to a peer that is gone is dropped, and at most `maxInFlight` requests run at once (more are
 * answered Busy).
 */
import { decodeMgmtResponse, encode } from '@hvlab/protocol';
import { SendQueue, zmq } from './zmq.js';

export type RpcDecoded<T> = { ok: true; value: T } | { ok: false; id: number; message: string };

export class RpcFailure extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
  override name = 'RpcFailure';
}

/** Largest frame a server's socket takes before ZeroMQ drops the peer. */
const RPC_TRANSPORT_MAX_BYTES = 4 * 1024 * 1024;

export class RpcServer<T extends { id: number }> {
  readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private running = 0;
  private closed = false;
  /** Requests being handled, by who asked: answered by `failInFlight` if the server must go first. */
  private readonly inFlight = new Set<{ peer: Buffer; id: number }>();

  constructor(
    private readonly decodeFrame: (b: Uint8Array) => RpcDecoded<T>,
    private readonly handle: (req: T) => Promise<unknown> | unknown,
    opts: Record<string, unknown> = {},
    private readonly maxInFlight = 256,
  ) {
    this.sock = new zmq.Router({ linger: 0, mandatory: false, sendHighWaterMark: 10000, receiveHighWaterMark: 10000, ...opts } as never);
    this.sock.maxMessageSize = RPC_TRANSPORT_MAX_BYTES;
    this.sock.sendTimeout = 0;
    this.q = new SendQueue(this.sock);
  }

  bind(endpoint: string): Promise<void> {
    return this.sock.bind(endpoint);
  }

  private answer(peer: Buffer, body: unknown): Promise<void> {
    let bytes: Buffer;
    try {
      bytes = Buffer.from(encode(body));
    } catch (e) {
      bytes = Buffer.from(encode({ id: (body as { id: number }).id, ok: false, error: { code: 'Internal', message: `an answer that cannot be encoded: ${(e as Error).message}` } }));
    }
    return this.q.send([peer, bytes]).catch(() => undefined);
  }

  /**
   * Answers every request still being handled with failure `code`/`message`, for a process that
   * must end before their handlers can: its peers hear why at once, instead of waiting out their
   * own timeouts (a migration's source waited 60 s, its VM paused, for a destination worker that
   * had exited). Their handlers' answers, if they ever come, are not sent. Resolves once the
   * answers have gone to ZeroMQ, or after `withinMs`.
   */
  async failInFlight(code: string, message: string, withinMs = 200): Promise<void> {
    const sends: Promise<void>[] = [];
    for (const r of [...this.inFlight]) {
      this.inFlight.delete(r);
      if (!this.closed) sends.push(this.answer(r.peer, { id: r.id, ok: false, error: { code, message } }));
    }
    if (sends.length > 0) await Promise.race([Promise.all(sends), new Promise((res) => setTimeout(res, withinMs))]);
  }

  /** Serves until closed; never throws. */
  async serve(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.sock.receive();
      } catch {
        if (this.closed || this.sock.closed) return;
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (frames.length !== 2) continue;
      const [peer, frame] = frames as [Buffer, Buffer];
      const d = this.decodeFrame(frame);
      if (!d.ok) {
        this.answer(peer, { id: d.id, ok: false, error: { code: 'BadRequest', message: d.message } });
        continue;
      }
      const id = d.value.id;
      if (this.running >= this.maxInFlight) {
        this.answer(peer, { id, ok: false, error: { code: 'Busy', message: `more than ${this.maxInFlight} requests in flight` } });
        continue;
      }
      this.running++;
      const entry = { peer, id };
      this.inFlight.add(entry);
      void (async () => {
        try {
          const result = await this.handle(d.value);
          if (this.inFlight.delete(entry)) void this.answer(peer, { id, ok: true, result: result ?? null });
        } catch (e) {
          const code = e instanceof RpcFailure ? e.code : 'Internal';
          const message = e instanceof Error && typeof e.message === 'string' ? e.message : String(e);
          if (this.inFlight.delete(entry)) void this.answer(peer, { id, ok: false, error: { code, message } });
        } finally {
          this.running--;
        }
      })();
    }
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.sock.close();
  }
}

interface Waiting {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** A DEALER client: `call(body, timeoutMs)` resolves with the result or rejects with an RpcFailure. */
export class RpcClient {
  readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private closed = false;

  constructor(readonly endpoint: string, opts: Record<string, unknown> = {}) {
    this.sock = new zmq.Dealer({ linger: 0, sendHighWaterMark: 10000, receiveHighWaterMark: 10000, ...opts } as never);
    this.sock.maxMessageSize = RPC_TRANSPORT_MAX_BYTES;
    this.sock.connect(endpoint);
    this.q = new SendQueue(this.sock);
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for await (const frames of this.sock) {
        if (frames.length !== 1) continue;
        const a = decodeMgmtResponse(frames[0]!);
        if (!a) continue;
        const w = this.waiting.get(a.id);
        if (!w) continue;
        this.waiting.delete(a.id);
        clearTimeout(w.timer);
        if (a.ok) w.resolve(a.result);
        else w.reject(new RpcFailure(a.error?.code ?? 'BadAnswer', a.error?.message ?? 'an error answer without a readable error'));
      }
    } catch {
      /* closed */
    }
  }

  /** Sends `{ v, id, ...body }`; rejects with RpcFailure('Timeout') when no answer comes in time. */
  call(body: Record<string, unknown>, timeoutMs: number, v = 1): Promise<unknown> {
    if (this.closed) return Promise.reject(new RpcFailure('Closed', `the connection to ${this.endpoint} is closed`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new RpcFailure('Timeout', `no answer from ${this.endpoint} to "${String(body.op)}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.q.send(Buffer.from(encode({ v, id, ...body }))).catch((e: Error) => {
        const w = this.waiting.get(id);
        if (!w) return;
        this.waiting.delete(id);
        clearTimeout(w.timer);
        reject(new RpcFailure('SendFailed', `cannot send to ${this.endpoint}: ${e.message}`));
      });
    });
  }

  /** Requests sent and not yet answered. */
  get pending(): number {
    return this.waiting.size;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(new RpcFailure('Closed', `the connection to ${this.endpoint} was closed`));
    }
    this.waiting.clear();
    this.q.close();
    this.sock.close();
  }
}
