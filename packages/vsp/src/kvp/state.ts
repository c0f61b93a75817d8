/**
 * Saved state of the KVP provider: only the framework's. The pools are the guest's (the host keeps
 * no cache), so they are saved with the guest (vsc/src/kvp/state.ts).
 */
import { decodeState, versioned } from '@hvlab/protocol/state';
import { icStateFields, type IcProviderState } from '../ic/state.js';

export interface KvpState {
  version: 1;
  ic: IcProviderState;
}

export function decodeKvpState(v: unknown): KvpState | string {
  return decodeState(() => {
    const o = versioned(v, 'kvp', 1, ['ic']);
    return { version: 1 as const, ic: icStateFields(o.ic, 'kvp.ic') };
  });
}
