/**
 * Byte helpers shared by the integration-service codecs (ic.ts and one file per service). Internal to
 * @hvlab/protocol: not exported from its index.
 */
import { IcError } from './ic.js';

export function viewOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
export function checkUint(what: string, value: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} ${String(value)} is not an integer in 0..${max}.`);
  }
  return value;
}
export function checkU64(what: string, value: bigint): bigint {
  if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
    throw new RangeError(`${what} ${String(value)} is not a bigint in 0..2^64-1.`);
  }
  return value;
}
export function checkInt8(what: string, value: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < -128 || value > 127) {
    throw new RangeError(`${what} ${String(value)} is not an integer in -128..127.`);
  }
  return value;
}
export function requireBytes(what: string, b: Uint8Array, size: number): DataView {
  if (!(b instanceof Uint8Array)) throw new IcError(`${what} must be a Uint8Array, not ${typeof b}.`);
  if (b.length < size) throw new IcError(`${what} is ${b.length} bytes, shorter than its ${size}-byte layout.`);
  return viewOf(b);
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** UTF-8 bytes of `text`; RangeError when it has a lone surrogate (UTF-8 cannot carry it). */
export function encodeText(what: string, text: string, max: number): Uint8Array {
  if (typeof text !== 'string') throw new TypeError(`${what} is not a string.`);
  if (LONE_SURROGATE.test(text)) throw new RangeError(`${what} ${JSON.stringify(text)} has a lone surrogate, which UTF-8 cannot carry.`);
  const bytes = utf8.encode(text);
  if (bytes.length > max) throw new RangeError(`${what} is ${bytes.length} bytes in UTF-8, more than ${max}.`);
  return bytes;
}
export function decodeText(what: string, bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new IcError(`${what} (${bytes.length} bytes) is not valid UTF-8.`);
  }
}
