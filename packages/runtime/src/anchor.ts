/**
 * The hypervisor is the anchor of its host: every other process watches it and leaves when it is
 * gone (even after kill -9, which sends nobody a message). A watch is a pidfd in the event loop
 * (`watchProcessExit` of @hvlab/shm): it costs nothing until the process dies and fires at once
 * when it does. Where no pidfd can be had (the addon is not built, a kernel before 5.3, a seccomp
 * filter that refuses pidfd_open) the watch falls back to checking the pid with signal 0 every
 * 200 ms, and says so once in the log of whoever asks (`pidWatchFallback`).
 */
import { readRegularFile } from './files.js';
import { pidWatchUnavailableReason, watchProcessExit } from '@hvlab/shm';
import { procState, procTitle } from '@hvlab/shm/procfs';

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie (exited, not yet reaped; Z, or X while it is being reaped) still answers signal 0; it
  // is not alive. Orphans re-parented to a PID 1 that never reaps would otherwise look alive forever.
  // Unreadable (gone between the two looks, or /proc hidden): signal 0 said alive.
  const state = procState(pid);
  return state !== 'Z' && state !== 'X';
}

/** Whether `pid` is a live hvlab hypervisor (its title, not a reused pid of another program). */
export function isHypervisorPid(pid: number): boolean {
  if (!pidAlive(pid)) return false;
  return procTitle(pid)?.startsWith('hvlab-hypervisor') ?? false;
}

/** The pid a home's lock file names (0: no lock, or not a pid). */
export function lockOwner(lockFile: string): number {
  try {
    // A file only (a FIFO in its place held the hypervisor's main thread in open()), and small.
    const pid = Number(readRegularFile(lockFile, 64).toString('utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : 0;
  } catch {
    return 0;
  }
}

/** The live hypervisor that holds a home's lock, or null (none, or a stale lock). */
export function lockHolderOf(lockFile: string): number | null {
  const pid = lockOwner(lockFile);
  return pid > 0 && isHypervisorPid(pid) ? pid : null;
}

/** How often a polled watch checks its pid (ms): only where no pidfd can be had. */
export const PID_POLL_MS = 200;

/**
 * Calls `onGone` once, when process `pid` has exited (a zombie counts as exited). Returns a cancel
 * function. The watch never keeps the event loop alive.
 */
export function watchPid(pid: number, onGone: (pid: number) => void, pollMs = PID_POLL_MS): () => void {
  let done = false;
  const fire = (): void => {
    if (done) return;
    done = true;
    onGone(pid);
  };
  const cancelWatch = Number.isInteger(pid) && pid > 0 ? watchProcessExit(pid, fire) : null;
  if (cancelWatch) {
    return () => {
      done = true;
      cancelWatch();
    };
  }
  // No pidfd here: poll.
  const t = setInterval(() => {
    if (done) clearInterval(t);
    else if (!pidAlive(pid)) {
      clearInterval(t);
      fire();
    }
  }, pollMs);
  t.unref();
  return () => {
    done = true;
    clearInterval(t);
  };
}

/** Calls onGone once when the first of the pids stops existing. Returns a cancel function. */
export function watchPids(pids: number[], onGone: (pid: number) => void, pollMs = PID_POLL_MS): () => void {
  let done = false;
  const cancels: Array<() => void> = [];
  const cancelAll = (): void => {
    done = true;
    for (const c of cancels.splice(0)) c();
  };
  for (const p of pids) {
    cancels.push(watchPid(p, (gone) => {
      if (done) return;
      cancelAll();
      onGone(gone);
    }, pollMs));
  }
  return cancelAll;
}

/** Why pid watches poll in this process ('' when they use pidfds): for a line in the log. */
export function pidWatchFallback(): string {
  return pidWatchUnavailableReason();
}

/**
 * Stdin closed before a single byte came: the parent went away (or let go) without a word, as the
 * VMWP of a spare partition process does when the host goes down before any VM claimed it. Not a
 * fault of the process reading: it has nothing to do and may end quietly.
 */
export class StdinEndedError extends Error {
  constructor(what: string) {
    super(`stdin closed before ${what} arrived`);
    this.name = 'StdinEndedError';
  }
}

/**
 * Reads the first line a parent wrote on this process's stdin (how secrets reach hvlab's processes:
 * a pipe, never the environment, which /proc/PID/environ shows), then lets go of stdin. Throws
 * StdinEndedError when stdin closes with nothing written, an Error when it closes mid-line or the
 * line passes `maxBytes`.
 */
export async function readStdinLine(what: string, maxBytes = 1 << 20): Promise<string> {
  let buf = '';
  for await (const chunk of process.stdin) {
    buf += (chunk as Buffer).toString('utf8');
    const nl = buf.indexOf('\n');
    if (nl >= 0) {
      process.stdin.destroy();
      return buf.slice(0, nl);
    }
    if (buf.length > maxBytes) break;
  }
  if (buf.length === 0) throw new StdinEndedError(what);
  throw new Error(`${what} did not arrive on stdin`);
}

/**
 * Reads the lines a parent writes on this process's stdin one at a time, for a process that is
 * given a second line later (a booted warm worker's claim). `next` rejects once stdin ends or a
 * line passes `maxBytes`; `close` lets go of stdin.
 */
export class StdinLines {
  private buf = '';
  private ended = false;
  private waiter: (() => void) | null = null;
  private readonly onData = (b: Buffer): void => {
    this.buf += b.toString('utf8');
    this.wake();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };

  constructor(private readonly maxBytes = 1 << 20) {
    process.stdin.on('data', this.onData);
    process.stdin.on('end', this.onEnd);
    process.stdin.on('close', this.onEnd);
    process.stdin.on('error', this.onEnd);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async next(what: string): Promise<string> {
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        return line;
      }
      if (this.ended || this.buf.length > this.maxBytes) throw new Error(`${what} did not arrive on stdin`);
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  close(): void {
    process.stdin.off('data', this.onData);
    process.stdin.destroy();
  }
}
