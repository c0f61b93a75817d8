/**
 * Property tests of the in-process Hypervisor against random and mutated hypercalls (more than
 * 10,000 in all), made as an unauthenticated session, as a child partition and as the root: every
 * call returns a known HV_STATUS and nothing throws, and afterwards valid calls still work.
 * Mutations start from a valid input of each call and remove a field, put a hostile value in one
 * (maps whose toString/valueOf are not functions, huge and non-finite numbers, bigints, long
 * strings, deep nesting, bytes), add a field, or replace the whole input.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  HvCall, HvStatus, PortType, ENLIGHTENED_CHILD_PRIVILEGES, ROOT_PARTITION_ID, PartitionProperty, hvStatusName, hvCallName, stimerConfig,
  type SavedVpStateV1, type SavedVpStateV2,
} from '@hvlab/protocol';
import { shmAvailable } from '@hvlab/shm';
import { Lab, MiB, recordingScheduler, show, type Child } from './lab.js';

const KNOWN_STATUSES = new Set<number>(Object.values(HvStatus));
const CALLS = Object.values(HvCall) as number[];

function deep(n: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < n; i++) v = i % 2 ? [v] : { a: v };
  return v;
}

/** Values chosen to break careless code. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom<unknown>(
    null, undefined, { toString: 1, valueOf: 1 }, { toString: 'x' }, { valueOf: null }, Object.create(null), [], [1, 2], {}, '', 'x'.repeat(5000),
    NaN, Infinity, -Infinity, -0, -1, 0, 1, 1.5, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 64, 1e308, -(2 ** 53), 0xffff, 0x10000, 0xffffffff,
    true, false, new Uint8Array(300), new Uint8Array(0), 1n << 70n, -1n, 2n ** 64n, deep(30), deep(200), [null], [[], {}], new Array(5000).fill(1),
  ),
  fc.integer(), fc.double(), fc.string({ maxLength: 40 }), fc.bigInt(), fc.array(fc.integer(), { maxLength: 8 }),
);

const ALL_REGISTERS = ['Rax', 'Rip', 'Scontrol', 'Simp', 'Siefp', 'Eom', 'Sint2', 'Stimer0Config', 'Stimer0Count', 'Tpr', 'InterceptSuspend', 'ReferenceTime', 'Bogus'];

/**
 * Valid inputs for each call, given a target partition `p` (with VP 0) of the calling session and
 * a `victim` for the calls that end a partition (so the target lives through the run).
 */
function validInputs(p: number, victim: number, conn: number): Array<{ code: number; input: Record<string, unknown> }> {
  const state: SavedVpStateV2 = {
    version: 2,
    registers: { Rax: 1, Rip: 0x1000 },
    apic: { irr: new Array(8).fill(0), isr: new Array(8).fill(0), aeoi: new Array(8).fill(0), tpr: 0 },
    synic: {
      scontrol: 1, simp: 0, siefp: 0, sint: new Array(16).fill(1 << 16),
      queued: [{ sint: 2, type: 1, payload: [1, 2, 3], sender: ROOT_PARTITION_ID }, { sint: 3, type: 0x80000010, payload: new Array(24).fill(0), sender: 0 }],
    },
    timers: Array.from({ length: 4 }, () => ({ config: stimerConfig({ enable: true, periodic: true, sint: 2 }), count: 10_000, nextExpiry: 0 })),
    referenceTime: 1000, runState: 'Suspended',
    intercept: { messageType: 0x80010000, port: 0x71, access: 1, size: 1, value: 0, rip: 0x1000 },
  };
  const { version: _v, intercept: _i, synic: { queued: _q, ...synicV1 }, ...rest } = state;
  const stateV1: SavedVpStateV1 = { ...rest, synic: synicV1, runState: 'Ready', interceptPending: false };
  return [
    { code: HvCall.CreatePartition, input: { memoryBytes: 2 * MiB, name: 'f' } },
    { code: HvCall.InitializePartition, input: { partitionId: victim } },
    { code: HvCall.FinalizePartition, input: { partitionId: victim } },
    { code: HvCall.DeletePartition, input: { partitionId: victim } },
    { code: HvCall.GetPartitionProperty, input: { partitionId: p, property: PartitionProperty.CpuWeight } },
    { code: HvCall.SetPartitionProperty, input: { partitionId: p, property: PartitionProperty.CpuWeight, value: 200 } },
    { code: HvCall.SetPartitionProperty, input: { partitionId: p, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES } },
    { code: HvCall.SetPartitionProperty, input: { partitionId: p, property: PartitionProperty.Suspend, value: 1 } },
    { code: HvCall.GetPartitionId, input: {} },
    { code: HvCall.MapGpaPages, input: { partitionId: p, gpaPage: 0, pageCount: 8, flags: 7 } },
    { code: HvCall.UnmapGpaPages, input: { partitionId: p, gpaPage: 4, pageCount: 2 } },
    { code: HvCall.InstallIntercept, input: { partitionId: p, type: 0x11, access: 3, port: 0x70, portEnd: 0x71 } },
    { code: HvCall.CreateVp, input: { partitionId: p, vpIndex: 1 } },
    { code: HvCall.DeleteVp, input: { partitionId: p, vpIndex: 1 } },
    { code: HvCall.GetVpRegisters, input: { partitionId: -1, vpIndex: 0, names: ALL_REGISTERS.slice(0, 11) } },
    { code: HvCall.GetVpRegisters, input: { partitionId: p, vpIndex: 0, names: ['Rax', 'Rip'] } },
    { code: HvCall.SetVpRegisters, input: { partitionId: p, vpIndex: 0, values: { Rax: 5, Sint2: 0x10030, Stimer0Config: 0x20023, Stimer0Count: 10000, Tpr: 0x10 } } },
    { code: HvCall.SetVpRegisters, input: { partitionId: -1, vpIndex: 0, values: { Scontrol: 1, Eom: 0 } } },
    { code: HvCall.PostMessage, input: { connectionId: conn, messageType: 1, payload: new Uint8Array(16) } },
    { code: HvCall.SignalEvent, input: { connectionId: conn + 1, flagNumber: 3 } },
    { code: HvCall.AssertVirtualInterrupt, input: { partitionId: p, vpIndex: 0, vector: 0x30 } },
    { code: HvCall.CreatePort, input: { partitionId: p, portId: 99, type: PortType.Event, sint: 2, vpIndex: 0, flagCount: 8 } },
    { code: HvCall.ConnectPort, input: { partitionId: p, connectionId: 77, portPartitionId: p, portId: 99 } },
    { code: HvCall.MapGpadl, input: { partitionId: p, gpadl: 0xe1e10, owner: 1, pfns: [0, 1, 2, 3] } },
    { code: HvCall.UnmapGpadl, input: { partitionId: p, gpadl: 0xe1e10 } },
    { code: HvCall.GetVpState, input: { partitionId: p, vpIndex: 0 } },
    { code: HvCall.GetVpState, input: { partitionId: p, vpIndex: 0, afterSuspension: 1 } },
    { code: HvCall.SetVpState, input: { partitionId: p, vpIndex: 0, state } },
    { code: HvCall.SetVpState, input: { partitionId: p, vpIndex: 0, state: stateV1 } },
  ];
}

type Call = { code: unknown; input: unknown; control: { repCount?: unknown; repStart?: unknown } };

/** Random and mutated hypercalls around the valid inputs. */
function calls(p: number, victim: number, conn: number): fc.Arbitrary<Call> {
  const bases = validInputs(p, victim, conn);
  const base = fc.constantFrom(...bases);
  const control = fc.oneof(fc.constant({}), fc.record({ repCount: fc.oneof(fc.integer({ min: 0, max: 0xfff }), hostileValue) }, { requiredKeys: [] }));
  const mutated: fc.Arbitrary<Call> = fc.tuple(base, fc.nat(), hostileValue, fc.nat(3), control).map(([b, pick, value, how, ctl]) => {
    const input: Record<string, unknown> = structuredClone(b.input) as Record<string, unknown>;
    const keys = Object.keys(input);
    const key = keys.length ? keys[pick % keys.length] : 'partitionId';
    if (how === 0) delete input[key];
    else if (how === 1) input[key] = value;
    else if (how === 2) input[`extra${pick % 3}`] = value;
    else {
      // Reach one level down (state.apic, values.Rax, pfns[0] ...).
      const inner = input[key];
      if (inner && typeof inner === 'object' && !(inner instanceof Uint8Array)) {
        const ik = Object.keys(inner);
        if (ik.length) (inner as Record<string, unknown>)[ik[pick % ik.length]] = value;
      } else input[key] = value;
    }
    return { code: b.code, input, control: ctl };
  });
  const random: fc.Arbitrary<Call> = fc.record({
    code: fc.oneof(fc.constantFrom(...CALLS), fc.integer({ min: 0, max: 0xffff }), hostileValue),
    input: fc.oneof(fc.dictionary(fc.constantFrom('partitionId', 'vpIndex', 'names', 'values', 'connectionId', 'payload', 'state', 'pfns', 'x'), hostileValue), hostileValue),
    control,
  });
  const valid: fc.Arbitrary<Call> = base.map((b) => ({ code: b.code, input: structuredClone(b.input), control: {} }));
  return fc.oneof({ weight: 5, arbitrary: mutated }, { weight: 3, arbitrary: random }, { weight: 1, arbitrary: valid });
}

/** Runs `n` calls as session `sid`: each answers a known status and nothing throws. */
function fuzz(lab: Lab, sid: string, arb: fc.Arbitrary<Call>, n: number, seed: number): Map<string, number> {
  const seen = new Map<string, number>();
  fc.assert(fc.property(arb, (c) => {
    let r: { status: number; reps: number } | undefined;
    expect(() => (r = lab.hv.hypercall(sid, c.code as number, c.input as Record<string, unknown>, c.control as { repCount?: number })), `${show(c).slice(0, 300)}`).to.not.throw();
    expect(KNOWN_STATUSES.has(r!.status), `status ${r!.status} for ${show(c).slice(0, 300)}`).to.equal(true);
    expect(Number.isSafeInteger(r!.reps)).to.equal(true);
    const k = hvStatusName(r!.status);
    // OPERATION_DENIED is what a handler that threw answers: a defect, never an expected outcome.
    expect(k, `a handler threw for ${show(c).slice(0, 300)}`).to.not.equal('OPERATION_DENIED');
    seen.set(k, (seen.get(k) ?? 0) + 1);
  }), { numRuns: n, seed });
  return seen;
}

/** A fresh child with a VP, a root port it can post to and signal, and a message port of its own. */
function target(lab: Lab, privileges = ENLIGHTENED_CHILD_PRIVILEGES): Child & { conn: number } {
  const c = lab.child({ privileges, vps: 1 });
  lab.ok('r1', HvCall.CreatePort, { partitionId: ROOT_PARTITION_ID, portId: 1000 + c.id, type: PortType.Message, sint: 2, vpIndex: 0 });
  lab.ok('r1', HvCall.CreatePort, { partitionId: ROOT_PARTITION_ID, portId: 2000 + c.id, type: PortType.Event, sint: 2, vpIndex: 0, flagCount: 16 });
  lab.ok('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: 10, portPartitionId: ROOT_PARTITION_ID, portId: 1000 + c.id });
  lab.ok('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: 11, portPartitionId: ROOT_PARTITION_ID, portId: 2000 + c.id });
  return { ...c, conn: 10 };
}

/** A full valid lifecycle as the root, and a child's own register access: both still work. */
function stillWorks(lab: Lab): void {
  const { partitionId: id, token } = lab.ok('r1', HvCall.CreatePartition, { memoryBytes: 2 * MiB, name: 'after' }) as { partitionId: number; token: string };
  lab.ok('r1', HvCall.InitializePartition, { partitionId: id });
  lab.ok('r1', HvCall.CreateVp, { partitionId: id, vpIndex: 0 });
  lab.ok('r1', HvCall.SetPartitionProperty, { partitionId: id, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES });
  lab.ok('r1', HvCall.SetVpRegisters, { partitionId: id, vpIndex: 0, values: { Rax: 42 } });
  expect(lab.hv.hello('after', { partitionId: id, token, role: 'partition', vm: 'after', pid: process.pid }).k).to.equal('welcome');
  expect(lab.ok('after', HvCall.GetVpRegisters, { partitionId: -1, vpIndex: 0, names: ['Rax'] })).to.deep.equal({ values: { Rax: 42 } });
  lab.ok('r1', HvCall.FinalizePartition, { partitionId: id });
  lab.ok('r1', HvCall.DeletePartition, { partitionId: id });
}

describe('hypervisor fuzz (in-process, fast-check)', function () {
  this.timeout(60000);
  let lab: Lab;
  beforeEach(() => {
    lab = shmAvailable() ? new Lab({ scheduler: recordingScheduler() }) : new Lab({ memoryMode: 'private' });
  });
  afterEach(() => lab.close());

  it('3,500 random and mutated hypercalls from an unauthenticated session each get ACCESS_DENIED', () => {
    const t = target(lab);
    const seen = fuzz(lab, 'stranger', calls(t.id, t.id, t.conn), 3500, 1);
    expect([...seen.keys()].every((k) => k === 'ACCESS_DENIED'), show([...seen])).to.equal(true);
    stillWorks(lab);
  });

  it('3,500 random and mutated hypercalls from a child each get a status, and its own valid calls still work', () => {
    const t = target(lab);
    const seen = fuzz(lab, t.sid, calls(-1, -1, t.conn), 3500, 2);
    expect(seen.get('ACCESS_DENIED'), show([...seen])).to.be.above(0);
    expect(seen.get('SUCCESS'), show([...seen])).to.be.above(0);
    if (lab.hv.session(t.sid)) lab.ok(t.sid, HvCall.GetVpRegisters, { partitionId: -1, vpIndex: 0, names: ['Rax'] });
    stillWorks(lab);
  });

  it('3,500 random and mutated hypercalls from the root each get a status, and valid calls still work', () => {
    const t = target(lab);
    const victim = lab.ok('r1', HvCall.CreatePartition, { memoryBytes: 2 * MiB }) as { partitionId: number };
    const seen = fuzz(lab, 'r1', calls(t.id, victim.partitionId, t.conn), 3500, 3);
    expect(seen.get('SUCCESS'), show([...seen])).to.be.above(0);
    expect(seen.get('INVALID_HYPERCALL_INPUT'), show([...seen])).to.be.above(0);
    stillWorks(lab);
  });

  it('2,000 saved VP states mutated at any depth: SetVpState answers SUCCESS, INVALID_PARAMETER or INVALID_HYPERCALL_INPUT, and a refused one changes nothing', () => {
    const t = target(lab);
    lab.ok('r1', HvCall.MapGpaPages, { partitionId: t.id, gpaPage: 0, pageCount: 16 });
    lab.ok('r1', HvCall.InstallIntercept, { partitionId: t.id, type: 0x11, access: 3, port: 0x70, portEnd: 0x71 });
    const base = validInputs(t.id, t.id, t.conn).find((b) => b.code === HvCall.SetVpState)!.input.state as SavedVpStateV2;
    base.synic.simp = 0x1001;
    base.synic.sint[2] = 0x30;
    const paths = (v: unknown, at: Array<string | number> = []): Array<Array<string | number>> => {
      if (v === null || typeof v !== 'object') return [at];
      const keys: Array<string | number> = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
      return [at, ...keys.flatMap((k) => paths((v as Record<string | number, unknown>)[k], [...at, k]))];
    };
    const all = paths(base).filter((p) => p.length > 0);
    const allowed = ['SUCCESS', 'INVALID_PARAMETER', 'INVALID_HYPERCALL_INPUT'];
    const seen = new Map<string, number>();
    fc.assert(fc.property(fc.nat(), hostileValue, fc.boolean(), (pick, value, remove) => {
      const state = structuredClone(base) as unknown as Record<string | number, unknown>;
      const path = all[pick % all.length];
      let parent = state;
      for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
      const last = path[path.length - 1];
      if (remove && !Array.isArray(parent)) delete parent[last];
      else parent[last] = value;
      const before = lab.ok('r1', HvCall.GetVpState, { partitionId: t.id, vpIndex: 0 }) as SavedVpStateV2;
      let r: { status: number } | undefined;
      expect(() => (r = lab.hv.hypercall('r1', HvCall.SetVpState, { partitionId: t.id, vpIndex: 0, state }))).to.not.throw();
      const k = hvStatusName(r!.status);
      expect(allowed, `${show(path)} = ${String(show(value)).slice(0, 100)}`).to.include(k);
      seen.set(k, (seen.get(k) ?? 0) + 1);
      if (k !== 'SUCCESS') {
        const after = lab.ok('r1', HvCall.GetVpState, { partitionId: t.id, vpIndex: 0 }) as SavedVpStateV2;
        expect({ ...after, referenceTime: 0 }).to.deep.equal({ ...before, referenceTime: 0 });
      }
    }), { numRuns: 2000, seed: 5 });
    expect(seen.get('SUCCESS'), show([...seen])).to.be.above(0);
    expect(seen.get('INVALID_PARAMETER'), show([...seen])).to.be.above(0);
    expect(lab.hv.partition(t.id)!.messageBudget.queued).to.be.at.most(1024);
    stillWorks(lab);
  });

  it('random hellos and control requests never throw', () => {
    const helloArb = fc.record({
      partitionId: fc.oneof(fc.constantFrom(1, 2, -1), hostileValue), token: fc.oneof(fc.string(), hostileValue), ticket: fc.oneof(fc.constant(undefined), fc.string(), hostileValue),
      role: fc.oneof(fc.string(), hostileValue), vm: fc.oneof(fc.string(), hostileValue), pid: fc.oneof(fc.constantFrom(process.pid, 0, -1), hostileValue),
    }, { requiredKeys: [] });
    let i = 0;
    const argsArb = fc.oneof(fc.constant(undefined), hostileValue, fc.record({ lps: fc.oneof(fc.integer({ min: -2, max: 4 }), hostileValue), forMs: fc.oneof(fc.integer({ min: -1, max: 50 }), hostileValue) }, { requiredKeys: [] }));
    fc.assert(fc.property(helloArb, fc.oneof(fc.constantFrom('stats', 'ticket', 'shutdown', 'setLps'), hostileValue), argsArb, (m, op, args) => {
      const r = lab.hv.hello(`h${i++}`, m as never);
      expect(['welcome', 'reject']).to.include(r.k);
      expect(() => lab.hv.control('r1', op as never, args)).to.not.throw();
      expect(() => lab.hv.control(`h${i - 1}`, op as never, args)).to.not.throw();
    }), { numRuns: 1000, seed: 4 });
    expect(hvCallName(HvCall.GetPartitionId)).to.equal('GetPartitionId');
    stillWorks(lab);
  });
});
