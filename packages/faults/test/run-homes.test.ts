/**
 * The sweep of temporary run homes whose runs are gone (run-homes.ts): what goes, what stays.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { markTemporaryHome, TEMPORARY_HOME_FILE } from '@hvlab/cluster';
import { RUN_HOME_RE, sweepOrphanedRunHomes } from '../src/index.js';

describe('the sweep of temporary run homes', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-run-homes-unit-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('removes a marked home whose maker is gone and an old empty unmarked one; keeps a live run\'s, a new or non-empty unmarked one, other names and links', async () => {
    // A maker that is gone: a process that ran and exited.
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(gone.stdout);
    const make = (name: string): string => {
      const h = join(dir, name);
      mkdirSync(h);
      return h;
    };
    const orphan = make('hvlab-experiment-Ab12Cd');
    mkdirSync(join(orphan, 'faults'));
    writeFileSync(join(orphan, 'faults', 'nemesis.lock'), '123');
    writeFileSync(join(orphan, TEMPORARY_HOME_FILE), JSON.stringify({ pid: deadPid, start: 1 }));
    const live = make('hvlab-chaos-Zz99zz');
    markTemporaryHome(live);
    const oldEmpty = make('hvlab-chaos-Old000');
    const old = (Date.now() - 5 * 60_000) / 1000;
    utimesSync(oldEmpty, old, old);
    const newEmpty = make('hvlab-chaos-New000');
    const full = make('hvlab-experiment-Full00');
    writeFileSync(join(full, 'notes'), 'x');
    utimesSync(full, old, old);
    const other = make('hvlab-somethingelse-Ab12Cd');
    writeFileSync(join(other, TEMPORARY_HOME_FILE), JSON.stringify({ pid: deadPid, start: 1 }));
    const target = make('elsewhere');
    writeFileSync(join(target, TEMPORARY_HOME_FILE), JSON.stringify({ pid: deadPid, start: 1 }));
    symlinkSync(target, join(dir, 'hvlab-experiment-Link00'));

    const removed = await sweepOrphanedRunHomes(dir);
    expect(removed.sort()).to.deep.equal([orphan, oldEmpty].sort());
    expect(readdirSync(dir).sort()).to.deep.equal(['elsewhere', 'hvlab-chaos-New000', 'hvlab-chaos-Zz99zz', 'hvlab-experiment-Full00', 'hvlab-experiment-Link00', 'hvlab-somethingelse-Ab12Cd']);
    expect(readdirSync(target), 'nothing through the link').to.include(TEMPORARY_HOME_FILE);
    void newEmpty;
  });

  it('takes only the names mkdtemp gives a run\'s home', () => {
    for (const n of ['hvlab-experiment-a1B2c3', 'hvlab-chaos-XXXXXX']) expect(RUN_HOME_RE.test(n), n).to.equal(true);
    for (const n of ['hvlab-experiment-', 'hvlab-experiment-abc', 'hvlab-chaos-abcdefg', 'hvlab-report-x-abcdef', 'hvlab-chaos-abc/ef', '../hvlab-chaos-abcdef']) expect(RUN_HOME_RE.test(n), n).to.equal(false);
  });

  it('a directory it cannot read is no failure', async () => {
    expect(await sweepOrphanedRunHomes(join(dir, 'missing'))).to.deep.equal([]);
  });
});
