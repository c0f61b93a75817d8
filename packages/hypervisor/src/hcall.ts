/**
 * Hypercall pages on the hypervisor's main thread: the host's doorbell region, a two-page region
 * per session (hypercall page and event queue), the hypercall thread (hc-thread.ts) that serves
 * the pages, and the calls it forwards here. A forwarded call is decoded once by decodeHcCall,
 * served by the same Hypervisor.hypercall as a call over the socket, and completed on the page.
 *
 * Regions are named `hvlab-<host>-hc-…` (swept with the host's other regions) and unlinked when
 * the session closes and when the hypervisor exits.
 */
import { randomBytes } from 'node:crypto';
import { Worker, MessageChannel } from 'node:worker_threads';
import {
  HC_REGION_BYTES, HC_BELL_BYTES, HC_INPUT_OFFSET, HC_INPUT_MAX, HC_OUTPUT_OFFSET, HC_OUTPUT_MAX, HcWord, HvCall, HvStatus,
  decodeHcCall, encodeHcOutput,
} from '@hvlab/protocol';
import { createRegion, unlinkRegion, futexWake } from '@hvlab/shm';
import type { Hypervisor } from './hypervisor.js';
import { HcBellWord, completeHcCall, type FromHcThread, type ToHcThread, type HcThreadData } from './hc-thread.js';

const HC_THREAD_ENTRY = import.meta.url.endsWith('.ts') ? new URL('./hc-thread.mjs', import.meta.url) : new URL('./hc-thread.js', import.meta.url);

interface PageSession {
  name: string;
  region: SharedArrayBuffer;
  i32: Int32Array;
  u8: Uint8Array;
}

export class HcService {
  readonly bellName: string;
  private readonly bell: SharedArrayBuffer;
  private readonly bellI32: Int32Array;
  private readonly worker: Worker;
  private readonly port: import('node:worker_threads').MessagePort;
  private readonly pages = new Map<string, PageSession>();
  private hv: Hypervisor | null = null;
  private closed = false;
  private readonly stopOnExit: () => void;

  constructor(private readonly hostId: string, sched: SharedArrayBuffer | null, private readonly logError: (o: object, m: string) => void) {
    this.bellName = `hvlab-${hostId}-hcbell`;
    unlinkRegion(this.bellName);
    this.bell = createRegion(this.bellName, HC_BELL_BYTES);
    this.bellI32 = new Int32Array(this.bell);
    const { port1, port2 } = new MessageChannel();
    const data: HcThreadData = { bell: this.bell, sched, port: port2 };
    this.worker = new Worker(HC_THREAD_ENTRY, { workerData: { hc: data }, transferList: [port2], name: 'hypercalls' });
    this.worker.on('error', (e) => this.logError({ err: e }, 'the hypercall thread failed'));
    this.port = port1;
    port1.on('message', (m: FromHcThread) => this.onForward(m));
    port1.unref();
    // process.exit joins worker threads, and this one sleeps in a futex without a timeout.
    this.stopOnExit = () => this.post({ t: 'stop' });
    process.once('exit', this.stopOnExit);
  }

  attach(hv: Hypervisor): void {
    this.hv = hv;
  }

  private post(m: ToHcThread): void {
    this.port.postMessage(m);
    Atomics.add(this.bellI32, HcBellWord.bell, 1);
    futexWake(this.bell, HcBellWord.bell);
  }

  /** Every route handed out so far is stale. */
  routesChanged(): void {
    Atomics.add(this.bellI32, HcBellWord.epoch, 1);
  }

  /** Makes session `sid`'s page; returns its region name, or null when it could not be made. */
  openSession(sid: string): string | null {
    if (this.closed || this.pages.has(sid)) return this.pages.get(sid)?.name ?? null;
    const name = `hvlab-${this.hostId}-hc-${randomBytes(8).toString('hex')}`;
    let region: SharedArrayBuffer;
    try {
      region = createRegion(name, HC_REGION_BYTES);
    } catch (e) {
      this.logError({ err: e }, 'a hypercall page could not be made; the session uses the socket');
      return null;
    }
    this.pages.set(sid, { name, region, i32: new Int32Array(region), u8: new Uint8Array(region) });
    this.post({ t: 'session', sid, region });
    return name;
  }

  hasPage(sid: string): boolean {
    return this.pages.has(sid);
  }

  closeSession(sid: string): void {
    const p = this.pages.get(sid);
    if (!p) return;
    this.pages.delete(sid);
    this.post({ t: 'sessionGone', sid });
    unlinkRegion(p.name);
  }

  /** An event for a root port owned by session `sid` (which has a page). */
  rootEvent(sid: string, portId: number, sender: number, flag: number): void {
    this.post({ t: 'rootEvent', sid, portId, sender, flag });
  }

  get stats(): { fastCalls: number; forwarded: number } {
    return { fastCalls: Atomics.load(this.bellI32, HcBellWord.fastCalls), forwarded: Atomics.load(this.bellI32, HcBellWord.forwarded) };
  }

  /** A call the thread did not serve itself: serve it with the hypervisor's tables. Never throws. */
  private onForward(m: FromHcThread): void {
    const p = this.pages.get(m.sid);
    const hv = this.hv;
    if (!p || !hv || m.t !== 'call') return;
    // The caller waits for exactly this call: a later request number means it gave up on it.
    if (Atomics.load(p.i32, HcWord.req) !== m.seq) return;
    let status: number = HvStatus.OPERATION_DENIED;
    let reps = 0;
    let outLen = 0;
    try {
      const code = Atomics.load(p.i32, HcWord.code);
      const inLen = Atomics.load(p.i32, HcWord.inLen);
      // One copy out of the shared page: the session cannot change the input while it is checked.
      const input = p.u8.slice(HC_INPUT_OFFSET, HC_INPUT_OFFSET + Math.max(0, Math.min(HC_INPUT_MAX, inLen | 0)));
      const d = decodeHcCall(code, inLen, input);
      if (!d.ok) {
        status = d.status;
      } else {
        const r = hv.hypercall(m.sid, d.call.code, d.call.input as unknown as Record<string, unknown>);
        status = r.status;
        reps = r.reps;
        if (r.status === HvStatus.SUCCESS) {
          const n = encodeHcOutput(d.call, r.output, p.u8.subarray(HC_OUTPUT_OFFSET, HC_OUTPUT_OFFSET + HC_OUTPUT_MAX));
          if (n === null) status = HvStatus.INSUFFICIENT_BUFFERS;
          else outLen = n;
          if (d.call.code === HvCall.SignalEvent) this.installRoute(m.sid, d.call.input.connectionId);
        }
      }
    } catch (e) {
      this.logError({ err: e }, 'serving a hypercall page failed');
      status = HvStatus.OPERATION_DENIED;
    }
    completeHcCall(p.region, p.i32, m.seq, status, reps, outLen);
  }

  private installRoute(sid: string, connectionId: number): void {
    const route = this.hv?.signalRoute(sid, connectionId);
    if (!route) return;
    const epoch = Atomics.load(this.bellI32, HcBellWord.epoch);
    // A root route's owner must have a page for the thread to deliver to it.
    if (route.kind === 'root' && !this.pages.has(route.ownerSession)) return;
    this.post({ t: 'route', sid, connectionId, epoch, route });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    process.off('exit', this.stopOnExit);
    this.post({ t: 'stop' });
    await Promise.race([new Promise((r) => this.worker.once('exit', r)), new Promise((r) => setTimeout(r, 500))]);
    await this.worker.terminate();
    for (const p of this.pages.values()) unlinkRegion(p.name);
    this.pages.clear();
    unlinkRegion(this.bellName);
  }
}
