/**
 * A mandatory ROUTER's sends never wait: a peer that disconnects while the router answers it must
 * not stop the answers to anyone else (libzmq leaves the gone peer's pipe terminating and never
 * wakes a send that waits on it; see ROUTER_SEND_OPTIONS).
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dealer, router, SendQueue, zmq } from '../src/index.js';

/** Resolves with the promise's value, or with 'stuck' if it has not settled by `ms` (a liveness bound, not a speed). */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'stuck'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'stuck'>((res) => (timer = setTimeout(() => res('stuck'), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

describe('runtime router sends', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-router-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('answers to a peer that has just left settle, and the socket goes on answering others', async function () {
    this.timeout(120000);
    const ep = `ipc://${join(dir, 'r.sock')}`;
    const sock: zmq.Router = router();
    const q = new SendQueue(sock);
    await sock.bind(ep);
    try {
      // Without the option an answer waited for good within 50 rounds in every try here (the
      // peer's pipe was terminating, and no receive was pending to wake the socket).
      for (let round = 0; round < 100; round++) {
        const gone = dealer();
        gone.connect(ep);
        await gone.send('hello');
        const [route] = await sock.receive();
        gone.close();
        for (let k = 0; k < 3; k++) {
          const settled = await within(q.send([route!, Buffer.from('credit')]).then(() => 'sent or dropped', () => 'failed'), 10000);
          expect(settled, `round ${round}, answer ${k}: the send to a peer that left never settled`).to.equal('sent or dropped');
        }
        const next = dealer();
        try {
          next.connect(ep);
          await next.send('ping');
          const [route2, body] = await sock.receive();
          expect(body!.toString()).to.equal('ping');
          await q.send([route2!, Buffer.from('pong')]);
          const answer = await within(next.receive(), 10000);
          expect(answer, `round ${round}: the next peer was never answered`).to.not.equal('stuck');
          expect((answer as Buffer[])[0]!.toString()).to.equal('pong');
        } finally {
          next.close();
        }
      }
    } finally {
      q.close();
      sock.close();
    }
  });
});
