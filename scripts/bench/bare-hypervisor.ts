/**
 * A hypervisor process without its root supervisor, for benchmarks that drive hypercalls
 * themselves: `node --import tsx bare-hypervisor.ts SOCKDIR HOST_ID LPS` binds ipc://SOCKDIR/hv
 * and prints `ready TOKEN` (the root token, for the benchmark's own root session; this process is
 * the benchmark's child, so the token never leaves it). SIGTERM closes it and its shared memory.
 */
import { join } from 'node:path';
import { HypervisorServer } from '@hvlab/hypervisor';

const [sockDir, hostId, lpsText] = process.argv.slice(2);
const lps = Number(lpsText ?? '1');
if (!sockDir || !hostId || !Number.isInteger(lps) || lps < 1) {
  process.stderr.write('usage: bare-hypervisor.ts SOCKDIR HOST_ID LPS\n');
  process.exit(2);
}
process.title = `hvlab-hypervisor ${hostId}`;
const hv = new HypervisorServer({ hostId, lps });
const stop = (): void => void hv.close('SIGTERM').then(() => process.exit(0));
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
hv.onShutdownRequest = stop;
await hv.bind(`ipc://${join(sockDir, 'hv')}`);
process.stdout.write(`ready ${hv.hv.rotateRootToken()}\n`);
await hv.serve();
