/**
 * The partition process's side of a freeze (GuestKernel.quiesceAfter) against the VMWP's thaw,
 * which the VMWP sends right behind a freeze it gave up on. Both can arrive in one read of the
 * pipe, and then the thaw runs before the freeze's wait has resumed: a wait that found the
 * suspension taken at once returned, and the kernel parked after the thaw with nothing left to
 * thaw it. Its interrupts waited at the gate for good, and the next save waited for them (CI saw
 * "no answer to quiesce within 15000 ms" about one run in twelve).
 */
import { expect } from 'chai';
import { MAX_VPS_PER_PARTITION, VpPage, VpRegionHeader, VpRunState, vpPageOffset, vpRegionBytes } from '@hvlab/protocol';
import { futexWake } from '@hvlab/shm';
import { GuestKernel, readBootInfo } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';
import { bootPage, quiet, stubHv } from './stub-hv.js';

/** A kernel in scheduled mode (a VP region), not started: its boot page read, one VP. */
function scheduledKernel(): { k: GuestKernel; take: (seq: number) => void } {
  const mem = new GuestMemory(new SharedArrayBuffer(8 * 1024 * 1024));
  bootPage(mem, false);
  const region = new SharedArrayBuffer(vpRegionBytes(MAX_VPS_PER_PARTITION));
  const i32 = new Int32Array(region);
  const k = new GuestKernel(mem, stubHv(() => 0).hv, quiet, false, 'g', { vp: region, sched: new SharedArrayBuffer(4096) });
  k.boot = readBootInfo(mem);
  return {
    k,
    // The scheduler's part: suspension `seq` taken, and VP 0's page shows it.
    take: (seq) => {
      Atomics.store(i32, (vpPageOffset(0) + VpPage.state) >> 2, VpRunState.Suspended);
      Atomics.store(i32, VpRegionHeader.suspendTaken >> 2, seq);
      futexWake(region, VpRegionHeader.suspendTaken >> 2);
    },
  };
}

async function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'resolved', (e: Error) => `rejected: ${e.message}`);
}

describe('a freeze request and the thaw behind it, in the partition process', function () {
  this.timeout(30000);

  it('a thaw that runs before the request\'s wait resumes calls it off, even with the suspension taken already: the kernel does not park', async () => {
    const { k, take } = scheduledKernel();
    take(1);
    const q = k.quiesceAfter(1, 5000);
    k.thaw(); // what the second message of the same read does, before any promise continuation
    expect(await outcome(q)).to.match(/called off/);
    expect(k.isParked, 'interrupt handling parked after the thaw').to.equal(false);
  });

  it('a thaw while it waits for a suspension not yet taken calls it off too', async () => {
    const { k, take } = scheduledKernel();
    const q = k.quiesceAfter(3, 5000);
    await new Promise((r) => setTimeout(r, 30));
    k.thaw();
    take(3);
    expect(await outcome(q)).to.match(/called off/);
    expect(k.isParked).to.equal(false);
  });

  it('with no thaw it parks once the suspension is taken, and a thaw after that opens the gate again', async () => {
    const { k, take } = scheduledKernel();
    const q = k.quiesceAfter(2, 5000);
    take(1); // an earlier suspension is not this one
    await new Promise((r) => setTimeout(r, 30));
    expect(k.isParked, 'parked before its own suspension').to.equal(false);
    take(2);
    // Parked, then the kernel's state cannot be written (this kernel never started VMBus): the
    // VMWP thaws on that failure.
    expect(await outcome(q)).to.match(/VMBus is not up/);
    expect(k.isParked).to.equal(true);
    k.thaw();
    expect(k.isParked).to.equal(false);
  });

  it('a thaw while it waits for handlers past the gate calls it off: the gate opens and no copy is written', async () => {
    const { k, take } = scheduledKernel();
    take(1);
    const inner = k as unknown as { handling: number };
    inner.handling = 1; // a SINT handler past the gate, still running
    const q = k.quiesceAfter(1, 5000);
    await new Promise((r) => setTimeout(r, 20));
    expect(k.isParked, 'the gate closed while the handler runs').to.equal(true);
    k.thaw();
    inner.handling = 0;
    expect(await outcome(q)).to.match(/called off/);
    expect(k.isParked).to.equal(false);
  });

  it('an interrupt queued behind the gate does not hold the freeze: only handlers past the gate are waited for', async () => {
    const { k, take } = scheduledKernel();
    take(1);
    // The queue of raised interrupts, its next entry waiting at the gate (as one queued behind a
    // handler that was still running when the gate closed does): it never settles while parked.
    (k as unknown as { interrupts: Promise<void> }).interrupts = new Promise<void>(() => undefined);
    const q = k.quiesceAfter(1, 5000);
    // It gets as far as the kernel's own state (this kernel never started VMBus), instead of
    // waiting for the queue until the VMWP gives up.
    const r = await Promise.race([outcome(q), new Promise<string>((res) => setTimeout(() => res('still waiting after 3 s'), 3000))]);
    expect(r).to.match(/VMBus is not up/);
    k.thaw();
  });
});
