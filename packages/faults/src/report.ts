/**
 * The report of a chaos experiment: results.json (the `ChaosReport` runChaosExperiment returns:
 * the seed and the drawn schedule, so a run replays; every fault's record from the nemesis; what
 * each check found, with evidence; the recovery time of each fault), results.md (a table of the
 * checks and a table of the faults), timeline.svg (timeline.ts) and samples.csv (every reading of
 * every VM and host, for whoever wants to look again); and the same two tables as rows for a
 * terminal (`chaosCheckRows`, `chaosFaultRows`).
 */
import { writeFileSync } from 'node:fs';
import { makeDirs } from '@hvlab/runtime';
import { join } from 'node:path';
import { formatBytes } from '@hvlab/protocol';
import { environmentText, type RunEnvironment } from '@hvlab/cluster';
import type { FaultRecord } from './types.js';
import type { ChaosSpec, ChaosWorld } from './chaos-spec.js';
import { paramsText, scheduleLine, type ScheduledFault } from './schedule.js';
import { faultEffect, faultName, rel, type CheckResult, type HostSample, type MoveRecord, type RecoveryTime, type SampleSummary, type VmSample } from './checkers.js';
import { timelineSvg, type Timeline } from './timeline.js';

export const CHAOS_REPORT_VERSION = 1;
export const CHAOS_REPORT_FILES = ['results.json', 'results.md', 'timeline.svg', 'samples.csv'] as const;

/** A scheduled fault the nemesis refused (it never started). */
export interface RefusedFault {
  id: string;
  /** Epoch ms when it was asked for. */
  at: number;
  error: string;
}

export interface ChaosReport {
  version: number;
  name: string;
  kind: 'faults';
  /** The seed the schedule was drawn from (the file's, or `--seed`): the same seed replays the same schedule. */
  seed: number;
  /** The nemesis owner of the run's faults (also the prefix of their ids). */
  owner: string;
  spec: ChaosSpec;
  /** SHA-256 of the file's bytes as they were read (spec.sourceSha256; `sha256sum FILE`): which version of the file this is. */
  sourceSha256: string;
  /** The hvlab (version, commit) and the machine (its load at the start and the end) that ran it. */
  environment: RunEnvironment;
  schedule: ScheduledFault[];
  startedAt: string;
  endedAt: string;
  /** Epoch ms of the schedule's start (every offset is from here) and of the last reading. */
  t0: number;
  t1: number;
  /** The directory the report was written to. */
  out: string;
  cluster: {
    mode: 'new' | 'existing';
    /** The HVLAB_HOME it ran in (a temporary one is gone by now). */
    home: string;
    network: 'namespaces' | 'loopback' | null;
    hosts: Array<{ name: string; hostId: string | null }>;
  };
  world: ChaosWorld;
  /** Every fault as the nemesis recorded it (started, ended, why). */
  faults: FaultRecord[];
  /** The file's live migrations, as they went. */
  moves: MoveRecord[];
  refused: RefusedFault[];
  samples: SampleSummary & { periodMs: number; vmReadings: number; hostReadings: number };
  checks: CheckResult[];
  recovery: RecoveryTime[];
  /** Every check held (a skipped one counts as held). */
  held: boolean;
  /** Stopped early (the signal was aborted). */
  aborted: boolean;
  /**
   * Why the run stopped before its end by itself, or null: the cluster went down under it (its
   * hosts are gone, so nothing was left to fault or read). Its faults are reported ended then.
   */
  stoppedBy: string | null;
  /** What the teardown could not do (each a sentence). */
  cleanup: string[];
  /** The files written, relative to `out`. */
  files: string[];
}

/** A Markdown table cell: pipes and angle brackets escaped (no HTML gets through), line breaks flattened. */
const md = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/[\r\n]+/g, ' ');
const secs = (ms: number | null): string => (ms === null ? '—' : `${(ms / 1000).toFixed(1)} s`);


export function chaosMarkdown(r: ChaosReport): string {
  const s = r.spec;
  const held = r.checks.filter((c) => !c.skipped && c.held).length;
  const run = r.checks.filter((c) => !c.skipped).length;
  const lines = [
    `# Chaos experiment ${md(r.name)}`,
    '',
    `seed **${r.seed}**, ${r.schedule.length} fault${r.schedule.length === 1 ? '' : 's'} over ${secs(s.durationMs)}; ${r.startedAt} to ${r.endedAt}${r.aborted ? ' (**stopped early**)' : ''}`,
    '',
    ...(r.stoppedBy ? [`**Stopped early:** ${md(r.stoppedBy)}`, ''] : []),
    `**${held} of ${run} checks held.** Replay this schedule: \`hvlab experiment run ${md(s.file)} --seed ${r.seed}\``,
    '',
    `- cluster: ${r.cluster.mode}${r.cluster.network ? ` (${r.cluster.network})` : ''}, hosts ${r.world.hosts.join(', ')}${s.lps ? `, ${s.lps} LP${s.lps === 1 ? "" : "s"} each` : ''}`,
    `- workloads: ${s.workloads.map((w) => `${md(w.name)} on ${w.host} (${md(w.workload)}, ${formatBytes(w.memoryBytes)}, ${w.vps} VP${w.vps === 1 ? '' : 's'})`).join('; ')}`,
    `- readings every ${r.samples.periodMs} ms: ${r.samples.vmReadings} of VMs, ${r.samples.hostReadings} of hosts`,
    `- faults owned by ${md(r.owner)}`,
    `- ran on: ${md(environmentText(r.environment))}`,
    `- file: ${md(s.file)}, sha256 ${r.sourceSha256} (its text is in results.json, spec.source)`,
    '',
    '## Checks',
    '',
    '| check | held | summary | evidence |',
    '|---|---|---|---|',
  ];
  for (const c of r.checks) {
    const verdict = c.skipped ? 'skipped' : c.held ? '**held**' : '**VIOLATED**';
    const ev = [...c.evidence.slice(0, 8), ...(c.evidence.length > 8 ? [`… ${c.evidence.length - 8} more in results.json`] : []), ...c.unknown.slice(0, 3).map((u) => `unknown: ${u}`)];
    lines.push(`| ${c.name} | ${verdict} | ${md(c.summary)} | ${ev.map(md).join('<br>') || '—'} |`);
  }
  lines.push('', '## Faults', '', '| fault | at | kind | target | hit | for | ended | recovery |', '|---|---:|---|---|---|---:|---|---:|');
  const rec = new Map(r.recovery.map((x) => [x.id, x]));
  for (const f of r.schedule) {
    const id = `${r.owner}.${f.id}`;
    const fr = r.faults.find((x) => x.id === id);
    const refused = r.refused.find((x) => x.id === id);
    const kind = `${f.kind}${f.role ? ` (${f.role})` : ''}${Object.keys(f.params).length ? `: ${paramsText(f.params)}` : ''}`;
    const ended = refused ? `refused: ${refused.error}` : !fr ? 'not injected' : fr.state === 'failed' ? `failed: ${fr.error ?? ''}` : fr.endedAt === null ? 'still active' : `${rel(r.t0, fr.endedAt)} (${fr.endReason})${fr.error ? `, ${fr.error}` : ''}`;
    const rt = fr ? rec.get(fr.id) : undefined;
    lines.push(`| ${f.id}${f.source === 'random' ? ' (drawn)' : ''} | ${fr ? rel(r.t0, fr.startedAt) : `+${(f.atMs / 1000).toFixed(1)}s`} | ${md(kind)} | ${md(f.target)} | ${md(fr?.resolved.summary ?? '—')} | ${secs(f.forMs)} | ${md(ended)} | ${rt ? (rt.recoveredMs === null ? `— (${md(rt.detail)})` : secs(rt.recoveredMs)) : '—'} |`);
  }
  if (r.moves.length > 0) {
    lines.push('', '## Moves', '', '| move | at | VM | from → to | method | status | downtime | total | error |', '|---|---:|---|---|---|---|---:|---:|---|');
    for (const m of r.moves) {
      lines.push(`| ${m.id}${m.source === 'random' ? ' (random)' : ''} | ${rel(r.t0, m.startedAt)} | ${md(m.vm)} | ${m.from} → ${m.to} | ${md(m.method)} | ${md(m.status)} | ${m.downtimeMs === null ? '—' : `${m.downtimeMs} ms`} | ${m.totalMs === null ? '—' : `${m.totalMs} ms`} | ${m.error ? md(m.error) : m.note ? md(m.note) : '—'} |`);
    }
  }
  if (r.cleanup.length > 0) lines.push('', '## Left behind', '', ...r.cleanup.map((c) => `- ${md(c)}`));
  lines.push(
    '', '## Timeline', '',
    '![Faults against each VM\'s progress](timeline.svg)', '',
    '## Schedule as drawn', '', '```', ...r.schedule.map(scheduleLine), '```', '',
    'The full record (every fault\'s record from the nemesis, every check\'s evidence, the recovery of each fault) is in [results.json](results.json); every reading in [samples.csv](samples.csv).',
  );
  return `${lines.join('\n')}\n`;
}

/** The checks as rows for a terminal table (header first): CHECK, HELD, SUMMARY, and the first violation of one that did not hold. */
export function chaosCheckRows(r: Pick<ChaosReport, 'checks'>): string[][] {
  return [
    ['CHECK', 'HELD', 'SUMMARY', 'FIRST VIOLATION'],
    ...r.checks.map((c) => [c.name, c.skipped ? 'skipped' : c.held ? 'yes' : 'NO', c.summary, c.held ? '' : c.evidence[0] ?? '']),
  ];
}

/** The faults as rows for a terminal table (header first): FAULT, AT, KIND, TARGET, FOR, ENDED, RECOVERY. */
export function chaosFaultRows(r: Pick<ChaosReport, 'schedule' | 'faults' | 'refused' | 'recovery' | 'owner' | 't0'>): string[][] {
  const rows = [['FAULT', 'AT', 'KIND', 'TARGET', 'FOR', 'ENDED', 'RECOVERY']];
  for (const f of r.schedule) {
    const id = `${r.owner}.${f.id}`;
    const fr = r.faults.find((x) => x.id === id);
    const refused = r.refused.find((x) => x.id === id);
    const rt = r.recovery.find((x) => x.id === id);
    const ended = refused ? 'refused' : !fr ? 'not injected' : fr.state === 'failed' ? 'failed' : fr.endedAt === null ? 'active' : `${rel(r.t0, fr.endedAt)} ${fr.endReason}`;
    rows.push([f.id, fr ? rel(r.t0, fr.startedAt) : `+${(f.atMs / 1000).toFixed(1)}s`, `${f.kind}${f.role ? ` (${f.role})` : ''}`, f.target, secs(f.forMs), ended, rt?.recoveredMs === null || !rt ? '-' : secs(rt.recoveredMs)]);
  }
  return rows;
}

/** The moves as rows for a terminal table (header first): MOVE, AT, VM, FROM, TO, METHOD, STATUS, DOWNTIME. */
export function chaosMoveRows(r: Pick<ChaosReport, 'moves' | 't0'>): string[][] {
  return [
    ['MOVE', 'AT', 'VM', 'FROM', 'TO', 'METHOD', 'STATUS', 'DOWNTIME'],
    ...r.moves.map((m) => [`${m.id}${m.source === 'random' ? ' (random)' : ''}`, rel(r.t0, m.startedAt), m.vm, m.from, m.to, m.method, m.error ?? m.note ? `${m.status}: ${(m.error ?? m.note)!.slice(0, 60)}` : m.status, m.downtimeMs === null ? '-' : `${m.downtimeMs} ms`]),
  ];
}

/** A CSV field (RFC 4180). */
function csvField(v: string | number | boolean | null): string {
  const s = v === null ? '' : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export const SAMPLE_CSV_COLUMNS = ['t_ms', 'kind', 'host', 'vm', 'answered', 'state', 'progress', 'heartbeat', 'peers_missed'] as const;

/** Every reading, VMs and hosts together in time order; t_ms from the schedule's start. */
export function samplesCsv(t0: number, vms: readonly VmSample[], hosts: readonly HostSample[]): string {
  const rows = [
    ...vms.map((s) => ({ t: s.t, row: [s.t - t0, 'vm', s.host, s.vm, s.answered, s.state, s.progress, s.heartbeat, null] })),
    ...hosts.map((s) => ({ t: s.t, row: [s.t - t0, 'host', s.host, null, s.answered, null, null, null, s.peersMissed ? Object.entries(s.peersMissed).map(([k, v]) => `${k}:${v}`).join(' ') : null] })),
  ].sort((a, b) => a.t - b.t);
  return `${[SAMPLE_CSV_COLUMNS.join(','), ...rows.map((r) => r.row.map((v) => csvField(v as string | number | boolean | null)).join(','))].join('\r\n')}\r\n`;
}

/** The timeline of a report and its readings. */
export function chaosTimeline(r: ChaosReport, vms: readonly VmSample[]): Timeline {
  const faults = r.schedule.map((f) => {
    const id = `${r.owner}.${f.id}`;
    const fr = r.faults.find((x) => x.id === id);
    const refused = r.refused.find((x) => x.id === id);
    if (fr) return { id: f.id, kind: f.kind, target: f.target, from: fr.startedAt, to: fr.endedAt, state: fr.state };
    const at = refused?.at ?? r.t0 + f.atMs;
    return { id: f.id, kind: f.kind, target: f.target, from: at, to: at + f.forMs, state: refused ? 'refused' : 'not injected' };
  });
  const effects = r.faults.map((f) => ({ f, e: faultEffect(f, r.world, r.t1, r.moves) }));
  return {
    title: `${r.name}: faults against each VM's progress (seed ${r.seed})`,
    t0: r.t0, t1: r.t1, faults,
    vms: r.world.vms.map((v) => ({
      name: v.name, samples: vms.filter((s) => s.vm === v.name),
      host: [v.host, ...r.moves.filter((m) => m.vm === v.name && m.status === 'completed').map((m) => m.to)].join('→'),
      moves: r.moves.filter((m) => m.vm === v.name).map((m) => ({ id: m.id, to: m.to, status: m.status, from: m.startedAt, until: m.endedAt ?? r.t1 })),
      bands: effects.filter(({ e }) => e.vms.includes(v.name)).map(({ f, e }) => ({ id: faultName(f), kind: f.kind, from: e.from, to: e.to })),
    })),
  };
}

/** Writes every file of the report into `dir` (made if missing); returns their names. */
export function writeChaosReport(r: ChaosReport, dir: string, samples: { vms: readonly VmSample[]; hosts: readonly HostSample[] }): string[] {
  makeDirs(dir);
  r.files = [...CHAOS_REPORT_FILES];
  const files: Array<[string, string]> = [
    ['results.json', `${JSON.stringify(r, null, 2)}\n`],
    ['results.md', chaosMarkdown(r)],
    ['timeline.svg', timelineSvg(chaosTimeline(r, samples.vms))],
    ['samples.csv', samplesCsv(r.t0, samples.vms, samples.hosts)],
  ];
  for (const [f, text] of files) writeFileSync(join(dir, f), text);
  return r.files;
}
