/**
 * Resolving a target against the world (pure: no I/O, so it is tested without processes). A
 * selector's pick and a partition's shape are drawn from the fault's seed over names in sorted
 * order, so the same seed against the same cluster hits the same members.
 *
 * Partition shapes (Jepsen's nemeses, over the links the cluster has):
 *   one             one host cut off from every other
 *   majority        a majority and a minority that cannot reach each other
 *   minority-third  a third (at least one host) cut off from the rest
 *   ring            every host reaches a majority, but no two the same one (4 hosts or more)
 *   bridge          two halves joined only through one host (3 hosts or more)
 */
import { seededRandom, type ProcessRole } from '@hvlab/protocol';
import type { Target } from './request.js';
import type { FaultResolved, PartitionShape, TargetSelector } from './types.js';
import type { World, WorldProcess, WorldVm } from './world.js';

export class ResolveError extends Error {
  override name = 'ResolveError';
}

/** `items` shuffled by `rnd` (Fisher–Yates on a copy). */
function shuffled<T>(items: readonly T[], rnd: () => number): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** How many of `n` a selector takes. */
export function selectCount(sel: TargetSelector, n: number): number {
  switch (sel) {
    case 'one': return Math.min(1, n);
    case 'minority': return n === 0 ? 0 : Math.max(1, Math.floor((n - 1) / 2));
    case 'majority': return Math.floor(n / 2) + 1 > n ? n : Math.floor(n / 2) + 1;
    case 'all': return n;
  }
}

/** `sel` of `names` (sorted first), drawn from `seed`. */
export function pick(names: readonly string[], sel: TargetSelector, seed: number): string[] {
  const sorted = [...names].sort();
  return shuffled(sorted, seededRandom(seed)).slice(0, selectCount(sel, sorted.length)).sort();
}

const pairKey = (a: string, b: string): string => (a < b ? `${a}|${b}` : `${b}|${a}`);

/**
 * The links a partition of `shape` cuts among `hosts`, as pairs, given the links that exist.
 * Also returns the groups it made, for the record.
 */
export function partitionCuts(shape: PartitionShape, hosts: readonly string[], links: ReadonlyArray<readonly [string, string]>, seed: number): { cuts: Array<[string, string]>; groups: string[][] } {
  const n = hosts.length;
  if (n < 2) throw new ResolveError(`a partition needs at least 2 hosts (the cluster has ${n})`);
  const order = shuffled([...hosts].sort(), seededRandom(seed));
  const reach = new Set<string>();
  let groups: string[][];
  const allow = (a: string, b: string): void => void reach.add(pairKey(a, b));
  const within = (g: string[]): void => {
    for (const a of g) for (const b of g) if (a !== b) allow(a, b);
  };
  switch (shape) {
    case 'one':
      groups = [[order[0]!], order.slice(1)];
      groups.forEach(within);
      break;
    case 'majority': {
      const m = Math.floor(n / 2) + 1;
      groups = [order.slice(0, m), order.slice(m)];
      groups.forEach(within);
      break;
    }
    case 'minority-third': {
      const k = Math.max(1, Math.floor(n / 3));
      groups = [order.slice(0, k), order.slice(k)];
      groups.forEach(within);
      break;
    }
    case 'bridge': {
      if (n < 3) throw new ResolveError(`a bridge needs at least 3 hosts (the cluster has ${n})`);
      const bridge = order[0]!;
      const rest = order.slice(1);
      const half = Math.ceil(rest.length / 2);
      const a = [bridge, ...rest.slice(0, half)];
      const b = [bridge, ...rest.slice(half)];
      groups = [a, b];
      within(a);
      within(b);
      break;
    }
    case 'ring': {
      if (n < 4) throw new ResolveError(`a ring of majorities needs at least 4 hosts (the cluster has ${n}); with fewer, every host sees every other`);
      // Each host reaches the hosts within `d` places on the ring: 2d + 1 of n, a majority.
      const m = Math.floor(n / 2) + 1;
      const d = Math.ceil((m - 1) / 2);
      groups = [];
      for (let i = 0; i < n; i++) {
        const g = [order[i]!];
        for (let k = 1; k <= d; k++) {
          g.push(order[(i + k) % n]!, order[(i - k + n) % n]!);
          allow(order[i]!, order[(i + k) % n]!);
        }
        groups.push([...new Set(g)].sort());
      }
      break;
    }
  }
  const cuts: Array<[string, string]> = [];
  for (const [a, b] of links) if (!reach.has(pairKey(a, b))) cuts.push(a < b ? [a, b] : [b, a]);
  cuts.sort((x, y) => (x.join() < y.join() ? -1 : 1));
  return { cuts, groups: groups.map((g) => [...g].sort()) };
}

/** The process of `role` of VM `vm` (partition, vmwp) or of host `hostId` (root, hypervisor). */
function processOf(world: World, hostName: string, role: ProcessRole, vm: string | null): WorldProcess | undefined {
  const host = world.hosts.find((h) => h.name === hostName);
  if (!host?.hostId) return undefined;
  return world.processes.find((p) => p.hostId === host.hostId && p.role === role && (role === 'root' || role === 'hypervisor' || p.vm === vm));
}

export interface Resolution extends FaultResolved {
  /** The processes with their start times (process faults). */
  procs: WorldProcess[];
  /** Partition faults: the groups made. */
  groups?: string[][];
}

/**
 * The copies of VM `vm` a fault may aim at. A live migration lists its VM on both hosts from its
 * set-up until its commit, and the destination's copy is the source's until then (its root
 * refuses operations on it): it is set aside while the source still runs its copy, whichever of
 * the two roots says so — the destination (its copy incoming from the source), or the source (its
 * copy outgoing to the destination) when the destination's root did not answer. After the
 * switch-over (`switched`: post-copy, whose guest runs at the destination for seconds while its
 * pages still come) it is the other way round: the source's frozen copy is set aside, on either
 * root's word. Any other copies of one name are as many VMs, hosts of a cluster may each have one.
 */
export function vmCopies(world: World, vm: string): WorldVm[] {
  const on = world.vms.filter((v) => v.vm === vm);
  if (new Set(on.map((v) => v.host)).size < 2) return on;
  const runsOn = (host: string): boolean => on.some((v) => v.host === host);
  // Sources whose guest runs at the destination now, by either side's word.
  const switchedFrom = new Set<string>();
  for (const v of on) {
    const m = v.migration;
    if (m?.direction === 'incoming' && m.switched && m.from !== v.host) switchedFrom.add(m.from);
    if (m?.direction === 'outgoing' && m.switched && m.to !== v.host && runsOn(m.to)) switchedFrom.add(v.host);
  }
  return on.filter((v) => {
    const m = v.migration;
    if (switchedFrom.has(v.host) && m?.direction !== 'incoming') return false;
    if (m?.direction === 'incoming' && !switchedFrom.has(m.from) && m.from !== v.host && runsOn(m.from)) return false;
    if (m === undefined && on.some((s) => s.host !== v.host && s.migration?.direction === 'outgoing' && s.migration.to === v.host && !switchedFrom.has(s.host))) return false;
    return true;
  });
}

function hostOfVm(world: World, vm: string): string {
  const on = vmCopies(world, vm);
  if (on.length === 0) throw new ResolveError(`VM ${vm} is not running on any host${world.vms.length ? ` (running: ${[...new Set(world.vms.map((v) => v.vm))].join(', ')})` : ' (no VM runs)'}`);
  // Hosts of a cluster may each have a VM of one name: the fault must not pick one of them silently.
  const hosts = [...new Set(on.map((v) => v.host))].sort();
  if (hosts.length > 1) {
    // A copy whose root did not say whether it is a move's may be one (a paused root): said so.
    const unknown = hosts.filter((h) => on.some((v) => v.host === h && v.migration === undefined));
    const why = unknown.length > 0 && world.vms.some((v) => v.migration !== undefined) ? `; the root of ${unknown.join(' and ')} did not say whether its copy is a live migration's` : '';
    throw new ResolveError(`VM ${vm} runs on more than one host (${hosts.join(', ')}): aim at one with vm:${vm}@HOST, or --host (e.g. "hvlab --host ${hosts[0]} fault inject …")${why}`);
  }
  return on[0]!.host;
}

function checkHost(world: World, name: string): void {
  const h = world.hosts.find((x) => x.name === name);
  if (!h) throw new ResolveError(`there is no host ${name} (hosts: ${world.hosts.map((x) => x.name).join(', ') || 'none'})`);
  if (!h.hostId) throw new ResolveError(`host ${name} is not up`);
}

/** What a fault of `kind` on `target` hits now. Throws ResolveError with a sentence. */
export function resolveTarget(world: World, kind: string, target: Target, role: ProcessRole | null, seed: number, params: Record<string, unknown>): Resolution {
  const out: Resolution = { summary: '', hosts: [], vms: [], processes: [], links: [], procs: [] };
  const processFault = kind === 'kill' || kind === 'pause';
  let vms: Array<{ host: string; vm: string }> = [];
  let hosts: string[] = [];
  switch (target.t) {
    case 'vm':
      if (target.on !== undefined) {
        checkHost(world, target.on);
        if (!world.vms.some((v) => v.vm === target.vm && v.host === target.on)) throw new ResolveError(`VM ${target.vm} is not running on host ${target.on}`);
        vms = [{ host: target.on, vm: target.vm }];
      } else vms = [{ host: hostOfVm(world, target.vm), vm: target.vm }];
      break;
    case 'vms': {
      const names = [...new Set(world.vms.map((v) => v.vm))];
      if (names.length === 0) throw new ResolveError('no VM runs, so vms:' + target.select + ' selects nothing');
      // A name that runs on more than one host (hosts of a cluster may each have one) is every
      // copy of it, but for a moving VM's destination copy (vmCopies).
      vms = pick(names, target.select, seed).flatMap((vm) => [...new Set(vmCopies(world, vm).map((v) => v.host))].sort().map((host) => ({ host, vm })));
      break;
    }
    case 'host':
      checkHost(world, target.host);
      hosts = [target.host];
      break;
    case 'host-of':
      hosts = [hostOfVm(world, target.vm)];
      break;
    case 'hosts': {
      const up = world.hosts.filter((h) => h.hostId).map((h) => h.name);
      if (up.length === 0) throw new ResolveError('no host is up');
      hosts = pick(up, target.select, seed);
      break;
    }
    case 'link': {
      // Host names may hold dashes: of the ways to split the text, the one the cluster has a link for.
      const splits: Array<[string, string]> = [];
      for (let j = 1; j < target.text.length - 1; j++) if (target.text[j] === '-') splits.push([target.text.slice(0, j), target.text.slice(j + 1)]);
      const has = (a: string, b: string): boolean => world.links.some((x) => (x.a === a && x.b === b) || (x.a === b && x.b === a));
      const [a0, b0] = splits.find(([a, b]) => has(a, b)) ?? [target.a, target.b];
      checkHost(world, a0);
      checkHost(world, b0);
      const l = world.links.find((x) => (x.a === a0 && x.b === b0) || (x.a === b0 && x.b === a0));
      if (!l) throw new ResolveError(`there is no link between ${a0} and ${b0}${world.links.length ? ` (links: ${world.links.map((x) => `${x.a}-${x.b}`).join(', ')})` : ' (no cluster fabric answers)'}`);
      out.links = [[l.a, l.b]];
      out.hosts = [l.a, l.b];
      out.summary = `link ${l.a}-${l.b}`;
      return out;
    }
    case 'cluster': {
      if (processFault) {
        // The fabric's server: every link goes down with it until its supervisor has started
        // another and the hosts have joined that one again.
        const p = world.processes.find((x) => x.role === 'fabric');
        if (!p) throw new ResolveError(world.cluster ? `cluster ${world.cluster} has no fabric process running` : 'there is no cluster here, so no fabric');
        out.procs = [p];
        out.processes = [{ host: world.cluster ?? 'cluster', role: 'fabric', vm: null, pid: p.pid }];
        out.links = world.links.map((l) => [l.a, l.b] as [string, string]);
        out.summary = `the fabric of cluster ${world.cluster} (pid ${p.pid})${out.links.length ? `: links ${out.links.map((l) => l.join('-')).join(', ')}` : ''}`;
        return out;
      }
      const names = world.hosts.filter((h) => h.hostId).map((h) => h.name);
      const p = partitionCuts((params.shape as PartitionShape | undefined) ?? 'one', names, world.links.map((l) => [l.a, l.b] as const), seed);
      if (p.cuts.length === 0) throw new ResolveError(`a ${String(params.shape ?? 'one')} partition of these hosts cuts no link the cluster has`);
      out.links = p.cuts;
      out.hosts = names;
      out.groups = p.groups;
      out.summary = `${String(params.shape ?? 'one')} partition ${p.groups.map((g) => `{${g.join(',')}}`).join(' ')} (cuts ${p.cuts.map((c) => c.join('-')).join(', ')})`;
      return out;
    }
  }
  if (processFault) {
    const r: ProcessRole = role ?? (vms.length ? 'partition' : 'root');
    if (vms.length && (r === 'partition' || r === 'vmwp')) {
      for (const v of vms) {
        const p = processOf(world, v.host, r, v.vm);
        if (!p) throw new ResolveError(`VM ${v.vm} on ${v.host} has no ${r} process`);
        out.procs.push(p);
      }
      out.vms = vms;
      out.hosts = [...new Set(vms.map((v) => v.host))];
    } else {
      const hs = vms.length ? [...new Set(vms.map((v) => v.host))] : hosts;
      for (const h of hs) {
        const p = processOf(world, h, r, null);
        if (!p) throw new ResolveError(`host ${h} has no ${r} process`);
        out.procs.push(p);
      }
      out.hosts = hs;
      // Every VM of those hosts is affected by a host process's fault.
      out.vms = world.vms.filter((v) => hs.includes(v.host)).map(({ host, vm }) => ({ host, vm }));
    }
    const hostNameOf = (id: string): string => world.hosts.find((h) => h.hostId === id)?.name ?? id;
    out.processes = out.procs.map((p) => ({ host: hostNameOf(p.hostId), role: p.role, vm: p.vm, pid: p.pid }));
    out.summary = out.processes.map((p) => `${p.role}${p.vm ? ` of ${p.vm}` : ''} on ${p.host} (pid ${p.pid})`).join(', ');
    return out;
  }
  if (vms.length) {
    out.vms = vms;
    out.hosts = [...new Set(vms.map((v) => v.host))];
    out.summary = vms.map((v) => `VM ${v.vm} on ${v.host}`).join(', ');
  } else {
    out.hosts = hosts;
    out.vms = world.vms.filter((v) => hosts.includes(v.host)).map(({ host, vm }) => ({ host, vm }));
    out.summary = hosts.map((h) => `host ${h}`).join(', ');
  }
  return out;
}
