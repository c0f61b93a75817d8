/**
 * Integration services (REFERENCE.md "Integration services"): the framing and the message bodies
 * of the shutdown, time-sync, heartbeat and KVP services, carried as VMBus DATA_INBAND payloads.
 * A message is an 8-byte VM-pipe header {flags u32, msgsize u32}, a 20-byte IC header laid out as
 * Linux's struct icmsg_hdr (framework version at 0, message type at 4, message version at 6,
 * message size at 10, status at 12, transaction id at 16, flags at 17, 2 reserved bytes), then the
 * body. The host sends every request; the guest answers in the same buffer with flags
 * transaction|response.
 *
 * Deviations from Hyper-V:
 * - The pipe header's flags are written as 1 (VmPipeMessageData) and not checked when decoding,
 *   as Linux ignores them; msgsize may exceed the IC message (the guest echoes the host's).
 * - KVP uses a layout of hvlab's own modelled on Linux's hv_kvp_msg: operation u8, pool u8,
 *   pad u16, index u32, value_type u32 (always 1, REG_SZ), key_size u32, value_size u32, key
 *   512 bytes, value 2048 bytes (2580 in all). Strings are UTF-8 and sizes count bytes without a
 *   terminator; Hyper-V sends UTF-16 with the NUL counted.
 * - The shutdown display message is UTF-8 (Hyper-V: a byte string), at most 2048 bytes.
 * - Negotiation answers with the first common version in the host's order (Linux picks the
 *   newest common one; the host lists newest first, so they agree in practice).
 */

export const IcGuid = {
  shutdown: '0e0b6031-5213-4934-818b-38d90ced39db',
  timesync: '9527e630-d0ae-497b-adce-e80ab0175caf',
  heartbeat: '57164f39-9115-4e78-ab55-382f3bd5422d',
  kvp: 'a9a0f4e7-5a45-4d96-b827-8a841e8c03e6',
  vss: '35fa2e29-ea23-4236-96ae-3a6ebacba440',
} as const;
export const DeviceClassGuid = {
  scsi: 'ba6163d9-04a1-4d29-b605-72e2ffb1dc7f',
  nic: 'f8615163-df3e-46c5-913f-f2d2f965ed0e',
} as const;

export const IcMessageType = { Negotiate: 0, Heartbeat: 1, Kvp: 2, Shutdown: 3, TimeSync: 4, Vss: 5 } as const;
export const IcFlags = { Transaction: 1, Request: 2, Response: 4 } as const;
const IC_FLAGS_KNOWN = IcFlags.Transaction | IcFlags.Request | IcFlags.Response;
export const IcStatus = {
  OK: 0,
  Fail: 0x80004005,
  NotFound: 0x80070002,
  NotSupported: 0x80070032,
  InvalidArg: 0x80070057,
  NoMoreItems: 0x80070103,
} as const;

export const PIPE_HEADER_BYTES = 8;
export const IC_HEADER_BYTES = 20;
/** VMPIPE_PROTOCOL_MESSAGE_TYPE VmPipeMessageData: the pipe header flags of every IC message. */
export const VMBUS_PIPE_FLAG_DATA = 1;
/** Linux refuses negotiate messages listing more versions than this (each kind). */
export const IC_MAX_NEGOTIATE_VERSIONS = 100;

// Byte offsets from the start of the packet payload, pipe header included.
const Pipe = { flags: 0, msgsize: 4 } as const;
const IcHdr = {
  frameworkMajor: 8, frameworkMinor: 10, type: 12, messageMajor: 14, messageMinor: 16, size: 18, status: 20,
  transactionId: 24, flags: 25, reserved: 26, body: 28,
} as const;

export interface IcVersion { major: number; minor: number }
export interface IcHeader { framework: IcVersion; message: IcVersion; type: number; status: number; transactionId: number; flags: number }

/** An IC message or body that does not parse. Thrown by the IC decoders and nothing else. */
export class IcError extends Error {
  override name = 'IcError';
}

function viewOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
function checkUint(what: string, value: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} ${String(value)} is not an integer in 0..${max}.`);
  }
  return value;
}
function checkU64(what: string, value: bigint): bigint {
  if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
    throw new RangeError(`${what} ${String(value)} is not a bigint in 0..2^64-1.`);
  }
  return value;
}
function checkInt8(what: string, value: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < -128 || value > 127) {
    throw new RangeError(`${what} ${String(value)} is not an integer in -128..127.`);
  }
  return value;
}
function requireBytes(what: string, b: Uint8Array, size: number): DataView {
  if (!(b instanceof Uint8Array)) throw new IcError(`${what} must be a Uint8Array, not ${typeof b}.`);
  if (b.length < size) throw new IcError(`${what} is ${b.length} bytes, shorter than its ${size}-byte layout.`);
  return viewOf(b);
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** UTF-8 bytes of `text`; RangeError when it has a lone surrogate (UTF-8 cannot carry it). */
function encodeText(what: string, text: string, max: number): Uint8Array {
  if (typeof text !== 'string') throw new TypeError(`${what} is not a string.`);
  if (LONE_SURROGATE.test(text)) throw new RangeError(`${what} ${JSON.stringify(text)} has a lone surrogate, which UTF-8 cannot carry.`);
  const bytes = utf8.encode(text);
  if (bytes.length > max) throw new RangeError(`${what} is ${bytes.length} bytes in UTF-8, more than ${max}.`);
  return bytes;
}
function decodeText(what: string, bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new IcError(`${what} (${bytes.length} bytes) is not valid UTF-8.`);
  }
}

// ---------------------------------------------------------------------------------------------
// Framing

function checkVersion(what: string, v: IcVersion): void {
  if (typeof v !== 'object' || v === null) throw new TypeError(`${what} is not a version.`);
  checkUint(`${what}.major`, v.major, 0xffff);
  checkUint(`${what}.minor`, v.minor, 0xffff);
}

/** Pipe header (flags 1, msgsize 20 + body) + IC header (size = body length) + body. Not padded to 8. */
export function encodeIcMessage(h: IcHeader, body: Uint8Array): Uint8Array {
  checkVersion('IC header framework version', h.framework);
  checkVersion('IC header message version', h.message);
  checkUint('IC header type', h.type, IcMessageType.Vss);
  checkUint('IC header status', h.status, 0xffffffff);
  checkUint('IC header transactionId', h.transactionId, 0xff);
  checkUint('IC header flags', h.flags, 0xff);
  if ((h.flags & ~IC_FLAGS_KNOWN) !== 0) throw new RangeError(`IC header flags 0x${h.flags.toString(16)} has bits other than 0-2.`);
  if (!(body instanceof Uint8Array)) throw new TypeError(`IC message body is not a Uint8Array.`);
  checkUint('IC message body length', body.length, 0xffff);
  const out = new Uint8Array(IcHdr.body + body.length);
  const v = viewOf(out);
  v.setUint32(Pipe.flags, VMBUS_PIPE_FLAG_DATA, true);
  v.setUint32(Pipe.msgsize, IC_HEADER_BYTES + body.length, true);
  v.setUint16(IcHdr.frameworkMajor, h.framework.major, true);
  v.setUint16(IcHdr.frameworkMinor, h.framework.minor, true);
  v.setUint16(IcHdr.type, h.type, true);
  v.setUint16(IcHdr.messageMajor, h.message.major, true);
  v.setUint16(IcHdr.messageMinor, h.message.minor, true);
  v.setUint16(IcHdr.size, body.length, true);
  v.setUint32(IcHdr.status, h.status, true);
  v.setUint8(IcHdr.transactionId, h.transactionId);
  v.setUint8(IcHdr.flags, h.flags);
  out.set(body, IcHdr.body);
  return out;
}

/**
 * Parses an untrusted packet payload (possibly followed by padding): msgsize and the IC message
 * size must fit in what is there, the type must be 0..5 and only flag bits 0-2 may be set.
 * Returns the header and a copy of exactly the body bytes. Throws IcError only.
 */
export function decodeIcMessage(bytes: Uint8Array): { header: IcHeader; body: Uint8Array } {
  const v = requireBytes('IC message', bytes, IcHdr.body);
  const msgsize = v.getUint32(Pipe.msgsize, true);
  const after = bytes.length - PIPE_HEADER_BYTES;
  if (msgsize < IC_HEADER_BYTES) throw new IcError(`IC pipe header msgsize ${msgsize} is shorter than the ${IC_HEADER_BYTES}-byte IC header.`);
  if (msgsize > after) throw new IcError(`IC pipe header msgsize ${msgsize} exceeds the ${after} bytes after the pipe header.`);
  const size = v.getUint16(IcHdr.size, true);
  if (IC_HEADER_BYTES + size > msgsize) {
    throw new IcError(`IC header message size ${size} does not fit in pipe msgsize ${msgsize} after the ${IC_HEADER_BYTES}-byte IC header.`);
  }
  const type = v.getUint16(IcHdr.type, true);
  if (type > IcMessageType.Vss) throw new IcError(`IC header message type ${type} is unknown.`);
  const flags = v.getUint8(IcHdr.flags);
  if ((flags & ~IC_FLAGS_KNOWN) !== 0) throw new IcError(`IC header flags 0x${flags.toString(16)} has bits other than 0-2.`);
  return {
    header: {
      framework: { major: v.getUint16(IcHdr.frameworkMajor, true), minor: v.getUint16(IcHdr.frameworkMinor, true) },
      message: { major: v.getUint16(IcHdr.messageMajor, true), minor: v.getUint16(IcHdr.messageMinor, true) },
      type,
      status: v.getUint32(IcHdr.status, true),
      transactionId: v.getUint8(IcHdr.transactionId),
      flags,
    },
    body: bytes.slice(IcHdr.body, IcHdr.body + size),
  };
}

// ---------------------------------------------------------------------------------------------
// Negotiate

const NegotiateAt = { frameworkCount: 0, messageCount: 2, reserved: 4, versions: 8 } as const;
export interface Negotiate { framework: IcVersion[]; message: IcVersion[] }

/** icframe_vercnt, icmsg_vercnt, reserved, then the framework versions and the message versions. */
export function encodeNegotiate(n: Negotiate): Uint8Array {
  if (!Array.isArray(n.framework) || !Array.isArray(n.message)) throw new TypeError(`Negotiate framework and message must be arrays.`);
  checkUint('Negotiate framework version count', n.framework.length, IC_MAX_NEGOTIATE_VERSIONS);
  checkUint('Negotiate message version count', n.message.length, IC_MAX_NEGOTIATE_VERSIONS);
  const all = [...n.framework, ...n.message];
  all.forEach((ver, i) => checkVersion(`Negotiate version[${i}]`, ver));
  const out = new Uint8Array(NegotiateAt.versions + 4 * all.length);
  const v = viewOf(out);
  v.setUint16(NegotiateAt.frameworkCount, n.framework.length, true);
  v.setUint16(NegotiateAt.messageCount, n.message.length, true);
  all.forEach((ver, i) => {
    v.setUint16(NegotiateAt.versions + 4 * i, ver.major, true);
    v.setUint16(NegotiateAt.versions + 4 * i + 2, ver.minor, true);
  });
  return out;
}

export function decodeNegotiate(b: Uint8Array): Negotiate {
  const v = requireBytes('Negotiate body', b, NegotiateAt.versions);
  const fc = v.getUint16(NegotiateAt.frameworkCount, true);
  const mc = v.getUint16(NegotiateAt.messageCount, true);
  if (fc > IC_MAX_NEGOTIATE_VERSIONS) throw new IcError(`Negotiate icframe_vercnt ${fc} is more than ${IC_MAX_NEGOTIATE_VERSIONS}.`);
  if (mc > IC_MAX_NEGOTIATE_VERSIONS) throw new IcError(`Negotiate icmsg_vercnt ${mc} is more than ${IC_MAX_NEGOTIATE_VERSIONS}.`);
  const need = NegotiateAt.versions + 4 * (fc + mc);
  if (b.length < need) throw new IcError(`Negotiate body is ${b.length} bytes; ${fc} + ${mc} versions need ${need}.`);
  const read = (i: number): IcVersion => ({
    major: v.getUint16(NegotiateAt.versions + 4 * i, true),
    minor: v.getUint16(NegotiateAt.versions + 4 * i + 2, true),
  });
  const framework: IcVersion[] = [];
  const message: IcVersion[] = [];
  for (let i = 0; i < fc; i++) framework.push(read(i));
  for (let i = 0; i < mc; i++) message.push(read(fc + i));
  return { framework, message };
}

/** First entry of `offered` (host order) that `supported` contains, for framework and message separately; null if either has none. */
export function negotiateVersions(offered: Negotiate, supported: Negotiate): { framework: IcVersion; message: IcVersion } | null {
  const pick = (from: IcVersion[], among: IcVersion[]): IcVersion | null => {
    const hit = from.find((o) => among.some((s) => s.major === o.major && s.minor === o.minor));
    return hit ? { major: hit.major, minor: hit.minor } : null;
  };
  const framework = pick(offered.framework, supported.framework);
  const message = pick(offered.message, supported.message);
  return framework && message ? { framework, message } : null;
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

const HeartbeatAt = { sequence: 0, reserved: 8, size: 40 } as const;

export function encodeHeartbeat(sequence: bigint): Uint8Array {
  const out = new Uint8Array(HeartbeatAt.size);
  viewOf(out).setBigUint64(HeartbeatAt.sequence, checkU64('Heartbeat sequence', sequence), true);
  return out;
}
export function decodeHeartbeat(b: Uint8Array): { sequence: bigint } {
  const v = requireBytes('Heartbeat body', b, HeartbeatAt.size);
  return { sequence: v.getBigUint64(HeartbeatAt.sequence, true) };
}

// ---------------------------------------------------------------------------------------------
// Shutdown

const ShutdownAt = { reason: 0, timeoutSeconds: 4, flags: 8, message: 12 } as const;
/** Shutdown flags: 0 shut down, 2 reboot, bit 0 force. */
export const ShutdownFlags = { Shutdown: 0, Force: 1, Reboot: 2 } as const;
const SHUTDOWN_FLAGS_KNOWN = ShutdownFlags.Force | ShutdownFlags.Reboot;
export const SHUTDOWN_MESSAGE_MAX_BYTES = 2048;
export interface ShutdownRequest { reason: number; timeoutSeconds: number; flags: number; message: string }

/** reason, timeout, flags, then the message in UTF-8 with a NUL when there is room for one. */
export function encodeShutdown(s: ShutdownRequest): Uint8Array {
  checkUint('Shutdown reason', s.reason, 0xffffffff);
  checkUint('Shutdown timeoutSeconds', s.timeoutSeconds, 0xffffffff);
  checkUint('Shutdown flags', s.flags, 0xffffffff);
  if ((s.flags & ~SHUTDOWN_FLAGS_KNOWN) !== 0) throw new RangeError(`Shutdown flags 0x${s.flags.toString(16)} has bits other than 0-1.`);
  const text = encodeText('Shutdown message', s.message, SHUTDOWN_MESSAGE_MAX_BYTES);
  if (text.includes(0)) throw new RangeError(`Shutdown message ${JSON.stringify(s.message)} contains a NUL character.`);
  const nul = text.length > 0 && text.length < SHUTDOWN_MESSAGE_MAX_BYTES ? 1 : 0;
  const out = new Uint8Array(ShutdownAt.message + text.length + nul);
  const v = viewOf(out);
  v.setUint32(ShutdownAt.reason, s.reason, true);
  v.setUint32(ShutdownAt.timeoutSeconds, s.timeoutSeconds, true);
  v.setUint32(ShutdownAt.flags, s.flags, true);
  out.set(text, ShutdownAt.message);
  return out;
}
export function decodeShutdown(b: Uint8Array): ShutdownRequest {
  const v = requireBytes('Shutdown body', b, ShutdownAt.message);
  const flags = v.getUint32(ShutdownAt.flags, true);
  if ((flags & ~SHUTDOWN_FLAGS_KNOWN) !== 0) throw new IcError(`Shutdown flags 0x${flags.toString(16)} has bits other than 0-1.`);
  const area = b.subarray(ShutdownAt.message, ShutdownAt.message + SHUTDOWN_MESSAGE_MAX_BYTES);
  const end = area.indexOf(0);
  return {
    reason: v.getUint32(ShutdownAt.reason, true),
    timeoutSeconds: v.getUint32(ShutdownAt.timeoutSeconds, true),
    flags,
    message: decodeText('Shutdown message', end < 0 ? area : area.subarray(0, end)),
  };
}

// ---------------------------------------------------------------------------------------------
// Time sync (version 4 "ref data")

const TimeSyncAt = { parentTime: 0, referenceTime: 8, flags: 16, leapFlags: 17, stratum: 18, reserved: 19, size: 22 } as const;
export const TimeSyncFlags = { Probe: 0, Sync: 1, Sample: 2 } as const;
export interface TimeSample { parentTime: bigint; referenceTime: bigint; flags: number; leapFlags: number; stratum: number }

export function encodeTimeSync(t: TimeSample): Uint8Array {
  const out = new Uint8Array(TimeSyncAt.size);
  const v = viewOf(out);
  v.setBigUint64(TimeSyncAt.parentTime, checkU64('Time sync parentTime', t.parentTime), true);
  v.setBigUint64(TimeSyncAt.referenceTime, checkU64('Time sync referenceTime', t.referenceTime), true);
  v.setUint8(TimeSyncAt.flags, checkUint('Time sync flags', t.flags, TimeSyncFlags.Sample));
  v.setInt8(TimeSyncAt.leapFlags, checkInt8('Time sync leapFlags', t.leapFlags));
  v.setInt8(TimeSyncAt.stratum, checkInt8('Time sync stratum', t.stratum));
  return out;
}
export function decodeTimeSync(b: Uint8Array): TimeSample {
  const v = requireBytes('Time sync body', b, TimeSyncAt.size);
  const flags = v.getUint8(TimeSyncAt.flags);
  if (flags > TimeSyncFlags.Sample) throw new IcError(`Time sync flags ${flags} is none of probe (0), sync (1), sample (2).`);
  return {
    parentTime: v.getBigUint64(TimeSyncAt.parentTime, true),
    referenceTime: v.getBigUint64(TimeSyncAt.referenceTime, true),
    flags,
    leapFlags: v.getInt8(TimeSyncAt.leapFlags),
    stratum: v.getInt8(TimeSyncAt.stratum),
  };
}

/** Milliseconds from 1601-01-01 to 1970-01-01 UTC. */
const EPOCH_1601_MS = 11644473600000;
const TICKS_PER_MS = 10000n;

/** A Date.now()-style time (ms since 1970, fractions kept to 100 ns) as 100 ns units since 1601. */
export function msToFiletime(ms: number): bigint {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) throw new RangeError(`Time ${String(ms)} ms is not a finite number.`);
  const whole = Math.floor(ms);
  const ticks = BigInt(whole + EPOCH_1601_MS) * TICKS_PER_MS + BigInt(Math.round((ms - whole) * 10000));
  if (ticks < 0n) throw new RangeError(`Time ${ms} ms is before 1601.`);
  return ticks;
}
/** 100 ns units since 1601 as ms since 1970 (with a fractional part). */
export function filetimeToMs(ft: bigint): number {
  let q = ft / TICKS_PER_MS;
  let r = ft % TICKS_PER_MS;
  if (r < 0n) {
    q -= 1n;
    r += TICKS_PER_MS;
  }
  return Number(q) - EPOCH_1601_MS + Number(r) / 10000;
}

// ---------------------------------------------------------------------------------------------
// KVP (hvlab layout)

export const KvpOperation = { Get: 0, Set: 1, Delete: 2, Enumerate: 3 } as const;
export const KvpPool = { External: 0, Guest: 1, Auto: 2, AutoExternal: 3, AutoInternal: 4 } as const;
export const KVP_MAX_KEY_BYTES = 512;
export const KVP_MAX_VALUE_BYTES = 2048;
export const KVP_MESSAGE_BYTES = 2580;
/** REG_SZ: the only value type hvlab carries. */
export const KVP_VALUE_TYPE_STRING = 1;
const KvpAt = {
  operation: 0, pool: 1, pad: 2, index: 4, valueType: 8, keySize: 12, valueSize: 16, key: 20, value: 20 + KVP_MAX_KEY_BYTES,
  size: KVP_MESSAGE_BYTES,
} as const;
export interface KvpMessage { operation: number; pool: number; index: number; key: string; value: string }

export function encodeKvp(m: KvpMessage): Uint8Array {
  checkUint('KVP operation', m.operation, KvpOperation.Enumerate);
  checkUint('KVP pool', m.pool, KvpPool.AutoInternal);
  checkUint('KVP index', m.index, 0xffffffff);
  const key = encodeText('KVP key', m.key, KVP_MAX_KEY_BYTES);
  const value = encodeText('KVP value', m.value, KVP_MAX_VALUE_BYTES);
  const out = new Uint8Array(KvpAt.size);
  const v = viewOf(out);
  v.setUint8(KvpAt.operation, m.operation);
  v.setUint8(KvpAt.pool, m.pool);
  v.setUint32(KvpAt.index, m.index, true);
  v.setUint32(KvpAt.valueType, KVP_VALUE_TYPE_STRING, true);
  v.setUint32(KvpAt.keySize, key.length, true);
  v.setUint32(KvpAt.valueSize, value.length, true);
  out.set(key, KvpAt.key);
  out.set(value, KvpAt.value);
  return out;
}
export function decodeKvp(b: Uint8Array): KvpMessage {
  const v = requireBytes('KVP body', b, KvpAt.size);
  const operation = v.getUint8(KvpAt.operation);
  if (operation > KvpOperation.Enumerate) throw new IcError(`KVP operation ${operation} is unknown.`);
  const pool = v.getUint8(KvpAt.pool);
  if (pool > KvpPool.AutoInternal) throw new IcError(`KVP pool ${pool} is unknown.`);
  const valueType = v.getUint32(KvpAt.valueType, true);
  if (valueType !== KVP_VALUE_TYPE_STRING) throw new IcError(`KVP value_type ${valueType} is not REG_SZ (1).`);
  const keySize = v.getUint32(KvpAt.keySize, true);
  if (keySize > KVP_MAX_KEY_BYTES) throw new IcError(`KVP key_size ${keySize} is more than ${KVP_MAX_KEY_BYTES}.`);
  const valueSize = v.getUint32(KvpAt.valueSize, true);
  if (valueSize > KVP_MAX_VALUE_BYTES) throw new IcError(`KVP value_size ${valueSize} is more than ${KVP_MAX_VALUE_BYTES}.`);
  return {
    operation,
    pool,
    index: v.getUint32(KvpAt.index, true),
    key: decodeText('KVP key', b.subarray(KvpAt.key, KvpAt.key + keySize)),
    value: decodeText('KVP value', b.subarray(KvpAt.value, KvpAt.value + valueSize)),
  };
}
