/**
 * `pnpm bench hypercall [--json] [--quick]`: what a hypercall and a VM start cost in hvlab, each next to a
 * baseline measured in the same run.
 *
 *  (a) hypercall round trip: a hypervisor process of our own (spawned as `hvlab up` does, with a
 *      root token we made), an HvClient session as partition 1, N sequential calls timed one by one:
 *      SignalEvent through the session's hypercall page (on a root event port of its own, so the
 *      hypervisor's hypercall thread serves it and queues the event on the page), and
 *      GetPartitionId through the socket. Baselines: the same number of round trips of two
 *      processes ping-ponging through a shared page with the shm addon's futex (both blocking,
 *      scripts/bench/futex-echo.ts), and of a msgpack message of the hypercall's shape to a bare
 *      ZeroMQ ROUTER echo process (scripts/bench/zmq-echo.ts).
 *  (b) VM start: a whole host (`up`), one VM ("b1", 16M, idle workload) created, started, turned off and deleted
 *      RUNS times; vmStart returns once the VM is Running. Each start finds the host's spare worker
 *      (root/src/spare.ts: its code loaded, no VM) loaded: the bench waits for it between runs. The
 *      same on a host with `--spare 0`, where each start spawns its worker and partition process
 *      (vmStartNoSpare), and with `--warm` (vmStartWarm). Baseline: spawning `node -e 0` until it
 *      exits.
 *
 * --quick (or HVLAB_BENCH_QUICK=1): the same steps with QUICK's counts, for CI.
 *
 * Everything lives under a temporary HVLAB_HOME and is removed afterwards, whatever happens:
 * the host is brought down, our own processes are killed, the host's /dev/shm files and socket
 * directory are removed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exited, percentile, spareLoaded, QUICK_NOTE, quickRequested, round, stopOwned, reportLeftovers, disturbanceTracker, disturbanceLine, spawnOwned, waitReady, type Disturbance, type Owned } from './common.js';
import { decode, encode, EnabledState, HvCall, HvStatus, siefpGpa, synicPageRegister, type HvClientMsg, type VmInfo } from '../../packages/protocol/src/index.js';
import { entries, hostPaths, nodeArgsFor, processEnv, type HostPaths } from '../../packages/runtime/src/paths.js';
import { pidAlive } from '../../packages/runtime/src/anchor.js';
import { dealer } from '../../packages/runtime/src/zmq.js';
import { HvClient } from '../../packages/runtime/src/hvclient.js';
import { createRegion, futexWait, futexWake, unlinkRegion } from '../../packages/shm/src/index.js';
import { MgmtClient } from '@hvlab/host';
import { down, sweepHost, up } from '@hvlab/host';

/** How many of each: round trips (after warm-up ones), VM starts, node spawns. */
interface Plan {
  n: number;
  warmup: number;
  vmRuns: number;
  spawnRuns: number;
}
const FULL: Plan = { n: 5000, warmup: 500, vmRuns: 5, spawnRuns: 5 };
/** Workers in the warm pool for the warm-start runs. */
const WARM = 2;
/** The VMs the starts make (and so the warm pool's shape). */
const VM_MEMORY = '16M';
const QUICK: Plan = { n: 200, warmup: 20, vmRuns: 1, spawnRuns: 2 };
const LPS = 2;
const here = dirname(fileURLToPath(import.meta.url));

export interface LatencyStats {
  p50Us: number;
  p99Us: number;
  meanUs: number;
  callsPerS: number;
  n: number;
}

export interface HypercallBenchResult {
  bench: 'hypercall';
  /** SignalEvent through the hypercall page. */
  hypercall: LatencyStats;
  /** SignalEvent through the page to a root port of the caller's own (the event comes back on its page). */
  hypercallRootEvent: LatencyStats;
  /** GetPartitionId through the hypervisor's socket. */
  hypercallSocket: LatencyStats;
  futexPingPong: LatencyStats;
  zmqEcho: LatencyStats;
  /** Of the page calls, how many the hypervisor's thread served itself. */
  pageCalls: { fast: number; forwarded: number };
  /** With the host's spare worker loaded (the default host). */
  vmStart: { p50Ms: number; runs: number[] };
  /** The same with `up --spare 0`: the start spawns its worker and partition process. */
  vmStartNoSpare: { p50Ms: number; runs: number[] };
  /** The same with `up --warm`: the start claims a worker started ahead of need. */
  vmStartWarm: { p50Ms: number; runs: number[]; pool: number };
  nodeSpawn: { p50Ms: number };
  disturbance: Disturbance;
  ratios: { hypercallVsFutexP50: number; hypercallVsZmqP50: number; socketHypercallVsZmqP50: number; vmStartVsNodeSpawnP50: number; vmStartNoSpareVsNodeSpawnP50: number; vmStartWarmVsNodeSpawnP50: number };
  quick: boolean;
}

// ---- helpers ------------------------------------------------------------------------------------

function latencyStats(nsPerCall: number[], wallNs: number): LatencyStats {
  const us = nsPerCall.map((ns) => ns / 1000);
  const mean = us.reduce((a, b) => a + b, 0) / us.length;
  return {
    p50Us: round(percentile(us, 0.5), 1),
    p99Us: round(percentile(us, 0.99), 1),
    meanUs: round(mean, 1),
    callsPerS: Math.round(us.length / (wallNs / 1e9)),
    n: us.length,
  };
}

/** Times `n` sequential round trips after `warmup` untimed ones. */
async function timeRoundTrips(warmup: number, n: number, once: () => Promise<void>): Promise<LatencyStats> {
  for (let i = 0; i < warmup; i++) await once();
  const samples = new Array<number>(n);
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await once();
    samples[i] = Number(process.hrtime.bigint() - t0);
  }
  return latencyStats(samples, Number(process.hrtime.bigint() - start));
}

function progress(msg: string): void {
  process.stderr.write(`[bench hypercall] ${msg}\n`);
}

// ---- the measurements ---------------------------------------------------------------------------

async function measureHypercall(hv: HvClient, plan: Plan): Promise<LatencyStats> {
  const first = await hv.call('GetPartitionId', {});
  const pid = (first.output as { partitionId?: number } | null)?.partitionId;
  if (first.status !== HvStatus.SUCCESS || pid !== 1) {
    throw new Error(`GetPartitionId as the root returned ${first.statusName} ${JSON.stringify(first.output)}, expected SUCCESS {partitionId: 1}`);
  }
  return timeRoundTrips(plan.warmup, plan.n, async () => {
    const r = await hv.call('GetPartitionId', {});
    if (r.status !== HvStatus.SUCCESS) throw new Error(`GetPartitionId failed with ${r.statusName}`);
  });
}

/**
 * SignalEvent through the page to an event port of a child partition (2 MiB, one VP, SynIC on,
 * its SINT masked), whose flag stays set after the first call: each call is the whole path (the
 * caller's page, the doorbell, the hypervisor's thread, the target's SIEF page) and wakes nobody.
 */
async function measurePageHypercall(hv: HvClient, plan: Plan): Promise<LatencyStats> {
  if (!hv.paged) throw new Error('the hypervisor gave the session no hypercall page (is the shm addon built?)');
  const { partitionId } = await hv.must<{ partitionId: number }>('CreatePartition', { memoryBytes: 2 * 1024 * 1024, name: 'bench' });
  await hv.must('InitializePartition', { partitionId });
  await hv.must('CreateVp', { partitionId, vpIndex: 0 });
  await hv.must('MapGpaPages', { partitionId, gpaPage: siefpGpa(0) / 4096, pageCount: 1 });
  await hv.must('SetVpRegisters', { partitionId, vpIndex: 0, values: { Scontrol: 1, Siefp: synicPageRegister(siefpGpa(0)), Sint3: (1 << 16) | 0x31 } });
  await hv.must('CreatePort', { partitionId, portId: 9, type: 2, vpIndex: 0, sint: 3, flagCount: 1 });
  await hv.must('ConnectPort', { partitionId: 1, connectionId: 0x7e02, portPartitionId: partitionId, portId: 9 });
  return timeRoundTrips(plan.warmup, plan.n, async () => {
    const r = await hv.call('SignalEvent', { connectionId: 0x7e02, flagNumber: 0 });
    if (r.status !== HvStatus.SUCCESS) throw new Error(`SignalEvent failed with ${r.statusName}`);
  });
}

/** SignalEvent through the page to a root event port of the session's own: each call also queues an event on its page and wakes its event loop. */
async function measurePageRootEvent(hv: HvClient, plan: Plan): Promise<LatencyStats> {
  const portId = 0x7e01;
  await hv.must('CreatePort', { partitionId: 1, portId, type: 2, vpIndex: 0, sint: 0, flagCount: 1 });
  await hv.must('ConnectPort', { partitionId: 1, connectionId: portId, portPartitionId: 1, portId });
  return timeRoundTrips(plan.warmup, plan.n, async () => {
    const r = await hv.call('SignalEvent', { connectionId: portId, flagNumber: 0 });
    if (r.status !== HvStatus.SUCCESS) throw new Error(`SignalEvent failed with ${r.statusName}`);
  });
}

/** Two processes, both blocking in the shm futex, passing a number back and forth through a page. */
async function measureFutexPingPong(home: string, plan: Plan, track: (pid: number) => void): Promise<LatencyStats> {
  const name = `hvlab-bench-futex-${process.pid}-${randomBytes(3).toString('hex')}`;
  const sab = createRegion(name, 4096);
  const w = new Int32Array(sab);
  const o = spawnOwned('futex echo', [...nodeArgsFor(join(here, 'futex-echo.ts')), name], { ...process.env });
  if (o.child.pid) track(o.child.pid);
  try {
    await waitReady(o, 20000);
    let v = 0;
    const once = (): void => {
      v++;
      Atomics.store(w, 0, v);
      futexWake(sab, 0);
      const end = Date.now() + 5000;
      while (Atomics.load(w, 1) !== v) {
        if (Date.now() > end) throw new Error('the futex echo did not answer within 5 s');
        futexWait(sab, 1, Atomics.load(w, 1), 100);
      }
    };
    return await timeRoundTrips(plan.warmup, plan.n, async () => once());
  } finally {
    Atomics.store(w, 0, -1);
    futexWake(sab, 0);
    await stopOwned(o, 3000);
    unlinkRegion(name);
    void home;
  }
}

async function measureZmqEcho(endpoint: string, plan: Plan): Promise<{ stats: LatencyStats; bytes: number }> {
  const sock = dealer();
  try {
    sock.connect(endpoint);
    let id = 0;
    // The same message a hypercall client sends for GetPartitionId.
    type HcMsg = Extract<HvClientMsg, { k: 'hc' }>;
    const message = (): HcMsg => ({ k: 'hc', id: ++id, code: HvCall.GetPartitionId, input: {} });
    const bytes = encode(message()).length;
    const stats = await timeRoundTrips(plan.warmup, plan.n, async () => {
      const m = message();
      await sock.send(encode(m));
      const [reply] = await sock.receive();
      if (decode<HcMsg>(reply!).id !== m.id) throw new Error('the echo server answered out of order');
    });
    return { stats, bytes };
  } finally {
    sock.close();
  }
}

/** Waits until the host's warm pool holds `n` loaded workers (`ps` lists them with no VM, warm: ready). */
async function warmPoolFull(mgmt: MgmtClient, n: number): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ps = await mgmt.request<Array<{ role: string; vm: string | null; warm?: string }>>('ps', {});
    // Loaded ones: a worker still loading its code would make the start a cold one.
    if (ps.filter((p) => p.role === 'vmwp' && p.vm === null && p.warm === 'ready').length >= n) return;
    if (Date.now() - t0 > 30000) throw new Error(`the warm pool did not reach ${n} workers within 30 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function measureVmStart(paths: HostPaths, plan: Plan, track: (pid: number | null) => void, warm = 0, spare = true): Promise<number[]> {
  const mgmt = new MgmtClient(paths.mgmtEndpoint);
  try {
    await mgmt.request('ping', {}, 10000);
    const runs: number[] = [];
    for (let i = 0; i < plan.vmRuns; i++) {
      // From the warm pool: every start finds it full (it refills between runs, untimed).
      if (warm > 0) await warmPoolFull(mgmt, warm);
      else if (spare) await spareLoaded(mgmt);
      // new -> Running, as the issue defines VM start time.
      const t0 = process.hrtime.bigint();
      await mgmt.request<VmInfo>('vmNew', { name: 'b1', memory: VM_MEMORY, workload: 'idle' });
      const info = await mgmt.request<VmInfo>('vmStart', { name: 'b1' });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      track(info.pids.vmwp);
      track(info.pids.partition);
      if (info.enabledState !== EnabledState.Running) throw new Error(`vmStart returned with b1 ${info.state}, not Running`);
      runs.push(round(ms, 1));
      progress(`vm start${warm ? ' (warm pool)' : ''} ${i + 1}/${plan.vmRuns}: ${ms.toFixed(1)} ms`);
      await mgmt.request<VmInfo>('vmTurnOff', { name: 'b1' });
      await mgmt.request('vmDelete', { name: 'b1' });
    }
    return runs;
  } finally {
    mgmt.close();
  }
}

async function measureNodeSpawn(plan: Plan): Promise<number[]> {
  const runs: number[] = [];
  for (let i = 0; i < plan.spawnRuns; i++) {
    const t0 = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      // The environment hvlab gives its own processes (processEnv), so that the baseline does not
      // pay for what they skip (NODE_EXTRA_CA_CERTS, ~57 ms here).
      const c = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore', env: processEnv() });
      c.once('error', reject);
      c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`node -e 0 exited with ${code}`))));
    });
    runs.push(round(Number(process.hrtime.bigint() - t0) / 1e6, 1));
  }
  return runs;
}

// ---- output -------------------------------------------------------------------------------------

function table(r: HypercallBenchResult, extra: { echoBytes: number; nodeRuns: number[] }): string {
  const pad = (s: string, w: number): string => s.padEnd(w);
  const num = (x: number | string, w: number): string => String(x).padStart(w);
  const lines = [
    `${pad('round trip', 36)}${num('n', 6)}${num('p50 µs', 10)}${num('p99 µs', 10)}${num('mean µs', 10)}${num('calls/s', 10)}`,
  ];
  const row = (name: string, s: LatencyStats): string =>
    `${pad(name, 36)}${num(s.n, 6)}${num(s.p50Us, 10)}${num(s.p99Us, 10)}${num(s.meanUs, 10)}${num(s.callsPerS, 10)}`;
  lines.push(row('hypercall SignalEvent (page)', r.hypercall));
  lines.push(row('  the same, event to our own page', r.hypercallRootEvent));
  lines.push(row('futex ping-pong (2 processes)', r.futexPingPong));
  lines.push(`${pad('  ratio page hypercall / futex (p50)', 36)}${num(r.ratios.hypercallVsFutexP50, 16)}`);
  lines.push(`${pad(`  page calls: ${r.pageCalls.fast} served by the thread, ${r.pageCalls.forwarded} forwarded`, 36)}`);
  lines.push(row('hypercall GetPartitionId (socket)', r.hypercallSocket));
  lines.push(row(`zmq echo (msgpack, ${extra.echoBytes} B)`, r.zmqEcho));
  lines.push(`${pad('  ratio page hypercall / zmq echo (p50)', 36)}${num(r.ratios.hypercallVsZmqP50, 16)}`);
  lines.push(`${pad('  ratio socket hypercall / zmq echo', 36)}${num(r.ratios.socketHypercallVsZmqP50, 16)}`);
  lines.push('');
  lines.push(`${pad('start', 36)}${num('runs', 6)}${num('p50 ms', 10)}  runs ms`);
  lines.push(`${pad('vm new+start b1 (16M, idle) to Running', 36)}${num(r.vmStart.runs.length, 6)}${num(r.vmStart.p50Ms, 10)}  ${r.vmStart.runs.join(' ')}`);
  lines.push(`${pad('  the same, no spare worker', 36)}${num(r.vmStartNoSpare.runs.length, 6)}${num(r.vmStartNoSpare.p50Ms, 10)}  ${r.vmStartNoSpare.runs.join(' ')}`);
  lines.push(`${pad('spawn `node -e 0` to exit', 36)}${num(extra.nodeRuns.length, 6)}${num(r.nodeSpawn.p50Ms, 10)}  ${extra.nodeRuns.join(' ')}`);
  lines.push(`${pad('  ratio vm start / node spawn (p50)', 36)}${num(r.ratios.vmStartVsNodeSpawnP50, 16)}`);
  lines.push(`${pad('  ratio, no spare worker', 36)}${num(r.ratios.vmStartNoSpareVsNodeSpawnP50, 16)}`);
  lines.push(`${pad(`vm new+start from a warm pool of ${r.vmStartWarm.pool}`, 36)}${num(r.vmStartWarm.runs.length, 6)}${num(r.vmStartWarm.p50Ms, 10)}  ${r.vmStartWarm.runs.join(' ')}`);
  lines.push(`${pad('  ratio warm vm start / node spawn (p50)', 36)}${num(r.ratios.vmStartWarmVsNodeSpawnP50, 16)}`);
  lines.push('', disturbanceLine(r.disturbance));
  if (r.quick) lines.push(QUICK_NOTE);
  return lines.join('\n');
}

// ---- main ---------------------------------------------------------------------------------------

export async function main(args: string[]): Promise<void> {
  let json = false;
  for (const a of args) {
    if (a === '--json') json = true;
    else if (a !== '--quick') throw new Error(`unknown argument "${a}" (usage: pnpm bench hypercall [--json] [--quick])`);
  }
  const quick = quickRequested(args);
  const plan = quick ? QUICK : FULL;

  const home = mkdtempSync(join(tmpdir(), 'hvlab-bench-'));
  const paths = hostPaths(home);
  const benchHostId = randomBytes(3).toString('hex');
  let upHostId: string | null = null;
  let hvProc: Owned | null = null;
  let echoProc: Owned | null = null;
  let hv: HvClient | null = null;
  /** Every pid of a process this run made (directly or through the host), checked at the end. */
  const tracked = new Set<number>();
  /** Host ids are ours as `up` hands them out: the tracker's list grows with them. */
  const ourHosts: string[] = [benchHostId];
  const disturbance = disturbanceTracker(ourHosts);
  disturbance.sample();

  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      hv?.close();
      try {
        await down(paths);
      } catch (e) {
        progress(`down failed: ${(e as Error).message}`);
      }
      await stopOwned(hvProc, 3000);
      await stopOwned(echoProc, 3000);
      for (const id of [benchHostId, upHostId]) if (id) sweepHost(paths, id);
      for (const o of [hvProc, echoProc]) if (o?.child.pid !== undefined && pidAlive(o.child.pid) && !exited(o.child)) o.child.kill('SIGKILL');
      rmSync(paths.sockDir, { recursive: true, force: true });
      rmSync(home, { recursive: true, force: true });
      for (const o of [hvProc, echoProc]) if (o?.child.pid !== undefined) tracked.add(o.child.pid);
      await reportLeftovers('hypercall', tracked, [benchHostId, upHostId].filter((id): id is string => id !== null));
    })();
    return cleaning;
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    // (a) hypercall round trips against a hypervisor of our own.
    progress(`starting a hypervisor (home ${home}, sockets ${paths.sockDir}, host ${benchHostId})`);
    mkdirSync(paths.sockDir, { recursive: true, mode: 0o700 });
    hvProc = spawnOwned('hypervisor', [...nodeArgsFor(join(here, 'bare-hypervisor.ts')), paths.sockDir, benchHostId, String(LPS)], {
      ...process.env, HVLAB_HOME: home, HVLAB_HOST_ID: benchHostId,
    });
    const rootToken = await waitReady(hvProc, 20000);
    hv = new HvClient(paths.hvEndpoint);
    await hv.connect({ partitionId: 1, token: rootToken, role: 'bench', vm: null });
    progress(`timing ${plan.n} SignalEvent hypercalls through the page (after ${plan.warmup} warm-up calls)`);
    const hypercall = await measurePageHypercall(hv, plan);
    progress(`timing ${plan.n} SignalEvent hypercalls to a root port of our own (after ${plan.warmup} warm-up calls)`);
    const hypercallRootEvent = await measurePageRootEvent(hv, plan);
    progress(`timing ${plan.n} GetPartitionId hypercalls through the socket (after ${plan.warmup} warm-up calls)`);
    const hypercallSocket = await measureHypercall(hv, plan);
    const hvStats = (await hv.ctl('stats')) as { hypercallPages?: { fastCalls: number; forwarded: number } } | null;
    const pageCalls = { fast: hvStats?.hypercallPages?.fastCalls ?? 0, forwarded: hvStats?.hypercallPages?.forwarded ?? 0 };
    hv.close();
    hv = null;
    await stopOwned(hvProc, 3000);
    sweepHost(paths, benchHostId);

    progress(`timing ${plan.n} futex ping-pongs between two processes (after ${plan.warmup} warm-up)`);
    const futexPingPong = await measureFutexPingPong(home, plan, (pid) => void tracked.add(pid));

    // (a') baseline: a bare ZeroMQ echo.
    const echoEndpoint = `ipc://${join(home, 'echo')}`;
    echoProc = spawnOwned('zmq echo server', [...nodeArgsFor(join(here, 'zmq-echo.ts')), echoEndpoint], { ...process.env });
    await waitReady(echoProc, 20000);
    progress(`timing ${plan.n} zmq echo round trips (after ${plan.warmup} warm-up)`);
    const echo = await measureZmqEcho(echoEndpoint, plan);
    await stopOwned(echoProc, 3000);

    // (b) VM start on a whole host.
    progress(`bringing a host up (${LPS} LPs)`);
    const rec = await up(paths, { lps: LPS });
    upHostId = rec.hostId;
    ourHosts.push(rec.hostId);
    disturbance.sample();
    progress(`host ${rec.hostId} is up (hypervisor pid ${rec.pids.hypervisor}, root pid ${rec.pids.root})`);
    tracked.add(rec.pids.hypervisor).add(rec.pids.root);
    const vmRuns = await measureVmStart(paths, plan, (pid) => void (pid && tracked.add(pid)));
    progress('bringing the host down');
    const d = await down(paths);
    if (!d.graceful) progress(`the host did not stop gracefully (killed ${d.killed}, unlinked ${d.shm} shm files)`);

    // (b0) VM start without a spare worker (`up --spare 0`).
    progress(`bringing a host up (${LPS} LPs) without a spare worker`);
    const rec0 = await up(paths, { lps: LPS, spare: 0 });
    upHostId = rec0.hostId;
    ourHosts.push(rec0.hostId);
    disturbance.sample();
    tracked.add(rec0.pids.hypervisor).add(rec0.pids.root);
    const noSpareRuns = await measureVmStart(paths, plan, (pid) => void (pid && tracked.add(pid)), 0, false);
    progress('bringing the host down');
    const d0 = await down(paths);
    if (!d0.graceful) progress(`the host did not stop gracefully (killed ${d0.killed}, unlinked ${d0.shm} shm files)`);

    // (b'') VM start from the warm pool (`up --warm`).
    progress(`bringing a host up with a warm pool of ${WARM} workers`);
    const recW = await up(paths, { lps: LPS, warm: WARM, warmMemory: VM_MEMORY });
    upHostId = recW.hostId;
    ourHosts.push(recW.hostId);
    disturbance.sample();
    tracked.add(recW.pids.hypervisor).add(recW.pids.root);
    const warmRuns = await measureVmStart(paths, plan, (pid) => void (pid && tracked.add(pid)), WARM);
    progress('bringing the host down');
    const dW = await down(paths);
    if (!dW.graceful) progress(`the host did not stop gracefully (killed ${dW.killed}, unlinked ${dW.shm} shm files)`);

    // (b') baseline: node start-up.
    progress(`spawning node -e 0 ${plan.spawnRuns} times`);
    const nodeRuns = await measureNodeSpawn(plan);

    const vmP50 = percentile(vmRuns, 0.5);
    const noSpareP50 = percentile(noSpareRuns, 0.5);
    const warmP50 = percentile(warmRuns, 0.5);
    const nodeP50 = percentile(nodeRuns, 0.5);
    const result: HypercallBenchResult = {
      bench: 'hypercall',
      hypercall,
      hypercallRootEvent,
      hypercallSocket,
      futexPingPong,
      zmqEcho: echo.stats,
      pageCalls,
      disturbance: disturbance.value,
      vmStart: { p50Ms: round(vmP50, 1), runs: vmRuns },
      vmStartNoSpare: { p50Ms: round(noSpareP50, 1), runs: noSpareRuns },
      vmStartWarm: { p50Ms: round(warmP50, 1), runs: warmRuns, pool: WARM },
      nodeSpawn: { p50Ms: round(nodeP50, 1) },
      ratios: {
        hypercallVsFutexP50: round(hypercall.p50Us / futexPingPong.p50Us, 2),
        hypercallVsZmqP50: round(hypercall.p50Us / echo.stats.p50Us, 2),
        socketHypercallVsZmqP50: round(hypercallSocket.p50Us / echo.stats.p50Us, 2),
        vmStartVsNodeSpawnP50: round(vmP50 / nodeP50, 2),
        vmStartNoSpareVsNodeSpawnP50: round(noSpareP50 / nodeP50, 2),
        vmStartWarmVsNodeSpawnP50: round(warmP50 / nodeP50, 2),
      },
      quick,
    };
    await cleanup();
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${table(result, { echoBytes: echo.bytes, nodeRuns })}\n`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
