/**
 * Unit tests of the hypervisor edge decoders (packages/protocol/src/hvwire.ts) and of the saved VP
 * state decoder (hypercall.ts): every field is checked for type and range, unknown fields are
 * refused, and no input — random bytes, random msgpack values, maps whose toString is not a
 * function — makes a decoder throw.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import {
  decodeHvClientMsg, decodeHvServerMsg, checkPlainData, decodeSavedVpState, decodeIoInterceptRecord, effectiveStimerPeriod, encode,
  MIN_STIMER_PERIOD, HV_FRAME_MAX_BYTES, INPUT_MAX_DEPTH, MAX_QUEUED_MESSAGES_PER_SINT, HvMessageType,
  decodeHvCtlArgs, decodeLpShrinkInfo, HV_SET_LPS_MAX_MS, HV_MAX_LPS, ReferenceClockView, VpRegionClock, VpRegionHeader, referenceTimeAt, referenceRate,
  checkPartitionPropertyValue, PartitionProperty, HvStatus, hvStatusName,
  type SavedVpState, type SavedVpStateV1, type SavedVpStateV2,
} from '../src/index.js';

const hostile = { toString: 1, valueOf: 1 };
const ok = (v: unknown): ReturnType<typeof decodeHvClientMsg> => decodeHvClientMsg(encode(v));
function refused(v: unknown, pattern?: RegExp): string {
  const r = ok(v);
  expect(r.ok, JSON.stringify(r)).to.equal(false);
  const error = (r as { error: string }).error;
  if (pattern) expect(error).to.match(pattern);
  return error;
}

const hello = { k: 'hello', partitionId: 2, token: 'abc', role: 'partition', vm: 'vm1', pid: 1234 };
const hc = { k: 'hc', id: 7, code: 0x46, input: {} };

function validState(): SavedVpStateV2 {
  return {
    version: 2,
    registers: { Rax: 1, Rip: 0x1000 },
    apic: { irr: [0, 0, 0, 0, 0, 0, 0, 0xffffffff], isr: new Array(8).fill(0), aeoi: new Array(8).fill(0), tpr: 0x20 },
    synic: {
      scontrol: 1, simp: 0x5001, siefp: 0x6001, sint: new Array(16).fill(1 << 16),
      queued: [
        { sint: 2, type: 1, payload: [1, 2, 3], sender: 1 },
        { sint: 2, type: HvMessageType.TimerExpired, payload: new Array(240).fill(0xff), sender: 0 },
      ],
    },
    timers: Array.from({ length: 4 }, () => ({ config: 0, count: 0, nextExpiry: 0 })),
    referenceTime: 123456,
    runState: 'Suspended',
    intercept: { messageType: HvMessageType.X64IoPortIntercept, port: 0x71, access: 1, size: 1, value: 0, rip: 0x1000 },
  };
}

/** What hosts before version 2 saved (state.json files on disk still hold it). */
function versionOneState(): SavedVpStateV1 {
  const { version: _v, intercept: _i, synic: { queued: _q, ...synic }, ...rest } = validState();
  return { ...rest, synic, interceptPending: true };
}

const queuedMessage = (sint: number): Record<string, unknown> => ({ sint, type: 1, payload: [0], sender: 2 });

describe('hypervisor edge decoders', () => {
  describe('decodeHvClientMsg', () => {
    it('accepts a well-formed hello, hypercall and control message as they are', () => {
      expect(ok(hello)).to.deep.equal({ ok: true, msg: hello });
      expect(ok({ ...hello, token: undefined, ticket: 't' })).to.deep.equal({ ok: true, msg: { k: 'hello', partitionId: 2, ticket: 't', role: 'partition', vm: 'vm1', pid: 1234 } });
      expect(ok({ ...hc, fast: false, repCount: 3, repStart: 0 })).to.deep.equal({ ok: true, msg: { ...hc, fast: false, repCount: 3, repStart: 0 } });
      expect(ok({ k: 'ctl', id: 1, op: 'ticket' })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 1, op: 'ticket' } });
    });

    it('refuses a hypercall whose code is a map with toString and valueOf, naming the field and keeping the id', () => {
      const r = ok({ k: 'hc', id: 9, code: hostile, input: {} });
      expect(r).to.deep.include({ ok: false, id: 9 });
      expect((r as { error: string }).error).to.match(/code/);
    });

    it('refuses a hello whose partitionId is a map', () => {
      refused({ ...hello, partitionId: hostile }, /partitionId/);
    });

    it('refuses ids, codes and rep fields out of range or of the wrong type', () => {
      for (const id of [-1, 1.5, 2 ** 53, '1', null, hostile, Infinity, NaN]) refused({ ...hc, id }, /id/);
      for (const code of [-1, 0x10000, 1.5, '0x46', 1e999]) refused({ ...hc, code }, /code/);
      for (const repCount of [-1, 0x1000, true]) refused({ ...hc, repCount }, /repCount/);
      refused({ ...hc, repStart: 0x1000 }, /repStart/);
      refused({ ...hc, fast: 1 }, /fast/);
    });

    it('refuses an input that is not a map, or holds anything but plain data', () => {
      for (const input of [null, [], 'x', 5, new Uint8Array(2)]) refused({ ...hc, input }, /input/);
      refused({ ...hc, input: { when: new Date(0) } }, /Date/);
      // The hypervisor's codec never writes a Set or a Float64Array, but it decodes them (msgpackr
      // extensions 0x73 and 0x74), so a peer can send them.
      const rich = new Packr({ moreTypes: true, useRecords: false } as ConstructorParameters<typeof Packr>[0]);
      for (const [value, name] of [[new Set([1]), /Set/], [new Float64Array(2), /Float64Array/]] as const) {
        const r = decodeHvClientMsg(rich.pack({ ...hc, input: { value } }));
        expect(r).to.deep.include({ ok: false, id: 7 });
        expect((r as { error: string }).error).to.match(name);
      }
      let deep: unknown = 1;
      for (let i = 0; i < INPUT_MAX_DEPTH + 2; i++) deep = [deep];
      refused({ ...hc, input: { deep } }, /deeper/);
    });

    it('accepts bytes, bigints, non-finite numbers and nested maps inside an input (the hypervisor checks each call\'s fields)', () => {
      const input = { payload: new Uint8Array([1, 2]), mask: 1n << 63n, x: 1e999, state: { apic: { irr: [1, 2] } } };
      const r = ok({ ...hc, input });
      expect(r.ok).to.equal(true);
    });

    it('refuses hellos with a missing or doubled secret, long strings, or a pid that names no process', () => {
      refused({ k: 'hello', partitionId: 1, role: 'r', vm: null, pid: 5 }, /token and ticket/);
      refused({ ...hello, ticket: 't' }, /token and ticket/);
      refused({ ...hello, token: 'x'.repeat(257) }, /token/);
      refused({ ...hello, role: 'r'.repeat(33) }, /role/);
      refused({ ...hello, vm: 'v'.repeat(65) }, /vm/);
      refused({ ...hello, vm: 5 }, /vm/);
      for (const pid of [0, -1, 1.5, 2 ** 31, '1']) refused({ ...hello, pid }, /pid/);
    });

    it('refuses unknown kinds, unknown fields and unknown control ops', () => {
      refused({ k: 'boom' }, /kind/);
      refused({ k: hostile }, /kind/);
      refused({ ...hc, extra: 1 }, /unknown field "extra"/);
      refused({ ...hello, extra: 1 }, /unknown field/);
      refused({ k: 'ctl', id: 1, op: 'reboot' }, /unknown control op/);
    });

    it('takes setLps with {lps, forMs} as whole numbers in range, and other control ops with no arguments', () => {
      expect(ok({ k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000 } })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000 } } });
      expect(ok({ k: 'ctl', id: 3, op: 'setLps', args: { forMs: 0, lps: HV_MAX_LPS } }).ok).to.equal(true);
      expect(ok({ k: 'ctl', id: 3, op: 'setLps', args: { lps: 2, forMs: HV_SET_LPS_MAX_MS } }).ok).to.equal(true);
      // The fault that asks is held with the shrink (a restarted root learns it from stats).
      expect(ok({ k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000, fault: 'f12' } })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000, fault: 'f12' } } });
      expect(ok({ k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000, fault: null } })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 3, op: 'setLps', args: { lps: 1, forMs: 5000 } } });
      expect(ok({ k: 'ctl', id: 4, op: 'stats', args: {} })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 4, op: 'stats' } });
      expect(ok({ k: 'ctl', id: 4, op: 'stats', args: null })).to.deep.equal({ ok: true, msg: { k: 'ctl', id: 4, op: 'stats' } });
      const bad: Array<[unknown, RegExp]> = [
        [undefined, /needs arguments/], [null, /needs arguments/], [[1, 2], /needs arguments/], [hostile, /unknown field "toString"/],
        [{ lps: 0, forMs: 1 }, /lps/], [{ lps: HV_MAX_LPS + 1, forMs: 1 }, /lps/], [{ lps: 1.5, forMs: 1 }, /lps/], [{ lps: -1, forMs: 1 }, /lps/],
        [{ lps: '2', forMs: 1 }, /lps/], [{ lps: 2n, forMs: 1 }, /lps/], [{ lps: 1, forMs: -1 }, /forMs/], [{ lps: 1, forMs: 0.5 }, /forMs/],
        [{ lps: 1, forMs: HV_SET_LPS_MAX_MS + 1 }, /without an end/], [{ lps: 1, forMs: NaN }, /forMs/], [{ lps: 1 }, /forMs/],
        [{ lps: 1, forMs: 1, until: 5 }, /unknown field "until"/],
        [{ lps: 1, forMs: 1, fault: '' }, /fault/], [{ lps: 1, forMs: 1, fault: 'a b' }, /fault/], [{ lps: 1, forMs: 1, fault: 'x'.repeat(65) }, /fault/],
        [{ lps: 1, forMs: 1, fault: 7 }, /fault/], [{ lps: 1, forMs: 1, fault: hostile }, /fault/],
      ];
      for (const [args, pattern] of bad) {
        const error = refused({ k: 'ctl', id: 9, op: 'setLps', args }, pattern);
        expect((ok({ k: 'ctl', id: 9, op: 'setLps', args }) as { id?: number }).id, error).to.equal(9);
      }
      refused({ k: 'ctl', id: 4, op: 'stats', args: { lps: 1 } }, /takes no arguments/);
      refused({ k: 'ctl', id: 4, op: 'ticket', args: 7 }, /takes no arguments/);
    });

    it('decodeHvCtlArgs never throws and takes only what setLps can use, for random arguments', () => {
      const arb = fc.oneof(
        fc.record({
          lps: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.bigInt(), fc.constant(hostile)), forMs: fc.oneof(fc.integer(), fc.double(), fc.constant(null)),
          fault: fc.oneof(fc.string(), fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,70}$/), fc.integer(), fc.constant(null), fc.constant(hostile)),
        }, { requiredKeys: [] }),
        fc.anything({ withBigInt: true, withTypedArray: true }),
      );
      fc.assert(fc.property(fc.constantFrom('setLps', 'stats', 'ticket', 'shutdown'), arb, (op, args) => {
        const r = decodeHvCtlArgs(op as 'setLps', args);
        if (typeof r === 'string' || r === undefined) return;
        expect(op).to.equal('setLps');
        expect(Object.keys(r).filter((k) => k !== 'fault').sort()).to.deep.equal(['forMs', 'lps']);
        const { lps, forMs, fault } = r;
        expect(typeof lps === 'number' && Number.isInteger(lps) && lps >= 1 && lps <= HV_MAX_LPS).to.equal(true);
        expect(typeof forMs === 'number' && Number.isInteger(forMs) && forMs >= 0 && forMs <= HV_SET_LPS_MAX_MS).to.equal(true);
        expect(fault === undefined || (typeof fault === 'string' && /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(fault))).to.equal(true);
      }), { numRuns: 3000, seed: 13 });
    });

    it('decodeLpShrinkInfo takes a shrink of fewer LPs than the host has, with a fault id or none, and refuses the rest', () => {
      expect(decodeLpShrinkInfo(null, 2)).to.equal(null);
      expect(decodeLpShrinkInfo(undefined, 2)).to.equal(null);
      expect(decodeLpShrinkInfo({ lps: 1, remainingMs: 1234.4, fault: 'f3' }, 2)).to.deep.equal({ lps: 1, remainingMs: 1235, fault: 'f3' });
      expect(decodeLpShrinkInfo({ lps: 3, remainingMs: 0 }, 4)).to.deep.equal({ lps: 3, remainingMs: 0, fault: null });
      const bad: Array<[unknown, RegExp]> = [
        [{ lps: 2, remainingMs: 1, fault: 'f1' }, /lps/], [{ lps: 0, remainingMs: 1 }, /lps/], [{ lps: 1, remainingMs: -1 }, /remainingMs/],
        [{ lps: 1, remainingMs: Infinity }, /remainingMs/], [{ lps: 1, remainingMs: HV_SET_LPS_MAX_MS + 1 }, /remainingMs/], [{ lps: 1, remainingMs: 1, fault: 'a b' }, /fault/],
        [{ lps: 1, remainingMs: 1, extra: 1 }, /unknown field "extra"/], [hostile, /unknown field "toString"/], [[1], /map or null/], ['x', /map or null/],
      ];
      for (const [v, pattern] of bad) expect(decodeLpShrinkInfo(v, 2), JSON.stringify(v)).to.be.a('string').and.match(pattern);
    });

    it('decodeLpShrinkInfo never throws and takes only a shrink a root can hold, for random values', () => {
      const arb = fc.oneof(
        fc.record({
          lps: fc.oneof(fc.integer({ min: -2, max: 8 }), fc.double(), fc.string(), fc.constant(hostile)),
          remainingMs: fc.oneof(fc.integer(), fc.double(), fc.constant(null), fc.string()),
          fault: fc.oneof(fc.string(), fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,70}$/), fc.integer(), fc.constant(null), fc.constant(hostile)),
          other: fc.anything(),
        }, { requiredKeys: [] }),
        fc.anything({ withBigInt: true, withTypedArray: true }),
      );
      fc.assert(fc.property(fc.integer({ min: 1, max: 8 }), arb, (boot, v) => {
        const r = decodeLpShrinkInfo(v, boot);
        if (r === null || typeof r === 'string') return;
        expect(Object.keys(r).sort()).to.deep.equal(['fault', 'lps', 'remainingMs']);
        expect(Number.isInteger(r.lps) && r.lps >= 1 && r.lps < boot).to.equal(true);
        expect(Number.isInteger(r.remainingMs) && r.remainingMs >= 0 && r.remainingMs <= HV_SET_LPS_MAX_MS).to.equal(true);
        expect(r.fault === null || /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(r.fault)).to.equal(true);
      }), { numRuns: 3000, seed: 17 });
    });

    it('refuses empty, oversized, truncated and trailing-garbage frames, and msgpack that is not a map', () => {
      expect(decodeHvClientMsg(new Uint8Array(0))).to.deep.include({ ok: false });
      expect(decodeHvClientMsg(new Uint8Array(HV_FRAME_MAX_BYTES + 1))).to.deep.include({ ok: false });
      expect(decodeHvClientMsg(Uint8Array.from([0xc0])).ok).to.equal(false);
      const frame = encode(hc);
      expect(decodeHvClientMsg(frame.subarray(0, frame.length - 1)).ok).to.equal(false);
      expect(decodeHvClientMsg(Buffer.concat([frame, Buffer.from([0])])).ok).to.equal(false);
      expect(decodeHvClientMsg(new Uint8Array(100000).fill(0x91)).ok).to.equal(false); // 100k nested lists
    });

    it('never throws and never accepts a malformed message, for random bytes and random msgpack values', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
        const r = decodeHvClientMsg(b);
        expect(r.ok === true || typeof r.error === 'string').to.equal(true);
      }), { numRuns: 3000 });
      fc.assert(fc.property(fc.anything({ withBigInt: true, withTypedArray: true, withDate: true, withMap: false, withSet: false }), (v) => {
        let frame: Buffer;
        try {
          frame = encode(v);
        } catch {
          return;
        }
        const r = decodeHvClientMsg(frame);
        if (r.ok) expect(['hello', 'hc', 'ctl']).to.include(r.msg.k);
      }), { numRuns: 3000 });
    });
  });

  describe('decodeHvServerMsg', () => {
    it('accepts the answers and notifications the hypervisor sends, and refuses other shapes', () => {
      for (const m of [
        { k: 'hr', id: 1, status: 0, reps: 0, output: null }, { k: 'ctlr', id: 2, result: { x: 1 } }, { k: 'bad', reason: 'x' },
        { k: 'bad', id: 3, reason: 'x' }, { k: 'reject', reason: 'no' }, { k: 'sint', vp: 0, sint: 2 }, { k: 'suspend', suspended: true },
        { k: 'welcome', partitionId: 1, hostId: 'h', memoryMode: 'shared', memoryRegion: null, memoryBytes: 0, vpRegion: null, schedRegion: null },
      ]) expect(decodeHvServerMsg(encode(m)), JSON.stringify(m)).to.deep.equal({ ok: true, msg: m });
      for (const m of [null, 5, { k: 'hr', id: '1', status: 0, reps: 0 }, { k: 'what' }, { k: 'sint', vp: hostile, sint: 1 }]) {
        expect(decodeHvServerMsg(encode(m)).ok, JSON.stringify(m)).to.equal(false);
      }
    });

    it('takes a welcome\'s wake descriptor only as { pid, fd } beside a hypercall page', () => {
      const w = { k: 'welcome', partitionId: 1, hostId: 'h', memoryMode: 'shared', memoryRegion: null, memoryBytes: 0, hcRegion: 'r', hcBell: 'b' };
      const good = { ...w, hcWake: { pid: 4242, fd: 17 } };
      expect(decodeHvServerMsg(encode(good))).to.deep.equal({ ok: true, msg: good });
      for (const hcWake of [null, 5, 'x', [], { pid: 0, fd: 3 }, { pid: 1, fd: -1 }, { pid: 1.5, fd: 3 }, { pid: 2 ** 31, fd: 3 }, { pid: 1, fd: 2 ** 31 }, { pid: 1 }, { fd: 3 }, hostile]) {
        const r = decodeHvServerMsg(encode({ ...w, hcWake }));
        expect(r.ok, JSON.stringify(hcWake)).to.equal(false);
        if (!r.ok) expect(r.error).to.match(/hcWake/);
      }
      const noPage = { k: 'welcome', partitionId: 1, hostId: 'h', memoryMode: 'shared', memoryRegion: null, memoryBytes: 0, hcWake: { pid: 4242, fd: 17 } };
      expect(decodeHvServerMsg(encode(noPage)).ok).to.equal(false);
    });
  });

  describe('checkPlainData', () => {
    it('bounds the number of values', () => {
      expect(checkPlainData({ a: new Array(70000).fill(0) })).to.match(/more than/);
      expect(checkPlainData({ pfns: new Array(4096).fill(1) })).to.equal(null);
    });
  });

  describe('decodeSavedVpState', () => {
    it('returns a copy of a valid state, and accepts a state without timers (saved without a VP page)', () => {
      const st = validState();
      const out = decodeSavedVpState(st);
      expect(out).to.deep.equal(st);
      expect(out).to.not.equal(st);
      expect(decodeSavedVpState({ ...validState(), timers: [] })).to.be.an('object');
      expect(decodeSavedVpState({ ...validState(), intercept: null, synic: { ...validState().synic, queued: [] } })).to.be.an('object');
    });

    it('takes a version-1 state (no version field, interceptPending a boolean) and returns it as version 1', () => {
      const st = versionOneState();
      expect(decodeSavedVpState(st)).to.deep.equal(st);
      expect(decodeSavedVpState({ ...st, version: 1 })).to.be.a('string').and.match(/version/);
      expect(decodeSavedVpState({ ...st, synic: { ...st.synic, queued: [] } })).to.be.a('string').and.match(/unknown field "queued"/);
      expect(decodeSavedVpState({ ...validState(), interceptPending: false })).to.be.a('string').and.match(/unknown field "interceptPending"/);
    });

    it(`takes ${MAX_QUEUED_MESSAGES_PER_SINT} queued messages on each of the 16 SINTs, and not one more on any`, () => {
      const full = Array.from({ length: 16 * MAX_QUEUED_MESSAGES_PER_SINT }, (_, i) => queuedMessage(i % 16));
      const st = validState();
      expect(decodeSavedVpState({ ...st, synic: { ...st.synic, queued: full } })).to.be.an('object');
      expect(decodeSavedVpState({ ...st, synic: { ...st.synic, queued: [...full, queuedMessage(5)] } })).to.be.a('string').and.match(/synic\.queued/);
      const oneSint = Array.from({ length: MAX_QUEUED_MESSAGES_PER_SINT + 1 }, () => queuedMessage(7));
      expect(decodeSavedVpState({ ...st, synic: { ...st.synic, queued: oneSint } })).to.be.a('string').and.match(/more than 64 messages for SINT 7/);
    });

    it('survives a JSON round trip (the lead reads state.json with it)', () => {
      expect(decodeSavedVpState(JSON.parse(JSON.stringify(validState())))).to.deep.equal(validState());
    });

    const bad: Array<[string, (s: SavedVpStateV2 & Record<string, unknown>) => void, RegExp]> = [
      ['a non-finite reference time', (s) => (s.referenceTime = 1e999), /referenceTime/],
      ['a negative reference time', (s) => (s.referenceTime = -1), /referenceTime/],
      ['a null timer', (s) => ((s.timers as unknown[])[0] = null), /timers\[0\]/],
      ['a non-finite timer count', (s) => (s.timers[1].count = Infinity), /timers\[1\]\.count/],
      ['a negative timer expiry', (s) => (s.timers[2].nextExpiry = -5), /nextExpiry/],
      ['three timers', (s) => s.timers.pop(), /timers/],
      ['a register given as a string', (s) => ((s.registers as Record<string, unknown>).Rax = '1'), /Rax/],
      ['a negative register', (s) => (s.registers.Rbx = -1), /Rbx/],
      ['a register past 2^53', (s) => (s.registers.Rbx = 2 ** 53), /Rbx/],
      ['an unknown register', (s) => (s.registers.Cr3 = 1), /Cr3/],
      ['a register that is not saved (InterceptSuspend)', (s) => (s.registers.InterceptSuspend = 0), /InterceptSuspend/],
      ['an APIC list of 7 words', (s) => s.apic.irr.pop(), /apic\.irr/],
      ['an APIC word past 32 bits', (s) => (s.apic.isr[0] = 2 ** 32), /apic\.isr/],
      ['a TPR of 256', (s) => (s.apic.tpr = 256), /tpr/],
      ['15 SINTs', (s) => s.synic.sint.pop(), /synic\.sint/],
      ['a SINT with reserved bits', (s) => (s.synic.sint[3] = 0x40000), /synic\.sint\[3\]/],
      ['scontrol 2', (s) => (s.synic.scontrol = 2), /scontrol/],
      ['an unknown run state', (s) => (s.runState = 'Dancing'), /runState/],
      ['version 3', (s) => ((s as Record<string, unknown>).version = 3), /version/],
      ['synic.queued missing', (s) => delete (s.synic as Partial<SavedVpStateV2['synic']>).queued, /synic lacks field queued/],
      ['synic.queued as a map', (s) => ((s.synic as Record<string, unknown>).queued = {}), /synic\.queued/],
      ['a queued message of SINT 16', (s) => (s.synic.queued[0].sint = 16), /synic\.queued\[0\]\.sint/],
      ['a queued message of SINT -1', (s) => (s.synic.queued[0].sint = -1), /synic\.queued\[0\]\.sint/],
      ['a queued message of type 0', (s) => (s.synic.queued[1].type = 0), /synic\.queued\[1\]\.type/],
      ['a queued message type past 32 bits', (s) => (s.synic.queued[1].type = 2 ** 32), /synic\.queued\[1\]\.type/],
      ['a queued payload of 241 bytes', (s) => (s.synic.queued[1].payload = new Array(241).fill(0)), /payload is not a list of at most 240/],
      ['a queued payload byte of 256', (s) => (s.synic.queued[0].payload[2] = 256), /payload\[2\]/],
      ['a queued payload byte of NaN', (s) => (s.synic.queued[0].payload[0] = NaN), /payload\[0\]/],
      ['a queued payload as bytes', (s) => ((s.synic.queued[0] as unknown as Record<string, unknown>).payload = new Uint8Array(3)), /payload/],
      ['a queued payload as a string', (s) => ((s.synic.queued[0] as unknown as Record<string, unknown>).payload = 'AQID'), /payload/],
      ['a queued sender of Infinity', (s) => (s.synic.queued[0].sender = Infinity), /sender/],
      ['a queued message with an extra field', (s) => ((s.synic.queued[0] as unknown as Record<string, unknown>).flags = 1), /queued\[0\] has an unknown field "flags"/],
      ['a queued message without a sender', (s) => delete (s.synic.queued[0] as Partial<SavedVpStateV2['synic']['queued'][0]>).sender, /queued\[0\] lacks field sender/],
      ['a null queued message', (s) => ((s.synic.queued as unknown[])[0] = null), /queued\[0\]/],
      ['intercept missing', (s) => delete (s as Partial<SavedVpStateV2>).intercept, /lacks field intercept/],
      ['intercept false', (s) => ((s as Record<string, unknown>).intercept = false), /intercept/],
      ['an MSR intercept', (s) => (s.intercept!.messageType = 0x80010001), /intercept\.messageType/],
      ['an intercept of size 3', (s) => (s.intercept!.size = 3), /intercept\.size/],
      ['an intercept at port 0x10000', (s) => (s.intercept!.port = 0x10000), /intercept\.port/],
      ['a 4-byte intercept at port 0xfffe', (s) => Object.assign(s.intercept!, { port: 0xfffe, size: 4 }), /intercept\.port/],
      ['an intercept access of 3', (s) => (s.intercept!.access = 3), /intercept\.access/],
      ['a 1-byte intercept value of 0x100', (s) => Object.assign(s.intercept!, { access: 2, value: 0x100 }), /intercept\.value/],
      ['an intercept rip of -1', (s) => (s.intercept!.rip = -1), /intercept\.rip/],
      ['an intercept rip of NaN', (s) => (s.intercept!.rip = NaN), /intercept\.rip/],
      ['an intercept with an extra field', (s) => ((s.intercept as unknown as Record<string, unknown>).pending = true), /intercept has an unknown field/],
      ['an extra field', (s) => (s.extra = 1), /unknown field "extra"/],
      ['a missing field', (s) => delete (s as Partial<SavedVpState>).synic, /synic/],
      ['a map whose toString is not a function', (s) => ((s as Record<string, unknown>).apic = { toString: 1, valueOf: 1 }), /apic/],
    ];
    for (const [what, mutate, pattern] of bad) {
      it(`refuses ${what}, naming the field`, () => {
        const s = validState() as SavedVpStateV2 & Record<string, unknown>;
        mutate(s);
        const r = decodeSavedVpState(s);
        expect(r).to.be.a('string').and.match(pattern);
      });
    }

    it('never throws, whatever the value', () => {
      fc.assert(fc.property(fc.anything({ withBigInt: true, withNullPrototype: true, withBoxedValues: true }), (v) => {
        const r = decodeSavedVpState(v);
        expect(typeof r === 'string' || typeof r === 'object').to.equal(true);
      }), { numRuns: 2000 });
    });

    it('never throws on a valid state of either version with one field anywhere replaced, and what it takes decodes again after a JSON round trip', () => {
      const hostileValue = fc.oneof(
        fc.constantFrom<unknown>(null, undefined, hostile, [], {}, '', NaN, Infinity, -1, 0.5, 2 ** 53, 256, 0x10000, 2 ** 32, true, new Uint8Array(4), new Array(300).fill(1)),
        fc.anything({ withBigInt: true, maxDepth: 2 }),
      );
      /** Every path to a value inside `v`. */
      const paths = (v: unknown, at: Array<string | number> = []): Array<Array<string | number>> => {
        if (v === null || typeof v !== 'object') return [at];
        const keys: Array<string | number> = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
        return [at, ...keys.flatMap((k) => paths((v as Record<string | number, unknown>)[k], [...at, k]))];
      };
      fc.assert(fc.property(fc.boolean(), fc.nat(), hostileValue, fc.boolean(), (v1, pick, value, remove) => {
        const st: Record<string, unknown> = v1 ? structuredClone(versionOneState()) as unknown as Record<string, unknown> : structuredClone(validState()) as unknown as Record<string, unknown>;
        const all = paths(st).filter((p) => p.length > 0);
        const path = all[pick % all.length];
        let parent: Record<string | number, unknown> = st;
        for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
        const last = path[path.length - 1];
        if (remove && !Array.isArray(parent)) delete parent[last];
        else parent[last] = value;
        const r = decodeSavedVpState(st);
        expect(typeof r === 'string' || typeof r === 'object').to.equal(true);
        // What it takes goes into state.json and must be read back (as JSON has it: -0 becomes 0).
        if (typeof r !== 'string') expect(decodeSavedVpState(JSON.parse(JSON.stringify(r)))).to.deep.equal(JSON.parse(JSON.stringify(r)));
      }), { numRuns: 3000 });
    });
  });

  describe('VP page records', () => {
    it('an I/O intercept record must have size 1, 2 or 4, access read or write, and stay within the port space', () => {
      expect(decodeIoInterceptRecord(0x70, 2, 1, 0x1ff)).to.deep.equal({ port: 0x70, access: 2, size: 1, value: 0xff });
      expect(decodeIoInterceptRecord(0x71, 1, 4, 1234)).to.deep.equal({ port: 0x71, access: 1, size: 4, value: 0 });
      expect(decodeIoInterceptRecord(0x80, 2, 4, -1)).to.deep.equal({ port: 0x80, access: 2, size: 4, value: 0xffffffff });
      for (const size of [0, 3, 8, -1]) expect(decodeIoInterceptRecord(0x70, 1, size, 0)).to.be.a('string').and.match(/size/);
      for (const access of [0, 3, -1]) expect(decodeIoInterceptRecord(0x70, access, 1, 0)).to.be.a('string').and.match(/access/);
      expect(decodeIoInterceptRecord(0x10000, 1, 1, 0)).to.be.a('string');
      expect(decodeIoInterceptRecord(-1, 1, 1, 0)).to.be.a('string');
      expect(decodeIoInterceptRecord(0xffff, 1, 2, 0)).to.be.a('string').and.match(/past/);
    });

    it('a periodic timer runs no faster than every 100 µs, and a count that is not finite and positive does not run', () => {
      expect(MIN_STIMER_PERIOD).to.equal(1000);
      expect(effectiveStimerPeriod(1)).to.equal(MIN_STIMER_PERIOD);
      expect(effectiveStimerPeriod(1e-300)).to.equal(MIN_STIMER_PERIOD);
      expect(effectiveStimerPeriod(10_000)).to.equal(10_000);
      for (const c of [0, -1, NaN, Infinity, -Infinity]) expect(effectiveStimerPeriod(c)).to.equal(null);
    });
  });

  describe('fault property values (checkPartitionPropertyValue)', () => {
    it('takes negative values only for the clock faults, refuses non-integers as input and unknown properties, and never throws', () => {
      const st = (property: number, value: unknown): string => {
        const r = checkPartitionPropertyValue(property, value);
        return r.ok ? `ok ${r.value}` : hvStatusName(r.status);
      };
      expect(st(PartitionProperty.FaultClockOffsetUs, -5)).to.equal('ok -5');
      expect(st(PartitionProperty.FaultClockSkewPpm, -900_000)).to.equal('ok -900000');
      expect(st(PartitionProperty.FaultClockSkewPpm, -900_001)).to.equal('PROPERTY_VALUE_OUT_OF_RANGE');
      expect(st(PartitionProperty.FaultInterruptDelayUs, -1)).to.equal('PROPERTY_VALUE_OUT_OF_RANGE');
      expect(st(PartitionProperty.FaultStalledVps, -1)).to.equal('PROPERTY_VALUE_OUT_OF_RANGE');
      expect(st(PartitionProperty.FaultInterruptDelayUs, 0.5)).to.equal('INVALID_HYPERCALL_INPUT');
      expect(st(PartitionProperty.FaultStalledVps, 2n ** 53n)).to.equal('INVALID_HYPERCALL_INPUT');
      expect(st(PartitionProperty.FaultStalledVps, 2n ** 53n - 1n)).to.equal(`ok ${Number.MAX_SAFE_INTEGER}`);
      expect(st(PartitionProperty.PrivilegeFlags, 1)).to.equal('UNKNOWN_PROPERTY'); // a mask, checked apart
      expect(st(0x00090000, 0)).to.equal('UNKNOWN_PROPERTY');
      fc.assert(fc.property(fc.oneof(fc.integer(), fc.constantFrom(...Object.values(PartitionProperty))), fc.anything({ withBigInt: true }), (p, v) => {
        const r = checkPartitionPropertyValue(p, v);
        if (r.ok) expect(Number.isSafeInteger(r.value)).to.equal(true);
        else expect([HvStatus.UNKNOWN_PROPERTY, HvStatus.INVALID_HYPERCALL_INPUT, HvStatus.PROPERTY_VALUE_OUT_OF_RANGE]).to.include(r.status);
      }), { numRuns: 3000, seed: 13 });
    });
  });

  describe('the reference clock words of the VP region', () => {
    const region = (): SharedArrayBuffer => new SharedArrayBuffer(4096);

    it('reference time = ((now - base) + (now - since) x ppm / 10^6) / 100, unskewed before the skew was set', () => {
      const base = 1_000_000_000_000n;
      expect(referenceTimeAt(base, 0, 0n, base + 12_345_600n)).to.equal(123_456);
      expect(referenceTimeAt(base, 1_000_000, base + 1_000_000_000n, base + 2_000_000_000n)).to.equal(30_000_000); // 1 s plain + 1 s at twice the rate
      expect(referenceTimeAt(base, -500_000, base, base + 1_000_000_000n)).to.equal(5_000_000);
      expect(referenceTimeAt(base, 1_000_000, base + 5n, base)).to.equal(0); // before the skew: none
      expect(referenceTimeAt(base, 99_000_000, base, base + 100n)).to.equal(11); // a skew past its bound counts as the bound
      expect(referenceRate(10_000_000)).to.equal(11);
      expect(referenceRate(-900_000)).to.be.closeTo(0.1, 1e-12);
      expect(referenceRate(-5_000_000)).to.be.closeTo(0.1, 1e-12);
      expect(referenceRate(0.5)).to.equal(1);
    });

    it('what the writer publishes, the reader reads; the base stays where VpRegionHeader puts it', () => {
      const r = region();
      const v = new ReferenceClockView(r);
      v.publish({ baseNs: 123n, skewPpm: -7, skewSinceNs: 456n });
      expect(v.words()).to.deep.equal({ baseNs: 123n, skewPpm: -7, skewSinceNs: 456n });
      expect(new BigInt64Array(r, VpRegionHeader.refBaseNs, 1)[0]).to.equal(123n);
      expect(Atomics.load(new Int32Array(r), VpRegionClock.seq >> 2) % 2, 'the sequence count is even after a write').to.equal(0);
      expect(v.now(123n + 1000n + 1n)).to.equal(10);
    });

    it('never waits on a sequence count a guest keeps odd, and never throws whatever the words hold', () => {
      const r = region();
      const v = new ReferenceClockView(r);
      Atomics.store(new Int32Array(r), VpRegionClock.seq >> 2, 1);
      v.publish({ baseNs: 5n, skewPpm: 0, skewSinceNs: 0n });
      Atomics.store(new Int32Array(r), VpRegionClock.seq >> 2, 3); // odd, and stays so
      expect(v.words().baseNs).to.equal(5n);
      fc.assert(fc.property(fc.array(fc.integer({ min: -0x80000000, max: 0x7fffffff }), { minLength: 8, maxLength: 8 }), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), (words, now) => {
        const rr = region();
        new Int32Array(rr).set(words);
        const t = new ReferenceClockView(rr).now(now);
        expect(Number.isFinite(t)).to.equal(true);
        expect(Number.isFinite(new ReferenceClockView(rr).rate())).to.equal(true);
      }), { numRuns: 2000, seed: 13 });
    });
  });
});
