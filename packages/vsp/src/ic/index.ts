export * from './provider.js';
export * from './heartbeat.js';
export * from './shutdown.js';
export * from './timesync.js';
export * from './kvp.js';
