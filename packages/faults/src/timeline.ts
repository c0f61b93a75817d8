/**
 * The timeline of a chaos experiment as one self-contained SVG (no plotting dependency, like
 * cluster's plot.ts, whose helpers it uses): the faults as bars in lanes along the top, and under
 * them one strip per VM with its progress counter over time (scaled to its own largest value, broken
 * where the host did not answer), the windows of the faults that touched it shaded in the fault's
 * colour, its moves (live migrations) as dashed outlines over their windows, named with where they
 * went, and marks along the strip's foot where its heartbeat was not OK or there was no answer.
 * Time is seconds from the schedule's start. Every text is escaped, so the output is well-formed XML
 * whatever the names hold.
 */
import { FAULT_KINDS, type FaultKind } from '@hvlab/protocol';
import { PALETTE, escapeXml, niceScale, svgOpen, textWidth } from '@hvlab/cluster';
import type { VmSample } from './checkers.js';

export interface TimelineFault {
  id: string;
  kind: FaultKind;
  target: string;
  /** Epoch ms; `to` null: it never started (refused) or never ended while watched. */
  from: number;
  to: number | null;
  /** active | ended | failed | refused */
  state: string;
}

export interface TimelineVm {
  name: string;
  /** Its host, or the hosts its completed moves took it through ("h1→h2→h1"). */
  host: string;
  /** Its moves (epoch ms; `to` is the move's end, or the end of the record). */
  moves?: Array<{ id: string; to: string; status: string; from: number; until: number }>;
  samples: VmSample[];
  /** Windows of the faults that touched this VM (epoch ms). */
  bands: Array<{ id: string; kind: FaultKind; from: number; to: number }>;
}

export interface Timeline {
  title: string;
  /** Epoch ms of the schedule's start (x = 0) and of the end of the record. */
  t0: number;
  t1: number;
  faults: TimelineFault[];
  vms: TimelineVm[];
}

/** A fault kind's colour (the same kind, the same colour, in every report). */
export function kindColour(kind: FaultKind): string {
  return PALETTE[Math.max(0, FAULT_KINDS.indexOf(kind)) % PALETTE.length]!;
}

const f1 = (x: number): string => x.toFixed(1);
/** The marks along a VM's strip: apart from every kind's colour. */
const HEARTBEAT_BAD = '#8b0000';
const NO_ANSWER = '#555555';
/** A move's outline: apart from every kind's colour too. */
const MOVE = '#1a237e';

/** Puts intervals into as few lanes as greedy first-fit takes (in order of start); returns each one's lane. */
export function packLanes(spans: ReadonlyArray<{ from: number; to: number }>, gap = 0): number[] {
  const ends: number[] = [];
  const order = spans.map((s, i) => ({ s, i })).sort((a, b) => a.s.from - b.s.from || a.i - b.i);
  const lanes = new Array<number>(spans.length).fill(0);
  for (const { s, i } of order) {
    let lane = ends.findIndex((e) => e + gap <= s.from);
    if (lane < 0) {
      lane = ends.length;
      ends.push(0);
    }
    ends[lane] = Math.max(s.to, s.from);
    lanes[i] = lane;
  }
  return lanes;
}

export function timelineSvg(tl: Timeline): string {
  const spanS = Math.max(1, (tl.t1 - tl.t0) / 1000);
  const xs = niceScale(spanS, 10);
  const labelW = Math.max(110, ...tl.vms.map((v) => textWidth(`${v.name} (${v.host})`) + 16));
  const left = labelW + 12;
  const plotW = 820;
  const top = 48;
  const laneH = 22;
  const x = (t: number): number => left + (Math.max(0, Math.min(xs.max * 1000, t - tl.t0)) / (xs.max * 1000)) * plotW;

  // Faults in lanes; a bar is at least wide enough to see, its label inside or after it.
  const spans = tl.faults.map((f) => {
    const to = f.to ?? tl.t1;
    const x1 = x(f.from);
    const label = `${f.id} ${f.kind} ${f.target}${f.state === 'failed' || f.state === 'refused' ? ` (${f.state})` : ''}`;
    const x2 = Math.max(x(to), x1 + 3);
    // A label that does not fit in its bar is written after it, and takes that room in the lane.
    const inside = x2 - x1 >= textWidth(label) + 8;
    return { from: x1, to: inside ? x2 : x2 + 4 + textWidth(label) + 4, x1, x2, label, inside };
  });
  const lanes = packLanes(spans, 4);
  const nLanes = Math.max(1, ...lanes.map((l) => l + 1));
  const faultsH = nLanes * laneH + 16;
  const stripH = 58;
  const stripsTop = top + faultsH + 12;
  const legendTop = stripsTop + tl.vms.length * stripH + 44;
  const kinds = FAULT_KINDS.filter((k) => tl.faults.some((f) => f.kind === k));
  const legendItems: Array<{ draw: (lx: number, ly: number) => string; text: string }> = [
    ...kinds.map((k) => ({ draw: (lx: number, ly: number) => `<rect x="${lx}" y="${ly - 9}" width="14" height="10" fill="${kindColour(k)}"/>`, text: k })),
    { draw: (lx, ly) => `<line x1="${lx}" y1="${ly - 4}" x2="${lx + 14}" y2="${ly - 4}" stroke="#222" stroke-width="2"/>`, text: 'progress (own scale)' },
    { draw: (lx, ly) => `<rect x="${lx}" y="${ly - 7}" width="14" height="5" fill="${HEARTBEAT_BAD}"/>`, text: 'heartbeat not OK' },
    { draw: (lx, ly) => `<rect x="${lx}" y="${ly - 7}" width="14" height="5" fill="${NO_ANSWER}"/>`, text: 'no answer' },
    ...(tl.vms.some((v) => (v.moves ?? []).length > 0) ? [{ draw: (lx: number, ly: number) => `<rect x="${lx}" y="${ly - 10}" width="14" height="11" fill="none" stroke="${MOVE}" stroke-dasharray="3 2"/>`, text: 'move (live migration)' }] : []),
  ];
  // The legend flows left to right, wrapping at the plot's width.
  const placed: Array<{ x: number; row: number }> = [];
  let lx0 = 0;
  let row = 0;
  for (const it of legendItems) {
    const w = 20 + textWidth(it.text) + 18;
    if (lx0 > 0 && lx0 + w > plotW) {
      lx0 = 0;
      row++;
    }
    placed.push({ x: lx0, row });
    lx0 += w;
  }
  const legendH = (row + 1) * 20 + 8;
  const width = left + plotW + 24;
  const height = legendTop + legendH + 8;

  const out = svgOpen(width, height, tl.title);
  // Vertical grid at the ticks, through every section.
  out.push('  <g class="grid">');
  for (const tk of xs.ticks) out.push(`    <line x1="${f1(x(tl.t0 + tk * 1000))}" y1="${top}" x2="${f1(x(tl.t0 + tk * 1000))}" y2="${stripsTop + tl.vms.length * stripH}" stroke="#ececec"/>`);
  out.push('  </g>');

  out.push('  <g class="faults">');
  out.push(`    <text x="${left - 8}" y="${top + 15}" text-anchor="end" font-weight="bold">faults</text>`);
  if (tl.faults.length === 0) out.push(`    <text x="${left + 4}" y="${top + 15}" fill="#888" font-style="italic">no fault was injected</text>`);
  tl.faults.forEach((f, i) => {
    const s = spans[i]!;
    const y = top + lanes[i]! * laneH + 2;
    const colour = kindColour(f.kind);
    const faded = f.state === 'failed' || f.state === 'refused';
    const to = f.to ?? tl.t1;
    out.push('    <g>');
    out.push(`      <rect x="${f1(s.x1)}" y="${y}" width="${f1(s.x2 - s.x1)}" height="${laneH - 6}" fill="${colour}"${faded ? ' fill-opacity="0.3" stroke="#888" stroke-dasharray="3 2"' : ''}><title>${escapeXml(`${s.label}: ${((f.from - tl.t0) / 1000).toFixed(1)} s to ${((to - tl.t0) / 1000).toFixed(1)} s (${f.state})`)}</title></rect>`);
    out.push(`      <text x="${f1(s.inside ? s.x1 + 4 : s.x2 + 4)}" y="${y + 12}" font-size="11" fill="${s.inside ? '#ffffff' : '#222'}">${escapeXml(s.label)}</text>`);
    out.push('    </g>');
  });
  out.push('  </g>');

  out.push('  <g class="vms">');
  tl.vms.forEach((v, i) => {
    const y0 = stripsTop + i * stripH;
    const h = stripH - 14;
    const base = y0 + h;
    out.push(`    <g class="vm">`);
    out.push(`      <text x="${left - 8}" y="${f1(y0 + h / 2 + 4)}" text-anchor="end">${escapeXml(`${v.name} (${v.host})`)}</text>`);
    out.push(`      <rect x="${left}" y="${y0}" width="${plotW}" height="${h}" fill="none" stroke="#cccccc"/>`);
    for (const b of v.bands) {
      const bx = x(b.from);
      out.push(`      <rect x="${f1(bx)}" y="${y0}" width="${f1(Math.max(2, x(b.to) - bx))}" height="${h}" fill="${kindColour(b.kind)}" fill-opacity="0.2"><title>${escapeXml(`${b.id} (${b.kind})`)}</title></rect>`);
    }
    for (const m of v.moves ?? []) {
      const mx = x(m.from);
      const label = `${m.id} → ${m.to}${m.status === 'completed' ? '' : ` (${m.status})`}`;
      out.push(`      <rect x="${f1(mx)}" y="${y0 + 1}" width="${f1(Math.max(2, x(m.until) - mx))}" height="${h - 2}" fill="none" stroke="${MOVE}" stroke-width="1.5" stroke-dasharray="3 2"><title>${escapeXml(`${label}: ${((m.from - tl.t0) / 1000).toFixed(1)} s to ${((m.until - tl.t0) / 1000).toFixed(1)} s`)}</title></rect>`);
      out.push(`      <text x="${f1(mx + 3)}" y="${f1(y0 + 11)}" font-size="10" fill="${MOVE}">${escapeXml(label)}</text>`);
    }
    const samples = [...v.samples].sort((a, b) => a.t - b.t);
    const max = Math.max(0, ...samples.map((s) => s.progress ?? 0));
    // The progress line, broken where there was no reading.
    const runs: string[][] = [];
    let cur: string[] = [];
    for (const s of samples) {
      if (s.t < tl.t0) continue;
      if (s.answered && s.progress !== null) {
        cur.push(`${f1(x(s.t))},${f1(base - (max > 0 ? (s.progress / max) * (h - 4) : 0))}`);
      } else if (cur.length > 0) {
        runs.push(cur);
        cur = [];
      }
    }
    if (cur.length > 0) runs.push(cur);
    for (const r of runs) {
      if (r.length === 1) out.push(`      <circle cx="${r[0]!.split(',')[0]}" cy="${r[0]!.split(',')[1]}" r="1.5" fill="#222"/>`);
      else out.push(`      <polyline points="${r.join(' ')}" fill="none" stroke="#222" stroke-width="1.5"/>`);
    }
    if (samples.every((s) => s.progress === null)) out.push(`      <text x="${left + 6}" y="${f1(y0 + 14)}" fill="#888" font-style="italic" font-size="11">no progress counter</text>`);
    else out.push(`      <text x="${left + plotW - 4}" y="${f1(y0 + 11)}" text-anchor="end" fill="#666" font-size="10">${escapeXml(`max ${Math.round(max).toLocaleString('en-US')}`)}</text>`);
    // Heartbeat not OK, and no answer, along the foot: each mark lasts until the next reading.
    samples.forEach((s, j) => {
      const next = samples[j + 1]?.t ?? s.t + 250;
      const colour = !s.answered ? NO_ANSWER : s.heartbeat !== null && s.heartbeat !== 'OK' ? HEARTBEAT_BAD : null;
      if (!colour || s.t < tl.t0) return;
      out.push(`      <rect x="${f1(x(s.t))}" y="${base + 2}" width="${f1(Math.max(1, x(next) - x(s.t)))}" height="5" fill="${colour}"><title>${escapeXml(`${v.name} at ${((s.t - tl.t0) / 1000).toFixed(1)} s: ${s.answered ? `heartbeat ${s.heartbeat}` : 'no answer'}`)}</title></rect>`);
    });
    out.push('    </g>');
  });
  out.push('  </g>');

  // The time axis under the strips.
  const axisY = stripsTop + tl.vms.length * stripH + 4;
  out.push('  <g class="x-axis">');
  out.push(`    <line x1="${left}" y1="${axisY}" x2="${left + plotW}" y2="${axisY}" stroke="#333"/>`);
  for (const tk of xs.ticks) {
    const tx = x(tl.t0 + tk * 1000);
    out.push(`    <line x1="${f1(tx)}" y1="${axisY}" x2="${f1(tx)}" y2="${axisY + 5}" stroke="#333"/>`);
    out.push(`    <text x="${f1(tx)}" y="${axisY + 18}" text-anchor="middle" fill="#333">${escapeXml(String(tk))}</text>`);
  }
  out.push(`    <text x="${f1(left + plotW / 2)}" y="${axisY + 34}" text-anchor="middle" fill="#333">seconds from the start of the schedule</text>`);
  out.push('  </g>');

  out.push('  <g class="legend">');
  legendItems.forEach((it, i) => {
    const lx = left + placed[i]!.x;
    const ly = legendTop + placed[i]!.row * 20 + 14;
    out.push(`    ${it.draw(lx, ly)}`);
    out.push(`    <text x="${lx + 20}" y="${ly}">${escapeXml(it.text)}</text>`);
  });
  out.push('  </g>');
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
