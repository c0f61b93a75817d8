/**
 * Reaching a home's nemesis: `NemesisClient.connect(home)` finds it from `faults/nemesis.json`
 * (pid and start checked) or starts it (one at a time, under `faults/nemesis.lock`), then speaks
 * the nemesis's wire (wire.ts) through runtime's RpcClient. `stopNemesis(home)` ends every fault
 * and the process; if the nemesis is dead but left faults in active.json, it undoes them here.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { entries, nodeArgsFor, pidAlive, RpcClient, RpcFailure } from '@hvlab/runtime';
import { activeFile, faultsDir, Nemesis } from './nemesis.js';
import type { FaultRecord, FaultRequest } from './types.js';

export function nemesisFile(home: string): string {
  return join(faultsDir(home), 'nemesis.json');
}

/** The nemesis's socket: in the home's faults directory, or under /tmp when that path is too long for a Unix socket. */
export function nemesisEndpoint(home: string): string {
  const p = join(faultsDir(home), 'nemesis.sock');
  if (p.length <= 100) return `ipc://${p}`;
  return `ipc:///tmp/hvlab-nemesis-${createHash('sha1').update(home).digest('hex').slice(0, 16)}.sock`;
}

/** The running nemesis of `home`: its pid, or null. */
export function nemesisPid(home: string): number | null {
  try {
    const o = JSON.parse(readFileSync(nemesisFile(home), 'utf8')) as { pid?: unknown };
    if (typeof o.pid !== 'number' || !Number.isInteger(o.pid) || o.pid < 2 || !pidAlive(o.pid)) return null;
    const cmd = readFileSync(`/proc/${o.pid}/cmdline`, 'latin1');
    return cmd.startsWith('hvlab-nemesis ') ? o.pid : null;
  } catch {
    return null;
  }
}

/** Pids of every nemesis process of `home` (by title), for leak checks. */
export function nemesisPids(home: string): number[] {
  const out: number[] = [];
  const want = `hvlab-nemesis ${home}`;
  for (const d of listDir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'latin1').replace(/\0+$/, '').replace(/\0/g, ' ');
      if (cmd === want || cmd.startsWith(`${want} `)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function listDir(d: string): string[] {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
}

/** Starts the nemesis of `home` unless one runs; resolves with its pid. */
export async function startNemesis(home: string): Promise<number> {
  const running = nemesisPid(home);
  if (running) return running;
  mkdirSync(faultsDir(home), { recursive: true, mode: 0o700 });
  const lock = join(faultsDir(home), 'nemesis.lock');
  const until = Date.now() + 15_000;
  for (;;) {
    try {
      const fd = openSync(lock, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch {
      // Someone else is starting it: wait for it, or take over a lock whose holder died.
      const pid = nemesisPid(home);
      if (pid) return pid;
      let holder = 0;
      try {
        holder = Number(readFileSync(lock, 'utf8'));
      } catch { /* gone meanwhile */ }
      if (!holder || !pidAlive(holder)) rmSync(lock, { force: true });
      if (Date.now() > until) throw new Error(`the nemesis of ${home} did not start within 15 s (lock ${lock})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    const again = nemesisPid(home);
    if (again) return again;
    const child = spawn(process.execPath, [...nodeArgsFor(entries.nemesis), home], {
      detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HVLAB_NEMESIS_HOME: home },
    });
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the nemesis of ${home} did not say ready within 15 s${err ? `: ${err.trim()}` : ''}`)), 15_000);
      let out = '';
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('ready\n')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the nemesis of ${home} exited (${code}) before it was ready${err ? `: ${err.trim()}` : ''}`));
      });
    });
    child.stdout!.destroy();
    child.stderr!.destroy();
    child.unref();
    return child.pid!;
  } finally {
    rmSync(lock, { force: true });
  }
}

/** A failure the nemesis answered (Refused: a sentence about the request). */
export class NemesisError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
  override name = 'NemesisError';
}

export class NemesisClient {
  private constructor(private readonly rpc: RpcClient, readonly home: string) {}

  /** Connects to the home's nemesis, starting it if needed. */
  static async connect(home: string): Promise<NemesisClient> {
    await startNemesis(home);
    return new NemesisClient(new RpcClient(nemesisEndpoint(home)), home);
  }

  private async call<T>(body: Record<string, unknown>, timeoutMs = 60_000): Promise<T> {
    try {
      return (await this.rpc.call(body, timeoutMs)) as T;
    } catch (e) {
      if (e instanceof RpcFailure) throw new NemesisError(e.code, e.message);
      throw e;
    }
  }

  inject(req: FaultRequest): Promise<FaultRecord> {
    return this.call({ op: 'inject', req });
  }
  list(opts: { all?: boolean } = {}): Promise<FaultRecord[]> {
    return this.call({ op: 'list', all: opts.all === true }, 10_000);
  }
  clear(id: string | null, opts: { owner?: string } = {}): Promise<FaultRecord[]> {
    return this.call({ op: 'clear', fault: id, owner: opts.owner ?? null });
  }
  async renew(owner: string): Promise<void> {
    await this.call({ op: 'renew', owner }, 5000);
  }
  close(): void {
    this.rpc.close();
  }
}

/**
 * Ends every fault of `home` and its nemesis (for `down`): asks it to stop, waits up to 10 s,
 * kills it if it will not go, and undoes what it left. Resolves with how many faults were ended.
 */
export async function stopNemesis(home: string): Promise<number> {
  let ended = 0;
  const pid = nemesisPid(home);
  if (pid) {
    const rpc = new RpcClient(nemesisEndpoint(home));
    try {
      const r = (await rpc.call({ op: 'stop' }, 5000)) as { active?: number } | null;
      ended += typeof r?.active === 'number' ? r.active : 0;
    } catch { /* killed below */ } finally {
      rpc.close();
    }
    const until = Date.now() + 10_000;
    while (pidAlive(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    if (pidAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }
  for (const p of nemesisPids(home)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch { /* gone */ }
  }
  if (existsSync(activeFile(home))) ended += await new Nemesis({ home }).recoverLeftovers();
  rmSync(nemesisFile(home), { force: true });
  return ended;
}
