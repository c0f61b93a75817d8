/**
 * The topology file's checking decoder: a full example decodes to what it says (YAML and JSON
 * alike), defaults fill what is left out, every typo is refused with its line, column and field
 * (all problems at once), and no input, random or mutated, makes it throw anything but
 * TopologyError (seeded fuzz).
 */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { seededRandom } from '@hvlab/protocol';
import { isUtf8 } from 'node:buffer';
import { FIELD_KEY_MAX, fileText, firstNonUtf8, parseTopology, parseDuration, parseRate, parseLoss, TopologyError, type TopologyProblem } from '../src/index.js';

const EXAMPLE = `# a three-host lab
name: lab
hosts:
  h1: { lps: 2, memory: 1G }
  h2: { lps: 1 }
  h3: {}
links:
  - endpoints: [h1, h2]
    delay: 20ms
    jitter: 2ms
    rate: 1gbit
    loss: 0.1%
  - endpoints: [h2, h3]
vms:
  web:
    host: h1
    memory: 64M
    vps: 2
    workload: counter
    processor: { reserve: 10, maximum: 80, weight: 200 }
  db: { host: h2, workload: sleep:50 }
  batch: { host: h3, memory: 32M, workload: idle, ha: true }
switches: {}
`;

function problems(text: string): TopologyProblem[] {
  try {
    parseTopology(text, 'lab.yaml');
  } catch (e) {
    expect(e).to.be.instanceOf(TopologyError);
    return (e as TopologyError).problems;
  }
  throw new Error('the topology was accepted');
}

describe('topology files', () => {
  it('decodes a full example: hosts, links with their impairments, VMs with defaults filled in', () => {
    const t = parseTopology(EXAMPLE, 'lab.yaml');
    expect(t.name).to.equal('lab');
    expect(t.hosts).to.deep.equal([
      { name: 'h1', lps: 2, memoryBytes: 1024 ** 3 },
      { name: 'h2', lps: 1, memoryBytes: null },
      { name: 'h3', lps: null, memoryBytes: null },
    ]);
    expect(t.links).to.deep.equal([
      { a: 'h1', b: 'h2', impairments: { delayMs: 20, jitterMs: 2, rateBps: 1e9, lossPercent: 0.1 } },
      { a: 'h2', b: 'h3', impairments: {} },
    ]);
    expect(t.vms).to.deep.equal([
      { name: 'web', host: 'h1', memoryBytes: 64 * 1024 ** 2, vps: 2, workload: 'counter', processor: { reserve: 10, maximum: 80, weight: 200 }, ha: false },
      { name: 'db', host: 'h2', memoryBytes: 64 * 1024 ** 2, vps: 1, workload: 'sleep:50', processor: { reserve: 0, maximum: 100, weight: 100 }, ha: false },
      { name: 'batch', host: 'h3', memoryBytes: 32 * 1024 ** 2, vps: 1, workload: 'idle', processor: { reserve: 0, maximum: 100, weight: 100 }, ha: true },
    ]);
  });

  it('reads the same topology written as JSON', () => {
    const json = JSON.stringify({
      name: 'lab', hosts: { h1: { lps: 2, memory: '1G' }, h2: { lps: 1 }, h3: {} },
      links: [{ endpoints: ['h1', 'h2'], delay: '20ms', jitter: '2ms', rate: '1gbit', loss: '0.1%' }, { endpoints: ['h2', 'h3'] }],
      vms: {
        web: { host: 'h1', memory: '64M', vps: 2, workload: 'counter', processor: { reserve: 10, maximum: 80, weight: 200 } },
        db: { host: 'h2', workload: 'sleep:50' }, batch: { host: 'h3', memory: '32M', workload: 'idle', ha: true },
      },
      switches: {},
    }, null, 2);
    expect(parseTopology(json, 'lab.json')).to.deep.equal(parseTopology(EXAMPLE));
  });

  it('refuses an unknown field, a VM on an unknown host and a negative delay, naming line, column and field, all at once', () => {
    const text = EXAMPLE.replace('    delay: 20ms', '    delay: -5ms').replace('  db: { host: h2,', '  db: { host: h9,').replace('    vps: 2', '    vsp: 2');
    const ps = problems(text);
    const by = (field: string): TopologyProblem => {
      const p = ps.find((x) => x.field === field);
      if (!p) throw new Error(`no problem for ${field} in ${JSON.stringify(ps)}`);
      return p;
    };
    expect(by('links[0].delay')).to.include({ line: 9, column: 12 });
    expect(by('links[0].delay').message).to.match(/out of range/);
    expect(by('vms.db.host')).to.include({ line: 21 });
    expect(by('vms.db.host').message).to.match(/"h9" is not a host of this cluster \(hosts: h1, h2, h3\)/);
    expect(by('vms.web.vsp')).to.include({ line: 18, column: 5 });
    expect(by('vms.web.vsp').message).to.match(/not a field here/);
    expect(ps).to.have.length(3);
    // The message a user sees names file, line and field.
    try {
      parseTopology(text, 'lab.yaml');
    } catch (e) {
      expect((e as Error).message).to.include('lab.yaml:21:');
      expect((e as Error).message).to.include('vms.db.host:');
    }
  });

  it('refuses what would not work later: bad names, duplicate and self links, missing fields, bad units, a host over its memory budget, reserved sections with content', () => {
    const cases: Array<[string, string, RegExp]> = [
      ['name: lab\nhosts: {}\n', 'hosts', /^is empty: a cluster needs at least one host, e\.g\. hosts: \{ h1: \{\}, h2: \{\} \}$/],
      ['name: lab\nhosts:\n', 'hosts', /^is empty: a cluster needs at least one host/],
      ['name: lab\n', 'hosts', /^is missing: a cluster needs at least one host/],
      ['name: lab\nhosts: 0\n', 'hosts', /^is 0, a number: a topology names each of its hosts, e\.g\. hosts: \{ h1: \{\}, h2: \{\} \} \("hvlab up --hosts N" brings up hosts h1\.\.hN without a file\)$/],
      ['name: lab\nhosts: [h1, h2]\n', 'hosts', /^must name each host with its settings/],
      ['hosts: { h1: {} }\n', 'name', /missing/],
      ['name: "a b"\nhosts: { h1: {} }\n', 'name', /letters, digits/],
      ['name: lab\nhosts: { H1: {} }\n', 'hosts.H1', /lowercase/],
      ['name: lab\nhosts: { averyverylonghostname: {} }\n', 'hosts.averyverylonghostname', /1-10/],
      ['name: lab\nhosts: { h1: { lps: 0 } }\n', 'hosts.h1.lps', /whole number from 1/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h1] }]\n', 'links[0].endpoints', /two different hosts/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h2] }, { endpoints: [h2, h1] }]\n', 'links[1].endpoints', /already linked/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ delay: 5ms }]\n', 'links[0].endpoints', /missing/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h2], rate: 10mbps }]\n', 'links[0].rate', /a rate such as 100mbit/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h2], rate: 0 }]\n', 'links[0].rate', /at least 1 bit\/s/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h2], rate: 5tbit }]\n', 'links[0].rate', /at least 1 bit\/s and at most 1000000000000 bit\/s/],
      ['name: lab\nhosts: { h1: {}, h2: {} }\nlinks: [{ endpoints: [h1, h2], loss: 120% }]\n', 'links[0].loss', /at most 100/],
      ['name: lab\nhosts: { h1: {} }\nvms: { a: { memory: 64M } }\n', 'vms.a.host', /missing/],
      ['name: lab\nhosts: { h1: {} }\nvms: { a: { host: h1, memory: 1K } }\n', 'vms.a.memory', /multiple of 4K from 2M/],
      ['name: lab\nhosts: { h1: {} }\nvms: { a: { host: h1, workload: dance } }\n', 'vms.a.workload', /unknown/],
      ['name: lab\nhosts: { h1: {} }\nvms: { a: { host: h1, processor: { reserve: 50, maximum: 20 } } }\n', 'vms.a.processor', /above maximum/],
      ['name: lab\nhosts: { h1: {} }\nvms: { a: { host: h1, ha: yes } }\n', 'vms.a.ha', /true or false/],
      ['name: lab\nhosts: { h1: { memory: 100M } }\nvms: { a: { host: h1 }, b: { host: h1 } }\n', 'hosts.h1.memory', /need 128M, more than its 100M/],
      ['name: lab\nhosts: { h1: {} }\nswitches: { s1: {} }\n', 'switches', /not supported yet/],
      ['name: lab\nname: lab2\nhosts: { h1: {} }\n', 'name', /twice/],
    ];
    for (const [text, field, re] of cases) {
      const ps = problems(text);
      const p = ps.find((x) => x.field === field);
      expect(p, `${JSON.stringify(text)}: no problem for ${field} in ${JSON.stringify(ps)}`).to.not.equal(undefined);
      expect(p!.message, text).to.match(re);
      expect(p!.line, `${text}: a line`).to.be.greaterThan(0);
    }
  });

  it('names a hosts section that is missing, empty or a count as the one problem, not every link and VM on its hosts after it', () => {
    for (const [hosts, column, message] of [['hosts: 0', 8, /^is 0, a number/], ['hosts:', 7, /^is empty/], ['hosts: {}', 8, /^is empty/]] as const) {
      const ps = problems(`name: lab\n${hosts}\nlinks: [{ endpoints: [h1, h2] }]\nvms: { web: { host: h1 } }\n`);
      expect(ps.map((p) => [p.line, p.column, p.field]), hosts).to.deep.equal([[2, column, 'hosts']]);
      expect(ps[0]!.message, hosts).to.match(message);
    }
  });

  it('names a refused value as written, cut to 40 characters, as experiment and chaos files do (shown): one of 100,000 characters was quoted whole', () => {
    const long = '9'.repeat(100_000);
    const name = 'h'.repeat(100_000);
    const ps = problems(`name: lab\nhosts: { h1: { lps: ${long} }, h2: {} }\nlinks:\n  - { endpoints: [h1, h2], delay: "${long}ms", rate: "${'x'.repeat(100_000)}", loss: ${long} }\n  - { endpoints: [h1, ${name}] }\n`
      + `vms: { a: { host: ${name} }, b: { host: h1, memory: "${long}M" }, c: { host: 7 }, d: { host: [h1] }, e: { host: } }\n`);
    const cut = (t: string): string => `${t.slice(0, 39)}…`;
    expect(ps.map((p) => `${p.field}: ${p.message}`)).to.deep.equal([
      `hosts.h1.lps: must be a whole number from 1 to 256, not ${cut(long)}`,
      `links[0].delay: must be a duration such as 20ms, not ${cut(`"${long}`)}`,
      `links[0].rate: must be a rate such as 100mbit, not ${cut(`"${'x'.repeat(100)}`)}`,
      `links[0].loss: must be a percentage such as 0.1%, not ${cut(long)}`,
      `links[1].endpoints: ${cut(`"${name}`)} is not a host of this cluster (hosts: h1, h2)`,
      `vms.a.host: ${cut(`"${name}`)} is not a host of this cluster (hosts: h1, h2)`,
      `vms.b.memory: must be a size such as 64M or 2G, not ${cut(`"${long}`)}`,
      'vms.c.host: 7 is not a host of this cluster (hosts: h1, h2)',
      'vms.d.host: a list is not a host of this cluster (hosts: h1, h2)',
      'vms.e.host: is empty: every VM names the host it runs on (hosts: h1, h2)',
    ]);
    for (const p of ps) expect(p.line, p.field).to.be.greaterThan(0);
  });

  it('cuts a long key in a problem\'s field path to 64 characters (a valid name stays whole): a host or VM name or an unknown field of 100,000 characters went whole into the path', () => {
    // YAML takes an implicit key of at most 1024 characters; a longer one is written as ? KEY.
    const key = 'k'.repeat(1000);
    const huge = `? ${'k'.repeat(100_000)}\n: 1\n`;
    const cut = `${'k'.repeat(FIELD_KEY_MAX - 1)}…`;
    const fields = (text: string): string[] => problems(text).map((x) => x.field);
    expect(fields(`name: lab\nhosts: { h1: {}, ${key}: {} }\n`)).to.deep.equal([`hosts.${cut}`]);
    expect(fields(`name: lab\nhosts:\n  h1: {}\n  ? ${'k'.repeat(100_000)}\n  : {}\n`)).to.deep.equal([`hosts.${cut}`]);
    expect(fields(`name: lab\nhosts: { h1: {} }\nvms: { ${key}: { host: h1 } }\n`)).to.deep.equal([`vms.${cut}`]);
    expect(fields(`name: lab\nhosts: { h1: { ${key}: 1 } }\n`)).to.deep.equal([`hosts.h1.${cut}`]);
    expect(fields(`name: lab\nhosts: { h1: {} }\n${key}: 1\n`)).to.deep.equal([cut]);
    // A VM name of 63 characters (a valid one) is whole in the path (it was cut at 40).
    const vm = 'v'.repeat(63);
    expect(fields(`name: lab\nhosts: { h1: {} }\nvms: { ${vm}: { host: h1, ${key}: 1 } }\n`)).to.deep.equal([`vms.${vm}.${cut}`]);
  });

  it('refuses what is not a topology at all: not YAML, not a map, too large', () => {
    expect(problems('name: [unclosed\n')[0]!.line).to.be.greaterThan(0);
    expect(problems('- a\n- b\n')[0]!.message).to.match(/is a map/);
    expect(problems('')[0]!.message).to.match(/is a map/);
    expect(problems('x'.repeat(2 * 1024 * 1024))[0]!.message).to.match(/at most/);
  });

  it('the examples in the repository check', () => {
    const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'examples');
    const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f));
    expect(files.length).to.be.greaterThan(0);
    for (const f of files) expect(parseTopology(readFileSync(join(dir, f), 'utf8'), f).hosts.length, f).to.be.greaterThan(0);
  });

  it('reads durations, rates and loss as tc users write them', () => {
    expect([parseDuration('20ms'), parseDuration('1.5s'), parseDuration('250us'), parseDuration('2m'), parseDuration('x')]).to.deep.equal([20, 1500, 0.25, 120000, null]);
    // A bare number has no unit: refused (it was ms, where `vm stop --timeout 5` is seconds), but 0.
    expect([parseDuration('7'), parseDuration(7), parseDuration('0'), parseDuration(0), parseDuration('-5ms')]).to.deep.equal([null, null, 0, 0, -5]);
    expect([parseRate('1gbit'), parseRate('100mbit'), parseRate('64kbit'), parseRate('9600bit'), parseRate('5'), parseRate('1MB')]).to.deep.equal([1e9, 1e8, 64e3, 9600, 5, null]);
    expect([parseLoss('0.1%'), parseLoss(2), parseLoss('3'), parseLoss('x%')]).to.deep.equal([0.1, 2, 3, null]);
  });

  it('never throws anything but TopologyError on random or mutated input (seeded, 3000 cases)', () => {
    const next = seededRandom(0x70b0);
    const alphabet = 'name:hosts:links:vms:h1h2{}[],- \n#"\'0123456789msgbitkM%&*!|>';
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
        parseTopology(text);
        accepted++;
      } catch (e) {
        expect(e, JSON.stringify(text)).to.be.instanceOf(TopologyError);
        expect((e as TopologyError).problems.length).to.be.greaterThan(0);
      }
    }
    expect(accepted, 'some mutations still decode').to.be.greaterThan(0);
  });
});

describe('a file\'s bytes as text (fileText: topology, experiment and chaos files)', () => {
  it('finds the first sequence that is not UTF-8 where the Encoding Standard\'s decoder puts its U+FFFD (seeded, 20,000 cases)', () => {
    const next = seededRandom(0x0f8d);
    // Mostly bytes that make or nearly make sequences: ASCII, leads, continuations, the edges of each range.
    const bytes = [0x41, 0x0a, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff];
    const fatal = new TextDecoder('utf-8', { fatal: true });
    let bad = 0;
    for (let i = 0; i < 20000; i++) {
      const b = Buffer.from(Array.from({ length: Math.floor(next() * 12) }, () => (next() < 0.2 ? Math.floor(next() * 256) : bytes[Math.floor(next() * bytes.length)]!)));
      const at = firstNonUtf8(b);
      expect(at === null, b.toString('hex')).to.equal(isUtf8(b));
      if (at === null) continue;
      bad++;
      // All before it is UTF-8, and the decoder's first U+FFFD stands for the sequence there.
      expect(() => fatal.decode(b.subarray(0, at)), b.toString('hex')).to.not.throw();
      expect(b.toString('utf8').startsWith(`${b.subarray(0, at).toString('utf8')}\ufffd`), `${b.toString('hex')} at ${at}`).to.equal(true);
    }
    expect(bad).to.be.greaterThan(5000);
  });

  it('takes UTF-8 (a BOM too) as the same bytes, and refuses anything else with one problem at the first bad sequence: its line, column and byte offset', () => {
    const good = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('name: lab\r\n# café ✓ 𝄞 \ufffd\n')]);
    expect(Buffer.from(fileText(good) as string, 'utf8').equals(good)).to.equal(true);
    expect(fileText(Buffer.alloc(0))).to.equal('');
    // A Latin-1 "é" (0xE9) twice, after a "✓" (three bytes, one column).
    expect(fileText(Buffer.concat([Buffer.from('name: lab\n# ✓ caf'), Buffer.from('\xe9 et th\xe9\n', 'latin1')]))).to.deep.equal(
      { line: 2, column: 8, field: '', message: 'not UTF-8 text: byte 0xe9 at offset 19 begins no UTF-8 sequence (save the file as UTF-8)' });
    // Offsets count bytes: the ✓ before is three.
    expect((fileText(Buffer.concat([Buffer.from('✓'), Buffer.from([0xff])])) as TopologyProblem).message).to.match(/byte 0xff at offset 3 /);
  });
});
