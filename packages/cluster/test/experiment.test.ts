/**
 * Experiments without processes: the experiment file's checking decoder (a full example decodes
 * to what it says, YAML and JSON alike; defaults fill what is left out; every mistake is refused
 * with its line, column and field, all at once; a kind not built yet is refused by name; no input
 * makes it throw anything but ExperimentError), the run loop against a fake pair of hosts (a
 * refused method is recorded as unsupported and skipped, a failed move or VM is recorded, every VM
 * made is deleted), the summary, and the report's files: CSV, Markdown and well-formed SVG plots.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LineCounter } from 'yaml';
import { MgmtCallError, type MgmtClient } from '@hvlab/host';
import { MIGRATION_DEFAULTS, VM_NAME_RE, emptyRam, seededRandom, type MigrationPass, type MigrationStats } from '@hvlab/protocol';
import {
  CSV_COLUMNS, ClusterError, FIELD_KEY_MAX, clusterDriver, parseTopology, yamlNestingProblem, PROBLEM_MAX_CHARS, problem, problemsText, writeReportOrElsewhere, ExperimentError, MoveRefused, REPORT_FILES, barChartSvg, experimentSummaryRows, makeReportDir, newReport, formatBinaryBytes, escapeXml, experimentPlots, lineChartSvg, loadExperiment, niceScale, parseExperiment, parseMethod,
  resultsCsv, resultsMarkdown, runLine, runMoves, runStats, ProbeStopped, stoppableProbe, stoppedEarly, summarize, writeReport, type ExperimentDriver, type ExperimentProblem, type ExperimentReport, type ExperimentRun,
  type ExperimentSpec,
} from '../src/index.js';

const EXAMPLE = `# pre-copy against stop-and-copy
name: precopy-vs-offline
kind: migration
seed: 7
cluster: new
from: h1
to: h2
vm: { memory: 256M, vps: 2, workload: memdirty:32M }
link: { rate: 1gbit, delay: 2ms, loss: 0% }
methods: [offline, precopy, precopy+compress, precopy+autoconverge, postcopy]
options: { downtimeLimit: 300ms, maxPasses: 10, bandwidth: 0 }
repetitions: 3
`;

/** The error `text` is refused with (exp.yaml); a file that is taken fails the test. */
function refusal(text: string): ExperimentError {
  try {
    parseExperiment(text, 'exp.yaml');
  } catch (e) {
    expect(e).to.be.instanceOf(ExperimentError);
    return e as ExperimentError;
  }
  throw new Error('the experiment was accepted');
}

function problems(text: string): ExperimentProblem[] {
  return refusal(text).problems;
}

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

function pass(n: number, dirty: number, at: number): MigrationPass {
  return { pass: n, pages: 1000, dirtyPages: dirty, ms: 100, at };
}

/** Statistics of a move as a host returns them. */
function stats(method: 'precopy' | 'offline' | 'postcopy', status: MigrationStats['status'], total: number, downtime: number, transferred: number, passes: MigrationPass[], error?: string): MigrationStats {
  return {
    vm: 'x', from: 'h1', to: 'h2', method, status, 'total-time': total, 'setup-time': 5, downtime, ...(status === 'completed' ? { 'downtime-acked': downtime + 3 } : {}), 'expected-downtime': 0,
    ram: { ...emptyRam(64 * 1024 * 1024), transferred, remaining: 0, duplicate: 12000, normal: 4000 }, pass: passes.length, 'compression-ratio': 1, 'throttle-percentage': 0,
    'dirty-tracking': 'kernel', passes, options: { ...MIGRATION_DEFAULTS }, startedAt: '2026-12-01T00:00:00.000Z', ...(error ? { 'error-desc': error } : {}),
  };
}

describe('experiment files', () => {
  it('the experiment examples in the repository check', () => {
    const dir = join(import.meta.dirname, '..', '..', '..', 'examples', 'experiments');
    const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f));
    expect(files.length).to.be.greaterThan(0);
    for (const f of files) {
      const spec = loadExperiment(join(dir, f));
      expect(spec instanceof ExperimentError ? spec.message : '', f).to.equal('');
    }
  });

  it('decodes the full example to what it says', () => {
    const s = parseExperiment(EXAMPLE, 'exp.yaml');
    expect(s).to.deep.include({
      file: 'exp.yaml', name: 'precopy-vs-offline', kind: 'migration', seed: 7, cluster: 'new', from: 'h1', to: 'h2', lps: 2,
      vm: { memoryBytes: 256 * 1024 * 1024, vps: 2, workload: 'memdirty:32M' },
      link: { rateBps: 1e9, delayMs: 2, lossPercent: 0 },
      methods: ['offline', 'precopy', 'precopy+compress', 'precopy+autoconverge', 'postcopy'],
      options: { downtimeLimitMs: 300, maxPasses: 10, bandwidthBps: 0 },
      repetitions: 3, warmupMs: 1000, probeBytes: null, moveTimeoutMs: 600_000,
    });
    expect(s.source).to.equal(EXAMPLE);
  });

  it('reads the same experiment written as JSON', () => {
    const json = JSON.stringify({
      name: 'precopy-vs-offline', kind: 'migration', seed: 7, cluster: 'new', from: 'h1', to: 'h2',
      vm: { memory: '256M', vps: 2, workload: 'memdirty:32M' }, link: { rate: '1gbit', delay: '2ms', loss: '0%' },
      methods: ['offline', 'precopy', 'precopy+compress', 'precopy+autoconverge', 'postcopy'],
      options: { downtimeLimit: '300ms', maxPasses: 10, bandwidth: 0 }, repetitions: 3,
    }, null, 2);
    const { source: _a, sourceSha256: _c, ...fromJson } = parseExperiment(json, 'exp.yaml');
    const { source: _b, sourceSha256: _d, ...fromYaml } = parseExperiment(EXAMPLE, 'exp.yaml');
    expect(fromJson).to.deep.equal(fromYaml);
  });

  it('fills in defaults: kind migration, seed 1, a new cluster h1 → h2, the default VM, the link as it is, 3 repetitions', () => {
    const s = parseExperiment('name: small\nmethods: [precopy]\n');
    expect(s).to.deep.include({
      kind: 'migration', seed: 1, cluster: 'new', from: 'h1', to: 'h2', lps: 2, vm: { memoryBytes: 64 * 1024 * 1024, vps: 1, workload: 'counter' },
      link: null, options: {}, repetitions: 3, warmupMs: 1000, probeBytes: null,
    });
    // An existing cluster's hosts keep their LPs; a wide VM gets as many LPs as VPs in a new one.
    expect(parseExperiment('name: e\ncluster: existing\nfrom: a\nto: b\nmethods: [offline]\n').lps).to.equal(null);
    expect(parseExperiment('name: w\nvm: { vps: 4 }\nmethods: [offline]\n').lps).to.equal(4);
    // Bandwidth as a rate in bits, durations in seconds, a probe size or none.
    const o = parseExperiment('name: o\nmethods: [precopy]\noptions: { bandwidth: 800mbit, downtimeLimit: 0.5s }\nwarmup: 2s\nprobe: 8M\nmoveTimeout: 90s\n');
    expect(o.options).to.deep.equal({ bandwidthBps: 100e6, downtimeLimitMs: 500 });
    expect([o.warmupMs, o.probeBytes, o.moveTimeoutMs]).to.deep.equal([2000, 8 * 1024 * 1024, 90_000]);
    expect(parseExperiment('name: o\nmethods: [precopy]\nprobe: 0\n').probeBytes).to.equal(0);
  });

  it('spells methods one way: a base, then +compress, then +autoconverge', () => {
    expect(parseMethod('PreCopy + AutoConverge + compress')).to.deep.equal({ method: 'precopy+compress+autoconverge', options: { compress: true, autoConverge: true } });
    expect(parseMethod('offline')).to.deep.equal({ method: 'offline', options: { offline: true } });
    expect(parseMethod('postcopy')).to.deep.equal({ method: 'postcopy', options: { postcopy: true } });
    expect(parseMethod('hybrid')).to.match(/not a method/);
    expect(parseMethod('precopy+turbo')).to.match(/not a modifier/);
    expect(parseMethod('precopy+compress+compress')).to.match(/twice/);
  });

  it('refuses an unknown field, a bad method, a bad link rate and a workload that does not fit, naming line, column and field, all at once', () => {
    const text = EXAMPLE
      .replace('vm: { memory: 256M, vps: 2, workload: memdirty:32M }', 'vm: { memory: 16M, vps: 2, workload: memdirty:32M }')
      .replace('link: { rate: 1gbit,', 'link: { rate: 10mbps,')
      .replace('methods: [offline, precopy,', 'methods: [offline, precopy+turbo,')
      .replace('repetitions: 3', 'repetitions: 3\nrepetition: 4');
    const ps = problems(text);
    const by = (field: string): ExperimentProblem => {
      const p = ps.find((x) => x.field === field);
      if (!p) throw new Error(`no problem for ${field} in ${JSON.stringify(ps)}`);
      return p;
    };
    expect(by('vm.workload')).to.include({ line: 8 });
    expect(by('vm.workload').message).to.match(/needs .* of guest memory/);
    expect(by('link.rate')).to.include({ line: 9, column: 15 });
    expect(by('link.rate').message).to.match(/a rate such as 100mbit/);
    expect(by('methods[1]')).to.include({ line: 10, column: 20 });
    expect(by('methods[1]').message).to.match(/"\+turbo" is not a modifier/);
    expect(by('repetition')).to.include({ line: 13, column: 1 });
    expect(by('repetition').message).to.match(/not a field here/);
    expect(ps).to.have.length(4);
    // The message a user sees names file, line and field, one problem a line, in file order.
    try {
      parseExperiment(text, 'exp.yaml');
    } catch (e) {
      const lines = (e as Error).message.split('\n');
      expect(lines).to.have.length(4);
      expect(lines[0]).to.match(/^exp\.yaml:8:\d+: vm\.workload: /);
      expect(lines[3]).to.match(/^exp\.yaml:13:1: repetition: /);
    }
  });

  it('refuses what would not work once running: missing fields, bad names, same host twice, repeated or conflicting methods, bad ranges', () => {
    const cases: Array<[string, string, RegExp]> = [
      ['methods: [precopy]\n', 'name', /missing/],
      ['name: x\n', 'methods', /missing/],
      ['name: x\nmethods: []\n', 'methods', /at least one/],
      ['name: "a b"\nmethods: [precopy]\n', 'name', /letters, digits/],
      ['name: x\nmethods: [precopy]\nfrom: H1\n', 'from', /host name/],
      ['name: x\nmethods: [precopy]\nfrom: h2\n', 'to', /both h2/],
      ['name: x\nmethods: [precopy, precopy]\n', 'methods[1]', /listed twice/],
      ['name: x\nmethods: [precopy+compress, precopy + compress]\n', 'methods[1]', /listed twice/],
      ['name: x\nmethods: [offline+autoconverge]\n', 'methods[0]', /offline move cannot also be/],
      ['name: x\nmethods: [7]\n', 'methods[0]', /must be a method/],
      ['name: x\nmethods: [precopy]\ncluster: shared\n', 'cluster', /new .* or existing/],
      ['name: x\nmethods: [precopy]\ncluster: existing\nlps: 2\n', 'lps', /cluster: new/],
      ['name: x\nmethods: [precopy]\nseed: -1\n', 'seed', /whole number from 0/],
      ['name: x\nmethods: [precopy]\nrepetitions: 0\n', 'repetitions', /from 1 to 1000/],
      ['name: x\nmethods: [precopy]\nvm: { memory: 1K }\n', 'vm.memory', /multiple of 4K from 2M/],
      ['name: x\nmethods: [precopy]\nvm: { vps: 0 }\n', 'vm.vps', /whole number from 1/],
      ['name: x\nmethods: [precopy]\nvm: { workload: dance }\n', 'vm.workload', /unknown/],
      ['name: x\nmethods: [precopy]\nvm: { cpus: 2 }\n', 'vm.cpus', /not a field here/],
      ['name: x\nmethods: [precopy]\nlink: { rate: 0 }\n', 'link.rate', /at least 1 bit\/s/],
      // Below the fabric's range (link set refuses it; a fabric's saved state with it was set aside).
      ['name: x\nmethods: [precopy]\nlink: { rate: 0.5bit }\n', 'link.rate', /at least 1 bit\/s and at most 1000000000000 bit\/s/],
      ['name: x\nmethods: [precopy]\nlink: { loss: 120% }\n', 'link.loss', /at most 100/],
      ['name: x\nmethods: [precopy]\nlink: { delay: fast }\n', 'link.delay', /a duration/],
      ['name: x\nmethods: [precopy]\nlink: [1gbit]\n', 'link', /must be a map/],
      ['name: x\nmethods: [precopy]\noptions: { maxPasses: 0 }\n', 'options.maxPasses', /from 1 to 1000/],
      ['name: x\nmethods: [precopy]\noptions: { downtimeLimit: 0ms }\n', 'options.downtimeLimit', /above 0/],
      ['name: x\nmethods: [precopy]\noptions: { bandwidth: lots }\n', 'options.bandwidth', /bytes per second/],
      ['name: x\nmethods: [precopy]\noptions: { bandwidth: 1 }\n', 'options.bandwidth', /from 64K/],
      ['name: x\nmethods: [precopy]\noptions: { postcopy: true }\n', 'options.postcopy', /not a field here/],
      ['name: x\nmethods: [precopy]\nprobe: 1K\n', 'probe', /from 64K/],
      ['name: x\nmethods: [precopy]\nmoveTimeout: 10ms\n', 'moveTimeout', /at least 1000ms/],
      ['name: x\nname: y\nmethods: [precopy]\n', 'name', /twice/],
      // A count of hosts, as a chaos experiment or "up --hosts" takes one: said as such, not as any unknown field.
      ['name: x\nmethods: [precopy]\nhosts: 0\n', 'hosts', /^is not a field of a migration experiment: it moves a VM between the two hosts named by from and to .*a number of hosts is for kind: faults$/],
      ['name: x\nmethods: [precopy]\nhosts:\n', 'hosts', /^is not a field of a migration experiment/],
    ];
    for (const [text, field, re] of cases) {
      const ps = problems(text);
      const p = ps.find((x) => x.field === field);
      expect(p, `${JSON.stringify(text)}: no problem for ${field} in ${JSON.stringify(ps)}`).to.not.equal(undefined);
      expect(p!.message, text).to.match(re);
      expect(p!.line, `${text}: a line`).to.be.greaterThan(0);
    }
  });

  it('names the value it refuses, as it was written: 0 repetitions, a seed of 1.5 or "7", a size of 1T, a loss of "lots"', () => {
    const base = 'name: a\nmethods: [offline]\n';
    const one = (extra: string): string => problems(`${base}${extra}`).map((x) => `${x.field}: ${x.message}`).join('\n');
    expect(one('repetitions: 0\n')).to.equal('repetitions: must be a whole number from 1 to 1000, not 0');
    expect(one('seed: 1.5\n')).to.equal('seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not 1.5');
    expect(one('seed: "7"\n')).to.equal('seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not "7"');
    expect(one('seed:\n')).to.equal('seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not nothing');
    expect(one('vm: { memory: 1T }\n')).to.equal('vm.memory: must be a size such as 64M or 2G, not "1T"');
    expect(one('vm: { memory: 1000 }\n')).to.equal('vm.memory: must be a multiple of 4K from 2M to 4G, not 1000');
    expect(one('link: { loss: lots }\n')).to.equal('link.loss: must be a percentage such as 0.1%, not "lots"');
    expect(one(`link: { delay: ${'9'.repeat(60)}ms }\n`)).to.match(/^link\.delay: .* is out of range/);
    // A bare number has no unit (it was ms): refused, saying so.
    expect(one('link: { delay: 20 }\n')).to.equal('link.delay: must be a duration such as 20ms, not 20 (a duration needs its unit: 20s or 20ms)');
    expect(one(`name2: x\nprobe: "${'x'.repeat(100)}"\n`).split('\n')[1]).to.equal(`probe: must be a size such as 64M or 2G, not "${'x'.repeat(38)}…`);
  });

  it('names every value it refuses as written and at most 40 characters long: a list is a list, not null or empty; a number as written, not Infinity', () => {
    const base = 'name: a\nmethods: [offline]\n';
    const one = (extra: string, head = base): string => problems(`${head}${extra}`).map((x) => `${x.field}: ${x.message}`).join('\n');
    expect(one('repetitions: 1e400\n')).to.equal('repetitions: must be a whole number from 1 to 1000, not 1e400');
    expect(one('vm: { vps: 0x41 }\n')).to.equal('vm.vps: must be a whole number from 1 to 64, not 0x41');
    expect(one('warmup: 1e400\n')).to.equal('warmup: must be a duration such as 1s, not 1e400');
    expect(one('warmup: 1e300\n')).to.equal('warmup: must be a duration such as 1s, not 1e300');
    expect(one('warmup: 99999999s\n')).to.equal('warmup: "99999999s" is out of range: at least 0ms and at most 3600000ms');
    expect(one('', 'name: [a]\nmethods: [offline]\n')).to.equal('name: a list is not valid: use 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit');
    expect(one('kind: [migration]\n')).to.equal('kind: a list is not a kind of experiment: use migration or faults');
    expect(one('', 'name: a\nmethods: { offline: 1 }\n')).to.equal('methods: must be a list of at least one method, e.g. [offline, precopy], not a map');
    expect(one('', 'name: a\nmethods: [[offline]]\n')).to.equal('methods[0]: must be a method such as precopy or precopy+compress, not a list');
    expect(one('cluster: [new]\n')).to.equal('cluster: must be new (bring up two hosts for the run) or existing (the cluster up in HVLAB_HOME), not a list');
    expect(one('vm: { workload: 7 }\n')).to.equal('vm.workload: must be a workload such as idle, counter, spin or memdirty:32M, not 7');
    // A name of 100,000 characters was quoted whole in its problem; a size of a workload too.
    expect(one('', `name: ${'n'.repeat(100_000)}\nmethods: [offline]\n`)).to.equal(`name: "${'n'.repeat(38)}… is not valid: use 1-32 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    expect(one(`link: { delay: "${'9'.repeat(300)}ms" }\n`)).to.equal(`link.delay: must be a duration such as 20ms, not "${'9'.repeat(38)}…`);
    expect(one(`vm: { workload: "memdirty:${'9'.repeat(100_000)}" }\n`)).to.have.length.below(300);
  });

  it('cuts a long key in a problem\'s field path to 64 characters (a valid name stays whole): an unknown field of 100,000 characters went whole into the path', () => {
    // YAML takes an implicit key of at most 1024 characters; a longer one is written as ? KEY.
    const key = 'k'.repeat(1000);
    const huge = `? ${'k'.repeat(100_000)}\n: 1\n`;
    const cut = `${'k'.repeat(FIELD_KEY_MAX - 1)}…`;
    const fields = (text: string): string[] => problems(text).map((x) => x.field);
    expect(fields(`name: a\nmethods: [offline]\n${key}: 1\n`)).to.deep.equal([cut]);
    expect(fields(`name: a\nmethods: [offline]\n${huge}`)).to.deep.equal([cut]);
    expect(fields(`name: a\nmethods: [offline]\nvm: { ${key}: 1 }\n`)).to.deep.equal([`vm.${cut}`]);
    expect(fields(`name: a\nmethods: [offline]\nlink: { ${key}: 1 }\n`)).to.deep.equal([`link.${cut}`]);
    expect(fields(`name: a\nmethods: [offline]\noptions: { ${key}: 1 }\n`)).to.deep.equal([`options.${cut}`]);
    expect(fields(`name: a\nmethods: [offline]\n${'k'.repeat(FIELD_KEY_MAX)}: 1\n`)).to.deep.equal(['k'.repeat(FIELD_KEY_MAX)]);
  });

  it('refuses a second YAML document at its --- in the user\'s words (the YAML library advised "please use YAML.parseAllDocuments()")', () => {
    const p = problems('name: a\nmethods: [offline]\n---\nname: b\n');
    expect(p.map((x) => [x.line, x.column, x.message])).to.deep.equal([[3, 1, 'holds more than one YAML document (a second begins here, at ---): one file is one document']]);
  });

  it('refuses an alias (*name) at its place for what it is, not as a value of the wrong type', () => {
    const p = problems('name: &n a\nmethods: [offline]\nvm: { workload: *n }\n');
    expect(p.map((x) => [x.line, x.column, x.message])).to.deep.equal([[3, 17, 'an alias (*n) is not read in this file: write the value itself']]);
    // An anchor alone is harmless (nothing refers to it).
    expect(parseExperiment('name: &n a\nmethods: [offline]\n', 'exp.yaml').name).to.equal('a');
  });

  it('measures how deep a file nests by its brackets inside them: a one-line map of 5000 keys is one level; 65 brackets, 65 indents or 33 pairs in sequences are too deep', () => {
    expect(yamlNestingProblem(`{${Array.from({ length: 5000 }, (_, i) => `"k${i}": [${i}, {"v": ${i}}]`).join(', ')}}`)).to.equal(null);
    expect(yamlNestingProblem(`${'['.repeat(65)}${']'.repeat(65)}`)).to.equal('it nests more than 64 levels deep');
    expect(yamlNestingProblem(`${'{"a":'.repeat(65)}1${'}'.repeat(65)}`)).to.equal('it nests more than 64 levels deep');
    expect(yamlNestingProblem(Array.from({ length: 65 }, (_, i) => `${' '.repeat(i)}a:`).join('\n'))).to.equal('it nests more than 64 levels deep');
    // A pair right in a sequence is a map of its own: [a: [b: …]] is two levels a bracket.
    expect(yamlNestingProblem(`x: ${'[a: '.repeat(33)}1${']'.repeat(33)}`)).to.equal('it nests more than 64 levels deep');
    expect(yamlNestingProblem(`x: ${'[a: '.repeat(30)}1${']'.repeat(30)}`)).to.equal(null);
  });

  it('refuses a tag (!!binary, !!set, !foo) at its place for what it is, not as a value of the wrong type', () => {
    // A tag made a Buffer of a name ("name: {"type":"Buffer",…} is not valid", "repetitions: … not hi"), and an unknown one was read as text.
    const p = problems('name: !!binary aGk=\nmethods: !!seq [offline]\nvm: !!set { memory }\nrepetitions: !foo 3\n!!str kind: migration\n');
    expect(p.map((x) => [x.line, x.column, x.message])).to.deep.equal([
      [1, 16, 'a tag (!!binary) is not read in this file: write the value itself, untagged'],
      [2, 16, 'a tag (!!seq) is not read in this file: write the value itself, untagged'],
      [3, 11, 'a tag (!!set) is not read in this file: write the value itself, untagged'],
      [4, 19, 'a tag (!foo) is not read in this file: write the value itself, untagged'],
      [5, 7, 'a tag (!!str) is not read in this file: write the value itself, untagged'],
    ]);
    // The chaos and topology files read theirs the same way (readYamlMap).
    expect(() => parseTopology('name: t\nhosts: { h1: { lps: !!int 2 } }\n', 't.yaml')).to.throw(/t\.yaml:2:27: a tag \(!!int\) is not read in this file/);
  });

  it('says a file\'s control characters and text-turning Unicode as escapes, one problem a line, each message bounded: what a terminal shows of an error is what the file holds', () => {
    // An escape sequence in a key (it would clear the screen), a line break in a method, a right-to-left override in a key.
    const text = 'name: a\nmethods: ["pre\\ncopy"]\n"k\\u001b[2J": 1\n"x\\u202eevil": 2\n';
    const err = refusal(text);
    expect(err.problems.map((p) => `${p.field}: ${p.message}`)).to.deep.equal([
      'methods[0]: "pre\\ncopy" is not a method: a method is offline, precopy, postcopy or one of them with +compress and +autoconverge',
      'k\\x1b[2J: is not a field here (fields: name, kind, seed, cluster, from, to, lps, vm, link, methods, options, repetitions, warmup, probe, moveTimeout)',
      'x\\u202eevil: is not a field here (fields: name, kind, seed, cluster, from, to, lps, vm, link, methods, options, repetitions, warmup, probe, moveTimeout)',
    ]);
    const lines = err.message.split('\n');
    expect(lines).to.have.length(3);
    for (const l of lines) expect(l, l).to.not.match(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
    // The message of a problem made elsewhere is made visible too, and any message is bounded.
    expect(problemsText('f', [{ line: 1, column: 1, field: 'a\u0007', message: 'b\r\nc' }])).to.equal('f:1:1: a\\x07: b\\r\\nc');
    const ctx = { problems: [] as ExperimentProblem[], lines: new LineCounter() };
    problem(ctx, null, 'f', 'x'.repeat(10_000));
    expect(ctx.problems[0]!.message).to.have.length(PROBLEM_MAX_CHARS);
    expect(ctx.problems[0]!.message.endsWith('x…')).to.equal(true);
  });

  it('an error lists its first 20 problems and says how many more there are; its problems keep every one', () => {
    const text = `name: a\nmethods: [offline]\n${Array.from({ length: 30 }, (_, i) => `k${i}: 1\n`).join('')}`;
    const err = refusal(text);
    expect(err.problems).to.have.length(30);
    const lines = err.message.split('\n');
    expect(lines).to.have.length(21);
    expect(lines[0]).to.match(/^exp\.yaml:3:1: k0: is not a field here/);
    expect(lines[19]).to.match(/^exp\.yaml:22:1: k19: /);
    expect(lines[20]).to.equal('exp.yaml: … and 10 more problems');
    // Twenty or fewer: every one, nothing more.
    expect(problemsText('f', err.problems.slice(0, 20)).split('\n')).to.have.length(20);
    expect(problemsText('f', err.problems.slice(0, 21)).split('\n').at(-1)).to.equal('f: … and 1 more problem');
  });

  it('refuses a kind it does not run by name, and only that: faults goes to the chaos runner', () => {
    const faults = problems('name: f\nkind: faults\nfaults: [cut]\n');
    expect(faults).to.have.length(1);
    expect(faults[0]).to.include({ field: 'kind', line: 2, column: 7 });
    expect(faults[0]!.message).to.match(/kind "faults" is run by @hvlab\/faults's chaos runner/);
    const other = problems('name: f\nkind: benchmark\nmethods: [precopy]\n');
    expect(other[0]!.message).to.match(/"benchmark" is not a kind of experiment: use migration or faults/);
  });

  it('refuses what is not an experiment at all: not YAML, not a map, too large, unreadable', () => {
    expect(problems('name: [unclosed\n')[0]!.line).to.be.greaterThan(0);
    expect(problems('- a\n- b\n')[0]!.message).to.match(/is a map/);
    expect(problems('')[0]!.message).to.match(/is a map/);
    expect(problems('x'.repeat(2 * 1024 * 1024))[0]!.message).to.match(/at most/);
    const missing = loadExperiment('/nonexistent/exp.yaml');
    expect(missing).to.be.instanceOf(ExperimentError);
    expect((missing as ExperimentError).message).to.match(/does not exist/);
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-unit-'));
    try {
      writeFileSync(join(dir, 'ok.yaml'), EXAMPLE);
      writeFileSync(join(dir, 'bad.json'), '{"name": "b", "methods": ["warp"]}');
      expect((loadExperiment(join(dir, 'ok.yaml')) as ExperimentSpec).name).to.equal('precopy-vs-offline');
      const bad = loadExperiment(join(dir, 'bad.json')) as ExperimentError;
      expect(bad.problems[0]).to.include({ field: 'methods[0]', line: 1 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('never throws anything but ExperimentError on random or mutated input (seeded, 3000 cases)', () => {
    const next = seededRandom(0xe4e1);
    const alphabet = 'name:kind:methods:vm:link:h1h2{}[],+- \n#"\'0123456789msgbitkM%&*!|>precopy';
    let accepted = 0;
    for (let i = 0; i < 3000; i++) {
      let text: string;
      if (next() < 0.6) {
        const chars = EXAMPLE.split('');
        const edits = 1 + Math.floor(next() * 4);
        for (let e = 0; e < edits; e++) chars[Math.floor(next() * chars.length)] = alphabet[Math.floor(next() * alphabet.length)]!;
        text = chars.join('');
      } else {
        text = Array.from({ length: Math.floor(next() * 200) }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
      }
      try {
        parseExperiment(text);
        accepted++;
      } catch (e) {
        expect(e, JSON.stringify(text)).to.be.instanceOf(ExperimentError);
        expect((e as ExperimentError).problems.length).to.be.greaterThan(0);
      }
    }
    expect(accepted, 'some mutations still decode').to.be.greaterThan(0);
  });
});

describe('experiment runs against a fake pair of hosts', () => {
  /** Hosts that hold VMs by name: moves do what `outcome` says for the method. */
  function fakeHosts(outcome: (args: Record<string, unknown>, n: number) => MigrationStats | Error, failCreate: (name: string) => boolean = () => false) {
    const where = new Map<string, string>();
    const created: string[] = [];
    const requests: Array<Record<string, unknown>> = [];
    let moves = 0;
    const driver: ExperimentDriver = {
      async createVm(name) {
        created.push(name);
        where.set(name, 'h1');
        if (failCreate(name)) throw new Error(`VM "${name}" did not start: StartFailed`);
      },
      async move(args) {
        requests.push(args);
        const r = outcome(args, moves++);
        if (r instanceof Error) throw r;
        if (r.status === 'completed') where.set(String(args.name), 'h2');
        return r;
      },
      async removeVm(name) {
        const host = where.get(name) ?? null;
        where.delete(name);
        return host;
      },
    };
    return { driver, where, created, requests };
  }

  const spec = (text: string): ExperimentSpec => parseExperiment(text, 'exp.yaml');

  it('a move that does not end within moveTimeout is cancelled and recorded with how far it got (its passes and bytes), not as an empty row', async () => {
    const s = spec('name: slow\nmethods: [precopy]\nrepetitions: 1\nmoveTimeout: 1s\n');
    const asked: string[] = [];
    let statusAsks = 0;
    // The cancelled move's statistics: still active when the cancel returns, cancelled a moment later.
    const cancelled = stats('precopy', 'cancelled', 1400, 0, 3e6, [pass(1, 8000, 700), pass(2, 7900, 1300)], 'cancelled by the user');
    const src = {
      async request(method: string): Promise<unknown> {
        asked.push(method);
        if (method === 'vmMove') throw new MgmtCallError('Timeout', 'vmMove: no answer within 1000 ms');
        if (method === 'vmMoveCancel') return { ...cancelled, status: 'active' };
        if (method === 'vmMoveStatus') return ++statusAsks < 2 ? { ...cancelled, status: 'active' } : cancelled;
        throw new Error(`unexpected ${method}`);
      },
    } as unknown as MgmtClient;
    const base = clusterDriver(s, { h1: src, h2: src });
    const driver: ExperimentDriver = { createVm: async () => {}, move: (a) => base.move(a), removeVm: async () => 'h1' };
    const [run] = await runMoves(s, driver, { sleep: async () => {}, tag: 'beef' });
    expect(asked.slice(0, 2)).to.deep.equal(['vmMove', 'vmMoveCancel']);
    expect(run).to.include({ status: 'cancelled', error: 'the move did not end within 1 s and was cancelled' });
    expect(run!.stats).to.include({ status: 'cancelled', 'total-time': 1400 });
    expect(run!.stats!.passes).to.have.length(2);
    // In the CSV as data, and its passes in the dirty-set plot, labelled as cancelled.
    const csv = resultsCsv({ runs: [run!] }).split('\r\n')[1]!.split(',');
    expect(csv[CSV_COLUMNS.indexOf('status')]).to.equal('cancelled');
    expect(csv[CSV_COLUMNS.indexOf('transferred_bytes')]).to.equal('3000000');
    expect(csv[CSV_COLUMNS.indexOf('passes')]).to.equal('2');
    // A cancel the host refused (past the switch-over) is still an error, saying why.
    const late = {
      async request(method: string): Promise<unknown> {
        if (method === 'vmMove') throw new MgmtCallError('Timeout', 'no answer');
        throw new MgmtCallError('MigrationCancelTooLate', 'the move is past its switch-over');
      },
    } as unknown as MgmtClient;
    const d2 = clusterDriver(s, { h1: late, h2: late });
    const [run2] = await runMoves(s, { createVm: async () => {}, move: (a) => d2.move(a), removeVm: async () => 'h2' }, { sleep: async () => {}, tag: 'beef' });
    expect(run2).to.include({ status: 'error', stats: null, error: 'the move did not end within 1 s, and its cancel was refused: the move is past its switch-over' });
  });

  it('a move whose cancel after moveTimeout loses to a late commit is recorded completed, with its downtime, no error and a note that the cancel came too late', async () => {
    const s = spec('name: slow\nmethods: [precopy]\nrepetitions: 1\nmoveTimeout: 1s\n');
    // The cancel is taken (the worker had not begun its switch-over), but the commit was on its way:
    // the destination answers the abort "committed", and the move ends completed, without an error-desc.
    const done = stats('precopy', 'completed', 1500, 40, 3e6, [pass(1, 8000, 700), pass(2, 30, 1300), pass(3, 0, 1450)]);
    let statusAsks = 0;
    const src = {
      async request(method: string): Promise<unknown> {
        if (method === 'vmMove') throw new MgmtCallError('Timeout', 'vmMove: no answer within 1000 ms');
        if (method === 'vmMoveCancel') return { ...done, status: 'active', downtime: undefined };
        if (method === 'vmMoveStatus') return ++statusAsks < 2 ? { ...done, status: 'active', downtime: undefined } : done;
        throw new Error(`unexpected ${method}`);
      },
    } as unknown as MgmtClient;
    const base = clusterDriver(s, { h1: src, h2: src });
    const said: string[] = [];
    const [run] = await runMoves(s, { createVm: async () => {}, move: (a) => base.move(a), removeVm: async () => 'h2' }, { sleep: async () => {}, tag: 'beef', progress: (l) => said.push(l) });
    expect(run).to.include({ status: 'completed', error: null, note: 'the move did not end within 1 s; its cancel came too late: h2 had its commit, and the move completed' });
    expect(run!.stats, 'no error-desc in its statistics').to.not.have.property('error-desc');
    expect(run!.stats).to.include({ status: 'completed', downtime: 40, 'total-time': 1500 });
    expect(said.at(-1)).to.match(/^precopy 1\/1: completed in 1500 ms, downtime 40 ms, .* \(the move did not end within 1 s; its cancel came too late: h2 had its commit, and the move completed\)$/);
    // results.md counts it completed, lists it under Notes and not among the runs that did not complete.
    const r = { ...newReport(s, { out: '/nonexistent/out', home: '/nonexistent/home', started: new Date(0) }), runs: [run!], summary: summarize(['precopy'], [run!], null) };
    const text = resultsMarkdown(r);
    expect(text).to.not.match(/Runs that did not complete/);
    expect(text).to.match(/## Notes\n\n\| method \| repetition \| status \| note \|\n\|---\|---:\|---\|---\|\n\| precopy \| 1 \| completed \| the move did not end within 1 s; its cancel came too late: h2 had its commit, and the move completed \|/);
    expect(JSON.parse(JSON.stringify(r)).runs[0]).to.include({ status: 'completed', error: null });
    // One that fails after its cancel was taken says its own reason after the runner's.
    const failed = { ...done, status: 'failed', downtime: undefined, 'error-desc': 'host h1 is going down: x' };
    const f = {
      async request(method: string): Promise<unknown> {
        if (method === 'vmMove') throw new MgmtCallError('Timeout', 'no answer');
        return method === 'vmMoveCancel' ? { ...failed, status: 'active' } : failed;
      },
    } as unknown as MgmtClient;
    const d2 = clusterDriver(s, { h1: f, h2: f });
    const [run2] = await runMoves(s, { createVm: async () => {}, move: (a) => d2.move(a), removeVm: async () => 'h1' }, { sleep: async () => {}, tag: 'beef' });
    expect(run2).to.include({ status: 'failed', error: 'the move did not end within 1 s; it was cancelled, and failed: host h1 is going down: x' });
    expect(run2).to.not.have.property('note');
  });

  it('a move that did not complete has no downtime: null in results.json, empty in the CSV, a dash in results.md and the table, no bar in the plot, left out of the statistics', async () => {
    // The host's statistics of a cancelled stop-and-copy move (frozen from its start until the
    // cancel) and of a failed pre-copy say downtime 0, the value they started from.
    const s = spec('name: c\nmethods: [offline, precopy]\nrepetitions: 2\n');
    const f = fakeHosts((args, n) => (n === 1
      ? stats('precopy', 'completed', 700, 30, 2e6, [pass(1, 40, 500), pass(2, 3, 690)])
      : args.offline ? stats('offline', 'cancelled', 1200, 0, 5e6, [], 'cancelled by the user')
        : stats('precopy', 'failed', 300, 0, 1e5, [pass(1, 10, 200)], 'the link to h2 was cut')));
    // Told after each run, with all so far (the runner writes the report so far then).
    const told: string[][] = [];
    const runs = await runMoves(s, f.driver, { sleep: async () => {}, tag: 'beef', onRun: (so) => told.push(so.map((r) => `${r.method}/${r.repetition}`)) });
    expect(told).to.deep.equal([['offline/1'], ['offline/1', 'offline/2'], ['offline/1', 'offline/2', 'precopy/1'], ['offline/1', 'offline/2', 'precopy/1', 'precopy/2']]);
    expect(runs.map((r) => `${r.method}/${r.repetition}:${r.status}:${r.stats?.downtime}`)).to.deep.equal(['offline/1:cancelled:null', 'offline/2:completed:30', 'precopy/1:failed:null', 'precopy/2:failed:null']);
    for (const r of runs.filter((x) => x.status !== 'completed')) expect(r.stats!['downtime-acked'], r.vm).to.equal(null);
    // The rest of the statistics stay: how far the move got is data.
    expect(runs[0]!.stats).to.include({ status: 'cancelled', 'total-time': 1200 });
    expect(runs[0]!.stats!.ram.transferred).to.equal(5e6);
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-unit-'));
    try {
      const r: ExperimentReport = { ...newReport(s, { out: dir, home: '/tmp/h', started: new Date('2026-12-01T00:00:00.000Z') }), runs, summary: summarize(s.methods, runs, null), endedAt: '2026-12-01T00:01:00.000Z' };
      writeReport(r, dir);
      const back = JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8')) as ExperimentReport;
      expect(back.runs.map((x) => [x.stats!.downtime, x.stats!['downtime-acked']])).to.deep.equal([[null, null], [30, 33], [null, null], [null, null]]);
      const csv = readFileSync(join(dir, 'results.csv'), 'utf8').split('\r\n').slice(1, 5).map((l) => l.split(','));
      expect(csv.map((c) => [c[CSV_COLUMNS.indexOf('status')], c[CSV_COLUMNS.indexOf('downtime_ms')], c[CSV_COLUMNS.indexOf('downtime_acked_ms')]])).to.deep.equal([
        ['cancelled', '', ''], ['completed', '30', '33'], ['failed', '', ''], ['failed', '', ''],
      ]);
      // Statistics over the completed run only; none for a method without one.
      const [off, pre] = r.summary;
      expect(off!.downtimeMs).to.deep.equal({ p50: 30, p99: 30, mean: 30, min: 30, max: 30 });
      expect(pre).to.deep.include({ completed: 0, downtimeMs: null, totalMs: null });
      const md = readFileSync(join(dir, 'results.md'), 'utf8');
      expect(md).to.include('| offline | 2 | 700 ms | 30 ms | 30 ms |');
      expect(md).to.include('| precopy | 2 | — | — | — |');
      expect(experimentSummaryRows(r).find((x) => x[0] === 'precopy')![4]).to.equal('-');
      const svg = readFileSync(join(dir, 'downtime.svg'), 'utf8');
      expect(wellFormed(svg)).to.equal(null);
      expect(svg.match(/<rect [^>]*fill="#(?!ffffff|fafafa|999)/g), 'one bar: offline\'s').to.have.length(1);
      expect(svg).to.include('<title>offline: 30 ms</title>');
      expect(svg).to.include('>all failed<');
      expect(svg).to.not.match(/<title>[^<]*: 0 ms<\/title>/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('records a refused method as refused, skips its other repetitions, and deletes every VM it made', async () => {
    const s = spec('name: cmp\nmethods: [offline, precopy+compress, postcopy]\noptions: { maxPasses: 5 }\nrepetitions: 2\n');
    const f = fakeHosts((args, n) => {
      if (args.postcopy) return new MoveRefused('InvalidArgument', 'post-copy migration is not built yet: use pre-copy (the default), --auto-converge or --offline');
      return stats(args.offline ? 'offline' : 'precopy', 'completed', 1000 + n, 10 + n, 1e6, [pass(1, 50, 500), pass(2, 5, 900)]);
    });
    const lines: string[] = [];
    const runs = await runMoves(s, f.driver, { progress: (l) => lines.push(l), sleep: async () => {}, tag: 'beef' });
    expect(runs.map((r) => `${r.method}/${r.repetition}:${r.status}`)).to.deep.equal(['offline/1:completed', 'offline/2:completed', 'precopy+compress/1:completed', 'precopy+compress/2:completed', 'postcopy/1:refused']);
    const refused = runs[4]!;
    expect(refused).to.include({ errorCode: 'InvalidArgument', stats: null, endedOn: 'h1' });
    expect(refused.error).to.match(/post-copy migration is not built yet/);
    // Every VM made was deleted, wherever it ended; names are unique valid VM names.
    expect(f.where.size).to.equal(0);
    expect(runs.map((r) => r.endedOn)).to.deep.equal(['h2', 'h2', 'h2', 'h2', 'h1']);
    expect(new Set(f.created).size).to.equal(5);
    for (const n of f.created) expect(VM_NAME_RE.test(n), n).to.equal(true);
    expect(f.created[2]).to.equal('cmp-precopy-compress-r1-beef');
    // The method's options and the file's go to every move.
    expect(f.requests[0]).to.deep.equal({ name: 'cmp-offline-r1-beef', to: 'h2', maxPasses: 5, offline: true });
    expect(f.requests[2]).to.deep.equal({ name: 'cmp-precopy-compress-r1-beef', to: 'h2', maxPasses: 5, compress: true });
    expect(lines.some((l) => /postcopy: refused as unsupported; its other 1 repetition skipped/.test(l))).to.equal(true);
    const sum = summarize(s.methods, runs, 64e6);
    expect(sum.map((m) => [m.method, m.runs, m.completed, m.failed, m.refused, m.unsupported])).to.deep.equal([
      ['offline', 2, 2, 0, 0, false], ['precopy+compress', 2, 2, 0, 0, false], ['postcopy', 1, 0, 1, 1, true],
    ]);
    expect(sum[2]!.totalMs).to.equal(null);
  });

  it('records a failed move, a VM that did not start and an error, and goes on; a refusal that is not about the method does not skip', async () => {
    const s = spec('name: f\nmethods: [precopy]\nrepetitions: 4\n');
    const f = fakeHosts((_a, n) => (n === 0
      ? stats('precopy', 'failed', 300, 0, 1e5, [pass(1, 10, 200)], 'the link to h2 was cut')
      : n === 1 ? new MoveRefused('InvalidState', 'VM is being moved to h2 already')
        : stats('precopy', 'completed', 900, 12, 2e6, [pass(1, 30, 600)])), (name) => name.includes('-r3-'));
    const runs = await runMoves(s, f.driver, { sleep: async () => {} });
    expect(runs.map((r) => r.status)).to.deep.equal(['failed', 'refused', 'error', 'completed']);
    expect(runs[0]!.error).to.equal('the link to h2 was cut');
    expect(runs[0]!.stats!.status).to.equal('failed');
    expect(runs[2]!.error).to.match(/did not start/);
    expect(f.where.size, 'every VM deleted, the one that did not start too').to.equal(0);
    const [m] = summarize(s.methods, runs, null);
    expect(m).to.deep.include({ runs: 4, completed: 1, failed: 3, refused: 1, unsupported: false, totalVsModel: null });
    expect(m!.errors).to.have.length(3);
  });

  it('waits for the link to carry nothing of the run before, before every run but the first, and says so', async () => {
    const s = spec('name: q\nmethods: [precopy, offline]\nrepetitions: 2\n');
    const f = fakeHosts(() => stats('precopy', 'completed', 1, 1, 1, []));
    const order: string[] = [];
    const quietLines = [null, 'link h1 – h2: 1.0 MiB of the run before still on it; waited 812 ms for them to arrive', null];
    const driver: ExperimentDriver = {
      createVm: async (n) => { order.push(`create ${n.split('-')[1]}`); await f.driver.createVm(n); },
      move: (a) => f.driver.move(a),
      removeVm: (n) => f.driver.removeVm(n),
      quiet: async () => { order.push('quiet'); return quietLines.shift() ?? null; },
    };
    const lines: string[] = [];
    const runs = await runMoves(s, driver, { progress: (l) => lines.push(l), sleep: async () => {} });
    expect(runs).to.have.length(4);
    expect(order).to.deep.equal(['create precopy', 'quiet', 'create precopy', 'quiet', 'create offline', 'quiet', 'create offline']);
    expect(lines.filter((l) => l.startsWith('link '))).to.deep.equal(['link h1 – h2: 1.0 MiB of the run before still on it; waited 812 ms for them to arrive']);
  });

  it('stops before the next run once aborted', async () => {
    const s = spec('name: a\nmethods: [precopy, offline]\nrepetitions: 3\n');
    const ac = new AbortController();
    const f = fakeHosts(() => {
      ac.abort();
      return stats('precopy', 'completed', 1, 1, 1, []);
    });
    const runs = await runMoves(s, f.driver, { sleep: async () => {}, signal: ac.signal });
    expect(runs).to.have.length(1);
    expect(f.where.size).to.equal(0);
  });

  it('an abort during the warm-up moves nothing: the VM is deleted and the run recorded as cancelled before its move', async () => {
    // The move's cancel listens for the abort, which had come already: the move ran to its end.
    const s = spec('name: a\nmethods: [precopy]\nrepetitions: 2\n');
    const ac = new AbortController();
    const f = fakeHosts(() => stats('precopy', 'completed', 1, 1, 1, []));
    const runs = await runMoves(s, f.driver, { sleep: async () => ac.abort(), signal: ac.signal });
    expect(f.requests, 'no move asked').to.have.length(0);
    expect(runs.map((r) => [r.status, r.error, r.endedOn])).to.deep.equal([['cancelled', 'stopped before its move', 'h1']]);
    expect(f.created).to.have.length(1);
    expect(f.where.size).to.equal(0);
    expect(stoppedEarly(s, runs, ac.signal)).to.equal(true);
  });

  it('a run whose move the abort cancelled is stopped early, the last one too; an abort after every run completed is not', () => {
    const s = spec('name: a\nmethods: [precopy]\nrepetitions: 1\n');
    const ac = new AbortController();
    ac.abort();
    const run = (status: ExperimentRun['status']): ExperimentRun => ({
      method: 'precopy', repetition: 1, vm: 'v', status, error: null, errorCode: null, request: {}, stats: null, startedAt: '', endedOn: 'h1', cleanupError: null,
    });
    expect(stoppedEarly(s, [run('cancelled')], ac.signal)).to.equal(true);
    expect(stoppedEarly(s, [run('completed')], ac.signal)).to.equal(false);
    expect(stoppedEarly(s, [run('cancelled')], new AbortController().signal)).to.equal(false);
  });
});

describe('experiment reports', () => {
  /** A report of three methods: two completed twice each, one unsupported. */
  function report(): ExperimentReport {
    const s = parseExperiment(EXAMPLE.replace('methods: [offline, precopy, precopy+compress, precopy+autoconverge, postcopy]', 'methods: [offline, precopy, postcopy]'), 'exp.yaml');
    // As runMoves records them (runStats: no downtime of a move that did not complete).
    const run = (method: string, repetition: number, st: MigrationStats | null, status: ExperimentRun['status'], error: string | null = null): ExperimentRun => ({
      method, repetition, vm: `v-${method}-${repetition}`, status, error, errorCode: status === 'refused' ? 'InvalidArgument' : null, request: {}, stats: st && runStats(st),
      startedAt: '2026-12-01T00:00:00.000Z', endedOn: 'h2', cleanupError: null,
    });
    const runs = [
      run('offline', 1, stats('offline', 'completed', 2400, 2400, 40e6, [pass(1, 0, 2400)]), 'completed'),
      run('offline', 2, stats('offline', 'completed', 2600, 2600, 41e6, [pass(1, 0, 2600)]), 'completed'),
      run('precopy', 1, stats('precopy', 'completed', 3100, 40, 60e6, [pass(1, 8000, 2000), pass(2, 3000, 2700), pass(3, 900, 3000)]), 'completed'),
      run('precopy', 2, stats('precopy', 'failed', 900, 0, 9e6, [pass(1, 8000, 900)], 'the destination\'s worker exited, "unexpectedly", with code 1'), 'failed', 'the destination\'s worker exited, "unexpectedly", with code 1'),
      run('postcopy', 1, null, 'refused', 'post-copy migration is not built yet'),
    ];
    return {
      version: 1, name: s.name, kind: 'migration', seed: s.seed, spec: s, sourceSha256: 'f'.repeat(64),
      environment: { hvlab: '0.1.0', commit: 'a'.repeat(40), dirty: false, node: 'v20.0.0', platform: 'linux-x64', cpus: 2, hostname: 'lab', loadAtStart: [3.8, 3.1, 2.9], loadAtEnd: [4, 3.3, 3] },
      startedAt: '2026-12-01T00:00:00.000Z', endedAt: '2026-12-01T00:01:00.000Z', out: '/tmp/x',
      cluster: { mode: 'new', home: '/tmp/h', network: 'namespaces', hosts: [{ name: 'h1', hostId: 'abc123' }, { name: 'h2', hostId: 'def456' }] },
      link: { from: 'h1', to: 'h2', impairments: s.link, found: { impairments: {}, seed: 9 }, probe: null, probeError: null, bandwidthBytesPerSecond: 100e6, modelMs: 2684.4 },
      runs, summary: summarize(s.methods, runs, 100e6), aborted: false, cleanup: [], files: [],
    };
  }

  it('summarizes each method over its completed runs: total p50 and mean, downtime p50 and p99, bytes, passes, failures', () => {
    const [off, pre, post] = report().summary;
    expect(off).to.deep.include({ runs: 2, completed: 2, failed: 0 });
    expect(off!.totalMs).to.deep.equal({ p50: 2500, p99: 2600, mean: 2500, min: 2400, max: 2600 });
    expect(off!.downtimeMs!.p99).to.equal(2600);
    expect(off!.transferredBytes!.p50).to.equal(40.5e6);
    expect(off!.totalVsModel).to.equal(Number((2500 / ((64 * 1024 * 1024) / 100e6 * 1000)).toFixed(3)));
    expect(pre).to.deep.include({ runs: 2, completed: 1, failed: 1, refused: 0, unsupported: false });
    expect(pre!.passes!.p50).to.equal(3);
    expect(post).to.deep.include({ completed: 0, refused: 1, unsupported: true, downtimeMs: null });
  });

  it('the p50 of an even number of runs is their median, the mean of the middle two, not the lower one', () => {
    const r = report();
    const run = (total: number, down: number): ExperimentRun => ({ ...r.runs[0]!, method: 'precopy', stats: runStats(stats('precopy', 'completed', total, down, total * 1000, [pass(1, 0, total)])) });
    const [m] = summarize(['precopy'], [run(1991, 397), run(3101, 379)], 100e6);
    expect(m!.totalMs).to.deep.include({ p50: 2546, min: 1991, max: 3101 });
    expect(m!.downtimeMs!.p50).to.equal(388);
    expect(m!.totalVsModel).to.equal(Number((2546 / ((64 * 1024 * 1024) / 100e6 * 1000)).toFixed(3)));
    const [odd] = summarize(['precopy'], [run(5, 1), run(1, 1), run(3, 1)], null);
    expect(odd!.totalMs!.p50).to.equal(3);
  });

  it('a run\'s line counts its pre-copy passes and the blackout\'s apart, as "vm move" does; the table says the blackout is among the passes', () => {
    const r = report();
    expect(runLine(r.runs[2]!, 2)).to.equal('precopy 1/2: completed in 3100 ms, downtime 40 ms, 2 pre-copy passes and the blackout\'s, 57.2 MiB sent');
    expect(runLine(r.runs[0]!, 2)).to.equal('offline 1/2: completed in 2400 ms, downtime 2400 ms, 1 pass, 38.1 MiB sent');
    expect(resultsMarkdown(r)).to.include('| passes (p50, the blackout\'s too) |');
  });

  it('CSV: the compression ratio only of a compressed move (raw ÷ sent says nothing of the others)', () => {
    const r = report();
    const st = r.runs[0]!.stats!;
    r.runs[0]!.stats = { ...st, 'compression-ratio': 59.48, options: { ...st.options, compress: true } };
    const csv = resultsCsv(r).split('\r\n');
    expect(csv[1]!.split(',')[CSV_COLUMNS.indexOf('compression_ratio')]).to.equal('59.48');
    expect(csv[2]!.split(',')[CSV_COLUMNS.indexOf('compression_ratio')]).to.equal('');
  });

  it('CSV: the header, then one row per run with its numbers, a failed run\'s error quoted', () => {
    const csv = resultsCsv(report()).split('\r\n');
    expect(csv[0]).to.equal('method,repetition,status,total_ms,setup_ms,downtime_ms,downtime_acked_ms,transferred_bytes,ram_bytes,passes,zero_pages,normal_pages,compression_ratio,throttle_pct,error');
    expect(csv[0]!.split(',')).to.deep.equal([...CSV_COLUMNS]);
    expect(csv).to.have.length(7);
    expect(csv[1]).to.equal(`offline,1,completed,2400,5,2400,2403,40000000,${64 * 1024 * 1024},1,12000,4000,,0,`);
    expect(csv[4]).to.equal(`precopy,2,failed,900,5,,,9000000,${64 * 1024 * 1024},1,12000,4000,,0,"the destination's worker exited, ""unexpectedly"", with code 1"`);
    expect(csv[5]).to.equal('postcopy,1,refused,,,,,,,,,,,,post-copy migration is not built yet');
    expect(csv[6]).to.equal('');
  });

  it('Markdown: the setup, a row per method (unsupported said so), the runs that did not complete, and links to the plots', () => {
    const text = resultsMarkdown(report());
    expect(text).to.match(/^# Experiment precopy-vs-offline\n/);
    expect(text).to.include('- link h1 – h2: delay 2ms, rate 1gbit, loss 0% (seed 7)');
    expect(text).to.include('- measured bandwidth h1 → h2: 100.0 MB/s');
    expect(text).to.include('| offline | 2 | 2500 ms | 2500 ms | 2600 ms | 38.6 MiB | 1 |');
    expect(text).to.match(/\| postcopy \| 1 \| — \| — \| — \| — \| — \| — \| 1 \(unsupported\) \|/);
    expect(text).to.include('| precopy | 2 | failed | the destination\'s worker exited, "unexpectedly", with code 1 |');
    for (const f of ['total-time.svg', 'downtime.svg', 'transferred.svg', 'dirty-set.svg', 'results.json', 'results.csv']) expect(text).to.include(`(${f})`);
    expect(text).to.not.include('Unfinished');
  });

  it('Markdown of a report so far (no end time yet: the run goes on, or was killed): says it is unfinished and after how many runs', () => {
    const r = { ...report(), endedAt: '' };
    const text = resultsMarkdown(r);
    expect(text).to.include(`**Unfinished**: the report as it stood after ${r.runs.length} of ${r.spec.repetitions * r.spec.methods.length} runs.`);
    expect(text).to.match(/; \S+ to —$/m);
  });

  it('Markdown: a run\'s error keeps its angle brackets and pipes as text (escaped, not read as HTML or a cell)', () => {
    const r = report();
    r.runs[3]!.error = 'no <vm> here | see <script>x</script>\nnext line';
    const row = resultsMarkdown(r).split('\n').find((l) => l.startsWith('| precopy | 2 | failed |'))!;
    expect(row).to.equal('| precopy | 2 | failed | no &lt;vm&gt; here \\| see &lt;script&gt;x&lt;/script&gt; next line |');
  });

  it('Markdown and JSON say what the link was when the run left it as it was (its impairments and seed, as found)', () => {
    const r = report();
    r.spec.link = null;
    r.link.impairments = null;
    r.link.found = { impairments: { delayMs: 30, rateBps: 20e6 }, seed: 1637504791 };
    expect(resultsMarkdown(r)).to.include('- link h1 – h2: as it was: delay 30ms, rate 20mbit (seed 1637504791)');
    r.link.found = { impairments: {}, seed: 4 };
    expect(resultsMarkdown(r)).to.include('- link h1 – h2: as it was: unimpaired (seed 4)');
    r.link.found = null;
    expect(resultsMarkdown(r)).to.include('- link h1 – h2: as it was (not read)');
  });

  it('SVG plots are well-formed, with a title, axes, labels and a legend; a bar per method, a polyline per method with passes', () => {
    const r = report();
    const plots = experimentPlots(r);
    expect(Object.keys(plots).sort()).to.deep.equal(['dirty-set.svg', 'downtime.svg', 'total-time.svg', 'transferred.svg']);
    for (const [f, svg] of Object.entries(plots)) {
      expect(wellFormed(svg), f).to.equal(null);
      expect(svg, f).to.include('<svg xmlns="http://www.w3.org/2000/svg"');
      expect(svg, f).to.include('<title>precopy-vs-offline: ');
      expect(svg, f).to.include('class="legend"');
      expect(svg, f).to.include('class="y-axis"');
      for (const m of ['offline', 'precopy', 'postcopy']) expect(svg, `${f}: ${m}`).to.match(new RegExp(`>${m}( \\(repetition \\d\\))?( \\(no data\\))?<`));
    }
    const total = plots['total-time.svg'];
    expect(total.match(/<rect [^>]*fill="#(?!ffffff|fafafa|999)/g)).to.have.length(2);
    expect(total).to.include('>unsupported<');
    expect(total).to.include('>model: RAM ÷ bandwidth<');
    expect(total).to.include('>total time (ms)<');
    const dirty = plots['dirty-set.svg'];
    expect(dirty.match(/<polyline /g)).to.have.length(2);
    expect(dirty).to.include('>time since the move began (ms)<');
    expect(dirty).to.include('>postcopy (no data)<');
    // The precopy line is its completed first repetition: three passes.
    expect(dirty).to.include('>precopy (repetition 1)<');
  });

  it('escapes every text of a chart, and draws empty charts without failing', () => {
    const bar = barChartSvg({ title: 'a <b> & "c"', yLabel: 'ms & more', bars: [{ label: '<x>', value: 3, min: 1, max: 5 }, { label: "it's", value: null, note: 'n/a & <none>' }] });
    expect(wellFormed(bar)).to.equal(null);
    expect(bar).to.include('a &lt;b&gt; &amp; &quot;c&quot;');
    expect(bar).to.include('&lt;x&gt;');
    expect(bar).to.not.match(/<text[^>]*>[^<]*[>&](?!amp;|lt;|gt;|quot;|apos;)[^<]*<\/text>/);
    expect(escapeXml('\u0001ok\u001f')).to.equal('ok');
    expect(wellFormed(barChartSvg({ title: 'none', yLabel: 'y', bars: [] }))).to.equal(null);
    const line = lineChartSvg({ title: 'none', xLabel: 'x', yLabel: 'y', series: [{ label: 'a&b', points: [] }] });
    expect(wellFormed(line)).to.equal(null);
    expect(line).to.include('>no data<');
    expect(line).to.include('a&amp;b (no data)');
  });

  it('axes take round steps from zero past the largest value', () => {
    expect(niceScale(2684)).to.deep.include({ max: 3000, step: 500 });
    expect(niceScale(0.37).ticks).to.deep.equal([0, 0.1, 0.2, 0.3, 0.4]);
    expect(niceScale(0)).to.deep.include({ max: 1 });
    expect(niceScale(1e6).max).to.equal(1e6);
    expect(niceScale(96).ticks).to.deep.equal([0, 20, 40, 60, 80, 100]);
  });

  it('writes every file of the report into its directory; results.json is the report', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-unit-'));
    try {
      const r = report();
      const files = writeReport(r, join(dir, 'out'));
      expect(files).to.deep.equal([...REPORT_FILES]);
      expect(readdirSync(join(dir, 'out')).sort()).to.deep.equal([...REPORT_FILES].sort());
      const back = JSON.parse(readFileSync(join(dir, 'out', 'results.json'), 'utf8')) as ExperimentReport;
      expect(back.runs).to.have.length(5);
      expect(back.runs[2]!.stats!.passes).to.have.length(3);
      expect(back.summary.map((m) => m.method)).to.deep.equal(['offline', 'precopy', 'postcopy']);
      expect(back.spec.source).to.include('name: precopy-vs-offline');
      expect(back.files).to.deep.equal([...REPORT_FILES]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('what a report records to be run again, and where it goes', () => {
    it('names the file by the SHA-256 of its text and the code and machine that ran it: version, commit, Node, CPUs, load', () => {
      const s = parseExperiment(EXAMPLE, 'exp.yaml');
      const r = newReport(s, { out: '/tmp/x', home: '/tmp/h', started: new Date('2026-12-01T00:00:00.000Z') });
      expect(r.sourceSha256).to.equal(createHash('sha256').update(EXAMPLE).digest('hex'));
      const head = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
      expect(r.environment).to.deep.include({ hvlab: '0.1.0', commit: head, node: process.version, loadAtEnd: null });
      expect(r.environment.dirty).to.be.a('boolean');
      expect(r.environment.cpus).to.be.above(0);
      expect(r.environment.loadAtStart).to.have.length(3);
      for (const l of r.environment.loadAtStart) expect(l).to.be.a('number').and.at.least(0);
      // Said in results.md too, and kept in results.json.
      const text = resultsMarkdown({ ...r, summary: summarize(s.methods, [], null), endedAt: '2026-12-01T00:01:00.000Z' });
      expect(text).to.include(`- ran on: hvlab 0.1.0, commit ${head.slice(0, 12)}`);
      expect(text).to.include(`- file: exp.yaml, sha256 ${r.sourceSha256}`);
      expect(text).to.match(/load \(1, 5, 15 min\) [\d.]+, [\d.]+, [\d.]+ at the start/);
    });

    it('names a file read from disk by the SHA-256 of its bytes, as sha256sum does: with a BOM, CRLF line ends and text beyond ASCII; its source is those bytes', () => {
      const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-sha-'));
      try {
        // A BOM, CRLF, and "café ✓ 𝄞" in a comment (2-, 3- and 4-byte UTF-8).
        const bytes = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(EXAMPLE.replace(/\n/g, '\r\n'), 'utf8'), Buffer.from('# café ✓ 𝄞\r\n')]);
        writeFileSync(join(dir, 'exp.yaml'), bytes);
        const s = loadExperiment(join(dir, 'exp.yaml'));
        if (s instanceof ExperimentError) throw s;
        expect(s.name).to.equal('precopy-vs-offline');
        expect(Buffer.from(s.source, 'utf8').equals(bytes), 'the source recorded is the file\'s bytes').to.equal(true);
        const want = createHash('sha256').update(readFileSync(join(dir, 'exp.yaml'))).digest('hex');
        const r = newReport(s, { out: '/tmp/x', home: '/tmp/h', started: new Date('2026-12-01T00:00:00.000Z') });
        expect(r.sourceSha256).to.equal(want);
        expect(s.sourceSha256).to.equal(want);
        // A BOM and CRLF alone: the same bytes' hash too.
        writeFileSync(join(dir, 'crlf.yaml'), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(EXAMPLE.replace(/\n/g, '\r\n'))]));
        expect((loadExperiment(join(dir, 'crlf.yaml')) as ExperimentSpec).sourceSha256).to.equal(createHash('sha256').update(readFileSync(join(dir, 'crlf.yaml'))).digest('hex'));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('refuses a file that is not UTF-8 with one problem at its first bad sequence, naming its byte offset (its bytes were read as U+FFFD, and the source recorded was not the file)', () => {
      const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-utf8-'));
      try {
        // A Latin-1 "é" (0xE9) in a comment after the example (CRLF line ends, a BOM), then another.
        const head = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(EXAMPLE.replace(/\n/g, '\r\n'), 'utf8'), Buffer.from('# ✓ caf')]);
        writeFileSync(join(dir, 'exp.yaml'), Buffer.concat([head, Buffer.from([0xe9]), Buffer.from('\r\nname: x\xe9\r\n', 'latin1')]));
        const e = loadExperiment(join(dir, 'exp.yaml'));
        expect(e).to.be.instanceOf(ExperimentError);
        const line = EXAMPLE.split('\n').length;
        expect((e as ExperimentError).problems).to.deep.equal([{ line, column: 8, field: '', message: `not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)` }]);
        expect((e as ExperimentError).message).to.equal(`${join(dir, 'exp.yaml')}:${line}:8: not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)`);
        // A sequence cut short (0xE2 0x9C, then a line end), an overlong "/" (0xC0 0xAF) and an encoded surrogate (0xED 0xA0 0x80): each at its lead byte.
        for (const [bad, at] of [[[0xe2, 0x9c, 0x0a], 0], [[0x41, 0xc0, 0xaf], 1], [[0x41, 0x42, 0xed, 0xa0, 0x80], 2]] as const) {
          writeFileSync(join(dir, 'b.yaml'), Buffer.concat([Buffer.from('name: x\n'), Buffer.from(bad)]));
          expect((loadExperiment(join(dir, 'b.yaml')) as ExperimentError).problems.map((p) => [p.line, p.column, p.message.match(/offset (\d+)/)?.[1]])).to.deep.equal([[2, at + 1, String(8 + at)]]);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('refuses an --out directory that holds anything but an earlier report of its kind, before anything is made; replaces such a report', () => {
      const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-out-'));
      try {
        // A user's directory: refused, naming what is there, and left as it was.
        const mine = join(dir, 'mine');
        mkdirSync(mine);
        writeFileSync(join(mine, 'notes.txt'), 'my notes');
        writeFileSync(join(mine, 'results.md'), 'an old table');
        expect(() => makeReportDir(mine)).to.throw(ClusterError, /cannot write the report to .*mine: the directory holds "notes\.txt", which is not part of a report of this kind/);
        expect(readdirSync(mine).sort()).to.deep.equal(['notes.txt', 'results.md']);
        // A directory where one of the report's files goes: it failed only at the end, losing the report.
        const blocked = join(dir, 'blocked');
        mkdirSync(join(blocked, 'results.json'), { recursive: true });
        expect(() => makeReportDir(blocked)).to.throw(ClusterError, /holds "results\.json"/);
        // Another kind's report (a chaos report has a timeline.svg): refused too.
        const chaos = join(dir, 'chaos');
        mkdirSync(chaos);
        for (const f of ['results.json', 'results.md', 'timeline.svg', 'samples.csv']) writeFileSync(join(chaos, f), '');
        expect(() => makeReportDir(chaos)).to.throw(ClusterError, /"samples\.csv", "timeline\.svg"/);
        // An earlier report of this kind is replaced; an empty directory or a new one is fine.
        const earlier = join(dir, 'earlier');
        writeReport(report(), earlier);
        expect(makeReportDir(earlier)).to.deep.equal([]);
        // A file of a report that was being written when its run was killed goes; one of another name is the user's.
        writeFileSync(join(earlier, 'results.json.tmp-4242'), '{"ver');
        expect(makeReportDir(earlier)).to.deep.equal([]);
        expect(readdirSync(earlier)).to.not.include('results.json.tmp-4242');
        writeFileSync(join(earlier, 'notes.txt.tmp-1'), 'mine');
        expect(() => makeReportDir(earlier)).to.throw(ClusterError, /holds "notes\.txt\.tmp-1"/);
        rmSync(join(earlier, 'notes.txt.tmp-1'));
        // The logs an earlier run there kept of a host that failed to come up (and a staged copy a
        // killed run left): taken; a file of that name is not such logs.
        const failedBefore = join(dir, 'failed-before');
        mkdirSync(join(failedBefore, 'cluster-up-failed', 'h2'), { recursive: true });
        mkdirSync(join(failedBefore, 'cluster-up-failed.new-123', 'h1'), { recursive: true });
        writeFileSync(join(failedBefore, 'cluster-up-failed', 'h2', 'hypervisor.log'), 'x');
        expect(makeReportDir(failedBefore)).to.deep.equal([]);
        // Left as they are: only a later failure's logs replace them.
        expect(readdirSync(failedBefore).sort()).to.deep.equal(['cluster-up-failed', 'cluster-up-failed.new-123']);
        expect(readFileSync(join(failedBefore, 'cluster-up-failed', 'h2', 'hypervisor.log'), 'utf8')).to.equal('x');
        const notLogs = join(dir, 'not-logs');
        mkdirSync(notLogs);
        writeFileSync(join(notLogs, 'cluster-up-failed'), 'x');
        expect(() => makeReportDir(notLogs)).to.throw(ClusterError, /holds "cluster-up-failed"/);
        mkdirSync(join(dir, 'empty'));
        expect(makeReportDir(join(dir, 'empty'))).to.deep.equal([]);
        expect(makeReportDir(join(dir, 'new', 'sub'))).to.deep.equal([join(dir, 'new'), join(dir, 'new', 'sub')]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('refuses an --out directory it cannot write to (a read-only mount) before anything starts: a run lost its whole report at its end', function () {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-ro-'));
    try {
      // A read-only file system, as root can make one (root writes through permission bits).
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'none', dir], { stdio: 'ignore' });
      } catch {
        this.skip();
      }
      try {
        expect(() => makeReportDir(dir)).to.throw(ClusterError, /^cannot write the report to .*: the file system is read-only$/);
        expect(() => makeReportDir(join(dir, 'sub'))).to.throw(ClusterError, /^cannot make the report directory .*: the file system is read-only$/);
      } finally {
        execFileSync('umount', [dir], { stdio: 'ignore' });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // A writable one keeps nothing of the check.
    const ok = mkdtempSync(join(tmpdir(), 'hvlab-exp-rw-'));
    try {
      expect(makeReportDir(ok)).to.deep.equal([]);
      expect(readdirSync(ok)).to.deep.equal([]);
    } finally {
      rmSync(ok, { recursive: true, force: true });
    }
  });

  it('a report that cannot be written where asked at the end is written to a temporary directory instead, and says so: the run\'s results are kept', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-exp-late-'));
    let alt = '';
    try {
      const r = report();
      r.out = join(dir, 'gone');
      const said: string[] = [];
      // The directory went away during the run (or its disk filled up): the first write fails.
      writeReportOrElsewhere(r, (d) => {
        if (d === join(dir, 'gone')) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${d}/results.json'`), { code: 'ENOENT' });
        writeReport(r, d);
      }, (l) => said.push(l));
      alt = r.out;
      expect(alt).to.not.equal(join(dir, 'gone'));
      expect(alt.startsWith(join(tmpdir(), 'hvlab-report-precopy-vs-offline-'))).to.equal(true);
      expect(readdirSync(alt).sort()).to.deep.equal([...REPORT_FILES].sort());
      const back = JSON.parse(readFileSync(join(alt, 'results.json'), 'utf8')) as ExperimentReport;
      expect(back.out).to.equal(alt);
      expect(back.cleanup).to.deep.equal([`the report could not be written to ${join(dir, 'gone')} (ENOENT: no such file or directory, open '${join(dir, 'gone')}/results.json'); it was written to ${alt} instead`]);
      expect(said).to.deep.equal([`WARNING: ${back.cleanup[0]}`]);
      // Written where asked, nothing changes.
      const ok = report();
      ok.out = join(dir, 'ok');
      writeReportOrElsewhere(ok, (d) => writeReport(ok, d));
      expect(ok.out).to.equal(join(dir, 'ok'));
      expect(ok.cleanup).to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
      if (alt) rmSync(alt, { recursive: true, force: true });
    }
  });

  it('the table the command prints says bytes sent as results.md does (KiB, MiB), not as a bare byte count', () => {
      const r = report();
      const rows = experimentSummaryRows(r);
      expect(rows[0]).to.deep.equal(['METHOD', 'RUNS', 'DONE', 'TOTAL P50 MS', 'DOWNTIME P50/P99 MS', 'SENT P50', 'TOTAL/MODEL']);
      const md = resultsMarkdown(r);
      for (const m of r.summary) {
        const row = rows.find((x) => x[0] === m.method)!;
        if (m.transferredBytes) {
          expect(row[5]).to.equal(formatBinaryBytes(m.transferredBytes.p50));
          expect(md).to.include(`| ${row[5]} |`);
        } else expect(row[5]).to.equal('-');
      }
      expect(rows.find((x) => x[0] === 'offline')![5]).to.equal('38.6 MiB');
      expect(rows.find((x) => x[0] === 'postcopy')![2]).to.equal('unsupported');
    });
  });
});

describe('a link probe under Ctrl-C (stoppableProbe: an experiment\'s, and link probe\'s)', () => {
  it('stops the probe\'s traffic once the signal is aborted and fails saying so; a probe that ends on its own is its result', async () => {
    // A probe that runs until its traffic is stopped (the fabric's probeStop ends the host's probe).
    let end: (v: string) => void = () => undefined;
    const probing = new Promise<string>((r) => (end = r));
    let stops = 0;
    const ac = new AbortController();
    const running = stoppableProbe(probing, async () => {
      stops++;
      end('partial');
    }, ac.signal);
    let settled: unknown = 'pending';
    void running.then((v) => (settled = v), (e: unknown) => (settled = e));
    await new Promise((r) => setTimeout(r, 20));
    expect(settled, 'it waits for the probe').to.equal('pending');
    expect(stops).to.equal(0);
    ac.abort();
    let err: unknown = null;
    try { await running; } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ProbeStopped);
    expect([(err as ProbeStopped).settled, (err as ProbeStopped).problem]).to.deep.equal([true, null]);
    expect(stops).to.equal(1);
    // Unstoppable: it gives up after its bound, saying the bytes may still cross.
    const stuck = new AbortController();
    stuck.abort();
    let err2: unknown = null;
    try { await stoppableProbe(new Promise<string>(() => undefined), async () => { throw new Error('no fabric'); }, stuck.signal, 300); } catch (e) { err2 = e; }
    expect([(err2 as ProbeStopped).settled, (err2 as ProbeStopped).problem]).to.deep.equal([false, 'no fabric']);
    // Not aborted: the probe's own result, and no stop.
    expect(await stoppableProbe(Promise.resolve('done'), async () => { throw new Error('not called'); }, new AbortController().signal)).to.equal('done');
  });
});
