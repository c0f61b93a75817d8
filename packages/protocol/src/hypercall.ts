/**
 * Hypercall codes, HV_STATUS values, privileges and partition properties, with the TLFS numbers
 * (REFERENCE.md "Hypercalls"). The hypercall control word is carried as its fields (code, fast,
 * repCount, repStart) rather than one u64, because JavaScript numbers cannot hold bits 48-59
 * exactly; the values and their ranges are those of the TLFS.
 */

export const HvCall = {
  CreatePartition: 0x0040,
  InitializePartition: 0x0041,
  FinalizePartition: 0x0042,
  DeletePartition: 0x0043,
  GetPartitionProperty: 0x0044,
  SetPartitionProperty: 0x0045,
  GetPartitionId: 0x0046,
  MapGpaPages: 0x004b,
  UnmapGpaPages: 0x004c,
  InstallIntercept: 0x004d,
  CreateVp: 0x004e,
  DeleteVp: 0x004f,
  GetVpRegisters: 0x0050,
  SetVpRegisters: 0x0051,
  PostMessage: 0x005c,
  SignalEvent: 0x005d,
  AssertVirtualInterrupt: 0x0094,
  CreatePort: 0x0095,
  ConnectPort: 0x0096,
  StartVirtualProcessor: 0x0099,
  // hvlab extensions (0x8000 and up; not in the TLFS). They stand in for the VID's mapping of a
  // child's GPA ranges into the root, which Hyper-V's VMBus server uses for GPADLs; the hypervisor
  // checks every page, as SLAT would.
  MapGpadl: 0x8001,
  UnmapGpadl: 0x8002,
  // Whole-VP state for save and restore (Hyper-V's HvCallGetVpState/SetVpState carry the APIC
  // and XSAVE state; here: registers, APIC, SynIC and synthetic timers as one plain record).
  GetVpState: 0x8003,
  SetVpState: 0x8004,
} as const;
export type HvCallName = keyof typeof HvCall;
export type HvCallCode = (typeof HvCall)[HvCallName];

const callNames = new Map<number, HvCallName>(Object.entries(HvCall).map(([k, v]) => [v, k as HvCallName]));
export function hvCallName(code: number): string {
  return callNames.get(code) ?? `0x${code.toString(16).padStart(4, '0')}`;
}
/** Accepts a call name (case-insensitive, with or without "HvCall") or a number like 0x40. */
export function parseHvCall(text: string): HvCallCode | null {
  const t = text.trim();
  if (/^(0x[0-9a-f]+|\d+)$/i.test(t)) {
    const n = Number(t);
    return callNames.has(n) ? (n as HvCallCode) : null;
  }
  const norm = t.toLowerCase().replace(/^hvcall/, '');
  for (const [k, v] of Object.entries(HvCall)) if (k.toLowerCase() === norm) return v;
  return null;
}

export const HvStatus = {
  SUCCESS: 0x0,
  INVALID_HYPERCALL_CODE: 0x2,
  INVALID_HYPERCALL_INPUT: 0x3,
  INVALID_ALIGNMENT: 0x4,
  INVALID_PARAMETER: 0x5,
  ACCESS_DENIED: 0x6,
  INVALID_PARTITION_STATE: 0x7,
  OPERATION_DENIED: 0x8,
  UNKNOWN_PROPERTY: 0x9,
  PROPERTY_VALUE_OUT_OF_RANGE: 0xa,
  INSUFFICIENT_MEMORY: 0xb,
  INVALID_PARTITION_ID: 0xd,
  INVALID_VP_INDEX: 0xe,
  NOT_FOUND: 0x10,
  INVALID_PORT_ID: 0x11,
  INVALID_CONNECTION_ID: 0x12,
  INSUFFICIENT_BUFFERS: 0x13,
  INVALID_VP_STATE: 0x15,
  INVALID_SYNIC_STATE: 0x18,
  NO_RESOURCES: 0x1d,
} as const;
export type HvStatusName = keyof typeof HvStatus;
export type HvStatusCode = (typeof HvStatus)[HvStatusName];
const statusNames = new Map<number, HvStatusName>(Object.entries(HvStatus).map(([k, v]) => [v, k as HvStatusName]));
export function hvStatusName(code: number): string {
  return statusNames.get(code) ?? `0x${code.toString(16)}`;
}

/** Privilege bits (bit numbers in the 64-bit HV_PARTITION_PRIVILEGE_MASK). */
export const Privilege = {
  CreatePartitions: 32,
  AccessPartitionId: 33,
  AccessMemoryPool: 34,
  PostMessages: 36,
  SignalEvents: 37,
  CreatePort: 38,
  ConnectPort: 39,
  AccessStats: 40,
  CpuManagement: 44,
  AccessVpRegisters: 49,
  StartVirtualProcessor: 53,
} as const;
export type PrivilegeName = keyof typeof Privilege;

export function privilegeMask(names: readonly PrivilegeName[]): bigint {
  let m = 0n;
  for (const n of names) m |= 1n << BigInt(Privilege[n]);
  return m;
}
export function hasPrivilege(mask: bigint, p: PrivilegeName): boolean {
  return (mask >> BigInt(Privilege[p])) & 1n ? true : false;
}
export function privilegeNames(mask: bigint): PrivilegeName[] {
  return (Object.keys(Privilege) as PrivilegeName[]).filter((n) => hasPrivilege(mask, n));
}
/** The root partition holds every privilege. */
export const ROOT_PRIVILEGES = privilegeMask(Object.keys(Privilege) as PrivilegeName[]);
/** What a VMWP grants an enlightened child: VMBus needs messages and events; its SynIC MSRs
 * are written through SetVpRegisters on itself (hvlab's stand-in for WRMSR). */
export const ENLIGHTENED_CHILD_PRIVILEGES = privilegeMask(['PostMessages', 'SignalEvents', 'AccessVpRegisters']);

export const PartitionProperty = {
  PrivilegeFlags: 0x00010000,
  Suspend: 0x00020000,
  CpuReserve: 0x00020001,
  CpuCap: 0x00020002,
  CpuWeight: 0x00020003,
  // hvlab extensions (0x00090000 and up; not in the TLFS): faults the hypervisor enforces on a
  // child partition (ARCHITECTURE §9), set by its parent (the VMWP) and read like any property.
  // Each is off at 0, and setting it back to 0 undoes it completely; a deleted partition takes
  // its faults with it. Setting one to anything but 0 needs an Initialized partition whose VPs
  // the hypervisor schedules (shared memory), except the interrupt delay, which is enforced on
  // notifications too.
  /**
   * Every interrupt to the partition's VPs arrives this many µs later (0..60,000,000; 0: off):
   * SynIC message and event interrupts, AssertVirtualInterrupt, IPIs between its VPs, and its
   * direct-mode synthetic timers, whose expirations are pushed back by the delay (message-mode
   * timers arrive as SynIC messages, delayed as those). Setting it to 0 delivers what is held
   * back at once, and brings the timers back to their expirations.
   */
  FaultInterruptDelayUs: 0x00090001,
  /**
   * VPs that are not dispatched (a bit mask of VP indexes 0..52, a safe integer; 0: none): like
   * Suspend, per VP. A stalled VP that holds an LP is preempted; the others keep running.
   */
  FaultStalledVps: 0x00090002,
  /**
   * A step of the partition's reference time, in µs, SIGNED (-604,800,000,000..604,800,000,000,
   * ±7 days; 0: none). The only property that takes a negative value.
   */
  FaultClockOffsetUs: 0x00090003,
  /**
   * A skew of the partition's reference time in parts per million, SIGNED (-900,000..10,000,000;
   * 0: none): from the moment it is set, reference time runs (1 + ppm/10^6) times as fast.
   * Reference time = true reference time + offset + skew x (host time since the skew was set);
   * setting a new skew starts that product again from 0. With both clock faults back at 0 the
   * partition is on its true reference time again (it may jump back: that is the fault's nature).
   * Every change of either is a step of reference time: armed periodic synthetic timers move with
   * it (they keep their period), one-shot timers do not (their expirations are the guest's
   * deadlines: a step forward makes them early, a step back late). Saved VP state (GetVpState)
   * records the true reference time and periodic expirations in it, without either clock fault;
   * SetVpState on a partition with a clock fault puts them back into its faulted time.
   */
  FaultClockSkewPpm: 0x00090004,
} as const;
export type PartitionPropertyName = keyof typeof PartitionProperty;
const propNames = new Map<number, PartitionPropertyName>(Object.entries(PartitionProperty).map(([k, v]) => [v, k as PartitionPropertyName]));
export function partitionPropertyName(code: number): string {
  return propNames.get(code) ?? `0x${code.toString(16).padStart(8, '0')}`;
}

/** FaultInterruptDelayUs's largest value: 60 s (faults.ts FAULT_MAX_DELAY_MS, in µs). */
export const FAULT_MAX_INTERRUPT_DELAY_US = 60_000_000;
/** FaultStalledVps covers VPs 0..52: the mask is a safe integer. */
export const FAULT_STALL_MAX_VP = 52;
/** FaultClockOffsetUs's bound either way: 7 days (faults.ts CLOCK_MAX_OFFSET_MS, in µs). */
export const FAULT_MAX_CLOCK_OFFSET_US = 7 * 24 * 3600 * 1_000_000;
/** FaultClockSkewPpm's range (faults.ts CLOCK_SKEW_MIN_PPM/CLOCK_SKEW_MAX_PPM). */
export const FAULT_CLOCK_SKEW_MIN_PPM = -900_000;
export const FAULT_CLOCK_SKEW_MAX_PPM = 10_000_000;

/** The range of each property whose value is a plain integer (PrivilegeFlags is a 64-bit mask instead). */
const PROPERTY_RANGES: ReadonlyMap<number, readonly [number, number]> = new Map<number, readonly [number, number]>([
  [PartitionProperty.Suspend, [0, 1]],
  [PartitionProperty.CpuReserve, [0, 100]],
  [PartitionProperty.CpuCap, [0, 100]],
  [PartitionProperty.CpuWeight, [1, 10000]],
  [PartitionProperty.FaultInterruptDelayUs, [0, FAULT_MAX_INTERRUPT_DELAY_US]],
  [PartitionProperty.FaultStalledVps, [0, Number.MAX_SAFE_INTEGER]],
  [PartitionProperty.FaultClockOffsetUs, [-FAULT_MAX_CLOCK_OFFSET_US, FAULT_MAX_CLOCK_OFFSET_US]],
  [PartitionProperty.FaultClockSkewPpm, [FAULT_CLOCK_SKEW_MIN_PPM, FAULT_CLOCK_SKEW_MAX_PPM]],
]);

export type PartitionPropertyValue = { ok: true; value: number } | { ok: false; status: number; reason: string };

/**
 * Checks the value of SetPartitionProperty for an integer property (every one but
 * PrivilegeFlags): UNKNOWN_PROPERTY for a property that is not one, INVALID_HYPERCALL_INPUT for a
 * value that is not a safe integer (a number or a bigint), PROPERTY_VALUE_OUT_OF_RANGE outside the
 * property's range (negative values only for FaultClockOffsetUs and FaultClockSkewPpm). Never
 * throws and never calls a method of the value.
 */
export function checkPartitionPropertyValue(property: number, value: unknown): PartitionPropertyValue {
  const range = PROPERTY_RANGES.get(property);
  if (!range) return { ok: false, status: HvStatus.UNKNOWN_PROPERTY, reason: `unknown property ${typeof property === 'number' && Number.isSafeInteger(property) ? partitionPropertyName(property) : '?'}` };
  if (value === undefined || value === null) return { ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT, reason: 'missing field value' };
  const n = typeof value === 'bigint' ? (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : NaN) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) return { ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT, reason: 'field value is not an integer' };
  const [min, max] = range;
  if (n < min || n > max) return { ok: false, status: HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, reason: `${partitionPropertyName(property)}=${n} is out of range ${min}..${max}` };
  return { ok: true, value: n };
}

export const PartitionState = { Created: 'Created', Initialized: 'Initialized', Finalized: 'Finalized', Deleted: 'Deleted' } as const;
export type PartitionState = (typeof PartitionState)[keyof typeof PartitionState];

/** The root partition's id on every host; children are numbered from 2. */
export const ROOT_PARTITION_ID = 1;
/** HV_PARTITION_ID_SELF: "the caller's own partition". */
export const PARTITION_ID_SELF = -1;
export const MAX_VPS_PER_PARTITION = 64;
export const MAX_MESSAGE_PAYLOAD = 240;

/** Intercept types of HvInstallIntercept. */
export const InterceptType = { IoPort: 0, Msr: 1, Cpuid: 2, IoPortRange: 0x11 } as const;
export const InterceptAccess = { Read: 1, Write: 2 } as const;

/** Port types of HvCreatePort. */
export const PortType = { Message: 1, Event: 2 } as const;

/**
 * Registers a VP holds. General-purpose state plus the synthetic MSRs. Values are non-negative
 * integers below 2^53 (hvlab deviation: the TLFS registers are 64/128-bit).
 */
export const VpRegisterNames = [
  'Rax', 'Rbx', 'Rcx', 'Rdx', 'Rsi', 'Rdi', 'Rbp', 'Rsp', 'Rip', 'Rflags',
  'Scontrol', 'Simp', 'Siefp', 'Eom',
  'Sint0', 'Sint1', 'Sint2', 'Sint3', 'Sint4', 'Sint5', 'Sint6', 'Sint7',
  'Sint8', 'Sint9', 'Sint10', 'Sint11', 'Sint12', 'Sint13', 'Sint14', 'Sint15',
  'Stimer0Config', 'Stimer0Count', 'Stimer1Config', 'Stimer1Count', 'Stimer2Config', 'Stimer2Count', 'Stimer3Config', 'Stimer3Count',
  // The APIC's task priority; the intercept suspend (the parent clears it to resume a VP after
  // emulating an intercepted access); the partition's reference time (read-only).
  'Tpr', 'InterceptSuspend', 'ReferenceTime',
] as const;
export type VpRegisterName = (typeof VpRegisterNames)[number];
export function isVpRegisterName(s: string): s is VpRegisterName {
  return (VpRegisterNames as readonly string[]).includes(s);
}

/** Input and output shapes per call; validated field by field in the hypervisor. */
export interface HypercallInputs {
  CreatePartition: { flags?: number; memoryBytes: number; name?: string };
  InitializePartition: { partitionId: number };
  FinalizePartition: { partitionId: number };
  DeletePartition: { partitionId: number };
  GetPartitionProperty: { partitionId: number; property: number };
  SetPartitionProperty: { partitionId: number; property: number; value: number | string | bigint };
  GetPartitionId: Record<string, never>;
  MapGpaPages: { partitionId: number; gpaPage: number; pageCount: number; flags?: number };
  AssertVirtualInterrupt: { partitionId: number; vpIndex: number; vector: number };
  UnmapGpaPages: { partitionId: number; gpaPage: number; pageCount: number };
  InstallIntercept: { partitionId: number; type: number; access: number; port?: number; portEnd?: number };
  CreateVp: { partitionId: number; vpIndex: number };
  DeleteVp: { partitionId: number; vpIndex: number };
  GetVpRegisters: { partitionId: number; vpIndex: number; names: string[] };
  SetVpRegisters: { partitionId: number; vpIndex: number; values: Record<string, number> };
  PostMessage: { connectionId: number; messageType: number; payload: Uint8Array };
  SignalEvent: { connectionId: number; flagNumber: number };
  CreatePort: { partitionId: number; portId: number; type: number; vpIndex: number; sint: number; flagCount?: number };
  ConnectPort: { partitionId: number; connectionId: number; portPartitionId: number; portId: number };
  /** Grants the root a window on `pfns` of a child (one GPADL of channel `owner`). */
  MapGpadl: { partitionId: number; gpadl: number; owner: number; pfns: number[] };
  UnmapGpadl: { partitionId: number; gpadl: number };
  /** `afterSuspension`: hvlab's extension, the number of the caller's suspension of the partition; answered once the scheduler has taken it. */
  GetVpState: { partitionId: number; vpIndex: number; afterSuspension?: number };
  SetVpState: { partitionId: number; vpIndex: number; state: SavedVpState };
}

/**
 * One VP's saved state (GetVpState output, SetVpState input). Plain data, versioned with the VM's
 * saved-state tree; the reference time is the partition's, repeated per VP so a VP restores alone.
 *
 * Version 2 (`version: 2`, what GetVpState returns) is complete: it adds the SynIC messages the
 * hypervisor had queued because a slot was busy (`synic.queued`) and the intercepted access the VP
 * is stopped in (`intercept`). Version 1 (no `version` field; `interceptPending` a bare flag) is
 * what hosts before it saved; SetVpState still takes it, with no queued messages and no intercept
 * to deliver again (a VP saved in an intercept resumes as those hosts restored it).
 */
export type SavedVpState = SavedVpStateV2 | SavedVpStateV1;

export interface SavedVpStateV2 {
  version: 2;
  registers: Record<string, number>;
  apic: { irr: number[]; isr: number[]; aeoi: number[]; tpr: number };
  synic: { scontrol: number; simp: number; siefp: number; sint: number[]; queued: SavedSynicMessage[] };
  timers: Array<{ config: number; count: number; nextExpiry: number }>;
  referenceTime: number;
  /** Scheduler state at save (informational; a restored VP starts Ready or Waiting as the guest decides). */
  runState: string;
  /** The intercepted access the VP is suspended in, waiting for its parent to complete it; null when none. */
  intercept: SavedIntercept | null;
}

export interface SavedVpStateV1 {
  registers: Record<string, number>;
  apic: { irr: number[]; isr: number[]; aeoi: number[]; tpr: number };
  synic: { scontrol: number; simp: number; siefp: number; sint: number[] };
  timers: Array<{ config: number; count: number; nextExpiry: number }>;
  referenceTime: number;
  runState: string;
  interceptPending: boolean;
}

/**
 * A message queued for a SINT whose slot was busy (or masked, or whose message page was off), in
 * delivery order per SINT. `type` is the HV_MESSAGE_TYPE (hypervisor messages such as timer
 * expirations have bit 31 set), `sender` the posting partition (0: the hypervisor).
 */
export interface SavedSynicMessage {
  sint: number;
  type: number;
  payload: number[];
  sender: number;
}

/**
 * An intercepted access, as the 'intercept' notification carries it: an X64IoPortIntercept of
 * `size` bytes at `port`, a read (access 1) or a write (access 2) of `value`, at `rip`.
 */
export interface SavedIntercept {
  messageType: number;
  port: number;
  access: number;
  size: number;
  value: number;
  rip: number;
}

/**
 * Registers a saved VP state may carry: what `GetVpState` saves, the general-purpose registers and,
 * for a VP without a VP page (private memory), the TPR and the synthetic-timer MSRs.
 */
export const SAVED_VP_REGISTER_NAMES: readonly VpRegisterName[] = [
  'Rax', 'Rbx', 'Rcx', 'Rdx', 'Rsi', 'Rdi', 'Rbp', 'Rsp', 'Rip', 'Rflags', 'Tpr',
  'Stimer0Config', 'Stimer0Count', 'Stimer1Config', 'Stimer1Count', 'Stimer2Config', 'Stimer2Count', 'Stimer3Config', 'Stimer3Count',
];
/**
 * Messages the hypervisor queues per SINT of one VP (a post past it gets INSUFFICIENT_BUFFERS), so
 * also the most a saved state may carry per SINT. All VPs of a partition share a further cap (1024)
 * that the hypervisor checks when it restores a state.
 */
export const MAX_QUEUED_MESSAGES_PER_SINT = 64;
/** The message type of an intercepted I/O port access (HvMessageType.X64IoPortIntercept). */
const IO_PORT_INTERCEPT_MESSAGE = 0x80010000;
const SAVED_RUN_STATES: readonly string[] = ['Absent', 'Ready', 'Running', 'Waiting', 'Suspended'];
const SAVED_STIMERS = 4;
const SAVED_SINTS = 16;
const SAVED_STATE_VERSION = 2;

/**
 * Checks a saved VP state (the SetVpState input, or a VP of a saved `state.json`) and returns a
 * fresh copy in the version it came in, or an error sentence. Standalone: it trusts nothing about
 * where the value came from (msgpack or JSON). A map with a `version` field must be version 2;
 * one without is version 1. Every field of its version is required and no other field is allowed;
 * registers are integers 0..2^53-1 named in SAVED_VP_REGISTER_NAMES; the APIC has 8 u32 words per
 * array and a TPR 0-255; the SynIC has 16 SINTs 0-0x3ffff; timers are 4 (or none: a VP saved
 * without a VP page) with a u32 config and finite non-negative count and next expiry; the reference
 * time is an integer 0..2^53-1.
 * Version 2 only: `synic.queued` is a list of at most 64 messages per SINT (1024 in all), each a
 * SINT 0-15, a non-zero u32 type, a payload of at most 240 bytes (integers 0-255) and a sender
 * 0..2^53-1; `intercept` is null or an X64IoPortIntercept (message type 0x80010000) of size 1, 2
 * or 4 within ports 0-0xffff, access 1 (read) or 2 (write), a value that fits the size and a rip
 * 0..2^53-1. Version 1 only: `interceptPending` is a boolean.
 */
export function decodeSavedVpState(v: unknown): SavedVpState | string {
  const where = 'saved VP state';
  const obj = (x: unknown, path: string, keys: readonly string[], allRequired = true): Record<string, unknown> | string => {
    if (x === null || typeof x !== 'object' || Array.isArray(x)) return `${where}: ${path} is not a map`;
    const proto = Object.getPrototypeOf(x) as unknown;
    if (proto !== Object.prototype && proto !== null) return `${where}: ${path} is not a plain map`;
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!keys.includes(k)) return `${where}: ${path} has an unknown field ${JSON.stringify(k.slice(0, 32))}`;
    if (allRequired) for (const k of keys) if (o[k] === undefined) return `${where}: ${path} lacks field ${k}`;
    return o;
  };
  const uint = (x: unknown, max: number): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 && x <= max;
  const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;
  const words = (x: unknown, n: number, max: number, path: string): number[] | string => {
    if (!Array.isArray(x) || x.length !== n) return `${where}: ${path} is not a list of ${n} values`;
    for (let i = 0; i < n; i++) if (!uint(x[i], max)) return `${where}: ${path}[${i}] is not an integer 0-0x${max.toString(16)}`;
    return [...(x as number[])];
  };
  const common = ['registers', 'apic', 'synic', 'timers', 'referenceTime', 'runState'];
  const isV2 = v !== null && typeof v === 'object' && !Array.isArray(v) && Object.prototype.hasOwnProperty.call(v, 'version');
  // The version decides the fields, so it is read first (as a data property: no getter runs).
  if (isV2 && Object.getOwnPropertyDescriptor(v, 'version')?.value !== SAVED_STATE_VERSION) {
    return `${where}: version is not ${SAVED_STATE_VERSION} (a version-1 state has no version field)`;
  }
  const top = obj(v, 'the state', isV2 ? ['version', ...common, 'intercept'] : [...common, 'interceptPending']);
  if (typeof top === 'string') return top;
  const regs = obj(top.registers, 'registers', SAVED_VP_REGISTER_NAMES, false);
  if (typeof regs === 'string') return regs;
  const registers: Record<string, number> = {};
  for (const [k, x] of Object.entries(regs)) {
    if (!uint(x, Number.MAX_SAFE_INTEGER)) return `${where}: register ${k} is not an integer 0..2^53-1`;
    registers[k] = x;
  }
  const apicObj = obj(top.apic, 'apic', ['irr', 'isr', 'aeoi', 'tpr']);
  if (typeof apicObj === 'string') return apicObj;
  const irr = words(apicObj.irr, 8, 0xffffffff, 'apic.irr');
  if (typeof irr === 'string') return irr;
  const isr = words(apicObj.isr, 8, 0xffffffff, 'apic.isr');
  if (typeof isr === 'string') return isr;
  const aeoi = words(apicObj.aeoi, 8, 0xffffffff, 'apic.aeoi');
  if (typeof aeoi === 'string') return aeoi;
  if (!uint(apicObj.tpr, 0xff)) return `${where}: apic.tpr is not 0-255`;
  const sy = obj(top.synic, 'synic', isV2 ? ['scontrol', 'simp', 'siefp', 'sint', 'queued'] : ['scontrol', 'simp', 'siefp', 'sint']);
  if (typeof sy === 'string') return sy;
  if (!uint(sy.scontrol, 1)) return `${where}: synic.scontrol is not 0 or 1`;
  if (!uint(sy.simp, Number.MAX_SAFE_INTEGER)) return `${where}: synic.simp is not an integer 0..2^53-1`;
  if (!uint(sy.siefp, Number.MAX_SAFE_INTEGER)) return `${where}: synic.siefp is not an integer 0..2^53-1`;
  const sint = words(sy.sint, SAVED_SINTS, 0x3ffff, 'synic.sint');
  if (typeof sint === 'string') return sint;
  if (!Array.isArray(top.timers) || (top.timers.length !== SAVED_STIMERS && top.timers.length !== 0)) return `${where}: timers is not a list of ${SAVED_STIMERS} timers`;
  const timers: SavedVpState['timers'] = [];
  for (let i = 0; i < top.timers.length; i++) {
    const t = obj(top.timers[i], `timers[${i}]`, ['config', 'count', 'nextExpiry']);
    if (typeof t === 'string') return t;
    if (!uint(t.config, 0xffffffff)) return `${where}: timers[${i}].config is not a u32`;
    if (!finite(t.count)) return `${where}: timers[${i}].count is not a finite number >= 0`;
    if (!finite(t.nextExpiry)) return `${where}: timers[${i}].nextExpiry is not a finite number >= 0`;
    timers.push({ config: t.config, count: t.count, nextExpiry: t.nextExpiry });
  }
  if (!uint(top.referenceTime, Number.MAX_SAFE_INTEGER)) return `${where}: referenceTime is not an integer 0..2^53-1`;
  if (typeof top.runState !== 'string' || !SAVED_RUN_STATES.includes(top.runState)) return `${where}: runState is not one of ${SAVED_RUN_STATES.join(', ')}`;
  const apic = { irr, isr, aeoi, tpr: apicObj.tpr };
  const base = { registers, apic, timers, referenceTime: top.referenceTime, runState: top.runState };
  const synic = { scontrol: sy.scontrol, simp: sy.simp, siefp: sy.siefp, sint };
  if (!isV2) {
    if (typeof top.interceptPending !== 'boolean') return `${where}: interceptPending is not a boolean`;
    return { ...base, synic, interceptPending: top.interceptPending };
  }
  const queued = decodeQueued(sy.queued, where, obj, uint);
  if (typeof queued === 'string') return queued;
  let intercept: SavedIntercept | null = null;
  if (top.intercept !== null) {
    const i = obj(top.intercept, 'intercept', ['messageType', 'port', 'access', 'size', 'value', 'rip']);
    if (typeof i === 'string') return i;
    if (i.messageType !== IO_PORT_INTERCEPT_MESSAGE) return `${where}: intercept.messageType is not 0x${IO_PORT_INTERCEPT_MESSAGE.toString(16)} (an I/O port intercept)`;
    if (i.size !== 1 && i.size !== 2 && i.size !== 4) return `${where}: intercept.size is not 1, 2 or 4`;
    if (!uint(i.port, 0x10000 - i.size)) return `${where}: intercept.port is not 0-0xffff with the access inside the port space`;
    if (i.access !== 1 && i.access !== 2) return `${where}: intercept.access is neither 1 (read) nor 2 (write)`;
    if (!uint(i.value, i.size === 4 ? 0xffffffff : (1 << (i.size * 8)) - 1)) return `${where}: intercept.value does not fit ${i.size} byte${i.size === 1 ? '' : 's'}`;
    if (!uint(i.rip, Number.MAX_SAFE_INTEGER)) return `${where}: intercept.rip is not an integer 0..2^53-1`;
    intercept = { messageType: i.messageType, port: i.port, access: i.access, size: i.size, value: i.value, rip: i.rip };
  }
  return { version: SAVED_STATE_VERSION, ...base, synic: { ...synic, queued }, intercept };
}

/** `synic.queued` of a version-2 saved state (see decodeSavedVpState). */
function decodeQueued(
  x: unknown, where: string,
  obj: (x: unknown, path: string, keys: readonly string[]) => Record<string, unknown> | string,
  uint: (x: unknown, max: number) => x is number,
): SavedSynicMessage[] | string {
  const most = MAX_QUEUED_MESSAGES_PER_SINT * SAVED_SINTS;
  if (!Array.isArray(x) || x.length > most) return `${where}: synic.queued is not a list of at most ${most} messages`;
  const perSint = new Array<number>(SAVED_SINTS).fill(0);
  const out: SavedSynicMessage[] = [];
  for (let i = 0; i < x.length; i++) {
    const path = `synic.queued[${i}]`;
    const m = obj(x[i], path, ['sint', 'type', 'payload', 'sender']);
    if (typeof m === 'string') return m;
    if (!uint(m.sint, SAVED_SINTS - 1)) return `${where}: ${path}.sint is not 0-${SAVED_SINTS - 1}`;
    if (++perSint[m.sint] > MAX_QUEUED_MESSAGES_PER_SINT) return `${where}: synic.queued holds more than ${MAX_QUEUED_MESSAGES_PER_SINT} messages for SINT ${m.sint}`;
    if (!uint(m.type, 0xffffffff) || m.type === 0) return `${where}: ${path}.type is not a non-zero u32`;
    if (!uint(m.sender, Number.MAX_SAFE_INTEGER)) return `${where}: ${path}.sender is not an integer 0..2^53-1`;
    const p = m.payload;
    if (!Array.isArray(p) || p.length > MAX_MESSAGE_PAYLOAD) return `${where}: ${path}.payload is not a list of at most ${MAX_MESSAGE_PAYLOAD} bytes`;
    for (let b = 0; b < p.length; b++) if (!uint(p[b], 0xff)) return `${where}: ${path}.payload[${b}] is not a byte 0-255`;
    out.push({ sint: m.sint, type: m.type, payload: [...(p as number[])], sender: m.sender });
  }
  return out;
}

/** Output of MapGpadl: the memory region to map (null in private-memory mode) and the page count. */
export interface MapGpadlOutput { region: string | null; pages: number }
/** Pages one GPADL may cover (a 16 MiB window). */
export const MAX_GPADL_PAGES = 4096;
