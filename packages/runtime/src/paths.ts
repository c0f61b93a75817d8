/**
 * Where a host keeps its state. HVLAB_HOME (default ~/.hvlab) holds VM configurations and the run
 * directory (host.json, logs). ZeroMQ ipc:// sockets live in a short directory under the system
 * temp dir, named from a hash of the home, because ipc paths over ~107 bytes fail.
 */
import { homedir, tmpdir } from 'node:os';
import { existsSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { createRequire } from 'node:module';
import { codeCacheStatus } from './code-cache-status.js';

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

/**
 * The home the user means (--home, else HVLAB_HOME, else ~/.hvlab), in its one spelling
 * (`canonicalHome`): what every command derives a home's names from.
 */
export function resolveHome(explicit?: string | null): string {
  const h = explicit ?? process.env.HVLAB_HOME ?? join(homedir(), '.hvlab');
  return canonicalHome(h);
}

/**
 * The one spelling of a home, whichever the user gave (relative, through a symlink, with `..`): the
 * real path of the home when it exists; when it does not yet, the real path of its nearest existing
 * parent followed by the rest, which is what the real path will be once it is made (a symlink
 * whose target is missing is followed by hand, as `mkdir -p` through it would). Everything named
 * after a home comes from this spelling: its socket directory (`hostPaths`), a cluster's network
 * and tag, the environment by which its fabric, nemesis and hypervisors are found. Taken from the
 * path as spelled, `hvlab up --home LINK` and `hvlab down --home TARGET` were two homes to those
 * names while one to its files: the down found no socket, forced every host and left its socket
 * directories, and a cluster's network and fabric stayed. A path that cannot be resolved (a loop of
 * symlinks, a component that is not a directory, no permission) is left as path.resolve gives it:
 * the command then says what is wrong with it.
 */
export function canonicalHome(home: string): string {
  const abs = resolve(home);
  let head = abs;
  const rest: string[] = [];
  for (let links = 0; ;) {
    try {
      const real = realpathSync.native(head);
      return rest.length === 0 ? real : join(real, ...rest.slice().reverse());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') return abs;
    }
    // `head` is missing, or is a symlink whose target is: followed by hand (40 links at most, as the kernel).
    let target: string | null = null;
    try {
      target = readlinkSync(head);
    } catch { /* no symlink: missing */ }
    if (target !== null) {
      if (++links > 40) return abs;
      head = resolve(dirname(head), target);
      continue;
    }
    const up = dirname(head);
    if (up === head) return abs;
    rest.push(basename(head));
    head = up;
  }
}

/**
 * The first 12 hex digits of the SHA-1 of `s` (UTF-8): what names a host's socket directory and a
 * worker's socket, the same names node:crypto's sha1 gave. Computed here because this module is in
 * every VM process's start, and loading node:crypto (~20 internal modules) cost a partition
 * process 6-10 ms of a cold start for these two names. A name only, not a security measure.
 */
export function pathHash(s: string): string {
  const msg = Buffer.from(s, 'utf8');
  const padded = new Uint8Array((((msg.length + 8) >>> 6) + 1) << 6);
  padded.set(msg);
  padded[msg.length] = 0x80;
  const dv = new DataView(padded.buffer);
  const bits = msg.length * 8;
  dv.setUint32(padded.length - 8, Math.floor(bits / 0x1_0000_0000));
  dv.setUint32(padded.length - 4, bits >>> 0);
  let h0 = 0x67452301, h1 = 0xefcdab89, h2 = 0x98badcfe, h3 = 0x10325476, h4 = 0xc3d2e1f0;
  const w = new Int32Array(80);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = dv.getInt32(off + i * 4);
    for (let i = 16; i < 80; i++) {
      const x = w[i - 3]! ^ w[i - 8]! ^ w[i - 14]! ^ w[i - 16]!;
      w[i] = (x << 1) | (x >>> 31);
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4;
    for (let i = 0; i < 80; i++) {
      const f = i < 20 ? (b & c) | (~b & d) : i < 40 ? b ^ c ^ d : i < 60 ? (b & c) | (b & d) | (c & d) : b ^ c ^ d;
      const k = i < 20 ? 0x5a827999 : i < 40 ? 0x6ed9eba1 : i < 60 ? 0x8f1bbcdc : 0xca62c1d6;
      const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]!) | 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = t;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
  }
  return [h0, h1, h2].map((h) => (h >>> 0).toString(16).padStart(8, '0')).join('').slice(0, 12);
}

/**
 * A home's paths, from its one spelling (`canonicalHome`). Its sockets go in `hvlab-HASH` (of that
 * spelling) under this process's TMPDIR, unless `sockDir` says where (pathsForRecord: the
 * directory a running host's processes use).
 */
export function hostPaths(home: string, sockDir0?: string): HostPaths {
  // The home's one spelling: the socket directory is named after it, and a command given another
  // spelling of the same home must find the sockets its host's processes made.
  const h = canonicalHome(home);
  const sockDir = sockDir0 ?? join(tmpdir(), `hvlab-${pathHash(h)}`);
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
    vmwpEndpoint: (vmId: string) => `ipc://${join(sockDir, `w-${pathHash(vmId)}`)}`,
    vmbusEndpointFor: (partitionId: number) => `ipc://${join(sockDir, `vmbus-${partitionId}`)}`,
  };
}

/**
 * `paths` with the socket directory a host's record names: the host's processes took it from the
 * TMPDIR of the command that started them, and a later command with another TMPDIR did not find
 * its sockets (a `down` forced the host off and left its socket directory). Only a directory of
 * this home's name is taken from the record (the record is a file: it could name any directory,
 * and `down` removes it).
 */
export function pathsForRecord(paths: HostPaths, rec: { sockDir: string } | null): HostPaths {
  const d = rec?.sockDir;
  if (typeof d !== 'string' || d === paths.sockDir || !isAbsolute(d) || basename(d) !== basename(paths.sockDir) || normalize(d) !== d) return paths;
  return hostPaths(paths.home, d);
}

/** The directory of the package a module belongs to, whether it runs from src/ or from dist/src/. */
export function packageDirOf(moduleUrl: string): string {
  let d = dirname(fileURLToPath(moduleUrl));
  for (;;) {
    if (existsSync(join(d, 'package.json'))) return d;
    const up = dirname(d);
    if (up === d) throw new Error(`no package.json above ${fileURLToPath(moduleUrl)}`);
    d = up;
  }
}

const repoRoot = resolve(packageDirOf(import.meta.url), '..', '..');

/**
 * Whether a host's processes run from the TypeScript sources through tsx (HVLAB_FROM_SOURCE=1, for
 * development) rather than from the compiled JavaScript in each package's dist/ (the default:
 * `pnpm install` builds it; tsx costs ~200 ms of start-up per process and thread, and ~50 MiB).
 */
export const FROM_SOURCE = process.env.HVLAB_FROM_SOURCE === '1';

function entry(pkg: string, ...path: string[]): string {
  const last = path.length - 1;
  return FROM_SOURCE
    ? join(repoRoot, 'packages', pkg, 'src', ...path.slice(0, last), `${path[last]}.ts`)
    : join(repoRoot, 'packages', pkg, 'dist', 'src', ...path.slice(0, last), `${path[last]}.js`);
}

/** The newest compiled output: every package's tsbuildinfo, which `tsc -b` rewrites when it emits. */
export function newestBuild(): number {
  let t = 0;
  try {
    for (const p of readdirSync(join(repoRoot, 'packages'))) {
      try {
        t = Math.max(t, statSync(join(repoRoot, 'packages', p, 'dist', 'tsconfig.tsbuildinfo')).mtimeMs);
      } catch { /* not built */ }
    }
  } catch { /* no packages directory: no bundle is used */ }
  return t;
}

/**
 * Which file starts a process: its bundle (scripts/bundle.mjs: one file instead of ~100 modules to
 * resolve) while that is at least as new as `newestBuildMs`, the newest compiled output, else its
 * compiled entry, so that a `tsc -b` after an edit never runs old code from a bundle.
 */
export function pickEntry(compiled: string, bundle: string, newestBuildMs: number): string {
  try {
    return statSync(bundle).mtimeMs >= newestBuildMs ? bundle : compiled;
  } catch {
    return compiled;
  }
}

/** HVLAB_BUNDLES=off runs the compiled entries always (bundles are a speed-up only). */
const BUNDLES_OFF = process.env.HVLAB_BUNDLES === 'off';
let built: number | undefined;
function bundleOr(compiled: string, pkg: string, file: string): string {
  if (FROM_SOURCE || BUNDLES_OFF) return compiled;
  return pickEntry(compiled, join(repoRoot, 'packages', pkg, 'dist', 'bundle', file), (built ??= newestBuild()));
}

/** Entry points of the processes of a host. */
export const entries = {
  hypervisor: bundleOr(entry('hypervisor', 'main'), 'hypervisor', 'hypervisor.mjs'),
  root: bundleOr(entry('root', 'main'), 'root', 'root.mjs'),
  /** boot.ts starts the partition process, then loads main.ts. */
  vmwp: bundleOr(entry('root', 'vmwp', 'boot'), 'root', 'vmwp.cjs'),
  /** boot.ts starts the first VP thread, then loads main.ts. */
  partition: bundleOr(entry('guest', 'boot'), 'guest', 'partition.cjs'),
  /** A cluster's fabric (its links), one per cluster. */
  fabric: entry('cluster', 'fabric-main'),
  /** The nemesis of a home (its faults), one per home, started on demand. */
  nemesis: entry('faults', 'nemesis-main'),
};
export const REPO_ROOT = repoRoot;

/**
 * What a VM's processes run here (`host info`): `sources` (HVLAB_FROM_SOURCE=1, through tsx),
 * `bundles`, or `compiled` (dist/ as tsc wrote it: no bundles, stale ones, or HVLAB_BUNDLES=off).
 */
export function codeKind(): 'sources' | 'bundles' | 'compiled' {
  if (FROM_SOURCE) return 'sources';
  return entries.vmwp.endsWith('.cjs') && entries.partition.endsWith('.cjs') ? 'bundles' : 'compiled';
}

/**
 * The environment variable by which the root names its hypervisor's socket to the VM processes it
 * starts (and a VMWP to its partition process), so they connect ahead of need (HvClient.preconnect).
 */
export const HV_ENDPOINT_ENV = 'HVLAB_HV_ENDPOINT';

/** Shared-memory names of a host all start with this, so a sweep can find them. */
export function shmPrefix(hostId: string): string {
  return `hvlab-${hostId}-`;
}

export class NotBuiltError extends Error {
  override name = 'NotBuiltError';
}

/**
 * Node arguments that start a file: a compiled one (one of `entries`) as it is; a TypeScript one
 * (an entry with HVLAB_FROM_SOURCE=1, a benchmark's helper) through tsx, resolved from here rather
 * than from the current directory (where a bare `--import tsx` would look), with the
 * `hvlab-source` export condition so that the packages it imports resolve to their sources too.
 */
export function nodeArgsFor(file: string): string[] {
  if (file.endsWith('.ts')) return ['--conditions=hvlab-source', '--import', import.meta.resolve('tsx'), file];
  if (!existsSync(file)) throw new NotBuiltError(`${file} is missing: hvlab is not built (run "pnpm install" or "pnpm build" in ${repoRoot})`);
  return [file];
}


/**
 * Node flags and environment of the processes there are one or two of per VM (VMWP, partition):
 * two malloc arenas instead of one per thread (`vmProcessEnv`), and garbage collection on the
 * thread that allocates (--single-threaded-gc): each scavenge woke V8's four helper threads in each
 * process (~1.5 wakes/s each, per thread's context switches): 8 idle VMs took 2.65-2.76 % of one
 * CPU in all with it against 3.83-4.55 % without, and 4 cold starts each way showed no difference
 * in start time or CPU beyond the machine's noise.
 *
 * No --max-semi-space-size (it was 1 MiB, for PSS). With it, Node's own modules (child_process
 * for the IPC channel, crypto, zlib, ...) loaded as if from source in every VM process: `require`
 * of those three took 23-25 ms of CPU against 7 without it (20 starts each), with no garbage
 * collection in either. V8 accepts a code cache only under the flags it was made with, and
 * Node's built-in code cache was evidently refused. Measured without it (spare VMWP + partition,
 * CPU of all threads, 6 starts each way): partition 278-302 ms against 298-354, VMWP 216-226
 * against 231-281; `bench host` with 8 idle VMs: PSS per VM 34.4-34.5 MiB against 35.4-35.6,
 * idle CPU 1.90-1.96 % against 2.21-2.27, 50 starts p50 362-416 ms against 453-475.
 */
export const VM_PROCESS_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];
export function vmProcessArgs(file: string): string[] {
  return [...VM_PROCESS_NODE_FLAGS, ...nodeArgsFor(file)];
}
/**
 * Compiling ahead of need. V8 compiles a function on its first call; in a VM process started ahead
 * of need (a spare or warm VMWP, and the partition process it starts with it) the first call of
 * most of its code comes later, on a path someone waits for: a start, and the live migration's
 * blackout (the destination's restore and, on its next move, the same process's freeze), where
 * the code runs once per process. Such a process turns lazy compilation off while it loads its
 * code (`eagerCompile(true)` before its entry imports main.ts) and on again before it waits for
 * its input and once its device classes or drivers have loaded (`eagerCompile(false)`): what it
 * loads meanwhile is compiled to bytecode at once. V8 drops bytecode that has not run for a few
 * major collections, so the gain holds for a process's first work after it waits (a start, a
 * migration's destination) more than for a VM that has run a while (its next move's freeze).
 *
 * Measured on this 2-core machine (`bench migrate`-like moves of an idle 256 MiB VM, 10 moves
 * per run, three runs each way, alternated): downtime p50 27.5 / 37.5 / 31 ms eager against
 * 46 / 38 / 34 ms lazy; a VM start from a spare worker 106 / 116 / 118 ms against 108 / 126 / 120.
 * The cost is paid while the process waits: a spare VMWP + partition pair loads in ~720 ms of
 * CPU instead of ~625 (median of 6), and PSS per idle VM is 37.3-37.4 MiB against 36.8 (`bench
 * host`, 8 VMs) as V8 drops unused bytecode again over time. Processes started on a path someone
 * waits for (no spare) stay lazy: they would pay the whole compile in their start.
 *
 * The flag is V8's `--lazy`; V8 reads it at each compile, so setting it at run time switches what
 * is compiled from then on (runtime/test/paths.test.ts measures it with the isolate's bytecode size).
 */
export function eagerCompile(on: boolean): void {
  setFlagsFromString(on ? '--no-lazy' : '--lazy');
}
/**
 * `eagerCompile(true)` once `loads` have settled, unless the process runs from a code cache V8
 * accepted (each load may fail: what failed loads again, and
 * fails again, where the code needs it). The entry of a process started ahead of need passes what
 * is not hvlab's own: the Node modules its code imports, its dependencies outside the bundle, and
 * the start of a worker thread it made. V8 accepts a code cache only under the flags it was made
 * with, so while `--no-lazy` is set every code cache is refused, Node's own included: its modules
 * that are not in its start-up snapshot, and a worker thread's start-up, then compile from source,
 * eagerly, in every thread of the process (V8's flags are the process's). Measured with one
 * worker thread whose start-up overlapped the flag (`node --cpu-prof`, two runs each way): Node's
 * internal module compiles in that thread took 58-60 ms against 19. Loaded first, they compile
 * lazily from Node's cache, and only hvlab's code is compiled eagerly, as intended.
 */
export async function eagerCompileAfter(loads: ReadonlyArray<Promise<unknown>>): Promise<void> {
  await Promise.allSettled(loads);
  // Run from a code cache V8 took (code-cache.ts), every function of hvlab's is bytecode already:
  // the flag would compile nothing of it, and only make V8 refuse Node's own caches meanwhile.
  if (codeCacheStatus() === 'accepted') return;
  eagerCompile(true);
}
/**
 * msgpackr as protocol/src/wire.ts loads it, for `eagerCompileAfter`: its CommonJS build, with
 * its native extractor off unless the user set the switch (wire.ts says why), required from `from`
 * (the caller's import.meta.url, beside wire.ts in a bundle). An `import('msgpackr')` would load
 * its ES module build, a second copy that nothing of hvlab uses.
 */
export function loadMsgpackr(from: string): Promise<unknown> {
  return new Promise((resolve) => {
    process.env.MSGPACKR_NATIVE_ACCELERATION_DISABLED ??= 'true';
    resolve(createRequire(from)('msgpackr'));
  });
}
/**
 * Set (to 1) in the environment of a partition process its VMWP starts ahead of need, and in a
 * spare or warm VMWP's: such a process compiles its code eagerly (`eagerCompile`).
 */
export const EAGER_COMPILE_ENV = 'HVLAB_EAGER_COMPILE';

/**
 * Variables hvlab takes out of the environment of every process it starts (hosts' hypervisors
 * and roots, VM processes, the fabric, the nemesis), because they cost each start and nothing of
 * hvlab uses them.
 *
 * NODE_EXTRA_CA_CERTS: Node reads and parses the named PEM bundle when a process starts, before
 * any code runs, whether or not the process ever opens a TLS connection; no hvlab process does
 * (CURVE is not TLS). Machines behind a proxy set it to the whole system bundle: on this one it is
 * /etc/ssl/certs/ca-certificates.crt (220 KB), and 20 starts of `node -e 0` took 2.40 s of CPU
 * with it against 1.26 s without: ~57 ms a process, at two processes a VM about a tenth of a VM's
 * start-up CPU (a spare VMWP + partition pair loads in ~0.6 CPU-s without it).
 */
export const UNUSED_START_ENV = ['NODE_EXTRA_CA_CERTS'] as const;

/** `env` (with `extra` over it) without the variables in `UNUSED_START_ENV`: for every process hvlab spawns. */
export function processEnv(env: NodeJS.ProcessEnv = process.env, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, ...extra };
  for (const k of UNUSED_START_ENV) delete out[k];
  return out;
}

export function vmProcessEnv(env: NodeJS.ProcessEnv = process.env, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return processEnv(env, { MALLOC_ARENA_MAX: env.MALLOC_ARENA_MAX ?? '2', ...extra });
}

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

const isPid = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0 && v < 2 ** 31;

/**
 * `run/host.json` as read back (JSON.parse's output): the record, or null for anything the
 * hypervisor does not write. Every field is checked; an unknown one is ignored (a newer writer).
 */
export function decodeHostRecord(v: unknown): HostRecord | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const pids = o.pids;
  if (typeof pids !== 'object' || pids === null || Array.isArray(pids)) return null;
  const { hypervisor, root } = pids as Record<string, unknown>;
  if (typeof o.hostId !== 'string' || !/^[0-9a-f]{6}$/.test(o.hostId) || !isPid(hypervisor) || !isPid(root)) return null;
  if (typeof o.home !== 'string' || typeof o.sockDir !== 'string' || typeof o.startedAt !== 'string') return null;
  if (typeof o.lps !== 'number' || !Number.isSafeInteger(o.lps) || o.lps < 1 || o.lps > 4096) return null;
  const rec: HostRecord = { hostId: o.hostId, home: o.home, pids: { hypervisor, root }, sockDir: o.sockDir, lps: o.lps, startedAt: o.startedAt };
  if (o.rootRestarts !== undefined) {
    if (typeof o.rootRestarts !== 'number' || !Number.isSafeInteger(o.rootRestarts) || o.rootRestarts < 0) return null;
    rec.rootRestarts = o.rootRestarts;
  }
  return rec;
}
