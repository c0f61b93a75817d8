/**
 * What the VMWP reads of the pages a guest writes for its host to see: the status page and the
 * kernel page (layout.ts). The guest writes them and the guest is not trusted, so the worker
 * decodes them here, once, and a page that is not what a booted hvlab kernel writes is answered as
 * such (a string saying why), never thrown at and never passed on as numbers nobody checked.
 */
import { MAX_VPS_PER_PARTITION } from './hypercall.js';
import { BootState, KERNEL_MAGIC, KernelPage, STATUS_MAGIC, StatusPage } from './layout.js';

/** The status page's fields a `vm status` shows. */
export interface GuestStatus {
  booted: boolean;
  progress: number;
  steps: number;
  messagesReceived: number;
  eventsReceived: number;
}

/** The kernel page's fields a `vm status` shows: LP occupancy (now and most ever) and the CMOS time read at boot. */
export interface GuestKernelInfo {
  running: number;
  maxRunning: number;
  rtcFromCmosMs: number;
}

/** Bytes of the status page the decoder reads (up to the last message, which it does not). */
export const GUEST_STATUS_BYTES = StatusPage.lastMessage;
/** Bytes of the kernel page the decoder reads. */
export const GUEST_KERNEL_INFO_BYTES = KernelPage.rtcFromCmosMs + 8;

function view(bytes: unknown, need: number, what: string): DataView | string {
  if (!(bytes instanceof Uint8Array)) return `the ${what} did not arrive as bytes`;
  if (bytes.byteLength < need) return `the ${what} is ${bytes.byteLength} bytes, not ${need}`;
  return new DataView(bytes.buffer, bytes.byteOffset, need);
}

/** A u64 counter of the guest's, as a number; null when past 2^53 (no counter of a real run gets there). */
function counter(dv: DataView, at: number): number | null {
  const v = dv.getBigUint64(at, true);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;
}

/** The status page (its first GUEST_STATUS_BYTES bytes), or why it is not one a guest kernel wrote. */
export function decodeGuestStatus(bytes: unknown): GuestStatus | string {
  const dv = view(bytes, GUEST_STATUS_BYTES, 'status page');
  if (typeof dv === 'string') return dv;
  if (dv.getUint32(StatusPage.magic, true) !== STATUS_MAGIC) return 'the status page does not carry its magic number (the guest overwrote it)';
  const progress = counter(dv, StatusPage.progress);
  if (progress === null) return 'the status page\'s progress is past 2^53';
  const steps = counter(dv, StatusPage.steps);
  if (steps === null) return 'the status page\'s step count is past 2^53';
  return {
    booted: dv.getUint32(StatusPage.bootState, true) >= BootState.Running,
    progress,
    steps,
    messagesReceived: dv.getUint32(StatusPage.messagesReceived, true),
    eventsReceived: dv.getUint32(StatusPage.eventsReceived, true),
  };
}

/** The kernel page (its first GUEST_KERNEL_INFO_BYTES bytes), or why it is not one a guest kernel wrote. */
export function decodeGuestKernelInfo(bytes: unknown): GuestKernelInfo | string {
  const dv = view(bytes, GUEST_KERNEL_INFO_BYTES, 'kernel page');
  if (typeof dv === 'string') return dv;
  if (dv.getUint32(KernelPage.magic, true) !== KERNEL_MAGIC) return 'the kernel page does not carry its magic number (the guest overwrote it)';
  const running = dv.getInt32(KernelPage.running, true);
  const maxRunning = dv.getInt32(KernelPage.maxRunning, true);
  if (running < 0 || running > MAX_VPS_PER_PARTITION) return `the kernel page says ${running} VPs hold an LP`;
  // Not checked against `running`: a VP counts itself in before it raises the most, so a read
  // between the two may see one more running than ever ran.
  if (maxRunning < 0 || maxRunning > MAX_VPS_PER_PARTITION) return `the kernel page says at most ${maxRunning} VPs ever held an LP`;
  const rtcFromCmosMs = dv.getFloat64(KernelPage.rtcFromCmosMs, true);
  if (!Number.isFinite(rtcFromCmosMs) || rtcFromCmosMs < 0) return `the kernel page's CMOS time ${rtcFromCmosMs} is not a time`;
  return { running, maxRunning, rtcFromCmosMs };
}
