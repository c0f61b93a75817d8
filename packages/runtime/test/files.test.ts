/** writeFileAtomic: the file has the new text (or bytes) and mode, no temp file stays, and a failed write leaves no temp file. */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from '../src/index.js';

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
