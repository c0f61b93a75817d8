/**
 * A VM's saved state on disk: HVLAB_HOME/vms/<name>.saved/ holds `state.json` (the versioned tree)
 * and `memory.bin` (guest physical memory, byte for byte). The tree is plain data kept apart from
 * runtime types, as OpenVMM and Cloud Hypervisor do: the VM's identity, the partition (reference
 * time, and per VP its registers, APIC, SynIC and synthetic timers), and each device by id
 * (the CMOS clock; VMBus, whose channels the guest re-opens on resume as Linux does after
 * hibernation; the KVP exchange's external pool). Written to a temporary directory and renamed,
 * so a crash never leaves half a saved state.
 *
 * `state.json` is read back as untrusted input (a user can edit it): `decodeSavedVm` checks the
 * whole tree — versions, types, finite numbers, sizes — and names the file and the field it
 * rejects; the memory file must have the configured size and the recorded sha256.
 *
 * A saved state is used once. Before a VM resumes from it VMMS marks it consumed (an empty
 * `consumed` file, which needs no data blocks even on a full disk); a consumed saved state is no
 * longer a Saved VM's, so a VM turned off mid-restore, or a root restarted in between, can never
 * resume that old snapshot again (Hyper-V deletes the .vsv once the VM runs from it).
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeSavedVpState, KVP_MAX_KEY_BYTES, KVP_MAX_VALUE_BYTES, type SavedVpState } from '@hvlab/protocol';
import type { CmosState } from './vmwp/cmos.js';
import { shown } from './config.js';

export const SAVED_STATE_VERSION = 1;
/** Most KVP external-pool entries a saved state may carry (the pool a host sets is small). */
export const SAVED_KVP_MAX_ENTRIES = 4096;
const IC_CHANNELS = ['heartbeat', 'shutdown', 'timesync', 'kvp'];
const CONSUMED = 'consumed';

export interface SavedVm {
  version: number;
  savedAt: string;
  vm: { name: string; id: string; memoryBytes: number; vps: number; workload: string };
  memory: { file: 'memory.bin'; bytes: number; sha256: string };
  partition: { referenceTime: number; vps: SavedVpState[] };
  devices: {
    cmos: CmosState;
    vmbus: { version: 1; channels: string[] };
    kvp: { version: 1; external: Array<{ key: string; value: string }> };
  };
}

export class SavedStateError extends Error {
  override name = 'SavedStateError';
}

export function savedDir(vmDir: string, name: string): string {
  return join(vmDir, `${name}.saved`);
}

/** Whether the VM has a saved state to resume from (one that is there and not consumed). */
export function hasSavedState(vmDir: string, name: string): boolean {
  const dir = savedDir(vmDir, name);
  return existsSync(join(dir, 'state.json')) && !existsSync(join(dir, CONSUMED));
}

/** Whether a saved state is there but was handed to a VM that resumed (or began to) from it. */
export function isSavedStateConsumed(vmDir: string, name: string): boolean {
  return existsSync(join(savedDir(vmDir, name), CONSUMED));
}

function syncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch { /* the marker is in place; its durability is best effort */ } finally {
    if (fd !== null) closeSync(fd);
  }
}

/**
 * Marks the saved state consumed, durably, before the VM resumes from it. Throws when the marker
 * cannot be written: resuming without it could later resurrect the snapshot.
 */
export function markSavedStateConsumed(vmDir: string, name: string): void {
  const dir = savedDir(vmDir, name);
  try {
    closeSync(openSync(join(dir, CONSUMED), 'w'));
  } catch (e) {
    throw new SavedStateError(`could not mark the saved state of VM "${name}" in ${dir} as used: ${(e as Error).message}`);
  }
  syncDir(dir);
}

/** A resume that failed before the guest ran: the saved state is the VM's again. */
export function unmarkSavedStateConsumed(vmDir: string, name: string): void {
  const dir = savedDir(vmDir, name);
  rmSync(join(dir, CONSUMED), { force: true });
  syncDir(dir);
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Writes a saved state atomically (temporary directory, then rename). */
export function writeSavedState(vmDir: string, name: string, state: SavedVm, memory: Uint8Array): void {
  const dir = savedDir(vmDir, name);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    writeFileSync(join(tmp, 'memory.bin'), memory);
    writeFileSync(join(tmp, 'state.json'), JSON.stringify(state, null, 1) + '\n');
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

// ---- the checking decoder ----------------------------------------------------------------------

class FieldError extends Error {}


function map(v: unknown, path: string, keys: readonly string[]): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new FieldError(`${path} is ${shown(v)}, not a map`);
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) throw new FieldError(`${path} is not a plain map`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new FieldError(`${path} has field "${k.slice(0, 40)}", which is unknown`);
  for (const k of keys) if (o[k] === undefined) throw new FieldError(`${path}.${k} is missing`);
  return o;
}

function int(o: Record<string, unknown>, k: string, path: string, min: number, max: number): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new FieldError(`${path}.${k} is ${shown(v)}, not a whole number from ${min} to ${max}`);
  return v;
}

function str(o: Record<string, unknown>, k: string, path: string, maxBytes: number): string {
  const v = o[k];
  if (typeof v !== 'string' || Buffer.byteLength(v, 'utf8') > maxBytes) throw new FieldError(`${path}.${k} is ${shown(v)}, not a string of at most ${maxBytes} bytes`);
  return v;
}

function version1(o: Record<string, unknown>, path: string): 1 {
  if (o.version !== 1) throw new FieldError(`${path}.version is ${shown(o.version)}; this host reads version 1`);
  return 1;
}

/**
 * Checks a parsed `state.json` against the VM it should belong to and returns a fresh copy, or
 * the field that is wrong as a sentence ("partition.vps[1]: saved VP state: timers[0].count …").
 */
export function decodeSavedVm(v: unknown, expect: { name: string; memoryBytes: number; vps: number; id?: string }): SavedVm | string {
  try {
    const top = map(v, 'the tree', ['version', 'savedAt', 'vm', 'memory', 'partition', 'devices']);
    if (top.version !== SAVED_STATE_VERSION) throw new FieldError(`version is ${shown(top.version)}; this host reads version ${SAVED_STATE_VERSION}`);
    const savedAt = str(top, 'savedAt', 'the tree', 64);
    if (!Number.isFinite(Date.parse(savedAt))) throw new FieldError(`savedAt is ${shown(savedAt)}, not a date`);

    const vm = map(top.vm, 'vm', ['name', 'id', 'memoryBytes', 'vps', 'workload']);
    const name = str(vm, 'name', 'vm', 64);
    if (name !== expect.name) throw new FieldError(`vm.name is ${shown(name)}, not "${expect.name}"`);
    const id = str(vm, 'id', 'vm', 64);
    if (expect.id !== undefined && id !== expect.id) throw new FieldError(`vm.id is ${shown(id)}, not this VM's id ${expect.id}`);
    const memoryBytes = int(vm, 'memoryBytes', 'vm', 0, Number.MAX_SAFE_INTEGER);
    const vpCount = int(vm, 'vps', 'vm', 1, 1024);
    if (memoryBytes !== expect.memoryBytes || vpCount !== expect.vps) {
      throw new FieldError(`vm has ${memoryBytes} bytes and ${vpCount} VPs, but the VM is configured with ${expect.memoryBytes} bytes and ${expect.vps} VPs (memory or VP count changed)`);
    }
    const workload = str(vm, 'workload', 'vm', 64);

    const mem = map(top.memory, 'memory', ['file', 'bytes', 'sha256']);
    if (mem.file !== 'memory.bin') throw new FieldError(`memory.file is ${shown(mem.file)}, not "memory.bin"`);
    const bytes = int(mem, 'bytes', 'memory', 0, Number.MAX_SAFE_INTEGER);
    if (bytes !== expect.memoryBytes) throw new FieldError(`memory.bytes is ${bytes}, not the VM's ${expect.memoryBytes}`);
    const digest = str(mem, 'sha256', 'memory', 64);
    if (!/^[0-9a-f]{64}$/.test(digest)) throw new FieldError(`memory.sha256 is ${shown(digest)}, not 64 hex digits`);

    const part = map(top.partition, 'partition', ['referenceTime', 'vps']);
    const referenceTime = int(part, 'referenceTime', 'partition', 0, Number.MAX_SAFE_INTEGER);
    if (!Array.isArray(part.vps) || part.vps.length !== expect.vps) throw new FieldError(`partition.vps is ${Array.isArray(part.vps) ? `a list of ${part.vps.length}` : shown(part.vps)}, not a list of ${expect.vps} VP states`);
    const vps: SavedVpState[] = [];
    for (let i = 0; i < part.vps.length; i++) {
      const d = decodeSavedVpState(part.vps[i]);
      if (typeof d === 'string') throw new FieldError(`partition.vps[${i}]: ${d}`);
      vps.push(d);
    }

    const dev = map(top.devices, 'devices', ['cmos', 'vmbus', 'kvp']);
    const c = map(dev.cmos, 'devices.cmos', ['version', 'index', 'nvram', 'offsetMs']);
    version1(c, 'devices.cmos');
    const index = int(c, 'index', 'devices.cmos', 0, 127);
    if (!Array.isArray(c.nvram) || c.nvram.length !== 128) throw new FieldError(`devices.cmos.nvram is ${shown(c.nvram)}${Array.isArray(c.nvram) ? ` of ${c.nvram.length}` : ''}, not a list of 128 bytes`);
    const nvram: number[] = [];
    for (let i = 0; i < 128; i++) {
      const b = c.nvram[i] as unknown;
      if (typeof b !== 'number' || !Number.isInteger(b) || b < 0 || b > 255) throw new FieldError(`devices.cmos.nvram[${i}] is ${shown(b)}, not a byte 0-255`);
      nvram.push(b);
    }
    const offsetMs = c.offsetMs;
    // The RTC offset is within ±10 years (the config's limit), kept in ms.
    if (typeof offsetMs !== 'number' || !Number.isFinite(offsetMs) || Math.abs(offsetMs) > 10 * 366 * 86400 * 1000) {
      throw new FieldError(`devices.cmos.offsetMs is ${shown(offsetMs)}, not milliseconds within ±10 years`);
    }
    const vb = map(dev.vmbus, 'devices.vmbus', ['version', 'channels']);
    version1(vb, 'devices.vmbus');
    if (!Array.isArray(vb.channels) || vb.channels.length > IC_CHANNELS.length) throw new FieldError(`devices.vmbus.channels is ${shown(vb.channels)}, not a list of at most ${IC_CHANNELS.length} channel names`);
    const channels: string[] = [];
    for (let i = 0; i < vb.channels.length; i++) {
      const ch = vb.channels[i] as unknown;
      if (typeof ch !== 'string' || !IC_CHANNELS.includes(ch) || channels.includes(ch)) throw new FieldError(`devices.vmbus.channels[${i}] is ${shown(ch)}, not one of ${IC_CHANNELS.join(', ')} (once each)`);
      channels.push(ch);
    }
    const kv = map(dev.kvp, 'devices.kvp', ['version', 'external']);
    version1(kv, 'devices.kvp');
    if (!Array.isArray(kv.external) || kv.external.length > SAVED_KVP_MAX_ENTRIES) throw new FieldError(`devices.kvp.external is ${shown(kv.external)}, not a list of at most ${SAVED_KVP_MAX_ENTRIES} entries`);
    const external: Array<{ key: string; value: string }> = [];
    for (let i = 0; i < kv.external.length; i++) {
      const path = `devices.kvp.external[${i}]`;
      const e = map(kv.external[i], path, ['key', 'value']);
      external.push({ key: str(e, 'key', path, KVP_MAX_KEY_BYTES), value: str(e, 'value', path, KVP_MAX_VALUE_BYTES) });
    }

    return {
      version: SAVED_STATE_VERSION,
      savedAt,
      vm: { name, id, memoryBytes, vps: vpCount, workload },
      memory: { file: 'memory.bin', bytes, sha256: digest },
      partition: { referenceTime, vps },
      devices: { cmos: { version: 1, index, nvram, offsetMs }, vmbus: { version: 1, channels }, kvp: { version: 1, external } },
    };
  } catch (e) {
    if (e instanceof FieldError) return e.message;
    throw e;
  }
}

/**
 * Reads and checks a saved state: the whole tree (decodeSavedVm), then the memory file's size and
 * checksum. Throws SavedStateError naming the file and the field.
 */
export function readSavedState(vmDir: string, name: string, expect: { memoryBytes: number; vps: number; id?: string }): { state: SavedVm; memory: Buffer } {
  const dir = savedDir(vmDir, name);
  const stateFile = join(dir, 'state.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(stateFile, 'utf8'));
  } catch (e) {
    throw new SavedStateError(`saved state ${stateFile} of VM "${name}" is unreadable: ${(e as Error).message}`);
  }
  const state = decodeSavedVm(raw, { name, ...expect });
  if (typeof state === 'string') throw new SavedStateError(`saved state ${stateFile} of VM "${name}" is invalid: ${state}`);
  const memFile = join(dir, state.memory.file);
  let size: number;
  try {
    size = statSync(memFile).size;
  } catch (e) {
    throw new SavedStateError(`saved memory ${memFile} of VM "${name}" is unreadable: ${(e as Error).message}`);
  }
  // Checked before reading, so a huge file is never read into memory.
  if (size !== expect.memoryBytes) throw new SavedStateError(`saved memory ${memFile} of VM "${name}" is ${size} bytes, not ${expect.memoryBytes}`);
  const memory = readFileSync(memFile);
  if (memory.length !== expect.memoryBytes) throw new SavedStateError(`saved memory ${memFile} of VM "${name}" is ${memory.length} bytes, not ${expect.memoryBytes}`);
  if (sha256(memory) !== state.memory.sha256) throw new SavedStateError(`saved memory ${memFile} of VM "${name}" fails its checksum (memory.sha256 in ${stateFile})`);
  return { state, memory };
}

export function discardSavedState(vmDir: string, name: string): void {
  rmSync(savedDir(vmDir, name), { recursive: true, force: true });
}
