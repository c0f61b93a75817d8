/**
 * Starting and stopping a host. `up` spawns the hypervisor detached (its own session); the
 * hypervisor takes the home's lock, starts and supervises the root partition process, writes
 * `run/host.json` and says "ready" (or "locked PID" when another host holds the home). `down` asks
 * the root to stop everything, then makes sure: any process still carrying the host's id in its
 * environment is killed, the host's /dev/shm files are unlinked, and its socket directory, run
 * file and lock are removed.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, isAbsolute, join, normalize } from 'node:path';
import { decodeHostRecord, entries, firstLine, readRegularFile, isHypervisorPid, lockHolderOf, nodeArgsFor, pathsForRecord, pidAlive, processEnv, shmPrefix, testKnob, type HostPaths, type HostRecord, makeDirs } from '@hvlab/runtime';
import { unlinkRegion } from '@hvlab/shm';
import { procCmdline, procEnviron, procPids, procStat, procTitle } from '@hvlab/shm/procfs';
import { MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, parseSize } from '@hvlab/protocol';
import { MgmtClient } from './mgmt-client.js';

export type { HostRecord };

/** A failure the CLI shows as one line. */
export class HostError extends Error {}

/** run/host.json is a few hundred bytes; a larger one (or one that is no file) is not the hypervisor's. */
const HOST_RECORD_MAX_BYTES = 64 * 1024;
/**
 * How long `down` waits for a host's processes to end once its root took the shutdown, before it
 * kills what is left. Tests of a host that cannot end by itself (its hypervisor stopped) shorten it
 * (HVLAB_TEST_DOWN_GRACE_MS: whole ms from 100 up to 8 s).
 */
const DOWN_GRACE_MS = testKnob('HVLAB_TEST_DOWN_GRACE_MS', 100, 8000) ?? 8000;

export function readHost(paths: HostPaths): HostRecord | null {
  try {
    return decodeHostRecord(JSON.parse(readRegularFile(paths.hostFile, HOST_RECORD_MAX_BYTES).toString('utf8')));
  } catch {
    return null;
  }
}

/**
 * What can still be read of a host record that does not decode (cut short, edited): its host id
 * and its socket directory, or nulls. `down` finds a dead host's /dev/shm files by its id and its
 * sockets by that directory: with the record damaged and every process of the host gone, nothing
 * else names them, and they stayed (a 32 MiB memory file and the sockets, for good).
 */
export function salvageHostRecord(paths: HostPaths): { hostId: string | null; sockDir: string | null } {
  let text: string;
  try {
    text = readRegularFile(paths.hostFile, HOST_RECORD_MAX_BYTES).toString('utf8');
  } catch {
    return { hostId: null, sockDir: null };
  }
  const id = /"hostId"\s*:\s*"([0-9a-f]{6})"/.exec(text)?.[1] ?? null;
  const dir = /"sockDir"\s*:\s*"([^"\\]{1,4096})"/.exec(text)?.[1] ?? null;
  // Only a directory where this home's sockets could be (pathsForRecord's checks) is taken.
  const sockDir = dir !== null && pathsForRecord(paths, { sockDir: dir }).sockDir === dir ? dir : null;
  return { hostId: id, sockDir };
}

/**
 * The socket directory of the live process `pid` for this home: its TMPDIR (or /tmp) and the
 * home's directory name. A `down` right after a killed `up`, run with another TMPDIR, took its
 * own and left the host's sockets behind.
 */
function sockDirOfProcess(paths: HostPaths, pid: number): string {
  const tmp = procEnviron(pid)?.get('TMPDIR');
  const base = tmp !== undefined && isAbsolute(tmp) ? normalize(tmp).replace(/\/+$/, '') || '/' : '/tmp';
  return join(base, basename(paths.sockDir));
}

export function hostRunning(rec: HostRecord | null): boolean {
  return rec !== null && pidAlive(rec.pids.hypervisor) && pidAlive(rec.pids.root);
}

/** The pid holding the home's lock, if it is a live hvlab hypervisor. */
export function lockHolder(paths: HostPaths): number | null {
  return lockHolderOf(paths.lockFile);
}

export interface UpOptions {
  lps?: number | null;
  vmbusTransport?: 'shm' | 'remote';
  /** Booted VMs without an owner the root keeps ahead of need (0 none), and their memory size (default 64M). */
  warm?: number;
  warmMemory?: string;
  /** Loaded VM workers without a VM the root keeps for any start (default 1; 0 none). */
  spare?: number;
  /** Extra environment for the host's processes (tests shorten IC periods this way). */
  env?: Record<string, string>;
  /** Run the host in this network namespace (`ip netns exec`; a cluster's host). */
  netns?: string | null;
  /**
   * Aborted (a Ctrl-C of the caller): the start stops where it is, what it started goes (as a
   * start that failed), and `up` throws HostInterrupted. Without it a Ctrl-C waited for the host to
   * be ready, up to 30 s, only to bring it down again.
   */
  signal?: AbortSignal;
}

/** `up` stopped by its signal; nothing of the host it began is left. */
export class HostInterrupted extends HostError {
  constructor(home: string) {
    super(`the start of the host for ${home} was interrupted; nothing of it is left`);
    this.name = 'HostInterrupted';
  }
}

/** The host's processes failed to start: `reason`, and where its logs say more (`logs`). */
export class HostStartFailed extends HostError {
  constructor(readonly reason: string, readonly logs: string) {
    super(`${reason}; see ${logs}`);
    this.name = 'HostStartFailed';
  }
}

export async function up(paths: HostPaths, opts: UpOptions = {}): Promise<HostRecord> {
  if (opts.warmMemory !== undefined) {
    // Checked here as `vm new --memory` is checked by the root: the root reads this at its start only.
    const b = parseSize(opts.warmMemory);
    if (b === null || b % 4096 !== 0 || b < MIN_MEMORY_BYTES || b > MAX_MEMORY_BYTES) {
      throw new HostError(`--warm-memory ${opts.warmMemory} is invalid: a size from 2M to 4G in whole 4 KiB pages, e.g. 64M`);
    }
  }
  const refuseIfHeld = (): void => {
    const holder = lockHolder(paths);
    if (holder === null) return;
    const rec = readHost(paths);
    throw new HostError(`a host is already up for ${paths.home} (host ${rec?.hostId ?? '?'}, hypervisor pid ${holder}); run "hvlab down" first`);
  };
  const signal = opts.signal;
  if (signal?.aborted) throw new HostInterrupted(paths.home);
  refuseIfHeld();
  // A hypervisor of this home without its lock is one starting (another `up`: it takes the lock
  // in a moment) or a host whose home was removed under it, going down by itself (guardHome):
  // its socket directory, named after the home's path, is this home's, so let it go first.
  // What the last look saw decides (a second look after it raced a starting one: an `up` beside
  // this one whose hypervisor appeared just then was called a host whose home was removed). One
  // that starts after the last look finds this one's lock taken, or this one finds its.
  let lingering = homeHypervisors(paths.home);
  for (let i = 0; i < 100 && lingering.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    if (signal?.aborted) throw new HostInterrupted(paths.home);
    refuseIfHeld();
    lingering = homeHypervisors(paths.home);
  }
  if (lingering.length > 0) {
    refuseIfHeld(); // it took the lock after the last look
    throw new HostError(`a hypervisor of ${paths.home} still runs without its lock (pid ${lingering.join(', ')}) and has neither gone down nor taken the lock in 10 s (its home was removed under it, or it is stuck starting); kill it first`);
  }
  const stale = readHost(paths);
  if (stale) sweepHost(paths, stale.hostId); // leftovers of a crashed host
  const n = opts.lps ?? availableParallelism();
  const hostId = randomBytes(3).toString('hex');
  try {
    makeDirs(paths.logDir);
    makeDirs(paths.sockDir, 0o700);
  } catch (e) {
    throw new HostError(`cannot make the host's directories in ${paths.home}: ${(e as Error).message}`);
  }
  const env = { ...processEnv(process.env, opts.env), HVLAB_HOME: paths.home, HVLAB_HOST_ID: hostId, HVLAB_LPS: String(n), HVLAB_VMBUS_TRANSPORT: opts.vmbusTransport ?? 'shm', HVLAB_WARM: String(opts.warm ?? 0), ...(opts.warmMemory ? { HVLAB_WARM_MEMORY: opts.warmMemory } : {}), ...(opts.spare !== undefined ? { HVLAB_SPARE: String(opts.spare) } : {}) };
  const errFd = openSync(join(paths.logDir, 'stderr.log'), 'a');
  // In a namespace, `ip netns exec` execs node in place: the pid is the hypervisor's.
  const hv = opts.netns
    ? spawn('ip', ['netns', 'exec', opts.netns, process.execPath, ...nodeArgsFor(entries.hypervisor)], { detached: true, stdio: ['ignore', 'pipe', errFd], env })
    : spawn(process.execPath, nodeArgsFor(entries.hypervisor), { detached: true, stdio: ['ignore', 'pipe', errFd], env });
  closeSync(errFd);
  try {
    const first = await firstLine(hv, 30000, undefined, signal);
    if (first.kind === 'aborted') throw new HostInterrupted(paths.home);
    if (first.kind === 'timeout') throw new HostStartFailed('the host did not become ready within 30 s', paths.logDir);
    if (first.kind === 'too-long') throw new HostStartFailed('the hypervisor\'s first line is too long', paths.logDir);
    if (first.kind === 'exited' && !first.partial) throw new HostStartFailed(`the hypervisor exited during start-up (${first.why})`, join(paths.logDir, 'hypervisor.log'));
    const line = first.kind === 'line' ? first.line : first.partial;
    if (line.startsWith('locked ')) {
      throw new HostError(`a host is already up for ${paths.home} (hypervisor pid ${line.slice(7)}); run "hvlab down" first`);
    }
    if (line !== 'ready') throw new HostStartFailed(`the host did not start: ${line.replace(/^failed /, '')}`, paths.logDir);
    const rec = readHost(paths);
    if (!rec || rec.hostId !== hostId) throw new HostError('the host started but wrote no host record');
    hv.stdout!.destroy();
    hv.unref();
    return rec;
  } catch (e) {
    if (hv.pid && pidAlive(hv.pid)) {
      try { process.kill(hv.pid, 'SIGKILL'); } catch { /* gone */ }
      for (let i = 0; i < 40 && pidAlive(hv.pid); i++) await new Promise((r) => setTimeout(r, 50));
    }
    // Our own host's leftovers, and its sockets and lock too unless another host (one that won a
    // race for the home) holds them.
    const other = lockHolder(paths);
    sweepHost(paths, hostId, { keepRun: other !== null });
    // A process its parent forked between the sweep's look at /proc and that parent's kill (the root
    // starting a spare as a Ctrl-C came) is caught by a second look.
    for (let i = 0; i < 20 && hostProcesses(hostId).length > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      sweepHost(paths, hostId, { keepRun: other !== null });
    }
    throw e;
  }
}

/** Hypervisors started for `home` (their HVLAB_HOME), whatever lock they hold, starting ones too: their pids. */
export function homeHypervisors(home: string): number[] {
  return processesWithEnv('HVLAB_HOME', home).filter((pid) => isHypervisorPid(pid) || startingHypervisor(pid));
}

/**
 * Whether `pid` is a hypervisor still starting: its command line runs the hypervisor's entry
 * (bundled, compiled or from source; through `ip netns exec` too) before it has loaded and named
 * itself `hvlab-hypervisor` and taken its home's lock. A `down` that came then found no host, and
 * the host came up after it (a CLI killed during `up`, a slow start under load).
 */
export function startingHypervisor(pid: number): boolean {
  const args = procCmdline(pid);
  if (args === null || args.length < 2) return false;
  // Node (or `ip netns exec … node`) running it, started by `up` (which names the host): not an
  // editor or a pager that has the file open.
  const program = basename(args[0]!);
  if (!['node', 'nodejs', 'ip', basename(process.execPath)].includes(program)) return false;
  if (!/^[0-9a-f]{6}$/.test(procEnviron(pid)?.get('HVLAB_HOST_ID') ?? '')) return false;
  return args.slice(1).some((a) => /[/\\]hypervisor[/\\](?:dist[/\\]bundle[/\\]hypervisor\.mjs|dist[/\\]src[/\\]main\.js|src[/\\]main\.ts)$/.test(a));
}

/** Pids of every process whose environment names this host. */
export function hostProcesses(hostId: string): number[] {
  return processesWithEnv('HVLAB_HOST_ID', hostId);
}

/**
 * The host ids of hvlab's processes (their title `hvlab-…`, or a hypervisor still starting) that name `home` as their host's home
 * (HVLAB_HOME with an HVLAB_HOST_ID), sorted. This process and its ancestors are never among them
 * (a shell or a wrapper that exported both variables).
 */
export function strayHostIds(home: string): string[] {
  const ids = new Set<string>();
  const mine = new Set<number>();
  for (let p: number | undefined = process.pid, i = 0; p !== undefined && p > 1 && i < 64; i++) {
    mine.add(p);
    p = procStat(p)?.ppid;
  }
  for (const pid of procPids()) {
    if (mine.has(pid) || !((procTitle(pid)?.startsWith('hvlab-') ?? false) || startingHypervisor(pid))) continue;
    const env = procEnviron(pid);
    const id = env?.get('HVLAB_HOST_ID');
    if (env?.get('HVLAB_HOME') === home && id !== undefined && /^[0-9a-f]{6}$/.test(id)) ids.add(id);
  }
  return [...ids].sort();
}

/** Pids of every other process whose environment sets `name` to `value` exactly. */
function processesWithEnv(name: string, value: string): number[] {
  // Gone, or not ours to read: procEnviron gives null.
  return procPids().filter((pid) => pid !== process.pid && procEnviron(pid)?.get(name) === value);
}

/** Kills every process of the host and removes its shared memory, sockets, record and lock. */
export function sweepHost(paths: HostPaths, hostId: string, opts: { keepRun?: boolean; sameHome?: boolean } = {}): { killed: number; shm: number; pids: number[] } {
  let killed = 0;
  const signalled: number[] = [];
  // `sameHome`: only hvlab's processes that also name this home (a host id found on processes, not in a record).
  const pids = opts.sameHome ? hostProcesses(hostId).filter((p) => procEnviron(p)?.get('HVLAB_HOME') === paths.home && ((procTitle(p)?.startsWith('hvlab-') ?? false) || startingHypervisor(p))) : hostProcesses(hostId);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
      killed++;
      signalled.push(p);
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
  if (!opts.keepRun) {
    rmSync(paths.sockDir, { recursive: true, force: true });
    rmSync(paths.hostFile, { force: true });
    rmSync(paths.vmwpDir, { recursive: true, force: true });
    if (lockHolder(paths) === null) rmSync(paths.lockFile, { force: true });
  }
  return { killed, shm, pids: signalled };
}

/** How long `down` waits for the processes its sweep killed to be gone (ms). */
const KILLED_GONE_MS = 5000;

/**
 * Waits, bounded, until none of `pids` is alive (pidAlive: a zombie is not). A SIGKILL lands a
 * moment after kill() returns, so `down` answered while a killed process was still listed.
 */
async function untilGone(pids: readonly number[], ms = KILLED_GONE_MS): Promise<void> {
  const end = Date.now() + ms;
  while (pids.some(pidAlive) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
}

export async function down(paths0: HostPaths): Promise<{ hostId: string | null; graceful: boolean; killed: number; shm: number }> {
  let rec = readHost(paths0);
  // Its sockets are where its processes put them (their TMPDIR), not where this one's would go.
  let paths = pathsForRecord(paths0, rec);
  if (!rec) {
    const holder = lockHolder(paths);
    if (holder === null) {
      // No hypervisor holds the home, but processes of a host of it may still run: a VMWP whose
      // hypervisor ended under it (a SIGTERM, its home removed) could wait for good, and nothing
      // named it once the hypervisor had removed its record. They name the home and their host.
      // A record that no longer decodes may still name a host whose processes are all gone.
      const salvaged = salvageHostRecord(paths0);
      if (salvaged.sockDir !== null) paths = pathsForRecord(paths0, { sockDir: salvaged.sockDir });
      let killed = 0;
      let shm = 0;
      const ids = [...new Set([...strayHostIds(paths.home), ...(salvaged.hostId !== null ? [salvaged.hostId] : [])])];
      for (const id of ids) {
        const sw = sweepHost(paths, id, { sameHome: true });
        killed += sw.killed;
        shm += sw.shm;
        await untilGone(sw.pids);
      }
      rmSync(paths.sockDir, { recursive: true, force: true });
      rmSync(paths.vmwpDir, { recursive: true, force: true });
      if (salvaged.hostId !== null) rmSync(paths.hostFile, { force: true });
      rmSync(paths.lockFile, { force: true });
      return { hostId: ids[0] ?? null, graceful: ids.length === 0, killed, shm };
    }
    // A live hypervisor holds the home but its record is gone or unreadable (removed, edited,
    // cut short, or not written yet): it is still this home's host, and "down" still stops it.
    // Its host id is in its environment, and its sockets are under its TMPDIR.
    const hostId = procEnviron(holder)?.get('HVLAB_HOST_ID');
    if (hostId === undefined || !/^[0-9a-f]{6}$/.test(hostId)) return { hostId: null, graceful: true, killed: 0, shm: 0 };
    paths = pathsForRecord(paths0, { sockDir: sockDirOfProcess(paths0, holder) });
    rec = { hostId, home: paths.home, pids: { hypervisor: holder, root: holder }, sockDir: paths.sockDir, lps: 1, startedAt: '' };
  }
  let graceful = false;
  if (pidAlive(rec.pids.hypervisor)) {
    const c = new MgmtClient(paths.mgmtEndpoint, { watch: rec });
    try {
      await c.request('shutdown', {}, 5000);
      const t0 = Date.now();
      while (Date.now() - t0 < DOWN_GRACE_MS && hostProcesses(rec.hostId).length > 0) await new Promise((r) => setTimeout(r, 50));
      graceful = hostProcesses(rec.hostId).length === 0;
    } catch { /* forced below */ }
    c.close();
  }
  const { pids, ...s } = sweepHost(paths, rec.hostId);
  await untilGone(pids);
  // A host that joined a cluster kept a copy of the cluster's key: it goes with the host.
  rmSync(join(paths.home, 'member.key'), { force: true });
  return { hostId: rec.hostId, graceful, ...s };
}
