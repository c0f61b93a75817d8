/**
 * @hvlab/cli — the `hvlab` command. It only talks to the management API (MgmtClient) and starts
 * or stops a host's processes (host.ts). Nothing here imports the root or the hypervisor.
 */
export { MgmtClient, MgmtCallError, up, down, sweepHost, hostProcesses, readHost, type HostRecord } from '@hvlab/host';
