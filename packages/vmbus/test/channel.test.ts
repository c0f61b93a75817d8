import { expect } from 'chai';
import { VmbusVersion, encodeChannelMessage } from '@hvlab/protocol';
import { VmbusLoopback, PacketType, RingControl, type VmbusChannel, type VmbusDevice, type VmbusDriver } from '../src/index.js';

const ECHO_GUID = '11111111-2222-3333-4444-555555555555';
const OTHER_GUID = '66666666-7777-8888-9999-000000000000';

class EchoDevice implements VmbusDevice {
  readonly interfaceInstance: string;
  channel: VmbusChannel | null = null;
  received = 0;
  opens = 0;
  closes = 0;
  constructor(readonly name: string, readonly interfaceType: string) {
    this.interfaceInstance = interfaceType.replace(/^1/, 'a');
  }
  open(channel: VmbusChannel): void {
    this.channel = channel;
    this.opens++;
    channel.onPacket = (type, flags, transId, payload) => {
      this.received++;
      channel.send(PacketType.DataInband, 0, transId, payload.slice());
    };
  }
  close(): void {
    this.channel = null;
    this.closes++;
  }
}

class EchoDriver implements VmbusDriver {
  channel: VmbusChannel | null = null;
  readonly got: Array<{ transId: bigint; payload: Uint8Array }> = [];
  attaches = 0;
  detaches = 0;
  constructor(readonly name: string, readonly interfaceType: string, readonly ringBytes = 16384) {}
  attach(channel: VmbusChannel): void {
    this.channel = channel;
    this.attaches++;
    channel.onPacket = (_t, _f, transId, payload) => this.got.push({ transId, payload: payload.slice() });
  }
  detach(): void {
    this.channel = null;
    this.detaches++;
  }
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

for (const transport of ['shm', 'remote'] as const) {
  describe(`VMBus channels over the ${transport} transport (in-process host and guest)`, function () {
    this.timeout(30000);
    let lb: VmbusLoopback;
    let dev: EchoDevice;
    let other: EchoDevice;
    let drv: EchoDriver;
    let otherDrv: EchoDriver;

    beforeEach(async () => {
      lb = new VmbusLoopback({ transport });
      await lb.start();
      dev = new EchoDevice('echo', ECHO_GUID);
      other = new EchoDevice('other', OTHER_GUID);
      await lb.server.addDevice(dev);
      await lb.server.addDevice(other);
      drv = new EchoDriver('echo', ECHO_GUID);
      otherDrv = new EchoDriver('other', OTHER_GUID);
      lb.client.register(drv);
      lb.client.register(otherDrv);
    });
    afterEach(() => lb.close());

    it('negotiates newest first, falls back to 5.3, enumerates and opens every offered channel', async () => {
      const v = await lb.client.connect();
      expect(v).to.equal(VmbusVersion.V5_3);
      expect(lb.client.versionsTried.slice(0, 2)).to.deep.equal([VmbusVersion.V6_0, VmbusVersion.V5_3]);
      // INITIATE_CONTACT for 5.0 and later goes to connection 4, as does everything after it.
      expect(lb.toHost.every((m) => m.connectionId === 4)).to.equal(true);
      expect(lb.client.offers.size).to.equal(2);
      await until(() => drv.channel !== null && otherDrv.channel !== null);
      expect(lb.server.channelInfo().map((c) => [c.name, c.state, c.transport])).to.deep.equal([['echo', 'open', transport], ['other', 'open', transport]]);
      if (transport === 'shm') expect(lb.mapped.size).to.equal(2);
      else expect(lb.mapped.size).to.equal(0);
    });

    it('a guest limited to old versions connects on connection 1', async () => {
      const v = await lb.client.connect([VmbusVersion.WIN8_1]);
      expect(v).to.equal(VmbusVersion.WIN8_1);
      expect(lb.toHost.every((m) => m.connectionId === 1)).to.equal(true);
    });

    it('carries packets both ways in order, more than a ring holds, without loss', async () => {
      await lb.client.connect();
      await until(() => drv.channel !== null);
      const n = 3000; // 3000 * ~1 KiB is far more than the 16 KiB ring: flow control must hold
      for (let i = 0; i < n; i++) {
        const p = new Uint8Array(1000);
        new DataView(p.buffer).setUint32(0, i, true);
        p.fill(i & 0xff, 4);
        drv.channel!.send(PacketType.DataInband, 0, BigInt(i + 1), p);
      }
      await until(() => drv.got.length === n, 20000);
      drv.got.forEach((g, i) => {
        expect(g.transId).to.equal(BigInt(i + 1));
        expect(new DataView(g.payload.buffer).getUint32(0, true)).to.equal(i);
        expect(g.payload[500]).to.equal(i & 0xff);
        // VMBus packets are 8-byte granular: 1000 bytes arrive padded to 1000 (already aligned).
        expect(g.payload.length).to.equal(1000);
      });
      expect(dev.received).to.equal(n);
    });

    it('a ring GPADL longer than one message travels as GPADL_HEADER and GPADL_BODY and is reassembled', async function () {
      const big = new EchoDriver('big', '99999999-2222-3333-4444-555555555555', 64 * 1024);
      const bigDev = new EchoDevice('big', '99999999-2222-3333-4444-555555555555');
      await lb.server.addDevice(bigDev);
      lb.client.register(big);
      await lb.client.connect();
      await until(() => big.channel !== null);
      if (transport === 'shm') {
        const types = lb.toHost.map((m) => new DataView(m.payload.buffer).getUint32(0, true));
        expect(types.filter((t) => t === 9).length, 'GPADL_BODY messages').to.be.greaterThan(0);
        expect([...lb.mapped.values()].some((p) => p.length === 34)).to.equal(true); // 2 x (1 control + 16 data pages)
      }
      const payload = new Uint8Array(40000).map((_, i) => i & 0xff);
      big.channel!.send(PacketType.DataInband, 0, 1n, payload);
      await until(() => big.got.length === 1);
      expect(big.got[0].payload.subarray(0, 40000)).to.deep.equal(payload);
    });

    it('hot remove detaches the driver and releases the relid; hot add attaches it again', async () => {
      await lb.client.connect();
      await until(() => drv.channel !== null);
      await lb.server.removeDevice(dev);
      await until(() => drv.detaches === 1 && !lb.server.channelInfo().some((c) => c.name === 'echo'));
      expect(dev.closes).to.equal(1);
      expect(lb.toGuest.some((m) => new DataView(m.buffer).getUint32(0, true) === 2)).to.equal(true); // RESCIND_CHANNELOFFER
      expect(lb.toHost.some((m) => new DataView(m.payload.buffer).getUint32(0, true) === 13)).to.equal(true); // RELID_RELEASED
      if (transport === 'shm') expect(lb.mapped.size).to.equal(1); // only the other channel's GPADL is left
      // The other channel is untouched.
      otherDrv.channel!.send(PacketType.DataInband, 0, 9n, new Uint8Array([1, 2, 3]));
      await until(() => otherDrv.got.length === 1);
      await lb.server.addDevice(dev);
      await until(() => drv.attaches === 2 && drv.channel !== null);
      drv.channel!.send(PacketType.DataInband, 0, 5n, new Uint8Array([7, 7, 7, 7, 7, 7, 7, 7]));
      await until(() => drv.got.length === 1);
      expect([...drv.got[0].payload]).to.deep.equal([7, 7, 7, 7, 7, 7, 7, 7]);
      expect(dev.opens).to.equal(2);
    });

    it('UNLOAD closes every channel and drops every GPADL', async () => {
      await lb.client.connect();
      await until(() => drv.channel !== null && otherDrv.channel !== null);
      await lb.client.disconnect();
      expect(dev.closes).to.equal(1);
      expect(other.closes).to.equal(1);
      expect(lb.mapped.size).to.equal(0);
      expect(lb.server.connected).to.equal(false);
      expect(drv.detaches).to.equal(1);
    });

    it('ignores malformed and out-of-order channel messages and keeps serving', async () => {
      await lb.server.onMessage(4, new Uint8Array([1, 2, 3])); // short
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'RequestOffers' })); // before INITIATE_CONTACT
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'OpenChannel', childRelid: 99, openId: 1, ringGpadlHandle: 5, targetVp: 0, downstreamRingPageOffset: 2, userData: new Uint8Array(120) }));
      expect(lb.server.stats.rejected).to.be.greaterThanOrEqual(3);
      await lb.client.connect();
      await until(() => drv.channel !== null);
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'GpadlBody', msgNumber: 1, gpadl: 0x999, pfns: [1] }));
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'RelidReleased', childRelid: 1 })); // not rescinded
      drv.channel!.send(PacketType.DataInband, 0, 1n, new Uint8Array(8));
      await until(() => drv.got.length === 1);
    });

    it('a peer that breaks the transport protocol loses only its own channel', async function () {
      await lb.client.connect();
      await until(() => drv.channel !== null && otherDrv.channel !== null);
      const echo = lb.server.channelInfo().find((c) => c.name === 'echo')!;
      if (transport === 'shm') {
        // The guest's guest->host ring of the echo channel: corrupt its write index.
        const g = [...lb.mapped.entries()][0];
        const ringGpa = g[1][0] * 4096;
        new DataView(lb.memory).setUint32(ringGpa + RingControl.writeIndex, 13, true);
        lb.server.onSignal(echo.relid);
      } else {
        // An oversized packet frame with a lying len8 straight onto the guest's socket.
        const t = drv.channel!.transport as unknown as { sendFrame: (b: Buffer) => void; relid: number; generation: number };
        const b = Buffer.alloc(8 + 24);
        b.writeUInt32LE(t.relid, 0);
        b.writeUInt16LE(1, 4);
        b.writeUInt16LE(t.generation, 6);
        b.writeUInt16LE(6, 8);
        b.writeUInt16LE(2, 10);
        b.writeUInt16LE(200, 12);
        t.sendFrame(b);
      }
      await until(() => lb.server.channelInfo().find((c) => c.name === 'echo')!.faults === 1);
      const after = lb.server.channelInfo().find((c) => c.name === 'echo')!;
      expect(after.state).to.equal('offered');
      expect(after.lastFault).to.be.a('string');
      expect(dev.closes).to.equal(1);
      // The other channel still works.
      otherDrv.channel!.send(PacketType.DataInband, 0, 3n, new Uint8Array(16));
      await until(() => otherDrv.got.length === 1);
    });
  });
}
