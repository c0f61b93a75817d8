/**
 * Starting and stopping a host: `up` spawns the hypervisor and the root partition detached (each
 * in its own session), waits for both to say "ready", and records them in run/host.json. `down`
 * asks the root to stop everything, then makes sure: any process still carrying the host's id in
 * its environment is killed, the host's /dev/shm files are unlinked and its socket directory and
 * run file are removed.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { entries, hostPaths, nodeArgsFor, pidAlive, shmPrefix, type HostPaths } from '@hvlab/runtime';
import { unlinkRegion } from '@hvlab/shm';
import { MgmtClient } from './client.js';

export interface HostRecord {
  hostId: string;
  home: string;
  pids: { hypervisor: number; root: number };
  sockDir: string;
  lps: number;
  startedAt: string;
}

export class CliError extends Error {}

export function readHost(paths: HostPaths): HostRecord | null {
  try {
    return JSON.parse(readFileSync(paths.hostFile, 'utf8')) as HostRecord;
  } catch {
    return null;
  }
}

export function hostRunning(rec: HostRecord | null): boolean {
  return rec !== null && pidAlive(rec.pids.hypervisor) && pidAlive(rec.pids.root);
}

function waitReady(child: ReturnType<typeof spawn>, what: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new CliError(`the ${what} did not become ready within ${timeoutMs / 1000} s`)), timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('ready\n')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      reject(new CliError(`the ${what} exited during start-up (${sig ?? `exit code ${code}`}); see its log in the run directory`));
    });
  });
}

export async function up(paths: HostPaths, lps: number | null, vmbusTransport: 'shm' | 'remote' = 'shm'): Promise<HostRecord> {
  const existing = readHost(paths);
  if (hostRunning(existing)) throw new CliError(`a host is already up for ${paths.home} (host ${existing!.hostId}); run "hvlab down" first`);
  if (existing) await down(paths); // leftovers of a crashed host
  const n = lps ?? availableParallelism();
  const hostId = randomBytes(3).toString('hex');
  const rootToken = randomBytes(16).toString('hex');
  mkdirSync(paths.logDir, { recursive: true });
  mkdirSync(paths.sockDir, { recursive: true, mode: 0o700 });
  const env = { ...process.env, HVLAB_HOME: paths.home, HVLAB_HOST_ID: hostId, HVLAB_ROOT_TOKEN: rootToken, HVLAB_LPS: String(n), HVLAB_VMBUS_TRANSPORT: vmbusTransport };
  const errFile = join(paths.logDir, 'stderr.log');
  const errFd = openSync(errFile, 'a');
  const hv = spawn(process.execPath, nodeArgsFor(entries.hypervisor), { detached: true, stdio: ['ignore', 'pipe', errFd], env });
  const pids: number[] = [];
  try {
    pids.push(hv.pid!);
    await waitReady(hv, 'hypervisor', 20000);
    const root = spawn(process.execPath, nodeArgsFor(entries.root), { detached: true, stdio: ['ignore', 'pipe', errFd], env: { ...env, HVLAB_HV_PID: String(hv.pid) } });
    pids.push(root.pid!);
    await waitReady(root, 'root partition', 20000);
    const rec: HostRecord = { hostId, home: paths.home, pids: { hypervisor: hv.pid!, root: root.pid! }, sockDir: paths.sockDir, lps: n, startedAt: new Date().toISOString() };
    writeFileSync(paths.hostFile, JSON.stringify(rec, null, 2) + '\n');
    for (const c of [hv, root]) {
      c.stdout!.destroy();
      c.unref();
    }
    return rec;
  } catch (e) {
    for (const p of pids) if (pidAlive(p)) process.kill(p, 'SIGKILL');
    sweepHost(paths, hostId);
    throw e;
  } finally {
    closeSync(errFd);
  }
}

/** Pids of every process whose environment names this host. */
export function hostProcesses(hostId: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const env = readFileSync(`/proc/${d}/environ`, 'latin1');
      if (env.includes(`\0HVLAB_HOST_ID=${hostId}\0`) || env.startsWith(`HVLAB_HOST_ID=${hostId}\0`)) out.push(Number(d));
    } catch { /* gone or not ours */ }
  }
  return out;
}

export function sweepHost(paths: HostPaths, hostId: string): { killed: number; shm: number } {
  let killed = 0;
  for (const p of hostProcesses(hostId)) {
    try {
      process.kill(p, 'SIGKILL');
      killed++;
    } catch { /* gone */ }
  }
  let shm = 0;
  let files: string[] = [];
  try {
    files = readdirSync('/dev/shm');
  } catch { /* no /dev/shm */ }
  for (const f of files) {
    if (!f.startsWith(shmPrefix(hostId))) continue;
    try {
      unlinkRegion(f);
    } catch { /* fall through */ }
    rmSync(join('/dev/shm', f), { force: true });
    shm++;
  }
  rmSync(paths.sockDir, { recursive: true, force: true });
  rmSync(paths.hostFile, { force: true });
  return { killed, shm };
}

export async function down(paths: HostPaths): Promise<{ hostId: string | null; graceful: boolean; killed: number; shm: number }> {
  const rec = readHost(paths);
  if (!rec) {
    rmSync(paths.sockDir, { recursive: true, force: true });
    return { hostId: null, graceful: true, killed: 0, shm: 0 };
  }
  let graceful = false;
  if (hostRunning(rec)) {
    const c = new MgmtClient(paths.mgmtEndpoint);
    try {
      await c.request('shutdown', {}, 5000);
      const t0 = Date.now();
      while (Date.now() - t0 < 8000 && hostProcesses(rec.hostId).length > 0) await new Promise((r) => setTimeout(r, 50));
      graceful = hostProcesses(rec.hostId).length === 0;
    } catch { /* forced below */ }
    c.close();
  }
  const s = sweepHost(paths, rec.hostId);
  return { hostId: rec.hostId, graceful, ...s };
}
