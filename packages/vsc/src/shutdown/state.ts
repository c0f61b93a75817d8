/** Saved state of the guest's shutdown driver: the framework's. */
import { decodeState, versioned } from '@hvlab/protocol/state';
import { icClientStateFields, type IcClientState } from '../ic/state.js';

export interface ShutdownState {
  version: 1;
  ic: IcClientState;
}

export function decodeShutdownState(v: unknown): ShutdownState | string {
  return decodeState(() => {
    const o = versioned(v, 'shutdown', 1, ['ic']);
    return { version: 1 as const, ic: icClientStateFields(o.ic, 'shutdown.ic') };
  });
}
