/**
 * The hypervisor behind a ZeroMQ ROUTER at ipc://<sockdir>/hv. Each DEALER connection is a
 * session; its first message must be hello. Hypercalls are answered in arrival order; SynIC
 * notifications are pushed to the sessions of the target partition.
 */
import { decode, encode, type HvClientMsg, type HvServerMsg } from '@hvlab/protocol';
import { router, SendQueue, type zmq } from '@hvlab/runtime';
import { Hypervisor, type HypervisorOptions } from './hypervisor.js';

export class HypervisorServer {
  readonly hv: Hypervisor;
  private readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private stopping = false;
  onShutdownRequest: () => void = () => {};

  constructor(opts: Omit<HypervisorOptions, 'notify'>) {
    this.sock = router();
    this.q = new SendQueue(this.sock);
    this.hv = new Hypervisor({ ...opts, notify: (sid, msg) => this.push(sid, msg) });
  }

  async bind(endpoint: string): Promise<void> {
    await this.sock.bind(endpoint);
  }

  private push(sessionId: string, msg: HvServerMsg): void {
    void this.q.send([Buffer.from(sessionId, 'hex'), encode(msg)]).catch(() => undefined);
  }

  async serve(): Promise<void> {
    try {
      for await (const [idFrame, body] of this.sock) {
        const sid = idFrame.toString('hex');
        let m: HvClientMsg;
        try {
          m = decode<HvClientMsg>(body);
        } catch {
          continue;
        }
        if (m === null || typeof m !== 'object') continue;
        if (m.k === 'hello') {
          this.push(sid, this.hv.hello(sid, m));
        } else if (m.k === 'hc') {
          const r = this.hv.hypercall(sid, Number(m.code), m.input, { repCount: m.repCount, repStart: m.repStart });
          this.push(sid, { k: 'hr', id: m.id, status: r.status, reps: r.reps, output: r.output });
        } else if (m.k === 'ctl') {
          const s = this.hv.session(sid);
          if (!s || s.partitionId !== 1) {
            this.push(sid, { k: 'ctlr', id: m.id, result: { error: 'only the root may control the hypervisor' } });
          } else if (m.op === 'stats') {
            this.push(sid, { k: 'ctlr', id: m.id, result: { stats: this.hv.stats, partitions: this.hv.listPartitions(), memoryMode: this.hv.memoryMode } });
          } else if (m.op === 'shutdown') {
            this.push(sid, { k: 'ctlr', id: m.id, result: { ok: true } });
            this.onShutdownRequest();
          }
        }
      }
    } catch (e) {
      if (!this.stopping) throw e;
    }
  }

  async close(reason: string): Promise<void> {
    if (this.stopping) return;
    this.hv.shutdown(reason);
    await new Promise((r) => setTimeout(r, 20));
    this.stopping = true;
    this.q.close();
    this.sock.close();
  }
}
