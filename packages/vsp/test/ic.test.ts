import { expect } from 'chai';
import fc from 'fast-check';
import { decodeIcMessage, encodeIcMessage, encodeNegotiate, IcFlags, IcMessageType, IcStatus } from '@hvlab/protocol';
import { decodeHeartbeat, encodeHeartbeat } from '@hvlab/protocol/heartbeat';
import { encodeKvp, KvpOperation, KvpPool } from '@hvlab/protocol/kvp';
import { encodeShutdown, type ShutdownRequest } from '@hvlab/protocol/shutdown';
import { encodeTimeSync, msToFiletime } from '@hvlab/protocol/timesync';
import { VmbusLoopback, PacketType, type VmbusChannel, type VmbusDriver } from '@hvlab/vmbus';
import type { IcClient } from '@hvlab/vsc';
import { HeartbeatClient } from '@hvlab/vsc/heartbeat';
import { KvpClient } from '@hvlab/vsc/kvp';
import { ShutdownClient } from '@hvlab/vsc/shutdown';
import { TimeSyncClient } from '@hvlab/vsc/timesync';
import type { IcProvider } from '../src/index.js';
import { HeartbeatProvider } from '../src/heartbeat/index.js';
import { KvpProvider, KvpInputError } from '../src/kvp/index.js';
import { ShutdownProvider } from '../src/shutdown/index.js';
import { TimeSyncProvider } from '../src/timesync/index.js';

const quiet = { info: () => {}, warn: () => {} };

async function until(cond: () => boolean, ms = 8000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A guest clock that can start wrong. */
class TestClock {
  adjustMs = 0;
  constructor(private readonly skewMs: number) {}
  now(): number {
    return Date.now() + this.skewMs + this.adjustMs;
  }
  adjust(d: number): void {
    this.adjustMs += d;
  }
}

/** Wraps a real VSC and keeps the channel, so a test can also send raw packets as the guest. */
class TappedDriver implements VmbusDriver {
  channel: VmbusChannel | null = null;
  constructor(readonly inner: IcClient) {}
  get name(): string { return this.inner.name; }
  get interfaceType(): string { return this.inner.interfaceType; }
  get ringBytes(): number { return this.inner.ringBytes; }
  attach(ch: VmbusChannel): void {
    this.channel = ch;
    this.inner.attach(ch);
  }
  detach(): void {
    this.channel = null;
    this.inner.detach();
  }
}

interface Guest {
  lb: VmbusLoopback;
  providers: { heartbeat: HeartbeatProvider; shutdown: ShutdownProvider; timesync: TimeSyncProvider; kvp: KvpProvider };
  clients: { heartbeat: HeartbeatClient; shutdown: ShutdownClient; timesync: TimeSyncClient; kvp: KvpClient };
  taps: Record<string, TappedDriver>;
  shutdowns: ShutdownRequest[];
  clock: TestClock;
}

async function bootGuest(transport: 'shm' | 'remote', skewMs = 0, kvpBudgetBytes = Infinity): Promise<Guest> {
  const lb = new VmbusLoopback({ transport });
  await lb.start();
  const providers = {
    heartbeat: new HeartbeatProvider(quiet, { intervalMs: 50, lostAfterMs: 400 }),
    shutdown: new ShutdownProvider(quiet),
    timesync: new TimeSyncProvider(quiet, 100),
    kvp: new KvpProvider(quiet),
  };
  const shutdowns: ShutdownRequest[] = [];
  const clock = new TestClock(skewMs);
  const clients = {
    heartbeat: new HeartbeatClient(),
    shutdown: new ShutdownClient((r) => shutdowns.push(r)),
    timesync: new TimeSyncClient(clock),
    kvp: new KvpClient(() => ({ FullyQualifiedDomainName: 'guest1', OSName: 'hvlab guest kernel' }), () => kvpBudgetBytes),
  };
  const taps: Record<string, TappedDriver> = {};
  for (const [k, c] of Object.entries(clients)) {
    taps[k] = new TappedDriver(c);
    lb.client.register(taps[k]);
  }
  for (const p of Object.values(providers)) await lb.server.addDevice(p);
  await lb.client.connect();
  await until(() => Object.values(providers).every((p: IcProvider) => p.negotiated !== null)).catch((e) => {
    throw new Error(`${(e as Error).message}: not negotiated: ${Object.values(providers).filter((p: IcProvider) => !p.negotiated).map((p) => p.name).join(', ')}; channels ${JSON.stringify(lb.server.channelInfo())}`);
  });
  return { lb, providers, clients, taps, shutdowns, clock };
}

describe('periodic integration services over rings', function () {
  this.timeout(30000);
  it("heartbeat and time sync answers signal nobody: they are read on the worker's ticks", async () => {
    let toHost = 0;
    const lb = new VmbusLoopback({ transport: 'shm', faults: { toHost: (deliver) => { toHost++; deliver(); } } });
    await lb.start();
    const heartbeat = new HeartbeatProvider(quiet, { intervalMs: 50, lostAfterMs: 400 });
    const timesync = new TimeSyncProvider(quiet, 100);
    try {
      lb.client.register(new HeartbeatClient());
      lb.client.register(new TimeSyncClient(new TestClock(0)));
      await lb.server.addDevice(heartbeat);
      await lb.server.addDevice(timesync);
      await lb.client.connect();
      await until(() => heartbeat.negotiated !== null && timesync.negotiated !== null && heartbeat.sequence >= 2n && timesync.samples >= 1);
      const signalsBefore = toHost;
      const seq = heartbeat.sequence;
      const samples = timesync.samples;
      await until(() => heartbeat.sequence >= seq + 6n && timesync.samples >= samples + 3);
      expect(toHost - signalsBefore, 'guest-to-host signals while 6 beats and 3 samples were answered').to.equal(0);
      expect(heartbeat.status()).to.equal('OK');
    } finally {
      heartbeat.close();
      timesync.close();
      lb.close();
    }
  });
});

/**
 * A heartbeat channel without rings: its guest answers each request `latencyMs` after it was sent,
 * into an inbox that `poll()` reads when polled (as a ring would hold it), straight away otherwise.
 * `answering.on` false: a silent guest. `answering.handedAt` is when the provider was last handed
 * an answer that came in time (by the host clock the provider reads too): within `timelyMs` of its
 * request, so that its request cannot have timed out yet.
 */
function fakeHeartbeatChannel(canPoll: boolean, latencyMs: number, answering: { on: boolean; handedAt: number | null; timely: number }, timelyMs: number): VmbusChannel {
  const inbox: Array<[bigint, Uint8Array, number]> = [];
  let polled = false;
  const timers = new Set<NodeJS.Timeout>();
  const hand = (transId: bigint, answer: Uint8Array, sentAt: number): void => {
    const now = Date.now();
    if (now - sentAt <= timelyMs) {
      answering.handedAt = now;
      answering.timely++;
    }
    ch.onPacket(PacketType.DataInband, 0, transId, answer);
  };
  const ch = {
    open: true,
    onPacket: (_t: number, _f: number, _id: bigint, _p: Uint8Array): void => {},
    send(_type: number, _flags: number, transId: bigint, payload: Uint8Array): void {
      if (!answering.on) return;
      const sentAt = Date.now();
      const m = decodeIcMessage(payload);
      const answer = encodeIcMessage({ ...m.header, status: IcStatus.OK, flags: IcFlags.Transaction | IcFlags.Response }, encodeHeartbeat(decodeHeartbeat(m.body).sequence + 1n));
      const t = setTimeout(() => {
        timers.delete(t);
        if (polled) inbox.push([transId, answer, sentAt]);
        else hand(transId, answer, sentAt);
      }, latencyMs);
      timers.add(t);
    },
    setPolled(on: boolean): boolean {
      if (!canPoll) return false;
      polled = on;
      return true;
    },
    poll(): void {
      for (const [id, p, sentAt] of inbox.splice(0)) hand(id, p, sentAt);
    },
    close(): void {
      for (const t of timers) clearTimeout(t);
    },
  };
  return ch as unknown as VmbusChannel;
}

describe('heartbeat status, answers read on ticks or as they come', function () {
  this.timeout(30000);
  const INTERVAL_MS = 100;
  const LOST_AFTER_MS = 250;
  /**
   * Samples the status every 7 ms from 0.5 s to 2.5 s. A sample that is not OK is `lost`; it is a
   * `wrong` one when the guest had handed the provider an answer that came in time less than the
   * lost time before (the provider must then say OK, however late the event loop ran). A guest
   * answering 1.5 intervals late is answered every 2 intervals, 50 ms inside the lost time: a
   * stall of the busy test process longer than that delays the guest's answer too, and is a lost
   * sample but not a wrong one. (An answer handed after its request may have timed out, later than
   * the lost time less 20 ms, is not counted as in time: the provider may drop it.)
   */
  async function statuses(canPoll: boolean, latencyMs: number, silentAfterMs = Infinity): Promise<{ ok: number; lost: number; wrong: number; timely: number; lostAfterSilenceMs: number | null }> {
    const hb = new HeartbeatProvider(quiet, { intervalMs: INTERVAL_MS, lostAfterMs: LOST_AFTER_MS });
    hb.negotiated = { framework: { major: 3, minor: 0 }, message: { major: 3, minor: 0 } };
    const answering = { on: true, handedAt: null as number | null, timely: 0 };
    const ch = fakeHeartbeatChannel(canPoll, latencyMs, answering, LOST_AFTER_MS - 20);
    hb.reopen(ch);
    const counts = { ok: 0, lost: 0, wrong: 0, timely: 0, lostAfterSilenceMs: null as number | null };
    const t0 = Date.now();
    try {
      while (Date.now() - t0 < 2500) {
        await new Promise((r) => setTimeout(r, 7));
        const t = Date.now() - t0;
        if (t >= silentAfterMs) answering.on = false;
        if (t < 500) continue;
        const st = hb.status();
        // Read after the status: never earlier than the provider's own clock reading.
        const now = Date.now();
        if (st === 'OK') counts.ok++;
        else {
          counts.lost++;
          if (answering.handedAt !== null && now - answering.handedAt <= LOST_AFTER_MS) counts.wrong++;
          if (t >= silentAfterMs && counts.lostAfterSilenceMs === null) counts.lostAfterSilenceMs = t - silentAfterMs;
        }
      }
    } finally {
      hb.close();
      (ch as unknown as { close(): void }).close();
    }
    counts.timely = answering.timely;
    return counts;
  }

  it('a guest answering later than one interval (within the lost time) is never flagged, polled or not', async () => {
    for (const canPoll of [true, false]) {
      const c = await statuses(canPoll, 1.5 * INTERVAL_MS);
      const what = `${canPoll ? 'polled' : 'signalled'}: ${JSON.stringify(c)}`;
      expect(c.wrong, `flagged though an answer came less than the lost time before; ${what}`).to.equal(0);
      expect(c.timely, what).to.be.at.least(5);
      expect(c.ok, what).to.be.greaterThan(100);
    }
  });

  it('a guest that falls silent turns LostCommunication within the lost time and one tick, polled or not', async () => {
    for (const canPoll of [true, false]) {
      const c = await statuses(canPoll, 10, 1200);
      const what = `${canPoll ? 'polled' : 'signalled'}: ${JSON.stringify(c)}`;
      expect(c.lostAfterSilenceMs, what).to.not.equal(null);
      // Not before the lost time after its last answer (checked at every sample)...
      expect(c.wrong, `flagged though an answer came less than the lost time before; ${what}`).to.equal(0);
      expect(c.timely, what).to.be.at.least(5);
      // ...and not later than the lost time, a tick and some slack after it fell silent.
      expect(c.lostAfterSilenceMs!, what).to.be.at.most(LOST_AFTER_MS + INTERVAL_MS + 150);
    }
  });
});

for (const transport of ['shm', 'remote'] as const) {
  describe(`integration services over the ${transport} transport`, function () {
    this.timeout(60000);
    let g: Guest;
    beforeEach(async () => {
      g = await bootGuest(transport, 3_600_000);
    });
    afterEach(() => {
      for (const p of Object.values(g.providers)) p.close();
      g.lb.close();
    });

    it('negotiates the first common framework and message versions for every service', () => {
      const v = (p: IcProvider): string => `${p.negotiated!.framework.major}.${p.negotiated!.framework.minor}/${p.negotiated!.message.major}.${p.negotiated!.message.minor}`;
      expect(v(g.providers.heartbeat)).to.equal('3.0/3.0');
      expect(v(g.providers.shutdown)).to.equal('3.0/3.2');
      expect(v(g.providers.timesync)).to.equal('3.0/4.0');
      expect(v(g.providers.kvp)).to.equal('3.0/5.0');
    });

    it('heartbeat: the guest increments the sequence; silence turns OK into LostCommunication and back', async () => {
      await until(() => g.providers.heartbeat.sequence >= 3n);
      expect(g.providers.heartbeat.status()).to.equal('OK');
      // A frozen guest: its interrupts are not taken.
      g.lb.holdGuestSignals = true;
      const ch = g.taps.heartbeat.channel!;
      const handler = ch.onPacket;
      const held: Array<[number, number, bigint, Uint8Array]> = [];
      if (transport === 'remote') ch.onPacket = (t, f, id, p) => held.push([t, f, id, p.slice()]);
      await until(() => g.providers.heartbeat.status() === 'LostCommunication');
      const before = g.providers.heartbeat.sequence;
      g.lb.holdGuestSignals = false;
      if (transport === 'remote') {
        ch.onPacket = handler;
        for (const h of held) handler(...h);
      } else g.lb.client.onEvent(g.lb.server.channelInfo().find((c) => c.name === 'heartbeat')!.relid);
      await until(() => g.providers.heartbeat.status() === 'OK' && g.providers.heartbeat.sequence > before);
    });

    it('shutdown: the guest accepts and then starts its shutdown with the flags it was sent', async () => {
      await g.providers.shutdown.shutdown({ flags: 0, reason: 5, timeoutSeconds: 30, message: 'bye' });
      await until(() => g.shutdowns.length === 1);
      expect(g.shutdowns[0]).to.include({ flags: 0, reason: 5, timeoutSeconds: 30, message: 'bye' });
    });

    it('time sync: a guest clock an hour off is brought to host time and reports its offset', async () => {
      await until(() => g.providers.timesync.samples >= 3);
      expect(g.providers.timesync.initialOffsetMs!).to.be.within(3_600_000 - 60_000, 3_600_000 + 60_000);
      expect(Math.abs(g.providers.timesync.offsetMs!)).to.be.below(2000);
      expect(Math.abs(g.clock.now() - Date.now())).to.be.below(2000);
    });

    it('time sync: resync steps a guest clock that went off to host time at once, and the offset it reports is the clock after the step', async () => {
      await until(() => g.providers.timesync.samples >= 1);
      g.clock.adjust(-3_600_000);
      await g.providers.timesync.resync(5000);
      expect(Math.abs(g.clock.now() - Date.now())).to.be.below(1000);
      expect(Math.abs(g.providers.timesync.offsetMs!)).to.be.below(1000);
    });

    it('KVP: set, get, list and delete travel to the guest; guest and auto pools are read-only', async () => {
      const kvp = g.providers.kvp;
      await kvp.set('external', 'color', 'blue');
      expect(g.clients.kvp.external.get('color')).to.equal('blue');
      expect(await kvp.get('external', 'color')).to.equal('blue');
      await kvp.set('external', 'size', 'x'.repeat(2048));
      expect((await kvp.list('external')).map((e) => e.key)).to.deep.equal(['color', 'size']);
      expect(await kvp.delete('external', 'color')).to.equal(true);
      expect(await kvp.get('external', 'color')).to.equal(null);
      expect(await kvp.delete('external', 'color')).to.equal(false);
      g.clients.kvp.guest.set('app.version', '7');
      expect(await kvp.get('guest', 'app.version')).to.equal('7');
      expect(await kvp.get('auto', 'FullyQualifiedDomainName')).to.equal('guest1');
      let refused: unknown = null;
      await kvp.set('guest', 'x', 'y').catch((e) => (refused = e));
      expect(refused).to.be.instanceOf(KvpInputError);
      refused = null;
      await kvp.set('external', 'k', 'v'.repeat(2049)).catch((e) => (refused = e));
      expect(refused).to.be.instanceOf(KvpInputError);
    });

    it('KVP: a set that would not fit the guest\'s state budget (its device pages) is refused, naming why; shrinking makes room', async () => {
      const small = await bootGuest(transport, 0, 5000);
      try {
        const kvp = small.providers.kvp;
        await kvp.set('external', 'a', 'x'.repeat(2000));
        await kvp.set('external', 'b', 'x'.repeat(2000));
        let refused: Error | null = null;
        await kvp.set('external', 'c', 'x'.repeat(2000)).catch((e: Error) => (refused = e));
        expect(refused, 'the third 2 KB value does not fit 5000 bytes').to.not.equal(null);
        expect(refused!.message).to.match(/the guest refused to set "c": its pool is full/);
        expect(small.clients.kvp.external.has('c')).to.equal(false);
        await kvp.set('external', 'a', 'short');
        await kvp.set('external', 'c', 'x'.repeat(2000));
        expect([...small.clients.kvp.external.keys()].sort()).to.deep.equal(['a', 'b', 'c']);
        expect(small.clients.kvp.stateBytes()).to.be.at.most(5000);
      } finally {
        small.lb.close();
      }
    });

    it('every provider survives 10,000 random and mutated packets from the guest and keeps serving a well-behaved guest', async function () {
      this.timeout(120000);
      const good = await bootGuest(transport);
      try {
        const valid = (type: number, body: Uint8Array): Uint8Array => encodeIcMessage(
          { framework: { major: 3, minor: 0 }, message: { major: 3, minor: 0 }, type, status: 0, transactionId: 1, flags: IcFlags.Transaction | IcFlags.Response }, body);
        const seeds = [
          valid(IcMessageType.Negotiate, encodeNegotiate({ framework: [{ major: 3, minor: 0 }], message: [{ major: 3, minor: 0 }] })),
          valid(IcMessageType.Heartbeat, encodeHeartbeat(5n)),
          valid(IcMessageType.Shutdown, encodeShutdown({ reason: 0, timeoutSeconds: 1, flags: 0, message: '' })),
          valid(IcMessageType.TimeSync, encodeTimeSync({ parentTime: msToFiletime(Date.now()), referenceTime: 1n, flags: 1, leapFlags: 0, stratum: 0 })),
          valid(IcMessageType.Kvp, encodeKvp({ operation: KvpOperation.Get, pool: KvpPool.External, index: 0, key: 'k', value: 'v' })),
        ];
        const packet = fc.oneof(
          fc.uint8Array({ minLength: 0, maxLength: 600 }),
          fc.tuple(fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 8 }), fc.nat(2600)).map(([s, flips, cut]) => {
            const b = s.slice(0, Math.max(1, cut));
            for (const [i, v] of flips) b[i % b.length] = v;
            return b;
          }),
        );
        const packets = fc.sample(fc.record({
          type: fc.constantFrom(PacketType.DataInband, PacketType.DataInband, PacketType.Completion, PacketType.DataUsingGpaDirect, PacketType.DataUsingXferPages),
          flags: fc.constantFrom(0, 1),
          transId: fc.oneof(fc.bigInt({ min: 0n, max: 40n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
          payload: packet,
        }), 10_000);
        for (const [name, provider] of Object.entries(g.providers) as Array<[keyof Guest['providers'], IcProvider]>) {
          const ch = g.taps[name].channel!;
          const handledBefore = provider.stats.rejected + provider.stats.answers;
          const realRequests = () => (name === 'kvp' ? Math.ceil(packets.length / 500) : 0);
          for (let i = 0; i < packets.length; i++) {
            const p = packets[i];
            ch.send(p.type, p.flags, p.transId, p.payload);
            // Real requests now and then, so mutated answers meet pending transaction ids.
            if (name === 'kvp' && i % 500 === 0) void g.providers.kvp.get('external', 'k').catch(() => undefined);
            if (i % 200 === 0 || ch.stats.queued > 1000) await new Promise((r) => setImmediate(r));
            while (ch.stats.queued > 1000) await new Promise((r) => setTimeout(r, 1));
          }
          // Each fuzz packet is either rejected or taken as the answer to a pending request.
          await until(() => provider.stats.rejected + provider.stats.answers - handledBefore >= packets.length, 60000);
          expect(provider.stats.rejected + provider.stats.answers - handledBefore).to.be.at.most(packets.length + realRequests() + 200);
          expect(ch.open, `${name}'s fuzzed channel is still open`).to.equal(true);
          // The well-behaved guest is served throughout.
          const seq = good.providers.heartbeat.sequence;
          await until(() => good.providers.heartbeat.sequence > seq);
          await good.providers.kvp.set('external', `after-${name}`, 'ok');
          expect(await good.providers.kvp.get('external', `after-${name}`)).to.equal('ok');
        }
        // And the fuzzed guest's own services still work afterwards.
        await g.providers.kvp.set('external', 'still', 'here');
        expect(await g.providers.kvp.get('external', 'still')).to.equal('here');
        const seq = g.providers.heartbeat.sequence;
        await until(() => g.providers.heartbeat.sequence > seq);
        expect(g.lb.server.channelInfo().every((c) => c.state === 'open' && c.faults === 0)).to.equal(true);
      } finally {
        for (const p of Object.values(good.providers)) p.close();
        good.lb.close();
      }
    });
  });
}

describe('integration-service answers from the guest', () => {
  it('a request of another service type is answered NotSupported, not acted on', () => {
    const sent: Uint8Array[] = [];
    const c = new KvpClient(() => ({}));
    const fake = { onPacket: (_t: number, _f: number, _id: bigint, _p: Uint8Array) => {}, send: (_t: number, _f: number, _id: bigint, p: Uint8Array) => sent.push(p.slice()), open: true };
    c.attach(fake as unknown as VmbusChannel);
    const neg = encodeIcMessage({ framework: { major: 3, minor: 0 }, message: { major: 5, minor: 0 }, type: IcMessageType.Negotiate, status: 0, transactionId: 0, flags: IcFlags.Transaction | IcFlags.Request },
      encodeNegotiate({ framework: [{ major: 3, minor: 0 }], message: [{ major: 5, minor: 0 }] }));
    fake.onPacket(PacketType.DataInband, 0, 1n, neg);
    const hb = encodeIcMessage({ framework: { major: 3, minor: 0 }, message: { major: 5, minor: 0 }, type: IcMessageType.Heartbeat, status: 0, transactionId: 1, flags: IcFlags.Transaction | IcFlags.Request }, encodeHeartbeat(1n));
    fake.onPacket(PacketType.DataInband, 0, 2n, hb);
    expect(sent).to.have.length(2);
    expect(new DataView(sent[1].buffer).getUint32(8 + 12, true)).to.equal(IcStatus.NotSupported);
  });
});
