/**
 * @hvlab/vsc — the guest's virtual service clients, one folder per device class (STYLE.md).
 * `ic/`: the guest halves of the integration services. Each client is a `VmbusDriver`: attached
 * to an open channel, detached when the host rescinds it.
 *
 * Deviation: the KVP pools live in the guest kernel's heap, not in guest memory, so they do not
 * yet survive save and restore.
 */
export * from './ic/index.js';
