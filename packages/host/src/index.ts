/**
 * @hvlab/host — a host's lifecycle and its management API client, apart from the CLI so that the
 * CLI, tests, benchmarks and (next) the cluster layer start, stop, supervise and talk to hosts the
 * same way. Key parts: `up`/`down`/`sweepHost` (lifecycle.ts: the hypervisor is spawned detached,
 * takes the home's lock and supervises the root), `MgmtClient` (mgmt-client.ts: versioned msgpack
 * requests that fail at once when the host's processes die). Where a host's sockets, regions and
 * records live is named in one place, `hostPaths` in @hvlab/runtime.
 */
export * from './lifecycle.js';
export * from './mgmt-client.js';
