/**
 * VMBus channel-management messages (REFERENCE.md "VMBus"): the messages that offer, open, close
 * and rescind channels, describe GPADLs and negotiate the protocol version. They travel as SynIC
 * message payloads (at most 240 bytes, SynIC message type 1) with the layouts of Linux's
 * hyperv.h: an 8-byte header {msgtype u32, padding u32}, then packed little-endian fields. GUIDs
 * are in Windows mixed-endian byte order.
 *
 * Deviations from Hyper-V:
 * - A GPADL has exactly one range (Linux never sends more), its byte_offset is below one page, and
 *   GPADL_HEADER carries min(total pfns, 26) pfns, the rest following in GPADL_BODY messages — the
 *   way Linux splits them. Hyper-V is laxer about the split; hvlab rejects any other one.
 * - INITIATE_CONTACT's 8 bytes after target_vcpu are always read as {msg_sint, msg_vtl, 6 reserved}
 *   (the ≥ 5.0 meaning). Older versions put interrupt_page there; hvlab does not use it.
 * - Reserved bits of monitor_allocated and is_dedicated_interrupt are ignored, as Linux's
 *   bitfields do; version_supported must be 0 or 1.
 * - The codec checks structure only: relid ranges (1..MAX_CHANNELS) are the bus's business.
 */
export const ChannelMessageType = {
  OfferChannel: 1,
  RescindChannelOffer: 2,
  RequestOffers: 3,
  AllOffersDelivered: 4,
  OpenChannel: 5,
  OpenChannelResult: 6,
  CloseChannel: 7,
  GpadlHeader: 8,
  GpadlBody: 9,
  GpadlCreated: 10,
  GpadlTeardown: 11,
  GpadlTorndown: 12,
  RelidReleased: 13,
  InitiateContact: 14,
  VersionResponse: 15,
  Unload: 16,
  UnloadResponse: 17,
  ModifyChannel: 22,
} as const;
export type ChannelMessageName = keyof typeof ChannelMessageType;

/** The names hyperv.h gives the messages, for error text. */
const WIRE_NAME: Record<ChannelMessageName, string> = {
  OfferChannel: 'OFFERCHANNEL',
  RescindChannelOffer: 'RESCIND_CHANNELOFFER',
  RequestOffers: 'REQUESTOFFERS',
  AllOffersDelivered: 'ALLOFFERS_DELIVERED',
  OpenChannel: 'OPENCHANNEL',
  OpenChannelResult: 'OPENCHANNEL_RESULT',
  CloseChannel: 'CLOSECHANNEL',
  GpadlHeader: 'GPADL_HEADER',
  GpadlBody: 'GPADL_BODY',
  GpadlCreated: 'GPADL_CREATED',
  GpadlTeardown: 'GPADL_TEARDOWN',
  GpadlTorndown: 'GPADL_TORNDOWN',
  RelidReleased: 'RELID_RELEASED',
  InitiateContact: 'INITIATE_CONTACT',
  VersionResponse: 'VERSION_RESPONSE',
  Unload: 'UNLOAD',
  UnloadResponse: 'UNLOAD_RESPONSE',
  ModifyChannel: 'MODIFYCHANNEL',
};
const messageNames = new Map<number, ChannelMessageName>(
  Object.entries(ChannelMessageType).map(([k, v]) => [v, k as ChannelMessageName]),
);

/** VMBus protocol versions, major << 16 | minor. */
export const VmbusVersion = {
  WS2008: 0x0000000d,
  WIN7: 0x00010001,
  WIN8: 0x00020004,
  WIN8_1: 0x00030000,
  WIN10: 0x00040000,
  V5_0: 0x00050000,
  V5_1: 0x00050001,
  V5_2: 0x00050002,
  V5_3: 0x00050003,
  V6_0: 0x00060000,
} as const;
/** The order in which a guest tries versions in INITIATE_CONTACT. */
export const VMBUS_VERSIONS_NEWEST_FIRST: readonly number[] = Object.freeze([
  VmbusVersion.V6_0,
  VmbusVersion.V5_3,
  VmbusVersion.V5_2,
  VmbusVersion.V5_1,
  VmbusVersion.V5_0,
  VmbusVersion.WIN10,
  VmbusVersion.WIN8_1,
  VmbusVersion.WIN8,
  VmbusVersion.WIN7,
  VmbusVersion.WS2008,
]);
const versionNames = new Map<number, string>(
  Object.entries(VmbusVersion).map(([k, v]) => {
    const dotted = `${v >>> 16}.${v & 0xffff}`;
    return [v, k.startsWith('V') ? dotted : `${k} (${dotted})`];
  }),
);
/** "6.0", "5.3", "WIN10 (4.0)", "WS2008 (0.13)"; an unknown version as "0x00070000". */
export function vmbusVersionName(v: number): string {
  return versionNames.get(v) ?? `0x${(v >>> 0).toString(16).padStart(8, '0')}`;
}

export const VMBUS_MESSAGE_CONNECTION_ID = 1;
export const VMBUS_MESSAGE_CONNECTION_ID_4 = 4;
/** The connection id INITIATE_CONTACT is posted to when requesting `version`. */
export function initiateContactConnectionId(version: number): number {
  return version >= VmbusVersion.V5_0 ? VMBUS_MESSAGE_CONNECTION_ID_4 : VMBUS_MESSAGE_CONNECTION_ID;
}
/** SynIC message type of channel messages (Linux posts them with message type 1). */
export const VMBUS_CHANNEL_MESSAGE_TYPE = 1;
export const MAX_CHANNELS = 2047;
/** hvlab's own chn_flags bit: this channel's packets travel over the remote (ZeroMQ) transport. */
export const OFFER_FLAG_REMOTE_TRANSPORT = 0x8000;
export const MAX_CHANNEL_MESSAGE_BYTES = 240;
export const CHANNEL_MESSAGE_HEADER_BYTES = 8;
export const OFFER_USER_DEFINED_BYTES = 120;
export const OPEN_USER_DATA_BYTES = 120;
export const GPADL_HEADER_MAX_PFNS = 26;
export const GPADL_BODY_MAX_PFNS = 28;
/** range_buflen is a u16: 8 + 8 * pfns <= 65535. */
export const GPADL_MAX_PFNS = 8190;
const PFN_LIMIT = 2 ** 52;
/** GPADL pages are 4 KiB. */
const PAGE = 4096;

// Byte offsets from the start of the message (header included), one table per struct.
const Header = { msgtype: 0x00, padding: 0x04, size: 8 } as const;
const Offer = {
  interfaceType: 8, interfaceInstance: 24, interruptLatency: 40, reserved2: 48, flags: 56, mmioMegabytes: 58,
  userDefined: 60, subChannelIndex: 180, reserved3: 182, childRelid: 184, monitorId: 188, monitorAllocated: 189,
  dedicatedInterrupt: 190, connectionId: 192, size: 196,
} as const;
/** RESCIND_CHANNELOFFER, CLOSECHANNEL, RELID_RELEASED. */
const RelidOnly = { childRelid: 8, size: 12 } as const;
const Open = { childRelid: 8, openId: 12, ringGpadlHandle: 16, targetVp: 20, downstreamRingPageOffset: 24, userData: 28, size: 148 } as const;
const OpenResult = { childRelid: 8, openId: 12, status: 16, size: 20 } as const;
/** One gpa_range follows rangecount: {byte_count u32, byte_offset u32, pfn u64[]}. */
const GpadlHeaderAt = { childRelid: 8, gpadl: 12, rangeBuflen: 16, rangeCount: 18, byteCount: 20, byteOffset: 24, pfns: 28 } as const;
const GpadlBodyAt = { msgNumber: 8, gpadl: 12, pfns: 16 } as const;
const GpadlCreatedAt = { childRelid: 8, gpadl: 12, status: 16, size: 20 } as const;
const GpadlTeardownAt = { childRelid: 8, gpadl: 12, size: 16 } as const;
const GpadlTorndownAt = { gpadl: 8, size: 12 } as const;
const Initiate = { versionRequested: 8, targetVcpu: 12, msgSint: 16, msgVtl: 17, reserved: 18, monitorPage1: 24, monitorPage2: 32, size: 40 } as const;
const VersionResp = { versionSupported: 8, connectionState: 9, padding: 10, messageConnectionId: 12, size: 16 } as const;
const Modify = { childRelid: 8, targetVp: 12, size: 16 } as const;
/** gpa_range header: byte_count + byte_offset. */
const RANGE_HEADER_BYTES = 8;

export type ChannelMessage =
  | {
      type: 'OfferChannel'; interfaceType: string; interfaceInstance: string; flags: number; mmioMegabytes: number;
      userDefined: Uint8Array; subChannelIndex: number; childRelid: number; monitorId: number; monitorAllocated: boolean;
      dedicatedInterrupt: boolean; connectionId: number;
    }
  | { type: 'RescindChannelOffer'; childRelid: number }
  | { type: 'RequestOffers' }
  | { type: 'AllOffersDelivered' }
  | { type: 'Unload' }
  | { type: 'UnloadResponse' }
  | { type: 'OpenChannel'; childRelid: number; openId: number; ringGpadlHandle: number; targetVp: number; downstreamRingPageOffset: number; userData: Uint8Array }
  | { type: 'OpenChannelResult'; childRelid: number; openId: number; status: number }
  | { type: 'CloseChannel'; childRelid: number }
  /** `pfns` are those carried in this message: min(totalPfns, GPADL_HEADER_MAX_PFNS). */
  | { type: 'GpadlHeader'; childRelid: number; gpadl: number; byteCount: number; byteOffset: number; totalPfns: number; pfns: number[] }
  | { type: 'GpadlBody'; msgNumber: number; gpadl: number; pfns: number[] }
  | { type: 'GpadlCreated'; childRelid: number; gpadl: number; status: number }
  | { type: 'GpadlTeardown'; childRelid: number; gpadl: number }
  | { type: 'GpadlTorndown'; gpadl: number }
  | { type: 'RelidReleased'; childRelid: number }
  | { type: 'InitiateContact'; versionRequested: number; targetVcpu: number; msgSint: number; msgVtl: number; monitorPage1: bigint; monitorPage2: bigint }
  | { type: 'VersionResponse'; versionSupported: boolean; connectionState: number; messageConnectionId: number }
  | { type: 'ModifyChannel'; childRelid: number; targetVp: number };

/** A channel message that does not parse. Thrown by decodeChannelMessage and nothing else. */
export class ChannelMessageError extends Error {
  override name = 'ChannelMessageError';
}

// ---------------------------------------------------------------------------------------------
// GUIDs

const GUID_TEXT = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i;
export const GUID_BYTES = 16;

/** 16 bytes in Windows order: Data1 u32, Data2 u16, Data3 u16 little-endian, then 8 bytes as written. Braces are allowed. */
export function guidToBytes(text: string): Uint8Array {
  const bare = typeof text === 'string' && text.startsWith('{') && text.endsWith('}') ? text.slice(1, -1) : text;
  const m = typeof bare === 'string' ? GUID_TEXT.exec(bare) : null;
  if (!m) throw new RangeError(`GUID text ${JSON.stringify(String(text))} is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.`);
  const out = new Uint8Array(GUID_BYTES);
  const v = new DataView(out.buffer);
  v.setUint32(0, parseInt(m[1]!, 16), true);
  v.setUint16(4, parseInt(m[2]!, 16), true);
  v.setUint16(6, parseInt(m[3]!, 16), true);
  const tail = m[4]! + m[5]!;
  for (let i = 0; i < 8; i++) out[8 + i] = parseInt(tail.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The lowercase 8-4-4-4-12 text of the 16 bytes at `offset`. */
export function guidFromBytes(bytes: Uint8Array, offset = 0): string {
  if (!(bytes instanceof Uint8Array) || !Number.isInteger(offset) || offset < 0 || offset + GUID_BYTES > bytes.length) {
    throw new RangeError(`GUID offset ${offset} leaves fewer than 16 bytes in a buffer of ${bytes instanceof Uint8Array ? bytes.length : 'no'} bytes.`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, GUID_BYTES);
  const hex = (n: number, w: number): string => n.toString(16).padStart(w, '0');
  let tail = '';
  for (let i = 8; i < 16; i++) tail += hex(v.getUint8(i), 2);
  return `${hex(v.getUint32(0, true), 8)}-${hex(v.getUint16(4, true), 4)}-${hex(v.getUint16(6, true), 4)}-${tail.slice(0, 4)}-${tail.slice(4)}`;
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** Writes checked fields into one message; `what` names the message in errors. */
class FieldWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  constructor(readonly what: string, size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  private uint(field: string, value: number, max: number): number {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`${this.what} ${field} ${String(value)} is not an integer in 0..${max}.`);
    }
    return value;
  }
  u8(at: number, field: string, value: number): void {
    this.view.setUint8(at, this.uint(field, value, 0xff));
  }
  u16(at: number, field: string, value: number): void {
    this.view.setUint16(at, this.uint(field, value, 0xffff), true);
  }
  u32(at: number, field: string, value: number): void {
    this.view.setUint32(at, this.uint(field, value, 0xffffffff), true);
  }
  u64(at: number, field: string, value: bigint): void {
    if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
      throw new RangeError(`${this.what} ${field} ${String(value)} is not a bigint in 0..2^64-1.`);
    }
    this.view.setBigUint64(at, value, true);
  }
  flag(at: number, value: boolean): void {
    this.view.setUint8(at, value ? 1 : 0);
  }
  pfns(at: number, field: string, pfns: readonly number[]): void {
    pfns.forEach((pfn, i) => {
      checkPfn(this.what, `${field}[${i}]`, pfn);
      this.view.setUint32(at + 8 * i, pfn % 2 ** 32, true);
      this.view.setUint32(at + 8 * i + 4, Math.floor(pfn / 2 ** 32), true);
    });
  }
  guid(at: number, field: string, text: string): void {
    let b: Uint8Array;
    try {
      b = guidToBytes(text);
    } catch {
      throw new RangeError(`${this.what} ${field} ${JSON.stringify(String(text))} is not GUID text.`);
    }
    this.bytes.set(b, at);
  }
  data(at: number, field: string, data: Uint8Array, max: number): void {
    if (!(data instanceof Uint8Array)) throw new TypeError(`${this.what} ${field} is not a Uint8Array.`);
    if (data.length > max) throw new RangeError(`${this.what} ${field} is ${data.length} bytes, more than ${max}.`);
    this.bytes.set(data, at);
  }
}

function checkPfn(what: string, field: string, pfn: number): void {
  if (typeof pfn !== 'number' || !Number.isInteger(pfn) || pfn < 0 || pfn >= PFN_LIMIT) {
    throw new RangeError(`${what} ${field} ${String(pfn)} is not a page number in 0..2^52-1.`);
  }
}

/** Pages spanned by a range of `byteCount` bytes starting `byteOffset` into its first page. */
function rangePages(byteOffset: number, byteCount: number): number {
  return Math.ceil((byteOffset + byteCount) / PAGE);
}

function begin(m: ChannelMessage, size: number): FieldWriter {
  const what = WIRE_NAME[m.type];
  if (size > MAX_CHANNEL_MESSAGE_BYTES) {
    throw new RangeError(`${what} would be ${size} bytes, more than the ${MAX_CHANNEL_MESSAGE_BYTES}-byte SynIC payload.`);
  }
  const w = new FieldWriter(what, size);
  w.u32(Header.msgtype, 'msgtype', ChannelMessageType[m.type]);
  return w;
}

/** The message's bytes, exactly as long as its layout. Throws RangeError for a field out of range. */
export function encodeChannelMessage(m: ChannelMessage): Uint8Array {
  if (typeof m !== 'object' || m === null || typeof m.type !== 'string' || !Object.hasOwn(ChannelMessageType, m.type)) {
    const t = typeof m === 'object' && m !== null ? String((m as { type?: unknown }).type) : String(m);
    throw new RangeError(`Channel message type ${JSON.stringify(t)} is unknown.`);
  }
  switch (m.type) {
    case 'OfferChannel': {
      const w = begin(m, Offer.size);
      w.guid(Offer.interfaceType, 'interfaceType', m.interfaceType);
      w.guid(Offer.interfaceInstance, 'interfaceInstance', m.interfaceInstance);
      w.u16(Offer.flags, 'flags', m.flags);
      w.u16(Offer.mmioMegabytes, 'mmioMegabytes', m.mmioMegabytes);
      w.data(Offer.userDefined, 'userDefined', m.userDefined, OFFER_USER_DEFINED_BYTES);
      w.u16(Offer.subChannelIndex, 'subChannelIndex', m.subChannelIndex);
      w.u32(Offer.childRelid, 'childRelid', m.childRelid);
      w.u8(Offer.monitorId, 'monitorId', m.monitorId);
      w.flag(Offer.monitorAllocated, m.monitorAllocated);
      w.flag(Offer.dedicatedInterrupt, m.dedicatedInterrupt);
      w.u32(Offer.connectionId, 'connectionId', m.connectionId);
      return w.bytes;
    }
    case 'RescindChannelOffer':
    case 'CloseChannel':
    case 'RelidReleased': {
      const w = begin(m, RelidOnly.size);
      w.u32(RelidOnly.childRelid, 'childRelid', m.childRelid);
      return w.bytes;
    }
    case 'RequestOffers':
    case 'AllOffersDelivered':
    case 'Unload':
    case 'UnloadResponse':
      return begin(m, Header.size).bytes;
    case 'OpenChannel': {
      const w = begin(m, Open.size);
      w.u32(Open.childRelid, 'childRelid', m.childRelid);
      w.u32(Open.openId, 'openId', m.openId);
      w.u32(Open.ringGpadlHandle, 'ringGpadlHandle', m.ringGpadlHandle);
      w.u32(Open.targetVp, 'targetVp', m.targetVp);
      w.u32(Open.downstreamRingPageOffset, 'downstreamRingPageOffset', m.downstreamRingPageOffset);
      w.data(Open.userData, 'userData', m.userData, OPEN_USER_DATA_BYTES);
      return w.bytes;
    }
    case 'OpenChannelResult': {
      const w = begin(m, OpenResult.size);
      w.u32(OpenResult.childRelid, 'childRelid', m.childRelid);
      w.u32(OpenResult.openId, 'openId', m.openId);
      w.u32(OpenResult.status, 'status', m.status);
      return w.bytes;
    }
    case 'GpadlHeader': {
      if (!Array.isArray(m.pfns)) throw new TypeError(`GPADL_HEADER pfns is not an array.`);
      const w = begin(m, GpadlHeaderAt.pfns + 8 * m.pfns.length);
      w.u32(GpadlHeaderAt.childRelid, 'childRelid', m.childRelid);
      w.u32(GpadlHeaderAt.gpadl, 'gpadl', m.gpadl);
      w.u32(GpadlHeaderAt.byteCount, 'byteCount', m.byteCount);
      w.u32(GpadlHeaderAt.byteOffset, 'byteOffset', m.byteOffset);
      if (m.byteCount === 0) throw new RangeError(`GPADL_HEADER byteCount 0 describes an empty range.`);
      if (m.byteOffset >= PAGE) throw new RangeError(`GPADL_HEADER byteOffset ${m.byteOffset} is not within the first page.`);
      const total = rangePages(m.byteOffset, m.byteCount);
      if (m.totalPfns !== total) {
        throw new RangeError(`GPADL_HEADER totalPfns ${String(m.totalPfns)} does not match byteOffset ${m.byteOffset} + byteCount ${m.byteCount} (${total} pages).`);
      }
      if (total > GPADL_MAX_PFNS) throw new RangeError(`GPADL_HEADER totalPfns ${total} is more than range_buflen can describe (${GPADL_MAX_PFNS}).`);
      const here = Math.min(total, GPADL_HEADER_MAX_PFNS);
      if (m.pfns.length !== here) {
        throw new RangeError(`GPADL_HEADER pfns has ${m.pfns.length} entries; a range of ${total} pages carries ${here} in the header.`);
      }
      w.u16(GpadlHeaderAt.rangeBuflen, 'range_buflen', RANGE_HEADER_BYTES + 8 * total);
      w.u16(GpadlHeaderAt.rangeCount, 'rangecount', 1);
      w.pfns(GpadlHeaderAt.pfns, 'pfns', m.pfns);
      return w.bytes;
    }
    case 'GpadlBody': {
      if (!Array.isArray(m.pfns)) throw new TypeError(`GPADL_BODY pfns is not an array.`);
      if (m.pfns.length === 0) throw new RangeError(`GPADL_BODY pfns is empty; a body carries at least one page.`);
      const w = begin(m, GpadlBodyAt.pfns + 8 * m.pfns.length);
      w.u32(GpadlBodyAt.msgNumber, 'msgNumber', m.msgNumber);
      w.u32(GpadlBodyAt.gpadl, 'gpadl', m.gpadl);
      w.pfns(GpadlBodyAt.pfns, 'pfns', m.pfns);
      return w.bytes;
    }
    case 'GpadlCreated': {
      const w = begin(m, GpadlCreatedAt.size);
      w.u32(GpadlCreatedAt.childRelid, 'childRelid', m.childRelid);
      w.u32(GpadlCreatedAt.gpadl, 'gpadl', m.gpadl);
      w.u32(GpadlCreatedAt.status, 'status', m.status);
      return w.bytes;
    }
    case 'GpadlTeardown': {
      const w = begin(m, GpadlTeardownAt.size);
      w.u32(GpadlTeardownAt.childRelid, 'childRelid', m.childRelid);
      w.u32(GpadlTeardownAt.gpadl, 'gpadl', m.gpadl);
      return w.bytes;
    }
    case 'GpadlTorndown': {
      const w = begin(m, GpadlTorndownAt.size);
      w.u32(GpadlTorndownAt.gpadl, 'gpadl', m.gpadl);
      return w.bytes;
    }
    case 'InitiateContact': {
      const w = begin(m, Initiate.size);
      w.u32(Initiate.versionRequested, 'versionRequested', m.versionRequested);
      w.u32(Initiate.targetVcpu, 'targetVcpu', m.targetVcpu);
      w.u8(Initiate.msgSint, 'msgSint', m.msgSint);
      w.u8(Initiate.msgVtl, 'msgVtl', m.msgVtl);
      w.u64(Initiate.monitorPage1, 'monitorPage1', m.monitorPage1);
      w.u64(Initiate.monitorPage2, 'monitorPage2', m.monitorPage2);
      return w.bytes;
    }
    case 'VersionResponse': {
      const w = begin(m, VersionResp.size);
      w.flag(VersionResp.versionSupported, m.versionSupported);
      w.u8(VersionResp.connectionState, 'connectionState', m.connectionState);
      w.u32(VersionResp.messageConnectionId, 'messageConnectionId', m.messageConnectionId);
      return w.bytes;
    }
    case 'ModifyChannel': {
      const w = begin(m, Modify.size);
      w.u32(Modify.childRelid, 'childRelid', m.childRelid);
      w.u32(Modify.targetVp, 'targetVp', m.targetVp);
      return w.bytes;
    }
  }
}

/**
 * The GPADL_HEADER and then the GPADL_BODY messages (msgnumber from 1) that describe one
 * single-range GPADL of `pfns` pages with byte_offset 0 and byte_count pfns.length * 4096.
 */
export function gpadlMessages(childRelid: number, gpadl: number, pfns: readonly number[]): ChannelMessage[] {
  if (!Array.isArray(pfns) || pfns.length === 0 || pfns.length > GPADL_MAX_PFNS) {
    throw new RangeError(`A GPADL of ${Array.isArray(pfns) ? pfns.length : String(pfns)} pages is outside 1..${GPADL_MAX_PFNS}.`);
  }
  pfns.forEach((pfn, i) => checkPfn('GPADL', `pfns[${i}]`, pfn));
  const head = Math.min(pfns.length, GPADL_HEADER_MAX_PFNS);
  const out: ChannelMessage[] = [
    { type: 'GpadlHeader', childRelid, gpadl, byteCount: pfns.length * PAGE, byteOffset: 0, totalPfns: pfns.length, pfns: pfns.slice(0, head) },
  ];
  for (let at = head, n = 1; at < pfns.length; at += GPADL_BODY_MAX_PFNS, n++) {
    out.push({ type: 'GpadlBody', msgNumber: n, gpadl, pfns: pfns.slice(at, at + GPADL_BODY_MAX_PFNS) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Reads fields of one untrusted message; every failure is a ChannelMessageError. */
class FieldReader {
  private readonly view: DataView;
  constructor(readonly what: string, readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  fail(text: string): never {
    throw new ChannelMessageError(`${this.what} ${text}`);
  }
  need(size: number): void {
    if (this.bytes.length < size) this.fail(`is ${this.bytes.length} bytes, shorter than its ${size}-byte layout.`);
  }
  u8(at: number): number {
    return this.view.getUint8(at);
  }
  u16(at: number): number {
    return this.view.getUint16(at, true);
  }
  u32(at: number): number {
    return this.view.getUint32(at, true);
  }
  u64(at: number): bigint {
    return this.view.getBigUint64(at, true);
  }
  guid(at: number): string {
    return guidFromBytes(this.bytes, at);
  }
  copy(at: number, length: number): Uint8Array {
    return this.bytes.slice(at, at + length);
  }
  pfns(at: number, count: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < count; i++) {
      const lo = this.u32(at + 8 * i);
      const hi = this.u32(at + 8 * i + 4);
      if (hi >= PFN_LIMIT / 2 ** 32) {
        this.fail(`pfn[${i}] 0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)} is not below 2^52.`);
      }
      out.push(hi * 2 ** 32 + lo);
    }
    return out;
  }
}

/**
 * Parses untrusted bytes (one SynIC message payload). Throws ChannelMessageError, and nothing
 * else, for anything that is not a well-formed message. Bytes after a fixed-size layout are
 * ignored; the variable-length GPADL messages must be exactly as long as their pfns.
 */
export function decodeChannelMessage(bytes: Uint8Array): ChannelMessage {
  if (!(bytes instanceof Uint8Array)) throw new ChannelMessageError(`A channel message must be a Uint8Array, not ${typeof bytes}.`);
  if (bytes.length < Header.size) {
    throw new ChannelMessageError(`A channel message of ${bytes.length} bytes is shorter than its ${Header.size}-byte header.`);
  }
  if (bytes.length > MAX_CHANNEL_MESSAGE_BYTES) {
    throw new ChannelMessageError(`A channel message of ${bytes.length} bytes is longer than the ${MAX_CHANNEL_MESSAGE_BYTES}-byte SynIC payload.`);
  }
  const code = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(Header.msgtype, true);
  const type = messageNames.get(code);
  if (type === undefined) throw new ChannelMessageError(`Channel message msgtype ${code} is unknown.`);
  const r = new FieldReader(WIRE_NAME[type], bytes);
  switch (type) {
    case 'OfferChannel':
      r.need(Offer.size);
      return {
        type,
        interfaceType: r.guid(Offer.interfaceType),
        interfaceInstance: r.guid(Offer.interfaceInstance),
        flags: r.u16(Offer.flags),
        mmioMegabytes: r.u16(Offer.mmioMegabytes),
        userDefined: r.copy(Offer.userDefined, OFFER_USER_DEFINED_BYTES),
        subChannelIndex: r.u16(Offer.subChannelIndex),
        childRelid: r.u32(Offer.childRelid),
        monitorId: r.u8(Offer.monitorId),
        monitorAllocated: (r.u8(Offer.monitorAllocated) & 1) !== 0,
        dedicatedInterrupt: (r.u16(Offer.dedicatedInterrupt) & 1) !== 0,
        connectionId: r.u32(Offer.connectionId),
      };
    case 'RescindChannelOffer':
    case 'CloseChannel':
    case 'RelidReleased':
      r.need(RelidOnly.size);
      return { type, childRelid: r.u32(RelidOnly.childRelid) };
    case 'RequestOffers':
    case 'AllOffersDelivered':
    case 'Unload':
    case 'UnloadResponse':
      return { type };
    case 'OpenChannel':
      r.need(Open.size);
      return {
        type,
        childRelid: r.u32(Open.childRelid),
        openId: r.u32(Open.openId),
        ringGpadlHandle: r.u32(Open.ringGpadlHandle),
        targetVp: r.u32(Open.targetVp),
        downstreamRingPageOffset: r.u32(Open.downstreamRingPageOffset),
        userData: r.copy(Open.userData, OPEN_USER_DATA_BYTES),
      };
    case 'OpenChannelResult':
      r.need(OpenResult.size);
      return { type, childRelid: r.u32(OpenResult.childRelid), openId: r.u32(OpenResult.openId), status: r.u32(OpenResult.status) };
    case 'GpadlHeader':
      return decodeGpadlHeader(r);
    case 'GpadlBody': {
      r.need(GpadlBodyAt.pfns);
      const tail = bytes.length - GpadlBodyAt.pfns;
      if (tail % 8 !== 0) r.fail(`has ${tail} bytes of pfns after its fixed part, not a multiple of 8.`);
      if (tail === 0) r.fail(`carries no pfns.`);
      return { type, msgNumber: r.u32(GpadlBodyAt.msgNumber), gpadl: r.u32(GpadlBodyAt.gpadl), pfns: r.pfns(GpadlBodyAt.pfns, tail / 8) };
    }
    case 'GpadlCreated':
      r.need(GpadlCreatedAt.size);
      return { type, childRelid: r.u32(GpadlCreatedAt.childRelid), gpadl: r.u32(GpadlCreatedAt.gpadl), status: r.u32(GpadlCreatedAt.status) };
    case 'GpadlTeardown':
      r.need(GpadlTeardownAt.size);
      return { type, childRelid: r.u32(GpadlTeardownAt.childRelid), gpadl: r.u32(GpadlTeardownAt.gpadl) };
    case 'GpadlTorndown':
      r.need(GpadlTorndownAt.size);
      return { type, gpadl: r.u32(GpadlTorndownAt.gpadl) };
    case 'InitiateContact':
      r.need(Initiate.size);
      return {
        type,
        versionRequested: r.u32(Initiate.versionRequested),
        targetVcpu: r.u32(Initiate.targetVcpu),
        msgSint: r.u8(Initiate.msgSint),
        msgVtl: r.u8(Initiate.msgVtl),
        monitorPage1: r.u64(Initiate.monitorPage1),
        monitorPage2: r.u64(Initiate.monitorPage2),
      };
    case 'VersionResponse': {
      r.need(VersionResp.size);
      const supported = r.u8(VersionResp.versionSupported);
      if (supported > 1) r.fail(`version_supported ${supported} is neither 0 nor 1.`);
      return {
        type,
        versionSupported: supported === 1,
        connectionState: r.u8(VersionResp.connectionState),
        messageConnectionId: r.u32(VersionResp.messageConnectionId),
      };
    }
    case 'ModifyChannel':
      r.need(Modify.size);
      return { type, childRelid: r.u32(Modify.childRelid), targetVp: r.u32(Modify.targetVp) };
  }
}

function decodeGpadlHeader(r: FieldReader): ChannelMessage {
  r.need(GpadlHeaderAt.pfns);
  const rangeBuflen = r.u16(GpadlHeaderAt.rangeBuflen);
  const rangeCount = r.u16(GpadlHeaderAt.rangeCount);
  if (rangeCount !== 1) r.fail(`rangecount ${rangeCount} is not 1; hvlab supports exactly one range.`);
  const byteCount = r.u32(GpadlHeaderAt.byteCount);
  const byteOffset = r.u32(GpadlHeaderAt.byteOffset);
  if (byteCount === 0) r.fail(`byte_count 0 describes an empty range.`);
  if (byteOffset >= PAGE) r.fail(`byte_offset ${byteOffset} is not within the first page.`);
  const totalPfns = rangePages(byteOffset, byteCount);
  const expected = RANGE_HEADER_BYTES + 8 * totalPfns;
  if (rangeBuflen !== expected) {
    r.fail(`range_buflen ${rangeBuflen} does not match byte_offset ${byteOffset} + byte_count ${byteCount} (${totalPfns} pages, ${expected} bytes).`);
  }
  const here = Math.min(totalPfns, GPADL_HEADER_MAX_PFNS);
  const tail = r.bytes.length - GpadlHeaderAt.pfns;
  if (tail % 8 !== 0) r.fail(`has ${tail} bytes of pfns after its fixed part, not a multiple of 8.`);
  if (tail / 8 !== here) r.fail(`carries ${tail / 8} pfns; a range of ${totalPfns} pages carries ${here} in the header.`);
  return {
    type: 'GpadlHeader',
    childRelid: r.u32(GpadlHeaderAt.childRelid),
    gpadl: r.u32(GpadlHeaderAt.gpadl),
    byteCount,
    byteOffset,
    totalPfns,
    pfns: r.pfns(GpadlHeaderAt.pfns, here),
  };
}
