/**
 * @hvlab/vsp — the host halves of the virtual devices, one folder per device class, named as the
 * class is in the registry (protocol/src/devices.ts). Each folder's index exports `createDevice`
 * (the contract in device.ts) and is loaded by name as `@hvlab/vsp/<class>`; its `state.ts` is the
 * device's saved state with a checking decoder. `ic/` is the integration-services framework the
 * heartbeat, shutdown, timesync and kvp classes share. A provider validates every byte the guest
 * sends and never throws on bad input.
 *
 * Deviation: the guest's time-sync answer carries its own clock reading (hvlab extension) so the
 * host can report the offset.
 */
export * from './device.js';
export * from './ic/provider.js';
export * from './ic/ticker.js';
export * from './ic/state.js';
export * from './ic/device.js';
