/**
 * @hvlab/protocol — the numbers and byte layouts every other package speaks: hypercall codes,
 * HV_STATUS, privileges and partition properties (TLFS), SynIC message layout, the guest memory
 * layout shared by firmware and guest kernel, WMI VM states, the management API and the msgpack
 * codec. It imports nothing of hvlab's.
 *
 * Deviations from Hyper-V: hypercall inputs are msgpack maps validated field by field rather than
 * binary pages in guest memory; the control word is carried as fields; register values are
 * integers below 2^53.
 */
export * from './hypercall.js';
export * from './synic.js';
export * from './layout.js';
export * from './guest-pages.js';
export * from './vm.js';
export * from './mgmt.js';
export * from './wire.js';
export * from './hvwire.js';
export * from './vmbus.js';
export * from './ic.js';
export * from './vpage.js';
export * from './vmwp.js';
export * from './devices.js';
export * from './hcpage.js';
export * from './signal-hold.js';
export * from './random.js';
export * from './cluster.js';
export * from './migrate.js';
export * from './faults.js';
