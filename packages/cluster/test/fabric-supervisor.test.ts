/**
 * The fabric's supervisor as a process (fabric-main.ts), on a cluster record written by hand (no
 * hosts): the edges between it, its server and a home that goes away. Started as lab.ts starts it.
 */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CLUSTER_WIRE_VERSION, HEARTBEAT_MS } from '@hvlab/protocol';
import { curveClientOptions, entries, firstLine, makeClusterKey, nodeArgsFor, pidAlive, processEnv, readClusterKey, RpcClient, RpcFailure, writeClusterKey } from '@hvlab/runtime';
import { procCmdline, procStartTime } from '@hvlab/shm/procfs';
import {
  clusterDir, clusterKeyFile, clusterRecordFile, clusterTag, fabricFile, fabricPids, fabricStatus, namespacesAvailable, networkLeftovers, planNetwork, setupNetwork, teardownNetwork, type ClusterNetwork,
} from '../src/index.js';

const SOURCE = 'name: t\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\nvms: {}\n';

async function until(cond: () => boolean, ms: number, every = 20): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, every));
  }
  return cond();
}

describe('the fabric\'s supervisor', function () {
  this.timeout(60000);
  let home = '';
  let net: ClusterNetwork | null = null;

  /** A cluster record of two hosts and its key in a new home; its network too when `namespaces`. */
  const makeHome = (namespaces = false): string => {
    const h = mkdtempSync(join(tmpdir(), 'hvlab-fabric-sup-'));
    mkdirSync(join(clusterDir(h), 'log'), { recursive: true });
    net = namespaces ? planNetwork(h, ['h1', 'h2'], 'namespaces', 'test') : null;
    const gateway = net?.gateway ?? '127.0.0.1';
    writeFileSync(clusterRecordFile(h), JSON.stringify({
      version: 2, name: 't', file: 't.yaml', source: SOURCE, createdAt: new Date().toISOString(), mode: net ? 'namespaces' : 'loopback', modeReason: 'test', listen: gateway, fabricPort: 0, gateway,
      ...(net ? { version: 3, network: { tag: net.tag, subnet: net.subnet, instance: net.instance } } : {}),
    }));
    writeClusterKey(clusterKeyFile(h), makeClusterKey('t'));
    if (net) setupNetwork(net);
    return h;
  };
  /** The supervisor, as lab.ts's startFabric starts it; resolves once it said ready. */
  const startSupervisor = async (h: string, env: Record<string, string> = { HVLAB_FABRIC_HOME: h }, cwd?: string): Promise<ChildProcess> => {
    const errFd = openSync(join(clusterDir(h), 'log', 'fabric-stderr.log'), 'a');
    const child = spawn(process.execPath, [...nodeArgsFor(entries.fabric), h], { detached: true, stdio: ['ignore', 'pipe', errFd], env: processEnv(process.env, env), ...(cwd ? { cwd } : {}) });
    closeSync(errFd);
    const first = await firstLine(child, 20000);
    child.stdout!.destroy();
    child.unref();
    expect(first).to.deep.equal({ kind: 'line', line: 'ready' });
    return child;
  };
  const fabricJson = (h: string): { pid: number; supervisor: number } => JSON.parse(readFileSync(fabricFile(h), 'utf8'));
  /** A server its supervisor is starting (not the one of fabric.json): its pid, as soon as it runs. */
  const startingServer = async (h: string, old: number): Promise<number | null> => {
    let pid: number | null = null;
    await until(() => {
      pid = fabricPids(h).find((p) => p !== old && procCmdline(p)?.includes('--serve') === true) ?? null;
      return pid !== null;
    }, 10000, 2);
    return pid;
  };

  afterEach(() => {
    for (const p of fabricPids(home)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch { /* gone */ }
    }
    if (net) teardownNetwork(net);
    net = null;
    rmSync(home, { recursive: true, force: true });
  });

  it('a fabric whose server is gone is said to be restarting while its supervisor lives, and not running after, at once (no wait for an answer)', async () => {
    home = makeHome();
    await startSupervisor(home);
    const first = fabricJson(home);
    expect((await fabricStatus(home)).cluster).to.equal('t');
    // Its supervisor stopped, so the restart waits: the window a status can fall in.
    process.kill(first.supervisor, 'SIGSTOP');
    try {
      process.kill(first.pid, 'SIGKILL');
      expect(await until(() => !pidAlive(first.pid), 5000)).to.equal(true);
      const t0 = Date.now();
      const e = await fabricStatus(home).catch((x: Error) => x);
      expect((e as Error).message).to.equal(`the cluster's fabric is restarting: its server (pid ${first.pid}) is gone and its supervisor (pid ${first.supervisor}) starts another; try again in a moment`);
      expect(Date.now() - t0, 'said at once').to.be.below(4000);
    } finally {
      process.kill(first.supervisor, 'SIGCONT');
    }
    // Started again: it answers.
    expect(await until(() => fabricJson(home).pid !== first.pid, 10000)).to.equal(true);
    expect((await fabricStatus(home)).cluster).to.equal('t');
    // Both gone: not running.
    const second = fabricJson(home);
    process.kill(second.supervisor, 'SIGKILL');
    expect(await until(() => !pidAlive(second.pid) && !pidAlive(second.supervisor), 5000)).to.equal(true);
    const gone = await fabricStatus(home).catch((x: Error) => x);
    expect((gone as Error).message).to.match(/^the cluster's fabric is not running \(its server, pid \d+, is gone, and its supervisor, pid \d+\): its links are down/);
  });

  it('takes its home from its argument, as its header says, without HVLAB_FABRIC_HOME', async () => {
    home = makeHome();
    const cwd = mkdtempSync(join(tmpdir(), 'hvlab-fabric-cwd-'));
    try {
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (k !== 'HVLAB_FABRIC_HOME' && v !== undefined) env[k] = v;
      const child = spawn(process.execPath, [...nodeArgsFor(entries.fabric), home], { stdio: ['ignore', 'pipe', 'pipe'], env, cwd });
      const first = await firstLine(child, 20000);
      expect(first).to.deep.equal({ kind: 'line', line: 'ready' });
      expect(readdirSync(cwd), 'nothing made where it was started').to.deep.equal([]);
      expect(fabricJson(home).supervisor).to.equal(child.pid);
      child.kill('SIGTERM');
      expect(await until(() => !pidAlive(fabricJson(home).pid) && child.exitCode !== null, 5000)).to.equal(true);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  it('a server that dies after the home was removed under the cluster: its supervisor still removes the cluster\'s network', async function () {
    if (!namespacesAvailable().ok) this.skip();
    home = makeHome(true);
    if (networkLeftovers(clusterTag(home)).namespaces.length !== 2) this.skip();
    await startSupervisor(home);
    const { pid } = fabricJson(home);
    rmSync(home, { recursive: true, force: true });
    // Before the supervisor's watch of the record (every 2 s) sees it gone.
    process.kill(pid, 'SIGKILL');
    expect(await until(() => fabricPids(home).length === 0, 10000, 100), 'the supervisor leaves').to.equal(true);
    expect(networkLeftovers(clusterTag(home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('a home removed while a restart is starting a server is not made again by it', async () => {
    home = makeHome();
    await startSupervisor(home);
    const { pid } = fabricJson(home);
    process.kill(pid, 'SIGKILL');
    const next = await startingServer(home, pid);
    expect(next, 'a server is being started').to.not.equal(null);
    rmSync(home, { recursive: true, force: true });
    expect(await until(() => fabricPids(home).length === 0, 10000, 100), 'the supervisor leaves').to.equal(true);
    expect(existsSync(home), `made again: ${existsSync(home) ? readdirSync(home, { recursive: true }).join(', ') : ''}`).to.equal(false);
  });

  it('a supervisor ended while a restart is starting a server ends that server too', async () => {
    home = makeHome();
    const sup = await startSupervisor(home);
    const { pid } = fabricJson(home);
    process.kill(pid, 'SIGKILL');
    const next = await startingServer(home, pid);
    expect(next, 'a server is being started').to.not.equal(null);
    process.kill(sup.pid!, 'SIGTERM');
    expect(await until(() => !pidAlive(sup.pid!), 5000, 5)).to.equal(true);
    // Gone with it, not left to start, bind the fabric's port and serve with nobody to supervise it.
    expect(await until(() => !pidAlive(next!), 150, 5), `server ${next} left behind its supervisor`).to.equal(true);
    const log = readFileSync(join(clusterDir(home), 'log', 'fabric.log'), 'utf8');
    expect(log).to.not.match(/uncaught exception/);
  });
  it('a going-down marker of a "cluster down" that was killed keeps nothing down: a server that dies is started again and the marker goes; one whose "cluster down" runs holds the restart back until it is gone', async () => {
    home = makeHome();
    const sup = await startSupervisor(home);
    const marker = join(clusterDir(home), 'going-down');
    const logText = (): string => readFileSync(join(clusterDir(home), 'log', 'fabric.log'), 'utf8');
    // A "cluster down" that runs (a process of its pid and start time): no server is started meanwhile.
    const writer = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      writeFileSync(marker, `${writer.pid} ${procStartTime(writer.pid!)}\n`);
      const first = fabricJson(home);
      process.kill(first.pid, 'SIGKILL');
      expect(await until(() => logText().includes('no server is started while its \\"cluster down\\" runs'), 10000), logText()).to.equal(true);
      expect(fabricPids(home), 'the supervisor waits, without a server').to.deep.equal([sup.pid]);
      // Killed before it took the fabric down (as with kill -9): the supervisor starts a server again.
      writer.kill('SIGKILL');
      expect(await until(() => fabricJson(home).pid !== first.pid && pidAlive(fabricJson(home).pid), 20000), logText()).to.equal(true);
      expect((await fabricStatus(home)).cluster).to.equal('t');
      expect(existsSync(marker), 'the stale marker is removed').to.equal(false);
    } finally {
      writer.kill('SIGKILL');
    }
    // A marker whose writer was gone before the server died (the tester's case): the server is
    // started again, and the supervisor stays.
    const gone = spawnSync('true').pid;
    writeFileSync(marker, `${gone} 1\n`);
    const second = fabricJson(home);
    process.kill(second.pid, 'SIGKILL');
    expect(await until(() => fabricJson(home).pid !== second.pid && pidAlive(fabricJson(home).pid), 20000), logText()).to.equal(true);
    expect((await fabricStatus(home)).cluster).to.equal('t');
    expect(pidAlive(sup.pid!), 'the supervisor stays').to.equal(true);
    expect(existsSync(marker)).to.equal(false);
    expect(logText()).to.match(new RegExp(`"why":"the \\\\"cluster down\\\\" that wrote it \\(pid ${gone}\\) is gone"[^\\n]*a going-down marker whose \\\\"cluster down\\\\" is gone is ignored`));
  });

  /** fabric.json's record of failed starts, if any. */
  const failingOf = (h: string): { why: string; tries: number; since: string } | undefined => (JSON.parse(readFileSync(fabricFile(h), 'utf8')) as { failing?: { why: string; tries: number; since: string } }).failing;
  const stderrLog = (h: string): string => readFileSync(join(clusterDir(h), 'log', 'fabric-stderr.log'), 'utf8');

  it('a server that cannot read the cluster\'s key ends at once with the reason: fabric.json and the status say it, not a ready timeout; it serves again once the key is back', async () => {
    home = makeHome();
    await startSupervisor(home);
    const first = fabricJson(home);
    const keyFile = clusterKeyFile(home);
    const key = readFileSync(keyFile);
    writeFileSync(keyFile, 'not a key\n');
    process.kill(first.pid, 'SIGKILL');
    expect(await until(() => failingOf(home) !== undefined, 40000, 50), 'a failed start is recorded').to.equal(true);
    const why = failingOf(home)!.why;
    expect(why).to.match(/^the fabric server cannot start: \S*cluster\.key is not a cluster key file: /);
    const e = await fabricStatus(home).catch((x: Error) => x);
    expect((e as Error).message).to.match(/^the cluster's fabric is down: its supervisor \(pid \d+\) cannot start a server on port \d+ \(\d+ tr(y|ies) since [^:]+:/);
    expect((e as Error).message).to.include(why);
    const log = readFileSync(join(clusterDir(home), 'log', 'fabric.log'), 'utf8');
    expect(log).to.not.match(/uncaught exception|keeps serving/);
    expect(stderrLog(home), 'no stack trace').to.not.match(/^\s+at /m);
    writeFileSync(keyFile, key);
    expect(await until(() => failingOf(home) === undefined && fabricJson(home).pid !== first.pid && pidAlive(fabricJson(home).pid), 30000), JSON.stringify(failingOf(home))).to.equal(true);
    expect((await fabricStatus(home)).cluster).to.equal('t');
  });

  it('a server started on a damaged cluster record ends with the reason, recorded in fabric.json, without a stack trace; it serves again once the record is back', async () => {
    home = makeHome();
    await startSupervisor(home);
    const first = fabricJson(home);
    const rec = readFileSync(clusterRecordFile(home));
    writeFileSync(clusterRecordFile(home), '{"damaged');
    process.kill(first.pid, 'SIGKILL');
    expect(await until(() => failingOf(home) !== undefined, 40000, 50), 'a failed start is recorded').to.equal(true);
    expect(failingOf(home)!.why).to.equal(`the fabric server cannot start: the cluster record ${clusterRecordFile(home)} is not JSON; run "hvlab cluster down" to clean up`);
    expect(readFileSync(join(clusterDir(home), 'log', 'fabric.log'), 'utf8')).to.include('the fabric server did not start: trying again');
    expect(stderrLog(home), 'no stack trace').to.not.match(/^\s+at /m);
    writeFileSync(clusterRecordFile(home), rec);
    expect(await until(() => failingOf(home) === undefined && fabricJson(home).pid !== first.pid && pidAlive(fabricJson(home).pid), 30000), JSON.stringify(failingOf(home))).to.equal(true);
    expect((await fabricStatus(home)).cluster).to.equal('t');
  });

  it('a supervisor whose first server cannot read the cluster\'s key says why as its first line and leaves nothing running', async () => {
    home = makeHome();
    rmSync(clusterKeyFile(home));
    const errFd = openSync(join(clusterDir(home), 'log', 'fabric-stderr.log'), 'a');
    const child = spawn(process.execPath, [...nodeArgsFor(entries.fabric), home], { detached: true, stdio: ['ignore', 'pipe', errFd], env: processEnv(process.env, { HVLAB_FABRIC_HOME: home }) });
    closeSync(errFd);
    const first = await firstLine(child, 30000);
    child.stdout!.destroy();
    expect(first).to.deep.equal({ kind: 'line', line: `the fabric server cannot start: cannot read the cluster key file ${clusterKeyFile(home)}: it does not exist` });
    expect(await until(() => fabricPids(home).length === 0, 10000), `left: ${fabricPids(home).join(' ')}`).to.equal(true);
    expect(stderrLog(home), 'no stack trace').to.not.match(/^\s+at /m);
  });

  it('a fabric paused for longer than it holds a quiet member\'s name (a hung switch) does not give a live member\'s name to another holder of the key when it resumes', async function () {
    this.timeout(90000);
    home = makeHome();
    // The fabric holds a quiet member's name 4 s here (HVLAB_TEST_NAME_HOLD_MS; 10 heartbeat
    // periods by default): a pause past that is what gave the name away.
    const hold = 4000;
    await startSupervisor(home, { HVLAB_FABRIC_HOME: home, HVLAB_TEST_NAME_HOLD_MS: String(hold) });
    const { pid } = fabricJson(home);
    const { port } = JSON.parse(readFileSync(fabricFile(home), 'utf8')) as { port: number };
    const key = readClusterKey(clusterKeyFile(home));
    const holder = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
    const other = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
    const secret = randomBytes(32).toString('hex');
    const join = (c: RpcClient, s: string, ms = 3000): Promise<unknown> => c.call({ op: 'join', name: 'h1', secret: s, address: '127.0.0.1', peerPort: 1, mgmtPort: 2, lps: 1, local: true }, ms, CLUSTER_WIRE_VERSION);
    // The holder heartbeats as a root does, all along (what it sends during the pause waits in its socket).
    const beat = setInterval(() => void holder.call({ op: 'peers', name: 'h1', secret, health: [] }, HEARTBEAT_MS, CLUSTER_WIRE_VERSION).catch(() => undefined), HEARTBEAT_MS);
    try {
      await join(holder, secret);
      await other.call({ op: 'status' }, 3000, CLUSTER_WIRE_VERSION);
      await new Promise((r) => setTimeout(r, 1500));
      process.kill(pid, 'SIGSTOP');
      // Asked early in the pause, answered when the fabric resumes: the holder was last heard before the pause.
      const taken = join(other, randomBytes(32).toString('hex'), 60000).then(() => null, (e: RpcFailure) => e);
      await new Promise((r) => setTimeout(r, hold + 1500));
      process.kill(pid, 'SIGCONT');
      const e = await taken;
      expect(e?.code, 'another secret took the name of a member that heartbeated all along').to.equal('AlreadyExists');
      // The holder is still itself.
      expect(await holder.call({ op: 'peers', name: 'h1', secret, health: [] }, 3000, CLUSTER_WIRE_VERSION)).to.have.property('cluster', 't');
    } finally {
      clearInterval(beat);
      holder.close();
      other.close();
      try {
        process.kill(pid, 'SIGCONT');
      } catch { /* gone */ }
    }
  });
});
