/**
 * Partitions and virtual processors as the hypervisor holds them: the TLFS lifecycle
 * (Created -> Initialized -> Finalized -> Deleted), the privilege mask, scheduling properties,
 * the GPA map (one byte of access flags per 4 KiB page) and, per VP, registers and a SynIC.
 *
 * What a partition's guest can make the hypervisor hold is capped per partition (the limits
 * below): queued SynIC messages, ports, connections, GPADL windows and intercepts. A call that
 * would pass a cap is refused (INSUFFICIENT_BUFFERS for messages, INSUFFICIENT_MEMORY otherwise).
 */
import { PartitionState, type SavedIntercept, type VpRegisterName } from '@hvlab/protocol';
import { SynIc, type MessageBudget } from './synic.js';

/** Messages queued in the SynICs of all VPs of one partition (64 per SINT still applies). */
export const MAX_QUEUED_MESSAGES_PER_PARTITION = 1024;
/** Ports a partition holds. The root holds a port per VMBus channel of every VM, hence 4096. */
export const MAX_PORTS_PER_PARTITION = 4096;
/** Connections a partition holds (the same reasoning). */
export const MAX_CONNECTIONS_PER_PARTITION = 4096;
/** GPADL windows granted on one partition's memory, and the pages they cover in all (256 MiB). */
export const MAX_GPADLS_PER_PARTITION = 1024;
export const MAX_GPADL_PAGES_PER_PARTITION = 65536;
/** Intercepts installed on one partition. */
export const MAX_INTERCEPTS_PER_PARTITION = 64;

export const GPA_READ = 1;
export const GPA_WRITE = 2;
export const GPA_EXECUTE = 4;

/** An intercepted access a VP is stopped in, and whether its notification has gone out. */
export interface PendingIntercept extends SavedIntercept {
  /**
   * False for an intercept restored by SetVpState until a session holding a matching intercept
   * has been notified (at once, or when InstallIntercept installs one): see Hypervisor.
   */
  delivered: boolean;
}

export class VirtualProcessor {
  readonly registers = new Map<VpRegisterName, number>();
  /** The access the VP is stopped on until the parent clears InterceptSuspend; null when it runs. */
  intercept: PendingIntercept | null = null;
  constructor(readonly index: number, readonly synic: SynIc) {}

  /** InterceptSuspend: stopped on an intercepted access. */
  get interceptPending(): boolean {
    return this.intercept !== null;
  }
}

export interface Port {
  portId: number;
  type: number;
  vpIndex: number;
  sint: number;
  flagCount: number;
  /** For ports in the root partition: the session that receives its messages. */
  ownerSession: string | null;
}

export interface Intercept {
  type: number;
  access: number;
  port: number;
  portEnd: number;
  /** The session that installed it: intercept messages go there. */
  ownerSession: string;
}

/** A partition's faults (see PartitionProperty.Fault* for what each does). */
export interface PartitionFaults {
  interruptDelayUs: number;
  /** Bit mask of stalled VP indexes 0..52. */
  stalledVps: number;
  clockOffsetUs: number;
  clockSkewPpm: number;
  /** hrtime at which the skew was set (0n while there is none). */
  clockSkewSinceNs: bigint;
}

export class Partition {
  state: PartitionState = PartitionState.Created;
  readonly vps = new Map<number, VirtualProcessor>();
  readonly ports = new Map<number, Port>();
  readonly intercepts: Intercept[] = [];
  gpaMap: Uint8Array | null = null;
  memory: SharedArrayBuffer | null = null;
  memoryView: DataView | null = null;
  memoryRegion: string | null = null;
  /** GPADL windows granted to the root: handle -> owning channel and pages. */
  readonly gpadls = new Map<number, { owner: number; pfns: number[] }>();
  /** Page -> channel whose GPADL covers it (a page may not serve two channels). */
  readonly gpadlPageOwner = new Map<number, number>();
  /** Pages covered by all GPADL windows (counted with repeats). */
  gpadlPages = 0;
  /** Connections this partition holds (keys of the hypervisor's connection table). */
  connectionCount = 0;
  /** Shared by the SynICs of all VPs: the partition's queued-message cap. */
  readonly messageBudget: MessageBudget = { queued: 0, max: MAX_QUEUED_MESSAGES_PER_PARTITION };
  suspended = false;
  /** The number of the partition's current suspension (VpRegionHeader.suspendAsked as this process wrote it; the guest maps that word too), 0: none. */
  suspendSeq = 0;
  cpuReserve = 0;
  cpuCap = 100;
  cpuWeight = 100;
  readonly createdAt = process.hrtime.bigint();
  /** The shared VP control region (null when VPs are not scheduled: private memory, or no scheduler). */
  vpRegion: SharedArrayBuffer | null = null;
  vpRegionName: string | null = null;
  vpI32: Int32Array | null = null;
  vpF64: Float64Array | null = null;
  /** hrtime at which the partition's true reference time was 0 (moved by a restore; clock faults apply on top). */
  refBaseNs = process.hrtime.bigint();
  /** Faults the hypervisor enforces (PartitionProperty.Fault*; 0: off). */
  readonly faults: PartitionFaults = { interruptDelayUs: 0, stalledVps: 0, clockOffsetUs: 0, clockSkewPpm: 0, clockSkewSinceNs: 0n };
  /** Interrupt notifications held back by the interrupt delay where there is no scheduler (private memory). */
  readonly delayedNotes = new Map<ReturnType<typeof setTimeout>, () => void>();
  /** Samples of summed VP run time, for the measured CPU percentage. */
  readonly cpuSamples: Array<{ at: number; runMs: number[] }> = [];

  constructor(
    readonly id: number,
    readonly parentId: number,
    public privileges: bigint,
    readonly memoryBytes: number,
    readonly name: string,
    /** What a hello must present for this partition (null: no hello is accepted, e.g. a root before its first token). */
    public token: string | null,
  ) {}

  get pageCount(): number {
    return this.memoryBytes / 4096;
  }
}
