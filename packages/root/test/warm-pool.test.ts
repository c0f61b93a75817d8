/**
 * The warm pool's bookkeeping with real worker processes but no hypervisor: a worker whose first
 * line (its template and ticket) has not been written yet is never handed out, since a claim
 * written first would become that line; a VM of another shape takes nothing; closing the pool
 * leaves no process.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pidAlive } from '@hvlab/runtime';
import { defaultDevices } from '@hvlab/protocol';
import { WarmPool } from '../src/warm.js';
import type { VmwpConfig } from '../src/vmwp/shared.js';

const quiet = { warn: () => {}, info: () => {} };

describe('warm pool: handing out workers', function () {
  this.timeout(30000);
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-warm-pool-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('never hands out a worker whose template line is still waiting for its ticket, nor one of another shape', async () => {
    const shape: VmwpConfig = {
      home: dir, hostId: 'wp0001', hvPid: process.pid, name: 'warm', id: '00000000-0000-4000-8000-000000000000', memoryBytes: 16 << 20, vps: 1, workload: 'idle',
      processor: { reserve: 0, maximum: 100, weight: 100 }, rtcOffsetS: 0, vmDir: join(dir, 'vms'), restore: false, devices: defaultDevices(), vmbusTransport: 'shm',
    };
    let tickets = 0;
    const pool = new WarmPool({
      size: 1, shape, ticket: () => {
        tickets++;
        return new Promise<string>(() => {}); // never: the hypervisor is slow to answer
      },
      endpoint: (id) => `ipc://${join(dir, id)}`, deletePartition: async () => {}, stderrLog: join(dir, 'stderr.log'), logDir: dir, hvEndpoint: `ipc://${join(dir, 'no-hv')}`, log: quiet,
    });
    const pids = pool.workers.map((w) => w.pid);
    try {
      expect(pids).to.have.length(1);
      expect(tickets).to.equal(1);
      expect(pool.take({ ...shape, name: 'a', id: '11111111-1111-4111-8111-111111111111' }), 'no template line written yet').to.equal(null);
      expect(pool.take({ ...shape, memoryBytes: 32 << 20 }), 'another shape').to.equal(null);
      expect(pool.size, 'the worker stays in the pool').to.equal(1);
    } finally {
      pool.close();
    }
    const gone = async (): Promise<boolean> => {
      for (let i = 0; i < 100; i++) {
        if (pids.every((p) => !pidAlive(p))) return true;
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };
    expect(await gone(), 'closing the pool ends its workers').to.equal(true);
  });
});
