/** Saved state of the guest's heartbeat driver: the framework's and the last sequence it answered. */
import { decodeState, u64, versioned } from '@hvlab/protocol/state';
import { icClientStateFields, type IcClientState } from '../ic/state.js';

export interface HeartbeatState {
  version: 1;
  ic: IcClientState;
  sequence: string;
}

export function decodeHeartbeatState(v: unknown): HeartbeatState | string {
  return decodeState(() => {
    const o = versioned(v, 'heartbeat', 1, ['ic', 'sequence']);
    return { version: 1 as const, ic: icClientStateFields(o.ic, 'heartbeat.ic'), sequence: u64(o.sequence, 'heartbeat.sequence').toString() };
  });
}
