/**
 * A virtual processor of the guest: a worker thread that runs the workload in short steps over
 * the shared guest memory. Between steps it checks the run-control word that the kernel sets when
 * the hypervisor suspends the partition, and halts (Atomics.wait) while it may not run or has
 * nothing to do — so a paused VM stops at a step boundary with all its state in memory.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { STATUS_PAGE_GPA, StatusPage } from '@hvlab/protocol';
import { GuestMemory } from './memory.js';
import { counterWorkload, idleWorkload, type Workload } from './workloads.js';

export interface VpStart {
  memory: SharedArrayBuffer;
  /** Int32 words: [0] suspended (1) / running (0), [1] stop request, [2] wake counter. */
  control: SharedArrayBuffer;
  vpIndex: number;
  workload: string;
  workloadArg: number;
}

export const CTL_SUSPENDED = 0;
export const CTL_STOP = 1;
export const CTL_WAKE = 2;

function run(start: VpStart): void {
  const mem = new GuestMemory(start.memory);
  const ctl = new Int32Array(start.control);
  const steps = mem.i64(STATUS_PAGE_GPA + StatusPage.steps);
  let wl: Workload = idleWorkload();
  if (start.vpIndex === 0 && start.workload === 'counter') wl = counterWorkload(mem, start.workloadArg);
  parentPort?.postMessage({ t: 'online', vp: start.vpIndex });
  while (Atomics.load(ctl, CTL_STOP) === 0) {
    if (Atomics.load(ctl, CTL_SUSPENDED) === 1) {
      Atomics.wait(ctl, CTL_SUSPENDED, 1, 200);
      continue;
    }
    const haltMs = wl.step(performance.now());
    Atomics.add(steps, 0, 1n);
    // Halt until the next step is due or the kernel wakes us (suspend, stop, interrupt).
    const wake = Atomics.load(ctl, CTL_WAKE);
    Atomics.wait(ctl, CTL_WAKE, wake, haltMs);
  }
  parentPort?.postMessage({ t: 'stopped', vp: start.vpIndex });
}

if (parentPort) run(workerData as VpStart);
