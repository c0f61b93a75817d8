/**
 * A shared-memory transport given a DirtyLog reports every byte its own side writes into the
 * rings' memory — the packet bytes a write stores (wrapping at the end of the ring) and the control
 * fields writer and reader store — so that the guest's ring writes reach its dirty bitmap for live
 * migration without vmbus knowing the guest. Checked by diffing memory around each operation of
 * one side, for random packet sizes, and through the guest's VMBus client over the loopback.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  PacketType, RING_CONTROL_BYTES, ShmTransport, VmbusLoopback, initRing, packetBytes,
  type DirtyLog, type RingRegion, type VmbusChannel, type VmbusDevice, type VmbusDriver,
} from '../src/index.js';

class Recorder implements DirtyLog {
  ranges: Array<[number, number]> = [];
  markDirty(offset: number, length: number): void {
    this.ranges.push([offset, length]);
  }
  covers(i: number): boolean {
    return this.ranges.some(([o, n]) => i >= o && i < o + n);
  }
  bytes(from: number, to: number): number {
    let n = 0;
    for (const [o, len] of this.ranges) n += Math.max(0, Math.min(o + len, to) - Math.max(o, from));
    return n;
  }
}

/** Two transports over two rings in one buffer: guest (logged) and host (not logged). */
function pair(dataBytes: number): { mem: Uint8Array; guest: ShmTransport; host: ShmTransport; log: Recorder; toHost: RingRegion; guestGot: bigint[]; hostGot: bigint[] } {
  const ringBytes = RING_CONTROL_BYTES + dataBytes;
  const buffer = new SharedArrayBuffer(2 * ringBytes);
  const toHost: RingRegion = { buffer, byteOffset: 0, byteLength: ringBytes };
  const toGuest: RingRegion = { buffer, byteOffset: ringBytes, byteLength: ringBytes };
  initRing(toHost);
  initRing(toGuest);
  const log = new Recorder();
  const guestGot: bigint[] = [];
  const hostGot: bigint[] = [];
  const guest = new ShmTransport(toHost, toGuest, () => {}, 'guest', log);
  const host = new ShmTransport(toGuest, toHost, () => {}, 'host');
  const events = (got: bigint[]) => ({ packet: (_t: number, _f: number, id: bigint) => void got.push(id), writable: () => {}, fault: (e: Error) => { throw e; } });
  guest.attach(events(guestGot));
  host.attach(events(hostGot));
  return { mem: new Uint8Array(buffer), guest, host, log, toHost, guestGot, hostGot };
}

describe('ring writes reach a dirty log', () => {
  it('a ring write logs the bytes of the packet it stored and the control fields, nothing else', () => {
    const { guest, host, log } = pair(4096);
    for (let i = 0; i < 40; i++) {
      log.ranges = [];
      const len = 8 + ((i * 37) % 300);
      expect(guest.send(PacketType.DataInband, 0, BigInt(i), new Uint8Array(len).fill(1))).to.equal(true);
      // Data bytes logged = the ring space of the packet, exactly (descriptor, padded payload, trailer).
      expect(log.bytes(RING_CONTROL_BYTES, RING_CONTROL_BYTES + 4096), `packet ${i} of ${len} bytes`).to.equal(packetBytes(len));
      expect(log.bytes(0, RING_CONTROL_BYTES)).to.be.at.most(16);
      host.onSignal(); // the host drains, so the ring wraps over the run
    }
  });

  it('property: every byte that changes while the guest side writes (one packet or a burst), drains or blocks is in a logged range', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(
        fc.record({ op: fc.constant('guestSend' as const), len: fc.integer({ min: 0, max: 900 }) }),
        fc.record({ op: fc.constant('guestBurst' as const), lens: fc.array(fc.integer({ min: 0, max: 700 }), { maxLength: 6 }) }),
        fc.record({ op: fc.constant('hostSend' as const), len: fc.integer({ min: 0, max: 900 }) }),
        fc.record({ op: fc.constant('guestDrain' as const) }),
        fc.record({ op: fc.constant('hostDrain' as const) }),
      ), { maxLength: 60 }), (ops) => {
        const { mem, guest, host, log } = pair(2048);
        let id = 0n;
        for (const o of ops) {
          if (o.op === 'hostSend') host.send(PacketType.DataInband, 0, id++, new Uint8Array(o.len).fill(7));
          else if (o.op === 'hostDrain') host.onSignal();
          else {
            const before = mem.slice();
            log.ranges = [];
            if (o.op === 'guestSend') guest.send(PacketType.DataInband, 1, id++, new Uint8Array(o.len).fill(9));
            else if (o.op === 'guestBurst') guest.sendBurst(o.lens.map((len) => ({ type: PacketType.DataInband, flags: 1, transId: id++, payload: new Uint8Array(len).fill(5) })));
            else guest.onSignal();
            for (let i = 0; i < mem.length; i++) {
              if (mem[i] !== before[i] && !log.covers(i)) expect.fail(`${o.op}: byte ${i} changed and was not logged`);
            }
          }
        }
      }),
      { numRuns: 300, seed: 7 },
    );
  });

  it('the guest\'s VMBus client logs its ring set-up and its writes through the env\'s dirty log', async () => {
    const log = new Recorder();
    const lb = new VmbusLoopback({ transport: 'shm', guestDirty: log });
    try {
      await lb.start();
      const GUID = '11111111-2222-3333-4444-555555555555';
      let hostChannel: VmbusChannel | null = null;
      const dev: VmbusDevice = { name: 'echo', interfaceType: GUID, interfaceInstance: GUID.replace(/^1/, 'a'), open: (c) => (hostChannel = c), close: () => {} };
      let guestChannel: VmbusChannel | null = null;
      const drv: VmbusDriver = { name: 'echo', interfaceType: GUID, ringBytes: 16384, attach: (c) => (guestChannel = c), detach: () => {} };
      await lb.server.addDevice(dev);
      lb.client.register(drv);
      await lb.client.connect();
      while (!guestChannel || !hostChannel) await new Promise((r) => setTimeout(r, 5));
      const [pfns] = [...lb.mapped.values()];
      const ringGpa = pfns![0]! * 4096;
      // Both control pages were logged when the client set the rings up.
      expect(log.bytes(ringGpa, ringGpa + RING_CONTROL_BYTES)).to.equal(RING_CONTROL_BYTES);
      log.ranges = [];
      (guestChannel as VmbusChannel).send(PacketType.DataInband, 0, 1n, new Uint8Array(100));
      expect(log.bytes(ringGpa + RING_CONTROL_BYTES, ringGpa + RING_CONTROL_BYTES + 16384)).to.equal(packetBytes(100));
    } finally {
      lb.close();
    }
  });
});
