/**
 * hvlab's link layer: TCP proxies that apply a link's impairments in user space, because this
 * kernel has no `netem` qdisc. A `Link` holds one link's impairments, seed and counters; a
 * `LinkProxy` listens for one direction of it (connections from host a to host b) and forwards to
 * the target host's port. The cluster's fabric (fabric.ts) holds one Link per linked pair of hosts
 * and one LinkProxy per direction, so every byte between two hosts passes one.
 *
 * Each direction of each connection is modelled as a link with a queue:
 *   - rate: a chunk of n bytes occupies the link for n·8/rate s after the previous one left it
 *     (a token bucket with no burst), so a bulk transfer runs at the rate;
 *   - delay and jitter are round-trip figures, as ping shows them (and as containerlab's netem on
 *     one end gives them): each chunk travels `(delay ± jitter) / 2` each way (jitter drawn
 *     uniformly from a seeded generator), so a request and its answer take `delay` more; a
 *     stream is never reordered, so a chunk leaves no earlier than the one before it;
 *   - loss: a TCP stream cannot lose bytes, so a lost chunk costs what TCP pays for it, a
 *     retransmission timeout (200 ms, Linux's minimum RTO, plus the round-trip delay) before it
 *     arrives; whatever follows it waits behind it;
 *   - cut: nothing is delivered while the link is cut; what was sent waits and flows on heal (as
 *     TCP retransmits through a short outage).
 * Impairments are set independently (`set({ delayMs })` keeps the rate) and take effect for what
 * is sent from then on. The same seed gives the same draws in the same order.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { seededRandom } from '@hvlab/protocol';
import type { LinkImpairments, LinkChange, LinkView } from '@hvlab/protocol';

/** Linux's minimum retransmission timeout (ms): what a lost segment costs a TCP stream at least. */
export const MIN_RTO_MS = 200;
/** Queued bytes per direction past which the sender is paused (backpressure). */
export const LINK_QUEUE_BYTES = 1024 * 1024;

export interface LinkState extends LinkImpairments {
  cut: boolean;
  seed: number;
}

export interface LinkStats {
  connections: number;
  bytes: [number, number];
  chunks: [number, number];
  lost: number;
}

interface Pending {
  chunk: Buffer;
  at: number;
}

/** One direction of one connection: the queue, the link's busy-until time and the release timer. */
class Direction {
  private readonly queue: Pending[] = [];
  private queued = 0;
  private linkFreeAt = 0;
  private lastRelease = 0;
  private timer: NodeJS.Timeout | null = null;
  private immediate = false;
  private paused = false;
  /** The target's socket is full (the kernel's buffer and Node's): reading waits for 'drain'. */
  private writeBlocked = false;

  constructor(
    private readonly link: Link,
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly dir: 0 | 1,
  ) {
    from.on('data', (chunk: Buffer) => this.accept(chunk));
    from.on('end', () => this.flushThenEnd());
    to.on('drain', () => {
      this.writeBlocked = false;
      if (!this.paused) from.resume();
    });
  }

  /** Writes to the target; a target that does not keep up pauses the sender, so nothing piles up here. */
  private send(chunk: Buffer): void {
    if (this.to.destroyed) return;
    if (!this.to.write(chunk) && !this.writeBlocked) {
      this.writeBlocked = true;
      this.from.pause();
    }
  }

  private ending = false;

  private accept(chunk: Buffer): void {
    const now = performance.now();
    const st = this.link.state;
    let at = now;
    if (st.rateBps !== undefined && st.rateBps > 0) {
      this.linkFreeAt = Math.max(this.linkFreeAt, now) + (chunk.length * 8 * 1000) / st.rateBps;
      at = this.linkFreeAt;
    }
    at += this.link.drawDelay();
    if (this.link.drawLoss()) at += MIN_RTO_MS + (st.delayMs ?? 0);
    // A stream is never reordered.
    at = Math.max(at, this.lastRelease);
    this.lastRelease = at;
    this.link.stats.bytes[this.dir] += chunk.length;
    this.link.stats.chunks[this.dir]++;
    // Due now, nothing ahead of it, link up: straight through (a timer costs at least 1 ms).
    if (at <= now && this.queue.length === 0 && !this.link.state.cut) {
      this.send(chunk);
      return;
    }
    this.queue.push({ chunk, at });
    this.queued += chunk.length;
    if (this.queued > LINK_QUEUE_BYTES && !this.paused) {
      this.paused = true;
      this.from.pause();
    }
    this.schedule();
  }

  /** Arms the timer for the head of the queue (nothing while the link is cut). */
  schedule(): void {
    if (this.timer || this.queue.length === 0 || this.link.state.cut) return;
    const wait = this.queue[0]!.at - performance.now();
    if (wait < 1) {
      // Node's timers have a 1 ms floor: what is due within it goes on the next turn.
      const t = setImmediate(() => {
        this.timer = null;
        this.release();
      });
      this.timer = t as unknown as NodeJS.Timeout;
      this.immediate = true;
      return;
    }
    this.immediate = false;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.release();
    }, wait);
  }

  private release(): void {
    if (this.link.state.cut) return;
    const now = performance.now();
    while (this.queue.length > 0 && this.queue[0]!.at <= now + 0.25) {
      const p = this.queue.shift()!;
      this.queued -= p.chunk.length;
      this.send(p.chunk);
    }
    if (this.paused && this.queued <= LINK_QUEUE_BYTES / 2) {
      this.paused = false;
      if (!this.writeBlocked) this.from.resume();
    }
    if (this.queue.length === 0 && this.ending) this.to.end();
    this.schedule();
  }

  private flushThenEnd(): void {
    this.ending = true;
    if (this.queue.length === 0) this.to.end();
  }

  close(): void {
    if (this.timer) {
      if (this.immediate) clearImmediate(this.timer as unknown as NodeJS.Immediate);
      else clearTimeout(this.timer);
    }
    this.timer = null;
    this.queue.length = 0;
  }
}

/** One link between two hosts: its impairments, its seeded draws, its counters and its proxies. */
export class Link {
  state: LinkState;
  readonly stats: LinkStats = { connections: 0, bytes: [0, 0], chunks: [0, 0], lost: 0 };
  private random: () => number;
  /** Directions of live connections, rescheduled on heal. */
  readonly live = new Set<{ dirs: Direction[] }>();

  constructor(readonly a: string, readonly b: string, impairments: LinkImpairments = {}, seed = 1) {
    this.state = { ...impairments, cut: false, seed };
    this.random = seededRandom(seed);
  }

  /** Sets impairments, each independently: what is not named keeps its value; `null` clears one. */
  set(change: LinkChange): void {
    for (const k of ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const) {
      if (!(k in change)) continue;
      const v = change[k];
      if (v === null || v === undefined) delete this.state[k];
      else this.state[k] = v;
    }
    if (change.seed !== undefined) {
      this.state.seed = change.seed;
      this.random = seededRandom(change.seed);
    }
  }

  /** Every impairment cleared and the link healed (the seed stays). */
  reset(): void {
    this.state = { cut: false, seed: this.state.seed };
    this.heal();
  }

  cut(): void {
    this.state.cut = true;
  }

  heal(): void {
    this.state.cut = false;
    for (const c of this.live) for (const d of c.dirs) d.schedule();
  }

  /** One direction's delay of the next chunk: half of `delay ± jitter` (ms, never below 0). */
  drawDelay(): number {
    const d = this.state.delayMs ?? 0;
    const j = this.state.jitterMs ?? 0;
    return Math.max(0, j > 0 ? d + (this.random() * 2 - 1) * j : d) / 2;
  }

  /** Whether the next chunk is lost (and so retransmitted). */
  drawLoss(): boolean {
    const p = this.state.lossPercent ?? 0;
    if (p <= 0) return false;
    const lost = this.random() * 100 < p;
    if (lost) this.stats.lost++;
    return lost;
  }

  view(): LinkView {
    const v: LinkView = { a: this.a, b: this.b, cut: this.state.cut, seed: this.state.seed, bytes: [this.stats.bytes[0], this.stats.bytes[1]], lost: this.stats.lost, connections: this.stats.connections };
    for (const k of ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const) if (this.state[k] !== undefined) v[k] = this.state[k];
    return v;
  }
}

/**
 * One direction of a link: a TCP proxy from a listening address to a target. Bytes from the
 * connecting side count as direction `dir` of the link (0: a→b, 1: b→a), the answers as the other.
 */
export class LinkProxy {
  private server: Server | null = null;
  private readonly conns = new Set<{ a: Socket; b: Socket; dirs: Direction[] }>();

  constructor(readonly link: Link, readonly target: { host: string; port: number }, private readonly dir: 0 | 1 = 0) {}

  /** Listens on `host` (port 0: any); resolves with the port. */
  listen(host = '127.0.0.1', port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = createServer((a) => this.accept(a));
      server.once('error', reject);
      server.listen(port, host, () => {
        this.server = server;
        server.on('error', () => undefined);
        resolve((server.address() as { port: number }).port);
      });
    });
  }

  get port(): number | null {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : null;
  }

  private accept(a: Socket): void {
    a.setNoDelay(true);
    const b = connect(this.target.port, this.target.host);
    b.setNoDelay(true);
    const back = (1 - this.dir) as 0 | 1;
    const entry = { a, b, dirs: [new Direction(this.link, a, b, this.dir), new Direction(this.link, b, a, back)] };
    this.conns.add(entry);
    this.link.live.add(entry);
    this.link.stats.connections++;
    const drop = (): void => {
      for (const d of entry.dirs) d.close();
      a.destroy();
      b.destroy();
      this.conns.delete(entry);
      this.link.live.delete(entry);
    };
    a.on('error', drop);
    b.on('error', drop);
    a.on('close', drop);
    b.on('close', drop);
  }

  async close(): Promise<void> {
    for (const c of this.conns) {
      for (const d of c.dirs) d.close();
      c.a.destroy();
      c.b.destroy();
      this.link.live.delete(c);
    }
    this.conns.clear();
    const s = this.server;
    this.server = null;
    if (s) await new Promise((r) => s.close(() => r(undefined)));
  }
}
