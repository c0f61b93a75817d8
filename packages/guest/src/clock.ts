/**
 * The guest's wall clock. It starts from the CMOS real-time clock (which a VM can be configured to
 * have wrong, `--rtc-offset`) and then runs on the partition's reference time; only the time-sync
 * integration service brings it to host time. Its base lives in the guest kernel page, so a saved
 * VM resumes with the clock it had — behind by the time it spent saved, until time sync fixes it.
 */
import { KERNEL_PAGE_GPA, KernelPage } from '@hvlab/protocol';
import type { GuestMemory } from './memory.js';

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
