/**
 * Entry of the root partition process: VMMS, VID (the root's hypercall session) and the
 * management API. Started and restarted by the hypervisor's supervisor, which writes the root's
 * token as one line on stdin. Environment: HVLAB_HOME, HVLAB_HOST_ID, HVLAB_HV_PID, HVLAB_LPS,
 * HVLAB_VMBUS_TRANSPORT. Prints "ready" once the management socket is bound.
 *
 * This process may die at any time (kill -9 included) without stopping a VM: each VM belongs to its
 * VMWP, and a new root re-attaches to every running VM from the workers' records. Only the
 * `shutdown` request (hvlab down) stops the VMs; if the hypervisor goes away, everything of the
 * host goes with it.
 */
import { faultClear, HostFaults } from './host-faults.js';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT_PARTITION_ID, MGMT_API_VERSION, type HostInfo, type HostMemory } from '@hvlab/protocol';
import { hostPaths, processLogger, watchPids, pidAlive, HvClient, shmPrefix, readStdinLine, codeKind, collectGarbage } from '@hvlab/runtime';
import { kernelDirtyTrackingUnavailableReason, memoryMode, shmUnavailableReason, unlinkRegion } from '@hvlab/shm';
import { ConfigStore, MgmtFailure } from './config.js';
import { MgmtServer, type MgmtHandler } from './mgmt.js';
import { ClusterMember, memberConfigFromEnv, memberSecret } from './member.js';
import { Vmms } from './vmms.js';


const home = process.env.HVLAB_HOME!;
const hostId = process.env.HVLAB_HOST_ID!;
const hvPid = Number(process.env.HVLAB_HV_PID);
const lps = Number(process.env.HVLAB_LPS ?? '1');
const vmbusMode: 'shm' | 'remote' = process.env.HVLAB_VMBUS_TRANSPORT === 'remote' ? 'remote' : 'shm';
const restarts = Number(process.env.HVLAB_ROOT_RESTARTS ?? '0') || 0;
const warm = Math.max(0, Math.min(64, Math.floor(Number(process.env.HVLAB_WARM ?? '0')) || 0));
// Spare workers: 1 unless HVLAB_SPARE says otherwise (`hvlab up --spare N`).
const spare = process.env.HVLAB_SPARE === undefined ? 1 : Math.max(0, Math.min(8, Math.floor(Number(process.env.HVLAB_SPARE)) || 0));
process.title = `hvlab-root ${hostId}`;
const paths = hostPaths(home);
const log = processLogger(paths.logDir, 'root.log', { host: hostId, role: 'root', partition: ROOT_PARTITION_ID });
// Nothing a client sends may end the root: log what escapes and keep serving.
process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception (the root keeps serving)'));
process.on('unhandledRejection', (e) => log.error({ err: e }, 'unhandled rejection (the root keeps serving)'));
const rootToken = (await readStdinLine('the root token', 4096)).trim();
const startedAt = new Date().toISOString();

const vid = new HvClient(paths.hvEndpoint, (n) => {
  if (n.k === 'bye') void exit(`hypervisor: ${n.reason}`);
}, { watchPid: hvPid });
let server: MgmtServer | null = null;
let vmms: Vmms | null = null;
let exiting = false;

/** Removes what the host left in /dev/shm and the socket directory (only when the host stops). */
function sweep(): void {
  for (const f of (() => { try { return readdirSync('/dev/shm'); } catch { return []; } })()) {
    if (f.startsWith(shmPrefix(hostId))) {
      try { unlinkRegion(f); } catch { rmSync(join('/dev/shm', f), { force: true }); }
    }
  }
  rmSync(paths.sockDir, { recursive: true, force: true });
}

/**
 * Leaves. A root that exits on a signal leaves every VM running (its supervisor starts a new root
 * that re-attaches); `hostDown` stops the VMs and sweeps the host's files.
 */
async function exit(reason: string, code = 0, hostDown = false): Promise<void> {
  if (exiting) return;
  exiting = true;
  log.info({ reason, hostDown }, 'root exiting');
  if (hostDown) {
    try {
      if (pidAlive(hvPid)) await Promise.race([vmms?.shutdownAll(), new Promise((r) => setTimeout(r, 4000))]);
      else vmms?.killAll();
    } catch { /* going anyway */ }
  }
  await member?.close();
  server?.close();
  vmms?.close();
  vid.close();
  if (hostDown) sweep();
  process.exit(code);
}

watchPids([hvPid], () => {
  vmms?.killAll();
  void exit('the hypervisor is gone', 1, true);
});
process.on('SIGTERM', () => void exit('SIGTERM'));
process.on('SIGINT', () => void exit('SIGINT'));

const session = await vid.connect({ partitionId: ROOT_PARTITION_ID, token: rootToken, role: 'root', vm: null });
const store = new ConfigStore(paths.vmDir);
// lp-shrink: the hypervisor takes LPs away and gives them back after forMs by itself.
// It holds the fault's id with the shrink: a root started while one lasts learns it below.
const hostFaults = new HostFaults((n, forMs, fault) => vid.ctl('setLps', fault === null ? { lps: n, forMs } : { lps: n, forMs, fault }), lps, (msg, fields) => log.info(fields, msg));
let member: ClusterMember | null = null;
/** Probed once: whether userfaultfd's async write-protect works here (the partitions use it when it does). */
const dirtyTracking = (): NonNullable<HostInfo['dirtyTracking']> => {
  const reason = kernelDirtyTrackingUnavailableReason();
  return { mode: reason === null ? 'kernel' : 'bitmap', reason };
};
const handler: MgmtHandler = async (op, args) => {
  const v = vmms!;
  switch (op) {
    case 'ping': return { pong: true, hostId };
    case 'hostInfo': {
      // From this root's record, not by asking the hypervisor: host info answers even while the
      // hypervisor is paused by a fault.
      const shrink = hostFaults.list()[0] ?? null;
      const info: HostInfo = {
        hostId, home: paths.home, apiVersion: MGMT_API_VERSION, memoryMode: session.memoryMode,
        memoryModeReason: session.memoryMode === 'shared' ? 'shared-memory addon loaded' : shmUnavailableReason() || 'the hypervisor runs without shared memory',
        lps, lpShrink: shrink ? { lps: shrink.lps, remainingMs: Math.max(0, shrink.endsAt - Date.now()), fault: shrink.id } : null,
        pids: { hypervisor: hvPid, root: process.pid }, vms: v.count(), startedAt, nodeVersion: process.version,
        vmbusTransport: session.memoryMode === 'shared' ? vmbusMode : 'remote',
        rootRestarts: restarts, hypercallPath: vid.paged ? 'page' : 'socket', hypercallWake: vid.pageWatch, cluster: member?.info() ?? null,
        dirtyTracking: dirtyTracking(), code: codeKind(),
      };
      return info;
    }
    case 'hostMemory': {
      const collectedMs = args.collect === true ? collectGarbage() : null;
      const m = process.memoryUsage();
      const mem: HostMemory = { pid: process.pid, rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, collectedMs };
      return mem;
    }
    case 'vmNew': return v.newVm(args);
    case 'vmStart': return await v.start(args.name);
    case 'vmStop': return await v.stop(args.name, { force: args.force, timeoutS: args.timeoutS });
    case 'vmTurnOff': return await v.turnOff(args.name, 'turned off', args.id);
    case 'vmIc': return await v.ic(args.name, { enable: args.enable, disable: args.disable });
    case 'vmKvp': return await v.kvp(args.name, args);
    case 'vmPause': return await v.pause(args.name);
    case 'vmSave': return await v.save(args.name);
    case 'vmStatus': return await v.status(args.name);
    case 'vmSetProcessor': return await v.setProcessor(args.name, args);
    case 'vmResume': return await v.resume(args.name);
    case 'vmDelete': return v.delete(args.name, args.id);
    case 'vmList': return await v.list();
    case 'vmPeek': return await v.peek(args.name, args.gpa, args.len);
    case 'ps': return [{ role: 'hypervisor', vm: null, pid: hvPid }, { role: 'root', vm: null, pid: process.pid }, ...v.processes()];
    case 'debugHypercall': return await v.debugHypercall(args);
    case 'shutdown':
      setTimeout(() => void (async () => {
        await v.shutdownAll();
        await vid.ctl('shutdown').catch(() => undefined);
        await exit('shutdown requested', 0, true);
      })(), 10);
      return { stopping: true };
    case 'vmMove': {
      const { name, to, ...options } = args;
      return await v.move({ name, to, options });
    }
    case 'vmMoveStatus': return v.moveStatus(args.name);
    case 'vmMoveCancel': return await v.moveCancel(args.name, args.force === true);
    case 'faultSet':
      if (args.spec.kind === 'lp-shrink') return await hostFaults.set(args.id, args.spec.lps, args.forMs);
      return await v.faultSet(args.vm!, args.id, args.spec, args.forMs);
    case 'faultClear': return await faultClear(args, hostFaults, v);
    // hostClear: this root takes faultClear `host` (the nemesis sends it only to one that says so).
    case 'faultList': return { host: hostFaults.list(), vms: await v.faultList(), hostClear: true };
    case 'linkProbe':
      if (!member) throw new MgmtFailure('InvalidState', 'this host is not a member of a cluster ("hvlab cluster up", "hvlab up --join")');
      return await member.probe(args);
    case 'linkProbeStop':
      return { stopped: member?.stopProbes(args.peer) ?? 0 };
    default: throw new MgmtFailure('InvalidArgument', `unknown operation "${op}"`);
  }
};
server = new MgmtServer(handler, (e) => log.error({ err: e }, 'management request failed'));
vmms = new Vmms({ home: paths.home, hostId, hvPid, lps, store, vid, log, publish: (ev) => server!.publish(ev), vmDir: paths.vmDir, vmbusTransport: vmbusMode, warm, warmMemory: process.env.HVLAB_WARM_MEMORY, spare });
// A restarted root finds the VMs that kept running while it was away.
await vmms.reattach();
// And the LP shrink its predecessor asked for, if one lasts, before the first answer (host info
// answers from this root's record, not by asking the hypervisor). Re-attaching asked the
// hypervisor already, so this adds no new wait; a hypervisor that does not answer within 5 s
// leaves the record empty (the fault's clear gives every LP back anyway).
await hostFaults.learn(() => vid.ctl('stats', 5000)).catch((e: unknown) => log.warn({ err: (e as Error).message }, 'cannot ask the hypervisor for an LP shrink in force'));
await server.bind(paths.mgmtEndpoint, paths.eventsEndpoint);
// A host of a cluster joins it and serves its peers (member.ts); a wrong configuration is logged
// and the host runs on alone rather than failing (its supervisor would only restart it again).
try {
  const cfg = memberConfigFromEnv(process.env, lps, () => memberSecret(paths.home, log));
  if (cfg) {
    member = new ClusterMember(cfg, log, handler);
    const m = member;
    member.onMigration = (r) => vmms!.incoming(r);
    member.onJoined = () => vmms!.exposeIncomingAgain();
    member.keepExposed = () => vmms!.incomingExposedPorts();
    vmms.cluster = m;
    await member.start();
  }
} catch (e) {
  log.error({ err: e }, 'cannot take part in the cluster; the host runs alone');
  vmms.cluster = null;
  await member?.close();
  member = null;
}
log.info({ memoryMode: memoryMode(), vms: vmms.count(), restarts, warm, spare, cluster: member !== null }, 'root ready');
process.stdout.write('ready\n');
vmms.startWarmPool();
vmms.startSpares();
await server.serve();
