/**
 * Fault injection for VMBus transports, by wrapping and never by patching (ARCHITECTURE §9): a
 * `FaultyLink` or `FaultyListener` sits between a remote end and its real frame link and decides
 * the fate of every frame (drop, delay, duplicate, reorder, corrupt); a `SignalFault` wraps the
 * signal function a shared-memory transport is given. `randomFrameFaults` and
 * `randomSignalFaults` draw those decisions from a seed, so a failing run replays.
 */
import type { FrameHandler, FrameLink, FrameListener } from './link.js';
import { seededRandom } from '@hvlab/protocol';

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
    const f = this.faults.receive;
    this.inner.onFrame(f ? (frame) => f(frame, (g) => !this.inner.closed && handler(g)) : handler);
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
