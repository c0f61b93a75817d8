/**
 * The fault API's VMBus faults on live channels (faults.ts: VmbusFaultInjector, FaultyTransport,
 * VmbusFault), over both transports: an in-process host and guest (VmbusLoopback) whose server is
 * given an injector, as the VMWP's is. What must hold: a fault acts on the channel it names and
 * on no other; it is switched on and off on an open channel, which is never reopened; a delayed
 * channel's round trip grows by the delay (one packet of each round trip is delayed), in order;
 * dropped signals stall a channel until the fault ends, and then every packet arrives once and in
 * order; corruption never throws; what a fault holds counts in a saved state; the same seed draws
 * the same fates.
 */
import { expect } from 'chai';
import {
  MemoryFrameNetwork, PacketType, VmbusFault, VmbusFaultInjector, VmbusLoopback,
  type VmbusChannel, type VmbusDevice, type VmbusDriver, type VmbusFaultOptions,
} from '../src/index.js';

const ECHO = '11111111-2222-3333-4444-555555555555';
const OTHER = '66666666-7777-8888-9999-000000000000';
const LATE = '77777777-7777-8888-9999-000000000000';

/** The host's device: echoes every packet, and remembers the order it got them in. */
class EchoDevice implements VmbusDevice {
  readonly interfaceInstance: string;
  received: bigint[] = [];
  constructor(readonly name: string, readonly interfaceType: string) {
    this.interfaceInstance = interfaceType.replace(/^./, 'a');
  }
  open(channel: VmbusChannel): void {
    channel.onPacket = (_t, _f, transId, payload) => {
      this.received.push(transId);
      channel.send(PacketType.DataInband, 0, transId, payload.slice());
    };
  }
  close(): void {}
}

/** The guest's driver: records the echoes (id and payload) and wakes whoever waits for one. */
class EchoDriver implements VmbusDriver {
  channel: VmbusChannel | null = null;
  readonly got: bigint[] = [];
  readonly payloads: Uint8Array[] = [];
  private readonly waiters = new Map<bigint, () => void>();
  constructor(readonly name: string, readonly interfaceType: string, readonly ringBytes = 16384) {}
  attach(channel: VmbusChannel): void {
    this.channel = channel;
    channel.onPacket = (_t, _f, transId, payload) => {
      this.got.push(transId);
      this.payloads.push(payload.slice());
      this.waiters.get(transId)?.();
      this.waiters.delete(transId);
    };
  }
  detach(): void {
    this.channel = null;
  }
  /** ms from sending packet `id` until its echo arrives. */
  roundTrip(id: bigint): Promise<number> {
    return new Promise((resolve) => {
      const t0 = performance.now();
      this.waiters.set(id, () => resolve(performance.now() - t0));
      this.channel!.send(PacketType.DataInband, 0, id, new Uint8Array(64).fill(Number(id & 0xffn)));
    });
  }
}

async function until(what: string, cond: () => boolean, ms = 15000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ids = (from: number, n: number): bigint[] => Array.from({ length: n }, (_, i) => BigInt(from + i));

/** Packets `from`..`from+n-1` on `ch`, 200 bytes each (byte i of packet k is k+i). */
function sendMany(ch: VmbusChannel, from: number, n: number): void {
  for (let k = from; k < from + n; k++) ch.send(PacketType.DataInband, 0, BigInt(k), Uint8Array.from({ length: 200 }, (_, i) => (k + i) & 0xff));
}

const fault = (o: Partial<VmbusFaultOptions>): VmbusFault => new VmbusFault({ channel: 'echo', seed: 1, ...o });

interface Pair {
  lb: VmbusLoopback;
  injector: VmbusFaultInjector;
  echo: EchoDevice;
  drv: EchoDriver;
  otherDrv: EchoDriver;
  opens: (name: string) => number;
}

for (const transport of ['shm', 'remote'] as const) {
  describe(`VMBus faults on live channels (${transport} transport)`, function () {
    this.timeout(60000);
    const loopbacks: VmbusLoopback[] = [];
    afterEach(() => {
      for (const lb of loopbacks.splice(0)) lb.close();
    });

    async function pair(before?: (injector: VmbusFaultInjector) => void): Promise<Pair> {
      const injector = new VmbusFaultInjector();
      before?.(injector);
      const lb = new VmbusLoopback({ transport, ...(transport === 'remote' ? { frames: new MemoryFrameNetwork() } : {}), faults: { injector } });
      loopbacks.push(lb);
      await lb.start();
      const echo = new EchoDevice('echo', ECHO);
      await lb.server.addDevice(echo);
      await lb.server.addDevice(new EchoDevice('other', OTHER));
      const drv = new EchoDriver('echo', ECHO);
      const otherDrv = new EchoDriver('other', OTHER);
      lb.client.register(drv);
      lb.client.register(otherDrv);
      await lb.client.connect();
      await until('both channels open', () => drv.channel !== null && otherDrv.channel !== null);
      const opens = (name: string): number => lb.server.channelInfo().find((c) => c.name === name)!.opens;
      return { lb, injector, echo, drv, otherDrv, opens };
    }

    it('every channel end is wrapped, and with no fault every packet passes in order', async () => {
      const { injector, drv } = await pair();
      expect(injector.channels().map((c) => [c.name, c.transport, c.faults.length]).sort()).to.deep.equal([['echo', transport, 0], ['other', transport, 0]]);
      sendMany(drv.channel!, 1, 2000);
      await until('2000 echoes', () => drv.got.length === 2000);
      expect(drv.got).to.deep.equal(ids(1, 2000));
    });

    it('a delay fault grows each round trip by the delay (one packet of each is delayed), keeps order, and comes off the open channel', async () => {
      const { injector, drv, otherDrv, opens } = await pair();
      const D = 100;
      const N = 10;
      const base: number[] = [];
      for (let i = 1; i <= N; i++) base.push(await drv.roundTrip(BigInt(i)));
      const f = fault({ delay: 1, delayMs: D });
      injector.set('d1', f);
      expect(injector.channels().find((c) => c.name === 'echo')!.faults).to.deep.equal(['d1']);
      const slow: number[] = [];
      const other: Promise<number>[] = [];
      for (let i = 1; i <= N; i++) {
        other.push(otherDrv.roundTrip(BigInt(100 + i)));
        slow.push(await drv.roundTrip(BigInt(100 + i)));
      }
      await Promise.all(other);
      // Each delayed packet waits at least exactly D; the round trips grew by the delay against the
      // baseline (its fastest: a baseline round trip that met a stall of this busy process is slower).
      expect(Math.min(...slow), `round trips ${slow.map((x) => x.toFixed(1)).join(' ')}`).to.be.at.least(D);
      expect(median(slow) - Math.min(...base), `baseline ${Math.min(...base).toFixed(1)} ms, delayed ${median(slow).toFixed(1)} ms`).to.be.at.least(D * 0.9);
      // One packet of each round trip was delayed (the host's), both were seen; the other channel's none.
      expect(f.stats.packets).to.deep.include({ seen: 2 * N, delayed: N, dropped: 0 });
      // Delay only: order is kept, even for a burst.
      sendMany(drv.channel!, 1000, 300);
      await until('300 delayed echoes', () => drv.got.filter((x) => x >= 1000n).length === 300);
      expect(drv.got.filter((x) => x >= 1000n)).to.deep.equal(ids(1000, 300));
      // Off, on the same open channel: nothing more is delayed, and the channel was never reopened.
      expect(injector.remove('d1')).to.equal(f);
      const seen = f.stats.packets.seen;
      for (let i = 1; i <= 5; i++) await drv.roundTrip(BigInt(2000 + i));
      expect(f.stats.packets.seen).to.equal(seen);
      expect(injector.channels().every((c) => c.faults.length === 0)).to.equal(true);
      expect([opens('echo'), opens('other')]).to.deep.equal([1, 1]);
    });

    it('a drop fault lets nothing through on its channel only, and once it ends everything does', async () => {
      const { injector, drv, otherDrv, opens } = await pair();
      const f = fault({ drop: 1 });
      injector.set('x', f);
      sendMany(drv.channel!, 1, 20);
      sendMany(otherDrv.channel!, 1, 20);
      await until('the other channel echoed', () => otherDrv.got.length === 20);
      await until('the fault saw 20 packets', () => f.stats.packets.seen === 20);
      await sleep(50);
      expect(drv.got).to.deep.equal([]);
      expect(f.stats.packets.dropped).to.equal(20);
      injector.remove('x');
      sendMany(drv.channel!, 21, 20);
      await until('20 echoes after the fault', () => drv.got.length === 20);
      expect(drv.got).to.deep.equal(ids(21, 20));
      expect(opens('echo')).to.equal(1);
    });

    it('dropped signals stall the channel until the fault ends; then every packet arrives once, in order', async () => {
      const { injector, drv, otherDrv, opens } = await pair();
      const f = fault({ signalDrop: 1 });
      injector.set('s', f);
      // More than a ring (or a credit window) holds, so the stall shows on either transport.
      const n = 300;
      sendMany(drv.channel!, 1, n);
      await until('a signal was dropped', () => f.stats.signals.dropped > 0);
      // Stalled: the count stops short and stays there.
      let last = -1;
      await until('the channel stalls', () => {
        const same = drv.got.length === last;
        last = drv.got.length;
        return same && drv.got.length < n;
      }, 20000);
      await sleep(300);
      expect(drv.got.length, 'no progress while signals are dropped').to.equal(last);
      expect(drv.got.length).to.be.lessThan(n);
      // The other channel is not stalled.
      sendMany(otherDrv.channel!, 1, 100);
      await until('the other channel echoed', () => otherDrv.got.length === 100);
      injector.remove('s');
      await until(`${n} echoes after the fault ended`, () => drv.got.length === n);
      await sleep(50);
      expect(drv.got).to.deep.equal(ids(1, n));
      expect(opens('echo')).to.equal(1);
    });

    it('corruption changes payloads both ways and never throws; the channel stays open', async () => {
      const { injector, echo, drv, opens } = await pair();
      const f = fault({ corrupt: 1, seed: 5 });
      injector.set('c', f);
      const n = 200;
      sendMany(drv.channel!, 1, n);
      await until(`${n} echoes`, () => drv.got.length === n);
      expect(drv.got).to.deep.equal(ids(1, n));
      expect(echo.received.length).to.equal(n);
      expect(f.stats.packets.corrupted).to.equal(2 * n);
      const changed = drv.payloads.filter((p, i) => p.some((b, j) => j < 200 && b !== ((i + 1 + j) & 0xff))).length;
      expect(changed).to.be.greaterThan(n * 0.9);
      expect(drv.channel!.open).to.equal(true);
      injector.remove('c');
      await drv.roundTrip(9999n);
      expect(drv.payloads.at(-1)![0]).to.equal(9999 & 0xff);
      expect(opens('echo')).to.equal(1);
    });

    it('duplicates are real second sends: each packet is echoed twice and each echo sent twice', async () => {
      const { injector, echo, drv } = await pair();
      const f = fault({ duplicate: 1 });
      injector.set('dup', f);
      sendMany(drv.channel!, 1, 50);
      await until('200 echoes', () => drv.got.length === 200);
      await sleep(50);
      expect(drv.got.length).to.equal(200);
      expect(echo.received).to.deep.equal(ids(1, 50).flatMap((x) => [x, x]));
      for (const x of ids(1, 50)) expect(drv.got.filter((y) => y === x).length).to.equal(4);
      expect(f.stats.packets.duplicated).to.equal(150);
      expect(drv.channel!.open).to.equal(true);
    });

    it('reordering holds packets back behind the next one; nothing is lost or doubled', async () => {
      const { injector, echo, drv } = await pair();
      const f = fault({ reorder: 0.5, seed: 3 });
      injector.set('r', f);
      sendMany(drv.channel!, 1, 200);
      await until('200 echoes', () => drv.got.length === 200);
      expect(f.stats.packets.reordered).to.be.greaterThan(0);
      expect(echo.received).to.not.deep.equal(ids(1, 200));
      expect([...echo.received].sort((a, b) => Number(a - b))).to.deep.equal(ids(1, 200));
      expect([...drv.got].sort((a, b) => Number(a - b))).to.deep.equal(ids(1, 200));
    });

    it('a fault on every channel (channel null) applies to a channel opened while it lasts', async () => {
      const { lb, injector, drv, otherDrv } = await pair();
      const f = new VmbusFault({ channel: null, seed: 1, drop: 1 });
      injector.set('all', f);
      const late = new EchoDevice('late', LATE);
      const lateDrv = new EchoDriver('late', LATE);
      lb.client.register(lateDrv);
      await lb.server.addDevice(late);
      await until('the late channel open', () => lateDrv.channel !== null);
      expect(injector.channels().map((c) => c.faults.join()).sort()).to.deep.equal(['all', 'all', 'all']);
      for (const d of [drv, otherDrv, lateDrv]) sendMany(d.channel!, 1, 10);
      await until('30 packets dropped', () => f.stats.packets.dropped === 30);
      injector.remove('all');
      for (const d of [drv, otherDrv, lateDrv]) sendMany(d.channel!, 11, 10);
      await until('10 echoes on each', () => [drv, otherDrv, lateDrv].every((d) => d.got.length === 10));
      expect(lateDrv.got).to.deep.equal(ids(11, 10));
    });

    it('packets a delay fault holds count as the channel\'s queued packets in a saved state, and go out when it ends', async () => {
      const { lb, injector, echo, drv } = await pair();
      injector.set('hold', fault({ delay: 1, delayMs: 30000 }));
      sendMany(drv.channel!, 1, 3);
      await until('the host echoed 3', () => echo.received.length === 3);
      expect(injector.channels().find((c) => c.name === 'echo')!.holding).to.equal(3);
      await lb.server.whenIdle();
      const saved = lb.server.save().channels.find((c) => c.interfaceType === ECHO)!;
      expect(saved.queued.length).to.equal(3);
      expect(drv.got).to.deep.equal([]);
      injector.remove('hold');
      await until('3 echoes once the fault ended', () => drv.got.length === 3);
      expect(drv.got).to.deep.equal(ids(1, 3));
    });

    it('the same seed draws the same fates; another seed others', async () => {
      const run = async (seed: number): Promise<string> => {
        const { lb, injector, drv, echo } = await pair();
        injector.set('p', fault({ drop: 0.3, duplicate: 0.2, seed }));
        sendMany(drv.channel!, 1, 200);
        // Wait until the host drew the fates of the guest's 200 packets and of every echo it sent.
        const f = injector.get('p')!;
        await until('200 seen inbound', () => f.stats.packets.seen >= 200 && f.stats.packets.seen === 200 + echo.received.length);
        // Then until every echo that was not dropped has arrived: with the fault off (every fate is
        // drawn), a last round trip comes back behind all of them, the channel keeping its order.
        expect(injector.remove('p')).to.equal(f);
        await drv.roundTrip(9999n);
        expect(drv.got.at(-1), 'the last round trip came back last').to.equal(9999n);
        lb.close();
        const fated = (ids: bigint[]): string[] => ids.filter((x) => x !== 9999n).map(String);
        return JSON.stringify({ received: fated(echo.received), got: fated(drv.got) });
      };
      const a = await run(42);
      const b = await run(42);
      const c = await run(43);
      expect(a).to.equal(b);
      expect(a).to.not.equal(c);
    });
  });
}

describe('VmbusFault draws', () => {
  it('draw every packet the same number of times whatever its fate, per channel and direction', () => {
    const a = new VmbusFault({ channel: null, seed: 9, drop: 0.5, corrupt: 0.5, duplicate: 0.5, delay: 0.5, delayMs: 5, reorder: 0.5 });
    const b = new VmbusFault({ channel: null, seed: 9, drop: 0.5, corrupt: 0.5, duplicate: 0.5, delay: 0.5, delayMs: 5, reorder: 0.5 });
    const fate = () => ({ drop: false, flips: [] as Array<[number, number]>, copies: 1, delayMs: 0, reorderBy: [] as VmbusFault[] });
    const fa: string[] = [];
    const fb: string[] = [];
    for (let i = 0; i < 100; i++) {
      const x = fate();
      a.drawPacket('heartbeat', 'out', x, 64);
      fa.push(JSON.stringify({ ...x, reorderBy: x.reorderBy.length }));
      // b also serves another channel in between: heartbeat's fates do not change.
      b.drawPacket('kvp', 'out', fate(), 64);
      const y = fate();
      b.drawPacket('heartbeat', 'out', y, 64);
      fb.push(JSON.stringify({ ...y, reorderBy: y.reorderBy.length }));
    }
    expect(fa).to.deep.equal(fb);
    expect(a.stats.packets.seen).to.equal(100);
    expect(b.stats.packets.seen).to.equal(200);
    // Packets the host receives are never delayed (one packet of a round trip is).
    const inbound = fate();
    for (let i = 0; i < 50; i++) a.drawPacket('heartbeat', 'in', inbound, 64);
    expect(inbound.delayMs).to.equal(0);
  });
});
