/**
 * The page-compression pool (vmwp/compress.ts) and the destination's batch applier (applyPageBatch):
 * pages deflated on the pool inflate back byte for byte; a page that does not shrink goes raw; a
 * compressed page that does not inflate to exactly 4096 bytes fails the whole batch and changes no
 * memory; post-copy's filter writes only the pages still missing.
 */
import { expect } from 'chai';
import { deflateRawSync } from 'node:zlib';
import { abortAnswer, encodePageBatch, PageKind, type PageEntry } from '@hvlab/protocol';
import { PagePool } from '../src/vmwp/compress.js';
import { applyPageBatch, checkDirtyAnswer, destinationMsOf, postcopyRequests, streamPortOf } from '../src/vmwp/migrate.js';

const page = (seed: number, random = false): Uint8Array => {
  const p = new Uint8Array(4096);
  let x = seed * 2654435761;
  for (let i = 0; i < 4096; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    p[i] = random ? x >>> 24 : (seed + (i >> 8)) & 0xff;
  }
  return p;
};

describe('page compression pool', function () {
  this.timeout(30000);
  const pool = new PagePool();
  after(async () => await pool.close());

  it('deflates compressible pages and inflates them back byte for byte; random pages stay raw', async () => {
    const pages = [...Array.from({ length: 40 }, (_, i) => page(i)), page(99, true)];
    const z = await pool.deflate(pages);
    expect(z).to.have.length(41);
    expect(z[40], 'a random page does not shrink').to.equal(null);
    for (let i = 0; i < 40; i++) expect(z[i]!.length).to.be.below(4096 - 64);
    const back = await pool.inflate(z.slice(0, 40) as Uint8Array[]);
    for (let i = 0; i < 40; i++) expect(Buffer.compare(Buffer.from(back[i]!), Buffer.from(pages[i]!))).to.equal(0);
  });

  it('names a compressed page that does not inflate to a whole page', async () => {
    const good = deflateRawSync(page(1));
    const short = deflateRawSync(new Uint8Array(100));
    let err: Error | null = null;
    await pool.inflate([good, short]).catch((e: Error) => (err = e));
    expect(err!.message).to.match(/compressed page 1 of the batch does not inflate to 4096 bytes/);
    err = null;
    await pool.inflate([new Uint8Array([1, 2, 3])]).catch((e: Error) => (err = e));
    expect(err).to.not.equal(null);
  });

  it('applies a batch (raw, zero, compressed on the pool, duplicate) and changes nothing when one page is bad', async () => {
    const mem = new SharedArrayBuffer(64 * 4096 + 4096);
    const u8 = new Uint8Array(mem);
    u8.fill(7, 3 * 4096, 4 * 4096);
    const entries: PageEntry[] = [
      { pfn: 2, kind: PageKind.Raw, data: page(2) },
      { pfn: 3, kind: PageKind.Zero, data: new Uint8Array(0) },
      { pfn: 4, kind: PageKind.Deflate, data: deflateRawSync(page(4)) },
      { pfn: 5, kind: PageKind.Dup, data: new Uint8Array(0), dupOf: 0 }, // entry 0's bytes (page 2)
    ];
    const written = await applyPageBatch(mem, mem.byteLength, encodePageBatch(entries), null, null, (p) => pool.inflate(p));
    expect(written).to.deep.equal([2, 3, 4, 5]);
    expect(Buffer.compare(Buffer.from(u8.subarray(2 * 4096, 3 * 4096)), Buffer.from(page(2)))).to.equal(0);
    expect(u8.subarray(3 * 4096, 4 * 4096).every((b) => b === 0)).to.equal(true);
    expect(Buffer.compare(Buffer.from(u8.subarray(4 * 4096, 5 * 4096)), Buffer.from(page(4)))).to.equal(0);
    expect(Buffer.compare(Buffer.from(u8.subarray(5 * 4096, 6 * 4096)), Buffer.from(page(2)))).to.equal(0);
    const before = Buffer.from(u8);
    const bad = encodePageBatch([{ pfn: 9, kind: PageKind.Raw, data: page(9) }, { pfn: 10, kind: PageKind.Deflate, data: deflateRawSync(new Uint8Array(10)) }]);
    let err: Error | null = null;
    await applyPageBatch(mem, mem.byteLength, bad, null, null, (p) => pool.inflate(p)).catch((e: Error) => (err = e));
    expect(err).to.not.equal(null);
    expect(Buffer.compare(Buffer.from(u8), before), 'no memory changed').to.equal(0);
    // Post-copy: only pages still missing are written.
    const only = await applyPageBatch(mem, mem.byteLength, encodePageBatch([{ pfn: 20, kind: PageKind.Raw, data: page(20) }, { pfn: 21, kind: PageKind.Raw, data: page(21) }]), (pfn) => pfn === 21);
    expect(only).to.deep.equal([21]);
    expect(u8[20 * 4096]).to.equal(0);
  });
});

describe('post-copy requests from the control region', () => {
  const R = { requests: 0, ring: 16, ringLength: 8 };
  const region = (): Int32Array => new Int32Array(16 + 8);

  it('reads what was posted since the last read, in order, and wraps around the ring', () => {
    const c = region();
    for (let k = 0; k < 5; k++) c[16 + k] = 100 + k;
    c[0] = 5;
    expect(postcopyRequests(c, 0, R)).to.deep.equal({ pfns: [100, 101, 102, 103, 104], next: 5 });
    for (let k = 5; k < 11; k++) c[16 + (k % 8)] = 100 + k;
    c[0] = 11;
    expect(postcopyRequests(c, 5, R)).to.deep.equal({ pfns: [105, 106, 107, 108, 109, 110], next: 11 });
    expect(postcopyRequests(c, 11, R)).to.deep.equal({ pfns: [], next: 11 });
  });

  it('never loops more than a ring, whatever an untrusted partition writes to the count', () => {
    const c = region();
    c[0] = 0x7fffffff;
    const far = postcopyRequests(c, 0, R);
    expect(far.pfns).to.have.length(8);
    expect(far.next).to.equal(0x7fffffff);
    c[0] = -5; // went backwards
    expect(postcopyRequests(c, 100, R)).to.deep.equal({ pfns: [], next: -5 });
    c[0] = 3;
    expect(postcopyRequests(c, -5, R).pfns).to.have.length(8);
    // A seeded fuzz of counts and ring contents: bounded, never throws.
    let x = 12345;
    for (let i = 0; i < 2000; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      c[0] = x | 0;
      for (let k = 16; k < 24; k++) c[k] = (x * k) | 0;
      const r = postcopyRequests(c, (x >>> 7) | 0, R);
      expect(r.pfns.length).to.be.at.most(8);
    }
  });
});

describe('the partition\'s dirty-harvest answer', () => {
  it('is taken only as a bitmap of one bit per page of the memory; anything else fails with a sentence', () => {
    const mem = 64 * 4096;
    const ok = new Int32Array(2);
    expect(checkDirtyAnswer({ pages: 0, bitmap: ok }, mem)).to.equal(ok);
    for (const bad of [null, 7, 'x', {}, { bitmap: new Int32Array(3) }, { bitmap: new Uint32Array(2) }, { bitmap: [0, 0] }, { bitmap: new Int32Array(1) }, Object.create(null)]) {
      expect(() => checkDirtyAnswer(bad, mem)).to.throw(/is not a bitmap of 2 words/);
    }
  });
});

describe('the destination\'s setup answer (an untrusted peer\'s)', () => {
  it('names a stream port only as a whole number from 1 to 65535; anything else means the stream goes to its root', () => {
    expect(streamPortOf({ ready: true, port: 40123 })).to.equal(40123);
    expect(streamPortOf({ ready: true, port: 65535 })).to.equal(65535);
    for (const bad of [null, 7, 'x', {}, { ready: true }, { port: 0 }, { port: 65536 }, { port: 1.5 }, { port: '80' }, { port: Number.NaN }, { port: null }, Object.create(null), [80]]) {
      expect(streamPortOf(bad), JSON.stringify(bad) ?? String(bad)).to.equal(null);
    }
  });

  it('says its own time in the state\'s answer only as a number from 0 to the source\'s time around it (1 ms over is rounding)', () => {
    expect(destinationMsOf({ running: true, ms: 4.2 }, 6.1)).to.equal(4.2);
    expect(destinationMsOf({ running: true, ms: 0 }, 6.1)).to.equal(0);
    expect(destinationMsOf({ running: true, ms: 6.8 }, 6.1), 'rounding: the source\'s time').to.equal(6.1);
    const hostile = { get ms(): number { throw new Error('no'); } };
    for (const bad of [null, undefined, 7, 'x', {}, { running: true }, { ms: -0.1 }, { ms: 7.2 }, { ms: Number.NaN }, { ms: Infinity }, { ms: '4' }, { ms: null }, Object.create(null), [4]]) {
      expect(destinationMsOf(bad, 6.1), JSON.stringify(bad) ?? String(bad)).to.equal(null);
    }
    expect(destinationMsOf(hostile, 6.1), 'a getter that throws').to.equal(null);
  });

  it('reads an abort\'s answer: once the commit was sent, only the destination\'s word that it has the VM or has none of it decides', () => {
    expect(abortAnswer({ aborted: false, vm: 'present' }, true), 'it runs the VM as its own').to.deep.equal({ committed: true });
    expect(abortAnswer({ aborted: false, vm: 'present' }, false), 'no commit went: not believed').to.deep.equal({ aborted: false });
    for (const sent of [false, true]) {
      expect(abortAnswer({ committed: true }, sent)).to.deep.equal({ committed: true });
      expect(abortAnswer({ aborted: true }, sent)).to.deep.equal({ aborted: true });
      expect(abortAnswer({ aborted: false, vm: 'absent' }, sent), 'it has nothing of the VM').to.deep.equal({ aborted: false });
    }
    const hostile = { get committed(): boolean { throw new Error('no'); } };
    for (const undecided of [{ aborted: false }, {}, null, undefined, true, 'committed', [true], { committed: 'true' }, { vm: 'Present' }, { aborted: 1 }, hostile]) {
      const shown = undecided === hostile ? 'a getter that throws' : JSON.stringify(undecided) ?? String(undecided);
      expect(abortAnswer(undecided, true), `after the commit: ${shown}`).to.equal(null);
      expect(abortAnswer(undecided, false), `before it: ${shown}`).to.deep.equal({ aborted: false });
    }
  });
});
