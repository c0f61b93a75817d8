/**
 * One VM's VMBus host side, inside its VMWP: the root-partition ports the guest's VMBus
 * connections lead to (messages on connection 1 and 4, one event port per channel), a
 * `VmbusServer` with the integration-service providers, and — for the remote transport — a
 * `RemoteHub` bound in the host's socket directory for this partition alone.
 *
 * Why here and not in the root process: the VMBus server state of a running VM (offers, GPADLs,
 * open channels, negotiated IC versions, KVP requests in flight) must outlive a crash of VMMS.
 * Hyper-V keeps the integration-service VSPs in the VM's worker process (vmwp.exe), and a VMMS
 * restart stops no VM; hvlab does the same, and a VSP fault also takes down only its own VM.
 *
 * Ports in the root partition are numbered so that no two partitions collide:
 *   message ports  0x80000 + partition*2 + {0: connection 1, 1: connection 4}
 *   event ports    0x100000 + partition*0x800 + relid      (guest connection 0x10000 + relid)
 */
import { randomBytes } from 'node:crypto';
import { HvStatus, PortType, ROOT_PARTITION_ID, VMBUS_CHANNEL_MESSAGE_TYPE, type MapGpadlOutput, type IcServiceInfo } from '@hvlab/protocol';
import type { HvClient, Logger } from '@hvlab/runtime';
import { openRegion } from '@hvlab/shm';
import { GpadlWindow, RemoteHub, VmbusServer, type VmbusDevice } from '@hvlab/vmbus';
import {
  HeartbeatProvider, ShutdownProvider, TimeSyncProvider, KvpProvider, type IcProvider, type IcServiceName,
} from '@hvlab/vsp';
import { hostConnectionId } from './shared.js';

export const IC_SERVICES: readonly IcServiceName[] = ['heartbeat', 'shutdown', 'timesync', 'kvp'];

export function messagePortId(partitionId: number, connection: 1 | 4): number {
  return 0x80000 + partitionId * 2 + (connection === 1 ? 0 : 1);
}
export function eventPortId(partitionId: number, relid: number): number {
  return 0x100000 + partitionId * 0x800 + relid;
}
export function guestEventConnectionId(relid: number): number {
  return 0x10000 + relid;
}

export type VmbusTransportMode = 'shm' | 'remote';
export type IcEntry = IcServiceInfo;

/** One VM's VMBus: its server, its integration-service providers and (remote mode) its hub. */
export class VmIntegration {
  readonly server: VmbusServer;
  readonly providers: { heartbeat: HeartbeatProvider; shutdown: ShutdownProvider; timesync: TimeSyncProvider; kvp: KvpProvider };
  readonly enabled: Record<IcServiceName, boolean>;
  /** The token the guest presents to the remote hub, and the hub's endpoint (boot page). */
  readonly token = randomBytes(16).toString('hex');
  private readonly hub: RemoteHub | null;
  private readonly eventPorts = new Set<number>();
  private memory: SharedArrayBuffer | null = null;

  constructor(
    readonly partitionId: number,
    readonly vm: string,
    private readonly vid: HvClient,
    remote: { endpoint: string } | null,
    enabled: Partial<Record<IcServiceName, boolean>>,
    log: Logger,
    timing: { heartbeatMs: number; timesyncMs: number },
  ) {
    const l = log.child({ partition: partitionId });
    this.providers = {
      heartbeat: new HeartbeatProvider(l, { intervalMs: timing.heartbeatMs }),
      shutdown: new ShutdownProvider(l),
      timesync: new TimeSyncProvider(l, timing.timesyncMs),
      kvp: new KvpProvider(l),
    };
    this.enabled = { heartbeat: true, shutdown: true, timesync: true, kvp: true, ...enabled };
    this.hub = remote ? new RemoteHub(remote.endpoint, l) : null;
    this.server = new VmbusServer({
      partitionId, name: vm, remote: this.hub, log: l,
      post: async (payload) => (await this.vid.call('PostMessage', { connectionId: hostConnectionId(partitionId, 1), messageType: VMBUS_CHANNEL_MESSAGE_TYPE, payload })).status,
      signalGuest: (relid) => {
        void this.vid.call('SignalEvent', { connectionId: hostConnectionId(partitionId, 2), flagNumber: relid }).catch(() => undefined);
      },
      channelConnection: (relid) => this.channelConnection(relid),
      mapGpadl: (gpadl, owner, pfns) => this.mapGpadl(gpadl, owner, pfns),
      unmapGpadl: async (gpadl) => {
        await this.vid.call('UnmapGpadl', { partitionId, gpadl });
      },
    });
  }

  /** The remote hub's endpoint, or '' with shared-memory rings. */
  get endpoint(): string {
    return this.hub?.endpoint ?? '';
  }

  /** Binds the hub (remote mode), creates the message ports, connects the guest's connections 1 and 4 to them, offers the devices. */
  async attach(): Promise<void> {
    if (this.hub) {
      await this.hub.bind();
      this.hub.admit(this.partitionId, this.token);
    }
    for (const c of [1, 4] as const) {
      await this.vid.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: messagePortId(this.partitionId, c), type: PortType.Message, vpIndex: 0, sint: 0 });
      await this.vid.must('ConnectPort', { partitionId: this.partitionId, connectionId: c, portPartitionId: ROOT_PARTITION_ID, portId: messagePortId(this.partitionId, c) });
    }
    for (const s of IC_SERVICES) if (this.enabled[s]) await this.server.addDevice(this.providers[s]);
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
    const out = r.output as MapGpadlOutput;
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

  provider(service: IcServiceName): IcProvider {
    return this.providers[service];
  }

  async setEnabled(service: IcServiceName, on: boolean): Promise<void> {
    if (this.enabled[service] === on) return;
    this.enabled[service] = on;
    const p: VmbusDevice = this.providers[service];
    if (on) await this.server.addDevice(p);
    else await this.server.removeDevice(p);
  }

  ic(): IcEntry[] {
    return IC_SERVICES.map((s) => {
      const p = this.providers[s];
      const n = p.negotiated;
      const e: IcEntry = {
        service: s, enabled: this.enabled[s], status: this.enabled[s] ? p.status() : 'NoContact',
        version: n ? `${n.message.major}.${n.message.minor}` : null,
      };
      if (s === 'heartbeat') e.sequence = Number(this.providers.heartbeat.sequence);
      if (s === 'timesync') {
        e.offsetMs = this.providers.timesync.offsetMs;
        e.initialOffsetMs = this.providers.timesync.initialOffsetMs;
        e.samples = this.providers.timesync.samples;
      }
      return e;
    });
  }

  close(): void {
    this.server.shutdown();
    this.hub?.forget(this.partitionId);
    this.hub?.close();
  }
}
