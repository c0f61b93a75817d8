/**
 * The one generic saved-state test, for every component that has a state.ts: run it, save it,
 * encode (JSON, as on disk), decode with its own checking decoder, restore into a fresh
 * component, continue, and compare with a run of the same inputs that never stopped.
 *
 * Every device class of the registry (protocol/src/devices.ts) is covered by loading its host
 * half (`@hvlab/vsp/<class>`) and, for a VMBus class, its guest half (`@hvlab/vsc/<class>`) over
 * an in-process VMBus pair whose server and client are saved and restored too; a class without a
 * script here fails the test, so a new class cannot skip it. The guest kernel's own components
 * (the device-page allocator) follow. Hypervisor VP state (registers, APIC, SynIC queues,
 * intercepts) has its round trips in packages/hypervisor/test/vp-state.test.ts; VMBus channels
 * with packets in flight in packages/vmbus/test/state.test.ts.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { decodeDeviceEntries, DEVICE_CLASS_NAMES, DEVICE_CLASSES, type DeviceClass } from '@hvlab/protocol';
import { VmbusLoopback, MemoryFrameNetwork, decodeVmbusClientState, decodeVmbusServerState } from '@hvlab/vmbus';
import { loadDeviceClass, type VirtualDevice } from '@hvlab/vsp';
import { loadDriverClass, type GuestDriver } from '@hvlab/vsc';
import type { KvpProvider } from '@hvlab/vsp/kvp';
import type { HeartbeatProvider } from '@hvlab/vsp/heartbeat';
import type { ShutdownProvider } from '@hvlab/vsp/shutdown';
import type { TimeSyncProvider } from '@hvlab/vsp/timesync';
import { PageAllocator, decodeKernelState, decodePageAllocatorState } from '@hvlab/guest';
import { decodeProcessorState, decodeSavedVm } from '../packages/root/src/saved-state.js';
import { buildConfig, decodeVmConfig } from '../packages/root/src/config.js';

const quiet = { info: () => {}, warn: () => {}, child: () => quiet };

async function until(cond: () => boolean, what: string, ms = 8000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** What the guest side saw of the kernel: shutdown requests, and its clock. */
interface GuestSide {
  shutdowns: number[];
  clockMs: number;
}

interface Rig {
  device: VirtualDevice;
  driver: GuestDriver | null;
  lb: VmbusLoopback | null;
  guest: GuestSide;
}

const host = <T>(r: Rig): T => r.device.vmbus as unknown as T;
const guestState = (r: Rig): Record<string, unknown> => r.driver!.save() as Record<string, unknown>;

/**
 * Per class: deterministic inputs (`ops`), where to save (`split`), and what must come out the same
 * as a run that never stopped (`observe`). Periodic services run on a short interval; their
 * observation is what a continued service must show (a sequence that went on from the saved one,
 * versions kept), which a service that had started over would not.
 */
interface Script {
  ops: Array<(r: Rig) => Promise<void>>;
  split: number;
  observe(r: Rig): unknown;
}

const cmosIo = (r: Rig, port: number, write: boolean, value = 0): number => r.device.portIo!.access(port, write, value, 1);
const cmosReads: number[] = [];

const SCRIPTS: Record<DeviceClass, Script> = {
  heartbeat: {
    ops: [
      (r) => until(() => host<HeartbeatProvider>(r).sequence >= 3n, 'heartbeat 3'),
      (r) => until(() => host<HeartbeatProvider>(r).sequence >= 5n, 'heartbeat 5'),
      (r) => until(() => host<HeartbeatProvider>(r).sequence >= 9n, 'heartbeat 9'),
    ],
    split: 2,
    observe: (r) => {
      const h = host<HeartbeatProvider>(r);
      const g = BigInt(guestState(r).sequence as string);
      // The guest answers what it was asked plus one: its count is the host's or one ahead.
      return { negotiated: h.negotiated, reached9: h.sequence >= 9n, guestAgrees: g === h.sequence || g === h.sequence + 1n, status: h.status() };
    },
  },
  shutdown: {
    ops: [
      async () => undefined,
      (r) => host<ShutdownProvider>(r).shutdown({ flags: 2, reason: 7, message: 'restart for the test' }),
      (r) => until(() => r.guest.shutdowns.length === 1, 'the guest took the request'),
    ],
    split: 1,
    observe: (r) => ({ negotiated: host<ShutdownProvider>(r).negotiated, shutdowns: r.guest.shutdowns }),
  },
  timesync: {
    ops: [
      (r) => until(() => host<TimeSyncProvider>(r).samples >= 1, 'the first time sample'),
      (r) => until(() => host<TimeSyncProvider>(r).samples >= 1, 'a time sample'),
    ],
    split: 1,
    observe: (r) => {
      const t = host<TimeSyncProvider>(r);
      const g = guestState(r);
      return { negotiated: t.negotiated, sampled: t.samples >= 1, guestCorrected: typeof g.lastOffsetMs === 'number', offsetSmall: Math.abs(t.offsetMs ?? 1e9) < 1000 };
    },
  },
  kvp: {
    ops: [
      (r) => host<KvpProvider>(r).set('external', 'a', '1'),
      (r) => host<KvpProvider>(r).set('external', 'b', '2'),
      (r) => host<KvpProvider>(r).delete('external', 'a').then(() => undefined),
      (r) => host<KvpProvider>(r).set('external', 'c', 'three'),
    ],
    split: 2,
    observe: async (r) => {
      const k = host<KvpProvider>(r);
      const g = guestState(r);
      return { external: await k.list('external'), guestPoolSaved: g.external, guestPool: g.guest, negotiated: k.negotiated };
    },
  },
  cmos: {
    ops: [
      async (r) => { cmosIo(r, 0x70, true, 0x20); cmosIo(r, 0x71, true, 0x99); },
      async (r) => { cmosIo(r, 0x70, true, 0x8b); cmosIo(r, 0x71, true, 0x06); },
      async (r) => { cmosReads.push(cmosIo(r, 0x71, false)); cmosIo(r, 0x70, true, 0x20); cmosReads.push(cmosIo(r, 0x71, false)); },
      async (r) => { cmosIo(r, 0x70, true, 0x21); cmosIo(r, 0x71, true, 0x42); cmosReads.push(cmosIo(r, 0x71, false)); },
    ],
    split: 2,
    observe: (r) => {
      const s = r.device.save() as { nvram: number[]; index: number };
      return { nvram: s.nvram, index: s.index, reads: cmosReads.splice(0) };
    },
  },
};

/** Builds one VM's worth of a device class: its host half, and for a VMBus class its guest half on a fresh VMBus pair. */
async function build(cls: DeviceClass, memory?: SharedArrayBuffer, nextFreePage?: number): Promise<Rig> {
  const dev = (await loadDeviceClass(cls)).createDevice({
    vm: 'v', partitionId: 1, entry: { class: cls, id: cls, enabled: true }, instance: '6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b',
    log: quiet, rtcOffsetS: 0, timing: { heartbeatMs: 20, timesyncMs: 3_600_000 },
  });
  const guest: GuestSide = { shutdowns: [], clockMs: Date.now() };
  if (!DEVICE_CLASSES[cls].vmbus) return { device: dev, driver: null, lb: null, guest };
  const driver = (await loadDriverClass(cls)).createDriver({
    clock: { now: () => guest.clockMs, adjust: (d) => { guest.clockMs += d; } },
    shutdown: (req) => guest.shutdowns.push(req.flags),
    autoValues: () => ({ OSName: 'test' }),
  });
  const lb = new VmbusLoopback({ transport: 'shm', frames: new MemoryFrameNetwork(), ...(memory ? { memory } : {}), ...(nextFreePage !== undefined ? { nextFreePage } : {}) });
  lb.client.register(driver.vmbus!);
  await lb.start();
  await lb.server.addDevice(dev.vmbus!);
  return { device: dev, driver, lb, guest };
}

function close(r: Rig): void {
  r.device.close();
  r.lb?.close();
}

/** JSON, then the component's own decoder: what a restore would be handed. */
function throughDisk<S>(state: S, decode: (v: unknown) => S | string): S {
  const d = decode(JSON.parse(JSON.stringify(state)));
  if (typeof d === 'string') throw new Error(`the decoder refused a state its component saved: ${d}`);
  return d;
}

async function run(cls: DeviceClass, stopAndRestore: boolean): Promise<{ observed: unknown; restoredExactly: boolean | null; messagesAfterRestore: number | null }> {
  const script = SCRIPTS[cls];
  let r = await build(cls);
  if (r.lb) {
    await r.lb.client.connect();
    await until(() => (host<{ negotiated: unknown }>(r).negotiated !== null), `${cls} negotiated`);
  }
  const ops = script.ops;
  const first = stopAndRestore ? script.split : ops.length;
  for (let i = 0; i < first; i++) await ops[i](r);
  let restoredExactly: boolean | null = null;
  let messagesAfterRestore: number | null = null;
  if (stopAndRestore) {
    // Save: every component of the VM at one moment, then through JSON and its decoder.
    await r.lb?.server.whenIdle();
    await r.lb?.client.whenIdle();
    const devState = throughDisk(r.device.save(), (v) => r.device.decode(v));
    const drvState = r.driver ? throughDisk(r.driver.save(), (v) => r.driver!.decode(v)) : null;
    const srv = r.lb ? throughDisk(r.lb.server.save(), decodeVmbusServerState) : null;
    const cli = r.lb ? throughDisk(r.lb.client.save(), decodeVmbusClientState) : null;
    const memory = r.lb ? new SharedArrayBuffer(r.lb.memory.byteLength) : undefined;
    if (memory) new Uint8Array(memory).set(new Uint8Array(r.lb!.memory));
    const nextFreePage = r.lb?.nextFreePage;
    const guest = r.guest;
    close(r);
    // Restore into fresh components over the same memory.
    r = await build(cls, memory, nextFreePage);
    r.guest.shutdowns = guest.shutdowns;
    r.guest.clockMs = guest.clockMs;
    r.device.restore(devState);
    r.driver?.restore(drvState);
    restoredExactly = JSON.stringify(r.device.save()) === JSON.stringify(devState) && (!r.driver || JSON.stringify(r.driver.save()) === JSON.stringify(drvState));
    if (r.lb) {
      await r.lb.server.restore(srv!);
      await r.lb.client.restore(cli!);
    }
    for (let i = first; i < ops.length; i++) await ops[i](r);
    messagesAfterRestore = r.lb ? r.lb.toGuest.length + r.lb.toHost.length : 0;
  }
  const observed = await script.observe(r);
  close(r);
  return { observed, restoredExactly, messagesAfterRestore };
}

describe('saved state of every component: save, encode, decode, restore, continue', function () {
  this.timeout(60000);

  it('every device class of the registry has a round-trip script here', () => {
    expect(Object.keys(SCRIPTS).sort()).to.deep.equal([...DEVICE_CLASS_NAMES].sort());
  });

  for (const cls of DEVICE_CLASS_NAMES) {
    it(`${cls}: a run saved and restored midway ends as a run that never stopped, without negotiating again`, async () => {
      const straight = await run(cls, false);
      const restored = await run(cls, true);
      expect(restored.restoredExactly, 'restore puts back exactly what was saved').to.equal(true);
      expect(restored.messagesAfterRestore, 'no VMBus channel message after the restore (no re-negotiation)').to.equal(0);
      expect(restored.observed).to.deep.equal(straight.observed);
    });
  }

  it('the guest kernel\'s device-page allocator: allocations after a restore are those of a run that never stopped', () => {
    const ops = (a: PageAllocator, from: number, to: number, out: number[]): void => {
      const script: Array<[number, number] | number> = [3, 5, [0, 3], 2, 7, [1, 5], 4, 1, [4, 1], 6];
      for (let i = from; i < to; i++) {
        const s = script[i];
        if (typeof s === 'number') out.push(a.alloc(s));
        else a.release(out[s[0]], s[1]);
      }
    };
    const straight: number[] = [];
    const a = new PageAllocator(100, 200);
    ops(a, 0, 10, straight);
    const restored: number[] = [];
    const b = new PageAllocator(100, 200);
    ops(b, 0, 5, restored);
    const s = throughDisk(b.save(), (v) => decodePageAllocatorState(v, 100, 200));
    const c = new PageAllocator(100, 200);
    c.restore(s);
    expect(c.save()).to.deep.equal(b.save());
    ops(c, 5, 10, restored);
    expect(restored).to.deep.equal(straight);
    expect(c.save()).to.deep.equal(a.save());
    // Its decoder keeps a state inside the allocator's range.
    expect(decodePageAllocatorState({ ...b.save(), top: 250 }, 100, 200)).to.match(/pages\.top/);
    expect(decodePageAllocatorState({ ...b.save(), free: [{ pfn: 10, count: 1 }] }, 100, 200)).to.match(/pages\.free\[0\]/);
    expect(decodePageAllocatorState({ ...b.save(), version: 2 }, 100, 200)).to.match(/version/);
  });

  /**
   * Every saved-state decoder is an edge where bytes enter a process (a state.json, guest memory
   * of a restored VM): random values and valid states with one value replaced anywhere are either
   * accepted or refused with a sentence — never a throw.
   */
  it('no state decoder throws on random input or on a valid state with any one value replaced', async () => {
    const decoders: Array<{ name: string; decode: (v: unknown) => unknown; valid: unknown }> = [];
    for (const cls of DEVICE_CLASS_NAMES) {
      const r = await build(cls);
      if (r.lb) {
        await r.lb.client.connect();
        await until(() => (host<{ negotiated: unknown }>(r).negotiated !== null), `${cls} negotiated`);
        await r.lb.server.whenIdle();
        await r.lb.client.whenIdle();
        decoders.push({ name: 'vmbus server', decode: decodeVmbusServerState, valid: r.lb.server.save() });
        decoders.push({ name: 'vmbus client', decode: decodeVmbusClientState, valid: r.lb.client.save() });
        decoders.push({ name: `${cls} driver`, decode: (v) => r.driver!.decode(v), valid: r.driver!.save() });
        decoders.push({
          name: 'guest kernel', decode: (v) => decodeKernelState(v, { floor: 100, end: 200 }),
          valid: { version: 1, vmbus: r.lb.client.save(), pages: new PageAllocator(100, 200).save(), drivers: { [cls]: r.driver!.save() } },
        });
      }
      decoders.push({ name: `${cls} device`, decode: (v) => r.device.decode(v), valid: r.device.save() });
      close(r);
    }
    decoders.push({ name: 'processor', decode: decodeProcessorState, valid: { version: 1, reserve: 0, maximum: 100, weight: 100 } });
    decoders.push({ name: 'device list', decode: decodeDeviceEntries, valid: DEVICE_CLASS_NAMES.map((c) => ({ class: c, id: c, enabled: true })) });
    // The two files VMMS reads back for a VM: its configuration and its saved state's tree.
    const config = buildConfig({ name: 'c1', memory: '32M', vps: '2', workload: 'memdirty:1M' });
    decoders.push({ name: 'VM config', decode: (v) => decodeVmConfig(v, 'c1'), valid: config });
    const vpState = {
      registers: { Rip: 0x1000, Rsp: 0x8000, Rflags: 2 },
      apic: { irr: new Array<number>(8).fill(0), isr: new Array<number>(8).fill(0), aeoi: new Array<number>(8).fill(0), tpr: 0 },
      synic: { scontrol: 1, simp: 0x3000, siefp: 0x4000, sint: new Array<number>(16).fill(0x10000) },
      timers: [0, 1, 2, 3].map(() => ({ config: 0, count: 0, nextExpiry: 0 })),
      referenceTime: 123456, runState: 'Suspended', interceptPending: false,
    };
    decoders.push({
      name: 'saved VM', decode: (v) => decodeSavedVm(v, { name: 'c1', memoryBytes: config.memoryBytes, vps: 2 }),
      valid: {
        version: 2, savedAt: '2026-11-30T12:00:00.000Z',
        vm: { name: 'c1', id: config.id, memoryBytes: config.memoryBytes, vps: 2, workload: config.workload },
        memory: { file: 'memory.bin', bytes: config.memoryBytes, sha256: 'ab'.repeat(32) },
        partition: { referenceTime: 123456, vps: [vpState, vpState] },
        components: { vmbus: { version: 1 }, processor: { version: 1, reserve: 0, maximum: 100, weight: 100 } },
      },
    });
    const valid = JSON.parse(JSON.stringify(decoders.map((d) => d.valid))) as unknown[];
    decoders.forEach((d, i) => {
      const out = d.decode(valid[i]);
      expect(typeof out, `${d.name} takes its own saved state: ${String(out)}`).to.not.equal('string');
    });
    // Replace the value at a random path of a valid state with an arbitrary value.
    const replaceAt = (v: unknown, path: number[], x: unknown): unknown => {
      if (path.length === 0 || v === null || typeof v !== 'object') return x;
      const keys = Object.keys(v as object);
      if (keys.length === 0) return x;
      const k = keys[path[0] % keys.length];
      const copy: Record<string, unknown> = Array.isArray(v) ? ([...v] as unknown as Record<string, unknown>) : { ...(v as Record<string, unknown>) };
      copy[k] = replaceAt((v as Record<string, unknown>)[k], path.slice(1), x);
      return copy;
    };
    const weird = fc.oneof(fc.jsonValue(), fc.constantFrom(NaN, Infinity, -1, 2 ** 53, 1e999, -0, '', '\ud800', null, [], {}, { version: 2 }, { toString: 1 }));
    let runs = 0;
    fc.assert(fc.property(fc.nat(decoders.length - 1), fc.array(fc.nat(64), { maxLength: 6 }), weird, (i, path, x) => {
      runs++;
      const out = decoders[i].decode(replaceAt(valid[i], path, x));
      return typeof out === 'string' || (typeof out === 'object' && out !== null);
    }), { numRuns: 3000 });
    fc.assert(fc.property(fc.nat(decoders.length - 1), fc.anything(), (i, x) => {
      const out = decoders[i].decode(x);
      return typeof out === 'string' || (typeof out === 'object' && out !== null);
    }), { numRuns: 1000 });
    expect(runs).to.equal(3000);
  });
});
