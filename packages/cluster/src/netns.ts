/**
 * A cluster's network on this machine: one network namespace per host, each joined by a veth pair
 * to one bridge in the root namespace, with addresses in a /24. Needs root with CAP_NET_ADMIN and
 * Debian's iproute2 (`ip`); without them the cluster runs on loopback, and `networkMode` says why.
 *
 * Names carry the cluster's tag: namespaces `hvlab-<tag>-<host>`, the bridge `hvbr-<tag>`, veths
 * `hv<tag>-<n>` (root side) whose peers become `eth0` inside the namespaces. The tag is 8 hex
 * digits, from a hash of the home where those names are free on this machine (else from the next
 * hash of it), and is kept in the cluster record: `hvp<tag>-31` is 14 bytes, and Linux caps
 * interface names at 15. The subnet is 10.x.y.0/24 from the tag where nothing of this machine
 * (an address or a route) is in it, else the next free one.
 *
 * Every interface (and each namespace's `lo`) carries an alias naming its owner, a hash of the
 * cluster's home and the cluster's instance (`hvlab-owner <32 hex> <12 hex>`): a teardown removes
 * what its home owns, never what carries another home's mark, whatever the names. Objects of an
 * earlier hvlab (a 4-digit tag, no marks) are removed by name only for a home whose record says it
 * made them (a version 2 record).
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
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
  /** The hash of the cluster's home its objects are marked with (networkOwner). */
  owner: string;
  /** This cluster's instance (random, kept in its record): its objects' marks carry it too. */
  instance: string;
  /** Made by an earlier hvlab: a 4-digit tag and no marks (a version 2 record). */
  legacy: boolean;
}

/** Where a cluster's network is on this machine: kept in its cluster record (version 3). */
export interface NetworkChoice {
  tag: string;
  subnet: string;
  instance: string;
}

export class NetworkError extends Error {
  override name = 'NetworkError';
}

export const TAG_RE = /^[0-9a-f]{8}$/;
export const INSTANCE_RE = /^[0-9a-f]{12}$/;
const OWNER_RE = /^[0-9a-f]{32}$/;
const ALIAS_RE = /^hvlab-owner ([0-9a-f]{32}) ([0-9a-f]{12})$/;
/** Tags tried for a home before `up` says every one is taken. */
const TAG_TRIES = 16;

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex');

/** The tag a cluster of `home` has where its names are free: 8 hex digits (from its home). */
export function clusterTag(home: string): string {
  return sha1(home).slice(0, 8);
}

/** The tag an earlier hvlab gave the cluster of `home` (4 hex digits; 1 in 65536 homes shared one). */
export function legacyClusterTag(home: string): string {
  return sha1(home).slice(0, 4);
}

/** The tags tried, in order, for a cluster of `home`. */
function tagCandidates(home: string): string[] {
  return Array.from({ length: TAG_TRIES }, (_, i) => (i === 0 ? clusterTag(home) : sha1(`${home}\n${i}`).slice(0, 8)));
}

/** Whose a cluster's network objects are: a hash of its home (not the path, which may be long). */
export function networkOwner(home: string): string {
  return createHash('sha256').update(home).digest('hex').slice(0, 32);
}

function ownerAlias(owner: string, instance: string): string {
  return `hvlab-owner ${owner} ${instance}`;
}

function ip(args: string[], allowFail = false): { ok: boolean; out: string; err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10000, maxBuffer: 64 * 1024 * 1024 });
  const ok = r.status === 0;
  if (!ok && !allowFail) throw new NetworkError(`ip ${args.join(' ')} failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  return { ok, out: r.stdout ?? '', err: r.stderr ?? '' };
}

// ---- what is on this machine (checking decoders of iproute2's JSON) ------------------------------

/**
 * `ip -j ARGS` as JSON: null when ip fails (no iproute2, a namespace gone meanwhile); an empty list
 * for no output (ip prints nothing for no namespaces); a NetworkError when it is not JSON.
 */
function ipJson(args: string[]): unknown[] | null {
  const r = ip(['-j', ...args], true);
  if (!r.ok) return null;
  if (r.out.trim() === '') return [];
  let v: unknown;
  try {
    v = JSON.parse(r.out);
  } catch {
    throw new NetworkError(`"ip -j ${args.join(' ')}" did not print JSON, so hvlab cannot tell which network objects are whose`);
  }
  if (!Array.isArray(v)) throw new NetworkError(`"ip -j ${args.join(' ')}" printed JSON that is not a list`);
  return v;
}

const IFNAME_RE = /^[^\s/:]{1,15}$/;
const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

export interface LinkEntry {
  name: string;
  /** The interface's alias when it is an owner mark; null when it has none; 'other' for an alias that is not one. */
  mark: { owner: string; instance: string } | null | 'other';
}

function decodeMark(alias: unknown): LinkEntry['mark'] {
  if (alias === undefined || alias === '') return null;
  if (typeof alias !== 'string') return 'other';
  const m = ALIAS_RE.exec(alias);
  return m ? { owner: m[1]!, instance: m[2]! } : 'other';
}

/** The interfaces of the root namespace (or of namespace `ns`), with their marks. */
function listLinks(ns: string | null = null, dev: string | null = null): LinkEntry[] | null {
  const v = ipJson([...(ns ? ['-n', ns] : []), 'link', 'show', ...(dev ? ['dev', dev] : [])]);
  if (v === null) return null;
  return v.map((e) => {
    if (!isObj(e) || typeof e.ifname !== 'string' || !IFNAME_RE.test(e.ifname) || (e.ifalias !== undefined && typeof e.ifalias !== 'string')) {
      throw new NetworkError('"ip -j link show" printed an interface hvlab cannot read (no name, or a name or alias that is not text)');
    }
    return { name: e.ifname, mark: decodeMark(e.ifalias) };
  });
}

const NS_NAME_RE = /^[A-Za-z0-9_.-]{1,255}$/;

/** The named network namespaces (`ip netns list`). */
function listNamespaces(): string[] {
  const v = ipJson(['netns', 'list']) ?? [];
  return v.map((e) => {
    if (!isObj(e) || typeof e.name !== 'string' || e.name.length === 0 || e.name.length > 255) throw new NetworkError('"ip -j netns list" printed a namespace hvlab cannot read');
    return e.name;
  }).filter((n) => NS_NAME_RE.test(n));
}

/** The mark on namespace `ns`'s `lo`: null when unmarked, 'gone' when the namespace cannot be entered. */
function namespaceMark(ns: string): LinkEntry['mark'] | 'gone' {
  const lo = listLinks(ns, 'lo');
  if (lo === null || lo.length !== 1) return 'gone';
  return lo[0]!.mark;
}

const ipv4ToInt = (s: string): number | null => {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255)) return null;
  return ((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!;
};

/** A network as [first, last] address (inclusive). */
type Range = [number, number];
const rangeOf = (addr: number, prefix: number): Range => {
  const size = 2 ** (32 - prefix);
  const first = Math.floor(addr / size) * size;
  return [first, first + size - 1];
};

/**
 * What of 10.0.0.0/8 and the rest this machine uses: every IPv4 address of an interface (with its
 * own network when that is /16 or narrower) and every route of /16 or narrower. Broader ones (a
 * default route, 10.0.0.0/8 to a LAN) are not counted: a /24 on the bridge is more specific.
 */
function usedRanges(): Range[] {
  const out: Range[] = [];
  const addrs = ipJson(['-4', 'addr', 'show']) ?? [];
  for (const e of addrs) {
    if (!isObj(e) || (e.addr_info !== undefined && !Array.isArray(e.addr_info))) throw new NetworkError('"ip -j -4 addr show" printed an interface hvlab cannot read');
    for (const a of (e.addr_info ?? []) as unknown[]) {
      if (!isObj(a)) throw new NetworkError('"ip -j -4 addr show" printed an address hvlab cannot read');
      if (a.family !== undefined && a.family !== 'inet') continue;
      const n = typeof a.local === 'string' ? ipv4ToInt(a.local) : null;
      const p = a.prefixlen;
      if (n === null || typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p > 32) throw new NetworkError('"ip -j -4 addr show" printed an address hvlab cannot read');
      out.push([n, n]);
      if (p >= 16) out.push(rangeOf(n, p));
    }
  }
  const routes = ipJson(['-4', 'route', 'show']) ?? [];
  for (const e of routes) {
    if (!isObj(e) || typeof e.dst !== 'string') throw new NetworkError('"ip -j -4 route show" printed a route hvlab cannot read');
    if (e.dst === 'default') continue;
    const m = /^([0-9.]+)(?:\/(\d{1,2}))?$/.exec(e.dst);
    const n = m ? ipv4ToInt(m[1]!) : null;
    const p = m?.[2] === undefined ? 32 : Number(m[2]);
    if (n === null || p > 32) throw new NetworkError('"ip -j -4 route show" printed a route hvlab cannot read');
    if (p >= 16) out.push(rangeOf(n, p));
  }
  return out;
}

/**
 * Local addresses of the root namespace's sockets (/proc/net/tcp, udp): on loopback, a /24 with a
 * socket in it is another cluster's (or anything else's).
 */
function socketAddresses(): number[] {
  const out: number[] = [];
  const little = endianness() === 'LE';
  for (const f of ['/proc/net/tcp', '/proc/net/udp']) {
    let text: string;
    try {
      text = readFileSync(f, 'latin1');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      if (line.trim() === '') continue;
      const m = /^\s*\d+:\s+([0-9A-F]{8}):[0-9A-F]{4}\s/.exec(line);
      if (!m) throw new NetworkError(`${f} holds a line hvlab cannot read`);
      const v = parseInt(m[1]!, 16);
      out.push(little ? (((v & 0xff) << 24) >>> 0) + ((v >>> 8) & 0xff) * 65536 + ((v >>> 16) & 0xff) * 256 + (v >>> 24) : v);
    }
  }
  return out;
}

// ---- subnets --------------------------------------------------------------------------------------

/** The /24s a cluster may have: 10.200.0.0–10.249.255.0 in namespaces, 127.100.0.0–127.199.255.0 on loopback. */
const SUBNETS = { namespaces: { first: 10, second: 200, count: 50 * 256 }, loopback: { first: 127, second: 100, count: 100 * 256 } } as const;

function baseOf(mode: 'namespaces' | 'loopback', i: number): string {
  const s = SUBNETS[mode];
  return `${s.first}.${s.second + (i >> 8)}.${i & 0xff}`;
}

/** The base ("10.a.b") of a recorded subnet ("10.a.b.0/24") of `mode`, or null when it is not one hvlab gives. */
export function subnetBase(mode: 'namespaces' | 'loopback', subnet: unknown): string | null {
  if (typeof subnet !== 'string') return null;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.0\/24$/.exec(subnet);
  if (!m) return null;
  const s = SUBNETS[mode];
  const [a, b, c] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (a !== s.first || b < s.second || b >= s.second + s.count / 256 || c > 255 || String(b) !== m[2] || String(c) !== m[3]) return null;
  return `${a}.${b}.${c}`;
}

/**
 * The first subnet of `mode` from the tag's own on (then the next, wrapping) that `used` says is
 * free; a NetworkError when none is.
 */
export function pickSubnet(tag: string, mode: 'namespaces' | 'loopback', used: (base: string) => boolean): string {
  const { count } = SUBNETS[mode];
  const start = parseInt(tag, 16) % count;
  for (let k = 0; k < count; k++) {
    const base = baseOf(mode, (start + k) % count);
    if (!used(base)) return `${base}.0/24`;
  }
  const s = SUBNETS[mode];
  throw new NetworkError(`every subnet a cluster may have (${s.first}.${s.second}.0.0 to ${s.first}.${s.second + s.count / 256 - 1}.255.0, /24 each) is in use on this machine; take a cluster down, or remove what holds them`);
}

const baseInt = (base: string): number => ipv4ToInt(`${base}.0`)!;

// ---- the plan -------------------------------------------------------------------------------------

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

/**
 * The plan for a cluster's hosts (no system change): at `at` (a recorded choice), or where the
 * home's first tag and its subnet would put it.
 */
export function planNetwork(home: string, hosts: readonly string[], mode: 'namespaces' | 'loopback', reason: string, at?: NetworkChoice): ClusterNetwork {
  const tag = at?.tag ?? clusterTag(home);
  const subnet = at?.subnet ?? `${baseOf(mode, parseInt(tag, 16) % SUBNETS[mode].count)}.0/24`;
  const base = subnetBase(mode, subnet);
  if (!TAG_RE.test(tag) || base === null) throw new NetworkError(`a cluster network needs an 8-digit tag and a subnet hvlab gives, not ${tag} and ${subnet}`);
  const common = { mode, reason, tag, subnet, gateway: `${base}.1`, owner: networkOwner(home), instance: at?.instance ?? randomBytes(6).toString('hex'), legacy: false };
  if (mode === 'loopback') return { ...common, bridge: null, hosts: hosts.map((name, i) => ({ name, netns: null, address: `${base}.${10 + i}` })) };
  return { ...common, bridge: `hvbr-${tag}`, hosts: hosts.map((name, i) => ({ name, netns: `hvlab-${tag}-${name}`, address: `${base}.${10 + i}` })) };
}

/**
 * The plan an earlier hvlab made for a cluster of `home` (its record, version 2, has no network):
 * the 4-digit tag, and the subnet of its gateway.
 */
export function legacyNetwork(home: string, hosts: readonly string[], mode: 'namespaces' | 'loopback', reason: string, gateway: string): ClusterNetwork {
  const tag = legacyClusterTag(home);
  const base = gateway.replace(/\.\d+$/, '');
  return {
    mode, reason, tag, subnet: `${base}.0/24`, gateway, owner: networkOwner(home), instance: '', legacy: true, bridge: mode === 'namespaces' ? `hvbr-${tag}` : null,
    hosts: hosts.map((name, i) => ({ name, netns: mode === 'namespaces' ? `hvlab-${tag}-${name}` : null, address: `${base}.${10 + i}` })),
  };
}

/** Whether anything on this machine bears the names of tag `tag`. */
function tagTaken(tag: string, links: LinkEntry[], namespaces: string[]): boolean {
  return links.some((l) => isTagLink(l.name, tag)) || namespaces.some((n) => n.startsWith(`hvlab-${tag}-`));
}
const isTagLink = (name: string, tag: string): boolean => name === `hvbr-${tag}` || name.startsWith(`hv${tag}-`) || name.startsWith(`hvp${tag}-`);

/**
 * The network a new cluster of `home` gets: names that nothing on this machine bears (the home's
 * first tag when free) and a subnet in which this machine has no address or route (loopback: no
 * socket), the tag's own when free. A NetworkError (a sentence) when none is free.
 */
export function chooseNetwork(home: string, hosts: readonly string[], mode: 'namespaces' | 'loopback', reason: string): ClusterNetwork {
  const instance = randomBytes(6).toString('hex');
  if (mode === 'loopback') {
    const tag = clusterTag(home);
    const socks = socketAddresses();
    const subnet = pickSubnet(tag, mode, (base) => {
      const b = baseInt(base);
      return socks.some((a) => a >= b && a <= b + 255);
    });
    return planNetwork(home, hosts, mode, reason, { tag, subnet, instance });
  }
  const links = listLinks() ?? [];
  const namespaces = listNamespaces();
  const tag = tagCandidates(home).find((t) => !tagTaken(t, links, namespaces));
  if (!tag) throw new NetworkError(`the network names hvlab gives a cluster of ${home} (${TAG_TRIES} tags) are all taken on this machine; take other clusters down, or use another --home`);
  const used = usedRanges();
  const subnet = pickSubnet(tag, mode, (base) => {
    const b = baseInt(base);
    return used.some(([lo, hi]) => lo <= b + 255 && hi >= b);
  });
  return planNetwork(home, hosts, mode, reason, { tag, subnet, instance });
}

// ---- making and removing --------------------------------------------------------------------------

/**
 * Makes the namespaces, veths, bridge and addresses of `net` (mode namespaces), each marked with
 * its owner as soon as it exists. When a step fails, removes what it made (and only that) and
 * throws a NetworkError; one that says so when another cluster took a name or the subnet meanwhile.
 */
export function setupNetwork(net: ClusterNetwork): void {
  if (net.mode !== 'namespaces' || !net.bridge) return;
  const made: { links: string[]; namespaces: string[] } = { links: [], namespaces: [] };
  const alias = ownerAlias(net.owner, net.instance);
  const taken = (what: string): NetworkError => new NetworkError(`${what} exists on this machine already (another cluster's, made meanwhile): nothing of it was touched; run the command again`);
  try {
    const links = listLinks() ?? [];
    const namespaces = listNamespaces();
    if (tagTaken(net.tag, links, namespaces)) throw taken(`a network object named for tag ${net.tag}`);
    const bridge = net.bridge;
    if (!ip(['link', 'add', bridge, 'type', 'bridge'], true).ok) {
      if ((listLinks(null, bridge) ?? []).length > 0) throw taken(`the bridge ${bridge}`);
      ip(['link', 'add', bridge, 'type', 'bridge']);
    }
    made.links.push(bridge);
    ip(['link', 'set', 'dev', bridge, 'alias', alias]);
    ip(['addr', 'add', `${net.gateway}/24`, 'dev', bridge]);
    // Another cluster's address in the subnet, added since it was chosen: give it up.
    const b = baseInt(net.gateway.replace(/\.\d+$/, ''));
    const addrs = ipJson(['-4', 'addr', 'show']) ?? [];
    for (const e of addrs) {
      if (!isObj(e) || e.ifname === bridge || !Array.isArray(e.addr_info)) continue;
      for (const a of e.addr_info) {
        const n = isObj(a) && typeof a.local === 'string' ? ipv4ToInt(a.local) : null;
        if (n !== null && n >= b && n <= b + 255) throw taken(`an address in ${net.subnet} (${String(a.local)} on ${String(e.ifname)})`);
      }
    }
    ip(['link', 'set', bridge, 'up']);
    net.hosts.forEach((h, i) => {
      const ns = h.netns!;
      const outer = `hv${net.tag}-${i}`;
      const inner = `hvp${net.tag}-${i}`;
      if (!ip(['netns', 'add', ns], true).ok) {
        if (listNamespaces().includes(ns)) throw taken(`the namespace ${ns}`);
        ip(['netns', 'add', ns]);
      }
      made.namespaces.push(ns);
      ip(['-n', ns, 'link', 'set', 'dev', 'lo', 'alias', alias]);
      if (!ip(['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner], true).ok) {
        if ((listLinks() ?? []).some((l) => l.name === outer || l.name === inner)) throw taken(`the veth ${outer} or ${inner}`);
        ip(['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
      }
      made.links.push(outer);
      ip(['link', 'set', 'dev', outer, 'alias', alias]);
      ip(['link', 'set', inner, 'netns', ns]);
      ip(['-n', ns, 'link', 'set', inner, 'name', 'eth0']);
      ip(['-n', ns, 'addr', 'add', `${h.address}/24`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['link', 'set', outer, 'master', bridge]);
      ip(['link', 'set', outer, 'up']);
    });
  } catch (e) {
    for (const n of made.namespaces) ip(['netns', 'del', n], true);
    for (const l of made.links) ip(['link', 'del', l], true);
    throw e;
  }
}

/**
 * Whose objects a teardown removes: those marked with `owner` (and `instance`, when given); and,
 * unmarked, those named for `tag`, the tag this home's record holds (an object is unmarked for the
 * moment between its making and its marking; an earlier hvlab's, `legacy`, never were).
 */
export interface NetworkScope {
  owner: string;
  instance?: string | null;
  tag?: string | null;
  legacy?: boolean;
}

/** What of `scope`'s network exists: namespace and interface names (root namespace). */
export function ownedNetwork(scope: NetworkScope): { namespaces: string[]; links: string[] } {
  if (!OWNER_RE.test(scope.owner)) throw new NetworkError(`"${scope.owner}" is not an owner of a cluster network`);
  const tag = scope.tag && (scope.legacy ? /^[0-9a-f]{4}$/ : TAG_RE).test(scope.tag) ? scope.tag : null;
  const ours = (mark: LinkEntry['mark'] | 'gone', byName: boolean): boolean => {
    if (mark === null) return byName;
    if (mark === 'other' || mark === 'gone') return false;
    return mark.owner === scope.owner && (!scope.instance || mark.instance === scope.instance);
  };
  const links = (listLinks() ?? []).filter((l) => ours(l.mark, tag !== null && isTagLink(l.name, tag))).map((l) => l.name);
  const namespaces = listNamespaces().filter((n) => {
    if (!n.startsWith('hvlab-') || n.startsWith('hvlab-probe-')) return false;
    const byName = tag !== null && n.startsWith(`hvlab-${tag}-`);
    const mark = namespaceMark(n);
    // A namespace whose lo cannot be read (its last process leaving): by its name alone.
    return mark === 'gone' ? byName : ours(mark, byName);
  });
  return { namespaces, links };
}

/** What of cluster `tag`'s network exists, by name alone (whoever made it): namespace and interface names. */
export function networkLeftovers(tag: string): { namespaces: string[]; links: string[] } {
  const ns = ip(['netns', 'list'], true).out.split('\n').map((l) => l.trim().split(/\s+/)[0]!).filter((n) => n.startsWith(`hvlab-${tag}-`));
  const links = ip(['-o', 'link', 'show'], true).out.split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '')
    .filter((n) => isTagLink(n, tag));
  return { namespaces: ns, links };
}

/** Removes every namespace, veth and bridge of `scope` (never one marked as another's); returns how many. */
export function teardownNetwork(scope: NetworkScope): number {
  const left = ownedNetwork(scope);
  if (left.namespaces.length + left.links.length === 0) return 0;
  for (const n of left.namespaces) ip(['netns', 'del', n], true);
  for (const l of left.links) ip(['link', 'del', l], true);
  // A veth whose namespace was just deleted goes away asynchronously: make sure.
  for (let i = 0; i < 20; i++) {
    const again = ownedNetwork(scope);
    if (again.namespaces.length === 0 && again.links.length === 0) break;
    for (const n of again.namespaces) ip(['netns', 'del', n], true);
    for (const l of again.links) ip(['link', 'del', l], true);
    spawnSync('sleep', ['0.05']);
  }
  return left.namespaces.length + left.links.length;
}
