/**
 * What a home holds right now, as the nemesis needs it to resolve a target: its hosts (a
 * cluster's, or the one host of a plain `hvlab up`), the processes of each by role, the VMs that
 * run (found from their processes, so a paused or dead root does not hide them), and the
 * cluster's links. Processes are found by the titles hvlab's processes set for themselves
 * (`hvlab-partition HOSTID VM`, `hvlab-vmwp HOSTID VM`, `hvlab-root HOSTID`,
 * `hvlab-hypervisor HOSTID`), each with its start time, so a signal never reaches a recycled pid.
 */
import { procPids, procStartTime, procState, procTitle } from '@hvlab/shm/procfs';
import { vmMigrationOf, type LinkView, type ProcessRole, type VmMigration } from '@hvlab/protocol';
import { hostPaths, pathsForRecord, type HostPaths } from '@hvlab/runtime';
import { MgmtClient, readHost } from '@hvlab/host';
import { clusterHostHome, fabricPids, fabricStatus, readCluster } from '@hvlab/cluster';

/** The name of the one host of a home without a cluster. */
export const LONE_HOST = 'local';

export interface WorldHost {
  name: string;
  hostId: string | null;
  paths: HostPaths;
}

export interface WorldVm {
  host: string;
  vm: string;
  migration?: VmMigration | null;
}

export interface WorldProcess {
  hostId: string;
  role: ProcessRole;
  vm: string | null;
  pid: number;
  /** Start time in clock ticks since boot (/proc/PID/stat field 22): a pid with another start is another process. */
  start: number;
}

export interface World {
  cluster: string | null;
  hosts: WorldHost[];
  processes: WorldProcess[];
  /**
   * Running VMs: those with a VMWP (a warm, unclaimed worker is none). A copy of a VM whose name
   * runs on more than one host may carry what its root says of it (`markMoves`): `migration`, a
   * live migration's copy (null: none); left out when its root was not asked or did not answer.
   */
  vms: WorldVm[];
  links: LinkView[];
}

/** A process's start time, or null if it is gone (procfs's reader, under the name the fault code uses). */
export const processStart = procStartTime;

/** True if `pid` is the process that started at `start`. */
export function sameProcess(pid: number, start: number): boolean {
  return processStart(pid) === start;
}

/** A process's state letter (R, S, T for stopped, Z, …), or null if gone. */
export const processState = procState;

const TITLE_RE = /^hvlab-(hypervisor|root|vmwp|partition) (\S+)(?: (\S+))?/;

/** Every hvlab host process on this machine whose host id is in `hostIds`. */
export function scanProcesses(hostIds: ReadonlySet<string>): WorldProcess[] {
  const out: WorldProcess[] = [];
  for (const pid of procPids()) {
    const title = procTitle(pid);
    if (title === null || !title.startsWith('hvlab-')) continue;
    const m = TITLE_RE.exec(title);
    if (!m || !hostIds.has(m[2]!)) continue;
    const role = m[1] as ProcessRole;
    const vm = role === 'vmwp' || role === 'partition' ? (m[3] ?? null) : null;
    // A warm worker (and its partition process) belongs to no VM yet.
    // A booted warm worker's partition process goes by its template's name, `~warm-…`, which no VM can have.
    if ((role === 'vmwp' || role === 'partition') && (vm === null || vm.startsWith('(') || vm.startsWith('~'))) continue;
    const start = processStart(pid);
    if (start === null) continue;
    out.push({ hostId: m[2]!, role, vm, pid, start });
  }
  return out;
}

/**
 * The server of the cluster's fabric (fabric-main.ts: `hvlab-fabric-serve HOME`, beside its
 * supervisor `hvlab-fabric HOME`), with its start time; null when none runs. Its host id is ''
 * (it is no host's).
 */
export function fabricServer(home: string): WorldProcess | null {
  for (const pid of fabricPids(home)) {
    if (!procTitle(pid)?.startsWith('hvlab-fabric-serve ')) continue;
    const start = processStart(pid);
    if (start !== null) return { hostId: '', role: 'fabric', vm: null, pid, start };
  }
  return null;
}

/** The hosts of `home`: a cluster's (those on this machine), else its one host if it has one. */
export function worldHosts(home: string): { cluster: string | null; hosts: WorldHost[] } {
  const c = readCluster(home);
  if (c) {
    return {
      cluster: c.topology.name,
      hosts: c.topology.hosts.map((h) => {
        const paths = hostPaths(clusterHostHome(home, h.name));
        return { name: h.name, hostId: readHost(paths)?.hostId ?? null, paths };
      }),
    };
  }
  const paths = hostPaths(home);
  const rec = readHost(paths);
  return { cluster: null, hosts: rec ? [{ name: LONE_HOST, hostId: rec.hostId, paths }] : [] };
}

/** True if the home still has a cluster or a host (the nemesis leaves when it has neither). */
export function homeAlive(home: string): boolean {
  try {
    return worldHosts(home).hosts.length > 0;
  } catch {
    // A record that does not decode is still a cluster to clean up.
    return true;
  }
}

/**
 * The whole picture; the links are asked of the fabric (none without a cluster, or if it does not
 * answer), unless `opts.links` is false (then none: the VMs and processes only, without asking).
 */
export async function readWorld(home: string, opts: { links?: boolean } = {}): Promise<World> {
  const { cluster, hosts } = worldHosts(home);
  const ids = new Map(hosts.filter((h) => h.hostId).map((h) => [h.hostId!, h.name]));
  const processes = scanProcesses(new Set(ids.keys()));
  const vms: WorldVm[] = [];
  for (const p of processes) {
    if (p.role !== 'vmwp' || !p.vm) continue;
    const host = ids.get(p.hostId)!;
    if (!vms.some((x) => x.vm === p.vm && x.host === host)) vms.push({ host, vm: p.vm });
  }
  vms.sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : a.host < b.host ? -1 : 1));
  let links: LinkView[] = [];
  if (cluster && opts.links !== false) {
    links = await fabricStatus(home).then((s) => s.links, () => []);
    const server = fabricServer(home);
    if (server) processes.push(server);
  }
  return { cluster, hosts, processes, vms, links };
}

/** What the roots said of the copies of VMs that run on more than one host: `HOST|VM` to its migration (null: none). */
export type MoveMarks = Map<string, VmMigration | null>;

/** How long a root has to list its VMs for `readMoveMarks` (its vmList asks each VM's worker, up to 2 s). */
export const MOVE_MARKS_TIMEOUT_MS = 3000;

const markKey = (host: string, vm: string): string => `${host}|${vm}`;

/**
 * Asks the roots of the hosts that share a VM name in `world` which of those copies are a live
 * migration's (a moving VM runs on its source and on its destination until the commit). Only
 * then: a world without a shared name asks nobody. A root that does not answer within
 * `timeoutMs` (paused, busy, down) marks nothing, and its copies stay unknown; never throws.
 */
export async function readMoveMarks(world: World, timeoutMs = MOVE_MARKS_TIMEOUT_MS): Promise<MoveMarks> {
  const marks: MoveMarks = new Map();
  const hostsOf = new Map<string, Set<string>>();
  for (const v of world.vms) hostsOf.set(v.vm, (hostsOf.get(v.vm) ?? new Set()).add(v.host));
  const shared = [...hostsOf].filter(([, hs]) => hs.size > 1);
  if (shared.length === 0) return marks;
  const ask = new Set(shared.flatMap(([, hs]) => [...hs]));
  await Promise.all([...ask].map(async (name) => {
    const h = world.hosts.find((x) => x.name === name);
    const rec = h ? readHost(h.paths) : null;
    if (!h || !rec) return;
    let c: MgmtClient | null = null;
    try {
      c = new MgmtClient(pathsForRecord(h.paths, rec).mgmtEndpoint, { watch: rec });
      const list = await c.request<unknown>('vmList', {}, timeoutMs);
      if (!Array.isArray(list)) return;
      for (const [vm, hs] of shared) {
        if (!hs.has(name)) continue;
        const v = (list as unknown[]).find((x) => x !== null && typeof x === 'object' && (x as { name?: unknown }).name === vm);
        // Not listed (gone since the scan) or unreadable: unknown, as if not asked.
        const m = v === undefined ? undefined : vmMigrationOf(v);
        if (m !== undefined) marks.set(markKey(name, vm), m);
      }
    } catch {
      // Not answered: its copies stay unknown.
    } finally {
      c?.close();
    }
  }));
  return marks;
}

/** Puts `marks` on the copies of `world` they name (the others are left unknown). */
export function markMoves(world: World, marks: MoveMarks): void {
  for (const v of world.vms) {
    const m = marks.get(markKey(v.host, v.vm));
    if (m !== undefined) v.migration = m;
  }
}
