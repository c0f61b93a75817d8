/**
 * Micro-benchmark of the memdirty workload's writes, before and after GuestMemory became the only
 * write path with a dirty log. "raw" is the step as it was (a Uint8Array over guest memory, task
 * fields in typed arrays, no dirty bits); "GuestMemory" is `TaskTable.step` today (bounds-checked
 * accessors, dirty marks gathered per step and set with one Atomics.or per bitmap word); "unbatched"
 * is the same writes with one Atomics.or after each. They run side by side in one process over
 * 64 MiB guests, alternating, and the ratios of medians are printed.
 *
 *   node --import tsx packages/guest/test/memdirty.bench.ts
 */
import {
  PAGE, STATUS_PAGE_GPA, StatusPage, TASK_BYTES, TASK_TABLE_GPA, Task, WORKLOAD_DATA_GPA,
} from '@hvlab/protocol';
import { GuestMemory } from '../src/memory.js';
import { TaskTable } from '../src/workloads.js';

const MEMORY = 64 * 1024 * 1024;
const DIRTY_BYTES = 16 * 1024 * 1024; // memdirty's default
const PAGES_PER_STEP = 256;
const STEPS = 2000;
const ROUNDS = 9;

/** The memdirty step as it was before this change (workloads.ts at e3f7acc): views made once, as TaskTable made them. */
function rawStepper(buf: SharedArrayBuffer, i: number): () => void {
  const u8 = new Uint8Array(buf);
  const f64 = new Float64Array(buf, TASK_TABLE_GPA, 512);
  const progress = new BigInt64Array(buf, STATUS_PAGE_GPA + StatusPage.progress, 1);
  const field = (off: number): number => (i * TASK_BYTES + off) >> 3;
  return () => {
    const pages = f64[field(Task.b)]!;
    let cursor = f64[field(Task.a)]!;
    for (let k = 0; k < PAGES_PER_STEP; k++) {
      const gpa = WORKLOAD_DATA_GPA + cursor * PAGE;
      u8[gpa] = (u8[gpa]! + 1) & 0xff;
      cursor = cursor + 1 >= pages ? 0 : cursor + 1;
    }
    f64[field(Task.a)] = cursor;
    f64[field(Task.work)] = f64[field(Task.work)]! + PAGES_PER_STEP;
    Atomics.add(progress, 0, BigInt(PAGES_PER_STEP));
  };
}

function timeIt(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  for (let s = 0; s < STEPS; s++) fn();
  return Number(process.hrtime.bigint() - t0) / (STEPS * PAGES_PER_STEP);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const rawBuf = new SharedArrayBuffer(MEMORY);
const rawTable = new TaskTable(new GuestMemory(rawBuf));
rawTable.create('memdirty', DIRTY_BYTES, 1);
const rawStep = rawStepper(rawBuf, rawTable.claim(0, -1));

const mem = new GuestMemory(new SharedArrayBuffer(MEMORY));
const table = new TaskTable(mem);
table.create('memdirty', DIRTY_BYTES, 1);
const task = table.claim(0, -1);

/** memdirty's writes through GuestMemory without a batch: a mark (a locked OR) after every write. */
const unbatchedMem = new GuestMemory(new SharedArrayBuffer(MEMORY));
let unbatchedCursor = 0;
const unbatchedStep = (): void => {
  for (let k = 0; k < PAGES_PER_STEP; k++) {
    unbatchedMem.add8(WORKLOAD_DATA_GPA + unbatchedCursor * PAGE, 1);
    unbatchedCursor = unbatchedCursor + 1 >= DIRTY_BYTES / PAGE ? 0 : unbatchedCursor + 1;
  }
};

const raw: number[] = [];
const guarded: number[] = [];
const unbatched: number[] = [];
for (let r = 0; r < ROUNDS + 1; r++) {
  // The first round warms them up (JIT) and is not counted.
  const a = timeIt(rawStep);
  const b = timeIt(() => table.step(task, 0));
  const c = timeIt(unbatchedStep);
  if (r > 0) {
    raw.push(a);
    guarded.push(b);
    unbatched.push(c);
  }
}
const harvested = mem.harvestDirty().length;
console.log(`memdirty write path, ${STEPS} steps x ${PAGES_PER_STEP} pages, ${ROUNDS} rounds, median ns per page written:`);
console.log(`  raw Uint8Array (before)        ${median(raw).toFixed(2)}`);
console.log(`  GuestMemory + dirty log (now)  ${median(guarded).toFixed(2)}`);
console.log(`  same, a mark after each write  ${median(unbatched).toFixed(2)}`);
console.log(`  ratio now/before               ${(median(guarded) / median(raw)).toFixed(2)}x`);
console.log(`  ratio unbatched/before         ${(median(unbatched) / median(raw)).toFixed(2)}x`);
console.log(`  pages in the dirty log after the run: ${harvested} (memdirty covers ${DIRTY_BYTES / PAGE} pages, plus the task-table and status pages)`);
