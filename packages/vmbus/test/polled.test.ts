/**
 * Polled mode of a shared-memory transport (PacketTransport.setPolled): the reader keeps
 * interrupt_mask set, so the peer's writes signal nobody, and `poll()` reads them; switched off,
 * what came meanwhile is read and the peer signals again. The host's integration services read
 * their periodic answers this way (vsp/src/ic/provider.ts: pollAnswers).
 */
import { expect } from 'chai';
import { PacketType, RING_CONTROL_BYTES, ShmTransport, initRing, type RingRegion } from '../src/index.js';

function pair(): { guest: ShmTransport; host: ShmTransport; hostGot: bigint[]; signalsToHost: () => number } {
  const ringBytes = RING_CONTROL_BYTES + 4096;
  const buffer = new SharedArrayBuffer(2 * ringBytes);
  const toHost: RingRegion = { buffer, byteOffset: 0, byteLength: ringBytes };
  const toGuest: RingRegion = { buffer, byteOffset: ringBytes, byteLength: ringBytes };
  initRing(toHost);
  initRing(toGuest);
  let signals = 0;
  const hostGot: bigint[] = [];
  const guest = new ShmTransport(toHost, toGuest, () => void signals++, 'guest');
  const host = new ShmTransport(toGuest, toHost, () => {}, 'host');
  const events = (got: bigint[]) => ({ packet: (_t: number, _f: number, id: bigint) => void got.push(id), writable: () => {}, fault: (e: Error) => { throw e; } });
  guest.attach(events([]));
  host.attach(events(hostGot));
  return { guest, host, hostGot, signalsToHost: () => signals };
}

describe('a ring reader in polled mode', () => {
  it('is not signalled for what the peer writes, reads it when polled, and is signalled again once off', () => {
    const { guest, host, hostGot, signalsToHost } = pair();
    // Signalled as usual: empty -> non-empty signals the reader.
    guest.send(PacketType.DataInband, 0, 1n, new Uint8Array(16));
    expect(signalsToHost()).to.equal(1);
    host.onSignal();
    expect(hostGot).to.deep.equal([1n]);

    host.setPolled(true);
    for (let i = 2n; i <= 4n; i++) {
      guest.send(PacketType.DataInband, 0, i, new Uint8Array(16));
      expect(signalsToHost(), `packet ${i} signals nobody`).to.equal(1);
    }
    expect(hostGot, 'nothing is read before the poll').to.deep.equal([1n]);
    host.poll();
    expect(hostGot).to.deep.equal([1n, 2n, 3n, 4n]);
    // Still polled after a poll: the next write does not signal either.
    guest.send(PacketType.DataInband, 0, 5n, new Uint8Array(16));
    expect(signalsToHost()).to.equal(1);

    // Off: what came meanwhile is read at once, and the next write (to an empty ring) signals.
    host.setPolled(false);
    expect(hostGot).to.deep.equal([1n, 2n, 3n, 4n, 5n]);
    guest.send(PacketType.DataInband, 0, 6n, new Uint8Array(16));
    expect(signalsToHost()).to.equal(2);
  });

  it('a signal that comes anyway (the peer looked before the mask was set) is read, and the mask stays', () => {
    const { guest, host, hostGot, signalsToHost } = pair();
    host.setPolled(true);
    guest.send(PacketType.DataInband, 0, 1n, new Uint8Array(16));
    host.onSignal();
    expect(hostGot).to.deep.equal([1n]);
    guest.send(PacketType.DataInband, 0, 2n, new Uint8Array(16));
    expect(signalsToHost()).to.equal(0);
  });
});
