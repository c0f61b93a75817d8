/**
 * Entry of a VMWP. It starts the VM's partition process before it loads anything else, so that
 * process loads its code while this one loads the worker (main.ts): on a cold VM start the
 * partition process used to start only once the worker's own modules had loaded.
 */
import { EAGER_COMPILE_ENV, eagerCompile } from '@hvlab/runtime/paths';
import { prestartedPartition } from './prestart.js';

prestartedPartition();
// A spare or warm worker compiles the worker's code as it loads it (paths.ts, eagerCompile says
// why); main.ts turns lazy compilation back on before it waits for its start-up input.
if (process.env[EAGER_COMPILE_ENV] === '1') eagerCompile(true);
await import('./main.js');
