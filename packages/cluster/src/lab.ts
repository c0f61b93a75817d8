/**
 * A cluster on this machine: one host (hypervisor + root + VMWPs + partitions) per host of the
 * topology, each with its own home under `<HVLAB_HOME>/cluster/hosts/<name>`, brought up and down
 * as a whole.
 *
 * Each host runs in its own network namespace on one bridge where root with CAP_NET_ADMIN allows
 * it (netns.ts), else side by side on loopback addresses; each is managed through its own
 * management socket (a unix socket: it crosses namespaces); VMs are created and started on the
 * host the file names. `cluster up` also makes the cluster's CURVE key pair (`cluster/cluster.key`)
 * and starts its fabric (fabric.ts), which holds the links: each host's root joins the fabric and
 * reaches its peers only through their links' ports. Hosts of other machines join with
 * `hvlab up --join ADDRESS --key FILE` (joinHost) and are reached over CURVE TCP.
 *
 * The cluster record (`cluster/cluster.json`) holds the topology's own text and is written
 * before any host starts, so `cluster down` finds everything even when the CLI that ran
 * `cluster up` was killed half way; it is decoded by re-checking that text (`parseTopology`).
 * `cluster down` also brings down any host home found under `cluster/hosts/`, recorded or not.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, cpSync, existsSync, linkSync, openSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';
import { networkInterfaces } from 'node:os';
import {
  CLUSTER_HOST_RE, CLUSTER_WIRE_VERSION, DEFAULT_FABRIC_PORT, HEARTBEAT_MISSES_DOWN, HEARTBEAT_MS, MEMBER_SECRET_FILE, decodeFabricStatus, decodeLinkResult, formatBytes, isIpv4,
  type FabricStatus, type HostInfo, type LinkChange, type LinkView, type VmInfo,
} from '@hvlab/protocol';
import {
  canonicalHome, curveClientOptions, entries, hostPaths, makeClusterKey, nodeArgsFor, pidAlive, processEnv, readClusterKey, RpcClient, RpcFailure, writeClusterKey, writeFileAtomic, type HostPaths,
  FileShapeError, firstLine, pathsForRecord, readRegularFile, readRegularTail, testKnob, makeDirs,
} from '@hvlab/runtime';
import { down, HostError, HostInterrupted, HostStartFailed, hostRunning, lockHolder, MgmtClient, readHost, sweepHost, up } from '@hvlab/host';
import { procEnviron, procPids, procStartTime, procState } from '@hvlab/shm/procfs';
import { parseTopology, TopologyError, type Topology, type TopologyVm } from './topology.js';
import {
  chooseNetwork, INSTANCE_RE, legacyClusterTag, legacyNetwork, namespacesAvailable, NetworkError, networkOwner, planNetwork, setupNetwork, subnetBase, sweepStaleProbes, TAG_RE, teardownNetwork,
  type ClusterNetwork, type NetworkChoice, type NetworkScope,
} from './netns.js';

/**
 * 3: the record holds where the cluster's network is (`network`). A version 2 record, an earlier
 * hvlab's, is still read: its cluster's network has the 4-digit tag of its home and no owner marks.
 */
export const CLUSTER_RECORD_VERSION = 3;

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
  /**
   * Where the fabric listens (the gateway, or an address given with --listen, e.g. 0.0.0.0), the
   * port it was asked for (0: any free one, `fabricPortFor`; the one it got is fabric.json's), and
   * the address this machine's hosts reach it by.
   */
  listen: string;
  fabricPort: number;
  gateway: string;
  /** The network's tag, subnet and instance (version 3; absent in an earlier hvlab's version 2 record). */
  network?: NetworkChoice;
}

/**
 * The network a new cluster of `home` gets now (namespaces where allowed), on names and a subnet
 * nothing of this machine has; a ClusterError when none is free.
 */
export function clusterNetwork(home: string, topology: Topology): ClusterNetwork {
  home = canonicalHome(home);
  const avail = namespacesAvailable();
  try {
    return chooseNetwork(home, topology.hosts.map((h) => h.name), avail.ok ? 'namespaces' : 'loopback', avail.ok ? avail.reason : `loopback addresses: ${avail.reason}`);
  } catch (e) {
    if (e instanceof NetworkError) throw new ClusterError(e.message);
    throw e;
  }
}

/** The network of the cluster recorded in `home`, as its record says (an earlier hvlab's: as that one made it). */
export function recordedNetwork(home: string, record: ClusterRecord, topology: Topology): ClusterNetwork {
  const hosts = topology.hosts.map((h) => h.name);
  return record.network
    ? planNetwork(home, hosts, record.mode, record.modeReason, record.network)
    : legacyNetwork(home, hosts, record.mode, record.modeReason, record.gateway);
}

/**
 * What a teardown of the cluster of `home` removes: whatever carries its home's mark; unmarked,
 * what bears the tag of its record (an earlier hvlab's record: that hvlab's 4-digit tag); with no
 * record (or one that does not decode), marked objects only, so that a home with no cluster never
 * takes another home's network by its names.
 */
export function clusterNetworkScope(home: string, record: ClusterRecord | null): NetworkScope {
  const owner = networkOwner(home);
  if (!record) return { owner };
  if (record.network) return { owner, tag: record.network.tag };
  return record.mode === 'namespaces' ? { owner, tag: legacyClusterTag(home), legacy: true } : { owner };
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
 * Where a `cluster up` that failed keeps the logs of the host that failed (HOST under it), outside
 * the cluster's directory, which its teardown removes; the next failure replaces it.
 */
export function failedUpLogsDir(home: string): string {
  return join(home, 'cluster-up-failed');
}
/** The cluster's CURVE key pair: what a host of another machine needs to join (`up --join ADDRESS --key FILE`). */
export function clusterKeyFile(home: string): string {
  return join(clusterDir(home), 'cluster.key');
}
/** Written by the fabric's supervisor once its server serves: the server's pid, its own, the port, the restarts. */
export function fabricFile(home: string): string {
  return join(clusterDir(home), 'fabric.json');
}

/** The fabric's names and links, kept across its restarts (fabric.ts, FabricSavedState). */
export function fabricStateFile(home: string): string {
  return join(clusterDir(home), 'fabric-state.json');
}

/**
 * The cluster of `home`, or null when none is up. A record that does not decode (cut short,
 * hand-edited) is a ClusterError naming the file: `cluster down` still cleans up around it.
 */
/** A cluster record holds its topology file's text (at most 1 MiB) and a little more. */
const CLUSTER_RECORD_MAX_BYTES = 4 * 1024 * 1024;

export function readCluster(home: string): { record: ClusterRecord; topology: Topology } | null {
  const file = clusterRecordFile(home);
  let raw: string;
  try {
    raw = readRegularFile(file, CLUSTER_RECORD_MAX_BYTES).toString('utf8');
  } catch (e) {
    if (e instanceof FileShapeError) throw new ClusterError(`the cluster record ${e.message}; run "hvlab cluster down" to clean up`);
    return null;
  }
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new ClusterError(`the cluster record ${file} is not JSON; run "hvlab cluster down" to clean up`);
  }
  const o = v as Partial<ClusterRecord> | null;
  if (!o || typeof o !== 'object' || (o.version !== CLUSTER_RECORD_VERSION && o.version !== 2) || typeof o.name !== 'string' || typeof o.file !== 'string' || typeof o.source !== 'string' || typeof o.createdAt !== 'string'
    || (o.mode !== 'namespaces' && o.mode !== 'loopback') || typeof o.modeReason !== 'string'
    || !isIpv4(o.listen) || !isIpv4(o.gateway) || typeof o.fabricPort !== 'number' || !Number.isInteger(o.fabricPort) || o.fabricPort < 0 || o.fabricPort > 65535) {
    throw new ClusterError(`the cluster record ${file} is not one this hvlab wrote; run "hvlab cluster down" to clean up`);
  }
  if (o.version === CLUSTER_RECORD_VERSION) {
    const n = o.network as Partial<NetworkChoice> | null | undefined;
    const base = n && typeof n === 'object' ? subnetBase(o.mode, n.subnet) : null;
    if (!n || typeof n !== 'object' || typeof n.tag !== 'string' || !TAG_RE.test(n.tag) || typeof n.instance !== 'string' || !INSTANCE_RE.test(n.instance) || base === null || o.gateway !== `${base}.1`) {
      throw new ClusterError(`the cluster record ${file} does not say where its network is (a tag, a subnet hvlab gives and its gateway); run "hvlab cluster down" to clean up`);
    }
  } else if (o.network !== undefined) {
    throw new ClusterError(`the cluster record ${file} is not one this hvlab wrote; run "hvlab cluster down" to clean up`);
  }
  let topology: Topology;
  try {
    topology = parseTopology(o.source, o.file, { stored: true });
  } catch (e) {
    if (e instanceof TopologyError) throw new ClusterError(`the cluster record ${file} holds a topology that no longer checks: ${e.problems[0]!.message}`);
    throw e;
  }
  if (topology.name !== o.name) throw new ClusterError(`the cluster record ${file} names cluster ${o.name} but holds ${topology.name}`);
  return { record: o as ClusterRecord, topology };
}

/**
 * Writes the cluster record only if there is none: complete in a file of its own first, then linked
 * to the record's name, which fails if another process's is there. False when one was.
 */
function claimRecord(home: string, rec: ClusterRecord): boolean {
  makeDirs(clusterDir(home));
  const tmp = `${clusterRecordFile(home)}.claim-${process.pid}`;
  writeFileAtomic(tmp, JSON.stringify(rec, null, 2) + '\n');
  try {
    linkSync(tmp, clusterRecordFile(home));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    rmSync(tmp, { force: true });
  }
}


/** How to reach one host of a cluster: its home on this machine, or its CURVE management endpoint (a joined host). */
export type ClusterHostTarget =
  | { kind: 'local'; paths: HostPaths }
  | { kind: 'remote'; name: string; endpoint: string; socket: Record<string, unknown> };

/** Host `name` of the cluster that is up in `home`; a ClusterError naming the hosts when there is none. */
export async function clusterHostTarget(home: string, name: string): Promise<ClusterHostTarget> {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}: "${name}" would be a host of a cluster (--host and the link commands name a cluster's hosts; "hvlab cluster up FILE")`);
  if (c.topology.hosts.some((h) => h.name === name)) return { kind: 'local', paths: hostPaths(clusterHostHome(home, name)) };
  const st = await fabricStatus(home).catch(() => null);
  const m = st?.members.find((x) => x.name === name && !x.local);
  if (m) return { kind: 'remote', name, endpoint: `tcp://${m.address}:${m.mgmtPort}`, socket: curveClientOptions(readClusterKey(clusterKeyFile(home))) };
  const names = [...c.topology.hosts.map((h) => h.name), ...(st?.members.filter((x) => !x.local).map((x) => x.name) ?? [])];
  throw new ClusterError(`cluster ${c.topology.name} has no host "${name}" (hosts: ${names.join(', ')})${st ? '' : '; its fabric does not answer, so hosts that joined from other machines are not known'}`);
}

export interface ClusterUpOptions {
  /** Progress lines ("host h1 is up", …). */
  progress?: (line: string) => void;
  /** Extra environment for every host's processes. */
  env?: Record<string, string>;
  /** Where the fabric listens (default: the cluster's gateway, this machine only); 0.0.0.0 lets hosts of other machines join. */
  listen?: string;
  /** The fabric's port (default: `fabricPortFor`, 7740 for a fabric that other machines join). */
  fabricPort?: number;
  /**
   * Aborted (the CLI's Ctrl-C): the step under way finishes, then everything made so far is taken
   * down as after a failure, and the call throws. It used to leave the hosts and the fabric up with
   * only some of the topology's VMs, and a second "cluster up" was refused as "already up".
   */
  signal?: AbortSignal;
  /**
   * Where the logs of a host that failed (its start, or a start of one of its VMs) are kept and
   * named in the failure (the directory replaced by each failure's; default
   * `failedUpLogsDir(home)`): an experiment or chaos run on a temporary home keeps them in its
   * report directory, which outlives the home.
   */
  failedLogsDir?: string;
}

/** Throws once `signal` is aborted (between the steps of a cluster up). */
function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new ClusterError('interrupted');
}

/**
 * The fabric's port when none is given: DEFAULT_FABRIC_PORT, where hosts of other machines join,
 * for a fabric that listens beyond its cluster's gateway (--listen 0.0.0.0, or an address of this
 * machine); any free port (0) for one that listens on its gateway only, which nothing outside the
 * machine joins. A fabric on its gateway used to take 7740 too, and then a cluster of this
 * machine whose fabric listens on every address could not come up beside it (a listener on
 * 0.0.0.0:P and one on any address's P exclude each other), nor it beside that one. Its hosts
 * are told the port it got (HVLAB_CLUSTER_FABRIC, from fabric.json), and its supervisor binds the
 * same one on each restart.
 */
export function fabricPortFor(listen: string, gateway: string): number {
  return listen === gateway ? 0 : DEFAULT_FABRIC_PORT;
}

/** The port a cluster's fabric was to listen on is held by something else of this machine: the port, and what to do. */
export class FabricPortTakenError extends ClusterError {
  override name = 'FabricPortTakenError';
  constructor(readonly listen: string, readonly port: number) {
    super(`port ${port} is in use ${listen === '0.0.0.0' ? 'on this machine' : `on ${listen}`} (another cluster's fabric, or another program, listens there; "ss -ltnp sport = :${port}" shows which): `
      + 'take that down, or give this cluster another port with --fabric-port');
  }
}

/**
 * Whether `listen`:`port` is held now by a listener of this machine (on that address, or on every
 * address): bound for a moment and let go, as the fabric would bind it (SO_REUSEADDR, so a port
 * whose connections wait out TIME-WAIT is free). The error of anything else (no such address, a
 * port that needs privileges) is given back as it is.
 */
export function portHeld(listen: string, port: number): Promise<boolean> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', (e: NodeJS.ErrnoException) => (e.code === 'EADDRINUSE' ? done(true) : fail(e)));
    server.listen({ host: listen, port, exclusive: true }, () => server.close(() => done(false)));
  });
}

/** VMs a host starts at once during `cluster up` (each start is mostly waiting on processes). */
const START_CONCURRENCY = 3;

async function createVm(c: MgmtClient, vm: TopologyVm): Promise<void> {
  await c.request('vmNew', { name: vm.name, memory: formatBytes(vm.memoryBytes), vps: vm.vps, workload: vm.workload });
  const p = vm.processor;
  if (p.reserve !== 0 || p.maximum !== 100 || p.weight !== 100) await c.request('vmSetProcessor', { name: vm.name, reserve: p.reserve, maximum: p.maximum, weight: p.weight });
}

/** Starts `vms` on one host, START_CONCURRENCY at a time; the first failure is thrown once every start in flight settled. */
async function startVms(c: MgmtClient, vms: TopologyVm[], started: (vm: TopologyVm) => void, signal?: AbortSignal): Promise<void> {
  const queue = [...vms];
  let failure: unknown = null;
  const worker = async (): Promise<void> => {
    for (let vm = queue.shift(); vm && failure === null; vm = queue.shift()) {
      try {
        checkAborted(signal);
        await c.request('vmStart', { name: vm.name }, 60000);
        started(vm);
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(START_CONCURRENCY, vms.length) }, worker));
  if (failure !== null) throw failure;
}

/**
 * Brings up every host of `topology` and starts every VM on its host; returns once all are
 * Running. Anything that fails brings the whole cluster down again (nothing is left) and is
 * rethrown.
 */
export async function clusterUp(home: string, topology: Topology, source: string, file: string, opts: ClusterUpOptions = {}): Promise<void> {
  // Its network, its fabric's environment and its hosts' socket directories are named after this
  // spelling of the home: the one every other spelling of it resolves to (canonicalHome).
  home = canonicalHome(home);
  if (existsSync(clusterRecordFile(home))) {
    let name = '?';
    try {
      name = readCluster(home)?.topology.name ?? '?';
    } catch { /* unreadable: still a cluster here */ }
    throw new ClusterError(`a cluster (${name}) is already up for ${home}; run "hvlab cluster down" first`);
  }
  const say = opts.progress ?? (() => {});
  const net = clusterNetwork(home, topology);
  const listen = opts.listen ?? net.gateway;
  if (!isIpv4(listen)) throw new ClusterError(`--listen takes an IPv4 address (0.0.0.0 for every address), not "${listen}"`);
  // Accepted, it failed 15 s later: a host in a namespace cannot reach the machine's loopback.
  if (net.mode === 'namespaces' && listen.startsWith('127.')) throw new ClusterError(`--listen ${listen}: the hosts live in network namespaces and cannot reach this machine's loopback; use 0.0.0.0, or an address of this machine outside 127.0.0.0/8`);
  // Accepted, a broadcast or another machine's address failed only when the hosts did not join, 15 s later.
  if (opts.listen !== undefined && listen !== '0.0.0.0') {
    const mine = Object.values(networkInterfaces()).flat().filter((i) => i !== undefined && i.family === 'IPv4').map((i) => i!.address);
    const usable = net.mode === 'namespaces' ? mine.filter((x) => !x.startsWith('127.')) : mine;
    if (!mine.includes(listen)) throw new ClusterError(`--listen ${listen} is not an address of this machine (${usable.join(', ') || 'it has none'}): use one of them, or 0.0.0.0 for every address`);
  }
  if (opts.fabricPort !== undefined && (!Number.isInteger(opts.fabricPort) || opts.fabricPort < 1 || opts.fabricPort > 65535)) throw new ClusterError(`--fabric-port takes a port from 1 to 65535, not ${opts.fabricPort}`);
  const fabricPort = opts.fabricPort ?? fabricPortFor(listen, net.gateway);
  // A port something holds is said now, before anything is made, where its address exists already
  // (every address but a namespaced cluster's gateway, whose bridge is made below): it was said
  // only once the network was made and the fabric had failed ("Address already in use").
  const portSaid = async (): Promise<void> => {
    if (fabricPort === 0) return;
    const held = await portHeld(listen, fabricPort).catch((e: Error) => {
      throw new ClusterError(`the fabric cannot listen on ${listen}:${fabricPort}: ${e.message}`);
    });
    if (held) throw new FabricPortTakenError(listen, fabricPort);
  };
  if (listen !== net.gateway || net.mode === 'loopback') await portSaid();
  // Taken exclusively: two 'cluster up' at once on one home both found no record, both built the
  // same bridge and namespaces, and both failed half-way ('RTNETLINK answers: File exists').
  if (!claimRecord(home, {
    version: CLUSTER_RECORD_VERSION, name: topology.name, file, source, createdAt: new Date().toISOString(), mode: net.mode, modeReason: net.reason,
    listen, fabricPort, gateway: net.gateway, network: { tag: net.tag, subnet: net.subnet, instance: net.instance },
  })) throw new ClusterError(`a cluster is already up or coming up for ${home} (another "cluster up" took it first); "hvlab cluster status" shows it`);
  // One host per home: a single host ("hvlab up") here is not the cluster's, and "down" took only
  // one of the two. Asked after the record is claimed, as "up" asks for the record after its host
  // is up: of two started together, at least one sees the other.
  const single = hostPaths(home);
  if (hostRunning(readHost(single)) || lockHolder(single) !== null) {
    rmSync(clusterRecordFile(home), { force: true });
    throw new ClusterError(`a host is up in ${home} ("hvlab up" made it): one host per home ("hvlab down" first, or --home elsewhere)`);
  }
  const clients: MgmtClient[] = [];
  const signal = opts.signal;
  /** The first host that failed (its start, or a start of one of its VMs), and how. */
  let firstFailure: { e: unknown; host: string } | null = null;
  try {
    checkAborted(signal);
    setupNetwork(net);
    if (net.mode === 'namespaces') say(`network: ${net.hosts.length} namespace${net.hosts.length === 1 ? '' : 's'} on bridge ${net.bridge} (${net.subnet})`);
    writeClusterKey(clusterKeyFile(home), makeClusterKey(topology.name));
    // Taken meanwhile (or a namespaced gateway's, known only now): said as above, once the fabric could not bind it.
    const port = await startFabric(home).catch(async (e: unknown) => {
      await portSaid().catch((said: unknown) => {
        if (said instanceof FabricPortTakenError) throw said;
      });
      throw e;
    });
    say(`fabric: links on ${listen}:${port}`);
    checkAborted(signal);
    // Hosts start side by side; each host's VMs then start one after another on it. Every start
    // settles before a failure is taken further: the teardown below must not run beside a host
    // still starting (its processes came up after the teardown had looked).
    // The first host that fails stops the others where they are (a start under way, the VMs still
    // to start), as a Ctrl-C does: they used to come up and start every VM first (60 s a start
    // at most), only to be taken down.
    const stopAll = new AbortController();
    const hostSignal = signal ? AbortSignal.any([signal, stopAll.signal]) : stopAll.signal;
    const starts = await Promise.allSettled(topology.hosts.map(async (h) => {
      try {
        const paths = hostPaths(clusterHostHome(home, h.name));
        const hn = net.hosts.find((x) => x.name === h.name)!;
        const member = {
          HVLAB_HOST_ADDRESS: hn.address, HVLAB_CLUSTER_FABRIC: `${net.gateway}:${port}`, HVLAB_CLUSTER_KEY: clusterKeyFile(home), HVLAB_CLUSTER_HOST: h.name, HVLAB_CLUSTER_LOCAL: '1',
        };
        checkAborted(hostSignal);
        const rec = await up(paths, { lps: h.lps, env: { ...opts.env, ...member }, netns: hn.netns, signal: hostSignal }).catch((e: unknown) => {
          // Said with the host's name: "the host did not start" named none of the cluster's hosts.
          // Its logs are kept out of the teardown below, and named then (not the ones it removes).
          if (e instanceof HostStartFailed) throw new ClusterError(`host ${h.name}: ${e.reason}`);
          if (e instanceof HostError && !(e instanceof HostInterrupted)) throw new ClusterError(`host ${h.name}: ${e.message}`);
          throw e;
        });
        say(`host ${h.name} is up (host id ${rec.hostId}, ${rec.lps} LP${rec.lps === 1 ? '' : 's'}, ${hn.address}${hn.netns ? ` in namespace ${hn.netns}` : ''})`);
        const c = new MgmtClient(paths.mgmtEndpoint, { watch: rec });
        clients.push(c);
        const vms = topology.vms.filter((v) => v.host === h.name);
        for (const vm of vms) {
          checkAborted(hostSignal);
          await createVm(c, vm);
        }
        await startVms(c, vms, (vm) => say(`VM ${vm.name} is Running on ${h.name}`), hostSignal);
      } catch (e) {
        // The first failure is the one said; the others' "interrupted" follow from it.
        if (firstFailure === null && !stopAll.signal.aborted) firstFailure = { e, host: h.name };
        stopAll.abort();
        throw e;
      }
    }));
    const failed = starts.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw signal?.aborted || firstFailure === null ? failed.reason : (firstFailure as { e: unknown }).e;
    checkAborted(signal);
    await waitJoined(home, topology.hosts.map((h) => h.name), 15000);
    checkAborted(signal);
  } catch (e) {
    for (const c of clients) c.close();
    say(signal?.aborted ? 'cluster up interrupted; bringing everything down' : `cluster up failed (${(e as Error).message}); bringing everything down`);
    // The host that failed keeps its logs (moved out of the teardown, once its processes are
    // down): they were removed with the cluster, and a failed start left nothing to read.
    const failure = firstFailure as { e: unknown; host: string } | null;
    const failedHost = !signal?.aborted && failure !== null && failure.e === e ? failure.host : null;
    const keep = failedHost === null ? undefined : { host: failedHost, dir: opts.failedLogsDir ?? failedUpLogsDir(home) };
    const gone = await clusterDown(home, { keepLogs: keep });
    // The network could not be made (a name or the subnet taken meanwhile, an ip command refused): the user's to see, not a bug.
    if (e instanceof NetworkError) throw new ClusterError(`the cluster's network could not be made: ${e.message}`);
    if (keep) {
      const said = e instanceof ClusterError ? e.message : `host ${keep.host}: ${(e as Error).message ?? String(e)}`;
      throw new ClusterError(`${said}; ${!gone.keptLogs ? `its logs could not be kept (${gone.keptLogsError ?? 'none were found'})` : `its logs are kept in ${gone.keptLogs}`}`);
    }
    throw e;
  }
  for (const c of clients) c.close();
}

/**
 * Brings down every host of the cluster of `home` (recorded or found on disk) and removes the
 * cluster's state. `keepLogs`: the logs of that host are moved to `dir`/HOST (`dir` replaced as a
 * whole: what an earlier failure kept there goes) once every host is down, before the cluster's
 * directory goes: `keptLogs` says where (null: they could not be, `keptLogsError` why; absent when
 * not asked).
 */
export async function clusterDown(home: string, opts: { keepLogs?: { host: string; dir: string } } = {}): Promise<{ name: string | null; hosts: Array<{ name: string; hostId: string | null; graceful: boolean }>; network: number; keptLogs?: string | null; keptLogsError?: string }> {
  // Whichever spelling of the home it was given (a symlink to it, a relative path): the cluster's
  // names (its network's tag, its fabric's environment, its hosts' sockets) come from its one spelling.
  home = canonicalHome(home);
  // A CLI killed during its namespace probe left one named for no cluster: any cluster down takes it.
  if (process.env.HVLAB_CLUSTER_NETNS !== 'off') sweepStaleProbes();
  // Said before any host goes, so that what fails because they go (a move between them) can tell
  // why; with this process's pid and start time, so that a marker whose `cluster down` was killed
  // before its end is known as stale (goingDownState) and keeps nothing from working.
  try {
    writeFileAtomic(goingDownFile(home), `${process.pid} ${procStartTime(process.pid) ?? 0}\n`, { durable: false });
  } catch { /* no cluster directory: nothing of a cluster to take down but strays */ }
  let name: string | null = null;
  const names = new Set<string>();
  let scope = clusterNetworkScope(home, null);
  try {
    const c = readCluster(home);
    if (c) {
      name = c.topology.name;
      for (const h of c.topology.hosts) names.add(h.name);
      scope = clusterNetworkScope(home, c.record);
    }
  } catch { /* an unreadable record: the host homes on disk are still found below, and the network by its marks */ }
  try {
    for (const d of readdirSync(join(clusterDir(home), 'hosts'))) names.add(d);
  } catch { /* none */ }
  const hosts = await Promise.all([...names].map(async (n) => {
    const paths = hostPaths(clusterHostHome(home, n));
    await settleStartingHost(paths);
    const r = await down(paths);
    return { name: n, hostId: r.hostId, graceful: r.graceful };
  }));
  await stopFabric(home);
  let keptLogs: string | null = null;
  let keptLogsError: string | undefined;
  if (opts.keepLogs) {
    const r = keepLogsOf(hostPaths(clusterHostHome(home, opts.keepLogs.host)).logDir, opts.keepLogs.dir, opts.keepLogs.host);
    if ('error' in r) keptLogsError = r.error;
    else keptLogs = r.dir;
  }
  // The network goes last (its namespaces held the hosts): what carries this home's mark, and
  // unmarked, what bears its record's tag; never what carries another home's mark.
  let removed: number;
  try {
    removed = teardownNetwork(scope);
  } catch (e) {
    if (e instanceof NetworkError) throw new ClusterError(`the cluster's hosts are down, but its network cannot be told from others' (${e.message}); its record is kept: run "hvlab cluster down" again${keptLogs ? ` (host ${opts.keepLogs!.host}'s logs are kept in ${keptLogs})` : ''}`);
    throw e;
  }
  rmSync(clusterDir(home), { recursive: true, force: true });
  return { name, hosts, network: removed, ...(opts.keepLogs ? { keptLogs } : {}), ...(keptLogsError !== undefined ? { keptLogsError } : {}) };
}

/**
 * Moves a host's log directory `logDir` to `dir`/`name` (copied where a move cannot be made),
 * `dir` replacing what an earlier failure kept there; answers where, or why not. The logs go to a
 * directory beside `dir` first and take its place only once all of them are there: a move or copy
 * that fails leaves what was kept before as it was, and no part of a copy.
 */
export function keepLogsOf(logDir: string, dir: string, name: string): { dir: string } | { error: string } {
  if (!existsSync(logDir)) return { error: `${logDir} does not exist` };
  const staged = `${dir}.new-${process.pid}`;
  try {
    rmSync(staged, { recursive: true, force: true });
    makeDirs(staged);
    try {
      renameSync(logDir, join(staged, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      cpSync(logDir, join(staged, name), { recursive: true });
    }
  } catch (e) {
    // Not all there: no part of them stays, and what was kept before is as it was.
    rmSync(staged, { recursive: true, force: true });
    return { error: (e as Error).message };
  }
  try {
    rmSync(dir, { recursive: true, force: true });
    renameSync(staged, dir);
    return { dir: join(dir, name) };
  } catch {
    // The staged directory holds the only copy now: kept there, and named.
    return { dir: join(staged, name) };
  }
}

/** A kept-logs directory staged by `keepLogsOf` (`DIR.new-PID`) that a killed process left. */
export const STAGED_LOGS_RE = /^cluster-up-failed\.new-\d+$/;

/**
 * Written by `cluster down` when it starts ("PID STARTTIME": its pid, and its start time in clock
 * ticks since boot as /proc says it); gone with the cluster's directory at its end.
 */
export function goingDownFile(home: string): string {
  return join(clusterDir(home), 'going-down');
}

/**
 * The cluster's going-down marker: none; live (the `cluster down` that wrote it still runs); or
 * stale, with why and its text (`removeStaleGoingDown`). A `cluster down` killed after it wrote the
 * marker (SIGKILL, a closed terminal) left it for good with the cluster still up, and everything
 * that asked it took the cluster for one going down: the fabric's supervisor started no server
 * after its server died, and left, so the hosts were out of their fabric until the next
 * `cluster down`. A marker is stale when its writer is gone, or its pid is another process's now
 * (its start time differs), or it is not one `cluster down` writes; one of an older hvlab (a pid
 * alone) is live while its pid is.
 */
export type GoingDownState = { state: 'none' } | { state: 'live'; pid: number } | { state: 'stale'; pid: number | null; why: string; text: string };

export function goingDownState(home: string): GoingDownState {
  let text: string;
  try {
    text = readRegularFile(goingDownFile(home), 256).toString('utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'none' };
    return { state: 'stale', pid: null, why: `it cannot be read (${(e as Error).message})`, text: '' };
  }
  const m = /^(\d{1,10})(?: (\d{1,20}))?\n?$/.exec(text);
  if (!m) return { state: 'stale', pid: null, why: 'it is not one "cluster down" writes', text };
  const pid = Number(m[1]);
  if (pid === process.pid) return { state: 'live', pid };
  if (!pidAlive(pid)) return { state: 'stale', pid, why: `the "cluster down" that wrote it (pid ${pid}) is gone`, text };
  if (m[2] !== undefined) {
    const started = procStartTime(pid);
    // Unreadable (/proc hidden, or gone meanwhile): alive by signal 0, so taken as its writer.
    if (started !== null && String(started) !== m[2]) return { state: 'stale', pid, why: `the "cluster down" that wrote it (pid ${pid}) is gone, and its pid is another process's now`, text };
  }
  return { state: 'live', pid };
}

/**
 * Removes a stale marker whose text is `text`, and only that one: a `cluster down` started since
 * wrote its own, which stays (it is moved aside first, then linked back if it is not the stale
 * one; a link never replaces a file). True when the stale marker went.
 */
export function removeStaleGoingDown(home: string, text: string): boolean {
  const file = goingDownFile(home);
  const aside = `${file}.stale-${process.pid}`;
  try {
    renameSync(file, aside);
  } catch {
    return false;
  }
  let now: string | null = null;
  try {
    now = readRegularFile(aside, 256).toString('utf8');
  } catch { /* unreadable (not a file): '' as goingDownState gave it */ }
  const same = (now ?? '') === text;
  if (!same) {
    try {
      linkSync(aside, file);
    } catch { /* another is there already: that one stays */ }
  }
  try {
    rmSync(aside, { force: true, recursive: true });
  } catch { /* left beside it: the cluster's directory goes with cluster down */ }
  return same;
}

/**
 * Whether the cluster of `home` is being taken down ("cluster down", or "down" in its home, that
 * still runs), or is gone: what failed between its hosts meanwhile failed because of that. A stale
 * marker (goingDownState) says nothing: the cluster is up.
 */
export function clusterGoingDown(home: string): boolean {
  return !existsSync(clusterRecordFile(home)) || goingDownState(home).state === 'live';
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
  const id = procEnviron(pid)?.get('HVLAB_HOST_ID'); // undefined: gone
  if (id !== undefined && /^[0-9a-f]{6}$/.test(id)) hostId = id;
  try {
    process.kill(pid, 'SIGKILL');
  } catch { /* gone */ }
  if (hostId) sweepHost(paths, hostId);
}

export interface ClusterHostStatus {
  name: string;
  /** Its home on this machine; null for a host that joined from another machine. */
  home: string | null;
  /** The host's address (in its namespace, a loopback address, or its own machine's) and its namespace. */
  address: string;
  netns: string | null;
  /** Started by this machine's `cluster up` ('file'), or joined with `up --join`. */
  origin: 'file' | 'joined';
  /**
   * up: it answered; stopped: its root or hypervisor is stopped (a pause fault, SIGSTOP), so it
   * does not answer, but it and its VMs are there; silent: its processes run and it did not answer
   * within 5 s; down: gone. A paused root was shown as down, with no VMs.
   */
  state: 'up' | 'stopped' | 'silent' | 'down';
  /** Whether the fabric has it as a member, and whether it refreshed within the last 10 heartbeat periods. */
  member: boolean;
  memberFresh: boolean;
  hostId: string | null;
  lps: number | null;
  vms: number;
  /** The host's own answer, when it is up. */
  info: HostInfo | null;
}

export interface ClusterLinkStatus extends LinkView {
  /** From the fabric (applied to traffic now); false when the fabric does not answer and these are the file's. */
  applied: boolean;
}

export interface ClusterStatus {
  name: string;
  mode: 'namespaces' | 'loopback';
  modeReason: string;
  bridge: string | null;
  subnet: string;
  /** Where hosts of other machines join: `hvlab up --join <join> --key <keyFile>` (null: this machine only). */
  join: string | null;
  keyFile: string;
  /**
   * `address`: the gateway and the port the fabric got (the gateway alone before it said one);
   * `restarts`: servers its supervisor started after the first died; `since`: when the one serving now started.
   */
  fabric: { state: 'up' | 'down'; address: string; pid: number | null; refused: number; error: string | null; restarts: number; since: string | null };
  hosts: ClusterHostStatus[];
  links: ClusterLinkStatus[];
}

// ---- temporary homes ----------------------------------------------------------------------------

/** In a run's temporary home (an experiment's or a chaos run's own cluster): who made it. */
export const TEMPORARY_HOME_FILE = 'temporary-home.json';

/**
 * Marks `home` as the temporary home of this process (its pid and start time), right after it is
 * made. A run killed before its lease on the home was held (the nemesis starting, ~0.5 s) left
 * the home behind; the nemesis, leaving a home with no host, removes one whose maker is gone
 * (orphanedTemporaryHome).
 */
export function markTemporaryHome(home: string): void {
  writeFileAtomic(join(home, TEMPORARY_HOME_FILE), JSON.stringify({ pid: process.pid, start: procStartTime(process.pid) }) + '\n', { durable: false });
}

/** The maker that `home`'s temporary-home marker names (markTemporaryHome), or null: no marker, or not one. */
function temporaryHomeMaker(home: string): { pid: number; start: unknown } | null {
  let v: unknown;
  try {
    v = JSON.parse(readRegularFile(join(home, TEMPORARY_HOME_FILE), 4096).toString('utf8'));
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null) return null;
  const { pid, start } = v as { pid?: unknown; start?: unknown };
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) return null;
  return { pid, start };
}

/**
 * Whether `home` is a run's temporary home (markTemporaryHome): the only kind of home a lease may
 * have taken down and removed when it ends (the nemesis's teardown), never a user's.
 */
export function isTemporaryHome(home: string): boolean {
  return temporaryHomeMaker(home) !== null;
}

/** Whether `home` is a temporary home (markTemporaryHome) whose maker is gone (no such pid, or another process under it). */
export function orphanedTemporaryHome(home: string): boolean {
  const maker = temporaryHomeMaker(home);
  if (maker === null) return false;
  const now = procStartTime(maker.pid);
  return now === null || (typeof maker.start === 'number' && now !== maker.start);
}

// ---- the fabric ---------------------------------------------------------------------------------

/**
 * Pids of processes that are the fabric of `home` (found by their environment, whatever started
 * them), whichever spelling of the home either gives (a fabric started through a symlink to it).
 */
export function fabricPids(home: string): number[] {
  const out: number[] = [];
  const canonical = canonicalHome(home);
  for (const pid of procPids()) {
    // Gone, or not ours to read: null.
    const h = procEnviron(pid)?.get('HVLAB_FABRIC_HOME');
    if (h !== undefined && (h === home || h === canonical || canonicalHome(h) === canonical) && pidAlive(pid)) out.push(pid);
  }
  return out;
}

/** Starts the fabric of the cluster recorded in `home`; resolves with its control port. */
async function startFabric(home: string): Promise<number> {
  const logDir = join(clusterDir(home), 'log');
  makeDirs(logDir);
  const errFd = openSync(join(logDir, 'fabric-stderr.log'), 'a');
  const child = spawn(process.execPath, [...nodeArgsFor(entries.fabric), home], {
    detached: true, stdio: ['ignore', 'pipe', errFd], env: processEnv(process.env, { HVLAB_FABRIC_HOME: home }),
  });
  closeSync(errFd);
  const first = await firstLine(child, 15000);
  const line = first.kind === 'line' ? first.line : first.kind === 'exited' ? `exited (${first.why})${first.partial ? `: ${first.partial}` : ''}` : first.kind === 'timeout' ? 'it did not say ready within 15 s' : 'its first line is too long';
  child.stdout!.destroy();
  child.unref();
  if (line !== 'ready') {
    // One that did not say ready is not left behind (the next `cluster up` starts another).
    if (first.kind !== 'exited') child.kill('SIGKILL');
    let why = '';
    try {
      why = readRegularTail(join(logDir, 'fabric-stderr.log'), 64 * 1024).bytes.toString('utf8').trim().split('\n').slice(-3).join(' ');
    } catch { /* none */ }
    throw new ClusterError(`the cluster's fabric did not start: ${line}${why ? `: ${why}` : ''}`);
  }
  const f = readFabricFile(home);
  if (!f) throw new ClusterError('the cluster\'s fabric started but wrote no fabric.json');
  return f.port;
}

/**
 * fabric.json, checked: the server's pid and port, and, from a supervisor, its pid, how many times
 * it restarted the server and when the server now serving started. Null when absent or not that.
 */
export interface FabricFile {
  pid: number;
  port: number;
  supervisor: number | null;
  restarts: number;
  startedAt: string | null;
  /** While the supervisor's starts of a server fail: the last one's reason, since when, how many in a row. */
  failing: { why: string; since: string; tries: number } | null;
}

export function readFabricFile(home: string): FabricFile | null {
  try {
    const v = JSON.parse(readRegularFile(fabricFile(home), 64 * 1024).toString('utf8')) as { pid?: unknown; port?: unknown; supervisor?: unknown; restarts?: unknown; startedAt?: unknown; failing?: unknown } | null;
    if (!v || typeof v !== 'object' || typeof v.pid !== 'number' || !Number.isSafeInteger(v.pid) || v.pid < 1 || typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > 65535) return null;
    const supervisor = typeof v.supervisor === 'number' && Number.isSafeInteger(v.supervisor) && v.supervisor >= 1 ? v.supervisor : null;
    const restarts = typeof v.restarts === 'number' && Number.isSafeInteger(v.restarts) && v.restarts >= 0 ? v.restarts : 0;
    const startedAt = typeof v.startedAt === 'string' && v.startedAt.length <= 40 && Number.isFinite(Date.parse(v.startedAt)) ? v.startedAt : null;
    const fl = v.failing as { why?: unknown; since?: unknown; tries?: unknown } | null | undefined;
    const failing = fl !== null && typeof fl === 'object' && typeof fl.why === 'string' && fl.why.length <= 2000 && typeof fl.since === 'string' && fl.since.length <= 40 && Number.isFinite(Date.parse(fl.since))
      && typeof fl.tries === 'number' && Number.isSafeInteger(fl.tries) && fl.tries >= 1
      ? { why: fl.why, since: fl.since, tries: fl.tries } : null;
    return { pid: v.pid, port: v.port, supervisor, restarts, startedAt, failing };
  } catch {
    return null;
  }
}

/**
 * Ends the fabric of `home`, supervisor and server (TERM, then KILL after 2 s). Looked for again
 * after: a server its supervisor started just before its TERM ends with the supervisor (its stdin
 * closes), and anything of the fabric still there then is killed.
 */
async function stopFabric(home: string): Promise<void> {
  for (let round = 0; round < 3; round++) {
    const pids = fabricPids(home);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, round === 0 ? 'SIGTERM' : 'SIGKILL');
      } catch { /* gone */ }
    }
    for (let i = 0; i < 40 && pids.some(pidAlive); i++) await new Promise((r) => setTimeout(r, 50));
    for (const pid of pids.filter(pidAlive)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }
}

/** A reason read from a file, as one short line of text. */
const oneLine = (s: string): string => {
  const t = s.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return t.length > 300 ? `${t.slice(0, 300)}…` : t;
};

/** One request to the fabric of the cluster up in `home`. */
async function fabricCall(home: string, body: Record<string, unknown>, timeoutMs = 5000): Promise<unknown> {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}; run "hvlab cluster up FILE"`);
  const f = readFabricFile(home);
  if (!f) throw new ClusterError(`the cluster's fabric has not started (no ${fabricFile(home)}); run "hvlab cluster down" and up again`);
  // Its server gone: said at once, not after a wait for an answer that cannot come.
  if (!pidAlive(f.pid)) {
    if (f.supervisor !== null && pidAlive(f.supervisor)) {
      if (f.failing) throw new ClusterError(`the cluster's fabric is down: its supervisor (pid ${f.supervisor}) cannot start a server on port ${f.port} (${f.failing.tries} ${f.failing.tries === 1 ? 'try' : 'tries'} since ${f.failing.since}: ${oneLine(f.failing.why)}) and tries again every few seconds; its links are down meanwhile`);
      throw new ClusterError(`the cluster's fabric is restarting: its server (pid ${f.pid}) is gone and its supervisor (pid ${f.supervisor}) starts another; try again in a moment`);
    }
    throw new ClusterError(`the cluster's fabric is not running (its server, pid ${f.pid}, is gone${f.supervisor !== null ? `, and its supervisor, pid ${f.supervisor}` : ''}): its links are down; "hvlab cluster down" and up again`);
  }
  // Stopped (a pause fault, SIGSTOP): said at once, not after a wait for an answer that cannot come.
  if (procState(f.pid) === 'T') throw new ClusterError(`the cluster's fabric server (pid ${f.pid}) is stopped (a pause fault of the cluster, or SIGSTOP): its links hold what crosses them until it runs again`);
  const client = new RpcClient(`tcp://${c.record.gateway}:${f.port}`, curveClientOptions(readClusterKey(clusterKeyFile(home))));
  try {
    return await client.call(body, timeoutMs, CLUSTER_WIRE_VERSION);
  } catch (e) {
    if (e instanceof RpcFailure) {
      if (e.code === 'Timeout') throw new ClusterError(`the cluster's fabric (pid ${f.pid}, ${c.record.gateway}:${f.port}) did not answer within ${timeoutMs} ms`);
      throw new ClusterError(e.message);
    }
    throw e;
  } finally {
    client.close();
  }
}

/** The fabric's view: members, links with their impairments and counters. */
export async function fabricStatus(home: string): Promise<FabricStatus> {
  const d = decodeFabricStatus(await fabricCall(home, { op: 'status' }));
  if (!d.ok) throw new ClusterError(`the fabric's status does not decode: ${d.message}`);
  return d.value;
}

/** What waitLinkQuiet saw: the bytes the link held back at its first look, how long they took to go, and whether they went. */
export interface LinkQuiet {
  heldBytes: number;
  waitedMs: number;
  quiet: boolean;
}

/**
 * Waits until the link between `a` and `b` holds nothing back either way (LinkView.queued): what a
 * run's connections left on a slow link (a failed move's stream, its sender closed or not) would
 * otherwise share the link with the next run. Gives up after `timeoutMs` or once `signal` is
 * aborted (quiet false then). A fabric that does not say what it holds counts as quiet.
 */
export async function waitLinkQuiet(home: string, a: string, b: string, opts: { timeoutMs?: number; signal?: AbortSignal; everyMs?: number } = {}): Promise<LinkQuiet> {
  const t0 = performance.now();
  const until = t0 + (opts.timeoutMs ?? 120_000);
  let first: number | null = null;
  for (;;) {
    const l = (await fabricStatus(home)).links.find((x) => (x.a === a && x.b === b) || (x.a === b && x.b === a));
    const held = l?.queued ? l.queued[0] + l.queued[1] : 0;
    first ??= held;
    const waitedMs = Math.round(performance.now() - t0);
    if (held === 0) return { heldBytes: first, waitedMs, quiet: true };
    if (performance.now() >= until || opts.signal?.aborted) return { heldBytes: first, waitedMs, quiet: false };
    await new Promise((r) => setTimeout(r, opts.everyMs ?? 100));
  }
}

/** Waits until every one of `names` has joined the fabric. */
async function waitJoined(home: string, names: string[], timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  let missing = names;
  while (Date.now() < until) {
    const st = await fabricStatus(home).catch(() => null);
    if (st) {
      missing = names.filter((n) => !st.members.some((m) => m.name === n));
      if (missing.length === 0) return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new ClusterError(`host${missing.length === 1 ? '' : 's'} ${missing.join(', ')} did not join the cluster's fabric within ${timeoutMs / 1000} s (see their root.log)`);
}

function linkOf(v: unknown): LinkView {
  const d = decodeLinkResult(v);
  if (!d.ok) throw new ClusterError(`the fabric's answer does not decode: ${d.message}`);
  return d.value;
}

/** Sets a link's impairments, each independently (`null` clears one; a seed restarts its draws). */
/** A link's ends as the user gave them: host names, said as such (the fabric's own refusal named its request's fields). */
function linkEnds(a: string | null, b: string | null): void {
  for (const h of [a, b]) {
    if (h !== null && !CLUSTER_HOST_RE.test(h)) throw new ClusterError(`"${h.slice(0, 40)}" is not a host name (a lower-case letter, then up to 9 lower-case letters, digits or -)`);
  }
}
export async function linkSet(home: string, a: string, b: string, change: LinkChange): Promise<LinkView> {
  linkEnds(a, b);
  return linkOf(await fabricCall(home, { op: 'linkSet', a, b, change }));
}
export async function linkCut(home: string, a: string, b: string): Promise<LinkView> {
  linkEnds(a, b);
  return linkOf(await fabricCall(home, { op: 'linkCut', a, b }));
}
export async function linkHeal(home: string, a: string, b: string): Promise<LinkView> {
  linkEnds(a, b);
  return linkOf(await fabricCall(home, { op: 'linkHeal', a, b }));
}
/**
 * Stops at the fabric every probe host `from` runs to host `to` (`link probe FROM TO`): their ports
 * close, and what the link held of them is dropped. Resolves with how many there were.
 */
export async function linkProbeStop(home: string, from: string, to: string): Promise<number> {
  linkEnds(from, to);
  const r = await fabricCall(home, { op: 'probeStop', name: from, to, port: null }) as { stopped?: unknown } | null;
  if (typeof r?.stopped !== 'number') throw new ClusterError('the fabric\'s answer to probeStop does not decode');
  return r.stopped;
}
/** A probe stopped by its signal: `settled`, whether it ended; `problem`, why its last stop failed (null: it did not). */
export class ProbeStopped extends Error {
  override name = 'ProbeStopped';
  constructor(readonly settled: boolean, readonly problem: string | null) {
    super(problem !== null ? `the probe's traffic could not be stopped (${problem})` : 'the probe was stopped');
  }
}

/**
 * A link probe that `signal` can stop: its answer, unless the signal is aborted first; then its
 * traffic is stopped with `stop` (at the fabric, or by its host for a --direct one), asked again
 * until the probe ends (a host that has not opened its way yet has none to close) for at most
 * `withinMs`, and it fails with ProbeStopped. Its bulk bytes flowed on otherwise (a 4 GiB probe at
 * 1 mbit, for hours).
 */
export async function stoppableProbe<T>(probing: Promise<T>, stop: () => Promise<unknown>, signal: AbortSignal, withinMs = 5000): Promise<T> {
  probing.catch(() => undefined);
  let release: () => void = () => undefined;
  const aborted = new Promise<'aborted'>((r) => {
    const done = (): void => r('aborted');
    if (signal.aborted) return done();
    signal.addEventListener('abort', done, { once: true });
    release = () => signal.removeEventListener('abort', done);
  });
  try {
    const first = await Promise.race([probing, aborted]);
    if (first !== 'aborted') return first;
  } finally {
    release();
  }
  let settled = false;
  probing.then(() => (settled = true), () => (settled = true));
  let problem: string | null = null;
  for (const until = Date.now() + withinMs; !settled && Date.now() < until;) {
    try {
      await stop();
      problem = null;
    } catch (e) {
      problem = (e as Error).message;
    }
    await Promise.race([probing.catch(() => undefined), new Promise((r) => setTimeout(r, 200))]);
  }
  throw new ProbeStopped(settled, problem);
}

/** Clears every impairment and heals: of the link a–b, or of every link. */
export async function linkReset(home: string, a: string | null = null, b: string | null = null): Promise<LinkView[]> {
  linkEnds(a, b);
  const r = await fabricCall(home, { op: 'linkReset', a, b }) as { reset?: unknown } | null;
  if (!r || !Array.isArray(r.reset)) throw new ClusterError('the fabric\'s answer to reset does not decode');
  return r.reset.map(linkOf);
}

// ---- a host of another machine ------------------------------------------------------------------

/** The key file a joined host keeps in its home (a copy of the one it was given). */
export function memberKeyFile(paths: HostPaths): string {
  return join(paths.home, 'member.key');
}

/** This machine's address on the route to `address` (what a fabric there reaches this host by). */
export function sourceAddressFor(address: string): string | null {
  const r = spawnSync('ip', ['-4', 'route', 'get', address], { encoding: 'utf8', timeout: 5000 });
  const m = /\bsrc (\d+\.\d+\.\d+\.\d+)/.exec(r.stdout ?? '');
  return m ? m[1]! : null;
}

export interface JoinOptions {
  /** The fabric's ADDRESS:PORT (port 7740 when left out). */
  join: string;
  keyFile: string;
  /** This host's name in the cluster (default: j + the host id's first digits). */
  name?: string;
  /** The address the fabric reaches this host by (default: this machine's source address towards the fabric). */
  address?: string;
  lps?: number | null;
  env?: Record<string, string>;
}

/**
 * How long `up --join` waits for the fabric's answer to its first call, made with the key it was
 * given: a fabric that has another key never answers (the handshake fails, and is tried again), so
 * a wrong key is said once this has passed. Tests of a wrong key shorten it
 * (HVLAB_TEST_JOIN_PROBE_MS: whole ms from 500 up to the default).
 */
const JOIN_PROBE_MS = testKnob('HVLAB_TEST_JOIN_PROBE_MS', 500, 5000) ?? 5000;

/** Brings up a host in `paths` that joins the cluster whose fabric is at `opts.join`; resolves once it has joined. */
export async function joinHost(paths: HostPaths, opts: JoinOptions): Promise<{ hostId: string; name: string; address: string; fabric: string }> {
  const m = /^(\d+\.\d+\.\d+\.\d+)(?::(\d+))?$/.exec(opts.join);
  if (!m || !isIpv4(m[1]) || (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535))) throw new ClusterError(`--join takes the fabric's ADDRESS[:PORT] (IPv4), not "${opts.join}"`);
  const fabric = `${m[1]}:${m[2] ?? DEFAULT_FABRIC_PORT}`;
  const key = readClusterKey(resolve(opts.keyFile));
  const address = opts.address ?? sourceAddressFor(m[1]!);
  if (!address || !isIpv4(address)) throw new ClusterError(`no address of this machine reaches ${m[1]}; give --address`);
  const name = opts.name ?? `j${Math.floor(Math.random() * 1e6).toString(36)}`.slice(0, 10);
  if (!CLUSTER_HOST_RE.test(name)) throw new ClusterError(`--name must be a host name (a lower-case letter, then letters, digits or "-", at most 10), not "${name}"`);
  // Check the key and the fabric before starting anything.
  const probe = new RpcClient(`tcp://${fabric}`, curveClientOptions(key));
  let status: unknown;
  try {
    status = await probe.call({ op: 'status' }, JOIN_PROBE_MS, CLUSTER_WIRE_VERSION);
  } catch (e) {
    throw new ClusterError(`the cluster's fabric at ${fabric} did not answer with this key (${(e as Error).message}): check the address and that ${opts.keyFile} is the cluster's key`);
  } finally {
    probe.close();
  }
  // A name a live member holds is refused by the fabric: said now, before anything starts (the
  // host used to start, wait 10 s to join, and go down again with "did not join").
  // The fabric's own rule: the same host coming back (its member secret, which its home keeps)
  // takes its name again, as a host whose last life did not say it left. From here that looks
  // like a home with a secret at the holder's address; the fabric checks the secret itself.
  const st = decodeFabricStatus(status);
  const holder = st.ok ? st.value.members.find((m) => m.name === name) : undefined;
  const mayBeIt = holder !== undefined && !holder.local && holder.address === address && existsSync(join(paths.home, MEMBER_SECRET_FILE));
  if (holder && holder.lastSeenMs < HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN && !mayBeIt) {
    throw new ClusterError(`cluster ${st.ok ? st.value.cluster : '?'} already has a host named ${name} (at ${holder.address}): give another --name`);
  }
  makeDirs(paths.home);
  copyFileSync(resolve(opts.keyFile), memberKeyFile(paths));
  const rec = await up(paths, {
    lps: opts.lps ?? null,
    env: { ...opts.env, HVLAB_HOST_ADDRESS: address, HVLAB_CLUSTER_FABRIC: fabric, HVLAB_CLUSTER_KEY: memberKeyFile(paths), HVLAB_CLUSTER_HOST: name, HVLAB_CLUSTER_LOCAL: '0' },
  });
  const c = new MgmtClient(paths.mgmtEndpoint, { watch: rec });
  let refusal: { code: string; message: string } | null = null;
  try {
    for (let i = 0; i < 100; i++) {
      const info = await c.request<HostInfo>('hostInfo', {}, 5000);
      if (info.cluster?.fabricState === 'joined') return { hostId: rec.hostId, name, address, fabric };
      // Refused (the name was taken meanwhile, the cluster is full): no use waiting.
      if (info.cluster?.fabricRefusal) {
        refusal = info.cluster.fabricRefusal;
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    c.close();
  }
  await down(paths);
  if (refusal) throw new ClusterError(`the cluster's fabric at ${fabric} refused this host: ${refusal.message}${refusal.code === 'AlreadyExists' ? ' (give another --name)' : ''}; it was brought down again`);
  throw new ClusterError(`the host started but did not join the cluster at ${fabric} within 10 s (see ${paths.logDir}/root.log); it was brought down again`);
}

// ---- status --------------------------------------------------------------------------------------

/** Asks one host of a cluster something; null when it is down or does not answer in time. */
async function ask<T>(target: ClusterHostTarget, op: 'hostInfo' | 'vmList'): Promise<T | null> {
  let c: MgmtClient;
  if (target.kind === 'local') {
    const rec = readHost(target.paths);
    if (!hostRunning(rec)) return null;
    c = new MgmtClient(pathsForRecord(target.paths, rec).mgmtEndpoint, { watch: rec! });
  } else {
    c = new MgmtClient(target.endpoint, { socket: target.socket });
  }
  try {
    return await c.request<T>(op, {}, 5000);
  } catch {
    return null;
  } finally {
    c.close();
  }
}

/** What a host that did not answer is: stopped, silent or down (ClusterHostStatus.state); one of another machine is down to us. */
function silentState(target: ClusterHostTarget): 'stopped' | 'silent' | 'down' {
  if (target.kind !== 'local') return 'down';
  const rec = readHost(target.paths);
  if (!rec || !hostRunning(rec)) return 'down';
  return procState(rec.pids.root) === 'T' || procState(rec.pids.hypervisor) === 'T' ? 'stopped' : 'silent';
}

/** Every host of the cluster: the file's, then those that joined (as the fabric knows them). */
function targets(home: string, topology: Topology, st: FabricStatus | null): Array<{ name: string; target: ClusterHostTarget }> {
  const out: Array<{ name: string; target: ClusterHostTarget }> = topology.hosts.map((h) => ({ name: h.name, target: { kind: 'local', paths: hostPaths(clusterHostHome(home, h.name)) } }));
  if (st) {
    const socket = curveClientOptions(readClusterKey(clusterKeyFile(home)));
    for (const m of st.members) if (!m.local) out.push({ name: m.name, target: { kind: 'remote', name: m.name, endpoint: `tcp://${m.address}:${m.mgmtPort}`, socket } });
  }
  return out;
}

export async function clusterStatus(home: string): Promise<ClusterStatus> {
  home = canonicalHome(home);
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}; run "hvlab cluster up FILE"`);
  const net = recordedNetwork(home, c.record, c.topology);
  let st: FabricStatus | null = null;
  let fabricError: string | null = null;
  try {
    st = await fabricStatus(home);
  } catch (e) {
    fabricError = (e as Error).message;
  }
  const hosts = await Promise.all(targets(home, c.topology, st).map(async ({ name, target }): Promise<ClusterHostStatus> => {
    const info = await ask<HostInfo>(target, 'hostInfo');
    const m = st?.members.find((x) => x.name === name) ?? null;
    const hn = net.hosts.find((x) => x.name === name);
    const fileHost = c.topology.hosts.find((h) => h.name === name);
    return {
      name, home: target.kind === 'local' ? target.paths.home : null, address: hn?.address ?? m?.address ?? '?', netns: hn?.netns ?? null,
      origin: fileHost ? 'file' : 'joined', state: info ? 'up' : silentState(target), member: m !== null, memberFresh: m !== null && m.lastSeenMs < HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN,
      hostId: info?.hostId ?? (target.kind === 'local' ? readHost(target.paths)?.hostId ?? null : null), lps: info?.lps ?? fileHost?.lps ?? m?.lps ?? null, vms: info?.vms ?? 0, info,
    };
  }));
  const links: ClusterLinkStatus[] = st
    ? st.links.map((l) => ({ ...l, applied: true }))
    : c.topology.links.map((l) => ({ a: l.a, b: l.b, ...l.impairments, cut: false, seed: 0, bytes: [0, 0] as [number, number], lost: 0, connections: 0, applied: false }));
  const f = readFabricFile(home);
  // The port the fabric got; before it said one (no fabric.json yet), the one asked for, if any (0: any free one).
  const port = f?.port ?? (c.record.fabricPort || null);
  const at = (address: string): string => (port === null ? address : `${address}:${port}`);
  // Where another machine joins: the --listen address (0.0.0.0: any address of this machine); none when the fabric listens on the gateway only.
  const join = c.record.listen === c.record.gateway ? null : at(c.record.listen === '0.0.0.0' ? '<an address of this machine>' : c.record.listen);
  return {
    name: c.topology.name, mode: net.mode, modeReason: net.reason, bridge: net.bridge, subnet: net.subnet,
    join, keyFile: clusterKeyFile(home),
    fabric: { state: st ? 'up' : 'down', address: at(c.record.gateway), pid: f?.pid ?? null, refused: st?.refused ?? 0, error: fabricError, restarts: f?.restarts ?? 0, since: f?.startedAt ?? null },
    hosts, links,
  };
}

/** Every VM of every host of the cluster (joined hosts too), with the host it runs on (`host`). */
export async function clusterVms(home: string): Promise<Array<VmInfo & { host: string }>> {
  return (await clusterVmsAnswered(home)).vms;
}

/**
 * Every VM of the cluster with its host, and the hosts that did not answer (`silent`: down, or a
 * root that did not answer within 5 s, as one a pause fault stopped), whose VMs are not among them.
 */
export async function clusterVmsAnswered(home: string): Promise<{ vms: Array<VmInfo & { host: string }>; silent: string[] }> {
  const c = readCluster(home);
  if (!c) throw new ClusterError(`no cluster is up for ${home}: "vm list --all" lists the VMs of a cluster ("hvlab cluster up FILE")`);
  const st = await fabricStatus(home).catch(() => null);
  const per = await Promise.all(targets(home, c.topology, st).map(async ({ name, target }) => ({ name, list: await ask<VmInfo[]>(target, 'vmList') })));
  return {
    vms: per.flatMap(({ name, list }) => (list ?? []).map((vm) => ({ ...vm, host: name }))),
    silent: per.filter((x) => x.list === null).map((x) => x.name),
  };
}
