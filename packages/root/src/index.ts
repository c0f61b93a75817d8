/**
 * @hvlab/root — the root partition process: VMMS (VM registry, EnabledState machine, config under
 * HVLAB_HOME, management API over ZeroMQ with state-change events), VID (the root's hypercall
 * session) and the VMWP worker process that builds and runs one VM.
 *
 * Deviations from Hyper-V: the root is not CPU-scheduled by the hypervisor; a VMWP exits when
 * VMMS does (no re-attach after a VMMS restart); `stop` acts as turn-off until the shutdown
 * integration service exists.
 */
export { Vmms } from './vmms.js';
export { MgmtServer } from './mgmt.js';
export { ConfigStore, buildConfig, MgmtFailure, type VmConfig } from './config.js';
