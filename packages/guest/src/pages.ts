/**
 * The guest kernel's page allocator for memory it hands to devices (VMBus rings). It allocates
 * physically contiguous runs from the top of guest memory downwards, so workload data (which
 * grows up from 0x100000) and rings stay apart; freed runs are reused first-fit.
 */
export class OutOfGuestMemory extends Error {
  override name = 'OutOfGuestMemory';
}

export class PageAllocator {
  private readonly free: Array<{ pfn: number; count: number }> = [];
  private top: number;

  /** Pages [floorPfn, topPfn) are the allocator's. */
  constructor(private readonly floorPfn: number, topPfn: number) {
    this.top = topPfn;
  }

  alloc(count: number): number {
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`cannot allocate ${count} pages`);
    const i = this.free.findIndex((r) => r.count >= count);
    if (i >= 0) {
      const r = this.free[i];
      const pfn = r.pfn;
      if (r.count === count) this.free.splice(i, 1);
      else {
        r.pfn += count;
        r.count -= count;
      }
      return pfn;
    }
    if (this.top - count < this.floorPfn) throw new OutOfGuestMemory(`no ${count} contiguous free pages left for devices`);
    this.top -= count;
    return this.top;
  }

  release(pfn: number, count: number): void {
    this.free.push({ pfn, count });
    this.free.sort((a, b) => a.pfn - b.pfn);
    // Merge neighbours so large rings can be reallocated.
    for (let i = 0; i + 1 < this.free.length;) {
      const a = this.free[i];
      const b = this.free[i + 1];
      if (a.pfn + a.count === b.pfn) {
        a.count += b.count;
        this.free.splice(i + 1, 1);
      } else i++;
    }
  }

  /** The allocator as plain data (guest/src/state.ts). */
  save(): PageAllocatorState {
    return { version: 1, floor: this.floorPfn, top: this.top, free: this.free.map((r) => ({ ...r })) };
  }

  /** Takes a state `decodePageAllocatorState` accepted for this allocator's range. */
  restore(s: PageAllocatorState): void {
    this.top = s.top;
    this.free.length = 0;
    for (const r of s.free) this.free.push({ ...r });
  }

  get range(): { floor: number; top: number } {
    return { floor: this.floorPfn, top: this.top };
  }
}

export interface PageAllocatorState {
  version: 1;
  floor: number;
  top: number;
  free: Array<{ pfn: number; count: number }>;
}
