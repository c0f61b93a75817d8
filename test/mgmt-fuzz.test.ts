/**
 * The management API cannot be knocked over. Against a real host, from a ZeroMQ DEALER as any
 * local process could: thousands of random byte strings, random msgpack values and mutations of
 * valid requests (wrong types, maps whose toString/valueOf are not functions, huge and non-finite
 * numbers, missing and extra fields, deep nesting, long strings, oversized frames, wrong versions,
 * several frames in one message). Every frame must get exactly one answer, the root must stay up,
 * `hvlab vm list` must still work, and the root's memory must come back near where it was after
 * the warm-up. Operations that would stop the host or start VMs (shutdown, vmStart, vmNew) are
 * only ever sent with arguments the decoder refuses.
 *
 * A second part runs the MgmtServer in this process with a fake handler, for what a real host
 * cannot show on demand: Busy beyond the in-flight bound, and handler failures becoming answers.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decode, decodeMgmtRequest, encode, MGMT_API_VERSION, MGMT_FRAME_MAX_BYTES, MGMT_MAX_IN_FLIGHT, MGMT_OPS,
  type HostMemory, type MgmtOp, type VmInfo,
} from '@hvlab/protocol';
import { dealer, pidAlive, zmq } from '@hvlab/runtime';
import { MgmtServer, type MgmtHandler } from '../packages/root/src/mgmt.js';
import { MgmtFailure } from '../packages/root/src/config.js';
import { TestHost } from './harness.js';

// ---- frame generation (deterministic: a failure names its seed and frame index) -----------------

/** xorshift32: a small seeded generator, so a failing run can be replayed exactly. */
class Rng {
  constructor(private s: number) {
    if (this.s === 0) this.s = 1;
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  int(n: number): number {
    return this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** Names no VM has, and the one VM the host has (only read-only operations may name it). */
const KEEP = 'keep';
const NOSUCH = ['nosuch', 'x', 'a.b_c-9', 'Z'];

/** Valid requests of operations that read, or that act on a VM that does not exist. */
const SAFE_TEMPLATES: Array<[MgmtOp, Record<string, unknown>]> = [
  ['ping', {}],
  ['hostInfo', {}],
  ['hostMemory', {}],
  ['vmList', {}],
  ['ps', {}],
  ['vmStatus', { name: KEEP }],
  ['vmIc', { name: KEEP }],
  ['vmKvp', { name: KEEP, op: 'list' }],
  ['vmKvp', { name: KEEP, op: 'set', key: 'k', value: 'v', pool: 'external' }],
  ['vmPeek', { name: KEEP, gpa: 0, len: 16 }],
  ['vmStop', { name: 'nosuch', timeoutS: 5, force: true }],
  ['vmTurnOff', { name: 'nosuch' }],
  ['vmPause', { name: 'nosuch' }],
  ['vmResume', { name: 'nosuch' }],
  ['vmSave', { name: 'nosuch' }],
  ['vmDelete', { name: 'nosuch' }],
  ['vmSetProcessor', { name: 'nosuch', reserve: '10', maximum: '50', weight: '5' }],
  ['vmIc', { name: 'nosuch', enable: 'kvp' }],
  ['debugHypercall', { call: 'GetPartitionProperty', as: 'nosuch', input: { partitionId: 1, property: 16 } }],
];
/** Valid requests that must never be sent valid: they are only sent mutated into something refused. */
const GUARDED_TEMPLATES: Array<[MgmtOp, Record<string, unknown>]> = [
  ['shutdown', {}],
  ['vmStart', { name: KEEP }],
  ['vmNew', { name: 'fz', memory: '16M', vps: '1', workload: 'idle', rtcOffset: '0' }],
  ['debugHypercall', { call: 'GetPartitionProperty', as: null, input: { partitionId: 0, property: 16 } }],
];

/**
 * Whether a frame may be sent: anything the decoder refuses may; of what it accepts, only
 * read-only operations, and actions on VMs that do not exist. (The decoder is only the safety
 * filter here; what the test asserts is computed independently.)
 */
function safeToSend(parts: Buffer[]): boolean {
  if (parts.length !== 1) return true;
  const d = decodeMgmtRequest(parts[0]);
  if (!d.ok) return true;
  const op = d.request.op;
  const args = d.request.args as Record<string, unknown>;
  if (['ping', 'hostInfo', 'hostMemory', 'vmList', 'ps', 'vmStatus', 'vmPeek', 'vmKvp'].includes(op)) return true;
  if (op === 'vmIc') return args.name !== KEEP || (args.enable === undefined && args.disable === undefined);
  if (['vmStop', 'vmTurnOff', 'vmPause', 'vmResume', 'vmSave', 'vmDelete', 'vmSetProcessor'].includes(op)) return args.name !== KEEP && typeof args.name === 'string';
  // debugHypercall through a VM that does not exist stops at the lookup; as the root it would run.
  if (op === 'debugHypercall') return typeof args.as === 'string' && args.as !== KEEP;
  return false; // shutdown, vmStart, vmNew
}

/** msgpack nested `depth` lists deep around nil, built by hand (the encoder would recurse). Past 64 levels the codec refuses a frame before decoding it (wire.ts), so what is refused does not depend on the stack. */
const deepList = (depth: number): Buffer => Buffer.concat([Buffer.alloc(depth, 0x91), Buffer.of(0xc0)]);

/** A request map whose `args` value is raw msgpack bytes. */
function withRawArgs(id: number, op: string, rawArgs: Buffer): Buffer {
  return Buffer.concat([Buffer.of(0x84), encode('v'), encode(MGMT_API_VERSION), encode('id'), encode(id), encode('op'), encode(op), encode('args'), rawArgs]);
}

function weirdValue(r: Rng, samples: unknown[]): unknown {
  switch (r.int(34)) {
    case 0: return null;
    case 1: return undefined;
    case 2: return r.chance(0.5);
    case 3: return 0;
    case 4: return -0;
    case 5: return -1;
    case 6: return 1.5;
    case 7: return NaN;
    case 8: return r.pick([Infinity, -Infinity]);
    case 9: return 1e308;
    case 10: return r.pick([2 ** 53, -(2 ** 53), 2 ** 53 - 1]);
    case 11: return r.pick([2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n]);
    case 12: return '';
    case 13: return r.pick(['5', '1e2', ' 5', '0x10', '-0', '007', 'NaN', 'Infinity', '16M', 'kvp', 'list', 'counter']);
    case 14: return 'x'.repeat(r.pick([64, 65, 4096, 4097, 70_000]));
    case 15: return [5];
    case 16: return [];
    case 17: return {};
    case 18: return { toString: 1, valueOf: 1 };
    case 19: return { toString: 'x', valueOf: { a: 1 }, constructor: null };
    case 20: return JSON.parse('{"__proto__":{"polluted":1},"hasOwnProperty":1}') as unknown;
    case 21: return new Uint8Array(r.int(64));
    case 22: return new Date(r.int(2 ** 31) * 1000);
    case 23: {
      let v: unknown = 1;
      for (let i = 0; i < 60; i++) v = r.chance(0.5) ? [v] : { d: v };
      return v;
    }
    case 24: return r.pick(NOSUCH);
    case 25: return KEEP;
    case 26: return r.pick(MGMT_OPS);
    case 27: return r.int(2 ** 31) - 2 ** 30;
    case 28: return r.u32() / 7;
    case 29: return String.fromCharCode(...r.bytes(r.int(16)));
    case 30: return '\u0000\ud800\uffff';
    case 31: return Object.fromEntries(Array.from({ length: r.int(300) }, (_, i) => [`k${i}`, i]));
    case 32: return Array.from({ length: r.int(2000) }, (_, i) => i);
    default: return r.pick(samples);
  }
}

const ARG_NAMES = ['name', 'memory', 'memroy', 'vps', 'workload', 'rtcOffset', 'timeoutS', 'force', 'reserve', 'maximum', 'weight', 'gpa', 'len', 'enable', 'disable', 'op', 'pool', 'key', 'value', 'call', 'as', 'input', 'toString', '__proto__', ''];

/** One mutation of a valid request: 1 to 3 changes to its fields or arguments. */
function mutate(r: Rng, op: MgmtOp, args: Record<string, unknown>, id: number, samples: unknown[]): Buffer[] {
  const m: Record<string, unknown> = { v: MGMT_API_VERSION, id, op, args: { ...args } };
  const a = m.args as Record<string, unknown>;
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    switch (r.int(12)) {
      case 0: a[r.pick(Object.keys(a).length > 0 && r.chance(0.7) ? Object.keys(a) : ARG_NAMES)] = weirdValue(r, samples); break;
      case 1: a[r.pick(Object.keys(a).length > 0 ? Object.keys(a) : ARG_NAMES)] = weirdValue(r, samples); break;
      case 2: delete a[r.pick(Object.keys(a).length > 0 ? Object.keys(a) : ['name'])]; break;
      case 3: a[r.pick(ARG_NAMES)] = weirdValue(r, samples); break;
      case 4: m.v = r.pick([0, 2, '1', 1.5, null, -1, 2 ** 40, NaN, { toString: 1 }]); break;
      case 5: m.id = r.pick([0, -1, 1.5, '7', 2 ** 53, 2 ** 53 - 1, null, NaN, Infinity, { toString: 1, valueOf: 1 }, [id], 7n]); break;
      case 6: m.op = r.chance(0.5) ? r.pick(MGMT_OPS) : weirdValue(r, samples); break;
      case 7: delete m[r.pick(['v', 'id', 'op', 'args'])]; break;
      case 8: m[r.pick(['extra', 'args2', 'ID', 'toString'])] = weirdValue(r, samples); break;
      case 9: m.args = weirdValue(r, samples); break;
      case 10: {
        // Deep nesting where the arguments go: deeper than msgpackr's recursion can follow, or not.
        return [withRawArgs(id, op, deepList(r.pick([20, 200, 1000, 5000, 100_000])))];
      }
      default: a.name = r.pick([...NOSUCH, 'bad/name', 'a'.repeat(64), '', '.x']); break;
    }
  }
  return [encode(m)];
}

interface FuzzFrame {
  parts: Buffer[];
  /** The id its answer must carry: the request's own when readable, else 0. */
  expectId: number;
}

/**
 * The id an answer to `parts` must carry, derived here from msgpack alone, not from the decoder;
 * and whether the frame is a msgpack map at all (only a map can be a request).
 */
function inspect(parts: Buffer[]): { expectId: number; map: boolean } {
  const none = { expectId: 0, map: false };
  if (parts.length !== 1) return none;
  const b = parts[0];
  if (b.length === 0 || b.length > MGMT_FRAME_MAX_BYTES) return none;
  let v: unknown;
  try {
    v = decode(b);
  } catch {
    return none;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) return none;
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) return none;
  const id = Object.prototype.hasOwnProperty.call(v, 'id') ? (v as { id: unknown }).id : undefined;
  return { expectId: typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 ? id : 0, map: true };
}

/**
 * `count` frames: about a fifth random bytes, a fifth random msgpack values (bare, or as the
 * arguments of a random operation), a few messages of several frames, frames over the size limit
 * and single-byte or deeply nested frames, some valid safe requests, and mutations of valid
 * requests for the rest (about half). Request ids start at `firstId` and never repeat.
 */
function makeFrames(seed: number, count: number, firstId: number): FuzzFrame[] {
  const r = new Rng(seed);
  const anything = fc.anything({ withBigInt: true, withTypedArray: true, withDate: true, withObjectString: true, withNullPrototype: true, withSparseArray: true, maxDepth: 4 });
  const samples = fc.sample(anything, { seed, numRuns: 500 });
  const out: FuzzFrame[] = [];
  let id = firstId;
  let skipped = 0;
  while (out.length < count) {
    const k = r.int(100);
    let parts: Buffer[];
    if (k < 18) {
      const len = r.chance(0.9) ? r.int(64) : r.int(4096);
      const b = r.bytes(len);
      // Some start as a map or a request would, so the decoder gets past its first byte.
      if (len > 0 && r.chance(0.3)) b[0] = r.pick([0x80 + r.int(16), 0xde, 0xdf, 0x84]);
      parts = [b];
    } else if (k < 27) {
      try {
        parts = [encode(r.pick(samples))];
      } catch {
        continue; // a value msgpack cannot carry (e.g. a symbol key) is not a frame
      }
    } else if (k < 36) {
      try {
        parts = [encode({ v: MGMT_API_VERSION, id: id++, op: r.pick(MGMT_OPS), args: r.pick(samples) })];
      } catch {
        continue;
      }
    } else if (k < 37) {
      parts = r.chance(0.5) ? [encode({ v: 1, id: id++, op: 'ping', args: {} }), Buffer.of(0xc0)] : [Buffer.alloc(0), Buffer.alloc(0), r.bytes(8)];
    } else if (k < 38 && r.chance(0.3)) {
      // Just over the frame limit: answered BadRequest without being decoded.
      parts = [encode({ v: 1, id: id++, op: 'vmStatus', args: { name: 'x'.repeat(MGMT_FRAME_MAX_BYTES + r.int(1000)) } })];
    } else if (k < 40) {
      parts = [r.pick([Buffer.of(0xc0), Buffer.alloc(0), deepList(200_000), encode({ v: 1, id: { toString: 1, valueOf: 1 }, op: 'ping' })])];
    } else if (k < 48) {
      // Valid requests that are safe to run, so the mix keeps reaching the handlers.
      const [op, args] = r.pick(SAFE_TEMPLATES);
      parts = [encode({ v: MGMT_API_VERSION, id: id++, op, args: 'name' in args && args.name !== KEEP ? { ...args, name: r.pick(NOSUCH) } : args })];
    } else {
      const [op, args] = r.chance(0.85) ? r.pick(SAFE_TEMPLATES) : r.pick(GUARDED_TEMPLATES);
      try {
        parts = mutate(r, op, args, id++, samples);
      } catch {
        continue;
      }
    }
    const { expectId, map } = inspect(parts);
    if (map && !safeToSend(parts)) {
      skipped++;
      continue;
    }
    out.push({ parts, expectId });
  }
  expect(skipped, 'too many generated frames were valid requests of guarded operations').to.be.below(count / 10);
  return out;
}

// ---- talking to the socket -----------------------------------------------------------------------

interface Answer {
  id: number;
  ok: boolean;
  code: string | null;
  message: string | null;
}

/** Checks an answer frame the way any client must: it is `{id, ok, result | error:{code, message}}`. */
function readAnswer(frames: Buffer[]): Answer {
  expect(frames, 'an answer is one frame').to.have.length(1);
  const v = decode<Record<string, unknown>>(frames[0]);
  expect(v).to.be.an('object');
  expect(v.id).to.be.a('number');
  expect(v.ok).to.be.a('boolean');
  if (v.ok) return { id: v.id as number, ok: true, code: null, message: null };
  const e = v.error as { code: unknown; message: unknown };
  expect(e.code).to.be.a('string');
  expect(e.message).to.be.a('string');
  return { id: v.id as number, ok: false, code: e.code as string, message: e.message as string };
}

/** How long to wait for one answer before calling the frame unanswered (a liveness guard, not a speed claim). */
const ANSWER_WAIT_MS = 20000;
const WINDOW = 64;

/**
 * Sends every frame with at most WINDOW unanswered, and returns every answer. Fails naming the
 * frame if an answer does not come.
 */
async function exchange(sock: zmq.Dealer, frames: FuzzFrame[]): Promise<Answer[]> {
  const answers: Answer[] = [];
  let next = 0;
  while (next < frames.length || answers.length < next) {
    while (next < frames.length && next - answers.length < WINDOW) {
      await sock.send(frames[next].parts);
      next++;
    }
    let got: Buffer[];
    try {
      got = await sock.receive();
    } catch (e) {
      throw new Error(`${next - answers.length} of the frames up to #${next - 1} got no answer within ${ANSWER_WAIT_MS / 1000} s (${(e as Error).message})`);
    }
    answers.push(readAnswer(got));
  }
  return answers;
}

/** Asserts nothing more arrives: every frame was answered once, not twice. */
async function expectSilence(sock: zmq.Dealer, ms: number): Promise<void> {
  sock.receiveTimeout = ms;
  try {
    const extra = await sock.receive().then((f) => f, () => null);
    expect(extra === null ? null : readAnswer(extra), 'an answer beyond one per frame').to.equal(null);
  } finally {
    sock.receiveTimeout = ANSWER_WAIT_MS;
  }
}

function multiset(xs: number[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
  return m;
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** What the root holds after a full garbage collection, asked through the API (hostMemory): V8 heap used plus memory outside it. */
async function heldBytes(sock: zmq.Dealer): Promise<number> {
  const id = 99_000_001;
  await sock.send(encode({ v: 1, id, op: 'hostMemory', args: { collect: true } }));
  const frames = await sock.receive();
  const v = decode<{ id: number; ok: boolean; result?: HostMemory }>(frames[0]);
  expect(v, 'the hostMemory answer').to.deep.include({ id, ok: true });
  const m = v.result!;
  expect(m.collectedMs, 'a full collection ran in the root').to.be.a('number');
  return m.heapUsed + m.external;
}

/** Every code the host may give these frames; Busy cannot occur with WINDOW below the bound, Internal never should. */
const EXPECTED_CODES = ['BadRequest', 'VersionMismatch', 'InvalidArgument', 'NotFound', 'InvalidState'];

describe('the management API under fuzzing (a real host)', function () {
  this.timeout(180000);
  const h = new TestHost();
  let sock: zmq.Dealer | null = null;
  let rootPid = 0;

  before(async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', KEEP, '--memory', '16M', '--workload', 'idle');
    rootPid = (JSON.parse(readFileSync(h.paths.hostFile, 'utf8')) as { pids: { root: number } }).pids.root;
    sock = dealer();
    sock.receiveTimeout = ANSWER_WAIT_MS;
    sock.connect(h.paths.mgmtEndpoint);
  });
  after(async () => {
    sock?.close();
    await h.destroy();
    const left = h.leftovers();
    expect(left.pids, 'processes left behind').to.deep.equal([]);
    expect(left.shm, '/dev/shm files left behind').to.deep.equal([]);
  });

  it('answers the single byte 0xc0 and a request whose id is a map with toString, and the root lives', async () => {
    const s = sock!;
    const frames: FuzzFrame[] = [
      { parts: [Buffer.of(0xc0)], expectId: 0 },
      { parts: [encode({ v: 1, id: { toString: 1, valueOf: 1 }, op: 'ping', args: {} })], expectId: 0 },
      { parts: [encode({ v: 1, id: 11, op: 'vmSetProcessor', args: { name: KEEP, weight: [5] } })], expectId: 11 },
      { parts: [encode({ v: 1, id: 12, op: 'vmKvp', args: { name: KEEP, op: 'set', key: { a: 1 }, value: 'v' } })], expectId: 12 },
      { parts: [encode({ v: 1, id: 13, op: 'shutdown', args: { now: true } })], expectId: 13 },
      { parts: [encode({ v: 1, id: 14, op: 'ping', args: {} })], expectId: 14 },
    ];
    const answers = await exchange(s, frames);
    const byId = new Map(answers.filter((a) => a.id !== 0).map((a) => [a.id, a]));
    const anonymous = answers.filter((a) => a.id === 0);
    expect(anonymous.map((a) => a.code)).to.deep.equal(['BadRequest', 'BadRequest']);
    expect(anonymous.map((a) => a.message).sort()).to.deep.equal(['a management request must be a map, not null', 'request field id is a map, not a request number (a whole number, 0 or more)']);
    expect(byId.get(11)).to.deep.include({ ok: false, code: 'InvalidArgument' });
    expect(byId.get(11)!.message).to.match(/"weight" is a list of 1 values/);
    expect(byId.get(12)).to.deep.include({ ok: false, code: 'InvalidArgument' });
    expect(byId.get(12)!.message).to.match(/"key" is a map/);
    expect(byId.get(13)).to.deep.include({ ok: false, code: 'InvalidArgument', message: 'shutdown has no argument "now" (it takes no arguments)' });
    expect(byId.get(14)).to.deep.include({ ok: true });
    expect(pidAlive(rootPid), `root pid ${rootPid} is alive`).to.equal(true);
    const vms = await h.json<VmInfo[]>('vm', 'list');
    expect(vms.find((v) => v.name === KEEP)?.processor.weight, 'weight untouched by the refused [5]').to.equal(100);
  });

  it('answers each of 12,000 random and mutated frames exactly once, stays up, and its memory comes back', async () => {
    const s = sock!;
    const SEED = 0x4d474d54; // "MGMT"
    // Warm-up: the same mix, so code paths are compiled and buffers have grown before the baseline.
    const warm = makeFrames(SEED ^ 0x5a5a, 2000, 1_000_000);
    expect((await exchange(s, warm)).length).to.equal(warm.length);
    const baseline = await heldBytes(s);

    const frames = makeFrames(SEED, 12_000, 10_000_000);
    const answers = await exchange(s, frames);
    await expectSilence(s, 500);

    // Exactly one answer per frame: the answers' ids are the frames' expected ids, as multisets.
    expect(answers.length).to.equal(frames.length);
    const want = multiset(frames.map((f) => f.expectId));
    const got = multiset(answers.map((a) => a.id));
    const diff = [...new Set([...want.keys(), ...got.keys()])].filter((k) => want.get(k) !== got.get(k)).slice(0, 10);
    expect(diff.map((k) => `id ${k}: sent ${want.get(k) ?? 0}, answered ${got.get(k) ?? 0}`)).to.deep.equal([]);

    const codes = new Map<string, number>();
    for (const a of answers) codes.set(a.code ?? 'ok', (codes.get(a.code ?? 'ok') ?? 0) + 1);
    const unexpected = answers.filter((a) => !a.ok && !EXPECTED_CODES.includes(a.code!)).slice(0, 5);
    expect(unexpected, `answers by code: ${JSON.stringify(Object.fromEntries(codes))}`).to.deep.equal([]);
    // The mix reaches every stage: refused frames, refused arguments, handlers that ran.
    for (const c of ['ok', 'BadRequest', 'VersionMismatch', 'InvalidArgument', 'NotFound', 'InvalidState']) expect(codes.get(c) ?? 0, c).to.be.above(0);

    expect(pidAlive(rootPid), `root pid ${rootPid} is alive`).to.equal(true);
    const vms = await h.json<VmInfo[]>('vm', 'list');
    expect(vms.map((v) => [v.name, v.state])).to.deep.equal([[KEEP, 'Off']]);

    // Memory: what the root still holds after a full garbage collection (its V8 heap and the
    // memory outside it, which holds Buffers) is within 16 MiB of what it held after the warm-up.
    // The frames carry more than 64 MiB, so a server that kept every frame, or a quarter of
    // them, would exceed it (one that kept every frame: 25.6 -> 109.0 MiB here). Its RSS is no
    // measure of this: under load the collector lags, and the RSS grew 10 MiB here and 106 MiB
    // in a loaded CI run, with 3 MiB more held.
    const sentBytes = frames.reduce((n, f) => n + f.parts.reduce((m, p) => m + p.length, 0), 0);
    expect(sentBytes / 2 ** 20, 'MiB sent').to.be.above(64);
    const after = await heldBytes(s);
    const grewMiB = (after - baseline) / 2 ** 20;
    expect(grewMiB, `root holds ${(baseline / 2 ** 20).toFixed(1)} MiB after warm-up, ${(after / 2 ** 20).toFixed(1)} MiB after the fuzz (RSS ${(rssBytes(rootPid) / 2 ** 20).toFixed(1)} MiB)`).to.be.below(16);
  });
});

// ---- the server alone -----------------------------------------------------------------------------

describe('the management server (in this process, with a fake handler)', function () {
  this.timeout(60000);
  let dir = '';
  let server: MgmtServer | null = null;
  let serving: Promise<void> | null = null;
  let client: zmq.Dealer | null = null;
  const errors: Error[] = [];
  const calls: Array<[string, unknown]> = [];
  /** Requests for 'vmStatus' wait here until released. */
  let release: () => void = () => undefined;
  let gate = new Promise<void>((r) => (release = r));

  const handler: MgmtHandler = async (op, args) => {
    calls.push([op, args]);
    switch (op) {
      case 'ping': return { pong: true };
      case 'vmStatus':
        await gate;
        return { name: args.name };
      case 'vmStart': throw new MgmtFailure('InvalidState', `cannot start VM "${args.name}": it is Running`);
      case 'vmPause': throw new TypeError('boom');
      case 'vmResume': throw null;
      case 'vmList': return [2n ** 70n];
      default: return null;
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-mgmt-test-'));
    server = new MgmtServer(handler, (e) => errors.push(e));
    await server.bind(`ipc://${join(dir, 'mgmt')}`, `ipc://${join(dir, 'events')}`);
    serving = server.serve();
    client = dealer();
    client.receiveTimeout = ANSWER_WAIT_MS;
    client.connect(`ipc://${join(dir, 'mgmt')}`);
  });
  after(() => {
    release();
    client?.close();
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const ask = async (op: string, args: unknown, id: number): Promise<Answer> => {
    await client!.send(encode({ v: 1, id, op, args }));
    return readAnswer(await client!.receive());
  };

  it('turns what a handler throws into answers: a MgmtFailure keeps its code, anything else is Internal', async () => {
    expect(await ask('vmStart', { name: 'a' }, 1)).to.deep.equal({ id: 1, ok: false, code: 'InvalidState', message: 'cannot start VM "a": it is Running' });
    expect(await ask('vmPause', { name: 'a' }, 2)).to.deep.equal({ id: 2, ok: false, code: 'Internal', message: '"vmPause" failed inside the host: boom' });
    expect(await ask('vmResume', { name: 'a' }, 3)).to.deep.include({ id: 3, ok: false, code: 'Internal' });
    expect(await ask('vmList', {}, 4)).to.deep.include({ id: 4, ok: false, code: 'Internal' });
    expect(await ask('ping', {}, 5)).to.deep.equal({ id: 5, ok: true, code: null, message: null });
    expect(errors.map((e) => e.message)).to.deep.equal(['boom', '"vmResume" threw null (not an Error)', errors[2]?.message]);
    expect(errors[2].message).to.match(/^the answer to "vmList" could not be encoded/);
  });

  it('never calls the handler for a request it refuses', async () => {
    const before = calls.length;
    expect(await ask('vmSetProcessor', { name: 'a', weight: [5] }, 6)).to.deep.include({ id: 6, code: 'InvalidArgument' });
    expect(await ask('vmKvp', { name: 'a', op: 'set', key: { a: 1 }, value: 'v' }, 7)).to.deep.include({ id: 7, code: 'InvalidArgument' });
    expect(await ask('vmFly', {}, 8)).to.deep.include({ id: 8, code: 'InvalidArgument', message: 'unknown operation "vmFly"' });
    expect(await ask('shutdown', { now: 1 }, 9)).to.deep.include({ id: 9, code: 'InvalidArgument' });
    expect(calls.length).to.equal(before);
    expect(await ask('vmSetProcessor', { name: 'a', weight: '5' }, 10)).to.deep.include({ id: 10, ok: true });
    expect(calls[calls.length - 1]).to.deep.equal(['vmSetProcessor', { name: 'a', weight: 5 }]);
  });

  it('answers a message of several frames and a frame over the limit with BadRequest and id 0', async () => {
    await client!.send([encode({ v: 1, id: 20, op: 'ping', args: {} }), encode({ v: 1, id: 21, op: 'ping', args: {} })]);
    expect(readAnswer(await client!.receive())).to.deep.include({ id: 0, code: 'BadRequest', message: 'a management request is one frame; this message had 2' });
    await client!.send(Buffer.alloc(MGMT_FRAME_MAX_BYTES + 1, 0xc0));
    expect(readAnswer(await client!.receive())).to.deep.include({ id: 0, code: 'BadRequest', message: `the request frame of ${MGMT_FRAME_MAX_BYTES + 1} bytes exceeds the limit of ${MGMT_FRAME_MAX_BYTES}` });
  });

  it(`answers Busy beyond ${MGMT_MAX_IN_FLIGHT} requests in flight, and takes requests again once they finish`, async () => {
    const extra = 5;
    for (let i = 0; i < MGMT_MAX_IN_FLIGHT + extra; i++) await client!.send(encode({ v: 1, id: 1000 + i, op: 'vmStatus', args: { name: 'a' } }));
    const busy: Answer[] = [];
    for (let i = 0; i < extra; i++) busy.push(readAnswer(await client!.receive()));
    expect(busy.map((a) => [a.id, a.code])).to.deep.equal(Array.from({ length: extra }, (_, i) => [1000 + MGMT_MAX_IN_FLIGHT + i, 'Busy']));
    expect(server!.inFlight).to.equal(MGMT_MAX_IN_FLIGHT);
    release();
    gate = Promise.resolve();
    const done: Answer[] = [];
    for (let i = 0; i < MGMT_MAX_IN_FLIGHT; i++) done.push(readAnswer(await client!.receive()));
    expect(done.every((a) => a.ok)).to.equal(true);
    expect(new Set(done.map((a) => a.id)).size).to.equal(MGMT_MAX_IN_FLIGHT);
    expect(await ask('vmStatus', { name: 'b' }, 2000)).to.deep.include({ id: 2000, ok: true });
    expect(server!.inFlight).to.equal(0);
  });

  it('ends serve() when closed', async () => {
    const s = server!;
    server = null;
    s.close();
    await serving;
  });
});
