/**
 * A chaos experiment's schedule: the file's explicit faults and those drawn from its seed, as
 * one list of faults at offsets against concrete targets (`drawSchedule`).
 *
 * The draw is a pure function of the seed, the file and the world (the run's hosts, links and
 * VMs, each sorted by name), so the same seed and the same file give the same faults at the same
 * offsets against the same targets, with the same parameters and the same per-fault seeds: a
 * failing run replays from the `seed` its report names. Everything random comes from one
 * `seededRandom(seed)` stream, consumed in a fixed order; the explicit faults' seeds come from
 * streams of their own, so adding a random section does not change them.
 *
 * Random faults are drawn so that two never overlap on the same resource (a target; every link
 * and partition fault shares the network, so one never heals what another cut), and each one
 * starts and ends inside `random.between`. What a drawn fault does is taken from a small menu per
 * kind that a healthy cluster recovers from (kills restart their VM; vmbus faults drop, delay,
 * duplicate or reorder; link faults cut, delay or lose); corrupting packets and flipping bits are
 * for explicit faults.
 */
import { FAULT_STALL_MAX_VP, seededRandom, type FaultKind, type ProcessRole } from '@hvlab/protocol';
import { PARTITION_SHAPES, type FaultRequest } from './types.js';
import { PARTITION_MIN_HOSTS, randomCandidates, type ChaosMoveSpec, type ChaosSpec, type ChaosWorld } from './chaos-spec.js';

/** One fault of a schedule. */
export interface ScheduledFault {
  /** f1, f2, … in the order they start. */
  id: string;
  source: 'explicit' | 'random';
  /** Offset from the schedule's start (ms). */
  atMs: number;
  kind: FaultKind;
  target: string;
  role: ProcessRole | null;
  forMs: number;
  params: Record<string, unknown>;
  /** The fault's own draws (a selector's pick, a vmbus fault's fates). */
  seed: number;
}

/** Random faults start on this grid (ms), so a schedule reads well. */
export const SCHEDULE_GRID_MS = 100;
/** Tries to place a random fault where it overlaps nothing on its resource before it is placed anyway. */
const PLACE_TRIES = 32;

const u32 = (r: () => number): number => Math.floor(r() * 0x1_0000_0000) >>> 0;
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.min(xs.length - 1, Math.floor(r() * xs.length))]!;
/** A whole number in [lo, hi], on `grid`. */
const between = (r: () => number, lo: number, hi: number, grid = 1): number => {
  const a = Math.ceil(lo / grid);
  const b = Math.floor(hi / grid);
  return b <= a ? a * grid : (a + Math.floor(r() * (b - a + 1))) * grid;
};
const round2 = (x: number): number => Math.round(x * 100) / 100;

/** One live migration of a run: the file's (`moves:`) and those drawn from its seed (`random.moves`). */
export interface ScheduledMove extends ChaosMoveSpec {
  /** m1, m2, … in the order of their offsets (the file's first at equal offsets). */
  id: string;
  source: 'explicit' | 'random';
}

/**
 * The run's moves: the file's, and `random.moves` drawn from the seed on a stream of their own (so
 * asking for moves does not change the faults a seed draws, nor the faults the moves). Each drawn
 * move starts on the schedule's grid inside `random.between`, takes a VM of the workloads to a host
 * other than the one it is on by then (the file's moves and the drawn ones before it taken as done),
 * by one of `random.methods`. A pure function of the seed, the file and the world.
 */
export function drawMoves(seed: number, spec: Pick<ChaosSpec, 'moves' | 'random'>, world: ChaosWorld): ScheduledMove[] {
  // Its place in the file stays with the spec (for problems said at their place); a run's moves are by time.
  const explicit = spec.moves.map(({ fileIndex: _place, ...m }) => ({ ...m, options: { ...m.options }, source: 'explicit' as const }));
  const drawn: Array<Omit<ScheduledMove, 'id'>> = [];
  const rnd = spec.random;
  const vms = world.vms.map((v) => v.name).sort();
  if (rnd && rnd.moves > 0 && world.hosts.length >= 2 && vms.length > 0) {
    const r = seededRandom((seed ^ 0x6d6f7665) >>> 0);
    const times = Array.from({ length: rnd.moves }, () => between(r, rnd.betweenMs[0], Math.max(rnd.betweenMs[0], rnd.betweenMs[1] - 1), SCHEDULE_GRID_MS)).sort((a, b) => a - b);
    // Where each VM is at each offset: the file's moves at an offset come before the drawn ones.
    const where = new Map(world.vms.map((v) => [v.name, v.host]));
    let e = 0;
    for (const at of times) {
      for (; e < explicit.length && explicit[e]!.atMs <= at; e++) where.set(explicit[e]!.vm, explicit[e]!.to);
      const vm = pick(r, vms);
      const here = where.get(vm);
      const to = pick(r, world.hosts.filter((h) => h !== here));
      const m = pick(r, rnd.methods);
      drawn.push({ atMs: at, vm, to, method: m.method, options: { ...m.options }, source: 'random' });
      where.set(vm, to);
    }
  }
  return [...explicit, ...drawn]
    .map((m, i) => ({ m, i }))
    .sort((a, b) => a.m.atMs - b.m.atMs || a.i - b.i)
    .map(({ m }, i) => ({ id: `m${i + 1}`, ...m }));
}

/** One line for a move: "m2 +6.0s c1 → h2 by precopy+compress (random)". */
export function moveLine(m: ScheduledMove): string {
  return `${m.id} +${(m.atMs / 1000).toFixed(1)}s ${m.vm} → ${m.to} by ${m.method}${m.source === 'random' ? ' (random)' : ''}`;
}

/** The seed of explicit fault `i` (its own stream: independent of the random section). */
export function explicitFaultSeed(seed: number, i: number): number {
  return u32(seededRandom((seed ^ Math.imul(0x9e3779b9, i + 1)) >>> 0));
}

/** What a fault of `kind` on `target` occupies: two faults on one resource never overlap in a drawn schedule. */
export function faultResource(kind: FaultKind, target: string): string {
  return kind === 'link' || kind === 'partition' ? 'network' : target;
}

/** The role and parameters of a random fault of `kind` on `target`, drawn from `r`. */
function drawFault(r: () => number, kind: FaultKind, target: string, world: ChaosWorld): { role: ProcessRole | null; params: Record<string, unknown> } {
  const onHost = target.startsWith('host:');
  switch (kind) {
    case 'kill':
      return { role: pick(r, ['partition', 'vmwp'] as const), params: { restart: true } };
    case 'pause':
      return { role: onHost ? pick(r, ['root', 'hypervisor'] as const) : pick(r, ['partition', 'vmwp'] as const), params: {} };
    case 'vmbus': {
      const channel = pick(r, [null, 'heartbeat'] as const);
      const menu = pick(r, ['drop', 'delay', 'duplicate', 'reorder', 'signalDrop'] as const);
      const p: Record<string, unknown> = { channel };
      if (menu === 'delay') Object.assign(p, { delay: 1, delayMs: between(r, 20, 200, 10) });
      else p[menu] = round2(0.3 + r() * 0.7);
      return { role: null, params: p };
    }
    case 'interrupt-delay':
      return { role: null, params: { delayMs: between(r, 1, 20) } };
    case 'clock': {
      const sign = r() < 0.5 ? -1 : 1;
      return { role: null, params: { offsetMs: sign * between(r, 1000, 60_000, 1000) } };
    }
    case 'vp-stall': {
      // Every VP (null), but for a VM with more than the hypervisor stalls: those it does.
      const vps = world.vms.find((v) => `vm:${v.name}` === target)?.vps ?? 1;
      return { role: null, params: vps > FAULT_STALL_MAX_VP + 1 ? { vps: Array.from({ length: FAULT_STALL_MAX_VP + 1 }, (_, i) => i) } : {} };
    }
    case 'lp-shrink':
      // To 1: its targets have 2 LPs or more (randomCandidates).
      return { role: null, params: { lps: 1 } };
    case 'link': {
      const menu = pick(r, ['cut', 'delay', 'loss'] as const);
      if (menu === 'cut') return { role: null, params: { cut: true } };
      if (menu === 'delay') return { role: null, params: { delayMs: between(r, 50, 300, 10), jitterMs: between(r, 0, 20) } };
      return { role: null, params: { lossPercent: between(r, 10, 50) } };
    }
    case 'partition': {
      // Only shapes the host count can make (a majority of 2 is both: it cuts nothing).
      const shapes = PARTITION_SHAPES.filter((x) => PARTITION_MIN_HOSTS[x] <= world.hosts.length);
      return { role: null, params: { shape: pick(r, shapes) } };
    }
    case 'bitflip':
      return { role: null, params: {} };
  }
}

/**
 * The schedule of `spec` with seed `seed` in `world`: the explicit faults, then `random.count`
 * drawn ones, sorted by offset (explicit first at equal offsets, then as drawn) and numbered
 * f1, f2, …. Deterministic: the same arguments give a deep-equal result.
 */
export function drawSchedule(seed: number, spec: Pick<ChaosSpec, 'faults' | 'random' | 'durationMs'>, world: ChaosWorld): Array<ScheduledFault> {
  const out: Array<Omit<ScheduledFault, 'id'>> = spec.faults.map((f, i) => ({
    source: 'explicit', atMs: f.atMs, kind: f.kind, target: f.target, role: f.role, forMs: f.forMs, params: { ...f.params }, seed: f.seed ?? explicitFaultSeed(seed, i),
  }));
  const rnd = spec.random;
  if (rnd) {
    const r = seededRandom(seed);
    const busy = out.map((f) => ({ res: faultResource(f.kind, f.target), from: f.atMs, to: f.atMs + f.forMs }));
    // Only kinds with something the world lets them hit (an existing cluster's world is known only
    // now): the same list as the file's when every kind can hit something, so the same draws.
    const kinds = rnd.kinds.filter((k) => randomCandidates(k, world, rnd.targets).length > 0);
    for (let n = 0; n < rnd.count && kinds.length > 0; n++) {
      const kind = pick(r, kinds);
      const targets = randomCandidates(kind, world, rnd.targets);
      const forMs = between(r, rnd.forMs[0], rnd.forMs[1], SCHEDULE_GRID_MS);
      // Where it overlaps nothing on its resource, if such a place is found in a few draws.
      let target = '';
      let atMs = 0;
      for (let tries = 0; tries < PLACE_TRIES; tries++) {
        target = pick(r, targets);
        atMs = between(r, rnd.betweenMs[0], rnd.betweenMs[1] - forMs, SCHEDULE_GRID_MS);
        const res = faultResource(kind, target);
        if (!busy.some((b) => b.res === res && b.from < atMs + forMs && atMs < b.to)) break;
      }
      const { role, params } = drawFault(r, kind, target, world);
      busy.push({ res: faultResource(kind, target), from: atMs, to: atMs + forMs });
      out.push({ source: 'random', atMs, kind, target, role, forMs, params, seed: u32(r) });
    }
  }
  // A stable sort: explicit faults keep the file's order at equal offsets, drawn ones their draw order.
  return out
    .map((f, i) => ({ f, i }))
    .sort((a, b) => a.f.atMs - b.f.atMs || a.i - b.i)
    .map(({ f }, i) => ({ id: `f${i + 1}`, ...f }));
}

/** The nemesis's request for a scheduled fault of run `owner` (its id: `<owner>.<fault id>`). */
export function faultRequest(f: ScheduledFault, owner: string): FaultRequest {
  const req: FaultRequest = { kind: f.kind, target: f.target, forMs: f.forMs, params: { ...f.params }, owner, seed: f.seed, id: `${owner}.${f.id}` };
  if (f.role !== null) req.role = f.role;
  return req;
}

/** One line for a scheduled fault: "f3 +15.0s partition cluster for 5s (shape one)". */
/** Probabilities of a vmbus fault (0..1) and what they do, as a reader says it. */
const PROBABILITY_WORDS: Record<string, string> = {
  drop: 'drop', delay: 'delay', duplicate: 'duplicate', reorder: 'reorder', corrupt: 'corrupt', signalDrop: 'drop signals', signalDelay: 'delay signals',
};

/**
 * A fault's parameters as a reader says them ("every channel, delay 100 % by 140 ms", "loss 2 %"),
 * not as the request spells them ("channel null, delay 1, delayMs 140").
 */
export function paramsText(p: Record<string, unknown>): string {
  const parts: string[] = [];
  const pct = (v: unknown): string => (typeof v === 'number' ? `${Math.round(v * 1000) / 10} %` : String(v));
  for (const [k, v] of Object.entries(p)) {
    if (k === 'channel') parts.push(v === null ? 'every channel' : `channel ${String(v)}`);
    else if (k === 'delay' || k === 'signalDelay') {
      const ms = p[`${k}Ms`];
      parts.push(`${PROBABILITY_WORDS[k]} ${pct(v)}${typeof ms === 'number' ? ` by ${ms} ms` : ''}`);
    } else if ((k === 'delayMs' && 'delay' in p) || (k === 'signalDelayMs' && 'signalDelay' in p)) continue; // said with its probability
    else if (k in PROBABILITY_WORDS) parts.push(`${PROBABILITY_WORDS[k]} ${pct(v)}`);
    else if (k === 'lossPercent') parts.push(`loss ${String(v)} %`);
    else if (k === 'rateBps' && typeof v === 'number') parts.push(`rate ${v >= 1e6 ? `${Math.round(v / 1e5) / 10} Mbit/s` : `${Math.round(v / 100) / 10} kbit/s`}`);
    else if (k.endsWith('Ms') && typeof v === 'number') parts.push(`${k.slice(0, -2)} ${k === 'offsetMs' && v > 0 ? '+' : ''}${v} ms`);
    else if (k === 'skewPpm' && typeof v === 'number') parts.push(`skew ${v > 0 ? '+' : ''}${v} ppm`);
    else if ((k === 'gpa' || k === 'mask') && typeof v === 'number') parts.push(`${k} 0x${v.toString(16)}`);
    else if (v === true) parts.push(k); // a switch (restart, cut): its name says it
    else if (v === false || v === undefined) continue;
    else parts.push(`${k} ${v === null ? 'all' : String(v)}`);
  }
  return parts.join(', ');
}

export function scheduleLine(f: ScheduledFault): string {
  const params = paramsText(f.params);
  return `${f.id} +${(f.atMs / 1000).toFixed(1)}s ${f.kind}${f.role ? ` (${f.role})` : ''} ${f.target} for ${f.forMs / 1000}s${params ? ` (${params})` : ''}${f.source === 'random' ? ' [drawn]' : ''}`;
}

/**
 * The faults of a schedule that start while an earlier one holds the same resource (its target;
 * the network, for link and partition faults), with that earlier one: id → its id. The draw avoids
 * them while it finds room, but the first faults drawn can leave none (two link faults of 1.5-2 s
 * in a 4 s window), and then the nemesis refuses the second ("link h1-h2 is held by fault f2
 * already"): the run did not do what its schedule said, and `--check` did not tell.
 */
export function scheduleOverlaps(schedule: readonly ScheduledFault[]): Map<string, string> {
  const out = new Map<string, string>();
  schedule.forEach((f, i) => {
    const res = faultResource(f.kind, f.target);
    const earlier = schedule.slice(0, i).find((e) => faultResource(e.kind, e.target) === res && e.atMs <= f.atMs && f.atMs < e.atMs + e.forMs);
    if (earlier) out.set(f.id, earlier.id);
  });
  return out;
}

/** The lines `--check` prints for a schedule: scheduleLine, and for a fault that overlaps an earlier one on its resource, that it may be refused. */
export function scheduleLines(schedule: readonly ScheduledFault[]): string[] {
  const over = scheduleOverlaps(schedule);
  return schedule.map((f) => {
    const e = over.get(f.id);
    const res = faultResource(f.kind, f.target);
    return `${scheduleLine(f)}${e ? ` — starts while ${e} holds ${res === 'network' ? 'the network (link and partition faults share it)' : res}: the nemesis may refuse it` : ''}`;
  });
}
