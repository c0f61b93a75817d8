/**
 * Guest time runs on the partition's reference time, never on the host's clocks: the reference
 * clock follows the VP region's base on every read (a restore moves it), the wall clock and the
 * reported uptime derive from it, and a VM restored in local mode (private memory, no scheduler)
 * takes up reference time where the hypervisor has it, so its sleepers and its counter go on at
 * once instead of waiting out a jump. The kernel runs here against a stub hypervisor that answers
 * the few hypercalls a boot makes and plays a minimal VMBus host (version, no offers).
 */
import { expect } from 'chai';
import {
  BOOT_INFO_GPA, BootInfo, KERNEL_PAGE_GPA, KernelPage, MAX_VPS_PER_PARTITION, STATUS_PAGE_GPA, StatusPage,
  VpRegionHeader, vpRegionBytes,
} from '@hvlab/protocol';
import type { HvClient } from '@hvlab/runtime';
import { GuestWallClock, ReferenceClock } from '../src/clock.js';
import { GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';
import { bootPage, counter, quiet, stubHv, until } from './stub-hv.js';

const MiB = 1024 * 1024;
/** The guest's connection to its VMWP (the Booted message goes there, not to VMBus). */

function vpRegionWithBase(baseNs: bigint): SharedArrayBuffer {
  const r = new SharedArrayBuffer(vpRegionBytes(MAX_VPS_PER_PARTITION));
  new BigInt64Array(r, VpRegionHeader.refBaseNs, 1)[0] = baseNs;
  return r;
}

describe('guest time runs on reference time', () => {
  describe('ReferenceClock', () => {
    it('reads the base from the VP region on every call, so a restore that moves it is seen at once', () => {
      let host = 10_000_000_000n;
      const region = vpRegionWithBase(9_000_000_000n);
      const clock = new ReferenceClock(region, () => host);
      expect(clock.now()).to.equal(10_000_000); // 1 s in 100 ns units
      host += 5_000_000n;
      expect(clock.now()).to.equal(10_050_000);
      // SetVpState on restore: reference time 123 s from now on.
      new BigInt64Array(region, VpRegionHeader.refBaseNs, 1)[0] = host - 123_000_000_000n;
      expect(clock.now()).to.equal(1_230_000_000);
    });

    it('continueFrom makes reference time read the given value now and run on from it', () => {
      let host = 77n;
      const clock = new ReferenceClock(new SharedArrayBuffer(vpRegionBytes(1)), () => host);
      clock.continueFrom(5e9);
      expect(clock.now()).to.equal(5e9);
      host += 1_000_000_000n;
      expect(clock.now()).to.equal(5e9 + 1e7);
    });
  });

  describe('GuestWallClock', () => {
    it('moves only with reference time, whatever the host clock does', async () => {
      const mem = new GuestMemory(new SharedArrayBuffer(4 * MiB));
      let ref = 1_000_000;
      const clock = new GuestWallClock(mem, () => ref);
      clock.set(1_700_000_000_000);
      await new Promise((r) => setTimeout(r, 20));
      expect(clock.now()).to.equal(1_700_000_000_000);
      ref += 25_000; // 2.5 ms of reference time
      expect(clock.now()).to.equal(1_700_000_000_002.5);
    });

    it('a VM copied to another host continues its wall clock where it stopped (reference time continues, host clocks differ)', () => {
      const a = new GuestMemory(new SharedArrayBuffer(4 * MiB));
      const hostA = { ns: 5_000_000_000_000n };
      const refA = new ReferenceClock(vpRegionWithBase(hostA.ns - 40_000_000_000n), () => hostA.ns);
      const clockA = new GuestWallClock(a, () => refA.now());
      clockA.set(1_600_000_000_000);
      hostA.ns += 3_000_000_000n;
      const atSave = clockA.now();
      expect(atSave).to.equal(1_600_000_003_000);
      const savedRef = refA.now();
      // The destination: a host whose monotonic clock is nowhere near the source's.
      const b = new GuestMemory(new SharedArrayBuffer(4 * MiB));
      b.write(0, a.read(0, a.size));
      const hostB = { ns: 17n };
      const refB = new ReferenceClock(new SharedArrayBuffer(vpRegionBytes(1)), () => hostB.ns);
      refB.continueFrom(savedRef);
      const clockB = new GuestWallClock(b, () => refB.now());
      expect(clockB.now()).to.equal(atSave);
      hostB.ns += 1_000_000n;
      expect(clockB.now()).to.equal(atSave + 1);
    });
  });

  it('the uptime the guest reports (KVP UptimeSeconds) is its reference time, and follows a restore', () => {
    const region = vpRegionWithBase(process.hrtime.bigint() - 42_500_000_000n);
    const k = new GuestKernel(new GuestMemory(new SharedArrayBuffer(4 * MiB)), {} as HvClient, quiet, false, 'g', { vp: region, sched: new SharedArrayBuffer(4096) });
    expect(Number(k.kvpAutoValues().UptimeSeconds)).to.be.within(42, 43);
    new BigInt64Array(region, VpRegionHeader.refBaseNs, 1)[0] = process.hrtime.bigint() - 1000_000_000_000n;
    expect(Number(k.kvpAutoValues().UptimeSeconds)).to.be.within(1000, 1001);
  });

  describe('a local-mode guest (private memory, no scheduler) saved and restored', function () {
    this.timeout(30000);
    const kernels: GuestKernel[] = [];
    afterEach(async () => {
      await Promise.all(kernels.splice(0).map((k) => k.stop().catch(() => undefined)));
    });


    it('boots on the hypervisor\'s reference time, then resumes from it: the counter goes on at once and the clock does not jump', async () => {
      const memA = new GuestMemory(new SharedArrayBuffer(8 * MiB));
      bootPage(memA, false);
      // The partition has existed for 500 s of reference time when its guest starts.
      const stubA = stubHv(() => 5e9);
      const a = new GuestKernel(memA, stubA.hv, quiet, true, 'g');
      stubA.bind(a);
      kernels.push(a);
      await a.start();
      expect(a.referenceTime()).to.be.at.least(5e9);
      expect(memA.f64(KERNEL_PAGE_GPA + KernelPage.clockBaseRef)).to.be.at.least(5e9);
      // The boot time the guest records is its own clock's (from the RTC), not the host's.
      expect(memA.f64(STATUS_PAGE_GPA + StatusPage.bootTimeMs)).to.be.within(1_600_000_000_000, 1_600_000_001_000);
      await until('counting on the first host', () => counter(memA) >= 20);

      // Save: stop the VPs, park the kernel's own state in memory, take reference time and memory.
      await a.stop();
      await a.quiesce();
      const savedRef = a.referenceTime();
      const clockAtSave = a.clock.now();
      const memB = new GuestMemory(new SharedArrayBuffer(8 * MiB));
      memB.write(0, memA.read(0, memA.size));
      memB.setU32(BOOT_INFO_GPA + BootInfo.resume, 1);
      const c0 = counter(memB);

      // Restore in a new partition process: the hypervisor has reference time where it stopped.
      const stubB = stubHv(() => savedRef);
      const b = new GuestKernel(memB, stubB.hv, quiet, true, 'g');
      stubB.bind(b);
      kernels.push(b);
      const t0 = process.hrtime.bigint();
      await b.start();
      const resumedClock = b.clock.now();
      const elapsedMs = Number(process.hrtime.bigint() - t0) / 1e6;
      expect(resumedClock - clockAtSave, 'wall clock moved by at most the time the restore took').to.be.within(0, elapsedMs + 1);
      await until('counting again after the restore', () => counter(memB) >= c0 + 20);
    });
  });
});
