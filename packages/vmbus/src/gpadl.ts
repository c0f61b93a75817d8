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
}
