/**
 * An incoming migration's record on disk (HOME/migrations/incoming/NAME.json, mode 0600), from its
 * set-up until its commit or its drop: what a root restarted meanwhile needs to take the attempt
 * over from its worker, which runs on through the restart as every VM's worker does.
 *
 * A restarted root used to find a worker whose VM it had no config for (the config is written by
 * the commit) and kill it: the move failed, and during post-copy, whose guest already ran here with
 * its pages split between the hosts, the VM was lost. With the record the new root re-attaches the
 * worker as the attempt's, and the source's commit, sent again, finds it.
 *
 * The record holds the pair credential the set-up came with (the source's later requests must carry
 * it), hence the file's mode, as the member secret's. It is read only at a root's start, by a
 * checking decoder: anything else found there is removed (and the worker, unclaimed, stopped).
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CLUSTER_HOST_RE, MEMBER_SECRET_RE, MIG_ID_RE, decodeMigrationOptions, type MigrationOptions } from '@hvlab/protocol';
import { readRegularFile, writeFileAtomic, makeDirs } from '@hvlab/runtime';
import { decodeVmConfig, type VmConfig } from './config.js';

/** The most a record may have (a VM's config is at most 64 KiB). */
export const INCOMING_RECORD_MAX_BYTES = 128 * 1024;
const RECORD_VERSION = 1;

export interface IncomingRecord {
  mig: string;
  from: string;
  /** The pair credential of the set-up (Incoming.auth). */
  auth: string;
  config: VmConfig;
  options: MigrationOptions;
  startedAt: number;
  /** The fabric's port that opens the worker's stream socket to the source, once it is open, and that socket's own port. */
  exposed: number | null;
  streamPort: number | null;
}

export function incomingDir(home: string): string {
  return join(home, 'migrations', 'incoming');
}

function fileOf(home: string, name: string): string {
  return join(incomingDir(home), `${name}.json`);
}

/** A record read back (a file: checked, never trusted), or why it is not one. */
export function decodeIncomingRecord(v: unknown, name: string): IncomingRecord | string {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'it is not an object';
  const o = v as Record<string, unknown>;
  if (o.version !== RECORD_VERSION) return `its version is not ${RECORD_VERSION}`;
  if (typeof o.mig !== 'string' || !MIG_ID_RE.test(o.mig)) return 'it has no migration id';
  if (typeof o.from !== 'string' || !CLUSTER_HOST_RE.test(o.from)) return 'it names no source host';
  if (typeof o.auth !== 'string' || !MEMBER_SECRET_RE.test(o.auth)) return 'it has no credential';
  const config = decodeVmConfig(o.config, name);
  if (typeof config === 'string') return `its VM config: ${config}`;
  if (config.name !== name) return `its VM is "${config.name}", not "${name}" as its file says`;
  const options = decodeMigrationOptions(o.options);
  if (typeof options === 'string') return `its options: ${options}`;
  if (typeof o.startedAt !== 'number' || !Number.isSafeInteger(o.startedAt) || o.startedAt < 0) return 'it has no start time';
  const port = (k: 'exposed' | 'streamPort'): number | null | undefined => (o[k] === null ? null : typeof o[k] === 'number' && Number.isInteger(o[k]) && (o[k] as number) >= 1 && (o[k] as number) <= 65535 ? (o[k] as number) : undefined);
  const exposed = port('exposed');
  const streamPort = port('streamPort');
  if (exposed === undefined) return 'its fabric port is not a port';
  if (streamPort === undefined) return 'its stream port is not a port';
  return { mig: o.mig, from: o.from, auth: o.auth, config, options, startedAt: o.startedAt, exposed, streamPort };
}

/** Writes (or replaces) VM `rec.config.name`'s record; throws the file system's error. */
export function writeIncomingRecord(home: string, rec: IncomingRecord): void {
  makeDirs(incomingDir(home), 0o700);
  writeFileAtomic(fileOf(home, rec.config.name), `${JSON.stringify({ version: RECORD_VERSION, ...rec })}\n`, { mode: 0o600 });
}

/** VM `name`'s record, or why there is none to take (missing: null). */
export function readIncomingRecord(home: string, name: string): IncomingRecord | string | null {
  let raw: Buffer;
  try {
    raw = readRegularFile(fileOf(home, name), INCOMING_RECORD_MAX_BYTES);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? null : (e as Error).message;
  }
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    return `it is not JSON (${(e as Error).message})`;
  }
  return decodeIncomingRecord(v, name);
}

export function removeIncomingRecord(home: string, name: string): void {
  try {
    rmSync(fileOf(home, name), { force: true, recursive: true });
  } catch { /* a file that cannot go is read again, checked, at the next start */ }
}

/** The VM names that have a record (or something else) in the directory. */
export function incomingRecordNames(home: string): string[] {
  try {
    return readdirSync(incomingDir(home)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -'.json'.length));
  } catch {
    return [];
  }
}
