/**
 * One msgpack codec for every ZeroMQ message of a host. `encode` copies out of msgpackr's shared
 * slab so the buffer can be handed to ZeroMQ (which may hold it after the call returns).
 * BigInts travel as 64-bit integers (privilege masks).
 */
import { Packr } from 'msgpackr';

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint', useBigInt64: true } as ConstructorParameters<typeof Packr>[0]);

export function encode(value: unknown): Buffer {
  return Buffer.from(packr.pack(value));
}
export function decode<T = unknown>(buf: Uint8Array): T {
  return packr.unpack(buf) as T;
}

/** Hypervisor socket messages. */
export type HvClientMsg =
  | { k: 'hello'; partitionId: number; token: string; role: string; vm: string | null; pid: number }
  | { k: 'hc'; id: number; code: number; fast?: boolean; repCount?: number; repStart?: number; input: Record<string, unknown> }
  | { k: 'ctl'; id: number; op: 'shutdown' | 'stats' };
export type HvServerMsg =
  | {
    k: 'welcome'; partitionId: number; hostId: string; memoryMode: 'shared' | 'private'; memoryRegion: string | null; memoryBytes: number;
    /** The partition's VP control region and the host's scheduler doorbell (null: VPs run unscheduled). */
    vpRegion?: string | null; schedRegion?: string | null;
  }
  | { k: 'reject'; reason: string }
  | { k: 'hr'; id: number; status: number; reps: number; output: unknown }
  | { k: 'ctlr'; id: number; result: unknown }
  /** A SynIC interrupt for a VP. In private-memory mode it carries what the hypervisor wrote. */
  | { k: 'sint'; vp: number; sint: number; slot?: Uint8Array; flag?: number }
  /** A message for a port owned by the root (the root has no SynIC pages of its own in hvlab). */
  | { k: 'rootmsg'; portId: number; messageType: number; payload: Uint8Array; sender: number }
  | { k: 'rootevent'; portId: number; flagNumber: number; sender: number }
  | { k: 'suspend'; suspended: boolean }
  /**
   * An intercepted I/O port access (X64IoPortIntercept), sent to the session that installed the
   * intercept (the VMWP). The VP stays suspended until that session writes the result and clears
   * InterceptSuspend with SetVpRegisters.
   */
  | { k: 'intercept'; partitionId: number; vpIndex: number; messageType: number; port: number; access: number; size: number; value: number; rip: number }
  | { k: 'bye'; reason: string };
