/**
 * Where a host keeps its state. HVLAB_HOME (default ~/.hvlab) holds VM configurations and the run
 * directory (host.json, logs). ZeroMQ ipc:// sockets live in a short directory under the system
 * temp dir, named from a hash of the home, because ipc paths over ~107 bytes fail.
 */
import { createHash } from 'node:crypto';
import { homedir, tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface HostPaths {
  home: string;
  runDir: string;
  logDir: string;
  vmDir: string;
  hostFile: string;
  sockDir: string;
  hvEndpoint: string;
  mgmtEndpoint: string;
  eventsEndpoint: string;
  /** The root's remote VMBus transport (ZeroMQ ROUTER). */
  vmbusEndpoint: string;
}

export function resolveHome(explicit?: string | null): string {
  const h = explicit ?? process.env.HVLAB_HOME ?? join(homedir(), '.hvlab');
  return resolve(h);
}

export function hostPaths(home: string): HostPaths {
  const h = resolve(home);
  const sockDir = join(tmpdir(), `hvlab-${createHash('sha1').update(h).digest('hex').slice(0, 12)}`);
  const runDir = join(h, 'run');
  return {
    home: h,
    runDir,
    logDir: join(runDir, 'logs'),
    vmDir: join(h, 'vms'),
    hostFile: join(runDir, 'host.json'),
    sockDir,
    hvEndpoint: `ipc://${join(sockDir, 'hv')}`,
    mgmtEndpoint: `ipc://${join(sockDir, 'mgmt')}`,
    eventsEndpoint: `ipc://${join(sockDir, 'events')}`,
    vmbusEndpoint: `ipc://${join(sockDir, 'vmbus')}`,
  };
}

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Entry points of the processes of a host (run with tsx). */
export const entries = {
  hypervisor: join(repoRoot, 'packages', 'hypervisor', 'src', 'main.ts'),
  root: join(repoRoot, 'packages', 'root', 'src', 'main.ts'),
  vmwp: join(repoRoot, 'packages', 'root', 'src', 'vmwp', 'main.ts'),
  partition: join(repoRoot, 'packages', 'guest', 'src', 'main.ts'),
};
export const REPO_ROOT = repoRoot;

/** Shared-memory names of a host all start with this, so a sweep can find them. */
export function shmPrefix(hostId: string): string {
  return `hvlab-${hostId}-`;
}

/** Node arguments that let a child process run TypeScript sources. */
export function nodeArgsFor(entry: string): string[] {
  return ['--import', 'tsx', entry];
}
