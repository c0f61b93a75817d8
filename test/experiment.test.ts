/**
 * An experiment with real processes: `runExperiment` brings up two hosts under a temporary
 * HVLAB_HOME, sets their link's rate, measures it, moves a memdirty VM offline and with pre-copy
 * once each, writes results.json, results.csv, results.md and the four SVG plots, and leaves
 * nothing: no host process, /dev/shm file, fabric, namespace or temporary home.
 */
import { expect } from 'chai';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostProcesses } from '@hvlab/host';
import { REPORT_FILES, clusterTag, fabricPids, networkLeftovers, runExperiment, type ExperimentReport } from '@hvlab/cluster';
import { KILLED_RUN_LEASE_MS, TestHost, eventually, experimentLeft, interruptExperimentRun, killExperimentRun, shmFiles } from './harness.js';

/** An experiment on a new cluster of its own: one offline move of a small counter VM. */
const oneOfflineMove = (name: string): string => `name: ${name}
kind: migration
seed: 5
cluster: new
vm: { memory: 16M, vps: 1, workload: counter }
methods: [offline]
repetitions: 1
`;

const EXPERIMENT = `name: e2e-small
kind: migration
seed: 11
cluster: new
vm: { memory: 32M, vps: 1, workload: memdirty:4M }
link: { rate: 200mbit, delay: 1ms }
methods: [offline, precopy]
options: { maxPasses: 6 }
repetitions: 1
warmup: 500ms
`;

/** The runner's temporary homes (mkdtemp's six characters after the prefix): the packages' tests, run beside these, make hvlab-chaos-report-… and the like. */
const tempHomes = (): string[] => readdirSync(tmpdir()).filter((d) => /^hvlab-experiment-[A-Za-z0-9]{6}$/.test(d));

describe('experiment run with real processes', function () {
  this.timeout(300000);
  // Made when a test of this block runs: one that --grep leaves out runs no `after` either.
  let dir = '';
  before(() => void (dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-e2e-'))));
  after(() => void (dir && rmSync(dir, { recursive: true, force: true })));

  it('moves a memdirty VM offline and with pre-copy over a rate-limited link, writes every file of the report, and leaves nothing', async () => {
    const file = join(dir, 'small.yaml');
    writeFileSync(file, EXPERIMENT);
    const homesBefore = new Set(tempHomes());
    const lines: string[] = [];
    const out = join(dir, 'out');
    let report: ExperimentReport | null = null;
    try {
      report = await runExperiment(file, { out, progress: (l) => lines.push(l) });
    } finally {
      // Whatever happened, its temporary home is gone.
      expect(tempHomes().filter((d) => !homesBefore.has(d)), `temporary homes left (progress: ${lines.join(' | ')})`).to.deep.equal([]);
    }
    const r = report!;

    // Nothing is left of the cluster it brought up.
    const ids = r.cluster.hosts.map((h) => h.hostId).filter((x): x is string => x !== null);
    expect(ids, 'both hosts had ids').to.have.length(2);
    await eventually(() => ids.every((id) => hostProcesses(id).length === 0) && fabricPids(r.cluster.home).length === 0, 5000);
    expect(ids.flatMap((id) => hostProcesses(id)), 'host processes left').to.deep.equal([]);
    expect(ids.flatMap((id) => shmFiles(id)), '/dev/shm files left').to.deep.equal([]);
    expect(fabricPids(r.cluster.home), 'fabric left').to.deep.equal([]);
    expect(networkLeftovers(clusterTag(r.cluster.home))).to.deep.equal({ namespaces: [], links: [] });
    expect(existsSync(r.cluster.home), 'the temporary home').to.equal(false);
    expect(r.cleanup).to.deep.equal([]);

    // The link was set and measured: at most its rate (with slack for the measurement).
    expect(r.link.impairments).to.deep.equal({ rateBps: 200e6, delayMs: 1 });
    expect(r.link.probe, `probe error: ${r.link.probeError}`).to.not.equal(null);
    expect(r.link.bandwidthBytesPerSecond!).to.be.above(0).and.at.most(1.3 * 200e6 / 8);
    expect(r.link.modelMs!).to.be.above(0);

    // One run per method, both completed, with their statistics.
    expect(r.runs.map((x) => `${x.method}:${x.status}`), JSON.stringify(r.runs.map((x) => x.error))).to.deep.equal(['offline:completed', 'precopy:completed']);
    const [off, pre] = r.runs;
    expect(off!.stats!.method).to.equal('offline');
    expect(pre!.stats!.method).to.equal('precopy');
    expect(pre!.request).to.include({ maxPasses: 6, to: 'h2' });
    for (const x of r.runs) {
      expect(x.endedOn, `${x.vm} ended on the destination`).to.equal('h2');
      expect(x.stats!.passes.length).to.be.at.least(1);
      expect(x.stats!.ram.total).to.be.at.least(16 * 1024 * 1024);
      expect(x.stats!.ram.transferred).to.be.above(0);
      expect(x.cleanupError).to.equal(null);
    }
    expect(r.summary.map((m) => [m.method, m.runs, m.completed, m.failed])).to.deep.equal([['offline', 1, 1, 0], ['precopy', 1, 1, 0]]);

    // The files.
    expect(r.out).to.equal(out);
    expect(readdirSync(out).sort()).to.deep.equal([...REPORT_FILES].sort());
    const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as ExperimentReport;
    expect(json.runs.map((x) => x.stats!['total-time'])).to.deep.equal(r.runs.map((x) => x.stats!['total-time']));
    expect(json.spec.source).to.equal(EXPERIMENT);
    const csv = readFileSync(join(out, 'results.csv'), 'utf8').trimEnd().split('\r\n');
    expect(csv).to.have.length(3);
    expect(csv[1]).to.match(/^offline,1,completed,\d+/);
    expect(csv[2]).to.match(/^precopy,1,completed,\d+/);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).to.match(/^\| offline \| 1 \| \d/m);
    expect(md).to.match(/^\| precopy \| 1 \| \d/m);
    for (const f of REPORT_FILES.filter((x) => x.endsWith('.svg'))) {
      const svg = readFileSync(join(out, f), 'utf8');
      expect(svg, f).to.match(/^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      expect(svg.trimEnd().endsWith('</svg>'), f).to.equal(true);
      expect(svg.match(/<g[ >]/g)!.length, `${f}: groups balanced`).to.equal(svg.match(/<\/g>/g)!.length);
    }
    expect(lines.some((l) => /^link h1 → h2: [\d.]+ MB\/s measured/.test(l)), lines.join('\n')).to.equal(true);
    expect(lines.some((l) => /^precopy 1\/1: completed in \d+ ms/.test(l))).to.equal(true);
  });

  it('`hvlab experiment run` killed with SIGKILL mid-run: its lease on the temporary cluster lapses, and the cluster goes down and its home is removed', async () => {
    const file = join(dir, 'killed.yaml');
    writeFileSync(file, `name: e2e-killed
kind: migration
seed: 3
cluster: new
vm: { memory: 16M, vps: 1, workload: counter }
methods: [offline]
repetitions: 50
warmup: 200ms
`);
    const { home, left } = await killExperimentRun(file, join(dir, 'killed'), /^offline 1\/50: completed/m, 'a move');
    // The report as it stood after the last run before the kill: unfinished, its moves kept (it was an empty directory).
    const kept = JSON.parse(readFileSync(join(dir, 'killed', 'results.json'), 'utf8')) as ExperimentReport;
    expect(kept.endedAt, 'no end').to.equal('');
    expect(kept.runs.length).to.be.at.least(1);
    expect(kept.runs[0]).to.deep.include({ method: 'offline', repetition: 1, status: 'completed' });
    expect(readFileSync(join(dir, 'killed', 'results.md'), 'utf8')).to.match(/\*\*Unfinished\*\*: the report as it stood after \d+ of 50 runs/);
    expect(left.ids.size, 'both hosts were up').to.equal(2);
    expect(await eventually(left.gone, 40_000), `left: ${left.said()}`).to.equal(true);
    expect([...left.ids].flatMap((id) => shmFiles(id))).to.deep.equal([]);
    expect(networkLeftovers(clusterTag(home))).to.deep.equal({ namespaces: [], links: [] });
  });
  it('`hvlab experiment run` interrupted (Ctrl-C) while its cluster comes up: the hosts\' starts stop where they are, what it made goes, and it exits 130 with no report', async () => {
    const file = join(dir, 'interrupted.yaml');
    writeFileSync(file, oneOfflineMove('e2e-intr'));
    const out = join(dir, 'interrupted');
    // The fabric is up and the hosts are starting (side by side); each says it is ready 20 s late
    // (a test knob), so the interrupt surely finds them starting: it stops their starts.
    const r = await interruptExperimentRun(file, out, /^fabric: links on /m, 'the fabric', { HVLAB_TEST_READY_DELAY_MS: '20000' });
    expect(r.code, r.output).to.equal(130);
    // It used to finish the bring-up (the hosts' join), then skip every run and write an empty report;
    // then it waited for the hosts under way to come up, only to take them down.
    expect(r.output, r.output).to.match(/cluster up interrupted; bringing everything down/);
    expect(r.output, r.output).to.not.match(/^host h\d is up/m);
    expect(r.output, r.output).to.not.match(/^link h1 → h2/m);
    expect(r.output.trim().split('\n').pop(), r.output).to.equal('hvlab: experiment was interrupted before its first run: everything it had started was taken down, and no report was written');
    expect(existsSync(out), 'no report directory').to.equal(false);
    expect(await eventually(r.left.gone, 40_000), `left: ${r.left.said()}`).to.equal(true);
    expect([...r.left.ids].flatMap((id) => shmFiles(id))).to.deep.equal([]);
    expect(networkLeftovers(clusterTag(r.home))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('`hvlab experiment run` whose host fails to come up: it names the host and keeps its logs in the report directory (the temporary home goes), and leaves nothing else', async () => {
    const file = join(dir, 'failing.yaml');
    writeFileSync(file, oneOfflineMove('e2e-fail'));
    const out = join(dir, 'failing');
    // The experiment's new cluster has a temporary home of its own: the TestHost's is not used.
    const h = new TestHost({ HVLAB_TEST_FAIL_START_HOST: 'h2' });
    const r = await h.run('experiment', 'run', file, '--out', out).finally(() => h.destroy());
    const code = r.code;
    const output = r.stdout + r.stderr;
    const kept = join(out, 'cluster-up-failed', 'h2');
    expect(code, output).to.equal(1);
    // The temporary home went with the cluster: its logs were removed with it, and nothing named them.
    expect(output.trim().split('\n').pop(), output).to.match(new RegExp(`^hvlab: host h2: the host did not start: the start was made to fail by a test \\(HVLAB_TEST_FAIL_START_HOST\\); its logs are kept in ${kept.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    expect(readdirSync(out), 'only the kept logs: no report').to.deep.equal(['cluster-up-failed']);
    expect(readdirSync(join(out, 'cluster-up-failed'))).to.deep.equal(['h2']);
    expect(readFileSync(join(kept, 'hypervisor.log'), 'utf8')).to.include('the start fails by a test knob (HVLAB_TEST_FAIL_START_HOST)');
    const home = /under (\/\S+)/.exec(output)?.[1];
    expect(home, output).to.be.a('string');
    const left = experimentLeft(home!);
    expect(await eventually(left.gone, 40_000), `left: ${left.said()}`).to.equal(true);
    expect(existsSync(home!), 'the temporary home').to.equal(false);
    expect(networkLeftovers(clusterTag(home!))).to.deep.equal({ namespaces: [], links: [] });
  });

  it('`hvlab experiment run` on an existing cluster killed with SIGKILL mid-run: the user\'s link is put back as it was and the run\'s VMs are deleted (its lease on them lapses)', async () => {
    // The cluster's nemesis and the run hold leases of KILLED_RUN_LEASE_MS (5 s by default): the lapse comes sooner.
    const h = new TestHost({ HVLAB_TEST_OWNER_LEASE_MS: String(KILLED_RUN_LEASE_MS) });
    try {
      const topo = join(dir, 'two.yaml');
      writeFileSync(topo, 'name: two\nhosts:\n  h1: { lps: 1 }\n  h2: { lps: 1 }\nlinks:\n  - endpoints: [h1, h2]\n');
      await h.ok('cluster', 'up', topo);
      await h.ok('link', 'set', 'h1', 'h2', '--delay', '20ms');
      const file = join(dir, 'killed-existing.yaml');
      writeFileSync(file, `name: e2e-killed-existing
kind: migration
seed: 3
cluster: existing
vm: { memory: 16M, vps: 1, workload: counter }
link: { delay: 2ms }
methods: [offline]
repetitions: 50
warmup: 200ms
`);
      const run = h.start('experiment', 'run', file, '--out', join(dir, 'killed-existing'));
      let output = '';
      run.child.stderr!.on('data', (d) => (output += d));
      try {
        expect(await eventually(() => /^offline 1\/50: completed/m.test(output), 120_000), output).to.equal(true);
        type Link = { delayMs?: number };
        expect((await h.json<{ links: Link[] }>('cluster', 'status')).links[0]!.delayMs, 'the run\'s link while it runs').to.equal(2);
      } finally {
        run.child.kill('SIGKILL');
        await run.done;
      }
      expect(await eventually(async () => (await h.json<{ links: Array<{ delayMs?: number }> }>('cluster', 'status')).links[0]!.delayMs === 20, 20_000), 'the user\'s 20 ms delay is back').to.equal(true);
      const runVms = async (): Promise<string[]> => (await h.json<Array<{ name: string; host: string }>>('vm', 'list', '--all')).map((v) => `${v.host}/${v.name}`);
      expect(await eventually(async () => (await runVms()).length === 0, 30_000), `the run's VMs: ${(await runVms()).join(' ')}`).to.equal(true);
    } finally {
      await h.run('cluster', 'down');
      await h.destroy();
    }
  });
});

