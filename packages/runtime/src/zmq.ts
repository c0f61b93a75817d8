/**
 * Small helpers over zeromq.js 6. A socket allows one pending send() at a time (a second throws
 * EBUSY), so sends go through a queue; every socket is made with linger 0 so a closing process
 * never waits for undelivered messages.
 */
import * as zmq from 'zeromq';

export { zmq };

/**
 * Serialises sends on one socket. A message ZeroMQ refuses for its peer (EHOSTUNREACH: the peer is
 * gone; EAGAIN: its queue is full, or it is leaving) is dropped, and `onDrop` told of it.
 */
export class SendQueue {
  private tail: Promise<void> = Promise.resolve();
  private closed = false;
  constructor(
    private readonly sock: zmq.Dealer | zmq.Router | zmq.Publisher,
    private readonly onDrop?: (frames: Buffer | Buffer[], code: 'EAGAIN' | 'EHOSTUNREACH') => void,
  ) {}
  send(frames: Buffer | Buffer[]): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.closed || this.sock.closed) return;
      try {
        await this.sock.send(frames as never);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (this.sock.closed) return;
        if (code === 'EAGAIN' || code === 'EHOSTUNREACH') {
          try {
            this.onDrop?.(frames, code);
          } catch {
            // The drop stands; a handler's failure is not the sender's.
          }
          return;
        }
        throw e;
      }
    };
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }
  close(): void {
    this.closed = true;
  }
}

/**
 * A DEALER. It retries a connection that found no listener after 10 ms, doubling up to ZeroMQ's
 * usual 100 ms: the root connects to a VM worker's control socket before the worker has bound it,
 * and a flat 100 ms retry put ~100 ms into every VM start.
 */
export function dealer(): zmq.Dealer {
  return new zmq.Dealer({ linger: 0, sendHighWaterMark: 100000, receiveHighWaterMark: 100000, reconnectInterval: 10, reconnectMaxInterval: 100 });
}
/**
 * Options every ROUTER with `mandatory` needs: a send never waits. A mandatory ROUTER with no pipe
 * that can take a message waits for one, and a peer that disconnects as we answer leaves its pipe
 * terminating without the socket's descriptor ever saying when that ends (libzmq #2348, #2831):
 * the send, and every send queued behind it on the socket, then waits forever (seen: a hub's credit
 * to a sender that had just closed stopped every later channel of the hub). With no wait, that
 * send fails at once (EAGAIN, or EHOSTUNREACH once the pipe is gone) and `SendQueue` drops it; so
 * does a send to a live peer with a full queue (100000 messages it is not reading).
 */
export const ROUTER_SEND_OPTIONS = { mandatory: true, sendTimeout: 0 } as const;

export function router(): zmq.Router {
  return new zmq.Router({ linger: 0, ...ROUTER_SEND_OPTIONS, sendHighWaterMark: 100000, receiveHighWaterMark: 100000 });
}
