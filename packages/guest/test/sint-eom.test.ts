/**
 * The guest's half of the SynIC message-slot protocol: it frees a slot and only then reads
 * MessagePending, as Linux's vmbus_signal_eom does. The hypervisor sets MessagePending on a taken
 * slot when another message queues behind it; a guest that read the flag before freeing the slot
 * could read it clear, free the slot, and never send the EOM that delivers the next message: its
 * VMBus then waited for good (seen once in ~150 VM starts: "no ALLOFFERS_DELIVERED from the host
 * within 10000 ms", the VM Running without VMBus). Here the hypervisor's flag lands at the worst
 * moment, just before the guest frees the slot, and the guest must still send the EOM.
 */
import { expect } from 'chai';
import { BOOT_INFO_GPA, BootInfo, encodeChannelMessage, EVENT_FLAG_BYTES_PER_SINT, MESSAGE_HEADER_SIZE, MSG_FLAG_PENDING, MsgHeader, simpGpa, siefpGpa, MESSAGE_SLOT_SIZE, VMBUS_CHANNEL_MESSAGE_TYPE } from '@hvlab/protocol';
import type { HvClient } from '@hvlab/runtime';
import { GUEST_SINT, GuestKernel } from '../src/kernel.js';
import { GuestMemory } from '../src/memory.js';
import { bootPage, counter, quiet, stubHv, until } from './stub-hv.js';

const SINT = 5;
const slotGpa = simpGpa(0) + SINT * MESSAGE_SLOT_SIZE;

/** Guest memory whose slot-freeing exchange first lets `beforeFree` run (the hypervisor, racing). */
class RacingMemory extends GuestMemory {
  beforeFree: (() => void) | null = null;
  override atomicExchange32(gpa: number, v: number): number {
    if (gpa === slotGpa + MsgHeader.type && this.beforeFree) {
      const f = this.beforeFree;
      this.beforeFree = null;
      f();
    }
    return super.atomicExchange32(gpa, v);
  }
}

function setup(): { mem: RacingMemory; kernel: GuestKernel; eoms: () => number } {
  const mem = new RacingMemory(new SharedArrayBuffer(2 * 1024 * 1024));
  let eoms = 0;
  const hv = {
    async call(name: string, input: { values?: Record<string, number> }) {
      if (name === 'SetVpRegisters' && input.values && 'Eom' in input.values) eoms++;
      return { status: 0, statusName: 'SUCCESS', reps: 0, output: null };
    },
  } as unknown as HvClient;
  return { mem, kernel: new GuestKernel(mem, hv, quiet, false, 'eom-test'), eoms: () => eoms };
}

function deliver(mem: GuestMemory, type: number, pending: boolean): void {
  mem.write(slotGpa + MESSAGE_HEADER_SIZE, new Uint8Array([1, 2, 3, 4]));
  mem.setU8(slotGpa + MsgHeader.payloadSize, 4);
  mem.setU8(slotGpa + MsgHeader.flags, pending ? MSG_FLAG_PENDING : 0);
  mem.atomicStore32(slotGpa + MsgHeader.type, type);
}

describe('SynIC message slot, guest side (EOM after freeing the slot)', () => {
  it('a MessagePending set just before the guest frees the slot still gets its EOM', async () => {
    const { mem, kernel, eoms } = setup();
    deliver(mem, 0x100, false);
    mem.beforeFree = () => mem.setU8(slotGpa + MsgHeader.flags, MSG_FLAG_PENDING);
    await kernel.onSint(0, SINT);
    expect(mem.atomicLoad32(slotGpa + MsgHeader.type), 'the slot is free').to.equal(0);
    expect(eoms(), 'EOM sent for the message queued behind').to.equal(1);
  });

  it('no EOM when nothing is pending, one when the hypervisor said so at delivery', async () => {
    const { mem, kernel, eoms } = setup();
    deliver(mem, 0x100, false);
    await kernel.onSint(0, SINT);
    expect(eoms()).to.equal(0);
    deliver(mem, 0x100, true);
    await kernel.onSint(0, SINT);
    expect(eoms()).to.equal(1);
  });
});

describe('SynIC pages while a resumed guest restores its VMBus client', () => {
  const vmbusSlot = simpGpa(0) + GUEST_SINT * MESSAGE_SLOT_SIZE;
  const flags = siefpGpa(0) + GUEST_SINT * EVENT_FLAG_BYTES_PER_SINT;
  const resuming = (k: GuestKernel, on: boolean): void => {
    (k as unknown as { vmbusResuming: boolean }).vmbusResuming = on;
  };

  it('leaves VMBus messages and events for the scan after the restore, then takes them', async () => {
    const { mem, kernel } = setup();
    mem.write(vmbusSlot + MESSAGE_HEADER_SIZE, new Uint8Array([1, 2, 3, 4]));
    mem.setU8(vmbusSlot + MsgHeader.payloadSize, 4);
    mem.atomicStore32(vmbusSlot + MsgHeader.type, VMBUS_CHANNEL_MESSAGE_TYPE);
    mem.atomicStore32(flags, 1 << 3); // relid 3, set by the hypervisor
    resuming(kernel, true);
    await kernel.onSint(0, GUEST_SINT);
    // An event handed over with the interrupt (private memory) is kept as its flag.
    await kernel.onSint(0, GUEST_SINT, undefined, 37);
    expect(mem.atomicLoad32(vmbusSlot + MsgHeader.type), 'the message waits in its slot').to.equal(VMBUS_CHANNEL_MESSAGE_TYPE);
    expect(mem.atomicLoad32(flags) >>> 0, 'relid 3 still flagged').to.equal(1 << 3);
    expect(mem.atomicLoad32(flags + 4) >>> 0, 'relid 37 flagged').to.equal(1 << 5);
    // Other SINTs are not held back.
    deliver(mem, 0x100, false);
    await kernel.onSint(0, SINT);
    expect(mem.atomicLoad32(slotGpa + MsgHeader.type)).to.equal(0);
    resuming(kernel, false);
    await kernel.onSint(0, GUEST_SINT);
    expect(mem.atomicLoad32(vmbusSlot + MsgHeader.type), 'taken after the restore').to.equal(0);
    expect(mem.atomicLoad32(flags), 'flags taken').to.equal(0);
    expect(mem.atomicLoad32(flags + 4)).to.equal(0);
  });

  it('a resume ends the hold: the message queued during the blackout reaches the restored VMBus client', async () => {
    const memA = new GuestMemory(new SharedArrayBuffer(8 * 1024 * 1024));
    bootPage(memA, false);
    const stubA = stubHv(() => 5e9);
    const a = new GuestKernel(memA, stubA.hv, quiet, true, 'g');
    stubA.bind(a);
    const kernels = [a];
    try {
      await a.start();
      await until('counting before the save', () => counter(memA) >= 5);
      await a.stop();
      await a.quiesce();
      const memB = new GuestMemory(new SharedArrayBuffer(8 * 1024 * 1024));
      memB.write(0, memA.read(0, memA.size));
      memB.setU32(BOOT_INFO_GPA + BootInfo.resume, 1);
      // A message the host queued while the VM was frozen.
      const m = encodeChannelMessage({ type: 'AllOffersDelivered' });
      memB.write(vmbusSlot + MESSAGE_HEADER_SIZE, m);
      memB.setU8(vmbusSlot + MsgHeader.payloadSize, m.length);
      memB.atomicStore32(vmbusSlot + MsgHeader.type, VMBUS_CHANNEL_MESSAGE_TYPE);
      const stubB = stubHv(() => a.referenceTime());
      const b = new GuestKernel(memB, stubB.hv, quiet, true, 'g');
      stubB.bind(b);
      kernels.push(b);
      await b.start();
      expect((b as unknown as { vmbusResuming: boolean }).vmbusResuming).to.equal(false);
      expect(memB.atomicLoad32(vmbusSlot + MsgHeader.type), 'the slot was taken').to.equal(0);
      expect(b.vmbus!.stats.messages, 'by the restored client').to.equal(1);
    } finally {
      await Promise.all(kernels.map((k) => k.stop().catch(() => undefined)));
    }
  });
});
