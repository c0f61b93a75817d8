/**
 * The chaos experiment runner (`hvlab experiment run FILE` for `kind: faults`, issue 13): a
 * cluster (brought up for the run, or the one up in HVLAB_HOME), the file's workload VMs made and
 * started, a schedule of faults (chaos-spec.ts, schedule.ts) injected through the home's nemesis
 * at their offsets while every VM's progress and heartbeat and every host's answers are read a few
 * times a second, then the checkers (checkers.ts) over what was read and the report (report.ts).
 * The file's moves (live migrations) start at their offsets too, each from where the VM is then;
 * a VM's readings, its memory check and its deletion follow it to the host its moves left it on.
 *
 * The faults are owned by the run (`owner`, a name unique to it) and the run renews that lease
 * every second, so a runner that is killed has every fault undone by the nemesis within
 * OWNER_LEASE_MS. Ctrl-C (the AbortSignal) stops the schedule, clears the run's faults, tears
 * down and still writes the report. At the end the run clears its faults, waits (up to the
 * liveness bound) for what they touched to recover, pauses each memdirty VM and reads its memory
 * for the memory check, deletes its VMs (an existing cluster) or brings the cluster down (a new
 * one: the nemesis first, as `cluster down` does), looks for anything left, and writes the report.
 *
 * Readings from the hosts are values from other processes: each is read by a checking function
 * that takes what it understands and reports the rest as unknown; none throws.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { MGMT_PEEK_MAX_BYTES, STATUS_PAGE_GPA, StatusPage, WORKLOAD_DATA_GPA, formatBytes, isPlainObject, parseWorkload, SEED_MAX, seedProblem } from '@hvlab/protocol';
import { readRegularTail, resolveHome, unmakeDirs } from '@hvlab/runtime';
import { MgmtClient, hostProcesses, hostRunning, readHost, removeVm } from '@hvlab/host';
import { worldHosts } from './world.js';
import {
  ClusterError, markTemporaryHome, clusterDown, clusterGoingDown, clusterHostTarget, clusterStatus, clusterTag, clusterUp, fabricPids, meshTopologySource, networkLeftovers, parseTopology, readCluster, reportStamp, makeReportDir, FAILED_UP_LOGS_ENTRY, writeReportOrElsewhere, loadNow, runEnvironment,
  type RunExperimentOptions,
} from '@hvlab/cluster';
import { OWNER_LEASE_MS, OWNER_RENEW_MS, type FaultRecord } from './types.js';
import type { OwnedVm } from './wire.js';
import { holdHomeLease, NemesisClient, nemesisPids, stopNemesis, type HomeLease } from './client.js';
import { faultLogFile } from './nemesis.js';
import { ChaosExperimentError, chaosWorld, loadChaosExperiment, type ChaosSpec, type ChaosWorld } from './chaos-spec.js';
import { drawMoves, drawSchedule, faultRequest, moveLine, scheduleLine, type ScheduledFault, type ScheduledMove } from './schedule.js';
import {
  checkCleanup, checkIsolation, checkLiveness, checkMemory, movedNotBack, checkPlacement, checkProgress, recoveryTimes, skippedCheck, vmReading, summarizeSamples, type CheckResult, type CleanupObservation, type HostSample,
  type MoveRecord, type Observation, type PlacementObservation, type VmSample,
} from './checkers.js';
import { ChaosMoves } from './moves.js';
import { CHAOS_REPORT_FILES, CHAOS_REPORT_VERSION, writeChaosReport, type ChaosReport } from './report.js';

export interface RunChaosOptions extends RunExperimentOptions {
  /** Overrides the file's seed (`--seed N`): the schedule is drawn from it, and the report names it. */
  seed?: number;
}

/** How long a host has to answer a reading (vmList waits up to 2 s on a VM's worker). */
const LIST_TIMEOUT_MS = 3000;
const INFO_TIMEOUT_MS = 2000;
const IC_TIMEOUT_MS = 1500;
/** How long the VMs have to report a heartbeat OK before the schedule starts anyway. */
const WARMUP_MAX_MS = 30_000;
/** How long the leftovers of a new cluster have to go after it is down (processes die asynchronously). */
const CLEANUP_WAIT_MS = 10_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** Sleeps until epoch `t` or the signal; resolves false when aborted. */
function sleepUntil(t: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  const ms = t - Date.now();
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((res) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      res(ok);
    };
    const onAbort = (): void => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// ---- readings: checking functions over the hosts' answers -------------------------------------

/** The heartbeat service's status in a `vmIc` answer (OK, NoContact, LostCommunication), or null. */
export function heartbeatStatus(ic: unknown): string | null {
  if (!Array.isArray(ic)) return null;
  for (const s of ic as unknown[]) {
    if (isPlainObject(s) && s.service === 'heartbeat') return typeof s.status === 'string' && /^[A-Za-z]{1,32}$/.test(s.status) ? s.status : null;
  }
  return null;
}

/** Heartbeats each peer missed in a row, from a `hostInfo` answer; null when it has no cluster part. */
export function peersMissed(info: unknown): Record<string, number> | null {
  if (!isPlainObject(info) || !isPlainObject(info.cluster) || !Array.isArray(info.cluster.peers)) return null;
  const out: Record<string, number> = {};
  for (const p of info.cluster.peers as unknown[]) {
    if (isPlainObject(p) && typeof p.name === 'string' && p.name.length <= 64 && typeof p.missed === 'number' && Number.isInteger(p.missed) && p.missed >= 0) out[p.name] = p.missed;
  }
  return out;
}

/**
 * The hosts of this machine in `home`'s cluster that are down (their hypervisor gone); every host
 * the run knew when the cluster itself is gone. A host of another machine is not known here: up.
 */
function hostsDown(home: string): (host: string) => boolean {
  let hosts: ReturnType<typeof worldHosts>;
  try {
    hosts = worldHosts(home);
  } catch {
    return () => false;
  }
  if (hosts.cluster === null) return () => true;
  const down = new Set(hosts.hosts.filter((h) => !hostRunning(readHost(h.paths))).map((h) => h.name));
  return (host) => down.has(host);
}

/** Management clients of a cluster's hosts (no process watch: a root restarted by a kill fault is reached again at the same socket). */
async function hostClients(home: string, hosts: readonly string[]): Promise<Map<string, MgmtClient>> {
  const out = new Map<string, MgmtClient>();
  for (const name of hosts) {
    const t = await clusterHostTarget(home, name);
    out.set(name, t.kind === 'remote' ? new MgmtClient(t.endpoint, { socket: t.socket }) : new MgmtClient(t.paths.mgmtEndpoint));
  }
  return out;
}

/** Reads every VM's progress and heartbeat and every host's answer, each host on its own loop. */
export class Sampler {
  readonly vms: VmSample[] = [];
  readonly hosts: HostSample[] = [];
  private stopped = false;
  private loops: Array<Promise<void>> = [];
  private wake: Array<() => void> = [];

  /** `vmsOf(host)`: the VMs to read on `host` now (a VM's host changes when the run moves it). */
  constructor(private readonly clients: Map<string, MgmtClient>, private readonly vmsOf: (host: string) => string[], private readonly periodMs: number) {}

  start(): void {
    for (const host of this.clients.keys()) this.loops.push(this.loop(host));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.wake.splice(0)) w();
    await Promise.all(this.loops);
  }

  /** The latest reading of each VM. */
  latest(): Map<string, VmSample> {
    const m = new Map<string, VmSample>();
    for (const s of this.vms) m.set(s.vm, s);
    return m;
  }

  private async loop(host: string): Promise<void> {
    while (!this.stopped) {
      const began = Date.now();
      await this.read(host).catch(() => undefined);
      const wait = began + this.periodMs - Date.now();
      if (wait > 0 && !this.stopped) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, wait);
          this.wake.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
    }
  }

  private async read(host: string): Promise<void> {
    const c = this.clients.get(host)!;
    // Each reading is stamped when its own answer came: stamped once both had come, a VM's progress
    // read just before a pause could carry a time well inside it when the host's answer was slow.
    const [list, info] = await Promise.all([
      c.request('vmList', {}, LIST_TIMEOUT_MS).then((v) => ({ v, t: Date.now() }), () => null),
      c.request('hostInfo', {}, INFO_TIMEOUT_MS).then((v) => ({ v, t: Date.now() }), () => null),
    ]);
    const now = Date.now();
    this.hosts.push({ t: info?.t ?? now, host, answered: list !== null || info !== null, peersMissed: info ? peersMissed(info.v) : null });
    const t = list?.t ?? now;
    await Promise.all(this.vmsOf(host).map(async (vm) => {
      const r = list ? vmReading(list.v, vm) : null;
      const hb = r?.listed ? await c.request('vmIc', { name: vm }, IC_TIMEOUT_MS).then(heartbeatStatus, () => null) : null;
      this.vms.push({ t, vm, host, answered: list !== null, state: r ? (r.listed ? r.state : 'NotListed') : null, progress: r?.progress ?? null, heartbeat: hb });
    }));
  }
}

// ---- the run ------------------------------------------------------------------------------------

/** The owner of a run's faults: the experiment's name and a random tag (unique to the run). */
export function runOwner(name: string): string {
  return `chaos-${name}-${randomBytes(3).toString('hex')}`;
}

/** Reads the data of a memdirty VM (paused first, so it holds still): its bytes, or why not. */
async function readMemdirty(c: MgmtClient, vm: string, bytes: number): Promise<{ bytes: Uint8Array | null; error: string | null; written: number | null }> {
  try {
    await c.request('vmPause', { name: vm }, 30_000);
    // The guest's own count of page writes (its status page), which says what the first page holds.
    const p = await c.request('vmPeek', { name: vm, gpa: STATUS_PAGE_GPA + StatusPage.progress, len: 8 }, 30_000);
    const written = p instanceof Uint8Array && p.length === 8 ? Number(new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true)) : null;
    const out = new Uint8Array(bytes);
    for (let off = 0; off < bytes; off += MGMT_PEEK_MAX_BYTES) {
      const len = Math.min(MGMT_PEEK_MAX_BYTES, bytes - off);
      const got = await c.request('vmPeek', { name: vm, gpa: WORKLOAD_DATA_GPA + off, len }, 60_000);
      if (!(got instanceof Uint8Array) || got.length !== len) return { bytes: null, error: `vmPeek answered ${got instanceof Uint8Array ? `${got.length} bytes` : 'something that is not bytes'} for ${len}`, written };
      out.set(got, off);
    }
    return { bytes: out, error: null, written };
  } catch (e) {
    return { bytes: null, error: message(e), written: null };
  }
}

/**
 * Runs the chaos experiment of `file` and writes its report to `opts.out`; resolves with the
 * report. A file that does not check throws its ChaosExperimentError before anything starts; a
 * cluster that cannot be brought up (or, for cluster: existing, is not there) throws its
 * ClusterError. Everything after that is recorded, not thrown: whatever happens, the run's faults
 * are cleared, its VMs deleted or its cluster brought down, and the report written.
 */
export async function runChaosExperiment(file: string, opts: RunChaosOptions = {}): Promise<ChaosReport> {
  const spec = loadChaosExperiment(file);
  if (spec instanceof ChaosExperimentError) throw spec;
  const seed = opts.seed ?? spec.seed;
  if (!Number.isInteger(seed) || seed < 0 || seed > SEED_MAX) throw new ChaosExperimentError(file, [{ line: 0, column: 0, field: 'seed', message: `--seed ${seedProblem(String(seed))}` }]);
  const say = opts.progress ?? (() => {});
  // The run stops early on the caller's signal (Ctrl-C: `aborted`) or by itself when its cluster
  // goes down under it (`stoppedBy`): both end the schedule, and only the first is an interrupt.
  const userSignal = opts.signal;
  const clusterGone = new AbortController();
  const signal = userSignal ? AbortSignal.any([userSignal, clusterGone.signal]) : clusterGone.signal;
  const started = new Date();
  const out = resolve(opts.out ?? `experiment-${spec.name}-${reportStamp(started)}`);
  const madeDirs = makeReportDir(out, CHAOS_REPORT_FILES);
  const tempHome = spec.cluster === 'new' && opts.home === undefined ? mkdtempSync(join(tmpdir(), 'hvlab-chaos-')) : null;
  if (tempHome !== null) markTemporaryHome(tempHome);
  const home = resolveHome(tempHome ?? opts.home ?? null);
  const owner = runOwner(spec.name);
  const report: ChaosReport = {
    version: CHAOS_REPORT_VERSION, name: spec.name, kind: 'faults', seed, owner, spec, sourceSha256: spec.sourceSha256, environment: runEnvironment(), schedule: [], startedAt: started.toISOString(), endedAt: '', t0: Date.now(), t1: Date.now(), out,
    cluster: { mode: spec.cluster, home, network: null, hosts: [] }, world: chaosWorld(spec), faults: [], refused: [],
    samples: { vms: [], hosts: [], periodMs: spec.sampleMs, vmReadings: 0, hostReadings: 0 }, checks: [], recovery: [], held: false, aborted: false, stoppedBy: null, cleanup: [], files: [],
    moves: [],
  };
  /** Where each VM is: its workload's host, then where each completed move took it. */
  const location = new Map(spec.workloads.map((w) => [w.name, w.host]));
  const hostOf = (vm: string): string => location.get(vm)!;
  let placement: PlacementObservation | null = null;
  const graceMs = spec.checks.livenessMs ?? 10_000;
  let broughtUp = false;
  let clients = new Map<string, MgmtClient>();
  let sampler: Sampler | null = null;
  let nemesis: NemesisClient | null = null;
  let renew: NodeJS.Timeout | null = null;
  let watchCluster: NodeJS.Timeout | null = null;
  let scheduleStarted = false;
  /** The lease on a temporary cluster (see below), held until the run takes it down itself. */
  let homeLease: HomeLease | null = null;
  /**
   * Gives the temporary cluster's teardown to the home's nemesis (HomeLease.handOver): done there, a
   * second Ctrl-C or a SIGKILL of this process during it leaves nothing (its own teardown, stopped
   * between telling the nemesis to leave and the cluster's down, left the cluster and the home).
   * False when the nemesis did not take it: this process tears down itself.
   */
  const handOverHome = async (): Promise<boolean> => {
    const lease = homeLease;
    homeLease = null;
    return lease !== null && await lease.handOver().catch(() => false);
  };
  const endHomeLease = (): void => {
    homeLease?.end();
    homeLease = null;
  };
  const made: string[] = [];
  // Each workload's id, chosen before its VM is made and named to the lease first: a run killed at
  // any point leaves none of its VMs, and the nemesis removes only a VM of that id (never a VM of
  // the name someone else made).
  const ids = new Map<string, string>();
  const injected: FaultRecord[] = [];
  const memReads: Array<{ vm: string; bytes: Uint8Array | null; error: string | null; written: number | null }> = [];
  let activeAtEnd: FaultRecord[] | string | null = null;
  // The cluster: a failure to bring it up (or to find it) is thrown, with nothing of the run left.
  try {
    if (spec.cluster === 'new') {
      const source = meshTopologySource(spec.hosts!, spec.lps, spec.name);
      if (tempHome) {
        // From now on, until its own teardown, the run holds a lease on its temporary cluster: if
        // this process is killed (even with SIGKILL), the nemesis ends its faults, takes the cluster
        // down and removes the home. Taken before the cluster comes up: a run killed during the
        // bring-up (seconds) left the whole cluster running, with nothing to take it down.
        homeLease = await holdHomeLease(home, `${owner}.home`);
      }
      say(`bringing up ${spec.hosts} hosts (${spec.lps} LPs each) under ${home}`);
      // Ctrl-C during the bring-up (seconds) takes down what was made and throws, with no report: nothing ran.
      // A failed host's logs are kept in the home's cluster-up-failed, and with a temporary home
      // (which goes at the end) in the report's directory: the failure names where.
      await clusterUp(home, parseTopology(source, `experiment ${spec.name}`), source, resolve(file), { progress: say, signal: opts.signal, ...(tempHome !== null ? { failedLogsDir: join(out, FAILED_UP_LOGS_ENTRY) } : {}) });
      broughtUp = true;
    } else if (!readCluster(home)) {
      throw new ClusterError(`no cluster is up for ${home}: an experiment with cluster: existing runs on the cluster up there ("hvlab cluster up FILE")`);
    }
  } catch (e) {
    if (tempHome && !(await handOverHome())) {
      endHomeLease();
      await stopNemesis(home).catch(() => 0);
      await clusterDown(home).catch(() => undefined);
      rmSync(tempHome, { recursive: true, force: true });
    }
    endHomeLease();
    // Refused before it ran: no report, and no empty directory for one.
    unmakeDirs(madeDirs);
    throw e;
  }
  try {
    const st = await clusterStatus(home);
    report.cluster.network = st.mode;
    report.cluster.hosts = st.hosts.map((h) => ({ name: h.name, hostId: h.hostId }));
    const world: ChaosWorld = spec.cluster === 'new' ? chaosWorld(spec) : chaosWorld(spec, {
      hosts: st.hosts.map((h) => h.name), links: st.links.map((l) => [l.a, l.b] as const),
      // Each host's LPs where it says them: random lp-shrinks are drawn only where they can shrink.
      lps: Object.fromEntries(st.hosts.filter((h) => typeof h.lps === 'number').map((h) => [h.name, h.lps as number])),
    });
    report.world = world;
    const missing = spec.workloads.filter((w) => !world.hosts.includes(w.host));
    if (missing.length > 0) throw new ClusterError(`cluster ${st.name} has no host ${missing.map((w) => `${w.host} (for ${w.name})`).join(', ')}; its hosts: ${world.hosts.join(', ')}`);
    report.schedule = drawSchedule(seed, spec, world);
    const moves = drawMoves(seed, spec, world);
    say(`seed ${seed}: ${report.schedule.length} fault${report.schedule.length === 1 ? '' : 's'}${moves.length ? ` and ${moves.length} move${moves.length === 1 ? '' : 's'}` : ''} over ${spec.durationMs / 1000} s`);
    for (const f of report.schedule) say(`  ${scheduleLine(f)}`);
    for (const m of moves) say(`  ${moveLine(m)}`);

    clients = await hostClients(home, world.hosts);
    // The cluster taken down under the run ("hvlab cluster down" in another shell): its hosts are
    // gone, and so is the nemesis that held the run's faults (it ended them as it left). The run
    // went on for its whole duration, asking dead hosts and starting nemeses that found nothing,
    // and reported its faults active. It stops now instead, and says why.
    watchCluster = setInterval(() => {
      if (clusterGone.signal.aborted || !clusterGoingDown(home)) return;
      const at = scheduleStarted ? ` at +${((Date.now() - report.t0) / 1000).toFixed(1)} s of its schedule` : ' before its schedule started';
      report.stoppedBy = `the cluster went down under the run${at} (its hosts are gone): the run stopped there, and its faults ended with the cluster`;
      say(`STOPPING: ${report.stoppedBy}`);
      if (renew) clearInterval(renew);
      renew = null;
      clusterGone.abort();
    }, 500);
    if (spec.cluster === 'existing') {
      // Its workloads are its own VMs, made and deleted by it: a name the cluster has already (on
      // any host) is refused before anything is made. It made a second VM of that name on another
      // host (and its faults on the name were then refused as ambiguous), or stopped at the first
      // "already exists" with the user's VM counted as one the run left.
      const taken: string[] = [];
      for (const [h, c] of clients) {
        const list = await c.request('vmList', {}, 10_000);
        for (const w of spec.workloads) if (vmReading(list, w.name).listed) taken.push(`${w.name} on ${h}`);
      }
      if (taken.length > 0) throw new ClusterError(`the cluster has VMs of its workloads' names already (${taken.join(', ')}): the run makes its own VMs and deletes them after, so name its workloads otherwise`);
    }
    // The run's lease, from before its first VM: on an existing cluster it names the VMs made so
    // far (each renew names them all), which go when it lapses, so a run killed with SIGKILL leaves
    // none on the user's cluster; its faults go too. (A new cluster goes whole: the home's lease.)
    nemesis = await NemesisClient.connect(home);
    const nem = nemesis;
    const owned = (): OwnedVm[] => (broughtUp ? [] : spec.workloads.filter((w) => ids.has(w.name)).map((w) => ({ host: hostOf(w.name), vm: w.name, id: ids.get(w.name)! })));
    await nem.renew(owner, { vms: owned() });
    renew = setInterval(() => void nem.renew(owner, { vms: owned() }).catch((e: unknown) => say(`WARNING: the lease of ${owner} was not renewed: ${message(e)}`)), OWNER_RENEW_MS);
    // The workloads: made and started, each host's one after another, the hosts side by side; all
    // of them settled before a failure is thrown (a host's vmNew still under way when another
    // failed made its VM after the clean-up had looked for it).
    await settledAll(world.hosts.map(async (h) => {
      const c = clients.get(h)!;
      for (const w of spec.workloads.filter((x) => x.host === h)) {
        if (signal?.aborted) return;
        const id = randomUUID();
        ids.set(w.name, id);
        // Named to the lease before it is made (a lease that cannot name it stops the run: a kill
        // would leave the VM). Kept named even when vmNew fails: a call that timed out may have
        // made it, and removal by id takes only that VM.
        if (!broughtUp) await nem.renew(owner, { vms: owned() });
        await c.request('vmNew', { name: w.name, memory: formatBytes(w.memoryBytes), vps: w.vps, workload: w.workload, id }, 60_000);
        made.push(w.name);
        await c.request('vmStart', { name: w.name }, 120_000);
        say(`VM ${w.name} (${w.workload}) is running on ${h}`);
      }
    }));
    sampler = new Sampler(clients, (h) => spec.workloads.filter((w) => hostOf(w.name) === h).map((w) => w.name), spec.sampleMs);
    sampler.start();

    // Every VM's heartbeat OK (its integration services up) before the first fault.
    const warm = Date.now() + WARMUP_MAX_MS;
    while (!signal?.aborted && Date.now() < warm) {
      const last = sampler.latest();
      if (spec.workloads.every((w) => last.get(w.name)?.heartbeat === 'OK')) break;
      await sleepUntil(Date.now() + 200, signal);
    }
    const notOk = spec.workloads.filter((w) => sampler!.latest().get(w.name)?.heartbeat !== 'OK').map((w) => w.name);
    if (notOk.length > 0 && !signal?.aborted) say(`WARNING: no OK heartbeat from ${notOk.join(', ')} after ${WARMUP_MAX_MS / 1000} s; starting anyway`);


    // The schedule.
    report.t0 = Date.now();
    scheduleStarted = true;
    say(`schedule started; faults owned by ${owner} (undone within ${OWNER_LEASE_MS / 1000} s if this run is killed)`);
    const mover = new ChaosMoves({ clients, location, records: report.moves, t0: report.t0, endAt: report.t0 + spec.durationMs, signal, clusterGone: clusterGone.signal, say });
    const pending: Array<Promise<void>> = [];
    // The faults and the moves, by offset (a fault before a move at the same offset).
    const events = [...report.schedule.map((f) => ({ atMs: f.atMs, f, m: null })), ...moves.map((m) => ({ atMs: m.atMs, f: null, m }))]
      .sort((a, b) => a.atMs - b.atMs || (a.f ? 0 : 1) - (b.f ? 0 : 1));
    for (const ev of events) {
      if (!(await sleepUntil(report.t0 + ev.atMs, signal))) break;
      if (ev.m) {
        pending.push(mover.start(ev.m));
        continue;
      }
      const f = ev.f!;
      const asked = Date.now();
      pending.push(nem.inject(faultRequest(f, owner)).then(
        (rec) => {
          injected.push(rec);
          say(`${f.id} at +${((rec.startedAt - report.t0) / 1000).toFixed(1)}s: ${f.kind} ${rec.resolved.summary} for ${f.forMs / 1000} s`);
        },
        (e: unknown) => {
          report.refused.push({ id: `${owner}.${f.id}`, at: asked, error: message(e) });
          say(`${f.id} (${f.kind} ${f.target}) was refused: ${message(e)}`);
        },
      ));
    }
    await sleepUntil(report.t0 + spec.durationMs, signal);
    if (mover.unended().length > 0) say(`waiting for ${mover.unended().map((m) => m.id).join(', ')} to end`);
    await Promise.all(pending);
    report.aborted = userSignal?.aborted === true;
    // With the cluster gone there is nobody to ask: its nemesis is gone (asking started another,
    // which found nothing), and so are the hosts.
    const gone = (): boolean => clusterGone.signal.aborted;

    // Whatever is still active ends now; then what the faults touched has the liveness bound to come back.
    const cleared = gone() ? [] : await nem.clear(null, { owner }).catch((e: unknown) => {
      report.cleanup.push(`the run's faults could not be cleared: ${message(e)}`);
      return [] as FaultRecord[];
    });
    if (cleared.length > 0) say(`cleared ${cleared.length} fault${cleared.length === 1 ? '' : 's'} still active: ${cleared.map((f) => f.id).join(', ')}`);
    if (!signal.aborted) {
      const until = Date.now() + graceMs;
      say(`waiting up to ${graceMs / 1000} s for what the faults touched${report.moves.length > 0 ? ' and the moves moved' : ''} to recover`);
      while (Date.now() < until && !signal?.aborted) {
        const recs = await nem.list({ all: true }).then((l) => l.filter((f) => f.owner === owner)).catch(() => injected);
        const obs: Observation = { t0: report.t0, t1: Date.now(), world, vms: sampler.vms, hosts: sampler.hosts, faults: recs, moves: report.moves };
        const failed = new Set(recs.filter((f) => f.state === 'failed').map((f) => f.id));
        if (recoveryTimes(obs).every((r) => r.recoveredMs !== null || r.endedAt === null || r.affected.length === 0 || failed.has(r.id)) && (spec.checks.livenessMs === null || movedNotBack(obs, graceMs).length === 0)) break;
        await sleepUntil(Date.now() + 500, signal);
      }
      report.aborted = userSignal?.aborted === true;
    }
    await sampler.stop();
    report.t1 = Date.now();
    // Where every VM is listed now that the moves are over: on exactly one host, its moves' last.
    placement = { listed: {}, unanswered: [], expected: Object.fromEntries(spec.workloads.map((w) => [w.name, hostOf(w.name)])) };
    const down = hostsDown(home);
    for (const [h, c] of clients) {
      // A host that is down is not asked (it waited the call's 10 s): it did not answer. Nor is one
      // of a cluster going down (it may die in the middle of the call).
      const list = down(h) || gone() ? null : await c.request('vmList', {}, 10_000).catch(() => null);
      if (list === null) {
        placement.unanswered.push(h);
        continue;
      }
      for (const w of spec.workloads) {
        const r = vmReading(list, w.name);
        if (r.listed) (placement.listed[w.name] ??= []).push({ host: h, state: r.state });
      }
    }
    const all = gone() ? null : await nem.list({ all: true }).catch(() => null);
    const byId = new Map(injected.map((f) => [f.id, f]));
    for (const f of all ?? []) if (f.owner === owner) byId.set(f.id, f);
    report.faults = [...byId.values()].sort((a, b) => a.startedAt - b.startedAt);
    if (gone()) report.faults = endedWithTheCluster(report.faults, home, Date.now());

    // Memory: each memdirty VM paused and read (not with the cluster gone: no VM is left to read).
    if (spec.checks.memory && !gone()) {
      for (const w of spec.workloads) {
        const wl = parseWorkload(w.workload);
        if (wl?.name !== 'memdirty') continue;
        const r = await readMemdirty(clients.get(hostOf(w.name))!, w.name, wl.arg);
        memReads.push({ vm: w.name, ...r });
      }
    }
    if (renew) clearInterval(renew);
    renew = null;
    if (gone()) {
      // The nemesis ended every fault as the cluster went down (the records above say so).
      activeAtEnd = [];
    } else {
      // Its VMs are removed below, by the run; the lease still names them until it lapses (its
      // renewals stopped above), so a run killed during that removal still leaves none.
      // Nothing injected may be left: a new cluster's nemesis has no active fault at all; on an existing one, none of the run's.
      activeAtEnd = await nem.list().then((l) => (spec.cluster === 'new' ? l : l.filter((f) => f.owner === owner)), (e: unknown) => message(e));
    }
  } catch (e) {
    // A failure once the cluster is up is recorded: everything is still taken down and the report written.
    report.cleanup.push(`the run stopped: ${message(e)}`);
    say(`ERROR: ${message(e)}`);
  } finally {
    if (renew) clearInterval(renew);
    if (watchCluster) clearInterval(watchCluster);
    if (sampler) await sampler.stop();
    if (nemesis) {
      if (!clusterGone.signal.aborted) await nemesis.clear(null, { owner }).catch(() => undefined);
      nemesis.close();
    }
  }

  // Teardown: the run's VMs (an existing cluster), or the whole cluster (a new one), then what is left.
  const cleanupObs: CleanupObservation = { hostProcesses: null, shmFiles: null, network: null, activeFaults: activeAtEnd, nemesisPids: null, fabricPids: null, vmsLeft: null, homeLeft: null, problems: [] };
  if (!broughtUp && clusterGone.signal.aborted) {
    // The cluster is going down under the run and takes the run's VMs with it. Its hosts were
    // asked to remove them before: a host still up when asked, and gone in the middle of the call,
    // held the run in that call for its 60 s (these clients watch no process), after the run had
    // said it stopped (seen under load in CI, where `cluster down` took longer).
    say('the cluster is going down: the run\'s VMs go with it');
  } else if (!broughtUp) {
    // A host that is down (a fault killed its hypervisor, the cluster was taken down meanwhile)
    // took its VMs with it: asking it to remove one waited the call's 60 s (these clients watch
    // no process), and said the VM was not deleted.
    const isDown = hostsDown(home);
    // Every VM named to the lease, by its id (one whose vmNew failed may have been made; one of the
    // name that is not the run's is left).
    for (const w of spec.workloads.filter((x) => ids.has(x.name))) {
      const h = hostOf(w.name);
      if (isDown(h)) {
        say(`VM ${w.name} went with its host ${h}, which is down: nothing to delete`);
        continue;
      }
      const c = clients.get(h);
      if (c) await removeVm(c, w.name, ids.get(w.name)).catch((e: unknown) => void report.cleanup.push(`VM ${w.name} was not deleted: ${message(e)}`));
    }
    cleanupObs.vmsLeft = [];
    for (const [h, c] of clients) {
      if (isDown(h)) continue;
      const list = await c.request('vmList', {}, 10_000).catch(() => null);
      // On any host: a move that left a copy behind leaves it too.
      const runs = (w: { name: string }): boolean => Array.isArray(list) && list.some((v: unknown) => isPlainObject(v) && v.name === w.name && typeof v.id === 'string' && v.id.toLowerCase() === ids.get(w.name));
      for (const w of spec.workloads) if (ids.has(w.name) && runs(w)) cleanupObs.vmsLeft.push(`${w.name} on ${h}`);
    }
  }
  for (const c of clients.values()) c.close();
  if (tempHome && homeLease) say('handing the cluster\'s teardown to its home\'s nemesis (it finishes it even if this run is killed now)');
  if (tempHome && await handOverHome()) {
    if (broughtUp) say(`cluster ${spec.name} is down (its home's nemesis took it down)`);
  } else {
    endHomeLease();
    if (broughtUp || tempHome) {
      try {
        await stopNemesis(home);
        const d = await clusterDown(home);
        if (broughtUp) say(`cluster ${d.name ?? spec.name} is down`);
      } catch (e) {
        report.cleanup.push(`the cluster under ${home} was not brought down: ${message(e)}`);
      }
    }
  }
  if (broughtUp) {
    const ids = report.cluster.hosts.filter((h) => h.hostId !== null) as Array<{ name: string; hostId: string }>;
    const look = (): CleanupObservation => ({
      ...cleanupObs,
      hostProcesses: ids.map((h) => ({ host: h.name, hostId: h.hostId, pids: hostProcesses(h.hostId) })),
      shmFiles: shmFilesOf(ids.map((h) => h.hostId)),
      network: networkLeftovers(clusterTag(home)),
      nemesisPids: nemesisPids(home),
      fabricPids: fabricPids(home),
    });
    let seen = look();
    for (const until = Date.now() + CLEANUP_WAIT_MS; Date.now() < until && leftSomething(seen); seen = look()) await sleep(200);
    Object.assign(cleanupObs, seen);
  }
  if (tempHome) {
    rmSync(tempHome, { recursive: true, force: true });
    if (existsSync(tempHome)) cleanupObs.homeLeft = tempHome;
  }
  cleanupObs.problems = [...report.cleanup];
  for (const c of report.cleanup) say(`WARNING: ${c}`);

  // The checks over what was read.
  const obs: Observation = { t0: report.t0, t1: report.t1, world: report.world, vms: sampler?.vms ?? [], hosts: sampler?.hosts ?? [], faults: report.faults, moves: report.moves };
  const c = spec.checks;
  const checks: CheckResult[] = [
    c.livenessMs !== null ? checkLiveness(obs, c.livenessMs) : skippedCheck('liveness', 'turned off in the file'),
    c.progress ? checkProgress(obs, graceMs) : skippedCheck('progress', 'turned off in the file'),
    c.isolationStallMs !== null ? checkIsolation(obs, c.isolationStallMs, graceMs) : skippedCheck('isolation', 'turned off in the file'),
    c.memory ? checkMemory(memReads) : skippedCheck('memory', 'turned off in the file'),
    c.cleanup ? checkCleanup(cleanupObs) : skippedCheck('cleanup', 'turned off in the file'),
    !c.placement ? skippedCheck('placement', 'turned off in the file') : placement ? checkPlacement(placement, report.moves) : skippedCheck('placement', 'the run stopped before the VMs could be looked for'),
  ];
  report.checks = checks;
  report.recovery = recoveryTimes(obs);
  report.held = checks.every((x) => x.held);
  report.samples = { ...summarizeSamples(obs), periodMs: spec.sampleMs, vmReadings: obs.vms.length, hostReadings: obs.hosts.length };
  report.endedAt = new Date().toISOString();
  report.environment.loadAtEnd = loadNow();
  writeReportOrElsewhere(report, (dir) => writeChaosReport(report, dir, { vms: obs.vms, hosts: obs.hosts }), say);
  for (const x of checks) say(`${x.name}: ${x.skipped ? 'skipped' : x.held ? 'held' : 'VIOLATED'} (${x.summary})`);
  return report;
}

/**
 * The run's fault records as they ended when the cluster went down under it: each one still
 * active ends as target-gone, at the time the home's fault log gives its end (the nemesis ended
 * every fault as `cluster down` stopped it), else at `noticedAt`.
 */
export function endedWithTheCluster(recs: FaultRecord[], home: string, noticedAt: number): FaultRecord[] {
  const endOf = new Map<string, number>();
  let text = '';
  try {
    text = readRegularTail(faultLogFile(home), 1024 * 1024).bytes.toString('utf8');
  } catch { /* no log: the time noticed */ }
  for (const line of text.split('\n')) {
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue;
    }
    if (!isPlainObject(v) || v.event !== 'end' || typeof v.id !== 'string' || typeof v.time !== 'string') continue;
    const t = Date.parse(v.time);
    if (Number.isFinite(t)) endOf.set(v.id, t);
  }
  return recs.map((f) => {
    if (f.state !== 'active') return f;
    const logged = endOf.get(f.id);
    return {
      ...f, state: 'ended', endReason: 'target-gone', endedAt: logged ?? Math.max(f.startedAt, noticedAt),
      error: logged !== undefined ? 'the cluster went down under the run: its nemesis ended the fault as it left' : 'the cluster went down under the run, which noticed it then',
    };
  });
}

function shmFilesOf(hostIds: readonly string[]): string[] {
  try {
    return readdirSync('/dev/shm').filter((f) => hostIds.some((id) => f.startsWith(`hvlab-${id}-`)));
  } catch {
    return [];
  }
}

function leftSomething(o: CleanupObservation): boolean {
  return (o.hostProcesses ?? []).some((h) => h.pids.length > 0) || (o.shmFiles ?? []).length > 0 || (o.nemesisPids ?? []).length > 0 || (o.fabricPids ?? []).length > 0
    || (o.network !== null && o.network.namespaces.length + o.network.links.length > 0);
}

/** The schedule a spec with a new cluster draws from `seed` (for `--check`, and to compare with a report's). */
export function plannedMoves(spec: ChaosSpec, seed = spec.seed): ScheduledMove[] {
  return drawMoves(seed, spec, chaosWorld(spec));
}

export function plannedSchedule(spec: ChaosSpec, seed = spec.seed): ScheduledFault[] {
  return drawSchedule(seed, spec, chaosWorld(spec));
}

/** Awaits every promise of `ps`, then throws the first rejection if there was one. */
async function settledAll(ps: Array<Promise<unknown>>): Promise<void> {
  const r = await Promise.allSettled(ps);
  const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (bad) throw bad.reason;
}
