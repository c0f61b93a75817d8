/**
 * Chaos experiment files and their schedules, without processes: the shipped example checks and
 * decodes to what it says; defaults fill what is left out; every mistake is refused with its line,
 * column and field, all at once (a fault without an end, a target of the wrong kind or naming
 * nothing of the run, a parameter that is not the kind's, a fault ending after the run, a random
 * window too short); no input makes the checker throw anything but ChaosExperimentError (seeded
 * fuzz). The schedule: the same seed and file draw deep-equal schedules, another seed another
 * one; drawn faults stay in their window, never overlap on a resource, and target only what the
 * world has; explicit faults keep their seeds whatever the random section says.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FAULT_KINDS, FAULT_STALL_MAX_VP, seededRandom } from '@hvlab/protocol';
import { FIELD_KEY_MAX } from '@hvlab/cluster';
import {
  ChaosExperimentError, chaosWorld, existingClusterProblems, checkFaultRequest, drawMoves, drawSchedule, experimentKindOf, faultRequest, faultResource, linkOf, loadChaosExperiment, parseChaosExperiment, plannedSchedule, scheduleLine, scheduleLines, scheduleOverlaps,
  randomCandidates, PARTITION_MIN_HOSTS, PARTITION_SHAPES, partitionCuts, parseTarget, ResolveError, topologyProblem, type ChaosProblem, type ChaosSpec, type ChaosWorld, type ScheduledFault,
} from '../src/index.js';

const EXAMPLE_FILE = join(import.meta.dirname, '..', '..', '..', 'scripts', 'experiments', 'chaos-basic.yaml');

const SMALL = `name: small
kind: faults
seed: 5
hosts: 3
duration: 30s
workloads:
  - { name: a, host: h1 }
  - { name: b, host: h2, workload: "memdirty:4M", memory: 16M }
faults:
  - { at: 2s, kind: pause, target: vm:a, for: 3s }
  - { at: 6s, kind: link, target: link:h1-h3, for: 2s, delayMs: 50ms, lossPercent: 5% }
  - { at: 9s, kind: kill, target: vm:b, role: vmwp, for: 1s, restart: true }
random:
  count: 6
  for: [1s, 2s]
  between: [12s, 28s]
`;

function problems(text: string): ChaosProblem[] {
  try {
    parseChaosExperiment(text, 'chaos.yaml');
  } catch (e) {
    expect(e).to.be.instanceOf(ChaosExperimentError);
    return (e as ChaosExperimentError).problems;
  }
  throw new Error('the experiment was accepted');
}

const parse = (text: string): ChaosSpec => parseChaosExperiment(text, 'chaos.yaml');

describe('chaos experiment files', () => {
  it('names an empty entry of workloads, faults or moves (-, - null, - ~) as a problem, with what it should hold: it was passed over, and the file checked as valid', () => {
    const text = `name: e
kind: faults
hosts: 2
duration: 10s
workloads:
  - { name: a, host: h1 }
  -
  - ~
faults:
  - null
moves:
  -
`;
    expect(problems(text).map((p) => `${p.line}:${p.field}: ${p.message}`)).to.deep.equal([
      '7:workloads[1]: is empty: each entry is a VM, e.g. - { name: c1, host: h1 }',
      '8:workloads[2]: is empty: each entry is a VM, e.g. - { name: c1, host: h1 }',
      '10:faults[0]: is empty: each entry is a fault, e.g. - { at: 5s, kind: pause, target: vm:c1, for: 3s }',
      '12:moves[0]: is empty: each entry is a move, e.g. - { at: 10s, vm: c1, to: h2 }',
    ]);
  });

  it('the shipped example checks: 3 hosts, four workloads, five explicit faults and three drawn ones, every check on', () => {
    const s = loadChaosExperiment(EXAMPLE_FILE);
    if (s instanceof ChaosExperimentError) throw s;
    expect(s).to.include({ name: 'chaos-basic', kind: 'faults', seed: 42, cluster: 'new', hosts: 3, lps: 2, durationMs: 47_000, sampleMs: 400 });
    expect(s.workloads.map((w) => `${w.name}@${w.host}:${w.workload}`)).to.deep.equal(['c1@h1:counter', 'c2@h2:counter', 'c3@h3:counter', 'md@h2:memdirty:8M']);
    expect(s.faults.map((f) => f.kind)).to.deep.equal(['pause', 'vmbus', 'partition', 'lp-shrink', 'kill']);
    expect(s.faults[1]!.params).to.deep.equal({ channel: 'heartbeat', drop: 1 });
    expect(s.faults[4]!.params).to.deep.equal({ restart: true });
    expect(s.random).to.deep.equal({ count: 3, moves: 0, methods: [{ method: 'precopy', options: {} }], kinds: ['pause', 'vmbus', 'link'], forMs: [1000, 3000], betweenMs: [35_000, 43_000], targets: null });
    expect(s.checks).to.deep.equal({ livenessMs: 10_000, isolationStallMs: 3000, progress: true, memory: true, cleanup: true, placement: true });
    const sched = plannedSchedule(s);
    expect(sched).to.have.length(8);
    // Every fault of the schedule is one the nemesis's own check takes.
    for (const f of sched) {
      const c = checkFaultRequest(faultRequest(f, 'chaos-basic-abc123'));
      expect(c.ok, `${f.id}: ${c.ok ? '' : c.message}`).to.equal(true);
    }
    expect(experimentKindOf(EXAMPLE_FILE)).to.equal('faults');
  });

  it('decodes units in parameters and fills defaults: seed 1, a new cluster of 3 hosts with 2 LPs, 30 s, every check on', () => {
    const s = parse('name: d\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nfaults: [{ at: 1s, kind: link, target: link:h1-h2, for: 2s, delayMs: 20ms, jitterMs: 1s, rateBps: 10mbit, lossPercent: "2.5%" }]\n');
    expect(s).to.include({ seed: 1, cluster: 'new', hosts: 3, lps: 2, durationMs: 30_000, sampleMs: 400 });
    expect(s.workloads).to.deep.equal([{ name: 'a', host: 'h1', workload: 'counter', memoryBytes: 64 * 1024 * 1024, vps: 1 }]);
    expect(s.faults[0]!.params).to.deep.equal({ delayMs: 20, jitterMs: 1000, rateBps: 10_000_000, lossPercent: 2.5 });
    expect(s.random).to.equal(null);
    const off = parse('name: d\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nchecks: { liveness: false, isolation: 5s, memory: false }\n');
    expect(off.checks).to.deep.equal({ livenessMs: null, isolationStallMs: 5000, progress: true, memory: false, cleanup: true, placement: true });
  });

  it('refuses a fault without an end, naming the line and column of the fault', () => {
    const p = problems('name: x\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nfaults:\n  - { at: 1s, kind: pause, target: vm:a }\n');
    expect(p).to.have.length(1);
    expect(p[0]).to.include({ field: 'faults[0].for', line: 5, column: 5 });
    expect(p[0]!.message).to.match(/a fault without an end is refused/);
  });

  it('reports every problem at once, each with its line, column and field', () => {
    const text = [
      'name: bad name',                                                        // 1
      'kind: faults',                                                          // 2
      'hosts: 2',                                                              // 3
      'duration: 10s',                                                         // 4
      'workloads:',                                                            // 5
      '  - { name: a, host: h9 }',                                             // 6
      '  - { name: b, host: h1, workload: warp }',                             // 7
      'faults:',                                                               // 8
      '  - { at: 1s, kind: vmbus, target: host:h1, for: 2s, drop: 1 }',        // 9
      '  - { at: 1s, kind: pause, target: vm:nope, for: 2s }',                 // 10
      '  - { at: 1s, kind: lp-shrink, target: host:h1, for: 2s, lps: 1, x: 3 }', // 11
      '  - { at: 8s, kind: pause, target: vm:b, for: 5s }',                    // 12
      '  - { at: 1s, kind: partition, target: cluster, for: 2s, shape: ring }', // 13
      '  - { at: 1s, kind: warp, target: vm:b, for: 2s }',                     // 14
      'random: { count: 2, for: [1s, 9s], between: [2s, 8s] }',                // 15
      'colour: blue',                                                          // 16
    ].join('\n');
    const p = problems(text);
    const at = (field: string): ChaosProblem | undefined => p.find((x) => x.field === field);
    expect(at('name')).to.include({ line: 1, column: 7 });
    expect(at('workloads[0].host')).to.include({ line: 6, column: 22 });
    expect(at('workloads[0].host')!.message).to.match(/h9 is not a host of the cluster \(h1, h2\)/);
    expect(at('workloads[1].workload')).to.include({ line: 7 });
    expect(p.find((x) => x.line === 9)!.message).to.match(/vmbus fault hits a VM/);
    expect(at('faults[1].target')!.message).to.match(/VM nope is not one of the workloads/);
    expect(p.find((x) => x.line === 11)!.message).to.match(/no parameter "x"/);
    expect(p.find((x) => x.line === 11)!.field).to.equal('faults[2].x');
    expect(at('faults[3].for')!.message).to.match(/ends at 13s, after the experiment's duration \(10s\)/);
    expect(p.find((x) => x.line === 13)!.message).to.match(/ring needs at least 4 hosts/);
    expect(at('faults[5].kind')!.message).to.match(/"warp" is not a fault kind/);
    expect(at('random.between')!.message).to.match(/shorter than the longest fault drawn/);
    expect(at('colour')).to.include({ line: 16, column: 1 });
    // Sorted by place.
    expect(p.map((x) => x.line)).to.deep.equal([...p.map((x) => x.line)].sort((a, b) => a - b));
  });

  it('refuses the wrong kind, a missing name and workloads, and unknown random kinds or targets', () => {
    expect(problems('name: m\nkind: migration\nworkloads: [{ name: a, host: h1 }]\n').map((x) => x.field)).to.deep.equal(['kind']);
    const p = problems('kind: faults\n');
    expect(p.map((x) => x.field).sort()).to.deep.equal(['name', 'workloads']);
    const r = problems('name: r\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nrandom: { count: 2, kinds: [pause, melt], targets: [vm:zz, vms:one] }\n');
    expect(r.map((x) => x.field)).to.deep.equal(['random.kinds[1]', 'random.targets[0]', 'random.targets[1]']);
    expect(problems('name: r\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nrandom: { for: [1s, 2s] }\n').map((x) => x.field)).to.deep.equal(['random.count']);
    expect(problems('name: e\nkind: faults\ncluster: existing\nhosts: 3\nworkloads: [{ name: a, host: h1 }]\n').map((x) => x.field)).to.deep.equal(['hosts']);
  });

  it('names a hosts count of 0, or an empty one, as what it is, with its position', () => {
    const zero = problems('name: z\nkind: faults\nhosts: 0\nworkloads: [{ name: a, host: h1 }]\n');
    expect(zero.map((x) => [x.line, x.column, x.field, x.message])).to.deep.equal([[3, 8, 'hosts', 'is 0: cluster: new brings up 1 to 32 hosts, h1..hN (default 3), and every workload runs on one of them']]);
    const empty = problems('name: z\nkind: faults\nhosts:\nworkloads: [{ name: a, host: h1 }]\n');
    expect(empty.map((x) => [x.line, x.field, x.message])).to.deep.equal([[3, 'hosts', 'is empty: cluster: new brings up 1 to 32 hosts, h1..hN (default 3), and every workload runs on one of them']]);
  });

  it('a value out of its range or of the wrong type is named in its problem, as it was written', () => {
    const base = 'name: z\nkind: faults\nhosts: 2\nduration: 10s\n';
    const one = (extra: string): string => problems(`${base}${extra}`).map((x) => `${x.field}: ${x.message}`).join('\n');
    expect(one('seed: 1.5\nworkloads: [{ name: a, host: h1 }]\n')).to.equal('seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not 1.5');
    expect(one('seed: "7"\nworkloads: [{ name: a, host: h1 }]\n')).to.equal('seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not "7"');
    expect(one('workloads: [{ name: a, host: h1, memory: 1T }]\n')).to.match(/^workloads\[0\]\.memory: must be a size such as 64M, .*, not "1T"$/);
    expect(one('workloads: [{ name: a, host: h1 }]\nfaults:\n  - { at: -2s, kind: pause, target: vm:a, for: 1s }\n')).to.equal('faults[0].at: must be a duration such as 5s, 250ms or 2m, not "-2s"');
    expect(one('workloads: [{ name: a, host: h1 }]\nrandom: { count: [1], for: [1s, 2s], between: [1s, 5s] }\n')).to.equal('random.count: must be a whole number from 1 to 1000, not a list');
  });

  it('names every value it refuses as written and at most 40 characters long: a list is a list, not null or empty; a number as written, not Infinity; said once', () => {
    const base = 'name: z\nkind: faults\nhosts: 2\nduration: 10s\n';
    const w = 'workloads: [{ name: a, host: h1 }]\n';
    const said = (text: string): string => problems(text).map((x) => `${x.field}: ${x.message}`).join('\n');
    const cases: Array<[string, string]> = [
      // A list or a map was "empty", or "null".
      ['name: z\nkind: faults\nhosts: [2]\nworkloads: [{ name: a, host: h1 }]\n', 'hosts: must be a whole number from 1 to 32, not a list'],
      ['name: [z]\nkind: faults\nworkloads: [{ name: a, host: h1 }]\n', 'name: a list is not valid: use 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit'],
      ['name: z\nkind: [faults]\nworkloads: [{ name: a, host: h1 }]\n', 'kind: a list is not this runner\'s kind: a chaos experiment is kind: faults'],
      [`${base}${w}faults: [{ at: 1s, kind: { a: 1 }, target: vm:a, for: 1s }]\n`, 'faults[0].kind: a map is not a fault kind (kill, pause, vmbus, interrupt-delay, clock, vp-stall, lp-shrink, link, partition, bitflip)'],
      [`${base}${w}random: { count: 1, kinds: [[pause]] }\n`, 'random.kinds[0]: a list is not a fault kind (kill, pause, vmbus, interrupt-delay, clock, vp-stall, lp-shrink, link, partition, bitflip)'],
      [`${base}${w}moves: [{ at: 1s, vm: [a], to: h2 }]\n`, 'moves[0].vm: a list is not one of the workloads (a)'],
      // A number as written.
      [`${base}${w}sample: 1e400\n`, 'sample: must be a duration such as 5s, 250ms or 2m, not 1e400'],
      [`${base}${w}faults: [{ at: 0x7fffffff, kind: pause, target: vm:a, for: 1s }]\n`, 'faults[0].at: must be a duration such as 5s, 250ms or 2m, not 0x7fffffff (a duration needs its unit: 2147483647s or 2147483647ms)'],
      [`${base}${w}faults: [{ at: 2147483647s, kind: pause, target: vm:a, for: 1s }]\n`, 'faults[0].at: "2147483647s" is out of range: from 0s to 86400s'],
      // A bare number has no unit (it was ms, so `at: 3` fired at +0.003 s): refused, saying so.
      [`${base}${w}faults: [{ at: 3, kind: pause, target: vm:a, for: 2 }]\n`, 'faults[0].at: must be a duration such as 5s, 250ms or 2m, not 3 (a duration needs its unit: 3s or 3ms)\nfaults[0].for: must be a duration such as 5s, 250ms or 2m, not 2 (a duration needs its unit: 2s or 2ms)'],
      // Long values cut.
      [`name: z\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nduration: "${'9'.repeat(5000)}ms"\n`, `duration: must be a duration such as 5s, 250ms or 2m, not "${'9'.repeat(38)}…`],
      [`${base}${w}faults: [{ at: 1s, kind: ${'k'.repeat(5000)}, target: vm:a, for: 1s }]\n`, `faults[0].kind: "${'k'.repeat(38)}… is not a fault kind (kill, pause, vmbus, interrupt-delay, clock, vp-stall, lp-shrink, link, partition, bitflip)`],
      [`${base}workloads: [{ name: a, host: h1, workload: "memdirty:${'9'.repeat(5000)}" }]\n`, `workloads[0].workload: workload "memdirty:${'9'.repeat(51)}…": memdirty's size "${'9'.repeat(40)}…" is not a size of whole 4 KiB pages, such as 4K, 8M or 1G`],
      // Said with the value.
      [`${base}cluster: shared\n${w}`, 'cluster: must be new (bring up hosts h1..hN for the run) or existing (the cluster up in HVLAB_HOME), not "shared"'],
      [`${base}workloads: [{ name: a, host: H1 }]\n`, 'workloads[0].host: a host name is 1-10 lower-case letters, digits or "-", starting with a letter, not "H1"'],
      [`${base}${w}checks: { memory: 1 }\n`, 'checks.memory: must be true or false, not 1'],
      // A random section that is not a map: said once (it was said twice, in two words).
      [`${base}${w}random: 123\n`, 'random: must be a map (name: value)\nrandom.count: is missing: how many faults to draw (or random.moves: how many moves)'],
    ];
    for (const [text, want] of cases) expect(said(text), text.slice(0, 120)).to.equal(want);
  });

  it('cuts a long key in a problem\'s field path to 64 characters (a valid name stays whole): an unknown field or parameter of 100,000 characters went whole into the path', () => {
    const base = 'name: z\nkind: faults\nhosts: 2\nworkloads: [{ name: a, host: h1 }]\n';
    // YAML takes an implicit key of at most 1024 characters; a longer one is written as ? KEY.
    const key = 'k'.repeat(1000);
    const huge = `? ${'k'.repeat(100_000)}\n: 1\n`;
    const cut = `${'k'.repeat(FIELD_KEY_MAX - 1)}…`;
    const fields = (text: string): string[] => problems(text).map((x) => x.field);
    expect(fields(`${base}${key}: 1\n`)).to.deep.equal([cut]);
    expect(fields(`${base}${huge}`)).to.deep.equal([cut]);
    expect(fields(`${base}checks: { ${key}: true }\n`)).to.deep.equal([`checks.${cut}`]);
    expect(fields(`${base}faults: [{ at: 1s, kind: pause, target: vm:a, for: 1s, ${key}: 1 }]\n`)).to.deep.equal([`faults[0].${cut}`]);
    expect(fields(`${base}faults: [{ at: 1s, kind: pause, target: vm:a, for: 1s, params: { ${key}: 1 } }]\n`)).to.deep.equal([`faults[0].params.${cut}`]);
    expect(fields(`${base}random: { count: 1, ${key}: 1 }\n`)).to.deep.equal([`random.${cut}`]);
    // A key of FIELD_KEY_MAX characters is whole.
    expect(fields(`${base}${'k'.repeat(FIELD_KEY_MAX)}: 1\n`)).to.deep.equal(['k'.repeat(FIELD_KEY_MAX)]);
    for (const p of problems(`${base}${huge}? ${'k'.repeat(100_000)}x\n: 2\n`)) expect(p.message.length + p.field.length, p.field).to.be.below(700);
  });

  it('refuses __proto__ as a fault parameter, beside the fault\'s fields or under params, as any name a kind does not take', () => {
    const base = 'name: z\nkind: faults\nhosts: 2\nworkloads: [{ name: a, host: h1 }]\n';
    const said = (text: string): string[] => problems(text).map((x) => `${x.line}:${x.column}: ${x.field}: ${x.message}`);
    expect(said(`${base}faults: [{ at: 1s, kind: pause, target: vm:a, for: 1s, __proto__: 1 }]\n`)).to.deep.equal(['5:67: faults[0].__proto__: a pause fault has no parameter "__proto__" (it takes none)']);
    expect(said(`${base}faults: [{ at: 1s, kind: pause, target: vm:a, for: 1s, params: { "__proto__": 1 } }]\n`)).to.deep.equal(['5:79: faults[0].params.__proto__: a pause fault has no parameter "__proto__" (it takes none)']);
    // A map there became the parameters' prototype, its delayMs unseen: "link: give an impairment".
    expect(said(`${base}faults: [{ at: 1s, kind: link, target: link:h1-h2, for: 1s, cut: true, params: { __proto__: { delayMs: 5 } } }]\n`)).to.deep.equal([
      '5:93: faults[0].params.__proto__: a link fault has no parameter "__proto__" (it takes delayMs, jitterMs, rateBps, lossPercent, cut)',
    ]);
    expect(({} as { delayMs?: unknown }).delayMs, 'no prototype was touched').to.equal(undefined);
  });

  it('a fault parameter the request\'s check refuses is said with its own range and the value the file gave it', () => {
    const base = 'name: z\nkind: faults\nhosts: 2\nworkloads: [{ name: a, host: h1, vps: 2 }]\nfaults:\n  - { at: 1s, for: 1s, ';
    const said = (fault: string): string => problems(`${base}${fault} }\n`).map((x) => `${x.field}: ${x.message}`).join('\n');
    // A value that was not a whole number was held to ±2^53 first ('"lps" must be a whole number from -9007199254740991 to 9007199254740991').
    expect(said('kind: lp-shrink, target: host:h1, lps: 1.5')).to.equal('faults[0].lps: lp-shrink: "lps" must be a whole number from 1 to 1024, not 1.5');
    expect(said('kind: lp-shrink, target: host:h1, lps: "many"')).to.equal('faults[0].lps: lp-shrink: "lps" must be a whole number from 1 to 1024, not "many"');
    expect(said('kind: bitflip, target: vm:a, gpa: .nan')).to.equal('faults[0].gpa: bitflip: "gpa" must be a guest physical address from 0x0 to 0xffffffff (no VM has more than 4G of memory), not .nan');
    expect(said('kind: clock, target: vm:a, skewPpm: 1e308')).to.equal('faults[0].skewPpm: clock: "skewPpm" must be a whole number from -900000 to 10000000, not 1e308');
    expect(said('kind: interrupt-delay, target: vm:a, delayMs: .inf')).to.equal('faults[0].delayMs: interrupt-delay: "delayMs" must be a whole number from 1 to 60000, not .inf');
    expect(said('kind: vmbus, target: vm:a, channel: heartbeat, drop: 2')).to.equal('faults[0].drop: vmbus: "drop" must be a number from 0 to 1, not 2');
    expect(said('kind: kill, target: vm:a, restart: maybe')).to.equal('faults[0].restart: kill: "restart" must be true or false, not "maybe"');
    // A shape was said at the fault, not at its shape.
    expect(said('kind: partition, target: cluster, shape: donut')).to.equal('faults[0].shape: partition: "shape" must be one of one, majority, ring, bridge, minority-third, not "donut"');
    // A list says what a list may hold.
    expect(said(`kind: vp-stall, target: vm:a, vps: [${Array.from({ length: 65 }, () => 0).join(', ')}]`)).to.equal('faults[0].vps: parameter "vps" must be a number, text, true/false or a list of at most 64 numbers');
    // An lp-shrink of 2-LP hosts is to 1 ("shrink to 1 to 1").
    expect(said('kind: lp-shrink, target: host:h1, lps: 2')).to.equal('faults[0].lps: lp-shrink to 2 takes nothing away: the run\'s hosts have 2 LPs each (lps: 2); shrink to 1');
  });

  it('counts workloads, faults and moves before reading any: at most 1000 VMs (64 on an existing cluster, what a run\'s lease names), 1000 faults, 1000 moves, each one problem', () => {
    const head = 'name: z\nkind: faults\nhosts: 2\nduration: 3000s\n';
    const vms = (n: number): string => `workloads:\n${Array.from({ length: n }, (_, i) => `  - { name: w${i}, host: h1 }`).join('\n')}\n`;
    // 30,000 VMs were taken, after 9 s of checking each name against those before it.
    expect(parse(`${head}${vms(1000)}`).workloads).to.have.length(1000);
    expect(problems(`${head}${vms(1001)}`).map((x) => `${x.line}:${x.field}: ${x.message}`)).to.deep.equal(['6:workloads: at most 1000 VMs, not 1001']);
    // On an existing cluster the run's lease, which names at most 64, would refuse its renewals;
    // a new cluster's lease names no VM (the run takes the whole cluster down), so 65 are taken there.
    const existing = 'name: z\nkind: faults\ncluster: existing\nduration: 3000s\n';
    expect(parse(`${existing}${vms(64)}`).workloads).to.have.length(64);
    expect(problems(`${existing}${vms(65)}`).map((x) => `${x.line}:${x.field}: ${x.message}`)).to.deep.equal([
      '6:workloads: at most 64 VMs on an existing cluster (the run names each one it makes to its lease there, which takes 64), not 65',
    ]);
    expect(parse(`${head}${vms(65)}`).workloads).to.have.length(65);
    // 1001 faults, each wrong: one problem, not 1001 and the count's.
    const faults = `faults:\n${Array.from({ length: 1001 }, () => '  - { at: 1s, kind: nap, target: vm:w0, for: 1s }').join('\n')}\n`;
    expect(problems(`${head}${vms(1)}${faults}`).map((x) => `${x.field}: ${x.message}`)).to.deep.equal(['faults: a schedule holds at most 1000 faults, not 1001']);
    // Moves had no bound.
    const moves = (n: number): string => `moves:\n${Array.from({ length: n }, (_, i) => `  - { at: ${i + 1}s, vm: w0, to: h${i % 2 === 0 ? 2 : 1} }`).join('\n')}\n`;
    expect(parse(`${head}${vms(1)}${moves(1000)}`).moves).to.have.length(1000);
    expect(problems(`${head}${vms(1)}${moves(1001)}`).map((x) => `${x.field}: ${x.message}`)).to.deep.equal(['moves: at most 1000 moves, not 1001']);
  });

  it('reads a file of JSON on one line, as JSON.stringify writes it, as it reads the same JSON indented', () => {
    // Each key's colon on the one line counted as a level: 20 faults "nested more than 64 levels deep".
    const spec = {
      name: 'j', kind: 'faults', hosts: 2, duration: '60s', workloads: [{ name: 'a', host: 'h1' }],
      faults: Array.from({ length: 20 }, (_, i) => ({ at: `${i + 1}s`, kind: 'pause', target: 'vm:a', for: '500ms' })),
    };
    const { source: _a, sourceSha256: _b, ...oneLine } = parseChaosExperiment(JSON.stringify(spec), 'c.json');
    const { source: _c, sourceSha256: _d, ...indented } = parseChaosExperiment(JSON.stringify(spec, null, 2), 'c.json');
    expect(oneLine.faults).to.have.length(20);
    expect(oneLine).to.deep.equal(indented);
  });

  it('an existing cluster\'s host and link names are left to the run (the cluster says which it has)', () => {
    const s = parse('name: e\nkind: faults\ncluster: existing\nworkloads: [{ name: a, host: zz }]\nfaults: [{ at: 1s, kind: link, target: link:zz-yy, for: 1s, cut: true }]\n');
    expect(s).to.include({ cluster: 'existing', hosts: null, lps: null });
    expect(s.faults[0]!.target).to.equal('link:zz-yy');
  });

  it('never throws anything but ChaosExperimentError on random or mutated input (seeded, 1000 cases)', () => {
    const next = seededRandom(0xc4a05);
    const alphabet = 'name:kind:faults:workloads:random:at:for:target:vm:host:link:h1h2{}[],+- \n#"\'0123456789msk%&*!|>pause';
    let accepted = 0;
    for (let i = 0; i < 1000; i++) {
      let text: string;
      if (next() < 0.7) {
        const chars = SMALL.split('');
        const edits = 1 + Math.floor(next() * 4);
        for (let e = 0; e < edits; e++) chars[Math.floor(next() * chars.length)] = alphabet[Math.floor(next() * alphabet.length)]!;
        text = chars.join('');
      } else text = Array.from({ length: Math.floor(next() * 200) }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
      try {
        parseChaosExperiment(text);
        accepted++;
      } catch (e) {
        expect(e, JSON.stringify(text)).to.be.instanceOf(ChaosExperimentError);
        expect((e as ChaosExperimentError).problems.length).to.be.greaterThan(0);
      }
    }
    expect(accepted, 'some mutations still decode').to.be.greaterThan(0);
  });

  it('moves: decoded with their method\'s options, sorted by offset; a VM, host or method the run lacks, a move to where the VM is by then, and a move after the end are refused with their places', () => {
    const base = 'name: mv\nkind: faults\nhosts: 3\nduration: 20s\nworkloads:\n  - { name: a, host: h1 }\n  - { name: b, host: h2 }\nmoves:\n';
    const s = parse(`${base}  - { at: 9s, vm: a, to: h3, method: postcopy+compress, bandwidth: 80mbit }\n  - { at: 3s, vm: a, to: h2, downtimeLimit: 300ms, maxPasses: 5, bandwidth: 4M }\n`);
    expect(s.moves).to.deep.equal([
      { atMs: 3000, vm: 'a', to: 'h2', method: 'precopy', options: { downtimeLimitMs: 300, maxPasses: 5, bandwidthBps: 4 * 1024 * 1024 }, fileIndex: 1 },
      { atMs: 9000, vm: 'a', to: 'h3', method: 'postcopy+compress', options: { postcopy: true, compress: true, bandwidthBps: 10_000_000 }, fileIndex: 0 },
    ]);
    // On an existing cluster, a move to a host it lacks is named by its place in the file, not its place in time.
    const ex = parse('name: mv\nkind: faults\ncluster: existing\nduration: 30s\nworkloads:\n  - { name: a, host: h1 }\n  - { name: b, host: h2 }\nmoves:\n  - { at: 20s, vm: a, to: h9 }\n  - { at: 5s, vm: b, to: h1 }\n');
    expect(existingClusterProblems(ex, ['h1', 'h2']).map((x) => `${x.field} ${x.path.join('.')}: ${x.message}`)).to.deep.equal(['moves[0].to moves.0.to: a moves to host h9, which the cluster up here lacks (its hosts: h1, h2)']);
    expect(s.checks.placement).to.equal(true);
    expect(parse(`${base}  - { at: 1s, vm: b, to: h1 }\ncheck: 1\n`.replace('check: 1\n', 'checks: { placement: false }\n')).checks.placement).to.equal(false);
    const p = problems(`${base}  - { at: 2s, vm: zz, to: h2 }\n  - { at: 4s, vm: b, to: h9 }\n  - { at: 5s, vm: b, to: h3, method: sideways }\n  - { at: 6s, vm: a, to: h1 }\n  - { at: 25s, vm: b, to: h1 }\n  - { at: 7s, vm: b, to: h1, speed: 3 }\n`);
    const got = p.map((x) => `${x.line}:${x.field}: ${x.message}`);
    expect(got).to.have.length(6);
    expect(got[0]).to.match(/^9:moves\[0\]\.vm: "zz" is not one of the workloads \(a, b\)/);
    expect(got[1]).to.match(/^10:moves\[1\]\.to: host h9 is not a host of the cluster/);
    expect(got[2]).to.match(/^11:moves\[2\]\.method: "sideways" is not a method/);
    expect(got[3]).to.match(/^12:moves\[3\]\.to: a is on h1 by 6s/);
    expect(got[4]).to.match(/^13:moves\[4\]\.at: "25s" is out of range/);
    expect(got[5]).to.match(/^14:moves\[5\]\.speed: is not a field here/);
  });

  it('the shipped moves example checks: three moves in the order of their offsets, one by post-copy', () => {
    const s = loadChaosExperiment(join(import.meta.dirname, '..', '..', '..', 'scripts', 'experiments', 'chaos-moves.yaml'));
    if (s instanceof ChaosExperimentError) throw s;
    expect(s.moves.map((m) => `${m.atMs} ${m.vm}>${m.to} ${m.method}`)).to.deep.equal(['4000 mc>h2 precopy', '6000 mm>h1 precopy+compress', '16000 mc>h3 postcopy']);
    expect(s.faults).to.have.length(3);
  });

  it('with cluster: new, refuses what its topology cannot take (the nemesis or a root would refuse it when it came), each at its line, column and field', () => {
    const text = [
      'name: topo',                                                                          // 1
      'kind: faults',                                                                        // 2
      'hosts: 2',                                                                            // 3
      'lps: 1',                                                                              // 4
      'duration: 30s',                                                                       // 5
      'workloads:',                                                                          // 6
      '  - { name: one, host: h1, vps: 1 }',                                                 // 7
      '  - { name: four, host: h2, vps: 4 }',                                                // 8
      'faults:',                                                                             // 9
      '  - { at: 1s, kind: lp-shrink, target: host:h1, for: 2s, lps: 5 }',                   // 10
      '  - { at: 1s, kind: lp-shrink, target: host-of:four, for: 2s, params: { lps: 1 } }',  // 11
      '  - { at: 1s, kind: vp-stall, target: vm:one, for: 2s, vps: [9] }',                   // 12
      '  - { at: 1s, kind: vp-stall, target: vms:one, for: 2s, vps: "0,3" }',                // 13
      '  - { at: 5s, kind: partition, target: cluster, for: 2s, shape: majority }',          // 14
      '  - { at: 9s, kind: link, target: link:h1-h3, for: 2s, cut: true }',                  // 15
      '  - { at: 12s, kind: partition, target: cluster, for: 2s, shape: minority-third }',   // 16
      '  - { at: 12s, kind: vp-stall, target: vm:four, for: 2s, vps: [0, 3] }',              // 17
      '  - { at: 12s, kind: vp-stall, target: vms:all, for: 2s }',                           // 18
    ].join('\n');
    const got = problems(text).map((x) => `${x.line}:${x.column} ${x.field}: ${x.message}`);
    expect(got).to.deep.equal([
      '10:63 faults[0].lps: lp-shrink to 5 takes nothing away: the run\'s hosts have 1 LP each (lps: 1), the fewest a host has (give them 2 or more to shrink)',
      '11:78 faults[1].params.lps: lp-shrink to 1 takes nothing away: the run\'s hosts have 1 LP each (lps: 1), the fewest a host has (give them 2 or more to shrink)',
      '12:61 faults[2].vps: VM one has 1 VP (VP 0): there is no VP 9',
      '13:62 faults[3].vps: VM one has 1 VP (VP 0): there is no VP 3, and vms:one may pick it',
      '14:65 faults[4].shape: shape majority needs at least 3 hosts (the cluster has 2)',
      '15:35 faults[5].target: link:h1-h3 is not a link between two hosts of the cluster (h1, h2)',
    ]);
    // What the same cluster can take is taken: minority-third of 2 hosts cuts their link (as one
    // does); VPs the VM has; every VP of every VM; and with 2 LPs, a shrink to 1.
    const fine = parse(text.split('\n').filter((_, i) => i < 9 || i >= 15).join('\n'));
    expect(fine.faults.map((f) => `${f.kind} ${f.target}`)).to.deep.equal(['partition cluster', 'vp-stall vm:four', 'vp-stall vms:all']);
    const lps2 = parse(text.replace('lps: 1\n', 'lps: 2\n').split('\n').filter((_, i) => i < 9 || i === 10 || i >= 15).join('\n'));
    expect(lps2.faults.map((f) => `${f.kind} ${f.target} ${JSON.stringify(f.params)}`)).to.include('lp-shrink host-of:four {"lps":1}');
    expect(problems(text.replace('lps: 1\n', 'lps: 2\n').replace('lps: 5', 'lps: 2')).find((x) => x.line === 10)!.message).to.equal('lp-shrink to 2 takes nothing away: the run\'s hosts have 2 LPs each (lps: 2); shrink to 1');
    // Majority takes 3 hosts; a ring 4.
    const three = text.replace('hosts: 2', 'hosts: 3').split('\n').filter((_, i) => i < 9 || i === 13 || i === 14).join('\n');
    expect(parse(three).faults.map((f) => `${f.params.shape ?? f.target}`)).to.deep.equal(['majority', 'link:h1-h3']);
    expect(problems(three.replace('shape: majority', 'shape: ring')).map((x) => `${x.line}:${x.column} ${x.field}: ${x.message}`)).to.deep.equal(['10:65 faults[0].shape: shape ring needs at least 4 hosts (the cluster has 3)']);
    // An existing cluster's hosts and LPs are the run's to find: not checked here.
    const existing = parse(text.replace('hosts: 2\nlps: 1\n', 'cluster: existing\n').split('\n').filter((_, i) => i < 10).join('\n'));
    expect(existing.faults.map((f) => `${f.kind} ${JSON.stringify(f.params)}`)).to.deep.equal(['lp-shrink {"lps":5}', 'lp-shrink {"lps":1}']);
  });

  it('a vp-stall beyond the VPs the hypervisor stalls is refused too, every VP of a VM that has more among them, and one that names a VP twice', () => {
    const base = 'name: v\nkind: faults\nduration: 10s\nworkloads:\n  - { name: big, host: h1, vps: 64, memory: 256M }\nfaults:\n';
    const p = problems(`${base}  - { at: 1s, kind: vp-stall, target: vm:big, for: 2s }\n  - { at: 4s, kind: vp-stall, target: vm:big, for: 2s, vps: [1, 60] }\n`);
    expect(p.map((x) => `${x.field}: ${x.message}`)).to.deep.equal([
      `faults[0].vps: the hypervisor stalls VPs 0 to ${FAULT_STALL_MAX_VP} only, not VP ${FAULT_STALL_MAX_VP + 1} (VM big has 64 VPs: name the VPs to stall)`,
      `faults[1].vps: the hypervisor stalls VPs 0 to ${FAULT_STALL_MAX_VP} only, not VP 60`,
    ]);
    expect(parse(`${base}  - { at: 1s, kind: vp-stall, target: vm:big, for: 2s, vps: [0, ${FAULT_STALL_MAX_VP}] }\n`).faults).to.have.length(1);
    // A VP named twice is refused at its field (it was merged without a word).
    expect(problems(`${base}  - { at: 1s, kind: vp-stall, target: vm:big, for: 2s, vps: [3, 0, 3] }\n  - { at: 4s, kind: vp-stall, target: vm:big, for: 2s, vps: "1,1" }\n`).map((x) => `${x.field}: ${x.message}`)).to.deep.equal([
      'faults[0].vps: vp-stall: "vps" names VP 3 more than once: name each VP once',
      'faults[1].vps: vp-stall: "vps" names VP 1 more than once: name each VP once',
    ]);
    // As a function: what a selector may pick must do, and other kinds are not its business.
    const t = (x: string) => {
      const r = parseTarget(x);
      if (!r.ok) throw new Error(r.message);
      return r.value;
    };
    const vms = [{ name: 'a', vps: 2 }, { name: 'b', vps: 1 }];
    expect(topologyProblem('vp-stall', t('vms:all'), { vps: [1] }, 2, vms)?.message).to.equal('VM b has 1 VP (VP 0): there is no VP 1');
    expect(topologyProblem('vp-stall', t('vm:a'), { vps: [1] }, 2, vms)).to.equal(null);
    expect(topologyProblem('vp-stall', t('vms:majority'), { vps: null }, 2, vms)).to.equal(null);
    expect(topologyProblem('lp-shrink', t('hosts:all'), { lps: 1 }, 2, vms)).to.equal(null);
    expect(topologyProblem('lp-shrink', t('hosts:one'), { lps: 3 }, 2, vms)?.param).to.equal('lps');
    expect(topologyProblem('pause', t('vm:a'), {}, 1, vms)).to.equal(null);
    // LPs not known (an existing cluster's): no lp-shrink is judged here.
    expect(topologyProblem('lp-shrink', t('hosts:one'), { lps: 3 }, null, vms)).to.equal(null);
  });

  it('a bitflip outside a VM\'s guest RAM, and a vp-stall of a VP it lacks, are refused on an existing cluster too (its VMs are the workloads the run makes)', () => {
    const base = 'name: b\nkind: faults\ncluster: existing\nduration: 10s\nworkloads:\n  - { name: small, host: x, memory: 16M }\n  - { name: big, host: y, memory: 64M, vps: 2 }\nfaults:\n';
    const p = problems(`${base}  - { at: 1s, kind: bitflip, target: vm:small, for: 0, gpa: 0x1000000 }\n  - { at: 1s, kind: bitflip, target: vms:one, for: 0, gpa: 0x2000000 }\n  - { at: 1s, kind: vp-stall, target: vm:small, for: 1s, vps: 1 }\n`);
    expect(p.map((x) => `${x.line} ${x.field}: ${x.message}`)).to.deep.equal([
      '9 faults[0].gpa: GPA 0x1000000 is outside VM small\'s guest RAM: the VM has 16M of memory, and a bit flip takes a GPA from 0x0 to 0xffefff (its top page holds the dirty bitmap)',
      '10 faults[1].gpa: GPA 0x2000000 is outside VM small\'s guest RAM: the VM has 16M of memory, and a bit flip takes a GPA from 0x0 to 0xffefff (its top page holds the dirty bitmap), and vms:one may pick it',
      '11 faults[2].vps: VM small has 1 VP (VP 0): there is no VP 1',
    ]);
    const ok = parse(`${base}  - { at: 1s, kind: bitflip, target: vm:big, for: 0, gpa: 0x2000000 }\n  - { at: 1s, kind: bitflip, target: vms:all, for: 0 }\n  - { at: 1s, kind: vp-stall, target: vm:big, for: 1s, vps: 1 }\n`);
    expect(ok.faults.map((f) => f.kind)).to.deep.equal(['bitflip', 'bitflip', 'vp-stall']);
  });

  it('PARTITION_MIN_HOSTS is what partitionCuts makes of a full mesh: below it a shape cuts nothing (or is refused), from it on it cuts', () => {
    for (const shape of PARTITION_SHAPES) {
      for (let n = 1; n <= 32; n++) {
        const hosts = Array.from({ length: n }, (_, i) => `h${i + 1}`);
        const mesh = hosts.flatMap((a, i) => hosts.slice(i + 1).map((b) => [a, b] as [string, string]));
        for (const seed of [0, 1, 7, 12345]) {
          let cuts = 0;
          try {
            cuts = partitionCuts(shape, hosts, mesh, seed).cuts.length;
          } catch (e) {
            expect(e).to.be.instanceOf(ResolveError);
          }
          expect(cuts > 0, `${shape} of ${n} hosts (seed ${seed}): ${cuts} cuts`).to.equal(n >= PARTITION_MIN_HOSTS[shape]);
        }
      }
    }
  });

  it('random kinds left out are those the cluster can take; named ones it cannot take are refused', () => {
    const base = 'name: k\nkind: faults\nhosts: 2\nlps: 1\nduration: 30s\nworkloads: [{ name: a, host: h1 }]\n';
    const s = parse(`${base}random: { count: 4 }\n`);
    expect(s.random!.kinds).to.not.include('lp-shrink');
    expect(s.random!.kinds).to.include.members(['pause', 'vp-stall', 'link', 'partition']);
    expect(parse(`${base.replace('lps: 1', 'lps: 2')}random: { count: 4 }\n`).random!.kinds).to.include('lp-shrink');
    // One host: no link, no partition (before, the file was refused for kinds it did not name).
    const one = parse(`${base.replace('hosts: 2', 'hosts: 1')}random: { count: 4 }\n`);
    expect(one.random!.kinds).to.not.include.members(['link', 'partition']);
    const p = problems(`${base}random: { count: 4, kinds: [pause, lp-shrink] }\n`);
    expect(p.map((x) => `${x.line}:${x.column} ${x.field}: ${x.message}`)).to.deep.equal(['7:28 random.kinds: nothing for a lp-shrink fault to hit (the run\'s hosts have 1 LP each, lps: 1: there is nothing to shrink)']);
    const q = problems(`${base}random: { count: 4, targets: [host:h1], kinds: [lp-shrink] }\n`);
    expect(q.map((x) => x.field)).to.deep.equal(['random.kinds']);
    // Left out with targets: the kinds that hit one of them (a 1-LP host: a pause of its root or hypervisor).
    expect(parse(`${base}random: { count: 4, targets: [host:h1] }\n`).random!.kinds).to.deep.equal(['pause']);
  });

  it('a file that cannot be read is a problem, not a throw', () => {
    const e = loadChaosExperiment('/nonexistent/chaos.yaml');
    expect(e).to.be.instanceOf(ChaosExperimentError);
    expect((e as ChaosExperimentError).message).to.match(/does not exist/);
    expect(experimentKindOf('/nonexistent/chaos.yaml')).to.equal(null);
  });

  it('names a file read from disk by the SHA-256 of its bytes, as sha256sum does: with a BOM, CRLF line ends and text beyond ASCII; its source is those bytes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-chaos-sha-'));
    try {
      const bytes = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(SMALL.replace(/\n/g, '\r\n')), Buffer.from('# café ✓ 𝄞\r\n')]);
      writeFileSync(join(dir, 'chaos.yaml'), bytes);
      const s = loadChaosExperiment(join(dir, 'chaos.yaml'));
      if (s instanceof ChaosExperimentError) throw s;
      expect(s.name).to.equal('small');
      expect(Buffer.from(s.source, 'utf8').equals(bytes), 'the source recorded is the file\'s bytes').to.equal(true);
      expect(s.sourceSha256).to.equal(createHash('sha256').update(readFileSync(join(dir, 'chaos.yaml'))).digest('hex'));
      // Parsed from a text: its UTF-8 bytes' hash.
      expect(parse(SMALL).sourceSha256).to.equal(createHash('sha256').update(Buffer.from(SMALL, 'utf8')).digest('hex'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a chaos file that is not UTF-8', () => {
  it('is refused with one problem at its first bad sequence, naming its byte offset (its bytes were read as U+FFFD, and the source recorded was not the file)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-chaos-utf8-'));
    try {
      const head = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(SMALL), Buffer.from('# ok: ✓\n# caf')]);
      writeFileSync(join(dir, 'chaos.yaml'), Buffer.concat([head, Buffer.from([0xe9, 0x0a, 0xff])]));
      const e = loadChaosExperiment(join(dir, 'chaos.yaml'));
      expect(e).to.be.instanceOf(ChaosExperimentError);
      const line = SMALL.split('\n').length + 1;
      expect((e as ChaosExperimentError).problems).to.deep.equal([{ line, column: 6, field: '', message: `not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)` }]);
      expect((e as ChaosExperimentError).message).to.equal(`${join(dir, 'chaos.yaml')}:${line}:6: not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('chaos schedules', () => {
  const spec = parse(SMALL);
  const world = chaosWorld(spec);

  it('the same seed and file draw deep-equal schedules; another seed draws another', () => {
    const a = drawSchedule(5, spec, world);
    const b = drawSchedule(5, parse(SMALL), chaosWorld(parse(SMALL)));
    expect(a).to.deep.equal(b);
    expect(JSON.parse(JSON.stringify(a))).to.deep.equal(a);
    const c = drawSchedule(6, spec, world);
    expect(c).to.not.deep.equal(a);
    expect(c.filter((f) => f.source === 'random').map((f) => [f.atMs, f.kind, f.target])).to.not.deep.equal(a.filter((f) => f.source === 'random').map((f) => [f.atMs, f.kind, f.target]));
  });

  it('the world is sorted, so the order workloads are listed in does not change the draw', () => {
    const swapped = parse(SMALL.replace('  - { name: a, host: h1 }\n  - { name: b, host: h2, workload: "memdirty:4M", memory: 16M }', '  - { name: b, host: h2, workload: "memdirty:4M", memory: 16M }\n  - { name: a, host: h1 }'));
    expect(drawSchedule(5, swapped, chaosWorld(swapped))).to.deep.equal(drawSchedule(5, spec, world));
  });

  it('numbers faults f1… in order of start; explicit ones as written, drawn ones inside their window, on the grid, on targets the world has', () => {
    for (let seed = 0; seed < 50; seed++) {
      const s = drawSchedule(seed, spec, world);
      expect(s.map((f) => f.id)).to.deep.equal(s.map((_, i) => `f${i + 1}`));
      expect(s.map((f) => f.atMs)).to.deep.equal([...s.map((f) => f.atMs)].sort((x, y) => x - y));
      const explicit = s.filter((f) => f.source === 'explicit');
      expect(explicit.map((f) => `${f.atMs} ${f.kind} ${f.target} ${f.role}`)).to.deep.equal(['2000 pause vm:a null', '6000 link link:h1-h3 null', '9000 kill vm:b vmwp']);
      const drawn = s.filter((f) => f.source === 'random');
      expect(drawn).to.have.length(6);
      for (const f of drawn) {
        expect(f.atMs).to.be.at.least(12_000);
        expect(f.atMs + f.forMs).to.be.at.most(28_000);
        expect(f.forMs).to.be.within(1000, 2000);
        expect(f.atMs % 100).to.equal(0);
        expect(f.kind).to.not.equal('bitflip');
        expect(randomCandidates(f.kind, world, null)).to.include(f.target);
        const c = checkFaultRequest(faultRequest(f, 'o'));
        expect(c.ok, `seed ${seed} ${f.id} ${f.kind}: ${c.ok ? '' : c.message}`).to.equal(true);
        if (f.kind === 'kill') expect(f.params.restart).to.equal(true);
      }
    }
  });

  it('--check says which faults start while an earlier one holds their resource (the draw found no room): the nemesis may refuse them', () => {
    const text = 'name: ch\nkind: faults\nseed: 5\nhosts: 2\nlps: 1\nduration: 12s\nworkloads:\n  - { name: c1, host: h1, workload: counter, memory: 16M }\n  - { name: c2, host: h2, workload: counter, memory: 16M }\n'
      + 'faults:\n  - { at: 2s, kind: pause, target: vm:c1, for: 2s }\nrandom: { count: 2, kinds: [pause, link], for: [1s, 2s], between: [5s, 9s] }\n';
    const sched = plannedSchedule(parse(text), 5);
    // Two link faults of 1.8 s and 1.5 s drawn into 5-9 s: the first left no room for the second (a run refused it).
    expect(sched.map((f) => `${f.id} ${f.kind} ${f.atMs}+${f.forMs}`)).to.deep.equal(['f1 pause 2000+2000', 'f2 link 6400+1800', 'f3 link 6900+1500']);
    expect([...scheduleOverlaps(sched)]).to.deep.equal([['f3', 'f2']]);
    const lines = scheduleLines(sched);
    expect(lines[0]).to.equal(scheduleLine(sched[0]!));
    expect(lines[2]).to.equal(`${scheduleLine(sched[2]!)} — starts while f2 holds the network (link and partition faults share it): the nemesis may refuse it`);
    // The shipped example's draw has none, and a fault that starts as another ends does not overlap it.
    const shipped = loadChaosExperiment(EXAMPLE_FILE) as ChaosSpec;
    expect(scheduleOverlaps(plannedSchedule(shipped, shipped.seed)).size).to.equal(0);
    const f = (id: string, atMs: number): ScheduledFault => ({ id, source: 'explicit', atMs, kind: 'pause', target: 'vm:a', role: null, forMs: 1000, params: {}, seed: 1 });
    expect(scheduleOverlaps([f('f1', 0), f('f2', 1000)]).size).to.equal(0);
    expect([...scheduleOverlaps([f('f1', 0), f('f2', 999)])]).to.deep.equal([['f2', 'f1']]);
  });

  it('drawn faults never overlap on one resource when there is room (the network is one resource for links and partitions)', () => {
    const roomy = parse(SMALL.replace('count: 6', 'count: 4').replace('between: [12s, 28s]', 'between: [12s, 300s]').replace('duration: 30s', 'duration: 300s'));
    for (let seed = 0; seed < 50; seed++) {
      const s = drawSchedule(seed, roomy, chaosWorld(roomy));
      for (const x of s) {
        for (const y of s) {
          if (x === y || faultResource(x.kind, x.target) !== faultResource(y.kind, y.target)) continue;
          expect(x.atMs < y.atMs + y.forMs && y.atMs < x.atMs + x.forMs, `seed ${seed}: ${x.id} and ${y.id} overlap on ${faultResource(x.kind, x.target)}`).to.equal(false);
        }
      }
    }
  });

  it('explicit faults keep their seeds whatever the random section draws; a seed in the file is kept', () => {
    const without = parse(SMALL.replace(/random:[\s\S]*$/, ''));
    const a = drawSchedule(5, spec, world).filter((f) => f.source === 'explicit');
    const b = drawSchedule(5, without, chaosWorld(without));
    expect(a.map((f) => f.seed)).to.deep.equal(b.map((f) => f.seed));
    expect(new Set(a.map((f) => f.seed)).size).to.equal(3);
    const seeded = parse(SMALL.replace('for: 3s }', 'for: 3s, seed: 77 }'));
    expect(drawSchedule(5, seeded, world)[0]!.seed).to.equal(77);
  });

  it('random moves: drawn from a stream of their own (the faults a seed draws do not change), inside the window, each a workload to a host it is not on by then, by the methods asked; the file\'s moves numbered with them', () => {
    const withMoves = SMALL.replace('random:\n  count: 6\n', 'moves:\n  - { at: 14s, vm: a, to: h3 }\nrandom:\n  count: 6\n  moves: 5\n  methods: [precopy, postcopy+compress]\n');
    const m = parse(withMoves);
    expect(m.random!.moves).to.equal(5);
    expect(m.random!.methods).to.deep.equal([{ method: 'precopy', options: {} }, { method: 'postcopy+compress', options: { postcopy: true, compress: true } }]);
    const w = chaosWorld(m);
    const methods = new Set<string>();
    for (let seed = 0; seed < 60; seed++) {
      // The faults are those of the same file without moves.
      expect(drawSchedule(seed, m, w)).to.deep.equal(drawSchedule(seed, spec, world));
      const moves = drawMoves(seed, m, w);
      expect(drawMoves(seed, parse(withMoves), chaosWorld(parse(withMoves)))).to.deep.equal(moves);
      expect(moves.map((x) => x.id)).to.deep.equal(moves.map((_, i) => `m${i + 1}`));
      expect(moves.filter((x) => x.source === 'explicit').map((x) => `${x.atMs} ${x.vm}>${x.to}`)).to.deep.equal(['14000 a>h3']);
      const drawn = moves.filter((x) => x.source === 'random');
      expect(drawn).to.have.length(5);
      const where = new Map(w.vms.map((v) => [v.name, v.host]));
      for (let i = 0; i < moves.length; i++) {
        const x = moves[i]!;
        if (i > 0) expect(x.atMs).to.be.at.least(moves[i - 1]!.atMs);
        if (x.source === 'random') {
          expect(x.atMs % 100, 'on the grid').to.equal(0);
          expect(x.atMs).to.be.within(12_000, 28_000);
          expect(['a', 'b']).to.include(x.vm);
          expect(x.to, `${x.id} to another host than ${x.vm}'s`).to.not.equal(where.get(x.vm));
          expect(w.hosts).to.include(x.to);
          methods.add(x.method);
        }
        where.set(x.vm, x.to);
      }
    }
    expect([...methods].sort()).to.deep.equal(['postcopy+compress', 'precopy']);
    expect(drawMoves(1, m, w)).to.not.deep.equal(drawMoves(2, m, w));
    // Moves only (no faults drawn); one host has nowhere to move to; methods go with moves.
    const only = parse(SMALL.replace('random:\n  count: 6\n', 'random:\n  moves: 2\n'));
    expect(only.random!.count).to.equal(0);
    expect(drawSchedule(3, only, chaosWorld(only)).every((f) => f.source === 'explicit')).to.equal(true);
    expect(drawMoves(3, only, chaosWorld(only)).map((x) => x.method)).to.deep.equal(['precopy', 'precopy']);
    const p = problems(SMALL.replace('hosts: 3', 'hosts: 1').replace('  - { name: b, host: h2, workload: "memdirty:4M", memory: 16M }\n', '').replace(/faults:\n(  - .*\n)+/, '').replace('random:\n  count: 6\n', 'random:\n  moves: 2\n  methods: [sideways]\n'));
    expect(p.map((x) => `${x.field}: ${x.message}`)).to.deep.equal(['random.moves: a move needs a host to go to: the cluster has one host', 'random.methods[0]: "sideways" is not a method: a method is offline, precopy, postcopy or one of them with +compress and +autoconverge']);
    const q = problems(SMALL.replace('random:\n  count: 6\n', 'random:\n  count: 6\n  methods: [precopy]\n'));
    expect(q.map((x) => x.field)).to.deep.equal(['random.methods']);
  });

  it('random targets restrict the draw; every kind draws only targets it takes; a partition needs two hosts', () => {
    const only = parse(SMALL.replace('between: [12s, 28s]', 'between: [12s, 28s]\n  kinds: [pause, link]\n  targets: [vm:b, link:h2-h3]'));
    for (let seed = 0; seed < 30; seed++) {
      for (const f of drawSchedule(seed, only, chaosWorld(only)).filter((x) => x.source === 'random')) expect(['vm:b', 'link:h2-h3']).to.include(f.target);
    }
    for (const k of FAULT_KINDS) {
      for (const t of randomCandidates(k, world, null)) {
        const c = checkFaultRequest({ kind: k, target: t, forMs: 1000, params: k === 'link' ? { cut: true } : k === 'lp-shrink' ? { lps: 1 } : k === 'interrupt-delay' ? { delayMs: 1 } : k === 'clock' ? { offsetMs: 5 } : k === 'vmbus' ? { drop: 1 } : {} });
        expect(c.ok, `${k} ${t}: ${c.ok ? '' : c.message}`).to.equal(true);
      }
    }
    expect(randomCandidates('partition', chaosWorld({ hosts: 1, workloads: [] }), null)).to.deep.equal([]);
    // LPs known: an lp-shrink (to 1) only of hosts with 2 or more; unknown (an existing cluster's), any host.
    expect(randomCandidates('lp-shrink', chaosWorld({ hosts: 2, lps: 1, workloads: [] }), null)).to.deep.equal([]);
    expect(randomCandidates('lp-shrink', chaosWorld({ hosts: 0, workloads: [] }, { hosts: ['x', 'y', 'z'], links: [], lps: { x: 1, y: 4 } }), null)).to.deep.equal(['host:y', 'host:z']);
    // Hosts without a link between them: no partition.
    expect(randomCandidates('partition', chaosWorld({ hosts: 0, workloads: [] }, { hosts: ['x', 'y'], links: [] }), null)).to.deep.equal([]);
    expect(linkOf('a-b-c', ['a-b', 'c'])).to.deep.equal(['a-b', 'c']);
    expect(linkOf('h1-h9', ['h1', 'h2'])).to.equal(null);
  });

  it('draws only faults the topology takes (no lp-shrink of a 1-LP host, no shape the hosts cannot make, no VP a VM lacks), the same for the same seed', () => {
    /** Why the run would refuse drawn fault `f` in `w` (LPs of each host `lps`), or null. */
    const refusal = (f: ScheduledFault, w: ChaosWorld, lps: number): string | null => {
      const c = checkFaultRequest(faultRequest(f, 'o'));
      if (!c.ok) return c.message;
      const t = parseTarget(f.target);
      if (!t.ok) return t.message;
      const tp = topologyProblem(f.kind, t.value, f.params, lps, w.vms.map((v) => ({ name: v.name, vps: v.vps ?? 1 })));
      if (tp) return tp.message;
      if (f.kind === 'partition') {
        try {
          if (partitionCuts(f.params.shape as never, w.hosts, w.links, f.seed).cuts.length === 0) return 'cuts no link';
        } catch (e) {
          return (e as Error).message;
        }
      }
      return null;
    };
    let drawn = 0;
    const seen = new Set<string>();
    for (const hosts of [1, 2, 3, 4]) {
      for (const lps of [1, 2]) {
        const text = `name: d\nkind: faults\nhosts: ${hosts}\nlps: ${lps}\nduration: 60s\nworkloads:\n  - { name: a, host: h1, vps: 1 }\n  - { name: b, host: h${hosts}, vps: 64, memory: 256M }\nrandom: { count: 20, for: [1s, 2s], between: [1s, 59s] }\n`;
        const sp = parse(text);
        const w = chaosWorld(sp);
        for (let seed = 0; seed < 25; seed++) {
          const sched = drawSchedule(seed, sp, w);
          expect(drawSchedule(seed, parse(text), chaosWorld(parse(text))), 'the same seed draws the same').to.deep.equal(sched);
          expect(sched, `${hosts} hosts, ${lps} LPs, seed ${seed}: all ${sp.random!.count} drawn`).to.have.length(20);
          for (const f of sched) {
            drawn++;
            seen.add(`${f.kind}${f.params.shape ? `:${f.params.shape}` : ''}`);
            expect(refusal(f, w, lps), `${hosts} hosts, ${lps} LPs, seed ${seed}: ${f.id} ${f.kind} ${f.target} ${JSON.stringify(f.params)}`).to.equal(null);
          }
        }
      }
    }
    expect(drawn).to.be.greaterThan(1000);
    // Every kind and shape was drawn somewhere, the ones with limits where they fit.
    for (const k of ['lp-shrink', 'vp-stall', 'partition:one', 'partition:majority', 'partition:minority-third', 'partition:bridge', 'partition:ring']) expect([...seen], k).to.include(k);
    // An existing cluster's world as the run finds it: its 1-LP host is not shrunk, a partition
    // is drawn only where a link is; kinds with nothing to hit are not drawn, and the count holds.
    const ex = parse('name: e\nkind: faults\ncluster: existing\nduration: 60s\nworkloads: [{ name: a, host: x }]\nrandom: { count: 10, kinds: [lp-shrink, partition], for: [1s, 2s], between: [1s, 59s] }\n');
    const exWorld = chaosWorld(ex, { hosts: ['x', 'y'], links: [], lps: { x: 1, y: 2 } });
    for (let seed = 0; seed < 20; seed++) {
      const sched = drawSchedule(seed, ex, exWorld);
      expect(sched.map((f) => `${f.kind} ${f.target}`)).to.deep.equal(Array.from({ length: 10 }, () => 'lp-shrink host:y'));
    }
    expect(drawSchedule(1, ex, chaosWorld(ex, { hosts: ['x'], links: [], lps: { x: 1 } }))).to.deep.equal([]);
  });
});
