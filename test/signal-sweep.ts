/**
 * Loaded before any test (.mocharc.json `require`): a test run that is interrupted (Ctrl-C, or
 * SIGTERM from a CI runner or a `kill`) takes down every hvlab host and cluster its tests started
 * before it exits, since the tests' own `after` hooks never run then. The run marks its children
 * with HVLAB_TEST_RUN=<its pid>, which every process they start inherits (hvlab passes its
 * environment on); on the signal, each hvlab process that carries this run's mark names its home
 * (HVLAB_HOME): a home inside a cluster's goes down with `cluster down`, any other with `down`, and
 * whatever of this run still runs after that is killed. A run killed with SIGKILL cannot do this.
 */
import { spawnSync } from 'node:child_process';
import fs, { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(repo, 'packages', 'cli', 'bin', 'hvlab.mjs');
const mark = `HVLAB_TEST_RUN=${process.pid}`;
process.env.HVLAB_TEST_RUN = String(process.pid);

/**
 * The temporary directories this run's tests made (homes, bench folders, configs): an interrupted
 * run's `after` hooks never remove them, so the sweep does, once the hosts in them are down. Every
 * test makes its own with fs.mkdtempSync; the wrapper only notes the directories made under the
 * temporary folder (or /tmp), and the named ESM exports are synced so that `import { mkdtempSync }`
 * calls it too.
 */
const runTemps = new Set<string>();
const tmpRoots = [...new Set([tmpdir(), '/tmp'])].map((d) => (d.endsWith(sep) ? d : d + sep));
const makeTemp = fs.mkdtempSync;
fs.mkdtempSync = ((prefix: string, options?: unknown) => {
  const made = (makeTemp as (p: string, o?: unknown) => string | Buffer)(prefix, options);
  if (typeof made === 'string' && tmpRoots.some((r) => made.startsWith(r))) runTemps.add(made);
  return made;
}) as typeof fs.mkdtempSync;
syncBuiltinESMExports();

/** This run's processes (but this one) and the HVLAB_HOME each names. */
export function markedProcesses(runMark = mark): Array<{ pid: number; home: string | null }> {
  const out: Array<{ pid: number; home: string | null }> = [];
  for (const d of readdirSync('/proc')) {
    const pid = Number(d);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    let env: string[];
    try {
      env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
    } catch {
      continue; // gone, or not ours to read
    }
    if (!env.includes(runMark)) continue;
    const home = env.find((e) => e.startsWith('HVLAB_HOME='))?.slice('HVLAB_HOME='.length) ?? null;
    out.push({ pid, home });
  }
  return out;
}

/** Whether process `pid` runs hvlab's CLI (packages/cli/bin/hvlab.mjs). */
function isCli(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((a) => a.endsWith('/bin/hvlab.mjs') || a === 'hvlab.mjs');
  } catch {
    return false;
  }
}

/** The cluster home a host's home sits in (…/cluster/hosts/NAME inside it), or null. */
function clusterHomeOf(home: string): string | null {
  for (let d = home, i = 0; i < 6 && dirname(d) !== d; i++, d = dirname(d)) {
    if (existsSync(join(d, 'cluster.json'))) return d;
  }
  return null;
}

function sweep(): void {
  // The run's own CLIs first: one still bringing a cluster up (a test's `up`) went on making its
  // fabric and namespaces while the `cluster down` below ran, and left them behind. Killed, it
  // makes nothing more, and `cluster down` finds what it had made (as after a CLI killed half way).
  // The homes are named before: a CLI in the middle of its 'up' may be the only one of its home
  // (its fabric does not carry the run's mark).
  const procs = markedProcesses();
  for (const p of procs) {
    if (!isCli(p.pid)) continue;
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch { /* gone */ }
  }
  const homes = new Set<string>();
  for (const p of procs) if (p.home) homes.add(clusterHomeOf(p.home) ?? p.home);
  for (const home of homes) {
    const cluster = existsSync(join(home, 'cluster.json'));
    process.stderr.write(`test run interrupted: taking down ${cluster ? 'the cluster' : 'the host'} at ${home}\n`);
    spawnSync(process.execPath, [cli, '--home', home, ...(cluster ? ['cluster', 'down'] : ['down'])], { stdio: 'ignore', timeout: 30000, env: { ...process.env, HVLAB_TEST_RUN: '' } });
  }
  for (const p of markedProcesses()) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch { /* gone */ }
  }
  // The unit tests' own shared-memory regions, whose `after` hooks will not run now: each names
  // this run's pid (hvlab-ut-KIND-PID-…, hvlab-test-KIND-PID[-…], and the in-process
  // hypervisors' hvlab-{ut,us,hc}PIDx…-…).
  for (const f of sweptShmFiles(readdirSync('/dev/shm'), process.pid)) rmSync(join('/dev/shm', f), { force: true });
  for (const d of runTemps) rmSync(d, { recursive: true, force: true });
}

/** The /dev/shm names among `names` that unit tests of the run `pid` made (see sweep). */
export function sweptShmFiles(names: string[], pid: number): string[] {
  const re = new RegExp(`^hvlab-(?:(?:ut|test)-[a-z]+-${pid}(?:-|$)|(?:ut|us|hc)${pid}x)`);
  return names.filter((n) => re.test(n));
}

for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(sig, () => {
    try {
      sweep();
    } finally {
      process.exit(code);
    }
  });
}
