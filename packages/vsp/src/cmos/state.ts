/** Saved state of the CMOS clock: the index register, the 128 bytes of NVRAM and the clock's offset. */
import { CMOS_BYTES } from '@hvlab/protocol/cmos';
import { decodeState, finite, list, uint, versioned } from '@hvlab/protocol/state';

/** The RTC offset is within ±10 years (the config's limit), kept in ms. */
export const CMOS_MAX_OFFSET_MS = 10 * 366 * 86400 * 1000;

export interface CmosState {
  version: 1;
  index: number;
  nvram: number[];
  offsetMs: number;
}

export function decodeCmosState(v: unknown): CmosState | string {
  return decodeState(() => {
    const o = versioned(v, 'cmos', 1, ['index', 'nvram', 'offsetMs']);
    const nvram = list(o.nvram, 'cmos.nvram', CMOS_BYTES, (x, p) => uint(x, p, 0xff));
    if (nvram.length !== CMOS_BYTES) return `cmos.nvram has ${nvram.length} bytes, not ${CMOS_BYTES}`;
    return { version: 1 as const, index: uint(o.index, 'cmos.index', 0x7f), nvram, offsetMs: finite(o.offsetMs, 'cmos.offsetMs', -CMOS_MAX_OFFSET_MS, CMOS_MAX_OFFSET_MS) };
  });
}
