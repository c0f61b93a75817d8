/**
 * The root partition process is not a single point of failure (issue 9): kill -9 it while four
 * VMs run, and the hypervisor's supervisor starts a new root that re-attaches to every VM; the
 * VMs never stop. Progress while no root exists is read straight from each guest's status page
 * in shared memory, because nothing else can answer then.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { STATUS_PAGE_GPA, StatusPage, type HostInfo, type VmInfo, type IcServiceInfo } from '@hvlab/protocol';
import { openRegion } from '@hvlab/shm';
import { TestHost, eventually, sleep } from './harness.js';

const NAMES = ['c1', 'c2', 's1', 's2'];

describe('a root partition that dies and comes back (real processes)', function () {
  this.timeout(180000);
  const h = new TestHost({ HVLAB_IC_HEARTBEAT_MS: '200' });

  after(() => h.destroyLeavingNothing());

  it('kill -9 of the root stops no VM: all keep progressing, vm list shows them Running again, and vm stop still works through the shutdown service', async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'c1', '--memory', '16M', '--workload', 'counter:2000');
    await h.ok('vm', 'new', 'c2', '--memory', '16M', '--workload', 'counter:2000');
    await h.ok('vm', 'new', 's1', '--memory', '16M', '--workload', 'spin');
    await h.ok('vm', 'new', 's2', '--memory', '16M', '--workload', 'spin', '--vps', '2');
    for (const n of NAMES) await h.ok('vm', 'start', n);
    await h.ok('vm', 'kvp', 'c2', 'set', 'owner', 'alice');
    const before = await h.json<VmInfo[]>('vm', 'list');
    const rec = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { hostId: string; pids: { root: number; hypervisor: number } };

    // Each guest's progress counter, read from its memory with no process in between.
    const progressOf = new Map<string, () => bigint>();
    for (const v of before) {
      expect(v.state, v.name).to.equal('Running');
      const mem = openRegion(`hvlab-${rec.hostId}-p${v.partitionId}-mem`);
      const dv = new DataView(mem);
      progressOf.set(v.name, () => dv.getBigUint64(STATUS_PAGE_GPA + StatusPage.progress, true));
    }
    const p0 = new Map(NAMES.map((n) => [n, progressOf.get(n)!()]));

    process.kill(rec.pids.root, 'SIGKILL');
    // While no root answers, every guest keeps running.
    await sleep(300);
    const p1 = new Map(NAMES.map((n) => [n, progressOf.get(n)!()]));
    for (const n of NAMES) expect(p1.get(n)! > p0.get(n)!, `${n} progressed while the root was down`).to.equal(true);

    const t0 = Date.now();
    let after: VmInfo[] = [];
    const back = await eventually(async () => {
      const r = await h.run('vm', 'list', '--json');
      if (r.code !== 0) return false;
      after = JSON.parse(r.stdout) as VmInfo[];
      return after.length === 4 && after.every((v) => v.state === 'Running');
    }, 60000);
    expect(back, 'vm list answers again with every VM Running').to.equal(true);
    console.log(`      (management API back after ${Date.now() - t0} ms)`);

    const info = await h.json<HostInfo>('host', 'info');
    expect(info.pids.root).to.not.equal(rec.pids.root);
    expect(info.pids.hypervisor).to.equal(rec.pids.hypervisor);
    expect(info.rootRestarts).to.equal(1);
    for (const n of NAMES) {
      const a = before.find((v) => v.name === n)!;
      const b = after.find((v) => v.name === n)!;
      // The same worker and partition processes: nothing was restarted.
      expect(b.pids, n).to.deep.equal(a.pids);
      expect(b.partitionId, n).to.equal(a.partitionId);
      expect(progressOf.get(n)!() > p1.get(n)!, `${n} still progressing`).to.equal(true);
    }

    // The VMs' integration services are still there: KVP and heartbeat through the new root.
    expect((await h.json<{ value: string }>('vm', 'kvp', 'c2', 'get', 'owner')).value).to.equal('alice');
    const ic = await h.json<IcServiceInfo[]>('vm', 'ic', 'c1');
    expect(ic.find((s) => s.service === 'heartbeat')!.status).to.equal('OK');

    // Stop-VM through the guest's shutdown service, on a VM the new root re-attached to.
    const stopped = await h.json<VmInfo>('vm', 'stop', 'c1');
    expect(stopped.state).to.equal('Off');
    const list = await h.json<VmInfo[]>('vm', 'list');
    expect(list.find((v) => v.name === 'c1')!.lastStateReason).to.equal('shut down by the guest');
    for (const n of ['c2', 's1', 's2']) expect(list.find((v) => v.name === n)!.state).to.equal('Running');
  });
});
