/**
 * KVP exchange integration service, in hvlab's own layout modelled on Linux's hv_kvp_msg (see
 * ic.ts for the deviation): get, set, delete and enumerate on the external, guest and auto pools.
 */
import { IcError, type ByteRanges } from './ic.js';
import { viewOf, checkUint, requireBytes, encodeText, decodeText } from './ic-bytes.js';

export const KvpOperation = { Get: 0, Set: 1, Delete: 2, Enumerate: 3 } as const;
export const KvpPool = { External: 0, Guest: 1, Auto: 2, AutoExternal: 3, AutoInternal: 4 } as const;
export const KVP_MAX_KEY_BYTES = 512;
export const KVP_MAX_VALUE_BYTES = 2048;
export const KVP_MESSAGE_BYTES = 2580;
/** REG_SZ: the only value type hvlab carries. */
export const KVP_VALUE_TYPE_STRING = 1;
const KvpAt = {
  operation: 0, pool: 1, pad: 2, index: 4, valueType: 8, keySize: 12, valueSize: 16, key: 20, value: 20 + KVP_MAX_KEY_BYTES,
  size: KVP_MESSAGE_BYTES,
} as const;
export interface KvpMessage { operation: number; pool: number; index: number; key: string; value: string }

export function encodeKvp(m: KvpMessage): Uint8Array {
  checkUint('KVP operation', m.operation, KvpOperation.Enumerate);
  checkUint('KVP pool', m.pool, KvpPool.AutoInternal);
  checkUint('KVP index', m.index, 0xffffffff);
  const key = encodeText('KVP key', m.key, KVP_MAX_KEY_BYTES);
  const value = encodeText('KVP value', m.value, KVP_MAX_VALUE_BYTES);
  const out = new Uint8Array(KvpAt.size);
  const v = viewOf(out);
  v.setUint8(KvpAt.operation, m.operation);
  v.setUint8(KvpAt.pool, m.pool);
  v.setUint32(KvpAt.index, m.index, true);
  v.setUint32(KvpAt.valueType, KVP_VALUE_TYPE_STRING, true);
  v.setUint32(KvpAt.keySize, key.length, true);
  v.setUint32(KvpAt.valueSize, value.length, true);
  out.set(key, KvpAt.key);
  out.set(value, KvpAt.value);
  return out;
}
export function decodeKvp(b: Uint8Array): KvpMessage {
  const v = requireBytes('KVP body', b, KvpAt.size);
  const operation = v.getUint8(KvpAt.operation);
  if (operation > KvpOperation.Enumerate) throw new IcError(`KVP operation ${operation} is unknown.`);
  const pool = v.getUint8(KvpAt.pool);
  if (pool > KvpPool.AutoInternal) throw new IcError(`KVP pool ${pool} is unknown.`);
  const valueType = v.getUint32(KvpAt.valueType, true);
  if (valueType !== KVP_VALUE_TYPE_STRING) throw new IcError(`KVP value_type ${valueType} is not REG_SZ (1).`);
  const keySize = v.getUint32(KvpAt.keySize, true);
  if (keySize > KVP_MAX_KEY_BYTES) throw new IcError(`KVP key_size ${keySize} is more than ${KVP_MAX_KEY_BYTES}.`);
  const valueSize = v.getUint32(KvpAt.valueSize, true);
  if (valueSize > KVP_MAX_VALUE_BYTES) throw new IcError(`KVP value_size ${valueSize} is more than ${KVP_MAX_VALUE_BYTES}.`);
  return {
    operation,
    pool,
    index: v.getUint32(KvpAt.index, true),
    key: decodeText('KVP key', b.subarray(KvpAt.key, KvpAt.key + keySize)),
    value: decodeText('KVP value', b.subarray(KvpAt.value, KvpAt.value + valueSize)),
  };
}

/**
 * The bytes of a KVP body that decodeKvp reads: the fields but the pad, and the key and value as
 * far as their sizes say (clamped to the fields). Never throws: a short body is all of it.
 */
export function kvpDecodedRanges(b: Uint8Array): ByteRanges {
  if (b.length < KvpAt.size) return [[0, b.length]];
  const v = viewOf(b);
  const keySize = Math.min(v.getUint32(KvpAt.keySize, true), KVP_MAX_KEY_BYTES);
  const valueSize = Math.min(v.getUint32(KvpAt.valueSize, true), KVP_MAX_VALUE_BYTES);
  return [[KvpAt.operation, KvpAt.pad], [KvpAt.index, KvpAt.key], [KvpAt.key, KvpAt.key + keySize], [KvpAt.value, KvpAt.value + valueSize]];
}
