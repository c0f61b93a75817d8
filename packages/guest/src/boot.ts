/**
 * Entry of a child partition process. It starts the process's first VP thread before it loads
 * anything else, so the thread loads the VP code while this thread loads the kernel (main.ts):
 * on a cold VM start both used to load one after the other, and the VPs waited ~90 ms for theirs.
 */
import { EAGER_COMPILE_ENV, eagerCompile } from '@hvlab/runtime/paths';
import { prestartFirstVpThread } from './spare.js';

prestartFirstVpThread();
// The partition process of a spare or warm worker compiles the kernel's code as it loads it
// (runtime/src/paths.ts, eagerCompile); main.ts turns lazy compilation back on before it waits.
if (process.env[EAGER_COMPILE_ENV] === '1') eagerCompile(true);
await import('./main.js');
