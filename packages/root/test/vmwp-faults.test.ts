/**
 * A VM's fault table in its worker (vmwp/faults.ts), against a stand-in worker that records the
 * partition properties it is asked to set: each kind is applied and undone (set back to 0) by
 * itself when its time is up, or at once on clear; one interrupt-delay, clock or VP-stall fault at
 * a time (a second replaces the first, which is reported ended); a fault with the same id is
 * replaced without a report; vmbus faults go to the VM's injector on the channel named; a bit flip
 * flips exactly the bits asked, only in guest RAM and only in a page that is there; every ending
 * is reported in a faultEnded note; refusals come with a sentence and change nothing.
 */
import { expect } from 'chai';
import { HvStatus, PartitionProperty, type VmFaultSpec, type VmwpNote } from '@hvlab/protocol';
import { HypercallError, VmwpFailure } from '@hvlab/runtime';
import { VmbusFaultInjector } from '@hvlab/vmbus';
import { flipGuestByte, MAX_VM_FAULTS, VmFaultTable, type VmFaultHost } from '../src/vmwp/faults.js';

const P = PartitionProperty;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(5);
  }
}

const RAM = 64 * 4096;
/** A VM of 65 pages: 64 of guest RAM under its dirty bitmap's page. */
const GUEST = { vm: 'vm1', memoryBytes: RAM + 4096 };
const vmbusSpec = (o: Partial<Extract<VmFaultSpec, { kind: 'vmbus' }>> = {}): VmFaultSpec => ({
  kind: 'vmbus', channel: 'heartbeat', drop: 1, delay: 0, delayMs: 0, duplicate: 0, reorder: 0, corrupt: 0, signalDrop: 0, signalDelay: 0, signalDelayMs: 0, seed: 1, ...o,
});

class StandIn {
  readonly props = new Map<number, number>();
  readonly calls: Array<[number, number]> = [];
  readonly notes: Array<Extract<VmwpNote, { t: 'faultEnded' }>> = [];
  readonly injector = new VmbusFaultInjector();
  readonly memory = new SharedArrayBuffer(RAM + 4096);
  missing = new Set<number>();
  refusal: string | null = null;
  failProperty: number | null = null;
  breakProperty: number | null = null;
  /** The clock's properties as they were at each clockRestored. */
  readonly resyncs: Array<[number, number]> = [];
  readonly host: VmFaultHost = {
    vm: 'vm1', vps: 4,
    setProperty: async (property, value) => {
      // As the hypervisor refuses a value out of its range (the status of the hypercall).
      if (property === this.failProperty && value !== 0) throw new HypercallError('SetPartitionProperty', HvStatus.PROPERTY_VALUE_OUT_OF_RANGE);
      if (property === this.breakProperty && value !== 0) throw new Error('the hypervisor is gone');
      this.calls.push([property, value]);
      this.props.set(property, value);
    },
    flipByte: async (gpa, mask) => flipGuestByte(this.memory, GUEST, gpa, mask, (pfn) => this.missing.has(pfn)),
    vmbus: () => ({ injector: this.injector, names: ['heartbeat', 'kvp', 'shutdown', 'timesync'] }),
    refusal: () => this.refusal,
    clockRestored: async () => void this.resyncs.push([this.prop(P.FaultClockOffsetUs), this.prop(P.FaultClockSkewPpm)]),
    note: (n) => {
      if (n.t === 'faultEnded') this.notes.push(n);
    },
    log: { info: () => {}, warn: () => {} },
  };
  readonly table = new VmFaultTable(this.host);
  prop(p: number): number {
    return this.props.get(p) ?? 0;
  }
}

async function refused(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).to.be.instanceOf(VmwpFailure);
  expect((err as VmwpFailure).code).to.equal(code);
  expect((err as Error).message).to.match(re);
}

describe('a VM\'s fault table (VMWP)', function () {
  this.timeout(20000);
  let s: StandIn;
  beforeEach(() => {
    s = new StandIn();
  });
  afterEach(() => s.table.dispose());

  it('interrupt-delay sets the delay in µs and puts it back to 0 by itself when its time is up', async () => {
    const a = await s.table.set('i1', { kind: 'interrupt-delay', delayMs: 25 }, 60);
    expect(a).to.deep.include({ id: 'i1', kind: 'interrupt-delay', channels: [], applied: { delayUs: 25000 }, replaced: null });
    expect(a.endsAt - a.startedAt).to.equal(60);
    expect(s.prop(P.FaultInterruptDelayUs)).to.equal(25000);
    expect(s.table.list().map((f) => f.id)).to.deep.equal(['i1']);
    await until('the fault expired', () => s.notes.length === 1);
    expect(s.notes[0]).to.deep.include({ t: 'faultEnded', id: 'i1', kind: 'interrupt-delay', reason: 'expired', stats: {} });
    expect(s.prop(P.FaultInterruptDelayUs)).to.equal(0);
    expect(s.table.list()).to.deep.equal([]);
  });

  it('clock sets offset and skew and clears both at once on faultClear; an unknown id clears nothing', async () => {
    await s.table.set('c1', { kind: 'clock', offsetMs: -1500, skewPpm: 2000 }, 60_000);
    expect([s.prop(P.FaultClockOffsetUs), s.prop(P.FaultClockSkewPpm)]).to.deep.equal([-1_500_000, 2000]);
    expect(await s.table.clear('nope')).to.deep.equal({ cleared: [] });
    expect(await s.table.clear('c1')).to.deep.equal({ cleared: ['c1'] });
    expect([s.prop(P.FaultClockOffsetUs), s.prop(P.FaultClockSkewPpm)]).to.deep.equal([0, 0]);
    expect(s.notes.map((n) => [n.id, n.reason, n.why])).to.deep.equal([['c1', 'cleared', 'cleared by request']]);
  });

  it('the end of a clock fault, by its time, a clear or before a move, sets the guest\'s clock right (time sync) once the reference time is true again', async () => {
    await s.table.set('c1', { kind: 'clock', offsetMs: 3_600_000, skewPpm: 0 }, 30);
    await until('expired', () => s.notes.length === 1);
    await s.table.set('c2', { kind: 'clock', offsetMs: 0, skewPpm: 100_000 }, 60_000);
    await s.table.clear('c2');
    await s.table.set('c3', { kind: 'clock', offsetMs: -1000, skewPpm: 0 }, 60_000);
    await s.table.endAll('the VM is being migrated to h2');
    expect(s.resyncs, 'after each end, with both properties 0').to.deep.equal([[0, 0], [0, 0], [0, 0]]);
    // Other kinds' ends leave the clock alone.
    await s.table.set('d', { kind: 'interrupt-delay', delayMs: 1 }, 60_000);
    await s.table.clear('d');
    expect(s.resyncs).to.have.length(3);
  });

  it('a second VP stall replaces the first without a gap (which is reported ended); clear(null) ends all', async () => {
    await s.table.set('v1', { kind: 'vp-stall', vps: [1] }, 60_000);
    await s.table.set('d1', { kind: 'interrupt-delay', delayMs: 1 }, 60_000);
    const a = await s.table.set('v2', { kind: 'vp-stall', vps: null }, 60_000);
    expect(a).to.deep.include({ replaced: 'v1', applied: { vps: [0, 1, 2, 3], mask: 0xf } });
    expect(s.calls.filter(([p]) => p === P.FaultStalledVps).map(([, v]) => v)).to.deep.equal([0b10, 0xf]);
    expect(s.notes.map((n) => [n.id, n.reason, n.why])).to.deep.equal([['v1', 'cleared', 'replaced by fault v2 of the same kind']]);
    expect(s.table.list().map((f) => f.id).sort()).to.deep.equal(['d1', 'v2']);
    expect((await s.table.clear(null)).cleared.sort()).to.deep.equal(['d1', 'v2']);
    expect([s.prop(P.FaultStalledVps), s.prop(P.FaultInterruptDelayUs)]).to.deep.equal([0, 0]);
    await refused(s.table.set('v3', { kind: 'vp-stall', vps: [4] }, 10), 'InvalidArgument', /has 4 VPs \(0 to 3\); there is no VP 4/);
  });

  it('the same id replaces its fault without a report; of another kind, the old one is undone first', async () => {
    await s.table.set('f', { kind: 'interrupt-delay', delayMs: 5 }, 60_000);
    const a = await s.table.set('f', { kind: 'interrupt-delay', delayMs: 7 }, 60_000);
    expect(a.replaced).to.equal('f');
    expect(s.prop(P.FaultInterruptDelayUs)).to.equal(7000);
    await s.table.set('f', vmbusSpec(), 60_000);
    expect(s.prop(P.FaultInterruptDelayUs)).to.equal(0);
    expect(s.injector.ids()).to.deep.equal(['f']);
    expect(s.table.list().map((x) => [x.id, x.kind])).to.deep.equal([['f', 'vmbus']]);
    expect(s.notes).to.deep.equal([]);
    // The old timer does not end the new fault.
    await s.table.set('g', { kind: 'clock', offsetMs: 1, skewPpm: 0 }, 30);
    await s.table.set('g', { kind: 'clock', offsetMs: 2, skewPpm: 0 }, 60_000);
    await sleep(80);
    expect(s.table.list().map((x) => x.id).sort()).to.deep.equal(['f', 'g']);
    expect(s.prop(P.FaultClockOffsetUs)).to.equal(2000);
  });

  it('vmbus: on the channel named (all of them for null), ended by taking it off the injector, with its counters', async () => {
    const a = await s.table.set('b1', vmbusSpec({ channel: 'kvp' }), 60_000);
    expect(a.channels).to.deep.equal(['kvp']);
    expect(s.injector.get('b1')!.options).to.deep.include({ channel: 'kvp', drop: 1, seed: 1 });
    expect((await s.table.set('b2', vmbusSpec({ channel: null }), 60_000)).channels).to.deep.equal(['heartbeat', 'kvp', 'shutdown', 'timesync']);
    const l = s.table.list().find((f) => f.id === 'b1')!;
    expect(l.spec).to.deep.include({ kind: 'vmbus', channel: 'kvp' });
    expect(l.stats).to.deep.equal({ packets: { seen: 0, dropped: 0, delayed: 0, duplicated: 0, reordered: 0, corrupted: 0 }, signals: { seen: 0, dropped: 0, delayed: 0 } });
    await refused(s.table.set('b3', vmbusSpec({ channel: 'netvsc' }), 10), 'InvalidArgument', /VM "vm1" has no VMBus channel "netvsc" \(its channels: heartbeat, kvp, shutdown, timesync\)/);
    await s.table.clear('b1');
    expect(s.injector.ids()).to.deep.equal(['b2']);
    expect(s.notes[0]!.stats).to.have.keys(['packets', 'signals']);
  });

  it('bitflip flips exactly the bits asked, in guest RAM only and in a page that is there; nothing is undone', async () => {
    const mem = new Uint8Array(s.memory);
    mem[0x2345] = 0b1010_0000;
    const a = await s.table.set('x', { kind: 'bitflip', gpa: 0x2345, mask: 0b1000_0001 }, 0);
    expect(a.applied).to.deep.equal({ gpa: 0x2345, mask: 0x81, before: 0xa0, after: 0x21 });
    expect(mem[0x2345]).to.equal(0x21);
    await until('the instant fault ended', () => s.notes.length === 1);
    expect(s.notes[0]).to.deep.include({ id: 'x', reason: 'expired' });
    expect(mem[0x2345]).to.equal(0x21);
    await refused(s.table.set('y', { kind: 'bitflip', gpa: RAM, mask: 1 }, 0), 'InvalidArgument', /^GPA 0x40000 is outside VM vm1's guest RAM: the VM has 260K of memory, and a bit flip takes a GPA from 0x0 to 0x3ffff \(its top page holds the dirty bitmap\)$/);
    s.missing.add(3);
    await refused(s.table.set('y', { kind: 'bitflip', gpa: 3 * 4096 + 5, mask: 1 }, 0), 'Unavailable', /page 0x3 has not arrived yet/);
    expect(mem[3 * 4096 + 5]).to.equal(0);
    await refused(Promise.resolve().then(() => flipGuestByte(null, GUEST, 0, 1, () => false)), 'InvalidState', /needs shared memory/);
  });

  it('bitflip lands while the VPs stand still: bad input is refused before anything stops, and a failing flip still lets them run', async () => {
    const mem = new SharedArrayBuffer(RAM);
    const events: string[] = [];
    const stopped = async <T>(apply: () => T): Promise<T> => {
      events.push('stop');
      try {
        const r = apply();
        events.push(`flip ${new Uint8Array(mem)[0x10]}`);
        return r;
      } finally {
        events.push('run');
      }
    };
    expect(await flipGuestByte(mem, GUEST, 0x10, 4, () => false, stopped)).to.deep.equal({ before: 0, after: 4 });
    expect(events).to.deep.equal(['stop', 'flip 4', 'run']);
    await refused(flipGuestByte(mem, GUEST, RAM, 4, () => false, stopped), 'InvalidArgument', /outside VM vm1's guest RAM/);
    await refused(flipGuestByte(mem, GUEST, 0x10, 256, () => false, stopped), 'InvalidArgument', /a bit mask is 1 to 255/);
    await refused(flipGuestByte(mem, GUEST, 0x10, 4, () => true, stopped), 'Unavailable', /has not arrived yet/);
    expect(events, 'nothing stopped for bad input').to.have.length(3);
  });

  it('bitflip is never lost to a guest incrementing that byte: a guest thread doing memdirty\'s inc, stopped at its step boundaries for each flip, keeps every flip of 20000', async function () {
    this.timeout(120_000);
    // memdirty's step in a thread of its own (GuestMemory.add8: a plain load and store, as
    // `inc byte [gpa]` is), which stops between steps when asked (as a VP at a suspension).
    // ctl: 0 the stop asked (its number; 0: run), 1 the number of the stop the guest stands in,
    // 2 steps done, 3 quit. Numbered as the hypervisor's suspensions are: with a flag, a stop asked
    // right after a release could see the last stop's answer while the guest still ran on.
    const PAGES = 64;
    const mem = new SharedArrayBuffer(PAGES * 4096);
    /** Every page of `mem` is guest RAM (its dirty bitmap's page would be past it). */
    const WHOLE = { vm: 'vm1', memoryBytes: mem.byteLength + 4096 };
    const ctl = new Int32Array(new SharedArrayBuffer(16));
    const { Worker } = await import('node:worker_threads');
    const guest = new Worker(`
      const { workerData } = require('node:worker_threads');
      const [u8, ctl] = [new Uint8Array(workerData.mem), new Int32Array(workerData.ctl)];
      let cursor = 0;
      while (Atomics.load(ctl, 3) === 0) {
        const stop = Atomics.load(ctl, 0);
        if (stop !== 0) {
          Atomics.store(ctl, 1, stop);
          Atomics.notify(ctl, 1);
          while (Atomics.load(ctl, 0) === stop && Atomics.load(ctl, 3) === 0) Atomics.wait(ctl, 0, stop, 50);
        }
        for (let k = 0; k < 16; k++) {
          const g = cursor * 4096;
          u8[g] = (u8[g] + 1) & 0xff;
          cursor = cursor + 1 === ${PAGES} ? 0 : cursor + 1;
        }
        Atomics.add(ctl, 2, 1);
      }`, { eval: true, workerData: { mem, ctl: ctl.buffer } });
    let stops = 0;
    const stopped = async <T>(apply: () => T): Promise<T> => {
      const n = ++stops;
      Atomics.store(ctl, 0, n);
      const deadline = Date.now() + 10_000;
      for (let seen = Atomics.load(ctl, 1); seen !== n; seen = Atomics.load(ctl, 1)) {
        if (Date.now() > deadline) throw new Error(`the guest thread did not stop (stop ${n}) within 10 s`);
        Atomics.wait(ctl, 1, seen, 50);
      }
      try {
        return apply();
      } finally {
        Atomics.store(ctl, 0, 0);
        Atomics.notify(ctl, 0);
      }
    };
    const u8 = new Uint8Array(mem);
    const fullPass = (): void => {
      const from = Atomics.load(ctl, 2);
      const deadline = Date.now() + 10_000;
      while (Atomics.load(ctl, 2) - from < PAGES / 16 + 1) {
        if (Date.now() > deadline) throw new Error('the guest thread made no full pass within 10 s');
      }
    };
    try {
      let lost = 0;
      for (let i = 0; i < 20000; i++) {
        const page = 1 + (i % (PAGES - 1));
        await flipGuestByte(mem, WHOLE, page * 4096, 2, () => false, stopped);
        fullPass();
        // Page after page the first bytes are equal or one less, where the pass is; a flip of bit 1
        // moves one by 2. A flip and its unflip with increments between them leave a page moved by
        // a multiple of 4, so bit 1 of the difference (and nothing else) says whether this flip is
        // there. Read with the guest stopped too: between two plain reads it may step both pages.
        const d = await stopped(() => (u8[(page - 1) * 4096]! - u8[page * 4096]!) & 0xff);
        if ((d & 2) === 0) lost++;
        else await flipGuestByte(mem, WHOLE, page * 4096, 2, () => false, stopped);
        fullPass();
      }
      expect(lost, 'flips lost to the guest\'s increments').to.equal(0);
    } finally {
      Atomics.store(ctl, 3, 1);
      Atomics.notify(ctl, 0);
      await guest.terminate();
    }
  });

  it('refuses with a sentence while the worker says so, past the most faults, and when the hypervisor refuses (putting back what was set)', async () => {
    s.refusal = 'it is being migrated';
    await refused(s.table.set('a', { kind: 'interrupt-delay', delayMs: 1 }, 10), 'InvalidState', /no fault can be set on VM "vm1" now: it is being migrated/);
    s.refusal = null;
    for (let i = 0; i < MAX_VM_FAULTS; i++) await s.table.set(`f${i}`, vmbusSpec(), 60_000);
    await refused(s.table.set('one-more', vmbusSpec(), 60_000), 'InvalidState', new RegExp(`has ${MAX_VM_FAULTS} active faults`));
    await s.table.set('f0', vmbusSpec({ drop: 0.5 }), 60_000); // a replacement is not one more
    await s.table.clear(null);
    await s.table.set('c1', { kind: 'clock', offsetMs: 10, skewPpm: 5 }, 60_000);
    s.failProperty = P.FaultClockSkewPpm;
    // A value out of range is a refusal, naming the property that failed and its value (both were
    // named, as Unavailable), and what was set is put back.
    await refused(s.table.set('c2', { kind: 'clock', offsetMs: 99, skewPpm: 7 }, 60_000), 'InvalidArgument', /^the hypervisor refused FaultClockSkewPpm = 7: out of range; nothing was set$/);
    // c1 still holds, with its own offset put back.
    expect(s.table.list().map((f) => f.id)).to.deep.equal(['c1']);
    expect(s.prop(P.FaultClockOffsetUs)).to.equal(10_000);
    // A step back of the offset out of range says why.
    s.failProperty = P.FaultClockOffsetUs;
    await refused(s.table.set('c3', { kind: 'clock', offsetMs: -99, skewPpm: 0 }, 60_000), 'InvalidArgument', /^the hypervisor refused FaultClockOffsetUs = -99000: out of range: a step back may not take the VM's reference time below 0/);
    // Any other failure is the hypervisor's, Unavailable, naming the property.
    s.failProperty = null;
    s.breakProperty = P.FaultClockSkewPpm;
    await refused(s.table.set('c4', { kind: 'clock', offsetMs: 5, skewPpm: 3 }, 60_000), 'Unavailable', /^the hypervisor refused FaultClockSkewPpm: the hypervisor is gone$/);
    expect(s.table.list().map((f) => f.id)).to.deep.equal(['c1']);
  });

  it('endAll ends every fault before a save or a migration, saying why; dispose stops every timer', async () => {
    await s.table.set('a', { kind: 'interrupt-delay', delayMs: 1 }, 60_000);
    await s.table.set('b', vmbusSpec(), 60_000);
    expect((await s.table.endAll('the VM is being migrated to h2')).cleared).to.deep.equal(['a', 'b']);
    expect(s.notes.map((n) => n.why)).to.deep.equal(['the VM is being migrated to h2', 'the VM is being migrated to h2']);
    await s.table.set('c', { kind: 'interrupt-delay', delayMs: 1 }, 30);
    s.table.dispose();
    await sleep(80);
    expect(s.notes.length).to.equal(2);
    await refused(s.table.set('d', { kind: 'interrupt-delay', delayMs: 1 }, 30), 'InvalidState', /going away/);
  });
});
