/**
 * @hvlab/vsc — the guest halves of the virtual devices, one folder per device class with the same
 * names as in @hvlab/vsp. Each folder's index exports `createDriver` (the contract in driver.ts)
 * and is loaded by name as `@hvlab/vsc/<class>`; `cmos/` is read by VP 0 through port I/O at boot.
 * `ic/` is the integration-services framework, guest side.
 */
export * from './driver.js';
export * from './ic/client.js';
export * from './ic/state.js';
