/**
 * What became of a process's code cache (code-cache.ts), for the process's own code to report. A
 * module of its own, importing nothing, so that a VP thread can say it without loading what makes
 * and checks caches.
 *
 * - `accepted`: V8 took the cache: the bundle's functions came as bytecode;
 * - `rejected`: the file checked out but V8 refused it (another Node or V8, or other V8 flags);
 * - `absent`: no cache beside the bundle (not built, or its making failed);
 * - `stale`: the cache was made from another source (a rebuild between the two reads);
 * - `corrupt`: the file is not a whole cache (its header, length or CRC-32 do not check out);
 * - `unreadable`: the file could not be read.
 * In every case but `accepted` the bundle compiled from source, as it would without a cache.
 */
export type CodeCacheStatus = 'accepted' | 'rejected' | 'absent' | 'stale' | 'corrupt' | 'unreadable';

/** Where a launcher leaves its status (one realm: the bundle runs in the launcher's). */
const STATUS_KEY = Symbol.for('hvlab.codeCache');

/** This process's (or worker thread's) status; undefined when it did not start from a cached bundle. */
export function codeCacheStatus(): CodeCacheStatus | undefined {
  return (globalThis as Record<symbol, unknown>)[STATUS_KEY] as CodeCacheStatus | undefined;
}

/** Records the status (the launcher, once). */
export function setCodeCacheStatus(status: CodeCacheStatus): void {
  (globalThis as Record<symbol, unknown>)[STATUS_KEY] = status;
}
