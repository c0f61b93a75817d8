/**
 * A cluster's network on this machine: one network namespace per host, each joined by a veth pair
 * to one bridge in the root namespace, with addresses in a /24 that hvlab picks from the cluster's
 * tag (a hash of its home, so two clusters of different homes do not collide). Needs root with
 * CAP_NET_ADMIN and Debian's iproute2 (`ip`); without them the cluster runs on loopback, and
 * `networkMode` says why.
 *
 * Names carry the tag, so everything of a cluster is found by name even when the CLI that made it
 * was killed: namespaces `hvlab-<tag>-<host>`, the bridge `hvbr-<tag>`, veths `hv<tag>-<n>` (root
 * side) whose peers become `eth0` inside the namespaces. Linux caps interface names at 15 bytes.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { pidAlive } from '@hvlab/runtime';

export interface HostNetwork {
  name: string;
  /** The host's network namespace, or null on loopback. */
  netns: string | null;
  address: string;
}

export interface ClusterNetwork {
  mode: 'namespaces' | 'loopback';
  reason: string;
  tag: string;
  bridge: string | null;
  subnet: string;
  /** This machine's address on the cluster's network (the bridge's, or a loopback one): the fabric listens there. */
  gateway: string;
  hosts: HostNetwork[];
}

export class NetworkError extends Error {
  override name = 'NetworkError';
}

/** Four hex digits naming a cluster's network objects (from its home). */
export function clusterTag(home: string): string {
  return createHash('sha1').update(home).digest('hex').slice(0, 4);
}

function ip(args: string[], allowFail = false): { ok: boolean; out: string; err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10000 });
  const ok = r.status === 0;
  if (!ok && !allowFail) throw new NetworkError(`ip ${args.join(' ')} failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  return { ok, out: r.stdout ?? '', err: r.stderr ?? '' };
}

let probed: { ok: boolean; reason: string } | null = null;

/** Whether this process can make network namespaces, veths and bridges; and why not. */
export function namespacesAvailable(): { ok: boolean; reason: string } {
  if (process.env.HVLAB_CLUSTER_NETNS === 'off') return { ok: false, reason: 'HVLAB_CLUSTER_NETNS=off' };
  if (probed) return probed;
  sweepStaleProbes();
  const name = `hvlab-probe-${process.pid}`;
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8', timeout: 10000 });
  if (r.error) probed = { ok: false, reason: `iproute2's "ip" is not installed (${r.error.message})` };
  else if (r.status !== 0) probed = { ok: false, reason: `"ip netns add" is not allowed here (${(r.stderr || '').trim() || `exit ${r.status}`}): it needs root with CAP_NET_ADMIN` };
  else {
    spawnSync('ip', ['netns', 'del', name], { timeout: 10000 });
    probed = { ok: true, reason: 'root with CAP_NET_ADMIN: each host in its own network namespace, joined by veth pairs to one bridge' };
  }
  return probed;
}

/**
 * Removes the probe namespaces of processes that are gone: a CLI killed between its probe's
 * 'netns add' and 'del' left one, named for no cluster, so no 'cluster down' took it.
 */
export function sweepStaleProbes(): number {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0 || typeof r.stdout !== 'string') return 0;
  let n = 0;
  for (const line of r.stdout.split('\n')) {
    const m = /^hvlab-probe-(\d+)\b/.exec(line.trim());
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || pidAlive(pid)) continue;
    if (spawnSync('ip', ['netns', 'del', `hvlab-probe-${pid}`], { timeout: 10000 }).status === 0) n++;
  }
  return n;
}

function subnetOf(tag: string): { base: string; subnet: string } {
  const n = parseInt(tag, 16);
  const base = `10.${200 + (n % 50)}.${(n >> 8) & 0xff}`;
  return { base, subnet: `${base}.0/24` };
}

/** The plan for a cluster's hosts (no system change). */
export function planNetwork(home: string, hosts: readonly string[], mode: 'namespaces' | 'loopback', reason: string): ClusterNetwork {
  const tag = clusterTag(home);
  if (mode === 'loopback') {
    const n = parseInt(tag, 16);
    const base = `127.${100 + (n % 100)}.${(n >> 8) & 0xff}`;
    return { mode, reason, tag, bridge: null, subnet: `${base}.0/24`, gateway: `${base}.1`, hosts: hosts.map((name, i) => ({ name, netns: null, address: `${base}.${10 + i}` })) };
  }
  const { base, subnet } = subnetOf(tag);
  return { mode, reason, tag, bridge: `hvbr-${tag}`, subnet, gateway: `${base}.1`, hosts: hosts.map((name, i) => ({ name, netns: `hvlab-${tag}-${name}`, address: `${base}.${10 + i}` })) };
}

/** Makes the namespaces, veths, bridge and addresses of `net` (mode namespaces). Undoes what it made when a step fails. */
export function setupNetwork(net: ClusterNetwork): void {
  if (net.mode !== 'namespaces' || !net.bridge) return;
  try {
    const { base } = subnetOf(net.tag);
    ip(['link', 'add', net.bridge, 'type', 'bridge']);
    ip(['addr', 'add', `${base}.1/24`, 'dev', net.bridge]);
    ip(['link', 'set', net.bridge, 'up']);
    net.hosts.forEach((h, i) => {
      const ns = h.netns!;
      const outer = `hv${net.tag}-${i}`;
      const inner = `hvp${net.tag}-${i}`;
      ip(['netns', 'add', ns]);
      ip(['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
      ip(['link', 'set', inner, 'netns', ns]);
      ip(['-n', ns, 'link', 'set', inner, 'name', 'eth0']);
      ip(['-n', ns, 'addr', 'add', `${h.address}/24`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['link', 'set', outer, 'master', net.bridge!]);
      ip(['link', 'set', outer, 'up']);
    });
  } catch (e) {
    teardownNetwork(net.tag);
    throw e;
  }
}

/** What of cluster `tag`'s network exists: namespace and interface names. */
export function networkLeftovers(tag: string): { namespaces: string[]; links: string[] } {
  const ns = ip(['netns', 'list'], true).out.split('\n').map((l) => l.trim().split(/\s+/)[0]!).filter((n) => n.startsWith(`hvlab-${tag}-`));
  const links = ip(['-o', 'link', 'show'], true).out.split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n === `hvbr-${tag}` || n.startsWith(`hv${tag}-`) || n.startsWith(`hvp${tag}-`));
  return { namespaces: ns, links };
}

/** Removes every namespace, veth and bridge of cluster `tag`, whatever made them; returns how many. */
export function teardownNetwork(tag: string): number {
  const left = networkLeftovers(tag);
  for (const n of left.namespaces) ip(['netns', 'del', n], true);
  for (const l of left.links) ip(['link', 'del', l], true);
  // A veth whose namespace was just deleted goes away asynchronously: make sure.
  for (let i = 0; i < 20; i++) {
    const again = networkLeftovers(tag);
    if (again.namespaces.length === 0 && again.links.length === 0) break;
    for (const l of again.links) ip(['link', 'del', l], true);
    spawnSync('sleep', ['0.05']);
  }
  return left.namespaces.length + left.links.length;
}
