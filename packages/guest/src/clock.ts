/**
 * Guest time. Every time the guest can see — its wall clock, sleep deadlines, the time slice,
 * workload rates, uptime, timestamps it writes into guest memory — is derived from the partition's
 * reference time (100 ns units, TLFS "partition reference counter"), never from the host's clocks.
 * The hypervisor keeps reference time in the partition's VP region (`VpRegionHeader.refBaseNs`:
 * the host monotonic time at which reference time was 0) and moves that base when it restores a
 * VM, so a VM that was saved, restored or moved continues from the reference time it had, without
 * a jump. Host clocks remain only in host-side waits (polling a page, a shutdown timeout) that put
 * nothing into guest state.
 *
 * A clock fault (ARCHITECTURE §9: the partition properties FaultClockOffsetUs and
 * FaultClockSkewPpm) is the hypervisor's too: it applies the offset to the base and writes the
 * skew beside it (`VpRegionClock`), and every reader — these VP threads, the kernel, the
 * hypervisor's scheduler thread (timers) and its GetVpRegisters(ReferenceTime) — computes the same
 * reference time from those words (`ReferenceClockView`).
 *
 * `GuestWallClock` starts from the CMOS real-time clock (which a VM can be configured to have
 * wrong, `--rtc-offset`) and then runs on reference time; only the time-sync integration service
 * brings it to host time. Its base lives in the guest kernel page, so a saved VM resumes with the
 * clock it had — behind by the time it spent saved, until time sync fixes it.
 */
import { KERNEL_PAGE_GPA, KernelPage, ReferenceClockView } from '@hvlab/protocol';
import type { GuestMemory } from './memory.js';

/** A source of the partition's reference time (100 ns units). */
export interface ReferenceTimeSource {
  now(): number;
}

/**
 * The partition's reference time read from its VP region. The clock words are loaded on every
 * call, not cached: a restore (SetVpState), a move or a clock fault rewrites them while the guest
 * may already be running.
 */
export class ReferenceClock implements ReferenceTimeSource {
  private readonly view: ReferenceClockView;

  constructor(vpRegion: SharedArrayBuffer, private readonly hostNs: () => bigint = () => process.hrtime.bigint()) {
    this.view = new ReferenceClockView(vpRegion);
  }

  now(): number {
    return this.view.now(this.hostNs());
  }

  /** Makes reference time read `ref` now (local mode, where the guest keeps the region itself; no skew there). */
  continueFrom(ref: number): void {
    this.view.publish({ baseNs: this.hostNs() - BigInt(Math.max(0, Math.floor(ref))) * 100n, skewPpm: 0, skewSinceNs: 0n });
  }
}

export class GuestWallClock {
  constructor(private readonly mem: GuestMemory, private readonly referenceTime: () => number) {}

  /** Sets the clock to `ms` (ms since 1970) now. */
  set(ms: number): void {
    this.mem.setF64(KERNEL_PAGE_GPA + KernelPage.clockBaseMs, ms);
    this.mem.setF64(KERNEL_PAGE_GPA + KernelPage.clockBaseRef, this.referenceTime());
  }

  now(): number {
    const base = this.mem.f64(KERNEL_PAGE_GPA + KernelPage.clockBaseMs);
    const ref = this.mem.f64(KERNEL_PAGE_GPA + KernelPage.clockBaseRef);
    return base + (this.referenceTime() - ref) / 10_000;
  }

  adjust(deltaMs: number): void {
    if (!Number.isFinite(deltaMs)) return;
    this.mem.setF64(KERNEL_PAGE_GPA + KernelPage.clockBaseMs, this.mem.f64(KERNEL_PAGE_GPA + KernelPage.clockBaseMs) + deltaMs);
  }
}
