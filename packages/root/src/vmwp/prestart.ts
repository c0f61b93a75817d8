/**
 * The VMWP's partition process, started as early as can be. A VMWP starts its partition process
 * before it has read its own start-up input, so the two load their code at the same time (VM start
 * is mostly process and module start-up); the partition process waits, its code and a VP thread
 * loaded, for the line the VMWP writes once the partition exists. This module imports nothing heavy,
 * so the VMWP's entry (boot.ts) spawns the partition process before it loads the worker itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Duplex } from 'node:stream';
import { EAGER_COMPILE_ENV, entries, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime/paths';

/**
 * The root that started this worker (its parent when this module loaded, the first thing the
 * worker does). A worker whose start-up input, or claim, arrives after that root died (a root
 * killed while a start waited for a slow worker) abandons it: the root restarted meanwhile found no
 * record of it and does not know the VM runs, so the worker would run on untracked, and the VM's
 * next start would fail on it ('wrong secret').
 */
export const parentAtStart = process.ppid;

/** Whether the root that started this worker is gone (this process was re-parented). */
export function rootGone(): boolean {
  return process.ppid !== parentAtStart;
}

/**
 * A new partition process, waiting for its start-up line on stdin (a socket to this VMWP as fd 3).
 * `ahead`: started ahead of need (by a spare or warm worker), it compiles its code eagerly.
 */
export function spawnPartition(ahead = false): ChildProcess {
  const env = partitionEnv(process.env, ahead);
  // fd 3: a socket pair, the link IpcRpc frames (runtime/src/ipc.ts), not Node's IPC channel.
  const p = spawn(process.execPath, vmProcessArgs(entries.partition), { stdio: ['pipe', 'ignore', 'inherit', 'pipe'], env });
  partitionLink(p)?.on('error', () => undefined);
  p.stdin!.on('error', () => undefined);
  p.on('error', () => undefined);
  return p;
}

/**
 * A partition process's environment: this worker's (`vmProcessEnv`), with HVLAB_EAGER_COMPILE set
 * only when it is started ahead of need (a spare's or warm worker's first one); any other (a
 * replacement on a start's path) compiles lazily whatever this worker's environment says.
 */
export function partitionEnv(base: NodeJS.ProcessEnv, ahead: boolean): NodeJS.ProcessEnv {
  const env = vmProcessEnv(base);
  delete env[EAGER_COMPILE_ENV];
  if (ahead) env[EAGER_COMPILE_ENV] = '1';
  return env;
}

/** Whether this worker was started ahead of need (the root's spare or warm pool sets the variable). */
export function aheadOfNeed(env: NodeJS.ProcessEnv): boolean {
  return env[EAGER_COMPILE_ENV] === '1';
}

let first: ChildProcess | null = null;

/** The link to a partition process (fd 3 of it), for IpcRpc. */
export function partitionLink(p: ChildProcess): Duplex | null {
  return (p.stdio[3] as Duplex | null | undefined) ?? null;
}

/** The partition process this VMWP started first (started by the first call). */
export function prestartedPartition(): ChildProcess {
  first ??= spawnPartition(aheadOfNeed(process.env));
  return first;
}
