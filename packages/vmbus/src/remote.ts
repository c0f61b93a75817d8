/**
 * The remote VMBus transport: the same packets a ring would carry (16-byte descriptor, payload
 * padded to 8), one per frame on a `FrameLink` (link.ts), with credit-based flow control standing
 * in for ring space. Each side starts with a window equal to the ring's usable bytes; a packet costs
 * what it would cost in a ring (`packetBytes`), and the reader returns credit as it consumes. A
 * sender that exceeds its credit, or a malformed frame, is a fault of that channel, exactly like a
 * bad ring, and of no other channel.
 *
 * `RemoteHub` is the host's end (a `FrameListener`; partitions prove who they are with a token the
 * VMWP put in the boot page) and `RemoteLink` the guest's (a `FrameLink`). Both multiplex every
 * channel of a partition over one link; frames are encoded and decoded in frames.ts. The
 * generation is the low 16 bits of the OPENCHANNEL open id, so frames of an earlier opening of the
 * same relid (a hot remove and add) are dropped rather than mistaken for the new one's.
 *
 * What a lossy link does (faults.ts makes one): a lost packet is lost (the device protocol above
 * times out); a lost credit grant stalls that channel's sender; a duplicated packet or grant
 * overruns the credit and faults that channel; a lost hello is sent again with the next channel
 * the guest opens. No frame, lost or malformed, throws out of either end.
 */
import { decodeRemoteFrame, encodeCreditFrame, encodeHelloFrame, encodePacketFrame, type RemoteFrame, type RemoteFrameError } from './frames.js';
import type { FrameLink, FrameListener } from './link.js';
import { packetBytes } from './ring.js';
import type { PacketTransport, TransportEvents } from './transport.js';
import { ZmqFrameLink, ZmqFrameListener } from './zmq-link.js';

export class RemoteProtocolError extends Error {
  override name = 'RemoteProtocolError';
}

type ChannelFrame = Extract<RemoteFrame, { kind: 'packet' | 'credit' }> | RemoteFrameError;

/** Frames a channel holds before it is started (the host may write before the guest listens). */
const MAX_EARLY_CHANNEL_FRAMES = 1024;

/** One channel end over a shared link. */
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
  private early: ChannelFrame[] = [];

  constructor(
    readonly relid: number,
    readonly generation: number,
    readonly window: number,
    private readonly sendFrame: (frame: Uint8Array) => void,
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
    this.sendFrame(encodePacketFrame(this.relid, this.generation, type, flags, transId, payload));
    return true;
  }

  /** A decoded frame for this channel (or the error of one whose header named it). */
  onFrame(f: ChannelFrame): void {
    if (this.closed || f.generation !== this.generation) return;
    if (!this.events) {
      // Held until the channel listens (a frame is the receiver's, so its payload view stays
      // valid). Past the bound the channel faults once it starts.
      if (this.early.length < MAX_EARLY_CHANNEL_FRAMES) this.early.push(f);
      else if (this.early.length === MAX_EARLY_CHANNEL_FRAMES) {
        this.early.push({ kind: 'error', error: `over ${MAX_EARLY_CHANNEL_FRAMES} frames arrived before the channel was started`, relid: this.relid, generation: this.generation });
      }
      return;
    }
    if (f.kind === 'error') return this.fault(new RemoteProtocolError(`channel ${this.name}: ${f.error}`));
    if (f.kind === 'credit') {
      if (this.credit + f.bytes > this.window) return this.fault(new RemoteProtocolError(`channel ${this.name}: credit grant of ${f.bytes} bytes exceeds the ${this.window}-byte window (${this.credit} held)`));
      this.credit += f.bytes;
      if (this.blocked) {
        this.blocked = false;
        this.events.writable();
      }
      return;
    }
    if (f.cost > this.peerCredit) return this.fault(new RemoteProtocolError(`channel ${this.name}: the peer sent ${f.cost} bytes with ${this.peerCredit} bytes of credit`));
    this.peerCredit -= f.cost;
    this.events.packet(f.type, f.flags, f.transId, f.payload);
    this.consumed += f.cost;
    if (this.consumed >= this.window / 4) this.grant();
    else if (!this.grantScheduled) {
      this.grantScheduled = true;
      setImmediate(() => {
        this.grantScheduled = false;
        this.grant();
      });
    }
  }

  private fault(e: RemoteProtocolError): void {
    if (this.closed) return;
    this.closed = true;
    this.early = [];
    this.events?.fault(e);
  }

  private grant(): void {
    if (this.consumed === 0 || this.closed) return;
    const n = this.consumed;
    this.peerCredit += n;
    this.consumed = 0;
    this.sendFrame(encodeCreditFrame(this.relid, this.generation, n));
  }

  close(): void {
    this.closed = true;
    this.early = [];
  }
}

export interface RemoteLog {
  warn: (o: object, m?: string) => void;
}

/** Hub log lines about refused peers: at most this many a second, so a flood cannot fill a disk. */
const REFUSAL_LOG_PER_SECOND = 10;

/** The host's end: one listener for every partition it serves. */
export class RemoteHub {
  private readonly listener: FrameListener;
  private readonly tokens = new Map<number, string>();
  /** The link each partition said hello on. */
  private readonly peers = new Map<number, FrameLink>();
  private readonly partitionOf = new Map<FrameLink, number>();
  private readonly channels = new Map<string, RemoteTransport>();
  private readonly early = new Map<number, Uint8Array[]>();
  private closed = false;
  private refusals = { second: 0, logged: 0 };
  readonly stats = { badFrames: 0, refusedHellos: 0, unknownPeerFrames: 0, lostLinks: 0 };

  /** `listener`: the frame transport to serve on (default: a ZeroMQ ROUTER bound at `endpoint`). */
  constructor(readonly endpoint: string, private readonly log?: RemoteLog, listener?: FrameListener) {
    this.listener = listener ?? new ZmqFrameListener(endpoint, { onError: (e) => this.log?.warn({ err: String(e) }, 'remote VMBus listener error') });
  }

  async bind(): Promise<void> {
    this.listener.onLink((link) => {
      link.onFrame((f) => this.onFrame(link, f));
      link.onLost?.((why) => this.lost(link, why));
    });
    await this.listener.bind();
  }

  /** Accept hellos from `partitionId` carrying `token`. */
  admit(partitionId: number, token: string): void {
    this.tokens.set(partitionId, token);
  }

  forget(partitionId: number): void {
    this.tokens.delete(partitionId);
    const link = this.peers.get(partitionId);
    if (link) {
      this.partitionOf.delete(link);
      link.close();
    }
    this.peers.delete(partitionId);
    this.early.delete(partitionId);
    for (const k of [...this.channels.keys()]) if (k.startsWith(`${partitionId}:`)) this.channels.delete(k);
  }

  /** A channel end for (partition, relid); frames go out once the partition has said hello. */
  open(partitionId: number, relid: number, openId: number, window: number, name: string): RemoteTransport {
    const t = new RemoteTransport(relid, openId & 0xffff, window, (f) => {
      const link = this.peers.get(partitionId);
      if (link && !link.closed) link.send(f);
      else {
        // The guest's hello may still be on its way (it travels apart from the SynIC message
        // that opened the channel): hold the frames until it arrives. Credits bound them.
        const q = this.early.get(partitionId) ?? [];
        q.push(f);
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

  private refused(o: object, why: string): void {
    const s = Math.floor(Date.now() / 1000);
    if (s !== this.refusals.second) this.refusals = { second: s, logged: 0 };
    if (this.refusals.logged++ < REFUSAL_LOG_PER_SECOND) this.log?.warn(o, why);
  }

  /** Every frame of every peer comes here, decoded once; nothing a peer sends can throw out of it. */
  private onFrame(link: FrameLink, bytes: Uint8Array): void {
    if (this.closed) return;
    const f = decodeRemoteFrame(bytes);
    if (f.kind === 'hello') return this.hello(link, f.partitionId, f.token);
    const pid = this.partitionOf.get(link);
    if (pid === undefined) {
      // A peer that has not introduced itself: forget it (it is heard again once it says hello).
      this.stats.unknownPeerFrames++;
      link.close();
      return;
    }
    if (f.kind === 'error') {
      this.stats.badFrames++;
      if (f.relid === null) return this.refused({ partition: pid, err: f.error }, 'malformed remote VMBus frame dropped');
    }
    if (f.relid !== null) this.channels.get(`${pid}:${f.relid}`)?.onFrame(f);
  }

  /**
   * A partition's link lost a frame (it stopped reading): every channel of it faults, as a bad ring
   * would, since a lost packet or credit grant would stall it for good with nobody told. Its other
   * partitions' links go on. It is heard again once it says hello on a new connection.
   */
  private lost(link: FrameLink, why: string): void {
    const pid = this.partitionOf.get(link);
    if (pid === undefined) return;
    this.stats.lostLinks++;
    this.partitionOf.delete(link);
    if (this.peers.get(pid) === link) this.peers.delete(pid);
    this.refused({ partition: pid, err: why }, 'remote VMBus link lost: its channels fault');
    for (const [k, t] of [...this.channels]) {
      if (k.startsWith(`${pid}:`)) t.onFrame({ kind: 'error', error: `the link to the guest was lost: ${why}`, relid: t.relid, generation: t.generation });
    }
  }

  private hello(link: FrameLink, pid: number, token: string): void {
    const expected = this.tokens.get(pid);
    if (expected === undefined || expected !== token) {
      this.stats.refusedHellos++;
      this.refused({ partition: pid }, 'remote VMBus hello with a bad token refused');
      if (!this.partitionOf.has(link)) link.close();
      return;
    }
    const prev = this.peers.get(pid);
    if (prev === link) return; // a repeated hello (the guest repeats it with each channel it opens)
    if (prev) {
      // The partition came back on a new connection: the old one no longer speaks for it.
      this.partitionOf.delete(prev);
      prev.close();
    }
    const old = this.partitionOf.get(link);
    if (old !== undefined && old !== pid) this.peers.delete(old);
    this.peers.set(pid, link);
    this.partitionOf.set(link, pid);
    for (const f of this.early.get(pid) ?? []) link.send(f);
    this.early.delete(pid);
  }

  close(): void {
    this.closed = true;
    this.listener.close();
  }
}

/** The guest's end: one link for every remote channel of the partition. */
export class RemoteLink {
  private readonly link: FrameLink;
  private readonly hello: Uint8Array;
  private readonly channels = new Map<number, RemoteTransport>();
  readonly stats = { badFrames: 0 };

  /** `link`: the frame transport to the hub (default: a ZeroMQ DEALER connected to `endpoint`). */
  constructor(readonly endpoint: string, partitionId: number, token: string, link?: FrameLink) {
    this.link = link ?? new ZmqFrameLink(endpoint);
    this.hello = encodeHelloFrame(partitionId, token);
    this.link.onFrame((f) => this.onFrame(f));
    this.link.send(this.hello.slice());
  }

  open(relid: number, openId: number, window: number, name: string): RemoteTransport {
    // Hello again: idempotent at the hub, and it repairs a hello that was lost.
    this.link.send(this.hello.slice());
    const t = new RemoteTransport(relid, openId & 0xffff, window, (f) => this.link.send(f), name);
    this.channels.set(relid, t);
    return t;
  }

  closeChannel(relid: number): void {
    this.channels.get(relid)?.close();
    this.channels.delete(relid);
  }

  private onFrame(bytes: Uint8Array): void {
    const f = decodeRemoteFrame(bytes);
    if (f.kind === 'hello') return; // only the guest says hello
    if (f.kind === 'error') this.stats.badFrames++;
    if (f.relid !== null) this.channels.get(f.relid)?.onFrame(f);
  }

  close(): void {
    this.link.close();
  }
}
