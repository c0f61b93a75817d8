/**
 * Unit tests of the VMBus channel-message codec (packages/protocol/src/vmbus.ts): the byte layouts
 * of Linux's hyperv.h, mixed-endian GUIDs, GPADL splitting into header and body messages, and
 * property tests that untrusted bytes either decode or raise ChannelMessageError and nothing else.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  ChannelMessageError, ChannelMessageType, VmbusVersion, VMBUS_VERSIONS_NEWEST_FIRST, vmbusVersionName,
  initiateContactConnectionId, VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4, MAX_CHANNELS,
  OFFER_USER_DEFINED_BYTES, GPADL_HEADER_MAX_PFNS, GPADL_BODY_MAX_PFNS, GPADL_MAX_PFNS, decodeChannelMessage,
  encodeChannelMessage, gpadlMessages, guidFromBytes, guidToBytes, IcGuid, type ChannelMessage,
} from '../src/index.js';

const le = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
const u16 = (b: Uint8Array, at: number): number => le(b).getUint16(at, true);
const u32 = (b: Uint8Array, at: number): number => le(b).getUint32(at, true);
const u64 = (b: Uint8Array, at: number): bigint => le(b).getBigUint64(at, true);
const filled = (n: number, f: (i: number) => number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => f(i) & 0xff);

/** Runs `f` and returns the error it throws (failing the test if it throws none). */
function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  expect.fail('expected an exception');
}
function expectDecodeError(bytes: Uint8Array, pattern?: RegExp): void {
  const e = thrown(() => decodeChannelMessage(bytes));
  expect(e).to.be.instanceOf(ChannelMessageError);
  if (pattern) expect((e as Error).message).to.match(pattern);
}

const offer: ChannelMessage = {
  type: 'OfferChannel',
  interfaceType: IcGuid.heartbeat,
  interfaceInstance: 'f3f29a0b-9a2d-4b1c-8e3f-0123456789ab',
  flags: 0x2000,
  mmioMegabytes: 0,
  userDefined: filled(OFFER_USER_DEFINED_BYTES, (i) => i + 1),
  subChannelIndex: 3,
  childRelid: 0x1234,
  monitorId: 7,
  monitorAllocated: true,
  dedicatedInterrupt: true,
  connectionId: 0x2abcd,
};

/** One message of every type (GPADL ones with their own cases below). */
const samples: ChannelMessage[] = [
  offer,
  { type: 'RescindChannelOffer', childRelid: 5 },
  { type: 'RequestOffers' },
  { type: 'AllOffersDelivered' },
  { type: 'OpenChannel', childRelid: 5, openId: 0x11, ringGpadlHandle: 0xe1e10, targetVp: 2, downstreamRingPageOffset: 4, userData: filled(120, (i) => 255 - i) },
  { type: 'OpenChannelResult', childRelid: 5, openId: 0x11, status: 0xc0000001 },
  { type: 'CloseChannel', childRelid: 5 },
  { type: 'GpadlHeader', childRelid: 5, gpadl: 0xe1e10, byteCount: 8192, byteOffset: 0, totalPfns: 2, pfns: [0x100, 0x2_0000_0001] },
  { type: 'GpadlBody', msgNumber: 1, gpadl: 0xe1e10, pfns: [1, 2, 3] },
  { type: 'GpadlCreated', childRelid: 5, gpadl: 0xe1e10, status: 0 },
  { type: 'GpadlTeardown', childRelid: 5, gpadl: 0xe1e10 },
  { type: 'GpadlTorndown', gpadl: 0xe1e10 },
  { type: 'RelidReleased', childRelid: 5 },
  { type: 'InitiateContact', versionRequested: VmbusVersion.V5_3, targetVcpu: 0, msgSint: 2, msgVtl: 0, monitorPage1: 0x1_2345_6000n, monitorPage2: 0xffff_ffff_ffff_f000n },
  { type: 'VersionResponse', versionSupported: true, connectionState: 0, messageConnectionId: 4 },
  { type: 'Unload' },
  { type: 'UnloadResponse' },
  { type: 'ModifyChannel', childRelid: 5, targetVp: 3 },
];

const expectedSize: Record<ChannelMessage['type'], (m: ChannelMessage) => number> = {
  OfferChannel: () => 196,
  RescindChannelOffer: () => 12,
  RequestOffers: () => 8,
  AllOffersDelivered: () => 8,
  OpenChannel: () => 148,
  OpenChannelResult: () => 20,
  CloseChannel: () => 12,
  GpadlHeader: (m) => 28 + 8 * (m as { pfns: number[] }).pfns.length,
  GpadlBody: (m) => 16 + 8 * (m as { pfns: number[] }).pfns.length,
  GpadlCreated: () => 20,
  GpadlTeardown: () => 16,
  GpadlTorndown: () => 12,
  RelidReleased: () => 12,
  InitiateContact: () => 40,
  VersionResponse: () => 16,
  Unload: () => 8,
  UnloadResponse: () => 8,
  ModifyChannel: () => 16,
};

// ---------------------------------------------------------------------------------------------
// Arbitraries

const u8a = fc.integer({ min: 0, max: 0xff });
const u16a = fc.integer({ min: 0, max: 0xffff });
const u32a = fc.integer({ min: 0, max: 0xffffffff });
const pfnA = fc.oneof(fc.integer({ min: 0, max: 0xfffff }), fc.integer({ min: 0, max: 2 ** 52 - 1 }));
const guidA = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => guidFromBytes(b));
const bytes120 = fc.uint8Array({ minLength: 120, maxLength: 120 });

const gpadlHeaderA = fc
  .record({ childRelid: u32a, gpadl: u32a, byteOffset: fc.integer({ min: 0, max: 4095 }), byteCount: fc.integer({ min: 1, max: 4096 * 60 }) })
  .chain((r) => {
    const totalPfns = Math.ceil((r.byteOffset + r.byteCount) / 4096);
    const here = Math.min(totalPfns, GPADL_HEADER_MAX_PFNS);
    return fc.array(pfnA, { minLength: here, maxLength: here }).map((pfns): ChannelMessage => ({ type: 'GpadlHeader', ...r, totalPfns, pfns }));
  });

const messageA: fc.Arbitrary<ChannelMessage> = fc.oneof(
  fc.record({
    type: fc.constant('OfferChannel' as const), interfaceType: guidA, interfaceInstance: guidA, flags: u16a, mmioMegabytes: u16a,
    userDefined: bytes120, subChannelIndex: u16a, childRelid: u32a, monitorId: u8a, monitorAllocated: fc.boolean(),
    dedicatedInterrupt: fc.boolean(), connectionId: u32a,
  }),
  fc.record({ type: fc.constantFrom('RescindChannelOffer' as const, 'CloseChannel' as const, 'RelidReleased' as const), childRelid: u32a }),
  fc.record({ type: fc.constantFrom('RequestOffers' as const, 'AllOffersDelivered' as const, 'Unload' as const, 'UnloadResponse' as const) }),
  fc.record({ type: fc.constant('OpenChannel' as const), childRelid: u32a, openId: u32a, ringGpadlHandle: u32a, targetVp: u32a, downstreamRingPageOffset: u32a, userData: bytes120 }),
  fc.record({ type: fc.constant('OpenChannelResult' as const), childRelid: u32a, openId: u32a, status: u32a }),
  gpadlHeaderA,
  fc.record({ type: fc.constant('GpadlBody' as const), msgNumber: u32a, gpadl: u32a, pfns: fc.array(pfnA, { minLength: 1, maxLength: GPADL_BODY_MAX_PFNS }) }),
  fc.record({ type: fc.constant('GpadlCreated' as const), childRelid: u32a, gpadl: u32a, status: u32a }),
  fc.record({ type: fc.constant('GpadlTeardown' as const), childRelid: u32a, gpadl: u32a }),
  fc.record({ type: fc.constant('GpadlTorndown' as const), gpadl: u32a }),
  fc.record({
    type: fc.constant('InitiateContact' as const), versionRequested: u32a, targetVcpu: u32a, msgSint: u8a, msgVtl: u8a,
    monitorPage1: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), monitorPage2: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  }),
  fc.record({ type: fc.constant('VersionResponse' as const), versionSupported: fc.boolean(), connectionState: u8a, messageConnectionId: u32a }),
  fc.record({ type: fc.constant('ModifyChannel' as const), childRelid: u32a, targetVp: u32a }),
);

/** Random bytes, and random bytes behind a valid msgtype so that every decoder is reached. */
const randomMessageBytesA = fc.oneof(
  fc.uint8Array({ maxLength: 260 }),
  fc.tuple(fc.constantFrom(...Object.values(ChannelMessageType)), fc.uint8Array({ maxLength: 236 })).map(([t, rest]) => {
    const b = new Uint8Array(4 + rest.length);
    le(b).setUint32(0, t, true);
    b.set(rest, 4);
    return b;
  }),
);

type Mutation = { kind: 'flip'; at: number; xor: number } | { kind: 'truncate'; to: number } | { kind: 'append'; extra: Uint8Array } | { kind: 'u32'; at: number; value: number };
const mutationA: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), to: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: fc.oneof(u32a, fc.constantFrom(0, 1, 2, 0xffff, 0x10000, 0xffffffff)) }),
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

/** Decodes, asserting that a failure is a ChannelMessageError and nothing else. */
function decodeOrReject(bytes: Uint8Array): ChannelMessage | null {
  try {
    return decodeChannelMessage(bytes);
  } catch (e) {
    expect(e, String(e)).to.be.instanceOf(ChannelMessageError);
    expect((e as Error).constructor).to.equal(ChannelMessageError);
    return null;
  }
}

// ---------------------------------------------------------------------------------------------

describe('VMBus channel messages', () => {
  describe('round trips', () => {
    it('every message type decodes to what was encoded', () => {
      const seen = new Set<string>();
      for (const m of samples) {
        const bytes = encodeChannelMessage(m);
        expect(u32(bytes, 0), m.type).to.equal(ChannelMessageType[m.type]);
        expect(u32(bytes, 4), `${m.type} padding`).to.equal(0);
        expect(decodeChannelMessage(bytes), m.type).to.deep.equal(m);
        seen.add(m.type);
      }
      expect([...seen].sort()).to.deep.equal(Object.keys(ChannelMessageType).sort());
    });

    it('every message is encoded at exactly its layout size', () => {
      for (const m of samples) expect(encodeChannelMessage(m).length, m.type).to.equal(expectedSize[m.type](m));
    });

    it('any valid message round-trips (property)', () => {
      fc.assert(
        fc.property(messageA, (m) => {
          const bytes = encodeChannelMessage(m);
          expect(bytes.length).to.equal(expectedSize[m.type](m));
          expect(bytes.length).to.be.at.most(240);
          expect(decodeChannelMessage(bytes)).to.deep.equal(m);
        }),
        { numRuns: 2000 },
      );
    });

    it('a decodable buffer stays decodable after a Buffer/subarray offset', () => {
      const bytes = encodeChannelMessage(offer);
      const big = new Uint8Array(bytes.length + 13);
      big.set(bytes, 13);
      expect(decodeChannelMessage(big.subarray(13))).to.deep.equal(offer);
      expect(decodeChannelMessage(Buffer.from(bytes))).to.deep.equal(offer);
    });
  });

  describe('byte layouts', () => {
    it('OFFERCHANNEL is 196 bytes: GUIDs at 8 and 24, flags at 56, user data at 60, relid at 184, connection id at 192', () => {
      const b = encodeChannelMessage(offer);
      expect(b.length).to.equal(196);
      expect(u32(b, 0)).to.equal(1);
      expect(guidFromBytes(b, 8)).to.equal(IcGuid.heartbeat);
      expect([...b.subarray(8, 12)]).to.deep.equal([0x39, 0x4f, 0x16, 0x57]);
      expect(guidFromBytes(b, 24)).to.equal('f3f29a0b-9a2d-4b1c-8e3f-0123456789ab');
      expect(u64(b, 40)).to.equal(0n); // interrupt latency
      expect(u64(b, 48)).to.equal(0n);
      expect(u16(b, 56)).to.equal(0x2000);
      expect(u16(b, 58)).to.equal(0);
      expect([...b.subarray(60, 180)]).to.deep.equal([...(offer as { userDefined: Uint8Array }).userDefined]);
      expect(u16(b, 180)).to.equal(3); // sub_channel_index
      expect(u16(b, 182)).to.equal(0);
      expect(u32(b, 184)).to.equal(0x1234);
      expect(b[188]).to.equal(7); // monitor_id
      expect(b[189]).to.equal(1); // monitor_allocated
      expect(u16(b, 190)).to.equal(1); // is_dedicated_interrupt
      expect(u32(b, 192)).to.equal(0x2abcd);
    });

    it('OPENCHANNEL has relid, open id, ring GPADL, target VP and downstream page offset at 8..24 and user data at 28', () => {
      const m = samples.find((s) => s.type === 'OpenChannel')!;
      const b = encodeChannelMessage(m);
      expect(b.length).to.equal(148);
      expect(u32(b, 0)).to.equal(5);
      expect([u32(b, 8), u32(b, 12), u32(b, 16), u32(b, 20), u32(b, 24)]).to.deep.equal([5, 0x11, 0xe1e10, 2, 4]);
      expect(b[28]).to.equal(255);
      expect(b[147]).to.equal(255 - 119);
    });

    it('OPENCHANNEL pads short user data with zeros to 120 bytes', () => {
      const b = encodeChannelMessage({ type: 'OpenChannel', childRelid: 1, openId: 1, ringGpadlHandle: 1, targetVp: 0, downstreamRingPageOffset: 2, userData: Uint8Array.of(9, 8) });
      expect(b.length).to.equal(148);
      expect([...b.subarray(28, 31)]).to.deep.equal([9, 8, 0]);
      const d = decodeChannelMessage(b) as { userData: Uint8Array };
      expect(d.userData.length).to.equal(120);
      expect(d.userData.subarray(2).every((x) => x === 0)).to.equal(true);
    });

    it('GPADL_HEADER has relid, gpadl, range_buflen, rangecount 1, byte_count, byte_offset and pfns from 28', () => {
      const b = encodeChannelMessage({ type: 'GpadlHeader', childRelid: 9, gpadl: 0x77, byteCount: 4096 * 3 - 100, byteOffset: 100, totalPfns: 3, pfns: [0x10, 0x11, 0x1_0000_0012] });
      expect(b.length).to.equal(28 + 24);
      expect(u32(b, 0)).to.equal(8);
      expect(u32(b, 8)).to.equal(9);
      expect(u32(b, 12)).to.equal(0x77);
      expect(u16(b, 16)).to.equal(8 + 8 * 3); // range_buflen
      expect(u16(b, 18)).to.equal(1); // rangecount
      expect(u32(b, 20)).to.equal(4096 * 3 - 100);
      expect(u32(b, 24)).to.equal(100);
      expect([u64(b, 28), u64(b, 36), u64(b, 44)]).to.deep.equal([0x10n, 0x11n, 0x1_0000_0012n]);
    });

    it('GPADL_BODY has msgnumber at 8, gpadl at 12 and pfns from 16', () => {
      const b = encodeChannelMessage({ type: 'GpadlBody', msgNumber: 2, gpadl: 0x77, pfns: [5, 6] });
      expect([u32(b, 0), u32(b, 8), u32(b, 12)]).to.deep.equal([9, 2, 0x77]);
      expect([u64(b, 16), u64(b, 24)]).to.deep.equal([5n, 6n]);
    });

    it('INITIATE_CONTACT is 40 bytes: version at 8, target vCPU at 12, msg_sint at 16, msg_vtl at 17, monitor pages at 24 and 32', () => {
      const b = encodeChannelMessage({ type: 'InitiateContact', versionRequested: VmbusVersion.V5_2, targetVcpu: 1, msgSint: 2, msgVtl: 0, monitorPage1: 0x5000n, monitorPage2: 0x6000n });
      expect(b.length).to.equal(40);
      expect(u32(b, 0)).to.equal(14);
      expect(u32(b, 8)).to.equal(0x00050002);
      expect(u32(b, 12)).to.equal(1);
      expect(b[16]).to.equal(2);
      expect(b[17]).to.equal(0);
      expect([...b.subarray(18, 24)]).to.deep.equal([0, 0, 0, 0, 0, 0]);
      expect(u64(b, 24)).to.equal(0x5000n);
      expect(u64(b, 32)).to.equal(0x6000n);
    });

    it('VERSION_RESPONSE is 16 bytes: version_supported at 8, connection_state at 9, msg_conn_id at 12', () => {
      const b = encodeChannelMessage({ type: 'VersionResponse', versionSupported: true, connectionState: 3, messageConnectionId: 0x10004 });
      expect(b.length).to.equal(16);
      expect(u32(b, 0)).to.equal(15);
      expect(b[8]).to.equal(1);
      expect(b[9]).to.equal(3);
      expect(u16(b, 10)).to.equal(0);
      expect(u32(b, 12)).to.equal(0x10004);
    });

    it('relid-only messages, GPADL_CREATED, GPADL_TEARDOWN, GPADL_TORNDOWN, OPENCHANNEL_RESULT and MODIFYCHANNEL put their fields from offset 8', () => {
      const words = (m: ChannelMessage): number[] => {
        const b = encodeChannelMessage(m);
        return Array.from({ length: b.length / 4 }, (_, i) => u32(b, 4 * i));
      };
      expect(words({ type: 'RescindChannelOffer', childRelid: 7 })).to.deep.equal([2, 0, 7]);
      expect(words({ type: 'CloseChannel', childRelid: 7 })).to.deep.equal([7, 0, 7]);
      expect(words({ type: 'RelidReleased', childRelid: 7 })).to.deep.equal([13, 0, 7]);
      expect(words({ type: 'OpenChannelResult', childRelid: 7, openId: 8, status: 9 })).to.deep.equal([6, 0, 7, 8, 9]);
      expect(words({ type: 'GpadlCreated', childRelid: 7, gpadl: 8, status: 9 })).to.deep.equal([10, 0, 7, 8, 9]);
      expect(words({ type: 'GpadlTeardown', childRelid: 7, gpadl: 8 })).to.deep.equal([11, 0, 7, 8]);
      expect(words({ type: 'GpadlTorndown', gpadl: 8 })).to.deep.equal([12, 0, 8]);
      expect(words({ type: 'ModifyChannel', childRelid: 7, targetVp: 3 })).to.deep.equal([22, 0, 7, 3]);
      expect(words({ type: 'UnloadResponse' })).to.deep.equal([17, 0]);
    });
  });

  describe('GUIDs', () => {
    it('are stored mixed-endian: the heartbeat GUID 57164f39-9115-4e78-ab55-382f3bd5422d is 39 4f 16 57 15 91 78 4e ab 55 38 2f 3b d5 42 2d', () => {
      expect([...guidToBytes(IcGuid.heartbeat)]).to.deep.equal([0x39, 0x4f, 0x16, 0x57, 0x15, 0x91, 0x78, 0x4e, 0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d]);
      expect(guidFromBytes(guidToBytes(IcGuid.heartbeat))).to.equal(IcGuid.heartbeat);
    });

    it('read back as lowercase text, accepting upper case and braces on input', () => {
      expect(guidFromBytes(guidToBytes('{57164F39-9115-4E78-AB55-382F3BD5422D}'))).to.equal(IcGuid.heartbeat);
    });

    it('round-trip between 16 bytes and text at any offset (property)', () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.nat({ max: 8 }), (g, pad) => {
          const buf = new Uint8Array(pad + 16);
          buf.set(g, pad);
          const text = guidFromBytes(buf, pad);
          expect(text).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
          expect([...guidToBytes(text)]).to.deep.equal([...g]);
        }),
      );
    });

    it('malformed GUID text and too-short buffers are RangeErrors', () => {
      for (const bad of ['', 'not-a-guid', '57164f39-9115-4e78-ab55-382f3bd5422', '57164f39-9115-4e78-ab55-382f3bd5422dd', '57164f3991154e78ab55382f3bd5422d', '{57164f39-9115-4e78-ab55-382f3bd5422d', '57164f39-9115-4e78-ab55-382f3bd5422g']) {
        expect(() => guidToBytes(bad), bad).to.throw(RangeError);
      }
      expect(() => guidFromBytes(new Uint8Array(15))).to.throw(RangeError);
      expect(() => guidFromBytes(new Uint8Array(16), 1)).to.throw(RangeError);
    });
  });

  describe('GPADL messages', () => {
    const pages = (n: number): number[] => Array.from({ length: n }, (_, i) => 0x4000 + 3 * i);
    /** Encodes and decodes every message, checks the split, and returns the pfns in order. */
    function roundTrip(n: number): ChannelMessage[] {
      const msgs = gpadlMessages(7, 0xe1e10, pages(n)).map((m) => decodeChannelMessage(encodeChannelMessage(m)));
      const [head, ...bodies] = msgs;
      expect(head).to.include({ type: 'GpadlHeader', childRelid: 7, gpadl: 0xe1e10, byteCount: n * 4096, byteOffset: 0, totalPfns: n });
      bodies.forEach((b, i) => expect(b).to.include({ type: 'GpadlBody', msgNumber: i + 1, gpadl: 0xe1e10 }));
      const all = msgs.flatMap((m) => (m as { pfns: number[] }).pfns);
      expect(all).to.deep.equal(pages(n));
      return msgs;
    }

    it('1 page is a lone GPADL_HEADER', () => {
      const msgs = roundTrip(1);
      expect(msgs).to.have.length(1);
      expect(encodeChannelMessage(msgs[0]!).length).to.equal(36);
    });

    it('26 pages fit in the GPADL_HEADER alone (236 bytes)', () => {
      const msgs = roundTrip(26);
      expect(msgs).to.have.length(1);
      expect(encodeChannelMessage(msgs[0]!).length).to.equal(236);
    });

    it('27 pages are a header of 26 and one GPADL_BODY numbered 1 with the 27th', () => {
      const msgs = roundTrip(27);
      expect(msgs.map((m) => (m as { pfns: number[] }).pfns.length)).to.deep.equal([26, 1]);
      expect(u16(encodeChannelMessage(msgs[0]!), 16)).to.equal(8 + 8 * 27);
    });

    it('100 pages are a header of 26 and bodies of 28, 28 and 18 numbered 1 to 3, each at most 240 bytes', () => {
      const msgs = roundTrip(100);
      expect(msgs.map((m) => (m as { pfns: number[] }).pfns.length)).to.deep.equal([26, 28, 28, 18]);
      expect(encodeChannelMessage(msgs[1]!).length).to.equal(240);
    });

    it('any page count up to the range_buflen limit splits and reassembles (property)', () => {
      fc.assert(fc.property(fc.integer({ min: 1, max: 400 }), (n) => void roundTrip(n)), { numRuns: 100 });
      roundTrip(GPADL_MAX_PFNS);
    });

    it('rejects no pages, more pages than range_buflen can describe, and page numbers of 2^52 or more', () => {
      expect(() => gpadlMessages(1, 1, [])).to.throw(RangeError);
      expect(() => gpadlMessages(1, 1, pages(GPADL_MAX_PFNS + 1))).to.throw(RangeError);
      expect(() => gpadlMessages(1, 1, [2 ** 52])).to.throw(RangeError, /2\^52/);
      expect(() => gpadlMessages(1, 1, [1.5])).to.throw(RangeError);
    });
  });

  describe('encoding rejects what does not fit', () => {
    it('fields out of their integer range are RangeErrors naming the field and value', () => {
      const open = samples.find((s) => s.type === 'OpenChannel')!;
      expect(() => encodeChannelMessage({ ...open, openId: 2 ** 32 } as ChannelMessage)).to.throw(RangeError, /openId 4294967296/);
      expect(() => encodeChannelMessage({ ...open, targetVp: -1 } as ChannelMessage)).to.throw(RangeError, /targetVp -1/);
      expect(() => encodeChannelMessage({ ...open, childRelid: 1.5 } as ChannelMessage)).to.throw(RangeError, /childRelid 1.5/);
      expect(() => encodeChannelMessage({ ...offer, monitorId: 256 } as ChannelMessage)).to.throw(RangeError, /monitorId 256/);
      expect(() => encodeChannelMessage({ ...offer, flags: 0x10000 } as ChannelMessage)).to.throw(RangeError, /flags 65536/);
      expect(() => encodeChannelMessage({ type: 'InitiateContact', versionRequested: 1, targetVcpu: 0, msgSint: 2, msgVtl: 0, monitorPage1: 2n ** 64n, monitorPage2: 0n })).to.throw(RangeError, /monitorPage1/);
    });

    it('bad GUID text and user data over 120 bytes are RangeErrors', () => {
      expect(() => encodeChannelMessage({ ...offer, interfaceType: 'nope' } as ChannelMessage)).to.throw(RangeError, /interfaceType "nope"/);
      expect(() => encodeChannelMessage({ ...offer, userDefined: new Uint8Array(121) } as ChannelMessage)).to.throw(RangeError, /121 bytes/);
    });

    it('messages over 240 bytes, empty bodies and inconsistent GPADL headers are RangeErrors', () => {
      expect(() => encodeChannelMessage({ type: 'GpadlBody', msgNumber: 1, gpadl: 1, pfns: new Array(29).fill(1) })).to.throw(RangeError, /240/);
      expect(() => encodeChannelMessage({ type: 'GpadlBody', msgNumber: 1, gpadl: 1, pfns: [] })).to.throw(RangeError);
      const head = { type: 'GpadlHeader' as const, childRelid: 1, gpadl: 1, byteCount: 8192, byteOffset: 0, totalPfns: 2, pfns: [1, 2] };
      expect(() => encodeChannelMessage({ ...head, pfns: [1, 2, 3] })).to.throw(RangeError);
      expect(() => encodeChannelMessage({ ...head, totalPfns: 3 })).to.throw(RangeError, /totalPfns 3/);
      expect(() => encodeChannelMessage({ ...head, byteOffset: 4096 })).to.throw(RangeError);
      expect(() => encodeChannelMessage({ ...head, pfns: [1, 2 ** 52] })).to.throw(RangeError, /pfns\[1\]/);
      expect(() => encodeChannelMessage({ type: 'Bogus' } as unknown as ChannelMessage)).to.throw(RangeError, /Bogus/);
    });
  });

  describe('decoding untrusted bytes', () => {
    it('ignores trailing bytes after a fixed-size message', () => {
      for (const m of samples.filter((s) => s.type !== 'GpadlHeader' && s.type !== 'GpadlBody')) {
        const b = encodeChannelMessage(m);
        const longer = new Uint8Array(Math.min(240, b.length + 16)).fill(0xee);
        longer.set(b);
        expect(decodeChannelMessage(longer), m.type).to.deep.equal(m);
      }
    });

    it('rejects messages shorter than their layout, unknown msgtypes and payloads over 240 bytes', () => {
      expectDecodeError(new Uint8Array(7), /8-byte header/);
      for (const m of samples.filter((s) => expectedSize[s.type](s) > 8)) {
        expectDecodeError(encodeChannelMessage(m).subarray(0, expectedSize[m.type](m) - 1), /shorter|pfns|multiple of 8/);
      }
      const unknown = new Uint8Array(16);
      le(unknown).setUint32(0, 18, true);
      expectDecodeError(unknown, /msgtype 18 is unknown/);
      le(unknown).setUint32(0, 0, true);
      expectDecodeError(unknown, /msgtype 0/);
      const huge = new Uint8Array(241);
      le(huge).setUint32(0, 3, true);
      expectDecodeError(huge, /241 bytes/);
    });

    it('rejects a GPADL_HEADER with rangecount other than 1', () => {
      const b = encodeChannelMessage(gpadlMessages(1, 2, [5])[0]!);
      for (const rc of [0, 2, 0xffff]) {
        const bad = b.slice();
        le(bad).setUint16(18, rc, true);
        expectDecodeError(bad, new RegExp(`rangecount ${rc}`));
      }
    });

    it('rejects a GPADL_HEADER whose range_buflen disagrees with byte_offset + byte_count', () => {
      const b = encodeChannelMessage(gpadlMessages(1, 2, [5, 6])[0]!);
      for (const buflen of [0, 8, 16, 25, 32]) {
        const bad = b.slice();
        le(bad).setUint16(16, buflen, true);
        expectDecodeError(bad, new RegExp(`range_buflen ${buflen}`));
      }
      const grown = b.slice();
      le(grown).setUint32(20, 8193, true); // byte_count now spans 3 pages
      expectDecodeError(grown, /range_buflen 24/);
    });

    it('rejects a GPADL_HEADER with an empty range or a byte_offset past the first page', () => {
      const b = encodeChannelMessage(gpadlMessages(1, 2, [5])[0]!);
      const empty = b.slice();
      le(empty).setUint32(20, 0, true);
      expectDecodeError(empty, /byte_count 0/);
      const far = b.slice();
      le(far).setUint32(24, 4096, true);
      expectDecodeError(far, /byte_offset 4096/);
    });

    it('rejects a GPADL_HEADER carrying more or fewer pfns than its range puts in the header', () => {
      const two = encodeChannelMessage(gpadlMessages(1, 2, [5, 6])[0]!);
      expectDecodeError(two.subarray(0, two.length - 8), /carries 1 pfns/);
      const extra = new Uint8Array(two.length + 8);
      extra.set(two);
      expectDecodeError(extra, /carries 3 pfns/);
      expectDecodeError(two.subarray(0, two.length - 3), /multiple of 8/);
      const big = encodeChannelMessage(gpadlMessages(1, 2, new Array(27).fill(9))[0]!);
      expectDecodeError(big.subarray(0, big.length - 8), /carries 25 pfns; a range of 27 pages carries 26/);
    });

    it('rejects page numbers of 2^52 and above in GPADL_HEADER and GPADL_BODY', () => {
      const head = encodeChannelMessage(gpadlMessages(1, 2, [5])[0]!);
      le(head).setBigUint64(28, 1n << 52n, true);
      expectDecodeError(head, /pfn\[0\] 0x10000000000000 is not below 2\^52/);
      const body = encodeChannelMessage({ type: 'GpadlBody', msgNumber: 1, gpadl: 2, pfns: [1, 2] });
      le(body).setBigUint64(24, 0xffff_ffff_ffff_ffffn, true);
      expectDecodeError(body, /pfn\[1\]/);
      le(body).setBigUint64(24, (1n << 52n) - 1n, true);
      expect((decodeChannelMessage(body) as { pfns: number[] }).pfns).to.deep.equal([1, 2 ** 52 - 1]);
    });

    it('rejects a GPADL_BODY without pfns or whose pfn bytes are not a multiple of 8', () => {
      const body = encodeChannelMessage({ type: 'GpadlBody', msgNumber: 1, gpadl: 2, pfns: [1, 2] });
      expectDecodeError(body.subarray(0, 16), /no pfns/);
      expectDecodeError(body.subarray(0, 20), /multiple of 8/);
      expectDecodeError(body.subarray(0, 15), /shorter/);
    });

    it('rejects a VERSION_RESPONSE whose version_supported is neither 0 nor 1', () => {
      const b = encodeChannelMessage({ type: 'VersionResponse', versionSupported: false, connectionState: 0, messageConnectionId: 1 });
      b[8] = 2;
      expectDecodeError(b, /version_supported 2/);
    });

    it('reads only bit 0 of monitor_allocated and is_dedicated_interrupt', () => {
      const b = encodeChannelMessage({ ...offer, monitorAllocated: false, dedicatedInterrupt: false } as ChannelMessage);
      b[189] = 0xfe;
      le(b).setUint16(190, 0xfffe, true);
      expect(decodeChannelMessage(b)).to.include({ monitorAllocated: false, dedicatedInterrupt: false });
      b[189] = 0x03;
      le(b).setUint16(190, 0x8001, true);
      expect(decodeChannelMessage(b)).to.include({ monitorAllocated: true, dedicatedInterrupt: true });
    });

    it('random bytes decode to a message or throw ChannelMessageError, never anything else (property)', () => {
      fc.assert(fc.property(randomMessageBytesA, (b) => void decodeOrReject(b)), { numRuns: 5000 });
    });

    it('mutated valid encodings decode to a message or throw ChannelMessageError (property)', () => {
      fc.assert(
        fc.property(messageA, fc.array(mutationA, { minLength: 1, maxLength: 4 }), (m, ms) => void decodeOrReject(mutate(encodeChannelMessage(m), ms))),
        { numRuns: 5000 },
      );
    });

    it('whatever decodes re-encodes to bytes that decode to the same message (property)', () => {
      fc.assert(
        fc.property(fc.oneof(randomMessageBytesA, fc.tuple(messageA, fc.array(mutationA, { maxLength: 3 })).map(([m, ms]) => mutate(encodeChannelMessage(m), ms))), (b) => {
          const m = decodeOrReject(b);
          if (m) expect(decodeChannelMessage(encodeChannelMessage(m))).to.deep.equal(m);
        }),
        { numRuns: 3000 },
      );
    });

    it('non-Uint8Array input is a ChannelMessageError too', () => {
      expectDecodeError(null as unknown as Uint8Array);
      expectDecodeError([1, 0, 0, 0, 0, 0, 0, 0] as unknown as Uint8Array);
    });
  });

  describe('versions and constants', () => {
    it('names known versions ("6.0", "WIN10 (4.0)") and prints unknown ones in hex', () => {
      expect(vmbusVersionName(VmbusVersion.V6_0)).to.equal('6.0');
      expect(vmbusVersionName(VmbusVersion.V5_3)).to.equal('5.3');
      expect(vmbusVersionName(VmbusVersion.WIN10)).to.equal('WIN10 (4.0)');
      expect(vmbusVersionName(VmbusVersion.WIN8)).to.equal('WIN8 (2.4)');
      expect(vmbusVersionName(VmbusVersion.WS2008)).to.equal('WS2008 (0.13)');
      expect(vmbusVersionName(0x00070000)).to.equal('0x00070000');
    });

    it('lists every version once, newest first', () => {
      const all = Object.values(VmbusVersion);
      expect(VMBUS_VERSIONS_NEWEST_FIRST).to.have.length(all.length);
      expect([...VMBUS_VERSIONS_NEWEST_FIRST]).to.deep.equal([...all].sort((a, b) => b - a));
      expect(Object.isFrozen(VMBUS_VERSIONS_NEWEST_FIRST)).to.equal(true);
    });

    it('INITIATE_CONTACT goes to connection id 4 from version 5.0 on and to 1 before', () => {
      expect(initiateContactConnectionId(VmbusVersion.V5_0)).to.equal(VMBUS_MESSAGE_CONNECTION_ID_4);
      expect(initiateContactConnectionId(VmbusVersion.V6_0)).to.equal(4);
      expect(initiateContactConnectionId(VmbusVersion.WIN10)).to.equal(VMBUS_MESSAGE_CONNECTION_ID);
      expect(VMBUS_MESSAGE_CONNECTION_ID).to.equal(1);
    });

    it('GPADL pfn limits fill a 240-byte SynIC payload and at most 2047 channels exist', () => {
      expect(28 + 8 * GPADL_HEADER_MAX_PFNS).to.be.at.most(240);
      expect(28 + 8 * (GPADL_HEADER_MAX_PFNS + 1)).to.be.above(240);
      expect(16 + 8 * GPADL_BODY_MAX_PFNS).to.equal(240);
      expect(MAX_CHANNELS).to.equal(2047);
    });
  });
});
