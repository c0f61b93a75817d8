#!/usr/bin/env node
/**
 * `pnpm test` (after the build): the whole suite as two mocha processes at once, the end-to-end
 * files (test/, real hosts, mostly waiting on their processes) and the packages' own tests
 * (packages/<name>/test/, mostly CPU), so that the second fills the first's waits. One after the
 * other they took ~24 minutes on 2 cores, of the 30 the suite may take.
 *
 * The end-to-end run prints as it goes; the packages' run is kept and printed once it ends (two
 * runs interleaved line by line could not be read), then a total: "N passing (T)" and, if any
 * failed, "N failing", the last such lines, which .ci/run reads. The exit status is the first
 * non-zero of the two. Extra arguments go to both runs (e.g. `-g PATTERN`).
 *
 * The packages' run is niced (5): it takes the CPU the end-to-end run leaves.
 *
 * A Ctrl-C or SIGTERM goes to both runs (each takes down what its tests started:
 * test/signal-sweep.ts); this process exits once both have.
 *
 * HVLAB_TEST_SERIAL=1 runs them one after the other instead (the packages' tests first), as `mocha`
 * with .mocharc.json does.
 */
import { spawn, spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const mocha = join(repo, 'node_modules', 'mocha', 'bin', 'mocha.js');
const extra = process.argv.slice(2);

/** The options of .mocharc.json but its spec, given on the command line (a config's spec is added to the command line's). */
const COMMON = ['--no-config', '--node-option', 'import=tsx', '--node-option', 'conditions=hvlab-source', '--extension', 'ts', '--forbid-only', '--timeout', '60000', '--exit', '--require', 'test/signal-sweep.ts'];
const RUNS = [
  { name: 'end-to-end', spec: ['test/**/*.test.ts'], live: true },
  { name: 'packages', spec: ['packages/*/test/**/*.test.ts'], live: false, nice: 5 },
];

const started = Date.now();
const serial = process.env.HVLAB_TEST_SERIAL === '1';
const niceAvailable = spawnSync('nice', ['-n', '1', 'true']).status === 0;
const children = new Set();

function run(r, live) {
  return new Promise((resolveRun) => {
    const argv = [mocha, ...COMMON, ...extra, ...r.spec];
    // The packages' run at a lower priority: it takes the CPU the end-to-end run leaves, and slows
    // that run's processes (their starts are CPU-bound on 2 cores) less than an equal share would.
    const [cmd, args] = r.nice && !serial && niceAvailable ? ['nice', ['-n', String(r.nice), process.execPath, ...argv]] : [process.execPath, argv];
    const child = spawn(cmd, args, { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: process.env.FORCE_COLOR ?? (process.stdout.isTTY ? '1' : '0') } });
    children.add(child);
    const kept = [];
    const take = (to) => (d) => {
      kept.push(d);
      if (live) to.write(d);
    };
    child.stdout.on('data', take(process.stdout));
    child.stderr.on('data', take(process.stderr));
    child.on('error', (e) => {
      children.delete(child);
      resolveRun({ r, live, code: 1, out: `${r.name}: mocha did not start: ${e.message}\n` });
    });
    child.on('close', (code, signal) => {
      children.delete(child);
      resolveRun({ r, live, code: code ?? (signal ? 1 : 0), out: Buffer.concat(kept).toString('utf8') });
    });
  });
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const c of children) c.kill(sig);
  });
}

/** The last "N passing", "N failing" and "N pending" of one run's output, 0 where absent. */
function counts(text) {
  // eslint-disable-next-line no-control-regex
  const plain = text.replace(/\u001b\[[0-9;]*m/g, '');
  const last = (re) => {
    const all = [...plain.matchAll(re)];
    return all.length > 0 ? Number(all[all.length - 1][1]) : 0;
  };
  return { passing: last(/^ *(\d+) passing/gm), failing: last(/^ *(\d+) failing/gm), pending: last(/^ *(\d+) pending/gm) };
}

let results;
if (serial) {
  results = [];
  for (const r of [RUNS[1], RUNS[0]]) results.push(await run(r, true));
} else {
  results = await Promise.all(RUNS.map((r) => run(r, r.live)));
}

let passing = 0;
let failing = 0;
let pending = 0;
for (const res of results) {
  if (!res.live) process.stdout.write(`\n==== ${res.r.name} (${res.r.spec.join(' ')}), run beside the above ====\n${res.out}`);
  const c = counts(res.out);
  passing += c.passing;
  failing += c.failing;
  pending += c.pending;
  // A run that failed with no failing test (it did not load, or crashed) counts as one failure.
  if (res.code !== 0 && c.failing === 0) failing += 1;
}
const mins = Math.round((Date.now() - started) / 60000);
process.stdout.write(`\n==== the whole suite (${results.map((x) => `${x.r.name}: ${counts(x.out).passing} passing`).join(', ')}) ====\n`);
process.stdout.write(`  ${passing} passing (${mins}m)\n`);
if (pending > 0) process.stdout.write(`  ${pending} pending\n`);
if (failing > 0) process.stdout.write(`  ${failing} failing\n`);
process.exitCode = results.find((x) => x.code !== 0)?.code ?? 0;
