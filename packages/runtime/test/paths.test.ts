/**
 * Which file starts a VM's process (pickEntry): its bundle while that is at least as new as the
 * newest compiled output, else the compiled entry (a stale or missing bundle never runs).
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pickEntry } from '../src/paths.js';

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
