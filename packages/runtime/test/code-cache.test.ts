/**
 * V8's code cache for the process bundles (code-cache.ts): the file's own header is checked before
 * V8 sees a byte (a damaged, truncated or stale cache is never handed over, and no input throws),
 * and a bundle runs from its cache, or from source with the reason, in a fresh process each time.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';
import { seededRandom } from '@hvlab/protocol';
import {
  CODE_CACHE_HEADER_BYTES, CODE_CACHE_MAX_PAYLOAD, codeCachePath, decodeCodeCache, encodeCodeCache, sourceDigest, wrapBundle,
} from '../src/code-cache.js';

const digestOf = (s: string): Buffer => sourceDigest(Buffer.from(s));

describe('code cache: the file header', () => {
  const digest = digestOf('module.exports = 1;');
  const payload = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));

  it('decodes what it encodes, against the digest of the same source only', () => {
    const file = encodeCodeCache(digest, payload);
    expect(file.length).to.equal(CODE_CACHE_HEADER_BYTES + payload.length);
    const d = decodeCodeCache(file, digest);
    expect(d.ok).to.equal(true);
    if (d.ok) expect(Buffer.compare(d.payload, payload)).to.equal(0);
    expect(decodeCodeCache(file, digestOf('module.exports = 2;'))).to.deep.include({ ok: false, status: 'stale' });
  });

  it('refuses a short file, another magic or format, a wrong length, a set reserved field and a damaged payload', () => {
    const file = encodeCodeCache(digest, payload);
    const bad = (what: string, b: Buffer, reason: RegExp): void => {
      const d = decodeCodeCache(b, digest);
      expect(d.ok, what).to.equal(false);
      if (!d.ok) {
        expect(d.status, what).to.equal('corrupt');
        expect(d.reason, what).to.match(reason);
      }
    };
    bad('empty', Buffer.alloc(0), /shorter than/);
    bad('the header cut', file.subarray(0, CODE_CACHE_HEADER_BYTES - 1), /shorter than/);
    bad('the payload cut', file.subarray(0, file.length - 1), /payload bytes where/);
    bad('a byte more', Buffer.concat([file, Buffer.from([0])]), /payload bytes where/);
    const set = (at: number, v: number): Buffer => {
      const b = Buffer.from(file);
      b.writeUInt32LE(v, at);
      return b;
    };
    bad('magic', Buffer.concat([Buffer.from('XVLABCC\0'), file.subarray(8)]), /magic/);
    bad('format 2', set(8, 2), /format 2/);
    bad('a length over the bound', set(12, CODE_CACHE_MAX_PAYLOAD + 1), /over the bound/);
    bad('reserved', set(20, 1), /reserved/);
    const flipped = Buffer.from(file);
    flipped[CODE_CACHE_HEADER_BYTES + 100]! ^= 0x10;
    bad('a bit of the payload', flipped, /CRC-32/);
    expect(() => encodeCodeCache(Buffer.alloc(31), payload)).to.throw(RangeError);
  });

  it('never throws, and never hands over a changed file, on random or mutated input (seeded, 6000 cases)', () => {
    const next = seededRandom(0xc0de);
    const file = encodeCodeCache(digest, payload);
    for (let i = 0; i < 3000; i++) {
      const b = Buffer.alloc(Math.floor(next() * 600));
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(next() * 256);
      // Sometimes with a valid magic and format, so the later checks are reached too.
      if (b.length >= 12 && next() < 0.5) {
        file.copy(b, 0, 0, 12);
      }
      expect(decodeCodeCache(b, digest).ok).to.equal(false);
    }
    for (let i = 0; i < 3000; i++) {
      const b = Buffer.from(file);
      const n = 1 + Math.floor(next() * 4);
      for (let k = 0; k < n; k++) {
        const at = Math.floor(next() * b.length);
        b[at] = (b[at]! + 1 + Math.floor(next() * 255)) & 0xff;
      }
      const d = decodeCodeCache(b, digest);
      expect(d.ok, `mutation ${i}`).to.equal(false);
    }
    for (const junk of [null, undefined, 7, 'text', {}, []]) expect(decodeCodeCache(junk as unknown as Uint8Array, digest).ok).to.equal(false);
  });
});

describe('code cache: running a bundle', function () {
  this.timeout(60000);
  let dir = '';
  let bundle = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-cc-'));
    bundle = join(dir, 'b.cjs');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const fixture = fileURLToPath(new URL('./fixtures/cache-run.ts', import.meta.url));
  function child<T>(flags: string[], ...args: string[]): T {
    const r = spawnSync(process.execPath, [...flags, '--conditions=hvlab-source', '--import', 'tsx', fixture, ...args], { encoding: 'utf8', timeout: 30000 });
    expect(r.status, r.stderr).to.equal(0);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
  }
  type Ran = { status: string; recorded: string; exports: unknown; ran: { value: string; dirname: string; meta: string; sep: string; thisIsExports: boolean; exported: boolean } };
  const run = (): Ran => child<Ran>([], 'run', bundle);
  // Functions never called, so an eager cache has more in it than the top level. (As esbuild writes
  // them: V8 leaves a wrapper of nothing but function declarations uncompiled even with --no-lazy.)
  const source = (value: string): string => [
    "'use strict';",
    ...Array.from({ length: 50 }, (_, i) => `var unused${i} = function (x) { return x * ${i} + ${JSON.stringify(value)}.length; };`),
    `globalThis.ran = { value: ${JSON.stringify(value)}, dirname: __dirname, meta: __hvlabImportMetaUrl,`,
    "  sep: require('node:path').sep, thisIsExports: this === exports, exported: false };",
    'module.exports = { ok: true };',
    'globalThis.ran.exported = module.exports.ok === true;',
    '',
  ].join('\n');

  it('runs a bundle without a cache as CommonJS (its require, exports, __dirname, import.meta.url) and says absent', () => {
    writeFileSync(bundle, source('one'));
    const r = run();
    expect(r.status).to.equal('absent');
    expect(r.recorded).to.equal('absent');
    expect(r.ran).to.deep.equal({ value: 'one', dirname: dir, meta: 'file:///launcher/here.cjs', sep: '/', thisIsExports: true, exported: true });
    expect(r.exports).to.deep.equal({ ok: true });
  });

  it('runs it from the cache made for it (V8 accepts it under the default flags), which holds the functions never called too', () => {
    writeFileSync(bundle, source('one'));
    const made = child<{ bytes: number }>([], 'make', bundle);
    expect(readFileSync(codeCachePath(bundle)).length).to.equal(made.bytes);
    const r = run();
    expect(r.status).to.equal('accepted');
    expect(r.ran.value).to.equal('one');
    // A cache of the same script compiled lazily holds its top level only.
    const lazy = new Script(wrapBundle(source('one')), { filename: join(dir, 'lazy.cjs') }).createCachedData().length;
    expect(made.bytes - CODE_CACHE_HEADER_BYTES).to.be.greaterThan(2 * lazy);
  });

  it('a cache of another source of the same length is stale: the new source runs, not the cached bytecode', () => {
    writeFileSync(bundle, source('one'));
    child([], 'make', bundle);
    writeFileSync(bundle, source('two'));
    expect(readFileSync(bundle).length, 'same length, which is all V8 itself compares').to.equal(Buffer.byteLength(source('one')));
    const r = run();
    expect(r.status).to.equal('stale');
    expect(r.ran.value).to.equal('two');
  });

  it('a damaged cache is never given to V8: the bundle runs from source and says corrupt', () => {
    writeFileSync(bundle, source('one'));
    child([], 'make', bundle);
    const b = readFileSync(codeCachePath(bundle));
    b[b.length - 5]! ^= 0xff;
    writeFileSync(codeCachePath(bundle), b);
    const r = run();
    expect(r.status).to.equal('corrupt');
    expect(r.ran.value).to.equal('one');
    writeFileSync(codeCachePath(bundle), b.subarray(0, 30));
    expect(run().status).to.equal('corrupt');
  });

  it('a cache made under other V8 flags is refused by V8: the bundle runs from source and says rejected', () => {
    writeFileSync(bundle, source('one'));
    child(['--no-opt'], 'make', bundle);
    const r = run();
    expect(r.status).to.equal('rejected');
    expect(r.ran.value).to.equal('one');
  });
});
