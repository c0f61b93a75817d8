/**
 * Checking decoders for everything that enters the hypervisor, and for what its clients read back:
 *
 *   - `decodeHvClientMsg`: one frame on the hypervisor socket (hello, hypercall, control), from
 *     anyone who can connect, authenticated or not. msgpack is decoded once, then every field is
 *     checked for type and range; the hypercall `input` is checked to be plain data (maps, lists,
 *     numbers, strings, booleans, null, bytes, bigints; bounded depth and size) and the per-call
 *     field checks stay in the hypervisor, which knows each call's fields.
 *   - `decodeHvServerMsg`: one frame from the hypervisor, for `HvClient`.
 *   - the guest-writable records of the VP page that the scheduler thread reads: the I/O intercept
 *     record (`decodeIoInterceptRecord`) and the synthetic timers' period floor
 *     (`effectiveStimerPeriod`).
 *
 * A decoder returns a typed value or an error sentence; it never throws, and never calls a
 * method of a decoded value (a msgpack map can carry a `toString` that is not a function).
 */
import { decode, type HvClientMsg, type HvCtlArgs, type HvCtlOp, type HvServerMsg, type HvSetLpsArgs } from './wire.js';

/** Largest frame the hypervisor accepts (the socket drops bigger ones before they are read). */
export const HV_FRAME_MAX_BYTES = 1024 * 1024;
/** Longest token or ticket in a hello. */
export const HELLO_SECRET_MAX = 256;
export const HELLO_ROLE_MAX = 32;
export const HELLO_VM_MAX = 64;
/** Nesting and value-count bounds of a hypercall input (a 4096-page MapGpadl is ~4100 values). */
export const INPUT_MAX_DEPTH = 16;
export const INPUT_MAX_VALUES = 65536;
const HV_CTL_OPS: readonly HvCtlOp[] = ['shutdown', 'stats', 'ticket', 'setLps'];
/** The longest `setLps` (ms): a day, as faults.ts's FAULT_MAX_MS (an LP shrink without an end is refused). */
export const HV_SET_LPS_MAX_MS = 24 * 3600 * 1000;
/** The most logical processors a host may have (and so `setLps` may name). */
export const HV_MAX_LPS = 1024;
/** Linux pid_t is a signed 32-bit integer; 0 and negatives name process groups, never a process. */
const PID_MAX = 0x7fffffff;

export type HvClientDecoded = { ok: true; msg: HvClientMsg } | { ok: false; error: string; id?: number };
export type HvServerDecoded = { ok: true; msg: HvServerMsg } | { ok: false; error: string };

/** What a value is, for an error sentence, without calling anything on it. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'missing';
  switch (typeof v) {
    case 'number':
      return Number.isFinite(v) ? `the number ${v}` : `the non-finite number ${v}`;
    case 'string':
      return `a string of ${v.length} characters`;
    case 'boolean':
      return `the boolean ${v}`;
    case 'bigint':
      return 'a 64-bit integer';
    case 'object':
      if (Array.isArray(v)) return `a list of ${v.length} values`;
      if (v instanceof Uint8Array) return `${v.length} bytes`;
      return isPlainObject(v) ? 'a map' : `an object of type ${Object.prototype.toString.call(v).slice(8, -1)}`;
    default:
      return `a ${typeof v}`;
  }
}

/** A map as msgpack decodes one: an object whose prototype is Object.prototype (or null). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function isBytes(v: unknown): v is Uint8Array {
  // Buffer is a Uint8Array; other typed arrays (msgpackr extension 0x74) are not accepted.
  return v instanceof Uint8Array && (Object.getPrototypeOf(v) === Uint8Array.prototype || Buffer.isBuffer(v));
}

/**
 * Checks that `v` is plain data: null, booleans, numbers, bigints, strings, bytes, lists and maps,
 * at most `INPUT_MAX_DEPTH` deep and `INPUT_MAX_VALUES` values in all. Returns an error or null.
 */
export function checkPlainData(v: unknown, what = 'the input'): string | null {
  let values = 0;
  const walk = (x: unknown, depth: number, path: string): string | null => {
    if (++values > INPUT_MAX_VALUES) return `${what} holds more than ${INPUT_MAX_VALUES} values`;
    if (x === null || x === undefined) return null;
    const t = typeof x;
    if (t === 'boolean' || t === 'number' || t === 'bigint' || t === 'string') return null;
    if (t !== 'object') return `${path} is ${describeValue(x)}`;
    if (isBytes(x)) return null;
    if (depth >= INPUT_MAX_DEPTH) return `${what} is nested deeper than ${INPUT_MAX_DEPTH} levels`;
    if (Array.isArray(x)) {
      for (let i = 0; i < x.length; i++) {
        const e = walk(x[i], depth + 1, `${path}[${i}]`);
        if (e) return e;
      }
      return null;
    }
    if (!isPlainObject(x)) return `${path} is ${describeValue(x)}, not plain data`;
    for (const k of Object.keys(x)) {
      const e = walk(x[k], depth + 1, `${path}.${k.length > 32 ? `${k.slice(0, 32)}…` : k}`);
      if (e) return e;
    }
    return null;
  };
  return walk(v, 0, what);
}

const isUint = (v: unknown, max: number): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;

function fieldError(kind: string, name: string, v: unknown, want: string): string {
  return `${kind} field ${name} is ${describeValue(v)}, not ${want}`;
}

function unknownKeys(o: Record<string, unknown>, allowed: readonly string[], kind: string): string | null {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) return `${kind} has an unknown field ${JSON.stringify(k.length > 32 ? `${k.slice(0, 32)}…` : k)}`;
  }
  return null;
}

function optString(v: unknown, max: number): boolean {
  return typeof v === 'string' && v.length <= max;
}

/** Checks an already-decoded value as a hypervisor client message. */
export function checkHvClientMsg(v: unknown): HvClientDecoded {
  if (!isPlainObject(v)) return { ok: false, error: `a hypervisor message must be a map, not ${describeValue(v)}` };
  const k = v.k;
  if (k !== 'hello' && k !== 'hc' && k !== 'ctl') {
    return { ok: false, error: typeof k === 'string' ? `unknown message kind ${JSON.stringify(k.slice(0, 32))}` : `message field k is ${describeValue(k)}, not a kind` };
  }
  if (k === 'hello') {
    const bad = unknownKeys(v, ['k', 'partitionId', 'token', 'ticket', 'role', 'vm', 'pid'], 'hello');
    if (bad) return { ok: false, error: bad };
    const { partitionId, token, ticket, role, vm, pid } = v;
    if (typeof partitionId !== 'number' || !Number.isSafeInteger(partitionId)) return { ok: false, error: fieldError('hello', 'partitionId', partitionId, 'an integer') };
    if ((token === undefined) === (ticket === undefined)) return { ok: false, error: 'hello must carry exactly one of token and ticket' };
    if (token !== undefined && !optString(token, HELLO_SECRET_MAX)) return { ok: false, error: fieldError('hello', 'token', token, `a string of at most ${HELLO_SECRET_MAX} characters`) };
    if (ticket !== undefined && !optString(ticket, HELLO_SECRET_MAX)) return { ok: false, error: fieldError('hello', 'ticket', ticket, `a string of at most ${HELLO_SECRET_MAX} characters`) };
    if (!optString(role, HELLO_ROLE_MAX)) return { ok: false, error: fieldError('hello', 'role', role, `a string of at most ${HELLO_ROLE_MAX} characters`) };
    if (vm !== undefined && vm !== null && !optString(vm, HELLO_VM_MAX)) return { ok: false, error: fieldError('hello', 'vm', vm, `null or a string of at most ${HELLO_VM_MAX} characters`) };
    if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid < 1 || pid > PID_MAX) return { ok: false, error: fieldError('hello', 'pid', pid, 'a process id (1 or more)') };
    const base = { k: 'hello' as const, partitionId, role: role as string, vm: (vm ?? null) as string | null, pid };
    return { ok: true, msg: token !== undefined ? { ...base, token: token as string } : { ...base, ticket: ticket as string } };
  }
  const id = v.id;
  if (!isUint(id, Number.MAX_SAFE_INTEGER)) return { ok: false, error: fieldError(k === 'hc' ? 'hypercall' : 'control', 'id', id, 'a non-negative integer') };
  const fail = (error: string): HvClientDecoded => ({ ok: false, error, id });
  if (k === 'ctl') {
    const bad = unknownKeys(v, ['k', 'id', 'op', 'args'], 'control message');
    if (bad) return fail(bad);
    const op = v.op;
    if (typeof op !== 'string' || !(HV_CTL_OPS as readonly string[]).includes(op)) {
      return fail(typeof op === 'string' ? `unknown control op ${JSON.stringify(op.slice(0, 32))} (known: ${HV_CTL_OPS.join(', ')})` : fieldError('control', 'op', op, 'an op name'));
    }
    const args = decodeHvCtlArgs(op as HvCtlOp, v.args);
    if (typeof args === 'string') return fail(args);
    return { ok: true, msg: args === undefined ? { k: 'ctl', id, op: op as HvCtlOp } : { k: 'ctl', id, op: op as HvCtlOp, args } };
  }
  const bad = unknownKeys(v, ['k', 'id', 'code', 'fast', 'repCount', 'repStart', 'input'], 'hypercall');
  if (bad) return fail(bad);
  const { code, fast, repCount, repStart, input } = v;
  if (!isUint(code, 0xffff)) return fail(fieldError('hypercall', 'code', code, 'a call code 0-0xffff'));
  if (fast !== undefined && typeof fast !== 'boolean') return fail(fieldError('hypercall', 'fast', fast, 'a boolean'));
  if (repCount !== undefined && !isUint(repCount, 0xfff)) return fail(fieldError('hypercall', 'repCount', repCount, 'a rep count 0-4095'));
  if (repStart !== undefined && !isUint(repStart, 0xfff)) return fail(fieldError('hypercall', 'repStart', repStart, 'a rep start 0-4095'));
  if (!isPlainObject(input)) return fail(fieldError('hypercall', 'input', input, 'a map'));
  const err = checkPlainData(input);
  if (err) return fail(err);
  const msg: Extract<HvClientMsg, { k: 'hc' }> = { k: 'hc', id, code, input };
  if (fast !== undefined) msg.fast = fast;
  if (repCount !== undefined) msg.repCount = repCount;
  if (repStart !== undefined) msg.repStart = repStart;
  return { ok: true, msg };
}

/**
 * A fault id as the hypervisor holds it with an LP shrink: the nemesis's ids (faults.ts takes
 * FAULT_ID_RE from here, since faults.ts imports this module and not the other way round).
 */
export const HV_LP_SHRINK_FAULT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Checks a control op's arguments: `setLps` needs `{lps, forMs}` (whole numbers, lps 1..1024,
 * forMs 0..24 h; the hypervisor checks lps against its boot count) and may name the `fault` that
 * asks (an id as faults.ts makes them); every other op takes none (absent, null or an empty map).
 * Returns the arguments (undefined for none) or an error sentence. Never throws.
 */
export function decodeHvCtlArgs(op: HvCtlOp, args: unknown): HvCtlArgs | undefined | string {
  const none = args === undefined || args === null;
  if (op !== 'setLps') {
    if (none || (isPlainObject(args) && Object.keys(args).length === 0)) return undefined;
    return `control op ${op} takes no arguments, not ${describeValue(args)}`;
  }
  if (!isPlainObject(args)) return `control op setLps needs arguments {lps, forMs}, not ${describeValue(args)}`;
  const bad = unknownKeys(args, ['lps', 'forMs', 'fault'], 'setLps arguments');
  if (bad) return bad;
  const { lps, forMs, fault } = args;
  if (!isUint(lps, HV_MAX_LPS) || lps < 1) return fieldError('setLps', 'lps', lps, `a whole number of logical processors from 1 to ${HV_MAX_LPS}`);
  if (!isUint(forMs, HV_SET_LPS_MAX_MS)) return fieldError('setLps', 'forMs', forMs, `a whole number of ms from 0 to ${HV_SET_LPS_MAX_MS} (an LP shrink without an end is refused)`);
  if (fault !== undefined && fault !== null && (typeof fault !== 'string' || !HV_LP_SHRINK_FAULT_RE.test(fault))) return fieldError('setLps', 'fault', fault, 'a fault id (letters, digits, dots, dashes and underscores, at most 64)');
  const out: HvSetLpsArgs = typeof fault === 'string' ? { lps, forMs, fault } : { lps, forMs };
  return out.fault === undefined ? { lps: out.lps, forMs: out.forMs } : { lps: out.lps, forMs: out.forMs, fault: out.fault };
}

/** An LP shrink in force as the hypervisor's `stats` says it (`lpShrink`). */
export interface HvLpShrinkInfo {
  lps: number;
  remainingMs: number;
  /** The fault that asked for it (null: a setLps that named none). */
  fault: string | null;
}

/**
 * Checks the `lpShrink` of a hypervisor's `stats` answer, which a (restarted) root adopts as its
 * record of the host's LP fault: null for none, the shrink, or an error sentence for anything
 * else. `bootLps` bounds `lps` (a shrink leaves fewer than the host booted with). Never throws.
 */
export function decodeLpShrinkInfo(v: unknown, bootLps: number): HvLpShrinkInfo | null | string {
  if (v === null || v === undefined) return null;
  if (!isPlainObject(v)) return `lpShrink must be a map or null, not ${describeValue(v)}`;
  const bad = unknownKeys(v, ['lps', 'remainingMs', 'fault'], 'lpShrink');
  if (bad) return bad;
  const { lps, remainingMs, fault } = v;
  if (!isUint(lps, HV_MAX_LPS) || lps < 1 || lps >= bootLps) return fieldError('lpShrink', 'lps', lps, `a whole number of logical processors from 1 to ${bootLps - 1} (fewer than the host's ${bootLps})`);
  if (typeof remainingMs !== 'number' || !Number.isFinite(remainingMs) || remainingMs < 0 || remainingMs > HV_SET_LPS_MAX_MS) return fieldError('lpShrink', 'remainingMs', remainingMs, `ms from 0 to ${HV_SET_LPS_MAX_MS}`);
  if (fault !== undefined && fault !== null && (typeof fault !== 'string' || !HV_LP_SHRINK_FAULT_RE.test(fault))) return fieldError('lpShrink', 'fault', fault, 'a fault id or null');
  return { lps, remainingMs: Math.ceil(remainingMs), fault: typeof fault === 'string' ? fault : null };
}

function decodeFrame(bytes: unknown): { ok: true; value: unknown } | { ok: false; error: string } {
  if (!(bytes instanceof Uint8Array)) return { ok: false, error: 'a frame must be bytes' };
  if (bytes.length === 0) return { ok: false, error: 'the frame is empty' };
  if (bytes.length > HV_FRAME_MAX_BYTES) return { ok: false, error: `the frame of ${bytes.length} bytes exceeds ${HV_FRAME_MAX_BYTES}` };
  try {
    return { ok: true, value: decode(bytes) };
  } catch (e) {
    // msgpackr's own messages ("Unexpected end of MessagePack data", a RangeError for very deep
    // nesting) say enough; they never quote the data.
    const why = e instanceof Error && typeof e.message === 'string' ? e.message.slice(0, 120) : 'undecodable';
    return { ok: false, error: `the frame is not valid msgpack (${why})` };
  }
}

/** Decodes and checks one frame sent to the hypervisor. Never throws. */
export function decodeHvClientMsg(bytes: Uint8Array): HvClientDecoded {
  const f = decodeFrame(bytes);
  return f.ok ? checkHvClientMsg(f.value) : f;
}

/** Decodes and checks one frame sent by the hypervisor (HvClient's edge). Never throws. */
export function decodeHvServerMsg(bytes: Uint8Array): HvServerDecoded {
  const f = decodeFrame(bytes);
  if (!f.ok) return f;
  const v = f.value;
  if (!isPlainObject(v)) return { ok: false, error: `a hypervisor answer must be a map, not ${describeValue(v)}` };
  const int = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x);
  const str = (x: unknown): x is string => typeof x === 'string';
  const strOrNull = (x: unknown): boolean => x === null || x === undefined || typeof x === 'string';
  const bad = (what: string): HvServerDecoded => ({ ok: false, error: `hypervisor answer ${typeof v.k === 'string' ? v.k.slice(0, 16) : '?'}: ${what}` });
  switch (v.k) {
    case 'welcome':
      if (!int(v.partitionId) || !str(v.hostId) || (v.memoryMode !== 'shared' && v.memoryMode !== 'private') || !strOrNull(v.memoryRegion) || !int(v.memoryBytes) || !strOrNull(v.vpRegion) || !strOrNull(v.schedRegion)) return bad('malformed welcome');
      if ((v.hcRegion !== undefined || v.hcBell !== undefined) && (!str(v.hcRegion) || !str(v.hcBell))) return bad('malformed welcome: hcRegion and hcBell come together, as names');
      if (v.hcWake !== undefined) {
        const w = v.hcWake;
        if (v.hcRegion === undefined) return bad('malformed welcome: hcWake without hcRegion');
        if (!isPlainObject(w) || !int(w.pid) || w.pid < 1 || w.pid > 0x7fffffff || !int(w.fd) || w.fd < 0 || w.fd > 0x7fffffff) return bad('malformed welcome: hcWake is { pid, fd }, a pid and a descriptor number');
      }
      break;
    case 'reject':
    case 'bye':
      if (!str(v.reason)) return bad('no reason');
      break;
    case 'hr':
      if (!int(v.id) || !int(v.status) || !int(v.reps)) return bad('malformed result');
      break;
    case 'ctlr':
      if (!int(v.id)) return bad('no id');
      break;
    case 'bad':
      if ((v.id !== undefined && !int(v.id)) || !str(v.reason)) return bad('malformed');
      break;
    case 'sint':
      if (!int(v.vp) || !int(v.sint) || (v.slot !== undefined && !isBytes(v.slot)) || (v.flag !== undefined && !int(v.flag))) return bad('malformed interrupt');
      break;
    case 'rootmsg':
      if (!int(v.portId) || !int(v.messageType) || !isBytes(v.payload) || !int(v.sender)) return bad('malformed message');
      break;
    case 'rootevent':
      if (!int(v.portId) || !int(v.flagNumber) || !int(v.sender)) return bad('malformed event');
      break;
    case 'suspend':
      if (typeof v.suspended !== 'boolean') return bad('malformed');
      break;
    case 'intercept':
      for (const f2 of ['partitionId', 'vpIndex', 'messageType', 'port', 'access', 'size', 'value', 'rip']) if (!int(v[f2])) return bad(`field ${f2} is not an integer`);
      break;
    default:
      return { ok: false, error: `unknown hypervisor answer kind (${describeValue(v.k)})` };
  }
  return { ok: true, msg: v as HvServerMsg };
}

// ---- the guest-writable VP page, as the scheduler thread reads it ------------------------------

/**
 * Floor on a synthetic timer's period and on the spacing of any timer's expirations, in 100 ns
 * units: 1000 = 100 µs (at most 10,000 expirations a second per timer). Without it a guest that
 * writes a period of 1 (or 1e-300) into its VP page makes the scheduler thread fire and re-arm the
 * timer on every pass without ever sleeping. Hyper-V likewise clamps tiny timer periods.
 */
export const MIN_STIMER_PERIOD = 1000;

/** The period a periodic timer with count `count` runs at, or null when it cannot run (not finite, not > 0). */
export function effectiveStimerPeriod(count: number): number | null {
  if (typeof count !== 'number' || !Number.isFinite(count) || !(count > 0)) return null;
  return Math.max(MIN_STIMER_PERIOD, count);
}

export interface IoInterceptRecord {
  port: number;
  access: 1 | 2;
  size: 1 | 2 | 4;
  /** The value written (masked to the access size); 0 for a read. */
  value: number;
}

/**
 * Checks the I/O intercept record a VP wrote to its page (raw i32 words): a port 0-0xffff whose
 * access does not run past 0xffff, access 1 (read) or 2 (write), size 1, 2 or 4.
 */
export function decodeIoInterceptRecord(port: number, access: number, size: number, value: number): IoInterceptRecord | string {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) return `intercepted port ${port} is not 0-0xffff`;
  if (access !== 1 && access !== 2) return `intercept access ${access} is neither 1 (read) nor 2 (write)`;
  if (size !== 1 && size !== 2 && size !== 4) return `intercept size ${size} is not 1, 2 or 4`;
  if (port + size - 1 > 0xffff) return `a ${size}-byte access at port 0x${port.toString(16)} runs past 0xffff`;
  const mask = size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
  return { port, access, size, value: access === 2 ? ((value >>> 0) & mask) >>> 0 : 0 };
}

// ---- the partition's reference clock in the VP region's header page -----------------------------

/**
 * The clock-fault words of the VP region's header page (byte offsets), after
 * `VpRegionHeader.refBaseNs` (0x08), which holds the base with the clock offset already applied:
 *   - `seq` (i32): a sequence count, odd while the hypervisor rewrites the clock words;
 *   - `skewPpm` (i32): the skew in parts per million (0: none);
 *   - `skewSinceNs` (i64): host CLOCK_MONOTONIC ns at which the skew was set.
 * Reference time (100 ns units) = ((now - refBaseNs) + (now - skewSinceNs) x skewPpm / 10^6) / 100.
 * The hypervisor's main thread is the only writer (`publishReferenceClock`); its scheduler thread
 * and the guest's VP threads read them (`readReferenceTime`). The guest can write the page too:
 * a reader never spins on it (a few tries, then what it read) and clamps what it reads, so a
 * guest that scribbles here confuses only its own time.
 */
export const VpRegionClock = { seq: 0x10, skewPpm: 0x14, skewSinceNs: 0x18 } as const;
/** The header's refBaseNs, as an i64 index (VpRegionHeader.refBaseNs >> 3). */
const REF_BASE_I64 = 1;
const SKEW_MIN_PPM = -900_000;
const SKEW_MAX_PPM = 10_000_000;

/**
 * Reference time (100 ns units) at host time `nowNs` for a clock with base `baseNs` (offset
 * applied) and a skew of `skewPpm` since `skewSinceNs`. Time before the skew was set is not
 * skewed; a skew outside -900,000..10,000,000 ppm counts as its nearest bound. Negative before the
 * base (a guest that wrote its base into the future; the hypervisor refuses an offset that would
 * take it there), as `referenceTime` is: it keeps running, so a timer still comes due.
 */
export function referenceTimeAt(baseNs: bigint, skewPpm: number, skewSinceNs: bigint, nowNs: bigint): number {
  let ns = nowNs - baseNs;
  if (skewPpm !== 0 && Number.isInteger(skewPpm)) {
    const ppm = Math.min(SKEW_MAX_PPM, Math.max(SKEW_MIN_PPM, skewPpm));
    const since = nowNs - skewSinceNs;
    if (since > 0n) ns += (since * BigInt(ppm)) / 1_000_000n;
  }
  return Number(ns / 100n);
}

/** How fast reference time runs against the host clock under a skew (at least 0.1). */
export function referenceRate(skewPpm: number): number {
  return Number.isInteger(skewPpm) ? 1 + Math.min(SKEW_MAX_PPM, Math.max(SKEW_MIN_PPM, skewPpm)) / 1e6 : 1;
}

/** The clock words of a VP region's header page, as read at one moment. */
export interface ReferenceClockWords {
  baseNs: bigint;
  skewPpm: number;
  skewSinceNs: bigint;
}

/**
 * Reads a VP region's clock words consistently (a sequence lock of at most 4 tries: a guest that
 * keeps the count odd gets what the last try read). Never throws.
 */
export function readReferenceClock(i32: Int32Array, i64: BigInt64Array): ReferenceClockWords {
  let out: ReferenceClockWords = { baseNs: 0n, skewPpm: 0, skewSinceNs: 0n };
  for (let i = 0; i < 4; i++) {
    const s1 = Atomics.load(i32, VpRegionClock.seq >> 2);
    const baseNs = Atomics.load(i64, REF_BASE_I64);
    const skewPpm = Atomics.load(i32, VpRegionClock.skewPpm >> 2);
    const skewSinceNs = skewPpm !== 0 ? Atomics.load(i64, VpRegionClock.skewSinceNs >> 3) : 0n;
    out = { baseNs, skewPpm, skewSinceNs };
    if ((s1 & 1) === 0 && Atomics.load(i32, VpRegionClock.seq >> 2) === s1) break;
  }
  return out;
}

/** A partition's reference time read from its VP region (`region`: the whole region, or at least its header page). */
export class ReferenceClockView {
  readonly i32: Int32Array;
  readonly i64: BigInt64Array;
  constructor(region: SharedArrayBuffer) {
    this.i32 = new Int32Array(region, 0, 8);
    this.i64 = new BigInt64Array(region, 0, 4);
  }
  words(): ReferenceClockWords {
    return readReferenceClock(this.i32, this.i64);
  }
  /** Reference time (100 ns units) at host time `nowNs`. */
  now(nowNs: bigint = process.hrtime.bigint()): number {
    const w = this.words();
    return referenceTimeAt(w.baseNs, w.skewPpm, w.skewSinceNs, nowNs);
  }
  /** Reference time runs this many times as fast as the host clock. */
  rate(): number {
    return referenceRate(Atomics.load(this.i32, VpRegionClock.skewPpm >> 2));
  }
  /** Writes the clock words (the hypervisor's main thread; a local-mode guest on its private region). */
  publish(w: ReferenceClockWords): void {
    const seq = VpRegionClock.seq >> 2;
    const s = Atomics.load(this.i32, seq);
    Atomics.store(this.i32, seq, (s | 1) === s ? s + 2 : s + 1); // odd: being written
    Atomics.store(this.i64, REF_BASE_I64, w.baseNs);
    Atomics.store(this.i64, VpRegionClock.skewSinceNs >> 3, w.skewSinceNs);
    Atomics.store(this.i32, VpRegionClock.skewPpm >> 2, w.skewPpm);
    Atomics.add(this.i32, seq, 1); // even: done
  }
}
