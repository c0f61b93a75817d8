/**
 * Bursts on a shared-memory transport (PacketTransport.sendBurst, RingWriter.stage/commit): packets
 * go in order until one finds no room, the write index is published once, and the reader is
 * signalled at most once; a channel's queue of packets waiting for room goes out as one burst.
 */
import { expect } from 'chai';
import {
  FaultyTransport, PacketType, RING_CONTROL_BYTES, RingControl, RingReader, RingWriter, ShmTransport, VmbusChannel, initRing, packetBytes,
  type DirtyLog, type OutboundPacket, type PacketTransport, type RingRegion, type TransportEvents,
} from '../src/index.js';

const DATA_BYTES = 4096;

function pair(log: DirtyLog | null = null): {
  guest: ShmTransport; host: ShmTransport; hostGot: bigint[]; signalsToHost: () => number; signalsToGuest: () => number; writable: () => number; toHost: RingRegion;
} {
  const ringBytes = RING_CONTROL_BYTES + DATA_BYTES;
  const buffer = new SharedArrayBuffer(2 * ringBytes);
  const toHost: RingRegion = { buffer, byteOffset: 0, byteLength: ringBytes };
  const toGuest: RingRegion = { buffer, byteOffset: ringBytes, byteLength: ringBytes };
  initRing(toHost);
  initRing(toGuest);
  let signals = 0;
  let signalsToGuest = 0;
  let writable = 0;
  const hostGot: bigint[] = [];
  const guest = new ShmTransport(toHost, toGuest, () => void signals++, 'guest', log);
  const host = new ShmTransport(toGuest, toHost, () => void signalsToGuest++, 'host');
  guest.attach({ packet: () => {}, writable: () => void writable++, fault: () => {} });
  host.attach({ packet: (_t, _f, id) => void hostGot.push(id), writable: () => {}, fault: (e) => { throw e; } });
  return { guest, host, hostGot, signalsToHost: () => signals, signalsToGuest: () => signalsToGuest, writable: () => writable, toHost };
}

const packets = (from: number, n: number, len: number): OutboundPacket[] =>
  Array.from({ length: n }, (_, i) => ({ type: PacketType.DataInband, flags: 0, transId: BigInt(from + i), payload: new Uint8Array(len).fill(from + i) }));

describe('a burst of packets on a ring', () => {
  it('goes in order until one finds no room, publishes the write index once, signals once, and the rest go when the reader made room', () => {
    const { guest, host, hostGot, signalsToHost, signalsToGuest, writable, toHost } = pair();
    const len = 500;
    const fit = Math.floor((DATA_BYTES - 8) / packetBytes(len));
    const all = packets(1, fit + 3, len);
    const writeIndex = new Uint32Array(toHost.buffer, toHost.byteOffset + RingControl.writeIndex, 1);
    expect(guest.sendBurst(all)).to.equal(fit);
    expect(writeIndex[0], 'the write index covers the whole burst').to.equal(fit * packetBytes(len));
    expect(signalsToHost(), 'one signal: the ring was empty before the burst').to.equal(1);
    // The packet that found no room left pending_send_sz set: the reader's drain signals the writer.
    const pending = new Uint32Array(toHost.buffer, toHost.byteOffset + RingControl.pendingSendSize, 1);
    expect(pending[0]).to.equal(packetBytes(len));
    host.onSignal();
    expect(signalsToGuest(), 'the reader tells the writer of the room').to.equal(1);
    expect(hostGot).to.deep.equal(all.slice(0, fit).map((p) => p.transId));
    guest.onSignal();
    expect(writable(), 'writable after the reader made room').to.equal(1);
    expect(guest.sendBurst(all.slice(fit))).to.equal(3);
    host.onSignal();
    expect(hostGot).to.deep.equal(all.map((p) => p.transId));
  });

  it('a packet that could never fit ends the burst before it, and throws when it comes first', () => {
    const { guest, host, hostGot } = pair();
    const big = { type: PacketType.DataInband, flags: 0, transId: 99n, payload: new Uint8Array(DATA_BYTES) };
    const burst = [...packets(1, 2, 8), big, ...packets(3, 1, 8)];
    expect(guest.sendBurst(burst)).to.equal(2);
    expect(() => guest.sendBurst(burst.slice(2))).to.throw(RangeError);
    host.onSignal();
    expect(hostGot).to.deep.equal([1n, 2n]);
  });

  it('a packet of a series that finds no room publishes the packets staged before it, so the reader tells the writer of the room it waits for', () => {
    const D = 1024;
    const region: RingRegion = { buffer: new SharedArrayBuffer(RING_CONTROL_BYTES + D), byteOffset: 0, byteLength: RING_CONTROL_BYTES + D };
    initRing(region);
    const writer = new RingWriter(region, 'w');
    const reader = new RingReader(region, 'r');
    const bytes = (total: number): Uint8Array => new Uint8Array(total - packetBytes(0));
    expect(writer.tryWrite(6, 0, 1n, bytes(400))).to.equal('signal');
    expect(writer.stage(6, 0, 2n, bytes(304))).to.equal('ok');
    expect(writer.stage(6, 0, 3n, bytes(400))).to.equal('full');
    // The reader reads the first packet while the series is still open: room for 400 bytes now,
    // counted from what it sees (the staged packet is published).
    expect(reader.read()!.transId).to.equal(1n);
    expect(reader.takeWriterSignal(), 'the reader reports the room the writer waits for').to.equal(true);
    expect(writer.commit()).to.equal('ok');
    expect(reader.read()!.transId).to.equal(2n);
    expect(writer.tryWrite(6, 0, 3n, bytes(400))).to.equal('signal');
  });

  it('a series published in parts by full rings still signals a reader that sleeps before the rest', () => {
    const D = 1024;
    const region: RingRegion = { buffer: new SharedArrayBuffer(RING_CONTROL_BYTES + D), byteOffset: 0, byteLength: RING_CONTROL_BYTES + D };
    initRing(region);
    const writer = new RingWriter(region, 'w');
    const reader = new RingReader(region, 'r');
    const bytes = (total: number): Uint8Array => new Uint8Array(total - packetBytes(0));
    // A series whose first part goes out when the ring is full: the reader, asleep since before it, is owed a signal.
    expect(writer.tryWrite(6, 0, 1n, bytes(504))).to.equal('signal');
    reader.drain(() => {});
    expect(writer.stage(6, 0, 2n, bytes(504))).to.equal('ok');
    expect(writer.stage(6, 0, 3n, bytes(600))).to.equal('full');
    expect(writer.commit(), 'the part published at the full ring went to a sleeping reader').to.equal('signal');
    // The reader reads it all; a new series after that signals again at its commit.
    expect(reader.drain(() => {})).to.equal(1);
    expect(writer.stage(6, 0, 4n, bytes(600))).to.equal('ok');
    expect(writer.commit()).to.equal('signal');
  });

  it('a bad read index met in the middle of a burst fails the transport, and every byte the burst wrote is in the dirty log', () => {
    const ranges: Array<[number, number]> = [];
    const log: DirtyLog = { markDirty: (o, n) => void ranges.push([o, n]) };
    const { guest, toHost } = pair(log);
    const all = new Uint8Array(toHost.buffer);
    expect(guest.send(PacketType.DataInband, 0, 1n, new Uint8Array(8))).to.equal(true);
    // The peer scribbles its read index; the first packet of the burst fits the free space the
    // writer remembers, the second needs a fresh look at the index, which is bad.
    new Uint32Array(toHost.buffer, toHost.byteOffset + RingControl.readIndex, 1)[0] = 3;
    const before = all.slice();
    ranges.length = 0;
    const burst = [{ type: PacketType.DataInband, flags: 0, transId: 2n, payload: new Uint8Array(64).fill(0x5a) }, { type: PacketType.DataInband, flags: 0, transId: 3n, payload: new Uint8Array(DATA_BYTES - 200) }];
    expect(guest.sendBurst(burst)).to.equal(0);
    expect(guest.sendBurst(burst), 'the transport is failed').to.equal(0);
    let changed = 0;
    for (let i = 0; i < all.length; i++) {
      if (all[i] === before[i]) continue;
      changed++;
      expect(ranges.some(([o, n]) => i >= o && i < o + n), `byte ${i} changed and was not logged`).to.equal(true);
    }
    expect(changed, 'the first packet was written into the data area').to.be.greaterThan(0);
  });

  it('a channel refuses a packet its ring could never hold when it is sent, also behind queued packets', () => {
    const { guest } = pair();
    const channel = new VmbusChannel(8, 'big', guest);
    channel.start();
    const len = 300;
    const fit = Math.floor((DATA_BYTES - 8) / packetBytes(len));
    for (let i = 1; i <= fit + 2; i++) channel.send(PacketType.DataInband, 0, BigInt(i), new Uint8Array(len));
    expect(channel.stats.queued).to.equal(2);
    expect(() => channel.send(PacketType.DataInband, 0, 99n, new Uint8Array(DATA_BYTES))).to.throw(RangeError);
    expect(channel.stats.queued).to.equal(2);
    expect(channel.open).to.equal(true);
  });

  it('an empty burst and a closed transport send nothing', () => {
    const { guest, signalsToHost } = pair();
    expect(guest.sendBurst([])).to.equal(0);
    expect(signalsToHost()).to.equal(0);
    guest.close();
    expect(guest.sendBurst(packets(1, 2, 8))).to.equal(0);
  });

  for (const wrapped of [false, true]) {
  it(`a channel sends the packets queued while the ring was full as one burst, ahead of later ones, in order${wrapped ? ' (behind a fault wrapper with no fault on, as every host-side channel is)' : ''}`, () => {
    const { guest, host, hostGot } = pair();
    const channel = new VmbusChannel(7, 'burst', wrapped ? new FaultyTransport(guest, 7, 'burst') : guest);
    const bursts: number[] = [];
    const sendBurst = guest.sendBurst.bind(guest);
    guest.sendBurst = (p) => {
      const n = sendBurst(p);
      bursts.push(n);
      return n;
    };
    channel.start();
    const len = 300;
    const fit = Math.floor((DATA_BYTES - 8) / packetBytes(len));
    for (let i = 1; i <= fit + 5; i++) channel.send(PacketType.DataInband, 0, BigInt(i), new Uint8Array(len));
    expect(channel.stats.queued).to.equal(5);
    expect(bursts, 'single sends while the ring had room').to.deep.equal([]);
    host.onSignal();
    guest.onSignal(); // the room: the queue goes out
    expect(bursts).to.deep.equal([5]);
    expect(channel.stats.queued).to.equal(0);
    channel.send(PacketType.DataInband, 0, BigInt(fit + 6), new Uint8Array(len));
    host.onSignal();
    expect(hostGot).to.deep.equal(Array.from({ length: fit + 6 }, (_, i) => BigInt(i + 1)));
    expect(channel.stats.packetsOut).to.equal(fit + 6);
  });
  }
});

/** A transport that says `writable` from within its sends, as a synchronous signal path would. */
class EagerTransport implements PacketTransport {
  readonly kind = 'shm' as const;
  readonly sent: bigint[] = [];
  room = 0;
  events: TransportEvents | null = null;
  constructor(private readonly bursts: boolean) {
    if (!bursts) this.sendBurst = undefined;
  }
  send(_type: number, _flags: number, transId: bigint): boolean {
    if (this.room <= 0) return false;
    this.room--;
    this.sent.push(transId);
    this.events!.writable();
    return true;
  }
  sendBurst?(packets: ReadonlyArray<OutboundPacket>): number {
    let n = 0;
    for (const p of packets) {
      if (this.room <= 0) break;
      this.room--;
      this.sent.push(p.transId);
      n++;
    }
    this.events!.writable();
    return n;
  }
  attach(events: TransportEvents): void {
    this.events = events;
  }
  close(): void {}
}

describe('a channel whose transport says writable from within a send', () => {
  for (const bursts of [true, false]) {
    it(`sends each queued packet once (${bursts ? 'as a burst' : 'one at a time'})`, () => {
      const t = new EagerTransport(bursts);
      const ch = new VmbusChannel(1, 'eager', t);
      ch.start();
      for (let i = 1; i <= 5; i++) ch.send(PacketType.DataInband, 0, BigInt(i), new Uint8Array(8));
      expect(t.sent, 'no room yet: all queued').to.deep.equal([]);
      t.room = 3;
      t.events!.writable();
      expect(t.sent).to.deep.equal([1n, 2n, 3n]);
      t.room = 10;
      t.events!.writable();
      expect(t.sent, 'each packet once, in order').to.deep.equal([1n, 2n, 3n, 4n, 5n]);
    });
  }
});
