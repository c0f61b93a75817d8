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
  /** Records of running VM workers (one JSON file per VM), read by a root that re-attaches. */
  vmwpDir: string;
  /** Held by the host's hypervisor for its whole life: one host per home. */
  lockFile: string;
  /** A VM worker's control socket (the VM's id keeps it unique and short). */
  vmwpEndpoint(vmId: string): string;
  /** A VM worker's remote VMBus transport (ZeroMQ ROUTER), per partition. */
  vmbusEndpointFor(partitionId: number): string;
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
    vmwpDir: join(runDir, 'vmwp'),
    lockFile: join(runDir, 'host.lock'),
    vmwpEndpoint: (vmId: string) => `ipc://${join(sockDir, `w-${createHash('sha1').update(vmId).digest('hex').slice(0, 12)}`)}`,
    vmbusEndpointFor: (partitionId: number) => `ipc://${join(sockDir, `vmbus-${partitionId}`)}`,
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
  // Resolved from here, not from the current directory (which is where a bare `--import tsx`
  // would look), so a host starts from whatever directory the CLI runs in.
  return ['--import', TSX_LOADER, entry];
}
const TSX_LOADER = import.meta.resolve('tsx');

/** `run/host.json`: written by the host's hypervisor whenever it (re)starts the root partition. */
export interface HostRecord {
  hostId: string;
  home: string;
  pids: { hypervisor: number; root: number };
  sockDir: string;
  lps: number;
  startedAt: string;
  /** How many times the supervisor restarted a dead root partition process. */
  rootRestarts?: number;
}
