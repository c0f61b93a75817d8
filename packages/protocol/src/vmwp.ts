/**
 * The control link between VMMS (the root partition) and a VM worker process (VMWP): msgpack
 * frames over a ZeroMQ ROUTER that the VMWP binds in the host's socket directory. The VMWP owns its
 * VM for the VM's whole life; the root is a client that may die and come back (as Hyper-V's VMMS
 * is a restartable service that re-attaches to running worker processes), so the link is a socket
 * a new root can connect to, not a pipe inherited from the parent.
 *
 * Frames: a request `{t:'req', id, body}`, its answer `{t:'res', id, ok, result | error}`, and
 * notes the VMWP pushes to the attached root `{t:'note', body}`. The first request of a root must be
 * `hello` with the VMWP's secret (from its record file in the run directory, mode 0600); the VMWP
 * answers nothing else before that. Every frame is decoded once, here, by a checking decoder; an
 * answer's result by decodeVmwpResult, which the root's end of the link applies with the request
 * it answers (VmwpResults: what the root may use of each).
 *
 * Faults (ARCHITECTURE §9): `faultSet` applies a VM fault (faults.ts's VmFaultSpec) for `forMs`
 * and the VMWP ends it by itself; `faultClear` ends one or all at once; `faultList` lists them;
 * the note `faultEnded` tells the root each one that ended, with its counters.
 */
import { isPlainObject } from './hvwire.js';
import { checkFaultDuration, decodeFaultCounters, decodeVmFaultSpec, FAULT_ID_RE, INSTANT_FAULT_KINDS, VM_FAULT_KINDS, type VmbusFaultCounters, type VmFaultKind, type VmFaultSpec } from './faults.js';
import { decode } from './wire.js';
import { MEMBER_SECRET_RE } from './cluster.js';
import { INTEGRATION_SERVICES, type DeviceClass } from './devices.js';
import { MAX_VPS_PER_PARTITION } from './hypercall.js';
import { KVP_MAX_KEY_BYTES, KVP_MAX_VALUE_BYTES } from './kvp.js';
import type { GuestKernelInfo, GuestStatus } from './guest-pages.js';
import type { IcServiceInfo } from './mgmt.js';
import { decodeMigrationStats, MIG_BATCH_MAX_ENTRIES, MIG_BATCH_MAX_PAGES, MIGRATION_ERROR_MAX_CHARS, type MigrationStats } from './migrate.js';

export type VmwpRequest =
  | { t: 'hello'; secret: string }
  | { t: 'describe' }
  | { t: 'status' }
  | { t: 'peek'; gpa: number; len: number }
  | { t: 'suspend'; value: boolean }
  | { t: 'hypercall'; asChild: boolean; code: number; input: Record<string, unknown> }
  | { t: 'processor'; reserve: number; maximum: number; weight: number }
  | { t: 'save' }
  | { t: 'turnOff'; reason: string }
  | { t: 'ic'; enable: string | null; disable: string | null }
  | { t: 'kvp'; op: 'set' | 'get' | 'delete' | 'list'; pool: string; key: string | null; value: string | null }
  | { t: 'shutdown'; timeoutS: number }
  /** Live migration, source: move the VM through `endpoint` (the link to `to`) with the cluster key. */
  | { t: 'migOut'; mig: string; from: string; to: string; endpoint: string; auth: string; key: { cluster: string; publicKey: string; secretKey: string }; config: Record<string, unknown>; options: Record<string, unknown> }
  /** `force`: resume a move in doubt here (MigrationOut.cancel). */
  | { t: 'migCancel'; reason: string; force?: boolean }
  /**
   * Live migration, destination (a VMWP started `incoming`): a page batch, then the saved-state
   * tree (answered once the VPs run and the host's devices are back), then, before the commit,
   * `migBooted`: answered once the guest kernel says it resumed (its VMBus client is back).
   */
  | { t: 'migPages'; data: Uint8Array }
  /** The source guest's GPADLs (VmbusServer.gpadlHint, as JSON), mapped ahead of the blackout; answer: whether they were. */
  | { t: 'migPremap'; state: Uint8Array }
  | { t: 'migState'; state: Uint8Array; pages: Uint8Array | null }
  | { t: 'migBooted'; waitMs: number }
  /** Post-copy, destination: switch over (state + bitmap of the pages still to come), then pulls for what the guest waits on. */
  | { t: 'migSwitch'; state: Uint8Array; missing: Uint8Array }
  | { t: 'migPull'; waitMs: number }
  | { t: 'migDone' }
  /**
   * Applies a fault now; the VMWP ends it after `forMs` (bitflip: instantaneous, `forMs` may be 0).
   * A fault with the same id is replaced. Answer: a `VmwpFaultApplied`.
   */
  | { t: 'faultSet'; id: string; spec: VmFaultSpec; forMs: number }
  /** Ends fault `id` (null: every fault) at once. Answer: `{ cleared: string[] }` (the ids ended; none is no error). */
  | { t: 'faultClear'; id: string | null }
  /** Answer: `VmwpFaultInfo[]`, the active faults. */
  | { t: 'faultList' };

/** Counters of a fault: for vmbus, packets and signals (faults.ts VmbusFaultCounters); for others, an empty map. */
export type VmwpFaultStats = VmbusFaultCounters | Record<string, never>;

/** What `faultSet` answers. */
export interface VmwpFaultApplied {
  id: string;
  kind: VmFaultKind;
  /** ms since 1970. */
  startedAt: number;
  endsAt: number;
  /** vmbus: the names of the channels it applies to (all of the VM's when its channel is null); else empty. */
  channels: string[];
  /** What the VMWP did, by kind (vmbus: {}, interrupt-delay: {delayUs}, clock: {offsetUs, skewPpm}, vp-stall: {vps, mask}, bitflip: {gpa, mask, before, after}). */
  applied: Record<string, unknown>;
  /** The id of a fault it replaced (same id, or the same kind for interrupt-delay, clock, vp-stall), or null. */
  replaced: string | null;
}

/** One line of `faultList`. */
export interface VmwpFaultInfo {
  id: string;
  kind: VmFaultKind;
  spec: VmFaultSpec;
  startedAt: number;
  endsAt: number;
  channels: string[];
  stats: VmwpFaultStats;
}

export type VmwpNote =
  | { t: 'booted'; partitionId: number; partitionPid: number | null }
  | { t: 'failed'; message: string }
  | { t: 'exiting'; reason: string; guestShutdown: boolean }
  /**
   * An incoming VMWP has built the partition and devices and takes pages: from the root, or on
   * its own stream socket when it has one (`streamPort`, on the host's address).
   */
  | { t: 'incomingReady'; partitionId: number; streamPort: number | null }
  /** The migration's stream reached the worker's socket (at most once a second): the source is alive. */
  | { t: 'migSeen' }
  /** The migrated VM runs here (said before the source hears it; `postcopy`: pages still arriving). */
  | { t: 'migRunning'; postcopy: boolean }
  /** The migrated VM did not start here; the worker stopped its guest. */
  | { t: 'migFailed'; message: string }
  /** A migration's statistics (protocol/src/migrate.ts), as they change (checked: decodeMigrationStats). */
  | { t: 'migProgress'; stats: MigrationStats }
  /**
   * A fault ended: its time was up (`expired`) or it was ended early (`cleared`: by faultClear, by a
   * faultSet that replaced it, or before a save or a migration; `why` says which). `stats` as in faultList.
   */
  | { t: 'faultEnded'; id: string; kind: string; reason: 'expired' | 'cleared'; why: string; stats: VmwpFaultStats }
  /**
   * A pause, resume or save ended (`ok`: it did what was asked), with what the VM is now: its VPs
   * suspended or not, and saved (waiting to be turned off). Said before the request's answer, for a
   * root that re-attached while it ran (VmwpDescription.pending): the answer goes to the root that
   * asked, which may be gone.
   */
  | { t: 'settled'; op: VmwpPendingOp; ok: boolean; suspended: boolean; saved: boolean };

/** An operation of the root's that changes what a VM does, while the worker runs it. */
export type VmwpPendingOp = 'pause' | 'resume' | 'save';
const PENDING_OPS: ReadonlySet<unknown> = new Set<VmwpPendingOp>(['pause', 'resume', 'save']);

/** A pending operation as a peer sent it (a description's `pending`, a note's `op`): null when it is none of them. */
export function decodePendingOp(v: unknown): VmwpPendingOp | null {
  return PENDING_OPS.has(v) ? (v as VmwpPendingOp) : null;
}

/** What a VMWP says about its VM when a (new) root attaches. */
export interface VmwpDescription {
  name: string;
  partitionId: number;
  partitionPid: number | null;
  booted: boolean;
  suspended: boolean;
  /** A save completed; the VM only waits to be turned off (the root died in between). */
  saved: boolean;
  /** ms since 1970 when the guest reported boot. */
  runningSince: number | null;
  /** The restore came from a saved state that is now consumed. */
  restored: boolean;
  /** A pause, resume or save running now (its end is a `settled` note); absent from older workers. */
  pending?: VmwpPendingOp | null;
  /** The VM's move from here that runs now (its id and destination), for a root that re-attaches during it. */
  moving?: { mig: string; to: string } | null;
  /**
   * An incoming migration's worker (until its commit): whether the migrated VM runs here
   * (`started`) and whether post-copy still brings its pages (`postcopy`), for a root that
   * re-attaches during it. Absent from older workers and from any other.
   */
  incoming?: { started: boolean; postcopy: boolean } | null;
}

/** The incoming migration a worker's description names (an untrusted answer's `incoming`), or null. Never throws. */
export function decodeDescribedIncoming(v: unknown): { started: boolean; postcopy: boolean } | null {
  try {
    if (v === null || typeof v !== 'object') return null;
    const o = v as Record<string, unknown>;
    return typeof o.started === 'boolean' && typeof o.postcopy === 'boolean' ? { started: o.started, postcopy: o.postcopy && o.started } : null;
  } catch {
    return null;
  }
}

/** The move a worker's description names (an untrusted answer's `moving`), or null. Never throws. */
export function decodeDescribedMove(v: unknown): { mig: string; to: string } | null {
  try {
    if (v === null || typeof v !== 'object') return null;
    const o = v as Record<string, unknown>;
    return typeof o.mig === 'string' && /^[a-z0-9-]{8,64}$/.test(o.mig) && typeof o.to === 'string' && /^[a-z][a-z0-9-]{0,9}$/.test(o.to) ? { mig: o.mig, to: o.to } : null;
  } catch {
    return null;
  }
}

/** The record a VMWP keeps in the run directory (`run/vmwp/NAME.json`) so a new root finds it. */
export interface VmwpRecord {
  version: 1;
  name: string;
  id: string;
  pid: number;
  endpoint: string;
  secret: string;
  partitionId: number | null;
  partitionPid: number | null;
  startedAt: string;
  /** The seed of the VM's device instance ids when not its id (a VM that took a booted warm worker). */
  instanceSeed?: string;
  /** Set just before the VMWP exits: why, and whether the guest shut itself down. */
  exit: { reason: string; guestShutdown: boolean; at: string } | null;

}

export type VmwpFrame =
  | { t: 'req'; id: number; body: VmwpRequest }
  | { t: 'res'; id: number; ok: true; result: unknown }
  | { t: 'res'; id: number; ok: false; error: string; code: string | null }
  | { t: 'note'; body: VmwpNote };

export class VmwpDecodeError extends Error {
  override name = 'VmwpDecodeError';
  constructor(message: string, readonly id: number | null = null) {
    super(message);
  }
}

/** A plain map (msgpack also decodes dates, sets, errors and typed arrays, which are no maps). */
const isObj = (v: unknown): v is Record<string, unknown> => isPlainObject(v);
const MAX_STR = 4096;

function str(o: Record<string, unknown>, k: string, nullable = false, max = MAX_STR): string | null {
  const v = o[k];
  if (v === undefined || v === null) {
    if (nullable) return null;
    throw new VmwpDecodeError(`field ${k} is missing`);
  }
  if (typeof v !== 'string' || v.length > max) throw new VmwpDecodeError(`field ${k} is not a string of at most ${max} characters`);
  return v;
}
/** A pair's credential (cluster.ts MEMBER_SECRET_RE) in field `auth`. */
function credential(o: Record<string, unknown>): string {
  const v = str(o, 'auth', false, 64)!;
  if (!MEMBER_SECRET_RE.test(v)) throw new VmwpDecodeError('field auth is not a credential (64 hex digits)');
  return v;
}
function int(o: Record<string, unknown>, k: string, min: number, max: number): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new VmwpDecodeError(`field ${k} is not an integer from ${min} to ${max}`);
  return v;
}
function bool(o: Record<string, unknown>, k: string): boolean {
  const v = o[k];
  if (typeof v !== 'boolean') throw new VmwpDecodeError(`field ${k} is not a boolean`);
  return v;
}

function faultId(o: Record<string, unknown>, k: string): string {
  const v = o[k];
  if (typeof v !== 'string' || !FAULT_ID_RE.test(v)) throw new VmwpDecodeError(`field ${k} is not a fault id (letters, digits, '.', '_' or '-', at most 64)`);
  return v;
}

function decodeRequest(b: Record<string, unknown>): VmwpRequest {
  const t = b.t;
  switch (t) {
    case 'hello': return { t, secret: str(b, 'secret', false, 256)! };
    case 'describe':
    case 'status':
    case 'save':
      return { t };
    case 'peek': return { t, gpa: int(b, 'gpa', 0, Number.MAX_SAFE_INTEGER), len: int(b, 'len', 1, 16 * 1024 * 1024) };
    case 'suspend': return { t, value: bool(b, 'value') };
    case 'hypercall': {
      if (!isObj(b.input)) throw new VmwpDecodeError('field input is not a map');
      return { t, asChild: bool(b, 'asChild'), code: int(b, 'code', 0, 0xffff), input: b.input };
    }
    case 'processor': return { t, reserve: int(b, 'reserve', 0, 100), maximum: int(b, 'maximum', 1, 100), weight: int(b, 'weight', 1, 10000) };
    case 'turnOff': return { t, reason: str(b, 'reason', false, 512)! };
    case 'ic': return { t, enable: str(b, 'enable', true, 32), disable: str(b, 'disable', true, 32) };
    case 'kvp': {
      const op = b.op;
      if (op !== 'set' && op !== 'get' && op !== 'delete' && op !== 'list') throw new VmwpDecodeError('field op is not set, get, delete or list');
      return { t, op, pool: str(b, 'pool', false, 32)!, key: str(b, 'key', true, 2048), value: str(b, 'value', true, 8192) };
    }
    case 'shutdown': return { t, timeoutS: int(b, 'timeoutS', 1, 3600) };
    case 'migOut': {
      if (!isObj(b.key) || !isObj(b.config) || !isObj(b.options)) throw new VmwpDecodeError('fields key, config and options must be maps');
      const key = { cluster: str(b.key, 'cluster', false, 64)!, publicKey: str(b.key, 'publicKey', false, 40)!, secretKey: str(b.key, 'secretKey', false, 40)! };
      const named = (k: string, re: RegExp): string => {
        const v = str(b, k, false, 64)!;
        if (!re.test(v)) throw new VmwpDecodeError(`field ${k} is not a valid ${k === 'mig' ? 'migration id' : 'host name'}`);
        return v;
      };
      return { t, mig: named('mig', /^[a-z0-9-]{8,64}$/), from: named('from', /^[a-z][a-z0-9-]{0,9}$/), to: named('to', /^[a-z][a-z0-9-]{0,9}$/), endpoint: str(b, 'endpoint', false, 200)!, auth: credential(b), key, config: b.config, options: b.options };
    }
    case 'migCancel':
      if (b.force !== undefined && typeof b.force !== 'boolean') throw new VmwpDecodeError('field force is not a boolean');
      return { t, reason: str(b, 'reason', false, 512)!, ...(b.force === true ? { force: true } : {}) };
    case 'migSwitch': {
      const st = b.state;
      const mi = b.missing;
      if (!(st instanceof Uint8Array) || st.length > 2 * 1024 * 1024) throw new VmwpDecodeError('field state is not bytes of at most 2 MiB');
      if (!(mi instanceof Uint8Array) || mi.length > 512 * 1024) throw new VmwpDecodeError('field missing is not bytes of at most 512 KiB');
      return { t, state: st, missing: mi };
    }
    case 'migPull': return { t, waitMs: int(b, 'waitMs', 0, 5000) };
    case 'faultSet': {
      const id = faultId(b, 'id');
      const spec = decodeVmFaultSpec(b.spec);
      if (!spec.ok) throw new VmwpDecodeError(`field spec: ${spec.message}`);
      const forMs = b.forMs;
      const bad = checkFaultDuration(forMs, INSTANT_FAULT_KINDS.includes(spec.value.kind));
      if (bad !== null) throw new VmwpDecodeError(`field forMs: ${bad}`);
      return { t, id, spec: spec.value, forMs: forMs as number };
    }
    case 'faultClear': return { t, id: b.id === null || b.id === undefined ? null : faultId(b, 'id') };
    case 'faultList': return { t };
    case 'migDone': return { t };
    case 'migBooted': return { t, waitMs: int(b, 'waitMs', 0, 60000) };
    case 'migPages':
    case 'migPremap':
    case 'migState': {
      const k = t === 'migPages' ? 'data' : 'state';
      const v = b[k];
      if (!(v instanceof Uint8Array) || v.length > 2 * 1024 * 1024) throw new VmwpDecodeError(`field ${k} is not bytes of at most 2 MiB`);
      if (t === 'migPages') return { t, data: v };
      if (t === 'migPremap') return { t, state: v };
      const pages = b.pages;
      if (pages !== undefined && pages !== null && (!(pages instanceof Uint8Array) || pages.length > 2 * 1024 * 1024)) throw new VmwpDecodeError('field pages is not bytes of at most 2 MiB');
      return { t, state: v, pages: pages instanceof Uint8Array ? pages : null };
    }
    default: throw new VmwpDecodeError(`request type ${typeof t === 'string' ? JSON.stringify(t.slice(0, 40)) : typeof t} is unknown`);
  }
}

function decodeNote(b: Record<string, unknown>): VmwpNote {
  switch (b.t) {
    case 'booted': return { t: 'booted', partitionId: int(b, 'partitionId', 2, 0x7fffffff), partitionPid: b.partitionPid === null ? null : int(b, 'partitionPid', 1, 0x7fffffff) };
    case 'failed': return { t: 'failed', message: str(b, 'message', false, MAX_STR)! };
    case 'exiting': return { t: 'exiting', reason: str(b, 'reason', false, MAX_STR)!, guestShutdown: bool(b, 'guestShutdown') };
    case 'incomingReady': return { t: 'incomingReady', partitionId: int(b, 'partitionId', 2, 0x7fffffff), streamPort: b.streamPort === undefined || b.streamPort === null ? null : int(b, 'streamPort', 1, 65535) };
    case 'migSeen': return { t: 'migSeen' };
    case 'migRunning': return { t: 'migRunning', postcopy: bool(b, 'postcopy') };
    case 'migFailed': return { t: 'migFailed', message: str(b, 'message', false, MAX_STR)! };
    case 'migProgress':
      if (!isObj(b.stats)) throw new VmwpDecodeError('field stats is not a map');
      return { t: 'migProgress', stats: migrationStats(b.stats, 'stats') };
    case 'faultEnded': {
      const reason = b.reason;
      if (reason !== 'expired' && reason !== 'cleared') throw new VmwpDecodeError('field reason is not expired or cleared');
      return { t: 'faultEnded', id: faultId(b, 'id'), kind: str(b, 'kind', false, 32)!, reason, why: str(b, 'why', false, 512)!, stats: faultStats(b.stats) };
    }
    case 'settled': {
      const op = decodePendingOp(b.op);
      if (op === null) throw new VmwpDecodeError('field op is not pause, resume or save');
      return { t: 'settled', op, ok: bool(b, 'ok'), suspended: bool(b, 'suspended'), saved: bool(b, 'saved') };
    }
    default: throw new VmwpDecodeError('note type is unknown');
  }
}

/** A fault's counters as the worker sent them (decodeFaultCounters), or a VmwpDecodeError naming the field. */
function faultStats(v: unknown): VmwpFaultStats {
  if (!isObj(v)) throw new VmwpDecodeError('field stats is not a map');
  const c = decodeFaultCounters(v);
  if (!c.ok) throw new VmwpDecodeError(`field stats: ${c.message}`);
  return c.value ?? {};
}

/** The most faults a `faultList` answer lists (a VMWP holds at most 32). */
export const VMWP_FAULT_LIST_MAX = 64;

/**
 * A VMWP's `faultList` answer, checked (the root forwards it to the nemesis): each fault's id,
 * kind, times, channels and counters; anything else is a VmwpDecodeError.
 */
export function decodeVmwpFaultList(v: unknown): VmwpFaultInfo[] {
  if (!Array.isArray(v) || v.length > VMWP_FAULT_LIST_MAX) throw new VmwpDecodeError(`a fault list must be a list of at most ${VMWP_FAULT_LIST_MAX} faults`);
  return Array.from(v as unknown[], (x) => {
    if (!isObj(x)) throw new VmwpDecodeError('each listed fault must be a map');
    if (!(VM_FAULT_KINDS as readonly unknown[]).includes(x.kind)) throw new VmwpDecodeError('field kind is not a VM fault kind');
    const spec = decodeVmFaultSpec(x.spec);
    if (!spec.ok) throw new VmwpDecodeError(`field spec: ${spec.message}`);
    return {
      id: faultId(x, 'id'), kind: x.kind as VmFaultKind, spec: spec.value, startedAt: int(x, 'startedAt', 0, Number.MAX_SAFE_INTEGER), endsAt: int(x, 'endsAt', 0, Number.MAX_SAFE_INTEGER),
      channels: faultChannels(x), stats: faultStats(x.stats),
    };
  });
}

// ---- answers ---------------------------------------------------------------------------------

/** What `status` answers: nothing read before the guest booted, else its status page with the intercepts and its kernel page (guest-pages.ts). */
export type VmwpGuestStatus = { booted: false; progress: null } | (GuestStatus & { intercepts: number; kernel: GuestKernelInfo });

/** What `hypercall` answers: the hypervisor's status, and its output as it came (passed on to `hvlab debug hypercall`; the root reads none of it). */
export interface VmwpHypercallAnswer {
  status: number;
  output: unknown;
}

/** A KVP pair, as `kvp` set, get and list answer it (`pool`: the pool asked). */
export interface VmwpKvpPair {
  pool: 'external' | 'guest' | 'auto';
  key: string;
  value: string;
}

/** What `kvp` answers, by its op: set and get the pair, delete the key with `deleted: true`, list the pairs. */
export type VmwpKvpAnswer = VmwpKvpPair | { pool: VmwpKvpPair['pool']; key: string; deleted: true } | VmwpKvpPair[];

/**
 * What `migState` answers once the migrated VM runs: the worker's own time since it took the
 * state (`ms`) and, on a clock the hosts share, its VPs' first dispatch (`clock` and `ranAtNs`,
 * both or neither); `migSwitch` adds the pages still missing.
 */
export interface VmwpStateAnswer {
  running: true;
  ms: number;
  clock?: string;
  ranAtNs?: number;
}

/** What `migPull` answers: the pages the guest waits for, the pages still missing and the guest's requests so far. */
export interface VmwpPullAnswer {
  pfns: number[];
  remaining: number;
  requests: number;
}

/**
 * What the root may use of each request's answer (decodeVmwpResult). `void`: an answer the root
 * does not read (any value is accepted, and none is passed on).
 */
export interface VmwpResults {
  hello: void;
  describe: VmwpDescription;
  status: VmwpGuestStatus;
  peek: Uint8Array;
  suspend: void;
  hypercall: VmwpHypercallAnswer;
  processor: void;
  save: void;
  turnOff: void;
  ic: IcServiceInfo[];
  kvp: VmwpKvpAnswer;
  shutdown: void;
  migOut: MigrationStats;
  migCancel: void;
  migPages: number;
  migPremap: boolean;
  migState: VmwpStateAnswer;
  migBooted: void;
  migSwitch: VmwpStateAnswer & { missing: number };
  migPull: VmwpPullAnswer;
  migDone: void;
  faultSet: VmwpFaultApplied;
  faultClear: { cleared: string[] };
  faultList: VmwpFaultInfo[];
}

/** The checked answer to request `R`. */
export type VmwpResultOf<R extends VmwpRequest> = VmwpResults[R['t']];

/** The most KVP pairs a `kvp` list answers (KvpProvider.list enumerates at most 10,000). */
export const VMWP_KVP_LIST_MAX = 10000;
/** The most fields a fault's `applied` has (a bit flip's four). */
const FAULT_APPLIED_MAX_FIELDS = 8;
const KVP_POOLS: ReadonlySet<unknown> = new Set(['external', 'guest', 'auto']);
const IC_STATUSES: ReadonlySet<unknown> = new Set(['OK', 'NoContact', 'LostCommunication']);
const IC_FIELDS: ReadonlySet<string> = new Set(['service', 'enabled', 'status', 'version', 'rejected', 'sequence', 'offsetMs', 'initialOffsetMs', 'samples']);
/** A host clock's id (host-clock.ts: the kernel's boot id). */
const CLOCK_ID_RE = /^[0-9a-f-]{36}$/;

/** A finite number from `min` to `max` in field `k` (fractions allowed). */
function num(o: Record<string, unknown>, k: string, min: number, max: number): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new VmwpDecodeError(`field ${k} is not a number from ${min} to ${max}`);
  return v;
}

/** Whether field `k` is absent (undefined or nil). */
const absent = (o: Record<string, unknown>, k: string): boolean => o[k] === undefined || o[k] === null;

/** `v` as a map, or a VmwpDecodeError saying what `what` is not. */
function answerMap(v: unknown, what: string): Record<string, unknown> {
  if (!isObj(v)) throw new VmwpDecodeError(`${what} is not a map`);
  return v;
}

/** Each of list `v` (at most `max`) through `f`; a refusal names the item (`what[i]: …`). */
function listOf<T>(v: unknown, what: string, max: number, f: (x: unknown) => T): T[] {
  if (!Array.isArray(v) || v.length > max) throw new VmwpDecodeError(`${what} is not a list of at most ${max}`);
  // Array.from, not map: every index is visited (a hole, which no decoded frame has, is undefined).
  return Array.from(v as unknown[], (x, i) => {
    try {
      return f(x);
    } catch (e) {
      if (e instanceof VmwpDecodeError) throw new VmwpDecodeError(`${what}[${i}]: ${e.message}`);
      throw e;
    }
  });
}

/**
 * A move's statistics from a worker (migOut's answer, migProgress's note), checked by
 * decodeMigrationStats. A reason longer than the statistics carry is cut, not refused: a failed
 * move's `error-desc` holds the error's own message, and a move in doubt must still say so.
 */
function migrationStats(v: unknown, k: string): MigrationStats {
  let src = v;
  if (isObj(v) && typeof v['error-desc'] === 'string' && v['error-desc'].length > MIGRATION_ERROR_MAX_CHARS) src = { ...v, 'error-desc': v['error-desc'].slice(0, MIGRATION_ERROR_MAX_CHARS) };
  const st = decodeMigrationStats(src);
  if (typeof st === 'string') throw new VmwpDecodeError(`field ${k}: ${st}`);
  return st;
}

function describeAnswer(v: unknown): VmwpDescription {
  const o = answerMap(v, 'the description');
  const partitionId = int(o, 'partitionId', 0, 0x7fffffff);
  if (partitionId === 1) throw new VmwpDecodeError('field partitionId is not 0 (none yet) or a partition id from 2');
  // Absent from older workers (null: none); present, each must be what it says.
  const pending = absent(o, 'pending') ? null : decodePendingOp(o.pending);
  if (!absent(o, 'pending') && pending === null) throw new VmwpDecodeError('field pending is not pause, resume or save');
  const moving = absent(o, 'moving') ? null : decodeDescribedMove(o.moving);
  if (!absent(o, 'moving') && moving === null) throw new VmwpDecodeError('field moving is not a move (a migration id and a host name)');
  const incoming = absent(o, 'incoming') ? null : decodeDescribedIncoming(o.incoming);
  if (!absent(o, 'incoming') && incoming === null) throw new VmwpDecodeError('field incoming is not an incoming migration (started and postcopy)');
  return {
    name: str(o, 'name', false, 64)!, partitionId, partitionPid: absent(o, 'partitionPid') ? null : int(o, 'partitionPid', 1, 0x7fffffff),
    booted: bool(o, 'booted'), suspended: bool(o, 'suspended'), saved: bool(o, 'saved'),
    runningSince: absent(o, 'runningSince') ? null : int(o, 'runningSince', 0, Number.MAX_SAFE_INTEGER), restored: bool(o, 'restored'), pending, moving, incoming,
  };
}

function statusAnswer(v: unknown): VmwpGuestStatus {
  const o = answerMap(v, 'the status');
  if (o.progress === null) {
    if (o.booted !== false) throw new VmwpDecodeError('field progress is null for a booted guest');
    return { booted: false, progress: null };
  }
  const k = answerMap(o.kernel, 'field kernel');
  return {
    booted: bool(o, 'booted'), progress: int(o, 'progress', 0, Number.MAX_SAFE_INTEGER), steps: int(o, 'steps', 0, Number.MAX_SAFE_INTEGER),
    messagesReceived: int(o, 'messagesReceived', 0, 0xffffffff), eventsReceived: int(o, 'eventsReceived', 0, 0xffffffff), intercepts: int(o, 'intercepts', 0, Number.MAX_SAFE_INTEGER),
    kernel: { running: int(k, 'running', 0, MAX_VPS_PER_PARTITION), maxRunning: int(k, 'maxRunning', 0, MAX_VPS_PER_PARTITION), rtcFromCmosMs: num(k, 'rtcFromCmosMs', 0, Number.MAX_VALUE) },
  };
}

function icAnswer(v: unknown): IcServiceInfo[] {
  const seen = new Set<string>();
  return listOf(v, 'the integration services', INTEGRATION_SERVICES.length, (x) => {
    const o = answerMap(x, 'an integration service');
    for (const f of Object.keys(o)) if (!IC_FIELDS.has(f)) throw new VmwpDecodeError(`field ${JSON.stringify(f.slice(0, 32))} is unknown`);
    const service = o.service;
    if (!(INTEGRATION_SERVICES as readonly unknown[]).includes(service)) throw new VmwpDecodeError('field service is not an integration service');
    if (seen.has(service as string)) throw new VmwpDecodeError(`field service names ${service as string} twice`);
    seen.add(service as string);
    if (!IC_STATUSES.has(o.status)) throw new VmwpDecodeError('field status is not OK, NoContact or LostCommunication');
    const e: IcServiceInfo = { service: service as DeviceClass, enabled: bool(o, 'enabled'), status: o.status as IcServiceInfo['status'], version: str(o, 'version', true, 16) };
    if (o.rejected !== undefined) e.rejected = int(o, 'rejected', 0, Number.MAX_SAFE_INTEGER);
    // A heartbeat's sequence is the guest's 64-bit counter (as a number).
    if (o.sequence !== undefined) e.sequence = num(o, 'sequence', 0, 2 ** 64);
    for (const f of ['offsetMs', 'initialOffsetMs'] as const) if (o[f] !== undefined) e[f] = o[f] === null ? null : num(o, f, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    if (o.samples !== undefined) e.samples = int(o, 'samples', 0, Number.MAX_SAFE_INTEGER);
    return e;
  });
}

function kvpAnswer(req: Extract<VmwpRequest, { t: 'kvp' }>, v: unknown): VmwpKvpAnswer {
  const pair = (x: unknown, deleted: boolean): VmwpKvpAnswer => {
    const o = answerMap(x, 'a KVP pair');
    if (!KVP_POOLS.has(o.pool)) throw new VmwpDecodeError('field pool is not external, guest or auto');
    const pool = o.pool as VmwpKvpPair['pool'];
    const key = str(o, 'key', false, KVP_MAX_KEY_BYTES)!;
    if (!deleted) return { pool, key, value: str(o, 'value', false, KVP_MAX_VALUE_BYTES)! };
    if (o.deleted !== true) throw new VmwpDecodeError('field deleted is not true');
    return { pool, key, deleted: true };
  };
  if (req.op === 'list') return listOf(v, 'the KVP pairs', VMWP_KVP_LIST_MAX, (x) => pair(x, false) as VmwpKvpPair);
  return pair(v, req.op === 'delete');
}

function stateAnswer(v: unknown): VmwpStateAnswer {
  const o = answerMap(v, 'the answer');
  if (o.running !== true) throw new VmwpDecodeError('field running is not true');
  const out: VmwpStateAnswer = { running: true, ms: num(o, 'ms', 0, Number.MAX_SAFE_INTEGER) };
  if (absent(o, 'clock') !== absent(o, 'ranAtNs')) throw new VmwpDecodeError('fields clock and ranAtNs come together');
  if (!absent(o, 'clock')) {
    const clock = str(o, 'clock', false, 36)!;
    if (!CLOCK_ID_RE.test(clock)) throw new VmwpDecodeError('field clock is not a clock id');
    out.clock = clock;
    out.ranAtNs = num(o, 'ranAtNs', 0, Number.MAX_VALUE);
  }
  return out;
}

function faultChannels(o: Record<string, unknown>): string[] {
  const ch = o.channels;
  if (!Array.isArray(ch) || ch.length > 64) throw new VmwpDecodeError('field channels is not a list of channel names');
  const out = Array.from(ch as unknown[]);
  if (out.some((c) => typeof c !== 'string' || c.length > 32)) throw new VmwpDecodeError('field channels is not a list of channel names');
  return out as string[];
}

function faultAppliedAnswer(v: unknown): VmwpFaultApplied {
  const o = answerMap(v, 'the applied fault');
  if (!(VM_FAULT_KINDS as readonly unknown[]).includes(o.kind)) throw new VmwpDecodeError('field kind is not a VM fault kind');
  // What the worker did, by kind (vp-stall: its VPs and mask; the others: numbers): passed on, bounded.
  const a = answerMap(o.applied, 'field applied');
  const fields = Object.keys(a);
  if (fields.length > FAULT_APPLIED_MAX_FIELDS) throw new VmwpDecodeError(`field applied has more than ${FAULT_APPLIED_MAX_FIELDS} fields`);
  const applied: Record<string, number | number[]> = {};
  for (const f of fields) {
    if (!/^[A-Za-z]{1,16}$/.test(f)) throw new VmwpDecodeError(`field applied: ${JSON.stringify(f.slice(0, 32))} is not a field name`);
    const x = a[f];
    const whole = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n);
    if (whole(x)) applied[f] = x;
    else if (Array.isArray(x) && x.length <= MAX_VPS_PER_PARTITION && Array.from(x as unknown[]).every(whole)) applied[f] = Array.from(x as number[]);
    else throw new VmwpDecodeError(`field applied: "${f}" is not a whole number or a list of at most ${MAX_VPS_PER_PARTITION}`);
  }
  return {
    id: faultId(o, 'id'), kind: o.kind as VmFaultKind, startedAt: int(o, 'startedAt', 0, Number.MAX_SAFE_INTEGER), endsAt: int(o, 'endsAt', 0, Number.MAX_SAFE_INTEGER),
    channels: faultChannels(o), applied, replaced: absent(o, 'replaced') ? null : faultId(o, 'replaced'),
  };
}

/**
 * The one checking decoder of a VMWP's answer to `req` (its `result`, when ok), for the root:
 * exactly what VmwpResults says the root may use, in a fresh value; for an answer the root does
 * not read, undefined. Anything else is a VmwpDecodeError naming the field. The worker is less
 * trusted than the root (a guest that took its worker over must not take the root down), so
 * nothing it answers reaches the root's code unchecked.
 */
export function decodeVmwpResult<R extends VmwpRequest>(req: R, v: unknown): VmwpResultOf<R> {
  return decodeResult(req, v) as VmwpResultOf<R>;
}

function decodeResult(req: VmwpRequest, v: unknown): VmwpResults[keyof VmwpResults] {
  switch (req.t) {
    case 'hello':
    case 'suspend':
    case 'processor':
    case 'save':
    case 'turnOff':
    case 'shutdown':
    case 'migCancel':
    case 'migBooted':
    case 'migDone':
      return undefined;
    case 'describe': return describeAnswer(v);
    case 'status': return statusAnswer(v);
    case 'peek':
      if (!(v instanceof Uint8Array) || v.length !== req.len) throw new VmwpDecodeError(`the memory read is not ${req.len} bytes`);
      return v;
    case 'hypercall': {
      const o = answerMap(v, 'the hypercall result');
      return { status: int(o, 'status', 0, 0xffff), output: o.output === undefined ? null : o.output };
    }
    case 'ic': return icAnswer(v);
    case 'kvp': return kvpAnswer(req, v);
    case 'migOut': return migrationStats(v, 'result');
    case 'migPages':
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > MIG_BATCH_MAX_ENTRIES) throw new VmwpDecodeError(`the pages written are not a count from 0 to ${MIG_BATCH_MAX_ENTRIES}`);
      return v;
    case 'migPremap':
      if (typeof v !== 'boolean') throw new VmwpDecodeError('whether the GPADLs were mapped is not a boolean');
      return v;
    case 'migState': return stateAnswer(v);
    case 'migSwitch': return { ...stateAnswer(v), missing: int(answerMap(v, 'the answer'), 'missing', 0, Number.MAX_SAFE_INTEGER) };
    case 'migPull': {
      const o = answerMap(v, 'the answer');
      const pfns = listOf(o.pfns, 'field pfns', MIG_BATCH_MAX_PAGES, (p) => {
        if (typeof p !== 'number' || !Number.isSafeInteger(p) || p < 0 || p > 0xffffffff) throw new VmwpDecodeError('not a page number (0 to 4294967295)');
        return p;
      });
      return { pfns, remaining: int(o, 'remaining', 0, Number.MAX_SAFE_INTEGER), requests: int(o, 'requests', 0, Number.MAX_SAFE_INTEGER) };
    }
    case 'faultSet': return faultAppliedAnswer(v);
    case 'faultClear': {
      const o = answerMap(v, 'the answer');
      return {
        cleared: listOf(o.cleared, 'field cleared', VMWP_FAULT_LIST_MAX, (x) => {
          if (typeof x !== 'string' || !FAULT_ID_RE.test(x)) throw new VmwpDecodeError('not a fault id');
          return x;
        }),
      };
    }
    case 'faultList': return decodeVmwpFaultList(v);
  }
}

/** Decodes one frame of the VMWP control link; throws VmwpDecodeError (with the id when readable). */
export function decodeVmwpFrame(bytes: Uint8Array): VmwpFrame {
  let v: unknown;
  try {
    v = decode(bytes);
  } catch {
    throw new VmwpDecodeError('the frame is not msgpack');
  }
  if (!isObj(v)) throw new VmwpDecodeError('the frame is not a map');
  const id = typeof v.id === 'number' && Number.isSafeInteger(v.id) && v.id >= 0 ? v.id : null;
  try {
    if (v.t === 'req') {
      if (id === null) throw new VmwpDecodeError('a request needs an id');
      if (!isObj(v.body)) throw new VmwpDecodeError('a request needs a body map');
      return { t: 'req', id, body: decodeRequest(v.body) };
    }
    if (v.t === 'res') {
      if (id === null) throw new VmwpDecodeError('an answer needs an id');
      if (v.ok === true) return { t: 'res', id, ok: true, result: v.result };
      if (v.ok === false) return { t: 'res', id, ok: false, error: typeof v.error === 'string' ? v.error.slice(0, MAX_STR) : 'request failed', code: typeof v.code === 'string' && /^[A-Za-z]{1,32}$/.test(v.code) ? v.code : null };
      throw new VmwpDecodeError('field ok is not a boolean');
    }
    if (v.t === 'note') {
      if (!isObj(v.body)) throw new VmwpDecodeError('a note needs a body map');
      return { t: 'note', body: decodeNote(v.body) };
    }
    throw new VmwpDecodeError('frame type is not req, res or note');
  } catch (e) {
    if (e instanceof VmwpDecodeError && e.id === null && id !== null) throw new VmwpDecodeError(e.message, id);
    throw e;
  }
}

/** Checks a VMWP record read from the run directory (a file a crash may have truncated). */
export function decodeVmwpRecord(v: unknown): VmwpRecord {
  if (!isObj(v) || v.version !== 1) throw new VmwpDecodeError('the record is not a version-1 map');
  let exit: VmwpRecord['exit'] = null;
  if (v.exit !== null && v.exit !== undefined) {
    if (!isObj(v.exit)) throw new VmwpDecodeError('field exit is not a map');
    exit = { reason: str(v.exit, 'reason')!, guestShutdown: bool(v.exit, 'guestShutdown'), at: str(v.exit, 'at', false, 64)! };
  }
  return {
    version: 1,
    name: str(v, 'name', false, 64)!,
    id: str(v, 'id', false, 64)!,
    pid: int(v, 'pid', 1, 0x7fffffff),
    endpoint: str(v, 'endpoint', false, 200)!,
    secret: str(v, 'secret', false, 256)!,
    partitionId: v.partitionId === null ? null : int(v, 'partitionId', 2, 0x7fffffff),
    partitionPid: v.partitionPid === null ? null : int(v, 'partitionPid', 1, 0x7fffffff),
    startedAt: str(v, 'startedAt', false, 64)!,
    ...(v.instanceSeed === undefined ? {} : { instanceSeed: str(v, 'instanceSeed', false, 64)! }),
    exit,
  };
}

/**
 * How a worker's exit reason begins when its VM was moved away and runs on the destination (the
 * host named after it): a root that finds it (it was restarted during the move, so no move of its
 * own waits for the answer) drops the VM from this host, as the move would have.
 */
export const VMWP_EXIT_MIGRATED = 'migrated to ';
