/**
 * MgmtClient against a stand-in management socket (a ROUTER in this process): answers are decoded
 * with checks, and a request never waits on a host process that has exited.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode, encode } from '@hvlab/protocol';
import { router, zmq } from '@hvlab/runtime';
import { MgmtCallError, MgmtClient, decodeMgmtResponse } from '@hvlab/host';

/** A ROUTER that hands each request to the test and sends whatever frames the test chooses. */
class FakeRoot {
  readonly dir = mkdtempSync(join(tmpdir(), 'hvlab-cli-client-'));
  readonly endpoint = `ipc://${join(this.dir, 'mgmt')}`;
  private readonly sock: zmq.Router = router();
  private readonly queue: Array<{ peer: Buffer; req: { id: number; op: string; args: Record<string, unknown> } }> = [];
  private waiter: (() => void) | null = null;

  async bind(): Promise<void> {
    await this.sock.bind(this.endpoint);
    void (async () => {
      try {
        for await (const [peer, body] of this.sock) {
          this.queue.push({ peer, req: decode(body) });
          this.waiter?.();
        }
      } catch { /* closed */ }
    })();
  }

  async next(): Promise<{ peer: Buffer; req: { id: number; op: string; args: Record<string, unknown> } }> {
    while (this.queue.length === 0) await new Promise<void>((r) => (this.waiter = r));
    return this.queue.shift()!;
  }

  async send(peer: Buffer, body: Uint8Array): Promise<void> {
    await this.sock.send([peer, Buffer.from(body)]);
  }

  close(): void {
    this.sock.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A process that only waits, standing in for the hypervisor or the root. */
function sleeper(): ChildProcess {
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)'], { stdio: 'ignore' });
}

describe('MgmtClient', () => {
  let root: FakeRoot;
  let client: MgmtClient | null = null;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    root = new FakeRoot();
    await root.bind();
  });
  afterEach(() => {
    client?.close();
    client = null;
    root.close();
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  it('ignores answers that are not {id, ok, …} and still takes the real answer', async () => {
    client = new MgmtClient(root.endpoint);
    const answer = client.request<number>('vmList', {}, 30000);
    const { peer, req } = await root.next();
    expect(req.op).to.equal('vmList');
    const junk: Uint8Array[] = [
      Uint8Array.of(0xc0), // nil
      Uint8Array.of(0xc1), // never used in msgpack
      Uint8Array.of(),
      encode('a string'),
      encode([req.id, true, 42]),
      encode({ id: String(req.id), ok: true, result: 1 }),
      encode({ id: req.id }),
      encode({ id: req.id, ok: 'yes', result: 2 }),
      encode({ id: -1, ok: true, result: 3 }),
      encode({ id: req.id + 1000, ok: true, result: 4 }),
    ];
    for (const j of junk) await root.send(peer, j);
    await root.send(peer, encode({ id: req.id, ok: true, result: 42 }));
    expect(await answer).to.equal(42);
  });

  it('an error answer without a readable error still fails the request with a sentence', async () => {
    client = new MgmtClient(root.endpoint);
    const answer = client.request('vmStatus', { name: 'a' }, 30000);
    const { peer, req } = await root.next();
    await root.send(peer, encode({ id: req.id, ok: false, error: { code: { toString: 1 }, message: ['x'] } }));
    const e = await answer.then(() => null, (x: unknown) => x);
    expect(e).to.be.instanceOf(MgmtCallError);
    expect((e as MgmtCallError).message).to.equal('the host refused "vmStatus" without saying why');
  });

  it('does not send arguments that are undefined', async () => {
    client = new MgmtClient(root.endpoint);
    void client.request('vmNew', { name: 'a', memory: undefined, vps: '2' }, 30000).catch(() => undefined);
    const { req } = await root.next();
    expect(req.args).to.deep.equal({ name: 'a', vps: '2' });
    expect(Object.keys(req.args)).to.deep.equal(['name', 'vps']);
  });

  it('fails a pending request when the watched root partition process exits, naming it and the call', async () => {
    const hv = sleeper();
    const rt = sleeper();
    children.push(hv, rt);
    client = new MgmtClient(root.endpoint, { watch: { pids: { hypervisor: hv.pid!, root: rt.pid! } } });
    const answer = client.request('vmSave', { name: 'a' }, 50000);
    await root.next(); // received and never answered
    rt.kill('SIGKILL');
    const e = await answer.then(() => null, (x: unknown) => x);
    expect(e).to.be.instanceOf(MgmtCallError);
    expect((e as MgmtCallError).code).to.equal('HostGone');
    expect((e as MgmtCallError).message).to.equal(`the host's root partition process (pid ${rt.pid}) exited while "vmSave" was pending`);
  });

  it('fails every pending request when the watched hypervisor exits', async () => {
    const hv = sleeper();
    const rt = sleeper();
    children.push(hv, rt);
    client = new MgmtClient(root.endpoint, { watch: { pids: { hypervisor: hv.pid!, root: rt.pid! } } });
    const a = client.request('vmList', {}, 50000).then(() => null, (x: unknown) => x);
    const b = client.request('ps', {}, 50000).then(() => null, (x: unknown) => x);
    await root.next();
    await root.next();
    hv.kill('SIGKILL');
    expect(((await a) as Error).message).to.equal(`the host's hypervisor process (pid ${hv.pid}) exited while "vmList" was pending`);
    expect(((await b) as Error).message).to.equal(`the host's hypervisor process (pid ${hv.pid}) exited while "ps" was pending`);
  });

  it('refuses a request at once when a watched process is already gone', async () => {
    const hv = sleeper();
    const rt = sleeper();
    children.push(hv, rt);
    rt.kill('SIGKILL');
    await new Promise((r) => rt.once('exit', r));
    client = new MgmtClient(root.endpoint, { watch: { pids: { hypervisor: hv.pid!, root: rt.pid! } } });
    const e = await client.request('vmList', {}, 50000).then(() => null, (x: unknown) => x);
    expect((e as Error).message).to.equal(`the host's root partition process (pid ${rt.pid}) is not running; "vmList" was not sent`);
  });
});

describe('decodeMgmtResponse', () => {
  it('returns null for anything that is not an answer, and never throws', () => {
    const frames: Uint8Array[] = [
      Uint8Array.of(0xc0), Uint8Array.of(0xc1), Uint8Array.of(0x92), Uint8Array.of(), encode(7), encode(null), encode([]),
      encode({ ok: true }), encode({ id: 1.5, ok: true }), encode({ id: 0, ok: true }), encode({ id: 2 ** 60, ok: true }),
      encode({ id: 1, ok: 1 }), encode({ id: { valueOf: 1 }, ok: true }),
    ];
    for (const f of frames) expect(decodeMgmtResponse(f), Buffer.from(f).toString('hex')).to.equal(null);
  });

  it('keeps the result of a success and a well-formed error', () => {
    expect(decodeMgmtResponse(encode({ id: 3, ok: true, result: { a: 1 } }))).to.deep.equal({ id: 3, ok: true, result: { a: 1 } });
    expect(decodeMgmtResponse(encode({ id: 4, ok: false, error: { code: 'NotFound', message: 'VM "x" does not exist' } }))).to.deep.equal({
      id: 4, ok: false, error: { code: 'NotFound', message: 'VM "x" does not exist' },
    });
  });

  it('turns an error answer it cannot read into an error that says so', () => {
    expect(decodeMgmtResponse(encode({ id: 5, ok: false, error: 'boom' }))).to.deep.equal({ id: 5, ok: false, error: null });
  });
});
