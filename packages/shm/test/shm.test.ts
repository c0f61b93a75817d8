/**
 * Unit tests of @hvlab/shm: named regions under /dev/shm shared between processes (child
 * processes run `node --import tsx` with this package as cwd and import '@hvlab/shm'), Atomics on
 * them, unlinking, and the validation of names and sizes. Every region a test names is unlinked in
 * `afterEach`, and every child process still running is killed.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createRegion, openRegion, unlinkRegion, privateRegion, memoryMode, shmAvailable, shmUnavailableReason,
  ShmError, PAGE_SIZE, MAX_REGION_BYTES,
} from '../src/index.js';

const pkgDir = dirname(dirname(fileURLToPath(import.meta.url)));
const runId = `${process.pid}-${randomBytes(4).toString('hex')}`;
let seq = 0;
let names: string[] = [];
let children: ChildProcess[] = [];

/** A fresh region name, remembered for cleanup. */
function regionName(): string {
  const n = `hvlab-ut-shm-${runId}-${++seq}`;
  names.push(n);
  return n;
}
const file = (name: string): string => `/dev/shm/${name}`;

interface Run {
  proc: ChildProcess;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Runs an ES module snippet in a new node process (cwd: this package, so '@hvlab/shm' resolves). */
function runNode(code: string, env: Record<string, string> = {}): Run {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: pkgDir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    proc.on('error', reject);
    proc.on('close', (c) => resolve({ code: c, stdout, stderr }));
  });
  return { proc, done };
}

async function runOk(code: string, env: Record<string, string> = {}): Promise<string> {
  const r = await runNode(code, env).done;
  expect(r.code, `child failed: ${r.stderr}`).to.equal(0);
  return r.stdout.trim();
}

/** Resolves once `cond()` holds; rejects if the child exits first (no wall-clock limit: mocha's timeout applies). */
async function until(run: Run, cond: () => boolean, what: string): Promise<void> {
  let exited: { code: number | null; stderr: string } | null = null;
  void run.done.then((r) => {
    exited = r;
  });
  while (!cond()) {
    const e = exited as { code: number | null; stderr: string } | null;
    if (e) throw new Error(`child exited (${e.code}) before ${what}: ${e.stderr}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Child-side helper: sleep-poll until the Int32 word equals a value (failsafe exit after 50 s). */
const CHILD_WAIT = `
const nap = new Int32Array(new SharedArrayBuffer(4));
const giveUp = Date.now() + 50000;
function waitFor(arr, idx, value) {
  while (Atomics.load(arr, idx) !== value) {
    if (Date.now() > giveUp) { console.error('gave up waiting for word ' + idx); process.exit(3); }
    Atomics.wait(nap, 0, 0, 1);
  }
}
`;

describe('@hvlab/shm', () => {
  afterEach(function () {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    children = [];
    for (const n of names) {
      try {
        unlinkRegion(n);
      } catch {
        /* invalid name: nothing was created */
      }
    }
    names = [];
  });

  it('reports a consistent memory mode', () => {
    expect(memoryMode()).to.equal(shmAvailable() ? 'shared' : 'private');
    if (shmAvailable()) expect(shmUnavailableReason()).to.equal('');
    else expect(shmUnavailableReason()).to.not.equal('');
  });

  describe('named regions', function () {
    before(function () {
      if (!shmAvailable()) this.skip();
    });

    it('createRegion makes a zero-filled /dev/shm file of the requested size', () => {
      const name = regionName();
      const sab = createRegion(name, 4 * PAGE_SIZE);
      expect(sab).to.be.instanceOf(SharedArrayBuffer);
      expect(sab.byteLength).to.equal(4 * PAGE_SIZE);
      expect(statSync(file(name)).size).to.equal(4 * PAGE_SIZE);
      expect(new Uint8Array(sab).every((b) => b === 0)).to.equal(true);
    });

    it('two mappings of one name in the same process alias each other, and Atomics work on them', () => {
      const name = regionName();
      const a = new Int32Array(createRegion(name, PAGE_SIZE));
      const b = new Int32Array(openRegion(name));
      expect(b.length).to.equal(PAGE_SIZE / 4);
      expect(Atomics.add(a, 5, 7)).to.equal(0);
      expect(Atomics.add(b, 5, 3)).to.equal(7);
      expect(Atomics.load(a, 5)).to.equal(10);
      expect(Atomics.compareExchange(b, 6, 0, 99)).to.equal(0);
      expect(Atomics.compareExchange(a, 6, 0, 1)).to.equal(99);
      expect(Atomics.or(a, 7, 0b1010)).to.equal(0);
      expect(Atomics.and(b, 7, 0b0110)).to.equal(0b1010);
      expect(Atomics.load(a, 7)).to.equal(0b0010);
      expect(Atomics.notify(a, 0, 1)).to.equal(0);
      a[PAGE_SIZE / 4 - 1] = 0x7eadbeef;
      expect(b[PAGE_SIZE / 4 - 1]).to.equal(0x7eadbeef);
    });

    it('openRegion with a size maps the first SIZE bytes; larger than the file fails with ShmError', () => {
      const name = regionName();
      const a = new Uint8Array(createRegion(name, 2 * PAGE_SIZE));
      a[10] = 77;
      const b = openRegion(name, PAGE_SIZE);
      expect(b.byteLength).to.equal(PAGE_SIZE);
      expect(new Uint8Array(b)[10]).to.equal(77);
      expect(() => openRegion(name, 3 * PAGE_SIZE)).to.throw(ShmError, name);
    });

    it('a live child process sees the parent\'s writes and the parent sees the child\'s (Atomics both ways)', async () => {
      const name = regionName();
      const w = new Int32Array(createRegion(name, PAGE_SIZE));
      w[3] = 0x1234; // written before the child maps it
      Atomics.store(w, 0, 41);
      const run = runNode(
        `import { openRegion } from '@hvlab/shm';
${CHILD_WAIT}
const w = new Int32Array(openRegion(process.env.REGION));
const before = Atomics.add(w, 0, 1);         // parent watches word 0 go 41 -> 42
waitFor(w, 1, 1);                             // parent's write, seen while both run
Atomics.add(w, 2, 5);
console.log(JSON.stringify({ before, word3: Atomics.load(w, 3) }));`,
        { REGION: name },
      );
      await until(run, () => Atomics.load(w, 0) === 42, 'the child incremented word 0');
      Atomics.store(w, 1, 1);
      const r = await run.done;
      expect(r.code, r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout)).to.deep.equal({ before: 41, word3: 0x1234 });
      expect(Atomics.load(w, 2)).to.equal(5);
    });

    it('a region created by a child process can be opened by the parent and reopened by another child', async () => {
      const name = regionName();
      await runOk(
        `import { createRegion } from '@hvlab/shm';
const w = new Int32Array(createRegion(process.env.REGION, 2 * 4096));
Atomics.store(w, 0, 0x5151);
w[2047] = 9;`,
        { REGION: name },
      );
      expect(existsSync(file(name))).to.equal(true);
      const w = new Int32Array(openRegion(name));
      expect(w.length).to.equal(2048);
      expect(Atomics.load(w, 0)).to.equal(0x5151);
      expect(w[2047]).to.equal(9);
      Atomics.add(w, 0, 1);
      const out = await runOk(
        `import { openRegion } from '@hvlab/shm';
const w = new Int32Array(openRegion(process.env.REGION));
console.log(Atomics.load(w, 0));`,
        { REGION: name },
      );
      expect(Number(out)).to.equal(0x5152);
    });

    it('Atomics.add from two processes at once loses no increment', async () => {
      const name = regionName();
      const N = 200_000;
      const w = new Int32Array(createRegion(name, PAGE_SIZE));
      const run = runNode(
        `import { openRegion } from '@hvlab/shm';
${CHILD_WAIT}
const w = new Int32Array(openRegion(process.env.REGION));
Atomics.store(w, 1, 1);                       // ready
waitFor(w, 2, 1);                             // go
for (let i = 0; i < ${N}; i++) Atomics.add(w, 0, 1);`,
        { REGION: name },
      );
      await until(run, () => Atomics.load(w, 1) === 1, 'the child was ready');
      Atomics.store(w, 2, 1);
      for (let i = 0; i < N; i++) Atomics.add(w, 0, 1);
      const r = await run.done;
      expect(r.code, r.stderr).to.equal(0);
      expect(Atomics.load(w, 0)).to.equal(2 * N);
    });

    it('unlinkRegion removes the /dev/shm file; existing mappings stay usable', () => {
      const name = regionName();
      const a = new Uint8Array(createRegion(name, PAGE_SIZE));
      expect(existsSync(file(name))).to.equal(true);
      expect(unlinkRegion(name)).to.equal(true);
      expect(existsSync(file(name))).to.equal(false);
      a[0] = 1;
      expect(a[0]).to.equal(1);
      expect(unlinkRegion(name)).to.equal(false);
      expect(() => openRegion(name)).to.throw(ShmError, /does not exist/);
    });

    it('after unlink, creating the same name gives a new, zeroed region', () => {
      const name = regionName();
      const a = new Uint8Array(createRegion(name, PAGE_SIZE));
      a[0] = 0xee;
      unlinkRegion(name);
      const b = new Uint8Array(createRegion(name, PAGE_SIZE));
      expect(b[0]).to.equal(0);
      b[1] = 0x11;
      expect(a[1]).to.equal(0);
    });

    it('createRegion of an existing name fails with a ShmError naming it, and leaves the region intact', () => {
      const name = regionName();
      const a = new Uint8Array(createRegion(name, 2 * PAGE_SIZE));
      a[100] = 42;
      let err: unknown;
      try {
        createRegion(name, PAGE_SIZE);
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(ShmError);
      expect((err as Error).name).to.equal('ShmError');
      expect((err as Error).message).to.include(name).and.to.include('already exists');
      expect(statSync(file(name)).size).to.equal(2 * PAGE_SIZE);
      expect(new Uint8Array(openRegion(name))[100]).to.equal(42);
    });

    it('openRegion of a missing name fails with a ShmError saying it does not exist', () => {
      const name = regionName();
      expect(() => openRegion(name)).to.throw(ShmError, name).with.property('message').that.includes('does not exist');
    });

    it('with HVLAB_SHM=off a process falls back to private memory and createRegion explains why', async () => {
      const out = await runOk(
        `import { memoryMode, shmUnavailableReason, createRegion, ShmError } from '@hvlab/shm';
let err = null;
try { createRegion(process.env.REGION, 4096); } catch (e) { err = { shm: e instanceof ShmError, message: e.message }; }
console.log(JSON.stringify({ mode: memoryMode(), reason: shmUnavailableReason(), err }));`,
        { HVLAB_SHM: 'off', REGION: regionName() },
      );
      const r = JSON.parse(out) as { mode: string; reason: string; err: { shm: boolean; message: string } | null };
      expect(r.mode).to.equal('private');
      expect(r.reason).to.include('HVLAB_SHM=off');
      expect(r.err).to.not.equal(null);
      expect(r.err!.shm).to.equal(true);
      expect(r.err!.message).to.include('unavailable').and.to.include('HVLAB_SHM=off');
    });
  });

  describe('validation', () => {
    const badNames = ['a/b', '', '../x', '/abs', '.hidden', '-dash', 'sp ace', 'x'.repeat(202)];
    for (const bad of badNames) {
      it(`rejects the name ${JSON.stringify(bad.length > 20 ? `${bad.slice(0, 10)}...(${bad.length})` : bad)} with a ShmError naming it`, () => {
        for (const f of [() => createRegion(bad, PAGE_SIZE), () => openRegion(bad), () => unlinkRegion(bad)]) {
          expect(f).to.throw(ShmError, JSON.stringify(bad));
        }
      });
    }

    it('accepts a 201-character name of letters, digits, ".", "_" and "-"', function () {
      if (!shmAvailable()) this.skip();
      const name = regionName();
      const long = `${name}.A_z-9`.padEnd(201, 'x');
      names.push(long);
      expect(createRegion(long, PAGE_SIZE).byteLength).to.equal(PAGE_SIZE);
      expect(existsSync(file(long))).to.equal(true);
    });

    const badSizes = [0, 100, -4096, 1.5, 4096.5, 4097, NaN, Infinity, MAX_REGION_BYTES + PAGE_SIZE];
    for (const size of badSizes) {
      it(`rejects the size ${size} with a ShmError naming it, creating nothing`, () => {
        const name = regionName();
        expect(() => createRegion(name, size)).to.throw(ShmError, `size ${size} `);
        expect(existsSync(file(name))).to.equal(false);
        expect(() => privateRegion(size)).to.throw(ShmError, `size ${size} `);
        if (size !== 0) expect(() => openRegion(name, size)).to.throw(ShmError, `size ${size} `);
      });
    }

    it('says why a size is wrong: not a whole positive number, not a page multiple, or too large', () => {
      expect(() => createRegion(regionName(), 0)).to.throw(ShmError, /positive whole number/);
      expect(() => createRegion(regionName(), 1.5)).to.throw(ShmError, /positive whole number/);
      expect(() => createRegion(regionName(), 100)).to.throw(ShmError, /multiple of the 4096-byte page/);
      expect(() => createRegion(regionName(), MAX_REGION_BYTES + PAGE_SIZE)).to.throw(ShmError, /exceeds/);
    });

    it('rejects a name that is not a string with a ShmError', () => {
      expect(() => createRegion(42 as unknown as string, PAGE_SIZE)).to.throw(ShmError, '42');
    });
  });

  describe('privateRegion', () => {
    it('gives a zeroed SharedArrayBuffer of the size that Atomics work on, without a /dev/shm file', () => {
      const sab = privateRegion(2 * PAGE_SIZE);
      expect(sab).to.be.instanceOf(SharedArrayBuffer);
      expect(sab.byteLength).to.equal(2 * PAGE_SIZE);
      const w = new Int32Array(sab);
      expect(w.every((x) => x === 0)).to.equal(true);
      expect(Atomics.add(w, 0, 3)).to.equal(0);
      expect(Atomics.compareExchange(w, 0, 3, 8)).to.equal(3);
      expect(Atomics.load(w, 0)).to.equal(8);
    });

    it('gives independent buffers on each call', () => {
      const a = new Uint8Array(privateRegion(PAGE_SIZE));
      const b = new Uint8Array(privateRegion(PAGE_SIZE));
      a[0] = 1;
      expect(b[0]).to.equal(0);
    });
  });
});
