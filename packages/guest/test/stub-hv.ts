/**
 * What the guest kernel's in-process tests share: a quiet logger, a hypervisor stand-in (reference
 * time on request, every other call succeeds, VMBus says hello and offers nothing), a boot page for
 * a one-VP counter VM, the counter, and a poll that fails with a sentence.
 */
import {
  BOOT_INFO_GPA, BOOT_MAGIC, BootInfo, VMBUS_CHANNEL_MESSAGE_TYPE, WORKLOAD_PAGE_GPA, WorkloadPage,
  decodeChannelMessage, encodeChannelMessage, type ChannelMessage,
} from '@hvlab/protocol';
import type { HvClient, Logger } from '@hvlab/runtime';
import type { GuestKernel } from '../src/kernel.js';
import type { GuestMemory } from '../src/memory.js';

export const CONTROL_CONNECTION = 0x100;
export const quiet = { info() {}, warn() {}, error() {}, debug() {}, child() { return quiet; } } as unknown as Logger;

export function stubHv(referenceTime: () => number): { hv: HvClient; bind: (k: GuestKernel) => void } {
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

/** The firmware's boot page of a one-VP VM running the counter workload (1000 a second). */
export function bootPage(mem: GuestMemory, resume: boolean): void {
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

export const counter = (mem: GuestMemory): number => Number(mem.atomicLoad64(WORKLOAD_PAGE_GPA + WorkloadPage.counter));

export async function until(what: string, cond: () => boolean, ms = 10000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
