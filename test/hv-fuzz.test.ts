/**
 * Fuzz test of a REAL hypervisor process (test/fixtures/hv-server.ts: a HypervisorServer with one
 * LP, its scheduler thread running). Three DEALER sockets connect: (a) an unauthenticated peer,
 * (b) a child partition's session (created and initialized by the root, hello with its token),
 * (c) the root's session. Together they send more than 10,000 frames: random bytes, random
 * msgpack values, and mutations of valid frames (a field removed, wrong types including maps whose
 * toString/valueOf are not functions, huge numbers, NaN/Infinity, deep nesting, long strings,
 * unknown fields, several message parts). Each socket keeps at most 64 frames in flight, so every
 * answer can be counted.
 *
 * Asserted: every frame gets exactly one answer (hr, ctlr, bad, reject or welcome); the process
 * is alive and logged no handler exception; a valid hypercall still succeeds on each session; and
 * the resident set size after the run and a short settle is at most 64 MiB above the baseline
 * taken after a warm-up. The allowance covers what a healthy process may still hold after
 * 10,000 frames — V8 heap that GC has not yet returned, msgpackr's slab, ZeroMQ's buffers, the
 * page tables and VP pages of partitions the root's fuzz created — while a leak of even 7 KiB per
 * frame (a retained frame, session or log line) would exceed it.
 *
 * `after` kills the process and removes its directory and /dev/shm files even when a test failed.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  HvCall, HvStatus, PartitionProperty, PortType, ENLIGHTENED_CHILD_PRIVILEGES, ROOT_PARTITION_ID, encode, decode, type HvServerMsg,
} from '@hvlab/protocol';
import { dealer, type zmq } from '@hvlab/runtime';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = join(repo, 'test', 'fixtures', 'hv-server.ts');
const WINDOW = 64;
const ANSWERS = new Set(['hr', 'ctlr', 'bad', 'reject', 'welcome']);
const MiB = 1024 * 1024;

/** One session's socket: sends with at most WINDOW frames unanswered, counts answers by kind. */
class Session {
  readonly sock: zmq.Dealer = dealer();
  sent = 0;
  answered = 0;
  readonly kinds = new Map<string, number>();
  private readonly answers: HvServerMsg[] = [];
  private wake: (() => void) | null = null;
  private lastAnswerAt = Date.now();

  constructor(readonly name: string, endpoint: string) {
    this.sock.connect(endpoint);
    void (async () => {
      try {
        for await (const [frame] of this.sock) {
          let m: HvServerMsg;
          try {
            m = decode<HvServerMsg>(frame);
          } catch {
            continue;
          }
          if (!m || typeof m !== 'object' || !ANSWERS.has(m.k)) continue; // notifications (suspend, bye, sint …)
          this.answered++;
          this.lastAnswerAt = Date.now();
          this.kinds.set(m.k, (this.kinds.get(m.k) ?? 0) + 1);
          this.answers.push(m);
          if (this.answers.length > 16) this.answers.shift();
          this.wake?.();
        }
      } catch {
        /* closed */
      }
    })();
  }

  /** Waits until fewer than `limit` frames are unanswered; fails when no answer came for 10 s. */
  private async drain(limit: number): Promise<void> {
    while (this.sent - this.answered > limit) {
      if (Date.now() - this.lastAnswerAt > 10000) {
        throw new Error(`${this.name}: ${this.sent - this.answered} of ${this.sent} frames unanswered for 10 s (answers so far: ${JSON.stringify(Object.fromEntries(this.kinds))})`);
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wake = null;
    }
  }

  async send(frame: Buffer | Buffer[]): Promise<void> {
    await this.drain(WINDOW - 1);
    if (this.sent === this.answered) this.lastAnswerAt = Date.now();
    this.sent++;
    await this.sock.send(frame as never);
  }

  /** Waits for every answer, then a little longer to catch any second answer to a frame. */
  async settle(): Promise<void> {
    await this.drain(0);
    await new Promise((r) => setTimeout(r, 200));
    expect(this.answered, `${this.name}: answers for ${this.sent} frames`).to.equal(this.sent);
  }

  /** Sends one frame and returns its answer (for the valid calls around the fuzz). */
  async ask(msg: unknown): Promise<HvServerMsg> {
    await this.settle();
    await this.send(encode(msg));
    await this.drain(0);
    return this.answers[this.answers.length - 1];
  }

  close(): void {
    this.sock.close();
  }
}

function nest(n: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < n; i++) v = [v];
  return v;
}

function deepBytes(n: number): Buffer {
  return Buffer.concat([Buffer.alloc(n, 0x91), Buffer.from([0xc0])]);
}

const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom<unknown>(
    null, { toString: 1, valueOf: 1 }, { toString: 'x', valueOf: {} }, [], {}, '', 'x'.repeat(65536), NaN, Infinity, -Infinity, -1, 0, 1.5,
    2 ** 32, 2 ** 53, 2 ** 64, 1e308, -(2 ** 63), true, new Uint8Array(512), 1n << 63n, -1n, nest(20), new Array(3000).fill(7),
  ),
  fc.integer(), fc.double(), fc.string({ maxLength: 64 }), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
);

/** Valid frames a session of each kind might send (the targets are partition `p` and its VP 0). */
function validFrames(p: number, token: string): Array<Record<string, unknown>> {
  const hc = (code: number, input: Record<string, unknown>): Record<string, unknown> => ({ k: 'hc', id: 1, code, input });
  return [
    { k: 'hello', partitionId: p, token, role: 'fuzz', vm: null, pid: process.pid },
    { k: 'hello', partitionId: ROOT_PARTITION_ID, ticket: 'f'.repeat(64), role: 'vmwp', vm: 'x', pid: process.pid },
    { k: 'ctl', id: 1, op: 'stats' },
    { k: 'ctl', id: 1, op: 'ticket' },
    hc(HvCall.GetPartitionId, {}),
    hc(HvCall.CreatePartition, { memoryBytes: 2 * MiB, name: 'fz' }),
    hc(HvCall.InitializePartition, { partitionId: p }),
    hc(HvCall.GetPartitionProperty, { partitionId: p, property: PartitionProperty.CpuWeight }),
    hc(HvCall.SetPartitionProperty, { partitionId: p, property: PartitionProperty.CpuWeight, value: 300 }),
    hc(HvCall.MapGpaPages, { partitionId: p, gpaPage: 0, pageCount: 16 }),
    hc(HvCall.CreateVp, { partitionId: p, vpIndex: 1 }),
    hc(HvCall.GetVpRegisters, { partitionId: -1, vpIndex: 0, names: ['Rax', 'Scontrol', 'ReferenceTime'] }),
    hc(HvCall.SetVpRegisters, { partitionId: -1, vpIndex: 0, values: { Rax: 1, Stimer0Config: 0x20023, Stimer0Count: 5000 } }),
    hc(HvCall.SetVpRegisters, { partitionId: p, vpIndex: 0, values: { Rbx: 2, Tpr: 16 } }),
    hc(HvCall.PostMessage, { connectionId: 10, messageType: 1, payload: new Uint8Array(32) }),
    hc(HvCall.SignalEvent, { connectionId: 11, flagNumber: 1 }),
    hc(HvCall.AssertVirtualInterrupt, { partitionId: p, vpIndex: 0, vector: 0x40 }),
    hc(HvCall.CreatePort, { partitionId: p, portId: 50, type: PortType.Message, sint: 3, vpIndex: 0 }),
    hc(HvCall.ConnectPort, { partitionId: p, connectionId: 60, portPartitionId: p, portId: 50 }),
    hc(HvCall.MapGpadl, { partitionId: p, gpadl: 7, owner: 1, pfns: [1, 2, 3] }),
    hc(HvCall.UnmapGpadl, { partitionId: p, gpadl: 7 }),
    hc(HvCall.GetVpState, { partitionId: p, vpIndex: 0 }),
    hc(HvCall.GetVpState, { partitionId: p, vpIndex: 0, afterSuspension: 1 }),
    hc(HvCall.SetVpState, { partitionId: p, vpIndex: 0, state: { registers: {}, apic: { irr: [0, 0, 0, 0, 0, 0, 0, 0], isr: [0, 0, 0, 0, 0, 0, 0, 0], aeoi: [0, 0, 0, 0, 0, 0, 0, 0], tpr: 0 }, synic: { scontrol: 0, simp: 0, siefp: 0, sint: new Array(16).fill(65536) }, timers: [], referenceTime: 5, runState: 'Ready', interceptPending: false } }),
    hc(HvCall.InstallIntercept, { partitionId: p, type: 0, access: 1, port: 0x60 }),
  ];
}

/** Encodes, or null when msgpackr cannot (a bigint past 64 bits). */
function tryEncode(v: unknown): Buffer | null {
  try {
    return encode(v);
  } catch {
    return null;
  }
}

/** `n` frames: random bytes, random msgpack values and mutated valid frames, reproducible from `seed`. */
function frames(n: number, seed: number, p: number, token: string): Array<Buffer | Buffer[]> {
  const bases = validFrames(p, token);
  // A third of the mutations hit the message itself (k, id, code, input, secrets: mostly `bad`
  // answers); the rest hit the hypercall input, some one level down (state, values, names, pfns),
  // so most reach the hypervisor's per-call checks.
  const mutated = fc.tuple(fc.constantFrom(...bases), fc.nat(), fc.nat(8), hostile).map(([b, pick, how, value]) => {
    const f = structuredClone(b) as Record<string, unknown>;
    const input = f.input as Record<string, unknown> | undefined;
    let target: Record<string, unknown> = f;
    if (how >= 3 && input) {
      target = input;
      const inner = Object.values(input).find((v) => v !== null && typeof v === 'object' && !(v instanceof Uint8Array));
      if (how >= 7 && inner) target = inner as Record<string, unknown>;
    }
    const keys = Object.keys(target);
    const key = keys.length ? keys[pick % keys.length] : 'x';
    if (how % 3 === 0) delete target[key];
    else if (how % 3 === 1) target[key] = value;
    else target[`x${pick % 4}`] = value;
    if (typeof f.id === 'number') f.id = pick;
    return tryEncode(f);
  });
  const special = fc.oneof(
    fc.integer({ min: 1, max: 120000 }).map(deepBytes),
    fc.constant(Buffer.from([0xc0])),
    fc.constant(Buffer.alloc(0)),
    fc.tuple(fc.constantFrom(...bases), fc.integer({ min: 2, max: 3 })).map(([b, k]) => Array.from({ length: k }, () => encode(b))),
    fc.string({ minLength: 1000, maxLength: 100000 }).map((s) => encode({ k: 'hc', id: 1, code: HvCall.GetVpRegisters, input: { partitionId: -1, vpIndex: 0, names: [s] } })),
  );
  const arb = fc.oneof(
    { weight: 2, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 256 }).map((b) => Buffer.from(b)) },
    { weight: 2, arbitrary: fc.anything({ withBigInt: true, withNullPrototype: true, maxDepth: 4 }).map(tryEncode) },
    { weight: 6, arbitrary: mutated },
    { weight: 1, arbitrary: special },
  );
  return fc.sample(arb, { numRuns: n, seed }).filter((f): f is Buffer | Buffer[] => f !== null);
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('hypervisor process fuzz (real process, >10,000 frames)', function () {
  this.timeout(180000);
  const hostId = `fz${randomBytes(5).toString('hex')}`;
  // Made when a test of this block runs: one that --grep leaves out runs no `after` either.
  let dir = '';
  let endpoint = '';
  let proc: ChildProcess | null = null;
  let pid = 0;
  let token = '';
  let stderr = '';
  const sessions: Session[] = [];
  let root: Session;
  let child: Session;
  let stranger: Session;
  let childId = 0;
  let baseline = 0;
  let total = 0;

  const open = (name: string): Session => {
    const s = new Session(name, endpoint);
    sessions.push(s);
    return s;
  };
  const ok = async (s: Session, code: number, input: Record<string, unknown>): Promise<unknown> => {
    const a = await s.ask({ k: 'hc', id: 424242, code, input });
    expect(a, `${s.name} 0x${code.toString(16)} ${JSON.stringify(input, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`).to.deep.include({ k: 'hr', id: 424242, status: HvStatus.SUCCESS });
    return (a as { output: unknown }).output;
  };
  const run = async (s: Session, list: Array<Buffer | Buffer[]>): Promise<void> => {
    for (const f of list) await s.send(f);
    await s.settle();
    total += list.length;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-hvfuzz-'));
    endpoint = `ipc://${join(dir, 'hv')}`;
    proc = spawn(process.execPath, ['--import', 'tsx', fixture, dir, hostId], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const first = await new Promise<string>((res, rej) => {
      let out = '';
      const t = setTimeout(() => rej(new Error(`the hypervisor fixture did not start within 60 s: ${stderr}`)), 60000);
      proc!.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const nl = out.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(t);
          res(out.slice(0, nl));
        }
      });
      proc!.once('exit', (code) => rej(new Error(`the hypervisor fixture exited (${code}) at start: ${stderr}`)));
    });
    ({ pid, token } = JSON.parse(first) as { pid: number; token: string });
    root = open('root');
    const w = await root.ask({ k: 'hello', partitionId: ROOT_PARTITION_ID, token, role: 'root', vm: null, pid: process.pid });
    expect(w.k).to.equal('welcome');
    // The child: created and initialized by the root, with a VP, the enlightened privileges, and
    // connections to a root message port (10) and a root event port (11).
    const { partitionId, token: childToken } = (await ok(root, HvCall.CreatePartition, { memoryBytes: 4 * MiB, name: 'fuzz-child' })) as { partitionId: number; token: string };
    childId = partitionId;
    await ok(root, HvCall.InitializePartition, { partitionId });
    await ok(root, HvCall.CreateVp, { partitionId, vpIndex: 0 });
    await ok(root, HvCall.SetPartitionProperty, { partitionId, property: PartitionProperty.PrivilegeFlags, value: ENLIGHTENED_CHILD_PRIVILEGES });
    await ok(root, HvCall.CreatePort, { partitionId: ROOT_PARTITION_ID, portId: 10, type: PortType.Message, sint: 2, vpIndex: 0 });
    await ok(root, HvCall.CreatePort, { partitionId: ROOT_PARTITION_ID, portId: 11, type: PortType.Event, sint: 2, vpIndex: 0, flagCount: 64 });
    await ok(root, HvCall.ConnectPort, { partitionId, connectionId: 10, portPartitionId: ROOT_PARTITION_ID, portId: 10 });
    await ok(root, HvCall.ConnectPort, { partitionId, connectionId: 11, portPartitionId: ROOT_PARTITION_ID, portId: 11 });
    child = open('child');
    expect((await child.ask({ k: 'hello', partitionId, token: childToken, role: 'partition', vm: 'fuzz-child', pid: process.pid })).k).to.equal('welcome');
    stranger = open('stranger');
  });

  after(async () => {
    for (const s of sessions) s.close();
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const exited = await Promise.race([new Promise((r) => proc!.once('exit', () => r(true))), new Promise((r) => setTimeout(() => r(false), 5000))]);
      if (!exited) proc.kill('SIGKILL');
    }
    for (const f of readdirSync('/dev/shm')) if (f.startsWith(`hvlab-${hostId}-`)) rmSync(join('/dev/shm', f), { force: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('warms up, and takes the RSS baseline', async () => {
    await run(stranger, frames(300, 100, childId, 'wrong'));
    await run(child, frames(300, 101, -1, 'wrong'));
    await run(root, frames(300, 102, childId, 'wrong'));
    await new Promise((r) => setTimeout(r, 500));
    baseline = rssBytes(pid);
  });

  it('answers 3,500 frames from an unauthenticated peer exactly once each, and never opens it a session', async () => {
    await run(stranger, frames(3500, 1, childId, 'not-the-token'));
    expect(stranger.kinds.get('welcome') ?? 0).to.equal(0);
    const a = await stranger.ask({ k: 'hc', id: 7, code: HvCall.GetPartitionId, input: {} });
    expect(a).to.deep.include({ k: 'hr', status: HvStatus.ACCESS_DENIED });
  });

  it('answers 3,500 frames from a child session exactly once each, and the child\'s valid calls still succeed', async () => {
    await run(child, frames(3500, 2, -1, 'not-the-token'));
    expect(await ok(child, HvCall.GetVpRegisters, { partitionId: -1, vpIndex: 0, names: ['Rax'] })).to.have.property('values');
    await ok(child, HvCall.PostMessage, { connectionId: 10, messageType: 1, payload: new Uint8Array(8) });
  });

  it('answers 3,500 frames from the root session exactly once each, and the root\'s valid calls still succeed', async () => {
    await run(root, frames(3500, 3, childId, token));
    const { partitionId } = (await ok(root, HvCall.CreatePartition, { memoryBytes: 2 * MiB, name: 'after' })) as { partitionId: number };
    await ok(root, HvCall.InitializePartition, { partitionId });
    await ok(root, HvCall.CreateVp, { partitionId, vpIndex: 0 });
    await ok(root, HvCall.FinalizePartition, { partitionId });
    await ok(root, HvCall.DeletePartition, { partitionId });
  });

  it('sent more than 10,000 frames in all; the process is alive, logged no handler exception, and its RSS came back', async () => {
    expect(total).to.be.above(10000);
    expect(alive(pid) && proc!.exitCode === null, `the hypervisor process died: ${stderr.slice(-2000)}`).to.equal(true);
    expect(stderr, 'error lines of the hypervisor').to.not.match(/handler threw|serving a frame failed|socket failed/);
    await new Promise((r) => setTimeout(r, 1000));
    const after = rssBytes(pid);
    expect(after - baseline, `RSS ${Math.round(baseline / MiB)} MiB after warm-up, ${Math.round(after / MiB)} MiB after the run`).to.be.at.most(64 * MiB);
    const a = await root.ask({ k: 'hc', id: 9, code: HvCall.GetPartitionId, input: {} });
    expect(a).to.deep.include({ k: 'hr', status: HvStatus.SUCCESS });
  });
});
