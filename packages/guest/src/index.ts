/**
 * @hvlab/guest — the guest kernel that runs in a child partition process: GuestMemory (the only
 * write path into guest physical memory, with a dirty log), GuestKernel (boot or resume, SynIC
 * handling, status page, VMBus), one worker thread per VP (`VpThread`: dispatch protocol, virtual
 * APIC, synthetic timers, port I/O), guest time (`ReferenceClock`, `GuestWallClock`), and the task
 * table with the built-in workloads (idle, counter, spin, sleep, memdirty).
 *
 * Key types: GuestMemory (typed accessors, atomics and bulk writes as methods; each write marks its
 * pages in the dirty bitmap at the top of the memory region, which the migration engine harvests
 * with fetch-and-clear; `share()` hands the same memory to a VP thread, and the VMBus client logs
 * its ring writes into it through vmbus's DirtyLog), ReferenceClock (the partition's reference
 * time from its VP region: every guest-visible time derives from it, never from host clocks, so a
 * restored or moved VM continues without a jump), GuestKernel, TaskTable.
 *
 * Deviations from Hyper-V: the guest is TypeScript, not machine code; its SynIC MSR writes are
 * SetVpRegisters hypercalls on itself, while timer, ICR and TPR MSRs and port I/O go through the
 * shared VP page (the hypervisor's scheduler picks them up); SINT interrupts are taken on a VP
 * and serviced by the kernel's main thread (a DPC, as Linux's vmbus_isr defers to a tasklet).
 * Dirty pages are logged by the guest's own memory API, standing in for SLAT dirty bits where
 * userfaultfd write-protection is unavailable (ARCHITECTURE §2, §8); the dirty bitmap takes the
 * last pages of the memory region, which the guest does not use as memory.
 */
export { GuestMemory, GuestMemoryError, type GuestMemoryHandle } from './memory.js';
export { ReferenceClock, GuestWallClock, type ReferenceTimeSource } from './clock.js';
export { GuestKernel, readBootInfo, GUEST_SINT, GUEST_SINT_VECTOR } from './kernel.js';
export { TaskTable, spinUnit, SPIN_ITERATIONS } from './workloads.js';
export { PageAllocator, OutOfGuestMemory, type PageAllocatorState } from './pages.js';
export { decodeKernelState, decodePageAllocatorState, type KernelState } from './state.js';
