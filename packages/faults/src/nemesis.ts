/**
 * The nemesis: the one process of a home that injects, times and undoes faults (Jepsen's word for
 * it). It holds every active fault with its undo, and ends each one
 *   - when its time is up (its own timer; and the enforcer of a VM's or a host's fault holds the
 *     same deadline, so that fault ends on time even if this process is gone),
 *   - when it is cleared (`hvlab fault clear`, an experiment's end, `hvlab down`/`cluster down`),
 *   - when its owner stops renewing its lease (the CLI or experiment that asked for it was killed:
 *     within OWNER_LEASE_MS every fault it owned is undone),
 *   - when its target vanished (a paused process that died, a VM that is gone, a cluster taken
 *     down): the fault is ended as target-gone rather than left stuck, Chaos Mesh's failure.
 *
 * Every start and end goes to `faults/log.jsonl`, each line with the same fields (`event`), `role`
 * being the process a kill or pause hit and null for the other kinds; a request its root refuses
 * before anything took effect is a refusal like the nemesis's own (no line, no record, no
 * number: `refusedUnapplied`). The active set (with what undoing needs: the
 * pids and start times of stopped processes, each link's state before) is written to
 * `faults/active.json` at every change (and before a change is made, so a nemesis killed half-way
 * leaves what it did there too), so a nemesis that died is cleaned up after by the next one
 * (`recoverLeftovers`), which its warden (nemesis-warden.ts), `fault clear` and `down` start. Fault
 * ids go on from the last one in the log (a caller's fN too), so the nemesis never names two faults
 * alike; a caller's own id is refused while a fault of that id is active, and may name a new fault
 * after that one ended (each log line carries its fault's `startedAt`, which tells them apart).
 *
 * Changes are queued one at a time (`serial`), but what waits on another process that a fault may
 * have stopped — a root asked to set or clear a VM's or a host's fault — runs outside the queue:
 * otherwise a fault injected into a VM of a host whose root is paused would hold up the end of
 * that very pause (and of every other fault) for the call's whole timeout.
 *
 * How each kind is enforced:
 *   kill, pause     signals from here (pid and start time checked first: never a recycled pid);
 *                   kill with restart starts a killed VM again when the fault ends
 *   vmbus, interrupt-delay, clock, vp-stall, bitflip
 *                   the VM's worker, through its host's root (`faultSet`, `faultClear`); a VM has
 *                   one interrupt-delay, clock and vp-stall fault at a time (each is one setting)
 *   lp-shrink       the hypervisor, through the root; one at a time per host
 *   link, partition the cluster's fabric (set/cut, and heal/set back to the state before: only
 *                   what the fault set and still holds, so a change made by hand meanwhile stays)
 */
import { appendFileSync, lstatSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  FAULT_ID_RE, FAULT_KINDS, FAULT_MAX_MS, PROCESS_ROLES, type ProcessRole, decodeFaultCounters, decodeLinkChange, isPlainObject, type FaultEndReason, type FaultKind, type HostFaultSpec, type VmbusFaultCounters, VM_NAME_RE, type LinkChange, type LinkView,
} from '@hvlab/protocol';
import { FileShapeError, pathsForRecord, readRegularFile, readRegularTail, testKnob, writeFileAtomic, makeDirs } from '@hvlab/runtime';
import { MgmtCallError, MgmtClient, readHost, removeVm } from '@hvlab/host';
import { MAX_OWNED_VMS, type OwnedVm } from './wire.js';
import { fabricStatus, isTemporaryHome, linkCut, linkHeal, linkSet } from '@hvlab/cluster';
import { hostSpecOf, parseTarget } from './request.js';
import { ResolveError, resolveTarget } from './resolve.js';
import { OWNER_LEASE_MS, OWNER_RENEW_MS, type FaultRecord, type FaultRequest } from './types.js';
import { homeAlive, markMoves, processStart, processState, readMoveMarks, readWorld, sameProcess, type MoveMarks, type World, type WorldProcess } from './world.js';
import { namesNoFault, rootClears, rootHostFaults, shrinkClearArgs, unheldHostFaults, unheldShrinkRecord, type RootHostFault } from './host-held.js';
import { BITFLIP_MEMORY_TIMEOUT_MS, bitflipDefault, bitflipDefaultPages, bitflipTargetsProblem, flipEach, type BitflipTarget } from './bitflip.js';
import { vmReading } from './checkers.js';

/**
 * How long an owner's lease lasts here without a renewal: OWNER_LEASE_MS, or less for a benchmark's
 * quick run, which waits one lapse out and measures nothing (HVLAB_TEST_OWNER_LEASE_MS: whole ms
 * from two renew periods up to OWNER_LEASE_MS).
 */
const LEASE_MS = testKnob('HVLAB_TEST_OWNER_LEASE_MS', 2 * OWNER_RENEW_MS, OWNER_LEASE_MS) ?? OWNER_LEASE_MS;

export class FaultRefused extends Error {
  override name = 'FaultRefused';
}

/**
 * A bit flip the nemesis refuses after its roots were asked for the target VMs' memory and before
 * any VM was asked to flip (a GPA outside one of them, a default GPA that cannot be drawn): a
 * refusal like the nemesis's own (`refusedUnapplied`: no record, no log line, no number). Any
 * other FaultRefused thrown while a fault is applied ("host h2 is not up", "there is no host h3",
 * a spec its kind refuses) is a failure, recorded as one, as it always was.
 */
export class BitflipRefused extends FaultRefused {
  override name = 'BitflipRefused';
}

export function faultsDir(home: string): string {
  return join(home, 'faults');
}
export function activeFile(home: string): string {
  return join(faultsDir(home), 'active.json');
}
export function faultLogFile(home: string): string {
  return join(faultsDir(home), 'log.jsonl');
}
/**
 * The owners of teardown leases a nemesis holds (a run's temporary cluster), while it holds any:
 * its warden starts a new nemesis when it is killed, which takes them on (`recoverTeardown`), so
 * a run and its nemesis and warden killed together still leave nothing once the lease lapses.
 */
export function teardownFile(home: string): string {
  return join(faultsDir(home), 'teardown.json');
}
/** The owner names a teardown file may hold (the wire's owner names). */
const TEARDOWN_OWNER_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$/;

/** What undoing one fault needs; plain data (it is written to active.json). */
interface Undo {
  /** Processes stopped by a pause (SIGCONT at the end, if still the same process). */
  stopped: WorldProcess[];
  /** Links set or cut, with their state before and (a set) what the fault made them. */
  links: Array<{ a: string; b: string; cut: boolean; before: LinkChange; wasCut: boolean; set?: LinkChange }>;
  /** Faults handed to a root: undone by faultClear there. */
  hostFaults: Array<{ host: string; vm: string | null }>;
  /** VMs to start again when a kill with restart ends. */
  restart: Array<{ host: string; vm: string; killed?: number }>;
}

interface Active {
  rec: FaultRecord;
  undo: Undo;
  timer: NodeJS.Timeout | null;
  /** Processes a pause or kill hit (their vanishing ends a pause). */
  procs: WorldProcess[];
  /**
   * What the fault lives in: each VM's worker (a VM's faults), each host's hypervisor (lp-shrink).
   * When none of them is the same process any more (the VM was turned off, restarted or moved
   * away; the host went down), the fault is over: target-gone.
   */
  holders: WorldProcess[];
  /** What each holder stands for in `rec.gone` ("VM web on h1", "host h1"). */
  holderNames: string[];
  /** Being applied through a root, outside the queue (see the header). */
  pending: boolean;
  /** Ended while it was being applied: undone as soon as that is over. */
  cancelled: FaultEndReason | null;
  /** Its id is the nemesis's own number (no id given): a refusal gives that number back. */
  autoId?: boolean;
  /** Resolves when the pending part is over (applied, failed or cancelled). */
  settled: Promise<void>;
  settle: () => void;
}

/** Kinds a root enforces (applied outside the queue). */
const REMOTE_KINDS: readonly FaultKind[] = ['vmbus', 'interrupt-delay', 'clock', 'vp-stall', 'bitflip', 'lp-shrink'];
/** Kinds that are one setting of a VM: one fault of each per VM at a time (a second would silently replace the first). */
const VM_EXCLUSIVE_KINDS: readonly FaultKind[] = ['interrupt-delay', 'clock', 'vp-stall'];
/** How much of the end of the log is read for the last fault id. */
const LOG_TAIL_BYTES = 4 * 1024 * 1024;

/** The highest number N of a fault id fN in the home's log and active file (0 if none). */
export function lastFaultNumber(home: string): number {
  let max = 0;
  for (const f of [faultLogFile(home), activeFile(home)]) {
    let text = '';
    try {
      // A file only (a FIFO in its place held a starting nemesis in open()), its tail.
      text = readRegularTail(f, LOG_TAIL_BYTES).bytes.toString('utf8');
    } catch {
      continue;
    }
    for (const m of text.matchAll(/"id":"f(\d{1,15})"/g)) max = Math.max(max, Number(m[1]));
  }
  return max;
}

/** A fault record's bookkeeping, not yet pending or settled. */
function newActive(rec: FaultRecord, procs: WorldProcess[], holders: WorldProcess[], pending: boolean, holderNames: string[] = []): Active {
  let settle: () => void = () => {};
  const settled = new Promise<void>((r) => (settle = r));
  const act: Active = { rec, undo: { stopped: [], links: [], hostFaults: [], restart: [] }, timer: null, procs, holders, holderNames, pending, cancelled: null, settled, settle };
  if (!pending) settle();
  return act;
}

export interface NemesisOptions {
  home: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  now?: () => number;
  /**
   * False for a nemesis that does not stay (`down`'s undo of what a gone one left): a fault whose
   * root does not answer its clear ends as left to its deadline, rather than asked again.
   */
  linger?: boolean;
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** A seed from a text (a fault id without a seed of its own). */
function seedOf(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h;
}

/** How long a pause fault waits for its processes to show as stopped before it says it is active anyway (ms). */
export const PAUSE_TAKE_MS = 2000;

/** How often a fault whose root did not answer its clear is asked again (Nemesis.linger). */
export const LINGER_RETRY_MS = 2000;
/** How long a recovering nemesis waits for a root (it is not ready, and not serving, until recovery is over). */
const RECOVERY_ROOT_MS = 2000;

/**
 * Whether a root's call failed without an answer while the fault may still hold there: it timed
 * out (a paused or busy root) or its socket failed. A root that exited (HostGone) may be restarted
 * by its hypervisor, and the worker keeps the fault meanwhile: asked again too (a host that is
 * gone whole ends the asking, its workers gone).
 */
function unanswered(e: unknown): boolean {
  return e instanceof MgmtCallError && ['Timeout', 'SocketFailed', 'SendFailed', 'HostGone'].includes(e.code);
}

/** Whether host `name`'s hypervisor (the host's anchor: its workers die with it) still runs. */
function hypervisorRuns(world: World | null, name: string): boolean {
  const h = world?.hosts.find((x) => x.name === name);
  const rec = h ? readHost(h.paths) : null;
  return rec !== null && processStart(rec.pids.hypervisor) !== null;
}

/** Owners whose leases one nemesis holds at once (renew refuses a new one past it). */
export const MAX_OWNERS = 1024;

/**
 * Resolves once every process of `pids` is stopped (its /proc state T or t) or gone, or after `ms`.
 * Looks each millisecond: a stop is taken as soon as the process next runs, mostly at once.
 */
export async function untilStopped(pids: readonly number[], ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (pids.every((pid) => { const st = processState(pid); return st === null || st === 'T' || st === 't' || st === 'Z' || st === 'X'; })) return true;
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, 1));
  }
}

export class Nemesis {
  private readonly home: string;
  private readonly active = new Map<string, Active>();
  private readonly ended: FaultRecord[] = [];
  private readonly owners = new Map<string, number>();
  /** Faults a nemesis before this one left, undone at start: reported by the first `clear` of everything. */
  private recovered: FaultRecord[] = [];
  /** Ids whose end is still being undone through a root (not to be reused until it is over). */
  /** Faults being undone: out of `active`, not yet in `ended`; `list` shows them as active until they are. */
  private readonly ending = new Map<string, FaultRecord>();
  private next: number;
  private readonly say: (msg: string, fields?: Record<string, unknown>) => void;
  private readonly now: () => number;
  /** Serialises changes (inject, end) so the active file and the links never race. */
  private chain: Promise<unknown> = Promise.resolve();
  private watchTimer: NodeJS.Timeout | null = null;
  lastActivity: number;

  constructor(opts: NemesisOptions) {
    this.home = opts.home;
    this.say = opts.log ?? (() => {});
    this.now = opts.now ?? Date.now;
    this.lingers = opts.linger !== false;
    this.lastActivity = this.now();
    makeDirs(faultsDir(this.home), 0o700);
    this.next = lastFaultNumber(this.home) + 1;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private event(event: string, rec: FaultRecord, extra: Record<string, unknown> = {}): void {
    // `startedAt` with `id` names one fault: a caller's id may name a later fault once this one ended.
    const line = { time: new Date(this.now()).toISOString(), event, id: rec.id, startedAt: rec.startedAt, kind: rec.kind, target: rec.target, role: rec.role, summary: rec.resolved.summary, owner: rec.owner, forMs: rec.forMs, ...extra };
    try {
      appendFileSync(faultLogFile(this.home), JSON.stringify(line) + '\n', { mode: 0o600 });
    } catch { /* the process log has it too */ }
    this.say(`fault ${rec.id} ${event}`, line);
  }

  private persist(): void {
    const list = [...this.active.values(), ...this.clearing.values(), ...[...this.lingering.values()].map((l) => l.act)].map((a) => ({ rec: a.rec, undo: a.undo }));
    try {
      if (list.length === 0) rmSync(activeFile(this.home), { force: true });
      else writeFileAtomic(activeFile(this.home), JSON.stringify(list) + '\n');
    } catch (e) {
      this.say('cannot write the active faults file', { err: errText(e) });
    }
  }

  /** Faults in force: active, and those ended whose root has not answered the clear yet (a nemesis with any stays). */
  get activeCount(): number {
    return this.active.size + this.ending.size;
  }

  /** Owners whose lease is still good. */
  get liveOwners(): number {
    const t = this.now();
    return [...this.owners.values()].filter((x) => t - x < LEASE_MS).length;
  }

  list(all: boolean): FaultRecord[] {
    // A fault whose undo is under way (a root asked to clear it) is still listed, as active: it is
    // not undone yet, and a caller waiting for the list to empty must not see it vanish between
    // the two lists.
    const act = [...[...this.active.values()].map((a) => a.rec), ...this.ending.values()];
    return (all ? [...this.ended, ...act] : act).sort(faultOrder);
  }

  /**
   * As `list`, with each active vmbus fault's counters so far, asked of the roots of its VMs
   * (outside the queue; a root that does not answer within 2 s leaves its VMs' counters as they
   * were last known).
   */
  async listWithCounters(all: boolean): Promise<FaultRecord[]> {
    const recs = this.list(all);
    const live = [...this.active.values()].filter((a) => a.rec.kind === 'vmbus' && !a.pending);
    const hosts = [...new Set(live.flatMap((a) => a.rec.resolved.vms.map((v) => v.host)))];
    if (hosts.length === 0) return recs;
    const world = await readWorld(this.home, { links: false }).catch(() => null);
    if (!world) return recs;
    await Promise.all(hosts.map(async (host) => {
      const a = await this.hostCall<unknown>(world, host, 'faultList', {}, 2000).catch(() => null);
      for (const [key, id, counters] of rootFaultCounters(a, host)) {
        const act = live.find((x) => x.rec.id === id);
        if (act) (act.rec.counters ??= {})[key] = counters;
      }
    }));
    return recs;
  }

  renew(owner: string, teardown = false, vms: OwnedVm[] | null = null): void {
    this.lastActivity = this.now();
    // A bounded table: a flood of renews under fresh names grew this process by ~100 MB in 8 s
    // (each stays until its lease lapses). A real home has a few owners (CLIs, runs).
    if (!this.owners.has(owner) && this.owners.size >= MAX_OWNERS) throw new FaultRefused(`this nemesis holds ${MAX_OWNERS} owners' leases, its most: no new owner until one lapses`);
    // A teardown lease removes the home when it ends: only a run's temporary home (its marker),
    // never a user's home, whoever asks.
    if (teardown && !this.teardownOwners.has(owner) && !isTemporaryHome(this.home)) {
      throw new FaultRefused(`${this.home} is not a run's temporary home: no lease may take it down and remove it`);
    }
    this.owners.set(owner, this.now());
    if (teardown && !this.teardownOwners.has(owner)) {
      this.teardownOwners.add(owner);
      this.persistTeardown();
    }
    // The VMs it made so far (a renew that names them names all): they go when its lease lapses.
    // Not named (an inject's implicit renew): the last list stands. An empty list releases them.
    if (vms === null) return;
    if (vms.length > 0) this.ownerVms.set(owner, vms.slice(0, MAX_OWNED_VMS));
    else this.ownerVms.delete(owner);
  }

  /**
   * The owner is done (wire `handover`): its lease lapses now, and the next pass of the watch does
   * what a lapse does. False when it holds no lease here.
   */
  handOver(owner: string): boolean {
    if (!this.owners.has(owner)) return false;
    this.owners.set(owner, -Infinity);
    return true;
  }

  /** VMs each owner made (a chaos run on an existing cluster), removed when its lease lapses. */
  private readonly ownerVms = new Map<string, OwnedVm[]>();

  /**
   * Turns off and deletes the VMs a lapsed owner made: a chaos run on the user's cluster killed
   * with SIGKILL left its workload VMs running there. A VM already gone is fine; one that cannot
   * be removed is said in the log.
   */
  private async removeOwnedVms(owner: string, vms: OwnedVm[]): Promise<void> {
    const world = await readWorld(this.home).catch(() => null);
    if (!world) return;
    for (const { host, vm, id } of vms) {
      let c: MgmtClient;
      try {
        c = this.mgmt(world, host);
      } catch {
        continue; // its host is gone: so is the VM
      }
      try {
        // By id: a VM of the name made since by someone else is not the owner's (NotFound, done).
        await removeVm(c, vm, id);
        this.say('owner lease lapsed: removed a VM it made (or it was gone)', { owner, host, vm, id });
      } catch (e) {
        this.say('owner lease lapsed: a VM it made was not removed', { owner, host, vm, err: errText(e) });
      } finally {
        c.close();
      }
    }
  }

  private persistTeardown(): void {
    try {
      if (this.teardownOwners.size === 0) rmSync(teardownFile(this.home), { force: true });
      else writeFileAtomic(teardownFile(this.home), JSON.stringify([...this.teardownOwners]) + '\n');
    } catch (e) {
      this.say('cannot write the teardown leases file', { err: errText(e) });
    }
  }

  /**
   * Takes on the teardown leases a nemesis before this one held (`teardownFile`), as leases renewed
   * now: a holder still alive renews on; one that is gone lets it lapse, and the home goes as it
   * would have. Only on a run's temporary home; the file is read as input (a bounded regular file
   * of owner names), and anything else in it is passed over. Returns how many it took on.
   */
  recoverTeardown(): number {
    let v: unknown;
    try {
      v = JSON.parse(readRegularFile(teardownFile(this.home), 256 * 1024).toString('utf8'));
    } catch (e) {
      // Not there: nothing. Damaged (not JSON, not a file, too large): it goes, or its warden
      // would start a nemesis for it again and again; a directory in its place stays (the warden
      // counts a file only).
      if (!(e as NodeJS.ErrnoException).code || e instanceof FileShapeError) {
        try {
          rmSync(teardownFile(this.home), { force: true });
        } catch { /* a directory */ }
        this.say('the teardown leases file a previous nemesis left is damaged: nothing of it was taken on', { err: errText(e) });
      }
      return 0;
    }
    if (!isTemporaryHome(this.home) || !Array.isArray(v)) {
      rmSync(teardownFile(this.home), { force: true });
      return 0;
    }
    let n = 0;
    for (const o of v.slice(0, MAX_OWNERS)) {
      if (typeof o !== 'string' || !TEARDOWN_OWNER_RE.test(o) || this.teardownOwners.has(o)) continue;
      this.owners.set(o, this.now());
      this.teardownOwners.add(o);
      n++;
    }
    this.persistTeardown();
    if (n > 0) this.say('took on the teardown leases of the nemesis before this one', { owners: [...this.teardownOwners] });
    return n;
  }

  /** Whether an owner's lease takes the home down when it lapses (a run's temporary cluster, maybe still coming up). */
  get holdsTeardown(): boolean {
    return this.teardownOwners.size > 0;
  }

  /** Owners whose lapsed lease takes the home down (a run's temporary cluster). */
  private readonly teardownOwners = new Set<string>();
  /** Called when such an owner's lease lapsed, after its faults ended (nemesis-main takes the home down). */
  onTeardown: ((owner: string) => void) | null = null;

  /** A client for host `name`'s management API (fresh each time: a client whose host died stays broken). */
  private mgmt(world: World, name: string): MgmtClient {
    const h = world.hosts.find((x) => x.name === name);
    if (!h) throw new FaultRefused(`there is no host ${name}`);
    const rec = readHost(h.paths);
    if (!rec) throw new FaultRefused(`host ${name} is not up`);
    return new MgmtClient(pathsForRecord(h.paths, rec).mgmtEndpoint, { watch: rec });
  }

  private async hostCall<T>(world: World, host: string, op: 'faultSet' | 'faultClear' | 'faultList' | 'vmStart' | 'vmList', args: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    const c = this.mgmt(world, host);
    try {
      return await c.request<T>(op, args, timeoutMs);
    } finally {
      c.close();
    }
  }

  inject(req: FaultRequest): Promise<FaultRecord> {
    this.lastActivity = this.now();
    if (req.owner) this.renew(req.owner);
    const marks = this.moveMarksInOrder(req);
    const entered = marks === null ? this.serial(() => this.begin(req, new Map())) : marks.then((m) => this.serial(() => this.begin(req, m)));
    return entered.then(async ({ act, world }) => {
      if (act.pending) await this.applyRemote(world, act);
      return act.rec;
    });
  }

  /** Move marks read before a request's turn, one request after another (`moveMarksInOrder`). */
  private marksChain: Promise<unknown> = Promise.resolve();
  private marksPending = 0;

  /**
   * What the roots say of the copies of a VM that runs on more than one host (a live migration's
   * source and destination), for a request aimed at VMs: read before the request enters the queue
   * of changes, since a root may be paused by a fault (asking it in the queue would hold up that
   * fault's end), and in the order the requests came, so that they enter the queue in that order.
   * Null when the request needs none and none is being read (it enters the queue at once, as before).
   */
  private moveMarksInOrder(req: FaultRequest): Promise<MoveMarks> | null {
    const t = parseTarget(req.target);
    const needed = t.ok && (t.value.t === 'vm' || t.value.t === 'host-of' || t.value.t === 'vms');
    if (!needed && this.marksPending === 0) return null;
    this.marksPending++;
    const p = this.marksChain.then(async (): Promise<MoveMarks> => {
      if (!needed) return new Map();
      // Only the VMs: the links are not needed here, and the fabric is not asked twice.
      const world = await readWorld(this.home, { links: false }).catch(() => null);
      return world ? await readMoveMarks(world) : new Map();
    }).finally(() => {
      this.marksPending--;
    });
    this.marksChain = p.catch(() => undefined);
    return p;
  }

  /**
   * In the queue: resolves the target, checks it against the active faults, and applies what the
   * nemesis does itself (signals, links). A fault a root enforces is entered as pending and is
   * applied by `applyRemote`, outside the queue.
   */
  private async begin(req: FaultRequest, marks: MoveMarks): Promise<{ act: Active; world: World }> {
    // A number is taken only by a fault that is entered: a refused request leaves no gap in them.
    // An id in use (one a user chose) is passed over.
    let auto = this.next;
    while (!req.id && (this.active.has(`f${auto}`) || this.ending.has(`f${auto}`))) auto++;
    const id = req.id ?? `f${auto}`;
    // A caller's id names one fault at a time: a second fault under an active id would make the
    // log's start and end lines of the two indistinguishable, and `fault clear ID` ambiguous. Once
    // the fault has ended, the id may name a new one (the log tells them apart by `startedAt`).
    const holder = this.active.get(id)?.rec;
    if (holder) throw new FaultRefused(`fault ${id} is active already (${holder.kind} on ${holder.resolved.summary}, ${Math.max(0, Math.ceil((holder.endsAt - this.now()) / 1000))} s left): "hvlab fault clear ${id}" ends it; or give another --id`);
    if (this.ending.has(id)) throw new FaultRefused(`fault ${id} is still being undone: give another --id, or wait until "hvlab fault list" no longer shows it`);
    const seed = req.seed ?? seedOf(id);
    const target = parseTarget(req.target);
    if (!target.ok) throw new FaultRefused(target.message);
    // A paused fabric answers nothing, so the link's resolution below would say there is no link
    // ("no cluster fabric answers"): the reason is said first.
    if (req.kind === 'link' || req.kind === 'partition') {
      const paused = [...this.active.values()].find((a) => a.rec.kind === 'pause' && a.rec.resolved.processes.some((p) => p.role === 'fabric'));
      if (paused) throw new FaultRefused(`the fabric is paused by fault ${paused.rec.id}: no link can change until it runs again`);
    }
    const world = await readWorld(this.home);
    if (world.hosts.length === 0) throw new FaultRefused(`nothing is up in ${this.home} ("hvlab up" or "hvlab cluster up" first)`);
    markMoves(world, marks);
    let res;
    try {
      res = resolveTarget(world, req.kind, target.value, req.role ?? null, seed, req.params ?? {});
    } catch (e) {
      if (e instanceof ResolveError) throw new FaultRefused(e.message);
      throw e;
    }
    const { procs, groups, ...resolved } = res;
    const start = this.now();
    const rec: FaultRecord = {
      id, kind: req.kind, target: req.target, role: req.kind === 'kill' || req.kind === 'pause' ? (resolved.processes[0]?.role ?? null) : null,
      params: { ...(req.params ?? {}) }, owner: req.owner ?? null, seed, forMs: req.forMs, resolved,
      state: 'active', startedAt: start, endsAt: start + req.forMs, endedAt: null, endReason: null, error: null, effect: groups ? { groups } : null,
    };
    // One fault at a time per process, per link, per VM setting and per host's LPs: undoing
    // overlapping ones could not be right (the first to end would undo the other too).
    // A fault on the fabric lists every link as its effect but changes none: a kill overlaps link
    // faults freely (the restarted server takes their state back), while a pause takes none
    // beside it (a paused fabric can neither set a link nor undo one that ends meanwhile).
    const changesLinks = (k: string): boolean => k === 'link' || k === 'partition';
    const pausesFabric = (kind: string, r: { processes: Array<{ role: string }> }): boolean => kind === 'pause' && r.processes.some((p) => p.role === 'fabric');
    for (const a of this.active.values()) {
      if (procs.some((p) => a.procs.some((q) => q.pid === p.pid && a.rec.kind === 'pause'))) throw new FaultRefused(`that process is paused by fault ${a.rec.id} already`);
      if (changesLinks(req.kind) && pausesFabric(a.rec.kind, a.rec.resolved)) throw new FaultRefused(`the fabric is paused by fault ${a.rec.id}: no link can change until it runs again`);
      const busy = changesLinks(a.rec.kind) && (changesLinks(req.kind) || pausesFabric(req.kind, resolved)) ? a.rec.resolved.links.map(([x, y]) => `${x}|${y}`) : [];
      const clash = resolved.links.find(([x, y]) => busy.includes(`${x}|${y}`) || busy.includes(`${y}|${x}`));
      if (clash) throw new FaultRefused(`link ${clash.join('-')} is held by fault ${a.rec.id} already${changesLinks(req.kind) ? '' : ': a paused fabric could not end it'}`);
      if (VM_EXCLUSIVE_KINDS.includes(req.kind) && a.rec.kind === req.kind) {
        const vm = a.rec.resolved.vms.find((v) => resolved.vms.some((w) => w.vm === v.vm && w.host === v.host))?.vm;
        if (vm !== undefined) throw new FaultRefused(`VM ${vm} has a ${req.kind} fault already (${a.rec.id}); a VM takes one at a time (clear it first)`);
      }
      if (req.kind === 'lp-shrink' && a.rec.kind === 'lp-shrink') {
        const h = a.rec.resolved.hosts.find((x) => resolved.hosts.includes(x));
        if (h !== undefined) throw new FaultRefused(`host ${h} has an lp-shrink fault already (${a.rec.id}); a host takes one at a time (clear it first)`);
      }
    }
    const hostIdOf = (name: string): string | null => world.hosts.find((h) => h.name === name)?.hostId ?? null;
    const holders: WorldProcess[] = [];
    const holderNames: string[] = [];
    if (req.kind === 'lp-shrink') {
      for (const h of resolved.hosts) {
        const hv = world.processes.find((p) => p.role === 'hypervisor' && p.hostId === hostIdOf(h));
        if (hv) {
          holders.push(hv);
          holderNames.push(`host ${h}`);
        }
      }
    } else if (REMOTE_KINDS.includes(req.kind)) {
      for (const v of resolved.vms) {
        const w = world.processes.find((p) => p.role === 'vmwp' && p.vm === v.vm && p.hostId === hostIdOf(v.host));
        if (w) {
          holders.push(w);
          holderNames.push(`VM ${v.vm} on ${v.host}`);
        }
      }
    }
    const act = newActive(rec, procs, holders, REMOTE_KINDS.includes(req.kind), holderNames);
    act.autoId = !req.id;
    // Entered before anything is applied (and written down as it goes): a nemesis killed
    // half-way leaves what it did in active.json.
    this.active.set(id, act);
    // A caller's id of the nemesis's own form (fN) moves the numbering past it, as the log's
    // ids do at start (lastFaultNumber): a later fN of the nemesis's never repeats it.
    const own = /^f(\d{1,15})$/.exec(id);
    if (!req.id) this.next = auto + 1;
    else if (own && Number(own[1]) >= this.next) this.next = Number(own[1]) + 1;
    if (act.pending) {
      this.persist();
      return { act, world };
    }
    try {
      await this.apply(world, rec, procs, act.undo);
    } catch (e) {
      this.active.delete(id);
      // Kept in the file while what it did is undone (a write by another change meanwhile would
      // have left it out, and a nemesis killed then left its links as they were set).
      this.clearing.set(id, act);
      throw await this.failed(world, act, e);
    }
    this.commit(act);
    return { act, world };
  }

  /** The fault is on: written down, logged, and timed. */
  private commit(act: Active): void {
    this.persist();
    this.event('start', act.rec);
    act.timer = setTimeout(() => void this.end(act.rec.id, 'expired'), Math.max(0, act.rec.endsAt - this.now()));
  }

  /** Undoes whatever part of `act` started and records it as failed; answers the error to throw. */
  private async failed(world: World | null, act: Active, e: unknown): Promise<FaultRefused> {
    const rec = act.rec;
    const problems = await this.undoAll(world, act).catch((x: unknown) => [errText(x)]);
    this.clearing.delete(rec.id);
    this.ending.delete(rec.id);
    const refused = e instanceof FaultRefused ? e : new FaultRefused(`fault ${rec.id} (${rec.kind} on ${rec.resolved.summary}) failed: ${errText(e)}`);
    if (act.undo.hostFaults.length > 0 && this.lingers) {
      // A set its root had not answered counts its time from when the root takes it, at the
      // earliest now: the deadline that ends the asking is counted from here.
      rec.startedAt = this.now();
      rec.endsAt = rec.startedAt + rec.forMs;
      // What may have landed where its root did not answer the clear is still in force there: the
      // fault is ending (listed, asked again) rather than failed and gone.
      this.event('failed', rec, { error: errText(e), problems });
      this.linger(act, 'failed', [`failed: ${errText(e)}`, ...problems]);
      return refused;
    }
    this.persist();
    rec.state = 'failed';
    rec.error = errText(e);
    rec.endedAt = this.now();
    rec.endReason = 'failed';
    this.pushEnded(rec);
    this.event('failed', rec, { error: rec.error });
    return refused;
  }

  /**
   * Applies a pending fault through its roots, outside the queue, then commits it. If it was
   * ended meanwhile, whoever ended it waits for `settled` and ends it then.
   */
  private async applyRemote(world: World, act: Active): Promise<void> {
    const rec = act.rec;
    try {
      rec.startedAt = this.now();
      rec.endsAt = rec.startedAt + rec.forMs;
      await this.apply(world, rec, act.procs, act.undo);
      // Its time starts when it is applied, not while a root kept it waiting: the worker (or the
      // hypervisor) counts its duration from when the root handed it over. Timed from before the
      // call, a fault asked of a paused root was over before it began, and ended at once.
      rec.startedAt = this.now();
      rec.endsAt = rec.startedAt + rec.forMs;
    } catch (e) {
      await this.serial(async () => {
        this.active.delete(rec.id);
        // Kept in the file while its roots are asked to clear what may have landed (a set that
        // timed out may have reached the worker): a nemesis killed meanwhile leaves it to the next.
        if (act.undo.hostFaults.length > 0) {
          this.clearing.set(rec.id, act);
          this.ending.set(rec.id, rec);
        }
        this.persist();
      });
      act.pending = false;
      act.settle();
      // Refused by its enforcer before anything took effect: a refusal as the nemesis's own are,
      // with no record, no log line and (when no later fault took one meanwhile) no number.
      if (refusedUnapplied(rec, e)) {
        await this.undoAll(world, act).catch(() => undefined);
        this.clearing.delete(rec.id);
        this.ending.delete(rec.id);
        this.persist();
        await this.serial(async () => {
          const own = /^f(\d{1,15})$/.exec(rec.id);
          if (act.autoId && own && this.next === Number(own[1]) + 1 && !this.active.has(rec.id) && !this.ending.has(rec.id)) this.next = Number(own[1]);
        });
        throw new FaultRefused(errText(e));
      }
      // Undone outside the queue too (it asks the roots).
      throw await this.failed(world, act, e);
    }
    await this.serial(async () => {
      act.pending = false;
      this.commit(act);
    });
    act.settle();
  }

  private async apply(world: World, rec: FaultRecord, procs: WorldProcess[], undo: Undo): Promise<void> {
    const p = rec.params;
    switch (rec.kind) {
      case 'pause':
        for (const x of procs) {
          if (!sameProcess(x.pid, x.start)) throw new FaultRefused(`pid ${x.pid} (${x.role}) is gone`);
          // Written down before the signal: a nemesis killed right after it leaves the undo behind.
          undo.stopped.push(x);
          this.persist();
          process.kill(x.pid, 'SIGSTOP');
        }
        // kill() only makes the stop pending: a process stops when it next runs, which on a loaded
        // host came after the caller heard that the fault was active (a test read its /proc state
        // as S then, and `vm list` its CPU as still used). Active means stopped: wait for it, bounded
        // (a process in an uninterruptible wait stops when that ends; the fault holds meanwhile).
        if (!(await untilStopped(procs.map((x) => x.pid), PAUSE_TAKE_MS))) {
          this.say(`${rec.id}: not every paused process showed as stopped within ${PAUSE_TAKE_MS / 1000} s (an uninterruptible wait?); the fault is active, and each stops when its wait ends`, { id: rec.id, pids: procs.map((x) => x.pid) });
        }
        return;
      case 'kill':
        for (const x of procs) {
          if (!sameProcess(x.pid, x.start)) continue;
          process.kill(x.pid, 'SIGKILL');
          if (p.restart === true && x.vm && (x.role === 'partition' || x.role === 'vmwp')) {
            const host = rec.resolved.processes.find((q) => q.pid === x.pid)?.host;
            if (host) undo.restart.push({ host, vm: x.vm, killed: x.pid });
          }
        }
        return;
      case 'vmbus':
      case 'interrupt-delay':
      case 'clock':
      case 'vp-stall': {
        const spec = hostSpecOf(rec.kind, p, rec.seed);
        if (!spec.ok) throw new FaultRefused(spec.message);
        // Filled as each VM takes it: a refusal by the first says nothing took effect (refusedUnapplied).
        const effects: Record<string, unknown> = {};
        rec.effect = effects;
        for (const v of rec.resolved.vms) {
          // Written down first: if the answer is lost, clearing an id the worker does not hold is no error.
          undo.hostFaults.push({ host: v.host, vm: v.vm });
          this.persist();
          effects[v.vm] = await this.hostCall(world, v.host, 'faultSet', { id: rec.id, vm: v.vm, spec: spec.value, forMs: rec.forMs });
        }
        rec.effect = effects;
        return;
      }
      case 'bitflip':
        return await this.applyBitflip(world, rec);
      case 'lp-shrink': {
        const spec = hostSpecOf('lp-shrink', p, rec.seed);
        if (!spec.ok) throw new FaultRefused(spec.message);
        const effects: Record<string, unknown> = {};
        rec.effect = effects;
        for (const h of rec.resolved.hosts) {
          undo.hostFaults.push({ host: h, vm: null });
          this.persist();
          effects[h] = await this.hostCall(world, h, 'faultSet', { id: rec.id, vm: null, spec: spec.value as HostFaultSpec, forMs: rec.forMs });
        }
        rec.effect = effects;
        return;
      }
      case 'link':
      case 'partition': {
        for (const [a, b] of rec.resolved.links) {
          const was = world.links.find((l) => (l.a === a && l.b === b) || (l.a === b && l.b === a));
          const before = impairmentsOf(was);
          const cut = rec.kind === 'partition' || p.cut === true;
          const entry: Undo['links'][number] = { a, b, cut, before, wasCut: was?.cut === true };
          undo.links.push(entry);
          this.persist();
          if (cut) await linkCut(this.home, a, b);
          else {
            const change: LinkChange = {};
            for (const k of IMPAIRMENT_KEYS) if (typeof p[k] === 'number') change[k] = p[k];
            change.seed = rec.seed;
            const view = await linkSet(this.home, a, b, change);
            // What the link holds now for what the fault set: at the end, only what still holds it is set back.
            const set: LinkChange = { seed: view.seed };
            for (const k of IMPAIRMENT_KEYS) if (k in change) set[k] = view[k] ?? null;
            entry.set = set;
            this.persist();
          }
        }
        return;
      }
    }
  }

  /**
   * A bit flip (bitflip.ts), which nothing undoes: each target VM's memory is asked of its root
   * first, to draw a GPA without one inside every target (a 2M VM's top page of the 256 drawn
   * from holds its dirty bitmap, and 1 seed in 256 failed there) and to refuse a GPA outside any
   * of them before a VM is flipped (the VMs before the one that refused were flipped, and the
   * fault failed half-applied). With --gpa, a VM whose root does not say is left to its worker's
   * own check; without, the flip is refused (bitflipDefaultPages): the page drawn depends on every
   * target's memory, and a rerun with the same seed must flip the same byte.
   */
  private async applyBitflip(world: World, rec: FaultRecord): Promise<void> {
    const p = rec.params;
    const vms = rec.resolved.vms;
    // One VM with a GPA given needs nothing asked: its worker's refusal is the same sentence, before anything lands.
    const { memory, answered } = p.gpa === undefined || vms.length > 1 ? await this.vmMemory(world, vms) : { memory: new Map<string, number>(), answered: new Set<string>() };
    const targets: BitflipTarget[] = vms.map((v) => {
      const memoryBytes = memory.get(`${v.host}|${v.vm}`) ?? null;
      return { vm: v.vm, host: v.host, where: `VM ${v.vm} on ${v.host}`, memoryBytes, ...(memoryBytes === null ? { memoryUnknown: answered.has(v.host) ? 'unlisted' as const : 'unanswered' as const } : {}) };
    });
    let params = p;
    if (p.gpa === undefined) {
      const pages = bitflipDefaultPages(targets);
      if ('problem' in pages) throw new BitflipRefused(pages.problem);
      params = { ...p, ...bitflipDefault(rec.seed, typeof p.mask === 'number' ? p.mask : undefined, pages.pages) };
      rec.params = params;
    }
    const spec = hostSpecOf('bitflip', params, rec.seed);
    if (!spec.ok || spec.value.kind !== 'bitflip') throw new FaultRefused(spec.ok ? 'bitflip: not a bit flip' : spec.message);
    const problem = bitflipTargetsProblem(spec.value.gpa, targets);
    if (problem !== null) throw new BitflipRefused(problem);
    // Filled as each VM takes it: a refusal by the first says nothing took effect (refusedUnapplied).
    const effects: Record<string, unknown> = {};
    rec.effect = effects;
    await flipEach(targets, effects, (t) => this.hostCall(world, t.host, 'faultSet', { id: rec.id, vm: t.vm, spec: spec.value, forMs: rec.forMs }));
  }

  /**
   * The memory of each of `vms` its root lists (`HOST|VM` to bytes), and the hosts whose roots
   * answered; a root that does not answer in BITFLIP_MEMORY_TIMEOUT_MS (10 s: its vmList may wait
   * up to 2 s for each worker) says nothing.
   */
  private async vmMemory(world: World, vms: ReadonlyArray<{ host: string; vm: string }>): Promise<{ memory: Map<string, number>; answered: Set<string> }> {
    const out = new Map<string, number>();
    const answered = new Set<string>();
    await Promise.all([...new Set(vms.map((v) => v.host))].map(async (host) => {
      const list = await this.hostCall<unknown>(world, host, 'vmList', {}, BITFLIP_MEMORY_TIMEOUT_MS).catch(() => null);
      if (!Array.isArray(list)) return;
      answered.add(host);
      for (const v of vms) {
        const m = v.host === host ? vmReading(list, v.vm).memoryBytes : null;
        if (m !== null) out.set(`${host}|${v.vm}`, m);
      }
    }));
    return { memory: out, answered };
  }

  /** Undoes what `act` did; collects (does not throw on) what could not be undone. */
  private async undoAll(world: World | null, act: Active): Promise<string[]> {
    return [...(await this.undoLocal(act)), ...(await this.undoRemote(world, act))];
  }

  /** The nemesis's own part of an undo: stopped processes continued, links healed and set back. */
  private async undoLocal(act: Active): Promise<string[]> {
    const problems: string[] = [];
    const u = act.undo;
    for (const x of u.stopped) {
      if (!sameProcess(x.pid, x.start)) continue;
      try {
        process.kill(x.pid, 'SIGCONT');
      } catch (e) {
        problems.push(`SIGCONT ${x.pid}: ${errText(e)}`);
      }
    }
    u.stopped = [];
    let now: LinkView[] | null = null;
    for (const l of u.links) {
      try {
        if (l.cut && !l.wasCut) await linkHeal(this.home, l.a, l.b);
        if (!l.cut) {
          now ??= await fabricStatus(this.home).then((s) => s.links, () => []);
          const change = restoreChange(l, now.find((x) => (x.a === l.a && x.b === l.b) || (x.a === l.b && x.b === l.a)));
          if (Object.keys(change).length > 0) await linkSet(this.home, l.a, l.b, change);
        }
      } catch (e) {
        problems.push(`link ${l.a}-${l.b}: ${errText(e)}`);
      }
    }
    u.links = [];
    return problems;
  }

  /** The roots' part of an undo: faults handed to them cleared (their own deadlines end them anyway). */
  private async undoRemote(world: World | null, act: Active, timeoutMs = 5000, silent: Set<string> | null = null): Promise<string[]> {
    const problems: string[] = [];
    const unheard: Undo['hostFaults'] = [];
    const u = act.undo;
    if (u.hostFaults.length) {
      const w = world ?? (await readWorld(this.home).catch(() => null));
      for (const h of u.hostFaults) {
        // Nothing could be asked, or (recovery) its root did not answer for another fault: still to clear.
        if (!w || silent?.has(h.host)) {
          unheard.push(h);
          continue;
        }
        try {
          let args: Record<string, unknown> = { id: act.rec.id, vm: h.vm };
          if (h.vm === null) {
            // The host's own part (an LP shrink), ended alone: cleared by its id alone, it also
            // ended every VM fault of that id on the host, which another nemesis (a cluster host's
            // own, numbering its faults f1, f2… too) may hold. A root whose list says how it clears
            // is asked as shrinkClearArgs says (an older one by the id only when no VM there holds
            // that id); one whose list does not come (a worker slow to answer holds it up) is asked
            // to end the shrink alone, which a root before that refuses. What cannot be ended alone
            // is left to its deadline, which ends it anyway, and said.
            const listed = await this.hostCall<unknown>(w, h.host, 'faultList', {}, timeoutMs).catch(() => null);
            const how = listed === null ? { args: { id: act.rec.id, host: true } } : shrinkClearArgs(h.host, { id: act.rec.id } as RootHostFault, rootClears(listed));
            if ('problem' in how) {
              problems.push(`${h.host}: ${how.problem}`);
              continue;
            }
            args = how.args;
          }
          const a = await this.hostCall<unknown>(w, h.host, 'faultClear', args, timeoutMs).catch((e: unknown) => {
            // A root that does not take the host-only clear (older) refuses it: left to its deadline.
            if (args.host === true && e instanceof MgmtCallError && e.code === 'InvalidArgument') throw new Error(`its LP shrink ${act.rec.id} could not be ended alone (its root is older, and its list did not come): left to its deadline`);
            throw e;
          });
          // A vmbus fault's last counters (the root keeps them also when the worker ended it first).
          const c = h.vm !== null && isPlainObject(a) && isPlainObject(a.counters) ? decodeFaultCounters(a.counters[act.rec.id]) : null;
          if (c?.ok && c.value) (act.rec.counters ??= {})[`${h.vm}@${h.host}`] = c.value;
        } catch (e) {
          // A VM or host that is gone took its fault with it: one moved away or deleted is not
          // found at all ('VM "web" does not exist', which was reported as a problem of the undo).
          const m = errText(e);
          if (!(e instanceof MgmtCallError && e.code === 'NotFound') && !/NotFound|not running|is gone|HostGone|not up|no host/i.test(m)) problems.push(`${h.vm ?? h.host}: ${m}`);
          // A VM's fault whose root did not answer (paused, busy, restarting): its worker still
          // enforces it. Kept, to be asked again (linger); it was reported ended while in force.
          // A host whose hypervisor is gone took its workers, and the fault, with it.
          if (h.vm !== null && unanswered(e) && (!(e instanceof MgmtCallError && e.code === 'HostGone') || hypervisorRuns(w, h.host))) {
            unheard.push(h);
            silent?.add(h.host);
          }
        }
      }
      u.hostFaults = unheard;
    }
    return problems;
  }

  /**
   * Faults ended whose root did not answer their clear (`undoRemote` kept those VMs in
   * `undo.hostFaults`): their workers still enforce them. Listed as active (in `ending`) and kept
   * in the active file (a nemesis killed meanwhile leaves them to the next), each is asked again
   * every LINGER_RETRY_MS, outside the queue, until every root answers, its VMs' workers are gone,
   * or its deadline passed (its worker ends it then by itself). Then it ends, logged.
   */
  private readonly lingering = new Map<string, { act: Active; reason: FaultEndReason; problems: string[]; lastTry: number; busy: boolean }>();
  private readonly lingers: boolean;
  /** Faults whose end is asking their roots now (`end`): kept in the active file until that is over. */
  private readonly clearing = new Map<string, Active>();

  private linger(act: Active, reason: FaultEndReason, problems: string[], persistNow = true): void {
    const id = act.rec.id;
    this.ending.set(id, act.rec);
    this.lingering.set(id, { act, reason, problems, lastTry: this.now(), busy: false });
    const hosts = [...new Set(act.undo.hostFaults.map((h) => h.host))];
    act.rec.error = `the root of ${hosts.join(', ')} did not answer the clear; asked again every ${LINGER_RETRY_MS / 1000} s until it does (the fault holds there until then, or until its deadline)`;
    this.event('end-unanswered', act.rec, { reason, waitingFor: act.undo.hostFaults, problems });
    if (persistNow) this.persist();
  }

  /** One pass over the lingering faults (from the watch): those due are asked again, outside the queue. */
  private retryLingering(): void {
    const t = this.now();
    for (const [id, l] of this.lingering) {
      if (l.busy || t - l.lastTry < LINGER_RETRY_MS) continue;
      l.busy = true;
      l.lastTry = t;
      void (async () => {
        const rec = l.act.rec;
        // A record without a duration (a damaged leftover) is held to the longest a fault lasts.
        const due = t >= rec.startedAt + (rec.forMs > 0 ? rec.forMs : FAULT_MAX_MS) + LINGER_RETRY_MS;
        const gone = l.act.holders.length > 0 && l.act.holders.every((x) => !sameProcess(x.pid, x.start));
        let last: string[] = [];
        if (!due && !gone) {
          // The fabric is not asked (no link is undone here): every 2 s it was.
          const world = await readWorld(this.home, { links: false }).catch(() => null);
          last = await this.undoRemote(world, l.act).catch((e: unknown) => [errText(e)]);
          if (l.act.undo.hostFaults.length > 0) return;
        }
        this.lingering.delete(id);
        this.ending.delete(id);
        rec.state = l.reason === 'failed' ? 'failed' : 'ended';
        rec.endedAt = this.now();
        rec.endReason = l.reason;
        const how = due ? 'its root never answered the clear: it ended at its deadline' : gone ? 'its VMs\' workers are gone, and it with them'
          : last.length === 0 ? 'its root answered the clear' : `its root answered: ${last.join('; ')}`;
        rec.error = [...l.problems, how].join('; ');
        this.pushEnded(rec);
        this.event('end', rec, { reason: l.reason, lingered: how, ...(l.problems.length ? { problems: l.problems } : {}) });
        this.persist();
      })().finally(() => (l.busy = false));
    }
  }

  private pushEnded(rec: FaultRecord): void {
    this.ended.push(rec);
    if (this.ended.length > 1000) this.ended.splice(0, this.ended.length - 1000);
  }

  /**
   * Starts again the VMs a kill with restart killed, outside the queue of changes (a start takes
   * seconds, and later faults must not wait for it); a failure is added to the record's error.
   */
  private restartAll(rec: FaultRecord, restart: Undo['restart']): void {
    if (restart.length === 0) return;
    void (async () => {
      const w = await readWorld(this.home).catch(() => null);
      for (const r of restart) {
        try {
          if (!w) throw new Error('the home cannot be read');
          await this.restartVm(w, r.host, r.vm, r.killed ?? null);
          this.event('restarted', rec, { host: r.host, vm: r.vm });
        } catch (e) {
          rec.error = [rec.error, `restart ${r.vm}: ${errText(e)}`].filter(Boolean).join('; ');
          // In the fault log too: the fault's end is logged before its restart is over.
          this.event('restart-failed', rec, { host: r.host, vm: r.vm, error: errText(e) });
        }
      }
    })();
  }

  /**
   * Starts VM `vm` on `host` again once its root has seen it die (it is Off then). Running with
   * none of its processes the one killed (`killed`) is a VM someone started again already; Running
   * with it is a root that has not seen the kill yet (a `--for 0` fault ends at once, and the
   * restart used to take that for 'already running' and never start it).
   */
  private async restartVm(world: World, host: string, vm: string, killed: number | null): Promise<void> {
    const until = this.now() + 15_000;
    for (;;) {
      const list = await this.hostCall<Array<{ name: string; state: string; pids?: { vmwp?: number | null; partition?: number | null } }>>(world, host, 'vmList', {}, 5000).catch(() => null);
      const v = list?.find((x) => x.name === vm);
      // Deleted (or moved away) meanwhile: there is nothing to start, and waiting for it to turn Off is no use.
      if (list && !v) throw new Error(`VM ${vm} is not on ${host} any more (deleted or moved away meanwhile): not started again`);
      const st = v?.state;
      if (st === 'Running' && (killed === null || (v?.pids?.vmwp !== killed && v?.pids?.partition !== killed))) return;
      if (st === 'Off') {
        await this.hostCall(world, host, 'vmStart', { name: vm }, 60_000);
        return;
      }
      if (this.now() > until) throw new Error(`VM ${vm} on ${host} did not turn Off after its process was killed (state ${st ?? 'unknown'})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * Ends fault `id` now (`reason`), undoing it: its own part in the queue (a stopped process is
   * continued at once), a root's part after it (see the header). A fault still being applied is
   * ended as soon as that is over.
   */
  async end(id: string, reason: FaultEndReason): Promise<FaultRecord | null> {
    const first = this.active.get(id);
    if (first?.pending) {
      first.cancelled ??= reason;
      await first.settled;
      if (this.active.get(id) === first) return await this.end(id, reason);
      return first.rec.state === 'ended' ? first.rec : null;
    }
    const taken = await this.serial(async () => {
      const act = this.active.get(id);
      if (!act) return null;
      if (act.pending) return 'pending' as const;
      if (act.timer) clearTimeout(act.timer);
      this.active.delete(id);
      this.ending.set(id, act.rec);
      // Still in the file while it is undone, locally and then by its roots: a write by another
      // change meanwhile keeps it, and a nemesis killed meanwhile leaves it to the next.
      this.clearing.set(id, act);
      const problems = await this.undoLocal(act);
      if (act.undo.hostFaults.length === 0) this.clearing.delete(id);
      this.persist();
      return { act, problems };
    });
    if (taken === null) return null;
    // A new fault of that id began meanwhile: ended once it is applied.
    if (taken === 'pending') return await this.end(id, reason);
    const { act, problems } = taken;
    const restart = act.undo.restart;
    act.undo.restart = [];
    try {
      problems.push(...(await this.undoRemote(null, act)));
    } finally {
      this.ending.delete(id);
      this.clearing.delete(id);
    }
    const rec = act.rec;
    if (act.undo.hostFaults.length > 0 && this.lingers) {
      // Not ended yet where its root did not answer: said so, and asked again.
      this.restartAll(rec, restart);
      this.linger(act, reason, problems);
      return rec;
    }
    if (act.undo.hostFaults.length > 0) problems.push('its root did not answer the clear: the fault holds there until its deadline');
    this.persist();
    this.restartAll(rec, restart);
    rec.state = 'ended';
    rec.endedAt = this.now();
    rec.endReason = reason;
    if (problems.length) rec.error = problems.join('; ');
    this.pushEnded(rec);
    this.event('end', rec, { reason, ...(problems.length ? { problems } : {}) });
    this.lastActivity = this.now();
    return rec;
  }

  /** Ends faults now: one, an owner's, or all (which also reports what was undone of a nemesis before this one). */
  async clear(fault: string | null, owner: string | null, reason: FaultEndReason = 'cleared'): Promise<FaultRecord[]> {
    this.lastActivity = this.now();
    const ids = [...this.active.values()].filter((a) => (fault === null || a.rec.id === fault) && (owner === null || a.rec.owner === owner)).map((a) => a.rec.id);
    const waiting = fault === null ? undefined : this.lingering.get(fault);
    if (waiting) throw new FaultRefused(`fault ${fault} is ending: ${waiting.act.rec.error ?? 'its root has not answered the clear yet'}`);
    if (fault !== null && this.clearing.has(fault)) throw new FaultRefused(`fault ${fault} is being cleared: its roots are being asked to end it`);
    if (fault !== null && ids.length === 0 && !this.active.has(fault)) {
      // One that ended already is said so, with how (a clear after its end was told only that
      // nothing of that id was active, as if it had never been).
      const past = this.ended.findLast((r) => r.id === fault);
      const others = this.active.size ? ` (active: ${[...this.active.keys()].join(', ')})` : '';
      if (past) throw new FaultRefused(`fault ${fault} has ended already (${past.state === 'failed' ? 'failed' : past.endReason ?? 'ended'}${past.endedAt !== null ? ` at ${new Date(past.endedAt).toISOString().slice(11, 23)}` : ''}): nothing to clear${others}`);
      throw new FaultRefused(`no active fault ${fault}${others}`);
    }
    const out: FaultRecord[] = [];
    if (fault === null && owner === null) {
      out.push(...this.recovered);
      this.recovered = [];
    }
    const ended = await Promise.all(ids.map((id) => this.end(id, reason)));
    for (const r of ended) if (r) out.push(r);
    // A clear of everything says what is still ending (its root has not answered yet): "no fault
    // was active" while the list showed one.
    if (fault === null && owner === null) for (const l of this.lingering.values()) if (!out.includes(l.act.rec)) out.push(l.act.rec);
    // Its lease goes with its faults, unless it still names VMs it made or takes a home down: those
    // go when it lapses (a run killed during its own clean-up leaves none).
    if (owner && !this.ownerVms.has(owner) && !this.teardownOwners.has(owner)) this.owners.delete(owner);
    return out;
  }

  /**
   * A user's clear of everything (`hvlab fault clear` without an id): every fault of this nemesis
   * and what a nemesis before it left (`clear`), then each LP shrink a host's root holds that
   * names no fault (`clearUnheld`). A shrink of a fault this nemesis does not hold is left: it may
   * be another nemesis's (a cluster host's own beside the cluster home's); `fault list` shows it
   * and `fault clear ID` ends it.
   */
  async clearEverything(): Promise<FaultRecord[]> {
    const out = await this.clear(null, null);
    return [...out, ...(await this.clearUnheld())];
  }

  /**
   * A user's clear of fault `id` (`hvlab fault clear ID`): this nemesis's fault of that id, or,
   * when it holds none, an LP shrink of that id a host holds without it (`fault list` shows it,
   * marked), ended alone (faultClear `host`: no VM's fault of that id); when neither, `clear`'s
   * refusal says why, or why such a shrink was left.
   */
  async clearById(id: string): Promise<FaultRecord[]> {
    if (!this.active.has(id) && !this.ending.has(id)) {
      const left: string[] = [];
      const held = await this.clearUnheld(id, left);
      if (held.length > 0) return held;
      if (left.length > 0) throw new FaultRefused(`no fault ${id} of this nemesis is active, and the LP shrink of that id a host holds was not ended: ${left.join('; ')}`);
    }
    return await this.clear(id, null);
  }

  /**
   * Ends LP shrinks that the home's roots hold and no fault of this nemesis accounts for
   * (`unheldHostFaults`). Without `only`: those that name no fault (`namesNoFault`: a setLps
   * without one; its root lists it with a null id, and faultClear `unnamed` ends it, touching no
   * VM's fault; its record's id is UNNAMED_SHRINK_ID). With `only`: the one of that fault id,
   * ended alone (`shrinkClearArgs`: faultClear `host`, never a VM's fault of that id, which may be
   * another nemesis's; why one could not be ended so goes to `left`). Nothing else could end one
   * early: `fault clear` said "no fault was active" while `host info` showed the LPs taken away
   * until its deadline (up to a day). Each is reported as an ended fault, with why in its error,
   * and logged. A root that does not answer within 2 s is passed over.
   */
  async clearUnheld(only: string | null = null, left: string[] = []): Promise<FaultRecord[]> {
    const world = await readWorld(this.home, { links: false }).catch(() => null);
    if (!world) return [];
    const out: FaultRecord[] = [];
    await Promise.all(world.hosts.filter((h) => h.hostId !== null).map(async (h) => {
      const listed = await this.hostCall<unknown>(world, h.name, 'faultList', {}, 2000).catch(() => null);
      const root = rootClears(listed);
      for (const f of unheldHostFaults(rootHostFaults(listed), (id) => this.active.has(id) || this.ending.has(id))) {
        if (only === null ? !namesNoFault(f, root) : f.id !== only) continue;
        const how = shrinkClearArgs(h.name, f, root);
        if ('problem' in how) {
          this.say('an LP shrink held without a fault of this nemesis was left', { host: h.name, fault: f.id, why: how.problem });
          left.push(how.problem);
          continue;
        }
        const answer = await this.hostCall<unknown>(world, h.name, 'faultClear', how.args, 5000).catch((e: unknown) => {
          this.say('an LP shrink held without a fault of this nemesis was not cleared', { host: h.name, fault: f.id, err: errText(e) });
          return null;
        });
        // Not cleared: gone meanwhile (its deadline), or replaced by a fault injected since.
        if (!isPlainObject(answer) || !Array.isArray(answer.cleared) || !answer.cleared.includes(f.id)) continue;
        const rec = unheldShrinkRecord(h.name, f, this.now());
        this.pushEnded(rec);
        this.event('end', rec, { reason: 'cleared', unheld: true });
        out.push(rec);
      }
    }));
    return out.sort(faultOrder);
  }

  /** One pass of the watch: lapsed owners, vanished targets. */
  async watch(): Promise<void> {
    this.retryLingering();
    const t = this.now();
    for (const [owner, last] of this.owners) {
      if (t - last < LEASE_MS) continue;
      this.owners.delete(owner);
      const mine = [...this.active.values()].filter((a) => a.rec.owner === owner);
      if (mine.length) this.say('owner lease lapsed: ending its faults', { owner, faults: mine.map((a) => a.rec.id) });
      await Promise.all(mine.map((a) => this.end(a.rec.id, 'owner-gone')));
      const vms = this.ownerVms.get(owner);
      this.ownerVms.delete(owner);
      if (vms && !this.teardownOwners.has(owner)) await this.removeOwnedVms(owner, vms);
      if (this.teardownOwners.delete(owner)) {
        // The file keeps it until the home is gone (the teardown removes it with the home): a
        // nemesis killed during the teardown leaves it to the next, which does it.
        this.say('owner lease lapsed: taking down the cluster it brought up', { owner });
        this.onTeardown?.(owner);
      }
    }
    for (const a of [...this.active.values()]) {
      if (a.pending) continue;
      const r = a.rec;
      if (r.kind === 'pause') {
        if (a.undo.stopped.length > 0 && a.undo.stopped.every((x) => !sameProcess(x.pid, x.start))) await this.end(r.id, 'target-gone');
        else this.markGone(a, a.undo.stopped, a.undo.stopped.map((x) => `${x.role}${x.vm ? ` of ${x.vm}` : ''} (pid ${x.pid})`));
      } else if (a.holders.length > 0 && a.holders.every((x) => !sameProcess(x.pid, x.start))) {
        // Every VM's worker (or host's hypervisor) it lived in is gone: turned off, restarted, moved away, down.
        await this.end(r.id, 'target-gone');
      } else {
        this.markGone(a, a.holders, a.holderNames);
      }
    }
  }

  /**
   * Some of what a fault lives in is gone while the rest goes on (one VM of `vms:all` turned off
   * or restarted: its new worker has no fault): said in the record (`gone`), which `fault list`
   * shows, and logged once each; it listed the VM as hit until the fault's end.
   */
  private markGone(a: Active, procs: WorldProcess[], names: string[]): void {
    procs.forEach((x, i) => {
      const name = names[i];
      if (name === undefined || sameProcess(x.pid, x.start) || a.rec.gone?.includes(name)) return;
      (a.rec.gone ??= []).push(name);
      this.event('target-part-gone', a.rec, { gone: name });
    });
  }

  /** Starts the periodic watch. */
  startWatch(everyMs = 500): void {
    const tick = async (): Promise<void> => {
      try {
        await this.watch();
      } catch (e) {
        this.say('watch failed', { err: errText(e) });
      }
      if (this.watchTimer) this.watchTimer = setTimeout(() => void tick(), everyMs);
    };
    this.watchTimer = setTimeout(() => void tick(), everyMs);
  }

  stopWatch(): void {
    if (this.watchTimer) clearTimeout(this.watchTimer);
    this.watchTimer = null;
  }

  /** True if the home still has hosts (else every fault's target is gone). */
  homeAlive(): boolean {
    return homeAlive(this.home);
  }

  /**
   * Undoes what a nemesis that died left in active.json: stopped processes are continued, links
   * healed and set back, faults handed to roots cleared (their own deadlines end them anyway).
   */
  async recoverLeftovers(): Promise<number> {
    let left: ActiveLeftover[];
    try {
      const text = readRegularFile(activeFile(this.home), ACTIVE_FILE_MAX_BYTES).toString('utf8');
      left = decodeActiveFile(text);
      // Text that held faults but gave none (cut short, garbled): as damaged as a FIFO in its place.
      if (left.length === 0 && !/^\s*(\[\s*\])?\s*$/.test(text)) throw new FileShapeError(`${activeFile(this.home)} does not read as a list of faults`);
    } catch (e) {
      // Missing: nothing to undo. Not a file, or too large: nothing this nemesis could trust, and
      // it goes, as a damaged one always did. Unreadable for now (EIO, EMFILE): kept, for the
      // next nemesis (the processes a pause stopped are named in it).
      // Kept aside (active.json.damaged, the last such), and said in the log: the processes a
      // pause stopped are named in it, for a person to continue by hand.
      if (e instanceof FileShapeError) {
        const file = activeFile(this.home);
        const aside = `${file}.damaged`;
        try {
          // A directory in its place is not a file a nemesis wrote: left alone.
          if (!lstatSync(file).isDirectory()) {
            rmSync(aside, { force: true });
            renameSync(file, aside);
            this.say('the active faults file a previous nemesis left is damaged: nothing of it could be undone; it is kept for a look', { file: aside, err: errText(e) });
          }
        } catch (r) {
          try {
            rmSync(file, { force: true });
          } catch { /* a directory, or gone */ }
          this.say('the active faults file a previous nemesis left is damaged: nothing of it could be undone', { err: errText(e), aside: errText(r) });
        }
      }
      return 0;
    }
    let n = 0;
    const acts = left.map(({ rec, undo }) => {
      const act = newActive(rec, [], [], false);
      act.undo = undo;
      return act;
    });
    // Every local part first (stopped processes continued, links healed): a root that a pause
    // left stopped answers the VM faults' clears only then (in the file's order, a VM fault's clear
    // waited its 5 s on a root whose pause was undone after it, and was given up).
    const local = new Map<Active, string[]>();
    const silent = new Set<string>();
    for (const act of acts) local.set(act, await this.undoLocal(act).catch((e: unknown) => [errText(e)]));
    for (const act of acts) {
      const rec = act.rec;
      // 2 s a root, not 5: a nemesis not ready in 15 s is killed by the client that started it, and
      // one whose root did not answer is asked again once it serves (lingering).
      // A root that did not answer is not asked again for the faults after (the nemesis must be
      // ready within 15 s): they linger, and are asked once it serves.
      const problems = [...local.get(act)!, ...(await this.undoRemote(null, act, RECOVERY_ROOT_MS, silent).catch((e: unknown) => [errText(e)]))];
      n++;
      if (act.undo.hostFaults.length > 0 && this.lingers) {
        // Its root did not answer: asked again until it does (it still holds there).
        // Written to the active file once all are through (below): the file keeps every one not yet looked at meanwhile.
        this.linger(act, 'cleared', ['undone after the nemesis that held it was gone', ...problems], false);
        this.recovered.push(rec);
        continue;
      }
      if (act.undo.hostFaults.length > 0) problems.push('its root did not answer the clear: the fault holds there until its deadline');
      rec.state = 'ended';
      rec.endedAt = this.now();
      rec.endReason = 'cleared';
      rec.error = ['undone after the nemesis that held it was gone', ...problems].join('; ');
      this.recovered.push(rec);
      this.pushEnded(rec);
      // The same fields as every other line of the log (it lacked role, summary, owner and forMs).
      this.event('end', rec, { reason: 'cleared', recovered: true, ...(problems.length ? { problems } : {}) });
      this.say('undid a fault a previous nemesis left', { id: rec.id, problems });
    }
    // What is left in it: the faults whose roots have not answered yet (lingering), or nothing.
    this.persist();
    return n;
  }
}

/** Management error codes of a root (or a worker behind it) that refused a fault: it answered, and set nothing. */
const REFUSAL_CODES: readonly string[] = ['InvalidArgument', 'InvalidState', 'NotFound'];

/**
 * Whether a fault a root enforces failed by a refusal of the first host asked, or of the nemesis
 * before it asked any VM to flip (BitflipRefused: a bit flip's GPA outside one of its VMs, or a
 * default one that cannot be drawn), so that nothing of it took effect anywhere (`rec.effect`
 * holds what each VM or host took): an lp-shrink to as many LPs as the host has, a VP the VM
 * lacks, a VM that is stopping or moving. Not a refusal: one that came after another VM took it,
 * a call that timed out or lost its host (it may have landed), and the nemesis's other refusals
 * while applying (a host that is not up or not there, a spec its kind refuses): recorded failed.
 */
export function refusedUnapplied(rec: FaultRecord, e: unknown): boolean {
  const landed = rec.effect !== null && Object.keys(rec.effect).length > 0;
  // The nemesis's own refusal of a bit flip before it asked any VM to flip (BitflipRefused); not
  // any FaultRefused: a host that is not up, or none of that name, is a failure, recorded.
  if (e instanceof BitflipRefused) return !landed;
  return !landed && e instanceof MgmtCallError && REFUSAL_CODES.includes(e.code);
}

/**
 * The order `fault list` shows faults in, stable whatever order they started, ended or were
 * undone in: by start, then by id, the numbers in ids compared as numbers (f9 before f10).
 */
export function faultOrder(a: FaultRecord, b: FaultRecord): number {
  return a.startedAt - b.startedAt || ID_COLLATOR.compare(a.id, b.id);
}
const ID_COLLATOR = new Intl.Collator('en', { numeric: true });

/**
 * The counters of each VM fault in a root's `faultList` answer ({ vms: [{ vm, faults: [{ id,
 * stats }] }] }), checked: [VM@HOST, fault id, counters] for each fault that counts; whatever
 * does not decode is left out.
 */
export function rootFaultCounters(answer: unknown, host: string): Array<[string, string, VmbusFaultCounters]> {
  const out: Array<[string, string, VmbusFaultCounters]> = [];
  if (!isPlainObject(answer) || !Array.isArray(answer.vms)) return out;
  for (const v of (answer.vms as unknown[]).slice(0, 4096)) {
    if (!isPlainObject(v) || typeof v.vm !== 'string' || !VM_NAME_RE.test(v.vm) || !Array.isArray(v.faults)) continue;
    for (const f of (v.faults as unknown[]).slice(0, 64)) {
      if (!isPlainObject(f) || typeof f.id !== 'string' || !FAULT_ID_RE.test(f.id)) continue;
      const c = decodeFaultCounters(f.stats);
      if (c.ok && c.value) out.push([`${v.vm}@${host}`, f.id, c.value]);
    }
  }
  return out;
}

/** A fault record read back from active.json (a file: checked, never trusted), or null. */
function leftoverRecord(v: unknown): FaultRecord | null {
  if (!isPlainObject(v) || typeof v.id !== 'string' || !FAULT_ID_RE.test(v.id)) return null;
  const kind = (FAULT_KINDS as readonly string[]).includes(v.kind as string) ? (v.kind as FaultKind) : null;
  if (!kind) return null;
  const num = (x: unknown): number => (typeof x === 'number' && Number.isFinite(x) ? x : 0);
  const r = isPlainObject(v.resolved) ? v.resolved : {};
  const names = (x: unknown): string[] => (Array.isArray(x) ? (x as unknown[]).filter((y): y is string => typeof y === 'string') : []);
  return {
    id: v.id, kind, target: typeof v.target === 'string' ? v.target.slice(0, 160) : '?',
    // A process fault's role (what it hit), as the record had it: a later nemesis's list and log say it too.
    role: (kind === 'kill' || kind === 'pause') && (PROCESS_ROLES as readonly unknown[]).includes(v.role) ? (v.role as ProcessRole) : null,
    params: isPlainObject(v.params) ? v.params : {}, owner: typeof v.owner === 'string' ? v.owner : null, seed: num(v.seed), forMs: num(v.forMs),
    resolved: {
      summary: typeof r.summary === 'string' ? r.summary.slice(0, 400) : '?', hosts: names(r.hosts),
      vms: Array.isArray(r.vms) ? (r.vms as unknown[]).filter((x): x is { host: string; vm: string } => isPlainObject(x) && typeof x.host === 'string' && typeof x.vm === 'string') : [],
      processes: [], links: [],
    },
    state: 'active', startedAt: num(v.startedAt), endsAt: num(v.endsAt), endedAt: null, endReason: null, error: null, effect: null,
  };
}

/**
 * The links the active faults of `home` hold (set or cut, to be set back at their end), from its
 * active faults file: a manual `link set/cut/heal/reset` of one would lift the fault while
 * `fault list` still showed it active. Unreadable: none.
 */
export function heldLinks(home: string): HeldLink[] {
  let left: ActiveLeftover[];
  try {
    left = readActiveFile(home);
  } catch {
    return [];
  }
  return left.flatMap(({ rec, undo }) => undo.links.map((l) => ({ id: rec.id, kind: rec.kind, a: l.a, b: l.b, heals: l.cut && !l.wasCut })));
}

/**
 * The processes the active pause faults of `home` stopped, by pid: the fault's id (for `vm list`
 * and `top`, which say which fault froze a VM). Unreadable: none.
 */
export function pausedBy(home: string): Map<number, string> {
  let left: ActiveLeftover[];
  try {
    left = readActiveFile(home);
  } catch {
    return new Map();
  }
  return new Map(left.flatMap(({ rec, undo }) => undo.stopped.map((p) => [p.pid, rec.id] as const)));
}

/** A link an active fault holds; `heals`: the fault cut it, and its end heals it. */
export interface HeldLink {
  id: string;
  kind: FaultKind;
  a: string;
  b: string;
  heals: boolean;
}

/**
 * What a `link set|cut|heal|reset` by hand says of a link fault `f` holds (it is made over the
 * fault, which stays listed until it ends). A fault's end sets back only what it set and the link
 * still holds, so what the hand changed stays, with one exception: a cut by hand of a link the
 * fault cut changes nothing the fabric can tell apart, and the fault's end heals the link.
 */
export function heldLinkWarning(f: HeldLink, op: 'set' | 'cut' | 'heal' | 'reset'): string {
  const clear = `"hvlab fault clear ${f.id}" ends it now`;
  if (op === 'cut' && f.heals) {
    return `link ${f.a}-${f.b} is cut by fault ${f.id} (${f.kind}) already: this cut changes nothing, and the fault's end heals the link (cut it again after that; ${clear})`;
  }
  return `link ${f.a}-${f.b} is held by fault ${f.id} (${f.kind}): this change is made over it, the fault stays listed until it ends, and its end will not undo this change (${clear})`;
}

/** The most active.json is read to (4096 faults with long targets and many processes fit). */
export const ACTIVE_FILE_MAX_BYTES = 16 * 1024 * 1024;

/** The home's active.json, read as a file (FileShapeError if it is none) and decoded. */
function readActiveFile(home: string): ActiveLeftover[] {
  return decodeActiveFile(readRegularFile(activeFile(home), ACTIVE_FILE_MAX_BYTES).toString('utf8'));
}

/** One fault of active.json, as decodeActiveFile gives it. */
export interface ActiveLeftover {
  rec: FaultRecord;
  undo: Undo;
}

/**
 * The one decoder of active.json (the nemesis's record of what its active faults did, read back
 * by a later nemesis to undo it, and by the CLI for the links faults hold). A file: checked,
 * never trusted, and nothing in it throws. Text that is not a JSON array gives nothing; an entry
 * without a valid record (an id as the nemesis makes them, a known kind) or an `undo` object is
 * left out; within one, every list keeps only the items of the right shape: a process with a
 * pid above 1 and a finite start, a link with two names and a state before that decodes as a
 * link change (its `set` kept only if it decodes too), a host fault with a host name.
 */
export function decodeActiveFile(text: string): ActiveLeftover[] {
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return [];
  }
  if (!Array.isArray(list)) return [];
  const out: ActiveLeftover[] = [];
  const items = (x: unknown): unknown[] => (Array.isArray(x) ? (x as unknown[]) : []);
  for (const item of list as unknown[]) {
    if (!isPlainObject(item) || !isPlainObject(item.undo)) continue;
    const rec = leftoverRecord(item.rec);
    if (!rec) continue;
    const o = item.undo;
    const links: Undo['links'] = [];
    for (const l of items(o.links)) {
      if (!isPlainObject(l) || typeof l.a !== 'string' || typeof l.b !== 'string') continue;
      const before = decodeLinkChange(l.before);
      if (!before.ok) continue;
      const set = l.set === undefined ? null : decodeLinkChange(l.set);
      links.push({ a: l.a, b: l.b, cut: l.cut === true, wasCut: l.wasCut === true, before: before.value, ...(set?.ok ? { set: set.value } : {}) });
    }
    out.push({
      rec,
      undo: {
        // Only the pid and its start are used (a SIGCONT to the same process); the rest is kept when sound.
        stopped: items(o.stopped).flatMap((x): WorldProcess[] => {
          if (!isPlainObject(x) || !Number.isSafeInteger(x.pid) || (x.pid as number) <= 1 || typeof x.start !== 'number' || !Number.isFinite(x.start)) return [];
          const role = (PROCESS_ROLES as readonly unknown[]).includes(x.role) ? (x.role as WorldProcess['role']) : 'partition';
          return [{ hostId: typeof x.hostId === 'string' ? x.hostId.slice(0, 64) : '', role, vm: typeof x.vm === 'string' ? x.vm.slice(0, 256) : null, pid: x.pid as number, start: x.start }];
        }),
        links,
        hostFaults: items(o.hostFaults)
          .filter((h): h is Undo['hostFaults'][number] => isPlainObject(h) && typeof h.host === 'string' && (h.vm === null || typeof h.vm === 'string'))
          .map((h) => ({ host: h.host, vm: h.vm })),
        restart: [],
      },
    });
  }
  return out;
}

const IMPAIRMENT_KEYS = ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const;

/**
 * What sets link `l` back at a fault's end, given the link `now`: each impairment the fault set
 * goes back to what it was before only if the link still holds what the fault made it (a change
 * made by hand meanwhile, or a `link reset`, stays); what the fault did not set is not touched.
 * A record without `set` (an older nemesis's) sets everything back. Without `now` (the fabric did
 * not answer), everything the fault set is set back.
 */
export function restoreChange(l: { before: LinkChange; set?: LinkChange }, now: LinkView | undefined): LinkChange {
  if (!l.set) return { ...l.before };
  const out: LinkChange = {};
  for (const k of IMPAIRMENT_KEYS) {
    if (!(k in l.set)) continue;
    if (!now || (now[k] ?? null) === (l.set[k] ?? null)) out[k] = l.before[k] ?? null;
  }
  if (l.before.seed !== undefined && (!now || now.seed === l.set.seed)) out.seed = l.before.seed;
  return out;
}

function impairmentsOf(l: LinkView | undefined): LinkChange {
  return { delayMs: l?.delayMs ?? null, jitterMs: l?.jitterMs ?? null, rateBps: l?.rateBps ?? null, lossPercent: l?.lossPercent ?? null, ...(l ? { seed: l.seed } : {}) };
}

/** Stopped processes (state T) among `pids`, for checks. */
export function stoppedAmong(pids: number[]): number[] {
  return pids.filter((p) => processState(p) === 'T');
}
