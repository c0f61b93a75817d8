/**
 * @hvlab/vmbus — VMBus as in Hyper-V: ring buffers with the Linux/OpenVMM byte layout
 * (`ring.ts`), GPADL windows (`gpadl.ts`), the channel API over two transports (`transport.ts`:
 * shared-memory rings with signals; `remote.ts`: the same packets as frames with credits), the
 * root's per-partition server (`server.ts`) and the guest's client (`client.ts`).
 *
 * Key types: RingWriter/RingReader, GpadlWindow, VmbusChannel, VmbusServer + VmbusDevice (what a
 * VSP implements), VmbusClient + VmbusDriver (what a VSC implements). The seams: the remote
 * transport runs on a `FrameLink`/`FrameListener` (`link.ts`; ZeroMQ in `zmq-link.ts`, the only
 * file that touches it, and an in-process `MemoryFrameNetwork` for tests), frames are decoded once
 * by `decodeRemoteFrame` (`frames.ts`), faults are injected by wrapping a link, a listener or a
 * signal function, and — for the fault API — every channel end a server opens, with faults that
 * are switched on and off on the live channel (`faults.ts`: VmbusFaultInjector), and a ring user logs its own writes into the rings' memory through
 * a `DirtyLog` (the guest's GuestMemory, for live migration) without vmbus importing the guest.
 * Server and client save to and restore from plain versioned data (`state.ts`: VmbusServerState,
 * VmbusClientState and their checking decoders), so a restored VM keeps its open channels and
 * unread packets without negotiating again, as in OpenVMM.
 *
 * Deviations from Hyper-V: rings must lie on contiguous guest pages (nothing is double-mapped);
 * one SINT2 on VP 0 takes every channel's interrupt; no monitor pages (every signal is a
 * SignalEvent); the remote transport, its frames and its offer flag are hvlab's own.
 */
export * from './ring.js';
export * from './gpadl.js';
export * from './transport.js';
export * from './frames.js';
export * from './link.js';
export * from './zmq-link.js';
export * from './faults.js';
export * from './remote.js';
export * from './server.js';
export * from './client.js';
export * from './state.js';
export * from './loopback.js';
