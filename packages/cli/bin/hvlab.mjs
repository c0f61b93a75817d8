#!/usr/bin/env node
// The `hvlab` command, in this one process: tsx's loader is registered in-process and the
// TypeScript CLI is imported. tsx is resolved from this file's location, not from the current
// directory (which `node --import tsx` would use), so the command works from anywhere, also when
// reached through a symlink on PATH (Node runs the symlink's target, so import.meta.url is here).
import { fileURLToPath } from 'node:url';

/** One line on stderr (the stack too with HVLAB_DEBUG=1), then exit 1. */
function fail(what, e) {
  process.stderr.write(`hvlab: ${what}: ${String(e?.message ?? e).split('\n')[0]}\n`);
  if (process.env.HVLAB_DEBUG === '1' && e?.stack) process.stderr.write(`${e.stack}\n`);
  process.exit(1);
}

let main;
try {
  const { register } = await import(import.meta.resolve('tsx/esm/api'));
  // The CLI's own tsconfig, so the transform does not depend on the current directory either.
  register({ tsconfig: fileURLToPath(new URL('../tsconfig.json', import.meta.url)) });
} catch (e) {
  fail(`cannot load tsx from ${fileURLToPath(new URL('.', import.meta.url))} (run "pnpm install" in the repository)`, e);
}
try {
  ({ main } = await import(new URL('../src/main.ts', import.meta.url).href));
} catch (e) {
  fail(`cannot load the CLI from ${fileURLToPath(new URL('../src/main.ts', import.meta.url))}`, e);
}
await main(process.argv.slice(2));
