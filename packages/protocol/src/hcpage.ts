/**
 * The hypercall page: hypercalls through shared memory, as in the TLFS (input and output in pages,
 * the call a doorbell), for the calls on the hot paths of a running VM: SignalEvent, PostMessage,
 * and SetVpRegisters/GetVpRegisters (EOM and intercept completion are register writes).
 *
 * Each session of a shared-memory host gets a region of two pages from the hypervisor (its name
 * comes in the welcome): page 0 is the session's hypercall page, page 1 its event queue (events
 * the hypervisor delivers to the session's root ports). A caller rings the host's doorbell (the
 * scheduler region, named `hcBell` in the welcome: the scheduler thread serves the pages) after
 * it published a call: it adds 1 to word HC_RING_WORD, then to word HC_BELL_WORD, and wakes that.
 *
 * A call, by the session's one caller at a time (calls do not overlap on a page):
 *   1. write the input (binary, below), `code`, `inLen`, `repCount`;
 *   2. `Atomics.store(req, seq)` (seq = previous + 1), then ring the bell (see above);
 *   3. wait until `done == seq`; then `status`, `reps`, and the output are valid.
 * The hypervisor may first write `done = ~seq` (the call went to its main thread, a slower path: a
 * caller that blocks should stop blocking). A caller says how it waits in `waiting` (HcWaiting):
 * watching `done` (1: it sees the completion by itself, nothing need wake it), asleep on `done`
 * (2: the hypervisor wakes `done`), in its event loop (0: the hypervisor increments `attention`
 * and wakes it), or not at all (3, a posted call: it looks at `done` before it next uses the page,
 * and stores 0 first if it must wait for it). A caller changes `waiting` before its last look at
 * `done`, and the hypervisor stores `done` before it reads `waiting` (both sequentially
 * consistent), so either the caller sees the completion or the hypervisor sees how to wake it.
 * Each queued event also increments and wakes `attention`, so an event loop waits on that one
 * word (the shm addon's `watchWord`), or on the session's wake descriptor (`wakeBy`, below), which
 * the hypervisor signals instead once the session says it polls it.
 *
 * Inputs, little-endian, after the TLFS layouts where there is one:
 *   SignalEvent:    u32 connectionId, u16 flagNumber, u16 more, then `more` u32 flag numbers
 *                   (each below 2^16) of the same connection               8 + 4 * more bytes
 *                   `more` is the TLFS's reserved field (0: the TLFS call). Above 0 it is hvlab's
 *                   extension, at most HC_SIGNAL_MORE_MAX: the signals a caller made in one go
 *                   (the integration services' tick writes a heartbeat and a time sample) go as
 *                   one call, the flags set in order and the SINT raised once, where the second
 *                   waited for the first's completion (a wake-up of the caller, and of the
 *                   hypervisor and the guest's VP again). The hypervisor's thread sets every flag
 *                   and raises the SINT once; its main thread (a connection's first use) serves one
 *                   TLFS call per flag, in order, all of them: the first failure's status is the
 *                   call's, and `reps` is that flag's index.
 *   PostMessage:    u32 connectionId, u32 reserved (0), u32 messageType, u32 payloadSize,
 *                   payload (at most 240 bytes)                                   16 + size bytes
 *   AssertVirtualInterrupt: f64 partitionId, u32 vpIndex, u32 vector                    16 bytes
 *   Set/GetVpRegisters: f64 partitionId (-1: self), u32 vpIndex, u32 count, then per register
 *                   u32 name (index into VpRegisterNames), u32 reserved, f64 value (Set only;
 *                   a non-negative integer below 2^53)                         16 + 16 * count bytes
 *   The control calls of a VM's build and of its channels' set-up (FIELD_CALLS below:
 *   InitializePartition, SetPartitionProperty, MapGpaPages, CreateVp, InstallIntercept,
 *   CreatePort, ConnectPort, MapGpadl, UnmapGpadl): u32 present (bit i: field i is given),
 *   u32 pfnCount (MapGpadl's page list; 0 otherwise), one f64 per field of the call in its order
 *   (0 when not given; every value an integer of at most 53 bits), then pfnCount f64 pfns.
 *                                                            8 + 8 * (fields + pfnCount) bytes
 *   SetVpState:     f64 partitionId, u32 vpIndex, u32 size, the VP's saved state in msgpack (the
 *                   map the socket would carry; the hypervisor checks it with decodeSavedVpState
 *                   as it does there); one that does not fit goes over the socket   16 + size bytes
 *                   A migration's destination sets its VPs in the blackout: over the socket the
 *                   call took 1.5-15 ms (median 2.75) while both CPUs were busy, through the page
 *                   0.1-2.8 (median 1.45), 12 moves each, alternated in one cluster.
 *   GetVpState:     f64 partitionId, u32 vpIndex, i32 afterSuspension (0: none; hvlab's extension,
 *                   the number of the caller's Suspend: the call is answered once the scheduler
 *                   has taken it, as over the socket)                                    16 bytes
 * Output: GetVpRegisters: one f64 per register asked for, in order. MapGpadl: u32 pages, u32 the
 * length of the partition memory region's name, that name (UTF-8). SetPartitionProperty Suspend that
 * suspends: its number (i32). GetVpState: the VP's saved state in msgpack (the map the socket
 * would carry), `outLen` bytes; one too long for the output area fails with INSUFFICIENT_BUFFERS,
 * and the caller asks over the socket. Every other call: none.
 * Register values are f64 rather than the TLFS's 128-bit slots, because hvlab registers are
 * integers below 2^53 (as in the msgpack form); names are indices, not the TLFS's numbering.
 *
 * Everything on the page is written by one party and read by another that does not trust it:
 * `decodeHcCall` is the hypervisor's one checking decoder of a published call, and the event
 * queue's reader checks every entry (`drainHcEvents`).
 */
import { HvCall, HvStatus, VpRegisterNames, MAX_MESSAGE_PAYLOAD, type VpRegisterName } from './hypercall.js';
import { SchedRegion, SCHED_REGION_BYTES } from './vpage.js';
import { decode, encode } from './wire.js';

export const HC_PAGE_BYTES = 4096;
/** A session's region: the hypercall page and the event-queue page. */
export const HC_REGION_BYTES = 2 * HC_PAGE_BYTES;

/** Int32 word indices of the hypercall page. */
export const HcWord = {
  req: 0,
  done: 1,
  attention: 2,
  code: 3,
  inLen: 4,
  status: 5,
  reps: 6,
  outLen: 7,
  repCount: 8,
  /** 1 while the caller blocks on `done` (the completion wakes `done`), 0 while its event loop waits (it wakes `attention`). */
  waiting: 9,
  /** How the session's event loop is woken for `attention` (HcWakeBy): the session's word, read by the hypervisor. */
  wakeBy: 10,
} as const;

/**
 * Values of HcWord.wakeBy. Futex (0, a new page): the hypervisor wakes the `attention` word (the
 * session's watcher thread sleeps on it, then wakes the event loop). Descriptor (1): the session's
 * event loop polls its copy of the wake descriptor named in the welcome (`hcWake`), and the
 * hypervisor signals that instead: one wake-up where the futex costs two.
 */
export const HcWakeBy = { Futex: 0, Descriptor: 1 } as const;

/** Values of HcWord.waiting: how the caller waits for the call it published (see the module comment). */
export const HcWaiting = { EventLoop: 0, Watching: 1, Asleep: 2, Posted: 3 } as const;

export const HC_INPUT_OFFSET = 64;
export const HC_INPUT_MAX = 2016;
export const HC_OUTPUT_OFFSET = HC_INPUT_OFFSET + HC_INPUT_MAX;
export const HC_OUTPUT_MAX = HC_PAGE_BYTES - HC_OUTPUT_OFFSET;
/** Flags a SignalEvent on the page may carry beyond its first (see the module comment). */
export const HC_SIGNAL_MORE_MAX = 15;
/** Registers one Set/GetVpRegisters may carry on the page. */
export const HC_MAX_REGISTERS = Math.min((HC_INPUT_MAX - 16) / 16, HC_OUTPUT_MAX / 8);

/**
 * The calls whose input is a list of integer fields, with the fields in their order on the page
 * (`optional`: fields a caller may leave out). Their inputs are otherwise checked by the
 * hypervisor exactly as over the socket; a caller's input with any other field, or a value that is
 * not an integer of at most 53 bits, goes over the socket instead (where the hypervisor explains).
 * They came to the page because a VM start makes ~30 of them: over the socket each was a ZeroMQ
 * round trip and two msgpack codings (issue 10's "binary inputs on that page").
 */
export const FIELD_CALLS: ReadonlyMap<number, { readonly fields: readonly string[]; readonly optional: readonly string[]; readonly pfns?: true }> = new Map([
  [HvCall.InitializePartition, { fields: ['partitionId'], optional: [] }],
  [HvCall.SetPartitionProperty, { fields: ['partitionId', 'property', 'value'], optional: [] }],
  [HvCall.MapGpaPages, { fields: ['partitionId', 'gpaPage', 'pageCount', 'flags'], optional: ['flags'] }],
  [HvCall.CreateVp, { fields: ['partitionId', 'vpIndex'], optional: [] }],
  [HvCall.InstallIntercept, { fields: ['partitionId', 'type', 'access', 'port', 'portEnd'], optional: ['port', 'portEnd'] }],
  [HvCall.CreatePort, { fields: ['partitionId', 'portId', 'type', 'sint', 'vpIndex', 'flagCount'], optional: ['flagCount'] }],
  [HvCall.ConnectPort, { fields: ['partitionId', 'connectionId', 'portPartitionId', 'portId'], optional: [] }],
  [HvCall.MapGpadl, { fields: ['partitionId', 'gpadl', 'owner'], optional: [], pfns: true }],
  [HvCall.UnmapGpadl, { fields: ['partitionId', 'gpadl'], optional: [] }],
]);
/** Pfns one MapGpadl may carry on the page (a longer list goes over the socket). */
export const HC_MAX_GPADL_PFNS = Math.floor((HC_INPUT_MAX - 8 - 3 * 8) / 8);

/** The calls a session may make through its page. */
export const HC_PAGE_CALLS: readonly number[] = [HvCall.SignalEvent, HvCall.PostMessage, HvCall.SetVpRegisters, HvCall.GetVpRegisters, HvCall.AssertVirtualInterrupt, HvCall.SetVpState, HvCall.GetVpState, ...FIELD_CALLS.keys()];

/** The host doorbell region is the scheduler region: its bell, and its count of hypercall rings. */
export const HC_BELL_BYTES = SCHED_REGION_BYTES;
export const HC_BELL_WORD = SchedRegion.doorbell >> 2;
export const HC_RING_WORD = SchedRegion.hcRings >> 2;

// ---- the event queue (page 1) ----------------------------------------------------------------
// A single-producer, single-consumer ring of what the hypervisor delivers to the session without
// being asked: events for its root ports, and port intercepts of partitions it installed them for.
// The one producer is the hypervisor's scheduler thread (its main thread hands these to it); the
// one consumer is the session's client. The producer writes an entry, then publishes `tail`; the
// consumer reads up to `tail`, then publishes `head`. With the ring full the producer writes
// nothing: an event counts in `overflow` instead (the reader then treats every port as
// signalled, which VMBus tolerates: a spurious signal only makes a reader look at its ring);
// messages and intercepts wait in the producer's backlog, in order, and `backlog` asks the reader
// to ring the doorbell once it has made room.
export const HcEventWord = {
  tail: 0,
  head: 1,
  overflow: 2,
  /** 1 while the producer holds entries that did not fit: the reader rings the doorbell after draining. */
  backlog: 3,
} as const;
export const HC_EVENT_BASE = HC_PAGE_BYTES + 64;
/** An entry: a kind word and up to 11 words of fields. */
export const HC_EVENT_ENTRY_BYTES = 48;
export const HC_EVENT_SLOTS = Math.floor((HC_PAGE_BYTES - 64) / HC_EVENT_ENTRY_BYTES);
export const HcEventKind = { rootEvent: 1, intercept: 2, rootMessage: 3 } as const;
/** A root message's payload follows its entry in the entries after it, this many bytes each. */
const PAYLOAD_PER_ENTRY = HC_EVENT_ENTRY_BYTES;

export type HcEvent =
  | { kind: 'rootEvent'; portId: number; sender: number; flag: number }
  | { kind: 'rootMessage'; portId: number; sender: number; messageType: number; payload: Uint8Array }
  | { kind: 'intercept'; partitionId: number; vpIndex: number; messageType: number; port: number; access: number; size: number; value: number; rip: number };

const EV0 = HC_PAGE_BYTES >> 2;

/** Entries `e` takes: one, and a root message's payload in the ones after it. */
function entriesOf(e: HcEvent): number {
  return e.kind === 'rootMessage' ? 1 + Math.ceil(e.payload.length / PAYLOAD_PER_ENTRY) : 1;
}

const slotWord = (t: number): number => (HC_EVENT_BASE + ((t >>> 0) % HC_EVENT_SLOTS) * HC_EVENT_ENTRY_BYTES) >> 2;

/** Queues `e` for the session whose region is `i32` (the producer only). False when the ring is full. */
export function pushHcEvent(i32: Int32Array, e: HcEvent): boolean {
  const tail = Atomics.load(i32, EV0 + HcEventWord.tail);
  const head = Atomics.load(i32, EV0 + HcEventWord.head);
  const used = (tail - head) | 0;
  const need = entriesOf(e);
  if (used < 0 || used + need > HC_EVENT_SLOTS || (e.kind === 'rootMessage' && e.payload.length > MAX_MESSAGE_PAYLOAD)) {
    if (e.kind === 'rootEvent') Atomics.add(i32, EV0 + HcEventWord.overflow, 1);
    return false;
  }
  const w = slotWord(tail);
  if (e.kind === 'rootMessage') {
    Atomics.store(i32, w, HcEventKind.rootMessage);
    Atomics.store(i32, w + 1, e.portId | 0);
    Atomics.store(i32, w + 2, e.sender | 0);
    Atomics.store(i32, w + 3, e.messageType | 0);
    Atomics.store(i32, w + 4, e.payload.length);
    const bytes = new Uint8Array(i32.buffer, i32.byteOffset, i32.byteLength);
    for (let k = 1; k < need; k++) {
      const from = (k - 1) * PAYLOAD_PER_ENTRY;
      bytes.set(e.payload.subarray(from, from + PAYLOAD_PER_ENTRY), slotWord(tail + k) * 4);
    }
  } else if (e.kind === 'rootEvent') {
    Atomics.store(i32, w, HcEventKind.rootEvent);
    Atomics.store(i32, w + 1, e.portId | 0);
    Atomics.store(i32, w + 2, e.sender | 0);
    Atomics.store(i32, w + 3, e.flag | 0);
  } else {
    Atomics.store(i32, w, HcEventKind.intercept);
    Atomics.store(i32, w + 1, e.partitionId | 0);
    Atomics.store(i32, w + 2, e.vpIndex | 0);
    Atomics.store(i32, w + 3, e.messageType | 0);
    Atomics.store(i32, w + 4, e.port | 0);
    Atomics.store(i32, w + 5, e.access | 0);
    Atomics.store(i32, w + 6, e.size | 0);
    Atomics.store(i32, w + 7, e.value | 0);
    Atomics.store(i32, w + 8, e.rip % 0x100000000 | 0);
    Atomics.store(i32, w + 9, Math.floor(e.rip / 0x100000000) | 0);
  }
  Atomics.store(i32, EV0 + HcEventWord.tail, (tail + need) | 0);
  return true;
}

/**
 * Takes the published entries in order (the session's reader only), checked: `onEvent` gets each
 * well-formed one; an entry of unknown kind or with fields out of range is skipped and counted in
 * `bad`. `overflowed` is true when events were lost to a full ring since the last drain. A `tail`
 * behind `head` or more than a ring ahead (a producer that wrote nonsense) counts as an overflow
 * and resets the ring.
 */
export function drainHcEvents(i32: Int32Array, onEvent: (e: HcEvent) => void): { count: number; bad: number; overflowed: boolean } {
  const tail = Atomics.load(i32, EV0 + HcEventWord.tail);
  let head = Atomics.load(i32, EV0 + HcEventWord.head);
  let count = 0;
  let bad = 0;
  let overflowed = Atomics.exchange(i32, EV0 + HcEventWord.overflow, 0) !== 0;
  const avail = (tail - head) | 0;
  if (avail < 0 || avail > HC_EVENT_SLOTS) {
    Atomics.store(i32, EV0 + HcEventWord.head, tail);
    return { count: 0, bad: 0, overflowed: true };
  }
  const u = (x: number): number => x >>> 0;
  const bytes = new Uint8Array(i32.buffer, i32.byteOffset, i32.byteLength);
  while (head !== tail) {
    const w = slotWord(head);
    const kind = Atomics.load(i32, w);
    let e: HcEvent | null = null;
    let took = 1;
    if (kind === HcEventKind.rootMessage) {
      const size = u(Atomics.load(i32, w + 4));
      const n = Math.ceil(size / PAYLOAD_PER_ENTRY);
      if (size <= MAX_MESSAGE_PAYLOAD && n < ((tail - head) | 0)) {
        took = 1 + n;
        const payload = new Uint8Array(size);
        for (let k = 0; k < n; k++) {
          const at = slotWord(head + 1 + k) * 4;
          const len = Math.min(PAYLOAD_PER_ENTRY, size - k * PAYLOAD_PER_ENTRY);
          payload.set(bytes.subarray(at, at + len), k * PAYLOAD_PER_ENTRY);
        }
        e = { kind: 'rootMessage', portId: u(Atomics.load(i32, w + 1)), sender: u(Atomics.load(i32, w + 2)), messageType: u(Atomics.load(i32, w + 3)), payload };
      }
    } else if (kind === HcEventKind.rootEvent) {
      const flag = u(Atomics.load(i32, w + 3));
      if (flag <= 0xffff) e = { kind: 'rootEvent', portId: u(Atomics.load(i32, w + 1)), sender: u(Atomics.load(i32, w + 2)), flag };
    } else if (kind === HcEventKind.intercept) {
      const f = Array.from({ length: 9 }, (_, i) => u(Atomics.load(i32, w + 1 + i)));
      const rip = f[8] * 0x100000000 + f[7];
      if (f[3] <= 0xffff && (f[4] === 1 || f[4] === 2) && (f[5] === 1 || f[5] === 2 || f[5] === 4) && Number.isSafeInteger(rip)) {
        e = { kind: 'intercept', partitionId: f[0], vpIndex: f[1], messageType: f[2], port: f[3], access: f[4], size: f[5], value: f[6], rip };
      }
    }
    head = (head + took) | 0;
    if (e) {
      count++;
      onEvent(e);
    } else bad++;
  }
  Atomics.store(i32, EV0 + HcEventWord.head, head);
  if (Atomics.load(i32, EV0 + HcEventWord.overflow) !== 0) overflowed = Atomics.exchange(i32, EV0 + HcEventWord.overflow, 0) !== 0 || overflowed;
  return { count, bad, overflowed };
}

// ---- inputs --------------------------------------------------------------------------------

export type HcCall =
  /** `moreFlags`: hvlab's extension (see the module comment); absent for the TLFS call. */
  | { code: typeof HvCall.SignalEvent; input: { connectionId: number; flagNumber: number; moreFlags?: number[] } }
  | { code: typeof HvCall.PostMessage; input: { connectionId: number; messageType: number; payload: Uint8Array } }
  | { code: typeof HvCall.AssertVirtualInterrupt; input: { partitionId: number; vpIndex: number; vector: number } }
  | { code: typeof HvCall.SetVpRegisters; input: { partitionId: number; vpIndex: number; values: Record<string, number> } }
  | { code: typeof HvCall.GetVpRegisters; input: { partitionId: number; vpIndex: number; names: string[] } }
  /** The state as the msgpack decoder gave it: the hypervisor checks it as over the socket (decodeSavedVpState). */
  | { code: typeof HvCall.SetVpState; input: { partitionId: number; vpIndex: number; state: unknown } }
  | { code: typeof HvCall.GetVpState; input: { partitionId: number; vpIndex: number; afterSuspension?: number } }
  /** One of FIELD_CALLS: its fields as given (and MapGpadl's `pfns`). */
  | { code: FieldCallCode; input: Record<string, number | number[]> };

type FieldCallCode =
  | typeof HvCall.InitializePartition | typeof HvCall.SetPartitionProperty | typeof HvCall.MapGpaPages | typeof HvCall.CreateVp
  | typeof HvCall.InstallIntercept | typeof HvCall.CreatePort | typeof HvCall.ConnectPort | typeof HvCall.MapGpadl | typeof HvCall.UnmapGpadl;

const safeInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

/** Writes a FIELD_CALLS input; null when it cannot go through the page (see FIELD_CALLS). */
function encodeFieldInput(code: number, input: Record<string, unknown>, dv: DataView): number | null {
  const shape = FIELD_CALLS.get(code);
  if (!shape) return null;
  const known = shape.pfns ? [...shape.fields, 'pfns'] : shape.fields;
  for (const k of Object.keys(input)) if (input[k] !== undefined && !known.includes(k)) return null;
  let pfns: number[] = [];
  if (shape.pfns) {
    const p = input.pfns;
    if (!Array.isArray(p) || p.length > HC_MAX_GPADL_PFNS || !p.every(safeInt)) return null;
    pfns = p;
  }
  const len = 8 + 8 * (shape.fields.length + pfns.length);
  if (len > dv.byteLength) return null;
  let present = 0;
  for (let i = 0; i < shape.fields.length; i++) {
    const v = input[shape.fields[i]];
    if (v === undefined) {
      if (!shape.optional.includes(shape.fields[i])) return null;
      dv.setFloat64(8 + i * 8, 0, true);
      continue;
    }
    if (!safeInt(v)) return null;
    present |= 1 << i;
    dv.setFloat64(8 + i * 8, v, true);
  }
  dv.setUint32(0, present, true);
  dv.setUint32(4, pfns.length, true);
  pfns.forEach((pfn, j) => dv.setFloat64(8 + (shape.fields.length + j) * 8, pfn, true));
  return len;
}

/** Reads a FIELD_CALLS input, checked (the hypervisor then checks each value as over the socket). */
function decodeFieldInput(code: number, inLen: number, dv: DataView): HcDecoded {
  const bad = (error: string): HcDecoded => ({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT, error });
  const shape = FIELD_CALLS.get(code)!;
  const nf = shape.fields.length;
  if (inLen < 8) return bad(`a field call's input is at least 8 bytes, not ${inLen}`);
  const present = dv.getUint32(0, true);
  const pfnCount = dv.getUint32(4, true);
  if (present >>> nf !== 0) return bad('a field bit past the call\'s fields is set');
  if (!shape.pfns && pfnCount !== 0) return bad('a page list on a call that takes none');
  if (pfnCount > HC_MAX_GPADL_PFNS) return bad(`${pfnCount} pfns exceed the page's ${HC_MAX_GPADL_PFNS}`);
  if (inLen !== 8 + 8 * (nf + pfnCount)) return bad(`${nf} fields and ${pfnCount} pfns take ${8 + 8 * (nf + pfnCount)} bytes, not ${inLen}`);
  const input: Record<string, number | number[]> = {};
  for (let i = 0; i < nf; i++) {
    const name = shape.fields[i];
    const v = dv.getFloat64(8 + i * 8, true);
    if ((present & (1 << i)) === 0) {
      if (!shape.optional.includes(name)) return bad(`missing field ${name}`);
      if (!Object.is(v, 0)) return bad(`field ${name} is not given but its slot is not zero`);
      continue;
    }
    if (!Number.isSafeInteger(v)) return bad(`field ${name} is not an integer`);
    input[name] = v;
  }
  if (shape.pfns) {
    const pfns: number[] = [];
    for (let j = 0; j < pfnCount; j++) {
      const v = dv.getFloat64(8 + (nf + j) * 8, true);
      if (!Number.isSafeInteger(v)) return bad('a pfn is not an integer');
      pfns.push(v);
    }
    input.pfns = pfns;
  }
  return { ok: true, call: { code: code as FieldCallCode, input } };
}

/** `value` in msgpack into `bytes` from `at` on: its length, or null when it cannot be encoded or does not fit. */
function packInto(value: unknown, bytes: Uint8Array, at: number): number | null {
  let packed: Uint8Array;
  try {
    packed = encode(value);
  } catch {
    return null;
  }
  if (at + packed.length > bytes.length) return null;
  bytes.set(packed, at);
  return packed.length;
}

const regIndex = new Map<string, number>(VpRegisterNames.map((n, i) => [n, i]));

/**
 * Writes `input` of call `code` into `bytes` (the input area) and returns its length, or null when
 * the call cannot go through a page (another call, a field of the wrong type, too many registers,
 * a payload that does not fit): the caller then uses the socket, where the hypervisor explains.
 */
export function encodeHcInput(code: number, input: Record<string, unknown>, bytes: Uint8Array): number | null {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
  switch (code) {
    case HvCall.SignalEvent: {
      if (!u32(input.connectionId) || !u32(input.flagNumber) || input.flagNumber > 0xffff) return null;
      const more = input.moreFlags === undefined ? [] : input.moreFlags;
      if (!Array.isArray(more) || more.length > HC_SIGNAL_MORE_MAX || more.some((f) => !u32(f) || f > 0xffff) || bytes.length < 8 + 4 * more.length) return null;
      dv.setUint32(0, input.connectionId, true);
      dv.setUint16(4, input.flagNumber, true);
      dv.setUint16(6, more.length, true);
      for (let i = 0; i < more.length; i++) dv.setUint32(8 + 4 * i, more[i] as number, true);
      return 8 + 4 * more.length;
    }
    case HvCall.PostMessage: {
      const p = input.payload;
      if (!u32(input.connectionId) || !u32(input.messageType) || !(p instanceof Uint8Array) || p.length > MAX_MESSAGE_PAYLOAD) return null;
      dv.setUint32(0, input.connectionId, true);
      dv.setUint32(4, 0, true);
      dv.setUint32(8, input.messageType, true);
      dv.setUint32(12, p.length, true);
      bytes.set(p, 16);
      return 16 + p.length;
    }
    case HvCall.AssertVirtualInterrupt: {
      const pid = input.partitionId;
      if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || !u32(input.vpIndex) || !u32(input.vector)) return null;
      dv.setFloat64(0, pid, true);
      dv.setUint32(8, input.vpIndex, true);
      dv.setUint32(12, input.vector, true);
      return 16;
    }
    case HvCall.SetVpState: {
      // partitionId (f64), vpIndex (u32), the state's length (u32), then the state in msgpack (as
      // the socket would carry it). A state too long for the page goes over the socket.
      const pid = input.partitionId;
      if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || !u32(input.vpIndex) || typeof input.state !== 'object' || input.state === null) return null;
      const n = packInto(input.state, bytes, 16);
      if (n === null) return null;
      dv.setFloat64(0, pid, true);
      dv.setUint32(8, input.vpIndex, true);
      dv.setUint32(12, n, true);
      return 16 + n;
    }
    case HvCall.GetVpState: {
      const pid = input.partitionId;
      const after = input.afterSuspension;
      if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || !u32(input.vpIndex)) return null;
      // A number the hypervisor would refuse (not a non-zero int32) goes over the socket, which says why.
      if (after !== undefined && (typeof after !== 'number' || (after | 0) !== after || after === 0)) return null;
      if (Object.keys(input).some((k) => input[k] !== undefined && k !== 'partitionId' && k !== 'vpIndex' && k !== 'afterSuspension')) return null;
      if (bytes.length < 16) return null;
      dv.setFloat64(0, pid, true);
      dv.setUint32(8, input.vpIndex, true);
      dv.setInt32(12, after === undefined ? 0 : after, true);
      return 16;
    }
    case HvCall.SetVpRegisters:
    case HvCall.GetVpRegisters: {
      const pid = input.partitionId;
      if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || !u32(input.vpIndex)) return null;
      let names: string[];
      let values: number[] | null = null;
      if (code === HvCall.SetVpRegisters) {
        const v = input.values;
        if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
        const entries = Object.entries(v as Record<string, unknown>);
        if (entries.some(([, x]) => typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0)) return null;
        names = entries.map(([n]) => n);
        values = entries.map(([, x]) => x as number);
      } else {
        if (!Array.isArray(input.names) || input.names.some((n) => typeof n !== 'string')) return null;
        names = input.names as string[];
      }
      if (names.length > HC_MAX_REGISTERS || names.some((n) => !regIndex.has(n))) return null;
      dv.setFloat64(0, pid, true);
      dv.setUint32(8, input.vpIndex, true);
      dv.setUint32(12, names.length, true);
      names.forEach((n, i) => {
        dv.setUint32(16 + i * 16, regIndex.get(n)!, true);
        dv.setUint32(20 + i * 16, 0, true);
        dv.setFloat64(24 + i * 16, values ? values[i] : 0, true);
      });
      return 16 + names.length * 16;
    }
    default:
      return encodeFieldInput(code, input, dv);
  }
}

export type HcDecoded = { ok: true; call: HcCall } | { ok: false; status: number; error: string };

/**
 * The hypervisor's checking decoder of a published call: `code` and `inLen` from the page's words,
 * `bytes` the input area, copied out of the shared page by the caller (a PostMessage payload is a
 * view of it). Never throws; a call that does not decode gets INVALID_HYPERCALL_CODE
 * (a code that cannot come through a page) or INVALID_HYPERCALL_INPUT, with the reason.
 */
export function decodeHcCall(code: number, inLen: number, bytes: Uint8Array): HcDecoded {
  const bad = (error: string): HcDecoded => ({ ok: false, status: HvStatus.INVALID_HYPERCALL_INPUT, error });
  if (!HC_PAGE_CALLS.includes(code)) return { ok: false, status: HvStatus.INVALID_HYPERCALL_CODE, error: `call code 0x${(code >>> 0).toString(16)} does not go through the hypercall page` };
  if (!Number.isInteger(inLen) || inLen < 0 || inLen > HC_INPUT_MAX || inLen > bytes.length) return bad(`input length ${inLen} is outside 0..${HC_INPUT_MAX}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, inLen);
  switch (code) {
    case HvCall.SignalEvent:
    {
      if (inLen < 8) return bad(`a SignalEvent input is at least 8 bytes, not ${inLen}`);
      const more = dv.getUint16(6, true);
      if (more > HC_SIGNAL_MORE_MAX) return bad(`a SignalEvent carries at most ${HC_SIGNAL_MORE_MAX} more flags, not ${more}`);
      if (inLen !== 8 + 4 * more) return bad(`a SignalEvent input with ${more} more flags is ${8 + 4 * more} bytes, not ${inLen}`);
      const connectionId = dv.getUint32(0, true);
      const flagNumber = dv.getUint16(4, true);
      if (more === 0) return { ok: true, call: { code, input: { connectionId, flagNumber } } };
      const moreFlags: number[] = [];
      for (let i = 0; i < more; i++) {
        const f = dv.getUint32(8 + 4 * i, true);
        if (f > 0xffff) return bad(`flag number ${f} is past 65535`);
        moreFlags.push(f);
      }
      return { ok: true, call: { code, input: { connectionId, flagNumber, moreFlags } } };
    }
    case HvCall.PostMessage: {
      if (inLen < 16) return bad(`a PostMessage input is at least 16 bytes, not ${inLen}`);
      if (dv.getUint32(4, true) !== 0) return bad('reserved bits are set');
      const size = dv.getUint32(12, true);
      if (size > MAX_MESSAGE_PAYLOAD) return bad(`payload size ${size} exceeds ${MAX_MESSAGE_PAYLOAD}`);
      if (inLen !== 16 + size) return bad(`a PostMessage input of payload size ${size} is ${16 + size} bytes, not ${inLen}`);
      // A view: the caller decodes its own copy of the page (one copy per call).
      const payload = bytes.subarray(16, 16 + size);
      return { ok: true, call: { code, input: { connectionId: dv.getUint32(0, true), messageType: dv.getUint32(8, true), payload } } };
    }
    case HvCall.AssertVirtualInterrupt: {
      if (inLen !== 16) return bad(`an AssertVirtualInterrupt input is 16 bytes, not ${inLen}`);
      const partitionId = dv.getFloat64(0, true);
      if (!Number.isSafeInteger(partitionId)) return bad('the partition id is not an integer');
      return { ok: true, call: { code, input: { partitionId, vpIndex: dv.getUint32(8, true), vector: dv.getUint32(12, true) } } };
    }
    case HvCall.SetVpState: {
      if (inLen < 16) return bad(`a SetVpState input is at least 16 bytes, not ${inLen}`);
      const partitionId = dv.getFloat64(0, true);
      if (!Number.isSafeInteger(partitionId)) return bad('the partition id is not an integer');
      const size = dv.getUint32(12, true);
      if (inLen !== 16 + size) return bad(`a SetVpState input with a ${size}-byte state is ${16 + size} bytes, not ${inLen}`);
      let state: unknown;
      try {
        state = decode(bytes.subarray(16, 16 + size));
      } catch (e) {
        return bad(`the state is not msgpack: ${e instanceof Error ? e.message.slice(0, 120) : 'undecodable'}`);
      }
      return { ok: true, call: { code, input: { partitionId, vpIndex: dv.getUint32(8, true), state } } };
    }
    case HvCall.GetVpState: {
      if (inLen !== 16) return bad(`a GetVpState input is 16 bytes, not ${inLen}`);
      const partitionId = dv.getFloat64(0, true);
      if (!Number.isSafeInteger(partitionId)) return bad('the partition id is not an integer');
      const after = dv.getInt32(12, true);
      const input = { partitionId, vpIndex: dv.getUint32(8, true), ...(after !== 0 ? { afterSuspension: after } : {}) };
      return { ok: true, call: { code, input } };
    }
    case HvCall.SetVpRegisters:
    case HvCall.GetVpRegisters: {
      if (inLen < 16) return bad(`a register call's input is at least 16 bytes, not ${inLen}`);
      const partitionId = dv.getFloat64(0, true);
      if (!Number.isSafeInteger(partitionId)) return bad('the partition id is not an integer');
      const vpIndex = dv.getUint32(8, true);
      const count = dv.getUint32(12, true);
      if (count > HC_MAX_REGISTERS) return bad(`${count} registers exceed the page's ${HC_MAX_REGISTERS}`);
      if (inLen !== 16 + count * 16) return bad(`${count} registers take ${16 + count * 16} bytes, not ${inLen}`);
      const names: VpRegisterName[] = [];
      const values: Record<string, number> = {};
      for (let i = 0; i < count; i++) {
        const idx = dv.getUint32(16 + i * 16, true);
        if (idx >= VpRegisterNames.length) return bad(`register index ${idx} names no register`);
        if (dv.getUint32(20 + i * 16, true) !== 0) return bad('reserved bits are set');
        const n = VpRegisterNames[idx];
        names.push(n);
        if (code === HvCall.SetVpRegisters) {
          const v = dv.getFloat64(24 + i * 16, true);
          if (!Number.isSafeInteger(v) || v < 0) return bad(`register ${n} value is not a non-negative integer`);
          if (n in values) return bad(`register ${n} is named twice`);
          values[n] = v;
        }
      }
      if (code === HvCall.SetVpRegisters) return { ok: true, call: { code, input: { partitionId, vpIndex, values } } };
      return { ok: true, call: { code, input: { partitionId, vpIndex, names } } };
    }
  }
  if (FIELD_CALLS.has(code)) return decodeFieldInput(code, inLen, dv);
  return { ok: false, status: HvStatus.INVALID_HYPERCALL_CODE, error: 'unreachable' };
}

/**
 * Writes a call's output into the output area: GetVpRegisters's values, in the order asked; MapGpadl's region;
 * a suspending Suspend's number (SetPartitionProperty). Returns the byte length, or null when it does not fit
 * or is not what the call returns.
 */
export function encodeHcOutput(call: HcCall, output: unknown, bytes: Uint8Array): number | null {
  if (call.code === HvCall.MapGpadl) {
    const o = output as { region?: unknown; pages?: unknown } | null;
    if (typeof o?.region !== 'string' || !safeInt(o.pages) || o.pages < 0 || o.pages > 0xffffffff) return null;
    const name = new TextEncoder().encode(o.region);
    if (8 + name.length > bytes.length) return null;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    dv.setUint32(0, o.pages, true);
    dv.setUint32(4, name.length, true);
    bytes.set(name, 8);
    return 8 + name.length;
  }
  if (call.code === HvCall.SetPartitionProperty) {
    // A Suspend that suspended answers its number (an int32), every other one nothing.
    const seq = (output as { seq?: unknown } | null)?.seq;
    if (seq === undefined) return 0;
    if (typeof seq !== 'number' || (seq | 0) !== seq || bytes.length < 4) return null;
    new DataView(bytes.buffer, bytes.byteOffset, 4).setInt32(0, seq, true);
    return 4;
  }
  if (call.code === HvCall.GetVpState) {
    // The state as the socket would carry it; one that does not fit fails the call (INSUFFICIENT_BUFFERS).
    if (typeof output !== 'object' || output === null) return null;
    return packInto(output, bytes, 0);
  }
  if (call.code !== HvCall.GetVpRegisters) return 0;
  const values = (output as { values?: unknown } | null)?.values;
  if (typeof values !== 'object' || values === null) return null;
  const names = call.input.names;
  if (names.length * 8 > bytes.length) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < names.length; i++) {
    const v = (values as Record<string, unknown>)[names[i]];
    dv.setFloat64(i * 8, typeof v === 'number' ? v : 0, true);
  }
  return names.length * 8;
}

/** The caller's reading of an output area (what the hypervisor wrote, checked). */
export function decodeHcOutput(code: number, input: Record<string, unknown>, outLen: number, bytes: Uint8Array): unknown {
  if (code === HvCall.MapGpadl) {
    if (!Number.isInteger(outLen) || outLen < 8 || outLen > bytes.length) return null;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, outLen);
    const n = dv.getUint32(4, true);
    if (8 + n !== outLen) return null;
    let region: string;
    try {
      region = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n));
    } catch {
      return null;
    }
    return { region, pages: dv.getUint32(0, true) };
  }
  if (code === HvCall.SetPartitionProperty) {
    if (outLen !== 4 || bytes.length < 4) return null;
    return { seq: new DataView(bytes.buffer, bytes.byteOffset, 4).getInt32(0, true) };
  }
  if (code === HvCall.GetVpState) {
    // The hypervisor's map (its caller checks it, as it does the socket's): null when it does not decode.
    if (!Number.isInteger(outLen) || outLen < 1 || outLen > bytes.length) return null;
    try {
      // A copy: the page is shared (and the decoder may hand strings to a TextDecoder, which takes no shared views).
      const v = decode(bytes.slice(0, outLen));
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? v : null;
    } catch {
      return null;
    }
  }
  if (code !== HvCall.GetVpRegisters) return null;
  const names = input.names as string[];
  if (!Number.isInteger(outLen) || outLen !== names.length * 8 || outLen > bytes.length) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, outLen);
  const values: Record<string, number> = {};
  names.forEach((n, i) => (values[n] = dv.getFloat64(i * 8, true)));
  return { values };
}
