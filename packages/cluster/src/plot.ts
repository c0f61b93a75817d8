/**
 * Charts as self-contained SVG, written by hand like graph.ts (no plotting dependency), for the
 * reports of experiments (experiment.ts): a bar chart with min–max whiskers and an optional
 * reference line (`barChartSvg`), and a line chart of several series (`lineChartSvg`). Each has a
 * title, both axes with ticks and labels, and a legend; every text is escaped, so the output is
 * well-formed XML whatever the labels hold.
 */

/** Colours for categories and series, in order (Tableau 10, readable on white and in print). */
export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'] as const;

/** Text for XML content and attribute values: markup escaped, and the control characters XML 1.0 forbids dropped. */
export function escapeXml(s: string): string {
  return s
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '')
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/**
 * An axis from 0 to at least `max` in `ticks` (at most one more) steps of 1, 2, 2.5 or 5 times a power of ten.
 * A `max` of 0 or less (or not finite) gives 0 to 1.
 */
export function niceScale(max: number, ticks = 5): { max: number; step: number; ticks: number[] } {
  if (!Number.isFinite(max) || max <= 0) max = 1;
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  // The finest round step that needs at most one step more than asked for.
  const step = [1, 2, 2.5, 5, 10].map((c) => c * mag).find((s) => max / s <= ticks + 1)!;
  const n = Math.ceil(max / step - 1e-9);
  // Multiplying (not adding) keeps tick values free of accumulated rounding.
  const values = Array.from({ length: n + 1 }, (_, i) => Number((i * step).toPrecision(12)));
  return { max: values[values.length - 1]!, step, ticks: values };
}

/** 1234 → "1234", 12345 → "12.3k", 2.5e6 → "2.5M": short enough for a tick label. */
export function formatNumber(v: number): string {
  const a = Math.abs(v);
  const trim = (x: number, d: number): string => String(Number(x.toFixed(d)));
  if (a >= 1e9) return `${trim(v / 1e9, 2)}G`;
  if (a >= 1e6) return `${trim(v / 1e6, 2)}M`;
  if (a >= 1e4) return `${trim(v / 1e3, 1)}k`;
  return trim(v, a >= 100 ? 0 : a >= 10 ? 1 : 2);
}

/** Bytes in binary units: 0 → "0", 1536 → "1.5 KiB", 35651584 → "34 MiB". */
export function formatBinaryBytes(v: number): string {
  const a = Math.abs(v);
  const trim = (x: number): string => String(Number(x.toFixed(1)));
  if (a >= 1024 ** 3) return `${trim(v / 1024 ** 3)} GiB`;
  if (a >= 1024 ** 2) return `${trim(v / 1024 ** 2)} MiB`;
  if (a >= 1024) return `${trim(v / 1024)} KiB`;
  return `${trim(v)}${v === 0 ? '' : ' B'}`;
}

const f1 = (x: number): string => x.toFixed(1);
/** Width of `s` at 12 px sans-serif, roughly (7 px a character), for layout. */
export const textWidth = (s: string): number => s.length * 7;

/** The opening lines of a chart: the XML declaration, the svg element, its title (also drawn, top left) and a white background. */
export function svgOpen(width: number, height: number, title: string): string[] {
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.round(width)}" height="${Math.round(height)}" viewBox="0 0 ${Math.round(width)} ${Math.round(height)}" font-family="sans-serif" font-size="12">`,
    `  <title>${escapeXml(title)}</title>`,
    `  <rect x="0" y="0" width="${Math.round(width)}" height="${Math.round(height)}" fill="#ffffff"/>`,
    `  <text x="16" y="24" font-size="15" font-weight="bold">${escapeXml(title)}</text>`,
  ];
}

/** Where the plot area starts: room for the y axis's label and its widest tick label. */
function axisLeft(ticks: number[], format: (v: number) => string): number {
  return Math.max(72, 38 + Math.max(...ticks.map((t) => textWidth(format(t)))));
}

/** Horizontal grid lines with their labels on the left, and the label of the y axis turned upright. */
function yAxis(out: string[], left: number, top: number, plotW: number, plotH: number, scale: { max: number; ticks: number[] }, format: (v: number) => string, label: string): void {
  out.push('  <g class="y-axis">');
  for (const t of scale.ticks) {
    const y = top + plotH - (t / scale.max) * plotH;
    out.push(`    <line x1="${left}" y1="${f1(y)}" x2="${left + plotW}" y2="${f1(y)}" stroke="#e3e3e3"/>`);
    out.push(`    <text x="${left - 6}" y="${f1(y + 4)}" text-anchor="end" fill="#333">${escapeXml(format(t))}</text>`);
  }
  out.push(`    <line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`    <text transform="translate(16 ${f1(top + plotH / 2)}) rotate(-90)" text-anchor="middle" fill="#333">${escapeXml(label)}</text>`);
  out.push('  </g>');
}

// ---- bar chart ----------------------------------------------------------------------------------

export interface Bar {
  label: string;
  /** The bar's height (e.g. the median); null: no bar (nothing measured), `note` says why. */
  value: number | null;
  /** The whisker: drawn when both are given. */
  min?: number;
  max?: number;
  /** A second line under the label (e.g. "n=3"). */
  sublabel?: string;
  /** Written where a bar without a value would stand (default "no data"). */
  note?: string;
}

export interface BarChart {
  title: string;
  yLabel: string;
  bars: Bar[];
  /** Tick and value labels (default formatNumber). */
  format?: (v: number) => string;
  /** What the bar and the whisker stand for, for the legend. */
  legend?: { bar: string; whisker: string };
  /** A dashed horizontal line across the chart (e.g. a model's prediction). */
  reference?: { value: number; label: string } | null;
}

export function barChartSvg(c: BarChart): string {
  const format = c.format ?? formatNumber;
  const legend = c.legend ?? { bar: 'median', whisker: 'min – max' };
  const ref = c.reference && Number.isFinite(c.reference.value) && c.reference.value > 0 ? c.reference : null;
  const slot = Math.max(84, ...c.bars.map((b) => Math.max(textWidth(b.label), textWidth(b.sublabel ?? ''), textWidth(b.note ?? 'no data')) + 20));
  const legendLines = [legend.bar, legend.whisker, ...(ref ? [ref.label] : [])];
  const legendW = Math.max(...legendLines.map(textWidth)) + 48;
  const tallest = Math.max(0, ...c.bars.flatMap((b) => [b.value ?? 0, b.max ?? 0]), ref?.value ?? 0);
  const scale = niceScale(tallest * 1.08);
  const left = axisLeft(scale.ticks, format);
  const top = 48;
  const plotW = slot * Math.max(1, c.bars.length);
  const plotH = 260;
  const bottom = 56;
  const width = left + plotW + 24 + legendW + 16;
  const height = top + plotH + bottom;
  const y = (v: number): number => top + plotH - (Math.max(0, v) / scale.max) * plotH;
  const base = top + plotH;

  const out = svgOpen(width, height, c.title);
  yAxis(out, left, top, plotW, plotH, scale, format, c.yLabel);
  out.push('  <g class="bars">');
  c.bars.forEach((b, i) => {
    const cx = left + slot * i + slot / 2;
    const bw = Math.min(56, slot * 0.55);
    const colour = PALETTE[i % PALETTE.length]!;
    out.push('    <g>');
    if (b.value !== null && Number.isFinite(b.value)) {
      const yt = y(b.value);
      out.push(`      <rect x="${f1(cx - bw / 2)}" y="${f1(yt)}" width="${f1(bw)}" height="${f1(Math.max(0, base - yt))}" fill="${colour}"><title>${escapeXml(`${b.label}: ${format(b.value)}`)}</title></rect>`);
      let labelY = yt;
      if (b.min !== undefined && b.max !== undefined && Number.isFinite(b.min) && Number.isFinite(b.max)) {
        const y1 = y(b.min);
        const y2 = y(b.max);
        labelY = Math.min(labelY, y2);
        out.push(`      <line x1="${f1(cx)}" y1="${f1(y1)}" x2="${f1(cx)}" y2="${f1(y2)}" stroke="#222" stroke-width="1.5"/>`);
        for (const yy of [y1, y2]) out.push(`      <line x1="${f1(cx - 7)}" y1="${f1(yy)}" x2="${f1(cx + 7)}" y2="${f1(yy)}" stroke="#222" stroke-width="1.5"/>`);
      }
      out.push(`      <text x="${f1(cx)}" y="${f1(labelY - 5)}" text-anchor="middle" fill="#222">${escapeXml(format(b.value))}</text>`);
    } else {
      out.push(`      <text x="${f1(cx)}" y="${f1(base - 8)}" text-anchor="middle" fill="#888" font-style="italic">${escapeXml(b.note ?? 'no data')}</text>`);
    }
    out.push(`      <text x="${f1(cx)}" y="${base + 18}" text-anchor="middle">${escapeXml(b.label)}</text>`);
    if (b.sublabel) out.push(`      <text x="${f1(cx)}" y="${base + 33}" text-anchor="middle" fill="#666" font-size="11">${escapeXml(b.sublabel)}</text>`);
    out.push('    </g>');
  });
  out.push('  </g>');
  if (ref) {
    const yr = y(ref.value);
    out.push(`  <line class="reference" x1="${left}" y1="${f1(yr)}" x2="${left + plotW}" y2="${f1(yr)}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/>`);
  }
  out.push(`  <line x1="${left}" y1="${base}" x2="${left + plotW}" y2="${base}" stroke="#333"/>`);

  // The legend: what a bar, a whisker and the dashed line stand for.
  const lx = left + plotW + 24;
  out.push(`  <g class="legend">`);
  out.push(`    <rect x="${lx}" y="${top}" width="${legendW}" height="${12 + legendLines.length * 20}" fill="#fafafa" stroke="#ccc"/>`);
  out.push(`    <rect x="${lx + 10}" y="${top + 9}" width="14" height="12" fill="#999"/>`);
  out.push(`    <text x="${lx + 32}" y="${top + 20}">${escapeXml(legend.bar)}</text>`);
  out.push(`    <line x1="${lx + 17}" y1="${top + 28}" x2="${lx + 17}" y2="${top + 42}" stroke="#222" stroke-width="1.5"/>`);
  out.push(`    <line x1="${lx + 12}" y1="${top + 28}" x2="${lx + 22}" y2="${top + 28}" stroke="#222" stroke-width="1.5"/>`);
  out.push(`    <line x1="${lx + 12}" y1="${top + 42}" x2="${lx + 22}" y2="${top + 42}" stroke="#222" stroke-width="1.5"/>`);
  out.push(`    <text x="${lx + 32}" y="${top + 40}">${escapeXml(legend.whisker)}</text>`);
  if (ref) {
    out.push(`    <line x1="${lx + 8}" y1="${top + 55}" x2="${lx + 26}" y2="${top + 55}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/>`);
    out.push(`    <text x="${lx + 32}" y="${top + 60}">${escapeXml(ref.label)}</text>`);
  }
  out.push('  </g>');
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

// ---- line chart ---------------------------------------------------------------------------------

export interface Series {
  label: string;
  /** [x, y] in the order they are joined. */
  points: Array<[number, number]>;
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  formatX?: (v: number) => string;
  formatY?: (v: number) => string;
}

export function lineChartSvg(c: LineChart): string {
  const formatX = c.formatX ?? formatNumber;
  const formatY = c.formatY ?? formatNumber;
  const labels = c.series.map((s) => (s.points.length === 0 ? `${s.label} (no data)` : s.label));
  const legendW = Math.max(80, ...labels.map(textWidth)) + 44;
  const pts = c.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = niceScale(Math.max(0, ...pts.map(([x]) => x)) * 1.02, 6);
  const ys = niceScale(Math.max(0, ...pts.map(([, y]) => y)) * 1.05);
  const left = axisLeft(ys.ticks, formatY);
  const top = 48;
  const plotW = 520;
  const plotH = 280;
  const bottom = 52;
  const width = left + plotW + 24 + legendW + 16;
  const height = top + plotH + bottom;
  const px = (x: number): number => left + (Math.max(0, x) / xs.max) * plotW;
  const py = (y: number): number => top + plotH - (Math.max(0, y) / ys.max) * plotH;
  const base = top + plotH;

  const out = svgOpen(width, height, c.title);
  yAxis(out, left, top, plotW, plotH, ys, formatY, c.yLabel);
  out.push('  <g class="x-axis">');
  for (const t of xs.ticks) {
    out.push(`    <line x1="${f1(px(t))}" y1="${base}" x2="${f1(px(t))}" y2="${base + 5}" stroke="#333"/>`);
    out.push(`    <text x="${f1(px(t))}" y="${base + 18}" text-anchor="middle" fill="#333">${escapeXml(formatX(t))}</text>`);
  }
  out.push(`    <line x1="${left}" y1="${base}" x2="${left + plotW}" y2="${base}" stroke="#333"/>`);
  out.push(`    <text x="${f1(left + plotW / 2)}" y="${base + 40}" text-anchor="middle" fill="#333">${escapeXml(c.xLabel)}</text>`);
  out.push('  </g>');
  if (pts.length === 0) out.push(`  <text x="${f1(left + plotW / 2)}" y="${f1(top + plotH / 2)}" text-anchor="middle" fill="#888" font-style="italic">no data</text>`);
  out.push('  <g class="series">');
  c.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length]!;
    const ok = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (ok.length === 0) return;
    out.push('    <g>');
    out.push(`      <polyline points="${ok.map(([x, y]) => `${f1(px(x))},${f1(py(y))}`).join(' ')}" fill="none" stroke="${colour}" stroke-width="2"/>`);
    for (const [x, y] of ok) out.push(`      <circle cx="${f1(px(x))}" cy="${f1(py(y))}" r="3" fill="${colour}"><title>${escapeXml(`${s.label}: ${formatX(x)}, ${formatY(y)}`)}</title></circle>`);
    out.push('    </g>');
  });
  out.push('  </g>');

  const lx = left + plotW + 24;
  out.push('  <g class="legend">');
  out.push(`    <rect x="${lx}" y="${top}" width="${legendW}" height="${12 + labels.length * 20}" fill="#fafafa" stroke="#ccc"/>`);
  labels.forEach((l, i) => {
    const ly = top + 16 + i * 20;
    out.push(`    <line x1="${lx + 8}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="${PALETTE[i % PALETTE.length]!}" stroke-width="3"/>`);
    out.push(`    <text x="${lx + 36}" y="${ly + 4}">${escapeXml(l)}</text>`);
  });
  out.push('  </g>');
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
