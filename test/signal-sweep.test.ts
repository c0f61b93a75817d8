/**
 * An interrupted test run leaves nothing behind (test/signal-sweep.ts): an inner mocha run brings a
 * host up and waits; Ctrl-C's SIGINT to it (as a terminal sends it) takes the host down before the
 * run exits. Its only time bounds are mocha's timeout and the waits' own limits.
 */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hostPaths } from '@hvlab/runtime';
import { hostProcesses, sweepHost } from '@hvlab/host';
import { clusterTag, networkLeftovers } from '@hvlab/cluster';
import { eventually, shmFiles } from './harness.js';
import { sweptShmFiles } from './signal-sweep.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** An inner mocha run of `spec` (test/fixtures) with the sweep loaded and SWEEP_HOME set: its process, its output so far, and its end. */
function innerRun(spec: string, home: string): { mocha: ChildProcess; output: () => string; exited: Promise<void> } {
  const mocha = spawn(process.execPath, [
    join(repo, 'node_modules', 'mocha', 'bin', 'mocha.js'), '--no-config', '--node-option', 'import=tsx', '--node-option', 'conditions=hvlab-source',
    '--require', 'test/signal-sweep.ts', '--timeout', '0', `test/fixtures/${spec}`,
  ], { cwd: repo, env: { ...process.env, SWEEP_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  mocha.stdout!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  mocha.stderr!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  const exited = new Promise<void>((r) => mocha.once('close', () => r()));
  return { mocha, output: () => out, exited };
}

describe('an interrupted test run', () => {
  it('takes down the hosts its tests brought up (SIGINT to mocha), leaving no process, no /dev/shm file and no temporary folder of its tests', async function () {
    this.timeout(120000);
    const home = mkdtempSync(join(tmpdir(), 'hvlab-sweep-'));
    const { mocha, output, exited } = innerRun('sweep-inner.spec.ts', home);
    let hostId: string | null = null;
    try {
      expect(await eventually(() => /UP \d+/.test(output()), 90000), `the inner run brought no host up: ${output()}`).to.equal(true);
      expect(output()).to.match(/UP 0/);
      hostId = (JSON.parse(readFileSync(hostPaths(home).hostFile, 'utf8')) as { hostId: string }).hostId;
      expect(hostProcesses(hostId).length, 'the host runs').to.be.greaterThan(0);
      mocha.kill('SIGINT');
      await exited;
      expect(output()).to.contain(`taking down the host at ${home}`);
      expect(hostProcesses(hostId), 'processes of the host').to.deep.equal([]);
      expect(shmFiles(hostId), '/dev/shm files of the host').to.deep.equal([]);
      const inner = /PID (\d+)/.exec(output())![1];
      expect(existsSync(`/dev/shm/hvlab-ut-sweep-${inner}-1`), 'a unit test\'s region of the run').to.equal(false);
      const tmp = /TMP (\S+)/.exec(output())![1]!;
      expect(tmp.startsWith(join(tmpdir(), 'hvlab-sweep-tmp-')), tmp).to.equal(true);
      expect(existsSync(tmp), 'a test\'s temporary folder').to.equal(false);
    } finally {
      if (mocha.exitCode === null && mocha.signalCode === null) mocha.kill('SIGKILL');
      if (hostId) sweepHost(hostPaths(home), hostId);
      const pid = /PID (\d+)/.exec(output())?.[1];
      if (pid) rmSync(`/dev/shm/hvlab-ut-sweep-${pid}-1`, { force: true });
      const tmp = /TMP (\S+)/.exec(output())?.[1];
      if (tmp) rmSync(tmp, { recursive: true, force: true });
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('interrupted while a test\'s CLI brings a cluster up: the CLI is stopped first, and cluster down leaves nothing of it (no fabric, namespace or host process)', async function () {
    this.timeout(120000);
    const home = mkdtempSync(join(tmpdir(), 'hvlab-sweep-'));
    const { mocha, output, exited } = innerRun('sweep-inner-up.spec.ts', home);
    try {
      // Mid-up: the cluster's record is claimed, and the CLI goes on making its network and fabric.
      expect(await eventually(() => existsSync(join(home, 'cluster', 'cluster.json')), 90000), `the inner run's up began: ${output()}`).to.equal(true);
      mocha.kill('SIGINT');
      await exited;
      const ofHome = (): number[] => readdirSync('/proc').map(Number).filter((pid) => {
        try {
          return Number.isInteger(pid) && readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').some((e) => e.startsWith(`HVLAB_HOME=${home}`) || e.startsWith(`HVLAB_FABRIC_HOME=${home}`));
        } catch { return false; }
      });
      expect(await eventually(() => ofHome().length === 0, 10000), `processes of the home left: ${ofHome().join(' ')}`).to.equal(true);
      expect(networkLeftovers(clusterTag(home)), 'the network of the home').to.deep.equal({ namespaces: [], links: [] });
    } finally {
      if (mocha.exitCode === null && mocha.signalCode === null) mocha.kill('SIGKILL');
      spawnSync(process.execPath, [join(repo, 'packages', 'cli', 'bin', 'hvlab.mjs'), '--home', home, 'cluster', 'down'], { stdio: 'ignore', timeout: 30000 });
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('removes only the unit-test regions of its own run, never a host\'s or another run\'s', () => {
    const names = [
      'hvlab-ut-futex-41-8b9e7db2-6', 'hvlab-test-wp-41', 'hvlab-test-ring-41-3', 'hvlab-ut41xab12cd-p2-mem', 'hvlab-us41x00ff00aa-p1-vp', 'hvlab-hc41xabcdef-sched',
      'hvlab-ut-futex-419-8b9e7db2-6', 'hvlab-test-wp-419', 'hvlab-ut419xab12cd-p2-mem', 'hvlab-01e5ab-p2-mem', 'hvlab-ut601e0daf107e-p2-mem', 'other-41',
    ];
    expect(sweptShmFiles(names, 41)).to.deep.equal(names.slice(0, 6));
  });
});
