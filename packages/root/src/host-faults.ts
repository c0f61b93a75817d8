/**
 * A host's own faults (faults.ts `HostFaultSpec` kinds that are not a VM's): lp-shrink, which the
 * hypervisor enforces (it holds the deadline too, so the LPs come back even if this root dies).
 * One at a time: a second lp-shrink replaces the first. The root keeps the record so that
 * `faultList` shows it and `faultClear` can end it early.
 *
 * The hypervisor holds the shrink with its fault's id (setLps `fault`): a root started while a
 * shrink lasts (its predecessor was killed) learns it from the hypervisor's `stats` (`learn`), so
 * that `host info` and `faultList` show the LPs in effect, and the fault's clear restores them.
 * A shrink that names no fault (a setLps without one) is listed with a null id: it was listed as
 * "unknown", which is also a fault id, so a fault named "unknown" and such a shrink looked alike
 * (and the nemesis's clear of everything passed over the shrink while it held that fault).
 */
import { decodeLpShrinkInfo, isPlainObject, type MgmtArgs } from '@hvlab/protocol';
import { MgmtFailure } from './config.js';

export interface HostFaultRecord {
  /** The fault's id; null for a shrink that names no fault (no fault id is null: FAULT_ID_RE). */
  id: string | null;
  kind: 'lp-shrink';
  lps: number;
  startedAt: number;
  endsAt: number;
}

/** What the record holds of a shrink (one learnt from the hypervisor may name no fault: a setLps that named none). */
type Current = HostFaultRecord & { timer: NodeJS.Timeout };

export class HostFaults {
  private current: Current | null = null;
  /** Counts sets and clears: a `learn` that one overtook leaves the record to it. */
  private changes = 0;

  /**
   * `setLps(lps, forMs, fault)` asks the hypervisor (with the fault's id, which it holds with the
   * shrink); `bootLps` is what the host started with.
   */
  constructor(private readonly setLps: (lps: number, forMs: number, fault: string | null) => Promise<unknown>, private readonly bootLps: number, private readonly log: (msg: string, fields: Record<string, unknown>) => void) {}

  async set(id: string, lps: number, forMs: number): Promise<unknown> {
    if (lps >= this.bootLps) throw new MgmtFailure('InvalidArgument', `lp-shrink to ${lps} takes nothing away: this host has ${this.bootLps} LP${this.bootLps === 1 ? '' : 's'}`);
    this.changes++;
    const r = await this.setLps(lps, forMs, id);
    this.record(id, lps, forMs);
    this.log('fault injected', { fault: id, kind: 'lp-shrink', lps, forMs, bootLps: this.bootLps });
    return { id, kind: 'lp-shrink', lps, bootLps: this.bootLps, endsAt: this.current!.endsAt, hypervisor: r };
  }

  private record(id: string | null, lps: number, forMs: number): void {
    if (this.current) clearTimeout(this.current.timer);
    const now = Date.now();
    const timer = setTimeout(() => {
      if (this.current?.timer === timer) this.current = null;
    }, forMs);
    timer.unref();
    this.current = { id, kind: 'lp-shrink', lps, startedAt: now, endsAt: now + forMs, timer };
  }

  /**
   * Takes the shrink the hypervisor holds as this root's record (a root started while one lasts):
   * `stats` asks the hypervisor for its `stats`, whose `lpShrink` is checked (decodeLpShrinkInfo).
   * A set or clear made meanwhile wins. Answers what was learnt (null: no shrink, or none taken).
   */
  async learn(stats: () => Promise<unknown>): Promise<HostFaultRecord | null> {
    const seen = this.changes;
    const answer = await stats();
    if (seen !== this.changes || this.current) return null;
    const d = decodeLpShrinkInfo(isPlainObject(answer) ? answer.lpShrink : undefined, this.bootLps);
    if (typeof d === 'string') {
      this.log('the hypervisor\'s LP shrink is not understood: not taken', { error: d });
      return null;
    }
    if (d === null || d.remainingMs <= 0) return null;
    this.record(d.fault, d.lps, d.remainingMs);
    this.log('an LP shrink the hypervisor holds was taken as this root\'s record', { fault: d.fault, lps: d.lps, remainingMs: d.remainingMs });
    return this.list()[0] ?? null;
  }

  /**
   * Ends the host's fault (if `id` is null or its id); resolves with the ids ended, null for a
   * shrink that named no fault.
   */
  async clear(id: string | null): Promise<Array<string | null>> {
    this.changes++;
    const c = this.current;
    if (!c) {
      // A root that could not learn the shrink the hypervisor holds (it did not answer) has no
      // record of it: give every LP back anyway (harmless when none is taken).
      await this.setLps(this.bootLps, 0, null).catch(() => undefined);
      return [];
    }
    // A shrink of an unknown fault is ended by any fault's clear: nothing else could end it early.
    if (id !== null && c.id !== null && c.id !== id) return [];
    clearTimeout(c.timer);
    this.current = null;
    await this.setLps(this.bootLps, 0, null);
    this.log('fault cleared', { fault: c.id, kind: c.kind });
    return [c.id];
  }

  /**
   * Ends the shrink that names no fault, and no other (faultClear `unnamed`: how the nemesis's
   * clear of everything ends one, without a fault id that a VM's fault may have too); true if one
   * was ended.
   */
  async clearUnnamed(): Promise<boolean> {
    if (this.current === null || this.current.id !== null) return false;
    return (await this.clear(null)).length > 0;
  }

  /**
   * Ends the shrink of fault `id`, and no other (faultClear `host`: how a shrink this root holds
   * for a fault the nemesis asking does not hold is ended by its id, without ending a VM's fault of
   * that id, which may be another nemesis's); the ids ended.
   */
  async clearOf(id: string): Promise<Array<string | null>> {
    if (this.current === null || this.current.id !== id) return [];
    return await this.clear(id);
  }

  list(): HostFaultRecord[] {
    if (!this.current) return [];
    const { timer: _t, ...rec } = this.current;
    return [rec];
  }
}

/** What a faultClear asks of the host's VMs (Vmms). */
export interface VmFaultClears {
  faultClear(vm: string, id: string | null): Promise<unknown>;
  faultClearAll(id: string | null): Promise<string[]>;
}

/**
 * A management faultClear: `unnamed` ends only the host's shrink that names no fault, `host` only
 * its shrink of fault `id` (neither touches a VM's fault), `vm` that VM's fault (or all of them),
 * and neither the host's shrink and every VM's fault of `id` (or all).
 */
export async function faultClear(args: MgmtArgs['faultClear'], host: HostFaults, vms: VmFaultClears): Promise<unknown> {
  if (args.unnamed === true) return { cleared: (await host.clearUnnamed()) ? [null] : [] };
  if (args.host === true) return { cleared: await host.clearOf(args.id!) };
  if (args.vm !== undefined) return await vms.faultClear(args.vm, args.id ?? null);
  const ended = await host.clear(args.id ?? null);
  return { cleared: [...ended, ...(await vms.faultClearAll(args.id ?? null))] };
}
