/**
 * The contract of a virtual device on the host side. The VM's worker process builds one device
 * per entry of the VM's `devices` list (protocol/src/devices.ts) by loading `@hvlab/vsp/<class>`
 * and calling its `createDevice`, then plugs in whichever capabilities the device asks for:
 *
 *   vmbus   a synthetic device: offered on the VM's VMBus, opened and closed by the guest
 *   portIo  an emulated legacy device: the port ranges of its class are intercepted and every
 *           access is handed to it
 *
 * Every device saves and restores its own state (its `state.ts`: versioned plain data and a
 * checking decoder) and is closed when the VM goes away. The VMWP knows nothing else of a class.
 */
import type { DeviceClass, DeviceEntry } from '@hvlab/protocol';
import type { VmbusDevice } from '@hvlab/vmbus';

export interface DeviceLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
  child?: (b: object) => DeviceLog;
}

/** What a device is told about its VM when it is created. */
export interface DeviceContext {
  vm: string;
  partitionId: number;
  entry: DeviceEntry;
  /** The device's instance id: a UUID stable for this VM and device id (a VMBus offer's instance). */
  instance: string;
  log: DeviceLog;
  /** Seconds the VM's real-time clock is off host time at power-on (the CMOS clock's setting). */
  rtcOffsetS: number;
  /** Intervals of the periodic integration services (tests shorten them). */
  timing: { heartbeatMs: number; timesyncMs: number };
}

/** A port-I/O capability: the handler of every intercepted access to the class's port ranges. */
export interface PortIoHandler {
  /** One access; returns the value read (a write returns 0). Must not throw on any input. */
  access(port: number, write: boolean, value: number, size: number): number;
}

export interface VirtualDevice<S = unknown> {
  readonly class: DeviceClass;
  readonly id: string;
  readonly vmbus?: VmbusDevice;
  readonly portIo?: PortIoHandler;
  /** What `vm devices` and `vm ic` show of it (plain data). */
  status(): Record<string, unknown>;
  /** The device's saved state (plain data); must not change the device. */
  save(): S;
  /** Checks a saved state read from outside (the class's decoder): the state or a sentence. */
  decode(v: unknown): S | string;
  /** Puts a decoded state back, on a fresh device, before the guest runs. */
  restore(state: S): void;
  close(): void;
}

/** What `@hvlab/vsp/<class>` exports. */
export interface DeviceModule {
  createDevice(ctx: DeviceContext): VirtualDevice;
}

export class DeviceLoadError extends Error {
  override name = 'DeviceLoadError';
}

/**
 * The host half of each device class, as literal imports (a bundler follows them; one built from a
 * name at run time would load a second copy of every module beside a bundle).
 */
const HOST_HALVES: Record<DeviceClass, () => Promise<unknown>> = {
  heartbeat: () => import('./heartbeat/index.js'),
  shutdown: () => import('./shutdown/index.js'),
  timesync: () => import('./timesync/index.js'),
  kvp: () => import('./kvp/index.js'),
  cmos: () => import('./cmos/index.js'),
};

/** Loads the host half of a device class by name. */
export async function loadDeviceClass(cls: DeviceClass): Promise<DeviceModule> {
  let m: unknown;
  try {
    const load = Object.hasOwn(HOST_HALVES, cls) ? HOST_HALVES[cls] : undefined;
    if (!load) throw new Error('no such class');
    m = await load();
  } catch (e) {
    throw new DeviceLoadError(`device class "${cls}" has no host half (@hvlab/vsp/${cls}): ${(e as Error).message}`);
  }
  const f = (m as { createDevice?: unknown } | null)?.createDevice;
  if (typeof f !== 'function') throw new DeviceLoadError(`@hvlab/vsp/${cls} exports no createDevice function`);
  return m as DeviceModule;
}
