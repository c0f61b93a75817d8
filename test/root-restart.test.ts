/**
 * The root partition process is not a single point of failure (issue 9): kill -9 it while four
 * VMs run, and the hypervisor's supervisor starts a new root that re-attaches to every VM; the
 * VMs never stop. Progress while no root exists is read straight from each guest's status page
 * in shared memory, because nothing else can answer then.
 */
import { expect } from 'chai';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PartitionProperty, STATUS_PAGE_GPA, StatusPage, type HostInfo, type VmInfo, type IcServiceInfo } from '@hvlab/protocol';
import { openRegion } from '@hvlab/shm';
import { pidAlive } from '@hvlab/runtime';
import { hostProcesses, MgmtClient, readHost } from '@hvlab/host';
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
    expect(await h.ok('host', 'info'), 'the text says so too').to.match(/^root restarts\s+1$/m);
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

describe('a root that dies while a pause it asked for still runs (real processes)', function () {
  this.timeout(180000);
  // The root tells its caller after 0.5 s (10 s by default), so that it can be killed while the
  // worker still pauses (a pause whose VPs do not stop fails after 5 s in the worker).
  const h = new TestHost({ HVLAB_SUSPEND_ANSWER_MS: '500' });

  after(() => h.destroyLeavingNothing());

  it('the new root waits for that pause as the old one would have: Pausing until it ends, then Paused, never Running behind a paused VM', async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'sp', '--memory', '16M', '--workload', 'spin');
    await h.ok('vm', 'start', 'sp');
    const vm = (): Promise<VmInfo | undefined> => h.json<VmInfo[]>('vm', 'list').then((l) => l.find((v) => v.name === 'sp'));
    const { partition } = (await vm())!.pids;
    expect(partition).to.be.a('number');
    const rootPid = (await h.json<HostInfo>('host', 'info')).pids.root;
    // A spinning VP on a stopped partition process cannot leave its LP: the pause waits.
    process.kill(partition!, 'SIGSTOP');
    let t0 = 0;
    try {
      const p = await h.run('vm', 'pause', 'sp');
      t0 = Date.now();
      expect(p.code).to.not.equal(0);
      expect(p.stdout + p.stderr).to.match(/it stays Pausing until its worker answers/);
      process.kill(rootPid, 'SIGKILL');
      // The supervisor's new root re-attaches while the worker still waits for the VPs.
      let seen = '';
      const back = await eventually(async () => {
        const r = await h.run('vm', 'list', '--json');
        if (r.code !== 0) return false;
        const v = (JSON.parse(r.stdout) as VmInfo[]).find((x) => x.name === 'sp');
        seen = `${v?.state} (${v?.lastStateReason})`;
        return true;
      }, 20000);
      expect(back, 'the new root answers').to.equal(true);
      console.log(`      (the new root answered ${Date.now() - t0} ms after the caller heard; the worker's pause waits 5 s)`);
      expect(seen, `the new root takes the pause in progress (${Date.now() - t0} ms after the caller heard)`).to.equal('Pausing (re-attached during a pause)');
    } finally {
      process.kill(partition!, 'SIGCONT');
    }
    // The VPs stop once their process runs: the pause ends, and the new root says Paused.
    expect(await eventually(async () => (await vm())?.state === 'Paused', 15000), 'Paused once the worker said so').to.equal(true);
    const p0 = (await vm())!.workload.progress;
    await sleep(500);
    expect((await vm())!.workload.progress, 'the paused VM stands still').to.equal(p0);
    await h.ok('vm', 'resume', 'sp');
    expect(await eventually(async () => ((await vm())!.workload.progress ?? 0) > (p0 ?? 0), 10000), 'it runs again once resumed').to.equal(true);
    await h.ok('vm', 'turn-off', 'sp');
  });
});

describe('a root that dies while an lp-shrink fault lasts (real processes)', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('the new root learns the shrink from the hypervisor: host info and its fault list show the LPs in effect, and the fault\'s clear gives every LP back', async () => {
    await h.ok('up', '--lps', '2');
    const f = await h.json<{ id: string }>('fault', 'inject', 'lp-shrink', '--target', 'host:local', '--lps', '1', '--for', '120s');
    const info = (): Promise<HostInfo> => h.json<HostInfo>('host', 'info');
    /** The root's own list of the host's faults (what the nemesis asks of it). */
    const hostList = async (): Promise<Array<[string, number]>> => {
      const c = new MgmtClient(h.paths.mgmtEndpoint, { watch: readHost(h.paths) });
      try {
        return (await c.request<{ host: Array<{ id: string; lps: number }> }>('faultList')).host.map((x) => [x.id, x.lps]);
      } finally {
        c.close();
      }
    };
    expect((await info()).lpShrink).to.deep.include({ lps: 1, fault: f.id });
    /** Kills the root; resolves with the new root's host info once it answers. */
    const restartRoot = async (): Promise<HostInfo> => {
      const old = (await info()).pids.root;
      process.kill(old, 'SIGKILL');
      let now: HostInfo | null = null;
      expect(await eventually(async () => {
        const r = await h.run('host', 'info', '--json');
        now = r.code === 0 ? (JSON.parse(r.stdout) as HostInfo) : null;
        return now !== null && now.pids.root !== old;
      }, 30000), 'a new root answers').to.equal(true);
      return now!;
    };
    // It learns the shrink before its first answer.
    const shrink = (await restartRoot()).lpShrink;
    expect(shrink, 'the new root shows the shrink').to.deep.include({ lps: 1, fault: f.id });
    expect(shrink!.remainingMs).to.be.above(0).and.at.most(120_000);
    expect(await h.ok('host', 'info')).to.match(new RegExp(`logical processors +2 \\(1 while fault ${f.id} lasts, \\d+ s more\\)`));
    // The root's own fault list (what the nemesis asks of it) holds it too.
    expect(await hostList()).to.deep.equal([[f.id, 1]]);
    expect((await h.json<Array<{ id: string; state: string }>>('fault', 'list')).map((x) => [x.id, x.state])).to.deep.equal([[f.id, 'active']]);
    // The fault's end goes through the new root: every LP comes back.
    await h.ok('fault', 'clear', f.id);
    expect((await info()).lpShrink).to.equal(null);
    expect(await hostList()).to.deep.equal([]);
    // The hypervisor holds no shrink either: a root started now learns none.
    expect((await restartRoot()).lpShrink).to.equal(null);
    expect(await hostList()).to.deep.equal([]);
  });
});

describe('a root that dies between writing a config change and sending it (real processes)', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('the new root gives the re-attached VM the settings and integration services its config says: the VM never runs under others than vm list and vm ic show', async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'pc', '--memory', '16M', '--workload', 'counter');
    await h.ok('vm', 'start', 'pc');
    const vm = (): Promise<VmInfo | undefined> => h.json<VmInfo[]>('vm', 'list').then((l) => l.find((v) => v.name === 'pc'));
    const partitionId = (await vm())!.partitionId!;
    const cap = async (): Promise<unknown> => (await h.json<{ output: unknown }>('debug', 'hypercall', 'GetPartitionProperty', `partitionId=${partitionId}`, `property=${PartitionProperty.CpuCap}`)).output;
    expect(await cap(), 'uncapped at first').to.deep.equal({ value: 100 });
    const rootPid = (await h.json<HostInfo>('host', 'info')).pids.root;
    // What a root leaves that dies right after it wrote a change (changeConfig: disk first, then the
    // worker): the config on disk says --maximum 30 and the worker never heard of it. The root is
    // stopped while the file changes, so it writes nothing over it, then killed.
    process.kill(rootPid, 'SIGSTOP');
    const file = join(h.paths.vmDir, 'pc.json');
    const cfg = JSON.parse(readFileSync(file, 'utf8')) as { processor: { maximum: number }; devices: Array<{ class: string; enabled: boolean }> };
    cfg.processor.maximum = 30;
    cfg.devices.find((d) => d.class === 'kvp')!.enabled = false;
    writeFileSync(file, JSON.stringify(cfg, null, 2));
    process.kill(rootPid, 'SIGKILL');
    expect(await eventually(async () => (await h.run('vm', 'list', '--json')).code === 0, 30000), 'a new root answers').to.equal(true);
    expect((await vm())!.processor.maximum, 'vm list shows the config').to.equal(30);
    expect(await eventually(async () => JSON.stringify(await cap()) === JSON.stringify({ value: 30 }), 10000), `the VM runs under it too (cap ${JSON.stringify(await cap())})`).to.equal(true);
    // vm ic asks the worker: its kvp channel is gone as the config says.
    const kvpOn = async (): Promise<boolean | undefined> => (await h.json<IcServiceInfo[]>('vm', 'ic', 'pc')).find((e) => e.service === 'kvp')?.enabled;
    expect(await eventually(async () => (await kvpOn()) === false, 10000), `kvp is off at the worker too (${String(await kvpOn())})`).to.equal(true);
    await h.ok('vm', 'turn-off', 'pc');
  });
});

describe('a worker record that names another process (real processes)', function () {
  this.timeout(120000);
  const h = new TestHost();
  let bystander: ChildProcess | null = null;
  after(async () => {
    if (bystander && bystander.exitCode === null && bystander.signalCode === null) bystander.kill('SIGKILL');
    await h.destroyLeavingNothing();
  });

  it('is not believed: a restarted root leaves that process alone, and turn-off and down kill nothing of it (nor does a FIFO as another record hold that root)', async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'a', '--memory', '16M', '--workload', 'idle');
    await h.ok('vm', 'start', 'a');
    bystander = spawn('sleep', ['300'], { stdio: 'ignore' });
    const pid = bystander.pid!;
    const file = join(h.paths.vmwpDir, 'a.json');
    const rec = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    writeFileSync(file, JSON.stringify({ ...rec, pid, partitionPid: pid }));
    // A FIFO as a record: the new root read it with a blocking open and hung there for good.
    execFileSync('mkfifo', [join(h.paths.vmwpDir, 'zz.json')]);
    const host = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } };
    process.kill(host.pids.root, 'SIGKILL');
    expect(await eventually(async () => (await h.run('vm', 'list')).code === 0, 30000), 'a new root answers').to.equal(true);
    const ps = await h.json<Array<{ pid: number }>>('ps');
    expect(ps.map((p) => p.pid), 'ps does not list the bystander as a worker').to.not.include(pid);
    await h.run('vm', 'turn-off', 'a');
    await h.ok('down');
    expect(bystander.exitCode === null && bystander.signalCode === null, 'the bystander lives').to.equal(true);
    expect(readFileSync(h.paths.vmDir + '/a.json', 'utf8')).to.include('"name": "a"');
  });
});

describe('a running VM whose config file is damaged while its root restarts (real processes)', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('keeps running, listed Invalid with its worker named; turn-off stops it, and only then delete removes it', async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'a', '--memory', '16M', '--workload', 'counter:1000');
    await h.ok('vm', 'start', 'a');
    const before = (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'a')!;
    writeFileSync(join(h.paths.vmDir, 'a.json'), 'garbage');
    const host = JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } };
    process.kill(host.pids.root, 'SIGKILL');
    let a: VmInfo | undefined;
    expect(await eventually(async () => {
      const r = await h.run('vm', 'list', '--json');
      a = r.code === 0 ? (JSON.parse(r.stdout) as VmInfo[]).find((v) => v.name === 'a') : undefined;
      return a !== undefined;
    }, 30000), 'a new root lists it').to.equal(true);
    expect(a!.state).to.equal('Invalid');
    expect(a!.lastStateReason).to.match(new RegExp(`its worker still runs \\(pid ${before.pids.vmwp}\\)`));
    // Still running: the root restart stopped no VM, its partition was not taken for an orphan.
    await sleep(500);
    expect(pidAlive(before.pids.vmwp!) && pidAlive(before.pids.partition!), 'its processes live').to.equal(true);
    expect((await h.run('vm', 'delete', 'a')).stderr).to.match(/its worker still runs .*turn-off a" first/);
    await h.ok('vm', 'turn-off', 'a');
    expect(await eventually(() => !pidAlive(before.pids.vmwp!) && !pidAlive(before.pids.partition!), 10000), 'turned off').to.equal(true);
    await h.ok('vm', 'delete', 'a');
    expect((await h.json<VmInfo[]>('vm', 'list')).map((v) => v.name)).to.deep.equal([]);
  });
});

describe('a root partition that never gets ready (real processes)', function () {
  this.timeout(60000);
  const h = new TestHost({ HVLAB_ROOT_READY_TIMEOUT_MS: '5' });
  after(async () => {
    await h.destroyLeavingNothing();
  });

  it('is killed at the hypervisor\'s readiness timeout instead of wedging the host: up fails with the reason, and nothing is left', async () => {
    const r = await h.run('up', '--lps', '1');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/the host did not start: the root partition exited during start-up \(SIGKILL\)/);
    const log = readFileSync(join(h.paths.logDir, 'hypervisor.log'), 'utf8');
    expect(log).to.include('the root partition did not get ready in time; killing it');
    const ids = [...log.matchAll(/"host":"([0-9a-f]+)"/g)].map((m) => m[1]!);
    expect(ids.length).to.be.greaterThan(0);
    for (const id of new Set(ids)) expect(hostProcesses(id), `processes of host ${id}`).to.deep.equal([]);
  });
});
