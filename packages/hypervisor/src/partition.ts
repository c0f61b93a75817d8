/**
 * Partitions and virtual processors as the hypervisor holds them: the TLFS lifecycle
 * (Created -> Initialized -> Finalized -> Deleted), the privilege mask, scheduling properties,
 * the GPA map (one byte of access flags per 4 KiB page) and, per VP, registers and a SynIC.
 */
import { PartitionState, type VpRegisterName } from '@hvlab/protocol';
import { SynIc } from './synic.js';

export const GPA_READ = 1;
export const GPA_WRITE = 2;
export const GPA_EXECUTE = 4;

export class VirtualProcessor {
  readonly registers = new Map<VpRegisterName, number>();
  /** Stopped on an intercepted access until the parent clears InterceptSuspend. */
  interceptPending = false;
  constructor(readonly index: number, readonly synic: SynIc) {}
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
  suspended = false;
  cpuReserve = 0;
  cpuCap = 100;
  cpuWeight = 100;
  readonly createdAt = process.hrtime.bigint();
  /** The shared VP control region (null when VPs are not scheduled: private memory, or no scheduler). */
  vpRegion: SharedArrayBuffer | null = null;
  vpRegionName: string | null = null;
  vpI32: Int32Array | null = null;
  vpF64: Float64Array | null = null;
  /** hrtime at which the partition's reference time was 0 (moved by a restore). */
  refBaseNs = process.hrtime.bigint();
  /** Samples of summed VP run time, for the measured CPU percentage. */
  readonly cpuSamples: Array<{ at: number; runMs: number[] }> = [];

  constructor(
    readonly id: number,
    readonly parentId: number,
    public privileges: bigint,
    readonly memoryBytes: number,
    readonly name: string,
    readonly token: string,
  ) {}

  get pageCount(): number {
    return this.memoryBytes / 4096;
  }
}
