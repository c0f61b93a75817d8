/**
 * `pnpm bench <name> [args]`: runs one benchmark. The first positional argument names it; the
 * remaining arguments (e.g. --json) go to the benchmark's `main`.
 */
type BenchMain = (args: string[]) => Promise<void>;

const benchmarks: Record<string, () => Promise<{ main: BenchMain }>> = {
  hypercall: () => import('./hypercall.js'),
  vmbus: () => import('./vmbus.js'),
  sched: () => import('./sched.js'),
};

const usage = `usage: pnpm bench <${Object.keys(benchmarks).join('|')}> [--json]`;

async function dispatch(argv: string[]): Promise<number> {
  const idx = argv.findIndex((a) => !a.startsWith('-'));
  const name = idx < 0 ? undefined : argv[idx];
  if (name === undefined || !Object.hasOwn(benchmarks, name)) {
    if (name !== undefined) process.stderr.write(`unknown benchmark "${name}"\n`);
    process.stderr.write(`${usage}\navailable benchmarks: ${Object.keys(benchmarks).join(', ')}\n`);
    return 2;
  }
  const rest = argv.filter((_, i) => i !== idx);
  const mod = await benchmarks[name]!();
  await mod.main(rest);
  return 0;
}

dispatch(process.argv.slice(2)).then(
  (code) => process.exit(code !== 0 ? code : Number(process.exitCode ?? 0)),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
