/** Saved state of the guest's KVP driver: the framework's and both pools the guest holds. */
import { KVP_MAX_KEY_BYTES, KVP_MAX_VALUE_BYTES } from '@hvlab/protocol/kvp';
import { decodeState, fields, list, StateFieldError, text, versioned } from '@hvlab/protocol/state';
import { icClientStateFields, type IcClientState } from '../ic/state.js';

/** Most entries a pool may hold (the guest refuses sets past it). */
export const KVP_MAX_POOL_ENTRIES = 4096;

export interface KvpPoolEntry {
  key: string;
  value: string;
}

export interface KvpState {
  version: 1;
  ic: IcClientState;
  external: KvpPoolEntry[];
  guest: KvpPoolEntry[];
}

function pool(v: unknown, path: string): KvpPoolEntry[] {
  const seen = new Set<string>();
  return list(v, path, KVP_MAX_POOL_ENTRIES, (x, p) => {
    const e = fields(x, p, ['key', 'value']);
    const key = text(e.key, `${p}.key`, KVP_MAX_KEY_BYTES);
    if (key.length === 0 || seen.has(key)) throw new StateFieldError(`${p}.key is ${key.length === 0 ? "empty" : `"${key.slice(0, 40)}", which is repeated`}`);
    seen.add(key);
    return { key, value: text(e.value, `${p}.value`, KVP_MAX_VALUE_BYTES) };
  });
}

export function decodeKvpState(v: unknown): KvpState | string {
  return decodeState(() => {
    const o = versioned(v, 'kvp', 1, ['ic', 'external', 'guest']);
    return { version: 1 as const, ic: icClientStateFields(o.ic, 'kvp.ic'), external: pool(o.external, 'kvp.external'), guest: pool(o.guest, 'kvp.guest') };
  });
}
