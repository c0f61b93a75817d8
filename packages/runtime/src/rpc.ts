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
 *
 * A connection that drops loses what it held (a link proxy that dies takes the bytes it had), and
 * an answer to a request that came on it goes nowhere (the peer comes back under a new identity).
 * A call made with `resend` is sent again, the same frame, each time the client's connection comes
 * back while it waits; a server given `replayKey` answers a request it has seen (its key) with its
 * first answer, waiting for it if it is still being handled, and does not handle it again. A
 * caller marks as `resend` only requests that are safe to be carried out twice, or that the server
 * replays.
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
/**
 * Answers a server with `replayKey` keeps once their requests were handled (the oldest goes
 * first). A request is sent again only while its caller waits for it, which is a call's bound
 * (seconds), and a caller has few in flight (a move: its window of page batches and a pull): this
 * many outlasts that on any server.
 */
export const RPC_REPLAY_KEEP = 1024;

/** A handled request's outcome, as it is answered (and replayed). */
type Outcome = { ok: true; result: unknown } | { ok: false; code: string; message: string };

export class RpcServer<T extends { id: number }> {
  readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private running = 0;
  private closed = false;
  /** Requests being handled, by who asked: answered by `failInFlight` if the server must go first. */
  private readonly inFlight = new Set<{ peer: Buffer; id: number }>();
  /** Outcomes of keyed requests still being handled, by key (replayKey). */
  private readonly replayRunning = new Map<string, Promise<Outcome>>();
  /** Outcomes of keyed requests handled, by key, oldest first (at most RPC_REPLAY_KEEP). */
  private readonly replayDone = new Map<string, Outcome>();
  /** Requests answered with an earlier one's outcome (their key seen before), not handled again. */
  replayed = 0;
  /** Told of each request answered with an earlier one's outcome (`running`: that one is still being handled). */
  onReplay: ((req: T, running: boolean) => void) | null = null;

  /**
   * `replayKey`: the key of a request to be handled once (null: handled each time it comes); a
   * request whose key was seen is answered with the first one's outcome.
   */
  constructor(
    private readonly decodeFrame: (b: Uint8Array) => RpcDecoded<T>,
    private readonly handle: (req: T) => Promise<unknown> | unknown,
    opts: Record<string, unknown> = {},
    private readonly maxInFlight = 256,
    private readonly replayKey: ((req: T) => string | null) | null = null,
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
          const out = await this.outcomeOf(d.value);
          if (this.inFlight.delete(entry)) void this.answer(peer, out.ok ? { id, ok: true, result: out.result ?? null } : { id, ok: false, error: { code: out.code, message: out.message } });
        } finally {
          this.running--;
        }
      })();
    }
  }

  /** Handles `req`, or, when its key was seen, takes the outcome of the request that had it first. Never rejects. */
  private outcomeOf(req: T): Promise<Outcome> {
    let key: string | null = null;
    try {
      key = this.replayKey?.(req) ?? null;
    } catch {
      key = null;
    }
    if (key !== null) {
      const done = this.replayDone.get(key);
      const running = done === undefined ? this.replayRunning.get(key) : undefined;
      if (done !== undefined || running !== undefined) {
        this.replayed++;
        try {
          this.onReplay?.(req, running !== undefined);
        } catch {
          // The answer goes all the same; a handler's failure is not the server's.
        }
        return running ?? Promise.resolve(done!);
      }
    }
    const p = (async (): Promise<Outcome> => {
      try {
        return { ok: true, result: await this.handle(req) };
      } catch (e) {
        const code = e instanceof RpcFailure ? e.code : 'Internal';
        const message = e instanceof Error && typeof e.message === 'string' ? e.message : String(e);
        return { ok: false, code, message };
      }
    })();
    if (key === null) return p;
    const k = key;
    this.replayRunning.set(k, p);
    void p.then((out) => {
      this.replayRunning.delete(k);
      // A refusal of the credential is not the request's answer to keep: it would only fill the
      // list (a key names what the sender chose) and hold a refusal for the real request.
      if (!out.ok && out.code === 'Denied') return;
      this.replayDone.set(k, out);
      for (const old of this.replayDone.keys()) {
        if (this.replayDone.size <= RPC_REPLAY_KEEP) break;
        this.replayDone.delete(old);
      }
    });
    return p;
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
  op: string;
  /** The request's frame when it is sent again as its connection comes back (call's `resend`), else null. */
  frame: Buffer | null;
  /** The client's count of dropped connections when it was last sent: a drop since may have lost it. */
  sentAtDrop: number;
}

/** A DEALER client: `call(body, timeoutMs)` resolves with the result or rejects with an RpcFailure. */
export class RpcClient {
  readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private closed = false;
  /** Connections dropped since the client watched for them (watchReconnects). */
  private drops = 0;
  private watching = false;
  /** Requests sent again because their connection came back while they waited. */
  resent = 0;
  /** Told the operations of the requests sent again, each time a connection comes back with some waiting. */
  onResend: ((ops: string[]) => void) | null = null;

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

  /**
   * Sends `{ v, id, ...body }`; rejects with RpcFailure('Timeout') when no answer comes in time.
   * `resend`: while it waits, the request goes again (the same frame, the same id) each time the
   * connection comes back after a drop, which may have lost it or its answer; the first answer
   * settles the call. Only for a request that is safe to be carried out twice, or that its server
   * replays (RpcServer's `replayKey`).
   */
  call(body: Record<string, unknown>, timeoutMs: number, v = 1, opts: { resend?: boolean } = {}): Promise<unknown> {
    if (this.closed) return Promise.reject(new RpcFailure('Closed', `the connection to ${this.endpoint} is closed`));
    const id = this.nextId++;
    if (opts.resend === true) this.watchReconnects();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new RpcFailure('Timeout', `no answer from ${this.endpoint} to "${String(body.op)}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const frame = Buffer.from(encode({ v, id, ...body }));
      this.waiting.set(id, { resolve, reject, timer, op: String(body.op), frame: opts.resend === true ? frame : null, sentAtDrop: this.drops });
      this.q.send(frame).catch((e: Error) => {
        const w = this.waiting.get(id);
        if (!w) return;
        this.waiting.delete(id);
        clearTimeout(w.timer);
        reject(new RpcFailure('SendFailed', `cannot send to ${this.endpoint}: ${e.message}`));
      });
    });
  }

  /**
   * Watches the socket's connection (from the first call with `resend` on): the drop of a
   * connection that had completed its handshake is counted, and the next connection to complete
   * its handshake sends again every `resend` request that waits and was sent before that drop.
   * One sent after the drop (while there was no connection) waits in the socket's queue and goes
   * on the new connection by itself. A request sent again that had arrived after all is a
   * duplicate, which its server replays (or may carry out again: the caller's choice).
   *
   * By the handshake, not the TCP connect: a link proxy whose far end is down accepts and closes
   * (every ~100 ms), and each of those connects sent another copy of every waiting request into
   * the socket's queue (a review reproduced 15 copies of a 1 MB batch after a 2 s outage).
   */
  private watchReconnects(): void {
    if (this.watching) return;
    this.watching = true;
    const events = this.sock.events;
    // Taken as connected when the watch begins (an earlier call may have made the connection, and
    // its handshake is not seen again): a first drop of one that was not costs at most one copy.
    let shaken = true;
    events.on('disconnect', () => {
      if (!shaken) return;
      shaken = false;
      this.drops++;
    });
    events.on('handshake', () => {
      shaken = true;
      if (this.closed) return;
      const ops: string[] = [];
      for (const w of this.waiting.values()) {
        if (w.frame === null || w.sentAtDrop === this.drops) continue;
        w.sentAtDrop = this.drops;
        ops.push(w.op);
        this.resent++;
        // A send the queue drops (the peer gone again, or its queue full) leaves the call to the
        // next connection or to its timeout.
        this.q.send(w.frame).catch(() => undefined);
      }
      if (ops.length > 0) {
        try {
          this.onResend?.(ops);
        } catch {
          // The requests went; a handler's failure is not the client's.
        }
      }
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
