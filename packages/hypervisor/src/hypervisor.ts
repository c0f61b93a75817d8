/**
 * The hypervisor's state machine, free of sockets so it can be tested in-process: the partition
 * table, hypercall dispatch with TLFS codes and HV_STATUS results, ports and connections, and
 * SynIC delivery. `server.ts` puts it behind a ZeroMQ ROUTER.
 *
 * Every call checks, in this order: the caller's privilege (ACCESS_DENIED, preferred when several
 * errors apply so nothing leaks to the unprivileged), the shape of the input
 * (INVALID_HYPERCALL_INPUT), the target partition (INVALID_PARTITION_ID for the root, else
 * ACCESS_DENIED), its state (INVALID_PARTITION_STATE), then the values (INVALID_PARAMETER and
 * friends).
 */
import { randomBytes } from 'node:crypto';
import {
  HvCall, HvStatus, PartitionProperty, PartitionState, ROOT_PARTITION_ID, ROOT_PRIVILEGES, PARTITION_ID_SELF,
  MAX_VPS_PER_PARTITION, MAX_MESSAGE_PAYLOAD, MAX_GPADL_PAGES, MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, SINT_COUNT, EVENT_FLAGS_PER_SINT,
  InterceptType, PortType, hasPrivilege, isVpRegisterName, hvCallName, partitionPropertyName, hvStatusName,
  VpRegionHeader, VpPage, VirtualApicView, VP_REGION_MAGIC, STIMER_COUNT, HvMessageType, TIMER_EXPIRED_PAYLOAD_BYTES, PROBE_VECTOR_MIN,
  vpRegionBytes, vpPageOffset, vpRunStateName, referenceTime, sintVector, sintMasked, SINT_AUTO_EOI, InterceptAccess,
  type PrivilegeName, type HvServerMsg, type VpRegisterName, type SavedVpState,
} from '@hvlab/protocol';
import { createRegion, unlinkRegion, memoryMode as shmMode } from '@hvlab/shm';
import { Partition, VirtualProcessor, GPA_READ, GPA_WRITE, GPA_EXECUTE, type Port } from './partition.js';
import { SynIc } from './synic.js';
import type { ToScheduler, FromScheduler } from './sched-thread.js';

/** The main thread's handle on the scheduler thread (absent in socket-free unit tests). */
export interface SchedulerLink {
  lps: number;
  /** The host's scheduler region name (mapped by every partition process). */
  regionName: string;
  post(m: ToScheduler): void;
  /** Rings the doorbell: the scheduler re-reads every VP page. */
  ring(): void;
}

export interface VpStats {
  index: number;
  state: string;
  runMs: number;
  readyMs: number;
  waitMs: number;
  dispatches: number;
  cpuPercent: number;
}

export interface Session {
  id: string;
  partitionId: number;
  role: string;
  vm: string | null;
  pid: number;
}

export interface HypercallOutcome {
  status: number;
  reps: number;
  output: unknown;
}

export interface HypervisorOptions {
  hostId: string;
  rootToken: string;
  memoryMode?: 'shared' | 'private';
  notify: (sessionId: string, msg: HvServerMsg) => void;
  log?: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
  /** With a scheduler, VPs of shared-memory partitions are dispatched over its LPs and take interrupts through their virtual APIC. */
  scheduler?: SchedulerLink;
}

/** Thrown inside a handler to answer with a status. */
class Fail extends Error {
  constructor(readonly status: number, why: string) {
    super(why);
  }
}

type Input = Record<string, unknown>;

function int(input: Input, name: string, opt: { min?: number; max?: number; optional?: boolean; dflt?: number } = {}): number {
  const v = input[name];
  if (v === undefined || v === null) {
    if (opt.optional) return opt.dflt ?? 0;
    throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `missing field ${name}`);
  }
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `field ${name} is not an integer`);
  if ((opt.min !== undefined && n < opt.min) || (opt.max !== undefined && n > opt.max)) {
    throw new Fail(HvStatus.INVALID_PARAMETER, `field ${name}=${n} is out of range`);
  }
  return n;
}

function bytes(input: Input, name: string): Uint8Array {
  const v = input[name];
  if (v instanceof Uint8Array) return v;
  throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, `field ${name} is not bytes`);
}

export class Hypervisor {
  readonly hostId: string;
  readonly memoryMode: 'shared' | 'private';
  private readonly rootToken: string;
  private readonly partitions = new Map<number, Partition>();
  private readonly sessions = new Map<string, Session>();
  /** (connection partition id, connection id) -> port. */
  private readonly connections = new Map<string, { portPartitionId: number; portId: number }>();
  private nextPartitionId = ROOT_PARTITION_ID + 1;
  readonly stats = { hypercalls: 0, failed: 0 };

  constructor(private readonly opts: HypervisorOptions) {
    this.hostId = opts.hostId;
    this.rootToken = opts.rootToken;
    this.memoryMode = opts.memoryMode ?? shmMode();
    const root = new Partition(ROOT_PARTITION_ID, 0, ROOT_PRIVILEGES, 0, 'root', opts.rootToken);
    root.state = PartitionState.Initialized;
    this.partitions.set(ROOT_PARTITION_ID, root);
  }

  // ---- sessions ---------------------------------------------------------------------------

  hello(sessionId: string, m: { partitionId: number; token: string; role: string; vm: string | null; pid: number }): HvServerMsg {
    const p = this.partitions.get(m.partitionId);
    if (!p || p.state === PartitionState.Deleted || typeof m.token !== 'string' || m.token !== p.token) {
      return { k: 'reject', reason: `no partition ${m.partitionId} with that token` };
    }
    if (p.id !== ROOT_PARTITION_ID && p.state !== PartitionState.Initialized) {
      return { k: 'reject', reason: `partition ${p.id} is ${p.state}, not Initialized` };
    }
    this.sessions.set(sessionId, { id: sessionId, partitionId: p.id, role: String(m.role), vm: m.vm ?? null, pid: Number(m.pid) });
    this.opts.log?.info({ partition: p.id, role: m.role, vm: m.vm, clientPid: m.pid }, 'session opened');
    return {
      k: 'welcome', partitionId: p.id, hostId: this.hostId, memoryMode: this.memoryMode, memoryRegion: p.memoryRegion, memoryBytes: p.memoryBytes,
      vpRegion: p.vpRegionName, schedRegion: p.vpRegionName ? (this.opts.scheduler?.regionName ?? null) : null,
    };
  }

  session(sessionId: string): Session | undefined {
    return this.sessions.get(sessionId);
  }

  get lps(): number | null {
    return this.opts.scheduler?.lps ?? null;
  }

  listPartitions(): Array<{ id: number; name: string; state: string; vps: number; memoryBytes: number; suspended: boolean; sessions: number; scheduled: boolean; cpu: { percent: number; vps: VpStats[] } }> {
    return [...this.partitions.values()].map((p) => {
      const st = this.vpStats(p);
      return {
        id: p.id, name: p.name, state: p.state, vps: p.vps.size, memoryBytes: p.memoryBytes, suspended: p.suspended,
        sessions: [...this.sessions.values()].filter((s) => s.partitionId === p.id).length,
        scheduled: p.vpRegion !== null, cpu: { percent: st.cpuPercent, vps: st.vps },
      };
    });
  }

  partition(id: number): Partition | undefined {
    return this.partitions.get(id);
  }

  private notifyPartition(p: Partition, msg: HvServerMsg): void {
    for (const s of this.sessions.values()) if (s.partitionId === p.id) this.opts.notify(s.id, msg);
  }

  // ---- hypercalls -------------------------------------------------------------------------

  hypercall(sessionId: string, code: number, input: Input, control: { repCount?: number; repStart?: number } = {}): HypercallOutcome {
    this.stats.hypercalls++;
    const s = this.sessions.get(sessionId);
    let out: HypercallOutcome;
    if (!s) {
      out = { status: HvStatus.ACCESS_DENIED, reps: 0, output: null };
    } else if (input === null || typeof input !== 'object' || Array.isArray(input)) {
      out = { status: HvStatus.INVALID_HYPERCALL_INPUT, reps: 0, output: null };
    } else {
      const caller = this.partitions.get(s.partitionId);
      if (!caller || caller.state === PartitionState.Deleted) {
        out = { status: HvStatus.ACCESS_DENIED, reps: 0, output: null };
      } else {
        try {
          out = this.dispatch(caller, s, code, input, control);
        } catch (e) {
          if (!(e instanceof Fail)) throw e;
          // Reasons help the root debug; a child learns only the status (leak nothing).
          out = { status: e.status, reps: 0, output: caller.id === ROOT_PARTITION_ID ? { reason: e.message } : null };
          if (caller.id !== ROOT_PARTITION_ID) this.opts.log?.info({ partition: caller.id, call: hvCallName(code), why: e.message }, 'child hypercall refused');
        }
      }
    }
    if (out.status !== HvStatus.SUCCESS) {
      this.stats.failed++;
      this.opts.log?.info({ partition: s?.partitionId, call: hvCallName(code), status: hvStatusName(out.status), why: (out.output as { reason?: string } | null)?.reason }, 'hypercall failed');
    }
    return out;
  }

  private need(caller: Partition, p: PrivilegeName): void {
    if (!hasPrivilege(caller.privileges, p)) throw new Fail(HvStatus.ACCESS_DENIED, `partition ${caller.id} lacks ${p}`);
  }

  /** Resolves a target the caller must be the parent of (the root is everyone's ancestor). */
  private child(caller: Partition, input: Input, name = 'partitionId'): Partition {
    let id = int(input, name, { min: -1 });
    if (id === PARTITION_ID_SELF) id = caller.id;
    const p = this.partitions.get(id);
    const isRoot = caller.id === ROOT_PARTITION_ID;
    if (!p || p.state === PartitionState.Deleted) {
      throw new Fail(isRoot ? HvStatus.INVALID_PARTITION_ID : HvStatus.ACCESS_DENIED, `no partition ${id}`);
    }
    if (!isRoot && p.parentId !== caller.id) throw new Fail(HvStatus.ACCESS_DENIED, `partition ${caller.id} is not the parent of ${id}`);
    if (p.id === ROOT_PARTITION_ID) throw new Fail(HvStatus.ACCESS_DENIED, 'the root partition cannot be managed by hypercalls');
    return p;
  }

  /** Parent, root, or the partition itself (with a privilege for self-access). */
  private selfOrChild(caller: Partition, input: Input, selfPrivilege: PrivilegeName): Partition {
    let id = int(input, 'partitionId', { min: -1 });
    if (id === PARTITION_ID_SELF) id = caller.id;
    if (id === caller.id) {
      this.need(caller, selfPrivilege);
      return caller;
    }
    return this.child(caller, input);
  }

  private inState(p: Partition, ...states: string[]): void {
    if (!states.includes(p.state)) throw new Fail(HvStatus.INVALID_PARTITION_STATE, `partition ${p.id} is ${p.state}`);
  }

  private vp(p: Partition, input: Input): VirtualProcessor {
    const idx = int(input, 'vpIndex', { min: 0 });
    const vp = p.vps.get(idx);
    if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `partition ${p.id} has no VP ${idx}`);
    return vp;
  }

  private dispatch(caller: Partition, s: Session, code: number, input: Input, control: { repCount?: number }): HypercallOutcome {
    const ok = (output: unknown = null, reps = 0): HypercallOutcome => ({ status: HvStatus.SUCCESS, reps, output });
    switch (code) {
      case HvCall.CreatePartition: {
        this.need(caller, 'CreatePartitions');
        const memoryBytes = int(input, 'memoryBytes', { min: MIN_MEMORY_BYTES, max: MAX_MEMORY_BYTES });
        if (memoryBytes % 4096 !== 0) throw new Fail(HvStatus.INVALID_ALIGNMENT, `memory size ${memoryBytes} is not page-aligned`);
        int(input, 'flags', { optional: true, min: 0 });
        const name = typeof input.name === 'string' ? input.name.slice(0, 64) : '';
        const id = this.nextPartitionId++;
        const token = randomBytes(16).toString('hex');
        this.partitions.set(id, new Partition(id, caller.id, 0n, memoryBytes, name, token));
        this.opts.log?.info({ partition: id, parent: caller.id, memoryBytes, name }, 'partition created');
        return ok({ partitionId: id, token });
      }
      case HvCall.InitializePartition: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Created);
        if (this.memoryMode === 'shared') {
          const region = `hvlab-${this.hostId}-p${p.id}-mem`;
          try {
            p.memory = createRegion(region, p.memoryBytes);
          } catch (e) {
            throw new Fail(HvStatus.INSUFFICIENT_MEMORY, (e as Error).message);
          }
          p.memoryRegion = region;
          p.memoryView = new DataView(p.memory);
          if (this.opts.scheduler) this.createVpRegion(p);
        }
        p.gpaMap = new Uint8Array(p.pageCount);
        p.state = PartitionState.Initialized;
        return ok();
      }
      case HvCall.FinalizePartition: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        p.state = PartitionState.Finalized;
        p.vps.clear();
        if (p.vpRegion) this.opts.scheduler?.post({ t: 'removePartition', id: p.id });
        this.notifyPartition(p, { k: 'bye', reason: 'partition finalized' });
        for (const [sid, ss] of this.sessions) if (ss.partitionId === p.id) this.sessions.delete(sid);
        return ok();
      }
      case HvCall.DeletePartition: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Created, PartitionState.Finalized);
        this.destroy(p);
        return ok();
      }
      case HvCall.GetPartitionProperty: {
        const p = this.selfOrChild(caller, input, 'AccessPartitionId');
        const prop = int(input, 'property', { min: 0 });
        switch (prop) {
          case PartitionProperty.PrivilegeFlags: return ok({ value: p.privileges });
          case PartitionProperty.Suspend: return ok({ value: p.suspended ? 1 : 0 });
          case PartitionProperty.CpuReserve: return ok({ value: p.cpuReserve });
          case PartitionProperty.CpuCap: return ok({ value: p.cpuCap });
          case PartitionProperty.CpuWeight: return ok({ value: p.cpuWeight });
          default: throw new Fail(HvStatus.UNKNOWN_PROPERTY, `unknown property ${partitionPropertyName(prop)}`);
        }
      }
      case HvCall.SetPartitionProperty: {
        const p = this.child(caller, input);
        const prop = int(input, 'property', { min: 0 });
        const raw = input.value;
        if (prop === PartitionProperty.PrivilegeFlags) {
          let v: bigint;
          try {
            v = typeof raw === 'bigint' ? raw : BigInt(raw as number | string);
          } catch {
            throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'privilege mask is not an integer');
          }
          if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, 'privilege mask out of range');
          // A parent can grant only what it holds itself.
          if ((v & ~caller.privileges) !== 0n) throw new Fail(HvStatus.ACCESS_DENIED, 'cannot grant privileges the caller lacks');
          p.privileges = v;
          return ok();
        }
        const known = [PartitionProperty.Suspend, PartitionProperty.CpuReserve, PartitionProperty.CpuCap, PartitionProperty.CpuWeight] as number[];
        if (!known.includes(prop)) throw new Fail(HvStatus.UNKNOWN_PROPERTY, `unknown property ${partitionPropertyName(prop)}`);
        const v = int(input, 'value');
        switch (prop) {
          case PartitionProperty.Suspend: {
            if (v !== 0 && v !== 1) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, 'suspend is 0 or 1');
            this.inState(p, PartitionState.Initialized);
            const was = p.suspended;
            p.suspended = v === 1;
            if (was !== p.suspended) {
              this.notifyPartition(p, { k: 'suspend', suspended: p.suspended });
              this.toScheduler(p, { t: 'suspend', id: p.id, on: p.suspended });
            }
            return ok();
          }
          case PartitionProperty.CpuReserve:
            if (v < 0 || v > 100) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `reserve ${v} is not 0-100`);
            p.cpuReserve = v;
            this.toScheduler(p, { t: 'props', id: p.id, reserve: v / 100 });
            return ok();
          case PartitionProperty.CpuCap:
            if (v < 0 || v > 100) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `cap ${v} is not 0-100`);
            p.cpuCap = v;
            this.toScheduler(p, { t: 'props', id: p.id, cap: v / 100 });
            return ok();
          default:
            if (v < 1 || v > 10000) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `weight ${v} is not 1-10000`);
            p.cpuWeight = v;
            this.toScheduler(p, { t: 'props', id: p.id, weight: v });
            return ok();
        }
      }
      case HvCall.GetPartitionId: {
        this.need(caller, 'AccessPartitionId');
        return ok({ partitionId: caller.id });
      }
      case HvCall.MapGpaPages:
      case HvCall.UnmapGpaPages: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const gpaPage = int(input, 'gpaPage', { min: 0 });
        const count = int(input, 'pageCount', { min: 1 });
        if (control.repCount !== undefined && control.repCount !== 0 && control.repCount !== count) {
          throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'rep count disagrees with pageCount');
        }
        if (gpaPage + count > p.pageCount) throw new Fail(HvStatus.INVALID_PARAMETER, `pages ${gpaPage}+${count} exceed the partition's ${p.pageCount} pages`);
        const map = p.gpaMap!;
        if (code === HvCall.MapGpaPages) {
          const flags = int(input, 'flags', { optional: true, dflt: GPA_READ | GPA_WRITE | GPA_EXECUTE, min: 1, max: 7 });
          map.fill(flags, gpaPage, gpaPage + count);
        } else {
          map.fill(0, gpaPage, gpaPage + count);
        }
        return ok(null, count);
      }
      case HvCall.InstallIntercept: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const type = int(input, 'type', { min: 0 });
        if (!(Object.values(InterceptType) as number[]).includes(type)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown intercept type ${type}`);
        const access = int(input, 'access', { min: 1, max: 3 });
        const port = int(input, 'port', { optional: true, min: 0, max: 0xffff });
        const portEnd = int(input, 'portEnd', { optional: true, dflt: port, min: port, max: 0xffff });
        if (type !== InterceptType.IoPort && type !== InterceptType.IoPortRange) throw new Fail(HvStatus.INVALID_PARAMETER, `intercept type ${type} is not supported (only I/O ports)`);
        p.intercepts.push({ type, access, port, portEnd: type === InterceptType.IoPort ? port : portEnd, ownerSession: s.id });
        return ok();
      }
      case HvCall.CreateVp: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const idx = int(input, 'vpIndex', { min: 0, max: MAX_VPS_PER_PARTITION - 1 });
        if (p.vps.has(idx)) throw new Fail(HvStatus.INVALID_VP_STATE, `VP ${idx} of partition ${p.id} exists`);
        const synic = new SynIc(p.memoryView, p.memoryBytes, { raise: (sint, extra) => this.raiseSint(p, idx, sint, extra) });
        p.vps.set(idx, new VirtualProcessor(idx, synic));
        this.toScheduler(p, { t: 'addVp', id: p.id, index: idx });
        return ok();
      }
      case HvCall.DeleteVp: {
        const p = this.child(caller, input);
        const vp = this.vp(p, input);
        p.vps.delete(vp.index);
        this.toScheduler(p, { t: 'removeVp', id: p.id, index: vp.index });
        return ok();
      }
      case HvCall.AssertVirtualInterrupt: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const vp = this.vp(p, input);
        const vector = int(input, 'vector', { min: 16, max: 255 });
        if (!this.assertVector(p, vp.index, vector, false)) throw new Fail(HvStatus.INVALID_VP_STATE, `partition ${p.id} has no virtual APIC (VPs are not scheduled)`);
        return ok();
      }
      case HvCall.GetVpState: {
        const p = this.child(caller, input);
        const vp = this.vp(p, input);
        return ok(this.saveVp(p, vp));
      }
      case HvCall.SetVpState: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const vp = this.vp(p, input);
        this.restoreVp(p, vp, input.state);
        return ok();
      }
      case HvCall.GetVpRegisters: {
        const p = this.selfOrChild(caller, input, 'AccessVpRegisters');
        const vp = this.vp(p, input);
        const names = input.names;
        if (!Array.isArray(names) || names.some((n) => typeof n !== 'string')) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'names must be a list of strings');
        const values: Record<string, number> = {};
        for (const n of names as string[]) {
          if (!isVpRegisterName(n)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown register ${n}`);
          values[n] = this.readRegister(p, vp, n);
        }
        return ok({ values }, names.length);
      }
      case HvCall.SetVpRegisters: {
        const p = this.selfOrChild(caller, input, 'AccessVpRegisters');
        const vp = this.vp(p, input);
        const values = input.values;
        if (values === null || typeof values !== 'object' || Array.isArray(values)) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'values must be a map');
        const entries = Object.entries(values as Record<string, unknown>);
        for (const [n, v] of entries) {
          if (!isVpRegisterName(n)) throw new Fail(HvStatus.INVALID_PARAMETER, `unknown register ${n}`);
          if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Fail(HvStatus.INVALID_PARAMETER, `register ${n} value is not a non-negative integer`);
        }
        // Validate every value before writing any, so a refused call changes nothing.
        for (const [n, v] of entries) this.checkRegister(p, n as VpRegisterName, v as number);
        // Clearing InterceptSuspend resumes the VP, so it goes last: the results are in place first.
        entries.sort((a, b) => Number(a[0] === 'InterceptSuspend') - Number(b[0] === 'InterceptSuspend'));
        for (const [n, v] of entries) this.writeRegister(p, vp, n as VpRegisterName, v as number);
        return ok(null, entries.length);
      }
      case HvCall.CreatePort: {
        this.need(caller, 'CreatePort');
        const id = int(input, 'partitionId', { min: -1 });
        const p = id === caller.id || id === PARTITION_ID_SELF ? caller : this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const portId = int(input, 'portId', { min: 1, max: 0xffffff });
        if (p.ports.has(portId)) throw new Fail(HvStatus.INVALID_PORT_ID, `port ${portId} exists in partition ${p.id}`);
        const type = int(input, 'type', { min: 1, max: 2 });
        const sint = int(input, 'sint', { min: 0, max: SINT_COUNT - 1 });
        const vpIndex = int(input, 'vpIndex', { min: 0, max: MAX_VPS_PER_PARTITION - 1 });
        const flagCount = type === PortType.Event ? int(input, 'flagCount', { min: 1, max: EVENT_FLAGS_PER_SINT }) : 0;
        if (p.id !== ROOT_PARTITION_ID && !p.vps.has(vpIndex)) throw new Fail(HvStatus.INVALID_VP_INDEX, `partition ${p.id} has no VP ${vpIndex}`);
        const port: Port = { portId, type, vpIndex, sint, flagCount, ownerSession: p.id === ROOT_PARTITION_ID ? s.id : null };
        p.ports.set(portId, port);
        return ok();
      }
      case HvCall.ConnectPort: {
        this.need(caller, 'ConnectPort');
        const id = int(input, 'partitionId', { min: -1 });
        const p = id === caller.id || id === PARTITION_ID_SELF ? caller : this.child(caller, input);
        const connectionId = int(input, 'connectionId', { min: 1, max: 0xffffff });
        const portPartitionId = int(input, 'portPartitionId', { min: 1 });
        const portId = int(input, 'portId', { min: 1 });
        const target = this.partitions.get(portPartitionId);
        if (!target || !target.ports.has(portId)) throw new Fail(HvStatus.INVALID_PORT_ID, `no port ${portId} in partition ${portPartitionId}`);
        const key = `${p.id}:${connectionId}`;
        if (this.connections.has(key)) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} of partition ${p.id} exists`);
        this.connections.set(key, { portPartitionId, portId });
        return ok();
      }
      case HvCall.PostMessage: {
        this.need(caller, 'PostMessages');
        const connectionId = int(input, 'connectionId', { min: 0, max: 0xffffffff });
        const type = int(input, 'messageType', { min: 0, max: 0xffffffff });
        const payload = bytes(input, 'payload');
        if (payload.length > MAX_MESSAGE_PAYLOAD) throw new Fail(HvStatus.INVALID_PARAMETER, `payload of ${payload.length} bytes exceeds ${MAX_MESSAGE_PAYLOAD}`);
        if (type === 0 || type >= 0x80000000) throw new Fail(HvStatus.INVALID_PARAMETER, `message type 0x${type.toString(16)} is reserved`);
        const { port, target } = this.resolveConnection(caller, connectionId, PortType.Message);
        const copy = new Uint8Array(payload);
        if (target.id === ROOT_PARTITION_ID) {
          if (port.ownerSession) this.opts.notify(port.ownerSession, { k: 'rootmsg', portId: port.portId, messageType: type, payload: copy, sender: caller.id });
          return ok();
        }
        const vp = target.vps.get(port.vpIndex);
        if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `target VP ${port.vpIndex} is gone`);
        const st = vp.synic.post(port.sint, { type, payload: copy, sender: caller.id });
        if (st !== HvStatus.SUCCESS) throw new Fail(st, 'message queue full');
        return ok();
      }
      case HvCall.SignalEvent: {
        this.need(caller, 'SignalEvents');
        const connectionId = int(input, 'connectionId', { min: 0, max: 0xffffffff });
        const flag = int(input, 'flagNumber', { min: 0, max: 0xffff });
        const { port, target } = this.resolveConnection(caller, connectionId, PortType.Event);
        if (flag >= port.flagCount) throw new Fail(HvStatus.INVALID_PARAMETER, `flag ${flag} is past the port's ${port.flagCount} flags`);
        if (target.id === ROOT_PARTITION_ID) {
          if (port.ownerSession) this.opts.notify(port.ownerSession, { k: 'rootevent', portId: port.portId, flagNumber: flag, sender: caller.id });
          return ok();
        }
        const vp = target.vps.get(port.vpIndex);
        if (!vp) throw new Fail(HvStatus.INVALID_VP_INDEX, `target VP ${port.vpIndex} is gone`);
        const st = vp.synic.signal(port.sint, flag);
        if (st !== HvStatus.SUCCESS) throw new Fail(st, 'SynIC not ready');
        return ok();
      }
      case HvCall.MapGpadl: {
        this.need(caller, 'AccessMemoryPool');
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const gpadl = int(input, 'gpadl', { min: 1, max: 0xffffffff });
        const owner = int(input, 'owner', { min: 0, max: 0xffffffff });
        const pfns = input.pfns;
        if (!Array.isArray(pfns) || pfns.length === 0) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'pfns must be a non-empty list');
        if (pfns.length > MAX_GPADL_PAGES) throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} has ${pfns.length} pages, more than ${MAX_GPADL_PAGES}`);
        if (p.gpadls.has(gpadl)) throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} exists in partition ${p.id}`);
        const seen = new Set<number>();
        for (const pfn of pfns) {
          if (typeof pfn !== 'number' || !Number.isSafeInteger(pfn) || pfn < 0) throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'a pfn is not a non-negative integer');
          if (pfn >= p.pageCount || !p.gpaMap?.[pfn]) {
            throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} covers page 0x${pfn.toString(16)} outside partition ${p.id}`);
          }
          const other = p.gpadlPageOwner.get(pfn);
          if ((other !== undefined && other !== owner) || seen.has(pfn)) {
            throw new Fail(HvStatus.INVALID_PARAMETER, `GPADL 0x${gpadl.toString(16)} page 0x${pfn.toString(16)} already serves another channel or repeats`);
          }
          seen.add(pfn);
        }
        p.gpadls.set(gpadl, { owner, pfns: pfns as number[] });
        for (const pfn of pfns as number[]) p.gpadlPageOwner.set(pfn, owner);
        return ok({ region: p.memoryRegion, pages: pfns.length }, pfns.length);
      }
      case HvCall.UnmapGpadl: {
        this.need(caller, 'AccessMemoryPool');
        const p = this.child(caller, input);
        const gpadl = int(input, 'gpadl', { min: 1, max: 0xffffffff });
        const g = p.gpadls.get(gpadl);
        if (!g) throw new Fail(HvStatus.INVALID_PARAMETER, `partition ${p.id} has no GPADL 0x${gpadl.toString(16)}`);
        p.gpadls.delete(gpadl);
        for (const pfn of g.pfns) {
          // Another GPADL of the same channel may still cover the page.
          const stillUsed = [...p.gpadls.values()].some((o) => o.owner === g.owner && o.pfns.includes(pfn));
          if (!stillUsed) p.gpadlPageOwner.delete(pfn);
        }
        return ok();
      }
      default:
        throw new Fail(HvStatus.INVALID_HYPERCALL_CODE, `unknown call code 0x${code.toString(16)}`);
    }
  }

  private resolveConnection(caller: Partition, connectionId: number, type: number): { port: Port; target: Partition } {
    const c = this.connections.get(`${caller.id}:${connectionId}`);
    if (!c) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `partition ${caller.id} has no connection ${connectionId}`);
    const target = this.partitions.get(c.portPartitionId);
    const port = target?.ports.get(c.portId);
    if (!target || !port || target.state === PartitionState.Deleted) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} leads nowhere`);
    if (target.id !== ROOT_PARTITION_ID && target.state !== PartitionState.Initialized) throw new Fail(HvStatus.INVALID_PARTITION_STATE, `target partition ${target.id} is ${target.state}`);
    if (port.type !== type) throw new Fail(HvStatus.INVALID_CONNECTION_ID, `connection ${connectionId} is not a ${type === PortType.Message ? 'message' : 'event'} connection`);
    return { port, target };
  }

  private readRegister(p: Partition, vp: VirtualProcessor, n: VpRegisterName): number {
    const sy = vp.synic;
    if (n === 'Scontrol') return sy.scontrol;
    if (n === 'Simp') return sy.simp;
    if (n === 'Siefp') return sy.siefp;
    if (n === 'Eom') return 0;
    if (n.startsWith('Sint')) return sy.sint[Number(n.slice(4))];
    if (n === 'ReferenceTime') return Math.max(0, referenceTime(p.refBaseNs));
    if (n === 'InterceptSuspend') return vp.interceptPending ? 1 : 0;
    const off = vpPageOffset(vp.index);
    if (p.vpI32 && p.vpF64) {
      if (n === 'Tpr') return Atomics.load(p.vpI32, (off + VpPage.tpr) >> 2) & 0xff;
      const t = /^Stimer(\d)(Config|Count)$/.exec(n);
      if (t) {
        const i = Number(t[1]);
        return t[2] === 'Config' ? Atomics.load(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + i) >>> 0 : p.vpF64[((off + VpPage.stimerCount) >> 3) + i];
      }
    }
    return vp.registers.get(n) ?? 0;
  }

  private checkRegister(p: Partition, n: VpRegisterName, v: number): void {
    if (n === 'Simp' || n === 'Siefp') {
      const page = Math.floor(v / 4096);
      const ok = v % 2 === 0 || ((page + 1) * 4096 <= p.memoryBytes && (p.gpaMap?.[page] ?? 0) !== 0);
      if (!ok) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} names an unmapped GPA page`);
    } else if (n.startsWith('Sint')) {
      if (v > 0x3ffff) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} has reserved bits set`);
      if ((v & (1 << 16)) === 0 && (v & 0xff) < 16) throw new Fail(HvStatus.INVALID_PARAMETER, `SINT vector ${v & 0xff} is below 16`);
    } else if (/^Stimer\dConfig$/.test(n)) {
      if (v > 0xfffff || (v & 0xe00c) !== 0) throw new Fail(HvStatus.INVALID_PARAMETER, `${n} has reserved bits set`);
      if ((v & 1) && (v & (1 << 12)) && ((v >> 4) & 0xff) < 16) throw new Fail(HvStatus.INVALID_PARAMETER, `${n}: a direct-mode timer vector must be 16 or more`);
    } else if (n === 'Tpr') {
      if (v > 0xff) throw new Fail(HvStatus.INVALID_PARAMETER, 'TPR is 0-255');
    } else if (n === 'InterceptSuspend') {
      if (v !== 0) throw new Fail(HvStatus.INVALID_PARAMETER, 'InterceptSuspend can only be cleared (0)');
    } else if (n === 'ReferenceTime') {
      throw new Fail(HvStatus.INVALID_PARAMETER, 'ReferenceTime is read-only');
    }
  }

  private writeRegister(p: Partition, vp: VirtualProcessor, n: VpRegisterName, v: number): void {
    const sy = vp.synic;
    const off = vpPageOffset(vp.index);
    if (n === 'Scontrol') {
      sy.scontrol = v & 1;
      sy.pumpAll();
    } else if (n === 'Simp' || n === 'Siefp') {
      if (n === 'Simp') sy.simp = v;
      else sy.siefp = v;
      sy.pumpAll();
    } else if (n === 'Eom') {
      sy.endOfMessage();
    } else if (n.startsWith('Sint')) {
      const sint = Number(n.slice(4));
      sy.sint[sint] = v;
      sy.pump(sint);
    } else if (n === 'InterceptSuspend') {
      if (vp.interceptPending) {
        vp.interceptPending = false;
        this.opts.scheduler?.post({ t: 'interceptDone', id: p.id, index: vp.index });
        this.opts.scheduler?.ring();
      }
    } else if (p.vpI32 && p.vpF64 && (n === 'Tpr' || n.startsWith('Stimer'))) {
      if (n === 'Tpr') {
        Atomics.store(p.vpI32, (off + VpPage.tpr) >> 2, v);
      } else {
        const t = /^Stimer(\d)(Config|Count)$/.exec(n)!;
        const i = Number(t[1]);
        if (t[2] === 'Config') Atomics.store(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + i, v);
        else p.vpF64[((off + VpPage.stimerCount) >> 3) + i] = v;
        Atomics.add(p.vpI32, (off + VpPage.timerGen) >> 2, 1);
      }
      this.opts.scheduler?.ring();
    } else {
      vp.registers.set(n, v);
      if (p.vpF64 && (n === 'Rax' || n === 'Rip')) {
        p.vpF64[(off + (n === 'Rax' ? VpPage.rax : VpPage.rip)) >> 3] = v;
        if (n === 'Rax') Atomics.store(p.vpI32!, (off + VpPage.ioValue) >> 2, v | 0);
      }
    }
  }

  // ---- scheduling, interrupts, timers, intercepts -------------------------------------------

  private createVpRegion(p: Partition): void {
    const name = `hvlab-${this.hostId}-p${p.id}-vp`;
    try {
      p.vpRegion = createRegion(name, vpRegionBytes(MAX_VPS_PER_PARTITION));
    } catch (e) {
      throw new Fail(HvStatus.INSUFFICIENT_MEMORY, (e as Error).message);
    }
    p.vpRegionName = name;
    p.vpI32 = new Int32Array(p.vpRegion);
    p.vpF64 = new Float64Array(p.vpRegion);
    const dv = new DataView(p.vpRegion);
    dv.setUint32(VpRegionHeader.magic, VP_REGION_MAGIC, true);
    dv.setUint32(VpRegionHeader.vpCount, MAX_VPS_PER_PARTITION, true);
    p.refBaseNs = process.hrtime.bigint();
    new BigInt64Array(p.vpRegion, 0, 2)[VpRegionHeader.refBaseNs >> 3] = p.refBaseNs;
    this.opts.scheduler!.post({ t: 'addPartition', id: p.id, region: p.vpRegion, suspended: p.suspended, weight: p.cpuWeight, reserve: p.cpuReserve / 100, cap: p.cpuCap / 100 });
  }

  private toScheduler(p: Partition, m: ToScheduler): void {
    if (!p.vpRegion || !this.opts.scheduler) return;
    this.opts.scheduler.post(m);
    this.opts.scheduler.ring();
  }

  /** Pends `vector` on a VP's virtual APIC and lets the scheduler wake it. False without an APIC. */
  assertVector(p: Partition, vpIndex: number, vector: number, autoEoi: boolean): boolean {
    if (!p.vpI32 || !this.opts.scheduler) return false;
    const off = vpPageOffset(vpIndex);
    if (vector >= PROBE_VECTOR_MIN) new BigInt64Array(p.vpRegion!, off + VpPage.probeAssertNs, 1)[0] = process.hrtime.bigint();
    new VirtualApicView(p.vpI32, off).assert(vector, autoEoi);
    this.opts.scheduler.ring();
    return true;
  }

  /** A SynIC interrupt: through the VP's virtual APIC when it has one, else as a notification. */
  private raiseSint(p: Partition, vpIndex: number, sint: number, extra: { slot?: Uint8Array; flag?: number }): void {
    const vp = p.vps.get(vpIndex);
    const reg = vp?.synic.sint[sint] ?? 0;
    if (vp && !sintMasked(reg) && this.assertVector(p, vpIndex, sintVector(reg), (reg & SINT_AUTO_EOI) !== 0)) return;
    this.notifyPartition(p, { k: 'sint', vp: vpIndex, sint, ...extra });
  }

  /** What the scheduler thread hands back: message-mode timer expirations and port intercepts. */
  fromScheduler(m: FromScheduler): void {
    const p = this.partitions.get(m.id);
    const vp = p?.vps.get(m.index);
    if (!p || !vp || p.state !== PartitionState.Initialized) return;
    if (m.t === 'timer') {
      const payload = new Uint8Array(TIMER_EXPIRED_PAYLOAD_BYTES);
      const dv = new DataView(payload.buffer);
      dv.setUint32(0, m.timer, true);
      dv.setBigUint64(8, BigInt(Math.floor(m.expiration)), true);
      dv.setBigUint64(16, BigInt(Math.floor(m.delivery)), true);
      vp.synic.post(m.sint, { type: HvMessageType.TimerExpired, payload, sender: 0 });
      return;
    }
    vp.interceptPending = true;
    const want = m.access === 2 ? InterceptAccess.Write : InterceptAccess.Read;
    const hit = p.intercepts.find((i) => m.port >= i.port && m.port <= i.portEnd && (i.access & want) !== 0 && this.sessions.has(i.ownerSession));
    if (hit) {
      this.opts.notify(hit.ownerSession, {
        k: 'intercept', partitionId: p.id, vpIndex: m.index, messageType: HvMessageType.X64IoPortIntercept,
        port: m.port, access: m.access, size: m.size, value: m.value, rip: vp.registers.get('Rip') ?? 0,
      });
      return;
    }
    // No one claims the port: reads float high, writes vanish, and the VP goes on.
    if (want === InterceptAccess.Read) {
      const ones = m.size >= 4 ? 0xffffffff : (1 << (m.size * 8)) - 1;
      Atomics.store(p.vpI32!, (vpPageOffset(m.index) + VpPage.ioValue) >> 2, ones | 0);
    }
    this.writeRegister(p, vp, 'InterceptSuspend', 0);
  }

  private saveVp(p: Partition, vp: VirtualProcessor): SavedVpState {
    const registers: Record<string, number> = {};
    for (const [k, v] of vp.registers) registers[k] = v;
    const off = vpPageOffset(vp.index);
    const timers: SavedVpState['timers'] = [];
    let apic: SavedVpState['apic'] = { irr: new Array(8).fill(0), isr: new Array(8).fill(0), aeoi: new Array(8).fill(0), tpr: 0 };
    let runState = 'Absent';
    if (p.vpI32 && p.vpF64) {
      apic = new VirtualApicView(p.vpI32, off).snapshot();
      for (let t = 0; t < STIMER_COUNT; t++) {
        timers.push({
          config: Atomics.load(p.vpI32, ((off + VpPage.stimerConfig) >> 2) + t) >>> 0,
          count: p.vpF64[((off + VpPage.stimerCount) >> 3) + t],
          nextExpiry: p.vpF64[((off + VpPage.stimerNext) >> 3) + t],
        });
      }
      registers.Rax = p.vpF64[(off + VpPage.rax) >> 3];
      runState = vpRunStateName(Atomics.load(p.vpI32, (off + VpPage.state) >> 2));
    }
    return {
      registers,
      apic,
      synic: { scontrol: vp.synic.scontrol, simp: vp.synic.simp, siefp: vp.synic.siefp, sint: [...vp.synic.sint] },
      timers,
      referenceTime: this.readRegister(p, vp, 'ReferenceTime'),
      runState,
      interceptPending: vp.interceptPending,
    };
  }

  private restoreVp(p: Partition, vp: VirtualProcessor, raw: unknown): void {
    const st = raw as SavedVpState;
    const nums = (a: unknown, n: number): number[] => {
      if (!Array.isArray(a) || a.length !== n || a.some((x) => typeof x !== 'number' || !Number.isFinite(x))) throw new Fail(HvStatus.INVALID_PARAMETER, `saved VP state has a malformed list (want ${n} numbers)`);
      return a as number[];
    };
    if (st === null || typeof st !== 'object' || !st.synic || !st.apic || !Array.isArray(st.timers) || typeof st.referenceTime !== 'number') {
      throw new Fail(HvStatus.INVALID_HYPERCALL_INPUT, 'saved VP state is malformed');
    }
    const sint = nums(st.synic.sint, SINT_COUNT);
    const apic = { irr: nums(st.apic.irr, 8), isr: nums(st.apic.isr, 8), aeoi: nums(st.apic.aeoi, 8), tpr: Number(st.apic.tpr) & 0xff };
    for (const [k, v] of Object.entries(st.registers ?? {})) {
      if (!isVpRegisterName(k) || typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Fail(HvStatus.INVALID_PARAMETER, `saved register ${k} is invalid`);
    }
    // Reference time continues from the saved value: time stands still while a VM is saved.
    p.refBaseNs = process.hrtime.bigint() - BigInt(Math.max(0, Math.floor(st.referenceTime))) * 100n;
    if (p.vpRegion) new BigInt64Array(p.vpRegion, 0, 2)[VpRegionHeader.refBaseNs >> 3] = p.refBaseNs;
    for (const [k, v] of Object.entries(st.registers ?? {})) this.writeRegister(p, vp, k as VpRegisterName, v);
    vp.synic.sint.splice(0, SINT_COUNT, ...sint);
    vp.synic.scontrol = Number(st.synic.scontrol) & 1;
    vp.synic.simp = Number(st.synic.simp);
    vp.synic.siefp = Number(st.synic.siefp);
    const off = vpPageOffset(vp.index);
    if (p.vpI32 && p.vpF64) {
      new VirtualApicView(p.vpI32, off).load(apic);
      st.timers.slice(0, STIMER_COUNT).forEach((t, i) => {
        Atomics.store(p.vpI32!, ((off + VpPage.stimerConfig) >> 2) + i, Number(t.config) | 0);
        p.vpF64![((off + VpPage.stimerCount) >> 3) + i] = Number(t.count) || 0;
        p.vpF64![((off + VpPage.stimerNext) >> 3) + i] = Number(t.nextExpiry) || 0;
      });
      this.opts.scheduler?.post({ t: 'timersRestored', id: p.id, index: vp.index });
      this.opts.scheduler?.ring();
    }
  }

  /** Takes a run-time sample of every scheduled partition (the server calls this every 250 ms). */
  sampleCpu(): void {
    for (const p of this.partitions.values()) if (p.vpI32) this.vpStats(p);
  }

  /** Per-VP scheduler state and accounting, with CPU % over the last second of samples. */
  vpStats(p: Partition): { cpuPercent: number; vps: VpStats[] } {
    if (!p.vpI32 || !p.vpF64) return { cpuPercent: 0, vps: [] };
    const now = Date.now();
    const idx = [...p.vps.keys()].sort((a, b) => a - b);
    const runMs = idx.map((i) => p.vpF64![(vpPageOffset(i) + VpPage.runMs) >> 3]);
    const s = p.cpuSamples;
    if (s.length === 0 || now - s[s.length - 1].at >= 100) s.push({ at: now, runMs });
    while (s.length > 2 && now - s[1].at >= 1000) s.shift();
    const base = s[0];
    const dt = now - base.at;
    const pct = (i: number): number => (dt > 0 && base.runMs[i] !== undefined ? Math.max(0, Math.round(((runMs[i] - base.runMs[i]) / dt) * 1000) / 10) : 0);
    const vps = idx.map((index, i) => {
      const off = vpPageOffset(index);
      return {
        index,
        state: vpRunStateName(Atomics.load(p.vpI32!, (off + VpPage.state) >> 2)),
        runMs: Math.round(runMs[i]),
        readyMs: Math.round(p.vpF64![(off + VpPage.readyMs) >> 3]),
        waitMs: Math.round(p.vpF64![(off + VpPage.waitMs) >> 3]),
        dispatches: p.vpF64![(off + VpPage.dispatches) >> 3],
        cpuPercent: pct(i),
      };
    });
    return { cpuPercent: Math.round(vps.reduce((a, v) => a + v.cpuPercent, 0) * 10) / 10, vps };
  }

  private destroy(p: Partition): void {
    p.state = PartitionState.Deleted;
    if (p.memoryRegion) unlinkRegion(p.memoryRegion);
    if (p.vpRegionName) {
      this.opts.scheduler?.post({ t: 'removePartition', id: p.id });
      unlinkRegion(p.vpRegionName);
      p.vpRegion = null;
      p.vpI32 = null;
      p.vpF64 = null;
    }
    p.memory = null;
    p.memoryView = null;
    for (const key of [...this.connections.keys()]) {
      const c = this.connections.get(key)!;
      if (key.startsWith(`${p.id}:`) || c.portPartitionId === p.id) this.connections.delete(key);
    }
    for (const [sid, ss] of this.sessions) if (ss.partitionId === p.id) this.sessions.delete(sid);
    this.partitions.delete(p.id);
    this.opts.log?.info({ partition: p.id }, 'partition deleted');
  }

  /** Removes every partition (unlinking its memory) — at hypervisor exit. */
  shutdown(reason: string): void {
    for (const p of [...this.partitions.values()]) {
      if (p.id === ROOT_PARTITION_ID) continue;
      this.notifyPartition(p, { k: 'bye', reason });
      this.destroy(p);
    }
    for (const s of this.sessions.values()) this.opts.notify(s.id, { k: 'bye', reason });
  }
}
