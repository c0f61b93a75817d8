/**
 * The VM worker process (VMWP): one per running VM, spawned by VMMS. It owns its VM from build to
 * teardown, and outlives the root partition process that started it (as vmwp.exe outlives a VMMS
 * restart): VMMS talks to it over a control socket (protocol/src/vmwp.ts) that a restarted root
 * re-attaches to, found through the record this process keeps in `run/vmwp/NAME.json`.
 *
 * It builds the VM through hypercalls in a root-partition session opened with a one-time ticket
 * (never the root's token): CreatePartition, privileges and CPU properties, InitializePartition,
 * MapGpaPages, CreateVp, the control ports; it writes the boot page as firmware, hosts the VM's
 * devices (devices.ts: the VMBus server with the integration services, the CMOS clock on its
 * port-I/O bus), starts the child partition process, saves and restores the VM, and enforces the
 * VM's faults (faults.ts: set, timed and undone here, so a fault ends even if its root is gone).
 *
 * Start-up input arrives on stdin as one JSON line `{config, ticket, secret}` (nothing secret in
 * the environment, which any process of the same user can read in /proc/PID/environ).
 *
 * When it exits, even by kill -9, its child partition process sees the pipe close and leaves; the
 * root then tears the partition down. Nothing else is touched, as in Hyper-V.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import {
  BOOT_MAGIC, BootInfo, BOOT_INFO_GPA, STATUS_PAGE_GPA, decodeGuestStatus, decodeGuestKernelInfo, GUEST_STATUS_BYTES, GUEST_KERNEL_INFO_BYTES, type GuestKernelInfo, WORKLOAD_NAME_BYTES, ENLIGHTENED_CHILD_PRIVILEGES,
  PartitionProperty, PortType, ROOT_PARTITION_ID, PAGE, GUEST_CONTROL_CONNECTION_ID, GuestControlMessage, parseWorkload,
  VMBUS_ENDPOINT_BYTES, VMBUS_TOKEN_BYTES, KERNEL_PAGE_GPA, INTEGRATION_SERVICES, isDeviceClass, DEVICE_CLASS_NAMES,
  decodeMigrationOptions, decodePeerRequest, peerReplayKey, dirtyBitmapGpa, GuestVector, HvStatus, VpRegionHeader, firstRunOf, vpRegionName, memoryRegionName, MIG_CANCEL_TOO_LATE, postcopyRegionName, goRegionName, MIG_BATCH_MAX_PAGES, type MigrationStats, type SavedVpState, type VmwpDescription, type VmwpPendingOp, type VmwpRecord, type VmwpRequest, type PeerRequest, type RanAt, GoWord, VMWP_EXIT_MIGRATED,
} from '@hvlab/protocol';
import { hostClockId, monoNs, curveServerOptions, RpcFailure, RpcServer, sameCredential, startZapHandler, eagerCompile, pidAlive, hostPaths, movableProcessLogger, prewarmProcess, watchPids, earlyHvClient, hvClientFor, warnOnSignalFailures, IpcRpc, writeFileAtomic, VmwpControlServer, VmwpFailure, StdinLines, HypercallError, testKnob, type Notification } from '@hvlab/runtime';
import { procState } from '@hvlab/shm/procfs';
import { createRegion, discardPages, futexWake, openRegion, PostcopyControl, POSTCOPY_CONTROL_BYTES, unlinkRegion, watchWord } from '@hvlab/shm';
import { IcRequestError, loadDeviceClass } from '@hvlab/vsp';
import { HEARTBEAT_INTERVAL_MS } from '@hvlab/protocol/heartbeat';
import { KvpInputError, KvpProvider, type KvpPoolName } from '@hvlab/vsp/kvp';
import { ShutdownProvider } from '@hvlab/vsp/shutdown';
import { TimeSyncProvider } from '@hvlab/vsp/timesync';
import { controlPortId, hostConnectionId, decodeVmwpStartInput, decodeVmwpClaim, sameShape, type IncomingStream, type VmwpConfig } from './shared.js';
import type { VmbusServerState } from '@hvlab/vmbus';
import { VmDevices, type DeviceComponents } from './devices.js';
import { decodeSavedVm, readSavedState, writeSavedState, sha256, SAVED_STATE_VERSION, type ProcessorState, type SavedVm } from '../saved-state.js';
import { applyPageBatch, MigrationOut, postcopyRequests, type MigrationSource } from './migrate.js';
import { PagePool } from './compress.js';
import { flipGuestByte, VmFaultTable, type WhileStopped } from './faults.js';
import { partitionLink, prestartedPartition, rootGone, spawnPartition } from './prestart.js';
import { codeCacheStatus } from '@hvlab/runtime/code-cache-status';

/**
 * How long a migrated guest's VP threads may take to be online after its go, and its first VP to
 * run after Run (migrateInState). With the go word they are mostly online before the blackout
 * (started while the partition process was held); with the go message, after it. Tests whose
 * guest never starts shorten it (HVLAB_TEST_ONLINE_TIMEOUT_MS: whole ms from 1000 up to 10 s).
 */
const ONLINE_TIMEOUT_MS = testKnob('HVLAB_TEST_ONLINE_TIMEOUT_MS', 1000, 10000) ?? 10000;
/** How long a migration's request for the partition process's dirty log waits; tests lengthen it (HVLAB_TEST_DIRTY_TIMEOUT_MS), so that a wait held by it shows. */
const DIRTY_TIMEOUT_MS = testKnob('HVLAB_TEST_DIRTY_TIMEOUT_MS', 1) ?? 10000;
/**
 * Tests (HVLAB_TEST_HOLD_PAGES_UNTIL_DROP=N): an incoming migration's worker holds its answer to
 * the Nth page batch its own stream socket takes (written into memory already) until a connection
 * of that socket drops (the test kills the fabric meanwhile), or for 60 s, and sends it then, to a
 * connection that is gone. The source then has a request carried out and its answer lost at a
 * known step, which a fabric killed at a moment of its own choosing gives only by chance: the case
 * its sending again once the connection is back is for (MigrationOut.call).
 */
const HOLD_PAGES_UNTIL_DROP = testKnob('HVLAB_TEST_HOLD_PAGES_UNTIL_DROP', 1);
/** Tests: a save holds this long with its files written, before they are renamed into place (a worker killed in the middle). */
const SAVE_HOLD_MS = testKnob('HVLAB_TEST_SAVE_HOLD_MS', 1, 60000);
/**
 * How long a partition process whose link to this worker closed may take to exit before the worker
 * kills it as failed. A process that exits closes the link a moment before its exit is seen.
 */
const LINK_CLOSED_GRACE_MS = 2000;
/**
 * How long the end of a clock fault waits for time sync to set the guest's clock right (a running
 * guest answers in milliseconds; one that does not is left to its next sample).
 */
const CLOCK_RESYNC_WAIT_MS = 1000;

/**
 * The worker process, run by its entry (boot.ts) once its partition process is under way. A
 * function rather than top-level code with `await`s, so that the process can run as a CommonJS
 * bundle from V8's code cache (runtime/src/code-cache.ts says why).
 */
export async function runWorker(): Promise<void> {
  // A warm worker (root/src/warm.ts) builds and boots its template's guest, then waits until a VM
  // start claims it (the end of this file).
  const warm = process.env.HVLAB_VMWP_WARM === '1';
  // A spare worker (root/src/spare.ts) loads its code, then waits for any start's input.
  const spare = process.env.HVLAB_VMWP_SPARE === '1';
  if (warm) process.title = `hvlab-vmwp ${process.env.HVLAB_HOST_ID ?? ''} (warm)`;
  else if (spare) process.title = `hvlab-vmwp ${process.env.HVLAB_HOST_ID ?? ''} (spare)`;
  const prestarted = prestartedPartition();
  // Load every device class's host half while waiting to be assigned (see the guest's main.ts).
  const deviceClassesLoaded = Promise.allSettled(DEVICE_CLASS_NAMES.map((cls) => loadDeviceClass(cls)));
  // The hypervisor's socket, connected while waiting for the start-up input (the root names it).
  const earlyHv = earlyHvClient((n) => onHvNotification(n));
  if (warm || spare) {
    // A warm or spare worker pays the first run of the codecs and the logger ahead of its claim
    // (runtime/src/prewarm.ts says why); a cold one has its input waiting and pays them in its start.
    prewarmProcess();
    process.stdout.on('error', () => undefined);
  }

  // Loaded, the device classes too (they compile as their imports complete): what this process
  // compiles from then on, it compiles on first call (boot.ts).
  void deviceClassesLoaded.finally(() => eagerCompile(false));
  const stdin = new StdinLines();
  const line = await stdin.next('the start-up input').catch((e: Error) => {
    // A spare whose root went away before any start took it: nothing was made, nothing to say.
    if (spare) process.exit(0);
    throw e;
  });
  const input = decodeVmwpStartInput(line);
  if (rootGone()) {
    // Checked before the record is written: a root that starts after this point finds the record.
    process.stderr.write(`hvlab vmwp: the root that asked for the start of ${input.config.name} is gone; the start is abandoned\n`);
    process.exit(0);
  }
  /** A booted warm worker: its config is its template's until a claim gives it a VM's. */
  const template = input.template === true;
  if (!template) stdin.close();
  let claimed = !template;
  let cfg: VmwpConfig = input.config;
  process.title = template ? `hvlab-vmwp ${cfg.hostId} (warm, booting)` : `hvlab-vmwp ${cfg.hostId} ${cfg.name}`;
  const paths = hostPaths(cfg.home);
  const logger = movableProcessLogger(paths.logDir, `vmwp-${cfg.name}.log`, { host: cfg.hostId, role: 'vmwp', vm: cfg.name });
  const log = logger.log;
  process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception (the worker keeps its VM)'));
  process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection (the worker keeps its VM)'));
  const envMs = (name: string, dflt: number): number => {
    const v = Number(process.env[name]);
    return Number.isFinite(v) && v >= 50 ? v : dflt;
  };

  let partitionId = 0;
  let child: ChildProcess | null = null;
  /**
   * The go word's file while it is in /dev/shm (an incoming migration's set-up, until its partition
   * process has mapped it): an exit meanwhile (a set-up the source abandoned) unlinks it, since
   * process.exit runs no `finally`, and each dropped set-up left a file until the host went down.
   */
  let goRegionFile: string | null = null;
  /**
   * Why this worker killed its partition process, when it did so because the process failed it (a
   * link it broke or closed): the VM's end says that, not only the signal that ended the process.
   */
  let partitionFailure: string | null = null;
  let childRpc: IpcRpc | null = null;
  let memory: DataView | null = null;
  let booted = false;
  let runningSince: number | null = null;
  let suspended = false;
  /**
   * The partition's suspension as this worker last set it (no other caller sets it), and the number
   * of its latest suspension: the hypervisor answers a Suspend that suspends with it
   * (VpRegionHeader.suspendAsked). freeze() tells the partition process which number to wait for
   * without waiting for that answer first.
   */
  let partitionSuspended = false;
  let suspensionSeq = 0;
  /** Suspends or resumes the partition (through the hypercall page); a Suspend that suspends answers its number (suspensionSeq). */
  async function setSuspend(on: boolean): Promise<void> {
    const r = await hv.must<{ seq?: unknown } | null>('SetPartitionProperty', { partitionId, property: PartitionProperty.Suspend, value: on ? 1 : 0 });
    const seq = r !== null && typeof r === 'object' ? r.seq : undefined;
    if (on && typeof seq === 'number' && (seq | 0) === seq && seq !== 0) suspensionSeq = seq;
    partitionSuspended = on;
  }

  /**
   * Pauses (the root's `suspend`) and a bit flip's moment of stillness go one at a time: a flip
   * that ran the VM again after a pause that came meanwhile would undo that pause.
   */
  let stillness: Promise<unknown> = Promise.resolve();
  function oneAtATime<T>(f: () => Promise<T>): Promise<T> {
    const run = stillness.then(f, f);
    stillness = run.catch(() => undefined);
    return run;
  }
  /**
   * The fault table's WhileStopped: a running VM is suspended until every VP page shows the
   * suspension (each VP stops at its step's end), `apply` runs, and the VM runs again. A VM paused
   * already, or without a partition process or VP region (nothing to wait on), is left as it is.
   */
  const whileStopped: WhileStopped = <T>(apply: () => T): Promise<T> => oneAtATime(async () => {
    if (partitionSuspended || !childRpc || !vpRegionOfPartition()) return apply();
    const before = suspensionSeq;
    await setSuspend(true);
    let result: T;
    try {
      await stoppedSince(before);
      result = apply();
    } catch (e) {
      await setSuspend(false).catch(() => undefined);
      throw e;
    }
    // Applied: a VM that then cannot run again is said so, with the change made.
    await setSuspend(false).catch((e: unknown) => {
      throw new VmwpFailure('Unavailable', `it was done, but the VM could not be let run again: ${(e as Error).message}`);
    });
    return result;
  });
  let saved = false;
  /** A save runs (from before its faults end until its freeze is done or failed). */
  let saving = false;
  let exiting = false;
  let devices: VmDevices | null = null;
  let intercepts = 0;

  // ---- the record a re-attaching root reads -----------------------------------------------------

  let recordFile = join(paths.vmwpDir, `${cfg.name}.json`);
  const record: VmwpRecord = {
    version: 1, name: cfg.name, id: cfg.id, pid: process.pid, endpoint: paths.vmwpEndpoint(cfg.id), secret: input.secret,
    partitionId: null, partitionPid: null, startedAt: new Date().toISOString(), exit: null,
  };
  function writeRecord(): void {
    // A warm worker has no VM yet; the root that started it kills it if it goes away.
    if (!claimed) return;
    try {
      // Not recursive: the hypervisor makes run/ at its start, and a home removed under the host
      // (which then goes down: hypervisor/src/main.ts, guardHome) must not be made again by a record.
      try {
        mkdirSync(paths.vmwpDir, { mode: 0o700 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      // Written at every step of a start, and it describes live processes (a power cut leaves none):
      // atomic, but no fsync (three of them cost ~30 ms of a VM start). A root re-attaching reads what is there.
      writeFileAtomic(recordFile, JSON.stringify(record) + '\n', { durable: false });
    } catch (e) {
      // A full disk must not take the VM down; the root still has the control link while it lives.
      log.error({ err: e }, 'could not write the worker record');
    }
  }

  // ---- hypervisor session ----------------------------------------------------------------------

  /** An intercepted port access of our partition: emulate it, write the result, resume the VP. */
  async function onIntercept(n: Extract<Notification, { k: 'intercept' }>): Promise<void> {
    const write = n.access === 2;
    // A port no device claims reads as all ones, as on a bus with nothing behind the port.
    const result = devices?.portAccess(n.port, write, n.value, 1) ?? 0xff;
    intercepts++;
    const values: Record<string, number> = { Rip: n.rip + 1, InterceptSuspend: 0 };
    if (!write) values.Rax = result >>> 0;
    await hv.must('SetVpRegisters', { partitionId, vpIndex: n.vpIndex, values });
  }

  /** What the hypervisor delivers to this worker's session. */
  function onHvNotification(n: Notification): void {
    if (n.k === 'rootmsg') {
      if (devices?.onRootMessage(n.portId, n.messageType, n.payload, n.sender)) return;
      if (n.portId === controlPortId(partitionId) && n.messageType === GuestControlMessage.Booted && n.sender === partitionId && !booted) {
        booted = true;
        // codeCache: whether this process ran from V8's code cache (runtime/src/code-cache.ts).
        log.info({ codeCache: codeCacheStatus() ?? null }, 'guest reported boot');
        // A booted warm worker's guest is not a VM's yet: the claim says it booted (claimAs).
        if (claimed) {
          runningSince = Date.now();
          control.note({ t: 'booted', partitionId, partitionPid: child?.pid ?? null });
        }
        for (const w of bootWaiters.splice(0)) w.resolve();
      }
    } else if (n.k === 'rootevent') {
      devices?.onRootEvent(n.portId, n.sender);
    } else if (n.k === 'intercept' && n.partitionId === partitionId) {
      onIntercept(n).catch((e) => log.error({ err: e, port: n.port }, 'intercept handling failed'));
    } else if (n.k === 'bye') {
      void exit(`hypervisor: ${n.reason}`, 1);
    }
  }
  const hv = hvClientFor(paths.hvEndpoint, earlyHv, (n) => onHvNotification(n));
  warnOnSignalFailures(hv, (o, m) => log.warn(o, m));
  hv.watchHypervisor(cfg.hvPid);

  async function exit(reason: string, code = 0, guestShutdown = false): Promise<void> {
    if (exiting) return;
    exiting = true;
    log.info({ reason }, 'vmwp exiting');
    record.exit = { reason, guestShutdown, at: new Date().toISOString() };
    writeRecord();
    control.note({ t: 'exiting', reason, guestShutdown });
    // A migration's source waiting on its stream (the state, say) hears why now, not at its timeout.
    await streamServer?.failInFlight('Unavailable', `the destination's worker exited: ${reason}`);
    closeIncomingStream();
    if (goRegionFile) {
      unlinkRegion(goRegionFile);
      goRegionFile = null;
    }
    if (prestarted !== child && prestarted.exitCode === null) prestarted.kill('SIGKILL');
    if (child && child.exitCode === null && child.signalCode === null) {
      // Reap the partition process ourselves rather than leave a zombie.
      const gone = new Promise((r) => child!.once('exit', r));
      child.kill('SIGKILL');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 1000))]);
    }
    faults.dispose();
    devices?.close();
    postcopyIn?.close();
    void inflatePool?.close().catch(() => undefined);
    if (partitionId && pidAlive(cfg.hvPid)) {
      await hv.call('FinalizePartition', { partitionId }, 1000).catch(() => undefined);
      await hv.call('DeletePartition', { partitionId }, 1000).catch(() => undefined);
    }
    hv.close();
    childRpc?.close();
    // Give the exit note a moment to leave before the socket closes.
    await new Promise((r) => setTimeout(r, 20));
    control.close();
    // A set-up still under way may have made its go word after the unlink above (the exit's awaits
    // let it run on): the file goes now, as process.exit runs no `finally`.
    if (goRegionFile) unlinkRegion(goRegionFile);
    process.exit(code);
  }

  watchPids([cfg.hvPid], () => void exit('the hypervisor is gone', 1));
  process.on('SIGTERM', () => void exit('SIGTERM'));

  /** What the guest kernel page says: LP occupancy (now and most ever) and the CMOS time it read. */
  async function kernelInfo(): Promise<GuestKernelInfo> {
    const k = decodeGuestKernelInfo(await readGuest(KERNEL_PAGE_GPA, GUEST_KERNEL_INFO_BYTES));
    if (typeof k === 'string') throw new VmwpFailure('Unavailable', k);
    return k;
  }

  async function readGuest(gpa: number, len: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0 || gpa + len > cfg.memoryBytes) {
      throw new VmwpFailure('InvalidArgument', `GPA range 0x${gpa.toString(16)}+${len} is outside the VM's ${cfg.memoryBytes} bytes`);
    }
    if (postcopyIn) {
      // A read through this mapping of a page post-copy has not brought would fill it with zeros.
      for (let p = Math.floor(gpa / PAGE); p * PAGE < gpa + len; p++) {
        if (postcopyIn.isMissing(p)) throw new VmwpFailure('Unavailable', `page 0x${p.toString(16)} has not arrived yet (post-copy in progress)`);
      }
    }
    if (memory) return new Uint8Array(memory.buffer, gpa, len).slice();
    if (!childRpc) throw new VmwpFailure('InvalidState', 'the VM is not running');
    const got: unknown = await childRpc.request({ t: 'read', gpa, len });
    if (!(got instanceof Uint8Array) || got.byteLength !== len) throw new VmwpFailure('Unavailable', `the partition process answered a read of ${len} bytes with ${got instanceof Uint8Array ? `${got.byteLength} bytes` : 'something else'}`);
    return got;
  }

  function vmDevices(): VmDevices {
    if (!devices) throw new VmwpFailure('InvalidState', 'the VM has no devices yet');
    return devices;
  }

  async function kvp(req: Extract<VmwpRequest, { t: 'kvp' }>): Promise<unknown> {
    const d = vmDevices().ofClass('kvp');
    if (!d) throw new VmwpFailure('InvalidState', `VM "${cfg.name}" has no KVP device`);
    if (!d.entry.enabled) throw new VmwpFailure('InvalidState', `the KVP integration service of VM "${cfg.name}" is disabled`);
    if (!['external', 'guest', 'auto'].includes(req.pool)) throw new VmwpFailure('InvalidArgument', `KVP pool "${req.pool}" is unknown: use external, guest or auto`);
    const pool = req.pool as KvpPoolName;
    const k = d.device.vmbus;
    if (!(k instanceof KvpProvider)) throw new VmwpFailure('InvalidState', `the KVP device of VM "${cfg.name}" is not a KVP provider`);
    try {
      switch (req.op) {
        case 'set':
          await k.set(pool, req.key ?? '', req.value ?? '');
          return { pool, key: req.key, value: req.value };
        case 'get': {
          const value = await k.get(pool, req.key ?? '');
          if (value === null) throw new VmwpFailure('NotFound', `VM "${cfg.name}" has no KVP key "${req.key}" in the ${pool} pool`);
          return { pool, key: req.key, value };
        }
        case 'delete': {
          if (!(await k.delete(pool, req.key ?? ''))) throw new VmwpFailure('NotFound', `VM "${cfg.name}" has no KVP key "${req.key}" in the ${pool} pool`);
          return { pool, key: req.key, deleted: true };
        }
        default:
          return (await k.list(pool)).map((e) => ({ pool, ...e }));
      }
    } catch (e) {
      if (e instanceof KvpInputError) throw new VmwpFailure('InvalidArgument', e.message);
      if (e instanceof IcRequestError) throw new VmwpFailure('Unavailable', `VM "${cfg.name}": ${e.message}`);
      throw e;
    }
  }

  /** The VM's faults (faults.ts): none while it moves, all ended before a save or a migration. */
  const faults = new VmFaultTable({
    get vm() {
      return cfg.name;
    },
    vps: cfg.vps, log,
    setProperty: async (property, value) => void (await hv.must('SetPartitionProperty', { partitionId, property, value })),
    flipByte: async (gpa, mask) => flipGuestByte((memory?.buffer as SharedArrayBuffer | undefined) ?? null, { vm: cfg.name, memoryBytes: cfg.memoryBytes }, gpa, mask, (pfn) => postcopyIn?.isMissing(pfn) ?? false, whileStopped),
    vmbus: () => (devices ? { injector: devices.faults, names: devices.vmbusNames() } : null),
    clockRestored: async () => {
      const t = devices?.ofClass('timesync');
      // A suspended guest answers when it runs again: not waited for.
      if (t?.entry.enabled && t.device.vmbus instanceof TimeSyncProvider) await t.device.vmbus.resync(suspended ? 0 : CLOCK_RESYNC_WAIT_MS);
    },
    refusal: () => (!created ? 'it is not built yet' : exiting || saved ? 'it is going away' : saving ? 'it is being saved' : migration ? 'it is being migrated' : cfg.incoming && (!booted || postcopyIn) ? 'it is arriving by migration' : null),
    note: (n) => control.note(n),
  });

  const control = new VmwpControlServer(paths.vmwpEndpoint(cfg.id), input.secret, serveRequest, log);

  /** A pause, resume or save in progress (or waiting its turn), for a root that re-attaches meanwhile. */
  let pendingOp: VmwpPendingOp | null = null;

  /**
   * Runs a pause, resume or save as `pendingOp`, and says how it ended (a `settled` note, with what
   * the VM is now) before its answer: the root that asked may have died meanwhile, and a new one
   * that re-attached waits for that note instead (VmwpDescription.pending).
   */
  async function settling<T>(op: VmwpPendingOp, f: () => Promise<T>): Promise<T> {
    pendingOp = op;
    let ok = false;
    try {
      const v = await f();
      ok = true;
      return v;
    } finally {
      pendingOp = null;
      control.note({ t: 'settled', op, ok, suspended, saved });
    }
  }

  /** One request of the root's control link (or, for a migration's data, of the stream socket: serveStream). */
  async function serveRequest(req: VmwpRequest): Promise<unknown> {
    switch (req.t) {
      case 'describe': {
        const d: VmwpDescription = {
          name: cfg.name, partitionId, partitionPid: child?.pid ?? null, booted, suspended, saved, runningSince, restored: cfg.restore, pending: pendingOp, moving: migratingTo,
          incoming: cfg.incoming ? { started: incomingStarted, postcopy: postcopyIn !== null } : null,
        };
        return d;
      }
      case 'status': {
        if (!booted) return { booted: false, progress: null };
        const status = decodeGuestStatus(await readGuest(STATUS_PAGE_GPA, GUEST_STATUS_BYTES));
        if (typeof status === 'string') throw new VmwpFailure('Unavailable', status);
        return { ...status, intercepts, kernel: await kernelInfo() };
      }
      case 'peek':
        return await readGuest(req.gpa, req.len);
      case 'suspend':
        return await settling(req.value ? 'pause' : 'resume', () => oneAtATime(async () => {
          const before = suspensionSeq;
          await setSuspend(req.value);
          // A pause is done when the VPs have stopped, not when the hypervisor took the property:
          // a VP in a step finishes it first (a memdirty guest writes ~1 ms more pages), and what is
          // read of the paused VM must hold still.
          if (req.value) {
            try {
              await stoppedSince(before);
            } catch (e) {
              // The pause failed and the root says Running again: so must the partition be.
              await setSuspend(false).catch(() => undefined);
              throw e;
            }
          }
          suspended = req.value;
          return true;
        }));
      case 'hypercall':
        if (req.asChild) {
          if (!childRpc) throw new VmwpFailure('InvalidState', 'the VM is not running');
          return await childRpc.request({ t: 'hypercall', code: req.code, input: req.input });
        }
        return await hv.raw(req.code, req.input, { fast: false }); // over the socket: refusals with their reason
      case 'processor':
        await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuReserve, value: req.reserve });
        await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuCap, value: req.maximum });
        await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuWeight, value: req.weight });
        return true;
      case 'save':
        return await settling('save', save);
      case 'migOut':
        return await migrateOut(req);
      case 'migCancel':
        if (!migration) throw new VmwpFailure('InvalidState', `VM "${cfg.name}" is not being migrated`);
        {
          const refused = migration.cancel(req.reason, req.force === true);
          if (refused !== null) throw new VmwpFailure(MIG_CANCEL_TOO_LATE, refused);
        }
        return true;
      case 'migPages':
        return await migrateInPages(req.data);
      case 'migPremap':
        return await migrateInPremap(req.state);
      case 'migState': {
        // The blackout's last page batch may come with the state: written first. The answer says
        // how long this worker took from here, for the source's account of the blackout
        // (blackout.destination).
        const tookNs = monoNs();
        if (req.pages) await migrateInPages(req.pages);
        return await migrateInState(req.state, undefined, tookNs);
      }
      case 'migBooted': {
        const booted = await migrateInBooted(req.waitMs);
        // The source commits through the root now; only post-copy still pulls pages.
        if (!postcopyIn) closeIncomingStream();
        return booted;
      }
      case 'migSwitch':
        return await migrateInSwitch(req.state, req.missing);
      case 'migPull':
        if (!postcopyIn) throw new VmwpFailure('InvalidState', 'no post-copy runs here');
        return await postcopyIn.pull(req.waitMs);
      case 'migDone':
        if (!postcopyIn) throw new VmwpFailure('InvalidState', 'no post-copy runs here');
        if (postcopyIn.remaining > 0) throw new VmwpFailure('InvalidState', `${postcopyIn.remaining} pages have not arrived yet`);
        await childRpc?.request({ t: 'postcopyDone' }, 5000);
        postcopyIn.close();
        void inflatePool?.close().catch(() => undefined);
        inflatePool = null;
        log.info({ requests: postcopyIn.requests }, 'post-copy done: every page is here');
        postcopyIn = null;
        closeIncomingStream();
        return true;
      case 'turnOff':
        setTimeout(() => void exit(req.reason), 10);
        return true;
      case 'ic': {
        const i = vmDevices();
        for (const [svc, on] of [[req.enable, true], [req.disable, false]] as const) {
          if (svc === null) continue;
          if (!isDeviceClass(svc) || !(INTEGRATION_SERVICES as readonly string[]).includes(svc)) throw new VmwpFailure('InvalidArgument', `integration service "${svc}" is unknown: use ${INTEGRATION_SERVICES.join(', ')}`);
          if (!i.ofClass(svc)) throw new VmwpFailure('InvalidState', `VM "${cfg.name}" has no ${svc} device`);
          await i.setEnabled(svc, on);
          log.info({ service: svc, enabled: on }, 'integration service changed');
        }
        return i.ic();
      }
      case 'kvp':
        return await kvp(req);
      case 'faultSet':
        return await faults.set(req.id, req.spec, req.forMs);
      case 'faultClear':
        return await faults.clear(req.id);
      case 'faultList':
        return faults.list();
      case 'shutdown': {
        const d = vmDevices().ofClass('shutdown');
        const sd = d?.device.vmbus;
        if (!d?.entry.enabled || !(sd instanceof ShutdownProvider) || !sd.negotiated) throw new VmwpFailure('Unavailable', 'the shutdown integration service is not available');
        try {
          await sd.shutdown({ answerTimeoutMs: req.timeoutS * 1000, timeoutSeconds: req.timeoutS });
        } catch (e) {
          throw new VmwpFailure('Unavailable', (e as Error).message);
        }
        return true;
      }
    }
  }

  /**
   * The partition's VP region (the hypervisor's name for it), mapped here to watch a suspension be
   * taken; null where it cannot be (private memory, no scheduler): the freeze then waits for the
   * partition process's answer.
   */
  let vpRegion: SharedArrayBuffer | null | undefined;
  function vpRegionOfPartition(): SharedArrayBuffer | null {
    if (vpRegion !== undefined) return vpRegion;
    try {
      vpRegion = openRegion(vpRegionName(cfg.hostId, partitionId));
    } catch {
      vpRegion = null;
    }
    return vpRegion;
  }

  /**
   * Freeze: suspend the partition and, beside that call, ask the partition process to wait until
   * its VP pages show every VP off its LP at a step boundary under that suspension's number (the
   * scheduler takes a suspension on its next pass and wakes the count it publishes), park the guest
   * kernel's interrupt handling and have it write its own state (VMBus client, drivers, KVP pools)
   * into guest memory, and, with `harvest`, read its dirty log, all in one request. The VPs' states
   * are asked for right behind the Suspend call, with its number: the hypervisor answers once its
   * scheduler has taken the suspension, while the partition process parks (without the VP region,
   * after the partition process's answer); and the VMBus server must be between steps. The VM then
   * stands still except for device timers, whose ring writes go to the dirty log. `capture` (synchronous) then takes every VP and device in one step
   * with whatever memory the caller copies in the same step. Any failure thaws the VM.
   *
   * Before, the VMWP asked the hypervisor for the VP states until they showed Suspended (a round
   * trip and a 1 ms sleep each), then the partition process to park, then for its dirty log: four
   * to six wake-ups of other processes, ~40 % of an idle VM's migration downtime. Then the request
   * to the partition process went after the Suspend call's answer, and the partition process looked
   * at its pages each millisecond: sent together, with the number and the wake, the freeze of an
   * idle VM's move took ~7.5 ms at the median instead of ~9.5 (16 moves each, alternating builds).
   */
  async function freeze(harvest = false): Promise<{ vps: SavedVpState[]; dirty: unknown }> {
    const d = vmDevices();
    const rpc = childRpc;
    if (!rpc) throw new VmwpFailure('InvalidState', 'the VM is not running');
    // The Suspend call and the partition process's request go together: the partition process waits
    // for the suspension by its number, which it gets from here, not from the answer (the answer is
    // checked against it below). A number not as expected (a suspension this worker did not make)
    // fails the freeze; the next one expects the number the hypervisor gave.
    const wasSuspended = partitionSuspended;
    const before = suspensionSeq;
    const expected = wasSuspended ? before : ((before + 1) | 0) || 1;
    // The Suspend call first: the VMWP's own path (the call, the scheduler's pass, the VP states)
    // is the longer one, and sending the request to the partition process costs its IPC a few
    // hundred microseconds of this thread. With the VP region, the VPs' states are asked for right
    // behind the Suspend with the suspension's number: the hypervisor answers them once its
    // scheduler has taken it (GetVpState's afterSuspension), so they are read while the partition
    // process parks. They were a wait here for the suspension's count in the VP region, then a
    // round trip of their own: ~0.9 ms of an idle VM's ~10 ms downtime.
    //
    // The Suspend goes through the hypercall page, and the GetVpState calls follow it there, one at
    // a time (the first is answered once the suspension is taken). Sent over the socket with the
    // states pipelined behind it, the Suspend took 0.9-5.6 ms to reach the hypervisor while the
    // blackout kept both CPUs busy (ZeroMQ's I/O threads on both sides had to run first). Through
    // the page, 48 moves alternating in pairs of pairs: the freeze's median 5.0 and 6.0 ms against
    // 6.5 and 8.0, the downtime's 16.5 and 19.0 against 18.5 and 22.5. The states followed over
    // the socket then, 1.3-7 ms after the Suspend's answer (p50 ~2.3, 22 moves).
    const region = vpRegionOfPartition();
    const getStates = (after?: number): Promise<SavedVpState[]> => Promise.all(Array.from({ length: cfg.vps }, (_, v) => (after ? vpStateAfter(v, after) : hv.must<SavedVpState>('GetVpState', { partitionId, vpIndex: v }))));
    const suspending = setSuspend(true);
    suspending.catch(() => undefined);
    // A number not as expected fails the freeze below, and the hypervisor refuses these calls then.
    const states = region ? getStates(expected) : null;
    states?.catch(() => undefined);
    // A kernel that parked and then failed would stay parked: a failure thaws (harmless when nothing is parked).
    const quiescing = rpc.request({ t: 'quiesce', suspension: expected, harvest }, 15000);
    quiescing.catch(() => undefined);
    try {
      await suspending;
      const got = suspensionSeq !== before ? suspensionSeq : wasSuspended ? before : null;
      if (got !== expected) {
        // Suspended already by someone else (no number answered): the count in the VP region says
        // which number that was, so that the next try expects the one after it.
        const r = got === null ? vpRegionOfPartition() : null;
        if (r) suspensionSeq = Atomics.load(new Int32Array(r), VpRegionHeader.suspendAsked >> 2);
        throw new Error(`the partition's suspension is number ${got ?? '(none: it was suspended already)'}, not ${expected} as expected: one this worker did not make, so the VM was not frozen; try again`);
      }
      // The VPs' states as soon as the suspension is taken, while the partition process parks its
      // kernel (without the region: after its answer).
      let vps: SavedVpState[] | null = states ? await states : null;
      const q = await quiescing;
      vps ??= await getStates();
      // The hypervisor (or, without the region, the partition process) saw every VP page show the
      // suspension, and saveVp reads the same pages. Anything else is a guest that wrote its pages,
      // and the save would not hold.
      const running = vps.findIndex((v) => v.runState !== 'Suspended' && v.runState !== 'Absent');
      if (running >= 0) throw new Error(`VP ${running} is ${vps[running]!.runState}, not suspended, after the partition process said all were`);
      // The VMBus server must be between steps (no offer or open half done) when it is saved.
      for (let i = 0; !d.server.idle; i++) {
        if (i > 100) throw new Error('the VMBus server did not come to rest within 10 s');
        await Promise.race([d.server.whenIdle(), new Promise((r) => setTimeout(r, 100))]);
      }
      return { vps, dirty: harvest && q !== null && typeof q === 'object' ? (q as { dirty?: unknown }).dirty : undefined };
    } catch (e) {
      // Logged here: the caller's answer goes to a CLI that may be gone, and nothing else said why.
      log.warn({ err: (e as Error).message, expected }, 'the freeze failed: the VM is thawed');
      await rpc.request({ t: 'thaw' }, 5000).catch(() => undefined);
      // A VM paused before the freeze stays paused (the root says Paused again).
      if (!wasSuspended) await setSuspend(false).catch(() => undefined);
      throw e;
    }
  }

  /**
   * After a Suspend: waits until every VP shows the suspension it made, if it made one (the number
   * moved past `before`) and there is a VP region to show it; with the region, the VPs' states
   * with the suspension's number come once every VP page shows it (as in freeze).
   */
  async function stoppedSince(before: number): Promise<void> {
    if (suspensionSeq !== before && vpRegionOfPartition()) await vpsStopped(suspensionSeq);
  }

  /**
   * VP `v`'s state once it shows suspension `seq`. The hypervisor refuses it (INVALID_VP_STATE)
   * when the VPs have not stopped within its wait (5 s): said in words here, and why when the
   * partition process is stopped (a pause fault, SIGSTOP), which runs no VP to see the suspension;
   * "GetVpState failed with INVALID_VP_STATE" was all a pause or a save said.
   */
  function vpStateAfter(v: number, seq: number): Promise<SavedVpState> {
    return hv.must<SavedVpState>('GetVpState', { partitionId, vpIndex: v, afterSuspension: seq }).catch((e: unknown) => {
      if (!(e instanceof HypercallError) || e.status !== HvStatus.INVALID_VP_STATE) throw e;
      const pid = child?.pid;
      const stopped = pid !== undefined && procState(pid) === 'T';
      throw new Error(`the VM's VPs did not stop under its suspension (the hypervisor waits up to 5 s)${stopped ? `: its partition process (pid ${pid}) is stopped (a pause fault, or SIGSTOP), so no VP runs to stop; try again once it runs` : ''} (GetVpState: INVALID_VP_STATE)`);
    });
  }

  /** Waits until every VP shows suspension `seq` (the hypervisor answers GetVpState once they do, at most 5 s). */
  async function vpsStopped(seq: number): Promise<void> {
    const vps = await Promise.all(Array.from({ length: cfg.vps }, (_, v) => vpStateAfter(v, seq)));
    const running = vps.findIndex((v) => v.runState !== 'Suspended' && v.runState !== 'Absent');
    if (running >= 0) throw new VmwpFailure('Unavailable', `VP ${running} is ${vps[running]!.runState}, not suspended, after the pause`);
  }

  /**
   * Undoes `freeze`: the guest kernel takes interrupts again and the VPs run, unless the root has
   * the VM paused (`suspended`: a failed save of a Paused VM ran it while the root said Paused).
   */
  async function thaw(): Promise<void> {
    await childRpc?.request({ t: 'thaw' }, 5000).catch(() => undefined);
    if (!suspended) await setSuspend(false);
  }

  /**
   * The memory digest of a migrated state: its memory goes as pages, never as a file, so there is
   * nothing to digest, but the saved-state decoder takes only 64 hex digits. The destination's run
   * of its restore path ahead of the blackout (warmRestorePath) must use it too: with '' it failed
   * at the decoder, and every blackout paid the device decoders' first run.
   */
  const MIGRATED_MEMORY_DIGEST = '0'.repeat(64);

  /** The saved-state tree of a frozen VM, memory aside (synchronous: one step with the caller's memory copy). */
  function capture(vps: SavedVpState[], memoryDigest: string): SavedVm {
    const processor: ProcessorState = { version: 1, ...cfg.processor };
    const components = { ...vmDevices().save(), processor };
    return {
      version: SAVED_STATE_VERSION,
      savedAt: new Date().toISOString(),
      vm: { name: cfg.name, id: cfg.id, memoryBytes: cfg.memoryBytes, vps: cfg.vps, workload: cfg.workload },
      memory: { file: 'memory.bin', bytes: cfg.memoryBytes, sha256: memoryDigest },
      partition: { referenceTime: vps[0]?.referenceTime ?? 0, vps },
      components,
    };
  }

  /**
   * Save: freeze, then take memory, every VP and every device in one step (no await in between, so
   * no device timer can write a ring between the memory copy and the device states). The VM stays
   * suspended; VMMS turns it off. Any failure resumes it.
   */
  async function save(): Promise<{ bytes: number; ms: number }> {
    if (!memory) throw new VmwpFailure('InvalidState', 'saving needs shared memory (this host runs on process-private memory)');
    // No fault may be set from here on (refusal): a bit flip's stop ends by letting the VM run,
    // which would thaw the freeze below. The root refuses faults while it saves, too.
    saving = true;
    try {
      await faults.endAll('the VM is being saved');
      const t0 = Date.now();
      const { vps } = await freeze();
      try {
        const mem = new Uint8Array(memory.buffer).slice();
        const state = capture(vps, sha256(mem));
        writeSavedState(cfg.vmDir, cfg.name, state, mem, SAVE_HOLD_MS === null ? undefined : () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, SAVE_HOLD_MS));
        saved = true;
        suspended = true;
        log.info({ bytes: mem.length, ms: Date.now() - t0, components: Object.keys(state.components).length }, 'VM saved');
        return { bytes: mem.length, ms: Date.now() - t0 };
      } catch (e) {
        await thaw().catch(() => undefined);
        throw e;
      }
    } finally {
      saving = false;
    }
  }

  // ---- live migration --------------------------------------------------------------------------

  let migration: MigrationOut | null = null;
  /** The move `migration` runs: said in `describe` to a root that re-attaches during it. */
  let migratingTo: { mig: string; to: string } | null = null;

  async function migrateOut(req: Extract<VmwpRequest, { t: 'migOut' }>): Promise<MigrationStats> {
    if (!memory || !childRpc || !booted) throw new VmwpFailure('InvalidState', 'a live migration needs a running VM on shared memory');
    if (migration) throw new VmwpFailure('InvalidState', `VM "${cfg.name}" is being migrated already`);
    const options = decodeMigrationOptions(req.options);
    if (typeof options === 'string') throw new VmwpFailure('InvalidArgument', options);
    const rpc = childRpc;
    let frozenVps: SavedVpState[] = [];
    let memoryFd = -1;
    try {
      memoryFd = openSync(`/dev/shm/${memoryRegionName(cfg.hostId, partitionId)}`, 'r');
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'cannot open the guest memory file: every page will be read');
    }
    const m = new MigrationOut({
      memory: memory.buffer as SharedArrayBuffer, memoryFd, memoryBytes: cfg.memoryBytes, vps: cfg.vps, log,
      dirty: ((op: 'start' | 'harvest' | 'stop') => rpc.request({ t: 'dirty', op }, DIRTY_TIMEOUT_MS)) as MigrationSource['dirty'],
      freeze: async (harvest) => {
        const f = await freeze(harvest);
        frozenVps = f.vps;
        return f.dirty;
      },
      capture: () => capture(frozenVps, MIGRATED_MEMORY_DIGEST) as unknown as Record<string, unknown>,
      thaw,
      throttle: async (cap) => {
        await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuCap, value: cap ?? cfg.processor.maximum });
      },
      progress: (stats) => control.note({ t: 'migProgress', stats }),
      gpadlHint: () => vmDevices().server.gpadlHint(),
      deviceStates: () => vmDevices().saveDevices(),
    }, { mig: req.mig, vm: cfg.name, from: req.from, to: req.to, endpoint: req.endpoint, auth: req.auth, key: { version: 1, ...req.key }, config: req.config, options });
    migration = m;
    migratingTo = { mig: req.mig, to: req.to };
    const d = vmDevices();
    d.dirtyLogging = true;
    try {
      // A fault does not travel with the VM: every one ends now (and none is set until the move ends).
      await faults.endAll(`the VM is being migrated to ${req.to}`);
      const stats = await m.run();
      if (stats.status === 'completed') {
        // The destination runs the VM and has committed: this copy goes.
        setTimeout(() => void exit(`${VMWP_EXIT_MIGRATED}${req.to}`, 0), 50);
      } else if (m.switched) {
        // Post-copy failed after the switch-over: this copy is stale and must never run again.
        setTimeout(() => void exit(`lost in post-copy to ${req.to}: ${stats['error-desc'] ?? 'failed'}`, 1), 50);
      }
      return stats;
    } finally {
      migration = null;
      migratingTo = null;
      d.dirtyLogging = false;
      if (memoryFd >= 0) closeSync(memoryFd);
    }
  }

  /** Destination: pages arrive before the state; the VM is built and waits (memory empty, no partition process yet). */
  let incomingReady = false;
  /** Called when the held partition process says it is ready. */
  let partitionHeld: ((goWord: boolean) => void) | null = null;
  /**
   * A held partition's go word (word 0 of a one-page region of this process's, the partition
   * process watching it): at GoWord.Start the guest starts, at GoWord.Run its VPs run. Null when
   * the partition process does not watch it (no word watch there): then the go is the IPC message,
   * as with post-copy, whose go names its control region. The message took 1.12 ms p50 from this
   * process to the guest's start in the blackout, the word 0.48 ms (guest/src/start.ts, goRegion).
   */
  let goWord: Int32Array | null = null;
  let incomingStarted = false;

  /**
   * Post-copy at the destination: which pages are still missing, what the guest waits for (its
   * partition process's fault thread posts page numbers to a shared control region), and the pages
   * as they arrive (each written once: a page the guest has is never overwritten).
   */
  class PostcopyIn {
    readonly region: string;
    /** The guest memory file, written page by page (see applyPageBatch). */
    readonly fd: number;
    private readonly ctl: Int32Array;
    private readonly missing: Uint8Array;
    remaining = 0;
    requests = 0;
    private lastRequest = 0;
    private readonly wanted: number[] = [];
    private waiter: (() => void) | null = null;
    private readonly unwatch: () => void;

    constructor(missingBits: Uint8Array, private readonly pages: number, private readonly touched: Uint8Array) {
      this.missing = new Uint8Array(missingBits);
      for (let p = 0; p < pages; p++) if (this.isMissing(p)) this.remaining++;
      this.region = postcopyRegionName(cfg.hostId, partitionId);
      unlinkRegion(this.region);
      const sab = createRegion(this.region, POSTCOPY_CONTROL_BYTES);
      this.ctl = new Int32Array(sab);
      this.unwatch = watchWord(sab, PostcopyControl.requests, () => this.onRequests());
      this.fd = openSync(`/dev/shm/${memoryRegionName(cfg.hostId, partitionId)}`, 'r+');
    }

    isMissing(pfn: number): boolean {
      return ((this.missing[pfn >>> 3] ?? 0) & (1 << (pfn & 7))) !== 0;
    }

    /** Punches the missing pages out of the file (pass 1 put stale copies there). */
    discard(mem: SharedArrayBuffer, pages: number): void {
      for (let p = 0; p < pages;) {
        if (!this.isMissing(p)) {
          p++;
          continue;
        }
        let n = 1;
        while (p + n < pages && this.isMissing(p + n)) n++;
        discardPages(mem, p, n);
        p += n;
      }
    }

    private onRequests(): void {
      const { pfns, next } = postcopyRequests(this.ctl, this.lastRequest, PostcopyControl);
      this.lastRequest = next;
      let zeroed = false;
      for (const pfn of pfns) {
        this.requests++;
        if (this.isMissing(pfn)) {
          if (this.wanted.length < PostcopyControl.ringLength) this.wanted.push(pfn);
        }
        else if (pfn >= 0 && pfn < this.touched.length && !this.touched[pfn]) {
          // Neither missing nor ever written here: a zero page (zero pages are markers only, never
          // written), or a page of the dirty bitmap above guest memory (never sent). Its first touch
          // makes it, as a fresh VM's memory would be. A page written
          // here is never zeroed: the request for it was made before its bytes landed.
          this.touched[pfn] = 1;
          if (writeSync(this.fd, ZERO_PAGE, 0, PAGE, pfn * PAGE) === PAGE) zeroed = true;
        }
      }
      if (zeroed) this.served();
      if (this.wanted.length) this.waiter?.();
    }

    /** Whether page `pfn` is still missing; if so it is no longer (its bytes are being written now, in the same step). */
    take(pfn: number): boolean {
      if (!this.isMissing(pfn)) return false;
      this.missing[pfn >>> 3]! &= ~(1 << (pfn & 7));
      this.remaining--;
      return true;
    }

    /** Pages were written: the partition's fault thread looks again. */
    served(): void {
      Atomics.add(this.ctl, PostcopyControl.served, 1);
      futexWake(this.ctl.buffer as SharedArrayBuffer, PostcopyControl.served);
    }

    /** The pages the guest waits for (still missing), waiting up to `waitMs` for one. */
    async pull(waitMs: number): Promise<{ pfns: number[]; remaining: number; requests: number }> {
      this.onRequests();
      if (!this.wanted.some((p) => this.isMissing(p)) && waitMs > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            this.waiter = null;
            resolve();
          }, waitMs);
          this.waiter = () => {
            clearTimeout(t);
            this.waiter = null;
            resolve();
          };
        });
      }
      const pfns = [...new Set(this.wanted.splice(0).filter((p) => this.isMissing(p)))].slice(0, MIG_BATCH_MAX_PAGES);
      return { pfns, remaining: this.remaining, requests: this.requests };
    }

    close(): void {
      this.unwatch();
      unlinkRegion(this.region);
      try {
        closeSync(this.fd);
      } catch { /* closed */ }
    }
  }
  let postcopyIn: PostcopyIn | null = null;
  const ZERO_PAGE = new Uint8Array(PAGE);
  /** Pages of an incoming migration's memory written so far (a zero page for one never written needs no write). */
  let incomingTouched: Uint8Array | null = null;
  /** Inflates compressed pages of an incoming migration (made on the first compressed page). */
  let inflatePool: PagePool | null = null;

  async function migrateInSwitch(state: Uint8Array, missing: Uint8Array): Promise<{ running: true; missing: number } & Partial<RanAt>> {
    if (!cfg.incoming || !incomingReady || !memory) throw new VmwpFailure('InvalidState', 'this worker does not wait for a migration');
    // Checked before anything is made: a second switch (or one after a migState) built a PostcopyIn
    // that punched the pages its bitmap named out of the running guest's memory, and took the
    // place of the post-copy under way, before migrateInState refused it as started already.
    if (incomingStarted || postcopyIn) throw new VmwpFailure('InvalidState', 'the migrated VM was started already');
    const pages = dirtyBitmapGpa(cfg.memoryBytes) / PAGE;
    if (missing.length !== Math.ceil(pages / 8)) throw new VmwpFailure('InvalidArgument', `the missing-page bitmap has ${missing.length} bytes, not ${Math.ceil(pages / 8)}`);
    const pc = new PostcopyIn(missing, pages, (incomingTouched ??= new Uint8Array(cfg.memoryBytes / PAGE)));
    pc.discard(memory.buffer as SharedArrayBuffer, pages);
    postcopyIn = pc;
    let out: Awaited<ReturnType<typeof migrateInState>>;
    try {
      out = await migrateInState(state, pc.region);
    } catch (e) {
      pc.close();
      postcopyIn = null;
      throw e;
    }
    return { ...out, missing: pc.remaining };
  }

  /** The migration stream's own socket (an incoming worker in a cluster), while it is open. */
  let streamServer: RpcServer<PeerRequest> | null = null;
  let streamSeenAt = 0;
  /** Page batches the stream socket took (HOLD_PAGES_UNTIL_DROP counts them). */
  let streamBatches = 0;

  /** HOLD_PAGES_UNTIL_DROP's hold: until a connection of the stream socket drops, or 60 s. */
  async function holdUntilDrop(server: RpcServer<PeerRequest>): Promise<void> {
    log.warn('the answer to this page batch is held until a connection of the stream socket drops (test knob HVLAB_TEST_HOLD_PAGES_UNTIL_DROP)');
    let timer: NodeJS.Timeout | undefined;
    const dropped = await new Promise<boolean>((resolve) => {
      server.sock.events.on('disconnect', () => resolve(true));
      timer = setTimeout(() => resolve(false), 60000);
    });
    clearTimeout(timer);
    log.warn({ dropped }, dropped ? 'a connection of the stream socket dropped: the held answer goes now, to a connection that is gone' : 'no connection of the stream socket dropped in 60 s: the held answer goes now');
  }

  /**
   * A migration's destination in a cluster takes the stream itself, as Hyper-V's worker process
   * moves the memory over the connection VMMS sets up: a CURVE socket of its own on the host's
   * address (only holders of the cluster's key get in), which the root opens to the source
   * through their link (the fabric's `expose`, so the link's impairments apply). The pages and the
   * state then cross one hop fewer each way than through the root: the state's way in and the
   * answer's way back were ~0.8 ms of an idle VM's ~10 ms blackout. The setup, the commit and the
   * abort stay with the root. Returns the socket's port, or null (the stream then comes through the
   * root, as before): HVLAB_MIGRATE_VIA_ROOT=1, or a socket that could not be made.
   */
  async function openIncomingStream(s: IncomingStream): Promise<number | null> {
    if (process.env.HVLAB_MIGRATE_VIA_ROOT === '1') return null;
    let server: RpcServer<PeerRequest> | null = null;
    try {
      await startZapHandler(s.key, (address, why) => log.warn({ address, why }, 'refused a connection to the migration stream without the cluster\'s key'));
      // A request sent again (the source's connection came back: a fabric that restarted lost it
      // or its answer) is answered with the first answer, never carried out twice (peerReplayKey).
      // Keyed only when it is the source's own request (its credential, this move): anyone with
      // the cluster key may connect here, and a key is what the sender chose.
      server = new RpcServer(decodePeerRequest, (r) => serveStream(s, r).catch(asRpcFailure), curveServerOptions(s.key), undefined, (r) => (r.op !== 'ping' && r.op !== 'sink' && r.from === s.from && r.mig === s.mig && sameCredential(r.auth, s.auth) ? peerReplayKey(r) : null));
      server.onReplay = (r, running) => log.info({ op: r.op, rq: 'rq' in r ? r.rq : null, running }, 'a request the source sent again is answered with its first answer, not carried out again');
      await server.bind(`tcp://${s.address}:0`);
      const port = Number(/:(\d+)$/.exec(server.sock.lastEndpoint ?? '')?.[1]);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`no port in ${server.sock.lastEndpoint ?? 'its endpoint'}`);
      streamServer = server;
      void server.serve();
      log.info({ address: s.address, port, mig: s.mig }, 'the migration stream comes to this worker\'s own socket');
      return port;
    } catch (e) {
      server?.close();
      log.warn({ err: (e as Error).message }, 'no stream socket of its own: the migration stream comes through the root');
      return null;
    }
  }

  /** Ends the stream socket: the VM is this host's now, or the migration is over. */
  function closeIncomingStream(): void {
    streamServer?.close();
    streamServer = null;
  }

  /**
   * The worker's own refusals keep their code on the stream (a page batch that does not decode is
   * InvalidArgument, as the root's forwarded one is), where the RPC server would call them Internal.
   */
  function asRpcFailure(e: unknown): never {
    if (e instanceof VmwpFailure) throw new RpcFailure(e.code, e.message);
    throw e;
  }

  /**
   * One request on the stream socket, decoded once (decodePeerRequest, as the root's peer service
   * does): this migration's data only; its setup, commit and abort go to the root. The root hears
   * that the source is alive (at most once a second), and whether the VM runs here, by notes sent
   * before the answer, so it knows before the source can commit.
   */
  async function serveStream(s: IncomingStream, r: PeerRequest): Promise<unknown> {
    if (r.op === 'ping' || r.op === 'sink') throw new RpcFailure('InvalidArgument', `${r.op} goes to the host's peer service, not to a migration's worker`);
    // Anyone with the cluster key may connect here: only the source's pair credential speaks for it.
    if (r.from !== s.from || !sameCredential(r.auth, s.auth)) {
      throw new RpcFailure('Denied', `this request names ${r.from} but does not carry the credential of ${r.from}'s link to this host's migration from ${s.from}`);
    }
    if (r.mig !== s.mig) throw new RpcFailure('NotFound', `no incoming migration ${r.mig} from ${r.from} on this worker`);
    const now = Date.now();
    if (now - streamSeenAt >= 1000) {
      streamSeenAt = now;
      control.note({ t: 'migSeen' });
    }
    // The same requests as the root's forwarded ones, served by the same code.
    switch (r.op) {
      case 'migPages': {
        const n = ++streamBatches;
        const out = await serveRequest({ t: 'migPages', data: r.data });
        if (n === HOLD_PAGES_UNTIL_DROP && streamServer) await holdUntilDrop(streamServer);
        return out;
      }
      case 'migPremap':
        return await serveRequest({ t: 'migPremap', state: r.state });
      case 'migPull':
        return await serveRequest({ t: 'migPull', waitMs: r.waitMs });
      case 'migState':
      case 'migSwitch':
        try {
          const out = await serveRequest(r.op === 'migState' ? { t: 'migState', state: r.state, pages: r.pages } : { t: 'migSwitch', state: r.state, missing: r.missing });
          control.note({ t: 'migRunning', postcopy: r.op === 'migSwitch' });
          return out;
        } catch (e) {
          control.note({ t: 'migFailed', message: (e as Error).message });
          throw e;
        }
      default:
        throw new RpcFailure('InvalidArgument', `${r.op} goes to the destination's root, not to its worker`);
    }
  }

  /** A page batch of an incoming migration, written into guest memory: the number of pages written. */
  async function migrateInPages(data: Uint8Array): Promise<number> {
    if (!cfg.incoming || !incomingReady || !memory) throw new VmwpFailure('InvalidState', 'this worker does not wait for a migration');
    if (incomingStarted && !postcopyIn) throw new VmwpFailure('InvalidState', 'the migrated VM was started already');
    let written: number[];
    try {
      // Post-copy: a page is taken (no longer missing) in the same synchronous step that writes
      // it, so a second copy of it, or a request for it, can never overwrite what the guest wrote since.
      const pc = postcopyIn;
      written = await applyPageBatch(memory.buffer as SharedArrayBuffer, cfg.memoryBytes, data, pc ? (pfn) => pc.take(pfn) : null, pc?.fd ?? null, (pages) => (inflatePool ??= new PagePool()).inflate(pages), (incomingTouched ??= new Uint8Array(cfg.memoryBytes / PAGE)));
    } catch (e) {
      throw new VmwpFailure('InvalidArgument', `a page batch is refused: ${(e as Error).message}`);
    }
    if (written.length) postcopyIn?.served();
    return written.length;
  }

  /**
   * Before the blackout: the source guest's GPADLs (its channels' rings: VmbusServer.gpadlHint),
   * mapped now, so the blackout's premap finds them and maps only what changed since. A hint
   * refused or failed maps nothing and costs nothing but the blackout's maps: false.
   */
  async function migrateInPremap(bytes: Uint8Array): Promise<boolean> {
    if (!cfg.incoming || !incomingReady || !devices) throw new VmwpFailure('InvalidState', 'this worker does not wait for a migration');
    if (incomingStarted) throw new VmwpFailure('InvalidState', 'the migrated VM was started already');
    let tree: unknown;
    try {
      tree = JSON.parse(Buffer.from(bytes).toString('utf8'));
    } catch {
      throw new VmwpFailure('InvalidArgument', 'the GPADL hint is not JSON');
    }
    // The source's device states as they are while it runs (MigrationSource.deviceStates, without
    // the VMBus server's: the hint is that), decoded here once with the hint and dropped, so that the
    // blackout's decode of the same shapes (negotiated devices, open channels, which this worker's
    // own fresh VM has none of) runs warm. Nothing of it is kept. The decoders are the blackout's own
    // (checking; fuzzed in test/components.test.ts).
    let rehearsal: unknown;
    if (tree !== null && typeof tree === 'object' && !Array.isArray(tree) && Object.prototype.hasOwnProperty.call(tree, 'rehearsal')) {
      rehearsal = (tree as Record<string, unknown>).rehearsal;
      const { rehearsal: _, ...hint } = tree as Record<string, unknown>;
      tree = hint;
    }
    let mapped = false;
    try {
      await devices.premap(tree as VmbusServerState);
      log.info({ gpadls: Array.isArray((tree as { gpadls?: unknown }).gpadls) ? (tree as { gpadls: unknown[] }).gpadls.length : 0 }, 'GPADLs mapped ahead of the blackout');
      mapped = true;
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'the GPADLs could not be mapped ahead: the blackout maps them');
    }
    if (rehearsal !== undefined) {
      try {
        if (rehearsal === null || typeof rehearsal !== 'object' || Array.isArray(rehearsal)) throw new Error('not a map of components');
        devices.decodeSaved({ ...(rehearsal as DeviceComponents), vmbus: tree });
        log.info('the blackout\'s device decoders ran ahead on the source\'s states');
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'the source\'s device states did not decode ahead (the blackout decodes its own)');
      }
    }
    return mapped;
  }

  const ms = (a: number, b: number): number => Math.round((b - a) * 10) / 10;
  /** The migrated guest's resume (set by migrateInState): resolves when its kernel reports Booted. */
  let incomingUp: Promise<void> | null = null;

  /**
   * `tookNs`: when this worker took the state (CLOCK_MONOTONIC ns; before the last pages it came
   * with were written), from which the answer's `ms` counts.
   */
  async function migrateInState(bytes: Uint8Array, postcopyControl?: string, tookNs = monoNs()): Promise<{ running: true; ms: number } & Partial<RanAt>> {
    if (!cfg.incoming || !incomingReady || !memory || !devices || !incomingFirmware) throw new VmwpFailure('InvalidState', 'this worker does not wait for a migration');
    if (incomingStarted) throw new VmwpFailure('InvalidState', 'the migrated VM was started already');
    const devs = devices;
    const t0 = performance.now();
    const t0Ns = monoNs();
    let tUp = 0;
    /** When the VPs were let run (Run stored, or the go sent): none ran before. */
    let letRunNs = t0Ns;
    // The firmware page says "resume" (made at the setup). Written before any go: the kernel reads it as it starts.
    new Uint8Array(memory.buffer).set(incomingFirmware, BOOT_INFO_GPA);
    // Waiting before any go: the partition process's notes of them may come at once.
    const up = new Promise<void>((resolve, reject) => {
      bootWaiters.push({ resolve, reject });
    });
    // A held partition process starts its VP threads while the pages come (GuestKernel.armVps):
    // they are mostly online by now.
    const online = partitionVpsOnline ? Promise.resolve() : new Promise<void>((resolve, reject) => {
      onlineWaiters.push({ resolve, reject });
    });
    // Not awaited when the go or the restore fails first: their rejections then have nobody to take them.
    up.catch(() => undefined);
    online.catch(() => undefined);
    incomingUp = up.then(() => {
      log.info({ guestMs: ms(tUp, performance.now()) }, 'migrated guest resumed (its VMBus client is back)');
    });
    incomingUp.catch(() => undefined);
    // With the go word, the go comes in two steps (GoWord). Start now: every page is written, and
    // the partition process starts its kernel while this process decodes the state and sets the
    // VPs' (its VP threads started while it was held, and wait at the word). The VPs ask for no LP
    // and the kernel does not talk to the host before Run, stored below once the VPs and the
    // devices have their state. Without the word (post-copy, or no word watch there), the go is
    // one message, sent once the VPs have their state, as before.
    const staged = goWord !== null && !postcopyControl;
    let restoring: ReturnType<VmDevices['decodeSaved']>;
    let savedAt: string;
    let tDecoded = t0;
    let tDevicesDecoded = t0;
    // Started from here on: a second migState is refused, whatever happens to this one.
    incomingStarted = true;
    try {
      if (staged) goByWord(goWord!, GoWord.Start);
      // After the go's first step, so the guest's start does not wait for it.
      log.info({ stateBytes: bytes.length, postcopy: postcopyControl !== undefined }, 'the migrated state came: restoring the VM');
      let tree: unknown;
      try {
        tree = JSON.parse(Buffer.from(bytes).toString('utf8'));
      } catch {
        throw new VmwpFailure('InvalidArgument', 'the migrated state is not JSON');
      }
      const state = decodeSavedVm(tree, { name: cfg.name, memoryBytes: cfg.memoryBytes, vps: cfg.vps, id: cfg.id });
      if (typeof state === 'string') throw new VmwpFailure('InvalidArgument', `the migrated state is refused: ${state}`);
      tDecoded = performance.now();
      // The VPs' states go to the hypervisor as soon as they are decoded, and the devices' states
      // decode while it sets them; then the VMBus server's GPADL windows (premap; the event
      // connections were made at the setup) go beside them. The server signals the guest only in
      // `attach`, after this: a signal must not land in an APIC that SetVpState then overwrites. A
      // device state refused here fails the move with the VPs set and never run (no Run is stored).
      const vpsSet = Promise.allSettled(Array.from({ length: cfg.vps }, (_, i) => hv.must('SetVpState', { partitionId, vpIndex: i, state: state.partition.vps[i] })));
      restoring = devs.decodeSaved(state.components);
      tDevicesDecoded = performance.now();
      savedAt = state.savedAt;
      const [vpResults, premapped] = await Promise.all([vpsSet, Promise.allSettled([devs.premap(restoring.vmbus)])]);
      const refused = [...vpResults, ...premapped].find((r) => r.status === 'rejected');
      if (refused) {
        await devs.server.dropPremapped();
        throw refused.reason;
      }
    } catch (e) {
      // A guest told to start never runs a VP: it goes with the failure (the root drops this worker).
      if (staged) child?.kill('SIGKILL');
      throw e;
    }
    const tVps = performance.now();
    // Restore the host's side of VMBus (rings, the devices' channels: the windows are mapped)
    // while the guest restores its own. Neither talks to the other to restore, and what crosses
    // meanwhile waits: a guest message for the VMBus server queues behind the restore (the server
    // serializes both, and attach reaches the restore through microtasks only, before any message
    // can arrive: the guest sends none before its go, or before Run), a signal for a channel not yet
    // started is covered by the drain its start makes, and the guest leaves VMBus messages and
    // events in its SynIC pages until its client is back (kernel.ts: vmbusResuming).
    // The host's devices first, in the same synchronous step as the go (or Run): the guest's port
    // I/O reaches them through this event loop, so none can come before they are restored. A device
    // that refuses its state fails the move below like attach, and then no VP has run.
    let going: Promise<unknown>;
    let attaching: Promise<void>;
    if (staged) {
      going = Promise.resolve();
      attaching = (async (): Promise<void> => {
        devs.restoreDevices(restoring.devices);
        letRunNs = monoNs();
        goByWord(goWord!, GoWord.Run);
        await devs.attach({ restoring: restoring.vmbus });
      })();
    } else {
      letRunNs = monoNs();
      going = childRpc!.request({ t: 'go', ...(postcopyControl ? { postcopyControl } : {}) }, 10000);
      attaching = (async (): Promise<void> => {
        devs.restoreDevices(restoring.devices);
        await devs.attach({ restoring: restoring.vmbus });
      })();
    }
    const [went, attached] = await Promise.allSettled([going, attaching]);
    // A failure here fails the migration; the root then drops this worker and its guest with it.
    // A guest that was let go must stop before the source hears of the failure and runs its copy
    // again: two copies of the VM must not run at once, even for the moments the drop takes.
    const failed = [attached, went].find((r) => r.status === 'rejected');
    if (failed) {
      child?.kill('SIGKILL');
      throw failed.reason;
    }
    const tDevices = performance.now();
    // The VM runs once its VPs do, with the host's devices back: what QEMU calls the end of the
    // downtime. The guest kernel restores its VMBus client on its own after that (and meanwhile
    // leaves VMBus messages and events in its SynIC pages); the commit waits for it (migBooted).
    // A partition process that took its go and is alive but whose VP threads never come online
    // (wedged) fails the move here, stopped first, as a failed go did; one that died fails the wait
    // at once. (With the go word they said so while it was held, so this has mostly resolved: Run
    // is stored, and a VP thread asks for its LP once it sees it and the kernel's start is done.)
    // A guest whose VPs never run after that fails below (firstRunSince), and one whose partition
    // process died after its note is caught by the child's exit (the commit then fails).
    let onlineTimer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (onlineTimer = setTimeout(() => r('late'), ONLINE_TIMEOUT_MS)));
    const came = await Promise.race([online.then(() => 'online' as const), late]).finally(() => clearTimeout(onlineTimer));
    if (came === 'late') {
      child?.kill('SIGKILL');
      throw new Error(`the migrated guest's VP threads were not online within ${ONLINE_TIMEOUT_MS / 1000} s of its go`);
    }
    tUp = performance.now();
    // The end of the downtime, on the clock the hosts share: its VPs' first dispatch here. A guest
    // whose VPs were let run and never ran (its VP threads, started ahead, wedged) fails the move
    // here, stopped first, as one whose VP threads never came online does.
    const ranAtNs = await firstRunSince(letRunNs, ONLINE_TIMEOUT_MS);
    if (ranAtNs === 'late') {
      child?.kill('SIGKILL');
      throw new Error(`the migrated guest's VPs did not run within ${ONLINE_TIMEOUT_MS / 1000} s of its go`);
    }
    const clock = hostClockId();
    if (!postcopyControl) {
      // Every page is here: the pool's threads are not needed any more.
      void inflatePool?.close().catch(() => undefined);
      inflatePool = null;
    }
    const ranMs = ranAtNs === null ? null : Math.round((ranAtNs - t0Ns) / 1e5) / 10;
    log.info({ savedAt, staged, decodeAndVpsMs: ms(t0, tVps), parseAndDecodeMs: ms(t0, tDecoded), devicesDecodeMs: ms(tDecoded, tDevicesDecoded), vpsAndPremapMs: ms(tDevicesDecoded, tVps), stateBytes: bytes.length, goAndDevicesMs: ms(tVps, tDevices), vpsMs: ms(tDevices, tUp), ranMs }, 'migrated VM runs');
    // `ms`: this worker's time from taking the state to the VM running (its first dispatch where
    // known, else this answer), for the source's account of the blackout.
    const tookMs = Math.round(((ranAtNs ?? monoNs()) - tookNs) / 1e5) / 10;
    return { running: true, ms: tookMs, ...(ranAtNs !== null && clock !== null ? { clock, ranAtNs } : {}) };
  }

  /**
   * When the migrated VM ran here: the first dispatch of one of its VPs, as the scheduler wrote it
   * in their pages (VpPage.firstRunNs), bounded below by `sinceNs` (no VP ran before it was let
   * run) and above by now (the guest can write the field too). The VPs are let run before the
   * host's devices finish restoring, so it is there when asked, mostly; else a look each
   * millisecond, up to `waitMs` ('late' when none ran by then). Null without a VP region.
   */
  async function firstRunSince(sinceNs: number, waitMs: number): Promise<number | null | 'late'> {
    const region = vpRegionOfPartition();
    if (!region) return null;
    const f64 = new Float64Array(region);
    const end = performance.now() + waitMs;
    for (;;) {
      const t = firstRunOf(f64, cfg.vps, sinceNs, monoNs());
      if (t !== null) return t;
      if (performance.now() >= end) return 'late';
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /**
   * Before the commit: waits up to `waitMs` for the migrated guest's kernel to say it resumed. A
   * guest that does not is stopped here, at once, before the source hears of it and runs its own
   * copy again: two copies of the VM must never run together.
   */
  async function migrateInBooted(waitMs: number): Promise<true> {
    if (!incomingUp) throw new VmwpFailure('InvalidState', 'no migrated VM was started here');
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([incomingUp, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`its kernel did not resume within ${waitMs} ms`)), waitMs)))]);
      return true;
    } catch (e) {
      child?.kill('SIGKILL');
      throw new VmwpFailure('Unavailable', `the migrated guest is stopped: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }
  const bootWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Waiting for a held partition's VPs to run (its 'online' note). */
  const onlineWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** The partition process said its VP threads are online (its 'online' note). */
  let partitionVpsOnline = false;
  let created: { partitionId: number; token: string } | null = null;

  /** The firmware page's workload fields (`page` is the page: a fresh one, or the guest's at BOOT_INFO_GPA). */
  function setFirmwareWorkload(page: Uint8Array, wl: { name: string; arg: number }): void {
    new DataView(page.buffer, page.byteOffset, page.byteLength).setBigUint64(BootInfo.workloadArg, BigInt(wl.arg), true);
    page.fill(0, BootInfo.workloadName, BootInfo.workloadName + WORKLOAD_NAME_BYTES);
    page.set(new TextEncoder().encode(wl.name).subarray(0, WORKLOAD_NAME_BYTES - 1), BootInfo.workloadName);
  }

  /**
   * A migrated VM's firmware page: "resume", with the hub's endpoint and token (bound at the setup,
   * devices.prepare). Its RTC time is unused: a resumed kernel keeps its clock.
   */
  function resumeFirmwarePage(devs: VmDevices): Uint8Array {
    const fw = firmwarePage({ endpoint: devs.endpoint || paths.vmbusEndpointFor(partitionId), token: devs.token });
    new DataView(fw.buffer).setUint32(BootInfo.resume, 1, true);
    return fw;
  }
  /** An incoming migration's firmware page, made at the setup so that the blackout only copies it in. */
  let incomingFirmware: Uint8Array | null = null;

  function firmwarePage(vmbus: { endpoint: string; token: string }): Uint8Array {
    const page = new Uint8Array(PAGE);
    const dv = new DataView(page.buffer);
    dv.setUint32(BootInfo.magic, BOOT_MAGIC, true);
    dv.setUint32(BootInfo.version, 1, true);
    dv.setUint32(BootInfo.partitionId, partitionId, true);
    dv.setUint32(BootInfo.vpCount, cfg.vps, true);
    dv.setBigUint64(BootInfo.memoryBytes, BigInt(cfg.memoryBytes), true);
    dv.setUint32(BootInfo.controlConnectionId, GUEST_CONTROL_CONNECTION_ID, true);
    setFirmwareWorkload(page, parseWorkload(cfg.workload)!);
    dv.setFloat64(BootInfo.rtcMs, Date.now() + cfg.rtcOffsetS * 1000, true);
    const endpoint = new TextEncoder().encode(vmbus.endpoint);
    if (endpoint.length >= VMBUS_ENDPOINT_BYTES) throw new Error(`VMBus endpoint ${vmbus.endpoint} is longer than ${VMBUS_ENDPOINT_BYTES - 1} bytes`);
    page.set(endpoint, BootInfo.vmbusEndpoint);
    page.set(new TextEncoder().encode(vmbus.token).subarray(0, VMBUS_TOKEN_BYTES - 1), BootInfo.vmbusToken);
    return page;
  }

  async function build(): Promise<void> {
    // Check a saved state before building anything, so a bad one fails the start cleanly.
    const restoreFrom = cfg.restore ? readSavedState(cfg.vmDir, cfg.name, { memoryBytes: cfg.memoryBytes, vps: cfg.vps, id: cfg.id }) : null;
    const session = await hv.connect({ partitionId: ROOT_PARTITION_ID, ticket: input.ticket, role: 'vmwp', vm: cfg.name });
    created = await hv.must<{ partitionId: number; token: string }>('CreatePartition', { memoryBytes: cfg.memoryBytes, name: cfg.name });
    partitionId = created.partitionId;
    record.partitionId = partitionId;
    writeRecord();
    // The pool deletes a warm worker's partition if the worker dies before it is claimed.
    if (!claimed) process.stdout.write(`partition ${partitionId}\n`);
    await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES });
    await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuReserve, value: cfg.processor.reserve });
    await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuCap, value: cfg.processor.maximum });
    await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuWeight, value: cfg.processor.weight });
    await hv.must('InitializePartition', { partitionId });
    await hv.must('MapGpaPages', { partitionId, gpaPage: 0, pageCount: cfg.memoryBytes / PAGE });
    for (let vp = 0; vp < cfg.vps; vp++) await hv.must('CreateVp', { partitionId, vpIndex: vp });
    // Guest -> root control port (owned by this session) and root -> guest message/event ports.
    await hv.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: controlPortId(partitionId), type: PortType.Message, vpIndex: 0, sint: 0 });
    await hv.must('ConnectPort', { partitionId, connectionId: GUEST_CONTROL_CONNECTION_ID, portPartitionId: ROOT_PARTITION_ID, portId: controlPortId(partitionId) });
    await hv.must('CreatePort', { partitionId, portId: 1, type: PortType.Message, vpIndex: 0, sint: 2 });
    await hv.must('CreatePort', { partitionId, portId: 2, type: PortType.Event, vpIndex: 0, sint: 2, flagCount: 2048 });
    await hv.must('ConnectPort', { partitionId: ROOT_PARTITION_ID, connectionId: hostConnectionId(partitionId, 1), portPartitionId: partitionId, portId: 1 });
    await hv.must('ConnectPort', { partitionId: ROOT_PARTITION_ID, connectionId: hostConnectionId(partitionId, 2), portPartitionId: partitionId, portId: 2 });
    // The VM's devices (its config's list), with this worker's VMBus server and port-I/O bus.
    const remote = cfg.vmbusTransport === 'remote' || session.memoryMode !== 'shared';
    if (restoreFrom && session.memoryMode !== 'shared') throw new Error('restoring a saved state needs shared memory (this host runs on process-private memory)');
    devices = await VmDevices.create({
      partitionId, vm: cfg.name, vmId: cfg.instanceSeed ?? cfg.id, vid: hv, remote: remote ? { endpoint: paths.vmbusEndpointFor(partitionId) } : null, entries: cfg.devices, log, rtcOffsetS: cfg.rtcOffsetS,
      timing: { heartbeatMs: envMs('HVLAB_IC_HEARTBEAT_MS', HEARTBEAT_INTERVAL_MS), timesyncMs: envMs('HVLAB_IC_TIMESYNC_MS', 5000) },
    });
    const restoring = restoreFrom ? devices.decodeSaved(restoreFrom.state.components) : null;
    if (session.memoryMode === 'shared') {
      const region = memoryRegionName(cfg.hostId, partitionId);
      memory = new DataView(openRegion(region));
      if (restoreFrom) {
        // Restore: memory byte for byte (the guest kernel's own state is in it), then each VP's
        // registers, APIC, SynIC and timers, then every device and the VMBus channels.
        new Uint8Array(memory.buffer).set(restoreFrom.memory);
        for (let i = 0; i < cfg.vps; i++) await hv.must('SetVpState', { partitionId, vpIndex: i, state: restoreFrom.state.partition.vps[i] });
        devices.restoreDevices(restoring!.devices);
        log.info({ savedAt: restoreFrom.state.savedAt }, 'restoring saved state');
      }
    }
    if (cfg.incoming) {
      // A migration's destination: memory arrives in pages, then the state (migrateInState).
      if (!memory) throw new Error('an incoming migration needs shared memory (this host runs on process-private memory)');
      // The devices' ports and intercepts now, and the partition process gets ready (session, memory,
      // VP threads) and waits for `go`; the setup answers once both are, so the blackout pays neither.
      await devices.prepare();
      await devices.prepareChannels();
      incomingFirmware = resumeFirmwarePage(devices);
      // The clock id goes with the answer in the blackout: read now, not then.
      hostClockId();
      const held = new Promise<boolean>((resolve) => (partitionHeld = resolve));
      // The go word's region: mapped by the partition process before it says it is held, and
      // unlinked here then (both keep their mappings; `down` sweeps it if this process dies first).
      const goRegion = goRegionName(cfg.hostId, partitionId);
      let goSab: SharedArrayBuffer | null = null;
      try {
        if (exiting) throw new Error('the worker is exiting');
        unlinkRegion(goRegion);
        goSab = createRegion(goRegion, PAGE);
        goRegionFile = goRegion;
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'no go word: the go is sent as a message');
      }
      let watched = false;
      try {
        startPartitionProcess(created.token, { hold: true, vps: cfg.vps, ...(goSab ? { goRegion } : {}) });
        await warmRestorePath().then(
          () => log.info('the restore path ran ahead of the blackout'),
          (e: unknown) => log.warn({ err: (e as Error).message }, 'the restore path could not be run ahead (the blackout pays its first run)'),
        );
        watched = await Promise.race([held, new Promise<false>((r) => setTimeout(() => r(false), 20000))]);
      } finally {
        partitionHeld = null;
        if (goRegionFile) unlinkRegion(goRegionFile);
        goRegionFile = null;
      }
      if (goSab && watched) goWord = new Int32Array(goSab);
      const streamPort = cfg.incomingStream ? await openIncomingStream(cfg.incomingStream) : null;
      incomingReady = true;
      control.note({ t: 'incomingReady', partitionId, streamPort });
      log.info({ partitionId }, 'waiting for the migrated VM');
      return;
    }
    await devices.attach(restoring ? { restoring: restoring.vmbus } : {});
    const fw = firmwarePage({ endpoint: devices.endpoint || paths.vmbusEndpointFor(partitionId), token: devices.token });
    if (restoreFrom) new DataView(fw.buffer).setUint32(BootInfo.resume, 1, true);
    if (memory) new Uint8Array(memory.buffer).set(fw, BOOT_INFO_GPA);
    startPartitionProcess(created.token, null);
    if (session.memoryMode !== 'shared') await childRpc!.request({ t: 'firmware', page: fw });
    log.info({ partitionId, partitionPid: child!.pid, memoryMode: session.memoryMode }, 'VM built');
  }

  /**
   * A migration's destination runs the code of its blackout once ahead, on its own fresh VM: each
   * VP's state read and set back as it is (the never-run VP is unchanged), and the saved-state tree
   * of its own devices through the same decoders as the source's will go. This process is new, so
   * otherwise the blackout pays these paths' first run (lazy compilation, the first codec runs), on
   * both sides of the SetVpState call: measured ~5 ms of a ~45 ms downtime.
   */
  async function warmRestorePath(): Promise<void> {
    // `performance` is a lazy global: its first use loads perf_hooks, and migrateInState's first
    // clock read paid that in the blackout (0.7-1.1 ms from the state's arrival to its parse,
    // 0.13-0.17 ms once loaded here).
    performance.now();
    const vps: SavedVpState[] = [];
    for (let v = 0; v < cfg.vps; v++) vps.push(await hv.must<SavedVpState>('GetVpState', { partitionId, vpIndex: v }));
    for (let v = 0; v < cfg.vps; v++) await hv.must('SetVpState', { partitionId, vpIndex: v, state: vps[v] });
    const tree: unknown = JSON.parse(Buffer.from(JSON.stringify(capture(vps, MIGRATED_MEMORY_DIGEST))).toString('utf8'));
    const st = decodeSavedVm(tree, { name: cfg.name, memoryBytes: cfg.memoryBytes, vps: cfg.vps, id: cfg.id });
    if (typeof st === 'string') throw new Error(`its own state does not decode: ${st}`);
    vmDevices().decodeSaved(st.components);
  }

  /**
   * A step of the go through the word (GoWord: Start, then Run): stored, then woken (the
   * partition process's watch of it and, for Run, its VP threads). Nothing answers it; the guest's
   * first VP to run says it was taken (firstRunSince), and a guest whose VPs never run fails that.
   */
  function goByWord(words: Int32Array, step: (typeof GoWord)[keyof typeof GoWord]): void {
    Atomics.store(words, 0, step);
    futexWake(words.buffer as SharedArrayBuffer, 0);
  }

  /** Hands the partition to the prestarted partition process (or a new one) and watches it. */
  function startPartitionProcess(token: string, extra: { hold: true; vps: number; goRegion?: string } | null = null): void {
    // The prestarted partition process, unless it died meanwhile. Its token goes over the pipe,
    // never into an environment.
    const usable = (p: ChildProcess): boolean => p.exitCode === null && p.signalCode === null && partitionLink(p)?.destroyed === false;
    const child0 = usable(prestarted) ? prestarted : spawnPartition();
    child = child0;
    child0.stdin!.end(JSON.stringify({ home: cfg.home, hostId: cfg.hostId, hvPid: cfg.hvPid, partitionId, vm: cfg.name, token, ...(extra ?? {}) }) + '\n');
    // The VMWP takes no requests from the guest's process: one breaks the link (null handler).
    childRpc = new IpcRpc(partitionLink(child0)!, null, (note) => {
      if (note.t === 'held') partitionHeld?.(note.goWord === true);
      else if (note.t === 'online') {
        partitionVpsOnline = true;
        for (const w of onlineWaiters.splice(0)) w.resolve();
      }
    }, (why) => {
      // The guest's process sent what is not a frame of ours: it is not trusted, and this VM fails.
      log.error({ why }, 'the partition process broke its link');
      partitionFailure ??= `the partition process broke its link to the worker (${why})`;
      try {
        child0.kill('SIGKILL');
      } catch { /* gone */ }
    }, () => {
      // The link closed. A partition process that exits closes it too, and its exit (a guest that
      // shut down, a crash) is told by the exit event, which may come a little after: it gets
      // LINK_CLOSED_GRACE_MS to go. One that stays can no longer be asked anything (a save, a
      // stop, a move would each wait for it in vain) while its VPs may still run: the VM fails.
      if (exiting) return;
      const t = setTimeout(() => {
        if (exiting || child0.exitCode !== null || child0.signalCode !== null) return;
        log.error('the partition process closed its link to the worker and stayed: killing it');
        partitionFailure ??= 'the partition process closed its link to the worker';
        try {
          child0.kill('SIGKILL');
        } catch { /* gone */ }
      }, LINK_CLOSED_GRACE_MS);
      child0.once('exit', () => clearTimeout(t));
    });
    record.partitionPid = child0.pid ?? null;
    writeRecord();
    child0.on('exit', (code, signal) => {
      partitionVpsOnline = false;
      for (const w of [...bootWaiters.splice(0), ...onlineWaiters.splice(0)]) w.reject(new Error(`the partition process exited (${signal ?? code}) before the guest ran`));
      if (exiting) return;
      if (code === 0) {
        // The guest shut itself down (the shutdown integration service asked it to).
        log.info('the guest shut down');
        void exit('shut down by the guest', 0, true);
        return;
      }
      log.warn({ code, signal }, 'partition process exited');
      void exit(partitionFailure ?? (signal ? `the partition process was killed (${signal})` : `the partition process exited with code ${code}`), 1);
    });
  }

  function buildFailed(e: unknown): void {
    log.error({ err: e }, 'VM build failed');
    control.note({ t: 'failed', message: (e as Error).message });
    void exit(`build failed: ${(e as Error).message}`, 2);
  }

  /**
   * A booted warm worker becomes the VM of `next` (root/src/warm.ts): the VMWP and the guest take
   * its name, the guest its workload (made on the idle template's empty task table) and the
   * partition its processor settings; then the halted VPs are woken to look for their tasks, and the
   * root hears that the VM booted. Its memory, VPs, devices and VMBus channels are the template's,
   * so the device instance ids are too (the root gives the VM the template's seed).
   */
  async function claimAs(next: VmwpConfig): Promise<void> {
    if (!sameShape(next, cfg)) throw new Error(`VM "${next.name}" is not of this warm worker's shape`);
    if (next.home !== cfg.home || next.hostId !== cfg.hostId || next.hvPid !== cfg.hvPid || next.vmDir !== cfg.vmDir) throw new Error(`VM "${next.name}" is of another host`);
    if (next.instanceSeed !== (cfg.instanceSeed ?? cfg.id)) throw new Error(`VM "${next.name}" does not carry this warm worker's device instance seed`);
    const wl = parseWorkload(next.workload);
    if (!wl) throw new Error(`workload "${next.workload}" is not one this guest runs`);
    if (!childRpc) throw new Error('the template has no partition process');
    const from = cfg;
    cfg = next;
    claimed = true;
    logger.moveTo(`vmwp-${cfg.name}.log`, { host: cfg.hostId, role: 'vmwp', vm: cfg.name });
    process.title = `hvlab-vmwp ${cfg.hostId} ${cfg.name}`;
    record.name = cfg.name;
    record.id = cfg.id;
    record.instanceSeed = cfg.instanceSeed;
    recordFile = join(paths.vmwpDir, `${cfg.name}.json`);
    writeRecord();
    const p = cfg.processor;
    if (p.reserve !== from.processor.reserve) await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuReserve, value: p.reserve });
    if (p.maximum !== from.processor.maximum) await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuCap, value: p.maximum });
    if (p.weight !== from.processor.weight) await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuWeight, value: p.weight });
    if (memory) {
      // The firmware page names the workload the guest runs (what a saved state or a look at it shows).
      setFirmwareWorkload(new Uint8Array(memory.buffer, BOOT_INFO_GPA, PAGE), wl);
    }
    await childRpc.request({ t: 'assign', vm: cfg.name, workload: wl.name, arg: wl.arg }, 10000);
    for (let vp = 0; vp < cfg.vps; vp++) await hv.must('AssertVirtualInterrupt', { partitionId, vpIndex: vp, vector: GuestVector.Reschedule });
    runningSince = Date.now();
    log.info({ template: from.name, partitionId }, 'claimed: the booted template is this VM');
    control.note({ t: 'booted', partitionId, partitionPid: child?.pid ?? null });
  }

  /** A booted warm worker: build and boot the template, say so, wait for the claim. */
  async function runTemplate(): Promise<void> {
    try {
      // Bound first: the root that claims this worker says hello the moment it has written the claim.
      await control.bind();
      const up = new Promise<void>((resolve, reject) => bootWaiters.push({ resolve, reject }));
      await build();
      await up;
    } catch (e) {
      buildFailed(e);
      return;
    }
    process.title = `hvlab-vmwp ${cfg.hostId} (warm)`;
    log.info({ partitionId }, 'template booted; waiting for a claim');
    process.stdout.write('ready\n');
    let next: VmwpConfig;
    try {
      next = decodeVmwpClaim(await stdin.next('the claim')).config;
    } catch (e) {
      // Its root went away (stdin closed) or wrote nonsense: nobody will claim it.
      void exit(`not claimed: ${(e as Error).message}`, 0);
      return;
    }
    stdin.close();
    if (rootGone()) {
      void exit(`not claimed: the root that claimed it for ${next.name} is gone`, 0);
      return;
    }
    try {
      await claimAs(next);
    } catch (e) {
      log.error({ err: e, vm: next.name }, 'claim failed');
      control.note({ t: 'failed', message: (e as Error).message });
      void exit(`claim failed: ${(e as Error).message}`, 2);
    }
  }

  if (template) void runTemplate();
  else {
    writeRecord();
    await control.bind();
    build().catch(buildFailed);
  }
}
