/**
 * The cluster's request/answer sockets (rpc.ts): a server that must end before its handlers can
 * answers what is still in flight with a failure (`failInFlight`), so its peers hear why at once
 * instead of waiting out their own timeouts, and a handler that settles later sends nothing more.
 */
import { expect } from 'chai';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { decode } from '@hvlab/protocol';
import { RpcClient, RpcFailure, RpcServer, type RpcDecoded } from '../src/rpc.js';

type Req = { id: number; op: string; rq?: number };
const decodeReq = (b: Uint8Array): RpcDecoded<Req> => {
  const v = decode(b) as { id?: unknown; op?: unknown; rq?: unknown } | null;
  if (!v || typeof v !== 'object' || typeof v.id !== 'number' || typeof v.op !== 'string') return { ok: false, id: 0, message: 'not a request' };
  if (v.rq !== undefined && (typeof v.rq !== 'number' || !Number.isSafeInteger(v.rq) || v.rq < 1)) return { ok: false, id: v.id, message: '"rq" must be a whole number from 1' };
  return { ok: true, value: { id: v.id, op: v.op, ...(typeof v.rq === 'number' ? { rq: v.rq } : {}) } };
};

/** Waits (polling, no time limit of its own: the test's bounds it) until `cond` holds. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

/**
 * A TCP proxy between a client and a server, as the fabric's link proxy is: it passes bytes each
 * way, or drops them (`drop`: 'up', client to server; 'down', server to client), counting what it
 * dropped; `cut` ends every connection it carries at once, as a fabric that dies does. New
 * connections are taken meanwhile, as the fabric started again on its port takes them.
 */
class TestProxy {
  private readonly server: Server;
  private readonly conns = new Set<Socket>();
  drop: 'up' | 'down' | null = null;
  dropped = { up: 0, down: 0 };
  /** Far end down: a connection is accepted and closed at once, as the fabric's proxy does then. */
  refuse = false;
  accepted = 0;
  port = 0;
  constructor(private readonly targetPort: number) {
    this.server = createServer((client) => {
      this.accepted++;
      if (this.refuse) {
        client.on('error', () => undefined);
        client.destroy();
        return;
      }
      const upstream = connect(this.targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.conns.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.conns.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.on('data', (b: Buffer) => {
        if (this.drop === 'up') this.dropped.up += b.length;
        else upstream.write(b);
      });
      upstream.on('data', (b: Buffer) => {
        if (this.drop === 'down') this.dropped.down += b.length;
        else client.write(b);
      });
    });
  }
  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
    return `tcp://127.0.0.1:${this.port}`;
  }
  cut(): void {
    for (const s of [...this.conns]) s.destroy();
  }
  close(): void {
    this.cut();
    this.server.close();
  }
}

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

describe('rpc over a connection that drops', () => {
  let server: RpcServer<Req> | null = null;
  let client: RpcClient | null = null;
  let proxy: TestProxy | null = null;
  const handled = new Map<string, number>();
  let gate: Promise<void> = Promise.resolve();
  let entered = 0;
  const up = async (replayKey: ((r: Req) => string | null) | null): Promise<{ server: RpcServer<Req>; client: RpcClient; proxy: TestProxy }> => {
    const s = new RpcServer<Req>(decodeReq, async (r) => {
      const n = (handled.get(r.op) ?? 0) + 1;
      handled.set(r.op, n);
      if (r.op === 'slow') {
        entered++;
        await gate;
      }
      return { op: r.op, n };
    }, {}, 256, replayKey);
    await s.bind('tcp://127.0.0.1:0');
    void s.serve();
    const p = new TestProxy(Number(/:(\d+)$/.exec(s.sock.lastEndpoint!)![1]));
    const c = new RpcClient(await p.listen());
    server = s;
    proxy = p;
    client = c;
    // The connection made and its handshake done before anything is dropped.
    expect(await c.call({ op: 'hello' }, 20_000)).to.deep.equal({ op: 'hello', n: 1 });
    return { server: s, client: c, proxy: p };
  };
  beforeEach(() => {
    handled.clear();
    gate = Promise.resolve();
    entered = 0;
  });
  afterEach(() => {
    client?.close();
    server?.close();
    proxy?.close();
    client = server = proxy = null;
  });

  it('sends a request that its connection lost again once the connection is back, and it is answered; a request not marked so is not sent again', async () => {
    const { client: c, proxy: p } = await up(null);
    p.drop = 'up';
    const plain = c.call({ op: 'plain' }, 20_000).catch((e: unknown) => e);
    const again = c.call({ op: 'again' }, 20_000, 1, { resend: true });
    // Both requests reached the proxy, which dropped them: then it dies (and its port takes connections again).
    await until(() => p.dropped.up > 0 && c.pending === 2);
    p.drop = null;
    p.cut();
    expect(await again).to.deep.equal({ op: 'again', n: 1 });
    expect(c.resent).to.equal(1);
    // The plain request went before the other, and was not sent again: the server never had it.
    expect(handled.get('plain')).to.equal(undefined);
    c.close();
    expect(await plain).to.be.instanceOf(RpcFailure);
  });

  it('a request whose answer its connection lost is sent again and answered with the first answer, without being carried out again', async () => {
    const { server: s, client: c, proxy: p } = await up((r) => (r.rq === undefined ? null : `${r.op}/${r.rq}`));
    const told: string[][] = [];
    c.onResend = (ops) => told.push(ops);
    const replays: Array<[string, boolean]> = [];
    s.onReplay = (r, running) => replays.push([r.op, running]);
    p.drop = 'down';
    const once = c.call({ op: 'once', rq: 1 }, 20_000, 1, { resend: true });
    // The server carried it out and answered; the answer went into the proxy, which dropped it.
    await until(() => handled.get('once') === 1 && p.dropped.down > 0);
    p.drop = null;
    p.cut();
    expect(await once).to.deep.equal({ op: 'once', n: 1 });
    expect(handled.get('once'), 'carried out once').to.equal(1);
    expect(s.replayed).to.equal(1);
    expect(told).to.deep.equal([['once']]);
    expect(replays, 'answered from the outcome kept').to.deep.equal([['once', false]]);
    // Another request (another number) is carried out anew.
    expect(await c.call({ op: 'once', rq: 2 }, 20_000, 1, { resend: true })).to.deep.equal({ op: 'once', n: 2 });
  });

  it('a request sent again while the first is still being handled waits for its outcome, and is not carried out again', async () => {
    const { server: s, client: c, proxy: p } = await up((r) => (r.rq === undefined ? null : `${r.op}/${r.rq}`));
    let release: () => void = () => undefined;
    gate = new Promise<void>((r) => (release = r));
    const replays: Array<[string, boolean]> = [];
    s.onReplay = (r, running) => replays.push([r.op, running]);
    const slow = c.call({ op: 'slow', rq: 7 }, 20_000, 1, { resend: true });
    await until(() => entered === 1);
    // Its connection drops while the server handles it: the answer would go to a peer that is gone.
    p.cut();
    await until(() => s.replayed === 1);
    release();
    expect(await slow).to.deep.equal({ op: 'slow', n: 1 });
    expect(handled.get('slow')).to.equal(1);
    expect(entered).to.equal(1);
    expect(replays, 'waited for the outcome under way').to.deep.equal([['slow', true]]);
  });

  it('a proxy whose far end is down accepts and closes: nothing is sent again until a connection completes its handshake, then once', async () => {
    const { client: c, proxy: p } = await up((r) => (r.rq === undefined ? null : `${r.op}/${r.rq}`));
    p.drop = 'up';
    const flap = c.call({ op: 'flap', rq: 1 }, 60_000, 1, { resend: true });
    await until(() => p.dropped.up > 0);
    // The far end goes down: every reconnect is taken and closed (ZeroMQ retries each ~100 ms).
    p.refuse = true;
    const before = p.accepted;
    p.cut();
    await until(() => p.accepted >= before + 5);
    // Each of those connects sent another copy into the queue before (all delivered at the end).
    expect(c.resent, 'nothing sent again on connects without a handshake').to.equal(0);
    p.refuse = false;
    p.drop = null;
    expect(await flap).to.deep.equal({ op: 'flap', n: 1 });
    expect(c.resent).to.equal(1);
    expect(handled.get('flap')).to.equal(1);
  });

  it('a refusal of the credential (Denied) is not kept as the request\'s answer: the request with its credential is carried out', async () => {
    let denyNext = true;
    const s = new RpcServer<Req>(decodeReq, (r) => {
      handled.set(r.op, (handled.get(r.op) ?? 0) + 1);
      if (denyNext) {
        denyNext = false;
        throw new RpcFailure('Denied', 'not your credential');
      }
      return { op: r.op };
    }, {}, 256, (r) => (r.rq === undefined ? null : `${r.op}/${r.rq}`));
    server = s;
    await s.bind('tcp://127.0.0.1:0');
    void s.serve();
    const c = new RpcClient(s.sock.lastEndpoint!);
    client = c;
    const e = await c.call({ op: 'mine', rq: 4 }, 20_000).catch((x: unknown) => x);
    expect((e as RpcFailure).code).to.equal('Denied');
    expect(await c.call({ op: 'mine', rq: 4 }, 20_000)).to.deep.equal({ op: 'mine' });
    expect(handled.get('mine')).to.equal(2);
    expect(s.replayed).to.equal(0);
  });

  it('a failure is replayed as it was: the request is not carried out again', async () => {
    const key = (r: Req): string | null => (r.rq === undefined ? null : `${r.op}/${r.rq}`);
    const s = new RpcServer<Req>(decodeReq, (r) => {
      handled.set(r.op, (handled.get(r.op) ?? 0) + 1);
      throw new RpcFailure('InvalidState', `refused ${r.op}`);
    }, {}, 256, key);
    server = s;
    await s.bind('tcp://127.0.0.1:0');
    void s.serve();
    const c = new RpcClient(s.sock.lastEndpoint!);
    client = c;
    for (let i = 0; i < 2; i++) {
      const e = await c.call({ op: 'no', rq: 3 }, 20_000).catch((x: unknown) => x);
      expect(e).to.be.instanceOf(RpcFailure);
      expect([(e as RpcFailure).code, (e as RpcFailure).message]).to.deep.equal(['InvalidState', 'refused no']);
    }
    expect(handled.get('no')).to.equal(1);
    expect(s.replayed).to.equal(1);
  });
});
