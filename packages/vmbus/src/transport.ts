/**
 * The two transports behind one channel API.
 *
 * * `ShmTransport` (co-located): one ring per direction inside the channel's GPADL; a signal is
 *   whatever the owner passes in (HvCallSignalEvent through the hypervisor in hvlab's processes,
 *   a direct call in tests, a wrapped one for fault injection: faults.ts). Signalling follows
 *   Hyper-V: the writer signals on empty -> non-empty while the reader is unmasked; the reader
 *   masks while draining, unmasks and re-checks; a blocked writer is signalled once the space it
 *   asked for is free. Given a `DirtyLog`, it reports every byte range its own side writes into
 *   the rings' memory (the guest's side logs its ring writes for live migration this way).
 * * `RemoteTransport` (remote.ts): the same packets in frames on a `FrameLink` with credit-based
 *   flow control standing in for ring space.
 *
 * `VmbusChannel` sits on either and adds what both sides of a channel want: an outbound queue for
 * packets that did not fit (nothing is dropped while the channel is open), a fault path (a peer that
 * breaks the ring protocol gets its channel closed, and only that channel) and counters.
 */
import { RingReader, RingWriter, RingError, RingControl, RING_CONTROL_BYTES, type RingRegion } from './ring.js';

/**
 * Where a ring user reports its own writes into the memory behind its rings (for the guest, guest
 * memory: offsets are GPAs). Implemented by the guest's GuestMemory; vmbus imports nothing of it.
 */
export interface DirtyLog {
  markDirty(offset: number, length: number): void;
}

/** The control-page fields a ring writer stores (write_index, pending_send_sz) and a reader stores (read_index, interrupt_mask). */
const CONTROL_FIELDS_BYTES = RingControl.pendingSendSize + 4;

export type PacketHandler = (type: number, flags: number, transId: bigint, payload: Uint8Array) => void;

export interface TransportEvents {
  /** An inbound packet; `payload` is valid only during the call. */
  packet: PacketHandler;
  /** Room appeared after a send returned false. */
  writable: () => void;
  /** The peer broke the protocol; the transport is unusable. */
  fault: (e: Error) => void;
}

export interface OutboundPacket {
  type: number;
  flags: number;
  transId: bigint;
  payload: Uint8Array;
}

export interface PacketTransport {
  readonly kind: 'shm' | 'remote';
  /** Sends one packet; false when there is no room now (`writable` follows when there is). */
  send(type: number, flags: number, transId: bigint, payload: Uint8Array): boolean;
  /**
   * Sends `packets` in order, from the first, until one finds no room (`writable` follows then), as
   * one burst: a ring publishes its write index and decides on a signal once for all of them
   * (RingWriter.stage/commit). Returns how many went. A packet that could never fit ends the burst
   * before it, and throws (as `send` does) when it is the first. Optional: a transport without it
   * is sent to one packet at a time (a fault wrapper has it, and passes the burst on whole only
   * while no fault is on).
   */
  sendBurst?(packets: ReadonlyArray<OutboundPacket>): number;
  /**
   * Throws the RangeError `send` would throw for this packet (one this transport could never
   * carry), writing nothing; for a channel that queues it to send later. Optional.
   */
  check?(type: number, flags: number, transId: bigint, payload: Uint8Array): void;
  attach(events: TransportEvents): void;
  close(): void;
  /**
   * Packets this transport took but has not put on the wire yet (a fault wrapper's held-back
   * packets, faults.ts), oldest first: a saved state keeps them with the channel's queue.
   */
  heldPackets?(): Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }>;
  /**
   * Polled mode (rings only): the reader keeps interrupt_mask set, so the peer never signals for
   * what it writes, and `poll()` drains; off, the reader unmasks and drains what came meanwhile.
   * For a host side that reads on its own clock (the integration services' periodic answers).
   */
  setPolled?(on: boolean): void;
  /** Drains what has arrived (polled mode). */
  poll?(): void;
}

/** A channel end over two rings in shared memory. `onSignal()` is the interrupt entry. */
export class ShmTransport implements PacketTransport {
  readonly kind = 'shm' as const;
  private readonly writer: RingWriter;
  private readonly reader: RingReader;
  private events: TransportEvents | null = null;
  private blocked = false;
  private closed = false;
  private draining = false;
  /** write_index of the outbound ring, read (never stored) to log the bytes a write covered. */
  private readonly outWrite: Uint32Array;
  private readonly outData: number;
  signalsSent = 0;
  /** Polled mode: interrupt_mask stays set (see PacketTransport.setPolled). */
  private polled = false;

  constructor(private readonly out: RingRegion, private readonly inbound: RingRegion, private readonly signalPeer: () => void, name = 'channel', private readonly dirty: DirtyLog | null = null) {
    this.writer = new RingWriter(out, `${name} out`);
    this.reader = new RingReader(inbound, `${name} in`);
    this.outWrite = new Uint32Array(out.buffer, out.byteOffset + RingControl.writeIndex, 1);
    this.outData = out.byteOffset + RING_CONTROL_BYTES;
  }

  /**
   * Logs what a tryWrite stored: the control fields and, when a packet went in, the data bytes
   * from the old to the new write index (wrapping). Only this side stores write_index.
   */
  private logWrite(w0: number, wrote: boolean): void {
    const d = this.dirty!;
    d.markDirty(this.out.byteOffset, CONTROL_FIELDS_BYTES);
    if (!wrote) return;
    const w1 = this.outWrite[0]!;
    const D = this.writer.dataBytes;
    // The peer can scribble on write_index between our reads: then log the whole data area.
    if (w0 >= D || w1 >= D || w0 % 8 !== 0 || w1 % 8 !== 0) d.markDirty(this.outData, D);
    else if (w1 > w0) d.markDirty(this.outData + w0, w1 - w0);
    else {
      d.markDirty(this.outData + w0, D - w0);
      if (w1 > 0) d.markDirty(this.outData, w1);
    }
  }

  attach(events: TransportEvents): void {
    this.events = events;
    // Packets may have arrived before anyone listened.
    this.onSignal();
  }

  send(type: number, flags: number, transId: bigint, payload: Uint8Array): boolean {
    if (this.closed) return false;
    let r;
    const w0 = this.outWrite[0]!;
    try {
      r = this.writer.tryWrite(type, flags, transId, payload);
    } catch (e) {
      if (e instanceof RingError) {
        // The writer may have stored pending_send_sz, or the packet and write_index (a bad read
        // index found after the store), before it found the bad index: all of it goes to the log.
        this.writer.abort();
        this.logAll();
        this.fail(e);
        return false;
      }
      throw e;
    }
    if (this.dirty) this.logWrite(w0, r !== 'full');
    if (r === 'full') {
      this.blocked = true;
      return false;
    }
    if (r === 'signal') this.signal();
    return true;
  }

  sendBurst(packets: ReadonlyArray<OutboundPacket>): number {
    if (this.closed) return 0;
    const w0 = this.outWrite[0]!;
    const writer = this.writer;
    let n = 0;
    let r: 'ok' | 'signal';
    let refused: unknown = null;
    try {
      for (const p of packets) {
        let got: 'ok' | 'full';
        try {
          got = writer.stage(p.type, p.flags, p.transId, p.payload);
        } catch (e) {
          if (e instanceof RingError) throw e;
          // A packet that could never fit (RangeError; nothing of it written): the ones before it
          // go now, and it throws when it comes first, as a send of it would.
          refused = e;
          break;
        }
        if (got === 'full') {
          this.blocked = true;
          break;
        }
        n++;
      }
      r = writer.commit();
    } catch (e) {
      if (e instanceof RingError) {
        // The packets staged before the bad index may be in the ring (and write_index stored):
        // the whole data area and the control fields go to the log. The channel ends here.
        writer.abort();
        this.logAll();
        this.fail(e);
        return 0;
      }
      throw e;
    }
    if (refused !== null && n === 0) throw refused;
    // A full ring stored pending_send_sz: the control fields are logged either way.
    if (this.dirty) this.logWrite(w0, n > 0);
    if (r === 'signal') this.signal();
    return n;
  }

  /** The whole outbound ring, control fields and data, to the dirty log (after a RingError: what a write stored is not known). */
  private logAll(): void {
    const d = this.dirty;
    if (!d) return;
    d.markDirty(this.out.byteOffset, CONTROL_FIELDS_BYTES);
    d.markDirty(this.outData, this.writer.dataBytes);
  }

  /** Throws the RangeError a send of this packet would (RingWriter.check), writing nothing. */
  check(type: number, flags: number, transId: bigint, payload: Uint8Array): void {
    this.writer.check(type, flags, transId, payload.length);
  }

  private signal(): void {
    this.signalsSent++;
    this.signalPeer();
  }

  setPolled(on: boolean): void {
    if (this.polled === on || this.closed) return;
    this.polled = on;
    if (on) {
      this.reader.mask();
      this.dirty?.markDirty(this.inbound.byteOffset, CONTROL_FIELDS_BYTES);
    } else {
      // Unmasks and drains what came while nobody was told.
      this.onSignal();
    }
  }

  poll(): void {
    this.onSignal();
  }

  /** The peer signalled (or a poll): drain inbound packets, then tell a blocked sender about room. */
  onSignal(): void {
    if (this.closed || !this.events || this.draining) return;
    this.draining = true;
    try {
      this.reader.mask();
      do {
        this.reader.drain(this.events.packet);
        if (this.closed) return;
      } while (!this.polled && this.reader.unmask());
      if (this.reader.takeWriterSignal()) this.signal();
    } catch (e) {
      if (e instanceof RingError) {
        this.fail(e);
        return;
      }
      throw e;
    } finally {
      this.draining = false;
      // The reader stored interrupt_mask and read_index.
      this.dirty?.markDirty(this.inbound.byteOffset, CONTROL_FIELDS_BYTES);
    }
    if (this.blocked) {
      this.blocked = false;
      this.events.writable();
    }
  }

  private fail(e: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.fault(e);
  }

  close(): void {
    this.closed = true;
  }
}

export interface ChannelStats {
  packetsIn: number;
  packetsOut: number;
  queued: number;
}

export const MAX_QUEUED_PACKETS = 4096;

export class ChannelClosedError extends Error {
  override name = 'ChannelClosedError';
}

/** One open channel end: send with queueing, receive through `onPacket`, faults through `onFault`. */
export class VmbusChannel {
  private readonly queue: Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }> = [];
  private isOpen = true;
  private started = false;
  onPacket: PacketHandler = () => {};
  onFault: (e: Error) => void = () => {};
  onClose: () => void = () => {};
  readonly stats: ChannelStats = { packetsIn: 0, packetsOut: 0, queued: 0 };

  private flushing = false;
  private flushAgain = false;

  constructor(readonly relid: number, readonly name: string, readonly transport: PacketTransport) {}

  /**
   * Starts delivery: call once the handlers are in place. Packets that arrived earlier (the host
   * may write before the guest knows the channel is open) are delivered now.
   */
  start(): void {
    this.started = true;
    this.transport.attach({
      packet: (type, flags, transId, payload) => {
        if (!this.isOpen) return;
        this.stats.packetsIn++;
        try {
          this.onPacket(type, flags, transId, payload);
        } catch (e) {
          // A handler bug must not take the whole process (and every other channel) down:
          // it ends this channel only, like a protocol fault.
          this.isOpen = false;
          this.queue.length = 0;
          this.transport.close();
          this.onFault(e instanceof Error ? e : new Error(String(e)));
        }
      },
      writable: () => this.flush(),
      fault: (e) => {
        this.isOpen = false;
        this.queue.length = 0;
        this.onFault(e);
      },
    });
    // Packets put back by restoreQueue (or queued before start) go out now, ahead of later ones.
    if (this.queue.length > 0) this.flush();
  }

  get open(): boolean {
    return this.isOpen;
  }

  /**
   * Polled mode, where the transport has it (rings; see PacketTransport.setPolled): the peer does
   * not signal for what it writes, and `poll()` reads it. Returns false where it has not (a remote
   * transport: packets come as they arrive).
   */
  setPolled(on: boolean): boolean {
    if (!this.transport.setPolled || !this.transport.poll) return false;
    if (this.isOpen) this.transport.setPolled(on);
    return true;
  }

  /** Reads what has arrived (polled mode). */
  poll(): void {
    if (this.isOpen) this.transport.poll?.();
  }

  /** Sends a packet now, or queues it until the ring has room. Throws when closed or when the queue is full. */
  send(type: number, flags: number, transId: bigint, payload: Uint8Array): void {
    if (!this.isOpen) throw new ChannelClosedError(`channel ${this.name} (relid ${this.relid}) is closed`);
    if (this.queue.length === 0 && this.transport.send(type, flags, transId, payload)) {
      this.stats.packetsOut++;
      return;
    }
    // A packet the transport could never carry is refused now, as an unqueued send of it is, not
    // when it reaches the head of the queue (where it would hold up every packet behind it).
    this.transport.check?.(type, flags, transId, payload);
    if (this.queue.length >= MAX_QUEUED_PACKETS) throw new ChannelClosedError(`channel ${this.name} (relid ${this.relid}) has ${this.queue.length} packets queued: the peer is not reading`);
    this.queue.push({ type, flags, transId, payload: payload.slice() });
    this.stats.queued = this.queue.length;
  }

  /**
   * Copies of the packets waiting for ring space (or credit), oldest first, for a saved state:
   * those the transport holds (a fault wrapper's), then the channel's queue. Reads only.
   */
  queuedPackets(): Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }> {
    return [...(this.transport.heldPackets?.() ?? []), ...this.queue.map((p) => ({ type: p.type, flags: p.flags, transId: p.transId, payload: p.payload.slice() }))];
  }

  /**
   * Puts packets a saved state held in the outbound queue back into it, before `start()`: they go
   * out when the channel starts, ahead of anything sent later. A ring that faults on them then
   * faults the channel through `onFault`, as any send would.
   */
  restoreQueue(packets: ReadonlyArray<{ type: number; flags: number; transId: bigint; payload: Uint8Array }>): void {
    if (this.started || this.queue.length > 0) throw new Error(`channel ${this.name} (relid ${this.relid}) can take a saved queue only before it starts, when its queue is empty`);
    if (packets.length > MAX_QUEUED_PACKETS) throw new ChannelClosedError(`channel ${this.name} (relid ${this.relid}): a saved queue of ${packets.length} packets is over ${MAX_QUEUED_PACKETS}`);
    // A saved packet this transport could never carry is refused here, as a send of it would be.
    for (const p of packets) this.transport.check?.(p.type, p.flags, p.transId, p.payload);
    for (const p of packets) this.queue.push({ type: p.type, flags: p.flags, transId: p.transId, payload: p.payload.slice() });
    this.stats.queued = this.queue.length;
  }

  /**
   * Sends the queue. A transport that says `writable` from within a send (a synchronous signal path)
   * re-enters here before the outer call has taken the packets it sent off the queue: the inner
   * call only asks for another round, so no packet goes twice. A round that sent nothing ends it
   * (a transport that says `writable` with no room cannot make this spin).
   */
  private flush(): void {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.flushing = true;
    try {
      let sent = 0;
      do {
        this.flushAgain = false;
        sent = this.flushOnce();
      } while (this.flushAgain && sent > 0 && this.queue.length > 0 && this.isOpen);
    } finally {
      this.flushing = false;
    }
  }

  /** One round of flush: how many packets went. */
  private flushOnce(): number {
    const burst = this.transport.sendBurst;
    if (burst && this.queue.length > 1 && this.isOpen) {
      // The queue in one burst (one publication of the ring's write index, one signal at most).
      const n = burst.call(this.transport, this.queue);
      this.queue.splice(0, n);
      this.stats.packetsOut += n;
      this.stats.queued = this.queue.length;
      return n;
    }
    let n = 0;
    while (this.queue.length > 0 && this.isOpen) {
      const p = this.queue[0];
      if (!this.transport.send(p.type, p.flags, p.transId, p.payload)) break;
      this.queue.shift();
      this.stats.packetsOut++;
      n++;
    }
    this.stats.queued = this.queue.length;
    return n;
  }

  close(): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.queue.length = 0;
    this.transport.close();
    this.onClose();
  }
}
