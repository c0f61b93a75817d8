/**
 * An incoming migration's record (incoming-record.ts), an edge where bytes from disk enter a
 * restarted root: written 0600 (it holds the pair credential), read back as written, and anything
 * else found in its place (seeded random bytes, hand-edited records, an oversize file, a FIFO, a
 * directory) is refused with a reason, never thrown, never hanging.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MIGRATION_DEFAULTS, seededRandom } from '@hvlab/protocol';
import { buildConfig } from '../src/config.js';
import { decodeIncomingRecord, incomingDir, incomingRecordNames, readIncomingRecord, removeIncomingRecord, writeIncomingRecord, type IncomingRecord } from '../src/incoming-record.js';

describe('an incoming migration\'s record', () => {
  let home = '';
  beforeEach(() => void (home = mkdtempSync(join(tmpdir(), 'hvlab-incoming-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));
  const rec = (): IncomingRecord => ({
    mig: '0123abcd4567ef89', from: 'h1', auth: 'ab'.repeat(32), config: buildConfig({ name: 'web', memory: '64M' }), options: { ...MIGRATION_DEFAULTS, postcopy: true },
    startedAt: 1_700_000_000_000, exposed: 40123, streamPort: 39001,
  });
  const file = (): string => join(incomingDir(home), 'web.json');

  it('is read back as written, mode 0600 (it holds the pair credential), and goes when removed', () => {
    const r = rec();
    writeIncomingRecord(home, r);
    expect(statSync(file()).mode & 0o777).to.equal(0o600);
    expect(readIncomingRecord(home, 'web')).to.deep.equal(r);
    expect(incomingRecordNames(home)).to.deep.equal(['web']);
    writeIncomingRecord(home, { ...r, exposed: null, streamPort: null });
    expect((readIncomingRecord(home, 'web') as IncomingRecord).exposed).to.equal(null);
    removeIncomingRecord(home, 'web');
    expect(readIncomingRecord(home, 'web')).to.equal(null);
    expect(incomingRecordNames(home)).to.deep.equal([]);
  });

  it('refuses, with a reason and without throwing, anything else found in its place (seeded fuzz, hand-edited records, oversize, a FIFO, a directory)', () => {
    const good = { version: 1, ...rec() };
    const edits: Array<[Record<string, unknown>, RegExp]> = [
      [{ version: 2 }, /version/], [{ mig: 'BAD ID' }, /migration id/], [{ from: 'H1' }, /source host/], [{ auth: 'ab' }, /credential/],
      [{ config: { ...good.config, name: 'other' } }, /"other"/], [{ config: null }, /VM config/], [{ options: { postcopy: 'yes' } }, /options/],
      [{ startedAt: -5 }, /start time/], [{ exposed: 0 }, /fabric port/], [{ streamPort: 70000 }, /stream port/], [{ exposed: '40123' }, /fabric port/],
    ];
    mkdirSync(incomingDir(home), { recursive: true });
    for (const [e, why] of edits) {
      writeFileSync(file(), JSON.stringify({ ...good, ...e }));
      expect(readIncomingRecord(home, 'web'), JSON.stringify(e)).to.be.a('string').and.match(why);
    }
    const next = seededRandom(0x1c0);
    const text = JSON.stringify(good);
    for (let i = 0; i < 300; i++) {
      const b = i % 2 === 0 ? Buffer.from(Array.from({ length: Math.floor(next() * 400) }, () => Math.floor(next() * 256))) : Buffer.from(text);
      if (i % 2 === 1) for (let k = 0; k < 1 + Math.floor(next() * 3); k++) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
      writeFileSync(file(), b);
      const got = readIncomingRecord(home, 'web');
      expect(typeof got === 'string' || (got !== null && got.config.name === 'web'), String(got)).to.equal(true);
    }
    writeFileSync(file(), 'x'.repeat(200 * 1024));
    expect(readIncomingRecord(home, 'web')).to.match(/more than/);
    rmSync(file());
    execFileSync('mkfifo', [file()]);
    expect(readIncomingRecord(home, 'web')).to.match(/FIFO/);
    rmSync(file());
    mkdirSync(file());
    expect(readIncomingRecord(home, 'web')).to.match(/directory/);
    removeIncomingRecord(home, 'web');
    expect(readIncomingRecord(home, 'web')).to.equal(null);
    for (const v of [null, [], 'x', 5, { toString: 1 }]) expect(decodeIncomingRecord(v, 'web')).to.be.a('string');
  });
});
