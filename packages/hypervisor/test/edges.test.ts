/**
 * The hypervisor's edges cannot crash it, and its sessions are authenticated tightly (issue 9).
 * Each block pins one defect that the code before this issue had:
 *   - one unauthenticated frame ended the serve loop (and with it the host);
 *   - SetVpState with non-finite or mistyped values threw out of the hypercall handler;
 *   - a child calling a parent-only call with missing fields learnt INVALID_HYPERCALL_INPUT;
 *   - the root token could not be rotated, tickets did not exist, sessions never expired;
 *   - guest-created state was not capped per partition.
 * The scheduler thread's side (timer floor, intercept records) is in sched-page.test.ts.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  HvCall, HvStatus, PartitionProperty, PortType, ROOT_PARTITION_ID, ENLIGHTENED_CHILD_PRIVILEGES, VpPage,
  encode, hvStatusName, vpPageOffset, type HvServerMsg, type SavedVpState,
} from '@hvlab/protocol';
import { HvClient } from '@hvlab/runtime';
import { shmAvailable } from '@hvlab/shm';
import { Lab, MiB, ROOT_TOKEN, ServerLab, recordingScheduler, show } from './lab.js';

const hostile = { toString: 1, valueOf: 1 };

function hello(extra: Record<string, unknown> = {}): Buffer {
  return encode({ k: 'hello', partitionId: ROOT_PARTITION_ID, token: ROOT_TOKEN, role: 'test', vm: null, pid: process.pid, ...extra });
}

/** A process that sleeps until killed; its pid names a session's owner. */
function sleeper(): ChildProcess {
  return spawn(process.execPath, ['-e', 'setTimeout(() => {}, 120000)'], { stdio: 'ignore' });
}

async function exited(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  await new Promise((r) => c.once('exit', r));
}

/** Polls `f` until it is true, for at most `ms` (a liveness bound, not a speed claim). */
async function eventually(f: () => Promise<boolean> | boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not happen within ${ms} ms`);
}

describe('hypervisor edges', function () {
  this.timeout(30000);

  describe('the hypervisor socket', () => {
    let lab: ServerLab;
    beforeEach(async () => {
      lab = await new ServerLab().start();
    });
    afterEach(async () => {
      await lab.close();
    });

    it('answers a hypercall whose code is a map with toString and valueOf with bad, and keeps serving', async () => {
      const p = lab.peer();
      await p.send(encode({ k: 'hc', id: 5, code: hostile }));
      const a = await p.next();
      expect(a).to.deep.include({ k: 'bad', id: 5 });
      await p.send(hello());
      expect((await p.next()).k).to.equal('welcome');
      await p.send(encode({ k: 'hc', id: 6, code: HvCall.GetPartitionId, input: {} }));
      expect(await p.next()).to.deep.equal({ k: 'hr', id: 6, status: HvStatus.SUCCESS, reps: 0, output: { partitionId: ROOT_PARTITION_ID } });
      expect(lab.serveEnded).to.equal(null);
    });

    it('answers a hello whose partitionId is a map with bad, and keeps serving', async () => {
      const p = lab.peer();
      await p.send(encode({ k: 'hello', partitionId: { a: 1, toString: 1 }, token: 'x', role: 'r', vm: null, pid: 1 }));
      expect((await p.next()).k).to.equal('bad');
      await p.send(hello());
      expect((await p.next()).k).to.equal('welcome');
      expect(lab.serveEnded).to.equal(null);
    });

    it('answers every malformed frame exactly once, then serves a valid session', async () => {
      const p = lab.peer();
      const frames: Array<Buffer | Buffer[]> = [
        Buffer.from([0xc0]), Buffer.alloc(0), Buffer.from('not msgpack at all'), Buffer.alloc(50000, 0x91),
        encode([1, 2, 3]), encode({ k: 'hc', id: 1, code: 0x46, input: null }), encode({ k: 'ctl', id: 2, op: { toString: 1 } }),
        encode({ k: 'hc', id: 3, code: 0x46, input: { x: 1 }, extra: true }), [encode({ k: 'ctl', id: 4, op: 'stats' }), Buffer.from([1])],
        encode({ k: 'hello', partitionId: 1, token: 'wrong', role: 'r', vm: null, pid: process.pid }),
        encode({ k: 'hc', id: 9, code: HvCall.DeletePartition, input: {} }), encode({ k: 'ctl', id: 10, op: 'stats' }),
      ];
      for (const f of frames) await p.send(f);
      const kinds: string[] = [];
      for (let i = 0; i < frames.length; i++) kinds.push((await p.next()).k);
      expect(kinds).to.deep.equal(['bad', 'bad', 'bad', 'bad', 'bad', 'bad', 'bad', 'bad', 'bad', 'reject', 'hr', 'ctlr']);
      await p.send(hello());
      expect((await p.next()).k).to.equal('welcome');
      expect(lab.serveEnded).to.equal(null);
    });

    it('refuses a second hello on a session that is open, and the session stays', async () => {
      const p = lab.peer();
      await p.send(hello());
      expect((await p.next()).k).to.equal('welcome');
      await p.send(hello({ pid: 1 }));
      expect(await p.next()).to.deep.include({ k: 'reject' });
      await p.send(encode({ k: 'hc', id: 1, code: HvCall.GetPartitionId, input: {} }));
      expect(await p.next()).to.deep.include({ k: 'hr', status: HvStatus.SUCCESS });
    });

    it('drops a session once the process its hello named has exited', async () => {
      const c = sleeper();
      try {
        const p = lab.peer();
        await p.send(hello({ pid: c.pid }));
        expect((await p.next()).k).to.equal('welcome');
        c.kill('SIGKILL');
        await exited(c);
        let id = 0;
        await eventually(async () => {
          await p.send(encode({ k: 'hc', id: ++id, code: HvCall.GetPartitionId, input: {} }));
          const a = await p.next();
          return a.k === 'hr' && a.status === HvStatus.ACCESS_DENIED;
        }, 5000, 'the session expiring');
      } finally {
        c.kill('SIGKILL');
      }
    });

    it('gives a root session a ticket that opens exactly one more root session', async () => {
      const root = lab.peer();
      await root.send(hello());
      expect((await root.next()).k).to.equal('welcome');
      await root.send(encode({ k: 'ctl', id: 1, op: 'ticket' }));
      const t = await root.next();
      expect(t.k, show(t)).to.equal('ctlr');
      const ticket = ((t as { result: { ticket: string } }).result).ticket;
      expect(ticket).to.be.a('string').with.length.above(31);
      const vmwp = lab.peer();
      await vmwp.send(encode({ k: 'hello', partitionId: ROOT_PARTITION_ID, ticket, role: 'vmwp', vm: 'v', pid: process.pid }));
      expect((await vmwp.next()).k).to.equal('welcome');
      await vmwp.send(encode({ k: 'hc', id: 2, code: HvCall.GetPartitionId, input: {} }));
      expect(await vmwp.next()).to.deep.include({ status: HvStatus.SUCCESS });
      const again = lab.peer();
      await again.send(encode({ k: 'hello', partitionId: ROOT_PARTITION_ID, ticket, role: 'vmwp', vm: 'v', pid: process.pid }));
      expect(await again.next()).to.deep.include({ k: 'reject' });
    });

    it('refuses a ticket request from an unauthenticated peer', async () => {
      const p = lab.peer();
      await p.send(encode({ k: 'ctl', id: 1, op: 'ticket' }));
      const a = (await p.next()) as Extract<HvServerMsg, { k: 'ctlr' }>;
      expect(a.k).to.equal('ctlr');
      expect(a.result).to.have.property('error');
    });
  });

  describe('HvClient', () => {
    let lab: ServerLab;
    const clients: HvClient[] = [];
    beforeEach(async () => {
      lab = await new ServerLab().start();
    });
    afterEach(async () => {
      for (const c of clients.splice(0)) c.close();
      await lab.close();
    });

    it('fails every pending and later call with "the hypervisor (pid N) is gone" once the watched pid ends', async () => {
      const fake = sleeper();
      try {
        // Nothing listens here: the calls stay pending until the watch fails them.
        const hv = new HvClient(`ipc://${lab.dir}/nobody`, () => undefined, { watchPid: fake.pid, callTimeoutMs: 60000 });
        clients.push(hv);
        void hv.connect({ partitionId: 1, token: 'x', role: 'r', vm: null }, 60000).catch(() => undefined);
        const pending = hv.raw(HvCall.GetPartitionId, {}).then(() => null, (e: Error) => e);
        const ctl = hv.ctl('stats').then(() => null, (e: Error) => e);
        fake.kill('SIGKILL');
        const e = await pending;
        expect(e?.message).to.equal(`the hypervisor (pid ${fake.pid}) is gone`);
        expect((await ctl)?.message).to.equal(`the hypervisor (pid ${fake.pid}) is gone`);
        const later = await hv.raw(HvCall.GetPartitionId, {}).then(() => null, (x: Error) => x);
        expect(later?.message).to.equal(`the hypervisor (pid ${fake.pid}) is gone`);
      } finally {
        fake.kill('SIGKILL');
      }
    });

    it('times out a control request that gets no answer, naming the op', async () => {
      const hv = new HvClient(`ipc://${lab.dir}/nobody`);
      clients.push(hv);
      void hv.connect({ partitionId: 1, token: 'x', role: 'r', vm: null }, 60000).catch(() => undefined);
      const e = await hv.ctl('stats', 300).then(() => null, (x: Error) => x);
      expect(e?.message).to.match(/did not answer control request stats/);
    });

    it('opens a root session with a ticket that another root session asked for', async () => {
      const root = new HvClient(lab.endpoint);
      clients.push(root);
      await root.connect({ partitionId: ROOT_PARTITION_ID, token: ROOT_TOKEN, role: 'root', vm: null });
      const ticket = await root.ticket();
      const vmwp = new HvClient(lab.endpoint);
      clients.push(vmwp);
      const s = await vmwp.connect({ partitionId: ROOT_PARTITION_ID, ticket, role: 'vmwp', vm: 'v1' });
      expect(s.partitionId).to.equal(ROOT_PARTITION_ID);
      expect(await vmwp.must('GetPartitionId', {})).to.deep.equal({ partitionId: ROOT_PARTITION_ID });
      const third = new HvClient(lab.endpoint);
      clients.push(third);
      const e = await third.connect({ partitionId: ROOT_PARTITION_ID, ticket, role: 'vmwp', vm: 'v1' }).then(() => null, (x: Error) => x);
      expect(e?.message).to.match(/refused the session/);
    });

    it('fails a call the hypervisor could not read with its reason instead of waiting for the timeout', async () => {
      const root = new HvClient(lab.endpoint, () => undefined, { callTimeoutMs: 60000 });
      clients.push(root);
      await root.connect({ partitionId: ROOT_PARTITION_ID, token: ROOT_TOKEN, role: 'root', vm: null });
      const e = await root.raw(0x10000, {}).then(() => null, (x: Error) => x);
      expect(e?.message).to.match(/could not read request \d+: .*code/);
    });
  });

  describe('sessions in the state machine', () => {
    let lab: Lab;
    let clock = 1_000_000;
    beforeEach(() => {
      clock = 1_000_000;
      lab = new Lab({ now: () => clock });
    });
    afterEach(() => lab.close());

    it('rotateRootToken makes a new 64-hex-digit token, refuses the old one, and keeps open sessions', () => {
      const t1 = lab.hv.rotateRootToken();
      expect(t1).to.match(/^[0-9a-f]{64}$/);
      expect(lab.hv.hello('s1', { partitionId: 1, token: ROOT_TOKEN, role: 'r', vm: null, pid: process.pid }).k).to.equal('reject');
      expect(lab.hv.hello('s2', { partitionId: 1, token: t1, role: 'r', vm: null, pid: process.pid }).k).to.equal('welcome');
      const t2 = lab.hv.rotateRootToken();
      expect(t2).to.not.equal(t1);
      expect(lab.hv.hello('s3', { partitionId: 1, token: t1, role: 'r', vm: null, pid: process.pid }).k).to.equal('reject');
      lab.ok('r1', HvCall.GetPartitionId);
      lab.ok('s2', HvCall.GetPartitionId);
    });

    it('a hypervisor made without a token accepts no root hello until rotateRootToken', async () => {
      const { Hypervisor } = await import('../src/hypervisor.js');
      const hv = new Hypervisor({ hostId: 'untokened', memoryMode: 'private', notify: () => undefined });
      expect(hv.hello('a', { partitionId: 1, token: '', role: 'r', vm: null, pid: process.pid }).k).to.equal('reject');
      expect(hv.hello('a', { partitionId: 1, token: 'null', role: 'r', vm: null, pid: process.pid }).k).to.equal('reject');
      const t = hv.rotateRootToken();
      expect(hv.hello('a', { partitionId: 1, token: t, role: 'r', vm: null, pid: process.pid }).k).to.equal('welcome');
    });

    it('a ticket expires after 30 s, works once, and opens only the root partition', () => {
      const issue = (): string => (lab.hv.control('r1', 'ticket') as { ticket: string }).ticket;
      const a = issue();
      clock += 30_000;
      expect(lab.hv.hello('x1', { partitionId: 1, ticket: a, role: 'vmwp', vm: null, pid: process.pid })).to.deep.include({ k: 'reject' });
      const b = issue();
      clock += 29_000;
      expect(lab.hv.hello('x2', { partitionId: 2, ticket: b, role: 'vmwp', vm: null, pid: process.pid })).to.deep.include({ k: 'reject' });
      expect(lab.hv.hello('x3', { partitionId: 1, ticket: b, role: 'vmwp', vm: 'v', pid: process.pid }).k).to.equal('welcome');
      expect(lab.hv.session('x3')).to.deep.include({ role: 'vmwp', vm: 'v', via: 'ticket' });
      expect(lab.hv.hello('x4', { partitionId: 1, ticket: b, role: 'vmwp', vm: null, pid: process.pid })).to.deep.include({ k: 'reject' });
    });

    it('only a root-partition session may ask for a ticket', () => {
      const c = lab.child();
      expect(lab.hv.control(c.sid, 'ticket')).to.have.property('error');
      expect(lab.hv.control('nobody', 'ticket')).to.have.property('error');
    });

    it('a hello naming no process (pid 0 or below) is refused', () => {
      for (const pid of [0, -1]) expect(lab.hv.hello(`p${pid}`, { partitionId: 1, token: ROOT_TOKEN, role: 'r', vm: null, pid }).k).to.equal('reject');
    });

    it('expireSessions drops sessions of dead pids; their root port stays, and a message to it goes nowhere without an error', () => {
      const c = lab.child({ privileges: ENLIGHTENED_CHILD_PRIVILEGES, vps: 1 });
      expect(lab.hv.hello('vmwp', { partitionId: 1, token: ROOT_TOKEN, role: 'vmwp', vm: 'v', pid: 424242 }).k).to.equal('welcome');
      lab.ok('vmwp', HvCall.CreatePort, { partitionId: 1, portId: 77, type: PortType.Message, sint: 2, vpIndex: 0 });
      lab.ok('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: 5, portPartitionId: 1, portId: 77 });
      const dropped = lab.hv.expireSessions((pid) => pid !== 424242);
      expect(dropped.map((s) => s.id)).to.deep.equal(['vmwp']);
      expect(lab.hv.session('vmwp')).to.equal(undefined);
      lab.status('vmwp', HvCall.GetPartitionId, {}, HvStatus.ACCESS_DENIED);
      expect(lab.hv.partition(1)?.ports.has(77)).to.equal(true);
      const before = lab.notes.length;
      lab.ok(c.sid, HvCall.PostMessage, { connectionId: 5, messageType: 1, payload: new Uint8Array(4) });
      expect(lab.notes.length).to.equal(before);
    });
  });

  describe('SetVpState', function () {
    before(function () {
      if (!shmAvailable()) this.skip();
    });
    let lab: Lab;
    beforeEach(() => {
      lab = new Lab({ scheduler: recordingScheduler() });
    });
    afterEach(() => lab.close());

    const mutations: Array<[string, (s: Record<string, unknown> & SavedVpState) => void]> = [
      ['referenceTime 1e999', (s) => (s.referenceTime = 1e999)],
      ['referenceTime NaN', (s) => (s.referenceTime = NaN)],
      ['timers [null]', (s) => ((s as Record<string, unknown>).timers = [null])],
      ['a null timer among four', (s) => ((s.timers as unknown[])[2] = null)],
      ['a timer count of Infinity', (s) => (s.timers[0].count = Infinity)],
      ['a register given as a string', (s) => ((s.registers as Record<string, unknown>).Rip = '4096')],
      ['a negative register', (s) => (s.registers.Rip = -5)],
      ['an APIC list of 3 words', (s) => (s.apic.irr = [1, 2, 3])],
      ['an APIC list of strings', (s) => ((s.apic as Record<string, unknown>).isr = new Array(8).fill('x'))],
      ['17 SINTs', (s) => s.synic.sint.push(0)],
      ['a SINT of -1', (s) => (s.synic.sint[0] = -1)],
      ['a TPR of 1e999', (s) => (s.apic.tpr = 1e999)],
      ['synic null', (s) => ((s as Record<string, unknown>).synic = null)],
      ['apic with toString/valueOf', (s) => ((s as Record<string, unknown>).apic = hostile)],
      ['an unknown field', (s) => (s.bogus = 1)],
      ['registers as a list', (s) => ((s as Record<string, unknown>).registers = [1, 2])],
    ];
    for (const [what, mutate] of mutations) {
      it(`with ${what} answers INVALID_PARAMETER or INVALID_HYPERCALL_INPUT and changes nothing`, () => {
        const c = lab.child({ vps: 1 });
        lab.ok('r1', HvCall.SetVpRegisters, { partitionId: c.id, vpIndex: 0, values: { Rip: 0x1234 } });
        const before = lab.ok('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 0 }) as SavedVpState;
        const state = structuredClone(before) as SavedVpState & Record<string, unknown>;
        mutate(state);
        let r: { status: number } | undefined;
        expect(() => (r = lab.hc('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state }))).to.not.throw();
        expect([HvStatus.INVALID_PARAMETER, HvStatus.INVALID_HYPERCALL_INPUT].map(hvStatusName)).to.include(hvStatusName(r!.status));
        const after = lab.ok('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 0 }) as SavedVpState;
        expect({ ...after, referenceTime: 0 }).to.deep.equal({ ...before, referenceTime: 0 });
      });
    }

    it('restores a saved state that a guest scribbled on (NaN in its RAX mirror and timer counts)', () => {
      const c = lab.child({ vps: 1 });
      const f64 = lab.hv.partition(c.id)!.vpF64!;
      const off = vpPageOffset(0);
      f64[(off + VpPage.rax) >> 3] = NaN;
      f64[(off + VpPage.stimerCount) >> 3] = -Infinity;
      f64[((off + VpPage.stimerNext) >> 3) + 1] = NaN;
      const saved = lab.ok('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 0 }) as SavedVpState;
      lab.ok('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: saved });
    });

    it('round-trips a valid state', () => {
      const c = lab.child({ vps: 1 });
      lab.ok('r1', HvCall.SetVpRegisters, { partitionId: c.id, vpIndex: 0, values: { Rip: 0x2000, Rbx: 7, Tpr: 0x20 } });
      const saved = lab.ok('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 0 }) as SavedVpState;
      lab.ok('r1', HvCall.SetVpState, { partitionId: c.id, vpIndex: 0, state: saved });
      const again = lab.ok('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 0 }) as SavedVpState;
      expect({ ...again, referenceTime: 0 }).to.deep.equal({ ...saved, referenceTime: 0 });
    });
  });

  describe('privilege is checked before the input', () => {
    let lab: Lab;
    beforeEach(() => {
      lab = new Lab({ memoryMode: 'private' });
    });
    afterEach(() => lab.close());

    const parentOnly = [
      'InitializePartition', 'FinalizePartition', 'DeletePartition', 'SetPartitionProperty', 'MapGpaPages', 'UnmapGpaPages',
      'InstallIntercept', 'CreateVp', 'DeleteVp', 'AssertVirtualInterrupt', 'GetVpState', 'SetVpState', 'MapGpadl', 'UnmapGpadl', 'CreatePartition',
    ] as const;

    it('a child calling any parent-only hypercall with {} gets ACCESS_DENIED (not INVALID_HYPERCALL_INPUT)', () => {
      const c = lab.child({ privileges: ENLIGHTENED_CHILD_PRIVILEGES, vps: 1 });
      for (const name of parentOnly) lab.status(c.sid, HvCall[name], {}, HvStatus.ACCESS_DENIED);
    });

    it('a child without the call\'s privilege gets ACCESS_DENIED whatever the input, even one that is not a map', () => {
      const c = lab.child({ vps: 1 });
      for (const name of ['GetVpRegisters', 'SetVpRegisters', 'GetPartitionProperty', 'GetPartitionId', 'PostMessage', 'SignalEvent', 'CreatePort', 'ConnectPort'] as const) {
        lab.status(c.sid, HvCall[name], {}, HvStatus.ACCESS_DENIED);
        lab.status(c.sid, HvCall[name], { partitionId: hostile, vpIndex: 1e999 }, HvStatus.ACCESS_DENIED);
        const r = lab.hv.hypercall(c.sid, HvCall[name], null as unknown as Record<string, unknown>);
        expect(hvStatusName(r.status)).to.equal('ACCESS_DENIED');
      }
    });

    it('a child with the privilege and a malformed input gets INVALID_HYPERCALL_INPUT', () => {
      const c = lab.child({ privileges: ENLIGHTENED_CHILD_PRIVILEGES, vps: 1 });
      lab.status(c.sid, HvCall.GetVpRegisters, { partitionId: -1, vpIndex: 0 }, HvStatus.INVALID_HYPERCALL_INPUT);
      lab.status(c.sid, HvCall.PostMessage, { connectionId: 1, messageType: 1 }, HvStatus.INVALID_HYPERCALL_INPUT);
    });

    it('the root gets the shape error before the target error', () => {
      lab.status('r1', HvCall.CreateVp, { partitionId: 999 }, HvStatus.INVALID_HYPERCALL_INPUT);
      lab.status('r1', HvCall.CreateVp, { partitionId: 999, vpIndex: 0 }, HvStatus.INVALID_PARTITION_ID);
      lab.status('r1', HvCall.SetPartitionProperty, { partitionId: 999, property: PartitionProperty.CpuWeight, value: 'x' }, HvStatus.INVALID_HYPERCALL_INPUT);
    });

    it('state is checked before values', () => {
      const { partitionId } = lab.ok('r1', HvCall.CreatePartition, { memoryBytes: 2 * MiB }) as { partitionId: number };
      lab.status('r1', HvCall.CreateVp, { partitionId, vpIndex: 9999 }, HvStatus.INVALID_PARTITION_STATE);
      lab.status('r1', HvCall.SetPartitionProperty, { partitionId, property: PartitionProperty.Suspend, value: 7 }, HvStatus.INVALID_PARTITION_STATE);
    });
  });

  describe('guest-created state is capped', function () {
    let lab: Lab;
    beforeEach(function () {
      if (!shmAvailable()) this.skip();
      lab = new Lab();
    });
    afterEach(() => lab?.close());

    it('queued SynIC messages: past 1024 in a partition a post gets INSUFFICIENT_BUFFERS', () => {
      // Two VPs x 16 SINTs could hold 2048 messages at 64 per SINT; the partition cap is 1024.
      const c = lab.child({ vps: 2 });
      const sender = lab.child({ privileges: ENLIGHTENED_CHILD_PRIVILEGES });
      let conn = 0;
      for (let vp = 0; vp < 2; vp++) {
        for (let sint = 0; sint < 16; sint++) {
          conn++;
          lab.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: conn, type: PortType.Message, sint, vpIndex: vp });
          lab.ok('r1', HvCall.ConnectPort, { partitionId: sender.id, connectionId: conn, portPartitionId: c.id, portId: conn });
        }
      }
      const statuses = new Map<number, number>();
      for (let i = 0; i < 1100; i++) {
        const r = lab.hc(sender.sid, HvCall.PostMessage, { connectionId: (i % 32) + 1, messageType: 1, payload: new Uint8Array(8) });
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
      expect(Object.fromEntries([...statuses].map(([k, v]) => [hvStatusName(k), v]))).to.deep.equal({ SUCCESS: 1024, INSUFFICIENT_BUFFERS: 76 });
    });

    it('ports: past 4096 in a partition CreatePort gets INSUFFICIENT_MEMORY', () => {
      const c = lab.child({ vps: 1 });
      for (let i = 1; i <= 4096; i++) lab.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: i, type: PortType.Message, sint: 2, vpIndex: 0 });
      lab.status('r1', HvCall.CreatePort, { partitionId: c.id, portId: 5000, type: PortType.Message, sint: 2, vpIndex: 0 }, HvStatus.INSUFFICIENT_MEMORY);
    });

    it('connections: past 4096 in a partition ConnectPort gets INSUFFICIENT_MEMORY, and deleting the target frees them', () => {
      const c = lab.child({ vps: 1 });
      const t = lab.child({ vps: 1 });
      lab.ok('r1', HvCall.CreatePort, { partitionId: t.id, portId: 1, type: PortType.Message, sint: 2, vpIndex: 0 });
      for (let i = 1; i <= 4096; i++) lab.ok('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: i, portPartitionId: t.id, portId: 1 });
      lab.status('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: 5000, portPartitionId: t.id, portId: 1 }, HvStatus.INSUFFICIENT_MEMORY);
      lab.ok('r1', HvCall.FinalizePartition, { partitionId: t.id });
      lab.ok('r1', HvCall.DeletePartition, { partitionId: t.id });
      const u = lab.child({ vps: 1 });
      lab.ok('r1', HvCall.CreatePort, { partitionId: u.id, portId: 1, type: PortType.Message, sint: 2, vpIndex: 0 });
      lab.ok('r1', HvCall.ConnectPort, { partitionId: c.id, connectionId: 5000, portPartitionId: u.id, portId: 1 });
    });

    it('GPADLs: past 65536 pages in a partition MapGpadl gets INSUFFICIENT_MEMORY, and unmapping frees them', () => {
      const c = lab.child({ memoryBytes: 16 * MiB });
      lab.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: 0, pageCount: 4096 });
      const pfns = Array.from({ length: 4096 }, (_, i) => i);
      for (let g = 1; g <= 16; g++) lab.ok('r1', HvCall.MapGpadl, { partitionId: c.id, gpadl: g, owner: 1, pfns });
      lab.status('r1', HvCall.MapGpadl, { partitionId: c.id, gpadl: 17, owner: 1, pfns: [0] }, HvStatus.INSUFFICIENT_MEMORY);
      lab.ok('r1', HvCall.UnmapGpadl, { partitionId: c.id, gpadl: 3 });
      lab.ok('r1', HvCall.MapGpadl, { partitionId: c.id, gpadl: 17, owner: 1, pfns: [0] });
    });

    it('GPADLs: past 1024 windows in a partition MapGpadl gets INSUFFICIENT_MEMORY', () => {
      const c = lab.child();
      lab.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: 0, pageCount: 1 });
      for (let g = 1; g <= 1024; g++) lab.ok('r1', HvCall.MapGpadl, { partitionId: c.id, gpadl: g, owner: 1, pfns: [0] });
      lab.status('r1', HvCall.MapGpadl, { partitionId: c.id, gpadl: 1025, owner: 1, pfns: [0] }, HvStatus.INSUFFICIENT_MEMORY);
    });

    it('intercepts: past 64 in a partition InstallIntercept gets INSUFFICIENT_MEMORY', () => {
      const c = lab.child();
      for (let i = 0; i < 64; i++) lab.ok('r1', HvCall.InstallIntercept, { partitionId: c.id, type: 0, access: 3, port: i });
      lab.status('r1', HvCall.InstallIntercept, { partitionId: c.id, type: 0, access: 3, port: 100 }, HvStatus.INSUFFICIENT_MEMORY);
    });
  });
});
