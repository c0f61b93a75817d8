/**
 * The management API of a host's root partition (VMMS), spoken by the CLI, tests and experiment
 * scripts over ZeroMQ (DEALER -> ROUTER, msgpack). Every request names the API version; the root
 * refuses other majors. State changes are published on a PUB socket, topic "vm".
 */
export const MGMT_API_VERSION = 1;

export interface MgmtRequest {
  v: number;
  id: number;
  op: MgmtOp;
  args: Record<string, unknown>;
}
export type MgmtOp =
  | 'ping'
  | 'hostInfo'
  | 'vmNew'
  | 'vmStart'
  | 'vmStop'
  | 'vmTurnOff'
  | 'vmPause'
  | 'vmResume'
  | 'vmSave'
  | 'vmStatus'
  | 'vmSetProcessor'
  | 'vmDelete'
  | 'vmList'
  | 'vmPeek'
  | 'vmIc'
  | 'vmKvp'
  | 'ps'
  | 'debugHypercall'
  | 'shutdown';

export interface MgmtError {
  code: string; // e.g. 'NotFound', 'InvalidArgument', 'InvalidState', 'AlreadyExists', 'Internal'
  message: string;
}
export type MgmtResponse = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: MgmtError };

export interface VmInfo {
  name: string;
  id: string;
  state: string;
  enabledState: number;
  partitionId: number | null;
  pids: { partition: number | null; vmwp: number | null };
  vps: number;
  memoryBytes: number;
  uptimeS: number;
  workload: { name: string; progress: number | null };
  lastStateReason: string | null;
  /** Set-VMProcessor settings: reserve and maximum in % of one LP per VP, relative weight. */
  processor: { reserve: number; maximum: number; weight: number };
  /** Measured by the hypervisor's scheduler over the last second (null when not running or not scheduled). */
  cpu: VmCpu | null;
}

export interface VpCpu {
  index: number;
  state: string;
  cpuPercent: number;
  runMs: number;
  readyMs: number;
  waitMs: number;
  dispatches: number;
}
export interface VmCpu {
  /** Percent of one LP (a 4-VP VM on 2 busy LPs shows up to 200). */
  percent: number;
  vps: VpCpu[];
}

export interface ProcessInfo {
  role: 'hypervisor' | 'root' | 'vmwp' | 'partition';
  vm: string | null;
  pid: number;
}

export interface HostInfo {
  hostId: string;
  home: string;
  apiVersion: number;
  memoryMode: 'shared' | 'private';
  memoryModeReason: string;
  lps: number;
  pids: { hypervisor: number; root: number };
  vms: number;
  startedAt: string;
  nodeVersion: string;
  /** How VMBus channels carry packets: shared-memory rings, or ZeroMQ ("remote"). */
  vmbusTransport: 'shm' | 'remote';
}

export interface VmStateEvent {
  vm: string;
  state: string;
  enabledState: number;
  reason: string | null;
  at: number;
}

export interface DebugHypercallResult {
  call: string;
  as: string;
  status: number;
  statusName: string;
  output: unknown;
}

/** One integration service of a VM, as `vmIc` (`hvlab vm ic NAME --json`) reports it. */
export interface IcServiceInfo {
  service: 'heartbeat' | 'shutdown' | 'timesync' | 'kvp';
  enabled: boolean;
  status: 'OK' | 'NoContact' | 'LostCommunication';
  /** Negotiated message version, e.g. "3.0"; null before negotiation. */
  version: string | null;
  /** heartbeat: the last sequence number the guest returned. */
  sequence?: number;
  /** timesync: the guest clock minus host time (ms) at the latest and the first sample. */
  offsetMs?: number | null;
  initialOffsetMs?: number | null;
  samples?: number;
}

/** One KVP pair, as `vmKvp` reports it. */
export interface KvpEntry {
  pool: string;
  key: string;
  value: string;
}
