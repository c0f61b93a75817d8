/**
 * The baseline of the hypercall-page round trip: `node futex-echo.ts REGION` maps /dev/shm/REGION
 * and, blocking in the shm addon's futex, answers each number the parent stores in word 0 by
 * storing it in word 1 and waking it. A stored -1 ends it. Prints `ready` once mapped.
 */
import { openRegion, futexWait, futexWake } from '@hvlab/shm';

const sab = openRegion(process.argv[2]);
const w = new Int32Array(sab);
// Read before saying ready: the parent's first number may follow at once.
let last = Atomics.load(w, 0);
process.stdout.write('ready\n');
for (;;) {
  futexWait(sab, 0, last, 1000);
  const v = Atomics.load(w, 0);
  if (v === last) continue;
  if (v === -1) break;
  last = v;
  Atomics.store(w, 1, v);
  futexWake(sab, 1);
}
process.exit(0);
