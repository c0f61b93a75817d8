/**
 * pino loggers for every process of a host, one JSON-lines file per process in the run
 * directory's logs/, with the bindings ARCHITECTURE §1 names (host, role, vm, partition, vp).
 *
 * A log write never throws and never ends a process: the root logs from its uncaught-exception
 * handler, so a write that threw there (ENOSPC on a full HVLAB_HOME) killed the root and every VM
 * with it. Lines that cannot be written are dropped and counted; once writing works again (the
 * next line, or a retry timer when nothing else is logged) one warning line says how many were
 * dropped and why. Writes stay synchronous so a line logged just before `process.exit` is on disk.
 */
import { readRegularFile, makeDirs } from './files.js';
import { appendFileSync, closeSync, fstatSync, ftruncateSync, linkSync, openSync, statSync, truncateSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import pino, { type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** The file operations a LogFile uses (injectable, so tests can make them fail). */
export interface LogIo {
  /** Opens for appending; returns a descriptor. */
  open(path: string): number;
  /** Writes up to `len` bytes from `buf[off]`; returns how many were written. */
  write(fd: number, buf: Uint8Array, off: number, len: number): number;
  size(fd: number): number;
  truncate(fd: number, len: number): void;
  close(fd: number): void;
  mkdir(dir: string): void;
  /**
   * Moves the file at `from` to `to`: a link and an unlink when `to` does not exist, else `from`'s
   * bytes appended to `to` (cut back if the append fails) and `from` removed. Optional: a logger
   * without it leaves `from` where it is.
   */
  adopt?(from: string, to: string): void;
}

export const nodeLogIo: LogIo = {
  open: (path) => openSync(path, 'a'),
  write: (fd, buf, off, len) => writeSync(fd, buf, off, len),
  size: (fd) => fstatSync(fd).size,
  truncate: (fd, len) => ftruncateSync(fd, len),
  close: (fd) => closeSync(fd),
  mkdir: (dir) => makeDirs(dir),
  adopt: (from, to) => {
    try {
      // A link fails if `to` exists, where a rename would replace a file someone may be writing.
      linkSync(from, to);
      unlinkSync(from);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const bytes = readRegularFile(from, 256 * 1024 * 1024);
    const before = statSync(to).size;
    try {
      appendFileSync(to, bytes);
    } catch (e) {
      // Whole lines or none: a partial append (a full disk) is cut back, and `from` stays.
      try { truncateSync(to, before); } catch { /* as it is */ }
      throw e;
    }
    unlinkSync(from);
  },
};

/** Error codes a log write meets, with the words strerror(3) gives them. */
const ERRNO_TEXT: Record<string, string> = {
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  EIO: 'input/output error',
  EBADF: 'bad file descriptor',
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  ENOTDIR: 'not a directory',
  EFBIG: 'file too large',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in system',
};

/** "ENOSPC (no space left on device)" for a Node fs error; the message for anything else. */
export function describeIoError(e: unknown): { code: string; text: string } {
  const err = e as NodeJS.ErrnoException | null;
  const code = typeof err?.code === 'string' ? err.code : 'EUNKNOWN';
  let words = ERRNO_TEXT[code];
  if (!words) {
    // Node's own wording: "ENOSPC: no space left on device, write".
    const m = typeof err?.message === 'string' ? /^[A-Z0-9]+: ([^,]+)/.exec(err.message) : null;
    words = m ? m[1] : typeof err?.message === 'string' ? err.message : String(e);
  }
  return { code, text: `${code} (${words})` };
}

export interface LogFileOptions {
  io?: LogIo;
  /**
   * While lines are being dropped, how often to try writing the drop line even if nothing else
   * is logged (ms; 0: only when the next line comes).
   */
  retryMs?: number;
}

/**
 * A pino destination that appends each line with one synchronous write and never throws. A line
 * that fails halfway is cut back (the file is truncated to where it began) so the file stays whole
 * JSON lines; each process has its own file, so nothing else appends in between.
 */
export class LogFile {
  private fd: number | null = null;
  private dropped = 0;
  private lastError: { code: string; text: string } | null = null;
  private retry: NodeJS.Timeout | null = null;
  private readonly io: LogIo;
  private readonly retryMs: number;
  /** Formats the drop line (set by processLogger, so it carries the logger's bindings). */
  formatDropLine: (dropped: number, code: string, msg: string) => string = (dropped, code, msg) =>
    JSON.stringify({ level: 40, time: new Date().toISOString(), pid: process.pid, dropped, error: code, msg }) + '\n';

  constructor(readonly path: string, o: LogFileOptions = {}) {
    this.io = o.io ?? nodeLogIo;
    this.retryMs = o.retryMs ?? 1000;
  }

  /** pino calls this with one whole line (newline included). */
  write(line: string): void {
    try {
      if (this.dropped > 0 && !this.writeDropLine()) {
        this.dropped++;
        return;
      }
      this.append(line);
    } catch (e) {
      this.drop(e);
    }
  }

  /** Lines dropped since the last drop line. */
  get droppedLines(): number {
    return this.dropped;
  }

  flushSync(): void { /* every write is synchronous */ }
  flush(cb?: (err?: Error) => void): void {
    cb?.();
  }

  close(): void {
    this.stopRetry();
    if (this.fd !== null) {
      try { this.io.close(this.fd); } catch { /* already gone */ }
      this.fd = null;
    }
  }

  private append(line: string): void {
    const buf = Buffer.from(line, 'utf8');
    if (this.fd === null) this.fd = this.openFile();
    const fd = this.fd;
    let done = 0;
    try {
      while (done < buf.length) {
        const n = this.io.write(fd, buf, done, buf.length - done);
        if (n <= 0) throw Object.assign(new Error('write wrote nothing'), { code: 'EIO' });
        done += n;
      }
    } catch (e) {
      if (done > 0) {
        // Cut the half line back so no reader ever meets broken JSON.
        try { this.io.truncate(fd, this.io.size(fd) - done); } catch { /* the drop line still says what happened */ }
      }
      throw e;
    }
  }

  private openFile(): number {
    try {
      return this.io.open(this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException | null)?.code !== 'ENOENT') throw e;
      // The directory could not be made when the process started (or was removed): try again.
      this.io.mkdir(dirname(this.path));
      return this.io.open(this.path);
    }
  }

  private drop(e: unknown): void {
    this.dropped++;
    this.noteError(e);
    if (this.retryMs > 0 && this.retry === null) {
      this.retry = setInterval(() => {
        try {
          if (this.dropped === 0 || this.writeDropLine()) this.stopRetry();
        } catch { /* try again at the next tick */ }
      }, this.retryMs);
      this.retry.unref();
    }
  }

  private noteError(e: unknown): void {
    this.lastError = describeIoError(e);
    if ((e as NodeJS.ErrnoException | null)?.code === 'EBADF' && this.fd !== null) {
      // The descriptor went bad under us: open the file again next time.
      try { this.io.close(this.fd); } catch { /* bad anyway */ }
      this.fd = null;
    }
  }

  /** Writes the "dropped N lines" line; true when it is on disk (and the count is reset). */
  private writeDropLine(): boolean {
    const why = this.lastError ?? { code: 'EUNKNOWN', text: 'EUNKNOWN (unknown error)' };
    const n = this.dropped;
    const line = this.formatDropLine(n, why.code, `dropped ${n} log line${n === 1 ? '' : 's'}: writing ${this.path} failed with ${why.text}`);
    try {
      this.append(line);
    } catch (e) {
      this.noteError(e);
      return false;
    }
    this.dropped = 0;
    this.lastError = null;
    this.stopRetry();
    return true;
  }

  private stopRetry(): void {
    if (this.retry !== null) clearInterval(this.retry);
    this.retry = null;
  }
}

/**
 * The logger of one process: `logDir/file`, JSON lines with `pid` and `bindings` on every line.
 * Never throws, not even when the directory cannot be made (lines are dropped until it can).
 */
export function processLogger(logDir: string, file: string, bindings: Record<string, unknown>, o: LogFileOptions = {}): Logger {
  return movableProcessLogger(logDir, file, bindings, o).log;
}

/**
 * processLogger whose file and bindings can change later (`moveTo`): a booted warm worker logs as
 * its template until it is claimed, then as the VM it became, with every logger it handed out
 * (devices, channels) following. The bindings come from a pino mixin, so lines carry the current ones.
 * The lines written so far move with it (`LogIo.adopt`): the VM's log starts with its template's
 * boot, after what earlier runs of the VM logged there, and no template's file is left behind
 * (each warm start left two before). Writes are synchronous, so the old file is complete when it moves.
 */
export function movableProcessLogger(logDir: string, file: string, bindings: Record<string, unknown>, o: LogFileOptions = {}): { log: Logger; moveTo: (file: string, bindings: Record<string, unknown>) => void } {
  const io = o.io ?? nodeLogIo;
  try {
    io.mkdir(logDir);
  } catch { /* the LogFile drops and counts lines until the directory exists */ }
  let current: Record<string, unknown> = { ...bindings };
  let path = join(logDir, file);
  let dest = new LogFile(path, { ...o, io });
  const options: LoggerOptions = {
    // An unknown level would make pino throw; a typo in the environment must not stop a process.
    level: Object.hasOwn(pino.levels.values, process.env.HVLAB_LOG_LEVEL ?? '') ? process.env.HVLAB_LOG_LEVEL : 'info',
    base: { pid: process.pid },
    // A fresh object each line: pino merges the line's own fields into what the mixin returns.
    mixin: () => ({ ...current }),
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  // The drop line is formatted by a twin logger with the same options, so it looks like any
  // other line of this process (level, time, pid, bindings); it is written whatever the level.
  let formatted = '';
  const twin = pino({ ...options, level: 'warn' }, { write: (s: string) => { formatted = s; } });
  const formatDropLine = (dropped: number, code: string, msg: string): string => {
    formatted = '';
    twin.warn({ dropped, error: code }, msg);
    return formatted;
  };
  dest.formatDropLine = formatDropLine;
  const log = pino(options, { write: (s: string) => dest.write(s), flushSync: () => dest.flushSync(), flush: (cb?: (err?: Error) => void) => dest.flush(cb) } as unknown as LogFile);
  return {
    log,
    moveTo: (next, b) => {
      const to = join(logDir, next);
      dest.close();
      if (to !== path) {
        try {
          io.adopt?.(path, to);
        } catch { /* the old file stays where it is; the new one starts without it */ }
      }
      path = to;
      dest = new LogFile(to, { ...o, io });
      dest.formatDropLine = formatDropLine;
      current = { ...b };
    },
  };
}
