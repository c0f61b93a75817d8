/**
 * The fault requests and note of the VMWP control link (vmwp.ts: faultSet, faultClear, faultList,
 * faultEnded): each is decoded once by the frame decoder, the spec by faults.ts's decodeVmFaultSpec,
 * and anything else is refused with a VmwpDecodeError naming the field (and carrying the request's
 * id); seeded fuzz shows nothing else is ever thrown and an accepted faultSet is always sound.
 */
import { expect } from 'chai';
import {
  decode as decodeMsgpack, decodeVmwpFaultList, decodeVmwpFrame, encode, seededRandom, VmwpDecodeError, FAULT_ID_RE, FAULT_MAX_MS, VM_FAULT_KINDS, type VmwpFrame,
} from '../src/index.js';

const req = (body: Record<string, unknown>, id = 9): Record<string, unknown> => ({ t: 'req', id, body });
const note = (body: Record<string, unknown>): Record<string, unknown> => ({ t: 'note', body });
const decode = (f: unknown): VmwpFrame => decodeVmwpFrame(encode(f));

function throwsVmwp(frame: unknown, re: RegExp, id: number | null, label: string): void {
  let err: unknown;
  try {
    decode(frame);
  } catch (e) {
    err = e;
  }
  expect(err, label).to.be.instanceOf(VmwpDecodeError);
  expect((err as VmwpDecodeError).message, label).to.match(re);
  expect((err as VmwpDecodeError).id, label).to.equal(id);
}

function mutate(next: () => number, src: Uint8Array): Uint8Array {
  const b = Array.from(src);
  for (let k = 0, n = 1 + Math.floor(next() * 3); k < n; k++) {
    const pos = Math.floor(next() * (b.length + 1));
    const op = Math.floor(next() * 3);
    if (op === 0 && b.length > 0) b[Math.min(pos, b.length - 1)] = next() < 0.5 ? Math.floor(next() * 256) : b[Math.min(pos, b.length - 1)]! ^ (1 << Math.floor(next() * 8));
    else if (op === 1) b.splice(pos, 0, Math.floor(next() * 256));
    else b.splice(pos, 1);
  }
  return Uint8Array.from(b);
}

const vmbus = { kind: 'vmbus', channel: 'heartbeat', drop: 0.5, delay: 0, delayMs: 0, duplicate: 0, reorder: 0, corrupt: 0, signalDrop: 0, signalDelay: 0, signalDelayMs: 0, seed: 7 };

describe('VMWP fault requests and notes', function () {
  this.timeout(20_000);

  it('decodes faultSet of every VM kind, faultClear and faultList; the spec comes back complete', () => {
    const specs = [
      vmbus,
      { ...vmbus, channel: null, delay: 1, delayMs: 250, signalDrop: 0.25 },
      { kind: 'interrupt-delay', delayMs: 20 },
      { kind: 'clock', offsetMs: -3_600_000, skewPpm: 500 },
      { kind: 'vp-stall', vps: [0, 2] },
      { kind: 'vp-stall', vps: null },
      { kind: 'bitflip', gpa: 0x100000, mask: 0x80 },
    ];
    for (const spec of specs) {
      const f = decode(req({ t: 'faultSet', id: 'f1', spec, forMs: 5000 }));
      expect(f).to.deep.equal({ t: 'req', id: 9, body: { t: 'faultSet', id: 'f1', spec, forMs: 5000 } });
    }
    // Absent rates, channel and seed are filled in; a bit flip's duration may be 0.
    const short = decode(req({ t: 'faultSet', id: 'nemesis.f-2', spec: { kind: 'vmbus', corrupt: 1 }, forMs: 1 }));
    expect(short.t === 'req' && short.body).to.deep.equal({ t: 'faultSet', id: 'nemesis.f-2', spec: { ...vmbus, channel: null, drop: 0, corrupt: 1, seed: 0 }, forMs: 1 });
    expect(decode(req({ t: 'faultSet', id: 'b', spec: { kind: 'bitflip', gpa: 4096 }, forMs: 0 }))).to.deep.include({ body: { t: 'faultSet', id: 'b', spec: { kind: 'bitflip', gpa: 4096, mask: 1 }, forMs: 0 } });
    expect(decode(req({ t: 'faultClear', id: 'f1' }))).to.deep.equal(req({ t: 'faultClear', id: 'f1' }));
    expect(decode(req({ t: 'faultClear', id: null }))).to.deep.equal(req({ t: 'faultClear', id: null }));
    expect(decode(req({ t: 'faultClear' }))).to.deep.equal(req({ t: 'faultClear', id: null }));
    expect(decode(req({ t: 'faultList' }))).to.deep.equal(req({ t: 'faultList' }));
    const ended = note({ t: 'faultEnded', id: 'f1', kind: 'vmbus', reason: 'expired', why: 'its 5000 ms were up', stats: { packets: { seen: 3 }, signals: { seen: 0 } } });
    // Counters it does not name are 0 (what the root forwards is complete).
    expect(decode(ended)).to.deep.equal(note({ ...(ended.body as object), stats: { packets: { seen: 3, dropped: 0, delayed: 0, duplicated: 0, reordered: 0, corrupted: 0 }, signals: { seen: 0, dropped: 0, delayed: 0 } } }));
    expect(decode(note({ t: 'faultEnded', id: 'f1', kind: 'clock', reason: 'cleared', why: 'cleared by request', stats: {} }))).to.deep.include({ t: 'note' });
  });

  it('throws VmwpDecodeError naming the field, with the request id, on bad fault requests and notes', () => {
    const cases: Array<[unknown, RegExp, number | null, string]> = [
      [req({ t: 'faultSet', spec: vmbus, forMs: 1 }), /field id is not a fault id/, 9, 'no id'],
      [req({ t: 'faultSet', id: '-x', spec: vmbus, forMs: 1 }), /field id is not a fault id/, 9, 'id starts with -'],
      [req({ t: 'faultSet', id: 'x'.repeat(65), spec: vmbus, forMs: 1 }), /field id/, 9, 'long id'],
      [req({ t: 'faultSet', id: 'a b', spec: vmbus, forMs: 1 }), /field id/, 9, 'id with a space'],
      [req({ t: 'faultSet', id: 'f', forMs: 1 }), /field spec: a fault spec must be a map/, 9, 'no spec'],
      [req({ t: 'faultSet', id: 'f', spec: [vmbus], forMs: 1 }), /field spec: a fault spec must be a map/, 9, 'spec list'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'lp-shrink', lps: 1 }, forMs: 1 }), /field spec: lp-shrink is a fault of a host/, 9, 'host kind'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'kill' }, forMs: 1 }), /field spec: unknown fault kind "kill"/, 9, 'process kind'],
      [req({ t: 'faultSet', id: 'f', spec: { ...vmbus, drop: 2 }, forMs: 1 }), /field spec: "drop" must be a number from 0 to 1/, 9, 'drop 2'],
      [req({ t: 'faultSet', id: 'f', spec: { ...vmbus, channel: 'Heart beat' }, forMs: 1 }), /field spec: "channel" must be a channel name/, 9, 'bad channel'],
      [req({ t: 'faultSet', id: 'f', spec: { ...vmbus, drop: 0 }, forMs: 1 }), /needs at least one probability/, 9, 'no rate'],
      [req({ t: 'faultSet', id: 'f', spec: { ...vmbus, delay: 1 }, forMs: 1 }), /needs "delayMs"/, 9, 'delay without delayMs'],
      [req({ t: 'faultSet', id: 'f', spec: { ...vmbus, bogus: 1 }, forMs: 1 }), /unknown field "bogus"/, 9, 'unknown field'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'bitflip', gpa: -1 }, forMs: 0 }), /"gpa" must be a guest physical address from 0x0 to 0xffffffff \(no VM has more than 4G of memory\)/, 9, 'negative gpa'],
      // Past every VM's memory: said with the bound a VM has (it was "from 0 to 281474976710656").
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'bitflip', gpa: 0x100000000 }, forMs: 0 }), /"gpa" must be a guest physical address from 0x0 to 0xffffffff \(no VM has more than 4G of memory\)/, 9, 'gpa of 4G'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'vp-stall', vps: [64] }, forMs: 1 }), /"vps" must hold VP indexes from 0 to 63/, 9, 'VP 64'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'vp-stall', vps: [1, 0, 1] }, forMs: 1 }), /"vps" names VP 1 more than once: name each VP once/, 9, 'VP 1 twice'],
      [req({ t: 'faultSet', id: 'f', spec: vmbus }), /field forMs: a fault's duration must be from 1 ms/, 9, 'no duration'],
      [req({ t: 'faultSet', id: 'f', spec: vmbus, forMs: 0 }), /field forMs/, 9, 'zero duration'],
      [req({ t: 'faultSet', id: 'f', spec: vmbus, forMs: 1.5 }), /field forMs/, 9, 'fractional duration'],
      [req({ t: 'faultSet', id: 'f', spec: vmbus, forMs: FAULT_MAX_MS + 1 }), /field forMs/, 9, 'over a day'],
      [req({ t: 'faultSet', id: 'f', spec: { kind: 'bitflip', gpa: 0 }, forMs: -1 }), /field forMs: a fault's duration must be from 0 ms/, 9, 'negative bitflip'],
      [req({ t: 'faultSet', id: 'f', spec: vmbus, forMs: '5s' }), /field forMs/, 9, 'duration string'],
      [req({ t: 'faultClear', id: 7 }), /field id is not a fault id/, 9, 'numeric clear id'],
      [req({ t: 'faultClear', id: '' }), /field id/, 9, 'empty clear id'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'gone', why: 'x', stats: {} }), /field reason is not expired or cleared/, null, 'bad reason'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: [1] }), /field stats is not a map/, null, 'stats list'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: Buffer.alloc(1) }), /field stats is not a map/, null, 'stats bytes'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', stats: {} }), /field why is missing/, null, 'no why'],
      [note({ t: 'faultEnded', id: '!', kind: 'vmbus', reason: 'expired', why: 'x', stats: {} }), /field id is not a fault id/, null, 'bad note id'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: { packets: { seen: -1 } } }), /field stats: "seen" must be a whole number/, null, 'negative counter'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: { packets: { seen: 1.5 } } }), /field stats: "seen"/, null, 'fractional counter'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: { packets: { stolen: 1 } } }), /field stats: the packets counters: unknown field "stolen"/, null, 'unknown counter'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: { packets: 3 } }), /field stats: "packets" must be a map of counters/, null, 'counters not a map'],
      [note({ t: 'faultEnded', id: 'f', kind: 'vmbus', reason: 'expired', why: 'x', stats: { bytes: {} } }), /field stats: fault counters: unknown field "bytes"/, null, 'unknown group'],
    ];
    for (const [f, re, id, label] of cases) throwsVmwp(f, re, id, label);
  });

  it('only ever throws VmwpDecodeError on mutated or random fault frames, and an accepted faultSet is sound (seeded fuzz)', () => {
    const next = seededRandom(0x13f4);
    const valid = [
      req({ t: 'faultSet', id: 'f1', spec: vmbus, forMs: 5000 }),
      req({ t: 'faultSet', id: 'f2', spec: { kind: 'clock', offsetMs: 1000, skewPpm: -20 }, forMs: 60_000 }),
      req({ t: 'faultSet', id: 'f3', spec: { kind: 'vp-stall', vps: [1, 3] }, forMs: 10 }),
      req({ t: 'faultSet', id: 'f4', spec: { kind: 'bitflip', gpa: 0x200000, mask: 3 }, forMs: 0 }),
      req({ t: 'faultSet', id: 'f5', spec: { kind: 'interrupt-delay', delayMs: 5 }, forMs: 100 }),
      req({ t: 'faultClear', id: 'f1' }), req({ t: 'faultClear', id: null }), req({ t: 'faultList' }),
      note({ t: 'faultEnded', id: 'f1', kind: 'vmbus', reason: 'cleared', why: 'w', stats: { packets: { seen: 1 } } }),
      note({ t: 'faultEnded', id: 'f2', kind: 'vmbus', reason: 'expired', why: 'w', stats: { packets: { seen: 9, dropped: 3, delayed: 1, duplicated: 0, reordered: 2, corrupted: 1 }, signals: { seen: 4, dropped: 1, delayed: 0 } } }),
    ].map((f) => encode(f));
    let decoded = 0;
    let sets = 0;
    for (let i = 0; i < 6000; i++) {
      const src = valid[Math.floor(next() * valid.length)]!;
      for (const b of [mutate(next, src), Uint8Array.from({ length: Math.floor(next() * 48) }, () => Math.floor(next() * 256))]) {
        let f: VmwpFrame;
        try {
          f = decodeVmwpFrame(b);
        } catch (e) {
          expect(e, String(e)).to.be.instanceOf(VmwpDecodeError);
          continue;
        }
        decoded++;
        if (f.t === 'req' && f.body.t === 'faultSet') {
          sets++;
          const { id, spec, forMs } = f.body;
          expect(FAULT_ID_RE.test(id), id).to.equal(true);
          expect(VM_FAULT_KINDS).to.include(spec.kind);
          expect(Number.isInteger(forMs) && forMs >= (spec.kind === 'bitflip' ? 0 : 1) && forMs <= FAULT_MAX_MS, String(forMs)).to.equal(true);
        }
        if (f.t === 'note' && f.body.t === 'faultEnded') {
          expect(['expired', 'cleared']).to.include(f.body.reason);
          // Counters that pass are whole numbers, each of a known name.
          const st = f.body.stats;
          if ('packets' in st) expect([...Object.values(st.packets), ...Object.values(st.signals)].every((n) => Number.isSafeInteger(n) && n >= 0)).to.equal(true);
        }
      }
    }
    // Most mutations break the msgpack or a field; enough survive to show what is accepted is sound.
    expect(decoded).to.be.greaterThan(40);
    expect(sets).to.be.greaterThan(15);
  });

  it('a worker\'s fault list (which the root forwards to the nemesis) is checked: counters, spec, kind and channels; seeded fuzz throws nothing else', () => {
    const stats = { packets: { seen: 9, dropped: 3, delayed: 1, duplicated: 0, reordered: 2, corrupted: 1 }, signals: { seen: 4, dropped: 1, delayed: 0 } };
    const good = [{ id: 'f1', kind: 'vmbus', spec: vmbus, startedAt: 1000, endsAt: 6000, channels: ['heartbeat'], stats }, { id: 'f2', kind: 'clock', spec: { kind: 'clock', offsetMs: 5, skewPpm: 0 }, startedAt: 1, endsAt: 2, channels: [], stats: {} }];
    expect(decodeVmwpFaultList(good)).to.deep.equal(good);
    const cases: Array<[unknown, RegExp]> = [
      [{}, /a fault list must be a list/], [Array(65).fill(good[1]), /at most 64/], [[null], /each listed fault must be a map/],
      [[{ ...good[0], kind: 'kill' }], /field kind is not a VM fault kind/], [[{ ...good[0], spec: { kind: 'vmbus' } }], /field spec: a vmbus fault needs at least one probability/],
      [[{ ...good[0], channels: [7] }], /field channels/], [[{ ...good[0], stats: { packets: { seen: 'x' } } }], /field stats: "seen"/], [[{ ...good[0], id: '../f' }], /field id/],
      [[{ ...good[0], startedAt: -1 }], /startedAt/],
    ];
    for (const [v, re] of cases) expect(() => decodeVmwpFaultList(v), JSON.stringify(v).slice(0, 60)).to.throw(VmwpDecodeError, re);
    const next = seededRandom(0x5a11);
    const src = encode(good);
    let passed = 0;
    for (let i = 0; i < 3000; i++) {
      let v: unknown;
      try {
        v = decodeMsgpack(mutate(next, src));
      } catch {
        continue;
      }
      try {
        for (const f of decodeVmwpFaultList(v)) expect(FAULT_ID_RE.test(f.id) && VM_FAULT_KINDS.includes(f.kind)).to.equal(true);
        passed++;
      } catch (e) {
        expect(e, String(e)).to.be.instanceOf(VmwpDecodeError);
      }
    }
    expect(passed).to.be.greaterThan(0);
  });
});
