/**
 * The message transport under the remote VMBus transport. VMBus asks of it only this: carry whole
 * frames (byte strings) between the guest's end and the host's hub, per peer in order or not at
 * all. Everything else — credits, channel multiplexing, who a peer is — is VMBus's own (remote.ts).
 *
 *   FrameLink      one peer: send(frame), onFrame(handler), close()
 *   FrameListener  the host's side: bind(), then one FrameLink per peer that speaks (onLink)
 *   FrameNetwork   makes both: `zmqFrames` (zmq-link.ts, the only file of vmbus that touches
 *                  ZeroMQ) and `MemoryFrameNetwork` below (in-process, for tests)
 *
 * Because the hub and the guest's link see nothing but these interfaces, a test or the fault API
 * wraps a link or a listener (faults.ts: drop, delay, duplicate, reorder, corrupt) without
 * patching either end. A frame handed to `onFrame` belongs to the receiver; a frame passed to
 * `send` may be kept by the link (the sender must not reuse it).
 *
 * Closing a listener's link forgets that peer: frames it sends later arrive on a new link (so a
 * hub can drop a peer that did not introduce itself, and hear it again once it does). ZeroMQ
 * cannot hang up on a peer, and the in-process network behaves the same way.
 */

export type FrameHandler = (frame: Uint8Array) => void;

export interface FrameLink {
  /** Sends one frame to the peer; once closed, frames are dropped. Never throws for a gone peer. */
  send(frame: Uint8Array): void;
  /** Sets the receiver of the peer's frames (frames that arrived before it are delivered then). */
  onFrame(handler: FrameHandler): void;
  /**
   * Optional: tells `handler` once that the link lost a frame for a peer that is still there (it
   * stopped reading and its queue is full); the link is closed then. Whatever the frame carried
   * is gone, so the protocol above cannot go on over this link.
   */
  onLost?(handler: (why: string) => void): void;
  close(): void;
  readonly closed: boolean;
}

export interface FrameListener {
  readonly endpoint: string;
  /** Calls `handler` with each new peer's link before that peer's first frame is delivered. */
  onLink(handler: (link: FrameLink) => void): void;
  bind(): Promise<void>;
  close(): void;
}

export interface FrameNetwork {
  listen(endpoint: string): FrameListener;
  connect(endpoint: string): FrameLink;
}

/** Frames a link holds for a receiver that has not set its handler yet (more are dropped). */
export const MAX_EARLY_FRAMES = 4096;

/** Hands frames to a handler that may be set late; until then they wait (a bounded number). */
export class FrameReceiver {
  private handler: FrameHandler | null = null;
  private early: Uint8Array[] = [];

  set(handler: FrameHandler): void {
    this.handler = handler;
    const early = this.early;
    this.early = [];
    for (const f of early) handler(f);
  }

  deliver(frame: Uint8Array): void {
    if (this.handler) this.handler(frame);
    else if (this.early.length < MAX_EARLY_FRAMES) this.early.push(frame);
  }
}

/** Work done on a later turn, in order (in-process delivery stands in for a network's latency). */
class Later<T> {
  private readonly queue: T[] = [];
  private scheduled = false;

  constructor(private readonly run: (item: T) => void) {}

  push(item: T): void {
    this.queue.push(item);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    try {
      while (this.queue.length > 0) this.run(this.queue.shift()!);
    } finally {
      // A handler that threw leaves the rest for the next turn (the exception goes on up).
      if (this.queue.length > 0 && !this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    }
  }
}

/** One end of an in-process connection; `deliverToPeer` carries what it sends. */
class MemoryLink implements FrameLink {
  readonly rx = new FrameReceiver();
  closed = false;
  onClose: () => void = () => {};

  constructor(private readonly deliverToPeer: (frame: Uint8Array) => void) {}

  send(frame: Uint8Array): void {
    // A copy, as a network would make: the receiver may keep what it gets.
    if (!this.closed) this.deliverToPeer(frame.slice());
  }

  onFrame(handler: FrameHandler): void {
    this.rx.set(handler);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }
}

class MemoryListener implements FrameListener {
  private handler: ((link: FrameLink) => void) | null = null;
  /** The listener's link of each client that has spoken (and was not forgotten since). */
  private readonly links = new Map<MemoryLink, MemoryLink>();
  private readonly inbound = new Later<{ client: MemoryLink; frame: Uint8Array }>(({ client, frame }) => this.receive(client, frame));
  closed = false;

  constructor(readonly endpoint: string, private readonly net: MemoryFrameNetwork) {}

  onLink(handler: (link: FrameLink) => void): void {
    this.handler = handler;
  }

  async bind(): Promise<void> {
    this.net.bindListener(this);
  }

  deliver(client: MemoryLink, frame: Uint8Array): void {
    if (!this.closed) this.inbound.push({ client, frame });
  }

  /** A frame from `client`: to its link here, made (and announced) if the peer is new or forgotten. */
  private receive(client: MemoryLink, frame: Uint8Array): void {
    if (this.closed || client.closed) return;
    let link = this.links.get(client);
    if (!link) {
      const l = new MemoryLink((f) => client.closed || this.net.toClient(client, f));
      l.onClose = () => {
        if (this.links.get(client) === l) this.links.delete(client);
      };
      this.links.set(client, l);
      link = l;
      this.handler?.(l);
    }
    if (!link.closed) link.rx.deliver(frame);
  }

  close(): void {
    this.closed = true;
    for (const l of [...this.links.values()]) l.close();
    this.links.clear();
    this.net.unbindListener(this);
  }
}

/**
 * An in-process network of frame links, for tests: delivery is asynchronous and ordered; a client
 * may connect before the listener binds (its frames wait for the bind, as with ZeroMQ).
 */
export class MemoryFrameNetwork implements FrameNetwork {
  private readonly listeners = new Map<string, MemoryListener>();
  private readonly held = new Map<string, Array<{ client: MemoryLink; frame: Uint8Array }>>();
  private readonly outbound = new Later<{ client: MemoryLink; frame: Uint8Array }>(({ client, frame }) => {
    if (!client.closed) client.rx.deliver(frame);
  });

  listen(endpoint: string): FrameListener {
    return new MemoryListener(endpoint, this);
  }

  connect(endpoint: string): FrameLink {
    const client: MemoryLink = new MemoryLink((frame) => {
      const l = this.listeners.get(endpoint);
      if (l) return l.deliver(client, frame);
      const q = this.held.get(endpoint) ?? [];
      if (q.length < MAX_EARLY_FRAMES) q.push({ client, frame });
      this.held.set(endpoint, q);
    });
    return client;
  }

  toClient(client: MemoryLink, frame: Uint8Array): void {
    this.outbound.push({ client, frame });
  }

  bindListener(l: MemoryListener): void {
    if (this.listeners.has(l.endpoint)) throw new Error(`in-process endpoint ${l.endpoint} is already bound`);
    this.listeners.set(l.endpoint, l);
    const q = this.held.get(l.endpoint) ?? [];
    this.held.delete(l.endpoint);
    for (const { client, frame } of q) l.deliver(client, frame);
  }

  unbindListener(l: MemoryListener): void {
    if (this.listeners.get(l.endpoint) === l) this.listeners.delete(l.endpoint);
  }
}
