/**
 * The hypervisor's state machine, free of sockets so it can be tested in-process: the partition
 * table, sessions and their authentication, hypercall dispatch with TLFS codes and HV_STATUS
 * results, ports and connections, and SynIC delivery. `server.ts` puts it behind a ZeroMQ ROUTER.
 *
 * Every call checks, in this order: the caller's privilege (ACCESS_DENIED, before any input is
 * read, so an unprivileged caller learns nothing from its input — `gate`), the shape of the input
 * (INVALID_HYPERCALL_INPUT), the target partition (INVALID_PARTITION_ID for the root, else
 * ACCESS_DENIED), its state (INVALID_PARTITION_STATE), then the values (INVALID_PARAMETER and
 * friends). Parent-only calls need CreatePartitions: only a partition that may create partitions
 * can be anyone's parent. A handler that throws anything but a status is a defect; the caller
 * gets OPERATION_DENIED and the hypervisor logs it and goes on.
 *
 * Sessions. A session is one connection of the hypervisor socket; its hello names a partition and
 * proves it with that partition's token (CreatePartition issues one per child; the root's token is
 * made by `rotateRootToken`, which the supervisor calls before it starts each root process and
 * hands over a pipe) or, for the root partition only, with a one-time ticket that a root session
 * asked for (`issueTicket`: valid once, for 30 s; the root gives one to each VMWP instead of its
 * token). Rotating the root token refuses the old token from then on; open sessions stay. A
 * session is tied to the pid its hello names: `expireSessions` (the server runs it when that
 * process ends) drops sessions whose process is gone. A dropped session's ports and intercepts
 * stay; what was meant for it is dropped (the root re-attaches).
 *
 * What this protects against: a local process without a token or ticket cannot open a session,
 * and cannot reuse a session after its owner died for longer than the expiry check takes (at once
 * with a pidfd watch, about a second where pids are polled). What it does not: a process that
 * lies about its pid in hello (naming a long-lived process) keeps its session until that process
 * exits; a process of the same user can still read a token from another hvlab process's memory
 * (ptrace), as root could on any host.
 *
 * Guest-created state is capped (see partition.ts for the numbers): queued SynIC messages,
 * ports, connections, GPADL windows, intercepts, partitions and sessions.
 *
 * Faults (ARCHITECTURE §9) it enforces, each undone completely by setting it back to 0 and gone
 * with its partition: per child partition, through SetPartitionProperty (PartitionProperty's
 * Fault* codes, see hypercall.ts) — an interrupt delay (what this thread would pend on a VP's APIC
 * goes to the scheduler thread, which pends it that late; no fast path of the hypercall thread is
 * handed out for a delayed partition; without a scheduler the interrupt notification is sent
 * late), stalled VPs, and a clock offset and skew (the VP region's clock words, which every reader
 * of reference time uses); and per host, through the root's `setLps` control op, fewer logical
 * processors for a while, restored by a timer held here, so that it ends even if the root dies.
 * Saved VP state holds the true reference time and true timer expirations: a VM saved or moved
 * during a fault does not carry it along.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import {
  HvCall, HvStatus, PartitionProperty, PartitionState, ROOT_PARTITION_ID, ROOT_PRIVILEGES, PARTITION_ID_SELF,
  MAX_VPS_PER_PARTITION, MAX_MESSAGE_PAYLOAD, MAX_GPADL_PAGES, MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, SINT_COUNT, EVENT_FLAGS_PER_SINT,
  InterceptType, PortType, hasPrivilege, synicPageGpa, EVENT_FLAG_BYTES_PER_SINT, isVpRegisterName, hvCallName, partitionPropertyName, hvStatusName, isPlainObject,
  VpRegionHeader, VpPage, VirtualApicView, VP_REGION_MAGIC, vpAccounting, vpCpuPercent, takeSuspensionNumber, STIMER_COUNT, HvMessageType, TIMER_EXPIRED_PAYLOAD_BYTES,
  vpRegionBytes, vpRegionName, memoryRegionName, workerRegionNames, vpPageOffset, vpRunStateName, sintVector, sintMasked, SINT_AUTO_EOI, InterceptAccess, decodeSavedVpState,
  decodeIoInterceptRecord, VpRegisterNames, pendInterrupt, checkPartitionPropertyValue, decodeHvCtlArgs, ReferenceClockView, referenceTimeAt, decodeStimerConfig, suspensionTaken,
  type PrivilegeName, type HvServerMsg, type VpRegisterName, type SavedVpState, type SavedVpStateV2, type SavedIntercept, type HvCtlOp, type ReferenceClockWords,
} from '@hvlab/protocol';
import { createRegion, unlinkRegion, memoryMode as shmMode } from '@hvlab/shm';
import {
  Partition, VirtualProcessor, type PartitionFaults, GPA_READ, GPA_WRITE, GPA_EXECUTE, MAX_PORTS_PER_PARTITION, MAX_CONNECTIONS_PER_PARTITION,
  MAX_GPADLS_PER_PARTITION, MAX_GPADL_PAGES_PER_PARTITION, MAX_INTERCEPTS_PER_PARTITION, type Port, type PendingIntercept,
} from './partition.js';
import { SynIc } from './synic.js';
import type { ToScheduler, FromScheduler } from './sched-thread.js';

/** How long a root ticket stays valid, and how many may be outstanding at once. */
export const ROOT_TICKET_TTL_MS = 30_000;
export const MAX_OUTSTANDING_TICKETS = 256;
/** Sessions one child partition may hold (its guest process needs one or a few). */
export const MAX_SESSIONS_PER_CHILD = 64;
/** Root-partition sessions: the root, one per VMWP, tools. */
export const MAX_ROOT_SESSIONS = 1024;
/** Partitions the hypervisor holds, the root included. */
export const MAX_PARTITIONS = 1024;
const CONTROL_OPS: readonly HvCtlOp[] = ['stats', 'ticket', 'shutdown', 'setLps'];
/** Interrupt notifications one partition may have held back by its interrupt delay (private memory); past this they go at once. */
export const MAX_DELAYED_NOTES = 4096;
/** While someone asks about CPU %, VP run time is sampled this often, so each answer covers about the last second. */
export const CPU_SAMPLE_MS = 1000;
/** ...for this long after the last question; an idle host is not woken for it otherwise. */
export const CPU_WATCH_MS = 30_000;

/** The main thread's handle on the scheduler thread (absent in socket-free unit tests). */
export interface SchedulerLink {
  lps: number;
  /** The host's scheduler region name (mapped by every partition process). */
  regionName: string;
  post(m: ToScheduler): void;
  /** Rings the doorbell: the scheduler re-reads every VP page. */
  ring(): void;
}

export interface VpStats {
  index: number;
  state: string;
  runMs: number;
  readyMs: number;
  waitMs: number;
  dispatches: number;
  cpuPercent: number;
}

export interface Session {
  id: string;
  partitionId: number;
  role: string;
  vm: string | null;
  pid: number;
  /** How the hello proved the partition. */
  via: 'token' | 'ticket';
}

export interface HypercallOutcome {
  status: number;
  reps: number;
  output: unknown;
  /**
   * GetVpState with `afterSuspension` made with `mayWait`, before the scheduler has taken that
   * suspension: not answered yet (status and output mean nothing). The server waits for it (at
   * most SUSPENSION_WAIT_MS) and makes the call again without `mayWait`, which answers: refused
   * when it is still not taken. A caller that does not pass `mayWait` never gets this.
   */
  wait?: { vpRegion: SharedArrayBuffer; vpCount: number; seq: number };
}

/** How long a GetVpState with `afterSuspension` waits for the suspension to be taken (ms). */
export const SUSPENSION_WAIT_MS = 5000;

export interface HvLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
  error?: (o: object, m?: string) => void;
}

export interface HypervisorOptions {
  hostId: string;
  /** The root partition's token. Without one no root hello is accepted until `rotateRootToken()`. */
  rootToken?: string;
  memoryMode?: 'shared' | 'private';
  notify: (sessionId: string, msg: HvServerMsg) => void;
  log?: HvLog;
  /** With a scheduler, VPs of shared-memory partitions are dispatched over its LPs and take interrupts through their virtual APIC. */
  scheduler?: SchedulerLink;
  /** Clock in ms for ticket expiry and log rate limits (Date.now by default; tests move it). */
  now?: () => number;
  /** A session ended (its process died, or its partition was deleted). */
  onSessionClosed?: (sessionId: string) => void;
  /**
   * Something a fast-path route may depend on may have changed (ports, connections, SynIC
   * registers, partitions, sessions): every route handed out before is stale (see signalRoute).
   */
  onRoutesChanged?: () => void;
  /** Calls through hypercall pages: served by the hypercall thread, and forwarded to this object. */
  pageStats?: () => { fastCalls: number; forwarded: number; lineRaises?: number };
}

/**
 * Where a SignalEvent on one connection lands, precomputed so a thread without the hypervisor's
 * tables can carry it out (the hypercall thread, see hc-thread.ts). Valid until the next
 * `onRoutesChanged`.
 */
export type SignalRoute =
  | { kind: 'root'; ownerSession: string; portId: number; flagCount: number; sender: number }
  | {
      kind: 'child'; memory: SharedArrayBuffer; flagsOffset: number; flagCount: number; masked: boolean; vector: number; autoEoi: boolean;
      vpRegion: SharedArrayBuffer; vpOffset: number; partitionId: number; vpIndex: number;
      /** The SINT the port raises (for the guest's SINT line, VpPage.sintLineOn). */
      sint: number;
      /**
       * The sessions of the target partition: the one that has a hypercall page (HcService keeps
       * it when it is the only one) is the guest kernel's, whose loop a SINT raised on its line wakes.
       */
      targetSessions: string[];
    };

/** Calls after which every route still holds (they change no port, connection, SynIC register or partition). */
const ROUTE_NEUTRAL_CALLS: readonly number[] = [
  HvCall.SignalEvent, HvCall.PostMessage, HvCall.GetVpRegisters, HvCall.GetPartitionProperty, HvCall.GetPartitionId, HvCall.GetVpState, HvCall.AssertVirtualInterrupt,
];
/** Registers whose writes change no route. */
const ROUTE_NEUTRAL_REGISTERS = new Set<string>(['Eom', 'Rip', 'Rax', 'InterceptSuspend', 'Tpr']);

/** A hello as the hypervisor reads it (checked by `decodeHvClientMsg`; in-process callers pass the same). */
export interface HelloInput {
  partitionId: number;
  token?: string;
  ticket?: string;
  role: string;
  vm: string | null;
  pid: number;
}

/** Thrown inside a handler to answer with a status. */
class Fail extends Error {
  constructor(readonly status: number, why: string) {
    super(why);
  }
}

/**
 * At most `burst` log lines per window; the rest are counted and the count rides on the next line
 * let through. Peers decide how often the hypervisor has something to complain about, so its log
 * must not grow at their pace.
 */
export class LogLimiter {
  private windowStart = -Infinity;
  private lines = 0;
  private dropped = 0;
  constructor(private readonly now: () => number, private readonly burst = 50, private readonly windowMs = 10_000) {}
  /** Null: drop this line. Else the number of lines dropped since the last one let through. */
  take(): number | null {
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      this.windowStart = t;
      this.lines = 0;
    }
    if (this.lines >= this.burst) {
      this.dropped++;
      return null;
    }
    this.lines++;
    const d = this.dropped;
    this.dropped = 0;
    return d;
  }
}

type Input = Record<string, unknown>;

/** Shape: an integer field (INVALID_HYPERCALL_INPUT when missing or not an integer). */
function int(input: Input, name: string): number {
  const v = input[name];
  if (v === undefined || v === null) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `missing field ${name}`);
  const n = typeof v === 'bigint' ? (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : NaN) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `field ${name} is not an integer`);
  return n;
}

/** Shape: an optional integer field. */
function optInt(input: Input, name: string): number | undefined {
  return input[name] === undefined || input[name] === null ? undefined : int(input, name);
}

/** Values: INVALID_PARAMETER (or `status`) unless min <= n <= max. */
function range(name: string, n: number, min: number, max: number, status: number = HvStatus.INVALID_PARAMETER): number {
  if (n < min || n > max) throw new Fail(status, `field ${name}=${n} is out of range ${min}..${max}`);
  return n;
}

function bytes(input: Input, name: string): Uint8Array {
  const v = input[name];
  if (v instanceof Uint8Array) return v;
  throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `field ${name} is not bytes`);
}

/** Shape: a privilege mask as a 64-bit integer, a safe integer or a decimal/hex string. */
function privilegeMaskOf(raw: unknown): bigint {
  if (typeof raw === 'bigint') return raw;
  if (typeof raw === 'number' && Number.isSafeInteger(raw)) return BigInt(raw);
  if (typeof raw === 'string' && /^(-?\d{1,40}|0x[0-9a-f]{1,32})$/i.test(raw)) return BigInt(raw);
  throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, raw === undefined || raw === null ? 'missing field value' : 'privilege mask is not an integer');
}

/** Compares a presented secret with the expected one in constant time. */
function secretEquals(given: string, expected: string | null): boolean {
  if (expected === null) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** A guest-writable f64 as a register value: an integer 0..2^53-1 (NaN and the like read as 0). */
function clampU53(x: number): number {
  return Number.isFinite(x) ? Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, Math.trunc(x))) : 0;
}
/** A guest-writable f64 as a time or count: finite and >= 0, else 0. */
function finiteOrZero(x: number): number {
  return Number.isFinite(x) && x >= 0 ? x : 0;
}

const PARENT_ONLY_CALLS: readonly number[] = [
  HvCall.InitializePartition, HvCall.FinalizePartition, HvCall.DeletePartition, HvCall.SetPartitionProperty,
  HvCall.MapGpaPages, HvCall.UnmapGpaPages, HvCall.InstallIntercept, HvCall.CreateVp, HvCall.DeleteVp,
  HvCall.AssertVirtualInterrupt, HvCall.GetVpState, HvCall.SetVpState,
];

export class Hypervisor {
  readonly hostId: string;
  readonly memoryMode: 'shared' | 'private';
  private readonly partitions = new Map<number, Partition>();
  private readonly sessions = new Map<string, Session>();
  /** Outstanding root tickets: ticket -> expiry (ms, opts.now clock). */
  private readonly tickets = new Map<string, number>();
  /** (connection partition id, connection id) -> port. */
  private readonly connections = new Map<string, { portPartitionId: number; portId: number }>();
  private nextPartitionId = ROOT_PARTITION_ID + 1;
  private readonly now: () => number;
  /** Separate budgets, so refused children cannot crowd the root's failures out of the log. */
  private readonly logLimits: Record<'child' | 'root' | 'session' | 'defect', LogLimiter>;
  readonly stats = { hypercalls: 0, failed: 0 };
  /** An LP shrink in force (setLps): how many LPs, until when (opts.now ms), and the timer that ends it. */
  private lpShrink: { lps: number; untilMs: number; timer: ReturnType<typeof setTimeout>; fault: string | null } | null = null;

  constructor(private readonly opts: HypervisorOptions) {
    this.hostId = opts.hostId;
    this.memoryMode = opts.memoryMode ?? shmMode();
    this.now = opts.now ?? Date.now;
    this.logLimits = { child: new LogLimiter(this.now), root: new LogLimiter(this.now), session: new LogLimiter(this.now), defect: new LogLimiter(this.now) };
    const root = new Partition(ROOT_PARTITION_ID, 0, ROOT_PRIVILEGES, 0, 'root', opts.rootToken ?? null);
    root.state = PartitionState.Initialized;
    this.partitions.set(ROOT_PARTITION_ID, root);
  }

  /** Logs through a rate limit (see LogLimiter). */
  private logLimited(kind: keyof Hypervisor['logLimits'], level: 'info' | 'warn' | 'error', o: object, msg: string): void {
    const log = this.opts.log;
    if (!log) return;
    const dropped = this.logLimits[kind].take();
    if (dropped === null) return;
    const line = dropped > 0 ? { ...o, droppedSinceLast: dropped } : o;
    if (level === 'error') (log.error ?? log.warn)(line, msg);
    else log[level](line, msg);
  }

  // ---- sessions ---------------------------------------------------------------------------

  /**
   * Makes a new root token (32 random bytes, hex) and returns it. Hellos with the previous token
   * are refused from now on; sessions already open stay open.
   */
  rotateRootToken(): string {
    const token = randomBytes(32).toString('hex');
    this.partitions.get(ROOT_PARTITION_ID)!.token = token;
    this.opts.log?.info({}, 'root token rotated');
    return token;
  }

  /** A one-time ticket for another root-partition session, for a root session only. */
  issueTicket(sessionId: string): { ticket: string } | { error: string } {
    const s = this.sessions.get(sessionId);
    if (!s || s.partitionId !== ROOT_PARTITION_ID) return { error: 'only a root-partition session may ask for a ticket' };
    this.pruneTickets();
    if (this.tickets.size >= MAX_OUTSTANDING_TICKETS) return { error: `${MAX_OUTSTANDING_TICKETS} tickets are outstanding; redeem some or wait ${ROOT_TICKET_TTL_MS / 1000} s` };
    const ticket = randomBytes(32).toString('hex');
    this.tickets.set(ticket, this.now() + ROOT_TICKET_TTL_MS);
    return { ticket };
  }

  private pruneTickets(): void {
    const t = this.now();
    for (const [k, exp] of this.tickets) if (exp <= t) this.tickets.delete(k);
  }

  /** Consumes a ticket: true when it was outstanding and unexpired. */
  private redeemTicket(ticket: string): boolean {
    this.pruneTickets();
    for (const k of this.tickets.keys()) {
      if (secretEquals(ticket, k)) {
        this.tickets.delete(k);
        return true;
      }
    }
    return false;
  }

  hello(sessionId: string, m: HelloInput): HvServerMsg {
    const reject = (reason: string): HvServerMsg => {
      this.logLimited('session', 'info', { partition: m.partitionId, role: m.role, clientPid: m.pid, why: reason }, 'session refused');
      return { k: 'reject', reason };
    };
    const open = this.sessions.get(sessionId);
    if (open) return reject(`this connection already has a session for partition ${open.partitionId}`);
    // decodeHvClientMsg checked these; in-process callers get the same checks.
    if (typeof m.partitionId !== 'number' || !Number.isSafeInteger(m.partitionId) || typeof m.pid !== 'number' || !Number.isSafeInteger(m.pid) || m.pid < 1 || typeof m.role !== 'string') {
      return reject('a hello needs an integer partitionId, a pid of 1 or more and a role');
    }
    const p = this.partitions.get(m.partitionId);
    let via: Session['via'];
    if (typeof m.ticket === 'string' && m.token === undefined) {
      if (m.partitionId !== ROOT_PARTITION_ID) return reject('a ticket opens only a root-partition session');
      if (!this.redeemTicket(m.ticket)) return reject('that ticket is unknown, already used or expired');
      via = 'ticket';
    } else if (typeof m.token === 'string' && m.ticket === undefined) {
      if (!p || p.state === PartitionState.Deleted || !secretEquals(m.token, p.token)) return reject(`no partition ${m.partitionId} with that token`);
      via = 'token';
    } else {
      return reject('a hello carries exactly one of token and ticket');
    }
    if (!p) return reject(`no partition ${m.partitionId}`);
    if (p.id !== ROOT_PARTITION_ID && p.state !== PartitionState.Initialized) return reject(`partition ${p.id} is ${p.state}, not Initialized`);
    const held = this.sessionCount(p.id);
    const cap = p.id === ROOT_PARTITION_ID ? MAX_ROOT_SESSIONS : MAX_SESSIONS_PER_CHILD;
    if (held >= cap) return reject(`partition ${p.id} already holds ${held} sessions, its limit`);
    const vm = typeof m.vm === 'string' ? m.vm : null;
    this.sessions.set(sessionId, { id: sessionId, partitionId: p.id, role: m.role, vm, pid: m.pid, via });
    this.opts.log?.info({ partition: p.id, role: m.role, vm, clientPid: m.pid, via }, 'session opened');
    return {
      k: 'welcome', partitionId: p.id, hostId: this.hostId, memoryMode: this.memoryMode, memoryRegion: p.memoryRegion, memoryBytes: p.memoryBytes,
      vpRegion: p.vpRegionName, schedRegion: p.vpRegionName ? (this.opts.scheduler?.regionName ?? null) : null,
    };
  }

  private sessionCount(partitionId: number): number {
    let n = 0;
    for (const s of this.sessions.values()) if (s.partitionId === partitionId) n++;
    return n;
  }

  session(sessionId: string): Session | undefined {
    return this.sessions.get(sessionId);
  }

  /**
   * Drops every session whose process `alive` says is gone, and returns them. Its ports and
   * intercepts stay (their owner may come back as a new session); what is meant for a dropped
   * session is sent nowhere.
   */
  expireSessions(alive: (pid: number) => boolean): Session[] {
    const gone: Session[] = [];
    // A process holds several sessions (a VMWP one per connection): each pid is asked once.
    const known = new Map<number, boolean>();
    for (const s of [...this.sessions.values()]) {
      let live = known.get(s.pid);
      if (live === undefined) {
        try {
          live = alive(s.pid);
        } catch {
          live = true; // cannot tell: keep it, the next sweep asks again
        }
        known.set(s.pid, live);
      }
      if (live) continue;
      this.sessions.delete(s.id);
      this.opts.onSessionClosed?.(s.id);
      gone.push(s);
      this.opts.log?.info({ partition: s.partitionId, role: s.role, vm: s.vm, clientPid: s.pid }, 'session dropped: its process is gone');
    }
    if (gone.length > 0) this.opts.onRoutesChanged?.();
    return gone;
  }

  /**
   * A control request of a session: `stats`, `ticket` and `setLps` (with `args`); `shutdown` is
   * acknowledged here and carried out by the caller. Only root-partition sessions may control the
   * hypervisor. Never throws: a bad op or bad arguments get `{error}`.
   */
  control(sessionId: string, op: HvCtlOp, args?: unknown): unknown {
    const s = this.sessions.get(sessionId);
    if (!s || s.partitionId !== ROOT_PARTITION_ID) return { error: 'only the root may control the hypervisor' };
    if (!(CONTROL_OPS as readonly unknown[]).includes(op)) return { error: 'unknown control op' };
    // decodeHvClientMsg checked them; in-process callers get the same checks.
    const a = decodeHvCtlArgs(op, args);
    if (typeof a === 'string') return { error: a };
    switch (op) {
      case 'stats':
        return {
          stats: this.stats, partitions: this.listPartitions(), memoryMode: this.memoryMode, lps: this.lps, lpsBoot: this.lps, lpsCurrent: this.lpsCurrent,
          lpShrink: this.lpShrinkInfo(), hypercallPages: this.opts.pageStats?.() ?? null,
        };
      case 'ticket':
        return this.issueTicket(sessionId);
      case 'shutdown':
        return { ok: true };
      case 'setLps':
        return this.setLps(typeof a?.lps === 'number' ? a.lps : 0, typeof a?.forMs === 'number' ? a.forMs : 0, typeof a?.fault === 'string' ? a.fault : null);
      default:
        return { error: 'unknown control op' };
    }
  }

  /** The host's logical processors as it booted (null without a scheduler). */
  get lps(): number | null {
    return this.opts.scheduler?.lps ?? null;
  }

  /** The logical processors the scheduler grants now (fewer while an LP shrink lasts). */
  get lpsCurrent(): number | null {
    return this.lpShrink?.lps ?? this.lps;
  }

  /** The shrink in force, with the fault that asked for it: a root that restarts learns it from here. */
  private lpShrinkInfo(): { lps: number; remainingMs: number; fault: string | null } | null {
    return this.lpShrink ? { lps: this.lpShrink.lps, remainingMs: Math.max(0, this.lpShrink.untilMs - this.now()), fault: this.lpShrink.fault } : null;
  }

  /**
   * The LP-shrink fault: the scheduler grants only the first `lps` LPs (VPs on the others are
   * preempted and run on these) for `forMs`, then all of them again, by a timer held here. `lps`
   * equal to the boot count, or `forMs` 0, restores them at once; a new shrink replaces the one in
   * force. `fault` (the fault's id) is held with it and said by `stats`.
   */
  private setLps(lps: number, forMs: number, fault: string | null = null): unknown {
    const boot = this.lps;
    const sched = this.opts.scheduler;
    if (boot === null || !sched) return { error: 'this hypervisor schedules no VPs (private memory), so it has no logical processors to take away' };
    if (!Number.isInteger(lps) || lps < 1 || lps > boot) return { error: `lps must be from 1 to the host's ${boot} logical processors, not ${lps}` };
    const was = this.lpShrink;
    if (was) clearTimeout(was.timer);
    this.lpShrink = null;
    if (lps === boot || forMs <= 0) {
      sched.post({ t: 'lps', lps: boot });
      sched.ring();
      if (was) this.opts.log?.info({ lps: boot }, 'logical processors restored (setLps)');
      return { ok: true, lpsBoot: boot, lpsCurrent: boot, lpShrink: null };
    }
    const timer = setTimeout(() => this.endLpShrink(timer), forMs);
    timer.unref?.();
    this.lpShrink = { lps, untilMs: this.now() + forMs, timer, fault };
    sched.post({ t: 'lps', lps });
    sched.ring();
    this.opts.log?.info({ lps, lpsBoot: boot, forMs, fault }, 'logical processors taken away (setLps)');
    return { ok: true, lpsBoot: boot, lpsCurrent: lps, lpShrink: this.lpShrinkInfo() };
  }

  /** The LP shrink's time is up: every LP is granted again. */
  private endLpShrink(timer: ReturnType<typeof setTimeout>): void {
    if (this.lpShrink?.timer !== timer) return;
    this.lpShrink = null;
    const sched = this.opts.scheduler;
    if (!sched) return;
    sched.post({ t: 'lps', lps: sched.lps });
    sched.ring();
    this.opts.log?.info({ lps: sched.lps }, 'logical processors restored (the LP shrink ended)');
  }

  listPartitions(): Array<{
    id: number; name: string; state: string; vps: number; memoryBytes: number; suspended: boolean; sessions: number; scheduled: boolean; cpu: { percent: number; vps: VpStats[] };
    faults: Omit<PartitionFaults, 'clockSkewSinceNs'>;
  }> {
    // Only with something to sample: a root's first look at a new host (its sweep of orphaned
    // partitions) set a 30 s watch going that woke this thread every second for nothing.
    if ([...this.partitions.values()].some((p) => p.vpI32)) this.watchCpu();
    return [...this.partitions.values()].map((p) => {
      const st = this.vpStats(p);
      const f = p.faults;
      return {
        id: p.id, name: p.name, state: p.state, vps: p.vps.size, memoryBytes: p.memoryBytes, suspended: p.suspended,
        faults: { interruptDelayUs: f.interruptDelayUs, stalledVps: f.stalledVps, clockOffsetUs: f.clockOffsetUs, clockSkewPpm: f.clockSkewPpm },
        sessions: this.sessionCount(p.id),
        scheduled: p.vpRegion !== null, cpu: { percent: st.cpuPercent, vps: st.vps },
      };
    });
  }

  partition(id: number): Partition | undefined {
    return this.partitions.get(id);
  }

  private notifyPartition(p: Partition, msg: HvServerMsg): void {
    for (const s of this.sessions.values()) if (s.partitionId === p.id) this.opts.notify(s.id, msg);
  }

  // ---- hypercalls -------------------------------------------------------------------------

  /** Runs one hypercall of a session. Never throws: every outcome is a status. */
  hypercall(sessionId: string, code: number, input: Input, control: { repCount?: number; repStart?: number; mayWait?: boolean; waited?: boolean } = {}): HypercallOutcome {
    this.stats.hypercalls++;
    const s = this.sessions.get(sessionId);
    const caller = s ? this.partitions.get(s.partitionId) : undefined;
    const isRoot = caller?.id === ROOT_PARTITION_ID;
    let out: HypercallOutcome;
    let why: string | undefined;
    if (!s || !caller || caller.state === PartitionState.Deleted) {
      out = { status: HvStatus.ACCESS_DENIED, reps: 0, output: null };
      why = 'no session';
    } else {
      try {
        if (typeof code !== 'number' || !Number.isSafeInteger(code)) throw new Fail(HvStatus.INVALID_HYPERCALL_CODE, 'the call code is not an integer');
        this.gate(caller, code);
        if (!isPlainObject(input)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'the input is not a map');
        out = this.dispatch(caller, s, code, input, control ?? {});
      } catch (e) {
        if (e instanceof Fail) {
          why = e.message;
          // Reasons help the root debug; a child learns only the status (leak nothing).
          out = { status: e.status, reps: 0, output: isRoot ? { reason: e.message } : null };
        } else {
          // A defect: a handler met a value it did not expect. The call fails; the host goes on.
          why = `internal error: ${e instanceof Error ? e.message : 'non-error thrown'}`;
          this.logLimited('defect', 'error', { partition: caller.id, call: hvCallName(code), err: e }, 'hypercall handler threw');
          out = { status: HvStatus.OPERATION_DENIED, reps: 0, output: isRoot ? { reason: why } : null };
        }
      }
    }
    if (!this.routeNeutral(code, input)) this.opts.onRoutesChanged?.();
    if (out.status !== HvStatus.SUCCESS) {
      this.stats.failed++;
      const name = typeof code === 'number' && Number.isSafeInteger(code) ? hvCallName(code) : '?';
      this.logLimited(isRoot ? 'root' : 'child', 'info', { partition: s?.partitionId, call: name, status: hvStatusName(out.status), why }, isRoot ? 'hypercall failed' : 'child hypercall refused');
    }
    return out;
  }

  private routeNeutral(code: number, input: Input): boolean {
    if (ROUTE_NEUTRAL_CALLS.includes(code)) return true;
    if (code !== HvCall.SetVpRegisters || !isPlainObject(input) || !isPlainObject(input.values)) return false;
    for (const n of Object.keys(input.values)) if (!ROUTE_NEUTRAL_REGISTERS.has(n) && !n.startsWith('Stimer')) return false;
    return true;
  }

  /**
   * Whether session `sessionId` may suspend and resume partition `partitionId` through the
   * scheduler thread (hcloop.ts, fastSuspend): the session is the root's (whose privileges no call
   * can take away), its SetPartitionProperty Suspend would pass every check here (the target
   * Initialized), and the target is scheduled with a VP region (its suspension is the scheduler's,
   * and no note goes to its process). Nothing revokes the route: a partition finalized or deleted
   * leaves the scheduler, whose thread then sends the call here, where it is refused as before.
   */
  suspendRoute(sessionId: string, partitionId: number): boolean {
    // The root's sessions only: a child's privileges can be taken away, and this route has no epoch.
    if (this.sessions.get(sessionId)?.partitionId !== ROOT_PARTITION_ID) return false;
    const p = this.routeTarget(sessionId, HvCall.SetPartitionProperty, partitionId);
    return p !== null && p.vpRegion !== null && p.vpI32 !== null && this.opts.scheduler !== undefined;
  }

  /**
   * The partition a route of session `sessionId`'s call `code` on `partitionId` may act on: the
   * call's privilege held, the target the caller's child (or the caller the root), the target
   * Initialized, checked as the call would; null otherwise.
   */
  private routeTarget(sessionId: string, code: number, partitionId: number): Partition | null {
    const s = this.sessions.get(sessionId);
    const caller = s ? this.partitions.get(s.partitionId) : undefined;
    if (!s || !caller || caller.state === PartitionState.Deleted) return null;
    try {
      this.gate(caller, code);
      const p = this.child(caller, partitionId);
      this.inState(p, PartitionState.Initialized);
      return p;
    } catch {
      return null;
    }
  }

  /**
   * The scheduler thread suspended (`on`) or resumed partition `id` for a page's call (fastSuspend):
   * this object's view follows, as if it had served the call (`seq`: the suspension's number, 0 on
   * a resume). The thread's message comes before any later call of that session reaches here. A
   * partition finalized meanwhile (its scheduler entry goes with the next turn of the thread, so a
   * Suspend in the same turn may still be served there) keeps the state it has here.
   */
  suspendedByThread(id: number, on: boolean, seq: number): void {
    const p = this.partitions.get(id);
    if (!p || p.state !== PartitionState.Initialized) return;
    this.stats.hypercalls++;
    // A suspension this thread numbered after the thread's (two callers at once) stays the current one.
    if (on && p.suspended && p.suspendSeq !== 0 && ((p.suspendSeq - seq) | 0) > 0) return;
    p.suspended = on;
    p.suspendSeq = on ? seq : 0;
  }

  /**
   * The route of SignalEvent on `connectionId` for session `sessionId`, or null when it cannot be
   * carried out without this object (no such session or connection, a port that is not an event
   * port, a target without shared memory, an enabled SIEF page or a virtual APIC, a root port
   * whose owning session is gone). Checks as the call would; flags are checked against flagCount
   * by the route's user.
   */
  signalRoute(sessionId: string, connectionId: number): SignalRoute | null {
    const s = this.sessions.get(sessionId);
    const caller = s ? this.partitions.get(s.partitionId) : undefined;
    if (!s || !caller || caller.state === PartitionState.Deleted || !hasPrivilege(caller.privileges, 'SignalEvents')) return null;
    const c = this.connections.get(`${caller.id}:${connectionId}`);
    const target = c ? this.partitions.get(c.portPartitionId) : undefined;
    const port = target?.ports.get(c!.portId);
    if (!c || !target || !port || port.type !== PortType.Event || target.state === PartitionState.Deleted) return null;
    if (target.id === ROOT_PARTITION_ID) {
      if (!port.ownerSession || !this.sessions.has(port.ownerSession)) return null;
      return { kind: 'root', ownerSession: port.ownerSession, portId: port.portId, flagCount: port.flagCount, sender: caller.id };
    }
    const vp = target.vps.get(port.vpIndex);
    // A delayed partition's interrupts go through this object (assertVector), never a fast path.
    if (!vp || !target.memory || !target.vpRegion || !this.opts.scheduler || !vp.synic.enabled || target.faults.interruptDelayUs > 0) return null;
    const page = synicPageGpa(vp.synic.siefp);
    if (page === null || page + 4096 > target.memoryBytes) return null;
    const reg = vp.synic.sint[port.sint];
    return {
      kind: 'child', memory: target.memory, flagsOffset: page + port.sint * EVENT_FLAG_BYTES_PER_SINT, flagCount: port.flagCount,
      masked: sintMasked(reg), vector: sintVector(reg), autoEoi: (reg & SINT_AUTO_EOI) !== 0, vpRegion: target.vpRegion, vpOffset: vpPageOffset(vp.index),
      partitionId: target.id, vpIndex: vp.index, sint: port.sint,
      targetSessions: [...this.sessions.values()].filter((x) => x.partitionId === target.id).map((x) => x.id),
    };
  }

  /**
   * Where AssertVirtualInterrupt from session `sessionId` on VP `vpIndex` of partition
   * `partitionId` lands (that VP's virtual APIC), or null when the call cannot be carried out
   * without this object. Checks as the call would; the vector is checked by the route's user.
   */
  interruptRoute(sessionId: string, partitionId: number, vpIndex: number): { vpRegion: SharedArrayBuffer; vpOffset: number } | null {
    const p = this.routeTarget(sessionId, HvCall.AssertVirtualInterrupt, partitionId);
    const vp = p?.vps.get(vpIndex);
    if (!p || !vp || !p.vpRegion || !this.opts.scheduler || p.faults.interruptDelayUs > 0) return null;
    return { vpRegion: p.vpRegion, vpOffset: vpPageOffset(vp.index) };
  }

  /** Privilege, checked before anything of the input is read. Unknown codes get INVALID_HYPERCALL_CODE. */
  private gate(caller: Partition, code: number): void {
    if (PARENT_ONLY_CALLS.includes(code)) return this.need(caller, 'CreatePartitions', 'a parent-only call');
    switch (code) {
      case HvCall.CreatePartition: return this.need(caller, 'CreatePartitions');
      case HvCall.MapGpadl:
      case HvCall.UnmapGpadl:
        this.need(caller, 'AccessMemoryPool');
        return this.need(caller, 'CreatePartitions', 'a parent-only call');
      case HvCall.GetPartitionId: return this.need(caller, 'AccessPartitionId');
      case HvCall.GetPartitionProperty: return this.needSelfOrParent(caller, 'AccessPartitionId');
      case HvCall.GetVpRegisters:
      case HvCall.SetVpRegisters: return this.needSelfOrParent(caller, 'AccessVpRegisters');
      case HvCall.PostMessage: return this.need(caller, 'PostMessages');
      case HvCall.SignalEvent: return this.need(caller, 'SignalEvents');
      case HvCall.CreatePort: return this.need(caller, 'CreatePort');
      case HvCall.ConnectPort: return this.need(caller, 'ConnectPort');
      default: throw new Fail(HvStatus.INVALID_HYPERCALL_CODE, `unknown call code 0x${code.toString(16)}`);
    }
  }

  private need(caller: Partition, p: PrivilegeName, what?: string): void {
    if (!hasPrivilege(caller.privileges, p)) throw new Fail(HvStatus.ACCESS_DENIED, `partition ${caller.id} lacks ${p}${what ? ` (${what})` : ''}`);
  }

  /** Calls on oneself (with a privilege) or on a child (as its parent). */
  private needSelfOrParent(caller: Partition, selfPrivilege: PrivilegeName): void {
    if (!hasPrivilege(caller.privileges, selfPrivilege) && !hasPrivilege(caller.privileges, 'CreatePartitions')) {
      throw new Fail(HvStatus.ACCESS_DENIED, `partition ${caller.id} lacks ${selfPrivilege} and is no parent`);
    }
  }

  /** Resolves a target the caller must be the parent of (the root is everyone's ancestor). */
  private child(caller: Partition, requested: number): Partition {
    const id = requested === PARTITION_ID_SELF ? caller.id : requested;
    const p = this.partitions.get(id);
    const isRoot = caller.id === ROOT_PARTITION_ID;
    if (!p || p.state === PartitionState.Deleted) {
      throw new Fail(isRoot ? HvStatus.INVALID_PARTITION_ID : HvStatus.ACCESS_DENIED, `no partition ${id}`);
    }
    if (!isRoot && p.parentId !== caller.id) throw new Fail(HvStatus.ACCESS_DENIED, `partition ${caller.id} is not the parent of ${id}`);
    if (p.id === ROOT_PARTITION_ID) throw new Fail(HvStatus.ACCESS_DENIED, 'the root partition cannot be managed by hypercalls');
    return p;
  }

  /** Parent, root, or the partition itself (with a privilege for self-access). */
  private selfOrChild(caller: Partition, requested: number, selfPrivilege: PrivilegeName): Partition {
    const id = requested === PARTITION_ID_SELF ? caller.id : requested;
    if (id === caller.id) {
      this.need(caller, selfPrivilege);
      return caller;
    }
    return this.child(caller, id);
  }

  /** The caller itself (CreatePort/ConnectPort on one's own partition) or a child. */
  private selfOrChildPlain(caller: Partition, requested: number): Partition {
    return requested === caller.id || requested === PARTITION_ID_SELF ? caller : this.child(caller, requested);
  }

  private inState(p: Partition, ...states: string[]): void {
    if (!states.includes(p.state)) throw new Fail(HvStatus.INVALID_PARTITION_STATE, `partition ${p.id} is ${p.state}`);
  }

  private vp(p: Partition, idx: number): VirtualProcessor {
    const vp = p.vps.get(idx);
    if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `partition ${p.id} has no VP ${idx}`);
    return vp;
  }

  /** The call itself; `gate` has checked the privilege. Each case reads shape, target, state, values in that order. */
  private dispatch(caller: Partition, s: Session, code: number, input: Input, control: { repCount?: number; mayWait?: boolean; waited?: boolean }): HypercallOutcome {
    const ok = (output: unknown = null, reps = 0): HypercallOutcome => ({ status: HvStatus.SUCCESS, reps, output });
    switch (code) {
      case HvCall.CreatePartition: {
        const memoryBytes = int(input, 'memoryBytes');
        const flags = optInt(input, 'flags') ?? 0;
        const rawName = input.name;
        if (rawName !== undefined && rawName !== null && typeof rawName !== 'string') throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'field name is not a string');
        range('memoryBytes', memoryBytes, MIN_MEMORY_BYTES, MAX_MEMORY_BYTES);
        if (memoryBytes % 4096 !== 0) throw new Fail(HvStatus.INVALID_ALIGNMENT, `memory size ${memoryBytes} is not page-aligned`);
        range('flags', flags, 0, Number.MAX_SAFE_INTEGER);
        if (this.partitions.size >= MAX_PARTITIONS) throw new Fail(HvStatus.INSUFFICIENT_MEMORY, `the hypervisor holds ${this.partitions.size} partitions, its limit`);
        const name = typeof rawName === 'string' ? rawName.slice(0, 64) : '';
        const id = this.nextPartitionId++;
        const token = randomBytes(16).toString('hex');
        this.partitions.set(id, new Partition(id, caller.id, 0n, memoryBytes, name, token));
        this.opts.log?.info({ partition: id, parent: caller.id, memoryBytes, name }, 'partition created');
        return ok({ partitionId: id, token });
      }
      case HvCall.InitializePartition: {
        const p = this.child(caller, int(input, 'partitionId'));
        this.inState(p, PartitionState.Created);
        if (this.memoryMode === 'shared') {
          const region = memoryRegionName(this.hostId, p.id);
          try {
            p.memory = createRegion(region, p.memoryBytes);
          } catch (e) {
            throw new Fail(HvStatus.INSUFFICIENT_MEMORY, (e as Error).message);
          }
          p.memoryRegion = region;
          p.memoryView = new DataView(p.memory);
          if (this.opts.scheduler) this.createVpRegion(p);
        }
        p.gpaMap = new Uint8Array(p.pageCount);
        p.state = PartitionState.Initialized;
        return ok();
      }
      case HvCall.FinalizePartition: {
        const p = this.child(caller, int(input, 'partitionId'));
        this.inState(p, PartitionState.Initialized);
        p.state = PartitionState.Finalized;
        this.dropDelayedNotes(p);
        for (const vp of p.vps.values()) vp.synic.discard();
        p.vps.clear();
        this.toScheduler(p, { t: 'removePartition', id: p.id });
        this.notifyPartition(p, { k: 'bye', reason: 'partition finalized' });
        for (const [sid, ss] of this.sessions) {
          if (ss.partitionId !== p.id) continue;
          this.sessions.delete(sid);
          // Its hypercall page goes with it (as at DeletePartition and when its process ends).
          this.opts.onSessionClosed?.(sid);
        }
        return ok();
      }
      case HvCall.DeletePartition: {
        const p = this.child(caller, int(input, 'partitionId'));
        this.inState(p, PartitionState.Created, PartitionState.Finalized);
        this.destroy(p);
        return ok();
      }
      case HvCall.GetPartitionProperty: {
        const id = int(input, 'partitionId');
        const prop = int(input, 'property');
        const p = this.selfOrChild(caller, id, 'AccessPartitionId');
        switch (prop) {
          case PartitionProperty.PrivilegeFlags: return ok({ value: p.privileges });
          case PartitionProperty.Suspend: return ok({ value: p.suspended ? 1 : 0 });
          case PartitionProperty.CpuReserve: return ok({ value: p.cpuReserve });
          case PartitionProperty.CpuCap: return ok({ value: p.cpuCap });
          case PartitionProperty.CpuWeight: return ok({ value: p.cpuWeight });
          case PartitionProperty.FaultInterruptDelayUs: return ok({ value: p.faults.interruptDelayUs });
          case PartitionProperty.FaultStalledVps: return ok({ value: p.faults.stalledVps });
          case PartitionProperty.FaultClockOffsetUs: return ok({ value: p.faults.clockOffsetUs });
          case PartitionProperty.FaultClockSkewPpm: return ok({ value: p.faults.clockSkewPpm });
          default: throw new Fail(HvStatus.UNKNOWN_PROPERTY, `unknown property ${partitionPropertyName(prop)}`);
        }
      }
      case HvCall.SetPartitionProperty: {
        const id = int(input, 'partitionId');
        const prop = int(input, 'property');
        // The value's shape depends on the property: a 64-bit mask for privileges, else an integer
        // (signed only for the clock faults). Its shape is checked before the target, its range after.
        const mask = prop === PartitionProperty.PrivilegeFlags ? privilegeMaskOf(input.value) : null;
        const checked = mask === null ? checkPartitionPropertyValue(prop, input.value) : null;
        if (checked && !checked.ok && checked.status === HvStatus.INVALID_HYPERCALL_INPUT) throw new Fail(checked.status, checked.reason);
        const p = this.child(caller, id);
        if (mask !== null) {
          if (mask < 0n || mask > 0xffff_ffff_ffff_ffffn) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, 'privilege mask out of range');
          // A parent can grant only what it holds itself.
          if ((mask & ~caller.privileges) !== 0n) throw new Fail(HvStatus.ACCESS_DENIED, 'cannot grant privileges the caller lacks');
          p.privileges = mask;
          return ok();
        }
        const c = checked!; // every property but PrivilegeFlags has an integer value
        if (!c.ok && c.status === HvStatus.UNKNOWN_PROPERTY) throw new Fail(c.status, c.reason);
        if (prop === PartitionProperty.Suspend) this.inState(p, PartitionState.Initialized);
        if (!c.ok) throw new Fail(c.status, c.reason);
        const v = c.value;
        switch (prop) {
          case PartitionProperty.Suspend: {
            const was = p.suspended;
            p.suspended = v === 1;
            if (was !== p.suspended) {
              // A partition without a VP region runs its VPs itself and learns of its suspension from
              // this note. A scheduled one learns it from its VP region (the scheduler takes it, and the
              // region says so), so the note would only wake its process in a migration's freeze.
              if (!p.vpRegion) this.notifyPartition(p, { k: 'suspend', suspended: p.suspended });
              // A suspension's number, in the VP region for the partition process to wait on (VpRegionHeader.suspendAsked).
              let seq = 0;
              if (p.suspended && p.vpI32) seq = takeSuspensionNumber(p.vpI32);
              p.suspendSeq = seq;
              this.toScheduler(p, { t: 'suspend', id: p.id, on: p.suspended, seq });
              // The suspension's number goes back to the caller, which waits for it to be taken.
              if (seq !== 0) return ok({ seq });
            }
            return ok();
          }
          case PartitionProperty.CpuReserve:
            p.cpuReserve = v;
            this.toScheduler(p, { t: 'props', id: p.id, reserve: v / 100 });
            return ok();
          case PartitionProperty.CpuCap:
            p.cpuCap = v;
            this.toScheduler(p, { t: 'props', id: p.id, cap: v / 100 });
            return ok();
          case PartitionProperty.CpuWeight:
            p.cpuWeight = v;
            this.toScheduler(p, { t: 'props', id: p.id, weight: v });
            return ok();
          default:
            this.setFault(p, prop, v);
            return ok();
        }
      }
      case HvCall.GetPartitionId:
        return ok({ partitionId: caller.id });
      case HvCall.MapGpaPages:
      case HvCall.UnmapGpaPages: {
        const id = int(input, 'partitionId');
        const gpaPage = int(input, 'gpaPage');
        const count = int(input, 'pageCount');
        const flags = code === HvCall.MapGpaPages ? optInt(input, 'flags') : undefined;
        if (control.repCount !== undefined && control.repCount !== 0 && control.repCount !== count) {
          throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'rep count disagrees with pageCount');
        }
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        range('gpaPage', gpaPage, 0, Number.MAX_SAFE_INTEGER);
        range('pageCount', count, 1, Number.MAX_SAFE_INTEGER);
        if (gpaPage + count > p.pageCount) throw new Fail(HvStatus.INVALID_PARAMETER, `pages ${gpaPage}+${count} exceed the partition's ${p.pageCount} pages`);
        const map = p.gpaMap!;
        if (code === HvCall.MapGpaPages) {
          map.fill(range('flags', flags ?? GPA_READ | GPA_WRITE | GPA_EXECUTE, 1, 7), gpaPage, gpaPage + count);
        } else {
          map.fill(0, gpaPage, gpaPage + count);
        }
        return ok(null, count);
      }
      case HvCall.InstallIntercept: {
        const id = int(input, 'partitionId');
        const type = int(input, 'type');
        const access = int(input, 'access');
        const port = optInt(input, 'port') ?? 0;
        const portEnd = optInt(input, 'portEnd') ?? port;
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        if (!(Object.values(InterceptType) as number[]).includes(type)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown intercept type ${type}`);
        range('access', access, 1, 3);
        range('port', port, 0, 0xffff);
        range('portEnd', portEnd, port, 0xffff);
        if (type !== InterceptType.IoPort && type !== InterceptType.IoPortRange) throw new Fail(HvStatus.INVALID_PARAMETER, `intercept type ${type} is not supported (only I/O ports)`);
        if (p.intercepts.length >= MAX_INTERCEPTS_PER_PARTITION) throw new Fail(HvStatus.INSUFFICIENT_MEMORY, `partition ${p.id} already has ${p.intercepts.length} intercepts, its limit`);
        p.intercepts.push({ type, access, port, portEnd: type === InterceptType.IoPort ? port : portEnd, ownerSession: s.id });
        this.deliverRestoredIntercepts(p);
        return ok();
      }
      case HvCall.CreateVp: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        range('vpIndex', idx, 0, MAX_VPS_PER_PARTITION - 1);
        if (p.vps.has(idx)) throw new Fail(HvStatus.INVALID_VP_STATE, `VP ${idx} of partition ${p.id} exists`);
        const synic = new SynIc(p.memoryView, p.memoryBytes, { raise: (sint, extra) => this.raiseSint(p, idx, sint, extra) }, p.messageBudget);
        p.vps.set(idx, new VirtualProcessor(idx, synic));
        this.toScheduler(p, { t: 'addVp', id: p.id, index: idx });
        return ok();
      }
      case HvCall.DeleteVp: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        const p = this.child(caller, id);
        const vp = this.vp(p, idx);
        vp.synic.discard();
        p.vps.delete(vp.index);
        this.toScheduler(p, { t: 'removeVp', id: p.id, index: vp.index });
        return ok();
      }
      case HvCall.AssertVirtualInterrupt: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        const vector = int(input, 'vector');
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        const vp = this.vp(p, idx);
        range('vector', vector, 16, 255);
        if (!this.assertVector(p, vp.index, vector, false)) throw new Fail(HvStatus.INVALID_VP_STATE, `partition ${p.id} has no virtual APIC (VPs are not scheduled)`);
        return ok();
      }
      case HvCall.GetVpState: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        // hvlab's extension: the number of the caller's suspension of the partition (its
        // SetPartitionProperty Suspend answer), sent right behind that call: the answer waits until
        // the scheduler has taken it, which saves a freeze the wait and a second round trip.
        const after = optInt(input, 'afterSuspension');
        const p = this.child(caller, id);
        const vp = this.vp(p, idx);
        if (after !== undefined) {
          if (!p.vpI32 || !p.vpRegion) throw new Fail(HvStatus.INVALID_PARTITION_STATE, 'the partition\'s VPs are not scheduled: there is no suspension to wait for');
          if (!p.suspended) throw new Fail(HvStatus.INVALID_PARTITION_STATE, 'the partition is not suspended');
          if ((after | 0) !== after || after === 0) throw new Fail(HvStatus.INVALID_PARAMETER, `field afterSuspension=${after} is not a non-zero 32-bit integer`);
          // The number as this process gave it (the VP region's copy is guest-writable).
          if (p.suspendSeq !== after) throw new Fail(HvStatus.INVALID_PARTITION_STATE, `suspension ${after} is not the partition's current one (that is ${p.suspendSeq})`);
          if (!suspensionTaken(p.vpI32, after, p.vps.keys())) {
            if (!control.mayWait) throw new Fail(HvStatus.INVALID_VP_STATE, `the partition's VPs have not stopped under suspension ${after}${control.waited ? ` within ${SUSPENSION_WAIT_MS / 1000} s` : ''}`);
            return { status: HvStatus.SUCCESS, reps: 0, output: null, wait: { vpRegion: p.vpRegion, vpCount: Math.max(...p.vps.keys()) + 1, seq: after } };
          }
        }
        return ok(this.saveVp(p, vp));
      }
      case HvCall.SetVpState: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        if (!isPlainObject(input.state)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'field state is not a map');
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        const vp = this.vp(p, idx);
        const st = decodeSavedVpState(input.state);
        if (typeof st === 'string') throw new Fail(HvStatus.INVALID_PARAMETER, st);
        this.restoreVp(p, vp, st);
        this.deliverRestoredIntercepts(p);
        return ok();
      }
      case HvCall.GetVpRegisters: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        const names = input.names;
        if (!Array.isArray(names) || names.length > VpRegisterNames.length * 4 || names.some((n) => typeof n !== 'string')) {
          throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `names must be a list of at most ${VpRegisterNames.length * 4} strings`);
        }
        const p = this.selfOrChild(caller, id, 'AccessVpRegisters');
        const vp = this.vp(p, idx);
        const values: Record<string, number> = {};
        for (const n of names as string[]) {
          if (!isVpRegisterName(n)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown register ${n.slice(0, 32)}`);
          values[n] = this.readRegister(p, vp, n);
        }
        return ok({ values }, names.length);
      }
      case HvCall.SetVpRegisters: {
        const id = int(input, 'partitionId');
        const idx = int(input, 'vpIndex');
        const values = input.values;
        if (!isPlainObject(values)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'values must be a map');
        const entries = Object.entries(values);
        const p = this.selfOrChild(caller, id, 'AccessVpRegisters');
        const vp = this.vp(p, idx);
        for (const [n, v] of entries) {
          if (!isVpRegisterName(n)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown register ${n.slice(0, 32)}`);
          if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Fail(HvStatus.INVALID_PARAMETER, `register ${n} value is not a non-negative integer`);
        }
        // Validate every value before writing any, so a refused call changes nothing.
        for (const [n, v] of entries) this.checkRegister(p, n as VpRegisterName, v as number);
        // Clearing InterceptSuspend resumes the VP, so it goes last: the results are in place first.
        entries.sort((a, b) => Number(a[0] === 'InterceptSuspend') - Number(b[0] === 'InterceptSuspend'));
        for (const [n, v] of entries) this.writeRegister(p, vp, n as VpRegisterName, v as number);
        return ok(null, entries.length);
      }
      case HvCall.CreatePort: {
        const id = int(input, 'partitionId');
        const portId = int(input, 'portId');
        const type = int(input, 'type');
        const sint = int(input, 'sint');
        const vpIndex = int(input, 'vpIndex');
        const flagCountIn = optInt(input, 'flagCount');
        const p = this.selfOrChildPlain(caller, id);
        this.inState(p, PartitionState.Initialized);
        range('portId', portId, 1, 0xffffff);
        if (p.ports.has(portId)) throw new Fail(HvStatus.INVALID_PORT_ID, `port ${portId} exists in partition ${p.id}`);
        range('type', type, 1, 2);
        range('sint', sint, 0, SINT_COUNT - 1);
        range('vpIndex', vpIndex, 0, MAX_VPS_PER_PARTITION - 1);
        let flagCount = 0;
        if (type === PortType.Event) {
          if (flagCountIn === undefined) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'missing field flagCount (an event port needs one)');
          flagCount = range('flagCount', flagCountIn, 1, EVENT_FLAGS_PER_SINT);
        }
        if (p.id !== ROOT_PARTITION_ID && !p.vps.has(vpIndex)) throw new Fail(HvStatus.INVALID_VP_INDEX, `partition ${p.id} has no VP ${vpIndex}`);
        if (p.ports.size >= MAX_PORTS_PER_PARTITION) throw new Fail(HvStatus.INSUFFICIENT_MEMORY, `partition ${p.id} already has ${p.ports.size} ports, its limit`);
        const port: Port = { portId, type, vpIndex, sint, flagCount, ownerSession: p.id === ROOT_PARTITION_ID ? s.id : null };
        p.ports.set(portId, port);
        return ok();
      }
      case HvCall.ConnectPort: {
        const id = int(input, 'partitionId');
        const connectionId = int(input, 'connectionId');
        const portPartitionId = int(input, 'portPartitionId');
        const portId = int(input, 'portId');
        const p = this.selfOrChildPlain(caller, id);
        range('connectionId', connectionId, 1, 0xffffff);
        range('portPartitionId', portPartitionId, 1, Number.MAX_SAFE_INTEGER);
        range('portId', portId, 1, Number.MAX_SAFE_INTEGER);
        const target = this.partitions.get(portPartitionId);
        if (!target || !target.ports.has(portId)) throw new Fail(HvStatus.INVALID_PORT_ID, `no port ${portId} in partition ${portPartitionId}`);
        const key = `${p.id}:${connectionId}`;
        if (this.connections.has(key)) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} of partition ${p.id} exists`);
        if (p.connectionCount >= MAX_CONNECTIONS_PER_PARTITION) throw new Fail(HvStatus.INSUFFICIENT_MEMORY, `partition ${p.id} already has ${p.connectionCount} connections, its limit`);
        this.connections.set(key, { portPartitionId, portId });
        p.connectionCount++;
        return ok();
      }
      case HvCall.PostMessage: {
        const connectionId = int(input, 'connectionId');
        const type = int(input, 'messageType');
        const payload = bytes(input, 'payload');
        range('connectionId', connectionId, 0, 0xffffffff);
        range('messageType', type, 0, 0xffffffff);
        if (payload.length > MAX_MESSAGE_PAYLOAD) throw new Fail(HvStatus.INVALID_PARAMETER, `payload of ${payload.length} bytes exceeds ${MAX_MESSAGE_PAYLOAD}`);
        if (type === 0 || type >= 0x80000000) throw new Fail(HvStatus.INVALID_PARAMETER, `message type 0x${type.toString(16)} is reserved`);
        const { port, target } = this.resolveConnection(caller, connectionId, PortType.Message);
        const copy = new Uint8Array(payload);
        if (target.id === ROOT_PARTITION_ID) {
          // A port whose owning session was dropped keeps its place; the message goes nowhere.
          if (port.ownerSession && this.sessions.has(port.ownerSession)) this.opts.notify(port.ownerSession, { k: 'rootmsg', portId: port.portId, messageType: type, payload: copy, sender: caller.id });
          return ok();
        }
        const vp = target.vps.get(port.vpIndex);
        if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `target VP ${port.vpIndex} is gone`);
        const st = vp.synic.post(port.sint, { type, payload: copy, sender: caller.id });
        if (st !== HvStatus.SUCCESS) throw new Fail(st, `the message queue of partition ${target.id} is full`);
        return ok();
      }
      case HvCall.SignalEvent: {
        // More flags in one call is the hypercall page's extension (hcpage.ts), served there one
        // flag at a time; through the socket it would set the first flag only: refused.
        if (input.moreFlags !== undefined) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'moreFlags is for the hypercall page only: signal each flag');
        const connectionId = int(input, 'connectionId');
        const flag = int(input, 'flagNumber');
        range('connectionId', connectionId, 0, 0xffffffff);
        range('flagNumber', flag, 0, 0xffff);
        const { port, target } = this.resolveConnection(caller, connectionId, PortType.Event);
        if (flag >= port.flagCount) throw new Fail(HvStatus.INVALID_PARAMETER, `flag ${flag} is past the port's ${port.flagCount} flags`);
        if (target.id === ROOT_PARTITION_ID) {
          if (port.ownerSession && this.sessions.has(port.ownerSession)) this.opts.notify(port.ownerSession, { k: 'rootevent', portId: port.portId, flagNumber: flag, sender: caller.id });
          return ok();
        }
        const vp = target.vps.get(port.vpIndex);
        if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `target VP ${port.vpIndex} is gone`);
        const st = vp.synic.signal(port.sint, flag);
        if (st !== HvStatus.SUCCESS) throw new Fail(st, 'SynIC not ready');
        return ok();
      }
      case HvCall.MapGpadl: {
        const id = int(input, 'partitionId');
        const gpadl = int(input, 'gpadl');
        const owner = int(input, 'owner');
        const pfns = input.pfns;
        if (!Array.isArray(pfns) || pfns.length === 0) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'pfns must be a non-empty list');
        for (const pfn of pfns) if (typeof pfn !== 'number' || !Number.isSafeInteger(pfn)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'a pfn is not an integer');
        const p = this.child(caller, id);
        this.inState(p, PartitionState.Initialized);
        if (pfns.length > MAX_GPADL_PAGES) throw new Fail(HvStatus.INVALID_PARAMETER, `a GPADL has ${pfns.length} pages, more than ${MAX_GPADL_PAGES}`);
        range('gpadl', gpadl, 1, 0xffffffff);
        range('owner', owner, 0, 0xffffffff);
        if (p.gpadls.has(gpadl)) throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} exists in partition ${p.id}`);
        const seen = new Set<number>();
        for (const pfn of pfns as number[]) {
          if (pfn < 0 || pfn >= p.pageCount || !p.gpaMap?.[pfn]) {
            throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} covers page 0x${pfn.toString(16)} outside partition ${p.id}`);
          }
          const other = p.gpadlPageOwner.get(pfn);
          if ((other !== undefined && other !== owner) || seen.has(pfn)) {
            throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} page 0x${pfn.toString(16)} already serves another channel or repeats`);
          }
          seen.add(pfn);
        }
        if (p.gpadls.size >= MAX_GPADLS_PER_PARTITION || p.gpadlPages + pfns.length > MAX_GPADL_PAGES_PER_PARTITION) {
          throw new Fail(HvStatus.INSUFFICIENT_MEMORY, `partition ${p.id} already has ${p.gpadls.size} GPADLs over ${p.gpadlPages} pages; the limit is ${MAX_GPADLS_PER_PARTITION} over ${MAX_GPADL_PAGES_PER_PARTITION}`);
        }
        p.gpadls.set(gpadl, { owner, pfns: [...(pfns as number[])] });
        p.gpadlPages += pfns.length;
        for (const pfn of pfns as number[]) p.gpadlPageOwner.set(pfn, owner);
        return ok({ region: p.memoryRegion, pages: pfns.length }, pfns.length);
      }
      case HvCall.UnmapGpadl: {
        const id = int(input, 'partitionId');
        const gpadl = int(input, 'gpadl');
        const p = this.child(caller, id);
        const g = p.gpadls.get(gpadl);
        if (!g) throw new Fail(HvStatus.INVALID_PARAMETER, `partition ${p.id} has no GPADL 0x${gpadl.toString(16)}`);
        p.gpadls.delete(gpadl);
        p.gpadlPages -= g.pfns.length;
        // Another GPADL of the same channel may still cover a page (one pass over them, not one per page).
        const stillUsed = new Set<number>();
        for (const o of p.gpadls.values()) if (o.owner === g.owner) for (const pfn of o.pfns) stillUsed.add(pfn);
        for (const pfn of g.pfns) if (!stillUsed.has(pfn)) p.gpadlPageOwner.delete(pfn);
        return ok();
      }
      default:
        throw new Fail(HvStatus.INVALID_HYPERCALL_CODE, `unknown call code 0x${code.toString(16)}`);
    }
  }

  private resolveConnection(caller: Partition, connectionId: number, type: number): { port: Port; target: Partition } {
    const c = this.connections.get(`${caller.id}:${connectionId}`);
    if (!c) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `partition ${caller.id} has no connection ${connectionId}`);
    const target = this.partitions.get(c.portPartitionId);
    const port = target?.ports.get(c.portId);
    if (!target || !port || target.state === PartitionState.Deleted) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} leads nowhere`);
    if (target.id !== ROOT_PARTITION_ID && target.state !== PartitionState.Initialized) throw new Fail(HvStatus.INVALID_PARTITION_STATE, `target partition ${target.id} is ${target.state}`);
    if (port.type !== type) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} is not a ${type === PortType.Message ? 'message' : 'event'} connection`);
    return { port, target };
  }

  private readRegister(p: Partition, vp: VirtualProcessor, n: VpRegisterName): number {
    const sy = vp.synic;
    if (n === 'Scontrol') return sy.scontrol;
    if (n === 'Simp') return sy.simp;
    if (n === 'Siefp') return sy.siefp;
    if (n === 'Eom') return 0;
    if (n.startsWith('Sint')) return sy.sint[Number(n.slice(4))];
    if (n === 'ReferenceTime') return Math.max(0, this.referenceTimeOf(p));
    if (n === 'InterceptSuspend') return vp.interceptPending ? 1 : 0;
    const off = vpPageOffset(vp.index);
    if (p.vpI32 && p.vpF64) {
      if (n === 'Tpr') return Atomics.load(p.vpI32, (off + VpPage.tpr) >> 2) & 0xff;
      const t = /^Stimer(\d)(Config|Count)$/.exec(n);
      if (t) {
        const i = Number(t[1]);
        return t[2] === 'Config' ? Atomics.load(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + i) >>> 0 : p.vpF64[((off + VpPage.stimerCount) >> 3) + i];
      }
    }
    return vp.registers.get(n) ?? 0;
  }

  private checkRegister(p: Partition, n: VpRegisterName, v: number): void {
    if (n === 'Simp' || n === 'Siefp') {
      const page = Math.floor(v / 4096);
      const ok = v % 2 === 0 || ((page + 1) * 4096 <= p.memoryBytes && (p.gpaMap?.[page] ?? 0) !== 0);
      if (!ok) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} names an unmapped GPA page`);
    } else if (n.startsWith('Sint')) {
      if (v > 0x3ffff) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} has reserved bits set`);
      if ((v & (1 << 16)) === 0 && (v & 0xff) < 16) throw new Fail(HvStatus.INVALID_PARAMETER, `SINT vector ${v & 0xff} is below 16`);
    } else if (/^Stimer\dConfig$/.test(n)) {
      if (v > 0xfffff || (v & 0xe00c) !== 0) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} has reserved bits set`);
      if ((v & 1) && (v & (1 << 12)) && ((v >> 4) & 0xff) < 16) throw new Fail(HvStatus.INVALID_PARAMETER, `${n}: a direct-mode timer vector must be 16 or more`);
    } else if (n === 'Tpr') {
      if (v > 0xff) throw new Fail(HvStatus.INVALID_PARAMETER, 'TPR is 0-255');
    } else if (n === 'InterceptSuspend') {
      if (v !== 0) throw new Fail(HvStatus.INVALID_PARAMETER, 'InterceptSuspend can only be cleared (0)');
    } else if (n === 'ReferenceTime') {
      throw new Fail(HvStatus.INVALID_PARAMETER, 'ReferenceTime is read-only');
    }
  }

  private writeRegister(p: Partition, vp: VirtualProcessor, n: VpRegisterName, v: number): void {
    const sy = vp.synic;
    const off = vpPageOffset(vp.index);
    if (n === 'Scontrol') {
      sy.scontrol = v & 1;
      sy.pumpAll();
    } else if (n === 'Simp' || n === 'Siefp') {
      if (n === 'Simp') sy.simp = v;
      else sy.siefp = v;
      sy.pumpAll();
    } else if (n === 'Eom') {
      sy.endOfMessage();
    } else if (n.startsWith('Sint')) {
      const sint = Number(n.slice(4));
      sy.sint[sint] = v;
      sy.pump(sint);
    } else if (n === 'InterceptSuspend') {
      if (vp.intercept) {
        vp.intercept = null;
        this.opts.scheduler?.post({ t: 'interceptDone', id: p.id, index: vp.index });
        this.opts.scheduler?.ring();
      }
    } else if (p.vpI32 && p.vpF64 && (n === 'Tpr' || n.startsWith('Stimer'))) {
      if (n === 'Tpr') {
        Atomics.store(p.vpI32, (off + VpPage.tpr) >> 2, v);
      } else {
        const t = /^Stimer(\d)(Config|Count)$/.exec(n)!;
        const i = Number(t[1]);
        if (t[2] === 'Config') Atomics.store(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + i, v);
        else p.vpF64[((off + VpPage.stimerCount) >> 3) + i] = v;
        Atomics.add(p.vpI32, (off + VpPage.timerGen) >> 2, 1);
      }
      this.opts.scheduler?.ring();
    } else {
      vp.registers.set(n, v);
      if (p.vpF64 && (n === 'Rax' || n === 'Rip')) {
        p.vpF64[(off + (n === 'Rax' ? VpPage.rax : VpPage.rip)) >> 3] = v;
        if (n === 'Rax') Atomics.store(p.vpI32!, (off + VpPage.ioValue) >> 2, v | 0);
      }
    }
  }

  // ---- scheduling, interrupts, timers, intercepts -------------------------------------------

  private createVpRegion(p: Partition): void {
    const name = vpRegionName(this.hostId, p.id);
    try {
      p.vpRegion = createRegion(name, vpRegionBytes(MAX_VPS_PER_PARTITION));
    } catch (e) {
      throw new Fail(HvStatus.INSUFFICIENT_MEMORY, (e as Error).message);
    }
    p.vpRegionName = name;
    p.vpI32 = new Int32Array(p.vpRegion);
    p.vpF64 = new Float64Array(p.vpRegion);
    const dv = new DataView(p.vpRegion);
    dv.setUint32(VpRegionHeader.magic, VP_REGION_MAGIC, true);
    dv.setUint32(VpRegionHeader.vpCount, MAX_VPS_PER_PARTITION, true);
    p.refBaseNs = process.hrtime.bigint();
    // Run time starts at 0 with the VPs (the scheduler thread counts it): the first CPU % is since now.
    p.cpuSamples.length = 0;
    p.cpuSamples.push({ at: Date.now(), runMs: [] });
    this.publishClock(p);
    this.toScheduler(p, { t: 'addPartition', id: p.id, region: p.vpRegion, suspended: p.suspended, weight: p.cpuWeight, reserve: p.cpuReserve / 100, cap: p.cpuCap / 100 });
  }

  // ---- faults -------------------------------------------------------------------------------

  /**
   * Sets one of a partition's faults to `v` (checked against the property's range). Anything but 0
   * needs an Initialized partition, and, for stalls and clock faults, one whose VPs this
   * hypervisor schedules (else nothing would enforce it); 0 is taken in any state.
   */
  private setFault(p: Partition, prop: number, v: number): void {
    const f = p.faults;
    if (v !== 0) {
      this.inState(p, PartitionState.Initialized);
      if (prop !== PartitionProperty.FaultInterruptDelayUs && (!p.vpRegion || !this.opts.scheduler)) {
        throw new Fail(HvStatus.INVALID_PARTITION_STATE, `the VPs of partition ${p.id} are not scheduled by the hypervisor (private memory): ${partitionPropertyName(prop)} could not be enforced`);
      }
    }
    switch (prop) {
      case PartitionProperty.FaultInterruptDelayUs:
        if (f.interruptDelayUs === v) return;
        f.interruptDelayUs = v;
        // Undone at once: held-back notifications go now (the scheduler pends its held-back interrupts).
        if (v === 0) this.flushDelayedNotes(p);
        break;
      case PartitionProperty.FaultStalledVps:
        if (f.stalledVps === v) return;
        f.stalledVps = v;
        break;
      case PartitionProperty.FaultClockOffsetUs:
      case PartitionProperty.FaultClockSkewPpm: {
        const now = process.hrtime.bigint();
        const before = this.clockDisplacement(p, now);
        if (prop === PartitionProperty.FaultClockOffsetUs) {
          // Reference time never goes below 0 by a step back: at most as far back as it has run.
          const without = this.referenceTimeOf(p, now) - f.clockOffsetUs * 10;
          if (without + v * 10 < 0) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `a step of ${v} µs would take the reference time of partition ${p.id} below 0 (it is ${Math.floor(without / 10)} µs)`);
          f.clockOffsetUs = v;
        } else {
          f.clockSkewPpm = v;
          f.clockSkewSinceNs = v === 0 ? 0n : now;
        }
        this.publishClock(p);
        // A change is a step of reference time (a new skew starts its product from 0): periodic
        // timers keep their period across it instead of stalling or catching up (sched-thread.ts).
        const step = this.clockDisplacement(p, now) - before;
        if (step !== 0) this.toScheduler(p, { t: 'clockStep', id: p.id, stepRef: step });
        this.opts.log?.info({ partition: p.id, offsetUs: f.clockOffsetUs, skewPpm: f.clockSkewPpm, stepUs: step / 10 }, 'partition clock fault changed');
        return;
      }
      default:
        throw new Fail(HvStatus.UNKNOWN_PROPERTY, `unknown property ${partitionPropertyName(prop)}`);
    }
    this.toScheduler(p, { t: 'faults', id: p.id, interruptDelayNs: f.interruptDelayUs * 1000, stalledVps: f.stalledVps });
    this.opts.log?.info({ partition: p.id, interruptDelayUs: f.interruptDelayUs, stalledVps: f.stalledVps }, 'partition faults changed');
  }

  /** The clock words every reader of the partition's reference time computes it from (offset in the base). */
  private clockWords(p: Partition): ReferenceClockWords {
    const f = p.faults;
    return { baseNs: p.refBaseNs - BigInt(f.clockOffsetUs) * 1000n, skewPpm: f.clockSkewPpm, skewSinceNs: f.clockSkewSinceNs };
  }

  /** Writes the partition's clock words into its VP region, where the guest and the scheduler thread read them. */
  private publishClock(p: Partition): void {
    if (p.vpRegion) new ReferenceClockView(p.vpRegion).publish(this.clockWords(p));
  }

  /** The partition's reference time as its guest sees it (clock faults included), from this thread's own copy of the words. */
  private referenceTimeOf(p: Partition, nowNs: bigint = process.hrtime.bigint()): number {
    const w = this.clockWords(p);
    return referenceTimeAt(w.baseNs, w.skewPpm, w.skewSinceNs, nowNs);
  }

  /** How far the partition's reference time is from its true reference time now (100 ns units). */
  private clockDisplacement(p: Partition, nowNs: bigint = process.hrtime.bigint()): number {
    return this.referenceTimeOf(p, nowNs) - this.trueReferenceTime(p, nowNs);
  }

  /** The partition's true reference time (no clock fault): what saved state records. */
  private trueReferenceTime(p: Partition, nowNs: bigint = process.hrtime.bigint()): number {
    return referenceTimeAt(p.refBaseNs, 0, 0n, nowNs);
  }

  /** Sends the interrupt notifications held back by the interrupt delay now (the delay was cleared). */
  private flushDelayedNotes(p: Partition): void {
    const held = [...p.delayedNotes];
    p.delayedNotes.clear();
    for (const [t, send] of held) {
      clearTimeout(t);
      send();
    }
  }

  /** Drops the notifications held back for a partition that is going away. */
  private dropDelayedNotes(p: Partition): void {
    for (const t of p.delayedNotes.keys()) clearTimeout(t);
    p.delayedNotes.clear();
  }

  /** Posts to the scheduler thread and rings it: it sleeps until rung when nothing is due. */
  private toScheduler(p: Partition, m: ToScheduler): void {
    if (!p.vpRegion || !this.opts.scheduler) return;
    this.opts.scheduler.post(m);
    this.opts.scheduler.ring();
  }

  /** Pends `vector` on a VP's virtual APIC and lets the scheduler wake it (pendInterrupt). False without an APIC. */
  assertVector(p: Partition, vpIndex: number, vector: number, autoEoi: boolean): boolean {
    if (!p.vpI32 || !p.vpRegion || !this.opts.scheduler) return false;
    if (p.faults.interruptDelayUs > 0) {
      // The scheduler thread pends it when the delay has passed.
      this.toScheduler(p, { t: 'interrupt', id: p.id, index: vpIndex, vector, autoEoi });
      return true;
    }
    const off = vpPageOffset(vpIndex);
    if (pendInterrupt(new VirtualApicView(p.vpI32, off), p.vpRegion, off, vector, autoEoi)) this.opts.scheduler.ring();
    return true;
  }

  /** A SynIC interrupt: through the VP's virtual APIC when it has one, else as a notification. */
  private raiseSint(p: Partition, vpIndex: number, sint: number, extra: { slot?: Uint8Array; flag?: number }): void {
    const vp = p.vps.get(vpIndex);
    const reg = vp?.synic.sint[sint] ?? 0;
    if (vp && !sintMasked(reg) && this.assertVector(p, vpIndex, sintVector(reg), (reg & SINT_AUTO_EOI) !== 0)) return;
    const msg: HvServerMsg = { k: 'sint', vp: vpIndex, sint, ...extra };
    const delayMs = p.faults.interruptDelayUs / 1000;
    if (delayMs <= 0 || p.delayedNotes.size >= MAX_DELAYED_NOTES) {
      this.notifyPartition(p, msg);
      return;
    }
    // No virtual APIC (private memory): the notification is the interrupt, and it goes late.
    const send = (): void => {
      p.delayedNotes.delete(timer);
      if (p.state !== PartitionState.Deleted) this.notifyPartition(p, msg);
    };
    const timer = setTimeout(send, delayMs);
    timer.unref?.();
    p.delayedNotes.set(timer, send);
  }

  /**
   * What the scheduler thread hands back: message-mode timer expirations and port intercepts. The
   * scheduler read them from a guest-writable page and checked them; they are checked again here,
   * because this runs on the main thread, where an exception would reach the serve loop.
   */
  fromScheduler(m: FromScheduler): void {
    const p = this.partitions.get(m.id);
    const vp = p?.vps.get(m.index);
    if (!p || !vp || p.state !== PartitionState.Initialized) return;
    if (m.t === 'timer') {
      if (!Number.isInteger(m.sint) || m.sint < 0 || m.sint >= SINT_COUNT) return;
      const u64 = (x: number): bigint => BigInt(Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, Math.floor(Number.isFinite(x) ? x : 0))));
      const payload = new Uint8Array(TIMER_EXPIRED_PAYLOAD_BYTES);
      const dv = new DataView(payload.buffer);
      dv.setUint32(0, m.timer >>> 0, true);
      dv.setBigUint64(8, u64(m.expiration), true);
      dv.setBigUint64(16, u64(m.delivery), true);
      // A full queue (the guest does not EOM) loses the expiration, as a message to a full SINT would.
      vp.synic.post(m.sint, { type: HvMessageType.TimerExpired, payload, sender: 0 });
      return;
    }
    const rec = decodeIoInterceptRecord(m.port, m.access, m.size, m.value);
    if (typeof rec === 'string') {
      this.logLimited('child', 'info', { partition: p.id, vp: m.index, why: rec }, 'malformed intercept record ignored');
      this.writeRegister(p, vp, 'InterceptSuspend', 0);
      return;
    }
    const ic: PendingIntercept = {
      messageType: HvMessageType.X64IoPortIntercept, port: rec.port, access: rec.access, size: rec.size, value: rec.value,
      rip: clampU53(vp.registers.get('Rip') ?? 0), delivered: false,
    };
    vp.intercept = ic;
    if (this.deliverIntercept(p, vp, ic)) return;
    // No one claims the port: reads float high, writes vanish, and the VP goes on.
    if (ic.access !== 2) {
      const ones = rec.size === 4 ? 0xffffffff : (1 << (rec.size * 8)) - 1;
      Atomics.store(p.vpI32!, (vpPageOffset(m.index) + VpPage.ioValue) >> 2, ones | 0);
    }
    this.writeRegister(p, vp, 'InterceptSuspend', 0);
  }

  /**
   * One VP's saved state. Values the guest can write in its VP page (the RAX mirror, timer counts
   * and expiries) are saved clamped to what `decodeSavedVpState` accepts, so whatever a guest does
   * its VM can still be restored.
   */
  private saveVp(p: Partition, vp: VirtualProcessor): SavedVpStateV2 {
    const registers: Record<string, number> = {};
    for (const [k, v] of vp.registers) registers[k] = clampU53(v);
    const off = vpPageOffset(vp.index);
    const timers: SavedVpState['timers'] = [];
    let apic: SavedVpState['apic'] = { irr: new Array(8).fill(0), isr: new Array(8).fill(0), aeoi: new Array(8).fill(0), tpr: 0 };
    let runState = 'Absent';
    if (p.vpI32 && p.vpF64) {
      apic = new VirtualApicView(p.vpI32, off).snapshot();
      // Saved are true expirations: without the interrupt delay's push of direct timers, and periodic
      // timers in true reference time, as the saved reference time is (see restoreVp).
      const shift = Math.round(p.faults.interruptDelayUs * 10);
      const disp = this.clockDisplacement(p);
      for (let t = 0; t < STIMER_COUNT; t++) {
        const config = Atomics.load(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + t) >>> 0;
        const cfg = decodeStimerConfig(config);
        const next = finiteOrZero(p.vpF64[((off + VpPage.stimerNext) >> 3) + t]);
        const back = (cfg.direct ? shift : 0) + (cfg.periodic ? disp : 0);
        timers.push({
          config,
          count: finiteOrZero(p.vpF64[((off + VpPage.stimerCount) >> 3) + t]),
          nextExpiry: next > 0 && back !== 0 ? Math.max(1, next - back) : next,
        });
      }
      registers.Rax = clampU53(p.vpF64[(off + VpPage.rax) >> 3]);
      runState = vpRunStateName(Atomics.load(p.vpI32, (off + VpPage.state) >> 2));
    }
    const ic = vp.intercept;
    return {
      version: 2,
      registers,
      apic,
      synic: { scontrol: vp.synic.scontrol, simp: vp.synic.simp, siefp: vp.synic.siefp, sint: [...vp.synic.sint], queued: vp.synic.savedQueue() },
      timers,
      // The true reference time: a clock fault is the partition's here, not the VM's to carry along.
      referenceTime: clampU53(this.trueReferenceTime(p)),
      runState,
      intercept: ic ? { messageType: ic.messageType, port: ic.port, access: ic.access, size: ic.size, value: ic.value, rip: ic.rip } : null,
    };
  }

  /**
   * Restores a VP from a checked saved state; everything is checked before anything is written.
   * The state replaces the VP's: its queued SynIC messages (given back to the partition's budget)
   * and its pending intercept. A version-1 state has no queued messages and no intercept details,
   * so its VP runs on (as version-1 hosts restored it).
   */
  private restoreVp(p: Partition, vp: VirtualProcessor, st: SavedVpState): void {
    const regs = Object.entries(st.registers) as Array<[VpRegisterName, number]>;
    for (const [k, v] of regs) this.checkRegister(p, k, v);
    const queued = 'version' in st ? st.synic.queued : [];
    const savedIntercept: SavedIntercept | null = 'version' in st ? st.intercept : null;
    const problem = vp.synic.restoreProblem(queued);
    if (problem !== null) throw new Fail(HvStatus.INVALID_PARAMETER, `saved VP state: ${problem}`);
    // Reference time continues from the saved value: time stands still while a VM is saved.
    // (The true reference time; a clock fault of this partition stays in force on top of it.)
    p.refBaseNs = process.hrtime.bigint() - BigInt(st.referenceTime) * 100n;
    this.publishClock(p);
    for (const [k, v] of regs) this.writeRegister(p, vp, k, v);
    vp.synic.sint.splice(0, SINT_COUNT, ...st.synic.sint);
    vp.synic.scontrol = st.synic.scontrol;
    vp.synic.simp = st.synic.simp;
    vp.synic.siefp = st.synic.siefp;
    const off = vpPageOffset(vp.index);
    if (p.vpI32 && p.vpF64) {
      new VirtualApicView(p.vpI32, off).load(st.apic);
      // Saved periodic expirations are in true reference time: into this partition's, clock fault included.
      const disp = this.clockDisplacement(p);
      st.timers.forEach((t, i) => {
        Atomics.store(p.vpI32!, ((off + VpPage.stimerConfig) >> 2) + i, t.config | 0);
        p.vpF64![((off + VpPage.stimerCount) >> 3) + i] = t.count;
        p.vpF64![((off + VpPage.stimerNext) >> 3) + i] = t.nextExpiry > 0 && disp !== 0 && decodeStimerConfig(t.config).periodic ? Math.max(1, t.nextExpiry + disp) : t.nextExpiry;
      });
      this.opts.scheduler?.post({ t: 'timersRestored', id: p.id, index: vp.index });
      this.opts.scheduler?.ring();
    }
    // After the SINT and page registers, so what free slots can take is delivered now.
    vp.synic.restoreQueue(queued);
    if (savedIntercept) {
      // The VP stays stopped until the intercept is completed; deliverRestoredIntercepts notifies.
      if (!vp.intercept) this.toScheduler(p, { t: 'interceptRestored', id: p.id, index: vp.index });
      vp.intercept = { ...savedIntercept, delivered: false };
    } else if (vp.intercept) {
      this.writeRegister(p, vp, 'InterceptSuspend', 0);
    }
  }

  /**
   * Notifies the session holding the partition's intercept that covers `ic` (the first installed
   * one whose session is open), as the 'intercept' notification of a fresh access. False when no
   * intercept covers it.
   */
  private deliverIntercept(p: Partition, vp: VirtualProcessor, ic: PendingIntercept): boolean {
    const want = ic.access === 2 ? InterceptAccess.Write : InterceptAccess.Read;
    const hit = p.intercepts.find((i) => ic.port >= i.port && ic.port <= i.portEnd && (i.access & want) !== 0 && this.sessions.has(i.ownerSession));
    if (!hit) return false;
    ic.delivered = true;
    this.opts.notify(hit.ownerSession, {
      k: 'intercept', partitionId: p.id, vpIndex: vp.index, messageType: ic.messageType,
      port: ic.port, access: ic.access, size: ic.size, value: ic.value, rip: ic.rip,
    });
    return true;
  }

  /**
   * Re-raises the intercepts that SetVpState restored and no session has been told of yet. The
   * rule: a restored intercept is delivered once, to the session that holds a matching intercept
   * of the partition — at SetVpState when one is installed by then, else at the InstallIntercept
   * that installs one. Until then the VP stays suspended (the parent may still clear
   * InterceptSuspend itself). Completing it is as for a fresh intercept: the session writes the
   * result and clears InterceptSuspend, and the VP resumes.
   */
  private deliverRestoredIntercepts(p: Partition): void {
    for (const vp of p.vps.values()) if (vp.intercept && !vp.intercept.delivered) this.deliverIntercept(p, vp, vp.intercept);
  }

  /** Takes a run-time sample of every scheduled partition. */
  sampleCpu(): void {
    for (const p of this.partitions.values()) if (p.vpI32) this.vpStats(p);
  }

  private cpuWatch: { timer: NodeJS.Timeout; until: number } | null = null;

  /**
   * A question about CPU % came: sample every CPU_SAMPLE_MS for the next CPU_WATCH_MS, so that a
   * watcher's next questions (`top`, `vm list` in a loop) get about a second's window. The first
   * answer after a quiet spell covers the time since the last sample (since the VPs were created,
   * for a VM never asked about): an average, not a stale number.
   */
  private watchCpu(): void {
    const until = Date.now() + CPU_WATCH_MS;
    if (this.cpuWatch) {
      this.cpuWatch.until = until;
      return;
    }
    const timer = setInterval(() => {
      if (!this.cpuWatch || Date.now() > this.cpuWatch.until) {
        clearInterval(timer);
        this.cpuWatch = null;
        return;
      }
      try {
        this.sampleCpu();
      } catch (e) {
        this.opts.log?.warn({ err: (e as Error).message }, 'sampling VP run time failed');
      }
    }, CPU_SAMPLE_MS);
    timer.unref();
    this.cpuWatch = { timer, until };
  }

  /**
   * Per-VP scheduler state and accounting, with CPU % over the last second of samples. The numbers
   * live in the guest-writable VP page: a guest that scribbles on them sees zeros for its own VM.
   */
  vpStats(p: Partition): { cpuPercent: number; vps: VpStats[] } {
    if (!p.vpI32 || !p.vpF64) return { cpuPercent: 0, vps: [] };
    const now = Date.now();
    const idx = [...p.vps.keys()].sort((a, b) => a - b);
    const acct = idx.map((i) => vpAccounting(p.vpI32!, p.vpF64!, vpPageOffset(i), Number(process.hrtime.bigint())));
    const runMs = acct.map((a) => a.runMs);
    const s = p.cpuSamples;
    if (s.length === 0 || now - s[s.length - 1].at >= 100) s.push({ at: now, runMs });
    while (s.length > 2 && now - s[1].at >= 1000) s.shift();
    const base = s[0];
    const dt = now - base.at;
    const pct = (i: number): number => vpCpuPercent(runMs[i]!, base.runMs[i] ?? 0, dt);
    const vps = idx.map((index, i) => {
      const off = vpPageOffset(index);
      return {
        index,
        state: acct[i].state,
        runMs: Math.round(runMs[i]),
        readyMs: Math.round(acct[i].readyMs),
        waitMs: Math.round(acct[i].waitMs),
        dispatches: finiteOrZero(p.vpF64![(off + VpPage.dispatches) >> 3]),
        cpuPercent: pct(i),
      };
    });
    return { cpuPercent: Math.round(vps.reduce((a, v) => a + v.cpuPercent, 0) * 10) / 10, vps };
  }

  private destroy(p: Partition): void {
    p.state = PartitionState.Deleted;
    this.dropDelayedNotes(p);
    if (p.memoryRegion) unlinkRegion(p.memoryRegion);
    for (const name of workerRegionNames(this.hostId, p.id)) {
      try {
        unlinkRegion(name);
      } catch { /* not there, or not ours to remove: nothing to do */ }
    }
    if (p.vpRegionName) {
      this.toScheduler(p, { t: 'removePartition', id: p.id });
      unlinkRegion(p.vpRegionName);
      p.vpRegion = null;
      p.vpI32 = null;
      p.vpF64 = null;
    }
    p.memory = null;
    p.memoryView = null;
    for (const vp of p.vps.values()) vp.synic.discard();
    for (const [key, c] of [...this.connections]) {
      const owner = Number(key.slice(0, key.indexOf(':')));
      if (owner === p.id || c.portPartitionId === p.id) {
        this.connections.delete(key);
        const o = this.partitions.get(owner);
        if (o) o.connectionCount--;
      }
    }
    for (const [sid, ss] of this.sessions) {
      if (ss.partitionId !== p.id) continue;
      this.sessions.delete(sid);
      this.opts.onSessionClosed?.(sid);
    }
    this.partitions.delete(p.id);
    this.opts.onRoutesChanged?.();
    this.opts.log?.info({ partition: p.id }, 'partition deleted');
  }

  /** Removes every partition (unlinking its memory) — at hypervisor exit. */
  shutdown(reason: string): void {
    if (this.lpShrink) clearTimeout(this.lpShrink.timer);
    this.lpShrink = null;
    for (const p of [...this.partitions.values()]) {
      if (p.id === ROOT_PARTITION_ID) continue;
      this.notifyPartition(p, { k: 'bye', reason });
      this.destroy(p);
    }
    for (const s of this.sessions.values()) this.opts.notify(s.id, { k: 'bye', reason });
  }
}
