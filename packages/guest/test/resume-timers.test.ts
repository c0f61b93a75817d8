/**
 * A guest resumed from a saved or migrated state programs its VPs' deadline and slice timers again
 * instead of trusting what its kernel page says they are armed for. A deadline timer that expired
 * while the hypervisor took its snapshot of the frozen VP can come back expired with its interrupt
 * in neither the virtual APIC nor taken, while the kernel page still says "armed for T" (seen in
 * the live-migration test on a loaded machine: the counter VM halted for good at the destination;
 * the state below is the one captured there). The kernel here runs in scheduled mode against a stub
 * hypervisor, and the test plays the scheduler: it grants the VP an LP, arms stimer 0 when the VP
 * writes it, and fires it when it is due — nothing wakes the VP otherwise.
 */
import { expect } from 'chai';
import {
  BOOT_INFO_GPA, BootInfo, Dispatch, GuestVector, KERNEL_PAGE_GPA, KernelPage, MAX_VPS_PER_PARTITION, StimerConfig, StimerNextView,
  Task, TaskState, TASK_TABLE_GPA, VirtualApicView, VpPage, VpRegionHeader, decodeStimerConfig, referenceTime, stimerConfig, vpPageOffset, vpRegionBytes,
} from '@hvlab/protocol';
import { futexWake } from '@hvlab/shm';
import { GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';
import { bootPage, counter, quiet, stubHv, until } from './stub-hv.js';

const MiB = 1024 * 1024;

/**
 * The scheduler's part for VP 0, polled: dispatches the VP when it starts or has an interrupt to
 * take, arms stimer 0 (one-shot, direct) when the VP writes its MSRs, and fires it when due.
 * Only a VP that armed its timer can be woken by it.
 */
function miniScheduler(region: SharedArrayBuffer): { stop: () => void; arms: () => number; fires: () => number } {
  const i32 = new Int32Array(region);
  const f64 = new Float64Array(region);
  const off = vpPageOffset(0);
  const disp = (off + VpPage.dispatch) >> 2;
  const gen = (off + VpPage.timerGen) >> 2;
  const cfg = (off + VpPage.stimerConfig) >> 2;
  const apic = new VirtualApicView(i32, off);
  const next = new StimerNextView(region, off);
  const base = new BigInt64Array(region, 0, 2);
  let seenGen = Atomics.load(i32, gen);
  let arms = 0;
  let fires = 0;
  const timer = setInterval(() => {
    if (Atomics.load(i32, gen) !== seenGen) {
      seenGen = Atomics.load(i32, gen);
      const c = decodeStimerConfig(Atomics.load(i32, cfg));
      const count = f64[(off + VpPage.stimerCount) >> 3]!;
      if (c.enable && !c.periodic && count > 0 && next.get(0) === 0) {
        next.set(0, count);
        arms++;
      }
    }
    const at = next.get(0);
    const ref = referenceTime(base[VpRegionHeader.refBaseNs >> 3]!);
    if (at > 0 && at <= ref) {
      const c = decodeStimerConfig(Atomics.load(i32, cfg));
      next.set(0, 0);
      Atomics.and(i32, cfg, ~StimerConfig.enable);
      apic.assert(c.vector);
      fires++;
    }
    const d = Atomics.load(i32, disp);
    if (d === Dispatch.Start || ((d === Dispatch.Halt || d === Dispatch.Off) && apic.deliverable() >= 0)) {
      Atomics.store(i32, disp, Dispatch.Granted);
      futexWake(region, disp);
    } else if (d === Dispatch.Halt) Atomics.store(i32, disp, Dispatch.Off);
  }, 1);
  return { stop: () => clearInterval(timer), arms: () => arms, fires: () => fires };
}

describe('a resumed guest programs its VP timers again', function () {
  this.timeout(30000);
  const kernels: GuestKernel[] = [];
  const stops: Array<() => void> = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) s();
    await Promise.all(kernels.splice(0).map((k) => k.stop().catch(() => undefined)));
  });

  it('a counter whose deadline expiry was lost between the VP state and memory counts on after the resume', async () => {
    // A guest that ran and was saved (local mode: no scheduler needed to boot it).
    const memA = new GuestMemory(new SharedArrayBuffer(8 * MiB));
    bootPage(memA, false);
    const stubA = stubHv(() => 5e9);
    const a = new GuestKernel(memA, stubA.hv, quiet, true, 'g');
    stubA.bind(a);
    kernels.push(a);
    await a.start();
    await until('counting before the save', () => counter(memA) >= 20);
    await a.stop();
    await a.quiesce();
    const savedRef = a.referenceTime();

    // The state as the failing capture had it: the counter task asleep until T, the kernel page
    // saying VP 0's deadline timer is armed for T, T already past; and the saved VP state with
    // that timer expired (one-shot, so disabled; no expiration) and no Deadline interrupt pending.
    const T = savedRef - 1000;
    const memB = new GuestMemory(new SharedArrayBuffer(8 * MiB));
    memB.write(0, memA.read(0, memA.size));
    memB.setU32(BOOT_INFO_GPA + BootInfo.resume, 1);
    memB.atomicStore32(TASK_TABLE_GPA + Task.state, TaskState.Sleeping);
    memB.setF64(TASK_TABLE_GPA + Task.wakeAt, T);
    memB.setF64(KERNEL_PAGE_GPA + KernelPage.deadlineArmed, T);
    memB.atomicStore32(KERNEL_PAGE_GPA + KernelPage.currentTask, -1);
    const region = new SharedArrayBuffer(vpRegionBytes(MAX_VPS_PER_PARTITION));
    new BigInt64Array(region, 0, 2)[VpRegionHeader.refBaseNs >> 3] = process.hrtime.bigint() - BigInt(savedRef) * 100n;
    const off = vpPageOffset(0);
    Atomics.store(new Int32Array(region), (off + VpPage.stimerConfig) >> 2, stimerConfig({ enable: false, direct: true, vector: GuestVector.Deadline }));
    new Float64Array(region)[(off + VpPage.stimerCount) >> 3] = T;
    const c0 = counter(memB);

    const sched = miniScheduler(region);
    stops.push(sched.stop);
    const stubB = stubHv(() => savedRef);
    const b = new GuestKernel(memB, stubB.hv, quiet, true, 'g', { vp: region, sched: new SharedArrayBuffer(4096) });
    stubB.bind(b);
    kernels.push(b);
    await b.start();
    // One wake-up can credit up to 50 ms of counting (workloads.ts), so 20 counts alone may take a
    // single timer: wait for the VP to be woken by a deadline it armed again after that one. A VP
    // that trusts the stale kernel page halts for good and never arms one (this times out).
    await until('counting again after the resume, woken twice by its deadline timer', () => counter(memB) >= c0 + 20 && sched.arms() >= 2 && sched.fires() >= 2);
    expect(sched.arms(), 'deadline timers the VP armed').to.be.at.least(2);
    expect(sched.fires()).to.be.at.least(2);
  });
});
