/**
 * A host's member secret file (member.ts memberSecret), an edge where bytes from disk enter the
 * root: made on the first start (mode 0600, 64 hex digits) and kept after; whatever else is found
 * there (seeded random bytes, a wrong-case or short secret, an oversize file, a FIFO) is replaced by
 * a new secret without hanging or throwing.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MEMBER_SECRET_FILE, MEMBER_SECRET_RE, seededRandom } from '@hvlab/protocol';
import { memberSecret } from '../src/member.js';

describe('a host\'s member secret file', () => {
  let home = '';
  beforeEach(() => void (home = mkdtempSync(join(tmpdir(), 'hvlab-secret-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));
  const file = (): string => join(home, MEMBER_SECRET_FILE);

  it('is made on the first start, mode 0600, and kept after', () => {
    const s = memberSecret(home);
    expect(s).to.match(MEMBER_SECRET_RE);
    expect(statSync(file()).mode & 0o777).to.equal(0o600);
    expect(memberSecret(home)).to.equal(s);
    expect(readFileSync(file(), 'utf8').trim()).to.equal(s);
  });

  it('replaces anything else found there with a new secret (seeded fuzz, a FIFO, an oversize file), never hanging or throwing', () => {
    const next = seededRandom(0x5ec7);
    const cases: Array<Buffer | string> = ['A1'.repeat(32), 'a1'.repeat(31), `${'a1'.repeat(32)}x`, 'x'.repeat(10_000)];
    for (let i = 0; i < 200; i++) cases.push(Buffer.from(Array.from({ length: Math.floor(next() * 300) }, () => Math.floor(next() * 256))));
    for (const c of cases) {
      writeFileSync(file(), c);
      const s = memberSecret(home);
      expect(s).to.match(MEMBER_SECRET_RE);
      expect(readFileSync(file(), 'utf8').trim()).to.equal(s);
    }
    rmSync(file());
    execFileSync('mkfifo', [file()]);
    expect(memberSecret(home)).to.match(MEMBER_SECRET_RE);
    expect(statSync(file()).isFile()).to.equal(true);
  });
});
