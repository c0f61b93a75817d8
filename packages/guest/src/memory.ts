/**
 * GuestMemory: the guest kernel's only way to touch guest physical memory. All guest state that
 * must survive save, restore and migration lives here (ARCHITECTURE §4), so every write goes
 * through a method of this class, and each method marks the pages it wrote in the dirty log: one
 * bit per 4 KiB page in the last pages of the memory region (`dirtyBitmapGpa` in protocol), set
 * with `Atomics.or` after the write (or after a `batch` of writes), so that the migration engine
 * can harvest them (fetch-and-clear) from any process that maps the region. This stands in for the
 * dirty bits of SLAT where the kernel's write-protect tracking (userfaultfd) is unavailable.
 *
 * No raw view of the buffer is handed out. Reads may use raw views (they change nothing), inside
 * this class only. A VP thread or the VMBus client, which must see the same memory, gets a
 * `GuestMemoryHandle` (`share()`); the VMBus rings write through their own views and report each
 * write to `markDirty` (a GuestMemory is vmbus's `DirtyLog`).
 *
 * Bounds are checked on every access, so a guest bug is an exception, never a read or write of
 * someone else's bytes; the dirty bitmap itself lies outside the bounds. Atomic methods need the
 * natural alignment of their width (as a locked x86 instruction would need to be atomic).
 */
import { PAGE, dirtyBitmapGpa, dirtyBitmapWords, harvestDirtyPages, markDirtyRange } from '@hvlab/protocol';

export class GuestMemoryError extends Error {
  override name = 'GuestMemoryError';
}

/** What another thread needs to open the same guest memory (structured-clone safe). */
export interface GuestMemoryHandle {
  readonly memory: SharedArrayBuffer;
}

const hex = (v: number): string => `0x${v.toString(16)}`;

export class GuestMemory {
  /** Bytes of guest memory proper: everything below the dirty bitmap. */
  readonly size: number;
  readonly #buffer: SharedArrayBuffer;
  readonly #dv: DataView;
  readonly #u8: Uint8Array;
  readonly #i32: Int32Array;
  readonly #i64: BigInt64Array;
  readonly #dirty: Int32Array;
  /** Inside `batch`: marks gathered per bitmap word, and the words touched, until the batch ends. */
  #batching = false;
  #pending: Int32Array | null = null;
  readonly #touched: number[] = [];

  constructor(buffer: SharedArrayBuffer | GuestMemoryHandle) {
    const b = buffer instanceof SharedArrayBuffer ? buffer : buffer?.memory;
    if (!(b instanceof SharedArrayBuffer)) throw new GuestMemoryError('guest memory must be a SharedArrayBuffer');
    if (b.byteLength === 0 || b.byteLength % PAGE !== 0) throw new GuestMemoryError(`guest memory of ${b.byteLength} bytes is not a whole number of ${PAGE}-byte pages`);
    this.#buffer = b;
    this.size = dirtyBitmapGpa(b.byteLength);
    this.#dv = new DataView(b, 0, this.size);
    this.#u8 = new Uint8Array(b, 0, this.size);
    this.#i32 = new Int32Array(b, 0, this.size / 4);
    this.#i64 = new BigInt64Array(b, 0, this.size / 8);
    this.#dirty = dirtyBitmapWords(b);
  }

  /** For a VP thread or the VMBus client: the same memory, to be opened with `new GuestMemory(handle)`. */
  share(): GuestMemoryHandle {
    return { memory: this.#buffer };
  }

  check(gpa: number, len: number): void {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0 || gpa + len > this.size) {
      throw new GuestMemoryError(`guest access of ${len} bytes at GPA ${hex(gpa)} is outside the ${this.size}-byte memory`);
    }
  }

  private aligned(gpa: number, width: 4 | 8): void {
    this.check(gpa, width);
    if (gpa % width !== 0) throw new GuestMemoryError(`atomic access of ${width} bytes at GPA ${hex(gpa)} is not ${width}-byte aligned`);
  }

  // ---- the dirty log ----------------------------------------------------------------------

  /** Marks page `p` dirty (after the write it stands for: see harvestDirtyPages in protocol). */
  private markPage(p: number): void {
    if (this.#batching) this.defer(p >>> 5, 1 << (p & 31));
    else Atomics.or(this.#dirty, p >>> 5, 1 << (p & 31));
  }

  private defer(word: number, bits: number): void {
    const pending = this.#pending!;
    if (pending[word] === 0) this.#touched.push(word);
    pending[word] |= bits;
  }

  /**
   * Runs `fn` with the dirty marks of its writes gathered and set when it ends: one atomic OR per
   * bitmap word instead of one per write. Each mark still follows its write (which is what makes a
   * racing harvest safe), and the locked OR is no longer a full barrier after every single store —
   * which is what a write-then-mark costs when the stores miss the cache (memdirty: one byte per
   * page). A VP runs each step of a task in a batch, so the marks are set before the step boundary,
   * where a VM is paused for the last copy.
   */
  batch<T>(fn: () => T): T {
    if (this.#batching) return fn();
    this.#pending ??= new Int32Array(this.#dirty.length);
    this.#batching = true;
    try {
      return fn();
    } finally {
      this.#batching = false;
      const pending = this.#pending;
      for (const w of this.#touched) {
        Atomics.or(this.#dirty, w, pending[w]!);
        pending[w] = 0;
      }
      this.#touched.length = 0;
    }
  }

  /** Marks the pages of [gpa, gpa + length) dirty (for bytes written by other means, e.g. VMBus rings). */
  markDirty(gpa: number, length: number): void {
    this.check(gpa, length);
    this.markRange(gpa, length);
  }

  /** Marks the pages of a checked range; one atomic OR per bitmap word touched. */
  private markRange(gpa: number, length: number): void {
    if (length === 0) return;
    const first = Math.floor(gpa / PAGE);
    const last = Math.floor((gpa + length - 1) / PAGE);
    if (first === last) {
      this.markPage(first);
      return;
    }
    if (!this.#batching) {
      markDirtyRange(this.#dirty, gpa, length);
      return;
    }
    for (let p = first; p <= last;) {
      const w = p >>> 5;
      const lo = p & 31;
      const hi = Math.min(31, last - w * 32);
      this.defer(w, hi === 31 ? -1 << lo : ((1 << (hi + 1)) - 1) & (-1 << lo));
      p = (w + 1) * 32;
    }
  }

  /** Fetch-and-clear: the pages written since the last harvest, ascending. */
  harvestDirty(): number[] {
    return harvestDirtyPages(this.#dirty);
  }

  /** The pages marked now, without clearing them. */
  dirtyPages(): number[] {
    const pages: number[] = [];
    for (let w = 0; w < this.#dirty.length; w++) {
      for (let bits = Atomics.load(this.#dirty, w) >>> 0; bits !== 0; bits &= bits - 1) pages.push(w * 32 + (31 - Math.clz32(bits & -bits)));
    }
    return pages;
  }

  // ---- plain reads and writes (little-endian) -----------------------------------------------

  u8(gpa: number): number {
    this.check(gpa, 1);
    return this.#u8[gpa]!;
  }
  setU8(gpa: number, v: number): void {
    this.check(gpa, 1);
    this.#u8[gpa] = v;
    this.markPage(Math.floor(gpa / PAGE));
  }
  /** Adds `delta` to the byte at `gpa` (wrapping, not atomic: `inc byte [gpa]`); returns the new value. */
  add8(gpa: number, delta: number): number {
    this.check(gpa, 1);
    const v = (this.#u8[gpa]! + delta) & 0xff;
    this.#u8[gpa] = v;
    this.markPage(Math.floor(gpa / PAGE));
    return v;
  }
  u16(gpa: number): number {
    this.check(gpa, 2);
    return this.#dv.getUint16(gpa, true);
  }
  setU16(gpa: number, v: number): void {
    this.check(gpa, 2);
    this.#dv.setUint16(gpa, v, true);
    this.markRange(gpa, 2);
  }
  u32(gpa: number): number {
    this.check(gpa, 4);
    return this.#dv.getUint32(gpa, true);
  }
  setU32(gpa: number, v: number): void {
    this.check(gpa, 4);
    this.#dv.setUint32(gpa, v >>> 0, true);
    this.markRange(gpa, 4);
  }
  i32(gpa: number): number {
    this.check(gpa, 4);
    return this.#dv.getInt32(gpa, true);
  }
  setI32(gpa: number, v: number): void {
    this.check(gpa, 4);
    this.#dv.setInt32(gpa, v | 0, true);
    this.markRange(gpa, 4);
  }
  u64(gpa: number): bigint {
    this.check(gpa, 8);
    return this.#dv.getBigUint64(gpa, true);
  }
  setU64(gpa: number, v: bigint): void {
    this.check(gpa, 8);
    this.#dv.setBigUint64(gpa, BigInt.asUintN(64, v), true);
    this.markRange(gpa, 8);
  }
  f64(gpa: number): number {
    this.check(gpa, 8);
    return this.#dv.getFloat64(gpa, true);
  }
  setF64(gpa: number, v: number): void {
    this.check(gpa, 8);
    this.#dv.setFloat64(gpa, v, true);
    this.markRange(gpa, 8);
  }

  // ---- atomics (sequentially consistent, as Atomics are) ------------------------------------

  atomicLoad32(gpa: number): number {
    this.aligned(gpa, 4);
    return Atomics.load(this.#i32, gpa / 4);
  }
  atomicStore32(gpa: number, v: number): void {
    this.aligned(gpa, 4);
    Atomics.store(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
  }
  /** Adds `v`; returns the old value (as every method here that changes a word). */
  atomicAdd32(gpa: number, v: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.add(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  atomicSub32(gpa: number, v: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.sub(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  atomicOr32(gpa: number, v: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.or(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  atomicAnd32(gpa: number, v: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.and(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  atomicExchange32(gpa: number, v: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.exchange(this.#i32, gpa / 4, v);
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  /**
   * Compare-and-swap: stores `replacement` if the word equals `expected`; returns the old value.
   * A failed CAS writes nothing and marks nothing.
   */
  cas32(gpa: number, expected: number, replacement: number): number {
    this.aligned(gpa, 4);
    const old = Atomics.compareExchange(this.#i32, gpa / 4, expected, replacement);
    if (old === (expected | 0)) this.markPage(Math.floor(gpa / PAGE));
    return old;
  }
  atomicLoad64(gpa: number): bigint {
    this.aligned(gpa, 8);
    return Atomics.load(this.#i64, gpa / 8);
  }
  atomicStore64(gpa: number, v: bigint): void {
    this.aligned(gpa, 8);
    Atomics.store(this.#i64, gpa / 8, BigInt.asIntN(64, v));
    this.markPage(Math.floor(gpa / PAGE));
  }
  atomicAdd64(gpa: number, v: bigint): bigint {
    this.aligned(gpa, 8);
    const old = Atomics.add(this.#i64, gpa / 8, BigInt.asIntN(64, v));
    this.markPage(Math.floor(gpa / PAGE));
    return old;
  }

  // ---- bulk ---------------------------------------------------------------------------------

  /** A copy of [gpa, gpa + len). */
  read(gpa: number, len: number): Uint8Array {
    this.check(gpa, len);
    return this.#u8.slice(gpa, gpa + len);
  }
  write(gpa: number, bytes: Uint8Array): void {
    this.check(gpa, bytes.length);
    this.#u8.set(bytes, gpa);
    this.markRange(gpa, bytes.length);
  }
  fill(gpa: number, len: number, value = 0): void {
    this.check(gpa, len);
    this.#u8.fill(value, gpa, gpa + len);
    this.markRange(gpa, len);
  }
  /** memmove: copies `len` bytes from `src` to `dst` (the ranges may overlap). */
  copyWithin(dst: number, src: number, len: number): void {
    this.check(src, len);
    this.check(dst, len);
    this.#u8.copyWithin(dst, src, src + len);
    this.markRange(dst, len);
  }
}
