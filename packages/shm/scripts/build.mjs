// Builds the shm addon with node-gyp, offline: when the running Node's prefix ships its headers
// (include/node/node.h), node-gyp is pointed at them instead of downloading a tarball.
// A failed build is not fatal: hvlab then runs on process-private memory and says so.
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const statusFile = join(here, 'build-status.json');
rmSync(statusFile, { force: true });
const prefix = dirname(dirname(process.execPath));
const args = ['rebuild'];
if (existsSync(join(prefix, 'include', 'node', 'node.h'))) args.push(`--nodedir=${prefix}`);
let gyp;
try {
  gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
} catch {
  gyp = null;
}
let ok = false;
let reason = '';
if (gyp === null) {
  reason = 'node-gyp is not installed';
} else {
  const r = spawnSync(process.execPath, [gyp, ...args], { cwd: here, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  ok = r.status === 0 && existsSync(join(here, 'build', 'Release', 'hvlab_shm.node'));
  if (!ok) reason = `node-gyp ${args.join(' ')} exited ${r.status}: ${(r.stderr || r.stdout || '').trim().split('\n').slice(-5).join(' | ')}`;
}
writeFileSync(statusFile, JSON.stringify({ ok, reason, nodedir: args[1] ?? null }, null, 2) + '\n');
if (ok) console.log('@hvlab/shm: native addon built');
else console.warn(`@hvlab/shm: native addon NOT built (${reason}); hvlab will use process-private memory`);
