// Worker threads do not inherit the tsx loader of their process; this plain-JS entry registers it
// in the thread and then loads the pool's task (piscina needs the filename as it is on disk).
import { register } from 'tsx/esm/api';
register();
const mod = await import('./compress-worker.ts');
export default mod.default;
