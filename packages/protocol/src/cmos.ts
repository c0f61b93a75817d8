/**
 * The CMOS real-time clock (MC146818) as the guest sees it: an index port and a data port, the
 * time registers in BCD (status B bit 2 clear) or binary, a 24-hour clock (status B bit 1), the
 * century at 0x32, the rest of the 128 bytes battery-backed NVRAM. Bit 7 of a write to the index
 * port is the NMI mask, not part of the index.
 */
export const CMOS_INDEX_PORT = 0x70;
export const CMOS_DATA_PORT = 0x71;
export const CMOS_BYTES = 128;

export const CmosRegister = {
  seconds: 0x00,
  minutes: 0x02,
  hours: 0x04,
  weekday: 0x06,
  day: 0x07,
  month: 0x08,
  year: 0x09,
  statusA: 0x0a,
  statusB: 0x0b,
  statusC: 0x0c,
  statusD: 0x0d,
  century: 0x32,
} as const;

/** Status B: bit 2 binary (else BCD), bit 1 24-hour clock. */
export const CMOS_STATUS_B_BINARY = 0x04;
export const CMOS_STATUS_B_24H = 0x02;

export function toBcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | v % 10;
}

export function fromBcd(v: number): number {
  return (v >> 4) * 10 + (v & 0xf);
}
