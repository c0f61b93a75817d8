/**
 * A VM's saved state on disk: HVLAB_HOME/vms/<name>.saved/ holds `state.json` (the versioned tree)
 * and `memory.bin` (guest physical memory, byte for byte). The tree is plain data kept apart from
 * runtime types, as OpenVMM and Cloud Hypervisor do: the VM's identity, the partition (reference
 * time, and per VP its registers, APIC, SynIC with its queued messages, synthetic timers and a
 * pending intercept), and `components`, keyed by component id: "vmbus" (the VMBus server's
 * channels, GPADLs and offers), "device/<id>" (each device's own state.ts) and "processor". The
 * guest's own state (its VMBus client, drivers and KVP pools) is in guest memory, as a real
 * guest's is. Written to a temporary directory and renamed, so a crash never leaves half a saved
 * state.
 *
 * `state.json` is read back as untrusted input (a user can edit it): `decodeSavedVm` checks the
 * envelope and the partition — versions, types, finite numbers, sizes — and that `components` is
 * a bounded map of known component ids; each component is then checked by its own decoder where
 * it is restored (vmwp/devices.ts). Errors name the file and the field; the memory file must
 * have the configured size and the recorded sha256.
 *
 * A saved state is used once. Before a VM resumes from it VMMS marks it consumed (an empty
 * `consumed` file, which needs no data blocks even on a full disk); a consumed saved state is no
 * longer a Saved VM's, so a VM turned off mid-restore, or a root restarted in between, can never
 * resume that old snapshot again (Hyper-V deletes the .vsv once the VM runs from it).
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeSavedVpState, DEVICE_ID_RE, MAX_DEVICES_PER_VM, type SavedVpState } from '@hvlab/protocol';
import { decodeState, StateFieldError, uint, versioned } from '@hvlab/protocol/state';
import { readRegularFile, makeDirs, pidAlive } from '@hvlab/runtime';
import { PROCESSOR_LIMITS, shown } from './config.js';

/** Version 2: per-component state (version 1 kept devices in a fixed map and renegotiated VMBus). */
export const SAVED_STATE_VERSION = 2;
/** Most components a saved state may have: every device, VMBus and the processor settings. */
export const SAVED_MAX_COMPONENTS = MAX_DEVICES_PER_VM + 2;
/** Largest `state.json` read (its memory is in memory.bin; 64 devices' state is far below this). */
export const SAVED_STATE_MAX_BYTES = 16 * 1024 * 1024;
const CONSUMED = 'consumed';

export interface ProcessorState {
  version: 1;
  reserve: number;
  maximum: number;
  weight: number;
}

/** The "processor" component: Set-VMProcessor's settings within their limits. */
export function decodeProcessorState(v: unknown): ProcessorState | string {
  return decodeState(() => {
    const o = versioned(v, 'processor', 1, ['reserve', 'maximum', 'weight']);
    const k = (n: keyof typeof PROCESSOR_LIMITS): number => {
      const x = uint(o[n], `processor.${n}`, PROCESSOR_LIMITS[n].max);
      if (x < PROCESSOR_LIMITS[n].min) throw new StateFieldError(`processor.${n} is ${x}, below ${PROCESSOR_LIMITS[n].min}`);
      return x;
    };
    return { version: 1 as const, reserve: k('reserve'), maximum: k('maximum'), weight: k('weight') };
  });
}

/** A component id: "vmbus", "processor" or "device/<device id>". */
export function isComponentId(k: string): boolean {
  return k === 'vmbus' || k === 'processor' || (k.startsWith('device/') && DEVICE_ID_RE.test(k.slice(7)));
}

export interface SavedVm {
  version: number;
  savedAt: string;
  vm: { name: string; id: string; memoryBytes: number; vps: number; workload: string };
  memory: { file: 'memory.bin'; bytes: number; sha256: string };
  partition: { referenceTime: number; vps: SavedVpState[] };
  /** Each component's own saved state, by component id (checked by the component's decoder). */
  components: Record<string, unknown>;
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

/** The directory a worker (`pid`) writes a saved state in before it renames it into place. */
export function unfinishedSaveDir(vmDir: string, name: string, pid: number): string {
  return `${savedDir(vmDir, name)}.tmp-${pid}`;
}

/** NAME.saved.tmp-PID: a save in progress, or one whose worker died in the middle (SIGKILL: its catch never ran). */
const UNFINISHED_SAVE_RE = /\.saved\.tmp-(\d+)$/;

/**
 * Removes the unfinished saves in `vmDir` whose worker is gone, and returns their names. A worker
 * killed while it wrote its memory left hundreds of MiB here that nothing removed (not `down`,
 * not the next `up`, not `vm delete`); the root removes a worker's own when it sees it go, and
 * this at its start, for workers that died while no root was up. A save whose pid is alive is
 * left alone (it may be in progress).
 */
export function sweepUnfinishedSaves(vmDir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(vmDir);
  } catch {
    return [];
  }
  const gone: string[] = [];
  for (const f of names) {
    const m = UNFINISHED_SAVE_RE.exec(f);
    if (!m || pidAlive(Number(m[1]))) continue;
    rmSync(join(vmDir, f), { recursive: true, force: true });
    gone.push(f);
  }
  return gone;
}

/**
 * Writes a saved state atomically (temporary directory, then rename). `afterWrite` runs once the
 * files are written, before the rename (tests hold a save there).
 */
export function writeSavedState(vmDir: string, name: string, state: SavedVm, memory: Uint8Array, afterWrite?: () => void): void {
  const dir = savedDir(vmDir, name);
  const tmp = unfinishedSaveDir(vmDir, name, process.pid);
  rmSync(tmp, { recursive: true, force: true });
  makeDirs(tmp);
  try {
    writeFileSync(join(tmp, 'memory.bin'), memory);
    writeFileSync(join(tmp, 'state.json'), JSON.stringify(state, null, 1) + '\n');
    afterWrite?.();
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


/**
 * Checks a parsed `state.json` against the VM it should belong to and returns a fresh copy, or
 * the field that is wrong as a sentence ("partition.vps[1]: saved VP state: timers[0].count …").
 */
export function decodeSavedVm(v: unknown, expect: { name: string; memoryBytes: number; vps: number; id?: string }): SavedVm | string {
  try {
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && (v as { version?: unknown }).version === 1) {
      throw new FieldError('version is 1, written by an older hvlab that renegotiated VMBus on resume; this host reads version 2 (turn the VM off with "vm turn-off" to discard it)');
    }
    const top = map(v, 'the tree', ['version', 'savedAt', 'vm', 'memory', 'partition', 'components']);
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

    const comp = top.components;
    if (comp === null || typeof comp !== 'object' || Array.isArray(comp) || (Object.getPrototypeOf(comp) !== Object.prototype && Object.getPrototypeOf(comp) !== null)) {
      throw new FieldError(`components is ${shown(comp)}, not a map`);
    }
    const ids = Object.keys(comp);
    if (ids.length > SAVED_MAX_COMPONENTS) throw new FieldError(`components has ${ids.length} entries, more than ${SAVED_MAX_COMPONENTS}`);
    const components: Record<string, unknown> = {};
    for (const k of ids) {
      if (!isComponentId(k)) throw new FieldError(`components has ${shown(k)}, which is not a component id ("vmbus", "processor" or "device/<id>")`);
      components[k] = (comp as Record<string, unknown>)[k];
    }
    if (!('vmbus' in components)) throw new FieldError('components.vmbus is missing');
    // The processor settings at save (kept for a destination without the VM's config; a restore
    // on this host applies the config's). Checked here: no device decoder owns them.
    if ('processor' in components) {
      const p = decodeProcessorState(components.processor);
      if (typeof p === 'string') throw new FieldError(`components.${p}`);
      components.processor = p;
    }
    return {
      version: SAVED_STATE_VERSION,
      savedAt,
      vm: { name, id, memoryBytes, vps: vpCount, workload },
      memory: { file: 'memory.bin', bytes, sha256: digest },
      partition: { referenceTime, vps },
      components,
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
    // A file only (a FIFO held the worker in open() until its start timed out), and bounded.
    raw = JSON.parse(readRegularFile(stateFile, SAVED_STATE_MAX_BYTES).toString('utf8'));
  } catch (e) {
    throw new SavedStateError(`saved state ${stateFile} of VM "${name}" is unreadable: ${(e as Error).message}`);
  }
  const state = decodeSavedVm(raw, { name, ...expect });
  if (typeof state === 'string') throw new SavedStateError(`saved state ${stateFile} of VM "${name}" is invalid: ${state}`);
  const memFile = join(dir, state.memory.file);
  // A file of the VM's memory size, checked before reading (a huge file is never read into memory).
  let memory: Buffer;
  try {
    memory = readRegularFile(memFile, expect.memoryBytes);
  } catch (e) {
    throw new SavedStateError(`saved memory ${memFile} of VM "${name}" is unreadable: ${(e as Error).message}`);
  }
  if (memory.length !== expect.memoryBytes) throw new SavedStateError(`saved memory ${memFile} of VM "${name}" is ${memory.length} bytes, not ${expect.memoryBytes}`);
  if (sha256(memory) !== state.memory.sha256) throw new SavedStateError(`saved memory ${memFile} of VM "${name}" fails its checksum (memory.sha256 in ${stateFile})`);
  return { state, memory };
}

export function discardSavedState(vmDir: string, name: string): void {
  rmSync(savedDir(vmDir, name), { recursive: true, force: true });
}
