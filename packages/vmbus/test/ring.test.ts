/**
 * Unit tests of the VMBus ring buffer: the exact byte layout of a packet, a fast-check model test
 * of random writes and reads on small (often wrapping) rings, interrupt and pending_send_sz
 * signalling, validation of a corrupt ring (random and targeted) with canaries around the ring, and
 * a writer in a child process (test/ring-writer-child.ts) feeding a reader here through a real
 * /dev/shm region. Regions are unlinked and child processes killed in `afterEach`.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRegion, memoryMode, unlinkRegion } from '@hvlab/shm';
import {
  initRing, packetBytes, RingError, RingReader, RingWriter, RingControl, PacketType, KNOWN_PACKET_TYPES,
  PacketDescriptorOffset, RING_CONTROL_BYTES, RING_FEATURE_PENDING_SEND_SIZE, PACKET_FLAG_COMPLETION_REQUESTED,
  PACKET_DESCRIPTOR_BYTES, PACKET_TRAILER_BYTES, NATIVE_COPY_MIN, type RingRegion, type RingPacket,
} from '../src/ring.js';
import { childPacket } from './ring-writer-child.js';

const testDir = dirname(fileURLToPath(import.meta.url));
const pkgDir = dirname(testDir);

const W = RingControl.writeIndex >>> 2;
const R = RingControl.readIndex >>> 2;
const MASK = RingControl.interruptMask >>> 2;
const PENDING = RingControl.pendingSendSize >>> 2;
const FEATURES = RingControl.featureBits >>> 2;
const TYPES = [...KNOWN_PACKET_TYPES];
const CANARY = 0xa5;

/** A ring of `dataBytes` at `pad` bytes into a buffer whose other bytes are CANARY; the data area starts as CANARY too. */
function makeRing(dataBytes: number, pad = 0): { region: RingRegion; ctrl: Uint32Array; data: Uint8Array; dv: DataView; all: Uint8Array } {
  const buffer = new SharedArrayBuffer(pad + RING_CONTROL_BYTES + dataBytes + pad);
  const all = new Uint8Array(buffer).fill(CANARY);
  const region = { buffer, byteOffset: pad, byteLength: RING_CONTROL_BYTES + dataBytes };
  initRing(region);
  return {
    region,
    ctrl: new Uint32Array(buffer, pad, RING_CONTROL_BYTES >>> 2),
    data: new Uint8Array(buffer, pad + RING_CONTROL_BYTES, dataBytes),
    dv: new DataView(buffer, pad + RING_CONTROL_BYTES, dataBytes),
    all,
  };
}

/** Sets both indices (the ring must be empty) so the next packet starts at `at`. */
function startAt(ctrl: Uint32Array, at: number): void {
  Atomics.store(ctrl, W, at);
  Atomics.store(ctrl, R, at);
}

/** `len` bytes of a pattern that depends on `seed`. */
function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (seed + i * 31 + 1) & 0xff;
  return b;
}

/** What a reader sees for a written payload: the bytes, then zeros up to a multiple of 8. */
function padded(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(payload.length / 8) * 8);
  out.set(payload);
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function hexBytes(a: Uint8Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
}

/** Writes one packet that must succeed. */
function put(writer: RingWriter, payload: Uint8Array, type: number = PacketType.DataInband, flags = 0, transId = 1n): void {
  const res = writer.tryWrite(type, flags, transId, payload);
  expect(res).to.not.equal('full');
}

/** Writes 8-byte packets with transaction ids first, first+1, ... until the ring is full; returns the next id. */
function fillUp(writer: RingWriter, first: number): number {
  let n = first;
  while (writer.tryWrite(6, 0, BigInt(n), pattern(8, n)) !== 'full') {
    if (++n - first > writer.dataBytes / 32) expect.fail('the writer never reported the ring full');
  }
  return n;
}

/** Runs `fn` expecting a RingError whose message matches `re`; returns it. */
function expectRingError(fn: () => unknown, re: RegExp): RingError {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(RingError);
    expect((e as Error).message).to.match(re);
    return e as RingError;
  }
  expect.fail(`expected a RingError matching ${re}`);
}

describe('vmbus ring', () => {
  describe('layout', () => {
    it('packetBytes is the aligned descriptor and payload plus the trailer', () => {
      expect(packetBytes(0)).to.equal(PACKET_DESCRIPTOR_BYTES + PACKET_TRAILER_BYTES);
      expect(packetBytes(1)).to.equal(32);
      expect(packetBytes(8)).to.equal(32);
      expect(packetBytes(9)).to.equal(40);
      expect(packetBytes(64)).to.equal(88);
      expect(() => packetBytes(-1)).to.throw(RangeError);
      expect(() => packetBytes(1.5)).to.throw(RangeError);
    });

    it('initRing zeroes the control page and advertises pending_send_sz support', () => {
      const { region, ctrl, all } = makeRing(256, 8);
      expect(Atomics.load(ctrl, FEATURES)).to.equal(RING_FEATURE_PENDING_SEND_SIZE);
      for (let i = 0; i < ctrl.length; i++) if (i !== FEATURES) expect(ctrl[i], `control word ${i}`).to.equal(0);
      expect(all[7]).to.equal(CANARY);
      expect(all[8 + RING_CONTROL_BYTES]).to.equal(CANARY); // data area untouched
      expect(region.byteLength).to.equal(RING_CONTROL_BYTES + 256);
    });

    it('after one write the descriptor, payload, zero padding, trailer and write index are laid out exactly', () => {
      const { region, ctrl, data, dv } = makeRing(256);
      startAt(ctrl, 0x40);
      const writer = new RingWriter(region, 'layout');
      const payload = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
      const res = writer.tryWrite(PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED, 0x1122334455667788n, payload);
      expect(res).to.equal('signal');
      const d = 0x40;
      expect(dv.getUint16(d + PacketDescriptorOffset.type, true)).to.equal(6);
      expect(dv.getUint16(d + PacketDescriptorOffset.offset8, true)).to.equal(2);
      expect(dv.getUint16(d + PacketDescriptorOffset.len8, true)).to.equal((16 + 16) / 8);
      expect(dv.getUint16(d + PacketDescriptorOffset.flags, true)).to.equal(1);
      expect(dv.getBigUint64(d + PacketDescriptorOffset.transId, true)).to.equal(0x1122334455667788n);
      expect(hexBytes(data.subarray(d + 16, d + 32))).to.equal('0102030405060708090a0b0000000000');
      expect(dv.getBigUint64(d + 32, true)).to.equal(0x40n << 32n);
      expect(Atomics.load(ctrl, W)).to.equal(0x40 + 40);
      expect(Atomics.load(ctrl, R)).to.equal(0x40);
      // Nothing else in the data area was touched.
      for (let i = 0; i < data.length; i++) if (i < d || i >= d + 40) expect(data[i], `data byte ${i}`).to.equal(CANARY);
    });

    it('a packet that starts 8 bytes before the end wraps its descriptor, payload and trailer byte-wise', () => {
      const { region, ctrl, data, dv } = makeRing(64);
      const start = 64 - 8;
      startAt(ctrl, start);
      const writer = new RingWriter(region, 'wrap');
      const payload = pattern(13, 7);
      expect(writer.tryWrite(PacketType.Completion, 0, 0xfedcba9876543210n, payload, pattern(2, 99))).to.equal('signal');
      // Descriptor: first half at the end, trans_id at offset 0.
      expect(dv.getUint16(start, true)).to.equal(0xb);
      expect(dv.getUint16(start + 2, true)).to.equal(2);
      expect(dv.getUint16(start + 4, true)).to.equal((16 + 16) / 8);
      expect(dv.getUint16(start + 6, true)).to.equal(0);
      expect(dv.getBigUint64(0, true)).to.equal(0xfedcba9876543210n);
      const expected = padded(Uint8Array.from([...payload, ...pattern(2, 99)]));
      expect(hexBytes(data.subarray(8, 24))).to.equal(hexBytes(expected));
      expect(dv.getBigUint64(24, true)).to.equal(BigInt(start) << 32n);
      expect(Atomics.load(ctrl, W)).to.equal(32);
      const reader = new RingReader(region, 'wrap');
      const p = reader.read()!;
      expect(p.type).to.equal(0xb);
      expect(p.transId).to.equal(0xfedcba9876543210n);
      expect(hexBytes(p.payload)).to.equal(hexBytes(expected));
      expect(Atomics.load(ctrl, R)).to.equal(32);
      expect(reader.read()).to.equal(null);
    });

    it('a payload split across the end of the data area reads back whole through read and drain', () => {
      for (const via of ['read', 'drain'] as const) {
        // 1024 and 3000: at and above NATIVE_COPY_MIN the writer copies with the addon.
        for (const len of [40, 64, 65, 200, NATIVE_COPY_MIN, 3000]) {
          const D = len > 200 ? 8192 : 512;
          const { region, ctrl } = makeRing(D);
          startAt(ctrl, D - 24 - 8 * (len >> 4));
          const writer = new RingWriter(region);
          const reader = new RingReader(region);
          const payload = pattern(len, len);
          put(writer, payload, PacketType.DataUsingGpaDirect, 0, 77n);
          let got: Uint8Array | null = null;
          if (via === 'read') got = reader.read()!.payload;
          else expect(reader.drain((_t, _f, _id, p) => (got = p.slice()))).to.equal(1);
          expect(hexBytes(got!), `${via} ${len}`).to.equal(hexBytes(padded(payload)));
        }
      }
    });
  });

  describe('model', () => {
    type Op =
      | { k: 'write' | 'stage'; len: number; seed: number; type: number; flags: number; transId: bigint; split: number }
      | { k: 'commit' }
      | { k: 'read' }
      | { k: 'drain'; max: number | undefined }
      | { k: 'mask' }
      | { k: 'unmask' };
    interface Sent {
      type: number;
      flags: number;
      transId: bigint;
      payload: Uint8Array; // padded
      bytes: number;
    }

    const opArb: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 5,
        arbitrary: fc.record({
          k: fc.constantFrom('write' as const, 'write' as const, 'stage' as const),
          len: fc.oneof(
            { weight: 4, arbitrary: fc.nat(72) },
            { weight: 1, arbitrary: fc.nat(600) },
            // Around and above NATIVE_COPY_MIN, where the writer copies with the addon.
            { weight: 1, arbitrary: fc.integer({ min: NATIVE_COPY_MIN - 16, max: NATIVE_COPY_MIN + 1200 }) },
          ),
          seed: fc.nat(255),
          type: fc.constantFrom(...TYPES),
          flags: fc.constantFrom(0, 1),
          transId: fc.oneof(fc.bigInt({ min: 0n, max: 0xffffffffn }), fc.bigInt({ min: 0n, max: 0xffff_ffff_ffff_ffffn })),
          split: fc.integer({ min: -1, max: NATIVE_COPY_MIN + 1200 }),
        }),
      },
      { weight: 1, arbitrary: fc.constant({ k: 'commit' as const }) },
      { weight: 2, arbitrary: fc.constant({ k: 'read' as const }) },
      { weight: 2, arbitrary: fc.record({ k: fc.constant('drain' as const), max: fc.option(fc.nat(4), { nil: undefined }) }) },
      { weight: 1, arbitrary: fc.constant({ k: 'mask' as const }) },
      { weight: 1, arbitrary: fc.constant({ k: 'unmask' as const }) },
    );

    it('random writes, staged series and reads on small rings behave like a FIFO with exact full, free-space, signal and pending_send_sz answers', function () {
      this.timeout(60000);
      fc.assert(
        fc.property(fc.integer({ min: 8, max: 640 }).map((x) => x * 8), fc.array(opArb, { minLength: 1, maxLength: 150, size: 'max' }), (D, ops) => {
          const { region, ctrl } = makeRing(D);
          const writer = new RingWriter(region, 'model');
          const reader = new RingReader(region, 'model');
          const queue: Sent[] = [];
          let used = 0;
          let w = 0;
          let masked = false;
          let pending = 0;
          // A staged series: written, not yet published (the reader sees none of it).
          let series: Sent[] = [];
          let seriesUsed = 0;
          // A series is open from its first stage to its commit; a packet of it that finds no room
          // publishes what was staged before it (the reader counts room by what it sees), and the
          // commit decides on the signal against the packets published before the series began.
          let open = false;
          let seriesFrom = 0;
          let publishedCount = 0;
          let consumedCount = 0;
          // A part published by a packet that found no room, to a reader that may sleep: the commit signals.
          let owed = false;
          // The last packet tried found no room (pending_send_sz stays set until one does and is committed).
          let waiting = false;
          const free = (): number => D - 8 - used - seriesUsed;
          const publishSeries = (): void => {
            for (const x of series) {
              queue.push(x);
              used += x.bytes;
              w = (w + x.bytes) % D;
              publishedCount++;
            }
            series = [];
            seriesUsed = 0;
          };
          const beginSeries = (): void => {
            if (open) return;
            open = true;
            seriesFrom = publishedCount;
          };
          /** A packet of the series found no room: the part staged before it is published, the signal owed if the reader may sleep. */
          const publishEarly = (): void => {
            if (series.length === 0) return;
            if (!masked && consumedCount === seriesFrom) owed = true;
            publishSeries();
            seriesFrom = publishedCount;
          };
          /** The model's commit: the signal the writer must answer. */
          const commit = (): 'ok' | 'signal' => {
            if (!open) return 'ok';
            open = false;
            // A series whose last packet found room clears pending_send_sz with its commit.
            if (!waiting) pending = 0;
            const wasOwed = owed;
            owed = false;
            if (series.length === 0) return wasOwed ? 'signal' : 'ok';
            publishSeries();
            return wasOwed || (!masked && consumedCount === seriesFrom) ? 'signal' : 'ok';
          };

          /** Takes the packets the reader returned off the model and checks them and the writer signal. */
          const consumed = (got: RingPacket[]): void => {
            // The reader's view of free space: it cannot see a staged series.
            const readerFree = (): number => D - 8 - used;
            const before = readerFree();
            for (const p of got) {
              const want = queue.shift();
              expect(want, 'reader returned a packet never written').to.not.equal(undefined);
              expect(p.type).to.equal(want!.type);
              expect(p.flags).to.equal(want!.flags);
              expect(p.transId).to.equal(want!.transId);
              expect(hexBytes(p.payload)).to.equal(hexBytes(want!.payload));
              used -= want!.bytes;
              consumedCount++;
            }
            const after = readerFree();
            const crossed = pending !== 0 && before < pending && pending <= after;
            expect(reader.takeWriterSignal(), `writer signal after reading ${got.length} (free ${before} -> ${after}, pending ${pending})`).to.equal(crossed);
            expect(reader.takeWriterSignal()).to.equal(false);
          };

          for (const op of ops) {
            switch (op.k) {
              case 'write':
              case 'stage': {
                const payload = pattern(op.len, op.seed);
                const split = op.split >= 0 && op.split <= op.len ? op.split : -1;
                const a = split >= 0 ? payload.subarray(0, split) : payload;
                const b = split >= 0 ? payload.subarray(split) : undefined;
                const need = packetBytes(op.len);
                if (need > D - 8) {
                  expect(() => (op.k === 'write' ? writer.tryWrite(op.type, op.flags, op.transId, a, b) : writer.stage(op.type, op.flags, op.transId, a, b))).to.throw(RangeError);
                  break;
                }
                expect(writer.freeBytes()).to.equal(free());
                const res = op.k === 'write' ? writer.tryWrite(op.type, op.flags, op.transId, a, b) : writer.stage(op.type, op.flags, op.transId, a, b);
                const sent: Sent = { type: op.type, flags: op.flags, transId: op.transId, payload: padded(payload), bytes: need };
                if (need > free()) {
                  // Nothing of it written; the series staged before it is published, still open.
                  expect(res).to.equal('full');
                  publishEarly();
                  pending = need;
                  waiting = true;
                } else {
                  // A packet that found room ends the writer's wait (pending_send_sz is cleared at the commit).
                  waiting = false;
                  beginSeries();
                  series.push(sent);
                  seriesUsed += need;
                  expect(res).to.equal(op.k === 'write' ? commit() : 'ok');
                }
                expect(writer.staging).to.equal(open);
                // The writer waits only for room the reader can see (else it might never be told).
                if (waiting) expect(seriesUsed, 'unpublished bytes while the writer waits').to.equal(0);
                expect(Atomics.load(ctrl, PENDING)).to.equal(pending);
                break;
              }
              case 'commit': {
                expect(writer.commit()).to.equal(commit());
                expect(writer.staging).to.equal(false);
                expect(Atomics.load(ctrl, PENDING)).to.equal(pending);
                break;
              }
              case 'read': {
                const p = reader.read();
                expect(p === null).to.equal(queue.length === 0);
                consumed(p ? [p] : []);
                break;
              }
              case 'drain': {
                const got: RingPacket[] = [];
                const n = reader.drain((type, flags, transId, payload) => {
                  got.push({ type, flags, transId, payload: payload.slice() });
                }, op.max);
                expect(n).to.equal(Math.min(op.max ?? Infinity, queue.length));
                expect(got.length).to.equal(n);
                consumed(got);
                break;
              }
              case 'mask':
                reader.mask();
                masked = true;
                break;
              case 'unmask':
                expect(reader.unmask()).to.equal(queue.length > 0);
                masked = false;
                break;
            }
            expect(Atomics.load(ctrl, W)).to.equal(w);
            expect(Atomics.load(ctrl, R)).to.equal((w - used + D) % D);
            expect(writer.freeBytes()).to.equal(free());
            expect(reader.isEmpty()).to.equal(queue.length === 0);
            expect(Atomics.load(ctrl, MASK)).to.equal(masked ? 1 : 0);
          }
          expect(reader.faulted).to.equal(false);
        }),
        { numRuns: 300 },
      );
    });
  });

  describe('signalling', () => {
    it('a writer signals only on empty to non-empty while the reader is unmasked', () => {
      const { region } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      expect(writer.tryWrite(6, 0, 1n, pattern(10, 1))).to.equal('signal');
      expect(writer.tryWrite(6, 0, 2n, pattern(10, 2))).to.equal('ok');
      expect(reader.read()!.transId).to.equal(1n);
      // One packet still unread: the reader is known to be busy, no signal.
      expect(writer.tryWrite(6, 0, 3n, pattern(10, 3))).to.equal('ok');
      expect(reader.drain(() => {})).to.equal(2);
      expect(writer.tryWrite(6, 0, 4n, pattern(10, 4))).to.equal('signal');
    });

    it('a masked reader is not signalled, and unmask() reports data that arrived while masked', () => {
      const { region, ctrl } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      reader.mask();
      expect(Atomics.load(ctrl, MASK)).to.equal(1);
      expect(writer.tryWrite(6, 0, 1n, pattern(3, 1))).to.equal('ok');
      expect(reader.unmask()).to.equal(true);
      expect(Atomics.load(ctrl, MASK)).to.equal(0);
      reader.mask();
      expect(reader.drain(() => {})).to.equal(1);
      expect(reader.unmask()).to.equal(false);
      expect(writer.tryWrite(6, 0, 2n, pattern(3, 1))).to.equal('signal');
    });

    it('any non-zero interrupt mask written by the reader suppresses the signal', () => {
      const { region, ctrl } = makeRing(1024);
      const writer = new RingWriter(region);
      Atomics.store(ctrl, MASK, 0x80000000);
      expect(writer.tryWrite(6, 0, 1n, pattern(3, 1))).to.equal('ok');
    });

    it('a writer that finds the ring full sets pending_send_sz, the reader reports the crossing once, and the writer clears it on success', () => {
      const { region, ctrl } = makeRing(256); // 248 usable bytes
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      const pkt = pattern(40, 3); // 64 bytes a packet
      for (let i = 0; i < 3; i++) put(writer, pkt);
      expect(writer.freeBytes()).to.equal(248 - 192);
      expect(writer.tryWrite(6, 0, 9n, pattern(100, 1))).to.equal('full'); // needs 128
      expect(Atomics.load(ctrl, PENDING)).to.equal(128);
      expect(writer.freeBytes()).to.equal(56);
      reader.read(); // free 120 < 128
      expect(reader.takeWriterSignal()).to.equal(false);
      reader.read(); // free 184 >= 128: crossed
      expect(reader.takeWriterSignal()).to.equal(true);
      expect(reader.takeWriterSignal()).to.equal(false);
      reader.read(); // already above: no second signal
      expect(reader.takeWriterSignal()).to.equal(false);
      expect(Atomics.load(ctrl, PENDING)).to.equal(128);
      expect(writer.tryWrite(6, 0, 9n, pattern(100, 1))).to.equal('signal');
      expect(Atomics.load(ctrl, PENDING)).to.equal(0);
    });

    it('free space reaching pending_send_sz exactly counts as crossing it, once', () => {
      const { region, ctrl } = makeRing(256);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      for (let i = 0; i < 3; i++) put(writer, pattern(40, i)); // 3 x 64 bytes, 56 left
      expect(writer.tryWrite(6, 0, 9n, pattern(96, 1))).to.equal('full'); // needs 120
      expect(Atomics.load(ctrl, PENDING)).to.equal(120);
      reader.read(); // 56 -> 120
      expect(reader.takeWriterSignal()).to.equal(true);
      reader.read(); // 120 -> 184
      expect(reader.takeWriterSignal()).to.equal(false);
    });

    it('a drain that frees enough space in one batch reports the crossing', () => {
      const { region, ctrl } = makeRing(512);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      const n = fillUp(writer, 0);
      expect(Atomics.load(ctrl, PENDING)).to.equal(32);
      expect(reader.drain(() => {}, 1)).to.equal(1); // free 24 -> 56: crossed 32
      expect(reader.takeWriterSignal()).to.equal(true);
      expect(reader.drain(() => {})).to.equal(n - 1);
      expect(reader.takeWriterSignal()).to.equal(false);
    });

    it('a writer does not set pending_send_sz when the reader has not advertised the feature', () => {
      const { region, ctrl } = makeRing(64);
      Atomics.store(ctrl, FEATURES, 0);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      put(writer, pattern(24, 1)); // 48 of 56
      expect(writer.tryWrite(6, 0, 1n, pattern(8, 1))).to.equal('full');
      expect(Atomics.load(ctrl, PENDING)).to.equal(0);
      reader.read();
      expect(reader.takeWriterSignal()).to.equal(false);
    });
  });

  describe('argument and region checks', () => {
    it('rings reject regions that are misaligned, too small, not a multiple of 8 or past the buffer', () => {
      const buffer = new SharedArrayBuffer(RING_CONTROL_BYTES + 4096);
      const bad: RingRegion[] = [
        { buffer, byteOffset: 4, byteLength: RING_CONTROL_BYTES + 64 },
        { buffer, byteOffset: 0, byteLength: RING_CONTROL_BYTES + 56 },
        { buffer, byteOffset: 0, byteLength: RING_CONTROL_BYTES + 68 },
        { buffer, byteOffset: 8, byteLength: RING_CONTROL_BYTES + 4096 },
        { buffer, byteOffset: -8, byteLength: RING_CONTROL_BYTES + 64 },
        { buffer: new ArrayBuffer(8192) as unknown as SharedArrayBuffer, byteOffset: 0, byteLength: RING_CONTROL_BYTES + 64 },
      ];
      for (const region of bad) {
        expect(() => initRing(region), JSON.stringify(region)).to.throw(RangeError);
        expect(() => new RingWriter(region)).to.throw(RangeError);
        expect(() => new RingReader(region)).to.throw(RangeError);
      }
      const ok = new RingWriter({ buffer, byteOffset: 0, byteLength: RING_CONTROL_BYTES + 4096 }, 'ok');
      expect(ok.dataBytes).to.equal(4096);
      expect(ok.name).to.equal('ok');
    });

    it('a writer rejects packets that could never fit and out-of-range type, flags and transaction ids, writing nothing', () => {
      const { region, ctrl, data } = makeRing(128);
      const writer = new RingWriter(region);
      const before = data.slice();
      expect(() => writer.tryWrite(6, 0, 0n, new Uint8Array(128 - 8 - 24 + 1))).to.throw(RangeError, /can ever hold/);
      expect(() => writer.tryWrite(0x10000, 0, 0n, new Uint8Array(1))).to.throw(RangeError, /type/);
      expect(() => writer.tryWrite(-1, 0, 0n, new Uint8Array(1))).to.throw(RangeError, /type/);
      expect(() => writer.tryWrite(6, 2, 0n, new Uint8Array(1))).to.throw(RangeError, /flags/);
      expect(() => writer.tryWrite(6, 0, -1n, new Uint8Array(1))).to.throw(RangeError, /transaction id/);
      expect(() => writer.tryWrite(6, 0, 1n << 64n, new Uint8Array(1))).to.throw(RangeError, /transaction id/);
      expect(sameBytes(data, before)).to.equal(true);
      expect(Atomics.load(ctrl, W)).to.equal(0);
      // The largest packet that fits does.
      expect(writer.tryWrite(6, 0, (1n << 64n) - 1n, new Uint8Array(128 - 8 - 24))).to.equal('signal');
    });

    it('transaction id 0 (the fast paths) replaces whatever bytes were there, also split by the wrap, and a Number 0 is refused', () => {
      const { region, ctrl, data, dv } = makeRing(256);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      expect(() => writer.tryWrite(6, 0, 0 as unknown as bigint, new Uint8Array(8))).to.throw(RangeError, /transaction id/);
      expect(Atomics.load(ctrl, W)).to.equal(0);
      // Stale id bytes in every slot, then packets with id 0 at offsets where the id is contiguous,
      // where it is the first word after the wrap, and a high-only and a low-only id in between.
      data.fill(0xff);
      const ids: bigint[] = [];
      const drain = (): number => reader.drain((_t, _f, id) => ids.push(id));
      for (const [at, id] of [[0, 0n], [256 - 8, 0n], [64, 1n << 32n], [128, 7n], [256 - 8, 0n]] as const) {
        startAt(ctrl, at);
        put(writer, pattern(8, at), 6, 0, id);
        const slot = (at + 8) % 256;
        expect(dv.getBigUint64(slot, true)).to.equal(id);
        expect(drain()).to.equal(1);
      }
      expect(ids).to.deep.equal([0n, 0n, 1n << 32n, 7n, 0n]);
      // A reader never takes a non-zero id for 0 (7n above has only the low word set; here only the high one).
      startAt(ctrl, 0);
      put(writer, pattern(8, 1), 6, 0, 0n);
      dv.setUint32(12, 1, true);
      expect(reader.read()!.transId).to.equal(1n << 32n);
    });

    it('a writer reports an invalid read or write index as a RingError naming the ring', () => {
      const { region, ctrl } = makeRing(256);
      const writer = new RingWriter(region, 'kvp in');
      Atomics.store(ctrl, R, 0x1003);
      expectRingError(() => writer.tryWrite(6, 0, 0n, new Uint8Array(8)), /^ring "kvp in": read index 0x1003 is not a multiple of 8$/);
      expectRingError(() => writer.freeBytes(), /read index 0x1003/);
      Atomics.store(ctrl, R, 0);
      Atomics.store(ctrl, W, 0x100);
      expectRingError(() => writer.tryWrite(6, 0, 0n, new Uint8Array(8)), /write index 0x100 is not below the data size 0x100/);
    });
  });

  describe('corruption', () => {
    /** A ring holding `count` valid packets, with their start offsets. */
    function filled(D: number, pad: number, lens: number[]): { ring: ReturnType<typeof makeRing>; starts: number[] } {
      const ring = makeRing(D, pad);
      const writer = new RingWriter(ring.region);
      const starts: number[] = [];
      for (const len of lens) {
        if (packetBytes(len) > D - 8) continue;
        const at = Atomics.load(ring.ctrl, W);
        if (writer.tryWrite(TYPES[len % TYPES.length]!, len & 1, BigInt(len), pattern(len, len)) === 'full') break;
        starts.push(at);
      }
      return { ring, starts };
    }

    it('a reader facing a random control page and random ring bytes returns sane packets or throws RingError, never writing outside its fields', function () {
      this.timeout(60000);
      const index = (): fc.Arbitrary<number> =>
        fc.oneof(fc.nat(200).map((x) => x * 8), fc.nat(0x1000), fc.nat({ max: 0xffffffff }), fc.constantFrom(0xffffffff, 0xfffffff8, 0x80000000, 0x7ffffff8));
      /** Mostly left alone, so that many rings are only slightly broken. */
      const sometimes = <T,>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
        fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: a });
      const arb = fc.record({
        D: fc.integer({ min: 8, max: 160 }).map((x) => x * 8),
        lens: fc.array(fc.nat(120), { maxLength: 12 }),
        w: sometimes(index()),
        r: sometimes(index()),
        noise: sometimes(fc.integer()), // seed: fill the whole data area with noise
        fields: fc.array(fc.record({ packet: fc.nat(), field: fc.nat(3), value: fc.oneof(fc.nat(0xffff), fc.nat(20)) }), { maxLength: 2 }),
        bytes: fc.array(fc.record({ at: fc.nat(), value: fc.nat(255) }), { maxLength: 3 }),
        ops: fc.array(fc.constantFrom('read', 'read', 'drain', 'drain1', 'isEmpty', 'unmask', 'write'), { minLength: 1, maxLength: 12 }),
      });
      fc.assert(
        fc.property(arb, (c) => {
          const pad = 64;
          const { ring, starts } = filled(c.D, pad, c.lens);
          const { region, ctrl, data, dv, all } = ring;
          if (c.noise !== undefined) {
            let x = c.noise | 1;
            for (let i = 0; i < data.length; i++) {
              x ^= x << 13;
              x ^= x >>> 17;
              x ^= x << 5;
              data[i] = x & 0xff;
            }
          }
          for (const f of c.fields) {
            if (starts.length === 0) break;
            dv.setUint16(starts[f.packet % starts.length]! + 2 * f.field, f.value, true);
          }
          for (const b of c.bytes) data[b.at % c.D] = b.value;
          if (c.w !== undefined) Atomics.store(ctrl, W, c.w);
          if (c.r !== undefined) Atomics.store(ctrl, R, c.r);

          const reader = new RingReader(region, 'fuzz');
          const writer = new RingWriter(region, 'fuzz');
          let fault: RingError | null = null;
          const checkCanaries = (): void => {
            for (let i = 0; i < pad; i++) {
              if (all[i] !== CANARY || all[all.length - 1 - i] !== CANARY) expect.fail(`canary byte ${i} from an end was overwritten`);
            }
          };
          for (const op of c.ops) {
            const ctrlBefore = ctrl.slice();
            const dataBefore = data.slice();
            let threw = false;
            try {
              switch (op) {
                case 'read': {
                  const p = reader.read();
                  if (p) expect(p.payload.length).to.be.at.most(c.D);
                  break;
                }
                case 'drain':
                case 'drain1':
                  reader.drain((_t, _f, _id, payload) => {
                    expect(payload.length).to.be.at.most(c.D);
                    expect(payload.length % 8).to.equal(0);
                  }, op === 'drain1' ? 1 : undefined);
                  break;
                case 'isEmpty':
                  reader.isEmpty();
                  break;
                case 'unmask':
                  reader.unmask();
                  break;
                case 'write':
                  writer.tryWrite(PacketType.DataInband, 0, 5n, pattern(20, 3));
                  break;
              }
            } catch (e) {
              if (!(e instanceof RingError)) throw e;
              threw = true;
              expect(e.ring).to.equal('fuzz');
              expect(e.message).to.match(/^ring "fuzz": /);
              if (op !== 'write') {
                expect(reader.faulted).to.equal(true);
                if (fault) expect(e).to.equal(fault);
                fault = e;
              }
            }
            if (op !== 'write') {
              // A reader writes only read_index and interrupt_mask.
              expect(sameBytes(data, dataBefore), `${op} changed the data area`).to.equal(true);
              for (let i = 0; i < ctrl.length; i++) {
                if (i !== R && i !== MASK && ctrl[i] !== ctrlBefore[i]) expect.fail(`${op} changed control word ${i}`);
              }
              if (threw && op === 'read') expect(ctrl[R], 'a failed read moved the read index').to.equal(ctrlBefore[R]);
            }
            checkCanaries();
          }
          if (fault) {
            expect(() => reader.read()).to.throw(fault.message);
            expect(() => reader.drain(() => {})).to.throw(fault.message);
          }
        }),
        { numRuns: 1000 },
      );
    });

    describe('a reader throws RingError, stays faulted and does not advance for', () => {
      const cases: Array<{ what: string; corrupt: (ctrl: Uint32Array, dv: DataView) => void; message: RegExp }> = [
        { what: 'a write index that is not a multiple of 8', corrupt: (c) => Atomics.store(c, W, 0x1003), message: /^ring "bad": write index 0x1003 is not a multiple of 8$/ },
        { what: 'a write index at or past the data size', corrupt: (c) => Atomics.store(c, W, 0x200), message: /write index 0x200 is not below the data size 0x200/ },
        { what: 'a huge write index', corrupt: (c) => Atomics.store(c, W, 0xfffffff8), message: /write index 0xfffffff8 is not below/ },
        { what: 'a read index that is not a multiple of 8', corrupt: (c) => Atomics.store(c, R, 4), message: /read index 0x4 is not a multiple of 8/ },
        { what: 'too few bytes for a packet', corrupt: (c) => Atomics.store(c, W, 16), message: /the 16 bytes between read index 0x0 and write index 0x10 are too few/ },
        { what: 'offset8 below 2', corrupt: (_c, dv) => dv.setUint16(2, 1, true), message: /offset8 1\)/ },
        { what: 'len8 below offset8', corrupt: (_c, dv) => dv.setUint16(4, 1, true), message: /\(len8 1\), shorter than its data offset 16/ },
        { what: 'len8 past the filled part', corrupt: (_c, dv) => dv.setUint16(4, 10, true), message: /length 80 \(len8 10\) plus an 8-byte trailer, more than the 80 bytes the writer has filled/ },
        { what: 'an unknown flag', corrupt: (_c, dv) => dv.setUint16(6, 3, true), message: /flags 0x3; only bit 0/ },
        { what: 'an unknown type', corrupt: (_c, dv) => dv.setUint16(0, 5, true), message: /packet at 0x0 has unknown type 0x5/ },
      ];
      for (const t of cases) {
        it(t.what, () => {
          const { region, ctrl, dv } = makeRing(0x200);
          const writer = new RingWriter(region);
          put(writer, pattern(10, 1)); // 40 bytes at 0
          put(writer, pattern(10, 2)); // 40 bytes at 40
          t.corrupt(ctrl, dv);
          const reader = new RingReader(region, 'bad');
          const readBefore = Atomics.load(ctrl, R);
          const err = expectRingError(() => reader.read(), t.message);
          expect(err.ring).to.equal('bad');
          expect(reader.faulted).to.equal(true);
          expect(Atomics.load(ctrl, R)).to.equal(readBefore);
          expect(() => reader.read()).to.throw(err.message);
          expect(() => reader.drain(() => {})).to.throw(err.message);
          const reader2 = new RingReader(region, 'bad');
          expectRingError(() => reader2.drain(() => expect.fail('no packet may be delivered')), t.message);
          expect(reader2.faulted).to.equal(true);
        });
      }
    });

    it('a drain delivers the valid packets before a bad one, commits them, then faults', () => {
      const { region, ctrl, dv } = makeRing(0x200);
      const writer = new RingWriter(region);
      put(writer, pattern(10, 1), 6, 0, 1n);
      put(writer, pattern(10, 2), 6, 0, 2n);
      dv.setUint16(40 + 6, 0x8000, true);
      const reader = new RingReader(region, 'half');
      const ids: bigint[] = [];
      expectRingError(() => reader.drain((_t, _f, id) => ids.push(id)), /packet at 0x28 has flags 0x8000/);
      expect(ids).to.deep.equal([1n]);
      expect(Atomics.load(ctrl, R)).to.equal(40);
      expect(reader.faulted).to.equal(true);
    });

    it('a reader accepts exactly the packet types it is given', () => {
      const { region } = makeRing(0x200);
      const writer = new RingWriter(region);
      put(writer, pattern(1, 1), 0x1234);
      put(writer, pattern(1, 1), 6);
      const reader = new RingReader(region, 'custom', new Set([0x1234, 3]));
      expect(reader.read()!.type).to.equal(0x1234);
      expectRingError(() => reader.read(), /unknown type 0x6/);
    });
  });

  describe('drain', () => {
    it('drain consumes at most max packets and returns how many', () => {
      const { region } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      for (let i = 0; i < 5; i++) put(writer, pattern(100, i), 6, 0, BigInt(i));
      const ids: bigint[] = [];
      expect(reader.drain((_t, _f, id) => ids.push(id), 2)).to.equal(2);
      expect(reader.drain((_t, _f, id) => ids.push(id), 0)).to.equal(0);
      expect(reader.drain((_t, _f, id) => ids.push(id))).to.equal(3);
      expect(reader.drain(() => expect.fail('empty'))).to.equal(0);
      expect(ids).to.deep.equal([0n, 1n, 2n, 3n, 4n]);
    });

    it('a packet whose drain callback throws is consumed, the ones before it too, and the exception propagates', () => {
      const { region, ctrl } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      for (let i = 0; i < 3; i++) put(writer, pattern(8, i), 6, 0, BigInt(i));
      expect(() =>
        reader.drain((_t, _f, id) => {
          if (id === 1n) throw new Error('boom');
        }),
      ).to.throw('boom');
      expect(Atomics.load(ctrl, R)).to.equal(64);
      expect(reader.faulted).to.equal(false);
      expect(reader.read()!.transId).to.equal(2n);
    });

    it('the writer sees no packet consumed until the drain callback has returned', () => {
      const { region, ctrl } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      put(writer, pattern(8, 1));
      put(writer, pattern(8, 2));
      const seen: number[] = [];
      reader.drain(() => seen.push(Atomics.load(ctrl, R)));
      expect(seen).to.deep.equal([0, 0]);
      expect(Atomics.load(ctrl, R)).to.equal(64);
    });

    it('read and drain may not be called from inside a drain callback', () => {
      const { region } = makeRing(1024);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      put(writer, pattern(8, 1));
      put(writer, pattern(8, 2));
      expect(() => reader.drain(() => reader.read())).to.throw(/drain\(\) callback/);
      expect(reader.faulted).to.equal(false);
    });

    it('a long drain publishes the read index as it goes, so a writer can refill the ring meanwhile', () => {
      const { region } = makeRing(256);
      const writer = new RingWriter(region);
      const reader = new RingReader(region);
      let next = fillUp(writer, 0);
      let expected = 0;
      const n = reader.drain((_t, _f, id) => {
        expect(id).to.equal(BigInt(expected++));
        next = fillUp(writer, next);
      });
      expect(n).to.be.greaterThan(7);
      expect(n).to.be.at.most(next);
    });
  });

  describe('cross-process', () => {
    const names: string[] = [];
    const children: ChildProcess[] = [];
    let seq = 0;

    afterEach(() => {
      for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      for (const n of names.splice(0)) unlinkRegion(n);
    });

    it('a writer in another process delivers every packet in order through a /dev/shm ring', async function () {
      if (memoryMode() !== 'shared') this.skip();
      this.timeout(60000);
      const name = `hvlab-test-ring-${process.pid}-${++seq}`;
      const dataBytes = 0x4000;
      const buffer = createRegion(name, RING_CONTROL_BYTES + dataBytes);
      names.push(name);
      const region = { buffer, byteOffset: 0, byteLength: buffer.byteLength };
      initRing(region);
      const reader = new RingReader(region, `${name} in`);
      const count = 100_000;
      const child = spawn(process.execPath, ['--import', 'tsx', join(testDir, 'ring-writer-child.ts'), name, String(count)], {
        cwd: pkgDir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let stdout = '';
      let stderr = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const state: { exit?: number | null } = {};
      const exited = new Promise<void>((resolve) => child.on('close', (code) => ((state.exit = code), resolve())));

      let got = 0;
      let problem = '';
      const check = (type: number, flags: number, transId: bigint, payload: Uint8Array): void => {
        const want = childPacket(got);
        const wantPayload = padded(want.payload);
        if (!problem && (type !== want.type || flags !== want.flags || transId !== want.transId || !sameBytes(payload, wantPayload))) {
          problem = `packet ${got}: got type ${type} flags ${flags} id ${transId} ${hexBytes(payload)}, want ${want.type} ${want.flags} ${want.transId} ${hexBytes(wantPayload)}`;
        }
        got++;
      };
      while (got < count && !problem) {
        reader.mask();
        reader.drain(check);
        if (!reader.unmask()) {
          if (state.exit !== undefined && reader.isEmpty()) break;
          await new Promise((r) => setImmediate(r));
        }
      }
      expect(problem).to.equal('');
      await exited;
      expect(state.exit, `child failed: ${stderr}`).to.equal(0);
      expect(got).to.equal(count);
      expect(reader.isEmpty()).to.equal(true);
      expect(JSON.parse(stdout)).to.include({ written: count });
    });
  });
});
