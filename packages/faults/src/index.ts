/**
 * @hvlab/faults — fault injection (ARCHITECTURE §9): the nemesis process that injects, times and
 * undoes every fault of a home, its client, and the chaos experiment runner with its checkers.
 */
export * from './types.js';
export * from './request.js';
export * from './resolve.js';
export * from './world.js';
export * from './wire.js';
export * from './nemesis.js';
export * from './bitflip.js';
export * from './host-held.js';
export * from './client.js';
export * from './chaos-spec.js';
export * from './schedule.js';
export * from './checkers.js';
export * from './timeline.js';
export * from './report.js';
export * from './moves.js';
export * from './chaos.js';
export * from './run-homes.js';
