/**
 * The warm pool (`hvlab up --warm N`, root/src/warm.ts): VM workers started ahead of need, each
 * with its partition process loaded, that `vm start` claims; the pool refills; nothing of it
 * outlives `down`, and a root that dies takes its waiting workers with it (the new root starts a
 * new pool).
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import type { ProcessInfo, VmInfo } from '@hvlab/protocol';
import { pidAlive } from '@hvlab/runtime';
import { TestHost, eventually } from './harness.js';

const warmPids = (ps: ProcessInfo[]): number[] => ps.filter((p) => p.role === 'vmwp' && p.vm === null).map((p) => p.pid);
/** The processes whose parent is `pid` (a warm VMWP's partition process). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('the warm pool of VM workers (real processes)', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('keeps N workers with their partition processes; a start claims one and the pool refills', async () => {
    await h.ok('up', '--lps', '1', '--warm', '2');
    let ps: ProcessInfo[] = [];
    expect(await eventually(async () => warmPids((ps = await h.json<ProcessInfo[]>('ps'))).length === 2, 10000), JSON.stringify(ps)).to.equal(true);
    const warm = warmPids(ps);
    const cmdline = (pid: number): string => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      } catch {
        return '';
      }
    };
    for (const pid of warm) {
      // Once its code is loaded, a warm worker names itself and has started its partition process.
      expect(await eventually(() => /^hvlab-vmwp \w+ \(warm\)/.test(cmdline(pid)), 10000), `warm worker ${pid} is named: ${cmdline(pid)}`).to.equal(true);
      expect(await eventually(() => childrenOf(pid).length === 1, 10000), `warm worker ${pid} has its partition process`).to.equal(true);
    }
    // And once both have loaded their code, the pool lists it as ready to be claimed.
    expect(await eventually(async () => (ps = await h.json<ProcessInfo[]>('ps')).filter((p) => p.vm === null && p.role === 'vmwp' && p.warm === 'ready').length === 2, 20000), JSON.stringify(ps)).to.equal(true);
    const table = await h.ok('ps');
    expect(table).to.match(/vmwp\s+- \(warm, ready\)/);
    await h.ok('vm', 'new', 'w1', '--memory', '16M', '--workload', 'counter');
    await h.ok('vm', 'start', 'w1');
    const v = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w1')!;
    expect(v.state).to.equal('Running');
    expect(warm, 'the VM runs in a worker of the pool').to.include(v.pids.vmwp);
    expect(childrenOf(v.pids.vmwp!), 'and in the partition process that worker had started').to.deep.equal([v.pids.partition]);
    expect(await eventually(async () => warmPids(await h.json<ProcessInfo[]>('ps')).length === 2, 10000), 'the pool refills').to.equal(true);
    const st = await h.json<{ progress: number }>('vm', 'status', 'w1');
    expect(await eventually(async () => (await h.json<{ progress: number }>('vm', 'status', 'w1')).progress > st.progress, 5000), 'the VM runs').to.equal(true);
  });

  it('a root that dies takes its waiting workers and their partition processes with it; the new root starts a new pool', async () => {
    const before = warmPids(await h.json<ProcessInfo[]>('ps'));
    const partitions = before.flatMap(childrenOf);
    expect(before).to.have.length(2);
    expect(partitions).to.have.length(2);
    const rec = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } };
    process.kill(rec.pids.root, 'SIGKILL');
    expect(await eventually(() => [...before, ...partitions].every((p) => !pidAlive(p)), 10000), 'the waiting workers and their partitions left').to.equal(true);
    let after: number[] = [];
    expect(await eventually(async () => {
      const r = await h.run('ps', '--json');
      if (r.code !== 0) return false;
      after = warmPids(JSON.parse(r.stdout) as ProcessInfo[]);
      return after.length === 2;
    }, 20000), 'a new pool').to.equal(true);
    expect(after.some((p) => before.includes(p))).to.equal(false);
    // The running VM was not part of the pool and kept running.
    expect((await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w1')!.state).to.equal('Running');
    await h.ok('down');
  });
});
