/**
 * Entry of a cluster's fabric process: `node fabric-main.js HOME`. Reads the cluster record and
 * key of HOME (lab.ts writes them first), binds the control socket, and writes
 * `cluster/fabric.json` (pid and port) once it serves; then prints "ready". Environment:
 * HVLAB_FABRIC_HOME=HOME marks the process, so `cluster down` finds it even without that file.
 *
 * It leaves on SIGTERM/SIGINT, and by itself when the cluster record is gone (a home removed
 * under it), so it cannot outlive its cluster for long. In that case it also removes the cluster's
 * network (namespaces, veths, bridge: found by the tag of the home's path), which nobody else would
 * now: each host goes down by itself when its home goes (hypervisor/src/main.ts, guardHome).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { processLogger, readClusterKey, writeFileAtomic } from '@hvlab/runtime';
import { Fabric } from './fabric.js';
import { clusterTag, teardownNetwork } from './netns.js';
import { clusterDir, clusterKeyFile, clusterRecordFile, fabricFile, readCluster } from './lab.js';

const home = process.argv[2] ?? process.env.HVLAB_FABRIC_HOME ?? '';
const log = processLogger(join(clusterDir(home), 'log'), 'fabric.log', { role: 'fabric' });
process.title = `hvlab-fabric ${home}`;
process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception (the fabric keeps serving)'));
process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection (the fabric keeps serving)'));

const c = readCluster(home);
if (!c) {
  log.error({ home }, 'no cluster record');
  process.stderr.write(`no cluster record in ${home}\n`);
  process.exit(1);
}
const fabric = new Fabric({
  cluster: c.topology.name, key: readClusterKey(clusterKeyFile(home)), listen: c.record.listen, port: c.record.fabricPort,
  links: c.topology.links, fileHosts: c.topology.hosts.map((h) => h.name),
  log: (msg, fields) => log.info(fields ?? {}, msg),
});
let port: number;
try {
  port = await fabric.start();
} catch (e) {
  log.error({ err: e }, 'cannot bind the control socket');
  process.stderr.write(`the fabric cannot listen on ${c.record.listen}:${c.record.fabricPort}: ${(e as Error).message}\n`);
  process.exit(1);
}
writeFileAtomic(fabricFile(home), JSON.stringify({ pid: process.pid, port, listen: c.record.listen, startedAt: new Date().toISOString() }) + '\n');
log.info({ port, listen: c.record.listen }, 'fabric ready');
process.stdout.write('ready\n');

let leaving = false;
async function leave(why: string, orphaned = false): Promise<void> {
  if (leaving) return;
  leaving = true;
  log.info({ why }, 'fabric exiting');
  await Promise.race([fabric.close(), new Promise((r) => setTimeout(r, 1000))]);
  // A cluster whose home is gone needs its network no more (the namespaces may still hold hosts
  // on their way down: a deleted namespace lives on until its last process leaves). Unless a new
  // cluster is made on the same path meanwhile: its record is written before its network, and the
  // network's names come from the path, so a record there now means the network is not ours.
  if (orphaned && c!.record.mode === 'namespaces' && !existsSync(clusterRecordFile(home))) {
    const n = teardownNetwork(clusterTag(home));
    log.info({ removed: n }, 'the cluster\'s network is removed');
  }
  process.exit(0);
}
process.on('SIGTERM', () => void leave('SIGTERM'));
process.on('SIGINT', () => void leave('SIGINT'));
setInterval(() => {
  if (!existsSync(clusterRecordFile(home))) void leave('the cluster record is gone', true);
}, 2000);
