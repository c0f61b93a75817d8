/**
 * @hvlab/guest — the guest kernel that runs in a child partition process: GuestMemory (the only
 * access path to guest physical memory), GuestKernel (boot, SynIC handling, status page), one
 * worker thread per VP, and the built-in workloads (idle, counter).
 *
 * Deviation from Hyper-V: the guest is TypeScript, not machine code; its SynIC MSR writes are
 * SetVpRegisters hypercalls on itself, and interrupts arrive as hypervisor notifications that the
 * kernel handles on the process's main thread before waking the VP threads.
 */
export { GuestMemory, GuestMemoryError } from './memory.js';
export { GuestKernel, readBootInfo, GUEST_SINT, GUEST_SINT_VECTOR } from './kernel.js';
export { counterWorkload, idleWorkload, type Workload } from './workloads.js';
