/**
 * Test harness for end-to-end tests: a temporary HVLAB_HOME, the real `hvlab` CLI run as a child
 * process, and a cleanup that leaves no process, socket or /dev/shm file of the host even when a
 * test failed (`hvlab down`, then a sweep by host id).
 */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hostPaths, zmq, type HostPaths } from '@hvlab/runtime';
import { CLUSTER_WIRE_VERSION, encode } from '@hvlab/protocol';
import { hostProcesses, sweepHost } from '@hvlab/host';
import { clusterTag, fabricPids, memberSecretHash, networkLeftovers, pairAuth } from '@hvlab/cluster';
import { nemesisPids } from '@hvlab/faults';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The hvlab command as a user runs it: the compiled CLI through its bin script (one process). */
const cli = join(repo, 'packages', 'cli', 'bin', 'hvlab.mjs');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class TestHost {
  private homeDir: string | null = null;
  private pathsCache: HostPaths | null = null;
  private hostIds = new Set<string>();

  /**
   * The harness's HVLAB_HOME, made at first use: a describe block builds its TestHost when the
   * file loads, and one whose tests a --grep leaves out never runs its `after`, so a home made
   * then would be left behind.
   */
  get home(): string {
    return (this.homeDir ??= mkdtempSync(join(tmpdir(), 'hvlab-test-')));
  }

  get paths(): HostPaths {
    return (this.pathsCache ??= hostPaths(this.home));
  }

  constructor(private readonly env: Record<string, string> = {}) {}

  /** Runs the CLI asynchronously (so the test's event loop keeps going). */
  run(...args: string[]): Promise<CliResult> {
    return this.start(...args).done;
  }

  /** The CLI started with `args`, for a test that signals it while it runs; `done` as run's. */
  start(...args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
    const c = spawn(process.execPath, [cli, ...args], {
      cwd: repo,
      env: { ...process.env, ...this.env, HVLAB_HOME: this.home },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const done = new Promise<CliResult>((res) => {
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d) => (stdout += d));
      c.stderr.on('data', (d) => (stderr += d));
      c.on('close', (code) => {
        this.noteHost();
        res({ code: code ?? -1, stdout, stderr });
      });
    });
    return { child: c, done };
  }

  async ok(...args: string[]): Promise<string> {
    const r = await this.run(...args);
    if (r.code !== 0) throw new Error(`hvlab ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  async json<T>(...args: string[]): Promise<T> {
    return JSON.parse(await this.ok(...args, '--json')) as T;
  }

  private noteHost(): void {
    try {
      const rec = JSON.parse(readFileSync(this.paths.hostFile, 'utf8')) as { hostId: string };
      this.hostIds.add(rec.hostId);
    } catch { /* no host */ }
  }

  get hostId(): string {
    return (JSON.parse(readFileSync(this.paths.hostFile, 'utf8')) as { hostId: string }).hostId;
  }

  /** Everything of the host: `hvlab down`, then a forced sweep of whatever is left. */
  async destroy(): Promise<void> {
    if (this.homeDir === null) return; // never used
    this.noteHost();
    if (existsSync(this.paths.hostFile)) await this.run('down');
    for (const id of this.hostIds) sweepHost(this.paths, id);
    // SIGKILL is delivered asynchronously: give the kernel a moment to finish the processes (and
    // sweep again whatever a dying supervisor started meanwhile) before anyone counts leftovers.
    for (let i = 0; i < 50 && [...this.hostIds].some((id) => hostProcesses(id).length > 0); i++) {
      await sleep(100);
      for (const id of this.hostIds) sweepHost(this.paths, id);
    }
    rmSync(this.home, { recursive: true, force: true });
  }

  /** `destroy`, then fail if any process or /dev/shm file of this harness's hosts is left. */
  async destroyLeavingNothing(): Promise<void> {
    await this.destroy();
    const left = this.leftovers();
    if (left.pids.length > 0) throw new Error(`processes left behind: ${left.pids.join(', ')}`);
    if (left.shm.length > 0) throw new Error(`/dev/shm files left behind: ${left.shm.join(', ')}`);
  }

  /** Leftovers of every host this harness started: pids and /dev/shm names. */
  leftovers(): { pids: number[]; shm: string[] } {
    const pids: number[] = [];
    const shm: string[] = [];
    for (const id of this.hostIds) {
      pids.push(...hostProcesses(id));
      shm.push(...shmFiles(id));
    }
    return { pids, shm };
  }
}

export function shmFiles(hostId: string): string[] {
  try {
    return readdirSync('/dev/shm').filter((f) => f.startsWith(`hvlab-${hostId}-`));
  } catch {
    return [];
  }
}

/** Direct children of a pid, from /proc. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'latin1');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` every 100 ms until it holds or `ms` pass; returns whether it held. */
/** Runs `fn` with a fresh temporary directory (`prefix` names it), removed afterwards whatever happens. */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function eventually(cond: () => boolean | Promise<boolean>, ms: number, everyMs = 100): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > end) return false;
    await sleep(everyMs);
  }
}

/**
 * Waits until a ZeroMQ subscription is in effect. A subscriber's subscription reaches the
 * publisher some time after connect (on a busy machine, any time), and until then what is
 * published is lost to it; nothing tells the subscriber when it arrived except a message. So:
 * run `probe` (something that makes the publisher publish a message the caller's reader notes,
 * and that leaves things as they were), then give the message a second to come, until `heard()`
 * says it came. Returns whether it did within `ms`.
 */
export async function untilHeard(heard: () => boolean, probe: () => Promise<unknown>, ms = 20000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!heard()) {
    if (Date.now() > end) return false;
    await probe();
    await eventually(heard, 1000);
  }
  return true;
}

export function syncCli(home: string, ...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: repo, env: { ...process.env, HVLAB_HOME: home }, encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The owners' lease in a run a test kills (HVLAB_TEST_OWNER_LEASE_MS, which every process of the run
 * inherits, its nemesis included; OWNER_LEASE_MS, 5 s, by default): what the run held is undone
 * once its lease lapses, and the test waits for that. Three renewals' time (one a second): a run
 * slowed by a busy machine still renews in time while it lives.
 */
export const KILLED_RUN_LEASE_MS = 3000;

/**
 * Runs `hvlab experiment run FILE --out OUT` (its leases KILLED_RUN_LEASE_MS), waits until its
 * output matches `ready` (`what` names that moment in the failure), and kills it with SIGKILL.
 * Returns the run's temporary home and a watch of what of it is left (`experimentLeft`).
 */
export async function killExperimentRun(file: string, out: string, ready: RegExp, what: string, interrupted?: RegExp): Promise<{ home: string; left: ExperimentLeft }> {
  const env = { ...process.env, HVLAB_TEST_OWNER_LEASE_MS: String(KILLED_RUN_LEASE_MS) };
  const child = spawn(process.execPath, [cli, 'experiment', 'run', file, '--out', out], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  let home = '';
  try {
    if (!(await eventually(() => ready.test(output), 120_000))) throw new Error(`${what} did not happen: ${output}`);
    home = /under (\/\S+)/.exec(output)![1]!;
    // `interrupted`: a Ctrl-C first, and the kill once the run says this (in its teardown, say).
    if (interrupted) {
      child.kill('SIGINT');
      if (!(await eventually(() => interrupted.test(output), 120_000, 10))) throw new Error(`after the interrupt, the run did not say ${interrupted}: ${output}`);
    }
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  const left = experimentLeft(home);
  left.gone(); // the hosts up at the kill
  return { home, left };
}

/**
 * Runs `hvlab experiment run FILE`, sends it one Ctrl-C (SIGINT) once its output matches `ready`,
 * and waits for it to end by itself (a SIGKILL after 120 s, as a guard). Returns its exit code,
 * its output (stdout and stderr) and a watch of what it left.
 */
export async function interruptExperimentRun(file: string, out: string, ready: RegExp, what: string, env: Record<string, string> = {}): Promise<{ code: number | null; output: string; home: string; left: ExperimentLeft }> {
  const child = spawn(process.execPath, [cli, 'experiment', 'run', file, '--out', out], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  let code: number | null = null;
  const exited = new Promise<void>((r) => child.on('exit', (c) => { code = c; r(); }));
  let home = '';
  let left: ExperimentLeft | null = null;
  try {
    if (!(await eventually(() => ready.test(output), 120_000, 10))) throw new Error(`${what} did not happen: ${output}`);
    home = /under (\/\S+)/.exec(output)![1]!;
    left = experimentLeft(home);
    left.gone(); // the hosts up at the interrupt
    child.kill('SIGINT');
    await Promise.race([exited, sleep(120_000)]);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  return { code, output, home, left: left! };
}

/**
 * A suite's cluster brought down (`cluster down`) and checked to leave nothing: no process of its
 * hosts (`ids`), /dev/shm file, fabric, nemesis, namespace or veth. Then the home goes.
 */
export async function downClusterLeavingNothing(h: TestHost, ids: ReadonlySet<string>, waitMs = 10000): Promise<void> {
  await h.run('cluster', 'down');
  await eventually(() => [...ids].every((id) => hostProcesses(id).length === 0) && fabricPids(h.home).length === 0 && nemesisPids(h.home).length === 0, waitMs);
  expect([...ids].flatMap((id) => hostProcesses(id)), 'host processes left').to.deep.equal([]);
  expect([...ids].flatMap((id) => shmFiles(id)), '/dev/shm files left').to.deep.equal([]);
  expect(nemesisPids(h.home), 'nemesis left').to.deep.equal([]);
  expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  await h.destroy();
}

export interface ExperimentLeft {
  /** The hosts' ids seen so far (each look reads the records of the hosts of the home's cluster). */
  ids: Set<string>;
  /** Nothing of the run is left: its home, its hosts' processes, its fabric and its nemesis. */
  gone: () => boolean;
  /** What is left, said for an assertion's message. */
  said: () => string;
}

/**
 * A watch of what a killed run left of its temporary cluster. A host's id is read from its record
 * while it is there (a run killed in its bring-up may have hosts that come up after the kill).
 */
export function experimentLeft(home: string): ExperimentLeft {
  const ids = new Set<string>();
  const look = (): void => {
    let names: string[] = [];
    try {
      names = readdirSync(join(home, 'cluster', 'hosts'));
    } catch { /* none (yet, or any more) */ }
    for (const n of names) {
      try {
        ids.add((JSON.parse(readFileSync(join(home, 'cluster', 'hosts', n, 'run', 'host.json'), 'utf8')) as { hostId: string }).hostId);
      } catch { /* not up (yet, or any more) */ }
    }
  };
  const procs = (): number[] => [...ids].flatMap((id) => hostProcesses(id));
  return {
    ids,
    gone: () => {
      look();
      return !existsSync(home) && procs().length === 0 && fabricPids(home).length === 0 && nemesisPids(home).length === 0;
    },
    said: () => `home ${existsSync(home)}, processes ${procs().join(' ')}, fabric ${fabricPids(home).join(' ')}, nemesis ${nemesisPids(home).join(' ')}`,
  };
}

/**
 * What a ZeroMQ client with `opts` (CURVE keys, or none) hears from `endpoint`: an answer, an
 * authentication error, or nothing. A handshake refused for the client's key, or failed for its
 * mechanism (no CURVE to a CURVE server), is said at once: no answer can follow it (each reconnect
 * fails the same way), where the knock waited out its 1.5 s for one.
 */
export async function knock(endpoint: string, opts: Record<string, unknown>): Promise<'answered' | 'auth-refused' | 'no-answer'> {
  const d = new zmq.Dealer({ linger: 0, ...opts } as never);
  let refused = false;
  let failed: (said: 'auth-refused' | 'no-answer') => void = () => undefined;
  const handshake = new Promise<'auth-refused' | 'no-answer'>((r) => (failed = r));
  d.events.on('handshake:error:auth', () => {
    refused = true;
    failed('auth-refused');
  });
  d.events.on('handshake:error:protocol', () => failed('no-answer'));
  d.connect(endpoint);
  d.receiveTimeout = 1500;
  // A send to a peer whose handshake failed can wait for a pipe for good (a knock without CURVE hung).
  d.sendTimeout = 1500;
  const asked = (async (): Promise<'answered'> => {
    await d.send(encode({ v: CLUSTER_WIRE_VERSION, id: 1, op: 'status' }));
    await d.receive();
    return 'answered';
  })().catch((): 'auth-refused' | 'no-answer' => (refused ? 'auth-refused' : 'no-answer'));
  try {
    return await Promise.race([asked, handshake]);
  } finally {
    d.close();
    await asked;
  }
}

/**
 * The credential of hosts `a` and `b` of the cluster in `home` (PeerBookEntry.auth), made from
 * their member secrets in their homes as the fabric makes it: what a test that speaks for `a` to
 * `b` puts in a peer request's `auth`.
 */
export function pairCredential(home: string, a: string, b: string): string {
  const secret = (h: string): string => readFileSync(join(home, 'cluster', 'hosts', h, 'member.secret'), 'utf8').trim();
  const cluster = (JSON.parse(readFileSync(join(home, 'cluster', 'cluster.key'), 'utf8')) as { cluster: string }).cluster;
  return pairAuth(cluster, a, memberSecretHash(secret(a)), b, memberSecretHash(secret(b)));
}
