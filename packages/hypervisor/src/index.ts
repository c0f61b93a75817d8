/**
 * @hvlab/hypervisor — one per host: the partition table and privileges, hypercall dispatch with
 * TLFS codes and HV_STATUS results, ports/connections, and the SynIC (message slots with the
 * MessagePending/EOM protocol, event flags). It never touches device data.
 *
 * Key types: Hypervisor (socket-free state machine), HypervisorServer (ZeroMQ ROUTER), SynIc.
 * Deviations from Hyper-V: hypercall inputs are msgpack maps; a session proves which partition it
 * is with a token the hypervisor issued at CreatePartition (hardware knows this for free); the
 * root partition's SynIC is not modelled — messages to root ports go to the owning session.
 * VPs are dispatched over N logical processors by a scheduler thread (SchedulerCore: reserve,
 * cap, weight; sched-thread.ts: dispatch words, virtual APICs, synthetic timers, IPIs over shared
 * VP pages and shared futexes). Deviation: the timer/ICR/TPR MSRs are written to the VP page and
 * picked up, not trapped; GetVpState/SetVpState (0x8003/0x8004) carry a plain saved-state record.
 *
 * Edges: every frame is decoded once by `decodeHvClientMsg` (protocol/hvwire.ts) and answered
 * exactly once (a malformed one with `bad`); a handler's exception becomes an error answer; the
 * privilege gate runs before any input is read; guest-created state is capped (queued messages,
 * ports, connections, GPADL windows, intercepts, partitions, sessions) and periodic timers have a
 * 100 µs floor. Sessions: the root's token is rotated each time the supervisor (main.ts) starts a
 * root and reaches it over a pipe; VMWPs open root sessions with one-time tickets (30 s); a session
 * whose pid is gone is dropped.
 *
 * Faults (ARCHITECTURE §9; hvlab extensions): per child partition, the properties
 * FaultInterruptDelayUs, FaultStalledVps, FaultClockOffsetUs and FaultClockSkewPpm (hypercall.ts),
 * each undone by setting it to 0 and gone with its partition; per host, the root's control op
 * `setLps` (fewer LPs for a while, restored by the hypervisor's own timer).
 */
export { Hypervisor, type HypervisorOptions, type Session } from './hypervisor.js';
export { HypervisorServer } from './server.js';
export { SynIc } from './synic.js';
export { Partition, VirtualProcessor } from './partition.js';
export { SchedulerCore, type SchedVp } from './scheduler.js';
