/**
 * GuestMemory: the guest kernel's only way to touch guest physical memory. All guest state that
 * must survive save, restore and migration lives here (ARCHITECTURE §4). Bounds are checked on
 * every access so a guest bug is an exception, never a read of someone else's bytes.
 */
export class GuestMemoryError extends Error {
  override name = 'GuestMemoryError';
}

export class GuestMemory {
  readonly view: DataView;
  readonly u8: Uint8Array;
  constructor(readonly buffer: SharedArrayBuffer) {
    this.view = new DataView(buffer);
    this.u8 = new Uint8Array(buffer);
  }
  get size(): number {
    return this.buffer.byteLength;
  }
  check(gpa: number, len: number): void {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || len < 0 || gpa + len > this.buffer.byteLength) {
      throw new GuestMemoryError(`guest access of ${len} bytes at GPA 0x${gpa.toString(16)} is outside the ${this.buffer.byteLength}-byte memory`);
    }
  }
  u32(gpa: number): number {
    this.check(gpa, 4);
    return this.view.getUint32(gpa, true);
  }
  setU32(gpa: number, v: number): void {
    this.check(gpa, 4);
    this.view.setUint32(gpa, v >>> 0, true);
  }
  f64(gpa: number): number {
    this.check(gpa, 8);
    return this.view.getFloat64(gpa, true);
  }
  setF64(gpa: number, v: number): void {
    this.check(gpa, 8);
    this.view.setFloat64(gpa, v, true);
  }
  /** An Int32Array over 4 aligned bytes, for Atomics. */
  i32(gpa: number): Int32Array {
    this.check(gpa, 4);
    return new Int32Array(this.buffer, gpa, 1);
  }
  /** A BigInt64Array over 8 aligned bytes, for Atomics on 64-bit counters. */
  i64(gpa: number): BigInt64Array {
    this.check(gpa, 8);
    return new BigInt64Array(this.buffer, gpa, 1);
  }
  read(gpa: number, len: number): Uint8Array {
    this.check(gpa, len);
    return this.u8.slice(gpa, gpa + len);
  }
  write(gpa: number, bytes: Uint8Array): void {
    this.check(gpa, bytes.length);
    this.u8.set(bytes, gpa);
  }
}
