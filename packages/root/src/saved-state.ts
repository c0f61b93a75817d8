/**
 * A VM's saved state on disk: HVLAB_HOME/vms/<name>.saved/ holds `state.json` (the versioned tree)
 * and `memory.bin` (guest physical memory, byte for byte). The tree is plain data kept apart from
 * runtime types, as OpenVMM and Cloud Hypervisor do: the VM's identity, the partition (reference
 * time, and per VP its registers, APIC, SynIC and synthetic timers), and each device by id
 * (the CMOS clock; VMBus, whose channels the guest re-opens on resume as Linux does after
 * hibernation; the KVP exchange's external pool). Written to a temporary directory and renamed,
 * so a crash never leaves half a saved state.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SavedVpState } from '@hvlab/protocol';
import type { CmosState } from './vmwp/cmos.js';

export const SAVED_STATE_VERSION = 1;

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

export function hasSavedState(vmDir: string, name: string): boolean {
  return existsSync(join(savedDir(vmDir, name), 'state.json'));
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

/** Reads and checks a saved state: version, shape, memory size and checksum. */
export function readSavedState(vmDir: string, name: string, expect: { memoryBytes: number; vps: number }): { state: SavedVm; memory: Buffer } {
  const dir = savedDir(vmDir, name);
  let state: SavedVm;
  try {
    state = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as SavedVm;
  } catch (e) {
    throw new SavedStateError(`saved state of VM "${name}" is unreadable: ${(e as Error).message}`);
  }
  if (state.version !== SAVED_STATE_VERSION) throw new SavedStateError(`saved state of VM "${name}" is version ${state.version}; this host reads version ${SAVED_STATE_VERSION}`);
  if (state.vm?.memoryBytes !== expect.memoryBytes || state.vm?.vps !== expect.vps || !Array.isArray(state.partition?.vps) || state.partition.vps.length !== expect.vps) {
    throw new SavedStateError(`saved state of VM "${name}" does not match its configuration (memory or VP count changed)`);
  }
  const memory = readFileSync(join(dir, 'memory.bin'));
  if (memory.length !== expect.memoryBytes) throw new SavedStateError(`saved memory of VM "${name}" is ${memory.length} bytes, not ${expect.memoryBytes}`);
  if (sha256(memory) !== state.memory.sha256) throw new SavedStateError(`saved memory of VM "${name}" fails its checksum`);
  return { state, memory };
}

export function discardSavedState(vmDir: string, name: string): void {
  rmSync(savedDir(vmDir, name), { recursive: true, force: true });
}
