/**
 * The VMMS <-> VMWP control link (protocol/src/vmwp.ts, runtime/src/vmwp-link.ts) is an edge
 * where bytes enter the worker that owns a VM: its checking decoders never throw, and a control
 * server fed random and mutated frames answers what carries an id, drops the rest, serves only a
 * peer that said hello with the secret, and keeps serving.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeVmwpFrame, decodeVmwpRecord, encode, VmwpDecodeError, type VmwpNote } from '@hvlab/protocol';
import { VmwpControlClient, VmwpControlServer, VmwpFailure, VmwpLinkError, VMWP_BAD_ANSWER, dealer, type zmq } from '../src/index.js';

const quiet = { warn: () => undefined, error: () => undefined };
const hostile = { toString: 1, valueOf: 1 };
/** A `describe` answer as a worker sends it (main.ts). */
const description = { name: 'vm1', partitionId: 3, partitionPid: 4321, booted: true, suspended: false, saved: false, runningSince: 1765000000000, restored: false, pending: null, moving: null, incoming: null };

describe('VMWP control link decoders', () => {
  it('never throw anything but VmwpDecodeError on random bytes or random msgpack values', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
      try { decodeVmwpFrame(b); } catch (e) { expect(e).to.be.instanceOf(VmwpDecodeError); }
    }), { numRuns: 3000 });
    fc.assert(fc.property(fc.anything(), (v) => {
      let bytes: Buffer;
      try { bytes = encode(v); } catch { return; }
      try { decodeVmwpFrame(bytes); } catch (e) { expect(e).to.be.instanceOf(VmwpDecodeError); }
      try { decodeVmwpRecord(v); } catch (e) { expect(e).to.be.instanceOf(VmwpDecodeError); }
    }), { numRuns: 3000 });
  });

  it('refuse wrong types field by field and keep the id for the answer', () => {
    for (const body of [
      { t: 'peek', gpa: -1, len: 16 }, { t: 'peek', gpa: hostile, len: 1 }, { t: 'suspend', value: 1 },
      { t: 'processor', reserve: 0, maximum: 0, weight: 100 }, { t: 'kvp', op: 'drop', pool: 'external', key: null, value: null },
      { t: 'hypercall', asChild: true, code: 0x40, input: [1] }, { t: 'shutdown', timeoutS: 1e999 }, { t: hostile },
    ]) {
      let err: unknown = null;
      try { decodeVmwpFrame(encode({ t: 'req', id: 9, body })); } catch (e) { err = e; }
      expect(err, JSON.stringify(body)).to.be.instanceOf(VmwpDecodeError);
      expect((err as VmwpDecodeError).id).to.equal(9);
    }
    expect(decodeVmwpFrame(encode({ t: 'req', id: 3, body: { t: 'kvp', op: 'get', pool: 'guest', key: 'k', value: null } })).t).to.equal('req');
  });

  it('reject a truncated or hand-edited worker record', () => {
    const good = { version: 1, name: 'a', id: 'x', pid: 10, endpoint: 'ipc:///tmp/x', secret: 's', partitionId: 2, partitionPid: 11, startedAt: 'now', exit: null };
    expect(decodeVmwpRecord(good).pid).to.equal(10);
    for (const bad of [{ ...good, version: 2 }, { ...good, pid: 0 }, { ...good, partitionId: 1 }, { ...good, secret: hostile }, { ...good, exit: { reason: 1 } }, null, []]) {
      expect(() => decodeVmwpRecord(bad), JSON.stringify(bad)).to.throw(VmwpDecodeError);
    }
  });
});

describe('VMWP control server under random frames', function () {
  this.timeout(30000);
  let dir: string;
  let server: VmwpControlServer;
  const handled: string[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-vmwp-link-'));
    server = new VmwpControlServer(`ipc://${join(dir, 'w')}`, 'sesame', async (req) => {
      handled.push(req.t);
      if (req.t === 'status') return { ok: 1 };
      throw new VmwpFailure('InvalidArgument', `no ${req.t} here`);
    }, quiet);
    await server.bind();
  });
  after(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves nothing before a hello with the secret, answers every framed request, and keeps serving after 5,000 random frames', async () => {
    const sock: zmq.Dealer = dealer();
    sock.connect(`ipc://${join(dir, 'w')}`);
    const answers = new Map<number, { ok: boolean; error?: string }>();
    const reading = (async () => {
      for await (const [frame] of sock) {
        const f = decodeVmwpFrame(frame);
        if (f.t === 'res') answers.set(f.id, f.ok ? { ok: true } : { ok: false, error: f.error });
      }
    })().catch(() => undefined);
    const ask = async (id: number, body: unknown): Promise<{ ok: boolean; error?: string }> => {
      await sock.send(encode({ t: 'req', id, body }));
      for (let i = 0; i < 500 && !answers.has(id); i++) await new Promise((r) => setTimeout(r, 5));
      return answers.get(id)!;
    };
    expect((await ask(1, { t: 'status' })).error).to.match(/hello/);
    expect((await ask(2, { t: 'hello', secret: 'wrong' })).ok).to.equal(false);
    expect((await ask(3, { t: 'hello', secret: 'sesame' })).ok).to.equal(true);
    expect((await ask(4, { t: 'status' })).ok).to.equal(true);
    // Random bytes and mutated requests; those that carry a readable id get an answer.
    const rnd = fc.sample(fc.oneof(fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), fc.anything().map((v) => { try { return encode({ t: 'req', id: 1_000_000, body: v }); } catch { return Buffer.from([0xc1]); } })), 5000);
    for (const b of rnd) await sock.send(b);
    const r = await ask(5, { t: 'peek', gpa: 0, len: 0 });
    expect(r.ok).to.equal(false);
    expect(r.error).to.match(/len/);
    expect((await ask(6, { t: 'status' })).ok, 'still serving').to.equal(true);
    expect(handled.filter((t) => t === 'status').length).to.equal(2);
    sock.close();
    await reading;
  });

  it('a client fails pending requests at once when the worker pid is gone, naming it', async () => {
    const notes: VmwpNote[] = [];
    // pid 0x7ffffffe does not exist: the link must not wait for its answer's time-out.
    const c = new VmwpControlClient(`ipc://${join(dir, 'nobody')}`, 0x7ffffffe, (n) => notes.push(n), quiet);
    let err: unknown = null;
    try { await c.request({ t: 'status' }, 60000); } catch (e) { err = e; }
    c.close();
    expect(err).to.be.instanceOf(VmwpLinkError);
    expect((err as Error).message).to.match(/worker process \(pid 2147483646\) exited/);
    // Gone, not timed out: the root leaves such a VM to the worker's exit, not to a state it guessed.
    expect((err as VmwpLinkError).gone).to.equal(true);
    expect((err as VmwpLinkError).timedOut).to.equal(false);
    let after: unknown = null;
    try { await c.request({ t: 'status' }); } catch (e) { after = e; }
    expect((after as VmwpLinkError).gone, 'a request on a closed link').to.equal(true);
  });

  it('says which failures are a time-out (the worker may still act), which a refusal, and which a worker that is gone', async () => {
    // A live pid (this process) whose endpoint answers nothing: the request times out.
    const c = new VmwpControlClient(`ipc://${join(dir, 'silent')}`, process.pid, () => undefined, quiet);
    let err: unknown = null;
    try { await c.request({ t: 'status' }, 300); } catch (e) { err = e; }
    c.close();
    expect(err).to.be.instanceOf(VmwpLinkError);
    expect((err as Error).message).to.match(/did not answer "status" within 0.3 s/);
    expect((err as VmwpLinkError).timedOut).to.equal(true);
    expect((err as VmwpLinkError).gone).to.equal(false);
    // A refusal by the worker: neither.
    const w = new VmwpControlClient(`ipc://${join(dir, 'w')}`, process.pid, () => undefined, quiet);
    try {
      await w.request({ t: 'hello', secret: 'sesame' });
      let refused: unknown = null;
      try { await w.request({ t: 'describe' }); } catch (e) { refused = e; }
      expect((refused as VmwpLinkError).code).to.equal('InvalidArgument');
      expect((refused as VmwpLinkError).timedOut).to.equal(false);
      expect((refused as VmwpLinkError).gone).to.equal(false);
    } finally {
      w.close();
    }
  });

  it('a request without a bound (Infinity: a move in doubt) waits for its answer, and still fails at once when its worker is gone', async () => {
    // The answer comes when the test says so: Node ran a timer of Infinity after 1 ms, which failed
    // the request as timed out ("within Infinity s") before the worker could answer.
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => void (release = r));
    const s = new VmwpControlServer(`ipc://${join(dir, 'held')}`, 'sesame', async (req) => {
      if (req.t === 'status') await held;
      return req.t === 'status' ? { booted: false, progress: null } : { ...description, name: req.t };
    }, quiet);
    await s.bind();
    const c = new VmwpControlClient(`ipc://${join(dir, 'held')}`, process.pid, () => undefined, quiet);
    try {
      await c.request({ t: 'hello', secret: 'sesame' });
      let settled: unknown = 'pending';
      const asking = c.request({ t: 'status' }, Infinity).then((v) => (settled = v), (e: unknown) => (settled = e));
      // Other requests come and go meanwhile (timers of this process ran past the 1 ms).
      for (let i = 0; i < 3; i++) expect((await c.request({ t: 'describe' })).name).to.equal('describe');
      await new Promise((r) => setTimeout(r, 50));
      expect(settled, 'still waiting for its answer').to.equal('pending');
      release();
      await asking;
      expect(settled).to.deep.equal({ booted: false, progress: null });
    } finally {
      c.close();
      s.close();
    }
    // Unbounded and the worker gone: it fails at once, as gone.
    const gone = new VmwpControlClient(`ipc://${join(dir, 'nobody2')}`, 0x7ffffffe, () => undefined, quiet);
    let err: unknown = null;
    try { await gone.request({ t: 'status' }, Infinity); } catch (e) { err = e; }
    gone.close();
    expect((err as VmwpLinkError).gone).to.equal(true);
  });
});

describe('VMWP control link answers', function () {
  this.timeout(30000);

  it('a result that does not decode fails its request with BadAnswer, naming the request and the field, is logged, and the link serves the next request', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-vmwp-answers-'));
    const endpoint = `ipc://${join(dir, 'w')}`;
    // What this worker answers next to each request type (a compromised worker: anything).
    const next = new Map<string, unknown[]>([
      ['describe', [{ ...description, partitionId: 'two' }, description]],
      ['ic', [[{ service: 'heartbeat', enabled: true, status: 'OK', version: '3.0' }, { service: 'kvp', enabled: 'yes', status: 'OK', version: null }]]],
      ['peek', [new Uint8Array(3), new Uint8Array(4)]],
      ['faultClear', [{ cleared: ['f1', { toString: 'f2' }] }, { cleared: ['f1'] }]],
      ['migOut', [{ status: 'completed' }]],
      ['suspend', [{ whatever: [1, 2, 3] }]],
    ]);
    const server = new VmwpControlServer(endpoint, 'sesame', async (req) => next.get(req.t)!.shift(), quiet);
    await server.bind();
    const warned: Array<{ o: object; m?: string }> = [];
    const c = new VmwpControlClient(endpoint, process.pid, () => undefined, { warn: (o, m) => void warned.push({ o, m }), error: () => undefined });
    const refusal = async (p: Promise<unknown>): Promise<VmwpLinkError> => {
      let err: unknown = null;
      try { await p; } catch (e) { err = e; }
      expect(err).to.be.instanceOf(VmwpLinkError);
      return err as VmwpLinkError;
    };
    try {
      await c.request({ t: 'hello', secret: 'sesame' });
      const bad = await refusal(c.request({ t: 'describe' }));
      expect(bad.code).to.equal(VMWP_BAD_ANSWER);
      expect(bad.message).to.match(/answered "describe" with a malformed result: field partitionId is not an integer/);
      expect(bad.timedOut || bad.gone, 'neither timed out nor gone').to.equal(false);
      expect(warned.map((w) => w.m)).to.deep.equal(['refusing a malformed answer from a VMWP']);
      expect(warned[0]!.o).to.deep.include({ request: 'describe' });
      // The link goes on: the next answer is taken (and is the checked copy).
      expect(await c.request({ t: 'describe' })).to.deep.equal(description);
      expect((await refusal(c.request({ t: 'ic', enable: null, disable: null }))).message).to.match(/"ic" with a malformed result: the integration services\[1\]: field enabled is not a boolean/);
      expect((await refusal(c.request({ t: 'peek', gpa: 0, len: 4 }))).message).to.match(/"peek" with a malformed result: the memory read is not 4 bytes/);
      expect(Array.from(await c.request({ t: 'peek', gpa: 0, len: 4 }))).to.deep.equal([0, 0, 0, 0]);
      expect((await refusal(c.request({ t: 'faultClear', id: null }))).message).to.match(/field cleared\[1\]: not a fault id/);
      expect(await c.request({ t: 'faultClear', id: null })).to.deep.equal({ cleared: ['f1'] });
      expect((await refusal(c.request({ t: 'migOut', mig: 'mig-0123abcd', from: 'h1', to: 'h2', endpoint: 'tcp://127.0.0.1:1', auth: '0f'.repeat(32), key: { cluster: 'c', publicKey: 'p', secretKey: 's' }, config: {}, options: {} }, Infinity))).message).to.match(/"migOut" with a malformed result: field result: migration statistics/);
      // An answer the root does not read is taken whatever it is, and nothing of it is passed on.
      expect(await c.request({ t: 'suspend', value: true })).to.equal(undefined);
      expect(warned).to.have.length(5);
    } finally {
      c.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('VMWP control link notes', function () {
  this.timeout(30000);

  it('a note sent before the first root said hello reaches that root after its hello (a warm worker can boot first), and later notes follow in order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-vmwp-notes-'));
    const endpoint = `ipc://${join(dir, 'w')}`;
    const server = new VmwpControlServer(endpoint, 'sesame', async () => ({}), quiet);
    await server.bind();
    const notes: VmwpNote[] = [];
    let c: VmwpControlClient | null = null;
    try {
      server.note({ t: 'booted', partitionId: 7, partitionPid: 1234 });
      c = new VmwpControlClient(endpoint, process.pid, (n) => notes.push(n), quiet);
      await c.request({ t: 'hello', secret: 'sesame' }, 5000);
      for (let i = 0; i < 200 && notes.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(notes).to.deep.equal([{ t: 'booted', partitionId: 7, partitionPid: 1234 }]);
      server.note({ t: 'exiting', reason: 'r', guestShutdown: false });
      for (let i = 0; i < 200 && notes.length === 1; i++) await new Promise((r) => setTimeout(r, 5));
      expect(notes.map((n) => n.t)).to.deep.equal(['booted', 'exiting']);
    } finally {
      c?.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('VMWP control server\'s socket file', () => {
  it('is removed when the server closes, at once (a worker exits right after), but not when another server bound the path since', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-vmwp-sock-'));
    try {
      const path = join(dir, 'w');
      const a = new VmwpControlServer(`ipc://${path}`, 'sesame', async () => null, quiet);
      await a.bind();
      expect(existsSync(path), 'bound').to.equal(true);
      a.close();
      expect(existsSync(path), 'removed by close, before ZeroMQ\'s own I/O thread').to.equal(false);
      // A server of the same VM bound the path again before the old one closed: its file stays.
      const b = new VmwpControlServer(`ipc://${path}`, 'sesame', async () => null, quiet);
      await b.bind();
      const c = new VmwpControlServer(`ipc://${path}`, 'sesame', async () => null, quiet);
      await c.bind();
      b.close();
      expect(existsSync(path), 'the newer server\'s file').to.equal(true);
      c.close();
      expect(existsSync(path)).to.equal(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
