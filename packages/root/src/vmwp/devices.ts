/**
 * One VM's devices, inside its VMWP: every entry of the VM's `devices` list built from its class
 * (`@hvlab/vsp/<class>`, the contract in vsp/src/device.ts), with the capabilities each asks for
 * plugged in — the VM's VMBus (the root-partition ports the guest's VMBus connections lead to,
 * a `VmbusServer` that offers the synthetic devices, and for the remote transport a `RemoteHub`
 * bound for this partition alone) and its port-I/O bus (the class's port ranges intercepted and
 * every access handed to the device). Nothing here knows a device class by name.
 *
 * Why in the VMWP and not in the root: the device state of a running VM (offers, GPADLs, open
 * channels, negotiated IC versions, KVP requests in flight) must outlive a crash of VMMS. Hyper-V
 * keeps the integration-service VSPs and the legacy devices in the VM's worker process
 * (vmwp.exe), and a VMMS restart stops no VM; hvlab does the same, and a device fault also takes
 * down only its own VM.
 *
 * Faults (the fault API's `vmbus` kind, vmwp/faults.ts): the VMBus server is given a
 * `VmbusFaultInjector` that wraps each channel end it opens and its signals, and the remote hub's
 * listener is wrapped in a FaultyListener for the credit grants; with no fault active every call
 * passes straight through.
 *
 * Saved state: one component per device ("device/<id>") and one for the VMBus server ("vmbus");
 * a restore puts every device back, then the VMBus server with its channels open on the same
 * rings, so the guest's integration services carry on without negotiating again.
 *
 * Ports in the root partition are numbered so that no two partitions collide:
 *   message ports  0x80000 + partition*2 + {0: connection 1, 1: connection 4}
 *   event ports    0x100000 + partition*0x800 + relid      (guest connection 0x10000 + relid)
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  DEVICE_CLASSES, dirtyBitmapWords, markDirtyRange, HvStatus, InterceptAccess, InterceptType, PortType, ROOT_PARTITION_ID, VMBUS_CHANNEL_MESSAGE_TYPE,
  type DeviceClass, type DeviceEntry, type MapGpadlOutput, type IcServiceInfo,
} from '@hvlab/protocol';
import type { HvClient, Logger } from '@hvlab/runtime';
import { openRegion } from '@hvlab/shm';
import {
  decodeVmbusServerState, FaultyListener, GpadlWindow, RemoteHub, VmbusFaultInjector, VmbusServer, ZmqFrameListener, type VmbusServerState,
} from '@hvlab/vmbus';
import { loadDeviceClass, type VirtualDevice } from '@hvlab/vsp';
import { hostConnectionId } from './shared.js';

export function messagePortId(partitionId: number, connection: 1 | 4): number {
  return 0x80000 + partitionId * 2 + (connection === 1 ? 0 : 1);
}
export function eventPortId(partitionId: number, relid: number): number {
  return 0x100000 + partitionId * 0x800 + relid;
}
export function guestEventConnectionId(relid: number): number {
  return 0x10000 + relid;
}


/**
 * A device's instance id: a name-based UUID (version 5 layout, SHA-256 instead of SHA-1) of the
 * VM's id and the device id, so an offer keeps its instance across restarts, saves and moves.
 */
export function deviceInstanceId(vmId: string, deviceId: string): string {
  const h = createHash('sha256').update(`hvlab-device:${vmId}/${deviceId}`).digest();
  h[6] = (h[6] & 0x0f) | 0x50;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
export type IcEntry = IcServiceInfo;

/** The saved state of a VM's devices: one component per device and one for its VMBus server. */
export type DeviceComponents = Record<string, unknown>;

export class DeviceStateError extends Error {
  override name = 'DeviceStateError';
}

interface Built {
  entry: DeviceEntry;
  device: VirtualDevice;
}

export interface VmDevicesOptions {
  partitionId: number;
  vm: string;
  vmId: string;
  vid: HvClient;
  remote: { endpoint: string } | null;
  entries: DeviceEntry[];
  log: Logger;
  rtcOffsetS: number;
  timing: { heartbeatMs: number; timesyncMs: number };
}

/** One VM's devices, its VMBus and its port-I/O bus. */
export class VmDevices {
  readonly server: VmbusServer;
  /** The VMBus faults of this VM (vmwp/faults.ts sets and ends them). */
  readonly faults = new VmbusFaultInjector();
  /** The token the guest presents to the remote hub, and the hub's endpoint (boot page). */
  readonly token = randomBytes(16).toString('hex');
  private readonly hub: RemoteHub | null;
  private readonly eventPorts = new Set<number>();
  private readonly ports = new Map<number, Built>();
  private memory: SharedArrayBuffer | null = null;
  private dirtyWords: Int32Array | null = null;
  /**
   * Whether this side's ring writes go to the dirty log: only while a live migration tracks dirty
   * pages (a migration's pass 1 copies everything, so nothing written before it is needed), so the
   * ring path pays nothing the rest of the time.
   */
  dirtyLogging = false;
  private readonly partitionId: number;
  private readonly vid: HvClient;

  private constructor(private readonly o: VmDevicesOptions, private readonly built: Built[]) {
    const partitionId = (this.partitionId = o.partitionId);
    this.vid = o.vid;
    const l = o.log.child({ partition: partitionId });
    if (o.remote) {
      const endpoint = o.remote.endpoint;
      const listener = new ZmqFrameListener(endpoint, { onError: (e) => l.warn({ err: String(e) }, 'remote VMBus listener error') });
      this.hub = new RemoteHub(endpoint, l, new FaultyListener(listener, () => this.faults.linkFaults));
    } else this.hub = null;
    this.server = new VmbusServer({
      partitionId, name: o.vm, remote: this.hub, log: l, faults: this.faults,
      post: async (payload) => (await this.vid.call('PostMessage', { connectionId: hostConnectionId(partitionId, 1), messageType: VMBUS_CHANNEL_MESSAGE_TYPE, payload })).status,
      signalGuest: (relid) => this.vid.signal(hostConnectionId(partitionId, 2), relid),
      channelConnection: (relid) => this.channelConnection(relid),
      mapGpadl: (gpadl, owner, pfns) => this.mapGpadl(gpadl, owner, pfns),
      unmapGpadl: async (gpadl) => {
        await this.vid.call('UnmapGpadl', { partitionId, gpadl });
      },
      dirty: {
        markDirty: (gpa, length) => {
          if (!this.dirtyLogging || !this.memory) return;
          this.dirtyWords ??= dirtyBitmapWords(this.memory);
          markDirtyRange(this.dirtyWords, gpa, length);
        },
      },
    });
  }

  /** Builds every device of the list (enabled or not: a disabled one can be switched on later). */
  static async create(o: VmDevicesOptions): Promise<VmDevices> {
    const built: Built[] = [];
    for (const entry of o.entries) {
      const mod = await loadDeviceClass(entry.class);
      const log = o.log.child({ device: entry.id });
      built.push({ entry: { ...entry }, device: mod.createDevice({ vm: o.vm, partitionId: o.partitionId, entry: { ...entry }, instance: deviceInstanceId(o.vmId, entry.id), log, rtcOffsetS: o.rtcOffsetS, timing: o.timing }) });
    }
    return new VmDevices(o, built);
  }

  /** The remote hub's endpoint, or '' with shared-memory rings. */
  get endpoint(): string {
    return this.hub?.endpoint ?? '';
  }

  /**
   * Plugs the devices in: binds the hub (remote mode), creates the message ports and connects the
   * guest's connections 1 and 4 to them, intercepts the port ranges of every enabled port-I/O
   * device, and — unless the VMBus server is being restored — offers every enabled VMBus device.
   */
  async attach(opts: { restoring?: VmbusServerState } = {}): Promise<void> {
    await this.prepare();
    for (const b of this.built) if (b.entry.enabled && b.device.vmbus) await this.server.addDevice(b.device.vmbus);
    if (opts.restoring) await this.server.restore(opts.restoring);
  }

  /**
   * A restore's hypervisor calls ahead of `attach({ restoring })` (VmbusServer.premap): run
   * alongside the VPs' restore, before the guest may run.
   */
  async premap(restoring: VmbusServerState): Promise<void> {
    await this.prepare();
    await this.server.premap(restoring);
  }

  /**
   * A migration's destination, before the blackout: the event connections of the channels the
   * VM most likely has, relids 1..N for its N VMBus devices (the order a first boot offers them
   * in). A restore whose channels have other relids makes theirs as before; one never used is
   * only a port nobody signals.
   */
  async prepareChannels(): Promise<void> {
    const n = this.built.filter((b) => b.entry.enabled && b.device.vmbus).length;
    for (let relid = 1; relid <= n; relid++) await this.channelConnection(relid);
  }

  private prepared = false;
  /**
   * What attaching needs that no saved state changes (the hub, the message ports, the port-I/O
   * intercepts): a migration's destination does it before the blackout, so `attach` then only
   * restores the VMBus server.
   */
  async prepare(): Promise<void> {
    if (this.prepared) return;
    this.prepared = true;
    if (this.hub) {
      await this.hub.bind();
      this.hub.admit(this.partitionId, this.token);
    }
    for (const c of [1, 4] as const) {
      await this.vid.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: messagePortId(this.partitionId, c), type: PortType.Message, vpIndex: 0, sint: 0 });
      await this.vid.must('ConnectPort', { partitionId: this.partitionId, connectionId: c, portPartitionId: ROOT_PARTITION_ID, portId: messagePortId(this.partitionId, c) });
    }
    for (const b of this.built) {
      if (!b.entry.enabled || !b.device.portIo) continue;
      for (const [port, portEnd] of DEVICE_CLASSES[b.entry.class].ports) {
        for (let p = port; p <= portEnd; p++) {
          const other = this.ports.get(p);
          if (other) throw new Error(`devices ${other.entry.id} and ${b.entry.id} both claim port 0x${p.toString(16)}`);
          this.ports.set(p, b);
        }
        await this.vid.must('InstallIntercept', { partitionId: this.partitionId, type: InterceptType.IoPortRange, access: InterceptAccess.Read | InterceptAccess.Write, port, portEnd });
      }
    }
  }

  /** An intercepted port access: the value read (0 for a write), or null when no device has the port. */
  portAccess(port: number, write: boolean, value: number, size: number): number | null {
    const b = this.ports.get(port);
    if (!b) return null;
    try {
      return b.device.portIo!.access(port, write, value, size) >>> 0;
    } catch (e) {
      this.o.log.warn({ device: b.entry.id, port, err: (e as Error).message }, 'port-I/O handler failed; the access reads as 0xff');
      return 0xff;
    }
  }

  private async channelConnection(relid: number): Promise<number> {
    const port = eventPortId(this.partitionId, relid);
    const conn = guestEventConnectionId(relid);
    if (!this.eventPorts.has(port)) {
      await this.vid.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: port, type: PortType.Event, vpIndex: 0, sint: 0, flagCount: 1 });
      await this.vid.must('ConnectPort', { partitionId: this.partitionId, connectionId: conn, portPartitionId: ROOT_PARTITION_ID, portId: port });
      this.eventPorts.add(port);
    }
    return conn;
  }

  private async mapGpadl(gpadl: number, owner: number, pfns: number[]): Promise<GpadlWindow> {
    const r = await this.vid.call('MapGpadl', { partitionId: this.partitionId, gpadl, owner, pfns });
    if (r.status !== HvStatus.SUCCESS) throw new Error(`${r.statusName}: ${(r.output as { reason?: string } | null)?.reason ?? 'refused'}`);
    const out = (r.output ?? {}) as Partial<MapGpadlOutput>;
    if (out.region && !this.memory) this.memory = openRegion(out.region);
    return new GpadlWindow(gpadl, owner, pfns, out.region ? this.memory : null);
  }

  /** Routes a message the guest posted to one of this partition's root ports; false if not ours. */
  onRootMessage(portId: number, messageType: number, payload: Uint8Array, sender: number): boolean {
    if (sender !== this.partitionId) return false;
    if (portId === messagePortId(this.partitionId, 1) || portId === messagePortId(this.partitionId, 4)) {
      if (messageType === VMBUS_CHANNEL_MESSAGE_TYPE) void this.server.onMessage(portId === messagePortId(this.partitionId, 1) ? 1 : 4, payload);
      return true;
    }
    return false;
  }

  onRootEvent(portId: number, sender: number): boolean {
    if (sender !== this.partitionId) return false;
    const base = eventPortId(this.partitionId, 0);
    if (portId > base && portId < base + 0x800) {
      this.server.onSignal(portId - base);
      return true;
    }
    return false;
  }

  /** The names of this VM's VMBus channels (its VMBus devices', enabled or not), as faults name them. */
  vmbusNames(): string[] {
    return this.built.filter((b) => b.device.vmbus).map((b) => b.device.vmbus!.name);
  }

  /** The device of a class (every class the VMWP asks for by name has one instance at most). */
  ofClass(cls: DeviceClass): { entry: DeviceEntry; device: VirtualDevice } | null {
    return this.built.find((b) => b.entry.class === cls) ?? null;
  }

  /** Switches an integration service on (offered: hot add) or off (rescinded: hot remove). */
  async setEnabled(cls: DeviceClass, on: boolean): Promise<void> {
    const b = this.ofClass(cls);
    if (!b || !DEVICE_CLASSES[cls].integrationService || b.entry.enabled === on) return;
    b.entry.enabled = on;
    if (on) await this.server.addDevice(b.device.vmbus!);
    else await this.server.removeDevice(b.device.vmbus!);
  }

  /** Get-VMIntegrationService: every integration-service device, enabled or not. */
  ic(): IcEntry[] {
    return this.built.filter((b) => DEVICE_CLASSES[b.entry.class].integrationService).map((b) => {
      const st = b.device.status() as { status?: IcEntry['status']; version?: string | null } & Record<string, unknown>;
      const { status, version, ...extra } = st;
      const e: IcEntry = { service: b.entry.class as IcEntry['service'], enabled: b.entry.enabled, status: b.entry.enabled ? (status ?? 'NoContact') : 'NoContact', version: version ?? null };
      return Object.assign(e, extra);
    });
  }

  /** The saved state of every device and of the VMBus server. Call with the VM suspended. */
  save(): DeviceComponents {
    return { vmbus: this.server.save(), ...this.saveDevices() };
  }

  /** The devices' components alone (`device/ID`), without the VMBus server's. */
  saveDevices(): DeviceComponents {
    const out: DeviceComponents = {};
    for (const b of this.built) out[`device/${b.entry.id}`] = b.device.save();
    return out;
  }

  /**
   * Checks the device part of a saved state against this VM's devices, before anything is built:
   * one component per device and one for VMBus, each accepted by its own decoder.
   */
  decodeSaved(components: DeviceComponents): { vmbus: VmbusServerState; devices: Map<string, unknown> } {
    const vmbus = decodeVmbusServerState(components.vmbus);
    if (typeof vmbus === 'string') throw new DeviceStateError(`component "vmbus": ${vmbus}`);
    const devices = new Map<string, unknown>();
    for (const b of this.built) {
      const key = `device/${b.entry.id}`;
      if (!(key in components)) throw new DeviceStateError(`component "${key}" is missing (the VM has a ${b.entry.class} device "${b.entry.id}")`);
      const d = b.device.decode(components[key]);
      if (typeof d === 'string') throw new DeviceStateError(`component "${key}": ${d}`);
      devices.set(b.entry.id, d);
    }
    for (const key of Object.keys(components)) {
      if (key === 'vmbus' || key === 'processor') continue;
      if (!key.startsWith('device/') || !this.built.some((b) => `device/${b.entry.id}` === key)) throw new DeviceStateError(`component "${key}" belongs to no device of this VM`);
    }
    return { vmbus, devices };
  }

  /** Puts every device's decoded state back (before `attach({ restoring })`). */
  restoreDevices(devices: Map<string, unknown>): void {
    for (const b of this.built) if (devices.has(b.entry.id)) b.device.restore(devices.get(b.entry.id));
  }

  close(): void {
    this.server.shutdown();
    for (const b of this.built) {
      try {
        b.device.close();
      } catch (e) {
        this.o.log.warn({ device: b.entry.id, err: (e as Error).message }, 'device failed to close');
      }
    }
    this.hub?.forget(this.partitionId);
    this.hub?.close();
  }
}
