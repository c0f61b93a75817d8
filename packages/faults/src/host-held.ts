/**
 * Faults a host holds that no fault of the nemesis accounts for: an LP shrink set past the nemesis
 * (through a root's management API) or one that names no fault (a setLps without one). The
 * hypervisor keeps such a shrink until its deadline (up to a day); `fault list` shows it, marked
 * (`unheld`); `fault clear` without an id ends one that names no fault, `fault clear ID` one of
 * that id (the nemesis's clearUnheld). A named one may be another nemesis's (a cluster host's own
 * beside the cluster home's, both numbering f1, f2…): only asked for by its id is it ended. Read
 * from each root's `faultList` (`rootHostFaults`), which says LP shrinks with their id, null for
 * one that names no fault.
 */
import { FAULT_ID_RE, isPlainObject } from '@hvlab/protocol';
import { MgmtClient, readHost } from '@hvlab/host';
import { pathsForRecord } from '@hvlab/runtime';
import type { FaultRecord } from './types.js';
import type { World } from './world.js';

/** An LP shrink as a root's `faultList` answer lists it (`host`: HostFaultRecord). */
export interface RootHostFault {
  /** Null: the shrink names no fault. */
  id: string | null;
  lps: number;
  startedAt: number;
  endsAt: number;
}

/**
 * How the nemesis's records and `fault list` name an LP shrink that names no fault: not a fault
 * id (FAULT_ID_RE starts with a letter or digit), so no fault can be taken for it. Its root lists
 * it with a null id; a root before that listed it as "unknown", read as that id.
 */
export const UNNAMED_SHRINK_ID = '(unnamed)';

/**
 * The LP shrinks in a root's `faultList` answer ({ host: [{ id, kind, lps, startedAt, endsAt }] },
 * `id` a fault id or null); anything else in it, or an entry not of that shape, is left out.
 */
export function rootHostFaults(answer: unknown): RootHostFault[] {
  if (!isPlainObject(answer) || !Array.isArray(answer.host)) return [];
  const out: RootHostFault[] = [];
  const time = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  for (const f of (answer.host as unknown[]).slice(0, 16)) {
    if (!isPlainObject(f) || f.kind !== 'lp-shrink' || (f.id !== null && (typeof f.id !== 'string' || !FAULT_ID_RE.test(f.id)))) continue;
    if (!Number.isSafeInteger(f.lps) || (f.lps as number) < 1 || !time(f.startedAt) || !time(f.endsAt)) continue;
    out.push({ id: f.id, lps: f.lps as number, startedAt: f.startedAt, endsAt: f.endsAt });
  }
  return out;
}

/**
 * The shrinks of `listed` that no fault of the nemesis accounts for (`holds`: it holds a fault of
 * that id): those of another fault's id, and every one that names no fault, whatever the nemesis
 * holds (one listed as "unknown" was passed over while a fault of that id was active).
 */
export function unheldHostFaults(listed: readonly RootHostFault[], holds: (id: string) => boolean): RootHostFault[] {
  return listed.filter((f) => f.id === null || !holds(f.id));
}

/** How a root before the null id (a6efa45) listed a shrink that names no fault. */
export const OLD_UNNAMED_ID = 'unknown';

/**
 * How a root's `faultList` answer says it ends its shrinks: `hostClear`, it takes faultClear `host`
 * (the shrink of an id alone; a root before it refuses the argument, and ends the VMs' faults of
 * that id with the shrink), and the ids of its VMs' faults (null: not readable).
 */
export interface RootClears {
  hostClear: boolean;
  vmFaultIds: ReadonlySet<string> | null;
}

export function rootClears(answer: unknown): RootClears {
  const hostClear = isPlainObject(answer) && answer.hostClear === true;
  if (!isPlainObject(answer) || !Array.isArray(answer.vms)) return { hostClear, vmFaultIds: null };
  const ids = new Set<string>();
  for (const v of answer.vms as unknown[]) {
    if (!isPlainObject(v) || !Array.isArray(v.faults)) return { hostClear, vmFaultIds: null };
    for (const f of v.faults as unknown[]) {
      if (!isPlainObject(f) || typeof f.id !== 'string') return { hostClear, vmFaultIds: null };
      ids.add(f.id);
    }
  }
  return { hostClear, vmFaultIds: ids };
}

/**
 * Whether a listed shrink names no fault: a null id, or an old root's "unknown" (a root that takes
 * faultClear `host` lists such a shrink with a null id, so its "unknown" is a fault of that name).
 * Only such a shrink is the nemesis's clear of everything's to end: a named one it does not hold
 * may be another nemesis's (a cluster host's own beside the cluster home's), ended on request by
 * `fault clear ID`.
 */
export function namesNoFault(f: RootHostFault, root: RootClears): boolean {
  return f.id === null || (!root.hostClear && f.id === OLD_UNNAMED_ID);
}

/**
 * The faultClear arguments that end shrink `f` of a root and nothing else, or why none can: one
 * that names no fault by `unnamed`; one of an id by `host` at a root that takes it; at an older
 * root, by its id alone only when none of its VMs holds a fault of that id (that clear would end
 * them too).
 */
export function shrinkClearArgs(host: string, f: RootHostFault, root: RootClears): { args: Record<string, unknown> } | { problem: string } {
  if (f.id === null) return { args: { unnamed: true } };
  if (root.hostClear) return { args: { id: f.id, host: true } };
  if (root.vmFaultIds === null) return { problem: `host ${host}'s root did not say its VMs' faults, and a clear of ${f.id} there would end any of that id with the LP shrink: left to its deadline` };
  if (root.vmFaultIds.has(f.id)) return { problem: `host ${host}'s root is older than a clear of its LP shrink alone, and a VM there holds a fault ${f.id} too, which a clear of ${f.id} would end: left to its deadline` };
  return { args: { id: f.id } };
}

/**
 * A shrink host `host` holds without a fault of the nemesis, as a fault record marked `unheld`:
 * active while it lasts, or ended at `endedAt` (cleared by `fault clear`).
 */
export function unheldShrinkRecord(host: string, f: RootHostFault, endedAt: number | null = null): FaultRecord {
  return {
    id: f.id ?? UNNAMED_SHRINK_ID, kind: 'lp-shrink', target: `host:${host}`, role: null, params: { lps: f.lps }, owner: null, seed: 0, forMs: Math.max(0, f.endsAt - f.startedAt),
    resolved: { summary: `host ${host}`, hosts: [host], vms: [], processes: [], links: [] },
    state: endedAt === null ? 'active' : 'ended', startedAt: f.startedAt, endsAt: f.endsAt, endedAt, endReason: endedAt === null ? null : 'cleared',
    error: `held by the host ${f.id === null ? 'naming no fault' : 'without a fault of this nemesis'} (${f.lps} LP${f.lps === 1 ? '' : 's'} left)`, effect: null, unheld: true,
  };
}

/**
 * The LP shrinks the hosts of `world` hold, as their roots list them (`faultList`), each with its
 * host; a root that does not answer within `timeoutMs` (paused, busy, down) says none. Never throws.
 */
export async function readHostShrinks(world: Pick<World, 'hosts'>, timeoutMs = 2000): Promise<Array<{ host: string; fault: RootHostFault }>> {
  const out: Array<{ host: string; fault: RootHostFault }> = [];
  await Promise.all(world.hosts.filter((h) => h.hostId !== null).map(async (h) => {
    const rec = readHost(h.paths);
    if (!rec) return;
    let c: MgmtClient | null = null;
    try {
      c = new MgmtClient(pathsForRecord(h.paths, rec).mgmtEndpoint, { watch: rec });
      const listed = await c.request<unknown>('faultList', {}, timeoutMs);
      for (const fault of rootHostFaults(listed)) out.push({ host: h.name, fault });
    } catch {
      // Not answered: none known there.
    } finally {
      c?.close();
    }
  }));
  return out.sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0));
}
