/**
 * Signals that skip what they can: an interrupt for a VP that holds its LP only sets its IRR (the
 * VP takes it at its next step boundary); only a VP that may be halted costs a scheduler round.
 */
import { expect } from 'chai';
import { Dispatch, HvCall, VirtualApicView, VpPage, vpPageOffset } from '@hvlab/protocol';
import { openRegion, shmAvailable } from '@hvlab/shm';
import { Lab, recordingScheduler } from './lab.js';

describe('interrupts and the scheduler doorbell', function () {
  before(function () {
    if (!shmAvailable()) this.skip();
  });
  let lab: Lab;
  let rings = 0;
  beforeEach(() => {
    rings = 0;
    lab = new Lab({ scheduler: { ...recordingScheduler(), ring: () => void rings++ } });
  });
  afterEach(() => lab.close());

  function vpWithDispatch(d: number): { id: number; apic: VirtualApicView; i32: Int32Array } {
    const { id } = lab.child({ vps: 1 });
    const region = openRegion(`hvlab-${lab.hostId}-p${id}-vp`);
    const i32 = new Int32Array(region);
    Atomics.store(i32, (vpPageOffset(0) + VpPage.dispatch) >> 2, d);
    return { id, apic: new VirtualApicView(i32, vpPageOffset(0)), i32 };
  }

  for (const [name, d] of [['Granted', Dispatch.Granted], ['Preempt', Dispatch.Preempt]] as const) {
    it(`a signal to a VP whose dispatch word says ${name} sets its IRR and needs no scheduler round`, () => {
      const { id, apic } = vpWithDispatch(d);
      rings = 0;
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: id, vpIndex: 0, vector: 0x41 });
      expect(apic.pending(0x41)).to.equal(true);
      expect(rings).to.equal(0);
    });
  }

  for (const [name, d] of [['Off (halted or waiting)', Dispatch.Off], ['Halt', Dispatch.Halt], ['Start', Dispatch.Start], ['Intercept', Dispatch.Intercept]] as const) {
    it(`a signal to a VP whose dispatch word says ${name} rings the scheduler, which may have to wake it`, () => {
      const { id, apic } = vpWithDispatch(d);
      rings = 0;
      lab.ok('r1', HvCall.AssertVirtualInterrupt, { partitionId: id, vpIndex: 0, vector: 0x41 });
      expect(apic.pending(0x41)).to.equal(true);
      expect(rings).to.equal(1);
    });
  }
});
