/**
 * The temporary homes of runs that are gone. `experiment run` (either kind) on a new cluster makes
 * its home under the system's temporary directory (`hvlab-experiment-*`, `hvlab-chaos-*`) and marks
 * it (cluster's markTemporaryHome) before it holds the lease that has the home's nemesis take it
 * down if the run dies. A run killed in between (a few milliseconds to the first nemesis's start)
 * left the home, and nothing named it again; one killed together with its nemesis and warden left
 * its whole cluster too. `down` and `cluster down` sweep them (`sweepOrphanedRunHomes`): a marked
 * home whose maker is gone and whose nemesis is not running has its cluster taken down and goes;
 * an unmarked empty one a minute old goes too. A home of a run still alive is never touched.
 */
import { existsSync, lstatSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clusterDown, fabricPids, orphanedTemporaryHome, TEMPORARY_HOME_FILE } from '@hvlab/cluster';
import { procEnviron, procPids, procTitle } from '@hvlab/shm/procfs';
import { nemesisPids } from './client.js';

/** The names `experiment run` gives its temporary homes (mkdtemp's six characters). */
export const RUN_HOME_RE = /^hvlab-(?:experiment|chaos)-[A-Za-z0-9]{6}$/;

/** An unmarked run home younger than this may be one a run is just making (ms). */
const UNMARKED_GRACE_MS = 60_000;

/**
 * The processes of this machine that name `home` (or a home under it: a cluster's hosts) as their
 * HVLAB_HOME: hvlab's own (titled `hvlab-…`: the run's cluster, left running) and others (a
 * user's shell or CLI at work on it).
 */
function homeUsers(home: string): { hvlab: number; others: number } {
  const prefix = `${home}/`;
  const out = { hvlab: 0, others: 0 };
  for (const pid of procPids()) {
    if (pid === process.pid) continue;
    const h = procEnviron(pid)?.get('HVLAB_HOME');
    if (h === undefined || (h !== home && !h.startsWith(prefix))) continue;
    if (procTitle(pid)?.startsWith('hvlab-') ?? false) out.hvlab++;
    else out.others++;
  }
  return out;
}

/**
 * Removes the temporary homes of runs that are gone (see the header), each with its cluster taken
 * down first; returns the homes removed. `dir`: where to look (the system's temporary directory).
 * Never throws: a home that cannot be taken down or removed is left for the next sweep.
 */
export async function sweepOrphanedRunHomes(dir = tmpdir(), now = Date.now()): Promise<string[]> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const uid = process.getuid?.() ?? -1;
  const removed: string[] = [];
  for (const name of names) {
    if (!RUN_HOME_RE.test(name)) continue;
    const home = join(dir, name);
    try {
      const st = lstatSync(home);
      // A directory of this user's only (another user's run is theirs; a symlink is no home).
      if (!st.isDirectory() || (uid >= 0 && st.uid !== uid)) continue;
      let marked = true;
      try {
        lstatSync(join(home, TEMPORARY_HOME_FILE));
      } catch {
        marked = false;
      }
      if (!marked) {
        // Killed between making it and marking it: empty, and old enough not to be a run's now.
        if (readdirSync(home).length === 0 && now - st.mtimeMs > UNMARKED_GRACE_MS) {
          rmdirSync(home);
          removed.push(home);
        }
        continue;
      }
      // Its run is alive, or its nemesis (which takes it down as the lease lapses) is there.
      if (!orphanedTemporaryHome(home) || nemesisPids(home).length > 0) continue;
      // Someone is at work on it (a shell or a CLI that names it): left alone.
      const users = homeUsers(home);
      if (users.others > 0) continue;
      // Its cluster taken down whenever it has one (a record that does not read too: clusterDown
      // finds what it can by the home), and the home removed only once nothing of it is left: a
      // failed cluster down keeps the record it needs to be tried again.
      if (existsSync(join(home, 'cluster')) || users.hvlab > 0 || fabricPids(home).length > 0) await clusterDown(home);
      if (homeUsers(home).hvlab > 0 || fabricPids(home).length > 0) continue;
      rmSync(home, { recursive: true, force: true });
      removed.push(home);
    } catch {
      // Left for the next sweep.
    }
  }
  return removed;
}
