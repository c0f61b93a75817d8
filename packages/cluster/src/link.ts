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
 *
 * A connection of a link with no impairment and no cut is carried in the kernel: two splice pumps
 * of the shm addon (one per direction, each a native thread moving bytes socket → pipe → socket),
 * so its bytes never enter this process — what a cable does, at a fraction of the CPU of reading
 * and writing them here (on this 2-core machine a JavaScript proxy halved a bulk transfer's rate).
 * Setting an impairment or cutting the link stops the pumps and hands each connection to the
 * user-space path above, with what a pump held (at most 1 MiB) queued first; once the link is
 * clean again and a connection has nothing queued or unsent, it goes back to the kernel. Without
 * the addon (or with HVLAB_LINK_SPLICE=0) every connection takes the user-space path.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { seededRandom } from '@hvlab/protocol';
import { splicePumpAvailable, startSplicePump, type SplicePump } from '@hvlab/shm';
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

  private readonly onData = (chunk: Buffer): void => this.accept(chunk);
  private readonly onEnd = (): void => this.flushThenEnd();
  private readonly onDrain = (): void => {
    this.writeBlocked = false;
    if (!this.paused) this.from.resume();
  };

  constructor(
    private readonly link: Link,
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly dir: 0 | 1,
  ) {
    from.on('data', this.onData);
    from.on('end', this.onEnd);
    to.on('drain', this.onDrain);
  }

  /** The link's direction this carries (0: a→b). */
  get direction(): 0 | 1 {
    return this.dir;
  }

  /** Bytes held back here: queued under the link's impairments, and written but still in Node's buffer for the target. */
  get held(): number {
    return this.queued + this.to.writableLength;
  }

  /** Nothing queued, nothing waiting in the target's socket, the stream not ended: the connection may go to the kernel. */
  get idle(): boolean {
    return this.queue.length === 0 && this.timer === null && !this.ending && !this.writeBlocked && this.to.writableLength === 0 && this.from.readableLength === 0;
  }

  /** Takes this direction's listeners off the sockets (the connection goes to the kernel). */
  detach(): void {
    this.close();
    this.from.off('data', this.onData);
    this.from.off('end', this.onEnd);
    this.to.off('drain', this.onDrain);
  }

  /** Bytes a stopped pump had read and not delivered (counted as a chunk by it): they travel the link as if sent now. */
  takeOver(chunk: Buffer): void {
    if (chunk.length > 0) this.accept(chunk, false);
  }

  /** Writes to the target; a target that does not keep up pauses the sender, so nothing piles up here. */
  private send(chunk: Buffer): void {
    if (this.to.destroyed) return;
    if (!this.to.write(chunk) && !this.writeBlocked) {
      this.writeBlocked = true;
      this.from.pause();
    }
  }

  /** The sender's side has ended: what is queued goes, then the target's side is ended. */
  ending = false;

  accept(chunk: Buffer, newChunk = true): void {
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
    this.link.count(this.dir, chunk.length, newChunk ? 1 : 0);
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

  /**
   * The link's impairments changed: what is queued is planned again under them from now, never
   * later than it was (order kept). Chunks queued at 1 bit/s had release times hours ahead, and a
   * 'link reset' left the connection (the hosts' heartbeats) waiting behind them.
   */
  retime(): void {
    if (this.queue.length === 0) return;
    const now = performance.now();
    const st = this.link.state;
    let free = now;
    let prev = 0;
    for (const p of this.queue) {
      let at = now;
      if (st.rateBps !== undefined && st.rateBps > 0) {
        free += (p.chunk.length * 8 * 1000) / st.rateBps;
        at = free;
      }
      at += (st.delayMs ?? 0) / 2;
      at = Math.max(Math.min(p.at, at), prev);
      p.at = at;
      prev = at;
    }
    this.linkFreeAt = Math.min(this.linkFreeAt, Math.max(free, now));
    this.lastRelease = prev;
    if (this.timer) {
      if (this.immediate) clearImmediate(this.timer as unknown as NodeJS.Immediate);
      else clearTimeout(this.timer);
      this.timer = null;
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
  private readonly counters: LinkStats = { connections: 0, bytes: [0, 0], chunks: [0, 0], lost: 0 };
  private random: () => number;
  /** Live connections: rescheduled on heal, moved between the kernel and user space on changes. */
  readonly live = new Set<LiveConnection>();

  /** The counters, with what the kernel's pumps have carried so far. */
  get stats(): LinkStats {
    for (const c of this.live) c.syncCounters();
    return this.counters;
  }

  /** No impairment and no cut: connections may be carried in the kernel. */
  clean(): boolean {
    const st = this.state;
    return !st.cut && !(st.delayMs! > 0) && !(st.jitterMs! > 0) && !(st.rateBps! > 0) && !(st.lossPercent! > 0);
  }

  /** Adds to the counters of direction `dir` (0: a→b). */
  count(dir: 0 | 1, bytes: number, chunks: number): void {
    this.counters.bytes[dir] += bytes;
    this.counters.chunks[dir] += chunks;
  }

  countConnection(): void {
    this.counters.connections++;
  }

  private changed(): void {
    for (const c of [...this.live]) {
      for (const d of c.dirs) d.retime();
      c.linkChanged();
    }
  }

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
    this.changed();
  }

  /** Every impairment cleared and the link healed (the seed stays). */
  reset(): void {
    this.state = { cut: false, seed: this.state.seed };
    this.heal();
  }

  cut(): void {
    this.state.cut = true;
    this.changed();
  }

  heal(): void {
    this.state.cut = false;
    for (const c of this.live) for (const d of c.dirs) d.schedule();
    this.changed();
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
    if (lost) this.counters.lost++;
    return lost;
  }

  view(): LinkView {
    const queued: [number, number] = [0, 0];
    for (const c of this.live) for (const d of c.dirs) queued[d.direction] += d.held;
    const v: LinkView = { a: this.a, b: this.b, cut: this.state.cut, seed: this.state.seed, bytes: [this.stats.bytes[0], this.stats.bytes[1]], lost: this.stats.lost, connections: this.stats.connections, queued };
    for (const k of ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const) if (this.state[k] !== undefined) v[k] = this.state[k];
    return v;
  }
}

/** What a Link knows of a live connection. */
export interface LiveConnection {
  dirs: Direction[];
  /** Folds what the kernel carried since the last call into the link's counters. */
  syncCounters(): void;
  /** The link's impairments or cut changed. */
  linkChanged(): void;
}

/** Whether clean links' connections are carried in the kernel here (the addon's pumps, not turned off). */
export function kernelLinksAvailable(): boolean {
  return process.env.HVLAB_LINK_SPLICE !== '0' && splicePumpAvailable();
}

/** How often a connection that could not go back to the kernel (bytes in flight) looks again (ms). */
const KERNEL_RETRY_MS = 50;

/**
 * Stops Node reading `s` now. pause() alone does not: Node goes on reading into the paused
 * stream's buffer until its high-water mark, which would take bytes from under a pump. This does
 * what Node itself does at the high-water mark (net.js onStreamRead); resume() reads again.
 */
function stopReading(s: Socket): void {
  const x = s as unknown as { _handle?: { reading?: boolean; readStop?: () => number }; _readableState?: { reading?: boolean } };
  const h = x._handle;
  if (h && h.reading && typeof h.readStop === 'function') {
    h.reading = false;
    h.readStop();
  }
  // A read the stream was waiting for is off too: else resume() would wait for it for ever and
  // never start the handle again (Readable.read skips _read while `reading`).
  if (x._readableState) x._readableState.reading = false;
}

const fdOf = (s: Socket): number | null => {
  const fd = (s as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
};

/**
 * One proxied connection: `a` (accepted from the connecting host) and `b` (to the target), carried
 * by two pumps in the kernel while the link is clean, else by two Directions here.
 */
class Connection implements LiveConnection {
  dirs: Direction[] = [];
  private pumps: [SplicePump, SplicePump] | null = null;
  /** Pump bytes and chunks already folded into the link's counters, per direction. */
  private folded: Array<[number, number]> = [[0, 0], [0, 0]];
  private retry: NodeJS.Timeout | null = null;
  private closed = false;
  private started = false;
  /** A connection that lost a way once stays in user space. */
  private everEnded = false;
  private readonly back: 0 | 1;

  constructor(
    private readonly link: Link,
    readonly a: Socket,
    readonly b: Socket,
    private readonly dir: 0 | 1,
    private readonly onClosed: (c: Connection) => void,
    private readonly startPump: typeof startSplicePump = startSplicePump,
  ) {
    this.back = (1 - dir) as 0 | 1;
  }

  /** Where the bytes go now: the kernel's pumps, the Directions here, or nowhere yet (the target is still connecting). */
  get mode(): 'kernel' | 'user' | 'starting' {
    return this.pumps ? 'kernel' : this.started ? 'user' : 'starting';
  }

  /** Both sockets are connected and paused, nothing read yet: starts carrying bytes. */
  start(): void {
    if (this.closed || this.started) return;
    this.started = true;
    if (this.link.clean() && this.toKernel()) return;
    this.toUser();
  }

  syncCounters(): void {
    if (!this.pumps) return;
    this.pumps.forEach((p, i) => this.fold(i, p.stats()));
  }

  private fold(i: number, st: { bytes: number; chunks: number }): void {
    const d = i === 0 ? this.dir : this.back;
    const f = this.folded[i]!;
    this.link.count(d, st.bytes - f[0], st.chunks - f[1]);
    f[0] = st.bytes;
    f[1] = st.chunks;
  }

  linkChanged(): void {
    // Before the target answers there is nothing to move: start() looks at the link then.
    if (this.closed || !this.started) return;
    if (this.pumps && !this.link.clean()) {
      this.leaveKernel();
    } else if (!this.pumps && this.link.clean()) {
      this.tryKernel();
    }
  }

  /** Starts the pumps; false (nothing changed) when the sockets cannot be had. */
  private toKernel(): boolean {
    if (!kernelLinksAvailable()) return false;
    const fa = fdOf(this.a);
    const fb = fdOf(this.b);
    stopReading(this.a);
    stopReading(this.b);
    if (fa === null || fb === null || this.a.readableLength !== 0 || this.b.readableLength !== 0 || this.a.writableLength !== 0 || this.b.writableLength !== 0) return false;
    let first: SplicePump | null = null;
    try {
      first = this.startPump(fa, fb, () => this.pumpDone());
      const second = this.startPump(fb, fa, () => this.pumpDone());
      this.pumps = [first, second];
      this.folded = [[0, 0], [0, 0]];
      return true;
    } catch {
      if (first) {
        const st = first.stop();
        this.folded = [[0, 0], [0, 0]];
        this.fold(0, st);
        // No Direction yet: what it held goes straight on, before anything the Directions send.
        if (st.leftover.length > 0 && !this.b.destroyed) {
          this.link.count(this.dir, st.leftover.length, 0);
          this.b.write(st.leftover);
        }
      }
      return false;
    }
  }

  /** Stops the pumps; returns what each held, and whether its input had ended. */
  private stopPumps(): Array<{ leftover: Buffer; ended: boolean; failed: boolean }> {
    const pumps = this.pumps;
    this.pumps = null;
    if (!pumps) return [];
    return pumps.map((p, i) => {
      const st = p.stop();
      this.fold(i, st);
      return { leftover: st.leftover, ended: st.state === 'ended', failed: st.state === 'failed' };
    });
  }

  private pumpDone(): void {
    if (!this.pumps || this.closed) return;
    const st = this.pumps.map((p) => p.stats());
    // A way failed, or both ended (delivered, each output shut down): the connection is over.
    if (st.some((x) => x.state === 'failed') || st.every((x) => x.state === 'ended')) this.close();
  }

  /** The link changed under the kernel's pumps: the connection goes to user space, with what they held first. */
  private leaveKernel(): void {
    const held = this.stopPumps();
    // Failed, or over both ways already (the pumps' call-back had not run yet): nothing to carry.
    if (held.some((h) => h.failed) || held.every((h) => h.ended)) {
      this.close();
      return;
    }
    // A way that has ended (its output shut down) gets no Direction: the other finishes here.
    this.toUser(held.map((h) => h.leftover), held.map((h) => h.ended));
  }

  /** Two Directions carry the connection, after what the pumps held (`held`); none for a way that `ended`. */
  private toUser(held: Buffer[] = [], ended: boolean[] = [false, false]): void {
    const [fwd, rev] = [new Direction(this.link, this.a, this.b, this.dir), new Direction(this.link, this.b, this.a, this.back)];
    this.dirs = [fwd, rev];
    if (ended[0]) fwd.detach();
    if (ended[1]) rev.detach();
    if (held[0]) fwd.takeOver(held[0]);
    if (held[1]) rev.takeOver(held[1]);
    if (!ended[0]) this.a.resume();
    if (!ended[1]) this.b.resume();
    this.everEnded = this.everEnded || ended.some(Boolean);
  }

  /** Back to the kernel once both Directions have nothing in flight; else looks again shortly. */
  private tryKernel(): void {
    if (this.retry || this.closed || this.pumps || this.everEnded || !kernelLinksAvailable()) return;
    if (this.dirs.some((d) => d.ending)) {
      // Half closed here: it finishes in user space (and no timer looks at it again).
      this.everEnded = true;
      return;
    }
    if (this.dirs.every((d) => d.idle)) {
      for (const d of this.dirs) d.detach();
      // Paused for the Directions to come if the pumps cannot start (toKernel stops the reading).
      this.a.pause();
      this.b.pause();
      if (this.toKernel()) {
        this.dirs = [];
        return;
      }
      this.toUser();
    }
    this.retry = setTimeout(() => {
      this.retry = null;
      if (this.link.clean()) this.tryKernel();
    }, KERNEL_RETRY_MS);
    this.retry.unref();
  }

  /** Stops whatever carries the bytes (the pumps first: they use the sockets' fds), then destroys both sockets. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    this.stopPumps();
    for (const d of this.dirs) d.close();
    this.a.destroy();
    this.b.destroy();
    this.onClosed(this);
  }
}

/**
 * Connections a proxy carries at once, and all proxies of this process together. Each costs the
 * fabric ~10 descriptors (two sockets and, carried in the kernel, two splice pumps with a pipe pair
 * and a thread each), so without a bound anyone who reaches a proxy's port (every process of every
 * host: a guest's process too) could hold thousands open: a probe's 2,500 took the fabric to its
 * 20,000 descriptors and 3,321 threads, and the fabric stopped answering, the whole cluster with it.
 * Past either bound a connection is closed as it is accepted, and counted (`refused`). A link's
 * real traffic is a few connections per VM that talks across it (a migration stream, a remote
 * channel, a management call).
 */
export const MAX_PROXY_CONNECTIONS = 256;
export const MAX_FABRIC_CONNECTIONS = 1024;
/**
 * Places kept for the host whose traffic a proxy carries (connections from its address): anyone
 * else who reaches the port (another host, a guest's process) takes at most the rest, of one proxy
 * and of all, so a flood of strangers' connections cannot shut the link's own host out. Where all
 * hosts connect from one address (a cluster on loopback: from 127.0.0.1) the fabric names no
 * member address (fabric.ts memberAddress) and every connection is the host's.
 */
export const PROXY_MEMBER_RESERVED = 64;
export const FABRIC_MEMBER_RESERVED = 256;
/**
 * The most connections one address may hold through all proxies: a host (or a guest's process on
 * it) that opened many through its own proxies, where it is no stranger, took the fabric's
 * places shared by every host and shut the others out. Not on loopback, where every host
 * connects from 127.0.0.1.
 */
export const FABRIC_PER_ADDRESS = 256;
let fabricConnections = 0;
let fabricStrangers = 0;
const fabricByAddress = new Map<string, number>();

/** Whether `a` is the address every host of a loopback cluster connects from (its default source). */
function loopback(a: string): boolean {
  return a === '127.0.0.1' || a === '::1';
}

/** An address as a socket reports it, IPv4 without the IPv6-mapped prefix. */
function plainAddress(a: string | undefined): string | null {
  if (!a) return null;
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

/**
 * One direction of a link: a TCP proxy from a listening address to a target. Bytes from the
 * connecting side count as direction `dir` of the link (0: a→b, 1: b→a), the answers as the other.
 */
export class LinkProxy {
  private server: Server | null = null;
  /** Each connection carried, with where it came from and whether that is another address than the member's. */
  private readonly conns = new Map<Connection, { source: string | null; stranger: boolean }>();
  private strangers = 0;

  /** Gives back what `c` held of this proxy's and the fabric's places (once). */
  private release(c: Connection): void {
    const held = this.conns.get(c);
    if (!held) return;
    this.conns.delete(c);
    fabricConnections--;
    if (held.stranger) {
      this.strangers--;
      fabricStrangers--;
    }
    if (held.source !== null) {
      const n = (fabricByAddress.get(held.source) ?? 1) - 1;
      if (n > 0) fabricByAddress.set(held.source, n);
      else fabricByAddress.delete(held.source);
    }
  }
  /** Connections closed as they came, past MAX_PROXY_CONNECTIONS or MAX_FABRIC_CONNECTIONS. */
  refused = 0;

  /**
   * `onRefused`: told of each connection closed at a bound (the owner rate-limits what it logs).
   * `startPump`: how a connection's kernel pumps start (tests make one fail).
   * `member`: the address of the host whose traffic this proxy carries, now (null: unknown, every
   * connection is taken as its), for which PROXY_MEMBER_RESERVED places are kept.
   */
  constructor(
    readonly link: Link,
    readonly target: { host: string; port: number },
    private readonly dir: 0 | 1 = 0,
    private readonly onRefused: (why: string) => void = () => {},
    private readonly startPump: typeof startSplicePump = startSplicePump,
    private readonly member: () => string | null = () => null,
  ) {}

  /** Listens on `host` (port 0: any); resolves with the port. */
  listen(host = '127.0.0.1', port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      // Accepted sockets are not read until the target answers: their bytes wait in the kernel.
      // Half open allowed on both sockets: a sender's FIN ends only its way, after what the link
      // still holds of it has arrived (flushThenEnd), as TCP delivers every byte sent before a
      // FIN. Without it Node ended the other way at once, and the connection closed with the
      // queued bytes: a sender that wrote and closed lost what a slow link held.
      const server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (a) => this.accept(a));
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

  /** Connections open now, and how many of them the kernel carries (tests, status). */
  connectionCount(): { all: number; kernel: number } {
    let kernel = 0;
    for (const c of this.conns.keys()) if (c.mode === 'kernel') kernel++;
    return { all: this.conns.size, kernel };
  }

  /** Why a connection from `source` is closed as it comes (a bound reached), or null. */
  private full(source: string | null): string | null {
    if (this.conns.size >= MAX_PROXY_CONNECTIONS) return `this proxy carries ${this.conns.size} connections, its limit`;
    if (fabricConnections >= MAX_FABRIC_CONNECTIONS) return `the proxies carry ${fabricConnections} connections, their limit`;
    const held = source === null ? 0 : (fabricByAddress.get(source) ?? 0);
    if (source !== null && !loopback(source) && held >= FABRIC_PER_ADDRESS) return `the proxies carry ${held} connections from ${source}, the most one address may hold`;
    const member = this.member();
    if (member === null || source === member) return null;
    if (this.strangers >= MAX_PROXY_CONNECTIONS - PROXY_MEMBER_RESERVED) return `this proxy carries ${this.strangers} connections from other addresses than its host's (${member}), their limit`;
    if (fabricStrangers >= MAX_FABRIC_CONNECTIONS - FABRIC_MEMBER_RESERVED) return `the proxies carry ${fabricStrangers} connections from other addresses than their hosts', their limit`;
    return null;
  }

  private accept(a: Socket): void {
    const source = plainAddress(a.remoteAddress);
    const why = this.full(source);
    if (why !== null) {
      a.on('error', () => undefined);
      a.destroy();
      this.refused++;
      this.onRefused(`${why} (a connection from ${source ?? 'an unknown address'})`);
      return;
    }
    const member = this.member();
    const stranger = member !== null && source !== member;
    a.setNoDelay(true);
    const b = connect({ port: this.target.port, host: this.target.host, allowHalfOpen: true });
    b.setNoDelay(true);
    const c = new Connection(this.link, a, b, this.dir, (gone) => {
      this.release(gone);
      this.link.live.delete(gone);
    }, this.startPump);
    this.conns.set(c, { source, stranger });
    fabricConnections++;
    if (stranger) {
      this.strangers++;
      fabricStrangers++;
    }
    if (source !== null) fabricByAddress.set(source, (fabricByAddress.get(source) ?? 0) + 1);
    this.link.live.add(c);
    this.link.countConnection();
    // Paused before Node's first read of it, so the pumps (or the Directions) see every byte.
    b.once('connect', () => {
      b.pause();
      c.start();
    });
    const drop = (): void => c.close();
    a.on('error', drop);
    b.on('error', drop);
    a.on('close', drop);
    b.on('close', drop);
  }

  async close(): Promise<void> {
    for (const c of [...this.conns.keys()]) {
      c.close();
      this.release(c);
    }
    const s = this.server;
    this.server = null;
    if (s) await new Promise((r) => s.close(() => r(undefined)));
  }
}
