/**
 * `pnpm bench vmbus [--json] [--spin] [--quick]`: what VMBus packets cost between two processes, over the
 * shared-memory ring and over the ZeroMQ transport, each next to a baseline measured in the same run.
 *
 *  1. Throughput, 64 B / 1 KiB / 16 KiB payloads, writer in a child process, reader here:
 *     (a) shm ring: a 256 KiB ring in a /dev/shm region; the reader drains in a tight loop and the
 *         writer spins on 'full' (both sides poll; no signals). The writer stages TP_BURST packets
 *         per commit of its write index (RingWriter.stage/commit); at 16 KiB the run is repeated
 *         with a commit per packet (tryWrite), shown beside it. A side that has found nothing to do
 *         for 200 µs naps 50 µs at a time until it has (`Backoff`), so the two still make progress
 *         when other processes leave them one CPU to share; `--spin` turns that off (pure spinning);
 *     (b) zmq: RemoteHub here, RemoteLink in the child, one packet per message, credit flow control
 *         with a 256 KiB window;
 *     (c) memcpy: Uint8Array.set of the same payloads into a 256 KiB buffer in this process, the same
 *         number of packets as (a) per pass, fastest pass (the upper bound of any copy-based
 *         transport); also shown into a SharedArrayBuffer, which V8 copies into much more slowly,
 *         and into one with the shm addon's copyBytes (a native memmove), which the ring's writer
 *         uses for payloads of NATIVE_COPY_MIN bytes or more (the ceiling of a ring in one).
 *     (a) and (b) run `warmupMs` untimed, then `measureMs` timed on the reader's clock; each side's
 *     share of a CPU is reported, since other processes on the machine change everything here.
 *  2. Request/response latency, 64 B, `n` round trips after `warmup` ones, timed one by one here:
 *     (a) shm ring, polling: request in ring A, the child polls A and answers in ring B, we poll B;
 *     (a') shm ring, signals through the hypervisor: a hypervisor process of our own (with its VP
 *         scheduler), a child partition with one VP and an event port on SINT 2, and an event port in
 *         the root (our session gets `rootevent`). The child stands in for a guest the way the guest
 *         kernel is built: it programs its own SynIC, runs the guest's VP thread (packages/guest
 *         vp.ts) on the VP, and services SINT 2 on its main thread when the VP takes the vector. So
 *         a signal to the child goes SignalEvent -> event flag + virtual APIC -> scheduler dispatches
 *         the halted VP -> VP takes the interrupt -> main thread drains, as in a running VM. A writer
 *         whose tryWrite says 'signal' issues SignalEvent; a reader sleeps until the interrupt (or
 *         the rootevent), then drains masked and re-checks. Run twice, each with a hypervisor of its
 *         own: as the host runs it, then with the scheduler thread's bell poll kept at its 25 µs base
 *         (HVLAB_HC_POLL_MAX_US=25, the rule before the poll adapted), for the ratio of the two;
 *     (b) zmq: the same packets over RemoteHub/RemoteLink;
 *     (c) the event-loop wake-up under (a')'s last hop, on its own: a number stored in a shared word
 *         here, the other process's event loop woken to answer it (it stores the number back and
 *         wakes our futex), the two ways the hypervisor wakes a session's loop, one sample each in
 *         turn: a word watch (the addon's watcher thread, then the loop: two wake-ups) and a wake
 *         descriptor (an eventfd of ours the loop polls: one).
 *
 * --quick (or HVLAB_BENCH_QUICK=1): every part above with QUICK's durations and counts, for CI.
 *
 * Everything lives under temporary names and is removed afterwards, whatever happens: every child is
 * killed, every region (ours are named after a bench host id, as the hypervisor's are) is unlinked,
 * the temp directory and the hypervisor's socket directory are removed, and the run fails if
 * anything is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exited, percentile, QUICK_NOTE, quickRequested, round, stopOwned, reportLeftovers, disturbanceTracker, disturbanceLine, type Disturbance } from './common.js';
import {
  ENLIGHTENED_CHILD_PRIVILEGES, MIN_MEMORY_BYTES, PAGE, PartitionProperty, PortType, ROOT_PARTITION_ID,
} from '../../packages/protocol/src/index.js';
import { entries, hostPaths, nodeArgsFor, shmPrefix } from '../../packages/runtime/src/paths.js';
import { pidAlive } from '../../packages/runtime/src/anchor.js';
import { HvClient, type Notification } from '../../packages/runtime/src/hvclient.js';
import {
  closeWakeFd, copyBytes, copyBytesIsNative, createRegion, futexWait, futexWake, memoryMode, openWakeFd, shmUnavailableReason, signalWakeFd, unlinkRegion, wakeFdAvailable,
} from '../../packages/shm/src/index.js';
import { initRing, NATIVE_COPY_MIN, packetBytes, PacketType, RingReader, RingWriter } from '../../packages/vmbus/src/ring.js';
import { RemoteHub, type RemoteTransport } from '../../packages/vmbus/src/remote.js';
import { sweepHost } from '@hvlab/host';
import {
  BENCH_SINT, benchRegionBytes, benchRings, CTL_GO, CTL_PAGE_BYTES, CTL_STOP, PP_RING_DATA_BYTES,
  SYNC_TRANS_ID, TP_BURST, TP_RING_DATA_BYTES, Backoff, NAP_AFTER_US, NAP_US, type ChildDone,
} from './vmbus-child.js';

const SIZES = [64, 1024, 16384] as const;
/** Throughput: untimed and timed milliseconds; latency: timed round trips after warm-up ones. */
interface Plan {
  warmupMs: number;
  measureMs: number;
  n: number;
  warmup: number;
}
const FULL: Plan = { warmupMs: 300, measureMs: 1500, n: 5000, warmup: 500 };
const QUICK: Plan = { warmupMs: 50, measureMs: 150, n: 200, warmup: 20 };
const LATENCY_PAYLOAD = 64;
const ZMQ_WINDOW = 256 * 1024;
/** Tight loops give the event loop a turn this often (child exits, signals). */
const YIELD_MS = 50;
/** A reply that takes longer than this means the other side is stuck. */
const STUCK_MS = 5000;
/**
 * Issue 10's aims. The signalled 64 B round trip: p50 at most signalledP50Us, and zmqVsSignalled
 * (the ZeroMQ round trip's p50 / the signalled one's, same run) at least that.
 */
const AIMS = { shmVsZmq64: 20, shmVsMemcpy16k: 0.5, signalledP50Us: 50, zmqVsSignalled: 3 } as const;
/** The hypervisor's bell poll at its base for the comparison row (HVLAB_HC_POLL_MAX_US; sched-thread.ts BellPoll). */
const BASE_POLL_US = 25;
/** Port and connection ids in our own hypervisor (nothing else uses it). */
const ROOT_EVENT_PORT = 0x7e0001;
const CHILD_EVENT_PORT = 1;
const CHILD_TO_ROOT_CONNECTION = 0x7e01;
const ROOT_TO_CHILD_CONNECTION = 0x7e02;
const LPS = 2;
const here = dirname(fileURLToPath(import.meta.url));
const childScript = join(here, 'vmbus-child.ts');

export interface Rate {
  /** Packets per second. */
  pps: number;
  /** Payload megabytes (10^6 bytes) per second. */
  mbps: number;
  packets: number;
  seconds: number;
}
/** A cross-process rate with the share of a CPU each side got (1 = a CPU of its own throughout). */
export interface ProcRate extends Rate {
  cpuShare: { reader: number; writer: number };
}
export interface ShmRate extends ProcRate {
  /** tryWrite calls that found the ring full, per packet written. */
  writerFullPerPacket: number;
  /** Back-off naps per second of each side (0 with --spin). */
  napsPerS: { reader: number; writer: number };
}
export interface Latency {
  p50: number;
  p99: number;
  mean: number;
  n: number;
}
export interface PollLatency extends Latency {
  /** Back-off naps over the whole ping-pong (0 with --spin). */
  naps: { parent: number; child: number };
}
/** (c): a word watch's and a wake descriptor's wake-up of another process's event loop, interleaved; `ratio` = descriptor p50 / word p50. */
export interface LoopWake {
  word: Latency;
  descriptor: Latency;
  ratio: number;
}
export interface SignalLatency extends Latency {
  /** SignalEvent calls per round trip, each direction (1 = every packet went through the hypervisor). */
  signalsPerRoundTrip: { toChild: number; toParent: number };
}
type BySize<T> = Record<number, T>;

export interface VmbusBenchResult {
  bench: 'vmbus';
  memoryMode: 'shared' | 'private';
  /**
   * memcpy: into an ArrayBuffer (the baseline of the ratios); memcpyShared: the same copies into a
   * SharedArrayBuffer, which V8 does with relaxed atomic word copies; memcpySharedNative: the same
   * with the addon's copyBytes (null without it), as the ring writes payloads of `nativeCopyMin`
   * bytes or more (the ceiling of any ring in a SAB).
   */
  throughput: {
    /** The ring with a writer that stages `ringBurst` packets per commit of its write index. */
    shm: BySize<ShmRate> | null;
    /** The same at 16 KiB with a commit per packet (tryWrite), for comparison. */
    shmPerPacket16k: ShmRate | null;
    zmq: BySize<ProcRate>;
    memcpy: BySize<Rate>;
    memcpyShared: BySize<Rate>;
    memcpySharedNative: BySize<Rate> | null;
  };
  /** Smallest payload the ring writer copies with the addon (NATIVE_COPY_MIN). */
  nativeCopyMin: number;
  /** Packets the throughput writer stages per commit (TP_BURST). */
  ringBurst: number;
  /** shmSignalBasePoll: the signalled round trip with the hypervisor's bell poll kept at its base (HVLAB_HC_POLL_MAX_US). */
  latencyUs: { shmPoll: PollLatency | null; shmSignal: SignalLatency | null; shmSignalBasePoll: SignalLatency | null; zmq: Latency; loopWake: LoopWake | null };
  /**
   * nativeVsV8Shared16k: addon copyBytes bytes/s / Uint8Array.set bytes/s into a SAB at 16 KiB;
   * shmPerPacketVsMemcpy16k: shmVsMemcpy16k with a commit per packet (not an aim).
   */
  /** zmqVsSignalled: the ZeroMQ round trip's p50 / the signalled ring round trip's p50. */
  ratios: { shmVsZmq64: number | null; shmVsMemcpy16k: number | null; shmPerPacketVsMemcpy16k: number | null; nativeVsV8Shared16k: number | null; zmqVsSignalled: number | null };
  aims: { shmVsZmq64: number; shmVsMemcpy16k: number; signalledP50Us: number; zmqVsSignalled: number };
  /** signalled: p50 within signalledP50Us and zmqVsSignalled reached. */
  met: { shmVsZmq64: boolean | null; shmVsMemcpy16k: boolean | null; signalled: boolean | null };
  n: {
    roundTrips: number;
    warmupRoundTrips: number;
    latencyPayloadBytes: number;
    throughputMs: number;
    warmupMs: number;
    ringDataBytes: number;
    zmqWindow: number;
    cpus: number;
    /** 1-minute load average when the run started and when it ended. */
    loadAvg: [number, number];
    /** How the polling sides wait: 'spin' (--spin) or 'spin, nap 50 µs after 50 µs idle'. */
    polling: string;
  };
  disturbance: Disturbance;
  quick: boolean;
}

// ---- helpers ------------------------------------------------------------------------------------

function latency(nsPerCall: number[]): Latency {
  const us = nsPerCall.map((ns) => ns / 1000);
  return {
    p50: round(percentile(us, 0.5), 1),
    p99: round(percentile(us, 0.99), 1),
    mean: round(us.reduce((a, b) => a + b, 0) / us.length, 1),
    n: us.length,
  };
}

function rate(packets: number, payloadBytes: number, ms: number): Rate {
  const s = ms / 1000;
  return { pps: Math.round(packets / s), mbps: round((packets * payloadBytes) / s / 1e6, 1), packets, seconds: round(s, 3) };
}

/** CPU seconds this process used per wall second since `from` (taken with `cpuMark`). */
function cpuMark(): { cpu: NodeJS.CpuUsage; wall: number } {
  return { cpu: process.cpuUsage(), wall: performance.now() };
}
function cpuShareSince(from: { cpu: NodeJS.CpuUsage; wall: number }): number {
  const u = process.cpuUsage(from.cpu);
  return round((u.user + u.system) / 1000 / Math.max(1, performance.now() - from.wall), 2);
}

function parseDone(line: string): ChildDone {
  return JSON.parse(line.slice('done '.length)) as ChildDone;
}

const yieldNow = (): Promise<void> => new Promise((r) => setImmediate(r));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function progress(msg: string): void {
  process.stderr.write(`[bench vmbus] ${msg}\n`);
}

/** The u32 sequence number the senders put in the first 4 payload bytes. */
function seqOf(p: Uint8Array): number {
  return (p[0]! | (p[1]! << 8) | (p[2]! << 16) | (p[3]! << 24)) >>> 0;
}

/** A child we spawned ourselves: its stdout lines, the tail of its stderr. */
interface Owned {
  child: ChildProcess;
  what: string;
  lines: string[];
  stderr: () => string;
  /** Called with each new stdout line. */
  onLine: Set<(line: string) => void>;
}

function spawnOwned(what: string, args: string[], env: NodeJS.ProcessEnv): Owned {
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
  let tail = '';
  let buf = '';
  const o: Owned = { child, what, lines: [], stderr: () => tail, onLine: new Set() };
  child.stderr!.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4000);
  });
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      o.lines.push(line);
      for (const f of o.onLine) f(line);
    }
  });
  child.stdin!.on('error', () => undefined); // EPIPE once the child is gone
  child.on('error', () => undefined); // reported through waitLine / exit
  return o;
}

function whyGone(o: Owned): string {
  const c = o.child;
  return `the ${o.what} exited (${c.signalCode ?? `exit code ${c.exitCode}`})${o.stderr() ? `:\n${o.stderr()}` : ''}`;
}

/** Resolves with the first stdout line (seen already or later) that starts with `prefix`. */
function waitLine(o: Owned, prefix: string, timeoutMs: number): Promise<string> {
  const seen = o.lines.find((l) => l.startsWith(prefix));
  if (seen !== undefined) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const done = (): void => {
      clearTimeout(t);
      o.onLine.delete(onLine);
      o.child.off('exit', onExit);
    };
    const onLine = (line: string): void => {
      if (!line.startsWith(prefix)) return;
      done();
      resolve(line);
    };
    const onExit = (): void => {
      done();
      reject(new Error(`waiting for "${prefix}": ${whyGone(o)}`));
    };
    const t = setTimeout(() => {
      done();
      reject(new Error(`the ${o.what} did not print "${prefix}" within ${timeoutMs / 1000} s${o.stderr() ? `:\n${o.stderr()}` : ''}`));
    }, timeoutMs);
    o.onLine.add(onLine);
    o.child.once('exit', onExit);
    if (exited(o.child)) onExit();
  });
}

/** One promise-per-event wait with a watchdog, for the event-driven round trips. */
class Events {
  private pending = 0;
  private wake: (() => void) | null = null;
  constructor(private readonly what: string) {}
  post(): void {
    this.pending++;
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  async next(): Promise<void> {
    if (this.pending === 0) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => {
          this.wake = null;
          reject(new Error(`no ${this.what} within ${STUCK_MS / 1000} s`));
        }, STUCK_MS);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    this.pending--;
  }
}

// ---- the run's resources ------------------------------------------------------------------------

class Run {
  readonly hostId = randomBytes(3).toString('hex');
  readonly dir = mkdtempSync(join(tmpdir(), 'hvlab-vmbus-'));
  /** HVLAB_HOME of our hypervisor (its sockets go to hostPaths(dir).sockDir). */
  readonly paths = hostPaths(this.dir);
  readonly hubEndpoint = `ipc://${join(this.dir, 'vmbus')}`;
  readonly children = new Set<Owned>();
  readonly regions = new Set<string>();
  readonly tracked = new Set<number>();
  /** How long and how many (FULL, or QUICK with --quick). */
  plan: Plan = FULL;
  /** Back-off of the polling sides (0 = spin only). */
  napAfterUs = NAP_AFTER_US;
  hvProc: Owned | null = null;
  hv: HvClient | null = null;
  hub: RemoteHub | null = null;
  hvNotify: (n: Notification) => void = () => {};
  private nextRegion = 0;
  private nextPartition = 2;
  private cleaning: Promise<void> | null = null;

  constructor() {
    if (this.hubEndpoint.length > 100) throw new Error(`ipc endpoint ${this.hubEndpoint} is longer than 100 bytes; set TMPDIR to a shorter directory`);
  }

  env(): NodeJS.ProcessEnv {
    // The host id lets sweepHost find (and kill) every process of this run should anything escape.
    return { ...process.env, HVLAB_HOST_ID: this.hostId };
  }

  spawn(what: string, args: string[]): Owned {
    const o = spawnOwned(what, [...nodeArgsFor(childScript), ...args], this.env());
    this.children.add(o);
    if (o.child.pid !== undefined) this.tracked.add(o.child.pid);
    return o;
  }

  async stop(o: Owned): Promise<void> {
    await stopOwned(o);
    this.children.delete(o);
  }

  /** A new zero-filled region named after our host id (so a sweep would find it). */
  region(tag: string, bytes: number): { name: string; buffer: SharedArrayBuffer } {
    const name = `${shmPrefix(this.hostId)}vmbus-${tag}-${this.nextRegion++}`;
    const buffer = createRegion(name, bytes);
    this.regions.add(name);
    return { name, buffer };
  }

  unlink(name: string): void {
    if (this.regions.delete(name)) unlinkRegion(name);
  }

  async getHub(): Promise<RemoteHub> {
    if (!this.hub) {
      this.hub = new RemoteHub(this.hubEndpoint);
      await this.hub.bind();
    }
    return this.hub;
  }

  /** A partition id and token the hub admits (the hub only routes by them). */
  admit(hub: RemoteHub): { partitionId: number; token: string } {
    const partitionId = this.nextPartition++;
    const token = randomBytes(16).toString('hex');
    hub.admit(partitionId, token);
    return { partitionId, token };
  }

  /** Starts this run's hypervisor (`env`: more of its environment); one at a time (stopHypervisor). */
  async startHypervisor(env: Record<string, string> = {}): Promise<HvClient> {
    progress(`starting a hypervisor (home ${this.dir}, sockets ${this.paths.sockDir}, host ${this.hostId})`);
    mkdirSync(this.paths.sockDir, { recursive: true, mode: 0o700 });
    this.hvProc = spawnOwned('hypervisor', [...nodeArgsFor(join(here, 'bare-hypervisor.ts')), this.paths.sockDir, this.hostId, String(LPS)], {
      ...this.env(), HVLAB_HOME: this.dir, ...env,
    });
    if (this.hvProc.child.pid !== undefined) this.tracked.add(this.hvProc.child.pid);
    const rootToken = (await waitLine(this.hvProc, 'ready ', 20000)).slice('ready '.length);
    this.hv = new HvClient(this.paths.hvEndpoint, (n) => this.hvNotify(n));
    await this.hv.connect({ partitionId: ROOT_PARTITION_ID, token: rootToken, role: 'bench', vm: null });
    return this.hv;
  }

  /** Stops the hypervisor and sweeps whatever of this run's host it left (its regions, the partitions' memory). */
  async stopHypervisor(): Promise<void> {
    this.hv?.close();
    this.hv = null;
    await stopOwned(this.hvProc);
    this.hvProc = null;
    sweepHost(this.paths, this.hostId);
  }

  cleanup(): Promise<void> {
    this.cleaning ??= (async () => {
      for (const o of this.children) o.child.stdin?.end();
      await Promise.all([...this.children].map((o) => stopOwned(o)));
      this.hv?.close();
      this.hub?.close();
      await stopOwned(this.hvProc);
      for (const name of this.regions) {
        try {
          unlinkRegion(name);
        } catch (e) {
          progress(`unlinking ${name} failed: ${(e as Error).message}`);
        }
      }
      this.regions.clear();
      // Anything of this run still there (our children, the hypervisor, its partition's memory).
      sweepHost(this.paths, this.hostId);
      for (const o of [...this.children, this.hvProc]) if (o && !exited(o.child)) o.child.kill('SIGKILL');
      rmSync(this.paths.sockDir, { recursive: true, force: true });
      rmSync(this.dir, { recursive: true, force: true });
      await reportLeftovers('vmbus', this.tracked, [this.hostId]);
    })();
    return this.cleaning;
  }
}

// ---- 1. throughput ------------------------------------------------------------------------------

/** A reader that checks each packet's size and sequence number (writers number them from 0). */
function sequenceChecker(size: number, what: string): { fn: (type: number, flags: number, transId: bigint, payload: Uint8Array) => void; count: () => number } {
  let received = 0;
  let expect = 0;
  return {
    fn: (_type, _flags, _transId, payload) => {
      if (payload.length !== size) throw new Error(`${what}: a packet with ${payload.length} payload bytes, expected ${size}`);
      const s = seqOf(payload);
      if (s !== expect) throw new Error(`${what}: packet ${s} arrived where ${expect} was due`);
      expect = (expect + 1) >>> 0;
      received++;
    },
    count: () => received,
  };
}

async function shmThroughput(run: Run, size: number, burst = TP_BURST): Promise<ShmRate> {
  const { name, buffer } = run.region(`tp${size}`, benchRegionBytes(TP_RING_DATA_BYTES));
  const { a } = benchRings(buffer, TP_RING_DATA_BYTES);
  initRing(a);
  const ctl = new Int32Array(buffer, 0, CTL_PAGE_BYTES >>> 2);
  const reader = new RingReader(a, 'bench A in');
  const check = sequenceChecker(size, `shm ${size} B`);
  const child = run.spawn(`ring writer (${size} B)`, ['shm-writer', name, String(size), String(run.napAfterUs), String(burst)]);
  const backoff = new Backoff(run.napAfterUs);
  await waitLine(child, 'ready', 20000);
  run.unlink(name); // both sides have it mapped; nothing to leak from here on

  Atomics.store(ctl, CTL_GO, 1);
  const start = performance.now();
  let lastYield = start;
  let t0 = 0;
  let c0 = 0;
  let cpu0 = cpuMark();
  let naps0 = 0;
  let timing = false;
  let t1 = 0;
  let c1 = 0;
  let readerCpu = 0;
  for (let iter = 1; ; iter++) {
    // The clock costs about as much as polling an empty ring: read it after a drain that found
    // packets, and after every 64th empty one.
    if (reader.drain(check.fn) !== 0) {
      backoff.busy();
    } else {
      backoff.idle();
      if ((iter & 0x3f) !== 0) continue;
    }
    const now = performance.now();
    if (!timing && now - start >= run.plan.warmupMs) {
      timing = true;
      t0 = now;
      c0 = check.count();
      cpu0 = cpuMark();
      naps0 = backoff.naps;
    } else if (timing && now - t0 >= run.plan.measureMs) {
      t1 = now;
      c1 = check.count();
      readerCpu = cpuShareSince(cpu0);
      break;
    }
    if (now - lastYield >= YIELD_MS) {
      await yieldNow();
      if (exited(child.child)) throw new Error(whyGone(child));
      lastYield = performance.now();
    }
  }
  Atomics.store(ctl, CTL_STOP, 1);
  const done = parseDone(await waitLine(child, 'done ', 10000));
  await run.stop(child);
  if (c1 - c0 === 0) throw new Error(`shm ${size} B: no packets arrived in ${run.plan.measureMs} ms`);
  const readerNaps = backoff.naps - naps0;
  return {
    ...rate(c1 - c0, size, t1 - t0),
    cpuShare: { reader: readerCpu, writer: done.cpuShare },
    writerFullPerPacket: round(done.full / Math.max(1, done.packets), 2),
    // The writer's count covers warm-up and the timed window; ours only the window.
    napsPerS: { reader: Math.round(readerNaps / ((t1 - t0) / 1000)), writer: Math.round(done.naps / ((t1 - start) / 1000)) },
  };
}

async function zmqThroughput(run: Run, size: number): Promise<ProcRate> {
  const hub = await run.getHub();
  const { partitionId, token } = run.admit(hub);
  const t = hub.open(partitionId, 1, 1, ZMQ_WINDOW, `bench tp ${size}`);
  const check = sequenceChecker(size, `zmq ${size} B`);
  let fault: Error | null = null;
  let checkError: unknown = null;
  t.attach({
    packet: (type, flags, transId, payload) => {
      try {
        check.fn(type, flags, transId, payload);
      } catch (e) {
        checkError ??= e;
      }
    },
    writable: () => undefined,
    fault: (e) => void (fault ??= e),
  });
  const child = run.spawn(`zmq sender (${size} B)`, ['zmq-sender', run.hubEndpoint, String(partitionId), token, String(size), String(ZMQ_WINDOW)]);
  try {
    await waitLine(child, 'ready', 20000);
    child.child.stdin!.write('go\n');
    // The first packet first (a ZeroMQ connection on a loaded machine can take longer than the
    // warm-up), then the warm-up: the window measures a flowing stream, never the connection.
    const firstBy = Date.now() + 10000;
    while (check.count() === 0 && fault === null && Date.now() < firstBy && !exited(child.child)) await sleep(10);
    await sleep(run.plan.warmupMs);
    const t0 = performance.now();
    const c0 = check.count();
    const cpu0 = cpuMark();
    await sleep(run.plan.measureMs);
    const t1 = performance.now();
    const c1 = check.count();
    const readerCpu = cpuShareSince(cpu0);
    child.child.stdin!.write('stop\n');
    const done = parseDone(await waitLine(child, 'done ', 10000));
    if (fault) throw fault;
    if (checkError) throw checkError;
    if (c1 - c0 === 0) {
      // What each end saw, so a stall says where it was: the sender's count and credit waits, ours, the hub's refusals.
      const seen = `the sender sent ${done.packets} and waited for credit ${done.full} times; ${c1} arrived in all; hub ${JSON.stringify(hub.stats)}`;
      throw new Error(`zmq ${size} B: no packets arrived in ${run.plan.measureMs} ms (${seen})${exited(child.child) ? `; ${whyGone(child)}` : ''}`);
    }
    return { ...rate(c1 - c0, size, t1 - t0), cpuShare: { reader: readerCpu, writer: done.cpuShare } };
  } finally {
    await run.stop(child);
    hub.closeChannel(partitionId, 1);
    hub.forget(partitionId);
  }
}

/**
 * Uint8Array.set of `count` payloads of `size` bytes into a buffer as large as the ring's data area,
 * advancing by the space a packet takes in the ring. After a warm-up pass, passes of `count` packets
 * repeat for measureMs / 4; the fastest pass counts (a slower one was preempted, not copying).
 */
function memcpyThroughput(size: number, count: number, into: 'ArrayBuffer' | 'SharedArrayBuffer' | 'SharedArrayBuffer, native', measureMs: number): Rate {
  const src = new Uint8Array(size);
  for (let i = 0; i < size; i++) src[i] = (i * 31) & 0xff;
  const dst = new Uint8Array(into === 'ArrayBuffer' ? new ArrayBuffer(TP_RING_DATA_BYTES) : new SharedArrayBuffer(TP_RING_DATA_BYTES));
  const step = packetBytes(size);
  let sink = 0;
  // As the ring writer calls it: the SharedArrayBuffer and an offset into it, the source view whole.
  const sab = dst.buffer;
  const pass = into === 'SharedArrayBuffer, native'
    ? (n: number): void => {
        let off = 0;
        for (let i = 0; i < n; i++) {
          if (off + step > dst.length) off = 0;
          copyBytes(sab, off, src, 0, size);
          off += step;
        }
        sink ^= dst[off - step]!;
      }
    : (n: number): void => {
        let off = 0;
        for (let i = 0; i < n; i++) {
          if (off + step > dst.length) off = 0;
          dst.set(src, off);
          off += step;
        }
        sink ^= dst[off - step]!;
      };
  pass(Math.min(count, 100_000));
  let best = Infinity;
  const start = performance.now();
  do {
    const t0 = performance.now();
    pass(count);
    best = Math.min(best, performance.now() - t0);
  } while (performance.now() - start < measureMs / 4);
  if (sink === 0x100) progress('(unreachable)');
  return rate(count, size, Math.max(best, 1e-3));
}

// ---- 2. latency ---------------------------------------------------------------------------------

/** Ring A (here -> child) and ring B (child -> here) for the ping-pongs. */
function pingPongRings(run: Run, tag: string): { name: string; ctl: Int32Array; writer: RingWriter; reader: RingReader } {
  const { name, buffer } = run.region(tag, benchRegionBytes(PP_RING_DATA_BYTES));
  const { a, b } = benchRings(buffer, PP_RING_DATA_BYTES);
  initRing(a);
  initRing(b);
  return { name, ctl: new Int32Array(buffer, 0, CTL_PAGE_BYTES >>> 2), writer: new RingWriter(a, 'bench A out'), reader: new RingReader(b, 'bench B in') };
}

/** Runs warmup + n round trips; `once(i)` returns the ns of round trip i. Yields between round trips now and then. */
async function roundTrips(plan: Plan, once: (i: number) => number | Promise<number>, alive: () => void): Promise<number[]> {
  const samples: number[] = [];
  let lastYield = performance.now();
  for (let i = 0; i < plan.warmup + plan.n; i++) {
    const ns = await once(i);
    if (i >= plan.warmup) samples.push(ns);
    if (performance.now() - lastYield >= YIELD_MS) {
      await yieldNow();
      alive();
      lastYield = performance.now();
    }
  }
  return samples;
}

async function shmPollLatency(run: Run): Promise<PollLatency> {
  const { name, ctl, writer, reader } = pingPongRings(run, 'pp-poll');
  const child = run.spawn('ring echo (polling)', ['shm-echo-poll', name, String(run.napAfterUs)]);
  const backoff = new Backoff(run.napAfterUs);
  await waitLine(child, 'ready', 20000);
  run.unlink(name);
  const req = new Uint8Array(LATENCY_PAYLOAD);
  const dv = new DataView(req.buffer);
  let reply = -1;
  const onReply = (_t: number, _f: number, _id: bigint, p: Uint8Array): void => {
    reply = seqOf(p);
  };
  Atomics.store(ctl, CTL_GO, 1);
  const once = (i: number): number => {
    dv.setUint32(0, i, true);
    reply = -1;
    const t0 = process.hrtime.bigint();
    if (writer.tryWrite(PacketType.DataInband, 0, 0n, req) === 'full') throw new Error('ring A is full in a ping-pong');
    backoff.busy();
    for (let spins = 1; reply < 0; spins++) {
      if (reader.drain(onReply) === 0) backoff.idle();
      if ((spins & 0xffff) === 0 && Number(process.hrtime.bigint() - t0) > STUCK_MS * 1e6) {
        throw new Error(`no reply to request ${i} within ${STUCK_MS / 1000} s${exited(child.child) ? `; ${whyGone(child)}` : ''}`);
      }
    }
    const ns = Number(process.hrtime.bigint() - t0);
    if (reply !== i) throw new Error(`reply ${reply} to request ${i}`);
    return ns;
  };
  const samples = await roundTrips(run.plan, once, () => {
    if (exited(child.child)) throw new Error(whyGone(child));
  });
  Atomics.store(ctl, CTL_STOP, 1);
  const done = parseDone(await waitLine(child, 'done ', 10000));
  await run.stop(child);
  return { ...latency(samples), naps: { parent: backoff.naps, child: done.naps } };
}

/** `hvEnv`: the hypervisor's environment beyond the run's (HVLAB_HC_POLL_MAX_US for the base-poll row). */
async function shmSignalLatency(run: Run, hvEnv: Record<string, string> = {}): Promise<SignalLatency> {
  const hv = await run.startHypervisor(hvEnv);
  // A child partition the way a VMWP builds one; the child programs its SynIC itself, as a guest does.
  const created = await hv.must<{ partitionId: number; token: string }>('CreatePartition', { memoryBytes: MIN_MEMORY_BYTES, name: 'vmbus-bench' });
  const pid = created.partitionId;
  await hv.must('SetPartitionProperty', { partitionId: pid, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES });
  await hv.must('InitializePartition', { partitionId: pid });
  await hv.must('MapGpaPages', { partitionId: pid, gpaPage: 0, pageCount: MIN_MEMORY_BYTES / PAGE });
  await hv.must('CreateVp', { partitionId: pid, vpIndex: 0 });
  // child -> root: an event port in the root owned by our session (rootevent); root -> child: an event port on the child's SINT 2 (sint).
  await hv.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: ROOT_EVENT_PORT, type: PortType.Event, vpIndex: 0, sint: 0, flagCount: 1 });
  await hv.must('ConnectPort', { partitionId: pid, connectionId: CHILD_TO_ROOT_CONNECTION, portPartitionId: ROOT_PARTITION_ID, portId: ROOT_EVENT_PORT });
  await hv.must('CreatePort', { partitionId: pid, portId: CHILD_EVENT_PORT, type: PortType.Event, vpIndex: 0, sint: BENCH_SINT, flagCount: 1 });
  await hv.must('ConnectPort', { partitionId: ROOT_PARTITION_ID, connectionId: ROOT_TO_CHILD_CONNECTION, portPartitionId: pid, portId: CHILD_EVENT_PORT });

  const { name, ctl, writer, reader } = pingPongRings(run, 'pp-signal');
  const events = new Events('rootevent (the reply signal)');
  run.hvNotify = (n) => {
    if (n.k === 'rootevent' && n.portId === ROOT_EVENT_PORT) events.post();
  };
  const child = run.spawn('ring echo (signals)', ['shm-echo-signal', name, run.paths.hvEndpoint, String(pid), created.token, String(CHILD_TO_ROOT_CONNECTION)]);
  await waitLine(child, 'ready', 20000);
  run.unlink(name);

  let toChild = 0;
  let hvError: Error | null = null;
  // Posted, as a VMWP signals its guest (HvClient.signal).
  hv.onSignalFailed = (f) => void (hvError ??= new Error(`SignalEvent to the child failed with ${f.statusName}`));
  const signalChild = (): void => {
    toChild++;
    hv.signal(ROOT_TO_CHILD_CONNECTION, 0);
  };
  const req = new Uint8Array(LATENCY_PAYLOAD);
  const dv = new DataView(req.buffer);
  let reply = -1;
  const onReply = (_t: number, _f: number, _id: bigint, p: Uint8Array): void => {
    reply = seqOf(p);
  };
  Atomics.store(ctl, CTL_GO, 1);
  const once = async (i: number): Promise<number> => {
    dv.setUint32(0, i, true);
    reply = -1;
    const t0 = process.hrtime.bigint();
    const r = writer.tryWrite(PacketType.DataInband, 0, 0n, req);
    if (r === 'full') throw new Error('ring A is full in a ping-pong');
    if (r === 'signal') signalChild();
    while (reply < 0) {
      await events.next();
      reader.mask();
      do reader.drain(onReply);
      while (reader.unmask());
      if (reader.takeWriterSignal()) signalChild();
    }
    const ns = Number(process.hrtime.bigint() - t0);
    if (hvError) throw hvError;
    if (reply !== i) throw new Error(`reply ${reply} to request ${i}`);
    return ns;
  };
  const samples = await roundTrips(run.plan, once, () => {
    if (exited(child.child)) throw new Error(whyGone(child));
  });
  Atomics.store(ctl, CTL_STOP, 1);
  const done = parseDone(await waitLine(child, 'done ', 10000));
  await run.stop(child);
  const total = run.plan.warmup + run.plan.n;
  await run.stopHypervisor();
  return { ...latency(samples), signalsPerRoundTrip: { toChild: round(toChild / total, 3), toParent: round(done.signals / total, 3) } };
}

/** (c): the other process's event loop woken by a word watch or by our wake descriptor, one sample each in turn. */
async function loopWakeLatency(run: Run): Promise<LoopWake> {
  const wake = openWakeFd();
  if (!wake) throw new Error('no wake descriptor could be made here');
  const { name, buffer } = run.region('loop-wake', 4096);
  const w = new Int32Array(buffer);
  const child = run.spawn('event-loop waker', ['loop-wake', name, String(process.pid), String(wake.fd)]);
  try {
    await waitLine(child, 'ready', 20000);
    run.unlink(name);
    const word: number[] = [];
    const descriptor: number[] = [];
    const total = 2 * (run.plan.warmup + run.plan.n);
    let lastYield = performance.now();
    for (let i = 1; i <= total; i++) {
      const byWord = (i & 1) === 0;
      const t0 = process.hrtime.bigint();
      Atomics.store(w, 0, i);
      if (byWord) futexWake(buffer, 0);
      else signalWakeFd(wake.id);
      // Blocking here is what a hypervisor thread does; the child answers within microseconds.
      while (Atomics.load(w, 1) !== i) {
        if (futexWait(buffer, 1, Atomics.load(w, 1), STUCK_MS) === 'timed-out' && Atomics.load(w, 1) !== i) {
          throw new Error(`the event-loop waker did not answer ${i} within ${STUCK_MS / 1000} s${exited(child.child) ? `; ${whyGone(child)}` : ''}`);
        }
      }
      const ns = Number(process.hrtime.bigint() - t0);
      if (i > 2 * run.plan.warmup) (byWord ? word : descriptor).push(ns);
      if (performance.now() - lastYield >= YIELD_MS) {
        await yieldNow();
        if (exited(child.child)) throw new Error(whyGone(child));
        lastYield = performance.now();
      }
    }
    const a = latency(word);
    const b = latency(descriptor);
    return { word: a, descriptor: b, ratio: round(b.p50 / a.p50, 2) };
  } finally {
    child.child.stdin!.end();
    await run.stop(child);
    closeWakeFd(wake.id);
  }
}

async function zmqLatency(run: Run): Promise<Latency> {
  const hub = await run.getHub();
  const { partitionId, token } = run.admit(hub);
  const t: RemoteTransport = hub.open(partitionId, 1, 1, ZMQ_WINDOW, 'bench echo');
  const synced = new Events('first packet from the zmq echo child');
  const replies = new Events('zmq reply');
  let reply = -1;
  let fault: Error | null = null;
  t.attach({
    packet: (_type, _flags, transId, payload) => {
      if (transId === SYNC_TRANS_ID) {
        synced.post();
        return;
      }
      reply = seqOf(payload);
      replies.post();
    },
    writable: () => undefined,
    fault: (e) => void (fault ??= e),
  });
  const child = run.spawn('zmq echo', ['zmq-echo', run.hubEndpoint, String(partitionId), token, String(ZMQ_WINDOW)]);
  try {
    await waitLine(child, 'ready', 20000);
    await synced.next(); // the hub knows the child's route now
    const req = new Uint8Array(LATENCY_PAYLOAD);
    const dv = new DataView(req.buffer);
    const once = async (i: number): Promise<number> => {
      dv.setUint32(0, i, true);
      reply = -1;
      const t0 = process.hrtime.bigint();
      if (!t.send(PacketType.DataInband, 0, 0n, req)) throw new Error('the zmq channel ran out of credit in a ping-pong');
      await replies.next();
      const ns = Number(process.hrtime.bigint() - t0);
      if (fault) throw fault;
      if (reply !== i) throw new Error(`reply ${reply} to request ${i}`);
      return ns;
    };
    const samples = await roundTrips(run.plan, once, () => {
      if (exited(child.child)) throw new Error(whyGone(child));
    });
    child.child.stdin!.write('stop\n');
    await waitLine(child, 'done ', 10000);
    return latency(samples);
  } finally {
    await run.stop(child);
    hub.closeChannel(partitionId, 1);
    hub.forget(partitionId);
  }
}

// ---- output -------------------------------------------------------------------------------------

function table(r: VmbusBenchResult): string {
  const pad = (s: string, w: number): string => s.padEnd(w);
  const num = (x: number | string, w: number): string => String(x).padStart(w);
  const sizeName = (s: number): string => (s >= 1024 ? `${s / 1024} KiB` : `${s} B`);
  const lines: string[] = [];
  lines.push(`throughput: writer in a child process, reader here, ${r.n.throughputMs} ms timed after ${r.n.warmupMs} ms warm-up; MB = 10^6 payload bytes`);
  lines.push(`polling: ${r.n.polling}`);
  lines.push(`${pad('payload', 9)}${pad('transport', 38)}${num('packets/s', 12)}${num('MB/s', 10)}${num('vs memcpy', 11)}  CPU share reader/writer`);
  for (const s of SIZES) {
    const m = r.throughput.memcpy[s]!;
    const row = (name: string, x: Rate | ProcRate | null | undefined, extra = ''): void => {
      if (!x) {
        lines.push(`${pad(sizeName(s), 9)}${pad(name, 38)}${num('skipped', 12)}`);
        return;
      }
      const cpu = 'cpuShare' in x ? `  ${x.cpuShare.reader}/${x.cpuShare.writer}` : '';
      lines.push(`${pad(sizeName(s), 9)}${pad(name, 38)}${num(x.pps, 12)}${num(x.mbps, 10)}${num(round(x.mbps / m.mbps, 3), 11)}${cpu}${extra}`);
    };
    const shm = r.throughput.shm?.[s];
    row(`shm ring (both sides polling, ${r.ringBurst} per commit)`, shm, shm ? `, ring full ${shm.writerFullPerPacket}x/packet, naps/s ${shm.napsPerS.reader}/${shm.napsPerS.writer}` : '');
    const one = s === 16384 ? r.throughput.shmPerPacket16k : null;
    if (one) row('  same, a commit per packet', one, `, ring full ${one.writerFullPerPacket}x/packet`);
    row(`zmq RemoteHub/Link (${ZMQ_WINDOW / 1024} KiB credit)`, r.throughput.zmq[s]);
    row('memcpy (Uint8Array.set into ArrayBuffer)', m);
    row('  same into a SharedArrayBuffer', r.throughput.memcpyShared[s]);
    const nat = r.throughput.memcpySharedNative?.[s];
    if (nat) row('  same with copyBytes (native memmove)', nat, s >= r.nativeCopyMin ? '  <- the ring writer copies this way' : '');
  }
  lines.push('');
  lines.push(`latency: ${LATENCY_PAYLOAD} B request/response, ${r.n.roundTrips} round trips after ${r.n.warmupRoundTrips} warm-up`);
  lines.push(`${pad('transport', 47)}${num('p50 µs', 10)}${num('p99 µs', 10)}${num('mean µs', 10)}`);
  const lrow = (name: string, x: Latency | null): void => {
    lines.push(x ? `${pad(name, 47)}${num(x.p50, 10)}${num(x.p99, 10)}${num(x.mean, 10)}` : `${pad(name, 47)}${num('skipped', 10)}`);
  };
  const poll = r.latencyUs.shmPoll;
  lrow('shm ring, polling', poll);
  if (poll && poll.naps.parent + poll.naps.child > 0) lines.push(`  (back-off naps: ${poll.naps.parent} here, ${poll.naps.child} in the child)`);
  const sig = r.latencyUs.shmSignal;
  lrow('shm ring, SignalEvent through the hypervisor', sig);
  if (sig) lines.push(`  (SignalEvent calls per round trip: ${sig.signalsPerRoundTrip.toChild} to the child, ${sig.signalsPerRoundTrip.toParent} back)`);
  const basePoll = r.latencyUs.shmSignalBasePoll;
  lrow(`  same, bell poll at its ${BASE_POLL_US} µs base`, basePoll);
  lrow('zmq RemoteHub/Link', r.latencyUs.zmq);
  const lw = r.latencyUs.loopWake;
  if (lw) {
    lrow('wake of an event loop, word watch (2 wake-ups)', lw.word);
    lrow('  same, wake descriptor (1 wake-up)', lw.descriptor);
  }
  if (r.latencyUs.shmPoll) lines.push(`  ratio zmq / shm polling (p50): ${round(r.latencyUs.zmq.p50 / r.latencyUs.shmPoll.p50, 1)}`);
  if (sig) lines.push(`  ratio shm signalled / zmq (p50): ${round(sig.p50 / r.latencyUs.zmq.p50, 2)}`);
  if (sig && basePoll) lines.push(`  ratio adaptive bell poll / base poll (p50): ${round(sig.p50 / basePoll.p50, 2)}`);
  if (lw) lines.push(`  ratio wake descriptor / word watch (p50, interleaved): ${lw.ratio}`);
  lines.push('');
  const aim = (name: string, v: number | null, target: number, met: boolean | null, what: string): void => {
    if (v === null) lines.push(`${name} = skipped (no shared memory); aim >= ${target}: not measured`);
    else lines.push(`${name} = ${v} (${what}); aim >= ${target}: ${met ? 'MET' : 'NOT met'} in this run`);
  };
  aim('shmVsZmq64', r.ratios.shmVsZmq64, AIMS.shmVsZmq64, r.met.shmVsZmq64, 'shm packets/s / zmq packets/s at 64 B');
  aim('shmVsMemcpy16k', r.ratios.shmVsMemcpy16k, AIMS.shmVsMemcpy16k, r.met.shmVsMemcpy16k, `shm bytes/s / memcpy bytes/s at 16 KiB, ${r.ringBurst} packets per commit`);
  if (r.ratios.shmPerPacketVsMemcpy16k !== null) lines.push(`shmPerPacketVsMemcpy16k = ${r.ratios.shmPerPacketVsMemcpy16k} (the same with a commit per packet; not an aim)`);
  if (sig && r.ratios.zmqVsSignalled !== null) {
    lines.push(`signalled64 = ${sig.p50} µs p50, zmqVsSignalled = ${r.ratios.zmqVsSignalled} (zmq round trip / signalled ring round trip, p50); aim <= ${AIMS.signalledP50Us} µs and >= ${AIMS.zmqVsSignalled}: ${r.met.signalled ? 'MET' : 'NOT met'} in this run`);
  } else {
    lines.push(`signalled64 = skipped (no shared memory); aim <= ${AIMS.signalledP50Us} µs and >= ${AIMS.zmqVsSignalled}x ZeroMQ: not measured`);
  }
  if (r.ratios.nativeVsV8Shared16k !== null) {
    lines.push(`nativeVsV8Shared16k = ${r.ratios.nativeVsV8Shared16k} (copyBytes / Uint8Array.set into a SharedArrayBuffer at 16 KiB; the ring uses copyBytes from ${r.nativeCopyMin} B)`);
  } else {
    lines.push('nativeVsV8Shared16k = skipped (the addon is not loaded: the ring copies with Uint8Array.set)');
  }
  lines.push(`memory mode ${r.memoryMode}, ${r.n.cpus} CPUs, load average ${r.n.loadAvg[0]} at the start, ${r.n.loadAvg[1]} at the end`);
  lines.push(disturbanceLine(r.disturbance));
  const shmRates = r.throughput.shm ? Object.values(r.throughput.shm) : [];
  const starved = shmRates.some((x) => x.cpuShare.reader < 0.5 || x.cpuShare.writer < 0.5);
  if (starved || Math.max(...r.n.loadAvg) > r.n.cpus - 1) {
    lines.push(
      `WARNING: other processes competed for the CPUs (load average above ${r.n.cpus - 1}, or a polling ring side got less ` +
        'than half a CPU): the two polling sides then share CPU time with them, and the shm rows measure the scheduler as much as the ring.',
    );
  }
  if (r.quick) lines.push(QUICK_NOTE);
  return lines.join('\n');
}

// ---- main ---------------------------------------------------------------------------------------

export async function main(args: string[]): Promise<void> {
  let json = false;
  let spin = false;
  for (const a of args) {
    if (a === '--json') json = true;
    else if (a === '--spin') spin = true;
    else if (a !== '--quick') throw new Error(`unknown argument "${a}" (usage: pnpm bench vmbus [--json] [--spin] [--quick])`);
  }
  const quick = quickRequested(args);
  const plan = quick ? QUICK : FULL;

  const mode = memoryMode();
  const load0 = loadavg()[0]!;
  const run = new Run();
  const disturbance = disturbanceTracker([run.hostId]);
  disturbance.sample();
  if (spin) run.napAfterUs = 0;
  run.plan = plan;
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`${sig}: cleaning up`);
    void run.cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const shared = mode === 'shared';
    if (!shared) progress(`shared memory is unavailable (${shmUnavailableReason()}): the shm rows are skipped`);

    // 1. throughput
    let shm: BySize<ShmRate> | null = null;
    let shmPerPacket16k: ShmRate | null = null;
    if (shared) {
      shm = {};
      for (const s of SIZES) {
        progress(`shm ring throughput, ${s} B payloads`);
        shm[s] = await shmThroughput(run, s);
        progress(`  ${shm[s]!.pps} packets/s, ${shm[s]!.mbps} MB/s`);
      }
      progress('shm ring throughput, 16384 B payloads, a commit per packet');
      shmPerPacket16k = await shmThroughput(run, 16384, 1);
      progress(`  ${shmPerPacket16k.pps} packets/s, ${shmPerPacket16k.mbps} MB/s`);
    }
    const zmq: BySize<ProcRate> = {};
    for (const s of SIZES) {
      progress(`zmq transport throughput, ${s} B payloads`);
      zmq[s] = await zmqThroughput(run, s);
      progress(`  ${zmq[s]!.pps} packets/s, ${zmq[s]!.mbps} MB/s`);
    }
    const memcpy: BySize<Rate> = {};
    const memcpyShared: BySize<Rate> = {};
    const memcpySharedNative: BySize<Rate> | null = copyBytesIsNative() ? {} : null;
    for (const s of SIZES) {
      const count = (shm?.[s] ?? zmq[s]!).packets;
      progress(`memcpy baseline, ${count} × ${s} B per pass, into an ArrayBuffer and into a SharedArrayBuffer (V8${memcpySharedNative ? ' and copyBytes' : ''})`);
      memcpy[s] = memcpyThroughput(s, count, 'ArrayBuffer', plan.measureMs);
      memcpyShared[s] = memcpyThroughput(s, count, 'SharedArrayBuffer', plan.measureMs);
      if (memcpySharedNative) memcpySharedNative[s] = memcpyThroughput(s, count, 'SharedArrayBuffer, native', plan.measureMs);
    }

    // 2. latency
    let shmPoll: PollLatency | null = null;
    let shmSignal: SignalLatency | null = null;
    let shmSignalBasePoll: SignalLatency | null = null;
    let loopWake: LoopWake | null = null;
    if (shared) {
      progress(`shm ring ping-pong, polling (${plan.warmup} + ${plan.n} round trips)`);
      shmPoll = await shmPollLatency(run);
    }
    progress(`zmq ping-pong (${plan.warmup} + ${plan.n} round trips)`);
    const zmqLat = await zmqLatency(run);
    run.hub?.close();
    run.hub = null;
    if (shared) {
      progress(`shm ring ping-pong, signals through the hypervisor (${plan.warmup} + ${plan.n} round trips)`);
      shmSignal = await shmSignalLatency(run);
      progress(`the same with the bell poll at its ${BASE_POLL_US} µs base (HVLAB_HC_POLL_MAX_US=${BASE_POLL_US}: the rule before it adapted)`);
      shmSignalBasePoll = await shmSignalLatency(run, { HVLAB_HC_POLL_MAX_US: String(BASE_POLL_US) });
    }
    if (shared && wakeFdAvailable()) {
      progress(`event-loop wake-ups, word watch and wake descriptor in turn (${plan.warmup} + ${plan.n} each)`);
      loopWake = await loopWakeLatency(run);
    }

    const shmVsZmq64 = shm ? round(shm[64]!.pps / zmq[64]!.pps, 2) : null;
    const shmVsMemcpy16k = shm ? round(shm[16384]!.mbps / memcpy[16384]!.mbps, 3) : null;
    const shmPerPacketVsMemcpy16k = shmPerPacket16k ? round(shmPerPacket16k.mbps / memcpy[16384]!.mbps, 3) : null;
    const nativeVsV8Shared16k = memcpySharedNative ? round(memcpySharedNative[16384]!.mbps / memcpyShared[16384]!.mbps, 2) : null;
    const zmqVsSignalled = shmSignal ? round(zmqLat.p50 / shmSignal.p50, 2) : null;
    const result: VmbusBenchResult = {
      bench: 'vmbus',
      memoryMode: mode,
      throughput: { shm, shmPerPacket16k, zmq, memcpy, memcpyShared, memcpySharedNative },
      nativeCopyMin: NATIVE_COPY_MIN,
      ringBurst: TP_BURST,
      latencyUs: { shmPoll, shmSignal, shmSignalBasePoll, zmq: zmqLat, loopWake },
      ratios: { shmVsZmq64, shmVsMemcpy16k, shmPerPacketVsMemcpy16k, nativeVsV8Shared16k, zmqVsSignalled },
      aims: { ...AIMS },
      met: {
        shmVsZmq64: shmVsZmq64 === null ? null : shmVsZmq64 >= AIMS.shmVsZmq64,
        shmVsMemcpy16k: shmVsMemcpy16k === null ? null : shmVsMemcpy16k >= AIMS.shmVsMemcpy16k,
        signalled: shmSignal && zmqVsSignalled !== null ? shmSignal.p50 <= AIMS.signalledP50Us && zmqVsSignalled >= AIMS.zmqVsSignalled : null,
      },
      n: {
        roundTrips: plan.n,
        warmupRoundTrips: plan.warmup,
        latencyPayloadBytes: LATENCY_PAYLOAD,
        throughputMs: plan.measureMs,
        warmupMs: plan.warmupMs,
        ringDataBytes: TP_RING_DATA_BYTES,
        zmqWindow: ZMQ_WINDOW,
        cpus: availableParallelism(),
        loadAvg: [round(load0, 2), round(loadavg()[0]!, 2)],
        polling: spin ? 'spin (--spin)' : `spin, nap ${NAP_US} µs after ${NAP_AFTER_US} µs idle`,
      },
      disturbance: (disturbance.sample(), disturbance.value),
      quick,
    };
    await run.cleanup();
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${table(result)}\n`);
  } finally {
    await run.cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
