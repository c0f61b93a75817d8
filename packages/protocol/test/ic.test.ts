/**
 * Unit tests of the integration-services codec (packages/protocol/src/ic.ts and the
 * per-service files heartbeat.ts, shutdown.ts, timesync.ts, kvp.ts): the pipe and IC
 * headers, version negotiation, and the heartbeat, shutdown, time-sync and KVP bodies, with
 * property tests that untrusted bytes either decode or raise IcError and nothing else.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  IcError, IcGuid, DeviceClassGuid, IcMessageType, IcFlags, IcStatus, PIPE_HEADER_BYTES, IC_HEADER_BYTES, encodeIcMessage,
  decodeIcMessage, encodeNegotiate, decodeNegotiate, negotiateVersions, guidFromBytes, guidToBytes, icDecodedRanges,
  type IcHeader, type IcVersion, type Negotiate,
} from '../src/index.js';
import { encodeHeartbeat, decodeHeartbeat } from '../src/heartbeat.js';
import { encodeShutdown, decodeShutdown, type ShutdownRequest } from '../src/shutdown.js';
import { encodeTimeSync, decodeTimeSync, TimeSyncFlags, msToFiletime, filetimeToMs, type TimeSample } from '../src/timesync.js';
import { KvpOperation, KvpPool, KVP_MAX_KEY_BYTES, KVP_MAX_VALUE_BYTES, KVP_MESSAGE_BYTES, encodeKvp, decodeKvp, kvpDecodedRanges, type KvpMessage } from '../src/kvp.js';

const le = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
const u16 = (b: Uint8Array, at: number): number => le(b).getUint16(at, true);
const u32 = (b: Uint8Array, at: number): number => le(b).getUint32(at, true);
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const v = (major: number, minor: number): IcVersion => ({ major, minor });

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  expect.fail('expected an exception');
}
function expectIcError(f: () => unknown, pattern?: RegExp): void {
  const e = thrown(f);
  expect(e).to.be.instanceOf(IcError);
  if (pattern) expect((e as Error).message).to.match(pattern);
}
/** Runs a decoder, asserting that a failure is an IcError and nothing else. */
function decodeOrReject<T>(decode: (b: Uint8Array) => T, b: Uint8Array): T | null {
  try {
    return decode(b);
  } catch (e) {
    expect(e, String(e)).to.be.instanceOf(IcError);
    expect((e as Error).constructor).to.equal(IcError);
    return null;
  }
}

const request: IcHeader = { framework: v(3, 0), message: v(3, 0), type: IcMessageType.Heartbeat, status: 0, transactionId: 0x5a, flags: IcFlags.Transaction | IcFlags.Request };

type Mutation = { kind: 'flip'; at: number; xor: number } | { kind: 'truncate'; to: number } | { kind: 'append'; extra: Uint8Array } | { kind: 'u32'; at: number; value: number };
const mutationA: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), to: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: fc.oneof(fc.nat({ max: 0xffffffff }), fc.constantFrom(0, 1, 2, 100, 101, 0xffff, 0xffffffff)) }),
);
function mutate(bytes: Uint8Array, ms: Mutation[]): Uint8Array {
  let b: Uint8Array = bytes.slice();
  for (const m of ms) {
    if (m.kind === 'flip' && b.length > 0) b[m.at % b.length]! ^= m.xor;
    else if (m.kind === 'truncate') b = b.slice(0, m.to % (b.length + 1));
    else if (m.kind === 'append') {
      const n = new Uint8Array(b.length + m.extra.length);
      n.set(b);
      n.set(m.extra, b.length);
      b = n;
    } else if (m.kind === 'u32' && b.length >= 4) le(b).setUint32(m.at % (b.length - 3), m.value, true);
  }
  return b;
}
const mutationsA = fc.array(mutationA, { minLength: 1, maxLength: 4 });

const versionA = fc.record({ major: fc.nat({ max: 0xffff }), minor: fc.nat({ max: 0xffff }) });
const smallVersionA = fc.record({ major: fc.nat({ max: 4 }), minor: fc.nat({ max: 2 }) });
const headerA: fc.Arbitrary<IcHeader> = fc.record({
  framework: versionA,
  message: versionA,
  type: fc.integer({ min: 0, max: 5 }),
  status: fc.nat({ max: 0xffffffff }),
  transactionId: fc.nat({ max: 0xff }),
  flags: fc.integer({ min: 0, max: 7 }),
});
const negotiateA: fc.Arbitrary<Negotiate> = fc.record({
  framework: fc.array(versionA, { maxLength: 8 }),
  message: fc.array(versionA, { maxLength: 8 }),
});
const textA = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: 'binary', maxLength });
const kvpA: fc.Arbitrary<KvpMessage> = fc.record({
  operation: fc.integer({ min: 0, max: 3 }),
  pool: fc.integer({ min: 0, max: 4 }),
  index: fc.nat({ max: 0xffffffff }),
  key: textA(120).filter((s) => utf8(s).length <= KVP_MAX_KEY_BYTES),
  value: textA(500).filter((s) => utf8(s).length <= KVP_MAX_VALUE_BYTES),
});
const shutdownA: fc.Arbitrary<ShutdownRequest> = fc.record({
  reason: fc.nat({ max: 0xffffffff }),
  timeoutSeconds: fc.nat({ max: 0xffffffff }),
  flags: fc.integer({ min: 0, max: 3 }),
  message: textA(400).filter((s) => !s.includes('\0') && utf8(s).length <= 2048),
});
const timeSampleA: fc.Arbitrary<TimeSample> = fc.record({
  parentTime: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  referenceTime: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  flags: fc.integer({ min: 0, max: 2 }),
  leapFlags: fc.integer({ min: -128, max: 127 }),
  stratum: fc.integer({ min: -128, max: 127 }),
});

describe('integration services', () => {
  describe('GUIDs', () => {
    it('service and device-class GUIDs are the Hyper-V ones and valid GUID text', () => {
      expect(IcGuid).to.deep.equal({
        shutdown: '0e0b6031-5213-4934-818b-38d90ced39db',
        timesync: '9527e630-d0ae-497b-adce-e80ab0175caf',
        heartbeat: '57164f39-9115-4e78-ab55-382f3bd5422d',
        kvp: 'a9a0f4e7-5a45-4d96-b827-8a841e8c03e6',
        vss: '35fa2e29-ea23-4236-96ae-3a6ebacba440',
      });
      expect(DeviceClassGuid).to.deep.equal({ scsi: 'ba6163d9-04a1-4d29-b605-72e2ffb1dc7f', nic: 'f8615163-df3e-46c5-913f-f2d2f965ed0e' });
      for (const g of [...Object.values(IcGuid), ...Object.values(DeviceClassGuid)]) expect(guidFromBytes(guidToBytes(g))).to.equal(g);
    });
  });

  describe('framing', () => {
    it('a message is the pipe header (flags 1, msgsize 20 + body) and the IC header laid out as Linux icmsg_hdr', () => {
      const body = Uint8Array.of(1, 2, 3, 4, 5);
      const b = encodeIcMessage({ framework: v(3, 1), message: v(4, 2), type: IcMessageType.TimeSync, status: IcStatus.Fail, transactionId: 9, flags: 3 }, body);
      expect(b.length).to.equal(PIPE_HEADER_BYTES + IC_HEADER_BYTES + 5);
      expect(u32(b, 0)).to.equal(1); // pipe flags: data
      expect(u32(b, 4)).to.equal(IC_HEADER_BYTES + 5); // pipe msgsize
      expect([u16(b, 8), u16(b, 10)]).to.deep.equal([3, 1]); // icverframe
      expect(u16(b, 12)).to.equal(4); // icmsgtype
      expect([u16(b, 14), u16(b, 16)]).to.deep.equal([4, 2]); // icvermsg
      expect(u16(b, 18)).to.equal(5); // icmsgsize
      expect(u32(b, 20)).to.equal(0x80004005); // status
      expect(b[24]).to.equal(9); // transaction id
      expect(b[25]).to.equal(3); // flags
      expect([b[26], b[27]]).to.deep.equal([0, 0]);
      expect([...b.subarray(28)]).to.deep.equal([1, 2, 3, 4, 5]);
    });

    it('every message type round-trips with its header and exactly its body (property)', () => {
      fc.assert(
        fc.property(headerA, fc.uint8Array({ maxLength: 300 }), (h, body) => {
          const d = decodeIcMessage(encodeIcMessage(h, body));
          expect(d.header).to.deep.equal(h);
          expect([...d.body]).to.deep.equal([...body]);
        }),
      );
      for (const type of Object.values(IcMessageType)) {
        expect(decodeIcMessage(encodeIcMessage({ ...request, type }, new Uint8Array(3))).header.type).to.equal(type);
      }
    });

    it('zero padding after the message is ignored and the body is exactly the IC message size', () => {
      const b = encodeIcMessage(request, encodeHeartbeat(7n));
      const padded = new Uint8Array(b.length + 4);
      padded.set(b);
      const d = decodeIcMessage(padded);
      expect(d.body.length).to.equal(40);
      expect(decodeHeartbeat(d.body).sequence).to.equal(7n);
    });

    it('a pipe msgsize larger than the IC message is accepted (the guest echoes the host buffer)', () => {
      const b = encodeIcMessage(request, new Uint8Array(16));
      le(b).setUint16(18, 8, true); // the IC message shrank, msgsize did not
      const d = decodeIcMessage(b);
      expect(d.body.length).to.equal(8);
    });

    it('the decoded body is a copy that does not alias the packet', () => {
      const b = encodeIcMessage(request, Uint8Array.of(1, 2));
      const d = decodeIcMessage(b);
      b[28] = 99;
      expect(d.body[0]).to.equal(1);
    });

    it('rejects messages shorter than both headers, msgsize or IC size past the bytes present, unknown types and unknown flag bits', () => {
      const good = encodeIcMessage(request, new Uint8Array(8));
      expectIcError(() => decodeIcMessage(good.subarray(0, 27)), /27 bytes/);
      const bigPipe = good.slice();
      le(bigPipe).setUint32(4, 29, true);
      expectIcError(() => decodeIcMessage(bigPipe), /msgsize 29 exceeds the 28 bytes/);
      const smallPipe = good.slice();
      le(smallPipe).setUint32(4, 19, true);
      expectIcError(() => decodeIcMessage(smallPipe), /msgsize 19/);
      const bigIc = good.slice();
      le(bigIc).setUint16(18, 9, true);
      expectIcError(() => decodeIcMessage(bigIc), /message size 9/);
      const badType = good.slice();
      le(badType).setUint16(12, 6, true);
      expectIcError(() => decodeIcMessage(badType), /type 6/);
      const badFlags = good.slice();
      badFlags[25] = 8;
      expectIcError(() => decodeIcMessage(badFlags), /flags 0x8/);
      expectIcError(() => decodeIcMessage('x' as unknown as Uint8Array));
    });

    it('encoding rejects out-of-range header fields with RangeError', () => {
      expect(() => encodeIcMessage({ ...request, type: 6 }, new Uint8Array(0))).to.throw(RangeError, /type 6/);
      expect(() => encodeIcMessage({ ...request, flags: 8 }, new Uint8Array(0))).to.throw(RangeError, /flags/);
      expect(() => encodeIcMessage({ ...request, transactionId: 256 }, new Uint8Array(0))).to.throw(RangeError, /transactionId 256/);
      expect(() => encodeIcMessage({ ...request, status: -1 }, new Uint8Array(0))).to.throw(RangeError, /status -1/);
      expect(() => encodeIcMessage({ ...request, framework: v(0x10000, 0) }, new Uint8Array(0))).to.throw(RangeError, /major 65536/);
      expect(() => encodeIcMessage(request, new Uint8Array(0x10000))).to.throw(RangeError, /65536/);
    });

    it('random and mutated packets decode or throw IcError, never anything else (property)', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 120 }), (b) => void decodeOrReject(decodeIcMessage, b)), { numRuns: 3000 });
      fc.assert(
        fc.property(headerA, fc.uint8Array({ maxLength: 64 }), mutationsA, (h, body, ms) => void decodeOrReject(decodeIcMessage, mutate(encodeIcMessage(h, body), ms))),
        { numRuns: 3000 },
      );
    });
  });

  describe('negotiation', () => {
    it('a negotiate body lists counts, then framework versions, then message versions', () => {
      const b = encodeNegotiate({ framework: [v(3, 0), v(1, 0)], message: [v(4, 0)] });
      expect(b.length).to.equal(8 + 3 * 4);
      expect([u16(b, 0), u16(b, 2), u32(b, 4)]).to.deep.equal([2, 1, 0]);
      expect([u16(b, 8), u16(b, 10), u16(b, 12), u16(b, 14), u16(b, 16), u16(b, 18)]).to.deep.equal([3, 0, 1, 0, 4, 0]);
    });

    it('negotiate bodies round-trip (property)', () => {
      fc.assert(fc.property(negotiateA, (n) => void expect(decodeNegotiate(encodeNegotiate(n))).to.deep.equal(n)));
    });

    it('picks the first offered framework and message versions that the guest supports', () => {
      const offered = { framework: [v(3, 0), v(1, 0)], message: [v(4, 0), v(3, 0), v(1, 0)] };
      expect(negotiateVersions(offered, { framework: [v(1, 0), v(3, 0)], message: [v(1, 0), v(3, 0)] })).to.deep.equal({ framework: v(3, 0), message: v(3, 0) });
      expect(negotiateVersions(offered, { framework: [v(1, 0)], message: [v(1, 0), v(4, 0)] })).to.deep.equal({ framework: v(1, 0), message: v(4, 0) });
    });

    it('returns null when framework or message versions have nothing in common', () => {
      const offered = { framework: [v(3, 0)], message: [v(4, 0)] };
      expect(negotiateVersions(offered, { framework: [v(3, 0)], message: [v(4, 1)] })).to.equal(null);
      expect(negotiateVersions(offered, { framework: [v(1, 0)], message: [v(4, 0)] })).to.equal(null);
      expect(negotiateVersions({ framework: [], message: [] }, offered)).to.equal(null);
    });

    it('the chosen versions are common to both sides and first in host order (property)', () => {
      const listA = fc.array(smallVersionA, { maxLength: 6 });
      fc.assert(
        fc.property(listA, listA, listA, listA, (of, om, sf, sm) => {
          const r = negotiateVersions({ framework: of, message: om }, { framework: sf, message: sm });
          const has = (xs: IcVersion[], x: IcVersion): boolean => xs.some((y) => y.major === x.major && y.minor === x.minor);
          const firstF = of.find((x) => has(sf, x));
          const firstM = om.find((x) => has(sm, x));
          if (!firstF || !firstM) expect(r).to.equal(null);
          else expect(r).to.deep.equal({ framework: firstF, message: firstM });
        }),
      );
    });

    it('rejects counts above 100 and bodies too short for their counts', () => {
      const b = encodeNegotiate({ framework: [v(3, 0)], message: [v(4, 0)] });
      expectIcError(() => decodeNegotiate(b.subarray(0, 15)), /15 bytes; 1 \+ 1 versions need 16/);
      expectIcError(() => decodeNegotiate(b.subarray(0, 7)), /shorter/);
      const many = b.slice();
      le(many).setUint16(0, 101, true);
      expectIcError(() => decodeNegotiate(many), /icframe_vercnt 101/);
      le(many).setUint16(0, 1, true);
      le(many).setUint16(2, 0xffff, true);
      expectIcError(() => decodeNegotiate(many), /icmsg_vercnt 65535/);
      expect(() => encodeNegotiate({ framework: new Array(101).fill(v(1, 0)), message: [] })).to.throw(RangeError);
    });

    it('random and mutated negotiate bodies decode or throw IcError (property)', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), (b) => void decodeOrReject(decodeNegotiate, b)), { numRuns: 3000 });
      fc.assert(fc.property(negotiateA, mutationsA, (n, ms) => void decodeOrReject(decodeNegotiate, mutate(encodeNegotiate(n), ms))), { numRuns: 3000 });
    });
  });

  describe('heartbeat', () => {
    it('is 40 bytes with the sequence at 0 and round-trips up to 2^64-1', () => {
      const b = encodeHeartbeat(0x0102030405060708n);
      expect(b.length).to.equal(40);
      expect(le(b).getBigUint64(0, true)).to.equal(0x0102030405060708n);
      expect(b.subarray(8).every((x) => x === 0)).to.equal(true);
      for (const s of [0n, 1n, 2n ** 64n - 1n]) expect(decodeHeartbeat(encodeHeartbeat(s))).to.deep.equal({ sequence: s });
    });

    it('rejects a sequence outside u64 when encoding and a body under 40 bytes when decoding', () => {
      expect(() => encodeHeartbeat(-1n)).to.throw(RangeError);
      expect(() => encodeHeartbeat(2n ** 64n)).to.throw(RangeError);
      expectIcError(() => decodeHeartbeat(new Uint8Array(39)), /39 bytes/);
    });
  });

  describe('shutdown', () => {
    it('has reason, timeout and flags at 0, 4 and 8, then the NUL-terminated UTF-8 message', () => {
      const b = encodeShutdown({ reason: 0x80000000, timeoutSeconds: 30, flags: 3, message: 'Zeit für Feierabend' });
      expect([u32(b, 0), u32(b, 4), u32(b, 8)]).to.deep.equal([0x80000000, 30, 3]);
      expect(b.length).to.equal(12 + utf8('Zeit für Feierabend').length + 1);
      expect(b[b.length - 1]).to.equal(0);
      expect(encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 0, message: '' }).length).to.equal(12);
    });

    it('round-trips (property)', () => {
      fc.assert(fc.property(shutdownA, (s) => void expect(decodeShutdown(encodeShutdown(s))).to.deep.equal(s)));
      const full = 'x'.repeat(2048);
      const b = encodeShutdown({ reason: 1, timeoutSeconds: 2, flags: 2, message: full });
      expect(b.length).to.equal(12 + 2048);
      expect(decodeShutdown(b).message).to.equal(full);
    });

    it('the message ends at the first NUL, or at the end of the body, or after 2048 bytes', () => {
      const b = new Uint8Array(12 + 2100).fill(0x41);
      le(b).setUint32(8, 0, true);
      expect(decodeShutdown(b).message).to.equal('A'.repeat(2048));
      b[12 + 3] = 0;
      expect(decodeShutdown(b).message).to.equal('AAA');
      expect(decodeShutdown(b.subarray(0, 14)).message).to.equal('AA');
    });

    it('rejects messages over 2048 UTF-8 bytes or with a NUL, and unknown flag bits, when encoding', () => {
      expect(() => encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 0, message: 'é'.repeat(1025) })).to.throw(RangeError, /2050 bytes/);
      expect(() => encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 0, message: 'a\0b' })).to.throw(RangeError, /NUL/);
      expect(() => encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 4, message: '' })).to.throw(RangeError, /flags 0x4/);
    });

    it('rejects invalid UTF-8, unknown flag bits and short bodies when decoding', () => {
      const b = encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 0, message: 'ab' });
      b[12] = 0xff;
      expectIcError(() => decodeShutdown(b), /UTF-8/);
      const flags = encodeShutdown({ reason: 0, timeoutSeconds: 0, flags: 0, message: '' });
      le(flags).setUint32(8, 4, true);
      expectIcError(() => decodeShutdown(flags), /flags 0x4/);
      expectIcError(() => decodeShutdown(new Uint8Array(11)), /11 bytes/);
    });
  });

  describe('time sync', () => {
    it('is 22 bytes: parent time at 0, reference time at 8, flags at 16, leap flags at 17, stratum at 18', () => {
      const b = encodeTimeSync({ parentTime: 0x1122334455667788n, referenceTime: 42n, flags: TimeSyncFlags.Sample, leapFlags: -1, stratum: 3 });
      expect(b.length).to.equal(22);
      expect(le(b).getBigUint64(0, true)).to.equal(0x1122334455667788n);
      expect(le(b).getBigUint64(8, true)).to.equal(42n);
      expect([b[16], b[17], b[18], b[19], b[20], b[21]]).to.deep.equal([2, 0xff, 3, 0, 0, 0]);
    });

    it('round-trips, signed leap flags and stratum included (property)', () => {
      fc.assert(fc.property(timeSampleA, (t) => void expect(decodeTimeSync(encodeTimeSync(t))).to.deep.equal(t)));
    });

    it('rejects flags other than probe, sync and sample, and short bodies', () => {
      const b = encodeTimeSync({ parentTime: 1n, referenceTime: 0n, flags: TimeSyncFlags.Probe, leapFlags: 0, stratum: 0 });
      b[16] = 3;
      expectIcError(() => decodeTimeSync(b), /flags 3/);
      expectIcError(() => decodeTimeSync(new Uint8Array(21)), /21 bytes/);
      expect(() => encodeTimeSync({ parentTime: 1n, referenceTime: 0n, flags: 3, leapFlags: 0, stratum: 0 })).to.throw(RangeError);
      expect(() => encodeTimeSync({ parentTime: 1n, referenceTime: 0n, flags: 0, leapFlags: 128, stratum: 0 })).to.throw(RangeError, /leapFlags 128/);
    });

    it('the Unix epoch is 116444736000000000 units of 100 ns after 1601-01-01', () => {
      expect(msToFiletime(0)).to.equal(116444736000000000n);
      expect(filetimeToMs(116444736000000000n)).to.equal(0);
      expect(msToFiletime(Date.UTC(1601, 0, 1))).to.equal(0n);
      expect(msToFiletime(1.5)).to.equal(116444736000015000n);
      expect(filetimeToMs(116444736000015001n)).to.be.closeTo(1.5001, 1e-9);
    });

    it('ms to filetime and back is the identity for whole milliseconds (property)', () => {
      fc.assert(fc.property(fc.integer({ min: -11644473600000, max: 8e12 }), (ms) => void expect(filetimeToMs(msToFiletime(ms))).to.equal(ms)));
      expect(() => msToFiletime(Number.NaN)).to.throw(RangeError);
      expect(() => msToFiletime(-11644473600001)).to.throw(RangeError);
    });

    it('random and mutated time-sync bodies decode or throw IcError (property)', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), (b) => void decodeOrReject(decodeTimeSync, b)));
      fc.assert(fc.property(timeSampleA, mutationsA, (t, ms) => void decodeOrReject(decodeTimeSync, mutate(encodeTimeSync(t), ms))));
    });
  });

  describe('KVP', () => {
    it('is 2580 bytes: operation, pool, index, value type REG_SZ, sizes, then key at 20 and value at 532', () => {
      const b = encodeKvp({ operation: KvpOperation.Set, pool: KvpPool.Guest, index: 7, key: 'HostName', value: 'gästé' });
      expect(b.length).to.equal(KVP_MESSAGE_BYTES);
      expect([b[0], b[1], u16(b, 2)]).to.deep.equal([1, 1, 0]);
      expect([u32(b, 4), u32(b, 8), u32(b, 12), u32(b, 16)]).to.deep.equal([7, 1, 8, utf8('gästé').length]);
      expect(new TextDecoder().decode(b.subarray(20, 28))).to.equal('HostName');
      expect(b[28]).to.equal(0);
      expect([...b.subarray(532, 532 + 7)]).to.deep.equal([...utf8('gästé')]);
    });

    it('round-trips any key up to 512 and value up to 2048 UTF-8 bytes (property)', () => {
      fc.assert(fc.property(kvpA, (m) => void expect(decodeKvp(encodeKvp(m))).to.deep.equal(m)));
      const max = { operation: KvpOperation.Enumerate, pool: KvpPool.AutoInternal, index: 0xffffffff, key: 'k'.repeat(512), value: '€'.repeat(682) + 'vv' };
      expect(decodeKvp(encodeKvp(max))).to.deep.equal(max);
      const bom = { operation: 0, pool: 0, index: 0, key: '\uFEFFkey', value: '' };
      expect(decodeKvp(encodeKvp(bom))).to.deep.equal(bom);
    });

    it('encoding rejects keys over 512 and values over 2048 UTF-8 bytes, lone surrogates and bad enums', () => {
      const ok: KvpMessage = { operation: 0, pool: 0, index: 0, key: 'k', value: 'v' };
      expect(() => encodeKvp({ ...ok, key: 'é'.repeat(257) })).to.throw(RangeError, /514 bytes/);
      expect(() => encodeKvp({ ...ok, value: 'x'.repeat(2049) })).to.throw(RangeError, /2049 bytes/);
      expect(() => encodeKvp({ ...ok, key: '\uD800' })).to.throw(RangeError, /surrogate/);
      expect(() => encodeKvp({ ...ok, operation: 4 })).to.throw(RangeError, /operation 4/);
      expect(() => encodeKvp({ ...ok, pool: 5 })).to.throw(RangeError, /pool 5/);
    });

    it('decoding rejects unknown operations, pools and value types, oversized sizes, invalid UTF-8 and short bodies', () => {
      const good = encodeKvp({ operation: 0, pool: 0, index: 0, key: 'ab', value: 'cd' });
      const with_ = (f: (b: Uint8Array) => void): Uint8Array => {
        const b = good.slice();
        f(b);
        return b;
      };
      expectIcError(() => decodeKvp(with_((b) => (b[0] = 4))), /operation 4/);
      expectIcError(() => decodeKvp(with_((b) => (b[1] = 5))), /pool 5/);
      expectIcError(() => decodeKvp(with_((b) => le(b).setUint32(8, 4, true))), /value_type 4/);
      expectIcError(() => decodeKvp(with_((b) => le(b).setUint32(12, 513, true))), /key_size 513/);
      expectIcError(() => decodeKvp(with_((b) => le(b).setUint32(16, 2049, true))), /value_size 2049/);
      expectIcError(() => decodeKvp(with_((b) => (b[20] = 0xc3))), /key .*UTF-8/);
      expectIcError(() => decodeKvp(with_((b) => le(b).setUint16(532, 0xbfed))), /value .*UTF-8/);
      expectIcError(() => decodeKvp(good.subarray(0, 2579)), /2579 bytes/);
    });

    it('random and mutated KVP bodies decode or throw IcError (property)', () => {
      const nearValid = fc.tuple(fc.uint8Array({ minLength: 20, maxLength: 20 }), fc.uint8Array({ minLength: 64, maxLength: 64 })).map(([head, text]) => {
        const b = new Uint8Array(KVP_MESSAGE_BYTES);
        b.set(head);
        b[0] %= 5;
        b[1] %= 6;
        le(b).setUint32(8, 1, true);
        le(b).setUint32(12, u32(b, 12) % 600, true);
        le(b).setUint32(16, u32(b, 16) % 2100, true);
        b.set(text, 20);
        b.set(text, 532);
        return b;
      });
      fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 3000 }), nearValid), (b) => void decodeOrReject(decodeKvp, b)), { numRuns: 1000 });
      fc.assert(fc.property(kvpA, mutationsA, (m, ms) => void decodeOrReject(decodeKvp, mutate(encodeKvp(m), ms))), { numRuns: 1000 });
    });
  });

  it('every body decoder turns any input into a value or an IcError (property)', () => {
    const decoders = [decodeHeartbeat, decodeShutdown, decodeTimeSync, decodeNegotiate, decodeKvp, decodeIcMessage] as const;
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2600 }), (b) => {
        for (const d of decoders) decodeOrReject(d as (b: Uint8Array) => unknown, b);
      }),
      { numRuns: 500 },
    );
    for (const d of decoders) expectIcError(() => (d as (b: unknown) => unknown)(undefined));
  });

  it('the decoded bytes of a KVP message are its headers and the key and value as set, not the padding; any bytes give ranges inside them, never a throw', () => {
    const body = encodeKvp({ operation: KvpOperation.Set, pool: KvpPool.External, index: 0, key: 'ab', value: 'xyz' });
    const msg = encodeIcMessage({ framework: { major: 3, minor: 0 }, message: { major: 5, minor: 0 }, type: IcMessageType.Kvp, status: 0, transactionId: 1, flags: IcFlags.Request | IcFlags.Transaction }, body);
    // msgsize and the IC header (not its 2 reserved bytes); operation, pool; index to value_size; 2 key and 3 value bytes.
    expect(icDecodedRanges(msg, kvpDecodedRanges)).to.deep.equal([[4, 26], [28, 30], [32, 48], [48, 50], [560, 563]]);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 3000 }), (b) => {
      for (const [a, e] of icDecodedRanges(b, kvpDecodedRanges)) expect(a >= 0 && a <= e && e <= b.length, `[${a}, ${e}) of ${b.length}`).to.equal(true);
    }), { numRuns: 300 });
  });
});
