/**
 * The management API server: a ZeroMQ ROUTER answering versioned msgpack requests, and a PUB
 * socket publishing VM state changes (topic "vm"). Requests run concurrently; each gets exactly
 * one answer, an error carrying a code and a sentence when it fails.
 */
import { decode, encode, MGMT_API_VERSION, type MgmtRequest, type MgmtResponse, type VmStateEvent } from '@hvlab/protocol';
import { router, SendQueue, zmq } from '@hvlab/runtime';
import { MgmtFailure } from './config.js';

export type MgmtHandler = (op: string, args: Record<string, unknown>) => Promise<unknown>;

export class MgmtServer {
  private readonly sock = router();
  private readonly pub = new zmq.Publisher({ linger: 0 });
  private readonly q = new SendQueue(this.sock);
  private readonly pq = new SendQueue(this.pub);
  private closed = false;

  constructor(private readonly handle: MgmtHandler, private readonly onError: (e: Error) => void) {}

  async bind(endpoint: string, eventsEndpoint: string): Promise<void> {
    await this.sock.bind(endpoint);
    await this.pub.bind(eventsEndpoint);
  }

  publish(ev: VmStateEvent): void {
    void this.pq.send([Buffer.from('vm'), encode(ev)]).catch(() => undefined);
  }

  async serve(): Promise<void> {
    try {
      for await (const [id, body] of this.sock) void this.one(id, body);
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  private async one(id: Buffer, body: Buffer): Promise<void> {
    let req: MgmtRequest;
    try {
      req = decode<MgmtRequest>(body);
    } catch {
      return;
    }
    let res: MgmtResponse;
    if (req.v !== MGMT_API_VERSION) {
      res = { id: req.id, ok: false, error: { code: 'VersionMismatch', message: `management API version ${req.v} is not supported; this host speaks ${MGMT_API_VERSION}` } };
    } else {
      try {
        res = { id: req.id, ok: true, result: await this.handle(req.op, req.args ?? {}) };
      } catch (e) {
        if (e instanceof MgmtFailure) res = { id: req.id, ok: false, error: { code: e.code, message: e.message } };
        else {
          this.onError(e as Error);
          res = { id: req.id, ok: false, error: { code: 'Internal', message: (e as Error).message } };
        }
      }
    }
    await this.q.send([id, encode(res)]).catch(() => undefined);
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.pq.close();
    this.sock.close();
    this.pub.close();
  }
}
