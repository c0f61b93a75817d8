/**
 * @hvlab/vsp — the root's virtual service providers, one folder per device class (STYLE.md).
 * `ic/`: the integration services (heartbeat, shutdown, time sync, KVP exchange) over the IC
 * framework with Hyper-V's binary framing. Each provider is a `VmbusDevice`: offered, opened,
 * closed; it validates every byte the guest sends and never throws on bad input.
 *
 * Deviation: the guest's time-sync answer carries its own clock reading (hvlab extension) so the
 * host can report the offset.
 */
export * from './ic/index.js';
