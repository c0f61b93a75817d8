/**
 * Which file starts a VM's process (pickEntry): its bundle while that is at least as new as the
 * newest compiled output, else the compiled entry (a stale or missing bundle never runs); and the
 * names of a host's socket directory and worker sockets.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '@hvlab/protocol';
import { pathToFileURL } from 'node:url';
import { getHeapCodeStatistics } from 'node:v8';
import { eagerCompile, hostPaths, pathHash, pickEntry } from '../src/paths.js';

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
  after(() => {
    eagerCompile(false);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A module of `n` functions nobody calls; `tag` keeps two copies apart in the module map. */
  function moduleOf(name: string, n: number, tag: string): string {
    const f = join(dir, name);
    const body = Array.from({ length: n }, (_, i) => `export function f${i}(a, b) { const x = a * ${i} + b; if (x > ${i}) return [x, a, b].map((v) => v + ${i}).join('${tag}'); return String(x); }`);
    writeFileSync(f, body.join('\n'));
    return pathToFileURL(f).href;
  }
  const bytecode = (): number => getHeapCodeStatistics().bytecode_and_metadata_size;

  it('compiles every function of what loads while it is on, and only on first call once it is off again', async () => {
    const eager = moduleOf('eager.mjs', 200, 'e');
    const lazy = moduleOf('lazy.mjs', 200, 'l');
    let before = bytecode();
    eagerCompile(true);
    try {
      await import(eager);
    } finally {
      eagerCompile(false);
    }
    const eagerBytes = bytecode() - before;
    before = bytecode();
    const m = (await import(lazy)) as Record<string, (a: number, b: number) => string>;
    const lazyBytes = bytecode() - before;
    // 200 functions compiled against a module's top level alone.
    expect(eagerBytes, `eager ${eagerBytes} B, lazy ${lazyBytes} B`).to.be.greaterThan(20 * Math.max(lazyBytes, 64));
    before = bytecode();
    expect(m.f7!(1, 1)).to.equal('15l8l8');
    expect(bytecode() - before, 'a lazy function compiled on its first call').to.be.greaterThan(0);
  });
});
