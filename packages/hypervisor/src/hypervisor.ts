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
  type PrivilegeName, type HvServerMsg, type VpRegisterName,
} from '@hvlab/protocol';
import { createRegion, unlinkRegion, memoryMode as shmMode } from '@hvlab/shm';
import { Partition, VirtualProcessor, GPA_READ, GPA_WRITE, GPA_EXECUTE, type Port } from './partition.js';
import { SynIc } from './synic.js';

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
    return { k: 'welcome', partitionId: p.id, hostId: this.hostId, memoryMode: this.memoryMode, memoryRegion: p.memoryRegion, memoryBytes: p.memoryBytes };
  }

  session(sessionId: string): Session | undefined {
    return this.sessions.get(sessionId);
  }

  listPartitions(): Array<{ id: number; name: string; state: string; vps: number; memoryBytes: number; suspended: boolean; sessions: number }> {
    return [...this.partitions.values()].map((p) => ({
      id: p.id, name: p.name, state: p.state, vps: p.vps.size, memoryBytes: p.memoryBytes, suspended: p.suspended,
      sessions: [...this.sessions.values()].filter((s) => s.partitionId === p.id).length,
    }));
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
            if (was !== p.suspended) this.notifyPartition(p, { k: 'suspend', suspended: p.suspended });
            return ok();
          }
          case PartitionProperty.CpuReserve:
            if (v < 0 || v > 100) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `reserve ${v} is not 0-100`);
            p.cpuReserve = v;
            return ok();
          case PartitionProperty.CpuCap:
            if (v < 0 || v > 100) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `cap ${v} is not 0-100`);
            p.cpuCap = v;
            return ok();
          default:
            if (v < 1 || v > 10000) throw new Fail(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, `weight ${v} is not 1-10000`);
            p.cpuWeight = v;
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
        p.intercepts.push({ type, access, port, portEnd });
        return ok();
      }
      case HvCall.CreateVp: {
        const p = this.child(caller, input);
        this.inState(p, PartitionState.Initialized);
        const idx = int(input, 'vpIndex', { min: 0, max: MAX_VPS_PER_PARTITION - 1 });
        if (p.vps.has(idx)) throw new Fail(HvStatus.INVALID_VP_STATE, `VP ${idx} of partition ${p.id} exists`);
        const synic = new SynIc(p.memoryView, p.memoryBytes, { raise: (sint, extra) => this.notifyPartition(p, { k: 'sint', vp: idx, sint, ...extra }) });
        p.vps.set(idx, new VirtualProcessor(idx, synic));
        return ok();
      }
      case HvCall.DeleteVp: {
        const p = this.child(caller, input);
        const vp = this.vp(p, input);
        p.vps.delete(vp.index);
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
          values[n] = this.readRegister(vp, n);
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
        for (const [n, v] of entries) this.writeRegister(vp, n as VpRegisterName, v as number);
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

  private readRegister(vp: VirtualProcessor, n: VpRegisterName): number {
    const sy = vp.synic;
    if (n === 'Scontrol') return sy.scontrol;
    if (n === 'Simp') return sy.simp;
    if (n === 'Siefp') return sy.siefp;
    if (n === 'Eom') return 0;
    if (n.startsWith('Sint')) return sy.sint[Number(n.slice(4))];
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
    }
  }

  private writeRegister(vp: VirtualProcessor, n: VpRegisterName, v: number): void {
    const sy = vp.synic;
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
    } else {
      vp.registers.set(n, v);
    }
  }

  private destroy(p: Partition): void {
    p.state = PartitionState.Deleted;
    if (p.memoryRegion) unlinkRegion(p.memoryRegion);
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
