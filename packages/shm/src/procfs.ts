/**
 * /proc, read and decoded in one place. Every hvlab process that looks at other processes (the
 * hypervisor reaping orphans, the root listing a worker's partition process, `down` and the sweeps
 * finding a host's processes by their environment, the fault injector checking a pid's start time)
 * reads these files, and what they hold is partly written by other programs: a process chooses its
 * own title (cmdline) and environment, and its command name (in stat) may hold spaces and
 * parentheses. So each file is decoded here by a checking decoder that returns null (or skips
 * what it cannot read) instead of throwing or guessing, and the readers return null for a process
 * that is gone or not ours to read. Fuzzed in test/procfs.test.ts.
 */
import { closeSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';

/** The fields of /proc/PID/stat that hvlab uses. */
export interface ProcStat {
  pid: number;
  /** The command name (at most 16 bytes, chosen by the process: may hold spaces and ')'). */
  comm: string;
  /** R, S, D, T, t, Z, X, I, … */
  state: string;
  ppid: number;
  /** Start time in clock ticks since boot (field 22): a pid with another start is another process. */
  startTime: number;
}

const DIGITS = /^\d{1,10}$/;

function nonNegative(s: string | undefined): number | null {
  if (s === undefined || !DIGITS.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

/** A pid as /proc writes it: digits, positive, below 2^31. */
export function decodePid(s: string): number | null {
  const n = nonNegative(s);
  return n !== null && n > 0 && n < 2 ** 31 ? n : null;
}

/**
 * Decodes /proc/PID/stat: "pid (comm) state ppid …". The command name ends at the line's last ')',
 * since the numeric fields after it hold none. Null for anything else.
 */
export function decodeProcStat(text: unknown): ProcStat | null {
  if (typeof text !== 'string' || text.length > 65536) return null;
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open + 1 || text.charAt(close + 1) !== ' ') return null;
  const pid = decodePid(text.slice(0, open));
  if (pid === null) return null;
  const rest = text.slice(close + 2).replace(/\n$/, '').split(' ');
  if (rest.length < 20) return null;
  const state = rest[0]!;
  if (!/^[A-Za-z]$/.test(state)) return null;
  const ppid = nonNegative(rest[1]);
  const startTime = nonNegative(rest[19]);
  if (ppid === null || startTime === null) return null;
  return { pid, comm: text.slice(open + 2, close), state, ppid, startTime };
}

/** Decodes /proc/PID/task/TID/children: pids separated by spaces. What is not a pid is skipped. */
export function decodeProcChildren(text: unknown): number[] {
  if (typeof text !== 'string') return [];
  const out: number[] = [];
  for (const k of text.split(/\s+/)) {
    const pid = k === '' ? null : decodePid(k);
    if (pid !== null) out.push(pid);
  }
  return out;
}

/** Decodes /proc/PID/cmdline: NUL-separated arguments, the trailing NULs dropped. */
export function decodeCmdline(text: unknown): string[] {
  if (typeof text !== 'string' || text === '') return [];
  return text.replace(/\0+$/, '').split('\0');
}

/**
 * A process's title as one line: its arguments joined by single spaces (a title set with
 * `process.title` may leave runs of NULs where the original arguments were).
 */
export function titleOf(args: readonly string[]): string {
  return args.filter((a) => a !== '').join(' ');
}

/** Decodes /proc/PID/environ: NUL-separated NAME=value entries; one without '=' is skipped, the first of a name wins. */
export function decodeEnviron(text: unknown): Map<string, string> {
  const out = new Map<string, string>();
  if (typeof text !== 'string') return out;
  for (const e of text.split('\0')) {
    const eq = e.indexOf('=');
    if (eq <= 0) continue;
    const name = e.slice(0, eq);
    if (!out.has(name)) out.set(name, e.slice(eq + 1));
  }
  return out;
}

/**
 * One read into a buffer kept for it. A /proc file says it is empty, so readFileSync reads it in
 * 64 KiB steps into a new 64 KiB buffer each time, and a hypervisor checks every session's pid
 * whenever a process of its host ends: as a host went down, those buffers were most of its CPU
 * (`node --cpu-prof`, 8 VMs: ~50 of ~140 ms in allocating them). /proc/PID/stat is one line of a
 * few hundred bytes, made whole by one read.
 */
const statBuf = Buffer.alloc(4096);
function readSmall(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const n = readSync(fd, statBuf, 0, statBuf.length, 0);
    if (n < statBuf.length) return statBuf.toString('latin1', 0, n);
  } finally {
    closeSync(fd);
  }
  return readFileSync(path, 'latin1'); // longer than the buffer: whole, the slow way
}

function readOrNull(path: string, small = false): string | null {
  try {
    return small ? readSmall(path) : readFileSync(path, 'latin1');
  } catch {
    return null;
  }
}

/** /proc/PID/stat decoded, or null (gone, unreadable, or not what the kernel writes). */
export function procStat(pid: number): ProcStat | null {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  return decodeProcStat(readOrNull(`/proc/${pid}/stat`, true));
}

/** A process's start time (stat field 22), or null if it is gone. */
export function procStartTime(pid: number): number | null {
  return procStat(pid)?.startTime ?? null;
}

/** A process's state letter (R, S, T for stopped, Z, …), or null if it is gone. */
export function procState(pid: number): string | null {
  return procStat(pid)?.state ?? null;
}

/** The children of thread `tid` of process `pid` (the main thread's by default); [] when unreadable. */
export function procChildren(pid: number | 'self', tid: number | string = pid): number[] {
  return decodeProcChildren(readOrNull(`/proc/${pid}/task/${tid}/children`));
}

/** The children of every thread of this process. */
export function selfChildren(): number[] {
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const t of tasks) if (decodePid(t) !== null) out.push(...procChildren('self', t));
  return out;
}

/** A process's arguments, or null if it is gone or not ours to read. */
export function procCmdline(pid: number): string[] | null {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  const text = readOrNull(`/proc/${pid}/cmdline`);
  return text === null ? null : decodeCmdline(text);
}

/** A process's title as one line (see titleOf), or null if it is gone or not ours to read. */
export function procTitle(pid: number): string | null {
  const args = procCmdline(pid);
  return args === null ? null : titleOf(args);
}

/** A process's environment, or null if it is gone or not ours to read. */
export function procEnviron(pid: number): Map<string, string> | null {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  const text = readOrNull(`/proc/${pid}/environ`);
  return text === null ? null : decodeEnviron(text);
}

/** The pids /proc lists now (none where there is no /proc). */
export function procPids(): number[] {
  let dirs: string[];
  try {
    dirs = readdirSync('/proc');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const d of dirs) {
    const pid = decodePid(d);
    if (pid !== null) out.push(pid);
  }
  return out;
}
