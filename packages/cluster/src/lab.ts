/**
 * A cluster on this machine: one host (hypervisor + root + VMWPs + partitions) per host of the
 * topology, each with its own home under `<HVLAB_HOME>/cluster/hosts/<name>`, brought up and down
 * as a whole.
 *
 * What is built so far (issue 11, first steps): each host in its own network namespace on one
 * bridge where root with CAP_NET_ADMIN allows it (netns.ts), else side by side on loopback; each
 * is managed through its own management socket (a unix socket: it crosses namespaces); VMs are
 * created and started on the host the file names. Not built yet: host-to-host traffic through
 * hvlab's link layer (the links' impairments are read and shown, not applied), CURVE keys,
 * `--join`.
 *
 * The cluster record (`cluster/cluster.json`) holds the topology's own text and is written
 * before any host starts, so `cluster down` finds everything even when the CLI that ran
 * `cluster up` was killed half way; it is decoded by re-checking that text (`parseTopology`).
 * `cluster down` also brings down any host home found under `cluster/hosts/`, recorded or not.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { formatBytes, type HostInfo, type VmInfo } from '@hvlab/protocol';
import { hostPaths, writeFileAtomic, type HostPaths } from '@hvlab/runtime';
import { down, hostRunning, lockHolder, MgmtClient, readHost, sweepHost, up } from '@hvlab/host';
import { parseTopology, TopologyError, type Topology, type TopologyVm } from './topology.js';
import { clusterTag, namespacesAvailable, planNetwork, setupNetwork, teardownNetwork, type ClusterNetwork } from './netns.js';

export const CLUSTER_RECORD_VERSION = 1;

export interface ClusterRecord {
  version: number;
  name: string;
  /** The topology file as given to `cluster up`. */
  file: string;
  /** How the hosts were placed: 'namespaces' or 'loopback', and why. */
  mode: 'namespaces' | 'loopback';
  modeReason: string;
  /** Its text: the record's topology is this, checked again on every read. */
  source: string;
  createdAt: string;
}

/** The network of the cluster of `home` as it would be made now (namespaces where allowed). */
export function clusterNetwork(home: string, topology: Topology): ClusterNetwork {
  const avail = namespacesAvailable();
  return planNetwork(home, topology.hosts.map((h) => h.name), avail.ok ? 'namespaces' : 'loopback', avail.ok ? avail.reason : `loopback addresses: ${avail.reason}`);
}

export class ClusterError extends Error {
  override name = 'ClusterError';
}

export function clusterDir(home: string): string {
  return join(home, 'cluster');
}
export function clusterRecordFile(home: string): string {
  return join(clusterDir(home), 'cluster.json');
}
export function clusterHostHome(home: string, host: string): string {
  return join(clusterDir(home), 'hosts', host);
}

/**
 * The cluster of `home`, or null when none is up. A record that does not decode (cut short,
 * hand-edited) is a ClusterError naming the file: `cluster down` still cleans up around it.
 */
export function readCluster(home: string): { record: ClusterRecord; topology: Topology } | null {
  const file = clusterRecordFile(home);
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new ClusterError(`the cluster record ${file} is not JSON; run "hvlab cluster down" to clean up`);
  }
  const o = v as Partial<ClusterRecord> | null;
  if (!o || typeof o !== 'object' || o.version !== CLUSTER_RECORD_VERSION || typeof o.name !== 'string' || typeof o.file !== 'string' || typeof o.source !== 'string' || typeof o.createdAt !== 'string'
    || (o.mode !== 'namespaces' && o.mode !== 'loopback') || typeof o.modeReason !== 'string') {
    throw new ClusterError(`the cluster record ${file} is not one this hvlab wrote; run "hvlab cluster down" to clean up`);
  }
  let topology: Topology;
  try {
    topology = parseTopology(o.source, o.file);
  } catch (e) {
    if (e instanceof TopologyError) throw new ClusterError(`the cluster record ${file} holds a topology that no longer checks: ${e.problems[0]!.message}`);
    throw e;
  }
  if (topology.name !== o.name) throw new ClusterError(`the cluster record ${file} names cluster ${o.name} but holds ${topology.name}`);
  return { record: o as ClusterRecord, topology };
}

function writeRecord(home: string, rec: ClusterRecord): void {
  mkdirSync(clusterDir(home), { recursive: true });
  writeFileAtomic(clusterRecordFile(home), JSON.stringify(rec, null, 2) + '\n');
}

/** The home of host `name` of the cluster that is up in `home`; a ClusterError naming the hosts when there is none. */
export function clusterHostPaths(home: string, name: string): HostPaths {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}: --host names a host of a cluster ("hvlab cluster up FILE")`);
  if (!c.topology.hosts.some((h) => h.name === name)) {
    throw new ClusterError(`cluster ${c.topology.name} has no host "${name}" (hosts: ${c.topology.hosts.map((h) => h.name).join(', ')})`);
  }
  return hostPaths(clusterHostHome(home, name));
}

export interface ClusterUpOptions {
  /** Progress lines ("host h1 is up", …). */
  progress?: (line: string) => void;
  /** Extra environment for every host's processes. */
  env?: Record<string, string>;
}

async function createVm(c: MgmtClient, vm: TopologyVm): Promise<void> {
  await c.request('vmNew', { name: vm.name, memory: formatBytes(vm.memoryBytes), vps: vm.vps, workload: vm.workload });
  const p = vm.processor;
  if (p.reserve !== 0 || p.maximum !== 100 || p.weight !== 100) await c.request('vmSetProcessor', { name: vm.name, reserve: p.reserve, maximum: p.maximum, weight: p.weight });
  await c.request('vmStart', { name: vm.name }, 60000);
}

/**
 * Brings up every host of `topology` and starts every VM on its host; returns once all are
 * Running. Anything that fails brings the whole cluster down again (nothing is left) and is
 * rethrown.
 */
export async function clusterUp(home: string, topology: Topology, source: string, file: string, opts: ClusterUpOptions = {}): Promise<void> {
  if (existsSync(clusterRecordFile(home))) {
    let name = '?';
    try {
      name = readCluster(home)?.topology.name ?? '?';
    } catch { /* unreadable: still a cluster here */ }
    throw new ClusterError(`a cluster (${name}) is already up for ${home}; run "hvlab cluster down" first`);
  }
  const say = opts.progress ?? (() => {});
  const net = clusterNetwork(home, topology);
  writeRecord(home, { version: CLUSTER_RECORD_VERSION, name: topology.name, file, source, createdAt: new Date().toISOString(), mode: net.mode, modeReason: net.reason });
  const clients: MgmtClient[] = [];
  try {
    setupNetwork(net);
    if (net.mode === 'namespaces') say(`network: ${net.hosts.length} namespaces on bridge ${net.bridge} (${net.subnet})`);
    // Hosts start side by side; each host's VMs then start one after another on it.
    await Promise.all(topology.hosts.map(async (h) => {
      const paths = hostPaths(clusterHostHome(home, h.name));
      const hn = net.hosts.find((x) => x.name === h.name)!;
      const rec = await up(paths, { lps: h.lps, env: { ...opts.env, HVLAB_HOST_ADDRESS: hn.address }, netns: hn.netns });
      say(`host ${h.name} is up (host id ${rec.hostId}, ${rec.lps} LPs, ${hn.address}${hn.netns ? ` in namespace ${hn.netns}` : ''})`);
      const c = new MgmtClient(paths.mgmtEndpoint, { watch: rec });
      clients.push(c);
      for (const vm of topology.vms.filter((v) => v.host === h.name)) {
        await createVm(c, vm);
        say(`VM ${vm.name} is Running on ${h.name}`);
      }
    }));
  } catch (e) {
    for (const c of clients) c.close();
    say(`cluster up failed (${(e as Error).message}); bringing everything down`);
    await clusterDown(home);
    throw e;
  }
  for (const c of clients) c.close();
}

/** Brings down every host of the cluster of `home` (recorded or found on disk) and removes the cluster's state. */
export async function clusterDown(home: string): Promise<{ name: string | null; hosts: Array<{ name: string; hostId: string | null; graceful: boolean }>; network: number }> {
  let name: string | null = null;
  const names = new Set<string>();
  try {
    const c = readCluster(home);
    if (c) {
      name = c.topology.name;
      for (const h of c.topology.hosts) names.add(h.name);
    }
  } catch { /* an unreadable record: the host homes on disk are still found below */ }
  try {
    for (const d of readdirSync(join(clusterDir(home), 'hosts'))) names.add(d);
  } catch { /* none */ }
  const hosts = await Promise.all([...names].map(async (n) => {
    const paths = hostPaths(clusterHostHome(home, n));
    await settleStartingHost(paths);
    const r = await down(paths);
    return { name: n, hostId: r.hostId, graceful: r.graceful };
  }));
  // The network goes last (its namespaces held the hosts), found by its tag whatever made it.
  const removed = teardownNetwork(clusterTag(home));
  rmSync(clusterDir(home), { recursive: true, force: true });
  return { name, hosts, network: removed };
}

/**
 * A hypervisor that holds a host home's lock but has not written its record yet (a `cluster up`
 * killed while that host was starting): wait a moment for the record, which `down` needs; if none
 * comes, kill the hypervisor and sweep its host by the id in its environment.
 */
async function settleStartingHost(paths: HostPaths): Promise<void> {
  for (let i = 0; i < 40 && readHost(paths) === null && lockHolder(paths) !== null; i++) await new Promise((r) => setTimeout(r, 50));
  const pid = readHost(paths) === null ? lockHolder(paths) : null;
  if (pid === null) return;
  let hostId: string | null = null;
  try {
    hostId = /(?:^|\0)HVLAB_HOST_ID=([0-9a-f]{6})(?:\0|$)/.exec(readFileSync(`/proc/${pid}/environ`, 'latin1'))?.[1] ?? null;
  } catch { /* gone */ }
  try {
    process.kill(pid, 'SIGKILL');
  } catch { /* gone */ }
  if (hostId) sweepHost(paths, hostId);
}

export interface ClusterHostStatus {
  name: string;
  home: string;
  /** The host's address (in its namespace, or a loopback address) and its namespace. */
  address: string;
  netns: string | null;
  state: 'up' | 'down';
  hostId: string | null;
  lps: number | null;
  vms: number;
  /** The host's own answer, when it is up. */
  info: HostInfo | null;
}

export interface ClusterStatus {
  name: string;
  mode: 'namespaces' | 'loopback';
  modeReason: string;
  bridge: string | null;
  subnet: string;
  hosts: ClusterHostStatus[];
  links: Array<{ a: string; b: string; impairments: Topology['links'][number]['impairments']; applied: boolean }>;
}

/** Asks one host of a cluster something; null when it is down or does not answer in time. */
async function ask<T>(paths: HostPaths, op: 'hostInfo' | 'vmList'): Promise<T | null> {
  const rec = readHost(paths);
  if (!hostRunning(rec)) return null;
  const c = new MgmtClient(paths.mgmtEndpoint, { watch: rec! });
  try {
    return await c.request<T>(op, {}, 5000);
  } catch {
    return null;
  } finally {
    c.close();
  }
}

export async function clusterStatus(home: string): Promise<ClusterStatus> {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}; run "hvlab cluster up FILE"`);
  const net = planNetwork(home, c.topology.hosts.map((h) => h.name), c.record.mode, c.record.modeReason);
  const hosts = await Promise.all(c.topology.hosts.map(async (h): Promise<ClusterHostStatus> => {
    const paths = hostPaths(clusterHostHome(home, h.name));
    const info = await ask<HostInfo>(paths, 'hostInfo');
    const hn = net.hosts.find((x) => x.name === h.name)!;
    return { name: h.name, home: paths.home, address: hn.address, netns: hn.netns, state: info ? 'up' : 'down', hostId: info?.hostId ?? readHost(paths)?.hostId ?? null, lps: info?.lps ?? h.lps, vms: info?.vms ?? 0, info };
  }));
  return {
    name: c.topology.name, mode: net.mode, modeReason: net.reason, bridge: net.bridge, subnet: net.subnet, hosts,
    // The link layer is not built yet: impairments are shown as the file has them, not applied.
    links: c.topology.links.map((l) => ({ a: l.a, b: l.b, impairments: l.impairments, applied: false })),
  };
}

/** Every VM of every host of the cluster, with the host it runs on (`host`). */
export async function clusterVms(home: string): Promise<Array<VmInfo & { host: string }>> {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}: "vm list --all" lists the VMs of a cluster ("hvlab cluster up FILE")`);
  const per = await Promise.all(c.topology.hosts.map(async (h) => {
    const list = await ask<VmInfo[]>(hostPaths(clusterHostHome(home, h.name)), 'vmList');
    return (list ?? []).map((vm) => ({ ...vm, host: h.name }));
  }));
  return per.flat();
}
