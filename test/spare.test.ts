/**
 * Spare VM workers with real processes: a host keeps one loaded worker without a VM (`ps` shows it
 * as spare); a cold start takes it (the VM's worker is that process) and a new one comes; a root
 * killed with -9 takes its spare and the spare's partition process with it while the VM runs on,
 * and the restarted root keeps a new spare; `up --spare 0` keeps none and a start spawns its
 * worker; bad values are refused before anything starts.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import type { ProcessInfo, VmInfo } from '@hvlab/protocol';
import { pidAlive } from '@hvlab/runtime';
import { TestHost, childrenOf, eventually } from './harness.js';

const spares = (ps: ProcessInfo[]): number[] => ps.filter((p) => p.role === 'vmwp' && p.vm === null && p.warm === 'spare').map((p) => p.pid);

describe('spare VM workers (real processes)', function () {
  this.timeout(120000);

  it('a cold start takes the spare and a new one comes; a root killed with -9 takes its spare along, the VM runs on, and the new root keeps a spare', async () => {
    const h = new TestHost();
    try {
      await h.ok('up', '--lps', '1');
      let ps: ProcessInfo[] = [];
      expect(await eventually(async () => spares(ps = await h.json<ProcessInfo[]>('ps')).length === 1, 10000), JSON.stringify(ps)).to.equal(true);
      const [spare] = spares(ps);
      // The spare has started its partition process (its first act, before it loads the worker).
      expect(await eventually(() => childrenOf(spare!).length === 1, 10000), 'the spare\'s partition process').to.equal(true);
      const [spareChild] = childrenOf(spare!);
      await h.ok('vm', 'new', 'a', '--memory', '16M', '--workload', 'counter');
      await h.ok('vm', 'start', 'a');
      const a = (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'a')!;
      expect(a.state).to.equal('Running');
      expect(a.pids.vmwp, 'the VM\'s worker is the spare').to.equal(spare);
      expect(a.pids.partition, 'and its partition process the spare\'s').to.equal(spareChild);
      expect(await eventually(async () => {
        const s = spares(await h.json<ProcessInfo[]>('ps'));
        return s.length === 1 && s[0] !== spare;
      }, 10000), 'a new spare').to.equal(true);
      const [second] = spares(await h.json<ProcessInfo[]>('ps'));
      expect(await eventually(() => childrenOf(second!).length === 1, 10000)).to.equal(true);
      const secondChild = childrenOf(second!)[0]!;
      const rec = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } };
      process.kill(rec.pids.root, 'SIGKILL');
      expect(await eventually(() => !pidAlive(second!) && !pidAlive(secondChild), 10000), 'the spare and its partition process left with the root').to.equal(true);
      // The VM kept running; the new root finds it and keeps a new spare.
      expect(await eventually(async () => {
        const l = await h.json<VmInfo[]>('vm', 'list').catch(() => []);
        const s = spares(await h.json<ProcessInfo[]>('ps').catch(() => []));
        return l.find((v) => v.name === 'a')?.state === 'Running' && s.length === 1 && s[0] !== second;
      }, 20000), 'the VM runs on and the new root keeps a spare').to.equal(true);
      await h.ok('vm', 'turn-off', 'a');
    } finally {
      await h.destroyLeavingNothing();
    }
  });

  it('a start whose root dies before its worker reads the start-up input is abandoned by that worker, and the VM starts again cleanly', async () => {
    const h = new TestHost();
    try {
      await h.ok('up', '--lps', '2');
      let ps: ProcessInfo[] = [];
      expect(await eventually(async () => spares(ps = await h.json<ProcessInfo[]>('ps')).length === 1, 10000), JSON.stringify(ps)).to.equal(true);
      const [spare] = spares(ps);
      expect(await eventually(() => childrenOf(spare!).length === 1, 10000)).to.equal(true);
      const [spareChild] = childrenOf(spare!);
      await h.ok('vm', 'new', 'b', '--memory', '16M', '--workload', 'counter');
      // A slow worker: stopped, so the start's input waits in its pipe while its root dies.
      process.kill(spare!, 'SIGSTOP');
      let continued = false;
      try {
        const starting = h.run('vm', 'start', 'b');
        expect(await eventually(async () => (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'b')?.state === 'Starting', 10000), 'Starting').to.equal(true);
        const rec = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } };
        process.kill(rec.pids.root, 'SIGKILL');
        await starting;
        expect(await eventually(async () => (await h.run('vm', 'list')).code === 0, 30000), 'a new root').to.equal(true);
        process.kill(spare!, 'SIGCONT');
        continued = true;
      } finally {
        if (!continued) process.kill(spare!, 'SIGCONT');
      }
      // The worker finds its root gone and leaves with its partition process, before making anything.
      expect(await eventually(() => !pidAlive(spare!) && !pidAlive(spareChild!), 10000), 'the abandoned worker left').to.equal(true);
      expect((await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'b')?.state).to.equal('Off');
      await h.ok('vm', 'start', 'b');
      expect((await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'b')?.state).to.equal('Running');
      await h.ok('vm', 'turn-off', 'b');
    } finally {
      await h.destroyLeavingNothing();
    }
  });

  it('up --spare 0 keeps none and a start spawns its worker; bad values are refused before anything starts', async () => {
    const h = new TestHost();
    try {
      for (const [args, re] of [
        [['up', '--spare', '9'], /--spare 9 is invalid: 0 to 8 spare workers/],
        [['up', '--spare', '-1'], /--spare -1 is invalid/],
        [['up', '--hosts', '2', '--spare', '1'], /--hosts brings up a cluster: .*--spare are for one host/],
      ] as const) {
        const r = await h.run(...args);
        expect(r.code, args.join(' ')).to.not.equal(0);
        expect(r.stderr).to.match(re);
      }
      await h.ok('up', '--lps', '1', '--spare', '0');
      await h.ok('vm', 'new', 'b', '--memory', '16M');
      await h.ok('vm', 'start', 'b');
      const ps = await h.json<ProcessInfo[]>('ps');
      expect(spares(ps)).to.deep.equal([]);
      expect(ps.filter((p) => p.role === 'vmwp').map((p) => p.vm)).to.deep.equal(['b']);
      await h.ok('vm', 'turn-off', 'b');
    } finally {
      await h.destroyLeavingNothing();
    }
  });
});
