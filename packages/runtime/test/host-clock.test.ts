/** The clock the hosts of a machine share: its id is this kernel's boot id, read once; monoNs is CLOCK_MONOTONIC, as process.hrtime reads it. */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { hostClockId, monoNs } from '../src/index.js';

describe('the hosts\' shared clock', () => {
  it('is named by the kernel\'s boot id, the same on each call', () => {
    const id = hostClockId();
    expect(id).to.equal(readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim());
    expect(hostClockId()).to.equal(id);
  });
  it('reads CLOCK_MONOTONIC in nanoseconds, as process.hrtime does', () => {
    const a = Number(process.hrtime.bigint());
    const m = monoNs();
    const b = Number(process.hrtime.bigint());
    expect(m).to.be.within(a, b);
  });
});
