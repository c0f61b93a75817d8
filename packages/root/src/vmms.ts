/**
 * VMMS: the VM registry and each VM's state machine (WMI EnabledState numbers), one VMWP per
 * running VM, and the actions behind the management API. A VMWP that dies, however it dies,
 * turns its VM Off with the reason recorded; the root then deletes the orphaned partition.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  EnabledState, vmStateName, parseHvCall, hvCallName, hvStatusName, type VmInfo, type VmCpu, type VmStateEvent, type ProcessInfo,
} from '@hvlab/protocol';
import { entries, nodeArgsFor, IpcRpc, pidAlive, type HvClient, type Logger, type HypercallResult } from '@hvlab/runtime';
import { IcRequestError, KvpInputError, type KvpPoolName } from '@hvlab/vsp';
import { buildConfig, ConfigStore, MgmtFailure, validateName, type VmConfig } from './config.js';
import type { VmwpConfig } from './vmwp/shared.js';
import { IC_SERVICES, type IcEntry, type VmbusHost, type VmIntegration } from './vmbus-host.js';
import type { IcServiceName } from '@hvlab/vsp';
import { discardSavedState, hasSavedState } from './saved-state.js';

const START_TIMEOUT_MS = 30000;

interface VmRecord {
  config: VmConfig;
  state: number;
  reason: string | null;
  partitionId: number | null;
  vmwp: ChildProcess | null;
  rpc: IpcRpc | null;
  partitionPid: number | null;
  runningSince: number | null;
  /** Set while VMMS itself is turning the VM off, so the worker's exit is not a failure. */
  expectingExit: boolean;
  /** Why the worker said it failed, if it did. */
  failure: string | null;
  booted: ((ok: boolean, why?: string) => void) | null;
  /** The VM's VMBus server and integration services while it runs. */
  integration: VmIntegration | null;
  /** The guest shut itself down (through the shutdown service or on its own). */
  guestShutdown: boolean;
  /** KVP external pool taken at save, put back after a restore. */
  savedKvp: Array<{ key: string; value: string }>;
}

export interface VmmsOptions {
  home: string;
  hostId: string;
  hvPid: number;
  rootToken: string;
  store: ConfigStore;
  vid: HvClient;
  log: Logger;
  publish: (ev: VmStateEvent) => void;
  vmbus: VmbusHost;
  /** HVLAB_HOME/vms: configs and saved states. */
  vmDir: string;
}

export const DEFAULT_STOP_TIMEOUT_S = 30;

export class Vmms {
  private readonly vms = new Map<string, VmRecord>();

  constructor(private readonly o: VmmsOptions) {
    for (const c of o.store.loadAll((f, why) => o.log.warn({ file: f, why }, 'ignoring bad VM config'))) {
      const r = this.record(c);
      if (hasSavedState(o.vmDir, c.name)) r.state = EnabledState.Saved;
      this.vms.set(c.name, r);
    }
  }

  private record(config: VmConfig): VmRecord {
    return { config, state: EnabledState.Off, reason: null, partitionId: null, vmwp: null, rpc: null, partitionPid: null, runningSince: null, expectingExit: false, failure: null, booted: null, integration: null, guestShutdown: false, savedKvp: [] };
  }

  private get(name: unknown): VmRecord {
    const n = validateName(name);
    const r = this.vms.get(n);
    if (!r) throw new MgmtFailure('NotFound', `VM "${n}" does not exist`);
    return r;
  }

  private setState(r: VmRecord, state: number, reason: string | null = null): void {
    r.state = state;
    r.reason = reason ?? r.reason;
    if (state === EnabledState.Running && r.runningSince === null) r.runningSince = Date.now();
    if (state === EnabledState.Off) r.runningSince = null;
    this.o.log.info({ vm: r.config.name, state: vmStateName(state), reason }, 'VM state changed');
    this.o.publish({ vm: r.config.name, state: vmStateName(state), enabledState: state, reason, at: Date.now() });
  }

  private requireState(r: VmRecord, allowed: number[], action: string): void {
    if (!allowed.includes(r.state)) {
      throw new MgmtFailure('InvalidState', `cannot ${action} VM "${r.config.name}": it is ${vmStateName(r.state)}`);
    }
  }

  count(): number {
    return this.vms.size;
  }

  newVm(args: Record<string, unknown>): VmInfo {
    const c = buildConfig(args);
    if (this.vms.has(c.name)) throw new MgmtFailure('AlreadyExists', `VM "${c.name}" already exists`);
    this.o.store.save(c);
    const r = this.record(c);
    this.vms.set(c.name, r);
    this.o.log.info({ vm: c.name, memoryBytes: c.memoryBytes, vps: c.vps, workload: c.workload }, 'VM created');
    return this.info(r, null);
  }

  async start(name: unknown): Promise<VmInfo> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Off, EnabledState.Saved], 'start');
    const restore = r.state === EnabledState.Saved;
    this.setState(r, EnabledState.Starting, null);
    r.reason = null;
    const cfg: VmwpConfig = {
      home: this.o.home, hostId: this.o.hostId, hvPid: this.o.hvPid, name: r.config.name, id: r.config.id,
      memoryBytes: r.config.memoryBytes, vps: r.config.vps, workload: r.config.workload, processor: r.config.processor,
      rtcOffsetS: r.config.rtcOffsetS ?? 0, vmDir: this.o.vmDir, restore,
    };
    const child = spawn(process.execPath, nodeArgsFor(entries.vmwp), {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      serialization: 'advanced',
      env: { ...process.env, HVLAB_VMWP_CONFIG: JSON.stringify(cfg), HVLAB_ROOT_TOKEN: this.o.rootToken },
    });
    r.vmwp = child;
    r.expectingExit = false;
    r.guestShutdown = false;
    r.failure = null;
    const booted = new Promise<void>((resolve, reject) => {
      r.booted = (ok, why) => (ok ? resolve() : reject(new MgmtFailure('StartFailed', `VM "${r.config.name}" failed to start: ${why}`)));
    });
    r.rpc = new IpcRpc(child, async (m) => {
      if (m.t !== 'vmbusAttach') throw new Error(`VMMS takes no ${String(m.t)} requests from a worker`);
      // The VMWP built the partition; the root's VMBus server takes it from here.
      const pid = Number(m.partitionId);
      r.partitionId = pid;
      const a = await this.o.vmbus.attach(pid, r.config.name, r.config.integrationServices ?? {}, m.privateMemory === true);
      r.integration = a.integration;
      return { token: a.token, endpoint: a.endpoint };
    }, (note) => {
      if (note.t === 'partition') r.partitionId = Number(note.partitionId);
      else if (note.t === 'spawned') r.partitionPid = (note.partitionPid as number | null) ?? null;
      else if (note.t === 'booted') {
        r.partitionPid = (note.partitionPid as number | null) ?? r.partitionPid;
        r.booted?.(true);
        r.booted = null;
      } else if (note.t === 'failed') {
        r.failure = String(note.message);
      } else if (note.t === 'guestShutdown') {
        r.guestShutdown = true;
      }
    });
    child.on('exit', (code, signal) => void this.onWorkerExit(r, child, code, signal));
    const timer = setTimeout(() => r.booted?.(false, `no boot within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS);
    try {
      await booted;
    } catch (e) {
      r.expectingExit = true;
      child.kill('SIGKILL');
      throw e;
    } finally {
      clearTimeout(timer);
    }
    if (restore) {
      // Hyper-V deletes the saved state once the VM runs from it.
      discardSavedState(this.o.vmDir, r.config.name);
      this.restoreKvp(r, r.savedKvp);
      r.savedKvp = [];
    }
    this.setState(r, EnabledState.Running, restore ? 'restored from saved state' : 'started');
    return this.info(r, null);
  }

  /** Puts the saved KVP external pool back once the restored guest's KVP service is up. */
  private restoreKvp(r: VmRecord, pool: Array<{ key: string; value: string }>): void {
    if (pool.length === 0) return;
    const deadline = Date.now() + 15000;
    const attempt = async (): Promise<void> => {
      const kvp = r.integration?.providers.kvp;
      if (!kvp?.negotiated) {
        if (Date.now() < deadline && r.state === EnabledState.Running) setTimeout(() => void attempt(), 100);
        return;
      }
      for (const e of pool) await kvp.set('external', e.key, e.value).catch(() => undefined);
    };
    void attempt();
  }

  /**
   * Save-VM: the VMWP suspends the partition, waits until every VP stopped at a step boundary and
   * writes memory, VP, APIC, SynIC, timer and device state under HVLAB_HOME; then the VM is
   * turned off and becomes Saved. `vm start` continues it exactly there.
   */
  async save(name: unknown): Promise<VmInfo> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'save');
    const from = r.state;
    this.setState(r, EnabledState.Saving, null);
    let kvpExternal: Array<{ key: string; value: string }> = [];
    const kvp = r.integration?.enabled.kvp ? r.integration.providers.kvp : null;
    if (kvp?.negotiated) kvpExternal = (await kvp.list('external').catch(() => [])).map((e) => ({ key: e.key, value: e.value }));
    const channels = r.integration ? r.integration.ic().filter((e) => e.enabled).map((e) => e.service) : [];
    try {
      await r.rpc!.request({ t: 'save', kvpExternal, channels }, 120000);
    } catch (e) {
      discardSavedState(this.o.vmDir, r.config.name);
      this.setState(r, from, null);
      throw new MgmtFailure('SaveFailed', `VM "${r.config.name}" could not be saved: ${(e as Error).message}`);
    }
    r.savedKvp = kvpExternal;
    await this.kill(r, 'saved');
    this.setState(r, EnabledState.Saved, 'saved');
    return this.info(r, null);
  }

  /** Set-VMProcessor: reserve %, maximum % and relative weight, on a stopped or running VM. */
  async setProcessor(name: unknown, args: { reserve?: unknown; maximum?: unknown; weight?: unknown }): Promise<VmInfo> {
    const r = this.get(name);
    const pick = (v: unknown, what: string, min: number, max: number, cur: number): number => {
      if (v === undefined || v === null) return cur;
      const n = Number(v);
      if (!/^\d+$/.test(String(v)) || n < min || n > max) throw new MgmtFailure('InvalidArgument', `${what} ${String(v)} is invalid: a whole number from ${min} to ${max}`);
      return n;
    };
    const p = r.config.processor;
    const next = {
      reserve: pick(args.reserve, '--reserve', 0, 100, p.reserve),
      maximum: pick(args.maximum, '--maximum', 1, 100, p.maximum),
      weight: pick(args.weight, '--weight', 1, 10000, p.weight),
    };
    if (next.reserve > next.maximum) throw new MgmtFailure('InvalidArgument', `reserve ${next.reserve}% is above maximum ${next.maximum}%`);
    if (r.rpc && (r.state === EnabledState.Running || r.state === EnabledState.Paused)) {
      await r.rpc.request({ t: 'processor', ...next });
    }
    r.config.processor = next;
    this.o.store.save(r.config);
    this.o.log.info({ vm: r.config.name, ...next }, 'processor settings changed');
    return this.info(r, null);
  }

  private async onWorkerExit(r: VmRecord, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (r.vmwp !== child) return;
    const clean = r.guestShutdown && code === 0;
    const why = clean ? 'shut down by the guest' : r.expectingExit ? (r.reason ?? 'turned off') : `the worker process exited unexpectedly (${signal ?? `exit code ${code}`})${r.failure ? `: ${r.failure}` : ''}`;
    if (!r.expectingExit && !clean) this.o.log.warn({ vm: r.config.name, code, signal }, 'VM worker process died');
    if (r.partitionId !== null) this.o.vmbus.detach(r.partitionId);
    r.integration = null;
    r.rpc?.close('the worker process exited');
    r.vmwp = null;
    r.rpc = null;
    if (r.partitionPid !== null && pidAlive(r.partitionPid)) {
      try {
        process.kill(r.partitionPid, 'SIGKILL');
      } catch { /* gone */ }
    }
    if (r.partitionId !== null && pidAlive(this.o.hvPid)) {
      // The worker may have died before tearing its partition down; the root's VID finishes it.
      await this.o.vid.call('FinalizePartition', { partitionId: r.partitionId }, 1000).catch(() => undefined);
      await this.o.vid.call('DeletePartition', { partitionId: r.partitionId }, 1000).catch(() => undefined);
    }
    r.partitionId = null;
    r.partitionPid = null;
    r.booted?.(false, why);
    r.booted = null;
    this.setState(r, EnabledState.Off, why);
  }

  async turnOff(name: unknown, reason = 'turned off'): Promise<VmInfo> {
    const r = this.get(name);
    if (r.state === EnabledState.Saved) {
      // Turning off a saved VM discards its saved state (as Stop-VM -TurnOff does).
      discardSavedState(this.o.vmDir, r.config.name);
      this.setState(r, EnabledState.Off, 'saved state discarded');
      return this.info(r, null);
    }
    this.requireState(r, [EnabledState.Running, EnabledState.Paused, EnabledState.Starting], 'turn off');
    await this.kill(r, reason);
    return this.info(r, null);
  }

  private async kill(r: VmRecord, reason: string): Promise<void> {
    const child = r.vmwp;
    if (!child) return;
    r.expectingExit = true;
    r.reason = reason;
    this.setState(r, EnabledState.Stopping, reason);
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
    await r.rpc?.request({ t: 'turnOff' }, 2000).catch(() => undefined);
    const t = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
    // onWorkerExit finishes the teardown and sets Off; wait for it.
    for (let i = 0; i < 100 && r.state !== EnabledState.Off; i++) await new Promise((res) => setTimeout(res, 20));
  }

  /**
   * Stop-VM: asks the guest through the shutdown integration service and returns once the VM is
   * Off. Without an answer within the timeout it fails with a clear message, unless `force`, which
   * then turns the VM off.
   */
  async stop(name: unknown, opts: { force?: unknown; timeoutS?: unknown } = {}): Promise<VmInfo> {
    const r = this.get(name);
    const force = opts.force === true;
    const timeoutS = opts.timeoutS === undefined || opts.timeoutS === null ? DEFAULT_STOP_TIMEOUT_S : Number(opts.timeoutS);
    if (!Number.isFinite(timeoutS) || timeoutS <= 0 || timeoutS > 3600) throw new MgmtFailure('InvalidArgument', `stop timeout ${String(opts.timeoutS)} is invalid: 1 to 3600 seconds`);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused, EnabledState.Starting], 'stop');
    const fail = async (why: string): Promise<VmInfo> => {
      if (force) {
        await this.kill(r, `stopped (forced: ${why})`);
        return this.info(r, null);
      }
      throw new MgmtFailure('Timeout', `VM "${r.config.name}" did not shut down: ${why}; use --force to turn it off`);
    };
    const sd = r.integration?.providers.shutdown;
    if (r.state !== EnabledState.Running || !sd || !r.integration?.enabled.shutdown || !sd.negotiated) {
      return await fail(r.state === EnabledState.Running ? 'the shutdown integration service is not available' : `it is ${vmStateName(r.state)}`);
    }
    const deadline = Date.now() + timeoutS * 1000;
    const off = new Promise<void>((resolve) => {
      const check = (): void => {
        if (r.state === EnabledState.Off) resolve();
        else if (Date.now() < deadline) setTimeout(check, 50);
        else resolve();
      };
      check();
    });
    this.setState(r, EnabledState.Stopping, 'shutdown requested');
    try {
      await sd.shutdown({ answerTimeoutMs: Math.min(timeoutS * 1000, 10000), timeoutSeconds: Math.ceil(timeoutS) });
    } catch (e) {
      if (this.stateOf(r) === EnabledState.Stopping) this.setState(r, EnabledState.Running, null);
      return await fail(`${(e as Error).message} within ${timeoutS} s`);
    }
    await off;
    if (this.stateOf(r) !== EnabledState.Off) {
      if (this.stateOf(r) === EnabledState.Stopping) this.setState(r, EnabledState.Running, null);
      return await fail(`the guest accepted the request but was not off within ${timeoutS} s`);
    }
    return this.info(r, null);
  }

  /** The state now (a method call, so narrowing from an earlier check does not stick across awaits). */
  private stateOf(r: VmRecord): number {
    return r.state;
  }

  private running(r: VmRecord, what: string): VmIntegration {
    if (!r.integration || (r.state !== EnabledState.Running && r.state !== EnabledState.Paused)) {
      throw new MgmtFailure('InvalidState', `cannot ${what} of VM "${r.config.name}": it is ${vmStateName(r.state)}`);
    }
    return r.integration;
  }

  /** Get-VMIntegrationService, and Enable/Disable-VMIntegrationService (hot add / remove). */
  async ic(name: unknown, args: { enable?: unknown; disable?: unknown } = {}): Promise<IcEntry[]> {
    const r = this.get(name);
    const pick = (v: unknown): IcServiceName | null => {
      if (v === undefined || v === null) return null;
      if (!(IC_SERVICES as readonly string[]).includes(String(v))) throw new MgmtFailure('InvalidArgument', `integration service "${String(v)}" is unknown: use ${IC_SERVICES.join(', ')}`);
      return String(v) as IcServiceName;
    };
    const enable = pick(args.enable);
    const disable = pick(args.disable);
    if (enable && disable) throw new MgmtFailure('InvalidArgument', 'give --enable or --disable, not both');
    const change = enable ?? disable;
    if (change) {
      const on = enable !== null;
      r.config.integrationServices = { heartbeat: true, shutdown: true, timesync: true, kvp: true, ...r.config.integrationServices, [change]: on };
      this.o.store.save(r.config);
      if (r.integration && r.integration.enabled[change] !== on) await r.integration.setEnabled(change, on);
      this.o.log.info({ vm: r.config.name, service: change, enabled: on }, 'integration service changed');
    }
    if (r.integration) return r.integration.ic();
    const en = r.config.integrationServices ?? {};
    return IC_SERVICES.map((s) => ({ service: s, enabled: en[s] !== false, status: 'NoContact' as const, version: null }));
  }

  /** KVP exchange: every operation asks the guest over its channel. */
  async kvp(name: unknown, args: { op?: unknown; pool?: unknown; key?: unknown; value?: unknown }): Promise<unknown> {
    const r = this.get(name);
    const op = String(args.op ?? '');
    if (!['set', 'get', 'delete', 'list'].includes(op)) throw new MgmtFailure('InvalidArgument', `KVP operation "${op}" is unknown: use set, get, delete or list`);
    const poolText = args.pool === undefined || args.pool === null ? 'external' : String(args.pool);
    if (!['external', 'guest', 'auto'].includes(poolText)) throw new MgmtFailure('InvalidArgument', `KVP pool "${poolText}" is unknown: use external, guest or auto`);
    const pool = poolText as KvpPoolName;
    const key = args.key === undefined || args.key === null ? null : String(args.key);
    if (op !== 'list' && key === null) throw new MgmtFailure('InvalidArgument', `KVP ${op} needs a key`);
    if (op === 'set' && (args.value === undefined || args.value === null)) throw new MgmtFailure('InvalidArgument', 'KVP set needs a value');
    const kvp = this.running(r, 'exchange KVP data').providers.kvp;
    if (!r.integration!.enabled.kvp) throw new MgmtFailure('InvalidState', `the KVP integration service of VM "${r.config.name}" is disabled`);
    try {
      switch (op) {
        case 'set':
          await kvp.set(pool, key!, String(args.value));
          return { pool, key, value: String(args.value) };
        case 'get': {
          const value = await kvp.get(pool, key!);
          if (value === null) throw new MgmtFailure('NotFound', `VM "${r.config.name}" has no KVP key "${key}" in the ${pool} pool`);
          return { pool, key, value };
        }
        case 'delete': {
          const existed = await kvp.delete(pool, key!);
          if (!existed) throw new MgmtFailure('NotFound', `VM "${r.config.name}" has no KVP key "${key}" in the ${pool} pool`);
          return { pool, key, deleted: true };
        }
        default:
          return (await kvp.list(pool)).map((e) => ({ pool, ...e }));
      }
    } catch (e) {
      if (e instanceof KvpInputError) throw new MgmtFailure('InvalidArgument', e.message);
      if (e instanceof IcRequestError) throw new MgmtFailure('Unavailable', `VM "${r.config.name}": ${e.message}`);
      throw e;
    }
  }

  pause(name: unknown): Promise<VmInfo> {
    return this.suspend(name, true);
  }

  resume(name: unknown): Promise<VmInfo> {
    return this.suspend(name, false);
  }

  /** Pause/resume: the hypervisor's Suspend property stops or restarts every VP of the partition. */
  private async suspend(name: unknown, on: boolean): Promise<VmInfo> {
    const r = this.get(name);
    const [from, via, to, verb] = on
      ? [EnabledState.Running, EnabledState.Pausing, EnabledState.Paused, 'pause']
      : [EnabledState.Paused, EnabledState.Resuming, EnabledState.Running, 'resume'];
    this.requireState(r, [from], verb);
    this.setState(r, via, null);
    try {
      await r.rpc!.request({ t: 'suspend', value: on });
    } catch (e) {
      this.setState(r, from, null);
      throw new MgmtFailure('Internal', `${verb} of VM "${r.config.name}" failed: ${(e as Error).message}`);
    }
    this.setState(r, to, on ? 'paused' : 'resumed');
    return this.info(r, null);
  }

  delete(name: unknown): { name: string; deleted: true } {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Off, EnabledState.Saved], 'delete');
    discardSavedState(this.o.vmDir, r.config.name);
    this.o.store.remove(r.config.name);
    this.vms.delete(r.config.name);
    this.o.log.info({ vm: r.config.name }, 'VM deleted');
    return { name: r.config.name, deleted: true };
  }

  private info(r: VmRecord, progress: number | null, cpu: VmCpu | null = null): VmInfo {
    return {
      name: r.config.name,
      id: r.config.id,
      state: vmStateName(r.state),
      enabledState: r.state,
      partitionId: r.partitionId,
      pids: { partition: r.partitionPid, vmwp: r.vmwp?.pid ?? null },
      vps: r.config.vps,
      memoryBytes: r.config.memoryBytes,
      uptimeS: r.runningSince === null ? 0 : Math.round((Date.now() - r.runningSince) / 100) / 10,
      workload: { name: r.config.workload.split(':')[0], progress },
      lastStateReason: r.reason,
      processor: { ...r.config.processor },
      cpu,
    };
  }

  async list(): Promise<VmInfo[]> {
    const rs = [...this.vms.values()].sort((a, b) => a.config.name.localeCompare(b.config.name));
    const stats = (await this.o.vid.ctl('stats').catch(() => null)) as { partitions?: Array<{ id: number; scheduled: boolean; cpu: VmCpu }> } | null;
    const cpuOf = new Map((stats?.partitions ?? []).filter((p) => p.scheduled).map((p) => [p.id, p.cpu]));
    return await Promise.all(rs.map(async (r) => {
      let progress: number | null = null;
      if (r.rpc && (r.state === EnabledState.Running || r.state === EnabledState.Paused)) {
        const st = await r.rpc.request<{ progress: number | null }>({ t: 'status' }, 2000).catch(() => null);
        progress = st?.progress ?? null;
      }
      return this.info(r, progress, r.partitionId !== null ? (cpuOf.get(r.partitionId) ?? null) : null);
    }));
  }

  /** Guest-side facts for tests and `hvlab vm status`: the kernel page and the intercept count. */
  async status(name: unknown): Promise<unknown> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'read the status of');
    return await r.rpc!.request({ t: 'status' }, 5000);
  }

  async peek(name: unknown, gpa: unknown, len: unknown): Promise<Uint8Array> {
    const r = this.get(name);
    this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'read the memory of');
    const g = Number(gpa);
    const l = Number(len);
    if (!Number.isSafeInteger(g) || g < 0) throw new MgmtFailure('InvalidArgument', `GPA ${String(gpa)} is invalid`);
    if (!Number.isSafeInteger(l) || l < 1 || l > 16 * 1024 * 1024) throw new MgmtFailure('InvalidArgument', `length ${String(len)} is invalid: 1 to 16 MiB`);
    if (g + l > r.config.memoryBytes) throw new MgmtFailure('InvalidArgument', `GPA range 0x${g.toString(16)}+${l} is outside VM "${r.config.name}"'s ${r.config.memoryBytes} bytes`);
    return await r.rpc!.request<Uint8Array>({ t: 'peek', gpa: g, len: l });
  }

  processes(): ProcessInfo[] {
    const out: ProcessInfo[] = [];
    for (const r of this.vms.values()) {
      if (r.vmwp?.pid) out.push({ role: 'vmwp', vm: r.config.name, pid: r.vmwp.pid });
      if (r.partitionPid) out.push({ role: 'partition', vm: r.config.name, pid: r.partitionPid });
    }
    return out;
  }

  async debugHypercall(args: Record<string, unknown>): Promise<{ call: string; as: string; status: number; statusName: string; output: unknown }> {
    const code = parseHvCall(String(args.call ?? ''));
    if (code === null) throw new MgmtFailure('InvalidArgument', `hypercall "${String(args.call)}" is unknown: use a name such as CreatePartition or a code such as 0x40`);
    const input = (args.input ?? {}) as Record<string, unknown>;
    let res: HypercallResult;
    let as = 'root';
    if (args.as !== undefined && args.as !== null) {
      const r = this.get(args.as);
      this.requireState(r, [EnabledState.Running, EnabledState.Paused], 'issue a hypercall as');
      as = r.config.name;
      res = await r.rpc!.request<HypercallResult>({ t: 'hypercall', asChild: true, code, input });
    } else {
      res = await this.o.vid.raw(code, input);
    }
    return { call: hvCallName(code), as, status: res.status, statusName: hvStatusName(res.status), output: res.output };
  }

  /** The hypervisor is gone: nothing can be torn down politely; kill every worker and partition. */
  killAll(): void {
    for (const r of this.vms.values()) {
      r.expectingExit = true;
      for (const pid of [r.vmwp?.pid, r.partitionPid]) {
        if (pid) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch { /* gone */ }
        }
      }
    }
  }

  async shutdownAll(): Promise<void> {
    await Promise.all([...this.vms.values()].filter((r) => r.vmwp).map((r) => this.kill(r, 'host shutting down')));
  }
}
