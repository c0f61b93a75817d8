/**
 * The remote VMBus transport: the same packets a ring would carry (16-byte descriptor, payload
 * padded to 8), one per ZeroMQ message, with credit-based flow control standing in for ring space.
 * Each side starts with a window equal to the ring's usable bytes; a packet costs what it would
 * cost in a ring (`packetBytes`), and the reader returns credit as it consumes. A sender that
 * exceeds its credit, or a malformed frame, is a fault of that channel, exactly like a bad ring.
 *
 * `RemoteHub` is the root's end (a ROUTER; partitions prove who they are with a token the VMWP put
 * in the boot page) and `RemoteLink` the guest's (a DEALER). Both multiplex every channel of a
 * partition over one socket; frames carry {relid u32, kind u16, generation u16} before the body.
 * The generation is the low 16 bits of the OPENCHANNEL open id, so frames of an earlier opening of
 * the same relid (a hot remove and add) are dropped rather than mistaken for the new one's.
 */
import { dealer, router, SendQueue, type zmq } from '@hvlab/runtime';
import { KNOWN_PACKET_TYPES, PACKET_DESCRIPTOR_BYTES, packetBytes } from './ring.js';
import type { PacketTransport, TransportEvents } from './transport.js';

export const FrameKind = { Packet: 1, Credit: 2, Hello: 3 } as const;
const FRAME_HEADER = 8;

export class RemoteProtocolError extends Error {
  override name = 'RemoteProtocolError';
}

function frame(relid: number, kind: number, bodyLength: number, generation = 0): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER + bodyLength);
  b.writeUInt32LE(relid, 0);
  b.writeUInt16LE(kind, 4);
  b.writeUInt16LE(generation, 6);
  return b;
}

/** One channel end over a shared socket. */
export class RemoteTransport implements PacketTransport {
  readonly kind = 'remote' as const;
  private events: TransportEvents | null = null;
  private credit: number;
  /** What the peer may still send us (we enforce it). */
  private peerCredit: number;
  private consumed = 0;
  private grantScheduled = false;
  private blocked = false;
  private closed = false;
  private early: Buffer[] = [];

  constructor(
    readonly relid: number,
    readonly generation: number,
    readonly window: number,
    private readonly sendFrame: (b: Buffer) => void,
    readonly name = 'channel',
  ) {
    this.credit = window;
    this.peerCredit = window;
  }

  attach(events: TransportEvents): void {
    this.events = events;
    const early = this.early;
    this.early = [];
    for (const f of early) this.onFrame(f);
  }

  send(type: number, flags: number, transId: bigint, payload: Uint8Array): boolean {
    if (this.closed) return false;
    const cost = packetBytes(payload.length);
    if (cost > this.window) throw new RangeError(`a ${payload.length}-byte packet can never fit channel ${this.name}'s ${this.window}-byte window`);
    if (cost > this.credit) {
      this.blocked = true;
      return false;
    }
    this.credit -= cost;
    const padded = (PACKET_DESCRIPTOR_BYTES + payload.length + 7) & ~7;
    const b = frame(this.relid, FrameKind.Packet, padded, this.generation);
    const o = FRAME_HEADER;
    b.writeUInt16LE(type, o);
    b.writeUInt16LE(2, o + 2);
    b.writeUInt16LE(padded / 8, o + 4);
    b.writeUInt16LE(flags, o + 6);
    b.writeBigUInt64LE(transId, o + 8);
    b.set(payload, o + PACKET_DESCRIPTOR_BYTES);
    b.fill(0, o + PACKET_DESCRIPTOR_BYTES + payload.length);
    this.sendFrame(b);
    return true;
  }

  /** A frame for this channel arrived. */
  onFrame(b: Buffer): void {
    if (this.closed || b.readUInt16LE(6) !== this.generation) return;
    if (!this.events) {
      this.early.push(b);
      return;
    }
    const kind = b.readUInt16LE(4);
    try {
      if (kind === FrameKind.Credit) {
        if (b.length < FRAME_HEADER + 4) throw new RemoteProtocolError(`channel ${this.name}: short credit frame`);
        const n = b.readUInt32LE(FRAME_HEADER);
        if (n === 0 || this.credit + n > this.window) throw new RemoteProtocolError(`channel ${this.name}: credit grant of ${n} bytes exceeds the ${this.window}-byte window`);
        this.credit += n;
        if (this.blocked) {
          this.blocked = false;
          this.events.writable();
        }
        return;
      }
      if (kind !== FrameKind.Packet) throw new RemoteProtocolError(`channel ${this.name}: unknown frame kind ${kind}`);
      const body = b.length - FRAME_HEADER;
      if (body < PACKET_DESCRIPTOR_BYTES || body % 8 !== 0) throw new RemoteProtocolError(`channel ${this.name}: packet of ${body} bytes is not a whole descriptor plus 8-byte units`);
      const o = FRAME_HEADER;
      const type = b.readUInt16LE(o);
      const offset8 = b.readUInt16LE(o + 2);
      const len8 = b.readUInt16LE(o + 4);
      const flags = b.readUInt16LE(o + 6);
      if (offset8 < 2) throw new RemoteProtocolError(`channel ${this.name}: offset8 ${offset8} is below 2`);
      if (len8 < offset8 || len8 * 8 !== body) throw new RemoteProtocolError(`channel ${this.name}: len8 ${len8} disagrees with the packet's ${body} bytes`);
      if ((flags & ~1) !== 0) throw new RemoteProtocolError(`channel ${this.name}: unknown packet flags 0x${flags.toString(16)}`);
      if (!KNOWN_PACKET_TYPES.has(type)) throw new RemoteProtocolError(`channel ${this.name}: unknown packet type ${type}`);
      const cost = body + 8;
      if (cost > this.peerCredit) throw new RemoteProtocolError(`channel ${this.name}: the peer sent ${cost} bytes with ${this.peerCredit} bytes of credit`);
      this.peerCredit -= cost;
      const transId = b.readBigUInt64LE(o + 8);
      // A plain Uint8Array view (Buffer#slice would not copy, unlike every other payload's slice).
      this.events.packet(type, flags, transId, new Uint8Array(b.buffer, b.byteOffset + o + offset8 * 8, (len8 - offset8) * 8));
      this.consumed += cost;
      if (this.consumed >= this.window / 4) this.grant();
      else if (!this.grantScheduled) {
        this.grantScheduled = true;
        setImmediate(() => {
          this.grantScheduled = false;
          this.grant();
        });
      }
    } catch (e) {
      if (!(e instanceof RemoteProtocolError)) throw e;
      this.closed = true;
      this.events.fault(e);
    }
  }

  private grant(): void {
    if (this.consumed === 0 || this.closed) return;
    const b = frame(this.relid, FrameKind.Credit, 4, this.generation);
    b.writeUInt32LE(this.consumed, FRAME_HEADER);
    this.peerCredit += this.consumed;
    this.consumed = 0;
    this.sendFrame(b);
  }

  close(): void {
    this.closed = true;
  }
}

/** The root's end: one ROUTER for every partition of the host. */
export class RemoteHub {
  private readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private readonly tokens = new Map<number, string>();
  private readonly routes = new Map<number, Buffer>();
  private readonly partitionOf = new Map<string, number>();
  private readonly channels = new Map<string, RemoteTransport>();
  private readonly early = new Map<number, Buffer[]>();
  private closed = false;

  constructor(readonly endpoint: string, private readonly log?: { warn: (o: object, m?: string) => void }) {
    this.sock = router();
    this.q = new SendQueue(this.sock);
  }

  async bind(): Promise<void> {
    await this.sock.bind(this.endpoint);
    void this.loop();
  }

  /** Accept hellos from `partitionId` carrying `token`. */
  admit(partitionId: number, token: string): void {
    this.tokens.set(partitionId, token);
  }

  forget(partitionId: number): void {
    this.tokens.delete(partitionId);
    const r = this.routes.get(partitionId);
    if (r) this.partitionOf.delete(r.toString('hex'));
    this.routes.delete(partitionId);
    this.early.delete(partitionId);
    for (const k of [...this.channels.keys()]) if (k.startsWith(`${partitionId}:`)) this.channels.delete(k);
  }

  /** A channel end for (partition, relid); frames go out once the partition has said hello. */
  open(partitionId: number, relid: number, openId: number, window: number, name: string): RemoteTransport {
    const t = new RemoteTransport(relid, openId & 0xffff, window, (b) => {
      const route = this.routes.get(partitionId);
      if (route) void this.q.send([route, b]).catch(() => undefined);
      else {
        // The guest's hello may still be on its way (it travels apart from the SynIC message
        // that opened the channel): hold the frames until it arrives. Credits bound them.
        const q = this.early.get(partitionId) ?? [];
        q.push(b);
        this.early.set(partitionId, q);
      }
    }, name);
    this.channels.set(`${partitionId}:${relid}`, t);
    return t;
  }

  closeChannel(partitionId: number, relid: number): void {
    this.channels.get(`${partitionId}:${relid}`)?.close();
    this.channels.delete(`${partitionId}:${relid}`);
  }

  private async loop(): Promise<void> {
    try {
      for await (const [route, b] of this.sock) {
        if (!b || b.length < FRAME_HEADER) continue;
        const relid = b.readUInt32LE(0);
        const kind = b.readUInt16LE(4);
        if (kind === FrameKind.Hello) {
          const pid = b.length >= FRAME_HEADER + 4 ? b.readUInt32LE(FRAME_HEADER) : 0;
          const token = b.subarray(FRAME_HEADER + 4).toString('utf8');
          if (this.tokens.get(pid) === token) {
            const r = Buffer.from(route);
            this.routes.set(pid, r);
            this.partitionOf.set(route.toString('hex'), pid);
            for (const f of this.early.get(pid) ?? []) void this.q.send([r, f]).catch(() => undefined);
            this.early.delete(pid);
          } else {
            this.log?.warn({ partition: pid }, 'remote VMBus hello with a bad token refused');
          }
          continue;
        }
        const pid = this.partitionOf.get(route.toString('hex'));
        if (pid === undefined) continue;
        this.channels.get(`${pid}:${relid}`)?.onFrame(b);
      }
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.sock.close();
  }
}

/** The guest's end: one DEALER for every remote channel of the partition. */
export class RemoteLink {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private readonly channels = new Map<number, RemoteTransport>();
  private closed = false;

  constructor(readonly endpoint: string, partitionId: number, token: string) {
    this.sock = dealer();
    this.q = new SendQueue(this.sock);
    this.sock.connect(endpoint);
    const t = Buffer.from(token, 'utf8');
    const hello = frame(0, FrameKind.Hello, 4 + t.length);
    hello.writeUInt32LE(partitionId, FRAME_HEADER);
    t.copy(hello, FRAME_HEADER + 4);
    void this.q.send(hello).catch(() => undefined);
    void this.loop();
  }

  open(relid: number, openId: number, window: number, name: string): RemoteTransport {
    const t = new RemoteTransport(relid, openId & 0xffff, window, (b) => void this.q.send(b).catch(() => undefined), name);
    this.channels.set(relid, t);
    return t;
  }

  closeChannel(relid: number): void {
    this.channels.get(relid)?.close();
    this.channels.delete(relid);
  }

  private async loop(): Promise<void> {
    try {
      for await (const [b] of this.sock) {
        if (!b || b.length < FRAME_HEADER) continue;
        this.channels.get(b.readUInt32LE(0))?.onFrame(b);
      }
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  close(): void {
    this.closed = true;
    this.q.close();
    this.sock.close();
  }
}
