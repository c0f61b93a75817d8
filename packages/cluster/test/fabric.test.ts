/**
 * The fabric in-process, on loopback: a host that joins gets a peer book with the ports of its
 * links only; a host of the file is linked as the file says and a joined host to every member; a
 * name held by a live member is refused to a host elsewhere but taken back by the same host (a
 * restarted root); links are set, cut and reset by name, and an unknown link is refused by name;
 * a probe's own port carries it through its link and stopping it there cuts what it carried.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server } from 'node:net';
import { CLUSTER_WIRE_VERSION, FABRIC_MAX_EXPOSED, FABRIC_MAX_PROBES, decodeFabricStatus, decodePeerBook } from '@hvlab/protocol';
import { curveClientOptions, makeClusterKey, RpcClient, RpcFailure } from '@hvlab/runtime';
import { Fabric, memberAddressProblem, memberSecretHash, pairAuth } from '../src/index.js';

describe('the fabric (in-process, loopback)', function () {
  this.timeout(20000);
  const key = makeClusterKey('t');
  let fabric: Fabric;
  let c: RpcClient;
  const call = (body: Record<string, unknown>): Promise<unknown> => c.call(body, 3000, CLUSTER_WIRE_VERSION);
  /** Each member's secret, made at its first join here (a host's root keeps its own in its home). */
  const secrets = new Map<string, string>();
  const sec = (name: string): string => {
    if (!secrets.has(name)) secrets.set(name, randomBytes(32).toString('hex'));
    return secrets.get(name)!;
  };
  const join = (name: string, address: string, local: boolean, secret = sec(name)): Promise<unknown> => call({ op: 'join', name, secret, address, peerPort: 7742, mgmtPort: 7741, lps: 1, local });

  before(async () => {
    fabric = new Fabric({ cluster: 't', key, listen: '127.0.0.1', port: 0, links: [{ a: 'h1', b: 'h2', impairments: { delayMs: 10 } }], fileHosts: ['h1', 'h2', 'h3'] });
    const port = await fabric.start();
    c = new RpcClient(`tcp://127.0.0.1:${port}`, curveClientOptions(key));
  });
  after(async () => {
    c.close();
    await fabric.close();
  });

  it('links hosts as the file says, a joined host to every member, and names every link it refuses', async () => {
    const b1 = decodePeerBook(await join('h1', '127.0.0.11', true));
    expect(b1.ok && b1.value.peers).to.deep.equal([]);
    await join('h2', '127.0.0.12', true);
    await join('h3', '127.0.0.13', true);
    const again = decodePeerBook(await call({ op: 'peers', name: 'h1', secret: sec('h1'), health: [] }));
    expect(again.ok && again.value.peers.map((p) => `${p.name}@${p.address}`)).to.deep.equal(['h2@127.0.0.12']);
    const far = decodePeerBook(await join('far', '127.0.0.20', false));
    expect(far.ok && far.value.peers.map((p) => p.name)).to.deep.equal(['h1', 'h2', 'h3']);
    const st = decodeFabricStatus(await call({ op: 'status' }));
    expect(st.ok && st.value.links.map((l) => `${l.a}-${l.b}${l.delayMs ? `:${l.delayMs}` : ''}`)).to.deep.equal(['h1-h2:10', 'far-h1', 'far-h2', 'far-h3']);
    await call({ op: 'linkSet', a: 'h2', b: 'h1', change: { rateBps: 1e6 } });
    const cut = await call({ op: 'linkCut', a: 'far', b: 'h3' }) as { cut: boolean };
    expect(cut.cut).to.equal(true);
    const reset = await call({ op: 'linkReset', a: null, b: null }) as { reset: Array<{ cut: boolean; delayMs?: number }> };
    expect(reset.reset.every((l) => !l.cut && l.delayMs === undefined)).to.equal(true);
    const err = await call({ op: 'linkCut', a: 'h1', b: 'h3' }).catch((e: RpcFailure) => e);
    expect(err).to.be.instanceOf(RpcFailure);
    expect((err as RpcFailure).message).to.match(/no link between h1 and h3/);
  });

  it('takes a host of this machine (local) only under a name of the file: a key holder joined as "evil", local, at 127.0.0.1', async () => {
    const evil = await join('evil', '127.0.0.21', true).catch((e: RpcFailure) => e);
    expect((evil as RpcFailure).code).to.equal('Denied');
    expect((evil as RpcFailure).message).to.match(/evil is not a host of the topology file/);
  });

  it('refuses a name held by a live member to another host, wherever it is, and gives it back to the same host (its secret), wherever it comes from', async () => {
    const other = randomBytes(32).toString('hex');
    for (const address of ['127.0.0.99', '127.0.0.20']) {
      const taken = await join('far', address, false, other).catch((e: RpcFailure) => e);
      expect((taken as RpcFailure).code, `another host at ${address}`).to.equal('AlreadyExists');
    }
    const fileName = await join('h1', '127.0.0.98', false).catch((e: RpcFailure) => e);
    expect((fileName as RpcFailure).code).to.equal('AlreadyExists');
    const noSecret = await call({ op: 'join', name: 'far', address: '127.0.0.20', peerPort: 7742, mgmtPort: 7741, lps: 1, local: false }).catch((e: RpcFailure) => e);
    expect((noSecret as RpcFailure).code).to.equal('Denied');
    // Its root restarted on another address: the secret says it is far.
    expect(decodePeerBook(await join('far', '127.0.0.21', false)).ok).to.equal(true);
    expect(decodePeerBook(await join('far', '127.0.0.20', false)).ok).to.equal(true);
    await call({ op: 'leave', name: 'far', secret: sec('far') });
    const st = decodeFabricStatus(await call({ op: 'status' }));
    expect(st.ok && st.value.members.map((m) => m.name).sort()).to.deep.equal(['h1', 'h2', 'h3']);
    expect(st.ok && st.value.links.length).to.equal(1);
  });

  it('refuses a request that speaks for a member without its secret, and gives each pair of members a credential only the two share', async () => {
    const forged = randomBytes(32).toString('hex');
    const code = async (body: Record<string, unknown>): Promise<string> => ((await call(body).catch((e: RpcFailure) => e)) as RpcFailure).code;
    for (const body of [
      { op: 'leave', name: 'h2', secret: forged },
      { op: 'leave', name: 'h2' },
      { op: 'peers', name: 'h2', secret: forged, health: [] },
      { op: 'expose', name: 'h2', secret: forged, from: 'h1', port: 22 },
      { op: 'unexpose', name: 'h2', secret: forged, port: 40000 },
      { op: 'probeOpen', name: 'h2', secret: forged, to: 'h1' },
      { op: 'probeStop', name: 'h2', secret: forged, to: null, port: null },
    ]) expect(await code(body), JSON.stringify(body)).to.equal('Denied');
    const st = decodeFabricStatus(await call({ op: 'status' }));
    expect(st.ok && st.value.members.map((m) => m.name).sort(), 'h2 is still a member').to.deep.equal(['h1', 'h2', 'h3']);
    // Without a secret, a probe's stop is an operator's (an interrupted CLI's "link probe").
    expect(await call({ op: 'probeStop', name: 'h2', to: null, port: null })).to.deep.equal({ stopped: 0 });

    const book = async (name: string): Promise<Map<string, string>> => {
      const b = decodePeerBook(await call({ op: 'peers', name, secret: sec(name), health: [] }));
      if (!b.ok) throw new Error(b.message);
      return new Map(b.value.peers.map((p) => [p.name, p.auth]));
    };
    await join('far', '127.0.0.20', false);
    const far = await book('far');
    expect([...far.keys()]).to.deep.equal(['h1', 'h2', 'h3']);
    expect(new Set(far.values()).size, 'a credential per pair').to.equal(3);
    for (const peer of ['h1', 'h2', 'h3']) {
      expect((await book(peer)).get('far'), `${peer}'s credential with far is far's with ${peer}`).to.equal(far.get(peer));
      expect(far.get(peer)).to.equal(pairAuth('t', 'far', memberSecretHash(sec('far')), peer, memberSecretHash(sec(peer))));
    }
    // A member that joins again with its secret keeps its credentials.
    await join('h2', '127.0.0.12', true);
    expect((await book('far')).get('h2')).to.equal(far.get('h2'));
    await call({ op: 'leave', name: 'far', secret: sec('far') });
  });

  it('opens a member\'s own port to one linked peer through their link (expose), and closes it on unexpose, a ninth, or the member leaving', async () => {
    // The member's socket: an echo server on h2's address.
    const echo: Server = createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.12', r));
    const target = (echo.address() as { port: number }).port;
    const roundTrip = (port: number): Promise<string> => new Promise((resolve) => {
      const s = connect(port, '127.0.0.1');
      let got = '';
      s.on('data', (d) => {
        got += d.toString();
        if (got === 'ping') s.end();
      });
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      s.on('close', () => resolve(got));
      s.write('ping');
    });
    const linkBytes = async (): Promise<number> => {
      const st = decodeFabricStatus(await call({ op: 'status' }));
      const l = st.ok ? st.value.links.find((x) => x.a === 'h1' && x.b === 'h2') : undefined;
      return (l?.bytes[0] ?? 0) + (l?.bytes[1] ?? 0);
    };
    try {
      const before = await linkBytes();
      const { port } = await call({ op: 'expose', name: 'h2', secret: sec('h2'), from: 'h1', port: target }) as { port: number };
      expect(port).to.not.equal(target);
      expect(await roundTrip(port)).to.equal('ping');
      expect(await linkBytes(), 'the bytes crossed the h1-h2 link').to.be.greaterThan(before);
      expect(fabric.exposedPorts()).to.deep.equal([{ port, owner: 'h2', from: 'h1', target }]);
      // Only through a link: h3 has none to h2.
      const unlinked = await call({ op: 'expose', name: 'h2', secret: sec('h2'), from: 'h3', port: target }).catch((e: RpcFailure) => e);
      expect((unlinked as RpcFailure).message).to.match(/no link between h3 and h2/);
      const stranger = await call({ op: 'expose', name: 'nobody', secret: sec('nobody'), from: 'h1', port: target }).catch((e: RpcFailure) => e);
      expect((stranger as RpcFailure).code).to.equal('NotMember');
      // Another member cannot close it; its owner can.
      expect(await call({ op: 'unexpose', name: 'h1', secret: sec('h1'), port })).to.deep.equal({ closed: false });
      expect(await call({ op: 'unexpose', name: 'h2', secret: sec('h2'), port })).to.deep.equal({ closed: true });
      expect(await roundTrip(port)).to.equal('ECONNREFUSED');
      // At most FABRIC_MAX_EXPOSED a member: the oldest goes for a new one.
      const ports: number[] = [];
      for (let i = 0; i <= FABRIC_MAX_EXPOSED; i++) ports.push(((await call({ op: 'expose', name: 'h2', secret: sec('h2'), from: 'h1', port: target })) as { port: number }).port);
      expect(fabric.exposedPorts().map((e) => e.port)).to.deep.equal(ports.slice(1));
      expect(await roundTrip(ports[0]!)).to.equal('ECONNREFUSED');
      expect(await roundTrip(ports[FABRIC_MAX_EXPOSED]!)).to.equal('ping');
      // A member that joins again (its root restarted) loses the ports of its earlier life.
      await join('h2', '127.0.0.12', true);
      expect(fabric.exposedPorts()).to.deep.equal([]);
      expect(await roundTrip(ports[FABRIC_MAX_EXPOSED]!)).to.equal('ECONNREFUSED');
      // ... but for those it says it still uses (`keep`: an incoming migration's stream, whose worker
      // ran on through its root's restart), when it is the same member.
      const expose = async (via?: number): Promise<number> => ((await call({ op: 'expose', name: 'h2', secret: sec('h2'), from: 'h1', port: target, ...(via ? { via } : {}) })) as { port: number }).port;
      const [gone, kept] = [await expose(), await expose()];
      await call({ op: 'join', name: 'h2', secret: sec('h2'), address: '127.0.0.12', peerPort: 7742, mgmtPort: 7741, lps: 1, local: true, keep: [kept] });
      expect(fabric.exposedPorts().map((e) => e.port)).to.deep.equal([kept]);
      expect(await roundTrip(kept)).to.equal('ping');
      expect(await roundTrip(gone)).to.equal('ECONNREFUSED');
      // Asked for again where it is, it is that port as it is; closed, a free port asked for is taken.
      expect(await expose(kept)).to.equal(kept);
      expect(fabric.exposedPorts()).to.have.length(1);
      await call({ op: 'unexpose', name: 'h2', secret: sec('h2'), port: kept });
      expect(await expose(kept)).to.equal(kept);
      expect(await roundTrip(kept)).to.equal('ping');
      await join('h2', '127.0.0.12', true);
      expect(fabric.exposedPorts()).to.deep.equal([]);
      const last = ((await call({ op: 'expose', name: 'h2', secret: sec('h2'), from: 'h1', port: target })) as { port: number }).port;
      // A member that leaves takes its ports with it.
      await call({ op: 'leave', name: 'h2', secret: sec('h2') });
      expect(fabric.exposedPorts()).to.deep.equal([]);
      expect(await roundTrip(last)).to.equal('ECONNREFUSED');
    } finally {
      echo.close();
    }
  });
  it('opens a port for one probe through its link (probeOpen), and stopping it there (probeStop) closes it and cuts what it carried', async () => {
    // h2's peer service: a sink that counts what arrives.
    let received = 0;
    const sink: Server = createServer((sock) => sock.on('data', (d: Buffer) => (received += d.length)).on('error', () => undefined));
    await new Promise<void>((r) => sink.listen(0, '127.0.0.12', r));
    const refused = (port: number): Promise<boolean> => new Promise((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.on('connect', () => {
        sock.destroy();
        resolve(false);
      });
      sock.on('error', () => resolve(true));
    });
    const linkBytes = async (): Promise<number> => {
      const st = decodeFabricStatus(await call({ op: 'status' }));
      return (st.ok ? st.value.links.find((x) => x.a === 'h1' && x.b === 'h2')?.bytes[0] : undefined) ?? 0;
    };
    await call({ op: 'join', name: 'h2', secret: sec('h2'), address: '127.0.0.12', peerPort: (sink.address() as { port: number }).port, mgmtPort: 7741, lps: 1, local: true });
    await call({ op: 'linkSet', a: 'h1', b: 'h2', change: { rateBps: 8e6, delayMs: null } });
    try {
      const { port } = await call({ op: 'probeOpen', name: 'h1', secret: sec('h1'), to: 'h2' }) as { port: number };
      expect(fabric.probePorts()).to.deep.equal([{ port, owner: 'h1', to: 'h2', connections: 0 }]);
      // Only a member, only to a member, only through a link.
      expect(((await call({ op: 'probeOpen', name: 'nobody', secret: sec('nobody'), to: 'h2' }).catch((e: RpcFailure) => e)) as RpcFailure).code).to.equal('NotMember');
      expect(((await call({ op: 'probeOpen', name: 'h1', secret: sec('h1'), to: 'zz' }).catch((e: RpcFailure) => e)) as RpcFailure).code).to.equal('NotFound');
      expect(((await call({ op: 'probeOpen', name: 'h1', secret: sec('h1'), to: 'h3' }).catch((e: RpcFailure) => e)) as RpcFailure).message).to.match(/no link between h1 and h3/);
      // A bulk transfer at 8 mbit/s: 4 MiB take 4 s, most of it queued in the link.
      const before = await linkBytes();
      const probe = connect(port, '127.0.0.1');
      probe.on('error', () => undefined);
      const closed = new Promise<void>((r) => probe.on('close', () => r()));
      probe.write(Buffer.alloc(4 * 1024 * 1024, 0x5a));
      let arrived = 0;
      const flowing = async (): Promise<boolean> => {
        arrived = received;
        return arrived > 64 * 1024 && (await linkBytes()) > before;
      };
      for (let i = 0; i < 50 && !(await flowing()); i++) await new Promise((r) => setTimeout(r, 100));
      expect(arrived, 'the probe\'s bytes crossed the link').to.be.greaterThan(64 * 1024);
      expect(fabric.probePorts()[0]!.connections).to.equal(1);
      // Another member's stop, or one for another peer, leaves it; its own stops it.
      expect(await call({ op: 'probeStop', name: 'h2', secret: sec('h2'), to: null, port: null })).to.deep.equal({ stopped: 0 });
      expect(await call({ op: 'probeStop', name: 'h1', secret: sec('h1'), to: 'h3', port: null })).to.deep.equal({ stopped: 0 });
      expect(await call({ op: 'probeStop', name: 'h1', secret: sec('h1'), to: 'h2', port: null })).to.deep.equal({ stopped: 1 });
      await closed;
      expect(fabric.probePorts()).to.deep.equal([]);
      expect(await refused(port), 'its port is closed').to.equal(true);
      // What the link held of it is dropped: nothing more arrives (4 MiB at 8 mbit/s would take seconds more).
      const atStop = received;
      expect(atStop).to.be.lessThan(4 * 1024 * 1024);
      await new Promise((r) => setTimeout(r, 600));
      expect(received - atStop, 'bytes delivered after the stop').to.be.at.most(64 * 1024);
      // At most FABRIC_MAX_PROBES a member: the oldest goes; a member leaving takes its probes (and those to it).
      const ports: number[] = [];
      for (let i = 0; i <= FABRIC_MAX_PROBES; i++) ports.push(((await call({ op: 'probeOpen', name: 'h1', secret: sec('h1'), to: 'h2' })) as { port: number }).port);
      expect(fabric.probePorts().map((e) => e.port)).to.deep.equal(ports.slice(1));
      expect(await refused(ports[0]!)).to.equal(true);
      expect(await call({ op: 'probeStop', name: 'h1', secret: sec('h1'), to: null, port: ports[1]! })).to.deep.equal({ stopped: 1 });
      await call({ op: 'leave', name: 'h2', secret: sec('h2') });
      expect(fabric.probePorts()).to.deep.equal([]);
    } finally {
      await call({ op: 'linkReset', a: null, b: null });
      sink.close();
    }
  });
});

describe('a member\'s address (memberAddressProblem)', () => {
  it('off loopback, refuses loopback, 0.x, multicast and broadcast addresses (the fabric relayed to its own machine\'s loopback services); on loopback, takes any', () => {
    const off = ['127.0.0.1', '127.9.9.9', '0.0.0.0', '224.0.0.1', '239.1.2.3', '255.255.255.255'].map((a) => memberAddressProblem(a, '10.20.0.1'));
    expect(off.every((x) => typeof x === 'string'), JSON.stringify(off)).to.equal(true);
    expect(memberAddressProblem('127.0.0.1', '10.20.0.1')).to.match(/loopback/);
    for (const a of ['10.20.0.2', '192.168.1.5', '169.254.1.1', '8.8.8.8']) expect(memberAddressProblem(a, '10.20.0.1'), a).to.equal(null);
    for (const a of ['127.0.0.11', '10.20.0.2']) expect(memberAddressProblem(a, '127.0.0.1'), a).to.equal(null);
  });
});
