/** What VMMS and a VMWP agree on. */
export interface VmwpConfig {
  home: string;
  hostId: string;
  hvPid: number;
  name: string;
  id: string;
  memoryBytes: number;
  vps: number;
  workload: string;
  processor: { reserve: number; maximum: number; weight: number };
  rtcOffsetS: number;
  /** Where saved states live (HVLAB_HOME/vms), and whether to start from the VM's saved state. */
  vmDir: string;
  restore: boolean;
  /** Which integration services to offer, and how VMBus carries packets on this host. */
  integrationServices: Partial<Record<'heartbeat' | 'shutdown' | 'timesync' | 'kvp', boolean>>;
  vmbusTransport: 'shm' | 'remote';
}

/** The one line VMMS writes on a new VMWP's stdin. */
export interface VmwpStartInput {
  config: VmwpConfig;
  /** A one-time ticket for a root-partition hypervisor session (never the root's token). */
  ticket: string;
  /** What a root must present on the worker's control link (also kept in its 0600 record). */
  secret: string;
}
/** Root-partition port receiving a child's control messages (unique per child). */
export function controlPortId(partitionId: number): number {
  return partitionId * 16 + 1;
}
/** The root's connection ids to a child's ports (1 message, 2 event), unique per child. */
export function hostConnectionId(partitionId: number, port: number): number {
  return partitionId * 16 + port;
}
