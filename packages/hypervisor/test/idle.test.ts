/**
 * An idle hypervisor sleeps: its scheduler thread waits on the doorbell with no timeout while
 * nothing is due, so it publishes VP accounting only when it runs. These tests check what that
 * must not break, without any clock thresholds:
 *   - observers still see accounting up to now: `listPartitions` adds the time since the last
 *     publication (VpPage.accountedNs) to the total of the state the VP is shown in;
 *   - a CPU % asked for after a quiet spell (nothing samples run time unasked) averages since the
 *     last sample, or since the VPs were created;
 *   - a process whose scheduler thread sleeps with no timeout can still exit: process.exit joins
 *     worker threads, so the server asks the thread to stop as the process exits.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VpPage, VpRunState, vpPageOffset } from '@hvlab/protocol';
import { shmAvailable } from '@hvlab/shm';
import { Lab, recordingScheduler, sweepShm } from './lab.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..');
const fixture = join(here, 'fixtures', 'server-exit.mjs');
/** The futex syscall number per architecture (as /proc/<pid>/task/<tid>/syscall shows it). */
const FUTEX_NR: Partial<Record<string, number>> = { x64: 202, arm64: 98 };

/** Whether a thread of `pid` sleeps in a shared FUTEX_WAIT with no timeout (only the addon's futex is shared). */
function sleepsWithoutTimeout(pid: number): boolean {
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tasks.some((t) => {
    try {
      const f = readFileSync(`/proc/${pid}/task/${t}/syscall`, 'utf8').trim().split(' ');
      return f.length >= 5 && Number(f[0]) === FUTEX_NR[process.arch] && (BigInt(f[2]!) & 0x7fn) === 0n && BigInt(f[4]!) === 0n;
    } catch {
      return false;
    }
  });
}

describe('an idle hypervisor sleeps', function () {
  this.timeout(30000);
  before(function () {
    if (!shmAvailable()) this.skip();
  });

  describe('VP accounting between publications', () => {
    let lab: Lab;
    beforeEach(() => {
      lab = new Lab({ scheduler: recordingScheduler() });
    });
    afterEach(() => lab.close());

    /** Writes what a scheduler pass publishes for VP 0, as of `agoNs` before now. */
    function publish(id: number, state: number, ms: { run: number; ready: number; wait: number }, agoNs: number): void {
      const p = lab.hv.partition(id)!;
      const off = vpPageOffset(0);
      const f64 = new Float64Array(p.vpRegion!);
      Atomics.store(new Int32Array(p.vpRegion!), (off + VpPage.state) >> 2, state);
      f64[(off + VpPage.runMs) >> 3] = ms.run;
      f64[(off + VpPage.readyMs) >> 3] = ms.ready;
      f64[(off + VpPage.waitMs) >> 3] = ms.wait;
      f64[(off + VpPage.accountedNs) >> 3] = agoNs === Infinity ? 0 : Number(process.hrtime.bigint()) - agoNs;
    }
    const vp0 = (id: number) => lab.hv.listPartitions().find((p) => p.id === id)!.cpu.vps[0]!;

    it('a halted VP\'s wait time runs on from the last publication; its run and ready time do not', () => {
      const c = lab.child({ vps: 1 });
      publish(c.id, VpRunState.Waiting, { run: 7, ready: 3, wait: 5 }, 2e9);
      const v = vp0(c.id);
      expect(v.state).to.equal('Waiting');
      expect(v.waitMs).to.be.at.least(2005);
      expect([v.runMs, v.readyMs]).to.deep.equal([7, 3]);
    });

    it('a running VP\'s run time runs on, so its CPU % is not stale while the scheduler sleeps', () => {
      const c = lab.child({ vps: 1 });
      publish(c.id, VpRunState.Running, { run: 7, ready: 3, wait: 5 }, 2e9);
      const v = vp0(c.id);
      expect(v.runMs).to.be.at.least(2007);
      expect([v.readyMs, v.waitMs]).to.deep.equal([3, 5]);
    });

    it('the first CPU % after a quiet spell is the average since the VPs were created, not 0 (nothing sampled it meanwhile)', async () => {
      const c = lab.child({ vps: 1 });
      await new Promise((r) => setTimeout(r, 400));
      // 100 ms of run time in the ~400 ms since the VP region was made: about 25 %.
      publish(c.id, VpRunState.Waiting, { run: 100, ready: 0, wait: 300 }, Infinity);
      const pct = lab.hv.listPartitions().find((p) => p.id === c.id)!.cpu.percent;
      expect(pct).to.be.above(0);
      expect(pct).to.be.at.most(25.5);
    });

    it('accounting that was never published (or that a guest zeroed) is shown as it is', () => {
      const c = lab.child({ vps: 1 });
      publish(c.id, VpRunState.Waiting, { run: 7, ready: 3, wait: 5 }, Infinity);
      const v = vp0(c.id);
      expect([v.runMs, v.readyMs, v.waitMs]).to.deep.equal([7, 3, 5]);
    });
  });

  it('a process whose scheduler thread sleeps with no timeout exits on process.exit, its server never closed', async function () {
    if (FUTEX_NR[process.arch] === undefined) this.skip();
    const hostId = `ui${randomBytes(5).toString('hex')}`;
    const c = spawn(process.execPath, [fixture, hostId], { cwd: repo, stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => c.once('exit', (x) => r(x)));
    try {
      // Its scheduler thread, with nothing to schedule, sleeps on the doorbell with no timeout.
      while (!sleepsWithoutTimeout(c.pid!) && c.exitCode === null) await new Promise((r) => setTimeout(r, 20));
      c.stdin!.end('exit\n');
      expect(await exited, stderr).to.equal(0);
    } finally {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      sweepShm(hostId);
    }
  });
});
