/**
 * Experiments: a file that says what to measure, a runner that measures it on a cluster of this
 * machine, and the report it writes. `hvlab experiment run FILE [--out DIR] [--json]`.
 *
 * kind: migration (kind: faults is @hvlab/faults's chaos runner) compares live-migration
 * methods between two hosts the way the pre-copy and post-copy papers do: for each method and
 * repetition a fresh VM is made on `from`, started, left to warm up, moved to `to` with that
 * method, its statistics (QEMU's query-migrate names, protocol/src/migrate.ts) kept, and turned
 * off and deleted wherever it ended. The link from → to is measured once (linkProbe) as the
 * model's baseline: RAM ÷ bandwidth, every page sent once and nothing else.
 *
 *   name: precopy-vs-offline      # names the report's directory, its VMs and (cluster: new) the cluster
 *   kind: migration
 *   seed: 7                       # recorded; the link's random draws (jitter, loss) start from it (decimal or 0x-hex, 32 bits)
 *   cluster: new                  # new: hosts `from` and `to` brought up for the run and down after;
 *                                 # existing: the cluster up in HVLAB_HOME, hosts named by from and to
 *   from: h1
 *   to: h2
 *   lps: 2                        # cluster: new only: LPs per host (default: the VM's VPs, at least 2)
 *   vm: { memory: 256M, vps: 2, workload: memdirty:32M }
 *   link: { rate: 1gbit, delay: 2ms, jitter: 0ms, loss: 0% }   # the link from-to during the run; put back after
 *   methods: [offline, precopy, precopy+compress, precopy+autoconverge, postcopy]
 *   options: { downtimeLimit: 300ms, maxPasses: 10, bandwidth: 0 }   # every move (bandwidth: bytes/s, or a rate: 800mbit)
 *   repetitions: 3
 *   warmup: 1s                    # from the VM's start to its move
 *   probe: 64M                    # bytes of the bandwidth probe (0: none); default about 2 s at the link's rate, at most 64M
 *   moveTimeout: 600s             # a move not done by then is cancelled and recorded as cancelled, with its statistics so far
 *
 * A method is a base, offline, precopy or postcopy, with modifiers +compress and +autoconverge.
 * `parseExperiment` is the file's one checking decoder: like parseTopology it reports every problem
 * at once with its line, column and field (`ExperimentError`), before anything starts.
 *
 * A move the host refuses is recorded, not fatal: a refusal for an invalid argument (post-copy
 * before it is built) marks the method unsupported and skips its other repetitions. Whatever
 * happens, nothing the runner made is left: its VMs, its change to the link, and a cluster it
 * brought up (under a temporary HVLAB_HOME unless one is given).
 *
 * The report (results.json, the same object `runExperiment` returns) keeps the spec, the link's
 * measurement, every run with its full statistics and a summary per method; results.csv has a row
 * per run, results.md a table per method, and four SVG plots (plot.ts) show total time, downtime,
 * bytes sent and the dirty set pass by pass.
 */
import { randomUUID } from 'node:crypto';
import { lstatSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { isMap, isScalar, isSeq, type Node, type Pair, type YAMLMap } from 'yaml';
import { fieldKey, fileText, problem, problemsText, readYamlMap, scalar, seedValue, shown, where, type CheckCtx, type FileProblem } from './yaml-check.js';
import {
  CLUSTER_HOST_RE, durationHint, LINK_MAX_DELAY_MS, LINK_MAX_RATE_BPS, LINK_PROBE_MAX_BYTES, MAX_MEMORY_BYTES, MAX_VPS_PER_PARTITION, MIN_MEMORY_BYTES, MIGRATION_MIN_BANDWIDTH_BPS, decodeMigrationOptions, formatBytes,
  parseSize, workloadFitError, type LinkChange, type LinkImpairments, type LinkProbeResult, type MigrationOptions, type MigrationStats, type VmInfo,
} from '@hvlab/protocol';
import { FileShapeError, makeDirs, unmakeDirs, pathsForRecord, readRegularFile, resolveHome, writeFileAtomic } from '@hvlab/runtime';
import { MgmtCallError, MgmtClient, readHost, removeVm } from '@hvlab/host';
import { CLUSTER_NAME_RE, DEFAULT_VM, MAX_LPS, parseDuration, parseLoss, parseRate, parseTopology } from './topology.js';
import { ClusterError, markTemporaryHome, ProbeStopped, waitLinkQuiet, clusterDown, clusterHostTarget, clusterStatus, clusterUp, fabricStatus, linkProbeStop, linkSet, readCluster, STAGED_LOGS_RE, stoppableProbe } from './lab.js';
import { impairmentsText } from './graph.js';
import { environmentText, loadNow, runEnvironment, sourceSha256, type RunEnvironment } from './provenance.js';
import { barChartSvg, formatBinaryBytes, formatNumber, lineChartSvg, type Bar } from './plot.js';

/** Largest experiment file (bytes). */
export const MAX_EXPERIMENT_BYTES = 1024 * 1024;
/** The kinds of experiment this runner knows, and those planned (refused with a pointer). */
export const EXPERIMENT_KINDS = ['migration'] as const;
/** Kinds another package runs (`hvlab experiment run` sends each file to its runner). */
const OTHER_RUNNERS: Record<string, string> = { faults: "@hvlab/faults's chaos runner" };
export type ExperimentKind = (typeof EXPERIMENT_KINDS)[number];

/** A method's base and its modifiers, as written in `methods` (`precopy+compress`). */
export const METHOD_BASES = ['offline', 'precopy', 'postcopy'] as const;
export const METHOD_MODIFIERS = ['compress', 'autoconverge'] as const;
type MethodBase = (typeof METHOD_BASES)[number];
type MethodModifier = (typeof METHOD_MODIFIERS)[number];

/** The options a method stands for (the rest take the file's `options`, then the defaults). */
export type MethodOptions = Pick<Partial<MigrationOptions>, 'offline' | 'postcopy' | 'compress' | 'autoConverge'>;

export const EXPERIMENT_DEFAULTS = {
  seed: 1, cluster: 'new', from: 'h1', to: 'h2', repetitions: 3, warmupMs: 1000, moveTimeoutMs: 600_000,
  /** The bandwidth probe when the file gives none: about this long at the link's rate, within these bytes. */
  probeSeconds: 2, probeMinBytes: 1024 * 1024, probeMaxBytes: 64 * 1024 * 1024,
} as const;

export interface ExperimentVm {
  memoryBytes: number;
  vps: number;
  workload: string;
}

/** Options given to every move (absent: the host's defaults, protocol's MIGRATION_DEFAULTS). */
export interface ExperimentMoveOptions {
  bandwidthBps?: number;
  downtimeLimitMs?: number;
  maxPasses?: number;
}

/** A checked experiment file. */
export interface ExperimentSpec {
  /** The file as given, and its text (kept in the report, so a run can be repeated from it). */
  file: string;
  source: string;
  /** SHA-256 of the file's bytes as read (sourceSha256: `sha256sum FILE`); of the text's UTF-8 when parsed from a string. */
  sourceSha256: string;
  name: string;
  kind: ExperimentKind;
  seed: number;
  cluster: 'new' | 'existing';
  from: string;
  to: string;
  /** LPs of each host of a new cluster; null with cluster: existing. */
  lps: number | null;
  vm: ExperimentVm;
  /** The link from-to during the run (every impairment not named is cleared); null: left as it is. */
  link: LinkImpairments | null;
  /** Canonical spelling: base, then +compress, then +autoconverge. */
  methods: string[];
  options: ExperimentMoveOptions;
  repetitions: number;
  warmupMs: number;
  /** Bytes of the bandwidth probe; null: chosen from the link's rate; 0: no probe (no model). */
  probeBytes: number | null;
  moveTimeoutMs: number;
}

export type ExperimentProblem = FileProblem;

export class ExperimentError extends Error {
  override name = 'ExperimentError';
  constructor(readonly file: string, readonly problems: ExperimentProblem[]) {
    super(problemsText(file, problems));
  }
}

// ---- methods ------------------------------------------------------------------------------------

/** A method as written (`precopy+compress`) → its canonical spelling and options, or a sentence. */
export function parseMethod(text: string): { method: string; options: MethodOptions } | string {
  const parts = text.trim().toLowerCase().split('+').map((p) => p.trim());
  const base = parts[0] as MethodBase;
  if (!METHOD_BASES.includes(base)) return `"${text.slice(0, 40)}" is not a method: a method is ${METHOD_BASES.join(', ')} or one of them with ${METHOD_MODIFIERS.map((m) => `+${m}`).join(' and ')}`;
  const mods = new Set<MethodModifier>();
  for (const p of parts.slice(1)) {
    if (!METHOD_MODIFIERS.includes(p as MethodModifier)) return `"+${p.slice(0, 40)}" is not a modifier of a method (modifiers: ${METHOD_MODIFIERS.map((m) => `+${m}`).join(', ')})`;
    if (mods.has(p as MethodModifier)) return `"+${p}" appears twice in "${text.slice(0, 40)}"`;
    mods.add(p as MethodModifier);
  }
  const options: MethodOptions = {};
  if (base === 'offline') options.offline = true;
  if (base === 'postcopy') options.postcopy = true;
  if (mods.has('compress')) options.compress = true;
  if (mods.has('autoconverge')) options.autoConverge = true;
  return { method: [base, ...METHOD_MODIFIERS.filter((m) => mods.has(m))].join('+'), options };
}

/** The arguments of `vmMove` for one move of `method` (canonical) under the file's options. */
export function moveArguments(spec: Pick<ExperimentSpec, 'options' | 'to'>, method: string, vm: string): Record<string, unknown> {
  const m = parseMethod(method);
  if (typeof m === 'string') throw new Error(m);
  return { name: vm, to: spec.to, ...spec.options, ...m.options };
}

// ---- the decoder --------------------------------------------------------------------------------

type Ctx = CheckCtx;

/** A map's fields by key (value node and pair); problems for a non-map, a repeated key or a key not in `allowed`. */
/**
 * Fields a migration experiment does not have but a reader may expect from other files, and what
 * to say instead of "is not a field here": `hosts`, which a chaos experiment and `up --hosts` take.
 */
const NOT_MIGRATION_FIELDS: Readonly<Record<string, string>> = {
  hosts: 'is not a field of a migration experiment: it moves a VM between the two hosts named by from and to (default h1 and h2; cluster: new brings up just those two); a number of hosts is for kind: faults',
};

function fieldsOf(ctx: Ctx, node: Node | null | undefined, field: string, allowed: readonly string[], notHere: Readonly<Record<string, string>> = {}): Map<string, { v: Node | null; p: Pair }> {
  const out = new Map<string, { v: Node | null; p: Pair }>();
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
    else if (!allowed.includes(key)) problem(ctx, k, path, Object.hasOwn(notHere, key) ? notHere[key]! : `is not a field here (fields: ${allowed.join(', ')})`);
    else out.set(key, { v: (pair.value as Node | null) ?? null, p: pair as Pair });
  }
  return out;
}


/** The node to point at for a field: its value, else its key. */
const at = (f: { v: Node | null; p: Pair }): Node | Pair => f.v ?? f.p;

function wholeNumber(ctx: Ctx, f: { v: Node | null; p: Pair }, field: string, min: number, max: number): number | null {
  const v = scalar(f.v);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    problem(ctx, at(f), field, `must be a whole number from ${min} to ${max}, not ${shown(f.v)}`);
    return null;
  }
  return v;
}

function name(ctx: Ctx, f: { v: Node | null; p: Pair }, field: string, re: RegExp, rule: string): string | null {
  const v = scalar(f.v);
  if (typeof v !== 'string' || !re.test(v)) {
    problem(ctx, at(f), field, `${f.v === null || v === null ? 'is empty' : `${shown(f.v)} is not valid`}: ${rule}`);
    return null;
  }
  return v;
}

/** A size (64M, 2G, or bytes) that is a multiple of `align` from min to max. */
function size(ctx: Ctx, f: { v: Node | null; p: Pair }, field: string, min: number, max: number, align: number): number | null {
  const v = scalar(f.v);
  const bytes = typeof v === 'number' ? (Number.isSafeInteger(v) ? v : null) : typeof v === 'string' ? parseSize(v) : null;
  if (bytes === null) {
    problem(ctx, at(f), field, `must be a size such as 64M or 2G, not ${shown(f.v)}`);
    return null;
  }
  if (bytes % align !== 0 || bytes < min || bytes > max) {
    problem(ctx, at(f), field, `must be ${align > 1 ? `a multiple of ${formatBytes(align)} ` : ''}from ${formatBytes(min)} to ${formatBytes(max)}, not ${shown(f.v)}`);
    return null;
  }
  return bytes;
}

/** A quantity parsed by `parse` (a duration, rate, percentage) within [min, max] (above min when `minOpen`). */
function quantity(ctx: Ctx, f: { v: Node | null; p: Pair }, field: string, parse: (t: string | number) => number | null, what: string, min: number, max: number, unit: string, minOpen = false): number | null {
  const v = scalar(f.v);
  const n = typeof v === 'string' || typeof v === 'number' ? parse(v) : null;
  if (n === null) {
    problem(ctx, at(f), field, `must be ${what}, not ${shown(f.v)}${parse === parseDuration ? durationHint(v) : ''}`);
    return null;
  }
  if ((minOpen ? n <= min : n < min) || n > max) {
    problem(ctx, at(f), field, `${shown(f.v)} is out of range: ${minOpen ? 'above' : 'at least'} ${min}${unit} and at most ${max}${unit}`);
    return null;
  }
  return n;
}

/** A move's bandwidth: bytes per second (a size: 100M, or a number), or a rate in bits (800mbit); 0 is unlimited. */
export function parseBandwidth(t: string | number): number | null {
  if (typeof t === 'number') return Number.isFinite(t) ? t : null;
  if (/bit\s*$/i.test(t)) {
    const bits = parseRate(t);
    return bits === null ? null : Math.round(bits / 8);
  }
  return parseSize(t);
}

const TOP_FIELDS = ['name', 'kind', 'seed', 'cluster', 'from', 'to', 'lps', 'vm', 'link', 'methods', 'options', 'repetitions', 'warmup', 'probe', 'moveTimeout'] as const;
const VM_FIELDS = ['memory', 'vps', 'workload'] as const;
const LINK_FIELDS = ['rate', 'delay', 'jitter', 'loss'] as const;
const OPTION_FIELDS = ['downtimeLimit', 'maxPasses', 'bandwidth'] as const;
const HOST_RULE = 'a host name is 1-10 lower-case letters, digits or "-", starting with a letter';

/**
 * Decodes and checks an experiment file's text (YAML, or JSON, which is YAML too); `file` names it
 * in problems. Throws ExperimentError with every problem found; never anything else.
 */
export function parseExperiment(text: string, file = 'experiment'): ExperimentSpec {
  const read = readYamlMap(text, MAX_EXPERIMENT_BYTES, { tooBig: `an experiment file is text of at most ${MAX_EXPERIMENT_BYTES} bytes`, notMap: 'an experiment is a map with name, kind, methods, …' });
  if (Array.isArray(read)) throw new ExperimentError(file, read);
  const { ctx, root } = read;

  // The kind decides which fields belong, so a kind this runner does not know is the only problem named.
  let kind: ExperimentKind = 'migration';
  const kindPair = (root as YAMLMap).items.find((p) => isScalar(p.key) && p.key.value === 'kind');
  if (kindPair) {
    const k = scalar((kindPair.value as Node | null) ?? null);
    if (!EXPERIMENT_KINDS.includes(k as ExperimentKind)) {
      const other = typeof k === 'string' ? OTHER_RUNNERS[k] : undefined;
      const message = other
        ? `kind "${k}" is run by ${other} ("hvlab experiment run" sends it there); this parser reads ${EXPERIMENT_KINDS.join(', ')} experiments`
        : `${shown((kindPair.value as Node | null) ?? null)} is not a kind of experiment: use ${[...EXPERIMENT_KINDS, ...Object.keys(OTHER_RUNNERS)].join(' or ')}`;
      throw new ExperimentError(file, [{ ...where(ctx, (kindPair.value as Node | null) ?? (kindPair as Pair)), field: 'kind', message }]);
    }
    kind = k as ExperimentKind;
  }
  const top = fieldsOf(ctx, root, '', TOP_FIELDS, NOT_MIGRATION_FIELDS);
  const spec: ExperimentSpec = {
    file, source: text, sourceSha256: sourceSha256(text), name: '', kind, seed: EXPERIMENT_DEFAULTS.seed, cluster: EXPERIMENT_DEFAULTS.cluster, from: EXPERIMENT_DEFAULTS.from, to: EXPERIMENT_DEFAULTS.to,
    lps: null, vm: { memoryBytes: parseSize(DEFAULT_VM.memory)!, vps: DEFAULT_VM.vps, workload: DEFAULT_VM.workload }, link: null, methods: [], options: {},
    repetitions: EXPERIMENT_DEFAULTS.repetitions, warmupMs: EXPERIMENT_DEFAULTS.warmupMs, probeBytes: null, moveTimeoutMs: EXPERIMENT_DEFAULTS.moveTimeoutMs,
  };

  const n = top.get('name');
  if (!n) problem(ctx, root, 'name', 'is missing: every experiment has a name (it names the report and the VMs)');
  else spec.name = name(ctx, n, 'name', CLUSTER_NAME_RE, 'use 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit') ?? '';

  const seed = top.get('seed');
  if (seed) spec.seed = seedValue(ctx, seed.v, at(seed), 'seed') ?? spec.seed;

  const cl = top.get('cluster');
  if (cl) {
    const v = scalar(cl.v);
    if (v !== 'new' && v !== 'existing') problem(ctx, at(cl), 'cluster', `must be new (bring up two hosts for the run) or existing (the cluster up in HVLAB_HOME), not ${shown(cl.v)}`);
    else spec.cluster = v;
  }

  for (const end of ['from', 'to'] as const) {
    const f = top.get(end);
    if (f) spec[end] = name(ctx, f, end, CLUSTER_HOST_RE, HOST_RULE) ?? spec[end];
  }
  if (spec.from === spec.to) problem(ctx, top.get('to') ? at(top.get('to')!) : root, 'to', `moves go from one host to another: from and to are both ${spec.from}`);

  // VM.
  const vm = fieldsOf(ctx, top.get('vm')?.v, 'vm', VM_FIELDS);
  const mem = vm.get('memory');
  if (mem) spec.vm.memoryBytes = size(ctx, mem, 'vm.memory', MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, 4096) ?? spec.vm.memoryBytes;
  const vps = vm.get('vps');
  if (vps) spec.vm.vps = wholeNumber(ctx, vps, 'vm.vps', 1, MAX_VPS_PER_PARTITION) ?? spec.vm.vps;
  const wl = vm.get('workload');
  if (wl) {
    const w = scalar(wl.v);
    if (typeof w !== 'string') problem(ctx, at(wl), 'vm.workload', `must be a workload such as idle, counter, spin or memdirty:32M, not ${shown(wl.v)}`);
    else spec.vm.workload = w;
  }
  const fit = workloadFitError(spec.vm.workload, spec.vm.memoryBytes);
  if (fit) problem(ctx, wl ? at(wl) : mem ? at(mem) : top.get('vm') ? at(top.get('vm')!) : root, 'vm.workload', fit);

  const lps = top.get('lps');
  if (lps) {
    if (spec.cluster === 'existing') problem(ctx, lps.p, 'lps', 'is for cluster: new; the hosts of an existing cluster keep their own');
    else spec.lps = wholeNumber(ctx, lps, 'lps', 1, MAX_LPS);
  }
  if (spec.cluster === 'new' && spec.lps === null) spec.lps = Math.min(MAX_LPS, Math.max(2, spec.vm.vps));

  // The link's impairments during the run.
  const link = top.get('link');
  if (link) {
    spec.link = {};
    for (const [k, f] of fieldsOf(ctx, link.v, 'link', LINK_FIELDS)) {
      const field = `link.${k}`;
      if (k === 'delay' || k === 'jitter') {
        const ms = quantity(ctx, f, field, parseDuration, 'a duration such as 20ms', 0, LINK_MAX_DELAY_MS, 'ms');
        if (ms !== null) spec.link[k === 'delay' ? 'delayMs' : 'jitterMs'] = ms;
      } else if (k === 'rate') {
        // The fabric's range (link set and its saved state take 1 bit/s to LINK_MAX_RATE_BPS).
        const bps = quantity(ctx, f, field, parseRate, 'a rate such as 100mbit', 1, LINK_MAX_RATE_BPS, ' bit/s');
        if (bps !== null) spec.link.rateBps = bps;
      } else {
        const pct = quantity(ctx, f, field, parseLoss, 'a percentage such as 0.1%', 0, 100, '%');
        if (pct !== null) spec.link.lossPercent = pct;
      }
    }
  }

  // Options of every move.
  for (const [k, f] of fieldsOf(ctx, top.get('options')?.v, 'options', OPTION_FIELDS)) {
    const field = `options.${k}`;
    if (k === 'downtimeLimit') {
      const ms = quantity(ctx, f, field, parseDuration, 'a duration such as 300ms', 0, 3_600_000, 'ms', true);
      if (ms !== null) spec.options.downtimeLimitMs = Math.max(1, Math.round(ms));
    } else if (k === 'maxPasses') {
      const p = wholeNumber(ctx, f, field, 1, 1000);
      if (p !== null) spec.options.maxPasses = p;
    } else {
      // 0 (unlimited), or at least the floor a move takes (MIGRATION_MIN_BANDWIDTH_BPS, 64 KiB/s).
      const fit = (t: string | number): number | null => {
        const n = parseBandwidth(t);
        return n === null || (n > 0 && n < MIGRATION_MIN_BANDWIDTH_BPS) ? null : n;
      };
      const b = quantity(ctx, f, field, fit, 'bytes per second from 64K such as 100M, a rate such as 800mbit, or 0 (unlimited)', 0, 1e12, ' bytes/s');
      if (b !== null) spec.options.bandwidthBps = Math.round(b);
    }
  }

  // Methods: each must also make valid options together with the file's.
  const methods = top.get('methods');
  if (!methods) problem(ctx, root, 'methods', `is missing: name the methods to compare, e.g. [offline, precopy] (methods: ${METHOD_BASES.join(', ')}, with ${METHOD_MODIFIERS.map((m) => `+${m}`).join(', ')})`);
  else if (!methods.v || !isSeq(methods.v) || methods.v.items.length === 0) problem(ctx, at(methods), 'methods', `must be a list of at least one method, e.g. [offline, precopy], not ${methods.v && isSeq(methods.v) ? 'an empty list' : shown(methods.v)}`);
  else {
    methods.v.items.forEach((item, i) => {
      const field = `methods[${i}]`;
      const v = scalar(item as Node);
      if (typeof v !== 'string') {
        problem(ctx, item as Node, field, `must be a method such as precopy or precopy+compress, not ${shown(item as Node)}`);
        return;
      }
      const m = parseMethod(v);
      if (typeof m === 'string') return problem(ctx, item as Node, field, m);
      if (spec.methods.includes(m.method)) return problem(ctx, item as Node, field, `${m.method} is listed twice`);
      const opts = decodeMigrationOptions({ ...spec.options, ...m.options });
      if (typeof opts === 'string') return problem(ctx, item as Node, field, `${m.method}: ${opts}`);
      spec.methods.push(m.method);
    });
  }

  const reps = top.get('repetitions');
  if (reps) spec.repetitions = wholeNumber(ctx, reps, 'repetitions', 1, 1000) ?? spec.repetitions;
  const warm = top.get('warmup');
  if (warm) spec.warmupMs = quantity(ctx, warm, 'warmup', parseDuration, 'a duration such as 1s', 0, 3_600_000, 'ms') ?? spec.warmupMs;
  const probe = top.get('probe');
  if (probe) {
    const v = scalar(probe.v);
    spec.probeBytes = v === 0 || v === '0' ? 0 : size(ctx, probe, 'probe', 64 * 1024, LINK_PROBE_MAX_BYTES, 1);
  }
  const mt = top.get('moveTimeout');
  if (mt) spec.moveTimeoutMs = quantity(ctx, mt, 'moveTimeout', parseDuration, 'a duration such as 600s', 1000, 86_400_000, 'ms') ?? spec.moveTimeoutMs;

  if (ctx.problems.length > 0) {
    ctx.problems.sort((a, b) => a.line - b.line || a.column - b.column);
    throw new ExperimentError(file, ctx.problems);
  }
  return spec;
}

/** Reads and checks an experiment file: its spec, or an ExperimentError (unreadable, too large, or invalid). */
export function loadExperiment(file: string): ExperimentSpec | ExperimentError {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(file, MAX_EXPERIMENT_BYTES);
  } catch (e) {
    if (e instanceof FileShapeError) return new ExperimentError(file, [{ line: 0, column: 0, field: '', message: `${e.message}: not an experiment file` }]);
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (e as Error).message;
    return new ExperimentError(file, [{ line: 0, column: 0, field: '', message: `cannot read the experiment file: ${why}` }]);
  }
  // Not UTF-8: refused (its text would not be its bytes), with the first bad sequence's place.
  const text = fileText(bytes);
  if (typeof text !== 'string') return new ExperimentError(file, [text]);
  try {
    // The hash of the bytes read, as sha256sum says it (their text is the same bytes, a BOM too).
    return { ...parseExperiment(text, file), sourceSha256: sourceSha256(bytes) };
  } catch (e) {
    if (e instanceof ExperimentError) return e;
    throw e;
  }
}

// ---- runs ---------------------------------------------------------------------------------------

/**
 * How a run ended: the move's own end (completed, failed, cancelled); refused, when the host
 * answered vmMove with an error before moving anything; error, when something else went wrong
 * (the VM did not start, a host went away, the move did not end in time).
 */
export type RunStatus = 'completed' | 'failed' | 'cancelled' | 'refused' | 'error';

/**
 * A move's statistics as a run records them: those the host returned, except that a move that did
 * not complete has no downtime (null). The host's `downtime` of such a move is the 0 it started
 * from: a cancelled stop-and-copy move, frozen from its start until the cancel, was recorded with
 * a downtime of 0 ms, in results.json and results.csv alike.
 */
export type RunStats = Omit<MigrationStats, 'downtime' | 'downtime-acked'> & { downtime: number | null; 'downtime-acked'?: number | null };

/** The statistics `runMoves` records of a move that ended with `st` (a fresh object; `st` is left as it is). */
export function runStats(st: MigrationStats): RunStats {
  return st.status === 'completed' ? { ...st, downtime: st.downtime ?? null } : { ...st, downtime: null, 'downtime-acked': null };
}

export interface ExperimentRun {
  method: string;
  /** 1-based. */
  repetition: number;
  vm: string;
  status: RunStatus;
  /** Why it did not complete (the move's error-desc, or the host's answer), else null. */
  error: string | null;
  /**
   * What else the run did to its move, when there is something: a cancel asked once the move had
   * not ended within moveTimeout, too late (the destination had its commit, and it completed).
   */
  note?: string;
  /** The host's error code of a refusal or error, when there was one. */
  errorCode: string | null;
  /** The arguments of vmMove. */
  request: Record<string, unknown>;
  /** The move's statistics as vmMove returned them, its downtime null unless it completed (runStats); null: refused, or it never ran. */
  stats: RunStats | null;
  startedAt: string;
  /** The host the VM was found on when it was deleted (null: not found). */
  endedOn: string | null;
  /** Why the VM could not be deleted after the run (null: it was, or it was never made). */
  cleanupError: string | null;
}

/** A refusal that says the method cannot be done here (as opposed to this VM not being movable now). */
const UNSUPPORTED_CODES = new Set(['InvalidArgument', 'NotSupported', 'NotImplemented']);
/** Codes MgmtClient makes itself: no answer from the host, so not a refusal. */
const CLIENT_CODES = new Set(['Timeout', 'HostGone', 'SocketFailed', 'Closed', 'BadAnswer']);

export class MoveRefused extends Error {
  override name = 'MoveRefused';
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/**
 * What the runner needs of two hosts; `clusterDriver` is the real one, tests give a fake. Each
 * method throws on failure; `move` throws MoveRefused when the host refused the move.
 */
/** A move's end with what its statistics do not say: a cancel after moveTimeout that came too late. */
export interface NotedMove {
  stats: MigrationStats;
  note: string;
}

export interface ExperimentDriver {
  /** Makes VM `name` on the source host (spec.vm) and starts it. */
  /** `id`: the VM's id (vmNew `id`), when the caller chose it; a new random one when absent. */
  createVm(name: string, id?: string): Promise<void>;
  /**
   * Moves it with these vmMove arguments and returns its statistics, whatever its end, or them with
   * a note of what the driver did to the move that they do not say (NotedMove).
   */
  move(args: Record<string, unknown>): Promise<MigrationStats | NotedMove>;
  /** Turns VM `name` off and deletes it wherever it is; returns the host it was on (null: none). */
  removeVm(name: string): Promise<string | null>;
  /**
   * Waits, before every run but the first, until the link carries nothing of the run before (a
   * failed move's stream still draining at the link's rate took the next run's set-up from 0.2 to
   * 1.6 s); returns a line to say, or null when there was nothing to wait for.
   */
  quiet?(): Promise<string | null>;
}

export interface RunOptions {
  progress?: (line: string) => void;
  /** Stops before the next run once aborted. */
  signal?: AbortSignal;
  /** Waits between the start and the move (tests make it instant). */
  sleep?: (ms: number) => Promise<void>;
  /** Sets the VMs' names apart from other runs of the same experiment (default: 4 random hex digits). */
  tag?: string;
  /** Told after each run, with every run so far (the runner writes the report so far: a run killed keeps them). */
  onRun?: (runs: readonly ExperimentRun[]) => void;
}

/** The longest wait for the link to carry nothing of the run before (a 1 Mbit/s link drains its 1 MiB queue each way in ~17 s). */
const LINK_QUIET_MAX_MS = 120_000;

/** Waits `ms`, or less: until the signal is aborted. */
const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((r) => {
  if (signal?.aborted) return r();
  const done = (): void => {
    clearTimeout(t);
    signal?.removeEventListener('abort', done);
    r();
  };
  const t = setTimeout(done, ms);
  signal?.addEventListener('abort', done, { once: true });
});
const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The name of the VM of one run: `<name>-<method>-r<rep>-<tag>`, within a VM name's 63 characters. */
export function runVmName(experiment: string, method: string, repetition: number, tag: string): string {
  const tail = `${method.replace(/\+/g, '-')}-r${repetition}-${tag}`;
  return `${experiment.slice(0, Math.max(1, 62 - tail.length))}-${tail}`;
}

/**
 * A move's passes as "vm move" says them: a pre-copy's list ends with the blackout's, so a move of
 * maxPasses 6 lists 7 (said "7 passes", it read as one past the limit).
 */
function passesText(s: Pick<RunStats, 'method' | 'passes'>): string {
  const n = s.passes.length;
  if (s.method === 'precopy' && n >= 2) return `${n - 1} pre-copy pass${n - 1 === 1 ? '' : 'es'} and the blackout's`;
  return `${n} pass${n === 1 ? '' : 'es'}`;
}

/** One line of progress for a finished run. */
export function runLine(r: ExperimentRun, repetitions: number): string {
  const head = `${r.method} ${r.repetition}/${repetitions}`;
  const s = r.stats;
  if (r.status === 'completed' && s) {
    return `${head}: completed in ${s['total-time']} ms, downtime ${s.downtime === null ? 'not measured' : `${s.downtime} ms`}, ${passesText(s)}, ${formatBinaryBytes(s.ram.transferred)} sent${r.note ? ` (${r.note})` : ''}`;
  }
  return `${head}: ${r.status}${r.error ? `: ${r.error}` : ''}`;
}

/**
 * Every method × repetition on `driver`, one after another; each run's VM is deleted before the
 * next starts, even when the run failed. A refusal that says the method is unsupported skips its
 * other repetitions. Never throws for a run's failure.
 */
export async function runMoves(spec: ExperimentSpec, driver: ExperimentDriver, opts: RunOptions = {}): Promise<ExperimentRun[]> {
  const say = opts.progress ?? (() => {});
  const wait = opts.sleep ?? ((ms: number) => sleep(ms, opts.signal));
  const tag = opts.tag ?? Math.floor(Math.random() * 0x10000).toString(16).padStart(4, '0');
  const runs: ExperimentRun[] = [];
  for (const method of spec.methods) {
    for (let rep = 1; rep <= spec.repetitions; rep++) {
      if (opts.signal?.aborted) return runs;
      const vm = runVmName(spec.name, method, rep, tag);
      const request = moveArguments(spec, method, vm);
      const run: ExperimentRun = { method, repetition: rep, vm, status: 'error', error: null, errorCode: null, request, stats: null, startedAt: new Date().toISOString(), endedOn: null, cleanupError: null };
      /** Stopped before its move (during the VM's start or its warm-up): recorded as cancelled, and the last run. */
      let notMoved = false;
      try {
        if (runs.length > 0 && driver.quiet) {
          const said = await driver.quiet();
          if (said !== null) say(said);
        }
        await driver.createVm(vm);
        await wait(spec.warmupMs);
        // The move's cancel listens for the abort: one that came before the move would not stop it,
        // and a Ctrl-C during a warm-up let a whole move run (up to moveTimeout).
        if (opts.signal?.aborted) {
          notMoved = true;
          run.status = 'cancelled';
          run.error = 'stopped before its move';
        } else try {
          const end = await driver.move(request);
          const st = 'stats' in end ? end.stats : end;
          if ('stats' in end) run.note = end.note;
          run.stats = runStats(st);
          run.status = st.status === 'completed' ? 'completed' : st.status === 'cancelled' ? 'cancelled' : 'failed';
          if (run.status !== 'completed') run.error = st['error-desc'] ?? `the move ended ${st.status}`;
        } catch (e) {
          if (!(e instanceof MoveRefused)) throw e;
          run.status = 'refused';
          run.errorCode = e.code;
          run.error = e.message;
        }
      } catch (e) {
        run.status = 'error';
        run.errorCode = e instanceof MgmtCallError ? e.code : null;
        run.error = message(e);
      } finally {
        try {
          run.endedOn = await driver.removeVm(vm);
        } catch (e) {
          run.cleanupError = message(e);
          say(`${vm}: could not be deleted: ${run.cleanupError}`);
        }
      }
      runs.push(run);
      opts.onRun?.(runs);
      if (notMoved) {
        say(runLine(run, spec.repetitions));
        return runs;
      }
      say(runLine(run, spec.repetitions));
      if (run.status === 'refused' && UNSUPPORTED_CODES.has(run.errorCode ?? '')) {
        if (rep < spec.repetitions) say(`${method}: refused as unsupported; its other ${spec.repetitions - rep} repetition${spec.repetitions - rep === 1 ? '' : 's'} skipped`);
        break;
      }
    }
  }
  return runs;
}

/** Whether the signal stopped the run before its end (the rule of runExperiment's `aborted`). */
export function stoppedEarly(spec: Pick<ExperimentSpec, 'methods' | 'repetitions'>, runs: readonly ExperimentRun[], signal: AbortSignal | undefined): boolean {
  if (signal?.aborted !== true) return false;
  // Runs left out, or the one in flight cancelled by it (the last run's too: it used to count as a whole run).
  return runs.length < spec.methods.length * spec.repetitions || runs.at(-1)?.status === 'cancelled';
}

// ---- the summary --------------------------------------------------------------------------------

/** Nearest-rank percentile (q in 0..1) of a sample, as the benchmarks compute it. */
export function percentile(sample: readonly number[], q: number): number {
  const s = [...sample].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

/**
 * The median: the middle value, or the mean of the middle two of an even number. Not the
 * nearest-rank p50, which for an even number is the lower of the two (of two runs, the faster):
 * the plots call it the median, and experiments often repeat a move 2 or 4 times.
 */
export function median(sample: readonly number[]): number {
  const s = [...sample].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export interface Spread {
  /** The median (median()). */
  p50: number;
  /** Nearest-rank: the largest value below 100 samples. */
  p99: number;
  mean: number;
  min: number;
  max: number;
}

function spread(xs: number[]): Spread | null {
  if (xs.length === 0) return null;
  const r = (x: number): number => Number(x.toFixed(3));
  return { p50: r(median(xs)), p99: r(percentile(xs, 0.99)), mean: r(xs.reduce((a, b) => a + b, 0) / xs.length), min: r(Math.min(...xs)), max: r(Math.max(...xs)) };
}

/** One method's runs: counts, and spreads over its completed runs. */
export interface MethodSummary {
  method: string;
  runs: number;
  completed: number;
  /** Runs that did not complete, whatever the reason (refused ones too). */
  failed: number;
  refused: number;
  /** Every run was refused as unsupported (e.g. post-copy before it was built). */
  unsupported: boolean;
  totalMs: Spread | null;
  setupMs: Spread | null;
  downtimeMs: Spread | null;
  transferredBytes: Spread | null;
  passes: Spread | null;
  /** Median total time ÷ the model (RAM ÷ measured bandwidth); null without a bandwidth. */
  totalVsModel: number | null;
  /** The distinct reasons runs did not complete. */
  errors: string[];
}

export function summarize(methods: readonly string[], runs: readonly ExperimentRun[], bandwidthBytesPerSecond: number | null): MethodSummary[] {
  return methods.map((method) => {
    const mine = runs.filter((r) => r.method === method);
    const done = mine.filter((r) => r.status === 'completed' && r.stats).map((r) => r.stats!);
    const refused = mine.filter((r) => r.status === 'refused');
    const total = spread(done.map((s) => s['total-time']));
    const ram = done[0]?.ram.total ?? 0;
    const modelMs = bandwidthBytesPerSecond && ram ? (ram / bandwidthBytesPerSecond) * 1000 : null;
    return {
      method, runs: mine.length, completed: done.length, failed: mine.length - done.length, refused: refused.length,
      unsupported: mine.length > 0 && refused.length === mine.length && refused.every((r) => UNSUPPORTED_CODES.has(r.errorCode ?? '')),
      totalMs: total,
      setupMs: spread(done.map((s) => s['setup-time'])),
      downtimeMs: spread(done.flatMap((s) => (s.downtime === null ? [] : [s.downtime]))),
      transferredBytes: spread(done.map((s) => s.ram.transferred)),
      passes: spread(done.map((s) => s.passes.length)),
      totalVsModel: total && modelMs ? Number((total.p50 / modelMs).toFixed(3)) : null,
      errors: [...new Set(mine.filter((r) => r.status !== 'completed').map((r) => r.error ?? r.status))],
    };
  });
}

// ---- the report ---------------------------------------------------------------------------------

export const EXPERIMENT_REPORT_VERSION = 1;

export interface ExperimentReport {
  version: number;
  name: string;
  kind: ExperimentKind;
  seed: number;
  spec: ExperimentSpec;
  /** SHA-256 of the file's bytes as they were read (spec.sourceSha256; `sha256sum FILE`): which version of the file this is. */
  sourceSha256: string;
  /** The hvlab (version, commit) and the machine (its load at the start and the end) that ran it. */
  environment: RunEnvironment;
  startedAt: string;
  endedAt: string;
  /** The directory the report was written to. */
  out: string;
  cluster: {
    mode: 'new' | 'existing';
    /** The HVLAB_HOME it ran in (a temporary one is gone by now). */
    home: string;
    network: 'namespaces' | 'loopback' | null;
    hosts: Array<{ name: string; hostId: string | null }>;
  };
  link: {
    from: string;
    to: string;
    /** What was set for the run (null: left as it was), and its seed. */
    impairments: LinkImpairments | null;
    /**
     * The link as the run found it (the fabric's impairments and seed), so a run that leaves it as
     * it was still says what it ran over; null: not read (no such link, or the fabric did not answer).
     */
    found: { impairments: LinkImpairments; seed: number } | null;
    /** The bulk transfer from → to through the link, and its rate in bytes per second. */
    probe: LinkProbeResult | null;
    probeError: string | null;
    bandwidthBytesPerSecond: number | null;
    /** The model of a move: the VM's memory ÷ that bandwidth. */
    modelMs: number | null;
  };
  runs: ExperimentRun[];
  summary: MethodSummary[];
  /** Stopped before every run was made (the signal was aborted). */
  aborted: boolean;
  /** What the cleanup could not do (each a sentence); empty when everything made was removed. */
  cleanup: string[];
  /** The files written, relative to `out`. */
  files: string[];
}

export const REPORT_FILES = ['results.json', 'results.csv', 'results.md', 'total-time.svg', 'downtime.svg', 'transferred.svg', 'dirty-set.svg'] as const;

export const CSV_COLUMNS = [
  'method', 'repetition', 'status', 'total_ms', 'setup_ms', 'downtime_ms', 'downtime_acked_ms', 'transferred_bytes', 'ram_bytes', 'passes', 'zero_pages', 'normal_pages', 'compression_ratio', 'throttle_pct', 'error',
] as const;

/** A CSV field (RFC 4180): quoted when it holds a comma, quote or line break. */
function csvField(v: string | number | null | undefined): string {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function resultsCsv(report: Pick<ExperimentReport, 'runs'>): string {
  const rows = report.runs.map((r) => {
    const s = r.stats;
    return [
      r.method, r.repetition, r.status, s?.['total-time'], s?.['setup-time'], s?.downtime, s?.['downtime-acked'], s?.ram.transferred, s?.ram.total, s?.passes.length, s?.ram.duplicate, s?.ram.normal,
      // Raw ÷ sent means something only when pages were compressed (zero pages and headers move it otherwise), as move-status shows it.
      s?.options?.compress ? s['compression-ratio'] : null, s?.['throttle-percentage'], r.error,
    ].map(csvField).join(',');
  });
  return `${[CSV_COLUMNS.join(','), ...rows].join('\r\n')}\r\n`;
}

/**
 * A Markdown text or table cell: pipes and angle brackets escaped, line breaks flattened. A host's
 * error such as "no <vm> here" lost its "<vm>" when rendered (read as an HTML tag), as the chaos
 * report's cells (@hvlab/faults report.ts) were escaped already.
 */
const md = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/[\r\n]+/g, ' ');
const ms = (v: number | undefined): string => (v === undefined ? '—' : `${Number(v.toFixed(1))} ms`);

export function resultsMarkdown(report: ExperimentReport): string {
  const s = report.spec;
  const opts = [
    s.options.downtimeLimitMs !== undefined ? `downtime limit ${s.options.downtimeLimitMs} ms` : '',
    s.options.maxPasses !== undefined ? `at most ${s.options.maxPasses} passes` : '',
    s.options.bandwidthBps !== undefined ? `bandwidth ${s.options.bandwidthBps === 0 ? 'unlimited' : `${formatBinaryBytes(s.options.bandwidthBps)}/s`}` : '',
  ].filter(Boolean).join(', ');
  const l = report.link;
  const lines = [
    `# Experiment ${md(report.name)}`,
    '',
    `kind ${report.kind}, seed ${report.seed}, ${s.repetitions} repetition${s.repetitions === 1 ? '' : 's'} of ${s.methods.length} method${s.methods.length === 1 ? '' : 's'}; ${report.startedAt} to ${report.endedAt || '—'}${report.aborted ? ' (**stopped early**)' : ''}`,
    '',
    ...(report.endedAt === '' ? [`**Unfinished**: the report as it stood after ${report.runs.length} of ${s.repetitions * s.methods.length} runs. The run was still going, was killed before its end, or could not write its final report here (it said where it wrote it).`, ''] : []),
    `- cluster: ${report.cluster.mode}${report.cluster.network ? ` (${report.cluster.network})` : ''}, moves from ${s.from} to ${s.to}`,
    `- VM: ${formatBytes(s.vm.memoryBytes)}, ${s.vm.vps} VP${s.vm.vps === 1 ? '' : 's'}, workload ${md(s.vm.workload)}; warm-up ${s.warmupMs} ms`,
    `- link ${s.from} – ${s.to}: ${l.impairments !== null ? `${impairmentsText(l.impairments) || 'unimpaired'} (seed ${report.seed})`
      : l.found ? `as it was: ${impairmentsText(l.found.impairments) || 'unimpaired'} (seed ${l.found.seed})` : 'as it was (not read)'}`,
    `- measured bandwidth ${s.from} → ${s.to}: ${l.bandwidthBytesPerSecond === null ? `none${l.probeError ? ` (${md(l.probeError)})` : ''}` : `${(l.bandwidthBytesPerSecond / 1e6).toFixed(1)} MB/s`}`
      + `${l.probe && l.probe.rttMs.length > 0 ? `, round trip p50 ${percentile(l.probe.rttMs, 0.5).toFixed(2)} ms` : ''}`,
    `- model (RAM ÷ bandwidth): ${l.modelMs === null ? '—' : ms(l.modelMs)}`,
    `- options of every move: ${opts || 'the defaults'}`,
    `- ran on: ${md(environmentText(report.environment))}`,
    `- file: ${md(s.file)}, sha256 ${report.sourceSha256} (its text is in results.json, spec.source)`,
    '',
    '## Results per method',
    '',
    'Over the completed runs: p50 is the median (of an even number of runs, the mean of the middle two), p99 the nearest rank (the largest of fewer than 100 runs); bytes sent are the median.',
    '',
    '| method | runs | p50 total | p50 downtime | p99 downtime | bytes sent | passes (p50, the blackout\'s too) | total ÷ model | failed |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const m of report.summary) {
    const failed = m.unsupported ? `${m.failed} (unsupported)` : m.refused > 0 ? `${m.failed} (${m.refused} refused)` : String(m.failed);
    lines.push(`| ${md(m.method)} | ${m.runs} | ${ms(m.totalMs?.p50)} | ${ms(m.downtimeMs?.p50)} | ${ms(m.downtimeMs?.p99)} | ${m.transferredBytes ? formatBinaryBytes(m.transferredBytes.p50) : '—'} | ${m.passes ? m.passes.p50 : '—'} | ${m.totalVsModel ?? '—'} | ${failed} |`);
  }
  const bad = report.runs.filter((r) => r.status !== 'completed');
  if (bad.length > 0) {
    lines.push('', '## Runs that did not complete', '', '| method | repetition | status | why |', '|---|---:|---|---|');
    for (const r of bad) lines.push(`| ${md(r.method)} | ${r.repetition} | ${r.status}${r.errorCode ? ` (${md(r.errorCode)})` : ''} | ${md(r.error ?? '')} |`);
  }
  const noted = report.runs.filter((r) => r.note);
  if (noted.length > 0) {
    lines.push('', '## Notes', '', '| method | repetition | status | note |', '|---|---:|---|---|');
    for (const r of noted) lines.push(`| ${md(r.method)} | ${r.repetition} | ${r.status} | ${md(r.note!)} |`);
  }
  if (report.cleanup.length > 0) lines.push('', '## Left behind', '', ...report.cleanup.map((c) => `- ${md(c)}`));
  lines.push(
    '', '## Plots', '',
    '![Total time per method](total-time.svg)', '',
    '![Downtime per method](downtime.svg)', '',
    '![Bytes sent per method](transferred.svg)', '',
    '![Dirty set per pass](dirty-set.svg)', '',
    'Every run\'s full statistics are in [results.json](results.json), one row per run in [results.csv](results.csv).',
  );
  return `${lines.join('\n')}\n`;
}

/**
 * The table `hvlab experiment run` prints at its end: a row per method, in the units of the
 * report's Markdown (bytes sent in KiB/MiB, as the progress lines and results.md say them; it
 * printed "192516B" next to a results.md saying "188 KiB").
 */
export function experimentSummaryRows(report: Pick<ExperimentReport, 'summary'>): string[][] {
  const ms = (v: number | undefined): string => (v === undefined ? '-' : `${Math.round(v)}`);
  return [
    ['METHOD', 'RUNS', 'DONE', 'TOTAL P50 MS', 'DOWNTIME P50/P99 MS', 'SENT P50', 'TOTAL/MODEL'],
    ...report.summary.map((m) => [
      m.method, String(m.runs), m.unsupported ? 'unsupported' : String(m.completed), ms(m.totalMs?.p50), m.downtimeMs ? `${ms(m.downtimeMs.p50)}/${ms(m.downtimeMs.p99)}` : '-',
      m.transferredBytes ? formatBinaryBytes(m.transferredBytes.p50) : '-', m.totalVsModel === null ? '-' : m.totalVsModel.toFixed(2),
    ]),
  ];
}

const MiB = 1024 * 1024;

/** The bar of one method (values ÷ `unit`): median, whisker min–max, or a note why there is none. */
function methodBar(m: MethodSummary, pick: (m: MethodSummary) => Spread | null, unit = 1): Bar {
  const sp = pick(m);
  const note = m.unsupported ? 'unsupported' : m.runs === 0 ? 'not run' : 'all failed';
  return sp ? { label: m.method, value: sp.p50 / unit, min: sp.min / unit, max: sp.max / unit, sublabel: `n=${m.completed}${m.failed ? `, ${m.failed} failed` : ''}` } : { label: m.method, value: null, note, sublabel: `n=0 of ${m.runs}` };
}

/** The SVG plots of a report, by file name. */
export function experimentPlots(report: ExperimentReport): Record<'total-time.svg' | 'downtime.svg' | 'transferred.svg' | 'dirty-set.svg', string> {
  const legend = { bar: 'median (p50)', whisker: 'min – max' };
  const fmtMs = (v: number): string => `${formatNumber(v)} ms`;
  const title = (what: string): string => `${report.name}: ${what}`;
  // The dirty set: each method's first run with passes (a completed one when there is one).
  const series = report.summary.map((m) => {
    const mine = report.runs.filter((r) => r.method === m.method && r.stats && r.stats.passes.length > 0);
    const first = mine.find((r) => r.status === 'completed') ?? mine[0];
    return { label: first ? `${m.method} (repetition ${first.repetition}${first.status === 'completed' ? '' : `, ${first.status}`})` : m.method, points: (first?.stats?.passes ?? []).map((p): [number, number] => [p.at, p.dirtyPages]) };
  });
  return {
    'total-time.svg': barChartSvg({
      title: title('total time of a move'), yLabel: 'total time (ms)', format: fmtMs, legend,
      bars: report.summary.map((m) => methodBar(m, (x) => x.totalMs)),
      reference: report.link.modelMs ? { value: report.link.modelMs, label: 'model: RAM ÷ bandwidth' } : null,
    }),
    'downtime.svg': barChartSvg({
      title: title('downtime (blackout) of a move'), yLabel: 'downtime (ms)', format: fmtMs, legend,
      bars: report.summary.map((m) => methodBar(m, (x) => x.downtimeMs)),
    }),
    // In MiB, so the axis steps are round in the unit its labels use.
    'transferred.svg': barChartSvg({
      title: title('bytes sent per move'), yLabel: 'sent (MiB)', format: (v) => `${formatNumber(v)} MiB`, legend,
      bars: report.summary.map((m) => methodBar(m, (x) => x.transferredBytes, MiB)),
      reference: { value: report.spec.vm.memoryBytes / MiB, label: 'the VM\'s memory' },
    }),
    'dirty-set.svg': lineChartSvg({
      title: title('dirty set at the end of each pass'), xLabel: 'time since the move began (ms)', yLabel: 'dirty pages', series,
    }),
  };
}

/** The report of a run of `spec` that begins now: what it will fill in empty, what it knows already (the file, its hash, the environment) set. */
export function newReport(spec: ExperimentSpec, at: { out: string; home: string; started: Date }): ExperimentReport {
  return {
    version: EXPERIMENT_REPORT_VERSION, name: spec.name, kind: spec.kind, seed: spec.seed, spec, sourceSha256: spec.sourceSha256, environment: runEnvironment(),
    startedAt: at.started.toISOString(), endedAt: '', out: at.out,
    cluster: { mode: spec.cluster, home: at.home, network: null, hosts: [] },
    link: { from: spec.from, to: spec.to, impairments: spec.link, found: null, probe: null, probeError: null, bandwidthBytesPerSecond: null, modelMs: null },
    runs: [], summary: [], aborted: false, cleanup: [], files: [],
  };
}

/** Writes every file of the report into `dir` (made if missing); returns their names. */
export function writeReport(report: ExperimentReport, dir: string): string[] {
  makeDirs(dir);
  report.files = [...REPORT_FILES];
  const files: Array<[string, string]> = [
    ['results.json', `${JSON.stringify(report, null, 2)}\n`],
    ['results.csv', resultsCsv(report)],
    ['results.md', resultsMarkdown(report)],
    ...Object.entries(experimentPlots(report)),
  ];
  // Each file whole or not at all (a run killed while it writes its report so far leaves the last one).
  for (const [f, text] of files) writeFileAtomic(join(dir, f), text, { mode: 0o644, durable: false });
  return report.files;
}

// ---- the runner on a cluster --------------------------------------------------------------------

/** A management client of host `name` of the cluster up in `home` (this machine's or a joined one). */
async function hostClient(home: string, name: string): Promise<MgmtClient> {
  const t = await clusterHostTarget(home, name);
  if (t.kind === 'remote') return new MgmtClient(t.endpoint, { socket: t.socket });
  const rec = readHost(t.paths);
  if (!rec) throw new ClusterError(`host ${name} of the cluster is not up (no host record in ${t.paths.home})`);
  return new MgmtClient(pathsForRecord(t.paths, rec).mgmtEndpoint, { watch: rec });
}

/** States of a move that has not ended. */
const MOVE_UNDER_WAY = new Set(['queued', 'setup', 'active', 'postcopy-active']);
/** How long a cancelled move is waited for to end, for its statistics. */
const CANCELLED_MOVE_WAIT_MS = 30_000;

/**
 * The statistics of VM `name`'s move once it has ended (a cancel returns as soon as the worker
 * took it); null when the host does not say within CANCELLED_MOVE_WAIT_MS.
 */
async function endedMove(src: Pick<MgmtClient, 'request'>, name: string, waitMs = CANCELLED_MOVE_WAIT_MS, signal?: AbortSignal): Promise<MigrationStats | null> {
  const until = Date.now() + waitMs;
  for (;;) {
    const st = await src.request<MigrationStats>('vmMoveStatus', { name }, 10_000).catch(() => null);
    if (st !== null && !MOVE_UNDER_WAY.has(st.status)) return st;
    // A Ctrl-C meanwhile: the statistics so far are not waited for.
    if (Date.now() >= until || signal?.aborted === true) return null;
    await sleep(200);
  }
}

/** The driver of two hosts of a cluster: VMs made on `from`, moved to `to`, deleted wherever found. */
export function clusterDriver(spec: ExperimentSpec, hosts: Record<string, MgmtClient>, signal?: AbortSignal): ExperimentDriver {
  const src = hosts[spec.from]!;
  return {
    async createVm(name, id) {
      await src.request('vmNew', { name, memory: formatBytes(spec.vm.memoryBytes), vps: spec.vm.vps, workload: spec.vm.workload, ...(id === undefined ? {} : { id }) });
      await src.request('vmStart', { name }, 120_000);
    },
    async move(args) {
      const name = String(args.name);
      // An abort cancels the move in flight; the VM stays on the source.
      const cancel = (): void => void src.request('vmMoveCancel', { name }, 10_000).catch(() => undefined);
      signal?.addEventListener('abort', cancel, { once: true });
      try {
        return await src.request<MigrationStats>('vmMove', args, spec.moveTimeoutMs);
      } catch (e) {
        if (!(e instanceof MgmtCallError)) throw e;
        if (e.code === 'Timeout') {
          const late = `the move did not end within ${spec.moveTimeoutMs / 1000} s`;
          // Past its switch-over a move refuses the cancel (in doubt, it waits for the destination's word): said so.
          const refused = await src.request('vmMoveCancel', { name }, 30_000).then(() => null, (x: unknown) => (x instanceof Error ? x.message : String(x)));
          if (refused !== null) throw new Error(`${late}, and its cancel was refused: ${refused.slice(0, 300)}`);
          // How far it got (passes, bytes sent, the dirty set) is data of the run: a pre-copy that
          // never converges is a result. It was thrown away, leaving the run's row empty.
          const st = await endedMove(src, name, CANCELLED_MOVE_WAIT_MS, signal);
          if (st === null) throw new Error(`${late} and was cancelled`);
          // The cancel was taken, and lost to a commit already on its way: the destination had it,
          // and the VM runs there. A completed move, without an error (it was recorded completed
          // with the error "… and was cancelled"); the cancel is the run's note.
          if (st.status === 'completed') {
            const { 'error-desc': _, ...done } = st;
            return { stats: done, note: `${late}; its cancel came too late: ${st.to} had its commit, and the move completed` };
          }
          // A move that failed after all says why, after what the runner did.
          if (st.status === 'failed') return { ...st, 'error-desc': `${late}; it was cancelled, and failed: ${st['error-desc'] ?? 'no reason given'}` };
          return { ...st, 'error-desc': `${late} and was cancelled` };
        }
        if (CLIENT_CODES.has(e.code)) throw e;
        throw new MoveRefused(e.code, e.message);
      } finally {
        signal?.removeEventListener('abort', cancel);
      }
    },
    async removeVm(name) {
      let found: string | null = null;
      const problems: string[] = [];
      // Every host is looked at, whatever another answered: the VM is on one of them, or on none.
      for (const [host, c] of Object.entries(hosts)) {
        try {
          const list = await c.request<VmInfo[]>('vmList', {}, 10_000);
          if (!list.some((v) => v.name === name)) continue;
          found = host;
          await removeVm(c, name);
        } catch (e) {
          problems.push(`on ${host}: ${message(e)}`);
        }
      }
      if (problems.length > 0) throw new Error(problems.join('; '));
      return found;
    },
  };
}

export interface RunExperimentOptions {
  /** The report's directory (default `./experiment-<name>-<timestamp>`). */
  out?: string;
  /** Progress lines, as the run goes. */
  progress?: (line: string) => void;
  /**
   * The HVLAB_HOME: for cluster: existing, the cluster's (default: HVLAB_HOME, else ~/.hvlab); for
   * cluster: new, where to bring it up (default: a temporary directory, removed after).
   */
  home?: string;
  /** Stops after the run in flight (its move is cancelled); the report of the runs made is still written. */
  signal?: AbortSignal;
  /**
   * Holds a lease on the temporary cluster this run brings up, taken right after it is up: if this
   * process is killed (even with SIGKILL), whoever holds the other end takes the cluster down and
   * removes its home (the CLI passes the home nemesis's teardown lease, @hvlab/faults, which this
   * package cannot import). Resolves with the lease: `handOver` gives the teardown to its holder
   * and waits for it (true once the home is gone: a run killed meanwhile leaves nothing); `release`
   * ends it for a run that tears down itself (when the handover was not taken).
   */
  leaseHome?: (home: string) => Promise<{ handOver: () => Promise<boolean>; release: () => Promise<void> }>;
  /**
   * On an existing cluster: a lease the run holds on what it changes there (the CLI passes one of
   * the home's nemesis, @hvlab/faults): the link's impairments are set through it (as a fault the
   * run owns, undone when the lease ends or lapses) and every VM the run made is named to it (turned
   * off and deleted when it lapses). So a run killed with SIGKILL leaves the user's cluster as it
   * was; it left its VM running there and the link impaired before. Without it the run changes the
   * link itself and puts it back at its end.
   */
  leaseRun?: (home: string) => Promise<RunLease>;
}

/** What a run on an existing cluster holds through its lease (RunExperimentOptions.leaseRun). */
export interface RunLease {
  /** Sets the link's impairments, undone when the lease ends (or lapses). */
  setLink(a: string, b: string, change: { delayMs: number | null; jitterMs: number | null; rateBps: number | null; lossPercent: number | null; seed: number }): Promise<void>;
  /** Every VM the run has made and not deleted yet (all of them, each time). */
  owned(vms: Array<{ host: string; vm: string; id: string }>): Promise<void>;
  /** Ends the lease: the link as it was, the VMs released (the run deleted them). */
  end(): Promise<void>;
}

/**
 * Makes a run's report directory (`--out`), before anything starts, so one that cannot be made
 * fails the run at once; as a sentence about `--out`, not a bare EEXIST from mkdir.
 *
 * A directory that is there already may hold nothing but files of an earlier report of the same
 * kind (`reportFiles`), which this run's replace: the reports in docs/ are made again that way.
 * Anything else there is refused before anything starts: a run wrote its files among whatever the
 * directory held (a results.md of another report next to this one's plots, a user's notes) or, with
 * a directory named like one of its files in the way, ran to its end and then lost its report.
 */
/**
 * Where a run on a temporary home keeps the logs of a host that failed to come up: in its report's
 * directory (the home goes at the end), named in the failure.
 */
export const FAILED_UP_LOGS_ENTRY = 'cluster-up-failed';

export function makeReportDir(out: string, reportFiles: readonly string[] = REPORT_FILES): string[] {
  let entries: string[] | null = null;
  try {
    if (statSync(out).isDirectory()) entries = readdirSync(out);
  } catch {
    // Not there (made below), or not a directory (refused below, as mkdir fails).
  }
  if (entries !== null) {
    const foreign = entries.filter((e) => {
      // The logs an earlier run in this directory kept of a host that failed to come up (or their
      // staged copy, left by a run killed while it kept them): left beside the report; the next
      // failure's replace them.
      if (e === FAILED_UP_LOGS_ENTRY || STAGED_LOGS_RE.test(e)) {
        try {
          return !lstatSync(join(out, e)).isDirectory();
        } catch {
          return true;
        }
      }
      // A file of a report half written when its run was killed (writeFileAtomic's): it goes.
      const torn = /^(.+)\.tmp-\d+$/.exec(e);
      if (torn && reportFiles.includes(torn[1]!)) {
        try {
          if (lstatSync(join(out, e)).isFile()) {
            rmSync(join(out, e), { force: true });
            return false;
          }
        } catch { /* gone */ }
        return true;
      }
      if (!reportFiles.includes(e)) return true;
      try {
        return !lstatSync(join(out, e)).isFile();
      } catch {
        return true;
      }
    }).sort();
    if (foreign.length > 0) {
      const shown = foreign.slice(0, 3).map((e) => JSON.stringify(e)).join(', ') + (foreign.length > 3 ? ` and ${foreign.length - 3} more` : '');
      throw new ClusterError(`cannot write the report to ${out}: the directory holds ${shown}, which is not part of a report of this kind (${reportFiles.join(', ')}); give --out a new or empty directory, or one that holds only an earlier report of this kind (replaced)`);
    }
  }
  const why = (e: unknown): string => {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'EEXIST' || code === 'ENOTDIR' ? 'a file is in the way (it names a directory)' : code === 'EACCES' || code === 'EPERM' ? 'no permission'
      : code === 'EROFS' ? 'the file system is read-only' : code === 'ENOENT' ? 'its parent cannot hold directories (a file system such as /proc)' : (e as Error).message;
  };
  let made: string[];
  try {
    made = makeDirs(out);
  } catch (e) {
    throw new ClusterError(`cannot make the report directory ${out}: ${why(e)}`);
  }
  // A directory that is there but cannot be written to (a read-only mount) was found out only
  // when the report was written, after every move: the whole run's results were lost.
  const probe = join(out, `.hvlab-write-probe-${process.pid}`);
  try {
    writeFileSync(probe, '', { flag: 'wx' });
    rmSync(probe, { force: true });
  } catch (e) {
    unmakeDirs(made);
    throw new ClusterError(`cannot write the report to ${out}: ${why(e)}`);
  }
  return made;
}

/**
 * Writes a finished run's report with `write` to `report.out`; if that fails (the disk filled up,
 * the directory was removed or made read-only during the run), to a new directory under the
 * system's temporary directory instead, said in `report.cleanup` (and so in the report itself)
 * and by `say`: a failure there threw away every result of a run that had made all its moves.
 * Throws only when the second place fails too.
 */
export function writeReportOrElsewhere(report: { name: string; out: string; cleanup: string[] }, write: (dir: string) => void, say: (line: string) => void = () => {}): void {
  try {
    write(report.out);
  } catch (e) {
    const alt = mkdtempSync(join(tmpdir(), `hvlab-report-${report.name}-`));
    const why = `the report could not be written to ${report.out} (${message(e)}); it was written to ${alt} instead`;
    report.out = alt;
    report.cleanup.push(why);
    say(`WARNING: ${why}`);
    write(alt);
  }
}

/** 2026-12-01T08:43:51.123Z → 20261201T084351Z (a file name's timestamp). */
export function reportStamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** The topology of a cluster: new experiment: its two hosts, one link. */
export function experimentTopologySource(spec: ExperimentSpec): string {
  const lps = spec.lps ?? 2;
  return `name: ${spec.name}\nhosts:\n  ${spec.from}: { lps: ${lps} }\n  ${spec.to}: { lps: ${lps} }\nlinks:\n  - endpoints: [${spec.from}, ${spec.to}]\n`;
}

/** Bytes for the bandwidth probe: the file's, else about 2 s at the link's rate within 1M–64M. */
function probeBytes(spec: ExperimentSpec): number {
  if (spec.probeBytes !== null) return spec.probeBytes;
  const d = EXPERIMENT_DEFAULTS;
  if (!spec.link?.rateBps) return d.probeMaxBytes;
  return Math.min(d.probeMaxBytes, Math.max(d.probeMinBytes, Math.round((spec.link.rateBps / 8) * d.probeSeconds)));
}

/**
 * Runs the experiment of `file` and writes its report to `opts.out`; resolves with the report.
 * A file that does not check throws its ExperimentError before anything starts; a cluster that
 * cannot be brought up (or, for cluster: existing, is not there) throws its ClusterError. Moves
 * that fail or are refused are recorded. Whatever happens, the VMs it made are deleted, the link
 * is put back, and a cluster it brought up is brought down.
 */
export async function runExperiment(file: string, opts: RunExperimentOptions = {}): Promise<ExperimentReport> {
  const spec = loadExperiment(file);
  if (spec instanceof ExperimentError) throw spec;
  const say = opts.progress ?? (() => {});
  const started = new Date();
  const out = resolve(opts.out ?? `experiment-${spec.name}-${reportStamp(started)}`);
  // An existing cluster that is not there fails before anything is made (it left an empty --out).
  if (spec.cluster === 'existing' && !readCluster(resolveHome(opts.home ?? null))) {
    throw new ClusterError(`no cluster is up for ${resolveHome(opts.home ?? null)}: an experiment with cluster: existing runs on the cluster up there ("hvlab cluster up FILE")`);
  }
  // Made first, so a directory that cannot be written fails before anything starts; a run refused
  // later without a report takes away what this made (it left an empty --out).
  const madeDirs = makeReportDir(out);
  try {
    const tempHome = spec.cluster === 'new' && opts.home === undefined ? mkdtempSync(join(tmpdir(), 'hvlab-experiment-')) : null;
    if (tempHome !== null) markTemporaryHome(tempHome);
    const home = resolveHome(tempHome ?? opts.home ?? null);
    const report = newReport(spec, { out, home, started });
    let broughtUp = false;
    let lease: { handOver: () => Promise<boolean>; release: () => Promise<void> } | null = null;
    let runLease: RunLease | null = null;
    const clients: MgmtClient[] = [];
    /** The link as it was, to put back (cluster: existing). */
    let restore: LinkChange | null = null;
    try {
      if (spec.cluster === 'new') {
        const source = experimentTopologySource(spec);
        // The lease first: a run killed during the bring-up (seconds) left the cluster running.
        if (tempHome && opts.leaseHome) {
          try {
            lease = await opts.leaseHome(home);
          } catch (e) {
            say(`WARNING: no lease on the temporary cluster (${message(e)}): if this run is killed, take it down with "hvlab --home ${home} cluster down"`);
          }
        }
        say(`bringing up hosts ${spec.from} and ${spec.to} under ${home}`);
        // Ctrl-C during the bring-up (seconds) takes down what was made and throws, with no report: no run was made.
        // A failed host's logs are kept in the home's cluster-up-failed, and with a temporary home
        // (which goes at the end) in the report's directory: the failure names where.
        await clusterUp(home, parseTopology(source, `experiment ${spec.name}`), source, resolve(file), { progress: say, signal: opts.signal, ...(tempHome !== null ? { failedLogsDir: join(out, FAILED_UP_LOGS_ENTRY) } : {}) });
        broughtUp = true;
      } else if (!readCluster(home)) {
        throw new ClusterError(`no cluster is up for ${home}: an experiment with cluster: existing runs on the cluster up there ("hvlab cluster up FILE")`);
      } else if (opts.leaseRun) {
        runLease = await opts.leaseRun(home);
      }
      const st = await clusterStatus(home);
      report.cluster.network = st.mode;
      report.cluster.hosts = [spec.from, spec.to].map((n) => ({ name: n, hostId: st.hosts.find((h) => h.name === n)?.hostId ?? null }));
      const hosts: Record<string, MgmtClient> = {};
      for (const n of [spec.from, spec.to]) {
        const c = await hostClient(home, n);
        clients.push(c);
        hosts[n] = c;
      }

      // The link as found: what a run that leaves it as it was runs over, and what one that sets it puts back.
      const fab = spec.link ? await fabricStatus(home) : await fabricStatus(home).catch(() => null);
      const was = fab?.links.find((l) => (l.a === spec.from && l.b === spec.to) || (l.a === spec.to && l.b === spec.from));
      if (was) {
        const i: LinkImpairments = {};
        if (was.delayMs !== undefined && was.delayMs !== null) i.delayMs = was.delayMs;
        if (was.jitterMs !== undefined && was.jitterMs !== null) i.jitterMs = was.jitterMs;
        if (was.rateBps !== undefined && was.rateBps !== null) i.rateBps = was.rateBps;
        if (was.lossPercent !== undefined && was.lossPercent !== null) i.lossPercent = was.lossPercent;
        report.link.found = { impairments: i, seed: was.seed };
      }
      if (spec.link) {
        if (!was) throw new ClusterError(`cluster ${st.name} has no link between ${spec.from} and ${spec.to}, so its impairments cannot be set`);
        restore = { delayMs: was.delayMs ?? null, jitterMs: was.jitterMs ?? null, rateBps: was.rateBps ?? null, lossPercent: was.lossPercent ?? null, seed: was.seed };
        const l = spec.link;
        const change = { delayMs: l.delayMs ?? null, jitterMs: l.jitterMs ?? null, rateBps: l.rateBps ?? null, lossPercent: l.lossPercent ?? null, seed: spec.seed };
        if (runLease) await runLease.setLink(spec.from, spec.to, change);
        else await linkSet(home, spec.from, spec.to, change);
        say(`link ${spec.from} - ${spec.to}: ${impairmentsText(l) || 'unimpaired'} (seed ${spec.seed})`);
      }

      const bytes = probeBytes(spec);
      if (bytes > 0 && opts.signal?.aborted !== true) {
        try {
          const probing = hosts[spec.from]!.request<LinkProbeResult>('linkProbe', { peer: spec.to, pings: 5, bytes }, 600_000);
          // Ctrl-C stops it at the fabric: a run waited for the whole probe (16 MiB at 10 mbit: 13 s).
          const p = await stoppableProbe(probing, () => linkProbeStop(home, spec.from, spec.to), opts.signal ?? new AbortController().signal).catch((e: unknown) => {
            if (!(e instanceof ProbeStopped)) throw e;
            throw new Error(e.problem !== null
              ? `stopped by the signal, and its traffic could not be stopped at the fabric (${e.problem}): its bytes may still be crossing the link`
              : `stopped by the signal: its traffic was stopped at the fabric${e.settled ? '' : '; the host is still ending its probe'}`);
          });
          report.link.probe = p;
          if (p.bitsPerSecond > 0) {
            report.link.bandwidthBytesPerSecond = p.bitsPerSecond / 8;
            report.link.modelMs = Number(((spec.vm.memoryBytes / report.link.bandwidthBytesPerSecond) * 1000).toFixed(1));
          }
          say(`link ${spec.from} → ${spec.to}: ${(p.bitsPerSecond / 8e6).toFixed(1)} MB/s measured with ${formatBinaryBytes(bytes)}; model ${report.link.modelMs ?? '—'} ms for ${formatBytes(spec.vm.memoryBytes)}`);
        } catch (e) {
          report.link.probeError = message(e);
          say(`link ${spec.from} → ${spec.to}: the bandwidth probe failed (${report.link.probeError}); no model`);
        }
      }

      const base = clusterDriver(spec, hosts, opts.signal);
      // Named to the run's lease as they are made and deleted: a run killed with SIGKILL leaves none.
      // Each with the id the run gives it before it is made (vmNew `id`), so the lease removes that
      // VM and never a later one of its name.
      const made = new Map<string, string>();
      const tell = async (): Promise<void> => {
        // On either host: a move takes it to `to` (and a failed one leaves it on `from`).
        await runLease?.owned([...made].flatMap(([vm, id]) => [{ host: spec.from, vm, id }, { host: spec.to, vm, id }])).catch((e: unknown) => say(`WARNING: the run's lease was not renewed: ${message(e)}`));
      };
      const driver: ExperimentDriver = runLease === null ? base : {
        ...base,
        async createVm(name) {
          const id = randomUUID();
          made.set(name, id);
          await tell();
          await base.createVm(name, id);
        },
        async removeVm(name) {
          const found = await base.removeVm(name);
          made.delete(name);
          await tell();
          return found;
        },
      };
      // Between runs, the link must carry nothing of the run before.
      driver.quiet = async () => {
        const q = await waitLinkQuiet(home, spec.from, spec.to, { signal: opts.signal, timeoutMs: LINK_QUIET_MAX_MS }).catch((e: unknown) => message(e));
        if (typeof q === 'string') return `WARNING: could not tell whether the link carries bytes of the run before (${q})`;
        if (q.heldBytes === 0) return null;
        const what = `link ${spec.from} – ${spec.to}: ${formatBinaryBytes(q.heldBytes)} of the run before still on it`;
        return q.quiet ? `${what}; waited ${q.waitedMs} ms for them to arrive` : `WARNING: ${what} after ${q.waitedMs} ms; this run shares the link with them`;
      };
      // The report so far is written after every run, marked unfinished (no end time): a run
      // killed outright (SIGKILL) keeps the moves it made. The end's report
      // replaces it. A failure to write it is said once; the end tries again, elsewhere if need be.
      let partialFailed = false;
      const onRun = (runs: readonly ExperimentRun[]): void => {
        report.runs = [...runs];
        report.summary = summarize(spec.methods, report.runs, report.link.bandwidthBytesPerSecond);
        try {
          writeReport(report, report.out);
        } catch (e) {
          if (!partialFailed) say(`WARNING: the report so far could not be written to ${report.out} (${message(e)}); it is written at the end`);
          partialFailed = true;
        }
      };
      report.runs = await runMoves(spec, driver, { progress: say, signal: opts.signal, onRun });
      // Stopped early only if runs were left out: a Ctrl-C during the teardown of a finished run is not.
      report.aborted = stoppedEarly(spec, report.runs, opts.signal);
      // A VM that could not be deleted after its run gets one more try (a new cluster goes as a whole anyway).
      for (const r of report.runs.filter((x) => x.cleanupError !== null)) {
        if (!broughtUp) {
          await driver.removeVm(r.vm).then(() => (r.cleanupError = null), (e: unknown) => void report.cleanup.push(`VM ${r.vm} was not deleted: ${message(e)}`));
        }
      }
    } finally {
      for (const c of clients) c.close();
      // A cluster brought up for the run goes as a whole; on an existing one the link is put back.
      if (runLease) {
        // Its end undoes the link's fault (the link as it was) and releases the VMs (deleted by now).
        await runLease.end().catch((e: unknown) => void report.cleanup.push(`the run's lease on the cluster did not end (its link and VMs go back when it lapses): ${message(e)}`));
      } else if (restore && !broughtUp) {
        await linkSet(home, spec.from, spec.to, restore).catch((e: unknown) => void report.cleanup.push(`the link ${spec.from} - ${spec.to} was not put back: ${message(e)}`));
      }
      // The teardown of a temporary cluster goes to the lease's holder, which does it even if this
      // process is killed meanwhile (a second Ctrl-C, SIGKILL); else this process does it, after
      // the lease ends, so that its holder does not take the cluster down under it.
      const handed = lease !== null && await lease.handOver().catch(() => false);
      if (handed) {
        if (broughtUp) say(`cluster ${spec.name} is down`);
      } else if (lease) await lease.release().catch((e: unknown) => void report.cleanup.push(`the lease on the temporary cluster was not released: ${message(e)}`));
      if (!handed && (broughtUp || tempHome)) {
        try {
          const d = await clusterDown(home);
          if (broughtUp) say(`cluster ${d.name ?? spec.name} is down`);
        } catch (e) {
          report.cleanup.push(`the cluster under ${home} was not brought down: ${message(e)}`);
        }
      }
      if (tempHome) rmSync(tempHome, { recursive: true, force: true });
      for (const c of report.cleanup) say(`WARNING: ${c}`);
    }
    report.endedAt = new Date().toISOString();
    report.environment.loadAtEnd = loadNow();
    report.summary = summarize(spec.methods, report.runs, report.link.bandwidthBytesPerSecond);
    writeReportOrElsewhere(report, (dir) => writeReport(report, dir), say);
    return report;
  } catch (e) {
    unmakeDirs(madeDirs);
    throw e;
  }
}
