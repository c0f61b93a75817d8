/**
 * The management API server: a ZeroMQ ROUTER answering versioned msgpack requests, and a PUB
 * socket publishing VM state changes (topic "vm"). Requests run concurrently; each gets exactly
 * one answer, an error carrying a code and a sentence when it fails.
 *
 * The socket is reachable by any local process, so nothing that arrives on it may end the root
 * (and with it every VM):
 *   - each frame is decoded once by `decodeMgmtRequest` (protocol); a frame that is not a request
 *     is answered 'BadRequest' (id 0 when no id could be read), another API version
 *     'VersionMismatch', an unknown operation or an argument of the wrong name, type or range
 *     'InvalidArgument' — none of them reaches the handler;
 *   - the handler sees only checked, typed arguments; whatever it throws becomes an answer
 *     (a MgmtFailure's code, else 'Internal'), and so does an answer that cannot be encoded;
 *   - at most MGMT_MAX_IN_FLIGHT requests run at once; more are answered 'Busy';
 *   - a frame over MGMT_FRAME_MAX_BYTES is answered 'BadRequest' unread, and ZeroMQ drops the
 *     connection of a peer that sends one over TRANSPORT_MAX_BYTES before it is buffered whole;
 *   - answers that cannot be sent at once (a peer that never reads) are dropped, and the loop stops
 *     reading while too many answers wait to be sent, so memory stays bounded;
 *   - nothing escapes `serve()`: a receive error is reported and the loop goes on.
 */
import {
  decodeMgmtRequest, encode, MGMT_MAX_IN_FLIGHT,
  type MgmtCall, type MgmtError, type MgmtRequest, type MgmtResponse, type VmStateEvent,
} from '@hvlab/protocol';
import { ROUTER_SEND_OPTIONS, router, SendQueue, zmq } from '@hvlab/runtime';
import { MgmtFailure } from './config.js';

/**
 * Runs one checked request. `(op, args)` narrow together: in `case 'vmPeek'`, `args` is
 * `MgmtArgs['vmPeek']`. A handler written as `(op: string, args: Record<string, unknown>)` fits too.
 */
export type MgmtHandler = (...call: MgmtCall) => Promise<unknown>;

/** Frames above this are refused by ZeroMQ itself (the peer is disconnected), never buffered whole. */
const TRANSPORT_MAX_BYTES = 16 * 1024 * 1024;
/** Answers waiting for the socket before the loop stops reading new requests. */
const MAX_UNSENT_ANSWERS = 1024;
/** Pause after an unexpected receive error, so a socket that keeps failing cannot spin the loop. */
const RECEIVE_RETRY_MS = 100;

/** A thrown value's message, without trusting it to be an Error. */
function messageOf(e: unknown): string {
  if (e instanceof Error && typeof e.message === 'string') return e.message;
  if (typeof e === 'string') return e;
  return `${e === null ? 'null' : `a ${typeof e}`} (not an Error)`;
}

export class MgmtServer {
  /** The ROUTER (read-only: a CURVE one is watched for key refusals, runtime's watchKeyRefusals). */
  readonly sock: zmq.Router;
  private readonly pub = new zmq.Publisher({ linger: 0 });
  private readonly q: SendQueue;
  private readonly pq = new SendQueue(this.pub);
  private closed = false;
  /** Requests handed to the handler and not yet answered. */
  private running = 0;
  /** Answers queued on the socket and not yet sent (or dropped). */
  private unsent = 0;
  /** The newest queued send; the queue is FIFO, so when it settles every earlier one has. */
  private lastSend: Promise<void> = Promise.resolve();

  /**
   * `socket`: extra options of the ROUTER, e.g. CURVE for the TCP management socket that a
   * cluster's members and CLIs on other machines reach (runtime's curveServerOptions).
   */
  constructor(private readonly handle: MgmtHandler, private readonly onError: (e: Error) => void, socket?: Record<string, unknown>) {
    this.sock = socket ? new zmq.Router({ linger: 0, ...ROUTER_SEND_OPTIONS, sendHighWaterMark: 100000, receiveHighWaterMark: 100000, ...socket } as never) : router();
    this.q = new SendQueue(this.sock);
    this.sock.maxMessageSize = TRANSPORT_MAX_BYTES;
  }

  /** Binds the request socket, and the event socket when `eventsEndpoint` is given. */
  async bind(endpoint: string, eventsEndpoint?: string): Promise<void> {
    await this.sock.bind(endpoint);
    if (eventsEndpoint !== undefined) await this.pub.bind(eventsEndpoint);
  }

  publish(ev: VmStateEvent): void {
    void this.pq.send([Buffer.from('vm'), encode(ev)]).catch(() => undefined);
  }

  /** Requests being handled now (for tests and diagnostics). */
  get inFlight(): number {
    return this.running;
  }

  /** Receives and answers requests until `close()`. Never rejects. */
  async serve(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        if (this.unsent >= MAX_UNSENT_ANSWERS) await this.lastSend;
        if (this.closed) return;
        frames = await this.sock.receive();
      } catch (e) {
        if (this.closed || this.sock.closed) return;
        this.report(new Error(`the management socket failed to receive: ${messageOf(e)}`));
        await new Promise((r) => setTimeout(r, RECEIVE_RETRY_MS));
        continue;
      }
      try {
        this.accept(frames);
      } catch (e) {
        // accept() answers every failure itself; reaching here is a bug, and still not fatal.
        this.report(e instanceof Error ? e : new Error(messageOf(e)));
      }
    }
  }

  /** Decodes one message (routing id + request frame) and answers it or starts its handler. */
  private accept(frames: Buffer[]): void {
    const [peer, ...body] = frames;
    if (body.length !== 1) {
      this.answer(peer, { id: 0, ok: false, error: { code: 'BadRequest', message: `a management request is one frame; this message had ${body.length}` } });
      return;
    }
    // Checks the size (MGMT_FRAME_MAX_BYTES) before parsing anything.
    const d = decodeMgmtRequest(body[0]);
    if (!d.ok) {
      this.answer(peer, { id: d.id, ok: false, error: d.error });
      return;
    }
    const req = d.request;
    if (this.running >= MGMT_MAX_IN_FLIGHT) {
      this.answer(peer, { id: req.id, ok: false, error: { code: 'Busy', message: `the host is already working on ${this.running} management requests; "${req.op}" was not started, try again` } });
      return;
    }
    this.running++;
    void this.run(peer, req)
      .catch((e: unknown) => this.report(e instanceof Error ? e : new Error(messageOf(e))))
      .finally(() => this.running--);
  }

  private async run(peer: Buffer, req: MgmtRequest): Promise<void> {
    let res: MgmtResponse;
    try {
      res = { id: req.id, ok: true, result: await this.handle(...([req.op, req.args] as MgmtCall)) };
    } catch (e) {
      res = { id: req.id, ok: false, error: this.failure(req, e) };
    }
    this.answer(peer, res, req);
  }

  /** A thrown value as an error answer: a MgmtFailure keeps its code; anything else is Internal and logged. */
  private failure(req: MgmtRequest, e: unknown): MgmtError {
    if (e instanceof MgmtFailure && typeof e.code === 'string') return { code: e.code, message: messageOf(e) };
    this.report(e instanceof Error ? e : new Error(`"${req.op}" threw ${messageOf(e)}`));
    return { code: 'Internal', message: `"${req.op}" failed inside the host: ${messageOf(e)}` };
  }

  /** Encodes and queues one answer. Never throws. */
  private answer(peer: Buffer, res: MgmtResponse, req?: MgmtRequest): void {
    let bytes: Buffer;
    try {
      bytes = encode(res);
    } catch (e) {
      // A result msgpack cannot carry (e.g. a bigint beyond 64 bits) is the handler's bug.
      this.report(new Error(`the answer to "${req?.op ?? 'a request'}" could not be encoded: ${messageOf(e)}`));
      bytes = encode({ id: res.id, ok: false, error: { code: 'Internal', message: `the answer to "${req?.op ?? 'a request'}" could not be encoded: ${messageOf(e)}` } } satisfies MgmtResponse);
    }
    this.unsent++;
    const sent = this.q.send([peer, bytes]).catch(() => undefined).finally(() => this.unsent--);
    this.lastSend = sent;
  }

  private report(e: Error): void {
    try {
      this.onError(e);
    } catch { /* a failing logger must not take the server down */ }
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.pq.close();
    this.sock.close();
    this.pub.close();
  }
}
