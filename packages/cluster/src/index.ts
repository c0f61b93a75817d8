/**
 * @hvlab/cluster — many hosts from one topology file (issue 11): the topology file's format and
 * its checking decoder (topology.ts), clusters of hosts in network namespaces or on loopback
 * (lab.ts, netns.ts), the link layer (link.ts) held by the cluster's fabric process (fabric.ts,
 * fabric-main.ts), hosts of other machines joining (lab.ts `joinHost`), pictures (graph.ts), and
 * experiments run on a cluster with their reports and hand-written SVG plots (experiment.ts, plot.ts).
 */
export * from './topology.js';
export * from './lab.js';
export * from './netns.js';
export * from './graph.js';
export * from './link.js';
export * from './fabric.js';
export * from './experiment.js';
export * from './plot.js';
export * from './yaml-check.js';
export * from './provenance.js';
