/**
 * The remote transport's hub over ZeroMQ with a guest that stops reading: the hub's sends never
 * wait (runtime's ROUTER_SEND_OPTIONS), so once that guest's queue is full a frame for it is
 * dropped; the hub then drops its link and faults its channels, rather than thinning its stream
 * without a word (a lost packet or credit grant would stall the channel for good). Other guests go on.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dealer } from '@hvlab/runtime';
import { PacketType, RemoteHub, RemoteLink, encodeHelloFrame } from '../src/index.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('vmbus remote hub over ZeroMQ, a guest that stops reading', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-hub-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('loses that guest\'s link and faults its channels; another guest\'s channel goes on', async function () {
    this.timeout(300000);
    const ep = `ipc://${join(dir, 'hub.sock')}`;
    const hub = new RemoteHub(ep);
    await hub.bind();
    // The silent guest: says hello, then never reads.
    const silent = dealer();
    silent.connect(ep);
    const other = new RemoteLink(ep, 2, 'token-2');
    try {
      hub.admit(1, 'token-1');
      hub.admit(2, 'token-2');
      await silent.send(Buffer.from(encodeHelloFrame(1, 'token-1')));
      // A window far above what ZeroMQ queues for one peer (24 bytes an empty packet).
      const stuck = hub.open(1, 1, 1, 64 * 1024 * 1024, 'silent');
      let fault: Error | null = null;
      stuck.attach({ packet: () => undefined, writable: () => undefined, fault: (e) => void (fault ??= e) });
      // The other guest's channel, both ends.
      const got: bigint[] = [];
      const hubOther = hub.open(2, 1, 1, 65536, 'other');
      hubOther.attach({ packet: (_t, _f, id) => void got.push(id), writable: () => undefined, fault: (e) => expect.fail(`the other guest's channel faulted: ${e.message}`) });
      const otherEnd = other.open(1, 1, 65536, 'other');
      otherEnd.attach({ packet: () => undefined, writable: () => undefined, fault: (e) => expect.fail(`the other guest's end faulted: ${e.message}`) });
      expect(otherEnd.send(PacketType.DataInband, 0, 1n, new Uint8Array(8))).to.equal(true);
      const empty = new Uint8Array(0);
      let sent = 0;
      for (let chunk = 0; chunk < 200 && fault === null; chunk++) {
        for (let i = 0; i < 5000; i++) if (stuck.send(PacketType.DataInband, 0, 0n, empty)) sent++;
        await sleep(1);
      }
      for (let i = 0; i < 500 && fault === null; i++) await sleep(10);
      expect(fault, `no fault after ${sent} packets to a guest that reads nothing`).to.not.equal(null);
      expect(fault!.message).to.match(/link to the guest was lost.*not reading/);
      expect(hub.stats.lostLinks).to.equal(1);
      expect(stuck.send(PacketType.DataInband, 0, 0n, empty), 'the faulted channel takes nothing more').to.equal(false);
      // The other guest is untouched: its packets still arrive.
      expect(otherEnd.send(PacketType.DataInband, 0, 2n, new Uint8Array(8))).to.equal(true);
      for (let i = 0; i < 1000 && got.length < 2; i++) await sleep(10);
      expect(got).to.deep.equal([1n, 2n]);
    } finally {
      silent.close();
      other.close();
      hub.close();
    }
  });
});
