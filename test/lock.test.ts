/**
 * One host per home (issue 9): the hypervisor holds `run/host.lock` for its whole life, so two
 * `hvlab up` at once on a fresh home start exactly one host, and a removed `run/host.json` does
 * not let a second host (and a second copy of every VM) start on the same home.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VmInfo } from '@hvlab/protocol';
import { hostProcesses, MgmtClient, readHost, startingHypervisor } from '@hvlab/host';
import { eventually, shmFiles, TestHost } from './harness.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'packages', 'cli', 'bin', 'hvlab.mjs');

describe('one host per home', function () {
  this.timeout(120000);
  // No spare worker: it is replaced on its own schedule, which would change the process counts below.
  const h = new TestHost({ HVLAB_SPARE: '0' });
  after(() => h.destroyLeavingNothing());

  it('two hvlab up at once on a fresh home: one starts a host, the other is refused naming it', async () => {
    const [a, b] = await Promise.all([h.run('up', '--lps', '1'), h.run('up', '--lps', '1')]);
    const codes = [a.code, b.code].sort();
    expect(codes, `${a.stderr} | ${b.stderr}`).to.deep.equal([0, 1]);
    const loser = a.code === 0 ? b : a;
    expect(loser.stderr).to.match(/a host is already up for .*hvlab down/);
    // Exactly one hypervisor and one root carry this home's host id.
    const ps = await h.json<Array<{ role: string }>>('ps');
    expect(ps.map((p) => p.role).sort()).to.deep.equal(['hypervisor', 'root']);
  });

  it('with run/host.json removed, up is still refused and the VM does not run twice', async () => {
    await h.ok('vm', 'new', 'solo', '--memory', '8M');
    await h.ok('vm', 'start', 'solo');
    const id = h.hostId;
    const before = hostProcesses(id).length;
    rmSync(h.paths.hostFile);
    const r = await h.run('up', '--lps', '1');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/a host is already up/);
    // Nothing new was started, and the old host's processes are all still there.
    expect(hostProcesses(id).length).to.equal(before);
  });
});

describe('a host asked to shut down by its management API alone', function () {
  this.timeout(60000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('leaves no socket directory and no record behind (a down killed once it asked left both for the next command)', async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', 'v', '--memory', '8M');
    await h.ok('vm', 'start', 'v');
    const id = h.hostId;
    const sockDir = h.paths.sockDir;
    expect(existsSync(sockDir)).to.equal(true);
    // What "hvlab down" asks first; the CLI that asked is not there to sweep after it.
    const c = new MgmtClient(h.paths.mgmtEndpoint, { watch: readHost(h.paths)! });
    try {
      await c.request('shutdown', {}, 5000);
    } finally {
      c.close();
    }
    expect(await eventually(() => hostProcesses(id).length === 0, 20000), 'the host went down').to.equal(true);
    expect(existsSync(sockDir), 'its socket directory').to.equal(false);
    expect(existsSync(h.paths.hostFile), 'its record').to.equal(false);
    expect(existsSync(h.paths.lockFile), 'its lock').to.equal(false);
    expect(shmFiles(id)).to.deep.equal([]);
    expect((await h.ok('down')).trim()).to.equal('no host was up');
  });
});

describe('a host whose home is removed under it', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('a lock file removed alone is written again, naming the same hypervisor, and up is still refused', async () => {
    await h.ok('up', '--lps', '1');
    const hv = (JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { hypervisor: number } }).pids.hypervisor;
    rmSync(h.paths.lockFile);
    // Created exclusively, then its pid written: wait for the pid.
    const owner = (): number => {
      try {
        return Number(readFileSync(h.paths.lockFile, 'utf8').trim());
      } catch {
        return 0;
      }
    };
    expect(await eventually(() => owner() !== 0, 10000), 'the lock file is back').to.equal(true);
    expect(owner()).to.equal(hv);
    const r = await h.run('up', '--lps', '1');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/a host is already up/);
  });

  it('a host record removed, cut short or replaced by a FIFO is written again, so the CLI still reaches the host', async () => {
    const hv = (JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { hypervisor: number } }).pids.hypervisor;
    const recordOk = (): boolean => {
      try {
        return statSync(h.paths.hostFile).isFile() && (JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { hypervisor: number } }).pids.hypervisor === hv;
      } catch {
        return false;
      }
    };
    for (const damage of [(): void => rmSync(h.paths.hostFile), (): void => writeFileSync(h.paths.hostFile, '{'), (): void => {
      rmSync(h.paths.hostFile);
      execFileSync('mkfifo', [h.paths.hostFile]);
    }]) {
      damage();
      expect(await eventually(recordOk, 10000), 'the record is back').to.equal(true);
      expect((await h.run('vm', 'list')).code, 'the CLI reaches the host').to.equal(0);
    }
  });

  it('down stops a host whose record is gone, by the lock\'s hypervisor and its host id', async () => {
    // Its stopped hypervisor holds the host's end: down kills what is left after 1 s here (8 s by default).
    const h2 = new TestHost({ HVLAB_TEST_DOWN_GRACE_MS: '1000' });
    try {
      await h2.ok('up', '--lps', '1');
      const id = h2.hostId;
      // A stopped hypervisor does not write its record again: only the lock says who holds the home.
      const hv = (JSON.parse(readFileSync(h2.paths.hostFile, 'utf8')) as { pids: { hypervisor: number } }).pids.hypervisor;
      process.kill(hv, 'SIGSTOP');
      rmSync(h2.paths.hostFile);
      const r = await h2.run('down');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(new RegExp(`^host ${id} is down`));
      expect(await eventually(() => hostProcesses(id).length === 0, 10000), 'nothing of it runs').to.equal(true);
    } finally {
      await h2.destroyLeavingNothing();
    }
  });

  it('down of a host whose record is gone, run with another TMPDIR than the host\'s, stops it by its own sockets and removes them (it took its own TMPDIR\'s and left the host\'s)', async () => {
    const hostTmp = mkdtempSync(join(tmpdir(), 'hvlab-test-tmp-'));
    const h2 = new TestHost({ TMPDIR: hostTmp, HVLAB_TEST_DOWN_GRACE_MS: '1000' });
    try {
      await h2.ok('up', '--lps', '1');
      const id = h2.hostId;
      const sockDir = (JSON.parse(readFileSync(h2.paths.hostFile, 'utf8')) as { sockDir: string }).sockDir;
      expect(sockDir.startsWith(hostTmp), sockDir).to.equal(true);
      // As after an `up` killed before the record was written: the lock's hypervisor holds the home.
      const hv = (JSON.parse(readFileSync(h2.paths.hostFile, 'utf8')) as { pids: { hypervisor: number } }).pids.hypervisor;
      process.kill(hv, 'SIGSTOP');
      rmSync(h2.paths.hostFile);
      const r = spawnSync(process.execPath, [CLI, 'down'], { env: { ...process.env, HVLAB_HOME: h2.home, TMPDIR: tmpdir() }, encoding: 'utf8', timeout: 60000 });
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.match(new RegExp(`^host ${id} is down`));
      expect(await eventually(() => hostProcesses(id).length === 0, 10000), 'nothing of it runs').to.equal(true);
      expect(existsSync(sockDir), 'the host\'s socket directory').to.equal(false);
    } finally {
      await h2.destroyLeavingNothing();
      rmSync(hostTmp, { recursive: true, force: true });
    }
  });

  it('down of a host whose processes are all gone and whose record is damaged removes its /dev/shm files, sockets and record (it said "no host was up" and left them)', async () => {
    const hostTmp = mkdtempSync(join(tmpdir(), 'hvlab-test-tmp-'));
    const h2 = new TestHost({ TMPDIR: hostTmp });
    try {
      await h2.ok('up', '--lps', '1');
      await h2.ok('vm', 'new', 'a', '--memory', '8M');
      await h2.ok('vm', 'start', 'a');
      const id = h2.hostId;
      const sockDir = (JSON.parse(readFileSync(h2.paths.hostFile, 'utf8')) as { sockDir: string }).sockDir;
      expect(shmFiles(id).length, 'the host has /dev/shm files').to.be.above(0);
      for (const pid of hostProcesses(id)) process.kill(pid, 'SIGKILL');
      expect(await eventually(() => hostProcesses(id).length === 0, 10000), 'every process of the host is gone').to.equal(true);
      // Cut short: it no longer decodes, but still names the host and its sockets.
      writeFileSync(h2.paths.hostFile, `{"hostId":"${id}","sockDir":"${sockDir}","ho`);
      const r = spawnSync(process.execPath, [CLI, 'down'], { env: { ...process.env, HVLAB_HOME: h2.home }, encoding: 'utf8', timeout: 60000 });
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.match(new RegExp(`^host ${id} is down`));
      expect(shmFiles(id), '/dev/shm files of the host').to.deep.equal([]);
      expect(existsSync(sockDir), 'its socket directory').to.equal(false);
      expect(existsSync(h2.paths.hostFile), 'its damaged record').to.equal(false);
      expect(existsSync(h2.paths.vmwpDir), 'its workers\' records').to.equal(false);
    } finally {
      await h2.destroyLeavingNothing();
      rmSync(hostTmp, { recursive: true, force: true });
    }
  });

  it('down of a host whose up was killed while its hypervisor was still starting (not yet named, no lock) stops that hypervisor: the host does not come up after the down', async () => {
    const h3 = new TestHost();
    const { spawn } = await import('node:child_process');
    const { procEnviron, procPids, procTitle } = await import('@hvlab/shm/procfs');
    const up = spawn(process.execPath, [CLI, 'up', '--lps', '1'], { env: { ...process.env, HVLAB_HOME: h3.home }, stdio: 'ignore' });
    let hv = 0;
    try {
      // The hypervisor as soon as it runs: stopped before it loads (a slow start on a busy machine).
      expect(await eventually(() => {
        hv = procPids().find((p) => procEnviron(p)?.get('HVLAB_HOME') === h3.home && startingHypervisor(p)) ?? 0;
        if (hv === 0) return false;
        process.kill(hv, 'SIGSTOP');
        return true;
      }, 20000, 1), 'its hypervisor started').to.equal(true);
      up.kill('SIGKILL');
      expect(procTitle(hv), 'not named yet').to.not.match(/^hvlab-/);
      const r = spawnSync(process.execPath, [CLI, 'down'], { env: { ...process.env, HVLAB_HOME: h3.home }, encoding: 'utf8', timeout: 60000 });
      expect(r.status, r.stderr).to.equal(0);
      // It said "no host was up", and the host came up once its hypervisor ran on.
      expect(r.stdout).to.match(/^host [0-9a-f]{6} is down/);
      const { procState } = await import('@hvlab/shm/procfs');
      expect(await eventually(() => [null, 'Z', 'X'].includes(procState(hv)), 10000), `the hypervisor is gone (${procState(hv)})`).to.equal(true);
    } finally {
      try {
        process.kill(hv, 'SIGCONT');
      } catch { /* gone */ }
      up.kill('SIGKILL');
      await h3.destroyLeavingNothing();
    }
  });

  it('goes down with its VMs: no process, /dev/shm file or socket directory is left, and the home is not made again', async () => {
    await h.ok('vm', 'new', 'gone', '--memory', '8M');
    await h.ok('vm', 'start', 'gone');
    const id = h.hostId;
    const sockDir = h.paths.sockDir;
    expect(hostProcesses(id).length, 'hypervisor, root, the VM\'s two processes').to.be.greaterThanOrEqual(4);
    expect(shmFiles(id)).to.not.deep.equal([]);
    rmSync(h.home, { recursive: true, force: true });
    const gone = await eventually(() => hostProcesses(id).length === 0 && shmFiles(id).length === 0 && !existsSync(sockDir) && !existsSync(h.home), 30000);
    expect(gone, `left: processes ${hostProcesses(id).join(', ')}; shm ${shmFiles(id).join(', ')}; socket dir ${existsSync(sockDir)}; home ${existsSync(h.home)}`).to.equal(true);
  });

  it('a home removed and its run directory made again at once (as a reopened log file would) is still a removed home', async () => {
    await h.ok('up', '--lps', '1');
    const id = h.hostId;
    rmSync(h.home, { recursive: true, force: true });
    // The same path at once, before the host looks: an inode number may be reused for it.
    mkdirSync(h.paths.runDir, { recursive: true });
    const gone = await eventually(() => hostProcesses(id).length === 0 && shmFiles(id).length === 0, 30000);
    expect(gone, `left: processes ${hostProcesses(id).join(', ')}; shm ${shmFiles(id).join(', ')}`).to.equal(true);
    expect(existsSync(h.paths.lockFile), 'no lock was written into the new directory').to.equal(false);
  });

  it('up at once after the home was removed under a running host waits for that host to go, then starts its own', async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', 'first', '--memory', '8M');
    await h.ok('vm', 'start', 'first');
    const old = h.hostId;
    rmSync(h.home, { recursive: true, force: true });
    // The same path at once: the new host's socket directory is the old one's (named after it).
    await h.ok('up', '--lps', '1');
    const fresh = h.hostId;
    expect(fresh).to.not.equal(old);
    expect(hostProcesses(old), 'the old host is gone').to.deep.equal([]);
    expect(shmFiles(old)).to.deep.equal([]);
    // The new host answers on its sockets, and runs a VM.
    await h.ok('vm', 'new', 'second', '--memory', '8M');
    await h.ok('vm', 'start', 'second');
    const vms = await h.json<Array<{ name: string; state: string }>>('vm', 'list');
    expect(vms.map((v) => [v.name, v.state])).to.deep.equal([['second', 'Running']]);
  });
});
