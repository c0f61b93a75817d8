/**
 * The hypervisor behind a ZeroMQ ROUTER at ipc://<sockdir>/hv. Each DEALER connection is a
 * session; its first message must be hello. Hypercalls are answered in arrival order; SynIC
 * notifications are pushed to the sessions of the target partition.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import { decode, encode, SchedRegion, SCHED_REGION_BYTES, type HvClientMsg, type HvServerMsg } from '@hvlab/protocol';
import { router, SendQueue, type zmq } from '@hvlab/runtime';
import { createRegion, unlinkRegion, futexWake, shmAvailable } from '@hvlab/shm';
import { Hypervisor, type HypervisorOptions, type SchedulerLink } from './hypervisor.js';
import type { FromScheduler, SchedulerThreadData, ToScheduler } from './sched-thread.js';

export class HypervisorServer {
  readonly hv: Hypervisor;
  private readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private stopping = false;
  onShutdownRequest: () => void = () => {};

  private sched: { worker: Worker; region: string; link: SchedulerLink } | null = null;

  constructor(opts: Omit<HypervisorOptions, 'notify' | 'scheduler'> & { lps?: number }) {
    this.sock = router();
    this.q = new SendQueue(this.sock);
    let scheduler: SchedulerLink | undefined;
    if (opts.lps && (opts.memoryMode ?? (shmAvailable() ? 'shared' : 'private')) === 'shared') scheduler = this.startScheduler(opts.hostId, opts.lps);
    this.hv = new Hypervisor({ ...opts, scheduler, notify: (sid, msg) => this.push(sid, msg) });
  }

  /** The scheduler thread: it dispatches VPs over `lps` logical processors (see sched-thread.ts). */
  private startScheduler(hostId: string, lps: number): SchedulerLink {
    const region = `hvlab-${hostId}-sched`;
    unlinkRegion(region);
    const doorbell = createRegion(region, SCHED_REGION_BYTES);
    const { port1, port2 } = new MessageChannel();
    const data: SchedulerThreadData = { lps, doorbell, port: port2 };
    const worker = new Worker(new URL('./sched-thread.mjs', import.meta.url), { workerData: { scheduler: data }, transferList: [port2], name: 'scheduler' });
    worker.on('error', (e) => {
      throw e;
    });
    port1.on('message', (m: FromScheduler) => this.hv.fromScheduler(m));
    port1.unref();
    const bell = new Int32Array(doorbell);
    const link: SchedulerLink = {
      lps,
      regionName: region,
      post: (m: ToScheduler) => port1.postMessage(m),
      ring: () => {
        Atomics.add(bell, SchedRegion.doorbell >> 2, 1);
        futexWake(doorbell, SchedRegion.doorbell >> 2);
      },
    };
    this.sched = { worker, region, link };
    // Sample VP run time continuously so a CPU % is ready at the first question.
    setInterval(() => this.hv.sampleCpu(), 250).unref();
    return link;
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
            this.push(sid, { k: 'ctlr', id: m.id, result: { stats: this.hv.stats, partitions: this.hv.listPartitions(), memoryMode: this.hv.memoryMode, lps: this.hv.lps } });
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
    if (this.sched) {
      const { worker, region, link } = this.sched;
      this.sched = null;
      // Ask the thread to stop, ring, and give it a moment before terminating it.
      link.post({ t: 'stop' });
      link.ring();
      await Promise.race([new Promise((r) => worker.once('exit', r)), new Promise((r) => setTimeout(r, 500))]);
      await worker.terminate();
      unlinkRegion(region);
    }
  }
}
