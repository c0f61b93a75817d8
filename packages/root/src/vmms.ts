/**
 * VMMS: the VM registry and each VM's state machine (WMI EnabledState numbers), one VMWP per
 * running VM, and the actions behind the management API.
 *
 * A VM belongs to its VMWP, not to this process: the worker depends on no pipe of the root, talks to VMMS
 * over a control socket (runtime/vmwp-link.ts) and keeps a record in `run/vmwp/NAME.json`, so a
 * root partition process that died and was restarted re-attaches to every running VM
 * (`reattach`) — as Hyper-V's VMMS can be restarted without stopping a VM. A VMWP that dies,
 * however it dies, turns its VM Off with the reason it recorded; VMMS then deletes the orphaned
 * partition. Nothing here waits on a dead worker: the link fails pending requests once its pid is
 * gone.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { procChildren, procEnviron, procState, procTitle } from '@hvlab/shm/procfs';
import { join } from 'node:path';
import {
  DEFAULT_MAX_MIGRATIONS, MIG_CANCEL_TOO_LATE, abortAnswer, MIG_COMMIT_WITHIN_MS, MIG_RESUME_WITHIN_MS, decodeMigrationOptions, emptyRam, dirtyBitmapGpa, reportedMigrationStats,
  type ClusterKey, type MigPeerRequest, type MigrationOptions, type MigrationStats, type VmFaultSpec,
  EnabledState, DEVICE_CLASSES, INTEGRATION_SERVICES, MIG_GUEST_NOT_RESUMED, VM_NAME_RE, vmStateName, parseHvCall, hvCallName, hvStatusName, decodeVmwpRecord, VMWP_EXIT_MIGRATED, CLUSTER_WIRE_VERSION,
  type VmInfo, type VmMigration, type VmCpu, type VmStateEvent, type ProcessInfo, type VmwpDescription, type VmwpNote, type VmwpFaultInfo, type VmwpFaultStats, type VmwpRecord, type VmwpStateAnswer, type VmwpPendingOp, decodePendingOp, decodeDescribedMove, decodeDescribedIncoming,
} from '@hvlab/protocol';
import {
  pidAlive, readRegularFile, watchPid, hostPaths, RpcClient, RpcFailure, curveClientOptions, sameCredential, testKnob, TEST_HOLD_END_SIGNAL, VmwpControlClient, VmwpLinkError, VMWP_BAD_ANSWER,
  type HvClient, type Logger,
} from '@hvlab/runtime';
import { buildConfig, ConfigStore, decodeVmConfig, MgmtFailure, validateName, vmDevices, withIntegrationService, type VmConfig } from './config.js';
import type { VmwpClaim, VmwpConfig, VmwpStartInput } from './vmwp/shared.js';
import type { IcEntry } from './vmwp/devices.js';
import { MAX_WARM, sweepTemplateLogs, WarmPool } from './warm.js';
import { MAX_SPARE, SpareWorkers } from './spare.js';
import { spawnVmwp } from './worker-spawn.js';
import { CommittedMigrations } from './committed.js';
import { incomingRecordNames, readIncomingRecord, removeIncomingRecord, writeIncomingRecord } from './incoming-record.js';
import { discardSavedState, hasSavedState, isSavedStateConsumed, markSavedStateConsumed, sweepUnfinishedSaves, unfinishedSaveDir, unmarkSavedStateConsumed } from './saved-state.js';

const START_TIMEOUT_MS = 30000;

/** How many ended faults' counters a VM's record keeps. */
const FAULT_COUNTERS_KEPT = 32;

interface VmRecord {
  config: VmConfig;
  /**
   * The last counters of this VM's faults that ended (its worker's faultEnded notes; the latest
   * FAULT_COUNTERS_KEPT): `faultClear` answers them, so the nemesis learns what a VMBus fault did
   * also when the worker ended it on its own deadline first.
   */
  faultCounters?: Map<string, VmwpFaultStats>;
  state: number;
  reason: string | null;
  partitionId: number | null;
  partitionPid: number | null;
  vmwpPid: number | null;
  link: VmwpControlClient | null;
  stopWatch: (() => void) | null;
  runningSince: number | null;
  /** Set while VMMS itself is turning the VM off, so the worker's exit is not a failure. */
  expectingExit: boolean;
  /** What the worker said before it went: a failure, or why it exited. */
  failure: string | null;
  exitReason: string | null;
  guestShutdown: boolean;
  booted: ((ok: boolean, why?: string) => void) | null;
  /** Starting from a saved state (marked consumed on disk; discarded once the guest runs or is turned off). */
  restoring: boolean;
  /** Turned off while Starting before its worker existed: the start must not spawn one. */
  startCancelled: string | null;
  /** Why the VM's config file cannot be used (state Invalid), or null. */
  invalid: string | null;
  /**
   * The worker of an Invalid VM that kept running through a root restart (its config file was
   * damaged meanwhile): left running, as every VM is across a root restart, until a turn-off.
   */
  stranded: { pid: number; partitionPid: number | null; partitionId: number | null } | null;
  /** A live migration into this host (destination), until it is committed. */
  incoming: Incoming | null;
  /** A live migration of this VM to another host (source), queued or running. */
  /**
   * The VM's move from here: `cancel` reaches the phase it is in; `cancelled` keeps a cancel that
   * came between two phases (the slot granted, the link to the destination still opening), which
   * no phase's `cancel` could take, so that the next phase sees it instead of going on.
   */
  moving: { mig: string; to: string; started: boolean; cancel: (why: string, force?: boolean) => Promise<string | null>; cancelled: string | null; adopted?: boolean } | null;
  /**
   * A pause, resume or save that a previous root asked for and the worker still ran when this root
   * re-attached (VmwpDescription.pending): its `settled` note decides the state, as the answer
   * would have for the root that asked.
   */
  adopted: VmwpPendingOp | null;
  /**
   * A live configuration change (processor settings, an integration service) that the worker has
   * not answered yet: what it changes. Another change waits for it (is refused meanwhile).
   */
  changing: string | null;
}

interface Incoming {
  mig: string;
  from: string;
  /**
   * The credential its set-up came with (the pair's, checked by the peer service): the rest of the
   * migration must carry the same, so a host that took the source's name meanwhile (its holder quiet
   * for 10 heartbeats) cannot commit or abort the migration that the old holder set up.
   */
  auth: string;
  ready: { resolve: () => void; reject: (e: Error) => void } | null;
  started: boolean;
  lastSeen: number;
  watchdog: NodeJS.Timeout | null;
  startedAt: number;
  /** Post-copy has switched over: the guest runs here while its pages still arrive. */
  postcopy: boolean;
  /** Lets the spare workers refill again (the attempt was committed or dropped). */
  releaseSpare: (() => void) | null;
  /** The commit under way, which a repeated commit waits for. */
  committing?: Promise<{ committed: true }> | null;
  /** The worker's own stream socket's port (incomingReady), and the fabric's port that opens it to the source. */
  streamPort?: number | null;
  exposed?: number | null;
  /** The migration's options (its record on disk keeps them). */
  options: MigrationOptions;
}

/** Whether `req` comes from the source that set `inc` up: its host name and the credential of its set-up (timing-safe). */
function sameSource(inc: Incoming, req: { from: string; auth: string }): boolean {
  return inc.from === req.from && sameCredential(inc.auth, req.auth);
}

/** What VMMS needs of the host's cluster membership to move VMs. */
export interface MigrationCluster {
  readonly name: string;
  readonly key: ClusterKey;
  /** The link's port, and the credential of this host's pair with `peer` (PeerBookEntry.auth). */
  linkTo(peer: string): Promise<{ endpoint: string; auth: string }>;
  /** This host's own address, where a migration's destination worker listens for its stream. */
  readonly address: string;
  /** Opens this host's `port` to `peer` through their link; the fabric's port that forwards there. */
  expose(peer: string, port: number, via?: number): Promise<number>;
  unexpose(fabricPort: number): Promise<void>;
}

/** An incoming migration whose stream is silent this long (before the state came) is dropped (HVLAB_MIGRATION_IDLE_MS for tests). */
const INCOMING_IDLE_MS = Number(process.env.HVLAB_MIGRATION_IDLE_MS) >= 1000 ? Number(process.env.HVLAB_MIGRATION_IDLE_MS) : 30000;
/**
 * During post-copy the source asks for pages every ~200 ms (migPull) and sends at most one batch of
 * MIG_BATCH_MAX_PAGES at a time, and its own requests give up after 10 s (migrate.ts
 * PAGES_TIMEOUT_MS): a silence longer than that is a source that is gone or cut off, and the VM
 * here, with pages only there, is lost. It was the 30 s of INCOMING_IDLE_MS, all of it shown as
 * Running. HVLAB_MIGRATION_IDLE_MS, when lower, lowers it too (tests).
 */
const POSTCOPY_IDLE_MS = Math.min(12000, INCOMING_IDLE_MS);
/** How long an incoming worker's answer to the source gets to leave before a failed start drops the worker. */
const MIG_FAILED_GRACE_MS = 250;
/** After the destination runs the VM, the source must commit within this, or the copy here goes. */
const INCOMING_COMMIT_MS = MIG_COMMIT_WITHIN_MS;
/** Dropped incoming migrations remembered for a source's probe. */
const MAX_DROPPED_KEPT = 64;
/**
 * A migrated guest's kernel must say it resumed within this of the commit: inside the source's
 * second commit attempt (migrate.ts COMMIT_TIMEOUT_MS). Tests whose guest never resumes shorten it
 * (HVLAB_TEST_RESUME_WITHIN_MS, whole ms from 1000 up to it).
 */
const INCOMING_BOOT_MS = testKnob('HVLAB_TEST_RESUME_WITHIN_MS', 1000, MIG_RESUME_WITHIN_MS) ?? MIG_RESUME_WITHIN_MS;
/**
 * The source root's abort of a destination's attempt whose source worker is gone: tries, each's
 * answer bound, the first pause between them (doubling). Tests whose destination holds its answers
 * back cap the bound (HVLAB_TEST_ABORT_ANSWER_MS).
 */
const ABORT_TRIES = 3;
const ABORT_TIMEOUT_MS = testKnob('HVLAB_TEST_ABORT_ANSWER_MS', 100, 2000) ?? 2000;
const ABORT_PAUSE_MS = 500;
/** RpcClient's codes for a call that got no answer (the others are the peer's). */
const RPC_UNANSWERED: ReadonlySet<string> = new Set(['Timeout', 'SendFailed', 'Closed']);
/**
 * How long a pause or resume (SUSPEND_ANSWER_MS), or a save (SAVE_ANSWER_MS), waits for the
 * worker before its caller hears that it did not finish; the VM stays Pausing, Resuming or Saving
 * until the worker answers, and that answer decides its state however late it comes
 * (`untilAnswered`). HVLAB_SUSPEND_ANSWER_MS and HVLAB_SAVE_ANSWER_MS shorten them for tests.
 */
const answerMs = (env: string | undefined, dflt: number): number => (Number(env) >= 500 && Number(env) <= dflt ? Number(env) : dflt);
const SUSPEND_ANSWER_MS = answerMs(process.env.HVLAB_SUSPEND_ANSWER_MS, 10000);
const SAVE_ANSWER_MS = answerMs(process.env.HVLAB_SAVE_ANSWER_MS, 120000);
/** How long an enabled integration service's answer waits for the guest to negotiate it (icSettled). */
const IC_ENABLE_SETTLE_MS = 5000;
/**
 * Tests (HVLAB_TEST_COMMIT_SILENT_MS): how long this host, as a move's destination, holds back every
 * answer about it once it took its commit (0: none). With it set, TEST_HOLD_END_SIGNAL to the root
 * ends every hold at once: a test whose own checks are done need not wait out a bound long enough
 * to outlast them on a busy machine.
 */
const COMMIT_SILENT_MS = testKnob('HVLAB_TEST_COMMIT_SILENT_MS', 1) ?? 0;
/** How often an incoming attempt's stream port the fabric refused to open again (exposeIncomingAgain) is asked for again. */
const EXPOSE_AGAIN_EVERY_MS = 500;
/**
 * A turn-off waits this long for its worker's answer, and then this long for the worker to exit,
 * before it kills it (`kill`). Tests whose worker is stopped cap both (HVLAB_TEST_TURN_OFF_WAIT_MS).
 */
const TURN_OFF_CAP_MS = testKnob('HVLAB_TEST_TURN_OFF_WAIT_MS', 100) ?? Infinity;
const TURN_OFF_ANSWER_MS = Math.min(2000, TURN_OFF_CAP_MS);
const TURN_OFF_EXIT_MS = Math.min(3000, TURN_OFF_CAP_MS);
/** The most a worker record (run/vmwp/NAME.json: pids, ports, a pending operation) is read to. */
const VMWP_RECORD_MAX_BYTES = 256 * 1024;
/** A worker that answers a pause, resume or save with nothing for this long is wedged: its VM is turned off. */
const WORKER_WEDGED_MS = 30 * 60 * 1000;

export interface VmmsOptions {
  home: string;
  /** The host's logical processors: the processor reserves of its running VMs are admitted against them. */
  lps?: number;
  hostId: string;
  hvPid: number;
  store: ConfigStore;
  vid: HvClient;
  log: Logger;
  publish: (ev: VmStateEvent) => void;
  /** HVLAB_HOME/vms: configs and saved states. */
  vmDir: string;
  vmbusTransport: 'shm' | 'remote';
  /** Booted VM workers to keep ahead of need (`hvlab up --warm N`); 0 keeps none. */
  warm?: number;
  /** The memory size of the warm pool's VMs (`--warm-memory`, as `vm new --memory` takes it; default 64M). */
  warmMemory?: string;
  /** Loaded VM workers without a VM to keep for cold starts and incoming migrations (`hvlab up --spare N`); 0 keeps none. */
  spare?: number;
  /** Live migrations from this host at once (more wait in a queue); default 2, as Hyper-V. */
  maxMigrations?: number;
}

export const DEFAULT_STOP_TIMEOUT_S = 30;

/** What the registry holds for a VM whose config file is invalid: its name and nothing else. */
function placeholderConfig(name: string): VmConfig {
  return { version: 0, id: '', name, memoryBytes: 0, vps: 0, workload: '', processor: { reserve: 0, maximum: 100, weight: 100 }, createdAt: '' };
}

/** A request failed because its worker is gone (or its link closed), not by the worker's refusal or a timeout. */
function workerGone(e: unknown): boolean {
  return e instanceof VmwpLinkError && e.gone;
}

/** The partition processes among a worker's children (/proc; none when it cannot be read). */
function partitionChildrenOf(pid: number): number[] {
  return procChildren(pid).filter((child) => procTitle(child)?.startsWith('hvlab-partition') ?? false);
}

/** The state a VM shows while a pause, resume or save of its worker runs. */
function pendingState(op: VmwpPendingOp): number {
  return op === 'pause' ? EnabledState.Pausing : op === 'resume' ? EnabledState.Resuming : EnabledState.Saving;
}

/** A worker's failure as a management error (keeps the worker's code when it gave one). */
function linkFailure(e: unknown, what: string): MgmtFailure {
  if (e instanceof MgmtFailure) return e;
  if (e instanceof VmwpLinkError && e.code && e.code !== VMWP_BAD_ANSWER) return new MgmtFailure(e.code, e.message);
  return new MgmtFailure('Unavailable', `${what}: ${(e as Error).message}`);
}

/**
 * Each VM name's last move, as move-status and a move's answer report it: every record goes in
 * through reportedMigrationStats, so one that did not complete has no downtime (a cancelled or
 * failed move kept the 0 its statistics started from, or the blackout of a commit that failed,
 * and move-status said "downtime 0 ms" of a move that never ran the VM elsewhere).
 */
class MoveRecords extends Map<string, MigrationStats> {
  override set(name: string, st: MigrationStats): this {
    return super.set(name, reportedMigrationStats(st));
  }

  /** Records `st` and returns the record (what the move's caller is answered). */
  put(name: string, st: MigrationStats): MigrationStats {
    this.set(name, st);
    return this.get(name)!;
  }
}

export class Vmms {
  private readonly vms = new Map<string, VmRecord>();
  /** The host's cluster membership, when it has one (live migration needs it). */
  cluster: MigrationCluster | null = null;
  /** The last migration of each VM name this host took part in (source or destination), for move-status. */
  private readonly moves = new MoveRecords();
  /** Migrations from this host running now, and those waiting for a slot (Hyper-V: 2 at once). */
  private movesRunning = 0;
  /** The host is going down ("down", "cluster down"): a move that fails now failed because of it, and says so. */
  private stopping = false;
  private readonly moveQueue: Array<() => void> = [];
  readonly maxMigrations: number;
  /** Migrations this host committed as destination (an abort that arrives later is answered "committed"), on disk. */
  private readonly committed: CommittedMigrations;
  /** Tests (HVLAB_TEST_COMMIT_SILENT_MS): until when the answers about a committed migration are held back. */
  private readonly silentUntil = new Map<string, number>();
  /** Tests (HVLAB_TEST_COMMIT_SILENT_MS): the waits of heldBack, each ended early by TEST_HOLD_END_SIGNAL. */
  private readonly silentWaits = new Set<() => void>();
  /** Migrations whose commit this host refused because the guest did not resume: a repeated commit gets the same refusal. */
  private readonly notResumed = new Map<string, string>();
  /**
   * Incoming migrations this host dropped, and why, by id (the newest MAX_DROPPED_KEPT): a source
   * whose call waits at the dropped worker's own socket asks (migProbe) and fails at once, instead
   * of after its call's bound with its VM frozen.
   */
  private readonly droppedMigs = new Map<string, { from: string; why: string }>();
  private readonly paths;
  private warm: WarmPool | null = null;
  private spare: SpareWorkers | null = null;

  constructor(private readonly o: VmmsOptions) {
    this.paths = hostPaths(o.home);
    this.committed = new CommittedMigrations(o.home, o.log);
    this.maxMigrations = o.maxMigrations ?? DEFAULT_MAX_MIGRATIONS;
    if (COMMIT_SILENT_MS > 0) {
      process.on(TEST_HOLD_END_SIGNAL, () => {
        o.log.warn({ held: [...this.silentUntil.keys()] }, `every held answer goes now (${TEST_HOLD_END_SIGNAL}, test knob HVLAB_TEST_COMMIT_SILENT_MS)`);
        this.silentUntil.clear();
        for (const end of this.silentWaits) end();
        this.silentWaits.clear();
      });
    }
    const { valid, invalid } = o.store.loadAll();
    for (const f of sweepUnfinishedSaves(o.vmDir)) o.log.warn({ dir: f }, 'removed the unfinished save of a worker that died while no root was up');
    for (const c of valid) {
      const r = this.record(c);
      if (hasSavedState(o.vmDir, c.name)) r.state = EnabledState.Saved;
      this.vms.set(c.name, r);
    }
    // A bad config stays in the registry, visible and protected (never overwritten), until it
    // is fixed or deleted by name; a file whose name is no VM name cannot be addressed at all.
    for (const bad of invalid) {
      o.log.warn({ file: bad.file, why: bad.reason }, 'VM config is invalid');
      if (!VM_NAME_RE.test(bad.name)) continue;
      const r = this.record(placeholderConfig(bad.name));
      this.markInvalid(r, bad.reason);
      this.vms.set(bad.name, r);
    }
  }

  private markInvalid(r: VmRecord, why: string): void {
    r.invalid = why;
    r.state = EnabledState.Invalid;
    r.reason = `the configuration ${this.o.store.fileOf(r.config.name)} is invalid: ${why}`;
    if (r.stranded) r.reason += `; its worker still runs (pid ${r.stranded.pid}): "hvlab vm turn-off ${r.config.name}" stops it`;
  }

  /**
   * An Invalid VM is read again each time it is asked for, so a file fixed (or removed) by hand
   * takes effect without restarting the root. Returns false when the file is gone.
   */
  private recheck(r: VmRecord): boolean {
    if (r.invalid === null) return true;
    const now = this.o.store.load(r.config.name);
    if (now === null) {
      this.vms.delete(r.config.name);
      return false;
    }
    if (!now.ok) {
      if (now.reason !== r.invalid) this.markInvalid(r, now.reason);
      return true;
    }
    if (r.stranded) {
      // Its worker was left running while the file was bad: it is not this root's to manage.
      const why = 'the file is valid again, but the VM\'s worker was left running while it was not: turn the VM off, then start it again';
      if (r.invalid !== why) this.markInvalid(r, why);
      return true;
    }
    const taken = [...this.vms.values()].find((o) => o !== r && o.invalid === null && o.config.id === now.config.id);
    if (taken) {
      this.markInvalid(r, `field "id" is ${now.config.id}, the id of VM "${taken.config.name}" (a copied config needs a new id)`);
      return true;
    }
    r.config = now.config;
    r.invalid = null;
    this.setState(r, hasSavedState(this.o.vmDir, r.config.name) ? EnabledState.Saved : EnabledState.Off, 'its configuration is valid again');
    return true;
  }

  private record(config: VmConfig): VmRecord {
    return {
      config, state: EnabledState.Off, reason: null, partitionId: null, partitionPid: null, vmwpPid: null, link: null, stopWatch: null,
      runningSince: null, expectingExit: false, failure: null, exitReason: null, guestShutdown: false, booted: null,
      restoring: false, invalid: null, stranded: null, startCancelled: null, incoming: null, moving: null, adopted: null, changing: null,
    };
  }

  /** The VM of that name; one whose config is invalid is refused (with why) unless `allowInvalid`. */
  private get(name: unknown, allowInvalid = false): VmRecord {
    const n = validateName(name);
    const r = this.vms.get(n);
    if (!r || !this.recheck(r)) throw new MgmtFailure('NotFound', `VM "${n}" does not exist`);
    if (r.invalid !== null && !allowInvalid) {
      const file = this.o.store.fileOf(n);
      throw new MgmtFailure('InvalidState', `cannot use VM "${n}": its configuration ${file} is invalid: ${r.invalid}; fix or delete ${file}`);
    }
    return r;
  }

  /**
   * A call that names the VM's id too (a run removing the VM it made) is for that VM only: one of
   * the same name made since (the run's was deleted, the user made another) is not it. NotFound,
   * as the run's VM is gone; nothing changes. A VM whose config is invalid has no id to trust.
   */
  private requireId(r: VmRecord, id: string | undefined): void {
    if (id === undefined) return;
    if (r.invalid === null && r.config.id.toLowerCase() === id.toLowerCase()) return;
    throw new MgmtFailure('NotFound', `VM "${r.config.name}" here is not the VM of id ${id}${r.invalid === null ? ` (its id is ${r.config.id})` : ' (its configuration is invalid)'}: that one is gone`);
  }

  private setState(r: VmRecord, state: number, reason: string | null = null): void {
    r.state = state;
    r.reason = reason ?? r.reason;
    if (state === EnabledState.Running && r.runningSince === null) r.runningSince = Date.now();
    if (state === EnabledState.Off || state === EnabledState.Saved) r.runningSince = null;
    this.o.log.info({ vm: r.config.name, state: vmStateName(state), reason }, 'VM state changed');
    this.o.publish({ vm: r.config.name, state: vmStateName(state), enabledState: state, reason, at: Date.now() });
  }

  private requireState(r: VmRecord, allowed: number[], action: string): void {
    if (!allowed.includes(r.state)) {
      throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}": it is ${vmStateName(r.state)}`);
    }
  }

  /**
   * A config change reaches a running VM only in Running or Paused; in a state between two others
   * (a start, a stop, or a pause, resume or save whose worker has not answered) it would change the
   * file and not the VM, so it is refused.
   */
  private requireNotBetween(r: VmRecord, action: string): void {
    const between: number[] = [EnabledState.Starting, EnabledState.Stopping, EnabledState.Pausing, EnabledState.Resuming, EnabledState.Saving];
    if (between.includes(r.state)) throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}" now: it is ${vmStateName(r.state)}`);
    if (r.changing !== null) throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}" now: its worker has not answered the change of its ${r.changing} yet`);
  }

  /**
   * A move keeps the VM Running until its switch-over, and its worker freezes and thaws the VM
   * itself: a pause meanwhile was lost at the destination (or undone by a failed move's thaw), and
   * a save meanwhile was a second freeze beside the move's. Hyper-V refuses them too while a VM
   * migrates.
   */
  private requireNotMoving(r: VmRecord, action: string): void {
    this.requireNotIncoming(r, action);
    if (r.moving) {
      throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}": it is being moved to ${r.moving.to} (wait for the move, or "hvlab vm move-cancel ${r.config.name}")`);
    }
  }

  /**
   * A VM being moved here is the source's until the commit: a turn-off here let the source's move
   * run on into nothing, a start then ran the VM on both hosts, and a delete left the attempt
   * holding this host's spare worker until its watchdog. Refused, as Hyper-V refuses state changes
   * of a VM that migrates; the source can cancel the move (before a post-copy switch-over).
   */
  private requireNotIncoming(r: VmRecord, action: string): void {
    const inc = r.incoming;
    if (!inc) return;
    throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}": it is being moved here from ${inc.from} (${inc.postcopy ? 'its pages still arrive: wait for the move' : `wait for the move, or "hvlab --host ${inc.from} vm move-cancel ${r.config.name}"`})`);
  }

  /** The state now (a method call, so narrowing from an earlier check does not stick across awaits). */
  private stateOf(r: VmRecord): number {
    return r.state;
  }

  private linkOf(r: VmRecord, what: string): VmwpControlClient {
    if (!r.link) throw new MgmtFailure('InvalidState', `cannot ${what} VM "${r.config.name}": it is ${vmStateName(r.state)}`);
    return r.link;
  }

  count(): number {
    return this.vms.size;
  }

  newVm(args: Record<string, unknown>): VmInfo {
    const c = buildConfig(args);
    const known = this.vms.get(c.name);
    if (known && this.recheck(known)) {
      if (known.invalid !== null) {
        throw new MgmtFailure('AlreadyExists', `a VM config for "${c.name}" exists but is invalid: ${known.invalid}; fix or delete ${this.o.store.fileOf(c.name)}`);
      }
      throw new MgmtFailure('AlreadyExists', `VM "${c.name}" already exists`);
    }
    // A caller's id (vmNew `id`) names one VM here, as a random one does.
    const sameId = [...this.vms.values()].find((o) => o.config.id.toLowerCase() === c.id);
    if (sameId) throw new MgmtFailure('AlreadyExists', `VM "${sameId.config.name}" has id ${c.id} already`);
    // On disk first (never over an existing file); the registry only learns of what was written.
    this.saveConfig(c, true);
    const r = this.record(c);
    this.vms.set(c.name, r);
    this.o.log.info({ vm: c.name, memoryBytes: c.memoryBytes, vps: c.vps, workload: c.workload }, 'VM created');
    return this.info(r, null);
  }

  // ---- workers ----------------------------------------------------------------------------

  /**
   * Connects to a worker's control link. A worker this root spawned reports its exit (with its
   * status) through Node; one that a previous root spawned is watched by pid.
   */
  private async attachWorker(r: VmRecord, pid: number, endpoint: string, secret: string, ownChild: boolean): Promise<void> {
    r.vmwpPid = pid;
    r.link = new VmwpControlClient(endpoint, pid, (n) => this.onNote(r, n), this.o.log);
    if (!ownChild) r.stopWatch = watchPid(pid, () => void this.onWorkerGone(r, pid, null));
    await r.link.request({ t: 'hello', secret }, 10000);
  }

  /**
   * Starts the VM's worker with its config on stdin and attaches to it. The worker must not share
   * the root's fate: no pipe it depends on after start-up (stdin carries one line, then closes;
   * stderr is a file), no IPC channel. It stays in the host's session, though (not detached): Linux
   * autogroups CPU time by session, and a session per VM would change how VMs and the hypervisor's
   * scheduler thread share the machine's cores. A warm worker is taken if the pool has one (its
   * code and its partition process are loaded already).
   */
  /** Returns the device instance seed of the booted warm worker it claimed, or null when it started one. */
  private async spawnWorker(r: VmRecord, cfg: VmwpConfig, ticket: () => Promise<string>, cancelled: () => void): Promise<string | null> {
    const w = this.warm?.take(cfg) ?? null;
    if (w) {
      // A booted warm worker becomes this VM: its guest keeps the device instance ids it was
      // offered, so the VM takes the template's seed once it runs (start).
      const claim: VmwpClaim = { config: { ...cfg, instanceSeed: w.seed } };
      // Its partition is this VM's now: deleted with it if the worker dies before its record names it.
      r.partitionId = w.partitionId;
      w.onPartition = (id) => void (r.partitionId ??= id);
      const child = w.child;
      child.stdin!.end(JSON.stringify(claim) + '\n');
      child.on('exit', (code, signal) => void this.onWorkerGone(r, child.pid!, { code, signal }));
      await this.attachWorker(r, child.pid!, w.endpoint, w.secret, true);
      return w.seed;
    }
    const start: VmwpStartInput = { config: cfg, ticket: await ticket(), secret: randomBytes(24).toString('hex') };
    cancelled();
    // A spare worker has its code (and its partition process's) loaded already; else a new one.
    const child = this.spare?.take() ?? spawnVmwp({ stderrLog: join(this.paths.logDir, 'stderr.log'), hvEndpoint: this.paths.hvEndpoint, stdout: 'ignore' });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(JSON.stringify(start) + '\n');
    // While this root lives it reaps the worker; a re-attached root relies on the pid watch.
    child.on('exit', (code, signal) => void this.onWorkerGone(r, child.pid!, { code, signal }));
    await this.attachWorker(r, child.pid!, this.paths.vmwpEndpoint(cfg.id), start.secret, true);
    return null;
  }

  /**
   * Writes a VM's config with the instance seed it took from a warm worker, once the current
   * request has answered (a config write is an fsync; called as the start returns). Until then the
   * seed is in memory and in the worker's record, which a root that re-attaches reads (reattach).
   */
  private persistSeedSoon(r: VmRecord): void {
    setImmediate(() => {
      const now = this.vms.get(r.config.name);
      if (now !== r || r.invalid !== null) return;
      try {
        this.o.store.save(r.config);
      } catch (e) {
        this.o.log.error({ vm: r.config.name, err: e }, 'could not write the config with its device instance seed');
      }
    });
  }

  private onNote(r: VmRecord, n: VmwpNote): void {
    if (n.t === 'booted') {
      r.partitionId = n.partitionId;
      r.partitionPid = n.partitionPid ?? r.partitionPid;
      r.booted?.(true);
      r.booted = null;
    } else if (n.t === 'failed') {
      r.failure = n.message;
    } else if (n.t === 'exiting') {
      r.exitReason = n.reason;
      r.guestShutdown = n.guestShutdown;
    } else if (n.t === 'incomingReady') {
      r.partitionId = n.partitionId;
      if (r.incoming) r.incoming.streamPort = n.streamPort;
      r.incoming?.ready?.resolve();
      if (r.incoming) r.incoming.ready = null;
    } else if (n.t === 'migSeen') {
      if (r.incoming) r.incoming.lastSeen = Date.now();
    } else if (n.t === 'migRunning') {
      const inc = r.incoming;
      if (inc && !inc.started) this.incomingRuns(r, inc, n.postcopy);
    } else if (n.t === 'migFailed') {
      // The worker says so just before it answers the source: the drop (which ends the worker) comes
      // a moment later, so that its answer leaves first and the source hears why, not a timeout.
      const inc = r.incoming;
      if (inc && !inc.started) {
        setTimeout(() => {
          if (r.incoming === inc) void this.dropIncoming(r, `the migrated VM did not start: ${n.message}`);
        }, MIG_FAILED_GRACE_MS).unref();
      }
    } else if (n.t === 'migProgress') {
      const known = this.moves.get(r.config.name);
      const st = { ...(known ?? {}), ...n.stats };
      this.moves.set(r.config.name, st);
      // A move taken over from a previous root ends with its worker's last report: a completed one
      // is followed by the worker's exit (movedAwayUnwatched), any other leaves the VM here.
      if (r.moving?.adopted && (st.status === 'completed' || st.status === 'failed' || st.status === 'cancelled')) r.moving = null;
    } else if (n.t === 'faultEnded') {
      const m = (r.faultCounters ??= new Map());
      m.delete(n.id);
      m.set(n.id, n.stats);
      while (m.size > FAULT_COUNTERS_KEPT) m.delete(m.keys().next().value!);
    } else if (n.t === 'settled') {
      // Only for an operation this root adopted: one it asked for itself is settled by its answer.
      if (r.adopted === n.op) void this.settleAdopted(r, n);
    }
  }

  /** The end of a pause, resume or save a previous root asked for (VmRecord.adopted): the VM's state follows it. */
  private async settleAdopted(r: VmRecord, n: Extract<VmwpNote, { t: 'settled' }>): Promise<void> {
    r.adopted = null;
    // Turned off meanwhile (the only way out of these states): nothing to settle.
    if (this.stateOf(r) !== pendingState(n.op)) return;
    this.o.log.info({ vm: r.config.name, op: n.op, ok: n.ok }, 'an operation a previous root asked for ended');
    if (n.op === 'save' && n.ok && n.saved) {
      await this.kill(r, 'saved');
      this.setState(r, EnabledState.Saved, 'saved');
      return;
    }
    if (n.op === 'save') discardSavedState(this.o.vmDir, r.config.name);
    const what = n.op === 'pause' ? 'paused' : n.op === 'resume' ? 'resumed' : 'saved';
    this.setState(r, n.suspended ? EnabledState.Paused : EnabledState.Running, n.ok ? what : `not ${what}: it failed while no root watched`);
  }

  /** Whether `pid` is a live process of this host in `role` (its title and its environment say so). */
  private ourProcess(pid: number, role: 'vmwp' | 'partition'): boolean {
    if (!pidAlive(pid)) return false;
    return (procTitle(pid)?.startsWith(`hvlab-${role} ${this.o.hostId} `) ?? false) && procEnviron(pid)?.get('HVLAB_HOST_ID') === this.o.hostId;
  }

  private recordFile(name: string): string {
    return join(this.paths.vmwpDir, `${name}.json`);
  }

  private readWorkerRecord(name: string): VmwpRecord | null {
    try {
      return decodeVmwpRecord(JSON.parse(readRegularFile(this.recordFile(name), VMWP_RECORD_MAX_BYTES).toString('utf8')));
    } catch {
      return null;
    }
  }

  /** The worker of `r` is gone (however): tear down what it left and turn the VM Off with its reason. */
  private async onWorkerGone(r: VmRecord, pid: number, status: { code: number | null; signal: NodeJS.Signals | null } | null): Promise<void> {
    if (r.vmwpPid !== pid) return;
    r.vmwpPid = null;
    r.stopWatch?.();
    r.stopWatch = null;
    r.link?.close();
    r.link = null;
    const rec = this.readWorkerRecord(r.config.name);
    if (rec && rec.pid === pid) {
      if (rec.exit && !r.exitReason) {
        r.exitReason = rec.exit.reason;
        r.guestShutdown = rec.exit.guestShutdown;
      }
      r.partitionId ??= rec.partitionId;
      r.partitionPid ??= rec.partitionPid;
      rmSync(this.recordFile(r.config.name), { force: true });
    }
    const clean = r.guestShutdown;
    const why = clean
      ? 'shut down by the guest'
      : r.expectingExit
        ? (r.reason ?? 'turned off')
        : r.exitReason
          // The VMWP exits when its partition process does, and says how ("the partition
          // process was killed (SIGKILL)" / "exited with code N"): that is what happened to the
          // VM; the worker only followed it.
          ? (r.exitReason.startsWith('the partition process ') ? r.exitReason : `the worker process exited: ${r.exitReason}`)
          : `the worker process exited unexpectedly (${status ? (status.signal ?? `exit code ${status.code}`) : 'no exit status: a previous root started it'})${r.failure ? `: ${r.failure}` : ''}`;
    if (!r.expectingExit && !clean) this.o.log.warn({ vm: r.config.name, why }, 'VM worker process ended unexpectedly');
    if (r.partitionPid !== null && pidAlive(r.partitionPid)) {
      try {
        process.kill(r.partitionPid, 'SIGKILL');
      } catch { /* gone */ }
    }
    if (r.partitionId !== null && pidAlive(this.o.hvPid)) {
      // The worker may have died before tearing its partition down; the root's VID finishes it.
      await this.o.vid.call('FinalizePartition', { partitionId: r.partitionId }, 1000).catch(() => undefined);
      await this.o.vid.call('DeletePartition', { partitionId: r.partitionId }, 1000).catch(() => undefined);
    }
    r.partitionId = null;
    r.partitionPid = null;
    r.booted?.(false, why);
    r.booted = null;
    // A save it was writing when it died (SIGKILL: its own clean-up never ran): hundreds of MiB
    // that nothing else removes.
    try {
      rmSync(unfinishedSaveDir(this.o.vmDir, r.config.name, pid), { recursive: true, force: true });
    } catch (e) {
      this.o.log.warn({ vm: r.config.name, err: (e as Error).message }, 'the unfinished save of a worker that is gone could not be removed');
    }
    // A saved state marked consumed whose worker is gone, with no start of this root waiting to
    // give it back (r.restoring): a worker resumed (or began to) from it, so it is used up, as the
    // re-attach sweep decides for workers that died while no root was up. This covers a worker
    // that dies while this root is re-attaching to it.
    if (!r.restoring && r.invalid === null && isSavedStateConsumed(this.o.vmDir, r.config.name)) {
      this.o.log.warn({ vm: r.config.name }, 'discarding a saved state that a VM already resumed from');
      discardSavedState(this.o.vmDir, r.config.name);
    }
    if (r.state !== EnabledState.Saved) this.setState(r, EnabledState.Off, why);
    if (!r.moving && r.exitReason?.startsWith(VMWP_EXIT_MIGRATED)) this.movedAwayUnwatched(r, r.exitReason.slice(VMWP_EXIT_MIGRATED.length));
    // A VM being moved in whose worker ended (its guest failed to resume, say): the attempt is over
    // now, not when the source's stream has been silent for 30 s (its name was taken until then).
    if (r.incoming) await this.dropIncoming(r, `its worker ended: ${why}`);
  }

  /**
   * A VM whose worker finished a move while no move of this root waited for it (the root that
   * asked was restarted meanwhile): it runs on `to`, so it goes from this host as the move would
   * have taken it. Kept, its Off copy here could be started again beside the one running there.
   */
  private movedAwayUnwatched(r: VmRecord, to: string): void {
    const name = r.config.name;
    if (this.vms.get(name) !== r) return;
    this.o.store.remove(name);
    discardSavedState(this.o.vmDir, name);
    this.vms.delete(name);
    this.o.log.warn({ vm: name, to }, 'VM moved away while no root of this host watched the move: its copy here is gone');
  }

  /**
   * Re-attaches to the workers that kept running while no root was up (after a crash of this
   * process): reads their records, connects, asks each for its VM's state. Records of dead workers
   * are cleaned up, and partitions that no live worker owns are deleted.
   */
  async reattach(): Promise<void> {
    let files: string[] = [];
    try {
      files = readdirSync(this.paths.vmwpDir).filter((f) => f.endsWith('.json'));
    } catch { /* none yet */ }
    const owned = new Set<string>();
    // By id as well: a VM that took a booted warm worker runs in a partition named for its template.
    const ownedIds = new Set<number>();
    for (const f of files) {
      const file = join(this.paths.vmwpDir, f);
      let rec: VmwpRecord;
      try {
        rec = decodeVmwpRecord(JSON.parse(readRegularFile(file, VMWP_RECORD_MAX_BYTES).toString('utf8')));
      } catch (e) {
        this.o.log.warn({ file, why: (e as Error).message }, 'removing an unreadable worker record');
        rmSync(file, { force: true });
        continue;
      }
      // The record's pids are believed only for processes of this host in the roles it says (a
      // record edited to name another process's pid made a turn-off kill that process).
      const worker = this.ourProcess(rec.pid, 'vmwp');
      // A VM without a config here may be an incoming migration's, taken over from its record.
      const r = this.vms.get(rec.name) ?? (worker ? this.adoptIncoming(rec) ?? undefined : undefined);
      const partition = rec.partitionPid !== null && this.ourProcess(rec.partitionPid, 'partition');
      if (worker && r && r.invalid !== null) {
        // Its config file was damaged while no root was up: the VM keeps running (a root restart
        // stops no VM), its partition is kept, and a turn-off stops it. It used to be killed here,
        // its partition taken for an orphan.
        r.stranded = { pid: rec.pid, partitionPid: partition ? rec.partitionPid : null, partitionId: rec.partitionId };
        this.markInvalid(r, r.invalid);
        owned.add(rec.name);
        if (rec.partitionId !== null) ownedIds.add(rec.partitionId);
        this.o.log.warn({ vm: rec.name, pid: rec.pid, why: r.invalid }, 'a running VM\'s configuration is invalid: its worker is left running until a turn-off');
        continue;
      }
      if (!worker || !r || r.config.id !== rec.id) {
        if (!worker && pidAlive(rec.pid)) this.o.log.warn({ file, pid: rec.pid }, 'a worker record names a process that is not one of this host\'s workers: left alone');
        // Its worker finished a move while no root was up: the VM runs on the destination.
        if (!worker && r && r.config.id === rec.id && rec.exit?.reason.startsWith(VMWP_EXIT_MIGRATED)) {
          this.movedAwayUnwatched(r, rec.exit.reason.slice(VMWP_EXIT_MIGRATED.length));
        }
        // A worker for a VM this registry does not know (its config was removed): stop it.
        if (worker) try { process.kill(rec.pid, 'SIGKILL'); } catch { /* gone */ }
        if (partition) try { process.kill(rec.partitionPid!, 'SIGKILL'); } catch { /* gone */ }
        rmSync(file, { force: true });
        continue;
      }
      if (rec.partitionPid !== null && !partition) rec.partitionPid = null;
      owned.add(rec.name);
      if (rec.partitionId !== null) ownedIds.add(rec.partitionId);
      if (rec.instanceSeed && r.config.instanceSeed !== rec.instanceSeed) {
        // The previous root gave this VM a warm worker's seed and died before writing its config.
        r.config = { ...r.config, instanceSeed: rec.instanceSeed };
        this.persistSeedSoon(r);
      }
      r.partitionId = rec.partitionId;
      r.partitionPid = rec.partitionPid;
      try {
        await this.attachWorker(r, rec.pid, rec.endpoint, rec.secret, false);
        const d = await r.link!.request({ t: 'describe' }, 5000);
        r.partitionId = d.partitionId || r.partitionId;
        r.partitionPid = d.partitionPid ?? r.partitionPid;
        r.runningSince = d.runningSince;
        if (r.incoming) {
          this.resumeIncoming(r, r.incoming, d);
          continue;
        }
        const pending = decodePendingOp(d.pending);
        // A move from here that the previous root asked for runs on in the worker (a move in doubt
        // can run for long): this root takes it over, so that move-status, move-cancel and the
        // refusals of other operations know of it. Its end comes in the worker's notes.
        const mv = decodeDescribedMove(d.moving);
        if (mv !== null && r.link) {
          const l = r.link;
          r.moving = {
            mig: mv.mig, to: mv.to, started: true, cancelled: null, adopted: true,
            cancel: async (why, force) => await l.request({ t: 'migCancel', reason: why, ...(force ? { force: true } : {}) }, 5000).then(() => null, (e) => e instanceof VmwpLinkError && e.code === MIG_CANCEL_TOO_LATE ? e.message : null),
          };
          this.o.log.warn({ vm: r.config.name, to: mv.to, mig: mv.mig }, 're-attached to a worker whose VM is being moved: its move goes on');
        }
        if (d.saved) {
          // The root died between writing a saved state and turning the VM off: finish that.
          r.state = EnabledState.Saving;
          await this.kill(r, 'saved');
          this.setState(r, EnabledState.Saved, 'saved');
        } else if (pending !== null && d.booted) {
          // A pause, resume or save the previous root asked for is still running: its note (said
          // before its answer, which went to that root) decides the state. One that ended between
          // the description and this line said so already, and is asked for again.
          r.adopted = pending;
          this.setState(r, pendingState(pending), `re-attached during a ${pending}`);
          const again = await r.link!.request({ t: 'describe' }, 5000);
          if (r.adopted === pending && decodePendingOp(again.pending) === null) {
            const suspended = again.suspended === true;
            const saved = again.saved === true;
            void this.settleAdopted(r, { t: 'settled', op: pending, ok: pending === 'pause' ? suspended : pending === 'resume' ? !suspended : saved, suspended, saved });
          }
        } else if (!d.booted) {
          r.restoring = d.restored;
          this.setState(r, EnabledState.Starting, 're-attached while starting');
          this.awaitBoot(r).then(
            () => {
              if (r.restoring) discardSavedState(this.o.vmDir, r.config.name);
              r.restoring = false;
              this.setState(r, EnabledState.Running, d.restored ? 'restored from saved state' : 'started');
            },
            () => {
              // The previous root handed the saved state over; whether the guest ran from it is
              // unknown, so it is not brought back.
              if (r.restoring) discardSavedState(this.o.vmDir, r.config.name);
              r.restoring = false;
            },
          );
        } else {
          // It runs from the saved state it was started with (marked consumed): that one is used up.
          if (d.restored) discardSavedState(this.o.vmDir, r.config.name);
          this.setState(r, d.suspended ? EnabledState.Paused : EnabledState.Running, 're-attached after a root restart');
          // Not waited for: the re-attach of the other VMs, and this root's readiness, go on.
          void this.reapplyConfig(r);
        }
        this.o.log.info({ vm: r.config.name, pid: rec.pid, state: vmStateName(r.state) }, 're-attached to a running VM');
      } catch (e) {
        this.o.log.error({ vm: r.config.name, err: e }, 'could not re-attach to a worker; turning it off');
        r.expectingExit = true;
        r.reason = 'turned off: the worker could not be re-attached';
        try { process.kill(rec.pid, 'SIGKILL'); } catch { /* gone */ }
        // Torn down now, before this root answers anyone: left to the pid watch, its teardown could
        // land on a start of the VM made meanwhile (and fail that start's wait for its boot).
        for (let i = 0; i < 100 && pidAlive(rec.pid); i++) await new Promise((res) => setTimeout(res, 20));
        await this.onWorkerGone(r, rec.pid, null);
        // Not this root's: the sweeps below discard a saved state it resumed from and delete its
        // partition.
        owned.delete(r.config.name);
        if (rec.partitionId !== null) ownedIds.delete(rec.partitionId);
      }
    }
    // Records of incoming migrations no live worker took over: their attempts ended with the root
    // that made them (the worker gone, or stopped above).
    for (const name of incomingRecordNames(this.o.home)) {
      if (this.vms.get(name)?.incoming) continue;
      this.o.log.warn({ vm: name }, 'removing the record of an incoming migration whose worker is gone');
      removeIncomingRecord(this.o.home, name);
    }
    // A saved state marked consumed whose VM no worker runs: the VM resumed (or began to) from
    // it while a previous root went away; it is used up, never resumed again.
    for (const r of this.vms.values()) {
      if (owned.has(r.config.name) || r.invalid !== null || !isSavedStateConsumed(this.o.vmDir, r.config.name)) continue;
      this.o.log.warn({ vm: r.config.name }, 'discarding a saved state that a VM already resumed from');
      discardSavedState(this.o.vmDir, r.config.name);
    }
    // Partitions whose worker is gone are orphans: the root's VID deletes them.
    const stats = (await this.o.vid.ctl('stats').catch(() => null)) as { partitions?: Array<{ id: number; name: string }> } | null;
    for (const p of stats?.partitions ?? []) {
      if (p.id === 1 || owned.has(p.name) || ownedIds.has(p.id)) continue;
      this.o.log.warn({ partition: p.id, name: p.name }, 'deleting an orphaned partition');
      await this.o.vid.call('FinalizePartition', { partitionId: p.id }, 1000).catch(() => undefined);
      await this.o.vid.call('DeletePartition', { partitionId: p.id }, 1000).catch(() => undefined);
    }
  }

  private awaitBoot(r: VmRecord): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(false, `no boot within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS);
      const finish = (ok: boolean, why?: string): void => {
        clearTimeout(timer);
        if (ok) resolve();
        else reject(new MgmtFailure('StartFailed', `VM "${r.config.name}" failed to start: ${why}`));
      };
      r.booted = finish;
    });
  }

  async start(name: unknown): Promise<VmInfo> {
    const r = this.get(name);
    this.requireNotIncoming(r, 'start');
    this.requireState(r, [EnabledState.Off, EnabledState.Saved], 'start');
    this.admitReserve(r, r.config.processor.reserve, r.config.vps, 'start');
    const restore = r.state === EnabledState.Saved;
    if (restore) {
      // Used once: consumed on disk before the guest can run from it, so neither a turn-off
      // during the restore nor a root restart in between can bring this snapshot back.
      try {
        markSavedStateConsumed(this.o.vmDir, r.config.name);
      } catch (e) {
        throw new MgmtFailure('StorageFailed', `VM "${r.config.name}" was not started: ${(e as Error).message}`);
      }
    }
    this.setState(r, EnabledState.Starting, null);
    r.reason = null;
    r.expectingExit = false;
    r.guestShutdown = false;
    r.failure = null;
    r.exitReason = null;
    r.restoring = restore;
    r.startCancelled = null;
    const booted = this.awaitBoot(r);
    booted.catch(() => undefined);
    let claimedSeed: string | null = null;
    try {
      const cfg: VmwpConfig = {
        home: this.o.home, hostId: this.o.hostId, hvPid: this.o.hvPid, name: r.config.name, id: r.config.id,
        memoryBytes: r.config.memoryBytes, vps: r.config.vps, workload: r.config.workload, processor: r.config.processor,
        rtcOffsetS: r.config.rtcOffsetS ?? 0, vmDir: this.o.vmDir, restore,
        devices: vmDevices(r.config), vmbusTransport: this.o.vmbusTransport,
      };
      if (r.config.instanceSeed) cfg.instanceSeed = r.config.instanceSeed;
      const checkCancelled = (): void => {
        if (r.startCancelled !== null) throw new MgmtFailure('StartFailed', `VM "${r.config.name}" was ${r.startCancelled} while starting`);
      };
      checkCancelled();
      // A spare's replacement loads once this start is done, not beside it.
      const releaseSpare = this.spare?.hold() ?? null;
      try {
        claimedSeed = await this.spawnWorker(r, cfg, () => this.o.vid.ticket(), checkCancelled);
        await booted;
      } finally {
        releaseSpare?.();
      }
    } catch (e) {
      r.expectingExit = true;
      if (r.vmwpPid !== null) {
        try { process.kill(r.vmwpPid, 'SIGKILL'); } catch { /* gone */ }
      }
      for (let i = 0; i < 100 && this.stateOf(r) !== EnabledState.Off; i++) await new Promise((res) => setTimeout(res, 20));
      // A start from a saved state that failed on its own (before the guest ran) leaves the VM
      // Saved; one that was turned off or stopped meanwhile has discarded it (kill does that).
      let keepSaved = r.restoring;
      r.restoring = false;
      if (keepSaved) {
        try {
          unmarkSavedStateConsumed(this.o.vmDir, r.config.name);
        } catch (u) {
          this.o.log.error({ vm: r.config.name, err: u }, 'could not give the saved state back; discarding it');
          discardSavedState(this.o.vmDir, r.config.name);
        }
        keepSaved = hasSavedState(this.o.vmDir, r.config.name);
      }
      if (keepSaved) this.setState(r, EnabledState.Saved, `start failed: ${(e as Error).message}`);
      else if (this.stateOf(r) !== EnabledState.Off) this.setState(r, EnabledState.Off, (e as Error).message);
      throw e instanceof MgmtFailure ? e : new MgmtFailure('StartFailed', `VM "${r.config.name}" failed to start: ${(e as Error).message}`);
    }
    if (restore) {
      // Hyper-V deletes the saved state once the VM runs from it.
      discardSavedState(this.o.vmDir, r.config.name);
    }
    r.restoring = false;
    if (claimedSeed !== null && r.config.instanceSeed !== claimedSeed) {
      r.config = { ...r.config, instanceSeed: claimedSeed };
      this.persistSeedSoon(r);
    }
    this.setState(r, EnabledState.Running, restore ? 'restored from saved state' : 'started');
    return this.info(r, null);
  }

  /**
   * Save-VM: the VMWP suspends the partition, waits until every VP stopped at a step boundary and
   * writes memory, VP, APIC, SynIC, timer and device state under HVLAB_HOME; then the VM is
   * turned off and becomes Saved. `vm start` continues it exactly there.
   */
  async save(name: unknown): Promise<VmInfo> {
    const r = this.get(name);
    this.requireNotMoving(r, 'save');
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'save');
    const from = r.state;
    const link = this.linkOf(r, 'save');
    this.setState(r, EnabledState.Saving, null);
    const settled = link.request({ t: 'save' }, WORKER_WEDGED_MS).then(
      async () => {
        if (this.stateOf(r) !== EnabledState.Saving) {
          // Turned off while it saved: the saved state is not kept (as a turn-off of a Saved VM).
          discardSavedState(this.o.vmDir, r.config.name);
          throw new MgmtFailure('SaveFailed', `VM "${r.config.name}" was turned off while it was being saved`);
        }
        await this.kill(r, 'saved');
        this.setState(r, EnabledState.Saved, 'saved');
      },
      async (e: unknown) => {
        // A wedged worker is gone before its saved state is discarded: it could still finish
        // writing one, which would come back as Saved at the next root start.
        if (e instanceof VmwpLinkError && e.timedOut) await this.wedged(r, 'save');
        else if (this.stateOf(r) === EnabledState.Saving && !workerGone(e)) this.setState(r, from, null);
        discardSavedState(this.o.vmDir, r.config.name);
        throw new MgmtFailure('SaveFailed', `VM "${r.config.name}" could not be saved: ${(e as Error).message}`);
      },
    );
    await this.untilAnswered(r, settled, SAVE_ANSWER_MS, 'save', EnabledState.Saving);
    return this.info(r, null);
  }

  /**
   * Waits for what a worker's answer to a pause, resume or save settles (`settled`: the VM's state
   * follows that answer whenever it comes, and nothing else sets it meanwhile: the VM stays in its
   * transitional state `via`, which the other operations refuse, and only a turn-off leaves it).
   * The caller hears within `ms`: the outcome, or a Timeout failure that says so. The root used
   * to take a late answer for none and set the state back, while the worker could still finish:
   * then the VM was paused (or saved and stopped) behind a root that said Running.
   */
  private async untilAnswered(r: VmRecord, settled: Promise<void>, ms: number, verb: string, via: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((res) => (timer = setTimeout(() => res('late'), ms)));
    try {
      if ((await Promise.race([settled.then(() => 'done' as const), late])) === 'done') return;
    } finally {
      clearTimeout(timer);
    }
    const name = r.config.name;
    settled.then(
      () => this.o.log.info({ vm: name, verb, state: vmStateName(r.state) }, 'a late answer to a request settled the VM\'s state'),
      (e: unknown) => this.o.log.warn({ vm: name, verb, state: vmStateName(r.state), err: (e as Error).message }, 'a late answer to a request failed it'),
    );
    throw new MgmtFailure('Timeout', `the ${verb} of VM "${name}" did not finish within ${ms / 1000} s: it stays ${vmStateName(via)} until its worker answers (or "hvlab vm turn-off ${name}")`);
  }

  /** A worker that answered nothing to a pause, resume or save within WORKER_WEDGED_MS: its VM is turned off. */
  private async wedged(r: VmRecord, verb: string): Promise<void> {
    const why = `turned off: its worker answered no ${verb} within ${WORKER_WEDGED_MS / 60000} min`;
    this.o.log.error({ vm: r.config.name, verb }, why);
    if (r.vmwpPid !== null) await this.kill(r, why);
  }

  /** Whether a VM holds its processor reserve now: it has (or is getting) a worker and a partition. */
  private holdsReserve(r: VmRecord): boolean {
    return r.invalid === null && r.state !== EnabledState.Off && r.state !== EnabledState.Saved;
  }

  /**
   * Admission of a processor reserve, as Hyper-V's: a VM starts (or takes a higher reserve, or
   * comes in by migration) only if every running VM's reserve, in % of one LP (reserve × VPs), fits
   * the host's LPs together with its own. Two VMs of 2 VPs at --reserve 100 both started on 2 LPs
   * before, and each got half of what it was promised.
   */
  private admitReserve(r: VmRecord | null, reserve: number, vps: number, action: string, name = r?.config.name ?? ''): void {
    const lps = this.o.lps;
    if (!lps || reserve === 0) return;
    let others = 0;
    for (const o of this.vms.values()) if (o !== r && this.holdsReserve(o)) others += o.config.processor.reserve * o.config.vps;
    const want = reserve * vps;
    if (others + want <= 100 * lps) return;
    throw new MgmtFailure('InsufficientResources', `cannot ${action} VM "${name}": its processor reserve (${reserve} % of ${vps} VP${vps === 1 ? '' : 's'}, ${want} % of one LP) and the ${others} % the running VMs reserve exceed the host's ${lps} LP${lps === 1 ? '' : 's'} (${100 * lps} %)`);
  }

  /** Set-VMProcessor: reserve %, maximum % and relative weight, on a stopped or running VM. */
  async setProcessor(name: unknown, args: { reserve?: unknown; maximum?: unknown; weight?: unknown }): Promise<VmInfo> {
    const r = this.get(name);
    const pick = (v: unknown, what: string, min: number, max: number, cur: number): number => {
      if (v === undefined || v === null) return cur;
      const n = Number(v);
      if (!/^\d+$/.test(String(v)) || n < min || n > max) throw new MgmtFailure('InvalidArgument', `${what} ${String(v)} is invalid: a whole number from ${min} to ${max}`);
      return n;
    };
    this.requireNotIncoming(r, 'change the processor settings of');
    this.requireNotBetween(r, 'change the processor settings of');
    const p = r.config.processor;
    const next = {
      reserve: pick(args.reserve, '--reserve', 0, 100, p.reserve),
      maximum: pick(args.maximum, '--maximum', 1, 100, p.maximum),
      weight: pick(args.weight, '--weight', 1, 10000, p.weight),
    };
    if (next.reserve > next.maximum) throw new MgmtFailure('InvalidArgument', `reserve ${next.reserve}% is above maximum ${next.maximum}%`);
    if (this.holdsReserve(r)) this.admitReserve(r, next.reserve, r.config.vps, 'give that reserve to');
    const live = r.link && (r.state === EnabledState.Running || r.state === EnabledState.Paused) ? r.link : null;
    await this.changeConfig(r, { ...r.config, processor: next }, 'processor settings', live && ((ms) => live.request({ t: 'processor', ...next }, ms)));
    this.o.log.info({ vm: r.config.name, ...next }, 'processor settings changed');
    return this.info(r, null);
  }

  /**
   * A re-attached VM's config, to its worker again: the processor settings, and each integration
   * service enabled or disabled as the config says. A change goes to disk first and then to the
   * worker (changeConfig); a root that died between the two left a VM that ran under its old
   * reserve, cap and weight, or with a service the config had turned off (or without one it had
   * turned on), while `vm list` and `vm ic` showed the config, and no later root would ever send
   * the change. The worker's `processor` sets all three settings (idempotent); a service is
   * changed only where the worker's list differs. A refusal is logged: the VM runs on as it was.
   * Sent to a VM re-attached Running or Paused with no operation of the old root's in progress (a
   * worker in the middle of a pause would answer only after it, and the re-attach must not wait).
   */
  private async reapplyConfig(r: VmRecord): Promise<void> {
    const link = r.link;
    if (!link) return;
    const warn = (what: string, e: unknown): void => this.o.log.warn({ vm: r.config.name, err: (e as Error).message }, `could not apply the configured ${what} to a re-attached VM`);
    await link.request({ t: 'processor', ...r.config.processor }, 5000).catch((e) => warn('processor settings', e));
    const running = await link.request({ t: 'ic', enable: null, disable: null }, 5000).catch((e) => void warn('integration services', e));
    if (!Array.isArray(running)) return;
    for (const d of vmDevices(r.config)) {
      if (!DEVICE_CLASSES[d.class].integrationService) continue;
      const now = running.find((e) => e?.service === d.class);
      if (!now || now.enabled === d.enabled || r.link !== link) continue;
      await link.request({ t: 'ic', enable: d.enabled ? d.class : null, disable: d.enabled ? null : d.class }, 10000).then(
        () => this.o.log.info({ vm: r.config.name, service: d.class, enabled: d.enabled }, 'integration service set as the config says (a change the previous root had not sent)'),
        (e) => warn(`${d.class} integration service`, e),
      );
    }
  }

  /** Writes a config; a failed write is logged (a full disk should show in the log) and thrown. */
  private saveConfig(c: VmConfig, create = false): void {
    try {
      if (create) this.o.store.create(c);
      else this.o.store.save(c);
    } catch (e) {
      if (e instanceof MgmtFailure && e.code === 'StorageFailed') this.o.log.warn({ vm: c.name, why: e.message }, 'VM configuration not written; nothing changed');
      throw e;
    }
  }

  /**
   * A configuration change: on disk first (a failed write throws StorageFailed and changes
   * nothing), then to the running VM, then in memory. If the running VM refuses it, the old
   * config goes back on disk, so memory, disk and the VM agree whatever fails.
   *
   * The worker's answer decides, however late it comes (as for a pause: `untilAnswered`). The
   * caller hears within SUSPEND_ANSWER_MS, with a Timeout that says the change is on disk and takes
   * effect when the worker answers; meanwhile `changing` refuses another change. The root used to
   * give up after 10 s and put the old config back while the worker could still apply the change:
   * then the VM ran under settings that neither memory nor disk showed.
   */
  private async changeConfig<T>(r: VmRecord, next: VmConfig, what: string, applyLive: ((timeoutMs: number) => Promise<T>) | null): Promise<T | null> {
    const old = r.config;
    this.saveConfig(next);
    if (!applyLive) {
      r.config = next;
      return null;
    }
    r.changing = what;
    const settled = applyLive(WORKER_WEDGED_MS).then(
      (out) => {
        r.changing = null;
        r.config = next;
        return out;
      },
      async (e: unknown) => {
        r.changing = null;
        if (e instanceof VmwpLinkError && e.timedOut) await this.wedged(r, `change of its ${what}`);
        const f = linkFailure(e, `VM "${old.name}"`);
        if (workerGone(e)) {
          // The VM stopped under the change (turned off, its worker killed): nothing runs that
          // could disagree, and a stopped VM's change is its next start's, as on an Off VM.
          r.config = next;
          throw new MgmtFailure(f.code, `${f.message}; the VM is not running, and the change is kept for its next start`);
        }
        try {
          this.o.store.save(old);
        } catch (w) {
          this.o.log.error({ vm: old.name, err: w }, 'could not put the old configuration back after the VM refused a change');
          throw new MgmtFailure(f.code, `${f.message}; and the old configuration could not be put back: ${(w as Error).message}`);
        }
        throw f;
      },
    );
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((res) => (timer = setTimeout(() => res('late'), SUSPEND_ANSWER_MS)));
    try {
      const first = await Promise.race([settled.then((out) => ({ out })), late]);
      if (first !== 'late') return first.out;
    } finally {
      clearTimeout(timer);
    }
    settled.then(
      () => this.o.log.info({ vm: old.name, change: what }, 'a late answer applied a configuration change'),
      (e: unknown) => this.o.log.warn({ vm: old.name, change: what, err: (e as Error).message }, 'a late answer refused a configuration change: the old configuration is back'),
    );
    throw new MgmtFailure('Timeout', `the change of the ${what} of VM "${old.name}" was not answered within ${SUSPEND_ANSWER_MS / 1000} s: it is on disk and takes effect when its worker answers (the old settings come back if it refuses)`);
  }

  async turnOff(name: unknown, reason = 'turned off', id?: string): Promise<VmInfo> {
    const stranded = this.get(name, true);
    this.requireId(stranded, id);
    if (stranded.invalid !== null && stranded.stranded) return await this.stopStranded(stranded);
    const r = this.get(name);
    // A VM moving away may be turned off (the move fails and the destination is told); one moving here may not.
    this.requireNotIncoming(r, 'turn off');
    if (r.state === EnabledState.Saved) {
      // Turning off a saved VM discards its saved state (as Stop-VM -TurnOff does).
      discardSavedState(this.o.vmDir, r.config.name);
      this.setState(r, EnabledState.Off, 'saved state discarded');
      return this.info(r, null);
    }
    // Also from a stop, pause, resume or save that has not finished (a guest shutting down, untilAnswered).
    this.requireState(r, [EnabledState.Running, EnabledState.Paused, EnabledState.Starting, EnabledState.Stopping, EnabledState.Pausing, EnabledState.Resuming, EnabledState.Saving], 'turn off');
    await this.kill(r, reason);
    return this.info(r, null);
  }

  private async kill(r: VmRecord, reason: string): Promise<void> {
    r.adopted = null;
    if (r.restoring) {
      // Turned off (or stopped) while resuming from a saved state: as Stop-VM -TurnOff of a saved
      // VM, the saved state is discarded, so nothing can later resume that old snapshot.
      discardSavedState(this.o.vmDir, r.config.name);
      r.restoring = false;
    }
    const pid = r.vmwpPid;
    if (pid === null) {
      if (r.state === EnabledState.Starting) {
        // No worker yet (start is still asking for a ticket): stop the start before it spawns one.
        r.startCancelled = reason;
        r.expectingExit = true;
        this.setState(r, EnabledState.Off, reason);
      }
      return;
    }
    r.expectingExit = true;
    r.reason = reason;
    this.setState(r, EnabledState.Stopping, reason);
    await r.link?.request({ t: 'turnOff', reason }, TURN_OFF_ANSWER_MS).catch(() => undefined);
    const t = setTimeout(() => {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }, TURN_OFF_EXIT_MS);
    // onWorkerGone finishes the teardown and sets Off; wait for it.
    for (let i = 0; i < 300 && r.vmwpPid === pid; i++) await new Promise((res) => setTimeout(res, 20));
    clearTimeout(t);
    for (let i = 0; i < 100 && r.state !== EnabledState.Off; i++) await new Promise((res) => setTimeout(res, 20));
  }

  /**
   * Stop-VM: asks the guest through the shutdown integration service and returns once the VM is
   * Off. Without an answer within the timeout it fails with a clear message, unless `force`, which
   * then turns the VM off.
   */
  async stop(name: unknown, opts: { force?: unknown; timeoutS?: unknown } = {}): Promise<VmInfo> {
    const r = this.get(name);
    // During a move its worker holds the guest (a freeze, a blackout): a stop landed in the blackout
    // said Off here while the VM ran on at the destination. Turn-off stays (it fails the move).
    this.requireNotMoving(r, 'stop');
    const force = opts.force === true;
    const timeoutS = opts.timeoutS === undefined || opts.timeoutS === null ? DEFAULT_STOP_TIMEOUT_S : Number(opts.timeoutS);
    if (!Number.isFinite(timeoutS) || timeoutS <= 0 || timeoutS > 3600) throw new MgmtFailure('InvalidArgument', `stop timeout ${String(opts.timeoutS)} is invalid: 1 to 3600 seconds`);
    // A guest already shutting down (a stop that timed out) can still be forced off.
    this.requireState(r, force ? [EnabledState.Running, EnabledState.Paused, EnabledState.Starting, EnabledState.Stopping] : [EnabledState.Running, EnabledState.Paused, EnabledState.Starting], 'stop');
    const fail = async (why: string): Promise<VmInfo> => {
      if (force) {
        await this.kill(r, `turned off by vm stop --force: ${why}`);
        return this.info(r, null);
      }
      throw new MgmtFailure('Timeout', `VM "${r.config.name}" did not shut down: ${why}; use --force to turn it off`);
    };
    if (r.state === EnabledState.Stopping) return await fail('its guest is shutting down');
    // A guest that cannot be asked (Starting, Paused) is said so at once, as other commands say
    // a state, not as a shutdown that "did not" happen: no request was made.
    if (!force && (r.state === EnabledState.Starting || r.state === EnabledState.Paused)) {
      throw new MgmtFailure('InvalidState', `cannot stop VM "${r.config.name}": it is ${vmStateName(r.state)}, so its guest cannot be asked to shut down${r.state === EnabledState.Paused ? ' ("hvlab vm resume" first)' : ''}; use --force to turn it off`);
    }
    if (r.state !== EnabledState.Running || !r.link || !vmDevices(r.config).some((d) => d.class === 'shutdown' && d.enabled)) {
      return await fail(r.state === EnabledState.Running ? 'the shutdown integration service is not available' : `it is ${vmStateName(r.state)}`);
    }
    const deadline = Date.now() + timeoutS * 1000;
    this.setState(r, EnabledState.Stopping, 'shutdown requested');
    try {
      // The guest has the whole --timeout to answer; it was given at most 10 s, whatever was asked.
      await r.link.request({ t: 'shutdown', timeoutS: Math.ceil(timeoutS) }, timeoutS * 1000 + 2000);
    } catch (e) {
      if (this.stateOf(r) === EnabledState.Stopping) this.setState(r, EnabledState.Running, null);
      return await fail((e as Error).message);
    }
    while (this.stateOf(r) !== EnabledState.Off && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    if (this.stateOf(r) !== EnabledState.Off) {
      // The guest said yes and is shutting down: that cannot be taken back, so the VM stays
      // Stopping until it is off (it used to go back to Running, and then turn Off a moment later).
      if (force) return await fail('its guest was not off in time');
      throw new MgmtFailure('Timeout', `VM "${r.config.name}" is not off yet: its guest accepted the shutdown but was not off within ${timeoutS} s; it stays Stopping until it is (or "hvlab vm turn-off ${r.config.name}", or "vm stop --force")`);
    }
    return this.info(r, null);
  }

  /** Turns off the worker an Invalid VM kept through a root restart (see `stranded`). */
  private async stopStranded(r: VmRecord): Promise<VmInfo> {
    const s = r.stranded!;
    for (const pid of [s.pid, s.partitionPid]) {
      if (pid !== null && (this.ourProcess(pid, 'vmwp') || this.ourProcess(pid, 'partition'))) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    if (s.partitionId !== null) {
      await this.o.vid.call('FinalizePartition', { partitionId: s.partitionId }, 1000).catch(() => undefined);
      await this.o.vid.call('DeletePartition', { partitionId: s.partitionId }, 1000).catch(() => undefined);
    }
    rmSync(this.recordFile(r.config.name), { force: true });
    r.stranded = null;
    this.markInvalid(r, r.invalid!);
    this.o.log.info({ vm: r.config.name }, 'the worker of a VM with an invalid configuration was turned off');
    return this.info(r, null);
  }

  /** Get-VMIntegrationService, and Enable/Disable-VMIntegrationService (hot add / remove). */
  async ic(name: unknown, args: { enable?: unknown; disable?: unknown } = {}): Promise<IcEntry[]> {
    const r = this.get(name);
    const pick = (v: unknown): string | null => {
      if (v === undefined || v === null) return null;
      if (typeof v !== 'string' || !(INTEGRATION_SERVICES as readonly string[]).includes(v)) throw new MgmtFailure('InvalidArgument', `integration service "${String(v)}" is unknown: use ${INTEGRATION_SERVICES.join(', ')}`);
      if (!vmDevices(r.config).some((d) => d.class === v)) throw new MgmtFailure('InvalidArgument', `VM "${r.config.name}" has no ${v} device (see "devices" in its config)`);
      return v;
    };
    const enable = pick(args.enable);
    const disable = pick(args.disable);
    if (enable && disable) throw new MgmtFailure('InvalidArgument', 'give --enable or --disable, not both');
    const change = enable ?? disable;
    if (change) this.requireNotIncoming(r, 'change the integration services of');
    if (change) this.requireNotBetween(r, 'change the integration services of');
    const live = r.link && (r.state === EnabledState.Running || r.state === EnabledState.Paused) ? r.link : null;
    if (change) {
      const on = enable !== null;
      const res = await this.changeConfig(r, withIntegrationService(r.config, change, on), `${change} integration service`, live && ((ms) => live.request({ t: 'ic', enable, disable }, ms)));
      this.o.log.info({ vm: r.config.name, service: change, enabled: on }, 'integration service changed');
      if (res && on && live) return await this.icSettled(r, live, change, res);
      if (res) return res;
    }
    if (live) return await live.request({ t: 'ic', enable, disable }, 10000).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
    return vmDevices(r.config)
      .filter((d) => DEVICE_CLASSES[d.class].integrationService)
      .map((d) => ({ service: d.class, enabled: d.enabled, status: 'NoContact' as const, version: null }));
  }

  /**
   * An integration service enabled on a running VM answers once its guest has opened the channel
   * and negotiated (or within IC_ENABLE_SETTLE_MS, as it then stands): answered at once, it showed
   * NoContact, as if the enable had failed, for the second or two the guest takes.
   */
  private async icSettled(r: VmRecord, live: VmwpControlClient, service: string, first: IcEntry[]): Promise<IcEntry[]> {
    let list = first;
    const until = Date.now() + IC_ENABLE_SETTLE_MS;
    while (list.find((e) => e.service === service)?.status === 'NoContact' && Date.now() < until && r.link === live) {
      await new Promise((res) => setTimeout(res, 100));
      const next = await live.request({ t: 'ic', enable: null, disable: null }, 5000).catch(() => null);
      if (!next) break;
      list = next;
    }
    return list;
  }

  /** KVP exchange: every operation asks the guest over its channel (in the VM's worker). */
  async kvp(name: unknown, args: { op?: unknown; pool?: unknown; key?: unknown; value?: unknown }): Promise<unknown> {
    const r = this.get(name);
    const op = typeof args.op === 'string' ? args.op : '';
    if (op !== 'set' && op !== 'get' && op !== 'delete' && op !== 'list') throw new MgmtFailure('InvalidArgument', `KVP operation "${String(args.op)}" is unknown: use set, get, delete or list`);
    const pool = args.pool === undefined || args.pool === null ? 'external' : args.pool;
    if (typeof pool !== 'string' || !['external', 'guest', 'auto'].includes(pool)) throw new MgmtFailure('InvalidArgument', `KVP pool "${String(pool)}" is unknown: use external, guest or auto`);
    const key = args.key === undefined || args.key === null ? null : args.key;
    if (key !== null && typeof key !== 'string') throw new MgmtFailure('InvalidArgument', 'a KVP key is a string');
    if (op !== 'list' && key === null) throw new MgmtFailure('InvalidArgument', `KVP ${op} needs a key`);
    const value = args.value === undefined || args.value === null ? null : args.value;
    if (value !== null && typeof value !== 'string') throw new MgmtFailure('InvalidArgument', 'a KVP value is a string');
    if (op === 'set' && value === null) throw new MgmtFailure('InvalidArgument', 'KVP set needs a value');
    // Every operation asks the guest, which a Paused VM cannot answer: refused at once (the
    // request used to wait, fail with a timeout, and still take effect at the resume).
    if (r.state !== EnabledState.Running) {
      throw new MgmtFailure('InvalidState', `cannot exchange KVP data of VM "${r.config.name}": it is ${vmStateName(r.state)}${r.state === EnabledState.Paused ? ' (its guest cannot answer until "vm resume")' : ''}`);
    }
    const link = this.linkOf(r, 'exchange KVP data of');
    return await link.request({ t: 'kvp', op, pool, key, value }, 15000).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
  }

  pause(name: unknown): Promise<VmInfo> {
    return this.suspend(name, true);
  }

  resume(name: unknown): Promise<VmInfo> {
    return this.suspend(name, false);
  }

  /** Pause/resume: the hypervisor's Suspend property stops or restarts every VP of the partition. */
  private async suspend(name: unknown, on: boolean): Promise<VmInfo> {
    const r = this.get(name);
    const [from, via, to, verb] = on
      ? [EnabledState.Running, EnabledState.Pausing, EnabledState.Paused, 'pause']
      : [EnabledState.Paused, EnabledState.Resuming, EnabledState.Running, 'resume'];
    this.requireNotMoving(r, verb);
    this.requireState(r, [from], verb);
    const link = this.linkOf(r, verb);
    this.setState(r, via, null);
    const settled = link.request({ t: 'suspend', value: on }, WORKER_WEDGED_MS).then(
      () => {
        if (this.stateOf(r) === via) this.setState(r, to, on ? 'paused' : 'resumed');
      },
      async (e: unknown) => {
        if (e instanceof VmwpLinkError && e.timedOut) await this.wedged(r, verb);
        // A worker that is gone leaves the VM to onWorkerGone (Off), not to a state it no longer has.
        else if (this.stateOf(r) === via && !workerGone(e)) this.setState(r, from, null);
        throw linkFailure(e, `${verb} of VM "${r.config.name}" failed`);
      },
    );
    await this.untilAnswered(r, settled, SUSPEND_ANSWER_MS, verb, via);
    return this.info(r, null);
  }

  // ---- live migration ---------------------------------------------------------------------

  private async moveSlot(r: VmRecord): Promise<void> {
    if (this.movesRunning < this.maxMigrations) {
      this.movesRunning++;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const go = (): void => {
        this.movesRunning++;
        resolve();
      };
      this.moveQueue.push(go);
      r.moving!.cancel = async (why) => {
        const i = this.moveQueue.indexOf(go);
        if (i >= 0) this.moveQueue.splice(i, 1);
        reject(new MgmtFailure('Cancelled', why));
        return null;
      };
    });
  }

  private releaseMoveSlot(): void {
    this.movesRunning--;
    this.moveQueue.shift()?.();
  }

  /**
   * Move-VM: live-migrates a running VM to host `to` of the cluster. The VM's worker runs the
   * migration (vmwp/migrate.ts) through the link to `to`; this waits for its end and returns its
   * statistics. Completed: the VM is the destination's, and nothing of it stays here. Failed or
   * cancelled: it runs on here, unchanged. At most `maxMigrations` run at once; more wait.
   */
  async move(args: { name: unknown; to: unknown; options?: unknown }): Promise<MigrationStats> {
    const r = this.get(args.name);
    const name = r.config.name;
    const cluster = this.cluster;
    if (!cluster) throw new MgmtFailure('InvalidState', `cannot move VM "${name}": this host is not a member of a cluster ("hvlab cluster up", "hvlab up --join")`);
    const to = typeof args.to === 'string' ? args.to : '';
    if (!to) throw new MgmtFailure('InvalidArgument', 'a move needs a destination host (--to HOST)');
    if (to === cluster.name) throw new MgmtFailure('InvalidArgument', `VM "${name}" is on ${to} already`);
    const options = decodeMigrationOptions(args.options);
    if (typeof options === 'string') throw new MgmtFailure('InvalidArgument', options);
    if (r.moving) throw new MgmtFailure('InvalidState', `VM "${name}" is being moved to ${r.moving.to} already`);
    // Moved on before its move here committed (a post-copy's pages still arriving): refused.
    this.requireNotIncoming(r, 'move');
    this.requireState(r, [EnabledState.Running], 'move');
    const mig = randomBytes(8).toString('hex');
    const total = dirtyBitmapGpa(r.config.memoryBytes);
    const queued: MigrationStats = {
      vm: name, from: cluster.name, to, method: options.offline ? 'offline' : options.postcopy ? 'postcopy' : 'precopy', status: 'queued',
      'total-time': 0, 'setup-time': 0, 'expected-downtime': 0, ram: emptyRam(total), pass: 0, 'compression-ratio': 1,
      'throttle-percentage': 0, 'dirty-tracking': 'bitmap', passes: [], options, startedAt: new Date().toISOString(),
    };
    this.moves.set(name, queued);
    r.moving = { mig, to, started: false, cancel: async () => null, cancelled: null };
    const fail = (status: 'failed' | 'cancelled', why: string): MigrationStats => {
      return this.moves.put(name, { ...(this.moves.get(name) ?? queued), status, 'error-desc': why });
    };
    let peer: { endpoint: string; auth: string } | null = null;
    try {
      try {
        await this.moveSlot(r);
      } catch (e) {
        return fail('cancelled', (e as Error).message);
      }
      try {
        // Before the link opens and again after (a cancel or a turn-off may come meanwhile).
        const cannotGo = (): MigrationStats | null => r.moving!.cancelled !== null ? fail('cancelled', r.moving!.cancelled)
          : this.stateOf(r) !== EnabledState.Running || !r.link ? fail('failed', `VM "${name}" is ${vmStateName(r.state)}`) : null;
        const before = cannotGo();
        if (before) return before;
        const link = await cluster.linkTo(to).catch((e) => {
          throw new MgmtFailure('NotFound', (e as Error).message);
        });
        const after = cannotGo();
        if (after) return after;
        peer = link;
        const l = r.link!; // cannotGo checked it
        r.moving.started = true;
        // The worker's own reports take over from here; until its first, the move is being set up, not queued.
        const waiting = this.moves.get(name);
        if (waiting?.status === 'queued') this.moves.set(name, { ...waiting, status: 'setup' });
        // The worker refuses once the switch-over has begun (a refusal comes back as its reason); a
        // worker that cannot be asked (gone, or silent) takes the cancel as it can.
        r.moving.cancel = async (why, force) => await l.request({ t: 'migCancel', reason: why, ...(force ? { force: true } : {}) }, 5000).then(() => null, (e) => e instanceof VmwpLinkError && e.code === MIG_CANCEL_TOO_LATE ? e.message : null);
        this.o.log.info({ vm: name, to, mig, options }, 'moving VM');
        const key = { cluster: cluster.key.cluster, publicKey: cluster.key.publicKey, secretKey: cluster.key.secretKey };
        // No bound of this root's own: the worker answers when the move ends, and a move in doubt
        // ends only on the destination's word or a forced cancel, however long that takes (a bound
        // of 24 h failed a move the worker still held in doubt). A worker that goes away fails the
        // request at once (the link sees it go).
        const stats = await l.request({ t: 'migOut', mig, from: cluster.name, to, endpoint: link.endpoint, auth: link.auth, key, config: r.config as unknown as Record<string, unknown>, options: options as unknown as Record<string, unknown> }, Infinity);
        const recorded = this.moves.put(name, stats);
        if (stats.status === 'completed') {
          // The worker leaves by itself; the VM is the destination's: nothing of it stays here.
          r.expectingExit = true;
          r.reason = `moved to ${to}`;
          for (let i = 0; i < 250 && r.vmwpPid !== null; i++) await new Promise((res) => setTimeout(res, 20));
          if (r.vmwpPid !== null) await this.kill(r, `moved to ${to}`);
          for (let i = 0; i < 100 && r.state !== EnabledState.Off; i++) await new Promise((res) => setTimeout(res, 20));
          this.o.store.remove(name);
          discardSavedState(this.o.vmDir, name);
          this.vms.delete(name);
          this.o.log.info({ vm: name, to, downtimeMs: stats.downtime, totalMs: stats['total-time'] }, 'VM moved away');
        }
        return recorded;
      } catch (e) {
        // The worker is gone (turned off, killed) in the middle of the move: it cannot tell the
        // destination to drop its attempt, which then waited 30 s for the silent stream, holding
        // the VM's name there (a new move to it was refused meanwhile). This root tells it.
        // Its answer says whether the destination had the commit (a VM turned off while its move
        // was in doubt): then the VM runs there, and the move completed; its copy here goes.
        if (workerGone(e) && peer !== null) {
          const inDoubt = this.moves.get(name)?.['error-desc']?.startsWith('in doubt') === true;
          const asking = this.abortAtDestination(peer, cluster.key, mig, cluster.name, (e as Error).message, r.config);
          // The destination had the commit: the VM runs there, the move completed, its copy here goes
          // (only while it is still this Off record: nobody started it again meanwhile).
          const committedThere = (said: unknown): MigrationStats | null => {
            if (abortAnswer(said, true)?.committed !== true || this.vms.get(name) !== r || this.stopping || r.state !== EnabledState.Off) return null;
            const st: MigrationStats = { ...(this.moves.get(name) ?? queued), status: 'completed' };
            delete st['error-desc'];
            this.moves.set(name, st);
            this.o.store.remove(name);
            discardSavedState(this.o.vmDir, name);
            this.vms.delete(name);
            this.o.log.warn({ vm: name, to }, 'the VM\'s worker here ended during its move, which the destination had committed: the VM runs there, and its copy here is gone');
            return st;
          };
          if (inDoubt) {
            // In doubt the answer decides what the move was: waited for (its tries take seconds).
            const said = await asking;
            const done = committedThere(said);
            if (done) return done;
            // Still no word: "failed" alone would say the VM stayed here, which nobody knows.
            if (abortAnswer(said, true) === null) return fail('failed', `${(e as Error).message}; the move was in doubt: ${to} may run the VM (it had the commit and has not answered since), so check there before starting it here`);
          } else {
            // Otherwise the move fails now (mostly its copy there is dropped on this word, which
            // is sent again while a cut link heals); a commit that had landed corrects it after.
            void asking.then(committedThere);
          }
        }
        // Not "it stays here": the host is going down, and the VM with it.
        return fail('failed', this.stopping ? `host ${cluster.name} is going down: ${(e as Error).message}` : (e as Error).message);
      } finally {
        this.releaseMoveSlot();
      }
    } finally {
      r.moving = null;
    }
  }

  /**
   * Tells a migration's destination to drop its attempt (what the source's worker does when it
   * can). A message lost on the way (a lossy or cut link, a busy destination) is sent again, up to
   * ABORT_TRIES times with a growing pause; an answer, even a refusal (no such migration there, or
   * one committed), ends it. Unanswered, the destination still drops the attempt once its stream
   * has been silent for its bound (30 s), holding the VM's name there until then.
   */
  private async abortAtDestination(peer: { endpoint: string; auth: string }, key: ClusterKey, mig: string, from: string, why: string, vm?: VmConfig): Promise<unknown> {
    const reason = `the source's worker is gone: ${why}`.slice(0, 500);
    let last = '';
    for (let attempt = 1; attempt <= ABORT_TRIES; attempt++) {
      if (attempt > 1) {
        // A host going down tells once: it does not wait on retries.
        if (this.stopping) break;
        await new Promise((r) => setTimeout(r, ABORT_PAUSE_MS * 2 ** (attempt - 2)));
      }
      const c = new RpcClient(peer.endpoint, curveClientOptions(key));
      try {
        const said = await c.call({ from, auth: peer.auth, mig, op: 'migAbort', reason, ...(vm ? { vm: vm.name, vmId: vm.id } : {}) }, ABORT_TIMEOUT_MS, CLUSTER_WIRE_VERSION);
        this.o.log.info({ mig, attempt, said }, 'told the destination to drop a failed migration');
        return said;
      } catch (e) {
        // A refusal is an answer; no answer in time, or a socket that failed, is not.
        if (e instanceof RpcFailure && !RPC_UNANSWERED.has(e.code)) {
          this.o.log.info({ mig, attempt, answer: e.message }, 'the destination answered the abort of a failed migration');
          return;
        }
        last = (e as Error).message;
        this.o.log.info({ mig, attempt, err: last }, 'the abort of a failed migration was not answered');
      } finally {
        c.close();
      }
    }
    this.o.log.warn({ mig, tries: ABORT_TRIES, err: last }, 'could not tell the destination to drop a failed migration (it drops it when the stream stays silent)');
  }

  /** The statistics of the VM's current or last migration through this host. */
  moveStatus(name: unknown): MigrationStats {
    const n = validateName(name);
    const st = this.moves.get(n);
    if (!st) throw new MgmtFailure('NotFound', `VM "${n}" has no migration on this host`);
    return st;
  }

  /**
   * Move-cancel: safe in every phase before the commit (the VM stays here, the destination drops
   * its attempt). With `force`, only a move in doubt (its commit sent, the destination silent past
   * its bounds) is cancelled: its VM resumes here without the destination's word.
   */
  async moveCancel(name: unknown, force = false): Promise<MigrationStats> {
    // A VM that moved away is not here any more, but its move is: say that, not "does not exist".
    const n = validateName(name);
    const gone = this.vms.has(n) ? undefined : this.moves.get(n);
    if (gone?.status === 'completed') throw new MgmtFailure('InvalidState', `VM "${n}" moved to ${gone.to} (completed at ${gone.startedAt ? new Date(Date.parse(gone.startedAt) + gone['total-time']).toISOString() : 'an earlier time'}): there is no move to cancel, and it runs there now`);
    const r = this.get(n);
    if (!r.moving) {
      // Asked of the destination: the move is the source's to cancel.
      if (r.incoming) throw new MgmtFailure('InvalidState', `VM "${r.config.name}" is being moved here from ${r.incoming.from}: its move is cancelled there ("hvlab --host ${r.incoming.from} vm move-cancel ${r.config.name}")`);
      throw new MgmtFailure('InvalidState', `VM "${r.config.name}" is not being moved`);
    }
    const moving = r.moving;
    const refused = await moving.cancel(force ? 'cancelled by the user (forced)' : 'cancelled by the user', force);
    if (refused !== null) throw new MgmtFailure(MIG_CANCEL_TOO_LATE, refused);
    moving.cancelled ??= 'cancelled by the user';
    return this.moves.get(r.config.name)!;
  }

  /** The destination's side of a migration (requests of the source's VMWP through the peer service). */
  async incoming(req: MigPeerRequest & { auth: string }): Promise<unknown> {
    await this.heldBack(req.mig);
    if (req.op === 'migSetup') return await this.incomingSetup(req);
    const found = [...this.vms.values()].find((x) => x.incoming?.mig === req.mig);
    const r = found?.incoming && sameSource(found.incoming, req) ? found : undefined;
    if (req.op === 'migProbe') {
      if (this.committed.has(req.mig)) return { state: 'committed' };
      const gone = this.droppedMigs.get(req.mig);
      if (gone && gone.from === req.from) return { state: 'dropped', why: gone.why };
      return { state: r ? 'present' : 'unknown' };
    }
    if (req.op === 'migAbort') {
      if (this.committed.has(req.mig)) return { committed: true };
      if (!r) return { aborted: false, ...this.ownCopyOf(req) };
      await this.dropIncoming(r, `the source aborted: ${req.reason}`);
      return { aborted: true };
    }
    if (req.op === 'migCommit' && this.committed.has(req.mig)) return { committed: true };
    const refusal = req.op === 'migCommit' ? this.notResumed.get(req.mig) : undefined;
    if (refusal !== undefined) throw new RpcFailure(MIG_GUEST_NOT_RESUMED, refusal);
    if (!r || !r.incoming) throw new MgmtFailure('NotFound', `no incoming migration ${req.mig} from ${req.from} on this host`);
    const inc = r.incoming;
    inc.lastSeen = Date.now();
    const link = this.linkOf(r, 'migrate into');
    switch (req.op) {
      case 'migPages':
        return await link.request({ t: 'migPages', data: req.data }, 30000).catch((e) => {
          throw linkFailure(e, `VM "${r.config.name}"`);
        });
      case 'migPremap':
        // A hint: the blackout maps whatever this did not.
        return await link.request({ t: 'migPremap', state: req.state }, 10000).catch((e) => {
          throw linkFailure(e, `VM "${r.config.name}"`);
        });
      case 'migState':
      case 'migSwitch': {
        // The VM runs here already (its state was taken once): another state or switch is refused
        // and changes nothing. It went to the worker, whose refusal dropped the attempt below, so a
        // repeated or stray switch during post-copy lost the VM (its pages only partly here).
        if (inc.started) throw new MgmtFailure('InvalidState', `the migrated VM "${r.config.name}" runs here already: a second ${req.op} is refused`);
        inc.started = true;
        let answer: VmwpStateAnswer;
        try {
          if (req.op === 'migState') answer = await link.request({ t: 'migState', state: req.state, pages: req.pages }, 60000);
          else answer = await link.request({ t: 'migSwitch', state: req.state, missing: req.missing }, 60000);
        } catch (e) {
          void this.dropIncoming(r, `the migrated VM did not start: ${(e as Error).message}`);
          throw linkFailure(e, `VM "${r.config.name}"`);
        }
        // Through this root, the worker sends no migRunning note (it sends one only for what comes to its own socket).
        this.incomingRuns(r, inc, req.op === 'migSwitch');
        // The worker's own time and its VM's first dispatch go on to the source (which checks them:
        // destinationMsOf, ranAtOf).
        return { running: true, ms: answer.ms, ...(answer.clock !== undefined ? { clock: answer.clock, ranAtNs: answer.ranAtNs } : {}) };
      }
      case 'migPull':
        return await link.request({ t: 'migPull', waitMs: req.waitMs }, req.waitMs + 10000).catch((e) => {
          throw linkFailure(e, `VM "${r.config.name}"`);
        });
      case 'migCommit': {
        // With the stream at the worker's own socket, its note that the VM runs may still be on its
        // way here: the worker's notes come before its answers on the control link, so one
        // request's answer brings every note it sent before.
        if (!inc.started && inc.exposed) await link.request({ t: 'status' }, 5000).catch(() => undefined);
        if (!inc.started || r.state !== EnabledState.Running) throw new MgmtFailure('InvalidState', `the migrated VM "${r.config.name}" does not run here`);
        // A commit sent again while the first is under way (its answer late or lost) gets the
        // first's outcome; one sent again after a failure tries again.
        inc.committing ??= this.commitIncoming(r, inc, req, link).finally(() => {
          inc.committing = null;
        });
        const done = await inc.committing;
        await this.heldBack(req.mig);
        return done;
      }
    }
    throw new MgmtFailure('InvalidArgument', 'unknown migration request');
  }

  /**
   * The migrated VM runs here (its worker answered the state, on its own stream socket or through
   * this root): Running, and a watchdog for the commit; post-copy: pages still arriving.
   */
  private incomingRuns(r: VmRecord, inc: Incoming, postcopy: boolean): void {
    inc.started = true;
    if (postcopy) {
      // Post-copy: the source's silence is a lost VM now (the setup's watchdog says so), and the commit comes once every page is here.
      inc.postcopy = true;
      this.setState(r, EnabledState.Running, `migrated from ${inc.from} (post-copy: pages still arriving)`);
      const st = this.moves.get(r.config.name);
      if (st) this.moves.set(r.config.name, { ...st, status: 'postcopy-active' });
      return;
    }
    this.setState(r, EnabledState.Running, `migrated from ${inc.from}`);
    // The source lets its copy go only on a commit; without one, this copy goes.
    if (inc.watchdog) clearInterval(inc.watchdog);
    const noCommit = (): void => {
      // A commit under way ends in bounded time (its waits are bounded): look again then.
      if (inc.committing) inc.watchdog = setTimeout(noCommit, 1000);
      else void this.dropIncoming(r, `no commit from ${inc.from} within ${INCOMING_COMMIT_MS / 1000} s`);
    };
    inc.watchdog = setTimeout(noCommit, INCOMING_COMMIT_MS);
  }

  /** The VM's part in a live migration, for vmList (`switched`: its guest runs at the destination now). */
  private migrationOf(r: VmRecord): VmMigration | null {
    if (r.incoming) return { direction: 'incoming', from: r.incoming.from, ...(r.incoming.started ? { switched: true as const } : {}) };
    if (!r.moving) return null;
    return { direction: 'outgoing', to: r.moving.to, ...(this.moves.get(r.config.name)?.status === 'postcopy-active' ? { switched: true as const } : {}) };
  }

  /** Closes the fabric's port to an incoming worker's stream socket (the migration is over here). */
  private unexposeIncoming(inc: Incoming): void {
    const port = inc.exposed;
    inc.exposed = null;
    if (port) void this.cluster?.unexpose(port).catch(() => undefined);
  }

  private async incomingSetup(req: Extract<MigPeerRequest, { op: 'migSetup' }> & { auth: string }): Promise<unknown> {
    const named = typeof req.config.name === 'string' ? req.config.name : '';
    const c = decodeVmConfig(req.config, named);
    if (typeof c === 'string') throw new MgmtFailure('InvalidArgument', `the config of the VM migrating from ${req.from} is refused: ${c}`);
    const options = decodeMigrationOptions(req.options);
    if (typeof options === 'string') throw new MgmtFailure('InvalidArgument', options);
    const known = this.vms.get(c.name);
    if (known) throw new MgmtFailure('AlreadyExists', `host ${this.cluster?.name ?? this.o.hostId} has a VM "${c.name}" already`);
    this.admitReserve(null, c.processor.reserve, c.vps, 'take the migration of', c.name);
    if (this.o.vmbusTransport !== 'shm') throw new MgmtFailure('InvalidState', 'this host runs without shared memory: it cannot take a live migration');
    // As many migrations come in at once as go out (Hyper-V's one setting for both): each starts a
    // worker and a partition process and maps the VM's memory, and a peer that asked for sixteen
    // 4 GiB VMs at once saturated this host for half a minute, none of them getting through.
    const comingIn = [...this.vms.values()].filter((x) => x.incoming !== null).length;
    if (comingIn >= this.maxMigrations) throw new MgmtFailure('Busy', `host ${this.cluster?.name ?? this.o.hostId} takes ${comingIn} migrations in already, as many as it runs at once; move VM "${c.name}" once one of them has ended`);
    const r = this.record(c);
    // A spare's replacement loads once the migration is committed or dropped, not during its blackout.
    const inc: Incoming = { mig: req.mig, from: req.from, auth: req.auth, ready: null, started: false, lastSeen: Date.now(), watchdog: null, startedAt: Date.now(), postcopy: false, releaseSpare: this.spare?.hold() ?? null, options };
    r.incoming = inc;
    this.vms.set(c.name, r);
    this.moves.set(c.name, this.incomingStats(c, req.from, options, Date.now()));
    // On disk before the worker starts: a root restarted from here on takes the attempt over.
    this.recordIncoming(r, inc);
    this.setState(r, EnabledState.Starting, `incoming migration from ${req.from}`);
    const ready = new Promise<void>((resolve, reject) => {
      inc.ready = { resolve, reject };
    });
    ready.catch(() => undefined);
    try {
      const cfg: VmwpConfig = {
        home: this.o.home, hostId: this.o.hostId, hvPid: this.o.hvPid, name: c.name, id: c.id,
        memoryBytes: c.memoryBytes, vps: c.vps, workload: c.workload, processor: c.processor,
        rtcOffsetS: c.rtcOffsetS ?? 0, vmDir: this.o.vmDir, restore: false, incoming: true,
        devices: vmDevices(c), vmbusTransport: this.o.vmbusTransport, ...(c.instanceSeed ? { instanceSeed: c.instanceSeed } : {}),
        ...(this.cluster ? { incomingStream: { mig: req.mig, from: req.from, auth: req.auth, address: this.cluster.address, key: this.cluster.key } } : {}),
      };
      // An abort from the source (a cancel during set-up) drops the migration while the worker
      // starts: none may start after that, and one that started meanwhile goes too (it was left
      // with no record, never reaped).
      const dropped = (): void => {
        if (r.incoming !== inc) throw new Error('the migration was dropped while its worker started');
      };
      await this.spawnWorker(r, cfg, () => this.o.vid.ticket(), dropped);
      if (r.incoming !== inc) {
        await this.kill(r, 'incoming migration dropped while its worker started');
        dropped();
      }
      await Promise.race([ready, new Promise((_, rej) => setTimeout(() => rej(new Error('the worker did not build the VM within 30 s')), 30000))]);
    } catch (e) {
      await this.dropIncoming(r, `setup failed: ${(e as Error).message}`);
      throw new MgmtFailure('StartFailed', `host ${this.cluster?.name ?? this.o.hostId} could not set up VM "${c.name}": ${(e as Error).message}`);
    }
    // A source that goes silent (killed, link cut) before the state leaves nothing here. Its
    // silence counts from now: a set-up that took long (a busy host) is no silence of the source's.
    this.watchIncoming(r, inc);
    // The worker's own stream socket, opened to the source through their link: the source sends
    // the pages and the state there (the setup, the commit and an abort still come here).
    let port: number | null = null;
    if (inc.streamPort && this.cluster) {
      port = await this.cluster.expose(req.from, inc.streamPort).catch((e: unknown) => {
        this.o.log.warn({ vm: c.name, err: (e as Error).message }, 'the fabric did not open the worker\'s stream socket: the stream comes through this root');
        return null;
      });
      // Dropped meanwhile: the port goes with it.
      if (port !== null && r.incoming !== inc) void this.cluster.unexpose(port).catch(() => undefined);
      else {
        inc.exposed = port;
        if (port !== null) this.recordIncoming(r, inc);
      }
    }
    this.o.log.info({ vm: c.name, from: req.from, mig: req.mig, stream: port !== null ? 'worker' : 'root' }, 'incoming migration set up');
    return port !== null ? { ready: true, port } : { ready: true };
  }

  /** The destination's move-status of an incoming migration, as its set-up begins. */
  private incomingStats(c: VmConfig, from: string, options: MigrationOptions, startedAt: number): MigrationStats {
    return {
      vm: c.name, from, to: this.cluster?.name ?? this.o.hostId, method: options.offline ? 'offline' : options.postcopy ? 'postcopy' : 'precopy', status: 'active',
      'total-time': 0, 'setup-time': 0, 'expected-downtime': 0, ram: emptyRam(dirtyBitmapGpa(c.memoryBytes)), pass: 0, 'compression-ratio': 1,
      'throttle-percentage': 0, 'dirty-tracking': 'bitmap', passes: [], options, startedAt: new Date(startedAt).toISOString(),
    };
  }

  /** Writes the incoming attempt's record (incoming-record.ts); one that cannot be written costs only the take-over, and is said. */
  private recordIncoming(r: VmRecord, inc: Incoming): void {
    try {
      writeIncomingRecord(this.o.home, { mig: inc.mig, from: inc.from, auth: inc.auth, config: r.config, options: inc.options, startedAt: inc.startedAt, exposed: inc.exposed ?? null, streamPort: inc.streamPort ?? null });
    } catch (e) {
      this.o.log.warn({ vm: r.config.name, err: (e as Error).message }, 'the incoming migration\'s record is not on disk: a root restarted before its commit would stop its worker');
    }
  }

  /**
   * Drops the attempt once its source has been silent for its bound (INCOMING_IDLE_MS before the
   * VM runs here, POSTCOPY_IDLE_MS while post-copy's pages are missing), counted from now.
   */
  private watchIncoming(r: VmRecord, inc: Incoming): void {
    inc.lastSeen = Date.now();
    inc.watchdog = setInterval(() => {
      const silent = Date.now() - inc.lastSeen;
      if (inc.postcopy ? silent > POSTCOPY_IDLE_MS : !inc.started && silent > INCOMING_IDLE_MS) {
        void this.dropIncoming(r, inc.postcopy
          ? `post-copy failed: the source ${inc.from} was silent for ${POSTCOPY_IDLE_MS / 1000} s while pages were missing, so the VM is lost`
          : `the stream from ${inc.from} was silent for ${INCOMING_IDLE_MS / 1000} s`);
      }
    }, 1000);
  }

  /**
   * A worker whose VM has no config here, at a re-attach: the worker of an incoming migration when
   * its record (incoming-record.ts) names that VM with the worker's VM id. Its VM record comes back
   * with the attempt (its credential, its fabric port); the worker's description then says how far
   * it got (reattach). Null when there is no such record: the worker is stopped, as before.
   */
  private adoptIncoming(rec: VmwpRecord): VmRecord | null {
    const got = readIncomingRecord(this.o.home, rec.name);
    if (got === null) return null;
    if (typeof got === 'string' || got.config.id !== rec.id) {
      this.o.log.warn({ vm: rec.name, why: typeof got === 'string' ? got : 'it names another VM id' }, 'an incoming migration\'s record is not this worker\'s: its worker is stopped');
      return null;
    }
    const r = this.record(got.config);
    r.incoming = {
      mig: got.mig, from: got.from, auth: got.auth, ready: null, started: false, lastSeen: Date.now(), watchdog: null, startedAt: got.startedAt, postcopy: false, releaseSpare: null,
      exposed: got.exposed, streamPort: got.streamPort, options: got.options,
    };
    this.vms.set(got.config.name, r);
    this.moves.set(got.config.name, this.incomingStats(got.config, got.from, got.options, got.startedAt));
    return r;
  }

  /**
   * Opens the incoming attempts' stream sockets through the fabric again, each at the fabric's port
   * it had (where its source sends): the fabric closes a host's exposed ports when the host joins
   * again (its root restarted, having taken the attempts over) and loses them when it restarts
   * itself, and the source's stream then went unanswered until the attempt was dropped for its
   * silence (a post-copy's VM lost). Called each time the member joins.
   */
  /** The fabric's ports of this host's incoming migrations (a join keeps them open). */
  incomingExposedPorts(): number[] {
    return [...this.vms.values()].flatMap((r) => (r.incoming?.exposed ? [r.incoming.exposed] : []));
  }

  exposeIncomingAgain(): void {
    for (const r of this.vms.values()) {
      const inc = r.incoming;
      if (inc && inc.exposed && inc.streamPort) this.exposeIncomingAt(r, inc, 0);
    }
  }

  /**
   * One try of exposeIncomingAgain for one attempt. A refusal is tried again every 0.5 s while the
   * attempt lasts (at most INCOMING_IDLE_MS, its own bound): after a fabric restart the hosts join
   * again in any order, and the fabric refuses a port towards a source that has not joined yet.
   */
  private exposeIncomingAt(r: VmRecord, inc: Incoming, tries: number): void {
    if (!this.cluster || r.incoming !== inc || !inc.exposed || !inc.streamPort) return;
    const was = inc.exposed;
    void this.cluster.expose(inc.from, inc.streamPort, was).then((port) => {
      if (r.incoming !== inc) {
        void this.cluster?.unexpose(port).catch(() => undefined);
        return;
      }
      inc.exposed = port;
      if (port !== was) {
        this.o.log.warn({ vm: r.config.name, was, port }, 'the incoming migration\'s stream socket is open again at another fabric port: its source, which sends to the old one, will fail the move');
        this.recordIncoming(r, inc);
      } else this.o.log.info({ vm: r.config.name, port, tries: tries + 1 }, 'the incoming migration\'s stream socket is open again at the fabric');
    }, (e: unknown) => {
      if (r.incoming !== inc) return;
      const more = (tries + 1) * EXPOSE_AGAIN_EVERY_MS < INCOMING_IDLE_MS;
      if (tries === 0 || !more) this.o.log.warn({ vm: r.config.name, err: (e as Error).message, tries: tries + 1 }, more ? 'the incoming migration\'s stream socket could not be opened again at the fabric yet: trying again' : 'the incoming migration\'s stream socket could not be opened again at the fabric');
      if (more) setTimeout(() => this.exposeIncomingAt(r, inc, tries + 1), EXPOSE_AGAIN_EVERY_MS).unref();
    });
  }

  /** An adopted incoming attempt goes on as its worker describes it: waiting, running, or in post-copy. */
  private resumeIncoming(r: VmRecord, inc: Incoming, d: VmwpDescription): void {
    const now = decodeDescribedIncoming(d.incoming);
    this.watchIncoming(r, inc);
    if (now?.started) this.incomingRuns(r, inc, now.postcopy);
    else this.setState(r, EnabledState.Starting, `incoming migration from ${inc.from}`);
    this.o.log.warn({ vm: r.config.name, from: inc.from, mig: inc.mig, started: now?.started ?? false, postcopy: now?.postcopy ?? false }, 're-attached to an incoming migration\'s worker: the attempt goes on');
  }

  /**
   * For an abort of an attempt this root does not know (dropped, or made before a restart): whether
   * it runs the VM as its own, `vm: 'present'` (only a commit saves a migrated VM's config, and a
   * restarted root re-attaches it from there), or has nothing of it, `vm: 'absent'` (an attempt's
   * copy is killed before it is forgotten, and a restarted root kills a worker whose VM it has no
   * config for). Nothing is said while another attempt of that VM is here, or without the VM named.
   */
  private ownCopyOf(req: Extract<MigPeerRequest, { op: 'migAbort' }>): { vm?: 'present' | 'absent' } {
    if (req.vm === null || req.vmId === null) return {};
    const r = this.vms.get(req.vm);
    if (!r || r.config.id.toLowerCase() !== req.vmId.toLowerCase()) return { vm: 'absent' };
    // Its own only with its config on disk: an attempt being dropped (its record without its
    // incoming while its processes are killed) has none, and says nothing yet.
    if (r.incoming) return {};
    return existsSync(this.o.store.fileOf(r.config.name)) ? { vm: 'present' } : {};
  }

  /** Waits while the answers about migration `mig` are held back (a test's fault: silentUntil). */
  private async heldBack(mig: string): Promise<void> {
    const until = this.silentUntil.get(mig);
    if (until === undefined) return;
    const wait = until - Date.now();
    if (wait > 0) {
      await new Promise<void>((r) => {
        const end = (): void => {
          clearTimeout(t);
          this.silentWaits.delete(end);
          r();
        };
        const t = setTimeout(end, wait);
        this.silentWaits.add(end);
      });
    } else this.silentUntil.delete(mig);
  }

  /** The destination's commit of an incoming migration (see incoming's migCommit). */
  private async commitIncoming(r: VmRecord, inc: Incoming, req: Extract<MigPeerRequest, { op: 'migCommit' }>, link: VmwpControlClient): Promise<{ committed: true }> {
    // The guest's kernel must have resumed (its VMBus client back) before the source lets its
    // copy go. One that does not is stopped by its worker, the attempt is dropped here, and the
    // refusal says so with its own code: the source, refused, runs its own copy on.
    try {
      await link.request({ t: 'migBooted', waitMs: INCOMING_BOOT_MS }, INCOMING_BOOT_MS + 5000);
    } catch (e) {
      const why = `VM "${r.config.name}": ${(e as Error).message}`;
      this.notResumed.set(req.mig, why);
      if (this.notResumed.size > 64) this.notResumed.delete(this.notResumed.keys().next().value!);
      await this.dropIncoming(r, `the migrated guest did not resume: ${(e as Error).message}`);
      throw new RpcFailure(MIG_GUEST_NOT_RESUMED, why);
    }
    // Post-copy: every page must be here before the guest stops asking for them.
    if (inc.postcopy) await link.request({ t: 'migDone' }, 10000).catch((e) => {
      throw linkFailure(e, `VM "${r.config.name}"`);
    });
    // Dropped meanwhile (the source aborted, say): too late to commit.
    if (r.incoming !== inc || this.vms.get(r.config.name) !== r) throw new MgmtFailure('InvalidState', `the incoming migration of VM "${r.config.name}" was dropped while it was being committed`);
    // The VM is this host's now: its config goes on disk, then the migration's id (a root restarted
    // later answers an abort of it "committed", whatever became of the VM since).
    this.saveConfig(r.config, true);
    this.committed.add({ mig: req.mig, vm: r.config.name, vmId: r.config.id, from: req.from });
    removeIncomingRecord(this.o.home, r.config.name);
    // Post-copy's reason said its pages were still arriving; every one is here now.
    if (inc.postcopy && r.state === EnabledState.Running) r.reason = `migrated from ${inc.from} (post-copy, every page here)`;
    if (inc.watchdog) clearTimeout(inc.watchdog);
    r.incoming = null;
    inc.releaseSpare?.();
    this.unexposeIncoming(inc);
    // Tests: every answer about this migration is held back from here for this long, as a link that
    // loses only this host's replies would hold them (the source hears nothing of the commit).
    if (COMMIT_SILENT_MS > 0) this.silentUntil.set(req.mig, Date.now() + COMMIT_SILENT_MS);
    const st = this.moves.get(r.config.name);
    // The source's statistics, as it had them at the commit (decoded with the frame, and only
    // shown): the VM, the hosts and the outcome are this host's own.
    const theirs = req.stats;
    if (st) {
      const mine = { vm: st.vm, from: st.from, to: st.to };
      const shown: MigrationStats = { ...st, ...(theirs ?? {}), ...mine, status: 'completed', 'total-time': theirs?.['total-time'] ?? Date.now() - inc.startedAt };
      delete shown['error-desc'];
      this.moves.set(r.config.name, shown);
    }
    this.o.log.info({ vm: r.config.name, from: req.from, mig: req.mig }, 'migrated VM committed');
    return { committed: true };
  }

  /** Drops an incoming migration's attempt: its worker, partition and record; nothing of it stays. */
  private async dropIncoming(r: VmRecord, why: string): Promise<void> {
    const inc = r.incoming;
    if (!inc) return;
    r.incoming = null;
    inc.releaseSpare?.();
    this.unexposeIncoming(inc);
    if (inc.watchdog) {
      clearInterval(inc.watchdog);
      clearTimeout(inc.watchdog);
    }
    inc.ready?.reject(new Error(why));
    this.o.log.warn({ vm: r.config.name, from: inc.from, why }, 'incoming migration dropped');
    const st = this.moves.get(r.config.name);
    if (st) this.moves.set(r.config.name, { ...st, status: 'failed', 'error-desc': why });
    await this.kill(r, `incoming migration dropped: ${why}`);
    removeIncomingRecord(this.o.home, r.config.name);
    // Said to a probe only once the copy here is gone (killed), so that the source may resume its own.
    this.droppedMigs.set(inc.mig, { from: inc.from, why });
    for (const k of this.droppedMigs.keys()) {
      if (this.droppedMigs.size <= MAX_DROPPED_KEPT) break;
      this.droppedMigs.delete(k);
    }
    if (this.vms.get(r.config.name) === r) this.vms.delete(r.config.name);
  }

  /**
   * Remove-VM: exactly `vms/NAME.json`, `vms/NAME.saved` and the VM's two log files
   * (`run/logs/vmwp-NAME.log`, `partition-NAME.log`) go (an Invalid VM may be deleted). The logs
   * went with it so that a later VM of the same name does not continue the old one's.
   */
  delete(name: unknown, id?: string): { name: string; deleted: true } {
    const r = this.get(name, true);
    this.requireId(r, id);
    this.requireNotIncoming(r, 'delete');
    this.requireState(r, [EnabledState.Off, EnabledState.Saved, EnabledState.Invalid], 'delete');
    if (r.stranded) throw new MgmtFailure('InvalidState', `cannot delete VM "${r.config.name}": its worker still runs (pid ${r.stranded.pid}); "hvlab vm turn-off ${r.config.name}" first`);
    this.o.store.remove(r.config.name);
    discardSavedState(this.o.vmDir, r.config.name);
    for (const role of ['vmwp', 'partition']) rmSync(join(this.paths.logDir, `${role}-${r.config.name}.log`), { force: true });
    this.vms.delete(r.config.name);
    this.o.log.info({ vm: r.config.name }, 'VM deleted');
    return { name: r.config.name, deleted: true };
  }

  private info(r: VmRecord, progress: number | null, cpu: VmCpu | null = null): VmInfo {
    // A process stopped by a signal (a pause fault) is state T in /proc.
    const stopped = ([['partition', r.partitionPid], ['vmwp', r.vmwpPid]] as const)
      .filter(([, pid]) => pid !== null && procState(pid) === 'T').map(([role]) => role);
    // A stopped partition's VPs run nothing; the scheduler would count them busy all along.
    if (cpu && stopped.includes('partition')) cpu = { percent: 0, vps: cpu.vps.map((vp) => ({ ...vp, state: 'stopped', cpuPercent: 0 })) };
    return {
      name: r.config.name,
      id: r.config.id,
      state: vmStateName(r.state),
      enabledState: r.state,
      partitionId: r.partitionId,
      pids: { partition: r.partitionPid, vmwp: r.vmwpPid },
      vps: r.config.vps,
      memoryBytes: r.config.memoryBytes,
      uptimeS: r.runningSince === null ? 0 : Math.round((Date.now() - r.runningSince) / 100) / 10,
      workload: { name: r.config.workload.split(':')[0], progress },
      lastStateReason: r.reason,
      processor: { ...r.config.processor },
      cpu,
      stopped,
      // The destination's copy is the source's until the commit; the source's copy is named too,
      // so that a reader that cannot ask the destination still knows which copy is which.
      migration: this.migrationOf(r),
    };
  }

  async list(): Promise<VmInfo[]> {
    for (const r of [...this.vms.values()]) this.recheck(r);
    const rs = [...this.vms.values()].sort((a, b) => a.config.name.localeCompare(b.config.name));
    const stats = (await this.o.vid.ctl('stats').catch(() => null)) as { partitions?: Array<{ id: number; scheduled: boolean; cpu: VmCpu }> } | null;
    const cpuOf = new Map((stats?.partitions ?? []).filter((p) => p.scheduled).map((p) => [p.id, p.cpu]));
    return await Promise.all(rs.map(async (r) => {
      let progress: number | null = null;
      if (r.link && (r.state === EnabledState.Running || r.state === EnabledState.Paused)) {
        const st = await r.link.request({ t: 'status' }, 2000).catch(() => null);
        progress = st?.progress ?? null;
      }
      return this.info(r, progress, r.partitionId !== null ? (cpuOf.get(r.partitionId) ?? null) : null);
    }));
  }

  /** Guest-side facts for tests and `hvlab vm status`: the kernel page and the intercept count. */
  async status(name: unknown): Promise<unknown> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'read the status of');
    return await this.linkOf(r, 'read the status of').request({ t: 'status' }, 5000).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
  }

  async peek(name: unknown, gpa: unknown, len: unknown): Promise<Uint8Array> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'read the memory of');
    const g = Number(gpa);
    const l = Number(len);
    if (!Number.isSafeInteger(g) || g < 0) throw new MgmtFailure('InvalidArgument', `GPA ${String(gpa)} is invalid`);
    if (!Number.isSafeInteger(l) || l < 1 || l > 16 * 1024 * 1024) throw new MgmtFailure('InvalidArgument', `length ${String(len)} is invalid: 1 to 16 MiB`);
    if (g + l > r.config.memoryBytes) throw new MgmtFailure('InvalidArgument', `GPA range 0x${g.toString(16)}+${l} is outside VM "${r.config.name}"'s ${r.config.memoryBytes} bytes`);
    return await this.linkOf(r, 'read the memory of').request({ t: 'peek', gpa: g, len: l }).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
  }

  /**
   * A fault in VM `name` (faults.ts: the nemesis asks through `faultSet`): handed to its worker,
   * which applies it and ends it by itself after `forMs`. Refused while the VM moves (a fault
   * does not travel with it) or is not Running or Paused.
   */
  async faultSet(name: string, id: string, spec: VmFaultSpec, forMs: number): Promise<unknown> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'inject a fault into');
    if (r.moving || r.incoming) throw new MgmtFailure('InvalidState', `cannot inject a fault into VM "${r.config.name}": it is moving between hosts`);
    const res = await this.linkOf(r, 'inject a fault into').request({ t: 'faultSet', id, spec, forMs }, 10_000).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
    this.o.log.info({ vm: r.config.name, fault: id, kind: spec.kind, forMs }, 'fault injected');
    return res;
  }

  /**
   * Ends fault `id` (null: all) of VM `name` now; a VM without a worker has none. Answers the ids
   * ended and the counters of the fault(s) asked for that ended, now or before (`counters`: by id).
   */
  async faultClear(name: string, id: string | null): Promise<{ cleared: string[]; counters: Record<string, VmwpFaultStats> }> {
    const r = this.get(name);
    const cleared: string[] = [];
    if (r.link) {
      const a = await r.link.request({ t: 'faultClear', id }, 10_000).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
      cleared.push(...a.cleared);
    }
    // The worker's faultEnded note for each is in before its answer (one link, in order).
    const counters: Record<string, VmwpFaultStats> = {};
    for (const [fid, st] of r.faultCounters ?? []) if (id === null ? cleared.includes(fid) : fid === id) counters[fid] = st;
    return { cleared, counters };
  }

  /** Ends every fault of every VM (null id) or fault `id` wherever it is. */
  async faultClearAll(id: string | null): Promise<string[]> {
    const out: string[] = [];
    for (const r of this.vms.values()) {
      if (!r.link) continue;
      const a = await r.link.request({ t: 'faultClear', id }, 5000).catch(() => null);
      if (a) for (const x of a.cleared) out.push(`${r.config.name}/${x}`);
    }
    return out;
  }

  /** Every VM's active faults, with their counters so far (checked: decodeVmwpFaultList). */
  async faultList(): Promise<Array<{ vm: string; faults: VmwpFaultInfo[] }>> {
    const out: Array<{ vm: string; faults: VmwpFaultInfo[] }> = [];
    for (const r of this.vms.values()) {
      if (!r.link) continue;
      // Checked by the link (decodeVmwpFaultList); one that does not decode fails the request, and is logged there.
      const faults = await r.link.request({ t: 'faultList' }, 5000).catch(() => null);
      if (faults?.length) out.push({ vm: r.config.name, faults });
    }
    return out;
  }

  /** Starts the spare workers (after a restart's re-attach, so they do not compete with it). */
  startSpares(): void {
    if (!this.o.spare || this.spare) return;
    this.spare = new SpareWorkers({ size: Math.min(this.o.spare, MAX_SPARE), stderrLog: join(this.paths.logDir, 'stderr.log'), hvEndpoint: this.paths.hvEndpoint, log: this.o.log });
  }

  /** Starts the warm pool (after a restart's re-attach, so it does not compete with it). */
  startWarmPool(): void {
    if (this.warm) return;
    // Templates of a root before this one left with it, unclaimed: their logs go too.
    sweepTemplateLogs(this.paths.logDir);
    if (!this.o.warm) return;
    let memory = this.o.warmMemory ?? '64M';
    let d: VmConfig;
    try {
      d = buildConfig({ name: 'warm', memory });
    } catch (e) {
      this.o.log.warn({ memory, err: (e as Error).message }, 'the warm pool\'s memory size is invalid; using 64M');
      memory = '64M';
      d = buildConfig({ name: 'warm', memory });
    }
    // The shape `vm new NAME --memory SIZE` makes: a VM of it, started, claims a booted worker.
    const shape: VmwpConfig = {
      home: this.o.home, hostId: this.o.hostId, hvPid: this.o.hvPid, name: 'warm', id: d.id, memoryBytes: d.memoryBytes, vps: d.vps, workload: 'idle',
      processor: d.processor, rtcOffsetS: d.rtcOffsetS ?? 0, vmDir: this.o.vmDir, restore: false, devices: vmDevices(d), vmbusTransport: this.o.vmbusTransport,
    };
    this.warm = new WarmPool({
      size: Math.min(this.o.warm, MAX_WARM), shape, ticket: () => this.o.vid.ticket(), endpoint: (id) => this.paths.vmwpEndpoint(id),
      deletePartition: async (partitionId) => {
        await this.o.vid.call('FinalizePartition', { partitionId }, 1000).catch(() => undefined);
        await this.o.vid.call('DeletePartition', { partitionId }, 1000).catch(() => undefined);
      },
      stderrLog: join(this.paths.logDir, 'stderr.log'), logDir: this.paths.logDir, hvEndpoint: this.paths.hvEndpoint, log: this.o.log,
    });
  }

  processes(): ProcessInfo[] {
    const out: ProcessInfo[] = [];
    // A worker without a VM has its partition process loaded too: listed with it, as the host's
    // processes are (the CPU and memory they take are the host's).
    const withPartition = (pid: number, warm: NonNullable<ProcessInfo['warm']>): void => {
      out.push({ role: 'vmwp', vm: null, pid, warm });
      for (const child of partitionChildrenOf(pid)) out.push({ role: 'partition', vm: null, pid: child, warm });
    };
    for (const w of this.warm?.workers ?? []) withPartition(w.pid, w.booted ? 'ready' : 'booting');
    for (const pid of this.spare?.pids ?? []) withPartition(pid, 'spare');
    for (const r of this.vms.values()) {
      if (r.vmwpPid) out.push({ role: 'vmwp', vm: r.config.name, pid: r.vmwpPid });
      if (r.partitionPid) out.push({ role: 'partition', vm: r.config.name, pid: r.partitionPid });
    }
    return out;
  }

  async debugHypercall(args: Record<string, unknown>): Promise<{ call: string; as: string; status: number; statusName: string; output: unknown }> {
    const code = parseHvCall(String(args.call ?? ''));
    if (code === null) throw new MgmtFailure('InvalidArgument', `hypercall "${String(args.call)}" is unknown: use a name such as CreatePartition or a code such as 0x40`);
    const input = (args.input ?? {}) as Record<string, unknown>;
    let res: { status: number; output: unknown };
    let as = 'root';
    if (args.as !== undefined && args.as !== null) {
      if (args.page === true) throw new MgmtFailure('InvalidArgument', '--page is for the root\'s own calls: a VM\'s go through its partition process');
      const r = this.get(args.as);
      this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'issue a hypercall as');
      as = r.config.name;
      res = await this.linkOf(r, 'issue a hypercall as').request({ t: 'hypercall', asChild: true, code, input }).catch((e) => { throw linkFailure(e, `VM "${r.config.name}"`); });
    } else {
      // Over the socket (`fast: false` keeps a call off the hypercall page), so a refusal comes
      // back with the hypervisor's reason, which a debugging tool is for; through the page when
      // asked (how a root's hot-path calls go, e.g. `bench sched`'s interrupt probe).
      res = await this.o.vid.raw(code, input, args.page === true ? {} : { fast: false });
    }
    return { call: hvCallName(code), as, status: res.status, statusName: hvStatusName(res.status), output: res.output };
  }

  /** The hypervisor is gone: nothing can be torn down politely; kill every worker and partition. */
  killAll(): void {
    this.warm?.close();
    this.spare?.close();
    for (const r of this.vms.values()) {
      r.expectingExit = true;
      for (const pid of [r.vmwpPid, r.partitionPid]) {
        if (pid) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch { /* gone */ }
        }
      }
    }
  }

  async shutdownAll(): Promise<void> {
    this.stopping = true;
    this.warm?.close();
    this.spare?.close();
    await Promise.all([...this.vms.values()].filter((r) => r.vmwpPid !== null).map((r) => this.kill(r, 'host shutting down')));
  }

  /** This root is leaving but the host is not: let go of the workers, which keep their VMs. */
  close(): void {
    this.warm?.close();
    this.spare?.close();
    for (const r of this.vms.values()) {
      r.stopWatch?.();
      r.link?.close();
    }
  }
}
