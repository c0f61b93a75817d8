// Worker for the pre-copy test in memory.test.ts: writes guest memory through its own GuestMemory
// (every page, round after round, in a shifting pattern, alone and in batches) from the moment the
// test sets done[1] (go) until the test sets done[2] (stop) and at least `rounds` rounds ran; then it
// sets done[0]. So the copier's rounds overlap the writes however the threads are scheduled.
// Plain JS that registers tsx, as the VP threads do (vp-thread.mjs).
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const { GuestMemory } = await import('../src/memory.ts');
const mem = new GuestMemory(workerData.memory);
const done = new Int32Array(workerData.done);
const pages = mem.size / 4096;
parentPort.postMessage('online');
const write = (p, r) => {
  const gpa = p * 4096 + ((p * 31 + r * 7) % 4088);
  if ((p + r) % 3 === 0) mem.setF64(gpa - (gpa % 8), r * 1000 + p);
  else if ((p + r) % 3 === 1) mem.atomicAdd32(gpa - (gpa % 4), r);
  else mem.setU8(gpa, r);
};
Atomics.wait(done, 1, 0);
for (let r = 1; r <= workerData.rounds || Atomics.load(done, 2) === 0; r++) {
  // Odd rounds write one page at a time, even rounds in batches of 64 pages (as a VP's steps do).
  if (r % 2 === 1) for (let p = 0; p < pages; p++) write(p, r);
  else for (let p0 = 0; p0 < pages; p0 += 64) mem.batch(() => { for (let p = p0; p < Math.min(pages, p0 + 64); p++) write(p, r); });
}
Atomics.store(done, 0, 1);
