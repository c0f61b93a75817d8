/** writeFileAtomic: the file has the new text (or bytes) and mode, no temp file stays, and a failed write leaves no temp file. */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as fsAll from 'node:fs';
import fsDefault from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileShapeError, makeDirs, readRegularFile, unmakeDirs, writeFileAtomic } from '../src/index.js';

describe('writeFileAtomic', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'hvlab-atomic-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  for (const durable of [true, false]) {
    it(`replaces a file whole, with its mode, and leaves no temp file${durable ? '' : ' (durable: false, no fsync)'}`, () => {
      const f = join(dir, 'r.json');
      writeFileSync(f, 'old');
      writeFileAtomic(f, 'new\n', { durable });
      expect(readFileSync(f, 'utf8')).to.equal('new\n');
      expect(statSync(f).mode & 0o777).to.equal(0o600);
      expect(readdirSync(dir)).to.deep.equal(['r.json']);
    });
  }

  it('writes bytes as they are, with the mode asked for (a code cache: 0o644)', () => {
    const f = join(dir, 'c.cache');
    const bytes = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 131) & 0xff);
    writeFileAtomic(f, bytes, { mode: 0o644, durable: false });
    expect(Buffer.compare(readFileSync(f), bytes)).to.equal(0);
    expect(statSync(f).mode & 0o777).to.equal(0o644);
    expect(readdirSync(dir)).to.deep.equal(['c.cache']);
  });

  it('a failed write throws and leaves what was there, without a temp file', () => {
    // Renaming a file over a non-empty directory fails.
    const d = join(dir, 'sub');
    mkdirSync(d);
    writeFileSync(join(d, 'keep'), 'k');
    expect(() => writeFileAtomic(d, 'x')).to.throw();
    expect(readdirSync(dir)).to.deep.equal(['sub']);
    expect(readFileSync(join(d, 'keep'), 'utf8')).to.equal('k');
  });
});

describe('readRegularFile', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-ut-regular-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const shape = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      expect(e).to.be.instanceOf(FileShapeError);
      return (e as Error).message;
    }
    throw new Error('read');
  };

  it('reads a file, and one through a symlink, whole', () => {
    const f = join(dir, 'a.json');
    const text = 'x'.repeat(200_000);
    writeFileSync(f, text);
    expect(readRegularFile(f, 1 << 20).toString()).to.equal(text);
    symlinkSync(f, join(dir, 'link.json'));
    expect(readRegularFile(join(dir, 'link.json'), 1 << 20).toString()).to.equal(text);
    writeFileSync(join(dir, 'empty'), '');
    expect(readRegularFile(join(dir, 'empty'), 10).length).to.equal(0);
  });

  it('refuses, without blocking or reading on, a FIFO, a directory, a device and a file over the limit', () => {
    const fifo = join(dir, 'fifo.json');
    execFileSync('mkfifo', [fifo]);
    // Opened without blocking: no writer is needed for the refusal (a blocking open would hang here).
    expect(shape(() => readRegularFile(fifo, 1024))).to.match(/is a FIFO, not a file$/);
    expect(shape(() => readRegularFile(dir, 1024))).to.match(/is a directory, not a file$/);
    symlinkSync('/dev/zero', join(dir, 'zero.json'));
    expect(shape(() => readRegularFile(join(dir, 'zero.json'), 1024))).to.match(/is a character device, not a file$/);
    writeFileSync(join(dir, 'big'), 'y'.repeat(2000));
    expect(shape(() => readRegularFile(join(dir, 'big'), 1999))).to.match(/2000 bytes, more than the 1999/);
    expect(readRegularFile(join(dir, 'big'), 2000).length).to.equal(2000);
    let code = '';
    try {
      readRegularFile(join(dir, 'missing'), 10);
    } catch (e) {
      code = (e as NodeJS.ErrnoException).code ?? '';
    }
    expect(code, 'a missing file is the file system\'s ENOENT').to.equal('ENOENT');
  });

  it('notices a file that grows past the limit while it is read (the size fstat gave is not trusted)', () => {
    const f = join(dir, 'grows');
    writeFileSync(f, 'z'.repeat(10));
    // An io whose fstat says the file is smaller than it is: as if it grew after the fstat.
    const io = { ...fsAll };
    const realFstat = io.fstatSync;
    io.fstatSync = ((fd: number) => Object.assign(realFstat(fd), { size: 2 })) as typeof io.fstatSync;
    expect(readRegularFile(f, 100, io).toString()).to.equal('z'.repeat(10));
    expect(shape(() => readRegularFile(f, 5, io))).to.match(/more than the 5 bytes/);
  });
});

describe('makeDirs', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'hvlab-mkdirs-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('makes each missing level once, with the mode asked for, and says which it made (unmakeDirs takes them back)', () => {
    const made = makeDirs(join(dir, 'a', 'b', 'c'), 0o700);
    expect(made).to.deep.equal([join(dir, 'a'), join(dir, 'a', 'b'), join(dir, 'a', 'b', 'c')]);
    for (const d of made) expect(statSync(d).mode & 0o777).to.equal(0o700);
    expect(makeDirs(join(dir, 'a', 'b'))).to.deep.equal([]);
    unmakeDirs(made);
    expect(readdirSync(dir)).to.deep.equal([]);
  });

  it('takes a level another process made between its look and its mkdir as made (EEXIST is no failure), and does not count it as its own', () => {
    const target = join(dir, 'a', 'b');
    // Another starter made 'a' already: makeDirs sees it missing only if it looked before; here it
    // looks after, so make the race by hand: a directory that appears under a path it is about to make.
    // The named export files.ts calls is Node's builtin's: patched on the CommonJS object and synced.
    const real = fsDefault.mkdirSync;
    let raced = false;
    fsDefault.mkdirSync = ((p: fsAll.PathLike, o?: fsAll.MakeDirectoryOptions | fsAll.Mode | null) => {
      if (!raced && String(p) === join(dir, 'a')) {
        raced = true;
        real(p, o as fsAll.Mode);
      }
      return real(p, o as fsAll.Mode);
    }) as typeof fsAll.mkdirSync;
    syncBuiltinESMExports();
    try {
      expect(makeDirs(target)).to.deep.equal([target]);
    } finally {
      fsDefault.mkdirSync = real;
      syncBuiltinESMExports();
    }
    expect(raced).to.equal(true);
  });

  it('fails at once under /proc, where Node 20\'s recursive mkdirSync loops for ever (hvlab up --home /proc/x hung at a full CPU)', () => {
    expect(() => makeDirs('/proc/hvlab-test-nope/x')).to.throw(/ENOENT/);
    writeFileSync(join(dir, 'f'), '');
    expect(() => makeDirs(join(dir, 'f', 'x'))).to.throw(/ENOTDIR/);
  });
});
