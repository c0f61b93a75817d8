/**
 * Kernel dirty-page tracking (userfaultfd async write-protect + PAGEMAP_SCAN) on /dev/shm
 * mappings: writes that bypass every hvlab API (a plain typed array, Atomics, a native copy, a
 * worker thread's store) are reported; a harvest clears what it reports; writes through another
 * process's mapping of the same file are not (that is why the root logs its own writes).
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { copyBytes, createRegion, discardPages, futexWake, KernelDirtyTracker, kernelDirtyTrackingUnavailableReason, openRegion, PostcopyControl, PostcopyFaults, POSTCOPY_CONTROL_BYTES, shmAvailable, unlinkRegion, zeroPages } from '../src/index.js';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const PAGE = 4096;
const pagesOf = (bm: Int32Array): number[] => {
  const out: number[] = [];
  for (let w = 0; w < bm.length; w++) for (let b = 0; b < 32; b++) if ((bm[w]! >>> b) & 1) out.push(w * 32 + b);
  return out;
};

describe('KernelDirtyTracker', function () {
  const name = `hvlab-test-wp-${process.pid}`;
  let sab: SharedArrayBuffer;
  let t: KernelDirtyTracker;
  const bm = new Int32Array(256 / 32);
  const harvest = (): number[] => {
    bm.fill(0);
    const n = t.harvest(bm);
    const pages = pagesOf(bm);
    expect(n).to.equal(pages.length);
    return pages;
  };

  before(function () {
    if (!shmAvailable()) this.skip();
    // On this machine's kernel it works (REFERENCE); a failure to probe is a failure here.
    expect(kernelDirtyTrackingUnavailableReason()).to.equal(null);
  });
  beforeEach(() => {
    sab = createRegion(name, 256 * PAGE);
    t = KernelDirtyTracker.open(sab);
  });
  afterEach(() => {
    t?.close();
    unlinkRegion(name);
  });

  it('reports nothing before a write, then exactly the pages written by a plain typed array, Atomics and a native copy', () => {
    expect(harvest()).to.deep.equal([]);
    new Uint8Array(sab)[3 * PAGE + 17] = 1;
    Atomics.add(new Int32Array(sab), (40 * PAGE) / 4, 1);
    copyBytes(sab, 100 * PAGE + PAGE - 2, new Uint8Array([1, 2, 3, 4]), 0, 4); // spans pages 100 and 101
    new DataView(sab).setFloat64(255 * PAGE + PAGE - 8, 1.5, true);
    expect(harvest()).to.deep.equal([3, 40, 100, 101, 255]);
  });

  it('clears what it reports (fetch-and-clear) and catches the next write to the same page', () => {
    const u8 = new Uint8Array(sab);
    u8[7 * PAGE] = 1;
    expect(harvest()).to.deep.equal([7]);
    expect(harvest()).to.deep.equal([]);
    u8[7 * PAGE + 1] = 2;
    expect(harvest()).to.deep.equal([7]);
  });

  it('does not report reads', () => {
    const u8 = new Uint8Array(sab);
    let sum = 0;
    for (let p = 0; p < 256; p++) sum += u8[p * PAGE]!;
    expect(sum).to.equal(0);
    expect(harvest()).to.deep.equal([]);
  });

  it('reports writes made by another thread of the process through the same mapping', async () => {
    const w = new Worker('const { workerData, parentPort } = require("node:worker_threads"); new Uint8Array(workerData)[9 * 4096] = 9; new Int32Array(workerData)[(200 * 4096) / 4] = 1; parentPort.postMessage("done");', { eval: true, workerData: sab });
    await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    await w.terminate();
    expect(harvest()).to.deep.equal([9, 200]);
  });

  it('does not see writes through another process\'s mapping (those must be logged by that process)', () => {
    const addon = join(import.meta.dirname, '..', 'build', 'Release', 'hvlab_shm.node');
    const r = spawnSync(process.execPath, ['-e', `const a = require(${JSON.stringify(addon)}); new Uint8Array(a.map(${JSON.stringify(name)}, 0, false))[5 * 4096] = 5;`], { encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
    expect(new Uint8Array(sab)[5 * PAGE]).to.equal(5);
    expect(harvest()).to.deep.equal([]);
  });

  it('refuses a bitmap too small for the mapping and a closed tracker', () => {
    expect(() => t.harvest(new Int32Array(1))).to.throw(/cannot hold 256 pages/);
    t.close();
    expect(() => t.harvest(bm)).to.throw(/closed/);
  });
});

describe('zeroPages', () => {
  it('tells zero pages from others, native and portable alike, and refuses ranges outside the buffer', () => {
    const sab = new SharedArrayBuffer(8 * 4096);
    const u8 = new Uint8Array(sab);
    u8[1 * 4096] = 1;
    u8[3 * 4096 + 4095] = 2;
    u8[6 * 4096 + 2048] = 3;
    const out = new Uint8Array(8);
    expect(zeroPages(sab, 0, 8, out)).to.equal(5);
    expect([...out]).to.deep.equal([1, 0, 1, 0, 1, 1, 0, 1]);
    const part = new Uint8Array(3);
    expect(zeroPages(sab, 2, 3, part)).to.equal(2);
    expect([...part]).to.deep.equal([1, 0, 1]);
    expect(() => zeroPages(sab, 6, 3, out)).to.throw(RangeError);
  });

  it('given the file, counts its holes as zero without reading (allocating) them', function () {
    if (!shmAvailable()) this.skip();
    const name = `hvlab-test-zp-${process.pid}`;
    const sab = createRegion(name, 64 * 4096);
    try {
      const u8 = new Uint8Array(sab);
      u8[10 * 4096 + 5] = 1;
      u8[11 * 4096] = 0; // written, but zero: data, not a hole
      const fd = openSync(`/dev/shm/${name}`, 'r');
      try {
        const out = new Uint8Array(64);
        expect(zeroPages(sab, 0, 64, out, fd)).to.equal(63);
        expect(out[10]).to.equal(0);
        expect(out.filter((x) => x === 1).length).to.equal(63);
        // The holes were not read through the mapping: still holes (not resident in the file).
        expect(statSync(`/dev/shm/${name}`).blocks * 512).to.be.at.most(2 * 4096);
      } finally {
        closeSync(fd);
      }
    } finally {
      unlinkRegion(name);
    }
    expect(() => zeroPages(sab, 0, 8, new Uint8Array(4))).to.throw(RangeError);
  });
});

describe('PostcopyFaults', function () {
  before(function () {
    if (!shmAvailable()) this.skip();
  });

  it('stops a thread that touches a missing page until another mapping fills it, then the thread reads the new bytes; present pages never wait', async () => {
    const name = `hvlab-test-pc-${process.pid}`;
    const mem = createRegion(name, 64 * 4096);
    try {
      const other = openRegion(name); // the VMWP's mapping, in the real thing another process
      const ctl = new SharedArrayBuffer(POSTCOPY_CONTROL_BYTES);
      const c = new Int32Array(ctl);
      new Uint8Array(other)[1 * 4096] = 11; // present before
      discardPages(other, 5, 1);
      const pc = PostcopyFaults.open(mem, ctl);
      try {
        // A worker reads page 1 (present) then page 7 (missing); it stops at page 7.
        const w = new Worker('const { workerData, parentPort } = require("node:worker_threads"); const u = new Uint8Array(workerData); parentPort.postMessage(["a", u[4096]]); parentPort.postMessage(["b", u[7 * 4096 + 3]]);', { eval: true, workerData: mem });
        const got: Array<[string, number]> = [];
        w.on('message', (m: [string, number]) => got.push(m));
        // The request for page 7 arrives in the ring (once the worker has started: a liveness bound).
        const t0 = Date.now();
        while (Atomics.load(c, PostcopyControl.requests) < 1 && Date.now() - t0 < 15000) await sleep(5);
        expect(Atomics.load(c, PostcopyControl.requests)).to.equal(1);
        expect(c[PostcopyControl.ring]).to.equal(7);
        await sleep(50);
        expect(got).to.deep.equal([['a', 11]]);
        // Serve it: write through the other mapping, bump `served`.
        new Uint8Array(other)[7 * 4096 + 3] = 42;
        Atomics.add(c, PostcopyControl.served, 1);
        futexWake(ctl, PostcopyControl.served);
        // Its own bound, not what the worker's start left of the first one.
        const t1 = Date.now();
        while (got.length < 2 && Date.now() - t1 < 15000) await sleep(5);
        expect(got).to.deep.equal([['a', 11], ['b', 42]]);
        expect(Atomics.load(c, PostcopyControl.faults)).to.be.at.least(1);
        await w.terminate();
      } finally {
        pc.close();
      }
    } finally {
      unlinkRegion(name);
    }
  });
});
