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
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

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
