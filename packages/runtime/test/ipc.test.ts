/**
 * The VMWP <-> partition link (ipc.ts): the partition process is not trusted, so its frames are
 * cut with a length limit and decoded once, and what is not a frame of an envelope breaks the link
 * instead of growing the VMWP or throwing in its loop (seeded fuzz over random bytes, random
 * splits, serialized values of every shape and frames with one byte changed).
 */
import { expect } from 'chai';
import { Duplex, PassThrough } from 'node:stream';
import { serialize } from 'node:v8';
import { seededRandom } from '@hvlab/protocol';
import { FrameReader, IpcFrameError, IpcRpc, IPC_FRAME_MAX_BYTES, decodeIpcEnvelope, ipcFrame } from '../src/ipc.js';

/** Two linked duplexes (what one writes, the other reads). */
function pair(): [Duplex, Duplex] {
  const ab = new PassThrough();
  const ba = new PassThrough();
  const a = Duplex.from({ readable: ba, writable: ab });
  const b = Duplex.from({ readable: ab, writable: ba });
  // A destroyed Duplex.from aborts its halves (an AbortError each): a net.Socket, the real link, does not.
  for (const s of [ab, ba, a, b]) s.on('error', () => undefined);
  return [a, b];
}

describe('the VMWP-partition link', () => {
  it('carries requests, answers (typed arrays as themselves), errors and notes', async () => {
    const [a, b] = pair();
    const notes: unknown[] = [];
    const server = new IpcRpc(b, (m) => {
      if (m.t === 'bitmap') return { bitmap: new Int32Array([1, -2, 3]) };
      if (m.t === 'read') return new Uint8Array([7, 8, 9]);
      throw new Error(`unknown request ${String(m.t)}`);
    });
    const client = new IpcRpc(a, () => null, (n) => notes.push(n));
    const bm = await client.request<{ bitmap: Int32Array }>({ t: 'bitmap' });
    expect(bm.bitmap).to.be.instanceOf(Int32Array);
    expect([...bm.bitmap]).to.deep.equal([1, -2, 3]);
    expect([...(await client.request<Uint8Array>({ t: 'read' }))]).to.deep.equal([7, 8, 9]);
    const err = await client.request({ t: 'nope' }).catch((e: Error) => e);
    expect((err as Error).message).to.equal('unknown request nope');
    server.note({ t: 'online' });
    await new Promise((r) => setTimeout(r, 20));
    expect(notes).to.deep.equal([{ t: 'online' }]);
    client.close();
    server.close();
  });

  it('cuts frames whatever the chunks, and refuses an announced length over the limit before holding it', () => {
    const frames = [ipcFrame({ ipc: 'note', body: { t: 'a' } }), ipcFrame({ ipc: 'res', id: 3, ok: true, result: new Uint8Array(70000) }), ipcFrame({ ipc: 'note', body: {} })];
    const all = Buffer.concat(frames);
    const next = seededRandom(0x1bc);
    for (let i = 0; i < 200; i++) {
      const r = new FrameReader();
      const got: Buffer[] = [];
      for (let at = 0; at < all.length;) {
        const n = Math.min(all.length - at, 1 + Math.floor(next() * 9000));
        got.push(...r.push(all.subarray(at, at + n)));
        at += n;
      }
      expect(got.map((f) => f.length)).to.deep.equal(frames.map((f) => f.length - 4));
    }
    const head = Buffer.alloc(4);
    head.writeUInt32LE(IPC_FRAME_MAX_BYTES + 1, 0);
    expect(() => new FrameReader().push(head)).to.throw(IpcFrameError, /over the/);
    head.writeUInt32LE(0x7ffffff0, 0);
    expect(() => new FrameReader().push(head)).to.throw(IpcFrameError);
  });

  it('decodes any payload to an envelope or a reason, never a throw (seeded, 4000 cases)', () => {
    const next = seededRandom(0x1bd);
    const shapes: unknown[] = [
      null, 0, 'x', [], {}, new Uint8Array(3), new Map([[1, 2]]), new Set([1]), new Date(0), new Error('e'), [{ ipc: 'note', body: {} }],
      { ipc: 'req' }, { ipc: 'req', id: 0, body: {} }, { ipc: 'req', id: 1.5, body: {} }, { ipc: 'req', id: 2, body: [] }, { ipc: 'req', id: 2, body: null },
      { ipc: 'res', id: 1 }, { ipc: 'res', id: 1, ok: 'yes' }, { ipc: 'res', id: 1, ok: false, error: 7 }, { ipc: 'res', id: 1, ok: false, error: 'x'.repeat(10000) },
      { ipc: 'note', body: new Uint8Array(2) }, { ipc: 'note', body: { t: 'held', goWord: true } }, { ipc: 'other', body: {} }, { ipc: 'res', id: 2 ** 60, ok: true, result: 1 },
    ];
    for (let i = 0; i < 4000; i++) {
      let payload: Uint8Array;
      const r = next();
      if (r < 0.3) payload = Uint8Array.from({ length: Math.floor(next() * 64) }, () => Math.floor(next() * 256));
      else if (r < 0.6) payload = serialize(shapes[Math.floor(next() * shapes.length)]);
      else {
        const b = serialize(shapes[Math.floor(next() * shapes.length)]);
        for (let k = 1 + Math.floor(next() * 3); k > 0 && b.length > 0; k--) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
        payload = b;
      }
      let env: ReturnType<typeof decodeIpcEnvelope> = '';
      expect(() => (env = decodeIpcEnvelope(payload))).to.not.throw();
      if (typeof env === 'string') continue;
      const e = env as Exclude<ReturnType<typeof decodeIpcEnvelope>, string>;
      if (e.ipc !== 'note') expect(Number.isSafeInteger(e.id) && e.id > 0).to.equal(true);
      if (e.ipc === 'req' || e.ipc === 'note') expect(e.body !== null && typeof e.body === 'object' && !Array.isArray(e.body) && !ArrayBuffer.isView(e.body)).to.equal(true);
      if (e.ipc === 'res' && !e.ok) expect(typeof e.error === 'string' && e.error.length <= 2000).to.equal(true);
    }
  });

  it('breaks the link on a frame over the limit or one that is no envelope, and the owner hears why; nothing throws', async () => {
    for (const bad of [
      (() => { const h = Buffer.alloc(4); h.writeUInt32LE(0x7ffffff0, 0); return Buffer.concat([h, Buffer.alloc(1000)]); })(),
      Buffer.concat([Buffer.from([5, 0, 0, 0]), Buffer.from('hello')]),
      ipcFrame({ ipc: 'res', id: 'x', ok: true }),
    ]) {
      const [a, b] = pair();
      let why = '';
      const vmwp = new IpcRpc(a, () => null, () => {}, (w) => (why = w));
      const pending = vmwp.request({ t: 'read' }, 5000).catch((e: Error) => e);
      b.write(bad);
      const e = await pending;
      expect(e).to.be.instanceOf(Error);
      expect((e as Error).message).to.match(/the process link broke/);
      expect(why).to.not.equal('');
      expect(vmwp.isClosed).to.equal(true);
    }
  });

  it('tells its owner once when the other end closes the link, and not when the owner closed it or a frame broke it', async () => {
    {
      const [a, b] = pair();
      let ended = 0;
      const vmwp = new IpcRpc(a, null, () => {}, () => {}, () => ended++);
      const pending = vmwp.request({ t: 'read' }, 5000).catch((e: Error) => e);
      b.end();
      expect(((await pending) as Error).message).to.equal('the process link closed');
      await new Promise((r) => setTimeout(r, 20));
      expect(ended).to.equal(1);
      expect(vmwp.isClosed).to.equal(true);
    }
    {
      const [a, b] = pair();
      let ended = 0;
      const vmwp = new IpcRpc(a, null, () => {}, () => {}, () => ended++);
      vmwp.close();
      b.end();
      await new Promise((r) => setTimeout(r, 20));
      expect(ended).to.equal(0);
    }
    {
      const [a, b] = pair();
      let ended = 0;
      let why = '';
      new IpcRpc(a, null, () => {}, (w) => (why = w), () => ended++);
      b.write(Buffer.concat([Buffer.from([5, 0, 0, 0]), Buffer.from('hello')]));
      await new Promise((r) => setTimeout(r, 20));
      expect(why).to.not.equal('');
      expect(ended).to.equal(0);
    }
  });

  it('an end that takes no requests breaks the link on one, and an end whose answers are left unread breaks it past the limit', async () => {
    {
      const [a, b] = pair();
      let why = '';
      const vmwp = new IpcRpc(a, null, () => {}, (w) => (why = w));
      b.write(ipcFrame({ ipc: 'req', id: 1, body: { t: 'x' } }));
      await new Promise((r) => setTimeout(r, 20));
      expect(why).to.match(/a request, where this end takes none/);
      expect(vmwp.isClosed).to.equal(true);
    }
    {
      // The other end asks and never reads the answers: they may not pile up here.
      const [a, b] = pair();
      let why = '';
      const served = new IpcRpc(a, () => new Uint8Array(1024 * 1024), () => {}, (w) => (why = w));
      for (let i = 1; i <= 60 && why === ''; i++) {
        b.write(ipcFrame({ ipc: 'req', id: i, body: { t: 'read' } }));
        await new Promise((r) => setImmediate(r));
      }
      expect(why).to.match(/does not read/);
      expect(served.isClosed).to.equal(true);
    }
  });

  it('takes a frame whose length came one byte at a time', () => {
    const f = ipcFrame({ ipc: 'note', body: { t: 'x', pad: new Uint8Array(100000) } });
    const r = new FrameReader();
    const got: Buffer[] = [];
    for (let i = 0; i < 4; i++) got.push(...r.push(f.subarray(i, i + 1)));
    for (let at = 4; at < f.length; at += 4096) got.push(...r.push(f.subarray(at, Math.min(f.length, at + 4096))));
    expect(got).to.have.length(1);
    expect(got[0]!.length).to.equal(f.length - 4);
  });
});
