/**
 * Host-to-host traffic of a cluster with real processes (issue 11): three hosts, each in its own
 * network namespace where allowed, reach each other only through the fabric's links. Heartbeats
 * flow between every pair; a link's delay delays a host-to-host round trip by that delay and its
 * rate limits a bulk transfer to it (each within 20 %, against the same link unimpaired in the same
 * run); impairments are set independently and reset; a cut link stops traffic (heartbeats are
 * missed) while other links carry on, and a heal restores it; a peer without the cluster's key is
 * refused by a host's peer service, its remote management socket and the fabric. Then a host of
 * "another machine" (a second pair of network namespaces, sharing nothing but the join address and a
 * copy of the key file) joins and is a host like any other; `cluster down` and `down` leave nothing.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLUSTER_WIRE_VERSION, DEFAULT_MGMT_TCP_PORT, DEFAULT_PEER_PORT, HEARTBEAT_MISSES_DOWN, HEARTBEAT_MS, MEMBER_SECRET_FILE, decode, encode, seededRandom, type HostInfo, type LinkProbeResult, type VmInfo } from '@hvlab/protocol';
import { hostProcesses, MgmtClient, readHost } from '@hvlab/host';
import { curveClientOptions, hostPaths, makeClusterKey, readClusterKey, RpcClient, RpcFailure, writeClusterKey, zmq } from '@hvlab/runtime';
import { clusterTag, Fabric, fabricPids, memberSecretHash, namespacesAvailable, networkLeftovers, pairAuth } from '@hvlab/cluster';
import { TestHost, eventually, knock, pairCredential, shmFiles, sleep } from './harness.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'packages', 'cli', 'bin', 'hvlab.mjs');

type Status = {
  fabric: { state: string; refused: number; address: string };
  hosts: Array<{ name: string; state: string; address: string; member: boolean; origin: string; hostId: string; info: HostInfo | null }>;
  links: Array<{ a: string; b: string; delayMs?: number; rateBps?: number; cut: boolean; seed: number; applied: boolean }>;
};

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/**
 * How long the fabric holds a quiet member's name here before another secret may take it
 * (HVLAB_TEST_NAME_HOLD_MS; 10 heartbeat periods, 10 s, by default): the tests that keep a host
 * quiet past it, and wait for a taker to go quiet, wait seconds instead of tens.
 */
const NAME_HOLD_MS = 4000;
/** Heartbeats a host misses before its peer is down here (HVLAB_TEST_PEER_DOWN_MISSES; 10 by default). */
const PEER_DOWN_MISSES = 4;
/** A probe's first round trip waits this long here (HVLAB_TEST_PROBE_CONNECT_MS; the probe's 5 s by default): one through a cut link fails sooner. */
const PROBE_CONNECT_MS = 1500;

describe('cluster links: host-to-host traffic through the link layer', function () {
  this.timeout(240000);
  const h = new TestHost({ HVLAB_TEST_NAME_HOLD_MS: String(NAME_HOLD_MS), HVLAB_TEST_PEER_DOWN_MISSES: String(PEER_DOWN_MISSES), HVLAB_TEST_PROBE_CONNECT_MS: String(PROBE_CONNECT_MS) });
  const ids = new Set<string>();
  let st: Status;

  before(async () => {
    await h.ok('up', '--hosts', '3', '--lps', '1');
    st = await h.json<Status>('cluster', 'status');
    for (const x of st.hosts) ids.add(x.hostId);
  });
  after(async () => {
    await h.run('cluster', 'down');
    await eventually(() => [...ids].every((id) => hostProcesses(id).length === 0) && fabricPids(h.home).length === 0, 5000);
    expect([...ids].flatMap((id) => hostProcesses(id)), 'host processes left').to.deep.equal([]);
    expect([...ids].flatMap((id) => shmFiles(id)), '/dev/shm files left').to.deep.equal([]);
    expect(fabricPids(h.home), 'fabric left').to.deep.equal([]);
    expect(networkLeftovers(clusterTag(h.home))).to.deep.equal({ namespaces: [], links: [] });
    await h.destroy();
  });

  const probe = (from: string, to: string, ...more: string[]): Promise<LinkProbeResult> => h.json<LinkProbeResult>('link', 'probe', from, to, ...more);

  it('every host heartbeats every other through its link', async () => {
    const ok = await eventually(async () => {
      const s = await h.json<Status>('cluster', 'status');
      return s.hosts.every((x) => x.info?.cluster?.peers.length === 2 && x.info.cluster.peers.every((p) => p.state === 'up'));
    }, 15000);
    expect(ok, 'all heartbeats up').to.equal(true);
    const s = await h.json<Status>('cluster', 'status');
    expect(s.fabric.state).to.equal('up');
    expect(s.links.map((l) => `${l.a}-${l.b}`)).to.deep.equal(['h1-h2', 'h1-h3', 'h2-h3']);
    // Heartbeats crossed every link, both ways.
    const links = (await h.json<Status>('cluster', 'status')).links as unknown as Array<{ bytes: [number, number] }>;
    for (const l of links) expect(l.bytes[0] > 0 && l.bytes[1] > 0, 'bytes both ways').to.equal(true);
  });

  it('a link\'s delay delays a host-to-host round trip by that delay (within 20 %), set independently of its rate', async () => {
    // A round: the link unimpaired (median of 9 pings), then with 60 ms of delay both ways, and
    // another link. The delay is applied by the fabric's timers in user space, so a busy machine
    // (the fabric or a host waiting for a CPU during several pings) can move one round's medians
    // by more than 12 ms; up to three rounds are made, stopped at the first that holds. A link
    // whose delay is wrong, or not applied, is wrong in every round.
    type Round = { base: number; there: number; back: number; other: number };
    const rounds: Round[] = [];
    const holds = (x: Round): boolean => x.there - x.base >= 48 && x.there - x.base <= 72 && x.back - x.base >= 48 && x.back - x.base <= 72 && x.other < 30;
    do {
      if (rounds.length > 0) await h.ok('link', 'reset', 'h1', 'h2');
      const base = median((await probe('h1', 'h2', '--pings', '9')).rttMs);
      const set = await h.json<{ delayMs: number }>('link', 'set', 'h1', 'h2', '--delay', '60ms');
      expect(set.delayMs).to.equal(60);
      const r = await probe('h1', 'h2', '--pings', '9');
      expect(r.via).to.match(/^\d+\.\d+\.\d+\.\d+:\d+$/);
      expect(r.direct).to.equal(false);
      // The other direction of the link pays the same; another link does not.
      const back = median((await probe('h2', 'h1', '--pings', '5')).rttMs);
      const other = median((await probe('h1', 'h3', '--pings', '5')).rttMs);
      rounds.push({ base, there: median(r.rttMs), back, other });
    } while (rounds.length < 3 && !holds(rounds.at(-1)!));
    const x = rounds.at(-1)!;
    const msg = `rounds (ms: unimpaired, h1-h2 and h2-h1 at 60 ms, h1-h3): ${rounds.map((y) => `${y.base} ${y.there} ${y.back} ${y.other}`).join('; ')}`;
    expect(x.there - x.base, msg).to.be.within(48, 72);
    expect(x.back - x.base, msg).to.be.within(48, 72);
    expect(x.other, msg).to.be.below(30);
    // Setting the rate keeps the delay; clearing the delay keeps the rate.
    const both = await h.json<{ delayMs?: number; rateBps?: number }>('link', 'set', 'h1', 'h2', '--rate', '1gbit');
    expect(both).to.include({ delayMs: 60, rateBps: 1e9 });
    const rateOnly = await h.json<{ delayMs?: number; rateBps?: number }>('link', 'set', 'h2', 'h1', '--delay', 'none');
    expect(rateOnly.delayMs).to.equal(undefined);
    expect(rateOnly.rateBps).to.equal(1e9);
    await h.ok('link', 'reset', 'h1', 'h2');
  });

  it('a peer behind a link slower than the heartbeat period stays up: its heartbeats arrive late, not never', async () => {
    const rootLog = join(h.home, 'cluster', 'hosts', 'h1', 'run', 'logs', 'root.log');
    const downs = (): number => readFileSync(rootLog, 'utf8').split('\n').filter((l) => l.includes('"peer is down"') && l.includes('"h2"')).length;
    const before = downs();
    await h.ok('link', 'set', 'h1', 'h2', '--delay', '1500ms');
    try {
      let seen: unknown;
      // Each ping's round trip is 1.5 s, longer than the 1 s between them: it used to time out at
      // 1 s, every one, and h2 was down after 10 of them (PEER_DOWN_MISSES here) with the link
      // carrying everything.
      expect(await eventually(async () => {
        const p = (await h.json<HostInfo>('--host', 'h1', 'host', 'info')).cluster?.peers.find((x) => x.name === 'h2');
        seen = p;
        return p?.state === 'up' && (p.rttMs ?? 0) >= 1400;
      }, 20000, 500), `h1 hears h2 across the slow link: ${JSON.stringify(seen)}`).to.equal(true);
      // Past the periods that made it down before.
      await sleep((PEER_DOWN_MISSES + 1) * HEARTBEAT_MS);
      const p = (await h.json<HostInfo>('--host', 'h1', 'host', 'info')).cluster?.peers.find((x) => x.name === 'h2');
      expect(p?.state, JSON.stringify(p)).to.equal('up');
      expect(downs(), 'no "peer is down" for h2 in h1\'s log').to.equal(before);
    } finally {
      await h.ok('link', 'reset', 'h1', 'h2');
    }
  });

  it('a link\'s rate limits a bulk transfer to it (within 20 %)', async () => {
    // Up to three transfers each, stopped at the first that holds: a busy machine can slow one
    // (the fabric or the host waiting for a CPU), while a rate not applied is wrong in every one.
    const free: number[] = [];
    do free.push((await probe('h1', 'h2', '--pings', '1', '--bytes', '8M')).bitsPerSecond);
    while (free.length < 3 && !(free.at(-1)! > 2 * 16e6));
    await h.ok('link', 'set', 'h1', 'h2', '--rate', '16mbit');
    const limited: number[] = [];
    do limited.push((await probe('h1', 'h2', '--pings', '1', '--bytes', '3M')).bitsPerSecond);
    while (limited.length < 3 && !(limited.at(-1)! >= 0.8 * 16e6 && limited.at(-1)! <= 1.2 * 16e6));
    const mbit = (xs: number[]): string => xs.map((b) => (b / 1e6).toFixed(1)).join(', ');
    expect(limited.at(-1)!, `${mbit(limited)} Mbit/s at 16mbit; ${mbit(free)} Mbit/s unimpaired`).to.be.within(0.8 * 16e6, 1.2 * 16e6);
    expect(free.at(-1)!, `${mbit(free)} Mbit/s unimpaired`).to.be.above(2 * 16e6);
    const reset = await h.json<Array<{ a: string; rateBps?: number }>>('link', 'reset');
    expect(reset.length).to.equal(3);
    expect(reset.every((l) => l.rateBps === undefined)).to.equal(true);
  });

  it('a bulk transfer slower than the probe\'s timeout per chunk is measured, not failed: only silence for the whole timeout fails it', async () => {
    // At 2 Mbit/s a 256 KiB chunk takes ~1 s: with a 1 s timeout every fixed chunk was late (at the
    // CLI's 5 s, `--bytes 1M` at 1 Mbit/s failed while it still moved). Chunks are sized from the
    // answers now, so the transfer goes on as long as answers come.
    const p = hostPaths(join(h.home, 'cluster', 'hosts', 'h1'));
    const root = new MgmtClient(p.mgmtEndpoint, { watch: readHost(p) });
    try {
      await h.ok('link', 'set', 'h1', 'h2', '--rate', '2mbit');
      const r = await root.request<LinkProbeResult>('linkProbe', { peer: 'h2', pings: 1, bytes: 512 * 1024, timeoutMs: 1000 }, 60000);
      expect(r.bytes).to.equal(512 * 1024);
      // Its rate is the link's: far below the unimpaired one, and not above the rate set.
      expect(r.bitsPerSecond, `${(r.bitsPerSecond / 1e6).toFixed(2)} Mbit/s`).to.be.within(0.5 * 2e6, 1.2 * 2e6);
      // A cut link answers nothing: that fails, saying how far it came.
      await h.ok('link', 'set', 'h1', 'h2', '--rate', '20mbit');
      const cutting = root.request<LinkProbeResult>('linkProbe', { peer: 'h2', pings: 1, bytes: 64 * 1024 * 1024, timeoutMs: 1500 }, 60000);
      await sleep(1000);
      await h.ok('link', 'cut', 'h1', 'h2');
      const err = await cutting.then(() => null, (e: Error) => e);
      expect(err?.message ?? 'it finished', 'a transfer through a cut link').to.match(/the bulk transfer to h2 did not finish: no chunk was answered for 1500 ms \(\d+ of 67108864 bytes answered in [\d.]+ s; 1 round trips before it, p50 [\d.]+ ms\)/);
    } finally {
      root.close();
      await h.ok('link', 'reset', 'h1', 'h2');
    }
  });

  it('a cut link stops traffic and heartbeats while other links carry on; a heal restores it', async () => {
    const cut = await h.json<{ cut: boolean }>('link', 'cut', 'h1', 'h2');
    expect(cut.cut).to.equal(true);
    const through = await h.run('link', 'probe', 'h1', 'h2', '--pings', '1');
    expect(through.code).to.equal(1);
    expect(through.stderr).to.match(/h2 did not answer through the link/);
    expect((await probe('h1', 'h3', '--pings', '3')).rttMs.length).to.equal(3);
    const missed = await eventually(async () => {
      const info = await h.json<HostInfo>('--host', 'h1', 'host', 'info');
      return (info.cluster?.peers.find((p) => p.name === 'h2')?.missed ?? 0) >= 2;
    }, 10000);
    expect(missed, 'h1 misses h2\'s heartbeats').to.equal(true);
    const h3 = await h.json<HostInfo>('--host', 'h1', 'host', 'info');
    // Up and heard: a reply that came more than a period late on a loaded machine reads as 1 missed
    // until it lands, so "heard" is fewer than the 2 that count as missing above.
    const p3 = h3.cluster!.peers.find((p) => p.name === 'h3');
    expect(p3?.state).to.equal('up');
    expect(p3?.missed).to.be.below(2);
    await h.ok('link', 'heal', 'h1', 'h2');
    expect((await probe('h1', 'h2', '--pings', '3')).rttMs.length).to.equal(3);
    const back = await eventually(async () => {
      const info = await h.json<HostInfo>('--host', 'h1', 'host', 'info');
      return info.cluster?.peers.find((p) => p.name === 'h2')?.missed === 0;
    }, 10000);
    expect(back, 'heartbeats answered again').to.equal(true);
  });

  it('Ctrl-C of a link probe stops its traffic at the fabric before it exits 130 (its bytes flowed on after the CLI had gone)', async () => {
    const bytesOut = async (): Promise<number> => (await h.json<{ links: Array<{ a: string; b: string; bytes: [number, number] }> }>('cluster', 'status')).links.find((l) => l.a === 'h1' && l.b === 'h2')!.bytes[0];
    await h.ok('link', 'set', 'h1', 'h2', '--rate', '8mbit');
    // 64 MiB at 8 mbit/s: about 70 s, if nothing stops it.
    const p = h.start('link', 'probe', 'h1', 'h2', '--pings', '1', '--bytes', '64M');
    try {
      const before = await bytesOut();
      expect(await eventually(async () => (await bytesOut()) - before > 1024 * 1024, 30000), 'the probe\'s bytes cross the link').to.equal(true);
      p.child.kill('SIGINT');
      const r = await p.done;
      expect(r.code, r.stderr).to.equal(130);
      expect(r.stderr.trim()).to.equal('hvlab: link probe was interrupted: its traffic from h1 to h2 was stopped at the fabric');
      // Only heartbeats cross now (about 100 bytes a second), not the probe's megabyte a second.
      const at = await bytesOut();
      await sleep(2000);
      expect((await bytesOut()) - at, 'bytes h1 → h2 in the 2 s after the CLI exited').to.be.below(64 * 1024);
      // The next probe goes as usual.
      expect((await probe('h1', 'h2', '--pings', '2')).rttMs.length).to.equal(2);
    } finally {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.done;
      await h.ok('link', 'reset', 'h1', 'h2');
    }
  });

  it('Ctrl-C of a link probe --direct has its host stop it (it goes past the fabric, which cannot) before it exits 130', async () => {
    // 4 GiB straight to h2's address: many seconds, if nothing stops it.
    const p = h.start('link', 'probe', 'h1', 'h2', '--direct', '--pings', '1', '--bytes', '4G');
    try {
      await sleep(1500);
      expect(p.child.exitCode, 'the probe is still running').to.equal(null);
      p.child.kill('SIGINT');
      const r = await p.done;
      expect(r.code, r.stderr).to.equal(130);
      // Said only once h1's probe has ended (else "; the host is still ending its probe" follows).
      expect(r.stderr.trim()).to.equal('hvlab: link probe was interrupted: its traffic from h1 to h2 was stopped by h1');
      expect(readFileSync(join(h.home, 'cluster', 'hosts', 'h1', 'run', 'logs', 'root.log'), 'utf8')).to.match(/link probes stopped/);
      // The next probe goes as usual.
      expect((await probe('h1', 'h2', '--pings', '2', '--direct')).rttMs.length).to.equal(2);
    } finally {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.done;
    }
  });

  it('a seed fixes a link\'s draws; an unknown link or a bad value is refused', async () => {
    expect((await h.json<{ seed: number }>('link', 'set', 'h2', 'h3', '--seed', '42')).seed).to.equal(42);
    const unknown = await h.run('link', 'cut', 'h1', 'h9');
    expect(unknown.code).to.equal(1);
    expect(unknown.stderr).to.match(/no link between h1 and h9/);
    const bad = await h.run('link', 'set', 'h1', 'h2', '--delay', '-5ms');
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/--delay -5ms is invalid/);
    const none = await h.run('link', 'set', 'h1', 'h2');
    expect(none.code).to.equal(2);
    expect(none.stderr).to.match(/needs at least one of/);
  });

  it('refuses a peer without the cluster\'s key: the peer service, remote management and the fabric', async () => {
    const key = JSON.parse(readFileSync(join(h.home, 'cluster', 'cluster.key'), 'utf8')) as { publicKey: string; secretKey: string };
    const stranger = zmq.curveKeyPair();
    const h1 = st.hosts.find((x) => x.name === 'h1')!;
    const fabric = `tcp://${st.fabric.address}`;
    for (const ep of [`tcp://${h1.address}:${DEFAULT_PEER_PORT}`, `tcp://${h1.address}:${DEFAULT_MGMT_TCP_PORT}`, fabric]) {
      expect(await knock(ep, { curveServerKey: key.publicKey, curvePublicKey: stranger.publicKey, curveSecretKey: stranger.secretKey }), `${ep} with another key`).to.equal('auth-refused');
      expect(await knock(ep, {}), `${ep} without CURVE`).to.equal('no-answer');
    }
    // With the key, the fabric answers (the same client code, so the refusals above are the key's doing).
    expect(await knock(fabric, { curveServerKey: key.publicKey, curvePublicKey: key.publicKey, curveSecretKey: key.secretKey })).to.equal('answered');
    // A member with the key that sends garbage gets answers, and ends nothing (seeded frames).
    const next = seededRandom(0xfab);
    const pidBefore = fabricPids(h.home);
    for (const ep of [fabric, `tcp://${h1.address}:${DEFAULT_PEER_PORT}`]) {
      const d = new zmq.Dealer({ linger: 0, curveServerKey: key.publicKey, curvePublicKey: key.publicKey, curveSecretKey: key.secretKey } as never);
      d.connect(ep);
      d.receiveTimeout = 3000;
      for (let i = 0; i < 200; i++) {
        const f = Buffer.alloc(Math.floor(next() * 48));
        for (let k = 0; k < f.length; k++) f[k] = Math.floor(next() * 256);
        await d.send(i % 2 ? f : encode({ v: CLUSTER_WIRE_VERSION, id: i + 1, op: i % 4 === 0 ? 'linkSet' : 'sink', a: 'h1', b: 7, change: { delayMs: 'x' }, from: 'H', data: 3 }));
      }
      const answers: Array<{ ok?: unknown; error?: { code?: unknown } }> = [];
      for (let i = 0; i < 200; i++) answers.push(decode((await d.receive())[0]!));
      d.close();
      expect(answers.every((a) => a.ok === false && a.error?.code === 'BadRequest'), `${ep}: every garbage frame answered BadRequest`).to.equal(true);
    }
    expect(fabricPids(h.home)).to.deep.equal(pidBefore);
    expect((await probe('h2', 'h1', '--pings', '2')).rttMs.length).to.equal(2);
    const s = await h.json<Status>('cluster', 'status');
    // ZAP counts the clients that offered another client key.
    expect(s.fabric.refused).to.be.at.least(1);
    expect(s.hosts.find((x) => x.name === 'h1')!.info!.cluster!.refused).to.be.at.least(2);
    // Another cluster's key (a host given the wrong key file) fails before ZAP is asked: the
    // handshake cannot be decrypted. It is counted too (it used to leave the count as it was).
    const other = zmq.curveKeyPair();
    for (const ep of [fabric, `tcp://${h1.address}:${DEFAULT_MGMT_TCP_PORT}`]) {
      expect(await knock(ep, { curveServerKey: other.publicKey, curvePublicKey: other.publicKey, curveSecretKey: other.secretKey }), `${ep} with another cluster's key`).to.equal('no-answer');
    }
    const s2 = await h.json<Status>('cluster', 'status');
    expect(s2.fabric.refused, 'the fabric counts another cluster\'s key').to.be.above(s.fabric.refused);
    expect(s2.hosts.find((x) => x.name === 'h1')!.info!.cluster!.refused, 'so does the host').to.be.above(s.hosts.find((x) => x.name === 'h1')!.info!.cluster!.refused);
  });

  it('the key does not speak for a host: a request in its name without its secret (to the fabric) or without its link\'s credential (to a peer) is refused, and the host stays', async () => {
    const key = readClusterKey(join(h.home, 'cluster', 'cluster.key'));
    const h1 = st.hosts.find((x) => x.name === 'h1')!;
    const fabric = new RpcClient(`tcp://${st.fabric.address}`, curveClientOptions(key));
    const peer = new RpcClient(`tcp://${h1.address}:${DEFAULT_PEER_PORT}`, curveClientOptions(key));
    const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'answered', (e: RpcFailure) => e.code);
    const forged = randomBytes(32).toString('hex');
    try {
      expect(await code(fabric.call({ op: 'leave', name: 'h2', secret: forged }, 3000, CLUSTER_WIRE_VERSION)), 'leave').to.equal('Denied');
      expect(await code(fabric.call({ op: 'leave', name: 'h2' }, 3000, CLUSTER_WIRE_VERSION)), 'leave without a secret').to.equal('Denied');
      expect(await code(fabric.call({ op: 'expose', name: 'h2', secret: forged, from: 'h1', port: 22 }, 3000, CLUSTER_WIRE_VERSION)), 'expose').to.equal('Denied');
      expect(await code(peer.call({ op: 'ping', from: 'h2', auth: forged, t: 1 }, 3000, CLUSTER_WIRE_VERSION)), 'a ping in h2\'s name').to.equal('Denied');
      expect(await code(peer.call({ op: 'ping', from: 'h3', auth: pairCredential(h.home, 'h2', 'h1'), t: 1 }, 3000, CLUSTER_WIRE_VERSION)), 'h2\'s credential in h3\'s name').to.equal('Denied');
      // With the pair's credential (made here from the two hosts' secrets, as the fabric makes it), h1 answers.
      expect(await code(peer.call({ op: 'ping', from: 'h2', auth: pairCredential(h.home, 'h2', 'h1'), t: 1 }, 3000, CLUSTER_WIRE_VERSION))).to.equal('answered');
    } finally {
      fabric.close();
      peer.close();
    }
    const s = await h.json<Status>('cluster', 'status');
    const h2 = s.hosts.find((x) => x.name === 'h2')!;
    expect(h2.member, 'h2 is still a member').to.equal(true);
    expect(s.hosts.find((x) => x.name === 'h1')!.info!.cluster!.peers.find((p) => p.name === 'h2')?.state, 'h1 still hears h2').to.equal('up');
    expect(readFileSync(join(h.home, 'cluster', 'hosts', 'h1', 'run', 'logs', 'root.log'), 'utf8')).to.match(/refused peer requests whose credential is not that of the host they name/);
  });

  it('a flood of forged peer requests does not crowd out the peers a host knows: their requests are answered meanwhile', async () => {
    // A forged credential waits for a fresh peer book before it is refused (a new member's might be
    // real): 300 of them every 100 ms held all 256 of h1's requests in flight, and h2's own pings
    // were answered Busy (38 of 55 in 14 s, h1 missed 9 heartbeats in a row).
    const key = readClusterKey(join(h.home, 'cluster', 'cluster.key'));
    const h1 = st.hosts.find((x) => x.name === 'h1')!;
    const flood = new RpcClient(`tcp://${h1.address}:${DEFAULT_PEER_PORT}`, curveClientOptions(key));
    const own = new RpcClient(`tcp://${h1.address}:${DEFAULT_PEER_PORT}`, curveClientOptions(key));
    const auth = pairCredential(h.home, 'h2', 'h1');
    const answers: Record<string, number> = {};
    const forged: Record<string, number> = {};
    const sent: Promise<unknown>[] = [];
    let flooding = true;
    const floodDone = (async () => {
      while (flooding) {
        for (let i = 0; i < 300; i++) {
          sent.push(flood.call({ op: 'ping', from: 'h2', auth: randomBytes(32).toString('hex'), t: 1 }, 10000, CLUSTER_WIRE_VERSION).then(
            () => (forged.answered = (forged.answered ?? 0) + 1),
            (e: RpcFailure) => (forged[e.code] = (forged[e.code] ?? 0) + 1),
          ));
        }
        await sleep(100);
      }
    })();
    try {
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        const r = await own.call({ op: 'ping', from: 'h2', auth, t: 1 }, 2000, CLUSTER_WIRE_VERSION).then(() => 'answered', (e: RpcFailure) => `${e.code}: ${e.message}`);
        answers[r] = (answers[r] ?? 0) + 1;
        await sleep(100);
      }
    } finally {
      flooding = false;
      await floodDone;
      await Promise.allSettled(sent);
      flood.close();
      own.close();
    }
    expect(Object.keys(answers), JSON.stringify(answers)).to.deep.equal(['answered']);
    expect(forged.answered ?? 0, 'no forged one is answered').to.equal(0);
    expect(forged.Denied, JSON.stringify(forged)).to.be.above(0);
  });

  /**
   * Where a taker of a host's name says it is: the fabric's own address, with nothing on the ports
   * it names (a fabric off loopback takes no loopback address for a member: it would relay to its
   * own machine's services).
   */
  const takerAddress = (): string => st.fabric.address.slice(0, st.fabric.address.lastIndexOf(':'));

  it('a host whose name another secret took while it was quiet joins again once that one is quiet: it was refused its book for good', async () => {
    // h2's root stops for longer than the fabric holds its name; a holder of the key takes the name
    // with a secret of its own, then is heard from no more. h2, running again, asked for its book in vain for as
    // long as it ran (Denied: "speaks for h2 without its member secret"), never joining again.
    const key = readClusterKey(join(h.home, 'cluster', 'cluster.key'));
    const h2home = join(h.home, 'cluster', 'hosts', 'h2');
    const rootPid = (JSON.parse(readFileSync(hostPaths(h2home).hostFile, 'utf8')) as { pids: { root: number } }).pids.root;
    const fabric = new RpcClient(`tcp://${st.fabric.address}`, curveClientOptions(key));
    process.kill(rootPid, 'SIGSTOP');
    try {
      await sleep(NAME_HOLD_MS + 1500);
      const book = await fabric.call({ op: 'join', name: 'h2', secret: randomBytes(32).toString('hex'), address: takerAddress(), peerPort: 7999, mgmtPort: 7998, lps: 1, local: true }, 3000, CLUSTER_WIRE_VERSION) as { peers: Array<{ name: string }> };
      expect(book.peers.map((p) => p.name), 'the name was taken').to.include('h1');
    } finally {
      process.kill(rootPid, 'SIGCONT');
      fabric.close();
    }
    const back = async (): Promise<boolean> => {
      const s = await h.json<Status>('cluster', 'status');
      const c = s.hosts.find((x) => x.name === 'h2')?.info?.cluster;
      return c?.fabricState === 'joined' && s.hosts.find((x) => x.name === 'h1')!.info!.cluster!.peers.find((p) => p.name === 'h2')?.state === 'up';
    };
    expect(await eventually(back, 2 * HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN, 500), 'h2 is a member again, and h1 hears it').to.equal(true);
    expect(readFileSync(join(h2home, 'run', 'logs', 'root.log'), 'utf8')).to.match(/the fabric holds this host's name for another member secret: joining again/);
  });

  it('a migration into a host is tied to the credential of its set-up: a host that took the source\'s name meanwhile can neither abort nor commit it', async () => {
    await h.ok('--host', 'h1', 'vm', 'new', 'tied', '--memory', '16M');
    const cfg = JSON.parse(readFileSync(join(h.home, 'cluster', 'hosts', 'h1', 'vms', 'tied.json'), 'utf8')) as Record<string, unknown>;
    const key = readClusterKey(join(h.home, 'cluster', 'cluster.key'));
    const h3 = st.hosts.find((x) => x.name === 'h3')!;
    const peer = new RpcClient(`tcp://${h3.address}:${DEFAULT_PEER_PORT}`, curveClientOptions(key));
    const fabric = new RpcClient(`tcp://${st.fabric.address}`, curveClientOptions(key));
    const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'answered', (e: RpcFailure) => e.code);
    const onH3 = async (): Promise<boolean> => (await h.json<VmInfo[]>('--host', 'h3', 'vm', 'list')).some((v) => v.name === 'tied');
    const mig = `tied-${randomBytes(4).toString('hex')}`;
    const h1auth = pairCredential(h.home, 'h1', 'h3');
    const h1root = (await h.json<HostInfo>('--host', 'h1', 'host', 'info')).pids.root;
    try {
      // As h1's worker would set a migration up at h3 (with h1's credential).
      expect(await peer.call({ op: 'migSetup', from: 'h1', auth: h1auth, mig, config: cfg, options: {} }, 60_000, CLUSTER_WIRE_VERSION)).to.deep.include({ ready: true });
      // h1 quiet for longer than the fabric holds its name: a holder of the key takes it with a secret of its own.
      process.kill(h1root, 'SIGSTOP');
      try {
        await sleep(NAME_HOLD_MS + 1500);
        const taker = randomBytes(32).toString('hex');
        await fabric.call({ op: 'join', name: 'h1', secret: taker, address: takerAddress(), peerPort: 7999, mgmtPort: 7998, lps: 1, local: true }, 3000, CLUSTER_WIRE_VERSION);
        const h3secret = readFileSync(join(h.home, 'cluster', 'hosts', 'h3', MEMBER_SECRET_FILE), 'utf8').trim();
        const takerAuth = pairAuth(key.cluster, 'h1', memberSecretHash(taker), 'h3', memberSecretHash(h3secret));
        // h3 takes the taker for h1 once its book is fresh: the taker is h1 to it now.
        expect(await eventually(async () => (await code(peer.call({ op: 'ping', from: 'h1', auth: takerAuth, t: 1 }, 3000, CLUSTER_WIRE_VERSION))) === 'answered', 10_000), 'h3 knows the taker as h1').to.equal(true);
        // But not as the source of the migration the old h1 set up: it can neither abort nor commit it.
        expect(await peer.call({ op: 'migAbort', from: 'h1', auth: takerAuth, mig, reason: 'the taker aborts it' }, 5000, CLUSTER_WIRE_VERSION)).to.deep.equal({ aborted: false });
        // Naming the VM says nothing of it either while an attempt of it is set up there.
        expect(await peer.call({ op: 'migAbort', from: 'h1', auth: takerAuth, mig, reason: 'the taker aborts it', vm: 'tied', vmId: cfg.id }, 5000, CLUSTER_WIRE_VERSION)).to.deep.equal({ aborted: false });
        expect(await code(peer.call({ op: 'migCommit', from: 'h1', auth: takerAuth, mig, stats: null }, 5000, CLUSTER_WIRE_VERSION))).to.equal('NotFound');
        expect(await onH3(), 'the migration is still set up at h3').to.equal(true);
        // Nor is the old holder h1 while the name is another's.
        expect(await code(peer.call({ op: 'migAbort', from: 'h1', auth: h1auth, mig, reason: 'x' }, 5000, CLUSTER_WIRE_VERSION))).to.equal('Denied');
      } finally {
        process.kill(h1root, 'SIGCONT');
      }
      // h1 has its name back once the taker is quiet; its own credential ends the attempt (or h3 has
      // dropped it meanwhile, the stream silent for 30 s).
      expect(await eventually(async () => (await code(peer.call({ op: 'migAbort', from: 'h1', auth: h1auth, mig, reason: 'the test ends' }, 5000, CLUSTER_WIRE_VERSION))) === 'answered', 2 * HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN + 10_000, 500), 'h1 is h1 again').to.equal(true);
      expect(await eventually(async () => !(await onH3()), 30_000), 'nothing of the attempt at h3').to.equal(true);
      // An abort of an attempt h3 no longer knows, naming the VM: h3 says whether it has the VM as
      // its own (only a commit makes a moved VM so), which is what a source in doubt decides by.
      const abort = (vm: string, vmId: unknown): Promise<unknown> => peer.call({ op: 'migAbort', from: 'h1', auth: h1auth, mig, reason: 'in doubt', vm, vmId }, 5000, CLUSTER_WIRE_VERSION);
      expect(await abort('tied', cfg.id)).to.deep.equal({ aborted: false, vm: 'absent' });
      await h.ok('--host', 'h3', 'vm', 'new', 'mine', '--memory', '16M');
      const mine = JSON.parse(readFileSync(join(h.home, 'cluster', 'hosts', 'h3', 'vms', 'mine.json'), 'utf8')) as { id: string };
      expect(await abort('mine', mine.id)).to.deep.equal({ aborted: false, vm: 'present' });
      expect(await abort('mine', cfg.id), 'another VM of that name').to.deep.equal({ aborted: false, vm: 'absent' });
      await h.ok('--host', 'h3', 'vm', 'delete', 'mine');
    } finally {
      peer.close();
      fabric.close();
    }
    await h.ok('--host', 'h1', 'vm', 'delete', 'tied');
  });

  it('a host whose root is killed is the same member when it is restarted: its secret is kept, and it joins again under its name without waiting for the name to go quiet', async () => {
    const h3home = join(h.home, 'cluster', 'hosts', 'h3');
    const secretFile = join(h3home, MEMBER_SECRET_FILE);
    const secret = readFileSync(secretFile, 'utf8');
    expect(statSync(secretFile).mode & 0o777, 'the secret is the host\'s alone').to.equal(0o600);
    const rootPid = async (): Promise<number | null> => (await h.json<HostInfo>('--host', 'h3', 'host', 'info').catch(() => null))?.pids.root ?? null;
    const old = (await rootPid())!;
    const fabricLog = join(h.home, 'cluster', 'log', 'fabric.log');
    const joins = (): number => readFileSync(fabricLog, 'utf8').split('\n').filter((l) => l.includes('"host joined"') && l.includes('"host":"h3"')).length;
    const joinedBefore = joins();
    process.kill(old, 'SIGKILL');
    const back = async (): Promise<boolean> => {
      const now = await rootPid();
      if (now === null || now === old) return false;
      const s = await h.json<Status>('cluster', 'status');
      return s.hosts.find((x) => x.name === 'h3')?.info?.cluster?.fabricState === 'joined' && s.hosts.find((x) => x.name === 'h1')!.info!.cluster!.peers.find((p) => p.name === 'h3')?.state === 'up';
    };
    expect(await eventually(back, 60_000, 300), 'h3 restarted and a member again, heard by h1').to.equal(true);
    expect(readFileSync(secretFile, 'utf8'), 'the same secret').to.equal(secret);
    expect(joins(), 'it joined again').to.be.above(joinedBefore);
    // Had it come back with another secret, the fabric would have held the name until the old one
    // was quiet for 10 heartbeats, then given it over, saying so.
    expect(readFileSync(fabricLog, 'utf8')).to.not.match(/a host took the name of a quiet one.*"host":"h3"|"host":"h3".*a host took the name of a quiet one/);
    expect(readFileSync(join(h3home, 'run', 'logs', 'root.log'), 'utf8')).to.not.match(/the cluster fabric refused this host/);
  });

  it('a host of another machine joins with --join and --key and is a host like any other', async function () {
    if (!namespacesAvailable().ok) this.skip();
    // Two network namespaces stand in for two machines, joined by one veth pair.
    const tag = clusterTag(h.home);
    const [ma, mb] = [`hvlab-${tag}-ma`, `hvlab-${tag}-mb`];
    const ip = (...a: string[]): void => {
      const r = spawnSync('ip', a, { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr}`);
    };
    const a = new TestHost();
    const bDir = mkdtempSync(join(tmpdir(), 'hvlab-machine-b-'));
    const bHome = join(bDir, 'home');
    const cliWith = (env: Record<string, string>, ns: string, home: string, ...args: string[]): { code: number; stdout: string; stderr: string } => {
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env, HVLAB_HOME: home }, timeout: 120000 });
      return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    };
    const cli = (ns: string, home: string, ...args: string[]): { code: number; stdout: string; stderr: string } => cliWith({}, ns, home, ...args);
    let bId: string | null = null;
    try {
      ip('netns', 'add', ma);
      ip('netns', 'add', mb);
      ip('link', 'add', `hv${tag}-ma`, 'type', 'veth', 'peer', 'name', `hv${tag}-mb`);
      ip('link', 'set', `hv${tag}-ma`, 'netns', ma);
      ip('link', 'set', `hv${tag}-mb`, 'netns', mb);
      ip('-n', ma, 'addr', 'add', '10.199.77.1/24', 'dev', `hv${tag}-ma`);
      ip('-n', mb, 'addr', 'add', '10.199.77.2/24', 'dev', `hv${tag}-mb`);
      for (const [ns, dev] of [[ma, `hv${tag}-ma`], [mb, `hv${tag}-mb`]] as const) {
        ip('-n', ns, 'link', 'set', dev, 'up');
        ip('-n', ns, 'link', 'set', 'lo', 'up');
      }
      // Machine A: a one-host cluster whose fabric listens on every address.
      const up = cli(ma, a.home, 'up', '--hosts', '1', '--lps', '1', '--listen', '0.0.0.0');
      expect(up.code, up.stderr).to.equal(0);
      const stA = JSON.parse(cli(ma, a.home, 'cluster', 'status', '--json').stdout) as Status & { join: string };
      expect(stA.join).to.match(/:7740$/);
      ids.add(stA.hosts[0]!.hostId);
      // Machine B gets the join address and a copy of the key file, nothing else.
      copyFileSync(join(a.home, 'cluster', 'cluster.key'), join(bDir, 'lab.key'));
      const wrongKey = join(bDir, 'wrong.key');
      copyFileSync(join(h.home, 'cluster', 'cluster.key'), wrongKey);
      // A fabric of another key never answers: said once the first call's wait is over (1.5 s here,
      // HVLAB_TEST_JOIN_PROBE_MS; 5 s by default).
      const refused = cliWith({ HVLAB_TEST_JOIN_PROBE_MS: '1500' }, mb, bHome, 'up', '--join', '10.199.77.1', '--key', wrongKey, '--name', 'far');
      expect(refused.code).to.equal(1);
      expect(refused.stderr).to.match(/did not answer with this key/);
      const join_ = cli(mb, bHome, 'up', '--join', '10.199.77.1:7740', '--key', join(bDir, 'lab.key'), '--name', 'far', '--json');
      expect(join_.code, join_.stderr).to.equal(0);
      const j = JSON.parse(join_.stdout) as { hostId: string; name: string; address: string };
      bId = j.hostId;
      ids.add(j.hostId);
      expect(j).to.include({ name: 'far', address: '10.199.77.2' });
      // From machine A, far is a host of the cluster: status, --host, vm list --all, its link.
      const joined = await eventually(() => {
        const s = JSON.parse(cli(ma, a.home, 'cluster', 'status', '--json').stdout) as Status;
        const far = s.hosts.find((x) => x.name === 'far');
        return far?.state === 'up' && far.origin === 'joined' && far.info?.cluster?.peers.some((p) => p.name === 'h1' && p.state === 'up') === true;
      }, 15000);
      expect(joined, 'far is up, joined, and heartbeats h1').to.equal(true);
      expect(cli(ma, a.home, '--host', 'far', 'vm', 'new', 'v', '--memory', '16M', '--workload', 'idle').code).to.equal(0);
      const started = cli(ma, a.home, '--host', 'far', 'vm', 'start', 'v');
      expect(started.code, started.stderr).to.equal(0);
      const all = JSON.parse(cli(ma, a.home, 'vm', 'list', '--all', '--json').stdout) as Array<VmInfo & { host: string }>;
      expect(all.map((v) => `${v.host}/${v.name}/${v.state}`)).to.deep.equal(['far/v/Running']);
      const lk = cli(ma, a.home, 'link', 'set', 'h1', 'far', '--delay', '40ms', '--json');
      expect(lk.code, lk.stderr).to.equal(0);
      // Up to three probes, stopped at the first whose median is in range (a busy machine can
      // lift one probe's median; a delay not applied, or wrong, is out of range in every one).
      const rtts: number[] = [];
      do rtts.push(median((JSON.parse(cli(ma, a.home, 'link', 'probe', 'far', 'h1', '--pings', '5', '--json').stdout) as LinkProbeResult).rttMs));
      while (rtts.length < 3 && !(rtts.at(-1)! >= 35 && rtts.at(-1)! <= 60));
      expect(rtts.at(-1)!, `medians ${rtts.join(', ')} ms at 40 ms`).to.be.within(35, 60);
      const lifecycle = cli(ma, a.home, '--host', 'far', 'down');
      expect(lifecycle.code).to.equal(1);
      expect(lifecycle.stderr).to.match(/joined the cluster from another machine: run "down" there/);
      // Machine B leaves; machine A's cluster goes down.
      expect(cli(mb, bHome, 'down').code).to.equal(0);
      expect(cli(ma, a.home, 'cluster', 'down').code).to.equal(0);
      await eventually(() => [...ids].filter((id) => id === bId || id === stA.hosts[0]!.hostId).every((id) => hostProcesses(id).length === 0) && fabricPids(a.home).length === 0, 5000);
      expect(hostProcesses(bId)).to.deep.equal([]);
      expect(fabricPids(a.home)).to.deep.equal([]);
    } finally {
      cli(mb, bHome, 'down');
      cli(ma, a.home, 'cluster', 'down');
      spawnSync('ip', ['netns', 'del', ma]);
      spawnSync('ip', ['netns', 'del', mb]);
      await a.destroy();
      rmSync(bDir, { recursive: true, force: true });
    }
    expect(networkLeftovers(clusterTag(a.home))).to.deep.equal({ namespaces: [], links: [] });
  });
});

describe('joining a cluster under a name it holds', function () {
  this.timeout(120000);

  it('is refused at once, naming the name and --name, and nothing of the host is left: a live member\'s name before anything starts, a topology host\'s name from the fabric\'s answer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-join-name-'));
    const key = makeClusterKey('named');
    const keyFile = join(dir, 'lab.key');
    writeClusterKey(keyFile, key);
    const fabric = new Fabric({ cluster: 'named', key, listen: '127.0.0.1', port: 0, links: [], fileHosts: ['h9'] });
    const port = await fabric.start();
    const c = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
    const hosts = [new TestHost(), new TestHost(), new TestHost()];
    try {
      await c.call({ op: 'join', name: 'busy', secret: randomBytes(32).toString('hex'), address: '127.0.0.50', peerPort: 7742, mgmtPort: 7741, lps: 1, local: false }, 3000, CLUSTER_WIRE_VERSION);
      const joinAs = (t: TestHost, name: string): Promise<{ code: number; stderr: string }> =>
        t.run('up', '--join', `127.0.0.1:${port}`, '--key', keyFile, '--name', name, '--address', '127.0.0.1');
      const live = await joinAs(hosts[0]!, 'busy');
      expect(live.code).to.equal(1);
      expect(live.stderr.trim()).to.equal('hvlab: cluster named already has a host named busy (at 127.0.0.50): give another --name');
      expect(existsSync(hosts[0]!.paths.hostFile), 'nothing started').to.equal(false);
      const fileHost = await joinAs(hosts[1]!, 'h9');
      expect(fileHost.code).to.equal(1);
      expect(fileHost.stderr).to.match(/refused this host: h9 is a host of the topology file; a joining host needs another name \(give another --name\); it was brought down again/);
      expect(fileHost.stderr).to.not.match(/did not join/);
      // The second host started and went down again: nothing of it is left (its id from its root's log).
      const started = [...readFileSync(join(hosts[1]!.paths.logDir, 'root.log'), 'utf8').matchAll(/"host":"([0-9a-f]+)"/g)].map((m) => m[1]!);
      expect(started.length, 'the second host did start').to.be.greaterThan(0);
      for (const id of new Set(started)) {
        expect(hostProcesses(id), `processes of host ${id}`).to.deep.equal([]);
        expect(shmFiles(id), `/dev/shm files of host ${id}`).to.deep.equal([]);
      }
      const fifo = join(dir, 'fifo.key');
      spawnSync('mkfifo', [fifo]);
      const r = await hosts[0]!.run('up', '--join', `127.0.0.1:${port}`, '--key', fifo);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.match(/fifo\.key is not a cluster key file: .* is a FIFO, not a file/);
      // A host coming back under its name (its last life did not say it left) is let in with its
      // member secret, which its home keeps; from the same address without it (another host, or
      // one whose home was wiped), it is refused while the name's holder is heard from.
      const secret = randomBytes(32).toString('hex');
      await c.call({ op: 'join', name: 'again', secret, address: '127.0.0.1', peerPort: DEFAULT_PEER_PORT, mgmtPort: DEFAULT_MGMT_TCP_PORT, lps: 1, local: false }, 3000, CLUSTER_WIRE_VERSION);
      const stranger = await joinAs(hosts[2]!, 'again');
      expect(stranger.code).to.equal(1);
      expect(stranger.stderr.trim()).to.equal('hvlab: cluster named already has a host named again (at 127.0.0.1): give another --name');
      mkdirSync(hosts[2]!.paths.home, { recursive: true });
      writeFileSync(join(hosts[2]!.paths.home, MEMBER_SECRET_FILE), `${secret}\n`, { mode: 0o600 });
      const back = await joinAs(hosts[2]!, 'again');
      expect(back.code, back.stderr).to.equal(0);
      expect((await hosts[2]!.run('down')).code).to.equal(0);
    } finally {
      c.close();
      await fabric.close();
      for (const t of hosts) await t.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
