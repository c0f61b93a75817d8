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
 * Every start and end goes to `faults/log.jsonl`; the active set (with what undoing needs: the
 * pids and start times of stopped processes, each link's state before) is written to
 * `faults/active.json` at every change, so a nemesis that died is cleaned up after by the next one
 * (`recoverLeftovers`), which `fault clear` and `down` start.
 *
 * How each kind is enforced:
 *   kill, pause     signals from here (pid and start time checked first: never a recycled pid);
 *                   kill with restart starts a killed VM again when the fault ends
 *   vmbus, interrupt-delay, clock, vp-stall, bitflip
 *                   the VM's worker, through its host's root (`faultSet`, `faultClear`)
 *   lp-shrink       the hypervisor, through the root
 *   link, partition the cluster's fabric (set/cut, and heal/set back to the state before)
 */
import { appendFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { seededRandom, WORKLOAD_DATA_GPA, type FaultEndReason, type HostFaultSpec, type LinkChange, type LinkView } from '@hvlab/protocol';
import { writeFileAtomic } from '@hvlab/runtime';
import { MgmtClient, readHost } from '@hvlab/host';
import { linkCut, linkHeal, linkSet } from '@hvlab/cluster';
import { hostSpecOf, parseTarget } from './request.js';
import { ResolveError, resolveTarget } from './resolve.js';
import { OWNER_LEASE_MS, type FaultRecord, type FaultRequest } from './types.js';
import { homeAlive, processState, readWorld, sameProcess, scanProcesses, type World, type WorldProcess } from './world.js';

export class FaultRefused extends Error {
  override name = 'FaultRefused';
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

/** What undoing one fault needs; plain data (it is written to active.json). */
interface Undo {
  /** Processes stopped by a pause (SIGCONT at the end, if still the same process). */
  stopped: WorldProcess[];
  /** Links set or cut, with their state before. */
  links: Array<{ a: string; b: string; cut: boolean; before: LinkChange; wasCut: boolean }>;
  /** Faults handed to a root: undone by faultClear there. */
  hostFaults: Array<{ host: string; vm: string | null }>;
  /** VMs to start again when a kill with restart ends. */
  restart: Array<{ host: string; vm: string }>;
}

interface Active {
  rec: FaultRecord;
  undo: Undo;
  timer: NodeJS.Timeout | null;
  /** Processes a pause or kill hit (their vanishing ends a pause). */
  procs: WorldProcess[];
}

export interface NemesisOptions {
  home: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  now?: () => number;
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** A seed from a text (a fault id without a seed of its own). */
function seedOf(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h;
}

export class Nemesis {
  private readonly home: string;
  private readonly active = new Map<string, Active>();
  private readonly ended: FaultRecord[] = [];
  private readonly owners = new Map<string, number>();
  private next = 1;
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
    this.lastActivity = this.now();
    mkdirSync(faultsDir(this.home), { recursive: true, mode: 0o700 });
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private event(event: string, rec: FaultRecord, extra: Record<string, unknown> = {}): void {
    const line = { time: new Date(this.now()).toISOString(), event, id: rec.id, kind: rec.kind, target: rec.target, role: rec.role, summary: rec.resolved.summary, owner: rec.owner, forMs: rec.forMs, ...extra };
    try {
      appendFileSync(faultLogFile(this.home), JSON.stringify(line) + '\n', { mode: 0o600 });
    } catch { /* the process log has it too */ }
    this.say(`fault ${rec.id} ${event}`, line);
  }

  private persist(): void {
    const list = [...this.active.values()].map((a) => ({ rec: a.rec, undo: a.undo }));
    try {
      if (list.length === 0) rmSync(activeFile(this.home), { force: true });
      else writeFileAtomic(activeFile(this.home), JSON.stringify(list) + '\n');
    } catch (e) {
      this.say('cannot write the active faults file', { err: errText(e) });
    }
  }

  get activeCount(): number {
    return this.active.size;
  }

  /** Owners whose lease is still good. */
  get liveOwners(): number {
    const t = this.now();
    return [...this.owners.values()].filter((x) => t - x < OWNER_LEASE_MS).length;
  }

  list(all: boolean): FaultRecord[] {
    const act = [...this.active.values()].map((a) => a.rec);
    return all ? [...this.ended, ...act] : act;
  }

  renew(owner: string): void {
    this.lastActivity = this.now();
    this.owners.set(owner, this.now());
  }

  /** A client for host `name`'s management API (fresh each time: a client whose host died stays broken). */
  private mgmt(world: World, name: string): MgmtClient {
    const h = world.hosts.find((x) => x.name === name);
    if (!h) throw new FaultRefused(`there is no host ${name}`);
    const rec = readHost(h.paths);
    if (!rec) throw new FaultRefused(`host ${name} is not up`);
    return new MgmtClient(h.paths.mgmtEndpoint, { watch: rec });
  }

  private async hostCall<T>(world: World, host: string, op: 'faultSet' | 'faultClear' | 'vmStart' | 'vmList', args: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
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
    return this.serial(() => this.doInject(req));
  }

  private async doInject(req: FaultRequest): Promise<FaultRecord> {
    const id = req.id ?? `f${this.next++}`;
    if (this.active.has(id)) throw new FaultRefused(`fault ${id} is active already`);
    const seed = req.seed ?? seedOf(id);
    const target = parseTarget(req.target);
    if (!target.ok) throw new FaultRefused(target.message);
    const world = await readWorld(this.home);
    if (world.hosts.length === 0) throw new FaultRefused(`nothing is up in ${this.home} ("hvlab up" or "hvlab cluster up" first)`);
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
    // One fault at a time per process and per link: undoing overlapping ones could not be right.
    for (const a of this.active.values()) {
      if (procs.some((p) => a.procs.some((q) => q.pid === p.pid && a.rec.kind === 'pause'))) throw new FaultRefused(`that process is paused by fault ${a.rec.id} already`);
      const busy = a.undo.links.map((l) => `${l.a}|${l.b}`);
      const clash = resolved.links.find(([x, y]) => busy.includes(`${x}|${y}`) || busy.includes(`${y}|${x}`));
      if (clash) throw new FaultRefused(`link ${clash.join('-')} is held by fault ${a.rec.id} already`);
    }
    const undo: Undo = { stopped: [], links: [], hostFaults: [], restart: [] };
    const act: Active = { rec, undo, timer: null, procs };
    try {
      await this.apply(world, rec, procs, undo);
    } catch (e) {
      // Whatever part did start is undone; the fault is recorded as failed.
      await this.undoAll(world, act).catch(() => undefined);
      rec.state = 'failed';
      rec.error = errText(e);
      rec.endedAt = this.now();
      rec.endReason = 'failed';
      this.ended.push(rec);
      this.event('failed', rec, { error: rec.error });
      throw e instanceof FaultRefused ? e : new FaultRefused(`fault ${id} (${req.kind} on ${rec.resolved.summary}) failed: ${rec.error}`);
    }
    this.active.set(id, act);
    this.persist();
    this.event('start', rec);
    act.timer = setTimeout(() => void this.end(id, 'expired'), Math.max(0, rec.endsAt - this.now()));
    return rec;
  }

  private async apply(world: World, rec: FaultRecord, procs: WorldProcess[], undo: Undo): Promise<void> {
    const p = rec.params;
    switch (rec.kind) {
      case 'pause':
        for (const x of procs) {
          if (!sameProcess(x.pid, x.start)) throw new FaultRefused(`pid ${x.pid} (${x.role}) is gone`);
          process.kill(x.pid, 'SIGSTOP');
          undo.stopped.push(x);
        }
        return;
      case 'kill':
        for (const x of procs) {
          if (!sameProcess(x.pid, x.start)) continue;
          process.kill(x.pid, 'SIGKILL');
          if (p.restart === true && x.vm && (x.role === 'partition' || x.role === 'vmwp')) {
            const host = rec.resolved.processes.find((q) => q.pid === x.pid)?.host;
            if (host) undo.restart.push({ host, vm: x.vm });
          }
        }
        return;
      case 'vmbus':
      case 'interrupt-delay':
      case 'clock':
      case 'vp-stall':
      case 'bitflip': {
        let params = p;
        if (rec.kind === 'bitflip' && p.gpa === undefined) {
          // A page of the workload's data (memdirty's first 256), at its first byte, a bit other
          // than the lowest (a flip of bit 0 could look like memdirty's own one-less step).
          const rnd = seededRandom(rec.seed);
          const page = Math.floor(rnd() * 256);
          params = { gpa: WORKLOAD_DATA_GPA + page * 4096, mask: p.mask ?? 1 << (1 + Math.floor(rnd() * 7)) };
          rec.params = { ...p, ...params };
        }
        const spec = hostSpecOf(rec.kind, params, rec.seed);
        if (!spec.ok) throw new FaultRefused(spec.message);
        const effects: Record<string, unknown> = {};
        for (const v of rec.resolved.vms) {
          effects[v.vm] = await this.hostCall(world, v.host, 'faultSet', { id: rec.id, vm: v.vm, spec: spec.value, forMs: rec.forMs });
          if (rec.kind !== 'bitflip') undo.hostFaults.push({ host: v.host, vm: v.vm });
        }
        rec.effect = effects;
        return;
      }
      case 'lp-shrink': {
        const spec = hostSpecOf('lp-shrink', p, rec.seed);
        if (!spec.ok) throw new FaultRefused(spec.message);
        const effects: Record<string, unknown> = {};
        for (const h of rec.resolved.hosts) {
          effects[h] = await this.hostCall(world, h, 'faultSet', { id: rec.id, vm: null, spec: spec.value as HostFaultSpec, forMs: rec.forMs });
          undo.hostFaults.push({ host: h, vm: null });
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
          undo.links.push({ a, b, cut, before, wasCut: was?.cut === true });
          if (cut) await linkCut(this.home, a, b);
          else {
            const change: LinkChange = {};
            for (const k of ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const) if (typeof p[k] === 'number') change[k] = p[k];
            change.seed = rec.seed;
            await linkSet(this.home, a, b, change);
          }
        }
        return;
      }
    }
  }

  /** Undoes what `act` did; collects (does not throw on) what could not be undone. */
  private async undoAll(world: World | null, act: Active): Promise<string[]> {
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
    for (const l of u.links) {
      try {
        if (l.cut && !l.wasCut) await linkHeal(this.home, l.a, l.b);
        if (!l.cut) await linkSet(this.home, l.a, l.b, l.before);
      } catch (e) {
        problems.push(`link ${l.a}-${l.b}: ${errText(e)}`);
      }
    }
    u.links = [];
    if (u.hostFaults.length) {
      const w = world ?? (await readWorld(this.home).catch(() => null));
      for (const h of u.hostFaults) {
        if (!w) break;
        try {
          await this.hostCall(w, h.host, 'faultClear', { id: act.rec.id, vm: h.vm }, 5000);
        } catch (e) {
          // A VM or host that is gone took its fault with it.
          const m = errText(e);
          if (!/NotFound|not running|is gone|HostGone|not up|no host/i.test(m)) problems.push(`${h.vm ?? h.host}: ${m}`);
        }
      }
      u.hostFaults = [];
    }
    return problems;
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
          await this.restartVm(w, r.host, r.vm);
          this.say(`fault ${rec.id}: VM ${r.vm} started again on ${r.host}`);
        } catch (e) {
          rec.error = [rec.error, `restart ${r.vm}: ${errText(e)}`].filter(Boolean).join('; ');
          this.say(`fault ${rec.id}: VM ${r.vm} was not started again`, { err: errText(e) });
        }
      }
    })();
  }

  /** Starts VM `vm` on `host` again once its worker has seen it die (it is Off then). */
  private async restartVm(world: World, host: string, vm: string): Promise<void> {
    const until = this.now() + 15_000;
    for (;;) {
      const list = await this.hostCall<Array<{ name: string; state: string }>>(world, host, 'vmList', {}, 5000).catch(() => null);
      const st = list?.find((v) => v.name === vm)?.state;
      if (st === 'Running') return;
      if (st === 'Off') {
        await this.hostCall(world, host, 'vmStart', { name: vm }, 60_000);
        return;
      }
      if (this.now() > until) throw new Error(`VM ${vm} on ${host} did not turn Off after its process was killed (state ${st ?? 'unknown'})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Ends fault `id` now (`reason`), undoing it. */
  end(id: string, reason: FaultEndReason): Promise<FaultRecord | null> {
    return this.serial(async () => {
      const act = this.active.get(id);
      if (!act) return null;
      if (act.timer) clearTimeout(act.timer);
      const restart = act.undo.restart;
      act.undo.restart = [];
      const problems = await this.undoAll(null, act);
      this.active.delete(id);
      const rec = act.rec;
      this.restartAll(rec, restart);
      rec.state = 'ended';
      rec.endedAt = this.now();
      rec.endReason = reason;
      if (problems.length) rec.error = problems.join('; ');
      this.ended.push(rec);
      if (this.ended.length > 1000) this.ended.splice(0, this.ended.length - 1000);
      this.persist();
      this.event('end', rec, { reason, ...(problems.length ? { problems } : {}) });
      this.lastActivity = this.now();
      return rec;
    });
  }

  /** Ends faults now: one, an owner's, or all. */
  async clear(fault: string | null, owner: string | null, reason: FaultEndReason = 'cleared'): Promise<FaultRecord[]> {
    this.lastActivity = this.now();
    const ids = [...this.active.values()].filter((a) => (fault === null || a.rec.id === fault) && (owner === null || a.rec.owner === owner)).map((a) => a.rec.id);
    if (fault !== null && ids.length === 0 && !this.active.has(fault)) throw new FaultRefused(`no active fault ${fault}${this.active.size ? ` (active: ${[...this.active.keys()].join(', ')})` : ''}`);
    const out: FaultRecord[] = [];
    for (const id of ids) {
      const r = await this.end(id, reason);
      if (r) out.push(r);
    }
    if (owner) this.owners.delete(owner);
    return out;
  }

  /** One pass of the watch: lapsed owners, vanished targets. */
  async watch(): Promise<void> {
    const t = this.now();
    for (const [owner, last] of this.owners) {
      if (t - last < OWNER_LEASE_MS) continue;
      this.owners.delete(owner);
      const mine = [...this.active.values()].filter((a) => a.rec.owner === owner);
      if (mine.length) this.say('owner lease lapsed: ending its faults', { owner, faults: mine.map((a) => a.rec.id) });
      for (const a of mine) await this.end(a.rec.id, 'owner-gone');
    }
    if (this.active.size === 0) return;
    let alive: Set<string> | null = null;
    for (const a of [...this.active.values()]) {
      const r = a.rec;
      if (r.kind === 'pause') {
        if (a.undo.stopped.length > 0 && a.undo.stopped.every((x) => !sameProcess(x.pid, x.start))) await this.end(r.id, 'target-gone');
      } else if (r.kind !== 'kill' && r.kind !== 'lp-shrink' && r.kind !== 'link' && r.kind !== 'partition' && r.resolved.vms.length > 0) {
        // A VM fault whose every VM has no worker any more (turned off, moved, killed).
        if (!alive) {
          const { hosts } = await readWorld(this.home).catch(() => ({ hosts: [] as World['hosts'] }));
          const ids = new Set(hosts.map((h) => h.hostId).filter((x): x is string => x !== null));
          alive = new Set(scanProcesses(ids).filter((p) => p.role === 'vmwp' && p.vm).map((p) => p.vm!));
        }
        if (r.resolved.vms.every((v) => !alive!.has(v.vm))) await this.end(r.id, 'target-gone');
      }
    }
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
    let raw: string;
    try {
      raw = readFileSync(activeFile(this.home), 'utf8');
    } catch {
      return 0;
    }
    let list: unknown;
    try {
      list = JSON.parse(raw);
    } catch {
      rmSync(activeFile(this.home), { force: true });
      return 0;
    }
    if (!Array.isArray(list)) return 0;
    let n = 0;
    for (const item of list as unknown[]) {
      const o = item as { rec?: FaultRecord; undo?: Undo } | null;
      if (!o || typeof o !== 'object' || !o.rec || !o.undo || typeof o.rec.id !== 'string') continue;
      const undo: Undo = {
        stopped: Array.isArray(o.undo.stopped) ? o.undo.stopped.filter((x) => x && Number.isInteger(x.pid) && x.pid > 1 && Number.isFinite(x.start)) : [],
        links: Array.isArray(o.undo.links) ? o.undo.links.filter((l) => l && typeof l.a === 'string' && typeof l.b === 'string') : [],
        hostFaults: Array.isArray(o.undo.hostFaults) ? o.undo.hostFaults.filter((h) => h && typeof h.host === 'string') : [],
        restart: [],
      };
      const act: Active = { rec: o.rec, undo, timer: null, procs: [] };
      const problems = await this.undoAll(null, act).catch((e: unknown) => [errText(e)]);
      n++;
      try {
        appendFileSync(faultLogFile(this.home), JSON.stringify({ time: new Date(this.now()).toISOString(), event: 'end', id: o.rec.id, kind: o.rec.kind, target: o.rec.target, reason: 'cleared', recovered: true, ...(problems.length ? { problems } : {}) }) + '\n');
      } catch { /* logged below */ }
      this.say('undid a fault a previous nemesis left', { id: o.rec.id, problems });
    }
    rmSync(activeFile(this.home), { force: true });
    return n;
  }
}

function impairmentsOf(l: LinkView | undefined): LinkChange {
  return { delayMs: l?.delayMs ?? null, jitterMs: l?.jitterMs ?? null, rateBps: l?.rateBps ?? null, lossPercent: l?.lossPercent ?? null, ...(l ? { seed: l.seed } : {}) };
}

/** Stopped processes (state T) among `pids`, for checks. */
export function stoppedAmong(pids: number[]): number[] {
  return pids.filter((p) => processState(p) === 'T');
}
