/**
 * The warm pool (`hvlab up --warm N --warm-memory SIZE`, root/src/warm.ts): booted VMs without an
 * owner, each a VMWP with its partition process and a guest that has booted (VMBus and all); `vm
 * start` of a VM of the pool's shape claims one, which takes the VM's name, workload and processor
 * settings and keeps the template's device instance ids (so a save and restore still finds its
 * channels). A VM of another shape starts cold. The pool refills; a worker that dies waiting has its
 * partition deleted; nothing of it outlives `down`, and a root that dies takes its waiting workers
 * with it (the new root starts a new pool and keeps the claimed VMs' partitions).
 */
import { expect } from 'chai';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PartitionProperty, type HostInfo, type ProcessInfo, type VmInfo } from '@hvlab/protocol';
import { pidAlive } from '@hvlab/runtime';
import { TestHost, childrenOf, eventually } from './harness.js';

const warmPids = (ps: ProcessInfo[]): number[] => ps.filter((p) => p.role === 'vmwp' && p.vm === null && p.warm !== 'spare').map((p) => p.pid);
/** The partitions of host `hostId` that have guest memory: their /dev/shm regions' ids. */
function memoryRegions(hostId: string): number[] {
  return readdirSync('/dev/shm').map((f) => new RegExp(`^hvlab-${hostId}-p(\\d+)-mem$`).exec(f)).filter((m) => m !== null).map((m) => Number(m![1])).sort((a, b) => a - b);
}

describe('the warm pool of booted VMs (real processes)', function () {
  this.timeout(180000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());
  let hostId = '';
  const ready = async (n: number): Promise<ProcessInfo[]> => {
    let ps: ProcessInfo[] = [];
    const ok = await eventually(async () => (ps = await h.json<ProcessInfo[]>('ps')).filter((p) => p.vm === null && p.role === 'vmwp' && p.warm === 'ready').length === n && warmPids(ps).length === n, 30000);
    expect(ok, `${n} booted warm workers: ${JSON.stringify(ps)}`).to.equal(true);
    return ps;
  };
  const cap = async (partitionId: number): Promise<number> =>
    (await h.json<{ output: { value: number } }>('debug', 'hypercall', 'GetPartitionProperty', `partitionId=${partitionId}`, `property=${PartitionProperty.CpuCap}`)).output.value;

  it('keeps N booted workers; a start of their shape claims one, Running as that VM at once, and the pool refills', async () => {
    // A size `vm new --memory` would refuse is refused before anything starts.
    const bad = await h.run('up', '--warm', '1', '--warm-memory', '12345');
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/--warm-memory 12345 is invalid/);
    expect((await h.run('ps')).code, 'no host came up').to.not.equal(0);
    await h.ok('up', '--lps', '1', '--warm', '2', '--warm-memory', '16M');
    hostId = (await h.json<HostInfo>('host', 'info')).hostId;
    const warm = warmPids(await ready(2));
    for (const pid of warm) expect(childrenOf(pid), `warm worker ${pid} has its partition process`).to.have.length(1);
    expect(await h.ok('ps')).to.match(/vmwp\s+- \(warm, ready\)/);
    // Two booted guests: two partitions with memory, and no VM yet.
    expect(memoryRegions(hostId)).to.have.length(2);
    expect(await h.json<VmInfo[]>('vm', 'list')).to.deep.equal([]);
    await h.ok('vm', 'new', 'w1', '--memory', '16M', '--workload', 'counter');
    await h.ok('vm', 'set-processor', 'w1', '--maximum', '50');
    await h.ok('vm', 'start', 'w1');
    const v = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w1')!;
    expect(v.state).to.equal('Running');
    expect(warm, 'the VM runs in a worker of the pool').to.include(v.pids.vmwp);
    expect(childrenOf(v.pids.vmwp!), 'and in the partition process that worker had booted').to.deep.equal([v.pids.partition]);
    // It is that VM now: the guest reports its name and runs its workload, with its processor cap.
    const auto = await h.json<Array<{ key: string; value: string }>>('vm', 'kvp', 'w1', 'list', '--pool', 'auto');
    expect(auto.find((e) => e.key === 'FullyQualifiedDomainName')?.value).to.equal('w1');
    const guest = await h.json<Array<{ key: string; value: string }>>('vm', 'kvp', 'w1', 'list', '--pool', 'guest');
    expect(guest.find((e) => e.key === 'hvlab.workload')?.value).to.equal('counter');
    expect(await cap(v.partitionId!)).to.equal(50);
    const st = await h.json<{ progress: number }>('vm', 'status', 'w1');
    expect(await eventually(async () => (await h.json<{ progress: number }>('vm', 'status', 'w1')).progress > st.progress, 5000), 'the VM counts').to.equal(true);
    const ic = await h.json<Array<{ service: string; status: string }>>('vm', 'ic', 'w1');
    expect(ic.filter((s) => s.status === 'OK').map((s) => s.service).sort()).to.deep.equal(['heartbeat', 'kvp', 'shutdown', 'timesync']);
    // It logs as w1, and its config keeps the template's device instance seed.
    const logs = join(h.paths.logDir);
    const vmwpLog = readFileSync(join(logs, 'vmwp-w1.log'), 'utf8');
    expect(vmwpLog).to.match(/claimed: the booted template is this VM/);
    // Its logs begin with the template's boot, and the template's own files are gone.
    const template = (JSON.parse(vmwpLog.split('\n').find((l) => l.includes('claimed: the booted template'))!) as { template: string }).template;
    expect(vmwpLog.indexOf('template booted; waiting for a claim')).to.be.within(0, vmwpLog.indexOf('claimed: the booted template'));
    expect(readFileSync(join(logs, 'partition-w1.log'), 'utf8')).to.match(/given its VM/);
    expect(existsSync(join(logs, `vmwp-${template}.log`)), 'the template VMWP log moved').to.equal(false);
    expect(existsSync(join(logs, `partition-${template}.log`)), 'the template partition log moved').to.equal(false);
    expect(await eventually(() => /"instanceSeed"/.test(readFileSync(join(h.paths.vmDir, 'w1.json'), 'utf8')), 5000), 'the config has the seed').to.equal(true);
    expect(await eventually(async () => warmPids(await h.json<ProcessInfo[]>('ps')).length === 2, 10000), 'the pool refills').to.equal(true);
    // Saved and restored: the restored devices must find the guest's channels by their instance ids.
    await h.ok('vm', 'save', 'w1');
    await h.ok('vm', 'start', 'w1');
    const after = await h.json<{ progress: number }>('vm', 'status', 'w1');
    expect(after.progress, 'it went on from where it was saved').to.be.at.least(st.progress);
    expect(await eventually(async () => (await h.json<Array<{ service: string; status: string }>>('vm', 'ic', 'w1')).every((s) => s.status === 'OK'), 10000), 'integration services OK after the restore').to.equal(true);
  });

  it('a VM of another shape starts cold and leaves the pool as it was', async () => {
    const before = warmPids(await ready(2));
    await h.ok('vm', 'new', 'big', '--memory', '32M', '--workload', 'idle');
    await h.ok('vm', 'start', 'big');
    const v = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'big')!;
    expect(v.state).to.equal('Running');
    expect(before).not.to.include(v.pids.vmwp);
    expect(warmPids(await h.json<ProcessInfo[]>('ps')).sort()).to.deep.equal([...before].sort());
    await h.ok('vm', 'turn-off', 'big');
    await h.ok('vm', 'delete', 'big');
  });

  it('a waiting worker that dies has its partition deleted and is replaced', async () => {
    const before = warmPids(await ready(2));
    const regions = memoryRegions(hostId);
    const victim = before[0]!;
    const child = childrenOf(victim)[0]!;
    process.kill(victim, 'SIGKILL');
    expect(await eventually(() => !pidAlive(child), 10000), 'its partition process left').to.equal(true);
    expect(await eventually(() => memoryRegions(hostId).length === regions.length - 1, 10000), `its partition's memory went: ${memoryRegions(hostId)} from ${regions}`).to.equal(true);
    const now = warmPids(await ready(2));
    expect(now).not.to.include(victim);
  });

  it('a root that dies takes its waiting workers and their partition processes with it; the new root starts a new pool and keeps the claimed VM', async () => {
    const pool = warmPids(await ready(2));
    await h.ok('vm', 'new', 'w2', '--memory', '16M', '--workload', 'counter');
    await h.ok('vm', 'start', 'w2');
    const w2 = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w2')!;
    expect(pool, 'w2 took a booted worker').to.include(w2.pids.vmwp);
    const before = warmPids(await ready(2));
    const partitions = before.flatMap(childrenOf);
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
    }, 30000), 'a new pool').to.equal(true);
    expect(after.some((p) => before.includes(p))).to.equal(false);
    // The dead root's templates took their log files along (the new root swept them): only the new pool's are left.
    const templateLogs = (): string[] => readdirSync(h.paths.logDir).filter((f) => f.includes('~warm-')).sort();
    expect(await eventually(() => templateLogs().length === 4, 10000), `two pairs of template logs: ${templateLogs()}`).to.equal(true);
    // The claimed VM runs in a partition named for its template; the new root does not take it for an orphan.
    expect(await eventually(async () => (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w2')?.state === 'Running', 10000), 'w2 re-attached').to.equal(true);
    const now = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === 'w2')!;
    expect(now.partitionId).to.equal(w2.partitionId);
    expect(memoryRegions(hostId)).to.include(w2.partitionId);
    const st = await h.json<{ progress: number }>('vm', 'status', 'w2');
    expect(await eventually(async () => (await h.json<{ progress: number }>('vm', 'status', 'w2')).progress > st.progress, 5000), 'it still counts').to.equal(true);
    await h.ok('down');
    expect(memoryRegions(hostId)).to.deep.equal([]);
    expect(templateLogs(), 'no template that was never claimed leaves its logs').to.deep.equal([]);
    expect(readdirSync(h.paths.logDir), 'the claimed VM\'s logs stay').to.include.members(['vmwp-w2.log', 'partition-w2.log']);
  });
});
