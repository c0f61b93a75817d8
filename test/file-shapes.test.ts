/**
 * A FIFO where hvlab expects a file of its home held the reader in open() for good: the root (a
 * worker record), the hypervisor's main thread (the lock file), the nemesis's warden (nemesis.json),
 * a starting worker (a saved state), the CLI (`logs`, the cluster key). Each reader now opens
 * without blocking and reads regular files only. The readers run in a child with a timeout, so a
 * regression fails here instead of hanging the suite.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TestHost } from './harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..');

describe('files of a home that are FIFOs', function () {
  this.timeout(120000);

  it('hold no reader: each says nothing is there, or that it is not a file', () => {
    const home = mkdtempSync(join(tmpdir(), 'hvlab-fifo-'));
    try {
      for (const d of ['run/logs', 'cluster', 'faults', 'vms/v.saved']) mkdirSync(join(home, d), { recursive: true });
      for (const f of ['run/host.lock', 'run/logs/root.log', 'cluster/fabric.json', 'faults/nemesis.json', 'faults/active.json', 'faults/faults.log', 'vms/v.saved/state.json']) execFileSync('mkfifo', [join(home, f)]);
      const r = spawnSync(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', join(here, 'fixtures', 'fifo-readers.ts'), home], { cwd: repo, encoding: 'utf8', timeout: 60000 });
      expect(r.signal, `a reader blocked (stderr: ${r.stderr})`).to.equal(null);
      expect(r.status, r.stderr).to.equal(0);
      const got = JSON.parse(r.stdout) as Record<string, { ok?: unknown; error?: string }>;
      expect(got.lockOwner).to.deep.equal({ ok: 0 });
      expect(got.readRegularTail!.error).to.match(/root\.log is a FIFO, not a file/);
      expect(got.readFabricFile).to.deep.equal({ ok: null });
      expect(got.nemesisPid).to.deep.equal({ ok: null });
      expect(got.lastFaultNumber).to.deep.equal({ ok: 0 });
      expect(got.heldLinks).to.deep.equal({ ok: [] });
      expect(got.readSavedState!.error).to.match(/state\.json of VM "v" is unreadable: .*is a FIFO, not a file/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('`hvlab logs` reads the logs that are files and passes over a FIFO among them', async () => {
    const h = new TestHost();
    try {
      const logs = h.paths.logDir;
      mkdirSync(logs, { recursive: true });
      writeFileSync(join(logs, 'root.log'), JSON.stringify({ level: 30, time: '2024-01-01T00:00:00.000Z', role: 'root', msg: 'a line of a file' }) + '\n');
      execFileSync('mkfifo', [join(logs, 'zz.log')]);
      const r = await Promise.race([h.run('logs'), new Promise<null>((res) => setTimeout(() => res(null), 30000))]);
      expect(r, 'logs returned').to.not.equal(null);
      expect(r!.code, r!.stderr).to.equal(0);
      expect(r!.stdout).to.include('a line of a file');
    } finally {
      await h.destroy();
    }
  });
});
