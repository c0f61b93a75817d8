/**
 * Saved state of the VMBus server (host side, one per VM) and client (guest side): what lets a VM
 * restored from a snapshot keep its open channels and the packets in flight without negotiating
 * again (no INITIATE_CONTACT, offers, GPADLs or OPENCHANNEL after a restore), as OpenVMM does.
 *
 * These types are plain data kept apart from the runtime types (OpenVMM: a saved-state type must
 * stay stable across releases, so it shares nothing with the implementation even where they look
 * alike). Everything is JSON-safe: numbers, strings, booleans, lists and plain maps; a 64-bit
 * transaction id is a decimal string and a packet's payload is base64.
 *
 * What is saved and what is not:
 * * Ring contents and ring indices live in guest memory and are saved with it; a channel keeps
 *   here only what rebuilds its view of them (GPADL, page offsets) and the packets its outbound
 *   queue held because the ring was full (`queued`), which exist nowhere else.
 * * GPADLs still being assembled from GPADL_BODY messages are dropped: the guest sent the rest in
 *   SynIC messages that a save may split, and a guest that never hears GPADL_CREATED for one times
 *   out as it would on a lost message. Save when idle and there are none.
 * * Remote-transport channels save their open id and window; both ends reopen with full credit.
 *   Frames on the wire at save time are not saved (they are lost as on a lossy link).
 *
 * `decodeVmbusServerState` / `decodeVmbusClientState` are the only way in from outside: they check
 * every field and cross-reference (a ring GPADL belongs to its channel, pages fit the GPADL, …) and
 * return a fresh copy or a sentence naming the field that is wrong. They never throw.
 */
import { GPADL_MAX_PFNS, MAX_CHANNELS, MAX_MEMORY_BYTES, VMBUS_VERSIONS_NEWEST_FIRST } from '@hvlab/protocol';

export const VMBUS_STATE_VERSION = 1;
/** Channels a saved state may hold (a VM has a few dozen; the bus allows 2047). */
export const MAX_SAVED_CHANNELS = 256;
/** Established GPADLs a saved state may hold: 16 per channel (the server's per-channel cap). */
export const MAX_SAVED_GPADLS = MAX_SAVED_CHANNELS * 16;
/** Pages all saved GPADLs may cover together (4 GiB). */
export const MAX_SAVED_GPADL_PAGES = 1 << 20;
/** Packets one channel's outbound queue may hold (as VmbusChannel's MAX_QUEUED_PACKETS). */
export const MAX_SAVED_QUEUED_PACKETS = 4096;
/** Bytes of one queued packet's payload (a ring or remote window is at most 4 MiB). */
export const MAX_SAVED_PACKET_BYTES = 4 * 1024 * 1024;
/** Payload bytes all of one channel's queued packets may hold together. */
export const MAX_SAVED_QUEUED_BYTES = 64 * 1024 * 1024;
/** Characters kept of a channel's last fault message. */
export const MAX_SAVED_FAULT_CHARS = 512;
/** Bytes a remote channel's window may have (the server's limit). */
export const MAX_SAVED_REMOTE_WINDOW = 4 * 1024 * 1024;

const MAX_PFN = MAX_MEMORY_BYTES / 4096 - 1;
const U32 = 0xffffffff;

/** A packet a channel had queued because its ring (or credit) was full. */
export interface SavedPacket {
  type: number;
  flags: number;
  /** Decimal, 0 .. 2^64-1. */
  transId: string;
  /** Base64. */
  payload: string;
}

/** Counters a channel carries across a restore. */
export interface SavedChannelCounters {
  packetsIn: number;
  packetsOut: number;
}

export interface SavedServerChannel extends SavedChannelCounters {
  relid: number;
  /** With `interfaceInstance`, finds the device again among those added before restore. */
  interfaceType: string;
  interfaceInstance: string;
  state: 'offered' | 'open' | 'rescinded';
  /** The guest's event connection for this relid, as offered. */
  connectionId: number;
  /** 'none' unless open. */
  transport: 'shm' | 'remote' | 'none';
  /** Shared-memory rings: the GPADL holding both rings, and the first page of the host-to-guest ring. */
  ringGpadl: number;
  downstreamRingPageOffset: number;
  /** The OPENCHANNEL open id (the remote transport's generation is its low 16 bits). */
  openId: number;
  /** Remote transport: the window the guest asked for, in bytes (0 otherwise). */
  remoteWindow: number;
  opens: number;
  faults: number;
  /** '' when there was none. */
  lastFault: string;
  queued: SavedPacket[];
}

export interface SavedGpadl {
  gpadl: number;
  relid: number;
  owner: number;
  pfns: number[];
}

export interface VmbusServerState {
  version: 1;
  /** The negotiated VMBus protocol version, 0 before INITIATE_CONTACT. */
  negotiatedVersion: number;
  messageConnectionId: number;
  offersRequested: boolean;
  channels: SavedServerChannel[];
  gpadls: SavedGpadl[];
}

export interface SavedOffer {
  relid: number;
  interfaceType: string;
  interfaceInstance: string;
  flags: number;
  connectionId: number;
}

export interface SavedClientChannel extends SavedChannelCounters {
  relid: number;
  /** Finds the driver again among those registered before restore. */
  interfaceType: string;
  transport: 'shm' | 'remote';
  /** False when the channel had faulted: it is restored attached but closed, and its driver is not called. */
  open: boolean;
  /** Shared-memory rings: the GPADL and the contiguous guest pages of both rings (outbound first). */
  gpadl: number;
  pfn: number;
  pages: number;
  openId: number;
  /** Remote transport: the window in bytes (0 otherwise). */
  remoteWindow: number;
  queued: SavedPacket[];
}

export interface VmbusClientState {
  version: 1;
  negotiatedVersion: number;
  messageConnectionId: number;
  allOffersDelivered: boolean;
  nextGpadl: number;
  nextOpenId: number;
  offers: SavedOffer[];
  channels: SavedClientChannel[];
}

export class VmbusStateError extends Error {
  override name = 'VmbusStateError';
}

// ---- encoding helpers for save() ----------------------------------------------------------------

export function savePacket(p: { type: number; flags: number; transId: bigint; payload: Uint8Array }): SavedPacket {
  return { type: p.type, flags: p.flags, transId: p.transId.toString(10), payload: Buffer.from(p.payload.buffer, p.payload.byteOffset, p.payload.byteLength).toString('base64') };
}

export function loadPacket(p: SavedPacket): { type: number; flags: number; transId: bigint; payload: Uint8Array } {
  return { type: p.type, flags: p.flags, transId: BigInt(p.transId), payload: new Uint8Array(Buffer.from(p.payload, 'base64')) };
}

export function saveFault(message: string | null): string {
  return (message ?? '').slice(0, MAX_SAVED_FAULT_CHARS);
}

// ---- the checking decoders -----------------------------------------------------------------------

class FieldError extends Error {}

function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (Array.isArray(v)) return `a list of ${v.length}`;
  return `a ${typeof v}`;
}

function map(v: unknown, path: string, keys: readonly string[]): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new FieldError(`${path} is ${shown(v)}, not a map`);
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) throw new FieldError(`${path} is not a plain map`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new FieldError(`${path} has field ${shown(k)}, which is unknown`);
  for (const k of keys) if (!Object.prototype.hasOwnProperty.call(o, k) || o[k] === undefined) throw new FieldError(`${path}.${k} is missing`);
  return o;
}

function int(o: Record<string, unknown>, k: string, path: string, min: number, max: number): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new FieldError(`${path}.${k} is ${shown(v)}, not a whole number from ${min} to ${max}`);
  return v + 0; // -0 becomes 0, as JSON would make it
}

function bool(o: Record<string, unknown>, k: string, path: string): boolean {
  const v = o[k];
  if (typeof v !== 'boolean') throw new FieldError(`${path}.${k} is ${shown(v)}, not true or false`);
  return v;
}

function oneOf<T extends string>(o: Record<string, unknown>, k: string, path: string, values: readonly T[]): T {
  const v = o[k];
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) throw new FieldError(`${path}.${k} is ${shown(v)}, not one of ${values.join(', ')}`);
  return v as T;
}

const GUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function guid(o: Record<string, unknown>, k: string, path: string): string {
  const v = o[k];
  if (typeof v !== 'string' || !GUID_TEXT.test(v)) throw new FieldError(`${path}.${k} is ${shown(v)}, not GUID text`);
  return v;
}

function list(o: Record<string, unknown>, k: string, path: string, max: number): unknown[] {
  const v = o[k];
  if (!Array.isArray(v) || v.length > max) throw new FieldError(`${path}.${k} is ${shown(v)}, not a list of at most ${max}`);
  return v;
}

function version1(o: Record<string, unknown>, path: string): 1 {
  if (o.version !== VMBUS_STATE_VERSION) throw new FieldError(`${path}.version is ${shown(o.version)}; this build reads version ${VMBUS_STATE_VERSION}`);
  return 1;
}

function negotiated(o: Record<string, unknown>, path: string): number {
  const v = o.negotiatedVersion;
  if (v !== 0 && !(typeof v === 'number' && VMBUS_VERSIONS_NEWEST_FIRST.includes(v))) throw new FieldError(`${path}.negotiatedVersion is ${shown(v)}, not 0 or a known VMBus version`);
  return v + 0;
}

function messageConnection(o: Record<string, unknown>, path: string): number {
  const v = o.messageConnectionId;
  if (v !== 1 && v !== 4) throw new FieldError(`${path}.messageConnectionId is ${shown(v)}, not 1 or 4`);
  return v;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const U64_MAX = (1n << 64n) - 1n;

function packets(o: Record<string, unknown>, path: string): SavedPacket[] {
  const raw = list(o, 'queued', path, MAX_SAVED_QUEUED_PACKETS);
  const out: SavedPacket[] = [];
  let total = 0;
  for (let i = 0; i < raw.length; i++) {
    const p = `${path}.queued[${i}]`;
    const q = map(raw[i], p, ['type', 'flags', 'transId', 'payload']);
    const type = int(q, 'type', p, 0, 0xffff);
    const flags = int(q, 'flags', p, 0, 0xffff);
    const t = q.transId;
    if (typeof t !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(t) || BigInt(t) > U64_MAX) throw new FieldError(`${p}.transId is ${shown(t)}, not a decimal from 0 to 2^64-1`);
    const payload = q.payload;
    const maxChars = Math.ceil(MAX_SAVED_PACKET_BYTES / 3) * 4;
    if (typeof payload !== 'string' || payload.length > maxChars || !BASE64.test(payload)) throw new FieldError(`${p}.payload is ${shown(payload)}, not base64 of at most ${MAX_SAVED_PACKET_BYTES} bytes`);
    const bytes = (payload.length / 4) * 3 - (payload.endsWith('==') ? 2 : payload.endsWith('=') ? 1 : 0);
    if (bytes > MAX_SAVED_PACKET_BYTES) throw new FieldError(`${p}.payload holds ${bytes} bytes, more than ${MAX_SAVED_PACKET_BYTES}`);
    total += bytes;
    if (total > MAX_SAVED_QUEUED_BYTES) throw new FieldError(`${path}.queued holds more than ${MAX_SAVED_QUEUED_BYTES} payload bytes`);
    out.push({ type, flags, transId: t, payload });
  }
  return out;
}

function counters(o: Record<string, unknown>, path: string): SavedChannelCounters {
  return { packetsIn: int(o, 'packetsIn', path, 0, Number.MAX_SAFE_INTEGER), packetsOut: int(o, 'packetsOut', path, 0, Number.MAX_SAFE_INTEGER) };
}

function remoteWindow(o: Record<string, unknown>, path: string, remote: boolean): number {
  const w = int(o, 'remoteWindow', path, 0, MAX_SAVED_REMOTE_WINDOW);
  if (remote && (w < 4096 || w % 8 !== 0)) throw new FieldError(`${path}.remoteWindow is ${w}, not a multiple of 8 from 4096 to ${MAX_SAVED_REMOTE_WINDOW} as a remote channel needs`);
  if (!remote && w !== 0) throw new FieldError(`${path}.remoteWindow is ${w}, but only a remote channel has a window`);
  return w;
}

function catching<T>(f: () => T): T | string {
  try {
    return f();
  } catch (e) {
    if (e instanceof FieldError) return e.message;
    // A hostile value (a throwing getter on a non-plain object is refused by map(), but stay safe).
    return `the state could not be read: ${e instanceof Error ? e.message : String(e)}`;
  }
}

const SERVER_CHANNEL_KEYS = [
  'relid', 'interfaceType', 'interfaceInstance', 'state', 'connectionId', 'transport', 'ringGpadl', 'downstreamRingPageOffset',
  'openId', 'remoteWindow', 'opens', 'faults', 'lastFault', 'packetsIn', 'packetsOut', 'queued',
] as const;

/**
 * The states the two decoders below returned: fresh copies that only their callers hold, checked
 * already. `checkedServerState` and `checkedClientState` take such a one as it is instead of
 * decoding it a second time (a migration's destination decodes the state it received, then maps
 * its GPADLs and restores from it: three decodes of one state in the blackout, each the first run
 * of cold code in a new process). Anything else is decoded as before. Holders do not change them.
 */
const decoded = new WeakSet<object>();

function remember<T>(r: T | string): T | string {
  if (typeof r === 'object' && r !== null) decoded.add(r);
  return r;
}

/** `v` as a checked server state: as it is when it came from decodeVmbusServerState, else decoded now. */
export function checkedServerState(v: unknown): VmbusServerState | string {
  return typeof v === 'object' && v !== null && decoded.has(v) ? (v as VmbusServerState) : decodeVmbusServerState(v);
}

/** `v` as a checked client state: as it is when it came from decodeVmbusClientState, else decoded now. */
export function checkedClientState(v: unknown): VmbusClientState | string {
  return typeof v === 'object' && v !== null && decoded.has(v) ? (v as VmbusClientState) : decodeVmbusClientState(v);
}

/** Checks a parsed server state; returns a fresh copy or the field that is wrong as a sentence. Never throws. */
export function decodeVmbusServerState(v: unknown): VmbusServerState | string {
  return remember(catching(() => {
    const top = map(v, 'the server state', ['version', 'negotiatedVersion', 'messageConnectionId', 'offersRequested', 'channels', 'gpadls']);
    const path = 'the server state';
    version1(top, path);
    const negotiatedVersion = negotiated(top, path);
    const messageConnectionId = messageConnection(top, path);
    const offersRequested = bool(top, 'offersRequested', path);

    const gpadls: SavedGpadl[] = [];
    const rawG = list(top, 'gpadls', path, MAX_SAVED_GPADLS);
    let pages = 0;
    for (let i = 0; i < rawG.length; i++) {
      const p = `gpadls[${i}]`;
      const g = map(rawG[i], p, ['gpadl', 'relid', 'owner', 'pfns']);
      const gpadl = int(g, 'gpadl', p, 1, U32);
      if (gpadls.some((x) => x.gpadl === gpadl)) throw new FieldError(`${p}.gpadl 0x${gpadl.toString(16)} appears twice`);
      const relid = int(g, 'relid', p, 1, MAX_CHANNELS);
      const owner = int(g, 'owner', p, 0, U32);
      const rawP = list(g, 'pfns', p, GPADL_MAX_PFNS);
      if (rawP.length === 0) throw new FieldError(`${p}.pfns is empty`);
      pages += rawP.length;
      if (pages > MAX_SAVED_GPADL_PAGES) throw new FieldError(`gpadls cover more than ${MAX_SAVED_GPADL_PAGES} pages`);
      const pfns: number[] = [];
      for (let j = 0; j < rawP.length; j++) {
        const n = rawP[j] as unknown;
        if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > MAX_PFN) throw new FieldError(`${p}.pfns[${j}] is ${shown(n)}, not a page number from 0 to ${MAX_PFN}`);
        pfns.push(n + 0);
      }
      gpadls.push({ gpadl, relid, owner, pfns });
    }

    const channels: SavedServerChannel[] = [];
    const rawC = list(top, 'channels', path, MAX_SAVED_CHANNELS);
    for (let i = 0; i < rawC.length; i++) {
      const p = `channels[${i}]`;
      const c = map(rawC[i], p, SERVER_CHANNEL_KEYS);
      const relid = int(c, 'relid', p, 1, MAX_CHANNELS);
      if (channels.some((x) => x.relid === relid)) throw new FieldError(`${p}.relid ${relid} appears twice`);
      const interfaceType = guid(c, 'interfaceType', p);
      const interfaceInstance = guid(c, 'interfaceInstance', p);
      const state = oneOf(c, 'state', p, ['offered', 'open', 'rescinded'] as const);
      const connectionId = int(c, 'connectionId', p, 1, U32);
      const transport = oneOf(c, 'transport', p, ['shm', 'remote', 'none'] as const);
      if ((state === 'open') !== (transport !== 'none')) throw new FieldError(`${p}.transport is ${transport}, but the channel is ${state}`);
      const ringGpadl = int(c, 'ringGpadl', p, 0, U32);
      const downstreamRingPageOffset = int(c, 'downstreamRingPageOffset', p, 0, GPADL_MAX_PFNS);
      if (transport === 'shm') {
        const g = gpadls.find((x) => x.gpadl === ringGpadl);
        if (!g || g.relid !== relid) throw new FieldError(`${p}.ringGpadl 0x${ringGpadl.toString(16)} is not a saved GPADL of relid ${relid}`);
        if (downstreamRingPageOffset < 2 || g.pfns.length - downstreamRingPageOffset < 2) {
          throw new FieldError(`${p}.downstreamRingPageOffset ${downstreamRingPageOffset} leaves no room for two rings in the ${g.pfns.length} pages of GPADL 0x${ringGpadl.toString(16)}`);
        }
      } else if (ringGpadl !== 0 || downstreamRingPageOffset !== 0) {
        throw new FieldError(`${p}.ringGpadl and downstreamRingPageOffset are ${ringGpadl} and ${downstreamRingPageOffset}, but only a shared-memory channel has rings`);
      }
      const openId = int(c, 'openId', p, 0, U32);
      const window = remoteWindow(c, p, transport === 'remote');
      const opens = int(c, 'opens', p, 0, Number.MAX_SAFE_INTEGER);
      const faults = int(c, 'faults', p, 0, Number.MAX_SAFE_INTEGER);
      const lastFault = c.lastFault;
      if (typeof lastFault !== 'string' || lastFault.length > MAX_SAVED_FAULT_CHARS) throw new FieldError(`${p}.lastFault is ${shown(lastFault)}, not a string of at most ${MAX_SAVED_FAULT_CHARS} characters`);
      const queued = packets(c, p);
      if (state !== 'open' && queued.length > 0) throw new FieldError(`${p}.queued holds ${queued.length} packets, but the channel is ${state}`);
      channels.push({
        relid, interfaceType, interfaceInstance, state, connectionId, transport, ringGpadl, downstreamRingPageOffset,
        openId, remoteWindow: window, opens, faults, lastFault, ...counters(c, p), queued,
      });
    }
    for (let i = 0; i < gpadls.length; i++) {
      const ch = channels.find((c) => c.relid === gpadls[i].relid);
      // A rescinded channel's GPADLs were dropped by the host when it rescinded.
      if (!ch || ch.state === 'rescinded') throw new FieldError(`gpadls[${i}].relid ${gpadls[i].relid} is not an offered or open channel`);
    }
    if (negotiatedVersion === 0 && (channels.length > 0 || offersRequested)) throw new FieldError('negotiatedVersion is 0 (not connected), but there are channels or offers were requested');
    return { version: 1 as const, negotiatedVersion, messageConnectionId, offersRequested, channels, gpadls };
  }));
}

const CLIENT_CHANNEL_KEYS = ['relid', 'interfaceType', 'transport', 'open', 'gpadl', 'pfn', 'pages', 'openId', 'remoteWindow', 'packetsIn', 'packetsOut', 'queued'] as const;

/** Checks a parsed client state; returns a fresh copy or the field that is wrong as a sentence. Never throws. */
export function decodeVmbusClientState(v: unknown): VmbusClientState | string {
  return remember(catching(() => {
    const path = 'the client state';
    const top = map(v, path, ['version', 'negotiatedVersion', 'messageConnectionId', 'allOffersDelivered', 'nextGpadl', 'nextOpenId', 'offers', 'channels']);
    version1(top, path);
    const negotiatedVersion = negotiated(top, path);
    const messageConnectionId = messageConnection(top, path);
    const allOffersDelivered = bool(top, 'allOffersDelivered', path);
    const nextGpadl = int(top, 'nextGpadl', path, 1, U32);
    const nextOpenId = int(top, 'nextOpenId', path, 1, U32);

    const offers: SavedOffer[] = [];
    const rawO = list(top, 'offers', path, MAX_SAVED_CHANNELS);
    for (let i = 0; i < rawO.length; i++) {
      const p = `offers[${i}]`;
      const o = map(rawO[i], p, ['relid', 'interfaceType', 'interfaceInstance', 'flags', 'connectionId']);
      const relid = int(o, 'relid', p, 1, MAX_CHANNELS);
      if (offers.some((x) => x.relid === relid)) throw new FieldError(`${p}.relid ${relid} appears twice`);
      offers.push({ relid, interfaceType: guid(o, 'interfaceType', p), interfaceInstance: guid(o, 'interfaceInstance', p), flags: int(o, 'flags', p, 0, 0xffff), connectionId: int(o, 'connectionId', p, 0, U32) });
    }

    const channels: SavedClientChannel[] = [];
    const rawC = list(top, 'channels', path, MAX_SAVED_CHANNELS);
    for (let i = 0; i < rawC.length; i++) {
      const p = `channels[${i}]`;
      const c = map(rawC[i], p, CLIENT_CHANNEL_KEYS);
      const relid = int(c, 'relid', p, 1, MAX_CHANNELS);
      if (channels.some((x) => x.relid === relid)) throw new FieldError(`${p}.relid ${relid} appears twice`);
      const offer = offers.find((o) => o.relid === relid);
      if (!offer) throw new FieldError(`${p}.relid ${relid} is not among the saved offers`);
      const interfaceType = guid(c, 'interfaceType', p);
      if (interfaceType.toLowerCase() !== offer.interfaceType.toLowerCase()) throw new FieldError(`${p}.interfaceType ${interfaceType} is not that of offer ${relid} (${offer.interfaceType})`);
      const transport = oneOf(c, 'transport', p, ['shm', 'remote'] as const);
      const open = bool(c, 'open', p);
      const gpadl = int(c, 'gpadl', p, 0, U32);
      const pfn = int(c, 'pfn', p, 0, MAX_PFN);
      const pages = int(c, 'pages', p, 0, GPADL_MAX_PFNS);
      if (transport === 'shm') {
        // A channel whose attach failed half way (closed) may have no GPADL or no pages yet.
        if (open && gpadl === 0) throw new FieldError(`${p}.gpadl is 0, but an open shared-memory channel has a ring GPADL`);
        if ((open || pages !== 0) && (pages < 4 || pages % 2 !== 0)) throw new FieldError(`${p}.pages is ${pages}, not an even count of at least 4 (two rings)`);
        if (pages > 0 && pfn + pages - 1 > MAX_PFN) throw new FieldError(`${p}.pfn 0x${pfn.toString(16)} + ${pages} pages ends past the largest partition`);
        if (gpadl !== 0 && channels.some((x) => x.transport === 'shm' && x.gpadl === gpadl)) throw new FieldError(`${p}.gpadl 0x${gpadl.toString(16)} appears twice`);
      } else if (gpadl !== 0 || pfn !== 0 || pages !== 0) {
        throw new FieldError(`${p}.gpadl, pfn and pages are ${gpadl}, ${pfn} and ${pages}, but a remote channel has no rings`);
      }
      const openId = int(c, 'openId', p, 1, U32);
      const window = remoteWindow(c, p, transport === 'remote');
      const queued = packets(c, p);
      if (!open && queued.length > 0) throw new FieldError(`${p}.queued holds ${queued.length} packets, but the channel is closed`);
      channels.push({ relid, interfaceType, transport, open, gpadl, pfn, pages, openId, remoteWindow: window, ...counters(c, p), queued });
    }
    if (negotiatedVersion === 0 && (offers.length > 0 || allOffersDelivered)) throw new FieldError('negotiatedVersion is 0 (not connected), but there are offers');
    return { version: 1 as const, negotiatedVersion, messageConnectionId, allOffersDelivered, nextGpadl, nextOpenId, offers, channels };
  }));
}
