// Worker for sint-line.test.ts: a VP thread's side of the SINT line. Raises what the test posts
// ({ vp, sint } pairs, in order), then says 'raised'. Plain JS that registers tsx, as the VP threads do.
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const { sintRaiser } = await import('../src/sint-line.ts');
const raise = sintRaiser(workerData.line);
parentPort.on('message', (m) => {
  for (const [vp, sint] of m) raise(vp, sint);
  parentPort.postMessage('raised');
});
parentPort.postMessage('online');
