/**
 * A GPADL window: the root's only view of a child's memory. The hypervisor has checked (MapGpadl)
 * that every page is the partition's and serves no other channel; the window then lets a VSP reach
 * exactly those pages, in GPADL order, and nothing else.
 *
 * Deviation: Linux and Hyper-V map a GPADL's pages virtually contiguous, so a ring may sit on
 * scattered guest pages. hvlab maps nothing; a ring must therefore lie on guest pages that are
 * physically contiguous (the guest's allocator gives them so), and `ringRegion` refuses otherwise.
 */
import type { RingRegion } from './ring.js';

export const GPADL_PAGE = 4096;

export class GpadlError extends Error {
  override name = 'GpadlError';
}

export class GpadlWindow {
  constructor(
    readonly handle: number,
    readonly owner: number,
    readonly pfns: readonly number[],
    private readonly memory: SharedArrayBuffer | null,
  ) {}

  get bytes(): number {
    return this.pfns.length * GPADL_PAGE;
  }

  /** The pages [firstPage, firstPage + pageCount) of the window as one ring region. */
  ringRegion(firstPage: number, pageCount: number): RingRegion {
    if (!this.memory) throw new GpadlError(`GPADL 0x${this.handle.toString(16)} has no shared memory behind it (private-memory mode)`);
    if (!Number.isSafeInteger(firstPage) || !Number.isSafeInteger(pageCount) || firstPage < 0 || pageCount < 2 || firstPage + pageCount > this.pfns.length) {
      throw new GpadlError(`pages ${firstPage}+${pageCount} are outside GPADL 0x${this.handle.toString(16)} of ${this.pfns.length} pages`);
    }
    const first = this.pfns[firstPage];
    for (let i = 1; i < pageCount; i++) {
      if (this.pfns[firstPage + i] !== first + i) {
        throw new GpadlError(`GPADL 0x${this.handle.toString(16)} pages ${firstPage}..${firstPage + pageCount - 1} are not contiguous (page ${i} is 0x${this.pfns[firstPage + i].toString(16)})`);
      }
    }
    return { buffer: this.memory, byteOffset: first * GPADL_PAGE, byteLength: pageCount * GPADL_PAGE };
  }

  /** Copies `len` bytes at window offset `offset` (for GPA-direct payloads). */
  read(offset: number, len: number): Uint8Array {
    this.check(offset, len);
    const out = new Uint8Array(len);
    const src = new Uint8Array(this.memory!);
    let done = 0;
    while (done < len) {
      const at = offset + done;
      const page = Math.floor(at / GPADL_PAGE);
      const within = at % GPADL_PAGE;
      const n = Math.min(GPADL_PAGE - within, len - done);
      const gpa = this.pfns[page] * GPADL_PAGE + within;
      out.set(src.subarray(gpa, gpa + n), done);
      done += n;
    }
    return out;
  }

  /** Writes `data` at window offset `offset`. */
  write(offset: number, data: Uint8Array): void {
    this.check(offset, data.length);
    const dst = new Uint8Array(this.memory!);
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const page = Math.floor(at / GPADL_PAGE);
      const within = at % GPADL_PAGE;
      const n = Math.min(GPADL_PAGE - within, data.length - done);
      dst.set(data.subarray(done, done + n), this.pfns[page] * GPADL_PAGE + within);
      done += n;
    }
  }

  private check(offset: number, len: number): void {
    if (!this.memory) throw new GpadlError(`GPADL 0x${this.handle.toString(16)} has no shared memory behind it (private-memory mode)`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(len) || offset < 0 || len < 0 || offset + len > this.bytes) {
      throw new GpadlError(`range ${offset}+${len} is outside GPADL 0x${this.handle.toString(16)} of ${this.bytes} bytes`);
    }
  }
}
