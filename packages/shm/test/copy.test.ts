/**
 * Unit tests of `copyBytes`: the addon's memmove and the portable Uint8Array.set fallback take the
 * same arguments, copy the same bytes and reject the same bad arguments with the same error types,
 * never copying partly. A property test compares both against a byte-by-byte model on random
 * buffers, views, offsets and lengths (valid or not). Nothing here maps /dev/shm.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { copyBytes, copyBytesIsNative, copyBytesPortable, shmAvailable, type ByteSource, type CopyBytes } from '../src/index.js';

const pattern = (n: number, seed = 1): Uint8Array => {
  const u = new Uint8Array(n);
  for (let i = 0; i < n; i++) u[i] = (i * 31 + seed * 7) & 0xff;
  return u;
};
/** The bytes a ByteSource covers, as a copy. */
const bytesOf = (b: ByteSource): number[] =>
  Array.from(ArrayBuffer.isView(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : new Uint8Array(b));

describe('copyBytes', () => {
  it('is the native memmove whenever the addon is loaded', () => {
    if (shmAvailable()) expect(copyBytesIsNative()).to.equal(true);
    if (copyBytesIsNative()) expect(copyBytes).to.not.equal(copyBytesPortable);
  });

  for (const [name, copy] of [['native', copyBytes], ['portable', copyBytesPortable]] as Array<[string, CopyBytes]>) {
    describe(name, function () {
      before(function () {
        if (name === 'native' && !copyBytesIsNative()) this.skip();
      });

      it('copies from an ArrayBuffer-backed Uint8Array into a SharedArrayBuffer at an offset, touching nothing else', () => {
        const sab = new SharedArrayBuffer(64 * 1024);
        const src = pattern(16 * 1024);
        copy(sab, 4096 + 8, src, 0, src.length);
        const u = new Uint8Array(sab);
        expect(Array.from(u.subarray(4104, 4104 + src.length))).to.deep.equal(Array.from(src));
        expect(u.subarray(0, 4104).every((b) => b === 0)).to.equal(true);
        expect(u.subarray(4104 + src.length).every((b) => b === 0)).to.equal(true);
      });

      it('counts offsets from the start of a view, whatever its type (Uint8Array, Int32Array, DataView, Buffer)', () => {
        const sab = new SharedArrayBuffer(256);
        const dst = new Int32Array(sab, 64, 16); // bytes 64..127
        const backing = new ArrayBuffer(128);
        new Uint8Array(backing).set(pattern(128));
        const src = new DataView(backing, 32, 64); // bytes 32..95
        copy(dst, 4, src, 8, 20);
        const u = new Uint8Array(sab);
        expect(Array.from(u.subarray(68, 88))).to.deep.equal(Array.from(pattern(128).subarray(40, 60)));
        expect(u.subarray(0, 68).every((b) => b === 0) && u.subarray(88).every((b) => b === 0)).to.equal(true);
        const buf = Buffer.alloc(32);
        copy(buf, 0, u.subarray(68), 0, 20);
        expect(Array.from(buf.subarray(0, 20))).to.deep.equal(Array.from(pattern(128).subarray(40, 60)));
      });

      it('copies out of a SharedArrayBuffer into a small (on-heap) typed array and a plain ArrayBuffer', () => {
        const sab = new SharedArrayBuffer(64);
        new Uint8Array(sab).set(pattern(64, 3));
        const small = new Uint8Array(8);
        copy(small, 0, sab, 56, 8);
        expect(Array.from(small)).to.deep.equal(Array.from(pattern(64, 3).subarray(56)));
        const ab = new ArrayBuffer(64);
        copy(ab, 0, sab, 0, 64);
        expect(Array.from(new Uint8Array(ab))).to.deep.equal(Array.from(pattern(64, 3)));
      });

      it('copies overlapping ranges of one buffer as memmove does, forwards and backwards', () => {
        for (const [from, to] of [[0, 5], [5, 0]] as const) {
          const u = new Uint8Array(new SharedArrayBuffer(4096));
          u.set(pattern(4096));
          const want = Array.from(pattern(4096));
          want.splice(to, 3000, ...want.slice(from, from + 3000));
          copy(u, to, u, from, 3000);
          expect(Array.from(u)).to.deep.equal(want);
        }
      });

      it('takes a zero length anywhere up to and including the end, and copies nothing', () => {
        const u = new Uint8Array(16);
        copy(u, 16, pattern(4), 4, 0);
        copy(u, 0, new ArrayBuffer(0), 0, 0);
        expect(u.every((b) => b === 0)).to.equal(true);
      });

      it('rejects a range past the end of either side with a RangeError, leaving the destination alone', () => {
        const dst = new Uint8Array(new SharedArrayBuffer(64));
        const src = pattern(64);
        expect(() => copy(dst, 1, src, 0, 64)).to.throw(RangeError, /do not fit in the destination's 64 bytes/);
        expect(() => copy(dst, 65, src, 0, 0)).to.throw(RangeError, /destination offset 65/);
        expect(() => copy(dst, 0, src, 1, 64)).to.throw(RangeError, /lie outside the source's 64 bytes/);
        expect(() => copy(dst, 0, src.subarray(8), 0, 57)).to.throw(RangeError, /source's 56 bytes/);
        expect(() => copy(dst, 0, src, 2 ** 53 - 1, 1)).to.throw(RangeError);
        expect(() => copy(dst, 2 ** 32, src, 0, 1)).to.throw(RangeError);
        expect(dst.every((b) => b === 0)).to.equal(true);
      });

      it('rejects offsets and lengths that are not non-negative whole numbers with a RangeError', () => {
        const dst = new Uint8Array(64);
        for (const bad of [-1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, -0.25]) {
          expect(() => copy(dst, bad, dst, 0, 1), `dstOffset ${bad}`).to.throw(RangeError, /not a non-negative whole number/);
          expect(() => copy(dst, 0, dst, bad, 1), `srcOffset ${bad}`).to.throw(RangeError, /not a non-negative whole number/);
          expect(() => copy(dst, 0, dst, 0, bad), `length ${bad}`).to.throw(RangeError, /not a non-negative whole number/);
        }
      });

      it('rejects anything but a buffer or a view, and non-number offsets, with a TypeError', () => {
        const u = new Uint8Array(8);
        const call = copy as (...a: unknown[]) => void;
        for (const bad of [null, undefined, 8, 'bytes', {}, [1, 2, 3], { buffer: new ArrayBuffer(8), byteOffset: 0, byteLength: 8 }]) {
          expect(() => call(bad, 0, u, 0, 1), `dst ${String(bad)}`).to.throw(TypeError, /not an ArrayBuffer, a SharedArrayBuffer or a view/);
          expect(() => call(u, 0, bad, 0, 1), `src ${String(bad)}`).to.throw(TypeError, /not an ArrayBuffer, a SharedArrayBuffer or a view/);
        }
        for (const bad of ['1', 1n, null, undefined, {}]) {
          expect(() => call(u, bad, u, 0, 1), `dstOffset ${String(bad)}`).to.throw(TypeError, /not a number/);
          expect(() => call(u, 0, u, 0, bad), `length ${String(bad)}`).to.throw(TypeError, /not a number/);
        }
        expect(() => call(u, 0, u, 0)).to.throw(TypeError);
      });

      it('refuses a detached buffer without crashing (it has no bytes left)', () => {
        const ab = new ArrayBuffer(64);
        structuredClone(ab, { transfer: [ab] });
        expect(ab.byteLength).to.equal(0);
        expect(() => copy(ab, 0, pattern(8), 0, 8)).to.throw(/ArrayBuffer|bytes/);
        expect(() => copy(new Uint8Array(8), 0, ab, 0, 8)).to.throw(/ArrayBuffer|bytes/);
      });

      it('agrees with a byte-by-byte model on random buffers, views, offsets and lengths', () => {
        const side = fc.record({
          kind: fc.constantFrom('sab', 'ab', 'u8', 'i32', 'dv', 'buffer'),
          size: fc.integer({ min: 0, max: 3000 }),
          viewStart: fc.integer({ min: 0, max: 64 }),
        });
        fc.assert(
          fc.property(side, side, fc.integer({ min: -2, max: 3100 }), fc.integer({ min: -2, max: 3100 }), fc.integer({ min: -2, max: 3100 }), fc.boolean(),
            (d, s, dstOffset, srcOffset, length, same) => {
              const make = (x: typeof d, seed: number): ByteSource => {
                const bytes = x.size + x.viewStart + 8;
                const shared = x.kind === 'sab' || x.kind === 'i32';
                const buf = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
                new Uint8Array(buf).set(pattern(bytes, seed));
                switch (x.kind) {
                  case 'sab': case 'ab': return buf;
                  case 'u8': return new Uint8Array(buf, x.viewStart, x.size);
                  case 'i32': return new Int32Array(buf, x.viewStart & ~3, x.size >>> 2);
                  case 'dv': return new DataView(buf, x.viewStart, x.size);
                  default: return Buffer.from(buf as ArrayBuffer, x.viewStart, x.size);
                }
              };
              const dst = make(d, 1);
              const src = same ? dst : make(s, 2);
              const before = bytesOf(dst);
              const dstLen = before.length;
              const srcBytes = bytesOf(src);
              const ok = dstOffset >= 0 && srcOffset >= 0 && length >= 0 && dstOffset + length <= dstLen && srcOffset + length <= srcBytes.length;
              if (!ok) {
                expect(() => copy(dst, dstOffset, src, srcOffset, length)).to.throw(RangeError);
                expect(bytesOf(dst)).to.deep.equal(before);
                return;
              }
              copy(dst, dstOffset, src, srcOffset, length);
              const want = before.slice();
              for (let i = 0; i < length; i++) want[dstOffset + i] = srcBytes[srcOffset + i]!;
              expect(bytesOf(dst)).to.deep.equal(want);
            }),
          { numRuns: 300 },
        );
      });
    });
  }
});
