/**
 * The contract of a device driver in the guest kernel. The kernel loads `@hvlab/vsc/<class>` for
 * every class of the registry (protocol/src/devices.ts) that has a VMBus channel and calls its
 * `createDriver`; the driver's `vmbus` half is registered with the VMBus client and attached to
 * the channel the host offers for its class. A driver's state is saved by the guest kernel into
 * guest memory (it is the guest's state), so it travels with the VM's memory.
 */
import type { DeviceClass } from '@hvlab/protocol';
import type { ShutdownRequest } from '@hvlab/protocol/shutdown';
import type { VmbusDriver } from '@hvlab/vmbus';

/** The guest's wall clock: host-independent once booted, corrected by time sync. */
export interface GuestClock {
  now(): number;
  adjust(deltaMs: number): void;
}

/** What the kernel offers its drivers. */
export interface DriverContext {
  clock: GuestClock;
  /** The host asked the guest to shut down (after the answer was sent). */
  shutdown(r: ShutdownRequest): void;
  /** The KVP auto pool: what the guest reports about itself. */
  autoValues(): Record<string, string>;
  /**
   * How many bytes of state a driver may hold at most: a saved or migrated guest parks every
   * driver's state in its device pages, so a driver whose state grows with the host's writes (KVP)
   * refuses what would not fit there. Absent: no bound beyond the driver's own.
   */
  stateBudgetBytes?(): number;
}

export interface GuestDriver<S = unknown> {
  readonly class: DeviceClass;
  readonly vmbus?: VmbusDriver;
  save(): S;
  decode(v: unknown): S | string;
  restore(state: S): void;
}

/** What `@hvlab/vsc/<class>` exports for a class with a VMBus channel. */
export interface DriverModule {
  createDriver(ctx: DriverContext): GuestDriver;
}

export class DriverLoadError extends Error {
  override name = 'DriverLoadError';
}

/**
 * The guest half of each device class, as literal imports (a bundler follows them; one built from
 * a name at run time would load a second copy of every module beside a bundle).
 */
const GUEST_HALVES: Record<DeviceClass, () => Promise<unknown>> = {
  heartbeat: () => import('./heartbeat/index.js'),
  shutdown: () => import('./shutdown/index.js'),
  timesync: () => import('./timesync/index.js'),
  kvp: () => import('./kvp/index.js'),
  cmos: () => import('./cmos/index.js'),
};

/** Loads the guest half of a device class by name. */
export async function loadDriverClass(cls: DeviceClass): Promise<DriverModule> {
  let m: unknown;
  try {
    const load = Object.hasOwn(GUEST_HALVES, cls) ? GUEST_HALVES[cls] : undefined;
    if (!load) throw new Error('no such class');
    m = await load();
  } catch (e) {
    throw new DriverLoadError(`device class "${cls}" has no guest half (@hvlab/vsc/${cls}): ${(e as Error).message}`);
  }
  const f = (m as { createDriver?: unknown } | null)?.createDriver;
  if (typeof f !== 'function') throw new DriverLoadError(`@hvlab/vsc/${cls} exports no createDriver function`);
  return m as DriverModule;
}
