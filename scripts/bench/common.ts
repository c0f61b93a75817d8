/**
 * Helpers every benchmark uses: quick mode, percentiles, and the bookkeeping that makes sure a
 * benchmark leaves no child process and no /dev/shm file behind.
 */
import { loadavg } from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { sweepHost } from '@hvlab/host';
import type { HostPaths } from '../../packages/runtime/src/paths.js';
import { codeKind, shmPrefix } from '../../packages/runtime/src/paths.js';
import { pidAlive } from '../../packages/runtime/src/anchor.js';
import { hostProcesses } from '@hvlab/host';
import { clusterDown, clusterTag, fabricPids, networkLeftovers } from '@hvlab/cluster';
import { rmSync } from 'node:fs';

/**
 * Quick mode (`--quick`, or HVLAB_BENCH_QUICK=1 in the environment): the same code path with few
 * iterations, so CI (test/bench.test.ts) runs every benchmark in seconds and a broken one fails
 * there. Its numbers only show that the path works; they are no measurement.
 */
export function quickRequested(args: string[]): boolean {
  return args.includes('--quick') || process.env.HVLAB_BENCH_QUICK === '1';
}

/** The line a quick run prints under its table. */
export const QUICK_NOTE = 'quick mode: few iterations; these numbers show the path works, they measure nothing';

/**
 * The line every benchmark prints on stderr once its cleanup found nothing left; test/bench.test.ts
 * reads the host ids from it to check /dev/shm itself.
 */
export function nothingLeftLine(bench: string, hostIds: Iterable<string>): string {
  const ids = [...hostIds];
  return `[bench ${bench}] nothing left behind (hosts ${ids.join(', ') || 'none'}: no processes, no /dev/shm files)`;
}

/** Nearest-rank percentile (q in 0..1) of an unsorted sample. */
export function percentile(sample: number[], q: number): number {
  const s = [...sample].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

export const round = (x: number, digits: number): number => Number(x.toFixed(digits));

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the child has exited. */
export async function stopOwned(o: { child: ChildProcess } | null, graceMs = 2000): Promise<void> {
  if (!o || o.child.pid === undefined || exited(o.child)) return;
  const gone = new Promise<void>((resolve) => o.child.once('exit', () => resolve()));
  o.child.kill('SIGTERM');
  const t = setTimeout(() => o.child.kill('SIGKILL'), graceMs);
  await Promise.race([gone, new Promise((r) => setTimeout(r, graceMs + 2000))]);
  clearTimeout(t);
}

/** "name state" of a pid from /proc, e.g. "hvlab-partition Z". */
export function procState(pid: number): string {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return `${st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'))} ${st.slice(st.lastIndexOf(')') + 2).split(' ')[0]}`;
  } catch {
    return 'gone';
  }
}

export function shmLeftovers(hostId: string): string[] {
  try {
    return readdirSync('/dev/shm').filter((f) => f.startsWith(shmPrefix(hostId)));
  } catch {
    return [];
  }
}

/** hvlab processes of hosts other than `ours` on this machine (their titles are "hvlab-<role> <hostId> ..."). */
export function otherHvlabProcesses(ours: readonly string[]): number {
  let n = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const m = /^hvlab-(hypervisor|root|vmwp|partition) ([0-9a-f]+)/.exec(readFileSync(`/proc/${d}/cmdline`, 'latin1'));
      if (m && !ours.includes(m[2]!)) n++;
    } catch { /* gone */ }
  }
  return n;
}

/**
 * What else ran during a bench: the most processes of other hvlab hosts seen, and the highest
 * 1-minute load; and what the VM processes ran (`code`, as `host info` says it): the bundles with
 * their code caches, or compiled modules when the bundles are missing or older than a build (a
 * `tsc -b` without `node scripts/bundle.mjs`), which start slower and hold more memory (PSS per VM
 * ~41 MiB against ~34 with the bundles, 8 idle VMs, one session's runs): a number from such a run
 * is not the one the README's table compares.
 */
export interface Disturbance {
  otherHvlabProcesses: number;
  loadAvg1: number;
  code: 'bundles' | 'compiled' | 'sources';
}

/** Samples the disturbance (call `sample()` at each part of a bench); `value` is what was seen so far. */
export function disturbanceTracker(hostIds: readonly string[]): { sample: () => number; value: Disturbance } {
  const value: Disturbance = { otherHvlabProcesses: 0, loadAvg1: 0, code: codeKind() };
  return {
    value,
    sample: () => {
      const n = otherHvlabProcesses(hostIds);
      value.otherHvlabProcesses = Math.max(value.otherHvlabProcesses, n);
      value.loadAvg1 = Math.max(value.loadAvg1, round(loadavg()[0]!, 2));
      return n;
    },
  };
}

/** The table line that says how disturbed a run was. */
export function disturbanceLine(d: Disturbance): string {
  const others = d.otherHvlabProcesses > 0
    ? `DISTURBED: up to ${d.otherHvlabProcesses} processes of other hvlab hosts ran meanwhile (load ${d.loadAvg1}); rerun on a quiet machine`
    : `no other hvlab host ran meanwhile (1-min load up to ${d.loadAvg1})`;
  return `${others}\n${codeLine(d.code)}`;
}

/** The line that says what the VM processes ran, and a warning when it was not the bundles. */
export function codeLine(code: Disturbance['code']): string {
  if (code === 'bundles') return 'VM processes ran bundles (dist/bundle, with their code caches)';
  const what = code === 'sources' ? 'their TypeScript sources through tsx (HVLAB_FROM_SOURCE=1)' : 'compiled modules: the bundles are missing or older than the build (`pnpm build` makes them)';
  return `WARNING: VM processes ran ${what}; starts, memory and CPU are not what the bundles give`;
}

/**
 * After a bench's cleanup: waits a moment for killed processes to be reaped, then reports anything
 * of the run still there (tracked pids, the hosts' /dev/shm files and untracked host processes).
 * Prints the "nothing left behind" line, or a warning and sets a failing exit code.
 */
export async function reportLeftovers(bench: string, tracked: Set<number>, hostIds: string[]): Promise<void> {
  const alive = pidAlive;
  // Killed host processes whose parent died first are reparented and reaped by init; give it a moment.
  for (let i = 0; i < 100 && [...tracked].some(alive); i++) await new Promise((r) => setTimeout(r, 50));
  const left: string[] = [...tracked].filter(alive).map((p) => `pid ${p} (${procState(p)})`);
  for (const id of hostIds) {
    left.push(...shmLeftovers(id).map((f) => `/dev/shm/${f}`));
    left.push(...hostProcesses(id).filter((p) => !tracked.has(p)).map((p) => `pid ${p} (${procState(p)})`));
  }
  if (left.length > 0) {
    process.stderr.write(`[bench ${bench}] WARNING: left behind after cleanup: ${left.join(', ')}\n`);
    process.exitCode = 1;
  } else {
    process.stderr.write(`${nothingLeftLine(bench, hostIds)}\n`);
  }
}

/**
 * Takes down a benchmark's cluster and its temporary home, then fails the run (exit code 1) when
 * anything is left: a namespace, an interface, the fabric, a host process or a /dev/shm file.
 */
export async function clusterTeardown(bench: string, home: string, hostIds: string[]): Promise<void> {
  await clusterDown(home);
  const left = networkLeftovers(clusterTag(home));
  const fabric = fabricPids(home);
  rmSync(home, { recursive: true, force: true });
  if (left.namespaces.length + left.links.length > 0 || fabric.length > 0) {
    process.stderr.write(`[bench ${bench}] WARNING: left behind: ${[...left.namespaces, ...left.links, ...fabric.map((p) => `fabric pid ${p}`)].join(', ')}\n`);
    process.exitCode = 1;
  }
  await reportLeftovers(bench, new Set(hostIds.flatMap((id) => hostProcesses(id))), hostIds);
}

/** Host ids of the processes started under `home`, including those of an `up` still in flight. */
export function hostIdsUnder(home: string): string[] {
  const ids = new Set<string>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const env = `\0${readFileSync(`/proc/${d}/environ`, 'latin1')}`;
      if (!env.includes(`\0HVLAB_HOME=${home}\0`)) continue;
      const m = /\0HVLAB_HOST_ID=([^\0]+)\0/.exec(env);
      if (m) ids.add(m[1]!);
    } catch { /* gone or not ours */ }
  }
  return [...ids];
}

/**
 * Sweeps every host that ran under `home` (adding their ids to `hostIds`); after a signal
 * (`untilQuiet`), again until nothing has run there for a second (an `up` in flight).
 */
export async function sweepHome(home: string, paths: HostPaths, hostIds: string[], untilQuiet: boolean): Promise<void> {
  const adopt = (): string[] => {
    const found = hostIdsUnder(home);
    for (const id of found) if (!hostIds.includes(id)) hostIds.push(id);
    return found;
  };
  adopt();
  for (const id of hostIds) sweepHost(paths, id);
  for (let quiet = 0, i = 0; untilQuiet && quiet < 10 && i < 100; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const found = adopt();
    quiet = found.length === 0 ? quiet + 1 : 0;
    for (const id of found) sweepHost(paths, id);
  }
}

/** A child we spawned ourselves; keeps the tail of its stderr for error messages. */
export interface Owned {
  child: ChildProcess;
  what: string;
  stderr: () => string;
}

export function spawnOwned(what: string, args: string[], env: NodeJS.ProcessEnv): Owned {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let tail = '';
  child.stderr!.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4000);
  });
  child.on('error', () => undefined); // reported through waitReady / exit
  return { child, what, stderr: () => tail };
}

/** Resolves with what follows "ready" on the child's first such line (a token, or ''). */
export function waitReady(o: Owned, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onExit = (code: number | null, sig: NodeJS.Signals | null): void => {
      clearTimeout(t);
      reject(new Error(`the ${o.what} exited during start-up (${sig ?? `exit code ${code}`})${o.stderr() ? `:\n${o.stderr()}` : ''}`));
    };
    const t = setTimeout(() => {
      o.child.off('exit', onExit);
      reject(new Error(`the ${o.what} did not print "ready" within ${timeoutMs / 1000} s${o.stderr() ? `:\n${o.stderr()}` : ''}`));
    }, timeoutMs);
    o.child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /^ready(?: (\S+))?$/m.exec(buf);
      if (m && buf.includes('\n', m.index)) {
        clearTimeout(t);
        o.child.off('exit', onExit);
        resolve(m[1] ?? '');
      }
    });
    o.child.once('exit', onExit);
  });
}

/**
 * Waits until the host has a spare worker that has had `loadMs` (SPARE_LOAD_MS unless told) to load
 * its code (`ps` lists a spare from its spawn; its load is ~0.4 s of CPU here), so a start finds it
 * as a host at rest would. A quick run, whose numbers measure nothing, may give it less.
 */
export async function spareLoaded(mgmt: { request<T>(op: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> }, loadMs = SPARE_LOAD_MS): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ps = await mgmt.request<Array<{ role: string; vm: string | null; warm?: string; pid: number }>>('ps', {});
    const spare = ps.find((p) => p.role === 'vmwp' && p.vm === null && p.warm === 'spare');
    if (spare) {
      if (!spareSince.has(spare.pid)) spareSince.set(spare.pid, Date.now());
      const waited = Date.now() - spareSince.get(spare.pid)!;
      if (waited >= loadMs) return;
      await new Promise((r) => setTimeout(r, loadMs - waited));
      continue;
    }
    if (Date.now() - t0 > 30000) throw new Error('the host had no spare worker within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}
export const SPARE_LOAD_MS = 1500;
const spareSince = new Map<number, number>();
