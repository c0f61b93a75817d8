/**
 * Faults (ARCHITECTURE §9): the catalogue, and the specs that cross process boundaries.
 *
 * A fault is asked of the nemesis (packages/faults) by a target and a duration; the nemesis
 * resolves the target and hands each part to the process that enforces it, always with the
 * fault's remaining time, so the enforcer ends it by itself even when whoever asked is gone:
 *   - processes (kill, pause): the nemesis signals them itself;
 *   - a VM's insides (`VmFaultSpec`: VMBus packets and signals, interrupt delay, clock, VP stall,
 *     bit flips): the VM's worker (VMWP), through its host's root (`faultSet`);
 *   - a host's logical processors (lp-shrink): the hypervisor, through the root;
 *   - links and partitions between hosts: the cluster's fabric.
 *
 * Every decoder here checks a value that came over a wire (or from a file) and returns a typed
 * value or a sentence; none throws or calls a method of the value.
 */
import { HV_LP_SHRINK_FAULT_RE, isPlainObject } from './hvwire.js';
import { dirtyBitmapGpa, dirtyBitmapPages, MAX_MEMORY_BYTES } from './layout.js';
import { formatBytes } from './vm.js';

/** The catalogue. Disk and network-device faults join here with those devices. */
export const FAULT_KINDS = ['kill', 'pause', 'vmbus', 'interrupt-delay', 'clock', 'vp-stall', 'lp-shrink', 'link', 'partition', 'bitflip'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** What each kind does, for help text and reports. */
export const FAULT_KIND_HELP: Record<FaultKind, string> = {
  kill: 'kill -9 a process (partition, vmwp, root or hypervisor); with restart, a killed VM is started again when the fault ends',
  pause: 'SIGSTOP a process for the duration, SIGCONT at its end',
  vmbus: "drop, delay, duplicate, reorder or corrupt a VM's VMBus packets, and drop or delay its signals, each with a probability",
  'interrupt-delay': "delay every interrupt delivered to a VM's VPs",
  clock: "step a guest's reference time by an offset and/or skew its rate (ppm); undone at the end",
  'vp-stall': "stop scheduling some (or all) of a VM's VPs",
  'lp-shrink': "take logical processors away from a host (its lps shrink, then come back)",
  link: 'impair the link between two hosts (delay, jitter, rate, loss) or cut it',
  partition: "cut the cluster's links in one of Jepsen's shapes (one, majority, ring, bridge, minority-third)",
  bitflip: "flip bits in a guest page (instantaneous: not undone; proves that checkers notice)",
};

/** Kinds whose effect is instantaneous (their duration is the window recovery is measured in). */
export const INSTANT_FAULT_KINDS: readonly FaultKind[] = ['kill', 'bitflip'];

/** The longest fault (ms): a fault without an end is refused, and so is one of more than a day. */
export const FAULT_MAX_MS = 24 * 3600 * 1000;
/** The longest delay a VMBus, interrupt or link fault adds (ms). */
export const FAULT_MAX_DELAY_MS = 60_000;
/** A fault's id: the nemesis's (f1, f2, …), or a caller's. */
export const FAULT_ID_RE = HV_LP_SHRINK_FAULT_RE;
/** A VMBus channel's name as the VMWP's devices call it (e.g. heartbeat, kvp, shutdown, timesync). */
export const FAULT_CHANNEL_RE = /^[a-z][a-z0-9-]{0,31}$/;

/** A host's processes, and a cluster's fabric (its server: the supervisor starts another when it dies). */
export const PROCESS_ROLES = ['hypervisor', 'root', 'vmwp', 'partition', 'fabric'] as const;
export type ProcessRole = (typeof PROCESS_ROLES)[number];

/** Probabilities (0..1) and delays of a VMBus fault; absent ones are 0. */
export interface VmbusFaultParams {
  /** Only this channel (by device name); null: every channel of the VM. */
  channel: string | null;
  drop: number;
  delay: number;
  /** Each delayed packet waits exactly this long (ms), so a round trip grows by it. */
  delayMs: number;
  duplicate: number;
  reorder: number;
  corrupt: number;
  signalDrop: number;
  signalDelay: number;
  signalDelayMs: number;
  /** The draws' seed: the same seed, the same fates for the same packets. */
  seed: number;
}

export const VMBUS_FAULT_RATES = ['drop', 'delay', 'duplicate', 'reorder', 'corrupt', 'signalDrop', 'signalDelay'] as const;

/** What a VM's worker enforces (VMWP request `faultSet`). */
export type VmFaultSpec =
  | ({ kind: 'vmbus' } & VmbusFaultParams)
  /** Every interrupt to the VM's VPs arrives this much later. */
  | { kind: 'interrupt-delay'; delayMs: number }
  /** Reference time jumps by `offsetMs` (may be negative) and runs `skewPpm` faster (negative: slower) while the fault lasts. */
  | { kind: 'clock'; offsetMs: number; skewPpm: number }
  /** These VPs (indexes) are not scheduled; null: all of them. */
  | { kind: 'vp-stall'; vps: number[] | null }
  /** Flips `bits` (a mask of the byte) of the byte at `gpa`; instantaneous. */
  | { kind: 'bitflip'; gpa: number; mask: number };

export type VmFaultKind = VmFaultSpec['kind'];
export const VM_FAULT_KINDS: readonly VmFaultKind[] = ['vmbus', 'interrupt-delay', 'clock', 'vp-stall', 'bitflip'];

/** What a host's root enforces (mgmt `faultSet`): a VM's fault (through its VMWP) or a host's. */
export type HostFaultSpec = VmFaultSpec | { kind: 'lp-shrink'; lps: number };

/** Largest clock step (ms) and skew (ppm) a clock fault takes. */
export const CLOCK_MAX_OFFSET_MS = 7 * 24 * 3600 * 1000;
export const CLOCK_SKEW_MIN_PPM = -900_000;
export const CLOCK_SKEW_MAX_PPM = 10_000_000;

/**
 * Why a bit flip cannot land at `gpa` in VM `vm` of `memoryBytes`, or null: it reaches the VM's
 * guest RAM only, below its dirty bitmap (dirtyBitmapGpa), so the problem says the VM's memory
 * and the GPAs it takes (it said only "outside guest RAM (0x0 to 0x1fefff)", naming neither).
 */
export function bitflipGpaProblem(gpa: number, vm: string, memoryBytes: number): string | null {
  const ram = dirtyBitmapGpa(memoryBytes);
  if (Number.isSafeInteger(gpa) && gpa >= 0 && gpa < ram) return null;
  const pages = dirtyBitmapPages(memoryBytes);
  return `GPA 0x${gpa.toString(16)} is outside VM ${vm}'s guest RAM: the VM has ${formatBytes(memoryBytes)} of memory, and a bit flip takes a GPA from 0x0 to 0x${(ram - 1).toString(16)} (its top ${pages === 1 ? 'page holds' : `${pages} pages hold`} the dirty bitmap)`;
}

export type FaultDecoded<T> = { ok: true; value: T } | { ok: false; message: string };

class Bad extends Error {}
const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

function num(o: Record<string, unknown>, k: string, min: number, max: number, int: boolean, dflt?: number): number {
  const v = own(o, k) ? o[k] : undefined;
  if ((v === undefined || v === null) && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) {
    throw new Bad(`"${k}" must be ${int ? 'a whole number' : 'a number'} from ${min} to ${max}`);
  }
  return v;
}

function only(o: Record<string, unknown>, allowed: readonly string[], what: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new Bad(`${what}: unknown field "${k.length > 32 ? `${k.slice(0, 32)}…` : k}"`);
}

function catching<T>(fn: () => T): FaultDecoded<T> {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof Bad) return { ok: false, message: e.message };
    throw e;
  }
}

function vmSpecOf(v: unknown): HostFaultSpec {
  if (!isPlainObject(v)) throw new Bad('a fault spec must be a map');
  const o = v;
  const kind = o.kind;
  switch (kind) {
    case 'vmbus': {
      only(o, ['kind', 'channel', ...VMBUS_FAULT_RATES, 'delayMs', 'signalDelayMs', 'seed'], 'a vmbus fault');
      const ch = o.channel;
      if (ch !== undefined && ch !== null && (typeof ch !== 'string' || !FAULT_CHANNEL_RE.test(ch))) throw new Bad('"channel" must be a channel name (e.g. heartbeat) or null');
      const out: VmbusFaultParams & { kind: 'vmbus' } = {
        kind: 'vmbus', channel: (ch as string | undefined) ?? null,
        drop: 0, delay: 0, duplicate: 0, reorder: 0, corrupt: 0, signalDrop: 0, signalDelay: 0,
        delayMs: num(o, 'delayMs', 0, FAULT_MAX_DELAY_MS, true, 0),
        signalDelayMs: num(o, 'signalDelayMs', 0, FAULT_MAX_DELAY_MS, true, 0),
        seed: num(o, 'seed', 0, 0xffffffff, true, 0),
      };
      for (const k of VMBUS_FAULT_RATES) out[k] = num(o, k, 0, 1, false, 0);
      if (VMBUS_FAULT_RATES.every((k) => out[k] === 0)) throw new Bad('a vmbus fault needs at least one probability above 0 (drop, delay, duplicate, reorder, corrupt, signalDrop, signalDelay)');
      if (out.delay > 0 && out.delayMs === 0) throw new Bad('a vmbus fault with "delay" needs "delayMs"');
      if (out.signalDelay > 0 && out.signalDelayMs === 0) throw new Bad('a vmbus fault with "signalDelay" needs "signalDelayMs"');
      return out;
    }
    case 'interrupt-delay':
      only(o, ['kind', 'delayMs'], 'an interrupt-delay fault');
      return { kind, delayMs: num(o, 'delayMs', 1, FAULT_MAX_DELAY_MS, true) };
    case 'clock': {
      only(o, ['kind', 'offsetMs', 'skewPpm'], 'a clock fault');
      const offsetMs = num(o, 'offsetMs', -CLOCK_MAX_OFFSET_MS, CLOCK_MAX_OFFSET_MS, true, 0);
      const skewPpm = num(o, 'skewPpm', CLOCK_SKEW_MIN_PPM, CLOCK_SKEW_MAX_PPM, true, 0);
      if (offsetMs === 0 && skewPpm === 0) throw new Bad('a clock fault needs "offsetMs" or "skewPpm"');
      return { kind, offsetMs, skewPpm };
    }
    case 'vp-stall': {
      only(o, ['kind', 'vps'], 'a vp-stall fault');
      const vps = o.vps;
      if (vps === undefined || vps === null) return { kind, vps: null };
      if (!Array.isArray(vps) || vps.length === 0 || vps.length > 64) throw new Bad('"vps" must be a list of 1 to 64 VP indexes, or null for all');
      const out: number[] = [];
      for (const x of vps as unknown[]) {
        if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > 63) throw new Bad('"vps" must hold VP indexes from 0 to 63');
        // Refused, not merged: "0,0" is a typo for another list as often as not, and the record
        // (fault list) shows the list as given.
        if (out.includes(x)) throw new Bad(`"vps" names VP ${x} more than once: name each VP once`);
        out.push(x);
      }
      return { kind, vps: out };
    }
    case 'bitflip': {
      only(o, ['kind', 'gpa', 'mask'], 'a bitflip fault');
      // No VM has more than MAX_MEMORY_BYTES: a GPA past them is said as such (it was "a whole
      // number from 0 to 281474976710656", a bound no VM has); the VM's own range is its worker's
      // to say (bitflipGpaProblem).
      const gpa = o.gpa;
      if (typeof gpa !== 'number' || !Number.isSafeInteger(gpa) || gpa < 0 || gpa >= MAX_MEMORY_BYTES) {
        throw new Bad(`"gpa" must be a guest physical address from 0x0 to 0x${(MAX_MEMORY_BYTES - 1).toString(16)} (no VM has more than ${formatBytes(MAX_MEMORY_BYTES)} of memory)`);
      }
      return { kind, gpa, mask: num(o, 'mask', 1, 255, true, 1) };
    }
    case 'lp-shrink':
      only(o, ['kind', 'lps'], 'an lp-shrink fault');
      return { kind, lps: num(o, 'lps', 1, 1024, true) };
    default:
      throw new Bad(typeof kind === 'string' ? `unknown fault kind ${JSON.stringify(kind.slice(0, 32))} here (known: ${[...VM_FAULT_KINDS, 'lp-shrink'].join(', ')})` : 'a fault spec needs a "kind"');
  }
}

/** Checks a VM's fault spec (a VMWP's `faultSet`). */
export function decodeVmFaultSpec(v: unknown): FaultDecoded<VmFaultSpec> {
  return catching(() => {
    const s = vmSpecOf(v);
    if (s.kind === 'lp-shrink') throw new Bad('lp-shrink is a fault of a host, not of a VM');
    return s;
  });
}

/** Checks a host's fault spec (a root's `faultSet`). */
export function decodeHostFaultSpec(v: unknown): FaultDecoded<HostFaultSpec> {
  return catching(() => vmSpecOf(v));
}

/** Checks a fault's duration in ms: bounded, whole, at least 1 (instant kinds: 0 is taken). */
export function checkFaultDuration(ms: unknown, instant = false): string | null {
  if (typeof ms !== 'number' || !Number.isInteger(ms) || ms < (instant ? 0 : 1) || ms > FAULT_MAX_MS) {
    return `a fault's duration must be from ${instant ? 0 : 1} ms to ${FAULT_MAX_MS / 3600000} h (a fault without an end is refused)`;
  }
  return null;
}

/**
 * A whole number in text: decimal or 0x hex, with a minus sign only where `signed`; null for
 * anything else (spaces, a fraction) or past 2^53. The one reader of the numbers the CLI's fault
 * options, `vm peek --gpa` and a vp-stall's list of VPs take.
 */
export function parseWholeNumber(text: string, signed = false): number | null {
  if (typeof text !== 'string' || text.length > 64) return null;
  const m = /^(-?)(0x[0-9a-f]+|\d+)$/i.exec(text);
  if (!m || (m[1] === '-' && !signed)) return null;
  const n = Number(m[2]);
  if (!Number.isSafeInteger(n)) return null;
  return m[1] === '-' && n !== 0 ? -n : n;
}

/** Milliseconds in one of each duration unit hvlab reads. */
const DURATION_UNIT_MS: Readonly<Record<string, number>> = { us: 0.001, 'µs': 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * hvlab's one reading of a duration, in ms (not rounded): a number and its unit ("250us", "20ms",
 * "1.5s", "2m", "1h"), or 0 alone; null for anything else. A bare number other than 0 is refused,
 * from the command line and from a file alike: it used to be milliseconds, so `fault inject pause
 * --for 5` made a 5 ms fault where 5 s was meant, while `vm stop --timeout 5` meant seconds. And
 * the grammar is one: links took `us` but not `m`, faults `m` and `h` but not `us`.
 */
export function durationMs(v: unknown): number | null {
  if (typeof v === 'number') return v === 0 ? 0 : null;
  if (typeof v !== 'string' || v.length > 64) return null;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$/.exec(v);
  if (!m) return null;
  const n = Number(m[1]);
  if (m[2] === undefined) return n === 0 ? 0 : null;
  const ms = n * DURATION_UNIT_MS[m[2]]!;
  return Number.isFinite(ms) ? ms : null;
}

/**
 * A duration (durationMs) that is a whole number of ms, as faults, chaos files and timeouts take
 * them; null otherwise. "250us" is refused here (it was rounded to a 0 ms delay: a fault that did
 * nothing, accepted); "1000us" and "1.5s" are whole.
 */
export function parseDurationMs(s: unknown): number | null {
  const ms = durationMs(s);
  if (ms === null) return null;
  const whole = Math.round(ms);
  return Math.abs(ms - whole) < 1e-6 ? whole : null;
}

/** A duration with an optional sign ("-2s", "+500ms"; parseDurationMs after it), in ms, or null: a clock fault's offset. */
export function parseSignedDurationMs(v: unknown): number | null {
  if (typeof v !== 'string') return null;
  const m = /^\s*([+-]?)(.*)$/s.exec(v)!;
  const ms = parseDurationMs(m[2]!);
  return ms === null ? null : m[1] === '-' ? -ms : ms;
}

/** What to add to a refusal of `v` as a duration: a word on the missing unit when it is a bare number, or on whole ms when it is a part of one. */
export function durationHint(v: unknown): string {
  const t = typeof v === 'number' ? String(v) : typeof v === 'string' ? v.trim() : '';
  if (t.length > 12) return '';
  if (/^\d+(?:\.\d+)?$/.test(t) && Number(t) !== 0) return ` (a duration needs its unit: ${t}s or ${t}ms)`;
  const ms = durationMs(t);
  return ms !== null && parseDurationMs(t) === null ? ' (whole milliseconds here)' : '';
}

/**
 * What a VMBus fault did so far (the VMWP counts it: vmbus/src/faults.ts): packets it saw on the
 * channels it wraps and what it did to them, and the same for signals. A fault of another kind
 * counts nothing.
 */
export interface VmbusFaultCounters {
  packets: { seen: number; dropped: number; delayed: number; duplicated: number; reordered: number; corrupted: number };
  signals: { seen: number; dropped: number; delayed: number };
}
export const VMBUS_PACKET_COUNTERS = ['seen', 'dropped', 'delayed', 'duplicated', 'reordered', 'corrupted'] as const;
export const VMBUS_SIGNAL_COUNTERS = ['seen', 'dropped', 'delayed'] as const;

/**
 * Checks a fault's counters as another process sent them (a VMWP's faultList answer and faultEnded
 * note, a root's faultList and faultClear answers): null for a fault that counts nothing (`{}`),
 * the counters (each a whole number, an absent one 0), or a sentence; never throws.
 */
export function decodeFaultCounters(v: unknown): FaultDecoded<VmbusFaultCounters | null> {
  return catching(() => {
    if (!isPlainObject(v)) throw new Bad('fault counters must be a map');
    only(v, ['packets', 'signals'], 'fault counters');
    if (v.packets === undefined && v.signals === undefined) return null;
    const group = <K extends string>(g: unknown, names: readonly K[], what: string): Record<K, number> => {
      if (g === undefined) g = {};
      if (!isPlainObject(g)) throw new Bad(`"${what}" must be a map of counters`);
      only(g, names, `the ${what} counters`);
      const out = {} as Record<K, number>;
      for (const k of names) out[k] = num(g, k, 0, Number.MAX_SAFE_INTEGER, true, 0);
      return out;
    };
    return { packets: group(v.packets, VMBUS_PACKET_COUNTERS, 'packets'), signals: group(v.signals, VMBUS_SIGNAL_COUNTERS, 'signals') };
  });
}

/** How a fault ended. */
export type FaultEndReason = 'expired' | 'cleared' | 'owner-gone' | 'target-gone' | 'failed' | 'experiment-ended';
