/**
 * The warm pool: VMWP processes started ahead of need, each with its partition process (which a
 * VMWP starts the moment it starts) and that partition's first VP thread, all with their code
 * loaded, waiting for a start-up line on stdin. `vm start` claims one instead of starting
 * processes, as Firecracker restores from a snapshot instead of booting; the pool refills behind
 * it. `hvlab up --warm N` keeps N (0, the default, keeps none).
 *
 * A warm worker holds nothing of a VM and no secret: it is given its VM, ticket and secret only
 * when claimed. Its stdin is a pipe from this root, so when the root dies it reads end-of-file
 * and leaves, and its partition process with it; the restarted root starts a new pool.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { entries, HV_ENDPOINT_ENV, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime';

export const MAX_WARM = 64;
/**
 * How long the pool waits after a claim before it starts a replacement (ms), restarted by every
 * claim. A replacement loads two processes' code (~0.2 s of CPU); started at once, it ran beside
 * the very start that claimed its predecessor and took a share of this 2-core machine's CPU from it.
 */
export const REFILL_DELAY_MS = 300;

export interface WarmPoolOptions {
  size: number;
  /** The host's stderr log (a file descriptor is opened per worker). */
  stderrLog: string;
  /** The hypervisor's socket, which a waiting worker and its partition process connect to ahead of need. */
  hvEndpoint: string;
  log: { warn: (o: object, m?: string) => void; info: (o: object, m?: string) => void };
}

/**
 * Reads a warm worker's stdout, on which it writes one line, "ready", once loaded. `seen` is what
 * was kept of the earlier bytes (at most a line's worth): anything else a worker writes, of any
 * length, is ignored and keeps nothing more.
 */
export function readyLine(seen: string, chunk: Uint8Array): { seen: string; ready: boolean } {
  const all = seen + Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('latin1');
  return { seen: all.slice(-16), ready: all.includes('ready\n') };
}

export class WarmPool {
  private readonly ready: ChildProcess[] = [];
  private closed = false;
  private refill: NodeJS.Timeout | null = null;
  /** Workers that died while waiting, in a row: past a few the pool stops refilling (something is broken). */
  private failures = 0;
  readonly stats = { started: 0, claimed: 0, died: 0 };

  constructor(private readonly o: WarmPoolOptions) {
    this.fill();
  }

  get size(): number {
    return this.ready.length;
  }

  /** The waiting workers, each with whether it has said it is loaded. */
  get workers(): Array<{ pid: number; loaded: boolean }> {
    return this.ready.filter((c) => (c.pid ?? 0) > 0).map((c) => ({ pid: c.pid!, loaded: this.loaded.has(c) }));
  }

  /** Workers that have said "ready" (their code and their partition process's are loaded). */
  private readonly loaded = new WeakSet<ChildProcess>();

  /**
   * A warm worker to give a VM to (taken out of the pool), or null when none is waiting. A loaded
   * one first; one still loading is still ahead of a worker started now.
   */
  take(): ChildProcess | null {
    const i = this.ready.findIndex((c) => this.loaded.has(c));
    if (i > 0) this.ready.unshift(...this.ready.splice(i, 1));
    while (this.ready.length > 0) {
      const c = this.ready.shift()!;
      if (c.exitCode !== null || c.signalCode !== null || !c.stdin?.writable) continue;
      c.removeAllListeners('exit');
      // It writes nothing more there; the root keeps no pipe it would depend on.
      c.stdout?.destroy();
      this.stats.claimed++;
      this.failures = 0;
      this.fillLater();
      return c;
    }
    this.fillLater();
    return null;
  }

  /** Refills once claims have paused for REFILL_DELAY_MS. */
  private fillLater(): void {
    if (this.refill) clearTimeout(this.refill);
    this.refill = setTimeout(() => {
      this.refill = null;
      this.fill();
    }, REFILL_DELAY_MS);
    this.refill.unref();
  }

  private fill(): void {
    while (!this.closed && this.failures < 5 && this.ready.length < this.o.size) {
      let c: ChildProcess;
      try {
        const errFd = openSync(this.o.stderrLog, 'a');
        c = spawn(process.execPath, vmProcessArgs(entries.vmwp), { stdio: ['pipe', 'pipe', errFd], env: vmProcessEnv(process.env, { HVLAB_VMWP_WARM: '1', [HV_ENDPOINT_ENV]: this.o.hvEndpoint }) });
        closeSync(errFd);
      } catch (e) {
        this.failures = 5;
        this.o.log.warn({ err: (e as Error).message }, 'could not start a warm VM worker; the pool stays empty');
        return;
      }
      c.stdin!.on('error', () => undefined);
      c.on('error', () => undefined);
      // Its one line on stdout: "ready", once it and its partition process have loaded their code.
      const out = c.stdout!;
      out.on('error', () => undefined);
      let said = '';
      out.on('data', (b: Buffer) => {
        const r = readyLine(said, b);
        said = r.seen;
        if (r.ready) {
          this.loaded.add(c);
          out.destroy();
        }
      });
      this.stats.started++;
      c.once('exit', (code, signal) => {
        const i = this.ready.indexOf(c);
        if (i < 0) return;
        this.ready.splice(i, 1);
        this.stats.died++;
        this.failures++;
        this.o.log.warn({ pid: c.pid, code, signal }, 'a warm VM worker died while waiting');
        setTimeout(() => this.fill(), 200 * this.failures).unref();
      });
      this.ready.push(c);
    }
  }

  /** Ends every waiting worker (their partition processes follow when their pipes close). */
  close(): void {
    this.closed = true;
    if (this.refill) clearTimeout(this.refill);
    this.refill = null;
    for (const c of this.ready.splice(0)) {
      c.removeAllListeners('exit');
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
  }
}
