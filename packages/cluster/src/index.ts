/**
 * @hvlab/cluster — many hosts from one topology file (issue 11). So far: the topology file's
 * format and its checking decoder (topology.ts).
 */
export * from './topology.js';
