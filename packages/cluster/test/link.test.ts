/**
 * The link layer's TCP proxy (link.ts) on loopback: a delayed link delays a round trip by its
 * delay (within 20 %), both directions of a link share its impairments, a rate limits a bulk transfer to it (within 20 %), a cut link
 * delivers nothing until it heals and then delivers what waited, impairments are set independently,
 * the same seed draws the same jitter and loss, and closing leaves no socket. A clean link's
 * connections are carried in the kernel (the addon's splice pumps) and counted; an impairment set
 * mid-stream takes them to user space and clearing it brings them back, without a byte lost or
 * reordered; HVLAB_LINK_SPLICE=0 keeps them in user space.
 */
import { expect } from 'chai';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { Link, LinkProxy, kernelLinksAvailable } from '../src/index.js';
import { FABRIC_PER_ADDRESS, MAX_PROXY_CONNECTIONS, PROXY_MEMBER_RESERVED } from '../src/link.js';
import { startSplicePump, type SplicePump } from '@hvlab/shm';

/** A thread that connects to workerData.port and writes workerData.data, and keeps the socket open. */
const SENDER = `
const { workerData } = require('node:worker_threads');
const s = require('node:net').connect(workerData.port, '127.0.0.1');
s.on('error', () => {});
s.write(Buffer.from(workerData.data));
`;

/** An echo server on loopback. */
async function echoServer(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => s.pipe(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as { port: number }).port };
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
}

/** Round trips (ms) of `n` one-byte pings on `s`, in order. */
async function pings(s: Socket, n: number): Promise<number[]> {
  const rts: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await new Promise<void>((r) => {
      s.once('data', () => r());
      s.write('x');
    });
    rts.push(performance.now() - t0);
  }
  return rts;
}

/** Median round trip (ms) of `n` one-byte pings on `s`. */
async function pingMedian(s: Socket, n: number): Promise<number> {
  const rts = (await pings(s, n)).sort((a, b) => a - b);
  return rts[Math.floor(n / 2)]!;
}

describe('link layer (a TCP proxy with impairments)', function () {
  this.timeout(30000);
  let echo: { server: Server; port: number };
  let link: LinkProxy;
  const proxy = (port: number, imp: ConstructorParameters<typeof Link>[2] = {}, seed = 1): LinkProxy => new LinkProxy(new Link('h1', 'h2', imp, seed), { host: '127.0.0.1', port });
  beforeEach(async () => {
    echo = await echoServer();
  });
  afterEach(async () => {
    await link?.close();
    await new Promise((r) => echo.server.close(r));
  });

  it('delays a round trip by the link\'s delay (within 20 %), against a direct one', async () => {
    // Every round trip is delayed by at least the delay less 20 % (a timer never fires early), and
    // the fastest is at most the delay plus 20 % over the fastest direct one. The proxy and the
    // echo run in this busy process: a round trip that met a stall of it is slower, not faster,
    // so the fastest of several is the one that shows the link's own delay.
    const direct = await open(echo.port);
    const base = Math.min(...(await pings(direct, 5)));
    direct.destroy();
    link = proxy(echo.port, { delayMs: 60 });
    const s = await open(await link.listen());
    const rts = await pings(s, 7);
    s.destroy();
    const what = `round trips ${rts.map((x) => x.toFixed(1)).join(' ')} ms, direct ${base.toFixed(2)} ms`;
    expect(Math.min(...rts), what).to.be.at.least(0.8 * 60);
    expect(Math.min(...rts) - base, what).to.be.at.most(1.2 * 60);
    // The other direction of the same link, through its own proxy, pays the same.
    const back = new LinkProxy(link.link, { host: '127.0.0.1', port: echo.port }, 1);
    try {
      const s2 = await open(await back.listen());
      const rts2 = await pings(s2, 5);
      s2.destroy();
      const what2 = `round trips ${rts2.map((x) => x.toFixed(1)).join(' ')} ms, direct ${base.toFixed(2)} ms`;
      expect(Math.min(...rts2), what2).to.be.at.least(0.8 * 60);
      expect(Math.min(...rts2) - base, what2).to.be.at.most(1.2 * 60);
      expect(link.link.stats.bytes[0] + link.link.stats.bytes[1]).to.be.at.least(24);
    } finally {
      await back.close();
    }
  });

  it('limits a bulk transfer to the link\'s rate (within 20 %)', async () => {
    // A sink that says when it has every byte.
    const total = 1024 * 1024;
    let got = 0;
    let done: () => void = () => {};
    const finished = new Promise<void>((r) => (done = r));
    const sink = createServer((c) => c.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= total) done();
    }));
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
    try {
      link = proxy((sink.address() as { port: number }).port, { rateBps: 8e6 });
      const s = await open(await link.listen());
      const t0 = performance.now();
      s.write(Buffer.alloc(total, 7));
      await finished;
      const s1 = (performance.now() - t0) / 1000;
      s.destroy();
      // 1 MiB at 8 Mbit/s: 1.049 s.
      expect(s1, `${s1.toFixed(3)} s`).to.be.within(0.8 * 1.049, 1.2 * 1.049);
    } finally {
      await link.close();
      await new Promise((r) => sink.close(r));
    }
  });

  it('a cut link delivers nothing until it heals, then what waited', async () => {
    link = proxy(echo.port);
    const s = await open(await link.listen());
    expect(await pingMedian(s, 1)).to.be.below(1000);
    link.link.cut();
    let answered = false;
    const answer = new Promise<void>((r) => s.once('data', () => {
      answered = true;
      r();
    }));
    s.write('y');
    await new Promise((r) => setTimeout(r, 300));
    expect(answered, 'nothing crosses a cut link').to.equal(false);
    link.link.heal();
    await answer;
    expect(answered).to.equal(true);
    s.destroy();
  });

  it('bytes queued at a crawling rate go at once when the rate is cleared, not at the time it had planned for them', async () => {
    link = proxy(echo.port);
    const s = await open(await link.listen());
    expect(await pingMedian(s, 1)).to.be.below(1000);
    link.link.set({ rateBps: 1 });
    // Ten bytes at 1 bit/s: planned 80 s ahead, past this test's timeout, which is the only bound.
    const answer = new Promise<void>((r) => s.once('data', () => r()));
    s.write('0123456789');
    await new Promise((r) => setTimeout(r, 200));
    link.link.reset();
    await answer;
    s.destroy();
  });

  it('says what it holds back each way (queued), and the bytes of a sender that already closed still arrive, after which it holds nothing', async () => {
    let got = 0;
    const sink = createServer((c) => c.on('data', (d: Buffer) => (got += d.length)));
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
    try {
      link = proxy((sink.address() as { port: number }).port);
      expect(link.link.view().queued).to.deep.equal([0, 0]);
      const s = await open(await link.listen());
      link.link.set({ rateBps: 2_000_000 });
      // 64 KiB at 2 Mbit/s take ~260 ms: the sender is gone long before they are.
      await new Promise<void>((r) => s.end(randomBytes(64 * 1024), () => r()));
      let seen = 0;
      const until = Date.now() + 20_000;
      while (Date.now() < until && (got < 64 * 1024 || link.link.view().queued![0] > 0)) {
        seen = Math.max(seen, link.link.view().queued![0]);
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(seen, 'held back a→b while the rate let it out').to.be.above(0);
      expect(got, 'every byte arrived').to.equal(64 * 1024);
      expect(link.link.view().queued).to.deep.equal([0, 0]);
    } finally {
      await new Promise((r) => sink.close(r));
    }
  });

  it('sets impairments independently, resets them, and draws the same jitter and loss from the same seed', () => {
    const l0 = new Link('h1', 'h2', {}, 42);
    l0.set({ delayMs: 20 });
    l0.set({ rateBps: 1e6 });
    expect(l0.state).to.include({ delayMs: 20, rateBps: 1e6 });
    l0.set({ delayMs: null });
    expect(l0.state.delayMs).to.equal(undefined);
    expect(l0.state.rateBps).to.equal(1e6);
    expect(l0.view()).to.deep.include({ a: 'h1', b: 'h2', rateBps: 1e6, cut: false, seed: 42 });
    l0.reset();
    expect(l0.state).to.deep.equal({ cut: false, seed: 42 });
    const draws = (seed: number): string => {
      const l = new Link('h1', 'h2', { delayMs: 20, jitterMs: 10, lossPercent: 30 }, seed);
      return Array.from({ length: 20 }, () => `${l.drawDelay().toFixed(3)}/${l.drawLoss()}`).join(' ');
    };
    expect(draws(7)).to.equal(draws(7));
    expect(draws(7)).to.not.equal(draws(8));
    const d = draws(7).split(' ').map((x) => Number(x.split('/')[0]));
    expect(Math.min(...d)).to.be.at.least(5);
    expect(Math.max(...d)).to.be.at.most(15);
  });

  it('closing drops its connections and stops listening', async () => {
    link = proxy(echo.port);
    const port = await link.listen();
    const s = await open(port);
    const closed = new Promise((r) => s.once('close', r));
    await link.close();
    await closed;
    const refused = await open(port).then((x) => {
      x.destroy();
      return false;
    }, () => true);
    expect(refused, 'nothing listens after close').to.equal(true);
  });
  it(`carries at most ${MAX_PROXY_CONNECTIONS} connections at once and closes the rest as they come, counted; a place freed is taken again`, async () => {
    const why: string[] = [];
    link = new LinkProxy(new Link('h1', 'h2', {}, 1), { host: '127.0.0.1', port: echo.port }, 0, (w) => why.push(w));
    const port = await link.listen();
    const socks: Socket[] = [];
    try {
      for (let i = 0; i < MAX_PROXY_CONNECTIONS; i++) socks.push(await open(port));
      // Each of those is carried: it echoes.
      expect(await pingMedian(socks[MAX_PROXY_CONNECTIONS - 1]!, 1)).to.be.a('number');
      const extra: Socket[] = [];
      for (let i = 0; i < 5; i++) extra.push(await open(port));
      socks.push(...extra);
      await Promise.all(extra.map((s) => (s.destroyed ? undefined : new Promise((r) => s.once('close', r)))));
      expect(link.refused).to.equal(5);
      expect(why[0]).to.match(/carries 256 connections, its limit/);
      expect(link.connectionCount().all).to.equal(MAX_PROXY_CONNECTIONS);
      // One closes; the next connection is carried.
      socks[0]!.destroy();
      for (let i = 0; i < 200 && link.connectionCount().all >= MAX_PROXY_CONNECTIONS; i++) await new Promise((r) => setTimeout(r, 10));
      const again = await open(port);
      socks.push(again);
      expect(await pingMedian(again, 1)).to.be.a('number');
      expect(link.refused).to.equal(5);
    } finally {
      for (const s of socks) s.destroy();
    }
  });

  it(`keeps ${PROXY_MEMBER_RESERVED} of its places for its host's address: strangers' connections take the rest, then are closed as they come while the host's are carried`, async () => {
    const why: string[] = [];
    link = new LinkProxy(new Link('h1', 'h2', {}, 1), { host: '127.0.0.1', port: echo.port }, 0, (w) => why.push(w), undefined, () => '127.0.0.2');
    const port = await link.listen();
    const from = (localAddress: string): Promise<Socket> => new Promise((resolve, reject) => {
      const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s));
      s.once('error', reject);
    });
    const closed = (socks: Socket[]): Promise<unknown> => Promise.all(socks.map((s) => (s.destroyed ? undefined : new Promise((r) => s.once('close', r)))));
    const socks: Socket[] = [];
    const strangers = MAX_PROXY_CONNECTIONS - PROXY_MEMBER_RESERVED;
    try {
      for (let i = 0; i < strangers; i++) socks.push(await from('127.0.0.3'));
      expect(await pingMedian(socks[strangers - 1]!, 1), 'carried').to.be.a('number');
      const extra = [await from('127.0.0.3'), await from('127.0.0.4')];
      socks.push(...extra);
      await closed(extra);
      expect(link.refused).to.equal(2);
      expect(why[0]).to.equal(`this proxy carries ${strangers} connections from other addresses than its host's (127.0.0.2), their limit (a connection from 127.0.0.3)`);
      // The host's own connections fill the places kept for it, and are carried.
      const own: Socket[] = [];
      for (let i = 0; i < PROXY_MEMBER_RESERVED; i++) own.push(await from('127.0.0.2'));
      socks.push(...own);
      expect(await pingMedian(own[PROXY_MEMBER_RESERVED - 1]!, 1), 'the host\'s carried').to.be.a('number');
      expect(link.connectionCount().all).to.equal(MAX_PROXY_CONNECTIONS);
      const past = await from('127.0.0.2');
      socks.push(past);
      await closed([past]);
      expect(why[2]).to.equal(`this proxy carries ${MAX_PROXY_CONNECTIONS} connections, its limit (a connection from 127.0.0.2)`);
      // A stranger's place freed is a stranger's again.
      socks[0]!.destroy();
      for (let i = 0; i < 200 && link.connectionCount().all >= MAX_PROXY_CONNECTIONS; i++) await new Promise((r) => setTimeout(r, 10));
      const again = await from('127.0.0.3');
      socks.push(again);
      expect(await pingMedian(again, 1)).to.be.a('number');
      expect(link.refused).to.equal(3);
    } finally {
      for (const s of socks) s.destroy();
    }
  });

  it(`lets one address hold at most ${FABRIC_PER_ADDRESS} connections through all proxies (its own proxies too), so one host cannot take the places every host shares`, async () => {
    const why: string[] = [];
    const own = new LinkProxy(new Link('h3', 'h1', {}, 1), { host: '127.0.0.1', port: echo.port }, 0, (w) => why.push(w), undefined, () => '127.0.0.3');
    const other = new LinkProxy(new Link('h1', 'h2', {}, 1), { host: '127.0.0.1', port: echo.port }, 0, (w) => why.push(w), undefined, () => '127.0.0.2');
    const ports = [await own.listen(), await other.listen()];
    const from = (port: number, localAddress: string): Promise<Socket> => new Promise((resolve, reject) => {
      const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s));
      s.once('error', reject);
    });
    const socks: Socket[] = [];
    try {
      // h3's own proxy takes 200 of its connections, the other proxy the rest of its 256.
      for (let i = 0; i < 200; i++) socks.push(await from(ports[0]!, '127.0.0.3'));
      for (let i = 0; i < FABRIC_PER_ADDRESS - 200; i++) socks.push(await from(ports[1]!, '127.0.0.3'));
      expect(await pingMedian(socks.at(-1)!, 1), 'carried').to.be.a('number');
      const past = [await from(ports[1]!, '127.0.0.3'), await from(ports[0]!, '127.0.0.3')];
      socks.push(...past);
      await Promise.all(past.map((s) => (s.destroyed ? undefined : new Promise((r) => s.once('close', r)))));
      expect(why).to.deep.equal([
        `the proxies carry ${FABRIC_PER_ADDRESS} connections from 127.0.0.3, the most one address may hold (a connection from 127.0.0.3)`,
        `the proxies carry ${FABRIC_PER_ADDRESS} connections from 127.0.0.3, the most one address may hold (a connection from 127.0.0.3)`,
      ]);
      // Another host's own connections are carried.
      const h1 = await from(ports[1]!, '127.0.0.2');
      socks.push(h1);
      expect(await pingMedian(h1, 1)).to.be.a('number');
      // Its places come back as its connections close.
      socks[0]!.destroy();
      for (let i = 0; i < 200 && own.connectionCount().all >= 200; i++) await new Promise((r) => setTimeout(r, 10));
      const again = await from(ports[0]!, '127.0.0.3');
      socks.push(again);
      expect(await pingMedian(again, 1)).to.be.a('number');
      expect(why).to.have.length(2);
    } finally {
      for (const s of socks) s.destroy();
      await own.close();
      await other.close();
    }
  });

  it('a target that does not read stops the sender instead of piling bytes up in the proxy', async () => {
    const held: Socket[] = [];
    const stuck = createServer((c) => {
      c.pause();
      held.push(c);
    });
    await new Promise<void>((r) => stuck.listen(0, '127.0.0.1', () => r()));
    try {
      link = proxy((stuck.address() as { port: number }).port);
      const s = await open(await link.listen());
      const total = 64 * 1024 * 1024;
      s.write(Buffer.alloc(total, 1));
      await new Promise((r) => setTimeout(r, 1000));
      // Kernel buffers hold a few MiB on each hop; the rest must still be with the sender.
      expect(s.writableLength, `${s.writableLength} bytes still with the sender`).to.be.above(total / 2);
      s.destroy();
    } finally {
      for (const c of held) c.destroy();
      await link.close();
      await new Promise((r) => stuck.close(r));
    }
  });
  describe('in the kernel', () => {
    before(function () {
      if (!kernelLinksAvailable()) this.skip();
    });
    const until = async (what: string, cond: () => boolean, ms = 10_000): Promise<void> => {
      const t0 = Date.now();
      while (!cond()) {
        if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    /**
     * The link's byte counters, once they reach `want` each way. A pump counts a chunk just after its
     * splice into the socket returns, so the peer can read the chunk before the count moves (seen in
     * CI under load: one chunk short). The count must get there, and must not go past it.
     */
    const countedBytes = async (l: LinkProxy, want: number): Promise<number[]> => {
      await until(`the counters reach ${want} each way`, () => l.link.stats.bytes.every((b) => b >= want)).catch(() => {});
      return [...l.link.stats.bytes];
    };
    /** Echoes `data` through `s` in 64 KiB writes, calling `during(fraction)` as it goes; resolves with what came back. */
    const echoThrough = async (s: Socket, data: Buffer, during: (sentFraction: number) => void = () => {}): Promise<Buffer> => {
      const back: Buffer[] = [];
      let got = 0;
      let onData: (d: Buffer) => void = () => {};
      const all = new Promise<void>((r) => {
        onData = (d: Buffer): void => {
          back.push(d);
          got += d.length;
          if (got >= data.length) r();
        };
        s.on('data', onData);
      });
      for (let off = 0; off < data.length; off += 65536) {
        if (!s.write(data.subarray(off, off + 65536))) await new Promise((r) => s.once('drain', r));
        during(off / data.length);
        if ((off / 65536) % 16 === 0) await new Promise((r) => setImmediate(r));
      }
      await all;
      s.off('data', onData);
      return Buffer.concat(back);
    };

    it('carries a clean link\'s connection in the kernel, and counts what it carried', async () => {
      link = proxy(echo.port);
      const s = await open(await link.listen());
      const data = randomBytes(2 * 1024 * 1024);
      const back = await echoThrough(s, data);
      expect(back.equals(data)).to.equal(true);
      expect(link.connectionCount()).to.deep.equal({ all: 1, kernel: 1 });
      expect(await countedBytes(link, data.length)).to.deep.equal([data.length, data.length]);
      const st = link.link.stats;
      expect(st.chunks[0]).to.be.above(0);
      expect(link.link.view().bytes).to.deep.equal([data.length, data.length]);
      s.destroy();
      await until('the proxy drops the closed connection', () => link.connectionCount().all === 0);
    });

    it('when the second pump cannot start, what the first held goes on first and is counted, then user space carries the rest', async () => {
      // The target reads nothing until the pumps have been tried: the first pump fills the way to
      // it and then holds a pipe's worth of bytes, which are its leftover when it is stopped.
      let target: Socket | null = null;
      const sink = createServer({ pauseOnConnect: true }, (t) => void (target = t));
      await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
      let calls = 0;
      let held = -1;
      let sender: Worker | null = null;
      const startPump: typeof startSplicePump = (inFd, outFd, onDone) => {
        calls++;
        if (calls === 1) {
          const real = startSplicePump(inFd, outFd, onDone);
          const wrapped: SplicePump = {
            stats: () => real.stats(),
            stop: () => {
              const st = real.stop();
              held = st.leftover.length;
              return st;
            },
          };
          return wrapped;
        }
        // Long enough for the first pump to fill the target's buffers and its own pipe.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
        throw new Error('no pipe for the second pump (test)');
      };
      link = new LinkProxy(new Link('h1', 'h2', {}, 1), { host: '127.0.0.1', port: (sink.address() as { port: number }).port }, 0, () => {}, startPump);
      try {
        // The sender is a thread of its own, so it goes on writing while this one waits in the fake.
        const data = randomBytes(32 * 1024 * 1024);
        sender = new Worker(SENDER, { eval: true, workerData: { port: await link.listen(), data } });
        sender.on('error', () => undefined);
        await until('the pumps were tried', () => calls === 2);
        expect(held, 'the first pump held bytes when it was stopped').to.be.above(0);
        expect(link.connectionCount()).to.deep.equal({ all: 1, kernel: 0 });
        const got: Buffer[] = [];
        let n = 0;
        target!.on('data', (d: Buffer) => {
          got.push(d);
          n += d.length;
        });
        target!.resume();
        await until('everything arrives', () => n >= data.length);
        expect(Buffer.concat(got).equals(data), 'every byte, in order').to.equal(true);
        expect(link.link.stats.bytes[0], 'bytes counted a→b').to.equal(data.length);
      } finally {
        await sender?.terminate();
        (target as Socket | null)?.destroy();
        await link.close();
        await new Promise((r) => sink.close(r));
      }
    });

    it('an impairment set mid-stream takes it to user space, and clearing it brings it back, without a byte lost or reordered', async () => {
      link = proxy(echo.port);
      const s = await open(await link.listen());
      const data = randomBytes(24 * 1024 * 1024);
      const modes: string[] = [];
      let step = 0;
      const back = await echoThrough(s, data, (f) => {
        if (step === 0 && f >= 0.25) {
          step = 1;
          link.link.set({ delayMs: 2 });
          modes.push(`set ${link.connectionCount().kernel}`);
        } else if (step === 1 && f >= 0.5) {
          step = 2;
          link.link.set({ delayMs: null });
          modes.push('cleared');
        } else if (step === 2 && f >= 0.6) {
          step = 3;
          link.link.cut();
          modes.push(`cut ${link.connectionCount().kernel}`);
          setTimeout(() => link.link.heal(), 100);
        }
      });
      expect(modes).to.deep.equal(['set 0', 'cleared', 'cut 0']);
      expect(back.length).to.equal(data.length);
      expect(back.equals(data), 'every byte, in order').to.equal(true);
      await until('back in the kernel once clean and idle', () => link.connectionCount().kernel === 1);
      const more = randomBytes(1024 * 1024);
      expect((await echoThrough(s, more)).equals(more)).to.equal(true);
      // Each way carried everything once (the link counts what it carried, in the kernel or here).
      const all = data.length + more.length;
      expect(await countedBytes(link, all)).to.deep.equal([all, all]);
      s.destroy();
    });

    it('goes to user space and back again, twice, carrying every byte each time', async () => {
      link = proxy(echo.port);
      const s = await open(await link.listen());
      const round = async (want: number): Promise<void> => {
        const d = randomBytes(1024 * 1024);
        expect((await echoThrough(s, d)).equals(d)).to.equal(true);
        expect(link.connectionCount().kernel).to.equal(want);
      };
      await round(1);
      for (let i = 0; i < 2; i++) {
        link.link.set({ delayMs: 2 });
        await round(0);
        link.link.set({ delayMs: null });
        await until(`back in the kernel (${i + 1})`, () => link.connectionCount().kernel === 1);
        await round(1);
      }
      s.destroy();
      await until('the proxy drops the closed connection', () => link.connectionCount().all === 0);
    });

    it('HVLAB_LINK_SPLICE=0 keeps connections in user space', async () => {
      const was = process.env.HVLAB_LINK_SPLICE;
      process.env.HVLAB_LINK_SPLICE = '0';
      try {
        link = proxy(echo.port);
        const s = await open(await link.listen());
        expect(await pingMedian(s, 3)).to.be.below(1000);
        expect(link.connectionCount()).to.deep.equal({ all: 1, kernel: 0 });
        s.destroy();
      } finally {
        if (was === undefined) delete process.env.HVLAB_LINK_SPLICE;
        else process.env.HVLAB_LINK_SPLICE = was;
      }
    });
  });
});
