/**
 * Which file starts a VM's process (pickEntry): its bundle while that is at least as new as the
 * newest compiled output, else the compiled entry (a stale or missing bundle never runs); and the
 * names of a host's socket directory and worker sockets.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { seededRandom } from '@hvlab/protocol';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { canonicalHome, decodeHostRecord, hostPaths, pathHash, pathsForRecord, pickEntry, processEnv, vmProcessEnv } from '../src/paths.js';

describe('paths: a bundle or the compiled entry', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-paths-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('takes a bundle no older than the newest build, and the compiled entry when it is older or missing', () => {
    const compiled = join(dir, 'boot.js');
    const bundle = join(dir, 'vmwp.mjs');
    writeFileSync(compiled, '');
    expect(pickEntry(compiled, bundle, 0), 'no bundle').to.equal(compiled);
    writeFileSync(bundle, '');
    const t = new Date('2026-01-01T00:00:10Z');
    utimesSync(bundle, t, t);
    expect(pickEntry(compiled, bundle, t.getTime() - 5000), 'built before the bundle').to.equal(bundle);
    expect(pickEntry(compiled, bundle, t.getTime()), 'built at the same time').to.equal(bundle);
    expect(pickEntry(compiled, bundle, t.getTime() + 5000), 'compiled again after the bundle').to.equal(compiled);
  });
});

describe('paths: names derived from the home and the VM id', () => {
  it("pathHash is the first 12 hex digits of node:crypto's sha1, for strings of every length and script", () => {
    const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex').slice(0, 12);
    const names = ['', 'a', 'abc', '/root/.hvlab', 'é', '日本語のホーム', '\u{1F600}'];
    for (let n = 50; n <= 70; n++) names.push('x'.repeat(n)); // padding across a block boundary
    names.push('y'.repeat(1000));
    const rnd = seededRandom(7);
    for (let i = 0; i < 300; i++) names.push(String.fromCodePoint(...Array.from({ length: Math.floor(rnd() * 130) }, () => Math.floor(rnd() * 0xd7ff) + 1)));
    for (const s of names) expect(pathHash(s), JSON.stringify(s.slice(0, 20))).to.equal(sha1(s));
  });

  it('no two of 20000 homes share a socket directory, and a VM id names its worker socket', () => {
    const dirs = new Set<string>();
    for (let i = 0; i < 20000; i++) dirs.add(hostPaths(`/tmp/hvlab-test-${i}`).sockDir);
    expect(dirs.size).to.equal(20000);
    const p = hostPaths('/tmp/x');
    expect(p.vmwpEndpoint('a')).to.not.equal(p.vmwpEndpoint('b'));
    expect(p.vmwpEndpoint('a')).to.equal(`ipc://${p.sockDir}/w-${pathHash('a')}`);
    // ZeroMQ refuses ipc paths past ~107 bytes: the names stay short.
    expect(p.vmwpEndpoint('0123456789abcdef0123456789abcdef').length).to.be.below(60 + tmpdir().length);
  });
});


describe('paths: eager compilation of code loaded ahead of need', () => {
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-eager-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  // Measured in a child of its own (fixtures/eager-probe.ts): in this busy process V8 may flush
  // old bytecode or free dead scripts between two readings, and a reading could shrink (CI saw
  // "eager -258056 B" once).
  function probe<T>(...args: string[]): T {
    const fixture = fileURLToPath(new URL('./fixtures/eager-probe.ts', import.meta.url));
    const r = spawnSync(process.execPath, ['--no-flush-bytecode', '--expose-gc', '--import', 'tsx', fixture, dir, ...args], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status, r.stderr).to.equal(0);
    return JSON.parse(r.stdout) as T;
  }

  it('compiles every function of what loads while it is on, and only on first call once it is off again', () => {
    const m = probe<{ eager: number; lazy: number; firstCall: number; r: string; n: number }>();
    expect(m.n).to.equal(200);
    expect(m.r).to.equal('15l8l8');
    // 200 functions compiled against a module's top level alone.
    expect(m.eager, `eager ${m.eager} B, lazy ${m.lazy} B`).to.be.greaterThan(20 * Math.max(m.lazy, 64));
    expect(m.firstCall, 'a lazy function compiled on its first call').to.be.greaterThan(0);
  });

  it('eagerCompileAfter turns it on only once every load settled, a failed one too; a code cache made lazily is refused while it is on', () => {
    const m = probe<{ whileWaiting: number; afterLoads: number; cacheRefusedWhenEager: boolean; cacheAcceptedWhenLazy: boolean; n2: number }>('after');
    expect(m.n2).to.equal(400);
    expect(m.afterLoads, `after ${m.afterLoads} B, while waiting ${m.whileWaiting} B`).to.be.greaterThan(20 * Math.max(m.whileWaiting, 64));
    // Why the entries load Node's modules and the rest first (paths.ts, eagerCompileAfter).
    expect(m.cacheAcceptedWhenLazy, 'the cache under the flags it was made with').to.equal(true);
    expect(m.cacheRefusedWhenEager, 'the same cache with --no-lazy set').to.equal(true);
  });
});

describe('paths: the environment of the processes hvlab starts', () => {
  it('drops NODE_EXTRA_CA_CERTS (read at every start, never used), keeps the rest, extra over base', () => {
    const base = { PATH: '/bin', NODE_EXTRA_CA_CERTS: '/etc/ssl/certs/ca-certificates.crt', A: '1' };
    expect(processEnv(base, { A: '2', B: '3' })).to.deep.equal({ PATH: '/bin', A: '2', B: '3' });
    expect(processEnv(base, { NODE_EXTRA_CA_CERTS: '/x' })).to.not.have.property('NODE_EXTRA_CA_CERTS');
    expect(base.NODE_EXTRA_CA_CERTS, 'the caller\'s object untouched').to.equal('/etc/ssl/certs/ca-certificates.crt');
    const vm = vmProcessEnv(base, { C: '4' });
    expect(vm).to.include({ PATH: '/bin', MALLOC_ARENA_MAX: '2', C: '4' }).and.not.have.property('NODE_EXTRA_CA_CERTS');
  });
});

describe('paths: the host record (run/host.json) as read back', () => {
  const good = { hostId: '0a1b2c', home: '/h', pids: { hypervisor: 10, root: 11 }, sockDir: '/h/run/sock', lps: 2, startedAt: '2026-12-05T07:00:00.000Z', rootRestarts: 0 };

  it('takes what the hypervisor writes, and ignores a field it does not know', () => {
    expect(decodeHostRecord(JSON.parse(JSON.stringify(good)))).to.deep.equal(good);
    const { rootRestarts: _r, ...older } = good;
    expect(decodeHostRecord({ ...older, newer: [1] })).to.deep.equal(older);
  });

  it('refuses a record with any field of the wrong kind', () => {
    const bad: unknown[] = [
      null, 1, 'x', [], {}, { ...good, hostId: 'ABCDEF' }, { ...good, hostId: '0a1b2' }, { ...good, pids: null }, { ...good, pids: [10, 11] },
      { ...good, pids: { hypervisor: 0, root: 11 } }, { ...good, pids: { hypervisor: 10, root: -1 } }, { ...good, pids: { hypervisor: 1.5, root: 11 } },
      { ...good, pids: { hypervisor: '10', root: 11 } }, { ...good, home: 1 }, { ...good, sockDir: {} }, { ...good, lps: 0 }, { ...good, lps: 2.5 },
      { ...good, lps: '2' }, { ...good, startedAt: null }, { ...good, rootRestarts: -1 }, { ...good, rootRestarts: 'no' },
    ];
    for (const b of bad) expect(decodeHostRecord(b), JSON.stringify(b)).to.equal(null);
  });

  it('never throws on any JSON value, and what it takes is well formed (fuzzed)', () => {
    const field = fc.oneof(fc.jsonValue(), fc.constant(undefined));
    const record = fc.record({
      hostId: fc.oneof(fc.stringMatching(/^[0-9a-f]{6}$/), field), home: fc.oneof(fc.string(), field), sockDir: fc.oneof(fc.string(), field),
      pids: fc.oneof(fc.record({ hypervisor: fc.oneof(fc.integer(), field), root: fc.oneof(fc.integer(), field) }), field),
      lps: fc.oneof(fc.integer({ min: -2, max: 5000 }), field), startedAt: fc.oneof(fc.string(), field), rootRestarts: field,
    }, { requiredKeys: [] });
    fc.assert(fc.property(fc.oneof(fc.jsonValue(), record), (v) => {
      const r = decodeHostRecord(v);
      if (r === null) return;
      expect(r.hostId).to.match(/^[0-9a-f]{6}$/);
      for (const p of [r.pids.hypervisor, r.pids.root]) expect(Number.isSafeInteger(p) && p > 0).to.equal(true);
      expect(typeof r.home === 'string' && typeof r.sockDir === 'string' && typeof r.startedAt === 'string').to.equal(true);
      expect(Number.isSafeInteger(r.lps) && r.lps >= 1).to.equal(true);
      // What it gives back is a copy of the checked fields, not the object it was given.
      expect(r).to.not.equal(v);
    }), { numRuns: 3000, seed: 0x4057 });
  });
});

describe('a host record\'s socket directory', () => {
  it('is used when it is this home\'s (another TMPDIR), and never when it names any other directory', () => {
    const p = hostPaths('/srv/lab');
    const name = p.sockDir.split('/').pop()!;
    const other = pathsForRecord(p, { sockDir: `/var/tmp/x/${name}` });
    expect(other.sockDir).to.equal(`/var/tmp/x/${name}`);
    expect(other.mgmtEndpoint).to.equal(`ipc:///var/tmp/x/${name}/mgmt`);
    expect(other.vmwpEndpoint('a')).to.match(new RegExp(`^ipc:///var/tmp/x/${name}/w-`));
    expect(other.hostFile).to.equal(p.hostFile);
    for (const bad of ['/', '/etc', 'relative/' + name, `/tmp/../etc/${name}`, `/tmp//${name}`, `/tmp/${name}-x`, `/tmp/hvlab-000000000000`, '']) {
      expect(pathsForRecord(p, { sockDir: bad }).sockDir, bad).to.equal(p.sockDir);
    }
    expect(pathsForRecord(p, null)).to.equal(p);
  });
});

describe('a home\'s one spelling (canonicalHome)', () => {
  let dir = '';
  beforeEach(() => {
    dir = realpathSync(mkdtempSync(join(tmpdir(), 'hvlab-canon-')));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is the same through a symlink, relative or with .., whether the home exists yet or not, and so are its socket names', () => {
    const real = join(dir, 'real');
    mkdirSync(real);
    symlinkSync(real, join(dir, 'link'));
    symlinkSync('real', join(dir, 'rel-link'));
    for (const given of [real, join(dir, 'link'), join(dir, 'rel-link'), `${real}/`, join(dir, 'link', '..', 'real'), relative(process.cwd(), join(dir, 'link'))]) {
      expect(canonicalHome(given), given).to.equal(real);
      expect(hostPaths(given).sockDir, given).to.equal(hostPaths(real).sockDir);
      expect(hostPaths(given).home, given).to.equal(real);
    }
    // Not made yet: its nearest existing parent's real path and the rest, what it will be once made.
    expect(canonicalHome(join(dir, 'link', 'cluster', 'hosts', 'h1'))).to.equal(join(real, 'cluster', 'hosts', 'h1'));
    expect(hostPaths(join(dir, 'link', 'new')).sockDir).to.equal(hostPaths(join(real, 'new')).sockDir);
    // A symlink whose target is not made yet: followed, as mkdir -p through it would.
    symlinkSync(join(dir, 'later'), join(dir, 'dangling'));
    expect(canonicalHome(join(dir, 'dangling', 'x'))).to.equal(join(dir, 'later', 'x'));
    mkdirSync(join(dir, 'later', 'x'), { recursive: true });
    expect(canonicalHome(join(dir, 'dangling', 'x'))).to.equal(join(dir, 'later', 'x'));
  });

  it('is the path as given (resolved) when it cannot be followed: a loop of symlinks, a file in the way', () => {
    symlinkSync(join(dir, 'b'), join(dir, 'a'));
    symlinkSync(join(dir, 'a'), join(dir, 'b'));
    expect(canonicalHome(join(dir, 'a', 'home'))).to.equal(join(dir, 'a', 'home'));
    writeFileSync(join(dir, 'file'), '');
    expect(canonicalHome(join(dir, 'file', 'home'))).to.equal(join(dir, 'file', 'home'));
    expect(canonicalHome('/')).to.equal('/');
  });
});
