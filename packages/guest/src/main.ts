/**
 * Entry of a child partition process, spawned by its VMWP with an IPC pipe as soon as the VMWP
 * starts (before the VMWP has built anything), so the two processes load their code at the same
 * time; it loads its code and one VP thread, then waits for its start-up line on stdin (start.ts:
 * home, host, hypervisor pid, partition id, VM name and the partition's token — never in the
 * environment, which /proc/PID/environ shows). It leaves when the hypervisor or its VMWP is gone.
 */
import { eagerCompile, hostPaths, movableProcessLogger, prewarmProcess, watchPids, earlyHvClient, hvClientFor, warnOnSignalFailures, IpcRpc, parentLink, readStdinLine, StdinEndedError, type Notification } from '@hvlab/runtime';
import { openRegion, privateRegion, KernelDirtyTracker, kernelDirtyTrackingUnavailableReason, PostcopyFaults, watchWord, wordWatchAvailable } from '@hvlab/shm';
import { PAGE, DEVICE_CLASS_NAMES, DEVICE_CLASSES, WORKLOAD_NAME_BYTES, GoWord } from '@hvlab/protocol';
import { loadDriverClass } from '@hvlab/vsc';
import { GuestMemory } from './memory.js';
import { GuestKernel } from './kernel.js';
import { prestartFirstVpThread, prestartVpThreads } from './spare.js';
import { decodePartitionStartInput, type PartitionStartInput } from './start.js';

/**
 * The partition process, run by its entry (boot.ts) once the first VP thread is under way. A
 * function rather than top-level code with `await`s, so that the process can run as a CommonJS
 * bundle from V8's code cache (runtime/src/code-cache.ts says why).
 */
export async function runPartition(): Promise<void> {
  // The host's id from the environment its worker gave it (a spare's knows no VM yet), so that a
  // waiting partition process of one home can be told from another's in a process list.
  const host = process.env.HVLAB_HOST_ID;
  process.title = host && /^[0-9a-f]{6}$/.test(host) ? `hvlab-partition ${host} (starting)` : 'hvlab-partition (starting)';
  prestartFirstVpThread();
  // Load every guest driver's code while waiting to be assigned (a warm or prestarted process then
  // boots without module loading); the kernel's own load later finds them in the module cache.
  // A migration's held destination waits for them before it says it is ready, so the kernel's start
  // in the blackout never waits on an import still under way.
  const driversLoaded = Promise.allSettled(DEVICE_CLASS_NAMES.filter((cls) => DEVICE_CLASSES[cls].vmbus).map((cls) => loadDriverClass(cls)));
  // The hypervisor's socket, connected while waiting (the VMWP's environment names it), and the
  // first run of the codecs and the logger paid now (runtime/src/prewarm.ts says why): this process
  // waits for its VMWP to build the partition either way.
  const earlyHv = earlyHvClient((n) => onHvNotification(n));
  prewarmProcess();
  // Loaded, the drivers too (they compile as their imports complete): what this process compiles
  // from then on, it compiles on first call (boot.ts).
  void driversLoaded.finally(() => eagerCompile(false));
  let input: PartitionStartInput;
  try {
    input = decodePartitionStartInput(await readStdinLine('the start-up input', 16384));
  } catch (e) {
    // The VMWP went away before it assigned this process (a spare's end when its host goes down):
    // nothing to run and nothing wrong. Anything else it sent is a fault, said on stderr.
    if (e instanceof StdinEndedError) process.exit(0);
    process.stderr.write(`hvlab partition: ${(e as Error).message}\n`);
    process.exit(1);
  }
  const { home, hostId, hvPid, partitionId, vm, token } = input;
  process.title = `hvlab-partition ${hostId} ${vm}`;
  const paths = hostPaths(home);
  // Movable: a booted warm worker's guest logs as its template until it is given its VM ('assign').
  const logger = movableProcessLogger(paths.logDir, `partition-${vm}.log`, { host: hostId, role: 'partition', vm, partition: partitionId });
  const log = logger.log;
  // Nothing the host sends may end the guest: log what escapes and keep running.
  process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception in the guest kernel'));
  process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection in the guest kernel'));

  let kernel: GuestKernel | null = null;
  let exiting = false;
  async function exit(reason: string, code = 0): Promise<void> {
    if (exiting) return;
    exiting = true;
    log.info({ reason }, 'partition exiting');
    try {
      await Promise.race([kernel?.stop(), new Promise((r) => setTimeout(r, 500))]);
    } catch { /* leaving anyway */ }
    kernel?.closeLinks();
    hv.close();
    process.exit(code);
  }

  // Interrupts are handled one at a time, in order, as a VP would take them.
  let chain: Promise<void> = Promise.resolve();
  function onHvNotification(n: Notification): void {
    if (n.k === 'sint') chain = chain.then(() => kernel?.onSint(n.vp, n.sint, n.slot, n.flag)).catch((e) => log.error({ err: e }, 'interrupt handling failed'));
    else if (n.k === 'suspend') kernel?.setSuspended(n.suspended);
    else if (n.k === 'bye') void exit(`hypervisor: ${n.reason}`, 1);
  }
  const hv = hvClientFor(paths.hvEndpoint, earlyHv, (n) => onHvNotification(n));
  warnOnSignalFailures(hv, (o, m) => log.warn(o, m));

  // Exit code 0 means "the guest shut down"; every other way out is non-zero.
  watchPids([hvPid], () => void exit('the hypervisor is gone', 1));
  // The link to the VMWP (fd 3): its close is the VMWP's end (IpcRpc below starts reading it).
  const vmwpLink = parentLink();
  vmwpLink.on('close', () => void exit('the VMWP is gone', 1));
  vmwpLink.on('error', () => void exit('the VMWP is gone', 1));
  process.on('SIGTERM', () => void exit('SIGTERM', 1));

  let firmware: Uint8Array | null = null;
  /** Set while a held partition waits for its `go`. */
  let release: ((postcopyControl: string | undefined) => void) | null = null;
  /** The go word's region, once the word released this held partition (GoWord: the VPs wait for Run). */
  let runGate: SharedArrayBuffer | null = null;
  const runWaiters: (() => void)[] = [];
  /** Ends the watch of the go word (set while it is watched). */
  let stopGoWatch: (() => void) | null = null;
  const go = input.hold ? new Promise<string | undefined>((r) => (release = r)) : null;
  if (input.hold) prestartVpThreads(Math.max(0, (input.vps ?? 1) - 1));
  /**
   * Live migration's dirty tracking of this process's mapping of guest memory (the VP threads write
   * through it): the kernel's, when userfaultfd works here; otherwise none, and the VMWP relies on
   * the dirty bitmap that GuestMemory keeps.
   */
  let tracker: KernelDirtyTracker | null = null;
  /** Post-copy: missing pages of guest memory are asked of the VMWP until it says all are here. */
  let postcopy: PostcopyFaults | null = null;
  function dirtyRequest(op: unknown): unknown {
    if (!kernel?.started) throw new Error('the guest has not booted');
    const sab = kernel.mem.share().memory;
    switch (op) {
      case 'start': {
        tracker?.close();
        tracker = null;
        const why = kernelDirtyTrackingUnavailableReason();
        if (why === null) tracker = KernelDirtyTracker.open(sab);
        return { mode: tracker ? 'kernel' : 'bitmap', reason: why };
      }
      case 'harvest': {
        const bitmap = new Int32Array(Math.ceil(sab.byteLength / PAGE / 32));
        const pages = tracker ? tracker.harvest(bitmap) : 0;
        return { pages, bitmap };
      }
      case 'stop':
        tracker?.close();
        tracker = null;
        return true;
      default:
        throw new Error(`unknown dirty-tracking operation ${String(op).slice(0, 32)}`);
    }
  }
  /**
   * A held partition's other way to be let go: word 0 of the VMWP's go region becomes GoWord.Start
   * (a go with no post-copy control region: the kernel starts; its VP threads started when it was
   * held, and wait at the word), then GoWord.Run (the VPs run, and the kernel may talk to the host).
   * Returns the region (the VP threads' gate) when the word is watched, else null. When it is
   * watched, the VMWP uses it instead of the IPC message, and unlinks the region once this process
   * has said it is held.
   */
  function watchGoWord(name: string | undefined): SharedArrayBuffer | null {
    if (!name || !wordWatchAvailable()) return null;
    try {
      const words = new Int32Array(openRegion(name));
      const look = (): void => {
        const v = Atomics.load(words, 0);
        if (v !== GoWord.Start && v !== GoWord.Run) return;
        if (release) {
          // Released by the word: the VPs and the kernel's talk with the host wait for Run.
          runGate = words.buffer as SharedArrayBuffer;
          release(undefined);
          release = null;
        }
        if (v !== GoWord.Run) return;
        stopGoWatch?.();
        for (const r of runWaiters.splice(0)) r();
      };
      const unwatch = watchWord(words.buffer as SharedArrayBuffer, 0, look);
      stopGoWatch = () => {
        unwatch();
        stopGoWatch = null;
      };
      look();
      return words.buffer as SharedArrayBuffer;
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'the go word cannot be watched: the VMWP sends its go as a message');
      return null;
    }
  }
  const rpc = new IpcRpc(vmwpLink, async (m) => {
    switch (m.t) {
      case 'firmware':
        // The boot information page: a page of bytes, or nothing is taken.
        if (!(m.page instanceof Uint8Array) || m.page.length > PAGE) throw new Error(`the firmware page must be at most ${PAGE} bytes`);
        firmware = m.page;
        return true;
      case 'read': {
        if (!kernel?.started) throw new Error('the guest has not booted');
        return kernel.mem.read(Number(m.gpa), Number(m.len));
      }
      case 'quiesce': {
        // suspension: the number of the VMWP's Suspend call, made beside this request: wait here
        // until the scheduler took it (kernel.vpsSuspended). harvest: the dirty set of this mapping
        // comes with the answer (a migration's last pass).
        if (!kernel?.started) throw new Error('the guest has not booted');
        const seq = m.suspension;
        if (seq !== undefined && (typeof seq !== 'number' || (seq | 0) !== seq || seq === 0)) throw new Error('quiesce: suspension must be a non-zero 32-bit integer');
        const q = await kernel.quiesceAfter(seq, 10000);
        return m.harvest === true ? { ...q, dirty: dirtyRequest('harvest') } : q;
      }
      case 'thaw':
        kernel?.thaw();
        return true;
      case 'dirty':
        return dirtyRequest(m.op);
      case 'go': {
        // A held partition (a migration's destination) starts its guest now.
        if (!release) throw new Error('this partition is not held');
        const pc = m.postcopyControl;
        if (pc !== undefined && (typeof pc !== 'string' || pc.length === 0 || pc.length > 200)) throw new Error('postcopyControl must be a region name');
        release(pc as string | undefined);
        release = null;
        stopGoWatch?.();
        return true;
      }
      case 'assign': {
        // A booted warm worker's guest becomes a VM's (the VMWP's claim): checked, then handed to the kernel.
        if (!kernel?.started) throw new Error('the guest has not booted');
        const name = m.vm;
        const workload = m.workload;
        const arg = m.arg;
        if (typeof name !== 'string' || name.length === 0 || name.length > 64) throw new Error('assign: vm must be a name of 1 to 64 characters');
        if (typeof workload !== 'string' || workload.length === 0 || workload.length >= WORKLOAD_NAME_BYTES) throw new Error(`assign: workload must be a name of 1 to ${WORKLOAD_NAME_BYTES - 1} characters`);
        if (typeof arg !== 'number' || !Number.isSafeInteger(arg) || arg < 0) throw new Error('assign: arg must be a whole number');
        kernel.assign({ hostName: name, workload, arg });
        logger.moveTo(`partition-${name}.log`, { host: hostId, role: 'partition', vm: name, partition: partitionId });
        process.title = `hvlab-partition ${hostId} ${name}`;
        log.info({ template: vm }, 'given its VM');
        return true;
      }
      case 'postcopyDone':
        // Every page is here: missing-page handling ends.
        postcopy?.close();
        postcopy = null;
        return true;
      case 'hypercall': {
        // `hvlab debug hypercall --as`: over the socket, so a refusal comes with its reason.
        const r = await hv.raw(Number(m.code), (m.input ?? {}) as Record<string, unknown>, { fast: false });
        return r;
      }
      default:
        throw new Error(`unknown request ${String(m.t)}`);
    }
  }, () => {}, (why) => void exit(`the VMWP's link broke: ${why}`, 1));

  try {
    const session = await hv.connect({ partitionId, token, role: 'partition', vm });
    const regions = session.vpRegion && session.schedRegion ? { vp: openRegion(session.vpRegion), sched: openRegion(session.schedRegion) } : { vp: null, sched: null };
    const newKernel = (m: GuestMemory): GuestKernel => {
      const k = new GuestKernel(m, hv, log, session.memoryMode !== 'shared', vm, regions);
      k.onShutdown = (why) => void exit(why, 0);
      // A migration's destination: its VMWP answers the source once the VPs ran, and waits for
      // 'booted' (the guest's VMBus client back) only before the commit.
      if (go) k.onVpsOnline = () => rpc.note({ t: 'online' });
      return k;
    };
    let mem: GuestMemory;
    if (session.memoryMode === 'shared' && session.memoryRegion) {
      const sab = openRegion(session.memoryRegion);
      // Held (a migration's destination): everything is ready; the guest's memory is not final until `go`.
      if (go) {
        await driversLoaded;
        const gate = watchGoWord(input.goRegion);
        rpc.note({ t: 'held', goWord: gate !== null });
        // Its VP threads start now, while the pages come, and wait at the go word's gate without
        // touching guest memory (GuestKernel.armVps): none of that work falls in the blackout.
        if (gate !== null && regions.vp !== null && process.env.HVLAB_GUEST_ARM_VPS !== '0') {
          kernel = newKernel(new GuestMemory(sab));
          kernel.armVps(Math.max(1, input.vps ?? 1), gate);
          log.info({ vps: Math.max(1, input.vps ?? 1) }, 'VP threads started ahead of the go: they wait at its gate');
        }
      }
      const postcopyControl = go ? await go : input.postcopyControl;
      // Tests: a held guest that does not start after its go (its VMWP then fails the move).
      const goStall = Number(process.env.HVLAB_GUEST_GO_STALL_MS);
      if (go && Number.isSafeInteger(goStall) && goStall > 0) await new Promise((r) => setTimeout(r, goStall));
      // Before anything reads guest memory: a page post-copy has not brought yet stops its reader until it is here.
      if (postcopyControl) postcopy = PostcopyFaults.open(sab, openRegion(postcopyControl));
      mem = kernel?.mem ?? new GuestMemory(sab);
    } else {
      mem = new GuestMemory(privateRegion(session.memoryBytes));
      // The VMWP cannot see private memory; it hands over the firmware page through the pipe.
      const t0 = Date.now();
      while (firmware === null && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 5));
      if (firmware === null) throw new Error('no firmware page from the VMWP');
      mem.write(0, firmware as Uint8Array);
    }
    kernel ??= newKernel(mem);
    if (runGate) {
      const gate = runGate;
      kernel.runGate = { word: gate, ran: Atomics.load(new Int32Array(gate), 0) === GoWord.Run ? Promise.resolve() : new Promise<void>((r) => runWaiters.push(r)) };
    }
    // Tests: a guest slow to resume (the commit of a migration then fails).
    const stall = Number(process.env.HVLAB_GUEST_RESUME_STALL_MS);
    if (Number.isSafeInteger(stall) && stall > 0) kernel.resumeStallMs = stall;
    await kernel.start();
    rpc.note({ t: 'booted' });
  } catch (e) {
    log.error({ err: e }, 'guest boot failed');
    await exit(`boot failed: ${(e as Error).message}`, 2);
  }
}
