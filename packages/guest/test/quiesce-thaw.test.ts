/**
 * The guest kernel's park for a save or a migration's freeze (quiesce) and its undoing (thaw). The
 * partition process names, with each quiesce request, the thaws it had seen when the request came:
 * a thaw that overtakes the request (the VMWP's freeze failed before this process got to park)
 * calls it off instead of leaving the kernel parked with nobody left to thaw it. In CI that left a
 * kernel parked, and the next save of the VM waited 15 s for an answer to its quiesce.
 */
import { expect } from 'chai';
import { GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';
import { bootPage, counter, quiet, stubHv, until } from './stub-hv.js';

const MiB = 1024 * 1024;

describe('the guest kernel\'s quiesce and thaw', function () {
  this.timeout(30000);
  let k: GuestKernel;
  beforeEach(async () => {
    const mem = new GuestMemory(new SharedArrayBuffer(8 * MiB));
    bootPage(mem, false);
    const stub = stubHv(() => Date.now() * 10_000);
    k = new GuestKernel(mem, stub.hv, quiet, true, 'g');
    stub.bind(k);
    await k.start();
    await until('the guest counting', () => counter(mem) >= 5);
  });
  afterEach(async () => {
    await k.stop().catch(() => undefined);
  });

  it('parks on quiesce and unparks on thaw; a thaw while the quiesce is under way unparks it too', async () => {
    await k.quiesce();
    expect(k.isParked).to.equal(true);
    k.thaw();
    expect(k.isParked).to.equal(false);
    const q = k.quiesce();
    k.thaw();
    await q;
    expect(k.isParked, 'thawed while it wrote its state').to.equal(false);
  });

  it('a quiesce whose thaw came first (the freeze failed before the park) is called off and leaves the kernel unparked', async () => {
    const asked = k.thawCount;
    k.thaw(); // the VMWP gave up and thawed while this process waited for the suspension
    let err: unknown = null;
    await k.quiesce(asked).catch((e: unknown) => (err = e));
    expect((err as Error | null)?.message).to.match(/called off \(thawed\) before the kernel parked/);
    expect(k.isParked).to.equal(false);
    // And the next freeze parks and thaws as ever.
    await k.quiesce(k.thawCount);
    expect(k.isParked).to.equal(true);
    k.thaw();
    expect(k.isParked).to.equal(false);
  });
});
