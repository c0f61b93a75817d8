/**
 * The cluster wire (cluster.ts): each decoder takes what a member really sends and refuses the rest
 * with a sentence; none throws on anything (seeded fuzz of frames, mutated valid frames, results of
 * any shape, key files and ZAP frames); a decoded value never carries a field it did not check.
 */
import { expect } from 'chai';
import {
  decodeFabricRequest, decodePeerRequest, decodeFabricStatus, decodePeerBook, decodeLinkResult, decodeClusterKey, decodeZapRequest, decodeLinkChange,
  encode, seededRandom, z85Decode, CLUSTER_FRAME_MAX_BYTES, CLUSTER_WIRE_VERSION,
} from '../src/index.js';

const ok = { v: CLUSTER_WIRE_VERSION, id: 7 };
/** A member secret and a pair's credential, as the wire carries them. */
const SECRET = 'a1'.repeat(32);
const AUTH = '0f'.repeat(32);
const KEY = { version: 1, cluster: 'lab', publicKey: 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7', secretKey: 'JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6' };

describe('cluster wire', () => {
  it('decodes what members send', () => {
    const join = decodeFabricRequest(encode({ ...ok, op: 'join', name: 'h1', secret: SECRET, address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true }));
    expect(join).to.deep.equal({ ok: true, value: { ...ok, op: 'join', name: 'h1', secret: SECRET, address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true, keep: [] } });
    const keeping = decodeFabricRequest(encode({ ...ok, op: 'join', name: 'h1', secret: SECRET, address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true, keep: [40001, 40002] }));
    expect(keeping.ok && keeping.value).to.deep.include({ keep: [40001, 40002] });
    // An operator's requests carry no secret: null.
    expect(decodeFabricRequest(encode({ ...ok, op: 'status' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'status', secret: null } });
    const set = decodeFabricRequest(encode({ ...ok, op: 'linkSet', a: 'h1', b: 'h2', change: { delayMs: 20, rateBps: null, seed: 9 } }));
    expect(set.ok && set.value).to.deep.include({ op: 'linkSet', change: { delayMs: 20, rateBps: null, seed: 9 } });
    const reset = decodeFabricRequest(encode({ ...ok, op: 'linkReset', a: null, b: null }));
    expect(reset.ok && reset.value).to.deep.include({ a: null, b: null });
    const peers = decodeFabricRequest(encode({ ...ok, op: 'peers', name: 'h2', health: [{ name: 'h1', state: 'up', rttMs: 0.4, missed: 0 }] }));
    expect(peers.ok).to.equal(true);
    expect(decodeFabricRequest(encode({ ...ok, op: 'expose', name: 'h2', secret: SECRET, from: 'h1', port: 40123 }))).to.deep.equal({ ok: true, value: { ...ok, op: 'expose', name: 'h2', secret: SECRET, from: 'h1', port: 40123, via: null } });
    expect(decodeFabricRequest(encode({ ...ok, op: 'expose', name: 'h2', secret: SECRET, from: 'h1', port: 40123, via: 40200 }))).to.deep.equal({ ok: true, value: { ...ok, op: 'expose', name: 'h2', secret: SECRET, from: 'h1', port: 40123, via: 40200 } });
    expect(decodeFabricRequest(encode({ ...ok, op: 'unexpose', name: 'h2', secret: SECRET, port: 40999 }))).to.deep.equal({ ok: true, value: { ...ok, op: 'unexpose', name: 'h2', secret: SECRET, port: 40999 } });
    expect(decodeFabricRequest(encode({ ...ok, op: 'probeOpen', name: 'h1', secret: SECRET, to: 'h2' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'probeOpen', name: 'h1', secret: SECRET, to: 'h2' } });
    expect(decodeFabricRequest(encode({ ...ok, op: 'probeStop', name: 'h1', to: 'h2', port: null }))).to.deep.equal({ ok: true, value: { ...ok, op: 'probeStop', name: 'h1', secret: null, to: 'h2', port: null } });
    expect(decodeFabricRequest(encode({ ...ok, op: 'probeStop', name: 'h1', secret: SECRET, port: 40999 }))).to.deep.equal({ ok: true, value: { ...ok, op: 'probeStop', name: 'h1', secret: SECRET, to: null, port: 40999 } });
    const ping = decodePeerRequest(encode({ ...ok, op: 'ping', from: 'h1', auth: AUTH, t: 12 }));
    expect(ping).to.deep.equal({ ok: true, value: { ...ok, op: 'ping', from: 'h1', auth: AUTH, t: 12 } });
    const sink = decodePeerRequest(encode({ ...ok, op: 'sink', from: 'h1', auth: AUTH, data: Buffer.alloc(10) }));
    expect(sink.ok && sink.value.op === 'sink' && sink.value.data.length).to.equal(10);
    expect(decodeClusterKey(JSON.stringify(KEY))).to.deep.equal({ ok: true, value: KEY });
    expect(z85Decode(KEY.publicKey)?.length).to.equal(32);
  });

  it('refuses what is not, with a sentence and the id when one could be read', () => {
    const cases: Array<[unknown, RegExp, number]> = [
      [{ ...ok, op: 'join', name: 'H1', address: '10.1.2.3', peerPort: 1, mgmtPort: 1, lps: 1, local: true }, /"name" must be a valid name/, 7],
      [{ ...ok, op: 'join', name: 'h1', address: '10.1.2.300', peerPort: 1, mgmtPort: 1, lps: 1, local: true }, /IPv4/, 7],
      [{ ...ok, op: 'linkSet', a: 'h1', b: 'h2', change: { delayMs: -1 } }, /"delayMs" must be a number from 0/, 7],
      [{ ...ok, op: 'linkSet', a: 'h1', b: 'h2', change: { bogus: 1 } }, /unknown field "bogus"/, 7],
      [{ ...ok, op: 'status', extra: 1 }, /unknown field "extra"/, 7],
      [{ ...ok, op: 'expose', name: 'h2', from: 'h1', port: 0 }, /"port" must be a whole number from 1 to 65535/, 7],
      [{ ...ok, op: 'expose', name: 'h2', from: 'h1', port: 80, via: 70000 }, /"via" must be a whole number from 1 to 65535/, 7],
      [{ ...ok, op: 'join', name: 'h1', address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true, keep: [1, 2, 3, 4, 5, 6, 7, 8, 9] }, /"keep" must be a list of at most 8/, 7],
      [{ ...ok, op: 'join', name: 'h1', address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true, keep: ['x'] }, /"keep" must list ports/, 7],
      [{ ...ok, op: 'expose', name: 'h2', from: 'H1', port: 80 }, /"from" must be a valid name/, 7],
      [{ ...ok, op: 'expose', name: 'h2', port: 80 }, /"from"/, 7],
      [{ ...ok, op: 'unexpose', name: 'h2', port: 65536 }, /"port" must be a whole number from 1 to 65535/, 7],
      [{ ...ok, op: 'probeOpen', name: 'h1' }, /"to" must be a valid name/, 7],
      [{ ...ok, op: 'probeOpen', name: 'h1', to: '../h2' }, /"to" must be a valid name/, 7],
      [{ ...ok, op: 'probeOpen', name: 'h1', to: 'h2', port: 80 }, /unknown field "port"/, 7],
      [{ ...ok, op: 'probeStop', to: 'h2', port: null }, /"name" must be a valid name/, 7],
      [{ ...ok, op: 'probeStop', name: 'h1', to: 'H2', port: null }, /"to" must be a valid name/, 7],
      [{ ...ok, op: 'probeStop', name: 'h1', to: null, port: 0 }, /"port" must be a whole number from 1 to 65535/, 7],
      [{ ...ok, op: 'probeStop', name: 'h1', to: null, port: 80.5 }, /"port" must be a whole number/, 7],
      [{ ...ok, op: 'nope' }, /unknown operation "nope"/, 7],
      [{ ...ok, op: 'leave', name: 'h1', secret: 'A1'.repeat(32) }, /"secret" must be a valid name/, 7],
      [{ ...ok, op: 'leave', name: 'h1', secret: 'a1'.repeat(31) }, /"secret" must be a valid name/, 7],
      [{ ...ok, op: 'leave', name: 'h1', secret: 7 }, /"secret"/, 7],
      [{ v: 1, id: 3, op: 'status' }, /version 1 is not 4/, 3], // a host from before migState carried pages
      [{ v: 2, id: 3, op: 'status' }, /version 2 is not 4/, 3], // a host from before member secrets
      [{ v: 3, id: 3, op: 'status' }, /version 3 is not 4/, 3], // a host from before migration requests' numbers (rq)
      [{ v: 5, id: 3, op: 'status' }, /version 5 is not 4/, 3],
      [{ v: CLUSTER_WIRE_VERSION, op: 'status' }, /positive whole "id"/, 0],
      [[1, 2], /must be a map/, 0],
    ];
    for (const [v, re, id] of cases) {
      const d = decodeFabricRequest(encode(v));
      expect(d.ok, JSON.stringify(v)).to.equal(false);
      if (!d.ok) {
        expect(d.message).to.match(re);
        expect(d.id).to.equal(id);
      }
    }
    expect(decodeFabricRequest(Buffer.alloc(CLUSTER_FRAME_MAX_BYTES + 1)).ok).to.equal(false);
    expect(decodePeerRequest(encode({ ...ok, op: 'sink', from: 'h1', auth: AUTH, data: 'text' })).ok).to.equal(false);
    for (const [auth, re] of [[undefined, /needs "auth"/], [null, /needs "auth"/], ['0F'.repeat(32), /"auth"/], ['0f'.repeat(33), /"auth"/], [{ toString: 1 }, /"auth"/]] as const) {
      const d = decodePeerRequest(encode({ ...ok, op: 'ping', from: 'h1', auth, t: 1 }));
      expect(d.ok, JSON.stringify(auth) ?? "undefined").to.equal(false);
      if (!d.ok) {
        expect(d.message).to.match(re);
        expect(d.id).to.equal(7);
      }
    }
    expect(decodePeerBook({ cluster: 'lab', peers: [{ name: 'h2', port: 4000, address: '10.0.0.2', peerPort: 7742 }] }).ok, 'a book without credentials').to.equal(false);
    expect(decodeClusterKey('{"version":1,"cluster":"x","publicKey":"short","secretKey":"short"}').ok).to.equal(false);
    expect(decodeClusterKey('not json').ok).to.equal(false);
    expect(decodeLinkChange({ lossPercent: 101 }).ok).to.equal(false);
    expect(decodeLinkChange({ lossPercent: 1 })).to.deep.equal({ ok: true, value: { lossPercent: 1 } });
  });

  it('never throws on anything (seeded fuzz: random and mutated frames, results of any shape, key files, ZAP frames)', () => {
    const next = seededRandom(0xc105);
    const valid = [
      encode({ ...ok, op: 'join', name: 'h1', secret: SECRET, address: '10.1.2.3', peerPort: 7742, mgmtPort: 7741, lps: 2, local: true }),
      encode({ ...ok, op: 'peers', name: 'h2', secret: SECRET, health: [{ name: 'h1', state: 'up', rttMs: 0.4, missed: 0 }] }),
      encode({ ...ok, op: 'linkSet', a: 'h1', b: 'h2', change: { delayMs: 20 } }),
      encode({ ...ok, op: 'ping', from: 'h1', auth: AUTH, t: 1 }),
      encode({ ...ok, op: 'sink', from: 'h1', auth: AUTH, data: Buffer.alloc(8) }),
      encode({ ...ok, op: 'expose', name: 'h2', secret: SECRET, from: 'h1', port: 40123 }),
      encode({ ...ok, op: 'unexpose', name: 'h2', secret: SECRET, port: 40123 }),
      encode({ ...ok, op: 'probeOpen', name: 'h1', secret: SECRET, to: 'h2' }),
      encode({ ...ok, op: 'probeStop', name: 'h1', secret: SECRET, to: 'h2', port: 40123 }),
    ];
    const status = { cluster: 'lab', members: [{ name: 'h1', address: '10.0.0.1', peerPort: 1, mgmtPort: 2, lps: 1, local: true, lastSeenMs: 3, peers: [] }], links: [{ a: 'h1', b: 'h2', cut: false, seed: 1, bytes: [1, 2], lost: 0, connections: 1, delayMs: 5 }], refused: 0 };
    expect(decodeFabricStatus(status).ok).to.equal(true);
    // What the link holds back each way: optional (a fabric older than the field sends none), two byte counts when sent.
    const queued = { ...status, links: [{ ...status.links[0], queued: [4096, 0] }] };
    expect(decodeFabricStatus(queued)).to.deep.include({ ok: true });
    expect((decodeFabricStatus(queued) as { value: { links: Array<{ queued: unknown }> } }).value.links[0]!.queued).to.deep.equal([4096, 0]);
    for (const bad of [[1], [1, 2, 3], [-1, 0], [0.5, 0], ['1', 0], { toString: 1 }]) {
      const d = decodeFabricStatus({ ...status, links: [{ ...status.links[0], queued: bad }] });
      expect(d.ok, JSON.stringify(bad)).to.equal(false);
    }
    const book = { cluster: 'lab', peers: [{ name: 'h2', port: 4000, address: '10.0.0.2', peerPort: 7742, auth: AUTH }] };
    expect(decodePeerBook(book)).to.deep.equal({ ok: true, value: book });
    const shapes: unknown[] = [null, 1, 'x', [], {}, { toString: 5 }, Buffer.alloc(3), { cluster: 1 }, status, book, { ...book, peers: [{ ...book.peers[0], auth: { toString: 1 } }] }, { ...status, members: [null] }, { ...status, links: [{ ...status.links[0], bytes: [1] }] }, { ...status, links: [{ ...status.links[0], queued: [1, { valueOf: 1 }] }] }];
    for (let i = 0; i < 5000; i++) {
      const pick = valid[Math.floor(next() * valid.length)]!;
      const b = Buffer.from(pick);
      for (let k = 0; k < 1 + Math.floor(next() * 4); k++) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
      const rnd = Buffer.alloc(Math.floor(next() * 64));
      for (let k = 0; k < rnd.length; k++) rnd[k] = Math.floor(next() * 256);
      for (const f of [b, rnd]) {
        expect(() => decodeFabricRequest(f)).to.not.throw();
        expect(() => decodePeerRequest(f)).to.not.throw();
        expect(() => decodeZapRequest([f, f, f, f, f, f, f])).to.not.throw();
        expect(() => decodeClusterKey(f.toString('latin1'))).to.not.throw();
      }
      const shape = shapes[Math.floor(next() * shapes.length)];
      expect(() => decodeFabricStatus(shape)).to.not.throw();
      expect(() => decodePeerBook(shape)).to.not.throw();
      expect(() => decodeLinkResult(shape)).to.not.throw();
    }
  });

  it('reads ZAP requests as libzmq frames them, and nothing else', () => {
    const f = (s: string): Buffer => Buffer.from(s);
    const key = Buffer.alloc(32, 1);
    expect(decodeZapRequest([f('1.0'), f('7'), f('hvlab-cluster'), f('10.0.0.1'), f(''), f('CURVE'), key])).to.deep.include({ domain: 'hvlab-cluster', address: '10.0.0.1', mechanism: 'CURVE' });
    expect(decodeZapRequest([f('1.0'), f('7'), f(''), f(''), f(''), f('NULL')])!.clientKey).to.equal(null);
    expect(decodeZapRequest([f('2.0'), f('7'), f(''), f(''), f(''), f('NULL')])).to.equal(null);
    expect(decodeZapRequest([f('1.0')])).to.equal(null);
  });
});
