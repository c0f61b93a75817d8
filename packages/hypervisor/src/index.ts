/**
 * @hvlab/hypervisor — one per host: the partition table and privileges, hypercall dispatch with
 * TLFS codes and HV_STATUS results, ports/connections, and the SynIC (message slots with the
 * MessagePending/EOM protocol, event flags). It never touches device data.
 *
 * Key types: Hypervisor (socket-free state machine), HypervisorServer (ZeroMQ ROUTER), SynIc.
 * Deviations from Hyper-V: hypercall inputs are msgpack maps; a session proves which partition it
 * is with a token the hypervisor issued at CreatePartition (hardware knows this for free); the
 * root partition's SynIC is not modelled — messages to root ports go to the owning session.
 * CPU scheduling of VPs arrives with the VP work (issue 4); today `Suspend` stops all VPs.
 */
export { Hypervisor, type HypervisorOptions, type Session } from './hypervisor.js';
export { HypervisorServer } from './server.js';
export { SynIc } from './synic.js';
export { Partition, VirtualProcessor } from './partition.js';
