/**
 * Live migration's wire formats (ARCHITECTURE §8): the options of a move, the statistics with
 * QEMU's `query-migrate` names, and the page batch that carries guest memory from the source's
 * VMWP to the destination's.
 *
 * A page batch is binary, little-endian:
 *   u32 magic "HVMP" · u32 count · count entries of { u32 pfn · u8 kind · u8 0 · u16 0 · u32 len · len bytes }
 * kinds: 0 zero page (len 0: the destination zeroes it), 1 raw (len 4096), 2 deflate-raw compressed
 * (1 to 4159 bytes; the destination refuses one that does not inflate to exactly 4096), 3 duplicate (len 4: u32 index of an earlier
 * raw or compressed entry of the same batch whose bytes this page repeats). `decodePageBatch` is
 * the one checking decoder; a batch it refuses changes no memory.
 */

export const MIG_PAGE = 4096;
export const MIG_BATCH_MAGIC = 0x504d5648; // "HVMP"
/** Most pages with bytes (raw, compressed, duplicate) one batch carries: a raw batch is then ~1 MiB, under the cluster frame limit. */
export const MIG_BATCH_MAX_PAGES = 256;
/** Most entries one batch carries (zero pages are 12-byte markers, so an idle VM's batch holds many). */
export const MIG_BATCH_MAX_ENTRIES = 4096;
export const MIG_ENTRY_HEADER = 12;

/**
 * Word 0 of a held partition's go region (a page the destination's VMWP makes, named in the
 * partition process's start-up line as `goRegion`), in two steps. The partition process starts its
 * VP threads as soon as it is held with the word watched: each says it is online, then waits at
 * the word (GuestKernel.armVps). `Start`: the partition process starts its kernel on the memory
 * that is there now. `Run`: the VPs may ask for their LPs (once the kernel's start is done), and
 * the kernel may talk to the host. The VMWP stores `Start` as soon as the last pages are written
 * and `Run` once every VP's state is set and the devices have theirs, so the guest's start-up
 * runs beside the state's decode and SetVpState instead of after them. Any other value is not yet a go: the word is written by
 * another process, and the partition process acts only on these two.
 */
export const GoWord = { Start: 1, Run: 2 } as const;

export const PageKind = { Zero: 0, Raw: 1, Deflate: 2, Dup: 3 } as const;
export type PageKindValue = (typeof PageKind)[keyof typeof PageKind];

export interface PageEntry {
  pfn: number;
  kind: PageKindValue;
  /** Raw: the page; Deflate: the compressed bytes; Zero: empty; Dup: empty (see `dupOf`). */
  data: Uint8Array;
  /** Dup: the index in the batch of the entry it repeats. */
  dupOf?: number;
}

export function encodePageBatch(entries: readonly PageEntry[]): Uint8Array {
  let size = 8;
  for (const e of entries) size += MIG_ENTRY_HEADER + (e.kind === PageKind.Dup ? 4 : e.kind === PageKind.Zero ? 0 : e.data.length);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, MIG_BATCH_MAGIC, true);
  dv.setUint32(4, entries.length, true);
  let o = 8;
  for (const e of entries) {
    dv.setUint32(o, e.pfn, true);
    dv.setUint8(o + 4, e.kind);
    const len = e.kind === PageKind.Dup ? 4 : e.kind === PageKind.Zero ? 0 : e.data.length;
    dv.setUint32(o + 8, len, true);
    o += MIG_ENTRY_HEADER;
    if (e.kind === PageKind.Dup) dv.setUint32(o, e.dupOf ?? 0, true);
    else if (len > 0) out.set(e.data, o);
    o += len;
  }
  return out;
}

/**
 * Checks a page batch for a memory of `pageLimit` pages: magic, count, every entry's kind, length
 * and page number, duplicates pointing back at a page with bytes, nothing left over. Returns the
 * entries (views into `bytes`) or a sentence.
 */
export function decodePageBatch(bytes: Uint8Array, pageLimit: number): PageEntry[] | string {
  if (!(bytes instanceof Uint8Array)) return 'a page batch must be bytes';
  if (bytes.length < 8) return `a page batch of ${bytes.length} bytes is shorter than its header`;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== MIG_BATCH_MAGIC) return 'a page batch must start with "HVMP"';
  const count = dv.getUint32(4, true);
  if (count > MIG_BATCH_MAX_ENTRIES) return `a page batch of ${count} entries is over ${MIG_BATCH_MAX_ENTRIES}`;
  const out: PageEntry[] = [];
  let withBytes = 0;
  let o = 8;
  for (let i = 0; i < count; i++) {
    if (o + MIG_ENTRY_HEADER > bytes.length) return `page entry ${i} is cut short`;
    const pfn = dv.getUint32(o, true);
    const kind = dv.getUint8(o + 4);
    const len = dv.getUint32(o + 8, true);
    if (dv.getUint8(o + 5) !== 0 || dv.getUint16(o + 6, true) !== 0) return `page entry ${i} has reserved bytes set`;
    if (pfn >= pageLimit) return `page entry ${i} names page ${pfn}, outside the ${pageLimit} pages of guest memory`;
    o += MIG_ENTRY_HEADER;
    if (len > bytes.length - o) return `page entry ${i} says ${len} bytes, more than the batch holds`;
    const data = bytes.subarray(o, o + len);
    o += len;
    if (kind !== PageKind.Zero && ++withBytes > MIG_BATCH_MAX_PAGES) return `a page batch carries more than ${MIG_BATCH_MAX_PAGES} pages with bytes`;
    switch (kind) {
      case PageKind.Zero:
        if (len !== 0) return `zero page entry ${i} carries ${len} bytes`;
        out.push({ pfn, kind, data });
        break;
      case PageKind.Raw:
        if (len !== MIG_PAGE) return `raw page entry ${i} carries ${len} bytes, not ${MIG_PAGE}`;
        out.push({ pfn, kind, data });
        break;
      case PageKind.Deflate:
        if (len === 0 || len >= MIG_PAGE + 64) return `compressed page entry ${i} carries ${len} bytes`;
        out.push({ pfn, kind, data });
        break;
      case PageKind.Dup: {
        if (len !== 4) return `duplicate page entry ${i} carries ${len} bytes, not 4`;
        const of = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
        const src = out[of];
        if (of >= i || !src || (src.kind !== PageKind.Raw && src.kind !== PageKind.Deflate)) return `duplicate page entry ${i} points at entry ${of}, which is not an earlier page with bytes`;
        out.push({ pfn, kind, data: new Uint8Array(0), dupOf: of });
        break;
      }
      default:
        return `page entry ${i} has unknown kind ${kind}`;
    }
  }
  if (o !== bytes.length) return `a page batch has ${bytes.length - o} bytes after its last entry`;
  return out;
}

/** Whether a 4 KiB page (at `offset` of `u8`, 8-byte aligned) is all zeros. */
export function isZeroPage(words: BigUint64Array, pageIndex: number): boolean {
  const base = pageIndex * (MIG_PAGE / 8);
  for (let i = 0; i < MIG_PAGE / 8; i++) if (words[base + i] !== 0n) return false;
  return true;
}

// ---- options ----------------------------------------------------------------------------------

export interface MigrationOptions {
  /** Bytes per second the stream may use; 0 = as fast as the link allows. */
  bandwidthBps: number;
  /** The blackout the source aims for (QEMU's downtime-limit, default 300 ms). */
  downtimeLimitMs: number;
  compress: boolean;
  autoConverge: boolean;
  postcopy: boolean;
  /** Stop-and-copy: suspend first, copy everything once (the baseline). */
  offline: boolean;
  /** Pre-copy passes before the blackout at the latest (the first full copy is pass 1). */
  maxPasses: number;
}

export const MIGRATION_DEFAULTS: MigrationOptions = {
  bandwidthBps: 0, downtimeLimitMs: 300, compress: false, autoConverge: false, postcopy: false, offline: false, maxPasses: 10,
};
/** Hyper-V's default of simultaneous live migrations per host. */
export const DEFAULT_MAX_MIGRATIONS = 2;
/** The error code of a cancel refused because the move's switch-over has begun (worker, root and CLI). */
export const MIG_CANCEL_TOO_LATE = 'TooLate';
/**
 * A destination runs a moved VM uncommitted at most this long after it starts it (its watchdog
 * then drops the copy, unless a commit is under way: that one ends within its own bound, the
 * guest's resume, MIG_RESUME_WITHIN_MS). A source that cannot learn the outcome after sending the
 * state resumes its copy only once both have passed.
 */
export const MIG_COMMIT_WITHIN_MS = 15000;
/** A migrated guest's kernel must say it resumed within this of the commit. */
export const MIG_RESUME_WITHIN_MS = 8000;
/** QEMU's auto-converge: initial throttle, increment, maximum (percent). */
export const AUTO_CONVERGE = { initial: 20, increment: 10, max: 99 } as const;

const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

/** Checks move options (from a CLI, a peer or an experiment file); missing ones take the defaults. Returns a sentence when one is wrong. */
/**
 * The least bandwidth a move may be limited to (bytes/s): a full page batch (1 MiB) crosses in 16 s,
 * inside the destination's 30 s of patience with a silent stream. At 1 B/s a page batch took days to pace
 * out, the destination gave up after 30 s of silence, and the source stayed 'active' holding the
 * VM and a migration slot.
 */
export const MIGRATION_MIN_BANDWIDTH_BPS = 64 * 1024;

export function decodeMigrationOptions(v: unknown): MigrationOptions | string {
  if (v === undefined || v === null) return { ...MIGRATION_DEFAULTS };
  if (typeof v !== 'object' || Array.isArray(v) || (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null)) return 'migration options must be a map';
  const o = v as Record<string, unknown>;
  const out: MigrationOptions = { ...MIGRATION_DEFAULTS };
  for (const k of Object.keys(o)) if (!own(MIGRATION_DEFAULTS, k)) return `unknown migration option "${k.slice(0, 32)}"`;
  const num = (k: 'bandwidthBps' | 'downtimeLimitMs' | 'maxPasses', min: number, max: number): string | null => {
    const x = o[k];
    if (x === undefined || x === null) return null;
    if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max || !Number.isInteger(x)) return `migration option ${k} must be a whole number from ${min} to ${max}`;
    out[k] = x + 0; // no -0
    return null;
  };
  const bool = (k: 'compress' | 'autoConverge' | 'postcopy' | 'offline'): string | null => {
    const x = o[k];
    if (x === undefined || x === null) return null;
    if (typeof x !== 'boolean') return `migration option ${k} must be true or false`;
    out[k] = x;
    return null;
  };
  const err = num('bandwidthBps', 0, 1e12) ?? num('downtimeLimitMs', 1, 3_600_000) ?? num('maxPasses', 1, 1000)
    ?? (out.bandwidthBps > 0 && out.bandwidthBps < MIGRATION_MIN_BANDWIDTH_BPS ? `migration option bandwidthBps must be 0 (no limit) or at least ${MIGRATION_MIN_BANDWIDTH_BPS} (64 KiB/s: a batch of 1 MiB of pages must cross within the destination's 30 s of patience)` : null)
    ?? bool('compress') ?? bool('autoConverge') ?? bool('postcopy') ?? bool('offline');
  if (err) return err;
  if (out.offline && (out.postcopy || out.autoConverge)) return 'an offline move cannot also be post-copy or auto-converge';
  return out;
}

// ---- statistics (QEMU's query-migrate names) ------------------------------------------------------

export type MigrationState = 'queued' | 'setup' | 'active' | 'postcopy-active' | 'completed' | 'failed' | 'cancelled';

export interface MigrationRam {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'pages-per-second': number;
  'postcopy-requests': number;
  'page-size': number;
}

export interface MigrationPass {
  pass: number;
  /** Pages sent in this pass (zero pages counted), and the dirty set found at its end. */
  pages: number;
  dirtyPages: number;
  ms: number;
  /** ms since the migration began, at the end of the pass. */
  at: number;
}

export interface MigrationStats {
  vm: string;
  from: string;
  to: string;
  method: 'precopy' | 'postcopy' | 'offline';
  status: MigrationState;
  'total-time': number;
  'setup-time': number;
  /**
   * Milliseconds the VM ran nowhere: from the source's freeze to the destination's first dispatch
   * of one of its VPs, on the clock the hosts share (host-clock.ts); where they do not share one,
   * until the destination's answer reached the source (`downtime-acked`). Only once the VM runs at
   * the destination (a completed move, or post-copy after its switch-over), as QEMU's query-migrate
   * reports it (migrationHasDowntime): absent before, and for a failed or cancelled move.
   */
  downtime?: number;
  /**
   * From the source's freeze until the destination's answer that the VM runs reached the source:
   * `downtime` and the answer's way back (what hvlab reported as the downtime before 2026-12-04).
   * Absent whenever `downtime` is.
   */
  'downtime-acked'?: number;
  'expected-downtime': number;
  ram: MigrationRam;
  /** Extras beyond QEMU's: the current pass, compression ratio (raw ÷ sent), throttle, dirty tracking, passes. */
  pass: number;
  'compression-ratio': number;
  'throttle-percentage': number;
  'dirty-tracking': 'kernel' | 'bitmap';
  /**
   * Where the pages and the state went at the destination: its worker's own stream socket
   * (`worker`), or its root, which hands them to the worker (`root`: a destination without one).
   * Set once the destination is set up.
   */
  stream?: 'worker' | 'root';
  passes: MigrationPass[];
  /**
   * Why pre-copy ended its passes: the dirty set fit the downtime limit (`converged`), `maxPasses`
   * (`max-passes`), or passes in a row that did not shrink it (`no-progress`: the guest dirties as
   * fast as the link sends, and more passes would resend the same pages). Absent for other methods.
   */
  'stop-reason'?: 'converged' | 'max-passes' | 'no-progress';
  'error-desc'?: string;
  /**
   * Where the downtime went (ms): stopping the VM at a step boundary (`freeze`), the last pages
   * (`pages`), and from sending the state to the destination's answer that the VM runs (`start`).
   * `start` splits into `destination`, the destination worker's own time from taking the state (with
   * the last page batch) to the VM running there, as it reports it, and `transit`, the rest: the
   * state's way there and the answer's way back (the link, and each end's event loop). Both are
   * absent when the destination said nothing usable of its time. On the hosts' shared clock, `start`
   * ends at the destination's first dispatch, `transit` is the state's way there only, and `ack`
   * is the answer's way back (not part of the downtime).
   */
  blackout?: MigrationBlackout;
  options: MigrationOptions;
  startedAt: string;
}

export interface MigrationBlackout {
  freeze: number;
  pages: number;
  start: number;
  destination?: number;
  transit?: number;
  ack?: number;
}

/**
 * Whether a move in state `status` has a downtime to report: once the VM runs at the destination,
 * as QEMU's query-migrate has it (`downtime` for completed and postcopy-active, `expected-downtime`
 * before). A failed or cancelled move has none: the VM was not moved, and the 0 its statistics
 * start from (or a blackout measured before a commit that failed) is no move's downtime.
 */
export function migrationHasDowntime(status: MigrationState): boolean {
  return status === 'completed' || status === 'postcopy-active';
}

/**
 * A move's statistics as a host records and reports them (move-status, the answer of a move):
 * a copy of `st` without `downtime` and `downtime-acked` unless migrationHasDowntime.
 */
export function reportedMigrationStats(st: MigrationStats): MigrationStats {
  const out = { ...st };
  if (!migrationHasDowntime(st.status)) {
    delete out.downtime;
    delete out['downtime-acked'];
  }
  return out;
}

/** A blackout's account on one line: "freeze 3, last pages 1, start 6 ms (destination 4, transit 2), answer back 2 ms". */
export function describeBlackout(b: MigrationBlackout): string {
  const split = b.destination !== undefined && b.transit !== undefined ? ` (destination ${b.destination}, transit ${b.transit})` : '';
  return `freeze ${b.freeze}, last pages ${b.pages}, start ${b.start} ms${split}${b.ack !== undefined ? `, answer back ${b.ack} ms` : ''}`;
}

/**
 * The destination's word on when the VM ran there (part of its answer to `migState` and
 * `migSwitch`): the id of its clock (host-clock.ts) and that clock's CLOCK_MONOTONIC nanoseconds
 * at the first dispatch of one of the VM's VPs.
 */
export interface RanAt {
  clock: string;
  ranAtNs: number;
}

/**
 * The instant the VM ran at the destination, from its (untrusted) answer, on the source's own
 * clock: only when the answer names the same clock (`clock`, the source's id; null: it has none)
 * and puts the instant between the state's sending (`sentNs`) and the answer's arrival (`heardNs`),
 * the bounds the source knows it lies within. Null otherwise: the source then counts the downtime
 * until it heard the answer.
 */
export function ranAtOf(answer: unknown, clock: string | null, sentNs: number, heardNs: number): number | null {
  if (clock === null || answer === null || typeof answer !== 'object') return null;
  let theirs: unknown;
  let at: unknown;
  try {
    theirs = (answer as { clock?: unknown }).clock;
    at = (answer as { ranAtNs?: unknown }).ranAtNs;
  } catch {
    return null;
  }
  if (theirs !== clock || typeof at !== 'number' || !Number.isFinite(at)) return null;
  if (at < sentNs || at > heardNs) return null;
  return at;
}

/** Most passes a move's statistics list: `maxPasses` at most, and the blackout's. */
export const MIGRATION_MAX_PASSES = 1001;
/** Longest `error-desc` a move's statistics carry. */
export const MIGRATION_ERROR_MAX_CHARS = 1024;
const MIGRATION_STATES: readonly MigrationState[] = ['queued', 'setup', 'active', 'postcopy-active', 'completed', 'failed', 'cancelled'];
const RAM_KEYS = ['transferred', 'remaining', 'total', 'duplicate', 'skipped', 'normal', 'normal-bytes', 'dirty-pages-rate', 'mbps', 'dirty-sync-count', 'pages-per-second', 'postcopy-requests', 'page-size'] as const;
const PASS_KEYS = ['pass', 'pages', 'dirtyPages', 'ms', 'at'] as const;
const BLACKOUT_KEYS = ['freeze', 'pages', 'start', 'destination', 'transit', 'ack'] as const;
const STATS_KEYS = ['vm', 'from', 'to', 'method', 'status', 'total-time', 'setup-time', 'downtime', 'downtime-acked', 'expected-downtime', 'ram', 'pass', 'compression-ratio',
  'throttle-percentage', 'dirty-tracking', 'stream', 'passes', 'stop-reason', 'error-desc', 'blackout', 'options', 'startedAt'] as const;
/** A host's name or id in a move's statistics (a cluster host name, or a host id outside a cluster). */
const STATS_HOST_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const VM_NAME_RE_STATS = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

class BadStats extends Error {}

/**
 * The one checking decoder of a move's statistics from another process (a migration's source,
 * in its commit): exactly MigrationStats' fields, each of its type, every number finite, at least
 * 0 and at most Number.MAX_SAFE_INTEGER, strings and lists bounded. Returns a fresh copy (nothing
 * of `v` is kept) or a sentence naming the field; never throws and calls no method of `v`.
 */
export function decodeMigrationStats(v: unknown): MigrationStats | string {
  const isMap = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x) && !ArrayBuffer.isView(x)
    && (Object.getPrototypeOf(x) === Object.prototype || Object.getPrototypeOf(x) === null);
  const mapOf = (x: unknown, what: string, keys: readonly string[]): Record<string, unknown> => {
    if (!isMap(x)) throw new BadStats(`${what} must be a map`);
    for (const k of Object.keys(x)) if (!keys.includes(k)) throw new BadStats(`${what}: unknown field "${k.slice(0, 32)}"`);
    return x;
  };
  const num = (o: Record<string, unknown>, k: string, what: string): number => {
    const x = own(o, k) ? o[k] : undefined;
    if (typeof x !== 'number' || !Number.isFinite(x) || x < 0 || x > Number.MAX_SAFE_INTEGER) throw new BadStats(`${what}: "${k}" must be a number from 0 to ${Number.MAX_SAFE_INTEGER}`);
    return x + 0;
  };
  /** An optional field is absent, undefined or nil. */
  const has = (o: Record<string, unknown>, k: string): boolean => own(o, k) && o[k] !== undefined && o[k] !== null;
  const optNum = (o: Record<string, unknown>, k: string, what: string): number | undefined => (has(o, k) ? num(o, k, what) : undefined);
  const oneOf = <T extends string>(o: Record<string, unknown>, k: string, allowed: readonly T[], what: string): T => {
    const x = own(o, k) ? o[k] : undefined;
    if (typeof x !== 'string' || !(allowed as readonly string[]).includes(x)) throw new BadStats(`${what}: "${k}" must be one of ${allowed.join(', ')}`);
    return x as T;
  };
  const str = (o: Record<string, unknown>, k: string, re: RegExp, what: string): string => {
    const x = own(o, k) ? o[k] : undefined;
    if (typeof x !== 'string' || !re.test(x)) throw new BadStats(`${what}: "${k}" must be a name`);
    return x;
  };
  try {
    const o = mapOf(v, 'migration statistics', STATS_KEYS);
    const what = 'migration statistics';
    const r = mapOf(o.ram, `${what}: "ram"`, RAM_KEYS);
    const ram = Object.fromEntries(RAM_KEYS.map((k) => [k, num(r, k, `${what}: ram`)])) as unknown as MigrationRam;
    const rawPasses = own(o, 'passes') ? o.passes : undefined;
    if (!Array.isArray(rawPasses) || rawPasses.length > MIGRATION_MAX_PASSES) throw new BadStats(`${what}: "passes" must be a list of at most ${MIGRATION_MAX_PASSES}`);
    const passes = rawPasses.map((p, i): MigrationPass => {
      const m = mapOf(p, `${what}: passes[${i}]`, PASS_KEYS);
      return { pass: num(m, 'pass', `passes[${i}]`), pages: num(m, 'pages', `passes[${i}]`), dirtyPages: num(m, 'dirtyPages', `passes[${i}]`), ms: num(m, 'ms', `passes[${i}]`), at: num(m, 'at', `passes[${i}]`) };
    });
    const options = decodeMigrationOptions(o.options);
    if (typeof options === 'string') throw new BadStats(`${what}: ${options}`);
    if (!own(o, 'options') || o.options === null || o.options === undefined) throw new BadStats(`${what}: "options" must be a map`);
    const startedAt = own(o, 'startedAt') ? o.startedAt : undefined;
    if (typeof startedAt !== 'string' || startedAt.length > 40 || !Number.isFinite(Date.parse(startedAt))) throw new BadStats(`${what}: "startedAt" must be a date`);
    const out: MigrationStats = {
      vm: str(o, 'vm', VM_NAME_RE_STATS, what), from: str(o, 'from', STATS_HOST_RE, what), to: str(o, 'to', STATS_HOST_RE, what),
      method: oneOf(o, 'method', ['precopy', 'postcopy', 'offline'] as const, what), status: oneOf(o, 'status', MIGRATION_STATES, what),
      'total-time': num(o, 'total-time', what), 'setup-time': num(o, 'setup-time', what), 'expected-downtime': num(o, 'expected-downtime', what),
      ram, pass: num(o, 'pass', what), 'compression-ratio': num(o, 'compression-ratio', what), 'throttle-percentage': num(o, 'throttle-percentage', what),
      'dirty-tracking': oneOf(o, 'dirty-tracking', ['kernel', 'bitmap'] as const, what), passes, options, startedAt,
    };
    const downtime = optNum(o, 'downtime', what);
    if (downtime !== undefined) out.downtime = downtime;
    const acked = optNum(o, 'downtime-acked', what);
    if (acked !== undefined) out['downtime-acked'] = acked;
    if (has(o, 'stream')) out.stream = oneOf(o, 'stream', ['worker', 'root'] as const, what);
    if (has(o, 'stop-reason')) out['stop-reason'] = oneOf(o, 'stop-reason', ['converged', 'max-passes', 'no-progress'] as const, what);
    if (has(o, 'error-desc')) {
      const e = o['error-desc'];
      if (typeof e !== 'string' || e.length > MIGRATION_ERROR_MAX_CHARS) throw new BadStats(`${what}: "error-desc" must be a string of at most ${MIGRATION_ERROR_MAX_CHARS} characters`);
      out['error-desc'] = e;
    }
    if (has(o, 'blackout')) {
      const b = mapOf(o.blackout, `${what}: "blackout"`, BLACKOUT_KEYS);
      const blackout: MigrationBlackout = { freeze: num(b, 'freeze', `${what}: blackout`), pages: num(b, 'pages', `${what}: blackout`), start: num(b, 'start', `${what}: blackout`) };
      for (const k of ['destination', 'transit', 'ack'] as const) {
        const x = optNum(b, k, `${what}: blackout`);
        if (x !== undefined) blackout[k] = x;
      }
      out.blackout = blackout;
    }
    return out;
  } catch (e) {
    if (e instanceof BadStats) return e.message;
    return `migration statistics cannot be read: ${(e as Error).message}`;
  }
}

export function emptyRam(totalBytes: number): MigrationRam {
  return {
    transferred: 0, remaining: totalBytes, total: totalBytes, duplicate: 0, skipped: 0, normal: 0, 'normal-bytes': 0, 'dirty-pages-rate': 0, mbps: 0,
    'dirty-sync-count': 0, 'pages-per-second': 0, 'postcopy-requests': 0, 'page-size': MIG_PAGE,
  };
}

/**
 * Reads a destination's answer to migAbort (an untrusted peer's): `{ committed: true }` when it had
 * the commit or runs the VM as its own (`vm: 'present'`: only a commit makes it so), `{ aborted }`
 * when its copy is gone or never was; null when the answer decides nothing for a move whose commit
 * was sent (the attempt not known there and the VM's presence not said). Before the commit any
 * answer decides: the destination cannot keep an uncommitted copy. Never throws.
 */
export function abortAnswer(a: unknown, commitSent: boolean): { committed?: boolean; aborted?: boolean } | null {
  let committed = false;
  let present = false;
  let aborted = false;
  let absent = false;
  try {
    const o = a !== null && typeof a === 'object' ? a as Record<string, unknown> : {};
    present = o.committed !== true && o.vm === 'present';
    committed = o.committed === true || present;
    aborted = o.aborted === true;
    absent = o.vm === 'absent';
  } catch { /* a hostile answer says nothing */ }
  // 'present' proves a commit only once one was sent: before it, it is not believed.
  if (committed && (commitSent || !present)) return { committed: true };
  if (aborted) return { aborted: true };
  return !commitSent || absent ? { aborted: false } : null;
}
