/**
 * Entry of a home's nemesis: `node nemesis-main.js HOME`. Started on demand by the first client
 * (client.ts `startNemesis`, detached, in its own session so a killed CLI does not take it along);
 * undoes whatever a nemesis before it left (active.json), binds `faults/nemesis.sock`, writes
 * `faults/nemesis.json` (pid, endpoint) and prints "ready".
 *
 * It leaves, after ending every fault, on SIGTERM/SIGINT or a `stop` request (`hvlab down`,
 * `cluster down`), when the home has no host or cluster any more, and by itself once it has had no
 * active fault, no owner with a lease and no request for IDLE_EXIT_MS; it takes its socket with it.
 * An owner that renews with `teardown` (a chaos run on a temporary cluster) takes more with it when
 * its lease lapses: the cluster goes down and the home is removed.
 * Beside it runs its warden (nemesis-warden.ts; started again if it goes), which starts a new
 * nemesis to undo what this one held if this one is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { entries, nodeArgsFor, processLogger, RpcFailure, RpcServer, writeFileAtomic } from '@hvlab/runtime';
import { decodeNemesisRequest, type NemesisRequest } from './wire.js';
import { FaultRefused, faultsDir, Nemesis } from './nemesis.js';
import { nemesisEndpoint, nemesisFile, nemesisSocketDir, removeNemesisSocket } from './client.js';
import { processStart } from './world.js';
import { clusterDown, isTemporaryHome, orphanedTemporaryHome } from '@hvlab/cluster';

const IDLE_EXIT_MS = Number(process.env.HVLAB_NEMESIS_IDLE_MS ?? '') || 30_000;

const home = process.argv[2] ?? process.env.HVLAB_NEMESIS_HOME ?? '';
const log = processLogger(faultsDir(home), 'nemesis.log', { role: 'nemesis' });
process.title = `hvlab-nemesis ${home}`;
process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception (the nemesis keeps serving)'));
process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection (the nemesis keeps serving)'));

const nemesis = new Nemesis({ home, log: (msg, fields) => log.info(fields ?? {}, msg) });
const recovered = await nemesis.recoverLeftovers();
if (recovered) log.info({ recovered }, 'undid faults left by a nemesis before this one');
nemesis.recoverTeardown();

let leaving = false;
let server: RpcServer<NemesisRequest> | null = null;
async function leave(why: string): Promise<void> {
  if (leaving) return;
  leaving = true;
  log.info({ why }, 'nemesis leaving: ending every fault');
  nemesis.stopWatch();
  await Promise.race([nemesis.clear(null, null, why === 'the home has no host any more' ? 'target-gone' : 'cleared').catch(() => []), new Promise((r) => setTimeout(r, 8000))]);
  server?.close();
  try {
    rmSync(nemesisFile(home), { force: true });
    removeNemesisSocket(home);
  } catch (e) {
    log.warn({ err: e }, 'the nemesis\'s files were not all removed');
  }
  // A run's temporary home whose run was killed before it held its lease (while this nemesis
  // started): nothing else would remove it.
  try {
    if (!nemesis.homeAlive() && orphanedTemporaryHome(home)) {
      log.info({ home }, 'removing a temporary home whose run is gone');
      rmSync(home, { recursive: true, force: true });
    }
  } catch (e) {
    log.warn({ err: e }, 'the temporary home was not removed (down\'s sweep of run homes takes it)');
  }
  process.exit(0);
}

/**
 * An owner that brought its cluster up for itself (a chaos run's temporary home) is gone: its
 * faults have ended; the cluster goes down and the home is removed, then this nemesis leaves (a
 * run killed with SIGKILL leaves nothing behind).
 */
nemesis.onTeardown = (owner) => {
  if (leaving) return;
  leaving = true;
  void (async () => {
    log.info({ owner }, 'the owner of this home is gone: taking its cluster down and removing the home');
    nemesis.stopWatch();
    await nemesis.clear(null, null, 'owner-gone').catch(() => []);
    try {
      await clusterDown(home);
    } catch (e) {
      log.error({ err: e }, 'the cluster did not go down');
    }
    try {
      server?.close();
      removeNemesisSocket(home);
      // Checked again at the end (renew refused a teardown lease on any other home): a user's home
      // is never removed, whatever marked it.
      if (isTemporaryHome(home)) rmSync(home, { recursive: true, force: true });
      else log.warn({ home }, 'the home is not a run\'s temporary home any more: its cluster went down, the home stays');
    } catch (e) {
      // Left for `down`'s sweep of run homes; this process goes whatever happened (it stayed,
      // serving nothing, and the sweep passed a home with a nemesis over).
      log.error({ err: e }, 'the temporary home was not removed');
    } finally {
      process.exit(0);
    }
  })();
};

/** Starts the warden unless it runs (again, if it was killed): it watches this process by pid and start time. */
let warden: ChildProcess | null = null;
function startWarden(): void {
  if (warden && warden.exitCode === null && warden.signalCode === null) return;
  try {
    const self = import.meta.url.endsWith('.ts') ? 'nemesis-warden.ts' : 'nemesis-warden.js';
    const args = [home, String(process.pid), String(processStart(process.pid) ?? 0), JSON.stringify(nodeArgsFor(entries.nemesis))];
    const w = spawn(process.execPath, [...nodeArgsFor(fileURLToPath(new URL(`./${self}`, import.meta.url))), ...args], { detached: true, stdio: 'ignore' });
    warden = w;
    w.on('error', (e) => log.warn({ err: e }, 'the warden did not start'));
    w.unref();
  } catch (e) {
    log.warn({ err: e }, 'the warden did not start');
  }
}

server = new RpcServer<NemesisRequest>(decodeNemesisRequest, async (req) => {
  try {
    switch (req.op) {
      case 'inject':
        return await nemesis.inject(req.req);
      case 'list':
        nemesis.lastActivity = Date.now();
        return req.counters ? await nemesis.listWithCounters(req.all) : nemesis.list(req.all);
      case 'clear':
        // A user's clear (of everything, or of an id) also ends the LP shrinks the hosts hold without a fault of this nemesis.
        if (req.owner === null) return req.fault === null ? await nemesis.clearEverything() : await nemesis.clearById(req.fault);
        return await nemesis.clear(req.fault, req.owner);
      case 'renew':
        nemesis.renew(req.owner, req.teardown, req.vms);
        return { ok: true };
      case 'handover':
        return { accepted: nemesis.handOver(req.owner) };
      case 'stop':
        setTimeout(() => void leave('asked to stop'), 10);
        return { stopping: true, active: nemesis.activeCount };
    }
  } catch (e) {
    if (e instanceof FaultRefused) throw new RpcFailure('Refused', e.message);
    throw e;
  }
});
try {
  removeNemesisSocket(home);
  nemesisSocketDir(home);
  await server.bind(nemesisEndpoint(home));
} catch (e) {
  log.error({ err: e }, 'cannot bind');
  process.stderr.write(`the nemesis cannot listen on ${nemesisEndpoint(home)}: ${(e as Error).message}\n`);
  process.exit(1);
}
void server.serve();
writeFileAtomic(nemesisFile(home), JSON.stringify({ pid: process.pid, endpoint: nemesisEndpoint(home), startedAt: new Date().toISOString() }) + '\n');
nemesis.startWatch();
startWarden();
log.info({ endpoint: nemesisEndpoint(home) }, 'nemesis ready');
process.stdout.write('ready\n');

process.on('SIGTERM', () => void leave('SIGTERM'));
process.on('SIGINT', () => void leave('SIGINT'));
setInterval(() => {
  if (leaving) return;
  startWarden();
  // A run that holds a teardown lease may be bringing its cluster up (no host yet): this nemesis
  // stays to watch that lease (it left at once, and a run killed in the bring-up left its home).
  if (!nemesis.homeAlive() && !nemesis.holdsTeardown) void leave('the home has no host any more');
  else if (nemesis.activeCount === 0 && nemesis.liveOwners === 0 && Date.now() - nemesis.lastActivity > IDLE_EXIT_MS) void leave('idle');
}, 1000);
