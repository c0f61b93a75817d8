/**
 * The guest kernel of one child partition: maps guest memory, reads the boot information page the
 * VMWP (as firmware) wrote, programs each VP's SynIC (message page, event-flag page, SINT2),
 * starts one worker thread per VP, handles SynIC interrupts (copy the message, free the slot, EOM
 * when MessagePending was set; drain event flags), keeps the status page current, brings up VMBus
 * with the integration-service drivers, and tells the root it has booted with a PostMessage on
 * its control connection. A shutdown request (shutdown IC) stops the VPs at a step boundary,
 * closes every channel, unloads VMBus and leaves.
 */
import { hostname } from 'node:os';
import { Worker } from 'node:worker_threads';
import {
  BOOT_MAGIC, BootInfo, BOOT_INFO_GPA, BootState, STATUS_MAGIC, StatusPage, STATUS_PAGE_GPA, WORKLOAD_NAME_BYTES,
  MESSAGE_SLOT_SIZE, MESSAGE_HEADER_SIZE, MsgHeader, MSG_FLAG_PENDING, EVENT_FLAG_BYTES_PER_SINT, MAX_MESSAGE_PAYLOAD, SINT_COUNT,
  simpGpa, siefpGpa, synicPageRegister, HvStatus, GuestControlMessage, VMBUS_CHANNEL_MESSAGE_TYPE, VMBUS_ENDPOINT_BYTES, VMBUS_TOKEN_BYTES, PAGE,
  KERNEL_PAGE_GPA, KERNEL_MAGIC, KernelPage, GuestVector, VpPage, SINT_AUTO_EOI, MAX_VPS_PER_PARTITION,
  vpRegionBytes, vpPageOffset, MAX_TASKS, GoWord,
} from '@hvlab/protocol';
import { futexWake } from '@hvlab/shm';
import type { HvClient, Logger } from '@hvlab/runtime';
import { VmbusClient, RemoteLink } from '@hvlab/vmbus';
import { DEVICE_CLASSES, DEVICE_CLASS_NAMES, type DeviceClass } from '@hvlab/protocol';
import { loadDriverClass, type GuestDriver } from '@hvlab/vsc';
import { KvpClient } from '@hvlab/vsc/kvp';
import { clearParkedState, parkedStateLocation, parkState, readParkedState, KERNEL_STATE_MAX_BYTES, type KernelState } from './state.js';
import { PageAllocator } from './pages.js';
import { GuestWallClock, ReferenceClock } from './clock.js';
import { GuestMemory } from './memory.js';
import { TaskTable } from './workloads.js';
import { CTL_HELD, CTL_SUSPENDED, forgetArmedTimers, stopVpThreads, type VpStart } from './vp.js';
import { SintLine, type LineRinger } from './sint-line.js';
import { firstVpThreadCodeCache, takeSpareVpThread, VP_THREAD_ENTRY } from './spare.js';
import { codeCacheStatus } from '@hvlab/runtime/code-cache-status';
import { waitForSuspension } from '@hvlab/runtime';

/**
 * Kernels whose VP threads may be asleep in a futex with no timeout. process.exit joins worker
 * threads, and one asleep there would hold the process forever: whatever way this process exits
 * (a VP thread that crashed, a signal handler), their VPs are stopped first.
 */
const kernelsWithVps = new Set<{ stopVps(): boolean }>();
process.on('exit', () => {
  for (const k of kernelsWithVps) k.stopVps();
});

/**
 * A VP thread's entry: compiled, vp.js itself; from sources, a plain-JS shim that registers tsx in
 * the thread first (worker threads do not inherit their process's loader).
 */
/** A VP thread for `start`: a spare one if there is one, else a new one. */
function vpThread(start: VpStart, vp: number): Worker {
  const spare = takeSpareVpThread();
  if (spare) {
    spare.ref();
    spare.postMessage({ t: 'start', start });
    return spare;
  }
  return new Worker(VP_THREAD_ENTRY, { workerData: start, name: `vp${vp}` });
}

/** Opens a run gate (GoWord) from the guest's side: Run, and the VP threads waiting there wake. */
function openGate(gate: SharedArrayBuffer): void {
  Atomics.store(new Int32Array(gate), 0, GoWord.Run);
  futexWake(gate, 0);
}

/** SINT used for host->guest messages and events (VMBus uses SINT2 in Linux, auto-EOI). */
export const GUEST_SINT = 2;
export const GUEST_SINT_VECTOR = GuestVector.Vmbus;

export interface BootInfoValues {
  partitionId: number;
  vpCount: number;
  memoryBytes: number;
  controlConnectionId: number;
  workload: string;
  workloadArg: number;
  rtcMs: number;
  vmbusEndpoint: string;
  vmbusToken: string;
  resume: boolean;
}

export interface KernelRegions {
  /** The partition's VP control region (null: local mode, VPs unscheduled). */
  vp: SharedArrayBuffer | null;
  sched: SharedArrayBuffer | null;
}

/** Device memory (VMBus rings) is allocated from the top; at most this share of guest memory. */
const DEVICE_MEMORY_SHARE = 4;

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end >= 0 ? bytes.subarray(0, end) : bytes);
}

export function readBootInfo(mem: GuestMemory): BootInfoValues {
  const b = BOOT_INFO_GPA;
  if (mem.u32(b + BootInfo.magic) !== BOOT_MAGIC) throw new Error('no boot information page: bad magic');
  return {
    partitionId: mem.u32(b + BootInfo.partitionId),
    vpCount: mem.u32(b + BootInfo.vpCount),
    memoryBytes: Number(mem.u64(b + BootInfo.memoryBytes)),
    controlConnectionId: mem.u32(b + BootInfo.controlConnectionId),
    workloadArg: Number(mem.u64(b + BootInfo.workloadArg)),
    workload: cString(mem.read(b + BootInfo.workloadName, WORKLOAD_NAME_BYTES)),
    // Firmware that left the RTC field empty: the host's clock, as a CMOS battery-backed clock
    // would be set from it. It is only the starting value of the guest's wall clock.
    rtcMs: mem.f64(b + BootInfo.rtcMs) || Date.now(),
    vmbusEndpoint: cString(mem.read(b + BootInfo.vmbusEndpoint, VMBUS_ENDPOINT_BYTES)),
    vmbusToken: cString(mem.read(b + BootInfo.vmbusToken, VMBUS_TOKEN_BYTES)),
    resume: mem.u32(b + BootInfo.resume) === 1,
  };
}

export class GuestKernel {
  private readonly control = new SharedArrayBuffer(16);
  private readonly vpRegion: SharedArrayBuffer;
  private readonly local: boolean;
  /** The partition's reference time: the source of every guest-visible time. */
  readonly refClock: ReferenceClock;
  private readonly ctl = new Int32Array(this.control);
  private readonly workers: Worker[] = [];
  boot!: BootInfoValues;
  clock!: GuestWallClock;
  vmbus: VmbusClient | null = null;
  /**
   * A resume in progress: the VPs run (interrupts come) before the VMBus client is restored, and
   * the host's side may be restoring too (root/src/vmwp/main.ts: migrateInState). VMBus messages
   * and events then stay in the SynIC slot and flags, unconsumed, for the scan after the restore:
   * consumed before it, with no client to take them, they would be lost.
   */
  private vmbusResuming = false;
  private remote: RemoteLink | null = null;
  private pages!: PageAllocator;
  /** One driver per device class with a VMBus channel (the registry in protocol/src/devices.ts). */
  readonly drivers = new Map<DeviceClass, GuestDriver>();
  /** Set while the VM is being saved: interrupt handling waits at the gate. */
  private parked: { gate: Promise<void>; open: () => void } | null = null;
  private handling = 0;
  private shuttingDown = false;
  /** Called once the guest has shut down (VPs stopped, VMBus unloaded). */
  onShutdown: (why: string) => void = () => {};
  /**
   * Called once every VP thread is online (before a resumed kernel restores its VMBus client). With
   * a run gate they then wait for Run, so this comes before they run.
   */
  onVpsOnline: () => void = () => {};
  /** A fault for tests: a resumed kernel waits this long before it restores its VMBus client. */
  resumeStallMs = 0;
  /**
   * A migrated VM released by its go word at Start (GoWord): the region, which the VP threads
   * wait on for Run, and Run's arrival, which the kernel waits for after its VPs are online and
   * before it talks to the host (its VMBus client's resume).
   */
  runGate: { word: SharedArrayBuffer; ran: Promise<void> } | null = null;
  /** Thaws so far: a wait for a suspension ends when one comes (vpsSuspended). */
  private thaws = 0;
  private wakeSuspensionWait: (() => void) | null = null;

  constructor(readonly mem: GuestMemory, private readonly hv: HvClient, private readonly log: Logger, private readonly privateMemory: boolean, private hostName = 'hvlab-guest', private readonly regions: KernelRegions = { vp: null, sched: null }) {
    this.local = regions.vp === null || regions.sched === null;
    if (this.local) {
      // Local mode: a process-private VP region with its own reference base, which start() moves
      // to the hypervisor's reference time of the partition (a restored VM continues from it).
      this.vpRegion = new SharedArrayBuffer(vpRegionBytes(MAX_VPS_PER_PARTITION));
      this.refClock = new ReferenceClock(this.vpRegion);
      this.refClock.continueFrom(0);
    } else {
      this.vpRegion = regions.vp!;
      this.refClock = new ReferenceClock(this.vpRegion);
    }
  }

  /** The KVP auto pool: what the guest reports about itself (Hyper-V's KVP daemon fills these). */
  kvpAutoValues(): Record<string, string> {
    return {
      FullyQualifiedDomainName: this.hostName,
      OSName: 'hvlab guest kernel',
      OSVersion: '1.0',
      OSBuildNumber: process.version,
      ProcessorArchitecture: 'x64',
      IntegrationServicesVersion: '1.0',
      // Reference time counts from the partition's creation (the VM's power-on) and goes on
      // across save and restore, as a guest's CLOCK_BOOTTIME does.
      UptimeSeconds: String(Math.floor(this.referenceTime() / 10_000_000)),
      HostMachineName: hostname(),
    };
  }

  /** The partition's reference time (100 ns units). */
  referenceTime(): number {
    return this.refClock.now();
  }

  /** Local mode: take the hypervisor's reference time of this partition, so guest time continues. */
  private async syncLocalReferenceTime(): Promise<void> {
    try {
      const r = await this.hv.call('GetVpRegisters', { partitionId: -1, vpIndex: 0, names: ['ReferenceTime'] });
      const v = (r.output as { values?: { ReferenceTime?: unknown } } | undefined)?.values?.ReferenceTime;
      if (r.status === HvStatus.SUCCESS && typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) this.refClock.continueFrom(v);
      else this.log.warn({ status: r.statusName }, 'no reference time from the hypervisor: guest time starts at 0');
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'no reference time from the hypervisor: guest time starts at 0');
    }
  }

  /** Creates one driver per device class that has a VMBus channel, from the registry. */
  private async loadDrivers(): Promise<void> {
    for (const cls of DEVICE_CLASS_NAMES) {
      if (!DEVICE_CLASSES[cls].vmbus || this.drivers.has(cls)) continue;
      const mod = await loadDriverClass(cls);
      this.drivers.set(cls, mod.createDriver({
        clock: { now: () => this.clock.now(), adjust: (d) => this.clock.adjust(d) },
        shutdown: (r) => void this.shutdown(`shutdown requested by the host (flags ${r.flags})`),
        autoValues: () => this.kvpAutoValues(),
        // A quarter of the device pages: the rings, the other drivers and the kernel's own state
        // share the rest (kernel.ts parks the whole state there at a save or a move).
        stateBudgetBytes: () => (this.pages ? Math.floor(((this.pages.range.top - this.pages.range.floor) * PAGE) / 4) : Infinity),
      }));
    }
  }

  /** Whether `start` was called (a held partition's kernel exists before it, its VPs started ahead). */
  started = false;

  async start(): Promise<void> {
    this.started = true;
    // Local mode reads reference time before its VPs start; a migrated guest's is set by SetVpState, before Run.
    if (this.runGate && this.local) throw new Error('a migrated guest needs scheduled VPs (a VP region and the host\'s scheduler)');
    kernelsWithVps.add(this);
    await this.loadDrivers();
    if (this.local) await this.syncLocalReferenceTime();
    this.boot = readBootInfo(this.mem);
    this.clock = new GuestWallClock(this.mem, () => this.referenceTime());
    const pageCount = Math.floor(this.mem.size / PAGE);
    this.pages = new PageAllocator(pageCount - Math.floor(pageCount / DEVICE_MEMORY_SHARE), pageCount);
    const s = STATUS_PAGE_GPA;
    const k = KERNEL_PAGE_GPA;
    const resume = this.boot.resume && this.mem.u32(k + KernelPage.magic) === KERNEL_MAGIC;
    // A migrated guest (released by its go word) resumes: a fresh boot would set its VPs' registers
    // before Run, beside the VMWP's SetVpState. One whose kernel page says otherwise fails here.
    if (this.runGate && !resume) throw new Error('a migrated guest must resume, but its memory holds no saved kernel');
    this.vmbusResuming = resume;
    if (!resume) {
      this.mem.setU32(s + StatusPage.magic, STATUS_MAGIC);
      this.mem.setU32(s + StatusPage.version, 1);
      this.mem.setU32(s + StatusPage.bootState, BootState.Booting);
      this.mem.fill(k, PAGE, 0);
      this.mem.setU32(k + KernelPage.magic, KERNEL_MAGIC);
      for (let vp = 0; vp < MAX_VPS_PER_PARTITION; vp++) this.mem.setU32(k + KernelPage.currentTask + vp * 4, 0xffffffff);
      this.clock.set(this.boot.rtcMs);
      this.mem.setF64(s + StatusPage.bootTimeMs, this.clock.now());
      new TaskTable(this.mem).create(this.boot.workload, this.boot.workloadArg, this.boot.vpCount);
      // The CMOS clock is read by VP 0 through port I/O (intercepted, emulated by the VMWP).
      if (!this.local) this.mem.setU32(k + KernelPage.rtcRequest, 1);
      for (let vp = 0; vp < this.boot.vpCount; vp++) {
        await this.hv.must('SetVpRegisters', {
          partitionId: -1,
          vpIndex: vp,
          values: { Simp: synicPageRegister(simpGpa(vp)), Siefp: synicPageRegister(siefpGpa(vp)), [`Sint${GUEST_SINT}`]: GUEST_SINT_VECTOR | SINT_AUTO_EOI, Scontrol: 1 },
        });
      }
    } else {
      // A restored VM: its SynIC, APIC, timers and queued messages came back through the
      // hypervisor, and the VMBus connection with them; messages in the slots are handled below.
      this.mem.atomicStore32(k + KernelPage.running, 0);
      this.mem.atomicStore32(k + KernelPage.idleLo, 0);
      this.mem.atomicStore32(k + KernelPage.idleHi, 0);
      // The VPs program their deadline and slice timers again rather than trust the kernel page's
      // note of what they armed (forgetArmedTimers says why).
      forgetArmedTimers(this.mem);
      // Local mode keeps the synthetic timers in this process's own VP region, which did not
      // survive the save: the sleep workload's periodic tick goes too.
      if (this.local) new TaskTable(this.mem).timersLost();
    }
    if (this.armed) {
      // Its VP threads came online while the partition was held (armVps), and wait at the gate.
      if (this.armed.count !== this.boot.vpCount) throw new Error(`the firmware says ${this.boot.vpCount} VPs, but ${this.armed.count} VP threads were started ahead`);
      await this.armed.online;
      // The kernel page is as the VPs must find it: they may run once their gate opens. Let go by a
      // message rather than the word, the gate is this kernel's to open (post-copy's fault handling
      // is in place by now too).
      Atomics.store(this.ctl, CTL_HELD, 0);
      futexWake(this.control, CTL_HELD);
      if (!this.runGate) openGate(this.armed.gate);
    } else {
      await this.spawnVps(this.boot.vpCount, this.runGate?.word ?? null);
      this.onVpsOnline();
    }
    this.mem.setU32(s + StatusPage.vpsOnline, this.boot.vpCount);
    this.lineToHypervisor();
    if (this.runGate) await this.runGate.ran;
    if (!resume && !this.local) {
      // A host-side wait for VP 0's CMOS read (polling guest memory): nothing of it enters guest state.
      const t0 = Date.now();
      // VP 0 says when it has read it (a look every 50 ms as well, in case that word is lost).
      while (this.mem.f64(k + KernelPage.rtcFromCmosMs) === 0 && Date.now() - t0 < 5000) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, 50);
          this.rtcRead = () => {
            clearTimeout(t);
            r();
          };
        });
        this.rtcRead = null;
      }
      const rtc = this.mem.f64(k + KernelPage.rtcFromCmosMs);
      if (rtc > 0) {
        this.clock.set(rtc + (this.boot.rtcMs % 1000));
        this.mem.setF64(s + StatusPage.bootTimeMs, this.clock.now());
      } else this.log.warn('no CMOS clock: using the firmware time');
    }
    if (resume && this.resumeStallMs > 0) await new Promise((r) => setTimeout(r, this.resumeStallMs));
    if (resume) await this.resumeVmbus();
    else await this.startVmbus();
    this.mem.setU32(s + StatusPage.bootState, BootState.Running);
    const payload = new Uint8Array(8);
    new DataView(payload.buffer).setUint32(0, this.boot.vpCount, true);
    const r = await this.hv.call('PostMessage', { connectionId: this.boot.controlConnectionId, messageType: GuestControlMessage.Booted, payload });
    if (r.status !== HvStatus.SUCCESS) throw new Error(`could not tell the root it booted: ${r.statusName}`);
    this.log.info({
      vps: this.boot.vpCount, workload: this.boot.workload, resumed: resume, scheduled: !this.local,
      // Whether this process and its first VP thread ran from V8's code cache (runtime/src/code-cache.ts).
      codeCache: { process: codeCacheStatus() ?? null, vp: firstVpThreadCodeCache() },
    }, resume ? 'guest resumed' : 'guest booted');
  }

  /**
   * A booted warm worker's guest becomes a VM's (root/src/warm.ts, at its claim): the VM's name
   * (the host name it reports through KVP), its workload, made on the task table that the idle
   * template left empty, and its boot time. The VPs are halted with nothing to run; the VMWP
   * wakes them once this has returned (they look for tasks after every interrupt).
   */
  assign(o: { hostName: string; workload: string; arg: number }): void {
    if (!this.boot || this.mem.u32(STATUS_PAGE_GPA + StatusPage.bootState) < BootState.Running) throw new Error('the guest has not booted');
    if (this.assigned) throw new Error('the guest was given its VM already');
    if (this.boot.workload !== 'idle') throw new Error(`the guest runs workload ${this.boot.workload}, not a template's idle one`);
    const tasks = new TaskTable(this.mem);
    for (let i = 0; i < MAX_TASKS; i++) if (tasks.kind(i) !== 0) throw new Error('the template has tasks');
    this.assigned = true;
    this.hostName = o.hostName;
    this.boot = { ...this.boot, workload: o.workload, workloadArg: o.arg };
    tasks.create(o.workload, o.arg, this.boot.vpCount);
    this.mem.setF64(STATUS_PAGE_GPA + StatusPage.bootTimeMs, this.clock.now());
    const k = this.drivers.get('kvp')?.vmbus;
    if (k instanceof KvpClient) k.guest.set('hvlab.workload', o.workload);
    this.log.info({ workload: o.workload }, 'guest assigned to its VM');
  }
  private assigned = false;

  private interrupts: Promise<void> = Promise.resolve();
  /** Where the VP threads raise SINTs (null: they post a message each). */
  private sintLine: SintLine | null = null;

  /**
   * Lets the hypervisor raise GUEST_SINT on the SINT line directly while a VP is halted (sint-line.ts):
   * registered here, in start, once `vmbusResuming` says what a SINT taken now must do (a resumed
   * kernel leaves what comes before its VMBus client is restored for its scan). Only GUEST_SINT: it
   * is the SINT that scan covers on every VP. Nothing without a VP region or a hypercall page.
   */
  private lineToHypervisor(): void {
    const line = this.sintLine;
    const hv = this.hv as Partial<LineRinger>;
    if (this.local || !line || typeof hv.onPageAttention !== 'function') return;
    if (!line.attachHypervisor(this.vpRegion, [GUEST_SINT], hv as LineRinger)) this.log.info({}, 'no hypercall page: the hypervisor raises SINTs through the VPs');
  }

  /** A VP raised SINT `sint`: handled after the ones before it. */
  private raised(vp: number, sint: number): void {
    this.interrupts = this.interrupts.then(() => this.onSint(vp, sint)).catch((e) => this.log.error({ err: e }, 'interrupt handling failed'));
  }
  /** Set while start() waits for VP 0's CMOS read. */
  private rtcRead: (() => void) | null = null;

  private newVmbusClient(): VmbusClient {
    return new VmbusClient({
      post: async (connectionId, payload) => (await this.hv.call('PostMessage', { connectionId, messageType: VMBUS_CHANNEL_MESSAGE_TYPE, payload })).status,
      signal: (connectionId) => this.hv.signal(connectionId, 0),
      // The rings' own writes into guest memory go to the dirty log through `dirty`.
      memory: this.privateMemory ? null : this.mem.share().memory,
      dirty: this.mem,
      allocPages: (n) => this.pages.alloc(n),
      freePages: (pfn, n) => this.pages.release(pfn, n),
      remote: () => {
        if (!this.remote && this.boot.vmbusEndpoint) this.remote = new RemoteLink(this.boot.vmbusEndpoint, this.boot.partitionId, this.boot.vmbusToken);
        return this.remote;
      },
      log: this.log,
    });
  }

  private registerDrivers(client: VmbusClient): void {
    for (const d of this.drivers.values()) if (d.vmbus) client.register(d.vmbus);
  }

  private async startVmbus(): Promise<void> {
    const k = this.drivers.get('kvp')?.vmbus;
    if (k instanceof KvpClient) {
      k.guest.set('hvlab.workload', this.boot.workload);
      k.guest.set('hvlab.vps', String(this.boot.vpCount));
    }
    this.vmbus = this.newVmbusClient();
    this.registerDrivers(this.vmbus);
    try {
      await this.vmbus.connect();
    } catch (e) {
      // A guest without VMBus still runs; its integration services show NoContact.
      this.log.warn({ err: (e as Error).message }, 'VMBus did not come up');
    }
  }

  /** The device pages [floor, end) the allocator hands out (rings and the parked state). */
  private deviceRange(): { floor: number; end: number } {
    const pageCount = Math.floor(this.mem.size / PAGE);
    return { floor: pageCount - Math.floor(pageCount / DEVICE_MEMORY_SHARE), end: pageCount };
  }

  /**
   * Resume: read back what `quiesce` parked in guest memory — the device-page allocator, every
   * driver's state, and the VMBus client with its channels open on the same rings — without
   * talking to the host. Then handle whatever sits in the SynIC message slots and event flags
   * (messages and signals that arrived while the VM was saved).
   */
  private async resumeVmbus(): Promise<void> {
    const parked = readParkedState(this.mem, this.deviceRange());
    if (typeof parked === 'string') throw new Error(`cannot resume: ${parked}`);
    const st: KernelState = parked.state;
    this.pages.restore(st.pages);
    this.pages.release(parked.pfn, parked.pages);
    clearParkedState(this.mem);
    for (const [cls, raw] of Object.entries(st.drivers)) {
      const d = this.drivers.get(cls as DeviceClass);
      if (!d) throw new Error(`cannot resume: the saved kernel state has a ${cls} driver this kernel lacks`);
      const v = d.decode(raw);
      if (typeof v === 'string') throw new Error(`cannot resume: kernel.drivers.${cls}: ${v}`);
      d.restore(v);
    }
    this.vmbus = this.newVmbusClient();
    this.registerDrivers(this.vmbus);
    await this.vmbus.restore(st.vmbus);
    this.vmbusResuming = false;
    for (let vp = 0; vp < this.boot.vpCount; vp++) await this.onSint(vp, GUEST_SINT);
  }

  /** VP threads started ahead of the kernel (armVps): their count, their gate, and their coming online. */
  private armed: { count: number; gate: SharedArrayBuffer; online: Promise<void> } | null = null;

  /**
   * A held partition (a migration's destination) starts its VP threads before its memory is
   * final, so that none of that work falls in the blackout: each comes online and waits at the
   * gate (`gate`, the VMWP's go region: GoWord) before it touches guest memory or asks for an LP.
   * `onVpsOnline` is called once they all are. `start` then takes them instead of starting its
   * own; let go by the go word, they run at its Run, else when `start` opens the gate.
   *
   * They started at the go word's Start before, in the blackout: the destination's worker saw them
   * online 4-18 ms after the state's arrival (p50 ~6), after it had let the VPs run in half of the
   * moves, and their start took the CPUs its own SetVpState calls needed.
   */
  armVps(vpCount: number, gate: SharedArrayBuffer): void {
    if (this.armed || this.workers.length > 0) throw new Error('the VP threads are started already');
    if (this.local) throw new Error('a held partition needs scheduled VPs (a VP region and the host\'s scheduler)');
    // Held even past Run until `start` has done its part: Run may come before it (a slow start).
    Atomics.store(this.ctl, CTL_HELD, 1);
    kernelsWithVps.add(this);
    const online = this.spawnVps(vpCount, gate);
    this.armed = { count: vpCount, gate, online };
    online.then(() => this.onVpsOnline(), () => undefined);
  }

  /** Starts a thread per VP (`gate`: each waits there for Run); resolves once every one said it is online. */
  private spawnVps(vpCount: number, gate: SharedArrayBuffer | null): Promise<void> {
    const online: Promise<void>[] = [];
    if (!this.sintLine) {
      this.sintLine = SintLine.open(vpCount, (vp, sint) => this.raised(vp, sint));
      if (!this.sintLine) this.log.info({}, 'no wake descriptor here: the VP threads post each SINT as a message');
    }
    for (let vp = 0; vp < vpCount; vp++) {
      const start: VpStart = {
        memory: this.mem.share(), vpRegion: this.vpRegion, sched: this.local ? null : this.regions.sched, control: this.control,
        vpIndex: vp, vpCount, sintVectors: { [GUEST_SINT_VECTOR]: GUEST_SINT }, sintLine: this.sintLine?.handle ?? null,
        runGate: gate,
      };
      const w = vpThread(start, vp);
      w.on('error', (e) => {
        this.log.error({ vp, err: e }, 'VP thread crashed');
        process.exit(3);
      });
      w.on('message', (m: { t?: string; vp?: number; sint?: number }) => {
        if (m?.t === 'sint') this.raised(Number(m.vp), Number(m.sint));
        else if (m?.t === 'rtc') this.rtcRead?.();
      });
      // Its 'online' (a spare taken before it said it had loaded may say that first).
      online.push(new Promise((resolve) => {
        const onMessage = (m: { t?: unknown } | null): void => {
          if (m?.t !== 'online') return;
          w.off('message', onMessage);
          resolve();
        };
        w.on('message', onMessage);
      }));
      this.workers.push(w);
    }
    return Promise.all(online).then(() => undefined);
  }

  /**
   * Save, guest side: the VPs are already suspended by the hypervisor; park interrupt handling
   * (what is running finishes, what comes waits at the gate) and write the kernel's own state
   * into guest memory, where a resumed kernel finds it. `thaw` undoes it when the save fails.
   */
  async quiesce(): Promise<{ bytes: number }> {
    return this.park(this.thaws);
  }

  /**
   * The VMWP's freeze request, guest side: waits for suspension number `seq` (if given; at most
   * `timeoutMs`), then quiesces, unless a thaw came meanwhile. The thaws are counted from this
   * call on: the VMWP sends its thaw right behind a request it gave up on, and when the two arrive
   * in one read of the pipe, the thaw runs before the request's wait has even resumed. Then a
   * wait for a suspension already taken returned, the kernel parked after the thaw that called
   * the freeze off, and nothing thawed it: its interrupts waited at the gate for good, and the next
   * save waited for them (CI: "no answer to quiesce within 15000 ms", about 1 run in 12 of the
   * test of a suspension the worker did not make).
   */
  async quiesceAfter(seq: number | undefined, timeoutMs: number): Promise<{ bytes: number }> {
    const thaws = this.thaws;
    if (seq !== undefined) await this.vpsSuspended(seq, timeoutMs, thaws);
    return this.park(thaws);
  }

  /** Whether interrupt handling is parked (by a quiesce no thaw has undone). */
  get isParked(): boolean {
    return this.parked !== null;
  }

  private async park(thaws: number): Promise<{ bytes: number }> {
    // Synchronous up to the gate: a thaw counted after this point opens it again.
    if (this.thaws !== thaws) throw new Error('the freeze was called off (a thaw came) before the kernel parked');
    if (!this.parked) {
      let open!: () => void;
      const gate = new Promise<void>((r) => { open = r; });
      this.parked = { gate, open };
    }
    // The handlers past the gate finish; the ones queued behind them wait at it. (This waited for
    // the whole queue of raised interrupts before, and one queued behind a handler then waited at
    // this very gate: the quiesce hung until the VMWP gave up.)
    const calledOff = (): void => {
      if (this.thaws !== thaws) throw new Error('the freeze was called off (a thaw came) while the kernel parked');
    };
    for (let i = 0; this.handling > 0; i++) {
      if (i > 5000) throw new Error('interrupt handling did not come to rest within 5 s');
      await new Promise((r) => setTimeout(r, 1));
      calledOff();
    }
    if (!this.vmbus) throw new Error('VMBus is not up: nothing to save yet');
    await this.vmbus.whenIdle();
    // Called off meanwhile: the gate is open again, and no copy may be written for a freeze nobody
    // waits for (its pages would stay taken, and a later freeze's copy could land over it).
    calledOff();
    // A save that was called off left its copy parked: give its pages back first.
    const parkedAt = parkedStateLocation(this.mem);
    if (parkedAt) {
      this.pages.release(parkedAt.gpa / PAGE, parkedAt.pages);
      clearParkedState(this.mem);
    }
    const drivers: Record<string, unknown> = {};
    for (const [cls, d] of this.drivers) drivers[cls] = d.save();
    const body = { vmbus: this.vmbus.save(), drivers };
    // The allocator's own state must count the pages the state is written to: measure, take the
    // pages, then encode with the allocator as it is after taking them.
    const probe = new TextEncoder().encode(JSON.stringify({ version: 1, ...body, pages: this.pages.save() }));
    const pages = Math.ceil((probe.length + 4096) / PAGE);
    if (probe.length > KERNEL_STATE_MAX_BYTES) throw new Error(`the kernel's state is ${probe.length} bytes, more than ${KERNEL_STATE_MAX_BYTES}`);
    const pfn = this.pages.alloc(pages);
    const json = new TextEncoder().encode(JSON.stringify({ version: 1, vmbus: body.vmbus, pages: this.pages.save(), drivers }));
    parkState(this.mem, json, pfn, pages);
    return { bytes: json.length };
  }

  /**
   * Waits until the scheduler has taken suspension number `seq` and every VP page shows it
   * (waitForSuspension). A thaw meanwhile (the VMWP gave up), counted from `thaws` (the count
   * when the request came), ends the wait with an error.
   */
  private async vpsSuspended(seq: number, timeoutMs: number, thaws: number): Promise<void> {
    if (this.local) throw new Error('the VPs are not scheduled by the hypervisor (no VP region): their suspension cannot be seen');
    const calledOff = (): boolean => this.thaws !== thaws;
    await waitForSuspension(this.vpRegion, this.boot.vpCount, seq, {
      timeoutMs,
      calledOff,
      onSleep: (wake) => (this.wakeSuspensionWait = wake),
    });
    // A wait that found the suspension taken at once returned without sleeping, and a thaw may
    // have come before this line ran.
    if (calledOff()) throw new Error('the suspension was called off');
  }

  /** A save was called off: let interrupts in again (the parked copy is simply left unused). */
  thaw(): void {
    this.thaws++;
    this.wakeSuspensionWait?.();
    const p = this.parked;
    this.parked = null;
    p?.open();
  }

  /**
   * Shutdown: close the channels and unload VMBus, then stop every VP at a step boundary and leave.
   * The unload comes first because its answers (GPADL_TORNDOWN, UNLOAD_RESPONSE) are SynIC
   * messages, which a VP takes and raises on the SINT line: with the VPs stopped first (the order
   * before VP scheduling moved interrupt delivery onto the VP threads) no answer arrived, and every
   * `vm stop` waited out the unload's 5 s timeout, its stopped VP still holding its LP. Linux
   * unloads VMBus while a CPU can still see the host's answer, too (vmbus_initiate_unload, which
   * polls the message pages because the other CPUs may already be down).
   */
  async shutdown(why: string): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    this.log.info({ why }, 'guest shutting down');
    this.mem.atomicStore32(STATUS_PAGE_GPA + StatusPage.bootState, BootState.ShuttingDown);
    try {
      await Promise.race([this.vmbus?.disconnect(), new Promise((_, rej) => setTimeout(() => rej(new Error('VMBus unload timed out')), 5000))]);
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'VMBus unload incomplete');
    }
    const stopped = this.workers.map((w) => new Promise<void>((resolve) => {
      w.on('message', (m: { t?: string }) => { if (m?.t === 'stopped') resolve(); });
      w.once('exit', () => resolve());
    }));
    this.stopVps();
    await Promise.race([Promise.all(stopped), new Promise((r) => setTimeout(r, 3000))]);
    this.onShutdown(why);
  }

  closeLinks(): void {
    this.remote?.close();
    this.remote = null;
  }

  /** A SynIC interrupt for SINT `sint` on VP `vp`. */
  async onSint(vp: number, sint: number, slot?: Uint8Array, flag?: number): Promise<void> {
    while (this.parked) await this.parked.gate;
    this.handling++;
    try {
      await this.handleSint(vp, sint, slot, flag);
    } finally {
      this.handling--;
    }
  }

  private async handleSint(vp: number, sint: number, slot?: Uint8Array, flag?: number): Promise<void> {
    const slotGpa = simpGpa(vp) + sint * MESSAGE_SLOT_SIZE;
    if (slot && slot.length === MESSAGE_SLOT_SIZE) this.mem.write(slotGpa, slot);
    if (sint === GUEST_SINT && this.vmbusResuming) {
      // Left for the scan after the restore: the message in its slot, the event as its flag.
      if (flag !== undefined && flag >= 0 && flag < EVENT_FLAG_BYTES_PER_SINT * 8) {
        this.mem.atomicOr32(siefpGpa(vp) + sint * EVENT_FLAG_BYTES_PER_SINT + (flag >>> 5) * 4, (1 << (flag & 31)) | 0);
      }
      return;
    }
    const typeGpa = slotGpa + MsgHeader.type;
    const type = this.mem.atomicLoad32(typeGpa) >>> 0;
    if (type !== 0) {
      const size = Math.min(this.mem.u8(slotGpa + MsgHeader.payloadSize), MAX_MESSAGE_PAYLOAD);
      const payload = this.mem.read(slotGpa + MESSAGE_HEADER_SIZE, size);
      // Free the slot, then read MessagePending, as Linux's vmbus_signal_eom does: read before the
      // slot is free, the flag could be set just after (a message queued behind this one) and the
      // EOM that delivers it never sent. The exchange is the barrier between the two.
      this.mem.atomicExchange32(typeGpa, 0);
      const pending = ((this.mem.atomicLoad32(slotGpa + 4) >>> ((MsgHeader.flags - 4) * 8)) & MSG_FLAG_PENDING) !== 0;
      if (type === VMBUS_CHANNEL_MESSAGE_TYPE && sint === GUEST_SINT) this.vmbus?.onMessage(payload);
      const st = STATUS_PAGE_GPA;
      this.mem.fill(st + StatusPage.lastMessage, MAX_MESSAGE_PAYLOAD, 0);
      this.mem.write(st + StatusPage.lastMessage, payload);
      this.mem.setU32(st + StatusPage.lastMessageType, type);
      this.mem.setU32(st + StatusPage.lastMessageSize, size);
      this.mem.atomicAdd32(st + StatusPage.messagesReceived, 1);
      if (pending || this.privateMemory) await this.hv.call('SetVpRegisters', { partitionId: -1, vpIndex: vp, values: { Eom: 0 } });
    }
    // Drain event flags of this SINT.
    let events = flag !== undefined ? 1 : 0;
    const base = siefpGpa(vp) + sint * EVENT_FLAG_BYTES_PER_SINT;
    const signalled: number[] = [];
    for (let w = 0; w < EVENT_FLAG_BYTES_PER_SINT / 4; w++) {
      // Load first: exchanging a zero word would write (and dirty) the page for nothing. A flag
      // set after the load comes with an interrupt of its own.
      if (this.mem.atomicLoad32(base + w * 4) === 0) continue;
      const bits = this.mem.atomicExchange32(base + w * 4, 0);
      for (let b = bits >>> 0; b !== 0; b &= b - 1) {
        events++;
        signalled.push(w * 32 + (31 - Math.clz32(b & -b)));
      }
    }
    if (flag !== undefined && !signalled.includes(flag)) signalled.push(flag);
    // On SINT2 an event flag is a VMBus channel's relid.
    if (sint === GUEST_SINT) for (const relid of signalled) this.vmbus?.onEvent(relid);
    if (events > 0) this.mem.atomicAdd32(STATUS_PAGE_GPA + StatusPage.eventsReceived, events);
    if (this.local) this.wakeVps();
  }

  /** Pause/resume notification: the scheduler enforces it; only local-mode VPs obey it here. */
  setSuspended(suspended: boolean): void {
    if (!this.local) return;
    Atomics.store(this.ctl, CTL_SUSPENDED, suspended ? 1 : 0);
    Atomics.notify(this.ctl, CTL_SUSPENDED);
    this.wakeVps();
  }

  /** Wakes VP threads blocked on their dispatch word (stop requests; local-mode interrupts). */
  private wakeVps(): void {
    // VP threads started ahead (armVps) may wait at their gate or held past it: woken there too.
    if (this.armed) {
      futexWake(this.armed.gate, 0);
      futexWake(this.control, CTL_HELD);
    }
    for (let vp = 0; vp < (this.boot?.vpCount ?? this.armed?.count ?? 0); vp++) {
      const idx = (vpPageOffset(vp) + VpPage.dispatch) >> 2;
      if (this.local) Atomics.notify(new Int32Array(this.vpRegion), idx);
      else futexWake(this.vpRegion, idx);
    }
    Atomics.notify(this.ctl, CTL_SUSPENDED);
  }

  async stop(): Promise<void> {
    // A kernel that never started (a held partition's, its VPs started ahead) has no status page of its own yet.
    if (this.boot) this.mem.atomicStore32(STATUS_PAGE_GPA + StatusPage.bootState, BootState.ShuttingDown);
    // A VP asleep in a futex cannot be terminated: have every one leave its loop first.
    this.stopVps();
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.sintLine?.close();
    this.sintLine = null;
  }

  /**
   * Asks every VP thread to stop and wakes them until each has left its loop (at most 2 s).
   * Synchronous; false when one did not leave.
   */
  stopVps(): boolean {
    kernelsWithVps.delete(this);
    const left = stopVpThreads(this.control, () => this.wakeVps());
    if (!left) this.log.error({}, 'a VP thread did not stop within 2 s');
    return left;
  }
}
