/**
 * The addon's splice pumps (one direction of a TCP proxy in the kernel), on loopback sockets Node
 * holds paused: every byte arrives in order and the end of the input ends the output; a pump
 * stopped while its output is full hands back what it read and did not deliver, and the caller
 * delivering it keeps the stream whole; a reset output fails the pump and calls back; what is not
 * two sockets is refused. Skipped without the addon's pumps.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { ShmError, splicePumpAvailable, startSplicePump } from '../src/index.js';

interface Pair {
  /** The connecting end, and the accepted one; both paused, nothing read. */
  near: Socket;
  far: Socket;
}

const servers: Server[] = [];
const sockets: Socket[] = [];

async function pair(): Promise<Pair> {
  const server = createServer({ pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const near = connect((server.address() as { port: number }).port, '127.0.0.1');
  sockets.push(near);
  // Paused in its 'connect' handler, before Node's first read.
  await new Promise<void>((r) => near.once('connect', () => {
    near.pause();
    r();
  }));
  const far = await accepted;
  sockets.push(far);
  return { near, far };
}

const fdOf = (s: Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;

function collect(s: Socket): { bytes: () => Buffer; ended: Promise<void> } {
  const chunks: Buffer[] = [];
  const ended = new Promise<void>((resolve) => s.once('end', () => resolve()));
  s.on('data', (d: Buffer) => chunks.push(d));
  s.resume();
  return { bytes: () => Buffer.concat(chunks), ended };
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('splice pumps', function () {
  this.timeout(30_000);
  before(function () {
    if (!splicePumpAvailable()) this.skip();
  });
  afterEach(() => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const s of servers.splice(0)) s.close();
  });

  it('moves every byte in order, and the end of the input shuts the output down', async () => {
    const a = await pair();
    const b = await pair();
    let done = 0;
    const pump = startSplicePump(fdOf(a.far), fdOf(b.near), () => done++);
    const got = collect(b.far);
    const data = randomBytes(4 * 1024 * 1024 + 123);
    a.near.end(data);
    await got.ended;
    expect(got.bytes().equals(data)).to.equal(true);
    await until('the pump calls back', () => done === 1);
    const st = pump.stop();
    expect(st).to.deep.include({ state: 'ended', errno: 0, bytes: data.length });
    expect(st.chunks).to.be.above(0);
    expect(st.leftover.length).to.equal(0);
    expect(pump.stop().state, 'a second stop').to.equal('ended');
  });

  it('stopped while its output is full, hands back what it read; delivering that keeps the stream whole', async () => {
    const a = await pair();
    const b = await pair();
    const pump = startSplicePump(fdOf(a.far), fdOf(b.near), () => {});
    // Nobody reads b.far: the kernel's buffers fill and the pump holds a chunk.
    const data = randomBytes(16 * 1024 * 1024);
    a.near.write(data);
    // Full: nothing moves any more (the same counts at 20 looks in a row, 100 ms or more) while the
    // pump holds bytes it read. A pump still moving bytes (a slow machine) may hold none at a stop.
    let last = '';
    let same = 0;
    await until('the pump stalls with its output full', () => {
      const s = pump.stats();
      const now = `${s.read}/${s.bytes}`;
      same = now === last ? same + 1 : 0;
      last = now;
      return same >= 20 && s.bytes > 0 && s.read > s.bytes;
    }, 20_000);
    const st = pump.stop();
    expect(st.state).to.equal('running');
    expect(st.leftover.length).to.be.within(1, 1024 * 1024);
    expect(st.leftover.length, 'what it hands back is what it read and did not deliver').to.equal(st.read - st.bytes);
    // From here on Node carries the bytes: first what the pump held, then the rest of the input.
    const got = collect(b.far);
    b.near.write(st.leftover);
    a.far.pipe(b.near);
    a.far.resume();
    a.near.end();
    await got.ended;
    expect(got.bytes().length).to.equal(data.length);
    expect(got.bytes().equals(data)).to.equal(true);
  });

  it('fails and calls back when its output is reset', async () => {
    const a = await pair();
    const b = await pair();
    let done = 0;
    const pump = startSplicePump(fdOf(a.far), fdOf(b.near), () => done++);
    b.far.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 50));
    a.near.write(randomBytes(256 * 1024));
    await until('the pump calls back', () => done === 1);
    const st = pump.stop();
    expect(st.state).to.equal('failed');
    expect(st.errno).to.be.above(0);
  });

  it('refuses what is not two open sockets', async () => {
    const a = await pair();
    for (const [i, o] of [[-1, fdOf(a.near)], [fdOf(a.near), fdOf(a.near)], [0, fdOf(a.near)], [fdOf(a.near), 987654]]) {
      expect(() => startSplicePump(i!, o!, () => {}), `${i} -> ${o}`).to.throw(ShmError, /two different open sockets|file descriptors/);
    }
  });
});
