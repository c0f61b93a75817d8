/**
 * Spare VM workers: VMWP processes started ahead of need that have loaded their code (and started
 * their partition process, which has loaded its own) and wait for their start-up input. A cold VM
 * start, a restore, or the destination of a live migration takes one instead of spawning a process:
 * it then pays only its own work (the partition, the devices, the guest's boot), not two Node
 * start-ups and module loads. This is Chrome's spare renderer, not the warm pool (warm.ts): a spare
 * has no partition and no shape, so it serves a VM of any size, and costs only two idle processes.
 *
 * A spare's stdin is a pipe from this root: its one line is the ordinary start-up input, written
 * when a start takes it. When the root dies the spare reads end-of-file and leaves (its partition
 * process follows when its pipe closes); it has made nothing that would need cleaning up.
 * `hvlab up --spare N` sets how many (default 1; 0: every start spawns its worker).
 */
import type { ChildProcess } from 'node:child_process';
import { spawnVmwp } from './worker-spawn.js';
import { EAGER_COMPILE_ENV } from '@hvlab/runtime';

export const MAX_SPARE = 8;
/**
 * How long after a take the replacement starts (ms), restarted by every take: loading a worker
 * and its partition process costs ~0.4 s of CPU, which the start that took the spare needs now.
 */
export const SPARE_REFILL_DELAY_MS = 300;

export interface SpareWorkersOptions {
  size: number;
  /** The host's stderr log (a file descriptor is opened per spare). */
  stderrLog: string;
  /** The hypervisor's socket, which a spare and its partition process connect to ahead of need. */
  hvEndpoint: string;
  log: { warn: (o: object, m?: string) => void };
  /** Spawns a worker (tests replace it); by default the VMWP entry with the host's environment. */
  spawnWorker?: () => ChildProcess;
}

export class SpareWorkers {
  private readonly waiting: ChildProcess[] = [];
  private closed = false;
  private refill: NodeJS.Timeout | null = null;
  /** Work under way that a replacement's loading would slow (a start, an incoming migration's blackout). */
  private busy = 0;
  /** Spares that died while waiting, in a row: past a few no more are started (something is broken). */
  private failures = 0;
  readonly stats = { started: 0, taken: 0, died: 0 };

  constructor(private readonly o: SpareWorkersOptions) {
    this.fill();
  }

  /** The pids of the waiting spares. */
  get pids(): number[] {
    return this.waiting.map((c) => c.pid ?? 0).filter((p) => p > 0);
  }

  /**
   * A waiting spare (the caller's from now on: it writes the start-up input and watches its exit),
   * or null when none is alive.
   */
  take(): ChildProcess | null {
    let got: ChildProcess | null = null;
    while (!got && this.waiting.length > 0) {
      const c = this.waiting.shift()!;
      c.removeAllListeners('exit');
      if (c.exitCode === null && c.signalCode === null && c.stdin?.writable) got = c;
      else this.kill(c);
    }
    if (got) {
      this.stats.taken++;
      this.failures = 0;
    }
    this.fillLater();
    return got;
  }

  /**
   * Holds the refill while `work` runs (and SPARE_REFILL_DELAY_MS after): a start, or an incoming
   * migration up to its commit, whose blackout the ~0.4 s of CPU a replacement's load takes would
   * lengthen on this 2-core machine.
   */
  async during<T>(work: () => Promise<T>): Promise<T> {
    const release = this.hold();
    try {
      return await work();
    } finally {
      release();
    }
  }

  /** `during` for work that spans calls: the refill waits until the function returned is called (once counts). */
  hold(): () => void {
    this.busy++;
    if (this.refill) clearTimeout(this.refill);
    this.refill = null;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.busy--;
      this.fillLater();
    };
  }

  /** Refills once takes have paused for SPARE_REFILL_DELAY_MS and nothing holds the refill. */
  private fillLater(): void {
    if (this.closed || this.busy > 0) return;
    if (this.refill) clearTimeout(this.refill);
    this.refill = setTimeout(() => {
      this.refill = null;
      this.fill();
    }, SPARE_REFILL_DELAY_MS);
    this.refill.unref();
  }

  private fill(): void {
    while (!this.closed && this.failures < 5 && this.waiting.length < this.o.size) {
      let c: ChildProcess;
      try {
        c = (this.o.spawnWorker ?? (() => spawnVmwp({ stderrLog: this.o.stderrLog, hvEndpoint: this.o.hvEndpoint, stdout: 'ignore', env: { HVLAB_VMWP_SPARE: '1', [EAGER_COMPILE_ENV]: '1' } })))();
      } catch (e) {
        this.failures = 5;
        this.o.log.warn({ err: (e as Error).message }, 'could not start a spare VM worker; every start spawns its own');
        return;
      }
      c.stdin?.on('error', () => undefined);
      c.on('error', () => undefined);
      this.stats.started++;
      c.once('exit', (code, signal) => {
        const i = this.waiting.indexOf(c);
        if (i < 0) return;
        this.waiting.splice(i, 1);
        this.stats.died++;
        this.failures++;
        this.o.log.warn({ pid: c.pid, code, signal }, 'a spare VM worker died while waiting');
        if (!this.closed) setTimeout(() => this.fill(), 200 * this.failures).unref();
      });
      this.waiting.push(c);
    }
  }

  private kill(c: ChildProcess): void {
    try {
      c.kill('SIGKILL');
    } catch { /* gone */ }
  }

  /** Ends every waiting spare (their partition processes follow when their pipes close). */
  close(): void {
    this.closed = true;
    if (this.refill) clearTimeout(this.refill);
    this.refill = null;
    for (const c of this.waiting.splice(0)) this.kill(c);
  }
}
