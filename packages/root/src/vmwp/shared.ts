import { CLUSTER_HOST_RE, MEMBER_SECRET_RE, MIG_ID_RE, decodeClusterKey, decodeDeviceEntries, isIpv4, type ClusterKey, type DeviceEntry } from '@hvlab/protocol';
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
  /** The VM's devices (protocol/src/devices.ts), and how VMBus carries packets on this host. */
  devices: DeviceEntry[];
  vmbusTransport: 'shm' | 'remote';
  /** A live migration's destination: build the partition and devices, then take pages and state over the control link. */
  incoming?: boolean;
  /**
   * A live migration's destination in a cluster: the worker takes the migration's stream itself
   * (`mig` from host `from`) on a CURVE socket of its own on `address` (the cluster's `key`), which
   * the root opens to the source through their link. Without it, the stream comes through the root.
   */
  incomingStream?: IncomingStream;
  /** What the device instance ids derive from, when not `id` (VmConfig.instanceSeed). */
  instanceSeed?: string;
}

/**
 * Whether a VM of `a` can run in a guest booted for `b` (a booted warm worker's template): the
 * same memory, VPs, devices, VMBus transport and firmware clock, and neither a restore nor a
 * migration's destination. Name, id, workload and processor settings are given at the claim.
 */
export function sameShape(a: VmwpConfig, b: VmwpConfig): boolean {
  return a.memoryBytes === b.memoryBytes && a.vps === b.vps && a.vmbusTransport === b.vmbusTransport && a.rtcOffsetS === b.rtcOffsetS &&
    !a.restore && !b.restore && !a.incoming && !b.incoming && JSON.stringify(a.devices) === JSON.stringify(b.devices);
}

export interface IncomingStream {
  mig: string;
  from: string;
  /** The credential of the pair (this host, `from`): every request of the stream carries it (the peer service checked the setup's). */
  auth: string;
  address: string;
  key: ClusterKey;
}

/** The one line VMMS writes on a new VMWP's stdin. */
export interface VmwpStartInput {
  config: VmwpConfig;
  /** A one-time ticket for a root-partition hypervisor session (never the root's token). */
  ticket: string;
  /** What a root must present on the worker's control link (also kept in its 0600 record). */
  secret: string;
  /**
   * A booted warm worker (root/src/warm.ts): build and boot this config's guest (its workload
   * idle), then wait for a second line, the claim (VmwpClaim), that makes it a VM's.
   */
  template?: boolean;
}

/**
 * The second line a booted warm worker reads: the VM it becomes. Its control link keeps the
 * secret of its first line, which the pool kept for the root that claims it.
 */
export interface VmwpClaim {
  config: VmwpConfig;
}
/** Root-partition port receiving a child's control messages (unique per child). */
export function controlPortId(partitionId: number): number {
  return partitionId * 16 + 1;
}
/** The root's connection ids to a child's ports (1 message, 2 event), unique per child. */
export function hostConnectionId(partitionId: number, port: number): number {
  return partitionId * 16 + port;
}

/**
 * Checks the start-up line a VMWP reads on stdin (from VMMS, but still bytes entering a process):
 * every field's type and range. Throws an Error naming the first bad field.
 */
export function decodeVmwpStartInput(text: string): VmwpStartInput {
  const top = parseLine(text, 'the start-up input');
  if (top.template !== undefined && typeof top.template !== 'boolean') throw new Error('field template is not a boolean');
  return { ticket: str(top, 'ticket', 256), secret: str(top, 'secret', 256), config: decodeConfig(top.config), ...(top.template === true ? { template: true } : {}) };
}

/** Checks a booted warm worker's claim line, as decodeVmwpStartInput checks the first. */
export function decodeVmwpClaim(text: string): VmwpClaim {
  const top = parseLine(text, 'the claim');
  return { config: decodeConfig(top.config) };
}

function parseLine(text: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`${what} is not JSON`);
  }
  return obj(v, what);
}
function obj(x: unknown, what: string): Record<string, unknown> {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new Error(`${what} is not a map`);
  return x as Record<string, unknown>;
}
function str(o: Record<string, unknown>, k: string, max = 4096): string {
  const x = o[k];
  if (typeof x !== 'string' || x.length === 0 || x.length > max) throw new Error(`field ${k} is not a string of 1 to ${max} characters`);
  return x;
}
function int(o: Record<string, unknown>, k: string, min: number, max: number): number {
  const x = o[k];
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) throw new Error(`field ${k} is not an integer from ${min} to ${max}`);
  return x;
}

function decodeConfig(x: unknown): VmwpConfig {
  const c = obj(x, 'field config');
  const p = obj(c.processor, 'field config.processor');
  const devices = decodeDeviceEntries(c.devices, 'field config.devices');
  if (typeof devices === 'string') throw new Error(devices);
  if (typeof c.restore !== 'boolean') throw new Error('field restore is not a boolean');
  if (c.vmbusTransport !== 'shm' && c.vmbusTransport !== 'remote') throw new Error('field vmbusTransport is not shm or remote');
  if (c.incoming !== undefined && typeof c.incoming !== 'boolean') throw new Error('field incoming is not a boolean');
  const cfg: VmwpConfig = {
    home: str(c, 'home'), hostId: str(c, 'hostId', 64), hvPid: int(c, 'hvPid', 1, 0x7fffffff), name: str(c, 'name', 64), id: str(c, 'id', 64),
    memoryBytes: int(c, 'memoryBytes', 4096, Number.MAX_SAFE_INTEGER), vps: int(c, 'vps', 1, 64), workload: str(c, 'workload', 64),
    processor: { reserve: int(p, 'reserve', 0, 100), maximum: int(p, 'maximum', 1, 100), weight: int(p, 'weight', 1, 10000) },
    rtcOffsetS: int(c, 'rtcOffsetS', -(10 * 365 * 86400), 10 * 365 * 86400), vmDir: str(c, 'vmDir'), restore: c.restore,
    devices, vmbusTransport: c.vmbusTransport, incoming: c.incoming === true,
  };
  if (c.instanceSeed !== undefined) cfg.instanceSeed = str(c, 'instanceSeed', 64);
  if (c.incomingStream !== undefined) cfg.incomingStream = decodeIncomingStream(c.incomingStream);
  return cfg;
}

function decodeIncomingStream(x: unknown): IncomingStream {
  const o = obj(x, 'field config.incomingStream');
  const mig = str(o, 'mig', 64);
  if (!MIG_ID_RE.test(mig)) throw new Error('field incomingStream.mig is not a migration id');
  const from = str(o, 'from', 64);
  if (!CLUSTER_HOST_RE.test(from)) throw new Error('field incomingStream.from is not a host name');
  const auth = str(o, 'auth', 64);
  if (!MEMBER_SECRET_RE.test(auth)) throw new Error('field incomingStream.auth is not a credential (64 hex digits)');
  const address = str(o, 'address', 15);
  if (!isIpv4(address)) throw new Error('field incomingStream.address is not an IPv4 address');
  const key = decodeClusterKey(JSON.stringify(obj(o.key, 'field config.incomingStream.key')));
  if (!key.ok) throw new Error(`field incomingStream.key: ${key.message}`);
  return { mig, from, auth, address, key: key.value };
}
