/**
 * The cluster record on disk (cluster/cluster.json) is an edge too: whatever it holds, reading it
 * gives the cluster or a ClusterError naming the file, never anything else (seeded fuzz over random
 * bytes, random JSON and valid records with one field replaced).
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '@hvlab/protocol';
import { spawn, spawnSync } from 'node:child_process';
import { procStartTime } from '@hvlab/shm/procfs';
import { ClusterError, TopologyError, keepLogsOf, parseTopology, readCluster, clusterRecordFile, clusterDir, fabricFile, readFabricFile, clusterGoingDown, goingDownFile, goingDownState, removeStaleGoingDown } from '../src/index.js';

const SOURCE = 'name: lab\nhosts:\n  h1: {}\n  h2: {}\nlinks:\n  - endpoints: [h1, h2]\nvms:\n  a: { host: h1, memory: 16M }\n';
const GOOD = { version: 2, name: 'lab', file: '/x/lab.yaml', source: SOURCE, createdAt: '2026-12-01T00:00:00Z', mode: 'loopback', modeReason: 'test', listen: '127.1.2.1', fabricPort: 7740, gateway: '127.1.2.1' };

describe('the cluster record', () => {
  let home: string;
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-rec-'));
    mkdirSync(clusterDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('reads back a record it wrote, and is null without one', () => {
    expect(readCluster(join(home, 'none'))).to.equal(null);
    writeFileSync(clusterRecordFile(home), JSON.stringify(GOOD));
    const c = readCluster(home)!;
    expect(c.topology.hosts.map((h) => h.name)).to.deep.equal(['h1', 'h2']);
    expect(c.record.mode).to.equal('loopback');
  });

  it('reads a record whose topology an earlier hvlab took with YAML tags (as their values), though a file with them is refused now', () => {
    // Refused in a file since tags are (a cluster up, a topology check)...
    const tagged = SOURCE.replace('name: lab', 'name: !!str lab').replace('memory: 16M', 'memory: !!str 16M');
    expect(() => parseTopology(tagged, 'lab.yaml')).to.throw(TopologyError, /a tag \(!!str\) is not read/);
    // ...but a cluster brought up from such a file by an earlier hvlab still runs: its record reads.
    writeFileSync(clusterRecordFile(home), JSON.stringify({ ...GOOD, source: tagged }));
    const c = readCluster(home)!;
    expect(c.topology.name).to.equal('lab');
    expect(c.topology.vms.map((v) => v.memoryBytes)).to.deep.equal([16 * 1024 * 1024]);
  });

  it('reads a record with its network (version 3), and one of an earlier hvlab without (version 2); refuses a network hvlab does not give', () => {
    const good3 = { ...GOOD, version: 3, listen: '127.101.2.1', gateway: '127.101.2.1', network: { tag: '0123abcd', subnet: '127.101.2.0/24', instance: '0123456789ab' } };
    writeFileSync(clusterRecordFile(home), JSON.stringify(good3));
    expect(readCluster(home)!.record.network).to.deep.equal(good3.network);
    writeFileSync(clusterRecordFile(home), JSON.stringify(GOOD));
    expect(readCluster(home)!.record.network).to.equal(undefined);
    const bad: unknown[] = [
      undefined, null, 'x', { ...good3.network, tag: '0123' }, { ...good3.network, tag: '0123ABCD' }, { ...good3.network, instance: 'x' },
      { ...good3.network, subnet: '10.200.0.0/24' }, { ...good3.network, subnet: '127.101.3.0/24' }, { ...good3.network, subnet: '127.101.2.0/16' },
    ];
    for (const network of bad) {
      writeFileSync(clusterRecordFile(home), JSON.stringify({ ...good3, network }));
      expect(() => readCluster(home), JSON.stringify(network)).to.throw(ClusterError, clusterRecordFile(home));
    }
    writeFileSync(clusterRecordFile(home), JSON.stringify({ ...GOOD, network: good3.network }));
    expect(() => readCluster(home), 'version 2 with a network').to.throw(ClusterError, clusterRecordFile(home));
  });

  it('never throws anything but ClusterError, whatever the file holds (seeded, 1500 cases)', () => {
    const next = seededRandom(0xc1);
    const values: unknown[] = [null, 0, -1, 1.5, '', 'x', true, [], {}, { toString: 1 }, 'name: other\nhosts: { h1: {} }\n', SOURCE.replace('h2: {}', 'h2: { lps: 0 }')];
    for (let i = 0; i < 1500; i++) {
      let text: string;
      const r = next();
      if (r < 0.3) text = Buffer.from(Array.from({ length: Math.floor(next() * 80) }, () => Math.floor(next() * 256))).toString('latin1');
      else if (r < 0.5) text = JSON.stringify(values[Math.floor(next() * values.length)]);
      else {
        const base: Record<string, unknown> = next() < 0.5 ? GOOD : { ...GOOD, version: 3, listen: '127.101.2.1', gateway: '127.101.2.1', network: { tag: '0123abcd', subnet: '127.101.2.0/24', instance: '0123456789ab' } };
        const keys = Object.keys(base);
        const k = keys[Math.floor(next() * keys.length)]!;
        text = JSON.stringify({ ...base, [k]: values[Math.floor(next() * values.length)] });
      }
      writeFileSync(clusterRecordFile(home), text);
      try {
        readCluster(home);
      } catch (e) {
        expect(e, text).to.be.instanceOf(ClusterError);
        expect((e as Error).message).to.include(clusterRecordFile(home));
      }
    }
  });
  it('reads the fabric\'s pid file only when it is one, and never throws (seeded, 1500 cases)', () => {
    const home = mkdtempSync(join(tmpdir(), 'hvlab-fab-'));
    try {
      mkdirSync(clusterDir(home), { recursive: true });
      expect(readFabricFile(home)).to.equal(null);
      writeFileSync(fabricFile(home), JSON.stringify({ pid: 123, port: 7740, listen: '10.0.0.1' }));
      // An older fabric's file (no supervisor): what it lacks reads as none.
      expect(readFabricFile(home)).to.deep.equal({ pid: 123, port: 7740, supervisor: null, restarts: 0, startedAt: null, failing: null });
      writeFileSync(fabricFile(home), JSON.stringify({ pid: 123, supervisor: 122, port: 7740, listen: '10.0.0.1', startedAt: '2026-12-01T00:00:00.000Z', restarts: 2 }));
      expect(readFabricFile(home)).to.deep.equal({ pid: 123, port: 7740, supervisor: 122, restarts: 2, startedAt: '2026-12-01T00:00:00.000Z', failing: null });
      // Starts failing: why, since, tries; a failure that does not check reads as none.
      const failing = { why: 'the fabric cannot listen on 10.0.0.1:7740: address already in use', since: '2026-12-01T00:00:01.000Z', tries: 3 };
      writeFileSync(fabricFile(home), JSON.stringify({ pid: 123, supervisor: 122, port: 7740, restarts: 2, failing }));
      expect(readFabricFile(home)?.failing).to.deep.equal(failing);
      for (const bad of [{ ...failing, tries: 0 }, { ...failing, tries: 1.5 }, { ...failing, since: 'yesterday' }, { ...failing, why: 7 }, { ...failing, why: 'x'.repeat(2001) }, 'failing', null, [failing]]) {
        writeFileSync(fabricFile(home), JSON.stringify({ pid: 123, supervisor: 122, port: 7740, failing: bad }));
        expect(readFabricFile(home)?.failing, JSON.stringify(bad)).to.equal(null);
      }
      writeFileSync(fabricFile(home), JSON.stringify({ pid: 123, supervisor: -4, port: 7740, startedAt: 'x'.repeat(100), restarts: 1.5 }));
      expect(readFabricFile(home)).to.deep.equal({ pid: 123, port: 7740, supervisor: null, restarts: 0, startedAt: null, failing: null });
      const next = seededRandom(0xfab1);
      const texts = ['null', '[]', '"x"', '{"pid":-1,"port":1}', '{"pid":1,"port":70000}', '{"pid":1.5,"port":1}', '{"pid":1}', '{', '{"pid":1,"port":1,"failing":{"why":"w","since":"2026-12-01T00:00:00Z","tries":2}}'];
      for (let i = 0; i < 1500; i++) {
        let t = texts[Math.floor(next() * texts.length)]!;
        if (next() < 0.5) {
          const b = Buffer.from(JSON.stringify({ pid: 5, port: 80, ...(next() < 0.5 ? { failing: { why: 'w', since: '2026-12-01T00:00:00Z', tries: 2 } } : {}) }));
          b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
          t = b.toString('latin1');
        }
        writeFileSync(fabricFile(home), t);
        const r = readFabricFile(home);
        if (r !== null) expect(Number.isSafeInteger(r.pid) && r.pid > 0 && r.port >= 1 && r.port <= 65535 && Number.isSafeInteger(r.restarts) && r.restarts >= 0 && (r.supervisor === null || r.supervisor > 0)
          && (r.failing === null || (typeof r.failing.why === 'string' && Number.isSafeInteger(r.failing.tries) && r.failing.tries >= 1 && Number.isFinite(Date.parse(r.failing.since))))).to.equal(true);
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('takes a going-down marker for a cluster going down only while the "cluster down" that wrote it runs: one whose writer is gone, or whose pid another process took, is stale', () => {
    writeFileSync(clusterRecordFile(home), JSON.stringify(GOOD));
    expect(goingDownState(home)).to.deep.equal({ state: 'none' });
    expect(clusterGoingDown(home)).to.equal(false);
    // A writer that runs: live.
    const writer = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const pid = writer.pid!;
      writeFileSync(goingDownFile(home), `${pid} ${procStartTime(pid)}\n`);
      expect(goingDownState(home)).to.deep.equal({ state: 'live', pid });
      expect(clusterGoingDown(home)).to.equal(true);
      // An older hvlab's marker (its pid alone) while that pid runs: live.
      writeFileSync(goingDownFile(home), `${pid}\n`);
      expect(clusterGoingDown(home)).to.equal(true);
      // The same pid with another start time: another process took it.
      writeFileSync(goingDownFile(home), `${pid} ${procStartTime(pid)! + 1}\n`);
      expect(goingDownState(home)).to.include({ state: 'stale', pid });
      expect(clusterGoingDown(home)).to.equal(false);
    } finally {
      writer.kill('SIGKILL');
    }
    // A writer that is gone (killed, as a "cluster down" killed half way).
    const gone = spawnSync('true').pid;
    writeFileSync(goingDownFile(home), `${gone} 1\n`);
    const st = goingDownState(home);
    expect(st).to.deep.equal({ state: 'stale', pid: gone, why: `the "cluster down" that wrote it (pid ${gone}) is gone`, text: `${gone} 1\n` });
    expect(clusterGoingDown(home)).to.equal(false);
    for (const junk of ['', 'x', '12 34 56\n', '-1\n']) {
      writeFileSync(goingDownFile(home), junk);
      expect(goingDownState(home).state, JSON.stringify(junk)).to.equal('stale');
      expect(clusterGoingDown(home)).to.equal(false);
    }
    // Removed only if it is still the stale one: a marker a new "cluster down" wrote meanwhile stays.
    writeFileSync(goingDownFile(home), `${process.pid} ${procStartTime(process.pid)}\n`);
    expect(removeStaleGoingDown(home, `${gone} 1\n`)).to.equal(false);
    expect(goingDownState(home)).to.deep.equal({ state: 'live', pid: process.pid });
    writeFileSync(goingDownFile(home), `${gone} 1\n`);
    expect(removeStaleGoingDown(home, `${gone} 1\n`)).to.equal(true);
    expect(goingDownState(home)).to.deep.equal({ state: 'none' });
    expect(readdirSync(clusterDir(home)), 'nothing left beside it').to.deep.equal(['cluster.json']);
    // No record: gone, and so going down whatever the marker says.
    rmSync(clusterRecordFile(home));
    expect(clusterGoingDown(home)).to.equal(true);
  });
});

describe("a failed host's kept logs (keepLogsOf)", () => {
  it('moves the logs to DIR/HOST, replacing what an earlier failure kept; one that cannot be kept leaves the earlier ones whole and no part of its own', () => {
    const root = mkdtempSync(join(tmpdir(), 'hvlab-kept-'));
    try {
      const kept = join(root, 'cluster-up-failed');
      const logs = (name: string, text: string): string => {
        const d = join(root, name, 'logs');
        mkdirSync(d, { recursive: true });
        writeFileSync(join(d, 'hypervisor.log'), text);
        return d;
      };
      expect(keepLogsOf(logs('a', 'first failure'), kept, 'h1')).to.deep.equal({ dir: join(kept, 'h1') });
      expect(readFileSync(join(kept, 'h1', 'hypervisor.log'), 'utf8')).to.equal('first failure');
      // The next failure's logs replace the whole directory.
      expect(keepLogsOf(logs('b', 'second failure'), kept, 'h2')).to.deep.equal({ dir: join(kept, 'h2') });
      expect(readdirSync(kept)).to.deep.equal(['h2']);
      // A move that fails part-way (here: its place cannot be made) keeps the earlier logs as they
      // were: they were removed before the move was known to work.
      const r = keepLogsOf(logs('c', 'third failure'), kept, 'x/h3');
      expect(r).to.have.property('error');
      expect(readdirSync(kept)).to.deep.equal(['h2']);
      expect(readFileSync(join(kept, 'h2', 'hypervisor.log'), 'utf8')).to.equal('second failure');
      expect(readdirSync(root).filter((e) => e.includes('.new-')), 'a staged copy left beside it').to.deep.equal([]);
      // Logs that are not there: said, and nothing changes.
      expect(keepLogsOf(join(root, 'none'), kept, 'h4')).to.deep.equal({ error: `${join(root, 'none')} does not exist` });
      expect(existsSync(join(kept, 'h2'))).to.equal(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
