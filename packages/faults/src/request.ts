/**
 * The one check of a fault request, wherever it comes from (the CLI's flags, an experiment file,
 * the nemesis's socket): kind, target grammar, a bounded duration, and each kind's parameters,
 * turned into what the enforcer takes. It returns a checked `FaultRequest` or a sentence; it never
 * throws and never calls a method of the value it is given.
 */
import {
  checkFaultDuration, decodeHostFaultSpec, FAULT_ID_RE, FAULT_KINDS, FAULT_MAX_DELAY_MS, INSTANT_FAULT_KINDS, isPlainObject, LINK_MAX_RATE_BPS, parseWholeNumber, PROCESS_ROLES, VMBUS_DEVICE_CLASSES,
  type FaultKind, type HostFaultSpec, type ProcessRole,
} from '@hvlab/protocol';
import { PARTITION_SHAPES, TARGET_SELECTORS, type FaultRequest } from './types.js';

export type Checked<T> = { ok: true; value: T } | { ok: false; message: string };

const HOST_RE = /^[a-z][a-z0-9-]{0,9}$/;
const VM_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const OWNER_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$/;

/** A parsed target (see types.ts for the grammar). */
export type Target =
  /** `on`: the host the VM is on (`vm:NAME@HOST`): one of two VMs of one name on two hosts. */
  | { t: 'vm'; vm: string; on?: string }
  | { t: 'host'; host: string }
  | { t: 'host-of'; vm: string }
  /** `a`-`b` is the first split of the text into two host names; the resolver tries the others if that link is not there. */
  | { t: 'link'; a: string; b: string; text: string }
  | { t: 'cluster' }
  | { t: 'vms' | 'hosts'; select: (typeof TARGET_SELECTORS)[number] };

export function parseTarget(s: unknown): Checked<Target> {
  const bad = (why: string): Checked<Target> => ({ ok: false, message: `target ${typeof s === 'string' ? JSON.stringify(s.slice(0, 80)) : 'that is not text'}: ${why}` });
  if (typeof s !== 'string' || s.length === 0 || s.length > 160) return bad('must be text such as vm:web, host:h1, host-of:web, link:h1-h2, cluster, vms:one or hosts:majority');
  if (s === 'cluster') return { ok: true, value: { t: 'cluster' } };
  const i = s.indexOf(':');
  if (i < 0) return bad('must be KIND:NAME (vm:web, host:h1, host-of:web, link:h1-h2, vms:one, hosts:minority) or cluster');
  const kind = s.slice(0, i);
  const rest = s.slice(i + 1);
  switch (kind) {
    case 'vm':
    case 'host-of': {
      // vm:NAME@HOST: the VM of that name on that host (a cluster's hosts may each have one).
      const at = kind === 'vm' ? rest.lastIndexOf('@') : -1;
      if (at >= 0) {
        const vm = rest.slice(0, at);
        const on = rest.slice(at + 1);
        if (!VM_RE.test(vm)) return bad('names no valid VM');
        if (!HOST_RE.test(on)) return bad('names no valid host after "@" (vm:NAME@HOST)');
        return { ok: true, value: { t: 'vm', vm, on } };
      }
      if (!VM_RE.test(rest)) return bad('names no valid VM');
      return { ok: true, value: kind === 'vm' ? { t: 'vm', vm: rest } : { t: 'host-of', vm: rest } };
    }
    case 'host':
      if (!HOST_RE.test(rest)) return bad('names no valid host (a host name is a letter, then up to 9 letters, digits or dashes)');
      return { ok: true, value: { t: 'host', host: rest } };
    case 'link': {
      // Host names may hold dashes: take the split that makes two valid names.
      for (let j = 1; j < rest.length - 1; j++) {
        if (rest[j] !== '-') continue;
        const a = rest.slice(0, j);
        const b = rest.slice(j + 1);
        if (HOST_RE.test(a) && HOST_RE.test(b) && a !== b) return { ok: true, value: { t: 'link', a, b, text: rest } };
      }
      return bad('must be link:A-B with two different host names');
    }
    case 'vms':
    case 'hosts':
      if (!(TARGET_SELECTORS as readonly string[]).includes(rest)) return bad(`the selector must be one of ${TARGET_SELECTORS.join(', ')}`);
      return { ok: true, value: { t: kind, select: rest as (typeof TARGET_SELECTORS)[number] } };
    default:
      return bad(`unknown kind of target "${kind.slice(0, 20)}" (vm, host, host-of, link, vms, hosts, or cluster)`);
  }
}

/** Which targets each kind takes. */
function targetFits(kind: FaultKind, t: Target, role: ProcessRole | null): string | null {
  const vmish = t.t === 'vm' || t.t === 'vms';
  const hostish = t.t === 'host' || t.t === 'hosts' || t.t === 'host-of';
  switch (kind) {
    case 'kill':
    case 'pause':
      // The cluster's process is its fabric: `--target cluster` hits it, with or without `--role fabric`.
      if (t.t === 'cluster') return role === null || role === 'fabric' ? null : `role ${role} belongs to a host or a VM: a ${kind} fault on the cluster hits its fabric (--role fabric)`;
      if (role === 'fabric') return 'the fabric is the cluster\'s: target cluster';
      if (t.t === 'link') return `a ${kind} fault hits processes: target a VM, a host or the cluster (its fabric)`;
      if (hostish && (role === 'partition' || role === 'vmwp')) return `role ${role} belongs to a VM: target vm:NAME or vms:SEL`;
      return null;
    case 'vmbus':
    case 'interrupt-delay':
    case 'clock':
    case 'vp-stall':
    case 'bitflip':
      return vmish ? null : `a ${kind} fault hits a VM: target vm:NAME or vms:SEL`;
    case 'lp-shrink':
      return hostish ? null : 'an lp-shrink fault hits a host: target host:NAME, host-of:VM or hosts:SEL';
    case 'link':
      return t.t === 'link' ? null : 'a link fault hits a link: target link:A-B';
    case 'partition':
      return t.t === 'cluster' ? null : 'a partition fault cuts the cluster: target cluster';
  }
}

const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

function numParam(p: Record<string, unknown>, k: string, min: number, max: number, int = true): number | undefined | string {
  if (!own(p, k) || p[k] === undefined || p[k] === null) return undefined;
  let v = p[k];
  if (typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v.trim())) v = Number(v);
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) return `"${k}" must be ${int ? 'a whole number' : 'a number'} from ${min} to ${max}`;
  return v;
}

function boolParam(p: Record<string, unknown>, k: string): boolean | undefined | string {
  if (!own(p, k) || p[k] === undefined || p[k] === null) return undefined;
  const v = p[k];
  if (v === true || v === 'true' || v === 'yes') return true;
  if (v === false || v === 'false' || v === 'no') return false;
  return `"${k}" must be true or false`;
}

const PARAMS: Record<FaultKind, readonly string[]> = {
  kill: ['restart'],
  pause: [],
  vmbus: ['channel', 'drop', 'delay', 'delayMs', 'duplicate', 'reorder', 'corrupt', 'signalDrop', 'signalDelay', 'signalDelayMs'],
  'interrupt-delay': ['delayMs'],
  clock: ['offsetMs', 'skewPpm'],
  'vp-stall': ['vps'],
  'lp-shrink': ['lps'],
  link: ['delayMs', 'jitterMs', 'rateBps', 'lossPercent', 'cut'],
  partition: ['shape'],
  bitflip: ['gpa', 'mask'],
};

/** The VM's or host's spec a kind's params make (kinds the roots enforce), or a sentence. `seed` goes to vmbus. */
export function hostSpecOf(kind: FaultKind, params: Record<string, unknown>, seed: number): Checked<HostFaultSpec> {
  const p = { ...params };
  let raw: Record<string, unknown>;
  switch (kind) {
    case 'vmbus':
      raw = { kind, ...p, seed };
      for (const k of Object.keys(raw)) if (typeof raw[k] === 'string' && k !== 'kind' && k !== 'channel' && /^-?\d+(\.\d+)?$/.test(raw[k] as string)) raw[k] = Number(raw[k]);
      // A delay given alone applies to every packet; a signal delay alone to every signal.
      if (raw.delayMs !== undefined && raw.delay === undefined) raw.delay = 1;
      if (raw.signalDelayMs !== undefined && raw.signalDelay === undefined) raw.signalDelay = 1;
      break;
    case 'vp-stall': {
      const v = p.vps;
      let vps: unknown = v;
      if (typeof v === 'string') vps = v.trim() === '' || v === 'all' ? null : v.split(',').map((x) => parseWholeNumber(x.trim()) ?? NaN);
      else if (typeof v === 'number') vps = [v];
      raw = { kind, vps: vps ?? null };
      break;
    }
    case 'interrupt-delay':
    case 'clock':
    case 'lp-shrink':
    case 'bitflip':
      // Numbers written as text become numbers; the spec's decoder says each one's range. A check
      // here of ±2^53 first said that range of a value that was not a whole number ('lp-shrink:
      // "lps" must be a whole number from -9007199254740991 to 9007199254740991' for 1.5).
      raw = { kind };
      for (const k of PARAMS[kind]) {
        if (!own(p, k) || p[k] === undefined) continue;
        const v = p[k];
        raw[k] = typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v.trim()) ? Number(v) : v;
      }
      break;
    default:
      return { ok: false, message: `${kind} is not enforced by a host` };
  }
  const d = decodeHostFaultSpec(raw);
  return d.ok ? { ok: true, value: d.value } : { ok: false, message: `${kind}: ${d.message}` };
}

/** Checks a request: returns it with params normalised (numbers as numbers), or a sentence. */
export function checkFaultRequest(v: unknown): Checked<FaultRequest> {
  if (!isPlainObject(v)) return { ok: false, message: 'a fault request must be a map' };
  for (const k of Object.keys(v)) {
    if (!['kind', 'target', 'role', 'forMs', 'params', 'owner', 'seed', 'id'].includes(k)) return { ok: false, message: `a fault request has an unknown field "${k.slice(0, 32)}"` };
  }
  const kind = v.kind;
  if (typeof kind !== 'string' || !(FAULT_KINDS as readonly string[]).includes(kind)) {
    return { ok: false, message: `${typeof kind === 'string' ? `unknown fault kind "${kind.slice(0, 32)}"` : 'a fault needs a kind'} (known: ${FAULT_KINDS.join(', ')})` };
  }
  const k = kind as FaultKind;
  const t = parseTarget(v.target);
  if (!t.ok) return t;
  let role: ProcessRole | null = null;
  if (v.role !== undefined && v.role !== null) {
    if (typeof v.role !== 'string' || !(PROCESS_ROLES as readonly string[]).includes(v.role)) return { ok: false, message: `role must be one of ${PROCESS_ROLES.join(', ')}` };
    if (k !== 'kill' && k !== 'pause') return { ok: false, message: `a ${k} fault takes no role (only kill and pause do)` };
    role = v.role as ProcessRole;
  }
  const fits = targetFits(k, t.value, role);
  if (fits) return { ok: false, message: fits };
  const durErr = checkFaultDuration(v.forMs, INSTANT_FAULT_KINDS.includes(k));
  if (durErr) return { ok: false, message: durErr };
  if (v.owner !== undefined && v.owner !== null && (typeof v.owner !== 'string' || !OWNER_RE.test(v.owner))) return { ok: false, message: 'owner must be a name of letters, digits, dots, dashes, colons and underscores' };
  if (v.seed !== undefined && v.seed !== null && (typeof v.seed !== 'number' || !Number.isInteger(v.seed) || v.seed < 0 || v.seed > 0xffffffff)) return { ok: false, message: 'seed must be a whole number from 0 to 4294967295' };
  if (v.id !== undefined && v.id !== null && (typeof v.id !== 'string' || !FAULT_ID_RE.test(v.id))) return { ok: false, message: 'a fault id must be letters, digits, dots, dashes and underscores (at most 64)' };
  const params: Record<string, unknown> = {};
  if (v.params !== undefined && v.params !== null) {
    if (!isPlainObject(v.params)) return { ok: false, message: 'params must be a map' };
    for (const [pk, pv] of Object.entries(v.params)) {
      if (!PARAMS[k].includes(pk)) return { ok: false, message: `a ${k} fault has no parameter "${pk.slice(0, 32)}"${PARAMS[k].length ? ` (it takes ${PARAMS[k].join(', ')})` : ' (it takes none)'}` };
      if (pv !== null && typeof pv !== 'number' && typeof pv !== 'string' && typeof pv !== 'boolean' && !(Array.isArray(pv) && pv.length <= 64 && pv.every((x) => typeof x === 'number'))) return { ok: false, message: `parameter "${pk}" must be a number, text, true/false or a list of at most 64 numbers` };
      if (typeof pv === 'string' && pv.length > 64) return { ok: false, message: `parameter "${pk}" is too long` };
      params[pk] = pv;
    }
  }
  // Per-kind parameter checks (the enforcers check again; this gives the sentence before anything starts).
  const seed = typeof v.seed === 'number' ? v.seed : 0;
  switch (k) {
    case 'kill': {
      const r = boolParam(params, 'restart');
      if (typeof r === 'string') return { ok: false, message: `kill: ${r}` };
      if (r !== undefined) params.restart = r;
      if (r === true) {
        // Restart starts a killed VM again: a VM's partition or VMWP (a VM target's default is its
        // partition). Given for a host's or the fabric's process it was taken and meant nothing.
        const role = typeof v.role === 'string' ? v.role : null;
        const vmTarget = typeof v.target === 'string' && /^(vm|vms):/.test(v.target);
        if (role !== null ? role !== 'partition' && role !== 'vmwp' : !vmTarget) {
          return { ok: false, message: `kill: restart starts a killed VM again at the end, so it takes a VM's partition or VMWP (a vm: or vms: target, --role partition or vmwp), not ${role !== null ? `a ${role}` : `the processes of ${String(v.target).slice(0, 40)}`} (its supervisor, if any, starts that again by itself)` };
        }
      }
      break;
    }
    case 'link': {
      const cut = boolParam(params, 'cut');
      if (typeof cut === 'string') return { ok: false, message: `link: ${cut}` };
      if (cut !== undefined) params.cut = cut;
      const lim: Record<string, [number, number, boolean]> = { delayMs: [0, FAULT_MAX_DELAY_MS, true], jitterMs: [0, FAULT_MAX_DELAY_MS, true], rateBps: [1, LINK_MAX_RATE_BPS, false], lossPercent: [0, 100, false] };
      let any = cut === true;
      for (const [pk, [lo, hi, int]] of Object.entries(lim)) {
        const n = numParam(params, pk, lo, hi, int);
        if (typeof n === 'string') return { ok: false, message: `link: ${n}` };
        if (n !== undefined) {
          params[pk] = n;
          any = true;
        }
      }
      if (!any) return { ok: false, message: 'link: give an impairment (delayMs, jitterMs, rateBps, lossPercent) or cut' };
      if (cut === true && Object.keys(params).some((x) => x !== 'cut')) return { ok: false, message: 'link: a cut link carries nothing, so it takes no impairment' };
      break;
    }
    case 'partition': {
      const shape = params.shape ?? 'one';
      if (typeof shape !== 'string' || !(PARTITION_SHAPES as readonly string[]).includes(shape)) return { ok: false, message: `partition: "shape" must be one of ${PARTITION_SHAPES.join(', ')}` };
      params.shape = shape;
      break;
    }
    case 'pause':
      break;
    case 'bitflip':
      // gpa may be absent (the nemesis picks a page of the workload's data).
      if (params.gpa === undefined) {
        const m = numParam(params, 'mask', 1, 255);
        if (typeof m === 'string') return { ok: false, message: `bitflip: ${m}` };
        break;
      }
      {
        const s = hostSpecOf(k, params, seed);
        if (!s.ok) return s;
      }
      break;
    case 'vmbus': {
      // The channel first: a name no VM has is the problem to name, not a probability left out.
      const ch = params.channel;
      if (ch !== undefined && ch !== null && !(VMBUS_DEVICE_CLASSES as readonly unknown[]).includes(ch)) {
        return { ok: false, message: `vmbus: ${typeof ch === 'string' ? `"${ch.slice(0, 32)}" is not a VMBus channel` : '"channel" must be a channel name'} (channels: ${VMBUS_DEVICE_CLASSES.join(', ')})` };
      }
      const s = hostSpecOf(k, params, seed);
      if (!s.ok) return s;
      break;
    }
    default: {
      const s = hostSpecOf(k, params, seed);
      if (!s.ok) return s;
    }
  }
  const out: FaultRequest = { kind: k, target: v.target as string, forMs: v.forMs as number, params };
  if (role) out.role = role;
  if (typeof v.owner === 'string') out.owner = v.owner;
  if (typeof v.seed === 'number') out.seed = v.seed;
  if (typeof v.id === 'string') out.id = v.id;
  return { ok: true, value: out };
}
