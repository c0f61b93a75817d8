/**
 * The chaos experiment file (`kind: faults`, issue 13) and its one checking decoder.
 *
 *   name: chaos-basic             # names the report, the cluster (cluster: new) and the faults' owner
 *   kind: faults
 *   seed: 7                       # every draw starts from it (`--seed N` overrides it)
 *   cluster: new                  # new: hosts h1..hN (full mesh) brought up for the run and down after;
 *                                 # existing: the cluster up in HVLAB_HOME (its hosts and links)
 *   hosts: 3                      # cluster: new only (default 3)
 *   lps: 2                        # cluster: new only: LPs per host (default 2)
 *   duration: 45s                 # from the first fault's clock start to the end of the schedule
 *   sample: 400ms                 # how often every VM's progress and heartbeat are read (default 400ms)
 *   workloads:                    # VMs made and started for the run, deleted after
 *     - { name: c1, host: h1, workload: counter, memory: 32M, vps: 1 }
 *     - { name: md, host: h2, workload: "memdirty:8M", memory: 32M }
 *   faults:                       # explicit faults: at an offset, for a while (`for` is required)
 *     - { at: 5s, kind: pause, target: vm:c1, for: 3s }
 *     - { at: 9s, kind: vmbus, target: vm:c2, for: 4s, channel: heartbeat, drop: 1 }
 *     - { at: 15s, kind: partition, target: cluster, for: 5s, shape: one }
 *     - { at: 28s, kind: kill, target: vm:c3, role: partition, for: 2s, restart: true }
 *   moves:                        # live migrations while the faults fire (a VM's host follows its moves)
 *     - { at: 6s, vm: c1, to: h2, method: precopy, bandwidth: 20M, downtimeLimit: 300ms }
 *     - { at: 20s, vm: c1, to: h3, method: postcopy+compress }
 *   random:                       # and/or faults drawn from the seed
 *     count: 3
 *     kinds: [pause, vmbus, link] # default: every kind but bitflip that the cluster can take
 *     for: [1s, 3s]               # each one's duration, drawn between these
 *     between: [30s, 44s]         # each one starts and ends in this window (default: 1s to duration)
 *     targets: [vm:c1, link:h1-h2] # only these (default: every VM, host and link of the cluster)
 *     moves: 2                    # live migrations drawn too (count may then be 0 or left out): each a
 *     methods: [precopy, postcopy] #   workload to another host, inside `between`, by one of these (default precopy)
 *   checks:                       # all on by default; false turns one off
 *     liveness: 10s               # every VM's heartbeat OK again within this after its fault ends
 *     isolation: 3s               # longest stall of a VM or host no fault touched
 *     progress: true              # a counter never goes backwards or restarts
 *     memory: true                # memdirty's check on every memdirty VM, paused at the end
 *     cleanup: true               # nothing left: processes, /dev/shm, namespaces, active faults
 *     placement: true             # every VM on exactly one host at the end, where its moves left it
 *
 * A fault's parameters sit beside its fields, named as the nemesis names them (types.ts
 * `FaultRequest.params`); durations (`delayMs: 50ms`), rates (`rateBps: 10mbit`) and percentages
 * (`lossPercent: 5%`) may be written with their units. Every problem is reported at once with its
 * line, column and field (`ChaosExperimentError`), before anything starts; a fault without an end,
 * a target of the wrong kind, a name the run does not have, or a fault that ends after the run
 * are all refused. So is a fault the run's topology cannot take, which the nemesis or a root
 * would refuse when it came: a vp-stall of a VP the VM lacks, a bitflip outside its guest RAM
 * (the VMs are the workloads), and with cluster: new (whose hosts, LPs and links are the file's)
 * an lp-shrink to as many LPs as the hosts have, a partition shape the host count cannot make, a
 * link between hosts the cluster does not have.
 */
import { FileShapeError, readRegularFile } from '@hvlab/runtime';
import { isMap, isScalar, isSeq, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml';
import {
  CLUSTER_HOST_RE, FAULT_KINDS, FAULT_MAX_MS, FAULT_STALL_MAX_VP, INSTANT_FAULT_KINDS, bitflipGpaProblem, MAX_MEMORY_BYTES, MAX_VPS_PER_PARTITION, MIN_MEMORY_BYTES, PROCESS_ROLES,
  VM_NAME_RE, durationHint, formatBytes, parseDurationMs, parseSignedDurationMs, parseSize, parseWorkload, workloadFitError, workloadProblem,
  type FaultKind, type ProcessRole,
} from '@hvlab/protocol';
import { CLUSTER_NAME_RE, DEFAULT_VM, fieldKey, fileText, MAX_HOSTS, MAX_LPS, parseBandwidth, parseLoss, parseMethod, parseRate, problem, problemsText, readYamlMap, scalar, seedValue, shown, sourceSha256, where, yamlNestingProblem, type CheckCtx } from '@hvlab/cluster';
import type { PartitionShape } from './types.js';
import { checkFaultRequest, hostSpecOf, parseTarget, type Target } from './request.js';
import { MAX_OWNED_VMS } from './wire.js';

/** Largest experiment file (bytes). */
export const MAX_CHAOS_FILE_BYTES = 1024 * 1024;
/** Most faults in a schedule (explicit and drawn together). */
export const MAX_SCHEDULE_FAULTS = 1000;
/** Most workloads (counted before any is read: 30,000 took 9 s to check, each name against those before). */
export const MAX_CHAOS_WORKLOADS = 1000;
/** Most workloads on an existing cluster: the run names every VM it made to its lease, which takes this many. */
export const MAX_CHAOS_WORKLOADS_EXISTING = MAX_OWNED_VMS;
/** Most moves the file lists (random.moves draws at most MAX_RANDOM_MOVES more). */
export const MAX_CHAOS_MOVES = 1000;
/** Longest experiment. */
export const MAX_CHAOS_DURATION_MS = 24 * 3600 * 1000;

export const CHAOS_DEFAULTS = {
  seed: 1, cluster: 'new' as const, hosts: 3, lps: 2, durationMs: 30_000, sampleMs: 400,
  livenessMs: 10_000, isolationStallMs: 3_000,
};

/** Kinds a random schedule draws from when `kinds` is not given (bitflip is a planted violation: asked for by name only). */
export const RANDOM_DEFAULT_KINDS: readonly FaultKind[] = FAULT_KINDS.filter((k) => k !== 'bitflip');

/**
 * The fewest hosts each partition shape takes (resolve.ts partitionCuts: with fewer it throws, or
 * cuts no link even of a full mesh, and the nemesis refuses it). A majority of 2 hosts is both of
 * them: it cuts nothing below 3. A test holds this to partitionCuts.
 */
export const PARTITION_MIN_HOSTS: Record<PartitionShape, number> = { one: 2, majority: 3, 'minority-third': 2, bridge: 3, ring: 4 };

export interface ChaosWorkload {
  name: string;
  host: string;
  workload: string;
  memoryBytes: number;
  vps: number;
}

/** One explicit fault of the file. */
export interface ChaosFaultSpec {
  atMs: number;
  kind: FaultKind;
  target: string;
  role: ProcessRole | null;
  forMs: number;
  params: Record<string, unknown>;
  /** The draws' seed (a selector's pick, a vmbus fault's fates); null: drawn from the experiment's seed. */
  seed: number | null;
}

export interface ChaosRandomSpec {
  /** Faults to draw (0: moves only). */
  count: number;
  /** Live migrations to draw (`moves`): each a VM of the workloads to another host, at a time in `betweenMs`, by one of `methods`. */
  moves: number;
  /** The methods drawn moves take (as `moves:` names them); default precopy. */
  methods: Array<{ method: string; options: ChaosMoveSpec['options'] }>;
  kinds: FaultKind[];
  forMs: [number, number];
  /** Each drawn fault starts and ends within [from, to] (ms from the start). */
  betweenMs: [number, number];
  /** Only these targets (concrete: vm:X, host:H, link:A-B, cluster); null: every one of the run's world. */
  targets: string[] | null;
}

/** One live migration of the file (`moves:`): VM `vm` to host `to` at `atMs`, by `method` (experiment.ts parseMethod). */
export interface ChaosMoveSpec {
  atMs: number;
  vm: string;
  to: string;
  method: string;
  /** The management API's vmMove options (the method's, and bandwidth, downtimeLimit, maxPasses when given). */
  options: { offline?: boolean; postcopy?: boolean; compress?: boolean; autoConverge?: boolean; bandwidthBps?: number; downtimeLimitMs?: number; maxPasses?: number };
  /** Its place in the file's `moves` list (the spec's are sorted by time); absent for a drawn move. */
  fileIndex?: number;
}

export interface ChaosChecks {
  /** Bound (ms) for a VM's heartbeat to be OK again after its fault ends; null: not checked. */
  livenessMs: number | null;
  /** Longest stall (ms) of a VM or host that no fault touched at the time; null: not checked. */
  isolationStallMs: number | null;
  progress: boolean;
  memory: boolean;
  cleanup: boolean;
  /** Every VM on exactly one host at the end, where its moves left it. */
  placement: boolean;
}

/** A checked chaos experiment file. */
export interface ChaosSpec {
  /** The file as given, and its text (kept in the report, so a run can be repeated from it). */
  file: string;
  source: string;
  /** SHA-256 of the file's bytes as read (sourceSha256: `sha256sum FILE`); of the text's UTF-8 when parsed from a string. */
  sourceSha256: string;
  name: string;
  kind: 'faults';
  seed: number;
  cluster: 'new' | 'existing';
  /** Hosts (h1..hN) and LPs of each of a new cluster; null with cluster: existing. */
  hosts: number | null;
  lps: number | null;
  durationMs: number;
  sampleMs: number;
  workloads: ChaosWorkload[];
  faults: ChaosFaultSpec[];
  /** Live migrations, in the order of their offsets. */
  moves: ChaosMoveSpec[];
  random: ChaosRandomSpec | null;
  checks: ChaosChecks;
}

export interface ChaosProblem {
  /** 1-based; 0 when the problem has no place in the file (unreadable, empty). */
  line: number;
  column: number;
  field: string;
  message: string;
}

export class ChaosExperimentError extends Error {
  override name = 'ChaosExperimentError';
  constructor(readonly file: string, readonly problems: ChaosProblem[]) {
    super(problemsText(file, problems));
  }
}

/** The hosts, links and VMs a schedule is drawn against, each sorted (so draws do not depend on the order things were listed or answered). */
export interface ChaosWorld {
  hosts: string[];
  /** [a, b] with a < b. */
  links: Array<[string, string]>;
  /** `vps`: the VM's VPs (a workload's; left out when not known). */
  vms: Array<{ name: string; host: string; workload: string; vps?: number }>;
  /** Each host's LPs, where known (cluster: new: the file's `lps`); a host not here may have any. */
  lps?: Record<string, number>;
}

/**
 * The world of a spec: for cluster: new its hosts h1..hN in a full mesh, each with the file's LPs;
 * for existing the hosts and links given (from the cluster's status), and their LPs if given.
 */
export function chaosWorld(
  spec: Pick<ChaosSpec, 'hosts' | 'workloads'> & Partial<Pick<ChaosSpec, 'lps'>>,
  existing?: { hosts: readonly string[]; links: ReadonlyArray<readonly [string, string]>; lps?: Readonly<Record<string, number>> },
): ChaosWorld {
  const hosts = existing ? [...existing.hosts].sort() : Array.from({ length: spec.hosts ?? CHAOS_DEFAULTS.hosts }, (_, i) => `h${i + 1}`).sort();
  const links: Array<[string, string]> = [];
  if (existing) {
    for (const [a, b] of existing.links) links.push(a < b ? [a, b] : [b, a]);
  } else {
    for (let i = 0; i < hosts.length; i++) for (let j = i + 1; j < hosts.length; j++) links.push([hosts[i]!, hosts[j]!]);
  }
  links.sort((x, y) => (x[0] === y[0] ? (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) : x[0] < y[0] ? -1 : 1));
  const vms = spec.workloads.map((w) => ({ name: w.name, host: w.host, workload: w.workload, vps: w.vps })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const lpsOf = existing ? existing.lps : spec.lps !== undefined && spec.lps !== null ? Object.fromEntries(hosts.map((h) => [h, spec.lps!])) : undefined;
  const lps = lpsOf ? Object.fromEntries(hosts.filter((h) => typeof lpsOf[h] === 'number').map((h) => [h, lpsOf[h]!])) : undefined;
  return { hosts, links, vms, ...(lps ? { lps } : {}) };
}

/** The link `A-B` of `text` between two of `hosts` (host names may hold "-": every split is tried), as [a, b] sorted; null if none. */
export function linkOf(text: string, hosts: readonly string[]): [string, string] | null {
  for (let i = text.indexOf('-'); i > 0; i = text.indexOf('-', i + 1)) {
    const a = text.slice(0, i);
    const b = text.slice(i + 1);
    if (a !== b && hosts.includes(a) && hosts.includes(b)) return a < b ? [a, b] : [b, a];
  }
  return null;
}

// ---- parameters ---------------------------------------------------------------------------------

/** Parameters that may be written with units in a file, and how they become the nemesis's numbers. */
const MS_PARAMS = new Set(['delayMs', 'jitterMs', 'signalDelayMs', 'offsetMs']);

/** One parameter as written → the nemesis's value (units taken off), or a sentence. */
function paramValue(k: string, v: unknown): { ok: true; value: unknown } | { ok: false; message: string } {
  if (MS_PARAMS.has(k) && typeof v === 'string') {
    const ms = parseSignedDurationMs(v);
    return ms === null ? { ok: false, message: 'must be a duration such as 50ms or 2s' } : { ok: true, value: ms };
  }
  if (k === 'rateBps' && typeof v === 'string') {
    const r = parseRate(v);
    return r === null ? { ok: false, message: 'must be a rate such as 10mbit (bits per second)' } : { ok: true, value: Math.round(r) };
  }
  if (k === 'lossPercent' && typeof v === 'string') {
    const r = parseLoss(v);
    return r === null ? { ok: false, message: 'must be a percentage such as 5%' } : { ok: true, value: r };
  }
  return { ok: true, value: v };
}

/** Whether the target names things the run has: VMs of the workloads; for a new cluster, its hosts and links. */
function targetWorldError(t: Target, vms: readonly string[], hosts: readonly string[] | null): string | null {
  if ((t.t === 'vm' || t.t === 'host-of') && !vms.includes(t.vm)) return `VM ${t.vm} is not one of the workloads (${vms.join(', ') || 'none'})`;
  if (t.t === 'vms' && vms.length === 0) return 'there are no workloads to select from';
  if (hosts === null) return null;
  if (t.t === 'host' && !hosts.includes(t.host)) return `host ${t.host} is not a host of the cluster (${hosts.join(', ')})`;
  if (t.t === 'link' && !linkOf(t.text, hosts)) return `link:${t.text} is not a link between two hosts of the cluster (${hosts.join(', ')})`;
  if (t.t === 'cluster' && hosts.length < 2) return 'a fault on the cluster (a partition, or its fabric) needs at least 2 hosts';
  return null;
}

/** A name a chaos file gives that the existing cluster lacks: its field, the path to it in the file, and why. */
export interface ExistingClusterProblem {
  field: string;
  path: Array<string | number>;
  message: string;
}

/**
 * Why an experiment on an existing cluster cannot run on `hosts` (the hosts of the cluster up in
 * its home): a workload on a host it lacks, a move to one, a fault or a random target naming a host
 * or link it lacks. The file alone cannot say these; `--check` says them before the run, which
 * refused them only once it had begun.
 */
export function existingClusterProblems(spec: ChaosSpec, hosts: readonly string[]): ExistingClusterProblem[] {
  const out: ExistingClusterProblem[] = [];
  const its = `its hosts: ${hosts.join(', ') || 'none'}`;
  spec.workloads.forEach((w, i) => {
    if (!hosts.includes(w.host)) out.push({ field: `workloads[${i}].host`, path: ['workloads', i, 'host'], message: `${w.name} is on host ${w.host}, which the cluster up here lacks (${its})` });
  });
  spec.moves.forEach((m, sorted) => {
    // Named by its place in the file: the spec's moves are sorted by time.
    const i = m.fileIndex ?? sorted;
    if (!hosts.includes(m.to)) out.push({ field: `moves[${i}].to`, path: ['moves', i, 'to'], message: `${m.vm} moves to host ${m.to}, which the cluster up here lacks (${its})` });
  });
  const vms = spec.workloads.map((w) => w.name);
  const aimed = (t: string, field: string, path: Array<string | number>): void => {
    const p = parseTarget(t);
    const why = p.ok ? targetWorldError(p.value, vms, hosts) : null;
    if (why) out.push({ field, path, message: why });
  };
  spec.faults.forEach((f, i) => aimed(f.target, `faults[${i}].target`, ['faults', i, 'target']));
  (spec.random?.targets ?? []).forEach((t, i) => aimed(t, `random.targets[${i}]`, ['random', 'targets', i]));
  return out;
}

const vpRange = (n: number): string => (n === 1 ? 'VP 0' : `VPs 0 to ${n - 1}`);

/**
 * Why a fault the request check took cannot be done on the run's hosts (each with `lps` LPs; null:
 * not known, an existing cluster's) and VMs (the workloads, which the run makes), so that the
 * nemesis or a root would refuse it when it comes: an lp-shrink to as many LPs as a host has or
 * more; a vp-stall of a VP that a VM it may hit lacks, or beyond what the hypervisor stalls; a
 * bitflip outside a VM's guest RAM. `param` names the parameter it is about. Null: it can be done.
 * (A partition's shape is checked against the host count beside it.)
 */
export function topologyProblem(kind: FaultKind, target: Target, params: Record<string, unknown>, lps: number | null, workloads: ReadonlyArray<Pick<ChaosWorkload, 'name' | 'vps'> & Partial<Pick<ChaosWorkload, 'memoryBytes'>>>): { param: string; message: string } | null {
  // A selector's pick is drawn from the run's seed (which --seed may change): any VM it may pick must do.
  const hit = target.t === 'vm' ? workloads.filter((w) => w.name === target.vm) : target.t === 'vms' ? [...workloads] : [];
  const may = target.t === 'vms' && target.select !== 'all' ? `, and vms:${target.select} may pick it` : '';
  if (kind === 'lp-shrink') {
    const s = hostSpecOf(kind, params, 0);
    if (lps === null || !s.ok || s.value.kind !== 'lp-shrink' || s.value.lps < lps) return null;
    return {
      param: 'lps',
      message: lps === 1
        ? `lp-shrink to ${s.value.lps} takes nothing away: the run's hosts have 1 LP each (lps: 1), the fewest a host has (give them 2 or more to shrink)`
        : `lp-shrink to ${s.value.lps} takes nothing away: the run's hosts have ${lps} LPs each (lps: ${lps}); shrink to ${lps === 2 ? '1' : `1 to ${lps - 1}`}`,
    };
  }
  if (kind === 'vp-stall') {
    const s = hostSpecOf(kind, params, 0);
    if (!s.ok || s.value.kind !== 'vp-stall') return null;
    const stalled = s.value.vps;
    for (const w of [...hit].sort((a, b) => a.vps - b.vps || (a.name < b.name ? -1 : 1))) {
      const vps = stalled ?? Array.from({ length: w.vps }, (_, i) => i);
      const missing = vps.find((v) => v >= w.vps);
      if (missing !== undefined) return { param: 'vps', message: `VM ${w.name} has ${w.vps} VP${w.vps === 1 ? '' : 's'} (${vpRange(w.vps)}): there is no VP ${missing}${may}` };
      const high = vps.find((v) => v > FAULT_STALL_MAX_VP);
      if (high !== undefined) return { param: 'vps', message: `the hypervisor stalls VPs 0 to ${FAULT_STALL_MAX_VP} only, not VP ${high}${stalled === null ? ` (VM ${w.name} has ${w.vps} VPs: name the VPs to stall)` : ''}${may}` };
    }
  }
  if (kind === 'bitflip') {
    const s = hostSpecOf(kind, params, 0);
    // Without a gpa the nemesis picks one in the workload's data.
    if (!s.ok || s.value.kind !== 'bitflip' || params.gpa === undefined) return null;
    const gpa = s.value.gpa;
    for (const w of [...hit].sort((a, b) => (a.memoryBytes ?? Infinity) - (b.memoryBytes ?? Infinity) || (a.name < b.name ? -1 : 1))) {
      // Guest RAM ends where the dirty bitmap begins (the worker flips only below it): said as the worker says it.
      const outside = w.memoryBytes === undefined ? null : bitflipGpaProblem(gpa, w.name, w.memoryBytes);
      if (outside !== null) return { param: 'gpa', message: `${outside}${may}` };
    }
  }
  return null;
}

// ---- the decoder --------------------------------------------------------------------------------

type Ctx = CheckCtx;
type Field = { v: Node | null; p: Pair };

const at = (f: Field): Node | Pair => f.v ?? f.p;

/** A map's fields by key; problems for a non-map, a repeated key, or a key not in `allowed` (null: any key). */
/**
 * An entry of a list that is empty (`-`, `- null`, `- ~`) is a problem, said with what it should
 * hold: it was passed over, and a file with one checked as valid. True when it was one.
 */
function emptyItem(ctx: Ctx, item: Node | null | undefined, list: Node, field: string, want: string): boolean {
  if (item !== null && item !== undefined && !(isScalar(item) && item.value === null)) return false;
  problem(ctx, item ?? list, field, `is empty: each entry is ${want}`);
  return true;
}

function fieldsOf(ctx: Ctx, node: Node | null | undefined, field: string, allowed: readonly string[] | null): Map<string, Field> {
  const out = new Map<string, Field>();
  if (node === null || node === undefined || (isScalar(node) && node.value === null)) return out;
  if (!isMap(node)) {
    problem(ctx, node, field, 'must be a map (name: value)');
    return out;
  }
  for (const pair of (node as YAMLMap).items) {
    const k = pair.key;
    if (!isScalar(k) || typeof k.value !== 'string') {
      problem(ctx, pair as Pair, field, 'a key must be a name');
      continue;
    }
    const key = k.value;
    const path = field ? `${field}.${fieldKey(key)}` : fieldKey(key);
    if (out.has(key)) problem(ctx, k, path, 'appears twice');
    else if (allowed && !allowed.includes(key)) problem(ctx, k, path, `is not a field here (fields: ${allowed.join(', ')})`);
    else out.set(key, { v: (pair.value as Node | null) ?? null, p: pair as Pair });
  }
  return out;
}

/** A migration method as a file names it (experiment.ts parseMethod), or a sentence. */
function methodOf(v: unknown): ReturnType<typeof parseMethod> {
  return typeof v === 'string' ? parseMethod(v) : 'must be a method such as precopy, postcopy or precopy+compress';
}

/**
 * A non-empty list of distinct items (`random.kinds`, `.methods`, `.targets`): `each` turns an
 * item's scalar into a value or a sentence, `key` names a value for the "listed twice" check.
 * Null, with a problem per bad item, when anything is wrong.
 */
function distinctList<T>(ctx: Ctx, f: Field, field: string, whatList: string, each: (v: unknown, written: string) => { value: T } | string, key: (t: T) => string): T[] | null {
  if (!f.v || !isSeq(f.v) || f.v.items.length === 0) {
    problem(ctx, at(f), field, `must be ${whatList}`);
    return null;
  }
  const out: T[] = [];
  let ok = true;
  f.v.items.forEach((item, i) => {
    const r = each(scalar(item as Node), shown(item as Node));
    if (typeof r === 'string') {
      problem(ctx, item as Node, `${field}[${i}]`, r);
      ok = false;
    } else if (out.some((x) => key(x) === key(r.value))) {
      problem(ctx, item as Node, `${field}[${i}]`, `${key(r.value)} is listed twice`);
      ok = false;
    } else out.push(r.value);
  });
  return ok ? out : null;
}

function wholeNumber(ctx: Ctx, f: Field, field: string, min: number, max: number): number | null {
  const v = scalar(f.v);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    problem(ctx, at(f), field, `must be a whole number from ${min} to ${max}, not ${shown(f.v)}`);
    return null;
  }
  return v;
}

function duration(ctx: Ctx, f: Field, field: string, min: number, max: number): number | null {
  const v = scalar(f.v);
  const ms = parseDurationMs(v);
  if (ms === null) {
    problem(ctx, at(f), field, `must be a duration such as 5s, 250ms or 2m, not ${shown(f.v)}${durationHint(v)}`);
    return null;
  }
  if (ms < min || ms > max) {
    problem(ctx, at(f), field, `${shown(f.v)} is out of range: from ${fmtMs(min)} to ${fmtMs(max)}`);
    return null;
  }
  return ms;
}

/** A pair of durations [a, b] with a <= b. */
function durationPair(ctx: Ctx, f: Field, field: string, min: number, max: number): [number, number] | null {
  if (!f.v || !isSeq(f.v) || f.v.items.length !== 2) {
    problem(ctx, at(f), field, 'must be two durations [least, most], e.g. [1s, 3s]');
    return null;
  }
  const [a, b] = f.v.items.map((item, i) => duration(ctx, { v: item as Node, p: f.p }, `${field}[${i}]`, min, max));
  if (a === null || a === undefined || b === null || b === undefined) return null;
  if (a > b) {
    problem(ctx, at(f), field, `the first (${fmtMs(a)}) is more than the second (${fmtMs(b)})`);
    return null;
  }
  return [a, b];
}

const fmtMs = (ms: number): string => (ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`);

const TOP_FIELDS = ['name', 'kind', 'seed', 'cluster', 'hosts', 'lps', 'duration', 'sample', 'workloads', 'faults', 'moves', 'random', 'checks'] as const;
const MOVE_FIELDS = ['at', 'vm', 'to', 'method', 'bandwidth', 'downtimeLimit', 'maxPasses'] as const;
const WORKLOAD_FIELDS = ['name', 'host', 'workload', 'memory', 'vps'] as const;
const FAULT_FIELDS = ['at', 'kind', 'target', 'for', 'role', 'seed', 'params'] as const;
const RANDOM_FIELDS = ['count', 'kinds', 'for', 'between', 'targets', 'moves', 'methods'] as const;
/** The most moves a random section draws. */
export const MAX_RANDOM_MOVES = 100;
const CHECK_FIELDS = ['liveness', 'isolation', 'progress', 'memory', 'cleanup', 'placement'] as const;
const HOST_RULE = 'a host name is 1-10 lower-case letters, digits or "-", starting with a letter';

/** The parameters of one fault (the `params:` map and the fields beside the fault's own), units taken off; each with its node. */
function faultParams(ctx: Ctx, fields: Map<string, Field>, field: string): { params: Record<string, unknown>; nodes: Map<string, [Field, string]> } {
  // Keys are the file's: on an ordinary object `__proto__: 1` was a prototype's setter, so the
  // parameter vanished and the fault was taken without a word (and a map there became params'
  // prototype). Without a prototype it is a key like any other, and refused as no parameter.
  const params = Object.create(null) as Record<string, unknown>;
  const nodes = new Map<string, [Field, string]>();
  const given: Array<[string, Field, string]> = [];
  for (const [k, f] of fields) if (!(FAULT_FIELDS as readonly string[]).includes(k)) given.push([k, f, `${field}.${fieldKey(k)}`]);
  const nested = fields.get('params');
  if (nested) for (const [k, f] of fieldsOf(ctx, nested.v, `${field}.params`, null)) given.push([k, f, `${field}.params.${fieldKey(k)}`]);
  for (const [k, f, path] of given) {
    if (nodes.has(k)) {
      problem(ctx, f.p.key as Node, path, 'appears twice');
      continue;
    }
    nodes.set(k, [f, path]);
    const raw = f.v && isSeq(f.v) ? f.v.items.map((x) => scalar(x as Node)) : scalar(f.v);
    const v = paramValue(k, raw);
    if (v.ok) params[k] = v.value;
    else problem(ctx, at(f), path, v.message);
  }
  return { params, nodes };
}

/**
 * Decodes and checks a chaos experiment file's text (YAML, or JSON, which is YAML too); `file`
 * names it in problems. Throws ChaosExperimentError with every problem found; never anything else.
 */
export function parseChaosExperiment(text: string, file = 'experiment'): ChaosSpec {
  const read = readYamlMap(text, MAX_CHAOS_FILE_BYTES, { tooBig: `an experiment file is text of at most ${MAX_CHAOS_FILE_BYTES} bytes`, notMap: 'an experiment is a map with name, kind, workloads, faults, …' });
  if (Array.isArray(read)) throw new ChaosExperimentError(file, read);
  const { ctx, root } = read;

  const top = fieldsOf(ctx, root, '', TOP_FIELDS);
  const spec: ChaosSpec = {
    file, source: text, sourceSha256: sourceSha256(text), name: '', kind: 'faults', seed: CHAOS_DEFAULTS.seed, cluster: CHAOS_DEFAULTS.cluster, hosts: null, lps: null,
    durationMs: CHAOS_DEFAULTS.durationMs, sampleMs: CHAOS_DEFAULTS.sampleMs, workloads: [], faults: [], moves: [], random: null,
    checks: { livenessMs: CHAOS_DEFAULTS.livenessMs, isolationStallMs: CHAOS_DEFAULTS.isolationStallMs, progress: true, memory: true, cleanup: true, placement: true },
  };

  const kind = top.get('kind');
  if (!kind) problem(ctx, root, 'kind', 'is missing: a chaos experiment says kind: faults');
  else if (scalar(kind.v) !== 'faults') problem(ctx, at(kind), 'kind', `${shown(kind.v)} is not this runner's kind: a chaos experiment is kind: faults`);

  const n = top.get('name');
  if (!n) problem(ctx, root, 'name', 'is missing: every experiment has a name (it names the report, the cluster and the faults\' owner)');
  else {
    const v = scalar(n.v);
    if (typeof v !== 'string' || !CLUSTER_NAME_RE.test(v)) problem(ctx, at(n), 'name', `${n.v === null || v === null ? 'is empty' : `${shown(n.v)} is not valid`}: use 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    else spec.name = v;
  }

  const seed = top.get('seed');
  if (seed) spec.seed = seedValue(ctx, seed.v, at(seed), 'seed') ?? spec.seed;

  const cl = top.get('cluster');
  if (cl) {
    const v = scalar(cl.v);
    if (v !== 'new' && v !== 'existing') problem(ctx, at(cl), 'cluster', `must be new (bring up hosts h1..hN for the run) or existing (the cluster up in HVLAB_HOME), not ${shown(cl.v)}`);
    else spec.cluster = v;
  }
  for (const k of ['hosts', 'lps'] as const) {
    const f = top.get(k);
    if (!f) continue;
    if (spec.cluster === 'existing') problem(ctx, f.p, k, `is for cluster: new; an existing cluster keeps its own ${k === 'hosts' ? 'hosts' : 'LPs'}`);
    else if (k === 'hosts' && (f.v === null || scalar(f.v) === null || scalar(f.v) === 0)) {
      // A run with no host has nowhere to put its workloads: said so, rather than "must be a whole number".
      problem(ctx, at(f), k, `is ${scalar(f.v) === 0 ? '0' : 'empty'}: cluster: new brings up 1 to ${MAX_HOSTS} hosts, h1..hN (default ${CHAOS_DEFAULTS.hosts}), and every workload runs on one of them`);
    } else spec[k] = wholeNumber(ctx, f, k, 1, k === 'hosts' ? MAX_HOSTS : MAX_LPS);
  }
  if (spec.cluster === 'new') {
    spec.hosts ??= CHAOS_DEFAULTS.hosts;
    spec.lps ??= CHAOS_DEFAULTS.lps;
  }
  const hostNames = spec.cluster === 'new' ? Array.from({ length: spec.hosts ?? 0 }, (_, i) => `h${i + 1}`) : null;

  const dur = top.get('duration');
  if (dur) spec.durationMs = duration(ctx, dur, 'duration', 1000, MAX_CHAOS_DURATION_MS) ?? spec.durationMs;
  const smp = top.get('sample');
  if (smp) spec.sampleMs = duration(ctx, smp, 'sample', 100, 10_000) ?? spec.sampleMs;

  // Workloads.
  const wl = top.get('workloads');
  if (!wl) problem(ctx, root, 'workloads', 'is missing: list the VMs to run, e.g. - { name: c1, host: h1, workload: counter }');
  else if (!wl.v || !isSeq(wl.v) || wl.v.items.length === 0) problem(ctx, at(wl), 'workloads', `must be a list of at least one VM, not ${wl.v && isSeq(wl.v) ? 'an empty list' : shown(wl.v)}`);
  // Counted before any is read: 30,000 were each checked against those before (9 s), then taken.
  else if (spec.cluster === 'existing' && wl.v.items.length > MAX_CHAOS_WORKLOADS_EXISTING) problem(ctx, at(wl), 'workloads', `at most ${MAX_CHAOS_WORKLOADS_EXISTING} VMs on an existing cluster (the run names each one it makes to its lease there, which takes ${MAX_OWNED_VMS}), not ${wl.v.items.length}`);
  else if (wl.v.items.length > MAX_CHAOS_WORKLOADS) problem(ctx, at(wl), 'workloads', `at most ${MAX_CHAOS_WORKLOADS} VMs, not ${wl.v.items.length}`);
  else {
    wl.v.items.forEach((item, i) => {
      const field = `workloads[${i}]`;
      if (emptyItem(ctx, item as Node | null, wl.v as Node, field, 'a VM, e.g. - { name: c1, host: h1 }')) return;
      const fs = fieldsOf(ctx, item as Node, field, WORKLOAD_FIELDS);
      if (!isMap(item)) return;
      const w: ChaosWorkload = { name: '', host: '', workload: DEFAULT_VM.workload, memoryBytes: parseSize(DEFAULT_VM.memory)!, vps: DEFAULT_VM.vps };
      const nm = fs.get('name');
      const nv = nm ? scalar(nm.v) : undefined;
      if (!nm) problem(ctx, item as Node, `${field}.name`, 'is missing: every VM has a name');
      else if (typeof nv !== 'string' || !VM_NAME_RE.test(nv)) problem(ctx, at(nm), `${field}.name`, `must be a VM name: 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit, not ${shown(nm.v)}`);
      else if (spec.workloads.some((x) => x.name === nv)) problem(ctx, at(nm), `${field}.name`, `VM ${nv} is listed twice`);
      else w.name = nv;
      const h = fs.get('host');
      const hv = h ? scalar(h.v) : undefined;
      if (!h) problem(ctx, item as Node, `${field}.host`, 'is missing: say which host the VM runs on');
      else if (typeof hv !== 'string' || !CLUSTER_HOST_RE.test(hv)) problem(ctx, at(h), `${field}.host`, `${HOST_RULE}, not ${shown(h.v)}`);
      else if (hostNames && !hostNames.includes(hv)) problem(ctx, at(h), `${field}.host`, `host ${hv} is not a host of the cluster (${hostNames.join(', ')})`);
      else w.host = hv;
      const mem = fs.get('memory');
      if (mem) {
        const v = scalar(mem.v);
        const bytes = typeof v === 'number' ? v : typeof v === 'string' ? parseSize(v) : null;
        if (bytes === null || !Number.isSafeInteger(bytes) || bytes % 4096 !== 0 || bytes < MIN_MEMORY_BYTES || bytes > MAX_MEMORY_BYTES) problem(ctx, at(mem), `${field}.memory`, `must be a size such as 64M, a multiple of 4K from ${formatBytes(MIN_MEMORY_BYTES)} to ${formatBytes(MAX_MEMORY_BYTES)}, not ${shown(mem.v)}`);
        else w.memoryBytes = bytes;
      }
      const vps = fs.get('vps');
      if (vps) w.vps = wholeNumber(ctx, vps, `${field}.vps`, 1, MAX_VPS_PER_PARTITION) ?? w.vps;
      const wk = fs.get('workload');
      if (wk) {
        const v = scalar(wk.v);
        if (typeof v !== 'string') problem(ctx, at(wk), `${field}.workload`, `must be a workload such as counter, sleep, spin or memdirty:8M, not ${shown(wk.v)}`);
        else if (parseWorkload(v) === null) problem(ctx, at(wk), `${field}.workload`, workloadProblem(v)!);
        else w.workload = v;
      }
      const fit = workloadFitError(w.workload, w.memoryBytes);
      if (fit) problem(ctx, wk ? at(wk) : (item as Node), `${field}.workload`, fit);
      if (w.name && w.host) spec.workloads.push(w);
    });
  }
  const vmNames = spec.workloads.map((w) => w.name);

  // Checks (read before the faults: the liveness bound is the default gap at the end).
  const checks = top.get('checks');
  if (checks) {
    for (const [k, f] of fieldsOf(ctx, checks.v, 'checks', CHECK_FIELDS)) {
      const v = scalar(f.v);
      const field = `checks.${k}`;
      if (k === 'liveness' || k === 'isolation') {
        const key = k === 'liveness' ? 'livenessMs' : 'isolationStallMs';
        if (v === false) spec.checks[key] = null;
        else if (v === true) { /* the default */ } else spec.checks[key] = duration(ctx, f, field, 100, 3_600_000) ?? spec.checks[key];
      } else if (typeof v !== 'boolean') problem(ctx, at(f), field, `must be true or false, not ${shown(f.v)}`);
      else spec.checks[k as 'progress' | 'memory' | 'cleanup' | 'placement'] = v;
    }
  }

  // Explicit faults.
  const faults = top.get('faults');
  if (faults) {
    if (!faults.v || !isSeq(faults.v)) problem(ctx, at(faults), 'faults', `must be a list of faults, e.g. - { at: 5s, kind: pause, target: vm:c1, for: 3s }, not ${shown(faults.v)}`);
    // Counted before any is read: 20,000 were each checked (5 s) before the count was.
    else if (faults.v.items.length > MAX_SCHEDULE_FAULTS) problem(ctx, at(faults), 'faults', `a schedule holds at most ${MAX_SCHEDULE_FAULTS} faults, not ${faults.v.items.length}`);
    else {
      faults.v.items.forEach((item, i) => {
        const field = `faults[${i}]`;
        if (emptyItem(ctx, item as Node | null, faults.v as Node, field, 'a fault, e.g. - { at: 5s, kind: pause, target: vm:c1, for: 3s }')) return;
        const fs = fieldsOf(ctx, item as Node, field, null);
        if (!isMap(item)) return;
        const k = fs.get('kind');
        const kv = k ? scalar(k.v) : undefined;
        if (!k) return problem(ctx, item as Node, `${field}.kind`, `is missing: a fault has a kind (${FAULT_KINDS.join(', ')})`);
        if (typeof kv !== 'string' || !(FAULT_KINDS as readonly string[]).includes(kv)) return problem(ctx, at(k), `${field}.kind`, `${shown(k.v)} is not a fault kind (${FAULT_KINDS.join(', ')})`);
        const kind = kv as FaultKind;
        const instant = INSTANT_FAULT_KINDS.includes(kind);
        const f: ChaosFaultSpec = { atMs: 0, kind, target: '', role: null, forMs: 0, params: {}, seed: null };
        let ok = true;
        const atF = fs.get('at');
        if (!atF) {
          problem(ctx, item as Node, `${field}.at`, 'is missing: when the fault starts (e.g. at: 5s)');
          ok = false;
        } else {
          const v = duration(ctx, atF, `${field}.at`, 0, MAX_CHAOS_DURATION_MS);
          if (v === null) ok = false;
          else f.atMs = v;
        }
        const forF = fs.get('for');
        if (!forF) {
          problem(ctx, item as Node, `${field}.for`, `is missing: a fault without an end is refused (say how long, e.g. for: 3s${instant ? `; a ${kind} fault's for is the window its recovery is measured in` : ''})`);
          ok = false;
        } else {
          const v = duration(ctx, forF, `${field}.for`, instant ? 0 : 1, FAULT_MAX_MS);
          if (v === null) ok = false;
          else f.forMs = v;
        }
        const roleF = fs.get('role');
        if (roleF) {
          const v = scalar(roleF.v);
          if (typeof v !== 'string' || !(PROCESS_ROLES as readonly string[]).includes(v)) {
            problem(ctx, at(roleF), `${field}.role`, `must be a process role: ${PROCESS_ROLES.join(', ')}`);
            ok = false;
          } else f.role = v as ProcessRole;
        }
        const tF = fs.get('target');
        if (!tF) {
          problem(ctx, item as Node, `${field}.target`, 'is missing: what the fault hits (e.g. vm:c1, host:h2, link:h1-h2, cluster)');
          ok = false;
        } else {
          const v = scalar(tF.v);
          const t = parseTarget(v);
          const why = !t.ok ? t.message : targetWorldError(t.value, vmNames, hostNames);
          if (why) {
            problem(ctx, at(tF), `${field}.target`, why);
            ok = false;
          } else f.target = v as string;
        }
        const sF = fs.get('seed');
        if (sF) f.seed = seedValue(ctx, sF.v, at(sF), `${field}.seed`);
        const before = ctx.problems.length;
        const { params, nodes } = faultParams(ctx, fs, field);
        f.params = params;
        if (ctx.problems.length > before) ok = false;
        else if (ok) {
          // The one check of a fault request (request.ts), as the nemesis will make it; its sentence points at what it names.
          const req: Record<string, unknown> = { kind, target: f.target, forMs: f.forMs, params, ...(f.role ? { role: f.role } : {}), ...(f.seed !== null ? { seed: f.seed } : {}) };
          const c = checkFaultRequest(req);
          const shape = kind === 'partition' ? String(params.shape ?? 'one') : null;
          const few = shape && hostNames && hostNames.length < (PARTITION_MIN_HOSTS[shape as PartitionShape] ?? 2) ? `shape ${shape} needs at least ${PARTITION_MIN_HOSTS[shape as PartitionShape]} hosts (the cluster has ${hostNames.length})` : null;
          if (!c.ok || few) {
            const message = c.ok ? few! : c.message;
            const named = /"([^"]+)"/.exec(message)?.[1] ?? (/^(\w+):/.exec(message.replace(/^[a-z-]+: /, ''))?.[1]);
            // The check names a parameter cut to 32 characters ("has no parameter"): the file's key that begins so (it was said at the fault).
            const hit = !named ? undefined : nodes.get(named) ?? (named.length === 32 ? [...nodes].find(([k]) => k.startsWith(named))?.[1] : undefined);
            const node = hit ? at(hit[0]) : /^target|target/.test(message) && tF ? at(tF) : /role/.test(message) && roleF ? at(roleF) : few && nodes.has('shape') ? at(nodes.get('shape')![0]) : (item as Node);
            const path = hit ? hit[1] : !c.ok ? field : nodes.has('shape') ? nodes.get('shape')![1] : `${field}.shape`;
            // The request's check names the parameter, not what the file gave it ('"lps" must be a whole number from 1 to 1024'): said here (a list is there to see at the place).
            const param = hit ? hit[0].v : null;
            problem(ctx, node, path, !c.ok && param && !isSeq(param) && /\bmust\b/.test(message) ? `${message}, not ${shown(param)}` : message);
            ok = false;
          } else {
            f.params = c.value.params ?? params;
            // What the run's hosts and VMs cannot take (a new cluster's, known here), refused now rather than when it comes.
            const t = parseTarget(f.target);
            const tp = t.ok ? topologyProblem(kind, t.value, f.params, hostNames ? spec.lps : null, spec.workloads) : null;
            if (tp) {
              const node = nodes.get(tp.param);
              problem(ctx, node ? at(node[0]) : tF ? at(tF) : (item as Node), node ? node[1] : `${field}.${tp.param}`, tp.message);
              ok = false;
            }
          }
        }
        if (ok && f.atMs + f.forMs > spec.durationMs) problem(ctx, forF ? at(forF) : (item as Node), `${field}.for`, `the fault ends at ${fmtMs(f.atMs + f.forMs)}, after the experiment's duration (${fmtMs(spec.durationMs)})`);
        else if (ok) spec.faults.push(f);
      });
    }
  }

  // Live migrations.
  const mv = top.get('moves');
  if (mv) {
    if (!mv.v || !isSeq(mv.v)) problem(ctx, at(mv), 'moves', `must be a list of moves, e.g. - { at: 6s, vm: c1, to: h2 }, not ${shown(mv.v)}`);
    else if (mv.v.items.length > MAX_CHAOS_MOVES) problem(ctx, at(mv), 'moves', `at most ${MAX_CHAOS_MOVES} moves, not ${mv.v.items.length}`);
    else {
      const placeOf = new Map<ChaosMoveSpec, [Node, string]>();
      mv.v.items.forEach((item, i) => {
        const field = `moves[${i}]`;
        if (emptyItem(ctx, item as Node | null, mv.v as Node, field, 'a move, e.g. - { at: 10s, vm: c1, to: h2 }')) return;
        const fs = fieldsOf(ctx, item as Node, field, MOVE_FIELDS);
        if (!isMap(item)) return;
        const m: ChaosMoveSpec = { atMs: 0, vm: '', to: '', method: 'precopy', options: {}, fileIndex: i };
        let ok = true;
        const atF = fs.get('at');
        if (!atF) {
          problem(ctx, item as Node, `${field}.at`, 'is missing: when the move starts (e.g. at: 6s)');
          ok = false;
        } else {
          const v = duration(ctx, atF, `${field}.at`, 0, spec.durationMs - 1);
          if (v === null) ok = false;
          else m.atMs = v;
        }
        const vmF = fs.get('vm');
        const vv = vmF ? scalar(vmF.v) : undefined;
        if (!vmF) {
          problem(ctx, item as Node, `${field}.vm`, 'is missing: which VM moves');
          ok = false;
        } else if (typeof vv !== 'string' || !vmNames.includes(vv)) {
          problem(ctx, at(vmF), `${field}.vm`, `${shown(vmF.v)} is not one of the workloads (${vmNames.join(', ') || 'none'})`);
          ok = false;
        } else m.vm = vv;
        const toF = fs.get('to');
        const tv = toF ? scalar(toF.v) : undefined;
        if (!toF) {
          problem(ctx, item as Node, `${field}.to`, 'is missing: the host it moves to');
          ok = false;
        } else if (typeof tv !== 'string' || !CLUSTER_HOST_RE.test(tv)) {
          problem(ctx, at(toF), `${field}.to`, `${HOST_RULE}, not ${shown(toF.v)}`);
          ok = false;
        } else if (hostNames && !hostNames.includes(tv)) {
          problem(ctx, at(toF), `${field}.to`, `host ${tv} is not a host of the cluster (${hostNames.join(', ')})`);
          ok = false;
        } else m.to = tv;
        const meF = fs.get('method');
        if (meF) {
          const pm = methodOf(scalar(meF.v));
          if (typeof pm === 'string') {
            problem(ctx, at(meF), `${field}.method`, pm);
            ok = false;
          } else {
            m.method = pm.method;
            Object.assign(m.options, pm.options);
          }
        }
        const bwF = fs.get('bandwidth');
        if (bwF) {
          const v = scalar(bwF.v);
          const bps = typeof v === 'number' || typeof v === 'string' ? parseBandwidth(v) : null;
          if (bps === null || !Number.isSafeInteger(bps) || bps < 0) {
            problem(ctx, at(bwF), `${field}.bandwidth`, `must be bytes a second (a size such as 20M), a rate such as 100mbit, or 0 (unlimited), not ${shown(bwF.v)}`);
            ok = false;
          } else m.options.bandwidthBps = bps;
        }
        const dlF = fs.get('downtimeLimit');
        if (dlF) {
          const v = duration(ctx, dlF, `${field}.downtimeLimit`, 1, 3_600_000);
          if (v === null) ok = false;
          else m.options.downtimeLimitMs = v;
        }
        const mpF = fs.get('maxPasses');
        if (mpF) {
          const v = wholeNumber(ctx, mpF, `${field}.maxPasses`, 1, 1000);
          if (v === null) ok = false;
          else m.options.maxPasses = v;
        }
        if (ok) {
          spec.moves.push(m);
          placeOf.set(m, [item as Node, field]);
        }
      });
      // Where each VM is when its move starts, if the moves before it went through: a move to the
      // host it is on then would be refused by that host.
      spec.moves.sort((a, b) => a.atMs - b.atMs);
      const where = new Map(spec.workloads.map((w) => [w.name, w.host]));
      for (const m of spec.moves) {
        const [node, field] = placeOf.get(m)!;
        if (where.get(m.vm) === m.to) problem(ctx, node, `${field}.to`, `${m.vm} is on ${m.to} by ${fmtMs(m.atMs)} (its workload's host, or a move before this one): a move goes to another host`);
        where.set(m.vm, m.to);
      }
    }
  }

  // The random schedule.
  const rnd = top.get('random');
  if (rnd) {
    const fs = fieldsOf(ctx, rnd.v, 'random', RANDOM_FIELDS);
    const r: ChaosRandomSpec = { count: 0, moves: 0, methods: [{ method: 'precopy', options: {} }], kinds: [...RANDOM_DEFAULT_KINDS], forMs: [1000, 3000], betweenMs: [Math.min(1000, spec.durationMs), spec.durationMs], targets: null };
    let ok = rnd.v !== null && isMap(rnd.v);
    // Empty (`random:`); any other value that is not a map fieldsOf refused already (it was said twice).
    if (rnd.v === null || (isScalar(rnd.v) && rnd.v.value === null)) problem(ctx, at(rnd), 'random', 'must be a map: count, kinds, for, between, targets, moves, methods');
    const c = fs.get('count');
    const mvN = fs.get('moves');
    if (!c && !mvN) {
      problem(ctx, at(rnd), 'random.count', 'is missing: how many faults to draw (or random.moves: how many moves)');
      ok = false;
    } else if (c) {
      const v = wholeNumber(ctx, c, 'random.count', mvN ? 0 : 1, MAX_SCHEDULE_FAULTS);
      if (v === null) ok = false;
      else r.count = v;
    }
    if (mvN) {
      const v = wholeNumber(ctx, mvN, 'random.moves', 1, MAX_RANDOM_MOVES);
      if (v === null) ok = false;
      else if (hostNames !== null && hostNames.length < 2) {
        problem(ctx, at(mvN), 'random.moves', 'a move needs a host to go to: the cluster has one host');
        ok = false;
      } else r.moves = v;
    }
    const meL = fs.get('methods');
    if (meL) {
      if (!mvN) {
        problem(ctx, at(meL), 'random.methods', 'goes with random.moves (the methods drawn moves take)');
        ok = false;
      } else {
        const ms = distinctList(ctx, meL, 'random.methods', 'a list of methods, e.g. [precopy, postcopy, precopy+compress]', (v) => {
          const m = methodOf(v);
          return typeof m === 'string' ? m : { value: m };
        }, (m) => m.method);
        if (ms) r.methods = ms.map((m) => ({ method: m.method, options: { ...m.options } }));
        else ok = false;
      }
    }
    const ks = fs.get('kinds');
    if (ks) {
      const kinds = distinctList(ctx, ks, 'random.kinds', `a list of fault kinds (${FAULT_KINDS.join(', ')})`, (v, written) => (typeof v === 'string' && (FAULT_KINDS as readonly string[]).includes(v) ? { value: v as FaultKind } : `${written} is not a fault kind (${FAULT_KINDS.join(', ')})`), (k) => k);
      if (kinds) r.kinds = kinds;
      else ok = false;
    }
    const fr = fs.get('for');
    if (fr) {
      const v = durationPair(ctx, fr, 'random.for', 1, FAULT_MAX_MS);
      if (v) r.forMs = v;
      else ok = false;
    }
    const bw = fs.get('between');
    if (bw) {
      const v = durationPair(ctx, bw, 'random.between', 0, spec.durationMs);
      if (v) r.betweenMs = v;
      else ok = false;
    }
    const tg = fs.get('targets');
    if (tg) {
      const targets = distinctList(ctx, tg, 'random.targets', 'a list of targets (vm:NAME, host:NAME, link:A-B, cluster)', (v) => {
        const t = parseTarget(v);
        return !t.ok ? t.message
          : t.value.t === 'vms' || t.value.t === 'hosts' || t.value.t === 'host-of' ? 'a random schedule names its targets (vm:NAME, host:NAME, link:A-B, cluster); its draws pick among them'
          : targetWorldError(t.value, vmNames, hostNames) ?? { value: v as string };
      }, (t) => t);
      if (targets) r.targets = targets;
      else ok = false;
    }
    if (ok) {
      const [b0, b1] = r.betweenMs;
      if (r.count > 0 && b1 - b0 < r.forMs[1]) {
        problem(ctx, bw ? at(bw) : fr ? at(fr) : at(rnd), bw ? 'random.between' : 'random.for', `the window ${fmtMs(b0)}–${fmtMs(b1)} is shorter than the longest fault drawn (${fmtMs(r.forMs[1])})`);
        ok = false;
      }
      // Every kind asked for needs something to hit.
      if (r.moves > 0 && spec.workloads.length === 0) {
        problem(ctx, mvN ? at(mvN) : at(rnd), 'random.moves', 'there are no workloads to move');
        ok = false;
      }
      if (ok && r.count > 0 && spec.workloads.length > 0) {
        const world = chaosWorld(spec);
        if (spec.cluster === 'new') {
          // Left out, the kinds are those this cluster can take (no lp-shrink of 1-LP hosts, no
          // partition of one host); named, each must have something to hit.
          const can = (k: FaultKind): boolean => randomCandidates(k, world, r.targets).length > 0;
          if (!ks) r.kinds = r.kinds.filter(can);
          const why = (k: FaultKind): string => k === 'partition' || k === 'link' ? ' (it needs at least 2 hosts)'
            : k === 'lp-shrink' && spec.lps === 1 ? ' (the run\'s hosts have 1 LP each, lps: 1: there is nothing to shrink)' : '';
          if (r.kinds.length === 0) {
            problem(ctx, at(rnd), 'random.kinds', `no kind of fault has anything to hit${r.targets ? ' among random.targets' : ''}`);
            ok = false;
          }
          for (const k of ks ? r.kinds : []) {
            if (!can(k)) {
              problem(ctx, at(ks!), 'random.kinds', `nothing for a ${k} fault to hit${r.targets ? ' among random.targets' : ''}${why(k)}`);
              ok = false;
            }
          }
        }
      }
    }
    if (ok) spec.random = r;
  }
  if (spec.faults.length + (spec.random?.count ?? 0) > MAX_SCHEDULE_FAULTS) problem(ctx, at(rnd ?? faults!), 'faults', `a schedule holds at most ${MAX_SCHEDULE_FAULTS} faults`);

  if (ctx.problems.length > 0) {
    ctx.problems.sort((a, b) => a.line - b.line || a.column - b.column);
    throw new ChaosExperimentError(file, ctx.problems);
  }
  return spec;
}

/**
 * The concrete targets a random fault of `kind` can hit in `world` (restricted to `only` when given),
 * sorted: VMs for a VM's faults and kill/pause; hosts for lp-shrink (those with 2 LPs or more,
 * where the world knows their LPs: a drawn lp-shrink leaves 1) and kill/pause (hypervisor or
 * root); links; the cluster for a partition (with at least 2 hosts and a link between them).
 */
export function randomCandidates(kind: FaultKind, world: ChaosWorld, only: readonly string[] | null): string[] {
  const vms = world.vms.map((v) => `vm:${v.name}`);
  const hosts = world.hosts.map((h) => `host:${h}`);
  const links = world.links.map(([a, b]) => `link:${a}-${b}`);
  let all: string[];
  switch (kind) {
    case 'kill':
      all = vms;
      break;
    case 'pause':
      all = [...vms, ...hosts];
      break;
    case 'lp-shrink':
      all = world.hosts.filter((h) => (world.lps?.[h] ?? 2) >= 2).map((h) => `host:${h}`);
      break;
    case 'link':
      all = links;
      break;
    case 'partition':
      all = world.hosts.length >= 2 && world.links.length > 0 ? ['cluster'] : [];
      break;
    default:
      all = vms;
  }
  const out = only ? all.filter((t) => only.includes(t) || (t.startsWith('link:') && only.some((o) => o.startsWith('link:') && sameLink(o.slice(5), t.slice(5), world.hosts)))) : all;
  return [...out].sort();
}

function sameLink(a: string, b: string, hosts: readonly string[]): boolean {
  const x = linkOf(a, hosts);
  const y = linkOf(b, hosts);
  return x !== null && y !== null && x[0] === y[0] && x[1] === y[1];
}

/** The kind a file says it is (`kind:` of its root map), without checking anything else; null if it says none or cannot be read. */
export function experimentKindOf(file: string): string | null {
  try {
    const text = readRegularFile(file, MAX_CHAOS_FILE_BYTES).toString('utf8');
    if (yamlNestingProblem(text)) return null; // the checker that reads it next says so
    const doc = parseDocument(text, { uniqueKeys: false, prettyErrors: false });
    const root = doc.contents as Node | null;
    if (!root || !isMap(root)) return null;
    const p = (root as YAMLMap).items.find((x) => isScalar(x.key) && x.key.value === 'kind');
    const v = p ? scalar((p.value as Node | null) ?? null) : undefined;
    return typeof v === 'string' ? v : null;
  } catch {
    return null;
  }
}

/** Reads and checks a chaos experiment file: its spec, or a ChaosExperimentError (unreadable, too large, or invalid). */
export function loadChaosExperiment(file: string): ChaosSpec | ChaosExperimentError {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(file, MAX_CHAOS_FILE_BYTES);
  } catch (e) {
    if (e instanceof FileShapeError) return new ChaosExperimentError(file, [{ line: 0, column: 0, field: '', message: `${e.message}: not an experiment file` }]);
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (e as Error).message;
    return new ChaosExperimentError(file, [{ line: 0, column: 0, field: '', message: `cannot read the experiment file: ${why}` }]);
  }
  // Not UTF-8: refused (its text would not be its bytes), with the first bad sequence's place.
  const text = fileText(bytes);
  if (typeof text !== 'string') return new ChaosExperimentError(file, [text]);
  try {
    // The hash of the bytes read, as sha256sum says it (their text is the same bytes, a BOM too).
    return { ...parseChaosExperiment(text, file), sourceSha256: sourceSha256(bytes) };
  } catch (e) {
    if (e instanceof ChaosExperimentError) return e;
    throw e;
  }
}
