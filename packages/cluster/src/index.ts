/**
 * @hvlab/cluster — many hosts from one topology file (issue 11). So far: the topology file's
 * format and its checking decoder (topology.ts), and clusters of hosts side by side on this
 * machine's loopback (lab.ts).
 */
export * from './topology.js';
export * from './lab.js';
export * from './netns.js';
export * from './graph.js';
export * from './link.js';
export * from './fabric.js';
