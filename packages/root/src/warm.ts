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
import { entries, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime';

export const MAX_WARM = 64;

export interface WarmPoolOptions {
  size: number;
  /** The host's stderr log (a file descriptor is opened per worker). */
  stderrLog: string;
  log: { warn: (o: object, m?: string) => void; info: (o: object, m?: string) => void };
}

export class WarmPool {
  private readonly ready: ChildProcess[] = [];
  private closed = false;
  /** Workers that died while waiting, in a row: past a few the pool stops refilling (something is broken). */
  private failures = 0;
  readonly stats = { started: 0, claimed: 0, died: 0 };

  constructor(private readonly o: WarmPoolOptions) {
    this.fill();
  }

  get size(): number {
    return this.ready.length;
  }

  get pids(): number[] {
    return this.ready.map((c) => c.pid!).filter((p) => p > 0);
  }

  /** A warm worker to give a VM to (taken out of the pool), or null when none is ready. */
  take(): ChildProcess | null {
    while (this.ready.length > 0) {
      const c = this.ready.shift()!;
      if (c.exitCode !== null || c.signalCode !== null || !c.stdin?.writable) continue;
      c.removeAllListeners('exit');
      this.stats.claimed++;
      this.failures = 0;
      setImmediate(() => this.fill());
      return c;
    }
    setImmediate(() => this.fill());
    return null;
  }

  private fill(): void {
    while (!this.closed && this.failures < 5 && this.ready.length < this.o.size) {
      let c: ChildProcess;
      try {
        const errFd = openSync(this.o.stderrLog, 'a');
        c = spawn(process.execPath, vmProcessArgs(entries.vmwp), { stdio: ['pipe', 'ignore', errFd], env: vmProcessEnv(process.env, { HVLAB_VMWP_WARM: '1' }) });
        closeSync(errFd);
      } catch (e) {
        this.failures = 5;
        this.o.log.warn({ err: (e as Error).message }, 'could not start a warm VM worker; the pool stays empty');
        return;
      }
      c.stdin!.on('error', () => undefined);
      c.on('error', () => undefined);
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
    for (const c of this.ready.splice(0)) {
      c.removeAllListeners('exit');
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
  }
}
