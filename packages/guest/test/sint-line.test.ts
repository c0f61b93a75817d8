import { expect } from 'chai';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { Dispatch, GuestVector, VirtualApicView, VpPage, vpPageOffset } from '@hvlab/protocol';
import { futexWake, wakeFdAvailable } from '@hvlab/shm';
import { SintLine, sintRaiser } from '../src/sint-line.js';
import { stopVpThreads } from '../src/vp.js';
import { startLoneVp } from './fixtures/vp-start.js';

/** Resolves once `pred` holds, looking after each turn of the event loop (at most `turns` turns). */
async function until(pred: () => boolean, what = 'the line did not call back', turns = 5000): Promise<void> {
  for (let i = 0; i < turns && !pred(); i++) await new Promise((r) => setTimeout(r, 1));
  expect(pred(), what).to.equal(true);
}

describe('SintLine: VP threads raise SINTs on the kernel thread\'s loop', function () {
  before(function () {
    if (!wakeFdAvailable()) this.skip();
  });

  it('calls back once per raised SINT, for raises from another thread', async () => {
    const got: Array<[number, number]> = [];
    const line = SintLine.open(3, (vp, sint) => got.push([vp, sint]));
    expect(line, 'a line could not be opened here').to.not.equal(null);
    const w = new Worker(new URL('./sint-raiser.mjs', import.meta.url), { workerData: { line: line!.handle } });
    try {
      expect((await once(w, 'message'))[0]).to.equal('online');
      w.postMessage([[2, 2], [0, 5], [2, 0]]);
      expect((await once(w, 'message'))[0]).to.equal('raised');
      await until(() => got.length >= 3);
      // The loop may look between two of the raises: the calls, in whatever turns they came.
      expect(got.sort((a, b) => a[0] - b[0] || a[1] - b[1])).to.deep.equal([[0, 5], [2, 0], [2, 2]]);
      // Served: the words are 0 again, and the next raise signals again.
      expect([0, 1, 2].map((vp) => line!.pendingFor(vp))).to.deep.equal([0, 0, 0]);
      got.length = 0;
      w.postMessage([[1, 2]]);
      await once(w, 'message');
      await until(() => got.length >= 1);
      expect(got).to.deep.equal([[1, 2]]);
    } finally {
      await w.terminate();
      line!.close();
    }
  });

  it('makes one call of two raises of one SINT before the loop looks (one interrupt line), in VP and SINT order', async () => {
    const got: Array<[number, number]> = [];
    const line = SintLine.open(2, (vp, sint) => got.push([vp, sint]))!;
    const raiseSint = sintRaiser(line.handle);
    try {
      // Raised on this thread: the loop cannot look in between.
      raiseSint(1, 3);
      raiseSint(0, 2);
      raiseSint(0, 2);
      raiseSint(0, 1);
      expect(line.pendingFor(0)).to.equal((1 << 2) | (1 << 1));
      await until(() => got.length >= 3);
      await new Promise((r) => setTimeout(r, 20));
      expect(got).to.deep.equal([[0, 1], [0, 2], [1, 3]]);
    } finally {
      line.close();
    }
  });

  it('ignores a VP or SINT out of range and anything raised after close', async () => {
    const got: Array<[number, number]> = [];
    const line = SintLine.open(2, (vp, sint) => got.push([vp, sint]))!;
    const raiseSint = sintRaiser(line.handle);
    raiseSint(2, 1);
    raiseSint(-1, 1);
    raiseSint(0, 16);
    raiseSint(0, -1);
    expect([line.pendingFor(0), line.pendingFor(1)]).to.deep.equal([0, 0]);
    raiseSint(1, 3);
    line.close();
    raiseSint(0, 4);
    await new Promise((r) => setTimeout(r, 30));
    expect(got).to.deep.equal([]);
    line.close(); // twice is fine
  });

  for (const withLine of [true, false]) {
    it(`a VP thread that takes a SINT's vector raises it ${withLine ? 'on the line, with no message' : 'as a message without a line'}`, async () => {
      const got: Array<[number, number]> = [];
      const line = withLine ? SintLine.open(1, (vp, sint) => got.push([vp, sint])) : null;
      const vp = await startLoneVp({ sintVectors: { [GuestVector.Vmbus]: 2 }, sintLine: line?.handle ?? null });
      const messages: Array<[number, number]> = [];
      vp.worker.on('message', (m: { t?: string; vp?: number; sint?: number }) => m?.t === 'sint' && messages.push([Number(m.vp), Number(m.sint)]));
      try {
        // Once the VP asks for an LP (Dispatch.Start): pend the vector, then grant, as the scheduler does.
        const i32 = new Int32Array(vp.start.vpRegion);
        const disp = (vpPageOffset(0) + VpPage.dispatch) >> 2;
        await until(() => Atomics.load(i32, disp) === Dispatch.Start, 'the VP did not ask for an LP');
        new VirtualApicView(i32, vpPageOffset(0)).assert(GuestVector.Vmbus);
        expect(Atomics.compareExchange(i32, disp, Dispatch.Start, Dispatch.Granted)).to.equal(Dispatch.Start);
        futexWake(vp.start.vpRegion, disp);
        await until(() => got.length + messages.length >= 1);
        await new Promise((r) => setTimeout(r, 20));
        expect(withLine ? got : messages).to.deep.equal([[0, 2]]);
        expect(withLine ? messages : got).to.deep.equal([]);
      } finally {
        stopVpThreads(vp.start.control, vp.wake);
        await vp.worker.terminate();
        line?.close();
      }
    });
  }

  it('serves the SINTs the hypervisor raised in the VP pages when the page rings, registers them there, and unregisters at close', async () => {
    const got: Array<[number, number]> = [];
    const line = SintLine.open(2, (vp, sint) => got.push([vp, sint]))!;
    const region = new SharedArrayBuffer(vpPageOffset(2));
    const words = new Int32Array(region);
    const at = (vp: number, f: number): number => (vpPageOffset(vp) + f) >> 2;
    let ring: (() => void) | null = null;
    let unhooked = false;
    const ringer = {
      onPageAttention: (fn: () => void) => {
        ring = fn;
        return () => void (unhooked = true);
      },
    };
    try {
      expect(line.attachHypervisor(region, [2], ringer)).to.equal(true);
      expect([0, 1].map((vp) => Atomics.load(words, at(vp, VpPage.sintLineOn)))).to.deep.equal([1 << 2, 1 << 2]);
      // The hypervisor's raise: the bit, then the ring.
      Atomics.or(words, at(1, VpPage.sintLineRaised), 1 << 2);
      ring!();
      expect(got).to.deep.equal([[1, 2]]);
      expect(Atomics.load(words, at(1, VpPage.sintLineRaised)), 'the word taken').to.equal(0);
      // A ring with nothing raised (a completed call) serves nothing.
      ring!();
      expect(got).to.have.length(1);
      // A VP thread's raise still comes on the line's own descriptor.
      sintRaiser(line.handle)(0, 2);
      await until(() => got.length >= 2);
      expect(got[1]).to.deep.equal([0, 2]);
    } finally {
      line.close();
    }
    expect(unhooked).to.equal(true);
    expect([0, 1].map((vp) => Atomics.load(words, at(vp, VpPage.sintLineOn))), 'unregistered').to.deep.equal([0, 0]);
    // No page, nothing rings: not attached, nothing registered.
    const l2 = SintLine.open(1, () => undefined)!;
    try {
      expect(l2.attachHypervisor(new SharedArrayBuffer(vpPageOffset(1)), [2], { onPageAttention: () => null })).to.equal(false);
    } finally {
      l2.close();
    }
  });

  it('gives no line for a VP count that is not a positive whole number', () => {
    for (const n of [0, -1, 1.5, Number.NaN]) expect(SintLine.open(n, () => undefined)).to.equal(null);
  });
});
