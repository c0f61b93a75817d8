/**
 * Pictures of a topology: DOT with a node per host (its LPs, VMs and, when up, its address) and an
 * edge per link labelled with its impairments; SVG with a box per host, a line per link and every
 * name in a text element, well-formed enough to open in a browser.
 */
import { expect } from 'chai';
import { parseTopology, topologyDot, topologySvg } from '../src/index.js';

const T = parseTopology(`name: lab.1
hosts:
  h1: { lps: 2 }
  h2: {}
  h3: {}
links:
  - endpoints: [h1, h2]
    delay: 20ms
    rate: 100mbit
  - endpoints: [h2, h3]
vms:
  web: { host: h1, memory: 64M, vps: 2 }
  db: { host: h3, workload: idle }
`);

describe('cluster pictures', () => {
  it('DOT: a node per host with its LPs, VMs and address, an edge per link with its impairments', () => {
    const dot = topologyDot(T, new Map([['h1', { address: '10.1.2.10', netns: 'hvlab-abcd-h1' }]]));
    expect(dot.startsWith('graph "lab.1" {')).to.equal(true);
    expect(dot).to.include('"h1" [label="h1\\n10.1.2.10\\n2 LPs\\nweb (64M, 2 VPs)"];');
    expect(dot).to.include('"h3" [label="h3\\ndb (64M, 1 VP)"];');
    expect(dot).to.include('"h1" -- "h2" [label="delay 20ms, rate 100mbit"];');
    expect(dot).to.include('"h2" -- "h3";');
    expect(dot.trimEnd().endsWith('}')).to.equal(true);
  });

  it('SVG: a box per host, a line per link, every name as text, tags balanced', () => {
    const svg = topologySvg(T);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).to.equal(true);
    expect(svg.trimEnd().endsWith('</svg>')).to.equal(true);
    expect(svg.match(/<rect /g)).to.have.length(3);
    expect(svg.match(/<line /g)).to.have.length(2);
    expect(svg.match(/<g>/g)!.length).to.equal(svg.match(/<\/g>/g)!.length);
    for (const s of ['>h1<', '>h2<', '>h3<', 'web: 64M, 2 VPs, counter', 'db: 64M, 1 VP, idle', '>delay 20ms, rate 100mbit<', 'cluster lab.1']) expect(svg, s).to.include(s);
    // Text is escaped.
    const amp = topologySvg(parseTopology('name: a_b\nhosts: { h1: {} }\n'));
    expect(amp).to.not.match(/<text[^>]*>[^<]*[<>&][^<]*<\/text>/);
  });
});
