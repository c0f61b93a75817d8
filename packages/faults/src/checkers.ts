/**
 * The checkers of a chaos experiment (issue 13), Jepsen's way: the run records what it saw (every
 * VM's progress counter and heartbeat status, every host's answers and peers, every fault's
 * record from the nemesis), and pure functions judge the record afterwards. Each returns whether
 * its property held, with evidence: the violations (each a sentence with the VM, the values and
 * the times, as seconds from the schedule's start) or, when it held, what it looked at.
 *
 *   liveness   every VM a fault touched has its heartbeat OK again within the bound after the fault
 *              ends, and every VM's last heartbeat is OK
 *   progress   a counter never goes backwards (a restart shows as a drop), except where a kill
 *              fault restarted that VM
 *   isolation  a VM or host no fault touched at the time kept making progress: no stall longer
 *              than the bound outside the windows of the faults that touched it
 *   memory     memdirty's check (QEMU's migration-test guest): every page's first byte equals the
 *              previous page's, except at most one place where it is one less
 *   cleanup    nothing left: processes, /dev/shm files, namespaces, active faults, the nemesis and
 *              the fabric (a new cluster), the run's VMs (an existing one)
 * and the recovery time of each fault: from its end until every VM it touched progresses again
 * with its heartbeat OK (or, for a link or partition, until the hosts hear each other again).
 *
 * What a fault touched is read from its record (`resolved`): a VM's own faults and its partition's
 * or worker's kill or pause touch that VM; a hypervisor's kill or pause and an lp-shrink touch the
 * host and every VM on it; a root's kill or pause touches the host (its management API), not its
 * VMs, which must run on; a link or partition touches no VM's progress. A sample the host did not
 * answer (its root paused, say) is unknown: it never counts as a stall by itself, though the same
 * counter on both sides of a gap does.
 */
import { isPlainObject } from '@hvlab/protocol';
import type { FaultRecord } from './types.js';
import type { ChaosWorld } from './chaos-spec.js';

/**
 * One VM of a `vmList` answer (a root's, from another process), as far as it can be read: whether
 * it is listed, its state, its progress counter and its memory (null: not said, or not a size).
 * The one reader of such an answer for the chaos runner, its moves and the nemesis.
 */
export function vmReading(list: unknown, vm: string): { listed: boolean; state: string | null; progress: number | null; memoryBytes: number | null } {
  if (!Array.isArray(list)) return { listed: false, state: null, progress: null, memoryBytes: null };
  for (const v of list as unknown[]) {
    if (!isPlainObject(v) || v.name !== vm) continue;
    const state = typeof v.state === 'string' && v.state.length <= 32 ? v.state : null;
    const w = v.workload;
    const p = isPlainObject(w) ? w.progress : null;
    const m = v.memoryBytes;
    return { listed: true, state, progress: typeof p === 'number' && Number.isFinite(p) ? p : null, memoryBytes: typeof m === 'number' && Number.isSafeInteger(m) && m > 0 ? m : null };
  }
  return { listed: false, state: null, progress: null, memoryBytes: null };
}


/** One reading of one VM. `answered` false: its host did not answer in time (unknown, not a stall). */
export interface VmSample {
  /** Epoch ms when its host's vmList answered (the state and progress); the heartbeat is asked for just after. */
  t: number;
  vm: string;
  host: string;
  answered: boolean;
  /** VmInfo.state (Running, Off, …); null: not answered, or the VM is not listed. */
  state: string | null;
  progress: number | null;
  /** The heartbeat integration service's status (OK, NoContact, LostCommunication); null: unknown. */
  heartbeat: string | null;
}

/** One reading of one host: did its management API answer, and how many heartbeats to each peer went unanswered in a row. */
export interface HostSample {
  t: number;
  host: string;
  answered: boolean;
  peersMissed: Record<string, number> | null;
}

/** A live migration the run made (`moves:` of the file), as it went. */
export interface MoveRecord {
  /** m1, m2, … in the file's order. */
  id: string;
  vm: string;
  from: string;
  to: string;
  /** As the file names it: precopy, postcopy+compress, … */
  method: string;
  /** Its offset in the file, and epoch ms when it was asked for and when its answer came (null: still going). */
  atMs: number;
  startedAt: number;
  endedAt: number | null;
  /**
   * The move's status at its end (completed, failed, cancelled), refused (the host did not take
   * it), timeout, or skipped (it waited for the VM's move before it, and the run ended first).
   */
  status: string;
  /** Null unless the move completed (a cancelled or failed move had no downtime to measure; moveOutcome). */
  downtimeMs: number | null;
  totalMs: number | null;
  error: string | null;
  /** Drawn from the seed (`random.moves`); absent for the file's own. */
  source?: 'random';
  /**
   * Epoch ms when the run gave up waiting for its answer and asked for its cancel (absent: it
   * answered in time). The run watched it on: `status` and `endedAt` say how and when it ended
   * (`timeout`: not even then), and a move that completed after all has no error but this note.
   */
  timedOutAt?: number;
  note?: string;
}

/** What a run recorded, for the checkers. */
export interface Observation {
  /** Epoch ms of the schedule's start (offsets are from here) and of the last sample. */
  t0: number;
  t1: number;
  world: ChaosWorld;
  vms: VmSample[];
  hosts: HostSample[];
  faults: FaultRecord[];
  /** The run's live migrations (none when the file asks for none). */
  moves?: MoveRecord[];
}

export type CheckName = 'liveness' | 'progress' | 'isolation' | 'memory' | 'cleanup' | 'placement';

export interface CheckResult {
  name: CheckName;
  held: boolean;
  /** Not run (turned off in the file, or nothing to check); `held` is then true. */
  skipped: boolean;
  /** One line: what held, or how many violations. */
  summary: string;
  /** The violations when it did not hold; what was looked at when it did. */
  evidence: string[];
  /** What could not be judged (no answer in a window, a memory that could not be read). */
  unknown: string[];
}

/** Most evidence lines kept per check (the count says how many there were). */
export const MAX_EVIDENCE = 40;

/** "+12.3s": an epoch time as seconds from `t0`. */
export function rel(t0: number, t: number): string {
  const s = (t - t0) / 1000;
  return `${s < 0 ? '-' : '+'}${Math.abs(s).toFixed(1)}s`;
}
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const fmt = (n: number): string => n.toLocaleString('en-US');

function result(name: CheckName, violations: string[], held: string[], unknown: string[], summaryHeld: string, skipped = false): CheckResult {
  const ok = violations.length === 0;
  const evidence = ok ? held : violations;
  const trimmed = evidence.length > MAX_EVIDENCE ? [...evidence.slice(0, MAX_EVIDENCE), `… and ${evidence.length - MAX_EVIDENCE} more`] : evidence;
  return {
    name, held: ok, skipped, evidence: trimmed, unknown: unknown.slice(0, MAX_EVIDENCE),
    summary: ok ? summaryHeld : `${violations.length} violation${violations.length === 1 ? '' : 's'}`,
  };
}

export function skippedCheck(name: CheckName, why: string): CheckResult {
  return { name, held: true, skipped: true, summary: `not checked: ${why}`, evidence: [], unknown: [] };
}

// ---- what a fault touched -----------------------------------------------------------------------

export interface FaultEffect {
  /** VMs whose progress or heartbeat the fault may stop. */
  vms: string[];
  /** Hosts whose management API the fault may silence (or slow). */
  hosts: string[];
  links: Array<[string, string]>;
  /** Epoch ms: the fault's window (to: its end, or the end of the record when it never ended). */
  from: number;
  to: number;
}

/** Where VM `vm` ran at epoch ms `t`: its workload's host, moved by every move that had completed by then. */
export function hostAt(world: ChaosWorld, moves: readonly MoveRecord[], vm: string, t: number): string | null {
  let host = world.vms.find((v) => v.name === vm)?.host ?? null;
  for (const m of [...moves].sort((a, b) => (a.endedAt ?? Infinity) - (b.endedAt ?? Infinity))) {
    if (m.vm === vm && m.status === 'completed' && m.endedAt !== null && m.endedAt <= t) host = m.to;
  }
  return host;
}

/**
 * What fault `f` touched in `world`, and when (a fault that never ended lasts until `t1`). A fault
 * of a host touches the VMs that ran there when it started (`moves`: where the run moved them).
 */
export function faultEffect(f: FaultRecord, world: ChaosWorld, t1: number, moves: readonly MoveRecord[] = []): FaultEffect {
  const r = f.resolved;
  const vms = new Set<string>();
  const hosts = new Set<string>();
  const vmsOn = (h: string): string[] => world.vms.filter((v) => hostAt(world, moves, v.name, f.startedAt) === h).map((v) => v.name);
  switch (f.kind) {
    case 'kill':
    case 'pause': {
      // Processes, as resolved; a record without them (it failed early) is read from its role and target.
      const procs = r.processes.length > 0
        ? r.processes.map((p) => ({ role: p.role, host: p.host, vm: p.vm }))
        : [...r.vms.map((v) => ({ role: f.role ?? 'partition', host: v.host, vm: v.vm as string | null })), ...(r.vms.length === 0 ? r.hosts.map((h) => ({ role: f.role ?? 'root', host: h, vm: null })) : [])];
      for (const p of procs) {
        // The fabric's links are in the resolution (r.links): no host or VM of its own.
        if (p.role === 'fabric') continue;
        if (p.role === 'partition' || p.role === 'vmwp') {
          if (p.vm) vms.add(p.vm);
        } else if (p.role === 'hypervisor') {
          hosts.add(p.host);
          for (const v of vmsOn(p.host)) vms.add(v);
        } else hosts.add(p.host);
      }
      break;
    }
    case 'lp-shrink':
      for (const h of r.hosts) {
        hosts.add(h);
        for (const v of vmsOn(h)) vms.add(v);
      }
      break;
    case 'link':
    case 'partition':
      break;
    default:
      for (const v of r.vms) vms.add(v.vm);
  }
  return {
    vms: [...vms].sort(), hosts: [...hosts].sort(), links: r.links.map(([a, b]): [string, string] => (a < b ? [a, b] : [b, a])),
    from: f.startedAt, to: f.endedAt ?? Math.max(t1, f.endsAt),
  };
}

/** A fault's name in evidence: its id without its owner's prefix (a run's `<owner>.f3` is f3). */
export function faultName(f: Pick<FaultRecord, 'id' | 'owner'>): string {
  return f.owner && f.id.startsWith(`${f.owner}.`) && f.id.length > f.owner.length + 1 ? f.id.slice(f.owner.length + 1) : f.id;
}

/** The fault's end as the checkers use it: when it ended, else (still active when the record was taken) null. */
const endOf = (f: FaultRecord): number | null => f.endedAt;

/** Whether `f` restarted VM `vm` (a kill of its partition, worker or host's hypervisor). */
function restarts(f: FaultRecord, vm: string, e: FaultEffect): boolean {
  return f.kind === 'kill' && e.vms.includes(vm);
}

function byVm(samples: readonly VmSample[]): Map<string, VmSample[]> {
  const m = new Map<string, VmSample[]>();
  for (const s of samples) {
    let l = m.get(s.vm);
    if (!l) m.set(s.vm, (l = []));
    l.push(s);
  }
  for (const l of m.values()) l.sort((a, b) => a.t - b.t);
  return m;
}

const known = (s: VmSample): boolean => s.answered && s.progress !== null;

// ---- recovery -----------------------------------------------------------------------------------

export interface RecoveryTime {
  id: string;
  kind: string;
  target: string;
  /** Epoch ms of the fault's end (null: it never ended while the run watched). */
  endedAt: number | null;
  /** What it touched: VMs, hosts (by management API), links. */
  affected: string[];
  /** From the fault's end until everything it touched was well again (ms); null: not seen within the run. */
  recoveredMs: number | null;
  /** How each part came back, or why it is not known. */
  detail: string;
}

/** When VM `vm` (samples `l`) progresses again after `e` (a sample above the one before it), and its heartbeat is OK; null: not seen. */
function vmBackAt(l: readonly VmSample[], e: number, until: number): { progress: number | null; heartbeat: number | null; counts: boolean } {
  let progress: number | null = null;
  let prev: VmSample | null = null;
  const counts = l.some(known);
  for (const s of l) {
    if (s.t >= e && progress === null && prev && known(s) && s.progress! > prev.progress!) progress = s.t;
    if (known(s)) prev = s;
  }
  return { progress, heartbeat: heartbeatBackAt(l, e, until), counts };
}

/**
 * When VM readings `l` show its heartbeat OK again after `e`, for good: the first OK reading after
 * the last one not OK in [e, until] (null: the last one there was not OK, or none was read). The
 * worker notices a lost heartbeat only after it has missed some, so a reading can still say OK
 * just after a fault that stopped it, and go bad a few seconds later: the first OK after the end
 * would be no recovery.
 */
function heartbeatBackAt(l: readonly VmSample[], e: number, until: number): number | null {
  let back: number | null = null;
  for (const s of l) {
    if (s.t < e || s.t > until || !s.answered || s.heartbeat === null) continue;
    if (s.heartbeat !== 'OK') back = null;
    else back ??= s.t;
  }
  return back;
}

/** Each fault's effect in `obs`, worked out once per observation (a schedule may hold 1000 faults). */
const effectsOf = ((cache) => (obs: Observation): Map<FaultRecord, FaultEffect> => {
  let m = cache.get(obs);
  if (!m) {
    m = new Map(obs.faults.map((f) => [f, faultEffect(f, obs.world, obs.t1, obs.moves)]));
    cache.set(obs, m);
  }
  return m;
})(new WeakMap<Observation, Map<FaultRecord, FaultEffect>>());

/** When the next fault after `f` that touches VM `vm` started (Infinity: none did). */
function nextTouch(obs: Observation, f: FaultRecord, vm: string): number {
  let next = Infinity;
  for (const [g, e] of effectsOf(obs)) {
    if (g !== f && g.startedAt > f.startedAt && g.startedAt < next && e.vms.includes(vm)) next = g.startedAt;
  }
  return next;
}

/**
 * When the link a–b carries heartbeats both ways again for good after `e`, up to `until` (the
 * next fault on the link, or the run's end): on each side, the first reading with none missed
 * to the other after the last reading that missed some (or had no heartbeat to it at all), as
 * heartbeatBackAt judges a VM's heartbeat. A host counts missed heartbeats only after they are
 * due, so a fault whose damage shows after its end (a kill of the fabric: the hosts notice the
 * dead links a heartbeat period later) read as recovered at once when the first clean reading
 * after the end counted.
 */
function linkBackAt(hosts: readonly HostSample[], a: string, b: string, e: number, until: number): number | null {
  let backA: number | null = null;
  let backB: number | null = null;
  for (const s of hosts) {
    if (s.t < e || s.t > until || !s.answered || !s.peersMissed) continue;
    if (s.host === a) backA = s.peersMissed[b] === 0 ? (backA ?? s.t) : null;
    if (s.host === b) backB = s.peersMissed[a] === 0 ? (backB ?? s.t) : null;
  }
  return backA !== null && backB !== null ? Math.max(backA, backB) : null;
}

/**
 * When the next fault on the link a–b started at or after `from` (`f`'s end; Infinity: none did).
 * One that started while `f` lasted and is over by its end (a kill of the fabric during a link's
 * delay) does not cut `f`'s window short.
 */
function nextLinkTouch(obs: Observation, f: FaultRecord, a: string, b: string, from: number): number {
  let next = Infinity;
  for (const [g, e] of effectsOf(obs)) {
    if (g !== f && g.startedAt >= from && g.startedAt < next && e.links.some(([x, y]) => (x === a && y === b) || (x === b && y === a))) next = g.startedAt;
  }
  return next;
}

/** The recovery time of every fault (see the module comment). */
export function recoveryTimes(obs: Observation): RecoveryTime[] {
  const vmSamples = byVm(obs.vms);
  const hostSamples = [...obs.hosts].sort((x, y) => x.t - y.t);
  return obs.faults.map((f) => {
    const eff = faultEffect(f, obs.world, obs.t1, obs.moves);
    const affected = [...eff.vms.map((v) => `vm:${v}`), ...eff.hosts.map((h) => `host:${h}`), ...eff.links.map(([a, b]) => `link:${a}-${b}`)];
    const base = { id: f.id, kind: f.kind, target: f.target, endedAt: f.endedAt, affected };
    const e = endOf(f);
    if (f.state === 'failed') return { ...base, recoveredMs: null, detail: `the fault failed${f.error ? `: ${f.error}` : ''}` };
    if (e === null) return { ...base, recoveredMs: null, detail: 'the fault had not ended when the run stopped watching' };
    const parts: string[] = [];
    let worst = 0;
    let unknown = false;
    for (const vm of eff.vms) {
      const b = vmBackAt(vmSamples.get(vm) ?? [], e, Math.min(obs.t1, nextTouch(obs, f, vm)));
      const pieces = [b.counts ? `progressing ${b.progress === null ? 'not seen' : `after ${secs(b.progress - e)}`}` : null, `heartbeat OK ${b.heartbeat === null ? 'not seen' : `after ${secs(b.heartbeat - e)}`}`].filter(Boolean);
      parts.push(`${vm}: ${pieces.join(', ')}`);
      if ((b.counts && b.progress === null) || b.heartbeat === null) unknown = true;
      else worst = Math.max(worst, (b.counts ? Math.max(b.progress!, b.heartbeat) : b.heartbeat) - e);
    }
    for (const h of eff.hosts) {
      const s = hostSamples.find((x) => x.host === h && x.t >= e && x.answered);
      parts.push(`host ${h} answering ${s ? `after ${secs(s.t - e)}` : 'not seen'}`);
      if (!s) unknown = true;
      else worst = Math.max(worst, s.t - e);
    }
    for (const [a, b] of eff.links) {
      const t = linkBackAt(hostSamples, a, b, e, Math.min(obs.t1, nextLinkTouch(obs, f, a, b, e)));
      parts.push(`${a} and ${b} hearing each other ${t === null ? 'not seen' : `after ${secs(t - e)}`}`);
      if (t === null) unknown = true;
      else worst = Math.max(worst, t - e);
    }
    if (parts.length === 0) return { ...base, recoveredMs: null, detail: 'it touched nothing the run watches' };
    return { ...base, recoveredMs: unknown ? null : Math.round(worst), detail: parts.join('; ') };
  });
}

// ---- liveness -----------------------------------------------------------------------------------

/** The last move of `vm` that was still going, or ended less than `boundMs` before the end of the run (`obs.t1`); null if none. */
function lateMoveOf(obs: Observation, vm: string, boundMs: number): MoveRecord | null {
  let late: MoveRecord | null = null;
  for (const m of obs.moves ?? []) {
    if (m.vm !== vm || m.status === 'skipped' || m.status === 'refused') continue;
    if (m.endedAt !== null && obs.t1 >= m.endedAt + boundMs) continue;
    if (!late || (m.endedAt ?? Infinity) >= (late.endedAt ?? Infinity)) late = m;
  }
  return late;
}

/**
 * The VMs that a move ended on less than `boundMs` before `obs.t1` and whose heartbeat was not read
 * OK since: the end of a run waits for them, as for what its faults touched (a moved VM's
 * integration services answer on the destination within a heartbeat period or two).
 */
export function movedNotBack(obs: Observation, boundMs: number): string[] {
  const vmSamples = byVm(obs.vms);
  const out: string[] = [];
  for (const v of obs.world.vms) {
    const m = lateMoveOf(obs, v.name, boundMs);
    if (!m) continue;
    const since = m.endedAt ?? obs.t1;
    const l = (vmSamples.get(v.name) ?? []).filter((s) => s.t >= since && s.answered && s.heartbeat !== null);
    if (l.length === 0 || l[l.length - 1]!.heartbeat !== 'OK') out.push(v.name);
  }
  return out;
}

/**
 * Every VM a fault touched has its heartbeat OK within `boundMs` after the fault ends, and every
 * VM's last answered heartbeat is OK. A window the run did not watch to its end is unknown, and so
 * is a VM moved less than `boundMs` before the end whose heartbeat is not OK yet.
 */
export function checkLiveness(obs: Observation, boundMs: number): CheckResult {
  const vmSamples = byVm(obs.vms);
  const bad: string[] = [];
  const good: string[] = [];
  const unknown: string[] = [];
  const t = (x: number): string => rel(obs.t0, x);
  for (const f of obs.faults) {
    if (f.state === 'failed') continue;
    const eff = faultEffect(f, obs.world, obs.t1, obs.moves);
    const e = endOf(f);
    for (const vm of eff.vms) {
      const what = `${vm} after ${faultName(f)} (${f.kind} ${f.target})`;
      if (e === null) {
        bad.push(`${what}: the fault was still active at ${t(obs.t1)}, the end of the run`);
        continue;
      }
      const l = vmSamples.get(vm) ?? [];
      // OK for good within the bound (a later fault on it starts a window of its own).
      const next = nextTouch(obs, f, vm);
      const back = heartbeatBackAt(l, e, Math.min(e + boundMs, next));
      if (back !== null) {
        good.push(`${what}: heartbeat OK ${secs(back - e)} after the fault ended at ${t(e)}`);
        continue;
      }
      if (next < e + boundMs) {
        good.push(`${what}: another fault touched it at ${t(next)}, before ${secs(boundMs)} had passed; judged with that one`);
        continue;
      }
      const after = l.filter((s) => s.t >= e && s.answered && s.heartbeat !== null);
      const last = after[after.length - 1];
      if (obs.t1 < e + boundMs) {
        unknown.push(`${what}: the run ended ${secs(obs.t1 - e)} after the fault ended at ${t(e)}, before the ${secs(boundMs)} bound, without an OK heartbeat${last ? ` (last: ${last.heartbeat} at ${t(last.t)})` : ''}`);
        continue;
      }
      const later = l.find((s) => s.t > e + boundMs && s.answered && s.heartbeat === 'OK');
      bad.push(`${what}: heartbeat not OK within ${secs(boundMs)} of the fault's end at ${t(e)}${after.length === 0 ? ' (no answer at all)' : ` (${after.filter((s) => s.t <= e + boundMs).map((s) => s.heartbeat).filter((v, i, a) => a.indexOf(v) === i).join(', ') || 'no answer'} until ${t(e + boundMs)})`}${later ? `; OK only at ${t(later.t)}` : '; never OK again'}`);
    }
  }
  // The end: every VM's last answered heartbeat is OK (a VM still within a fault's bound is judged above).
  for (const v of obs.world.vms) {
    const l = (vmSamples.get(v.name) ?? []).filter((s) => s.answered && s.heartbeat !== null);
    const last = l[l.length - 1];
    if (!last) {
      unknown.push(`${v.name}: no heartbeat status was read during the run`);
      continue;
    }
    const recent = obs.faults.some((f) => f.endedAt !== null && faultEffect(f, obs.world, obs.t1, obs.moves).vms.includes(v.name) && obs.t1 < f.endedAt + boundMs);
    // A move that ended within the bound of the end is a disturbance the run asked for, as a fault
    // is: the destination's heartbeat service reports its first exchange up to a period after.
    const moved = lateMoveOf(obs, v.name, boundMs);
    if (last.heartbeat === 'OK') good.push(`${v.name}: heartbeat OK at the end (${t(last.t)})`);
    else if (moved) unknown.push(`${v.name}: its heartbeat was ${last.heartbeat} at the end of the run (${t(last.t)}), ${secs(obs.t1 - (moved.endedAt ?? obs.t1))} after its move ${moved.id} ended, within the ${secs(boundMs)} bound`);
    else if (!recent) bad.push(`${v.name}: its heartbeat was ${last.heartbeat} at the end of the run (${t(last.t)})`);
  }
  return result('liveness', bad, good, unknown, `every VM's heartbeat was OK within ${secs(boundMs)} of its faults' ends and at the end`);
}

// ---- progress -----------------------------------------------------------------------------------

/**
 * A counter never goes backwards: a drop between two readings of a VM is a violation (a restart,
 * or progress lost), unless a kill fault that touched that VM was under way between them (until
 * `graceMs` after its end, when a restarted VM may still be coming up).
 */
export function checkProgress(obs: Observation, graceMs: number): CheckResult {
  const bad: string[] = [];
  const good: string[] = [];
  const t = (x: number): string => rel(obs.t0, x);
  const kills = obs.faults.filter((f) => f.kind === 'kill').map((f) => ({ f, e: faultEffect(f, obs.world, obs.t1, obs.moves) }));
  const vmSamples = byVm(obs.vms);
  for (const v of obs.world.vms) {
    const l = (vmSamples.get(v.name) ?? []).filter(known);
    if (l.length === 0) {
      good.push(`${v.name}: no progress counter was read (workload ${v.workload})`);
      continue;
    }
    let drops = 0;
    let excused = 0;
    for (let i = 1; i < l.length; i++) {
      const a = l[i - 1]!;
      const b = l[i]!;
      if (b.progress! >= a.progress!) continue;
      const k = kills.find(({ f, e }) => restarts(f, v.name, e) && a.t <= (f.endedAt ?? obs.t1) + graceMs && b.t >= f.startedAt);
      if (k) {
        excused++;
        good.push(`${v.name}: counter went from ${fmt(a.progress!)} to ${fmt(b.progress!)} between ${t(a.t)} and ${t(b.t)}, restarted by ${faultName(k.f)} (kill ${k.f.target})`);
        continue;
      }
      drops++;
      bad.push(`${v.name}: counter went back from ${fmt(a.progress!)} to ${fmt(b.progress!)} between ${t(a.t)} and ${t(b.t)} (the VM restarted or lost progress, and no kill fault explains it)`);
    }
    if (drops === 0) good.push(`${v.name}: ${l.length} readings, ${fmt(l[0]!.progress!)} → ${fmt(l[l.length - 1]!.progress!)}${excused ? `, ${excused} restart${excused === 1 ? '' : 's'} by a kill fault` : ', never backwards'}`);
  }
  return result('progress', bad, good, [], 'no counter went backwards except where a kill fault restarted its VM');
}

// ---- isolation ----------------------------------------------------------------------------------

type Span = [number, number];

/** The longest piece of [a, b] outside every span of `excused` (sorted or not). */
export function longestOutside(a: number, b: number, excused: readonly Span[]): Span | null {
  const ex = excused.filter(([x, y]) => y > a && x < b).sort((p, q) => p[0] - q[0]);
  let best: Span | null = null;
  let cur = a;
  for (const [x, y] of ex) {
    if (x > cur && (!best || x - cur > best[1] - best[0])) best = [cur, Math.min(x, b)];
    cur = Math.max(cur, y);
    if (cur >= b) break;
  }
  if (cur < b && (!best || b - cur > best[1] - best[0])) best = [cur, b];
  return best;
}

/** The states of a VM that make progress (or may, Paused being asked for only by the memory check at the end). */
const RUNNING_STATES = new Set(['Running']);

/**
 * VMs and hosts kept making progress whenever no fault touched them: a VM's counter never stayed
 * the same (between two readings) for longer than `stallMs` outside the windows of the faults that
 * touched it (each until `graceMs` after its end), and it was never seen not running there; a
 * host's management API never went unanswered for longer than `stallMs` outside its faults'
 * windows. Readings without an answer are unknown: only the same counter on both sides of a gap
 * is a stall.
 */
export function checkIsolation(obs: Observation, stallMs: number, graceMs: number): CheckResult {
  const bad: string[] = [];
  const good: string[] = [];
  const unknown: string[] = [];
  const t = (x: number): string => rel(obs.t0, x);
  const effects = obs.faults.map((f) => ({ f, e: faultEffect(f, obs.world, obs.t1, obs.moves) }));
  const vmSamples = byVm(obs.vms);
  for (const v of obs.world.vms) {
    const mine = effects.filter(({ e }) => e.vms.includes(v.name));
    // A move of the VM is a disturbance the run asked for, as a fault is: its blackout (and a
    // post-copy's waits for pages) stop the counter, and its old host stops listing it.
    const moved = (obs.moves ?? []).filter((m) => m.vm === v.name);
    const excused: Span[] = [...mine.map(({ e }): Span => [e.from, e.to + graceMs]), ...moved.map((m): Span => [m.startedAt, (m.endedAt ?? obs.t1) + graceMs])];
    const l = vmSamples.get(v.name) ?? [];
    const k = l.filter(known);
    let worst = 0;
    let violations = 0;
    // Runs of equal readings.
    for (let i = 0; i < k.length;) {
      let j = i;
      while (j + 1 < k.length && k[j + 1]!.progress === k[i]!.progress) j++;
      const [a, b] = [k[i]!.t, k[j]!.t];
      const piece = longestOutside(a, b, excused);
      const len = piece ? piece[1] - piece[0] : 0;
      worst = Math.max(worst, len);
      if (len > stallMs) {
        violations++;
        bad.push(`${v.name} (no fault touched it then): counter stayed at ${fmt(k[i]!.progress!)} for ${secs(len)}, from ${t(piece![0])} to ${t(piece![1])} (bound ${secs(stallMs)})`);
      }
      i = j + 1;
    }
    // Seen not running outside its faults' windows, once it had been seen running: before that it
    // had not started yet (a run stopped during its set-up flagged its VMs NotListed here).
    const firstRun = l.find((s) => s.answered && s.state !== null && RUNNING_STATES.has(s.state))?.t;
    if (firstRun === undefined && l.some((s) => s.answered)) unknown.push(`${v.name}: never seen running (the run stopped before it started, or it did not start)`);
    for (const s of l) {
      if (firstRun === undefined || s.t < firstRun) continue;
      if (!s.answered || s.state === null || RUNNING_STATES.has(s.state)) continue;
      if (excused.some(([x, y]) => s.t >= x && s.t <= y)) continue;
      violations++;
      bad.push(`${v.name} (no fault touched it then): ${s.state} at ${t(s.t)}`);
      break;
    }
    // Long stretches without an answer are unknown, said as such.
    let gapFrom: number | null = null;
    let longestGap: Span | null = null;
    for (const s of l) {
      if (!s.answered && gapFrom === null) gapFrom = s.t;
      if (s.answered && gapFrom !== null) {
        if (!longestGap || s.t - gapFrom > longestGap[1] - longestGap[0]) longestGap = [gapFrom, s.t];
        gapFrom = null;
      }
    }
    if (longestGap && longestGap[1] - longestGap[0] > stallMs) unknown.push(`${v.name}: no answer from its host from ${t(longestGap[0])} to ${t(longestGap[1])} (unknown, not counted as a stall)`);
    if (violations === 0) {
      good.push(k.length === 0
        ? `${v.name}: no progress counter was read (workload ${v.workload})`
        : `${v.name}: longest stall outside its faults' windows ${secs(worst)} over ${k.length} readings${mine.length ? ` (${mine.map(({ f }) => faultName(f)).join(', ')} excused)` : ''}`);
    }
  }
  const hostSamples = [...obs.hosts].sort((a, b) => a.t - b.t);
  for (const h of obs.world.hosts) {
    const excused: Span[] = effects.filter(({ e }) => e.hosts.includes(h)).map(({ e }) => [e.from, e.to + graceMs]);
    const l = hostSamples.filter((s) => s.host === h);
    let lastAnswer: number | null = null;
    let worst = 0;
    let violations = 0;
    for (let i = 0; i < l.length; i++) {
      const s = l[i]!;
      if (!s.answered) continue;
      if (lastAnswer !== null && i > 0 && !l[i - 1]!.answered) {
        const piece = longestOutside(lastAnswer, s.t, excused);
        const len = piece ? piece[1] - piece[0] : 0;
        worst = Math.max(worst, len);
        if (len > stallMs) {
          violations++;
          bad.push(`host ${h} (no fault touched it then): its management API did not answer for ${secs(len)}, from ${t(piece![0])} to ${t(piece![1])} (bound ${secs(stallMs)})`);
        }
      }
      lastAnswer = s.t;
    }
    if (l.length > 0 && !l[l.length - 1]!.answered && lastAnswer !== null) {
      const piece = longestOutside(lastAnswer, l[l.length - 1]!.t, excused);
      if (piece && piece[1] - piece[0] > stallMs) {
        violations++;
        bad.push(`host ${h} (no fault touched it then): its management API stopped answering at ${t(piece[0])} and had not answered by ${t(piece[1])}`);
      }
    }
    if (violations === 0 && l.length > 0) good.push(`host ${h}: longest silence outside its faults' windows ${secs(worst)} over ${l.length} readings`);
  }
  return result('isolation', bad, good, unknown, `nothing no fault touched stalled for more than ${secs(stallMs)}`);
}

// ---- memory -------------------------------------------------------------------------------------

export interface MemdirtyVerdict {
  held: boolean;
  pages: number;
  /** Places where a page is one less than the previous one (at most one is allowed: the pass in progress). */
  steps: number;
  /** Pages that break the pattern (first 10). */
  badPages: number[];
  badCount: number;
  /** The first page was written at least once (a guest that never ran would pass otherwise). */
  dirtied: boolean;
  /**
   * With the guest's own count of page writes: the first page's byte is the number of passes begun
   * (mod 256). Null without that count.
   */
  firstPageAgrees: boolean | null;
  message: string;
}

/**
 * QEMU's migration-test check on the bytes of a memdirty workload's data (from GPA 0x100000): the
 * guest adds one to the first byte of every page in turn, pass after pass, so each page's first
 * byte equals the previous page's except at most one place (where the pass is) where it is one
 * less. A lost or stale page, or a flipped bit, breaks the pattern.
 */
export function memdirtyCheck(bytes: Uint8Array, pageSize = 4096, written: number | null = null): MemdirtyVerdict {
  const pages = Math.floor(bytes.length / pageSize);
  let steps = 0;
  const bad: number[] = [];
  let badCount = 0;
  for (let p = 1; p < pages; p++) {
    const prev = bytes[(p - 1) * pageSize]!;
    const cur = bytes[p * pageSize]!;
    if (cur === prev) continue;
    if (cur === ((prev - 1) & 0xff)) steps++;
    else {
      badCount++;
      if (bad.length < 10) bad.push(p);
    }
  }
  // Without the guest's count, a first byte of 0 is taken for a guest that never ran; it is also
  // right once every 256 passes, so the count, when known, decides instead.
  const passes = written === null || pages === 0 ? null : Math.ceil(written / pages);
  const dirtied = pages > 0 && (written === null ? bytes[0] !== 0 : written > 0);
  const firstPageAgrees = passes === null ? null : bytes[0] === (passes & 0xff);
  const held = badCount === 0 && steps <= 1 && dirtied && firstPageAgrees !== false;
  const message = held
    ? `${pages} pages follow the pattern (${steps} step${steps === 1 ? '' : 's'}, first byte ${bytes[0]})`
    : !dirtied ? 'the first page was never written (the workload did not run)'
    : badCount > 0 ? `${badCount} page${badCount === 1 ? ' breaks' : 's break'} the pattern (first: ${bad.map((p) => `page ${p} = ${bytes[p * pageSize]} after ${bytes[(p - 1) * pageSize]}`).slice(0, 3).join(', ')})`
    : steps > 1 ? `${steps} places where a page is one less than the previous one (at most 1 is allowed)`
    : `the first page's byte is ${bytes[0]}, but the guest counted ${written} page writes: ${passes} passes, so ${passes! & 0xff} (mod 256)`;
  return { held, pages, steps, badPages: bad, badCount, dirtied, firstPageAgrees, message };
}

/** The memory check over the memdirty VMs read at the end (each its bytes, or why they could not be read). */
export function checkMemory(reads: ReadonlyArray<{ vm: string; bytes: Uint8Array | null; error: string | null; written?: number | null }>): CheckResult {
  if (reads.length === 0) return skippedCheck('memory', 'no memdirty workload');
  const bad: string[] = [];
  const good: string[] = [];
  const unknown: string[] = [];
  for (const r of reads) {
    if (!r.bytes) {
      unknown.push(`${r.vm}: its memory could not be read: ${r.error ?? 'no reason given'}`);
      continue;
    }
    const v = memdirtyCheck(r.bytes, 4096, r.written ?? null);
    (v.held ? good : bad).push(`${r.vm}: ${v.message}`);
  }
  if (good.length === 0 && bad.length === 0) bad.push(`no memdirty VM could be read (${unknown.length})`);
  return result('memory', bad, good, unknown, 'every memdirty VM\'s memory follows the pattern');
}

// ---- placement ----------------------------------------------------------------------------------

/** Where the run's VMs were listed once its moves had ended, host by host. */
export interface PlacementObservation {
  /** VM → the hosts whose list had it, with its state there. */
  listed: Record<string, Array<{ host: string; state: string | null }>>;
  /** Hosts that did not answer (what they hold is unknown). */
  unanswered: string[];
  /** Where the run's completed moves left each VM (its workload's host when none moved it). */
  expected: Record<string, string>;
}

/**
 * Every VM is on exactly one host, the one its completed moves left it on: never on two (a move
 * that let both copies live), never on none (a VM a move lost), never elsewhere. A VM lost in a
 * post-copy move that failed is a violation too, said as such: post-copy trades that risk for its
 * short blackout, and the check shows when the risk was taken.
 */
export function checkPlacement(p: PlacementObservation, moves: readonly MoveRecord[]): CheckResult {
  const bad: string[] = [];
  const good: string[] = [];
  const unknown = p.unanswered.map((h) => `host ${h} did not answer: the VMs it holds are unknown`);
  for (const [vm, want] of Object.entries(p.expected).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const on = p.listed[vm] ?? [];
    const mine = moves.filter((m) => m.vm === vm);
    const last = mine[mine.length - 1];
    const how = mine.length === 0 ? 'not moved' : mine.map((m) => `${m.id} ${m.from}→${m.to} ${m.status}${m.downtimeMs !== null && m.status === 'completed' ? ` (downtime ${m.downtimeMs} ms)` : ''}`).join(', ');
    if (on.length > 1) bad.push(`${vm} is on ${on.length} hosts: ${on.map((x) => `${x.host} (${x.state ?? '?'})`).join(', ')} (${how})`);
    else if (on.length === 0) {
      if (p.unanswered.length > 0) unknown.push(`${vm} is on no host that answered (${how})`);
      else bad.push(`${vm} is on no host: lost${last && last.status !== 'completed' && last.method.startsWith('postcopy') ? ` in post-copy move ${last.id} (${last.error ?? last.status})` : ''} (${how})`);
    } else if (on[0]!.host !== want) {
      // A last move not over when the run last saw it (past its timeout, and the run interrupted or
      // its watch over): the VM may be on either of its hosts, and the run only took one of them.
      if (last?.status === 'timeout' && (on[0]!.host === last.from || on[0]!.host === last.to)) good.push(`${vm} on ${on[0]!.host} only, one of the hosts of its move ${last.id}, not over when last seen (${how})`);
      else bad.push(`${vm} is on ${on[0]!.host}, not on ${want} where its moves left it (${how})`);
    } else good.push(`${vm} on ${want} only (${how})`);
  }
  const n = Object.keys(p.expected).length;
  return result('placement', bad, good, unknown, `each of ${n} VM${n === 1 ? '' : 's'} on exactly one host, where its moves left it`);
}

// ---- cleanup ------------------------------------------------------------------------------------

/** What was left after the run, as the runner looked (null: not looked at, e.g. an existing cluster's processes). */
export interface CleanupObservation {
  /** Processes of each host the run brought up. */
  hostProcesses: Array<{ host: string; hostId: string; pids: number[] }> | null;
  shmFiles: string[] | null;
  network: { namespaces: string[]; links: string[] } | null;
  /** Active faults: the run's own (an existing cluster), or every one (a new cluster); a string: the nemesis could not be asked. */
  activeFaults: FaultRecord[] | string | null;
  nemesisPids: number[] | null;
  fabricPids: number[] | null;
  /** The run's VMs still listed on some host (an existing cluster). */
  vmsLeft: string[] | null;
  /** The temporary home, if it is still there. */
  homeLeft: string | null;
  /** What the teardown itself said went wrong. */
  problems: string[];
}

export function checkCleanup(o: CleanupObservation): CheckResult {
  const bad: string[] = [...o.problems];
  const good: string[] = [];
  if (o.hostProcesses) {
    const left = o.hostProcesses.filter((h) => h.pids.length > 0);
    for (const h of left) bad.push(`host ${h.host} (${h.hostId}): processes left: ${h.pids.join(', ')}`);
    if (left.length === 0) good.push(`no process of hosts ${o.hostProcesses.map((h) => h.host).join(', ')}`);
  }
  if (o.shmFiles) {
    if (o.shmFiles.length > 0) bad.push(`/dev/shm files left: ${o.shmFiles.slice(0, 10).join(', ')}${o.shmFiles.length > 10 ? ` and ${o.shmFiles.length - 10} more` : ''}`);
    else good.push('no /dev/shm file');
  }
  if (o.network) {
    if (o.network.namespaces.length + o.network.links.length > 0) bad.push(`network left: namespaces ${o.network.namespaces.join(', ') || 'none'}; links ${o.network.links.join(', ') || 'none'}`);
    else good.push('no namespace or veth');
  }
  if (typeof o.activeFaults === 'string') bad.push(`the nemesis could not be asked for its active faults: ${o.activeFaults}`);
  else if (o.activeFaults) {
    if (o.activeFaults.length > 0) bad.push(`faults still active: ${o.activeFaults.map((f) => `${f.id} (${f.kind} ${f.target})`).join(', ')}`);
    else good.push('no active fault');
  }
  if (o.nemesisPids) {
    if (o.nemesisPids.length > 0) bad.push(`nemesis left running: pid ${o.nemesisPids.join(', ')}`);
    else good.push('no nemesis process');
  }
  if (o.fabricPids) {
    if (o.fabricPids.length > 0) bad.push(`fabric left running: pid ${o.fabricPids.join(', ')}`);
    else good.push('no fabric process');
  }
  if (o.vmsLeft) {
    if (o.vmsLeft.length > 0) bad.push(`VMs of the run left: ${o.vmsLeft.join(', ')}`);
    else good.push('no VM of the run');
  }
  if (o.homeLeft) bad.push(`the temporary home ${o.homeLeft} is still there`);
  return result('cleanup', bad, good, [], 'nothing was left behind');
}

// ---- a summary of the samples -------------------------------------------------------------------

export interface SampleSummary {
  vms: Array<{ vm: string; host: string; samples: number; unanswered: number; heartbeatOk: number; firstProgress: number | null; lastProgress: number | null }>;
  hosts: Array<{ host: string; samples: number; unanswered: number }>;
}

export function summarizeSamples(obs: Pick<Observation, 'world' | 'vms' | 'hosts'>): SampleSummary {
  const vmSamples = byVm(obs.vms);
  return {
    vms: obs.world.vms.map((v) => {
      const l = vmSamples.get(v.name) ?? [];
      const k = l.filter(known);
      return {
        vm: v.name, host: v.host, samples: l.length, unanswered: l.filter((s) => !s.answered).length, heartbeatOk: l.filter((s) => s.heartbeat === 'OK').length,
        firstProgress: k[0]?.progress ?? null, lastProgress: k[k.length - 1]?.progress ?? null,
      };
    }),
    hosts: obs.world.hosts.map((h) => {
      const l = obs.hosts.filter((s) => s.host === h);
      return { host: h, samples: l.length, unanswered: l.filter((s) => !s.answered).length };
    }),
  };
}
