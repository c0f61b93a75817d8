/**
 * The log of migrations a host committed as destination (committed.ts), an edge where bytes from
 * disk enter the root: kept across roots, bounded, and whatever else is found in its place (seeded
 * random bytes, hand-edited logs, an oversize file, a FIFO, a directory) is set aside without
 * hanging or throwing, the log starting empty.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '@hvlab/protocol';
import { COMMITTED_KEPT, CommittedMigrations, decodeCommittedLog } from '../src/committed.js';

type Warned = Array<{ o: unknown; m: string }>;
const logger = (warned: Warned) => ({ warn: (o: unknown, m: string) => void warned.push({ o, m }), info: () => undefined, error: () => undefined, debug: () => undefined }) as never;
const entry = (i: number) => ({ mig: `0123abcd${i.toString(16).padStart(8, '0')}`, vm: `vm${i}`, vmId: `id-${i}`, from: 'h1' });

describe('the log of committed migrations', () => {
  let home = '';
  beforeEach(() => void (home = mkdtempSync(join(tmpdir(), 'hvlab-committed-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));
  const file = (): string => join(home, 'migrations', 'committed.json');

  it('keeps what a root committed for the next root, the newest it may keep', () => {
    const warned: Warned = [];
    const a = new CommittedMigrations(home, logger(warned));
    expect(a.has(entry(1).mig)).to.equal(false);
    a.add(entry(1));
    // 16 kept here (1024 by default: a write per commit, each the whole log).
    const b = new CommittedMigrations(home, logger(warned), 16);
    expect(b.has(entry(1).mig)).to.equal(true);
    expect(b.has(entry(2).mig)).to.equal(false);
    for (let i = 2; i <= 16 + 5; i++) b.add(entry(i));
    const c = new CommittedMigrations(home, logger(warned));
    expect(c.size).to.equal(16);
    expect(c.has(entry(5).mig), 'the oldest went').to.equal(false);
    expect(c.has(entry(6).mig)).to.equal(true);
    expect(c.has(entry(16 + 5).mig)).to.equal(true);
    expect(warned).to.deep.equal([]);
  });

  it('a commit the disk refuses stays in memory, logged, and does not throw', () => {
    const warned: Warned = [];
    // A file where the log's directory goes: nothing can be written under it.
    writeFileSync(join(home, 'migrations'), 'x');
    const a = new CommittedMigrations(home, logger(warned));
    a.add(entry(7));
    expect(a.has(entry(7).mig)).to.equal(true);
    expect(warned.map((w) => w.m).join('\n')).to.match(/not on disk \(kept in memory\)/);
  });

  it('sets aside anything else found in its place (seeded fuzz, hand-edited logs, oversize, a FIFO, a directory), never hanging or throwing', () => {
    const next = seededRandom(0xc0ffee);
    const good = { version: 1, committed: [{ ...entry(1), at: 1 }] };
    const cases: Array<Buffer | string> = [
      '', 'null', '[]', '{}', JSON.stringify({ ...good, version: 2 }), JSON.stringify({ version: 1, committed: {} }),
      JSON.stringify({ version: 1, committed: [null] }), JSON.stringify({ version: 1, committed: [{ ...entry(1), mig: 'UPPER-and-bad!' }] }),
      JSON.stringify({ version: 1, committed: [{ ...entry(1), at: -1 }] }), JSON.stringify({ version: 1, committed: [{ ...entry(1), vm: 7 }] }),
      JSON.stringify({ version: 1, committed: [{ ...entry(1), vmId: 'x'.repeat(65), at: 1 }] }),
      JSON.stringify({ version: 1, committed: Array.from({ length: COMMITTED_KEPT + 1 }, (_, i) => ({ ...entry(i), at: 1 })) }),
      '{"version":1,"committed":[{"mig":"0123abcd00000001","vm":"a","vmId":"b","from":"c","at":1e400}]}',
      'x'.repeat(2 * 1024 * 1024),
    ];
    for (let i = 0; i < 200; i++) cases.push(Buffer.from(Array.from({ length: Math.floor(next() * 300) }, () => Math.floor(next() * 256))));
    // Valid logs with one byte changed: decoded or set aside, never anything else.
    const bad = cases.length;
    const text = JSON.stringify(good);
    for (let i = 0; i < 200; i++) {
      const b = Buffer.from(text);
      b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
      cases.push(b);
    }
    mkdirSync(join(home, 'migrations'));
    let setAside = 0;
    for (const [i, c] of cases.entries()) {
      rmSync(`${file()}.bad`, { force: true });
      writeFileSync(file(), c);
      const warned: Warned = [];
      const m = new CommittedMigrations(home, logger(warned));
      if (m.size === 0) {
        setAside++;
        expect(existsSync(file()), 'moved away').to.equal(false);
        expect(readFileSync(`${file()}.bad`).equals(Buffer.from(c)), 'kept as it was').to.equal(true);
        expect(warned.length).to.equal(1);
      } else {
        expect(i, 'only a mutated good log may still be one').to.be.at.least(bad);
        expect(m.size).to.equal(1);
        expect(warned).to.deep.equal([]);
      }
    }
    expect(setAside, 'some mutations break the log').to.be.greaterThan(bad);
    // A FIFO does not hold the root; a directory is set aside too; the next commit writes a good log.
    rmSync(file(), { force: true });
    execFileSync('mkfifo', [file()]);
    expect(new CommittedMigrations(home, logger([])).size).to.equal(0);
    rmSync(file(), { force: true });
    rmSync(`${file()}.bad`, { force: true });
    mkdirSync(file());
    const d = new CommittedMigrations(home, logger([]));
    d.add(entry(3));
    expect(new CommittedMigrations(home, logger([])).has(entry(3).mig)).to.equal(true);
  });

  it('the decoder names what is wrong', () => {
    expect(decodeCommittedLog({ version: 1, committed: [{ ...entry(1), at: 5 }] })).to.deep.equal([{ ...entry(1), at: 5 }]);
    expect(decodeCommittedLog({ version: 1, committed: [{ ...entry(1), from: '' , at: 5 }] })).to.equal('entry 0 does not name its VM, VM id and source');
    expect(decodeCommittedLog({ version: 1, committed: [{ ...entry(1), mig: 'short', at: 5 }] })).to.equal('entry 0 has no migration id');
    expect(decodeCommittedLog({ version: 1, committed: [{ ...entry(1), at: 0.5 }] })).to.equal('entry 0 has no time');
  });
});
