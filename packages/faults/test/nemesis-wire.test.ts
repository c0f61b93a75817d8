/**
 * The nemesis's inputs (request.ts, wire.ts, protocol's fault specs and the root's faultSet
 * arguments): each takes what a client really sends and refuses the rest with a sentence; none
 * throws on anything (seeded fuzz of random and mutated frames and specs).
 */
import { expect } from 'chai';
import { decodeHostFaultSpec, decodeMgmtArgs, decodeVmFaultSpec, encode, seededRandom } from '@hvlab/protocol';
import { checkFaultRequest, decodeNemesisRequest, parseTarget, rootFaultCounters } from '../src/index.js';

const req = { kind: 'pause', target: 'vm:web', forMs: 5000 };

describe('fault requests and the nemesis wire', () => {
  it('takes the requests the CLI and experiments send', () => {
    expect(checkFaultRequest(req)).to.deep.equal({ ok: true, value: { ...req, params: {} } });
    const vmbus = checkFaultRequest({ kind: 'vmbus', target: 'vm:web', forMs: 1000, params: { channel: 'heartbeat', drop: 0.5, delayMs: '20' } });
    expect(vmbus.ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'link', target: 'link:h1-h2', forMs: 1000, params: { delayMs: 50, jitterMs: 5 } }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'partition', target: 'cluster', forMs: 1000, params: { shape: 'majority' } }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'kill', target: 'vms:one', forMs: 0, role: 'vmwp', params: { restart: true }, seed: 3, owner: 'run-1:x' }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'lp-shrink', target: 'host-of:web', forMs: 2000, params: { lps: 1 } }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'clock', target: 'vm:a', forMs: 2000, params: { offsetMs: -2000 } }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'bitflip', target: 'vm:a', forMs: 0 }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'kill', target: 'vm:a', forMs: 1000, params: { restart: true } }).ok).to.equal(true);
    expect(checkFaultRequest({ kind: 'kill', target: 'vms:one', role: 'vmwp', forMs: 1000, params: { restart: true } }).ok).to.equal(true);
    expect(parseTarget('link:h1-h2')).to.deep.equal({ ok: true, value: { t: 'link', a: 'h1', b: 'h2', text: 'h1-h2' } });
    expect(parseTarget('vm:web@h3')).to.deep.equal({ ok: true, value: { t: 'vm', vm: 'web', on: 'h3' } });
    expect(parseTarget('vm:web')).to.deep.equal({ ok: true, value: { t: 'vm', vm: 'web' } });
    for (const bad of ['vm:web@', 'vm:@h1', 'vm:web@H1', 'vm:web@h1@h2', 'host-of:web@h1']) expect(parseTarget(bad).ok, bad).to.equal(false);
  });

  it('refuses what is not a bounded, well-aimed fault, with a sentence', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ ...req, forMs: undefined }, /without an end is refused/],
      [{ ...req, forMs: 0 }, /without an end is refused/],
      [{ ...req, forMs: 1e12 }, /24 h/],
      [{ ...req, kind: 'meteor' }, /unknown fault kind "meteor"/],
      [{ kind: 'kill', target: 'host:h1', forMs: 1000, params: { restart: true } }, /restart starts a killed VM again/],
      [{ kind: 'kill', target: 'vm:a', role: 'hypervisor', forMs: 1000, params: { restart: true } }, /not a hypervisor/],
      [{ kind: 'kill', target: 'cluster', forMs: 1000, params: { restart: true } }, /restart starts a killed VM again/],
      [{ ...req, target: 'vm' }, /KIND:NAME/],
      [{ ...req, target: 'planet:x' }, /unknown kind of target/],
      [{ ...req, target: 'vms:most' }, /one, minority, majority, all/],
      [{ ...req, kind: 'vmbus', target: 'host:h1', params: { drop: 1 } }, /hits a VM/],
      [{ ...req, kind: 'vmbus', params: {} }, /at least one probability/],
      // A channel no VM has is named before the missing probability.
      [{ ...req, kind: 'vmbus', params: { channel: 'foo' } }, /^vmbus: "foo" is not a VMBus channel \(channels: heartbeat, shutdown, timesync, kvp\)$/],
      [{ ...req, kind: 'vmbus', params: { drop: 2 } }, /"drop" must be a number from 0 to 1/],
      [{ ...req, kind: 'link', target: 'link:h1-h2', params: {} }, /give an impairment/],
      [{ ...req, kind: 'link', target: 'link:h1-h2', params: { cut: true, delayMs: 3 } }, /cut link carries nothing/],
      [{ ...req, kind: 'partition', target: 'cluster', params: { shape: 'donut' } }, /"shape" must be one of/],
      [{ ...req, kind: 'pause', target: 'host:h1', role: 'partition' }, /belongs to a VM/],
      [{ ...req, kind: 'vmbus', role: 'root', params: { drop: 1 } }, /takes no role/],
      [{ ...req, params: { drop: 1 } }, /pause fault has no parameter "drop"/],
      [{ ...req, extra: 1 }, /unknown field "extra"/],
      [{ ...req, kind: 'lp-shrink', target: 'host:h1', params: { lps: 0 } }, /"lps" must be/],
      [null, /must be a map/],
    ];
    for (const [v, re] of cases) {
      const r = checkFaultRequest(v);
      expect(r.ok, JSON.stringify(v)).to.equal(false);
      if (!r.ok) expect(r.message, JSON.stringify(v)).to.match(re);
    }
  });

  it('the wire decodes its five operations and refuses the rest with the id', () => {
    const ok = { v: 1, id: 4 };
    expect(decodeNemesisRequest(encode({ ...ok, op: 'inject', req }))).to.deep.equal({ ok: true, value: { ...ok, op: 'inject', req: { ...req, params: {} } } });
    expect(decodeNemesisRequest(encode({ ...ok, op: 'clear', fault: null, owner: 'x' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'clear', fault: null, owner: 'x' } });
    expect(decodeNemesisRequest(encode({ ...ok, op: 'list' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'list', all: false, counters: false } });
    // `counters`: the active vmbus faults' counters, asked of the roots.
    expect(decodeNemesisRequest(encode({ ...ok, op: 'list', all: true, counters: true }))).to.deep.equal({ ok: true, value: { ...ok, op: 'list', all: true, counters: true } });
    expect(decodeNemesisRequest(encode({ ...ok, op: 'list', counters: 1 }))).to.deep.include({ ok: false, id: 4 });
    expect(decodeNemesisRequest(encode({ ...ok, op: 'renew', owner: 'run' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'renew', owner: 'run', teardown: false, vms: null } });
    // The VMs an owner made, removed when its lease lapses: host and VM names only, at most 64.
    const id = '3F2B8C1E-0A4D-4E5F-9A7B-1C2D3E4F5A6B';
    // The id as lower case: the root compares ids that way.
    expect(decodeNemesisRequest(encode({ ...ok, op: 'renew', owner: 'run', vms: [{ host: 'h1', vm: 'c1', id }] }))).to.deep.equal({ ok: true, value: { ...ok, op: 'renew', owner: 'run', teardown: false, vms: [{ host: 'h1', vm: 'c1', id: id.toLowerCase() }] } });
    // Each VM needs its id: a name alone would let the lease remove a later VM of that name.
    for (const vms of ['c1', [{ host: 'h1' }], [{ host: 'h1', vm: 'c1' }], [{ host: 'h1', vm: 'c1', id: 'not-a-uuid' }], [{ host: 'h1', vm: 'c1', id: 7 }], [{ host: 'h1', vm: '../x', id }], [{ host: 'h 1', vm: 'c1', id }], [{ host: 'h1', vm: 'c1', id, more: 1 }], [null], Array.from({ length: 65 }, (_, i) => ({ host: 'h1', vm: `v${i}`, id }))]) {
      expect(decodeNemesisRequest(encode({ ...ok, op: 'renew', owner: 'run', vms })), JSON.stringify(vms).slice(0, 80)).to.deep.include({ ok: false, id: 4 });
    }
    expect(decodeNemesisRequest(encode({ ...ok, op: 'stop' })).ok).to.equal(true);
    expect(decodeNemesisRequest(encode({ ...ok, op: 'handover', owner: 'run.home' }))).to.deep.equal({ ok: true, value: { ...ok, op: 'handover', owner: 'run.home' } });
    for (const bad of [{ ...ok, op: 'handover' }, { ...ok, op: 'handover', owner: '' }, { ...ok, op: 'handover', owner: { toString: 1 } }, { ...ok, op: 'handover', owner: 'run', teardown: true }]) {
      expect(decodeNemesisRequest(encode(bad)), JSON.stringify(bad)).to.deep.include({ ok: false, id: 4 });
    }
    const bad = decodeNemesisRequest(encode({ ...ok, op: 'inject', req: { ...req, forMs: -1 } }));
    expect(bad).to.deep.include({ ok: false, id: 4 });
    expect(decodeNemesisRequest(encode({ ...ok, op: 'renew' }))).to.deep.include({ ok: false, id: 4 });
    expect(decodeNemesisRequest(encode({ v: 2, id: 4, op: 'list' }))).to.deep.include({ ok: false, id: 4 });
    expect(decodeNemesisRequest(Buffer.from([0xc1]))).to.deep.include({ ok: false, id: 0 });
  });

  it('a root\'s fault list gives each vmbus fault\'s counters per VM@HOST, absent ones 0; a fault that counts nothing, or a counter that is no whole number, gives none', () => {
    const answer = { host: [], vms: [{ vm: 'web', faults: [
      { id: 'f1', kind: 'vmbus', stats: { packets: { seen: 120, dropped: 36 }, signals: { seen: 4, dropped: 1 } } },
      { id: 'f2', kind: 'clock', stats: {} },
      { id: 'f3', kind: 'vmbus', stats: { packets: { seen: -1 } } },
      { id: 'f4', kind: 'vmbus', stats: { packets: { seen: 1, stolen: 1 } } },
    ] }, { vm: '../x', faults: [{ id: 'f5', stats: { packets: { seen: 1 } } }] }] };
    expect(rootFaultCounters(answer, 'h1')).to.deep.equal([
      ['web@h1', 'f1', { packets: { seen: 120, dropped: 36, delayed: 0, duplicated: 0, reordered: 0, corrupted: 0 }, signals: { seen: 4, dropped: 1, delayed: 0 } }],
    ]);
    for (const bad of [null, [], { vms: 'x' }, { vms: [null] }]) expect(rootFaultCounters(bad, 'h1')).to.deep.equal([]);
  });

  it('the root\'s faultSet arguments carry a checked spec', () => {
    const a = decodeMgmtArgs('faultSet', { id: 'f1', vm: 'web', spec: { kind: 'vmbus', drop: 0.5 }, forMs: 100 });
    expect(a.ok && a.args.spec.kind).to.equal('vmbus');
    expect(decodeMgmtArgs('faultSet', { id: 'f1', spec: { kind: 'lp-shrink', lps: 1 }, forMs: 100 }).ok).to.equal(true);
    expect(decodeMgmtArgs('faultSet', { id: 'f1', vm: 'web', spec: { kind: 'lp-shrink', lps: 1 }, forMs: 100 }).ok).to.equal(false);
    expect(decodeMgmtArgs('faultSet', { id: 'f1', vm: 'web', spec: { kind: 'vmbus', drop: 0.5 }, forMs: 0 }).ok).to.equal(false);
    expect(decodeMgmtArgs('faultSet', { id: 'f1', vm: 'web', spec: { kind: 'bitflip', gpa: 4096 }, forMs: 0 }).ok).to.equal(true);
    expect(decodeMgmtArgs('faultSet', { id: 'f 1', vm: 'web', spec: { kind: 'bitflip', gpa: 4096 }, forMs: 0 }).ok).to.equal(false);
    expect(decodeVmFaultSpec({ kind: 'lp-shrink', lps: 1 }).ok).to.equal(false);
    // A VP named twice is refused, not merged (the record showed the list as given).
    expect(decodeVmFaultSpec({ kind: 'vp-stall', vps: [0, 0, 1] })).to.deep.equal({ ok: false, message: '"vps" names VP 0 more than once: name each VP once' });
    expect(decodeVmFaultSpec({ kind: 'vp-stall', vps: [1, 0] })).to.deep.equal({ ok: true, value: { kind: 'vp-stall', vps: [1, 0] } });
    expect(decodeHostFaultSpec({ kind: 'clock', offsetMs: 0, skewPpm: 0 }).ok).to.equal(false);
  });

  it('never throws on anything (seeded fuzz: random and mutated frames, specs of any shape)', () => {
    const next = seededRandom(0xfa17);
    const atoms: unknown[] = [null, undefined, 0, -1, 1.5, 2 ** 60, NaN, '', 'x', 'vm:web', 'cluster', true, [], [1, 'a'], {}, { toString: 5 }, Buffer.from([1, 2])];
    const any = (depth: number): unknown => {
      const r = next();
      if (depth > 2 || r < 0.5) return atoms[Math.floor(next() * atoms.length)];
      if (r < 0.75) return Array.from({ length: Math.floor(next() * 4) }, () => any(depth + 1));
      const o: Record<string, unknown> = {};
      const keys = ['kind', 'target', 'forMs', 'params', 'role', 'owner', 'seed', 'id', 'drop', 'delayMs', 'vps', 'gpa', 'lps', 'shape', 'op', 'v', 'req', 'fault', 'all'];
      for (let i = 0; i < 4; i++) o[keys[Math.floor(next() * keys.length)]!] = any(depth + 1);
      return o;
    };
    const valid = encode({ v: 1, id: 3, op: 'inject', req: { kind: 'vmbus', target: 'vm:web', forMs: 1000, params: { drop: 0.5 } } });
    for (let i = 0; i < 3000; i++) {
      const v = any(0);
      expect(() => checkFaultRequest(v)).to.not.throw();
      expect(() => decodeVmFaultSpec(v)).to.not.throw();
      expect(() => decodeHostFaultSpec(v)).to.not.throw();
      expect(() => decodeMgmtArgs('faultSet', v)).to.not.throw();
      expect(() => parseTarget(v)).to.not.throw();
      let frame: Uint8Array;
      try {
        frame = encode({ v: 1, id: 1, op: ['inject', 'list', 'clear', 'renew', 'handover', 'stop'][i % 6], req: v, fault: v, owner: v, all: v, ...(i % 12 === 1 ? { counters: v } : {}) });
      } catch {
        continue;
      }
      expect(() => decodeNemesisRequest(frame)).to.not.throw();
      // A root's faultList answer: read for its counters, never thrown on; what it gives is sound.
      for (const a of [v, { vms: v }, { vms: [{ vm: 'web', faults: v }] }, { vms: [{ vm: 'web', faults: [{ id: 'f1', stats: v }] }] }]) {
        let got: ReturnType<typeof rootFaultCounters> = [];
        expect(() => (got = rootFaultCounters(a, 'h1'))).to.not.throw();
        for (const [key, id, c] of got) {
          expect(key).to.equal('web@h1');
          expect(id).to.equal('f1');
          expect(Object.values(c.packets).concat(Object.values(c.signals)).every((n) => Number.isSafeInteger(n) && n >= 0)).to.equal(true);
        }
      }
      const renew = decodeNemesisRequest(encode({ v: 1, id: 1, op: 'renew', owner: 'run', vms: i % 3 === 0 ? [v, { host: 'h1', vm: v }] : v }));
      if (renew.ok && renew.value.op === 'renew') for (const x of renew.value.vms ?? []) expect(typeof x.host === 'string' && typeof x.vm === 'string' && typeof x.id === 'string' && Object.keys(x).length === 3).to.equal(true);
      const m = Buffer.from(valid);
      for (let k = 0; k < 3; k++) m[Math.floor(next() * m.length)] = Math.floor(next() * 256);
      expect(() => decodeNemesisRequest(m)).to.not.throw();
      expect(() => decodeNemesisRequest(m.subarray(0, Math.floor(next() * m.length)))).to.not.throw();
    }
  });
});
