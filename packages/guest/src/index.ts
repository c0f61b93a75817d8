/**
 * @hvlab/guest — the guest kernel that runs in a child partition process: GuestMemory (the only
 * access path to guest physical memory), GuestKernel (boot or resume, SynIC handling, status
 * page, VMBus), one worker thread per VP (`VpThread`: dispatch protocol, virtual APIC, synthetic
 * timers, port I/O), and the task table with the built-in workloads (idle, counter, spin, sleep,
 * memdirty).
 *
 * Deviations from Hyper-V: the guest is TypeScript, not machine code; its SynIC MSR writes are
 * SetVpRegisters hypercalls on itself, while timer, ICR and TPR MSRs and port I/O go through the
 * shared VP page (the hypervisor's scheduler picks them up); SINT interrupts are taken on a VP
 * and serviced by the kernel's main thread (a DPC, as Linux's vmbus_isr defers to a tasklet).
 */
export { GuestMemory, GuestMemoryError } from './memory.js';
export { GuestKernel, readBootInfo, GUEST_SINT, GUEST_SINT_VECTOR } from './kernel.js';
export { TaskTable, spinUnit, SPIN_ITERATIONS } from './workloads.js';
