/**
 * Saved state of a component: the shared shape and the checking-decoder toolkit every component's
 * `state.ts` uses. A component's saved state is versioned plain data (numbers, strings, booleans,
 * lists and plain maps; 64-bit counters as decimal strings), kept apart from runtime types so that
 * it survives JSON, msgpack and a hand edit, as OpenVMM's and Cloud Hypervisor's saved states do.
 *
 * A VM's saved state is a tree keyed by component id ("vmbus", "device/<id>", "processor"; the
 * guest keeps its own tree in guest memory). Every decoder is strict: an unknown version, a
 * missing or unknown field, a non-finite or out-of-range number or an oversize list is rejected
 * with a sentence naming the field — never a throw out of the decoder.
 */

/** Thrown by the helpers below; `decodeState` turns it into the sentence. */
export class StateFieldError extends Error {
  override name = 'StateFieldError';
}

export function shownValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (typeof v === 'bigint') return `${v}n`;
  return Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'a map' : typeof v;
}

/** Runs a decoder built from the helpers: its value, or the sentence of the first bad field. */
export function decodeState<T>(fn: () => T): T | string {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StateFieldError) return e.message;
    throw e;
  }
}

/** A plain map with exactly `keys` (all required unless listed in `optional`). */
export function fields(v: unknown, path: string, keys: readonly string[], optional: readonly string[] = []): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new StateFieldError(`${path} is ${shownValue(v)}, not a map`);
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) throw new StateFieldError(`${path} is not a plain map`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!keys.includes(k) && !optional.includes(k)) throw new StateFieldError(`${path} has field ${shownValue(k)}, which is unknown`);
  for (const k of keys) if (o[k] === undefined) throw new StateFieldError(`${path}.${k} is missing`);
  return o;
}

/** A versioned plain map: `version` must equal `version`, then exactly `keys`. */
export function versioned(v: unknown, path: string, version: number, keys: readonly string[]): Record<string, unknown> {
  const o = fields(v, path, ['version', ...keys]);
  if (o.version !== version) throw new StateFieldError(`${path}.version is ${shownValue(o.version)}; this host reads version ${version}`);
  return o;
}

export function uint(v: unknown, path: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw new StateFieldError(`${path} is ${shownValue(v)}, not a whole number from 0 to ${max}`);
  return v;
}

export function finite(v: unknown, path: string, min = -Number.MAX_VALUE, max = Number.MAX_VALUE): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new StateFieldError(`${path} is ${shownValue(v)}, not a finite number from ${min} to ${max}`);
  return v;
}

export function bool(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') throw new StateFieldError(`${path} is ${shownValue(v)}, not true or false`);
  return v;
}

export function text(v: unknown, path: string, maxBytes: number): string {
  if (typeof v !== 'string' || Buffer.byteLength(v, 'utf8') > maxBytes) throw new StateFieldError(`${path} is ${shownValue(v)}, not a string of at most ${maxBytes} bytes`);
  return v;
}

/** A 64-bit unsigned counter saved as a decimal string. */
export function u64(v: unknown, path: string): bigint {
  if (typeof v !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(v) || BigInt(v) >= 1n << 64n) throw new StateFieldError(`${path} is ${shownValue(v)}, not a decimal 64-bit counter`);
  return BigInt(v);
}

export function list<T>(v: unknown, path: string, max: number, item: (x: unknown, path: string) => T): T[] {
  if (!Array.isArray(v)) throw new StateFieldError(`${path} is ${shownValue(v)}, not a list`);
  if (v.length > max) throw new StateFieldError(`${path} has ${v.length} entries, more than ${max}`);
  return v.map((x, i) => item(x, `${path}[${i}]`));
}

export function nullable<T>(v: unknown, path: string, item: (x: unknown, path: string) => T): T | null {
  return v === null ? null : item(v, path);
}

/** An IC/VMBus style version pair {major, minor} of u16s. */
export function versionPair(v: unknown, path: string): { major: number; minor: number } {
  const o = fields(v, path, ['major', 'minor']);
  return { major: uint(o.major, `${path}.major`, 0xffff), minor: uint(o.minor, `${path}.minor`, 0xffff) };
}
