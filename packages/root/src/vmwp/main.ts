/**
 * The VM worker process (VMWP): one per running VM, spawned by VMMS with an IPC pipe. It builds
 * the VM through the root's hypercall interface (its session is the root's, as VMWP runs in the
 * root partition): CreatePartition, privileges and CPU properties, InitializePartition,
 * MapGpaPages, CreateVp, the control ports; writes the boot information page as firmware; starts
 * the child partition process; and relays the root's requests (status, peek, pause, hypercalls as
 * the child). Intercept handling arrives with the emulated devices.
 *
 * When it exits, even by kill -9, its child partition process sees the pipe close and leaves; the
 * root then tears down the partition. Nothing else is touched, as in Hyper-V.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  BOOT_MAGIC, BootInfo, BOOT_INFO_GPA, StatusPage, STATUS_PAGE_GPA, WORKLOAD_NAME_BYTES, ENLIGHTENED_CHILD_PRIVILEGES,
  PartitionProperty, PortType, ROOT_PARTITION_ID, PAGE, GUEST_CONTROL_CONNECTION_ID, GuestControlMessage, BootState, parseWorkload,
  VMBUS_ENDPOINT_BYTES, VMBUS_TOKEN_BYTES, InterceptType, InterceptAccess, KERNEL_PAGE_GPA, KernelPage, type SavedVpState,
} from '@hvlab/protocol';
import { entries, pidAlive, hostPaths, processLogger, watchPids, HvClient, IpcRpc, nodeArgsFor, type Notification } from '@hvlab/runtime';
import { openRegion } from '@hvlab/shm';
import { controlPortId, hostConnectionId, type VmwpConfig } from './shared.js';
import { CmosRtc, CMOS_INDEX_PORT, CMOS_DATA_PORT } from './cmos.js';
import { readSavedState, writeSavedState, sha256, SAVED_STATE_VERSION, type SavedVm } from '../saved-state.js';

const cfg = JSON.parse(process.env.HVLAB_VMWP_CONFIG!) as VmwpConfig;
const rootToken = process.env.HVLAB_ROOT_TOKEN!;
delete process.env.HVLAB_ROOT_TOKEN;
delete process.env.HVLAB_VMWP_CONFIG;
process.title = `hvlab-vmwp ${cfg.hostId} ${cfg.name}`;
const paths = hostPaths(cfg.home);
const log = processLogger(paths.logDir, `vmwp-${cfg.name}.log`, { host: cfg.hostId, role: 'vmwp', vm: cfg.name });

let partitionId = 0;
let child: ChildProcess | null = null;
let childRpc: IpcRpc | null = null;
let memory: DataView | null = null;
let booted = false;
let exiting = false;
const cmos = new CmosRtc(cfg.rtcOffsetS * 1000);
let intercepts = 0;

/** An intercepted port access of our partition: emulate it, write the result, resume the VP. */
async function onIntercept(n: Extract<Notification, { k: 'intercept' }>): Promise<void> {
  const write = n.access === 2;
  const result = cmos.access(n.port, write, n.value);
  intercepts++;
  const values: Record<string, number> = { Rip: n.rip + 1, InterceptSuspend: 0 };
  if (!write) values.Rax = result >>> 0;
  await hv.must('SetVpRegisters', { partitionId, vpIndex: n.vpIndex, values });
}

const hv = new HvClient(paths.hvEndpoint, (n: Notification) => {
  if (n.k === 'rootmsg' && n.portId === controlPortId(partitionId) && n.messageType === GuestControlMessage.Booted && n.sender === partitionId) {
    if (!booted) {
      booted = true;
      log.info('guest reported boot');
      rootRpc.note({ t: 'booted', partitionPid: child?.pid ?? null });
    }
  } else if (n.k === 'intercept' && n.partitionId === partitionId) {
    onIntercept(n).catch((e) => log.error({ err: e, port: n.port }, 'intercept handling failed'));
  } else if (n.k === 'bye') {
    void exit(`hypervisor: ${n.reason}`, 1);
  }
});

async function exit(reason: string, code = 0): Promise<void> {
  if (exiting) return;
  exiting = true;
  log.info({ reason }, 'vmwp exiting');
  if (child && child.exitCode === null && child.signalCode === null) {
    // Reap the partition process ourselves rather than leave a zombie for init.
    const gone = new Promise((r) => child!.once('exit', r));
    child.kill('SIGKILL');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 1000))]);
  }
  if (partitionId && pidAlive(cfg.hvPid)) {
    await hv.call('FinalizePartition', { partitionId }, 1000).catch(() => undefined);
    await hv.call('DeletePartition', { partitionId }, 1000).catch(() => undefined);
  }
  hv.close();
  childRpc?.close();
  rootRpc.close();
  process.exit(code);
}

watchPids([cfg.hvPid], () => void exit('the hypervisor is gone', 1));
process.on('disconnect', () => void exit('the root is gone', 1));
process.on('SIGTERM', () => void exit('SIGTERM'));

/** What the guest kernel page says: LP occupancy (now and most ever) and the CMOS time it read. */
async function kernelInfo(): Promise<{ running: number; maxRunning: number; rtcFromCmosMs: number }> {
  const k = await readGuest(KERNEL_PAGE_GPA, 0x40);
  const dv = new DataView(k.buffer, k.byteOffset, k.byteLength);
  return { running: dv.getInt32(KernelPage.running, true), maxRunning: dv.getInt32(KernelPage.maxRunning, true), rtcFromCmosMs: dv.getFloat64(KernelPage.rtcFromCmosMs, true) };
}

async function readGuest(gpa: number, len: number): Promise<Uint8Array> {
  if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0 || gpa + len > cfg.memoryBytes) {
    throw new Error(`GPA range 0x${gpa.toString(16)}+${len} is outside the VM's ${cfg.memoryBytes} bytes`);
  }
  if (memory) return new Uint8Array(memory.buffer, gpa, len).slice();
  if (!childRpc) throw new Error('the VM is not running');
  return await childRpc.request<Uint8Array>({ t: 'read', gpa, len });
}

const rootRpc = new IpcRpc(process, async (m) => {
  switch (m.t) {
    case 'status': {
      if (!booted) return { booted: false, progress: null };
      const page = await readGuest(STATUS_PAGE_GPA, 0x40);
      const dv = new DataView(page.buffer, page.byteOffset, page.byteLength);
      return {
        booted: dv.getUint32(StatusPage.bootState, true) >= BootState.Running,
        progress: Number(dv.getBigUint64(StatusPage.progress, true)),
        steps: Number(dv.getBigUint64(StatusPage.steps, true)),
        messagesReceived: dv.getUint32(StatusPage.messagesReceived, true),
        eventsReceived: dv.getUint32(StatusPage.eventsReceived, true),
        intercepts,
        kernel: await kernelInfo(),
      };
    }
    case 'peek':
      return await readGuest(Number(m.gpa), Number(m.len));
    case 'suspend': {
      await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.Suspend, value: m.value ? 1 : 0 });
      return true;
    }
    case 'hypercall': {
      if (m.asChild) {
        if (!childRpc) throw new Error('the VM is not running');
        return await childRpc.request({ t: 'hypercall', code: m.code, input: m.input });
      }
      return await hv.raw(Number(m.code), (m.input ?? {}) as Record<string, unknown>);
    }
    case 'processor': {
      const set = async (property: number, value: number): Promise<void> => {
        await hv.must('SetPartitionProperty', { partitionId, property, value });
      };
      await set(PartitionProperty.CpuReserve, Number(m.reserve));
      await set(PartitionProperty.CpuCap, Number(m.maximum));
      await set(PartitionProperty.CpuWeight, Number(m.weight));
      return true;
    }
    case 'save':
      return await save((m.kvpExternal ?? []) as Array<{ key: string; value: string }>, (m.channels ?? []) as string[]);
    case 'turnOff':
      setTimeout(() => void exit('turned off by VMMS'), 10);
      return true;
    default:
      throw new Error(`unknown request ${String(m.t)}`);
  }
});

/**
 * Save: suspend the partition, wait until every VP has left its LP at a step boundary, then
 * write memory and the state of every VP and device. The VM stays suspended; VMMS turns it off.
 */
async function save(kvpExternal: Array<{ key: string; value: string }>, channels: string[]): Promise<{ bytes: number; ms: number }> {
  if (!memory) throw new Error('saving needs shared memory (this host runs on process-private memory)');
  const t0 = Date.now();
  await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.Suspend, value: 1 });
  try {
    let vps: SavedVpState[] = [];
    for (;;) {
      vps = [];
      for (let i = 0; i < cfg.vps; i++) vps.push(await hv.must<SavedVpState>('GetVpState', { partitionId, vpIndex: i }));
      if (vps.every((v) => v.runState !== 'Running')) break;
      if (Date.now() - t0 > 10000) throw new Error('a VP did not stop at a step boundary within 10 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    const mem = new Uint8Array(memory.buffer).slice();
    const state: SavedVm = {
      version: SAVED_STATE_VERSION,
      savedAt: new Date().toISOString(),
      vm: { name: cfg.name, id: cfg.id, memoryBytes: cfg.memoryBytes, vps: cfg.vps, workload: cfg.workload },
      memory: { file: 'memory.bin', bytes: mem.length, sha256: sha256(mem) },
      partition: { referenceTime: vps[0]?.referenceTime ?? 0, vps },
      devices: { cmos: cmos.save(), vmbus: { version: 1, channels }, kvp: { version: 1, external: kvpExternal } },
    };
    writeSavedState(cfg.vmDir, cfg.name, state, mem);
    log.info({ bytes: mem.length, ms: Date.now() - t0 }, 'VM saved');
    return { bytes: mem.length, ms: Date.now() - t0 };
  } catch (e) {
    await hv.call('SetPartitionProperty', { partitionId, property: PartitionProperty.Suspend, value: 0 }).catch(() => undefined);
    throw e;
  }
}

function firmwarePage(vmbus: { endpoint: string; token: string }): Uint8Array {
  const page = new Uint8Array(PAGE);
  const dv = new DataView(page.buffer);
  const wl = parseWorkload(cfg.workload)!;
  dv.setUint32(BootInfo.magic, BOOT_MAGIC, true);
  dv.setUint32(BootInfo.version, 1, true);
  dv.setUint32(BootInfo.partitionId, partitionId, true);
  dv.setUint32(BootInfo.vpCount, cfg.vps, true);
  dv.setBigUint64(BootInfo.memoryBytes, BigInt(cfg.memoryBytes), true);
  dv.setUint32(BootInfo.controlConnectionId, GUEST_CONTROL_CONNECTION_ID, true);
  dv.setBigUint64(BootInfo.workloadArg, BigInt(wl.arg), true);
  page.set(new TextEncoder().encode(wl.name).subarray(0, WORKLOAD_NAME_BYTES - 1), BootInfo.workloadName);
  dv.setFloat64(BootInfo.rtcMs, Date.now() + cfg.rtcOffsetS * 1000, true);
  const endpoint = new TextEncoder().encode(vmbus.endpoint);
  if (endpoint.length >= VMBUS_ENDPOINT_BYTES) throw new Error(`VMBus endpoint ${vmbus.endpoint} is longer than ${VMBUS_ENDPOINT_BYTES - 1} bytes`);
  page.set(endpoint, BootInfo.vmbusEndpoint);
  page.set(new TextEncoder().encode(vmbus.token).subarray(0, VMBUS_TOKEN_BYTES - 1), BootInfo.vmbusToken);
  return page;
}

async function build(): Promise<void> {
  // Check a saved state before building anything, so a bad one fails the start cleanly.
  const saved = cfg.restore ? readSavedState(cfg.vmDir, cfg.name, { memoryBytes: cfg.memoryBytes, vps: cfg.vps }) : null;
  const session = await hv.connect({ partitionId: ROOT_PARTITION_ID, token: rootToken, role: 'vmwp', vm: cfg.name });
  const created = await hv.must<{ partitionId: number; token: string }>('CreatePartition', { memoryBytes: cfg.memoryBytes, name: cfg.name });
  partitionId = created.partitionId;
  rootRpc.note({ t: 'partition', partitionId });
  await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES });
  await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuReserve, value: cfg.processor.reserve });
  await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuCap, value: cfg.processor.maximum });
  await hv.must('SetPartitionProperty', { partitionId, property: PartitionProperty.CpuWeight, value: cfg.processor.weight });
  await hv.must('InitializePartition', { partitionId });
  await hv.must('MapGpaPages', { partitionId, gpaPage: 0, pageCount: cfg.memoryBytes / PAGE });
  for (let vp = 0; vp < cfg.vps; vp++) await hv.must('CreateVp', { partitionId, vpIndex: vp });
  // Legacy devices this worker emulates: the CMOS clock (read by the guest at boot).
  await hv.must('InstallIntercept', { partitionId, type: InterceptType.IoPortRange, access: InterceptAccess.Read | InterceptAccess.Write, port: CMOS_INDEX_PORT, portEnd: CMOS_DATA_PORT });
  // Guest -> root control port (owned by this session) and root -> guest message/event ports.
  await hv.must('CreatePort', { partitionId: ROOT_PARTITION_ID, portId: controlPortId(partitionId), type: PortType.Message, vpIndex: 0, sint: 0 });
  await hv.must('ConnectPort', { partitionId, connectionId: GUEST_CONTROL_CONNECTION_ID, portPartitionId: ROOT_PARTITION_ID, portId: controlPortId(partitionId) });
  await hv.must('CreatePort', { partitionId, portId: 1, type: PortType.Message, vpIndex: 0, sint: 2 });
  await hv.must('CreatePort', { partitionId, portId: 2, type: PortType.Event, vpIndex: 0, sint: 2, flagCount: 2048 });
  await hv.must('ConnectPort', { partitionId: ROOT_PARTITION_ID, connectionId: hostConnectionId(partitionId, 1), portPartitionId: partitionId, portId: 1 });
  await hv.must('ConnectPort', { partitionId: ROOT_PARTITION_ID, connectionId: hostConnectionId(partitionId, 2), portPartitionId: partitionId, portId: 2 });
  // The root's VMBus server takes the partition: ports for connections 1 and 4, offers.
  const vmbus = await rootRpc.request<{ token: string; endpoint: string }>({ t: 'vmbusAttach', partitionId, privateMemory: session.memoryMode !== 'shared' }, 15000);
  const fw = firmwarePage(vmbus);
  if (session.memoryMode === 'shared') {
    const region = `hvlab-${cfg.hostId}-p${partitionId}-mem`;
    memory = new DataView(openRegion(region));
    if (saved) {
      // Restore: memory byte for byte, then each VP's registers, APIC, SynIC and timers, then devices.
      new Uint8Array(memory.buffer).set(saved.memory);
      new DataView(fw.buffer).setUint32(BootInfo.resume, 1, true);
      for (let i = 0; i < cfg.vps; i++) await hv.must('SetVpState', { partitionId, vpIndex: i, state: saved.state.partition.vps[i] });
      cmos.restore(saved.state.devices.cmos);
      log.info({ savedAt: saved.state.savedAt }, 'restoring saved state');
    }
    new Uint8Array(memory.buffer).set(fw, BOOT_INFO_GPA);
  } else if (saved) {
    throw new Error('restoring a saved state needs shared memory (this host runs on process-private memory)');
  }
  child = spawn(process.execPath, nodeArgsFor(entries.partition), {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    serialization: 'advanced',
    env: {
      ...process.env,
      HVLAB_PARTITION_ID: String(partitionId),
      HVLAB_PARTITION_TOKEN: created.token,
      HVLAB_VM: cfg.name,
      HVLAB_HV_PID: String(cfg.hvPid),
    },
  });
  childRpc = new IpcRpc(child, async () => {
    throw new Error('the VMWP takes no requests from the guest');
  });
  rootRpc.note({ t: 'spawned', partitionPid: child.pid ?? null });
  child.on('exit', (code, signal) => {
    if (exiting) return;
    if (code === 0) {
      // The guest shut itself down (the shutdown integration service asked it to).
      log.info('the guest shut down');
      rootRpc.note({ t: 'guestShutdown' });
      void exit('the guest shut down', 0);
      return;
    }
    log.warn({ code, signal }, 'partition process exited');
    rootRpc.note({ t: 'partitionExited', code, signal });
    void exit(`the partition process exited (${signal ?? `code ${code}`})`, 1);
  });
  if (session.memoryMode !== 'shared') await childRpc.request({ t: 'firmware', page: fw });
  log.info({ partitionId, partitionPid: child.pid, memoryMode: session.memoryMode }, 'VM built');
}

build().catch((e) => {
  log.error({ err: e }, 'VM build failed');
  rootRpc.note({ t: 'failed', message: (e as Error).message });
  void exit(`build failed: ${(e as Error).message}`, 2);
});
