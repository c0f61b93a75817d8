/**
 * The chaos run's moves (live migrations, the file's `moves` and `random.moves`): each started at
 * its offset from the host its VM is on then, one move of a VM at a time (a host takes one move of
 * a VM at a time, and refused the second), recorded as it goes (MoveRecord), and each VM's host
 * following the moves that completed. Apart from the runner so that it can be driven by fake hosts.
 */
import { isPlainObject } from '@hvlab/protocol';
import type { MgmtClient } from '@hvlab/host';
import { vmReading, type MoveRecord } from './checkers.js';
import type { ScheduledMove } from './schedule.js';

/** How long a move may take before the run gives up waiting for it (and asks its host to cancel it). */
export const MOVE_TIMEOUT_MS = 180_000;

/**
 * How long a move past its timeout is watched for its end after its cancel was asked (a cancel
 * taken ends it within seconds; one past its switch-over waits for the destination's word). The
 * run may wait longer for it past its timeout: the cancel and a status call first (up to 10 s
 * each), the watch's last status call (up to 10 s past it), and, still not over, a listing on each
 * of its two hosts (up to 10 s each): up to 110 s in all. A Ctrl-C ends the wait at once.
 */
export const MOVE_SETTLE_MS = 60_000;
/** States of a move that has not ended. */
const MOVE_UNDER_WAY = new Set(['queued', 'setup', 'active', 'postcopy-active']);
/** A move's answer (vmMove's or vmMoveStatus's, untrusted) that says it has ended. */
const ended_ = (st: unknown): boolean => isPlainObject(st) && typeof st.status === 'string' && !MOVE_UNDER_WAY.has(st.status);

/** Sleeps `ms`, or until the signal. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((res) => {
    if (signal.aborted) return res();
    const done = (): void => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      res();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** `p`'s answer, or `otherwise` at once when the signal stops the run first (a call is not waited out after Ctrl-C). */
function unlessAborted<T, U>(p: Promise<T>, otherwise: U, signal: AbortSignal): Promise<T | U> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.resolve(otherwise);
  }
  return new Promise<T | U>((res, rej) => {
    const stop = (): void => res(otherwise);
    signal.addEventListener('abort', stop, { once: true });
    p.then(res, rej).finally(() => signal.removeEventListener('abort', stop));
  });
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/**
 * What a move's record takes from vmMove's answer (untrusted: any value): its status, total time,
 * error and downtime, the downtime only of a move that completed. A move that did not complete has
 * none: the host's `downtime` of a cancelled or failed move is the 0 it started from (a cancelled
 * stop-and-copy move, frozen from its start until the cancel, was reported with a downtime of 0 ms).
 */
export function moveOutcome(answer: unknown): Pick<MoveRecord, 'status' | 'downtimeMs' | 'totalMs' | 'error'> {
  const o = isPlainObject(answer) ? answer : {};
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const status = typeof o.status === 'string' ? o.status.slice(0, 32) : 'unknown';
  return {
    status, downtimeMs: status === 'completed' ? num(o.downtime) : null, totalMs: num(o['total-time']),
    error: typeof o['error-desc'] === 'string' && o['error-desc'] !== '' ? o['error-desc'].slice(0, 500) : null,
  };
}

export interface ChaosMovesOptions {
  /** Each host's management client, by the host's name. */
  clients: ReadonlyMap<string, Pick<MgmtClient, 'request'>>;
  /** Where each VM is (shared with the runner: its readings follow it); the moves keep it. */
  location: Map<string, string>;
  /** The run's records of its moves (the report's), appended to as each move starts. */
  records: MoveRecord[];
  /** Epoch ms of the schedule's start, and of its end: a move whose turn comes after it is skipped. */
  t0: number;
  endAt: number;
  /** The run's stop: Ctrl-C, or its cluster gone (`clusterGone`, which is part of it). */
  signal: AbortSignal;
  clusterGone: AbortSignal;
  say?: (line: string) => void;
  /** MOVE_TIMEOUT_MS unless given (tests). */
  timeoutMs?: number;
  /** How long a move past its timeout is watched for its end (MOVE_SETTLE_MS), and how often its host is asked (tests). */
  settleMs?: number;
  pollMs?: number;
  /** ABORT_GRACE_MS unless given (tests). */
  abortGraceMs?: number;
}

/** After a Ctrl-C asked a move's cancel, how long the run waits for the move to end before it takes the VM to be where the move began. */
export const ABORT_GRACE_MS = 15_000;

/** The moves of a chaos run. */
export class ChaosMoves {
  private readonly say: (line: string) => void;
  private readonly timeoutMs: number;
  private readonly settleMs: number;
  private readonly pollMs: number;
  private readonly abortGraceMs: number;
  /**
   * Each VM's last move of the run: its id, its end (the promise every later move of the VM
   * chains on) and whether it has ended. A move of a VM waits for the one before it (started or
   * still waiting itself), then starts from where that one left the VM: moves of a VM run in order.
   */
  private readonly lastMove = new Map<string, { id: string; done: Promise<void>; over: boolean }>();

  constructor(private readonly o: ChaosMovesOptions) {
    this.say = o.say ?? (() => {});
    this.timeoutMs = o.timeoutMs ?? MOVE_TIMEOUT_MS;
    this.settleMs = o.settleMs ?? MOVE_SETTLE_MS;
    this.pollMs = o.pollMs ?? 1000;
    this.abortGraceMs = o.abortGraceMs ?? ABORT_GRACE_MS;
  }

  hostOf(vm: string): string {
    return this.o.location.get(vm)!;
  }

  /** The moves not over yet. */
  unended(): MoveRecord[] {
    return this.o.records.filter((m) => m.endedAt === null);
  }

  /** Starts move `m` now, or once the VM's move before it has ended; resolves when it has ended. */
  start(m: ScheduledMove): Promise<void> {
    const before = this.lastMove.get(m.vm);
    // The move before, not over yet: running, or itself waiting for its own before (it has no
    // record until it starts, so the records cannot tell; a third move started at once from the
    // host the first began on).
    const busy = before !== undefined && !before.over;
    if (busy) this.say(`${m.id} at +${((Date.now() - this.o.t0) / 1000).toFixed(1)}s: ${m.vm} is still moving (${before.id}); ${m.id} waits for it`);
    // Always chained on the move before (a resolved promise once it is over), never on a record.
    const done = (before?.done ?? Promise.resolve()).catch(() => undefined).then(() => this.run(m, busy ? before.id : null));
    const entry = { id: m.id, done, over: false };
    this.lastMove.set(m.vm, entry);
    void done.then(() => (entry.over = true), () => (entry.over = true));
    return done;
  }

  /**
   * Moves VM `m.vm` from where it is now to `m.to` (the management API's vmMove, answered when the
   * move ends); recorded as it goes, and the VM's host follows a completed move. A move that is
   * not over in the timeout is asked to cancel and watched to its end (up to settleMs): its record
   * then says what became of it, and the VM's host follows it (or, still not over, the hosts that
   * list the VM). The VM's next move waits for that.
   */
  private async run(m: ScheduledMove, waitedFor: string | null): Promise<void> {
    const { signal, clusterGone } = this.o;
    const say = this.say;
    const from = this.hostOf(m.vm);
    const rec: MoveRecord = { id: m.id, vm: m.vm, from, to: m.to, method: m.method, atMs: m.atMs, startedAt: Date.now(), endedAt: null, status: 'active', downtimeMs: null, totalMs: null, error: null, ...(m.source === 'random' ? { source: 'random' as const } : {}) };
    this.o.records.push(rec);
    // Its turn came after the run's end (or its Ctrl-C): it is not started, and says why.
    if (signal.aborted || rec.startedAt >= this.o.endAt) {
      rec.status = 'skipped';
      rec.error = `the run ${clusterGone.aborted ? 'stopped (its cluster went down)' : signal.aborted ? 'was interrupted' : 'ended'} while it waited for ${waitedFor ?? 'its turn'}`;
      rec.endedAt = rec.startedAt;
      say(`${m.id}: ${m.vm} ${from} → ${m.to} skipped (${rec.error})`);
      return;
    }
    say(`${m.id} at +${((rec.startedAt - this.o.t0) / 1000).toFixed(1)}s${waitedFor ? ` (after ${waitedFor})` : ''}: moving ${m.vm} ${from} → ${m.to} (${m.method})`);
    const c = this.o.clients.get(from);
    // Ctrl-C cancels a move under way (safe in every phase: the VM stays where it was, or is where
    // it went), and the run waits for the move's end at most abortGraceMs more (a host that does
    // not answer, one a fault of the run stopped, held it to the move's whole timeout).
    let graceTimer: NodeJS.Timeout | null = null;
    let onInterrupted: (() => void) | null = null;
    const interrupted = new Promise<'interrupted'>((r) => (onInterrupted = () => void (graceTimer = setTimeout(() => r('interrupted'), this.abortGraceMs))));
    const onAbort = (): void => {
      // A client that throws at once must not throw in the abort's listener.
      void Promise.resolve().then(() => c?.request('vmMoveCancel', { name: m.vm }, 10_000)).catch(() => undefined);
      onInterrupted?.();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | null = null;
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), this.timeoutMs)));
    // Its hosts gone with the cluster: nothing will answer (the call waited its whole timeout).
    let onGone: (() => void) | null = null;
    const hostsGone = new Promise<'gone'>((r) => {
      if (clusterGone.aborted) r('gone');
      else clusterGone.addEventListener('abort', (onGone = () => r('gone')), { once: true });
    });
    const secs = this.timeoutMs / 1000;
    try {
      // Inside the try: a request that throws at once (no client for the host, or one that
      // throws) is the move refused, as any failed request is, not a rejection of the run's wait.
      if (c === undefined) throw new Error(`no management client for host ${from}`);
      const asked = c.request<unknown>('vmMove', { name: m.vm, to: m.to, ...m.options }, this.timeoutMs + 10_000);
      const st = await Promise.race([asked, timedOut, hostsGone, interrupted]);
      if (st === 'gone') {
        rec.status = 'failed';
        rec.error = 'the cluster went down during the move';
      } else if (st === 'interrupted') {
        // Not over abortGraceMs after the run's Ctrl-C asked its cancel: taken to be where it
        // began, and marked not over (the placement check then takes either of its hosts).
        rec.status = 'timeout';
        rec.error = `the run was interrupted during the move, which was not over ${this.abortGraceMs / 1000} s after its cancel was asked: ${m.vm} is taken to be on ${from}, where the move began (its hosts were not asked)`;
      } else if (st === 'timeout') {
        // A move past its switch-over refuses the cancel (too late; in doubt, it waits for the
        // destination's word): said as such, not as a cancel asked.
        rec.timedOutAt = Date.now();
        // Each call bounded by Ctrl-C too (which asks the cancel itself): up to 10 s each otherwise.
        const refused = await unlessAborted(c.request('vmMoveCancel', { name: m.vm }, 10_000).then(() => null, (e: unknown) => message(e)), null, signal);
        const now = await unlessAborted(c.request<unknown>('vmMoveStatus', { name: m.vm }, 10_000).catch(() => null), null, signal);
        const desc = isPlainObject(now) && typeof now['error-desc'] === 'string' ? now['error-desc'] : '';
        const late = desc.startsWith('in doubt') ? `not over after ${secs} s: ${desc.slice(0, 300)}`
          : refused !== null ? `not over after ${secs} s; its cancel was refused: ${refused.slice(0, 300)}`
          : `not over after ${secs} s; its cancel was asked`;
        rec.status = 'timeout';
        rec.error = late;
        // The move goes on (a cancel refused, or one taken that loses to a commit on its way): the
        // run watches it to its end, and the VM's host follows what became of it. The run's VM was
        // left where the move began, so the VM's next move started from a host it had left, its
        // readings asked a host without it, and the placement check expected it there.
        say(`${m.id}: ${m.vm} ${from} → ${m.to} timeout (${late}); watching it to its end`);
        const ended = ended_(now) ? now : await this.settle(c, m.vm, asked);
        const took = (): string => `${((Date.now() - rec.timedOutAt!) / 1000).toFixed(1)} s later`;
        if (ended !== null) {
          Object.assign(rec, moveOutcome(ended));
          if (rec.status === 'completed') {
            this.o.location.set(m.vm, m.to);
            rec.error = null;
            rec.note = `${late}; it completed after all, ${took()}`;
          } else {
            rec.error = `${late}; it ended ${rec.status} ${took()}${rec.error !== null ? `: ${rec.error.slice(0, 300)}` : ''}`;
          }
        } else if (signal.aborted && !clusterGone.aborted) {
          // Ctrl-C during the watch: its hosts are not asked where the VM is (two listings of up
          // to 10 s each); the run takes it to be where the move began, and says so.
          this.o.location.set(m.vm, from);
          rec.error = `${late}; the run was interrupted ${took()}, while the move was not over: ${m.vm} is taken to be on ${from}, where the move began (its hosts were not asked)`;
        } else if (!clusterGone.aborted) {
          // Not over yet, or its host did not say: where the VM is listed is where it runs.
          const on = await this.locate(m.vm, [from, m.to]);
          if (on.length === 1) this.o.location.set(m.vm, on[0]!);
          rec.error = `${late}; still not over ${took()}, when ${m.vm} was listed on ${on.length === 0 ? 'neither host' : on.join(' and ')}${on.length === 1 ? ` (the run takes it to be there)` : ''}`;
        }
      } else {
        Object.assign(rec, moveOutcome(st));
        if (rec.status === 'completed') this.o.location.set(m.vm, m.to);
      }
    } catch (e) {
      rec.status = 'refused';
      rec.error = message(e);
    } finally {
      if (timer) clearTimeout(timer);
      if (graceTimer) clearTimeout(graceTimer);
      signal.removeEventListener('abort', onAbort);
      if (onGone) clusterGone.removeEventListener('abort', onGone);
      rec.endedAt = Date.now();
    }
    say(`${m.id}: ${m.vm} ${from} → ${m.to} ${rec.status}${rec.downtimeMs !== null ? `, downtime ${rec.downtimeMs} ms` : ''}${rec.error ? ` (${rec.error})` : rec.note ? ` (${rec.note})` : ''}`);
  }

  /**
   * The answer of VM `vm`'s move once it has ended (vmMove's own answer, or its host's vmMoveStatus
   * asked every pollMs); null when it has not within settleMs, or the run stops meanwhile.
   */
  private async settle(c: Pick<MgmtClient, 'request'>, vm: string, asked: Promise<unknown>): Promise<unknown> {
    let answer: unknown = null;
    asked.then((v) => void (answer = v), () => undefined);
    const until = Date.now() + this.settleMs;
    for (;;) {
      if (ended_(answer)) return answer;
      const st = await unlessAborted(c.request<unknown>('vmMoveStatus', { name: vm }, 10_000).catch(() => null), null, this.o.signal);
      if (ended_(st)) return st;
      if (ended_(answer)) return answer;
      if (Date.now() >= until || this.o.signal.aborted) return null;
      await sleep(Math.min(this.pollMs, Math.max(0, until - Date.now())), this.o.signal);
    }
  }

  /**
   * The hosts of `hosts` that list VM `vm` (vmList), in that order; one that does not answer lists
   * nothing, nor does any once the run is stopped (up to 10 s each otherwise).
   */
  private async locate(vm: string, hosts: readonly string[]): Promise<string[]> {
    const on: string[] = [];
    for (const h of hosts) {
      if (this.o.signal.aborted) break;
      const asked = this.o.clients.get(h)?.request<unknown>('vmList', {}, 10_000).catch(() => null) ?? Promise.resolve(null);
      const list = await unlessAborted(asked, null, this.o.signal);
      if (vmReading(list, vm).listed) on.push(h);
    }
    return on;
  }
}
