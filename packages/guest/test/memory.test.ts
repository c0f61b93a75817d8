/**
 * GuestMemory as the guest's only write path: every write method marks exactly the pages it wrote
 * in the dirty bitmap at the top of the region, reads mark nothing, a harvest returns the marked
 * pages and clears them, and another process reading the region by the protocol layout sees the
 * same bitmap. A property test throws random writes at it and compares with a model; a threaded
 * test runs pre-copy (harvest, copy the harvested pages) against a concurrent writer and checks
 * that the copy converges to the source.
 */
import { Worker } from 'node:worker_threads';
import { expect } from 'chai';
import fc from 'fast-check';
import { PAGE, dirtyBitmapGpa, dirtyBitmapPages, dirtyBitmapWords, harvestDirtyPages, markDirtyRange } from '@hvlab/protocol';
import { GuestMemory, GuestMemoryError } from '../src/memory.js';

const MiB = 1024 * 1024;

function fresh(bytes = 4 * MiB): GuestMemory {
  return new GuestMemory(new SharedArrayBuffer(bytes));
}

/** Pages of [gpa, gpa + len). */
function pagesOf(gpa: number, len: number): number[] {
  if (len === 0) return [];
  const out: number[] = [];
  for (let p = Math.floor(gpa / PAGE); p <= Math.floor((gpa + len - 1) / PAGE); p++) out.push(p);
  return out;
}

describe('GuestMemory and its dirty log', () => {
  it('puts the dirty bitmap in the last pages of the region, outside guest memory proper', () => {
    const buf = new SharedArrayBuffer(8 * MiB);
    const mem = new GuestMemory(buf);
    expect(dirtyBitmapPages(8 * MiB)).to.equal(1);
    expect(dirtyBitmapPages(1024 * MiB)).to.equal(8); // 262144 pages / 32768 bits per page
    expect(mem.size).to.equal(dirtyBitmapGpa(8 * MiB)).and.to.equal(8 * MiB - PAGE);
    expect(() => mem.setU8(mem.size, 1)).to.throw(GuestMemoryError, /outside the 8384512-byte memory/);
    expect(() => mem.write(mem.size - 2, new Uint8Array(4))).to.throw(GuestMemoryError);
    mem.setU8(mem.size - 1, 7);
    expect(mem.dirtyPages()).to.deep.equal([mem.size / PAGE - 1]);
  });

  it('refuses memory that is not a whole number of pages', () => {
    expect(() => new GuestMemory(new SharedArrayBuffer(PAGE * 3 + 8))).to.throw(GuestMemoryError, /not a whole number of 4096-byte pages/);
  });

  const writes: Array<[string, (m: GuestMemory, gpa: number) => void, number]> = [
    ['setU8', (m, g) => m.setU8(g, 1), 1],
    ['add8', (m, g) => m.add8(g, 1), 1],
    ['setU16', (m, g) => m.setU16(g, 0xffff), 2],
    ['setU32', (m, g) => m.setU32(g, 0xdeadbeef), 4],
    ['setI32', (m, g) => m.setI32(g, -2), 4],
    ['setU64', (m, g) => m.setU64(g, 0x1122334455667788n), 8],
    ['setF64', (m, g) => m.setF64(g, Math.PI), 8],
    ['write', (m, g) => m.write(g, new Uint8Array(3 * PAGE + 5).fill(9)), 3 * PAGE + 5],
    ['fill', (m, g) => m.fill(g, 2 * PAGE, 0xaa), 2 * PAGE],
    ['markDirty', (m, g) => m.markDirty(g, 70 * PAGE), 70 * PAGE],
  ];
  for (const [name, op, len] of writes) {
    it(`${name} marks exactly the pages it wrote, also across a page boundary`, () => {
      for (const gpa of [0x10000, 0x20000 - 1, 0x31000 - Math.min(len, 8) + 1, 0x7f123]) {
        const mem = fresh();
        op(mem, gpa);
        expect(mem.harvestDirty(), `${name} at 0x${gpa.toString(16)}`).to.deep.equal(pagesOf(gpa, len));
      }
    });
  }

  const atomics: Array<[string, (m: GuestMemory, gpa: number) => unknown, 4 | 8]> = [
    ['atomicStore32', (m, g) => m.atomicStore32(g, 5), 4],
    ['atomicAdd32', (m, g) => m.atomicAdd32(g, 5), 4],
    ['atomicSub32', (m, g) => m.atomicSub32(g, 5), 4],
    ['atomicOr32', (m, g) => m.atomicOr32(g, 5), 4],
    ['atomicAnd32', (m, g) => m.atomicAnd32(g, 5), 4],
    ['atomicExchange32', (m, g) => m.atomicExchange32(g, 5), 4],
    ['cas32 that succeeds', (m, g) => m.cas32(g, 0, 5), 4],
    ['atomicStore64', (m, g) => m.atomicStore64(g, 5n), 8],
    ['atomicAdd64', (m, g) => m.atomicAdd64(g, 5n), 8],
  ];
  for (const [name, op, width] of atomics) {
    it(`${name} marks the page of its word and refuses an unaligned word`, () => {
      const mem = fresh();
      op(mem, 0x5000 + PAGE - width);
      expect(mem.harvestDirty()).to.deep.equal([5]);
      expect(() => op(mem, 0x5002)).to.throw(GuestMemoryError, new RegExp(`${width}-byte aligned`));
      expect(mem.dirtyPages()).to.deep.equal([]);
    });
  }

  it('copyWithin marks the destination pages only, and moves overlapping bytes as memmove does', () => {
    const mem = fresh();
    mem.write(0x10000, Uint8Array.from([1, 2, 3, 4, 5, 6]));
    mem.harvestDirty();
    mem.copyWithin(0x10002, 0x10000, 4);
    expect([...mem.read(0x10000, 6)]).to.deep.equal([1, 2, 1, 2, 3, 4]);
    expect(mem.harvestDirty()).to.deep.equal([0x10]);
    mem.copyWithin(0x40000 - 3, 0x10000, 6);
    expect(mem.harvestDirty()).to.deep.equal([0x3f, 0x40]);
  });

  it('a failed cas32 and every read mark nothing', () => {
    const mem = fresh();
    mem.setU32(0x9000, 7);
    mem.harvestDirty();
    expect(mem.cas32(0x9000, 1, 2)).to.equal(7);
    mem.u8(0x9000); mem.u16(0x9000); mem.u32(0x9000); mem.i32(0x9000); mem.u64(0x9000); mem.f64(0x9000);
    mem.atomicLoad32(0x9000); mem.atomicLoad64(0x9000); mem.read(0x9000, 3 * PAGE);
    expect(mem.dirtyPages()).to.deep.equal([]);
  });

  it('values round-trip through the typed accessors, little-endian', () => {
    const mem = fresh();
    mem.setU16(0x100, 0x1234);
    expect(mem.u8(0x100)).to.equal(0x34);
    expect(mem.add8(0x101, 0xf0)).to.equal(0x02); // 0x12 + 0xf0 wraps
    expect(mem.u8(0x101)).to.equal(0x02);
    mem.setU32(0x200, 0xfffffffe);
    expect(mem.u32(0x200)).to.equal(0xfffffffe);
    expect(mem.i32(0x200)).to.equal(-2);
    mem.setU64(0x300, -1n);
    expect(mem.u64(0x300)).to.equal(0xffffffffffffffffn);
    expect(mem.atomicAdd64(0x300, 2n)).to.equal(-1n);
    expect(mem.atomicLoad64(0x300)).to.equal(1n);
    expect(mem.atomicAdd32(0x200, 3)).to.equal(-2);
    expect(mem.atomicLoad32(0x200)).to.equal(1);
  });

  it('a harvest returns each marked page once, ascending, and clears them; later writes go to the next harvest', () => {
    const mem = fresh();
    for (const g of [0x30000, 0x1000, 0x30004, 0x3fe000, 0x1fff]) mem.setU8(g, 1);
    expect(mem.harvestDirty()).to.deep.equal([1, 0x30, 0x3fe]);
    expect(mem.harvestDirty()).to.deep.equal([]);
    mem.setU8(0x2000, 1);
    expect(mem.harvestDirty()).to.deep.equal([2]);
  });

  it('a batch sets the marks of its writes when it ends — all of them, also when it throws', () => {
    const mem = fresh();
    const r = mem.batch(() => {
      mem.setU8(0x10000, 1);
      mem.write(0x20ffe, new Uint8Array(4));
      mem.batch(() => mem.atomicAdd32(0x30000, 1)); // nested: part of the outer batch
      mem.markDirty(0x80000, 40 * PAGE);
      expect(mem.dirtyPages(), 'nothing is marked before the batch ends').to.deep.equal([]);
      return 'done';
    });
    expect(r).to.equal('done');
    expect(mem.harvestDirty()).to.deep.equal([0x10, 0x20, 0x21, 0x30, ...pagesOf(0x80000, 40 * PAGE)]);
    expect(() => mem.batch(() => {
      mem.setU8(0x5000, 1);
      mem.setU8(mem.size, 1); // out of bounds
    })).to.throw(GuestMemoryError);
    expect(mem.harvestDirty()).to.deep.equal([5]);
    mem.setU8(0x6000, 1);
    expect(mem.dirtyPages(), 'after the batch, writes mark at once again').to.deep.equal([6]);
  });

  it('another thread or process sees the same bitmap: a handle shares it, and by the protocol layout a host writer marks it and the migration engine harvests it', () => {
    const buf = new SharedArrayBuffer(4 * MiB);
    const a = new GuestMemory(buf);
    const b = new GuestMemory(a.share());
    b.setU32(0x7000, 1);
    a.setU32(0x9000, 1);
    expect(a.dirtyPages()).to.deep.equal([7, 9]);
    // A host-side writer (a VSP's ring, a SynIC message) logs its writes by the layout alone.
    markDirtyRange(dirtyBitmapWords(buf), 0x1f000, 33 * PAGE + 1);
    // What the migration engine does with the region it maps: no GuestMemory, only the layout.
    expect(harvestDirtyPages(dirtyBitmapWords(buf))).to.deep.equal([7, 9, ...pagesOf(0x1f000, 33 * PAGE + 1)]);
    expect(b.harvestDirty()).to.deep.equal([]);
  });

  it('property: after any sequence of writes the log holds exactly the written pages, and every changed byte is in one', () => {
    const size = 1 * MiB;
    const op = fc.oneof(
      fc.record({ k: fc.constant('u8' as const), gpa: fc.integer({ min: 0, max: size - PAGE - 1 }) }),
      fc.record({ k: fc.constant('u32' as const), gpa: fc.integer({ min: 0, max: (size - PAGE) / 4 - 1 }).map((w) => w * 4) }),
      fc.record({ k: fc.constant('f64' as const), gpa: fc.integer({ min: 0, max: size - PAGE - 8 }) }),
      fc.record({ k: fc.constant('add64' as const), gpa: fc.integer({ min: 0, max: (size - PAGE) / 8 - 1 }).map((w) => w * 8) }),
      fc.record({ k: fc.constant('write' as const), gpa: fc.integer({ min: 0, max: size - PAGE - 1 }), len: fc.integer({ min: 0, max: 3 * PAGE }) }),
      fc.record({ k: fc.constant('fill' as const), gpa: fc.integer({ min: 0, max: size - PAGE - 1 }), len: fc.integer({ min: 0, max: 3 * PAGE }) }),
      fc.record({ k: fc.constant('copy' as const), gpa: fc.integer({ min: 0, max: size - PAGE - 1 }), src: fc.integer({ min: 0, max: size - PAGE - 1 }), len: fc.integer({ min: 0, max: 2 * PAGE }) }),
      fc.record({ k: fc.constant('harvest' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const mem = new GuestMemory(new SharedArrayBuffer(size));
        let model = new Set<number>();
        let before = mem.read(0, mem.size);
        for (const o of ops) {
          if (o.k === 'harvest') {
            expect(mem.harvestDirty()).to.deep.equal([...model].sort((x, y) => x - y));
            model = new Set();
            before = mem.read(0, mem.size);
            continue;
          }
          const len = o.k === 'u8' ? 1 : o.k === 'u32' ? 4 : o.k === 'f64' || o.k === 'add64' ? 8 : Math.min(o.len, mem.size - o.gpa, o.k === 'copy' ? mem.size - o.src : Infinity);
          if (o.k === 'u8') mem.setU8(o.gpa, 0x5a);
          else if (o.k === 'u32') mem.atomicStore32(o.gpa, 0x01020304);
          else if (o.k === 'f64') mem.setF64(o.gpa, 1.5);
          else if (o.k === 'add64') mem.atomicAdd64(o.gpa, 3n);
          else if (o.k === 'write') mem.write(o.gpa, new Uint8Array(len).fill(0x11));
          else if (o.k === 'fill') mem.fill(o.gpa, len, 0x22);
          else mem.copyWithin(o.gpa, o.src, len);
          for (const p of pagesOf(o.gpa, len)) model.add(p);
        }
        const marked = new Set(mem.dirtyPages());
        expect([...marked].sort((x, y) => x - y)).to.deep.equal([...model].sort((x, y) => x - y));
        const after = mem.read(0, mem.size);
        for (let i = 0; i < after.length; i++) {
          if (after[i] !== before[i] && !marked.has(Math.floor(i / PAGE))) expect.fail(`GPA 0x${i.toString(16)} changed but page ${Math.floor(i / PAGE)} is not marked`);
        }
      }),
      { numRuns: 150, seed: 0x5eed },
    );
  });

  it('pre-copy converges: copying harvested pages while another thread writes yields an identical copy after a final harvest', async function () {
    this.timeout(30000);
    const size = 2 * MiB;
    const src = new GuestMemory(new SharedArrayBuffer(size));
    const done = new Int32Array(new SharedArrayBuffer(12)); // [done, go, stop]
    const worker = new Worker(new URL('./dirty-writer.mjs', import.meta.url), { workerData: { memory: src.share(), done: done.buffer, rounds: 40 } });
    try {
      const online = new Promise<void>((resolve, reject) => {
        worker.once('message', () => resolve());
        worker.once('error', reject);
      });
      await online;
      // Round 0: clear the log, copy everything; then the dirty pages, again and again, while the writer runs.
      src.harvestDirty();
      const dst = src.read(0, src.size);
      let rounds = 0;
      Atomics.store(done, 1, 1);
      Atomics.notify(done, 1);
      while (Atomics.load(done, 0) === 0) {
        for (const p of src.harvestDirty()) dst.set(src.read(p * PAGE, PAGE), p * PAGE);
        rounds++;
        if (rounds >= 5) Atomics.store(done, 2, 1);
        await new Promise((r) => setImmediate(r));
      }
      // Blackout: the writer has stopped; one last harvest.
      for (const p of src.harvestDirty()) dst.set(src.read(p * PAGE, PAGE), p * PAGE);
      const final = src.read(0, src.size);
      const firstDiff = final.findIndex((b, i) => b !== dst[i]);
      expect(firstDiff, `first differing GPA 0x${firstDiff.toString(16)}`).to.equal(-1);
    } finally {
      await worker.terminate();
    }
  });
});
