/**
 * VMBus ring buffer: one direction of a VMBus channel, laid out as Hyper-V, Linux and OpenVMM lay
 * it out, in a SharedArrayBuffer that writer and reader (usually two processes) both map.
 *
 * A ring is a 4 KiB control page (write_index, read_index, interrupt_mask, pending_send_sz,
 * feature_bits; see `RingControl`) followed by the data area. Each packet is a 16-byte descriptor
 * (type, offset8, len8, flags, trans_id), the payload zero-padded to 8 bytes, and an 8-byte trailer
 * holding the packet's start offset in its upper 32 bits; everything wraps byte-wise at the end of
 * the data area. Key types: `RingRegion` (where a ring lives), `RingWriter.tryWrite` (one packet in,
 * answering 'ok' | 'signal' | 'full'; or several with `stage` and one `commit`), `RingReader.read` /
 * `drain` (packets out, validated; any
 * protocol violation by the peer is a `RingError` and faults the reader for good).
 *
 * Signalling follows Linux: the writer signals only when the reader left interrupts unmasked and the
 * ring was empty before the write (read_index == the old write_index, checked after publishing); a
 * reader masks while draining, then `unmask()` re-checks and drains again if data arrived. A writer
 * that finds no room sets pending_send_sz (if feature bit 0 is set); the reader reports, through
 * `takeWriterSignal()`, the read that made the free space reach it. pending_send_sz is compared with
 * the writable bytes (free - 8), i.e. Linux's "free > pending_send_sz".
 *
 * Neither side keeps a private copy of its own index (but for a writer's staged series, which lives
 * within one synchronous step): every operation starts from the indices in
 * the control page and validates them, so a writer or reader may be re-created at any time (the
 * writer remembers the last read index it saw as a lower bound of free space, to skip loading the
 * shared cache line when that suffices; re-initialising a ring in use needs new objects). A side
 * loads its own index with a plain read and the peer's with Atomics; payload bytes are stored
 * before write_index is published, and read_index is published only after the payload has been
 * copied out or the drain callback has returned. One writer and one reader per ring.
 *
 * Deviations from Hyper-V: the data area is not double-mapped, so a packet that wraps around the
 * end is copied (`read` always copies; `drain` hands out a view into the ring for large contiguous
 * payloads and a reused scratch copy otherwise). Payload copies of `NATIVE_COPY_MIN` bytes or more
 * into the ring, and every scratch copy of a wrapped payload out of it, go through the shm addon's
 * memmove (`copyBytes`): V8 copies into and out of a SharedArrayBuffer with relaxed atomic word
 * accesses, about half as fast as memcpy and slower still at 16 KiB. The ring does not know about GPA ranges or
 * transfer pages; those packet types are carried as opaque payloads. Requires a little-endian host.
 */
import { copyBytes } from '@hvlab/shm';

/** Size of the control page in front of the data area. */
export const RING_CONTROL_BYTES = 0x1000;

/** Byte offsets of the control-page fields (little-endian u32). */
export const RingControl = {
  writeIndex: 0x00,
  readIndex: 0x04,
  interruptMask: 0x08,
  pendingSendSize: 0x0c,
  featureBits: 0x40,
} as const;

/** feature_bits bit 0: the reader honours pending_send_sz. */
export const RING_FEATURE_PENDING_SEND_SIZE = 1;

/** VMBus packet types (vmbus_packet_type). */
export const PacketType = {
  DataInband: 6,
  DataUsingXferPages: 7,
  DataUsingGpaDirect: 9,
  Completion: 0xb,
} as const;

/** Descriptor flag: the sender wants a completion packet back. The only defined flag. */
export const PACKET_FLAG_COMPLETION_REQUESTED = 1;

/** Byte offsets of the fields of the 16-byte packet descriptor (vmpacket_descriptor). */
export const PacketDescriptorOffset = {
  type: 0x0, // u16
  offset8: 0x2, // u16: data offset / 8
  len8: 0x4, // u16: packet length (descriptor + payload + padding) / 8
  flags: 0x6, // u16
  transId: 0x8, // u64
} as const;

export const PACKET_DESCRIPTOR_BYTES = 16;
export const PACKET_TRAILER_BYTES = 8;

/** The packet types a reader accepts unless told otherwise. */
export const KNOWN_PACKET_TYPES: ReadonlySet<number> = new Set<number>([
  PacketType.DataInband,
  PacketType.DataUsingXferPages,
  PacketType.DataUsingGpaDirect,
  PacketType.Completion,
]);

/** Smallest data area a ring may have. */
const MIN_DATA_BYTES = 64;
/** Largest data area (indices stay positive 32-bit integers). */
const MAX_DATA_BYTES = 0x8000_0000;
/** Largest packet (without trailer) len8 (u16) can describe. */
const MAX_PACKET_BYTES_NO_TRAILER = 0xffff * 8;
/** Smallest well-formed packet: a descriptor and a trailer. */
const MIN_PACKET_BYTES = PACKET_DESCRIPTOR_BYTES + PACKET_TRAILER_BYTES;
const MAX_U64 = 0xffff_ffff_ffff_ffffn;
const MAX_U32_BIG = 0xffff_ffffn;

// Control-page fields as indices of a Uint32Array over the page.
const W = RingControl.writeIndex >>> 2;
const R = RingControl.readIndex >>> 2;
const MASK = RingControl.interruptMask >>> 2;
const PENDING = RingControl.pendingSendSize >>> 2;
const FEATURES = RingControl.featureBits >>> 2;

/** Payloads up to this size are copied into the scratch buffer by `drain` rather than viewed in place (a copy is cheaper than a new view). */
const DRAIN_COPY_MAX = 64;

/**
 * Payloads this large or larger are copied into the ring by the addon's memmove, smaller ones by
 * Uint8Array.set. Measured on a 2-core x86-64 with Node 20: a native call costs 80-100 ns whatever
 * the size; V8's set into a SharedArrayBuffer takes ~35 ns at 256 B, ~75 ns at 512 B, about the
 * same as the call at 1 KiB, ~150 against ~90 ns at 2 KiB and ~750 against ~390 ns at 16 KiB
 * (`pnpm bench vmbus` prints both side by side, and `nativeVsV8Shared16k`).
 */
export const NATIVE_COPY_MIN = 1024;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const EMPTY = new Uint8Array(0);

const hex = (v: number): string => `0x${v.toString(16)}`;

/** Ring space one packet with `payloadLength` bytes of payload takes: align8(16 + payloadLength) + 8. */
export function packetBytes(payloadLength: number): number {
  if (!Number.isSafeInteger(payloadLength) || payloadLength < 0) {
    throw new RangeError(`payload length ${payloadLength} is not a non-negative whole number`);
  }
  return Math.ceil((PACKET_DESCRIPTOR_BYTES + payloadLength) / 8) * 8 + PACKET_TRAILER_BYTES;
}

/**
 * The peer broke the ring protocol; the channel owning the ring must be closed. The message names
 * the ring and the bad value, e.g. `ring "kvp in": write index 0x1003 is not a multiple of 8`.
 */
export class RingError extends Error {
  override name = 'RingError';
  readonly ring: string;
  constructor(ring: string, message: string) {
    super(`ring "${ring}": ${message}`);
    this.ring = ring;
  }
}

/**
 * A ring's place in memory: control page + data. byteOffset is a multiple of 8; byteLength is
 * 0x1000 + dataBytes with dataBytes a multiple of 8 and >= 64.
 */
export interface RingRegion {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  byteLength: number;
}

/** Checks a region and returns its data size; RangeError when it is unusable. */
function checkRegion(region: RingRegion): number {
  if (!LITTLE_ENDIAN) throw new RangeError('VMBus rings need a little-endian host');
  const { buffer, byteOffset, byteLength } = region;
  if (!(buffer instanceof SharedArrayBuffer)) throw new RangeError('ring region buffer is not a SharedArrayBuffer');
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset % 8 !== 0) {
    throw new RangeError(`ring region offset ${byteOffset} is not a non-negative multiple of 8`);
  }
  if (!Number.isSafeInteger(byteLength)) throw new RangeError(`ring region length ${byteLength} is not a whole number`);
  const dataBytes = byteLength - RING_CONTROL_BYTES;
  if (dataBytes < MIN_DATA_BYTES || dataBytes % 8 !== 0 || dataBytes > MAX_DATA_BYTES) {
    throw new RangeError(
      `ring region length ${hex(byteLength)} must be ${hex(RING_CONTROL_BYTES)} plus a data area that is a multiple of 8 ` +
        `between ${MIN_DATA_BYTES} and ${hex(MAX_DATA_BYTES)} bytes`,
    );
  }
  if (byteOffset + byteLength > buffer.byteLength) {
    throw new RangeError(`ring region ${hex(byteOffset)}+${hex(byteLength)} extends past the end of its ${hex(buffer.byteLength)}-byte buffer`);
  }
  return dataBytes;
}

/** Zeroes the control page and sets feature bit 0 (done by whoever allocates the ring, before either side uses it). Throws RangeError for a bad region. */
export function initRing(region: RingRegion): void {
  checkRegion(region);
  const ctrl = new Uint32Array(region.buffer, region.byteOffset, RING_CONTROL_BYTES >>> 2);
  for (let i = 0; i < ctrl.length; i++) Atomics.store(ctrl, i, 0);
  Atomics.store(ctrl, FEATURES, RING_FEATURE_PENDING_SEND_SIZE);
}

/** Bytes free between write index w and read index r (both valid), as Linux counts them (free >= 8). */
function rawFree(w: number, r: number, dataBytes: number): number {
  return r > w ? r - w : dataBytes - w + r;
}

export type WriteResult = 'ok' | 'signal' | 'full';

/** The writing side of a ring (one writer per ring). */
export class RingWriter {
  readonly dataBytes: number;
  readonly name: string;
  private readonly ctrl: Uint32Array;
  private readonly u8: Uint8Array;
  private readonly u32: Uint32Array;
  private readonly dv: DataView;
  private readonly buffer: SharedArrayBuffer;
  private readonly dataOffset: number;
  /** Largest packet (with trailer) this ring can ever take. */
  private readonly maxPacket: number;
  /**
   * A read index seen earlier, or -1. The reader only moves it towards the write index, so the
   * free space it implies is a lower bound: when that is enough, tryWrite skips loading the index.
   */
  private lastRead = -1;
  /** The write index after the packets staged and not yet committed, or -1 when none is staged. */
  private staged = -1;
  /**
   * The published write index the staged part of the series follows (where it began, or where a
   * packet that found no room last published it): the commit's signal rule compares with it.
   */
  private stagedFrom = 0;
  /** A packet of the series that found no room published the part before it to a reader that may sleep: the commit signals. */
  private owed = false;
  /** The series' last packet found room: the commit clears pending_send_sz. */
  private clearPending = false;

  constructor(region: RingRegion, name?: string) {
    const dataBytes = checkRegion(region);
    this.dataBytes = dataBytes;
    this.name = name ?? `ring@${hex(region.byteOffset)}`;
    const { buffer, byteOffset } = region;
    const data = byteOffset + RING_CONTROL_BYTES;
    this.buffer = buffer;
    this.dataOffset = data;
    this.ctrl = new Uint32Array(buffer, byteOffset, RING_CONTROL_BYTES >>> 2);
    this.u8 = new Uint8Array(buffer, data, dataBytes);
    this.u32 = new Uint32Array(buffer, data, dataBytes >>> 2);
    this.dv = new DataView(buffer, data, dataBytes);
    this.maxPacket = Math.min(dataBytes - 8, MAX_PACKET_BYTES_NO_TRAILER + PACKET_TRAILER_BYTES);
  }

  /** Loads and validates the read index (the peer's), remembering it in `lastRead`. */
  private loadRead(): number {
    const r = Atomics.load(this.ctrl, R);
    if ((r & 7) !== 0 || r >= this.dataBytes) this.bad('read index', r);
    this.lastRead = r;
    return r;
  }

  private bad(what: string, v: number): never {
    if (v % 8 !== 0) throw new RingError(this.name, `${what} ${hex(v)} is not a multiple of 8`);
    throw new RingError(this.name, `${what} ${hex(v)} is not below the data size ${hex(this.dataBytes)}`);
  }

  /** Bytes that can be written now, after any staged packets (0 if the ring is full), excluding the 8 bytes that keep it from ever being full. Throws RingError if the peer-controlled read index is invalid. */
  freeBytes(): number {
    const D = this.dataBytes;
    let w = this.staged;
    if (w < 0) {
      w = this.ctrl[W]!;
      if ((w & 7) !== 0 || w >= D) this.bad('write index', w);
    }
    return rawFree(w, this.loadRead(), D) - 8;
  }

  /**
   * Writes one packet (payload = payload followed by payload2 if given, zero-padded to 8) and
   * publishes it, with any packets staged before it: `stage` and then `commit`.
   * 'full': nothing written (pending_send_sz set when feature bit 0 is set; a series staged before
   * stays staged, for the caller to commit); 'signal': written and the reader must be signalled;
   * 'ok': written, no signal. Throws RangeError if the packet could never fit (packetBytes >
   * dataBytes - 8) or type/flags/transId are out of range; RingError if an index is invalid.
   */
  tryWrite(type: number, flags: number, transId: bigint, payload: Uint8Array, payload2?: Uint8Array): WriteResult {
    return this.stage(type, flags, transId, payload, payload2) === 'full' ? 'full' : this.commit();
  }

  /**
   * Throws the RangeError a write of this packet would (type, flags or transaction id out of range,
   * or a packet this ring could never hold); else the bytes it takes in the ring. Writes nothing:
   * for a sender that queues a packet to write later.
   */
  check(type: number, flags: number, transId: bigint, payloadLen: number): number {
    const need = PACKET_DESCRIPTOR_BYTES + ((payloadLen + 7) & ~7) + PACKET_TRAILER_BYTES;
    if ((type & 0xffff) !== type) throw new RangeError(`packet type ${type} is not a 16-bit value`);
    if (flags !== 0 && flags !== PACKET_FLAG_COMPLETION_REQUESTED) throw new RangeError(`packet flags ${flags} are invalid: only 0 and 1 (completion requested) are defined`);
    // 0n (no completion expected) is the common id: one comparison instead of three (BigInt comparisons are builtin calls).
    if (transId !== 0n && (typeof transId !== 'bigint' || transId < 0n || transId > MAX_U64)) throw new RangeError(`transaction id ${String(transId)} is not a 64-bit unsigned value`);
    if (need > this.maxPacket) {
      throw new RangeError(`a packet with ${payloadLen} payload bytes takes ${need} bytes, more than ring "${this.name}" can ever hold (${this.maxPacket})`);
    }
    return need;
  }

  /** Drops a staged series unpublished (after a RingError: the ring is not to be written again). */
  abort(): void {
    this.staged = -1;
    this.owed = false;
    this.clearPending = false;
  }

  /** True while packets are staged and not yet committed. */
  get staging(): boolean {
    return this.staged >= 0;
  }

  /**
   * Writes one packet after those staged before it without publishing it: the reader sees none of
   * the series until `commit`, which publishes the write index once and makes one signal decision
   * for all of them (OpenVMM's OutgoingRing::write and commit_write). A writer with several packets
   * ready saves a store to the control page's shared cache line per packet, and the line's trip to
   * the reader's CPU and back. The series must be committed in the same synchronous step that
   * staged it: nothing else looks at a ring's write index in between (a VMBus save, a drain of the
   * other end on this thread). 'full': this packet did not fit (pending_send_sz set as for
   * tryWrite); the packets staged before it are published then (the reader counts room by what it
   * sees), and the commit still decides on the signal. Throws as tryWrite does.
   */
  stage(type: number, flags: number, transId: bigint, payload: Uint8Array, payload2?: Uint8Array): 'ok' | 'full' {
    const len1 = payload.length;
    const len2 = payload2 === undefined ? 0 : payload2.length;
    const payloadLen = len1 + len2;
    const padded = (payloadLen + 7) & ~7;
    const need = this.check(type, flags, transId, payloadLen);
    const zeroId = transId === 0n;
    const ctrl = this.ctrl;
    const D = this.dataBytes;
    // write_index and pending_send_sz are only ever stored by the writer: plain loads suffice. In
    // a series, the packet goes after the staged ones.
    let w = this.staged;
    if (w < 0) {
      w = ctrl[W]!;
      if ((w & 7) !== 0 || w >= D) this.bad('write index', w);
      this.stagedFrom = w;
    }
    const cached = this.lastRead;
    if (cached < 0 || need > rawFree(w, cached, D) - 8) {
      if (need > rawFree(w, this.loadRead(), D) - 8) {
        // The reader sees only what is published, and reports room by that (pending_send_sz): a
        // staged series is published first, so that the room this writer waits for is the room the
        // reader counts. Its signal decision stays with the commit.
        if (this.staged >= 0 && this.staged !== this.stagedFrom) {
          Atomics.store(ctrl, W, this.staged);
          // As a commit would decide, but the signal waits for the commit: the reader had read
          // everything before this part (it may be asleep) and has interrupts on.
          if (Atomics.load(ctrl, MASK) === 0 && this.loadRead() === this.stagedFrom) this.owed = true;
          this.stagedFrom = this.staged;
        }
        this.clearPending = false;
        if ((Atomics.load(ctrl, FEATURES) & RING_FEATURE_PENDING_SEND_SIZE) === 0) return 'full';
        // A writer retrying the same packet finds it stored already (and keeps the shared cache line clean).
        if (ctrl[PENDING] !== need) Atomics.store(ctrl, PENDING, need);
        // The reader may have made room between our check and the store above without seeing it.
        if (need > rawFree(w, this.loadRead(), D) - 8) return 'full';
      }
    }

    // Everything is 8-aligned, so no u32 word is ever split by the wrap.
    const u32 = this.u32;
    const words = D >>> 2;
    let i = w >>> 2;
    u32[i] = type | ((PACKET_DESCRIPTOR_BYTES >>> 3) << 16);
    u32[i + 1] = ((need - PACKET_TRAILER_BYTES) >>> 3) | (flags << 16);
    i += 2;
    if (i === words) i = 0;
    if (zeroId) {
      u32[i] = 0;
      u32[i + 1] = 0;
    } else if (transId <= MAX_U32_BIG) {
      u32[i] = Number(transId);
      u32[i + 1] = 0;
    } else {
      this.dv.setBigUint64(i << 2, transId, true);
    }
    i += 2;
    if (i === words) i = 0;
    const start = i << 2; // payload
    let t = start + padded; // trailer
    if (t >= D) t -= D;
    if (padded !== payloadLen) {
      // Zero the last payload word first; the payload then overwrites its leading bytes.
      const z = (t === 0 ? D : t) - 8;
      u32[z >>> 2] = 0;
      u32[(z >>> 2) + 1] = 0;
    }
    if (len1 !== 0) this.copyIn(payload, start);
    if (len2 !== 0) {
      let p = start + len1;
      if (p >= D) p -= D;
      this.copyIn(payload2!, p);
    }
    u32[t >>> 2] = 0;
    u32[(t >>> 2) + 1] = w;
    let nw = t + PACKET_TRAILER_BYTES;
    if (nw === D) nw = 0;
    this.staged = nw;
    // This packet found room: the writer no longer waits for any. The commit clears
    // pending_send_sz, after its store of write_index (one trip of the control page's cache line
    // for both), unless a later packet of the series found no room and set it again.
    this.clearPending = true;
    return 'ok';
  }

  /**
   * Publishes the staged packets (one store of write_index): 'signal' when the reader must be
   * signalled (interrupts unmasked and the ring empty before the series), else 'ok' (also when
   * nothing was staged). pending_send_sz: cleared after the write index is stored if the series'
   * last packet found room; left set if it found none (the reader's promise to signal when there
   * is room stays). Throws RingError if
   * the read index is invalid (the packets are published).
   */
  commit(): 'ok' | 'signal' {
    const nw = this.staged;
    if (nw < 0) return 'ok';
    this.staged = -1;
    const owed = this.owed;
    this.owed = false;
    const clear = this.clearPending;
    this.clearPending = false;
    const ctrl = this.ctrl;
    // Everything was published already, by a packet that found no room (and was the last staged:
    // one that found room after it would have moved past stagedFrom), so pending_send_sz stays.
    if (nw === this.stagedFrom) return owed ? 'signal' : 'ok';
    Atomics.store(ctrl, W, nw);
    if (clear && ctrl[PENDING] !== 0) Atomics.store(ctrl, PENDING, 0);
    if (owed) return 'signal';
    if (Atomics.load(ctrl, MASK) !== 0) return 'ok';
    // Signal only if the reader had consumed everything before the series (it may be about to sleep).
    return this.loadRead() === this.stagedFrom ? 'signal' : 'ok';
  }

  private copyIn(src: Uint8Array, pos: number): void {
    const n = src.length;
    const room = this.dataBytes - pos;
    if (n >= NATIVE_COPY_MIN) {
      // Offsets into the buffer, not views: the addon then skips a view's buffer lookup.
      const base = this.dataOffset;
      if (n <= room) {
        copyBytes(this.buffer, base + pos, src, 0, n);
      } else {
        copyBytes(this.buffer, base + pos, src, 0, room);
        copyBytes(this.buffer, base, src, room, n - room);
      }
    } else if (n <= room) {
      this.u8.set(src, pos);
    } else {
      this.u8.set(src.subarray(0, room), pos);
      this.u8.set(src.subarray(room), 0);
    }
  }
}

export interface RingPacket {
  type: number;
  flags: number;
  transId: bigint;
  /** An owned copy of bytes [offset8*8, len8*8) of the packet (so including the zero padding). */
  payload: Uint8Array;
}

/** The reading side of a ring (one reader per ring; read/drain must not be called from a drain callback). */
export class RingReader {
  readonly dataBytes: number;
  readonly name: string;
  private readonly ctrl: Uint32Array;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly dv: DataView;
  private readonly buffer: SharedArrayBuffer;
  private readonly dataOffset: number;
  /** Known types below 32 as a bit mask; the others in `knownHigh`. */
  private readonly knownLow: number;
  private readonly knownHigh: ReadonlySet<number> | null;
  private fault: RingError | null = null;
  private writerSignal = false;
  private draining = false;
  private scratch = new Uint8Array(0);
  private scratch32 = new Uint32Array(0);
  private scratchViews: Array<Uint8Array | undefined> = [];
  // The packet `parse` last accepted.
  private pType = 0;
  private pFlags = 0;
  private pStart = 0;
  private pLen = 0;
  private pNext = 0;

  constructor(region: RingRegion, name?: string, knownTypes: ReadonlySet<number> = KNOWN_PACKET_TYPES) {
    const dataBytes = checkRegion(region);
    this.dataBytes = dataBytes;
    this.name = name ?? `ring@${hex(region.byteOffset)}`;
    const { buffer, byteOffset } = region;
    const data = byteOffset + RING_CONTROL_BYTES;
    this.buffer = buffer;
    this.dataOffset = data;
    this.ctrl = new Uint32Array(buffer, byteOffset, RING_CONTROL_BYTES >>> 2);
    this.u8 = new Uint8Array(buffer, data, dataBytes);
    this.u16 = new Uint16Array(buffer, data, dataBytes >>> 1);
    this.u32 = new Uint32Array(buffer, data, dataBytes >>> 2);
    this.dv = new DataView(buffer, data, dataBytes);
    let low = 0;
    const high = new Set<number>();
    for (const t of knownTypes) {
      if (Number.isInteger(t) && t >= 0 && t < 32) low |= 1 << t;
      else high.add(t);
    }
    this.knownLow = low;
    this.knownHigh = high.size > 0 ? high : null;
  }

  /** True once a RingError was thrown; every later read/drain throws the same error again. */
  get faulted(): boolean {
    return this.fault !== null;
  }

  /** Records the peer's violation (the reader stays faulted) and throws it. */
  private fail(message: string): never {
    this.fault = new RingError(this.name, message);
    throw this.fault;
  }

  private checkIndex(what: string, v: number): void {
    if ((v & 7) !== 0) this.fail(`${what} ${hex(v)} is not a multiple of 8`);
    if (v >= this.dataBytes) this.fail(`${what} ${hex(v)} is not below the data size ${hex(this.dataBytes)}`);
  }

  private loadWrite(): number {
    const w = Atomics.load(this.ctrl, W);
    if ((w & 7) !== 0 || w >= this.dataBytes) this.checkIndex('write index', w);
    return w;
  }

  private loadRead(): number {
    // read_index is only ever stored by the reader: a plain load suffices.
    const r = this.ctrl[R]!;
    if ((r & 7) !== 0 || r >= this.dataBytes) this.checkIndex('read index', r);
    return r;
  }

  /** Validates the packet at r (r != w) and records it in the p* fields. */
  private parse(r: number, w: number): void {
    const D = this.dataBytes;
    const avail = w > r ? w - r : D - r + w;
    if (avail < MIN_PACKET_BYTES) {
      this.fail(`the ${avail} bytes between read index ${hex(r)} and write index ${hex(w)} are too few for a packet (at least ${MIN_PACKET_BYTES})`);
    }
    // r is 8-aligned, so the first 8 descriptor bytes are contiguous.
    const u16 = this.u16;
    const h = r >>> 1;
    const type = u16[h]!;
    const offset8 = u16[h + 1]!;
    const len8 = u16[h + 2]!;
    const flags = u16[h + 3]!;
    if (offset8 < 2) this.fail(`packet at ${hex(r)} has data offset ${offset8 * 8} (offset8 ${offset8}), inside its 16-byte descriptor`);
    if (len8 < offset8) this.fail(`packet at ${hex(r)} has length ${len8 * 8} (len8 ${len8}), shorter than its data offset ${offset8 * 8}`);
    const total = len8 * 8;
    if (total + PACKET_TRAILER_BYTES > avail) {
      this.fail(`packet at ${hex(r)} has length ${total} (len8 ${len8}) plus an 8-byte trailer, more than the ${avail} bytes the writer has filled`);
    }
    if ((flags & ~PACKET_FLAG_COMPLETION_REQUESTED) !== 0) {
      this.fail(`packet at ${hex(r)} has flags ${hex(flags)}; only bit 0 (completion requested) is defined`);
    }
    if (type < 32 ? ((this.knownLow >>> type) & 1) === 0 : this.knownHigh === null || !this.knownHigh.has(type)) {
      this.fail(`packet at ${hex(r)} has unknown type ${hex(type)}`);
    }
    this.pType = type;
    this.pFlags = flags;
    let start = r + offset8 * 8;
    if (start >= D) start -= D;
    this.pStart = start;
    this.pLen = total - offset8 * 8;
    let next = r + total + PACKET_TRAILER_BYTES;
    if (next >= D) next -= D;
    this.pNext = next;
  }

  private transIdAt(r: number): bigint {
    let p = r + 8;
    if (p === this.dataBytes) p = 0;
    // An id of 0 (no completion expected) without allocating a BigInt.
    const u32 = this.u32;
    if (u32[p >>> 2] === 0 && u32[(p >>> 2) + 1] === 0) return 0n;
    return this.dv.getBigUint64(p, true);
  }

  /** Publishes read index `to` (advanced from `from`) and notes whether free space crossed pending_send_sz. */
  private commit(from: number, to: number): void {
    const ctrl = this.ctrl;
    Atomics.store(ctrl, R, to);
    const pending = Atomics.load(ctrl, PENDING);
    if (pending === 0 || (Atomics.load(ctrl, FEATURES) & RING_FEATURE_PENDING_SEND_SIZE) === 0) return;
    // A fresh write index: a writer that set pending_send_sz has stopped writing.
    const w = Atomics.load(ctrl, W);
    const D = this.dataBytes;
    if ((w & 7) !== 0 || w >= D) return; // the next read reports it
    const before = rawFree(w, from, D) - 8;
    const after = rawFree(w, to, D) - 8;
    if (before < pending && pending <= after) this.writerSignal = true;
  }

  /** True if the ring holds no packet. Validates the indices (RingError, which faults the reader). */
  isEmpty(): boolean {
    if (this.fault) throw this.fault;
    const r = this.loadRead();
    return this.loadWrite() === r;
  }

  /**
   * Consumes one packet or returns null when empty. On a protocol violation throws RingError and
   * marks the reader faulted (read_index is not advanced).
   */
  read(): RingPacket | null {
    if (this.fault) throw this.fault;
    this.enter();
    try {
      const r = this.loadRead();
      const w = this.loadWrite();
      if (r === w) return null;
      this.parse(r, w);
      const transId = this.transIdAt(r);
      const start = this.pStart;
      const len = this.pLen;
      let payload: Uint8Array;
      if (start + len <= this.dataBytes) {
        payload = this.u8.slice(start, start + len);
      } else {
        payload = new Uint8Array(len);
        const first = this.dataBytes - start;
        payload.set(this.u8.subarray(start));
        payload.set(this.u8.subarray(0, len - first), first);
      }
      const packet: RingPacket = { type: this.pType, flags: this.pFlags, transId, payload };
      this.commit(r, this.pNext);
      return packet;
    } finally {
      this.draining = false;
    }
  }

  /**
   * Zero-copy fast path: calls fn for up to `max` packets; `payload` is only valid during the call
   * (a view into the ring for large contiguous payloads, else a reused scratch copy). Same
   * validation as read(). Returns the number of packets consumed. A packet counts as consumed once
   * fn was called for it, even if fn throws (the exception propagates). read_index is published when
   * a quarter of the ring has been consumed and at the end, always after fn returned; when the
   * packets seen at the start are used up, the write index is loaded again (for at most one ring's
   * worth of bytes per call).
   */
  drain(fn: (type: number, flags: number, transId: bigint, payload: Uint8Array) => void, max = Infinity): number {
    if (this.fault) throw this.fault;
    this.enter();
    const D = this.dataBytes;
    const batch = D >>> 2;
    let committed = 0;
    let r = 0;
    let n = 0;
    try {
      r = this.loadRead();
      committed = r;
      let w = this.loadWrite();
      let consumed = 0;
      while (n < max) {
        if (r === w) {
          if (consumed >= D) break;
          if (r !== committed) {
            this.commit(committed, r);
            committed = r;
          }
          w = this.loadWrite();
          if (r === w) break;
        }
        this.parse(r, w);
        const transId = this.transIdAt(r);
        const payload = this.view(this.pStart, this.pLen);
        const next = this.pNext;
        const type = this.pType;
        const flags = this.pFlags;
        const size = next > r ? next - r : D - r + next;
        consumed += size;
        r = next;
        n++;
        fn(type, flags, transId, payload);
        if ((r >= committed ? r - committed : D - committed + r) >= batch) {
          this.commit(committed, r);
          committed = r;
        }
      }
    } finally {
      if (r !== committed) this.commit(committed, r);
      this.draining = false;
    }
    return n;
  }

  private enter(): void {
    if (this.draining) throw new Error(`ring "${this.name}": read() and drain() must not be called from a drain() callback`);
    this.draining = true;
  }

  /** The payload at `start` as a Uint8Array valid until the next packet. */
  private view(start: number, len: number): Uint8Array {
    if (len === 0) return EMPTY;
    const D = this.dataBytes;
    if (len > DRAIN_COPY_MAX && start + len <= D) return new Uint8Array(this.buffer, this.dataOffset + start, len);
    if (this.scratch.length < len) {
      let size = 512;
      while (size < len) size *= 2;
      this.scratch = new Uint8Array(size);
      this.scratch32 = new Uint32Array(this.scratch.buffer);
      this.scratchViews = [];
    }
    if (len <= DRAIN_COPY_MAX) {
      // start and len are multiples of 8: copy u32 words (no view allocations).
      const src = this.u32;
      const dst = this.scratch32;
      const s = start >>> 2;
      const n = len >>> 2;
      const words = D >>> 2;
      if (s + n <= words) {
        for (let k = 0; k < n; k++) dst[k] = src[s + k]!;
      } else {
        const first = words - s;
        for (let k = 0; k < first; k++) dst[k] = src[s + k]!;
        for (let k = first; k < n; k++) dst[k] = src[k - first]!;
      }
    } else {
      // A payload that wraps: two native copies cost what two views and two V8 copies cost at
      // 128 B and less beyond (out of a SharedArrayBuffer V8 is slower still than into one).
      const first = D - start;
      copyBytes(this.scratch, 0, this.buffer, this.dataOffset + start, first);
      copyBytes(this.scratch, first, this.buffer, this.dataOffset, len - first);
    }
    const slot = len >>> 3;
    let v = this.scratchViews[slot];
    if (v === undefined) {
      v = this.scratch.subarray(0, len);
      this.scratchViews[slot] = v;
    }
    return v;
  }

  /** interrupt_mask = 1: the writer will not signal while the reader drains. */
  mask(): void {
    Atomics.store(this.ctrl, MASK, 1);
  }

  /** interrupt_mask = 0, then re-check: returns true if the ring is non-empty (the caller must drain again). */
  unmask(): boolean {
    Atomics.store(this.ctrl, MASK, 0);
    return !this.isEmpty();
  }

  /** True (once) if since the last call a read made free space cross the writer's pending_send_sz; the caller then signals the writer. */
  takeWriterSignal(): boolean {
    const s = this.writerSignal;
    this.writerSignal = false;
    return s;
  }
}
