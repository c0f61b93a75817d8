import { expect } from 'chai';
import { encodeChannelMessage, decodeChannelMessage } from '@hvlab/protocol';
import { VmbusLoopback, type VmbusChannel, type VmbusDevice } from '../src/index.js';
import { MAX_GPADLS_PER_CHANNEL, MAX_PENDING_GPADLS, MAX_QUEUED_MESSAGES } from '../src/server.js';

const GUID = '11111111-2222-3333-4444-555555555555';

class NullDevice implements VmbusDevice {
  readonly interfaceInstance: string;
  readonly interfaceType: string;
  constructor(readonly name: string, n: number) {
    this.interfaceType = GUID.replace(/^1/, n.toString(16));
    this.interfaceInstance = this.interfaceType.replace(/^./, 'a');
  }
  open(_c: VmbusChannel): void {}
  close(): void {}
}

describe('VMBus server limits on guest-created state', function () {
  this.timeout(30000);
  let lb: VmbusLoopback;
  beforeEach(async () => {
    lb = new VmbusLoopback({ transport: 'shm' });
    await lb.start();
    for (let n = 1; n <= 6; n++) await lb.server.addDevice(new NullDevice(`null${n}`, n));
    await lb.client.connect();
  });
  afterEach(() => lb.close());

  const created = (): Array<{ gpadl: number; status: number }> => lb.toGuest
    .map((m) => { try { return decodeChannelMessage(m); } catch { return null; } })
    .filter((m): m is Extract<ReturnType<typeof decodeChannelMessage>, { type: 'GpadlCreated' }> => m?.type === 'GpadlCreated')
    .map((m) => ({ gpadl: m.gpadl, status: m.status }));

  it(`holds at most ${MAX_PENDING_GPADLS} half-sent GPADLs and refuses the rest with GPADL_CREATED failed`, async () => {
    const relids = lb.server.channelInfo().map((c) => c.relid);
    const pending = (): number => (lb.server as unknown as { pendingGpadls: Map<number, unknown> }).pendingGpadls.size;
    const first26 = Array.from({ length: 26 }, (_, k) => 16 + k);
    for (let i = 0; i < MAX_PENDING_GPADLS + 10; i++) {
      // A header promising 100 pages but carrying 26: it waits for GPADL_BODY messages that never come.
      const childRelid = relids[Math.floor(i / (MAX_GPADLS_PER_CHANNEL - 2)) % relids.length];
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'GpadlHeader', childRelid, gpadl: 0x1000 + i, byteCount: 100 * 4096, byteOffset: 0, totalPfns: 100, pfns: first26 }));
    }
    expect(pending()).to.be.at.most(MAX_PENDING_GPADLS);
    const refused = created().filter((c) => c.gpadl >= 0x1000 && c.status !== 0);
    expect(refused.length).to.be.greaterThanOrEqual(10);
  });

  it(`holds at most ${MAX_GPADLS_PER_CHANNEL} GPADLs per channel`, async () => {
    const relid = lb.server.channelInfo()[0].relid;
    for (let i = 0; i < MAX_GPADLS_PER_CHANNEL + 5; i++) {
      await lb.server.onMessage(4, encodeChannelMessage({ type: 'GpadlHeader', childRelid: relid, gpadl: 0x2000 + i, byteCount: 4096, byteOffset: 0, totalPfns: 1, pfns: [200 + i] }));
    }
    const mine = created().filter((c) => c.gpadl >= 0x2000);
    expect(mine.filter((c) => c.status === 0).length).to.be.at.most(MAX_GPADLS_PER_CHANNEL);
    expect(mine.filter((c) => c.status !== 0).length).to.be.greaterThanOrEqual(5);
  });

  it(`queues at most ${MAX_QUEUED_MESSAGES} of a guest's channel messages and drops the rest, counted; it serves on afterwards`, async () => {
    const before = lb.toGuest.length;
    const flood = 5000;
    // Posted faster than the server handles them (nothing awaited), as a guest that floods REQUESTOFFERS.
    const steps: Promise<void>[] = [];
    for (let i = 0; i < flood; i++) steps.push(lb.server.onMessage(4, encodeChannelMessage({ type: 'RequestOffers' })));
    expect(lb.server.stats.dropped).to.equal(flood - MAX_QUEUED_MESSAGES);
    await Promise.allSettled(steps);
    await lb.server.whenIdle();
    expect(lb.server.idle).to.equal(true);
    // Each taken REQUESTOFFERS was answered (offers and ALLOFFERS_DELIVERED); the dropped ones were not.
    const delivered = lb.toGuest.slice(before).map((m) => { try { return decodeChannelMessage(m).type; } catch { return null; } }).filter((t) => t === 'AllOffersDelivered').length;
    expect(delivered).to.be.at.most(MAX_QUEUED_MESSAGES);
    // The cap counts what waits, not what was ever taken: the next message is handled.
    const dropped = lb.server.stats.dropped;
    await lb.server.onMessage(4, encodeChannelMessage({ type: 'RequestOffers' }));
    expect(lb.server.stats.dropped).to.equal(dropped);
    expect(lb.toGuest.slice(before).map((m) => { try { return decodeChannelMessage(m).type; } catch { return null; } }).filter((t) => t === 'AllOffersDelivered').length).to.equal(delivered + 1);
  });
});
