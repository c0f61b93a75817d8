/**
 * The topology file of a cluster (YAML, or JSON, which is YAML too), as containerlab has one file
 * per lab: the cluster's name, its hosts, the links between hosts with their impairments, and its
 * VMs with the host each runs on.
 *
 *   name: lab
 *   hosts:
 *     h1: { lps: 2, memory: 2G }       # lps: logical processors; memory: a budget for its VMs
 *     h2: {}
 *   links:
 *     - endpoints: [h1, h2]
 *       delay: 20ms                    # added to each round trip (half each way); each is optional
 *       jitter: 2ms
 *       rate: 1gbit                    # bit, kbit, mbit, gbit (per second), as tc spells them
 *       loss: 0.1%
 *   vms:
 *     web: { host: h1, memory: 64M, vps: 2, workload: counter, processor: { weight: 200 } }
 *
 * `parseTopology` is the one checking decoder of such a file: every field is checked, unknown
 * fields are refused, and every problem is reported at once with its line, column and field
 * (`TopologyError`), before anything starts. `switches` and `disks` are reserved keys: present
 * and empty they are accepted, anything in them is refused as not supported yet. A VM's `ha` flag
 * is reserved too (a boolean, not acted on yet).
 */
import { isMap, isScalar, isSeq, type Node, type Pair, type YAMLMap } from 'yaml';
import { fieldKey, problem, problemsText, readYamlMap, scalar, shown, where, type CheckCtx, type FileProblem } from './yaml-check.js';
import {
  MAX_MEMORY_BYTES, MAX_VPS_PER_PARTITION, CLUSTER_HOST_RE, durationHint, durationMs, LINK_MAX_DELAY_MS, LINK_MAX_RATE_BPS, type LinkImpairments, MIN_MEMORY_BYTES, PROCESSOR_LIMITS, VM_NAME_RE, formatBytes, parseSize, workloadFitError,
} from '@hvlab/protocol';

/** Host names become parts of namespace and interface names (15 bytes at most in Linux). */
export const HOST_NAME_RE = CLUSTER_HOST_RE;
export const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
export const MAX_HOSTS = 32;
export const MAX_LPS = 256;
/** Longest delay or jitter on a link (ms). */
export const MAX_LINK_DELAY_MS = LINK_MAX_DELAY_MS;
/** The default VM shape, as `vm new` has it. */
export const DEFAULT_VM = { memory: '64M', vps: 1, workload: 'counter' } as const;
/** Largest topology file (bytes). */
export const MAX_TOPOLOGY_BYTES = 1024 * 1024;

export type { LinkImpairments } from '@hvlab/protocol';

export interface TopologyHost {
  name: string;
  /** Logical processors; null: the machine's CPU count. */
  lps: number | null;
  /** The budget for its VMs' memory; null: none. */
  memoryBytes: number | null;
}

export interface TopologyLink {
  a: string;
  b: string;
  impairments: LinkImpairments;
}

export interface TopologyVm {
  name: string;
  host: string;
  memoryBytes: number;
  vps: number;
  workload: string;
  processor: { reserve: number; maximum: number; weight: number };
  /** Reserved for high availability; not acted on yet. */
  ha: boolean;
}

export interface Topology {
  name: string;
  hosts: TopologyHost[];
  links: TopologyLink[];
  vms: TopologyVm[];
}

export type TopologyProblem = FileProblem;

export class TopologyError extends Error {
  override name = 'TopologyError';
  constructor(readonly file: string, readonly problems: TopologyProblem[]) {
    super(problemsText(file, problems));
  }
}

// ---- units ------------------------------------------------------------------------------------

/**
 * "20ms", "1.5s", "250us", "2m", "0": milliseconds; null when malformed or a bare number other
 * than 0 (durationMs). A minus sign is read, so that a range check can say what is wrong with
 * "-5ms".
 */
export function parseDuration(text: string | number): number | null {
  if (typeof text === 'string' && /^\s*-/.test(text)) {
    const ms = durationMs(text.replace(/^\s*-/, ''));
    return ms === null ? null : -ms;
  }
  return durationMs(text);
}

/** "1gbit", "100mbit", "64kbit", "9600bit", "1000000": bits per second (tc's spelling); null when malformed. */
export function parseRate(text: string | number): number | null {
  if (typeof text === 'number') return Number.isFinite(text) ? text : null;
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)?\s*$/i.exec(text);
  if (!m) return null;
  const mul = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12 }[(m[2] ?? 'bit').toLowerCase() as 'bit'];
  return Number(m[1]) * mul;
}

/** "0.1%" or 0.1: percent; null when malformed. */
export function parseLoss(text: string | number): number | null {
  if (typeof text === 'number') return Number.isFinite(text) ? text : null;
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*%?\s*$/.exec(text);
  return m ? Number(m[1]) : null;
}

// ---- the decoder -------------------------------------------------------------------------------

type Ctx = CheckCtx;

/** The entries of a map node as [key, value node, pair]; a problem and [] when it is not a map. */
function entries(ctx: Ctx, node: Node | null | undefined, field: string, allowed: readonly string[] | null): Array<[string, Node | null, Pair]> {
  if (node === null || node === undefined) return [];
  if (!isMap(node)) {
    problem(ctx, node, field, 'must be a map (name: value)');
    return [];
  }
  const out: Array<[string, Node | null, Pair]> = [];
  const seen = new Set<string>();
  for (const pair of (node as YAMLMap).items) {
    const k = pair.key;
    if (!isScalar(k) || typeof k.value !== 'string' && typeof k.value !== 'number') {
      problem(ctx, pair as Pair, field, 'a key must be a name');
      continue;
    }
    const key = String(k.value);
    const path = field ? `${field}.${fieldKey(key)}` : fieldKey(key);
    if (seen.has(key)) {
      problem(ctx, k, path, 'appears twice');
      continue;
    }
    seen.add(key);
    if (allowed && !allowed.includes(key)) {
      problem(ctx, k, path, `is not a field here (fields: ${allowed.join(', ')})`);
      continue;
    }
    out.push([key, (pair.value as Node | null) ?? null, pair as Pair]);
  }
  return out;
}


function wholeNumber(ctx: Ctx, node: Node | null, field: string, min: number, max: number): number | null {
  const v = scalar(node);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    problem(ctx, node, field, `must be a whole number from ${min} to ${max}, not ${shown(node)}`);
    return null;
  }
  return v;
}

function size(ctx: Ctx, node: Node | null, field: string, min: number, max: number): number | null {
  const v = scalar(node);
  const bytes = typeof v === 'number' ? (Number.isSafeInteger(v) ? v : null) : typeof v === 'string' ? parseSize(v) : null;
  if (bytes === null) {
    problem(ctx, node, field, `must be a size such as 64M or 2G, not ${shown(node)}`);
    return null;
  }
  if (bytes % 4096 !== 0 || bytes < min || bytes > max) {
    problem(ctx, node, field, `must be a multiple of 4K from ${formatBytes(min)} to ${formatBytes(max)}, not ${shown(node)}`);
    return null;
  }
  return bytes;
}

function quantity(ctx: Ctx, node: Node | null, field: string, parse: (t: string | number) => number | null, what: string, min: number, max: number, unit: string, minOpen = false): number | null {
  const v = scalar(node);
  const n = typeof v === 'string' || typeof v === 'number' ? parse(v) : null;
  if (n === null) {
    problem(ctx, node, field, `must be ${what}, not ${shown(node)}${parse === parseDuration ? durationHint(v) : ''}`);
    return null;
  }
  if ((minOpen ? n <= min : n < min) || n > max) {
    problem(ctx, node, field, `${shown(node)} is out of range: ${minOpen ? 'above' : 'at least'} ${min}${unit}${max < Infinity ? ` and at most ${max}${unit}` : ''}`);
    return null;
  }
  return n;
}

/**
 * What is wrong with a topology's hosts section as a whole, or null when it is a map with hosts in
 * it: missing, empty, or a count (`hosts: 3`, as `up --hosts 3` and a chaos experiment take one)
 * where each host is named. "must be a map (name: value)" said none of this.
 */
function hostsSectionProblem(h: { v: Node | null; p: Pair } | undefined): string | null {
  const e = 'e.g. hosts: { h1: {}, h2: {} }';
  if (!h) return `is missing: a cluster needs at least one host, ${e}`;
  const v = h.v;
  if (v === null || (isScalar(v) && (v.value === null || v.value === '')) || ((isMap(v) || isSeq(v)) && v.items.length === 0)) return `is empty: a cluster needs at least one host, ${e}`;
  if (isScalar(v) && typeof v.value === 'number') return `is ${v.value}, a number: a topology names each of its hosts, ${e} ("hvlab up --hosts N" brings up hosts h1..hN without a file)`;
  if (!isMap(v)) return `must name each host with its settings, ${e}`;
  return null;
}

const TOP_FIELDS = ['name', 'hosts', 'links', 'vms', 'switches', 'disks'] as const;
const HOST_FIELDS = ['lps', 'memory'] as const;
const LINK_FIELDS = ['endpoints', 'delay', 'jitter', 'rate', 'loss'] as const;
const VM_FIELDS = ['host', 'memory', 'vps', 'workload', 'processor', 'ha'] as const;
const PROCESSOR_FIELDS = ['reserve', 'maximum', 'weight'] as const;

/**
 * Decodes and checks a topology file's text (`file` names it in errors). Throws TopologyError with
 * every problem found; never anything else.
 */
/**
 * `opts.stored`: the text is a cluster record's (`readCluster`), checked when its cluster came up,
 * perhaps by an hvlab that read YAML tags (`!!str h1`) as their values: they are read so again,
 * rather than lock every command of that home out of a cluster that runs.
 */
export function parseTopology(text: string, file = 'topology', opts: { stored?: boolean } = {}): Topology {
  const read = readYamlMap(text, MAX_TOPOLOGY_BYTES, { tooBig: `a topology file is text of at most ${MAX_TOPOLOGY_BYTES} bytes`, notMap: 'a topology is a map with name, hosts, links and vms' }, { readTags: opts.stored === true });
  if (Array.isArray(read)) throw new TopologyError(file, read);
  const { ctx, root } = read;
  const top = new Map(entries(ctx, root, '', TOP_FIELDS).map(([k, v, p]) => [k, { v, p }]));

  let name = '';
  const n = top.get('name');
  if (!n) problem(ctx, root, 'name', 'is missing: every cluster has a name');
  else if (typeof scalar(n.v) !== 'string' || !CLUSTER_NAME_RE.test(scalar(n.v) as string)) {
    problem(ctx, n.v ?? n.p, 'name', 'must be 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit');
  } else name = scalar(n.v) as string;

  // Hosts.
  const hosts: TopologyHost[] = [];
  const h = top.get('hosts');
  const hostsProblem = hostsSectionProblem(h);
  if (hostsProblem) problem(ctx, h?.v ?? h?.p ?? root, 'hosts', hostsProblem);
  for (const [hn, hv, hp] of hostsProblem ? [] : entries(ctx, h?.v, 'hosts', null)) {
    const field = `hosts.${fieldKey(hn)}`;
    if (!HOST_NAME_RE.test(hn)) {
      problem(ctx, hp, field, 'a host name is 1-10 lowercase letters, digits or "-", starting with a letter');
      continue;
    }
    const host: TopologyHost = { name: hn, lps: null, memoryBytes: null };
    if (hv !== null && !(isScalar(hv) && hv.value === null)) {
      for (const [k, v] of entries(ctx, hv, field, HOST_FIELDS)) {
        if (k === 'lps') host.lps = wholeNumber(ctx, v, `${field}.lps`, 1, MAX_LPS);
        else host.memoryBytes = size(ctx, v, `${field}.memory`, MIN_MEMORY_BYTES, 1024 ** 4);
      }
    }
    hosts.push(host);
  }
  if (hosts.length > MAX_HOSTS) problem(ctx, h?.v, 'hosts', `at most ${MAX_HOSTS} hosts`);
  const hostNames = new Set(hosts.map((x) => x.name));
  const known = (): string => [...hostNames].join(', ') || 'none';
  // Without a hosts section to check against, every link and VM would follow with "h1 is not a
  // host of this cluster (hosts: none)": the section is the one problem named.
  const checkHostNames = hostsProblem === null;

  // Links.
  const links: TopologyLink[] = [];
  const l = top.get('links');
  if (l?.v && !(isScalar(l.v) && l.v.value === null)) {
    if (!isSeq(l.v)) problem(ctx, l.v, 'links', 'must be a list of links');
    else {
      const pairs = new Set<string>();
      l.v.items.forEach((item, i) => {
        const field = `links[${i}]`;
        const link: TopologyLink = { a: '', b: '', impairments: {} };
        let endpointsSeen = false;
        for (const [k, v] of entries(ctx, item as Node, field, LINK_FIELDS)) {
          const f = `${field}.${k}`;
          if (k === 'endpoints') {
            endpointsSeen = true;
            if (!v || !isSeq(v) || v.items.length !== 2 || !v.items.every((e) => isScalar(e) && typeof e.value === 'string')) {
              problem(ctx, v, f, 'must be a list of two host names, e.g. [h1, h2]');
              continue;
            }
            const [a, b] = v.items.map((e) => String((e as { value: unknown }).value));
            const bad = v.items.filter((e) => !hostNames.has(String((e as { value: unknown }).value)));
            if (bad.length > 0) {
              if (checkHostNames) problem(ctx, v, f, `${bad.map((x) => shown(x as Node)).join(' and ')} ${bad.length > 1 ? 'are not hosts' : 'is not a host'} of this cluster (hosts: ${known()})`);
            } else if (a === b) problem(ctx, v, f, 'a link joins two different hosts');
            else {
              const key = [a, b].sort().join('\u0000');
              if (pairs.has(key)) problem(ctx, v, f, `${a} and ${b} are already linked`);
              pairs.add(key);
              link.a = a!;
              link.b = b!;
            }
          } else if (k === 'delay' || k === 'jitter') {
            const ms = quantity(ctx, v, f, parseDuration, 'a duration such as 20ms', 0, MAX_LINK_DELAY_MS, 'ms');
            if (ms !== null) link.impairments[k === 'delay' ? 'delayMs' : 'jitterMs'] = ms;
          } else if (k === 'rate') {
            // The fabric's own range (a link set and the fabric's saved state take no other): a rate
            // past it made a state that no restart of the fabric took back, and a fault's undo that
            // the fabric refused.
            const bps = quantity(ctx, v, f, parseRate, 'a rate such as 100mbit', 1, LINK_MAX_RATE_BPS, ' bit/s');
            if (bps !== null) link.impairments.rateBps = bps;
          } else {
            const pct = quantity(ctx, v, f, parseLoss, 'a percentage such as 0.1%', 0, 100, '%');
            if (pct !== null) link.impairments.lossPercent = pct;
          }
        }
        if (!endpointsSeen) problem(ctx, item as Node, `${field}.endpoints`, 'is missing: a link names its two hosts');
        if (link.a) links.push(link);
      });
    }
  }

  // VMs.
  const vms: TopologyVm[] = [];
  const v = top.get('vms');
  const memoryByHost = new Map<string, number>();
  for (const [vn, vv, vp] of entries(ctx, v?.v, 'vms', null)) {
    const field = `vms.${fieldKey(vn)}`;
    if (!VM_NAME_RE.test(vn)) {
      problem(ctx, vp, field, 'a VM name is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit');
      continue;
    }
    const fields = new Map(entries(ctx, vv, field, VM_FIELDS).map(([k, x]) => [k, x]));
    const vm: TopologyVm = { name: vn, host: '', memoryBytes: 0, vps: DEFAULT_VM.vps, workload: DEFAULT_VM.workload, processor: { reserve: 0, maximum: 100, weight: 100 }, ha: false };
    let ok = true;
    if (!fields.has('host')) {
      problem(ctx, vv ?? vp, `${field}.host`, `is missing: every VM names the host it runs on (hosts: ${known()})`);
      ok = false;
    } else {
      const hn = fields.get('host')!;
      const hv = scalar(hn);
      if (typeof hv !== 'string' || !hostNames.has(hv)) {
        // Named as written, cut to 40 characters (shown): a name of 100,000 was quoted whole.
        const said = hn === null || hv === null || hv === '' ? 'is empty: every VM names the host it runs on' : `${shown(hn)} is not a host of this cluster`;
        if (checkHostNames || typeof hv !== 'string') problem(ctx, hn ?? vv ?? vp, `${field}.host`, `${said} (hosts: ${known()})`);
        ok = false;
      } else vm.host = hv;
    }
    const memNode = fields.get('memory');
    const mem = memNode === undefined ? parseSize(DEFAULT_VM.memory)! : size(ctx, memNode, `${field}.memory`, MIN_MEMORY_BYTES, MAX_MEMORY_BYTES);
    if (mem === null) ok = false;
    else vm.memoryBytes = mem;
    if (fields.has('vps')) {
      const n2 = wholeNumber(ctx, fields.get('vps')!, `${field}.vps`, 1, MAX_VPS_PER_PARTITION);
      if (n2 === null) ok = false;
      else vm.vps = n2;
    }
    if (fields.has('workload')) {
      const w = scalar(fields.get('workload')!);
      if (typeof w !== 'string') {
        problem(ctx, fields.get('workload'), `${field}.workload`, 'must be a workload such as counter, idle, sleep:50');
        ok = false;
      } else vm.workload = w;
    }
    if (mem !== null) {
      const fit = workloadFitError(vm.workload, mem);
      if (fit) {
        problem(ctx, fields.get('workload') ?? memNode ?? vv, `${field}.workload`, fit);
        ok = false;
      }
    }
    if (fields.has('processor')) {
      for (const [k, x] of entries(ctx, fields.get('processor')!, `${field}.processor`, PROCESSOR_FIELDS)) {
        const lim = PROCESSOR_LIMITS[k as keyof typeof PROCESSOR_LIMITS];
        const n3 = wholeNumber(ctx, x, `${field}.processor.${k}`, lim.min, lim.max);
        if (n3 === null) ok = false;
        else vm.processor[k as keyof TopologyVm['processor']] = n3;
      }
      if (vm.processor.reserve > vm.processor.maximum) {
        problem(ctx, fields.get('processor'), `${field}.processor`, `reserve (${vm.processor.reserve}%) is above maximum (${vm.processor.maximum}%)`);
        ok = false;
      }
    }
    if (fields.has('ha')) {
      const b = scalar(fields.get('ha')!);
      if (typeof b !== 'boolean') {
        problem(ctx, fields.get('ha'), `${field}.ha`, 'must be true or false');
        ok = false;
      } else vm.ha = b;
    }
    if (ok) {
      vms.push(vm);
      memoryByHost.set(vm.host, (memoryByHost.get(vm.host) ?? 0) + vm.memoryBytes);
    }
  }
  for (const host of hosts) {
    const used = memoryByHost.get(host.name) ?? 0;
    if (host.memoryBytes !== null && used > host.memoryBytes) {
      const node = (h?.v as YAMLMap | undefined)?.items.find((p) => isScalar(p.key) && p.key.value === host.name);
      problem(ctx, node as Pair | undefined, `hosts.${fieldKey(host.name)}.memory`, `its VMs need ${formatBytes(used)}, more than its ${formatBytes(host.memoryBytes)}`);
    }
  }

  // Reserved for later: present and empty is fine, anything in them is not supported yet.
  for (const k of ['switches', 'disks'] as const) {
    const r = top.get(k);
    if (!r?.v) continue;
    const empty = (isScalar(r.v) && r.v.value === null) || ((isMap(r.v) || isSeq(r.v)) && (r.v as YAMLMap).items.length === 0);
    if (!empty) problem(ctx, r.v, k, `${k} are reserved for a later version of the format and not supported yet`);
  }

  if (ctx.problems.length > 0) {
    ctx.problems.sort((a, b) => a.line - b.line || a.column - b.column);
    throw new TopologyError(file, ctx.problems);
  }
  return { name, hosts, links, vms };
}

/**
 * The topology `hvlab up --hosts N` stands for: hosts h1..hN (each with `lps` LPs, or every CPU),
 * a full mesh of unimpaired links, no VMs. Returned as text, so it goes through the same checker
 * and into the cluster record like a file.
 */
export function meshTopologySource(n: number, lps: number | null, name = 'mesh'): string {
  if (!Number.isInteger(n) || n < 1 || n > MAX_HOSTS) throw new TopologyError('--hosts', [{ line: 0, column: 0, field: 'hosts', message: `--hosts takes 1 to ${MAX_HOSTS} hosts` }]);
  const hosts = Array.from({ length: n }, (_, i) => `h${i + 1}`);
  const lines = [`name: ${name}`, 'hosts:', ...hosts.map((h) => `  ${h}: ${lps === null ? '{}' : `{ lps: ${lps} }`}`)];
  const links: string[] = [];
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) links.push(`  - endpoints: [${hosts[i]}, ${hosts[j]}]`);
  lines.push(links.length > 0 ? 'links:' : 'links: []', ...links);
  return `${lines.join('\n')}\n`;
}
