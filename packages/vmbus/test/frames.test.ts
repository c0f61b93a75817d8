/**
 * The remote transport's frame decoder is the one reader of frame bytes: valid frames decode to
 * what was encoded; any other bytes — random, truncated, mutated — give a typed error (naming
 * the channel when the header was readable) and never an exception.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  PacketType, decodeRemoteFrame, encodeCreditFrame, encodeHelloFrame, encodePacketFrame, packetBytes,
} from '../src/index.js';

describe('remote VMBus frames', () => {
  it('a packet frame decodes to its fields, payload padded to 8 bytes, costing what a ring packet costs', () => {
    const f = encodePacketFrame(5, 0x1234, PacketType.Completion, 1, 0xfedcba9876543210n, Uint8Array.from([1, 2, 3]));
    const d = decodeRemoteFrame(f);
    expect(d).to.deep.include({ kind: 'packet', relid: 5, generation: 0x1234, type: PacketType.Completion, flags: 1, transId: 0xfedcba9876543210n, cost: packetBytes(3) });
    if (d.kind !== 'packet') throw new Error('not a packet');
    expect([...d.payload]).to.deep.equal([1, 2, 3, 0, 0, 0, 0, 0]);
    expect(Buffer.isBuffer(d.payload)).to.equal(false);
  });

  it('credit and hello frames decode to their fields', () => {
    expect(decodeRemoteFrame(encodeCreditFrame(9, 3, 4096))).to.deep.equal({ kind: 'credit', relid: 9, generation: 3, bytes: 4096 });
    expect(decodeRemoteFrame(encodeHelloFrame(17, 'tok'))).to.deep.equal({ kind: 'hello', partitionId: 17, token: 'tok' });
  });

  const refusals: Array<[string, Uint8Array, RegExp]> = [
    ['a frame shorter than its header', new Uint8Array(7), /shorter than its 8-byte header/],
    ['an unknown kind', Uint8Array.from([1, 0, 0, 0, 9, 0, 0, 0]), /relid 1: unknown frame kind 9/],
    ['a credit of 0 bytes', encodeCreditFrame(2, 0, 0), /not a positive multiple of 8/],
    ['a credit of 12 bytes', encodeCreditFrame(2, 0, 12), /not a positive multiple of 8/],
    ['a hello with a 300-byte token', encodeHelloFrame(1, 'x'.repeat(300)), /at most 256 bytes/],
  ];
  for (const [what, bytes, re] of refusals) {
    it(`refuses ${what}`, () => {
      const d = decodeRemoteFrame(bytes);
      expect(d.kind).to.equal('error');
      if (d.kind === 'error') expect(d.error).to.match(re);
    });
  }

  it('a packet frame that lies about its length, offset, flags or type is refused for its channel', () => {
    const good = encodePacketFrame(4, 2, PacketType.DataInband, 0, 1n, new Uint8Array(16));
    const set16 = (off: number, v: number): Uint8Array => {
      const b = good.slice();
      new DataView(b.buffer).setUint16(8 + off, v, true);
      return b;
    };
    for (const [b, re] of [[set16(4, 200), /len8 200/], [set16(2, 1), /offset8 1/], [set16(6, 2), /flags 0x2/], [set16(0, 3), /packet type 3/]] as const) {
      const d = decodeRemoteFrame(b);
      expect(d).to.include({ kind: 'error', relid: 4, generation: 2 });
      if (d.kind === 'error') expect(d.error).to.match(re);
    }
  });

  it('property: random and mutated bytes never throw; what decodes is well-formed', () => {
    const valid = fc.oneof(
      fc.tuple(fc.nat(0xffffffff), fc.nat(0xffff), fc.uint8Array({ maxLength: 300 })).map(([r, g, p]) => encodePacketFrame(r, g, PacketType.DataInband, 0, 7n, p)),
      fc.tuple(fc.nat(0xffffffff), fc.nat(0xffff), fc.integer({ min: 1, max: 1 << 20 })).map(([r, g, n]) => encodeCreditFrame(r, g, n * 8)),
      fc.tuple(fc.nat(0xffffffff), fc.string({ maxLength: 80 })).map(([p, t]) => encodeHelloFrame(p, t)),
    );
    const mutated = fc.tuple(valid, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 6 }), fc.nat()).map(([f, flips, cut]) => {
      const b = f.slice(0, f.length === 0 ? 0 : f.length - (cut % Math.min(f.length, 17)));
      for (const [i, v] of flips) if (b.length > 0) b[i % b.length] = v;
      return b;
    });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), valid, mutated), (bytes) => {
        const d = decodeRemoteFrame(bytes);
        if (d.kind === 'packet') {
          expect(d.payload.length % 8).to.equal(0);
          expect(d.cost).to.equal(bytes.length - 8 + 8);
          expect([PacketType.DataInband, PacketType.DataUsingXferPages, PacketType.DataUsingGpaDirect, PacketType.Completion]).to.include(d.type);
        } else if (d.kind === 'credit') {
          expect(d.bytes > 0 && d.bytes % 8 === 0).to.equal(true);
        } else if (d.kind === 'error') {
          expect(d.error).to.be.a('string');
        }
      }),
      { numRuns: 5000, seed: 42 },
    );
  });
});
