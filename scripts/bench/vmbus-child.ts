/**
 * The other process of the VMBus benchmark (scripts/bench/vmbus.ts). argv[2] picks the role:
 *
 *   shm-writer <region> <payloadBytes> [napAfterUs] [burst]
 *                                               writes packets into ring A until told to stop,
 *                                               spinning when the ring is full (throughput); with
 *                                               napAfterUs > 0 it backs off as `Backoff` says; it
 *                                               stages `burst` packets (TP_BURST) per commit
 *   shm-echo-poll <region> [napAfterUs]        polls ring A and answers every packet in ring B
 *   shm-echo-signal <region> <hvEndpoint> <partitionId> <token> <connectionId>
 *                                               the same as a guest: programs its SynIC, runs the
 *                                               guest's VP thread on VP 0, sleeps until SINT 2 comes
 *                                               on its SINT line (raised by the hypervisor itself while
 *                                               VP 0 is halted, else by the VP taking the vector) and
 *                                               signals back with SignalEvent
 *   zmq-sender <endpoint> <partitionId> <token> <payloadBytes> <window>
 *                                               sends packets over a RemoteLink channel while it has
 *                                               credit, from "go" to "stop" on stdin (throughput)
 *   zmq-echo <endpoint> <partitionId> <token> <window>
 *                                               answers every packet of a RemoteLink channel
 *   loop-wake <region> <pid> <fd>               its event loop watches word 0 of the region both
 *                                               ways the hypervisor can wake a session's loop: a
 *                                               word watch, and process <pid>'s wake descriptor <fd>;
 *                                               answers each new number in word 0 by storing it in
 *                                               word 1 and waking that; leaves when stdin closes
 *
 * The shm roles map the region the parent created (layout: `benchRings`), print "ready" and wait
 * for `CTL_GO` in the region's first page; they stop at `CTL_STOP`, publish their counters in that
 * page and print "done {json}". The spinning roles install no signal handlers, so SIGTERM ends them
 * at once, and they leave by themselves if the parent is gone. The zmq roles print "ready" once the
 * channel is open and leave when stdin closes.
 */
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { futexWake, openRegion, watchWakeFd, watchWord } from '../../packages/shm/src/index.js';
import {
  EVENT_FLAG_BYTES_PER_SINT, GuestVector, KERNEL_MAGIC, KERNEL_PAGE_GPA, KernelPage, MAX_VPS_PER_PARTITION, PAGE,
  SINT_AUTO_EOI, VpPage, siefpGpa, simpGpa, synicPageRegister, vpPageOffset,
} from '../../packages/protocol/src/index.js';
import { HvClient, type Notification } from '../../packages/runtime/src/hvclient.js';
import { GuestMemory } from '../../packages/guest/src/memory.js';
import { TaskTable } from '../../packages/guest/src/workloads.js';
import type { VpStart } from '../../packages/guest/src/vp.js';
import { SintLine } from '../../packages/guest/src/sint-line.js';
import { PacketType, RingReader, RingWriter, RING_CONTROL_BYTES, type RingRegion } from '../../packages/vmbus/src/ring.js';
import { RemoteLink, type RemoteTransport } from '../../packages/vmbus/src/remote.js';

// ---- what parent and child agree on -------------------------------------------------------------

/** The benchmark's own control page in front of the rings (Int32 word indices; GO/STOP on their own cache lines). */
export const CTL_PAGE_BYTES = 0x1000;
export const CTL_GO = 16;
export const CTL_STOP = 32;
/** Counters the child publishes when it stops: packets written/answered, 'full' results, signals sent. */
export const CTL_DONE = 48;
export const CTL_PACKETS = 49;
export const CTL_FULL = 50;
export const CTL_SIGNALS = 51;

/**
 * Polling back-off: a side that has found nothing to do (ring full for the writer, empty for the
 * reader) for NAP_AFTER_US naps NAP_US at a time (Atomics.wait) until it finds work again, so two
 * polling sides that other processes leave one CPU to share still make progress. The threshold is
 * well above a nap (plus wake-up latency), so one side's nap never makes the other nap in turn; with
 * a CPU each, a side idles that long only when its peer was preempted. 0 = spin only.
 */
export const NAP_AFTER_US = 200;

/**
 * Packets the throughput writer stages per commit of the write index (RingWriter.stage/commit, as
 * OpenVMM's OutgoingRing::write and commit_write): a writer with packets ready publishes them once,
 * as DPDK's virtio driver publishes its avail index once per burst. 1 = a commit per packet.
 */
export const TP_BURST = 4;
export const NAP_US = 50;

/** The back-off of one polling loop: call `idle()` when a poll found nothing, `busy()` when it did. */
export class Backoff {
  naps = 0;
  private idleSince = -1;
  private tries = 0;
  private readonly word = new Int32Array(new SharedArrayBuffer(4));
  constructor(private readonly napAfterUs: number) {}
  busy(): void {
    this.idleSince = -1;
  }
  idle(): void {
    // The clock costs about as much as one poll: read it every 64th idle poll.
    if (this.napAfterUs <= 0 || (++this.tries & 0x3f) !== 0) return;
    const now = performance.now();
    if (this.idleSince < 0) {
      this.idleSince = now;
    } else if ((now - this.idleSince) * 1000 >= this.napAfterUs) {
      Atomics.wait(this.word, 0, 0, NAP_US / 1000);
      this.naps++;
    }
  }
}

/** The SINT the child's event port raises and its vector: the guest kernel's GUEST_SINT and GUEST_SINT_VECTOR. */
export const BENCH_SINT = 2;
export const BENCH_SINT_VECTOR = GuestVector.Vmbus;

/** Ring data sizes: throughput uses ring A only; ping-pong uses A (parent -> child) and B (child -> parent). */
export const TP_RING_DATA_BYTES = 256 * 1024;
export const PP_RING_DATA_BYTES = 64 * 1024;

/** Where ring A and B live in a region made for `dataBytes`-byte rings. */
export function benchRings(buffer: SharedArrayBuffer, dataBytes: number): { a: RingRegion; b: RingRegion } {
  const ringBytes = RING_CONTROL_BYTES + dataBytes;
  return {
    a: { buffer, byteOffset: CTL_PAGE_BYTES, byteLength: ringBytes },
    b: { buffer, byteOffset: CTL_PAGE_BYTES + ringBytes, byteLength: ringBytes },
  };
}

/** Region size for two rings of `dataBytes` after the control page. */
export function benchRegionBytes(dataBytes: number): number {
  return CTL_PAGE_BYTES + 2 * (RING_CONTROL_BYTES + dataBytes);
}

/** The transaction id of the zmq-echo child's first packet, which tells the parent the route is up. */
export const SYNC_TRANS_ID = 0xffff_ffffn;

// ---- helpers ------------------------------------------------------------------------------------

const parentPid = process.ppid;
const YIELD_MS = 50;
const yieldNow = (): Promise<void> => new Promise((r) => setImmediate(r));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function fail(msg: string): never {
  throw new Error(msg);
}

/** Leaves if the parent is gone (we were reparented). */
function checkParent(): void {
  if (process.ppid !== parentPid) {
    process.stderr.write('vmbus-child: the parent is gone, leaving\n');
    process.exit(3);
  }
}

function mapBench(name: string, dataBytes: number): { ctl: Int32Array; a: RingRegion; b: RingRegion } {
  const buffer = openRegion(name);
  if (buffer.byteLength < benchRegionBytes(dataBytes)) fail(`region ${name} has ${buffer.byteLength} bytes, fewer than ${benchRegionBytes(dataBytes)}`);
  return { ctl: new Int32Array(buffer, 0, CTL_PAGE_BYTES >>> 2), ...benchRings(buffer, dataBytes) };
}

/** CPU time and wall time since `waitGo` returned, for the share of a CPU this process got. */
let cpuAtGo = process.cpuUsage();
let wallAtGo = performance.now();

async function waitGo(ctl: Int32Array): Promise<void> {
  process.stdout.write('ready\n');
  while (Atomics.load(ctl, CTL_GO) === 0) {
    checkParent();
    await sleep(1);
  }
  cpuAtGo = process.cpuUsage();
  wallAtGo = performance.now();
}

/** What a child reports when it stops (stdout "done {json}"). */
export interface ChildDone {
  packets: number;
  full: number;
  signals: number;
  /** Times a polling child napped (`Backoff`). */
  naps: number;
  /** CPU seconds per wall second since "go" (1 = it had a CPU to itself the whole time). */
  cpuShare: number;
}

function cpuShare(): number {
  const u = process.cpuUsage(cpuAtGo);
  return Number(((u.user + u.system) / 1000 / Math.max(1, performance.now() - wallAtGo)).toFixed(2));
}

function publish(ctl: Int32Array, packets: number, full: number, signals: number, naps = 0): void {
  Atomics.store(ctl, CTL_PACKETS, packets | 0);
  Atomics.store(ctl, CTL_FULL, full | 0);
  Atomics.store(ctl, CTL_SIGNALS, signals | 0);
  Atomics.store(ctl, CTL_DONE, 1);
  const done: ChildDone = { packets, full, signals, naps, cpuShare: cpuShare() };
  process.stdout.write(`done ${JSON.stringify(done)}\n`);
}

/** Lines of stdin as they come; the process leaves when stdin closes (the parent is gone). */
function onStdinLine(fn: (line: string) => void): void {
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      fn(buf.slice(0, i).trim());
      buf = buf.slice(i + 1);
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

function num(s: string | undefined, what: string): number {
  const n = Number(s);
  if (s === undefined || !Number.isSafeInteger(n) || n < 0) fail(`${what} "${s}" is not a whole number`);
  return n;
}

// ---- roles --------------------------------------------------------------------------------------

/**
 * Ring A writer: packets whose first 4 bytes are a sequence number, as fast as the ring takes them;
 * spins on 'full' (with the back-off unless napAfterUs is 0).
 */
async function shmWriter(name: string, size: number, napAfterUs: number, burst: number): Promise<void> {
  if (!Number.isInteger(burst) || burst < 1) fail(`burst ${burst} is not a whole number of packets from 1`);
  const { ctl, a } = mapBench(name, TP_RING_DATA_BYTES);
  const writer = new RingWriter(a, 'bench A out');
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (i * 31) & 0xff;
  const dv = new DataView(payload.buffer);
  const backoff = new Backoff(napAfterUs);
  await waitGo(ctl);
  let seq = 0;
  let full = 0;
  let staged = 0;
  let lastYield = performance.now();
  for (let iter = 1; ; iter++) {
    if ((iter & 0x3ff) === 0) {
      // Nothing stays staged across a yield (the series lives within one synchronous step).
      writer.commit();
      staged = 0;
      if (Atomics.load(ctl, CTL_STOP) !== 0) break;
      const now = performance.now();
      if (now - lastYield >= YIELD_MS) {
        checkParent();
        await yieldNow();
        lastYield = performance.now();
      }
    }
    dv.setUint32(0, seq, true);
    // The reader polls: the commits' signal answers are not needed.
    if (writer.stage(PacketType.DataInband, 0, 0n, payload) === 'full') {
      // The reader makes room only for what it can see.
      writer.commit();
      staged = 0;
      full++;
      backoff.idle();
    } else {
      seq++;
      if (++staged === burst) {
        writer.commit();
        staged = 0;
      }
      backoff.busy();
    }
  }
  publish(ctl, seq, full, 0, backoff.naps);
}

/** Ring A reader / ring B writer, both polled (with the back-off unless napAfterUs is 0): every packet is sent back as it came. */
async function shmEchoPoll(name: string, napAfterUs: number): Promise<void> {
  const { ctl, a, b } = mapBench(name, PP_RING_DATA_BYTES);
  const reader = new RingReader(a, 'bench A in');
  const writer = new RingWriter(b, 'bench B out');
  const backoff = new Backoff(napAfterUs);
  let answered = 0;
  let full = 0;
  const echo = (type: number, flags: number, transId: bigint, payload: Uint8Array): void => {
    while (writer.tryWrite(type, flags, transId, payload) === 'full') full++;
    answered++;
  };
  await waitGo(ctl);
  let lastYield = performance.now();
  for (let iter = 1; ; iter++) {
    if (reader.drain(echo) !== 0) {
      backoff.busy();
      continue;
    }
    backoff.idle();
    if ((iter & 0xff) === 0) {
      if (Atomics.load(ctl, CTL_STOP) !== 0) break;
      const now = performance.now();
      if (now - lastYield >= YIELD_MS) {
        checkParent();
        await yieldNow();
        lastYield = performance.now();
      }
    }
  }
  publish(ctl, answered, full, 0, backoff.naps);
}

/**
 * What GuestKernel.start does before it starts its VPs, for one VP and no workload: the kernel page
 * (no current task on any VP), an empty task table, and the VP's SynIC programmed through
 * SetVpRegisters on itself (message page, event-flag page, SINT 2 at the VMBus vector with
 * auto-EOI, SynIC enabled). Then the guest's own VP thread on VP 0 (packages/guest/src/vp.ts):
 * it halts at once and is dispatched by the hypervisor's scheduler when its APIC has a vector,
 * and it hands SINT vectors to this thread (`onSint`), as a VP hands them to the kernel. SINT 2 is
 * registered on the line for the hypervisor too, as the kernel registers it (GuestKernel
 * lineToHypervisor): while VP 0 is halted the hypervisor raises it there itself, not through the VP.
 */
async function bootStandInGuest(
  hv: HvClient,
  session: { memoryRegion: string | null; vpRegion?: string | null; schedRegion?: string | null },
  onSint: (sint: number) => void,
): Promise<{ mem: GuestMemory; stop: () => Promise<void> }> {
  if (!session.memoryRegion || !session.vpRegion || !session.schedRegion) {
    fail(`the partition session has no ${!session.memoryRegion ? 'shared guest memory' : !session.vpRegion ? 'VP region' : 'scheduler region'}: the hypervisor runs without VP scheduling, and a SINT never reaches a VP`);
  }
  const mem = new GuestMemory(openRegion(session.memoryRegion));
  const vpRegion = openRegion(session.vpRegion);
  const sched = openRegion(session.schedRegion);
  const k = KERNEL_PAGE_GPA;
  mem.fill(k, PAGE, 0);
  mem.setU32(k + KernelPage.magic, KERNEL_MAGIC);
  for (let vp = 0; vp < MAX_VPS_PER_PARTITION; vp++) mem.setU32(k + KernelPage.currentTask + vp * 4, 0xffffffff);
  new TaskTable(mem).create('idle', 0, 1);
  await hv.must('SetVpRegisters', {
    partitionId: -1,
    vpIndex: 0,
    values: { Simp: synicPageRegister(simpGpa(0)), Siefp: synicPageRegister(siefpGpa(0)), [`Sint${BENCH_SINT}`]: BENCH_SINT_VECTOR | SINT_AUTO_EOI, Scontrol: 1 },
  });
  const { stopVpThreads } = await import('../../packages/guest/src/vp.js');
  const control = new SharedArrayBuffer(16);
  // The line the VP raises SINT 2 on, as the kernel's VPs do (null: a message per SINT, as there).
  const line = SintLine.open(1, (_vp, sint) => onSint(sint));
  // And the hypervisor raises SINT 2 there itself while VP 0 is halted, as it does for the kernel (GuestKernel.lineToHypervisor).
  line?.attachHypervisor(vpRegion, [BENCH_SINT], hv);
  const start: VpStart = {
    memory: mem.share(), vpRegion, sched, control, vpIndex: 0, vpCount: 1, sintVectors: { [BENCH_SINT_VECTOR]: BENCH_SINT }, sintLine: line?.handle ?? null,
  };
  const worker = new Worker(new URL('../../packages/guest/src/vp-thread.mjs', import.meta.url), { workerData: start, name: 'vp0' });
  // A VP that crashes is a failed run, as it is a crashed guest (GuestKernel exits too).
  worker.on('error', (e) => {
    process.stderr.write(`vmbus-child: VP 0's thread crashed: ${e.stack ?? e.message}\n`);
    process.exit(1);
  });
  await new Promise<void>((resolve, reject) => {
    worker.on('message', (m: { t?: string; sint?: number }) => {
      if (m?.t === 'online') resolve();
      else if (m?.t === 'sint') onSint(Number(m.sint));
    });
    worker.once('exit', (code) => reject(new Error(`VP 0's thread exited (code ${code}) before it came online`)));
  });
  // The VP halts with no timeout: it must leave its wait before this process exits (which joins it).
  const wake = (): void => void futexWake(vpRegion, (vpPageOffset(0) + VpPage.dispatch) >> 2);
  process.once('exit', () => stopVpThreads(control, wake));
  const stop = async (): Promise<void> => {
    const gone = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const stopped = new Promise<void>((resolve) => worker.on('message', (m: { t?: string }) => m?.t === 'stopped' && resolve()));
    stopVpThreads(control, wake);
    await Promise.race([stopped, gone, sleep(2000)]);
    await worker.terminate();
    line?.close();
  };
  return { mem, stop };
}

/**
 * Ring A reader / ring B writer as a guest would run them: the SINT interrupt, taken by the VP
 * thread, starts a drain with the ring masked; unmask re-checks; a reply written into an empty,
 * unmasked ring B is signalled to the parent with SignalEvent.
 */
async function shmEchoSignal(name: string, endpoint: string, partitionId: number, token: string, connectionId: number): Promise<void> {
  const { ctl, a, b } = mapBench(name, PP_RING_DATA_BYTES);
  const reader = new RingReader(a, 'bench A in');
  const writer = new RingWriter(b, 'bench B out');
  let answered = 0;
  let full = 0;
  let signals = 0;
  let hvError: Error | null = null;
  // Posted, as the guest kernel signals (HvClient.signal); a failure is reported to onSignalFailed.
  const signal = (): void => {
    signals++;
    hv.signal(connectionId, 0);
  };
  const echo = (type: number, flags: number, transId: bigint, payload: Uint8Array): void => {
    let r;
    while ((r = writer.tryWrite(type, flags, transId, payload)) === 'full') full++;
    answered++;
    if (r === 'signal') signal();
  };
  let mem: GuestMemory | null = null;
  const flagWord = siefpGpa(0) + BENCH_SINT * EVENT_FLAG_BYTES_PER_SINT;
  let interrupts = 0;
  let strays = 0;
  const onInterrupt = (sint: number): void => {
    if (sint !== BENCH_SINT || !mem) {
      strays++;
      return;
    }
    // Take the event flag first (a signal during the drain then raises the SINT again), as the
    // guest kernel does: load, and exchange only a word that has bits.
    if (mem.atomicLoad32(flagWord) !== 0) mem.atomicExchange32(flagWord, 0);
    interrupts++;
    reader.mask();
    do reader.drain(echo);
    while (reader.unmask());
    if (reader.takeWriterSignal()) signal();
  };
  const hv = new HvClient(endpoint, (n: Notification) => {
    // With VP scheduling a SINT arrives through the VP; a notification would be the fallback path.
    if (n.k === 'sint') onInterrupt(n.sint);
    else if (n.k === 'bye') process.exit(0);
  }, { onSignalFailed: (f) => void (hvError ??= new Error(`SignalEvent failed with ${f.statusName}`)) });
  const session = await hv.connect({ partitionId, token, role: 'bench-vmbus', vm: null });
  const guest = await bootStandInGuest(hv, session, onInterrupt);
  mem = guest.mem;
  await waitGo(ctl);
  while (Atomics.load(ctl, CTL_STOP) === 0) {
    if (hvError) throw hvError;
    checkParent();
    await sleep(5);
  }
  publish(ctl, answered, full, signals);
  process.stderr.write(`vmbus-child: ${interrupts} interrupts${strays > 0 ? `, ${strays} on other SINTs` : ''}\n`);
  await guest.stop();
  hv.close();
}

function openLink(endpoint: string, partitionId: number, token: string, window: number): { link: RemoteLink; t: RemoteTransport } {
  const link = new RemoteLink(endpoint, partitionId, token);
  return { link, t: link.open(1, 1, window, 'bench') };
}

/** Sends while it has credit, from "go" to "stop". */
function zmqSender(endpoint: string, partitionId: number, token: string, size: number, window: number): void {
  const { link, t } = openLink(endpoint, partitionId, token, window);
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (i * 31) & 0xff;
  const dv = new DataView(payload.buffer);
  let seq = 0;
  let blocked = 0;
  let running = false;
  const pump = (): void => {
    while (running) {
      dv.setUint32(0, seq, true);
      if (!t.send(PacketType.DataInband, 0, 0n, payload)) {
        blocked++;
        return; // `writable` resumes
      }
      seq++;
    }
  };
  t.attach({
    packet: () => undefined,
    writable: pump,
    fault: (e) => {
      process.stderr.write(`vmbus-child: channel fault: ${e.message}\n`);
      process.exit(1);
    },
  });
  onStdinLine((line) => {
    if (line === 'go') {
      running = true;
      cpuAtGo = process.cpuUsage();
      wallAtGo = performance.now();
      pump();
    } else if (line === 'stop') {
      running = false;
      const done: ChildDone = { packets: seq, full: blocked, signals: 0, naps: 0, cpuShare: cpuShare() };
      process.stdout.write(`done ${JSON.stringify(done)}\n`);
      link.close();
    }
  });
  process.stdout.write('ready\n');
}

/** Answers every packet; the first packet it sends (SYNC_TRANS_ID) tells the parent its hello went through. */
function zmqEcho(endpoint: string, partitionId: number, token: string, window: number): void {
  const { link, t } = openLink(endpoint, partitionId, token, window);
  const queue: Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }> = [];
  let answered = 0;
  let queued = 0;
  const flush = (): void => {
    while (queue.length > 0) {
      const p = queue[0]!;
      if (!t.send(p.type, p.flags, p.transId, p.payload)) return;
      queue.shift();
    }
  };
  t.attach({
    packet: (type, flags, transId, payload) => {
      answered++;
      if (queue.length === 0 && t.send(type, flags, transId, payload)) return;
      queued++;
      queue.push({ type, flags, transId, payload: payload.slice() });
    },
    writable: flush,
    fault: (e) => {
      process.stderr.write(`vmbus-child: channel fault: ${e.message}\n`);
      process.exit(1);
    },
  });
  t.send(PacketType.DataInband, 0, SYNC_TRANS_ID, new Uint8Array(0));
  onStdinLine((line) => {
    if (line === 'stop') {
      const done: ChildDone = { packets: answered, full: queued, signals: 0, naps: 0, cpuShare: cpuShare() };
      process.stdout.write(`done ${JSON.stringify(done)}\n`);
      link.close();
    }
  });
  process.stdout.write('ready\n');
}

/** An event loop woken by a word watch or by a wake descriptor, whichever the parent uses for each number. */
function loopWake(name: string, pid: number, fd: number): void {
  const sab = openRegion(name);
  const w = new Int32Array(sab);
  let answered = Atomics.load(w, 0);
  const onWake = (): void => {
    const v = Atomics.load(w, 0);
    if (v === answered) return;
    answered = v;
    Atomics.store(w, 1, v);
    futexWake(sab, 1);
  };
  const stopWord = watchWord(sab, 0, onWake);
  const stopFd = watchWakeFd(pid, fd, onWake);
  // Something must keep the loop alive (the watches do not): stdin, which the parent closes.
  process.stdin.resume();
  process.stdin.on('end', () => {
    stopWord();
    stopFd();
    process.exit(0);
  });
  process.stdout.write('ready\n');
}

async function main(argv: string[]): Promise<void> {
  const [role, ...a] = argv;
  switch (role) {
    case 'shm-writer':
      return shmWriter(a[0] ?? fail('region missing'), num(a[1], 'payload size'), a[2] === undefined ? 0 : num(a[2], 'nap-after µs'), a[3] === undefined ? TP_BURST : num(a[3], 'burst'));
    case 'shm-echo-poll':
      return shmEchoPoll(a[0] ?? fail('region missing'), a[1] === undefined ? 0 : num(a[1], 'nap-after µs'));
    case 'shm-echo-signal':
      return shmEchoSignal(a[0] ?? fail('region missing'), a[1] ?? fail('endpoint missing'), num(a[2], 'partition id'), a[3] ?? fail('token missing'), num(a[4], 'connection id'));
    case 'zmq-sender':
      return zmqSender(a[0] ?? fail('endpoint missing'), num(a[1], 'partition id'), a[2] ?? fail('token missing'), num(a[3], 'payload size'), num(a[4], 'window'));
    case 'zmq-echo':
      return zmqEcho(a[0] ?? fail('endpoint missing'), num(a[1], 'partition id'), a[2] ?? fail('token missing'), num(a[3], 'window'));
    case 'loop-wake':
      return loopWake(a[0] ?? fail('region missing'), num(a[1], 'pid'), num(a[2], 'descriptor'));
    default:
      fail(`unknown role "${String(role)}" (shm-writer | shm-echo-poll | shm-echo-signal | zmq-sender | zmq-echo | loop-wake)`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`vmbus-child: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
