/**
 * Faults the hypervisor enforces (issue 13, ARCHITECTURE §9), each proven to have its effect, to
 * be undone completely when set back to 0, and to be refused when its value is not one:
 *   - FaultInterruptDelayUs: interrupts (AssertVirtualInterrupt, SynIC messages and events, IPIs,
 *     direct synthetic timers; notifications in private memory) arrive that much later;
 *   - FaultStalledVps: those VPs are not dispatched, the others run on;
 *   - FaultClockOffsetUs / FaultClockSkewPpm: the partition's reference time, the same for the
 *     guest's reader, GetVpRegisters and the scheduler's timers; saved state keeps true time;
 *   - setLps (root control op): fewer LPs, restored by the hypervisor itself after forMs.
 *
 * Most run in-process: a Hypervisor whose scheduler link feeds a SchedulerLoop directly, driven
 * pass by pass at times the test chooses (`LoopLink`), so a delay is checked exactly (not before
 * its time, at its time) with no wall-clock thresholds; where real time is used, the effect is
 * compared with an undelayed partition in the same test. Two run over the socket with the real
 * scheduler and hypercall threads (HvClient.setLps, and a delayed SignalEvent on the page path).
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Dispatch, HvCall, HvStatus, PartitionProperty, PortType, ROOT_PARTITION_ID, PARTITION_ID_SELF, ENLIGHTENED_CHILD_PRIVILEGES,
  VpPage, VirtualApicView, ReferenceClockView, MsgHeader, simpGpa, siefpGpa, synicPageRegister, stimerConfig, vpPageOffset, hvStatusName,
  FAULT_MAX_INTERRUPT_DELAY_US, FAULT_MAX_CLOCK_OFFSET_US, FAULT_MAX_MS, CLOCK_MAX_OFFSET_MS, CLOCK_SKEW_MIN_PPM, CLOCK_SKEW_MAX_PPM,
  FAULT_MAX_DELAY_MS, FAULT_CLOCK_SKEW_MIN_PPM, FAULT_CLOCK_SKEW_MAX_PPM, HV_SET_LPS_MAX_MS, VpRegionHeader,
  type HvServerMsg, type SavedVpStateV2,
} from '@hvlab/protocol';
import { HvClient, type HypercallResult } from '@hvlab/runtime';
import { shmAvailable, wordWatchAvailable } from '@hvlab/shm';
import { Lab, MiB, show, type Child } from './lab.js';
import type { SchedulerLink } from '../src/hypervisor.js';
import type { Partition } from '../src/partition.js';
import { SchedulerLoop, type FromScheduler, type ToScheduler } from '../src/sched-thread.js';
import { SchedulerCore } from '../src/scheduler.js';
import { HypervisorServer } from '../src/server.js';

const PAGE = 4096;
const MS = 1_000_000;

/** A scheduler link that hands every message to an in-process SchedulerLoop at the time `now` (ns), which the test moves. */
class LoopLink implements SchedulerLink {
  readonly regionName = 'hvlab-lab-sched';
  readonly loop: SchedulerLoop;
  now = Number(process.hrtime.bigint());
  /** Where the loop's messages go (the hypervisor's fromScheduler, once there is one). */
  sink: (m: FromScheduler) => void = () => {};
  constructor(readonly lps: number) {
    this.loop = new SchedulerLoop({ lps }, (m) => this.sink(m));
  }
  post(m: ToScheduler): void {
    this.loop.handle(m, this.now);
  }
  ring(): void {}
  /** One scheduling pass at `at` (default: now); returns its deadline. */
  pass(at = this.now): number {
    this.now = Math.max(this.now, at);
    return this.loop.pass(this.now);
  }
  /** One pass at the real time. */
  passNow(): number {
    return this.pass(Number(process.hrtime.bigint()));
  }
}

function labWithLoop(lps = 2): { lab: Lab; link: LoopLink } {
  const link = new LoopLink(lps);
  const lab = new Lab({ scheduler: link });
  link.sink = (m) => lab.hv.fromScheduler(m);
  return { lab, link };
}

const part = (lab: Lab, c: Child): Partition => lab.hv.partition(c.id)!;
const word = (index: number, field: number): number => (vpPageOffset(index) + field) >> 2;
const dispatch = (p: Partition, index: number): number => Atomics.load(p.vpI32!, word(index, VpPage.dispatch));
const pending = (p: Partition, index: number, vector: number): boolean => new VirtualApicView(p.vpI32!, vpPageOffset(index)).pending(vector);
/** The VP thread starts (StartVirtualProcessor): the next pass dispatches it when an LP is free. */
const startVp = (p: Partition, index: number): void => void Atomics.store(p.vpI32!, word(index, VpPage.dispatch), Dispatch.Start);
/** Every VP asked to give its LP back does so (as a VP thread does at its next step boundary). */
function ackPreemptions(p: Partition, vps: number): void {
  for (let i = 0; i < vps; i++) Atomics.compareExchange(p.vpI32!, word(i, VpPage.dispatch), Dispatch.Preempt, Dispatch.Off);
}
const setProp = (lab: Lab, c: Child, property: number, value: unknown): void => void lab.ok('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property, value });
const getProp = (lab: Lab, c: Child, property: number): unknown => (lab.ok('r1', HvCall.GetPartitionProperty, { partitionId: c.id, property }) as { value: unknown }).value;
const propStatus = (lab: Lab, c: Child, property: number, value: unknown): string => hvStatusName(lab.hc('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property, value }).status);

/** A child whose VP 0 takes SynIC messages on SINT 2 (vector 0x30) from root connection `conn`, and events on SINT 3 (vector 0x31) from `conn + 1`. */
function synicChild(lab: Lab, conn: number, vps = 1): Child {
  const c = lab.child({ vps, privileges: ENLIGHTENED_CHILD_PRIVILEGES });
  lab.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: simpGpa(0) / PAGE, pageCount: 1 });
  lab.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: siefpGpa(0) / PAGE, pageCount: 1 });
  lab.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: 7, type: PortType.Message, sint: 2, vpIndex: 0 });
  lab.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: 8, type: PortType.Event, sint: 3, vpIndex: 0, flagCount: 8 });
  lab.ok('r1', HvCall.ConnectPort, { partitionId: ROOT_PARTITION_ID, connectionId: conn, portPartitionId: c.id, portId: 7 });
  lab.ok('r1', HvCall.ConnectPort, { partitionId: ROOT_PARTITION_ID, connectionId: conn + 1, portPartitionId: c.id, portId: 8 });
  lab.ok(c.sid, HvCall.SetVpRegisters, {
    partitionId: PARTITION_ID_SELF, vpIndex: 0,
    values: { Scontrol: 1, Simp: synicPageRegister(simpGpa(0)), Siefp: synicPageRegister(siefpGpa(0)), Sint2: 0x30, Sint3: 0x31 },
  });
  return c;
}

/** True reference time of a partition at host time `h` (no fault), computed here from its base. */
const trueRef = (p: Partition, h: bigint): number => Number((h - p.refBaseNs) / 100n);
const hr = (): bigint => process.hrtime.bigint();
const refRegister = (lab: Lab, c: Child): number =>
  (lab.ok('r1', HvCall.GetVpRegisters, { partitionId: c.id, vpIndex: 0, names: ['ReferenceTime'] }) as { values: { ReferenceTime: number } }).values.ReferenceTime;

/** Arms VP `index`'s synthetic timer 0 as a one-shot direct-mode timer with `vector`, due at reference time `at`. */
function armDirect(lab: Lab, c: Child, at: number, vector = 0x60, index = 0): void {
  lab.ok('r1', HvCall.SetVpRegisters, { partitionId: c.id, vpIndex: index, values: { Stimer0Config: stimerConfig({ enable: true, direct: true, vector }), Stimer0Count: at } });
}
const stimerNext = (p: Partition, index = 0, t = 0): number => p.vpF64![((vpPageOffset(index) + VpPage.stimerNext) >> 3) + t];

async function until(f: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`${what} did not happen within ${ms} ms (a liveness bound)`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('faults the hypervisor enforces', function () {
  this.timeout(60000);
  before(function () {
    if (!shmAvailable()) this.skip();
  });

  describe('the property values (checked before anything changes)', () => {
    let lab: Lab;
    let link: LoopLink;
    beforeEach(() => ({ lab, link } = labWithLoop()));
    afterEach(() => lab.close());

    it('match the fault specs\' bounds (faults.ts), in µs', () => {
      expect(FAULT_MAX_INTERRUPT_DELAY_US).to.equal(FAULT_MAX_DELAY_MS * 1000);
      expect(FAULT_MAX_CLOCK_OFFSET_US).to.equal(CLOCK_MAX_OFFSET_MS * 1000);
      expect([FAULT_CLOCK_SKEW_MIN_PPM, FAULT_CLOCK_SKEW_MAX_PPM]).to.deep.equal([CLOCK_SKEW_MIN_PPM, CLOCK_SKEW_MAX_PPM]);
      expect(HV_SET_LPS_MAX_MS).to.equal(FAULT_MAX_MS);
    });

    it('refuse a negative delay or stall mask, out-of-range values, non-integers and unknown properties with an HV status, changing nothing', () => {
      const c = lab.child({ vps: 1 });
      const bad: Array<[number, unknown, string]> = [
        [PartitionProperty.FaultInterruptDelayUs, -1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultInterruptDelayUs, FAULT_MAX_INTERRUPT_DELAY_US + 1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultInterruptDelayUs, 1.5, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultInterruptDelayUs, '100', 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultInterruptDelayUs, null, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultInterruptDelayUs, { toString: 1, valueOf: 1 }, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultStalledVps, -1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultStalledVps, 2 ** 53, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultStalledVps, 2n ** 60n, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultClockOffsetUs, FAULT_MAX_CLOCK_OFFSET_US + 1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultClockOffsetUs, -FAULT_MAX_CLOCK_OFFSET_US - 1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultClockOffsetUs, NaN, 'INVALID_HYPERCALL_INPUT'],
        [PartitionProperty.FaultClockSkewPpm, FAULT_CLOCK_SKEW_MIN_PPM - 1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultClockSkewPpm, FAULT_CLOCK_SKEW_MAX_PPM + 1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.FaultClockSkewPpm, Infinity, 'INVALID_HYPERCALL_INPUT'],
        [0x00090099, 1, 'UNKNOWN_PROPERTY'],
        // Negative values are for the clock faults only.
        [PartitionProperty.CpuWeight, -5, 'PROPERTY_VALUE_OUT_OF_RANGE'],
        [PartitionProperty.Suspend, -1, 'PROPERTY_VALUE_OUT_OF_RANGE'],
      ];
      for (const [property, value, status] of bad) expect(propStatus(lab, c, property, value), `${property.toString(16)} = ${show(value)}`).to.equal(status);
      // A step back past reference time 0 (the partition is milliseconds old) is refused too.
      expect(propStatus(lab, c, PartitionProperty.FaultClockOffsetUs, -3_600_000_000)).to.equal('PROPERTY_VALUE_OUT_OF_RANGE');
      for (const property of [PartitionProperty.FaultInterruptDelayUs, PartitionProperty.FaultStalledVps, PartitionProperty.FaultClockOffsetUs, PartitionProperty.FaultClockSkewPpm]) {
        expect(getProp(lab, c, property)).to.equal(0);
      }
      expect(link.loop.core.get(c.id, 0)?.stalled).to.equal(false);
    });

    it('take the clock faults signed, as numbers or 64-bit integers, and read back what was set', () => {
      const c = lab.child({ vps: 1 });
      setProp(lab, c, PartitionProperty.FaultClockSkewPpm, FAULT_CLOCK_SKEW_MIN_PPM);
      expect(getProp(lab, c, PartitionProperty.FaultClockSkewPpm)).to.equal(FAULT_CLOCK_SKEW_MIN_PPM);
      setProp(lab, c, PartitionProperty.FaultClockSkewPpm, -250_000n);
      expect(getProp(lab, c, PartitionProperty.FaultClockSkewPpm)).to.equal(-250_000);
      setProp(lab, c, PartitionProperty.FaultClockOffsetUs, FAULT_MAX_CLOCK_OFFSET_US);
      setProp(lab, c, PartitionProperty.FaultInterruptDelayUs, FAULT_MAX_INTERRUPT_DELAY_US);
      setProp(lab, c, PartitionProperty.FaultStalledVps, Number.MAX_SAFE_INTEGER);
      expect(lab.hv.listPartitions().find((p) => p.id === c.id)?.faults).to.deep.equal({
        interruptDelayUs: FAULT_MAX_INTERRUPT_DELAY_US, stalledVps: Number.MAX_SAFE_INTEGER, clockOffsetUs: FAULT_MAX_CLOCK_OFFSET_US, clockSkewPpm: -250_000,
      });
    });

    it('only a parent sets them; nothing but 0 on a partition that is not Initialized; a child may read its own', () => {
      const c = lab.child({ vps: 1, privileges: ENLIGHTENED_CHILD_PRIVILEGES | (1n << 33n) });
      expect(hvStatusName(lab.hc(c.sid, HvCall.SetPartitionProperty, { partitionId: PARTITION_ID_SELF, property: PartitionProperty.FaultStalledVps, value: 0 }).status)).to.equal('ACCESS_DENIED');
      setProp(lab, c, PartitionProperty.FaultInterruptDelayUs, 10);
      expect(lab.ok(c.sid, HvCall.GetPartitionProperty, { partitionId: PARTITION_ID_SELF, property: PartitionProperty.FaultInterruptDelayUs })).to.deep.equal({ value: 10 });
      const { partitionId } = lab.ok('r1', HvCall.CreatePartition, { memoryBytes: 2 * MiB }) as { partitionId: number };
      const created = { id: partitionId, token: '', sid: '' };
      expect(propStatus(lab, created, PartitionProperty.FaultStalledVps, 1)).to.equal('INVALID_PARTITION_STATE');
      expect(propStatus(lab, created, PartitionProperty.FaultStalledVps, 0)).to.equal('SUCCESS');
    });

    it('random values never throw: each gets SUCCESS or a refusal, and a refused one changes nothing', () => {
      const c = lab.child({ vps: 2 });
      const props = [PartitionProperty.FaultInterruptDelayUs, PartitionProperty.FaultStalledVps, PartitionProperty.FaultClockOffsetUs, PartitionProperty.FaultClockSkewPpm];
      const value = fc.oneof(fc.integer(), fc.double(), fc.bigInt(), fc.string(), fc.constant(null), fc.constant(undefined), fc.boolean(), fc.constant({ toString: 1 }), fc.array(fc.integer()));
      fc.assert(fc.property(fc.constantFrom(...props, 0x00090000, 0x00090005), value, (property, v) => {
        const before = property >= 0x00090001 && property <= 0x00090004 ? getProp(lab, c, property) : null;
        const r = lab.hc('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property, value: v });
        expect(['SUCCESS', 'PROPERTY_VALUE_OUT_OF_RANGE', 'INVALID_HYPERCALL_INPUT', 'UNKNOWN_PROPERTY']).to.include(hvStatusName(r.status));
        if (r.status !== HvStatus.SUCCESS && before !== null) expect(getProp(lab, c, property)).to.equal(before);
        link.passNow();
      }), { numRuns: 500, seed: 13 });
    });
  });

  describe('FaultInterruptDelayUs', () => {
    let lab: Lab;
    let link: LoopLink;
    beforeEach(() => ({ lab, link } = labWithLoop()));
    afterEach(() => lab.close());

    const D_US = 5000;
    const D_NS = D_US * 1000;

    it('AssertVirtualInterrupt arrives the delay later (not a nanosecond sooner) while an undelayed partition gets it at once; the scheduler wakes for it', () => {
      const a = lab.child({ vps: 1 });
      const b = lab.child({ vps: 1 });
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, D_US);
      const t0 = link.now;
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: a.id, vpIndex: 0, vector: 0x40 });
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: b.id, vpIndex: 0, vector: 0x40 });
      expect(pending(part(lab, b), 0, 0x40), 'the undelayed partition').to.equal(true);
      expect(pending(part(lab, a), 0, 0x40), 'the delayed one, at once').to.equal(false);
      const deadline = link.pass(t0);
      expect(deadline, 'the scheduler sleeps no longer than until the interrupt is due').to.be.at.most(t0 + D_NS);
      link.pass(t0 + D_NS - 1);
      expect(pending(part(lab, a), 0, 0x40), 'a nanosecond before the delay').to.equal(false);
      link.pass(t0 + D_NS);
      expect(pending(part(lab, a), 0, 0x40), 'at the delay').to.equal(true);
      // The VP was not started; once it halts, the interrupt makes it ready as any other would.
      expect(link.loop.core.get(a.id, 0)?.halted).to.equal(false);
    });

    it('SynIC messages land in the slot at once but raise their SINT the delay later; events likewise; clearing the delay delivers what waits at once', () => {
      const a = synicChild(lab, 0x100);
      const b = synicChild(lab, 0x200);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, D_US);
      const t0 = link.now;
      for (const conn of [0x100, 0x200]) lab.ok('r1', HvCall.PostMessage, { connectionId: conn, messageType: 5, payload: Uint8Array.from([1]) });
      expect(part(lab, a).memoryView!.getUint32(simpGpa(0) + 2 * 256 + MsgHeader.type, true), 'the message is in its slot').to.equal(5);
      expect([pending(part(lab, a), 0, 0x30), pending(part(lab, b), 0, 0x30)]).to.deep.equal([false, true]);
      link.pass(t0 + D_NS - 1);
      expect(pending(part(lab, a), 0, 0x30)).to.equal(false);
      link.pass(t0 + D_NS);
      expect(pending(part(lab, a), 0, 0x30)).to.equal(true);

      const t1 = link.now;
      for (const conn of [0x101, 0x201]) lab.ok('r1', HvCall.SignalEvent, { connectionId: conn, flagNumber: 3 });
      expect([pending(part(lab, a), 0, 0x31), pending(part(lab, b), 0, 0x31)]).to.deep.equal([false, true]);
      link.pass(t1 + D_NS / 2);
      expect(pending(part(lab, a), 0, 0x31)).to.equal(false);
      // Cleared while the event's interrupt waits: it is pended right then, no pass needed.
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 0);
      expect(pending(part(lab, a), 0, 0x31), 'delivered when the delay was cleared').to.equal(true);
      // And from then on at once, as before the fault.
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: a.id, vpIndex: 0, vector: 0x41 });
      expect(pending(part(lab, a), 0, 0x41)).to.equal(true);
    });

    it('hands out no fast path (hypercall-thread route) for a delayed partition, and does again once it is cleared', () => {
      const a = synicChild(lab, 0x100);
      expect(lab.hv.signalRoute('r1', 0x101)).to.not.equal(null);
      expect(lab.hv.interruptRoute('r1', a.id, 0)).to.not.equal(null);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 1);
      expect(lab.hv.signalRoute('r1', 0x101)).to.equal(null);
      expect(lab.hv.interruptRoute('r1', a.id, 0)).to.equal(null);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 0);
      expect(lab.hv.signalRoute('r1', 0x101)).to.not.equal(null);
      expect(lab.hv.interruptRoute('r1', a.id, 0)).to.not.equal(null);
    });

    it('IPIs between its VPs arrive the delay later; the sender is not held up', () => {
      const a = lab.child({ vps: 2 });
      const p = part(lab, a);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, D_US);
      const t0 = link.now;
      Atomics.store(p.vpI32!, word(0, VpPage.icrVector), 0x50);
      Atomics.store(p.vpI32!, word(0, VpPage.icrTargetsLo), 0b10);
      Atomics.store(p.vpI32!, word(0, VpPage.icrBusy), 1);
      expect(link.pass(t0)).to.be.at.most(t0 + D_NS);
      expect(Atomics.load(p.vpI32!, word(0, VpPage.icrBusy)), 'the ICR is free again').to.equal(0);
      expect(pending(p, 1, 0x50)).to.equal(false);
      link.pass(t0 + D_NS - 1);
      expect(pending(p, 1, 0x50)).to.equal(false);
      link.pass(t0 + D_NS);
      expect(pending(p, 1, 0x50)).to.equal(true);
    });

    it('pushes a direct timer\'s expiration back by the delay, saves the true one, and brings it back when cleared', () => {
      const a = lab.child({ vps: 1 });
      const p = part(lab, a);
      const at = trueRef(p, hr()) + 36_000_000_000; // an hour ahead: it does not fire during the test
      armDirect(lab, a, at);
      link.passNow();
      expect(stimerNext(p)).to.equal(at);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 2_000_000);
      expect(stimerNext(p), 'pushed back by 2 s (in 100 ns units)').to.equal(at + 20_000_000);
      const saved = lab.ok('r1', HvCall.GetVpState, { partitionId: a.id, vpIndex: 0 }) as SavedVpStateV2;
      expect(saved.timers[0].nextExpiry, 'saved state holds the true expiration').to.equal(at);
      // Re-armed while the delay lasts: pushed back too.
      armDirect(lab, a, at + 1000);
      link.passNow();
      expect(stimerNext(p)).to.equal(at + 1000 + 20_000_000);
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 0);
      expect(stimerNext(p), 'back to its expiration').to.equal(at + 1000);
    });

    it('a VP waiting for its timer gets it the delay later than an undelayed partition armed the same way', async () => {
      const a = lab.child({ vps: 1 });
      const b = lab.child({ vps: 1 });
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 300_000);
      const soon = 200_000; // 20 ms of reference time
      armDirect(lab, a, trueRef(part(lab, a), hr()) + soon);
      armDirect(lab, b, trueRef(part(lab, b), hr()) + soon);
      let aAtB: boolean | null = null;
      await until(() => {
        link.passNow();
        if (aAtB === null && pending(part(lab, b), 0, 0x60)) aAtB = pending(part(lab, a), 0, 0x60);
        return pending(part(lab, a), 0, 0x60);
      }, 20000, 'the delayed timer');
      expect(aAtB, 'when the undelayed timer fired, the delayed one had not').to.equal(false);
      expect(pending(part(lab, b), 0, 0x60)).to.equal(true);
    });

    it('without a scheduler (private memory) the SINT notification is sent the delay later, and at once when the delay is cleared', async () => {
      const priv = new Lab({ memoryMode: 'private' });
      try {
        const mk = (conn: number): Child => {
          const c = priv.child({ vps: 1, privileges: ENLIGHTENED_CHILD_PRIVILEGES });
          priv.ok('r1', HvCall.MapGpaPages, { partitionId: c.id, gpaPage: simpGpa(0) / PAGE, pageCount: 1 });
          priv.ok('r1', HvCall.CreatePort, { partitionId: c.id, portId: 1, type: PortType.Message, sint: 2, vpIndex: 0 });
          priv.ok('r1', HvCall.ConnectPort, { partitionId: ROOT_PARTITION_ID, connectionId: conn, portPartitionId: c.id, portId: 1 });
          priv.ok(c.sid, HvCall.SetVpRegisters, { partitionId: PARTITION_ID_SELF, vpIndex: 0, values: { Scontrol: 1, Simp: synicPageRegister(simpGpa(0)), Sint2: 0x30 } });
          return c;
        };
        const a = mk(1);
        const b = mk(2);
        // Stalls and clock faults cannot be enforced without a scheduler: refused, not ignored.
        expect(propStatus(priv, a, PartitionProperty.FaultStalledVps, 1)).to.equal('INVALID_PARTITION_STATE');
        expect(propStatus(priv, a, PartitionProperty.FaultClockOffsetUs, 1)).to.equal('INVALID_PARTITION_STATE');
        setProp(priv, a, PartitionProperty.FaultInterruptDelayUs, 200_000);
        const sints = (c: Child): number => priv.notes.filter((n) => n.sid === c.sid && n.msg.k === 'sint').length;
        priv.ok('r1', HvCall.PostMessage, { connectionId: 1, messageType: 5, payload: Uint8Array.from([1]) });
        priv.ok('r1', HvCall.PostMessage, { connectionId: 2, messageType: 5, payload: Uint8Array.from([1]) });
        expect([sints(a), sints(b)], 'right after posting').to.deep.equal([0, 1]);
        await until(() => sints(a) === 1, 10000, 'the delayed notification');
        const m = priv.notes.find((n) => n.sid === a.sid && n.msg.k === 'sint')!.msg as Extract<HvServerMsg, { k: 'sint' }>;
        expect(new DataView(m.slot!.buffer, m.slot!.byteOffset).getUint32(MsgHeader.type, true), 'it carries its slot').to.equal(5);
        // One held back when the delay is cleared goes at once.
        priv.ok(a.sid, HvCall.SetVpRegisters, { partitionId: PARTITION_ID_SELF, vpIndex: 0, values: { Eom: 0 } });
        priv.ok('r1', HvCall.PostMessage, { connectionId: 1, messageType: 6, payload: Uint8Array.from([2]) });
        expect(sints(a)).to.equal(1);
        setProp(priv, a, PartitionProperty.FaultInterruptDelayUs, 0);
        expect(sints(a)).to.equal(2);
        // Deleting a partition drops what it still held back (no timer outlives it).
        setProp(priv, b, PartitionProperty.FaultInterruptDelayUs, 60_000_000);
        priv.ok(b.sid, HvCall.SetVpRegisters, { partitionId: PARTITION_ID_SELF, vpIndex: 0, values: { Eom: 0 } });
        priv.ok('r1', HvCall.PostMessage, { connectionId: 2, messageType: 7, payload: Uint8Array.from([3]) });
        expect(priv.hv.partition(b.id)!.delayedNotes.size).to.equal(1);
        const held = priv.hv.partition(b.id)!;
        priv.ok('r1', HvCall.FinalizePartition, { partitionId: b.id });
        priv.ok('r1', HvCall.DeletePartition, { partitionId: b.id });
        expect(held.delayedNotes.size).to.equal(0);
      } finally {
        priv.close();
      }
    });

    it('is gone with its partition: the scheduler forgets what it held back', () => {
      const a = lab.child({ vps: 1 });
      setProp(lab, a, PartitionProperty.FaultInterruptDelayUs, 1_000_000);
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: a.id, vpIndex: 0, vector: 0x40 });
      lab.ok('r1', HvCall.FinalizePartition, { partitionId: a.id });
      lab.ok('r1', HvCall.DeletePartition, { partitionId: a.id });
      expect(link.pass(link.now + 2_000 * MS)).to.equal(Infinity);
    });
  });

  describe('FaultStalledVps', () => {
    let lab: Lab;
    let link: LoopLink;
    beforeEach(() => ({ lab, link } = labWithLoop(2)));
    afterEach(() => lab.close());

    it('takes the stalled VP off its LP and keeps it off while the others run; clearing it dispatches it again', () => {
      const a = lab.child({ vps: 2 });
      const p = part(lab, a);
      startVp(p, 0);
      startVp(p, 1);
      link.pass();
      expect([dispatch(p, 0), dispatch(p, 1)]).to.deep.equal([Dispatch.Granted, Dispatch.Granted]);
      setProp(lab, a, PartitionProperty.FaultStalledVps, 0b01);
      link.pass(link.now + MS);
      expect([dispatch(p, 0), dispatch(p, 1)]).to.deep.equal([Dispatch.Preempt, Dispatch.Granted]);
      for (let i = 0; i < 20; i++) {
        ackPreemptions(p, 2);
        link.pass(link.now + 10 * MS);
        expect(dispatch(p, 0), `pass ${i}`).to.not.equal(Dispatch.Granted);
        expect(dispatch(p, 1), `pass ${i}`).to.equal(Dispatch.Granted);
      }
      expect(link.loop.core.get(a.id, 0)?.shownState).to.equal('Suspended');
      // An interrupt for it waits in its APIC meanwhile.
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: a.id, vpIndex: 0, vector: 0x40 });
      link.pass(link.now + MS);
      expect(dispatch(p, 0)).to.not.equal(Dispatch.Granted);
      setProp(lab, a, PartitionProperty.FaultStalledVps, 0);
      link.pass(link.now + MS);
      expect([dispatch(p, 0), dispatch(p, 1)]).to.deep.equal([Dispatch.Granted, Dispatch.Granted]);
      expect(pending(p, 0, 0x40)).to.equal(true);
    });

    it('covers a VP created after it was set, and only the VPs in the mask (another partition is not touched)', () => {
      const a = lab.child({ vps: 1 });
      const b = lab.child({ vps: 1 });
      setProp(lab, a, PartitionProperty.FaultStalledVps, 2 ** 52 + 0b100);
      lab.ok('r1', HvCall.CreateVp, { partitionId: a.id, vpIndex: 2 });
      lab.ok('r1', HvCall.CreateVp, { partitionId: a.id, vpIndex: 52 });
      for (const i of [0, 2, 52]) startVp(part(lab, a), i);
      startVp(part(lab, b), 0);
      for (let i = 0; i < 10; i++) {
        ackPreemptions(part(lab, a), 53);
        ackPreemptions(part(lab, b), 1);
        link.pass(link.now + 20 * MS);
      }
      const core = link.loop.core;
      expect([core.get(a.id, 0)!.stalled, core.get(a.id, 2)!.stalled, core.get(a.id, 52)!.stalled, core.get(b.id, 0)!.stalled]).to.deep.equal([false, true, true, false]);
      expect([core.get(a.id, 2)!.dispatches, core.get(a.id, 52)!.dispatches]).to.deep.equal([0, 0]);
      expect(core.get(a.id, 0)!.dispatches).to.be.above(0);
      expect(core.get(b.id, 0)!.dispatches).to.be.above(0);
    });
  });

  describe('FaultClockOffsetUs and FaultClockSkewPpm', () => {
    let lab: Lab;
    let link: LoopLink;
    beforeEach(() => ({ lab, link } = labWithLoop()));
    afterEach(() => lab.close());

    const HOUR = 36_000_000_000; // 100 ns units

    it('an offset steps the time the guest reads, GetVpRegisters(ReferenceTime) and the timers by the same amount; clearing it returns to true time', () => {
      const a = lab.child({ vps: 1 });
      const p = part(lab, a);
      const guest = new ReferenceClockView(p.vpRegion!); // what the guest's ReferenceClock reads
      const h = hr();
      expect(guest.now(h)).to.equal(trueRef(p, h));
      armDirect(lab, a, trueRef(p, hr()) + HOUR);
      link.passNow();
      expect(pending(p, 0, 0x60), 'an hour early').to.equal(false);

      setProp(lab, a, PartitionProperty.FaultClockOffsetUs, 2 * 3_600_000_000);
      expect(guest.now(h), 'the guest reads true time + 2 h').to.equal(trueRef(p, h) + 2 * HOUR);
      const h0 = hr();
      const r = refRegister(lab, a);
      const h1 = hr();
      expect(r).to.be.within(trueRef(p, h0) + 2 * HOUR, trueRef(p, h1) + 2 * HOUR);
      link.passNow();
      expect(pending(p, 0, 0x60), 'the timer an hour ahead came due').to.equal(true);
      const saved = lab.ok('r1', HvCall.GetVpState, { partitionId: a.id, vpIndex: 0 }) as SavedVpStateV2;
      const h2 = hr();
      expect(saved.referenceTime, 'saved state holds the true reference time').to.be.within(trueRef(p, h1), trueRef(p, h2));

      setProp(lab, a, PartitionProperty.FaultClockOffsetUs, 0);
      expect(guest.now(h)).to.equal(trueRef(p, h));
      const h3 = hr();
      const r2 = refRegister(lab, a);
      expect(r2).to.be.within(trueRef(p, h3), trueRef(p, hr()));
    });

    it('a negative offset steps time back (at most to 0), and a restored VM keeps the step on top of its restored time', () => {
      const a = lab.child({ vps: 1 });
      const p = part(lab, a);
      const guest = new ReferenceClockView(p.vpRegion!);
      const state = lab.ok('r1', HvCall.GetVpState, { partitionId: a.id, vpIndex: 0 }) as SavedVpStateV2;
      // The VM restored as if it had run an hour.
      lab.ok('r1', HvCall.SetVpState, { partitionId: a.id, vpIndex: 0, state: { ...state, referenceTime: HOUR } });
      setProp(lab, a, PartitionProperty.FaultClockOffsetUs, -600_000_000); // 10 min back
      const h = hr();
      expect(guest.now(h)).to.equal(trueRef(p, h) - HOUR / 6);
      expect(trueRef(p, h)).to.be.at.least(HOUR);
      lab.ok('r1', HvCall.SetVpState, { partitionId: a.id, vpIndex: 0, state: { ...state, referenceTime: 2 * HOUR } });
      const h2 = hr();
      expect(trueRef(p, h2)).to.be.within(2 * HOUR, 2 * HOUR + Number((h2 - h) / 100n));
      expect(guest.now(h2), 'still 10 min behind the restored true time').to.equal(trueRef(p, h2) - HOUR / 6);
      expect(getProp(lab, a, PartitionProperty.FaultClockOffsetUs)).to.equal(-600_000_000);
    });

    it('a skew makes reference time run (1 + ppm/10^6) times as fast from the moment it is set, for every reader; clearing it returns to true time', () => {
      const a = lab.child({ vps: 1 });
      const p = part(lab, a);
      const guest = new ReferenceClockView(p.vpRegion!);
      for (const ppm of [500_000, FAULT_CLOCK_SKEW_MIN_PPM, FAULT_CLOCK_SKEW_MAX_PPM]) {
        setProp(lab, a, PartitionProperty.FaultClockSkewPpm, ppm);
        const since = guest.words().skewSinceNs;
        expect(since).to.equal(p.faults.clockSkewSinceNs);
        // One second of host time after it was set: true time + ppm µs.
        const h = since + 1_000_000_000n;
        expect(guest.now(h), `${ppm} ppm`).to.equal(trueRef(p, h) + ppm * 10);
        expect(guest.now(since), 'no jump when it is set').to.equal(trueRef(p, since));
        const expected = (x: bigint): number => Number((x - p.refBaseNs + ((x - since) * BigInt(ppm)) / 1_000_000n) / 100n);
        const h0 = hr();
        const r = refRegister(lab, a);
        expect(r).to.be.within(expected(h0), expected(hr()));
      }
      setProp(lab, a, PartitionProperty.FaultClockSkewPpm, 0);
      const h = hr() + 5_000_000_000n;
      expect(guest.now(h)).to.equal(trueRef(p, h));
    });

    it('a step moves armed periodic timers with it (they keep their period) but not one-shot deadlines; saved state holds them in true time', () => {
      const a = lab.child({ vps: 1 });
      const p = part(lab, a);
      const oneShotAt = trueRef(p, hr()) + HOUR;
      armDirect(lab, a, oneShotAt);
      const period = 10_000_000; // 1 s
      lab.ok('r1', HvCall.SetVpRegisters, { partitionId: a.id, vpIndex: 0, values: { Stimer1Config: stimerConfig({ enable: true, periodic: true, direct: true, vector: 0x61 }), Stimer1Count: period } });
      link.passNow();
      const first = stimerNext(p, 0, 1);
      expect(first - trueRef(p, hr())).to.be.within(0, period);
      setProp(lab, a, PartitionProperty.FaultClockOffsetUs, 3_600_000_000); // an hour forward
      expect(stimerNext(p, 0, 1), 'the periodic timer stepped forward too').to.equal(first + HOUR);
      expect(stimerNext(p, 0, 0), 'the one-shot deadline stayed').to.equal(oneShotAt);
      const saved = lab.ok('r1', HvCall.GetVpState, { partitionId: a.id, vpIndex: 0 }) as SavedVpStateV2;
      expect(saved.timers[1].nextExpiry, 'saved in true time').to.be.closeTo(first, 1);
      expect(saved.timers[0].nextExpiry).to.equal(oneShotAt);
      // Restored onto the same (still faulted) partition: back into its time.
      lab.ok('r1', HvCall.SetVpState, { partitionId: a.id, vpIndex: 0, state: saved });
      expect(stimerNext(p, 0, 1)).to.be.closeTo(first + HOUR, 2);
      setProp(lab, a, PartitionProperty.FaultClockOffsetUs, 0);
      expect(stimerNext(p, 0, 1), 'and back again when cleared').to.be.closeTo(first, 2);
      // A skew's product is a step when the skew is cleared (or replaced).
      setProp(lab, a, PartitionProperty.FaultClockSkewPpm, 1_000_000);
      const before = stimerNext(p, 0, 1);
      const since = p.faults.clockSkewSinceNs;
      setProp(lab, a, PartitionProperty.FaultClockSkewPpm, 0);
      const steppedBack = before - stimerNext(p, 0, 1);
      expect(steppedBack, 'stepped back by what the skew had added').to.be.at.least(0);
      expect(steppedBack).to.be.at.most(Number((hr() - since) / 100n));
      expect(stimerNext(p, 0, 0)).to.equal(oneShotAt);
    });

    it('the scheduler sleeps until a skewed partition\'s timer at the skewed rate (11 times as fast: an eleventh of the host time)', () => {
      const a = lab.child({ vps: 1 });
      const b = lab.child({ vps: 1 });
      setProp(lab, a, PartitionProperty.FaultClockSkewPpm, FAULT_CLOCK_SKEW_MAX_PPM);
      // Each alone, so each pass's deadline is its timer's.
      const deadlineFor = (c: Child): { wait: number; elapsed: number } => {
        const g = new ReferenceClockView(part(lab, c).vpRegion!);
        const h0 = hr();
        armDirect(lab, c, g.now(h0) + 10_000_000); // 1 s of its reference time ahead
        const now = Number(hr());
        const deadline = link.pass(now);
        const elapsed = Number(hr() - h0);
        lab.ok('r1', HvCall.SetVpRegisters, { partitionId: c.id, vpIndex: 0, values: { Stimer0Config: 0 } });
        link.passNow();
        return { wait: deadline - now, elapsed };
      };
      const fast = deadlineFor(a);
      const plain = deadlineFor(b);
      // Bounds from the time the arming and the pass took (and 100 ns of rounding), no clock thresholds.
      expect(fast.wait).to.be.within(1e9 / 11 - fast.elapsed - 20, 1e9 / 11 + 20);
      expect(plain.wait).to.be.within(1e9 - plain.elapsed - 200, 1e9 + 200);
    });
  });

  describe('setLps (the root\'s LP-shrink control op)', () => {
    let lab: Lab;
    let link: LoopLink;
    beforeEach(() => ({ lab, link } = labWithLoop(2)));
    afterEach(() => lab.close());

    const stats = (): { lps: number; lpsBoot: number; lpsCurrent: number; lpShrink: { lps: number; remainingMs: number } | null } =>
      lab.hv.control('r1', 'stats') as { lps: number; lpsBoot: number; lpsCurrent: number; lpShrink: { lps: number; remainingMs: number } | null };
    const granted = (p: Partition, vps: number): number => Array.from({ length: vps }, (_, i) => dispatch(p, i)).filter((d) => d === Dispatch.Granted).length;

    it('preempts the VPs on the LPs taken away and runs them on the rest, then restores the boot count by itself after forMs', async () => {
      const a = lab.child({ vps: 2 });
      const p = part(lab, a);
      startVp(p, 0);
      startVp(p, 1);
      link.pass();
      expect(granted(p, 2)).to.equal(2);
      expect(stats()).to.deep.include({ lps: 2, lpsBoot: 2, lpsCurrent: 2, lpShrink: null });
      const r = lab.hv.control('r1', 'setLps', { lps: 1, forMs: 300 }) as { ok: boolean; lpsCurrent: number };
      expect(r).to.deep.include({ ok: true, lpsCurrent: 1 });
      expect(stats()).to.deep.include({ lpsBoot: 2, lpsCurrent: 1 });
      expect(stats().lpShrink?.lps).to.equal(1);
      const onLp1 = link.loop.core.get(a.id, 0)!.lp === 1 ? 0 : 1;
      expect(link.loop.core.get(a.id, onLp1)!.lp).to.equal(1);
      link.pass(link.now + MS);
      expect(dispatch(p, onLp1), 'the VP on LP 1 is asked to leave').to.equal(Dispatch.Preempt);
      expect(dispatch(p, 1 - onLp1), 'the VP on LP 0 stays').to.equal(Dispatch.Granted);
      const before = [link.loop.core.get(a.id, 0)!.dispatches, link.loop.core.get(a.id, 1)!.dispatches];
      for (let i = 0; i < 30; i++) {
        ackPreemptions(p, 2);
        link.pass(link.now + 5 * MS);
        expect(granted(p, 2), `pass ${i}: one LP`).to.be.at.most(1);
        expect(link.loop.core.get(a.id, 0)!.lp === 1 || link.loop.core.get(a.id, 1)!.lp === 1, 'nothing on LP 1').to.equal(false);
      }
      const after = [link.loop.core.get(a.id, 0)!.dispatches, link.loop.core.get(a.id, 1)!.dispatches];
      expect(after[0] - before[0], 'VP 0 ran on the remaining LP').to.be.above(0);
      expect(after[1] - before[1], 'VP 1 ran on the remaining LP').to.be.above(0);
      // Nobody restores it: the hypervisor's own timer does.
      await until(() => stats().lpsCurrent === 2, 10000, 'the LPs coming back');
      expect(stats().lpShrink).to.equal(null);
      ackPreemptions(p, 2);
      link.pass(link.now + 5 * MS);
      ackPreemptions(p, 2);
      link.pass(link.now + 5 * MS);
      expect(granted(p, 2), 'both run again').to.equal(2);
    });

    it('restores at once with lps = the boot count or forMs 0, and a new shrink replaces the one in force', () => {
      const a = lab.child({ vps: 2 });
      lab.hv.control('r1', 'setLps', { lps: 1, forMs: 60_000 });
      expect(link.loop.core.activeLps).to.equal(1);
      lab.hv.control('r1', 'setLps', { lps: 2, forMs: 60_000 });
      expect([stats().lpsCurrent, link.loop.core.activeLps, stats().lpShrink]).to.deep.equal([2, 2, null]);
      lab.hv.control('r1', 'setLps', { lps: 1, forMs: 60_000 });
      lab.hv.control('r1', 'setLps', { lps: 1, forMs: 0 });
      expect([stats().lpsCurrent, link.loop.core.activeLps]).to.deep.equal([2, 2]);
      lab.hv.control('r1', 'setLps', { lps: 1, forMs: 60_000 });
      lab.hv.control('r1', 'setLps', { lps: 1, forMs: 50 });
      expect(stats().lpShrink!.remainingMs).to.be.at.most(50);
      expect(a.id).to.be.above(1);
    });

    it('refuses bad arguments, a child, and a host without a scheduler with {error}, changing nothing', () => {
      const c = lab.child({ vps: 1 });
      for (const args of [undefined, null, {}, { lps: 0, forMs: 10 }, { lps: 3, forMs: 10 }, { lps: 1, forMs: -1 }, { lps: 1.5, forMs: 10 }, { lps: 1, forMs: 0.5 },
        { lps: 1 }, { forMs: 10 }, { lps: 1, forMs: 10, x: 1 }, { lps: '1', forMs: 10 }, { lps: 1, forMs: HV_SET_LPS_MAX_MS + 1 }, [1, 10], 7]) {
        const r = lab.hv.control('r1', 'setLps', args) as { error?: string };
        expect(r.error, show(args)).to.be.a('string');
      }
      expect((lab.hv.control(c.sid, 'setLps', { lps: 1, forMs: 10 }) as { error?: string }).error).to.match(/only the root/);
      expect((lab.hv.control('r1', 'stats', { lps: 1 }) as { error?: string }).error).to.match(/takes no arguments/);
      expect([stats().lpsCurrent, link.loop.core.activeLps]).to.deep.equal([2, 2]);
      const priv = new Lab({ memoryMode: 'private' });
      try {
        expect((priv.hv.control('r1', 'setLps', { lps: 1, forMs: 10 }) as { error?: string }).error).to.match(/schedules no VPs/);
      } finally {
        priv.close();
      }
    });

    it('in the policy: with fewer active LPs only those are granted, and a VP on a removed one is preempted', () => {
      const core = new SchedulerCore({ lps: 3 });
      const t = 1_000_000_000;
      const vps = [0, 1, 2].map((i) => core.add(9, i, { weight: 100, reserve: 0, cap: 1, suspended: false }, t));
      for (const v of vps) core.wake(v, t);
      expect(core.tick(t).grant.map((g) => g.lp).sort()).to.deep.equal([0, 1, 2]);
      core.setActiveLps(1);
      const d = core.tick(t + MS);
      expect(d.preempt.map((v) => v.lp).sort()).to.deep.equal([1, 2]);
      for (const v of d.preempt) core.released(v, t + 2 * MS, 'preempted');
      const d2 = core.tick(t + 3 * MS);
      expect(d2.grant).to.deep.equal([]);
      expect(core.lpOwners().filter((o) => o !== null).length).to.equal(1);
      core.setActiveLps(99); // clamped to the boot count
      expect(core.activeLps).to.equal(3);
      expect(core.tick(t + 4 * MS).grant.map((g) => g.lp).sort()).to.deep.equal([1, 2]);
    });
  });

  describe('over the socket, with the real scheduler and hypercall threads', () => {
    let dir: string;
    let hostId: string;
    let server: HypervisorServer;
    let token: string;
    const clients: HvClient[] = [];
    beforeEach(async () => {
      dir = mkdtempSync(join(tmpdir(), 'hvlab-faults-'));
      hostId = `fl${randomBytes(3).toString('hex')}`;
      server = new HypervisorServer({ hostId, lps: 2 });
      await server.bind(`ipc://${join(dir, 'hv')}`);
      void server.serve();
      token = server.hv.rotateRootToken();
    });
    afterEach(async () => {
      for (const c of clients.splice(0)) c.close();
      await server.close('test');
      rmSync(dir, { recursive: true, force: true });
      for (const f of readdirSync('/dev/shm')) if (f.startsWith(`hvlab-${hostId}-`)) rmSync(join('/dev/shm', f), { force: true });
      expect(readdirSync('/dev/shm').filter((f) => f.startsWith(`hvlab-${hostId}-`))).to.deep.equal([]);
    });
    async function root(opts: { noPage?: boolean } = {}): Promise<HvClient> {
      const c = new HvClient(`ipc://${join(dir, 'hv')}`, () => {}, opts);
      clients.push(c);
      await c.connect({ partitionId: 1, token, role: 'test', vm: null });
      return c;
    }

    it('HvClient.setLps shrinks the host\'s LPs, stats shows current and boot counts, and the hypervisor restores them by itself', async () => {
      const c = await root();
      const r = await c.setLps(1, 400);
      expect(r).to.deep.include({ lpsBoot: 2, lpsCurrent: 1 });
      const s = (await c.ctl('stats')) as { lps: number; lpsBoot: number; lpsCurrent: number };
      expect([s.lps, s.lpsBoot, s.lpsCurrent]).to.deep.equal([2, 2, 1]);
      const e = await c.setLps(3, 100).then(() => null, (x: Error) => x);
      expect(e?.message).to.match(/refused setLps: lps must be from 1 to the host's 2/);
      // Arguments the wire decoder refuses never reach the hypervisor: the request fails with the reason.
      const bad = await c.ctl('setLps', { lps: 1, forMs: -5 }).then(() => null, (x: Error) => x);
      expect(bad?.message).to.match(/forMs/);
      await until(async () => ((await c.ctl('stats')) as { lpsCurrent: number }).lpsCurrent === 2, 10000, 'the LPs coming back');
    });

    it('a GetVpState sent right behind a Suspend through the page, with its number, is answered once the scheduler has taken it (one wait for every VP)', async () => {
      const c = await root();
      const { partitionId } = await c.must<{ partitionId: number }>('CreatePartition', { memoryBytes: 2 * MiB, name: 's' });
      await c.must('InitializePartition', { partitionId });
      for (let vpIndex = 0; vpIndex < 3; vpIndex++) await c.must('CreateVp', { partitionId, vpIndex });
      const p = server.hv.partition(partitionId)!;
      const input = { partitionId, property: PartitionProperty.Suspend, value: 1 };
      const socket0 = c.counts.socket;
      const page0 = c.counts.page;
      // As the VMWP's freeze makes it: the Suspend through the page, the reads right behind it, one
      // at a time through the page too (the first waits there until the suspension is taken).
      const suspending = c.must<{ seq: number }>('SetPartitionProperty', input);
      const states = Promise.all([0, 1, 2].map((vpIndex) => c.must<SavedVpStateV2>('GetVpState', { partitionId, vpIndex, afterSuspension: 1 })));
      expect((await suspending).seq).to.equal(1);
      // Answered after the scheduler's pass took the suspension (no VP thread runs here: each VP is absent).
      expect((await states).map((s) => s.runState)).to.deep.equal(['Absent', 'Absent', 'Absent']);
      expect(Atomics.load(p.vpI32!, VpRegionHeader.suspendTaken >> 2)).to.equal(1);
      expect([c.counts.socket - socket0, c.counts.page - page0], 'socket calls, page calls').to.deep.equal([0, 4]);
      // A number that is not the partition's is refused at once: the status through the page, the reason too over the socket.
      const wrong = await c.raw(HvCall.GetVpState, { partitionId, vpIndex: 0, afterSuspension: 5 });
      expect(hvStatusName(wrong.status)).to.equal('INVALID_PARTITION_STATE');
      const viaSocket = await root({ noPage: true });
      const said = await viaSocket.raw(HvCall.GetVpState, { partitionId, vpIndex: 0, afterSuspension: 5 });
      expect([hvStatusName(said.status), (said.output as { reason: string }).reason]).to.deep.equal(['INVALID_PARTITION_STATE', 'suspension 5 is not the partition\'s current one (that is 1)']);
    });

    it('a Suspend through the page of a partition the session built through it is served by the scheduler thread, the main thread\'s view following; others go to the main thread as before', async () => {
      const c = await root();
      const { partitionId } = await c.must<{ partitionId: number }>('CreatePartition', { memoryBytes: 2 * MiB, name: 'q' });
      await c.must('InitializePartition', { partitionId });
      await c.must('CreateVp', { partitionId, vpIndex: 0 });
      const p = server.hv.partition(partitionId)!;
      const viaSocket = await root({ noPage: true });
      const pages = async (): Promise<{ fastCalls: number; forwarded: number }> => ((await viaSocket.ctl('stats')) as { hypercallPages: { fastCalls: number; forwarded: number } }).hypercallPages;
      const suspended = async (): Promise<unknown> => (await viaSocket.must<{ value: number }>('GetPartitionProperty', { partitionId, property: PartitionProperty.Suspend })).value;
      const suspend = (client: typeof c, value: number): Promise<HypercallResult> => client.raw(HvCall.SetPartitionProperty, { partitionId, property: PartitionProperty.Suspend, value });
      let s0 = await pages();
      const on = await suspend(c, 1);
      let s1 = await pages();
      expect([hvStatusName(on.status), s1.fastCalls - s0.fastCalls, s1.forwarded - s0.forwarded], 'status, served there, forwarded').to.deep.equal(['SUCCESS', 1, 0]);
      const seq = (on.output as { seq: number }).seq;
      expect(seq).to.equal(Atomics.load(p.vpI32!, VpRegionHeader.suspendAsked >> 2));
      // The main thread knows before it answers a later call, over the socket too (asked at once:
      // the thread's message may still wait in the port, which the socket call takes first).
      expect(await suspended()).to.equal(1);
      expect([p.suspended, p.suspendSeq]).to.deep.equal([true, seq]);
      await until(() => Atomics.load(p.vpI32!, VpRegionHeader.suspendTaken >> 2) === seq, 10000, 'the suspension taken');
      // Suspending what is suspended changes nothing and answers no number, as there.
      s0 = await pages();
      const again = await suspend(c, 1);
      s1 = await pages();
      expect([hvStatusName(again.status), again.output ?? null, s1.fastCalls - s0.fastCalls]).to.deep.equal(['SUCCESS', null, 1]);
      const states = await c.must<SavedVpStateV2>('GetVpState', { partitionId, vpIndex: 0, afterSuspension: seq });
      expect(states.runState).to.equal('Absent');
      // A value the property does not take goes to the main thread, which refuses it as before.
      s0 = await pages();
      const bad = await suspend(c, 2);
      s1 = await pages();
      expect([hvStatusName(bad.status), s1.forwarded - s0.forwarded]).to.deep.equal(['PROPERTY_VALUE_OUT_OF_RANGE', 1]);
      // The resume is served there too.
      s0 = await pages();
      const off = await suspend(c, 0);
      s1 = await pages();
      expect([hvStatusName(off.status), off.output ?? null, await suspended(), p.suspendSeq, s1.fastCalls - s0.fastCalls]).to.deep.equal(['SUCCESS', null, 0, 0, 1]);
      // A session that did not build the partition: its Suspend goes to the main thread, and the numbers go on.
      const other = await root();
      s0 = await pages();
      const theirs = await suspend(other, 1);
      s1 = await pages();
      expect([hvStatusName(theirs.status), (theirs.output as { seq: number }).seq, s1.forwarded - s0.forwarded, s1.fastCalls - s0.fastCalls]).to.deep.equal(['SUCCESS', seq + 1, 1, 0]);
      expect(await suspended()).to.equal(1);
    });

    it('a delayed partition\'s SignalEvent through the hypercall page is not taken by the fast path, and its interrupt arrives only after the delay', async function () {
      if (!wordWatchAvailable()) this.skip();
      const c = await root();
      const { partitionId } = await c.must<{ partitionId: number }>('CreatePartition', { memoryBytes: 2 * MiB, name: 'f' });
      await c.must('InitializePartition', { partitionId });
      await c.must('CreateVp', { partitionId, vpIndex: 0 });
      await c.must('MapGpaPages', { partitionId, gpaPage: siefpGpa(0) / PAGE, pageCount: 1 });
      await c.must('SetVpRegisters', { partitionId, vpIndex: 0, values: { Scontrol: 1, Siefp: synicPageRegister(siefpGpa(0)), Sint3: 0x31 } });
      await c.must('CreatePort', { partitionId, portId: 9, type: PortType.Event, vpIndex: 0, sint: 3, flagCount: 8 });
      await c.must('ConnectPort', { partitionId: 1, connectionId: 0x900, portPartitionId: partitionId, portId: 9 });
      const p = server.hv.partition(partitionId)!;
      const apic = new VirtualApicView(p.vpI32!, vpPageOffset(0));
      const flags = new Int32Array(p.memory!, siefpGpa(0) + 3 * 256, 1);
      const take = (): void => {
        Atomics.store(flags, 0, 0);
        apic.accept(0x31);
        apic.eoi();
      };
      // Baseline: undelayed, the interrupt is pending when the call returns (twice: the second goes the fast path).
      for (let i = 0; i < 2; i++) {
        await c.must('SignalEvent', { connectionId: 0x900, flagNumber: 1 });
        expect(apic.pending(0x31), `undelayed signal ${i}`).to.equal(true);
        take();
      }
      const stats = async (): Promise<{ fastCalls: number; forwarded: number }> => ((await c.ctl('stats')) as { hypercallPages: { fastCalls: number; forwarded: number } }).hypercallPages;
      await c.must('SetPartitionProperty', { partitionId, property: PartitionProperty.FaultInterruptDelayUs, value: 1_500_000 });
      const fast0 = (await stats()).fastCalls;
      await c.must('SignalEvent', { connectionId: 0x900, flagNumber: 1 });
      expect(Atomics.load(flags, 0) & 2, 'the flag is set').to.equal(2);
      expect(apic.pending(0x31), 'not yet: 1.5 s of delay').to.equal(false);
      expect((await stats()).fastCalls, 'no fast path served it').to.equal(fast0);
      await until(() => apic.pending(0x31), 20000, 'the delayed interrupt');
      take();
      // Cleared: at once again.
      await c.must('SetPartitionProperty', { partitionId, property: PartitionProperty.FaultInterruptDelayUs, value: 0 });
      await c.must('SignalEvent', { connectionId: 0x900, flagNumber: 1 });
      expect(apic.pending(0x31)).to.equal(true);
    });
  });
});

describe('the first dispatch of a VP, on the hosts\' shared clock (VpPage.firstRunNs)', () => {
  it('is the time of the pass that first grants the VP its LP, and later dispatches leave it', () => {
    const { lab, link } = labWithLoop(1);
    try {
      const c = lab.child({ vps: 2 });
      const p = part(lab, c);
      const firstRun = (i: number): number => p.vpF64![(vpPageOffset(i) + VpPage.firstRunNs) >> 3]!;
      link.pass(link.now + MS);
      expect([firstRun(0), firstRun(1)], 'not dispatched: not asked for an LP').to.deep.equal([0, 0]);
      startVp(p, 0);
      startVp(p, 1);
      const t1 = link.now + MS;
      link.pass(t1);
      // One LP: one VP runs, the other waits for it.
      const ran = dispatch(p, 0) === Dispatch.Granted ? 0 : 1;
      expect(dispatch(p, ran)).to.equal(Dispatch.Granted);
      expect(firstRun(ran)).to.equal(t1);
      expect(firstRun(1 - ran), 'the VP waiting for the LP has not run').to.equal(0);
      // Its quantum ends: the other runs, and a later grant to the first leaves its first run as it was.
      let t2 = 0;
      for (let i = 0; i < 50 && firstRun(1 - ran) === 0; i++) {
        ackPreemptions(p, 2);
        t2 = link.now + 10 * MS;
        link.pass(t2);
      }
      expect(firstRun(1 - ran), 'the other VP ran at the pass that granted it').to.equal(t2);
      for (let i = 0; i < 20; i++) {
        ackPreemptions(p, 2);
        link.pass(link.now + 10 * MS);
      }
      expect(link.loop.core.get(c.id, ran)!.dispatches).to.be.above(1);
      expect(firstRun(ran)).to.equal(t1);
    } finally {
      lab.close();
    }
  });
});

describe('suspensions numbered in the VP region (a save waits for its own)', () => {
  it('each Suspend that suspends is numbered before it is answered; the scheduler marks it taken after its next pass', () => {
    const { lab, link } = labWithLoop();
    try {
      const c = lab.child({ vps: 1 });
      const p = part(lab, c);
      const asked = (): number => Atomics.load(p.vpI32!, VpRegionHeader.suspendAsked >> 2);
      const taken = (): number => Atomics.load(p.vpI32!, VpRegionHeader.suspendTaken >> 2);
      startVp(p, 0);
      link.passNow();
      setProp(lab, c, PartitionProperty.Suspend, 1);
      expect([asked(), taken()]).to.deep.equal([1, 0]);
      link.passNow();
      expect(taken()).to.equal(1);
      // Suspended already: no new number.
      setProp(lab, c, PartitionProperty.Suspend, 1);
      expect(asked()).to.equal(1);
      setProp(lab, c, PartitionProperty.Suspend, 0);
      link.passNow();
      setProp(lab, c, PartitionProperty.Suspend, 1);
      expect([asked(), taken()]).to.deep.equal([2, 1]);
      link.passNow();
      expect(taken()).to.equal(2);
    } finally {
      lab.close();
    }
  });

  it('Suspend of a scheduled partition sends its sessions no note (its VP region says it); one without a VP region is told', () => {
    const { lab } = labWithLoop();
    try {
      const c = lab.child({ vps: 1 });
      expect(lab.hv.partition(c.id)?.vpRegion, 'scheduled').to.not.equal(null);
      lab.ok('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property: PartitionProperty.Suspend, value: 1 });
      expect(lab.hv.partition(c.id)?.suspended).to.equal(true);
      expect(Atomics.load(new Int32Array(lab.hv.partition(c.id)!.vpRegion!), VpRegionHeader.suspendAsked >> 2), 'the number is in the region').to.equal(1);
      lab.ok('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property: PartitionProperty.Suspend, value: 0 });
      expect(lab.notes.filter((n) => n.msg.k === 'suspend')).to.deep.equal([]);
    } finally {
      lab.close();
    }
    // The same calls without a scheduler: the partition has no VP region, and its session hears of each change.
    const plain = new Lab();
    try {
      const c = plain.child({ vps: 1 });
      expect(plain.hv.partition(c.id)?.vpRegion ?? null, 'not scheduled').to.equal(null);
      plain.ok('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property: PartitionProperty.Suspend, value: 1 });
      plain.ok('r1', HvCall.SetPartitionProperty, { partitionId: c.id, property: PartitionProperty.Suspend, value: 0 });
      expect(plain.notes.filter((n) => n.msg.k === 'suspend').map((n) => n.msg)).to.deep.equal([{ k: 'suspend', suspended: true }, { k: 'suspend', suspended: false }]);
    } finally {
      plain.close();
    }
  });

  it('GetVpState with afterSuspension waits until the scheduler has taken that suspension, and refuses a number that is not the partition\'s', () => {
    const { lab, link } = labWithLoop();
    try {
      const c = lab.child({ vps: 2 });
      const p = part(lab, c);
      startVp(p, 0);
      startVp(p, 1);
      link.passNow();
      // As the socket's server makes it (mayWait); without mayWait the call never waits.
      const get = (after: unknown, mayWait = true) => lab.hv.hypercall('r1', HvCall.GetVpState, { partitionId: c.id, vpIndex: 1, afterSuspension: after }, mayWait ? { mayWait: true } : {});
      const status = (after: unknown, mayWait = true): string => hvStatusName(get(after, mayWait).status);
      // Running: there is no suspension to wait for.
      expect(status(1)).to.equal('INVALID_PARTITION_STATE');
      setProp(lab, c, PartitionProperty.Suspend, 1);
      for (const bad of [0, 2 ** 31, -(2 ** 31) - 1]) expect(status(bad), `afterSuspension ${bad}`).to.equal('INVALID_PARAMETER');
      for (const bad of [1.5, 'x', [1], {}]) expect(status(bad), `afterSuspension ${show(bad)}`).to.equal('INVALID_HYPERCALL_INPUT');
      expect(status(2), 'a number the partition has not had').to.equal('INVALID_PARTITION_STATE');
      // Asked, not yet taken: the answer waits (the server makes the call again once it is taken).
      const w = get(1);
      expect([hvStatusName(w.status), w.output]).to.deep.equal(['SUCCESS', null]);
      expect(w.wait && { seq: w.wait.seq, vpCount: w.wait.vpCount, region: w.wait.vpRegion === p.vpRegion }).to.deep.equal({ seq: 1, vpCount: 2, region: true });
      expect(status(1, false), 'made again after the wait (or by a caller that cannot wait), still not taken').to.equal('INVALID_VP_STATE');
      // The number is the hypervisor's own: a guest that writes the VP region's copy changes nothing.
      Atomics.store(p.vpI32!, VpRegionHeader.suspendAsked >> 2, 9);
      expect(status(9), 'the number the guest wrote').to.equal('INVALID_PARTITION_STATE');
      expect(get(1).wait?.seq, 'the number the hypervisor gave').to.equal(1);
      Atomics.store(p.vpI32!, VpRegionHeader.suspendAsked >> 2, 1);
      // The pass takes the suspension, but the VPs still hold their LPs until they give them back.
      link.passNow();
      expect(Atomics.load(p.vpI32!, VpRegionHeader.suspendTaken >> 2)).to.equal(1);
      expect(get(1).wait?.seq, 'a VP still on its LP').to.equal(1);
      ackPreemptions(p, 2);
      link.passNow();
      const r = get(1);
      expect(r.wait).to.equal(undefined);
      expect((r.output as SavedVpStateV2).runState).to.equal('Suspended');
      // A later suspension has a new number: the old one is no longer the partition's.
      setProp(lab, c, PartitionProperty.Suspend, 0);
      link.passNow();
      expect(status(1), 'after the thaw').to.equal('INVALID_PARTITION_STATE');
      setProp(lab, c, PartitionProperty.Suspend, 1);
      expect(status(1), 'the thawed one').to.equal('INVALID_PARTITION_STATE');
      expect(get(2).wait?.seq).to.equal(2);
    } finally {
      lab.close();
    }
  });
});
