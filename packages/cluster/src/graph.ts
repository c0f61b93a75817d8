/**
 * Pictures of a cluster: Graphviz DOT (`topologyDot`) and a self-contained SVG (`topologySvg`)
 * that needs no Graphviz. Hosts sit on a circle, each a box with its name, its address (when the
 * cluster is up) and its VMs; links are lines labelled with their impairments.
 */
import { formatBytes } from '@hvlab/protocol';
import type { LinkImpairments, Topology } from './topology.js';

/** Addresses and namespaces of a running cluster's hosts, by host name. */
export type HostPlaces = ReadonlyMap<string, { address: string; netns: string | null }>;

export function impairmentsText(i: LinkImpairments): string {
  const parts = [
    i.delayMs !== undefined ? `delay ${i.delayMs}ms` : '',
    i.jitterMs !== undefined ? `jitter ${i.jitterMs}ms` : '',
    i.rateBps !== undefined ? `rate ${rateText(i.rateBps)}` : '',
    i.lossPercent !== undefined ? `loss ${i.lossPercent}%` : '',
  ].filter(Boolean);
  return parts.join(', ');
}

function rateText(bps: number): string {
  for (const [unit, n] of [['gbit', 1e9], ['mbit', 1e6], ['kbit', 1e3]] as const) if (bps >= n && bps % n === 0) return `${bps / n}${unit}`;
  return `${bps}bit`;
}

/** A DOT string: quotes and backslashes escaped, line breaks as DOT's \n. */
const dotString = (s: string): string => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;

export function topologyDot(t: Topology, places?: HostPlaces): string {
  const lines = [`graph ${dotString(t.name)} {`, '  node [shape=box, style=rounded, fontname="sans-serif"];', '  edge [fontname="sans-serif", fontsize=10];'];
  for (const h of t.hosts) {
    const vms = t.vms.filter((v) => v.host === h.name).map((v) => `${v.name} (${formatBytes(v.memoryBytes)}, ${v.vps} VP${v.vps === 1 ? '' : 's'})`);
    const p = places?.get(h.name);
    const label = [h.name, ...(p ? [p.address] : []), ...(h.lps !== null ? [`${h.lps} LP${h.lps === 1 ? '' : 's'}`] : []), ...vms].join('\n');
    lines.push(`  ${dotString(h.name)} [label=${dotString(label)}];`);
  }
  for (const l of t.links) {
    const label = impairmentsText(l.impairments);
    lines.push(`  ${dotString(l.a)} -- ${dotString(l.b)}${label ? ` [label=${dotString(label)}]` : ''};`);
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

const xml = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export function topologySvg(t: Topology, places?: HostPlaces): string {
  const n = t.hosts.length;
  const lineH = 16;
  const boxes = t.hosts.map((h) => {
    const p = places?.get(h.name);
    const lines = [
      { text: h.name, bold: true },
      ...(p ? [{ text: `${p.address}${p.netns ? ` (${p.netns})` : ''}`, bold: false }] : []),
      ...(h.lps !== null ? [{ text: `${h.lps} LP${h.lps === 1 ? '' : 's'}${h.memoryBytes !== null ? `, ${formatBytes(h.memoryBytes)}` : ''}`, bold: false }] : []),
      ...t.vms.filter((v) => v.host === h.name).map((v) => ({ text: `▪ ${v.name}: ${formatBytes(v.memoryBytes)}, ${v.vps} VP${v.vps === 1 ? '' : 's'}, ${v.workload}`, bold: false })),
    ];
    return { h, lines, height: 14 + lines.length * lineH };
  });
  const maxH = Math.max(60, ...boxes.map((b) => b.height));
  // About 7 px per character at 12 px sans-serif: every box as wide as the widest line needs.
  const boxW = Math.max(150, ...boxes.flatMap((b) => b.lines.map((l) => l.text.length * 7 + 24)));
  const radius = n === 1 ? 0 : Math.max(160, (n * (boxW + 40)) / (2 * Math.PI));
  const cx = radius + boxW / 2 + 30;
  const cy = radius + maxH / 2 + 50;
  const width = Math.round(2 * cx);
  const height = Math.round(2 * cy);
  const at = boxes.map((_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, n);
    return { x: cx + radius * Math.cos(a), y: cy + radius * Math.sin(a) };
  });
  const idx = new Map(t.hosts.map((h, i) => [h.name, i]));
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `  <title>${xml(`cluster ${t.name}`)}</title>`,
    `  <text x="12" y="22" font-size="15" font-weight="bold">${xml(`cluster ${t.name}`)}</text>`,
  ];
  for (const l of t.links) {
    const a = at[idx.get(l.a)!]!;
    const b = at[idx.get(l.b)!]!;
    out.push(`  <line x1="${a.x.toFixed(1)}" y1="${a.y.toFixed(1)}" x2="${b.x.toFixed(1)}" y2="${b.y.toFixed(1)}" stroke="#555" stroke-width="2"/>`);
    const label = impairmentsText(l.impairments);
    if (label) out.push(`  <text x="${((a.x + b.x) / 2).toFixed(1)}" y="${((a.y + b.y) / 2 - 6).toFixed(1)}" text-anchor="middle" fill="#a33">${xml(label)}</text>`);
  }
  boxes.forEach((b, i) => {
    const p = at[i]!;
    const x = p.x - boxW / 2;
    const y = p.y - b.height / 2;
    out.push(`  <g>`);
    out.push(`    <rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${boxW}" height="${b.height}" rx="8" fill="#eef3fb" stroke="#2b5797" stroke-width="1.5"/>`);
    b.lines.forEach((line, k) => {
      out.push(`    <text x="${(x + 10).toFixed(1)}" y="${(y + 18 + k * lineH).toFixed(1)}"${line.bold ? ' font-weight="bold"' : ''}>${xml(line.text)}</text>`);
    });
    out.push(`  </g>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
