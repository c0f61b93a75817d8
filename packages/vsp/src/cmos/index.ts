/**
 * The emulated CMOS real-time clock (MC146818) at ports 0x70 (index, write) and 0x71 (data), in
 * the VMWP as Hyper-V keeps its legacy devices there. It answers time registers from host time
 * plus the VM's RTC offset, in BCD with a 24-hour clock (status B 0x02), and keeps the rest of
 * its 128 bytes as NVRAM. Its saved state is the index register, the NVRAM and the offset.
 */
export const CMOS_INDEX_PORT = 0x70;
export const CMOS_DATA_PORT = 0x71;

export interface CmosState {
  version: 1;
  index: number;
  nvram: number[];
  offsetMs: number;
}

const STATUS_A = 0x0a;
const STATUS_B = 0x0b;
const STATUS_D = 0x0d;
const CENTURY = 0x32;

function bcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | v % 10;
}

export class CmosRtc {
  private index = 0;
  private readonly nvram = new Uint8Array(128);

  constructor(private offsetMs: number, private readonly now: () => number = Date.now) {
    this.nvram[STATUS_A] = 0x26;
    this.nvram[STATUS_B] = 0x02;
    this.nvram[STATUS_D] = 0x80; // valid RAM and time
  }

  /** Handles one intercepted access; returns the value read (writes return 0). */
  access(port: number, write: boolean, value: number): number {
    if (port === CMOS_INDEX_PORT) {
      if (write) this.index = value & 0x7f; // bit 7 is the NMI mask
      return write ? 0 : 0xff;
    }
    if (port !== CMOS_DATA_PORT) return 0xff;
    if (write) {
      if (this.index >= 0x0e || this.index === STATUS_B) this.nvram[this.index] = value & 0xff;
      return 0;
    }
    return this.read(this.index);
  }

  private read(reg: number): number {
    const binary = (this.nvram[STATUS_B] & 0x04) !== 0;
    const enc = (v: number): number => (binary ? v : bcd(v));
    const d = new Date(this.now() + this.offsetMs);
    switch (reg) {
      case 0x00: return enc(d.getUTCSeconds());
      case 0x02: return enc(d.getUTCMinutes());
      case 0x04: return enc(d.getUTCHours());
      case 0x06: return enc(d.getUTCDay() + 1);
      case 0x07: return enc(d.getUTCDate());
      case 0x08: return enc(d.getUTCMonth() + 1);
      case 0x09: return enc(d.getUTCFullYear() % 100);
      case CENTURY: return enc(Math.floor(d.getUTCFullYear() / 100));
      default: return this.nvram[reg & 0x7f];
    }
  }

  save(): CmosState {
    return { version: 1, index: this.index, nvram: [...this.nvram], offsetMs: this.offsetMs };
  }

  restore(s: CmosState): void {
    if (s?.version !== 1 || !Array.isArray(s.nvram) || s.nvram.length !== 128) throw new Error('CMOS saved state is not version 1 with 128 bytes of NVRAM');
    this.index = s.index & 0x7f;
    this.nvram.set(s.nvram.map((v) => v & 0xff));
    this.offsetMs = Number(s.offsetMs) || 0;
  }
}
