/**
 * The command line of `hvlab`: every command declares its options and arguments, the parser
 * refuses the rest before anything is sent, and the help lists exactly what is accepted.
 */
import { expect } from 'chai';
import { ExperimentError, formatBinaryBytes, parseExperiment, TopologyError } from '@hvlab/cluster';
import { ChaosExperimentError, hostSpecOf, parseChaosExperiment, unheldShrinkRecord, type FaultRecord } from '@hvlab/faults';
import { emptyRam, MIGRATION_DEFAULTS, parseWholeNumber, type MigrationStats } from '@hvlab/protocol';
import { displayWidth } from '@hvlab/runtime';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMMANDS, commandHelp, editDistance, faultRequestFromOptions, faultTable, loadTopology, lpsText, moveStatusRows, movedText, fullHelp, HVLAB_VERSION, parseCommandLine, table, usageOf, userWords, UsageError, ValueError, versionText, type ParsedCommand } from '../src/main.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function refusal(argv: string[]): Error {
  try {
    parseCommandLine(argv);
  } catch (e) {
    return e as Error;
  }
  throw new Error(`hvlab ${argv.join(' ')} was accepted`);
}

function runs(argv: string[]): Extract<ParsedCommand, { kind: 'run' }> {
  const p = parseCommandLine(argv);
  if (p.kind !== 'run') throw new Error(`hvlab ${argv.join(' ')} was read as a help request`);
  return p;
}

describe('the hvlab command line', () => {
  it('counts a transposition as one edit', () => {
    expect(editDistance('memroy', 'memory')).to.equal(1);
    expect(editDistance('host', 'home')).to.equal(2);
    expect(editDistance('', 'abc')).to.equal(3);
    expect(editDistance('lps', 'lps')).to.equal(0);
  });

  it('accepts every command line that the end-to-end tests, the demo and the README use', () => {
    const lines: string[][] = [
      ['up', '--lps', '2'], ['up', '--lps', '2', '--vmbus-transport', 'remote'], ['down'], ['host', 'info'], ['ps'], ['top', '--once'],
      ['logs', '--role', 'hypervisor'], ['logs', '--role', 'vmwp', '--vm', 'alpha'], ['logs', '--role', 'vmwp', '--vm', 'web', '-f'],
      ['vm', 'new', 'beta', '--memory', '16M', '--workload', 'counter:500', '--vps', '2'], ['vm', 'new', 'rtc', '--memory', '8M', '--workload', 'idle', '--rtc-offset', '7200'],
      ['vm', 'new', 'md', '--memory', '32M', '--vps', '2', '--workload', 'memdirty:4M'], ['vm', 'new', 'bad/name'],
      ['vm', 'start', 'a'], ['vm', 'turn-off', 'p'], ['vm', 'pause', 'p'], ['vm', 'resume', 'p'], ['vm', 'delete', 'beta'], ['vm', 'save', 'cnt'],
      ['vm', 'stop', 'c1', '--json'], ['vm', 'stop', 'c1', '--timeout', '2'], ['vm', 'stop', 'c1', '--timeout', '2', '--force'],
      ['vm', 'set-processor', 'w100', '--reserve', '60', '--maximum', '50'], ['vm', 'set-processor', 'crunch', '--weight', '700', '--maximum', '50'],
      ['vm', 'list'], ['vm', 'list', '--json'], ['vm', 'status', 'quad'],
      ['vm', 'peek', 'alpha', '--gpa', '0x2000', '--len', '8'], ['vm', 'peek', 'md', '--gpa', '0x100000', '--len', '4M', '--out', '/tmp/x'],
      ['vm', 'peek', 'alpha', '--gpa', '0xffffffff', '--len', '16'],
      ['vm', 'ic', 'c1'], ['vm', 'ic', 'c1', '--disable', 'kvp'], ['vm', 'ic', 'c1', '--enable', 'kvp'], ['vm', 'ic', 'c1', '--json'],
      ['vm', 'kvp', 'c2', 'set', 'hvlab.test', 'hello world'], ['vm', 'kvp', 'c2', 'get', 'owner', '--json'], ['vm', 'kvp', 'c2', 'delete', 'hvlab.test'],
      ['vm', 'kvp', 'c2', 'list', '--pool', 'guest'], ['vm', 'kvp', 'c2', 'set', 'hvlab.workload', 'nope', '--pool', 'guest'],
      ['debug', 'hypercall', '--as', 'alpha', 'CreatePartition', 'memoryBytes=2097152', '--json'], ['debug', 'hypercall', 'GetPartitionId', '--json'],
      ['debug', 'hypercall', '--as', 'beta', 'PostMessage', 'connectionId=1', 'messageType=2', 'payload=len:241', '--json'], ['debug', 'hypercall', 'NoSuchCall'],
      ['--home', '/tmp/h', 'vm', 'list'], ['--json', 'vm', 'list'], ['vm', 'list', '--home=/tmp/h'],
    ];
    for (const argv of lines) expect(() => runs(argv), argv.join(' ')).to.not.throw();
    // Every `hv …` line of the demo script, word for word.
    const demo = readFileSync(join(repo, 'scripts', 'demo.sh'), 'utf8');
    const demoLines = [...demo.matchAll(/(?:^|;\s*)hv ([^;|&\n]+?)(?:\s*\|\||\s*$)/gm)].map((m) => m[1].trim().split(/\s+/));
    expect(demoLines.length).to.be.greaterThan(20);
    for (const argv of demoLines) expect(() => runs(argv), `demo: hv ${argv.join(' ')}`).to.not.throw();
  });

  it('reads options, flags and arguments into the command', () => {
    const p = runs(['--home', '/tmp/h', 'vm', 'new', 'web', '--memory=64M', '--vps', '2', '--json']);
    expect(p.spec.words).to.deep.equal(['vm', 'new']);
    expect(p.args).to.deep.equal(['web']);
    expect(p.options.get('memory')).to.equal('64M');
    expect(p.options.get('vps')).to.equal('2');
    expect(p.home).to.equal('/tmp/h');
    expect(p.json).to.equal(true);
    expect(runs(['vm', 'new', 'x', '--rtc-offset', '-3600']).options.get('rtc-offset')).to.equal('-3600');
    expect(runs(['vm', 'kvp', 'x', 'set', 'k', '--', '--not-an-option']).args).to.deep.equal(['x', 'set', 'k', '--not-an-option']);
    expect(runs(['logs', '-f']).options.get('follow')).to.equal(true);
  });

  it('refuses unknown options naming the nearest one of the command', () => {
    expect(refusal(['vm', 'new', 'y', '--memroy', '32M']).message).to.equal('unknown option --memroy for "vm new" (did you mean --memory?)');
    expect(refusal(['vm', 'set-processor', 'y', '--wieght', '5']).message).to.equal('unknown option --wieght for "vm set-processor" (did you mean --weight?)');
    expect(refusal(['--hots', 'h2', 'vm', 'new', 'x']).message).to.equal('unknown option --hots before the command (did you mean --host?)');
    expect(refusal(['up', '--hostz', '3']).message).to.equal('unknown option --hostz for "up" (did you mean --hosts?)');
    expect(refusal(['vm', 'list', '-x'])).to.be.instanceOf(UsageError);
    expect(refusal(['vm', 'list', '-x']).message).to.match(/^unknown option -x for "vm list"/);
  });

  it('takes --json before the command only for a command that prints JSON', () => {
    expect(runs(['--json', 'vm', 'list']).json).to.equal(true);
    expect(refusal(['--json', 'logs']).message).to.match(/^unknown option --json for "logs"/);
  });

  it('refuses an option of a command placed before the command', () => {
    expect(refusal(['--memory', '8M', 'vm', 'new', 'x']).message).to.match(/^option --memory goes after the command, e.g. "hvlab vm new NAME/);
  });

  it('refuses valueless, repeated and value-carrying-flag options', () => {
    expect(refusal(['vm', 'list', '--every']).message).to.match(/^unknown option --every/);
    expect(refusal(['vm', 'peek', 'a', '--len', '8', '--gpa']).message).to.equal('option --gpa of "vm peek" needs a value (ADDR)');
    expect(refusal(['vm', 'peek', 'a', '--gpa', '--len', '8']).message).to.equal('option --gpa of "vm peek" needs a value (ADDR)');
    expect(refusal(['--home']).message).to.equal('option --home needs a value (DIR)');
    expect(refusal(['vm', 'stop', 'a', '--force=1']).message).to.equal('option --force of "vm stop" takes no value');
    expect(refusal(['vm', 'new', 'a', '--vps', '1', '--vps', '2']).message).to.equal('option --vps is given twice');
  });

  it('refuses missing and extra arguments', () => {
    expect(refusal(['vm', 'start']).message).to.equal('"vm start" needs NAME (usage: hvlab vm start NAME [--json])');
    expect(refusal(['vm', 'start', 'a', 'b']).message).to.equal('unexpected argument "b" for "vm start" (usage: hvlab vm start NAME [--json])');
    expect(refusal(['down', 'now']).message).to.match(/^unexpected argument "now" for "down"/);
    expect(refusal(['vm', 'peek', 'a', '--gpa', '0']).message).to.match(/^"vm peek" needs --len N/);
    expect(refusal(['vm']).message).to.match(/^"vm" needs a subcommand: new, start, /);
    expect(refusal(['vm', 'lsit']).message).to.equal('unknown command "vm lsit" (did you mean "vm list"?)');
    expect(refusal(['frobnicate']).message).to.equal('unknown command "frobnicate"; see "hvlab --help"');
  });

  it('refuses an empty --home', () => {
    const e = refusal(['--home', '', 'vm', 'list']);
    expect(e).to.be.instanceOf(UsageError);
    expect(e.message).to.equal('--home is empty: give a directory');
  });

  it('checks numbers and choices given to options before anything is sent', () => {
    const cases: Array<[string[], string]> = [
      [['vm', 'set-processor', 'a', '--weight', '[5]'], '--weight [5] is invalid: a whole number from 1 to 10000'],
      [['vm', 'set-processor', 'a', '--weight', '0'], '--weight 0 is invalid: a whole number from 1 to 10000'],
      [['vm', 'set-processor', 'a', '--maximum', ' 5'], '--maximum  5 is invalid: a whole number from 1 to 100'],
      [['vm', 'new', 'a', '--vps', '65'], '--vps 65 is invalid: a VM has 1 to 64 virtual processors'],
      [['vm', 'new', 'a', '--memory', '[object Object]'], 'memory size "[object Object]" is invalid: use a whole number with an optional K, M or G suffix, e.g. 64M'],
      [['vm', 'new', 'a', '--vps', '0x2'], '--vps 0x2 is invalid: a VM has 1 to 64 virtual processors, as a whole decimal number'],
      [['vm', 'new', 'a', '--rtc-offset', '1e3'], '--rtc-offset 1e3 is invalid: whole seconds within ±10 years'],
      [['vm', 'stop', 'a', '--timeout', 'Infinity'], '--timeout Infinity is invalid: seconds, more than 0 and at most 3600'],
      [['vm', 'peek', 'a', '--gpa', '1e3', '--len', '8'], '--gpa 1e3 is not an address'],
      [['vm', 'ic', 'a', '--enable', 'kpv'], '--enable kpv is invalid: use heartbeat, shutdown, timesync or kvp'],
      [['vm', 'kvp', 'a', 'list', '--pool', 'mine'], '--pool mine is invalid: use external, guest or auto'],
      [['logs', '--role', 'nonsense'], '--role nonsense is unknown: use hypervisor, root, vmwp or partition'],
      [['top', '--interval', '0'], '--interval 0 is invalid: 0.2 to 60 seconds'],
      [['up', '--lps', '257'], '--lps 257 is invalid: 1 to 256 logical processors'],
      [['up', '--vmbus-transport', 'tcp'], '--vmbus-transport tcp is invalid: use shm or remote'],
      [['fault', 'inject', 'vmbus', '--target', 'vm:a', '--for', '5s', '--channel', 'foo'], '--channel foo is not a VMBus channel: use heartbeat, shutdown, timesync or kvp'],
    ];
    for (const [argv, msg] of cases) {
      const e = refusal(argv);
      expect(e, argv.join(' ')).to.be.instanceOf(ValueError);
      expect(e.message, argv.join(' ')).to.equal(msg);
    }
  });

  it('a seed is written the same on the command line and in a file (decimal or 0x-hex, 0 to 2^32-1): both take and refuse the same, in the same sentence naming the value', () => {
    // seed: 0x10 (YAML's hex) was taken in a file and --seed 0x10 refused; 1e3 and 16.0 were taken in a file only.
    const forms: Array<[string, number | null]> = [
      ['16', 16], ['0x10', 16], ['0X1f', 31], ['007', 7], ['0', 0], ['4294967295', 4294967295], ['0xffffffff', 4294967295], ['0x00000000ff', 255],
      ['4294967296', null], ['0x100000000', null], ['1e3', null], ['16.0', null], ['+16', null], ['0o20', null], ['0b1', null], ['0x', null], ['1_000', null],
      ['.inf', null], ['.nan', null], ['NaN', null], ['Infinity', null], ['0x1g', null], ['sixteen', null], ['', null], ['9'.repeat(400), null],
    ];
    const fileSeed = (text: string, value: string): { seed: number | null; problems: string[] } => {
      const yaml = `${text}seed: ${value}\n`;
      try {
        return { seed: (text.includes('faults') ? parseChaosExperiment(yaml, 'c.yaml') : parseExperiment(yaml, 'e.yaml')).seed, problems: [] };
      } catch (e) {
        return { seed: null, problems: (e as ExperimentError | ChaosExperimentError).problems.map((p) => `${p.field}: ${p.message}`) };
      }
    };
    for (const [v, want] of forms) {
      const shown = v === '' ? 'nothing' : v.length > 40 ? `${v.slice(0, 39)}…` : v;
      const sentence = want === null ? `must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not ${shown}` : null;
      // Every command that takes --seed; the value a fault request is given.
      for (const argv of [['experiment', 'run', 'c.yaml', '--seed', v], ['link', 'set', 'h1', 'h2', '--seed', v], ['fault', 'inject', 'pause', '--target', 'vm:a', '--for', '1s', '--seed', v]]) {
        let problem: string | null = null;
        try {
          runs(argv);
        } catch (e) {
          expect(e, argv.join(' ')).to.be.instanceOf(ValueError);
          problem = (e as Error).message;
        }
        expect(problem, argv.join(' ')).to.equal(sentence && `--seed ${sentence}`);
      }
      if (want !== null) expect(faultRequestFromOptions('pause', (n) => ({ target: 'vm:a', for: '1s', seed: v })[n], () => false).seed, `--seed ${v}`).to.equal(want);
      // The migration file, the chaos file and a chaos file's fault: the same.
      expect(fileSeed('name: e\nmethods: [offline]\n', v), `seed: ${v}`).to.deep.equal(want === null ? { seed: null, problems: [`seed: ${sentence}`] } : { seed: want, problems: [] });
      expect(fileSeed('name: c\nkind: faults\nworkloads: [{ name: a, host: h1 }]\n', v), `chaos seed: ${v}`).to.deep.equal(want === null ? { seed: null, problems: [`seed: ${sentence}`] } : { seed: want, problems: [] });
      const fault = `name: c\nkind: faults\nworkloads: [{ name: a, host: h1 }]\nfaults:\n  - { at: 1s, kind: pause, target: vm:a, for: 1s, seed: ${v === '' ? '' : v} }\n`;
      let faultSeed: number | null = null;
      let faultProblems: string[] = [];
      try {
        faultSeed = parseChaosExperiment(fault, 'c.yaml').faults[0]!.seed;
      } catch (e) {
        faultProblems = (e as ChaosExperimentError).problems.map((p) => `${p.field}: ${p.message}`);
      }
      expect({ faultSeed, faultProblems }, `fault seed: ${v}`).to.deep.equal(want === null ? { faultSeed: null, faultProblems: [`faults[0].seed: ${sentence}`] } : { faultSeed: want, faultProblems: [] });
    }
    // A quoted value in a file is text, not a number, as anywhere in it: said as written.
    expect(fileSeed('name: e\nmethods: [offline]\n', '"16"').problems).to.deep.equal(['seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not "16"']);
    expect(fileSeed('name: e\nmethods: [offline]\n', '[16]').problems).to.deep.equal(['seed: must be a whole number from 0 to 4294967295, in decimal or 0x-hex (16 or 0x10), not a list']);
  });

  it('reads every duration with its unit, and refuses a bare number but 0, saying so (`--for 5` was 5 ms)', () => {
    const hint = (n: string): string => `(a duration needs its unit: ${n}s or ${n}ms)`;
    expect(refusal(['fault', 'inject', 'pause', '--target', 'vm:a', '--for', '5']).message).to.equal(`--for 5 is invalid: a duration such as 5s or 250ms ${hint('5')}`);
    expect(refusal(['link', 'set', 'h1', 'h2', '--delay', '20']).message).to.equal(`--delay 20 is invalid: a duration from 0 to 60s such as 20ms or 1.5s, or none ${hint('20')}`);
    expect(refusal(['fault', 'inject', 'vmbus', '--target', 'vm:a', '--for', '1s', '--delay', '50']).message).to.equal(`--delay 50 is invalid: a duration such as 20ms or 1s ${hint('50')}`);
    expect(refusal(['fault', 'inject', 'clock', '--target', 'vm:a', '--for', '1s', '--offset', '-2']).message).to.equal(`--offset -2 is invalid: a duration such as 5s or -2s ${hint('2')}`);
    // One grammar: us, ms, s, m and h everywhere, and 0 alone.
    for (const ok of [['link', 'set', 'h1', 'h2', '--delay', '250us'], ['link', 'set', 'h1', 'h2', '--delay', '0'], ['fault', 'inject', 'pause', '--target', 'vm:a', '--for', '2m'], ['fault', 'inject', 'kill', '--target', 'vm:a', '--for', '0']]) {
      expect(() => parseCommandLine(ok), ok.join(' ')).to.not.throw();
    }
    expect(() => parseCommandLine(['link', 'set', 'h1', 'h2', '--delay', '1m']), 'a link takes minutes too (it took us, not m)').to.not.throw();
    expect(refusal(['link', 'set', 'h1', 'h2', '--delay', '2m']).message).to.match(/^--delay 2m is invalid: a duration from 0 to 60s/);
    // A fault's durations are whole milliseconds: 1000us is 1 ms, 250us is refused (it was rounded to a 0 ms delay, a fault that did nothing).
    expect(() => parseCommandLine(['fault', 'inject', 'vmbus', '--target', 'vm:a', '--for', '1s', '--delay', '1000us']), 'a fault takes us that make whole ms').to.not.throw();
    expect(refusal(['fault', 'inject', 'link', '--target', 'link:h1-h2', '--for', '1s', '--delay', '250us']).message).to.equal('--delay 250us is invalid: a duration such as 20ms or 1s (whole milliseconds here)');
  });

  it('checks option values in the order they were given, so the first message names the first wrong one', () => {
    // An unknown channel was passed over for a probability given after it (and, with no probability, the nemesis's "needs at least one probability").
    const line = ['fault', 'inject', 'vmbus', '--channel', 'foo', '--drop', '2', '--target', 'vm:web', '--for', '5s'];
    expect(refusal(line).message).to.equal('--channel foo is not a VMBus channel: use heartbeat, shutdown, timesync or kvp');
    expect(refusal(['fault', 'inject', 'vmbus', '--drop', '2', '--channel', 'foo', '--target', 'vm:web', '--for', '5s']).message).to.equal('--drop 2 is invalid: a probability from 0 to 1, e.g. 0.2');
    expect(runs(['fault', 'inject', 'vmbus', '--channel', 'kvp', '--drop', '0.5', '--target', 'vm:web', '--for', '5s']).options.get('channel')).to.equal('kvp');
  });

  it('answers --help anywhere with the help of the command, and alone with every command', () => {
    const vmNew = COMMANDS.find((c) => c.words.join(' ') === 'vm new')!;
    expect(parseCommandLine(['vm', 'new', '--help'])).to.deep.equal({ kind: 'help', text: commandHelp(vmNew) });
    expect(parseCommandLine(['vm', 'new', 'x', '--memroy', '1', '-h'])).to.deep.equal({ kind: 'help', text: commandHelp(vmNew) });
    expect(parseCommandLine(['help', 'vm', 'new'])).to.deep.equal({ kind: 'help', text: commandHelp(vmNew) });
    expect(parseCommandLine(['--help'])).to.deep.equal({ kind: 'help', text: fullHelp() });
    expect(parseCommandLine([])).to.deep.equal({ kind: 'help', text: fullHelp() });
    expect(parseCommandLine(['vm', 'kvp', 'a', 'set', 'k', '--', '--help'])).to.have.property('kind', 'run');
    expect(parseCommandLine(['--host', 'h1', 'vm', 'list', '--help'])).to.deep.equal({ kind: 'help', text: commandHelp(COMMANDS.find((c) => c.words.join(' ') === 'vm list')!) });
  });

  it('says a host\'s messages in the CLI\'s words: operations as their commands, their arguments as options', () => {
    expect(userWords('the host\'s root partition process (pid 7) exited while "vmList" was pending')).to.equal('the host\'s root partition process (pid 7) exited while "vm list" was pending');
    expect(userWords('the host did not answer "vmMoveStatus" within 5 s')).to.equal('the host did not answer "vm move-status" within 5 s');
    expect(userWords('"vmTurnOff" was not sent')).to.equal('"vm turn-off" was not sent');
    expect(userWords('vmPeek argument "len" is the number 1073741824, not a whole number from 1 to 16777216')).to.equal('vm peek: --len is the number 1073741824, not a whole number from 1 to 16777216');
    expect(userWords('vmSetProcessor argument "maxPasses" is wrong')).to.equal('vm set-processor: --max-passes is wrong');
    expect(userWords('"shutdown" failed; "hostInfo" too; VM "vmList2" and "ping" stay')).to.equal('"down" failed; "host info" too; VM "vmList2" and "ping" stay');
  });

  it('answers a group\'s --help with its commands, and --help of a command that is not there as unknown', () => {
    for (const argv of [['vm', '--help'], ['help', 'vm']]) {
      const h = parseCommandLine(argv);
      expect(h.kind, argv.join(' ')).to.equal('help');
      const text = (h as { text: string }).text;
      expect(text).to.match(/^Usage: hvlab vm SUBCOMMAND/);
      for (const c of COMMANDS.filter((x) => x.words[0] === 'vm')) expect(text).to.include(`  ${usageOf(c).slice('hvlab '.length)}`);
      expect(text).to.not.include('cluster up');
    }
    expect(() => parseCommandLine(['frob', '--help'])).to.throw(UsageError, /^unknown command "frob"/);
    expect(() => parseCommandLine(['vm', 'strat', '--help'])).to.throw(UsageError, /^unknown command "vm strat" \(did you mean "vm start"\?\)/);
  });

  it('answers --version (or -V) alone with the version of hvlab, package.json\'s, and of Node; with other options it must go alone, after a command it is unknown', () => {
    const pkg = JSON.parse(readFileSync(join(repo, 'packages', 'cli', 'package.json'), 'utf8')) as { version: string };
    expect(HVLAB_VERSION).to.equal(pkg.version);
    expect(versionText()).to.equal(`hvlab ${pkg.version} (node ${process.version}, ${process.platform}-${process.arch})`);
    expect(parseCommandLine(['--version'])).to.deep.equal({ kind: 'help', text: versionText() });
    expect(parseCommandLine(['-V'])).to.deep.equal({ kind: 'help', text: versionText() });
    expect(refusal(['vm', 'list', '--version'])).to.be.instanceOf(UsageError);
    for (const argv of [['--json', '--version'], ['--version', '--json'], ['--home', '/x', '-V']]) {
      const e = refusal(argv);
      expect(e, argv.join(' ')).to.be.instanceOf(UsageError);
      expect(e.message, argv.join(' ')).to.match(/^(--version|-V) goes alone: "hvlab --version"$/);
    }
    expect(fullHelp()).to.include('hvlab --version');
  });

  it('lists every command with every option in the help, and each option in the command\'s help', () => {
    const all = fullHelp();
    for (const c of COMMANDS) {
      expect(all, c.words.join(' ')).to.include(usageOf(c).slice('hvlab '.length));
      const own = commandHelp(c);
      for (const o of c.options) {
        expect(usageOf(c), `${c.words.join(' ')} --${o.name}`).to.include(`--${o.name}`);
        expect(own, `${c.words.join(' ')} --${o.name}`).to.include(`--${o.name}`);
        expect(own, `${c.words.join(' ')} --${o.name}`).to.include(o.help.split(' ').slice(0, 3).join(' '));
      }
      if (c.json) expect(own).to.include('--json');
      else expect(own).to.not.include('--json');
    }
  });

  it('gives every command a distinct name and every option a distinct name within its command', () => {
    const names = COMMANDS.map((c) => c.words.join(' '));
    expect(new Set(names).size).to.equal(names.length);
    for (const c of COMMANDS) {
      const opts = [...c.options.map((o) => o.name), 'home', 'help', ...(c.json ? ['json'] : [])];
      expect(new Set(opts).size, c.words.join(' ')).to.equal(opts.length);
    }
  });
});

describe('vm new --help', () => {
  it('offers only memory sizes that vm new takes', () => {
    const help = commandHelp(COMMANDS.find((c) => c.words.join(' ') === 'vm new')!);
    expect(help).to.include('from 2M to 4G');
    expect(help).to.not.match(/512K/);
  });
});

describe('amounts of a move as the CLI prints them (formatBinaryBytes)', () => {
  it('reads nothing as 0 and a transferred amount in the unit that fits, never as a size spec', () => {
    expect(formatBinaryBytes(0)).to.equal('0');
    expect(formatBinaryBytes(311408)).to.equal('304.1 KiB');
    expect(formatBinaryBytes(67104768)).to.equal('64 MiB');
    expect(formatBinaryBytes(1.5 * 1024 ** 3)).to.equal('1.5 GiB');
  });
});

describe('a move\'s statistics as the CLI prints them (moveStatusRows, movedText)', () => {
  const st = (status: MigrationStats['status'], extra: Partial<MigrationStats> = {}): MigrationStats => ({
    vm: 'web', from: 'h1', to: 'h2', method: 'offline', status, 'total-time': 2400, 'setup-time': 30, 'expected-downtime': 5,
    ram: { ...emptyRam(16 * 1024 * 1024), transferred: 1 << 20 }, pass: 1, 'compression-ratio': 1, 'throttle-percentage': 0, 'dirty-tracking': 'kernel',
    passes: [{ pass: 1, pages: 256, dirtyPages: 0, ms: 20, at: 50 }], options: { ...MIGRATION_DEFAULTS, offline: true }, startedAt: '2026-12-01T00:00:00.000Z', ...extra,
  });
  const rowsOf = (s: MigrationStats): Map<string, string> => new Map(moveStatusRows(s).map(([k, v]) => [k!, v!]));

  it('move-status has no downtime row for a move that did not complete: a cancelled or failed one (a host before the fix kept the 0 it started from) or one still copying', () => {
    for (const s of [st('cancelled', { downtime: 0, 'error-desc': 'cancelled by the user' }), st('failed', { downtime: 0, 'downtime-acked': 3 }), st('active', { downtime: 0 }), st('cancelled')]) {
      const rows = rowsOf(s);
      expect(rows.has('downtime'), `${s.status}: ${table(moveStatusRows(s))}`).to.equal(false);
      expect(table(moveStatusRows(s))).to.not.match(/^downtime\b/m);
      // Everything else stays: the status and why, the times, the expected downtime, the memory.
      expect(rows.get('status')).to.equal(s.status + (s['error-desc'] ? ` (${s['error-desc']})` : ''));
      expect([rows.get('total-time'), rows.get('expected-downtime'), rows.get('ram transferred')]).to.deep.equal(['2400 ms', '5 ms', '1 MiB (1048576 B)']);
    }
  });

  it('move-status has the downtime of a completed move, and of a post-copy past its switch-over, with the time until the source heard', () => {
    expect(rowsOf(st('completed', { downtime: 12, 'downtime-acked': 15 })).get('downtime')).to.equal('12 ms (15 ms until the source heard)');
    expect(rowsOf(st('postcopy-active', { method: 'postcopy', downtime: 9 })).get('downtime')).to.equal('9 ms');
    // A completed move whose downtime nobody measured (its worker gone in doubt, the destination's word since).
    expect(rowsOf(st('completed')).has('downtime')).to.equal(false);
  });

  it('a completed move\'s line says its downtime, or that it was not measured', () => {
    expect(movedText(st('completed', { downtime: 12 }))).to.match(/^VM web moved from h1 to h2 \(offline\) in 2\.40 s: downtime 12 ms, 1 pass, 1 MiB sent for 16 MiB of memory/);
    expect(movedText(st('completed'))).to.match(/: downtime not measured, /);
    // The options that change the method are named with it (it said "(precopy)" of a compressed move).
    expect(movedText(st('completed', { method: 'precopy', options: { ...MIGRATION_DEFAULTS, compress: true, autoConverge: true } }))).to.match(/ \(precopy\+compress\+autoconverge\) in /);
  });
});

describe('topology files as cluster check and cluster up read them (loadTopology)', () => {
  const TOPO = 'name: lab\nhosts: { h1: {}, h2: {} }\nlinks:\n  - endpoints: [h1, h2]\n';
  it('refuses a file that is not UTF-8 with one problem at its first bad sequence, naming its byte offset; takes UTF-8 with a BOM as its bytes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-topo-utf8-'));
    try {
      // A Latin-1 "é" (0xE9) in a comment: it was taken, and the source kept in the cluster's record said U+FFFD.
      const head = Buffer.from(`${TOPO}# ✓ caf`);
      writeFileSync(join(dir, 'bad.yaml'), Buffer.concat([head, Buffer.from([0xe9, 0x0a])]));
      const e = loadTopology(join(dir, 'bad.yaml'));
      expect(e).to.be.instanceOf(TopologyError);
      expect((e as TopologyError).problems).to.deep.equal([{ line: 5, column: 8, field: '', message: `not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)` }]);
      expect((e as TopologyError).message).to.equal(`${join(dir, 'bad.yaml')}:5:8: not UTF-8 text: byte 0xe9 at offset ${head.length} begins no UTF-8 sequence (save the file as UTF-8)`);
      const good = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`${TOPO}# café ✓\n`)]);
      writeFileSync(join(dir, 'good.yaml'), good);
      const t = loadTopology(join(dir, 'good.yaml'));
      if (t instanceof TopologyError) throw t;
      expect(t.topology.name).to.equal('lab');
      expect(Buffer.from(t.source, 'utf8').equals(good)).to.equal(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('tables as the CLI prints them', () => {
  it('line up columns after wide characters, emoji and combining marks by the columns they take', () => {
    const t = table([['NAME', 'STATE', 'CPU'], ['網站', 'Running', '3%'], ['web', 'Off', '-'], ['🚀-e\u0301', 'Paused', '0%']]);
    // Each line's STATE column starts at the same terminal column: after the widest NAME (4 columns: 網站, or 🚀-é) and two spaces.
    expect(t.split('\n')).to.deep.equal(['NAME  STATE    CPU', '網站  Running  3%', 'web   Off      -', '🚀-e\u0301  Paused   0%']);
    for (const line of t.split('\n')) expect(displayWidth(line.slice(0, line.search(/(STATE|Running|Off|Paused)/))), line).to.equal(6);
  });
});

describe('fault inject as the CLI builds its request (faultRequestFromOptions)', () => {
  const refused = (kind: Parameters<typeof faultRequestFromOptions>[0], o: Record<string, string>): Error => {
    try {
      faultRequestFromOptions(kind, (n) => o[n], () => false);
    } catch (e) {
      return e as Error;
    }
    throw new Error(`${kind} ${JSON.stringify(o)} was accepted`);
  };

  it('a parameter out of range is said with its option and the value given, as a value error (it went to the nemesis, which named its field: "skewPpm")', () => {
    const skew = refused('clock', { target: 'vm:web', for: '5s', skew: '-1000000' });
    expect(skew).to.be.instanceOf(ValueError);
    expect(skew.message).to.equal('clock: --skew -1000000 must be a whole number from -900000 to 10000000');
    expect(refused('interrupt-delay', { target: 'vm:web', for: '5s', delay: '1h' }).message).to.equal('interrupt-delay: --delay 1h must be from 1 ms to 60000 ms');
    expect(refused('link', { target: 'link:h1-h2', for: '5s', loss: '150' }).message).to.equal('link: --loss 150 must be a number from 0 to 100');
    expect(refused('link', { target: 'link:h1-h2', for: '5s' }).message).to.equal('a link fault needs something to do to the link: --delay, --jitter, --rate, --loss or --cut');
    expect(refused('link', { target: 'vm:web', for: '5s', delay: '5ms' })).to.be.instanceOf(ValueError);
  });

  it('every whole-number fault option takes decimal or 0x hex, as --gpa does (--mask 0xff was refused as "a whole number from 1 to 255")', () => {
    const inject = (kind: Parameters<typeof faultRequestFromOptions>[0], o: Record<string, string>) => runs(['fault', 'inject', kind, '--target', kind === 'lp-shrink' ? 'host:h1' : 'vm:a', '--for', kind === 'bitflip' ? '0' : '5s', ...Object.entries(o).flatMap(([k, v]) => [`--${k}`, v])]);
    expect(() => inject('bitflip', { mask: '0xff', gpa: '0x100000' })).to.not.throw();
    expect(() => inject('bitflip', { mask: '0X10' })).to.not.throw();
    expect(() => inject('lp-shrink', { lps: '0x2' })).to.not.throw();
    expect(() => inject('clock', { skew: '-0x10' })).to.not.throw();
    const req = (kind: Parameters<typeof faultRequestFromOptions>[0], o: Record<string, string>) => faultRequestFromOptions(kind, (n) => ({ target: kind === 'lp-shrink' ? 'host:h1' : 'vm:a', for: kind === 'bitflip' ? '0' : '1s', ...o })[n], () => false).params;
    expect(req('bitflip', { mask: '0xff', gpa: '0x1ff000' })).to.deep.equal({ mask: 255, gpa: 0x1ff000 });
    expect(req('bitflip', { mask: '128', gpa: '4096' })).to.deep.equal({ mask: 128, gpa: 4096 });
    expect(req('lp-shrink', { lps: '0x2' })).to.deep.equal({ lps: 2 });
    expect(req('clock', { skew: '-0x10' })).to.deep.equal({ skewPpm: -16 });
    // Out of range or not a whole number, in either form: refused before anything is sent, naming both forms.
    const cases: Array<[string[], string]> = [
      [['--mask', '0x100'], '--mask 0x100 is invalid: a whole number from 1 to 255 (decimal or 0x hex)'],
      [['--mask', '0'], '--mask 0 is invalid: a whole number from 1 to 255 (decimal or 0x hex)'],
      [['--mask', '-1'], '--mask -1 is invalid: a whole number from 1 to 255 (decimal or 0x hex)'],
      [['--mask', '1e2'], '--mask 1e2 is invalid: a whole number from 1 to 255 (decimal or 0x hex)'],
      [['--mask', '0x'], '--mask 0x is invalid: a whole number from 1 to 255 (decimal or 0x hex)'],
      [['--gpa', '-0x10'], '--gpa -0x10 is not an address'],
      [['--gpa', '0x' + 'f'.repeat(20)], `--gpa 0x${'f'.repeat(20)} is not an address`],
    ];
    for (const [o, msg] of cases) expect(refusal(['fault', 'inject', 'bitflip', '--target', 'vm:a', '--for', '0', ...o]).message, o.join(' ')).to.equal(msg);
    expect(refusal(['fault', 'inject', 'lp-shrink', '--target', 'host:h1', '--for', '5s', '--lps', '0x401']).message).to.equal('--lps 0x401 is invalid: a whole number from 1 to 1024 (decimal or 0x hex)');
    expect(refusal(['fault', 'inject', 'clock', '--target', 'vm:a', '--for', '5s', '--skew', '1.5']).message).to.equal('--skew 1.5 is invalid: whole ppm, e.g. 100000 or -50000');
    expect([parseWholeNumber('-0x10', true), parseWholeNumber('-0', true), parseWholeNumber('0x1F'), parseWholeNumber(' 1'), parseWholeNumber('9007199254740992')]).to.deep.equal([-16, 0, 31, null, null]);
    // A vp-stall's list and vm peek's --gpa read numbers the same way (--vps was decimal only, --gpa had its own reader).
    expect(() => inject('vp-stall', { vps: '0x1,2' })).to.not.throw();
    expect(refusal(['fault', 'inject', 'vp-stall', '--target', 'vm:a', '--for', '5s', '--vps', '0x,1']).message).to.equal('--vps 0x,1 is invalid: e.g. 0 or 0,1');
    expect(hostSpecOf('vp-stall', { vps: '0x1,2' }, 1)).to.deep.equal({ ok: true, value: { kind: 'vp-stall', vps: [1, 2] } });
    expect(() => runs(['vm', 'peek', 'a', '--gpa', '0X1000', '--len', '16'])).to.not.throw();
    expect(refusal(['vm', 'peek', 'a', '--gpa', '-1', '--len', '16']).message).to.equal('--gpa -1 is not an address');
  });

  it('fault list shows each fault\'s parameters as its command line asked them (it showed kind and target only)', () => {
    const asked = (kind: Parameters<typeof faultRequestFromOptions>[0], o: Record<string, string>, flags: string[] = []): FaultRecord => {
      const req = faultRequestFromOptions(kind, (n) => o[n], (n) => flags.includes(n));
      return {
        id: `f-${kind}`, kind, target: req.target, role: null, params: req.params ?? {}, owner: null, seed: 1, forMs: req.forMs,
        resolved: { summary: 'web on h1', hosts: ['h1'], vms: [], processes: [], links: [] },
        state: 'active', startedAt: 0, endsAt: req.forMs, endedAt: null, endReason: null, error: null, effect: null,
      };
    };
    const rows = faultTable([
      asked('vmbus', { target: 'vm:web', for: '10s', drop: '0.3', delay: '20ms', channel: 'kvp' }),
      asked('lp-shrink', { target: 'host:h1', for: '10s', lps: '1' }),
      asked('clock', { target: 'vm:web', for: '10s', offset: '-5s' }),
      asked('link', { target: 'link:h1-h2', for: '10s' }, ['cut']),
      asked('pause', { target: 'vm:web', for: '10s' }),
    ], 0).split('\n');
    expect(rows[0]).to.match(/^ID\s+KIND\s+PARAMS\s+TARGET/);
    expect(rows[1]).to.match(/f-vmbus\s+vmbus\s+channel kvp, drop 30 %, delay 20 ms\s+vm:web/);
    expect(rows[2]).to.match(/lp-shrink\s+lps 1\s+host:h1/);
    expect(rows[3]).to.match(/clock\s+offset -5000 ms\s+vm:web/);
    expect(rows[4]).to.match(/link\s+cut\s+link:h1-h2/);
    expect(rows[5]).to.match(/pause\s+-\s+vm:web/);
    expect(rows[0], 'no COUNTED column without counters').to.not.match(/COUNTED/);
    // A vmbus fault's counters (the worker's, through the root): what it did to each VM's packets and signals.
    const counted = { ...asked('vmbus', { target: 'vm:web', for: '10s', drop: '0.3' }), counters: { 'web@h1': { packets: { seen: 120, dropped: 36, delayed: 0, duplicated: 2, reordered: 0, corrupted: 0 }, signals: { seen: 40, dropped: 0, delayed: 0 } } } };
    const withCounts = faultTable([counted], 0).split('\n');
    expect(withCounts[0]).to.match(/OWNER\s+COUNTED$/);
    expect(withCounts[1]).to.match(/web@h1: 36 of 120 packets dropped, 2 duplicated; 40 signals, none touched$/);
  });

  it('fault list marks a fault a host holds without the nemesis (an LP shrink set past it, or naming no fault)', () => {
    const at = 1_700_000_000_000;
    const rows = faultTable([
      unheldShrinkRecord('h2', { id: null, lps: 1, startedAt: at, endsAt: at + 60_000 }),
      unheldShrinkRecord('h1', { id: 'lost1', lps: 2, startedAt: at, endsAt: at + 8000 }),
    ], at).split('\n');
    expect(rows[1]).to.match(/^\(unnamed\)\s+lp-shrink\s+lps 1\s+host:h2\s+host h2\s+held by host\s+60s\s+-\s*$/);
    expect(rows[2]).to.match(/^lost1\s+lp-shrink\s+lps 2\s+host:h1\s+host h1\s+held by host\s+8s\s+-\s*$/);
    expect(unheldShrinkRecord('h1', { id: 'lost1', lps: 2, startedAt: at, endsAt: at + 8000 }, at + 10)).to.deep.include({ state: 'ended', endReason: 'cleared', unheld: true });
  });

  it('host info says an LP shrink that names no fault as such (its root said "fault unknown", which may be a fault\'s id)', () => {
    expect(lpsText({ lps: 2, lpShrink: { lps: 1, remainingMs: 7200, fault: null } })).to.equal('2 (1 while an LP shrink naming no fault lasts, 8 s more)');
    expect(lpsText({ lps: 2, lpShrink: { lps: 1, remainingMs: 7200, fault: 'unknown' } })).to.equal('2 (1 while fault unknown lasts, 8 s more)');
    expect(lpsText({ lps: 2, lpShrink: null })).to.equal('2');
  });
});
