/**
 * Entry of the hypervisor process. Environment: HVLAB_HOME, HVLAB_HOST_ID, HVLAB_ROOT_TOKEN,
 * HVLAB_LPS. Prints "ready" on stdout once its socket is bound, then detaches from it.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { hostPaths, processLogger } from '@hvlab/runtime';
import { memoryMode, shmUnavailableReason } from '@hvlab/shm';
import { HypervisorServer } from './server.js';

const home = process.env.HVLAB_HOME!;
const hostId = process.env.HVLAB_HOST_ID!;
const rootToken = process.env.HVLAB_ROOT_TOKEN!;
const lps = Number(process.env.HVLAB_LPS ?? '1');
delete process.env.HVLAB_ROOT_TOKEN;
process.title = `hvlab-hypervisor ${hostId}`;
const paths = hostPaths(home);
mkdirSync(paths.sockDir, { recursive: true, mode: 0o700 });
const log = processLogger(paths.logDir, 'hypervisor.log', { host: hostId, role: 'hypervisor' });
const mode = memoryMode();
log.info({ lps, memoryMode: mode, reason: shmUnavailableReason() || undefined }, 'hypervisor starting');

const server = new HypervisorServer({ hostId, rootToken, memoryMode: mode, log, lps: Number.isInteger(lps) && lps > 0 ? lps : 1 });
let exiting = false;
async function exit(reason: string, code = 0): Promise<void> {
  if (exiting) return;
  exiting = true;
  log.info({ reason }, 'hypervisor exiting');
  await server.close(reason);
  rmSync(join(paths.sockDir, 'hv'), { force: true });
  process.exit(code);
}
server.onShutdownRequest = () => void exit('shutdown requested by the root');
process.on('SIGTERM', () => void exit('SIGTERM'));
process.on('SIGINT', () => void exit('SIGINT'));
process.on('uncaughtException', (e) => {
  log.error({ err: e }, 'hypervisor crashed');
  void exit('crash', 1);
});

await server.bind(paths.hvEndpoint);
process.stdout.write('ready\n');
await server.serve();
