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
import { createRequire } from 'node:module';
import type { Packr as PackrType } from 'msgpackr';

/*
 * msgpackr is loaded through its CommonJS build, with its native string extractor
 * (msgpackr-extract) turned off: every process of a host imports this module at start-up, and
 * measured here the ESM entry with the native extractor took 34 ms to load against 10.5 ms for
 * this. The extractor only speeds up decoding many long strings; hvlab's messages are small.
 * The environment variable is msgpackr's own switch, read once when it loads; a value the user
 * set is kept.
 */
process.env.MSGPACKR_NATIVE_ACCELERATION_DISABLED ??= 'true';
const { Packr } = createRequire(import.meta.url)('msgpackr') as { Packr: typeof PackrType };

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint', useBigInt64: true, structuredClone: false } as ConstructorParameters<typeof Packr>[0]);

export function encode(value: unknown): Buffer {
  return Buffer.from(packr.pack(value));
}
/**
 * Containers nested deeper than this are refused before msgpackr sees the frame. msgpackr reads
 * recursively, so without a bound whether a deep frame decodes (or fails with a RangeError)
 * depends on the stack left at the call and on which of its frames V8 has optimised: the same
 * bytes could decode in one process and not in another. Checked inputs are far shallower
 * (hypercall inputs at most INPUT_MAX_DEPTH, 16).
 */
export const MSGPACK_MAX_DEPTH = 64;

/** msgpackr's extensions that read the value after them (Error, Set, RegExp): each nests one level. */
const READING_EXTENSIONS = new Set([0x65, 0x73, 0x78]);
/** msgpackr's record definitions: a frame may define records and then nest them one byte a level. */
const RECORD_EXTENSION = 0x72;
/**
 * msgpackr's bundled strings: the extension reads the value after it and then jumps to strings
 * further on, so the bytes after that value are not one value any more, and msgpackr does not
 * refuse them as trailing bytes. A frame that began with one passed the scan at its sixth byte
 * and hid whatever followed (an adversarial probe nested a value 20,000 deep behind it). hvlab's
 * encoder never writes it (bundleStrings is off).
 */
const BUNDLE_EXTENSION = 0x62;

/**
 * Why msgpackr must not see `buf`, or null: values nested deeper than `max`, record definitions
 * (which nest without showing it), bundled strings, or bytes after the top-level value. Found
 * without recursion: one pass over the tokens, string, binary and extension bodies skipped by
 * their lengths, an extension that reads the value after it counted as a level. A frame that ends
 * early is not judged here: msgpackr reports that.
 */
export function msgpackRefusal(buf: Uint8Array, max = MSGPACK_MAX_DEPTH): string | null {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // Values still to read in each open container, innermost last.
  const open: number[] = [];
  let p = 0;
  const n = buf.length;
  while (p < n) {
    const t = buf[p++]!;
    let items = -1; // a container's values, or -1 for a scalar
    let skip = 0;
    if (t <= 0x7f || t >= 0xe0 || (t >= 0xc0 && t <= 0xc3)) skip = 0;
    else if (t <= 0x8f) items = (t & 0x0f) * 2;
    else if (t <= 0x9f) items = t & 0x0f;
    else if (t <= 0xbf) skip = t & 0x1f;
    else {
      const need = (k: number): boolean => p + k <= n;
      switch (t) {
        case 0xc4: case 0xd9: if (!need(1)) return null; skip = 1 + buf[p]!; break;
        case 0xc5: case 0xda: if (!need(2)) return null; skip = 2 + v.getUint16(p); break;
        case 0xc6: case 0xdb: if (!need(4)) return null; skip = 4 + v.getUint32(p); break;
        case 0xc7: if (!need(1)) return null; skip = 2 + buf[p]!; break;
        case 0xc8: if (!need(2)) return null; skip = 3 + v.getUint16(p); break;
        case 0xc9: if (!need(4)) return null; skip = 5 + v.getUint32(p); break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: if (!need(2)) return null; items = v.getUint16(p); skip = 2; break;
        case 0xdd: if (!need(4)) return null; items = v.getUint32(p); skip = 4; break;
        case 0xde: if (!need(2)) return null; items = v.getUint16(p) * 2; skip = 2; break;
        case 0xdf: if (!need(4)) return null; items = v.getUint32(p) * 2; skip = 4; break;
        default: return null; // 0xc1 (never used): msgpackr refuses it
      }
    }
    if (t >= 0xc7 && t <= 0xc9 || t >= 0xd4 && t <= 0xd8) {
      // The extension's type byte: after the length for ext 8/16/32, first for fixext.
      const at = t === 0xc7 ? p + 1 : t === 0xc8 ? p + 2 : t === 0xc9 ? p + 4 : p;
      if (at >= n) return null;
      const type = buf[at]!;
      if (type === RECORD_EXTENSION) return 'record definitions';
      if (type === BUNDLE_EXTENSION) return 'bundled strings (msgpackr\'s extension 0x62)';
      if (READING_EXTENSIONS.has(type)) items = 1;
    }
    p += skip;
    // This value fills a slot of the container it is in.
    if (open.length > 0) open[open.length - 1]!--;
    if (items > 0) {
      open.push(items);
      if (open.length > max) return `nested deeper than ${max} levels`;
    }
    while (open.length > 0 && open[open.length - 1] === 0) open.pop();
    // The top-level value is complete: a frame is one value, and nothing after it.
    if (open.length === 0 && items <= 0) return p < n ? `${n - p} bytes after the value` : null;
  }
  return null;
}

/** Whether msgpackr must not see `buf` (msgpackRefusal). */
export function msgpackTooDeep(buf: Uint8Array, max = MSGPACK_MAX_DEPTH): boolean {
  return msgpackRefusal(buf, max) !== null;
}

export function decode<T = unknown>(buf: Uint8Array): T {
  const refused = msgpackRefusal(buf);
  if (refused !== null) throw new RangeError(`msgpack refused before decoding: ${refused}`);
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
/**
 * Control ops (root sessions only): `stats`, `ticket`, `shutdown`, and `setLps` (args
 * `HvSetLpsArgs`), which makes the scheduler use only the first `lps` logical processors for
 * `forMs` ms, after which the hypervisor restores the host's boot count by itself.
 */
export type HvCtlOp = 'shutdown' | 'stats' | 'ticket' | 'setLps';
/**
 * `setLps`'s arguments: `lps` 1..the boot count (the boot count restores at once), `forMs` 0..24 h
 * (0 restores at once), and `fault`, the id of the fault that asks (optional): the hypervisor holds
 * it with the shrink and says it in `stats`, so a root that restarts while the shrink lasts learns
 * which fault it is.
 */
export interface HvSetLpsArgs {
  lps: number;
  forMs: number;
  fault?: string;
}
/** A control op's arguments, per op (checked by `decodeHvCtlArgs`); ops without arguments take none. */
export type HvCtlArgs = Record<string, number | string>;
export type HvClientMsg =
  | HvHello
  | { k: 'hc'; id: number; code: number; fast?: boolean; repCount?: number; repStart?: number; input: Record<string, unknown> }
  | { k: 'ctl'; id: number; op: HvCtlOp; args?: HvCtlArgs };
export type HvServerMsg =
  | {
    k: 'welcome'; partitionId: number; hostId: string; memoryMode: 'shared' | 'private'; memoryRegion: string | null; memoryBytes: number;
    /** The partition's VP control region and the host's scheduler doorbell (null: VPs run unscheduled). */
    vpRegion?: string | null; schedRegion?: string | null;
    /** The session's hypercall-page region and the host's hypercall doorbell region (see hcpage.ts); absent: calls use the socket. */
    hcRegion?: string; hcBell?: string;
    /** The session's wake descriptor (with hcRegion): the hypervisor's pid and the descriptor's number there, for the shm addon's watchWakeFd (HcWord.wakeBy). */
    hcWake?: { pid: number; fd: number };
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
