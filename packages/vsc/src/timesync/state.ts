/** Saved state of the guest's time-sync driver: the framework's and the last offset it corrected. */
import { decodeState, finite, nullable, versioned } from '@hvlab/protocol/state';
import { icClientStateFields, type IcClientState } from '../ic/state.js';

const MAX_OFFSET_MS = 11 * 366 * 86400 * 1000;

export interface TimeSyncState {
  version: 1;
  ic: IcClientState;
  lastOffsetMs: number | null;
}

export function decodeTimeSyncState(v: unknown): TimeSyncState | string {
  return decodeState(() => {
    const o = versioned(v, 'timesync', 1, ['ic', 'lastOffsetMs']);
    return {
      version: 1 as const,
      ic: icClientStateFields(o.ic, 'timesync.ic'),
      lastOffsetMs: nullable(o.lastOffsetMs, 'timesync.lastOffsetMs', (x, p) => finite(x, p, -MAX_OFFSET_MS, MAX_OFFSET_MS)),
    };
  });
}
