/**
 * V8's code cache for hvlab's process bundles: bytecode compiled once, when the bundles are built,
 * instead of in every process that starts.
 *
 * Why: a cold VM start spent ~400 ms of its CPU compiling JavaScript (V8's trace events, one start
 * with `--spare 0`: 181 ms in the VMWP, 158 ms in the partition process, 63 ms in its VP thread),
 * most of it functions compiled on their first call. Node 20 keeps a code cache for its own
 * modules only (`module.enableCompileCache` came in Node 22), and V8 takes a cache for a classic
 * script (`vm.Script`), not for an ES module without `--experimental-vm-modules`. So the bundles
 * that start per VM are CommonJS files (`vmwp.bundle.cjs`, `partition.bundle.cjs`, `vp.bundle.cjs`:
 * scripts/bundle.mjs), each run by a small CommonJS launcher (`vmwp.cjs`, ...) through
 * `runCachedBundle`, with the cache beside it (`*.bundle.cjs.cache`).
 *
 * The cache is made eagerly: `makeCodeCache` compiles with V8's `--no-lazy`, so every function of
 * the bundle has bytecode, then turns lazy compilation back on before it serializes. V8 stamps a
 * cache with the hash of the flags in force when it is *serialized* and refuses one whose hash
 * differs, so a process with Node's default flags takes the eager cache as it is, with no flag
 * switched in the process (V8's flags are process-wide: a worker thread switching them would race
 * its process's main thread).
 *
 * V8 checks its own version, the flags and the source's length, not the source's content, and
 * Node 20's V8 does not checksum the payload outside debug builds: a stale cache of a same-length
 * source would run old bytecode, and a damaged one can crash the process. So each cache file has
 * a header of its own, checked before V8 sees a byte (`decodeCodeCache`): a magic, a format
 * version, the SHA-256 of the exact source it was made from, and the payload's length and CRC-32.
 * Anything that does not check out is not used; the bundle then compiles from source, as without
 * a cache, and the process says why (`codeCacheStatus`). The cache sits beside the bundle and is
 * written by the same build: whoever can change it can change the bundle.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAscii } from 'node:buffer';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';
import { crc32 } from 'node:zlib';
import { setCodeCacheStatus, type CodeCacheStatus } from './code-cache-status.js';
import { writeFileAtomic } from './files.js';

/** "HVLABCC" and a NUL: the first bytes of a cache file. */
export const CODE_CACHE_MAGIC = Buffer.from('HVLABCC\0', 'latin1');
export const CODE_CACHE_FORMAT = 1;
/** magic (8) · format u32 · payload length u32 · payload CRC-32 u32 · reserved u32 (0) · source SHA-256 (32), then the payload. */
export const CODE_CACHE_HEADER_BYTES = 56;
/** A bundle's cache is a few MiB at most; a larger length field is damage, not a cache. */
export const CODE_CACHE_MAX_PAYLOAD = 64 * 1024 * 1024;

export { codeCacheStatus, type CodeCacheStatus } from './code-cache-status.js';

/** The cache file of a bundle. */
export function codeCachePath(bundlePath: string): string {
  return `${bundlePath}.cache`;
}

/** SHA-256 of a bundle's bytes, as the header names it. */
export function sourceDigest(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}

/**
 * A bundle's bytes and its source. scripts/bundle.mjs writes the cached bundles in ASCII (esbuild
 * escapes what is not, outside comments, and the bundler escapes the comments'), so V8 keeps the
 * source as a one-byte string: half the heap of a two-byte one, and decoded in a few milliseconds
 * less. A bundle that is not ASCII is read as UTF-8, as Node reads a module.
 */
function readBundle(path: string): { bytes: Buffer; source: string } {
  const bytes = readFileSync(path);
  return { bytes, source: isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8') };
}

/** A cache file: the header, then V8's payload. */
export function encodeCodeCache(digest: Uint8Array, payload: Uint8Array): Buffer {
  if (digest.length !== 32) throw new RangeError('the source digest must be 32 bytes (SHA-256)');
  if (payload.length > CODE_CACHE_MAX_PAYLOAD) throw new RangeError(`a code cache of ${payload.length} bytes is over the ${CODE_CACHE_MAX_PAYLOAD}-byte bound`);
  const out = Buffer.alloc(CODE_CACHE_HEADER_BYTES + payload.length);
  CODE_CACHE_MAGIC.copy(out, 0);
  out.writeUInt32LE(CODE_CACHE_FORMAT, 8);
  out.writeUInt32LE(payload.length, 12);
  out.writeUInt32LE(crc32(payload), 16);
  out.writeUInt32LE(0, 20);
  out.set(digest, 24);
  out.set(payload, CODE_CACHE_HEADER_BYTES);
  return out;
}

export type DecodedCodeCache = { ok: true; payload: Buffer } | { ok: false; status: 'stale' | 'corrupt'; reason: string };

/**
 * Checks a cache file against the source it is meant for; never throws. Only a payload whose
 * header, length, CRC-32 and source digest all check out is handed to V8.
 */
export function decodeCodeCache(bytes: Uint8Array, digest: Uint8Array): DecodedCodeCache {
  const corrupt = (reason: string): DecodedCodeCache => ({ ok: false, status: 'corrupt', reason });
  if (!(bytes instanceof Uint8Array)) return corrupt('not bytes');
  if (bytes.length < CODE_CACHE_HEADER_BYTES) return corrupt(`${bytes.length} bytes, shorter than the ${CODE_CACHE_HEADER_BYTES}-byte header`);
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!b.subarray(0, 8).equals(CODE_CACHE_MAGIC)) return corrupt('not an hvlab code cache (magic)');
  const format = b.readUInt32LE(8);
  if (format !== CODE_CACHE_FORMAT) return corrupt(`format ${format}, not ${CODE_CACHE_FORMAT}`);
  const length = b.readUInt32LE(12);
  if (length > CODE_CACHE_MAX_PAYLOAD) return corrupt(`payload length ${length} over the bound`);
  if (b.length !== CODE_CACHE_HEADER_BYTES + length) return corrupt(`${b.length - CODE_CACHE_HEADER_BYTES} payload bytes where the header says ${length}`);
  if (b.readUInt32LE(20) !== 0) return corrupt('reserved field not zero');
  const payload = b.subarray(CODE_CACHE_HEADER_BYTES);
  if (crc32(payload) !== b.readUInt32LE(16)) return corrupt('payload CRC-32 mismatch');
  if (!(digest instanceof Uint8Array) || digest.length !== 32 || !b.subarray(24, 56).equals(digest)) return { ok: false, status: 'stale', reason: 'made from another source' };
  return { ok: true, payload };
}

/**
 * The parameters a bundle's code is wrapped in: CommonJS's five, and what esbuild puts where the
 * sources say `import.meta.url` (scripts/bundle.mjs defines it so).
 */
export const BUNDLE_IMPORT_META_URL = '__hvlabImportMetaUrl';
const WRAPPER_HEAD = `(function (exports, require, module, __filename, __dirname, ${BUNDLE_IMPORT_META_URL}) {`;
const WRAPPER_TAIL = '\n})';

/** The script V8 compiles for a bundle: its source in the wrapper, on the bundle's first line (its line numbers stay as they are in stack traces). */
export function wrapBundle(source: string): string {
  return WRAPPER_HEAD + source + WRAPPER_TAIL;
}

function compile(path: string, source: string, cachedData?: Buffer): Script {
  return new Script(wrapBundle(source), { filename: path, ...(cachedData ? { cachedData } : {}) });
}

/**
 * Compiles a bundle with its functions to bytecode and writes its cache beside it (whole or not at
 * all: writeFileAtomic). Called by scripts/bundle.mjs, in a fresh Node
 * process with the flags the bundle's processes run with. Returns the cache file's size.
 *
 * V8's `--no-lazy` compiles the functions its parse reaches. (It left a wrapper of nothing but
 * function declarations uncompiled in a test, which an esbuild bundle never is: a VMWP that ran a
 * VM start from its cache had compiled nothing more when asked for its cache again, 876,224 bytes
 * both times.)
 */
export function makeCodeCache(bundlePath: string): number {
  const { bytes, source } = readBundle(bundlePath);
  setFlagsFromString('--no-lazy');
  let script: Script;
  try {
    script = compile(bundlePath, source);
  } finally {
    // Serialized under the default flags, so a process with the default flags takes it (above).
    setFlagsFromString('--lazy');
  }
  const file = encodeCodeCache(sourceDigest(bytes), script.createCachedData());
  // A build product beside the bundle, readable as the bundle is; a torn file fails its CRC-32.
  writeFileAtomic(codeCachePath(bundlePath), file, { mode: 0o644, durable: false });
  return file.length;
}

/** A cache file's payload when it checks out against the source's digest, else why not. */
function readCodeCache(file: string, digest: Buffer): { status: CodeCacheStatus; payload?: Buffer } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    return { status: (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'absent' : 'unreadable' };
  }
  const d = decodeCodeCache(bytes, digest);
  return d.ok ? { status: 'accepted', payload: d.payload } : { status: d.status };
}

/**
 * Runs a CommonJS bundle from its code cache (or from source when there is none that checks out)
 * and records what became of the cache (code-cache-status.ts). `launcherUrl` is what the bundle's
 * code sees as `import.meta.url`: the launcher sits beside the bundle. Returns the status and what
 * the bundle exports (`module.exports`).
 */
export function runCachedBundle(bundleUrl: URL, launcherUrl: string): { status: CodeCacheStatus; exports: Record<string, unknown> } {
  const path = fileURLToPath(bundleUrl);
  const { bytes: sourceBytes, source } = readBundle(path);
  const { status: found, payload } = readCodeCache(codeCachePath(path), sourceDigest(sourceBytes));
  const script = compile(path, source, payload);
  const status: CodeCacheStatus = payload ? (script.cachedDataRejected === true ? 'rejected' : 'accepted') : found;
  setCodeCacheStatus(status);
  const module = { exports: {} as Record<string, unknown>, id: path, filename: path, loaded: false };
  const fn = script.runInThisContext() as (...a: unknown[]) => void;
  fn.call(module.exports, module.exports, createRequire(path), module, path, dirname(path), launcherUrl);
  module.loaded = true;
  return { status, exports: module.exports };
}
