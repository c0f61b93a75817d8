/**
 * Entry of the root partition process: VMMS, VID (the root's hypercall session) and the
 * management API. Environment: HVLAB_HOME, HVLAB_HOST_ID, HVLAB_HV_PID, HVLAB_ROOT_TOKEN,
 * HVLAB_LPS. Prints "ready" once the management socket is bound. If the hypervisor goes away it
 * removes everything of the host (workers, shared memory, sockets) and exits.
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT_PARTITION_ID, MGMT_API_VERSION, type HostInfo } from '@hvlab/protocol';
import { hostPaths, processLogger, watchPids, pidAlive, HvClient, shmPrefix } from '@hvlab/runtime';
import { memoryMode, shmUnavailableReason, unlinkRegion } from '@hvlab/shm';
import { ConfigStore, MgmtFailure } from './config.js';
import { MgmtServer } from './mgmt.js';
import { Vmms } from './vmms.js';
import { VmbusHost, type VmbusTransportMode } from './vmbus-host.js';

const home = process.env.HVLAB_HOME!;
const hostId = process.env.HVLAB_HOST_ID!;
const hvPid = Number(process.env.HVLAB_HV_PID);
const rootToken = process.env.HVLAB_ROOT_TOKEN!;
const lps = Number(process.env.HVLAB_LPS ?? '1');
const vmbusMode: VmbusTransportMode = process.env.HVLAB_VMBUS_TRANSPORT === 'remote' ? 'remote' : 'shm';
const envMs = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v >= 50 ? v : dflt;
};
delete process.env.HVLAB_ROOT_TOKEN;
process.title = `hvlab-root ${hostId}`;
const paths = hostPaths(home);
const log = processLogger(paths.logDir, 'root.log', { host: hostId, role: 'root', partition: ROOT_PARTITION_ID });
const startedAt = new Date().toISOString();

const vid = new HvClient(paths.hvEndpoint, (n) => {
  if (n.k === 'rootmsg') vmbus?.onRootMessage(n.portId, n.messageType, n.payload, n.sender);
  else if (n.k === 'rootevent') vmbus?.onRootEvent(n.portId, n.sender);
  else if (n.k === 'bye') void exit(`hypervisor: ${n.reason}`);
});
let vmbus: VmbusHost | null = null;
let server: MgmtServer;
let vmms: Vmms;
let exiting = false;

/** Removes what the host left in /dev/shm and the socket directory. */
function sweep(): void {
  for (const f of (() => { try { return readdirSync('/dev/shm'); } catch { return []; } })()) {
    if (f.startsWith(shmPrefix(hostId))) {
      try { unlinkRegion(f); } catch { rmSync(join('/dev/shm', f), { force: true }); }
    }
  }
  rmSync(paths.sockDir, { recursive: true, force: true });
}

async function exit(reason: string, code = 0): Promise<void> {
  if (exiting) return;
  exiting = true;
  log.info({ reason }, 'root exiting');
  try {
    if (pidAlive(hvPid)) await Promise.race([vmms?.shutdownAll(), new Promise((r) => setTimeout(r, 4000))]);
    else vmms?.killAll();
  } catch { /* going anyway */ }
  server?.close();
  vmbus?.close();
  vid.close();
  sweep();
  process.exit(code);
}

watchPids([hvPid], () => {
  vmms?.killAll();
  void exit('the hypervisor is gone', 1);
});
process.on('SIGTERM', () => void exit('SIGTERM'));
process.on('SIGINT', () => void exit('SIGINT'));

const session = await vid.connect({ partitionId: ROOT_PARTITION_ID, token: rootToken, role: 'root', vm: null });
const store = new ConfigStore(paths.vmDir);
server = new MgmtServer(async (op, args) => {
  switch (op) {
    case 'ping': return { pong: true, hostId };
    case 'hostInfo': {
      const info: HostInfo = {
        hostId, home: paths.home, apiVersion: MGMT_API_VERSION, memoryMode: session.memoryMode,
        memoryModeReason: session.memoryMode === 'shared' ? 'shared-memory addon loaded' : shmUnavailableReason() || 'the hypervisor runs without shared memory',
        lps, pids: { hypervisor: hvPid, root: process.pid }, vms: vmms.count(), startedAt, nodeVersion: process.version,
        vmbusTransport: session.memoryMode === 'shared' ? vmbusMode : 'remote',
      };
      return info;
    }
    case 'vmNew': return vmms.newVm(args);
    case 'vmStart': return await vmms.start(args.name);
    case 'vmStop': return await vmms.stop(args.name, { force: args.force, timeoutS: args.timeoutS });
    case 'vmTurnOff': return await vmms.turnOff(args.name, 'turned off');
    case 'vmIc': return await vmms.ic(args.name, { enable: args.enable, disable: args.disable });
    case 'vmKvp': return await vmms.kvp(args.name, args);
    case 'vmPause': return await vmms.pause(args.name);
    case 'vmSave': return await vmms.save(args.name);
    case 'vmStatus': return await vmms.status(args.name);
    case 'vmSetProcessor': return await vmms.setProcessor(args.name, args);
    case 'vmResume': return await vmms.resume(args.name);
    case 'vmDelete': return vmms.delete(args.name);
    case 'vmList': return await vmms.list();
    case 'vmPeek': return await vmms.peek(args.name, args.gpa, args.len);
    case 'ps': return [{ role: 'hypervisor', vm: null, pid: hvPid }, { role: 'root', vm: null, pid: process.pid }, ...vmms.processes()];
    case 'debugHypercall': return await vmms.debugHypercall(args);
    case 'shutdown':
      setTimeout(() => void (async () => {
        await vmms.shutdownAll();
        await vid.ctl('shutdown').catch(() => undefined);
        await exit('shutdown requested');
      })(), 10);
      return { stopping: true };
    default: throw new MgmtFailure('InvalidArgument', `unknown operation "${op}"`);
  }
}, (e) => log.error({ err: e }, 'management request failed'));
vmbus = new VmbusHost(vid, vmbusMode, paths.vmbusEndpoint, log, { heartbeatMs: envMs('HVLAB_IC_HEARTBEAT_MS', 1000), timesyncMs: envMs('HVLAB_IC_TIMESYNC_MS', 5000) });
await vmbus.start();
vmms = new Vmms({ home: paths.home, hostId, hvPid, rootToken, store, vid, log, publish: (ev) => server.publish(ev), vmbus, vmDir: paths.vmDir });
await server.bind(paths.mgmtEndpoint, paths.eventsEndpoint);
log.info({ memoryMode: memoryMode(), vms: vmms.count() }, 'root ready');
process.stdout.write('ready\n');
await server.serve();
