/**
 * Entry of a VMWP. It starts the VM's partition process before it loads anything else, so that
 * process loads its code while this one loads the worker (main.ts): on a cold VM start the
 * partition process used to start only once the worker's own modules had loaded.
 */
import { prestartedPartition } from './prestart.js';

prestartedPartition();
await import('./main.js');
