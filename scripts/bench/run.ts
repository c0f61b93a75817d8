/**
 * `pnpm bench <name> [args]`: runs one benchmark. The first positional argument names it; the
 * remaining arguments (e.g. --json, --quick) go to the benchmark's `main`. Every benchmark takes
 * --quick (or HVLAB_BENCH_QUICK=1): the same code path with few iterations, which
 * test/bench.test.ts runs for each one. Exit code 0 only when the benchmark finished and left
 * nothing behind.
 */
type BenchMain = (args: string[]) => Promise<void>;

/** Every benchmark; test/bench.test.ts runs each one's quick mode and checks this list against its own. */
const benchmarks: Record<string, () => Promise<{ main: BenchMain }>> = {
  hypercall: () => import('./hypercall.js'),
  vmbus: () => import('./vmbus.js'),
  sched: () => import('./sched.js'),
  host: () => import('./host.js'),
  cluster: () => import('./cluster.js'),
  migrate: () => import('./migrate.js'),
  faults: () => import('./faults.js'),
};

const usage = `usage: pnpm bench <${Object.keys(benchmarks).join('|')}> [--json] [--quick]`;

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
