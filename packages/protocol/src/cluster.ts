/**
 * What hosts of a cluster say to each other and to the cluster's fabric (the process that holds
 * the links), over ZeroMQ TCP with CURVE. Every frame is a msgpack map `{ v, id, op, ...args }`
 * answered by `{ id, ok, result | error }` (the management API's answer shape). Nothing between
 * hosts is trusted: each request, each answer's result and the cluster key file are decoded once,
 * here, by a checking decoder that returns a typed value or a sentence, never throws, and never
 * calls a method of a decoded value.
 *
 * Two services:
 *   - the fabric (`FabricRequest`): a host joins, refreshes its peer book (which doubles as its
 *     keep-alive), opens a port of its own for a link probe (and stops it), and the CLI reads the
 *     cluster's status, sets, cuts, heals and resets links, and stops a probe it was running;
 *   - a host's peer service (`PeerRequest`): heartbeats (`ping`) and bulk bytes (`sink`), which
 *     pass the link layer like every byte between two hosts.
 */
import { isPlainObject } from './hvwire.js';
import { decode } from './wire.js';
import { MAX_MEMORY_BYTES } from './layout.js';
import { VM_NAME_RE } from './vm.js';
import { decodeMigrationStats, type MigrationStats } from './migrate.js';

/**
 * The envelope's `v`. 4: every migration request may carry its number within its move (`rq`),
 * which a version-3 host refuses as an unknown field (at the move's first request). 3: a member's requests to the fabric carry its member secret (`secret`), its
 * peer book an `auth` per peer, and every peer request the `auth` of its link (see "Who is who"
 * below); 2: migState may carry the last page batch (`pages`), which a version-1 host refuses. A
 * host refuses any other version's frames with a sentence naming both, so hosts of different
 * versions do not form a cluster rather than fail in the middle of a migration.
 */
export const CLUSTER_WIRE_VERSION = 4;
/** Largest frame either service reads (a sink chunk and its envelope). */
export const CLUSTER_FRAME_MAX_BYTES = 2 * 1024 * 1024;
/** Largest sink chunk. */
export const SINK_CHUNK_MAX_BYTES = 1024 * 1024;
/** A host name, as topology files have them (it becomes part of interface names). */
export const CLUSTER_HOST_RE = /^[a-z][a-z0-9-]{0,9}$/;
/** Hosts a cluster holds at most (file hosts and joined ones). */
export const CLUSTER_MAX_MEMBERS = 64;
/** The ZAP domain of every CURVE socket of a cluster. */
export const CLUSTER_ZAP_DOMAIN = 'hvlab-cluster';
/** Heartbeat period and how many missed heartbeats make a peer down (Hyper-V failover clustering: 1 s, 10). */
export const HEARTBEAT_MS = 1000;
export const HEARTBEAT_MISSES_DOWN = 10;
/** Default TCP ports of a host's cluster services and of the fabric. */
export const DEFAULT_PEER_PORT = 7742;
export const DEFAULT_MGMT_TCP_PORT = 7741;
export const DEFAULT_FABRIC_PORT = 7740;
/** Longest delay or jitter a link takes (ms), and the largest rate (bit/s). */
export const LINK_MAX_DELAY_MS = 60_000;
export const LINK_MAX_RATE_BPS = 1e12;

/** One link's impairments; each is optional (absent: not impaired that way). */
export interface LinkImpairments {
  /** Added to every round trip, as ping shows it: half each way. */
  delayMs?: number;
  /** ± this on the round trip, drawn per chunk (half each way). */
  jitterMs?: number;
  /** Bits per second, each direction. */
  rateBps?: number;
  /** Percent of chunks lost (and retransmitted, as TCP does), 0–100. */
  lossPercent?: number;
}
export const IMPAIRMENT_KEYS = ['delayMs', 'jitterMs', 'rateBps', 'lossPercent'] as const;

/** A link as the fabric holds it now. */
export interface LinkView extends LinkImpairments {
  a: string;
  b: string;
  cut: boolean;
  seed: number;
  /** Bytes and chunks each way (a→b, b→a), connections made, chunks lost. */
  bytes: [number, number];
  lost: number;
  connections: number;
  /**
   * Bytes each way the link holds back now (queued under its delay or rate, or waiting for the
   * receiver): what a run's traffic left on the link after it ended, still to arrive. Absent from
   * a fabric older than the field.
   */
  queued?: [number, number];
}

export interface FabricMember {
  name: string;
  address: string;
  peerPort: number;
  mgmtPort: number;
  lps: number;
  /** Started by this machine's `cluster up` (else joined with `up --join`). */
  local: boolean;
  /** ms since its last join or peer-book refresh. */
  lastSeenMs: number;
  /** Its heartbeat table, as it last reported it. */
  peers: PeerHealth[];
}

/** What one host knows of one peer from heartbeats. */
export interface PeerHealth {
  name: string;
  state: 'up' | 'down' | 'unknown';
  /** The last heartbeat's round trip (ms), null before one came back. */
  rttMs: number | null;
  /** Heartbeats in a row without an answer. */
  missed: number;
}

/** An entry of a host's peer book: the peer and the fabric port that reaches it through their link. */
export interface PeerBookEntry {
  name: string;
  port: number;
  /** The peer's own address and peer-service port (for a probe that bypasses the link, as a baseline). */
  address: string;
  peerPort: number;
  /**
   * The credential of the pair (this host, the peer): what each of the two puts in its requests to
   * the other (`auth`), and checks in the other's. Only the two members and the fabric know it.
   */
  auth: string;
}

/*
 * Who is who. The cluster key says that a peer is a member, not which one: every holder has it.
 * So a member proves its name with a secret of its own (MEMBER_SECRET_RE: 32 random bytes in hex,
 * made by its root at its first start and kept in its home, so a restarted root is still itself):
 *   - its `join` carries the secret, and the fabric binds the name to it (its hash): a join under a
 *     held name with another secret is refused while the holder is heard from (as before, a name
 *     whose holder went quiet may be taken), and one with the same secret is the member again,
 *     from wherever it comes;
 *   - each of its requests that speaks for it (`peers`, `leave`, `expose`, `unexpose`,
 *     `probeOpen`, and `probeStop` with a secret) carries the secret, and the fabric refuses
 *     (`Denied`) one whose secret is not the name's;
 *   - the fabric gives each member, in its peer book, a credential per peer (`auth`), derived from
 *     both members' secrets, so that the two of them alone know it; every peer request carries the
 *     `auth` of its link, and the receiving host refuses one whose `auth` is not its credential
 *     with the host named in `from`.
 * What stays the operator's (any holder of the key, as the CLI is): `status`, the link changes,
 * and `probeStop` without a secret (an interrupted CLI's `link probe`).
 */
/** A member's secret, or a pair's credential: 32 bytes in lowercase hex. */
export const MEMBER_SECRET_RE = /^[0-9a-f]{64}$/;
/** The file in a host's home that keeps its member secret (mode 0600). */
export const MEMBER_SECRET_FILE = 'member.secret';

export interface FabricStatus {
  cluster: string;
  members: FabricMember[];
  links: LinkView[];
  refused: number;
}

export type LinkChange = { [K in keyof LinkImpairments]?: number | null } & { seed?: number };

/** A fabric request and its sender's member secret (null: an operator's request, or none given). */
export type FabricRequest = FabricRequestBody & { secret: string | null };

export type FabricRequestBody =
  /**
   * `keep`: the fabric's ports this member exposed in an earlier life (its root restarted) that it
   * still uses (an incoming migration's stream, whose worker ran on): kept when it joins again with
   * the same secret. Its other exposed ports are closed.
   */
  | { v: number; id: number; op: 'join'; name: string; address: string; peerPort: number; mgmtPort: number; lps: number; local: boolean; keep: number[] }
  | { v: number; id: number; op: 'peers'; name: string; health: PeerHealth[] }
  | { v: number; id: number; op: 'status' }
  | { v: number; id: number; op: 'linkSet'; a: string; b: string; change: LinkChange }
  | { v: number; id: number; op: 'linkCut' | 'linkHeal'; a: string; b: string }
  | { v: number; id: number; op: 'linkReset'; a: string | null; b: string | null }
  | { v: number; id: number; op: 'leave'; name: string }
  /**
   * A member opens a port of its own (`port`, on its address) to one peer (`from`), through their
   * link: the fabric answers `{ port }`, a port of its own that forwards there with the link's
   * impairments, as the link's own port forwards to the member's peer service. A live migration's
   * destination opens its worker's stream socket so (at most FABRIC_MAX_EXPOSED a member). `via`:
   * the fabric's port to take again, when free (a restarted root opens its migration's port again
   * where the source already sends: the fabric closed it when that root joined again); null: any.
   */
  | { v: number; id: number; op: 'expose'; name: string; from: string; port: number; via: number | null }
  /** Closes a port `expose` opened for member `name` (the fabric's port); `{ closed }`. */
  | { v: number; id: number; op: 'unexpose'; name: string; port: number }
  /**
   * Member `name` opens a port of the fabric for one link probe to member `to`: it reaches `to`'s
   * peer service through their link (direction name→to), as the link's own port does, but carries
   * that probe alone, so it can be stopped alone. `{ port }`.
   */
  | { v: number; id: number; op: 'probeOpen'; name: string; to: string }
  /**
   * Stops the probes of member `name` (to `to`, or at `port`; null: any) at the fabric: their ports
   * close and their connections with them, and what the link held of them is dropped. Sent by the
   * probing host when its probe ends, and by a CLI whose `link probe` was interrupted. `{ stopped }`.
   */
  | { v: number; id: number; op: 'probeStop'; name: string; to: string | null; port: number | null };
/** Ports a member may have opened with `expose` at once (the oldest goes for a new one). */
export const FABRIC_MAX_EXPOSED = 8;
/** Probe ports a member may have open at once (the oldest goes, its probe with it, for a new one). */
export const FABRIC_MAX_PROBES = 4;

/** A peer request and the credential of the link between its sender `from` and this host (PeerBookEntry.auth). */
export type PeerRequest = PeerRequestBody & { auth: string };

export type PeerRequestBody =
  | { v: number; id: number; op: 'ping'; from: string; t: number }
  | { v: number; id: number; op: 'sink'; from: string; data: Uint8Array }
  | MigPeerRequest;

/**
 * Live migration's stream, from the source's VMWP to the destination's peer service, through
 * their link (protocol/src/migrate.ts has the page batch and the options): `migSetup` (the VM's
 * config as its config file has it, checked by the destination's config decoder), `migPages` (a
 * page batch), `migPremap` (the running guest's GPADLs, mapped ahead of the blackout), `migState`
 * (the saved-state tree of every component, as JSON), `migCommit`,
 * `migAbort`. `mig` is the migration's id.
 */
export type MigPeerRequest = MigRequestBody & {
  /**
   * The request's number within its move (the source's VMWP counts every request it sends for
   * the move, over all its sockets), or null (a source that sends none). The source sends a
   * request again, with the same number, when its connection came back while the request was
   * unanswered (a fabric that restarted lost what its link held); the destination answers a
   * number it has seen with its first answer and does not carry the request out again
   * (peerReplayKey).
   */
  rq: number | null;
};

export type MigRequestBody =
  | { v: number; id: number; op: 'migSetup'; from: string; mig: string; config: Record<string, unknown>; options: Record<string, unknown> }
  | { v: number; id: number; op: 'migPages'; from: string; mig: string; data: Uint8Array }
  /** The guest's GPADLs while it runs (a VMBus server state as JSON), for the destination to map ahead of the blackout. */
  | { v: number; id: number; op: 'migPremap'; from: string; mig: string; state: Uint8Array }
  /** The saved-state tree, with the blackout's last page batch when there is one (one round trip fewer). */
  | { v: number; id: number; op: 'migState'; from: string; mig: string; state: Uint8Array; pages: Uint8Array | null }
  /** `stats`: the source's statistics at the commit (decodeMigrationStats), shown at the destination. */
  | { v: number; id: number; op: 'migCommit'; from: string; mig: string; stats: MigrationStats | null }
  /**
   * `vm` and `vmId`: the VM moved (its name, its config's id). A destination that no longer knows
   * the attempt (dropped, or a root restarted since) answers with `vm`: whether it runs that VM
   * as its own ('present': only a commit makes it so) or has nothing of it ('absent'). The source
   * of a move whose commit went unanswered decides by it (MigrationOut.abortDestination).
   */
  | { v: number; id: number; op: 'migAbort'; from: string; mig: string; reason: string; vm: string | null; vmId: string | null }
  /** Post-copy's switch-over: the state, and the bitmap of pages the destination does not have yet (fetched on demand). */
  | { v: number; id: number; op: 'migSwitch'; from: string; mig: string; state: Uint8Array; missing: Uint8Array }
  /** Post-copy: the pages the destination's guest waits for (long poll, at most `waitMs`). */
  | { v: number; id: number; op: 'migPull'; from: string; mig: string; waitMs: number }
  /**
   * Asked of the destination's root while a call to its worker's own stream socket waits: whether
   * the attempt is there (`present`), was dropped (`dropped`, with why: its worker died, say, and
   * nobody on that socket will answer), committed, or is not known (`unknown`: a root restarted
   * since, which proves nothing).
   */
  | { v: number; id: number; op: 'migProbe'; from: string; mig: string };
/**
 * The key under which a destination remembers its answer to a migration request, so that the
 * request sent again (the same `rq`: its connection came back while it was unanswered) gets that
 * answer and is not carried out twice; null for a request that is carried out each time (ping,
 * sink, a migration request without `rq`). The key names the sender, its credential, the move, the
 * operation and the number: only the request itself, from whoever could send it, matches it.
 */
export function peerReplayKey(r: PeerRequest): string | null {
  if (r.op === 'ping' || r.op === 'sink' || r.rq === null) return null;
  return `${r.from}/${r.auth}/${r.mig}/${r.op}/${r.rq}`;
}
/** A VM's id as its config holds it (a UUID). */
const VM_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A migration id: what the source's root made up for it. */
export const MIG_ID_RE = /^[a-z0-9-]{8,64}$/;
/** Largest missing-page bitmap (the largest VM's memory, MAX_MEMORY_BYTES). */
export const MIG_MISSING_MAX_BYTES = MAX_MEMORY_BYTES / 4096 / 8;
/** Largest saved-state tree a migState carries. */
export const MIG_STATE_MAX_BYTES = 1024 * 1024;
/**
 * The error code of a destination's refusal of a commit because the migrated guest's kernel did
 * not resume there (its copy is stopped by then): final, where other errors of a commit may be a
 * lost message and are sent again.
 */
export const MIG_GUEST_NOT_RESUMED = 'GuestNotResumed';

export type Decoded<T> = { ok: true; value: T } | { ok: false; id: number; message: string };

const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

class Bad extends Error {}

/** Field readers over one decoded map: each throws Bad with a sentence naming the field. */
class Fields {
  /** `common`: fields every request of its service may carry beside those `only` names (the envelope's credential). */
  constructor(private readonly o: Record<string, unknown>, private readonly what: string, private readonly common: readonly string[] = []) {}
  only(allowed: readonly string[]): void {
    for (const k of Object.keys(this.o)) if (!allowed.includes(k) && !this.common.includes(k)) throw new Bad(`${this.what}: unknown field "${k.length > 32 ? `${k.slice(0, 32)}…` : k}"`);
  }
  has(k: string): boolean {
    return own(this.o, k) && this.o[k] !== undefined && this.o[k] !== null;
  }
  str(k: string, max: number, re?: RegExp): string {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (typeof v !== 'string' || v.length === 0 || v.length > max || (re && !re.test(v))) throw new Bad(`${this.what}: "${k}" must be ${re ? 'a valid name' : `a string of 1 to ${max} characters`}`);
    return v;
  }
  optStr(k: string, max: number, re?: RegExp): string | null {
    return this.has(k) ? this.str(k, max, re) : null;
  }
  optNum(k: string, min: number, max: number): number | null {
    return this.has(k) ? this.num(k, min, max) : null;
  }
  num(k: string, min: number, max: number, whole = true): number {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (whole && !Number.isInteger(v))) throw new Bad(`${this.what}: "${k}" must be ${whole ? 'a whole number' : 'a number'} from ${min} to ${max}`);
    return v;
  }
  bool(k: string): boolean {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (typeof v !== 'boolean') throw new Bad(`${this.what}: "${k}" must be true or false`);
    return v;
  }
  bytes(k: string, max: number): Uint8Array {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (!(v instanceof Uint8Array) || v.length > max) throw new Bad(`${this.what}: "${k}" must be bytes, at most ${max}`);
    return v;
  }
  list<T>(k: string, max: number, each: (v: unknown, i: number) => T): T[] {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (!Array.isArray(v) || v.length > max) throw new Bad(`${this.what}: "${k}" must be a list of at most ${max}`);
    return v.map(each);
  }
  map(k: string): Record<string, unknown> {
    const v = own(this.o, k) ? this.o[k] : undefined;
    if (!isPlainObject(v)) throw new Bad(`${this.what}: "${k}" must be a map`);
    return v;
  }
}

function fieldsOf(v: unknown, what: string, common: readonly string[] = []): Fields {
  if (!isPlainObject(v)) throw new Bad(`${what} must be a map`);
  return new Fields(v, what, common);
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** A dotted IPv4 address. */
export function isIpv4(s: unknown): s is string {
  return typeof s === 'string' && IPV4_RE.test(s);
}

function hostName(f: Fields, k: string): string {
  return f.str(k, 10, CLUSTER_HOST_RE);
}

function decodeHealth(v: unknown, i: number): PeerHealth {
  const f = fieldsOf(v, `health[${i}]`);
  f.only(['name', 'state', 'rttMs', 'missed']);
  const state = f.str('state', 8);
  if (state !== 'up' && state !== 'down' && state !== 'unknown') throw new Bad(`health[${i}]: "state" must be up, down or unknown`);
  const rtt = (v as Record<string, unknown>).rttMs;
  return { name: hostName(f, 'name'), state, rttMs: rtt === null || rtt === undefined ? null : f.num('rttMs', 0, 3_600_000, false), missed: f.num('missed', 0, Number.MAX_SAFE_INTEGER) };
}

/** A link change: each impairment a number in range, or null to clear it; and an optional seed. */
export function decodeLinkChange(v: unknown): Decoded<LinkChange> {
  return catching(() => linkChangeOf(v));
}

function linkChangeOf(v: unknown): LinkChange {
  const f = fieldsOf(v, 'change');
  f.only([...IMPAIRMENT_KEYS, 'seed']);
  const o = v as Record<string, unknown>;
  const out: LinkChange = {};
  const limits: Record<(typeof IMPAIRMENT_KEYS)[number], [number, number]> = {
    delayMs: [0, LINK_MAX_DELAY_MS], jitterMs: [0, LINK_MAX_DELAY_MS], rateBps: [1, LINK_MAX_RATE_BPS], lossPercent: [0, 100],
  };
  for (const k of IMPAIRMENT_KEYS) {
    if (!own(o, k) || o[k] === undefined) continue;
    out[k] = o[k] === null ? null : f.num(k, limits[k][0], limits[k][1], false);
  }
  if (own(o, 'seed') && o.seed !== undefined && o.seed !== null) out.seed = f.num('seed', 0, 0xffffffff);
  return out;
}

/** Reads the envelope (`v`, `id`, `op`) of a frame; the id is 0 when none could be read. */
function envelope(bytes: Uint8Array, ops: readonly string[], common: readonly string[]): { o: Record<string, unknown>; f: Fields; id: number; op: string } {
  if (bytes.length > CLUSTER_FRAME_MAX_BYTES) throw new Bad(`a frame of ${bytes.length} bytes is over ${CLUSTER_FRAME_MAX_BYTES}`);
  let v: unknown;
  try {
    v = decode(bytes);
  } catch {
    throw new Bad('not msgpack');
  }
  const f = fieldsOf(v, 'a request', common);
  const o = v as Record<string, unknown>;
  const id = typeof o.id === 'number' && Number.isSafeInteger(o.id) && o.id > 0 ? o.id : 0;
  if (id === 0) throw new Bad('a request needs a positive whole "id"');
  if (o.v !== CLUSTER_WIRE_VERSION) throw Object.assign(new Bad(`cluster wire version ${typeof o.v === 'number' ? o.v : '?'} is not ${CLUSTER_WIRE_VERSION}`), { id });
  const op = typeof o.op === 'string' && ops.includes(o.op) ? o.op : null;
  if (op === null) throw Object.assign(new Bad(`unknown operation${typeof o.op === 'string' ? ` "${o.op.slice(0, 32)}"` : ''}`), { id });
  return { o, f, id, op };
}

function catching<T>(fn: () => T): Decoded<T> {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof Bad) return { ok: false, id: (e as { id?: number }).id ?? 0, message: e.message };
    throw e;
  }
}

const FABRIC_OPS = ['join', 'peers', 'status', 'linkSet', 'linkCut', 'linkHeal', 'linkReset', 'leave', 'expose', 'unexpose', 'probeOpen', 'probeStop'] as const;

/** The fabric's one checking decoder of a request frame. */
export function decodeFabricRequest(bytes: Uint8Array): Decoded<FabricRequest> {
  let id = 0;
  return catching(() => {
    const env = envelope(bytes, FABRIC_OPS, ['secret']);
    id = env.id;
    try {
      const secret = env.f.optStr('secret', 64, MEMBER_SECRET_RE);
      return { ...fabricBody(env), secret };
    } catch (e) {
      if (e instanceof Bad) (e as { id?: number }).id = id;
      throw e;
    }
  });
}

function fabricBody(env: ReturnType<typeof envelope>): FabricRequestBody {
  const { f, id } = env;
  const base = { v: CLUSTER_WIRE_VERSION, id };
  switch (env.op as (typeof FABRIC_OPS)[number]) {
    case 'join':
      f.only(['v', 'id', 'op', 'name', 'address', 'peerPort', 'mgmtPort', 'lps', 'local', 'keep']);
      {
        const address = f.str('address', 15);
        if (!isIpv4(address)) throw new Bad('join: "address" must be an IPv4 address');
        const keep = f.has('keep') ? f.list('keep', FABRIC_MAX_EXPOSED, (p) => {
          if (typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535) throw new Bad('join: "keep" must list ports (1 to 65535)');
          return p;
        }) : [];
        return { ...base, op: 'join', name: hostName(f, 'name'), address, peerPort: f.num('peerPort', 1, 65535), mgmtPort: f.num('mgmtPort', 1, 65535), lps: f.num('lps', 1, 1024), local: f.bool('local'), keep };
      }
    case 'peers':
      f.only(['v', 'id', 'op', 'name', 'health']);
      return { ...base, op: 'peers', name: hostName(f, 'name'), health: f.list('health', CLUSTER_MAX_MEMBERS, decodeHealth) };
    case 'status':
      f.only(['v', 'id', 'op']);
      return { ...base, op: 'status' };
    case 'linkSet':
      f.only(['v', 'id', 'op', 'a', 'b', 'change']);
      return { ...base, op: 'linkSet', a: hostName(f, 'a'), b: hostName(f, 'b'), change: linkChangeOf(f.map('change')) };
    case 'linkCut':
    case 'linkHeal':
      f.only(['v', 'id', 'op', 'a', 'b']);
      return { ...base, op: env.op as 'linkCut' | 'linkHeal', a: hostName(f, 'a'), b: hostName(f, 'b') };
    case 'linkReset':
      f.only(['v', 'id', 'op', 'a', 'b']);
      return { ...base, op: 'linkReset', a: f.optStr('a', 10, CLUSTER_HOST_RE), b: f.optStr('b', 10, CLUSTER_HOST_RE) };
    case 'leave':
      f.only(['v', 'id', 'op', 'name']);
      return { ...base, op: 'leave', name: hostName(f, 'name') };
    case 'expose':
      f.only(['v', 'id', 'op', 'name', 'from', 'port', 'via']);
      return { ...base, op: 'expose', name: hostName(f, 'name'), from: hostName(f, 'from'), port: f.num('port', 1, 65535), via: f.optNum('via', 1, 65535) };
    case 'unexpose':
      f.only(['v', 'id', 'op', 'name', 'port']);
      return { ...base, op: 'unexpose', name: hostName(f, 'name'), port: f.num('port', 1, 65535) };
    case 'probeOpen':
      f.only(['v', 'id', 'op', 'name', 'to']);
      return { ...base, op: 'probeOpen', name: hostName(f, 'name'), to: hostName(f, 'to') };
    case 'probeStop':
      f.only(['v', 'id', 'op', 'name', 'to', 'port']);
      return { ...base, op: 'probeStop', name: hostName(f, 'name'), to: f.optStr('to', 10, CLUSTER_HOST_RE), port: f.optNum('port', 1, 65535) };
  }
}

/** A host's peer service's one checking decoder of a request frame. */
export function decodePeerRequest(bytes: Uint8Array): Decoded<PeerRequest> {
  let id = 0;
  return catching(() => {
    const env = envelope(bytes, ['ping', 'sink', 'migSetup', 'migPages', 'migPremap', 'migState', 'migCommit', 'migAbort', 'migSwitch', 'migPull', 'migProbe'], ['auth']);
    id = env.id;
    try {
      const auth = env.f.optStr('auth', 64, MEMBER_SECRET_RE);
      if (auth === null) throw new Bad('a peer request needs "auth", the credential of its link (64 hex digits)');
      return { ...peerBody(env), auth };
    } catch (e) {
      if (e instanceof Bad) (e as { id?: number }).id = id;
      throw e;
    }
  });
}

function peerBody(env: ReturnType<typeof envelope>): PeerRequestBody {
  const { f, id } = env;
  if (env.op.startsWith('mig')) {
    const v = CLUSTER_WIRE_VERSION;
    const from = hostName(f, 'from');
    const mig = f.str('mig', 64, MIG_ID_RE);
    const rq = f.optNum('rq', 1, Number.MAX_SAFE_INTEGER);
    return { ...migBody(env, v, from, mig), rq };
  }
  if (env.op === 'ping') {
    f.only(['v', 'id', 'op', 'from', 't']);
    return { v: CLUSTER_WIRE_VERSION, id, op: 'ping', from: hostName(f, 'from'), t: f.num('t', 0, Number.MAX_SAFE_INTEGER, false) };
  }
  f.only(['v', 'id', 'op', 'from', 'data']);
  return { v: CLUSTER_WIRE_VERSION, id, op: 'sink', from: hostName(f, 'from'), data: f.bytes('data', SINK_CHUNK_MAX_BYTES) };
}

/** A migration request's own fields (`rq`, which every one may carry, is read by peerBody). */
function migBody(env: ReturnType<typeof envelope>, v: number, from: string, mig: string): MigRequestBody {
  const { f, id } = env;
  const only = (keys: readonly string[]): void => f.only([...keys, 'rq']);
  switch (env.op) {
    case 'migSetup':
      only(['v', 'id', 'op', 'from', 'mig', 'config', 'options']);
      return { v, id, op: 'migSetup', from, mig, config: f.map('config'), options: f.map('options') };
    case 'migPages':
      only(['v', 'id', 'op', 'from', 'mig', 'data']);
      return { v, id, op: 'migPages', from, mig, data: f.bytes('data', SINK_CHUNK_MAX_BYTES + 64 * 1024) };
    case 'migPremap':
      only(['v', 'id', 'op', 'from', 'mig', 'state']);
      return { v, id, op: 'migPremap', from, mig, state: f.bytes('state', MIG_STATE_MAX_BYTES) };
    case 'migState':
      only(['v', 'id', 'op', 'from', 'mig', 'state', 'pages']);
      return { v, id, op: 'migState', from, mig, state: f.bytes('state', MIG_STATE_MAX_BYTES), pages: env.o.pages === undefined || env.o.pages === null ? null : f.bytes('pages', SINK_CHUNK_MAX_BYTES + 64 * 1024) };
    case 'migSwitch':
      only(['v', 'id', 'op', 'from', 'mig', 'state', 'missing']);
      return { v, id, op: 'migSwitch', from, mig, state: f.bytes('state', MIG_STATE_MAX_BYTES), missing: f.bytes('missing', MIG_MISSING_MAX_BYTES) };
    case 'migPull':
      only(['v', 'id', 'op', 'from', 'mig', 'waitMs']);
      return { v, id, op: 'migPull', from, mig, waitMs: f.num('waitMs', 0, 5000) };
    case 'migProbe':
      only(['v', 'id', 'op', 'from', 'mig']);
      return { v, id, op: 'migProbe', from, mig };
    case 'migCommit': {
      only(['v', 'id', 'op', 'from', 'mig', 'stats']);
      if (env.o.stats === undefined || env.o.stats === null) return { v, id, op: 'migCommit', from, mig, stats: null };
      const stats = decodeMigrationStats(f.map('stats'));
      if (typeof stats === 'string') throw new Bad(`migCommit: ${stats}`);
      return { v, id, op: 'migCommit', from, mig, stats };
    }
    default:
      only(['v', 'id', 'op', 'from', 'mig', 'reason', 'vm', 'vmId']);
      return { v, id, op: 'migAbort', from, mig, reason: f.str('reason', 512), vm: f.optStr('vm', 63, VM_NAME_RE), vmId: f.optStr('vmId', 36, VM_ID_RE) };
  }
}

/** The impairments of a link's map `v` (a view, a saved link), each checked as a link change checks it; absent ones absent. */
function impairmentsOf(v: object): LinkImpairments {
  const o = v as Record<string, unknown>;
  const change = linkChangeOf(Object.fromEntries(IMPAIRMENT_KEYS.filter((k) => own(o, k)).map((k) => [k, o[k]])));
  const out: LinkImpairments = {};
  for (const k of IMPAIRMENT_KEYS) if (typeof change[k] === 'number') out[k] = change[k] as number;
  return out;
}

function decodeLinkView(v: unknown, i: number): LinkView {
  const f = fieldsOf(v, `links[${i}]`);
  f.only(['a', 'b', ...IMPAIRMENT_KEYS, 'cut', 'seed', 'bytes', 'lost', 'connections', 'queued']);
  const out: LinkView = {
    a: hostName(f, 'a'), b: hostName(f, 'b'), cut: f.bool('cut'), seed: f.num('seed', 0, 0xffffffff),
    bytes: f.list('bytes', 2, (x) => (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 ? x : 0)) as [number, number],
    lost: f.num('lost', 0, Number.MAX_SAFE_INTEGER), connections: f.num('connections', 0, Number.MAX_SAFE_INTEGER),
  };
  if (out.bytes.length !== 2) throw new Bad(`links[${i}]: "bytes" must be two counts`);
  if (f.has('queued')) {
    const q = f.list('queued', 2, (x) => {
      if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw new Bad(`links[${i}]: "queued" must be two byte counts`);
      return x;
    });
    if (q.length !== 2) throw new Bad(`links[${i}]: "queued" must be two byte counts`);
    out.queued = [q[0]!, q[1]!];
  }
  return { ...out, ...impairmentsOf(v as object) };
}

function decodeMember(v: unknown, i: number): FabricMember {
  const f = fieldsOf(v, `members[${i}]`);
  f.only(['name', 'address', 'peerPort', 'mgmtPort', 'lps', 'local', 'lastSeenMs', 'peers']);
  const address = f.str('address', 15);
  if (!isIpv4(address)) throw new Bad(`members[${i}]: "address" must be an IPv4 address`);
  return {
    name: hostName(f, 'name'), address, peerPort: f.num('peerPort', 1, 65535), mgmtPort: f.num('mgmtPort', 1, 65535), lps: f.num('lps', 1, 1024),
    local: f.bool('local'), lastSeenMs: f.num('lastSeenMs', 0, Number.MAX_SAFE_INTEGER, false), peers: f.list('peers', CLUSTER_MAX_MEMBERS, decodeHealth),
  };
}

/** The fabric's `status` result, checked. */
export function decodeFabricStatus(v: unknown): Decoded<FabricStatus> {
  return catching(() => {
    const f = fieldsOf(v, 'fabric status');
    f.only(['cluster', 'members', 'links', 'refused']);
    return { cluster: f.str('cluster', 64), members: f.list('members', CLUSTER_MAX_MEMBERS, decodeMember), links: f.list('links', CLUSTER_MAX_MEMBERS * CLUSTER_MAX_MEMBERS, decodeLinkView), refused: f.num('refused', 0, Number.MAX_SAFE_INTEGER) };
  });
}

/** One link's view (a `linkSet`/`linkCut`/`linkHeal` result), checked. */
export function decodeLinkResult(v: unknown): Decoded<LinkView> {
  return catching(() => decodeLinkView(v, 0));
}

/**
 * What a cluster's fabric keeps on disk (`cluster/fabric-state.json`), so that a fabric restarted
 * after a crash or a kill is the same fabric: each name bound to the hash of its member's secret
 * (a restarted fabric that forgot them bound each name to its first joiner), and each link's
 * impairments, cut and seed as `link set`/`cut` left them (else a restart healed every link and
 * undid an experiment's impairments). Counters and open ports (`expose`, probes) are not kept: a
 * restart ends the connections they carried.
 */
export interface FabricSavedState {
  format: number;
  cluster: string;
  bindings: Array<{ name: string; secretHash: string; local: boolean }>;
  links: Array<{ a: string; b: string; cut: boolean; seed: number } & LinkImpairments>;
  /**
   * The port of each member-to-member proxy (`from` reaches `to`'s peer port there), so that a
   * fabric started again listens where the members' calls in flight were going (a move's stream
   * and its abort name these ports). Absent from a state saved before the field.
   */
  proxies?: Array<{ from: string; to: string; port: number }>;
}
export const FABRIC_STATE_FORMAT = 1;
/** The largest state file a fabric reads (64 bindings and 2016 links take ~250 KiB). */
export const FABRIC_STATE_MAX_BYTES = 1024 * 1024;
const HASH_HEX_RE = /^[0-9a-f]{64}$/;

/** The fabric's saved state (parsed JSON), checked: names, hashes, each link once, each impairment in range. */
export function decodeFabricSavedState(v: unknown): Decoded<FabricSavedState> {
  return catching(() => {
    const f = fieldsOf(v, 'fabric state');
    f.only(['format', 'cluster', 'bindings', 'links', 'proxies']);
    const format = f.num('format', 1, 1_000_000);
    if (format !== FABRIC_STATE_FORMAT) throw new Bad(`fabric state: format ${format} is not ${FABRIC_STATE_FORMAT} (written by another hvlab)`);
    const bindings = f.list('bindings', CLUSTER_MAX_MEMBERS, (b, i) => {
      const g = fieldsOf(b, `bindings[${i}]`);
      g.only(['name', 'secretHash', 'local']);
      return { name: hostName(g, 'name'), secretHash: g.str('secretHash', 64, HASH_HEX_RE), local: g.bool('local') };
    });
    if (new Set(bindings.map((b) => b.name)).size !== bindings.length) throw new Bad('fabric state: a name is bound twice');
    const links = f.list('links', (CLUSTER_MAX_MEMBERS * (CLUSTER_MAX_MEMBERS - 1)) / 2, (l, i) => {
      const g = fieldsOf(l, `links[${i}]`);
      g.only(['a', 'b', 'cut', 'seed', ...IMPAIRMENT_KEYS]);
      const out: FabricSavedState['links'][number] = { a: hostName(g, 'a'), b: hostName(g, 'b'), cut: g.bool('cut'), seed: g.num('seed', 0, 0xffffffff) };
      if (out.a === out.b) throw new Bad(`links[${i}]: a link joins two hosts, not ${out.a} to itself`);
      return { ...out, ...impairmentsOf(l as object) };
    });
    const pairs = new Set(links.map((l) => (l.a < l.b ? `${l.a}|${l.b}` : `${l.b}|${l.a}`)));
    if (pairs.size !== links.length) throw new Bad('fabric state: a link is listed twice');
    const out: FabricSavedState = { format, cluster: f.str('cluster', 64), bindings, links };
    if (f.has('proxies')) {
      out.proxies = f.list('proxies', CLUSTER_MAX_MEMBERS * (CLUSTER_MAX_MEMBERS - 1), (p, i) => {
        const g = fieldsOf(p, `proxies[${i}]`);
        g.only(['from', 'to', 'port']);
        const o = { from: hostName(g, 'from'), to: hostName(g, 'to'), port: g.num('port', 1, 65535) };
        if (o.from === o.to) throw new Bad(`proxies[${i}]: a proxy joins two hosts, not ${o.from} to itself`);
        return o;
      });
      if (new Set(out.proxies.map((p) => `${p.from}>${p.to}`)).size !== out.proxies.length) throw new Bad('fabric state: a proxy is listed twice');
    }
    return out;
  });
}

/** The fabric's answer to `join` and `peers`: the cluster's name and the host's peer book. */
export function decodePeerBook(v: unknown): Decoded<{ cluster: string; peers: PeerBookEntry[] }> {
  return catching(() => {
    const f = fieldsOf(v, 'peer book');
    f.only(['cluster', 'peers']);
    return {
      cluster: f.str('cluster', 64),
      peers: f.list('peers', CLUSTER_MAX_MEMBERS, (p, i) => {
        const g = fieldsOf(p, `peers[${i}]`);
        g.only(['name', 'port', 'address', 'peerPort', 'auth']);
        const address = g.str('address', 15);
        if (!isIpv4(address)) throw new Bad(`peers[${i}]: "address" must be an IPv4 address`);
        return { name: hostName(g, 'name'), port: g.num('port', 1, 65535), address, peerPort: g.num('peerPort', 1, 65535), auth: g.str('auth', 64, MEMBER_SECRET_RE) };
      }),
    };
  });
}

// ---- the cluster key file ----------------------------------------------------------------------

/** The cluster's CURVE key pair, shared by its members: holding the secret key is membership. */
export interface ClusterKey {
  version: 1;
  cluster: string;
  /** Z85, 40 characters each. */
  publicKey: string;
  secretKey: string;
}

const Z85_RE = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;
export const CLUSTER_KEY_MAX_BYTES = 4096;

/** The one checking decoder of a cluster key file's text. */
export function decodeClusterKey(text: string): Decoded<ClusterKey> {
  return catching(() => {
    if (text.length > CLUSTER_KEY_MAX_BYTES) throw new Bad(`a key file is at most ${CLUSTER_KEY_MAX_BYTES} bytes`);
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw new Bad('a key file is JSON, as "cluster up" writes it');
    }
    const f = fieldsOf(v, 'the key file');
    f.only(['version', 'cluster', 'publicKey', 'secretKey']);
    if ((v as Record<string, unknown>).version !== 1) throw new Bad('the key file: "version" must be 1');
    const publicKey = f.str('publicKey', 40);
    const secretKey = f.str('secretKey', 40);
    if (!Z85_RE.test(publicKey) || !Z85_RE.test(secretKey)) throw new Bad('the key file: "publicKey" and "secretKey" must be Z85 CURVE keys (40 characters)');
    return { version: 1, cluster: f.str('cluster', 64), publicKey, secretKey };
  });
}

// ---- ZAP (RFC 27) requests, as libzmq hands them to a handler ------------------------------------

export interface ZapRequest {
  requestId: Uint8Array;
  domain: string;
  address: string;
  mechanism: string;
  /** CURVE: the client's long-term public key (32 bytes). */
  clientKey: Uint8Array | null;
}

/** A ZAP request's frames, checked; null when they are not one. */
export function decodeZapRequest(frames: readonly Uint8Array[]): ZapRequest | null {
  if (frames.length < 6 || frames.length > 8) return null;
  const text = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
  if (text(frames[0]!) !== '1.0') return null;
  if (frames[1]!.length > 255 || frames[2]!.length > 255 || frames[3]!.length > 255) return null;
  const mechanism = text(frames[5]!);
  const key = mechanism === 'CURVE' && frames.length === 7 && frames[6]!.length === 32 ? frames[6]! : null;
  return { requestId: frames[1]!, domain: text(frames[2]!), address: text(frames[3]!), mechanism, clientKey: key };
}

/** Z85 decoding of a 40-character CURVE key into its 32 bytes; null when it is not one. */
export function z85Decode(s: string): Uint8Array | null {
  if (!Z85_RE.test(s)) return null;
  const alphabet = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    let v = 0;
    for (let j = 0; j < 5; j++) v = v * 85 + alphabet.indexOf(s[i * 5 + j]!);
    if (v > 0xffffffff) return null;
    out[i * 4] = (v >>> 24) & 0xff;
    out[i * 4 + 1] = (v >>> 16) & 0xff;
    out[i * 4 + 2] = (v >>> 8) & 0xff;
    out[i * 4 + 3] = v & 0xff;
  }
  return out;
}
