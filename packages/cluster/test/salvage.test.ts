/**
 * Two files read back after their writer is gone, each by its own checking reader: a temporary
 * run home's marker (lab.ts orphanedTemporaryHome, which the nemesis acts on by removing the home)
 * and a damaged host record (host/lifecycle.ts salvageHostRecord, which `down` acts on by removing
 * shared memory and a socket directory). Whatever the bytes, neither throws, and neither names
 * anything it should not: a marker only makes a home orphaned when it names a pid that is gone,
 * and a salvaged socket directory is only ever one where this home's sockets could be.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { seededRandom } from '@hvlab/protocol';
import { hostPaths } from '@hvlab/runtime';
import { salvageHostRecord } from '@hvlab/host';
import { markTemporaryHome, orphanedTemporaryHome, TEMPORARY_HOME_FILE } from '../src/index.js';

/** Seeded random bytes and mutations of `good`, `n` of them. */
function variants(good: string, n: number, seed: number): Buffer[] {
  const next = seededRandom(seed);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    if (i % 3 === 0) {
      out.push(Buffer.from(Array.from({ length: Math.floor(next() * 200) }, () => Math.floor(next() * 256))));
      continue;
    }
    const b = Buffer.from(good);
    for (let k = 0, flips = 1 + Math.floor(next() * 4); k < flips; k++) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
    out.push(i % 3 === 1 ? b : b.subarray(0, Math.floor(next() * b.length)));
  }
  return out;
}

describe('files read back after their writer is gone', () => {
  let dir = '';
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'hvlab-salvage-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a temporary home\'s marker: its maker alive is not orphaned, a pid that is gone is; any other bytes never throw and never orphan a home (seeded, 3000 cases)', () => {
    markTemporaryHome(dir);
    expect(orphanedTemporaryHome(dir), 'made by this live process').to.equal(false);
    writeFileSync(join(dir, TEMPORARY_HOME_FILE), JSON.stringify({ pid: 4194305, start: 1 }));
    expect(orphanedTemporaryHome(dir), 'a pid above pid_max').to.equal(true);
    rmSync(join(dir, TEMPORARY_HOME_FILE));
    expect(orphanedTemporaryHome(dir), 'no marker: a user\'s home').to.equal(false);
    for (const b of variants(JSON.stringify({ pid: process.pid, start: 123456 }), 3000, 0x7e3)) {
      writeFileSync(join(dir, TEMPORARY_HOME_FILE), b);
      let got: boolean | undefined;
      expect(() => (got = orphanedTemporaryHome(dir)), b.toString('latin1')).to.not.throw();
      // Only a marker that decodes to a positive whole pid can say orphaned at all.
      if (got) {
        const v = JSON.parse(b.toString('utf8')) as { pid: number };
        expect(Number.isSafeInteger(v.pid) && v.pid > 0, b.toString('latin1')).to.equal(true);
      }
    }
  });

  it('a damaged host record: the host id and socket directory it still names are read; any other bytes never throw, and no socket directory but this home\'s is ever named (seeded, 3000 cases)', () => {
    const paths = hostPaths(join(dir, 'home'));
    mkdirSync(dirname(paths.hostFile), { recursive: true });
    const other = join(dir, 'elsewhere', 'tmp');
    const theirs = join(other, paths.sockDir.slice(paths.sockDir.lastIndexOf('/') + 1));
    writeFileSync(paths.hostFile, `{"hostId":"a1b2c3","sockDir":"${theirs}","ho`);
    expect(salvageHostRecord(paths)).to.deep.equal({ hostId: 'a1b2c3', sockDir: theirs });
    writeFileSync(paths.hostFile, '{"hostId":"a1b2c3","sockDir":"/tmp","ho');
    expect(salvageHostRecord(paths), 'a directory not named for this home').to.deep.equal({ hostId: 'a1b2c3', sockDir: null });
    for (const b of variants(`{"hostId":"a1b2c3","home":"${paths.home}","sockDir":"${theirs}","pids":{"hypervisor":1,"root":2}}`, 3000, 0x5a1)) {
      writeFileSync(paths.hostFile, b);
      let got: ReturnType<typeof salvageHostRecord> | undefined;
      expect(() => (got = salvageHostRecord(paths)), b.toString('latin1')).to.not.throw();
      if (got!.hostId !== null) expect(got!.hostId).to.match(/^[0-9a-f]{6}$/);
      if (got!.sockDir !== null) expect(got!.sockDir.endsWith(paths.sockDir.slice(paths.sockDir.lastIndexOf('/'))), got!.sockDir).to.equal(true);
    }
  });
});
