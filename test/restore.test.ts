/**
 * A turn-off during a restore from Saved consumes the saved state (issue 9): before, the VM went
 * Off but kept its saved state, and after down/up it showed Saved again and resumed an old
 * snapshot — a silent rollback.
 */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { decode, type VmInfo, type VmStateEvent } from '@hvlab/protocol';
import { zmq } from '@hvlab/runtime';
import { MgmtClient, readHost } from '@hvlab/host';
import { TestHost, sleep } from './harness.js';

describe('turning a VM off while it resumes from a saved state', function () {
  this.timeout(120000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('discards the saved state: the VM is Off, stays Off after down and up, and starts fresh', async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', 'r', '--memory', '8M');
    await h.ok('vm', 'start', 'r');
    await sleep(300);
    await h.ok('vm', 'save', 'r');
    const saved = join(h.paths.vmDir, 'r.saved');
    expect(existsSync(saved)).to.equal(true);

    // Turn it off the moment VMMS says Starting, from a client already connected.
    const sub = new zmq.Subscriber({ linger: 0 });
    sub.connect(h.paths.eventsEndpoint);
    sub.subscribe('vm');
    const client = new MgmtClient(h.paths.mgmtEndpoint, { watch: readHost(h.paths) });
    let turnedOffIn: string | null = null;
    const watcher = (async () => {
      for await (const [, body] of sub) {
        const ev = decode<VmStateEvent>(body);
        if (ev.vm === 'r' && ev.state === 'Starting') {
          const v = await client.request<VmInfo>('vmTurnOff', { name: 'r' });
          turnedOffIn = v.state;
          return;
        }
      }
    })();
    try {
      await sleep(200); // let the subscription reach the publisher
      const start = await h.run('vm', 'start', 'r');
      await Promise.race([watcher, sleep(15000)]);
      expect(turnedOffIn, 'the turn-off answered').to.equal('Off');
      expect(start.code, start.stdout + start.stderr).to.not.equal(0);
    } finally {
      sub.close();
      client.close();
    }
    const r1 = (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'r')!;
    expect(r1.state).to.equal('Off');
    expect(existsSync(saved), 'the saved state is gone').to.equal(false);
    await h.ok('down');
    await h.ok('up', '--lps', '1');
    const r2 = (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'r')!;
    expect(r2.state, 'no silent rollback to the old snapshot').to.equal('Off');
    await h.ok('vm', 'start', 'r');
    expect((await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'r')!.lastStateReason).to.equal('started');
  });
});
