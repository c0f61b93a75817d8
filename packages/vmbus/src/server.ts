/**
 * The VMBus server of one child partition, in the root: version negotiation, offers, GPADLs,
 * opening and closing channels, hot remove (rescind) and add, and UNLOAD. Channel messages arrive
 * as SynIC messages the guest posted (HvCallPostMessage) and leave the same way; each is decoded
 * once at the edge (`decodeChannelMessage`) and anything malformed or out of order is logged and
 * ignored, so a misbehaving guest cannot hurt the root or other guests.
 *
 * The root touches ring memory only through GPADL windows the hypervisor granted (MapGpadl).
 * Offers flagged `OFFER_FLAG_REMOTE_TRANSPORT` (hvlab's own chn_flags bit) carry their packets
 * over ZeroMQ instead of rings; the guest then opens with GPADL 0 and states its window in the
 * first four bytes of the OPENCHANNEL user data.
 *
 * Fault injection (faults.ts): given a `VmbusFaultInjector` (`env.faults`), the server wraps every
 * channel end it opens in the injector's FaultyTransport and passes its signals to and from the
 * guest through it; nothing else of the server knows about faults.
 *
 * Save and restore (state.ts): `save()` returns the bus as plain data; `restore()` on a fresh
 * server whose devices were added (but, the guest not having asked, not offered) rebuilds the
 * channels over the same ring memory and hands each device its channel through `reopen`. The
 * guest is told nothing: after a restore no channel message is exchanged.
 */
import {
  decodeChannelMessage, encodeChannelMessage, ChannelMessageError, VmbusVersion, vmbusVersionName,
  VMBUS_MESSAGE_CONNECTION_ID_4, MAX_CHANNELS, OFFER_FLAG_REMOTE_TRANSPORT, type ChannelMessage,
} from '@hvlab/protocol';
import type { GpadlWindow } from './gpadl.js';
import type { DirtyLog } from './transport.js';
import { ShmTransport, VmbusChannel, type PacketTransport } from './transport.js';
import type { RemoteHub } from './remote.js';
import type { VmbusFaultInjector } from './faults.js';
import {
  decodeVmbusServerState, checkedServerState, loadPacket, savePacket, saveFault, VmbusStateError, MAX_SAVED_CHANNELS,
  type SavedServerChannel, type VmbusServerState,
} from './state.js';

/** Versions this server accepts, newest first (a 6.0 guest falls back to 5.3, as on WS2022). */
export const SERVER_VERSIONS: readonly number[] = [
  VmbusVersion.V5_3, VmbusVersion.V5_2, VmbusVersion.V5_1, VmbusVersion.V5_0, VmbusVersion.WIN10,
  VmbusVersion.WIN8_1, VmbusVersion.WIN8, VmbusVersion.WIN7, VmbusVersion.WS2008,
];
/** OPENCHANNEL_RESULT / GPADL_CREATED status for a refusal (STATUS_UNSUCCESSFUL). */
export const VMBUS_STATUS_FAILED = 0xc0000001;
const MAX_REMOTE_WINDOW = 4 * 1024 * 1024;
/**
 * Caps on what a guest can make the host hold (a guest is untrusted): GPADLs being assembled from
 * GPADL_BODY messages at once, and established GPADLs per channel (a ring needs one; Linux's
 * netvsc and storvsc add a few buffers). Past them the host answers GPADL_CREATED with a failure.
 */
export const MAX_PENDING_GPADLS = 64;
export const MAX_GPADLS_PER_CHANNEL = 16;
/**
 * Channel messages of the guest's queued or being handled at most. The server handles them one at
 * a time, and a step can wait a second for a guest that does not drain its SINT queue (`send`), so
 * a guest that posts as fast as it can (~3,500 REQUESTOFFERS a second here) would grow the
 * worker's queue without bound: a probe took a VMWP from 55 to 526 MiB in a minute. Past the cap a
 * message is dropped and counted (`stats.dropped`), as the hypervisor drops what a full message
 * queue cannot take. A guest's real bursts (contact, offers, a channel's GPADL bodies and open) are
 * a few dozen.
 */
export const MAX_QUEUED_MESSAGES = 1024;

/** A synthetic device's provider side: offered, opened, closed. Nothing more is asked of it. */
export interface VmbusDevice {
  readonly name: string;
  readonly interfaceType: string;
  readonly interfaceInstance: string;
  open(channel: VmbusChannel): void;
  /**
   * The channel came back open from a saved state; do not negotiate again (the guest's side of
   * the device protocol is where it was at save). Without it, `open` is called instead.
   */
  reopen?(channel: VmbusChannel): void;
  close(): void;
  /**
   * The byte ranges of a packet payload of this device (either way) that its receiver decodes,
   * where a corruption fault flips bits (faults.ts); without it, anywhere in the payload. Must
   * not throw: it sees what a guest sent.
   */
  decodedRanges?(payload: Uint8Array): ReadonlyArray<readonly [number, number]>;
}

export interface VmbusLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
}

export interface VmbusServerEnv {
  partitionId: number;
  name: string;
  /** Posts a channel message to the guest's SINT2; resolves with the HV_STATUS. */
  post(payload: Uint8Array): Promise<number>;
  /** Signals the guest for channel `relid` (event flag relid on its SINT2). */
  signalGuest(relid: number): void;
  /** Readies the guest's event connection for `relid`; returns its connection id for the offer. */
  channelConnection(relid: number): Promise<number>;
  /** Asks the hypervisor for a window on `pfns`; throws with the reason when refused. */
  mapGpadl(gpadl: number, owner: number, pfns: number[]): Promise<GpadlWindow>;
  unmapGpadl(gpadl: number): Promise<void>;
  /** Set when every channel must use the remote transport. */
  remote: RemoteHub | null;
  /**
   * Where this side logs its own writes into guest memory (ring indices and packets), for live
   * migration's dirty set: the guest's own writes are tracked by the kernel in the guest's
   * process, these are not (they go through another mapping), so they are logged here, as QEMU
   * logs DMA.
   */
  dirty?: DirtyLog;
  /** Wraps every channel end and its signals (faults.ts); without it nothing is wrapped. */
  faults?: VmbusFaultInjector;
  log: VmbusLog;
}

export type ChannelState = 'offered' | 'open' | 'rescinded';

interface ServerChannel {
  relid: number;
  device: VmbusDevice;
  state: ChannelState;
  connectionId: number;
  channel: VmbusChannel | null;
  /** The rings under `channel` (shared-memory transport), which the guest's signals drain. */
  rings: ShmTransport | null;
  gpadl: number;
  /** Of the current opening: OPENCHANNEL's open id, ring page offset and remote window. */
  openId: number;
  ringOffset: number;
  remoteWindow: number;
  opens: number;
  faults: number;
  lastFault: string | null;
}

interface PendingGpadl {
  relid: number;
  totalPfns: number;
  pfns: number[];
  nextMsg: number;
}

export interface ChannelInfo {
  relid: number;
  name: string;
  state: ChannelState;
  transport: 'shm' | 'remote' | null;
  opens: number;
  faults: number;
  lastFault: string | null;
  packetsIn: number;
  packetsOut: number;
}

export class VmbusServer {
  version: number | null = null;
  private messageConnectionId = 1;
  private readonly channels = new Map<number, ServerChannel>();
  private readonly gpadls = new Map<number, { relid: number; window: GpadlWindow }>();
  private readonly pendingGpadls = new Map<number, PendingGpadl>();
  private readonly devices: VmbusDevice[] = [];
  /** Offers made before the guest connected wait here. */
  private offersRequested = false;
  readonly stats = { messages: 0, rejected: 0, dropped: 0 };
  /** Guest messages queued or being handled (see MAX_QUEUED_MESSAGES). */
  private queuedMessages = 0;
  private chain: Promise<void> = Promise.resolve();
  /** Steps queued or running on `chain`. */
  private pending = 0;
  private closed = false;

  constructor(private readonly env: VmbusServerEnv) {}

  get connected(): boolean {
    return this.version !== null;
  }

  /** True when no channel message, hot add/remove or restore is being handled. */
  get idle(): boolean {
    return this.pending === 0;
  }

  /** Resolves once the server is idle (call with the VPs suspended, so no new message comes). */
  async whenIdle(): Promise<void> {
    while (this.pending > 0) await this.chain;
  }

  /** Registers a device; offered now if the guest is enumerating, else on REQUESTOFFERS. */
  async addDevice(device: VmbusDevice): Promise<void> {
    if (this.devices.includes(device)) return;
    this.devices.push(device);
    if (this.offersRequested) await this.serialize(() => this.offer(device));
  }

  /** Hot remove: rescinds the device's channel; the guest releases the relid. */
  async removeDevice(device: VmbusDevice): Promise<void> {
    const i = this.devices.indexOf(device);
    if (i < 0) return;
    this.devices.splice(i, 1);
    await this.serialize(async () => {
      const ch = [...this.channels.values()].find((c) => c.device === device && c.state !== 'rescinded');
      if (!ch) return;
      this.closeChannel(ch, 'rescinded');
      ch.state = 'rescinded';
      // As in Hyper-V, the host drops the channel's GPADLs itself; a rescinded guest sends
      // neither CLOSECHANNEL nor GPADL_TEARDOWN, only RELID_RELEASED.
      for (const [h, g] of [...this.gpadls]) {
        if (g.relid !== ch.relid) continue;
        this.gpadls.delete(h);
        await this.env.unmapGpadl(h).catch((e) => this.env.log.warn({ err: e }, 'unmapping a GPADL failed'));
      }
      for (const [h, p] of [...this.pendingGpadls]) if (p.relid === ch.relid) this.pendingGpadls.delete(h);
      await this.send({ type: 'RescindChannelOffer', childRelid: ch.relid });
    });
  }

  channelInfo(): ChannelInfo[] {
    return [...this.channels.values()].map((c) => ({
      relid: c.relid, name: c.device.name, state: c.state, transport: c.channel?.transport.kind ?? null, opens: c.opens,
      faults: c.faults, lastFault: c.lastFault, packetsIn: c.channel?.stats.packetsIn ?? 0, packetsOut: c.channel?.stats.packetsOut ?? 0,
    }));
  }

  /** A channel message from the guest, on connection 1 or 4. */
  onMessage(connectionId: number, payload: Uint8Array): Promise<void> {
    if (this.queuedMessages >= MAX_QUEUED_MESSAGES) {
      // Logged on the first drop and then once per 10,000: the flood must not fill the log either.
      if (this.stats.dropped++ % 10000 === 0) this.env.log.warn({ dropped: this.stats.dropped, queued: this.queuedMessages }, 'VMBus messages dropped: the guest posts them faster than the server handles them');
      return Promise.resolve();
    }
    this.queuedMessages++;
    return this.serialize(async () => {
      try {
        await this.handle(connectionId, payload);
      } finally {
        this.queuedMessages--;
      }
    });
  }

  /** The guest signalled channel `relid`. */
  onSignal(relid: number): void {
    const ch = this.channels.get(relid);
    const rings = ch?.channel ? ch.rings : null;
    if (!rings) return;
    const f = this.env.faults;
    if (f) f.signalIn(relid, () => rings.onSignal());
    else rings.onSignal();
  }

  /** Signals the guest for channel `relid` (through the fault injector, if any). */
  private signalGuest(relid: number): void {
    const f = this.env.faults;
    if (f) f.signalOut(relid, () => this.env.signalGuest(relid));
    else this.env.signalGuest(relid);
  }

  private serialize(fn: () => Promise<void>): Promise<void> {
    this.pending++;
    const p = this.chain.then(fn, fn).finally(() => {
      this.pending--;
    });
    this.chain = p.catch((e) => this.env.log.warn({ err: e }, 'VMBus server step failed'));
    return p;
  }

  private async send(m: ChannelMessage): Promise<void> {
    const bytes = encodeChannelMessage(m);
    for (let attempt = 0; ; attempt++) {
      const st = await this.env.post(bytes);
      if (st === 0) return;
      // INSUFFICIENT_BUFFERS: the guest's SINT queue is full; give it time to drain.
      if (st !== 0x13 || attempt > 200 || this.closed) throw new Error(`posting ${m.type} to partition ${this.env.partitionId} failed with status 0x${st.toString(16)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private logWindow = { start: 0, logged: 0, suppressed: 0 };

  private reject(why: string, extra: object = {}): void {
    this.stats.rejected++;
    // A guest that floods bad messages must not flood the host's disk with logs: at most 20 lines
    // a second, then one line saying how many were left out.
    const now = Date.now();
    const w = this.logWindow;
    if (now - w.start >= 1000) {
      if (w.suppressed > 0) this.env.log.warn({ partition: this.env.partitionId, suppressed: w.suppressed }, `VMBus: ${w.suppressed} more refused messages were not logged`);
      this.logWindow = { start: now, logged: 0, suppressed: 0 };
    }
    if (this.logWindow.logged++ < 20) this.env.log.warn({ partition: this.env.partitionId, ...extra }, `VMBus message refused: ${why}`);
    else this.logWindow.suppressed++;
  }

  private async handle(connectionId: number, payload: Uint8Array): Promise<void> {
    if (this.closed) return;
    this.stats.messages++;
    let m: ChannelMessage;
    try {
      m = decodeChannelMessage(payload);
    } catch (e) {
      if (e instanceof ChannelMessageError) return this.reject(e.message);
      throw e;
    }
    if (m.type !== 'InitiateContact' && this.version === null) return this.reject(`${m.type} before INITIATE_CONTACT`);
    if (m.type !== 'InitiateContact' && connectionId !== this.messageConnectionId) return this.reject(`${m.type} on connection ${connectionId}, expected ${this.messageConnectionId}`);
    switch (m.type) {
      case 'InitiateContact': return await this.contact(connectionId, m.versionRequested);
      case 'RequestOffers': {
        this.offersRequested = true;
        for (const d of this.devices) await this.offer(d);
        await this.send({ type: 'AllOffersDelivered' });
        return;
      }
      case 'GpadlHeader': return await this.gpadlHeader(m);
      case 'GpadlBody': return await this.gpadlBody(m);
      case 'OpenChannel': return await this.open(m);
      case 'CloseChannel': {
        const ch = this.channels.get(m.childRelid);
        if (!ch || ch.state !== 'open') return this.reject(`CLOSECHANNEL for relid ${m.childRelid}, which is not open`);
        this.closeChannel(ch, 'closed by the guest');
        ch.state = 'offered';
        return;
      }
      case 'GpadlTeardown': {
        const g = this.gpadls.get(m.gpadl);
        if (!g || g.relid !== m.childRelid) return this.reject(`GPADL_TEARDOWN of unknown GPADL 0x${m.gpadl.toString(16)}`);
        const ch = this.channels.get(g.relid);
        if (ch?.state === 'open' && ch.gpadl === m.gpadl) {
          this.closeChannel(ch, 'its GPADL was torn down');
          ch.state = 'offered';
        }
        this.gpadls.delete(m.gpadl);
        await this.env.unmapGpadl(m.gpadl).catch((e) => this.env.log.warn({ err: e }, 'unmapping a GPADL failed'));
        await this.send({ type: 'GpadlTorndown', gpadl: m.gpadl });
        return;
      }
      case 'RelidReleased': {
        const ch = this.channels.get(m.childRelid);
        if (!ch || ch.state !== 'rescinded') return this.reject(`RELID_RELEASED for relid ${m.childRelid}, which was not rescinded`);
        this.channels.delete(m.childRelid);
        return;
      }
      case 'Unload': {
        await this.unload();
        await this.send({ type: 'UnloadResponse' });
        this.env.log.info({}, 'the guest unloaded VMBus');
        return;
      }
      case 'ModifyChannel':
        return; // one VP's SINT2 takes every channel's interrupt in hvlab
      default:
        return this.reject(`${m.type} is not a guest-to-host message`);
    }
  }

  private async contact(connectionId: number, version: number): Promise<void> {
    const needs4 = version >= VmbusVersion.V5_0;
    if ((needs4 ? VMBUS_MESSAGE_CONNECTION_ID_4 : 1) !== connectionId) {
      return this.reject(`INITIATE_CONTACT for ${vmbusVersionName(version)} on connection ${connectionId}`);
    }
    if (this.version !== null) await this.unload();
    const ok = SERVER_VERSIONS.includes(version);
    if (ok) {
      this.version = version;
      this.messageConnectionId = needs4 ? VMBUS_MESSAGE_CONNECTION_ID_4 : 1;
      this.env.log.info({ partition: this.env.partitionId, version: vmbusVersionName(version) }, 'VMBus connected');
    }
    await this.send({ type: 'VersionResponse', versionSupported: ok, connectionState: 0, messageConnectionId: ok ? this.messageConnectionId : 0 });
  }

  private nextRelid(): number {
    for (let r = 1; r <= MAX_CHANNELS; r++) if (!this.channels.has(r)) return r;
    throw new Error(`partition ${this.env.partitionId} has ${MAX_CHANNELS} channels already`);
  }

  private async offer(device: VmbusDevice): Promise<void> {
    if ([...this.channels.values()].some((c) => c.device === device && c.state !== 'rescinded')) return;
    const relid = this.nextRelid();
    const connectionId = await this.env.channelConnection(relid);
    this.channels.set(relid, { relid, device, state: 'offered', connectionId, channel: null, rings: null, gpadl: 0, openId: 0, ringOffset: 0, remoteWindow: 0, opens: 0, faults: 0, lastFault: null });
    await this.send({
      type: 'OfferChannel', interfaceType: device.interfaceType, interfaceInstance: device.interfaceInstance,
      flags: this.env.remote ? OFFER_FLAG_REMOTE_TRANSPORT : 0, mmioMegabytes: 0, userDefined: new Uint8Array(120),
      subChannelIndex: 0, childRelid: relid, monitorId: 0xff, monitorAllocated: false, dedicatedInterrupt: false, connectionId,
    });
  }

  private async gpadlHeader(m: Extract<ChannelMessage, { type: 'GpadlHeader' }>): Promise<void> {
    const ch = this.channels.get(m.childRelid);
    if (!ch || ch.state === 'rescinded') return this.reject(`GPADL_HEADER for relid ${m.childRelid}, which is not offered`);
    if (m.gpadl === 0 || this.gpadls.has(m.gpadl) || this.pendingGpadls.has(m.gpadl)) return this.reject(`GPADL handle 0x${m.gpadl.toString(16)} is zero or in use`);
    if (m.byteOffset !== 0) return this.reject(`GPADL 0x${m.gpadl.toString(16)} starts at byte offset ${m.byteOffset}`);
    const held = [...this.gpadls.values()].filter((g) => g.relid === m.childRelid).length + [...this.pendingGpadls.values()].filter((g) => g.relid === m.childRelid).length;
    if (this.pendingGpadls.size >= MAX_PENDING_GPADLS || held >= MAX_GPADLS_PER_CHANNEL) {
      this.reject(`GPADL 0x${m.gpadl.toString(16)} refused: relid ${m.childRelid} holds ${held} GPADLs and ${this.pendingGpadls.size} are being assembled (limits ${MAX_GPADLS_PER_CHANNEL} per channel, ${MAX_PENDING_GPADLS} pending)`);
      await this.send({ type: 'GpadlCreated', childRelid: m.childRelid, gpadl: m.gpadl, status: VMBUS_STATUS_FAILED });
      return;
    }
    const pending: PendingGpadl = { relid: m.childRelid, totalPfns: m.totalPfns, pfns: [...m.pfns], nextMsg: 1 };
    if (pending.pfns.length >= pending.totalPfns) await this.finishGpadl(m.gpadl, pending);
    else this.pendingGpadls.set(m.gpadl, pending);
  }

  private async gpadlBody(m: Extract<ChannelMessage, { type: 'GpadlBody' }>): Promise<void> {
    const p = this.pendingGpadls.get(m.gpadl);
    if (!p) return this.reject(`GPADL_BODY for unknown GPADL 0x${m.gpadl.toString(16)}`);
    if (m.msgNumber !== p.nextMsg || p.pfns.length + m.pfns.length > p.totalPfns) {
      this.pendingGpadls.delete(m.gpadl);
      this.reject(`GPADL_BODY ${m.msgNumber} of GPADL 0x${m.gpadl.toString(16)} is out of order or too long`);
      await this.send({ type: 'GpadlCreated', childRelid: p.relid, gpadl: m.gpadl, status: VMBUS_STATUS_FAILED });
      return;
    }
    p.nextMsg++;
    p.pfns.push(...m.pfns);
    if (p.pfns.length === p.totalPfns) {
      this.pendingGpadls.delete(m.gpadl);
      await this.finishGpadl(m.gpadl, p);
    }
  }

  private async finishGpadl(gpadl: number, p: PendingGpadl): Promise<void> {
    let status = 0;
    try {
      const window = await this.env.mapGpadl(gpadl, p.relid, p.pfns.slice(0, p.totalPfns));
      this.gpadls.set(gpadl, { relid: p.relid, window });
    } catch (e) {
      status = VMBUS_STATUS_FAILED;
      this.reject(`the hypervisor refused GPADL 0x${gpadl.toString(16)}: ${(e as Error).message}`);
    }
    await this.send({ type: 'GpadlCreated', childRelid: p.relid, gpadl, status });
  }

  private async open(m: Extract<ChannelMessage, { type: 'OpenChannel' }>): Promise<void> {
    const ch = this.channels.get(m.childRelid);
    const result = (status: number): Promise<void> => this.send({ type: 'OpenChannelResult', childRelid: m.childRelid, openId: m.openId, status });
    if (!ch || ch.state !== 'offered') {
      this.reject(`OPENCHANNEL for relid ${m.childRelid}, which is ${ch ? ch.state : 'not offered'}`);
      return await result(VMBUS_STATUS_FAILED);
    }
    const name = this.channelName(ch);
    let transport: PacketTransport;
    let remoteWindow = 0;
    try {
      if (this.env.remote) {
        const window = new DataView(m.userData.buffer, m.userData.byteOffset, 4).getUint32(0, true);
        if (m.ringGpadlHandle !== 0 || window < 4096 || window > MAX_REMOTE_WINDOW || window % 8 !== 0) {
          throw new Error(`a remote open needs GPADL 0 and a window of 4 KiB to 4 MiB, got GPADL 0x${m.ringGpadlHandle.toString(16)} and ${window} bytes`);
        }
        this.env.remote.closeChannel(this.env.partitionId, ch.relid);
        transport = this.env.remote.open(this.env.partitionId, ch.relid, m.openId, window - 8, name);
        remoteWindow = window;
      } else {
        const g = this.gpadls.get(m.ringGpadlHandle);
        if (!g || g.relid !== ch.relid) throw new Error(`GPADL 0x${m.ringGpadlHandle.toString(16)} does not belong to relid ${ch.relid}`);
        const pages = g.window.pfns.length;
        const off = m.downstreamRingPageOffset;
        if (off < 2 || pages - off < 2) throw new Error(`downstream ring offset ${off} leaves no room for two rings in ${pages} pages`);
        const inbound = g.window.ringRegion(0, off);
        const out = g.window.ringRegion(off, pages - off);
        transport = new ShmTransport(out, inbound, () => this.signalGuest(ch.relid), name, this.env.dirty ?? null);
        ch.gpadl = m.ringGpadlHandle;
        ch.ringOffset = off;
      }
    } catch (e) {
      this.reject((e as Error).message, { relid: ch.relid });
      return await result(VMBUS_STATUS_FAILED);
    }
    // Answer first: the device may send at once, and the guest reads only once it knows it is open.
    await result(0);
    ch.openId = m.openId;
    ch.remoteWindow = remoteWindow;
    ch.opens++;
    this.startChannel(ch, transport, null);
  }

  private channelName(ch: ServerChannel): string {
    return `${this.env.name}/${ch.device.name}`;
  }

  /** Wires an open channel to its device and starts it; `saved` when it comes back from a saved state. */
  private startChannel(ch: ServerChannel, transport: PacketTransport, saved: SavedServerChannel | null): void {
    ch.rings = transport instanceof ShmTransport ? transport : null;
    const dev = ch.device;
    const wrapped = this.env.faults ? this.env.faults.wrap(ch.relid, dev.name, transport, dev.decodedRanges ? (p) => dev.decodedRanges!(p) : null) : transport;
    const channel = new VmbusChannel(ch.relid, this.channelName(ch), wrapped);
    ch.channel = channel;
    ch.state = 'open';
    if (saved) {
      channel.stats.packetsIn = saved.packetsIn;
      channel.stats.packetsOut = saved.packetsOut;
      channel.restoreQueue(saved.queued.map(loadPacket));
    }
    channel.onFault = (e) => {
      ch.faults++;
      ch.lastFault = e.message;
      this.env.log.warn({ partition: this.env.partitionId, relid: ch.relid, device: ch.device.name, err: e.message }, 'channel fault: closing the channel');
      void this.serialize(async () => {
        if (ch.channel !== channel) return;
        this.closeChannel(ch, 'fault');
        ch.state = 'offered';
      });
    };
    try {
      if (saved && ch.device.reopen) ch.device.reopen(channel);
      else ch.device.open(channel);
    } catch (e) {
      this.env.log.warn({ err: e, device: ch.device.name }, 'device failed to open its channel');
    }
    // Starting drains the inbound ring once: packets the guest wrote just before a save, whose
    // signal never arrived, are read now (a writer signals only on empty to non-empty).
    channel.start();
  }

  private closeChannel(ch: ServerChannel, why: string): void {
    if (!ch.channel) return;
    const c = ch.channel;
    ch.channel = null;
    ch.rings = null;
    ch.gpadl = 0;
    ch.openId = 0;
    ch.ringOffset = 0;
    ch.remoteWindow = 0;
    try {
      ch.device.close();
    } catch (e) {
      this.env.log.warn({ err: e, device: ch.device.name }, 'device failed to close');
    }
    c.close();
    if (this.env.remote) this.env.remote.closeChannel(this.env.partitionId, ch.relid);
    this.env.log.info({ partition: this.env.partitionId, relid: ch.relid, device: ch.device.name, why }, 'channel closed');
  }

  /** UNLOAD (or a reconnect): closes every channel and drops every GPADL; offers stay. */
  private async unload(): Promise<void> {
    for (const ch of this.channels.values()) this.closeChannel(ch, 'unload');
    for (const [h] of this.gpadls) await this.env.unmapGpadl(h).catch(() => undefined);
    this.gpadls.clear();
    this.pendingGpadls.clear();
    this.channels.clear();
    this.version = null;
    this.offersRequested = false;
    this.messageConnectionId = 1;
  }

  /**
   * The bus as plain data (state.ts), for a saved VM. Reads only. Call it with the VPs suspended
   * and the server idle (`whenIdle()`): a message half handled would be half saved, so a busy
   * server throws. GPADLs still being assembled are left out (the guest times out on them).
   */
  save(): VmbusServerState {
    const who = `the VMBus server of partition ${this.env.partitionId}`;
    if (this.pending > 0) throw new VmbusStateError(`${who} is handling ${this.pending} steps; save it when idle (await whenIdle() with the VPs suspended)`);
    if (this.channels.size > MAX_SAVED_CHANNELS) throw new VmbusStateError(`${who} has ${this.channels.size} channels; a saved state holds at most ${MAX_SAVED_CHANNELS}`);
    const state = this.saveNow(true);
    // What save() returns, restore() takes: check it now rather than at the restore.
    const checked = decodeVmbusServerState(state);
    if (typeof checked === 'string') throw new VmbusStateError(`${who} cannot be saved: ${checked}`);
    return state;
  }

  /**
   * Rebuilds the bus from a saved state on a fresh server, without a word to the guest: every
   * GPADL is mapped again (a new partition has none), every channel's event connection readied,
   * and every open channel rebuilt over the same ring memory (its indices and unread packets came
   * back with guest memory), given to its device through `reopen` (else `open`) and started, which
   * drains what the guest wrote before the save. Channels find their device by interface type and
   * instance among those added before with `addDevice` (which offers nothing before the guest
   * asks, and the guest does not ask again). A device added that the state does not name is
   * offered afterwards, as a hot add, if the guest had asked for offers. On failure nothing is
   * kept: the GPADLs mapped so far are unmapped and the server stays fresh.
   */
  restore(saved: VmbusServerState): Promise<void> {
    return this.serialize(() => this.restoreNow(saved));
  }

  /** GPADL windows `premap` made for the restore to come, by handle. */
  private readonly premapped = new Map<number, GpadlWindow>();
  /** Premaps run one after the other (a migration's hint, then its blackout's state). */
  private premapTail: Promise<void> = Promise.resolve();

  /**
   * The GPADLs the guest has now (with its channels, without their packets), for `premap` on the other
   * side of a live migration long before its blackout: a running guest keeps its GPADLs (its
   * channels' rings), so the blackout's `premap` then finds them mapped and only checks them. One
   * the guest made or tore down meanwhile is mapped or unmapped there.
   */
  gpadlHint(): VmbusServerState {
    return this.saveNow(false);
  }

  /** The server's state as it is; `queued`: with the packets its channels hold (a save), or none (a hint). */
  private saveNow(queued: boolean): VmbusServerState {
    const channels = [...this.channels.values()].map((ch): SavedServerChannel => {
      const open = ch.state === 'open' && ch.channel !== null;
      return {
        relid: ch.relid, interfaceType: ch.device.interfaceType, interfaceInstance: ch.device.interfaceInstance,
        state: ch.state === 'open' && !open ? 'offered' : ch.state, connectionId: ch.connectionId,
        transport: open ? ch.channel!.transport.kind : 'none',
        ringGpadl: open ? ch.gpadl : 0, downstreamRingPageOffset: open ? ch.ringOffset : 0,
        openId: open ? ch.openId : 0, remoteWindow: open ? ch.remoteWindow : 0,
        opens: ch.opens, faults: ch.faults, lastFault: saveFault(ch.lastFault),
        packetsIn: ch.channel?.stats.packetsIn ?? 0, packetsOut: ch.channel?.stats.packetsOut ?? 0,
        queued: open && queued ? ch.channel!.queuedPackets().map(savePacket) : [],
      };
    });
    return {
      version: 1,
      negotiatedVersion: this.version ?? 0,
      messageConnectionId: this.messageConnectionId,
      offersRequested: this.offersRequested,
      channels,
      gpadls: [...this.gpadls].map(([gpadl, g]) => ({ gpadl, relid: g.relid, owner: g.window.owner, pfns: [...g.window.pfns] })),
    };
  }

  /**
   * A restore's calls to the hypervisor, ahead of it: maps the saved state's GPADLs and makes its
   * channels' event connections (those a migration's destination made at its setup are there
   * already), the calls issued together rather than one after the other. Nothing here touches the
   * guest, so a migration's destination runs it alongside the VPs' restore, before the guest may
   * run; `restore` then takes these windows and has nothing to wait for. A window the restore does
   * not take (another state came, or it failed) is unmapped by it. A premap after another (a
   * migration's `gpadlHint` first) keeps the windows of the same pages and owner, unmaps the
   * others, and maps what is missing. Throws what the state or a call refused, with everything
   * mapped ahead unmapped again.
   */
  premap(saved: VmbusServerState): Promise<void> {
    const run = this.premapTail.then(() => this.premapNow(saved));
    this.premapTail = run.catch(() => undefined);
    return run;
  }

  private async premapNow(saved: VmbusServerState): Promise<void> {
    const who = `the VMBus server of partition ${this.env.partitionId}`;
    const s = checkedServerState(saved);
    if (typeof s === 'string') throw new VmbusStateError(`${who} cannot restore: ${s}`);
    if (this.closed || this.version !== null || this.channels.size > 0 || this.gpadls.size > 0) {
      throw new VmbusStateError(`${who} cannot map ahead of a restore: it is not fresh`);
    }
    const kept = new Set<number>();
    for (const g of s.gpadls) {
      const w = this.premapped.get(g.gpadl);
      if (w && w.owner === g.owner && samePages(w, g.pfns)) kept.add(g.gpadl);
    }
    const stale = [...this.premapped.keys()].filter((h) => !kept.has(h));
    for (const h of stale) this.premapped.delete(h);
    await Promise.all(stale.map((h) => this.env.unmapGpadl(h).catch(() => undefined)));
    const calls = await Promise.allSettled([
      ...s.gpadls.filter((g) => !kept.has(g.gpadl)).map(async (g) => void this.premapped.set(g.gpadl, await this.env.mapGpadl(g.gpadl, g.owner, g.pfns))),
      ...s.channels.filter((c) => c.state !== 'rescinded').map(async (c) => void (await this.env.channelConnection(c.relid))),
    ]);
    const failed = calls.find((r) => r.status === 'rejected');
    if (failed) {
      await this.dropPremapped();
      throw new VmbusStateError(`${who} cannot restore: ${(failed.reason as Error).message}`);
    }
  }

  /** Unmaps the windows `premap` made that no restore took (a restore does it itself, and so does `shutdown`). */
  async dropPremapped(): Promise<void> {
    const handles = [...this.premapped.keys()];
    this.premapped.clear();
    await Promise.all(handles.map((h) => this.env.unmapGpadl(h).catch(() => undefined)));
  }

  private async restoreNow(saved: VmbusServerState): Promise<void> {
    try {
      await this.restoreChecked(saved);
    } catch (e) {
      // A restore that failed keeps nothing: not even what was mapped ahead of it.
      await this.dropPremapped();
      throw e;
    }
  }

  private async restoreChecked(saved: VmbusServerState): Promise<void> {
    const who = `the VMBus server of partition ${this.env.partitionId}`;
    const s = checkedServerState(saved);
    if (typeof s === 'string') throw new VmbusStateError(`${who} cannot restore: ${s}`);
    if (this.closed || this.version !== null || this.channels.size > 0 || this.gpadls.size > 0 || this.pendingGpadls.size > 0) {
      throw new VmbusStateError(`${who} cannot restore: it is not fresh (connected, or it has channels or GPADLs)`);
    }
    if (s.negotiatedVersion !== 0 && !SERVER_VERSIONS.includes(s.negotiatedVersion)) throw new VmbusStateError(`${who} cannot restore: it does not speak the saved version ${vmbusVersionName(s.negotiatedVersion)}`);
    const same = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();
    const deviceOf = new Map<number, VmbusDevice>();
    for (const c of s.channels) {
      if (c.state === 'rescinded') {
        // Its device is gone; the relid stays taken until the guest releases it.
        deviceOf.set(c.relid, { name: `rescinded ${c.interfaceType}`, interfaceType: c.interfaceType, interfaceInstance: c.interfaceInstance, open: () => {}, close: () => {} });
        continue;
      }
      const d = this.devices.find((x) => same(x.interfaceType, c.interfaceType) && same(x.interfaceInstance, c.interfaceInstance) && ![...deviceOf.values()].includes(x));
      if (!d) throw new VmbusStateError(`${who} cannot restore: no device was added for channel ${c.relid} (type ${c.interfaceType}, instance ${c.interfaceInstance}); add it with addDevice before restore`);
      deviceOf.set(c.relid, d);
      if (c.transport === 'remote' && !this.env.remote) throw new VmbusStateError(`${who} cannot restore: channel ${c.relid} was remote but this server has no remote hub`);
      if (c.transport === 'shm' && this.env.remote) throw new VmbusStateError(`${who} cannot restore: channel ${c.relid} had rings but this server serves every channel remotely`);
    }

    const windows = new Map<number, GpadlWindow>();
    const rings = new Map<number, ShmTransport>();
    try {
      // Windows mapped ahead (premap) for exactly these pages are taken; any other is unmapped first.
      for (const g of s.gpadls) {
        const w = this.premapped.get(g.gpadl);
        if (w && w.owner === g.owner && samePages(w, g.pfns)) {
          windows.set(g.gpadl, w);
          this.premapped.delete(g.gpadl);
        }
      }
      await this.dropPremapped();
      // The calls go together rather than one after the other.
      const maps = await Promise.allSettled(s.gpadls.filter((g) => !windows.has(g.gpadl)).map(async (g) => windows.set(g.gpadl, await this.env.mapGpadl(g.gpadl, g.owner, g.pfns))));
      const mapFailed = maps.find((r) => r.status === 'rejected');
      if (mapFailed) throw mapFailed.reason;
      const live = s.channels.filter((c) => c.state !== 'rescinded');
      const conns = await Promise.all(live.map((c) => this.env.channelConnection(c.relid)));
      for (const [i, c] of live.entries()) {
        const conn = conns[i]!;
        if (conn !== c.connectionId) throw new VmbusStateError(`${who} cannot restore: channel ${c.relid} was offered on connection 0x${c.connectionId.toString(16)}, but its connection is now 0x${conn.toString(16)}`);
        if (c.transport !== 'shm') continue;
        // Ring views are built before anything is committed: a window refused here fails the restore.
        const w = windows.get(c.ringGpadl)!;
        const inbound = w.ringRegion(0, c.downstreamRingPageOffset);
        const out = w.ringRegion(c.downstreamRingPageOffset, w.pfns.length - c.downstreamRingPageOffset);
        const relid = c.relid;
        rings.set(relid, new ShmTransport(out, inbound, () => this.signalGuest(relid), `${this.env.name}/${deviceOf.get(relid)!.name}`, this.env.dirty ?? null));
      }
    } catch (e) {
      for (const h of windows.keys()) await this.env.unmapGpadl(h).catch(() => undefined);
      throw e instanceof VmbusStateError ? e : new VmbusStateError(`${who} cannot restore: ${(e as Error).message}`);
    }

    this.version = s.negotiatedVersion === 0 ? null : s.negotiatedVersion;
    this.messageConnectionId = s.messageConnectionId;
    this.offersRequested = s.offersRequested;
    for (const g of s.gpadls) this.gpadls.set(g.gpadl, { relid: g.relid, window: windows.get(g.gpadl)! });
    const opened: Array<[ServerChannel, SavedServerChannel]> = [];
    for (const c of s.channels) {
      const open = c.state === 'open';
      const ch: ServerChannel = {
        relid: c.relid, device: deviceOf.get(c.relid)!, state: open ? 'offered' : c.state, connectionId: c.connectionId, channel: null, rings: null,
        gpadl: c.ringGpadl, openId: c.openId, ringOffset: c.downstreamRingPageOffset, remoteWindow: c.remoteWindow,
        opens: c.opens, faults: c.faults, lastFault: c.lastFault === '' ? null : c.lastFault,
      };
      this.channels.set(c.relid, ch);
      if (open) opened.push([ch, c]);
    }
    for (const [ch, c] of opened) {
      let transport: PacketTransport;
      if (c.transport === 'shm') transport = rings.get(c.relid)!;
      else {
        const hub = this.env.remote!;
        hub.closeChannel(this.env.partitionId, c.relid);
        transport = hub.open(this.env.partitionId, c.relid, c.openId, c.remoteWindow - 8, this.channelName(ch));
      }
      this.startChannel(ch, transport, c);
    }
    this.env.log.info({ partition: this.env.partitionId, version: this.version === null ? null : vmbusVersionName(this.version), channels: s.channels.length, open: opened.length, gpadls: s.gpadls.length }, 'VMBus restored');
    // Devices the state does not name are new: offered now as a hot add, if the guest had asked.
    if (this.offersRequested) for (const d of this.devices) await this.offer(d);
  }

  /** The partition is going away: close everything without talking to the guest. */
  shutdown(): void {
    this.closed = true;
    void this.dropPremapped();
    for (const ch of this.channels.values()) this.closeChannel(ch, 'partition gone');
    this.channels.clear();
    this.gpadls.clear();
  }
}

/** Whether a window covers exactly these pages, in this order. */
function samePages(w: GpadlWindow, pfns: readonly number[]): boolean {
  return w.pfns.length === pfns.length && w.pfns.every((p, i) => p === pfns[i]);
}
