/**
 * The chaos run's moves (live migrations, the file's `moves` and `random.moves`): each started at
 * its offset from the host its VM is on then, one move of a VM at a time (a host takes one move of
 * a VM at a time, and refused the second), recorded as it goes (MoveRecord), and each VM's host
 * following the moves that completed. Apart from the runner so that it can be driven by fake hosts.
 */
import { isPlainObject } from '@hvlab/protocol';
import type { MgmtClient } from '@hvlab/host';
import type { MoveRecord } from './checkers.js';
import type { ScheduledMove } from './schedule.js';

/** How long a move may take before the run gives up waiting for it (and asks its host to cancel it). */
export const MOVE_TIMEOUT_MS = 180_000;

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
}

/** The moves of a chaos run. */
export class ChaosMoves {
  private readonly say: (line: string) => void;
  private readonly timeoutMs: number;
  /**
   * Each VM's last move of the run and its id: a move of a VM whose move before is still going
   * waits for it, then starts from where that one left the VM.
   */
  private readonly lastMove = new Map<string, { id: string; done: Promise<void> }>();

  constructor(private readonly o: ChaosMovesOptions) {
    this.say = o.say ?? (() => {});
    this.timeoutMs = o.timeoutMs ?? MOVE_TIMEOUT_MS;
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
    const busy = before !== undefined && this.o.records.some((x) => x.id === before.id && x.endedAt === null);
    if (busy) this.say(`${m.id} at +${((Date.now() - this.o.t0) / 1000).toFixed(1)}s: ${m.vm} is still moving (${before.id}); ${m.id} waits for it`);
    const done = busy ? before.done.then(() => this.run(m, before.id)) : this.run(m, null);
    this.lastMove.set(m.vm, { id: m.id, done });
    return done;
  }

  /**
   * Moves VM `m.vm` from where it is now to `m.to` (the management API's vmMove, answered when the
   * move ends); recorded as it goes, and the VM's host follows a completed move. A move that is
   * not over in the timeout is asked to cancel and recorded as timed out.
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
    const c = this.o.clients.get(from)!;
    // Ctrl-C cancels a move under way (safe in every phase: the VM stays where it was, or is where it went).
    const onAbort = (): void => void c.request('vmMoveCancel', { name: m.vm }, 10_000).catch(() => undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | null = null;
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), this.timeoutMs)));
    // Its hosts gone with the cluster: nothing will answer (the call waited its whole timeout).
    const hostsGone = new Promise<'gone'>((r) => (clusterGone.aborted ? r('gone') : clusterGone.addEventListener('abort', () => r('gone'), { once: true })));
    const secs = this.timeoutMs / 1000;
    try {
      const st = await Promise.race([c.request<unknown>('vmMove', { name: m.vm, to: m.to, ...m.options }, this.timeoutMs + 10_000), timedOut, hostsGone]);
      if (st === 'gone') {
        rec.status = 'failed';
        rec.error = 'the cluster went down during the move';
      } else if (st === 'timeout') {
        // A move past its switch-over refuses the cancel (too late; in doubt, it waits for the
        // destination's word): said as such, not as a cancel asked.
        const refused = await c.request('vmMoveCancel', { name: m.vm }, 10_000).then(() => null, (e: unknown) => message(e));
        const now = await c.request<unknown>('vmMoveStatus', { name: m.vm }, 10_000).catch(() => null);
        const desc = isPlainObject(now) && typeof now['error-desc'] === 'string' ? now['error-desc'] : '';
        rec.status = 'timeout';
        rec.error = desc.startsWith('in doubt') ? `not over after ${secs} s: ${desc.slice(0, 300)}`
          : refused !== null ? `not over after ${secs} s; its cancel was refused: ${refused.slice(0, 300)}`
          : `not over after ${secs} s; its cancel was asked`;
      } else {
        Object.assign(rec, moveOutcome(st));
        if (rec.status === 'completed') this.o.location.set(m.vm, m.to);
      }
    } catch (e) {
      rec.status = 'refused';
      rec.error = message(e);
    } finally {
      if (timer) clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      rec.endedAt = Date.now();
    }
    say(`${m.id}: ${m.vm} ${from} → ${m.to} ${rec.status}${rec.downtimeMs !== null ? `, downtime ${rec.downtimeMs} ms` : ''}${rec.error ? ` (${rec.error})` : ''}`);
  }
}
