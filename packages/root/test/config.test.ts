/**
 * Unit tests of VM configurations on disk (`ConfigStore`, `decodeVmConfig`) and of what VMMS does
 * with them, without starting a host: one checking decoder for every field (types, ranges, name ==
 * file name, a safe id); a write that fails leaves no temp file and the old file, and throws
 * StorageFailed; VMMS applies a change in memory only once it is on disk; a bad config is kept in
 * the registry as Invalid with its reason, is never overwritten, and refuses everything but list
 * and delete. Failing writes are made with an injected `ConfigIo` (ENOSPC, EIO).
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VmInfo, VmStateEvent } from '@hvlab/protocol';
import { processLogger, type HvClient } from '@hvlab/runtime';
import * as config from '../src/config.js';
import { Vmms } from '../src/vmms.js';

const { ConfigStore, MgmtFailure, buildConfig } = config;
type VmConfig = config.VmConfig;

function ioError(code: string, text: string, syscall: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${text}, ${syscall}`) as NodeJS.ErrnoException;
  e.code = code;
  e.syscall = syscall;
  return e;
}

/** Node's fs, with writes (or fsyncs) that fail while `failing` is set. */
function failingIo(state: { failing: 'write' | 'fsync' | null }): typeof fs {
  return {
    ...fs,
    writeSync: ((...a: Parameters<typeof fs.writeSync>) => {
      if (state.failing === 'write') throw ioError('ENOSPC', 'no space left on device', 'write');
      return (fs.writeSync as (...x: unknown[]) => number)(...a);
    }) as typeof fs.writeSync,
    fsyncSync: ((fd: number) => {
      if (state.failing === 'fsync') throw ioError('EIO', 'i/o error', 'fsync');
      fs.fsyncSync(fd);
    }) as typeof fs.fsyncSync,
  };
}

const GOOD: VmConfig = {
  version: 1,
  id: '3f2b8c1e-8d4a-4f7e-9b1a-2c3d4e5f6a7b',
  name: 'c1',
  memoryBytes: 64 * 1024 * 1024,
  vps: 2,
  workload: 'counter',
  processor: { reserve: 0, maximum: 100, weight: 100 },
  integrationServices: { heartbeat: true, shutdown: true, timesync: true, kvp: true },
  rtcOffsetS: 0,
  createdAt: '2026-11-30T12:00:00.000Z',
};

function fakeVid(): HvClient {
  return {
    ctl: async () => ({ partitions: [] }),
    call: async () => ({}),
    ticket: async () => 'ticket',
    raw: async () => ({ status: 0, output: null }),
  } as unknown as HvClient;
}

describe('VM configuration', () => {
  let home = '';
  let vmDir = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-config-test-'));
    vmDir = join(home, 'vms');
    fs.mkdirSync(vmDir);
  });
  afterEach(() => {
    rmSync(home, { recursive: true, force: true });
  });
  const put = (file: string, text: string): void => writeFileSync(join(vmDir, file), text);
  const filesIn = (): string[] => readdirSync(vmDir).sort();

  describe('decodeVmConfig', () => {
    const decode = (v: unknown, file = 'c1'): VmConfig | string => config.decodeVmConfig(v, file);
    const bad = (patch: Record<string, unknown>, file = 'c1'): string => {
      const r = decode({ ...GOOD, ...patch }, file);
      expect(r, JSON.stringify(patch)).to.be.a('string');
      return r as string;
    };

    it('accepts a config that buildConfig wrote, and a copy of it comes back', () => {
      const c = buildConfig({ name: 'c1', memory: '32M', vps: '2', workload: 'memdirty:1M' });
      expect(decode(JSON.parse(JSON.stringify(c)))).to.deep.equal(c);
      expect(decode(GOOD)).to.deep.equal(GOOD);
      const { integrationServices: _i, rtcOffsetS: _r, ...older } = GOOD;
      expect(decode(older), 'configs written before the optional fields').to.deep.equal(older);
    });

    it('rejects a name field that differs from the file name', () => {
      expect(bad({}, 'x')).to.match(/name.*"c1".*"x"/);
    });

    it('rejects each field of the wrong type or out of range, naming the field', () => {
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ version: 2 }, /version/],
        [{ version: '1' }, /version/],
        [{ id: '../../etc' }, /id/],
        [{ id: 7 }, /id/],
        [{ name: 'c 1' }, /name/],
        [{ memoryBytes: '64M' }, /memoryBytes/],
        [{ memoryBytes: 1e999 }, /memoryBytes/],
        [{ memoryBytes: 64 * 1024 * 1024 + 1 }, /memoryBytes/],
        [{ memoryBytes: 32 * 1024 ** 3 }, /memoryBytes/],
        [{ vps: 0 }, /vps/],
        [{ vps: 1.5 }, /vps/],
        [{ vps: 1000 }, /vps/],
        [{ workload: 'mine' }, /workload/],
        [{ workload: { toString: 1 } }, /workload/],
        [{ workload: 'memdirty:60M' }, /workload/],
        [{ processor: null }, /processor/],
        [{ processor: { reserve: 0, maximum: 100 } }, /processor\.weight/],
        [{ processor: { reserve: 50, maximum: 40, weight: 100 } }, /reserve/],
        [{ processor: { reserve: 0, maximum: 100, weight: 0 } }, /processor\.weight/],
        [{ processor: { reserve: 0, maximum: 100, weight: 100, turbo: 1 } }, /turbo/],
        [{ integrationServices: { heartbeat: 'yes' } }, /integrationServices\.heartbeat/],
        [{ integrationServices: { vss: true } }, /vss/],
        [{ rtcOffsetS: 0.5 }, /rtcOffsetS/],
        [{ rtcOffsetS: 1e12 }, /rtcOffsetS/],
        [{ createdAt: 'yesterday' }, /createdAt/],
        [{ memroy: 1 }, /memroy/],
      ];
      for (const [patch, re] of cases) expect(bad(patch), JSON.stringify(patch)).to.match(re);
      for (const v of [null, [], 'c1', 7, { ...GOOD, memoryBytes: undefined }]) expect(decode(v), JSON.stringify(v)).to.be.a('string');
    });
  });

  describe('buildConfig', () => {
    it('does not tell a memdirty VM to grow past the largest memory size', () => {
      let m = '';
      try {
        buildConfig({ name: 'm', memory: '4G', workload: 'memdirty:4G' });
      } catch (e) {
        m = (e as Error).message;
      }
      expect(m).to.match(/memdirty/);
      expect(m).to.not.match(/more --memory/);
      expect(m).to.match(/at most memdirty:3071M/);
    });

    it('refuses memory past 4G, which no VM can start with (one typed array of guest memory), and takes 4G', () => {
      for (const memory of ['4100M', '5G', '16G']) expect(() => buildConfig({ name: 'm', memory }), memory).to.throw(/is outside 2M-4G/);
      expect(buildConfig({ name: 'm', memory: '4G' }).memoryBytes).to.equal(4 * 1024 ** 3);
    });

    it('says what is wrong with a known workload\'s parameter, and calls only an unknown name unknown', () => {
      const cases: Array<[string, RegExp]> = [
        ['counter:-1', /counter's rate "-1" is not a whole number of counts a second from 1 to 1000000/],
        ['counter:0.5', /counter's rate "0.5"/],
        ['sleep:0', /sleep's period "0" is not a whole number of milliseconds from 1 to 10000/],
        ['memdirty:1', /memdirty's size "1" is not a size of whole 4 KiB pages/],
        ['idle:5', /idle takes no parameter/],
        ['spin:1', /spin takes no parameter/],
        ['bogus', /workload "bogus" is unknown: use idle/],
        ['bogus:3', /workload "bogus:3" is unknown/],
      ];
      for (const [workload, re] of cases) expect(() => buildConfig({ name: 'm', workload }), workload).to.throw(re);
    });

    it('names the memory a memdirty VM needs', () => {
      expect(() => buildConfig({ name: 'm', memory: '64M', workload: 'memdirty:60M' })).to.throw(/--memory 82M or more/);
      expect(buildConfig({ name: 'm', memory: '82M', workload: 'memdirty:60M' }).memoryBytes).to.equal(82 * 1024 * 1024);
    });
  });

  describe('ConfigStore', () => {
    it('loads the valid configs and lists each invalid file with its reason', () => {
      put('c1.json', JSON.stringify(GOOD));
      put('c2.json', JSON.stringify(GOOD).slice(0, 40));
      put('c3.json', '');
      put('x.json', JSON.stringify({ ...GOOD, id: '3f2b8c1e-8d4a-4f7e-9b1a-000000000000' }));
      put('c4.json', JSON.stringify({ ...GOOD, name: 'c4' }));
      put('notes.txt', 'not a config');
      const { valid, invalid } = new ConfigStore(vmDir).loadAll();
      expect(valid.map((c) => c.name)).to.deep.equal(['c1']);
      const why = Object.fromEntries(invalid.map((i) => [i.name, i.reason]));
      expect(Object.keys(why).sort()).to.deep.equal(['c2', 'c3', 'c4', 'x']);
      expect(why.c2).to.match(/not JSON/);
      expect(why.c3).to.match(/empty/);
      expect(why.x).to.match(/"c1".*"x"/);
      expect(why.c4, 'a copy with the same id').to.match(/id/);
      expect(invalid.find((i) => i.name === 'c2')!.file).to.equal(join(vmDir, 'c2.json'));
      expect(filesIn(), 'nothing is removed or rewritten').to.deep.equal(['c1.json', 'c2.json', 'c3.json', 'c4.json', 'notes.txt', 'x.json']);
    });

    it('a write that fails with ENOSPC throws StorageFailed, leaves no temp file and keeps the old config', () => {
      const st = { failing: null as 'write' | 'fsync' | null };
      const store = new ConfigStore(vmDir, failingIo(st));
      store.save(GOOD);
      const before = readFileSync(join(vmDir, 'c1.json'), 'utf8');
      st.failing = 'write';
      let err: unknown = null;
      try {
        store.save({ ...GOOD, vps: 4 });
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(MgmtFailure);
      expect((err as InstanceType<typeof MgmtFailure>).code).to.equal('StorageFailed');
      expect((err as Error).message).to.equal(`could not write the configuration of VM "c1" to ${join(vmDir, 'c1.json')}: ENOSPC (no space left on device)`);
      expect(filesIn()).to.deep.equal(['c1.json']);
      expect(readFileSync(join(vmDir, 'c1.json'), 'utf8')).to.equal(before);
      st.failing = 'fsync';
      expect(() => store.save({ ...GOOD, vps: 4 })).to.throw(/EIO \(input\/output error\)/);
      expect(filesIn()).to.deep.equal(['c1.json']);
      expect(readFileSync(join(vmDir, 'c1.json'), 'utf8')).to.equal(before);
    });

    it('create never overwrites a file of that name, valid or not', () => {
      const store = new ConfigStore(vmDir);
      put('c1.json', 'garbage');
      expect(() => store.create(GOOD)).to.throw(/exists/);
      expect(readFileSync(join(vmDir, 'c1.json'), 'utf8')).to.equal('garbage');
      expect(filesIn()).to.deep.equal(['c1.json']);
    });

    it('removes stale temp files of a writer that died', () => {
      put('c1.json', JSON.stringify(GOOD));
      put('c1.json.tmp-99999999-1', '');
      new ConfigStore(vmDir).loadAll();
      expect(filesIn()).to.deep.equal(['c1.json']);
    });

    it('lists a FIFO or an oversized file in a config\'s place as invalid, without waiting on it', () => {
      execFileSync('mkfifo', [join(vmDir, 'pipe.json')]);
      put('huge.json', ' '.repeat(2 * 1024 * 1024));
      const { invalid } = new ConfigStore(vmDir).loadAll();
      const why = Object.fromEntries(invalid.map((i) => [i.name, i.reason]));
      expect(why.pipe).to.equal('is a FIFO, not a file');
      expect(why.huge).to.match(/^is 2097152 bytes, more than the 1048576 such a file may have$/);
    });

    it('keeps the config of a VM whose name holds ".json.tmp-": it is no temp file', () => {
      const store = new ConfigStore(vmDir);
      for (const name of ['data.json.tmp-1', 'x.json.tmp-keep', 'y.json.tmp-1-2']) store.create(buildConfig({ name, memory: '16M' }));
      const { valid } = new ConfigStore(vmDir).loadAll();
      expect(valid.map((c) => c.name).sort()).to.deep.equal(['data.json.tmp-1', 'x.json.tmp-keep', 'y.json.tmp-1-2']);
      expect(filesIn().sort()).to.deep.equal(['data.json.tmp-1.json', 'x.json.tmp-keep.json', 'y.json.tmp-1-2.json']);
    });
  });

  describe('VMMS with configs on disk', () => {
    let events: VmStateEvent[] = [];
    const vmms = (io?: typeof fs): Vmms => {
      events = [];
      return new Vmms({
        home, hostId: 'test', hvPid: process.pid, store: new ConfigStore(vmDir, io), vid: fakeVid(),
        log: processLogger(join(home, 'logs'), 'root.log', { role: 'root' }), publish: (ev) => events.push(ev), vmDir, vmbusTransport: 'shm',
      });
    };
    const failure = async (p: Promise<unknown> | (() => unknown)): Promise<InstanceType<typeof MgmtFailure>> => {
      try {
        await (typeof p === 'function' ? p() : p);
      } catch (e) {
        expect(e).to.be.instanceOf(MgmtFailure);
        return e as InstanceType<typeof MgmtFailure>;
      }
      throw new Error('expected a MgmtFailure');
    };
    const byName = (vs: VmInfo[], n: string): VmInfo | undefined => vs.find((v) => v.name === n);

    it('lists a truncated config as Invalid with the reason, and keeps its file', async () => {
      put('c1.json', JSON.stringify(GOOD).slice(0, 50));
      const v = vmms();
      const c1 = byName(await v.list(), 'c1')!;
      expect(c1.state).to.equal('Invalid');
      expect(c1.lastStateReason).to.match(/c1\.json/).and.match(/not JSON/);
      expect(filesIn()).to.deep.equal(['c1.json']);
    });

    it('refuses vm new with the name of an invalid config and never overwrites it', async () => {
      put('c1.json', '{"version":1,');
      const v = vmms();
      const e = await failure(() => v.newVm({ name: 'c1' }));
      expect(e.message).to.match(/^a VM config for "c1" exists but is invalid: .*; fix or delete .*vms\/c1\.json$/);
      expect(readFileSync(join(vmDir, 'c1.json'), 'utf8')).to.equal('{"version":1,');
    });

    it('refuses every operation on an Invalid VM except list and delete, with the reason', async () => {
      put('c1.json', '');
      const v = vmms();
      const ops: Array<[string, () => Promise<unknown> | unknown]> = [
        ['start', () => v.start('c1')],
        ['stop', () => v.stop('c1')],
        ['turn off', () => v.turnOff('c1')],
        ['save', () => v.save('c1')],
        ['pause', () => v.pause('c1')],
        ['resume', () => v.resume('c1')],
        ['set-processor', () => v.setProcessor('c1', { weight: 5 })],
        ['ic', () => v.ic('c1', {})],
        ['kvp', () => v.kvp('c1', { op: 'list' })],
        ['status', () => v.status('c1')],
        ['peek', () => v.peek('c1', 0, 16)],
        ['debug hypercall', () => v.debugHypercall({ call: 'GetVpRegisters', as: 'c1' })],
      ];
      for (const [what, op] of ops) {
        const e = await failure(op);
        expect(e.message, what).to.match(/configuration .*c1\.json is invalid: it is empty/);
      }
      expect(filesIn()).to.deep.equal(['c1.json']);
      expect(v.delete('c1')).to.deep.equal({ name: 'c1', deleted: true });
      expect(filesIn()).to.deep.equal([]);
      expect(await v.list()).to.deep.equal([]);
    });

    it('a config whose name field says "c1" does not hide the real c1, and vm delete c1 removes c1.json only', async () => {
      put('c1.json', JSON.stringify(GOOD));
      put('x.json', JSON.stringify({ ...GOOD, id: '3f2b8c1e-8d4a-4f7e-9b1a-000000000000' }));
      const v = vmms();
      const vs = await v.list();
      expect(byName(vs, 'c1')!.state).to.equal('Off');
      expect(byName(vs, 'c1')!.vps).to.equal(2);
      expect(byName(vs, 'x')!.state).to.equal('Invalid');
      v.delete('c1');
      expect(filesIn()).to.deep.equal(['x.json']);
      expect(byName(await v.list(), 'x')!.state).to.equal('Invalid');
    });

    it('an Invalid VM whose file was fixed by hand is usable again', async () => {
      put('c1.json', '');
      const v = vmms();
      put('c1.json', JSON.stringify(GOOD));
      const r = await v.setProcessor('c1', { weight: 7 });
      expect(r.state).to.equal('Off');
      expect(r.processor.weight).to.equal(7);
      expect(events.map((e) => e.state)).to.include('Off');
    });

    it('set-processor that cannot write the config changes neither memory nor disk', async () => {
      put('c1.json', JSON.stringify(GOOD));
      const st = { failing: null as 'write' | 'fsync' | null };
      const v = vmms(failingIo(st));
      st.failing = 'write';
      const e = await failure(v.setProcessor('c1', { weight: 5, maximum: 50 }));
      expect(e.code).to.equal('StorageFailed');
      expect(e.message).to.match(/^could not write the configuration of VM "c1" to .*c1\.json: ENOSPC \(no space left on device\)$/);
      expect(byName(await v.list(), 'c1')!.processor).to.deep.equal(GOOD.processor);
      expect(JSON.parse(readFileSync(join(vmDir, 'c1.json'), 'utf8'))).to.deep.equal(GOOD);
      expect(filesIn()).to.deep.equal(['c1.json']);
      st.failing = null;
      expect((await v.setProcessor('c1', { weight: 5 })).processor.weight).to.equal(5);
      expect(JSON.parse(readFileSync(join(vmDir, 'c1.json'), 'utf8')).processor.weight).to.equal(5);
    });

    it('ic --disable that cannot write the config changes neither memory nor disk', async () => {
      put('c1.json', JSON.stringify(GOOD));
      const st = { failing: null as 'write' | 'fsync' | null };
      const v = vmms(failingIo(st));
      st.failing = 'fsync';
      const e = await failure(v.ic('c1', { disable: 'kvp' }));
      expect(e.code).to.equal('StorageFailed');
      expect((await v.ic('c1', {})).find((s) => s.service === 'kvp')!.enabled).to.equal(true);
      expect(JSON.parse(readFileSync(join(vmDir, 'c1.json'), 'utf8'))).to.deep.equal(GOOD);
      expect(filesIn()).to.deep.equal(['c1.json']);
    });

    /** Makes VM c1 look Running with a worker link that records requests and may refuse them. */
    const fakeRunning = (v: Vmms, refuse: boolean): Array<Record<string, unknown>> => {
      const sent: Array<Record<string, unknown>> = [];
      const rec = (v as unknown as { vms: Map<string, { state: number; link: unknown }> }).vms.get('c1')!;
      rec.state = 2;
      rec.link = {
        request: async (req: Record<string, unknown>) => {
          sent.push(req);
          if (refuse) throw new MgmtFailure('Unavailable', 'the worker refused');
          return req.t === 'ic' ? [] : true;
        },
        close: () => undefined,
      };
      return sent;
    };

    it('a running VM gets a change only after it is on disk', async () => {
      put('c1.json', JSON.stringify(GOOD));
      const st = { failing: 'write' as 'write' | 'fsync' | null };
      const v = vmms(failingIo(st));
      const sent = fakeRunning(v, false);
      expect((await failure(v.setProcessor('c1', { weight: 5 }))).code).to.equal('StorageFailed');
      expect((await failure(v.ic('c1', { disable: 'kvp' }))).code).to.equal('StorageFailed');
      expect(sent, 'nothing reached the VM').to.deep.equal([]);
      st.failing = null;
      await v.setProcessor('c1', { weight: 5 });
      expect(sent.map((r) => r.t)).to.deep.equal(['processor']);
    });

    it('a change the running VM refuses is taken back on disk and in memory', async () => {
      put('c1.json', JSON.stringify(GOOD));
      const v = vmms();
      const sent = fakeRunning(v, true);
      expect((await failure(v.setProcessor('c1', { weight: 5 }))).message).to.match(/the worker refused/);
      expect((await failure(v.ic('c1', { disable: 'kvp' }))).message).to.match(/the worker refused/);
      expect(sent.map((r) => r.t)).to.deep.equal(['processor', 'ic']);
      expect(JSON.parse(readFileSync(join(vmDir, 'c1.json'), 'utf8'))).to.deep.equal(GOOD);
      expect(filesIn()).to.deep.equal(['c1.json']);
      const info = (v as unknown as { vms: Map<string, { config: VmConfig }> }).vms.get('c1')!.config;
      expect(info).to.deep.equal(GOOD);
    });

    it('vm new that cannot write the config creates no VM and leaves no file', async () => {
      const st = { failing: 'write' as 'write' | 'fsync' | null };
      const v = vmms(failingIo(st));
      const e = await failure(() => v.newVm({ name: 'n1' }));
      expect(e.code).to.equal('StorageFailed');
      expect(await v.list()).to.deep.equal([]);
      expect(filesIn()).to.deep.equal([]);
      st.failing = null;
      expect(v.newVm({ name: 'n1' }).name).to.equal('n1');
      expect(filesIn()).to.deep.equal(['n1.json']);
    });
  });
});
