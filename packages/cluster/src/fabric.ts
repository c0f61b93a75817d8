/**
 * The cluster's fabric: one process per cluster (started by `cluster up`, ended by `cluster down`)
 * that holds the links between its hosts, as a switch holds cables. For each linked pair of
 * member hosts it holds one `Link` (impairments, seed, counters) and a `LinkProxy` per direction,
 * listening on the fabric's address; a host reaches a peer only through the port of their link
 * (its peer book), so every byte between two hosts passes the link layer.
 *
 * Its control socket (ZeroMQ TCP with CURVE: only holders of the cluster's key get in) takes:
 *   - `join` from a host's root when it starts (the hosts of the file, and hosts of other machines
 *     that ran `hvlab up --join`), answered with the host's peer book;
 *   - `peers` from each member every heartbeat period: its heartbeat table in, its peer book out
 *     (so a member learns of hosts that joined later);
 *   - `status`, `linkSet`, `linkCut`, `linkHeal`, `linkReset` from the CLI;
 *   - `expose` and `unexpose` from a member: a port of its own, reachable from one peer through
 *     their link (a live migration's destination worker's stream socket);
 *   - `probeOpen` from a member: a port of the fabric to a peer's peer service through their link,
 *     for one `link probe`, and `probeStop` from that member when the probe ends or from a CLI whose
 *     probe was interrupted: the port closes with its connections, and what the link held of the
 *     probe is dropped (else a 4 GiB probe at 1 mbit flowed on for hours after Ctrl-C).
 * A member's requests carry its member secret, to which its first join bound its name; its peer
 * book gives it a credential per peer (`auth`) that only the two of them share, derived from both
 * secrets ("Who is who" in protocol/src/cluster.ts): the cluster key says a member, these say which.
 * Links come from the topology file; a host that joins later is linked to every member, unimpaired.
 * Each link's seed is fixed by its two names unless set, so the same file repeats the same draws.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  decodeFabricRequest, decodeFabricSavedState, FABRIC_STATE_FORMAT, FABRIC_STATE_MAX_BYTES, IMPAIRMENT_KEYS, type FabricSavedState, type LinkChange, FABRIC_MAX_EXPOSED, FABRIC_MAX_PROBES, HEARTBEAT_MISSES_DOWN, HEARTBEAT_MS, type ClusterKey, type FabricMember, type FabricRequest, type FabricStatus, type LinkView, type PeerBookEntry, type PeerHealth,
} from '@hvlab/protocol';
import { renameSync } from 'node:fs';
import { curveServerOptions, FileShapeError, readRegularFile, RpcFailure, RpcServer, startZapHandler, testKnob, watchKeyRefusals, writeFileAtomic, zapRefused } from '@hvlab/runtime';
import { Link, LinkProxy } from './link.js';
import type { TopologyLink } from './topology.js';

export interface FabricOptions {
  cluster: string;
  key: ClusterKey;
  /** The address the control socket and every link's proxies listen on. */
  listen: string;
  /** The control socket's port (0: any). */
  port: number;
  /** The file's links; hosts of the file not linked there cannot reach each other. */
  links: TopologyLink[];
  /** The file's hosts (they are linked as the file says; any other host is linked to every member). */
  fileHosts: string[];
  /**
   * Where the fabric keeps its names and links (FabricSavedState), so that one started again after
   * a crash or a kill (fabric-main.ts restarts it) is the same fabric. None: memory only.
   */
  stateFile?: string;
  /** Reads the state file (tests fail it; default readRegularFile). */
  readState?: (file: string, maxBytes: number) => Buffer;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

/**
 * Why `address` cannot be a member's, for a fabric that listens on `listen`, or null. A fabric on
 * loopback (a cluster without namespaces) has every member on this machine, on loopback: anything
 * goes. Any other fabric takes no loopback, unspecified (0.x), broadcast or multicast address: its
 * proxies would connect there, on the fabric's own machine.
 */
export function memberAddressProblem(address: string, listen: string): string | null {
  if (listen.startsWith('127.')) return null;
  const [a, b, c, d] = address.split('.').map(Number) as [number, number, number, number];
  if (a === 127) return 'is a loopback address: the fabric would connect to its own machine';
  if (a === 0) return 'is not an address a host can be reached at (0.x)';
  if (a >= 224 && a <= 239) return 'is a multicast address';
  if (a === 255 && b === 255 && c === 255 && d === 255) return 'is the broadcast address';
  return null;
}

/** The default seed of the link between a and b: fixed by the names, so a file repeats its draws. */
export function linkSeed(a: string, b: string): number {
  const [x, y] = a < b ? [a, b] : [b, a];
  return createHash('sha1').update(`${x}|${y}`).digest().readUInt32BE(0);
}

/** A fabric that ran nothing for this long was stalled (stopped, hung): what it did not hear meanwhile says nothing of its members. */
const STALL_MS = 2 * HEARTBEAT_MS;
/**
 * How long a member's name is held for it once it went quiet (10 heartbeat periods), before another
 * secret may take it; a name bound before a restart is held as long for its holder, counted from
 * the start. Tests shorten it (HVLAB_TEST_NAME_HOLD_MS: whole ms from 1000 up to the default), so
 * that a host kept quiet past it, and a taker that then goes quiet, take seconds, not tens.
 */
const NAME_HOLD_MS = testKnob('HVLAB_TEST_NAME_HOLD_MS', 1000, HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN) ?? HEARTBEAT_MS * HEARTBEAT_MISSES_DOWN;

/** A member as the fabric holds it: what it said when it joined, when it was last heard, its heartbeats, its secret's hash. */
interface Member extends Omit<FabricMember, 'lastSeenMs' | 'peers'> {
  lastSeen: number;
  health: PeerHealth[];
  secretHash: Buffer;
}

const sha256 = (...parts: Array<string | Buffer>): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest();
};

/** The hash of a member secret, as the fabric keeps it. */
export function memberSecretHash(secret: string): Buffer {
  return sha256('hvlab member secret', secret);
}

/**
 * The credential of the pair (a, b) in `cluster` (PeerBookEntry.auth): from both members' secret
 * hashes, which never leave the fabric, so only a, b and the fabric can know it; the same for as
 * long as the two keep their secrets (a restarted fabric gives the same credentials).
 */
export function pairAuth(cluster: string, a: string, aHash: Buffer, b: string, bHash: Buffer): string {
  const [x, xh, y, yh] = a < b ? [a, aHash, b, bHash] : [b, bHash, a, aHash];
  return sha256('hvlab pair', cluster, x, xh, y, yh).toString('hex');
}

const pairKey = (a: string, b: string): string => (a < b ? `${a}|${b}` : `${b}|${a}`);

export class Fabric {
  private readonly server: RpcServer<FabricRequest>;
  private readonly members = new Map<string, Member>();
  private readonly links = new Map<string, Link>();
  /** `from>to` → the proxy `from` connects to to reach `to`. */
  private readonly proxies = new Map<string, LinkProxy>();
  /** The fabric's port → a port a member opened to one peer (`expose`), oldest first. */
  private readonly exposed = new Map<number, { owner: string; from: string; proxy: LinkProxy }>();
  /** The fabric's port → a link probe's own way from member `owner` to `to` (`probeOpen`), oldest first. */
  private readonly probes = new Map<number, { owner: string; to: string; proxy: LinkProxy }>();
  private readonly fileHosts: Set<string>;
  private boundPort = 0;
  /** Connections the proxies closed at their bounds, per proxy, and when that was last logged. */
  private readonly refusals = new Map<string, { count: number; loggedAt: number }>();
  /**
   * Names bound to a member secret by an earlier life of this fabric (its saved state) whose hosts
   * have not joined this one yet: the same secret takes its name back; another may take it only
   * once the fabric has run 10 heartbeat periods without the holder coming back, as for a member
   * gone quiet.
   */
  private readonly dormant = new Map<string, { hash: Buffer; local: boolean }>();
  /**
   * Since when this fabric has been listening without a stall: its start, or the end of the last
   * time it ran nothing for STALL_MS (stopped by `fault inject pause --target cluster`, a SIGSTOP, a
   * machine that hung). A member (or a name from the saved state) is quiet only once 10 heartbeat
   * periods have passed since then too: on resuming from a longer pause every member looked quiet
   * (its heartbeats of the pause not read yet), and a join in its name from another holder of the
   * key that waited in the socket took it.
   */
  private awakeSince = Date.now();
  private lastTick = Date.now();
  private ticker: NodeJS.Timeout | null = null;
  /** The last failure to save the state, logged once until a save succeeds. */
  private saveFailed: string | null = null;
  /** Each member-to-member proxy's port (`from>to`) as an earlier life of this fabric saved it: wire() listens there again. */
  private readonly savedPorts = new Map<string, number>();
  /** Why the state file could not be read (not its content: the file system's error); it is then never written. */
  private stateUnreadable: string | null = null;

  constructor(private readonly opts: FabricOptions) {
    this.fileHosts = new Set(opts.fileHosts);
    for (const l of opts.links) this.links.set(pairKey(l.a, l.b), new Link(l.a < l.b ? l.a : l.b, l.a < l.b ? l.b : l.a, l.impairments, linkSeed(l.a, l.b)));
    if (opts.stateFile) this.load(opts.stateFile);
    this.server = new RpcServer(decodeFabricRequest, (r) => this.handle(r), curveServerOptions(opts.key));
  }

  /**
   * Takes back what an earlier life of this fabric saved: its bindings (dormant until their hosts
   * join again) and its links' impairments, cuts and seeds. A file that is not this cluster's
   * state (damaged, another format, another cluster's) is set aside beside it (`.refused-TIME`) and
   * the fabric starts as a new one would, from the topology file, and says so: the hosts then join
   * again as on the first start, each name bound to its first joiner's secret.
   */
  private load(file: string): void {
    let saved: FabricSavedState;
    try {
      let bytes: Buffer | null = null;
      // An error of the file system, not of the file (EIO, EMFILE, EACCES), is tried again a few
      // times; if it stays, the file is left as it is and never written over by this server (its
      // names and links would be lost for good), and the next restart reads it again.
      const read = this.opts.readState ?? ((f: string, max: number): Buffer => readRegularFile(f, max));
      let lastError: NodeJS.ErrnoException | null = null;
      for (let attempt = 0; attempt < 3 && bytes === null; attempt++) {
        if (attempt > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
        try {
          bytes = read(file, FABRIC_STATE_MAX_BYTES);
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          if (err.code === 'ENOENT') return;
          if (err instanceof FileShapeError) throw err;
          lastError = err;
        }
      }
      if (bytes === null) {
        this.stateUnreadable = lastError?.message ?? 'unreadable';
        this.opts.log?.('the saved fabric state cannot be read: starting from the topology file, and leaving the file for the next start', { file, why: this.stateUnreadable });
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(bytes.toString('utf8'));
      } catch {
        throw new Error('it is not JSON');
      }
      const d = decodeFabricSavedState(parsed);
      if (!d.ok) throw new Error(d.message);
      if (d.value.cluster !== this.opts.cluster) throw new Error(`it is cluster ${d.value.cluster}'s, not ${this.opts.cluster}'s`);
      saved = d.value;
    } catch (e) {
      const aside = `${file}.refused-${Date.now()}`;
      let moved = false;
      try {
        renameSync(file, aside);
        moved = true;
      } catch { /* left where it is: the next save replaces it */ }
      this.opts.log?.('the saved fabric state is refused: starting from the topology file', { file, why: (e as Error).message, ...(moved ? { setAside: aside } : {}) });
      return;
    }
    for (const b of saved.bindings) this.dormant.set(b.name, { hash: Buffer.from(b.secretHash, 'hex'), local: b.local });
    for (const p of saved.proxies ?? []) this.savedPorts.set(`${p.from}>${p.to}`, p.port);
    for (const l of saved.links) {
      const k = pairKey(l.a, l.b);
      let link = this.links.get(k);
      if (!link) {
        // Two hosts of the file are linked as the file says; a link to a host that joined later is
        // made again as its join would make it.
        if (this.fileHosts.has(l.a) && this.fileHosts.has(l.b)) continue;
        const [a, b] = l.a < l.b ? [l.a, l.b] : [l.b, l.a];
        link = new Link(a, b, {}, linkSeed(a, b));
        this.links.set(k, link);
      }
      const change: LinkChange = { seed: l.seed };
      for (const key of IMPAIRMENT_KEYS) change[key] = l[key] ?? null;
      link.set(change);
      if (l.cut) link.cut();
    }
    this.opts.log?.('the saved fabric state is taken back', { bindings: saved.bindings.length, links: saved.links.length });
  }

  /** Writes the names and links (whole or not at all) where `load` finds them; a failure is logged, never thrown. */
  private save(): void {
    const file = this.opts.stateFile;
    if (!file) return;
    if (this.stateUnreadable !== null) {
      if (this.saveFailed !== this.stateUnreadable) this.opts.log?.('the fabric state is not saved: the file there could not be read, and is kept for the next start', { file, why: this.stateUnreadable });
      this.saveFailed = this.stateUnreadable;
      return;
    }
    const bindings = new Map<string, FabricSavedState['bindings'][number]>();
    for (const [name, d] of this.dormant) bindings.set(name, { name, secretHash: d.hash.toString('hex'), local: d.local });
    for (const m of this.members.values()) bindings.set(m.name, { name: m.name, secretHash: m.secretHash.toString('hex'), local: m.local });
    const links = [...this.links.values()].map((l) => {
      const o: FabricSavedState['links'][number] = { a: l.a, b: l.b, cut: l.state.cut, seed: l.state.seed };
      for (const k of IMPAIRMENT_KEYS) if (l.state[k] !== undefined) o[k] = l.state[k];
      return o;
    });
    // A proxy's port as it listens now, else as an earlier life saved it (its hosts not joined again yet).
    const ports = new Map(this.savedPorts);
    for (const [k, p] of this.proxies) if (p.port !== null) ports.set(k, p.port);
    const proxies = [...ports].map(([k, port]) => {
      const [from, to] = k.split('>') as [string, string];
      return { from, to, port };
    });
    const state: FabricSavedState = { format: FABRIC_STATE_FORMAT, cluster: this.opts.cluster, bindings: [...bindings.values()], links, proxies };
    try {
      writeFileAtomic(file, `${JSON.stringify(state)}\n`, { mode: 0o600, durable: false });
      this.saveFailed = null;
    } catch (e) {
      // A full disk must not stop the links: they keep working, and a restart would start from the file.
      const why = (e as Error).message;
      if (this.saveFailed !== why) this.opts.log?.('cannot save the fabric state (a restart would forget what changed since)', { file, why });
      this.saveFailed = why;
    }
  }

  /** Notes a stall (nothing ran for STALL_MS) ending now; answers since when this fabric has listened without one. */
  private awake(): number {
    const now = Date.now();
    if (now - this.lastTick > STALL_MS) this.awakeSince = now;
    this.lastTick = now;
    return this.awakeSince;
  }

  /** Binds the control socket; resolves with its port. */
  async start(): Promise<number> {
    this.awake();
    // Once a heartbeat period (when the members' refreshes wake it anyway): a tick more than a
    // period late is a stall of at least a period, which is all the quiet rule needs to know.
    this.ticker = setInterval(() => this.awake(), HEARTBEAT_MS);
    this.ticker.unref();
    await startZapHandler(this.opts.key, (address, why) => this.opts.log?.('refused a connection', { address, why }));
    watchKeyRefusals(this.server.sock);
    const ep = `tcp://${this.opts.listen}:${this.opts.port}`;
    await this.server.bind(ep);
    const last = this.server.sock.lastEndpoint ?? ep;
    this.boundPort = Number(/:(\d+)$/.exec(last)?.[1] ?? this.opts.port);
    void this.server.serve();
    return this.boundPort;
  }

  get port(): number {
    return this.boundPort;
  }

  private link(a: string, b: string): Link {
    const l = this.links.get(pairKey(a, b));
    if (!l) {
      const known = [...this.links.values()].map((x) => `${x.a}-${x.b}`).join(', ') || 'none';
      throw new RpcFailure('NotFound', `no link between ${a} and ${b} (links: ${known})`);
    }
    return l;
  }

  /**
   * The address member `name` connects from now (it may join again from another), for a proxy
   * that carries its traffic to keep places for it (link.ts PROXY_MEMBER_RESERVED); null while it
   * is not a member.
   */
  private memberAddress(name: string): () => string | null {
    return () => {
      const a = this.members.get(name)?.address ?? null;
      // A host on loopback listens on its own 127.x address but connects from 127.0.0.1, as every
      // other host there does: no address tells them apart, and every connection is the host's.
      return a === null || a.startsWith('127.') ? null : a;
    };
  }

  /** Makes the proxies of every link of `name` whose other end is a member (again, if its address changed). */
  private async wire(name: string): Promise<void> {
    let changed = false;
    for (const l of this.links.values()) {
      if (l.a !== name && l.b !== name) continue;
      const other = l.a === name ? l.b : l.a;
      if (!this.members.has(other)) continue;
      for (const [from, to] of [[name, other], [other, name]] as const) {
        const target = this.members.get(to)!;
        const k = `${from}>${to}`;
        const old = this.proxies.get(k);
        if (old && old.target.host === target.address && old.target.port === target.peerPort) continue;
        this.proxies.delete(k);
        await old?.close();
        // Direction 0 of a link is a→b.
        const p = new LinkProxy(l, { host: target.address, port: target.peerPort }, from === l.a ? 0 : 1, (why) => this.refusedConnection(`${from}>${to}`, why), undefined, this.memberAddress(from));
        // Where an earlier life of this fabric had it (its members' calls in flight go there), if free.
        const was = this.savedPorts.get(k);
        if (was !== undefined) await p.listen(this.opts.listen, was).catch(() => p.listen(this.opts.listen, 0));
        else await p.listen(this.opts.listen, 0);
        this.proxies.set(k, p);
        changed = true;
      }
    }
    if (changed) this.save();
  }

  /**
   * A connection a proxy closed at its bound (link.ts MAX_PROXY_CONNECTIONS), or a request in a
   * member's name without its secret: logged once a minute per kind, with the count.
   */
  private refusedConnection(proxy: string, why: string, msg = 'link connections refused'): void {
    const now = Date.now();
    const r = this.refusals.get(proxy) ?? { count: 0, loggedAt: 0 };
    r.count++;
    this.refusals.set(proxy, r);
    if (now - r.loggedAt < 60_000) return;
    r.loggedAt = now;
    this.opts.log?.(msg, { proxy, why, refused: r.count });
  }

  /**
   * Member `name`, if `secret` is its secret: else NotMember (it has not joined, or it left) or
   * Denied (another holder of the key speaking for it).
   */
  private member(name: string, secret: string | null): Member {
    const m = this.members.get(name);
    if (!m) throw new RpcFailure('NotMember', `${name} has not joined cluster ${this.opts.cluster}`);
    this.proveSecret(name, m.secretHash, secret);
    return m;
  }

  /** Refuses (Denied, logged) a request in `name`'s name whose secret is not the one `hash` is of. */
  private proveSecret(name: string, hash: Buffer, secret: string | null): void {
    if (secret === null || !timingSafeEqual(hash, memberSecretHash(secret))) {
      this.refusedConnection(`in ${name}'s name`, 'without its member secret', 'refused requests');
      throw new RpcFailure('Denied', `this request speaks for ${name} without its member secret`);
    }
  }

  private book(name: string): { cluster: string; peers: PeerBookEntry[] } {
    const peers: PeerBookEntry[] = [];
    const self = this.members.get(name);
    for (const [k, p] of this.proxies) {
      const [from, to] = k.split('>') as [string, string];
      const m = this.members.get(to);
      if (from === name && p.port !== null && m && self) {
        peers.push({ name: to, port: p.port, address: m.address, peerPort: m.peerPort, auth: pairAuth(this.opts.cluster, name, self.secretHash, to, m.secretHash) });
      }
    }
    peers.sort((x, y) => (x.name < y.name ? -1 : 1));
    return { cluster: this.opts.cluster, peers };
  }

  private async handle(r: FabricRequest): Promise<unknown> {
    switch (r.op) {
      case 'join': {
        if (r.secret === null) throw new RpcFailure('Denied', `a join needs the host's member secret (${r.name} runs an older hvlab?)`);
        const m = this.members.get(r.name);
        // A name bound before a restart holds its place as a member does (else the state saved held
        // more than 64 names, which no restart takes back).
        if (!m && !this.dormant.has(r.name) && this.members.size + this.dormant.size >= 64) throw new RpcFailure('Full', 'the cluster has 64 members');
        const hash = memberSecretHash(r.secret);
        // A member that joins again with its secret (its root restarted) is itself, from wherever
        // it comes; another host may take a name only once its holder has gone quiet (NAME_HOLD_MS,
        // 10 heartbeat periods), and its secret then holds the name.
        const same = m !== undefined && timingSafeEqual(m.secretHash, hash);
        const since = this.awake();
        const held = m !== undefined && !same && Date.now() - Math.max(m.lastSeen, since) < NAME_HOLD_MS;
        if (m && (m.local !== r.local || held)) throw new RpcFailure('AlreadyExists', `cluster ${this.opts.cluster} already has a host named ${r.name} (at ${m.address})`);
        if (!r.local && this.fileHosts.has(r.name)) throw new RpcFailure('AlreadyExists', `${r.name} is a host of the topology file; a joining host needs another name`);
        // A host of this machine is one of the file's; any other joins as a host of another machine.
        if (r.local && !this.fileHosts.has(r.name)) throw new RpcFailure('Denied', `${r.name} is not a host of the topology file: only the file's hosts join as hosts of this machine`);
        // Its address is where the fabric's proxies connect for it (its ports, the ports it exposes):
        // a key holder that named 127.0.0.1 had the fabric relay to the fabric machine's own
        // loopback services. Off loopback, a member's address is one others can reach.
        const unreachable = memberAddressProblem(r.address, this.opts.listen);
        if (unreachable) throw new RpcFailure('Denied', `${r.name}'s address ${r.address} ${unreachable}`);
        // A name an earlier life of this fabric bound: its holder has as long to come back as a
        // member gone quiet has, counted from this start.
        const d = m ? undefined : this.dormant.get(r.name);
        const dormantOther = d !== undefined && !timingSafeEqual(d.hash, hash);
        if (d && (d.local !== r.local || (dormantOther && Date.now() - since < NAME_HOLD_MS))) {
          throw new RpcFailure('AlreadyExists', `cluster ${this.opts.cluster} has a host named ${r.name}, which has not joined again since the fabric restarted`);
        }
        if ((m && !same) || dormantOther) this.opts.log?.('a host took the name of a quiet one', { host: r.name, address: r.address, ...(m ? { was: m.address } : { since: 'the fabric restarted' }) });
        this.dormant.delete(r.name);
        this.members.set(r.name, { name: r.name, address: r.address, peerPort: r.peerPort, mgmtPort: r.mgmtPort, lps: r.lps, local: r.local, lastSeen: Date.now(), health: same ? m.health : [], secretHash: hash });
        // A member that joins again (its root restarted) opened its ports in its earlier life: they
        // go, but for those it says it still uses (an incoming migration's stream, whose worker ran
        // on through the restart), when it is the same member (its secret).
        for (const [port, e] of [...this.exposed]) if (e.owner === r.name && !(same && r.keep.includes(port))) await this.closeExposed(port);
        for (const [port, e] of [...this.probes]) if (e.owner === r.name) await this.closeProbe(port);
        if (!this.fileHosts.has(r.name)) {
          // A joined host is linked to every member.
          for (const other of this.members.keys()) {
            if (other !== r.name && !this.links.has(pairKey(r.name, other))) {
              const [a, b] = r.name < other ? [r.name, other] : [other, r.name];
              this.links.set(pairKey(a, b), new Link(a, b, {}, linkSeed(a, b)));
            }
          }
        }
        await this.wire(r.name);
        this.save();
        this.opts.log?.('host joined', { host: r.name, address: r.address, local: r.local });
        return this.book(r.name);
      }
      case 'peers': {
        const m = this.member(r.name, r.secret);
        m.lastSeen = Date.now();
        m.health = r.health;
        return this.book(r.name);
      }
      case 'leave': {
        // A name an earlier life of this fabric bound leaves with its secret too, before its host
        // joined again (its root went down meanwhile): else the name and its links stayed for good.
        const d = this.members.has(r.name) ? undefined : this.dormant.get(r.name);
        if (!this.members.has(r.name) && !d) return { left: false };
        if (!d) this.member(r.name, r.secret);
        else this.proveSecret(r.name, d.hash, r.secret);
        this.members.delete(r.name);
        this.dormant.delete(r.name);
        for (const [k, p] of [...this.proxies]) {
          const [from, to] = k.split('>');
          if (from === r.name || to === r.name) {
            this.proxies.delete(k);
            await p.close();
          }
        }
        if (!this.fileHosts.has(r.name)) for (const [k, l] of [...this.links]) if (l.a === r.name || l.b === r.name) this.links.delete(k);
        for (const [port, e] of [...this.exposed]) if (e.owner === r.name || e.from === r.name) await this.closeExposed(port);
        for (const [port, e] of [...this.probes]) if (e.owner === r.name || e.to === r.name) await this.closeProbe(port);
        this.save();
        this.opts.log?.('host left', { host: r.name });
        return { left: true };
      }
      case 'expose': {
        const owner = this.member(r.name, r.secret);
        if (!this.members.has(r.from)) throw new RpcFailure('NotFound', `${r.from} is not a member of cluster ${this.opts.cluster}`);
        const l = this.link(r.from, r.name);
        // The port asked for: kept as it is when it already forwards there (a join kept it), else
        // taken when it is free; any other otherwise (its owner learns which).
        const had = r.via !== null ? this.exposed.get(r.via) : undefined;
        if (had && had.owner === r.name && had.from === r.from && had.proxy.target.port === r.port && had.proxy.target.host === owner.address) return { port: r.via };
        const mine = [...this.exposed].filter(([, e]) => e.owner === r.name);
        if (mine.length >= FABRIC_MAX_EXPOSED) await this.closeExposed(mine[0]![0]);
        // The same direction of the link as its own port from `from`: the same impairments and counters.
        const proxy = new LinkProxy(l, { host: owner.address, port: r.port }, r.from === l.a ? 0 : 1, (why) => this.refusedConnection(`${r.from}>${r.name}:${r.port}`, why), undefined, this.memberAddress(r.from));
        let port: number;
        try {
          port = await proxy.listen(this.opts.listen, r.via !== null && !this.exposed.has(r.via) ? r.via : 0);
        } catch (e) {
          if (r.via === null) throw e;
          this.opts.log?.('the port asked for is taken: another is exposed', { host: r.name, via: r.via, err: (e as Error).message });
          port = await proxy.listen(this.opts.listen, 0);
        }
        this.exposed.set(port, { owner: r.name, from: r.from, proxy });
        this.opts.log?.('port exposed', { host: r.name, to: r.from, port: r.port, via: port });
        return { port };
      }
      case 'unexpose': {
        this.member(r.name, r.secret);
        const e = this.exposed.get(r.port);
        if (!e || e.owner !== r.name) return { closed: false };
        await this.closeExposed(r.port);
        return { closed: true };
      }
      case 'probeOpen': {
        this.member(r.name, r.secret);
        const target = this.members.get(r.to);
        if (!target) throw new RpcFailure('NotFound', `${r.to} is not a member of cluster ${this.opts.cluster}`);
        const l = this.link(r.name, r.to);
        const mine = [...this.probes].filter(([, e]) => e.owner === r.name);
        if (mine.length >= FABRIC_MAX_PROBES) await this.closeProbe(mine[0]![0]);
        // The link's direction name→to, as the link's own port from `name`: its impairments and counters.
        const proxy = new LinkProxy(l, { host: target.address, port: target.peerPort }, r.name === l.a ? 0 : 1, (why) => this.refusedConnection(`probe ${r.name}>${r.to}`, why), undefined, this.memberAddress(r.name));
        const port = await proxy.listen(this.opts.listen, 0);
        this.probes.set(port, { owner: r.name, to: r.to, proxy });
        this.opts.log?.('probe port opened', { host: r.name, to: r.to, via: port });
        return { port };
      }
      case 'probeStop': {
        // With a secret it is the member's own (its probe ended); without, an operator's (an
        // interrupted CLI's `link probe`), as any holder of the key may cut the link anyway.
        if (r.secret !== null) this.member(r.name, r.secret);
        let stopped = 0;
        for (const [port, e] of [...this.probes]) {
          if (e.owner !== r.name || (r.to !== null && e.to !== r.to) || (r.port !== null && port !== r.port)) continue;
          await this.closeProbe(port);
          stopped++;
        }
        if (stopped > 0) this.opts.log?.('probe stopped', { host: r.name, to: r.to, port: r.port, stopped });
        return { stopped };
      }
      case 'status':
        return this.status();
      case 'linkSet': {
        const l = this.link(r.a, r.b);
        l.set(r.change);
        this.save();
        this.opts.log?.('link set', { a: l.a, b: l.b, change: r.change });
        return l.view();
      }
      case 'linkCut':
      case 'linkHeal': {
        const l = this.link(r.a, r.b);
        if (r.op === 'linkCut') l.cut();
        else l.heal();
        this.save();
        this.opts.log?.(r.op === 'linkCut' ? 'link cut' : 'link healed', { a: l.a, b: l.b });
        return l.view();
      }
      case 'linkReset': {
        if ((r.a === null) !== (r.b === null)) throw new RpcFailure('InvalidArgument', 'reset names both ends of a link, or none (every link)');
        const ls = r.a !== null ? [this.link(r.a, r.b!)] : [...this.links.values()];
        for (const l of ls) l.reset();
        this.save();
        this.opts.log?.('links reset', { links: ls.length });
        return { reset: ls.map((l) => l.view()) };
      }
    }
  }

  status(): FabricStatus {
    const now = Date.now();
    const members: FabricMember[] = [...this.members.values()].map((m) => ({
      name: m.name, address: m.address, peerPort: m.peerPort, mgmtPort: m.mgmtPort, lps: m.lps, local: m.local, lastSeenMs: now - m.lastSeen, peers: m.health,
    }));
    const links: LinkView[] = [...this.links.values()].map((l) => l.view());
    return { cluster: this.opts.cluster, members, links, refused: zapRefused() };
  }

  private async closeExposed(port: number): Promise<void> {
    const e = this.exposed.get(port);
    if (!e) return;
    this.exposed.delete(port);
    await e.proxy.close();
  }

  private async closeProbe(port: number): Promise<void> {
    const e = this.probes.get(port);
    if (!e) return;
    this.probes.delete(port);
    // Its connections go with it, and whatever the link still held of them.
    await e.proxy.close();
  }

  /** Probe ports open now (`probeOpen`), with whose probe to whom and its connections. */
  probePorts(): Array<{ port: number; owner: string; to: string; connections: number }> {
    return [...this.probes].map(([port, e]) => ({ port, owner: e.owner, to: e.to, connections: e.proxy.connectionCount().all }));
  }

  /** Ports members opened with `expose`, with who opened them to whom. */
  exposedPorts(): Array<{ port: number; owner: string; from: string; target: number }> {
    return [...this.exposed].map(([port, e]) => ({ port, owner: e.owner, from: e.from, target: e.proxy.target.port }));
  }

  async close(): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    this.server.close();
    for (const p of this.proxies.values()) await p.close();
    this.proxies.clear();
    for (const port of [...this.exposed.keys()]) await this.closeExposed(port);
    for (const port of [...this.probes.keys()]) await this.closeProbe(port);
  }
}
