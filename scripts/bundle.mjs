#!/usr/bin/env node
/**
 * Bundles hvlab's processes from the compiled JavaScript (`tsc -b` first): `pnpm install`,
 * `pnpm build` and `pnpm test` run it after the compiler.
 *
 *   packages/root/dist/bundle/vmwp.mjs                the VM worker process (root/src/vmwp/boot.ts)
 *   packages/root/dist/bundle/compress-worker.js      its page-compression pool's worker
 *   packages/root/dist/bundle/root.mjs                the root partition process (root/src/main.ts)
 *   packages/guest/dist/bundle/partition.mjs          the child partition process (guest/src/boot.ts)
 *   packages/guest/dist/bundle/vp.js                  a VP thread (guest/src/vp.ts)
 *   packages/hypervisor/dist/bundle/hypervisor.mjs    the hypervisor (hypervisor/src/main.ts)
 *   packages/hypervisor/dist/bundle/sched-thread.js   its scheduler thread
 *   packages/cli/dist/bundle/main.mjs                 the `hvlab` command (bin/hvlab.mjs loads it)
 *
 * Why: a VM start is mostly module loading, in three isolates (VMWP, partition, VP thread), and
 * Node's loader spends most of that resolving and reading ~100 files each (realpath, stat, package
 * scopes, URLs): one file per isolate took a cold VMWP + partition from ~876 to ~660 ms of CPU.
 *
 * The VMWP and the partition process are split where their entry (boot.ts) imports the rest
 * (`split`): an entry starts the partition process or the first VP thread, then imports main.ts.
 * In one file, the ES module loader would first load everything the whole bundle imports (zeromq,
 * msgpackr, @hvlab/shm, pino's builtins), ~100 ms of a cold start, before that entry ran. Split,
 * the entry file imports only what it needs, and main.ts and the device classes load as chunks
 * (`vmwp-*.mjs`, `partition-*.mjs` beside the entry; a rebuild keeps the previous build's chunks
 * for ten minutes, for processes that loaded its entry). Measured with time stamps in the processes
 * (5 cold starts each way, twice): the guest booted 493-498 ms after the root spawned the VMWP,
 * median, against 562-568 ms from one file.
 *
 * The workers sit beside their process's bundle under the names the code opens them by
 * (`new URL('./vp.js', import.meta.url)` in guest/src/spare.ts, './compress-worker.js' in
 * root/src/vmwp/compress.ts, './sched-thread.js' in hypervisor/src/server.ts). Native addons
 * (@hvlab/shm, zeromq) and what loads by name at run time (msgpackr, through createRequire;
 * piscina's workers) stay outside, resolved from the bundle's package as before; zeromq, a
 * CommonJS package, is loaded with `require` (EXTERNAL_CJS says why). runtime/src/paths.ts takes
 * a bundle only while it is newer than every package's compiled output, so a `tsc -b` after an
 * edit never runs old code from a bundle.
 *
 * `node scripts/bundle.mjs --check` exits 1 when a bundle is missing or older than the compiled code.
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = (...p) => join(repo, 'packages', ...p);

/** Native addons, and what is loaded by name at run time (createRequire, worker files), stay outside. */
const EXTERNAL = ['@hvlab/shm', 'zeromq', 'msgpackr', 'piscina'];
/**
 * Those of them that are CommonJS packages: the bundle loads them with `require` where the code
 * imports them. An ES module `import` of a CommonJS file makes Node's loader scan its source (and
 * the files it re-exports) for the names it exports (cjs-module-lexer), hot enough that V8
 * optimises the scanner's functions while a VM process starts. Measured here (20 starts each,
 * alternated): `import('zeromq')` cost 39 ms of CPU over a bare start, `require('zeromq')` 25.
 * Every host process, VM process and CLI run loads zeromq. (piscina is CommonJS too; the VMWP
 * loads it with createRequire when a migration first compresses: root/src/vmwp/compress.ts.)
 */
const EXTERNAL_CJS = ['zeromq'];
/** esbuild plugin: an import of an `EXTERNAL_CJS` package becomes a module of the bundle that requires it. */
const requireCjsExternals = {
  name: 'require-cjs-externals',
  setup(build) {
    // The package and its subpaths (`zeromq/v5-compat`): all of them stay outside the bundle.
    const filter = new RegExp(`^(${EXTERNAL_CJS.map((n) => n.replace(/[/.]/g, '\\$&')).join('|')})(/.*)?$`);
    build.onResolve({ filter }, (args) => (args.kind === 'require-call' ? { path: args.path, external: true } : { path: args.path, namespace: 'cjs-external' }));
    build.onLoad({ filter: /.*/, namespace: 'cjs-external' }, (args) => ({ contents: `module.exports = require(${JSON.stringify(args.path)});`, loader: 'js' }));
  },
};
/** Each bundle: its output and its compiled entry. */
const BUNDLES = [
  { out: pkg('root', 'dist', 'bundle', 'vmwp.mjs'), entry: pkg('root', 'dist', 'src', 'vmwp', 'boot.js'), split: true },
  { out: pkg('root', 'dist', 'bundle', 'compress-worker.js'), entry: pkg('root', 'dist', 'src', 'vmwp', 'compress-worker.js') },
  { out: pkg('root', 'dist', 'bundle', 'root.mjs'), entry: pkg('root', 'dist', 'src', 'main.js') },
  { out: pkg('guest', 'dist', 'bundle', 'partition.mjs'), entry: pkg('guest', 'dist', 'src', 'boot.js'), split: true },
  { out: pkg('guest', 'dist', 'bundle', 'vp.js'), entry: pkg('guest', 'dist', 'src', 'vp.js') },
  { out: pkg('hypervisor', 'dist', 'bundle', 'hypervisor.mjs'), entry: pkg('hypervisor', 'dist', 'src', 'main.js') },
  { out: pkg('hypervisor', 'dist', 'bundle', 'sched-thread.js'), entry: pkg('hypervisor', 'dist', 'src', 'sched-thread.js') },
  { out: pkg('cli', 'dist', 'bundle', 'main.mjs'), entry: pkg('cli', 'dist', 'src', 'main.js') },
];

if (process.argv.includes('--check')) {
  // The same test runtime/src/paths.ts makes before it takes a bundle.
  const { newestBuild } = await import(pathToFileURL(pkg('runtime', 'dist', 'src', 'paths.js')).href);
  const built = newestBuild();
  const stale = BUNDLES.filter((b) => !existsSync(b.out) || statSync(b.out).mtimeMs < built);
  for (const b of stale) process.stderr.write(`bundle: ${b.out} is ${existsSync(b.out) ? 'older than the compiled code' : 'missing'}\n`);
  process.exit(stale.length ? 1 : 0);
}

let esbuild;
try {
  esbuild = createRequire(join(repo, 'package.json'))('esbuild');
} catch (e) {
  // Without esbuild the processes run from dist/ as they are: slower to start, nothing else.
  process.stderr.write(`bundle: esbuild is not installed (${e.message.split('\n')[0]}); the VM processes run unbundled\n`);
  process.exit(0);
}

const missing = BUNDLES.filter((b) => !existsSync(b.entry));
if (missing.length) {
  process.stderr.write(`bundle: ${missing.map((b) => b.entry).join(', ')} missing: run "tsc -b" first\n`);
  process.exit(1);
}

const t0 = performance.now();
const dirs = [...new Set(BUNDLES.map((b) => dirname(b.out)))];
// Built beside, then swapped in: a process starting meanwhile finds the old bundle whole.
const staging = (dir) => `${dir}.new-${process.pid}`;
for (const dir of dirs) {
  // What a killed run left beside it goes first.
  for (const f of readdirSync(dirname(dir))) if (f.startsWith(`${basename(dir)}.new-`) || f.startsWith(`${basename(dir)}.old-`)) rmSync(join(dirname(dir), f), { recursive: true, force: true });
  mkdirSync(staging(dir), { recursive: true });
}
try {
  for (const b of BUNDLES) {
    const stem = basename(b.out).replace(/\.[^.]*$/, '');
    const out = join(staging(dirname(b.out)), basename(b.out));
    await esbuild.build({
      ...(b.split
        ? { entryPoints: { [stem]: b.entry }, outdir: dirname(out), outExtension: { '.js': extname(out) }, splitting: true, chunkNames: `${stem}-[name]-[hash]` }
        : { entryPoints: [b.entry], outfile: out }),
      bundle: true, platform: 'node', format: 'esm', target: 'node20',
      external: EXTERNAL.filter((n) => !EXTERNAL_CJS.includes(n)), plugins: [requireCjsExternals], logLevel: 'warning',
      // Code that calls require() (CommonJS dependencies inside the bundle) gets one.
      banner: { js: "import { createRequire as __hvlabCreateRequire } from 'node:module'; const require = __hvlabCreateRequire(import.meta.url);" },
    });
  }
} catch (e) {
  // All or none: a process bundle without its worker's bundle beside it would start threads that
  // are not there. Without bundles every process runs from dist/, as it did before them.
  for (const dir of dirs) {
    rmSync(staging(dir), { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
  process.stderr.write(`bundle: failed (${String(e?.message ?? e).split('\n')[0]}); the processes run unbundled\n`);
  process.exit(0);
}
for (const dir of dirs) {
  // A split bundle's entry imports its chunks after it has started: a process that loaded the
  // previous entry may still ask for the previous chunks (other hashes). Those of the last ten
  // minutes stay one more build; older ones go.
  for (const f of existsSync(dir) ? readdirSync(dir) : []) {
    const was = join(dir, f);
    if (/-[A-Z0-9]{8}\.m?js$/.test(f) && !existsSync(join(staging(dir), f)) && Date.now() - statSync(was).mtimeMs < 10 * 60_000) renameSync(was, join(staging(dir), f));
  }
  const old = `${dir}.old-${process.pid}`;
  if (existsSync(dir)) renameSync(dir, old);
  renameSync(staging(dir), dir);
  rmSync(old, { recursive: true, force: true });
}
process.stderr.write(`bundle: ${BUNDLES.length} bundles in ${Math.round(performance.now() - t0)} ms\n`);
