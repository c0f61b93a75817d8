/**
 * The emulated CMOS real-time clock (MC146818), a legacy device with a port-I/O capability: the
 * VMWP intercepts ports 0x70 (index, write) and 0x71 (data) and hands every access here, as Hyper-V
 * keeps its legacy devices in the worker process. Time registers answer host time plus the VM's
 * RTC offset, in BCD with a 24-hour clock (status B 0x02) unless the guest sets binary mode; the
 * rest of the 128 bytes is NVRAM.
 */
import { CMOS_BYTES, CMOS_DATA_PORT, CMOS_INDEX_PORT, CMOS_STATUS_B_BINARY, CmosRegister, toBcd } from '@hvlab/protocol/cmos';
import type { DeviceContext, PortIoHandler, VirtualDevice } from '../device.js';
import { decodeCmosState, type CmosState } from './state.js';

export { CMOS_DATA_PORT, CMOS_INDEX_PORT };
export type { CmosState };

export class CmosRtc implements PortIoHandler {
  private index = 0;
  private readonly nvram = new Uint8Array(CMOS_BYTES);

  constructor(private offsetMs: number, private readonly now: () => number = Date.now) {
    this.nvram[CmosRegister.statusA] = 0x26;
    this.nvram[CmosRegister.statusB] = 0x02;
    this.nvram[CmosRegister.statusD] = 0x80; // valid RAM and time
  }

  /** Handles one intercepted access; returns the value read (writes return 0). */
  access(port: number, write: boolean, value: number): number {
    if (port === CMOS_INDEX_PORT) {
      if (write) this.index = value & 0x7f; // bit 7 is the NMI mask
      return write ? 0 : 0xff;
    }
    if (port !== CMOS_DATA_PORT) return 0xff;
    if (write) {
      if (this.index >= 0x0e || this.index === CmosRegister.statusB) this.nvram[this.index] = value & 0xff;
      return 0;
    }
    return this.read(this.index);
  }

  private read(reg: number): number {
    const binary = (this.nvram[CmosRegister.statusB] & CMOS_STATUS_B_BINARY) !== 0;
    const enc = (v: number): number => (binary ? v : toBcd(v));
    const d = new Date(this.now() + this.offsetMs);
    switch (reg) {
      case CmosRegister.seconds: return enc(d.getUTCSeconds());
      case CmosRegister.minutes: return enc(d.getUTCMinutes());
      case CmosRegister.hours: return enc(d.getUTCHours());
      case CmosRegister.weekday: return enc(d.getUTCDay() + 1);
      case CmosRegister.day: return enc(d.getUTCDate());
      case CmosRegister.month: return enc(d.getUTCMonth() + 1);
      case CmosRegister.year: return enc(d.getUTCFullYear() % 100);
      case CmosRegister.century: return enc(Math.floor(d.getUTCFullYear() / 100));
      default: return this.nvram[reg & 0x7f];
    }
  }

  save(): CmosState {
    return { version: 1, index: this.index, nvram: [...this.nvram], offsetMs: this.offsetMs };
  }

  /** Takes a state `decodeCmosState` accepted. */
  restore(s: CmosState): void {
    this.index = s.index & 0x7f;
    this.nvram.set(s.nvram.map((v) => v & 0xff));
    this.offsetMs = s.offsetMs;
  }
}

export function createDevice(ctx: DeviceContext): VirtualDevice<CmosState> {
  const rtc = new CmosRtc(ctx.rtcOffsetS * 1000);
  let accesses = 0;
  return {
    class: 'cmos',
    id: ctx.entry.id,
    portIo: {
      access: (port, write, value) => {
        accesses++;
        return rtc.access(port, write, value);
      },
    },
    status: () => ({ accesses }),
    save: () => rtc.save(),
    decode: decodeCmosState,
    restore: (s) => rtc.restore(s),
    close: () => undefined,
  };
}
