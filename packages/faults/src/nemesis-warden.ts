/**
 * The nemesis's warden: a small process the nemesis starts beside itself (detached, in its own
 * session), so that the faults a nemesis holds end even if it is killed (kill -9, the OOM killer)
 * while nobody runs another fault command. The faults the roots enforce end by themselves at their
 * deadlines; the ones the nemesis enforces itself — a stopped process, a cut or impaired link —
 * would not. So when the nemesis is gone and has left faults in `faults/active.json`, the warden
 * starts a new nemesis, which undoes them at once (its `recoverLeftovers`) and logs them as
 * ended, then goes on serving (or leaves when idle).
 *
 *   node nemesis-warden.js HOME NEMESIS_PID NEMESIS_START NEMESIS_ARGV_JSON
 *
 * It leaves when the nemesis is gone and left nothing (no faults, no teardown lease: `faults/teardown.json`), when another nemesis runs, or after it has
 * started one. It reads only files of the home (as files: a FIFO in their place holds nobody) and
 * /proc, and imports only hvlab's procfs and file readers: it costs a bare Node process.
 * `stopNemesis` (down, cluster down) ends it before the nemesis.
 */
import { spawn } from 'node:child_process';
import { closeSync, lstatSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { procStartTime, procTitle } from '@hvlab/shm/procfs';
import { readRegularFile } from '@hvlab/runtime/files';

const [home = '', pidText = '', startText = '', argvJson = '[]'] = process.argv.slice(2);
process.title = `hvlab-nemesis-warden ${home}`;

/** A process's start time (/proc/PID/stat field 22), or null if it is gone. */
function startOf(pid: number): number | null {
  return procStartTime(pid);
}

function isNemesis(pid: number): boolean {
  return procTitle(pid)?.startsWith('hvlab-nemesis ') ?? false;
}

/** The nemesis of the home named in nemesis.json, if it runs. */
function runningNemesis(): number | null {
  try {
    const o = JSON.parse(readRegularFile(join(home, 'faults', 'nemesis.json'), 64 * 1024).toString('utf8')) as { pid?: unknown };
    return typeof o.pid === 'number' && Number.isInteger(o.pid) && o.pid > 1 && isNemesis(o.pid) ? o.pid : null;
  } catch {
    return null;
  }
}

/** Whether `path` is a regular file (a directory in its place is no file a nemesis wrote). */
function isFile(path: string): boolean {
  try {
    return lstatSync(path).isFile();
  } catch {
    return false;
  }
}

function leave(): never {
  process.exit(0);
}

let argv: string[] = [];
try {
  const a = JSON.parse(argvJson) as unknown;
  if (Array.isArray(a) && a.every((x) => typeof x === 'string')) argv = a as string[];
} catch { /* none: the warden can only watch */ }

const watched = Number(pidText);
const watchedStart = Number(startText);
if (!home || !Number.isInteger(watched) || watched < 2 || !Number.isFinite(watchedStart)) {
  process.stderr.write('usage: nemesis-warden HOME NEMESIS_PID NEMESIS_START NEMESIS_ARGV_JSON\n');
  process.exit(2);
}

const lock = join(home, 'faults', 'nemesis.lock');
let starting = false;

function tick(): void {
  if (starting || startOf(watched) === watchedStart) return;
  // The nemesis is gone. It left faults to undo, or teardown leases to hold (a run's temporary
  // cluster, whose run may be gone too): a new one takes them on.
  if ((!isFile(join(home, 'faults', 'active.json')) && !isFile(join(home, 'faults', 'teardown.json'))) || argv.length === 0) leave();
  const other = runningNemesis();
  if (other !== null && other !== watched) leave();
  // Start one, under the lock every starter takes (client.ts startNemesis).
  try {
    const fd = openSync(lock, 'wx', 0o600);
    writeSync(fd, String(process.pid));
    closeSync(fd);
  } catch {
    let holder = 0;
    try {
      holder = Number(readRegularFile(lock, 64).toString('utf8'));
    } catch { /* gone meanwhile */ }
    if (holder > 1 && startOf(holder) !== null) leave(); // someone else is starting it
    rmSync(lock, { force: true });
    return;
  }
  starting = true;
  const child = spawn(process.execPath, [...argv, home], { detached: true, stdio: 'ignore', env: { ...process.env, HVLAB_NEMESIS_HOME: home } });
  child.unref();
  const until = Date.now() + 15_000;
  const wait = setInterval(() => {
    const now = runningNemesis();
    if ((now !== null && now !== watched) || child.exitCode !== null || Date.now() > until) {
      clearInterval(wait);
      rmSync(lock, { force: true });
      leave();
    }
  }, 100);
}

setInterval(tick, 250);
process.on('SIGTERM', () => leave());
process.on('SIGINT', () => leave());
