/**
 * An in-process host/guest VMBus pair for tests and benchmarks: a `VmbusServer` and a
 * `VmbusClient` joined without a hypervisor. Channel messages are handed across asynchronously
 * (as SynIC messages would be), signals arrive on a later turn (as interrupts would), GPADLs are
 * checked against the memory size, and the remote transport uses real ZeroMQ sockets unless
 * `frames` names another frame network (e.g. `MemoryFrameNetwork`). Everything else —
 * negotiation, offers, GPADLs, rings, credits — is the production code.
 *
 * Fault injection wraps, never patches: `faults` puts a FaultyLink on the guest's remote link and a
 * FaultyListener on the hub, and wraps the signal functions of the shared-memory transport; a
 * `VmbusFaultInjector` (`faults.injector`) is given to the server and wraps its channel ends, as in
 * the VMWP.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GpadlWindow } from './gpadl.js';
import { FaultyLink, FaultyListener, type LinkFaults, type SignalFault, type VmbusFaultInjector } from './faults.js';
import type { FrameNetwork } from './link.js';
import { RemoteHub, RemoteLink } from './remote.js';
import { VmbusServer, type VmbusLog } from './server.js';
import { VmbusClient } from './client.js';
import type { DirtyLog } from './transport.js';
import { zmqFrames } from './zmq-link.js';

const PAGE = 4096;

export interface LoopbackOptions {
  transport: 'shm' | 'remote';
  memoryBytes?: number;
  log?: VmbusLog;
  clientTimeoutMs?: number;
  /** The frame network of the remote transport (default: ZeroMQ over ipc://). */
  frames?: FrameNetwork;
  faults?: {
    /** On the guest's link to the hub. */
    guestLink?: LinkFaults;
    /** On the hub's link to the guest. */
    hostLink?: LinkFaults;
    /** On the guest's signals to the host, and the host's to the guest (shared-memory transport). */
    toHost?: SignalFault;
    toGuest?: SignalFault;
    /** The host's fault injector (the fault API's vmbus faults), given to the server and the hub. */
    injector?: VmbusFaultInjector;
  };
  /** The guest's dirty log (its own writes into `memory`). */
  guestDirty?: DirtyLog;
  /**
   * Guest memory to run on instead of fresh zeroed memory (a restored VM's copy), and the page the
   * guest's ring allocator had reached in it (`nextFreePage` of the saved pair).
   */
  memory?: SharedArrayBuffer;
  nextFreePage?: number;
}

let memoryEndpoints = 0;

export class VmbusLoopback {
  readonly memory: SharedArrayBuffer;
  readonly server: VmbusServer;
  readonly client: VmbusClient;
  readonly hub: RemoteHub | null;
  private link: RemoteLink | null = null;
  private readonly dir: string | null;
  private top: number;
  /** GPADLs the host holds now (handle -> pfns). */
  readonly mapped = new Map<number, number[]>();
  /** Messages each way, for assertions. */
  readonly toGuest: Uint8Array[] = [];
  readonly toHost: Array<{ connectionId: number; payload: Uint8Array }> = [];
  /** When set, host->guest signals are held back (a guest that does not take interrupts). */
  holdGuestSignals = false;
  private closed = false;

  constructor(readonly opts: LoopbackOptions) {
    this.memory = opts.memory ?? new SharedArrayBuffer(opts.memoryBytes ?? 4 * 1024 * 1024);
    const bytes = this.memory.byteLength;
    this.top = opts.nextFreePage ?? bytes / PAGE;
    const log = opts.log ?? { info: () => {}, warn: () => {} };
    const frames = opts.frames ?? zmqFrames;
    const faults = opts.faults ?? {};
    const zmq = frames === zmqFrames;
    this.dir = opts.transport === 'remote' && zmq ? mkdtempSync(join(tmpdir(), 'hvlab-lb-')) : null;
    if (opts.transport === 'remote') {
      const endpoint = this.dir ? `ipc://${join(this.dir, 'vmbus')}` : `memory://loopback-${++memoryEndpoints}`;
      const listener = frames.listen(endpoint);
      const hostLink = faults.hostLink;
      const injector = faults.injector;
      const linked = hostLink ? new FaultyListener(listener, () => hostLink) : listener;
      this.hub = new RemoteHub(endpoint, log, injector ? new FaultyListener(linked, () => injector.linkFaults) : linked);
    } else {
      this.hub = null;
    }
    const toHost = faults.toHost ?? ((deliver: () => void) => deliver());
    const toGuest = faults.toGuest ?? ((deliver: () => void) => deliver());
    this.hub?.admit(7, 'loopback-token');
    this.server = new VmbusServer({
      partitionId: 7,
      name: 'loopback',
      remote: this.hub,
      log,
      ...(faults.injector ? { faults: faults.injector } : {}),
      post: async (payload) => {
        const copy = payload.slice();
        this.toGuest.push(copy);
        setImmediate(() => !this.closed && this.client.onMessage(copy));
        return 0;
      },
      signalGuest: (relid) => {
        if (!this.holdGuestSignals) toGuest(() => setImmediate(() => !this.closed && this.client.onEvent(relid)));
      },
      channelConnection: async (relid) => 0x10000 + relid,
      mapGpadl: async (gpadl, owner, pfns) => {
        for (const p of pfns) if (p >= bytes / PAGE) throw new Error(`page 0x${p.toString(16)} is outside the partition`);
        this.mapped.set(gpadl, pfns);
        return new GpadlWindow(gpadl, owner, pfns, this.memory);
      },
      unmapGpadl: async (gpadl) => {
        this.mapped.delete(gpadl);
      },
    });
    this.client = new VmbusClient({
      post: async (connectionId, payload) => {
        const copy = payload.slice();
        this.toHost.push({ connectionId, payload: copy });
        setImmediate(() => !this.closed && void this.server.onMessage(connectionId, copy));
        return 0;
      },
      signal: (connectionId) => toHost(() => setImmediate(() => !this.closed && this.server.onSignal(connectionId - 0x10000))),
      memory: opts.transport === 'shm' ? this.memory : null,
      ...(opts.guestDirty ? { dirty: opts.guestDirty } : {}),
      allocPages: (n) => {
        this.top -= n;
        return this.top;
      },
      freePages: () => {},
      remote: () => {
        if (!this.hub) return null;
        if (!this.link) {
          const raw = frames.connect(this.hub.endpoint);
          this.link = new RemoteLink(this.hub.endpoint, 7, 'loopback-token', faults.guestLink ? new FaultyLink(raw, faults.guestLink) : raw);
        }
        return this.link;
      },
      log,
    }, opts.clientTimeoutMs ?? 5000);
  }

  /** The guest's ring allocator hands out pages below this one (it grows down from the top). */
  get nextFreePage(): number {
    return this.top;
  }

  async start(): Promise<void> {
    await this.hub?.bind();
  }

  close(): void {
    this.closed = true;
    this.server.shutdown();
    this.link?.close();
    this.hub?.close();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
