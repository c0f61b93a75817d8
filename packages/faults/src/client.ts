/**
 * Reaching a home's nemesis: `NemesisClient.connect(home)` finds it from `faults/nemesis.json`
 * (pid and start checked) or starts it (one at a time, under `faults/nemesis.lock`), then speaks
 * the nemesis's wire (wire.ts) through runtime's RpcClient. A client notices when the nemesis it
 * speaks to dies (its warden starts another, which undoes what the dead one held): a list, renew
 * or clear of everything is asked again of the new one, an inject fails with a sentence.
 * `stopNemesis(home)` ends every fault, the nemesis and its warden; if the nemesis is dead but left
 * faults in active.json, it undoes them here (as `undoGoneNemesis(home)` does, which stops nothing).
 * Nothing of the nemesis is left after it: no process, no socket.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { entries, firstLine, nodeArgsFor, pidAlive, processEnv, readRegularFile, RpcClient, RpcFailure, makeDirs } from '@hvlab/runtime';
import { activeFile, faultsDir, Nemesis } from './nemesis.js';
import { OWNER_RENEW_MS, type FaultRecord, type FaultRequest } from './types.js';
import { processStart, processState } from './world.js';

/** How long a call waits on a nemesis that stays stopped before it says so (ms). */
const STOPPED_SAY_MS = 2000;
import type { OwnedVm } from './wire.js';
import type { RunLease } from '@hvlab/cluster';
import { FAULT_MAX_MS } from '@hvlab/protocol';
import { procPids, procTitle } from '@hvlab/shm/procfs';

export function nemesisFile(home: string): string {
  return join(faultsDir(home), 'nemesis.json');
}

/** Longest socket path used as it is (a Unix socket's path has at most 107 bytes). */
const SOCKET_PATH_MAX = 100;

/**
 * The nemesis's socket file: in the home's faults directory (0700), or, when that path is too long
 * for a Unix socket, in a directory of its own under the temp dir, named from the home
 * (`nemesisSocketDir` makes and checks it: never a name in /tmp itself that any user could take first).
 */
export function nemesisSocketPath(home: string): string {
  const p = join(faultsDir(home), 'nemesis.sock');
  if (p.length <= SOCKET_PATH_MAX) return p;
  return join(tmpdir(), `hvlab-nemesis-${createHash('sha1').update(home).digest('hex').slice(0, 16)}`, 'sock');
}

export function nemesisEndpoint(home: string): string {
  return `ipc://${nemesisSocketPath(home)}`;
}

/**
 * Makes the directory of the nemesis's socket if it is one of its own under the temp dir, and
 * checks that it is this user's, a real directory and closed to others (another user could have
 * made it first, to listen in the nemesis's place); throws a sentence if not.
 */
export function nemesisSocketDir(home: string): void {
  const dir = dirname(nemesisSocketPath(home));
  if (dir === faultsDir(home)) return;
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = lstatSync(dir);
  const uid = process.getuid?.() ?? st.uid;
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new Error(`${dir} (the nemesis's socket directory) is not a directory of this user closed to others: remove it`);
  }
}

/** Removes the nemesis's socket (and its directory under the temp dir, if it is this user's); for a nemesis that is gone. */
export function removeNemesisSocket(home: string): void {
  const p = nemesisSocketPath(home);
  const dir = dirname(p);
  if (dir === faultsDir(home)) {
    rmSync(p, { force: true });
    return;
  }
  try {
    const st = lstatSync(dir);
    if (st.isDirectory() && st.uid === (process.getuid?.() ?? st.uid)) rmSync(dir, { recursive: true, force: true });
  } catch { /* not there */ }
}

/** The running nemesis of `home`: its pid, or null. */
export function nemesisPid(home: string): number | null {
  try {
    const o = JSON.parse(readRegularFile(nemesisFile(home), 64 * 1024).toString('utf8')) as { pid?: unknown };
    if (typeof o.pid !== 'number' || !Number.isInteger(o.pid) || o.pid < 2 || !pidAlive(o.pid)) return null;
    return procTitle(o.pid)?.startsWith('hvlab-nemesis ') ? o.pid : null;
  } catch {
    return null;
  }
}

/** Pids of every nemesis process of `home` and of its warden (by title), for leak checks. */
export function nemesisPids(home: string): number[] {
  return [...titled(`hvlab-nemesis ${home}`), ...wardenPids(home)];
}

/** Pids of the nemesis's warden of `home` (nemesis-warden.ts). */
export function wardenPids(home: string): number[] {
  return titled(`hvlab-nemesis-warden ${home}`);
}

function titled(want: string): number[] {
  const out: number[] = [];
  for (const pid of procPids()) {
    const title = procTitle(pid);
    if (title !== null && (title === want || title.startsWith(`${want} `))) out.push(pid);
  }
  return out;
}

/**
 * Takes the lock that whatever starts the home's nemesis holds meanwhile (`faults/nemesis.lock`,
 * its holder's pid: startNemesis, the warden), waiting while a live process holds it (a lock whose
 * holder died is taken over); resolves with the pid of the nemesis instead once one runs (the lock
 * is then not taken).
 */
async function nemesisStartLock(home: string): Promise<{ running: number } | { release: () => void }> {
  makeDirs(faultsDir(home), 0o700);
  const lock = join(faultsDir(home), 'nemesis.lock');
  const until = Date.now() + 15_000;
  for (;;) {
    try {
      const fd = openSync(lock, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return { release: () => rmSync(lock, { force: true }) };
    } catch {
      // Someone else is starting it: wait for it, or take over a lock whose holder died.
      const pid = nemesisPid(home);
      if (pid) return { running: pid };
      let holder = 0;
      try {
        holder = Number(readRegularFile(lock, 64).toString('utf8'));
      } catch { /* gone meanwhile */ }
      if (!holder || !pidAlive(holder)) rmSync(lock, { force: true });
      if (Date.now() > until) throw new Error(`the nemesis of ${home} did not start within 15 s (lock ${lock})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Starts the nemesis of `home` unless one runs; resolves with its pid. */
export async function startNemesis(home: string): Promise<number> {
  const running = nemesisPid(home);
  if (running) return running;
  const lock = await nemesisStartLock(home);
  if ('running' in lock) return lock.running;
  try {
    const again = nemesisPid(home);
    if (again) return again;
    const child = spawn(process.execPath, [...nodeArgsFor(entries.nemesis), home], {
      detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: processEnv(process.env, { HVLAB_NEMESIS_HOME: home }),
    });
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-4096)));
    const first = await firstLine(child, 15_000);
    if (first.kind !== 'line' || first.line !== 'ready') {
      const said = first.kind === 'line' ? `it said "${first.line}"` : first.kind === 'exited' ? `it exited (${first.why})` : first.kind === 'timeout' ? 'it did not say ready within 15 s' : 'its first line is too long';
      child.stdout!.destroy();
      child.stderr!.destroy();
      // One that did not say ready is not left behind to hold the home's nemesis files.
      if (first.kind !== 'exited') child.kill('SIGKILL');
      throw new Error(`the nemesis of ${home} did not start: ${said}${err ? `: ${err.trim()}` : ''}`);
    }
    child.stdout!.destroy();
    child.stderr!.destroy();
    child.unref();
    return child.pid!;
  } finally {
    lock.release();
  }
}

/**
 * Undoes, here, what a nemesis of `home` that is gone left in active.json (killed with its warden,
 * which would have started another to undo it), and takes away its nemesis.json and socket; under
 * the start lock, so that no nemesis starting meanwhile undoes the same faults. Resolves with the
 * faults undone: none when a nemesis runs there (they are its own, or it undid them as it started).
 */
export async function undoGoneNemesis(home: string): Promise<FaultRecord[]> {
  if (!existsSync(activeFile(home)) || nemesisPid(home) !== null) return [];
  const lock = await nemesisStartLock(home);
  if ('running' in lock) return [];
  try {
    // The hosts stay up: a fault whose root does not answer stays in the active file (ending), for
    // the next nemesis of the home to ask again.
    return nemesisPid(home) === null ? await undoLeft(home, true) : [];
  } finally {
    lock.release();
  }
}

/**
 * Undoes what a nemesis of `home` that is gone left, and removes its files; resolves with the
 * faults undone. `keepUnanswered`: a fault whose root does not answer its clear stays in the
 * active file (the hosts stay up); else (`down`: they go) it is left to its deadline, said.
 */
async function undoLeft(home: string, keepUnanswered = false): Promise<FaultRecord[]> {
  let undone: FaultRecord[] = [];
  if (existsSync(activeFile(home))) {
    const nemesis = new Nemesis({ home, linger: keepUnanswered });
    await nemesis.recoverLeftovers();
    // Nothing else is active in it: what it recovered, as a clear of everything reports it.
    undone = await nemesis.clear(null, null);
  }
  rmSync(nemesisFile(home), { force: true });
  removeNemesisSocket(home);
  return undone;
}

/** A failure the nemesis answered (Refused: a sentence about the request). */
export class NemesisError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
  override name = 'NemesisError';
}

export class NemesisClient {
  private constructor(private rpc: RpcClient, readonly home: string, private pid: number, private start: number | null) {}

  /** Connects to the home's nemesis, starting it if needed. */
  static async connect(home: string): Promise<NemesisClient> {
    const pid = await startNemesis(home);
    return new NemesisClient(new RpcClient(nemesisEndpoint(home)), home, pid, processStart(pid));
  }

  /** True while the nemesis this client speaks to is the same process. */
  private alive(): boolean {
    return this.start !== null && processStart(this.pid) === this.start;
  }

  /** One call, failing early if the nemesis dies (code Gone) or stays stopped (code Stopped) while it waits. */
  private once<T>(body: Record<string, unknown>, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // A nemesis stopped (SIGSTOP, a debugger) answers nothing: said after STOPPED_SAY_MS, where
      // the call waited out its whole timeout (60 s for a clear) and said only "no answer".
      let stoppedSince: number | null = null;
      const watch = setInterval(() => {
        if (this.alive()) {
          const st = processState(this.pid);
          if (st !== 'T' && st !== 't') stoppedSince = null;
          else if ((stoppedSince ??= Date.now()) <= Date.now() - STOPPED_SAY_MS) {
            clearInterval(watch);
            const how = st === 'T' ? `stopped (SIGSTOP): it answers nothing, and the faults it holds do not end, until it runs again ("kill -CONT ${this.pid}")` : 'held by a debugger (traced, stopped): it answers nothing, and the faults it holds do not end, until the debugger lets it run';
            reject(new NemesisError('Stopped', `the nemesis of ${this.home} (pid ${this.pid}) is ${how}; what was asked is done then. "hvlab down" ends it and every fault`));
          }
          return;
        }
        clearInterval(watch);
        reject(new NemesisError('Gone', `the nemesis of ${this.home} (pid ${this.pid}) ended while it was asked to ${String(body.op)}`));
      }, 250);
      this.rpc.call(body, timeoutMs).then(
        (v) => {
          clearInterval(watch);
          resolve(v as T);
        },
        (e: unknown) => {
          clearInterval(watch);
          reject(e instanceof RpcFailure ? new NemesisError(e.code, e.message) : e);
        },
      );
    });
  }

  /**
   * A call; if the nemesis died meanwhile, a call that may be asked twice (list, renew, clear of
   * everything) is asked again of the one that takes its place (which has undone what the dead
   * one held); any other fails with a sentence.
   */
  private async call<T>(body: Record<string, unknown>, timeoutMs = 60_000, again = false): Promise<T> {
    try {
      return await this.once<T>(body, timeoutMs);
    } catch (e) {
      const gone = e instanceof NemesisError && (e.code === 'Gone' || (e.code === 'Timeout' && !this.alive()));
      if (!gone) throw e;
      if (!again) throw new NemesisError('Gone', `the nemesis of ${this.home} ended while it was asked to ${String(body.op)}; what it held was undone ("hvlab fault list --all" shows it)`);
      await this.reconnect();
      return await this.once<T>(body, timeoutMs);
    }
  }

  private async reconnect(): Promise<void> {
    this.rpc.close();
    this.pid = await startNemesis(this.home);
    this.start = processStart(this.pid);
    this.rpc = new RpcClient(nemesisEndpoint(this.home));
  }

  inject(req: FaultRequest): Promise<FaultRecord> {
    return this.call({ op: 'inject', req });
  }
  /** `counters`: each active vmbus fault's counters so far (the nemesis asks its roots). */
  list(opts: { all?: boolean; counters?: boolean } = {}): Promise<FaultRecord[]> {
    return this.call({ op: 'list', all: opts.all === true, ...(opts.counters ? { counters: true } : {}) }, 10_000, true);
  }
  clear(id: string | null, opts: { owner?: string } = {}): Promise<FaultRecord[]> {
    return this.call({ op: 'clear', fault: id, owner: opts.owner ?? null }, 60_000, id === null);
  }
  /**
   * Renews `owner`'s lease. With `teardown`, a lease that lapses also takes the home's cluster down
   * and removes the home (a run's temporary cluster, so a killed run leaves nothing).
   */
  async renew(owner: string, opts: { teardown?: boolean; vms?: OwnedVm[] } = {}): Promise<void> {
    await this.call({ op: 'renew', owner, teardown: opts.teardown === true, ...(opts.vms ? { vms: opts.vms } : {}) }, 5000, true);
  }
  /** Hands the owner's teardown to the nemesis (wire `handover`); true when it took it. */
  async handOver(owner: string): Promise<boolean> {
    const a = await this.call({ op: 'handover', owner }, 5000, false) as { accepted?: unknown } | null;
    return a !== null && typeof a === 'object' && a.accepted === true;
  }
  close(): void {
    this.rpc.close();
  }
}

/**
 * A teardown lease on the cluster of a temporary home, held by a run that brought the cluster up:
 * renewed every OWNER_RENEW_MS until `end`. If the holder dies (even by SIGKILL) the lease lapses
 * and the home's nemesis ends `owner`'s faults, takes the cluster down and removes the home. `end`
 * only stops the renewals: the holder then tears down itself (stopNemesis, then the cluster).
 */
export async function holdHomeLease(home: string, owner: string): Promise<HomeLease> {
  const c = await NemesisClient.connect(home);
  try {
    await c.renew(owner, { teardown: true });
  } catch (e) {
    c.close();
    throw e;
  }
  const timer = setInterval(() => void c.renew(owner, { teardown: true }).catch(() => undefined), OWNER_RENEW_MS);
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    c.close();
  };
  return {
    end,
    handOver: async (waitMs = HANDOVER_WAIT_MS) => {
      if (ended) return false;
      clearInterval(timer);
      let taken = false;
      try {
        taken = await c.handOver(owner);
      } catch {
        taken = false;
      }
      end();
      if (!taken) return false;
      // The nemesis removes the home last: gone, the teardown is done.
      for (const until = Date.now() + waitMs; existsSync(home) && Date.now() < until;) await new Promise((r) => setTimeout(r, 100));
      return !existsSync(home);
    },
  };
}

/**
 * A run's lease on an existing cluster (cluster's RunLease, for `experiment run` of a migration on
 * the user's cluster): renewed every OWNER_RENEW_MS with the VMs the run has made; the link's
 * impairments go in as a link fault `owner` owns, so the nemesis puts the link back as it was when
 * the lease ends, or lapses (the run killed, even by SIGKILL), and deletes the VMs named then.
 */
export async function holdRunLease(home: string, owner: string): Promise<RunLease> {
  const c = await NemesisClient.connect(home);
  let vms: OwnedVm[] = [];
  try {
    await c.renew(owner, { vms });
  } catch (e) {
    c.close();
    throw e;
  }
  const timer = setInterval(() => void c.renew(owner, { vms }).catch(() => undefined), OWNER_RENEW_MS);
  let ended = false;
  return {
    async setLink(a, b, change) {
      const params: Record<string, unknown> = {};
      for (const k of ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const) if (change[k] !== null) params[k] = change[k];
      await c.inject({ kind: 'link', target: `link:${a}-${b}`, forMs: FAULT_MAX_MS, params, owner, seed: change.seed });
    },
    async owned(list) {
      vms = list.slice();
      await c.renew(owner, { vms });
    },
    async end() {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      try {
        // The VMs released first (the run deleted them), then its faults ended and its lease with them.
        await c.renew(owner, { vms: [] }).catch(() => undefined);
        await c.clear(null, { owner });
      } finally {
        c.close();
      }
    },
  };
}

/** How long a handed-over teardown (a cluster's down and its home's removal) is waited for. */
const HANDOVER_WAIT_MS = 60_000;

/**
 * A teardown lease (holdHomeLease). `end` stops the renewals (the holder tears down itself);
 * `handOver` gives the teardown to the home's nemesis, which does what the lease's lapse would
 * (faults end, the cluster goes down, the home is removed), and waits for it: a holder killed
 * meanwhile, even by a second Ctrl-C or SIGKILL, leaves nothing, where its own teardown stopped
 * half done (the nemesis already told to stop, the cluster still up). Resolves true once the home
 * is gone, false when the nemesis did not take it (the holder then tears down itself).
 */
export interface HomeLease {
  end: () => void;
  handOver: (waitMs?: number) => Promise<boolean>;
}

/**
 * Ends every fault of `home`, its nemesis and its warden (for `down`): asks the nemesis to stop,
 * waits up to 10 s, kills it if it will not go, undoes what it left and takes its socket away.
 * Resolves with how many faults were ended.
 */
export async function stopNemesis(home: string): Promise<number> {
  let ended = 0;
  // The warden first: it would start another nemesis for faults this one leaves.
  for (const p of wardenPids(home)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch { /* gone */ }
  }
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
  return ended + (await undoLeft(home)).length;
}
