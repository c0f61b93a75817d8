/** Saved state of the heartbeat provider: the framework's, the last sequence and the one asked. */
import { decodeState, nullable, u64, versioned } from '@hvlab/protocol/state';
import { icStateFields, type IcProviderState } from '../ic/state.js';

export interface HeartbeatState {
  version: 1;
  ic: IcProviderState;
  /** The guest's last answered sequence number (decimal u64). */
  sequence: string;
  /** The sequence of the request in flight, if one is (decimal u64). */
  asked: string | null;
}

export function decodeHeartbeatState(v: unknown): HeartbeatState | string {
  return decodeState(() => {
    const o = versioned(v, 'heartbeat', 1, ['ic', 'sequence', 'asked']);
    return {
      version: 1 as const,
      ic: icStateFields(o.ic, 'heartbeat.ic'),
      sequence: u64(o.sequence, 'heartbeat.sequence').toString(),
      asked: nullable(o.asked, 'heartbeat.asked', (x, p) => u64(x, p).toString()),
    };
  });
}
