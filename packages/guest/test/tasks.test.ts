/**
 * Unit tests of the guest task table and the built-in workloads (`TaskTable`) over an 8 MiB guest
 * memory: task creation, exclusive claiming, sleeping and waking, and the step of each workload,
 * in particular memdirty against the property QEMU's migration test checks on its guest's memory.
 */
import { expect } from 'chai';
import {
  MAX_TASKS, PAGE, STATUS_PAGE_GPA, StatusPage, Task, TaskKind, TaskState, TASK_BYTES, TASK_TABLE_GPA,
  WORKLOAD_DATA_GPA, WORKLOAD_PAGE_GPA, WorkloadPage,
} from '@hvlab/protocol';
import { GuestMemory } from '../src/memory.js';
import { TaskTable, spinUnit, taskGpa } from '../src/workloads.js';

const MiB = 1024 * 1024;
/** Pages memdirty touches per step (one step of the workload). */
const PAGES_PER_STEP = 256;

function makeTable(): { mem: GuestMemory; tt: TaskTable } {
  const mem = new GuestMemory(new SharedArrayBuffer(8 * MiB));
  return { mem, tt: new TaskTable(mem) };
}

const progress = (mem: GuestMemory): bigint => mem.atomicLoad64(STATUS_PAGE_GPA + StatusPage.progress);
const counter = (mem: GuestMemory): bigint => mem.atomicLoad64(WORKLOAD_PAGE_GPA + WorkloadPage.counter);
const owner = (mem: GuestMemory, i: number): number => mem.i32(taskGpa(i) + Task.owner);

/** First byte of each of `pages` pages from WORKLOAD_DATA_GPA. */
function firstBytes(mem: GuestMemory, pages: number): number[] {
  return Array.from({ length: pages }, (_, p) => mem.u8(WORKLOAD_DATA_GPA + p * PAGE));
}

/**
 * QEMU's migration-test check (tests/qtest/migration-test.c, check_guests_ram): walking the pages in
 * order, each page's first byte equals the previous page's, except at most one place where it is
 * one less (mod 256): the point the incrementing loop had reached. Returns that page, or -1.
 */
function checkGuestsRam(bytes: number[]): number {
  let edge = -1;
  for (let p = 1; p < bytes.length; p++) {
    if (bytes[p] === bytes[p - 1]) continue;
    expect((bytes[p] + 1) & 0xff, `page ${p}: ${bytes[p]} after ${bytes[p - 1]}`).to.equal(bytes[p - 1]);
    expect(edge, `a second edge at page ${p} (the first at ${edge})`).to.equal(-1);
    edge = p;
  }
  return edge;
}

describe('TaskTable', () => {
  describe('task creation and claiming', () => {
    it("create('spin', 0, 4) makes 4 runnable spin tasks with no owner and leaves the rest free", () => {
      const { mem, tt } = makeTable();
      tt.create('spin', 0, 4);
      for (let i = 0; i < 4; i++) {
        expect(tt.state(i), `task ${i}`).to.equal(TaskState.Runnable);
        expect(tt.kind(i)).to.equal(TaskKind.Spin);
        expect(owner(mem, i)).to.equal(-1);
      }
      for (let i = 4; i < MAX_TASKS; i++) expect(tt.state(i), `task ${i}`).to.equal(TaskState.Free);
      expect(tt.anyRunnable()).to.equal(true);
      expect(taskGpa(3)).to.equal(TASK_TABLE_GPA + 3 * TASK_BYTES);
    });

    it('creates at most MAX_TASKS spin tasks however many VPs there are', () => {
      const { tt } = makeTable();
      tt.create('spin', 0, MAX_TASKS + 10);
      for (let i = 0; i < MAX_TASKS; i++) expect(tt.state(i)).to.equal(TaskState.Runnable);
    });

    it('create replaces whatever the table held before', () => {
      const { tt } = makeTable();
      tt.create('spin', 0, 8);
      tt.create('sleep', 5, 8);
      expect(tt.state(0)).to.equal(TaskState.Runnable);
      expect(tt.kind(0)).to.equal(TaskKind.Sleep);
      for (let i = 1; i < MAX_TASKS; i++) expect(tt.state(i)).to.equal(TaskState.Free);
      tt.create('idle', 0, 8);
      expect(tt.anyRunnable()).to.equal(false);
    });

    it('claim is exclusive: each task goes to one VP, and with all claimed the next claim gets -1', () => {
      const { mem, tt } = makeTable();
      tt.create('spin', 0, 4);
      const got = [0, 1, 2, 3].map((vp) => tt.claim(vp, vp));
      expect([...got].sort()).to.deep.equal([0, 1, 2, 3]);
      got.forEach((task, vp) => {
        expect(tt.state(task)).to.equal(TaskState.Running);
        expect(owner(mem, task)).to.equal(vp);
      });
      expect(tt.anyRunnable()).to.equal(false);
      for (let vp = 0; vp < 4; vp++) expect(tt.claim(vp, 0)).to.equal(-1);
      // Put back, it can be claimed again (by anyone), and only once.
      tt.requeue(got[2]);
      expect(owner(mem, got[2])).to.equal(-1);
      expect(tt.claim(7, 0)).to.equal(got[2]);
      expect(owner(mem, got[2])).to.equal(7);
      expect(tt.claim(8, 0)).to.equal(-1);
    });

    it('claim searches round-robin starting after the given task', () => {
      const { tt } = makeTable();
      tt.create('spin', 0, 4);
      expect(tt.claim(0, 1)).to.equal(2);
      expect(tt.claim(0, 1)).to.equal(3);
      expect(tt.claim(0, 1)).to.equal(0); // wrapped past MAX_TASKS
      expect(tt.claim(0, MAX_TASKS - 1)).to.equal(1);
    });
  });

  describe('spin', () => {
    it('a step does one work unit: the xorshift state advances and work and progress count 1', () => {
      const { mem, tt } = makeTable();
      tt.create('spin', 0, 2);
      const i = tt.claim(0, -1);
      expect(tt.step(i, 1000)).to.deep.equal({ kind: 'continue' });
      expect(tt.field(i, Task.a)).to.equal(spinUnit(1));
      expect(tt.step(i, 2000)).to.deep.equal({ kind: 'continue' });
      expect(tt.field(i, Task.a)).to.equal(spinUnit(spinUnit(1) + 1));
      expect(tt.field(i, Task.work)).to.equal(2);
      expect(progress(mem)).to.equal(2n);
      expect(tt.totalWork()).to.equal(2);
    });
  });

  describe('memdirty', () => {
    it("create('memdirty', 64 pages) records the page count and starts at page 0", () => {
      const { tt } = makeTable();
      tt.create('memdirty', 64 * PAGE, 1);
      expect(tt.kind(0)).to.equal(TaskKind.MemDirty);
      expect(tt.field(0, Task.b)).to.equal(64);
      expect(tt.field(0, Task.a)).to.equal(0);
    });

    for (const pages of [64, 100, 300, 1000]) {
      for (const steps of [0, 1, 2, 3, 5, 64, 67]) {
        it(`over ${pages} pages after ${steps} steps, the pages pass QEMU's migration-test check and hold the exact counts`, () => {
          const { mem, tt } = makeTable();
          tt.create('memdirty', pages * PAGE, 1);
          const i = tt.claim(0, -1);
          for (let s = 0; s < steps; s++) expect(tt.step(i, s)).to.deep.equal({ kind: 'continue' });
          const bytes = firstBytes(mem, pages);
          const edge = checkGuestsRam(bytes);
          // Exact: the T = 256 x steps increments went page after page, wrapping at the end.
          const touches = PAGES_PER_STEP * steps;
          const cursor = touches % pages;
          expect(tt.field(i, Task.a), 'cursor').to.equal(cursor);
          const expected = Array.from({ length: pages }, (_, p) => (Math.floor(touches / pages) + (p < cursor ? 1 : 0)) & 0xff);
          expect(bytes).to.deep.equal(expected);
          // The edge, if any, is where the loop stopped.
          if (edge >= 0) expect(edge).to.equal(cursor);
          expect(tt.field(i, Task.work)).to.equal(touches);
          expect(progress(mem)).to.equal(BigInt(touches));
        });
      }
    }

    it('touches only the first byte of each of its pages', () => {
      const { mem, tt } = makeTable();
      const pages = 100;
      tt.create('memdirty', pages * PAGE, 1);
      const i = tt.claim(0, -1);
      for (let s = 0; s < 3; s++) tt.step(i, s);
      expect(firstBytes(mem, pages).every((x) => x > 0), 'every page was touched').to.equal(true);
      // Everything from the data GPA to the end of memory, with those first bytes cleared, is still zero.
      const rest = mem.read(WORKLOAD_DATA_GPA, mem.size - WORKLOAD_DATA_GPA);
      for (let p = 0; p < pages; p++) rest[p * PAGE] = 0;
      if (!Buffer.from(rest.buffer).equals(Buffer.alloc(rest.length))) {
        expect.fail(`GPA 0x${(WORKLOAD_DATA_GPA + rest.findIndex((x) => x !== 0)).toString(16)} was written`);
      }
    });

    it('the bytes wrap from 255 to 0 and the check still holds across the wrap', () => {
      const { mem, tt } = makeTable();
      tt.create('memdirty', 64 * PAGE, 1); // 4 full passes per step
      const i = tt.claim(0, -1);
      for (let s = 0; s < 64; s++) tt.step(i, s);
      expect(firstBytes(mem, 64).every((b) => b === 0)).to.equal(true); // 256 passes
      tt.step(i, 64);
      expect(firstBytes(mem, 64).every((b) => b === 4)).to.equal(true);
    });

    it('a table rebuilt over the same memory (a restored VM) continues where the loop stopped', () => {
      const { mem, tt } = makeTable();
      tt.create('memdirty', 300 * PAGE, 1);
      let i = tt.claim(0, -1);
      tt.step(i, 0);
      tt.requeue(i);
      const again = new TaskTable(mem);
      i = again.claim(1, -1);
      again.step(i, 1);
      again.step(i, 2);
      const bytes = firstBytes(mem, 300);
      expect(checkGuestsRam(bytes)).to.equal((3 * PAGES_PER_STEP) % 300);
    });
  });

  describe('counter', () => {
    it('uses the default rate of 1000/s when none is given, and publishes the rate in the workload page', () => {
      const { mem, tt } = makeTable();
      tt.create('counter', 0, 1);
      expect(tt.field(0, Task.a)).to.equal(1000);
      expect(mem.u32(WORKLOAD_PAGE_GPA + WorkloadPage.ratePerSecond)).to.equal(1000);
      tt.create('counter', 40, 1);
      expect(mem.u32(WORKLOAD_PAGE_GPA + WorkloadPage.ratePerSecond)).to.equal(40);
    });

    it('the first step only starts the clock; later steps add rate x elapsed reference time', () => {
      const { mem, tt } = makeTable();
      tt.create('counter', 1000, 1);
      const i = tt.claim(0, -1);
      let now = 5_000_000; // 0.5 s of reference time (100 ns units)
      expect(tt.step(i, now)).to.deep.equal({ kind: 'sleep', until: now + 100_000 }); // 10 ms at 1000/s
      expect(counter(mem)).to.equal(0n);
      for (let k = 0; k < 100; k++) {
        now += 100_000; // 10 ms
        tt.step(i, now);
      }
      // 1 s at 1000/s.
      expect(counter(mem)).to.equal(1000n);
      expect(progress(mem)).to.equal(1000n);
      expect(tt.field(i, Task.work)).to.equal(1000);
    });

    for (const rate of [1000, 50, 20, 7, 1]) {
      // Below 20/s the task sleeps longer than the 50 ms a step credits after a gap (1000/rate ms):
      // a step that follows its own wake-up time credits its whole period (7/s once counted 2.45/s).
      it(`following its own wake-up times at ${rate}/s, it adds rate x elapsed time (within one count)`, () => {
        const { mem, tt } = makeTable();
        tt.create('counter', rate, 1);
        const i = tt.claim(0, -1);
        const start = 1_000_000;
        let r = tt.step(i, start);
        let now = start;
        while (now - start < 60 * 10_000_000) {
          expect(r.kind).to.equal('sleep');
          const until = (r as { until: number }).until;
          expect(until - now, 'sleep period (100 ns)').to.be.closeTo(Math.max(10, 1000 / rate) * 10_000, 1e-6);
          now = until;
          r = tt.step(i, now);
        }
        const nominal = (rate * (now - start)) / 10_000_000;
        expect(Number(counter(mem)), `count after ${((now - start) / 1e7).toFixed(3)} s`).to.be.within(Math.floor(nominal) - 1, Math.floor(nominal));
      });
    }

    it('credits at most 50 ms per step after a long gap (a paused VM does not burst)', () => {
      const { mem, tt } = makeTable();
      tt.create('counter', 1000, 1);
      const i = tt.claim(0, -1);
      tt.step(i, 10_000_000);
      tt.step(i, 10_000_000 + 10 * 10_000_000); // 10 s later
      expect(counter(mem)).to.equal(50n);
    });
  });

  describe('sleep and wake-up', () => {
    it('a sleep task records its period and sleeps until the tick wakes it by kind', () => {
      const { mem, tt } = makeTable();
      tt.create('sleep', 5, 1);
      expect(tt.field(0, Task.a)).to.equal(5);
      const i = tt.claim(0, -1);
      const r = tt.step(i, 1000);
      expect(r).to.deep.equal({ kind: 'sleep', until: Infinity });
      tt.sleep(i, Infinity);
      expect(tt.state(i)).to.equal(TaskState.Sleeping);
      expect(owner(mem, i)).to.equal(-1);
      expect(tt.claim(0, -1)).to.equal(-1);
      expect(tt.earliestWake()).to.equal(Infinity);
      expect(tt.wakeDue(Number.MAX_VALUE)).to.equal(0); // no time wakes it
      expect(tt.wakeDue(0, TaskKind.Counter)).to.equal(0); // nor another kind's tick
      expect(tt.wakeDue(0, TaskKind.Sleep)).to.equal(1);
      expect(tt.state(i)).to.equal(TaskState.Runnable);
      expect(tt.wakeDue(0, TaskKind.Sleep)).to.equal(0); // already awake
      expect(tt.claim(3, -1)).to.equal(i);
      expect(tt.field(i, Task.work)).to.equal(1);
      expect(progress(mem)).to.equal(1n);
    });

    it('wakeDue wakes exactly the sleepers due by now, and earliestWake tracks the next one', () => {
      const { tt } = makeTable();
      tt.create('spin', 0, 4);
      const ids = [0, 1, 2, 3].map((vp) => tt.claim(vp, -1));
      tt.sleep(ids[0], 300);
      tt.sleep(ids[1], 100);
      tt.sleep(ids[2], 200);
      // ids[3] stays Running: neither a sleeper nor woken.
      expect(tt.earliestWake()).to.equal(100);
      expect(tt.wakeDue(99)).to.equal(0);
      expect(tt.wakeDue(100)).to.equal(1); // due at exactly now
      expect(tt.state(ids[1])).to.equal(TaskState.Runnable);
      expect(tt.earliestWake()).to.equal(200);
      expect(tt.wakeDue(1000)).to.equal(2);
      expect(tt.earliestWake()).to.equal(Infinity);
      expect(tt.state(ids[3])).to.equal(TaskState.Running);
      expect([ids[0], ids[1], ids[2]].map((i) => tt.state(i))).to.deep.equal([TaskState.Runnable, TaskState.Runnable, TaskState.Runnable]);
    });

    it('a counter task sleeps until its next period and is woken by time', () => {
      const { tt } = makeTable();
      tt.create('counter', 50, 1); // period 20 ms
      const i = tt.claim(0, -1);
      const r = tt.step(i, 1_000_000);
      expect(r).to.deep.equal({ kind: 'sleep', until: 1_000_000 + 200_000 });
      tt.sleep(i, (r as { until: number }).until);
      expect(tt.earliestWake()).to.equal(1_200_000);
      expect(tt.wakeDue(1_199_999)).to.equal(0);
      expect(tt.wakeDue(1_200_000)).to.equal(1);
      expect(tt.claim(0, -1)).to.equal(i);
    });

    it('a record of unknown kind is parked, not run', () => {
      const { mem, tt } = makeTable();
      tt.create('spin', 0, 1);
      mem.setI32(taskGpa(0) + Task.kind, 99);
      expect(tt.step(0, 0)).to.deep.equal({ kind: 'sleep', until: Infinity });
      expect(progress(mem)).to.equal(0n);
    });
  });
});
