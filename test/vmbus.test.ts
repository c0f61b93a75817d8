import { expect } from 'chai';
import type { HostInfo, VmInfo, IcServiceInfo as IcEntry, KvpEntry } from '@hvlab/protocol';
import { TestHost, eventually, sleep } from './harness.js';
import { hostProcesses } from '@hvlab/host';

const VERSIONS: Partial<Record<IcEntry['service'], string>> = { heartbeat: '3.0', shutdown: '3.2', timesync: '4.0', kvp: '5.0' };
const SERVICES = Object.keys(VERSIONS) as Array<IcEntry['service']>;

const entry = (list: IcEntry[], s: IcEntry['service']): IcEntry => {
  const e = list.find((x) => x.service === s);
  if (!e) throw new Error(`vm ic lists no ${s} service: ${JSON.stringify(list)}`);
  return e;
};
const healthy = (list: IcEntry[], services: readonly IcEntry['service'][] = SERVICES): boolean =>
  services.every((s) => {
    const e = list.find((x) => x.service === s);
    return e !== undefined && e.enabled && e.status === 'OK' && e.version === VERSIONS[s];
  });

/** SIGSTOP/SIGCONT of a process that may already be gone. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

for (const transport of ['shm', 'remote'] as const) {
  describe(`VMBus and integration services over ${transport}`, function () {
    this.timeout(120000);
    // The heartbeat asks every 1 s here (2 s by default), so a frozen guest is LostCommunication 3 s
    // after its last answer (5 s), and OK within a second of running again.
    const h = new TestHost({ HVLAB_IC_TIMESYNC_MS: '500', HVLAB_IC_HEARTBEAT_MS: '1000' });
    const vm = 'alpha';

    const ic = (): Promise<IcEntry[]> => h.json<IcEntry[]>('vm', 'ic', vm);
    const vmInfo = async (): Promise<VmInfo> => {
      const v = (await h.json<VmInfo[]>('vm', 'list')).find((x) => x.name === vm);
      if (!v) throw new Error(`VM ${vm} is not listed`);
      return v;
    };
    /** Polls `vm ic` until `cond` holds; returns the last list seen (for the assertion message). */
    const icUntil = async (cond: (l: IcEntry[]) => boolean, ms: number): Promise<{ held: boolean; last: IcEntry[] }> => {
      let last: IcEntry[] = [];
      const held = await eventually(async () => cond((last = await ic())), ms);
      return { held, last };
    };

    before(async () => {
      await h.ok('up', '--lps', '2', '--vmbus-transport', transport);
      await h.ok('vm', 'new', vm, '--memory', '16M', '--rtc-offset', '3600');
    });
    after(async () => {
      await h.destroy();
      const left = h.leftovers();
      expect(left.pids, 'processes left behind').to.deep.equal([]);
      expect(left.shm, '/dev/shm files left behind').to.deep.equal([]);
    });

    it('reports the transport, and after start all four services reach OK with their versions and a rising heartbeat', async () => {
      const info = await h.json<HostInfo>('host', 'info');
      expect(info.vmbusTransport).to.equal(transport);
      await h.ok('vm', 'start', vm);
      const { held, last } = await icUntil((l) => healthy(l), 20000);
      expect(held, JSON.stringify(last)).to.equal(true);
      expect(last.map((e) => e.service).sort()).to.deep.equal([...SERVICES].sort());
      for (const s of SERVICES) expect(entry(last, s).version, s).to.equal(VERSIONS[s]);
      const first = entry(last, 'heartbeat').sequence;
      expect(first).to.be.a('number');
      let seq = first!;
      const rising = await eventually(async () => (seq = entry(await ic(), 'heartbeat').sequence ?? -1) > first!, 10000);
      expect(rising, `heartbeat sequence ${first} -> ${seq}`).to.equal(true);
    });

    it('KVP: external keys round-trip, the guest pool is read-only, and the auto pool describes the guest', async () => {
      // External pool: set, get, list, delete, get fails.
      await h.ok('vm', 'kvp', vm, 'set', 'hvlab.test', 'hello world');
      const got = await h.json<KvpEntry>('vm', 'kvp', vm, 'get', 'hvlab.test');
      expect(got).to.deep.equal({ pool: 'external', key: 'hvlab.test', value: 'hello world' });
      const listed = await h.json<KvpEntry[]>('vm', 'kvp', vm, 'list', '--pool', 'external');
      expect(listed).to.deep.include({ pool: 'external', key: 'hvlab.test', value: 'hello world' });
      await h.ok('vm', 'kvp', vm, 'delete', 'hvlab.test');
      const gone = await h.run('vm', 'kvp', vm, 'get', 'hvlab.test');
      expect(gone.code, gone.stderr).to.equal(1);
      expect(gone.stderr).to.match(/has no KVP key/);
      const listedAfter = await h.json<KvpEntry[]>('vm', 'kvp', vm, 'list');
      expect(listedAfter.map((e) => e.key)).to.not.include('hvlab.test');

      // What reaches a table is shown, not acted on: a newline or an escape sequence in a value
      // broke the table and reached the terminal as it was. JSON and a piped get keep the bytes.
      const odd = 'a\nb\x1b[31mred\tz';
      await h.ok('vm', 'kvp', vm, 'set', 'hvlab.odd', odd);
      const table = await h.ok('vm', 'kvp', vm, 'list', '--pool', 'external');
      expect(table).to.include('hvlab.odd  a\\nb\\x1b[31mred\\tz');
      expect(table).to.not.include('\x1b');
      expect((await h.json<KvpEntry>('vm', 'kvp', vm, 'get', 'hvlab.odd')).value).to.equal(odd);
      expect(await h.ok('vm', 'kvp', vm, 'get', 'hvlab.odd')).to.equal(`${odd}\n`);
      await h.ok('vm', 'kvp', vm, 'delete', 'hvlab.odd');

      // The guest pool belongs to the guest.
      const refused = await h.run('vm', 'kvp', vm, 'set', 'hvlab.workload', 'nope', '--pool', 'guest');
      expect(refused.code, refused.stderr).to.equal(1);
      expect(refused.stderr.trim()).to.not.equal('');
      const guest = await h.json<KvpEntry[]>('vm', 'kvp', vm, 'list', '--pool', 'guest');
      expect(guest.map((e) => e.key)).to.include('hvlab.workload');
      expect(guest.find((e) => e.key === 'hvlab.workload')!.value).to.not.equal('nope');
      for (const e of guest) expect(e.pool).to.equal('guest');

      // The auto pool: the guest's name and a growing uptime.
      const fqdn = await h.json<KvpEntry>('vm', 'kvp', vm, 'get', 'FullyQualifiedDomainName', '--pool', 'auto');
      expect(fqdn).to.deep.equal({ pool: 'auto', key: 'FullyQualifiedDomainName', value: vm });
      const auto = await h.json<KvpEntry[]>('vm', 'kvp', vm, 'list', '--pool', 'auto');
      expect(auto.map((e) => e.key)).to.include.members(['FullyQualifiedDomainName', 'OSName', 'UptimeSeconds']);
      const uptime = async (): Promise<number> => {
        const v = (await h.json<KvpEntry>('vm', 'kvp', vm, 'get', 'UptimeSeconds', '--pool', 'auto')).value;
        expect(v, 'UptimeSeconds').to.match(/^\d+(\.\d+)?$/);
        return Number(v);
      };
      const u0 = await uptime();
      let u1 = u0;
      const grew = await eventually(async () => (u1 = await uptime()) > u0, 10000);
      expect(grew, `UptimeSeconds ${u0} -> ${u1}`).to.equal(true);
    });

    it('time sync measures the --rtc-offset of the guest clock and corrects it', async () => {
      const { held, last } = await icUntil((l) => {
        const t = entry(l, 'timesync');
        return t.status === 'OK' && (t.samples ?? 0) >= 2 && typeof t.offsetMs === 'number' && Math.abs(t.offsetMs) <= 2000;
      }, 30000);
      const t = entry(last, 'timesync');
      expect(held, JSON.stringify(t)).to.equal(true);
      expect(t.initialOffsetMs, JSON.stringify(t)).to.be.a('number');
      expect(t.initialOffsetMs!, JSON.stringify(t)).to.be.closeTo(3600000, 60000);
    });

    it('kvp can be removed and added again while the VM runs', async () => {
      try {
        await h.ok('vm', 'ic', vm, '--disable', 'kvp');
        const off = await icUntil((l) => {
          const k = entry(l, 'kvp');
          return !k.enabled && k.status === 'NoContact';
        }, 10000);
        expect(off.held, JSON.stringify(off.last)).to.equal(true);
        const list = await h.run('vm', 'kvp', vm, 'list');
        expect(list.code, list.stderr).to.equal(1);
        expect(list.stderr.trim()).to.not.equal('');
        const others = await ic();
        expect(healthy(others, ['heartbeat', 'shutdown', 'timesync']), JSON.stringify(others)).to.equal(true);
      } finally {
        const en = await h.run('vm', 'ic', vm, '--enable', 'kvp', '--json');
        expect(en.code, en.stderr).to.equal(0);
        // It answers once the guest has negotiated the service (up to 5 s), not with NoContact at once.
        const kvp = entry(JSON.parse(en.stdout) as IcEntry[], 'kvp');
        expect(kvp.enabled).to.equal(true);
        expect(kvp.status, 'the answer waited for the negotiation').to.equal('OK');
        expect(kvp.version).to.equal('5.0');
      }
      const on = await icUntil((l) => healthy(l), 20000);
      expect(on.held, JSON.stringify(on.last)).to.equal(true);
      await h.ok('vm', 'kvp', vm, 'set', 'hvlab.again', 'back');
      expect(await h.json<KvpEntry>('vm', 'kvp', vm, 'get', 'hvlab.again')).to.deep.equal({ pool: 'external', key: 'hvlab.again', value: 'back' });
    });

    it('a frozen guest loses the heartbeat, and recovers it when it runs again', async () => {
      const pid = (await vmInfo()).pids.partition;
      expect(pid).to.be.a('number');
      let seqFrozen = 0;
      try {
        signal(pid!, 'SIGSTOP');
        const lost = await icUntil((l) => entry(l, 'heartbeat').status === 'LostCommunication', 10000);
        expect(lost.held, JSON.stringify(lost.last)).to.equal(true);
        seqFrozen = entry(lost.last, 'heartbeat').sequence ?? 0;
      } finally {
        signal(pid!, 'SIGCONT');
      }
      const back = await icUntil((l) => {
        const hb = entry(l, 'heartbeat');
        return hb.status === 'OK' && (hb.sequence ?? 0) > seqFrozen;
      }, 20000);
      expect(back.held, JSON.stringify(back.last)).to.equal(true);
      expect((await vmInfo()).state).to.equal('Running');
    });

    it('vm stop shuts the guest down through the shutdown service', async () => {
      const before = await vmInfo();
      expect(before.state).to.equal('Running');
      const r = await h.run('vm', 'stop', vm, '--json');
      expect(r.code, r.stderr).to.equal(0);
      const after = await vmInfo();
      expect(after.state).to.equal('Off');
      expect(after.lastStateReason).to.equal('shut down by the guest');
      const pids = [before.pids.partition!, before.pids.vmwp!];
      const gone = await eventually(() => !hostProcesses(h.hostId).some((p) => pids.includes(p)), 10000);
      expect(gone, `pids ${pids.join(', ')} still alive`).to.equal(true);
      // The guest unloaded VMBus before it stopped its VPs, so the unload's answers reached it: no
      // unload timed out (every stop waited 5 s for it while the VPs stopped first).
      const logs = (await h.run('logs', '--vm', vm)).stdout;
      expect(logs).to.include('the guest unloaded VMBus');
      expect(logs).to.not.include('VMBus unload incomplete');
    });

    it('vm stop of a frozen guest times out and names --force, which then turns it off', async () => {
      await h.ok('vm', 'start', vm);
      const { held, last } = await icUntil((l) => healthy(l, ['shutdown']), 20000);
      expect(held, JSON.stringify(last)).to.equal(true);
      const pid = (await vmInfo()).pids.partition;
      expect(pid).to.be.a('number');
      try {
        signal(pid!, 'SIGSTOP');
        const r = await h.run('vm', 'stop', vm, '--timeout', '1');
        expect(r.code, r.stderr).to.equal(1);
        expect(r.stderr).to.include('--force');
        expect((await vmInfo()).state).to.equal('Running');
        const f = await h.run('vm', 'stop', vm, '--timeout', '1', '--force');
        expect(f.code, f.stderr).to.equal(0);
        expect((await vmInfo()).state).to.equal('Off');
      } finally {
        signal(pid!, 'SIGCONT');
      }
    });

    // The wait is the root's, whatever carries the request: over one transport (the test waits 12.5 s).
    if (transport === 'shm') it('vm stop waits the whole --timeout for the guest\'s answer (it gave up after 10 s, whatever was asked)', async () => {
      await h.ok('vm', 'start', vm);
      const { held, last } = await icUntil((l) => healthy(l, ['shutdown']), 20000);
      expect(held, JSON.stringify(last)).to.equal(true);
      const pid = (await vmInfo()).pids.partition;
      expect(pid).to.be.a('number');
      let resumed = false;
      try {
        signal(pid!, 'SIGSTOP');
        const stopping = h.run('vm', 'stop', vm, '--timeout', '25');
        // Frozen past the old 10 s (and its 2 s of slack), then let go: the guest answers the
        // request that waited, and shuts down within the 25 s asked for.
        await sleep(12500);
        signal(pid!, 'SIGCONT');
        resumed = true;
        const r = await stopping;
        expect(r.code, r.stderr).to.equal(0);
        expect((await vmInfo()).state).to.equal('Off');
      } finally {
        if (!resumed) signal(pid!, 'SIGCONT');
      }
    });
  });
}
