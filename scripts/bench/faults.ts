/**
 * `pnpm bench faults [--json] [--quick]`: what fault injection (issue 13) costs when no fault
 * fires, and how precisely faults act, with real processes: one host (`up`, 2 LPs), four idle VMs
 * (k0, k1, k2 for the VMBus part, pz for pauses), the home's nemesis, and `hvlab fault inject
 * --wait` CLIs. Every number stands next to a baseline measured in the same run, as a ratio.
 *
 *  1. VMBus fault wrappers on the fast path. Every channel end of a VM is a FaultyTransport
 *     (packages/vmbus/src/faults.ts) whether or not a fault is active. The round trip is a KVP get
 *     through the management API (root → VMWP → the kvp channel's signalled shm ring → the guest
 *     and back), under three conditions:
 *       - no fault on the VM (the baseline);
 *       - a vmbus fault active on ANOTHER channel of the VM (heartbeat): kvp's end is checked per
 *         packet and signal, and no fate is drawn or applied;
 *       - a vmbus fault on kvp itself whose only rate (drop 1e-9) never fires: every packet's fate
 *         is drawn (7 draws), copied and queued through the wrapper's pump, and nothing is applied.
 *     Switching a fault takes an inject (tens of ms), so the conditions run side by side on three
 *     VMs instead: in round r VM i has condition (i + r) mod 3, and the round trips go to the VMs
 *     one by one in turn, so every condition sees every VM equally and load that comes and goes
 *     (this is a shared 2-CPU machine) hits all three alike.
 *     Each round then delays one VM's kvp packets by D: the host's request waits D and the
 *     guest's answer does not, so a round trip should grow by exactly D: (p50 delayed − p50 none) / D.
 *  2. Fault timing. N pauses of pz's partition process (`--for 500ms`), watched from /proc every
 *     ~1 ms: when the process is seen stopped after the request is sent, how long it stays stopped
 *     against the 500 ms asked for (and the nemesis's own record, endedAt − startedAt), and how
 *     late it runs again after the fault's due end. Then the lease: a `hvlab fault inject pause
 *     --for 30s --wait` CLI is killed with SIGKILL, and the time until its fault ends (owner-gone)
 *     is set against the lease (OWNER_LEASE_MS, 5 s; renewed every 200 ms, checked every 500 ms).
 *  3. Injection latency: an `inject` round trip through the nemesis (a pause: resolved and
 *     signalled by the nemesis itself; a vmbus fault: handed on to the root and the VMWP) against a
 *     `list` round trip, the least a nemesis request costs. Each injected fault is cleared at once.
 *     Beside them, readWorld timed here: the scan of the home and of /proc the nemesis does first
 *     for every inject (it grows with the processes on the machine).
 *
 * --quick (or HVLAB_BENCH_QUICK=1): every part with a few iterations (one owner-gone kill, against a
 * lease of QUICK_LEASE_MS: HVLAB_TEST_OWNER_LEASE_MS, which every process of the run inherits), for CI.
 *
 * Everything lives under a temporary HVLAB_HOME and is removed afterwards, whatever happens: the
 * nemesis is stopped (every fault undone), the CLIs are killed, the host is brought down and
 * swept, and the run fails if any process, /dev/shm file or nemesis is left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IcServiceInfo, VmInfo } from '../../packages/protocol/src/index.js';
import { hostPaths } from '../../packages/runtime/src/paths.js';
import { MgmtClient, down, readHost, sweepHost, up } from '@hvlab/host';
import { NemesisClient, OWNER_LEASE_MS, nemesisPids, processState, readWorld, stopNemesis, type FaultRecord, type FaultRequest } from '@hvlab/faults';
import { exited, percentile, QUICK_NOTE, quickRequested, round, reportLeftovers, disturbanceTracker, disturbanceLine, type Disturbance, hostIdsUnder, sweepHome } from './common.js';

interface Plan {
  /** VMBus part: interleaved rounds, each one block of `block` round trips per condition. */
  rounds: number;
  block: number;
  /** Untimed round trips first (the root's, VMWP's and guest's paths warm up). */
  warmup: number;
  /** Round trips per round with the delay fault on. */
  delayedBlock: number;
  /** Pauses of PAUSE_MS. */
  pauses: number;
  /** `--wait` CLIs killed. */
  kills: number;
  /** Requests of each kind in the injection-latency part. */
  requests: number;
}
const FULL: Plan = { rounds: 30, block: 15, warmup: 30, delayedBlock: 2, pauses: 20, kills: 3, requests: 40 };
const QUICK: Plan = { rounds: 3, block: 3, warmup: 5, delayedBlock: 1, pauses: 2, kills: 1, requests: 3 };
const LPS = 2;
/** The owners' lease in a quick run (its nemesis's HVLAB_TEST_OWNER_LEASE_MS): one lapse is waited out, and it measures nothing. */
const QUICK_LEASE_MS = 2000;
const VM_MEMORY = '16M';
/** The VMs of part 1: each takes each condition in turn. */
const KVP_VMS = ['k0', 'k1', 'k2'] as const;
/** The delay of part 1's delay fault (ms). */
const DELAY_MS = 50;
/** Each pause of part 2 (ms). */
const PAUSE_MS = 500;
/** The pause a killed `--wait` CLI holds (ms): far longer than the lease, so only the lease ends it. */
const HELD_PAUSE_MS = 30_000;
/** A fault that must outlive its block (cleared explicitly). */
const LONG_MS = 600_000;
/** A rate that never fires in a run, so the whole fate path runs and applies nothing. */
const NEVER = 1e-9;
/** A step that takes longer than this is stuck. */
const STUCK_MS = 20_000;

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cliBin = join(repo, 'packages', 'cli', 'bin', 'hvlab.mjs');

interface Latency {
  n: number;
  p50: number;
  p99: number;
  mean: number;
}
interface P50Max {
  n: number;
  p50: number;
  max: number;
}

export interface FaultsBenchResult {
  bench: 'faults';
  lps: number;
  /** Part 1: KVP get round trips (ms). */
  vmbus: {
    none: Latency;
    otherChannel: Latency;
    sameChannelNeverFiring: Latency;
    delayed: Latency;
    delayMs: number;
  };
  /** Part 2: pauses of PAUSE_MS, as seen in /proc and as the nemesis recorded them (ms). */
  pause: {
    requestedMs: number;
    /** Request sent → process seen stopped. */
    startLagMs: P50Max;
    /** The inject round trip of those requests. */
    injectMs: P50Max;
    /** Seen stopped → seen running again. */
    stoppedMs: P50Max;
    /** Seen running again − the fault's due end (endsAt). */
    endLateMs: P50Max;
    /** The record's endedAt − startedAt. */
    recordedMs: P50Max;
  };
  /** Part 2: SIGKILL of a `--wait` CLI → its fault ended (owner-gone), in ms. */
  ownerGone: { leaseMs: number; endMs: P50Max; reasons: string[] };
  /** Part 3: nemesis round trips (ms), and readWorld here: the scan of the home and /proc the nemesis does for every inject. */
  requests: { list: Latency; injectPause: Latency; injectVmbus: Latency; readWorld: Latency };
  ratios: {
    otherChannelVsNone: number;
    sameChannelNeverFiringVsNone: number;
    /** (delayed p50 − none p50) / DELAY_MS. */
    delayPrecision: number;
    pauseStoppedVsRequested: { p50: number; max: number };
    pauseRecordedVsRequested: { p50: number; max: number };
    ownerGoneVsLease: { p50: number; max: number };
    injectPauseVsList: number;
    injectVmbusVsList: number;
  };
  disturbance: Disturbance;
  quick: boolean;
}

// ---- helpers ------------------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Epoch milliseconds with a fraction (the nemesis's record times are Date.now() in the same clock). */
const wall = (): number => performance.timeOrigin + performance.now();

function progress(msg: string): void {
  process.stderr.write(`[bench faults] ${msg}\n`);
}

function latency(ms: number[]): Latency {
  if (ms.length === 0) throw new Error('no samples');
  return {
    n: ms.length,
    p50: round(percentile(ms, 0.5), 3),
    p99: round(percentile(ms, 0.99), 3),
    mean: round(ms.reduce((a, b) => a + b, 0) / ms.length, 3),
  };
}

function p50max(xs: number[], digits = 1): P50Max {
  if (xs.length === 0) throw new Error('no samples');
  return { n: xs.length, p50: round(percentile(xs, 0.5), digits), max: round(Math.max(...xs), digits) };
}

/** Milliseconds `fn` takes. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}


/**
 * Watches `pid` from /proc every ~1 ms from now: when it is first seen stopped (state T), and
 * when it is first seen running again after that (epoch ms); gives up after `timeoutMs`.
 */
async function watchStop(pid: number, timeoutMs: number): Promise<{ stoppedAt: number | null; runningAt: number | null }> {
  const until = wall() + timeoutMs;
  let stoppedAt: number | null = null;
  for (;;) {
    const st = processState(pid);
    const now = wall();
    if (st === null) return { stoppedAt, runningAt: null };
    if (stoppedAt === null && st === 'T') stoppedAt = now;
    else if (stoppedAt !== null && st !== 'T') return { stoppedAt, runningAt: now };
    if (now > until) return { stoppedAt, runningAt: null };
    await sleep(1);
  }
}

// ---- the table ----------------------------------------------------------------------------------

function table(r: FaultsBenchResult): string {
  const lat = (l: Latency): string => `${l.n} ${l.p50.toFixed(3)} ${l.p99.toFixed(3)} ${l.mean.toFixed(3)}`;
  const pm = (x: P50Max): string => `${x.n} ${x.p50} ${x.max}`;
  const v = r.vmbus;
  const q = r.ratios;
  const pad = (s: string): string => s.padEnd(58);
  const lines = [
    `faults bench: one host (${r.lps} LPs), idle VMs ${KVP_VMS.join(', ')} (KVP) and pz (pauses), ${VM_MEMORY} each; every ratio against a baseline measured in this run`,
    '',
    'VMBus fast path: KVP get through the management API (ms)   n, p50, p99, mean',
    `${pad('no fault on the VM (baseline)')}${lat(v.none)}`,
    `${pad('a vmbus fault on another channel (heartbeat)')}${lat(v.otherChannel)}`,
    `${pad('a never-firing vmbus fault on kvp itself')}${lat(v.sameChannelNeverFiring)}`,
    `${pad(`kvp with a delay fault of ${v.delayMs} ms`)}${lat(v.delayed)}`,
    `${pad('ratio other channel / none (p50)')}${q.otherChannelVsNone.toFixed(3)}  (aim: 1)`,
    `${pad('ratio never-firing on kvp / none (p50)')}${q.sameChannelNeverFiringVsNone.toFixed(3)}`,
    `${pad('ratio (delayed - none) / delay (p50)')}${q.delayPrecision.toFixed(3)}  (aim: 1)`,
    '',
    `Fault timing: pauses of pz's partition process, --for ${r.pause.requestedMs}ms, watched in /proc (ms)   n, p50, max`,
    `${pad('request sent to process seen stopped')}${pm(r.pause.startLagMs)}`,
    `${pad('inject round trip')}${pm(r.pause.injectMs)}`,
    `${pad('seen stopped')}${pm(r.pause.stoppedMs)}`,
    `${pad('seen running again after the due end')}${pm(r.pause.endLateMs)}`,
    `${pad('recorded endedAt - startedAt')}${pm(r.pause.recordedMs)}`,
    `${pad('ratio seen stopped / requested (p50, max)')}${q.pauseStoppedVsRequested.p50.toFixed(3)} ${q.pauseStoppedVsRequested.max.toFixed(3)}  (aim: 1)`,
    `${pad('ratio recorded / requested (p50, max)')}${q.pauseRecordedVsRequested.p50.toFixed(3)} ${q.pauseRecordedVsRequested.max.toFixed(3)}  (aim: 1)`,
    `${pad(`kill -9 of a --wait CLI to its fault ended, ms`)}${pm(r.ownerGone.endMs)}  (${r.ownerGone.reasons.join(', ')})`,
    `${pad(`ratio to the lease of ${r.ownerGone.leaseMs} ms (p50, max)`)}${q.ownerGoneVsLease.p50.toFixed(3)} ${q.ownerGoneVsLease.max.toFixed(3)}  (expected ${Number((1 - 200 / r.ownerGone.leaseMs).toFixed(2))} to ${Number((1 + 500 / r.ownerGone.leaseMs).toFixed(2))}: renewed every 200 ms, checked every 500 ms)`,
    '',
    'Nemesis requests: round trip through its socket (ms)   n, p50, p99, mean',
    `${pad('list (baseline)')}${lat(r.requests.list)}`,
    `${pad('inject pause (nemesis signals it)')}${lat(r.requests.injectPause)}`,
    `${pad('inject vmbus (through the root and the VMWP)')}${lat(r.requests.injectVmbus)}`,
    `${pad('readWorld in this process (one per inject)')}${lat(r.requests.readWorld)}`,
    `${pad('ratio inject pause / list (p50)')}${q.injectPauseVsList.toFixed(2)}`,
    `${pad('ratio inject vmbus / list (p50)')}${q.injectVmbusVsList.toFixed(2)}`,
    '',
    disturbanceLine(r.disturbance),
  ];
  if (r.quick) lines.push(QUICK_NOTE);
  return lines.join('\n');
}

// ---- the run ------------------------------------------------------------------------------------

export async function main(args: string[]): Promise<void> {
  let json = false;
  for (const a of args) {
    if (a === '--json') json = true;
    else if (a !== '--quick') throw new Error(`unknown argument "${a}" (usage: pnpm bench faults [--json] [--quick])`);
  }
  const quick = quickRequested(args);
  const plan = quick ? QUICK : FULL;
  // The nemesis this run starts (and its host, and its CLIs) inherit it.
  const leaseMs = quick ? QUICK_LEASE_MS : OWNER_LEASE_MS;
  if (quick) process.env.HVLAB_TEST_OWNER_LEASE_MS = String(leaseMs);

  const home = mkdtempSync(join(tmpdir(), 'hvlab-bench-faults-'));
  const paths = hostPaths(home);
  const hostIds: string[] = [];
  /** Every pid of a process this run made (directly, through the host or the nemesis), checked at the end. */
  const tracked = new Set<number>();
  const clis = new Set<ChildProcess>();
  let mgmt: MgmtClient | null = null;
  let nem: NemesisClient | null = null;
  const tracker = disturbanceTracker(hostIds);
  const checkQuiet = (part: string): void => {
    const n = tracker.sample();
    if (n > 0) progress(`WARNING: ${n} processes of other hvlab hosts are running during ${part}; the numbers are disturbed`);
  };
  // The nemesis leaves by itself after 30 s without a request; a restart must not land inside a
  // measured request. It inherits this environment (it is started from here), and is stopped at the end.
  const idleBefore = process.env.HVLAB_NEMESIS_IDLE_MS;
  process.env.HVLAB_NEMESIS_IDLE_MS = String(3_600_000);

  let aborting = false;
  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      for (const c of clis) if (!exited(c)) c.kill('SIGKILL');
      nem?.close();
      nem = null;
      mgmt?.close();
      mgmt = null;
      // Faults first: nothing stays injected, and no stopped process holds the teardown up.
      for (const p of nemesisPids(home)) tracked.add(p);
      try {
        await stopNemesis(home);
      } catch (e) {
        progress(`stopping the nemesis failed: ${(e as Error).message}`);
      }
      try {
        await down(paths);
      } catch (e) {
        progress(`down failed: ${(e as Error).message}`);
      }
      // After a signal, sweep until nothing has run under our home for a second.
      await sweepHome(home, paths, hostIds, aborting);
      // stopNemesis ends it; one still here (or started since) is a leak: killed, and the run fails.
      const nemeses = nemesisPids(home);
      if (nemeses.length > 0) {
        progress(`WARNING: the nemesis was still running after it was stopped (pids ${nemeses.join(', ')}); killed`);
        process.exitCode = 1;
      }
      for (const p of nemeses) {
        tracked.add(p);
        try {
          process.kill(p, 'SIGKILL');
        } catch { /* gone */ }
      }
      for (const c of clis) if (c.pid !== undefined) tracked.add(c.pid);
      rmSync(paths.sockDir, { recursive: true, force: true });
      rmSync(home, { recursive: true, force: true });
      await reportLeftovers('faults', tracked, hostIds);
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
    checkQuiet('start-up');
    progress(`bringing a host up (${LPS} LPs)`);
    const rec = await up(paths, { lps: LPS });
    hostIds.push(rec.hostId);
    tracked.add(rec.pids.hypervisor).add(rec.pids.root);
    progress(`host ${rec.hostId} is up (hypervisor pid ${rec.pids.hypervisor}, root pid ${rec.pids.root})`);
    mgmt = new MgmtClient(paths.mgmtEndpoint, { watch: readHost(paths)! });
    const m = mgmt;
    const vms = new Map<string, VmInfo>();
    for (const name of [...KVP_VMS, 'pz']) {
      await m.request('vmNew', { name, memory: VM_MEMORY, workload: 'idle' });
      const info = await m.request<VmInfo>('vmStart', { name }, 60_000);
      if (!info.pids.vmwp || !info.pids.partition) throw new Error(`${name} is ${info.state} without a VMWP and a partition pid`);
      tracked.add(info.pids.vmwp).add(info.pids.partition);
      vms.set(name, info);
    }
    const ic = async (name: string, service: string): Promise<string> =>
      (await m.request<IcServiceInfo[]>('vmIc', { name }, 10_000)).find((x) => x.service === service)?.status ?? 'missing';
    for (const name of KVP_VMS) {
      for (let t0 = Date.now(); ; await sleep(200)) {
        if ((await ic(name, 'kvp')) === 'OK' && (await ic(name, 'heartbeat')) === 'OK') break;
        if (Date.now() - t0 > STUCK_MS) throw new Error(`${name}'s KVP and heartbeat services did not come up within ${STUCK_MS / 1000} s`);
      }
      await m.request('vmKvp', { name, op: 'set', key: 'k', value: 'v' }, 10_000);
    }
    progress(`VMs ${[...vms.keys()].join(', ')} Running (partition pids ${[...vms.values()].map((v) => v.pids.partition).join(', ')})`);

    nem = await NemesisClient.connect(home);
    const n = nem;
    for (const p of nemesisPids(home)) tracked.add(p);
    const inject = async (kind: FaultRequest['kind'], target: string, forMs: number, params: Record<string, unknown> = {}): Promise<FaultRecord> =>
      await n.inject({ kind, target, forMs, params });
    const kvpGet = (vm: string): Promise<number> => timed(() => m.request('vmKvp', { name: vm, op: 'get', key: 'k' }, STUCK_MS));

    // ---- 1. VMBus fault wrappers on the fast path ----
    checkQuiet('the VMBus part');
    progress(`VMBus: ${plan.rounds} rounds of ${plan.block} KVP gets per condition, one per VM in turn; ${plan.delayedBlock} delayed per round`);
    type Condition = 'none' | 'otherChannel' | 'sameChannelNeverFiring';
    const conditions: Array<{ key: Condition; params: Record<string, unknown> | null }> = [
      { key: 'none', params: null },
      { key: 'otherChannel', params: { channel: 'heartbeat', drop: NEVER } },
      { key: 'sameChannelNeverFiring', params: { channel: 'kvp', drop: NEVER } },
    ];
    const samples: Record<Condition | 'delayed', number[]> = { none: [], otherChannel: [], sameChannelNeverFiring: [], delayed: [] };
    for (let i = 0; i < plan.warmup; i++) for (const vm of KVP_VMS) await kvpGet(vm);
    for (let r = 0; r < plan.rounds; r++) {
      // Round r gives VM i condition (i + r) mod 3: every VM has every condition equally often, and
      // the conditions' round trips alternate one by one, so load that comes and goes hits them alike.
      const cond = KVP_VMS.map((_, i) => conditions[(i + r) % conditions.length]!);
      const set: FaultRecord[] = [];
      for (const [i, c] of cond.entries()) if (c.params) set.push(await inject('vmbus', `vm:${KVP_VMS[i]}`, LONG_MS, c.params));
      for (const vm of KVP_VMS) await kvpGet(vm); // warm-up after the switch
      for (let j = 0; j < plan.block; j++) {
        for (let k = 0; k < KVP_VMS.length; k++) {
          const i = (j + k) % KVP_VMS.length;
          samples[cond[i]!.key].push(await kvpGet(KVP_VMS[i]!));
        }
      }
      for (const f of set) await n.clear(f.id);
      // The delay fault, on one VM per round in turn.
      const vm = KVP_VMS[r % KVP_VMS.length]!;
      const d = await inject('vmbus', `vm:${vm}`, LONG_MS, { channel: 'kvp', delayMs: DELAY_MS });
      await kvpGet(vm);
      for (let j = 0; j < plan.delayedBlock; j++) samples.delayed.push(await kvpGet(vm));
      await n.clear(d.id);
    }
    const vmbus = {
      none: latency(samples.none),
      otherChannel: latency(samples.otherChannel),
      sameChannelNeverFiring: latency(samples.sameChannelNeverFiring),
      delayed: latency(samples.delayed),
      delayMs: DELAY_MS,
    };
    progress(`VMBus: p50 none ${vmbus.none.p50} ms, other channel ${vmbus.otherChannel.p50} ms, never-firing ${vmbus.sameChannelNeverFiring.p50} ms, delayed ${vmbus.delayed.p50} ms`);

    // ---- 2. fault timing: pauses, then the lease of a killed --wait CLI ----
    checkQuiet('the pause part');
    const pzPid = vms.get('pz')!.pids.partition!;
    progress(`timing: ${plan.pauses} pauses of ${PAUSE_MS} ms of pz's partition (pid ${pzPid})`);
    const lag: number[] = [];
    const injectRt: number[] = [];
    const stopped: number[] = [];
    const late: number[] = [];
    const recorded: number[] = [];
    for (let i = 0; i < plan.pauses; i++) {
      const sent = wall();
      const watching = watchStop(pzPid, PAUSE_MS + STUCK_MS);
      const f = await inject('pause', 'vm:pz', PAUSE_MS);
      injectRt.push(wall() - sent);
      const seen = await watching;
      if (seen.stoppedAt === null || seen.runningAt === null) throw new Error(`pause ${f.id} of pid ${pzPid}: ${seen.stoppedAt === null ? 'never seen stopped' : `not seen running again within ${STUCK_MS / 1000} s of its end`}`);
      let done: FaultRecord | undefined;
      for (let t0 = Date.now(); ; await sleep(20)) {
        done = (await n.list({ all: true })).find((x) => x.id === f.id && x.state !== 'active');
        if (done) break;
        if (Date.now() - t0 > STUCK_MS) throw new Error(`pause ${f.id} was not recorded as ended within ${STUCK_MS / 1000} s`);
      }
      if (done.endReason !== 'expired') throw new Error(`pause ${f.id} ended ${done.endReason}, not expired`);
      lag.push(seen.stoppedAt - sent);
      stopped.push(seen.runningAt - seen.stoppedAt);
      late.push(seen.runningAt - f.endsAt);
      recorded.push(done.endedAt! - done.startedAt);
      await sleep(100);
    }
    const pause = {
      requestedMs: PAUSE_MS,
      startLagMs: p50max(lag),
      injectMs: p50max(injectRt),
      stoppedMs: p50max(stopped),
      endLateMs: p50max(late),
      recordedMs: p50max(recorded, 0),
    };
    progress(`timing: seen stopped p50 ${pause.stoppedMs.p50} ms (max ${pause.stoppedMs.max}), recorded p50 ${pause.recordedMs.p50} ms`);

    progress(`lease: ${plan.kills} \`hvlab fault inject pause --for ${HELD_PAUSE_MS / 1000}s --wait\` CLIs killed with SIGKILL`);
    const ownerEnd: number[] = [];
    const reasons: string[] = [];
    for (let i = 0; i < plan.kills; i++) {
      const c = spawn(process.execPath, [cliBin, 'fault', 'inject', 'pause', '--target', 'vm:pz', '--for', `${HELD_PAUSE_MS / 1000}s`, '--wait'], {
        env: { ...process.env, HVLAB_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      clis.add(c);
      if (c.pid !== undefined) tracked.add(c.pid);
      c.on('error', () => undefined);
      let outText = '';
      let errText = '';
      c.stderr!.on('data', (d: Buffer) => (errText = (errText + d.toString()).slice(-2000)));
      const id = await new Promise<string>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`the --wait CLI did not report its fault within ${STUCK_MS / 1000} s: ${errText}`)), STUCK_MS);
        c.stdout!.on('data', (d: Buffer) => {
          outText += d.toString();
          const mm = /^fault (\S+):/m.exec(outText);
          if (mm) {
            clearTimeout(t);
            res(mm[1]!);
          }
        });
        c.once('exit', (code, sig) => {
          clearTimeout(t);
          rej(new Error(`the --wait CLI exited (${sig ?? code}) before reporting its fault: ${errText}`));
        });
      });
      const held = (await n.list()).find((x) => x.id === id);
      if (!held || held.owner === null || processState(pzPid) !== 'T') throw new Error(`fault ${id} of the --wait CLI is not an owned, active pause`);
      // Let a few renewals pass, so the kill lands at a random point of the renew cycle.
      await sleep(700 + 150 * i);
      if (exited(c)) throw new Error(`the --wait CLI holding fault ${id} exited by itself (${c.signalCode ?? c.exitCode})`);
      const gone = new Promise<void>((r) => c.once('exit', () => r()));
      const killedAt = wall();
      c.kill('SIGKILL');
      await gone;
      let done: FaultRecord | undefined;
      for (let t0 = Date.now(); ; await sleep(10)) {
        done = (await n.list({ all: true })).find((x) => x.id === id && x.state !== 'active');
        if (done) break;
        if (Date.now() - t0 > leaseMs + STUCK_MS) throw new Error(`fault ${id} did not end within ${(leaseMs + STUCK_MS) / 1000} s of its owner's kill`);
      }
      if (done.endReason !== 'owner-gone') throw new Error(`fault ${id} of the killed --wait CLI ended ${done.endReason}, not owner-gone`);
      ownerEnd.push(done.endedAt! - killedAt);
      reasons.push(done.endReason);
      if (processState(pzPid) === 'T') throw new Error(`fault ${id} ended (${done.endReason}) but pz's partition is still stopped`);
      await sleep(100);
    }
    const ownerGone = { leaseMs, endMs: p50max(ownerEnd, 0), reasons: [...new Set(reasons)] };
    progress(`lease: fault ended ${ownerGone.endMs.p50} ms after the kill (p50; ${ownerGone.reasons.join(', ')})`);

    // ---- 3. injection latency against list ----
    checkQuiet('the request part');
    progress(`requests: ${plan.requests} each of list, inject pause and inject vmbus`);
    const lists: number[] = [];
    const injPause: number[] = [];
    const injVmbus: number[] = [];
    const worlds: number[] = [];
    for (let i = 0; i < plan.requests + 1; i++) {
      const l = await timed(() => n.list());
      const w = await timed(() => readWorld(home));
      let fp: FaultRecord | null = null;
      const p = await timed(async () => (fp = await inject('pause', 'vm:pz', LONG_MS)));
      await n.clear(fp!.id);
      let fv: FaultRecord | null = null;
      const v = await timed(async () => (fv = await inject('vmbus', 'vm:k0', LONG_MS, { channel: 'heartbeat', drop: NEVER })));
      await n.clear(fv!.id);
      if (i === 0) continue; // warm-up
      lists.push(l);
      injPause.push(p);
      injVmbus.push(v);
      worlds.push(w);
    }
    const requests = { list: latency(lists), injectPause: latency(injPause), injectVmbus: latency(injVmbus), readWorld: latency(worlds) };
    checkQuiet('the end');
    const left = await n.list();
    if (left.length > 0) throw new Error(`faults still active at the end: ${left.map((f) => f.id).join(', ')}`);

    const ratio = (a: number, b: number, digits = 3): number => round(a / b, digits);
    const result: FaultsBenchResult = {
      bench: 'faults',
      lps: LPS,
      vmbus,
      pause,
      ownerGone,
      requests,
      ratios: {
        otherChannelVsNone: ratio(vmbus.otherChannel.p50, vmbus.none.p50),
        sameChannelNeverFiringVsNone: ratio(vmbus.sameChannelNeverFiring.p50, vmbus.none.p50),
        delayPrecision: ratio(vmbus.delayed.p50 - vmbus.none.p50, DELAY_MS),
        pauseStoppedVsRequested: { p50: ratio(percentile(stopped, 0.5), PAUSE_MS), max: ratio(Math.max(...stopped), PAUSE_MS) },
        pauseRecordedVsRequested: { p50: ratio(percentile(recorded, 0.5), PAUSE_MS), max: ratio(Math.max(...recorded), PAUSE_MS) },
        ownerGoneVsLease: { p50: ratio(percentile(ownerEnd, 0.5), leaseMs), max: ratio(Math.max(...ownerEnd), leaseMs) },
        injectPauseVsList: ratio(requests.injectPause.p50, requests.list.p50, 2),
        injectVmbusVsList: ratio(requests.injectVmbus.p50, requests.list.p50, 2),
      },
      disturbance: tracker.value,
      quick,
    };
    await cleanup();
    process.stdout.write(`${json ? JSON.stringify(result) : table(result)}\n`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (idleBefore === undefined) delete process.env.HVLAB_NEMESIS_IDLE_MS;
    else process.env.HVLAB_NEMESIS_IDLE_MS = idleBefore;
  }
}
