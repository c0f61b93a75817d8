/**
 * The management API of a host's root partition (VMMS), spoken by the CLI, tests and experiment
 * scripts over ZeroMQ (DEALER -> ROUTER, msgpack). Every request names the API version; the root
 * refuses other majors. State changes are published on a PUB socket, topic "vm".
 *
 * Anyone who can connect to the management socket can send it anything, so the root decodes each
 * frame once with `decodeMgmtRequest`: msgpack, then the request's own fields, then the exact
 * argument shape of its operation (names, types, ranges, which are required). A frame that does
 * not decode, or a request with an argument of the wrong name or type, is answered with an error
 * and never reaches VMMS. Checks that need a VM's context (its state, memory size, workload names,
 * reserve against maximum) stay in VMMS, which now receives typed values.
 *
 * Argument rules: an optional argument may be absent, `undefined` or `null` (all three mean "not
 * given"); a required one may not. Strings are strings. Numbers that the CLI sends as the text the
 * user typed (`vps`, `rtcOffset`, the processor settings) may be digit strings or safe integers and
 * come out as numbers; every other number must be a number. No decoder calls a method of a decoded
 * value: a msgpack map may carry a `toString` that is not a function.
 */
import { INTEGRATION_SERVICES, type DeviceClass } from './devices.js';
import { describeValue, isPlainObject, checkPlainData } from './hvwire.js';
import { MAX_VPS_PER_PARTITION } from './hypercall.js';
import { VM_NAME_RE } from './vm.js';
import { decode } from './wire.js';
import { CLUSTER_HOST_RE, type PeerHealth } from './cluster.js';
import { decodeHostFaultSpec, FAULT_ID_RE, FAULT_MAX_MS, type HostFaultSpec } from './faults.js';

export const MGMT_API_VERSION = 1;

/** Largest request frame the root reads; a bigger one is answered BadRequest without being decoded. */
export const MGMT_FRAME_MAX_BYTES = 1024 * 1024;
/** Requests the root works on at once; beyond this it answers Busy until one finishes. */
export const MGMT_MAX_IN_FLIGHT = 256;
/** Longest string argument (KVP values are at most 2048 bytes; names at most 63 characters). */
export const MGMT_STRING_MAX = 4096;
/** Most bytes one `vmPeek` reads. */
export const MGMT_PEEK_MAX_BYTES = 16 * 1024 * 1024;
/** Longest stop timeout (`vmStop` `timeoutS`), seconds. */
export const MGMT_STOP_TIMEOUT_MAX_S = 3600;
/** Most round trips and bytes one `linkProbe` makes. */
export const LINK_PROBE_MAX_PINGS = 10_000;
export const LINK_PROBE_MAX_BYTES = 4 * 1024 * 1024 * 1024;
/** Largest CMOS clock offset (`vmNew` `rtcOffset`): ten years of seconds. */
export const MGMT_RTC_OFFSET_MAX_S = 10 * 365 * 86400;

export const MGMT_OPS = [
  'ping', 'hostInfo', 'hostMemory', 'vmNew', 'vmStart', 'vmStop', 'vmTurnOff', 'vmPause', 'vmResume', 'vmSave', 'vmStatus',
  'vmSetProcessor', 'vmDelete', 'vmList', 'vmPeek', 'vmIc', 'vmKvp', 'ps', 'debugHypercall', 'shutdown', 'linkProbe',
  'linkProbeStop', 'vmMove', 'vmMoveStatus', 'vmMoveCancel', 'faultSet', 'faultClear', 'faultList',
] as const;
export type MgmtOp = (typeof MGMT_OPS)[number];

/** The integration services, from the device-class registry. */
export const MGMT_IC_SERVICES: readonly DeviceClass[] = INTEGRATION_SERVICES;
export type MgmtIcService = DeviceClass;
export const MGMT_KVP_POOLS = ['external', 'guest', 'auto'] as const;
export type MgmtKvpPool = (typeof MGMT_KVP_POOLS)[number];
export const MGMT_KVP_OPS = ['set', 'get', 'delete', 'list'] as const;
export type MgmtKvpOp = (typeof MGMT_KVP_OPS)[number];

/** No arguments at all. */
export type MgmtNoArgs = Record<string, never>;
/** Just the VM. */
export type MgmtVmArgs = { name: string };
/** The VM, and optionally the id it must have (else the call fails NotFound and changes nothing). */
export type MgmtVmOfIdArgs = { name: string; id?: string };

/** A VM's id: a UUID (it names the VM's sockets). */
export const VM_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/*
 * The arguments of each operation, as the decoder hands them on. (Type aliases rather than
 * interfaces, so that each is also a Record<string, unknown> for code that takes any arguments.)
 */
export type MgmtArgs = {
  ping: MgmtNoArgs;
  hostInfo: MgmtNoArgs;
  /** The root process's memory; `collect`: after a full garbage collection (what is still held, not what awaits collection). */
  hostMemory: { collect?: boolean };
  /** `memory` is the size text ("64M"; a number of bytes arrives as its decimal text); VMMS parses it. */
  /**
   * `id`: the VM's id, chosen by the caller (a run names the VM to its lease before it makes it, so
   * a run killed at any point leaves no VM its lease did not name); a new random one when absent.
   */
  vmNew: { name: string; memory?: string; vps?: number; workload?: string; rtcOffset?: number; id?: string };
  vmStart: MgmtVmArgs;
  vmStop: { name: string; timeoutS?: number; force?: boolean };
  /** `id`: only if VM `name` is still the VM of that id (a run's VM, not a later one of its name). */
  vmTurnOff: MgmtVmOfIdArgs;
  vmPause: MgmtVmArgs;
  vmResume: MgmtVmArgs;
  vmSave: MgmtVmArgs;
  vmStatus: MgmtVmArgs;
  vmSetProcessor: { name: string; reserve?: number; maximum?: number; weight?: number };
  /** `id`: as vmTurnOff's. */
  vmDelete: MgmtVmOfIdArgs;
  vmList: MgmtNoArgs;
  vmPeek: { name: string; gpa: number; len: number };
  vmIc: { name: string; enable?: MgmtIcService; disable?: MgmtIcService };
  vmKvp: { name: string; pool?: MgmtKvpPool } & (
    | { op: 'set'; key: string; value: string }
    | { op: 'get' | 'delete'; key: string }
    | { op: 'list' }
  );
  ps: MgmtNoArgs;
  /** `call` is a name (CreatePartition) or a code (0x40); VMMS parses it. `as` names a running VM. */
  /** `page`: through the root's hypercall page (the hot path's way), not its socket; a refusal then carries no reason. */
  debugHypercall: { call: string; as?: string | null; input?: Record<string, unknown>; page?: boolean };
  shutdown: MgmtNoArgs;
  /**
   * Round trips and a bulk transfer from this host to cluster peer `peer` through their link
   * (`direct`: to the peer's own address, past the link layer, as a baseline).
   */
  linkProbe: { peer: string; pings?: number; bytes?: number; direct?: boolean; timeoutMs?: number };
  /**
   * Ends this host's link probes to `peer` now, through the link or direct (an interrupted CLI's):
   * each fails with Cancelled. `{ stopped }`: how many there were.
   */
  linkProbeStop: { peer: string };
  /** Move-VM to host `to` of the cluster (options: protocol/src/migrate.ts; missing ones take the defaults). */
  vmMove: {
    name: string; to: string; bandwidthBps?: number; downtimeLimitMs?: number; maxPasses?: number;
    compress?: boolean; autoConverge?: boolean; postcopy?: boolean; offline?: boolean;
  };
  vmMoveStatus: MgmtVmArgs;
  /** `force`: resume the source's copy of a move in doubt (its commit sent, the destination silent): see MigrationOut.cancel. */
  vmMoveCancel: { name: string; force?: boolean };
  /**
   * A fault this host enforces (faults.ts; the nemesis asks): of VM `vm` (through its worker) or,
   * with `vm` absent, of the host (lp-shrink, through the hypervisor). It ends by itself after
   * `forMs`; a second one with the same id replaces it.
   */
  faultSet: { id: string; vm?: string; spec: HostFaultSpec; forMs: number };
  /**
   * Ends fault `id` (absent: every fault) of VM `vm` (absent: of the host and all its VMs) now.
   * `unnamed`: only the host's LP shrink that names no fault (its root lists it with a null id),
   * with neither `id` nor `vm`. `host`: only the host's LP shrink of fault `id` (needed; no `vm`),
   * never a VM's fault of that id (two nemeses, a cluster home's and a host's own, both number
   * their faults f1, f2, …). A root before either refuses it: `unnamed` is sent only to a root
   * that lists a null id, `host` only to one whose faultList answer says `hostClear: true`.
   */
  faultClear: { id?: string; vm?: string; unnamed?: true; host?: true };
  /**
   * The faults this host enforces now: `{ host: [its LP shrink], vms: [{ vm, faults }], hostClear:
   * true }` (`hostClear`: it takes faultClear `host`; a root before it leaves it out).
   */
  faultList: MgmtNoArgs;
};

/** A checked request: its `args` have exactly the shape of its `op`. */
export type MgmtRequest = { [K in MgmtOp]: { v: number; id: number; op: K; args: MgmtArgs[K] } }[MgmtOp];
/** An operation and its arguments, as a handler receives them (`(op, args)` narrows together). */
export type MgmtCall = { [K in MgmtOp]: [op: K, args: MgmtArgs[K]] }[MgmtOp];

export interface MgmtError {
  /**
   * e.g. 'NotFound', 'InvalidArgument', 'InvalidState', 'AlreadyExists', 'Internal'; and for frames
   * the root could not take: 'BadRequest' (not a request), 'VersionMismatch', 'Busy' (too many in flight).
   */
  code: string;
  message: string;
}
/** `id` is the request's, or 0 when the frame carried none that could be read. */
export type MgmtResponse = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: MgmtError };

// ---- the checking decoder ----------------------------------------------------------------------

/** Why a frame was refused before any handler saw it. */
export type MgmtRejectCode = 'BadRequest' | 'VersionMismatch' | 'InvalidArgument';
export type MgmtRequestDecoded =
  | { ok: true; request: MgmtRequest }
  | { ok: false; id: number; error: { code: MgmtRejectCode; message: string } };
export type MgmtArgsDecoded<K extends MgmtOp> = { ok: true; args: MgmtArgs[K] } | { ok: false; message: string };

const REQUEST_FIELDS = ['v', 'id', 'op', 'args'];
const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

/** A string for a sentence: short ones quoted, long ones only measured (never echoed whole). */
function quote(s: string, max = 64): string {
  return JSON.stringify(s.length > max ? `${s.slice(0, max)}…` : s);
}

/** What a value is, naming it when it is short: `the string "2x"`, `the number 0`, `a map`. */
function shown(v: unknown): string {
  return typeof v === 'string' && v.length <= 64 ? `the string ${quote(v)}` : describeValue(v);
}

const stringWant = (max: number, min: number): string => (min > 0 ? `a string of ${min} to ${max} characters` : `a string of at most ${max} characters`);

/** A refused argument; thrown inside the argument decoders, caught by `decodeMgmtArgs`. */
class ArgumentRejected extends Error {}

/**
 * Reads one operation's arguments. Unknown names are refused at construction, before any value
 * is read, so that a typo ("memroy") is reported as such rather than as a missing argument.
 */
class ArgReader {
  constructor(private readonly op: MgmtOp, private readonly raw: Record<string, unknown>, allowed: readonly string[]) {
    for (const k of Object.keys(raw)) {
      if (!allowed.includes(k)) {
        const known = allowed.length === 0 ? 'it takes no arguments' : `its arguments are ${allowed.join(', ')}`;
        throw new ArgumentRejected(`${op} has no argument ${quote(k, 32)} (${known})`);
      }
    }
  }

  /** The value, or undefined when absent, undefined or null. */
  private get(name: string): unknown {
    const v = own(this.raw, name) ? this.raw[name] : undefined;
    return v === null ? undefined : v;
  }

  fail(name: string, v: unknown, want: string): never {
    throw new ArgumentRejected(`${this.op} argument "${name}" is ${shown(v)}, not ${want}`);
  }

  private need<T>(name: string, want: string, v: T | undefined): T {
    if (v === undefined) {
      const given = own(this.raw, name) && this.raw[name] === null ? ' (it is null)' : '';
      throw new ArgumentRejected(`${this.op} needs argument "${name}": ${want}${given}`);
    }
    return v;
  }

  refuse(name: string, why: string): void {
    if (this.get(name) !== undefined) throw new ArgumentRejected(`${this.op} ${why} takes no argument "${name}"`);
  }

  optString(name: string, max = MGMT_STRING_MAX, min = 0): string | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length > max || v.length < min) this.fail(name, v, stringWant(max, min));
    return v;
  }

  string(name: string, max = MGMT_STRING_MAX, min = 0): string {
    return this.need(name, stringWant(max, min), this.optString(name, max, min));
  }

  optVmName(name: string): string | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(name, v, 'a VM name');
    // The sentence VMMS has always given, so a bad name reads the same from every client.
    if (!VM_NAME_RE.test(v)) throw new ArgumentRejected(`VM name ${quote(v)} is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    return v;
  }

  vmName(name = 'name'): string {
    return this.need(name, 'a VM name', this.optVmName(name));
  }

  optOneOf<T extends string>(name: string, values: readonly T[]): T | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) this.fail(name, v, `one of ${values.join(', ')}`);
    return v as T;
  }

  oneOf<T extends string>(name: string, values: readonly T[]): T {
    return this.need(name, `one of ${values.join(', ')}`, this.optOneOf(name, values));
  }

  optBoolean(name: string): boolean | undefined {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'boolean') this.fail(name, v, 'a boolean');
    return v as boolean | undefined;
  }

  /**
   * A whole number from lo to hi: a safe integer, or (`text`) the digits the user typed, as the CLI
   * sends them. Nothing else converts: not "1e2", " 5", "0x10", [5] or an object's valueOf.
   */
  optWhole(name: string, lo: number, hi: number, text: boolean): number | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    const want = `a whole number from ${lo} to ${hi}${text ? ' (a number or its digits)' : ''}`;
    let n: number;
    if (typeof v === 'number') n = v;
    else if (text && typeof v === 'string' && /^-?\d{1,16}$/.test(v)) n = Number(v);
    else this.fail(name, v, want);
    if (!Number.isSafeInteger(n) || n < lo || n > hi) this.fail(name, v, want);
    // -0 from "-0" or a float encoding is 0.
    return n === 0 ? 0 : n;
  }

  whole(name: string, lo: number, hi: number, text: boolean): number {
    return this.need(name, `a whole number from ${lo} to ${hi}`, this.optWhole(name, lo, hi, text));
  }

  /** A finite number in (lo, hi]. */
  optPositive(name: string, hi: number): number | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > hi) this.fail(name, v, `a number of seconds above 0 and at most ${hi}`);
    return v;
  }

  /** A size as text for VMMS to parse ("64M"), or a number of bytes, which becomes its digits. */
  optSizeText(name: string): string | undefined {
    const v = this.get(name);
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v) || v < 0) this.fail(name, v, 'a size such as "64M" or a whole number of bytes');
      return String(v);
    }
    return this.optString(name, 32, 1);
  }

  /** A VM's id (a UUID), as lower case. */
  optVmId(name: string): string | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || !VM_ID_RE.test(v)) this.fail(name, v, 'a VM id (a UUID)');
    return v.toLowerCase();
  }

  /** A fault spec (faults.ts), checked by its own decoder. */
  faultSpec(name: string): HostFaultSpec {
    const v = this.get(name);
    if (v === undefined) return this.need<HostFaultSpec>(name, 'a fault spec', undefined);
    const d = decodeHostFaultSpec(v);
    if (!d.ok) throw new ArgumentRejected(`${this.op} argument "${name}": ${d.message}`);
    return d.value;
  }

  /** A fault id (faults.ts FAULT_ID_RE). */
  optFaultId(name: string): string | undefined {
    const v = this.optString(name, 64, 1);
    if (v !== undefined && !FAULT_ID_RE.test(v)) this.fail(name, v, 'a fault id (letters, digits, dots, dashes, underscores)');
    return v;
  }

  /** A map of plain data (hypercall input): checked for depth and size, not field by field. */
  optPlainMap(name: string): Record<string, unknown> | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (!isPlainObject(v)) this.fail(name, v, 'a map');
    const bad = checkPlainData(v, `${this.op} argument "${name}"`);
    if (bad) throw new ArgumentRejected(bad);
    return v;
  }
}

type ArgDecoder<K extends MgmtOp> = (a: (allowed: readonly string[]) => ArgReader) => MgmtArgs[K];

const noArgs = <K extends MgmtOp>(): ArgDecoder<K> => (a) => {
  a([]);
  return {} as MgmtArgs[K];
};
const vmOnly = <K extends MgmtOp>(): ArgDecoder<K> => (a) => ({ name: a(['name']).vmName() }) as MgmtArgs[K];
const vmOfId = <K extends MgmtOp>(): ArgDecoder<K> => (a) => {
  const r = a(['name', 'id']);
  const out: MgmtVmOfIdArgs = { name: r.vmName() };
  put(out, 'id', r.optVmId('id'));
  return out as MgmtArgs[K];
};

/** Sets `o[k]` only when `v` is given, so a decoded request has no undefined-valued keys. */
function put<T extends object, K extends keyof T>(o: T, k: K, v: T[K] | undefined): void {
  if (v !== undefined) o[k] = v;
}

/** One argument decoder per operation. */
export const MGMT_ARG_DECODERS: { [K in MgmtOp]: ArgDecoder<K> } = {
  ping: noArgs(),
  hostInfo: noArgs(),
  hostMemory: (a) => {
    const r = a(['collect']);
    const out: MgmtArgs['hostMemory'] = {};
    put(out, 'collect', r.optBoolean('collect'));
    return out;
  },
  vmList: noArgs(),
  ps: noArgs(),
  shutdown: noArgs(),
  vmStart: vmOnly(),
  vmTurnOff: vmOfId(),
  vmPause: vmOnly(),
  vmResume: vmOnly(),
  vmSave: vmOnly(),
  vmStatus: vmOnly(),
  vmDelete: vmOfId(),
  vmNew: (a) => {
    const r = a(['name', 'memory', 'vps', 'workload', 'rtcOffset', 'id']);
    const out: MgmtArgs['vmNew'] = { name: r.vmName() };
    put(out, 'id', r.optVmId('id'));
    put(out, 'memory', r.optSizeText('memory'));
    put(out, 'vps', r.optWhole('vps', 1, MAX_VPS_PER_PARTITION, true));
    put(out, 'workload', r.optString('workload', 64, 1));
    put(out, 'rtcOffset', r.optWhole('rtcOffset', -MGMT_RTC_OFFSET_MAX_S, MGMT_RTC_OFFSET_MAX_S, true));
    return out;
  },
  vmStop: (a) => {
    const r = a(['name', 'timeoutS', 'force']);
    const out: MgmtArgs['vmStop'] = { name: r.vmName() };
    put(out, 'timeoutS', r.optPositive('timeoutS', MGMT_STOP_TIMEOUT_MAX_S));
    put(out, 'force', r.optBoolean('force'));
    return out;
  },
  vmSetProcessor: (a) => {
    const r = a(['name', 'reserve', 'maximum', 'weight']);
    const out: MgmtArgs['vmSetProcessor'] = { name: r.vmName() };
    put(out, 'reserve', r.optWhole('reserve', 0, 100, true));
    put(out, 'maximum', r.optWhole('maximum', 1, 100, true));
    put(out, 'weight', r.optWhole('weight', 1, 10000, true));
    return out;
  },
  vmPeek: (a) => {
    const r = a(['name', 'gpa', 'len']);
    return { name: r.vmName(), gpa: r.whole('gpa', 0, Number.MAX_SAFE_INTEGER, false), len: r.whole('len', 1, MGMT_PEEK_MAX_BYTES, false) };
  },
  vmIc: (a) => {
    const r = a(['name', 'enable', 'disable']);
    const out: MgmtArgs['vmIc'] = { name: r.vmName() };
    put(out, 'enable', r.optOneOf('enable', MGMT_IC_SERVICES));
    put(out, 'disable', r.optOneOf('disable', MGMT_IC_SERVICES));
    if (out.enable !== undefined && out.disable !== undefined) throw new ArgumentRejected('vmIc takes enable or disable, not both');
    return out;
  },
  vmKvp: (a) => {
    const r = a(['name', 'op', 'pool', 'key', 'value']);
    const name = r.vmName();
    const op = r.oneOf('op', MGMT_KVP_OPS);
    const pool = r.optOneOf('pool', MGMT_KVP_POOLS);
    let out: MgmtArgs['vmKvp'];
    if (op === 'list') {
      r.refuse('key', 'list');
      r.refuse('value', 'list');
      out = { name, op };
    } else if (op === 'set') {
      out = { name, op, key: r.string('key'), value: r.string('value') };
    } else {
      const key = r.string('key');
      r.refuse('value', op);
      out = { name, op, key };
    }
    put(out, 'pool', pool);
    return out;
  },
  debugHypercall: (a) => {
    const r = a(['call', 'as', 'input', 'page']);
    const out: MgmtArgs['debugHypercall'] = { call: r.string('call', 64, 1) };
    put(out, 'as', r.optVmName('as'));
    put(out, 'input', r.optPlainMap('input'));
    put(out, 'page', r.optBoolean('page'));
    return out;
  },
  linkProbe: (a) => {
    const r = a(['peer', 'pings', 'bytes', 'direct', 'timeoutMs']);
    const peer = r.string('peer', 10, 1);
    if (!CLUSTER_HOST_RE.test(peer)) throw new ArgumentRejected(`linkProbe argument "peer" must be a host name (lower-case letter, then letters, digits or "-", at most 10)`);
    const out: MgmtArgs['linkProbe'] = { peer };
    put(out, 'pings', r.optWhole('pings', 0, LINK_PROBE_MAX_PINGS, true));
    put(out, 'bytes', r.optWhole('bytes', 0, LINK_PROBE_MAX_BYTES, true));
    put(out, 'direct', r.optBoolean('direct'));
    put(out, 'timeoutMs', r.optWhole('timeoutMs', 1, 600_000, true));
    return out;
  },
  linkProbeStop: (a) => {
    const r = a(['peer']);
    const peer = r.string('peer', 10, 1);
    if (!CLUSTER_HOST_RE.test(peer)) throw new ArgumentRejected(`linkProbeStop argument "peer" must be a host name (lower-case letter, then letters, digits or "-", at most 10)`);
    return { peer };
  },
  vmMoveStatus: vmOnly(),
  vmMoveCancel: (a) => {
    const r = a(['name', 'force']);
    const out: MgmtArgs['vmMoveCancel'] = { name: r.vmName() };
    put(out, 'force', r.optBoolean('force'));
    return out;
  },
  faultList: noArgs(),
  faultSet: (a) => {
    const r = a(['id', 'vm', 'spec', 'forMs']);
    const id = r.optFaultId('id') ?? r.fail('id', undefined, 'a fault id');
    const out: MgmtArgs['faultSet'] = { id, spec: r.faultSpec('spec'), forMs: r.whole('forMs', 0, FAULT_MAX_MS, false) };
    put(out, 'vm', r.optVmName('vm'));
    if (out.spec.kind === 'lp-shrink' && out.vm !== undefined) throw new ArgumentRejected('faultSet: lp-shrink is a fault of the host: it takes no "vm"');
    if (out.spec.kind !== 'lp-shrink' && out.vm === undefined) throw new ArgumentRejected(`faultSet: a ${out.spec.kind} fault needs "vm"`);
    if (out.spec.kind !== 'bitflip' && out.forMs === 0) throw new ArgumentRejected('faultSet: a fault without an end is refused: "forMs" must be above 0');
    return out;
  },
  faultClear: (a) => {
    const r = a(['id', 'vm', 'unnamed', 'host']);
    const out: MgmtArgs['faultClear'] = {};
    put(out, 'id', r.optFaultId('id'));
    put(out, 'vm', r.optVmName('vm'));
    const unnamed = r.optBoolean('unnamed') === true;
    const host = r.optBoolean('host') === true;
    if (unnamed && host) throw new ArgumentRejected('faultClear: "unnamed" and "host" are two ways to end the host\'s LP shrink: give one');
    if (unnamed) {
      if (out.id !== undefined || out.vm !== undefined) throw new ArgumentRejected('faultClear: "unnamed" ends the host\'s LP shrink that names no fault: it takes no "id" or "vm"');
      out.unnamed = true;
    }
    if (host) {
      if (out.id === undefined || out.vm !== undefined) throw new ArgumentRejected('faultClear: "host" ends the host\'s LP shrink of fault "id" and no VM\'s fault: it needs "id" and takes no "vm"');
      out.host = true;
    }
    return out;
  },
  vmMove: (a) => {
    const r = a(['name', 'to', 'bandwidthBps', 'downtimeLimitMs', 'maxPasses', 'compress', 'autoConverge', 'postcopy', 'offline']);
    const to = r.string('to', 10, 1);
    if (!CLUSTER_HOST_RE.test(to)) throw new ArgumentRejected('vmMove argument "to" must be a host name (lower-case letter, then letters, digits or "-", at most 10)');
    const out: MgmtArgs['vmMove'] = { name: r.vmName(), to };
    put(out, 'bandwidthBps', r.optWhole('bandwidthBps', 0, 1e12, true));
    put(out, 'downtimeLimitMs', r.optWhole('downtimeLimitMs', 1, 3_600_000, true));
    put(out, 'maxPasses', r.optWhole('maxPasses', 1, 1000, true));
    put(out, 'compress', r.optBoolean('compress'));
    put(out, 'autoConverge', r.optBoolean('autoConverge'));
    put(out, 'postcopy', r.optBoolean('postcopy'));
    put(out, 'offline', r.optBoolean('offline'));
    return out;
  },
};

/**
 * Checks the arguments of `op` (absent arguments are `{}`). Returns the typed arguments or a
 * sentence naming the argument and its value. Never throws.
 */
export function decodeMgmtArgs<K extends MgmtOp>(op: K, args: unknown): MgmtArgsDecoded<K> {
  const raw = args === undefined ? {} : args;
  if (!isPlainObject(raw)) return { ok: false, message: `the arguments of ${op} must be a map, not ${shown(raw)}` };
  try {
    const decoder = MGMT_ARG_DECODERS[op] as ArgDecoder<K>;
    return { ok: true, args: decoder((allowed) => new ArgReader(op, raw, allowed)) };
  } catch (e) {
    if (e instanceof ArgumentRejected) return { ok: false, message: e.message };
    throw e;
  }
}

const isMgmtOp = (s: string): s is MgmtOp => (MGMT_OPS as readonly string[]).includes(s);

/**
 * Checks an already-decoded value as a request: a map with a request number `id` (a safe integer,
 * 0 or more), the API version `v`, a known `op` and its arguments, and no other fields. A refusal
 * carries the request's id when one could be read, else 0. A request of another API version is
 * refused as VersionMismatch before anything else of it is read (its shape may differ). Never throws.
 */
export function checkMgmtRequest(value: unknown): MgmtRequestDecoded {
  if (!isPlainObject(value)) return { ok: false, id: 0, error: { code: 'BadRequest', message: `a management request must be a map, not ${shown(value)}` } };
  const id = own(value, 'id') ? value.id : undefined;
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
    return { ok: false, id: 0, error: { code: 'BadRequest', message: `request field id is ${shown(id)}, not a request number (a whole number, 0 or more)` } };
  }
  const reject = (code: MgmtRejectCode, message: string): MgmtRequestDecoded => ({ ok: false, id, error: { code, message } });
  const v = own(value, 'v') ? value.v : undefined;
  if (typeof v !== 'number') return reject('BadRequest', `request field v is ${shown(v)}, not an API version number`);
  if (v !== MGMT_API_VERSION) return reject('VersionMismatch', `management API version ${v} is not supported; this host speaks ${MGMT_API_VERSION}`);
  for (const k of Object.keys(value)) {
    if (!REQUEST_FIELDS.includes(k)) return reject('BadRequest', `a management request has no field ${quote(k, 32)} (its fields are ${REQUEST_FIELDS.join(', ')})`);
  }
  const op = own(value, 'op') ? value.op : undefined;
  if (typeof op !== 'string') return reject('BadRequest', `request field op is ${shown(op)}, not an operation name`);
  if (!isMgmtOp(op)) return reject('InvalidArgument', `unknown operation ${quote(op, 32)}`);
  const args = decodeMgmtArgs(op, own(value, 'args') ? value.args : undefined);
  if (!args.ok) return reject('InvalidArgument', args.message);
  return { ok: true, request: { v, id, op, args: args.args } as MgmtRequest };
}

/**
 * Decodes one request frame: its size (at most MGMT_FRAME_MAX_BYTES; a bigger frame is not even
 * parsed), msgpack, then `checkMgmtRequest`. Never throws.
 */
export function decodeMgmtRequest(bytes: Uint8Array): MgmtRequestDecoded {
  const bad = (message: string): MgmtRequestDecoded => ({ ok: false, id: 0, error: { code: 'BadRequest', message } });
  if (!(bytes instanceof Uint8Array)) return bad('a request frame must be bytes');
  if (bytes.length === 0) return bad('the request frame is empty');
  if (bytes.length > MGMT_FRAME_MAX_BYTES) return bad(`the request frame of ${bytes.length} bytes exceeds the limit of ${MGMT_FRAME_MAX_BYTES}`);
  let value: unknown;
  try {
    value = decode(bytes);
  } catch (e) {
    // msgpackr's own sentences ("Unexpected end of MessagePack data", a RangeError for very deep
    // nesting) say enough and never quote the data.
    const why = e instanceof Error && typeof e.message === 'string' ? e.message.slice(0, 120) : 'undecodable';
    return bad(`the request frame is not valid msgpack (${why})`);
  }
  return checkMgmtRequest(value);
}

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
  /**
   * The VM's processes that are stopped (SIGSTOP: a `pause` fault, or anyone's kill -STOP): with
   * its partition process stopped the VM is frozen whatever its state says, and its CPU is 0 (the
   * scheduler counts a dispatched VP as running until it yields, which a stopped one never does).
   * A root before this field leaves it out.
   */
  stopped?: Array<'partition' | 'vmwp'>;
  /**
   * The live migration this copy is part of, while it lasts (null when the VM is not moving):
   * `incoming` on the destination, from the setup until the commit (the copy is the source's,
   * `from`, until then: the destination refuses operations on it, and lists it beside the source's),
   * or `outgoing` on the source, from the move's asking (queued too) until its end. Read through
   * `vmMigrationOf`, which checks it (a root before this field leaves it out).
   */
  migration?: VmMigration | null;
}

/**
 * A VM's part in a live migration, as `vmList` reports it (VmInfo.migration). `switched`: the
 * switch-over happened, the guest runs at the destination (post-copy until its last page, or a
 * pre-copy's destination until the commit), and the source's copy stands frozen.
 */
export type VmMigration = ({ direction: 'incoming'; from: string } | { direction: 'outgoing'; to: string }) & { switched?: true };

/**
 * The `migration` of one VM of a `vmList` answer, checked: null when it says the VM is not moving,
 * undefined when it says nothing that can be read (a root before the field, or not a VmMigration:
 * a reader must not take an unreadable mark for "not moving").
 */
export function vmMigrationOf(vm: unknown): VmMigration | null | undefined {
  if (!isPlainObject(vm) || !own(vm, 'migration')) return undefined;
  const m = vm.migration;
  if (m === null) return null;
  if (!isPlainObject(m)) return undefined;
  const keys = Object.keys(m);
  const switched = own(m, 'switched');
  if (switched && m.switched !== true) return undefined;
  if (keys.length !== (switched ? 3 : 2) || !keys.includes('direction')) return undefined;
  const mark = switched ? { switched: true as const } : {};
  if (m.direction === 'incoming' && typeof m.from === 'string' && CLUSTER_HOST_RE.test(m.from)) return { direction: 'incoming', from: m.from, ...mark };
  if (m.direction === 'outgoing' && typeof m.to === 'string' && CLUSTER_HOST_RE.test(m.to)) return { direction: 'outgoing', to: m.to, ...mark };
  return undefined;
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
  /**
   * A worker without a VM: of the warm pool (still booting its template's guest, or booted and
   * ready to be claimed), or a spare (its code loaded, waiting for any start).
   */
  warm?: 'booting' | 'ready' | 'spare';
}

export interface HostInfo {
  hostId: string;
  home: string;
  apiVersion: number;
  memoryMode: 'shared' | 'private';
  memoryModeReason: string;
  lps: number;
  /**
   * An lp-shrink in force: the LPs the hypervisor's scheduler grants while it lasts, for how much
   * longer, and the fault that took the others (null: the shrink names no fault; a root before
   * null said "unknown", which is also a fault id). Null when every LP is there. From the root's
   * own record (a root restarted during a shrink has none, and shows every LP).
   */
  lpShrink?: { lps: number; remainingMs: number; fault: string | null } | null;
  pids: { hypervisor: number; root: number };
  vms: number;
  startedAt: string;
  nodeVersion: string;
  /** How VMBus channels carry packets: shared-memory rings, or ZeroMQ ("remote"). */
  vmbusTransport: 'shm' | 'remote';
  /** How hypercalls on the hot paths travel: through per-session hypercall pages, or the hypervisor's socket. */
  hypercallPath?: 'page' | 'socket';
  /**
   * How the hypervisor wakes the root's event loop for its page (completions, events): the
   * session's wake descriptor (one wake-up), the page's `attention` word (its watcher thread, then
   * the loop: two), or null without a page. The VM processes' sessions choose the same way.
   */
  hypercallWake?: 'descriptor' | 'word' | null;
  /** What the VM processes run: one bundle each, the compiled modules (no or stale bundles), or the sources through tsx. */
  code?: 'bundles' | 'compiled' | 'sources';
  /** How many times the hypervisor's supervisor restarted a dead root partition process. */
  rootRestarts?: number;
  /** The cluster this host is a member of, or null. */
  cluster?: HostClusterInfo | null;
  /**
   * How live migration finds dirty pages here: `kernel` (userfaultfd async write-protect and
   * PAGEMAP_SCAN on the partition's mapping) or `bitmap` (the dirty bitmap the guest kernel's
   * GuestMemory keeps, when the kernel's cannot be used: `reason` says why).
   */
  dirtyTracking?: { mode: 'kernel' | 'bitmap'; reason: string | null };
}

/**
 * What `hostMemory` answers: the root partition process's memory, in bytes (Node's
 * process.memoryUsage()). `collectedMs`: how long the full garbage collection before the reading
 * took, or null when none was asked for (or the process could not run one).
 */
export interface HostMemory {
  pid: number;
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  collectedMs: number | null;
}

export interface HostClusterInfo {
  cluster: string;
  name: string;
  address: string;
  /** Where the fabric was reached, and whether the last join or refresh got an answer. */
  fabric: string;
  fabricState: 'joined' | 'joining' | 'unreachable';
  /** Why the fabric refused this host's join (AlreadyExists: its name is taken; Full) while it has not joined; else null. */
  fabricRefusal: { code: string; message: string } | null;
  /** Heartbeats to each peer through its link. */
  peers: PeerHealth[];
  /** Connections refused for want of the cluster's key. */
  refused: number;
}

/** What `linkProbe` measured. */
export interface LinkProbeResult {
  from: string;
  peer: string;
  /** The address and port the probe went to (the fabric's port for the link, or the peer's own). */
  via: string;
  direct: boolean;
  /** Each round trip (ms), in order; a ping that got no answer within the timeout is not here. */
  rttMs: number[];
  lostPings: number;
  bytes: number;
  seconds: number;
  /** The bulk transfer's rate (bit/s), 0 without one. */
  bitsPerSecond: number;
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
  service: DeviceClass;
  enabled: boolean;
  status: 'OK' | 'NoContact' | 'LostCommunication';
  /** Negotiated message version, e.g. "3.0"; null before negotiation. */
  version: string | null;
  /** Packets from the guest the host's checking decoders refused (malformed, or answering nothing asked). */
  rejected?: number;
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

// ---- answers, as a client decodes them ----------------------------------------------------

/** A decoded answer; `error` is null when an error answer did not say what went wrong. */
export type MgmtAnswer = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: MgmtError | null };

/** Longest error message kept from an answer: it ends up as one line on a terminal. */
const MAX_ERROR_MESSAGE = 4000;

function isPlainAnswerObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || ArrayBuffer.isView(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * Checks one answer frame: a msgpack map with a positive safe-integer `id` and a boolean `ok`.
 * Returns null for anything else (including bytes that are not msgpack). An error answer's
 * `error` must be `{code: string, message: string}`, or it becomes null.
 */
export function decodeMgmtResponse(bytes: Uint8Array): MgmtAnswer | null {
  let v: unknown;
  try {
    v = decode(bytes);
  } catch {
    return null;
  }
  if (!isPlainAnswerObject(v)) return null;
  const id = v.id;
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 1) return null;
  if (v.ok === true) return { id, ok: true, result: v.result };
  if (v.ok !== false) return null;
  const e = v.error;
  if (!isPlainAnswerObject(e) || typeof e.code !== 'string' || typeof e.message !== 'string' || e.code.length > 64) return { id, ok: false, error: null };
  return { id, ok: false, error: { code: e.code, message: e.message.slice(0, MAX_ERROR_MESSAGE) } };
}

