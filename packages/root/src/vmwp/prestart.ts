/**
 * The VMWP's partition process, started as early as can be. A VMWP starts its partition process
 * before it has read its own start-up input, so the two load their code at the same time (VM start
 * is mostly process and module start-up); the partition process waits, its code and a VP thread
 * loaded, for the line the VMWP writes once the partition exists. This module imports nothing heavy,
 * so the VMWP's entry (boot.ts) spawns the partition process before it loads the worker itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EAGER_COMPILE_ENV, entries, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime/paths';

/**
 * A new partition process, waiting for its start-up line on stdin (an IPC channel to this VMWP).
 * `ahead`: started ahead of need (by a spare or warm worker), it compiles its code eagerly.
 */
export function spawnPartition(ahead = false): ChildProcess {
  const env = vmProcessEnv();
  delete env[EAGER_COMPILE_ENV];
  if (ahead) env[EAGER_COMPILE_ENV] = '1';
  const p = spawn(process.execPath, vmProcessArgs(entries.partition), { stdio: ['pipe', 'ignore', 'inherit', 'ipc'], serialization: 'advanced', env });
  p.stdin!.on('error', () => undefined);
  p.on('error', () => undefined);
  return p;
}

let first: ChildProcess | null = null;

/** The partition process this VMWP started first (started by the first call). */
export function prestartedPartition(): ChildProcess {
  first ??= spawnPartition(process.env[EAGER_COMPILE_ENV] === '1');
  return first;
}
