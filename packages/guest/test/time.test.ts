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
  BOOT_INFO_GPA, BOOT_MAGIC, BootInfo, KERNEL_PAGE_GPA, KernelPage, MAX_VPS_PER_PARTITION, STATUS_PAGE_GPA, StatusPage,
  VMBUS_CHANNEL_MESSAGE_TYPE, VpRegionHeader, WORKLOAD_PAGE_GPA, WorkloadPage, decodeChannelMessage, encodeChannelMessage, vpRegionBytes,
  type ChannelMessage,
} from '@hvlab/protocol';
import type { HvClient, Logger } from '@hvlab/runtime';
import { GuestWallClock, ReferenceClock } from '../src/clock.js';
import { GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';

const MiB = 1024 * 1024;
/** The guest's connection to its VMWP (the Booted message goes there, not to VMBus). */
const CONTROL_CONNECTION = 0x100;
const quiet = { info() {}, warn() {}, error() {}, debug() {}, child() { return quiet; } } as unknown as Logger;

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

    /** A hypervisor stand-in: reference time on request, every other call succeeds, VMBus says hello and offers nothing. */
    function stubHv(referenceTime: () => number): { hv: HvClient; bind: (k: GuestKernel) => void } {
      let kernel: GuestKernel | null = null;
      const reply = (m: ChannelMessage): ChannelMessage | null => {
        if (m.type === 'InitiateContact') return { type: 'VersionResponse', versionSupported: true, connectionState: 0, messageConnectionId: 4 };
        if (m.type === 'RequestOffers') return { type: 'AllOffersDelivered' };
        if (m.type === 'Unload') return { type: 'UnloadResponse' };
        return null;
      };
      const ok = (output: unknown = {}): unknown => ({ status: 0, statusName: 'SUCCESS', output });
      const hv = {
        async call(name: string, input: { connectionId?: number; messageType?: number; payload?: Uint8Array }) {
          if (name === 'GetVpRegisters') return ok({ values: { ReferenceTime: referenceTime() } });
          if (name === 'PostMessage' && input.connectionId !== CONTROL_CONNECTION && input.messageType === VMBUS_CHANNEL_MESSAGE_TYPE) {
            const r = reply(decodeChannelMessage(input.payload!));
            if (r) setImmediate(() => kernel?.vmbus?.onMessage(encodeChannelMessage(r)));
          }
          return ok();
        },
        async must() {
          return {};
        },
      } as unknown as HvClient;
      return { hv, bind: (k) => (kernel = k) };
    }

    function bootPage(mem: GuestMemory, resume: boolean): void {
      const b = BOOT_INFO_GPA;
      mem.setU32(b + BootInfo.magic, BOOT_MAGIC);
      mem.setU32(b + BootInfo.vpCount, 1);
      mem.setU64(b + BootInfo.memoryBytes, BigInt(mem.size));
      mem.setU32(b + BootInfo.controlConnectionId, CONTROL_CONNECTION);
      mem.setU64(b + BootInfo.workloadArg, 1000n);
      mem.write(b + BootInfo.workloadName, new TextEncoder().encode('counter\0'));
      mem.setF64(b + BootInfo.rtcMs, 1_600_000_000_000);
      mem.setU32(b + BootInfo.resume, resume ? 1 : 0);
    }

    const counter = (mem: GuestMemory): number => Number(mem.atomicLoad64(WORKLOAD_PAGE_GPA + WorkloadPage.counter));

    async function until(what: string, cond: () => boolean, ms = 10000): Promise<void> {
      const t0 = Date.now();
      while (!cond()) {
        if (Date.now() - t0 > ms) throw new Error(`${what} did not happen within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }

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
