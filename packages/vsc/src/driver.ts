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

/** Loads the guest half of a device class by name. */
export async function loadDriverClass(cls: DeviceClass): Promise<DriverModule> {
  let m: unknown;
  try {
    m = await import(`@hvlab/vsc/${cls}`);
  } catch (e) {
    throw new DriverLoadError(`device class "${cls}" has no guest half (@hvlab/vsc/${cls}): ${(e as Error).message}`);
  }
  const f = (m as { createDriver?: unknown } | null)?.createDriver;
  if (typeof f !== 'function') throw new DriverLoadError(`@hvlab/vsc/${cls} exports no createDriver function`);
  return m as DriverModule;
}
