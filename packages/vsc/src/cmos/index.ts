/**
 * The guest's CMOS clock driver: reads the real-time clock through the index and data ports (each
 * access an intercepted port I/O instruction of the VP that runs it) and returns the time in ms
 * since 1970 UTC, decoding BCD or binary per status register B. Runs on VP 0 at boot.
 */
import { CMOS_DATA_PORT, CMOS_INDEX_PORT, CMOS_STATUS_B_BINARY, CmosRegister, fromBcd } from '@hvlab/protocol/cmos';

/** One port access of the running VP: `access` 1 read, 2 write; returns the value read. */
export type PortIo = (port: number, access: 1 | 2, size: number, value?: number) => number;

/** The clock's time in ms since 1970 UTC, or 0 when it reads as no valid date. */
export function readRtc(io: PortIo): number {
  const reg = (r: number): number => {
    io(CMOS_INDEX_PORT, 2, 1, r);
    return io(CMOS_DATA_PORT, 1, 1);
  };
  const bin = (reg(CmosRegister.statusB) & CMOS_STATUS_B_BINARY) !== 0;
  const dec = (v: number): number => (bin ? v : fromBcd(v));
  const sec = dec(reg(CmosRegister.seconds));
  const min = dec(reg(CmosRegister.minutes));
  const hour = dec(reg(CmosRegister.hours));
  const day = dec(reg(CmosRegister.day));
  const month = dec(reg(CmosRegister.month));
  const year = dec(reg(CmosRegister.century)) * 100 + dec(reg(CmosRegister.year));
  const ms = Date.UTC(year, month - 1, day, hour, min, sec);
  return Number.isFinite(ms) ? ms : 0;
}
