#!/usr/bin/env node
// The `hvlab` command, in this one process: it imports the compiled CLI (dist/, built by
// `pnpm install`) and runs it, from its bundle (scripts/bundle.mjs: one file to load instead of a
// hundred) while that is newer than every package's compiled output. If the build is missing (a
// checkout whose install skipped scripts), the first call builds it once with the TypeScript
// compiler the repository installed, and bundles it. With
// HVLAB_FROM_SOURCE=1 it registers tsx in-process and runs the TypeScript sources instead (for
// development; the processes it starts then run from sources too). Paths are resolved from this
// file, not from the current directory, so the command works from anywhere, also through a
// symlink on PATH (Node runs the symlink's target, so import.meta.url is here).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** One line on stderr (JSON with --json, as the CLI's own failures; the stack too with HVLAB_DEBUG=1), then exit 1. */
function fail(what, e) {
  const message = `${what}: ${String(e?.message ?? e).split('\n')[0]}`;
  const args = process.argv.slice(2);
  const json = (args.includes('--') ? args.slice(0, args.indexOf('--')) : args).some((t) => t === '--json' || t.startsWith('--json='));
  process.stderr.write(json ? `${JSON.stringify({ error: { message, kind: 'internal', exitCode: 1 } })}\n` : `hvlab: ${message}\n`);
  if (process.env.HVLAB_DEBUG === '1' && e?.stack) process.stderr.write(`${e.stack}\n`);
  process.exit(1);
}

/**
 * Ctrl-C (or SIGTERM) while the CLI loads, before its own handlers are in place (its first ~0.2 s):
 * nothing has been asked of any host yet. Said, as every other interrupted command says what
 * became of it; it ended without a word.
 */
let started = false;
function interruptedEarly() {
  // Once the CLI runs, its own handlers say what became of the command. This one stays listening
  // (removing the last listener and adding main's lost a Ctrl-C that came around then: the host
  // came up and the command ended 0).
  if (started) return;
  const message = 'interrupted while hvlab was starting: nothing was done';
  const args = process.argv.slice(2);
  const json = (args.includes('--') ? args.slice(0, args.indexOf('--')) : args).some((t) => t === '--json' || t.startsWith('--json='));
  process.stderr.write(json ? `${JSON.stringify({ error: { message, kind: 'interrupted', exitCode: 130 } })}\n` : `hvlab: ${message}\n`);
  process.exit(130);
}
process.on('SIGINT', interruptedEarly);
process.on('SIGTERM', interruptedEarly);

const here = (rel) => fileURLToPath(new URL(rel, import.meta.url));
let entry;
if (process.env.HVLAB_FROM_SOURCE === '1') {
  try {
    const { register } = await import(import.meta.resolve('tsx/esm/api'));
    // The CLI's own tsconfig, so the transform does not depend on the current directory either.
    register({ tsconfig: here('../tsconfig.json') });
  } catch (e) {
    fail(`cannot load tsx from ${here('.')} (run "pnpm install" in the repository)`, e);
  }
  entry = here('../src/main.ts');
} else {
  entry = here('../dist/src/main.js');
  if (!existsSync(entry)) {
    const repo = here('../../..');
    process.stderr.write(`hvlab: building (first run; "pnpm install" does this) in ${repo}\n`);
    const tsc = here('../../../node_modules/typescript/bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '-b'], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0 || !existsSync(entry)) fail('the build failed', new Error(`tsc -b in ${repo} exited with ${r.status ?? r.signal}`));
    // Bundles are a speed-up only: without them every process runs from dist/.
    spawnSync(process.execPath, [here('../../../scripts/bundle.mjs')], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  // The bundle while it is newer than every package's compiled output (runtime/src/paths.ts:
  // paths.js imports nothing but Node's own modules and code-cache-status.js, which imports nothing).
  if (process.env.HVLAB_BUNDLES !== 'off') {
    const { newestBuild, pickEntry } = await import(pathToFileURL(here('../../runtime/dist/src/paths.js')).href);
    entry = pickEntry(entry, here('../dist/bundle/main.mjs'), newestBuild());
  }
}

let main;
try {
  ({ main } = await import(pathToFileURL(entry).href));
} catch (e) {
  fail(`cannot load the CLI from ${entry}`, e);
}
// The CLI's own handlers from here (main installs them first thing, before it awaits anything).
started = true;
await main(process.argv.slice(2));
