/**
 * One msgpack codec for every ZeroMQ message of a host. `encode` copies out of msgpackr's shared
 * slab so the buffer can be handed to ZeroMQ (which may hold it after the call returns).
 * BigInts travel as 64-bit integers (privilege masks).
 *
 * `decode` is not a checker: a decoded value can be anything msgpack and msgpackr's built-in
 * extensions can express (null, Date, Set, RegExp, Error, typed arrays, bigints of any size).
 * Structured-clone references (extensions 0x69/0x70) are turned off, so no decoded value has a
 * cycle. Every edge passes the value to a checking decoder (for the hypervisor socket:
 * `hvwire.ts`) before anything reads it.
 */
import { Packr } from 'msgpackr';

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint', useBigInt64: true, structuredClone: false } as ConstructorParameters<typeof Packr>[0]);

export function encode(value: unknown): Buffer {
  return Buffer.from(packr.pack(value));
}
export function decode<T = unknown>(buf: Uint8Array): T {
  return packr.unpack(buf) as T;
}

/**
 * Hypervisor socket messages (client to hypervisor). A hello proves its partition with either the
 * partition's token or, for the root partition only, a one-time ticket (exactly one of the two).
 */
export type HvHello = { k: 'hello'; partitionId: number; role: string; vm: string | null; pid: number } & (
  | { token: string; ticket?: undefined }
  | { ticket: string; token?: undefined }
);
export type HvCtlOp = 'shutdown' | 'stats' | 'ticket';
export type HvClientMsg =
  | HvHello
  | { k: 'hc'; id: number; code: number; fast?: boolean; repCount?: number; repStart?: number; input: Record<string, unknown> }
  | { k: 'ctl'; id: number; op: HvCtlOp };
export type HvServerMsg =
  | {
    k: 'welcome'; partitionId: number; hostId: string; memoryMode: 'shared' | 'private'; memoryRegion: string | null; memoryBytes: number;
    /** The partition's VP control region and the host's scheduler doorbell (null: VPs run unscheduled). */
    vpRegion?: string | null; schedRegion?: string | null;
    /** The session's hypercall-page region and the host's hypercall doorbell region (see hcpage.ts); absent: calls use the socket. */
    hcRegion?: string; hcBell?: string;
  }
  | { k: 'reject'; reason: string }
  | { k: 'hr'; id: number; status: number; reps: number; output: unknown }
  | { k: 'ctlr'; id: number; result: unknown }
  /** The answer to a frame that did not decode: with the frame's id when one could be read. */
  | { k: 'bad'; id?: number; reason: string }
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
