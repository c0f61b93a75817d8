/**
 * Entry of a cluster's fabric: `node fabric-main.js HOME`. Two processes, as a switch is a box
 * that reboots its firmware:
 *
 * - the **supervisor** (`hvlab-fabric HOME`, this entry without `--serve`) reads the cluster record,
 *   starts the server, writes `cluster/fabric.json` (the server's pid, its own, the port, how many
 *   restarts) once the server serves, and prints "ready". When the server dies (a crash, an
 *   out-of-memory kill, a `fault inject kill --role fabric`) it starts another on the same port,
 *   after 250 ms, doubling to 5 s while restarts follow each other within 30 s, and says so in
 *   `fabric.log`. The hosts notice a fabric that forgot them (NotMember) and join again; their
 *   links come back with their impairments and their names with their secrets (the server's saved
 *   state, fabric.ts). What crossed the links meanwhile is lost, as across a rebooting switch:
 *   heartbeats miss, a migration whose stream went through it fails and its VM stays on its source.
 * - the **server** (`hvlab-fabric-serve HOME`, `--serve --port P`) is the fabric (fabric.ts). It
 *   prints "ready PORT" once its control socket is bound, and leaves when its stdin ends: the
 *   supervisor holds the other end of that pipe, so a supervisor killed with SIGKILL takes its
 *   server with it (no fabric outlives the process that `cluster down` finds).
 *
 * Both carry HVLAB_FABRIC_HOME=HOME, so `cluster down` finds them even without fabric.json. They
 * leave on SIGTERM/SIGINT (the supervisor ends its server first); the supervisor starts no server
 * while a `cluster down` of the cluster runs (its going-down marker names a live process: one left
 * by a `cluster down` that was killed is stale, removed, and the server restarted as ever; lab.ts
 * goingDownState), and leaves by itself when the cluster record is gone (a home
 * removed under it), so it cannot outlive its cluster for long. In that case it also removes the
 * cluster's network (namespaces, veths, bridge: found by the tag of the home's path), which
 * nobody else would now: each host goes down by itself when its home goes (hypervisor/src/main.ts,
 * guardHome).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalHome, ClusterKeyError, firstLine, processLogger, readClusterKey, writeFileAtomic } from '@hvlab/runtime';
import { Fabric } from './fabric.js';
import { teardownNetwork } from './netns.js';
import { ClusterError, clusterDir, clusterKeyFile, clusterNetworkScope, clusterRecordFile, fabricFile, fabricStateFile, goingDownState, readCluster, removeStaleGoingDown } from './lab.js';

const args = process.argv.slice(2);
const serving = args.includes('--serve');
const portArg = args.indexOf('--port');
// Without --port, portArg + 1 is 0: the home itself, which was passed over for the environment's.
// In its one spelling (canonicalHome): the cluster's network, which its supervisor may remove, is named after it.
const given = args.find((a, i) => !a.startsWith('--') && (portArg < 0 || i !== portArg + 1)) ?? process.env.HVLAB_FABRIC_HOME ?? '';
const home = given === '' ? '' : canonicalHome(given);
process.title = serving ? `hvlab-fabric-serve ${home}` : `hvlab-fabric ${home}`;

/** A reason as one short line (the first line of stdout is what the supervisor, or `cluster up`, reads). */
const oneLine = (s: string): string => {
  const t = s.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return t.length > 500 ? `${t.slice(0, 500)}…` : t;
};
/**
 * Ends a process that cannot start (before "ready"): its reason, one line on stdout, where its
 * supervisor reads it into fabric.json's `failing` record (and `cluster status` says it) or
 * `cluster up` says it; exit code 1, no stack trace. A server that could not read the cluster's key
 * threw at its top level: that was logged as an uncaught exception "the fabric keeps serving", and
 * the process served nothing and never said ready (each restart took the 15 s ready timeout, and
 * status said only that); a damaged cluster record crashed each server with a stack trace.
 */
function cannotStart(why: string): never {
  process.stdout.write(`${oneLine(why)}\n`);
  process.exit(1);
}
/** Set once the process said ready: an exception before that ends it (cannotStart), one after it is logged and it serves on. */
let ready = false;

// Looked for before the log, which makes its directory: a server its supervisor started just as
// the home was removed made HOME/cluster/log again, and left it.
let c: ReturnType<typeof readCluster>;
try {
  c = readCluster(home);
} catch (e) {
  // A record damaged since `cluster up` (ClusterError: a sentence naming the file).
  cannotStart(`the fabric ${serving ? 'server ' : ''}cannot start: ${(e as Error).message}`);
}
if (!c) {
  process.stdout.write(`no cluster record in ${home}\n`);
  process.exit(1);
}
const log = processLogger(join(clusterDir(home), 'log'), 'fabric.log', { role: serving ? 'fabric' : 'fabric-supervisor' });
/** `cannotStart` for what was thrown, logged too (with its stack when it is not one of the failures hvlab says in a sentence). */
function startFailed(e: unknown): never {
  const why = `the fabric ${serving ? 'server ' : ''}cannot start: ${e instanceof Error ? e.message : String(e)}`;
  log.error({ why, ...(e instanceof ClusterKeyError || e instanceof ClusterError ? {} : { err: e }) }, 'the fabric did not start');
  return cannotStart(why);
}
process.on('uncaughtException', (e) => {
  if (!ready) startFailed(e);
  log.error({ err: e }, 'uncaught exception (the fabric keeps serving)');
});
process.on('unhandledRejection', (e) => {
  if (!ready) startFailed(e);
  log.error({ err: e }, 'unhandled rejection (the fabric keeps serving)');
});

/** The first restart's delay; doubled for each restart that follows another within RESTART_CALM_MS, up to RESTART_MAX_MS. */
const RESTART_FIRST_MS = 250;
const RESTART_MAX_MS = 5000;
/** A server that served this long was well: the next restart's delay starts again from RESTART_FIRST_MS. */
const RESTART_CALM_MS = 30_000;
/** While starts keep failing for one reason, it is logged again at most this often. */
const FAILING_LOG_EVERY_MS = 60_000;
/** How often a restart held back by a running `cluster down` asks again whether it still runs. */
const GOING_DOWN_POLL_MS = 500;
/** How long a server has to say ready. */
const READY_TIMEOUT_MS = 15_000;
/** The delay before the next start of a server, after `streak` restarts in a row. */
const restartDelay = (streak: number): number => Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** Math.max(0, streak - 1));

if (serving) await serve();
else await supervise();

async function serve(): Promise<void> {
  // The supervisor's end of stdin closes when the supervisor goes, however it goes: watched from
  // the start, so a server still loading leaves at once too (it would bind and serve alone).
  let leave = (why: string): void => {
    log.info({ why }, 'fabric exiting before it served');
    process.exit(0);
  };
  process.stdin.on('end', () => void leave('the supervisor is gone'));
  process.stdin.on('error', () => void leave('the supervisor is gone'));
  process.stdin.resume();
  process.on('SIGTERM', () => void leave('SIGTERM'));
  process.on('SIGINT', () => void leave('SIGINT'));
  const port = portArg >= 0 ? Number(args[portArg + 1]) : c!.record.fabricPort;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stdout.write(`--port ${args[portArg + 1]} is not a port\n`);
    process.exit(1);
  }
  let fabric: Fabric;
  try {
    fabric = new Fabric({
      cluster: c!.topology.name, key: readClusterKey(clusterKeyFile(home)), listen: c!.record.listen, port,
      links: c!.topology.links, fileHosts: c!.topology.hosts.map((h) => h.name), stateFile: fabricStateFile(home),
      log: (msg, fields) => log.info(fields ?? {}, msg),
    });
  } catch (e) {
    // The cluster's key unreadable (ClusterKeyError: removed, damaged, not a file), or anything else.
    startFailed(e);
  }
  let bound: number;
  try {
    bound = await fabric.start();
  } catch (e) {
    log.error({ err: e }, 'cannot bind the control socket');
    process.stdout.write(`the fabric cannot listen on ${c!.record.listen}:${port}: ${(e as Error).message}\n`);
    process.exit(1);
  }
  log.info({ port: bound, listen: c!.record.listen }, 'fabric ready');
  ready = true;
  process.stdout.write(`ready ${bound}\n`);
  let leaving = false;
  leave = (why: string): void => {
    if (leaving) return;
    leaving = true;
    log.info({ why }, 'fabric exiting');
    void Promise.race([fabric.close(), new Promise((r) => setTimeout(r, 1000))]).then(() => process.exit(0));
  };
}

async function supervise(): Promise<void> {
  let server: ChildProcess | null = null;
  let leaving = false;
  let restarts = 0;
  /** Restarts in a row, each within RESTART_CALM_MS of the one before: the next delay's exponent. */
  let streak = 0;
  let port = c!.record.fabricPort;
  let restartTimer: NodeJS.Timeout | undefined;
  /** A server started and not yet ready: `leave` ends it too (it would start, and serve, after its supervisor). */
  let starting: ChildProcess | null = null;

  /** Starts a server; resolves with its port once it serves, or with why not. */
  const start = async (): Promise<{ port: number } | { why: string }> => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, home, '--serve', '--port', String(port)], {
      stdio: ['pipe', 'pipe', 'inherit'], env: process.env,
    });
    starting = child;
    child.stdin!.on('error', () => undefined);
    const first = await firstLine(child, READY_TIMEOUT_MS);
    starting = null;
    child.stdout!.destroy();
    const m = first.kind === 'line' ? /^ready (\d+)$/.exec(first.line) : null;
    if (!m) {
      if (first.kind !== 'exited') child.kill('SIGKILL');
      return { why: first.kind === 'line' ? first.line : first.kind === 'exited' ? `it exited (${first.why})` : first.kind === 'timeout' ? `it did not say ready within ${READY_TIMEOUT_MS / 1000} s` : 'its first line is too long' };
    }
    server = child;
    const startedAt = Date.now();
    child.on('exit', (code, signal) => {
      if (server === child) server = null;
      if (leaving) return;
      if (!existsSync(clusterRecordFile(home))) {
        // A home removed under it: its network is then this supervisor's to remove, as when its
        // watch sees that first.
        void leave('the cluster record is gone', true);
        return;
      }
      streak = Date.now() - startedAt >= RESTART_CALM_MS ? 0 : streak + 1;
      const delay = restartDelay(streak);
      log.warn({ server: child.pid, code, signal, restartInMs: delay }, 'the fabric server exited: starting another');
      restartTimer = setTimeout(() => void restart(), delay);
    });
    return { port: Number(m[1]) };
  };

  /** Starts that failed in a row since the last server that served: why (the last), since when, how many. */
  let failing: { why: string; since: string; tries: number } | null = null;
  /** When a run of failed starts was last logged (the first of a run and a changed reason always are). */
  let failingLoggedAt = 0;
  /** The server now serving (`pid`), or, while starts fail, the last one that served and why none does now. */
  let lastPid = 0;
  const record = (pid: number): void => {
    lastPid = pid;
    writeFileAtomic(fabricFile(home), JSON.stringify({ pid, supervisor: process.pid, port, listen: c!.record.listen, startedAt: new Date().toISOString(), restarts, ...(failing ? { failing } : {}) }) + '\n');
  };

  /** Whether a restart waits now for a live `cluster down` (said once in the log). */
  let waitingForDown = false;
  const restart = async (): Promise<void> => {
    restartTimer = undefined;
    if (leaving) return;
    if (!existsSync(clusterRecordFile(home))) {
      void leave('the cluster record is gone', true);
      return;
    }
    if (goingDown()) {
      // No server while a `cluster down` runs (it ends this supervisor too); but it may be killed
      // before it does, and the cluster then stays up: asked again until one or the other.
      if (!waitingForDown) log.info('the cluster is going down: no server is started while its "cluster down" runs');
      waitingForDown = true;
      restartTimer = setTimeout(() => void restart(), GOING_DOWN_POLL_MS);
      return;
    }
    if (waitingForDown) log.warn('the "cluster down" that was taking the cluster down ended without taking its fabric: starting a server again');
    waitingForDown = false;
    const r = await start();
    if (leaving) {
      server?.kill('SIGTERM');
      return;
    }
    if ('why' in r) {
      streak++;
      const delay = restartDelay(streak);
      // A cause that stays (the port taken for good) is said once, then once a minute with the count,
      // not on every try (one each 5 s); `cluster status` says it from fabric.json meanwhile.
      const changed = failing === null || failing.why !== r.why;
      failing = { why: r.why, since: changed ? new Date().toISOString() : failing!.since, tries: changed ? 1 : failing!.tries + 1 };
      const now = Date.now();
      if (changed) {
        failingLoggedAt = now;
        log.error({ why: r.why, retryInMs: delay }, 'the fabric server did not start: trying again');
      } else if (now - failingLoggedAt >= FAILING_LOG_EVERY_MS) {
        failingLoggedAt = now;
        log.error({ why: r.why, tries: failing.tries, since: failing.since, retryInMs: delay }, 'the fabric server still does not start: trying again');
      }
      record(lastPid);
      restartTimer = setTimeout(() => void restart(), delay);
      return;
    }
    const after = failing;
    failing = null;
    restarts++;
    record(server!.pid!);
    log.info({ server: server!.pid, port, restarts, ...(after ? { failedTries: after.tries, failingSince: after.since } : {}) }, 'the fabric server is back');
  };

  /**
   * Whether a `cluster down` of this cluster runs now (lab.ts goingDownState). A marker its
   * `cluster down` left when it was killed is stale: said in the log, removed, and ignored (the
   * supervisor used to leave for good on it, and the cluster stayed up without its fabric).
   */
  let staleSaid = '';
  const goingDown = (): boolean => {
    const g = goingDownState(home);
    if (g.state !== 'stale') return g.state === 'live';
    const removed = removeStaleGoingDown(home, g.text);
    // Said once per marker (one that cannot be removed is not said every 2 s).
    if (staleSaid !== `${g.why}\n${g.text}`) log.warn({ why: g.why, removed }, 'a going-down marker whose "cluster down" is gone is ignored: the cluster is up');
    staleSaid = `${g.why}\n${g.text}`;
    return goingDownState(home).state === 'live';
  };

  const leave = async (why: string, orphaned = false): Promise<void> => {
    if (leaving) return;
    leaving = true;
    clearTimeout(restartTimer);
    log.info({ why }, 'fabric exiting');
    starting?.kill('SIGKILL');
    const s = server;
    if (s && s.exitCode === null && s.signalCode === null) {
      s.kill('SIGTERM');
      const gone = await Promise.race([new Promise<boolean>((r) => s.once('exit', () => r(true))), new Promise<boolean>((r) => setTimeout(() => r(false), 1500))]);
      if (!gone) s.kill('SIGKILL');
    }
    // A cluster whose home is gone needs its network no more (the namespaces may still hold hosts
    // on their way down: a deleted namespace lives on until its last process leaves). Unless a new
    // cluster is made on the same path meanwhile: its record is written before its network, and its
    // objects carry the same home's mark, so a record there now means the network is not ours. Only
    // this cluster's instance's marks are taken, in case one comes up just after the look.
    if (orphaned && c!.record.mode === 'namespaces' && !existsSync(clusterRecordFile(home))) {
      let n = 0;
      try {
        n = teardownNetwork({ ...clusterNetworkScope(home, c!.record), instance: c!.record.network?.instance ?? null });
      } catch (e) {
        log.error({ err: e }, 'the cluster\'s network could not be told from others\'; it is left');
      }
      log.info({ removed: n }, 'the cluster\'s network is removed');
    }
    process.exit(0);
  };
  process.on('SIGTERM', () => void leave('SIGTERM'));
  process.on('SIGINT', () => void leave('SIGINT'));

  const first = await start();
  if ('why' in first) {
    log.error({ why: first.why }, 'the fabric server did not start');
    process.stdout.write(`${first.why}\n`);
    process.exit(1);
  }
  // A port of 0 in the record ("any") becomes the one it got: every restart binds that one, where
  // the hosts reach it.
  port = first.port;
  record(server!.pid!);
  log.info({ port, listen: c!.record.listen, server: server!.pid }, 'fabric ready');
  ready = true;
  process.stdout.write('ready\n');
  setInterval(() => {
    if (!existsSync(clusterRecordFile(home))) void leave('the cluster record is gone', true);
    // A marker of a `cluster down` killed half way goes (said in the log), whether or not a server dies meanwhile.
    else goingDown();
  }, 2000);
}
