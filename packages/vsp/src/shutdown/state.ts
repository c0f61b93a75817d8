/** Saved state of the shutdown provider: only the framework's (a request in flight is the guest's now). */
import { decodeState, versioned } from '@hvlab/protocol/state';
import { icStateFields, type IcProviderState } from '../ic/state.js';

export interface ShutdownState {
  version: 1;
  ic: IcProviderState;
}

export function decodeShutdownState(v: unknown): ShutdownState | string {
  return decodeState(() => {
    const o = versioned(v, 'shutdown', 1, ['ic']);
    return { version: 1 as const, ic: icStateFields(o.ic, 'shutdown.ic') };
  });
}
