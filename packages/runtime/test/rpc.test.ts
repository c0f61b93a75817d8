/**
 * The cluster's request/answer sockets (rpc.ts): a server that must end before its handlers can
 * answers what is still in flight with a failure (`failInFlight`), so its peers hear why at once
 * instead of waiting out their own timeouts, and a handler that settles later sends nothing more.
 */
import { expect } from 'chai';
import { decode } from '@hvlab/protocol';
import { RpcClient, RpcFailure, RpcServer, type RpcDecoded } from '../src/rpc.js';

type Req = { id: number; op: string };
const decodeReq = (b: Uint8Array): RpcDecoded<Req> => {
  const v = decode(b) as { id?: unknown; op?: unknown } | null;
  if (!v || typeof v !== 'object' || typeof v.id !== 'number' || typeof v.op !== 'string') return { ok: false, id: 0, message: 'not a request' };
  return { ok: true, value: { id: v.id, op: v.op } };
};

describe('rpc server', () => {
  it('answers the requests still in flight with a failure when it must go first, and sends nothing when their handlers settle later', async () => {
    let release: (v: unknown) => void = () => {};
    const held = new Promise((r) => (release = r));
    const server = new RpcServer<Req>(decodeReq, (r) => (r.op === 'hold' ? held : { echoed: r.op }));
    await server.bind('tcp://127.0.0.1:0');
    void server.serve();
    const client = new RpcClient(server.sock.lastEndpoint!);
    try {
      expect(await client.call({ op: 'quick' }, 5000)).to.deep.equal({ echoed: 'quick' });
      const waiting = client.call({ op: 'hold' }, 60_000).catch((e: unknown) => e);
      const waiting2 = client.call({ op: 'hold' }, 60_000).catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 100));
      await server.failInFlight('Unavailable', 'the worker exited: a test');
      // The server's failure, not the client's own 60 s timeout (whose code is Timeout).
      const [e1, e2] = await Promise.all([waiting, waiting2]);
      for (const e of [e1, e2]) {
        expect(e).to.be.instanceOf(RpcFailure);
        expect((e as RpcFailure).code).to.equal('Unavailable');
        expect((e as RpcFailure).message).to.equal('the worker exited: a test');
      }
      // The handlers settle now: nothing more is sent, and the server serves on.
      release({ late: true });
      await new Promise((r) => setTimeout(r, 50));
      expect(client.pending).to.equal(0);
      expect(await client.call({ op: 'again' }, 5000)).to.deep.equal({ echoed: 'again' });
    } finally {
      client.close();
      server.close();
    }
  });
});
