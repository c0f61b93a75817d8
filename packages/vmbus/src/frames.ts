/**
 * The frames of the remote VMBus transport and their checking decoder. A frame is one message on
 * a `FrameLink`: an 8-byte header {relid u32, kind u16, generation u16} and a body by kind:
 *
 *   Packet  a packet exactly as a ring would hold it without its trailer: the 16-byte descriptor
 *           (type, offset8, len8, flags, transId) and the payload zero-padded to 8 bytes
 *   Credit  u32: ring bytes the receiver has consumed and gives back to the sender
 *   Hello   u32 partition id, then the partition's token (UTF-8), guest to host, relid 0
 *
 * `decodeRemoteFrame` is the only reader of frame bytes: it checks lengths, offsets, flags, packet
 * types and counts once and returns a typed frame, or a typed error that still names the relid and
 * generation when the header was readable, so that the error faults that channel and no other.
 * It never throws. (Deviation from the project rule that edge decoders live in `protocol`: this
 * wire format is hvlab's own and only vmbus speaks it; moving it there changes nothing else.)
 */
import { KNOWN_PACKET_TYPES, PACKET_DESCRIPTOR_BYTES, PACKET_FLAG_COMPLETION_REQUESTED } from './ring.js';

export const FrameKind = { Packet: 1, Credit: 2, Hello: 3 } as const;
export const FRAME_HEADER_BYTES = 8;
/** Longest token a hello may carry (the boot page holds 64 bytes). */
export const HELLO_TOKEN_MAX_BYTES = 256;
/** The largest frame: a header and the largest packet len8 (u16) can describe. */
export const MAX_FRAME_BYTES = FRAME_HEADER_BYTES + 0xffff * 8;

export type RemoteFrame =
  | { kind: 'packet'; relid: number; generation: number; type: number; flags: number; transId: bigint; payload: Uint8Array; cost: number }
  | { kind: 'credit'; relid: number; generation: number; bytes: number }
  | { kind: 'hello'; partitionId: number; token: string };

export interface RemoteFrameError {
  kind: 'error';
  error: string;
  /** The channel the frame was addressed to, when its header could be read. */
  relid: number | null;
  generation: number | null;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8Out = new TextEncoder();

function header(relid: number, kind: number, generation: number, bodyBytes: number): { bytes: Uint8Array; dv: DataView } {
  const bytes = new Uint8Array(FRAME_HEADER_BYTES + bodyBytes);
  const dv = new DataView(bytes.buffer);
  dv.setUint32(0, relid, true);
  dv.setUint16(4, kind, true);
  dv.setUint16(6, generation, true);
  return { bytes, dv };
}

/** A Packet frame; `payload` is copied in and padded with zeros to 8 bytes. */
export function encodePacketFrame(relid: number, generation: number, type: number, flags: number, transId: bigint, payload: Uint8Array): Uint8Array {
  const padded = (PACKET_DESCRIPTOR_BYTES + payload.length + 7) & ~7;
  const { bytes, dv } = header(relid, FrameKind.Packet, generation, padded);
  const o = FRAME_HEADER_BYTES;
  dv.setUint16(o, type, true);
  dv.setUint16(o + 2, PACKET_DESCRIPTOR_BYTES / 8, true);
  dv.setUint16(o + 4, padded / 8, true);
  dv.setUint16(o + 6, flags, true);
  dv.setBigUint64(o + 8, transId, true);
  bytes.set(payload, o + PACKET_DESCRIPTOR_BYTES);
  return bytes;
}

export function encodeCreditFrame(relid: number, generation: number, bytes: number): Uint8Array {
  const f = header(relid, FrameKind.Credit, generation, 4);
  f.dv.setUint32(FRAME_HEADER_BYTES, bytes, true);
  return f.bytes;
}

export function encodeHelloFrame(partitionId: number, token: string): Uint8Array {
  const t = utf8Out.encode(token);
  const f = header(0, FrameKind.Hello, 0, 4 + t.length);
  f.dv.setUint32(FRAME_HEADER_BYTES, partitionId, true);
  f.bytes.set(t, FRAME_HEADER_BYTES + 4);
  return f.bytes;
}

/**
 * Decodes one frame. A Packet's payload is a view into `frame` (bytes offset8*8 .. len8*8 of the
 * packet, padding included, as a ring reader returns it); `cost` is the ring space it stands for.
 */
export function decodeRemoteFrame(frame: Uint8Array): RemoteFrame | RemoteFrameError {
  if (!(frame instanceof Uint8Array)) return { kind: 'error', error: 'a remote VMBus frame is not bytes', relid: null, generation: null };
  if (frame.length < FRAME_HEADER_BYTES) return { kind: 'error', error: `a remote VMBus frame of ${frame.length} bytes is shorter than its ${FRAME_HEADER_BYTES}-byte header`, relid: null, generation: null };
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const relid = dv.getUint32(0, true);
  const kind = dv.getUint16(4, true);
  const generation = dv.getUint16(6, true);
  const body = frame.length - FRAME_HEADER_BYTES;
  const bad = (error: string): RemoteFrameError => ({ kind: 'error', error: `relid ${relid}: ${error}`, relid, generation });
  switch (kind) {
    case FrameKind.Credit: {
      if (body !== 4) return bad(`a credit frame has ${body} body bytes, not 4`);
      const bytes = dv.getUint32(FRAME_HEADER_BYTES, true);
      if (bytes === 0 || bytes % 8 !== 0) return bad(`a credit grant of ${bytes} bytes is not a positive multiple of 8`);
      return { kind: 'credit', relid, generation, bytes };
    }
    case FrameKind.Hello: {
      if (body < 4 || body - 4 > HELLO_TOKEN_MAX_BYTES) return { kind: 'error', error: `a hello of ${body} body bytes is not a partition id and a token of at most ${HELLO_TOKEN_MAX_BYTES} bytes`, relid: null, generation: null };
      let token: string;
      try {
        token = utf8.decode(frame.subarray(FRAME_HEADER_BYTES + 4));
      } catch {
        return { kind: 'error', error: 'a hello token is not UTF-8', relid: null, generation: null };
      }
      return { kind: 'hello', partitionId: dv.getUint32(FRAME_HEADER_BYTES, true), token };
    }
    case FrameKind.Packet: {
      if (body < PACKET_DESCRIPTOR_BYTES || body % 8 !== 0) return bad(`a packet of ${body} bytes is not a whole descriptor plus 8-byte units`);
      const o = FRAME_HEADER_BYTES;
      const type = dv.getUint16(o, true);
      const offset8 = dv.getUint16(o + 2, true);
      const len8 = dv.getUint16(o + 4, true);
      const flags = dv.getUint16(o + 6, true);
      if (offset8 < 2) return bad(`offset8 ${offset8} is below 2 (inside the descriptor)`);
      if (len8 < offset8 || len8 * 8 !== body) return bad(`len8 ${len8} disagrees with the packet's ${body} bytes (offset8 ${offset8})`);
      if ((flags & ~PACKET_FLAG_COMPLETION_REQUESTED) !== 0) return bad(`unknown packet flags 0x${flags.toString(16)}`);
      if (!KNOWN_PACKET_TYPES.has(type)) return bad(`unknown packet type ${type}`);
      return {
        kind: 'packet', relid, generation, type, flags, transId: dv.getBigUint64(o + 8, true),
        // A plain Uint8Array even when the frame is a Buffer, whose slice() would not copy.
        payload: new Uint8Array(frame.buffer, frame.byteOffset + o + offset8 * 8, (len8 - offset8) * 8), cost: body + 8,
      };
    }
    default:
      return bad(`unknown frame kind ${kind}`);
  }
}
