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
  BOOT_INFO_GPA, BOOT_MAGIC, BootInfo, Dispatch, GuestVector, KERNEL_PAGE_GPA, KernelPage, MAX_VPS_PER_PARTITION, StimerConfig, StimerNextView,
  Task, TaskState, TASK_TABLE_GPA, VMBUS_CHANNEL_MESSAGE_TYPE, VirtualApicView, VpPage, VpRegionHeader, WORKLOAD_PAGE_GPA, WorkloadPage,
  decodeChannelMessage, decodeStimerConfig, encodeChannelMessage, referenceTime, stimerConfig, vpPageOffset, vpRegionBytes, type ChannelMessage,
} from '@hvlab/protocol';
import { futexWake } from '@hvlab/shm';
import type { HvClient, Logger } from '@hvlab/runtime';
import { GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';

const MiB = 1024 * 1024;
const CONTROL_CONNECTION = 0x100;
const quiet = { info() {}, warn() {}, error() {}, debug() {}, child() { return quiet; } } as unknown as Logger;

/** A hypervisor stand-in: reference time on request, every other call succeeds, VMBus says hello and offers nothing. */
function stubHv(referenceTime: () => number): { hv: HvClient; bind: (k: GuestKernel) => void } {
  let kernel: GuestKernel | null = null;
  const reply = (m: ChannelMessage): ChannelMessage | null => {
    if (m.type === 'InitiateContact') return { type: 'VersionResponse', versionSupported: true, connectionState: 0, messageConnectionId: 4 };
    if (m.type === 'RequestOffers') return { type: 'AllOffersDelivered' };
    if (m.type === 'Unload') return { type: 'UnloadResponse' };
    return null;
  };
  const ok = (output: unknown = {}): unknown => ({ status: 0, statusName: 'SUCCESS', output });
  const hv = {
    async call(name: string, input: { connectionId?: number; messageType?: number; payload?: Uint8Array }) {
      if (name === 'GetVpRegisters') return ok({ values: { ReferenceTime: referenceTime() } });
      if (name === 'PostMessage' && input.connectionId !== CONTROL_CONNECTION && input.messageType === VMBUS_CHANNEL_MESSAGE_TYPE) {
        const r = reply(decodeChannelMessage(input.payload!));
        if (r) setImmediate(() => kernel?.vmbus?.onMessage(encodeChannelMessage(r)));
      }
      return ok();
    },
    async must() {
      return {};
    },
  } as unknown as HvClient;
  return { hv, bind: (k) => (kernel = k) };
}

function bootPage(mem: GuestMemory, resume: boolean): void {
  const b = BOOT_INFO_GPA;
  mem.setU32(b + BootInfo.magic, BOOT_MAGIC);
  mem.setU32(b + BootInfo.vpCount, 1);
  mem.setU64(b + BootInfo.memoryBytes, BigInt(mem.size));
  mem.setU32(b + BootInfo.controlConnectionId, CONTROL_CONNECTION);
  mem.setU64(b + BootInfo.workloadArg, 1000n);
  mem.write(b + BootInfo.workloadName, new TextEncoder().encode('counter\0'));
  mem.setF64(b + BootInfo.rtcMs, 1_600_000_000_000);
  mem.setU32(b + BootInfo.resume, resume ? 1 : 0);
}

const counter = (mem: GuestMemory): number => Number(mem.atomicLoad64(WORKLOAD_PAGE_GPA + WorkloadPage.counter));

async function until(what: string, cond: () => boolean, ms = 10000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

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
    await until('counting again after the resume', () => counter(memB) >= c0 + 20);
    expect(sched.arms(), 'deadline timers the VP armed').to.be.at.least(2);
    expect(sched.fires()).to.be.at.least(1);
  });
});
