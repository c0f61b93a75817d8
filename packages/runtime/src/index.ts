/**
 * @hvlab/runtime — process plumbing shared by every process of a host: state paths, pino
 * loggers, the hypervisor anchor watch, ZeroMQ helpers and the typed hypercall client (HvClient),
 * which the root's VID, the VMWPs and the guest kernels all use.
 */
export * from './paths.js';
export * from './log.js';
export * from './anchor.js';
export * from './zmq.js';
export * from './hvclient.js';
export * from './ipc.js';
export * from './vmwp-link.js';
export * from './files.js';
export * from './child-line.js';
export * from './display-width.js';
export * from './curve.js';
export * from './rpc.js';
export * from './prewarm.js';
export * from './suspension.js';
export * from './host-clock.js';
export * from './test-knob.js';
