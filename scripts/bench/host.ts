/**
 * `pnpm bench host [--json] [--quick] [--vms N] [--many N]`: what an idle host costs, next to
 * baselines measured in the same run.
 *
 *  (a) baseline: as many plain `node -e` processes as the host below has processes (hypervisor,
 *      root, one VMWP and one partition per VM), each doing the least a process that must notice
 *      something within a second does: a 1 s timer. Their CPU over the window, and the PSS of one
 *      of them (a bare Node process, while all of them run, so shared pages are shared alike).
 *  (b) idle host: a whole host (`up`, LPS LPs) with VMS VMs (`idle` workload, 16M) Running and
 *      left alone for `hostSettleMs` (past the start-up GCs, see FULL). Then every process of the
 *      host (found by the host id in its environment: hypervisor, root, VMWPs, partitions) is
 *      measured over `windowMs`:
 *        - CPU from /proc/PID/stat (utime + stime of all its threads, in clock ticks), as % of one
 *          CPU, and per role; beside it the same from /proc/PID/task/TID/schedstat (run time in ns,
 *          finer than a tick; the ratio against the baseline uses this one);
 *        - PSS per VM: the VMWP's plus the partition's, from /proc/PID/smaps_rollup;
 *        - how often a thread of them was put on a CPU (schedstat's run count, per second): on an
 *          idle host, its wake-ups.
 *  (b') the same processes over a second window once heartbeat and time sync are off on every VM
 *      (`vmIc`): the integration services that exchange packets periodically, at Hyper-V's
 *      default periods (2 s, 5 s). What is left is hvlab's own cost of idle VMs; the difference
 *      is the guest-visible traffic.
 *  (c) many VMs (skipped with --many 0): more idle VMs are started on the same host until MANY
 *      are Running, to show a host holds them; how many made it, and the start times.
 *
 * --quick (or HVLAB_BENCH_QUICK=1): fewer VMs, a 1 s window after 0.5 s of settling, and a few more
 * VMs, for CI (its numbers measure nothing: each window's 1 s still sees every baseline process's
 * timer fire once).
 *
 * Other hvlab hosts on the machine (or any load) change everything here: the run counts their
 * processes and the 1-min load at the start of each part and reports the most it saw
 * (`disturbance`).
 *
 * Everything lives under a temporary HVLAB_HOME and is removed afterwards, whatever happens: the
 * baseline processes are killed, the host is brought down and swept, and the run fails if
 * anything is left behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exited, percentile, QUICK_NOTE, quickRequested, round, reportLeftovers, disturbanceTracker, disturbanceLine, type Disturbance, hostIdsUnder, sweepHome } from './common.js';
import { EnabledState, type ProcessInfo, type VmInfo } from '../../packages/protocol/src/index.js';
import { hostPaths, processEnv } from '../../packages/runtime/src/paths.js';
import { pidAlive } from '../../packages/runtime/src/anchor.js';
import { MgmtClient, down, hostProcesses, sweepHost, up } from '@hvlab/host';

interface Plan {
  vms: number;
  /** VMs Running in all in part (c); 0 skips it. */
  many: number;
  /** The baseline's processes run this long before their window. */
  settleMs: number;
  /** The idle host's VMs run this long (after the last one started) before its window (--settle S). */
  hostSettleMs: number;
  windowMs: number;
}
/**
 * Settling. A bare `node -e` is past its start-up in a few seconds. A VM's two processes take
 * longer: V8's memory reducer runs full collections after a process's start-up work has stopped,
 * and in a VM's processes they go on for ~40-50 s. One idle VM's CPU per 10 s after its start
 * (schedstat, 2026-12-06, four VMs): VMWP 51-54 ms in the first 10 s, 10-14 ms from 10 to 40 s,
 * 6-9 ms from 50 s on; its partition process 59-62, then 8-10, then 4-7. A `perf` of one partition
 * process: 61 % of its samples in V8's garbage collector at 1 minute old, 1 % at 10 minutes, its
 * CPU 4.7 times less; the JavaScript ran in the same (baseline) tier in both. A forced collection
 * right after boot did not shorten it. The window began 20 s after the last VM's start until
 * 2026-12-06, inside that phase: it measured the host still starting up, not an idle one. It now
 * begins 60 s after (`--settle S` sets it, for comparison).
 */
const FULL: Plan = { vms: 8, many: 50, settleMs: 20_000, hostSettleMs: 60_000, windowMs: 10_000 };
const QUICK: Plan = { vms: 2, many: 4, settleMs: 500, hostSettleMs: 500, windowMs: 1000 };
const LPS = 2;
const VM_MEMORY = '16M';
const WORKLOAD = 'idle';
/** The baseline processes: a 1 s timer, the cheapest way to notice something within a second. */
const BASELINE_SCRIPT = 'setInterval(() => {}, 1000)';
const ROLES = ['hypervisor', 'root', 'vmwp', 'partition'] as const;
type Role = (typeof ROLES)[number];

export interface CpuStats {
  processes: number;
  /** utime + stime from /proc/PID/stat over the window, as % of one CPU. */
  percent: number;
  /** Run time of every thread from /proc/PID/task/TID/schedstat over the window (ms), and as % of one CPU. */
  schedstatMs: number;
  schedstatPercent: number;
  /**
   * Times a thread of these processes was put on a CPU, per second (the third field of schedstat,
   * summed over threads): on an idle host nearly every one is a wake-up from a wait.
   */
  runsPerS: number;
}

export interface PssStats {
  n: number;
  meanMiB: number;
  minMiB: number;
  maxMiB: number;
}

export interface HostBenchResult {
  bench: 'host';
  vms: number;
  lps: number;
  windowMs: number;
  /** How long after the last VM's start the host's window began. */
  hostSettleMs: number;
  /** CPU of every process of the idle host, and per role. */
  hostCpu: CpuStats & { perVmPercent: number; byRole: Record<Role, CpuStats> };
  /**
   * The same host over a second window, once heartbeat and time sync (the integration services
   * that exchange packets periodically: Hyper-V's defaults, a heartbeat every 2 s and a time
   * sample every 5 s) were turned off on every VM: hvlab's own cost of idle VMs, without the
   * guest-visible traffic. Null in a run that could not turn them off (reported).
   */
  hostCpuNoPeriodicIc: (CpuStats & { perVmPercent: number }) | null;
  /** The same number of `node -e` processes with a 1 s timer. */
  baselineCpu: CpuStats;
  pss: { perVm: PssStats; vmwp: PssStats; partition: PssStats; hypervisorMiB: number; rootMiB: number; bareNode: PssStats };
  many: { target: number; running: number; startP50Ms: number | null; startMaxMs: number | null; totalS: number; failures: string[] } | null;
  ratios: {
    /** Host CPU / baseline CPU, both from schedstat (a tick is too coarse for the baseline). */
    cpuVsBaseline: number;
    /** CPU per run of a thread (schedstat ms / runs), host against baseline: what a wake-up costs here against an empty timer's. */
    msPerRunVsBaseline: number;
    /** PSS per VM / PSS of two bare node processes (a VM is two processes). */
    pssPerVmVsTwoBareNodes: number;
  };
  /** The most processes of other hvlab hosts seen at the start of a part, and the highest 1-min load then. */
  disturbance: Disturbance;
  quick: boolean;
}

// ---- helpers ------------------------------------------------------------------------------------

function progress(msg: string): void {
  process.stderr.write(`[bench host] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = ((): number => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** CPU a process has used so far: ticks from /proc/PID/stat, ns summed over its threads' schedstat. */
function cpuOf(pid: number): { ticks: number; ns: number; runs: number } | null {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the state field.
    const ticks = Number(f[11]) + Number(f[12]);
    let ns = 0;
    let runs = 0;
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        const f = readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'latin1').split(' ');
        ns += Number(f[0]);
        runs += Number(f[2]);
      } catch { /* thread gone */ }
    }
    return { ticks, ns, runs };
  } catch {
    return null;
  }
}

/** PSS of a process in KiB, from /proc/PID/smaps_rollup. */
function pssKiB(pid: number): number | null {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

function roleOf(pid: number): Role | null {
  try {
    const m = /^hvlab-(hypervisor|root|vmwp|partition) /.exec(readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
    return (m?.[1] as Role | undefined) ?? null;
  } catch {
    return null;
  }
}

/**
 * CPU of `pids` over `windowMs`, in all and per group. A process that is not there at both ends
 * counts for nothing (and is reported: an idle host starts and ends none).
 */
async function measureCpu(pids: number[], windowMs: number, groupOf: (pid: number) => string | null = () => null): Promise<{ all: CpuStats; groups: Map<string, CpuStats>; missing: number }> {
  const before = new Map<number, { ticks: number; ns: number; runs: number }>();
  for (const p of pids) {
    const c = cpuOf(p);
    if (c) before.set(p, c);
  }
  const t0 = process.hrtime.bigint();
  await sleep(windowMs);
  const after = new Map<number, { ticks: number; ns: number; runs: number }>();
  for (const p of pids) {
    const c = cpuOf(p);
    if (c) after.set(p, c);
  }
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  const acc = new Map<string, { n: number; ticks: number; ns: number; runs: number }>();
  const add = (key: string, ticks: number, ns: number, runs: number): void => {
    const a = acc.get(key) ?? { n: 0, ticks: 0, ns: 0, runs: 0 };
    a.n++;
    a.ticks += ticks;
    a.ns += ns;
    // A thread that ended during the window takes its runs with it: never count below zero.
    a.runs += Math.max(0, runs);
    acc.set(key, a);
  };
  let missing = 0;
  for (const p of pids) {
    const b = before.get(p);
    const a = after.get(p);
    if (!a || !b) {
      missing++;
      continue;
    }
    add('', a.ticks - b.ticks, a.ns - b.ns, a.runs - b.runs);
    const g = groupOf(p);
    if (g !== null) add(g, a.ticks - b.ticks, a.ns - b.ns, a.runs - b.runs);
  }
  const stats = (a: { n: number; ticks: number; ns: number; runs: number } | undefined): CpuStats => ({
    processes: a?.n ?? 0,
    percent: round(((a?.ticks ?? 0) / CLK_TCK / wallS) * 100, 3),
    schedstatMs: round((a?.ns ?? 0) / 1e6, 2),
    schedstatPercent: round(((a?.ns ?? 0) / 1e9 / wallS) * 100, 3),
    runsPerS: round((a?.runs ?? 0) / wallS, 1),
  });
  const groups = new Map<string, CpuStats>();
  for (const k of acc.keys()) if (k !== '') groups.set(k, stats(acc.get(k)));
  return { all: stats(acc.get('')), groups, missing };
}

/** CPU per run of a thread over a window (ms): CPU ms per second / runs per second. */
function msPerRun(c: CpuStats): number {
  return c.runsPerS > 0 ? (c.schedstatPercent * 10) / c.runsPerS : 0;
}

function pssStats(kib: number[]): PssStats {
  if (kib.length === 0) return { n: 0, meanMiB: 0, minMiB: 0, maxMiB: 0 };
  const mib = kib.map((k) => k / 1024);
  return {
    n: mib.length,
    meanMiB: round(mib.reduce((a, b) => a + b, 0) / mib.length, 1),
    minMiB: round(Math.min(...mib), 1),
    maxMiB: round(Math.max(...mib), 1),
  };
}


// ---- output -------------------------------------------------------------------------------------

function table(r: HostBenchResult): string {
  const pad = (s: string, w: number): string => s.padEnd(w);
  const num = (x: number | string, w: number): string => String(x).padStart(w);
  const lines: string[] = [];
  lines.push(`idle host: ${r.vms} VMs (${WORKLOAD}, ${VM_MEMORY}), ${r.lps} LPs, CPU over ${r.windowMs / 1000} s from ${r.hostSettleMs / 1000} s after the last start`);
  lines.push(`${pad('cpu', 44)}${num('procs', 6)}${num('% of 1 CPU', 12)}${num('schedstat ms', 14)}${num('schedstat %', 13)}${num('runs/s', 9)}`);
  const row = (name: string, c: CpuStats): string => `${pad(name, 44)}${num(c.processes, 6)}${num(c.percent, 12)}${num(c.schedstatMs, 14)}${num(c.schedstatPercent, 13)}${num(c.runsPerS, 9)}`;
  lines.push(row('host processes (all)', r.hostCpu));
  for (const role of ROLES) lines.push(row(`  ${role}`, r.hostCpu.byRole[role]));
  lines.push(`${pad('  per VM (host / VMs)', 44)}${num('', 6)}${num(r.hostCpu.perVmPercent, 12)}`);
  if (r.hostCpuNoPeriodicIc) {
    lines.push(row('same host, heartbeat and time sync off', r.hostCpuNoPeriodicIc));
    lines.push(`${pad('  per VM (host / VMs)', 44)}${num('', 6)}${num(r.hostCpuNoPeriodicIc.perVmPercent, 12)}`);
  } else lines.push('same host, heartbeat and time sync off: not measured (see above)');
  lines.push(row('baseline: `node -e` with a 1 s timer', r.baselineCpu));
  lines.push(`${pad('  ratio host / baseline (schedstat)', 44)}${num(r.ratios.cpuVsBaseline, 18)}`);
  lines.push(`${pad('  ratio CPU per thread run, host / baseline', 44)}${num(r.ratios.msPerRunVsBaseline, 18)}`);
  lines.push('');
  lines.push(`${pad('memory (PSS, smaps_rollup)', 44)}${num('n', 6)}${num('mean MiB', 12)}${num('min MiB', 14)}${num('max MiB', 13)}`);
  const prow = (name: string, p: PssStats): string => `${pad(name, 44)}${num(p.n, 6)}${num(p.meanMiB, 12)}${num(p.minMiB, 14)}${num(p.maxMiB, 13)}`;
  lines.push(prow('VM (VMWP + partition)', r.pss.perVm));
  lines.push(prow('  VMWP', r.pss.vmwp));
  lines.push(prow('  partition', r.pss.partition));
  lines.push(`${pad('  hypervisor, root', 44)}${num('', 6)}${num(r.pss.hypervisorMiB, 12)}${num(r.pss.rootMiB, 14)}`);
  lines.push(prow('baseline: bare `node -e` process', r.pss.bareNode));
  lines.push(`${pad('  ratio VM / two bare node processes', 44)}${num(r.ratios.pssPerVmVsTwoBareNodes, 18)}`);
  if (r.many) {
    const m = r.many;
    lines.push('');
    lines.push(`${pad('many VMs on one host', 44)}${num('target', 6)}${num('Running', 12)}${num('start p50 ms', 14)}${num('max ms', 13)}`);
    lines.push(`${pad(`  ${WORKLOAD} VMs started one after another`, 44)}${num(m.target, 6)}${num(m.running, 12)}${num(m.startP50Ms ?? '-', 14)}${num(m.startMaxMs ?? '-', 13)}`);
    if (m.failures.length > 0) lines.push(`  failures: ${m.failures.join('; ')}`);
  }
  const d = r.disturbance;
  lines.push('');
  lines.push(disturbanceLine(d));
  if (r.quick) lines.push(QUICK_NOTE);
  return lines.join('\n');
}

// ---- main ---------------------------------------------------------------------------------------

function parseArgs(args: string[]): { json: boolean; plan: Plan; quick: boolean } {
  const usage = 'usage: pnpm bench host [--json] [--quick] [--vms N] [--many N] [--settle S]';
  const quick = quickRequested(args);
  const plan = { ...(quick ? QUICK : FULL) };
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--json') json = true;
    else if (a === '--quick') continue;
    else if (a === '--settle') {
      const n = Number(args[++i]);
      if (!Number.isFinite(n) || n < 0 || n > 3600) throw new Error(`--settle takes seconds from 0 to 3600, not "${args[i] ?? ''}" (${usage})`);
      plan.hostSettleMs = Math.round(n * 1000);
    } else if (a === '--vms' || a === '--many') {
      const n = Number(args[++i]);
      if (!Number.isInteger(n) || n < (a === '--vms' ? 1 : 0) || n > 500) throw new Error(`${a} takes a whole number${a === '--vms' ? ' from 1' : ''} up to 500, not "${args[i] ?? ''}" (${usage})`);
      if (a === '--vms') plan.vms = n;
      else plan.many = n;
    } else throw new Error(`unknown argument "${a}" (${usage})`);
  }
  return { json, plan, quick };
}

export async function main(args: string[]): Promise<void> {
  const { json, plan, quick } = parseArgs(args);

  const home = mkdtempSync(join(tmpdir(), 'hvlab-bench-'));
  const paths = hostPaths(home);
  const hostIds: string[] = [];
  /** Every pid of a process this run made (directly or through the host), checked at the end. */
  const tracked = new Set<number>();
  const baseline: ChildProcess[] = [];
  let mgmt: MgmtClient | null = null;
  const tracker = disturbanceTracker(hostIds);
  const disturbance = tracker.value;
  const checkQuiet = (part: string): void => {
    const n = tracker.sample();
    if (n > 0) progress(`WARNING: ${n} processes of other hvlab hosts are running during ${part}; the numbers are disturbed`);
  };

  let aborting = false;
  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      mgmt?.close();
      mgmt = null;
      for (const c of baseline) if (!exited(c)) c.kill('SIGKILL');
      try {
        await down(paths);
      } catch (e) {
        progress(`down failed: ${(e as Error).message}`);
      }
      // After a signal, sweep until nothing has run under our home for a second.
      await sweepHome(home, paths, hostIds, aborting);
      rmSync(paths.sockDir, { recursive: true, force: true });
      rmSync(home, { recursive: true, force: true });
      for (const c of baseline) if (c.pid !== undefined) tracked.add(c.pid);
      await reportLeftovers('host', tracked, hostIds);
    })();
    return cleaning;
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`${sig}: cleaning up`);
    aborting = true;
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    // (a) baseline: as many bare node processes as the host will have.
    const count = 2 + 2 * plan.vms;
    checkQuiet('the baseline');
    progress(`baseline: ${count} \`node -e '${BASELINE_SCRIPT}'\` processes, CPU over ${plan.windowMs / 1000} s`);
    for (let i = 0; i < count; i++) {
      // In the environment hvlab gives its own processes (processEnv): the same start-up, the same memory.
      const c = spawn(process.execPath, ['-e', BASELINE_SCRIPT], { stdio: 'ignore', env: processEnv() });
      c.on('error', () => undefined);
      baseline.push(c);
    }
    await sleep(plan.settleMs);
    const basePids = baseline.map((c) => c.pid).filter((p): p is number => p !== undefined && pidAlive(p));
    if (basePids.length !== count) throw new Error(`only ${basePids.length} of ${count} baseline processes are running`);
    const bareNodeKiB = basePids.map(pssKiB).filter((k): k is number => k !== null);
    const baseCpu = await measureCpu(basePids, plan.windowMs);
    for (const c of baseline) c.kill('SIGKILL');
    await Promise.all(baseline.map((c) => (exited(c) ? undefined : new Promise((r) => c.once('exit', r)))));

    // (b) an idle host with plan.vms VMs.
    checkQuiet('the idle host');
    progress(`bringing a host up (${LPS} LPs)`);
    const rec = await up(paths, { lps: LPS });
    hostIds.push(rec.hostId);
    tracked.add(rec.pids.hypervisor).add(rec.pids.root);
    progress(`host ${rec.hostId} is up (hypervisor pid ${rec.pids.hypervisor}, root pid ${rec.pids.root})`);
    mgmt = new MgmtClient(paths.mgmtEndpoint);
    await mgmt.request('ping', {}, 10000);
    const m = mgmt;
    const startTimes: number[] = [];
    const vmPids: Array<{ vmwp: number; partition: number }> = [];
    const failures: string[] = [];
    const startVm = async (name: string): Promise<VmInfo> => {
      const t0 = process.hrtime.bigint();
      await m.request<VmInfo>('vmNew', { name, memory: VM_MEMORY, workload: WORKLOAD });
      const info = await m.request<VmInfo>('vmStart', { name }, 60_000);
      startTimes.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (info.pids.vmwp) tracked.add(info.pids.vmwp);
      if (info.pids.partition) tracked.add(info.pids.partition);
      if (info.enabledState !== EnabledState.Running) throw new Error(`vmStart returned with ${name} ${info.state}, not Running`);
      return info;
    };
    for (let i = 0; i < plan.vms; i++) {
      const info = await startVm(`idle${i + 1}`);
      if (!info.pids.vmwp || !info.pids.partition) throw new Error(`idle${i + 1} is Running without a VMWP and a partition pid`);
      vmPids.push({ vmwp: info.pids.vmwp, partition: info.pids.partition });
    }
    progress(`${plan.vms} VMs Running; letting them settle for ${plan.hostSettleMs / 1000} s (past their start-up collections)`);
    await sleep(plan.hostSettleMs);
    checkQuiet('the idle host window');
    const pids = hostProcesses(rec.hostId);
    // The host keeps a spare worker (a VMWP and its partition process, code loaded, no VM: `up
    // --spare`, default 1); it is one of the host's processes, and its CPU counts with theirs.
    const spares = (await m.request<ProcessInfo[]>('ps')).filter((p) => p.warm === 'spare').length;
    const expected = 2 + 2 * plan.vms + spares;
    if (pids.length !== expected) progress(`WARNING: the host has ${pids.length} processes, expected ${expected} (${plan.vms} VMs, ${spares} spare worker processes)`);
    const vmwpKiB = vmPids.map((v) => pssKiB(v.vmwp) ?? 0);
    const partKiB = vmPids.map((v) => pssKiB(v.partition) ?? 0);
    const hvKiB = pssKiB(rec.pids.hypervisor) ?? 0;
    const rootKiB = pssKiB(rec.pids.root) ?? 0;
    progress(`measuring the host's ${pids.length} processes for ${plan.windowMs / 1000} s`);
    const roles = new Map(pids.map((p) => [p, roleOf(p)]));
    const hostCpu = await measureCpu(pids, plan.windowMs, (p) => roles.get(p) ?? null);
    if (hostCpu.missing > 0) progress(`WARNING: ${hostCpu.missing} host processes came or went during the window`);

    // (b') the same host with the periodic integration services off: what is left is hvlab's own.
    let hostCpuNoPeriodicIc: HostBenchResult['hostCpuNoPeriodicIc'] = null;
    try {
      for (let i = 0; i < plan.vms; i++) {
        for (const svc of ['heartbeat', 'timesync']) await m.request('vmIc', { name: `idle${i + 1}`, enable: null, disable: svc }, 10_000);
      }
      // The last exchanges under way finish (a tick's answers, the services' close) before the window.
      await sleep(Math.min(2000, plan.settleMs));
      checkQuiet('the window without periodic integration services');
      progress(`heartbeat and time sync off on every VM: measuring the host's ${pids.length} processes for ${plan.windowMs / 1000} s again`);
      const off = await measureCpu(pids, plan.windowMs);
      if (off.missing > 0) progress(`WARNING: ${off.missing} host processes came or went during the window`);
      hostCpuNoPeriodicIc = { ...off.all, perVmPercent: round(off.all.percent / plan.vms, 3) };
    } catch (e) {
      progress(`WARNING: could not turn the periodic integration services off (${(e as Error).message}); that window is not measured`);
    }

    // (c) many VMs on the same host.
    let many: HostBenchResult['many'] = null;
    if (plan.many > plan.vms) {
      checkQuiet('many VMs');
      progress(`starting idle VMs until ${plan.many} are Running`);
      const before = startTimes.length;
      const t0 = Date.now();
      for (let i = plan.vms; i < plan.many; i++) {
        try {
          await startVm(`idle${i + 1}`);
        } catch (e) {
          failures.push(`idle${i + 1}: ${(e as Error).message}`);
          if (failures.length >= 3) break;
        }
        if ((i + 1) % 10 === 0) progress(`${i + 1} VMs started`);
      }
      const totalS = round((Date.now() - t0) / 1000, 1);
      const list = await m.request<VmInfo[]>('vmList', {}, 30_000);
      const running = list.filter((v) => v.enabledState === EnabledState.Running).length;
      const times = startTimes.slice(before);
      many = {
        target: plan.many, running, totalS, failures,
        startP50Ms: times.length ? round(percentile(times, 0.5), 1) : null,
        startMaxMs: times.length ? round(Math.max(...times), 1) : null,
      };
      progress(`${running} of ${plan.many} VMs Running (${totalS} s of starts)`);
    }
    mgmt.close();
    mgmt = null;
    progress('bringing the host down');
    const d = await down(paths);
    if (!d.graceful) progress(`the host did not stop gracefully (killed ${d.killed}, unlinked ${d.shm} shm files)`);

    const byRole = Object.fromEntries(ROLES.map((r) => [r, hostCpu.groups.get(r) ?? { processes: 0, percent: 0, schedstatMs: 0, schedstatPercent: 0 }])) as Record<Role, CpuStats>;
    const perVm = pssStats(vmwpKiB.map((k, i) => k + partKiB[i]!));
    const bareNode = pssStats(bareNodeKiB);
    const result: HostBenchResult = {
      bench: 'host',
      vms: plan.vms,
      lps: LPS,
      windowMs: plan.windowMs,
      hostSettleMs: plan.hostSettleMs,
      hostCpu: { ...hostCpu.all, perVmPercent: round(hostCpu.all.percent / plan.vms, 3), byRole },
      hostCpuNoPeriodicIc,
      baselineCpu: baseCpu.all,
      pss: { perVm, vmwp: pssStats(vmwpKiB), partition: pssStats(partKiB), hypervisorMiB: round(hvKiB / 1024, 1), rootMiB: round(rootKiB / 1024, 1), bareNode },
      many,
      ratios: {
        cpuVsBaseline: round(hostCpu.all.schedstatMs / Math.max(baseCpu.all.schedstatMs, 0.001), 1),
        msPerRunVsBaseline: round(msPerRun(hostCpu.all) / Math.max(msPerRun(baseCpu.all), 1e-6), 2),
        pssPerVmVsTwoBareNodes: round(perVm.meanMiB / (2 * bareNode.meanMiB), 2),
      },
      disturbance,
      quick,
    };
    await cleanup();
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${table(result)}\n`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
