/**
 * SynIC layouts and message types (REFERENCE.md "SynIC and interrupts"). A message slot is 256
 * bytes: a 16-byte header (type u32, payload size u8, flags u8 — bit 0 MessagePending, two reserved
 * bytes, sender u64) and up to 240 bytes of payload. The message page has one slot per SINT; the
 * event-flag page has 256 bytes (2048 flags) per SINT.
 */
export const SINT_COUNT = 16;
export const MESSAGE_SLOT_SIZE = 256;
export const MESSAGE_HEADER_SIZE = 16;
export const EVENT_FLAGS_PER_SINT = 2048;
export const EVENT_FLAG_BYTES_PER_SINT = 256;

export const MsgHeader = { type: 0x0, payloadSize: 0x4, flags: 0x5, sender: 0x8 } as const;
export const MSG_FLAG_PENDING = 0x1;

export const HvMessageType = {
  None: 0,
  UnmappedGpa: 0x80000000,
  GpaIntercept: 0x80000001,
  TimerExpired: 0x80000010,
  X64IoPortIntercept: 0x80010000,
  X64ApicEoi: 0x80010004,
  X64Halt: 0x80010007,
} as const;

/** SINT register: bits 7-0 vector, bit 16 masked, bit 17 auto-EOI. */
export const SINT_MASKED = 1 << 16;
export const SINT_AUTO_EOI = 1 << 17;
export function sintVector(reg: number): number {
  return reg & 0xff;
}
export function sintMasked(reg: number): boolean {
  return (reg & SINT_MASKED) !== 0;
}
/** SIMP / SIEFP: bit 0 enable, bits 63-12 the page's GPA page number. */
export function synicPageGpa(reg: number): number | null {
  return reg % 2 === 1 ? Math.floor(reg / 4096) * 4096 : null;
}
export function synicPageRegister(gpa: number): number {
  return gpa + 1;
}
