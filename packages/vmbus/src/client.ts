/**
 * The guest's VMBus client: negotiates a version (newest first, INITIATE_CONTACT on connection 4
 * for 5.0 and later, 1 before), asks for offers, and for every offer a driver (VSC) is registered
 * for, allocates the two rings in guest memory, describes them to the host in a GPADL and opens
 * the channel. A rescinded offer is detached, closed, its GPADL torn down and its relid released;
 * a new offer while connected is attached at once (hot add). `disconnect()` closes everything and
 * sends UNLOAD, as a guest does at shutdown.
 *
 * Save and restore (state.ts): `save()` returns the client as plain data; `restore()` on a fresh
 * client whose drivers are registered rebuilds every attached channel over the same ring pages
 * (the rings came back with guest memory) and hands it to its driver through `reattach`, without
 * a message to the host. The page allocator is the guest kernel's: the ring pages it handed out
 * are its state to save, this client saves only which pages they are.
 *
 * Remote-transport channels are reopened at both ends with the saved open id (so the same
 * generation) and full credit windows: nothing of the old link survives a restore (new processes,
 * new sockets), and a fresh window at both ends keeps the credit accounting agreed. Packets the
 * channels had queued are saved and sent again; frames that were on the wire at save time are
 * lost, as on a lossy link (the device protocol above times out on them). Re-offering instead
 * would re-negotiate and reset the device protocol, which is what a restore must not do.
 */
import {
  decodeChannelMessage, encodeChannelMessage, gpadlMessages, ChannelMessageError, VMBUS_VERSIONS_NEWEST_FIRST,
  VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4, VmbusVersion, vmbusVersionName, OFFER_FLAG_REMOTE_TRANSPORT, type ChannelMessage,
} from '@hvlab/protocol';
import { initRing, RING_CONTROL_BYTES, type RingRegion } from './ring.js';
import { ShmTransport, VmbusChannel, type DirtyLog, type PacketTransport } from './transport.js';
import type { RemoteLink } from './remote.js';
import {
  decodeVmbusClientState, checkedClientState, loadPacket, savePacket, VmbusStateError, MAX_SAVED_CHANNELS,
  type SavedClientChannel, type VmbusClientState,
} from './state.js';

const PAGE = 4096;
/** Linux's first GPADL handle. */
const FIRST_GPADL = 0xe1e10;

/** A synthetic device's consumer side (VSC): attached to an open channel, detached on rescind. */
export interface VmbusDriver {
  readonly name: string;
  readonly interfaceType: string;
  /** Data bytes per ring direction (a multiple of 4 KiB). */
  readonly ringBytes: number;
  attach(channel: VmbusChannel): void;
  /**
   * The channel came back open from a saved state; do not negotiate again (the host's side of the
   * device protocol is where it was at save). Without it, `attach` is called instead.
   */
  reattach?(channel: VmbusChannel): void;
  detach(): void;
}

export interface VmbusClientEnv {
  post(connectionId: number, payload: Uint8Array): Promise<number>;
  /** SignalEvent on the channel's connection (flag 0). */
  signal(connectionId: number): void;
  /** All of guest memory, or null when it is private (then every channel is remote). */
  memory: SharedArrayBuffer | null;
  /** Where the client's own writes into `memory` (ring set-up, ring writes) are logged. */
  dirty?: DirtyLog;
  allocPages(count: number): number;
  freePages(pfn: number, count: number): void;
  remote(): RemoteLink | null;
  log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}

export interface Offer {
  relid: number;
  interfaceType: string;
  interfaceInstance: string;
  flags: number;
  connectionId: number;
}

interface Attached {
  offer: Offer;
  driver: VmbusDriver;
  channel: VmbusChannel | null;
  gpadl: number;
  pfn: number;
  pages: number;
  transport: 'shm' | 'remote';
  openId: number;
  /** Remote transport: the window asked for in OPENCHANNEL (0 with rings). */
  remoteWindow: number;
}

export class VmbusClientError extends Error {
  override name = 'VmbusClientError';
}

export class VmbusClient {
  version: number | null = null;
  readonly versionsTried: number[] = [];
  private messageConnectionId = VMBUS_MESSAGE_CONNECTION_ID;
  private readonly drivers = new Map<string, VmbusDriver>();
  readonly offers = new Map<number, Offer>();
  private readonly attached = new Map<number, Attached>();
  private readonly waiters: Array<{ match: (m: ChannelMessage) => boolean; resolve: (m: ChannelMessage) => void }> = [];
  private allOffersDelivered = false;
  private nextGpadl = FIRST_GPADL;
  private nextOpenId = 1;
  private chain: Promise<void> = Promise.resolve();
  /** Steps queued or running on `chain`. */
  private pending = 0;
  readonly stats = { messages: 0, rejected: 0, attaches: 0, detaches: 0 };

  constructor(private readonly env: VmbusClientEnv, private readonly timeoutMs = 10000) {}

  register(driver: VmbusDriver): void {
    this.drivers.set(driver.interfaceType, driver);
  }

  /** Which drivers are attached, with their relid and transport. */
  attachedChannels(): Array<{ name: string; relid: number; transport: 'shm' | 'remote'; open: boolean }> {
    return [...this.attached.values()].map((a) => ({ name: a.driver.name, relid: a.offer.relid, transport: a.transport, open: a.channel?.open ?? false }));
  }

  private wait(match: (m: ChannelMessage) => boolean, what: string): Promise<ChannelMessage> {
    const p = new Promise<ChannelMessage>((resolve, reject) => {
      const w = { match, resolve: (m: ChannelMessage) => { clearTimeout(t); resolve(m); } };
      const t = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new VmbusClientError(`no ${what} from the host within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiters.push(w);
    });
    // A caller that gave up (its post failed first) never awaits this: its time-out must not
    // become an unhandled rejection, which would end the guest.
    p.catch(() => undefined);
    return p;
  }

  private async post(m: ChannelMessage, connectionId = this.messageConnectionId): Promise<void> {
    const st = await this.env.post(connectionId, encodeChannelMessage(m));
    if (st !== 0) throw new VmbusClientError(`posting ${m.type} failed with status 0x${st.toString(16)}`);
  }

  /** Version negotiation, newest first; then offers, attaching every driver that has one. */
  async connect(versions: readonly number[] = VMBUS_VERSIONS_NEWEST_FIRST): Promise<number> {
    for (const v of versions) {
      this.versionsTried.push(v);
      const conn = v >= VmbusVersion.V5_0 ? VMBUS_MESSAGE_CONNECTION_ID_4 : VMBUS_MESSAGE_CONNECTION_ID;
      const answer = this.wait((m) => m.type === 'VersionResponse', 'VERSION_RESPONSE');
      await this.post({ type: 'InitiateContact', versionRequested: v, targetVcpu: 0, msgSint: 2, msgVtl: 0, monitorPage1: 0n, monitorPage2: 0n }, conn);
      const r = (await answer) as Extract<ChannelMessage, { type: 'VersionResponse' }>;
      if (r.versionSupported) {
        this.version = v;
        this.messageConnectionId = v >= VmbusVersion.V5_0 ? r.messageConnectionId : VMBUS_MESSAGE_CONNECTION_ID;
        this.env.log.info({ version: vmbusVersionName(v), tried: this.versionsTried.map(vmbusVersionName) }, 'VMBus version negotiated');
        break;
      }
    }
    if (this.version === null) throw new VmbusClientError(`the host accepted none of ${versions.length} VMBus versions`);
    const done = this.wait((m) => m.type === 'AllOffersDelivered', 'ALLOFFERS_DELIVERED');
    await this.post({ type: 'RequestOffers' });
    await done;
    this.allOffersDelivered = true;
    // Every offered channel is opened at once, as Linux probes VMBus devices asynchronously: their
    // GPADL and OPENCHANNEL exchanges overlap (each answer is matched by its GPADL handle, relid and
    // open id), as one step of the client's chain, so a rescind still waits for it.
    await this.serialize(async () => {
      await Promise.all([...this.offers.values()].map((o) => this.attach(o)));
    });
    return this.version;
  }

  /** True when no negotiation, attach, rescind or restore is under way. */
  get idle(): boolean {
    return this.pending === 0 && this.waiters.length === 0;
  }

  /** Resolves once the client is idle. */
  async whenIdle(): Promise<void> {
    while (!this.idle) await (this.pending > 0 ? this.chain : new Promise((r) => setTimeout(r, 5)));
  }

  private serialize(fn: () => Promise<void>): Promise<void> {
    this.pending++;
    const p = this.chain.then(fn, fn).finally(() => {
      this.pending--;
    });
    this.chain = p.catch((e) => this.env.log.warn({ err: e }, 'VMBus client step failed'));
    return p;
  }

  /** A channel message from the host (SINT2 message slot). */
  onMessage(payload: Uint8Array): void {
    this.stats.messages++;
    let m: ChannelMessage;
    try {
      m = decodeChannelMessage(payload);
    } catch (e) {
      if (!(e instanceof ChannelMessageError)) throw e;
      this.stats.rejected++;
      this.env.log.warn({ err: e.message }, 'malformed VMBus message from the host');
      return;
    }
    const i = this.waiters.findIndex((w) => w.match(m));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w.resolve(m);
      return;
    }
    if (m.type === 'OfferChannel') {
      const o: Offer = { relid: m.childRelid, interfaceType: m.interfaceType, interfaceInstance: m.interfaceInstance, flags: m.flags, connectionId: m.connectionId };
      this.offers.set(o.relid, o);
      if (this.allOffersDelivered) void this.serialize(() => this.attach(o));
    } else if (m.type === 'RescindChannelOffer') {
      void this.serialize(() => this.rescinded(m.childRelid));
    }
  }

  /** The host signalled channel `relid` (its event flag on SINT2). */
  onEvent(relid: number): void {
    const t = this.attached.get(relid)?.channel?.transport;
    if (t instanceof ShmTransport) t.onSignal();
  }

  private ringRegion(pfn: number, pages: number): RingRegion {
    return { buffer: this.env.memory!, byteOffset: pfn * PAGE, byteLength: pages * PAGE };
  }

  private async attach(o: Offer): Promise<void> {
    const driver = this.drivers.get(o.interfaceType);
    if (!driver || this.attached.has(o.relid) || !this.offers.has(o.relid)) return;
    const remote = (o.flags & OFFER_FLAG_REMOTE_TRANSPORT) !== 0 || this.env.memory === null;
    const openId = this.nextOpenId++;
    const a: Attached = { offer: o, driver, channel: null, gpadl: 0, pfn: 0, pages: 0, transport: remote ? 'remote' : 'shm', openId, remoteWindow: remote ? driver.ringBytes : 0 };
    this.attached.set(o.relid, a);
    let transport: PacketTransport;
    const userData = new Uint8Array(120);
    if (remote) {
      const link = this.env.remote();
      if (!link) throw new VmbusClientError(`channel ${driver.name} is remote but the guest has no remote VMBus endpoint`);
      transport = link.open(o.relid, openId, driver.ringBytes - 8, driver.name);
      new DataView(userData.buffer).setUint32(0, driver.ringBytes, true);
    } else {
      const ringPages = 1 + driver.ringBytes / PAGE;
      a.pages = ringPages * 2;
      a.pfn = this.env.allocPages(a.pages);
      const out = this.ringRegion(a.pfn, ringPages);
      const inbound = this.ringRegion(a.pfn + ringPages, ringPages);
      initRing(out);
      initRing(inbound);
      this.env.dirty?.markDirty(out.byteOffset, RING_CONTROL_BYTES);
      this.env.dirty?.markDirty(inbound.byteOffset, RING_CONTROL_BYTES);
      a.gpadl = this.nextGpadl++;
      const created = this.wait((m) => m.type === 'GpadlCreated' && m.gpadl === a.gpadl, 'GPADL_CREATED');
      const pfns = Array.from({ length: a.pages }, (_, i) => a.pfn + i);
      for (const m of gpadlMessages(o.relid, a.gpadl, pfns)) await this.post(m);
      const c = (await created) as Extract<ChannelMessage, { type: 'GpadlCreated' }>;
      if (c.status !== 0) {
        this.release(a);
        throw new VmbusClientError(`the host refused GPADL 0x${a.gpadl.toString(16)} for ${driver.name}: status 0x${c.status.toString(16)}`);
      }
      transport = new ShmTransport(out, inbound, () => this.env.signal(o.connectionId), driver.name, this.env.dirty ?? null);
    }
    const opened = this.wait((m) => m.type === 'OpenChannelResult' && m.childRelid === o.relid && m.openId === openId, 'OPENCHANNEL_RESULT');
    await this.post({
      type: 'OpenChannel', childRelid: o.relid, openId, ringGpadlHandle: a.gpadl, targetVp: 0,
      downstreamRingPageOffset: remote ? 0 : a.pages / 2, userData,
    });
    const r = (await opened) as Extract<ChannelMessage, { type: 'OpenChannelResult' }>;
    if (r.status !== 0) {
      transport.close();
      await this.teardown(a);
      throw new VmbusClientError(`the host refused to open ${driver.name} (relid ${o.relid}): status 0x${r.status.toString(16)}`);
    }
    a.channel = new VmbusChannel(o.relid, driver.name, transport);
    a.channel.onFault = (e) => this.env.log.warn({ relid: o.relid, driver: driver.name, err: e.message }, 'channel fault');
    this.stats.attaches++;
    this.env.log.info({ relid: o.relid, driver: driver.name, transport: a.transport }, 'channel open');
    driver.attach(a.channel);
    a.channel.start();
  }

  private release(a: Attached): void {
    if (a.pages) this.env.freePages(a.pfn, a.pages);
    a.pages = 0;
    this.attached.delete(a.offer.relid);
  }

  private async teardown(a: Attached): Promise<void> {
    if (a.transport === 'remote') this.env.remote()?.closeChannel(a.offer.relid);
    if (a.gpadl) {
      const gone = this.wait((m) => m.type === 'GpadlTorndown' && m.gpadl === a.gpadl, 'GPADL_TORNDOWN');
      await this.post({ type: 'GpadlTeardown', childRelid: a.offer.relid, gpadl: a.gpadl });
      await gone;
      a.gpadl = 0;
    }
    this.release(a);
  }

  /** Closes one attached channel as a driver unloading would: detach, CLOSECHANNEL, teardown. */
  private async close(a: Attached): Promise<void> {
    try {
      a.driver.detach();
    } catch (e) {
      this.env.log.warn({ err: e, driver: a.driver.name }, 'driver failed to detach');
    }
    if (a.channel?.open) {
      a.channel.close();
    }
    a.channel = null;
    this.stats.detaches++;
    await this.post({ type: 'CloseChannel', childRelid: a.offer.relid });
    await this.teardown(a);
  }

  private async rescinded(relid: number): Promise<void> {
    const a = this.attached.get(relid);
    this.offers.delete(relid);
    if (a) {
      // Like Linux: on a rescinded channel neither CLOSECHANNEL nor GPADL_TEARDOWN is sent; the
      // host has already let go of the rings, so their pages are free again.
      try {
        a.driver.detach();
      } catch (e) {
        this.env.log.warn({ err: e, driver: a.driver.name }, 'driver failed to detach');
      }
      a.channel?.close();
      a.channel = null;
      this.stats.detaches++;
      if (a.transport === 'remote') this.env.remote()?.closeChannel(relid);
      this.release(a);
    }
    await this.post({ type: 'RelidReleased', childRelid: relid });
    this.env.log.info({ relid, driver: a?.driver.name ?? null }, 'offer rescinded; relid released');
  }

  /**
   * The client as plain data (state.ts), for a saved VM. Reads only. Call it with the VM
   * suspended and the client idle (`whenIdle()`): a negotiation or attach half done would be half
   * saved, so a busy client throws.
   */
  save(): VmbusClientState {
    if (!this.idle) throw new VmbusStateError(`the VMBus client is busy (${this.pending} steps, ${this.waiters.length} answers awaited); save it when idle (await whenIdle())`);
    if (this.offers.size > MAX_SAVED_CHANNELS) throw new VmbusStateError(`the VMBus client holds ${this.offers.size} offers; a saved state holds at most ${MAX_SAVED_CHANNELS}`);
    const channels = [...this.attached.values()].map((a): SavedClientChannel => {
      const open = a.channel?.open ?? false;
      return {
        relid: a.offer.relid, interfaceType: a.offer.interfaceType, transport: a.transport, open,
        gpadl: a.gpadl, pfn: a.pfn, pages: a.pages, openId: a.openId, remoteWindow: a.remoteWindow,
        packetsIn: a.channel?.stats.packetsIn ?? 0, packetsOut: a.channel?.stats.packetsOut ?? 0,
        queued: open ? a.channel!.queuedPackets().map(savePacket) : [],
      };
    });
    const state: VmbusClientState = {
      version: 1,
      negotiatedVersion: this.version ?? 0,
      messageConnectionId: this.messageConnectionId,
      allOffersDelivered: this.allOffersDelivered,
      nextGpadl: this.nextGpadl,
      nextOpenId: this.nextOpenId,
      offers: [...this.offers.values()].map((o) => ({ relid: o.relid, interfaceType: o.interfaceType, interfaceInstance: o.interfaceInstance, flags: o.flags, connectionId: o.connectionId })),
      channels,
    };
    const checked = decodeVmbusClientState(state);
    if (typeof checked === 'string') throw new VmbusStateError(`the VMBus client cannot be saved: ${checked}`);
    return state;
  }

  /**
   * Rebuilds the client from a saved state, after `register()` of its drivers and before any
   * message from the host, without a word to the host: every attached channel is rebuilt over its
   * ring pages (or reopened on the remote link with its open id), given to its driver through
   * `reattach` (else `attach`) and started, which drains what the host wrote before the save. A
   * channel that had faulted comes back attached but closed (its driver is not called); rescind
   * or disconnect releases it as before. Offers without an attached channel are kept and not
   * attached (that would negotiate). On failure nothing is kept.
   */
  restore(saved: VmbusClientState): Promise<void> {
    return this.serialize(() => this.restoreNow(saved));
  }

  private async restoreNow(saved: VmbusClientState): Promise<void> {
    const s = checkedClientState(saved);
    if (typeof s === 'string') throw new VmbusStateError(`the VMBus client cannot restore: ${s}`);
    if (this.version !== null || this.offers.size > 0 || this.attached.size > 0 || this.waiters.length > 0) {
      throw new VmbusStateError('the VMBus client cannot restore: it is not fresh (connected, or it has offers or channels)');
    }
    const same = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();
    const plans: Array<{ c: SavedClientChannel; driver: VmbusDriver; ring: ShmTransport | null; link: RemoteLink | null }> = [];
    for (const c of s.channels) {
      const driver = [...this.drivers.values()].find((d) => same(d.interfaceType, c.interfaceType));
      if (!driver) throw new VmbusStateError(`the VMBus client cannot restore: no driver is registered for channel ${c.relid} (type ${c.interfaceType}); register it before restore`);
      const offer = s.offers.find((o) => o.relid === c.relid)!;
      let ring: ShmTransport | null = null;
      let link: RemoteLink | null = null;
      if (c.open && c.transport === 'shm') {
        const mem = this.env.memory;
        if (!mem) throw new VmbusStateError(`the VMBus client cannot restore: channel ${c.relid} had rings but guest memory is private now`);
        if ((c.pfn + c.pages) * PAGE > mem.byteLength) throw new VmbusStateError(`the VMBus client cannot restore: channel ${c.relid}'s ring pages 0x${c.pfn.toString(16)}+${c.pages} lie outside guest memory of ${mem.byteLength} bytes`);
        const half = c.pages / 2;
        const connectionId = offer.connectionId;
        ring = new ShmTransport(this.ringRegion(c.pfn, half), this.ringRegion(c.pfn + half, half), () => this.env.signal(connectionId), driver.name, this.env.dirty ?? null);
      } else if (c.open) {
        link = this.env.remote();
        if (!link) throw new VmbusStateError(`the VMBus client cannot restore: channel ${c.relid} was remote but the guest has no remote VMBus endpoint`);
      }
      plans.push({ c, driver, ring, link });
    }

    this.version = s.negotiatedVersion === 0 ? null : s.negotiatedVersion;
    this.messageConnectionId = s.messageConnectionId;
    this.allOffersDelivered = s.allOffersDelivered;
    this.nextGpadl = s.nextGpadl;
    this.nextOpenId = s.nextOpenId;
    for (const o of s.offers) this.offers.set(o.relid, { ...o });
    for (const { c, driver, ring, link } of plans) {
      const a: Attached = {
        offer: this.offers.get(c.relid)!, driver, channel: null, gpadl: c.gpadl, pfn: c.pfn, pages: c.pages,
        transport: c.transport, openId: c.openId, remoteWindow: c.remoteWindow,
      };
      this.attached.set(c.relid, a);
      if (!c.open) continue;
      const transport: PacketTransport = ring ?? link!.open(c.relid, c.openId, c.remoteWindow - 8, driver.name);
      const channel = new VmbusChannel(c.relid, driver.name, transport);
      channel.stats.packetsIn = c.packetsIn;
      channel.stats.packetsOut = c.packetsOut;
      channel.restoreQueue(c.queued.map(loadPacket));
      channel.onFault = (e) => this.env.log.warn({ relid: c.relid, driver: driver.name, err: e.message }, 'channel fault');
      a.channel = channel;
      try {
        if (driver.reattach) driver.reattach(channel);
        else driver.attach(channel);
      } catch (e) {
        this.env.log.warn({ err: e, driver: driver.name }, 'driver failed to take its restored channel');
      }
      // Starting drains the inbound ring once: what the host wrote just before the save is read now.
      channel.start();
    }
    this.env.log.info({ version: this.version === null ? null : vmbusVersionName(this.version), offers: s.offers.length, channels: s.channels.length }, 'VMBus client restored');
  }

  /** Shutdown: close every channel, then UNLOAD. */
  async disconnect(): Promise<void> {
    await this.serialize(async () => {
      for (const a of [...this.attached.values()]) await this.close(a).catch((e) => this.env.log.warn({ err: e }, 'closing a channel failed'));
      if (this.version === null) return;
      const done = this.wait((m) => m.type === 'UnloadResponse', 'UNLOAD_RESPONSE');
      await this.post({ type: 'Unload' });
      await done;
      this.version = null;
      this.offers.clear();
      this.allOffersDelivered = false;
    });
  }
}
