// The hypercall thread's plain-JS entry: worker threads do not inherit the process's tsx loader.
import { register } from 'tsx/esm/api';
register();
await import('./hc-thread.ts');
