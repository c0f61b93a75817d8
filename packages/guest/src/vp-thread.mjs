// Worker threads do not inherit the tsx loader of their process; this plain-JS entry registers it
// in the thread and then loads the VP code (piscina and Worker need the filename as on disk).
import { register } from 'tsx/esm/api';
register();
await import('./vp.ts');
