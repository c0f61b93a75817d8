/** A management API client: one DEALER, requests matched to answers by id, with a timeout. */
import { decode, encode, MGMT_API_VERSION, type MgmtError, type MgmtOp, type MgmtResponse } from '@hvlab/protocol';
import { dealer, SendQueue, type zmq } from '@hvlab/runtime';

export class MgmtCallError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export class MgmtClient {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private nextId = 1;
  private readonly pending = new Map<number, (r: MgmtResponse) => void>();
  private closed = false;

  constructor(endpoint: string) {
    this.sock = dealer();
    this.sock.connect(endpoint);
    this.q = new SendQueue(this.sock);
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for await (const [body] of this.sock) {
        const r = decode<MgmtResponse>(body);
        this.pending.get(r.id)?.(r);
        this.pending.delete(r.id);
      }
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  request<T = unknown>(op: MgmtOp, args: Record<string, unknown> = {}, timeoutMs = 60000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new MgmtCallError('Timeout', `the host did not answer "${op}" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, (r) => {
        clearTimeout(t);
        if (r.ok) resolve(r.result as T);
        else reject(new MgmtCallError((r.error as MgmtError).code, (r.error as MgmtError).message));
      });
      this.q.send(encode({ v: MGMT_API_VERSION, id, op, args })).catch(reject);
    });
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.sock.close();
  }
}
