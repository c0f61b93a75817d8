/**
 * Bursts on a shared-memory transport (PacketTransport.sendBurst, RingWriter.stage/commit): packets
 * go in order until one finds no room, the write index is published once, and the reader is
 * signalled at most once; a channel's queue of packets waiting for room goes out as one burst.
 */
import { expect } from 'chai';
import { PacketType, RING_CONTROL_BYTES, RingControl, ShmTransport, VmbusChannel, initRing, packetBytes, type OutboundPacket, type RingRegion } from '../src/index.js';

const DATA_BYTES = 4096;

function pair(): {
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
  const guest = new ShmTransport(toHost, toGuest, () => void signals++, 'guest');
  const host = new ShmTransport(toGuest, toHost, () => void signalsToGuest++, 'host');
  guest.attach({ packet: () => {}, writable: () => void writable++, fault: (e) => { throw e; } });
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

  it('an empty burst and a closed transport send nothing', () => {
    const { guest, signalsToHost } = pair();
    expect(guest.sendBurst([])).to.equal(0);
    expect(signalsToHost()).to.equal(0);
    guest.close();
    expect(guest.sendBurst(packets(1, 2, 8))).to.equal(0);
  });

  it('a channel sends the packets queued while the ring was full as one burst, ahead of later ones, in order', () => {
    const { guest, host, hostGot } = pair();
    const channel = new VmbusChannel(7, 'burst', guest);
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
});
