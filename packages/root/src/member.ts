/**
 * A host's membership of a cluster, run by its root (as Hyper-V's cluster service runs in the
 * root partition). Configured by the environment that `cluster up` or `up --join` gives the host:
 *   HVLAB_CLUSTER_FABRIC  the fabric's address:port     HVLAB_CLUSTER_KEY   the key file
 *   HVLAB_CLUSTER_HOST    this host's name              HVLAB_HOST_ADDRESS  this host's address
 *   HVLAB_CLUSTER_LOCAL   1 for a host of the file      HVLAB_PEER_PORT, HVLAB_MGMT_TCP_PORT
 *
 * It serves, with CURVE (only holders of the cluster's key get in):
 *   - the peer service on address:peerPort: heartbeats (`ping`) and bulk bytes (`sink`) from peers;
 *   - the management API on address:mgmtPort, for CLIs on other machines (`--host` of a joined host);
 * Its name is proved by its member secret (`memberSecret`: made at the first start, kept in the
 * host's home): every request to the fabric in its name carries it, and every request between two
 * members carries their pair's credential from the peer book, which the receiver checks against
 * the host named in `from` ("Who is who" in protocol/src/cluster.ts).
 * It joins the fabric, then every heartbeat period (1 s) refreshes its peer book (reporting
 * its heartbeat table) and pings every peer through the port of their link. A peer is down after
 * 10 heartbeats in a row without an answer (Hyper-V's same-subnet default). Until the fabric
 * answers a join, the host keeps trying; it runs its VMs regardless.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CLUSTER_HOST_RE, CLUSTER_WIRE_VERSION, FABRIC_MAX_EXPOSED, MEMBER_SECRET_FILE, MEMBER_SECRET_RE, DEFAULT_MGMT_TCP_PORT, DEFAULT_PEER_PORT, HEARTBEAT_MISSES_DOWN, HEARTBEAT_MS, SINK_CHUNK_MAX_BYTES,
  decodePeerBook, decodePeerRequest, isIpv4, peerReplayKey,
  type ClusterKey, type HostClusterInfo, type LinkProbeResult, type MgmtArgs, type MigPeerRequest, type PeerBookEntry, type PeerHealth, type PeerRequest,
} from '@hvlab/protocol';
import { curveClientOptions, curveServerOptions, readClusterKey, readRegularFile, RpcClient, RpcFailure, RpcServer, sameCredential, startZapHandler, testKnob, VmwpFailure, watchKeyRefusals, zapRefused } from '@hvlab/runtime';
import type { Logger } from 'pino';
import { MgmtFailure } from './config.js';
import { MgmtServer, type MgmtHandler } from './mgmt.js';

/**
 * Heartbeats a peer misses before it is down (HEARTBEAT_MISSES_DOWN), also the periods a ping's
 * answer counts for. Tests of a slow link that must not make its peer down shorten it
 * (HVLAB_TEST_PEER_DOWN_MISSES: a whole number from 2 up to the default), to outlast it sooner.
 */
const PEER_DOWN_MISSES = testKnob('HVLAB_TEST_PEER_DOWN_MISSES', 2, HEARTBEAT_MISSES_DOWN) ?? HEARTBEAT_MISSES_DOWN;

export interface MemberConfig {
  host: string;
  address: string;
  /** The fabric's ADDRESS:PORT, and its address alone (where the links' ports are too). */
  fabric: string;
  fabricHost: string;
  key: ClusterKey;
  local: boolean;
  peerPort: number;
  mgmtPort: number;
  lps: number;
  /** This host's member secret (`memberSecret`). */
  secret: string;
}

/**
 * This host's member secret, kept in `home` (mode 0600) so that a restarted root is the same member:
 * read, or made on the first start. A file that does not hold one (cut short by a full disk, say)
 * is replaced by a new secret: the fabric then gives the name to it once the old one's holder has
 * been quiet for 10 heartbeat periods, which this host was while it restarted.
 */
export function memberSecret(home: string, log?: Logger): string {
  const file = join(home, MEMBER_SECRET_FILE);
  let text = '';
  try {
    // A regular file of at most a line: a FIFO there would hang the root's start, a huge file fill its memory.
    text = readRegularFile(file, 256).toString('utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log?.warn({ err: (e as Error).message }, 'cannot read the member secret: making a new one');
  }
  if (MEMBER_SECRET_RE.test(text)) return text;
  if (text !== '') log?.warn({ file }, 'the member secret file holds no secret: making a new one');
  const secret = randomBytes(32).toString('hex');
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, `${secret}\n`, { mode: 0o600 });
    chmodSync(tmp, 0o600);
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new Error(`cannot keep the member secret in ${file}: ${(e as Error).message}`);
  }
  return secret;
}

/**
 * Peer requests with an unknown credential that may wait for a fresh peer book at once (checkAuth):
 * a newly joined peer's first heartbeats and a migration's set-up are a few; a flood of forged
 * ones held all 256 of the peer service's requests in flight, and the peers it knows were answered
 * Busy (their heartbeats missed, their migrations refused).
 */
const UNKNOWN_WAITING = 16;


/**
 * The membership configuration in `env`, or null when this host is not a cluster's; throws a
 * sentence when it is wrong. `secret` gives the member secret (called only for a member).
 */
export function memberConfigFromEnv(env: NodeJS.ProcessEnv, lps: number, secret: () => string): MemberConfig | null {
  const fabric = env.HVLAB_CLUSTER_FABRIC;
  if (!fabric) return null;
  const host = env.HVLAB_CLUSTER_HOST ?? '';
  const address = env.HVLAB_HOST_ADDRESS ?? '';
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(fabric);
  if (!m || !isIpv4(m[1]) || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new Error(`HVLAB_CLUSTER_FABRIC must be ADDRESS:PORT, not "${fabric}"`);
  if (!CLUSTER_HOST_RE.test(host)) throw new Error(`HVLAB_CLUSTER_HOST must be a host name, not "${host}"`);
  if (!isIpv4(address)) throw new Error(`HVLAB_HOST_ADDRESS must be an IPv4 address, not "${address}"`);
  const port = (v: string | undefined, d: number, what: string): number => {
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`${what} must be a TCP port, not "${v}"`);
    return n;
  };
  return {
    host, address, fabric, fabricHost: m[1]!, key: readClusterKey(env.HVLAB_CLUSTER_KEY ?? ''), local: env.HVLAB_CLUSTER_LOCAL === '1',
    peerPort: port(env.HVLAB_PEER_PORT, DEFAULT_PEER_PORT, 'HVLAB_PEER_PORT'), mgmtPort: port(env.HVLAB_MGMT_TCP_PORT, DEFAULT_MGMT_TCP_PORT, 'HVLAB_MGMT_TCP_PORT'), lps,
    secret: secret(),
  };
}

interface Peer {
  entry: PeerBookEntry;
  client: RpcClient;
  health: PeerHealth;
  /** Heartbeat pings sent to the peer, and the newest of them answered (their numbers). */
  sent: number;
  heard: number;
  /** Heartbeat periods (this host's ticks) since an answer last came. */
  quiet: number;
}

/**
 * A probe's bulk transfer: chunks in flight, and their sizes. The first chunk is PROBE_FIRST_CHUNK;
 * each answer sizes the next from the rate it shows (the answered chunk's bytes over the time
 * since the answer before), so that an answer comes about every PROBE_ANSWER_SHARE of the probe's
 * timeout, within PROBE_MIN_CHUNK..PROBE_CHUNK. The transfer fails only when no chunk has been
 * answered for the whole timeout. With fixed 256 KiB chunks each bound to answer within the
 * timeout, a transfer at 1 Mbit/s failed at 1 MiB while it still moved (8 chunks in flight take
 * 16 s there); now a link down to ~10 kbit/s is measured, at the cost of more, smaller calls on a
 * slow one.
 */
const PROBE_CHUNK = 256 * 1024;
const PROBE_FIRST_CHUNK = 32 * 1024;
const PROBE_MIN_CHUNK = 4 * 1024;
const PROBE_WINDOW = 8;
const PROBE_ANSWER_SHARE = 0.2;
/** A bulk transfer's longest run, however slowly it still moves: the CLI and an experiment give up on the whole probe after 600 s. */
const PROBE_BULK_MAX_MS = 600_000;

/** The next chunk's size: `bytes` were answered `ms` after the answer before; aims at an answer every `aimMs`. */
export function nextProbeChunk(current: number, bytes: number, ms: number, aimMs: number, max = PROBE_CHUNK): number {
  if (!(ms > 0) || !(bytes > 0)) return Math.min(max, current * 2);
  const want = Math.round((bytes / ms) * aimMs);
  // At most four times larger per answer: the first answers come before the window has filled.
  return Math.max(PROBE_MIN_CHUNK, Math.min(max, current * 4, want));
}
/**
 * A probe's first round trip (the connection and its handshake) waits no longer than this, within
 * the probe's own bound: tests of a cut link set it (HVLAB_TEST_PROBE_CONNECT_MS, whole ms from 100
 * up), so that the way that does not answer is said in that time rather than the probe's 5 s.
 */
const PROBE_CONNECT_CAP_MS = testKnob('HVLAB_TEST_PROBE_CONNECT_MS', 100) ?? Infinity;

export class ClusterMember {
  private readonly peerServer: RpcServer<PeerRequest>;
  private readonly mgmtTcp: MgmtServer;
  private readonly fabric: RpcClient;
  private readonly peers = new Map<string, Peer>();
  private timer: NodeJS.Timeout | null = null;
  private cluster = '';
  private fabricState: HostClusterInfo['fabricState'] = 'joining';
  /** The fabric's last refusal of a join (HostClusterInfo.fabricRefusal). */
  private refusal: { code: string; message: string } | null = null;
  private joined = false;
  /** Called each time this host joins the fabric (again): the ports it had exposed are closed then, but for those `keepExposed` names. */
  onJoined: (() => void) | null = null;
  /** The fabric's ports this host exposed in an earlier life and still uses (VMMS's incoming migrations taken over after a restart). */
  keepExposed: (() => number[]) | null = null;
  private closed = false;
  private tickRunning = false;
  /** When a request with a credential this host did not know last made it ask the fabric for its book, and that ask. */
  private lastUnknownRefresh = 0;
  private bookCheck: Promise<void> | null = null;
  /** Requests with a credential this host does not know that wait for that ask now. */
  private unknownWaiting = 0;
  /** Link probes running now (`probe`), each with what ends it (`stopProbes`). */
  private readonly running = new Set<{ peer: string; stop: () => void }>();
  /** Peer requests refused for their credential, and when that was last logged. */
  private denied = { count: 0, loggedAt: 0 };

  constructor(private readonly cfg: MemberConfig, private readonly log: Logger, mgmt: MgmtHandler) {
    // A migration request sent again (the source's connection came back: a fabric that restarted
    // lost it or its answer) is answered with the first answer, never carried out twice (peerReplayKey).
    // Keyed only when the request carries its pair's credential: a key is what the sender chose, and
    // anyone with the cluster key could otherwise push the real requests' answers out of the list.
    this.peerServer = new RpcServer(decodePeerRequest, (r) => this.servePeer(r), curveServerOptions(cfg.key), undefined, (r) => (this.credentialKnown(r.from, r.auth) ? peerReplayKey(r) : null));
    this.peerServer.onReplay = (r, running) => this.log.info({ op: r.op, from: r.from, mig: 'mig' in r ? r.mig : null, rq: 'rq' in r ? r.rq : null, running }, 'a migration request its source sent again is answered with its first answer, not carried out again');
    this.mgmtTcp = new MgmtServer(mgmt, (e) => log.error({ err: e }, 'remote management request failed'), curveServerOptions(cfg.key));
    this.fabric = new RpcClient(`tcp://${cfg.fabric}`, curveClientOptions(cfg.key));
  }

  async start(): Promise<void> {
    await startZapHandler(this.cfg.key, (address, why) => this.log.warn({ address, why }, 'refused a connection without the cluster\'s key'));
    watchKeyRefusals(this.peerServer.sock);
    watchKeyRefusals(this.mgmtTcp.sock);
    await this.peerServer.bind(`tcp://${this.cfg.address}:${this.cfg.peerPort}`);
    await this.mgmtTcp.bind(`tcp://${this.cfg.address}:${this.cfg.mgmtPort}`);
    void this.peerServer.serve();
    void this.mgmtTcp.serve();
    this.log.info({ host: this.cfg.host, address: this.cfg.address, fabric: this.cfg.fabric }, 'cluster member serving');
    void this.tick();
    this.timer = setInterval(() => void this.tick(), HEARTBEAT_MS);
  }

  /** Where live migrations into this host go (VMMS); unset, they are refused. */
  onMigration: ((r: MigPeerRequest & { auth: string }) => Promise<unknown>) | null = null;

  private async servePeer(r: PeerRequest): Promise<unknown> {
    await this.checkAuth(r.from, r.auth);
    if (r.op === 'ping') return { pong: this.cfg.host, t: r.t };
    if (r.op === 'sink') return { n: r.data.length };
    if (!this.onMigration) throw new RpcFailure('Unavailable', `${this.cfg.host} takes no migrations`);
    try {
      return await this.onMigration(r);
    } catch (e) {
      // The source hears the refusal's own code (Busy, AlreadyExists, ...), not "Internal".
      if (e instanceof MgmtFailure || e instanceof VmwpFailure) throw new RpcFailure(e.code, e.message);
      throw e;
    }
  }

  /**
   * Refuses (`Denied`) a request whose credential is not that of this host's pair with `from`. A
   * peer that joined since the last refresh is not in the book yet: an unknown credential waits for
   * a fresh book before it is refused. The requests that wait share one ask of the fabric, at most
   * one every 200 ms, so that a stream of bad ones does not become one of requests to the fabric;
   * and at most UNKNOWN_WAITING of them wait (past that one is refused at once), so that a stream
   * of bad ones does not hold the peer service's requests in flight (256) and have it answer Busy
   * to the peers it knows.
   */
  /** Whether `auth` is the credential of this host's pair with `from`, by the book as it is. */
  private credentialKnown(from: string, auth: string): boolean {
    const p = this.peers.get(from);
    return p !== undefined && sameCredential(p.entry.auth, auth);
  }

  private async checkAuth(from: string, auth: string): Promise<void> {
    const known = (): boolean => this.credentialKnown(from, auth);
    if (known()) return;
    if (this.unknownWaiting >= UNKNOWN_WAITING) this.deny(from);
    this.unknownWaiting++;
    try {
      await this.freshBook();
    } finally {
      this.unknownWaiting--;
    }
    if (known()) return;
    this.deny(from);
  }

  /** The fabric's book, asked for requests with an unknown credential: one ask for all that wait, at most one every 200 ms (see checkAuth). */
  private freshBook(): Promise<void> {
    if (!this.bookCheck) {
      const wait = this.lastUnknownRefresh + 200 - Date.now();
      this.bookCheck = (async () => {
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        this.lastUnknownRefresh = Date.now();
        await this.refresh();
      })().finally(() => {
        this.bookCheck = null;
      });
    }
    return this.bookCheck;
  }

  /** Refuses a request in `from`'s name without its credential (logged once a minute, with the count). */
  private deny(from: string): never {
    const now = Date.now();
    this.denied.count++;
    if (now - this.denied.loggedAt >= 60_000) {
      this.denied.loggedAt = now;
      this.log.warn({ from, refused: this.denied.count }, 'refused peer requests whose credential is not that of the host they name');
    }
    throw new RpcFailure('Denied', `this request names ${from} but does not carry the credential of ${from}'s link to ${this.cfg.host}`);
  }

  get name(): string {
    return this.cfg.host;
  }

  /** Why `peer` cannot be reached: it is down, or not linked to this host (the fabric lists only linked hosts that are up). */
  private noPeer(peer: string): string {
    if (!this.joined) return `${this.cfg.host} has no link to ${peer} (it has not joined its cluster yet)`;
    return `${this.cfg.host} has no link to ${peer} that is up: that host is down, or not linked to ${this.cfg.host} (${this.peers.size ? `peers up: ${[...this.peers.keys()].join(', ')}` : 'no peer of it is up'})`;
  }

  get key(): ClusterKey {
    return this.cfg.key;
  }

  /**
   * Where this host reaches `peer` through their link (the fabric's port of it), for a migration
   * stream; throws a MgmtFailure naming the peers when there is no such link.
   */
  async linkTo(peer: string): Promise<{ endpoint: string; direct: string; auth: string }> {
    if (!this.peers.has(peer)) await this.refresh();
    const p = this.peers.get(peer);
    if (!p) throw new MgmtFailure('NotFound', this.noPeer(`host "${peer}"`));
    return { endpoint: `tcp://${this.cfg.fabricHost}:${p.entry.port}`, direct: `tcp://${p.entry.address}:${p.entry.peerPort}`, auth: p.entry.auth };
  }

  /** This host's address (where its own sockets listen). */
  get address(): string {
    return this.cfg.address;
  }

  /**
   * Opens `port` of this host's address to `peer` through their link (the fabric's `expose`):
   * resolves with the fabric's port that forwards there, which the peer reaches at the fabric's
   * address it knows. A live migration's destination opens its worker's stream socket so.
   */
  async expose(peer: string, port: number, via?: number): Promise<number> {
    const r = await this.fabric.call({ op: 'expose', name: this.cfg.host, secret: this.cfg.secret, from: peer, port, ...(via ? { via } : {}) }, HEARTBEAT_MS, CLUSTER_WIRE_VERSION);
    const p = r !== null && typeof r === 'object' ? (r as { port?: unknown }).port : undefined;
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535) throw new Error('the fabric answered expose without a port');
    return p;
  }

  /** Closes a port `expose` opened (best effort: the fabric also closes it when this host leaves). */
  async unexpose(fabricPort: number): Promise<void> {
    await this.fabric.call({ op: 'unexpose', name: this.cfg.host, secret: this.cfg.secret, port: fabricPort }, HEARTBEAT_MS, CLUSTER_WIRE_VERSION).catch(() => undefined);
  }

  /** One heartbeat period: join or refresh the peer book, then ping every peer. */
  private async tick(): Promise<void> {
    if (this.tickRunning || this.closed) return;
    this.tickRunning = true;
    try {
      const wasJoined = this.joined;
      await this.refresh();
      // A fabric that forgot this host (its server restarted) said NotMember: join it now, not a
      // period later, so the links come back a heartbeat period sooner.
      if (wasJoined && !this.joined && !this.closed) await this.refresh();
      for (const p of this.peers.values()) void this.heartbeat(p);
    } finally {
      this.tickRunning = false;
    }
  }

  private async refresh(): Promise<void> {
    const body = this.joined
      ? { op: 'peers', name: this.cfg.host, secret: this.cfg.secret, health: [...this.peers.values()].map((p) => p.health) }
      : { op: 'join', name: this.cfg.host, secret: this.cfg.secret, address: this.cfg.address, peerPort: this.cfg.peerPort, mgmtPort: this.cfg.mgmtPort, lps: this.cfg.lps, local: this.cfg.local, keep: this.keepExposed?.().slice(0, FABRIC_MAX_EXPOSED) ?? [] };
    let result: unknown;
    try {
      result = await this.fabric.call(body, HEARTBEAT_MS, CLUSTER_WIRE_VERSION);
    } catch (e) {
      if (e instanceof RpcFailure && e.code === 'NotMember') this.joined = false;
      // The name is another secret's now (this host was quiet for 10 heartbeats and another took
      // it): this host joins again, which the fabric refuses while the other is heard from and lets
      // in once it is quiet. Asking for its book went on being refused, for good.
      if (e instanceof RpcFailure && e.code === 'Denied' && this.joined) {
        this.joined = false;
        this.log.error({ err: e.message }, 'the fabric holds this host\'s name for another member secret: joining again');
      }
      if (this.fabricState !== 'unreachable' && this.joined) this.log.warn({ err: (e as Error).message }, 'the cluster fabric did not answer');
      if (this.joined) this.fabricState = 'unreachable';
      else if (e instanceof RpcFailure && e.code !== 'Timeout') {
        this.fabricState = 'unreachable';
        if (this.refusal?.message !== e.message) this.log.error({ err: e.message }, 'the cluster fabric refused this host');
        this.refusal = { code: e.code, message: e.message };
      }
      return;
    }
    const d = decodePeerBook(result);
    if (!d.ok) {
      this.log.warn({ err: d.message }, 'the fabric sent a peer book that does not decode');
      return;
    }
    const joinedNow = !this.joined;
    if (joinedNow) this.log.info({ cluster: d.value.cluster, peers: d.value.peers.map((p) => p.name) }, 'joined the cluster');
    this.joined = true;
    this.fabricState = 'joined';
    this.refusal = null;
    this.cluster = d.value.cluster;
    this.applyBook(d.value.peers);
    // The fabric closed this host's exposed ports as it joined (or lost them, restarted).
    if (joinedNow) this.onJoined?.();
  }

  private applyBook(book: PeerBookEntry[]): void {
    const names = new Set(book.map((b) => b.name));
    for (const [n, p] of this.peers) {
      if (!names.has(n)) {
        p.client.close();
        this.peers.delete(n);
      }
    }
    for (const b of book) {
      const old = this.peers.get(b.name);
      if (old && old.entry.port === b.port) {
        old.entry = b;
        continue;
      }
      old?.client.close();
      // The link's port is on the fabric, at the address this host reaches the fabric by.
      this.peers.set(b.name, { entry: b, client: new RpcClient(`tcp://${this.cfg.fabricHost}:${b.port}`, curveClientOptions(this.cfg.key)), health: old?.health ?? { name: b.name, state: 'unknown', rttMs: null, missed: 0 }, sent: old?.sent ?? 0, heard: old?.heard ?? 0, quiet: old?.quiet ?? 0 });
    }
  }

  /**
   * One heartbeat period's ping. The periods since an answer last came, but the last (its ping may
   * still be on its way), are the heartbeats missed: PEER_DOWN_MISSES of them make the peer
   * down, as Windows failover clustering's SameSubnetThreshold of missed 1 s heartbeats does. A
   * ping's answer counts whenever it comes (up to that many periods later), as a heartbeat that
   * arrives late still arrives: on a link of constant delay one comes each period. Before, each
   * ping had one period (1 s) for its answer, so on a link of 1 s delay every ping was missed and
   * the peer went down with the link carrying everything; at 600 ms, with a bulk move queued on
   * the link, the peer went down and up again.
   */
  private async heartbeat(p: Peer): Promise<void> {
    const t0 = performance.now();
    const seq = ++p.sent;
    // Counted in this host's own periods: a host that was stopped itself (SIGSTOP) missed none.
    const missed = Math.max(0, p.quiet - 1);
    p.quiet++;
    if (missed > 0) {
      const state = missed >= PEER_DOWN_MISSES ? 'down' : p.health.state;
      if (state === 'down' && p.health.state !== 'down') this.log.warn({ peer: p.entry.name, missed }, 'peer is down');
      p.health = { ...p.health, missed, state };
    }
    try {
      await p.client.call({ op: 'ping', from: this.cfg.host, auth: p.entry.auth, t: Date.now() }, HEARTBEAT_MS * PEER_DOWN_MISSES, CLUSTER_WIRE_VERSION);
      p.quiet = 0;
      // An older ping answered after a newer one: heard, but its round trip is not the newest.
      if (seq <= p.heard) return;
      p.heard = seq;
      const was = p.health.state;
      p.health = { name: p.entry.name, state: 'up', rttMs: Math.round((performance.now() - t0) * 1000) / 1000, missed: 0 };
      if (was === 'down') this.log.info({ peer: p.entry.name }, 'peer is up again');
    } catch { /* missed: the next period's ping counts it */ }
  }

  info(): HostClusterInfo {
    return {
      cluster: this.cluster, name: this.cfg.host, address: this.cfg.address, fabric: this.cfg.fabric, fabricState: this.fabricState, fabricRefusal: this.joined ? null : this.refusal,
      peers: [...this.peers.values()].map((p) => p.health).sort((a, b) => (a.name < b.name ? -1 : 1)), refused: zapRefused(),
    };
  }

  /**
   * Round trips and a bulk transfer to a peer, through its link (or directly, past it). Through the
   * link it goes by a port of the fabric opened for this probe alone (`probeOpen`), so that it can
   * be stopped there alone (`probeStop`: by this host at its end, or by a CLI whose `link probe`
   * was interrupted); a probe whose port the fabric closes ends at once.
   */
  async probe(args: MgmtArgs['linkProbe']): Promise<LinkProbeResult> {
    // A peer that joined since the last refresh is in the fabric's book already: ask now.
    if (!this.peers.has(args.peer)) await this.refresh();
    const p = this.peers.get(args.peer);
    if (!p) throw new MgmtFailure('NotFound', this.noPeer(String(args.peer)));
    const direct = args.direct === true;
    const timeoutMs = args.timeoutMs ?? 5000;
    let probePort: number | null = null;
    if (!direct) {
      const opened = await this.fabric.call({ op: 'probeOpen', name: this.cfg.host, secret: this.cfg.secret, to: args.peer }, timeoutMs, CLUSTER_WIRE_VERSION).catch((e: Error) => {
        throw new MgmtFailure('Unreachable', `the fabric (${this.cfg.fabric}) did not open a way for the probe to ${args.peer}: ${e.message}`);
      }) as { port?: unknown } | null;
      const port = opened?.port;
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new MgmtFailure('Unreachable', `the fabric's answer to probeOpen names no port`);
      probePort = port;
    }
    const via = direct ? `${p.entry.address}:${p.entry.peerPort}` : `${this.cfg.fabricHost}:${probePort}`;
    const c = new RpcClient(`tcp://${via}`, curveClientOptions(this.cfg.key));
    // Once the way answered: a connection the fabric closes means the probe was stopped there (or the peer went).
    let answered = false;
    let stopped: string | null = null;
    const stoppedFailure = (): MgmtFailure => new MgmtFailure('Cancelled', `the probe to ${args.peer} was stopped: ${stopped ?? 'it ended'}`);
    const stop = (why: string): void => {
      stopped ??= why;
      c.close(); // what waits for an answer fails now, not after its timeout
    };
    c.sock.events.on('disconnect', () => {
      if (!answered || direct) return;
      stop(`the fabric closed its way through the link (an interrupted "link probe", or ${args.peer} went away)`);
    });
    // A probe past the link has no way at the fabric to close: it is stopped here (`stopProbes`).
    const entry = { peer: args.peer, stop: (): void => stop('this host was asked to stop it (an interrupted "link probe")') };
    this.running.add(entry);
    const call = (body: Record<string, unknown>, ms = timeoutMs): Promise<unknown> => c.call({ ...body, auth: p.entry.auth }, ms, CLUSTER_WIRE_VERSION);
    try {
      // The connection (and its CURVE handshake) first, not counted.
      const connectMs = Math.min(timeoutMs, PROBE_CONNECT_CAP_MS);
      try {
        await call({ op: 'ping', from: this.cfg.host, t: Date.now() }, connectMs);
        answered = true;
      } catch (e) {
        if (stopped) throw stoppedFailure();
        throw new MgmtFailure('Unreachable', `${args.peer} did not answer through ${direct ? 'its own address' : 'the link'} (${via}) within ${connectMs} ms: ${(e as Error).message}`);
      }
      const rttMs: number[] = [];
      let lostPings = 0;
      for (let i = 0; i < (args.pings ?? 10); i++) {
        const t0 = performance.now();
        try {
          await call({ op: 'ping', from: this.cfg.host, t: Date.now() });
          rttMs.push(Math.round((performance.now() - t0) * 1000) / 1000);
        } catch {
          if (stopped) throw stoppedFailure();
          lostPings++;
        }
      }
      const bytes = args.bytes ?? 0;
      let seconds = 0;
      if (bytes > 0) {
        const max = Math.min(PROBE_CHUNK, SINK_CHUNK_MAX_BYTES);
        const fill = Buffer.alloc(Math.min(max, bytes), 0x5a);
        let size = Math.min(PROBE_FIRST_CHUNK, max);
        let sent = 0;
        let done = 0;
        const t0 = performance.now();
        let lastAnswer = t0;
        let stalled: string | null = null;
        // The bound is on silence, not on each chunk: a slow link's chunks wait behind each other.
        // The whole transfer has a bound too, past which its asker has given up.
        const watchdog = setInterval(() => {
          if (stalled !== null) return;
          const now = performance.now();
          if (now - lastAnswer > timeoutMs) stalled = `no chunk was answered for ${timeoutMs} ms`;
          else if (now - t0 > PROBE_BULK_MAX_MS) stalled = `it ran ${PROBE_BULK_MAX_MS / 1000} s, its longest (a smaller --bytes measures a slow link)`;
          if (stalled !== null) c.close();
        }, Math.max(50, Math.min(1000, timeoutMs / 10)));
        const inFlight = new Set<Promise<unknown>>();
        try {
          while (sent < bytes) {
            if (stopped) throw stoppedFailure();
            const n = Math.min(size, bytes - sent);
            sent += n;
            const pr = call({ op: 'sink', from: this.cfg.host, data: fill.subarray(0, n) }, timeoutMs * (PROBE_WINDOW + 2)).then(() => {
              const now = performance.now();
              size = nextProbeChunk(size, n, now - lastAnswer, timeoutMs * PROBE_ANSWER_SHARE, max);
              lastAnswer = now;
              done += n;
            });
            inFlight.add(pr);
            void pr.then(() => inFlight.delete(pr), () => inFlight.delete(pr));
            if (inFlight.size >= PROBE_WINDOW) await Promise.race(inFlight);
          }
          await Promise.all(inFlight);
        } catch (e) {
          if (stopped) throw stoppedFailure();
          const s = ((performance.now() - t0) / 1000).toFixed(1);
          const rtt = rttMs.length > 0 ? `; ${rttMs.length} round trips before it, p50 ${[...rttMs].sort((a, b) => a - b)[Math.floor(rttMs.length / 2)]} ms` : '';
          const why = stalled ?? (e as Error).message;
          throw new MgmtFailure('Unreachable', `the bulk transfer to ${args.peer} did not finish: ${why} (${done} of ${bytes} bytes answered in ${s} s${rtt})`);
        } finally {
          clearInterval(watchdog);
        }
        seconds = (performance.now() - t0) / 1000;
      }
      return { from: this.cfg.host, peer: args.peer, via, direct, rttMs, lostPings, bytes, seconds, bitsPerSecond: seconds > 0 ? (bytes * 8) / seconds : 0 };
    } finally {
      this.running.delete(entry);
      c.close();
      // Its port at the fabric goes with it (already gone when the probe was stopped there).
      if (probePort !== null) void this.fabric.call({ op: 'probeStop', name: this.cfg.host, secret: this.cfg.secret, to: args.peer, port: probePort }, 2000, CLUSTER_WIRE_VERSION).catch(() => undefined);
    }
  }

  /** Stops this host's running link probes to `peer` (each fails with Cancelled); how many there were. */
  stopProbes(peer: string): number {
    let n = 0;
    for (const p of [...this.running]) {
      if (p.peer !== peer) continue;
      p.stop();
      n++;
    }
    if (n > 0) this.log.info({ peer, stopped: n }, 'link probes stopped');
    return n;
  }

  /** Leaves the cluster (telling the fabric, at most 300 ms) and closes every socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.joined) await this.fabric.call({ op: 'leave', name: this.cfg.host, secret: this.cfg.secret }, 300, CLUSTER_WIRE_VERSION).catch(() => undefined);
    for (const p of this.peers.values()) p.client.close();
    this.peerServer.close();
    this.mgmtTcp.close();
    this.fabric.close();
  }
}
