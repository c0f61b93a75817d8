/**
 * Writing a file so that a crash leaves either the old or the new content, never a piece: a temp
 * file next to it (named for this process), fsync, rename over the file, and (unless `syncDir` is
 * false) fsync the directory so the rename survives a power cut too. A failure removes the temp
 * file and is thrown.
 *
 * `durable: false` skips both fsyncs (the rename alone keeps a crash of this process from leaving
 * a piece): for a file that only describes live processes, which a power cut makes stale anyway.
 * Each fsync costs ~10 ms on this project's machine, on a VM start's critical path.
 */
import { closeSync, constants, fstatSync, fsyncSync, mkdirSync, openSync, readSync, renameSync, rmdirSync, rmSync, statSync, writeSync, type Stats } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';

/**
 * `mkdir -p`, one level at a time, returning the directories it made (outermost first), so that a
 * caller can remove what it made and no more. Node 20's `mkdirSync(p, { recursive: true })` loops
 * for ever, at a full CPU and deaf to Ctrl-C, on a path under /proc (mkdir there says ENOENT, and
 * it tries the parent, which exists, and again): `--out /proc/x` hung an experiment before it
 * started. Here each level is made once, and a failure is thrown as mkdir gave it. `mode`: each
 * level made gets it (before the umask), as with mkdirSync's.
 */
export function makeDirs(path: string, mode?: number): string[] {
  const full = resolve(path);
  const missing: string[] = [];
  for (let p = full; ; p = dirname(p)) {
    let st: Stats | undefined;
    try {
      st = statSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${full}' (${p} is not a directory)`), { code: 'ENOTDIR' });
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p || p === sep) break;
  }
  const made: string[] = [];
  for (const d of missing) {
    try {
      mkdirSync(d, mode);
    } catch (e) {
      // Made by another process between the look and the mkdir (two starters of one home at
      // once): it is there, and not ours to take away. Anything else is thrown.
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statSync(d).isDirectory()) continue;
      throw e;
    }
    made.push(d);
  }
  return made;
}

/** Removes what `makeDirs` made, innermost first, as long as each is empty (anything put there since stays, with its parents). */
export function unmakeDirs(made: readonly string[]): void {
  for (const d of [...made].reverse()) {
    try {
      rmdirSync(d);
    } catch {
      return;
    }
  }
}

export function writeFileAtomic(file: string, text: string | Uint8Array, opts: { mode?: number; syncDir?: boolean; durable?: boolean } = {}): void {
  const mode = opts.mode ?? 0o600;
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', mode);
    try {
      if (typeof text === 'string') writeSync(fd, text);
      else for (let at = 0; at < text.length;) at += writeSync(fd, text, at);
      if (opts.durable !== false) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  if (opts.syncDir === false || opts.durable === false) return;
  try {
    const dir = openSync(dirname(file), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
  } catch { /* a directory that cannot be synced (some filesystems) still holds the renamed file */ }
}

/** The most one readSync asks for (Node refuses lengths past 2^31 - 1). */
const READ_CHUNK_BYTES = 1024 * 1024 * 1024;

/** A file that is not what a reader takes: not a regular file, or larger than it may be. */
export class FileShapeError extends Error {
  override name = 'FileShapeError';
  readonly code = 'EHVLABSHAPE';
}

function kindOf(st: Stats): string {
  return st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : 'not a regular file';
}

/** The file-system calls readRegularFile makes (a test may fail one). */
export type RegularFileIo = { openSync: typeof openSync; fstatSync: typeof fstatSync; readSync: typeof readSync; closeSync: typeof closeSync };
const nodeIo: RegularFileIo = { openSync, fstatSync, readSync, closeSync };

/**
 * Opens `path` without blocking, so a FIFO in its place does not hold the reader until someone
 * writes (a FIFO at vms/NAME.json held a starting root for good), checks with fstat that it is a
 * regular file (a symlink to one is one), and gives the descriptor and its stat to `use`; closes
 * it after. Throws FileShapeError for another kind, the file system's error otherwise.
 */
function withRegularFile<T>(path: string, io: RegularFileIo, use: (fd: number, st: Stats) => T): T {
  const fd = io.openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = io.fstatSync(fd);
    if (!st.isFile()) throw new FileShapeError(`${path} is ${kindOf(st)}, not a file`);
    return use(fd, st);
  } finally {
    io.closeSync(fd);
  }
}

/**
 * Reads a file that must be a regular one (withRegularFile) of at most `maxBytes`, to its end but
 * never past `maxBytes` (run/host.json as a link to /dev/zero grew a CLI to 1.9 GB). Throws
 * FileShapeError for the wrong kind or size, the file system's error otherwise (ENOENT included).
 */
export function readRegularFile(path: string, maxBytes: number, io: RegularFileIo = nodeIo): Buffer {
  return withRegularFile(path, io, (fd, st) => {
    if (st.size > maxBytes) throw new FileShapeError(`${path} is ${st.size} bytes, more than the ${maxBytes} such a file may have`);
    // The size can change while it is read: read to the end, growing the buffer, and one byte more
    // than allowed tells.
    let buf = Buffer.alloc(Math.min(maxBytes, st.size) + 1);
    let n = 0;
    for (;;) {
      if (n === buf.length) {
        if (n > maxBytes) throw new FileShapeError(`${path} is more than the ${maxBytes} bytes such a file may have`);
        const bigger = Buffer.alloc(Math.min(maxBytes + 1, buf.length * 2));
        buf.copy(bigger, 0, 0, n);
        buf = bigger;
      }
      // At most 1 GiB a call: Node refuses a length past 2^31 - 1 (a saved 2 GiB memory file).
      const got = io.readSync(fd, buf, n, Math.min(buf.length - n, READ_CHUNK_BYTES), null);
      if (got <= 0) break;
      n += got;
    }
    return buf.subarray(0, n);
  });
}

/**
 * The last `maxBytes` of a file that must be a regular one (withRegularFile: a log, a fault log);
 * a larger file is not an error: its tail is read. `start` is the file offset of the first byte
 * returned (0: the whole file).
 */
export function readRegularTail(path: string, maxBytes: number): { bytes: Buffer; start: number } {
  return withRegularFile(path, nodeIo, (fd, st) => {
    const start = Math.max(0, st.size - maxBytes);
    const buf = Buffer.alloc(Math.min(maxBytes, st.size));
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, Math.min(buf.length - n, READ_CHUNK_BYTES), start + n);
      if (got <= 0) break;
      n += got;
    }
    return { bytes: buf.subarray(0, n), start };
  });
}
