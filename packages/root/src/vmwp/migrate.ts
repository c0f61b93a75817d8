/**
 * Live migration inside a VMWP (ARCHITECTURE §8): the source's pre-copy engine and the
 * destination's page sink.
 *
 * Source (`migrateOut`). The VMWP maps guest memory and drives the whole move; its root only
 * gives it the destination (the link's port on the fabric and the cluster key) and relays
 * progress. Steps, as Hyper-V and Clark et al.:
 *   1. setup: `migSetup` makes the destination's root build the partition and devices from the
 *      VM's config (its VMWP waits, memory empty);
 *   2. pre-copy: pass 1 sends every page, zero pages as a marker; each later pass sends the pages
 *      dirtied meanwhile. The dirty set is the union of the kernel's (userfaultfd async
 *      write-protect on the partition process's mapping, read with PAGEMAP_SCAN: writes that
 *      bypass every hvlab API are caught) and the shared dirty bitmap, where this process logs
 *      its own writes into guest memory (VSP ring writes) as QEMU logs DMA. It stops when the
 *      dirty set fits the downtime limit at the bandwidth measured, or after `maxPasses`, or
 *      (without auto-converge) once NO_PROGRESS_PASSES passes in a row left a dirty set more than
 *      NO_PROGRESS_RATIO of the one before: the guest dirties as fast as the link sends, and
 *      another pass would only resend the same pages (Xen's pre-copy likewise stops once it has
 *      sent 3x the VM's memory); auto-converge throttles the VM through the scheduler's cap when
 *      a pass does not shrink the dirty set (QEMU: 20 %, +10 %, at most 99 %);
 *   3. blackout: the VM is frozen at a step boundary exactly as for Save-VM, the last dirty pages
 *      and the SynIC pages (which the hypervisor writes) go, then the saved-state tree of every
 *      component (`migState`); the destination restores it, starts the VM and answers once its
 *      VPs run with the host's devices restored (the downtime ends there, as QEMU counts it); the
 *      source then commits (`migCommit`), which the destination answers once the guest's kernel
 *      says it resumed, and only then lets its VM go.
 * Any failure before the commit (destination gone, link cut, cancel) aborts the destination's
 * attempt and thaws the VM here, with nothing lost: the source never changed its own memory.
 *
 * Offline (`--offline`, stop-and-copy): frozen first, every page sent once, then the state.
 */
import { writeSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import {
  AUTO_CONVERGE, CLUSTER_WIRE_VERSION, MIG_BATCH_MAX_ENTRIES, MIG_BATCH_MAX_PAGES, MIG_GUEST_NOT_RESUMED, MIG_PAGE, PageKind, ranAtOf, decodePageBatch, dirtyBitmapGpa, dirtyBitmapWords, emptyRam, encodePageBatch,
  harvestDirtyPages, simpGpa, siefpGpa, WORKLOAD_DATA_GPA,
  type ClusterKey, type MigrationOptions, type MigrationPass, type MigrationStats, type PageEntry,
  MIG_COMMIT_WITHIN_MS, MIG_RESUME_WITHIN_MS, abortAnswer,
} from '@hvlab/protocol';
import { collectGarbage, hostClockId, monoNs, curveClientOptions, RpcClient, RpcFailure, testKnob, TEST_HOLD_END_SIGNAL, type Logger } from '@hvlab/runtime';
import { copyBytes, zeroPages } from '@hvlab/shm';
import { PagePool } from './compress.js';

const ZERO_PAGE = new Uint8Array(MIG_PAGE);
/** Batches in flight on the stream (each up to MIG_BATCH_MAX_PAGES pages). */
const WINDOW = 4;
const SETUP_TIMEOUT_MS = 30000;
/** A batch not acknowledged within this fails the move (a cut link holds data rather than refusing it). */
const PAGES_TIMEOUT_MS = 10000;
/** How often a pass reports its progress while it runs (move-status, the progress bar). */
const PROGRESS_EVERY_MS = 500;
const STATE_TIMEOUT_MS = 60000;
/**
 * Each commit attempt's wait (3 attempts). The destination answers once its guest's kernel resumed,
 * which it waits for up to 8 s (vmms.ts INCOMING_BOOT_MS); an attempt sent again meanwhile gets
 * the first one's answer, so the three together outlast that wait. Tests shorten it
 * (HVLAB_TEST_COMMIT_TIMEOUT_MS).
 */
const COMMIT_TIMEOUT_MS = testKnob('HVLAB_TEST_COMMIT_TIMEOUT_MS', 1) ?? 5000;
/** A call to the destination worker's socket unanswered this long has its root asked whether the attempt is still there, then again each PROBE_EVERY_MS. */
const PROBE_AFTER_MS = 1000;
const PROBE_EVERY_MS = 1000;
/**
 * A move that fails once its state was sent (the destination may run the VM) resumes the source's
 * copy only when the destination answers the abort (it dropped its copy, or had the commit: then
 * the move completed), or, unanswered, once its own bounds guarantee its copy is gone (the
 * watchdog's MIG_COMMIT_WITHIN_MS and a commit's MIG_RESUME_WITHIN_MS), with a margin. Its tries
 * meanwhile: each answer bound, and the pause between them.
 */
const UNRESOLVED_WAIT_MS = MIG_COMMIT_WITHIN_MS + MIG_RESUME_WITHIN_MS + 5000;
/** UNRESOLVED_WAIT_MS as tests set it (HVLAB_TEST_UNRESOLVED_WAIT_MS: their destination holds its answers back instead of dropping a copy). */
const UNRESOLVED_BOUND_MS = testKnob('HVLAB_TEST_UNRESOLVED_WAIT_MS', 1) ?? UNRESOLVED_WAIT_MS;
/** Tests whose destination holds its answers back cap the answer bound, as the root's (HVLAB_TEST_ABORT_ANSWER_MS). */
const ABORT_TIMEOUT_MS = testKnob('HVLAB_TEST_ABORT_ANSWER_MS', 100, 3000) ?? 3000;
const ABORT_PAUSE_MS = 1000;
/**
 * A move in doubt (its commit sent, the destination silent past UNRESOLVED_WAIT_MS) asks this often
 * until it answers; tests shorten it (HVLAB_TEST_IN_DOUBT_PAUSE_MS), so that the answer, once the
 * destination gives it, is heard within a second.
 */
const IN_DOUBT_PAUSE_MS = testKnob('HVLAB_TEST_IN_DOUBT_PAUSE_MS', 100, 5000) ?? 5000;
/**
 * Tests (HVLAB_TEST_POSTCOPY_HOLD_MS, whole ms from 1000 up to 60 s): after post-copy's switch-over
 * the source holds its background push and its commit this long, and only the pages the
 * destination's guest faults on go meanwhile (its pulls keep the destination's silence watchdog
 * fed). The post-copy phase then lasts that long whatever the guest's speed: a guest starved of
 * CPU dirties few pages, and a push of those few ended the phase before a test that acts during
 * it (cancel, cut, kill) got to act. A failure meanwhile ends the hold at once, and so does
 * TEST_HOLD_END_SIGNAL to the worker (a test that has acted). 0: no hold.
 */
const POSTCOPY_HOLD_MS = testKnob('HVLAB_TEST_POSTCOPY_HOLD_MS', 1000, 60000) ?? 0;
/** The post-copy holds under way in this worker, each ended by TEST_HOLD_END_SIGNAL (only while the knob is set). */
const postcopyHolds = new Set<() => void>();
if (POSTCOPY_HOLD_MS > 0) process.on(TEST_HOLD_END_SIGNAL, () => {
  for (const end of postcopyHolds) end();
});
/** The GPADL hint (migPremap): a few hypervisor calls at the destination. */
const PREMAP_TIMEOUT_MS = 10000;
/** Pre-copy without auto-converge stops after this many passes in a row that did not shrink the dirty set below NO_PROGRESS_RATIO of the previous one. */
export const NO_PROGRESS_PASSES = 2;
export const NO_PROGRESS_RATIO = 0.9;

export class MigrationCancelled extends Error {
  override name = 'MigrationCancelled';
}

/** What the engine needs of its VMWP. */
export interface MigrationSource {
  memory: SharedArrayBuffer;
  /** The file behind `memory`, read-only (its holes are zero pages nobody needs to read), or -1. */
  memoryFd: number;
  memoryBytes: number;
  vps: number;
  log: Logger;
  /** The partition process's dirty tracking: 'start' → mode; 'harvest' → its bitmap; 'stop'. */
  dirty(op: 'start'): Promise<unknown>;
  dirty(op: 'harvest'): Promise<unknown>;
  dirty(op: 'stop'): Promise<unknown>;
  /**
   * Stops the VM at a step boundary (as Save-VM does before it copies). With `harvest`, the
   * partition process's dirty log is read in the same request that parks its kernel (the answer
   * `dirty` takes for 'harvest'), once the VPs have stopped: one round trip less in the blackout.
   */
  freeze(harvest: boolean): Promise<unknown>;
  /** The frozen VM's saved-state tree without memory; synchronous, so it is one step with the last page copy. */
  capture(): Record<string, unknown>;
  /** Undoes `freeze` (the VM runs on). */
  thaw(): Promise<void>;
  /** Sets the scheduler's cap of the VM (percent), for auto-converge; null restores its own. */
  throttle(capPercent: number | null): Promise<void>;
  /** The guest's GPADLs as they are (VmbusServer.gpadlHint), for the destination to map ahead of the blackout. */
  gpadlHint?(): unknown;
  /**
   * The devices' states as they are while the VM runs (a capture's `device/ID` components; the
   * VMBus server's is the hint), sent with the GPADL hint for the destination to run its decoders
   * on ahead of the blackout: the blackout then runs warm code on both sides (this side's device
   * saves and their encoding too).
   */
  deviceStates?(): Record<string, unknown>;
  progress(stats: MigrationStats): void;
}

export interface MigrateOutRequest {
  mig: string;
  vm: string;
  from: string;
  to: string;
  endpoint: string;
  /** The credential of the pair (source, destination): every request of the stream carries it. */
  auth: string;
  key: ClusterKey;
  config: Record<string, unknown>;
  options: MigrationOptions;
}

/** A token bucket for `--bandwidth` (bytes per second; 0 = none). */
class Pacer {
  private allowance = 0;
  private last = performance.now();
  /** `check` throws when the move was cancelled: a pause longer than a moment looks at it every 100 ms. */
  constructor(private readonly bps: number, private readonly check: () => void = () => undefined) {}
  async take(bytes: number): Promise<void> {
    if (this.bps <= 0) return;
    const now = performance.now();
    this.allowance = Math.min(this.bps / 4, this.allowance + ((now - this.last) / 1000) * this.bps);
    this.last = now;
    this.allowance -= bytes;
    if (this.allowance >= 0) return;
    const until = performance.now() + (-this.allowance / this.bps) * 1000;
    for (let left = until - performance.now(); left > 0; left = until - performance.now()) {
      await new Promise((r) => setTimeout(r, Math.ceil(Math.min(left, 100))));
      this.check();
    }
  }
}

/** Pages below this are the firmware, kernel, task and SynIC pages the host side reads: sent before post-copy's switch-over. */
const EAGER_PAGES = WORKLOAD_DATA_GPA / MIG_PAGE;

/** The GPADL pages of a saved VMBus server (the VSPs' rings): the destination's devices read them before the guest runs. */
function gpadlPages(tree: Record<string, unknown>): Set<number> {
  const out = new Set<number>();
  const gs = ((tree.components as Record<string, unknown> | undefined)?.vmbus as { gpadls?: unknown } | undefined)?.gpadls;
  if (Array.isArray(gs)) for (const g of gs) for (const p of (g as { pfns?: unknown }).pfns as number[] ?? []) if (Number.isSafeInteger(p)) out.add(p);
  return out;
}

export class MigrationOut {
  readonly stats: MigrationStats;
  private cancelled: string | null = null;
  /** Rejects once the move is cancelled: a wait on the partition process that must not hold a cancel races it (kernelDirty). */
  private readonly onCancel: Promise<never>;
  private rejectOnCancel: (e: Error) => void = () => undefined;
  private client: RpcClient | null = null;
  /** The number of the move's last request (call: the destination replays a number it has seen). */
  private rq = 0;
  /**
   * The destination worker's own stream socket, when its root opened one (migSetup's `port`, on the
   * fabric, through the same link): the pages and the state go there, one hop fewer each way than
   * through its root; the setup, the commit and an abort go to its root.
   */
  private stream: RpcClient | null = null;
  private readonly t0 = performance.now();
  private readonly guestPages: number;
  private readonly zeroMap = new Uint8Array(MIG_BATCH_MAX_PAGES);
  private readonly inFlight = new Set<Promise<void>>();
  private pool: PagePool | null = null;
  private streamError: Error | null = null;
  private pacer: Pacer;
  /** Wire bytes and pages acknowledged, and when, for the bandwidth estimate. */
  private rawBytes = 0;
  private sentBytes = 0;
  private throttle = 0;
  private frozen = false;
  /**
   * The state (or post-copy's switch) was handed to the stream: the destination may run the VM
   * from here. A cancel is refused from here on (the switch-over completes or fails on its own), and
   * a failure resumes this copy only once the destination's is surely gone (abortDestination).
   */
  private switchingOver = false;
  /**
   * The commit was sent (its first try): the destination may have taken it, and then it keeps the
   * VM for good. From here this copy resumes only on the destination's word that it has no copy
   * (abortDestination), never on its silence: a commit that arrived while every answer was lost
   * (a link that lost only the destination's replies, a destination root that crashed before it
   * answered) ran the VM on both hosts once the bounds passed.
   */
  private commitSent = false;
  /** When the move fell in doubt (its commit sent, no word from the destination within UNRESOLVED_WAIT_MS), or 0. */
  private inDoubtSince = 0;
  /** A forced cancel of a move in doubt (move-cancel --force): this copy resumes without the destination's word. */
  private forced: string | null = null;
  /** A move in doubt had its answer from the destination: a forced cancel has nothing to decide. */
  private settled = false;
  /** Wakes abortDestination's pause (a forced cancel). */
  private wakeAbort: (() => void) | null = null;
  /** Pages with bytes in one batch at most (MIG_BATCH_MAX_PAGES, or fewer on a slow --bandwidth). */
  private readonly batchPages: number;
  /** When progress was last reported (performance.now()). */
  private lastReportAt = 0;

  constructor(private readonly src: MigrationSource, private readonly req: MigrateOutRequest) {
    this.onCancel = new Promise<never>((_, reject) => (this.rejectOnCancel = reject));
    this.onCancel.catch(() => undefined);
    this.guestPages = dirtyBitmapGpa(src.memoryBytes) / MIG_PAGE;
    this.pacer = new Pacer(req.options.bandwidthBps, () => this.check());
    // A batch is at most what the pacer lets go at once (a quarter second's bytes): at 64 KiB/s a
    // full batch of 1 MiB waited 16 s for the pacer, and the pass showed no progress meanwhile.
    const bps = req.options.bandwidthBps;
    this.batchPages = bps > 0 ? Math.max(1, Math.min(MIG_BATCH_MAX_PAGES, Math.floor(bps / 4 / MIG_PAGE))) : MIG_BATCH_MAX_PAGES;
    this.stats = {
      vm: req.vm, from: req.from, to: req.to, method: req.options.offline ? 'offline' : req.options.postcopy ? 'postcopy' : 'precopy', status: 'setup',
      'total-time': 0, 'setup-time': 0, 'expected-downtime': 0, ram: emptyRam(this.guestPages * MIG_PAGE), pass: 0, 'compression-ratio': 1,
      'throttle-percentage': 0, 'dirty-tracking': 'bitmap', passes: [], options: req.options, startedAt: new Date().toISOString(),
    };
  }

  /**
   * Cancels the move; returns why not when it is too late (the switch-over has begun), else null.
   * `force` cancels only a move in doubt: its VM resumes here without the destination's word, which
   * may leave it running there too (the operator's call, as QEMU leaves it to its management).
   */
  cancel(why = 'cancelled', force = false): string | null {
    if (this.settled) return `the move of VM "${this.req.vm}" to ${this.req.to} has its outcome already (${this.req.to} answered): nothing to cancel`;
    if (this.switchingOver && force && this.inDoubtSince > 0) {
      this.forced ??= why;
      this.src.log.warn({ why }, 'a move in doubt is cancelled by force: the VM resumes here without the destination\'s word');
      this.wakeAbort?.();
      return null;
    }
    if (this.inDoubtSince > 0) return `the move of VM "${this.req.vm}" to ${this.req.to} is in doubt: its commit was sent and ${this.req.to} has not answered since; the VM stays frozen here until ${this.req.to} says whether it runs it. If ${this.req.to} is gone for good, "vm move-cancel --force" resumes the VM here (if ${this.req.to} runs it, it then runs on both hosts)`;
    if (force) return `the move of VM "${this.req.vm}" to ${this.req.to} is not in doubt: --force cancels only a move whose commit went unanswered past its bounds (drop --force to cancel it before its switch-over)`;
    if (this.switchingOver) return `the move of VM "${this.req.vm}" to ${this.req.to} is in its switch-over (its state was sent, and the VM may run there already): it is too late to cancel; the move completes, or fails and the VM resumes here, on its own (or, if ${this.req.to} stops answering after the commit, is in doubt: "vm move-status" says so)`;
    if (this.cancelled !== null) return null;
    this.cancelled = why;
    this.src.log.warn({ why }, 'migration cancel requested');
    this.rejectOnCancel(new MigrationCancelled(why));
    // Whatever waits on the stream stops waiting now.
    this.client?.close();
    this.stream?.close();
    return null;
  }

  /**
   * The statistics a commit carries, its total time ending as it is sent: the destination shows
   * these once it commits, and this side's completed move keeps the same total, so the two hosts'
   * move-status agree. (This side's total went on to the commit's answer, after the destination's
   * guest resumed: 20-190 ms more than the destination said for the same move. The time until the
   * answer is in `downtime-acked`.) The move as completed, nothing remaining, and the expected
   * downtime the downtime it had: the destination showed the last pass's estimate (0 ms beside a
   * downtime of 219).
   */
  private commitStats(): MigrationStats {
    const st = structuredClone(this.stats);
    return { ...st, status: 'completed', 'total-time': this.elapsed(), ram: { ...st.ram, remaining: 0 }, 'expected-downtime': st.downtime ?? st['expected-downtime'] };
  }

  /**
   * Sends the commit until the destination answers it, at most `tries` times (each waits
   * COMMIT_TIMEOUT_MS; the destination answers a repeated commit as the first). A lost message is
   * sent again; the refusal of a guest that did not resume there (its copy stopped by then) is
   * final, and so is a commit the destination cannot read (BadRequest: it would refuse the same
   * frame again). Anything else may have left the destination running its copy. `last`: the last
   * try's failure.
   */
  private async sendCommit(stats: MigrationStats, tries: number): Promise<{ committed: boolean; refused: string | null; last: string }> {
    let refused: string | null = null;
    let last = 'no try';
    for (let i = 0; i < tries && refused === null; i++) {
      this.commitSent = true;
      const t = performance.now();
      try {
        await this.call({ op: 'migCommit', stats }, COMMIT_TIMEOUT_MS);
        return { committed: true, refused: null, last };
      } catch (e) {
        if (e instanceof RpcFailure && (e.code === MIG_GUEST_NOT_RESUMED || e.code === 'BadRequest')) refused = e.message;
        last = (e as Error).message;
        this.src.log.warn({ err: last, attempt: i + 1 }, 'commit not acknowledged');
      }
      // A try refused at once (a root that is starting again) waits out its share before the next.
      const left = COMMIT_TIMEOUT_MS - (performance.now() - t);
      if (refused === null && i + 1 < tries && left > 0) await new Promise((r) => setTimeout(r, Math.min(left, ABORT_PAUSE_MS)));
    }
    return { committed: false, refused, last };
  }

  private elapsed(): number {
    return Math.round(performance.now() - this.t0);
  }

  private check(): void {
    if (this.cancelled !== null) throw new MigrationCancelled(this.cancelled);
  }

  /**
   * Tells the destination's root to drop the attempt, through a socket of its own (the move's may
   * be closed). Before the switch-over one unanswered try is enough: the destination cannot run
   * the VM without its state, and drops the attempt when the stream stays silent. Once the state
   * was sent its copy may run, and this copy must not resume beside it: the abort is sent again
   * until it is answered (dropped there, or committed: then the move completed). Unanswered and
   * with no commit sent, the destination's own bounds drop its uncommitted copy
   * (UNRESOLVED_WAIT_MS), and this copy resumes then. Once the commit was sent only the
   * destination's word decides: the move is in doubt past that bound, the VM stays frozen here,
   * and the abort goes on being sent (each IN_DOUBT_PAUSE_MS) until it is answered or a forced
   * cancel resumes the VM here (null then). Before, one try with 2 s for the answer: on a link of
   * 600 ms a cancel in the commit left the VM running on both hosts until the destination's
   * watchdog, 12-14 s; and after that, a commit whose answers were all lost did the same after 28 s.
   */
  private async abortDestination(why: string): Promise<{ committed?: boolean; aborted?: boolean } | null> {
    const log = this.src.log;
    const until = performance.now() + (this.switchingOver ? UNRESOLVED_BOUND_MS : 0);
    for (let attempt = 1; ; attempt++) {
      if (this.forced !== null) return null;
      const c = new RpcClient(this.req.endpoint, curveClientOptions(this.req.key));
      try {
        const a = await c.call({ from: this.req.from, auth: this.req.auth, mig: this.req.mig, ...this.abortBody(why) }, this.switchingOver ? ABORT_TIMEOUT_MS : 2000, CLUSTER_WIRE_VERSION);
        const answer = abortAnswer(a, this.commitSent);
        if (answer !== null) {
          if (this.inDoubtSince > 0) this.settled = true;
          if (attempt > 1) log.info({ attempt, answer }, 'the destination answered the abort');
          return answer;
        }
        if (attempt === 1) log.warn({ answer: a }, 'the destination does not know the attempt nor say whether it runs the VM: asking again');
      } catch (e) {
        if (attempt === 1) {
          log.warn({ err: (e as Error).message }, this.commitSent ? 'the destination did not answer the abort: the VM stays frozen here until it says whether it runs the VM'
            : this.switchingOver ? 'the destination did not answer the abort: the VM stays frozen here until it does, or until its copy there is surely gone'
              // Before the switch-over the VM ran on here all along; the destination drops its attempt when the stream stays silent.
              : 'the destination did not answer the abort: it drops the attempt once the stream has been silent for its bound');
        }
      } finally {
        c.close();
      }
      if (performance.now() >= until) {
        if (!this.switchingOver) return null;
        if (!this.commitSent) {
          log.warn({ attempts: attempt }, 'the destination did not answer the abort: its uncommitted copy is gone by its own bounds now');
          return null;
        }
        if (this.inDoubtSince === 0) {
          this.inDoubtSince = Date.now();
          this.stats['error-desc'] = `in doubt: the commit went to ${this.req.to}, which has not answered since (${why}); the VM stays frozen here until ${this.req.to} says whether it runs it ("vm move-cancel --force" resumes it here regardless)`;
          log.error({ to: this.req.to, attempts: attempt }, 'the move is in doubt: the commit was sent and the destination is silent; the VM stays frozen here until it answers');
        }
        // Each try: a root that re-attached meanwhile (restarted) hears of the move from these.
        this.report();
      }
      // A forced cancel that came during the call does not wait for the pause.
      if (this.forced !== null) return null;
      await new Promise<void>((r) => {
        const t = setTimeout(r, this.inDoubtSince > 0 ? IN_DOUBT_PAUSE_MS : ABORT_PAUSE_MS);
        this.wakeAbort = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wakeAbort = null;
    }
  }

  /** The abort's request: the reason, and the VM's name and id for a destination that no longer knows the attempt (ownCopyOf there). */
  private abortBody(why: string): Record<string, unknown> {
    const id = this.req.config.id;
    return { op: 'migAbort', reason: why.slice(0, 500), vm: this.req.vm, ...(typeof id === 'string' ? { vmId: id } : {}) };
  }

  /**
   * The guest's GPADLs (its channels' rings), sent while the VM runs for the destination to map
   * them (migPremap): the blackout's own maps then find them and only check them, where they
   * were 2-5 ms of its calls. A hint: one that fails costs only those maps. Never rejects.
   */
  private async premapAhead(): Promise<void> {
    let hint: unknown;
    try {
      hint = this.src.gpadlHint?.();
    } catch (e) {
      this.src.log.warn({ err: (e as Error).message }, 'no GPADL hint');
      return;
    }
    if (hint === undefined) return;
    let rehearsal: Record<string, unknown> | undefined;
    try {
      rehearsal = process.env.HVLAB_MIGRATE_REHEARSAL === '0' ? undefined : this.src.deviceStates?.();
    } catch (e) {
      this.src.log.warn({ err: (e as Error).message }, 'no device states to rehearse the blackout with');
    }
    const body = rehearsal && hint !== null && typeof hint === 'object' ? { ...(hint as Record<string, unknown>), rehearsal } : hint;
    try {
      await this.call({ op: 'migPremap', state: Buffer.from(JSON.stringify(body)) }, PREMAP_TIMEOUT_MS);
    } catch (e) {
      this.src.log.warn({ err: (e as Error).message }, 'the destination did not map the GPADLs ahead: the blackout maps them');
    }
  }

  /**
   * One request of the move to the destination, numbered (`rq`, one count over both sockets) and
   * sent again while unanswered each time its socket's connection comes back (RpcClient's
   * `resend`). Every connection crosses the fabric's link proxy, and a fabric that dies takes what
   * its link held: a request on its way, or the answer on its way back (the destination answers the
   * connection the request came on, which is gone). Before, the move waited out that call's bound
   * (10 s for a page batch) and failed, though the fabric was back within it.
   *
   * Whether the first copy arrived is not known, so a request is sent again only because the
   * destination does not carry it out twice: it answers a number it has seen with its first answer
   * (RpcServer's replayKey, peerReplayKey; at its root and at its worker's stream socket alike),
   * waiting for it if it is still under way. Most of them must not be carried out twice:
   *   - migSetup builds the VM: a second is refused (the VM exists);
   *   - migState and migSwitch start it: a second is refused (it runs already), and the refusal
   *     failed the move;
   *   - migPull takes the pages the guest waits for off its list: a second answers other pages,
   *     and the first answer's are never sent;
   *   - migPages writes the same bytes again, but a copy written late (behind the move's later
   *     batches: the source goes on once a batch is answered) could put an older copy of a page
   *     over the newer one a later pass sent;
   *   - migPremap (a hint that maps what is not mapped), migCommit (the destination answers a
   *     repeated commit as the first) and migAbort (answered as it stands) would be safe anyway.
   * A destination whose root restarted has no memory of what it answered; its connection drops
   * too, and what is sent again then is carried out as new (a second setup is refused and fails the
   * move, as its timeout did). sendCommit's own tries are new requests (new numbers): a commit sent
   * again after a failure is tried again, as before.
   */
  private async call(body: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
    const c = this.stream !== null && STREAM_OPS.has(body.op as string) ? this.stream : this.client!;
    try {
      const answer = c.call({ from: this.req.from, auth: this.req.auth, mig: this.req.mig, rq: ++this.rq, ...body }, timeoutMs, CLUSTER_WIRE_VERSION, { resend: true });
      return await (c === this.stream ? this.watched(answer) : answer);
    } catch (e) {
      this.check();
      throw e;
    }
  }

  /** A socket of the move to the destination's root or worker; what it sends again when its connection comes back goes to the log. */
  private moveClient(endpoint: string, to: 'root' | 'worker'): RpcClient {
    const c = new RpcClient(endpoint, curveClientOptions(this.req.key));
    c.onResend = (ops) => this.src.log.warn({ to, ops }, 'the connection to the destination came back: its unanswered requests are sent again');
    return c;
  }

  /**
   * A call to the destination worker's own socket, watched through its root: nothing on that
   * socket answers once the worker is gone (a SIGKILL), and the source waited for the call's
   * bound (60 s for the state, with its VM frozen; 10 s for a page batch). The root drops the
   * attempt at once when its worker dies: from PROBE_AFTER_MS on, the root is asked each
   * PROBE_EVERY_MS (migProbe), and a drop fails the call with the root's reason. An answer that
   * proves nothing (a root of the build before, a restarted one, none at all) keeps the wait.
   */
  private async watched(answer: Promise<unknown>): Promise<unknown> {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const done = answer.finally(() => {
      settled = true;
      clearTimeout(timer);
    });
    const dropped = new Promise<never>((_, reject) => {
      const look = (): void => {
        if (settled || this.client === null) return;
        void this.client.call({ from: this.req.from, auth: this.req.auth, mig: this.req.mig, op: 'migProbe' }, PROBE_EVERY_MS * 2, CLUSTER_WIRE_VERSION).then((a) => {
          const st = a !== null && typeof a === 'object' ? a as { state?: unknown; why?: unknown } : {};
          if (settled) return;
          if (st.state === 'dropped') reject(new Error(`the destination ${this.req.to} dropped the attempt: ${typeof st.why === 'string' ? st.why.slice(0, 500) : 'no reason given'}`));
          else timer = setTimeout(look, PROBE_EVERY_MS);
        }, () => {
          if (!settled) timer = setTimeout(look, PROBE_EVERY_MS);
        });
      };
      timer = setTimeout(look, PROBE_AFTER_MS);
    });
    dropped.catch(() => undefined);
    return await Promise.race([done, dropped]);
  }

  private report(): void {
    this.lastReportAt = performance.now();
    // A completed move's total ends at its commit (commitStats), on both hosts alike.
    if (this.stats.status !== 'completed') this.stats['total-time'] = this.elapsed();
    this.src.progress(structuredClone(this.stats));
  }

  /** Bytes per second the stream has achieved so far (raw page bytes carried, zero pages free). */
  private bandwidth(): number {
    const s = (performance.now() - this.t0 - this.stats['setup-time']) / 1000;
    return s > 0 ? Math.max(1, (this.stats.ram.transferred) / s) : 1;
  }

  /** The next batch of `pages` from index `i` on (zero pages as markers, others copied now); returns it and the next index. */
  private nextBatch(pages: ArrayLike<number>, i: number): [PageEntry[], number] {
    const mem = this.src.memory;
    const ram = this.stats.ram;
    const batch: PageEntry[] = [];
    let withBytes = 0;
    // A run of consecutive pages is zero-scanned at once; the batch ends at 256 pages with bytes or 4096 entries.
    const most = this.batchPages;
    while (withBytes < most && batch.length < MIG_BATCH_MAX_ENTRIES && i < pages.length) {
      const first = pages[i]!;
      let run = 1;
      const room = Math.min(most - withBytes, MIG_BATCH_MAX_ENTRIES - batch.length);
      while (run < room && i + run < pages.length && pages[i + run] === first + run) run++;
      zeroPages(mem, first, run, this.zeroMap, this.src.memoryFd);
      for (let k = 0; k < run; k++) {
        const pfn = first + k;
        if (this.zeroMap[k]) {
          batch.push({ pfn, kind: PageKind.Zero, data: new Uint8Array(0) });
          ram.duplicate++;
          continue;
        }
        const page = new Uint8Array(MIG_PAGE);
        copyBytes(page, 0, mem, pfn * MIG_PAGE, MIG_PAGE);
        batch.push({ pfn, kind: PageKind.Raw, data: page });
        ram.normal++;
        withBytes++;
      }
      i += run;
    }
    return [batch, i];
  }

  /** Compresses what pays (deflate, fastest level, on the worker pool); a page that does not shrink goes raw. */
  private async compress(batch: PageEntry[]): Promise<void> {
    if (!this.req.options.compress) return;
    const raw = batch.filter((e) => e.kind === PageKind.Raw);
    if (raw.length === 0) return;
    this.pool ??= new PagePool();
    const z = await this.pool.deflate(raw.map((e) => e.data));
    raw.forEach((e, i) => {
      const c = z[i];
      if (!c) return;
      e.kind = PageKind.Deflate;
      e.data = c;
    });
  }

  /** A batch made ready to go: compressed where that pays, encoded, and its bytes taken from the pacer. */
  private async encodeBatch(batch: PageEntry[]): Promise<{ data: Uint8Array; raw: number }> {
    await this.compress(batch);
    this.check();
    const data = encodePageBatch(batch);
    await this.pacer.take(data.length);
    return { data, raw: batch.filter((e) => e.kind !== PageKind.Zero).length * MIG_PAGE };
  }

  /** Counts a batch the destination took. */
  private sent(b: { data: Uint8Array; raw: number }): void {
    const ram = this.stats.ram;
    ram.transferred += b.data.length;
    ram['normal-bytes'] += b.raw;
    this.rawBytes += b.raw;
    this.sentBytes += b.data.length;
    // Within a pass too, twice a second: a pass on a slow link takes minutes, and move-status
    // showed its start until it ended. Not in a live move's blackout, where each step counts (an
    // offline move is all blackout, and shows its progress).
    if ((!this.frozen || this.req.options.offline) && performance.now() - this.lastReportAt >= PROGRESS_EVERY_MS) this.report();
  }

  private async sendBatch(batch: PageEntry[]): Promise<void> {
    const b = await this.encodeBatch(batch);
    const p: Promise<void> = this.call({ op: 'migPages', data: b.data }, PAGES_TIMEOUT_MS).then(() => this.sent(b), (e: Error) => {
      this.streamError ??= new Error(`the stream to ${this.req.to} failed: ${e.message}`);
    }).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    while (this.inFlight.size >= WINDOW) await Promise.race(this.inFlight);
    if (this.streamError) throw this.streamError;
  }

  private async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    if (this.streamError) throw this.streamError;
    this.check();
  }

  /** Sends the pages listed (ascending page numbers), each read just before its batch goes. */
  private async sendPages(pages: ArrayLike<number>): Promise<number> {
    let sent = 0;
    for (let i = 0; i < pages.length;) {
      this.check();
      const [batch, next] = this.nextBatch(pages, i);
      i = next;
      sent += batch.length;
      // QEMU's `remaining`: what this pass has still to go (it stood at the pass's start before).
      this.stats.ram.remaining = (pages.length - i) * MIG_PAGE;
      await this.sendBatch(batch);
    }
    await this.drain();
    return sent;
  }

  /** Copies the pages listed now, all of them (one synchronous step), for sending afterwards. */
  private snapshot(pages: ArrayLike<number>): PageEntry[][] {
    const out: PageEntry[][] = [];
    for (let i = 0; i < pages.length;) {
      const [batch, next] = this.nextBatch(pages, i);
      out.push(batch);
      i = next;
    }
    return out;
  }

  private async sendSnapshot(batches: PageEntry[][]): Promise<number> {
    let sent = 0;
    for (const b of batches) {
      this.check();
      sent += b.length;
      await this.sendBatch(b);
    }
    await this.drain();
    return sent;
  }

  /**
   * The frozen VM's pages listed, copied now: every batch but the last is sent (and answered); the
   * last is kept to go with the state. `pages` counts them all.
   */
  private async sendFrozen(pages: ArrayLike<number>): Promise<{ pages: number; last: PageEntry[] | null }> {
    const batches = this.snapshot(pages);
    const last = batches.pop() ?? null;
    return { pages: await this.sendSnapshot(batches) + (last?.length ?? 0), last };
  }

  /** The dirty set since the last harvest: the kernel's (partition process) ∪ the shared bitmap (this process's own writes, and the guest kernel's marks). */
  private async harvest(): Promise<number[]> {
    return this.withShared(await this.kernelDirty());
  }

  /**
   * The partition process's dirty bitmap (it is untrusted: anything but a bitmap of this memory's
   * size fails the move). A cancel does not wait for it: the VM runs meanwhile, and a partition
   * process that does not answer (stopped: SIGSTOP, a fault) held a cancel for the harvest's 10 s.
   * The freeze is not raced so: its own failure path thaws what it froze.
   */
  private async kernelDirty(): Promise<Int32Array> {
    return checkDirtyAnswer(await Promise.race([this.src.dirty('harvest'), this.onCancel]), this.src.memoryBytes);
  }

  /** ORs the shared bitmap into `bitmap` (fetch-and-clear) and lists the pages of guest memory set in it. */
  private withShared(bitmap: Int32Array): number[] {
    const shared = dirtyBitmapWords(this.src.memory);
    const words = Math.min(bitmap.length, shared.length);
    for (let w = 0; w < words; w++) {
      if (shared[w] !== 0) bitmap[w]! |= Atomics.exchange(shared, w, 0);
    }
    this.stats.ram['dirty-sync-count']++;
    const pages = harvestDirtyPages(bitmap);
    // The dirty bitmap's own pages are the destination's, never sent.
    let n = pages.length;
    while (n > 0 && pages[n - 1]! >= this.guestPages) n--;
    pages.length = n;
    return pages;
  }

  private recordPass(pass: number, pages: number, dirty: number, startedAt: number): void {
    const now = this.elapsed();
    const p: MigrationPass = { pass, pages, dirtyPages: dirty, ms: now - startedAt, at: now };
    this.stats.passes.push(p);
    const secs = Math.max(0.001, p.ms / 1000);
    this.stats.ram['dirty-pages-rate'] = Math.round(dirty / secs);
    this.stats.ram['pages-per-second'] = Math.round(pages / secs);
    this.stats.ram.mbps = Math.round(((this.stats.ram.transferred * 8) / 1e6 / Math.max(0.001, (now - this.stats['setup-time']) / 1000)) * 100) / 100;
    this.stats.ram.remaining = dirty * MIG_PAGE;
    this.stats['expected-downtime'] = Math.round(((dirty * MIG_PAGE) / this.bandwidth()) * 1000);
    this.stats['compression-ratio'] = this.sentBytes > 0 ? Math.round((this.rawBytes / Math.max(1, this.sentBytes - 0)) * 100) / 100 : 1;
  }

  async run(): Promise<MigrationStats> {
    const { options } = this.req;
    const log = this.src.log;
    this.client = this.moveClient(this.req.endpoint, 'root');
    let tracking = false;
    // The blackout's instants, on the clock the hosts share (CLOCK_MONOTONIC ns).
    let blackoutNs = 0;
    let frozenNs = 0;
    /** The blackout's last page batch, sent with the state. */
    let lastBatch: PageEntry[] | null = null;
    try {
      const setup = await this.call({ op: 'migSetup', config: this.req.config, options }, SETUP_TIMEOUT_MS).catch((e) => {
        throw new Error(`the destination ${this.req.to} did not set up: ${(e as Error).message}`);
      });
      const port = streamPortOf(setup);
      if (port !== null) this.stream = this.moveClient(this.req.endpoint.replace(/:\d+$/, `:${port}`), 'worker');
      this.stats.stream = port !== null ? 'worker' : 'root';
      log.info({ stream: this.stats.stream }, 'the destination is set up');
      this.stats['setup-time'] = this.elapsed();
      this.stats.status = 'active';
      this.check();
      // Alongside the first pass; done before any blackout.
      const premapped = this.premapAhead();
      const all = Array.from({ length: this.guestPages }, (_, i) => i);
      if (options.offline) {
        await premapped;
        this.check();
        this.collectBeforeBlackout();
        blackoutNs = monoNs();
        await this.doFreeze(false);
        frozenNs = monoNs();
        this.stats.pass = 1;
        const t = this.elapsed();
        this.report();
        this.stateTree = this.src.capture();
        const sent = await this.sendFrozen(all);
        lastBatch = sent.last;
        this.recordPass(1, sent.pages, 0, t);
      } else {
        const mode = await this.src.dirty('start');
        tracking = true;
        // The partition says which tracking it runs (an answer that is neither counts as the bitmap).
        this.stats['dirty-tracking'] = (mode as { mode?: unknown } | null)?.mode === 'kernel' ? 'kernel' : 'bitmap';
        // Forget what the shared bitmap held before: pass 1 sends everything.
        harvestDirtyPages(dirtyBitmapWords(this.src.memory));
        let toSend: number[] = all;
        let prevDirty = Infinity;
        let stalled = 0;
        for (let pass = 1; ; pass++) {
          this.stats.pass = pass;
          const t = this.elapsed();
          this.report();
          const n = await this.sendPages(toSend);
          const dirty = await this.harvest();
          this.recordPass(pass, n, dirty.length, t);
          this.report();
          const expectMs = ((dirty.length * MIG_PAGE) / this.bandwidth()) * 1000;
          stalled = dirty.length > prevDirty * NO_PROGRESS_RATIO ? stalled + 1 : 0;
          log.info({ pass, sent: n, dirty: dirty.length, expectMs: Math.round(expectMs), throttle: this.throttle }, 'pre-copy pass');
          if (options.postcopy) {
            // Post-copy switches over after the first full pass: what is dirty now comes on demand.
            toSend = dirty;
            break;
          }
          const stop = expectMs <= options.downtimeLimitMs ? 'converged' : pass >= options.maxPasses ? 'max-passes' : !options.autoConverge && stalled >= NO_PROGRESS_PASSES ? 'no-progress' : null;
          if (stop) {
            this.stats['stop-reason'] = stop;
            log.info({ pass, dirty: dirty.length, why: stop }, 'pre-copy ends');
            toSend = dirty;
            break;
          }
          if (options.autoConverge && dirty.length >= prevDirty * 0.5 && pass >= 2) {
            this.throttle = this.throttle === 0 ? AUTO_CONVERGE.initial : Math.min(AUTO_CONVERGE.max, this.throttle + AUTO_CONVERGE.increment);
            this.stats['throttle-percentage'] = this.throttle;
            await this.src.throttle(100 - this.throttle);
          }
          prevDirty = dirty.length;
          toSend = dirty;
        }
        await premapped;
        this.check();
        this.collectBeforeBlackout();
        if (options.postcopy) return await this.postcopy(toSend);
        // Blackout.
        blackoutNs = monoNs();
        // The guest is parked, its last writes in the kernel's log: read with the freeze.
        const bitmap = await this.doFreeze(true);
        frozenNs = monoNs();
        // One synchronous step: device states, the pages this process dirtied, and their copies.
        this.stateTree = this.src.capture();
        const last = new Set(toSend);
        for (const p of this.withShared(bitmap)) last.add(p);
        // The hypervisor writes the SynIC pages; they go whatever the logs say.
        for (let vp = 0; vp < this.src.vps; vp++) for (const gpa of [simpGpa(vp), siefpGpa(vp)]) if (gpa / MIG_PAGE < this.guestPages) last.add(gpa / MIG_PAGE);
        const final = [...last].sort((a, b) => a - b);
        const t = this.elapsed();
        // The blackout's pass is a pass: `pass` counts it, as `passes` does.
        this.stats.pass++;
        const sent = await this.sendFrozen(final);
        lastBatch = sent.last;
        this.recordPass(this.stats.pass, sent.pages, 0, t);
      }
      this.check();
      // The last batch goes with the state: the destination writes it first, and the blackout
      // saves the round trip it would take on its own (the batches before it are all written).
      const tail = lastBatch ? await this.encodeBatch(lastBatch) : null;
      const sentNs = monoNs();
      // Tests: a component the destination has no device for, which it refuses once it has set the
      // VPs' states (their restore goes ahead of the devices' decode there).
      const tree = process.env.HVLAB_MIGRATE_STOWAWAY === '1' ? { ...this.stateTree, components: { ...(this.stateTree.components as Record<string, unknown>), 'device/stowaway': {} } } : this.stateTree;
      const state = Buffer.from(JSON.stringify(tree));
      let answer: unknown;
      this.check();
      this.switchingOver = true;
      try {
        answer = await this.call({ op: 'migState', state, ...(tail ? { pages: tail.data } : {}) }, STATE_TIMEOUT_MS);
      } catch (e) {
        throw new Error(`the destination ${this.req.to} did not start the VM: ${(e as Error).message}`);
      }
      if (tail) this.sent(tail);
      const heardNs = monoNs();
      const ranAtNs = this.downtime(answer, blackoutNs, sentNs, heardNs);
      if (frozenNs > 0) {
        const ms = (a: number, b: number): number => (b - a) / 1e6;
        const start = ms(sentNs, ranAtNs ?? heardNs);
        const there = destinationMsOf(answer, start);
        this.stats.blackout = {
          freeze: Math.round(ms(blackoutNs, frozenNs)), pages: Math.round(ms(frozenNs, sentNs)), start: Math.round(start),
          ...(there === null ? {} : { destination: Math.round(there), transit: Math.round(start - there) }),
          ...(ranAtNs === null ? {} : { ack: Math.round(ms(ranAtNs, heardNs)) }),
        };
      }
      // The destination runs the VM; it keeps it only once committed.
      const commitStats = this.commitStats();
      const { committed, refused } = await this.sendCommit(commitStats, 3);
      if (!committed) {
        // An abort the destination answers "committed" means the commit did arrive.
        const a = abortAnswer(await this.call(this.abortBody(refused ?? 'no commit acknowledgement'), COMMIT_TIMEOUT_MS).catch(() => null), true);
        if (a?.committed !== true) throw new Error(refused !== null ? `the destination ${this.req.to} refused the commit: ${refused}` : `the destination ${this.req.to} did not acknowledge the commit`);
      }
      this.stats.status = 'completed';
      this.stats['total-time'] = commitStats['total-time'];
      this.stats.ram.remaining = commitStats.ram.remaining;
      this.stats['expected-downtime'] = commitStats['expected-downtime'];
      this.report();
      log.info({ to: this.req.to, totalMs: this.stats['total-time'], downtimeMs: this.stats.downtime, bytes: this.stats.ram.transferred, passes: this.stats.passes.length }, 'migration completed');
      return this.stats;
    } catch (e) {
      if (this.switched) return this.lost(e as Error);
      // A cancel closes the stream, so what fails first may be a send: it is still a cancel.
      const cancelled = e instanceof MigrationCancelled || this.cancelled !== null;
      // A cancel's reason says so itself ("cancelled by the user", as the root's own record of it).
      const why = cancelled ? (this.cancelled ?? (e as Error).message) : (e as Error).message;
      log.warn({ err: (e as Error).message, cancelled }, this.switchingOver ? 'migration did not complete: asking the destination whether it runs the VM' : 'migration did not complete: the VM stays here');
      // Past the switch-over the outcome is the destination's to say: the move stays active (its
      // status unsettled) until it does. Before it, the VM stays here whatever the answer.
      if (this.switchingOver) this.stats['error-desc'] = why;
      else {
        this.stats.status = cancelled ? 'cancelled' : 'failed';
        this.stats['error-desc'] = why;
      }
      // Tell the destination to drop its attempt (it also drops it by itself when the stream stops).
      const answer = await this.abortDestination(why);
      // A forced cancel decided the outcome: the user's, as any cancel.
      this.stats.status = cancelled || this.forced !== null ? 'cancelled' : 'failed';
      this.stats['error-desc'] = this.forced !== null
        ? `${why}; then in doubt (the commit sent, ${this.req.to} silent), and resumed here by a forced cancel without ${this.req.to}'s word: a copy there, if one runs, was not stopped`
        : why;
      if (answer?.committed === true) {
        // Too late to go back: the destination had the commit and runs the VM. It is moved.
        delete this.stats['error-desc'];
        this.stats.status = 'completed';
        this.stats.ram.remaining = 0;
        this.stats['expected-downtime'] = this.stats.downtime ?? this.stats['expected-downtime'];
        this.report();
        log.info({ to: this.req.to }, 'migration completed (the destination had the commit before the cancel or failure)');
        return this.stats;
      }
      if (this.frozen) await this.src.thaw().catch((u) => log.error({ err: u }, 'could not thaw the VM after a failed migration'));
      this.frozen = false;
      this.report();
      return this.stats;
    } finally {
      if (this.throttle > 0 && this.stats.status !== 'completed') await this.src.throttle(null).catch(() => undefined);
      if (tracking) await this.src.dirty('stop').catch(() => undefined);
      await this.pool?.close().catch(() => undefined);
      this.pool = null;
      this.client.close();
      this.stream?.close();
      this.stream = null;
      if (this.stats.status !== 'completed') this.stats['total-time'] = this.elapsed();
    }
  }

  /**
   * Post-copy: freeze, copy the dirty set in one step with the device states, send the pages the
   * host side reads before the guest runs (low pages, rings), then switch over with a bitmap of the
   * rest; the destination's guest runs and asks for pages it touches (pulled here with a long
   * poll, sent first) while the rest is pushed behind them. Once all are there, commit.
   */
  private async postcopy(dirty: number[]): Promise<MigrationStats> {
    const src = this.src;
    const stats = this.stats;
    const blackoutNs = monoNs();
    const bitmap = await this.doFreeze(true);
    this.stateTree = src.capture();
    const set = new Set(dirty);
    for (const p of this.withShared(bitmap)) set.add(p);
    for (let vp = 0; vp < src.vps; vp++) for (const gpa of [simpGpa(vp), siefpGpa(vp)]) set.add(gpa / MIG_PAGE);
    const rings = gpadlPages(this.stateTree);
    const all = [...set].filter((p) => p < this.guestPages).sort((a, b) => a - b);
    const eager = all.filter((p) => p < EAGER_PAGES || rings.has(p));
    const later = all.filter((p) => !(p < EAGER_PAGES || rings.has(p)));
    // One synchronous step with the capture: the copies of every page still to go.
    const eagerBatches: PageEntry[][] = this.snapshot(eager);
    const pending = new Map<number, PageEntry>();
    for (const b of this.snapshot(later)) for (const e of b) pending.set(e.pfn, e);
    await this.sendSnapshot(eagerBatches);
    const missing = new Uint8Array(Math.ceil(this.guestPages / 8));
    for (const p of pending.keys()) missing[p >>> 3]! |= 1 << (p & 7);
    const t = this.elapsed();
    // The destination's guest starts during the switch and asks for pages at once: pulls are
    // served from now on, while the switch is still being answered.
    let switchDone = false;
    let switchError: Error | null = null;
    const sentNs = monoNs();
    this.check();
    this.switchingOver = true;
    const switching = this.call({ op: 'migSwitch', state: Buffer.from(JSON.stringify(this.stateTree)), missing }, STATE_TIMEOUT_MS).then((answer) => {
      switchDone = true;
      this.switched = true;
      this.downtime(answer, blackoutNs, sentNs, monoNs());
      stats.status = 'postcopy-active';
      stats.ram.remaining = pending.size * MIG_PAGE;
      this.report();
      src.log.info({ eager: eager.length, missing: pending.size, downtimeMs: stats.downtime }, 'post-copy switched over: the VM runs at the destination');
    }, (e: Error) => {
      switchError = new Error(`the destination ${this.req.to} did not start the VM: ${e.message}`);
    });
    let pulling = true;
    // HVLAB_TEST_POSTCOPY_HOLD_MS: the pulls go on while held even once no page is missing, so
    // that the destination hears from this side (its watchdog) until the push and the commit.
    let holding = POSTCOPY_HOLD_MS > 0;
    const puller = (async () => {
      while (pulling && (pending.size > 0 || holding) && switchError === null) {
        let r: { pfns?: unknown };
        try {
          r = await this.call({ op: 'migPull', waitMs: 200 }, PAGES_TIMEOUT_MS) as { pfns?: unknown };
        } catch (e) {
          // Before the destination has taken the switch, it may not know the pull yet.
          if (!switchDone && switchError === null) {
            await new Promise((res) => setTimeout(res, 10));
            continue;
          }
          throw e;
        }
        const want = (Array.isArray(r?.pfns) ? r.pfns : []).filter((p): p is number => typeof p === 'number' && pending.has(p));
        if (want.length === 0) continue;
        stats.ram['postcopy-requests'] += want.length;
        const batch = want.map((p) => pending.get(p)!);
        for (const p of want) pending.delete(p);
        await this.sendBatch(batch);
      }
    })();
    puller.catch(() => undefined);
    await switching;
    if (switchError !== null) {
      pulling = false;
      await puller.catch(() => undefined);
      throw switchError;
    }
    // Push the rest behind what the guest asks for.
    try {
      if (holding) {
        src.log.warn({ holdMs: POSTCOPY_HOLD_MS, missing: pending.size }, 'post-copy holds its push and its commit (test knob HVLAB_TEST_POSTCOPY_HOLD_MS): only the pages the guest asks for go meanwhile');
        let timer: NodeJS.Timeout | undefined;
        let end: (() => void) | undefined;
        let signalled = false;
        // The puller fails (a killed worker, a cut link) or the hold ends (its time, or the test's signal), whichever comes first.
        await Promise.race([new Promise<void>((res) => {
          timer = setTimeout(res, POSTCOPY_HOLD_MS);
          end = () => {
            signalled = true;
            res();
          };
          postcopyHolds.add(end);
        }), puller]).finally(() => {
          clearTimeout(timer);
          postcopyHolds.delete(end!);
          holding = false;
        });
        src.log.info({ missing: pending.size, requests: stats.ram['postcopy-requests'], ...(signalled ? { endedBy: TEST_HOLD_END_SIGNAL } : {}) }, 'post-copy\'s hold ended: the rest is pushed');
      }
      while (pending.size > 0) {
        this.check();
        const batch: PageEntry[] = [];
        for (const [p, e] of pending) {
          batch.push(e);
          pending.delete(p);
          if (batch.length >= MIG_BATCH_MAX_PAGES) break;
        }
        await this.sendBatch(batch);
        stats.ram.remaining = pending.size * MIG_PAGE;
        this.report();
      }
      await this.drain();
    } finally {
      pulling = false;
    }
    await puller;
    await this.drain();
    stats.pass++;
    this.recordPass(stats.pass, eager.length + later.length, 0, t);
    // Sent again while unanswered, as pre-copy's: a destination whose root restarted meanwhile
    // (its worker, and the guest, ran on) takes the attempt over, and answers the next try.
    const commitStats = this.commitStats();
    const { committed, refused, last } = await this.sendCommit(commitStats, Math.ceil(STATE_TIMEOUT_MS / COMMIT_TIMEOUT_MS));
    if (!committed) throw new Error(`the destination ${this.req.to} did not confirm that every page arrived: ${refused ?? last}`);
    stats.status = 'completed';
    stats['total-time'] = commitStats['total-time'];
    stats.ram.remaining = commitStats.ram.remaining;
    stats['expected-downtime'] = commitStats['expected-downtime'];
    this.report();
    src.log.info({ to: this.req.to, totalMs: stats['total-time'], downtimeMs: stats.downtime, requests: stats.ram['postcopy-requests'] }, 'post-copy migration completed');
    return stats;
  }

  /** A failure after post-copy's switch-over: the VM's memory is split between two hosts; it is lost. */
  private lost(e: Error): MigrationStats {
    const stats = this.stats;
    stats.status = 'failed';
    stats['error-desc'] = `post-copy failed after the switch-over, so the VM is lost (part of its memory was only here, part only there): ${e.message}`;
    this.src.log.error({ err: e.message }, 'post-copy failed: the VM is lost');
    this.report();
    return stats;
  }

  /** Post-copy has switched over: from here a failure loses the VM (QEMU says so too). */
  switched = false;
  private stateTree: Record<string, unknown> = {};
  /**
   * A full garbage collection while the VM still runs, just before it is frozen. The passes
   * allocate their batches, and a major collection often came due in the blackout: a GC observer
   * (temporary) saw one of 1.4-7.8 ms in the source VMWP in four of six blackouts of an idle VM's
   * moves, on this process's own thread (--single-threaded-gc), and the freeze's GetVpState or
   * the destination's answer waited for it; with this, none in six. Taken here, it costs the move
   * 15-30 ms of total time instead of milliseconds of its downtime (12 moves each way, alternated:
   * downtime p50 19.5 ms against 22). It blocks this event loop meanwhile (the guest's port I/O
   * waits), and V8 may refuse its code cache for modules this process loads after it (the flag
   * changes); a worker whose VM moved exits, so only one whose move failed pays that.
   */
  private collectBeforeBlackout(): void {
    const ms = collectGarbage();
    if (ms !== null) this.src.log.info({ gcMs: Math.round(ms * 10) / 10 }, 'garbage collected before the blackout');
  }

  /**
   * Records the downtime (ms) of a switch-over that began at `blackoutNs`, whose state was sent at
   * `sentNs` and answered at `heardNs`: to the destination's first dispatch of a VP, on the clock
   * the hosts share (ranAtOf), else to the answer's arrival; `downtime-acked` is always the latter
   * (it adds the answer's way back). Returns the first dispatch's instant, or null.
   *
   * The instants go to the log as they are (CLOCK_MONOTONIC ns, the clock of every host of the
   * cluster and of `perf sched record -k CLOCK_MONOTONIC`): a blackout's threads can then be read
   * off a scheduler trace between them (README, "Where a blackout's time goes").
   */
  private downtime(answer: unknown, blackoutNs: number, sentNs: number, heardNs: number): number | null {
    const ranAtNs = ranAtOf(answer, hostClockId(), sentNs, heardNs);
    this.src.log.info({ blackoutNs, sentNs, ranAtNs, heardNs }, 'blackout instants (CLOCK_MONOTONIC ns)');
    this.stats['downtime-acked'] = Math.round((heardNs - blackoutNs) / 1e6);
    this.stats.downtime = Math.round(((ranAtNs ?? heardNs) - blackoutNs) / 1e6);
    return ranAtNs;
  }

  /** Freezes the VM; with `harvest`, returns the partition's dirty log read once its VPs stopped. */
  private async doFreeze(harvest: true): Promise<Int32Array>;
  private async doFreeze(harvest: false): Promise<void>;
  private async doFreeze(harvest: boolean): Promise<Int32Array | void> {
    this.check();
    const dirty = await this.src.freeze(harvest);
    this.frozen = true;
    if (harvest) return checkDirtyAnswer(dirty, this.src.memoryBytes);
  }
}

/**
 * Checks the partition process's answer to a dirty harvest: `{ bitmap }`, an Int32Array of one bit
 * per page of `memoryBytes`. Throws a sentence for anything else (the move then fails and the VM
 * runs on where it is).
 */
/**
 * The destination worker's own time (ms) in a migState answer (an untrusted peer's `{ running, ms }`),
 * or null when it gives none that can be true: a number from 0 to `startMs`, the source's time from
 * sending the state to the answer, which the destination's time lies within (up to 1 ms more is
 * taken as rounding and read as `startMs`). Never throws: the VM runs at the destination by then.
 */
export function destinationMsOf(answer: unknown, startMs: number): number | null {
  let ms: unknown;
  try {
    ms = answer !== null && typeof answer === 'object' ? (answer as { ms?: unknown }).ms : undefined;
  } catch {
    return null; // never from a decoded frame (plain data); the move must not fail on its account
  }
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0 || ms > startMs + 1) return null;
  return Math.min(ms, startMs);
}

/** What goes to the destination worker's own stream socket when it has one (the rest goes to its root). */
const STREAM_OPS: ReadonlySet<string> = new Set(['migPages', 'migPremap', 'migState', 'migSwitch', 'migPull']);

/** The port of the destination worker's stream socket in a migSetup answer (an untrusted peer's), or null: the stream then goes to its root. */
export function streamPortOf(setup: unknown): number | null {
  const p = setup !== null && typeof setup === 'object' ? (setup as { port?: unknown }).port : undefined;
  return typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535 ? p : null;
}

export function checkDirtyAnswer(v: unknown, memoryBytes: number): Int32Array {
  const words = Math.ceil(memoryBytes / MIG_PAGE / 32);
  const bitmap = v !== null && typeof v === 'object' ? (v as { bitmap?: unknown }).bitmap : undefined;
  if (!(bitmap instanceof Int32Array) || bitmap.length !== words) throw new Error(`the partition's dirty log is not a bitmap of ${words} words`);
  return bitmap;
}

/**
 * Reads the page numbers a partition process posted to its post-copy control region since
 * `last` (the count already read). The region is written by an untrusted process: a count that
 * went backwards restarts from it, one that ran more than a ring ahead loses the oldest (the ring
 * kept only the last `ringLength`), and every page number is returned as it is, for the caller to
 * check against guest memory. Never loops more than one ring's length.
 */
export function postcopyRequests(ctl: Int32Array, last: number, ring: { requests: number; ring: number; ringLength: number }): { pfns: number[]; next: number } {
  const upto = Atomics.load(ctl, ring.requests);
  if (upto <= last) return { pfns: [], next: upto };
  const from = upto - last > ring.ringLength ? upto - ring.ringLength : last;
  const pfns: number[] = [];
  for (let k = from; k < upto; k++) pfns.push(ctl[ring.ring + (((k % ring.ringLength) + ring.ringLength) % ring.ringLength)]!);
  return { pfns, next: upto };
}

/**
 * The destination's side: checks a page batch and writes it into guest memory (nothing when it
 * does not decode). `accept` (post-copy) picks the pages still missing: a page the guest already
 * has — and may have written since — is never overwritten by a late copy.
 */
export async function applyPageBatch(
  memory: SharedArrayBuffer, memoryBytes: number, data: Uint8Array, accept: ((pfn: number) => boolean) | null = null, fd: number | null = null,
  inflate: ((pages: Uint8Array[]) => Promise<Uint8Array[]>) | null = null,
  touched: Uint8Array | null = null,
): Promise<number[]> {
  const pages = dirtyBitmapGpa(memoryBytes) / MIG_PAGE;
  const d = decodePageBatch(data, pages);
  if (typeof d === 'string') throw new Error(d);
  // Inflate everything first (on the pool when there is one), so a bad compressed page changes nothing.
  const packed = d.filter((e) => e.kind === PageKind.Deflate);
  const inflated = new Map<PageEntry, Uint8Array>();
  if (packed.length > 0 && inflate) {
    const out = await inflate(packed.map((e) => e.data));
    packed.forEach((e, i) => inflated.set(e, out[i]!));
  } else {
    for (const e of packed) {
      let out: Buffer;
      try {
        out = inflateRawSync(e.data, { maxOutputLength: MIG_PAGE });
      } catch (x) {
        throw new Error(`compressed page ${e.pfn} does not inflate: ${(x as Error).message}`);
      }
      if (out.length !== MIG_PAGE) throw new Error(`compressed page ${e.pfn} inflates to ${out.length} bytes, not ${MIG_PAGE}`);
      inflated.set(e, out);
    }
  }
  const bytes: (Uint8Array | null)[] = d.map((e) => (e.kind === PageKind.Raw ? e.data : e.kind === PageKind.Deflate ? inflated.get(e)! : null));
  const u8 = new Uint8Array(memory);
  const written: number[] = [];
  d.forEach((e, i) => {
    if (accept && !accept(e.pfn)) return;
    const src = e.kind === PageKind.Dup ? bytes[e.dupOf!]! : bytes[i];
    if (fd !== null) {
      // Post-copy: the guest may touch the page at any moment. A write through the file holds the
      // page locked until all of it is there, so the guest never sees it half written (a store
      // through a mapping would make it present, zero-filled, at its first byte).
      const page = src ?? ZERO_PAGE;
      if (writeSync(fd, page, 0, MIG_PAGE, e.pfn * MIG_PAGE) !== MIG_PAGE) throw new Error(`page ${e.pfn} was written short`);
    } else if (src) copyBytes(memory, e.pfn * MIG_PAGE, src, 0, MIG_PAGE);
    else if (!touched || touched[e.pfn]) u8.fill(0, e.pfn * MIG_PAGE, (e.pfn + 1) * MIG_PAGE);
    // (A zero page never written here is zero already: not touching it keeps it unallocated.)
    if (touched && (src || fd !== null)) touched[e.pfn] = 1;
    written.push(e.pfn);
  });
  return written;
}

