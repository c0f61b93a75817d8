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
