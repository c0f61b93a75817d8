/**
 * The one msgpack codec's depth bound (wire.ts): how deep a frame may nest is decided by a
 * non-recursive scan, the same in every process and at any stack depth, not by where msgpackr's
 * recursion runs out of stack. Record definitions and extensions that read the next value (which
 * nest without brackets) are counted; the scan never throws.
 */
import { expect } from 'chai';
import { decode, encode, msgpackRefusal, msgpackTooDeep, MSGPACK_MAX_DEPTH, seededRandom } from '../src/index.js';

const lists = (depth: number): Buffer => Buffer.concat([Buffer.alloc(depth, 0x91), Buffer.of(0xc0)]);
const maps = (depth: number): Buffer => Buffer.concat([...Array.from({ length: depth }, () => Buffer.of(0x81, 0xa1, 0x6b)), Buffer.of(0x01)]);

describe('the msgpack codec\'s depth bound', () => {
  it('decodes up to the bound and refuses one level more, for lists and maps, with a RangeError', () => {
    expect(() => decode(lists(MSGPACK_MAX_DEPTH))).to.not.throw();
    expect(() => decode(maps(MSGPACK_MAX_DEPTH))).to.not.throw();
    expect(() => decode(lists(MSGPACK_MAX_DEPTH + 1))).to.throw(RangeError, /deeper than 64/);
    expect(() => decode(maps(MSGPACK_MAX_DEPTH + 1))).to.throw(RangeError);
    // Far beyond: refused the same way, never by running out of stack.
    expect(() => decode(lists(1_000_000))).to.throw(RangeError, /deeper than 64/);
  });

  it('counts siblings as siblings, skips bodies, and passes what the project sends', () => {
    const wide = encode({ a: [1, 2, 3], b: { c: 'x'.repeat(70000), d: Buffer.alloc(70000) }, e: [[[]], {}], f: 12345678901234567890n, g: -1.5 });
    expect(msgpackTooDeep(wide)).to.equal(false);
    expect(decode<{ a: number[] }>(wide).a).to.deep.equal([1, 2, 3]);
    expect(msgpackTooDeep(encode(Array.from({ length: 1000 }, () => [[1]])))).to.equal(false);
  });

  it('refuses record definitions, and counts a chain of Set extensions as nesting', () => {
    // A record definition (fixext 1, type 0x72) followed by a chain of references to it.
    const records = Buffer.concat([Buffer.of(0xd4, 0x72, 0x40, 0x91, 0xa1, 0x61), Buffer.alloc(10000, 0x40), Buffer.of(0x01)]);
    expect(msgpackTooDeep(records)).to.equal(true);
    expect(() => decode(records)).to.throw(RangeError);
    // Set (0x73, fixext 1 with a filler byte) of Set of ... : each reads the next value.
    const sets = (n: number): Buffer => Buffer.concat([...Array.from({ length: n }, () => Buffer.of(0xd4, 0x73, 0x00)), Buffer.of(0x90)]);
    expect(msgpackTooDeep(sets(10))).to.equal(false);
    expect(msgpackTooDeep(sets(MSGPACK_MAX_DEPTH + 1))).to.equal(true);
  });

  it('refuses msgpackr\'s bundled strings, which hid what followed them from the scan (a probe nested a value 20,000 deep behind one)', () => {
    // fixext 4, type 0x62, the bundle's size (big-endian, counted from the extension's data), then
    // the value it reads, then the two bundled strings: msgpackr decoded this to the deep value.
    const deep = lists(20000);
    const frame = Buffer.concat([Buffer.of(0xd6, 0x62), Buffer.from(new Uint32Array([0]).buffer), deep, Buffer.of(0xa0, 0xa0)]);
    frame.writeUInt32BE(4 + deep.length, 2);
    expect(msgpackRefusal(frame)).to.match(/bundled strings/);
    expect(() => decode(frame)).to.throw(RangeError, /bundled strings/);
    // Shallow behind it: refused the same way (hvlab's encoder never writes one).
    const small = Buffer.concat([Buffer.of(0xd6, 0x62, 0, 0, 0, 5, 0x01, 0xa0, 0xa0)]);
    expect(() => decode(small)).to.throw(RangeError, /bundled strings/);
  });

  it('refuses bytes after the top-level value before msgpackr sees them, naming how many', () => {
    const one = encode({ a: [1, 2, 3] });
    expect(msgpackRefusal(one)).to.equal(null);
    expect(msgpackRefusal(Buffer.concat([one, Buffer.of(0xc0, 0xc0)]))).to.equal('2 bytes after the value');
    expect(() => decode(Buffer.concat([one, lists(100)]))).to.throw(RangeError, /101 bytes after the value/);
    // A frame cut short is msgpackr's to report.
    expect(msgpackRefusal(one.subarray(0, one.length - 1))).to.equal(null);
    expect(() => decode(one.subarray(0, one.length - 1))).to.throw(/end of MessagePack/i);
  });

  it('never throws on random or cut-short frames (seeded, 20000 cases)', () => {
    const next = seededRandom(0xdee9);
    for (let i = 0; i < 20000; i++) {
      const b = Buffer.alloc(Math.floor(next() * 80));
      for (let k = 0; k < b.length; k++) b[k] = next() < 0.3 ? 0x91 + Math.floor(next() * 3) : Math.floor(next() * 256);
      expect(() => msgpackTooDeep(b)).to.not.throw();
      expect(() => msgpackTooDeep(b.subarray(0, Math.floor(b.length / 2)))).to.not.throw();
    }
  });
});
