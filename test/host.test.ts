import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProcessInfo, VmInfo, HostInfo, HostMemory } from '@hvlab/protocol';
import { TestHost, eventually, shmFiles, sleep, untilHeard } from './harness.js';
import { hostProcesses, MgmtClient, readHost } from '@hvlab/host';
import { hostConnectionId } from '../packages/root/src/vmwp/shared.js';
import { decode, STATUS_PAGE_GPA, StatusPage, type VmStateEvent } from '@hvlab/protocol';
import { zmq } from '@hvlab/runtime';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const vmByName = (vms: VmInfo[], n: string): VmInfo => vms.find((v) => v.name === n)!;

describe('a host of real processes (shared memory)', function () {
  this.timeout(120000);
  const h = new TestHost();

  before(async () => {
    await h.ok('up', '--lps', '2');
    await h.ok('vm', 'new', 'alpha', '--memory', '16M');
    await h.ok('vm', 'new', 'beta', '--memory', '16M', '--workload', 'counter:500', '--vps', '2');
    await h.ok('vm', 'start', 'alpha');
    await h.ok('vm', 'start', 'beta');
  });
  after(async () => {
    await h.destroy();
    const left = h.leftovers();
    expect(left.pids, 'processes left behind').to.deep.equal([]);
    expect(left.shm, '/dev/shm files left behind').to.deep.equal([]);
  });

  it('reports its memory mode and processes', async () => {
    const info = await h.json<HostInfo>('host', 'info');
    expect(info.memoryMode).to.equal('shared');
    expect(info.lps).to.equal(2);
  });

  it("host memory reports the root's memory, after a full collection with --collect", async () => {
    const info = await h.json<HostInfo>('host', 'info');
    const plain = await h.json<HostMemory>('host', 'memory');
    expect(plain.pid).to.equal(info.pids.root);
    expect(plain.collectedMs).to.equal(null);
    expect(plain.heapUsed).to.be.above(0).and.at.most(plain.heapTotal);
    expect(plain.rss).to.be.above(plain.heapUsed);
    const collected = await h.json<HostMemory>('host', 'memory', '--collect');
    expect(collected.collectedMs).to.be.a('number').and.at.least(0);
    const text = await h.ok('host', 'memory', '--collect');
    expect(text).to.match(/root pid\s+\d+/).and.match(/V8 heap used\s+[\d.]+ MiB of [\d.]+ MiB/).and.match(/garbage collection\s+a full one first, [\d.]+ ms/);
    expect(await h.ok('host', 'memory')).to.match(/garbage collection\s+none first \(--collect runs one\)/);
  });

  it('runs two VMs as six distinct processes with the right roles, beside a spare worker and its partition process', async () => {
    // The spare that the second start took is replaced 300 ms after it.
    let ps: ProcessInfo[] = [];
    expect(await eventually(async () => (ps = await h.json<ProcessInfo[]>('ps')).length === 8, 10000), JSON.stringify(ps)).to.equal(true);
    expect(new Set(ps.map((p) => p.pid)).size).to.equal(8);
    const roles = ps.map((p) => `${p.role}:${p.vm ?? '-'}${p.warm ? `:${p.warm}` : ''}`).sort();
    expect(roles).to.deep.equal(['hypervisor:-', 'partition:-:spare', 'partition:alpha', 'partition:beta', 'root:-', 'vmwp:-:spare', 'vmwp:alpha', 'vmwp:beta']);
    // Each one is a live OS process carrying the host's id.
    const live = hostProcesses(h.hostId);
    for (const p of ps) expect(live).to.include(p.pid);
  });

  it('lists VMs with Hyper-V states and advancing counters', async () => {
    const a = await h.json<VmInfo[]>('vm', 'list');
    await sleep(700);
    const b = await h.json<VmInfo[]>('vm', 'list');
    for (const n of ['alpha', 'beta']) {
      const x = vmByName(a, n);
      const y = vmByName(b, n);
      expect(y.state).to.equal('Running');
      expect(y.enabledState).to.equal(2);
      expect(y.partitionId).to.be.a('number');
      expect(y.pids.partition).to.be.a('number');
      expect(y.pids.vmwp).to.be.a('number');
      expect(y.workload.name).to.equal('counter');
      expect(y.workload.progress!).to.be.greaterThan(x.workload.progress!);
    }
    expect(vmByName(b, 'beta').vps).to.equal(2);
    expect(vmByName(b, 'alpha').memoryBytes).to.equal(16 * 1024 * 1024);
  });

  it('peek reads the counter from guest memory, matching the published progress', async () => {
    const out = await h.ok('vm', 'peek', 'alpha', '--gpa', '0x2000', '--len', '8');
    const bytes = Buffer.from(out.slice(10, 10 + 23).replace(/ /g, ''), 'hex');
    const counter = Number(bytes.readBigUInt64LE(0));
    const after = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha').workload.progress!;
    expect(counter).to.be.greaterThan(0);
    expect(after).to.be.at.least(counter);
  });

  it("a child partition's CreatePartition gets ACCESS_DENIED", async () => {
    const r = await h.run('debug', 'hypercall', '--as', 'alpha', 'CreatePartition', 'memoryBytes=2097152', '--json');
    expect(JSON.parse(r.stdout)).to.include({ statusName: 'ACCESS_DENIED', as: 'alpha' });
    expect(r.code).to.not.equal(0);
    // The root may.
    const root = JSON.parse((await h.run('debug', 'hypercall', 'GetPartitionId', '--json')).stdout);
    expect(root.statusName).to.equal('SUCCESS');
    expect(root.output.partitionId).to.equal(1);
  });

  it('host info says what the VM processes run: the bundles while they are fresh, else the compiled modules', async () => {
    const info = await h.json<HostInfo>('host', 'info');
    const fresh = spawnSync(process.execPath, [join(repo, 'scripts', 'bundle.mjs'), '--check'], { stdio: 'ignore' }).status === 0;
    expect(info.code).to.equal(process.env.HVLAB_FROM_SOURCE === '1' ? 'sources' : fresh ? 'bundles' : 'compiled');
    expect(await h.ok('host', 'info')).to.match(/VM processes run\s+(bundles|compiled modules|TypeScript sources)/);
  });

  it('host info says how the hypervisor wakes the root for its page: through a wake descriptor here (pidfd_getfd works as root)', async () => {
    const info = await h.json<HostInfo>('host', 'info');
    if (info.memoryMode !== 'shared' || info.hypercallPath !== 'page') {
      expect(info.hypercallWake ?? null).to.equal(null);
      return;
    }
    expect(info.hypercallWake).to.equal(process.env.HVLAB_WAKE_FD === '0' ? 'word' : 'descriptor');
    expect(await h.ok('host', 'info')).to.match(/hypercall pages \(shared memory\), events through a (wake descriptor|word watch)/);
  });

  it("the VM processes run from V8's code cache when they run from bundles: the VMWP, the partition process and its first VP thread say so", async () => {
    const info = await h.json<HostInfo>('host', 'info');
    const logged = (file: string, msg: string): Record<string, unknown> => {
      const lines = readFileSync(join(h.paths.logDir, file), 'utf8').split('\n').filter((l) => l.includes(`"msg":"${msg}"`));
      expect(lines, `${file}: "${msg}"`).to.have.length.greaterThan(0);
      return JSON.parse(lines[0]!) as Record<string, unknown>;
    };
    const vmwp = logged('vmwp-alpha.log', 'guest reported boot').codeCache;
    const partition = logged('partition-alpha.log', 'guest booted').codeCache;
    if (info.code === 'bundles') {
      expect(vmwp).to.equal('accepted');
      expect(partition).to.deep.equal({ process: 'accepted', vp: 'accepted' });
    } else {
      // Compiled modules or sources: no launcher, no cache.
      expect(vmwp).to.equal(null);
      expect(partition).to.deep.equal({ process: null, vp: null });
    }
  });

  it('debug hypercall shows the reason of a refusal, also for a call that goes through the hypercall page elsewhere', async () => {
    const r = await h.run('debug', 'hypercall', 'ConnectPort', 'partitionId=1', 'connectionId=77', 'portPartitionId=1', 'portId=4242', '--json');
    const out = JSON.parse(r.stdout) as { statusName: string; output: { reason?: string } | null };
    expect(out.statusName).to.equal('INVALID_PORT_ID');
    expect(out.output?.reason).to.match(/no port 4242/);
  });

  it('debug hypercall --page goes through the root\'s hypercall page: the same statuses, no reason text; not with --as', async () => {
    const vm = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha');
    const ok = JSON.parse((await h.run('debug', 'hypercall', '--page', 'ConnectPort', 'partitionId=1', 'connectionId=77', 'portPartitionId=1', 'portId=4242', '--json')).stdout) as { statusName: string; output: unknown };
    expect(ok.statusName).to.equal('INVALID_PORT_ID');
    expect(ok.output ?? null, 'a refusal through the page carries no reason').to.equal(null);
    const bad = JSON.parse((await h.run('debug', 'hypercall', '--page', 'AssertVirtualInterrupt', `partitionId=${vm.partitionId}`, 'vpIndex=9', 'vector=0xf0', '--json')).stdout) as { statusName: string };
    expect(bad.statusName).to.equal('INVALID_VP_INDEX');
    const r = await h.run('debug', 'hypercall', '--page', '--as', 'alpha', 'GetPartitionId');
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/--page is for the root/);
  });

  it('PostMessage with more than 240 bytes gets INVALID_PARAMETER, and 240 bytes succeed', async () => {
    const big = JSON.parse((await h.run('debug', 'hypercall', '--as', 'beta', 'PostMessage', 'connectionId=1', 'messageType=2', 'payload=len:241', '--json')).stdout);
    expect(big.statusName).to.equal('INVALID_PARAMETER');
    const fits = JSON.parse((await h.run('debug', 'hypercall', '--as', 'beta', 'PostMessage', 'connectionId=1', 'messageType=2', 'payload=len:240', '--json')).stdout);
    expect(fits.statusName).to.equal('SUCCESS');
  });

  it("a message the root posts reaches the guest's message page and is consumed", async () => {
    const vm = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha');
    const conn = hostConnectionId(vm.partitionId!, 1);
    const r = JSON.parse((await h.run('debug', 'hypercall', 'PostMessage', `connectionId=${conn}`, 'messageType=7', 'payload=text:hello-guest', '--json')).stdout);
    expect(r.statusName).to.equal('SUCCESS');
    let page = '';
    const seen = await eventually(async () => {
      page = await h.ok('vm', 'peek', 'alpha', '--gpa', '0x1040', '--len', '16');
      return page.includes('hello-guest');
    }, 5000);
    expect(seen, page).to.equal(true);
    const hdr = await h.ok('vm', 'peek', 'alpha', '--gpa', '0x1028', '--len', '8');
    expect(hdr).to.match(/^00001028 {2}07 00 00 00 0b 00 00 00/); // last type 7, size 11
  });

  it('pause holds the counter still with its state and resume continues from it', async () => {
    await h.ok('vm', 'pause', 'alpha');
    const a = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha');
    expect(a.state).to.equal('Paused');
    expect(a.enabledState).to.equal(9);
    await sleep(500);
    const b = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha');
    expect(b.workload.progress).to.equal(a.workload.progress);
    expect(b.pids).to.deep.equal(a.pids);
    await h.ok('vm', 'resume', 'alpha');
    await sleep(300);
    const c = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha');
    expect(c.state).to.equal('Running');
    expect(c.workload.progress!).to.be.greaterThan(b.workload.progress!);
  });

  it('a pause returns once the VPs have stopped: a memdirty guest\'s page writes hold still from the answer on', async () => {
    await h.ok('vm', 'new', 'md', '--memory', '16M', '--workload', 'memdirty:1M');
    await h.ok('vm', 'start', 'md');
    const mgmt = new MgmtClient(h.paths.mgmtEndpoint, { watch: readHost(h.paths) });
    let spinners: Worker[] = [];
    const written = async (): Promise<bigint> => {
      const b = await mgmt.request<Uint8Array>('vmPeek', { name: 'md', gpa: STATUS_PAGE_GPA + StatusPage.progress, len: 8 });
      return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
    };
    try {
      expect(await eventually(async () => (await written()) > 0n, 10000), 'the guest writes pages').to.equal(true);
      // The guest writes pages as fast as it can; a pause that answered before its VP stopped
      // would be caught here by a count that still moves (a VP finishes its step). Two threads
      // spinning here take the CPUs from the VP thread, so it is slow to see the suspension, as
      // on a busy machine (where a chaos run's memory check caught a count that moved on).
      spinners = [0, 1].map(() => new Worker('const end = Date.now() + 20000; while (Date.now() < end);', { eval: true }));
      for (let i = 0; i < 6; i++) {
        await mgmt.request('vmPause', { name: 'md' });
        const a = await written();
        await sleep(30);
        const b = await written();
        expect(b, `pause ${i + 1}: the page-write count moved after the pause answered`).to.equal(a);
        await mgmt.request('vmResume', { name: 'md' });
        await sleep(20);
      }
    } finally {
      for (const w of spinners) await w.terminate();
      mgmt.close();
      await h.ok('vm', 'turn-off', 'md');
      await h.ok('vm', 'delete', 'md');
    }
  });

  it('publishes state changes on the events socket (Pausing, Paused, Resuming, Running)', async () => {
    const sub = new zmq.Subscriber({ linger: 0 });
    sub.connect(h.paths.eventsEndpoint);
    sub.subscribe('vm');
    const seen: VmStateEvent[] = [];
    let heardBeta = false;
    const reading = (async () => {
      for await (const [, body] of sub) {
        const ev = decode<VmStateEvent>(body);
        if (ev.vm === 'beta') heardBeta = true;
        if (ev.vm === 'alpha') seen.push(ev);
        if (seen.length >= 4) break;
      }
    })();
    try {
      // The subscription is in effect once an event of beta (paused and resumed, as a probe) arrives.
      const probe = async (): Promise<void> => {
        await h.ok('vm', 'pause', 'beta');
        await h.ok('vm', 'resume', 'beta');
      };
      expect(await untilHeard(() => heardBeta, probe), 'the subscriber hears the events socket').to.equal(true);
      await h.ok('vm', 'pause', 'alpha');
      await h.ok('vm', 'resume', 'alpha');
      await Promise.race([reading, sleep(10000)]);
      expect(seen.map((e) => [e.state, e.enabledState])).to.deep.equal([['Pausing', 32776], ['Paused', 9], ['Resuming', 32777], ['Running', 2]]);
    } finally {
      sub.close();
    }
  });

  it('logs of every process are readable and filter by role and VM', async () => {
    const out = await h.ok('logs', '--role', 'vmwp', '--vm', 'alpha');
    expect(out).to.match(/INFO +vmwp\/alpha +VM built/);
    expect(out).to.not.match(/vmwp\/beta|hypervisor/);
    const hv = await h.ok('logs', '--role', 'hypervisor');
    expect(hv).to.match(/partition created/);
    const bad = await h.run('logs', '--role', 'nonsense');
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/--role nonsense is unknown/);
  });

  it('rejects bad input with one clear line and changes nothing', async () => {
    const before = await h.json<VmInfo[]>('vm', 'list');
    const files = readdirSync(h.paths.vmDir).sort();
    const cases: Array<[string[], RegExp]> = [
      [['vm', 'start', 'nosuch'], /VM "nosuch" does not exist/],
      [['vm', 'new', 'gamma', '--memory', '64Q'], /memory size "64Q" is invalid/],
      [['vm', 'new', 'alpha'], /VM "alpha" already exists/],
      [['vm', 'new', 'gamma', '--vps', '0'], /--vps 0 is invalid/],
      [['vm', 'new', 'bad/name'], /VM name "bad\/name" is invalid/],
      [['vm', 'start', 'alpha'], /cannot start VM "alpha": it is Running/],
      [['vm', 'peek', 'alpha', '--gpa', '0xffffffff', '--len', '16'], /outside VM "alpha"/],
      [['debug', 'hypercall', 'NoSuchCall'], /hypercall "NoSuchCall" is unknown/],
    ];
    for (const [args, msg] of cases) {
      const r = await h.run(...args);
      expect(r.code, args.join(' ')).to.not.equal(0);
      expect(r.stderr.trim().split('\n'), args.join(' ')).to.have.length(1);
      expect(r.stderr, args.join(' ')).to.match(msg);
    }
    const after = await h.json<VmInfo[]>('vm', 'list');
    expect(after.map((v) => [v.name, v.state, v.partitionId])).to.deep.equal(before.map((v) => [v.name, v.state, v.partitionId]));
    expect(readdirSync(h.paths.vmDir).sort()).to.deep.equal(files);
  });

  it('kill -9 of a VMWP turns only its VM Off, with the reason shown', async () => {
    const before = await h.json<VmInfo[]>('vm', 'list');
    const victim = vmByName(before, 'beta');
    const other = vmByName(before, 'alpha');
    process.kill(victim.pids.vmwp!, 'SIGKILL');
    let vms: VmInfo[] = [];
    const off = await eventually(async () => {
      vms = await h.json<VmInfo[]>('vm', 'list');
      return vmByName(vms, 'beta').state === 'Off';
    }, 10000);
    expect(off).to.equal(true);
    const beta = vmByName(vms, 'beta');
    expect(beta.enabledState).to.equal(3);
    expect(beta.lastStateReason).to.match(/worker process exited unexpectedly \(SIGKILL\)/);
    // Its partition process followed it; its memory is gone.
    expect(await eventually(() => !hostProcesses(h.hostId).includes(victim.pids.partition!), 5000)).to.equal(true);
    expect(shmFiles(h.hostId)).to.not.include(`hvlab-${h.hostId}-p${victim.partitionId}-mem`);
    // The other VM is untouched and still advancing.
    const alpha = vmByName(vms, 'alpha');
    expect(alpha.state).to.equal('Running');
    expect(alpha.pids).to.deep.equal(other.pids);
    await sleep(300);
    expect(vmByName(await h.json<VmInfo[]>('vm', 'list'), 'alpha').workload.progress!).to.be.greaterThan(alpha.workload.progress!);
    // And the VM can start again.
    await h.ok('vm', 'start', 'beta');
    expect(vmByName(await h.json<VmInfo[]>('vm', 'list'), 'beta').state).to.equal('Running');
  });

  it('turn-off and delete remove a VM and its processes', async () => {
    const beta = vmByName(await h.json<VmInfo[]>('vm', 'list'), 'beta');
    await h.ok('vm', 'turn-off', 'beta');
    expect(hostProcesses(h.hostId)).to.not.include(beta.pids.vmwp);
    // Its worker's control socket went with it (ZeroMQ's own unlink was cut short by the exit).
    const sock = h.paths.vmwpEndpoint(beta.id).slice('ipc://'.length);
    expect(await eventually(() => !existsSync(sock), 5000), `the worker's socket ${sock}`).to.equal(true);
    expect(existsSync(join(h.paths.logDir, 'vmwp-beta.log')), 'it ran: its worker logged').to.equal(true);
    await h.ok('vm', 'delete', 'beta');
    expect((await h.json<VmInfo[]>('vm', 'list')).map((v) => v.name)).to.deep.equal(['alpha']);
    // Its files went with it, its logs too (a later VM of that name starts its own).
    expect(['vmwp-beta.log', 'partition-beta.log'].filter((f) => existsSync(join(h.paths.logDir, f)))).to.deep.equal([]);
    expect(existsSync(join(h.paths.vmDir, 'beta.json'))).to.equal(false);
  });

  it('hvlab down leaves no process, socket or /dev/shm file', async () => {
    const id = h.hostId;
    expect(hostProcesses(id).length).to.be.greaterThan(0);
    await h.ok('down');
    expect(hostProcesses(id)).to.deep.equal([]);
    expect(shmFiles(id)).to.deep.equal([]);
    expect(() => readdirSync(h.paths.sockDir)).to.throw();
    // The VM's configuration survives the host.
    expect(readdirSync(h.paths.vmDir)).to.deep.equal(['alpha.json']);
  });
});

describe('the hypervisor anchors its host', function () {
  this.timeout(60000);
  const h = new TestHost();
  after(async () => {
    await h.destroy();
    expect(h.leftovers()).to.deep.equal({ pids: [], shm: [] });
  });

  it('kill -9 of the hypervisor leaves no hvlab process and no /dev/shm file after 5 s', async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', 'a', '--memory', '8M');
    await h.ok('vm', 'new', 'b', '--memory', '8M', '--workload', 'idle');
    await h.ok('vm', 'start', 'a');
    await h.ok('vm', 'start', 'b');
    const id = h.hostId;
    const info = await h.json<HostInfo>('host', 'info');
    // Per VM its VMWP and partition process, the hypervisor, the root, and the spare worker with its
    // partition process (replaced 300 ms after the last start took the first spare).
    expect(await eventually(() => hostProcesses(id).length === 8, 10000), `${hostProcesses(id).length} processes`).to.equal(true);
    // Per VM its memory and its VP control region, plus the host's scheduler doorbell; and a
    // hypercall page per hypervisor session: the root's, and per VM its VMWP's and its guest's.
    const files = shmFiles(id);
    expect(files.filter((f) => !f.includes('-hc-'))).to.have.length(5);
    expect(files.filter((f) => f.includes('-hc-'))).to.have.length(5);
    process.kill(info.pids.hypervisor, 'SIGKILL');
    // Looked at until all is gone, for at most 5 s: with no process of the host left, none can
    // start another or make a file, so what holds then holds at 5 s.
    await eventually(() => hostProcesses(id).length === 0 && shmFiles(id).length === 0, 5000);
    expect(hostProcesses(id)).to.deep.equal([]);
    expect(shmFiles(id)).to.deep.equal([]);
  });
});

describe('down finds what a host left running without a record', function () {
  this.timeout(60000);
  const h = new TestHost();
  after(async () => {
    await h.destroy();
  });

  // A VMWP whose hypervisor ended under it (SIGTERM: the hypervisor removed its record and lock on
  // the way out) could wait for good; `down` answered "no host was up" and left it running.
  it('down kills a process that names this home and a host of it, though no hypervisor holds the home and no record names the host', async () => {
    mkdirSync(h.home, { recursive: true });
    const id = randomBytes(3).toString('hex');
    // hvlab's processes carry a title (hvlab-ROLE …), as these do.
    const titled = (title: string, env: Record<string, string>) => spawn(process.execPath, ['-e', `process.title = ${JSON.stringify(title)}; setTimeout(() => {}, 120000)`], { stdio: 'ignore', env: { ...process.env, ...env } });
    const stray = titled(`hvlab-vmwp ${id} a`, { HVLAB_HOME: h.home, HVLAB_HOST_ID: id });
    // Another home's process of the same host id, one of this home without a host id, and one that
    // names both but is no hvlab process (a shell that exported them), stay.
    const other = titled(`hvlab-vmwp ${id} b`, { HVLAB_HOME: `${h.home}-other`, HVLAB_HOST_ID: id });
    const cli = titled('hvlab-cli', { HVLAB_HOME: h.home, HVLAB_HOST_ID: '' });
    const shell = titled('bash', { HVLAB_HOME: h.home, HVLAB_HOST_ID: id });
    try {
      expect(await eventually(() => hostProcesses(id).length === 3, 5000), 'the marked processes run').to.equal(true);
      const r = await h.run('down');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(new RegExp(`host ${id} is down \\(forced: killed 1 processes`));
      expect(await eventually(() => stray.exitCode !== null || stray.signalCode !== null, 5000), 'the stray process is killed').to.equal(true);
      expect(other.exitCode === null && other.signalCode === null, 'another home\'s process runs on').to.equal(true);
      expect(cli.exitCode === null && cli.signalCode === null, 'a process of the home that is no host\'s runs on').to.equal(true);
      expect(shell.exitCode === null && shell.signalCode === null, 'a process that is not hvlab\'s runs on').to.equal(true);
    } finally {
      for (const p of [stray, other, cli, shell]) p.kill('SIGKILL');
    }
  });
});

describe('private-memory fallback (HVLAB_SHM=off)', function () {
  this.timeout(60000);
  const h = new TestHost({ HVLAB_SHM: 'off' });
  after(async () => {
    await h.destroy();
    expect(h.leftovers()).to.deep.equal({ pids: [], shm: [] });
  });

  it('says so and still runs VMs, messages and peek over ZeroMQ', async () => {
    await h.ok('up', '--lps', '1');
    const info = await h.json<HostInfo>('host', 'info');
    expect(info.memoryMode).to.equal('private');
    expect(info.memoryModeReason).to.match(/HVLAB_SHM=off/);
    await h.ok('vm', 'new', 'p', '--memory', '8M');
    await h.ok('vm', 'start', 'p');
    expect(shmFiles(h.hostId)).to.deep.equal([]);
    const a = (await h.json<VmInfo[]>('vm', 'list'))[0];
    await sleep(400);
    const b = (await h.json<VmInfo[]>('vm', 'list'))[0];
    expect(b.workload.progress!).to.be.greaterThan(a.workload.progress!);
    const conn = hostConnectionId(b.partitionId!, 1);
    for (const word of ['first', 'second']) {
      const r = JSON.parse((await h.run('debug', 'hypercall', 'PostMessage', `connectionId=${conn}`, 'messageType=3', `payload=text:${word}-msg`, '--json')).stdout);
      expect(r.statusName).to.equal('SUCCESS');
      expect(await eventually(async () => (await h.ok('vm', 'peek', 'p', '--gpa', '0x1040', '--len', '16')).includes(`${word}-msg`), 5000)).to.equal(true);
    }
  });
});
