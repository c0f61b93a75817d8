/**
 * The floor under `bench sched`'s interrupt to a halted VP: `node idle-wake.ts REGION` maps
 * /dev/shm/REGION and sleeps in the shm addon's futex on word 0, as a halted VP thread sleeps on its
 * dispatch word. Each time the parent stores a new number there and wakes it, it stamps
 * CLOCK_MONOTONIC (process.hrtime) into the int64 at byte 8 and then acknowledges the number in
 * word 1, and sleeps again. A stored -1 ends it. Prints `ready` once mapped.
 */
import { openRegion, futexWait } from '@hvlab/shm';

const sab = openRegion(process.argv[2]!);
const w = new Int32Array(sab);
const stamp = new BigInt64Array(sab, 8, 1);
let last = Atomics.load(w, 0);
process.stdout.write('ready\n');
for (;;) {
  futexWait(sab, 0, last, -1);
  const v = Atomics.load(w, 0);
  if (v === last) continue;
  stamp[0] = process.hrtime.bigint();
  if (v === -1) break;
  last = v;
  Atomics.store(w, 1, v);
}
process.exit(0);
