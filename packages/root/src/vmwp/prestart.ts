/**
 * The VMWP's partition process, started as early as can be. A VMWP starts its partition process
 * before it has read its own start-up input, so the two load their code at the same time (VM start
 * is mostly process and module start-up); the partition process waits, its code and a VP thread
 * loaded, for the line the VMWP writes once the partition exists. This module imports nothing heavy,
 * so the VMWP's entry (boot.ts) spawns the partition process before it loads the worker itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { entries, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime/paths';

/** A new partition process, waiting for its start-up line on stdin (an IPC channel to this VMWP). */
export function spawnPartition(): ChildProcess {
  const p = spawn(process.execPath, vmProcessArgs(entries.partition), { stdio: ['pipe', 'ignore', 'inherit', 'ipc'], serialization: 'advanced', env: vmProcessEnv() });
  p.stdin!.on('error', () => undefined);
  p.on('error', () => undefined);
  return p;
}

let first: ChildProcess | null = null;
let firstLoaded: Promise<boolean> | null = null;

/** The partition process this VMWP started first (started by the first call). */
export function prestartedPartition(): ChildProcess {
  if (!first) {
    const p = spawnPartition();
    first = p;
    // It says `{ loaded: true }` once its code is loaded and it waits for its start-up line.
    firstLoaded = new Promise<boolean>((resolve) => {
      const onMessage = (m: unknown): void => {
        if ((m as { loaded?: unknown } | null)?.loaded !== true) return;
        p.off('message', onMessage);
        resolve(true);
      };
      p.on('message', onMessage);
      p.once('exit', () => resolve(false));
    });
  }
  return first;
}

/** Whether the first partition process has loaded its code (false: it exited, or `timeoutMs` passed). */
export function prestartedPartitionLoaded(timeoutMs: number): Promise<boolean> {
  prestartedPartition();
  return Promise.race([firstLoaded!, new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs).unref())]);
}
