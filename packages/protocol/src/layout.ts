/**
 * Guest physical memory layout that the VMWP (firmware role) and the guest kernel agree on.
 * All multi-byte fields are little-endian. Offsets are named once here and read through DataView.
 *
 *   0x00000  boot information page (written by the VMWP before the first VP starts)
 *   0x01000  status page (written by the guest; the root reads progress from it)
 *   0x02000  workload state page (counter and friends; survives save/restore by living here)
 *   0x03000  guest kernel page (clock base, LP occupancy, per-VP current task and timers)
 *   0x04000  task table (64 tasks x 64 bytes)
 *   0x05000  timer-jitter sample ring of the sleep workload (1024 x f64)
 *   0x10000  per-VP SynIC pages: VP n's message page at 0x10000 + n*0x2000, event flags +0x1000
 *   0x100000 workload data area (memdirty's pages start here, as in QEMU's migration test)
 *   top      the dirty bitmap: the last `dirtyBitmapPages(memoryBytes)` pages (see below)
 */
export const PAGE = 4096;
/** The name of partition `partitionId`'s guest memory region on host `hostId` (its /dev/shm file is /dev/shm/NAME). */
export function memoryRegionName(hostId: string, partitionId: number): string {
  return `hvlab-${hostId}-p${partitionId}-mem`;
}
/** A migration's destination worker's post-copy control region for partition `partitionId`. */
export function postcopyRegionName(hostId: string, partitionId: number): string {
  return `hvlab-${hostId}-p${partitionId}-pc`;
}
/** A migration's destination worker's go word region for partition `partitionId`. */
export function goRegionName(hostId: string, partitionId: number): string {
  return `hvlab-${hostId}-p${partitionId}-go`;
}
/**
 * The regions a partition's worker makes beside those of the hypervisor: the hypervisor unlinks
 * them with the partition, since a worker killed outright leaves them (a post-copy's control
 * region stayed in /dev/shm until `down`).
 */
export function workerRegionNames(hostId: string, partitionId: number): string[] {
  return [postcopyRegionName(hostId, partitionId), goRegionName(hostId, partitionId)];
}
export const BOOT_INFO_GPA = 0x0;
export const STATUS_PAGE_GPA = 0x1000;
export const WORKLOAD_PAGE_GPA = 0x2000;
export const SYNIC_PAGES_GPA = 0x10000;
export const WORKLOAD_DATA_GPA = 0x100000;
export const MIN_MEMORY_BYTES = 2 * 1024 * 1024;
/**
 * 4 GiB: a guest's memory (and the dirty bitmap above it) is one SharedArrayBuffer that the
 * partition process and the VMWP each view as one Uint8Array, and Node 20's V8 makes no typed array
 * longer than that. Larger VMs were accepted and then never started ("Invalid typed array length").
 */
export const MAX_MEMORY_BYTES = 4 * 1024 ** 3;

export function simpGpa(vp: number): number {
  return SYNIC_PAGES_GPA + vp * 0x2000;
}
export function siefpGpa(vp: number): number {
  return SYNIC_PAGES_GPA + vp * 0x2000 + 0x1000;
}

export const BOOT_MAGIC = 0x424c5648; // "HVLB"
export const BootInfo = {
  magic: 0x00, // u32
  version: 0x04, // u32
  partitionId: 0x08, // u32
  vpCount: 0x0c, // u32
  memoryBytes: 0x10, // u64
  controlConnectionId: 0x18, // u32: guest -> root messages (PostMessage)
  controlEventConnectionId: 0x1c, // u32: guest -> root events (SignalEvent)
  workloadArg: 0x20, // u64
  workloadName: 0x40, // 32 bytes, ASCII, NUL-padded
  rtcMs: 0x60, // f64: the real-time clock at power-on, ms since 1970 (fallback when CMOS is unreachable)
  resume: 0x70, // u32: 1 = memory holds a saved VM: continue it instead of booting
  vmbusEndpoint: 0x100, // 128 bytes, ASCII, NUL-padded: the root's remote VMBus endpoint
  vmbusToken: 0x180, // 64 bytes, ASCII, NUL-padded: proves the partition's identity to it
} as const;
export const VMBUS_ENDPOINT_BYTES = 128;
export const VMBUS_TOKEN_BYTES = 64;
export const WORKLOAD_NAME_BYTES = 32;

export const STATUS_MAGIC = 0x54535648; // "HVST"
export const StatusPage = {
  magic: 0x00, // u32
  version: 0x04, // u32
  bootState: 0x08, // u32, BootState
  vpsOnline: 0x0c, // u32
  progress: 0x10, // u64: the workload's progress number
  steps: 0x18, // u64: guest steps run (all VPs)
  messagesReceived: 0x20, // u32: SynIC messages consumed
  eventsReceived: 0x24, // u32: event flags consumed
  lastMessageType: 0x28, // u32
  lastMessageSize: 0x2c, // u32
  bootTimeMs: 0x30, // f64, guest wall clock at boot
  lastMessage: 0x40, // up to 240 bytes: the last SynIC message payload
} as const;
/**
 * The guest's connection to its VMWP's control port (firmware-level, not VMBus: connection ids 1
 * and 4 belong to VMBus), and the message types it posts there.
 */
export const GUEST_CONTROL_CONNECTION_ID = 0x100;
export const GuestControlMessage = { Booted: 1, Debug: 2 } as const;

export const BootState = { None: 0, Booting: 1, Running: 2, ShuttingDown: 3 } as const;

export const WorkloadPage = {
  counter: 0x00, // u64 (counter workload)
  ratePerSecond: 0x08, // u32
  startedMs: 0x10, // f64
} as const;

export const KERNEL_PAGE_GPA = 0x3000;
export const KERNEL_MAGIC = 0x4e4b5648; // "HVKN"
export const KernelPage = {
  magic: 0x00, // u32
  running: 0x04, // i32: VPs holding an LP right now
  maxRunning: 0x08, // i32: the most that ever held one at once
  idleLo: 0x0c, // i32: halted-VP mask bits 0-31 (IPI targets)
  idleHi: 0x10, // i32
  rtcRequest: 0x14, // i32: 1 = VP 0 must read the CMOS clock
  clockBaseMs: 0x18, // f64: guest wall clock at clockBaseRef
  clockBaseRef: 0x20, // f64: reference time (100 ns)
  rtcFromCmosMs: 0x28, // f64: what VP 0 read from the CMOS RTC (0 = not yet)
  sleepArmRef: 0x30, // f64: when the sleep workload's periodic timer was armed
  sleepPeriod: 0x38, // f64: its period (100 ns)
  jitterCount: 0x40, // f64: samples written to the jitter ring
  stateGpa: 0x48, // f64: where the kernel parked its own saved state (0 none); see guest/src/state.ts
  stateBytes: 0x50, // i32: its length in bytes
  statePages: 0x54, // i32: pages allocated for it
  currentTask: 0x100, // 64 x i32: the task each VP runs (-1 none)
  sliceArmed: 0x200, // 64 x i32
  deadlineArmed: 0x300, // 64 x f64: the one-shot deadline each VP's stimer0 is armed for (0 none)
} as const;
export const TASK_TABLE_GPA = 0x4000;
export const TASK_BYTES = 64;
export const MAX_TASKS = 64;
export const Task = {
  state: 0x00, // i32, TaskState
  kind: 0x04, // i32, TaskKind
  owner: 0x08, // i32, VP running it
  wakeAt: 0x10, // f64, reference time
  work: 0x18, // f64, work units done
  a: 0x20, // f64 x 4: kind-specific
  b: 0x28,
  c: 0x30,
  d: 0x38,
} as const;
export const TaskState = { Free: 0, Runnable: 1, Running: 2, Sleeping: 3 } as const;
export const TaskKind = { Spin: 1, Sleep: 2, MemDirty: 3, Counter: 4 } as const;
export const JITTER_RING_GPA = 0x5000;
export const JITTER_RING_ENTRIES = 1024;

/** Guest interrupt vectors. SINT2 (VMBus) is auto-EOI; the timers are direct mode. */
export const GuestVector = { Vmbus: 0x30, Deadline: 0x40, Slice: 0x41, SleepTick: 0x42, Reschedule: 0x50 } as const;
/** Guest time slice (100 ns units): 10 ms. */
export const GUEST_SLICE_100NS = 100_000;

/**
 * The dirty log of guest memory (ARCHITECTURE §2 and §8): one bit per 4 KiB page, bit (p & 31) of
 * little-endian i32 word (p >> 5) for page p, set by the guest kernel's `GuestMemory` after each
 * write (or after a batch of writes) with `Atomics.or`, by a host-side writer into guest memory
 * with `markDirtyRange`, and harvested by the migration engine with fetch-and-clear
 * (`harvestDirtyPages`). It occupies the last pages of the memory region, so it is shared exactly
 * when guest memory is (and process-local with private memory), needs no region or file of its own,
 * and every GPA below it keeps its meaning; the guest kernel treats those pages as not its memory.
 * The bitmap covers the whole region, its own pages included (they are never marked).
 */
export const DIRTY_PAGES_PER_BITMAP_PAGE = PAGE * 8;

/** Pages the dirty bitmap takes at the top of a `memoryBytes` region (a page multiple). */
export function dirtyBitmapPages(memoryBytes: number): number {
  return Math.ceil(Math.ceil(memoryBytes / PAGE) / DIRTY_PAGES_PER_BITMAP_PAGE);
}

/** GPA of the dirty bitmap's first byte: everything below it is guest memory proper. */
export function dirtyBitmapGpa(memoryBytes: number): number {
  return memoryBytes - dirtyBitmapPages(memoryBytes) * PAGE;
}

/** The dirty bitmap of a memory region, as the Int32Array words `harvestDirtyPages` takes. */
export function dirtyBitmapWords(memory: SharedArrayBuffer): Int32Array {
  const pages = Math.ceil(memory.byteLength / PAGE);
  return new Int32Array(memory, dirtyBitmapGpa(memory.byteLength), Math.ceil(pages / 32));
}

/**
 * Marks the pages of [gpa, gpa + length) dirty, one atomic OR per word; call it after the write.
 * For writers into guest memory other than the guest kernel (a VSP's ring writes, SynIC messages).
 */
export function markDirtyRange(words: Int32Array, gpa: number, length: number): void {
  if (!(length > 0)) return;
  const last = Math.floor((gpa + length - 1) / PAGE);
  for (let p = Math.floor(gpa / PAGE); p <= last;) {
    const w = p >>> 5;
    const lo = p & 31;
    const hi = Math.min(31, last - w * 32);
    Atomics.or(words, w, hi === 31 ? -1 << lo : ((1 << (hi + 1)) - 1) & (-1 << lo));
    p = (w + 1) * 32;
  }
}

/**
 * Fetch-and-clear: the page numbers marked since the last harvest, ascending, with their bits
 * cleared. A write that races with the harvest is either in this harvest or marks its page again
 * for the next one (the writer marks after writing, with an atomic RMW), so none is lost.
 */
export function harvestDirtyPages(words: Int32Array): number[] {
  const pages: number[] = [];
  for (let w = 0; w < words.length; w++) {
    if (words[w] === 0) continue; // a plain read only skips: a bit set after it is left for the next harvest
    for (let bits = Atomics.exchange(words, w, 0) >>> 0; bits !== 0; bits &= bits - 1) pages.push(w * 32 + (31 - Math.clz32(bits & -bits)));
  }
  return pages;
}
