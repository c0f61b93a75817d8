/**
 * Clusters with real processes (issue 11). A 3-host topology comes up with its VMs
 * Running on the hosts the file names, each host in its own network namespace where allowed (its
 * hypervisor and VMWPs are in it); `vm list --all` shows them with their hosts; `--host` aims a
 * command at one host; `cluster status` shows the hosts, their addresses, the mode and the links
 * the fabric applies; `cluster down` leaves no process (the fabric's included), /dev/shm file, namespace, veth, bridge or cluster state. Loopback mode
 * says why. A topology with typos is refused before anything starts. A CLI killed half way
 * through `cluster up` leaves nothing that `cluster down` does not remove.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VmInfo } from '@hvlab/protocol';
import { hostProcesses, strayHostIds, sweepHost } from '@hvlab/host';
import { hostPaths, pathHash, zmq } from '@hvlab/runtime';
import { clusterTag, fabricPids, namespacesAvailable, networkLeftovers, planNetwork } from '@hvlab/cluster';
import { spawnSync } from 'node:child_process';
import { TestHost, shmFiles, sleep, eventually } from './harness.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(repo, 'packages', 'cli', 'bin', 'hvlab.mjs');

const LAB = `name: lab
hosts:
  h1: { lps: 1 }
  h2: { lps: 1 }
  h3: { lps: 1 }
links:
  - endpoints: [h1, h2]
    delay: 20ms
  - endpoints: [h2, h3]
vms:
  a: { host: h1, memory: 16M, workload: idle }
  b: { host: h2, memory: 16M, workload: counter }
  c: { host: h2, memory: 16M, workload: idle, processor: { weight: 300 } }
  d: { host: h3, memory: 16M, workload: idle }
`;

/** The host ids of every host home under the cluster (read from their records). */
function clusterHostIds(home: string, seen: Set<string>): Set<string> {
  try {
    for (const h of readdirSync(join(home, 'cluster', 'hosts'))) {
      try {
        seen.add((JSON.parse(readFileSync(join(home, 'cluster', 'hosts', h, 'run', 'host.json'), 'utf8')) as { hostId: string }).hostId);
      } catch { /* not up (yet) */ }
    }
  } catch { /* no cluster */ }
  return seen;
}

/** Processes and /dev/shm files of the hosts `ids`, and the fabric of the cluster of `home` if it still runs. */
function leftovers(ids: Set<string>, home?: string): { pids: number[]; shm: string[] } {
  return { pids: [...ids].flatMap((id) => hostProcesses(id)).concat(home ? fabricPids(home) : []), shm: [...ids].flatMap((id) => shmFiles(id)) };
}

/** The network namespace a process is in, by name (`ip netns identify`), or '' for the root namespace. */
function netnsOf(pid: number): string {
  return (spawnSync('ip', ['netns', 'identify', String(pid)], { encoding: 'utf8' }).stdout ?? '').trim();
}

describe('clusters on one machine', function () {
  this.timeout(180000);
  let h: TestHost;
  const ids = new Set<string>();
  beforeEach(() => {
    h = new TestHost();
    ids.clear();
  });
  afterEach(async () => {
    clusterHostIds(h.home, ids);
    await h.run('cluster', 'down');
    for (const id of ids) for (const d of ['h1', 'h2', 'h3']) sweepHost(hostPaths(join(h.home, 'cluster', 'hosts', d)), id);
    for (const pid of fabricPids(h.home)) process.kill(pid, 'SIGKILL');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    await h.destroy();
  });

  it('comes up from a topology file: VMs run on the hosts it names, --all and --host aim, status shows it, down leaves nothing', async () => {
    const file = join(h.home, 'lab.yaml');
    writeFileSync(file, LAB);
    const up = await h.run('cluster', 'up', file);
    expect(up.code, up.stderr).to.equal(0);
    expect(up.stdout).to.match(/cluster lab is up: 3 hosts, 4 VMs Running/);
    clusterHostIds(h.home, ids);
    expect(ids.size).to.equal(3);
    expect(fabricPids(h.home).length, 'one fabric: its supervisor and its server').to.equal(2);

    const all = await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all');
    expect(all.map((v) => `${v.host}/${v.name}/${v.state}`).sort()).to.deep.equal(['h1/a/Running', 'h2/b/Running', 'h2/c/Running', 'h3/d/Running']);
    expect(all.find((v) => v.name === 'c')!.processor.weight).to.equal(300);

    const onH2 = await h.json<VmInfo[]>('--host', 'h2', 'vm', 'list');
    expect(onH2.map((v) => v.name).sort()).to.deep.equal(['b', 'c']);
    const onH1 = await h.json<VmInfo[]>('vm', 'list', '--host', 'h1');
    expect(onH1.map((v) => v.name)).to.deep.equal(['a']);
    const aimed = await h.run('--host', 'h1', 'vm', 'stop', 'a');
    expect(aimed.code, aimed.stderr).to.equal(0);
    expect((await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all')).find((v) => v.name === 'a')!.state).to.equal('Off');
    // In a cluster's home a command on one VM goes to the host it is on, without --host …
    const found = await h.run('vm', 'start', 'a');
    expect(found.code, found.stderr).to.equal(0);
    expect((await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all')).find((v) => v.name === 'a')!.state).to.equal('Running');
    const none = await h.run('vm', 'stop', 'nope');
    expect(none.code).to.equal(1);
    expect(none.stderr).to.match(/VM "nope" is on no host of cluster lab that answered/);
    // … and a name two hosts have needs --host.
    await h.ok('--host', 'h1', 'vm', 'new', 'c', '--memory', '16M');
    const two = await h.run('vm', 'delete', 'c');
    expect(two.code).to.equal(1);
    expect(two.stderr).to.match(/VM "c" is on more than one host of cluster lab \(h1, h2\): aim at one with --host/);
    await h.ok('--host', 'h1', 'vm', 'delete', 'c');
    // Aimed at a host the VM is not on: said where it is.
    const wrongHost = await h.run('--host', 'h2', 'vm', 'stop', 'a');
    expect(wrongHost.code).to.equal(1);
    expect(wrongHost.stderr).to.match(/ \(it is on h1: aim there with --host, or leave --host out\)$/m);
    // debug hypercall --as VM finds the VM's host too.
    const hc = await h.run('debug', 'hypercall', '--as', 'd', 'GetPartitionId');
    expect(hc.stdout, `debug hypercall --as d found h3: ${hc.stderr}`).to.match(/^GetPartitionId as d: /);
    // logs in the cluster's home (the hosts' logs are in their own homes) says so.
    const logs = await h.run('logs');
    expect(logs.code).to.equal(1);
    expect(logs.stderr).to.match(/no logs under .*: this home holds cluster lab: name one of its hosts with --host/);
    const unknown = await h.run('--host', 'h9', 'vm', 'list');
    expect(unknown.code).to.equal(1);
    expect(unknown.stderr).to.match(/cluster lab has no host "h9" \(hosts: h1, h2, h3\)/);

    type Status = { name: string; mode: string; hosts: Array<{ name: string; state: string; vms: number; netns: string | null; address: string; member: boolean; info: { pids: { hypervisor: number } } }>; links: Array<{ a: string; b: string; delayMs?: number; applied: boolean; cut: boolean }> };
    const st = await h.json<Status>('cluster', 'status');
    expect(st.name).to.equal('lab');
    expect(st.hosts.map((x) => `${x.name}:${x.state}:${x.vms}:${x.member}`)).to.deep.equal(['h1:up:1:true', 'h2:up:2:true', 'h3:up:1:true']);
    // Where the system allows it (root with CAP_NET_ADMIN, as here), each host runs in its own namespace.
    expect(st.mode).to.equal(namespacesAvailable().ok ? 'namespaces' : 'loopback');
    if (st.mode === 'namespaces') {
      const running = (await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all')).filter((v) => v.state === 'Running');
      for (const host of st.hosts) {
        expect(host.netns).to.equal(`hvlab-${clusterTag(h.home)}-${host.name}`);
        expect(netnsOf(host.info.pids.hypervisor), `the hypervisor of ${host.name}`).to.equal(host.netns);
        const vm = running.find((v) => v.host === host.name && v.pids?.vmwp);
        if (vm?.pids?.vmwp) expect(netnsOf(vm.pids.vmwp), `the VMWP of ${vm.name}`).to.equal(host.netns);
      }
      expect(new Set(st.hosts.map((x) => x.address)).size).to.equal(3);
    }
    // The fabric applies the file's links, and only those (h1 and h3 are not linked).
    expect(st.links.map((l) => ({ a: l.a, b: l.b, delayMs: l.delayMs, applied: l.applied, cut: l.cut }))).to.deep.equal([
      { a: 'h1', b: 'h2', delayMs: 20, applied: true, cut: false }, { a: 'h2', b: 'h3', delayMs: undefined, applied: true, cut: false },
    ]);
    const noLink = await h.run('link', 'probe', 'h1', 'h3');
    expect(noLink.code).to.equal(1);
    expect(noLink.stderr).to.match(/h1 has no link to h3 that is up: that host is down, or not linked to h1 \(peers up: h2\)/);

    // The picture of the running cluster carries the hosts' addresses; --out writes it.
    const dot = await h.ok('cluster', 'graph', '--dot');
    for (const host of st.hosts) expect(dot).to.include(host.address);
    const svgFile = join(h.home, 'lab.svg');
    await h.ok('cluster', 'graph', '--out', svgFile);
    expect(readFileSync(svgFile, 'utf8')).to.match(/^<svg [^]*<\/svg>\n$/);

    const again = await h.run('cluster', 'up', file);
    expect(again.code).to.equal(1);
    expect(again.stderr).to.match(/a cluster \(lab\) is already up/);

    const down = await h.run('cluster', 'down');
    expect(down.code, down.stderr).to.equal(0);
    expect(down.stdout).to.match(/cluster lab is down/);
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
    expect(existsSync(join(h.home, 'cluster'))).to.equal(false);
  });

  it('runs on loopback addresses where namespaces are not allowed, and says why', async () => {
    const lo = new TestHost({ HVLAB_CLUSTER_NETNS: 'off' });
    try {
      const file = join(lo.home, 'one.yaml');
      writeFileSync(file, 'name: one\nhosts:\n  h1: { lps: 1 }\nvms:\n  a: { host: h1, memory: 16M, workload: idle }\n');
      await lo.ok('cluster', 'up', file);
      clusterHostIds(lo.home, ids);
      const st = await lo.json<{ mode: string; modeReason: string; hosts: Array<{ netns: string | null; address: string }> }>('cluster', 'status');
      expect(st.mode).to.equal('loopback');
      expect(st.modeReason).to.match(/HVLAB_CLUSTER_NETNS=off/);
      expect(st.hosts[0]!.netns).to.equal(null);
      expect(st.hosts[0]!.address).to.match(/^127\./);
      // On loopback too, hosts reach each other through the fabric's links.
      expect(fabricPids(lo.home).length, 'the fabric: its supervisor and its server').to.equal(2);
      await lo.ok('cluster', 'down');
      expect(fabricPids(lo.home)).to.deep.equal([]);
    } finally {
      await lo.run('cluster', 'down');
      await lo.destroy();
    }
  });

  it('up --hosts N is a cluster of N fully linked hosts without a file; --host makes VMs on one', async () => {
    await h.ok('up', '--hosts', '2', '--lps', '1');
    clusterHostIds(h.home, ids);
    const st = await h.json<{ name: string; hosts: Array<{ name: string; state: string }>; links: Array<{ a: string; b: string }> }>('cluster', 'status');
    expect(st.hosts.map((x) => `${x.name}:${x.state}`)).to.deep.equal(['h1:up', 'h2:up']);
    expect(st.links.map((l) => `${l.a}-${l.b}`)).to.deep.equal(['h1-h2']);
    await h.ok('--host', 'h2', 'vm', 'new', 'x', '--memory', '16M', '--workload', 'idle');
    await h.ok('--host', 'h2', 'vm', 'start', 'x');
    const all = await h.json<Array<{ name: string; host: string; state: string }>>('vm', 'list', '--all');
    expect(all.map((v) => `${v.host}/${v.name}/${v.state}`)).to.deep.equal(['h2/x/Running']);
    // The picture of the running cluster shows the VM where it runs, though no file names it.
    const dot = await h.run('cluster', 'graph', '--dot');
    expect(dot.code, dot.stderr).to.equal(0);
    expect(dot.stdout).to.match(/"h2" \[label="h2\\n[^"]*\\nx \(16M, 1 VP\)"\]/);
    // A host command in the cluster's home (no --host) says how to reach its hosts.
    const lost = await h.run('vm', 'list');
    expect(lost.code).to.equal(1);
    expect(lost.stderr).to.match(/holds cluster .*--host \(h1, h2\)/);
    const r = await h.run('up', '--hosts', '2', '--warm', '1');
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/--hosts brings up a cluster/);
    // A link's ends are host names, said as such.
    const badEnd = await h.run('link', 'cut', 'H1', 'h2');
    expect(badEnd.stderr).to.match(/^hvlab: "H1" is not a host name/);
    // One host per home: no stray host beside the cluster, and a host of it comes up only with it.
    const stray = await h.run('up');
    expect(stray.code).to.equal(1);
    expect(stray.stderr).to.match(/holds a cluster: one host per home/);
    const member = await h.run('--host', 'h1', 'up');
    expect(member.code).to.equal(1);
    expect(member.stderr).to.match(/^hvlab: h1 is a host of the cluster in .*: its hosts come up with the cluster/);
    // A host brought down alone is said to be down, not to need an "up" that is refused there.
    await h.ok('--host', 'h1', 'down');
    const gone = await h.run('--host', 'h1', 'vm', 'list');
    expect(gone.code).to.equal(1);
    expect(gone.stderr).to.match(/^hvlab: host h1 of the cluster is down; a host brought down alone stays down until the cluster is brought down/);
    // Nor, brought down, with its own home named: it came up outside the cluster, in no namespace.
    const own = await h.run('--home', join(h.home, 'cluster', 'hosts', 'h1'), 'up');
    expect(own.code).to.equal(1);
    expect(own.stderr).to.match(/^hvlab: .*\/cluster\/hosts\/h1 is the home of host h1 of the cluster in .*: its hosts come up with the cluster/);
    // "down" takes down what "up --hosts" brought up: everything of this home is the cluster.
    const downHere = await h.run('down');
    expect(downHere.code, downHere.stderr).to.equal(0);
    expect(downHere.stdout).to.match(/^cluster \S+ is down \(h1, h2; removed \d+ namespaces? and interfaces\)$/m);
    expect(await h.ok('cluster', 'down')).to.match(/no cluster was up/);
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('is one cluster whichever spelling of its home a command is given (a symlink to it, a relative path): down through another is graceful and leaves no network, fabric or socket directory', async () => {
    const real = realpathSync(h.home);
    const link = `${real}-link`;
    symlinkSync(real, link);
    const hostsHomes = (base: string): string[] => ['h1', 'h2'].map((n) => join(base, 'cluster', 'hosts', n));
    /** Socket directories named after either spelling of a host's home. */
    const sockDirs = (): string[] => [...hostsHomes(real), ...hostsHomes(link)].map((d) => join(tmpdir(), `hvlab-${pathHash(d)}`)).filter((d) => existsSync(d));
    type Status = { bridge: string | null; subnet: string; hosts: Array<{ name: string; state: string; member: boolean }> };
    try {
      // Up through the home as made, status and down through a symlink to it; then the other way
      // round, the symlink given relative to the command's directory.
      for (const [upAs, downAs] of [[real, link], [relative(repo, link), real]] as const) {
        await h.ok('up', '--hosts', '2', '--lps', '1', '--home', upAs);
        clusterHostIds(real, ids);
        const here = await h.json<Status>('cluster', 'status', '--home', real);
        const there = await h.json<Status>('cluster', 'status', '--home', link);
        expect({ bridge: there.bridge, subnet: there.subnet }, 'the same network through either spelling').to.deep.equal({ bridge: here.bridge, subnet: here.subnet });
        expect(there.hosts.map((x) => `${x.name}:${x.state}:${x.member}`)).to.deep.equal(['h1:up:true', 'h2:up:true']);
        const down = await h.run('cluster', 'down', '--home', downAs);
        expect(down.code, down.stderr).to.equal(0);
        expect(down.stdout, 'each host down gracefully, not forced').to.match(/^cluster mesh is down \(h1, h2(; removed \d+ namespaces? and interfaces)?\)$/m);
        // Gone when the command returns, not later by the fabric's own watch of the home.
        expect(fabricPids(real), 'the fabric').to.deep.equal([]);
        expect(networkLeftovers(clusterTag(real)), 'the network').to.deep.equal({ namespaces: [], links: [] });
        expect(sockDirs(), 'socket directories').to.deep.equal([]);
        await eventually(() => leftovers(ids).pids.length === 0, 5000);
        expect(leftovers(ids)).to.deep.equal({ pids: [], shm: [] });
      }
    } finally {
      await h.run('cluster', 'down', '--home', link);
      for (const d of sockDirs()) rmSync(d, { recursive: true, force: true });
      rmSync(link, { force: true });
    }
  });

  it('refuses a topology with typos before anything starts, naming line and field', async () => {
    const file = join(h.home, 'bad.yaml');
    writeFileSync(file, LAB.replace('b: { host: h2,', 'b: { host: h4,').replace('delay: 20ms', 'delay: -20ms'));
    const r = await h.run('cluster', 'up', file);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.include(`${file}:8:12: links[0].delay:`);
    expect(r.stderr).to.include(`${file}:12:14: vms.b.host: "h4" is not a host of this cluster`);
    expect(r.stderr).to.match(/nothing was started/);
    expect(existsSync(join(h.home, 'cluster'))).to.equal(false);
  });

  it('a CLI killed half way through cluster up leaves nothing that cluster down does not remove', async () => {
    const file = join(h.home, 'lab.yaml');
    writeFileSync(file, LAB.replace('vms:', 'vms:\n  x: { host: h1, memory: 16M, workload: idle }\n  y: { host: h1, memory: 16M, workload: idle }'));
    const child = spawn(process.execPath, [cli, 'cluster', 'up', file], { env: { ...process.env, HVLAB_HOME: h.home }, stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    // Kill it once a host is up and before everything is.
    const upAlready = await eventually(() => clusterHostIds(h.home, ids).size > 0, 30000);
    expect(upAlready, 'a host came up').to.equal(true);
    child.kill('SIGKILL');
    await exited;
    await sleep(200);
    clusterHostIds(h.home, ids);
    const down = await h.run('cluster', 'down');
    expect(down.code, down.stderr).to.equal(0);
    clusterHostIds(h.home, ids);
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
    expect(existsSync(join(h.home, 'cluster'))).to.equal(false);
  });

  it('Ctrl-C during cluster up takes down what it had started, says so and exits 130 (it left a cluster without its VMs that a second up refused)', async () => {
    const file = join(h.home, 'lab.yaml');
    writeFileSync(file, LAB.replace('vms:', 'vms:\n  x: { host: h1, memory: 16M, workload: idle }\n  y: { host: h1, memory: 16M, workload: idle }'));
    const child = spawn(process.execPath, [cli, 'cluster', 'up', file], { env: { ...process.env, HVLAB_HOME: h.home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.stdout!.resume();
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const ids = new Set<string>();
    expect(await eventually(() => clusterHostIds(h.home, ids).size > 0, 30000), 'a host came up').to.equal(true);
    child.kill('SIGINT');
    expect(await exited, stderr).to.equal(130);
    expect(stderr).to.match(/cluster up was interrupted: everything it had started was taken down/);
    clusterHostIds(h.home, ids);
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
    expect(existsSync(join(h.home, 'cluster')), 'no cluster record: a second up is not refused').to.equal(false);
    expect(existsSync(join(h.home, 'cluster-up-failed')), 'an interrupt is no host\'s failure: no logs are kept').to.equal(false);
  });

  it('a host that fails to start stops the others where they are: cluster up ends naming it and where its logs are kept, no other host comes up or starts a VM, and nothing else is left', async () => {
    const file = join(h.home, 'lab.yaml');
    writeFileSync(file, LAB);
    // Every host holds its ready line 20 s (a test knob) and h2's start fails once its root is up
    // (another): h1 and h3 are surely still starting when h2 fails.
    const child = spawn(process.execPath, [cli, 'cluster', 'up', file], {
      env: { ...process.env, HVLAB_HOME: h.home, HVLAB_TEST_READY_DELAY_MS: '20000', HVLAB_TEST_FAIL_START_HOST: 'h2' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    let code: number | null | undefined;
    const exited = new Promise<void>((r) => child.once('exit', (c) => { code = c; r(); }));
    // Each host's id, read from its record while it is there (a host writes it once its root is
    // up, before its held ready line).
    const ended = await eventually(() => {
      clusterHostIds(h.home, ids);
      return code !== undefined;
    }, 120000, 10);
    if (!ended) child.kill('SIGKILL');
    await exited;
    expect(code, `${stdout}\n${stderr}`).to.equal(1);
    // The failure said is h2's, named (it said "the host did not start ...; see run/logs", naming no
    // host, and pointed at logs that the teardown removes), with where its logs are kept: the
    // teardown removed them with the cluster, and nothing was left to read.
    const kept = join(realpathSync(h.home), 'cluster-up-failed', 'h2');
    expect(stderr.trim()).to.equal(`hvlab: host h2: the host did not start: the start was made to fail by a test (HVLAB_TEST_FAIL_START_HOST); its logs are kept in ${kept}`);
    expect(readdirSync(join(h.home, 'cluster-up-failed')), 'the failed host\'s logs only').to.deep.equal(['h2']);
    expect(readFileSync(join(kept, 'hypervisor.log'), 'utf8')).to.include('the start fails by a test knob (HVLAB_TEST_FAIL_START_HOST)');
    // The knob's line names the host that fails as failHost; under host it has the host's id, as
    // every line of the log does (it wrote host: "h2" over it, and JSON.parse read that).
    const hvLines = readFileSync(join(kept, 'hypervisor.log'), 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const knobLine = hvLines.find((l) => l.msg === 'the start fails by a test knob (HVLAB_TEST_FAIL_START_HOST)');
    expect(hvLines[0]!.host, 'the log\'s host id').to.be.a('string').and.not.equal('h2');
    expect(knobLine).to.include({ failHost: 'h2', host: hvLines[0]!.host });
    expect(stdout).to.include('cluster up failed (host h2: the host did not start: ');
    // h1 and h3 were stopped in their starts: before, each came up once its ready line came (20 s
    // on) and started its VMs, and only then was everything taken down.
    expect(stdout).not.to.match(/host h\d is up|is Running on/);
    // Nothing is left: no process of any of the three hosts (by their records' ids, and by their
    // homes for a host stopped before its record), /dev/shm file, fabric, network or cluster state.
    const hostHomes = ['h1', 'h2', 'h3'].map((n) => join(realpathSync(h.home), 'cluster', 'hosts', n));
    const homeStrays = (): string[] => hostHomes.flatMap((d) => strayHostIds(d));
    await eventually(() => leftovers(ids, h.home).pids.length === 0 && homeStrays().length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(homeStrays()).to.deep.equal([]);
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
    expect(existsSync(join(h.home, 'cluster')), 'no cluster record: a second up is not refused').to.equal(false);
    rmSync(join(h.home, 'cluster-up-failed'), { recursive: true });
  });

  it('refuses a loopback --listen for hosts in namespaces (they could not reach it) before anything starts', async function () {
    if (!namespacesAvailable().ok) this.skip();
    const r = await h.run('up', '--hosts', '2', '--listen', '127.0.0.1');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/--listen 127\.0\.0\.1: the hosts live in network namespaces/);
    expect((await h.run('cluster', 'status')).code, 'no cluster').to.equal(1);
    // Nor an address this machine does not have (a broadcast one bound, and the hosts never joined).
    for (const bad of ['255.255.255.255', '192.0.2.77']) {
      const b = await h.run('up', '--hosts', '2', '--listen', bad);
      expect(b.code, b.stdout).to.equal(1);
      expect(b.stderr).to.include(`--listen ${bad} is not an address of this machine`);
      expect((await h.run('cluster', 'status')).code, 'no cluster').to.equal(1);
    }
  });

  it('two cluster up at once on one home: one brings the cluster up, the other is refused and touches nothing of it', async () => {
    const file = join(h.home, 'race.yaml');
    writeFileSync(file, 'name: race\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\n');
    const [x, y] = await Promise.all([h.run('cluster', 'up', file), h.run('cluster', 'up', file)]);
    expect([x.code, y.code].sort(), `${x.stderr} / ${y.stderr}`).to.deep.equal([0, 1]);
    const refused = x.code === 1 ? x : y;
    expect(refused.stderr).to.match(/^hvlab: a cluster (\(race\) )?is already up/);
    clusterHostIds(h.home, ids);
    const st = await h.json<{ hosts: Array<{ name: string; state: string }> }>('cluster', 'status');
    expect(st.hosts.map((z) => `${z.name}:${z.state}`)).to.deep.equal(['h1:up', 'h2:up']);
    await h.ok('cluster', 'down');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a fabric server that dies (killed as a fault) is started again on its port: the hosts join again, links keep their impairments, a move under way goes on through it and completes; its supervisor killed takes the server with it', async () => {
    const file = join(h.home, 'two.yaml');
    writeFileSync(file, 'name: two\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\nvms:\n  a: { host: h1, memory: 16M, workload: memdirty:4M }\n');
    await h.ok('cluster', 'up', file);
    clusterHostIds(h.home, ids);
    await h.ok('link', 'set', 'h1', 'h2', '--delay', '4ms');
    type Status = { fabric: { state: string; pid: number; restarts: number; address: string }; hosts: Array<{ name: string; member: boolean; info: { cluster?: { peers: Array<{ name: string; state: string }> } } | null }>; links: Array<{ delayMs?: number; applied: boolean }> };
    const before = await h.json<Status>('cluster', 'status');
    expect(before.fabric.restarts).to.equal(0);
    const fabricJson = (): { pid: number; supervisor: number; port: number } => JSON.parse(readFileSync(join(h.home, 'cluster', 'fabric.json'), 'utf8'));
    const first = fabricJson();
    expect(fabricPids(h.home).sort()).to.deep.equal([first.pid, first.supervisor].sort());
    // A move under way (4 MiB dirtied, at 2 MiB/s: ~2 s a pass, a few passes) when the server dies: its stream and its calls
    // cross the fabric. It used to fail 10 s later (the destination could not open its stream
    // port again before the source had joined again, and the new server's proxies listened at new
    // ports), and the destination dropped its copy 30 s after that.
    const moving = h.start('vm', 'move', 'a', '--to', 'h2', '--bandwidth', '2M', '--json');
    expect(await eventually(async () => {
      const m = await h.json<{ status: string; ram: { transferred: number } }>('--host', 'h1', 'vm', 'move-status', 'a').catch(() => null);
      return m?.status === 'active' && m.ram.transferred > 0;
    }, 30000, 50), 'the move is under way').to.equal(true);
    // Killed as a fault (the nemesis finds the server by its title and start time).
    const f = await h.json<{ resolved: { summary: string } }>('fault', 'inject', 'kill', '--target', 'cluster', '--for', '3s');
    expect(f.resolved.summary).to.equal(`the fabric of cluster two (pid ${first.pid}): links h1-h2`);
    // Back on the same port, with the hosts joined again and each heard by the other through their link.
    const back = await eventually(async () => {
      const st = await h.json<Status>('cluster', 'status').catch(() => null);
      return st !== null && st.fabric.state === 'up' && st.fabric.restarts === 1 && st.hosts.every((x) => x.member && (x.info?.cluster?.peers ?? []).some((p) => p.state === 'up'));
    }, 60000, 500);
    const st = await h.json<Status>('cluster', 'status');
    expect(back, JSON.stringify(st)).to.equal(true);
    expect(st.fabric.pid).to.not.equal(first.pid);
    expect(st.fabric.address).to.equal(before.fabric.address);
    expect(fabricJson().port).to.equal(first.port);
    expect(st.links.map((l) => [l.delayMs, l.applied])).to.deep.equal([[4, true]]);
    expect(await h.run('cluster', 'status')).to.have.property('stdout').that.matches(/fabric: up at [^\n]*; restarted 1 time, last at /);
    // The move went on through the new server and completed.
    const r = await moving.done;
    expect(r.code, r.stderr).to.equal(0);
    expect((JSON.parse(r.stdout) as { status: string }).status).to.equal('completed');
    const all = await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all');
    expect(all.map((v) => `${v.host}/${v.name}/${v.state}`)).to.deep.equal(['h2/a/Running']);
    // The supervisor killed: its server goes with it, and nothing starts another.
    const second = fabricJson();
    process.kill(second.supervisor, 'SIGKILL');
    expect(await eventually(() => fabricPids(h.home).length === 0, 10000), `fabric left: ${fabricPids(h.home).join(' ')}`).to.equal(true);
    await h.ok('cluster', 'down');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a page batch the destination wrote, whose answer a fabric killed lost, is sent again once the connection is back and answered as the first time, without being written again: the move completes', async () => {
    // h2's worker holds its answer to the move's third page batch (written already) until the
    // stream's connection drops (HVLAB_TEST_HOLD_PAGES_UNTIL_DROP), then sends it to the connection
    // that is gone: what a fabric killed with an answer on its way does. Before, the source waited
    // out the batch's 10 s bound and the move failed.
    h = new TestHost({ HVLAB_TEST_HOLD_PAGES_UNTIL_DROP: '3' });
    const file = join(h.home, 'two.yaml');
    writeFileSync(file, 'name: two\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\nvms:\n  a: { host: h1, memory: 16M, workload: memdirty:4M }\n');
    await h.ok('cluster', 'up', file);
    clusterHostIds(h.home, ids);
    const workerLog = (host: string): string => {
      const f = join(h.home, 'cluster', 'hosts', host, 'run', 'logs', 'vmwp-a.log');
      return existsSync(f) ? readFileSync(f, 'utf8') : '';
    };
    const moving = h.start('vm', 'move', 'a', '--to', 'h2', '--json');
    expect(await eventually(() => workerLog('h2').includes('the answer to this page batch is held until a connection of the stream socket drops'), 60000, 50), 'h2 holds the answer').to.equal(true);
    const f = await h.json<{ resolved: { summary: string } }>('fault', 'inject', 'kill', '--target', 'cluster', '--for', '3s');
    expect(f.resolved.summary).to.match(/^the fabric of cluster two /);
    const r = await moving.done;
    expect(r.code, `${r.stderr}\n${workerLog('h1').split('\n').filter((l) => /"level":(40|50)/.test(l)).join('\n')}`).to.equal(0);
    expect((JSON.parse(r.stdout) as { status: string }).status).to.equal('completed');
    // The held answer went to a connection that was gone; the source sent the batch again once its connection was back.
    expect(workerLog('h2')).to.match(/"dropped":true[^\n]*the held answer goes now, to a connection that is gone/);
    expect(workerLog('h1')).to.match(/"to":"worker","ops":\[[^\]]*"migPages"[^\]]*\][^\n]*the connection to the destination came back: its unanswered requests are sent again/);
    // h2 answered it from its memory of the first answer: the batch was not written twice.
    expect(workerLog('h2')).to.match(/"op":"migPages","rq":\d+,"running":(true|false)[^\n]*a request the source sent again is answered with its first answer, not carried out again/);
    const all = await h.json<Array<VmInfo & { host: string }>>('vm', 'list', '--all');
    expect(all.map((v) => `${v.host}/${v.name}/${v.state}`)).to.deep.equal(['h2/a/Running']);
    await h.ok('cluster', 'down');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a fabric server stopped is said at once by cluster status; one that cannot start again (its port taken) is said once in the log and plainly by cluster status, retried, and back once the port is free', async () => {
    const file = join(h.home, 'one.yaml');
    writeFileSync(file, 'name: one\nhosts:\n  h1: { lps: 1 }\n');
    await h.ok('cluster', 'up', file);
    clusterHostIds(h.home, ids);
    const fabricJson = (): { pid: number; supervisor: number; port: number; listen: string; failing?: { why: string; tries: number; since: string } } => JSON.parse(readFileSync(join(h.home, 'cluster', 'fabric.json'), 'utf8'));
    const first = fabricJson();
    // Stopped (a pause fault, SIGSTOP), it is said at once (it was a 5 s wait, then "did not answer").
    process.kill(first.pid, 'SIGSTOP');
    try {
      const paused = await h.run('cluster', 'status');
      expect(paused.stdout + paused.stderr).to.match(new RegExp(`fabric server \\(pid ${first.pid}\\) is stopped`));
    } finally {
      process.kill(first.pid, 'SIGCONT');
    }
    // The port taken once the server is killed, before its supervisor starts another: the
    // supervisor is stopped meanwhile, so the two never race (a bind may also have to wait out the
    // killed server's connections in TIME-WAIT: tried again until it takes the port). A ZeroMQ
    // socket, as the server's own.
    const squatter = new zmq.Router({ linger: 0 });
    process.kill(first.supervisor, 'SIGSTOP');
    try {
      // (Unreaped while its supervisor is stopped: its port is free once it has exited, as the bind finds.)
      process.kill(first.pid, 'SIGKILL');
      let bound = '';
      for (let i = 0; i < 700 && bound !== 'yes'; i++) {
        bound = await squatter.bind(`tcp://${first.listen}:${first.port}`).then(() => 'yes', (e: Error) => e.message);
        if (bound !== 'yes') await sleep(100);
      }
      expect(bound, 'the port taken').to.equal('yes');
    } finally {
      process.kill(first.supervisor, 'SIGCONT');
    }
    try {
      expect(await eventually(() => (fabricJson().failing?.tries ?? 0) >= 3, 30000, 100), JSON.stringify(fabricJson())).to.equal(true);
      const st = await h.run('cluster', 'status');
      expect(st.stdout + st.stderr).to.match(new RegExp(`cannot start a server on port ${first.port} \\(\\d+ tries since [^:]+:[^)]*(in use|EADDRINUSE)`));
      const log = readFileSync(join(h.home, 'cluster', 'log', 'fabric.log'), 'utf8');
      expect(log.split('\n').filter((l) => l.includes('the fabric server did not start: trying again')), 'said once, not on every try').to.have.length(1);
    } finally {
      squatter.close();
    }
    expect(await eventually(async () => (await h.json<{ fabric: { state: string } }>('cluster', 'status').catch(() => null))?.fabric.state === 'up', 30000, 250), 'up once the port is free').to.equal(true);
    expect(fabricJson().port).to.equal(first.port);
    expect(fabricJson().failing, 'no failure left in fabric.json').to.equal(undefined);
    expect(readFileSync(join(h.home, 'cluster', 'log', 'fabric.log'), 'utf8')).to.match(/"failedTries":\d+[^\n]*the fabric server is back/);
    await h.ok('cluster', 'down');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a cluster down killed right after it marked the cluster going down leaves a cluster whose fabric still restarts: the stale marker is removed and the hosts join again', async () => {
    await h.ok('up', '--hosts', '2', '--lps', '1');
    clusterHostIds(h.home, ids);
    const marker = join(h.home, 'cluster', 'going-down');
    const down = h.start('cluster', 'down');
    // Killed as soon as the marker is there (kill -9 of a `cluster down` in a shell).
    const end = Date.now() + 30000;
    while (!existsSync(marker) && Date.now() < end) { /* spin: the CLI is another process */ }
    down.child.kill('SIGKILL');
    await down.done;
    expect(existsSync(join(h.home, 'cluster', 'cluster.json')), 'the cluster is still recorded').to.equal(true);
    const fabricJson = (): { pid: number; supervisor: number } => JSON.parse(readFileSync(join(h.home, 'cluster', 'fabric.json'), 'utf8'));
    const first = fabricJson();
    process.kill(first.pid, 'SIGKILL');
    type Status = { fabric: { state: string; restarts: number }; hosts: Array<{ name: string; state: string; member: boolean }> };
    let st: Status | null = null;
    const back = await eventually(async () => {
      st = await h.json<Status>('cluster', 'status').catch(() => null);
      // Hosts the killed down had already taken down stay down; those up join the new server.
      return st !== null && st.fabric.state === 'up' && st.fabric.restarts === 1 && st.hosts.every((x) => x.state === 'down' || x.member);
    }, 60000, 500);
    expect(back, JSON.stringify(st)).to.equal(true);
    expect(fabricJson().supervisor, 'the same supervisor').to.equal(first.supervisor);
    expect(existsSync(marker), 'the stale marker is gone').to.equal(false);
    expect(readFileSync(join(h.home, 'cluster', 'log', 'fabric.log'), 'utf8')).to.match(/a going-down marker whose \\"cluster down\\" is gone is ignored/);
    await h.ok('cluster', 'down');
    await eventually(() => leftovers(ids, h.home).pids.length === 0, 5000);
    expect(leftovers(ids, h.home)).to.deep.equal({ pids: [], shm: [] });
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a cluster whose home is removed under it goes down by itself: hosts, fabric, network, /dev/shm files, and the home is not made again', async () => {
    const file = join(h.home, 'two.yaml');
    writeFileSync(file, 'name: two\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\nvms:\n  a: { host: h1, memory: 16M, workload: idle }\n');
    await h.ok('cluster', 'up', file);
    clusterHostIds(h.home, ids);
    expect(ids.size).to.equal(2);
    const home = h.home;
    const tag = clusterTag(home);
    expect(fabricPids(home).length, 'the fabric runs: its supervisor and its server').to.equal(2);
    if (namespacesAvailable().ok) expect(networkLeftovers(tag).namespaces.length, 'a namespace per host').to.equal(2);
    rmSync(home, { recursive: true, force: true });
    const net = (): number => networkLeftovers(tag).namespaces.length + networkLeftovers(tag).links.length;
    const gone = await eventually(() => leftovers(ids, home).pids.length === 0 && leftovers(ids).shm.length === 0 && net() === 0 && !existsSync(home), 30000);
    expect(gone, `left: ${JSON.stringify({ ...leftovers(ids, home), network: networkLeftovers(tag), home: existsSync(home) })}`).to.equal(true);
  });
});

describe('a home with a host of its own', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(async () => {
    await h.run('cluster', 'down');
    await h.destroyLeavingNothing();
    expect(fabricPids(h.home)).to.deep.equal([]);
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('takes no cluster beside it (one host per home): "up --hosts" is refused before any network is made, and "down" then leaves nothing', async () => {
    await h.ok('up', '--lps', '1');
    const r = await h.run('up', '--hosts', '2', '--lps', '1');
    expect(r.code).to.equal(1);
    expect(r.stderr.trim()).to.equal(`hvlab: a host is up in ${h.home} ("hvlab up" made it): one host per home ("hvlab down" first, or --home elsewhere)`);
    expect(existsSync(join(h.home, 'cluster', 'cluster.json')), 'no cluster record stays').to.equal(false);
    expect(networkLeftovers(clusterTag(h.home)), 'no network was made').to.deep.equal({ namespaces: [], links: [] });
    expect(fabricPids(h.home)).to.deep.equal([]);
    const d = await h.ok('down');
    expect(d).to.match(/^host \S+ is down$/m);
    // At once: down waits for the processes it had to kill to be gone.
    expect(h.leftovers()).to.deep.equal({ pids: [], shm: [] });
  });
});

/** `hvlab ARGS` with HVLAB_HOME=home. */
function cliIn(home: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cliAt(null, home, ...args);
}
/** `hvlab ARGS` with HVLAB_HOME=home, in network namespace `netns` (null: the test's own). */
function cliAt(netns: string | null, home: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const argv = [process.execPath, cli, ...args];
  const c = spawn(netns === null ? argv[0]! : 'ip', netns === null ? argv.slice(1) : ['netns', 'exec', netns, ...argv], { env: { ...process.env, HVLAB_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  c.stdout.on('data', (d) => (stdout += d));
  c.stderr.on('data', (d) => (stderr += d));
  return new Promise((res) => c.on('close', (code) => res({ code: code ?? -1, stdout, stderr })));
}
const netnsNames = (): string[] => (spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '').split('\n').map((l) => l.trim().split(/\s+/)[0]!).filter(Boolean);
const linkNames = (): string[] => (spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout ?? '').split('\n').map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '').filter(Boolean);

describe('clusters of different homes on one machine', function () {
  this.timeout(300000);
  let base = '';
  const homes: string[] = [];
  const ids = new Set<string>();
  /** Network objects a test made by hand: removed after it whatever happened. */
  const made: { links: string[]; namespaces: string[] } = { links: [], namespaces: [] };
  type Status = { bridge: string | null; subnet: string; mode: string; hosts: Array<{ name: string; netns: string | null; state: string; member: boolean }> };
  const status = async (home: string): Promise<Status> => {
    const r = await cliIn(home, 'cluster', 'status', '--json');
    expect(r.code, r.stderr).to.equal(0);
    return JSON.parse(r.stdout) as Status;
  };
  beforeEach(function () {
    if (!namespacesAvailable().ok) this.skip();
    base = mkdtempSync(join(tmpdir(), 'hvlab-test-homes-'));
    homes.length = 0;
    ids.clear();
  });
  afterEach(async () => {
    for (const home of homes) {
      clusterHostIds(home, ids);
      await cliIn(home, 'cluster', 'down');
    }
    for (const home of homes) for (const id of ids) for (const d of ['h1', 'h2']) sweepHost(hostPaths(join(home, 'cluster', 'hosts', d)), id);
    for (const home of homes) for (const pid of fabricPids(home)) process.kill(pid, 'SIGKILL');
    for (const l of made.links.splice(0)) spawnSync('ip', ['link', 'del', l]);
    for (const n of made.namespaces.splice(0)) spawnSync('ip', ['netns', 'del', n]);
    await eventually(() => homes.every((home) => leftovers(ids, home).pids.length === 0), 5000);
    if (base) rmSync(base, { recursive: true, force: true });
    base = '';
  });

  /** Two homes under `base` whose clusters' tags are the same (the first pair found: a birthday search). */
  const collidingHomes = (): [string, string] => {
    const seen = new Map<string, string>();
    for (let i = 0; ; i++) {
      const home = join(base, `c${i}`);
      const other = seen.get(clusterTag(home));
      if (other !== undefined) return [other, home];
      seen.set(clusterTag(home), home);
    }
  };

  it('a home whose tag is another\'s never takes that other\'s network down, and comes up beside it on names and a subnet of its own', async () => {
    const [a, b] = collidingHomes();
    homes.push(a, b);
    const upA = await cliIn(a, 'up', '--hosts', '2', '--lps', '1');
    clusterHostIds(a, ids);
    expect(upA.code, upA.stderr).to.equal(0);
    const stA = await status(a);
    expect(stA.mode).to.equal('namespaces');
    const namesOf = (st: Status): string[] => [st.bridge!, ...st.hosts.map((x) => x.netns!)];
    const present = (st: Status): string[] => namesOf(st).filter((n) => netnsNames().includes(n) || linkNames().includes(n));
    expect(present(stA)).to.deep.equal(namesOf(stA));

    // A home with no cluster: its "cluster down" says so and leaves the other's network alone.
    const downB = await cliIn(b, 'cluster', 'down');
    expect(downB.code, downB.stderr).to.equal(0);
    expect(downB.stdout).to.match(/no cluster was up/);
    expect(present(stA), 'the other cluster\'s namespaces and bridge').to.deep.equal(namesOf(stA));

    // Its "up" comes up beside the other, on names and a subnet of its own.
    const upB = await cliIn(b, 'up', '--hosts', '2', '--lps', '1');
    clusterHostIds(b, ids);
    expect(upB.code, upB.stderr).to.equal(0);
    expect(present(stA), 'the other cluster\'s namespaces and bridge').to.deep.equal(namesOf(stA));
    const stB = await status(b);
    expect(stB.bridge).to.not.equal(stA.bridge);
    expect(stB.subnet).to.not.equal(stA.subnet);
    for (const n of namesOf(stB)) expect(namesOf(stA)).to.not.include(n);
    for (const st of [await status(a), stB]) expect(st.hosts.map((x) => `${x.name}:${x.state}:${x.member}`)).to.deep.equal(['h1:up:true', 'h2:up:true']);

    // Each "cluster down" takes its own network and only that.
    const downB2 = await cliIn(b, 'cluster', 'down');
    expect(downB2.code, downB2.stderr).to.equal(0);
    expect(present(stB)).to.deep.equal([]);
    expect(present(stA), 'the other cluster\'s namespaces and bridge').to.deep.equal(namesOf(stA));
    expect((await status(a)).hosts.map((x) => `${x.name}:${x.state}:${x.member}`)).to.deep.equal(['h1:up:true', 'h2:up:true']);
    const downA = await cliIn(a, 'cluster', 'down');
    expect(downA.code, downA.stderr).to.equal(0);
    expect(present(stA)).to.deep.equal([]);
    await eventually(() => homes.every((home) => leftovers(ids, home).pids.length === 0), 5000);
    for (const home of homes) expect(leftovers(ids, home)).to.deep.equal({ pids: [], shm: [] });
    expect(linkNames().filter((l) => l.startsWith(`hv${clusterTag(a)}-`) || l.startsWith(`hvp${clusterTag(a)}-`))).to.deep.equal([]);
  });

  it('a cluster whose fabric listens on every address comes up beside clusters whose fabrics listen on their gateways, in either order; a second one is refused at once, naming the port, and leaves nothing', async () => {
    // In a namespace of the test's own: 0.0.0.0 there is none of this machine's addresses, and
    // the fabrics of other clusters of this machine keep their ports. A gateway's fabric had 7740
    // too: the cluster on every address failed beside it ("Address already in use"), and it beside that one.
    const ns = `hvlab-${clusterTag(base)}-fp`;
    made.namespaces.push(ns);
    for (const args of [['netns', 'add', ns], ['-n', ns, 'link', 'set', 'lo', 'up']]) {
      const r = spawnSync('ip', args, { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
    }
    const [gw1, every, gw2, refused] = ['gw1', 'every', 'gw2', 'refused'].map((n) => join(base, n)) as [string, string, string, string];
    homes.push(gw1, every, gw2, refused);
    const up = async (home: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
      const r = await cliAt(ns, home, 'up', '--hosts', '1', '--lps', '1', ...args);
      clusterHostIds(home, ids);
      return r;
    };
    const nsLinks = (): string[] => (spawnSync('ip', ['-n', ns, '-o', 'link', 'show'], { encoding: 'utf8' }).stdout ?? '').split('\n').map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '').filter(Boolean).sort();
    try {
      for (const [home, args] of [[gw1, []], [every, ['--listen', '0.0.0.0']], [gw2, []]] as const) {
        const r = await up(home, ...args);
        expect(r.code, `${home}: ${r.stderr}`).to.equal(0);
      }
      // Each one's status says the port its fabric listens on, and its host joined it there.
      const listening = (spawnSync('ip', ['netns', 'exec', ns, 'ss', '-ltnH'], { encoding: 'utf8' }).stdout ?? '').split('\n').map((l) => l.trim().split(/\s+/)[3]).filter(Boolean);
      type St = { fabric: { state: string; address: string }; join: string | null; hosts: Array<{ member: boolean }> };
      const ports: number[] = [];
      for (const home of [gw1, every, gw2]) {
        const r = await cliAt(ns, home, 'cluster', 'status', '--json');
        expect(r.code, r.stderr).to.equal(0);
        const st = JSON.parse(r.stdout) as St;
        expect([st.fabric.state, ...st.hosts.map((x) => x.member)]).to.deep.equal(['up', true]);
        const [gateway, port] = st.fabric.address.split(':') as [string, string];
        expect(listening, st.fabric.address).to.include(`${home === every ? '0.0.0.0' : gateway}:${port}`);
        ports.push(Number(port));
      }
      expect(ports[1], 'where other machines join').to.equal(7740);
      expect(ports.filter((p) => p === 7740), 'the gateways\' fabrics on ports of their own').to.have.length(1);
      // A second cluster on every address: refused before anything is made, the port and what to do named.
      const linksBefore = nsLinks();
      const second = await up(refused, '--listen', '0.0.0.0');
      expect(second.code).to.equal(1);
      expect(second.stderr).to.match(/^hvlab: port 7740 is in use on this machine \(another cluster's fabric, or another program, listens there; .*\): take that down, or give this cluster another port with --fabric-port\n$/);
      // Its gateway's port given, and held by the one on every address: found once its bridge is made, said the same way, and its network goes again.
      const given = await up(refused, '--fabric-port', '7740');
      expect(given.code).to.equal(1);
      expect(given.stderr).to.match(/^hvlab: port 7740 is in use on 10\.\d+\.\d+\.1 \(another cluster's fabric/);
      expect(existsSync(join(refused, 'cluster')), 'no cluster state').to.equal(false);
      expect(fabricPids(refused), 'no fabric').to.deep.equal([]);
      expect(networkLeftovers(clusterTag(refused)), 'no namespace').to.deep.equal({ namespaces: [], links: [] });
      expect(nsLinks(), 'no bridge or veth').to.deep.equal(linksBefore);
    } finally {
      for (const home of homes) await cliAt(ns, home, 'cluster', 'down');
    }
    await eventually(() => homes.every((home) => leftovers(ids, home).pids.length === 0), 5000);
    for (const home of homes) expect(leftovers(ids, home)).to.deep.equal({ pids: [], shm: [] });
  });

  it('a subnet in use on this machine is not taken: the cluster gets another, and what had it keeps it', async () => {
    const home = join(base, 'sub');
    homes.push(home);
    // The subnet the cluster of `home` would have, taken by an interface of this test's (a bridge: this kernel has no dummy interfaces).
    const want = planNetwork(home, ['h1', 'h2'], 'namespaces', 'test');
    const dummy = `hvt${randomBytes(4).toString('hex')}`;
    made.links.push(dummy);
    const taken = `${want.gateway.replace(/\.1$/, '.250')}/24`;
    for (const args of [['link', 'add', dummy, 'type', 'bridge'], ['addr', 'add', taken, 'dev', dummy], ['link', 'set', dummy, 'up']]) {
      const r = spawnSync('ip', args, { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
    }
    const up = await cliIn(home, 'up', '--hosts', '2', '--lps', '1');
    clusterHostIds(home, ids);
    expect(up.code, up.stderr).to.equal(0);
    const st = await status(home);
    expect(st.subnet).to.not.equal(want.subnet);
    expect(st.hosts.map((x) => `${x.name}:${x.state}:${x.member}`)).to.deep.equal(['h1:up:true', 'h2:up:true']);
    expect(spawnSync('ip', ['-4', '-o', 'addr', 'show', 'dev', dummy], { encoding: 'utf8' }).stdout).to.include(taken);
    const down = await cliIn(home, 'cluster', 'down');
    expect(down.code, down.stderr).to.equal(0);
    expect(spawnSync('ip', ['-4', '-o', 'addr', 'show', 'dev', dummy], { encoding: 'utf8' }).stdout, 'down leaves what was not its own').to.include(taken);
  });

  it('a cluster an earlier hvlab made (4-digit tag, no owner marks) is still taken down by its home, and by no other home', async () => {
    // Homes whose earlier tags (the first 4 hex digits of the SHA-1 of the home) are the same, with names free on this machine.
    const legacy = (home: string): string => createHash('sha1').update(home).digest('hex').slice(0, 4);
    const seen = new Map<string, string>();
    let pair: [string, string] | null = null;
    for (let i = 0; pair === null; i++) {
      const home = join(base, `l${i}`);
      const t = legacy(home);
      const other = seen.get(t);
      if (other !== undefined && !netnsNames().some((n) => n.startsWith(`hvlab-${t}-`)) && !linkNames().some((l) => l === `hvbr-${t}` || l.startsWith(`hv${t}-`) || l.startsWith(`hvp${t}-`))) pair = [other, home];
      else seen.set(t, home);
    }
    const [old, other] = pair;
    homes.push(old, other);
    const t = legacy(old);
    // The network an earlier hvlab made for a cluster of two hosts in `old`, and its record (version 2, no network).
    const ns = [`hvlab-${t}-h1`, `hvlab-${t}-h2`];
    made.namespaces.push(...ns);
    made.links.push(`hvbr-${t}`, `hv${t}-0`, `hv${t}-1`);
    const run = (args: string[]): void => {
      const r = spawnSync('ip', args, { encoding: 'utf8' });
      expect(r.status, `ip ${args.join(' ')}: ${r.stderr}`).to.equal(0);
    };
    run(['link', 'add', `hvbr-${t}`, 'type', 'bridge']);
    ns.forEach((n, i) => {
      run(['netns', 'add', n]);
      run(['link', 'add', `hv${t}-${i}`, 'type', 'veth', 'peer', 'name', `hvp${t}-${i}`]);
      run(['link', 'set', `hvp${t}-${i}`, 'netns', n]);
      run(['link', 'set', `hv${t}-${i}`, 'master', `hvbr-${t}`]);
    });
    mkdirSync(join(old, 'cluster'), { recursive: true });
    writeFileSync(join(old, 'cluster', 'cluster.json'), JSON.stringify({
      version: 2, name: 'two', file: 'two.yaml', source: 'name: two\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nvms: {}\n', createdAt: new Date().toISOString(),
      mode: 'namespaces', modeReason: 'test', listen: '10.200.0.1', fabricPort: 7740, gateway: '10.200.0.1',
    }));
    const mine = (): string[] => [...netnsNames().filter((n) => ns.includes(n)), ...linkNames().filter((l) => l === `hvbr-${t}` || l.startsWith(`hv${t}-`))];
    expect(mine()).to.have.length(5);
    // Another home with that tag and no cluster: leaves it.
    const d1 = await cliIn(other, 'cluster', 'down');
    expect(d1.code, d1.stderr).to.equal(0);
    expect(mine(), 'the earlier cluster\'s network after "cluster down" in another home').to.have.length(5);
    // Its own home: takes it all.
    const d2 = await cliIn(old, 'cluster', 'down');
    expect(d2.code, d2.stderr).to.equal(0);
    expect(d2.stdout).to.match(/cluster two is down/);
    expect(await eventually(() => mine().length === 0, 5000), `left: ${mine().join(', ')}`).to.equal(true);
  });
});
