/**
 * Entry of a VMWP. It starts the VM's partition process before it loads anything else, so that
 * process loads its code while this one loads the worker (main.ts): on a cold VM start the
 * partition process used to start only once the worker's own modules had loaded.
 */
import { EAGER_COMPILE_ENV, eagerCompileAfter, loadMsgpackr } from '@hvlab/runtime/paths';
import { prestartedPartition } from './prestart.js';

prestartedPartition();
// A spare or warm worker compiles the worker's code as it loads it (paths.ts, eagerCompile says
// why); main.ts turns lazy compilation back on before it waits for its start-up input. Node's
// modules and the dependencies outside the bundle load first, lazily, from Node's code cache
// (eagerCompileAfter says why).
async function boot(): Promise<void> {
  if (process.env[EAGER_COMPILE_ENV] === '1') {
    await eagerCompileAfter([
      import('node:assert'), import('node:buffer'), import('node:child_process'), import('node:crypto'), import('node:diagnostics_channel'), import('node:events'),
      import('node:fs'), import('node:module'), import('node:os'), import('node:path'), import('node:url'), import('node:util'), import('node:worker_threads'),
      import('node:zlib'), import('zeromq'), loadMsgpackr(import.meta.url), import('@hvlab/shm'),
    ]);
  }
  await (await import('./main.js')).runWorker();
}
// No top-level await: the process may run as a CommonJS bundle (runtime/src/code-cache.ts).
boot().catch((e: unknown) => {
  process.stderr.write(`hvlab vmwp: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
