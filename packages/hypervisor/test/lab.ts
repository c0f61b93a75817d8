/**
 * Helpers for the hypervisor's unit tests: an in-process Hypervisor with a root session (`Lab`),
 * a HypervisorServer on an ipc socket in a temporary directory (`ServerLab`) and a raw DEALER peer
 * that sends any bytes (`Peer`). Each cleans up its shared memory, sockets and directory.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HvStatus, ROOT_PARTITION_ID, HvCall, PartitionProperty, decode, hvCallName, hvStatusName, type HvServerMsg } from '@hvlab/protocol';
import { dealer, type zmq } from '@hvlab/runtime';
import { unlinkRegion } from '@hvlab/shm';
import { Hypervisor, type HypercallOutcome, type SchedulerLink } from '../src/hypervisor.js';
import { HypervisorServer } from '../src/server.js';
import type { ToScheduler } from '../src/sched-thread.js';

export const MiB = 1024 * 1024;
export const ROOT_TOKEN = 'lab-root-token';

export function show(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x instanceof Uint8Array ? `<${x.length} bytes>` : x));
}

/** Removes every /dev/shm file of a host id. */
export function sweepShm(hostId: string): void {
  for (const f of readdirSync('/dev/shm')) if (f.startsWith(`hvlab-${hostId}-`)) unlinkRegion(f);
}

/** A scheduler link that records what the hypervisor posts (VPs get VP pages, nothing runs them). */
export function recordingScheduler(): SchedulerLink & { posted: ToScheduler[] } {
  const posted: ToScheduler[] = [];
  return { lps: 1, regionName: 'hvlab-lab-sched', posted, post: (m) => posted.push(m), ring: () => undefined };
}

export interface Child {
  id: number;
  token: string;
  sid: string;
}

/** One in-process hypervisor with a root session 'r1' and a log of every notification. */
export class Lab {
  // The run's pid in it: an interrupted run removes its regions (test/signal-sweep.ts).
  readonly hostId = `ut${process.pid}x${randomBytes(4).toString('hex')}`;
  readonly notes: Array<{ sid: string; msg: HvServerMsg }> = [];
  readonly hv: Hypervisor;
  private childCount = 0;

  constructor(o: { memoryMode?: 'shared' | 'private'; scheduler?: SchedulerLink; now?: () => number } = {}) {
    this.hv = new Hypervisor({
      hostId: this.hostId, rootToken: ROOT_TOKEN, memoryMode: o.memoryMode, scheduler: o.scheduler, now: o.now,
      notify: (sid, msg) => this.notes.push({ sid, msg }),
    });
    const w = this.hv.hello('r1', { partitionId: ROOT_PARTITION_ID, token: ROOT_TOKEN, role: 'root', vm: null, pid: process.pid });
    expect(w.k, show(w)).to.equal('welcome');
  }

  hc(sid: string, code: number, input: Record<string, unknown> = {}): HypercallOutcome {
    return this.hv.hypercall(sid, code, input);
  }

  status(sid: string, code: number, input: Record<string, unknown>, status: number): HypercallOutcome {
    const r = this.hc(sid, code, input);
    expect(hvStatusName(r.status), `${hvCallName(code)} ${show(input).slice(0, 200)} answered ${hvStatusName(r.status)} ${show(r.output)}`).to.equal(hvStatusName(status));
    return r;
  }

  ok(sid: string, code: number, input: Record<string, unknown> = {}): unknown {
    return this.status(sid, code, input, HvStatus.SUCCESS).output;
  }

  /** Creates and initializes a child with `vps` VPs, optionally grants privileges, and opens a session for it. */
  child(o: { privileges?: bigint; memoryBytes?: number; vps?: number } = {}): Child {
    const { partitionId: id, token } = this.ok('r1', HvCall.CreatePartition, { memoryBytes: o.memoryBytes ?? 2 * MiB, name: 'lab' }) as { partitionId: number; token: string };
    this.ok('r1', HvCall.InitializePartition, { partitionId: id });
    for (let i = 0; i < (o.vps ?? 0); i++) this.ok('r1', HvCall.CreateVp, { partitionId: id, vpIndex: i });
    if (o.privileges !== undefined) this.ok('r1', HvCall.SetPartitionProperty, { partitionId: id, property: PartitionProperty.PrivilegeFlags, value: o.privileges });
    const sid = `c${++this.childCount}`;
    const w = this.hv.hello(sid, { partitionId: id, token, role: 'partition', vm: `vm${this.childCount}`, pid: process.pid });
    expect(w.k, show(w)).to.equal('welcome');
    return { id, token, sid };
  }

  close(): void {
    this.hv.shutdown('test');
    sweepShm(this.hostId);
  }
}

/** A DEALER that sends raw frames and reads answers one by one. */
export class Peer {
  readonly sock: zmq.Dealer = dealer();
  private readonly inbox: Buffer[] = [];
  private waiter: (() => void) | null = null;
  private closed = false;

  constructor(endpoint: string) {
    this.sock.connect(endpoint);
    void (async () => {
      try {
        for await (const [frame] of this.sock) {
          this.inbox.push(frame);
          this.waiter?.();
        }
      } catch {
        /* closed */
      }
    })();
  }

  async send(frame: Buffer | Buffer[]): Promise<void> {
    await this.sock.send(frame as never);
  }

  /** The next frame, decoded; fails after `timeoutMs` (a liveness bound: a dead server never answers). */
  async next(timeoutMs = 5000): Promise<HvServerMsg> {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) throw new Error(`no answer within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiter = null;
    }
    return decode<HvServerMsg>(this.inbox.shift()!);
  }

  /** Answers only (skips notifications such as 'suspend' and 'bye'). */
  async answer(timeoutMs = 5000): Promise<HvServerMsg> {
    for (;;) {
      const m = await this.next(timeoutMs);
      if (['hr', 'ctlr', 'bad', 'reject', 'welcome'].includes(m.k)) return m;
    }
  }

  close(): void {
    this.closed = true;
    this.sock.close();
  }
}

/** A HypervisorServer bound in a temporary directory, serving until `close`. */
export class ServerLab {
  readonly hostId = `us${process.pid}x${randomBytes(4).toString('hex')}`;
  readonly dir = mkdtempSync(join(tmpdir(), 'hvlab-hvtest-'));
  readonly endpoint = `ipc://${join(this.dir, 'hv')}`;
  readonly server: HypervisorServer;
  /** What serve() ended with, if it ended (it must not while the test runs). */
  serveEnded: { error: unknown } | null = null;
  private readonly peers: Peer[] = [];

  constructor(o: { memoryMode?: 'shared' | 'private'; lps?: number; now?: () => number } = {}) {
    this.server = new HypervisorServer({ hostId: this.hostId, rootToken: ROOT_TOKEN, memoryMode: o.memoryMode, lps: o.lps, now: o.now });
  }

  async start(): Promise<this> {
    await this.server.bind(this.endpoint);
    this.server.serve().then(
      () => (this.serveEnded = { error: null }),
      (e: unknown) => (this.serveEnded = { error: e }),
    );
    return this;
  }

  peer(): Peer {
    const p = new Peer(this.endpoint);
    this.peers.push(p);
    return p;
  }

  async close(): Promise<void> {
    for (const p of this.peers) p.close();
    await this.server.close('test over');
    sweepShm(this.hostId);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
