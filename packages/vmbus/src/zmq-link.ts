/**
 * Frame links over ZeroMQ: the only file of vmbus that touches ZeroMQ. The guest's end is a
 * DEALER (`ZmqFrameLink`), the host's a ROUTER (`ZmqFrameListener`) that presents each routing id
 * that speaks as a link of its own. One frame is one single-part message; anything else on the
 * socket is not ours and is dropped, and ZeroMQ itself refuses messages over `MAX_FRAME_BYTES`
 * (maxMessageSize) before they are read. Sockets have linger 0 and a send queue, because
 * zeromq.js allows one pending send per socket.
 */
import { ROUTER_SEND_OPTIONS, SendQueue, zmq } from '@hvlab/runtime';
import { MAX_FRAME_BYTES } from './frames.js';
import { FrameReceiver, type FrameHandler, type FrameLink, type FrameListener, type FrameNetwork } from './link.js';

const HIGH_WATER_MARK = 100000;
/** Peers a listener keeps links for at once; frames of further new peers are dropped. */
export const MAX_LISTENER_PEERS = 1024;

export interface ZmqLinkOptions {
  /** Told of a frame handler's exception (the link keeps serving). */
  onError?: (e: unknown) => void;
}

function asBuffer(f: Uint8Array): Buffer {
  return Buffer.isBuffer(f) ? f : Buffer.from(f.buffer, f.byteOffset, f.byteLength);
}

/** Delivers a frame; a handler's exception is reported and the socket loop goes on. */
function deliver(rx: FrameReceiver, frame: Uint8Array, opts: ZmqLinkOptions): void {
  try {
    rx.deliver(frame);
  } catch (e) {
    opts.onError?.(e);
  }
}

/** The connecting end (the guest's): one DEALER. */
export class ZmqFrameLink implements FrameLink {
  private readonly sock: zmq.Dealer;
  private readonly q: SendQueue;
  private readonly rx = new FrameReceiver();
  closed = false;

  constructor(readonly endpoint: string, opts: ZmqLinkOptions = {}) {
    this.sock = new zmq.Dealer({ linger: 0, sendHighWaterMark: HIGH_WATER_MARK, receiveHighWaterMark: HIGH_WATER_MARK, maxMessageSize: MAX_FRAME_BYTES });
    this.q = new SendQueue(this.sock);
    this.sock.connect(endpoint);
    void this.loop(opts);
  }

  send(frame: Uint8Array): void {
    if (!this.closed) void this.q.send(asBuffer(frame)).catch(() => undefined);
  }

  onFrame(handler: FrameHandler): void {
    this.rx.set(handler);
  }

  private async loop(opts: ZmqLinkOptions): Promise<void> {
    try {
      for await (const parts of this.sock) {
        if (parts.length === 1) deliver(this.rx, parts[0]!, opts);
      }
    } catch (e) {
      // The socket failed under us: the link is dead, the process lives on.
      if (!this.closed) opts.onError?.(e);
      this.close();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.q.close();
    this.sock.close();
  }
}

/** One peer of a ROUTER. */
class ZmqPeerLink implements FrameLink {
  readonly rx = new FrameReceiver();
  closed = false;
  private lostHandler: ((why: string) => void) | null = null;

  constructor(private readonly route: Buffer, private readonly listener: ZmqFrameListener) {}

  send(frame: Uint8Array): void {
    if (!this.closed) this.listener.sendTo(this.route, asBuffer(frame));
  }

  onFrame(handler: FrameHandler): void {
    this.rx.set(handler);
  }

  onLost(handler: (why: string) => void): void {
    this.lostHandler = handler;
  }

  /** A frame for this peer was dropped while it is still connected: closed, and the owner told. */
  lost(why: string): void {
    if (this.closed) return;
    const h = this.lostHandler;
    this.close();
    h?.(why);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.listener.forget(this.route, this);
  }
}

/** The listening end (the host's hub): one ROUTER, one link per routing id that speaks. */
export class ZmqFrameListener implements FrameListener {
  private readonly sock: zmq.Router;
  private readonly q: SendQueue;
  private readonly peers = new Map<string, ZmqPeerLink>();
  private handler: ((link: FrameLink) => void) | null = null;
  private closed = false;
  /** Frames dropped because MAX_LISTENER_PEERS links were open. */
  droppedForPeerLimit = 0;

  constructor(readonly endpoint: string, private readonly opts: ZmqLinkOptions = {}) {
    this.sock = new zmq.Router({ linger: 0, ...ROUTER_SEND_OPTIONS, sendHighWaterMark: HIGH_WATER_MARK, receiveHighWaterMark: HIGH_WATER_MARK, maxMessageSize: MAX_FRAME_BYTES });
    // A send never waits (ROUTER_SEND_OPTIONS): a frame for a peer whose queue is full is dropped
    // at once, and that peer's link is lost with it (it stopped reading), never quietly thinned.
    this.q = new SendQueue(this.sock, (frames, code) => {
      if (code !== 'EAGAIN' || !Array.isArray(frames) || frames[0] === undefined) return;
      this.peers.get(frames[0].toString('hex'))?.lost(`a frame for it was dropped: its queue is full (${HIGH_WATER_MARK} frames), the peer is not reading`);
    });
  }

  onLink(handler: (link: FrameLink) => void): void {
    this.handler = handler;
  }

  async bind(): Promise<void> {
    await this.sock.bind(this.endpoint);
    void this.loop();
  }

  sendTo(route: Buffer, frame: Buffer): void {
    if (!this.closed) void this.q.send([route, frame]).catch(() => undefined);
  }

  forget(route: Buffer, link: ZmqPeerLink): void {
    const key = route.toString('hex');
    if (this.peers.get(key) === link) this.peers.delete(key);
  }

  private async loop(): Promise<void> {
    try {
      for await (const parts of this.sock) {
        if (parts.length !== 2) continue;
        const [route, frame] = parts as [Buffer, Buffer];
        const key = route.toString('hex');
        let link = this.peers.get(key);
        if (!link) {
          if (this.peers.size >= MAX_LISTENER_PEERS) {
            this.droppedForPeerLimit++;
            continue;
          }
          link = new ZmqPeerLink(Buffer.from(route), this);
          this.peers.set(key, link);
          try {
            this.handler?.(link);
          } catch (e) {
            this.opts.onError?.(e);
          }
        }
        deliver(link.rx, frame, this.opts);
      }
    } catch (e) {
      if (!this.closed) this.opts.onError?.(e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const l of [...this.peers.values()]) l.close();
    this.q.close();
    this.sock.close();
  }
}

/** The production frame network. */
export const zmqFrames: FrameNetwork = {
  listen: (endpoint) => new ZmqFrameListener(endpoint),
  connect: (endpoint) => new ZmqFrameLink(endpoint),
};
