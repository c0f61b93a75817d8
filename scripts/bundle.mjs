#!/usr/bin/env node
/**
 * Bundles hvlab's processes from the compiled JavaScript (`tsc -b` first): `pnpm install`,
 * `pnpm build` and `pnpm test` run it after the compiler.
 *
 *   packages/root/dist/bundle/vmwp.cjs                the VM worker process (root/src/vmwp/boot.ts):
 *                                                     a launcher; vmwp.bundle.cjs and its .cache beside it
 *   packages/root/dist/bundle/compress-worker.js      its page-compression pool's worker
 *   packages/root/dist/bundle/root.mjs                the root partition process (root/src/main.ts)
 *   packages/guest/dist/bundle/partition.cjs          the child partition process (guest/src/boot.ts),
 *                                                     as vmwp.cjs: partition.bundle.cjs and its cache
 *   packages/guest/dist/bundle/vp.cjs                 a VP thread (guest/src/vp.ts): vp.bundle.cjs and its cache
 *   packages/hypervisor/dist/bundle/hypervisor.mjs    the hypervisor (hypervisor/src/main.ts)
 *   packages/hypervisor/dist/bundle/sched-thread.js   its scheduler thread
 *   packages/cli/dist/bundle/main.mjs                 the `hvlab` command (bin/hvlab.mjs loads it)
 *
 * Why: a VM start is mostly module loading, in three isolates (VMWP, partition, VP thread), and
 * Node's loader spends most of that resolving and reading ~100 files each (realpath, stat, package
 * scopes, URLs): one file per isolate took a cold VMWP + partition from ~876 to ~660 ms of CPU.
 *
 * The processes there are one or two of per VM (the VMWP, the partition process, its VP threads)
 * run from V8's code cache (`cached`): each is a CommonJS file (`vmwp.bundle.cjs`,
 * `partition.bundle.cjs`, `vp.bundle.cjs`) with its cache beside it (`*.cache`, made here, every
 * function compiled to bytecode), started through a small CommonJS launcher (`vmwp.cjs`,
 * `partition.cjs`, `vp.cjs`). A cold VM start compiled ~400 ms of JavaScript in its
 * processes before; runtime/src/code-cache.ts says how and why. A CommonJS bundle initialises a
 * module reached only through `import()` when the import runs, so an entry (boot.ts) still starts
 * the partition process or the first VP thread before the rest of its code runs.
 *
 * The workers sit beside their process's bundle under the names the code opens them by
 * (`VP_THREAD_ENTRY` in guest/src/spare.ts, './compress-worker.js' in
 * root/src/vmwp/compress.ts, './sched-thread.js' in hypervisor/src/server.ts). In the ES module
 * bundles, native addons (@hvlab/shm, zeromq) and what loads by name at run time (msgpackr,
 * through createRequire; piscina's workers) stay outside, resolved from the bundle's package as
 * before (the cached bundles carry @hvlab/shm's JavaScript and msgpackr: CACHED_EXTERNAL); zeromq, a
 * CommonJS package, is loaded with `require` (EXTERNAL_CJS says why). runtime/src/paths.ts takes
 * a bundle only while it is newer than every package's compiled output, so a `tsc -b` after an
 * edit never runs old code from a bundle.
 *
 * `node scripts/bundle.mjs --check` exits 1 when a bundle is missing or older than the compiled code.
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
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
/**
 * Each bundle: its output and its compiled entry. `cached`: a CommonJS bundle (`bundleOf(out)`)
 * run from V8's code cache by a CommonJS launcher at `out` (above). Its cache is made under the
 * Node flags of a VM's processes: V8 refuses a cache made under other flags. Everything such a
 * bundle loads is CommonJS (what is outside it: zeromq, piscina; `@hvlab/shm` and msgpackr are in
 * it), so its process never starts Node's ES module loader: ~20 ms of each VM process's start
 * (the launcher, and `@hvlab/shm` compiled from source, went through it as ES modules).
 *
 * Only the VM processes are cached. The hypervisor and the root were tried too (cached, CommonJS,
 * alternated with the build before, 8 `up --spare 0` each way): `up` took 518-595 ms against
 * 493-629, the hypervisor 230-270 ms of CPU against 220-340, the root 130-170 against 140-190:
 * no difference, so they stay ES module bundles. The CLI was tried (alternated, 12 calls each,
 * `vm list`): an eager cache of 1.2 MB took as long to deserialize as a call compiles lazily
 * (223-233 ms of CPU a call, 228-238 without a cache, 210-221 with a top-level-only cache: within
 * the noise).
 */
const BUNDLES = [
  { out: pkg('root', 'dist', 'bundle', 'vmwp.cjs'), entry: pkg('root', 'dist', 'src', 'vmwp', 'boot.js'), cached: true },
  { out: pkg('root', 'dist', 'bundle', 'compress-worker.js'), entry: pkg('root', 'dist', 'src', 'vmwp', 'compress-worker.js') },
  { out: pkg('root', 'dist', 'bundle', 'root.mjs'), entry: pkg('root', 'dist', 'src', 'main.js') },
  { out: pkg('guest', 'dist', 'bundle', 'partition.cjs'), entry: pkg('guest', 'dist', 'src', 'boot.js'), cached: true },
  { out: pkg('guest', 'dist', 'bundle', 'vp.cjs'), entry: pkg('guest', 'dist', 'src', 'vp.js'), cached: true },
  { out: pkg('hypervisor', 'dist', 'bundle', 'hypervisor.mjs'), entry: pkg('hypervisor', 'dist', 'src', 'main.js') },
  { out: pkg('hypervisor', 'dist', 'bundle', 'sched-thread.js'), entry: pkg('hypervisor', 'dist', 'src', 'sched-thread.js') },
  { out: pkg('cli', 'dist', 'bundle', 'main.mjs'), entry: pkg('cli', 'dist', 'src', 'main.js') },
];
/**
 * In a cached bundle, msgpackr is part of the bundle, so its code comes from the cache too (it was
 * compiled from source in every process: ~15-20 ms of a VM process's start). The sources load it
 * with `createRequire(...)('msgpackr')` (protocol/src/wire.ts and runtime/src/paths.ts say why),
 * which esbuild cannot follow; in a CommonJS bundle a plain `require("msgpackr")` does the same,
 * so the call is rewritten to that, and esbuild bundles msgpackr's CommonJS build, as Node
 * would have loaded it. The environment switch above the call in wire.ts stays above it: a
 * `require` is not hoisted. msgpackr's native extractor stays outside (that switch turns it off).
 */
const MSGPACKR_LOAD = /createRequire\([^()]*\)\((['"])msgpackr\1\)/g;
const bundleMsgpackr = {
  name: 'bundle-msgpackr',
  setup(build) {
    build.onLoad({ filter: /[\\/]dist[\\/]src[\\/](wire|paths)\.js$/ }, (args) => {
      const src = readFileSync(args.path, 'utf8');
      const out = src.replace(MSGPACKR_LOAD, 'require("msgpackr")');
      if (out === src) throw new Error(`${args.path}: no createRequire(...)('msgpackr') to rewrite (see bundleMsgpackr)`);
      return { contents: out, loader: 'js' };
    });
  },
};
/**
 * What stays outside a cached bundle: the CommonJS packages with native addons or workers of their
 * own (zeromq, piscina) and msgpackr's native extractor. msgpackr is in it (bundleMsgpackr), and so
 * is `@hvlab/shm`'s JavaScript (its addon stays a file: shm finds its package through the resolver).
 */
const CACHED_EXTERNAL = ['zeromq', 'piscina', 'msgpackr-extract'];

/**
 * Makes a bundle ASCII, so V8 holds its source as a one-byte string (code-cache.ts, readBundle;
 * Node's loader reads a module's file the same way):
 * esbuild escapes every other character in the code it prints (its default charset), but copies
 * the comments it keeps as they are, and one "µ" in a comment made the whole source two-byte.
 * What is left after esbuild is in comments, where an escape is as readable.
 */
function asciiOnly(file) {
  const src = readFileSync(file, 'utf8');
  const ascii = src.replace(/[^\x00-\x7f]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
  if (ascii !== src) writeFileSync(file, ascii);
}
/** The CommonJS bundle of a cached bundle's launcher: `vmwp.cjs` runs `vmwp.bundle.cjs`. */
const bundleOf = (out) => out.replace(/\.cjs$/, '.bundle.cjs');
const CODE_CACHE_JS = pkg('runtime', 'dist', 'src', 'code-cache.js');

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

const missing = [...BUNDLES.map((b) => b.entry), CODE_CACHE_JS].filter((f) => !existsSync(f));
if (missing.length) {
  process.stderr.write(`bundle: ${missing.join(', ')} missing: run "tsc -b" first\n`);
  process.exit(1);
}
/** The name the code-cache runner gives `import.meta.url` in a bundle's wrapper. */
const { BUNDLE_IMPORT_META_URL } = await import(pathToFileURL(CODE_CACHE_JS).href);

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
    const out = join(staging(dirname(b.out)), basename(b.out));
    if (b.cached) {
      await esbuild.build({
        entryPoints: [b.entry], outfile: bundleOf(out), bundle: true, platform: 'node', format: 'cjs', target: 'node20', external: CACHED_EXTERNAL,
        plugins: [bundleMsgpackr], logLevel: 'warning',
        // The launcher's URL stands where the sources say `import.meta.url` (code-cache.ts).
        define: { 'import.meta.url': BUNDLE_IMPORT_META_URL },
        // paths.ts's `import.meta.resolve` serves processes run from sources (tsx) only, never a bundle.
        logOverride: { 'empty-import-meta': 'silent' },
      });
      asciiOnly(bundleOf(out));
      // The launcher: the code-cache runner and the call, CommonJS too.
      await esbuild.build({
        stdin: {
          contents: `// Runs ${basename(bundleOf(out))} from V8's code cache (scripts/bundle.mjs, runtime/src/code-cache.ts).\n`
            + `import { pathToFileURL } from 'node:url';\n`
            + `import { runCachedBundle } from ${JSON.stringify(CODE_CACHE_JS)};\n`
            + `const self = pathToFileURL(__filename);\n`
            + `runCachedBundle(new URL(${JSON.stringify(`./${basename(bundleOf(out))}`)}, self), self.href);\n`,
          resolveDir: dirname(b.entry), sourcefile: basename(out), loader: 'js',
        },
        outfile: out, bundle: true, platform: 'node', format: 'cjs', target: 'node20', logLevel: 'warning',
      });
      continue;
    }
    await esbuild.build({
      entryPoints: [b.entry], outfile: out,
      bundle: true, platform: 'node', format: 'esm', target: 'node20',
      external: EXTERNAL.filter((n) => !EXTERNAL_CJS.includes(n)), plugins: [requireCjsExternals], logLevel: 'warning',
      // Code that calls require() (CommonJS dependencies inside the bundle) gets one.
      banner: { js: "import { createRequire as __hvlabCreateRequire } from 'node:module'; const require = __hvlabCreateRequire(import.meta.url);" },
    });
    asciiOnly(out);
  }
  // The code caches, made in a fresh Node with the flags the VM processes run with: V8 refuses a
  // cache made under other flags. A cache that cannot be made is left out: its bundle compiles as
  // it runs, as before caches (the process says `absent`).
  const cached = BUNDLES.filter((b) => b.cached).map((b) => bundleOf(join(staging(dirname(b.out)), basename(b.out))));
  const { VM_PROCESS_NODE_FLAGS } = await import(pathToFileURL(pkg('runtime', 'dist', 'src', 'paths.js')).href);
  const maker = `import { makeCodeCache } from ${JSON.stringify(pathToFileURL(CODE_CACHE_JS).href)}; for (const f of process.argv.slice(1)) makeCodeCache(f);`;
  const r = spawnSync(process.execPath, [...VM_PROCESS_NODE_FLAGS, '--input-type=module', '-e', maker, ...cached], { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) {
    for (const f of cached) rmSync(`${f}.cache`, { force: true });
    process.stderr.write(`bundle: the code caches could not be made (${(r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').pop()}); those processes compile as they run\n`);
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
  const old = `${dir}.old-${process.pid}`;
  if (existsSync(dir)) renameSync(dir, old);
  renameSync(staging(dir), dir);
  rmSync(old, { recursive: true, force: true });
}
process.stderr.write(`bundle: ${BUNDLES.length} bundles in ${Math.round(performance.now() - t0)} ms\n`);
