/**
 * A halted VP thread waits on its dispatch word with no timeout: the scheduler wakes it when it
 * dispatches it, and whoever stops it wakes it until it has left its loop (`stopVpThreads`). These
 * tests check, without any clock, that the wait has no timeout (the kernel's view of the blocked
 * syscall in /proc), that stopVpThreads gets the thread out of it, and that a process whose VP
 * waits can still exit (process.exit joins worker threads, so one asleep in a futex would hold it).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Dispatch } from '@hvlab/protocol';
import { CTL_LIVE, stopVpThreads } from '../src/vp.js';
import { startLoneVp } from './fixtures/vp-start.js';

const fixture = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'vp-start.ts');
/** The futex syscall number per architecture (as /proc/<pid>/task/<tid>/syscall shows it). */
const FUTEX_NR: Partial<Record<string, number>> = { x64: 202, arm64: 98 };

/**
 * The threads of this process blocked in FUTEX_WAIT (shared) for `expected`, with the timeout each
 * gave (0: none). Empty where /proc/<pid>/task/<tid>/syscall cannot be read.
 */
function futexWaiters(expected: number): Array<{ tid: number; timeout: bigint }> {
  const nr = FUTEX_NR[process.arch];
  const out: Array<{ tid: number; timeout: bigint }> = [];
  for (const t of readdirSync('/proc/self/task')) {
    let sc = '';
    try {
      sc = readFileSync(`/proc/self/task/${t}/syscall`, 'utf8').trim();
    } catch {
      continue;
    }
    const f = sc.split(' ');
    if (Number(f[0]) !== nr || f.length < 5) continue;
    if ((BigInt(f[2]!) & 0x7fn) !== 0n || Number(BigInt.asIntN(32, BigInt(f[3]!))) !== expected) continue;
    out.push({ tid: Number(t), timeout: BigInt(f[4]!) });
  }
  return out;
}

describe('a halted VP waits with no timeout, and is stopped by waking it', function () {
  this.timeout(30000);

  it('sleeps in FUTEX_WAIT on its dispatch word with no timeout, and stopVpThreads gets it out of the loop', async function () {
    if (FUTEX_NR[process.arch] === undefined) this.skip();
    const vp = await startLoneVp();
    try {
      // The VP asked for an LP (Dispatch.Start) that nobody grants: it waits on that value.
      let waiters = futexWaiters(Dispatch.Start);
      while (waiters.length === 0) {
        await new Promise((r) => setTimeout(r, 5));
        waiters = futexWaiters(Dispatch.Start);
      }
      expect(waiters.map((w) => w.timeout), 'the timeout argument of the wait').to.deep.equal([0n]);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(1);
      expect(stopVpThreads(vp.start.control, vp.wake)).to.equal(true);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(0);
      await vp.stopped;
    } finally {
      stopVpThreads(vp.start.control, vp.wake);
      await vp.worker.terminate();
    }
  });

  it('a process whose VP waits for an LP exits on process.exit once its exit handler stopped the VP', async () => {
    const c = spawn(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', fixture, 'vp-exit'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      const code = await new Promise<number | null>((r) => c.once('exit', (x) => r(x)));
      expect(code, stderr).to.equal(0);
    } finally {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  });
});
