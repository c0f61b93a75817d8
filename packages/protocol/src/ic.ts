/**
 * Integration services (REFERENCE.md "Integration services"): the framing every service shares,
 * carried as VMBus DATA_INBAND payloads; each service's message bodies are in its own device-class
 * file (heartbeat.ts, shutdown.ts, timesync.ts, kvp.ts).
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
import { viewOf, checkUint, requireBytes } from './ic-bytes.js';

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

/** Byte ranges [start, end) of a packet payload. */
export type ByteRanges = Array<[number, number]>;

/**
 * The bytes of an IC message that its receiver decodes (a VMBus corruption fault flips only
 * these: flipping the padding nothing reads would change nothing): the pipe header's msgsize, the
 * IC header but its reserved bytes, and the body, or only the ranges `body` names of it (KVP's
 * 2560 bytes of key and value are mostly padding). Never throws: a short or malformed message is
 * all of it, a body cut to what is there.
 */
export function icDecodedRanges(bytes: Uint8Array, body?: (body: Uint8Array) => ByteRanges): ByteRanges {
  if (bytes.length < IcHdr.body) return [[0, bytes.length]];
  const size = Math.min(viewOf(bytes).getUint16(IcHdr.size, true), bytes.length - IcHdr.body);
  const inBody = body ? body(bytes.subarray(IcHdr.body, IcHdr.body + size)) : [[0, size] as [number, number]];
  return [[Pipe.msgsize, IcHdr.reserved], ...inBody.map(([a, b]): [number, number] => [IcHdr.body + a, IcHdr.body + b])];
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
