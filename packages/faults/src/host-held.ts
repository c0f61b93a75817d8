/**
 * Faults a host holds that no fault of the nemesis accounts for: an LP shrink set past the nemesis
 * (through a root's management API) or one that names no fault (a setLps without one). The
 * hypervisor keeps such a shrink until its deadline (up to a day); `fault list` shows it, marked
 * (`unheld`), and `fault clear` without an id ends it (the nemesis's clearUnheld). Read from each
 * root's `faultList` (`rootHostFaults`), which says LP shrinks with their id, null for one that
 * names no fault.
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
