/**
 * The device-class registry: every kind of virtual device hvlab knows, in one table that the VM
 * config (`devices: [{class, id, enabled}]`), VMMS, the VMWP (its VMBus host and its port-I/O bus)
 * and the guest kernel's driver registry all read.
 *
 * A device class `X` is four things with the same name:
 *   protocol/src/X.ts    what crosses the boundary (message layouts, port numbers)
 *   vsp/src/X/           the host half, run in the VM's worker process (exports `createDevice`)
 *   vsc/src/X/           the guest half, run in the guest kernel (exports `createDriver`)
 *   one entry below
 * The VMWP loads `@hvlab/vsp/X` and the guest `@hvlab/vsc/X` by name, so adding a class touches no
 * other file. A class asks for the capabilities it needs: a VMBus channel (`vmbus`), port ranges
 * the VMWP intercepts (`ports`); MMIO is reserved for the storage and network devices to come.
 */
import { shownValue } from './state.js';

export interface DeviceClassInfo {
  /** One line about the class, for the docs. */
  readonly description: string;
  /** Offered on the VM's VMBus (a synthetic device); the guest attaches the VSC of the same class. */
  readonly vmbus: boolean;
  /** Inclusive port ranges the VMWP intercepts for this class (an emulated legacy device). */
  readonly ports: ReadonlyArray<readonly [number, number]>;
  /** An integration service: listed by `vm ic` and switched on or off with `--enable`/`--disable`. */
  readonly integrationService: boolean;
  /** In a new VM's device list. */
  readonly default: boolean;
  /** How many devices of the class one VM may have. */
  readonly instances: 'one' | 'many';
}

export const DEVICE_CLASSES = {
  heartbeat: { description: 'Heartbeat integration service: the guest answers a sequence number every second', vmbus: true, ports: [], integrationService: true, default: true, instances: 'one' },
  shutdown: { description: 'Shutdown integration service: the host asks the guest to shut down or reboot', vmbus: true, ports: [], integrationService: true, default: true, instances: 'one' },
  timesync: { description: 'Time-sync integration service: host time samples that keep the guest clock in step', vmbus: true, ports: [], integrationService: true, default: true, instances: 'one' },
  kvp: { description: 'Key-value pair exchange integration service: external, guest and auto pools', vmbus: true, ports: [], integrationService: true, default: true, instances: 'one' },
  cmos: { description: 'CMOS real-time clock (MC146818) at ports 0x70-0x71, read by the guest at boot', vmbus: false, ports: [[0x70, 0x71]], integrationService: false, default: true, instances: 'one' },
} as const satisfies Record<string, DeviceClassInfo>;

export type DeviceClass = keyof typeof DEVICE_CLASSES;
export const DEVICE_CLASS_NAMES = Object.keys(DEVICE_CLASSES) as DeviceClass[];
export const INTEGRATION_SERVICES = DEVICE_CLASS_NAMES.filter((c) => DEVICE_CLASSES[c].integrationService);
/** The classes offered on a VM's VMBus: a channel's name is its class's (what a vmbus fault's `channel` names). */
export const VMBUS_DEVICE_CLASSES = DEVICE_CLASS_NAMES.filter((c) => DEVICE_CLASSES[c].vmbus);

export function isDeviceClass(v: unknown): v is DeviceClass {
  return typeof v === 'string' && Object.prototype.hasOwnProperty.call(DEVICE_CLASSES, v);
}

/** One device of a VM, as its config lists it. */
export interface DeviceEntry {
  class: DeviceClass;
  /** Unique within the VM; names the device's part of the saved state ("device/<id>"). */
  id: string;
  /** Whether the device is present (an integration service switched off is still listed). */
  enabled: boolean;
}

/** Most devices one VM may have. */
export const MAX_DEVICES_PER_VM = 64;
export const DEVICE_ID_RE = /^[a-z][a-z0-9-]{0,31}$/;

/** The device list of a new VM: one of every default class, id = class name. */
export function defaultDevices(): DeviceEntry[] {
  return DEVICE_CLASS_NAMES.filter((c) => DEVICE_CLASSES[c].default).map((c) => ({ class: c, id: c, enabled: true }));
}


/**
 * Checks a device list (from a config file, the VMWP's start-up input or a saved state) and
 * returns a fresh copy or an error sentence naming the entry: a list of at most
 * MAX_DEVICES_PER_VM plain maps {class, id, enabled}, every class known, every id unique and
 * shaped like DEVICE_ID_RE, no other field.
 */
export function decodeDeviceEntries(v: unknown, where = 'devices'): DeviceEntry[] | string {
  if (!Array.isArray(v)) return `${where} is ${shownValue(v)}, not a list`;
  if (v.length > MAX_DEVICES_PER_VM) return `${where} has ${v.length} entries, more than ${MAX_DEVICES_PER_VM}`;
  const out: DeviceEntry[] = [];
  const ids = new Set<string>();
  for (let i = 0; i < v.length; i++) {
    const e = v[i] as unknown;
    const at = `${where}[${i}]`;
    if (e === null || typeof e !== 'object' || Array.isArray(e)) return `${at} is ${shownValue(e)}, not a map`;
    const proto = Object.getPrototypeOf(e) as unknown;
    if (proto !== Object.prototype && proto !== null) return `${at} is not a plain map`;
    const o = e as Record<string, unknown>;
    for (const k of Object.keys(o)) if (k !== 'class' && k !== 'id' && k !== 'enabled') return `${at} has field ${shownValue(k)}, which is unknown`;
    if (!isDeviceClass(o.class)) return `${at}.class is ${shownValue(o.class)}, not one of ${DEVICE_CLASS_NAMES.join(', ')}`;
    if (typeof o.id !== 'string' || !DEVICE_ID_RE.test(o.id)) return `${at}.id is ${shownValue(o.id)}, not a device id (a lower-case letter, then letters, digits or '-', at most 32)`;
    if (ids.has(o.id)) return `${at}.id "${o.id}" is used twice`;
    if (DEVICE_CLASSES[o.class].instances === 'one' && out.some((d) => d.class === o.class)) return `${at} is a second ${o.class} device; a VM has at most one`;
    if (typeof o.enabled !== 'boolean') return `${at}.enabled is ${shownValue(o.enabled)}, not true or false`;
    ids.add(o.id);
    out.push({ class: o.class, id: o.id, enabled: o.enabled });
  }
  return out;
}
