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
import { hostPaths, pathHash, pickEntry } from '../src/paths.js';

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

