/**
 * Entry of a child partition process. It starts the process's first VP thread before it loads
 * anything else, so the thread loads the VP code while this thread loads the kernel (main.ts):
 * on a cold VM start both used to load one after the other, and the VPs waited ~90 ms for theirs.
 */
import { prestartFirstVpThread } from './spare.js';

prestartFirstVpThread();
await import('./main.js');
