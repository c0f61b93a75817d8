/**
 * Where a live migration's blackout went, thread by thread: lays a scheduler trace beside the
 * blackout instants the source VMWP logs (`blackout instants`, CLOCK_MONOTONIC ns, the clock every
 * host of a cluster shares) and reports, for each blackout, how long each thread ran on a CPU and
 * how long it was runnable but waited for one, and how long the CPUs sat idle, in its two parts:
 * the source's (freeze to the state sent) and the destination's (sent to its first dispatch of a VP).
 *
 *   perf sched record -k CLOCK_MONOTONIC -o sched.data -- sleep 20 &   # while moves run
 *   perf sched timehist -i sched.data > timehist.txt
 *   node --import tsx scripts/blackout-timeline.ts timehist.txt HVLAB_HOME [--top N]
 *
 * Both inputs are read through checking decoders: a line that is not a record is skipped, never
 * trusted (a log line's instants must be ordered numbers; a trace line must have its six columns).
 * The idle CPUs (`<idle>`) count as idle time, not as a thread.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** One line of `perf sched timehist`: a thread ran on `cpu` until `endS` (s), for `runMs` after waiting `schedDelayMs` runnable. */
export interface SwitchRecord {
  endS: number;
  cpu: number;
  task: string;
  waitMs: number;
  schedDelayMs: number;
  runMs: number;
}

/** A blackout as the source VMWP logged it (ns on CLOCK_MONOTONIC); `ranAtNs` null when the destination gave none. */
export interface BlackoutInstants {
  vm: string;
  host: string;
  blackoutNs: number;
  sentNs: number;
  ranAtNs: number | null;
  heardNs: number;
}

const TIMEHIST_LINE = /^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(\S(?:.*\S)?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s*$/;

/** The switch records of `perf sched timehist` output (header, wake-up and malformed lines skipped). */
export function parseTimehist(text: string): SwitchRecord[] {
  const out: SwitchRecord[] = [];
  for (const line of text.split('\n')) {
    const m = TIMEHIST_LINE.exec(line);
    if (!m) continue;
    const [endS, cpu, waitMs, schedDelayMs, runMs] = [Number(m[1]), Number(m[2]), Number(m[4]), Number(m[5]), Number(m[6])];
    if (![endS, cpu, waitMs, schedDelayMs, runMs].every(Number.isFinite) || !Number.isSafeInteger(cpu)) continue;
    out.push({ endS, cpu, task: m[3]!.slice(0, 80), waitMs, schedDelayMs, runMs });
  }
  return out;
}

function instant(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : null;
}

/** The blackout instants in a VMWP log's text (pino JSON lines); lines that are not such a record, or whose instants are out of order, are skipped. */
export function parseBlackouts(text: string): BlackoutInstants[] {
  const out: BlackoutInstants[] = [];
  for (const line of text.split('\n')) {
    if (!line.includes('blackout instants')) continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue;
    }
    if (v === null || typeof v !== 'object') continue;
    const r = v as Record<string, unknown>;
    const [blackoutNs, sentNs, heardNs] = [instant(r.blackoutNs), instant(r.sentNs), instant(r.heardNs)];
    const ranAtNs = r.ranAtNs === null ? null : instant(r.ranAtNs);
    if (blackoutNs === null || sentNs === null || heardNs === null || (r.ranAtNs !== null && ranAtNs === null)) continue;
    if (!(blackoutNs <= sentNs && sentNs <= heardNs) || (ranAtNs !== null && !(sentNs <= ranAtNs && ranAtNs <= heardNs))) continue;
    const text = (x: unknown): string => (typeof x === 'string' ? x.slice(0, 64) : '?');
    out.push({ vm: text(r.vm), host: text(r.host), blackoutNs, sentNs, ranAtNs, heardNs });
  }
  return out;
}

/** Per thread: ms on a CPU and ms runnable without one, within [fromNs, toNs]; and the CPUs' idle ms there. */
export interface WindowUse {
  ms: number;
  idleMs: number;
  tasks: Map<string, { runMs: number; waitMs: number }>;
}

function overlapMs(a0: number, a1: number, b0: number, b1: number): number {
  return Math.max(0, Math.min(a1, b1) - Math.max(a0, b0)) / 1e6;
}

/** What the threads of `records` did within [fromNs, toNs] (a record's run is [end - run, end]; its wait for a CPU just before that). */
export function useWithin(records: readonly SwitchRecord[], fromNs: number, toNs: number): WindowUse {
  const tasks = new Map<string, { runMs: number; waitMs: number }>();
  let idleMs = 0;
  for (const r of records) {
    const endNs = r.endS * 1e9;
    const runFrom = endNs - r.runMs * 1e6;
    const waitFrom = runFrom - r.schedDelayMs * 1e6;
    if (endNs < fromNs || waitFrom > toNs) continue;
    const run = overlapMs(runFrom, endNs, fromNs, toNs);
    if (r.task === '<idle>') {
      idleMs += run;
      continue;
    }
    const wait = overlapMs(waitFrom, runFrom, fromNs, toNs);
    if (run === 0 && wait === 0) continue;
    const t = tasks.get(r.task) ?? { runMs: 0, waitMs: 0 };
    t.runMs += run;
    t.waitMs += wait;
    tasks.set(r.task, t);
  }
  return { ms: (toNs - fromNs) / 1e6, idleMs, tasks };
}

function report(name: string, u: WindowUse, top: number): string[] {
  const rows = [...u.tasks.entries()].sort((a, b) => b[1].runMs + b[1].waitMs - (a[1].runMs + a[1].waitMs)).slice(0, top);
  const busy = [...u.tasks.values()].reduce((s, t) => s + t.runMs, 0);
  const waiting = [...u.tasks.values()].reduce((s, t) => s + t.waitMs, 0);
  const lines = [`  ${name}: ${u.ms.toFixed(2)} ms; threads ran ${busy.toFixed(2)} CPU-ms, waited runnable ${waiting.toFixed(2)} ms; CPUs idle ${u.idleMs.toFixed(2)} ms`];
  for (const [task, t] of rows) lines.push(`    ${task.padEnd(36)} ran ${t.runMs.toFixed(2).padStart(6)}  waited ${t.waitMs.toFixed(2).padStart(6)}`);
  return lines;
}

/** The report for every blackout of `blackouts` that the trace covers. */
export function timeline(records: readonly SwitchRecord[], blackouts: readonly BlackoutInstants[], top = 8): string {
  if (records.length === 0) return 'the scheduler trace holds no switch records (perf sched timehist output is expected)';
  const first = records[0]!.endS * 1e9;
  const last = records[records.length - 1]!.endS * 1e9;
  const covered = blackouts.filter((b) => b.blackoutNs >= first && (b.ranAtNs ?? b.heardNs) <= last).sort((a, b) => a.blackoutNs - b.blackoutNs);
  if (covered.length === 0) return `none of the ${blackouts.length} logged blackouts lies within the trace (${(first / 1e9).toFixed(3)}-${(last / 1e9).toFixed(3)} s); was it recorded with -k CLOCK_MONOTONIC?`;
  const out: string[] = [];
  for (const b of covered) {
    const end = b.ranAtNs ?? b.heardNs;
    out.push(`VM ${b.vm} from host ${b.host}, blackout at ${(b.blackoutNs / 1e9).toFixed(6)} s: ${((end - b.blackoutNs) / 1e6).toFixed(2)} ms to ${b.ranAtNs !== null ? 'the first dispatch' : 'the answer'}`);
    out.push(...report('source (freeze to the state sent)', useWithin(records, b.blackoutNs, b.sentNs), top));
    out.push(...report(`destination (sent to ${b.ranAtNs !== null ? 'the first dispatch' : 'the answer'})`, useWithin(records, b.sentNs, end), top));
  }
  return out.join('\n');
}

/** Every VMWP log under an hvlab home (a cluster's hosts' or a single host's run/logs). */
function vmwpLogs(dir: string, depth = 0): string[] {
  if (depth > 6) return [];
  const out: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = join(dir, n);
    let st;
    try {
      st = statSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) out.push(...vmwpLogs(p, depth + 1));
    else if (/^vmwp-.*\.log$/.test(n)) out.push(p);
  }
  return out;
}

function main(argv: string[]): number {
  const args = argv.filter((a, i) => !a.startsWith('--') && argv[i - 1] !== '--top');
  const topAt = argv.indexOf('--top');
  const top = topAt >= 0 ? Number(argv[topAt + 1]) : 8;
  if (args.length !== 2 || !Number.isInteger(top) || top < 1) {
    process.stderr.write('usage: blackout-timeline.ts TIMEHIST.txt HVLAB_HOME [--top N]\n  (TIMEHIST.txt: `perf sched timehist` of a trace recorded with `perf sched record -k CLOCK_MONOTONIC`)\n');
    return 2;
  }
  let trace: string;
  try {
    trace = readFileSync(args[0]!, 'utf8');
  } catch (e) {
    process.stderr.write(`blackout-timeline: cannot read ${args[0]}: ${(e as Error).message}\n`);
    return 1;
  }
  const logs = vmwpLogs(args[1]!);
  const blackouts = logs.flatMap((f) => parseBlackouts(readFileSync(f, 'utf8')));
  if (blackouts.length === 0) {
    process.stderr.write(`blackout-timeline: no VMWP log under ${args[1]} records a blackout (a move's source logs "blackout instants")\n`);
    return 1;
  }
  process.stdout.write(timeline(parseTimehist(trace), blackouts, top) + '\n');
  return 0;
}

if (process.argv[1] && /blackout-timeline\.ts$/.test(process.argv[1])) process.exitCode = main(process.argv.slice(2));
