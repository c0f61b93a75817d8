/**
 * Entry of the hypervisor process, the anchor of its host. Environment: HVLAB_HOME, HVLAB_HOST_ID,
 * HVLAB_LPS (and HVLAB_VMBUS_TRANSPORT, passed on to the root).
 *
 * Besides serving hypercalls it supervises the root partition process, as the service control
 * manager restarts Hyper-V's VMMS: it holds the home's lock for the host's whole life (one host per
 * home), makes a fresh root token for every root it starts and hands it over a pipe (never the
 * environment, which /proc/PID/environ shows), restarts a root that died (VM workers and
 * partitions keep running and the new root re-attaches to them), records the host's pids in
 * `run/host.json`, and reaps workers orphaned by a dead root (it is their child subreaper).
 * Prints "ready" once the first root is ready, or "locked PID" when another host holds the home.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readdirSync, renameSync, rmdirSync, rmSync, statSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLUSTER_HOST_RE } from '@hvlab/protocol';
import { entries, hostPaths, testKnob, testKnobName, isHypervisorPid, lockHolderOf, lockOwner, nodeArgsFor, pidWatchFallback, processEnv, processLogger, readRegularFile, type HostRecord, makeDirs } from '@hvlab/runtime';
import { becomeChildSubreaper, childPids, memoryMode, reapOrphans, shmUnavailableReason } from '@hvlab/shm';
import { HypervisorServer } from './server.js';

const home = process.env.HVLAB_HOME!;
const hostId = process.env.HVLAB_HOST_ID!;
const lps = Number(process.env.HVLAB_LPS ?? '1');
process.title = `hvlab-hypervisor ${hostId}`;
const paths = hostPaths(home);
makeDirs(paths.runDir);

/**
 * Takes the home's lock: a file created exclusively, naming this pid. A lock whose owner is gone
 * (or is no hvlab hypervisor: the pid was reused) is stale and taken over.
 */
function takeLock(): number | null {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(paths.lockFile, 'wx', 0o600);
      writeFileSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return null;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = lockOwner(paths.lockFile);
    if (owner === process.pid) return null;
    if (owner > 0 && isHypervisorPid(owner)) return owner;
    if (owner === 0 && attempt === 0) {
      // Just created by a racing hypervisor that has not written its pid yet.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
      continue;
    }
    rmSync(paths.lockFile, { force: true });
  }
  throw new Error(`cannot take the lock ${paths.lockFile}`);
}

const holder = takeLock();
if (holder !== null) {
  process.stdout.write(`locked ${holder}\n`);
  process.exit(3);
}

makeDirs(paths.sockDir, 0o700);
const log = processLogger(paths.logDir, 'hypervisor.log', { host: hostId, role: 'hypervisor' });
const mode = memoryMode();
const subreaper = becomeChildSubreaper();
log.info({ lps, memoryMode: mode, reason: shmUnavailableReason() || undefined, subreaper, pidWatch: pidWatchFallback() ? `polling (${pidWatchFallback()})` : 'pidfd' }, 'hypervisor starting');

const server = new HypervisorServer({ hostId, memoryMode: mode, log, lps: Number.isInteger(lps) && lps > 0 ? lps : 1 });
let exiting = false;
let root: ChildProcess | null = null;
const startedAt = new Date().toISOString();

async function exit(reason: string, code = 0): Promise<void> {
  if (exiting) return;
  exiting = true;
  log.info({ reason }, 'hypervisor exiting');
  await server.close(reason);
  // Another host may hold this home's paths by now (guardHome): what is shared goes only while
  // the lock is this host's, or nobody's.
  const ours = lockIsOurs();
  const taken = !ours && otherHolder() !== null;
  if (!taken) rmSync(join(paths.sockDir, 'hv'), { force: true });
  // Reap workers re-parented to us that are exiting with the host, so none is left a zombie of
  // PID 1 (which in a container may never reap).
  for (let i = 0; i < 40; i++) {
    reapOrphans(new Set(root?.pid ? [root.pid] : []));
    if (childPids().every((p) => p === root?.pid)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (ours && !homeLost) {
    // What is left of this host goes with it, before its lock (no new host of the home can have
    // started yet): a `down` killed once it asked for the shutdown left the socket directory and
    // the record behind for the next command to sweep.
    if (hostRecordIsOurs()) rmSync(paths.hostFile, { force: true });
    rmSync(paths.sockDir, { recursive: true, force: true });
  }
  if (ours) rmSync(paths.lockFile, { force: true });
  if (homeLost && !taken) {
    // Nobody is left to clean up after a host whose home went: its socket directory (outside the
    // home), and the directories its processes may have made again as they went down, if empty
    // (never anything in them: they may be a new host's by now).
    rmSync(paths.sockDir, { recursive: true, force: true });
    for (const d of [paths.vmwpDir, paths.logDir, paths.runDir, paths.home]) {
      try {
        rmdirSync(d);
      } catch { /* not empty, or not there */ }
    }
  }
  process.exit(code);
}
server.onShutdownRequest = () => void exit('shutdown requested by the root');

/**
 * The run directory this host made, held open for the host's life: while a descriptor is open its
 * inode cannot be reused, so a directory made again at the path (by a new `up`, or by a log file
 * of this host's own processes reopened after the removal) never passes for it, and a removed one
 * reads as having no links.
 */
const runFd = openSync(paths.runDir, 'r');
const runStat = fstatSync(runFd);
/** Whether the run directory this host made was removed, or another is at its path now. */
function runDirLost(): boolean {
  try {
    if (fstatSync(runFd).nlink === 0) return true;
  } catch {
    return true;
  }
  try {
    const now = statSync(paths.runDir);
    return now.dev !== runStat.dev || now.ino !== runStat.ino;
  } catch (e) {
    // Gone; any other failure (a permission changed) is no proof of a removal.
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR';
  }
}
/** Whether the home's lock names this process. */
const lockIsOurs = (): boolean => lockOwner(paths.lockFile) === process.pid;
/** A live hypervisor other than this one that holds the home's lock, or null. */
function otherHolder(): number | null {
  const holder = lockHolderOf(paths.lockFile);
  return holder === process.pid ? null : holder;
}

/**
 * The lock is this host's claim on its home, and its home is how anyone finds it: `hvlab down`
 * reads `run/host.json`. A home removed under a running host (an `rm -rf` of a temporary home, a
 * test's clean-up) would leave a host nothing can reach again, every process, socket and /dev/shm
 * file of it an orphan. inotify on the run directory says when anything in it, or it, goes (a
 * watch, no polling: an idle host stays asleep); the host then looks, once the changes settle:
 * - the run directory is gone, or is another directory now (the same path made again: not the
 *   inode this host holds open): the home is lost, and the host goes down as on
 *   SIGTERM, its VMs with it, and takes its socket directory (outside the home) unless another
 *   host holds the path's lock by then;
 * - only the lock went (the run directory and the host record are there): it is written again;
 * - the lock and the host record went but the directory is still there: a removal under way,
 *   most likely; the host looks again, and writes the lock again only after 10 s of that.
 */
let homeLost = false;
let guardTimer: NodeJS.Timeout | null = null;
let lockless = 0;
function guardHome(): void {
  try {
    const w = watch(paths.runDir, { persistent: false });
    w.on('change', () => checkHome());
    // A watch that ends (its directory removed, inotify's limits) looks at once.
    w.on('error', () => {
      w.close();
      checkHome();
    });
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'cannot watch the run directory: a removed home will not take this host down');
  }
}
function checkHome(): void {
  if (exiting || guardTimer !== null) return;
  guardTimer = setTimeout(() => {
    guardTimer = null;
    if (exiting) return;
    if (runDirLost()) {
      homeLost = true;
      log.error({ home: paths.home }, 'the home was removed under this host: going down');
      void exit(`its home ${paths.home} was removed`).catch(() => undefined);
      return;
    }
    if (lockIsOurs()) {
      lockless = 0;
      // The record removed or damaged by hand (the lock still ours): written again, so that the
      // CLI finds this host ("no host is up" before, and "down" could not stop it).
      if (root?.pid && !hostRecordIsOurs()) {
        rmSync(paths.hostFile, { force: true, recursive: true });
        writeHostRecord(root.pid, restarts);
        log.warn({ file: paths.hostFile }, 'the host record was removed or damaged: written again');
      }
      return;
    }
    const other = otherHolder();
    if (other !== null) {
      log.error({ holder: other }, 'another hypervisor holds this home\'s lock: going down');
      void exit(`hypervisor ${other} took the home`).catch(() => undefined);
      return;
    }
    if (!existsSync(paths.hostFile) && ++lockless < 50) {
      checkHome();
      return;
    }
    lockless = 0;
    try {
      const holder = takeLock();
      if (holder === null) log.warn('the lock file was removed: written again');
      else {
        log.error({ holder }, 'another hypervisor took this home\'s lock: going down');
        void exit(`hypervisor ${holder} took the home`).catch(() => undefined);
      }
    } catch (e) {
      log.error({ err: (e as Error).message }, 'the lock file was removed and cannot be written again');
    }
  }, 200);
  guardTimer.unref();
}
guardHome();
process.on('SIGTERM', () => void exit('SIGTERM'));
process.on('SIGINT', () => void exit('SIGINT'));
// Nothing a peer sends may end the host: log what escapes and keep serving.
process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception (the hypervisor keeps serving)'));
process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection (the hypervisor keeps serving)'));

/** Whether run/host.json is this host's record (read as the CLI reads it: a FIFO does not block). */
function hostRecordIsOurs(): boolean {
  try {
    const v = JSON.parse(readRegularFile(paths.hostFile, 64 * 1024).toString('utf8')) as { hostId?: unknown; pids?: { hypervisor?: unknown } } | null;
    return v?.hostId === hostId && v.pids?.hypervisor === process.pid;
  } catch {
    return false;
  }
}

function writeHostRecord(rootPid: number, restarts: number): void {
  const rec: HostRecord = {
    hostId, home: paths.home, pids: { hypervisor: process.pid, root: rootPid }, sockDir: paths.sockDir,
    lps: server.hv.lps ?? lps, startedAt, rootRestarts: restarts,
  };
  const tmp = `${paths.hostFile}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, JSON.stringify(rec, null, 2) + '\n');
    renameSync(tmp, paths.hostFile);
  } catch (e) {
    rmSync(tmp, { force: true });
    log.error({ err: e }, 'could not write the host record');
  }
}

// ---- the root's supervisor ---------------------------------------------------------------------

/** Restarts allowed within RESTART_WINDOW_MS before the supervisor gives up (a crash loop). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const restartTimes: number[] = [];
let restarts = 0;

/** How long a root partition process may take to say "ready", and 25 s more for each worker it re-attaches to. */
const ROOT_READY_TIMEOUT_MS = Number(process.env.HVLAB_ROOT_READY_TIMEOUT_MS) > 0 ? Number(process.env.HVLAB_ROOT_READY_TIMEOUT_MS) : 60_000;

/** Starts a root partition process; resolves when it says "ready". */
function startRoot(): Promise<void> {
  const token = server.hv.rotateRootToken();
  const errFd = openSync(join(paths.logDir, 'stderr.log'), 'a');
  const env = processEnv(process.env, { HVLAB_HV_PID: String(process.pid), HVLAB_ROOT_RESTARTS: String(restarts) });
  const child = spawn(process.execPath, nodeArgsFor(entries.root), { stdio: ['pipe', 'pipe', errFd], env });
  closeSync(errFd);
  root = child;
  child.stdin!.end(`${token}\n`);
  child.stdin!.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    let buf = '';
    // A root that never says ready (stuck on something of its home) is killed, and so restarted
    // as a dead one is (within the restart budget): the host was wedged with no root for good.
    // A restarted root re-attaches to each running worker, one after another, before it is ready
    // (up to ~25 s for one that does not answer): the allowance grows with the worker records.
    let records = 0;
    try {
      records = readdirSync(paths.vmwpDir).filter((f) => f.endsWith('.json')).length;
    } catch { /* none */ }
    const readyMs = ROOT_READY_TIMEOUT_MS + records * 25_000;
    const stuck = setTimeout(() => {
      log.error({ pid: child.pid, ms: readyMs, workers: records }, 'the root partition did not get ready in time; killing it');
      try {
        child.kill('SIGKILL');
      } catch { /* gone */ }
    }, readyMs);
    const onData = (d: Buffer): void => {
      buf = (buf + d.toString()).slice(-64);
      if (buf.includes('ready\n')) {
        clearTimeout(stuck);
        child.stdout!.off('data', onData);
        child.stdout!.resume();
        writeHostRecord(child.pid!, restarts);
        log.info({ pid: child.pid, restarts }, 'root partition ready');
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(stuck);
      if (root === child) root = null;
      reject(new Error(`the root partition exited during start-up (${signal ?? `exit code ${code}`})`));
      if (!exiting) onRootExit(code, signal);
    });
  });
}

function onRootExit(code: number | null, signal: NodeJS.Signals | null): void {
  const now = Date.now();
  while (restartTimes.length && now - restartTimes[0] > RESTART_WINDOW_MS) restartTimes.shift();
  if (restartTimes.length >= MAX_RESTARTS) {
    log.error({ code, signal, restarts: restartTimes.length }, 'the root partition keeps dying; not restarting it (VMs keep running; "hvlab down" still cleans up)');
    return;
  }
  restartTimes.push(now);
  restarts++;
  // Back off a little more each time in a burst, so a crash loop does not eat a CPU.
  const delay = Math.min(100 * 2 ** (restartTimes.length - 1), 2000);
  log.warn({ code, signal, delayMs: delay, restarts }, 'the root partition died; restarting it');
  setTimeout(() => {
    if (!exiting) startRoot().catch((e) => log.error({ err: e }, 'root restart failed'));
  }, delay);
}

// Workers whose root died are re-parented to us: reap them when they exit (every exit of a child
// sends SIGCHLD), so their pids read as gone. Node reaps the root itself.
process.on('SIGCHLD', () => {
  const own = new Set<number>();
  if (root?.pid) own.add(root.pid);
  reapOrphans(own);
});

await server.bind(paths.hvEndpoint);
void server.serve();
try {
  await startRoot();
} catch (e) {
  log.error({ err: e }, 'the first root partition did not start');
  process.stdout.write(`failed ${(e as Error).message}\n`);
  await exit('the root partition did not start', 1);
}
// Tests (HVLAB_TEST_FAIL_START_HOST, a cluster host's name): that host's start fails once its root
// is up, as one whose root did not start, so that a test sees what a cluster up does with the
// hosts starting beside it.
const failStartHost = testKnobName('HVLAB_TEST_FAIL_START_HOST', CLUSTER_HOST_RE);
if (failStartHost !== null && failStartHost === process.env.HVLAB_CLUSTER_HOST) {
  // failHost, not host: every line of this log carries the host's id under `host` (its bindings).
  log.error({ failHost: failStartHost }, 'the start fails by a test knob (HVLAB_TEST_FAIL_START_HOST)');
  process.stdout.write('failed the start was made to fail by a test (HVLAB_TEST_FAIL_START_HOST)\n');
  await exit('the start was made to fail by a test', 1);
}
// Tests (HVLAB_TEST_READY_DELAY_MS, 1 ms to 60 s): the host says it is ready this much later, so
// that a test can interrupt its starter while the host is surely still starting.
const readyDelayMs = testKnob('HVLAB_TEST_READY_DELAY_MS', 1, 60_000);
if (readyDelayMs !== null) await new Promise((r) => setTimeout(r, readyDelayMs));
process.stdout.write('ready\n');
