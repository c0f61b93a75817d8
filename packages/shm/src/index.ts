/**
 * @hvlab/shm — named shared memory under /dev/shm, as real SharedArrayBuffers.
 *
 * A small native addon (native/shm.cc) does shm_open + mmap and gives V8 the mapping as the
 * backing store of a SharedArrayBuffer, so two processes that map the same name see each other's
 * writes and can use Atomics on them. Guest physical memory, SynIC pages and VP control pages are
 * all such regions.
 *
 * The same addon gives the futex that crosses processes (`futexWait`/`futexWake`) and watches a
 * process for its exit without polling (`watchProcessExit`, a pidfd in the event loop), and copies
 * bytes between buffers at memory speed (`copyBytes`: V8 copies into a SharedArrayBuffer with
 * relaxed atomic stores, at a fraction of memcpy's speed).
 *
 * When the addon could not be built or loaded, `shmAvailable()` is false and callers fall back to
 * process-private memory (`privateRegion`), carrying cross-process traffic over ZeroMQ instead.
 * Deviation from Hyper-V: there is no SLAT; sharing is by file name, and access control is the
 * file mode (0600) plus the hypervisor's own checks.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { procState, selfChildren } from './procfs.js';

interface Addon {
  map(name: string, size: number, create: boolean): SharedArrayBuffer;
  unlink(name: string): boolean;
  futexWait(sab: SharedArrayBuffer, index: number, expected: number, timeoutMs: number): 'ok' | 'not-equal' | 'timed-out';
  futexWake(sab: SharedArrayBuffer, index: number, count: number): number;
  yieldCpu?(): void;
  setChildSubreaper?(): boolean;
  reapChild?(pid: number): boolean;
  copyBytes?: CopyBytes;
  watchWord?(sab: SharedArrayBuffer, index: number, onChange: () => void): number;
  unwatchWord?(id: number): boolean;
  zeroPages?(sab: SharedArrayBuffer, firstPage: number, count: number, out: Uint8Array, fd?: number): number;
  wpTrack?(sab: SharedArrayBuffer): number;
  postcopyTrack?(memory: SharedArrayBuffer, control: SharedArrayBuffer): number;
  postcopyUntrack?(id: number): boolean;
  discardPages?(sab: SharedArrayBuffer, firstPage: number, count: number): void;
  wpHarvest?(id: number, bitmap: Int32Array): number;
  wpUntrack?(id: number): boolean;
  splicePump?(inFd: number, outFd: number, onDone: () => void): number;
  splicePumpStats?(id: number): SplicePumpStats | null;
  splicePumpStop?(id: number): (SplicePumpStats & { leftover: Uint8Array }) | null;
  wakeFdOpen?(): { id: number; fd: number };
  wakeFdSignal?(id: number): boolean;
  wakeFdClose?(id: number): boolean;
  watchWakeFd?(pid: number, fd: number, onWake: () => void): number;
  unwatchWakeFd?(id: number): boolean;
}

/**
 * This package's directory, from src/ (sources) or dist/src/ (compiled) alike. Bundled into a VM
 * process's bundle (scripts/bundle.mjs), this module's URL is the bundle's: the package resolver
 * finds this package from there (every package that bundles it depends on it).
 */
function findPkgDir(): string {
  try {
    return dirname(createRequire(import.meta.url).resolve('@hvlab/shm/package.json'));
  } catch { /* not resolvable from here: walk up */ }
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json')) && dirname(d) !== d) d = dirname(d);
  return d;
}
const pkgDir = findPkgDir();
let addon: Addon | null = null;
let loadError = '';

if (process.env.HVLAB_SHM === 'off') {
  loadError = 'disabled by HVLAB_SHM=off';
} else {
  const file = join(pkgDir, 'build', 'Release', 'hvlab_shm.node');
  if (!existsSync(file)) {
    let why = 'the native addon was not built';
    try {
      const st = JSON.parse(readFileSync(join(pkgDir, 'build-status.json'), 'utf8')) as { reason?: string };
      if (st.reason) why += ` (${st.reason})`;
    } catch { /* no status file */ }
    loadError = why;
  } else {
    try {
      addon = createRequire(import.meta.url)(file) as Addon;
    } catch (e) {
      loadError = `the native addon failed to load: ${(e as Error).message}`;
    }
  }
}

/** Page size of guest physical memory and of every shared region. */
export const PAGE_SIZE = 4096;
/** Largest region hvlab will create (64 GiB), to catch unit mistakes early. */
export const MAX_REGION_BYTES = 64 * 1024 ** 3;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/;

export class ShmError extends Error {
  override name = 'ShmError';
}

/** Memory mode of this process: 'shared' (the addon is loaded) or 'private' (fallback). */
export function memoryMode(): 'shared' | 'private' {
  return addon ? 'shared' : 'private';
}
export function shmAvailable(): boolean {
  return addon !== null;
}
/** Why shared memory is unavailable ('' when it is available). */
export function shmUnavailableReason(): string {
  return loadError;
}

function checkName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new ShmError(`shared-memory name ${JSON.stringify(name)} is invalid: use letters, digits, '.', '_' or '-', no '/', at most 201 characters`);
  }
}
function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) throw new ShmError(`shared-memory size ${size} is invalid: it must be a positive whole number of bytes`);
  if (size % PAGE_SIZE !== 0) throw new ShmError(`shared-memory size ${size} is not a multiple of the ${PAGE_SIZE}-byte page`);
  if (size > MAX_REGION_BYTES) throw new ShmError(`shared-memory size ${size} exceeds the ${MAX_REGION_BYTES}-byte limit`);
}
function need(): Addon {
  if (!addon) throw new ShmError(`shared memory is unavailable: ${loadError}`);
  return addon;
}
function rethrow(e: unknown, what: string): never {
  const err = e as Error & { errno?: number };
  if (err.errno === 17) throw new ShmError(`${what}: it already exists`);
  if (err.errno === 2) throw new ShmError(`${what}: it does not exist`);
  throw new ShmError(`${what}: ${err.message}`);
}

/** Creates /dev/shm/NAME of SIZE bytes (zero-filled); fails if it exists. */
export function createRegion(name: string, size: number): SharedArrayBuffer {
  checkName(name);
  checkSize(size);
  try {
    return need().map(name, size, true);
  } catch (e) {
    if (e instanceof ShmError) throw e;
    rethrow(e, `cannot create shared memory ${name}`);
  }
}

/** Maps an existing /dev/shm/NAME (the whole file, or its first SIZE bytes). */
export function openRegion(name: string, size = 0): SharedArrayBuffer {
  checkName(name);
  if (size !== 0) checkSize(size);
  try {
    return need().map(name, size, false);
  } catch (e) {
    if (e instanceof ShmError) throw e;
    rethrow(e, `cannot open shared memory ${name}`);
  }
}

/** Removes /dev/shm/NAME; mappings stay valid until dropped. Returns false if it was not there. */
export function unlinkRegion(name: string): boolean {
  checkName(name);
  if (!addon) return false;
  try {
    return addon.unlink(name);
  } catch (e) {
    rethrow(e, `cannot unlink shared memory ${name}`);
  }
}

/** A process-private region with the same shape, for the fallback mode. */
export function privateRegion(size: number): SharedArrayBuffer {
  checkSize(size);
  return new SharedArrayBuffer(size);
}

/**
 * Blocks the calling thread while Int32 word `index` of `sab` equals `expected`, at most
 * `timeoutMs` (negative: forever). With the addon this is a shared futex, woken from any process
 * that maps the same region; without it, Atomics.wait (wakes only from this process). Worker
 * threads only: the main thread must never block.
 */
export function futexWait(sab: SharedArrayBuffer, index: number, expected: number, timeoutMs: number): 'ok' | 'not-equal' | 'timed-out' {
  if (addon) return addon.futexWait(sab, index, expected, timeoutMs);
  return Atomics.wait(new Int32Array(sab), index, expected, timeoutMs < 0 ? Infinity : timeoutMs);
}

/** Wakes up to `count` threads blocked in futexWait on word `index` (in any process, with the addon). */
export function futexWake(sab: SharedArrayBuffer, index: number, count = 0x7fffffff): number {
  if (addon) return addon.futexWake(sab, index, count);
  return Atomics.notify(new Int32Array(sab), index, count);
}

/**
 * sched_yield: for a thread that just woke another and has only bookkeeping left before it sleeps.
 * The kernel often queues the woken thread behind its waker, and a wake-up that has to go to
 * another CPU instead costs tens of microseconds on a small virtual machine; yielding runs it at
 * once, here. A no-op without the addon.
 */
export function yieldCpu(): void {
  addon?.yieldCpu?.();
}

/** Whether `watchWord` works here (the addon is loaded and has word watches). */
export function wordWatchAvailable(): boolean {
  return typeof addon?.watchWord === 'function';
}

/**
 * Calls `onChange` on this thread's event loop after Int32 word `index` of `sab` changed and a
 * futex wake on it was sent (from any process). A small native thread sleeps in the futex for the
 * event loop, so a main thread can wait on a shared word without blocking; wakes that arrive while
 * a call is pending coalesce into it, so `onChange` must read whatever it looks for. The watch
 * does not keep the process alive. Returns the function that stops it (no call after it returns).
 * Throws ShmError without the addon.
 */
export function watchWord(sab: SharedArrayBuffer, index: number, onChange: () => void): () => void {
  const a = need();
  if (!a.watchWord || !a.unwatchWord) throw new ShmError('the native addon predates word watches (rebuild it)');
  if (typeof onChange !== 'function') throw new ShmError('watchWord needs a function to call');
  const unwatch = a.unwatchWord;
  return unwatchOnce(unwatch, a.watchWord(sab, index, fromNative(onChange)));
}

/**
 * `fn` as a callback for native code: an exception there would end the process, so one thrown
 * by `fn` is rethrown from a microtask instead (an uncaught exception as from any callback).
 */
function fromNative(fn: () => void): () => void {
  return () => {
    try {
      fn();
    } catch (e) {
      queueMicrotask(() => {
        throw e;
      });
    }
  };
}

/** The function that stops native watch `id` with `unwatch`, once however often it is called. */
function unwatchOnce(unwatch: (id: number) => boolean, id: number): () => void {
  let live = true;
  return () => {
    if (!live) return;
    live = false;
    unwatch(id);
  };
}

/**
 * A wake descriptor: an eventfd of this process that another process's event loop polls
 * (`watchWakeFd`), so one write wakes that loop where a word watch wakes a thread and then the loop
 * (two wake-ups of sleeping threads, each tens of microseconds on a virtual machine whose idle
 * CPUs halt). `fd` is what the other side needs, with this process's pid; `id` is what
 * `signalWakeFd` takes, from any thread of this process (a worker gets the number, not the object).
 */
export interface WakeFd {
  readonly id: number;
  readonly fd: number;
}

/** Whether wake descriptors can be made and watched here (the addon is loaded and has them). */
export function wakeFdAvailable(): boolean {
  return typeof addon?.wakeFdOpen === 'function' && typeof addon.watchWakeFd === 'function';
}

/** A new wake descriptor; null when this process cannot make one (no addon, no eventfd). */
export function openWakeFd(): WakeFd | null {
  if (!addon?.wakeFdOpen) return null;
  try {
    const { id, fd } = addon.wakeFdOpen();
    return { id, fd };
  } catch {
    return null;
  }
}

/**
 * Signals wake descriptor `id` of this process: its watchers' callbacks run. A descriptor closed
 * meanwhile (or an id never handed out) is ignored; the number of a closed descriptor is never
 * written to, so a signal racing a close cannot reach whatever the process opened next.
 */
export function signalWakeFd(id: number): void {
  addon?.wakeFdSignal?.(id);
}

/** Closes wake descriptor `id` of this process (the copies its watchers took stay open, silent). */
export function closeWakeFd(id: number): void {
  addon?.wakeFdClose?.(id);
}

/**
 * Calls `onWake` on this thread's event loop each time process `pid` signals its wake descriptor
 * `fd` (signals that arrive while a call is pending coalesce into it, so `onWake` must read
 * whatever it looks for). The watch takes its own copy of the descriptor (pidfd_getfd: the rights
 * of ptrace attach over `pid`) and does not keep the process alive. Returns the function that
 * stops it (no call after it returns). Throws ShmError when the descriptor cannot be taken or is
 * not an eventfd: the caller then watches a word instead.
 */
export function watchWakeFd(pid: number, fd: number, onWake: () => void): () => void {
  const a = need();
  if (!a.watchWakeFd || !a.unwatchWakeFd) throw new ShmError('the native addon predates wake descriptors (rebuild it)');
  if (typeof onWake !== 'function') throw new ShmError('watchWakeFd needs a function to call');
  const unwatch = a.unwatchWakeFd;
  let id: number;
  try {
    id = a.watchWakeFd(pid, fd, fromNative(onWake));
  } catch (e) {
    rethrow(e, `cannot watch descriptor ${fd} of process ${pid}`);
  }
  return unwatchOnce(unwatch, id);
}

/**
 * Makes this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER). The host's
 * anchor (the hypervisor) uses it so that the workers of a root partition that died are re-parented
 * to it, not to PID 1 (which in a container may never reap them). False without the addon.
 */
export function becomeChildSubreaper(): boolean {
  if (!addon?.setChildSubreaper) return false;
  try {
    return addon.setChildSubreaper();
  } catch {
    return false;
  }
}

/** Pids of this process's children (all threads), from /proc. */
export function childPids(): number[] {
  return selfChildren();
}

/**
 * Reaps every exited child of this process that Node did not spawn itself (re-parented orphans):
 * reads /proc/self/task/TID/children and waits (without blocking) for each zombie among them.
 * `own` lists pids Node's child_process manages (their exit status belongs to it). Returns how
 * many were reaped.
 */
export function reapOrphans(own: ReadonlySet<number>): number {
  if (!addon?.reapChild) return 0;
  let n = 0;
  for (const pid of selfChildren()) {
    if (own.has(pid)) continue;
    if (procState(pid) === 'Z' && addon.reapChild(pid)) n++;
  }
  return n;
}

/** The pidfd part of the addon (native/shm.cc); an addon built before it lacks these. */
interface PidWatchAddon {
  watchPid?(pid: number, onExit: () => void): number;
  unwatchPid?(id: number): boolean;
}

/** Why `watchProcessExit` cannot watch in this process ('' when it can, or has not tried yet). */
let pidWatchUnavailable = '';
let pidWatcher: PidWatchAddon | null | undefined;

/** The addon for pid watches: loaded even with HVLAB_SHM=off, which is about memory only. */
function pidWatchAddon(): PidWatchAddon | null {
  if (pidWatcher !== undefined) return pidWatcher;
  let a = addon as PidWatchAddon | null;
  if (!a && process.env.HVLAB_SHM === 'off') {
    try {
      a = createRequire(import.meta.url)(join(pkgDir, 'build', 'Release', 'hvlab_shm.node')) as PidWatchAddon;
    } catch { /* not built: the reason is loadError's */ }
  }
  if (!a) pidWatchUnavailable = `the native addon is not loaded (${loadError})`;
  else if (!a.watchPid || !a.unwatchPid) pidWatchUnavailable = 'the native addon predates pidfd watches (rebuild it)';
  else {
    // Find out now whether this kernel (and its seccomp filter) gives pidfds: watch ourselves.
    try {
      a.unwatchPid(a.watchPid(process.pid, () => undefined));
    } catch (e) {
      pidWatchUnavailable = (e as Error).message;
    }
  }
  pidWatcher = a;
  return a;
}

/**
 * Calls `onExit` once, when process `pid` has exited (a zombie counts), without polling: a pidfd
 * (pidfd_open, Linux 5.3+) watched by this thread's event loop, which it does not keep alive.
 * Returns a function that cancels the watch, or null when this process cannot watch that way (the
 * addon is not built, the kernel has no pidfd_open, a seccomp filter refuses it: see
 * `pidWatchUnavailableReason`) and the caller must poll instead. A pid that does not exist counts
 * as exited: `onExit` runs on the next tick.
 */
export function watchProcessExit(pid: number, onExit: () => void): (() => void) | null {
  const a = pidWatchAddon();
  if (pidWatchUnavailable || !a?.watchPid || !a.unwatchPid) return null;
  const exitedAlready = (): (() => void) => {
    let cancelled = false;
    process.nextTick(() => {
      if (!cancelled) onExit();
    });
    return () => {
      cancelled = true;
    };
  };
  // Not a pid any process can have: no such process.
  if (!Number.isInteger(pid) || pid < 1 || pid > 0x7fffffff) return exitedAlready();
  let id: number;
  try {
    id = a.watchPid(pid, onExit);
  } catch (e) {
    const errno = (e as { errno?: number }).errno;
    if (errno === 3 /* ESRCH */) return exitedAlready();
    if (errno === undefined) throw e;
    pidWatchUnavailable = (e as Error).message;
    return null;
  }
  const unwatch = a.unwatchPid.bind(a);
  return () => void unwatch(id);
}

/** Why processes are watched by polling here, or '' when pidfd watches work (or were not tried). */
export function pidWatchUnavailableReason(): string {
  pidWatchAddon();
  return pidWatchUnavailable;
}

// ---- copies -------------------------------------------------------------------------------------

/** Bytes `copyBytes` copies from and to: a buffer of either kind, or any view of one (Buffer too). */
export type ByteSource = ArrayBufferLike | ArrayBufferView;
export type CopyBytes = (dst: ByteSource, dstOffset: number, src: ByteSource, srcOffset: number, length: number) => void;

const byteView = (b: ByteSource, which: string): Uint8Array => {
  if (ArrayBuffer.isView(b)) return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  if (b instanceof ArrayBuffer || b instanceof SharedArrayBuffer) return new Uint8Array(b);
  throw new TypeError(`copyBytes: the ${which} is not an ArrayBuffer, a SharedArrayBuffer or a view of one`);
};
const byteCount = (v: number, what: string): void => {
  if (typeof v !== 'number') throw new TypeError(`copyBytes: the ${what} is not a number`);
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`copyBytes: the ${what} ${v} is not a non-negative whole number`);
};

/**
 * `copyBytes` without the addon: Uint8Array.prototype.set (overlap-safe, like memmove), with the
 * same checks and errors as the native one. Exported so tests and benchmarks can compare the two.
 */
export const copyBytesPortable: CopyBytes = (dst, dstOffset, src, srcOffset, length) => {
  const d = byteView(dst, 'destination');
  byteCount(dstOffset, 'destination offset');
  const s = byteView(src, 'source');
  byteCount(srcOffset, 'source offset');
  byteCount(length, 'length');
  if (dstOffset > d.length || length > d.length - dstOffset) {
    throw new RangeError(`copyBytes: ${length} bytes at destination offset ${dstOffset} do not fit in the destination's ${d.length} bytes`);
  }
  if (srcOffset > s.length || length > s.length - srcOffset) {
    throw new RangeError(`copyBytes: ${length} bytes at source offset ${srcOffset} lie outside the source's ${s.length} bytes`);
  }
  if (length !== 0) d.set(s.subarray(srcOffset, srcOffset + length), dstOffset);
};

/** The addon's copyBytes, loaded even with HVLAB_SHM=off (which is about memory only), or null. */
function nativeCopyBytes(): CopyBytes | null {
  let a: Addon | null = addon;
  if (!a && process.env.HVLAB_SHM === 'off') {
    try {
      a = createRequire(import.meta.url)(join(pkgDir, 'build', 'Release', 'hvlab_shm.node')) as Addon;
    } catch { /* not built: copies take the portable path */ }
  }
  return typeof a?.copyBytes === 'function' ? a.copyBytes : null;
}
const nativeCopy = nativeCopyBytes();

/**
 * Copies `length` bytes from `src` at `srcOffset` to `dst` at `dstOffset` (offsets count from the
 * start of a view, or of a buffer), as memmove does: overlapping ranges of one buffer come out as
 * if copied through a temporary. Either side may be an ArrayBuffer, a SharedArrayBuffer or any
 * view of one. Throws TypeError for a non-buffer or a non-number, RangeError for an offset or
 * length that is not a non-negative whole number or a range outside its buffer; it never copies
 * partly. With the addon this is a native memmove (one call costs ~70 ns, so it pays off only
 * for copies of a KiB or more); without it, `copyBytesPortable`.
 */
export const copyBytes: CopyBytes = nativeCopy ?? copyBytesPortable;

/** True when `copyBytes` is the addon's memmove (false: the portable Uint8Array.set fallback). */
export function copyBytesIsNative(): boolean {
  return nativeCopy !== null;
}

// ---- kernel dirty-page tracking ------------------------------------------------------------------

/**
 * Dirty pages of a mapping, tracked by the kernel (ARCHITECTURE §8): the mapping behind a
 * SharedArrayBuffer is registered with a userfaultfd in async write-protect mode, so every write
 * through it, by any thread of this process and by any means (a typed array, Atomics, a native
 * copy), marks its page in the page table without a fault reaching user space; `harvest` reads
 * and re-arms those marks with one `PAGEMAP_SCAN` walk (fetch-and-clear). Registration is per
 * process and per mapping: writes through another process's mapping of the same file are not
 * seen (that process must log them). Use it from the thread that opened it.
 */
export class KernelDirtyTracker {
  #id: number;
  readonly pages: number;
  private constructor(id: number, pages: number) {
    this.#id = id;
    this.pages = pages;
  }

  /** Starts tracking the mapping of `sab` (every page write-protected, nothing dirty yet). */
  static open(sab: SharedArrayBuffer): KernelDirtyTracker {
    const a = need();
    if (!a.wpTrack) throw new ShmError('kernel dirty tracking needs a newer build of the shm addon');
    try {
      return new KernelDirtyTracker(a.wpTrack(sab), sab.byteLength / PAGE_SIZE);
    } catch (e) {
      throw new ShmError(`kernel dirty tracking is unavailable: ${(e as Error).message}`);
    }
  }

  /** ORs the pages written since the last harvest into `bitmap` (bit p & 31 of word p >> 5) and re-protects them; returns how many. */
  harvest(bitmap: Int32Array): number {
    if (this.#id === 0) throw new ShmError('the dirty tracker is closed');
    if (bitmap.length * 32 < this.pages) throw new ShmError(`a bitmap of ${bitmap.length} words cannot hold ${this.pages} pages`);
    return need().wpHarvest!(this.#id, bitmap);
  }

  close(): void {
    if (this.#id !== 0) addon?.wpUntrack?.(this.#id);
    this.#id = 0;
  }
}

let kernelDirtyProbe: string | null | undefined;
/**
 * Why kernel dirty tracking cannot be used here, or null when it can (probed once, on a small
 * private mapping: userfaultfd with async write-protect and PAGEMAP_SCAN both work).
 */
export function kernelDirtyTrackingUnavailableReason(): string | null {
  if (kernelDirtyProbe !== undefined) return kernelDirtyProbe;
  if (!addon) return (kernelDirtyProbe = `shared memory is unavailable: ${loadError}`);
  if (process.env.HVLAB_DIRTY_TRACKING === 'bitmap') return (kernelDirtyProbe = 'disabled by HVLAB_DIRTY_TRACKING=bitmap');
  try {
    const name = `hvlab-wpprobe-${process.pid}-${Date.now()}`;
    const sab = addon.map(name, 4 * PAGE_SIZE, true);
    addon.unlink(name);
    const t = KernelDirtyTracker.open(sab);
    try {
      const bits = new Int32Array(1);
      new Uint8Array(sab)[2 * PAGE_SIZE] = 1;
      t.harvest(bits);
      if (bits[0] !== 4) return (kernelDirtyProbe = `PAGEMAP_SCAN reported pages 0x${(bits[0]! >>> 0).toString(16)} for a write to page 2`);
    } finally {
      t.close();
    }
    kernelDirtyProbe = null;
  } catch (e) {
    kernelDirtyProbe = (e as Error).message;
  }
  return kernelDirtyProbe;
}

/**
 * Marks in `out[i]` (1 or 0) whether 4 KiB page `firstPage + i` of `sab` is all zeros, for
 * `count` pages; returns how many are. Native when the addon is loaded (a word-wide scan that
 * stops at the first non-zero word), else a portable loop. Given `fd`, an open descriptor of the
 * file mapped by `sab`, the file's holes count as zero without being read (reading a hole through
 * a shared mapping allocates the page).
 */
export function zeroPages(sab: SharedArrayBuffer, firstPage: number, count: number, out: Uint8Array, fd = -1): number {
  if (!Number.isSafeInteger(firstPage) || !Number.isSafeInteger(count) || firstPage < 0 || count < 0 || (firstPage + count) * PAGE_SIZE > sab.byteLength || out.length < count) {
    throw new RangeError(`zeroPages: pages ${firstPage}+${count} lie outside the buffer or the output is too short`);
  }
  if (addon?.zeroPages) return addon.zeroPages(sab, firstPage, count, out, fd);
  const w = new Int32Array(sab, firstPage * PAGE_SIZE, count * (PAGE_SIZE / 4));
  let zeros = 0;
  for (let p = 0; p < count; p++) {
    let acc = 0;
    for (let i = p * 1024, end = i + 1024; i < end && acc === 0; i++) acc |= w[i]!;
    out[p] = acc === 0 ? 1 : 0;
    zeros += acc === 0 ? 1 : 0;
  }
  return zeros;
}

// ---- post-copy: missing pages fetched on demand ------------------------------------------------

/**
 * The control region shared by a partition process (whose native fault thread posts requests)
 * and its VMWP (which serves them): Int32 words. `requests` counts page numbers posted to the ring
 * (a futex the VMWP watches); `served` is bumped by the VMWP after it wrote pages (a futex the fault
 * thread waits on); `stop`; `faults` seen; the ring of page numbers starts at word `ring`.
 */
export const PostcopyControl = { requests: 0, served: 1, stop: 2, faults: 3, ring: 16, ringLength: 1024 } as const;
export const POSTCOPY_CONTROL_BYTES = 2 * PAGE_SIZE;

/**
 * Missing pages of this process's mapping of `memory`, fetched on demand (post-copy): the mapping
 * is registered with a userfaultfd in MISSING mode, and a native thread (not JS, which may be the
 * thread that stopped) posts the page number of each missing page touched to `control` and wakes
 * the stopped thread once the page is in the file (written by another process). `close` only once
 * every page is there: afterwards a missing page reads as zeros.
 */
export class PostcopyFaults {
  #id: number;
  private constructor(id: number) {
    this.#id = id;
  }

  static open(memory: SharedArrayBuffer, control: SharedArrayBuffer): PostcopyFaults {
    const a = need();
    if (!a.postcopyTrack) throw new ShmError('post-copy needs a newer build of the shm addon');
    if (control.byteLength < POSTCOPY_CONTROL_BYTES) throw new ShmError(`a post-copy control region needs ${POSTCOPY_CONTROL_BYTES} bytes`);
    try {
      return new PostcopyFaults(a.postcopyTrack(memory, control));
    } catch (e) {
      throw new ShmError(`post-copy fault handling is unavailable: ${(e as Error).message}`);
    }
  }

  close(): void {
    if (this.#id !== 0) addon?.postcopyUntrack?.(this.#id);
    this.#id = 0;
  }
}

/** Punches pages out of the shared file behind `sab` (MADV_REMOVE): the next touch through any mapping finds them missing. */
export function discardPages(sab: SharedArrayBuffer, firstPage: number, count: number): void {
  if (!Number.isSafeInteger(firstPage) || !Number.isSafeInteger(count) || firstPage < 0 || count < 0 || (firstPage + count) * PAGE_SIZE > sab.byteLength) {
    throw new RangeError(`discardPages: pages ${firstPage}+${count} lie outside the buffer`);
  }
  const a = need();
  if (!a.discardPages) throw new ShmError('discarding pages needs a newer build of the shm addon');
  a.discardPages(sab, firstPage, count);
}

// ---- splice pumps -------------------------------------------------------------------------------

/** A pump's outcome so far: `ended` (its input closed, everything delivered, its output shut down for writing) or `failed` (errno). */
export interface SplicePumpStats {
  state: 'running' | 'ended' | 'failed';
  errno: number;
  /** Bytes delivered to the output, and reads from the input. */
  bytes: number;
  chunks: number;
  /** Bytes taken from the input: `read - bytes` is what the pump holds. */
  read: number;
}

/** A running pump: `stats()` reads its counters; `stop()` stops it and returns what it had read and not yet delivered. */
export interface SplicePump {
  stats(): SplicePumpStats;
  stop(): SplicePumpStats & { leftover: Buffer };
}

/** Whether `startSplicePump` works here (the addon is loaded and has pumps). */
export function splicePumpAvailable(): boolean {
  return typeof addon?.splicePump === 'function' && typeof addon.splicePumpStop === 'function' && typeof addon.splicePumpStats === 'function';
}

/**
 * Moves bytes from socket `inFd` to socket `outFd` in the kernel (splice(2) through a pipe, on a
 * native thread), until the input ends (the output is then shut down for writing) or either fails;
 * `onDone` is called on this thread's event loop when that happens. The pump works on duplicates
 * of the fds (made non-blocking), closed when it stops: nothing else may read `inFd` or write
 * `outFd` while it runs, and a socket closed by its owner meanwhile stays open until then. `stop()` is idempotent; after it the pump touches neither socket, and
 * it returns the bytes it had read and not delivered (at most the pipe's capacity, 1 MiB), which the caller delivers.
 * Throws ShmError without the addon (see splicePumpAvailable) or when the fds are not two sockets.
 */
export function startSplicePump(inFd: number, outFd: number, onDone: () => void): SplicePump {
  const a = need();
  if (!splicePumpAvailable()) throw new ShmError('the native addon predates splice pumps (rebuild it)');
  let last: (SplicePumpStats & { leftover: Buffer }) | null = null;
  let id: number;
  try {
    id = a.splicePump!(inFd, outFd, fromNative(onDone));
  } catch (e) {
    throw new ShmError((e as Error).message);
  }
  return {
    stats: () => last ?? a.splicePumpStats!(id) ?? { state: 'failed', errno: 0, bytes: 0, chunks: 0, read: 0 },
    stop: () => {
      if (last) return { ...last, leftover: Buffer.alloc(0) };
      const r = a.splicePumpStop!(id);
      const leftover = r ? Buffer.from(r.leftover.buffer, r.leftover.byteOffset, r.leftover.byteLength) : Buffer.alloc(0);
      last = { state: r?.state ?? 'failed', errno: r?.errno ?? 0, bytes: r?.bytes ?? 0, chunks: r?.chunks ?? 0, read: r?.read ?? 0, leftover };
      return last;
    },
  };
}
