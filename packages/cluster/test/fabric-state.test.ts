/**
 * The fabric's saved state (cluster/fabric-state.json), an edge where bytes from disk enter the
 * fabric: a fabric started again on the file of an earlier one keeps each name for its member's
 * secret (an impostor with the key is refused the name while its holder may still come back, the
 * holder gets it back at once) and each link's impairments and cut; a host that joined later gets
 * its link back with its impairments. Whatever else is found there (seeded mutations of a good
 * state, random bytes, another cluster's state, a FIFO) is set aside and the fabric starts as new,
 * never throwing or hanging.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { CLUSTER_WIRE_VERSION, decodeFabricSavedState, decodeFabricStatus, decodePeerBook, seededRandom } from '@hvlab/protocol';
import { curveClientOptions, makeClusterKey, RpcClient, RpcFailure } from '@hvlab/runtime';
import { Fabric, parseTopology, TopologyError } from '../src/index.js';

describe('the fabric\'s saved state', function () {
  this.timeout(30000);
  const key = makeClusterKey('t');
  let dir = '';
  let file = '';
  const logs: string[] = [];
  const open: Array<{ fabric: Fabric; client: RpcClient }> = [];
  const secrets = new Map<string, string>();
  const sec = (name: string): string => {
    if (!secrets.has(name)) secrets.set(name, randomBytes(32).toString('hex'));
    return secrets.get(name)!;
  };
  const make = (): Fabric => new Fabric({
    cluster: 't', key, listen: '127.0.0.1', port: 0, links: [{ a: 'h1', b: 'h2', impairments: { delayMs: 10 } }], fileHosts: ['h1', 'h2'], stateFile: file,
    log: (msg) => void logs.push(msg),
  });
  const start = async (): Promise<{ fabric: Fabric; call: (body: Record<string, unknown>) => Promise<unknown> }> => {
    const fabric = make();
    const port = await fabric.start();
    const client = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
    open.push({ fabric, client });
    return { fabric, call: (body) => client.call(body, 3000, CLUSTER_WIRE_VERSION) };
  };
  const joinAs = (call: (b: Record<string, unknown>) => Promise<unknown>, name: string, local: boolean, secret = sec(name)): Promise<unknown> =>
    call({ op: 'join', name, secret, address: '127.0.0.1', peerPort: 7742, mgmtPort: 7741, lps: 1, local });
  const stopAll = async (): Promise<void> => {
    for (const o of open.splice(0)) {
      o.client.close();
      await o.fabric.close();
    }
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-fabric-state-'));
    file = join(dir, 'fabric-state.json');
    logs.length = 0;
  });
  afterEach(async () => {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps names for their secrets and links as they were set across a restart; an impostor waits out the holder, the holder does not', async () => {
    const first = await start();
    await joinAs(first.call, 'h1', true);
    await joinAs(first.call, 'h2', true);
    await joinAs(first.call, 'far', false);
    await first.call({ op: 'linkSet', a: 'h1', b: 'h2', change: { rateBps: 1e6, delayMs: null } });
    await first.call({ op: 'linkSet', a: 'far', b: 'h1', change: { lossPercent: 5 } });
    await first.call({ op: 'linkCut', a: 'far', b: 'h2' });
    expect(statSync(file).mode & 0o777).to.equal(0o600);
    await stopAll();

    const second = await start();
    expect(logs).to.include('the saved fabric state is taken back');
    // Before anyone joins again: the links are as they were set, the file's delay cleared.
    const st = decodeFabricStatus(await second.call({ op: 'status' }));
    const links = st.ok ? Object.fromEntries(st.value.links.map((l) => [`${l.a}-${l.b}`, l])) : {};
    expect(links['h1-h2']?.rateBps).to.equal(1e6);
    expect(links['h1-h2']?.delayMs).to.equal(undefined);
    expect(links['far-h1']?.lossPercent).to.equal(5);
    expect(links['far-h2']?.cut).to.equal(true);
    expect(st.ok && st.value.members).to.deep.equal([]);
    // Another holder of the key cannot take a name its holder may still come back for.
    for (const [name, local] of [['h1', true], ['far', false]] as const) {
      const e = await joinAs(second.call, name, local, randomBytes(32).toString('hex')).catch((x: RpcFailure) => x);
      expect((e as RpcFailure).code, name).to.equal('AlreadyExists');
      expect((e as RpcFailure).message).to.match(/has not joined again since the fabric restarted/);
    }
    // A joined host's name is not a host of the file's to take either (no host of this machine joins under a name the file lacks).
    const asLocal = (await joinAs(second.call, 'far', true).catch((x: RpcFailure) => x)) as RpcFailure;
    expect([asLocal.code, asLocal.message]).to.deep.equal(['Denied', 'far is not a host of the topology file: only the file\'s hosts join as hosts of this machine']);
    // The holders come back with their secrets.
    const b1 = decodePeerBook(await joinAs(second.call, 'h1', true));
    expect(b1.ok && b1.value.peers.map((p) => p.name)).to.deep.equal([]);
    const bf = decodePeerBook(await joinAs(second.call, 'far', false));
    expect(bf.ok && bf.value.peers.map((p) => p.name)).to.deep.equal(['h1']);
    const b2 = decodePeerBook(await joinAs(second.call, 'h2', true));
    expect(b2.ok && b2.value.peers.map((p) => p.name)).to.deep.equal(['far', 'h1']);
    // A member that leaves frees its name, in the file too.
    await second.call({ op: 'leave', name: 'far', secret: sec('far') });
    const saved = decodeFabricSavedState(JSON.parse(readFileSync(file, 'utf8')));
    expect(saved.ok && saved.value.bindings.map((b) => b.name).sort()).to.deep.equal(['h1', 'h2']);
    expect(saved.ok && saved.value.links.map((l) => `${l.a}-${l.b}`)).to.deep.equal(['h1-h2']);
  });

  it('a host that leaves before it joined the restarted fabric again (its root went down meanwhile) frees its name and its links, in the file too', async () => {
    const first = await start();
    await joinAs(first.call, 'h1', true);
    await joinAs(first.call, 'far', false);
    await first.call({ op: 'linkSet', a: 'far', b: 'h1', change: { lossPercent: 5 } });
    await stopAll();
    const second = await start();
    // Another secret cannot leave in its name.
    const denied = await second.call({ op: 'leave', name: 'far', secret: randomBytes(32).toString('hex') }).catch((x: RpcFailure) => x);
    expect((denied as RpcFailure).code).to.equal('Denied');
    expect(await second.call({ op: 'leave', name: 'far', secret: sec('far') })).to.deep.equal({ left: true });
    const saved = decodeFabricSavedState(JSON.parse(readFileSync(file, 'utf8')));
    expect(saved.ok && saved.value.bindings.map((b) => b.name)).to.deep.equal(['h1']);
    expect(saved.ok && saved.value.links.map((l) => `${l.a}-${l.b}`)).to.deep.equal(['h1-h2']);
    const st = decodeFabricStatus(await second.call({ op: 'status' }));
    expect(st.ok && st.value.links.map((l) => `${l.a}-${l.b}`)).to.deep.equal(['h1-h2']);
    // Its name is anyone's at once, as after a leave before the restart.
    expect(decodePeerBook(await joinAs(second.call, 'far', false, randomBytes(32).toString('hex'))).ok).to.equal(true);
  });

  it('names bound before a restart count among the 64 a cluster holds: what the fabric saves is always a state it takes back', async () => {
    const names = Array.from({ length: 64 }, (_, i) => `n${i}`);
    writeFileSync(file, JSON.stringify({
      format: 1, cluster: 't', bindings: names.map((name) => ({ name, secretHash: 'a'.repeat(64), local: false })), links: [],
    }));
    const f = await start();
    expect(logs).to.include('the saved fabric state is taken back');
    const e = await joinAs(f.call, 'newcomer', false).catch((x: RpcFailure) => x);
    expect((e as RpcFailure).code).to.equal('Full');
    const saved = decodeFabricSavedState(JSON.parse(readFileSync(file, 'utf8')));
    expect(saved.ok, saved.ok ? '' : saved.message).to.equal(true);
    await stopAll();
    logs.length = 0;
    await start();
    expect(logs).to.include('the saved fabric state is taken back');
  });

  it('a link as the topology file may set it round-trips through the saved state (else a restart set the whole state aside)', async () => {
    for (const rate of ['1bit', '0.5bit', '1tbit', '5tbit']) {
      let topo;
      try {
        topo = parseTopology(`name: t\nhosts:\n  h1: {}\n  h2: {}\nlinks:\n  - { endpoints: [h1, h2], rate: ${rate} }\nvms: {}\n`);
      } catch (e) {
        expect(e, rate).to.be.instanceOf(TopologyError);
        continue;
      }
      for (const x of readdirSync(dir)) rmSync(join(dir, x));
      const mk = (): Fabric => new Fabric({ cluster: 't', key, listen: '127.0.0.1', port: 0, links: topo.links, fileHosts: ['h1', 'h2'], stateFile: file, log: (msg) => void logs.push(msg) });
      const a = mk();
      const port = await a.start();
      const client = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
      open.push({ fabric: a, client });
      await joinAs((b) => client.call(b, 3000, CLUSTER_WIRE_VERSION), 'h1', true);
      await stopAll();
      logs.length = 0;
      const b = mk();
      expect(logs, rate).to.include('the saved fabric state is taken back');
      expect(b.status().links[0]?.rateBps, rate).to.equal(topo.links[0]!.impairments.rateBps);
    }
  });

  it('a restarted fabric listens for each member-to-member proxy where its earlier life did (a move\'s calls in flight go there); a port taken meanwhile gives way to a free one', async () => {
    const first = await start();
    await joinAs(first.call, 'h1', true);
    const b2 = decodePeerBook(await joinAs(first.call, 'h2', true));
    const b1 = decodePeerBook(await joinAs(first.call, 'h1', true));
    const to1 = b2.ok ? b2.value.peers[0]!.port : 0;
    const to2 = b1.ok ? b1.value.peers[0]!.port : 0;
    expect(to1).to.be.above(0);
    expect(to2).to.be.above(0);
    const saved = decodeFabricSavedState(JSON.parse(readFileSync(file, 'utf8')));
    expect(saved.ok && saved.value.proxies?.sort((a, b) => a.from.localeCompare(b.from))).to.deep.equal([{ from: 'h1', to: 'h2', port: to2 }, { from: 'h2', to: 'h1', port: to1 }]);
    await stopAll();
    // The port h2 reached h1 at is taken while the fabric is down.
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(to1, '127.0.0.1', () => r()));
    try {
      const second = await start();
      const c1 = decodePeerBook(await joinAs(second.call, 'h1', true));
      const c2 = decodePeerBook(await joinAs(second.call, 'h2', true));
      const again = decodePeerBook(await joinAs(second.call, 'h1', true));
      expect(again.ok && again.value.peers[0]!.port, 'h1 reaches h2 where it did').to.equal(to2);
      expect(c2.ok && c2.value.peers[0]!.port, 'h2 reaches h1 at a free port').to.not.equal(to1);
      expect(c1.ok).to.equal(true);
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  it('sets aside whatever else is found there (seeded mutations, random bytes, another cluster\'s state, a FIFO) and starts as new, never throwing', async () => {
    const good = {
      format: 1, cluster: 't',
      bindings: [{ name: 'h1', secretHash: 'a'.repeat(64), local: true }, { name: 'far', secretHash: 'b'.repeat(64), local: false }],
      links: [{ a: 'h1', b: 'h2', cut: false, seed: 7, delayMs: 5 }, { a: 'far', b: 'h1', cut: true, seed: 9 }],
      proxies: [{ from: 'h1', to: 'h2', port: 40001 }, { from: 'h2', to: 'h1', port: 40002 }],
    };
    const next = seededRandom(0xfab5);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
    const junk = (): unknown => pick<() => unknown>([
      () => null, () => true, () => -1, () => 1e300, () => Number.NaN, () => 'h1', () => 'x'.repeat(70), () => 'A'.repeat(64), () => [], () => ({}),
      () => [good.bindings[0]], () => ({ toString: 1 }), () => ({ __proto__: { a: 1 } }), () => 4294967296, () => 100.5,
    ])();
    const mutate = (v: unknown, depth: number): unknown => {
      if (v === null || typeof v !== 'object' || depth > 4) return next() < 0.3 ? junk() : v;
      const o: Record<string, unknown> | unknown[] = Array.isArray(v) ? [...v] : { ...(v as Record<string, unknown>) };
      const keys = Object.keys(o);
      const r = next();
      if (r < 0.15 && keys.length) delete (o as Record<string, unknown>)[pick(keys)];
      else if (r < 0.3) (o as Record<string, unknown>)[pick(['extra', 'cut', 'seed', 'name', 'lossPercent', '0', '5'])] = junk();
      else if (r < 0.4 && Array.isArray(o)) o.push(o[0]);
      else if (keys.length) {
        const k = pick(keys);
        (o as Record<string, unknown>)[k] = mutate((o as Record<string, unknown>)[k], depth + 1);
      }
      return o;
    };
    const cases: Array<string | Buffer> = [JSON.stringify({ ...good, cluster: 'other' }), JSON.stringify({ ...good, format: 2 }), '', '{', 'x'.repeat(2 * 1024 * 1024)];
    for (let i = 0; i < 150; i++) cases.push(JSON.stringify(mutate(mutate(good, 0), 0)));
    for (let i = 0; i < 50; i++) cases.push(Buffer.from(Array.from({ length: Math.floor(next() * 200) }, () => Math.floor(next() * 256))));
    let taken = 0;
    let setAside = 0;
    for (const c of cases) {
      for (const f of readdirSync(dir)) rmSync(join(dir, f));
      writeFileSync(file, c);
      const valid = (() => {
        try {
          const d = decodeFabricSavedState(JSON.parse(c.toString()));
          return d.ok && d.value.cluster === 't';
        } catch {
          return false;
        }
      })();
      logs.length = 0;
      const fabric = make();
      const st = fabric.status();
      if (valid) {
        taken++;
        expect(logs).to.include('the saved fabric state is taken back');
        expect(existsSync(file)).to.equal(true);
      } else {
        setAside++;
        expect(logs, c.toString().slice(0, 200)).to.include('the saved fabric state is refused: starting from the topology file');
        expect(existsSync(file)).to.equal(false);
        expect(readdirSync(dir).filter((f) => f.startsWith('fabric-state.json.refused-'))).to.have.length(1);
        // As new: the file's link, as the file says.
        expect(st.links.map((l) => `${l.a}-${l.b}:${l.delayMs}:${l.cut}`)).to.deep.equal(['h1-h2:10:false']);
      }
    }
    expect(taken, 'some mutations still decode').to.be.greaterThan(0);
    expect(setAside).to.be.greaterThan(150);
    for (const f of readdirSync(dir)) rmSync(join(dir, f));
    execFileSync('mkfifo', [file]);
    logs.length = 0;
    make();
    expect(logs).to.include('the saved fabric state is refused: starting from the topology file');
  });

  it('a state file the file system cannot read (EIO) is read again; one that stays unreadable is left as it is, never written over, for the next start', async () => {
    const first = await start();
    await joinAs(first.call, 'h1', true);
    await first.call({ op: 'linkSet', a: 'h1', b: 'h2', change: { rateBps: 2e6 } });
    await stopAll();
    const kept = readFileSync(file, 'utf8');
    const eio = (): never => {
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
    };
    // Twice, then it reads: the state is taken back.
    let fails = 2;
    logs.length = 0;
    const flaky = new Fabric({
      cluster: 't', key, listen: '127.0.0.1', port: 0, links: [{ a: 'h1', b: 'h2', impairments: { delayMs: 10 } }], fileHosts: ['h1', 'h2'], stateFile: file,
      readState: (f, max) => (fails-- > 0 ? eio() : readFileSync(f).subarray(0, max)), log: (msg) => void logs.push(msg),
    });
    expect(logs).to.include('the saved fabric state is taken back');
    expect(flaky.status().links[0]?.rateBps).to.equal(2e6);
    await flaky.close();
    // Always failing: from the topology file, and the file is kept whatever changes.
    logs.length = 0;
    const broken = new Fabric({
      cluster: 't', key, listen: '127.0.0.1', port: 0, links: [{ a: 'h1', b: 'h2', impairments: { delayMs: 10 } }], fileHosts: ['h1', 'h2'], stateFile: file,
      readState: eio, log: (msg) => void logs.push(msg),
    });
    const port = await broken.start();
    const client = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
    open.push({ fabric: broken, client });
    const call = (body: Record<string, unknown>): Promise<unknown> => client.call(body, 3000, CLUSTER_WIRE_VERSION);
    expect(logs).to.include('the saved fabric state cannot be read: starting from the topology file, and leaving the file for the next start');
    expect(broken.status().links[0]?.delayMs).to.equal(10);
    await joinAs(call, 'h1', true);
    await call({ op: 'linkSet', a: 'h1', b: 'h2', change: { lossPercent: 3 } });
    expect(readFileSync(file, 'utf8')).to.equal(kept);
    expect(readdirSync(dir).filter((f) => f.includes('.refused-'))).to.deep.equal([]);
    expect(logs.filter((m) => m.startsWith('the fabric state is not saved'))).to.have.length(1);
  });

  it('keeps serving when its state cannot be saved (a directory in the file\'s place), and says so once', async () => {
    execFileSync('mkdir', [file]);
    logs.length = 0;
    const f = await start();
    expect(logs).to.include('the saved fabric state is refused: starting from the topology file');
    execFileSync('mkdir', ['-p', file]);
    await joinAs(f.call, 'h1', true);
    await f.call({ op: 'linkSet', a: 'h1', b: 'h2', change: { rateBps: 1e6 } });
    const st = decodeFabricStatus(await f.call({ op: 'status' }));
    expect(st.ok && st.value.links[0]?.rateBps).to.equal(1e6);
    expect(logs.filter((m) => m.startsWith('cannot save the fabric state'))).to.have.length(1);
  });
});
