/**
 * The hypercall page's codecs: every call that goes through a page survives encode → decode; the
 * hypervisor's decoder refuses what no caller of ours writes (wrong lengths, reserved bits, unknown
 * registers, oversize payloads, codes that do not go through a page) with a status, and never
 * throws on random bytes (a seeded fuzz); the event queue keeps order, reports a full ring and
 * survives a nonsense tail.
 */
import { expect } from 'chai';
import {
  HvCall, HvStatus, HC_INPUT_MAX, HC_REGION_BYTES, HC_EVENT_SLOTS, HC_PAGE_BYTES, HC_EVENT_BASE, HC_EVENT_ENTRY_BYTES, HcEventWord, MAX_MESSAGE_PAYLOAD,
  encodeHcInput, decodeHcCall, encodeHcOutput, decodeHcOutput, pushHcEvent, drainHcEvents, seededRandom, FIELD_CALLS, HC_MAX_GPADL_PFNS, HC_OUTPUT_MAX,
  HC_PAGE_CALLS, HC_SIGNAL_MORE_MAX, type HcCall, type HcEvent,
} from '../src/index.js';

function roundTrip(code: number, input: Record<string, unknown>): HcCall {
  const buf = new Uint8Array(HC_INPUT_MAX);
  const n = encodeHcInput(code, input, buf);
  expect(n, 'encodable').to.be.a('number');
  const d = decodeHcCall(code, n!, buf);
  if (!d.ok) throw new Error(d.error);
  return d.call;
}

describe('hypercall page codecs', () => {
  it('SignalEvent, PostMessage, SetVpRegisters and GetVpRegisters survive encode and decode', () => {
    expect(roundTrip(HvCall.SignalEvent, { connectionId: 0x12345, flagNumber: 7 }).input).to.deep.equal({ connectionId: 0x12345, flagNumber: 7 });
    // hvlab's extension: more flags of the same connection in one call.
    const more = Array.from({ length: HC_SIGNAL_MORE_MAX }, (_, i) => 0xffff - i);
    expect(roundTrip(HvCall.SignalEvent, { connectionId: 9, flagNumber: 1, moreFlags: more }).input).to.deep.equal({ connectionId: 9, flagNumber: 1, moreFlags: more });
    // An empty list is the TLFS call.
    expect(roundTrip(HvCall.SignalEvent, { connectionId: 9, flagNumber: 1, moreFlags: [] }).input).to.deep.equal({ connectionId: 9, flagNumber: 1 });
    const payload = Uint8Array.from({ length: MAX_MESSAGE_PAYLOAD }, (_, i) => i & 0xff);
    const pm = roundTrip(HvCall.PostMessage, { connectionId: 4, messageType: 0x10, payload }).input as { payload: Uint8Array; messageType: number };
    expect([...pm.payload]).to.deep.equal([...payload]);
    expect(pm.messageType).to.equal(0x10);
    expect(roundTrip(HvCall.SetVpRegisters, { partitionId: -1, vpIndex: 2, values: { Eom: 0, Rip: 2 ** 52, InterceptSuspend: 0 } }).input)
      .to.deep.equal({ partitionId: -1, vpIndex: 2, values: { Eom: 0, Rip: 2 ** 52, InterceptSuspend: 0 } });
    expect(roundTrip(HvCall.AssertVirtualInterrupt, { partitionId: 4, vpIndex: 1, vector: 0xf0 }).input).to.deep.equal({ partitionId: 4, vpIndex: 1, vector: 0xf0 });
    const get = roundTrip(HvCall.GetVpRegisters, { partitionId: 5, vpIndex: 0, names: ['Rax', 'Sint3'] });
    expect(get.input).to.deep.equal({ partitionId: 5, vpIndex: 0, names: ['Rax', 'Sint3'] });
    const out = new Uint8Array(64);
    const n = encodeHcOutput(get, { values: { Rax: 9, Sint3: 0x10031 } }, out);
    expect(decodeHcOutput(HvCall.GetVpRegisters, { names: ['Rax', 'Sint3'] }, n!, out)).to.deep.equal({ values: { Rax: 9, Sint3: 0x10031 } });
  });

  it('the control calls of a VM build survive encode and decode with their fields, optional ones left out, and MapGpadl its pfns and output', () => {
    expect(roundTrip(HvCall.CreatePort, { partitionId: 1, portId: 0x10203, type: 2, sint: 2, vpIndex: 0, flagCount: 2048 }).input)
      .to.deep.equal({ partitionId: 1, portId: 0x10203, type: 2, sint: 2, vpIndex: 0, flagCount: 2048 });
    expect(roundTrip(HvCall.CreatePort, { partitionId: 4, portId: 1, type: 1, sint: 2, vpIndex: 0 }).input).to.deep.equal({ partitionId: 4, portId: 1, type: 1, sint: 2, vpIndex: 0 });
    expect(roundTrip(HvCall.ConnectPort, { partitionId: 1, connectionId: 0x20001, portPartitionId: 4, portId: 2 }).input).to.deep.equal({ partitionId: 1, connectionId: 0x20001, portPartitionId: 4, portId: 2 });
    // A signed property value (a clock fault's offset) and the largest integer a field carries.
    expect(roundTrip(HvCall.SetPartitionProperty, { partitionId: 3, property: 0x90003, value: -5_000_000 }).input).to.deep.equal({ partitionId: 3, property: 0x90003, value: -5_000_000 });
    expect(roundTrip(HvCall.MapGpaPages, { partitionId: 3, gpaPage: 0, pageCount: 2 ** 53 - 1 }).input).to.deep.equal({ partitionId: 3, gpaPage: 0, pageCount: 2 ** 53 - 1 });
    expect(roundTrip(HvCall.InstallIntercept, { partitionId: 3, type: 1, access: 3, port: 0x70, portEnd: 0x71 }).input).to.deep.equal({ partitionId: 3, type: 1, access: 3, port: 0x70, portEnd: 0x71 });
    for (const code of [HvCall.InitializePartition, HvCall.CreateVp, HvCall.UnmapGpadl]) {
      const input = Object.fromEntries(FIELD_CALLS.get(code)!.fields.map((f, i) => [f, i + 1]));
      expect(roundTrip(code, input).input).to.deep.equal(input);
    }
    const pfns = Array.from({ length: HC_MAX_GPADL_PFNS }, (_, i) => 4000 + i);
    const map = roundTrip(HvCall.MapGpadl, { partitionId: 3, gpadl: 0xe1e10, owner: 7, pfns });
    expect(map.input).to.deep.equal({ partitionId: 3, gpadl: 0xe1e10, owner: 7, pfns });
    const out = new Uint8Array(HC_OUTPUT_MAX);
    const n = encodeHcOutput(map, { region: 'hvlab-abc-p3-mem', pages: pfns.length }, out);
    expect(decodeHcOutput(HvCall.MapGpadl, {}, n!, out)).to.deep.equal({ region: 'hvlab-abc-p3-mem', pages: pfns.length });
    // A garbled output is read as none, never as a wrong name.
    expect(decodeHcOutput(HvCall.MapGpadl, {}, n! + 1, out)).to.equal(null);
    out[8] = 0xff;
    expect(decodeHcOutput(HvCall.MapGpadl, {}, n!, out)).to.equal(null);
    for (const code of FIELD_CALLS.keys()) expect(HC_PAGE_CALLS).to.include(code);
  });

  it('a Suspend that suspends answers its number through the page (an int32, wrapped ones too); other property calls answer nothing', () => {
    const call = roundTrip(HvCall.SetPartitionProperty, { partitionId: 4, property: 0x10000, value: 1 });
    const out = new Uint8Array(HC_OUTPUT_MAX);
    for (const seq of [1, 7, 0x7fffffff, -0x80000000, -5]) {
      const n = encodeHcOutput(call, { seq }, out);
      expect(n).to.equal(4);
      expect(decodeHcOutput(HvCall.SetPartitionProperty, {}, n!, out)).to.deep.equal({ seq });
    }
    expect(encodeHcOutput(call, null, out), 'no output').to.equal(0);
    expect(decodeHcOutput(HvCall.SetPartitionProperty, {}, 0, out)).to.equal(null);
    // What the hypervisor never answers is not written, and a length that is not 4 is read as no number.
    for (const seq of [1.5, 2 ** 31, '3', null]) expect(encodeHcOutput(call, { seq }, out), String(seq)).to.equal(null);
    for (const len of [-1, 1, 3, 5, 8]) expect(decodeHcOutput(HvCall.SetPartitionProperty, {}, len, out), String(len)).to.equal(null);
  });

  it('a field call the page cannot carry is left to the socket: an unknown field, a missing one, a non-integer, too many pfns', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    expect(encodeHcInput(HvCall.CreatePort, { partitionId: 1, portId: 1, type: 1, sint: 2, vpIndex: 0, colour: 1 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.CreatePort, { partitionId: 1, portId: 1, type: 1, sint: 2 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.ConnectPort, { partitionId: 1, connectionId: 1.5, portPartitionId: 4, portId: 2 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.ConnectPort, { partitionId: 1, connectionId: 2n, portPartitionId: 4, portId: 2 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SetPartitionProperty, { partitionId: 1, property: 0x10001, value: { Rax: 1 } }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.MapGpadl, { partitionId: 1, gpadl: 1, owner: 1, pfns: Array(HC_MAX_GPADL_PFNS + 1).fill(1) }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.MapGpadl, { partitionId: 1, gpadl: 1, owner: 1, pfns: [1, 'x'] }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.MapGpadl, { partitionId: 1, gpadl: 1, owner: 1 }, buf)).to.equal(null);
  });

  it('the decoder refuses a field call with a missing field, a stray field bit, a non-integer, a dirty empty slot, or the wrong length', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    const dv = new DataView(buf.buffer);
    const n = encodeHcInput(HvCall.ConnectPort, { partitionId: 1, connectionId: 9, portPartitionId: 4, portId: 2 }, buf)!;
    const refused = (code: number, len: number): void => {
      expect(decodeHcCall(code, len, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    };
    refused(HvCall.ConnectPort, n - 8);
    refused(HvCall.ConnectPort, 4);
    dv.setUint32(0, 0b0111, true);
    refused(HvCall.ConnectPort, n);
    dv.setUint32(0, 0b11111, true);
    refused(HvCall.ConnectPort, n);
    dv.setUint32(0, 0b1111, true);
    dv.setFloat64(8, 0.25, true);
    refused(HvCall.ConnectPort, n);
    dv.setFloat64(8, 1, true);
    dv.setUint32(4, 3, true);
    refused(HvCall.ConnectPort, n + 24);
    dv.setUint32(4, 0, true);
    expect(decodeHcCall(HvCall.ConnectPort, n, buf).ok).to.equal(true);
    const m = encodeHcInput(HvCall.CreatePort, { partitionId: 1, portId: 1, type: 1, sint: 2, vpIndex: 0 }, buf)!;
    dv.setFloat64(8 + 5 * 8, 7, true);
    refused(HvCall.CreatePort, m);
    const g = encodeHcInput(HvCall.MapGpadl, { partitionId: 1, gpadl: 1, owner: 1, pfns: [5, 6] }, buf)!;
    dv.setFloat64(8 + 4 * 8, Number.POSITIVE_INFINITY, true);
    refused(HvCall.MapGpadl, g);
    dv.setUint32(4, HC_MAX_GPADL_PFNS + 1, true);
    refused(HvCall.MapGpadl, 8 + 8 * (3 + HC_MAX_GPADL_PFNS + 1));
  });

  it('SetVpState carries its state in msgpack after the partition and VP; one too long for the page is left to the socket', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    const state = { version: 1, registers: { Rip: 7, Rax: 2 ** 40 }, apic: { irr: [0, 5], isr: [] }, runState: 'Halted', nested: { list: [1.5, null, 'x'] } };
    const n = encodeHcInput(HvCall.SetVpState, { partitionId: 3, vpIndex: 1, state }, buf)!;
    expect(n).to.be.a('number');
    const d = decodeHcCall(HvCall.SetVpState, n, buf);
    expect(d.ok && d.call).to.deep.equal({ code: HvCall.SetVpState, input: { partitionId: 3, vpIndex: 1, state } });
    expect(HC_PAGE_CALLS).to.include(HvCall.SetVpState);
    // Too long: the socket carries it (a VP with a long queue of SynIC messages behind busy slots).
    expect(encodeHcInput(HvCall.SetVpState, { partitionId: 3, vpIndex: 1, state: { pad: 'x'.repeat(HC_INPUT_MAX) } }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SetVpState, { partitionId: 3, vpIndex: 1, state: null }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SetVpState, { partitionId: 0.5, vpIndex: 1, state }, buf)).to.equal(null);
    // The decoder: a length that disagrees with the input's, a state that is not msgpack, a fractional partition id.
    const dv = new DataView(buf.buffer);
    expect(decodeHcCall(HvCall.SetVpState, n - 1, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect(decodeHcCall(HvCall.SetVpState, 15, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    dv.setUint32(12, 2, true);
    buf.set([0x92, 0x01], 16); // an array of two with one element: cut short
    expect(decodeHcCall(HvCall.SetVpState, 18, buf)).to.deep.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect((decodeHcCall(HvCall.SetVpState, 18, buf) as { error: string }).error).to.match(/the state is not msgpack/);
    buf.set([0x92, 0x01, 0x02], 16);
    dv.setUint32(12, 3, true);
    expect(decodeHcCall(HvCall.SetVpState, 19, buf)).to.deep.include({ ok: true });
    dv.setFloat64(0, 0.5, true);
    expect(decodeHcCall(HvCall.SetVpState, 19, buf)).to.include({ ok: false });
  });

  it('GetVpState carries the partition, the VP and the suspension it waits for; its output is the state in msgpack, or nothing when too long', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    expect(HC_PAGE_CALLS).to.include(HvCall.GetVpState);
    let n = encodeHcInput(HvCall.GetVpState, { partitionId: 3, vpIndex: 1, afterSuspension: -7 }, buf)!;
    expect(n).to.equal(16);
    expect(decodeHcCall(HvCall.GetVpState, n, buf)).to.deep.equal({ ok: true, call: { code: HvCall.GetVpState, input: { partitionId: 3, vpIndex: 1, afterSuspension: -7 } } });
    n = encodeHcInput(HvCall.GetVpState, { partitionId: 3, vpIndex: 0 }, buf)!;
    expect(decodeHcCall(HvCall.GetVpState, n, buf)).to.deep.equal({ ok: true, call: { code: HvCall.GetVpState, input: { partitionId: 3, vpIndex: 0 } } });
    // What the hypervisor would refuse goes over the socket, which says why.
    for (const bad of [{ afterSuspension: 0 }, { afterSuspension: 1.5 }, { afterSuspension: 2 ** 31 }, { afterSuspension: '3' }, { partitionId: 0.5 }, { vpIndex: -1 }, { stowaway: 1 }]) {
      expect(encodeHcInput(HvCall.GetVpState, { partitionId: 3, vpIndex: 0, ...bad }, buf), JSON.stringify(bad)).to.equal(null);
    }
    expect(decodeHcCall(HvCall.GetVpState, 15, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    new DataView(buf.buffer).setFloat64(0, Number.NaN, true);
    expect(decodeHcCall(HvCall.GetVpState, 16, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    // Output: the map in msgpack, read back the same from a shared page; one too long does not fit.
    const state = { version: 2, registers: { Rip: 7, Rax: 2 ** 40 }, apic: { irr: [0, 5], isr: [], tpr: 0 }, runState: 'Suspended', intercept: null, synic: { queued: [{ sint: 2, payload: 'x'.repeat(40) }] } };
    const call: HcCall = { code: HvCall.GetVpState, input: { partitionId: 3, vpIndex: 0 } };
    const out = new Uint8Array(new SharedArrayBuffer(HC_OUTPUT_MAX));
    const len = encodeHcOutput(call, state, out)!;
    expect(len).to.be.within(1, HC_OUTPUT_MAX);
    expect(decodeHcOutput(HvCall.GetVpState, {}, len, out)).to.deep.equal(state);
    expect(encodeHcOutput(call, { ...state, pad: 'x'.repeat(HC_OUTPUT_MAX) }, out)).to.equal(null);
    expect(encodeHcOutput(call, null, out)).to.equal(null);
    // A length past the area, or bytes that are not a map, read as nothing.
    expect(decodeHcOutput(HvCall.GetVpState, {}, HC_OUTPUT_MAX + 1, out)).to.equal(null);
    expect(decodeHcOutput(HvCall.GetVpState, {}, 0, out)).to.equal(null);
    out.set([0x92, 0x01], 0);
    expect(decodeHcOutput(HvCall.GetVpState, {}, 2, out)).to.equal(null);
    out.set([0x92, 0x01, 0x02], 0);
    expect(decodeHcOutput(HvCall.GetVpState, {}, 3, out), 'an array is not a state').to.equal(null);
  });

  it('what cannot go through a page is left to the socket (encode says null)', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    expect(encodeHcInput(HvCall.CreatePartition, {}, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SignalEvent, { connectionId: -1, flagNumber: 0 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SignalEvent, { connectionId: 1, flagNumber: 0x10000 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SignalEvent, { connectionId: 1, flagNumber: 0, moreFlags: [0x10000] }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SignalEvent, { connectionId: 1, flagNumber: 0, moreFlags: new Array(HC_SIGNAL_MORE_MAX + 1).fill(1) }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SignalEvent, { connectionId: 1, flagNumber: 0, moreFlags: 3 }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.PostMessage, { connectionId: 1, messageType: 1, payload: new Uint8Array(MAX_MESSAGE_PAYLOAD + 1) }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SetVpRegisters, { partitionId: 1, vpIndex: 0, values: { NoSuch: 1 } }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.SetVpRegisters, { partitionId: 1, vpIndex: 0, values: { Rax: -1 } }, buf)).to.equal(null);
    expect(encodeHcInput(HvCall.GetVpRegisters, { partitionId: 1, vpIndex: 0, names: 'Rax' }, buf)).to.equal(null);
  });

  it('the decoder refuses lengths, reserved bits, registers and codes no caller writes, with a status', () => {
    const buf = new Uint8Array(HC_INPUT_MAX);
    const dv = new DataView(buf.buffer);
    expect(decodeHcCall(HvCall.CreatePartition, 0, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_CODE });
    expect(decodeHcCall(HvCall.SignalEvent, 7, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect(decodeHcCall(HvCall.SignalEvent, -1, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect(decodeHcCall(HvCall.SignalEvent, HC_INPUT_MAX + 1, buf)).to.include({ ok: false });
    // One more flag announced, none given (or two given), too many announced, a flag past 16 bits.
    dv.setUint16(6, 1, true);
    expect(decodeHcCall(HvCall.SignalEvent, 8, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect(decodeHcCall(HvCall.SignalEvent, 16, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    expect(decodeHcCall(HvCall.SignalEvent, 12, buf)).to.include({ ok: true });
    dv.setUint32(8, 0x10000, true);
    expect(decodeHcCall(HvCall.SignalEvent, 12, buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    dv.setUint16(6, HC_SIGNAL_MORE_MAX + 1, true);
    expect(decodeHcCall(HvCall.SignalEvent, 8 + 4 * (HC_SIGNAL_MORE_MAX + 1), buf)).to.include({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT });
    buf.fill(0);
    dv.setUint32(12, MAX_MESSAGE_PAYLOAD + 1, true);
    expect(decodeHcCall(HvCall.PostMessage, 16 + MAX_MESSAGE_PAYLOAD + 1, buf)).to.include({ ok: false });
    dv.setUint32(12, 4, true);
    expect(decodeHcCall(HvCall.PostMessage, 16, buf)).to.include({ ok: false });
    buf.fill(0);
    dv.setFloat64(0, 0.5, true);
    expect(decodeHcCall(HvCall.GetVpRegisters, 16, buf)).to.include({ ok: false });
    dv.setFloat64(0, 1, true);
    dv.setUint32(12, 1, true);
    dv.setUint32(16, 10_000, true);
    expect(decodeHcCall(HvCall.GetVpRegisters, 32, buf)).to.include({ ok: false });
    dv.setUint32(16, 0, true);
    dv.setFloat64(24, Number.NaN, true);
    expect(decodeHcCall(HvCall.SetVpRegisters, 32, buf)).to.include({ ok: false });
    dv.setUint32(12, 1_000_000, true);
    expect(decodeHcCall(HvCall.SetVpRegisters, 32, buf)).to.include({ ok: false });
  });

  it('random pages never make the decoder throw (seeded fuzz, 20000 cases; SetVpState states flipped inside their msgpack)', () => {
    const next = seededRandom(0x5eed);
    const buf = new Uint8Array(HC_INPUT_MAX);
    const codes = [HvCall.SignalEvent, HvCall.PostMessage, HvCall.SetVpRegisters, HvCall.GetVpRegisters, HvCall.AssertVirtualInterrupt, HvCall.SetVpState, HvCall.GetVpState, ...FIELD_CALLS.keys(), 0, 0xffff, -1];
    let ok = 0;
    const valid: Array<[number, Record<string, unknown>]> = [
      [HvCall.SignalEvent, { connectionId: 3, flagNumber: 1 }],
      [HvCall.SignalEvent, { connectionId: 3, flagNumber: 1, moreFlags: [2, 7, 300] }],
      [HvCall.PostMessage, { connectionId: 3, messageType: 1, payload: new Uint8Array(20) }],
      [HvCall.SetVpRegisters, { partitionId: -1, vpIndex: 0, values: { Eom: 0, Rip: 5 } }],
      [HvCall.GetVpRegisters, { partitionId: 2, vpIndex: 1, names: ['Rax', 'Rip', 'Sint0'] }],
      [HvCall.AssertVirtualInterrupt, { partitionId: 2, vpIndex: 0, vector: 0x40 }],
      [HvCall.SetVpState, { partitionId: 2, vpIndex: 0, state: { version: 1, apic: { irr: [1, 2, 3], tpr: 0 }, synic: [{ sint: 2, masked: false }], runState: 'Running' } }],
      [HvCall.GetVpState, { partitionId: 2, vpIndex: 1, afterSuspension: 9 }],
      [HvCall.CreatePort, { partitionId: 1, portId: 5, type: 2, sint: 2, vpIndex: 0, flagCount: 16 }],
      [HvCall.MapGpadl, { partitionId: 2, gpadl: 1, owner: 3, pfns: [10, 11, 12] }],
      [HvCall.SetPartitionProperty, { partitionId: 2, property: 0x10001, value: -3 }],
    ];
    for (let i = 0; i < 20000; i++) {
      let code: number;
      let inLen: number;
      if (next() < 0.5) {
        // A valid call with a few bytes flipped, so the fuzz reaches past the first checks.
        const [c, input] = valid[Math.floor(next() * valid.length)];
        code = c;
        inLen = encodeHcInput(c, input, buf)!;
        const flips = Math.floor(next() * 3);
        for (let f = 0; f < flips; f++) buf[Math.floor(next() * inLen)] = Math.floor(next() * 256);
      } else {
        const len = Math.floor(next() * 300);
        for (let j = 0; j < len; j++) buf[j] = Math.floor(next() * 256);
        code = codes[Math.floor(next() * codes.length)];
        inLen = next() < 0.5 ? len : Math.floor(next() * 5000) - 100;
      }
      const d = decodeHcCall(code, inLen, buf);
      expect(d.ok === true || (typeof d.error === 'string' && typeof d.status === 'number')).to.equal(true);
      if (d.ok) ok++;
    }
    expect(ok, 'some random inputs decode').to.be.greaterThan(0);
  });

  it('the event queue keeps order and kinds, counts a full ring as lost, skips bad entries, and resets a nonsense tail', () => {
    const i32 = new Int32Array(new SharedArrayBuffer(HC_REGION_BYTES));
    const ev = (k: number): HcEvent => ({ kind: 'rootEvent', portId: 100 + k, sender: 7, flag: k });
    const ic: HcEvent = { kind: 'intercept', partitionId: 3, vpIndex: 1, messageType: 0x80010000, port: 0x71, access: 1, size: 1, value: 0, rip: 2 ** 40 + 5 };
    for (let k = 0; k < 4; k++) expect(pushHcEvent(i32, ev(k))).to.equal(true);
    expect(pushHcEvent(i32, ic)).to.equal(true);
    const got: HcEvent[] = [];
    expect(drainHcEvents(i32, (e) => got.push(e))).to.deep.equal({ count: 5, bad: 0, overflowed: false });
    expect(got).to.deep.equal([ev(0), ev(1), ev(2), ev(3), ic]);
    for (let k = 0; k < HC_EVENT_SLOTS; k++) expect(pushHcEvent(i32, ev(1))).to.equal(true);
    expect(pushHcEvent(i32, ev(2))).to.equal(false);
    // A full ring refuses an intercept too (the hypervisor then sends it over the socket), without counting it lost.
    expect(pushHcEvent(i32, ic)).to.equal(false);
    expect(drainHcEvents(i32, () => {})).to.deep.equal({ count: HC_EVENT_SLOTS, bad: 0, overflowed: true });
    expect(drainHcEvents(i32, () => {})).to.deep.equal({ count: 0, bad: 0, overflowed: false });
    // Entries a producer garbled: an unknown kind, an intercept with size 3, a flag past 16 bits.
    const base = (HC_EVENT_BASE >> 2);
    const slot = (t: number): number => base + ((t >>> 0) % HC_EVENT_SLOTS) * (HC_EVENT_ENTRY_BYTES >> 2);
    const tail0 = Atomics.load(i32, (HC_PAGE_BYTES >> 2) + HcEventWord.tail);
    pushHcEvent(i32, ev(0));
    Atomics.store(i32, slot(tail0), 9);
    pushHcEvent(i32, ic);
    Atomics.store(i32, slot(tail0 + 1) + 6, 3);
    pushHcEvent(i32, ev(0));
    Atomics.store(i32, slot(tail0 + 2) + 3, 0x10000);
    pushHcEvent(i32, ev(5));
    const after: HcEvent[] = [];
    expect(drainHcEvents(i32, (e) => after.push(e))).to.deep.equal({ count: 1, bad: 3, overflowed: false });
    expect(after).to.deep.equal([ev(5)]);
    // A tail far ahead of head (a producer that wrote nonsense): reset, reported as lost.
    Atomics.store(i32, (HC_PAGE_BYTES >> 2) + HcEventWord.tail, Atomics.load(i32, (HC_PAGE_BYTES >> 2) + HcEventWord.head) + HC_EVENT_SLOTS * 3);
    expect(drainHcEvents(i32, () => expect.fail('no event from a nonsense tail'))).to.deep.equal({ count: 0, bad: 0, overflowed: true });
    expect(pushHcEvent(i32, ev(1))).to.equal(true);
    expect(drainHcEvents(i32, () => {}).count).to.equal(1);
  });

  it('a root message takes its payload into the entries after it, whole, and one that does not fit is refused', () => {
    const i32 = new Int32Array(new SharedArrayBuffer(HC_REGION_BYTES));
    const msg = (n: number, size: number): HcEvent => ({ kind: 'rootMessage', portId: 0x20000 + n, sender: 4, messageType: 1, payload: Uint8Array.from({ length: size }, (_, i) => (i * 7 + n) & 0xff) });
    const sent = [msg(0, 0), msg(1, 1), msg(2, 48), msg(3, 49), msg(4, MAX_MESSAGE_PAYLOAD)];
    for (const m of sent) expect(pushHcEvent(i32, m)).to.equal(true);
    const got: HcEvent[] = [];
    expect(drainHcEvents(i32, (e) => got.push(e))).to.deep.equal({ count: 5, bad: 0, overflowed: false });
    expect(got).to.deep.equal(sent);
    // Fill all but 3 entries: a 240-byte message (6 entries) is refused, a 96-byte one (3) fits.
    let pushed = 0;
    while (pushHcEvent(i32, { kind: 'rootEvent', portId: 1, sender: 1, flag: 0 }) && ++pushed < HC_EVENT_SLOTS - 3);
    expect(pushHcEvent(i32, msg(5, MAX_MESSAGE_PAYLOAD))).to.equal(false);
    expect(pushHcEvent(i32, msg(6, 96))).to.equal(true);
    const last: HcEvent[] = [];
    drainHcEvents(i32, (e) => last.push(e));
    expect(last.at(-1)).to.deep.equal(msg(6, 96));
  });

  it('a reader of random event pages and output areas never throws and takes only well-formed entries (seeded, 3000 pages)', () => {
    const next = seededRandom(0xe7e7);
    const i32 = new Int32Array(new SharedArrayBuffer(HC_REGION_BYTES));
    const out = new Uint8Array(256);
    let taken = 0;
    for (let round = 0; round < 3000; round++) {
      // Valid entries, then a few words of the page scribbled over (entries, or the queue's words).
      for (let k = Math.floor(next() * 3); k >= 0; k--) {
        const r = next();
        pushHcEvent(i32, r < 0.4 ? { kind: 'rootEvent', portId: 3, sender: 2, flag: 0 }
          : r < 0.7 ? { kind: 'intercept', partitionId: 2, vpIndex: 0, messageType: 1, port: 0x71, access: 1, size: 1, value: 0, rip: 7 }
            : { kind: 'rootMessage', portId: 3, sender: 2, messageType: 1, payload: new Uint8Array(Math.floor(next() * 241)) });
      }
      for (let k = Math.floor(next() * 6); k > 0; k--) Atomics.store(i32, (HC_PAGE_BYTES >> 2) + Math.floor(next() * 1024), Math.floor(next() * 2 ** 32) | 0);
      if (next() < 0.2) {
        const head = Math.floor(next() * 1000);
        Atomics.store(i32, (HC_PAGE_BYTES >> 2) + HcEventWord.head, head);
        Atomics.store(i32, (HC_PAGE_BYTES >> 2) + HcEventWord.tail, head + Math.floor(next() * (HC_EVENT_SLOTS + 5)));
      }
      drainHcEvents(i32, (e) => {
        taken++;
        if (e.kind === 'rootEvent') expect(e.flag).to.be.at.most(0xffff);
        else if (e.kind === 'intercept') {
          expect([1, 2, 4]).to.include(e.size);
          expect(Number.isSafeInteger(e.rip)).to.equal(true);
        } else expect(e.payload.length).to.be.at.most(MAX_MESSAGE_PAYLOAD);
      });
      for (let k = 0; k < out.length; k++) out[k] = Math.floor(next() * 256);
      const v = decodeHcOutput(HvCall.GetVpRegisters, { names: ['Rax', 'Rip'] }, Math.floor(next() * 40) - 4, out);
      expect(v === null || typeof v === 'object').to.equal(true);
      // MapGpadl's output: a name length that may or may not match (small lengths make matches likely).
      if (next() < 0.5) new DataView(out.buffer, out.byteOffset).setUint32(4, Math.floor(next() * 8), true);
      const s = decodeHcOutput(HvCall.SetPartitionProperty, {}, Math.floor(next() * 12) - 4, out) as { seq: number } | null;
      if (s !== null) expect((s.seq | 0) === s.seq).to.equal(true);
      // GetVpState's output: msgpack, garbled or not (a small map first, so that some decode).
      if (next() < 0.3) out.set([0x81, 0xa1, 0x61, Math.floor(next() * 128)], 0);
      const st = decodeHcOutput(HvCall.GetVpState, {}, Math.floor(next() * 40) - 4, out);
      expect(st === null || (typeof st === 'object' && !Array.isArray(st))).to.equal(true);
      const g = decodeHcOutput(HvCall.MapGpadl, {}, Math.floor(next() * 24) - 4, out) as { region: string; pages: number } | null;
      if (g !== null) {
        expect(g.region).to.be.a('string');
        expect(Number.isInteger(g.pages)).to.equal(true);
      }
    }
    expect(taken, 'some random entries are well-formed').to.be.greaterThan(0);
  });
});
