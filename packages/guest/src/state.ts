/**
 * The guest kernel's own saved state. A real guest's state is all in its memory; hvlab's kernel
 * keeps some in its heap (the VMBus client, the drivers, the KVP pools, the device-page
 * allocator), so when the VM is saved it parks that state in guest memory — JSON in pages taken
 * from the device-page allocator, found through the kernel page (stateGpa, stateBytes,
 * statePages) — and a resumed kernel reads it back from there. It travels with guest memory, so
 * a saved VM and (later) a migrated one need nothing of the guest besides its memory.
 *
 * The bytes come from guest memory, which a restored or migrated VM's file could carry in any
 * shape: `decodeKernelState` checks the envelope and every component with its own decoder, and
 * a kernel that finds no valid state refuses to resume rather than boot half-restored.
 */
import { DEVICE_CLASS_NAMES, KernelPage, KERNEL_PAGE_GPA, PAGE } from '@hvlab/protocol';
import { decodeState, fields, list, shownValue, StateFieldError, uint, versioned } from '@hvlab/protocol/state';
import { decodeVmbusClientState, type VmbusClientState } from '@hvlab/vmbus';
import type { GuestMemory } from './memory.js';
import type { PageAllocatorState } from './pages.js';

export const KERNEL_STATE_VERSION = 1;
/** Largest parked state: 4096-entry KVP pools of 2.5 KiB entries would fit twice. */
export const KERNEL_STATE_MAX_BYTES = 32 * 1024 * 1024;

export interface KernelState {
  version: 1;
  vmbus: VmbusClientState;
  pages: PageAllocatorState;
  /** Each driver's state, by device class (checked by the driver's own decoder on restore). */
  drivers: Record<string, unknown>;
}

/** Checks the allocator state against the kernel's device-page range [floor, end). */
export function decodePageAllocatorState(v: unknown, floor: number, end: number): PageAllocatorState | string {
  return decodeState(() => {
    const o = versioned(v, 'pages', 1, ['floor', 'top', 'free']);
    if (o.floor !== floor) throw new StateFieldError(`pages.floor is ${shownValue(o.floor)}, not this kernel's ${floor}`);
    const top = uint(o.top, 'pages.top', end);
    if (top < floor) throw new StateFieldError(`pages.top ${top} is below the floor ${floor}`);
    const free = list(o.free, 'pages.free', 65536, (x, p) => {
      const r = fields(x, p, ['pfn', 'count']);
      const pfn = uint(r.pfn, `${p}.pfn`, end);
      const count = uint(r.count, `${p}.count`, end);
      if (count < 1 || pfn < top || pfn + count > end) throw new StateFieldError(`${p} (${pfn}+${count}) is not a free run inside ${top}..${end}`);
      return { pfn, count };
    });
    return { version: 1 as const, floor, top, free };
  });
}

export function decodeKernelState(v: unknown, range: { floor: number; end: number }): KernelState | string {
  return decodeState(() => {
    const o = versioned(v, 'kernel', KERNEL_STATE_VERSION, ['vmbus', 'pages', 'drivers']);
    const vmbus = decodeVmbusClientState(o.vmbus);
    if (typeof vmbus === 'string') throw new StateFieldError(`kernel.vmbus: ${vmbus}`);
    const pages = decodePageAllocatorState(o.pages, range.floor, range.end);
    if (typeof pages === 'string') throw new StateFieldError(`kernel.${pages}`);
    const d = fields(o.drivers, 'kernel.drivers', [], DEVICE_CLASS_NAMES);
    return { version: 1 as const, vmbus, pages, drivers: { ...d } };
  });
}

/** Where the parked state is, from the kernel page: null when there is none. */
export function parkedStateLocation(mem: GuestMemory): { gpa: number; bytes: number; pages: number } | null {
  const k = KERNEL_PAGE_GPA;
  const gpa = mem.f64(k + KernelPage.stateGpa);
  const bytes = mem.u32(k + KernelPage.stateBytes);
  const pages = mem.u32(k + KernelPage.statePages);
  if (gpa === 0) return null;
  return { gpa, bytes, pages };
}

/** Writes the state into `pages` pages at `pfn` and points the kernel page at it. */
export function parkState(mem: GuestMemory, json: Uint8Array, pfn: number, pages: number): void {
  if (json.length > pages * PAGE) throw new RangeError(`kernel state of ${json.length} bytes does not fit ${pages} pages`);
  mem.write(pfn * PAGE, json);
  const k = KERNEL_PAGE_GPA;
  mem.setF64(k + KernelPage.stateGpa, pfn * PAGE);
  mem.setU32(k + KernelPage.stateBytes, json.length);
  mem.setU32(k + KernelPage.statePages, pages);
}

/** Forgets the parked state (after it was read back, or when a save was called off). */
export function clearParkedState(mem: GuestMemory): void {
  const k = KERNEL_PAGE_GPA;
  mem.setF64(k + KernelPage.stateGpa, 0);
  mem.setU32(k + KernelPage.stateBytes, 0);
  mem.setU32(k + KernelPage.statePages, 0);
}

/** Reads and checks the parked state; a sentence when it is missing or bad. */
export function readParkedState(mem: GuestMemory, range: { floor: number; end: number }): { state: KernelState; pfn: number; pages: number } | string {
  const at = parkedStateLocation(mem);
  if (!at) return 'the kernel page points at no saved kernel state';
  const { gpa, bytes, pages } = at;
  if (!Number.isSafeInteger(gpa) || gpa % PAGE !== 0 || bytes > KERNEL_STATE_MAX_BYTES || pages < 1 || bytes > pages * PAGE) return `the saved kernel state's location (${gpa}, ${bytes} bytes, ${pages} pages) is invalid`;
  const pfn = gpa / PAGE;
  if (pfn < range.floor || pfn + pages > range.end) return `the saved kernel state (pages ${pfn}..${pfn + pages}) is outside the device pages ${range.floor}..${range.end}`;
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(mem.read(gpa, bytes)));
  } catch (e) {
    return `the saved kernel state is not JSON: ${(e as Error).message}`;
  }
  const state = decodeKernelState(v, range);
  return typeof state === 'string' ? state : { state, pfn, pages };
}
