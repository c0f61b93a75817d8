/**
 * VMBus under injected faults, injected by wrapping (a FaultyLink on the guest's remote link, a
 * FaultyListener on the hub, a wrapped signal function on the shared-memory transport) and never
 * by patching either end. The remote transport runs here on the in-process frame network, which
 * also shows that it needs nothing of ZeroMQ. What must hold: no fault throws out of either end; a
 * fault that breaks a channel's protocol (a duplicated packet overruns the credit) closes that
 * channel only; the hub serves on; lost signals delay packets but lose none.
 */
import { expect } from 'chai';
import {
  FrameKind, MemoryFrameNetwork, PacketType, VmbusLoopback, encodeHelloFrame, encodePacketFrame, randomFrameFaults, randomSignalFaults,
  type FrameFault, type VmbusChannel, type VmbusDevice, type VmbusDriver,
} from '../src/index.js';

const ECHO = '11111111-2222-3333-4444-555555555555';
const OTHER = '66666666-7777-8888-9999-000000000000';
const LATE = '77777777-7777-8888-9999-000000000000';

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

class EchoDriver implements VmbusDriver {
  channel: VmbusChannel | null = null;
  readonly got: bigint[] = [];
  constructor(readonly name: string, readonly interfaceType: string, readonly ringBytes = 16384) {}
  attach(channel: VmbusChannel): void {
    this.channel = channel;
    channel.onPacket = (_t, _f, transId) => this.got.push(transId);
  }
  detach(): void {
    this.channel = null;
  }
}

async function until(what: string, cond: () => boolean, ms = 10000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const frameRelid = (f: Uint8Array): number => new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(0, true);
const frameKind = (f: Uint8Array): number => new DataView(f.buffer, f.byteOffset, f.byteLength).getUint16(4, true);

/** Packets 1..n on `ch`, 200 bytes each; those the channel refuses (closed) are left out. */
function sendMany(ch: VmbusChannel, n: number): void {
  for (let i = 1; i <= n; i++) {
    if (!ch.open) return;
    try {
      ch.send(PacketType.DataInband, 0, BigInt(i), new Uint8Array(200).fill(i & 0xff));
    } catch {
      return; // closed by a fault meanwhile: that is allowed
    }
  }
}

/** A fault that passes frames untouched until it is switched on, and again when switched off. */
function switchable<F extends FrameFault>(fault: F): FrameFault & { on: boolean; stats: F extends { stats: infer S } ? S : never } {
  const s = Object.assign((f: Uint8Array, deliver: (g: Uint8Array) => void) => (s.on ? fault(f, deliver) : deliver(f)), { on: false, stats: (fault as unknown as { stats: never }).stats });
  return s;
}

describe('VMBus under injected faults', function () {
  this.timeout(60000);
  const loopbacks: VmbusLoopback[] = [];
  const warnings: string[] = [];
  const log = { info: () => {}, warn: (o: object, m?: string) => void warnings.push(`${m ?? ''} ${JSON.stringify(o)}`) };
  afterEach(() => {
    for (const lb of loopbacks.splice(0)) lb.close();
    warnings.length = 0;
  });

  async function remotePair(faults: ConstructorParameters<typeof VmbusLoopback>[0]['faults'] = {}): Promise<{ lb: VmbusLoopback; echo: EchoDevice; other: EchoDevice; drv: EchoDriver; otherDrv: EchoDriver }> {
    const lb = new VmbusLoopback({ transport: 'remote', frames: new MemoryFrameNetwork(), faults, log });
    loopbacks.push(lb);
    await lb.start();
    const echo = new EchoDevice('echo', ECHO);
    const other = new EchoDevice('other', OTHER);
    await lb.server.addDevice(echo);
    await lb.server.addDevice(other);
    const drv = new EchoDriver('echo', ECHO);
    const otherDrv = new EchoDriver('other', OTHER);
    lb.client.register(drv);
    lb.client.register(otherDrv);
    await lb.client.connect();
    await until('both channels open', () => drv.channel !== null && otherDrv.channel !== null);
    return { lb, echo, other, drv, otherDrv };
  }

  it('the remote transport carries packets in order on the in-process frame network (no ZeroMQ)', async () => {
    const { drv } = await remotePair();
    sendMany(drv.channel!, 1000);
    await until('1000 echoes', () => drv.got.length === 1000);
    expect(drv.got).to.deep.equal(Array.from({ length: 1000 }, (_, i) => BigInt(i + 1)));
  });

  it('a link that duplicates one channel\'s packets overruns that channel\'s credit and faults it only; the other carries on', async () => {
    let target = -1;
    const fault = randomFrameFaults(11, { duplicate: 0.3, only: (f) => frameRelid(f) === target && frameKind(f) === FrameKind.Packet });
    const { lb, drv, otherDrv } = await remotePair({ guestLink: { send: fault } });
    target = drv.channel!.relid;
    sendMany(drv.channel!, 300);
    const echoInfo = (): { faults: number } => lb.server.channelInfo().find((c) => c.name === 'echo')!;
    await until('the echo channel faulted on one side', () => echoInfo().faults > 0 || !drv.channel?.open);
    expect(fault.stats.duplicated).to.be.greaterThan(0);
    expect(warnings.some((w) => /credit/.test(w)), 'a credit overrun was the reason').to.equal(true);
    // The other channel of the same link is untouched.
    sendMany(otherDrv.channel!, 200);
    await until('200 echoes on the other channel', () => otherDrv.got.length === 200);
    expect(otherDrv.got).to.deep.equal(Array.from({ length: 200 }, (_, i) => BigInt(i + 1)));
    expect(lb.server.channelInfo().find((c) => c.name === 'other')!.faults).to.equal(0);
  });

  for (const seed of [1, 2, 3]) {
    it(`random drop, duplicate, corrupt, reorder and delay of every frame both ways (seed ${seed}): neither end throws, and a channel added afterwards works`, async () => {
      const guestSend = switchable(randomFrameFaults(seed, { drop: 0.1, duplicate: 0.1, corrupt: 0.1, reorder: 0.1, delay: 0.1, delayMs: 5 }));
      const hostSend = switchable(randomFrameFaults(seed + 100, { drop: 0.1, duplicate: 0.1, corrupt: 0.1, reorder: 0.1, delay: 0.1, delayMs: 5 }));
      const { lb, drv, otherDrv } = await remotePair({ guestLink: { send: guestSend }, hostLink: { send: hostSend } });
      guestSend.on = true;
      hostSend.on = true;
      sendMany(drv.channel!, 300);
      sendMany(otherDrv.channel!, 300);
      await new Promise((r) => setTimeout(r, 300));
      guestSend.on = false;
      hostSend.on = false;
      expect(guestSend.stats.dropped + guestSend.stats.duplicated + guestSend.stats.corrupted + guestSend.stats.reordered).to.be.greaterThan(0);
      // The hub and the guest's link still serve: a channel hot-added now carries packets both ways.
      const late = new EchoDevice('late', LATE);
      const lateDrv = new EchoDriver('late', LATE);
      lb.client.register(lateDrv);
      await lb.server.addDevice(late);
      await until('the late channel open', () => lateDrv.channel !== null);
      sendMany(lateDrv.channel!, 100);
      await until('100 echoes on the late channel', () => lateDrv.got.length === 100);
      expect(lateDrv.got).to.deep.equal(Array.from({ length: 100 }, (_, i) => BigInt(i + 1)));
    });
  }

  it('a lost hello is repaired by the next channel the guest opens', async () => {
    let first = true;
    const dropFirstHello: FrameFault = (f, deliver) => {
      if (first && frameKind(f) === FrameKind.Hello) {
        first = false;
        return;
      }
      deliver(f);
    };
    const { drv } = await remotePair({ guestLink: { send: dropFirstHello } });
    expect(first).to.equal(false);
    sendMany(drv.channel!, 50);
    await until('50 echoes', () => drv.got.length === 50);
  });

  it('the hub drops the frames of a peer that has not said hello, refuses a bad token, and serves the real guest on', async () => {
    const net = new MemoryFrameNetwork();
    const lb = new VmbusLoopback({ transport: 'remote', frames: net, log });
    loopbacks.push(lb);
    await lb.start();
    const echo = new EchoDevice('echo', ECHO);
    await lb.server.addDevice(echo);
    const drv = new EchoDriver('echo', ECHO);
    lb.client.register(drv);
    const intruder = net.connect(lb.hub!.endpoint);
    intruder.send(encodePacketFrame(1, 1, PacketType.DataInband, 0, 1n, new Uint8Array(8)));
    intruder.send(new Uint8Array([1, 2, 3]));
    intruder.send(encodeHelloFrame(7, 'not-the-token'));
    intruder.send(encodeHelloFrame(7, 'x'.repeat(300)));
    await until('the hub saw the intruder', () => lb.hub!.stats.unknownPeerFrames >= 2 && lb.hub!.stats.refusedHellos >= 1);
    await lb.client.connect();
    await until('channel open', () => drv.channel !== null);
    sendMany(drv.channel!, 20);
    await until('20 echoes', () => drv.got.length === 20);
    intruder.close();
  });

  it('duplicated and delayed signals on the shared-memory transport deliver every packet once, in order', async () => {
    const toHost = randomSignalFaults(5, { duplicate: 0.5, delay: 0.5, delayMs: 3 });
    const toGuest = randomSignalFaults(6, { duplicate: 0.5, delay: 0.5, delayMs: 3 });
    const lb = new VmbusLoopback({ transport: 'shm', faults: { toHost, toGuest }, log });
    loopbacks.push(lb);
    await lb.start();
    await lb.server.addDevice(new EchoDevice('echo', ECHO));
    const drv = new EchoDriver('echo', ECHO);
    lb.client.register(drv);
    await lb.client.connect();
    await until('channel open', () => drv.channel !== null);
    sendMany(drv.channel!, 2000);
    await until('2000 echoes', () => drv.got.length === 2000);
    expect(drv.got).to.deep.equal(Array.from({ length: 2000 }, (_, i) => BigInt(i + 1)));
    expect(toHost.stats.duplicated + toGuest.stats.duplicated).to.be.greaterThan(0);
  });

  it('lost signals on the shared-memory transport hold packets back but lose none: the next signal delivers them', async () => {
    let dropping = true;
    const drop = randomSignalFaults(9, { drop: 0.5 });
    const fault = (deliver: () => void): void => (dropping ? drop(deliver) : deliver());
    const lb = new VmbusLoopback({ transport: 'shm', faults: { toHost: fault, toGuest: fault }, log });
    loopbacks.push(lb);
    await lb.start();
    const dev = new EchoDevice('echo', ECHO);
    await lb.server.addDevice(dev);
    const drv = new EchoDriver('echo', ECHO);
    lb.client.register(drv);
    await lb.client.connect();
    await until('channel open', () => drv.channel !== null);
    sendMany(drv.channel!, 2000);
    await new Promise((r) => setTimeout(r, 200));
    expect(drop.stats.dropped).to.be.greaterThan(0);
    // What arrived so far arrived once and in order.
    expect(drv.got).to.deep.equal(Array.from({ length: drv.got.length }, (_, i) => BigInt(i + 1)));
    dropping = false;
    const relid = drv.channel!.relid;
    // An interrupt on each side (as a later, undropped signal would be) restarts the flow.
    await until('2000 echoes after fresh signals', () => {
      if (drv.got.length < 2000) {
        lb.server.onSignal(relid);
        lb.client.onEvent(relid);
      }
      return drv.got.length === 2000;
    });
    expect(drv.got).to.deep.equal(Array.from({ length: 2000 }, (_, i) => BigInt(i + 1)));
  });
});
