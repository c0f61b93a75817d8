/**
 * The answers of the VMWP control link (vmwp.ts decodeVmwpResult): the worker is less trusted than
 * the root, so each request's result is checked against the request before the root sees it. Each
 * checker takes what the real worker answers (the shapes of root/src/vmwp: main.ts, devices.ts,
 * faults.ts, migrate.ts) and refuses anything else with a VmwpDecodeError naming the field; seeded
 * fuzz over every request type shows nothing else is ever thrown and an accepted result always
 * has the shape the root relies on. The migProgress note's statistics are checked the same way.
 */
import { expect } from 'chai';
import {
  decode as decodeMsgpack, decodeMigrationStats, decodeVmwpFrame, decodeVmwpResult, emptyRam, encode, seededRandom, FAULT_ID_RE, INTEGRATION_SERVICES, MIGRATION_DEFAULTS,
  MIGRATION_ERROR_MAX_CHARS, MIG_BATCH_MAX_ENTRIES, MIG_BATCH_MAX_PAGES, VM_FAULT_KINDS, VMWP_FAULT_LIST_MAX, VMWP_KVP_LIST_MAX, VmwpDecodeError,
  type MigrationStats, type VmwpRequest,
} from '../src/index.js';

/** Statistics as a source's worker reports them (MigrationOut.stats). */
const STATS: MigrationStats = {
  vm: 'vm1', from: 'h1', to: 'h2', method: 'precopy', status: 'completed', 'total-time': 812.5, 'setup-time': 95, downtime: 11, 'downtime-acked': 12, 'expected-downtime': 9,
  ram: { ...emptyRam(64 * 1024 * 1024), transferred: 463788, remaining: 0, duplicate: 16000, normal: 103, 'normal-bytes': 421888, mbps: 4.56 },
  pass: 2, 'compression-ratio': 1.5, 'throttle-percentage': 0, 'dirty-tracking': 'kernel', stream: 'worker',
  passes: [{ pass: 1, pages: 16384, dirtyPages: 40, ms: 600, at: 700 }, { pass: 2, pages: 40, dirtyPages: 0, ms: 20, at: 720 }],
  'stop-reason': 'converged', blackout: { freeze: 3, pages: 1, start: 7, destination: 5, transit: 2, ack: 1 }, options: { ...MIGRATION_DEFAULTS }, startedAt: '2026-12-05T19:00:27.519Z',
};
/** A failed move's: no downtime, no blackout, and why. */
const FAILED: MigrationStats = (({ downtime: _d, 'downtime-acked': _a, blackout: _b, ...rest }) => ({ ...rest, status: 'failed' as const, 'error-desc': 'the destination refused the state' }))(STATS);
const DESCRIPTION = { name: 'vm1', partitionId: 3, partitionPid: 4321, booted: true, suspended: false, saved: false, runningSince: 1765000000000, restored: false, pending: null, moving: null, incoming: null };
const vmbus = { kind: 'vmbus', channel: 'heartbeat', drop: 0.5, delay: 0, delayMs: 0, duplicate: 0, reorder: 0, corrupt: 0, signalDrop: 0, signalDelay: 0, signalDelayMs: 0, seed: 7 };
const COUNTERS = { packets: { seen: 9, dropped: 3, delayed: 1, duplicated: 0, reordered: 2, corrupted: 1 }, signals: { seen: 4, dropped: 1, delayed: 0 } };
const migOut: VmwpRequest = { t: 'migOut', mig: 'mig-0123abcd', from: 'h1', to: 'h2', endpoint: 'tcp://127.0.0.1:1', auth: '0f'.repeat(32), key: { cluster: 'c', publicKey: 'p', secretKey: 's' }, config: {}, options: {} };
const CLOCK = '6c1f3c52-0c8a-4f0e-9d4e-5d1b8b7a2f10';

/**
 * Each request with what a real worker answers it (several shapes where it has several), and the
 * checked result the root gets (undefined: an answer the root does not read).
 */
const ANSWERS: Array<{ req: VmwpRequest; sent: unknown; got?: unknown }> = [
  { req: { t: 'hello', secret: 's' }, sent: { attached: true }, got: undefined },
  { req: { t: 'describe' }, sent: DESCRIPTION, got: DESCRIPTION },
  {
    req: { t: 'describe' },
    sent: { ...DESCRIPTION, partitionId: 0, partitionPid: null, booted: false, runningSince: null, pending: 'save', moving: { mig: 'mig-0123abcd', to: 'h2' }, incoming: { started: false, postcopy: true } },
    // A post-copy that has not started is none (decodeDescribedIncoming).
    got: { ...DESCRIPTION, partitionId: 0, partitionPid: null, booted: false, runningSince: null, pending: 'save', moving: { mig: 'mig-0123abcd', to: 'h2' }, incoming: { started: false, postcopy: false } },
  },
  // A worker of an older build says no pending, moving or incoming.
  { req: { t: 'describe' }, sent: { name: 'vm1', partitionId: 3, partitionPid: 9, booted: true, suspended: true, saved: false, runningSince: 5, restored: true }, got: { name: 'vm1', partitionId: 3, partitionPid: 9, booted: true, suspended: true, saved: false, runningSince: 5, restored: true, pending: null, moving: null, incoming: null } },
  { req: { t: 'status' }, sent: { booted: false, progress: null }, got: { booted: false, progress: null } },
  {
    req: { t: 'status' }, sent: { booted: true, progress: 123456, steps: 99, messagesReceived: 3, eventsReceived: 0xffffffff, intercepts: 17, kernel: { running: 1, maxRunning: 2, rtcFromCmosMs: 1765000000000.5 } },
    got: { booted: true, progress: 123456, steps: 99, messagesReceived: 3, eventsReceived: 0xffffffff, intercepts: 17, kernel: { running: 1, maxRunning: 2, rtcFromCmosMs: 1765000000000.5 } },
  },
  { req: { t: 'peek', gpa: 0x1000, len: 8 }, sent: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]), got: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) },
  { req: { t: 'suspend', value: true }, sent: true, got: undefined },
  { req: { t: 'hypercall', asChild: true, code: 0x40, input: {} }, sent: { status: 0, statusName: 'SUCCESS', reps: 0, output: { partitionId: 3 } }, got: { status: 0, output: { partitionId: 3 } } },
  { req: { t: 'hypercall', asChild: false, code: 0x40, input: {} }, sent: { status: 5, statusName: 'INVALID_PARAMETER', reps: 0 }, got: { status: 5, output: null } },
  { req: { t: 'processor', reserve: 0, maximum: 100, weight: 100 }, sent: true, got: undefined },
  { req: { t: 'save' }, sent: { bytes: 64 * 1024 * 1024, ms: 120 }, got: undefined },
  { req: { t: 'turnOff', reason: 'r' }, sent: true, got: undefined },
  {
    // devices.ts ic(): each service's status, version and its provider's statusInfo extras.
    req: { t: 'ic', enable: null, disable: null },
    sent: [
      { service: 'heartbeat', enabled: true, status: 'OK', version: '3.0', rejected: 0, sequence: 12 },
      { service: 'shutdown', enabled: true, status: 'NoContact', version: null, rejected: 2 },
      { service: 'timesync', enabled: true, status: 'OK', version: '4.0', rejected: 0, offsetMs: -3, initialOffsetMs: null, samples: 2 },
      { service: 'kvp', enabled: false, status: 'NoContact', version: null, rejected: 0 },
    ],
  },
  { req: { t: 'ic', enable: 'kvp', disable: null }, sent: [{ service: 'kvp', enabled: true, status: 'LostCommunication', version: '5.0' }] },
  { req: { t: 'kvp', op: 'set', pool: 'external', key: 'k', value: 'v' }, sent: { pool: 'external', key: 'k', value: 'v' } },
  { req: { t: 'kvp', op: 'get', pool: 'guest', key: 'k', value: null }, sent: { pool: 'guest', key: 'k', value: 'x'.repeat(2048) } },
  { req: { t: 'kvp', op: 'delete', pool: 'external', key: 'k', value: null }, sent: { pool: 'external', key: 'k', deleted: true } },
  { req: { t: 'kvp', op: 'list', pool: 'auto', key: null, value: null }, sent: [{ pool: 'auto', key: 'a', value: '1' }, { pool: 'auto', key: 'b', value: '' }] },
  { req: { t: 'kvp', op: 'list', pool: 'guest', key: null, value: null }, sent: [] },
  { req: { t: 'shutdown', timeoutS: 10 }, sent: true, got: undefined },
  { req: migOut, sent: STATS },
  { req: migOut, sent: FAILED },
  { req: { t: 'migCancel', reason: 'r' }, sent: true, got: undefined },
  { req: { t: 'migPages', data: new Uint8Array(8) }, sent: MIG_BATCH_MAX_ENTRIES },
  { req: { t: 'migPages', data: new Uint8Array(8) }, sent: 0 },
  { req: { t: 'migPremap', state: new Uint8Array(2) }, sent: false },
  { req: { t: 'migState', state: new Uint8Array(2), pages: null }, sent: { running: true, ms: 4.2, clock: CLOCK, ranAtNs: 123456789012 } },
  { req: { t: 'migState', state: new Uint8Array(2), pages: null }, sent: { running: true, ms: 3 } },
  { req: { t: 'migBooted', waitMs: 100 }, sent: true, got: undefined },
  { req: { t: 'migSwitch', state: new Uint8Array(2), missing: new Uint8Array(2) }, sent: { running: true, ms: 6.5, clock: CLOCK, ranAtNs: 5, missing: 1000 } },
  { req: { t: 'migPull', waitMs: 200 }, sent: { pfns: [1, 2, 0xffffffff], remaining: 10, requests: 4 } },
  { req: { t: 'migPull', waitMs: 0 }, sent: { pfns: [], remaining: 0, requests: 0 } },
  { req: { t: 'migDone' }, sent: true, got: undefined },
  // faults.ts setNow: what it applied, by kind.
  { req: { t: 'faultSet', id: 'f1', spec: { kind: 'bitflip', gpa: 0x2000, mask: 1 }, forMs: 0 }, sent: { id: 'f1', kind: 'bitflip', startedAt: 1765000000000, endsAt: 1765000000000, channels: [], applied: { gpa: 0x2000, mask: 1, before: 0, after: 1 }, replaced: null } },
  { req: { t: 'faultSet', id: 'f2', spec: { kind: 'vp-stall', vps: [0, 1] }, forMs: 10 }, sent: { id: 'f2', kind: 'vp-stall', startedAt: 1, endsAt: 11, channels: [], applied: { vps: [0, 1], mask: 3 }, replaced: 'f0' } },
  { req: { t: 'faultSet', id: 'f3', spec: { kind: 'clock', offsetMs: -5, skewPpm: 0 }, forMs: 10 }, sent: { id: 'f3', kind: 'clock', startedAt: 1, endsAt: 11, channels: [], applied: { offsetUs: -5000, skewPpm: 0 }, replaced: null } },
  { req: { t: 'faultSet', id: 'f4', spec: vmbus as never, forMs: 10 }, sent: { id: 'f4', kind: 'vmbus', startedAt: 1, endsAt: 11, channels: ['heartbeat', 'kvp'], applied: {}, replaced: null } },
  { req: { t: 'faultClear', id: null }, sent: { cleared: ['f1', 'nemesis.f-2'] } },
  { req: { t: 'faultClear', id: 'f9' }, sent: { cleared: [] } },
  { req: { t: 'faultList' }, sent: [{ id: 'f1', kind: 'vmbus', spec: vmbus, startedAt: 1000, endsAt: 6000, channels: ['heartbeat'], stats: COUNTERS }, { id: 'f2', kind: 'clock', spec: { kind: 'clock', offsetMs: 5, skewPpm: 0 }, startedAt: 1, endsAt: 2, channels: [], stats: {} }] },
];

/** Every request type has at least one real answer here. */
const TYPES: Array<VmwpRequest['t']> = ['hello', 'describe', 'status', 'peek', 'suspend', 'hypercall', 'processor', 'save', 'turnOff', 'ic', 'kvp', 'shutdown', 'migOut', 'migCancel', 'migPages', 'migPremap', 'migState', 'migBooted', 'migSwitch', 'migPull', 'migDone', 'faultSet', 'faultClear', 'faultList'];
const IGNORED = new Set(['hello', 'suspend', 'processor', 'save', 'turnOff', 'shutdown', 'migCancel', 'migBooted', 'migDone']);

/** A value on one line, for a failure's message (bigints too). */
const show = (x: unknown): string => JSON.stringify(x, (_k, y: unknown) => (typeof y === 'bigint' ? `${y}n` : y))?.slice(0, 200) ?? String(x);
/** Through msgpack, as the link carries it. */
const wire = (v: unknown): unknown => decodeMsgpack(encode(v));

function refused(req: VmwpRequest, v: unknown, re: RegExp, label: string): void {
  let err: unknown = null;
  try {
    decodeVmwpResult(req, wire(v));
  } catch (e) {
    err = e;
  }
  expect(err, label).to.be.instanceOf(VmwpDecodeError);
  expect((err as Error).message, label).to.match(re);
}

const whole = (n: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): boolean => typeof n === 'number' && Number.isSafeInteger(n) && n >= min && n <= max;
const finite = (n: unknown): boolean => typeof n === 'number' && Number.isFinite(n);
const keysIn = (o: object, allowed: string[]): boolean => Object.keys(o).every((k) => allowed.includes(k));
const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);

/** Whether an accepted result has the shape the root relies on (written apart from the checkers). */
function sound(req: VmwpRequest, r: unknown): boolean {
  if (IGNORED.has(req.t)) return r === undefined;
  switch (req.t) {
    case 'describe': {
      if (!isMap(r) || !keysIn(r, Object.keys(DESCRIPTION))) return false;
      const mv = r.moving as { mig?: unknown; to?: unknown } | null;
      const inc = r.incoming as { started?: unknown; postcopy?: unknown } | null;
      return typeof r.name === 'string' && r.name.length <= 64 && whole(r.partitionId, 0, 0x7fffffff) && r.partitionId !== 1 && (r.partitionPid === null || whole(r.partitionPid, 1, 0x7fffffff))
        && [r.booted, r.suspended, r.saved, r.restored].every((b) => typeof b === 'boolean') && (r.runningSince === null || whole(r.runningSince))
        && [null, 'pause', 'resume', 'save'].includes(r.pending as string) && (mv === null || (typeof mv.mig === 'string' && typeof mv.to === 'string'))
        && (inc === null || (typeof inc.started === 'boolean' && typeof inc.postcopy === 'boolean'));
    }
    case 'status': {
      if (!isMap(r)) return false;
      if (r.progress === null) return r.booted === false && Object.keys(r).length === 2;
      const k = r.kernel as Record<string, unknown>;
      return keysIn(r, ['booted', 'progress', 'steps', 'messagesReceived', 'eventsReceived', 'intercepts', 'kernel']) && typeof r.booted === 'boolean'
        && [r.progress, r.steps, r.messagesReceived, r.eventsReceived, r.intercepts].every((n) => whole(n)) && isMap(k) && whole(k.running, 0, 64) && whole(k.maxRunning, 0, 64) && finite(k.rtcFromCmosMs);
    }
    case 'peek': return r instanceof Uint8Array && r.length === req.len;
    case 'hypercall': return isMap(r) && keysIn(r, ['status', 'output']) && whole(r.status, 0, 0xffff);
    case 'ic':
      return Array.isArray(r) && r.length <= INTEGRATION_SERVICES.length && new Set(r.map((e: { service: unknown }) => e.service)).size === r.length && r.every((e: Record<string, unknown>) => isMap(e)
        && (INTEGRATION_SERVICES as readonly unknown[]).includes(e.service) && typeof e.enabled === 'boolean' && ['OK', 'NoContact', 'LostCommunication'].includes(e.status as string)
        && (e.version === null || typeof e.version === 'string') && ['rejected', 'samples'].every((k) => e[k] === undefined || whole(e[k]))
        && ['sequence', 'offsetMs', 'initialOffsetMs'].every((k) => e[k] === undefined || e[k] === null || finite(e[k])));
    case 'kvp': {
      const pair = (p: unknown): boolean => isMap(p) && ['external', 'guest', 'auto'].includes(p.pool as string) && typeof p.key === 'string' && p.key.length <= 512;
      if (req.op === 'list') return Array.isArray(r) && r.length <= VMWP_KVP_LIST_MAX && r.every((p) => pair(p) && typeof (p as { value: unknown }).value === 'string');
      if (req.op === 'delete') return pair(r) && (r as { deleted: unknown }).deleted === true;
      return pair(r) && typeof (r as { value: unknown }).value === 'string' && (r as { value: string }).value.length <= 2048;
    }
    // A fresh copy that decodes to itself.
    case 'migOut': return isMap(r) && JSON.stringify(decodeMigrationStats(r)) === JSON.stringify(r);
    case 'migPages': return whole(r, 0, MIG_BATCH_MAX_ENTRIES);
    case 'migPremap': return typeof r === 'boolean';
    case 'migState':
    case 'migSwitch':
      return isMap(r) && r.running === true && finite(r.ms) && (r.ms as number) >= 0 && (r.clock === undefined) === (r.ranAtNs === undefined)
        && (r.clock === undefined || (typeof r.clock === 'string' && finite(r.ranAtNs))) && (req.t === 'migState' ? r.missing === undefined : whole(r.missing));
    case 'migPull': return isMap(r) && Array.isArray(r.pfns) && r.pfns.length <= MIG_BATCH_MAX_PAGES && r.pfns.every((p) => whole(p, 0, 0xffffffff)) && whole(r.remaining) && whole(r.requests);
    case 'faultSet':
      return isMap(r) && FAULT_ID_RE.test(r.id as string) && VM_FAULT_KINDS.includes(r.kind as never) && whole(r.startedAt) && whole(r.endsAt) && Array.isArray(r.channels) && isMap(r.applied)
        && Object.values(r.applied).every((x) => whole(x, -Number.MAX_SAFE_INTEGER) || (Array.isArray(x) && x.every((n) => whole(n, -Number.MAX_SAFE_INTEGER)))) && (r.replaced === null || FAULT_ID_RE.test(r.replaced as string));
    case 'faultClear': return isMap(r) && keysIn(r, ['cleared']) && Array.isArray(r.cleared) && r.cleared.length <= VMWP_FAULT_LIST_MAX && r.cleared.every((x) => typeof x === 'string' && FAULT_ID_RE.test(x));
    case 'faultList': return Array.isArray(r) && r.every((f: Record<string, unknown>) => FAULT_ID_RE.test(f.id as string) && VM_FAULT_KINDS.includes(f.kind as never));
  }
  return false;
}

/** A random msgpack-able value (depth-bounded). */
function randomValue(next: () => number, depth = 0): unknown {
  const k = Math.floor(next() * (depth > 2 ? 8 : 10));
  const n = (): number => [0, 1, -1, 2, 0x7fffffff, 0xffffffff, 2 ** 53, -(2 ** 53), 1.5, 1e300, Number.NaN, Number.POSITIVE_INFINITY][Math.floor(next() * 12)]!;
  switch (k) {
    case 0: return null;
    case 1: return next() < 0.5;
    case 2: return n();
    case 3: return Math.floor(next() * 5000) - 100;
    case 4: return ['', 'f1', 'OK', 'heartbeat', 'external', 'pause', 'x'.repeat(Math.floor(next() * 5000)), CLOCK, 'mig-0123abcd', 'h2'][Math.floor(next() * 10)]!;
    case 5: return Buffer.from(Array.from({ length: Math.floor(next() * 12) }, () => Math.floor(next() * 256)));
    case 6: return undefined;
    case 7: return n() * (next() < 0.5 ? 1 : -1);
    case 8: return Array.from({ length: Math.floor(next() * 4) }, () => randomValue(next, depth + 1));
    default: return Object.fromEntries(Array.from({ length: Math.floor(next() * 4) }, (_, i) => [['status', 'id', 'pool', 'running', 'kind', `k${i}`][Math.floor(next() * 6)]!, randomValue(next, depth + 1)]));
  }
}

/** A copy of `v` with one field (at any depth) replaced by a random value, deleted, or added. */
function mutateValue(next: () => number, v: unknown): unknown {
  const copy = wire(v);
  if (copy === null || typeof copy !== 'object' || copy instanceof Uint8Array) return randomValue(next);
  let at = copy as Record<string, unknown>;
  for (;;) {
    const keys = Object.keys(at);
    if (keys.length === 0) break;
    const k = keys[Math.floor(next() * keys.length)]!;
    const child = at[k];
    if (child !== null && typeof child === 'object' && !(child instanceof Uint8Array) && next() < 0.5) {
      at = child as Record<string, unknown>;
      continue;
    }
    const op = Math.floor(next() * 3);
    if (op === 0) at[k] = randomValue(next);
    else if (op === 1) delete at[k];
    else at[`x${Math.floor(next() * 3)}`] = randomValue(next);
    return copy;
  }
  (at as Record<string, unknown>).extra = randomValue(next);
  return copy;
}

function mutateBytes(next: () => number, src: Uint8Array): Uint8Array {
  const b = Array.from(src);
  for (let k = 0, n = 1 + Math.floor(next() * 3); k < n; k++) {
    const pos = Math.floor(next() * (b.length + 1));
    const op = Math.floor(next() * 3);
    if (op === 0 && b.length > 0) b[Math.min(pos, b.length - 1)] = Math.floor(next() * 256);
    else if (op === 1) b.splice(pos, 0, Math.floor(next() * 256));
    else b.splice(pos, 1);
  }
  return Uint8Array.from(b);
}

describe('VMWP answers (decodeVmwpResult)', function () {
  this.timeout(60_000);

  it('takes what a real worker answers to every request type, as a fresh value of the promised shape', () => {
    expect(new Set(ANSWERS.map((a) => a.req.t))).to.deep.equal(new Set(TYPES));
    for (const a of ANSWERS) {
      const { req, sent } = a;
      const label = `${req.t} ${JSON.stringify(sent)?.slice(0, 80)}`;
      const v = wire(sent);
      const r = decodeVmwpResult(req, v);
      // Unless said otherwise, what was sent.
      const want = 'got' in a ? a.got : v;
      if (r instanceof Uint8Array) expect(Array.from(r), label).to.deep.equal(Array.from(want as Uint8Array));
      else expect(r, label).to.deep.equal(want);
      expect(sound(req, r), label).to.equal(true);
      if (r !== null && typeof r === 'object' && !(r instanceof Uint8Array)) expect(r, `${label}: a copy`).to.not.equal(v);
    }
  });

  it('refuses wrong shapes, naming the field', () => {
    const desc = { t: 'describe' } as const;
    const ic = { t: 'ic', enable: null, disable: null } as const;
    const heartbeat = { service: 'heartbeat', enabled: true, status: 'OK', version: '3.0' };
    const set = { t: 'kvp', op: 'set', pool: 'external', key: 'k', value: 'v' } as const;
    const list = { t: 'kvp', op: 'list', pool: 'guest', key: null, value: null } as const;
    const del = { t: 'kvp', op: 'delete', pool: 'external', key: 'k', value: null } as const;
    const state = { t: 'migState', state: new Uint8Array(1), pages: null } as const;
    const sw = { t: 'migSwitch', state: new Uint8Array(1), missing: new Uint8Array(1) } as const;
    const full = { booted: true, progress: 1, steps: 1, messagesReceived: 0, eventsReceived: 0, intercepts: 0, kernel: { running: 0, maxRunning: 0, rtcFromCmosMs: 0 } };
    const applied = { id: 'f1', kind: 'clock', startedAt: 1, endsAt: 2, channels: [], applied: { offsetUs: 5 }, replaced: null };
    const faultSet = { t: 'faultSet', id: 'f1', spec: { kind: 'clock', offsetMs: 5, skewPpm: 0 }, forMs: 1 } as const;
    const cases: Array<[VmwpRequest, unknown, RegExp]> = [
      [desc, null, /the description is not a map/], [desc, [DESCRIPTION], /the description is not a map/],
      [desc, { ...DESCRIPTION, partitionId: 'two' }, /field partitionId is not an integer from 0 to 2147483647/], [desc, { ...DESCRIPTION, partitionId: 1 }, /field partitionId is not 0/],
      [desc, { ...DESCRIPTION, partitionPid: 0 }, /field partitionPid/], [desc, { ...DESCRIPTION, name: 'n'.repeat(65) }, /field name is not a string of at most 64/],
      [desc, { ...DESCRIPTION, booted: 1 }, /field booted is not a boolean/], [desc, { ...DESCRIPTION, saved: undefined }, /field saved is not a boolean/],
      [desc, { ...DESCRIPTION, runningSince: -1 }, /field runningSince/], [desc, { ...DESCRIPTION, pending: 'stop' }, /field pending is not pause, resume or save/],
      [desc, { ...DESCRIPTION, moving: { mig: 'x', to: 'h2' } }, /field moving is not a move/], [desc, { ...DESCRIPTION, incoming: { started: 'yes' } }, /field incoming/],
      [{ t: 'status' }, 'up', /the status is not a map/], [{ t: 'status' }, { booted: true, progress: null }, /field progress is null for a booted guest/],
      [{ t: 'status' }, { ...full, progress: -1 }, /field progress is not an integer/], [{ t: 'status' }, { ...full, steps: 2 ** 53 }, /field steps/],
      [{ t: 'status' }, { ...full, kernel: null }, /field kernel is not a map/], [{ t: 'status' }, { ...full, kernel: { ...full.kernel, running: 65 } }, /field running is not an integer from 0 to 64/],
      [{ t: 'status' }, { ...full, kernel: { ...full.kernel, rtcFromCmosMs: Number.NaN } }, /field rtcFromCmosMs is not a number/], [{ t: 'status' }, { ...full, messagesReceived: 2 ** 32 }, /field messagesReceived/],
      [{ t: 'peek', gpa: 0, len: 4 }, Buffer.alloc(5), /the memory read is not 4 bytes/], [{ t: 'peek', gpa: 0, len: 4 }, [0, 0, 0, 0], /not 4 bytes/],
      [{ t: 'hypercall', asChild: true, code: 1, input: {} }, { status: 0x10000, output: null }, /field status is not an integer from 0 to 65535/],
      [{ t: 'hypercall', asChild: true, code: 1, input: {} }, 0, /the hypercall result is not a map/],
      [ic, {}, /the integration services is not a list of at most 4/], [ic, Array(5).fill(heartbeat), /at most 4/],
      [ic, [heartbeat, heartbeat], /the integration services\[1\]: field service names heartbeat twice/], [ic, [{ ...heartbeat, service: 'cmos' }], /\[0\]: field service is not an integration service/],
      [ic, [{ ...heartbeat, status: 'Fine' }], /field status is not OK, NoContact or LostCommunication/], [ic, [{ ...heartbeat, version: 3 }], /field version is not a string/],
      [ic, [{ ...heartbeat, rejected: -1 }], /field rejected/], [ic, [{ ...heartbeat, offsetMs: 'x' }], /field offsetMs is not a number/], [ic, [{ ...heartbeat, colour: 'red' }], /field "colour" is unknown/],
      [set, { pool: 'external', key: 'k' }, /field value is missing/], [set, { pool: 'system', key: 'k', value: 'v' }, /field pool is not external, guest or auto/],
      [set, { pool: 'external', key: 'k'.repeat(513), value: 'v' }, /field key is not a string of at most 512/], [set, { pool: 'external', key: 'k', value: 'v'.repeat(2049) }, /field value is not a string of at most 2048/],
      [set, [], /a KVP pair is not a map/], [del, { pool: 'external', key: 'k', deleted: 1 }, /field deleted is not true/],
      [list, { pool: 'guest', key: 'k', value: 'v' }, /the KVP pairs is not a list of at most 10000/], [list, [{ pool: 'guest', key: 7, value: 'v' }], /the KVP pairs\[0\]: field key/],
      [migOut, { ...STATS, ram: null }, /field result: migration statistics: "ram" must be a map/], [migOut, { ...STATS, status: 'lost' }, /field result: .*"status" must be one of/],
      [migOut, { ...STATS, extra: 1 }, /field result: migration statistics: unknown field "extra"/], [migOut, 'done', /field result: migration statistics must be a map/],
      [{ t: 'migPages', data: new Uint8Array(1) }, MIG_BATCH_MAX_ENTRIES + 1, /the pages written are not a count from 0 to 4096/], [{ t: 'migPages', data: new Uint8Array(1) }, '3', /pages written/],
      [{ t: 'migPremap', state: new Uint8Array(1) }, 1, /not a boolean/],
      [state, { running: false, ms: 1 }, /field running is not true/], [state, { running: true, ms: -1 }, /field ms is not a number from 0/], [state, { running: true }, /field ms/],
      [state, { running: true, ms: 1, clock: CLOCK }, /fields clock and ranAtNs come together/], [state, { running: true, ms: 1, clock: 'x', ranAtNs: 1 }, /field clock is not a clock id/],
      [state, { running: true, ms: 1, clock: CLOCK, ranAtNs: 'soon' }, /field ranAtNs is not a number/], [sw, { running: true, ms: 1 }, /field missing is not an integer/],
      [{ t: 'migPull', waitMs: 0 }, { pfns: Array(MIG_BATCH_MAX_PAGES + 1).fill(1), remaining: 0, requests: 0 }, /field pfns is not a list of at most 256/],
      [{ t: 'migPull', waitMs: 0 }, { pfns: [1, -1], remaining: 0, requests: 0 }, /field pfns\[1\]: not a page number/], [{ t: 'migPull', waitMs: 0 }, { pfns: [], requests: 0 }, /field remaining/],
      [faultSet, { ...applied, id: '../x' }, /field id is not a fault id/], [faultSet, { ...applied, kind: 'kill' }, /field kind is not a VM fault kind/],
      [faultSet, { ...applied, applied: [] }, /field applied is not a map/], [faultSet, { ...applied, applied: { offsetUs: '5' } }, /field applied: "offsetUs" is not a whole number/],
      [faultSet, { ...applied, applied: { 'a b': 1 } }, /field applied: "a b" is not a field name/], [faultSet, { ...applied, applied: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`f${'x'.repeat(i)}`, 1])) }, /more than 8 fields/],
      [faultSet, { ...applied, channels: [1] }, /field channels/], [faultSet, { ...applied, replaced: 5 }, /field replaced is not a fault id/], [faultSet, { ...applied, endsAt: 1.5 }, /field endsAt/],
      [{ t: 'faultClear', id: null }, { cleared: 'f1' }, /field cleared is not a list of at most 64/], [{ t: 'faultClear', id: null }, { cleared: ['f1', ''] }, /field cleared\[1\]: not a fault id/],
      [{ t: 'faultList' }, {}, /a fault list must be a list/],
    ];
    for (const [req, v, re] of cases) refused(req, v, re, `${req.t} ${JSON.stringify(v)?.slice(0, 100)}`);
  });

  it('a move\'s reason longer than the statistics carry is cut, not refused (a failed or in-doubt move must still say so)', () => {
    const long = `in doubt: ${'x'.repeat(3000)}`;
    const r = decodeVmwpResult(migOut, wire({ ...STATS, status: 'active', 'error-desc': long }));
    expect(r['error-desc']).to.equal(long.slice(0, MIGRATION_ERROR_MAX_CHARS));
    const n = decodeVmwpFrame(encode({ t: 'note', body: { t: 'migProgress', stats: { ...STATS, 'error-desc': long } } }));
    expect(n.t === 'note' && n.body.t === 'migProgress' && n.body.stats['error-desc']).to.equal(long.slice(0, MIGRATION_ERROR_MAX_CHARS));
  });

  it('checks a migProgress note\'s statistics as a move\'s answer, naming the field', () => {
    const note = (stats: unknown): unknown => ({ t: 'note', body: { t: 'migProgress', stats } });
    expect(decodeVmwpFrame(encode(note(STATS)))).to.deep.equal(note(STATS));
    for (const [stats, re] of [
      [{ status: 'active', ram: { total: 1 } }, /field stats: migration statistics: "ram": unknown field "total"|field stats: migration statistics/],
      [{ ...STATS, ram: { ...STATS.ram, transferred: -1 } }, /field stats: migration statistics: ram: "transferred" must be a number/],
      [{ ...STATS, status: 7 }, /field stats: .*"status"/], [{ ...STATS, passes: 'many' }, /field stats: .*"passes"/], [[STATS], /field stats is not a map/],
    ] as Array<[unknown, RegExp]>) {
      let err: unknown = null;
      try { decodeVmwpFrame(encode(note(stats))); } catch (e) { err = e; }
      expect(err, JSON.stringify(stats).slice(0, 80)).to.be.instanceOf(VmwpDecodeError);
      expect((err as Error).message).to.match(re);
    }
  });

  it('only ever throws VmwpDecodeError on mutated or random results of every request type, and what it accepts has the promised shape (seeded fuzz)', () => {
    const next = seededRandom(0x4e5b);
    const accepted = new Map<string, number>();
    const refusedCount = new Map<string, number>();
    for (let i = 0; i < 20_000; i++) {
      const { req, sent } = ANSWERS[i % ANSWERS.length]!;
      let v: unknown;
      const how = Math.floor(next() * 3);
      if (how === 0) v = mutateValue(next, sent);
      else if (how === 1) v = randomValue(next);
      else {
        try {
          v = decodeMsgpack(mutateBytes(next, encode(sent)));
        } catch {
          continue;
        }
      }
      let r: unknown;
      try {
        r = decodeVmwpResult(req, v);
      } catch (e) {
        expect(e, `${req.t}: ${String(e)}`).to.be.instanceOf(VmwpDecodeError);
        refusedCount.set(req.t, (refusedCount.get(req.t) ?? 0) + 1);
        continue;
      }
      if (!sound(req, r)) expect.fail(`${req.t} accepted ${show(v)} as ${show(r)}`);
      accepted.set(req.t, (accepted.get(req.t) ?? 0) + 1);
    }
    // Every type refused something, and took some of the mutations (those that kept its shape).
    for (const t of TYPES) {
      if (!IGNORED.has(t)) expect(refusedCount.get(t) ?? 0, `${t} refused`).to.be.greaterThan(10);
      expect(accepted.get(t) ?? 0, `${t} accepted`).to.be.greaterThan(0);
    }
  });
});
