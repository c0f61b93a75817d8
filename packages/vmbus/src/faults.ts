/**
 * Fault injection for VMBus, by wrapping and never by patching (ARCHITECTURE §9).
 *
 * Frames and signals, for tests of the transports: a `FaultyLink` or `FaultyListener` sits between
 * a remote end and its real frame link and decides the fate of every frame (drop, delay,
 * duplicate, reorder, corrupt); `faultySignal` wraps the signal function a shared-memory transport
 * is given. `randomFrameFaults` and `randomSignalFaults` draw those decisions from a seed.
 *
 * Packets and signals of a live channel, for the fault API's `vmbus` kind (the VMWP's `faultSet`):
 * a `VmbusFaultInjector` handed to a `VmbusServer` wraps every channel end the server opens in a
 * `FaultyTransport` (a `PacketTransport` around the real one, rings or remote) with a mutable slot
 * of active `VmbusFault`s, so a fault is switched on and off on an open channel without reopening
 * it. Faults act at the host's end of the channel:
 *   - packets the host sends and receives are dropped, duplicated, held back behind the next one
 *     (reorder) or corrupted, each with its probability; packets the host SENDS are also delayed
 *     by exactly `delayMs` (in order), so every round trip, which has one packet each way, grows
 *     by exactly the delay;
 *   - signals: on rings, the host's signal to the guest and the guest's to the host (the
 *     interrupt the host takes) are dropped, and the host's delayed by `signalDelayMs`; on the
 *     remote transport, which needs no signal to carry a packet, the host end's signals are its
 *     credit grants (the counterpart of a ring's "room is free" signal), wrapped on the hub's
 *     frame link (`linkFaults` for a FaultyListener).
 * Corruption flips bits of a packet's payload, never of the ring's or frame's framing: the
 * device's checking decoders see a bad message (and must refuse it); the transport stays sound.
 * A device that names the bytes its receiver decodes (`VmbusDevice.decodedRanges`) has only those
 * flipped: a KVP message is 2.6 KB of mostly padding, where a flip anywhere had almost no effect.
 * Duplicates are real second sends (a ring write, a frame with its own credit), never a copy on
 * the wire that would break the credit accounting and close the channel for good.
 * Everything is undone when a fault ends: what it held (delayed and held-back packets, delayed
 * signals) goes out at once, and a signal or credit grant it dropped is made up by one signal (or
 * one grant of the bytes lost), so a channel stalled by lost signals moves again. Draws come from
 * the fault's seed, one stream per channel and direction: the same seed, the same fates for the
 * same packets.
 */
import type { FrameHandler, FrameLink, FrameListener } from './link.js';
import { seededRandom } from '@hvlab/protocol';
import { encodeCreditFrame, FrameKind, FRAME_HEADER_BYTES } from './frames.js';
import type { OutboundPacket, PacketTransport, TransportEvents } from './transport.js';

/**
 * The byte ranges [start, end) of a packet's payload that its receiver decodes; it must not throw
 * (it sees what a guest sent). Out-of-bounds parts are ignored; none at all means the whole payload.
 */
export type DecodedRanges = (payload: Uint8Array) => ReadonlyArray<readonly [number, number]>;

/** What becomes of one frame: `deliver` is called zero or more times, now or later, with it or other bytes. */
export type FrameFault = (frame: Uint8Array, deliver: (frame: Uint8Array) => void) => void;

export interface LinkFaults {
  /** Frames this end sends. */
  send?: FrameFault;
  /** Frames this end receives. */
  receive?: FrameFault;
}

export class FaultyLink implements FrameLink {
  constructor(private readonly inner: FrameLink, private readonly faults: LinkFaults) {}

  get closed(): boolean {
    return this.inner.closed;
  }

  send(frame: Uint8Array): void {
    const f = this.faults.send;
    if (!f) return this.inner.send(frame);
    f(frame, (g) => this.inner.send(g));
  }

  onFrame(handler: FrameHandler): void {
    // The receive fault is looked up per frame, so it can be switched on and off on a live link.
    this.inner.onFrame((frame) => {
      const f = this.faults.receive;
      if (!f) return handler(frame);
      f(frame, (g) => !this.inner.closed && handler(g));
    });
  }

  close(): void {
    this.inner.close();
  }
}

/** A listener whose every peer link is a FaultyLink with the faults `faultsFor` picks for it. */
export class FaultyListener implements FrameListener {
  constructor(private readonly inner: FrameListener, private readonly faultsFor: (link: FrameLink) => LinkFaults) {}

  get endpoint(): string {
    return this.inner.endpoint;
  }

  onLink(handler: (link: FrameLink) => void): void {
    this.inner.onLink((l) => handler(new FaultyLink(l, this.faultsFor(l))));
  }

  bind(): Promise<void> {
    return this.inner.bind();
  }

  close(): void {
    this.inner.close();
  }
}

export { seededRandom };

/** Probabilities per frame (0..1); `delayMs` is the longest delay. */
export interface FrameFaultRates {
  drop?: number;
  duplicate?: number;
  corrupt?: number;
  reorder?: number;
  delay?: number;
  delayMs?: number;
  /** Only frames this accepts are subject to faults (e.g. one channel's); others pass untouched. */
  only?: (frame: Uint8Array) => boolean;
}

export interface FaultStats {
  seen: number;
  dropped: number;
  duplicated: number;
  corrupted: number;
  reordered: number;
  delayed: number;
}

/** A frame fault drawn from `seed`: each eligible frame is dropped, corrupted, delayed, held back one frame, or duplicated. */
export function randomFrameFaults(seed: number, rates: FrameFaultRates): FrameFault & { stats: FaultStats } {
  const rnd = seededRandom(seed);
  const stats: FaultStats = { seen: 0, dropped: 0, duplicated: 0, corrupted: 0, reordered: 0, delayed: 0 };
  let held: { frame: Uint8Array; deliver: (f: Uint8Array) => void; timer: NodeJS.Timeout } | null = null;
  const release = (): void => {
    const h = held;
    held = null;
    if (!h) return;
    clearTimeout(h.timer);
    h.deliver(h.frame);
  };
  const fault = (frame: Uint8Array, deliver: (f: Uint8Array) => void): void => {
    if (rates.only && !rates.only(frame)) {
      deliver(frame);
      release();
      return;
    }
    stats.seen++;
    if (rnd() < (rates.drop ?? 0)) {
      stats.dropped++;
      return;
    }
    let f = frame;
    if (rnd() < (rates.corrupt ?? 0) && f.length > 0) {
      stats.corrupted++;
      f = f.slice();
      const i = Math.floor(rnd() * f.length);
      f[i] = f[i]! ^ (1 + Math.floor(rnd() * 255));
    }
    const copies = rnd() < (rates.duplicate ?? 0) ? 2 : 1;
    if (copies === 2) stats.duplicated++;
    const out = (g: Uint8Array): void => {
      for (let c = 0; c < copies; c++) deliver(c === 0 ? g : g.slice());
    };
    if (rnd() < (rates.delay ?? 0)) {
      stats.delayed++;
      setTimeout(() => out(f), Math.floor(rnd() * (rates.delayMs ?? 10))).unref();
      return;
    }
    if (!held && rnd() < (rates.reorder ?? 0)) {
      // Held until the next frame has gone (or briefly, if none follows).
      stats.reordered++;
      held = { frame: f, deliver: out, timer: setTimeout(release, 5) };
      held.timer.unref();
      return;
    }
    out(f);
    release();
  };
  return Object.assign(fault, { stats });
}

/** What becomes of one signal: call `deliver` zero or more times, now or later. */
export type SignalFault = (deliver: () => void) => void;

/** `signal` with `fault` applied to every call. */
export function faultySignal(signal: () => void, fault: SignalFault): () => void {
  return () => fault(signal);
}

export function randomSignalFaults(seed: number, rates: { drop?: number; duplicate?: number; delay?: number; delayMs?: number }): SignalFault & { stats: FaultStats } {
  const rnd = seededRandom(seed);
  const stats: FaultStats = { seen: 0, dropped: 0, duplicated: 0, corrupted: 0, reordered: 0, delayed: 0 };
  const fault = (deliver: () => void): void => {
    stats.seen++;
    if (rnd() < (rates.drop ?? 0)) {
      stats.dropped++;
      return;
    }
    const copies = rnd() < (rates.duplicate ?? 0) ? 2 : 1;
    if (copies === 2) stats.duplicated++;
    const out = (): void => {
      for (let c = 0; c < copies; c++) deliver();
    };
    if (rnd() < (rates.delay ?? 0)) {
      stats.delayed++;
      setTimeout(out, Math.floor(rnd() * (rates.delayMs ?? 10))).unref();
    } else out();
  };
  return Object.assign(fault, { stats });
}

// ---- faults on live channels (the fault API's `vmbus` kind) ------------------------------------

/** How long a packet picked for reordering waits for the next one to overtake it (ms). */
export const REORDER_HOLD_MS = 20;
/** Packets one channel end holds back (delayed or reordered) at most; past it the channel queues its sends. */
export const MAX_HELD_PACKETS = 1024;

/** Probabilities (0..1) and delays (ms) of a VMBus fault; absent ones are 0. */
export interface VmbusFaultRates {
  drop?: number;
  /** Packets the host sends wait exactly `delayMs`. */
  delay?: number;
  delayMs?: number;
  duplicate?: number;
  reorder?: number;
  corrupt?: number;
  signalDrop?: number;
  /** Signals (or credit grants) the host sends wait exactly `signalDelayMs`. */
  signalDelay?: number;
  signalDelayMs?: number;
}

export interface VmbusFaultOptions extends VmbusFaultRates {
  /** Only the channels of the device of this name (e.g. heartbeat); null: every channel. */
  channel: string | null;
  seed: number;
}

export interface VmbusFaultStats {
  packets: { seen: number; dropped: number; delayed: number; duplicated: number; reordered: number; corrupted: number };
  signals: { seen: number; dropped: number; delayed: number };
}

type Direction = 'out' | 'in';

interface PacketFate {
  drop: boolean;
  /** Byte flips: [position as a fraction of the payload, XOR mask 1..255]. */
  flips: Array<[number, number]>;
  copies: number;
  delayMs: number;
  /** The faults that picked this packet to be held back (counted only if it is). */
  reorderBy: VmbusFault[];
}

const clock = (): number => performance.now();

/** FNV-1a of a string: a channel's and direction's stream of draws from one seed. */
function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * One VMBus fault: its rates, its draws and its counters. It may sit on several channel ends at
 * once (channel null: all of a VM's); each end and direction draws from its own stream of the
 * seed, and every packet takes the same number of draws whatever its fate, so the fates of a
 * channel's packets do not depend on what other channels do.
 */
export class VmbusFault {
  readonly stats: VmbusFaultStats = {
    packets: { seen: 0, dropped: 0, delayed: 0, duplicated: 0, reordered: 0, corrupted: 0 },
    signals: { seen: 0, dropped: 0, delayed: 0 },
  };
  private readonly streams = new Map<string, () => number>();

  constructor(readonly options: VmbusFaultOptions) {}

  appliesTo(channelName: string): boolean {
    return this.options.channel === null || this.options.channel === channelName;
  }

  private stream(channelName: string, what: string): () => number {
    const k = `${channelName}\u0000${what}`;
    let r = this.streams.get(k);
    if (!r) {
      r = seededRandom((this.options.seed ^ Math.imul(fnv(k), 0x9e3779b1)) >>> 0);
      this.streams.set(k, r);
    }
    return r;
  }

  /** Draws one packet's fate (7 draws) and counts it. */
  drawPacket(channelName: string, dir: Direction, fate: PacketFate, length: number): void {
    const o = this.options;
    const rnd = this.stream(channelName, `packet-${dir}`);
    const r = [rnd(), rnd(), rnd(), rnd(), rnd(), rnd(), rnd()] as const;
    const s = this.stats.packets;
    s.seen++;
    if (r[0] < (o.drop ?? 0)) {
      s.dropped++;
      fate.drop = true;
      return;
    }
    if (r[1] < (o.corrupt ?? 0) && length > 0) {
      s.corrupted++;
      fate.flips.push([r[2], 1 + Math.floor(r[3] * 255)]);
    }
    if (r[4] < (o.duplicate ?? 0)) {
      s.duplicated++;
      fate.copies *= 2;
    }
    if (dir === 'out' && r[5] < (o.delay ?? 0) && (o.delayMs ?? 0) > 0) {
      s.delayed++;
      fate.delayMs += o.delayMs!;
    }
    if (r[6] < (o.reorder ?? 0)) fate.reorderBy.push(this);
  }

  /** Draws one signal's fate (2 draws) and counts it. */
  drawSignal(channelName: string, dir: Direction, fate: { drop: boolean; delayMs: number }): void {
    const o = this.options;
    const rnd = this.stream(channelName, `signal-${dir}`);
    const r0 = rnd();
    const r1 = rnd();
    const s = this.stats.signals;
    s.seen++;
    if (r0 < (o.signalDrop ?? 0)) {
      s.dropped++;
      fate.drop = true;
    } else if (dir === 'out' && r1 < (o.signalDelay ?? 0) && (o.signalDelayMs ?? 0) > 0) {
      s.delayed++;
      fate.delayMs += o.signalDelayMs!;
    }
  }
}

interface HeldPacket {
  type: number;
  flags: number;
  transId: bigint;
  payload: Uint8Array;
  copies: number;
  /** When it may go (performance.now() ms). */
  at: number;
  /** Held back until the next packet has overtaken it. */
  holding: boolean;
}

/** A lost credit grant to make up: the bytes of the grants dropped since, for one generation. */
interface LostCredit {
  generation: number;
  bytes: number;
  deliver: (frame: Uint8Array) => void;
}

/**
 * One channel end (a `PacketTransport`) with a mutable slot of faults: with none, and nothing
 * held, every call goes straight to the real transport. Packets it holds back wait in order in its
 * own queue (at most MAX_HELD_PACKETS; past that its sends return false and the channel queues,
 * as with a full ring); they count as the channel's queued packets in a saved state.
 */
export class FaultyTransport implements PacketTransport {
  private faults: readonly VmbusFault[] = [];
  private events: TransportEvents | null = null;
  private readonly out: HeldPacket[] = [];
  private outTimer: NodeJS.Timeout | null = null;
  private heldIn: (Omit<HeldPacket, 'at' | 'holding'> & { timer: NodeJS.Timeout }) | null = null;
  /** The real transport refused a send and owes a `writable`. */
  private innerFull = false;
  /** This end refused a send (or passed on a refusal) and owes the channel a `writable`. */
  private owesWritable = false;
  private pumping = false;
  private closed = false;
  private readonly delayedSignals = new Map<NodeJS.Timeout, () => void>();
  private lostSignal: Record<Direction, (() => void) | null> = { out: null, in: null };
  private lostCredit: Record<Direction, LostCredit | null> = { out: null, in: null };

  constructor(
    readonly inner: PacketTransport, readonly relid: number, readonly channelName: string, private readonly onClosed: () => void = () => {},
    private readonly decoded: DecodedRanges | null = null,
  ) {}

  get kind(): 'shm' | 'remote' {
    return this.inner.kind;
  }

  get setPolled(): ((on: boolean) => void) | undefined {
    const inner = this.inner;
    return inner.setPolled ? (on) => inner.setPolled!(on) : undefined;
  }

  get poll(): (() => void) | undefined {
    const inner = this.inner;
    return inner.poll ? () => inner.poll!() : undefined;
  }

  get activeFaults(): readonly VmbusFault[] {
    return this.faults;
  }

  /** Packets held back now (sent and received). */
  get holding(): number {
    return this.out.reduce((n, h) => n + h.copies, 0) + (this.heldIn?.copies ?? 0);
  }

  /** Switches the faults of this end; any fault taken off releases everything held (see `release`). */
  setFaults(faults: readonly VmbusFault[]): void {
    const removed = this.faults.some((f) => !faults.includes(f));
    this.faults = [...faults];
    if (removed) this.release();
  }

  /**
   * Lets go of everything held: held-back packets go now, in their order; delayed signals fire; a
   * dropped signal is made up by one, a dropped credit grant by one grant of the bytes lost.
   */
  release(): void {
    if (this.closed) return;
    const now = clock();
    for (const h of this.out) {
      h.at = Math.min(h.at, now);
      h.holding = false;
    }
    this.pump();
    this.releaseIn();
    for (const [t, fire] of [...this.delayedSignals]) {
      clearTimeout(t);
      this.delayedSignals.delete(t);
      fire();
    }
    for (const d of ['out', 'in'] as const) {
      const s = this.lostSignal[d];
      this.lostSignal[d] = null;
      s?.();
      const c = this.lostCredit[d];
      this.lostCredit[d] = null;
      if (c) c.deliver(encodeCreditFrame(this.relid, c.generation, c.bytes));
    }
  }

  attach(events: TransportEvents): void {
    this.events = events;
    this.inner.attach({
      packet: (type, flags, transId, payload) => this.receive(type, flags, transId, payload),
      writable: () => {
        this.innerFull = false;
        this.pump();
      },
      fault: (e) => {
        // The real end closed itself: nothing held goes out any more.
        this.stop();
        events.fault(e);
      },
    });
  }

  private fate(dir: Direction, length: number): PacketFate {
    const fate: PacketFate = { drop: false, flips: [], copies: 1, delayMs: 0, reorderBy: [] };
    for (const f of this.faults) f.drawPacket(this.channelName, dir, fate, length);
    return fate;
  }

  /** A copy of `payload` with each flip at its fraction of the bytes the receiver decodes (all of them if unknown). */
  private corrupt(payload: Uint8Array, flips: Array<[number, number]>): Uint8Array {
    const p = payload.slice();
    let ranges: Array<[number, number]> = [];
    try {
      for (const [a, b] of this.decoded?.(p) ?? []) {
        const lo = Math.max(0, Math.floor(a));
        const hi = Math.min(p.length, Math.floor(b));
        if (hi > lo) ranges.push([lo, hi]);
      }
    } catch {
      ranges = [];
    }
    if (ranges.length === 0) ranges = [[0, p.length]];
    const total = ranges.reduce((n, [a, b]) => n + b - a, 0);
    for (const [at, mask] of flips) {
      // The flip's place among the decoded bytes, then which range holds it.
      let k = Math.min(total - 1, Math.floor(at * total));
      for (const [a, b] of ranges) {
        if (k < b - a) {
          p[a + k] = p[a + k]! ^ mask;
          break;
        }
        k -= b - a;
      }
    }
    return p;
  }

  send(type: number, flags: number, transId: bigint, payload: Uint8Array): boolean {
    if (this.closed) return false;
    if (this.faults.length === 0 && this.out.length === 0) {
      const ok = this.inner.send(type, flags, transId, payload);
      if (!ok) {
        this.innerFull = true;
        this.owesWritable = true;
      }
      return ok;
    }
    if (this.out.length >= MAX_HELD_PACKETS) {
      this.owesWritable = true;
      return false;
    }
    const fate = this.fate('out', payload.length);
    if (fate.drop) return true;
    // A copy always: the caller may reuse its buffer once send returns.
    const p = fate.flips.length > 0 ? this.corrupt(payload, fate.flips) : payload.slice();
    const at0 = clock() + fate.delayMs;
    const tail = this.out[this.out.length - 1];
    if (tail?.holding) {
      // This packet overtakes the one held back, which goes right after it.
      const at = Math.max(at0, this.out[this.out.length - 2]?.at ?? 0);
      this.out.splice(this.out.length - 1, 0, { type, flags, transId, payload: p, copies: fate.copies, at, holding: false });
      tail.at = at;
      tail.holding = false;
    } else {
      const at = Math.max(at0, tail?.at ?? 0);
      const hold = fate.reorderBy.length > 0;
      if (hold) for (const f of fate.reorderBy) f.stats.packets.reordered++;
      this.out.push({ type, flags, transId, payload: p, copies: fate.copies, at: hold ? at + REORDER_HOLD_MS : at, holding: hold });
    }
    this.pump();
    return true;
  }

  /**
   * With no fault on and nothing held, the real transport's burst (a ring publishes its write index
   * once); else packet by packet through `send`, each drawing its fate.
   */
  sendBurst(packets: ReadonlyArray<OutboundPacket>): number {
    if (this.closed) return 0;
    const inner = this.inner;
    if (this.faults.length === 0 && this.out.length === 0 && inner.sendBurst) {
      const n = inner.sendBurst(packets);
      if (n < packets.length) {
        this.innerFull = true;
        this.owesWritable = true;
      }
      return n;
    }
    let n = 0;
    for (const p of packets) {
      if (!this.send(p.type, p.flags, p.transId, p.payload)) break;
      n++;
    }
    return n;
  }

  /** Sends the held packets that are due, in order, while the real transport takes them. */
  private pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      while (this.out.length > 0 && !this.innerFull) {
        const h = this.out[0]!;
        if (h.at > clock()) break;
        let ok: boolean;
        try {
          ok = this.inner.send(h.type, h.flags, h.transId, h.payload);
        } catch {
          // The real end refuses this packet for good (it could never fit): it is lost.
          this.out.shift();
          continue;
        }
        if (!ok) {
          this.innerFull = true;
          break;
        }
        if (--h.copies === 0) this.out.shift();
      }
    } finally {
      this.pumping = false;
    }
    if (this.outTimer) clearTimeout(this.outTimer);
    this.outTimer = null;
    if (!this.innerFull && this.out.length > 0) {
      // setTimeout may fire a little early by performance.now(): pump checks and waits again.
      this.outTimer = setTimeout(() => {
        this.outTimer = null;
        this.pump();
      }, Math.max(1, Math.ceil(this.out[0]!.at - clock())));
      this.outTimer.unref?.();
    }
    if (this.owesWritable && !this.innerFull && this.out.length < MAX_HELD_PACKETS) {
      this.owesWritable = false;
      this.events?.writable();
    }
  }

  private receive(type: number, flags: number, transId: bigint, payload: Uint8Array): void {
    const ev = this.events!;
    if (this.faults.length === 0 && !this.heldIn) return ev.packet(type, flags, transId, payload);
    const fate = this.fate('in', payload.length);
    if (fate.drop) return;
    const p = fate.flips.length > 0 ? this.corrupt(payload, fate.flips) : payload;
    if (!this.heldIn && fate.reorderBy.length > 0) {
      for (const f of fate.reorderBy) f.stats.packets.reordered++;
      // Held past this call: a copy (a ring's payload is valid only during the call).
      const timer = setTimeout(() => this.releaseIn(), REORDER_HOLD_MS);
      timer.unref?.();
      this.heldIn = { type, flags, transId, payload: p === payload ? payload.slice() : p, copies: fate.copies, timer };
      return;
    }
    for (let c = 0; c < fate.copies && !this.closed; c++) ev.packet(type, flags, transId, p);
    this.releaseIn();
  }

  private releaseIn(): void {
    const h = this.heldIn;
    if (!h) return;
    this.heldIn = null;
    clearTimeout(h.timer);
    if (this.closed || !this.events) return;
    for (let c = 0; c < h.copies && !this.closed; c++) this.events.packet(h.type, h.flags, h.transId, h.payload);
  }

  private signalFate(dir: Direction): { drop: boolean; delayMs: number } {
    const fate = { drop: false, delayMs: 0 };
    for (const f of this.faults) f.drawSignal(this.channelName, dir, fate);
    return fate;
  }

  private later(ms: number, fire: () => void): void {
    const t = setTimeout(() => {
      this.delayedSignals.delete(t);
      if (!this.closed) fire();
    }, ms);
    t.unref?.();
    this.delayedSignals.set(t, fire);
  }

  /** A signal of this channel end: `out` the host's to the guest, `in` the guest's the host takes. */
  signal(dir: Direction, deliver: () => void): void {
    if (this.faults.length === 0 || this.closed) return deliver();
    const fate = this.signalFate(dir);
    if (fate.drop) {
      // Made up by one signal when the fault ends (signals are not counted: one stands for all).
      this.lostSignal[dir] = deliver;
      return;
    }
    if (fate.delayMs > 0) return this.later(fate.delayMs, deliver);
    deliver();
  }

  /** A credit grant of this (remote) channel end: `out` the host's to the guest, `in` the guest's. */
  credit(dir: Direction, generation: number, bytes: number, frame: Uint8Array, deliver: (frame: Uint8Array) => void): void {
    if (this.faults.length === 0 || this.closed) return deliver(frame);
    const fate = this.signalFate(dir);
    if (fate.drop) {
      const lost = this.lostCredit[dir];
      if (lost && lost.generation === generation) {
        lost.bytes += bytes;
        lost.deliver = deliver;
      } else this.lostCredit[dir] = { generation, bytes, deliver };
      return;
    }
    if (fate.delayMs > 0) return this.later(fate.delayMs, () => deliver(frame));
    deliver(frame);
  }

  heldPackets(): Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }> {
    const out: Array<{ type: number; flags: number; transId: bigint; payload: Uint8Array }> = [];
    for (const h of this.out) for (let c = 0; c < h.copies; c++) out.push({ type: h.type, flags: h.flags, transId: h.transId, payload: h.payload.slice() });
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.stop();
    this.inner.close();
  }

  private stop(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.outTimer) clearTimeout(this.outTimer);
    this.outTimer = null;
    this.out.length = 0;
    if (this.heldIn) clearTimeout(this.heldIn.timer);
    this.heldIn = null;
    for (const t of this.delayedSignals.keys()) clearTimeout(t);
    this.delayedSignals.clear();
    this.lostSignal = { out: null, in: null };
    this.lostCredit = { out: null, in: null };
    this.onClosed();
  }
}

/** A channel end as the injector sees it, for listings. */
export interface FaultyChannelInfo {
  relid: number;
  name: string;
  transport: 'shm' | 'remote';
  /** Ids of the faults on it now. */
  faults: string[];
  /** Packets held back now. */
  holding: number;
}

/**
 * The faults of one VMBus server (one VM): the active faults by id, and every open channel end
 * (by relid), each wrapped in a FaultyTransport. A `VmbusServer` given one (`env.faults`) wraps
 * the transports it opens (`wrap`) and passes its signals through `signalOut`/`signalIn`; a
 * remote hub's listener wrapped in `new FaultyListener(listener, () => injector.linkFaults)`
 * passes its credit grants through it. A fault set now applies at once to the open channels it
 * names and to those opened while it lasts.
 */
export class VmbusFaultInjector {
  private readonly active = new Map<string, VmbusFault>();
  private readonly ends = new Map<number, FaultyTransport>();
  /** For a FaultyListener on the remote hub: credit grants of faulted channels; every other frame passes. */
  readonly linkFaults: LinkFaults = {
    send: (frame, deliver) => this.onCredit('out', frame, deliver),
    receive: (frame, deliver) => this.onCredit('in', frame, deliver),
  };

  /**
   * Wraps a channel end the server opened; the wrapper unregisters itself when closed. `decoded`:
   * the bytes of a packet its receiver decodes, where corruption lands (else anywhere).
   */
  wrap(relid: number, channelName: string, transport: PacketTransport, decoded: DecodedRanges | null = null): FaultyTransport {
    const end: FaultyTransport = new FaultyTransport(transport, relid, channelName, () => {
      if (this.ends.get(relid) === end) this.ends.delete(relid);
    }, decoded);
    end.setFaults(this.faultsFor(channelName));
    this.ends.set(relid, end);
    return end;
  }

  /** The host signals the guest for channel `relid`. */
  signalOut(relid: number, deliver: () => void): void {
    const e = this.ends.get(relid);
    if (e) e.signal('out', deliver);
    else deliver();
  }

  /** The guest signalled channel `relid`. */
  signalIn(relid: number, deliver: () => void): void {
    const e = this.ends.get(relid);
    if (e) e.signal('in', deliver);
    else deliver();
  }

  /** Sets (or replaces) fault `id`; it applies at once to the channel ends it names. */
  set(id: string, fault: VmbusFault): void {
    this.active.set(id, fault);
    this.refresh();
  }

  /** Ends fault `id` (releasing what it held); null when there is none. */
  remove(id: string): VmbusFault | null {
    const f = this.active.get(id);
    if (!f) return null;
    this.active.delete(id);
    this.refresh();
    return f;
  }

  get(id: string): VmbusFault | null {
    return this.active.get(id) ?? null;
  }

  ids(): string[] {
    return [...this.active.keys()];
  }

  /** The open channel ends (those the server opened since this injector was given to it). */
  channels(): FaultyChannelInfo[] {
    return [...this.ends.values()].map((e) => ({
      relid: e.relid, name: e.channelName, transport: e.kind, holding: e.holding,
      faults: [...this.active].filter(([, f]) => e.activeFaults.includes(f)).map(([id]) => id),
    }));
  }

  private faultsFor(channelName: string): VmbusFault[] {
    return [...this.active.values()].filter((f) => f.appliesTo(channelName));
  }

  private refresh(): void {
    for (const e of [...this.ends.values()]) e.setFaults(this.faultsFor(e.channelName));
  }

  private onCredit(dir: Direction, frame: Uint8Array, deliver: (frame: Uint8Array) => void): void {
    if (this.active.size === 0 || frame.length !== FRAME_HEADER_BYTES + 4) return deliver(frame);
    const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    if (dv.getUint16(4, true) !== FrameKind.Credit) return deliver(frame);
    const end = this.ends.get(dv.getUint32(0, true));
    const bytes = dv.getUint32(FRAME_HEADER_BYTES, true);
    // A malformed grant is the decoder's to refuse, not ours to hold.
    if (!end || end.kind !== 'remote' || bytes === 0 || bytes % 8 !== 0) return deliver(frame);
    end.credit(dir, dv.getUint16(6, true), bytes, frame, deliver);
  }
}
