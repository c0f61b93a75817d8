/**
 * The chaos report's files, without processes: the timeline SVG is well-formed XML (whatever the
 * names hold) with a bar per fault in non-overlapping lanes, a strip per VM with its progress line
 * broken where there was no answer, and its fault windows shaded; results.md has a row per check
 * (held or violated, with evidence) and per fault (when, what it hit, its recovery) and names the
 * seed to replay; results.json round-trips; samples.csv has a row per reading.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CHAOS_REPORT_FILES, CHAOS_REPORT_VERSION, SAMPLE_CSV_COLUMNS, chaosCheckRows, chaosFaultRows, chaosMarkdown, chaosMoveRows, chaosTimeline, chaosWorld, checkLiveness, checkProgress, drawSchedule, moveOutcome, packLanes, parseChaosExperiment, recoveryTimes,
  skippedCheck, timelineSvg, writeChaosReport, type ChaosReport, type FaultRecord, type HostSample, type VmSample,
} from '../src/index.js';

/** A well-formedness check of XML: tags nest and close, attributes are quoted, no bare < or & in text or values. */
function wellFormed(xml: string): string | null {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const re = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  const textOk = (t: string): boolean => !/[<>]/.test(t) && !/&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/.test(t);
  for (let m = re.exec(body); m; m = re.exec(body)) {
    const between = body.slice(last, m.index);
    if (!textOk(between)) return `bad text before offset ${m.index}: ${JSON.stringify(between.slice(0, 60))}`;
    if (!textOk(m[3]!.replace(/="/g, '').replace(/"/g, ''))) return `bad attribute in ${m[0]}`;
    last = m.index + m[0].length;
    if (m[1]) {
      if (stack.pop() !== m[2]) return `</${m[2]}> closes nothing open`;
    } else if (!m[4]) stack.push(m[2]!);
    if (stack.length === 0 && last < body.trimEnd().length) return `content after the root element at ${last}`;
  }
  if (stack.length > 0) return `unclosed: ${stack.join(', ')}`;
  if (body.slice(last).trim() !== '') return 'text after the last tag';
  return null;
}

const FILE = `name: rep
kind: faults
seed: 9
hosts: 2
duration: 20s
workloads:
  - { name: a, host: h1 }
  - { name: b, host: h2 }
faults:
  - { at: 2s, kind: pause, target: vm:a, for: 3s }
  - { at: 4s, kind: partition, target: cluster, for: 2s }
  - { at: 8s, kind: vmbus, target: vm:b, for: 2s, drop: 1 }
`;

const T0 = 1_800_000_000_000;
const OWNER = 'chaos-rep-abcdef';

function makeReport(): { report: ChaosReport; vms: VmSample[]; hosts: HostSample[] } {
  const spec = parseChaosExperiment(FILE, 'rep.yaml');
  const world = chaosWorld(spec);
  const schedule = drawSchedule(spec.seed, spec, world);
  const vms: VmSample[] = [];
  const hosts: HostSample[] = [];
  for (let ms = -1000; ms <= 20_000; ms += 500) {
    vms.push({ t: T0 + ms, vm: 'a', host: 'h1', answered: true, state: 'Running', progress: ms < 2000 ? ms + 1000 : ms < 5000 ? 3000 : ms - 2000, heartbeat: ms >= 3000 && ms < 6000 ? 'NoContact' : 'OK' });
    const silent = ms >= 12_000 && ms < 14_000;
    vms.push({ t: T0 + ms, vm: 'b', host: 'h2', answered: !silent, state: silent ? null : 'Running', progress: silent ? null : ms + 1000, heartbeat: silent ? null : 'OK' });
    for (const h of ['h1', 'h2']) hosts.push({ t: T0 + ms, host: h, answered: !(h === 'h2' && silent), peersMissed: { [h === 'h1' ? 'h2' : 'h1']: ms >= 4000 && ms < 6500 ? 2 : 0 } });
  }
  const rec = (i: number, over: Partial<FaultRecord>): FaultRecord => {
    const f = schedule[i]!;
    return {
      id: `${OWNER}.${f.id}`, kind: f.kind, target: f.target, role: f.role, params: f.params, owner: OWNER, seed: f.seed, forMs: f.forMs,
      resolved: { summary: `${f.kind} of ${f.target}`, hosts: [], vms: [], processes: [], links: [] },
      state: 'ended', startedAt: T0 + f.atMs, endsAt: T0 + f.atMs + f.forMs, endedAt: T0 + f.atMs + f.forMs, endReason: 'expired', error: null, effect: null, ...over,
    };
  };
  const faults = [
    rec(0, { resolved: { summary: 'partition of a on h1', hosts: ['h1'], vms: [{ host: 'h1', vm: 'a' }], processes: [{ host: 'h1', role: 'partition', vm: 'a', pid: 5 }], links: [] } }),
    rec(1, { resolved: { summary: 'links h1-h2', hosts: ['h1', 'h2'], vms: [], processes: [], links: [['h1', 'h2']] } }),
  ];
  const t1 = T0 + 20_000;
  const obs = { t0: T0, t1, world, vms, hosts, faults };
  const report: ChaosReport = {
    version: CHAOS_REPORT_VERSION, name: spec.name, kind: 'faults', seed: spec.seed, owner: OWNER, spec, schedule, sourceSha256: 'e'.repeat(64),
    environment: { hvlab: '0.1.0', commit: '0123456789abcdef0123456789abcdef01234567', dirty: true, node: 'v20.0.0', platform: 'linux-x64', cpus: 2, hostname: 'lab', loadAtStart: [3.8, 3.1, 2.9], loadAtEnd: [4, 3.3, 3] },
    startedAt: '2027-01-15T08:00:00.000Z', endedAt: '2027-01-15T08:00:30.000Z',
    t0: T0, t1, out: '/tmp/x', cluster: { mode: 'new', home: '/tmp/h', network: 'namespaces', hosts: [{ name: 'h1', hostId: 'aaaaaa' }, { name: 'h2', hostId: 'bbbbbb' }] }, world,
    faults, refused: [{ id: `${OWNER}.f3`, at: T0 + 8000, error: 'VM b is not running | <piped> & "quoted"' }],
    samples: { vms: [], hosts: [], periodMs: 500, vmReadings: vms.length, hostReadings: hosts.length },
    checks: [checkLiveness(obs, 10_000), checkProgress({ ...obs, vms: vms.map((s) => (s.vm === 'a' && s.t === T0 + 10_000 ? { ...s, progress: 1 } : s)) }, 10_000), skippedCheck('memory', 'no memdirty workload')],
    recovery: recoveryTimes(obs), held: false, aborted: false, stoppedBy: null, cleanup: [], files: [],
    moves: [{ id: 'm1', vm: 'b', from: 'h2', to: 'h1', method: 'precopy+compress', atMs: 12_000, startedAt: T0 + 12_000, endedAt: T0 + 13_500, status: 'completed', downtimeMs: 11, totalMs: 1480, error: null }],
  };
  return { report, vms, hosts };
}

describe('chaos reports', () => {
  it('the timeline SVG is well-formed: a bar per fault in lanes, a strip per VM with its progress broken where there was no answer, its fault windows shaded', () => {
    const { report, vms } = makeReport();
    const tl = chaosTimeline(report, vms);
    expect(tl.faults.map((f) => `${f.id}:${f.state}`)).to.deep.equal(['f1:ended', 'f2:ended', 'f3:refused']);
    expect(tl.vms.map((v) => [v.name, v.bands.map((b) => b.id)])).to.deep.equal([['a', ['f1']], ['b', []]]);
    const svg = timelineSvg(tl);
    expect(wellFormed(svg)).to.equal(null);
    expect(svg).to.include('<svg xmlns="http://www.w3.org/2000/svg"');
    expect(svg).to.include('<title>rep: faults against each VM&apos;s progress (seed 9)</title>');
    // b moved to h1 at +12 s: its label says where it went, its strip outlines the move.
    expect(svg).to.include('b (h2→h1)');
    expect(svg).to.include('<title>m1 → h1: 12.0 s to 13.5 s</title>');
    expect(svg).to.include('move (live migration)');
    // Whatever a title or a name holds, the SVG stays well-formed.
    const odd = timelineSvg({ ...tl, title: 'x <y> & "z" \'w\'', vms: tl.vms.map((v) => ({ ...v, name: `${v.name}<&>` })) });
    expect(wellFormed(odd)).to.equal(null);
    expect(odd).to.include('x &lt;y&gt; &amp; &quot;z&quot; &apos;w&apos;');
    expect(svg).to.include('seconds from the start of the schedule');
    const faults = svg.slice(svg.indexOf('<g class="faults">'), svg.indexOf('<g class="vms">'));
    expect(faults.match(/<rect /g)).to.have.length(3);
    expect(faults).to.include('f3 vmbus vm:b (refused)');
    // a: one run of readings (always answered); b: two runs around its host's silence.
    const strips = svg.slice(svg.indexOf('<g class="vms">'), svg.indexOf('<g class="x-axis">')).split('<g class="vm">').slice(1);
    expect(strips).to.have.length(2);
    expect(strips[0]!.match(/<polyline /g)).to.have.length(1);
    expect(strips[1]!.match(/<polyline /g)).to.have.length(2);
    expect(strips[0]).to.match(/fill-opacity="0.2"><title>f1 \(pause\)<\/title>/);
    expect(strips[0]).to.include('heartbeat NoContact');
    expect(strips[1]).to.include('no answer');
    // Every point lies inside the plot.
    const width = Number(/width="(\d+)"/.exec(svg)![1]);
    for (const m of svg.matchAll(/points="([^"]+)"/g)) for (const p of m[1]!.split(' ')) expect(Number(p.split(',')[0])).to.be.within(0, width);
  });

  it('lanes never put two overlapping bars in one lane', () => {
    const spans = [{ from: 0, to: 10 }, { from: 5, to: 8 }, { from: 9, to: 12 }, { from: 10, to: 11 }, { from: 20, to: 30 }];
    const lanes = packLanes(spans);
    expect(lanes).to.deep.equal([0, 1, 1, 0, 0]);
    for (let i = 0; i < spans.length; i++) for (let j = i + 1; j < spans.length; j++) if (lanes[i] === lanes[j]) expect(spans[i]!.to <= spans[j]!.from || spans[j]!.to <= spans[i]!.from).to.equal(true);
  });

  it('results.md: the seed to replay, a row per check with its verdict and evidence, a row per fault with its recovery', () => {
    const { report } = makeReport();
    const text = chaosMarkdown(report);
    expect(text).to.match(/^# Chaos experiment rep\n/);
    expect(text).to.include('seed **9**');
    expect(text).to.include('`hvlab experiment run rep.yaml --seed 9`');
    expect(text).to.include('**1 of 2 checks held.**');
    expect(text).to.match(/\| liveness \| \*\*held\*\* \|/);
    expect(text).to.match(/\| progress \| \*\*VIOLATED\*\* \| 1 violation \| a: counter went back from 7,500 to 1 between \+9\.5s and \+10\.0s/);
    expect(text).to.match(/\| memory \| skipped \|/);
    expect(text).to.match(/\| f1 \| \+2\.0s \| pause \| vm:a \| partition of a on h1 \| 3\.0 s \| \+5\.0s \(expired\) \| 1\.0 s \|/);
    expect(text).to.match(/\| f2 \| \+4\.0s \| partition: shape one \| cluster \| links h1-h2 \| 2\.0 s \| \+6\.0s \(expired\) \| 0\.5 s \|/);
    expect(text).to.include('| m1 | +12.0s | b | h2 → h1 | precopy+compress | completed | 11 ms | 1480 ms | — |');
    expect(chaosMoveRows(report)).to.deep.equal([['MOVE', 'AT', 'VM', 'FROM', 'TO', 'METHOD', 'STATUS', 'DOWNTIME'], ['m1', '+12.0s', 'b', 'h2', 'h1', 'precopy+compress', 'completed', '11 ms']]);
    expect(text).to.include('refused: VM b is not running \\| &lt;piped&gt; & "quoted"');
    expect(text).to.include('![Faults against each VM\'s progress](timeline.svg)');
    expect(text).to.include('f3 +8.0s vmbus vm:b for 2s (drop 100 %)');
  });

  it('a move that did not complete has no downtime (the host\'s 0 is where it started): a dash in results.md and the table, null in results.json', () => {
    const { report } = makeReport();
    const answer = (method: string, status: string, downtime: number, error?: string): unknown => ({ method, status, downtime, 'total-time': 900, ...(error ? { 'error-desc': error } : {}) });
    const move = (id: string, o: ReturnType<typeof moveOutcome>) => ({ ...report.moves[0]!, id, ...o });
    const off = moveOutcome(answer('offline', 'cancelled', 0, 'cancelled by the user'));
    expect(off).to.deep.equal({ status: 'cancelled', downtimeMs: null, totalMs: 900, error: 'cancelled by the user' });
    expect(moveOutcome(answer('precopy', 'failed', 0, 'the link to h1 was cut')).downtimeMs).to.equal(null);
    expect(moveOutcome(answer('postcopy', 'failed', 40, 'post-copy failed after the switch-over')).downtimeMs).to.equal(null);
    expect(moveOutcome(answer('precopy', 'completed', 11)).downtimeMs).to.equal(11);
    // Whatever the host answered: never a throw, nothing but a finite number or null.
    for (const bad of [null, 7, 'completed', [], { status: 'completed', downtime: 'NaN' }, { status: 'completed', downtime: Number.NaN }, { status: { x: 1 } }]) {
      expect(moveOutcome(bad).downtimeMs, JSON.stringify(bad)).to.equal(null);
    }
    report.moves = [move('m1', moveOutcome(answer('precopy', 'completed', 11))), move('m2', off)];
    expect(chaosMarkdown(report)).to.include('| m2 | +12.0s | b | h2 → h1 | precopy+compress | cancelled | — | 900 ms | cancelled by the user |');
    expect(chaosMoveRows(report)[2]![7]).to.equal('-');
    expect((JSON.parse(JSON.stringify(report)) as ChaosReport).moves.map((m) => m.downtimeMs)).to.deep.equal([11, null]);
  });

  it('results.md says the code and machine that ran it (commit, uncommitted changes, load) and the file\'s hash', () => {
    const text = chaosMarkdown(makeReport().report);
    expect(text).to.include('- ran on: hvlab 0.1.0, commit 0123456789ab (with uncommitted changes), node v20.0.0 on linux-x64, 2 CPUs (lab); load (1, 5, 15 min) 3.8, 3.1, 2.9 at the start, 4, 3.3, 3 at the end');
    expect(text).to.include(`- file: ${makeReport().report.spec.file}, sha256 ${'e'.repeat(64)}`);
  });

  it('rows for a terminal: a check per row with its first violation, a fault per row with its end and recovery', () => {
    const { report } = makeReport();
    expect(chaosCheckRows(report)).to.deep.equal([
      ['CHECK', 'HELD', 'SUMMARY', 'FIRST VIOLATION'],
      ['liveness', 'yes', report.checks[0]!.summary, ''],
      ['progress', 'NO', '1 violation', report.checks[1]!.evidence[0]],
      ['memory', 'skipped', 'not checked: no memdirty workload', ''],
    ]);
    expect(chaosFaultRows(report)).to.deep.equal([
      ['FAULT', 'AT', 'KIND', 'TARGET', 'FOR', 'ENDED', 'RECOVERY'],
      ['f1', '+2.0s', 'pause', 'vm:a', '3.0 s', '+5.0s expired', '1.0 s'],
      ['f2', '+4.0s', 'partition', 'cluster', '2.0 s', '+6.0s expired', '0.5 s'],
      ['f3', '+8.0s', 'vmbus', 'vm:b', '2.0 s', 'refused', '-'],
    ]);
  });

  it('writes results.json (which round-trips), results.md, timeline.svg and samples.csv', () => {
    const { report, vms, hosts } = makeReport();
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-chaos-report-'));
    try {
      expect(writeChaosReport(report, join(dir, 'out'), { vms, hosts })).to.deep.equal([...CHAOS_REPORT_FILES]);
      const back = JSON.parse(readFileSync(join(dir, 'out', 'results.json'), 'utf8')) as ChaosReport;
      expect(back.seed).to.equal(9);
      expect(back.schedule).to.deep.equal(report.schedule);
      expect(back.checks.map((c) => [c.name, c.held])).to.deep.equal([['liveness', true], ['progress', false], ['memory', true]]);
      expect(back.files).to.deep.equal([...CHAOS_REPORT_FILES]);
      const csv = readFileSync(join(dir, 'out', 'samples.csv'), 'utf8').trimEnd().split('\r\n');
      expect(csv[0]).to.equal(SAMPLE_CSV_COLUMNS.join(','));
      expect(csv).to.have.length(1 + vms.length + hosts.length);
      expect(csv.some((l) => l.startsWith('-1000,vm,h1,a,true,Running,0,OK,'))).to.equal(true);
      expect(csv.some((l) => l.startsWith('4000,host,h1,,true,,,,h2:2'))).to.equal(true);
      expect(wellFormed(readFileSync(join(dir, 'out', 'timeline.svg'), 'utf8'))).to.equal(null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a run whose cluster went down under it', () => {
  it('reports each fault still active as ended with the cluster (target-gone), at the end its home\'s fault log gives, else when the run noticed', async () => {
    const { endedWithTheCluster } = await import('../src/chaos.js');
    const { faultLogFile, faultsDir } = await import('../src/nemesis.js');
    const home = mkdtempSync(join(tmpdir(), 'hvlab-chaos-gone-'));
    try {
      mkdirSync(faultsDir(home), { recursive: true });
      writeFileSync(faultLogFile(home), [
        '{"time":"2027-01-15T08:00:01.000Z","event":"start","id":"run.f1"}', 'not json', '{"time":"2027-01-15T08:00:04.500Z","event":"end","id":"run.f1","reason":"cleared"}',
      ].join('\n') + '\n');
      const rec = (id: string, state: FaultRecord['state']): FaultRecord => ({
        id, kind: 'pause', target: 'vm:a', role: 'partition', params: {}, owner: 'run', seed: 1, forMs: 60_000,
        resolved: { summary: 'partition of a on h1', hosts: ['h1'], vms: [], processes: [], links: [] },
        state, startedAt: Date.parse('2027-01-15T08:00:01.000Z'), endsAt: Date.parse('2027-01-15T08:01:01.000Z'),
        endedAt: state === 'active' ? null : 1, endReason: state === 'active' ? null : 'expired', error: null, effect: null,
      });
      const noticed = Date.parse('2027-01-15T08:00:05.000Z');
      const out = endedWithTheCluster([rec('run.f1', 'active'), rec('run.f2', 'active'), rec('run.f3', 'ended')], home, noticed);
      expect(out.map((f) => [f.id, f.state, f.endReason, f.endedAt])).to.deep.equal([
        ['run.f1', 'ended', 'target-gone', Date.parse('2027-01-15T08:00:04.500Z')],
        ['run.f2', 'ended', 'target-gone', noticed],
        ['run.f3', 'ended', 'expired', 1],
      ]);
      expect(out[0]!.error).to.match(/the cluster went down under the run/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe('fault parameters as a reader says them', () => {
  it('says what a drawn fault does, not the request\'s field names', async () => {
    const { paramsText } = await import('../src/schedule.js');
    expect(paramsText({ channel: 'heartbeat', delay: 1, delayMs: 140 })).to.equal('channel heartbeat, delay 100 % by 140 ms');
    expect(paramsText({ channel: null, signalDrop: 0.34 })).to.equal('every channel, drop signals 34 %');
    expect(paramsText({ channel: null, duplicate: 0.49 })).to.equal('every channel, duplicate 49 %');
    expect(paramsText({ delayMs: 100, jitterMs: 2, rateBps: 10_000_000, lossPercent: 5 })).to.equal('delay 100 ms, jitter 2 ms, rate 10 Mbit/s, loss 5 %');
    expect(paramsText({ delayMs: 12 })).to.equal('delay 12 ms');
    expect(paramsText({ lps: 1 })).to.equal('lps 1');
    // As `fault list` shows what the command line asked: signed clock changes, addresses in hex, switches by name.
    expect(paramsText({ offsetMs: 5000, skewPpm: -20 })).to.equal('offset +5000 ms, skew -20 ppm');
    expect(paramsText({ offsetMs: -5000 })).to.equal('offset -5000 ms');
    expect(paramsText({ gpa: 0x201000, mask: 4 })).to.equal('gpa 0x201000, mask 0x4');
    expect(paramsText({ restart: true })).to.equal('restart');
    expect(paramsText({ cut: true, delayMs: 5 })).to.equal('cut, delay 5 ms');
    expect(paramsText({ vps: '0,1' })).to.equal('vps 0,1');
    expect(paramsText({})).to.equal('');
  });
});
