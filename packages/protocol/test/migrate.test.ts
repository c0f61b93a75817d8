/**
 * Live migration's wire (migrate.ts, the mig* ops of cluster.ts and of vmwp.ts): each decoder takes what a source or destination
 * sends and refuses the rest (batches and options with a sentence, peer frames with `ok: false`, VMWP frames with VmwpDecodeError);
 * seeded fuzz shows none throws anything else, and that an accepted page batch is consistent (and re-encodes to the same bytes).
 */
import { expect } from 'chai';
import { deflateRawSync } from 'node:zlib';
import {
  describeBlackout, migrationHasDowntime, reportedMigrationStats, decodeDescribedMove, peerReplayKey, decodeDescribedIncoming, ranAtOf, encodePageBatch, decodePageBatch, decodeMigrationOptions, decodeMigrationStats, decodePeerRequest, emptyRam, MIGRATION_MAX_PASSES, decodeVmwpFrame, VmwpDecodeError, encode, seededRandom,
  PageKind, MIG_PAGE, MIG_BATCH_MAX_PAGES, MIG_BATCH_MAX_ENTRIES, MIG_ENTRY_HEADER, MIGRATION_DEFAULTS, MIG_STATE_MAX_BYTES, SINK_CHUNK_MAX_BYTES, MIG_ID_RE, CLUSTER_HOST_RE, CLUSTER_WIRE_VERSION,
  type MigrationStats, type PageEntry,
} from '../src/index.js';

const E = new Uint8Array(0);
/** Statistics as a source's VMWP sends them with its commit (MigrationOut.stats at the commit). */
const SOURCE_STATS: MigrationStats = {
  vm: 'cnt', from: 'h1', to: 'h2', method: 'precopy', status: 'completed', 'total-time': 812, 'setup-time': 95, downtime: 11, 'downtime-acked': 12, 'expected-downtime': 9,
  ram: { ...emptyRam(64 * 1024 * 1024), transferred: 463788, remaining: 0, duplicate: 16000, normal: 103, 'normal-bytes': 421888, mbps: 4.56, 'dirty-sync-count': 3, 'dirty-pages-rate': 40, 'pages-per-second': 20000 },
  pass: 3, 'compression-ratio': 1, 'throttle-percentage': 0, 'dirty-tracking': 'kernel', stream: 'worker',
  passes: [{ pass: 1, pages: 16384, dirtyPages: 40, ms: 600, at: 700 }, { pass: 2, pages: 40, dirtyPages: 3, ms: 20, at: 720 }, { pass: 3, pages: 5, dirtyPages: 0, ms: 2, at: 800 }],
  'stop-reason': 'converged', blackout: { freeze: 3, pages: 1, start: 7, destination: 5, transit: 2, ack: 1 }, options: { ...MIGRATION_DEFAULTS }, startedAt: '2026-12-05T19:00:27.519Z',
};
const page = (seed: number): Uint8Array => Uint8Array.from({ length: MIG_PAGE }, (_, i) => (i * 31 + seed) & 0xff);
const rnd = (next: () => number, n: number): Uint8Array => Uint8Array.from({ length: n }, () => Math.floor(next() * 256));
/** A copy of `b` with the little-endian value `v` (`width` bytes) at `off`. */
function patch(b: Uint8Array, off: number, v: number, width: 1 | 2 | 4 = 4): Uint8Array {
  const c = b.slice();
  const dv = new DataView(c.buffer);
  ({ 1: () => dv.setUint8(off, v), 2: () => dv.setUint16(off, v, true), 4: () => dv.setUint32(off, v, true) })[width]();
  return c;
}
/** 1–3 flips, inserts or deletes, at a `hot` offset (headers) some of the time. */
function mutate(next: () => number, src: Uint8Array, hot: number[] = []): Uint8Array {
  const b = Array.from(src);
  for (let k = 0, n = 1 + Math.floor(next() * 3); k < n; k++) {
    const pos = Math.min(b.length, hot.length > 0 && next() < 0.6 ? hot[Math.floor(next() * hot.length)]! : Math.floor(next() * (b.length + 1)));
    const op = Math.floor(next() * 3);
    if (op === 0 && b.length > 0) b[Math.min(pos, b.length - 1)] = next() < 0.5 ? Math.floor(next() * 256) : b[Math.min(pos, b.length - 1)]! ^ (1 << Math.floor(next() * 8));
    else if (op === 1) b.splice(pos, 0, Math.floor(next() * 256));
    else b.splice(pos, 1);
  }
  return Uint8Array.from(b);
}
/** What an accepted batch must be: pages in range, kinds and lengths consistent, and the same bytes when encoded again. */
function expectConsistent(r: PageEntry[], bytes: Uint8Array, limit: number): void {
  let size = 8;
  r.forEach((e, i) => {
    expect(e.pfn).to.be.a('number').below(limit);
    expect(e.data).to.be.instanceOf(Uint8Array);
    size += MIG_ENTRY_HEADER + (e.kind === PageKind.Dup ? 4 : e.data.length);
    if (e.kind === PageKind.Zero) expect(e.data.length).to.equal(0);
    else if (e.kind === PageKind.Raw) expect(e.data.length).to.equal(MIG_PAGE);
    else if (e.kind === PageKind.Deflate) expect(e.data.length).to.be.within(1, MIG_PAGE + 63);
    else if (e.kind === PageKind.Dup) {
      expect(e.data.length).to.equal(0);
      expect(e.dupOf).to.be.a('number').below(i);
      expect(r[e.dupOf!]!.kind).to.be.oneOf([PageKind.Raw, PageKind.Deflate]);
    } else expect.fail(`kind ${String(e.kind)}`);
  });
  expect(size).to.equal(bytes.length);
  expect(Buffer.from(encodePageBatch(r)).equals(Buffer.from(bytes))).to.equal(true);
}

describe('migration page batches', function () {
  this.timeout(20_000); // the seeded fuzz, under mocha's default 2 s when run without the repository's config
  const raw = page(1);
  const def = deflateRawSync(page(2));
  const entries: PageEntry[] = [
    { pfn: 0, kind: PageKind.Zero, data: E }, { pfn: 1, kind: PageKind.Raw, data: raw }, { pfn: 2, kind: PageKind.Deflate, data: def },
    { pfn: 3, kind: PageKind.Dup, data: E, dupOf: 1 }, { pfn: 63, kind: PageKind.Dup, data: E, dupOf: 2 },
  ];

  it('round-trips zero, raw, deflate and duplicate entries', () => {
    const b = encodePageBatch(entries);
    expect(b.length).to.equal(8 + 5 * MIG_ENTRY_HEADER + MIG_PAGE + def.length + 8);
    const d = decodePageBatch(b, 64);
    expect(d).to.deep.equal(entries.map((e) => ({ ...e, data: Uint8Array.from(e.data) })));
    expectConsistent(d as PageEntry[], b, 64);
    // A view at an offset (a pooled Buffer), the empty batch, a full batch, the largest compressed entry.
    expect(decodePageBatch(Buffer.concat([Buffer.alloc(3), b]).subarray(3), 64)).to.have.length(5);
    expect(decodePageBatch(encodePageBatch([]), 1)).to.deep.equal([]);
    const full = Array.from({ length: MIG_BATCH_MAX_PAGES }, (_, i): PageEntry => ({ pfn: i, kind: PageKind.Zero, data: E }));
    expect(decodePageBatch(encodePageBatch(full), MIG_BATCH_MAX_PAGES)).to.have.length(MIG_BATCH_MAX_PAGES);
    expect(decodePageBatch(encodePageBatch([{ pfn: 0, kind: PageKind.Deflate, data: new Uint8Array(MIG_PAGE + 63) }]), 1)).to.have.length(1);
  });

  it('refuses what is not a batch, with a sentence', () => {
    const one = (e: Partial<PageEntry>): Uint8Array => encodePageBatch([{ pfn: 1, kind: PageKind.Zero, data: E, ...e }]);
    const five = one({ kind: PageKind.Deflate, data: new Uint8Array(5) });
    const r0: PageEntry = { pfn: 0, kind: PageKind.Raw, data: raw };
    const z0: PageEntry = { pfn: 0, kind: PageKind.Zero, data: E };
    const dup = (dupOf: number): PageEntry => ({ pfn: 1, kind: PageKind.Dup, data: E, dupOf });
    const cases: Array<[Uint8Array, RegExp]> = [
      [patch(encodePageBatch(entries), 0, 0x504d5649), /must start with "HVMP"/], [new Uint8Array(7), /7 bytes is shorter than its header/],
      [patch(encodePageBatch([]), 4, MIG_BATCH_MAX_ENTRIES + 1), /4097 entries is over 4096/],
      [encodePageBatch(Array.from({ length: MIG_BATCH_MAX_PAGES + 1 }, (_, i): PageEntry => ({ pfn: i % 64, kind: PageKind.Raw, data: new Uint8Array(MIG_PAGE) }))), /more than 256 pages with bytes/],
      [one({ pfn: 64 }), /entry 0 names page 64, outside the 64 pages/], [one({ pfn: 0xffffffff }), /names page 4294967295/],
      [one({ kind: PageKind.Raw, data: new Uint8Array(100) }), /raw page entry 0 carries 100 bytes, not 4096/],
      [patch(five, 12, PageKind.Zero, 1), /zero page entry 0 carries 5 bytes/], [patch(five, 12, PageKind.Dup, 1), /duplicate page entry 0 carries 5 bytes, not 4/],
      [patch(one({}), 12, PageKind.Deflate, 1), /compressed page entry 0 carries 0 bytes/],
      [one({ kind: PageKind.Deflate, data: new Uint8Array(MIG_PAGE + 64) }), /compressed page entry 0 carries 4160 bytes/],
      [encodePageBatch([{ ...dup(1), pfn: 0 }, r0]), /entry 0 points at entry 1, which is not an earlier page with bytes/], // forward
      [encodePageBatch([r0, dup(1)]), /entry 1 points at entry 1/], [encodePageBatch([z0, dup(0)]), /entry 1 points at entry 0/], // itself, a zero page
      [encodePageBatch([r0, dup(0), dup(1)]), /entry 2 points at entry 1/], // another duplicate
      [patch(one({}), 13, 1, 1), /entry 0 has reserved bytes set/], [patch(one({}), 14, 0x100, 2), /entry 0 has reserved bytes set/],
      [Buffer.concat([one({}), Buffer.alloc(1)]), /has 1 bytes after its last entry/],
      [one({ kind: PageKind.Raw, data: raw }).subarray(0, 8 + MIG_ENTRY_HEADER + MIG_PAGE - 1), /entry 0 says 4096 bytes, more than the batch holds/],
      [one({}).subarray(0, 8 + 5), /page entry 0 is cut short/], [patch(one({}), 4, 2), /page entry 1 is cut short/],
      [patch(one({}), 12, 4, 1), /entry 0 has unknown kind 4/],
    ];
    for (const [b, re] of cases) expect(decodePageBatch(b, 64)).to.be.a('string').that.matches(re);
    expect(decodePageBatch('HVMP' as unknown as Uint8Array, 64)).to.equal('a page batch must be bytes');
  });

  it('never throws on random or mutated batches, and what it accepts is consistent (seeded fuzz)', () => {
    const next = seededRandom(0x419e);
    let accepted = 0;
    for (let it = 0; it < 3000; it++) {
      const limit = 1 + Math.floor(next() * 64);
      const es: PageEntry[] = [];
      for (let i = 0, n = Math.floor(next() * 8); i < n; i++) {
        const pfn = Math.floor(next() * limit);
        const kind = Math.floor(next() * 4);
        const sources = es.flatMap((e, j) => (e.kind === PageKind.Raw || e.kind === PageKind.Deflate ? [j] : []));
        if (kind === PageKind.Raw && next() < 0.3) es.push({ pfn, kind, data: rnd(next, MIG_PAGE) });
        else if (kind === PageKind.Deflate) es.push({ pfn, kind, data: rnd(next, 1 + Math.floor(next() * 40)) });
        else if (kind === PageKind.Dup && sources.length > 0) es.push({ pfn, kind, data: E, dupOf: sources[Math.floor(next() * sources.length)]! });
        else es.push({ pfn, kind: PageKind.Zero, data: E });
      }
      const valid = encodePageBatch(es);
      const hot = [0, 4];
      for (let i = 0, o = 8; i < es.length; o += MIG_ENTRY_HEADER + (es[i]!.kind === PageKind.Dup ? 4 : es[i]!.data.length), i++) hot.push(o, o + 4, o + 5, o + 8, o + MIG_ENTRY_HEADER);
      const noise = rnd(next, Math.floor(next() * 80));
      if (noise.length >= 8 && next() < 0.7) noise.set([0x48, 0x56, 0x4d, 0x50, Math.floor(next() * 4), 0, 0, 0]);
      for (const b of [valid, mutate(next, valid, hot), noise]) {
        let r: PageEntry[] | string = '';
        expect(() => { r = decodePageBatch(b, limit); }).to.not.throw();
        if (b === valid) expect(r, r as string).to.be.an('array');
        if (typeof r === 'string') expect(r.length).to.be.greaterThan(0);
        else {
          expect(r).to.be.an('array');
          expectConsistent(r, b, limit);
          if (b !== valid) accepted++;
        }
      }
    }
    expect(accepted).to.be.greaterThan(50); // the mutations reach past the header checks
  });
});

describe('a blackout\'s account', () => {
  it('gives the destination\'s part and the transit when the destination said its time, and not otherwise', () => {
    expect(describeBlackout({ freeze: 3, pages: 1, start: 6, destination: 4, transit: 2 })).to.equal('freeze 3, last pages 1, start 6 ms (destination 4, transit 2)');
    expect(describeBlackout({ freeze: 3, pages: 1, start: 6 })).to.equal('freeze 3, last pages 1, start 6 ms');
    expect(describeBlackout({ freeze: 3, pages: 1, start: 6, destination: 4, transit: 2, ack: 3 })).to.equal('freeze 3, last pages 1, start 6 ms (destination 4, transit 2), answer back 3 ms');
  });
});

describe('a move\'s downtime as a host reports it (reportedMigrationStats)', () => {
  it('is there once the VM runs at the destination (completed, post-copy past its switch-over), as QEMU\'s query-migrate has it, and not before', () => {
    const states = ['queued', 'setup', 'active', 'postcopy-active', 'completed', 'failed', 'cancelled'] as const;
    expect(states.filter((s) => migrationHasDowntime(s))).to.deep.equal(['postcopy-active', 'completed']);
    for (const status of states) {
      const r = reportedMigrationStats({ ...SOURCE_STATS, status });
      const has = status === 'completed' || status === 'postcopy-active';
      expect([status, r.downtime, r['downtime-acked']]).to.deep.equal(has ? [status, 11, 12] : [status, undefined, undefined]);
      expect(Object.hasOwn(r, 'downtime'), status).to.equal(has);
      expect(JSON.stringify(r), status).to.match(has ? /"downtime":11/ : /^(?!.*"downtime":).*$/);
    }
  });

  it('leaves out the 0 a cancelled or failed move started from, and a downtime measured before a commit that failed; keeps everything else (the blackout\'s account too) and changes nothing of its argument', () => {
    // A cancelled offline move (frozen from its start) as the host kept it: "downtime 0 ms" in move-status.
    const cancelled: MigrationStats = { ...SOURCE_STATS, method: 'offline', status: 'cancelled', downtime: 0, 'error-desc': 'cancelled by the user' };
    const { downtime: _d, 'downtime-acked': _a, ...rest } = cancelled;
    expect(reportedMigrationStats(cancelled)).to.deep.equal(rest);
    expect(cancelled.downtime, 'its argument is left as it was').to.equal(0);
    // A pre-copy whose state the destination took but whose commit failed: the VM resumed at the source.
    const failed: MigrationStats = { ...SOURCE_STATS, status: 'failed', 'error-desc': 'the destination h2 refused the commit: x' };
    expect(reportedMigrationStats(failed)).to.not.have.any.keys('downtime', 'downtime-acked');
    expect(reportedMigrationStats(failed)).to.deep.include({ blackout: SOURCE_STATS.blackout, 'expected-downtime': 9, 'error-desc': failed['error-desc'] });
  });
});

describe('the destination\'s word on when the VM ran there (ranAtOf)', () => {
  const clock = '0b6f3a52-8f0e-4f6e-9a55-0c3d1f2e7a10';
  const sent = 5_000_000_000;
  const heard = 5_020_000_000;
  it('is taken when it names the source\'s clock and lies between the state\'s sending and the answer\'s arrival', () => {
    expect(ranAtOf({ running: true, ms: 4, clock, ranAtNs: sent + 9_000_000 }, clock, sent, heard)).to.equal(sent + 9_000_000);
    expect(ranAtOf({ clock, ranAtNs: sent }, clock, sent, heard)).to.equal(sent);
    expect(ranAtOf({ clock, ranAtNs: heard }, clock, sent, heard)).to.equal(heard);
  });
  it('is refused otherwise: another clock, none here, outside the bounds, not a number, or no answer to read', () => {
    expect(ranAtOf({ clock: 'another-machine', ranAtNs: sent + 1 }, clock, sent, heard)).to.equal(null);
    expect(ranAtOf({ clock, ranAtNs: sent + 1 }, null, sent, heard)).to.equal(null);
    expect(ranAtOf({ clock, ranAtNs: sent - 1 }, clock, sent, heard), 'before the state was sent').to.equal(null);
    expect(ranAtOf({ clock, ranAtNs: heard + 1 }, clock, sent, heard), 'after the answer came').to.equal(null);
    for (const ranAtNs of [NaN, Infinity, '5010000000', null, undefined, 5n]) expect(ranAtOf({ clock, ranAtNs }, clock, sent, heard), String(ranAtNs)).to.equal(null);
    for (const answer of [null, undefined, true, 7, 'x', [], { running: true }]) expect(ranAtOf(answer, clock, sent, heard)).to.equal(null);
    const hostile = { get clock(): string { throw new Error('a getter that throws'); }, ranAtNs: sent + 1 };
    expect(ranAtOf(hostile, clock, sent, heard)).to.equal(null);
  });
});

describe('migration options', function () {
  this.timeout(20_000);
  it('takes the defaults for what is missing, and valid values', () => {
    expect(decodeMigrationOptions(undefined)).to.deep.equal(MIGRATION_DEFAULTS);
    expect(decodeMigrationOptions(undefined)).to.not.equal(MIGRATION_DEFAULTS); // a copy
    expect(decodeMigrationOptions(null)).to.deep.equal(MIGRATION_DEFAULTS);
    expect(decodeMigrationOptions({})).to.deep.equal(MIGRATION_DEFAULTS);
    expect(decodeMigrationOptions({ maxPasses: null, compress: undefined })).to.deep.equal(MIGRATION_DEFAULTS);
    const v = { bandwidthBps: 125_000_000, downtimeLimitMs: 50, compress: true, autoConverge: true, postcopy: true, offline: false, maxPasses: 30 };
    expect(decodeMigrationOptions(v)).to.deep.equal(v);
    expect(decodeMigrationOptions({ offline: true, compress: true })).to.deep.equal({ ...MIGRATION_DEFAULTS, offline: true, compress: true });
    expect(decodeMigrationOptions({ bandwidthBps: 1e12, downtimeLimitMs: 3_600_000, maxPasses: 1000 })).to.deep.include({ bandwidthBps: 1e12, downtimeLimitMs: 3_600_000, maxPasses: 1000 });
    expect(decodeMigrationOptions({ bandwidthBps: 0, downtimeLimitMs: 1, maxPasses: 1 })).to.deep.include({ bandwidthBps: 0, downtimeLimitMs: 1, maxPasses: 1 });
  });

  it('refuses unknown keys, wrong types, out-of-range and fractional numbers, and offline with post-copy or auto-converge', () => {
    const cases: Array<[unknown, RegExp]> = [
      ['fast', /must be a map/], [5, /must be a map/], [[], /must be a map/],
      [{ bogus: 1 }, /unknown migration option "bogus"/], [JSON.parse('{"__proto__":{}}'), /unknown migration option "__proto__"/],
      [{ [`${'k'.repeat(40)}`]: 1 }, new RegExp(`unknown migration option "${'k'.repeat(32)}"$`)],
      [{ bandwidthBps: 1 }, /bandwidthBps must be 0 \(no limit\) or at least 65536/], [{ bandwidthBps: 65535 }, /at least 65536/],
      [{ bandwidthBps: '1' }, /bandwidthBps must be a whole number from 0 to 1000000000000/], [{ bandwidthBps: -1 }, /bandwidthBps/], [{ bandwidthBps: 1e12 + 1 }, /bandwidthBps/],
      [{ downtimeLimitMs: 0 }, /downtimeLimitMs must be a whole number from 1 to 3600000/], [{ downtimeLimitMs: 3_600_001 }, /downtimeLimitMs/], [{ downtimeLimitMs: true }, /downtimeLimitMs/],
      [{ maxPasses: 1.5 }, /maxPasses must be a whole number from 1 to 1000/], [{ maxPasses: NaN }, /maxPasses/], [{ maxPasses: Infinity }, /maxPasses/], [{ maxPasses: 1001 }, /maxPasses/],
      [{ compress: 1 }, /compress must be true or false/], [{ offline: 'yes' }, /offline must be true or false/], [{ postcopy: {} }, /postcopy/], [{ autoConverge: [] }, /autoConverge/],
      [{ offline: true, postcopy: true }, /an offline move cannot also be post-copy or auto-converge/], [{ offline: true, autoConverge: true }, /offline move cannot/],
    ];
    for (const [v, re] of cases) expect(decodeMigrationOptions(v), JSON.stringify(v)).to.be.a('string').that.matches(re);
  });

  it('never throws on JSON-ish values, and what it accepts is in range (seeded fuzz)', () => {
    const next = seededRandom(0x0b75);
    const keys = [...Object.keys(MIGRATION_DEFAULTS), 'x', 'toString', '__proto__', ''];
    const atoms = [null, undefined, true, false, 0, -0, 1, -1, 1.5, 300, 1000, 1001, 1e12, 1e13, NaN, Infinity, -Infinity, '', '1', 'true'];
    const value = (d: number): unknown => {
      const r = next();
      if (d > 2 || r < 0.6) return atoms[Math.floor(next() * atoms.length)];
      if (r < 0.7) return Array.from({ length: Math.floor(next() * 3) }, () => value(d + 1));
      return Object.fromEntries(Array.from({ length: Math.floor(next() * 4) }, () => [keys[Math.floor(next() * keys.length)]!, value(d + 1)]));
    };
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const v = next() < 0.5 ? value(0) : Object.fromEntries(Object.keys(MIGRATION_DEFAULTS).filter(() => next() < 0.3).map((k) => [k, value(2)]));
      let r: unknown;
      expect(() => { r = decodeMigrationOptions(v); }).to.not.throw();
      if (typeof r === 'string') continue;
      accepted++;
      const o = r as typeof MIGRATION_DEFAULTS;
      expect(Object.keys(o)).to.have.members(Object.keys(MIGRATION_DEFAULTS));
      for (const [k, lo, hi] of [['bandwidthBps', 0, 1e12], ['downtimeLimitMs', 1, 3_600_000], ['maxPasses', 1, 1000]] as const) expect(Number.isInteger(o[k]) && o[k] >= lo && o[k] <= hi, k).to.equal(true);
      expect(o.bandwidthBps === 0 || o.bandwidthBps >= 64 * 1024, 'no bandwidth below the floor').to.equal(true);
      for (const k of ['compress', 'autoConverge', 'postcopy', 'offline'] as const) expect(o[k]).to.be.a('boolean');
      expect(o.offline && (o.postcopy || o.autoConverge)).to.equal(false);
      if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) if (x !== null && x !== undefined) expect(o[k as keyof typeof o], k).to.equal(x);
    }
    expect(accepted).to.be.greaterThan(100);
  });
});

describe('migration statistics from a source (decodeMigrationStats)', function () {
  this.timeout(20_000);
  it('takes what a source sends, as a fresh copy', () => {
    const d = decodeMigrationStats(SOURCE_STATS);
    expect(d).to.deep.equal(SOURCE_STATS);
    expect(d).to.not.equal(SOURCE_STATS);
    expect((d as MigrationStats).ram).to.not.equal(SOURCE_STATS.ram);
    // A post-copy's and an offline move's, without the optional fields; nil is taken as absent.
    const { blackout: _b, 'stop-reason': _s, 'downtime-acked': _a, stream: _t, ...bare } = SOURCE_STATS;
    expect(decodeMigrationStats({ ...bare, method: 'postcopy' })).to.deep.equal({ ...bare, method: 'postcopy' });
    expect(decodeMigrationStats({ ...bare, blackout: null, stream: null })).to.deep.equal(bare);
    expect(decodeMigrationStats({ ...SOURCE_STATS, blackout: { freeze: 1, pages: 2, start: 3 } })).to.deep.include({ blackout: { freeze: 1, pages: 2, start: 3 } });
    expect((decodeMigrationStats({ ...SOURCE_STATS, passes: Array.from({ length: MIGRATION_MAX_PASSES }, (_, i) => ({ pass: i + 1, pages: 1, dirtyPages: 1, ms: 1, at: i })) }) as MigrationStats).passes).to.have.length(MIGRATION_MAX_PASSES);
  });

  it('takes statistics without a downtime (a move not yet switched over has none), and gives none back', () => {
    const { downtime: _d, 'downtime-acked': _a, ...active } = SOURCE_STATS;
    const d = decodeMigrationStats({ ...active, status: 'active' });
    expect(d).to.deep.equal({ ...active, status: 'active' });
    expect(d).to.not.have.property('downtime');
    expect(decodeMigrationStats({ ...active, downtime: null })).to.not.have.property('downtime');
  });

  it('refuses wrong types, numbers that are not finite, negative or huge, unknown and nested fields, and over-long lists, naming the field', () => {
    const S = SOURCE_STATS as unknown as Record<string, unknown>;
    const cases: Array<[unknown, RegExp]> = [
      [null, /must be a map/], [[], /must be a map/], ['x', /must be a map/], [Buffer.alloc(4), /must be a map/], [new Date(0), /must be a map/],
      [{ ...S, ram: null }, /"ram" must be a map/], [{ ...S, ram: [] }, /"ram" must be a map/], [{ ...S, ram: {} }, /ram: "transferred" must be a number/],
      [{ ...S, ram: { ...SOURCE_STATS.ram, transferred: 'lots' } }, /ram: "transferred" must be a number/], [{ ...S, ram: { ...SOURCE_STATS.ram, total: -1 } }, /ram: "total"/],
      [{ ...S, ram: { ...SOURCE_STATS.ram, remaining: 1e308 } }, /ram: "remaining"/], [{ ...S, ram: { ...SOURCE_STATS.ram, mbps: NaN } }, /ram: "mbps"/],
      [{ ...S, ram: { ...SOURCE_STATS.ram, extra: 1 } }, /"ram": unknown field "extra"/],
      [{ ...S, 'total-time': 'NaN' }, /"total-time" must be a number from 0/], [{ ...S, downtime: -1 }, /"downtime"/], [{ ...S, downtime: Infinity }, /"downtime"/], [{ ...S, pass: { a: 1 } }, /"pass"/],
      [{ ...S, vm: 'other vm' }, /"vm" must be a name/], [{ ...S, vm: 5 }, /"vm"/], [{ ...S, from: '\u001b[31mEVIL' }, /"from" must be a name/], [{ ...S, to: 'x'.repeat(5000) }, /"to" must be a name/],
      [{ ...S, method: 'teleport' }, /"method" must be one of precopy, postcopy, offline/], [{ ...S, status: 'done' }, /"status" must be one of/], [{ ...S, 'dirty-tracking': 1 }, /"dirty-tracking"/],
      [{ ...S, stream: 'carrier-pigeon' }, /"stream"/], [{ ...S, 'stop-reason': 'bored' }, /"stop-reason"/],
      [{ ...S, passes: 'no' }, /"passes" must be a list of at most 1001/], [{ ...S, passes: Array.from({ length: MIGRATION_MAX_PASSES + 1 }, () => SOURCE_STATS.passes[0]) }, /"passes" must be a list/],
      [{ ...S, passes: [{ pass: 'x' }] }, /passes\[0\]: "pass" must be a number/], [{ ...S, passes: [{ ...SOURCE_STATS.passes[0], deep: { a: { b: 1 } } }] }, /passes\[0\]: unknown field "deep"/],
      [{ ...S, blackout: { freeze: { a: { b: { c: 1 } } }, pages: 1, start: 1 } }, /blackout: "freeze" must be a number/], [{ ...S, blackout: [] }, /"blackout" must be a map/],
      [{ ...S, options: { compress: 'yes' } }, /migration option compress must be true or false/], [{ ...S, options: null }, /"options" must be a map/], [{ ...S, options: 5 }, /options must be a map/],
      [{ ...S, startedAt: 'yesterday' }, /"startedAt" must be a date/], [{ ...S, startedAt: 5 }, /"startedAt"/],
      [{ ...S, 'error-desc': 'x'.repeat(1025) }, /"error-desc" must be a string of at most 1024/],
      [{ ...S, junk: 1 }, /unknown field "junk"/], [{ ...S, ...Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`k${i}`, i])) }, /unknown field "k0"/],
      [JSON.parse('{"__proto__":{"polluted":1}}'), /unknown field "__proto__"|"ram" must be a map/],
    ];
    for (const [v, re] of cases) expect(decodeMigrationStats(v), JSON.stringify(v)?.slice(0, 200)).to.be.a('string').that.matches(re);
    expect(({} as Record<string, unknown>).polluted).to.equal(undefined);
  });

  it('never throws, and what it accepts has every field of its type (seeded fuzz)', () => {
    const next = seededRandom(0x57a7);
    const atoms = [null, undefined, true, 0, -1, 1.5, 1e308, NaN, Infinity, '', 'x', 'precopy', 'completed', 'kernel', 'worker', [], {}, Buffer.alloc(2)];
    const keys = [...Object.keys(SOURCE_STATS), 'x', '__proto__', 'toString'];
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const v: Record<string, unknown> = structuredClone(SOURCE_STATS) as unknown as Record<string, unknown>;
      for (let k = 0, n = 1 + Math.floor(next() * 3); k < n; k++) {
        const key = keys[Math.floor(next() * keys.length)]!;
        const r = next();
        if (r < 0.2) delete v[key];
        else if (r < 0.4 && v.ram && typeof v.ram === 'object') (v.ram as Record<string, unknown>)[Object.keys(SOURCE_STATS.ram)[Math.floor(next() * 13)]!] = atoms[Math.floor(next() * atoms.length)];
        else if (r < 0.5) v[key] = Object.hasOwn(SOURCE_STATS, key) ? structuredClone(SOURCE_STATS[key as keyof MigrationStats]) : null;
        else v[key] = atoms[Math.floor(next() * atoms.length)];
      }
      let d: unknown;
      expect(() => { d = decodeMigrationStats(v); }).to.not.throw();
      if (typeof d === 'string') continue;
      accepted++;
      const o = d as MigrationStats;
      for (const n of [o['total-time'], o.downtime ?? 0, o.pass, ...Object.values(o.ram)]) expect(Number.isFinite(n) && n >= 0).to.equal(true);
      if (Object.hasOwn(o, 'downtime')) expect(o.downtime).to.be.a('number');
      expect(o.method).to.be.oneOf(['precopy', 'postcopy', 'offline']);
      expect(o.passes).to.be.an('array');
    }
    expect(accepted).to.be.greaterThan(100);
  });
});

describe('migration peer frames', function () {
  this.timeout(20_000);
  const env = { v: CLUSTER_WIRE_VERSION, id: 9 };
  /** As a source sends them: each request numbered within its move (`rq`). */
  const who = { from: 'h1', auth: '0f'.repeat(32), mig: 'mig-0123abcd', rq: 5 };
  const frames = {
    migSetup: { ...env, op: 'migSetup', ...who, config: { name: 'vm1', memoryMb: 64 }, options: { compress: true } },
    migPages: { ...env, op: 'migPages', ...who, data: Buffer.from(encodePageBatch([{ pfn: 0, kind: PageKind.Zero, data: E }])) },
    migState: { ...env, op: 'migState', ...who, state: Buffer.from('{"vp":[]}') },
    migPremap: { ...env, op: 'migPremap', ...who, state: Buffer.from('{"gpadls":[]}') },
    migStatePages: { ...env, op: 'migState', ...who, state: Buffer.from('{"vp":[]}'), pages: Buffer.from(encodePageBatch([{ pfn: 3, kind: PageKind.Zero, data: E }])) },
    migCommit: { ...env, op: 'migCommit', ...who, stats: SOURCE_STATS },
    migAbort: { ...env, op: 'migAbort', ...who, reason: 'cancelled by the operator' },
    migProbe: { ...env, op: 'migProbe', ...who },
  };
  const value = (f: Record<string, unknown>): Record<string, unknown> => {
    const d = decodePeerRequest(encode(f));
    expect(d.ok, d.ok ? '' : d.message).to.equal(true);
    return d.ok ? d.value as unknown as Record<string, unknown> : {};
  };

  it('reads the move a worker\'s description names only when its id and destination are valid, and never throws', () => {
    expect(decodeDescribedMove({ mig: 'mig-0123abcd', to: 'h2' })).to.deep.equal({ mig: 'mig-0123abcd', to: 'h2' });
    const hostile = { get mig(): string { throw new Error('no'); } };
    for (const bad of [null, undefined, 'h2', 7, [], {}, { mig: 'mig-0123abcd' }, { mig: 'short', to: 'h2' }, { mig: 'mig-0123abcd', to: 'H2' }, { mig: 5, to: 'h2' }, hostile]) {
      expect(decodeDescribedMove(bad)).to.equal(null);
    }
  });

  it('reads the incoming migration a worker\'s description names (how far it got) only when both flags are booleans, and never throws', () => {
    expect(decodeDescribedIncoming({ started: true, postcopy: true })).to.deep.equal({ started: true, postcopy: true });
    expect(decodeDescribedIncoming({ started: false, postcopy: false })).to.deep.equal({ started: false, postcopy: false });
    // Post-copy only once the VM runs here.
    expect(decodeDescribedIncoming({ started: false, postcopy: true })).to.deep.equal({ started: false, postcopy: false });
    const hostile = { get started(): boolean { throw new Error('no'); }, postcopy: true };
    for (const bad of [null, undefined, 'x', 7, [], {}, { started: true }, { started: 1, postcopy: false }, { started: true, postcopy: 'no' }, hostile]) {
      expect(decodeDescribedIncoming(bad)).to.equal(null);
    }
  });

  it('decodes each op to exactly its fields', () => {
    for (const f of [frames.migSetup, frames.migCommit, frames.migProbe]) expect(value(f)).to.deep.equal(f);
    expect(value(frames.migAbort), 'an abort that names no VM').to.deep.equal({ ...frames.migAbort, vm: null, vmId: null });
    expect(decodePeerRequest(encode({ ...frames.migProbe, reason: 'x' })).ok, 'a probe carries nothing else').to.equal(false);
    // An abort may name the VM (its name and its config's id) for a destination that forgot the attempt.
    const named = { ...frames.migAbort, vm: 'web-1.a_b', vmId: '0F8FAD5B-D9CB-469F-A165-70867728950E' };
    expect(value(named)).to.deep.include({ vm: 'web-1.a_b', vmId: '0F8FAD5B-D9CB-469F-A165-70867728950E' });
    for (const [bad, why] of [[{ vm: '-x' }, /"vm"/], [{ vm: 'a'.repeat(64) }, /"vm"/], [{ vm: 7 }, /"vm"/], [{ vmId: 'not-a-uuid' }, /"vmId"/], [{ vmId: `${'0'.repeat(8)}-0000-0000-0000-${'0'.repeat(13)}` }, /"vmId"/], [{ vmId: ['x'] }, /"vmId"/]] as const) {
      const d = decodePeerRequest(encode({ ...named, ...bad }));
      expect(d.ok, JSON.stringify(bad)).to.equal(false);
      if (!d.ok) expect(d.message).to.match(why);
    }
    const withPages = frames.migStatePages;
    for (const [f, k] of [[frames.migPages, 'data'], [frames.migPremap, 'state'], [frames.migState, 'state'], [withPages, 'state'], [withPages, 'pages']] as const) {
      const v = value(f);
      expect(Object.keys(v)).to.have.members(f.op === 'migState' ? [...Object.keys(frames.migState), 'pages'] : Object.keys(f));
      expect(v[k]).to.be.instanceOf(Uint8Array);
      expect(Buffer.from(v[k] as Uint8Array).equals((f as Record<string, unknown>)[k] as Buffer)).to.equal(true);
    }
    // The state without the blackout's last batch (none was dirty), absent or nil.
    expect(value(frames.migState).pages).to.equal(null);
    expect(value({ ...frames.migState, pages: null }).pages).to.equal(null);
    expect(value({ ...frames.migCommit, stats: null }).stats).to.equal(null);
    const { stats: _, ...noStats } = frames.migCommit;
    expect(value(noStats)).to.deep.equal({ ...noStats, stats: null });
    expect(value({ ...frames.migAbort, from: 'a-long-nm0', mig: '01234567' })).to.deep.include({ from: 'a-long-nm0', mig: '01234567' });
    expect(value({ ...frames.migAbort, mig: 'a'.repeat(64) }).mig).to.equal('a'.repeat(64));
    expect((value({ ...frames.migState, state: Buffer.alloc(MIG_STATE_MAX_BYTES) }).state as Uint8Array).length).to.equal(MIG_STATE_MAX_BYTES);
  });

  it('reads a request\'s number within its move (rq; null from a source that sends none), and keys a numbered one for replay', () => {
    for (const f of Object.values(frames)) {
      expect(value(f).rq, f.op).to.equal(5);
      const { rq: _, ...bare } = f;
      expect(value(bare).rq, `${f.op} without rq`).to.equal(null);
      expect(value({ ...bare, rq: null }).rq, `${f.op} with rq nil`).to.equal(null);
      expect(value({ ...f, rq: Number.MAX_SAFE_INTEGER }).rq).to.equal(Number.MAX_SAFE_INTEGER);
      for (const bad of [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 1, '5', [5], { n: 5 }, true, Infinity, NaN]) {
        const d = decodePeerRequest(encode({ ...f, rq: bad }));
        expect(d.ok, `${f.op} rq ${String(bad)}`).to.equal(false);
        if (!d.ok) expect([d.id, d.message]).to.deep.equal([9, 'a request: "rq" must be a whole number from 1 to 9007199254740991']);
      }
    }
    // ping and sink carry no number.
    expect(decodePeerRequest(encode({ ...env, op: 'ping', from: 'h1', auth: who.auth, t: 1, rq: 5 })).ok).to.equal(false);
    const key = (f: Record<string, unknown>): string | null => {
      const d = decodePeerRequest(encode(f));
      return d.ok ? peerReplayKey(d.value) : 'undecoded';
    };
    expect(key(frames.migPages)).to.equal(`h1/${who.auth}/mig-0123abcd/migPages/5`);
    // Each part tells requests apart: another number, operation, move, sender or credential is another request.
    const others = [{ rq: 6 }, { op: 'migPremap', data: undefined, state: Buffer.from('{}') }, { mig: 'mig-0123abce' }, { from: 'h2' }, { auth: '0e'.repeat(32) }];
    for (const o of others) expect(key({ ...frames.migPages, ...o }), JSON.stringify(Object.keys(o))).to.not.equal(key(frames.migPages)).and.to.not.equal(null);
    const { rq: _, ...bare } = frames.migPages;
    expect(key(bare), 'a request without a number is carried out each time').to.equal(null);
    expect(key({ ...env, op: 'ping', from: 'h1', auth: who.auth, t: 1 })).to.equal(null);
    expect(key({ ...env, op: 'sink', from: 'h1', auth: who.auth, data: Buffer.alloc(1) })).to.equal(null);
  });

  it('refuses unknown fields, bad ids and names, and wrong or over-size payloads, with the id', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...frames.migSetup, extra: 1 }, /unknown field "extra"/], [{ ...frames.migPages, config: {} }, /unknown field "config"/],
      [{ ...frames.migSetup, config: [1] }, /"config" must be a map/], [{ ...frames.migSetup, options: undefined }, /"options" must be a map/],
      [{ ...frames.migSetup, config: new Date(0) }, /"config" must be a map/],
      [{ ...frames.migPages, data: 'text' }, /"data" must be bytes/], [{ ...frames.migPages, data: [1, 2] }, /"data" must be bytes/],
      [{ ...frames.migPages, data: Buffer.alloc(SINK_CHUNK_MAX_BYTES + 64 * 1024 + 1) }, /"data" must be bytes, at most 1114112/],
      [{ ...frames.migState, state: Buffer.alloc(MIG_STATE_MAX_BYTES + 1) }, /"state" must be bytes, at most 1048576/], [{ ...frames.migState, state: '{}' }, /"state" must be bytes/],
      [{ ...frames.migPremap, state: Buffer.alloc(MIG_STATE_MAX_BYTES + 1) }, /"state" must be bytes, at most 1048576/], [{ ...frames.migPremap, state: {} }, /"state" must be bytes/],
      [{ ...frames.migPremap, pages: Buffer.from([1]) }, /unknown field "pages"/],
      [{ ...frames.migState, pages: 'text' }, /"pages" must be bytes/], [{ ...frames.migState, pages: Buffer.alloc(SINK_CHUNK_MAX_BYTES + 64 * 1024 + 1) }, /"pages" must be bytes, at most 1114112/],
      [{ ...frames.migCommit, stats: 5 }, /"stats" must be a map/], [{ ...frames.migCommit, stats: [] }, /"stats" must be a map/],
      [{ ...frames.migCommit, stats: { downtime: 12 } }, /migCommit: migration statistics: "ram" must be a map/],
      [{ ...frames.migCommit, stats: { ...SOURCE_STATS, ram: null } }, /migCommit: migration statistics: "ram" must be a map/],
      [{ ...frames.migAbort, reason: '' }, /"reason" must be a string of 1 to 512/], [{ ...frames.migAbort, reason: 'x'.repeat(513) }, /"reason"/], [{ ...frames.migAbort, reason: undefined }, /"reason"/],
      ...['short', '0123456', 'a'.repeat(65), 'MIG-0123ABCD', 'mig_0123abcd', 'mig 0123abcd', 5, null].map((mig): [Record<string, unknown>, RegExp] => [{ ...frames.migPages, mig }, /"mig" must be a valid name/]),
      ...['H1', '1h', 'h'.repeat(11), '', 'h_1', 7].map((from): [Record<string, unknown>, RegExp] => [{ ...frames.migState, from }, /"from" must be a valid name/]),
      [{ ...frames.migAbort, v: 1 }, new RegExp(`cluster wire version 1 is not ${CLUSTER_WIRE_VERSION}`)],
      [{ ...frames.migPages, auth: undefined }, /needs "auth"/], [{ ...frames.migPages, auth: 'x'.repeat(64) }, /"auth"/],
    ];
    for (const [f, re] of cases) {
      const d = decodePeerRequest(encode(f));
      expect(d.ok, `${String(f.op)} ${re}`).to.equal(false);
      if (!d.ok) expect([d.id, re.test(d.message)], d.message).to.deep.equal([9, true]);
    }
    const noId = decodePeerRequest(encode({ ...frames.migAbort, id: 0 }));
    expect(noId.ok === false && noId.id).to.equal(0);
  });

  it('never throws on mutated migration frames (seeded fuzz)', () => {
    const next = seededRandom(0x316e);
    const valid = Object.values(frames).map((f) => encode(f));
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const b = mutate(next, valid[Math.floor(next() * valid.length)]!);
      let d: ReturnType<typeof decodePeerRequest> | undefined;
      expect(() => { d = decodePeerRequest(b); }).to.not.throw();
      if (!d!.ok) expect(typeof d!.message === 'string' && d!.message !== '' && typeof d!.id === 'number').to.equal(true);
      else if (d!.value.op.startsWith('mig')) {
        const v = d!.value as { mig: string; from: string; id: number; rq: number | null };
        expect(MIG_ID_RE.test(v.mig) && CLUSTER_HOST_RE.test(v.from) && v.id > 0, JSON.stringify(v)).to.equal(true);
        expect(v.rq === null || (Number.isSafeInteger(v.rq) && v.rq >= 1), `rq ${String(v.rq)}`).to.equal(true);
        const req = d!.value;
        expect(() => peerReplayKey(req)).to.not.throw();
        accepted++;
      }
    }
    expect(accepted).to.be.greaterThan(100);
  });
});

describe('migration VMWP frames', function () {
  this.timeout(20_000);
  const key = { cluster: 'lab', publicKey: 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7', secretKey: 'JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6' };
  const migOut = { t: 'migOut', mig: 'mig-0123abcd', from: 'h1', to: 'h2', endpoint: 'tcp://127.0.0.1:40001', auth: '0f'.repeat(32), key, config: { name: 'vm1' }, options: { postcopy: true } };
  const req = (body: Record<string, unknown>, id = 5): Record<string, unknown> => ({ t: 'req', id, body });
  const note = (body: Record<string, unknown>): Record<string, unknown> => ({ t: 'note', body });
  const throwsVmwp = (frame: unknown, re: RegExp, id: number | null, label: string): void => {
    let err: unknown;
    try { decodeVmwpFrame(encode(frame)); } catch (e) { err = e; }
    expect(err, label).to.be.instanceOf(VmwpDecodeError);
    expect((err as VmwpDecodeError).message, label).to.match(re);
    expect((err as VmwpDecodeError).id, label).to.equal(id);
  };

  it('decodes migration requests and notes', () => {
    for (const f of [req(migOut), req({ t: 'migCancel', reason: 'operator' }), req({ t: 'migCancel', reason: 'operator', force: true }), req({ t: 'migBooted', waitMs: 10000 }), note({ t: 'incomingReady', partitionId: 2, streamPort: null }), note({ t: 'incomingReady', partitionId: 2, streamPort: 40123 }), note({ t: 'migProgress', stats: { ...SOURCE_STATS, status: 'active' } }), note({ t: 'migSeen' }), note({ t: 'migRunning', postcopy: false }), note({ t: 'migFailed', message: 'the state is refused' })]) {
      expect(decodeVmwpFrame(encode(f))).to.deep.equal(f);
    }
    expect(decodeVmwpFrame(encode(req({ ...migOut, key: { ...key, extra: 1 } })))).to.deep.equal(req(migOut)); // the key is rebuilt from its three fields
    for (const [t, k] of [['migPages', 'data'], ['migPremap', 'state'], ['migState', 'state']] as const) {
      const f = decodeVmwpFrame(encode(req({ t, [k]: Buffer.from([1, 2, 3]) })));
      expect(f.t === 'req' && f.id).to.equal(5);
      const body = (f as { body: Record<string, unknown> }).body;
      expect(Object.keys(body)).to.have.members(t === 'migState' ? ['t', k, 'pages'] : ['t', k]);
      expect(Array.from(body[k] as Uint8Array)).to.deep.equal([1, 2, 3]);
      if (t === 'migState') expect(body.pages).to.equal(null);
    }
    const both = decodeVmwpFrame(encode(req({ t: 'migState', state: Buffer.from([1]), pages: Buffer.from([4, 5]) })));
    expect(Array.from((both as { body: { pages: Uint8Array } }).body.pages)).to.deep.equal([4, 5]);
    expect(decodeVmwpFrame(encode(note({ t: 'incomingReady', partitionId: 0x7fffffff })))).to.deep.include({ t: 'note' });
    // A worker of the build before says no stream port: it takes its stream from the root.
    expect(decodeVmwpFrame(encode(note({ t: 'incomingReady', partitionId: 3 })))).to.deep.equal(note({ t: 'incomingReady', partitionId: 3, streamPort: null }));
  });

  it('throws VmwpDecodeError on missing or wrong fields, with the id when one could be read', () => {
    const cases: Array<[unknown, RegExp, number | null, string]> = [
      [req({ ...migOut, key: undefined }), /fields key, config and options must be maps/, 5, 'no key'],
      [req({ ...migOut, config: [] }), /must be maps/, 5, 'config list'], [req({ ...migOut, options: Buffer.alloc(1) }), /must be maps/, 5, 'options bytes'],
      [req({ ...migOut, key: { ...key, publicKey: 'x'.repeat(41) } }), /field publicKey is not a string of at most 40/, 5, 'long public key'],
      [req({ ...migOut, key: { ...key, cluster: undefined } }), /field cluster is missing/, 5, 'no cluster'],
      [req({ ...migOut, endpoint: undefined }), /field endpoint is missing/, 5, 'no endpoint'], [req({ ...migOut, endpoint: 'x'.repeat(201) }), /field endpoint/, 5, 'long endpoint'],
      [req({ ...migOut, mig: 'm'.repeat(65) }), /field mig is not a string of at most 64/, 5, 'long mig'], [req({ ...migOut, to: 7 }), /field to is not a string/, 5, 'to number'],
      [req({ t: 'migCancel' }), /field reason is missing/, 5, 'no reason'], [req({ t: 'migCancel', reason: 'r', force: 'yes' }), /field force is not a boolean/, 5, 'force not a boolean'], [req({ t: 'migCancel', reason: 'r'.repeat(513) }), /field reason/, 5, 'long reason'],
      [req({ t: 'migPages', data: 'x' }), /field data is not bytes of at most 2 MiB/, 5, 'data string'],
      [req({ t: 'migPages', data: Buffer.alloc(2 * 1024 * 1024 + 1) }), /field data is not bytes/, 5, 'data over 2 MiB'],
      [req({ t: 'migBooted' }), /field waitMs/, 5, 'no waitMs'], [req({ t: 'migBooted', waitMs: 60001 }), /field waitMs/, 5, 'waitMs over 60 s'], [req({ t: 'migBooted', waitMs: -1 }), /field waitMs/, 5, 'negative waitMs'],
      [req({ t: 'migState', state: [1, 2] }), /field state is not bytes of at most 2 MiB/, 5, 'state list'], [req({ t: 'migState' }), /field state/, 5, 'no state'],
      [req({ t: 'migPremap', state: 'x' }), /field state is not bytes of at most 2 MiB/, 5, 'hint string'], [req({ t: 'migPremap' }), /field state/, 5, 'no hint'],
      [req({ t: 'migPremap', state: Buffer.alloc(2 * 1024 * 1024 + 1) }), /field state/, 5, 'hint over 2 MiB'],
      [req({ t: 'migState', state: Buffer.from('{}'), pages: 'x' }), /field pages is not bytes of at most 2 MiB/, 5, 'pages string'],
      [req({ t: 'migState', state: Buffer.from('{}'), pages: Buffer.alloc(2 * 1024 * 1024 + 1) }), /field pages/, 5, 'pages over 2 MiB'],
      [note({ t: 'incomingReady', partitionId: 1 }), /field partitionId is not an integer from 2 to 2147483647/, null, 'partition 1'],
      [note({ t: 'incomingReady', partitionId: 2.5 }), /field partitionId/, null, 'partition 2.5'], [note({ t: 'incomingReady' }), /field partitionId/, null, 'no partition'],
      [note({ t: 'incomingReady', partitionId: 2, streamPort: 0 }), /field streamPort is not an integer from 1 to 65535/, null, 'port 0'],
      [note({ t: 'incomingReady', partitionId: 2, streamPort: '80' }), /field streamPort/, null, 'port string'],
      [note({ t: 'migRunning' }), /field postcopy/, null, 'running without postcopy'], [note({ t: 'migFailed', message: 7 }), /field message/, null, 'failed number'],
      [note({ t: 'migProgress', stats: null }), /field stats is not a map/, null, 'stats null'], [note({ t: 'migProgress', stats: [1] }), /field stats is not a map/, null, 'stats list'],
      [note({ t: 'migProgress', stats: Buffer.alloc(2) }), /field stats is not a map/, null, 'stats bytes'],
      [{ t: 'req', body: { t: 'migCancel', reason: 'r' } }, /a request needs an id/, null, 'no id'], [{ t: 'req', id: 3, body: 'migCancel' }, /a request needs a body map/, 3, 'body string'],
      [note({ t: 'migBogus' }), /note type is unknown/, null, 'unknown note'],
    ];
    for (const [f, re, id, label] of cases) throwsVmwp(f, re, id, label);
  });

  it('only ever throws VmwpDecodeError on mutated or random frames (seeded fuzz)', () => {
    const next = seededRandom(0x7f3d);
    const valid = [req(migOut), req({ t: 'migCancel', reason: 'x' }), req({ t: 'migPages', data: Buffer.alloc(40, 1) }), req({ t: 'migState', state: Buffer.from('{}') }), req({ t: 'migState', state: Buffer.from('{}'), pages: Buffer.alloc(24, 2) }), req({ t: 'migPremap', state: Buffer.from('{"gpadls":[]}') }), req({ t: 'migBooted', waitMs: 5 }),
      note({ t: 'incomingReady', partitionId: 3, streamPort: 40000 }), note({ t: 'migProgress', stats: SOURCE_STATS }), note({ t: 'migRunning', postcopy: true }), note({ t: 'migFailed', message: 'x' })].map((f) => encode(f));
    let decoded = 0;
    for (let i = 0; i < 4000; i++) {
      for (const b of [mutate(next, valid[Math.floor(next() * valid.length)]!), rnd(next, Math.floor(next() * 48))]) {
        try {
          expect(decodeVmwpFrame(b).t).to.be.oneOf(['req', 'res', 'note']);
          decoded++;
        } catch (e) {
          expect(e, String(e)).to.be.instanceOf(VmwpDecodeError);
        }
      }
    }
    expect(decoded).to.be.greaterThan(100);
  });
});
