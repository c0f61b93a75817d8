/**
 * A VP's saved state is complete (GetVpState -> SetVpState on a fresh partition): the SynIC
 * messages the hypervisor queued behind a busy slot are delivered after the restore as they would
 * have been without it, within the per-SINT and per-partition caps; and a VP saved while stopped
 * in an intercept stays stopped after the restore until the session holding the partition's
 * intercept — told again, once — completes it. A version-1 state (what hosts before saved) still
 * restores.
 */
import { expect } from 'chai';
import {
  HvCall, HvStatus, HvMessageType, PortType, ROOT_PARTITION_ID, PARTITION_ID_SELF, ENLIGHTENED_CHILD_PRIVILEGES, InterceptType, InterceptAccess,
  MsgHeader, MESSAGE_SLOT_SIZE, MESSAGE_HEADER_SIZE, MSG_FLAG_PENDING, MAX_QUEUED_MESSAGES_PER_SINT, simpGpa, synicPageRegister,
  type HvServerMsg, type SavedVpStateV1, type SavedVpStateV2,
} from '@hvlab/protocol';
import { shmAvailable } from '@hvlab/shm';
import { Lab, ROOT_TOKEN, recordingScheduler, show, type Child } from './lab.js';
import type { ToScheduler } from '../src/sched-thread.js';

const PAGE = 4096;
const SINT = 2;
const PORT = 7;
const CONN = 0x2001;
const SLOT = simpGpa(0) + SINT * MESSAGE_SLOT_SIZE;

describe('a VP\'s saved state', function () {
  before(function () {
    if (!shmAvailable()) this.skip();
  });
  let lab: Lab;
  let sched: ReturnType<typeof recordingScheduler>;
  beforeEach(() => {
    sched = recordingScheduler();
    lab = new Lab({ scheduler: sched });
  });
  afterEach(() => lab.close());

  const getState = (sid: string, c: Child, vpIndex = 0): SavedVpStateV2 => lab.ok(sid, HvCall.GetVpState, { partitionId: c.id, vpIndex }) as SavedVpStateV2;
  const memory = (c: Child): DataView => lab.hv.partition(c.id)!.memoryView!;
  const synic = (c: Child, vp = 0) => lab.hv.partition(c.id)!.vps.get(vp)!.synic;

  /** A child with VP 0, its message page mapped and enabled, and a root connection to a port on SINT 2. */
  function messagingChild(connectionId: number): Child {
    const c = lab.child({ vps: 1, privileges: ENLIGHTENED_CHILD_PRIVILEGES });
    lab.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: simpGpa(0) / PAGE, pageCount: 2 });
    lab.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: PORT, type: PortType.Message, sint: SINT, vpIndex: 0 });
    lab.ok('r1', HvCall.ConnectPort, { partitionId: ROOT_PARTITION_ID, connectionId, portPartitionId: c.id, portId: PORT });
    lab.ok(c.sid, HvCall.SetVpRegisters, { partitionId: PARTITION_ID_SELF, vpIndex: 0, values: { Scontrol: 1, Simp: synicPageRegister(simpGpa(0)), Sint2: 0x30 } });
    return c;
  }
  function slot(mem: DataView): { type: number; flags: number; sender: bigint; payload: number[] } {
    const size = mem.getUint8(SLOT + MsgHeader.payloadSize);
    return {
      type: mem.getUint32(SLOT + MsgHeader.type, true),
      flags: mem.getUint8(SLOT + MsgHeader.flags),
      sender: mem.getBigUint64(SLOT + MsgHeader.sender, true),
      payload: [...new Uint8Array(mem.buffer, mem.byteOffset + SLOT + MESSAGE_HEADER_SIZE, size)],
    };
  }

  describe('queued SynIC messages', () => {
    it('a message queued behind a busy slot is saved, and after SetVpState on a fresh partition reaches the slot at the guest\'s EOM', () => {
      const a = messagingChild(CONN);
      lab.ok('r1', HvCall.PostMessage, { connectionId: CONN, messageType: 0x11, payload: Uint8Array.from([1, 2]) });
      lab.ok('r1', HvCall.PostMessage, { connectionId: CONN, messageType: 0x22, payload: Uint8Array.from([0xcc, 0xdd, 0xee]) });
      const saved = getState('r1', a);
      expect(saved.synic.queued).to.deep.equal([{ sint: SINT, type: 0x22, payload: [0xcc, 0xdd, 0xee], sender: ROOT_PARTITION_ID }]);
      // The saved state goes through JSON (state.json) on its way to the new partition.
      const state = JSON.parse(JSON.stringify(saved)) as SavedVpStateV2;

      const b = messagingChild(CONN + 1);
      // Guest memory is restored before the VPs (as the VMWP does): the slot still holds message 0x11.
      new Uint8Array(lab.hv.partition(b.id)!.memory!).set(new Uint8Array(lab.hv.partition(a.id)!.memory!));
      lab.ok('r1', HvCall.SetVpState, { partitionId: b.id, vpIndex: 0, state });
      const mem = memory(b);
      expect(slot(mem)).to.deep.include({ type: 0x11, payload: [1, 2] });
      expect(slot(mem).flags & MSG_FLAG_PENDING, 'MessagePending').to.equal(MSG_FLAG_PENDING);
      expect(synic(b).queued(SINT)).to.equal(1);
      expect(lab.hv.partition(b.id)!.messageBudget.queued).to.equal(1);
      expect(getState('r1', b).synic.queued).to.deep.equal(state.synic.queued);

      // The guest consumes 0x11 and writes EOM: the restored message takes the slot.
      mem.setUint32(SLOT + MsgHeader.type, 0, true);
      lab.ok(b.sid, HvCall.SetVpRegisters, { partitionId: PARTITION_ID_SELF, vpIndex: 0, values: { Eom: 0 } });
      expect(slot(mem)).to.deep.equal({ type: 0x22, flags: 0, sender: BigInt(ROOT_PARTITION_ID), payload: [0xcc, 0xdd, 0xee] });
      expect(synic(b).queued(SINT)).to.equal(0);
      expect(lab.hv.partition(b.id)!.messageBudget.queued).to.equal(0);
    });

    it('a restored message whose slot is free is delivered at SetVpState, and a hypervisor message (timer expiry) keeps its type', () => {
      const b = messagingChild(CONN);
      const st = getState('r1', b);
      st.synic.queued = [{ sint: SINT, type: HvMessageType.TimerExpired, payload: new Array(24).fill(7), sender: 0 }, { sint: SINT, type: 5, payload: [], sender: 9 }];
      lab.ok('r1', HvCall.SetVpState, { partitionId: b.id, vpIndex: 0, state: st });
      expect(slot(memory(b))).to.deep.equal({ type: HvMessageType.TimerExpired, flags: MSG_FLAG_PENDING, sender: 0n, payload: new Array(24).fill(7) });
      expect(getState('r1', b).synic.queued).to.deep.equal([{ sint: SINT, type: 5, payload: [], sender: 9 }]);
    });

    it('SetVpState replaces the VP\'s queue, giving the old messages back to the partition\'s budget', () => {
      const b = messagingChild(CONN);
      for (let i = 0; i < 3; i++) lab.ok('r1', HvCall.PostMessage, { connectionId: CONN, messageType: 1, payload: Uint8Array.from([i]) });
      expect(lab.hv.partition(b.id)!.messageBudget.queued).to.equal(2);
      const st = getState('r1', b);
      st.synic.queued = [];
      lab.ok('r1', HvCall.SetVpState, { partitionId: b.id, vpIndex: 0, state: st });
      expect(lab.hv.partition(b.id)!.messageBudget.queued).to.equal(0);
      expect(synic(b).queued(SINT)).to.equal(0);
    });

    it(`more than ${MAX_QUEUED_MESSAGES_PER_SINT} messages for one SINT, or past the partition's 1024, get INVALID_PARAMETER and change nothing`, () => {
      const c = lab.child({ vps: 2 });
      // SINTs stay masked (the state of a fresh VP), so restored messages stay queued.
      const st = getState('r1', c, 0);
      const msg = (sint: number): SavedVpStateV2['synic']['queued'][0] => ({ sint, type: 1, payload: [sint], sender: 3 });
      lab.status('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: { ...st, synic: { ...st.synic, queued: new Array(MAX_QUEUED_MESSAGES_PER_SINT + 1).fill(0).map(() => msg(4)) } } }, HvStatus.INVALID_PARAMETER);
      expect(synic(c, 0).queued(4)).to.equal(0);
      const full = Array.from({ length: 16 * MAX_QUEUED_MESSAGES_PER_SINT }, (_, i) => msg(i % 16));
      lab.ok('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: { ...st, synic: { ...st.synic, queued: full } } });
      expect(lab.hv.partition(c.id)!.messageBudget.queued).to.equal(1024);
      // VP 1 may not take one more: the partition's budget is spent.
      const st1 = getState('r1', c, 1);
      const r = lab.status('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 1, state: { ...st1, synic: { ...st1.synic, queued: [msg(0)] }, registers: { Rip: 0x77 } } }, HvStatus.INVALID_PARAMETER);
      expect((r.output as { reason: string }).reason).to.match(/1025 queued messages, more than its 1024/);
      expect({ ...getState('r1', c, 1), referenceTime: 0 }).to.deep.equal({ ...st1, referenceTime: 0 });
      // VP 0 may restore its full queue again: its own messages are given back first.
      lab.ok('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: { ...st, synic: { ...st.synic, queued: full } } });
      expect(lab.hv.partition(c.id)!.messageBudget.queued).to.equal(1024);
      expect(getState('r1', c, 0).synic.queued).to.deep.equal([...full].sort((x, y) => x.sint - y.sint));
    });

    it('a queued entry with a bad SINT, an oversize payload or a byte out of range gets INVALID_PARAMETER', () => {
      const c = lab.child({ vps: 1 });
      const st = getState('r1', c);
      const bad: unknown[] = [
        { sint: 16, type: 1, payload: [], sender: 0 },
        { sint: 0, type: 1, payload: new Array(241).fill(0), sender: 0 },
        { sint: 0, type: 1, payload: [256], sender: 0 },
        { sint: 0, type: 0, payload: [], sender: 0 },
        { sint: 0, type: 1, payload: new Uint8Array(2), sender: 0 },
      ];
      for (const q of bad) lab.status('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: { ...st, synic: { ...st.synic, queued: [q] } } }, HvStatus.INVALID_PARAMETER);
    });
  });

  describe('a pending intercept', () => {
    const CMOS = { type: InterceptType.IoPortRange, access: InterceptAccess.Read | InterceptAccess.Write, port: 0x70, portEnd: 0x71 };
    /** A root session standing in for a VMWP (each VMWP has its own). */
    function vmwp(sid: string): string {
      const w = lab.hv.hello(sid, { partitionId: ROOT_PARTITION_ID, token: ROOT_TOKEN, role: 'vmwp', vm: sid, pid: process.pid });
      expect(w.k, show(w)).to.equal('welcome');
      return sid;
    }
    /** A child made by session `sid`, with VP 0. */
    function childOf(sid: string): Child {
      const { partitionId: id, token } = lab.ok(sid, HvCall.CreatePartition, { memoryBytes: 2 * 1024 * 1024, name: sid }) as { partitionId: number; token: string };
      lab.ok(sid, HvCall.InitializePartition, { partitionId: id });
      lab.ok(sid, HvCall.CreateVp, { partitionId: id, vpIndex: 0 });
      return { id, token, sid };
    }
    const intercepts = (): Array<{ sid: string; msg: HvServerMsg }> => lab.notes.filter((n) => n.msg.k === 'intercept');
    const suspended = (sid: string, c: Child): number => (lab.ok(sid, HvCall.GetVpRegisters, { partitionId: c.id, vpIndex: 0, names: ['InterceptSuspend'] }) as { values: { InterceptSuspend: number } }).values.InterceptSuspend;
    const posted = (t: ToScheduler['t'], c: Child): number => sched.posted.filter((m) => m.t === t && 'id' in m && m.id === c.id).length;

    /** VMWP 'w1' runs a child whose VP 0 stops on a read of CMOS data port 0x71; returns its saved state. */
    function savedInIntercept(): SavedVpStateV2 {
      const w1 = vmwp('w1');
      const a = childOf(w1);
      lab.ok(w1, HvCall.InstallIntercept, { partitionId: a.id, ...CMOS });
      lab.ok(w1, HvCall.SetVpRegisters, { partitionId: a.id, vpIndex: 0, values: { Rip: 0x4321 } });
      lab.hv.fromScheduler({ t: 'intercept', id: a.id, index: 0, port: 0x71, access: 1, size: 1, value: 0 });
      expect(intercepts().map((n) => n.sid)).to.deep.equal([w1]);
      expect(suspended(w1, a)).to.equal(1);
      const saved = getState(w1, a);
      expect(saved.intercept).to.deep.equal({ messageType: HvMessageType.X64IoPortIntercept, port: 0x71, access: 1, size: 1, value: 0, rip: 0x4321 });
      lab.notes.length = 0;
      return JSON.parse(JSON.stringify(saved)) as SavedVpStateV2;
    }

    it('is delivered again after SetVpState to the session that installed the partition\'s intercept, and completing it resumes the VP', () => {
      const state = savedInIntercept();
      const w2 = vmwp('w2');
      const b = childOf(w2);
      lab.ok(w2, HvCall.InstallIntercept, { partitionId: b.id, ...CMOS });
      expect(intercepts()).to.deep.equal([]);
      lab.ok(w2, HvCall.SetVpState, { partitionId: b.id, vpIndex: 0, state });
      expect(intercepts()).to.deep.equal([{
        sid: w2, msg: { k: 'intercept', partitionId: b.id, vpIndex: 0, messageType: HvMessageType.X64IoPortIntercept, port: 0x71, access: 1, size: 1, value: 0, rip: 0x4321 },
      }]);
      // The VP stays stopped (the scheduler is told) until the intercept is completed.
      expect(suspended(w2, b)).to.equal(1);
      expect(posted('interceptRestored', b)).to.equal(1);
      expect(getState(w2, b).intercept).to.deep.equal(state.intercept);
      // Completed as the VMWP completes a fresh one: result, Rip past the IN, InterceptSuspend cleared.
      lab.ok(w2, HvCall.SetVpRegisters, { partitionId: b.id, vpIndex: 0, values: { Rax: 0x42, Rip: 0x4322, InterceptSuspend: 0 } });
      expect(suspended(w2, b)).to.equal(0);
      expect(posted('interceptDone', b)).to.equal(1);
      expect(getState(w2, b).intercept).to.equal(null);
      expect(intercepts()).to.have.length(1);
    });

    it('restored before InstallIntercept, it is delivered once, when an intercept covering it is installed', () => {
      const state = savedInIntercept();
      const w2 = vmwp('w2');
      const b = childOf(w2);
      lab.ok(w2, HvCall.SetVpState, { partitionId: b.id, vpIndex: 0, state });
      expect(intercepts()).to.deep.equal([]);
      expect(suspended(w2, b)).to.equal(1);
      // An intercept on another port, or for writes only, does not take it.
      lab.ok(w2, HvCall.InstallIntercept, { partitionId: b.id, type: InterceptType.IoPort, access: InterceptAccess.Read, port: 0x60 });
      lab.ok(w2, HvCall.InstallIntercept, { partitionId: b.id, type: InterceptType.IoPort, access: InterceptAccess.Write, port: 0x71 });
      expect(intercepts()).to.deep.equal([]);
      lab.ok(w2, HvCall.InstallIntercept, { partitionId: b.id, ...CMOS });
      expect(intercepts().map((n) => [n.sid, (n.msg as { port: number }).port])).to.deep.equal([[w2, 0x71]]);
      // Another covering intercept does not deliver it twice.
      lab.ok(w2, HvCall.InstallIntercept, { partitionId: b.id, type: InterceptType.IoPort, access: InterceptAccess.Read, port: 0x71 });
      expect(intercepts()).to.have.length(1);
      lab.ok(w2, HvCall.SetVpRegisters, { partitionId: b.id, vpIndex: 0, values: { InterceptSuspend: 0 } });
      expect(suspended(w2, b)).to.equal(0);
    });

    it('SetVpState with no intercept resumes a VP that was stopped in one', () => {
      const state = savedInIntercept();
      const a = lab.hv.listPartitions().find((p) => p.name === 'w1')!;
      lab.ok('w1', HvCall.SetVpState, { partitionId: a.id, vpIndex: 0, state: { ...state, intercept: null } });
      expect(suspended('w1', { id: a.id, token: '', sid: 'w1' })).to.equal(0);
      expect(sched.posted.filter((m) => m.t === 'interceptDone' && m.id === a.id)).to.have.length(1);
    });
  });

  it('a version-1 state still restores: no queued messages, and its VP is not held in an intercept', () => {
    const c = lab.child({ vps: 1 });
    const { version: _v, intercept: _i, synic: { queued: _q, ...synicV1 }, ...rest } = getState('r1', c);
    const v1: SavedVpStateV1 = { ...rest, registers: { Rip: 0x999 }, synic: synicV1, interceptPending: true };
    lab.ok('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: v1 });
    const after = getState('r1', c);
    expect(after.registers.Rip).to.equal(0x999);
    expect(after.synic.queued).to.deep.equal([]);
    expect(after.intercept).to.equal(null);
    expect(lab.notes.filter((n) => n.msg.k === 'intercept')).to.deep.equal([]);
  });
});
