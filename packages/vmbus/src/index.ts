/**
 * @hvlab/vmbus — VMBus as in Hyper-V: ring buffers with the Linux/OpenVMM byte layout
 * (`ring.ts`), GPADL windows (`gpadl.ts`), the channel API over two transports (`transport.ts`:
 * shared-memory rings with signals; `remote.ts`: the same packets over ZeroMQ with credits), the
 * root's per-partition server (`server.ts`) and the guest's client (`client.ts`).
 *
 * Key types: RingWriter/RingReader, GpadlWindow, VmbusChannel, VmbusServer + VmbusDevice (what a
 * VSP implements), VmbusClient + VmbusDriver (what a VSC implements).
 *
 * Deviations from Hyper-V: rings must lie on contiguous guest pages (nothing is double-mapped);
 * one SINT2 on VP 0 takes every channel's interrupt; no monitor pages (every signal is a
 * SignalEvent); the remote transport and its offer flag are hvlab's own.
 */
export * from './ring.js';
export * from './gpadl.js';
export * from './transport.js';
export * from './remote.js';
export * from './server.js';
export * from './client.js';
export * from './loopback.js';
