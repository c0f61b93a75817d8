/** Saved state of the time-sync provider: the framework's and the offsets it has measured. */
import { decodeState, finite, nullable, uint, versioned } from '@hvlab/protocol/state';
import { icStateFields, type IcProviderState } from '../ic/state.js';

/** Offsets are within ±10 years (the RTC offset's limit) plus drift, in ms. */
const MAX_OFFSET_MS = 11 * 366 * 86400 * 1000;

export interface TimeSyncState {
  version: 1;
  ic: IcProviderState;
  offsetMs: number | null;
  initialOffsetMs: number | null;
  samples: number;
}

export function decodeTimeSyncState(v: unknown): TimeSyncState | string {
  return decodeState(() => {
    const o = versioned(v, 'timesync', 1, ['ic', 'offsetMs', 'initialOffsetMs', 'samples']);
    const ms = (x: unknown, p: string): number => finite(x, p, -MAX_OFFSET_MS, MAX_OFFSET_MS);
    return {
      version: 1 as const,
      ic: icStateFields(o.ic, 'timesync.ic'),
      offsetMs: nullable(o.offsetMs, 'timesync.offsetMs', ms),
      initialOffsetMs: nullable(o.initialOffsetMs, 'timesync.initialOffsetMs', ms),
      samples: uint(o.samples, 'timesync.samples'),
    };
  });
}
