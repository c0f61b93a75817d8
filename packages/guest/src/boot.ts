/**
 * Entry of a child partition process. It starts the process's first VP thread before it loads
 * anything else, so the thread loads the VP code while this thread loads the kernel (main.ts):
 * on a cold VM start both used to load one after the other, and the VPs waited ~90 ms for theirs.
 */
import { EAGER_COMPILE_ENV, eagerCompileAfter, loadMsgpackr } from '@hvlab/runtime/paths';
import { prestartFirstVpThread } from './spare.js';

const vpThreadLoaded = prestartFirstVpThread();
// The partition process of a spare or warm worker compiles the kernel's code as it loads it
// (runtime/src/paths.ts, eagerCompile); main.ts turns lazy compilation back on before it waits.
// The VP thread (all of its load), Node's modules and the dependencies outside the bundle load
// first, as by default, Node's from its code cache (eagerCompileAfter says why).
async function boot(): Promise<void> {
  if (process.env[EAGER_COMPILE_ENV] === '1') {
    await eagerCompileAfter([
      vpThreadLoaded,
      import('node:assert'), import('node:buffer'), import('node:diagnostics_channel'), import('node:events'), import('node:fs'), import('node:module'),
      import('node:os'), import('node:path'), import('node:url'), import('node:util'), import('node:worker_threads'),
      import('zeromq'), loadMsgpackr(import.meta.url), import('@hvlab/shm'),
    ]);
  }
  await (await import('./main.js')).runPartition();
}
// No top-level await: the process may run as a CommonJS bundle (runtime/src/code-cache.ts).
boot().catch((e: unknown) => {
  process.stderr.write(`hvlab partition: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
