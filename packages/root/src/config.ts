/**
 * VM configuration as VMMS persists it: one JSON file per VM under HVLAB_HOME/vms. Versioned and
 * written atomically (temp file + rename) so a crash never leaves half a config.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, MAX_VPS_PER_PARTITION, VM_NAME_RE, WORKLOAD_DATA_GPA, parseSize, parseWorkload, formatBytes,
} from '@hvlab/protocol';

export const VM_CONFIG_VERSION = 1;

export interface VmConfig {
  version: number;
  id: string;
  name: string;
  memoryBytes: number;
  vps: number;
  workload: string;
  processor: { reserve: number; maximum: number; weight: number };
  /** Which integration services are offered (absent = all, as in configs written before them). */
  integrationServices?: Partial<Record<'heartbeat' | 'shutdown' | 'timesync' | 'kvp', boolean>>;
  /** Seconds the firmware's real-time clock is off host time at power-on (a clock-skew knob). */
  rtcOffsetS?: number;
  createdAt: string;
}

export class MgmtFailure extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

const invalid = (m: string): MgmtFailure => new MgmtFailure('InvalidArgument', m);

export function validateName(name: unknown): string {
  if (typeof name !== 'string' || !VM_NAME_RE.test(name)) {
    throw invalid(`VM name ${JSON.stringify(name)} is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

export function buildConfig(args: Record<string, unknown>): VmConfig {
  const name = validateName(args.name);
  const memText = args.memory === undefined ? '64M' : String(args.memory);
  const memoryBytes = parseSize(memText);
  if (memoryBytes === null) throw invalid(`memory size "${memText}" is invalid: use a number with an optional K, M or G suffix, e.g. 64M`);
  if (memoryBytes % 4096 !== 0) throw invalid(`memory size "${memText}" is not a multiple of 4 KiB`);
  if (memoryBytes < MIN_MEMORY_BYTES || memoryBytes > MAX_MEMORY_BYTES) {
    throw invalid(`memory size "${memText}" is outside ${formatBytes(MIN_MEMORY_BYTES)}-${formatBytes(MAX_MEMORY_BYTES)}`);
  }
  const vpsText = args.vps === undefined ? '1' : String(args.vps);
  const vps = Number(vpsText);
  if (!/^\d+$/.test(vpsText) || vps < 1 || vps > MAX_VPS_PER_PARTITION) throw invalid(`--vps ${vpsText} is invalid: a VM has 1 to ${MAX_VPS_PER_PARTITION} virtual processors`);
  const workload = args.workload === undefined ? 'counter' : String(args.workload);
  const wl = parseWorkload(workload);
  if (!wl) throw invalid(`workload "${workload}" is unknown: use idle, counter[:RATE], spin, sleep[:MS] or memdirty[:SIZE]`);
  if (wl.name === 'memdirty' && WORKLOAD_DATA_GPA + wl.arg > memoryBytes - memoryBytes / 4) {
    throw invalid(`workload "${workload}" needs ${formatBytes(WORKLOAD_DATA_GPA + wl.arg)} of guest memory below the device area (the top quarter); give the VM more --memory`);
  }
  const rtcText = args.rtcOffset === undefined ? '0' : String(args.rtcOffset);
  const rtcOffsetS = Number(rtcText);
  if (!/^-?\d+$/.test(rtcText) || Math.abs(rtcOffsetS) > 10 * 365 * 86400) throw invalid(`--rtc-offset ${rtcText} is invalid: whole seconds within ±10 years`);
  return {
    version: VM_CONFIG_VERSION,
    id: randomUUID(),
    name,
    memoryBytes,
    vps,
    workload,
    processor: { reserve: 0, maximum: 100, weight: 100 },
    integrationServices: { heartbeat: true, shutdown: true, timesync: true, kvp: true },
    rtcOffsetS,
    createdAt: new Date().toISOString(),
  };
}

export class ConfigStore {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }
  private file(name: string): string {
    return join(this.dir, `${name}.json`);
  }
  loadAll(onBad: (file: string, why: string) => void): VmConfig[] {
    const out: VmConfig[] = [];
    for (const f of readdirSync(this.dir)) {
      if (!f.endsWith('.json')) continue;
      try {
        const c = JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as VmConfig;
        if (c.version !== VM_CONFIG_VERSION) throw new Error(`config version ${c.version} is not ${VM_CONFIG_VERSION}`);
        validateName(c.name);
        out.push(c);
      } catch (e) {
        onBad(f, (e as Error).message);
      }
    }
    return out;
  }
  save(c: VmConfig): void {
    const tmp = `${this.file(c.name)}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(c, null, 2) + '\n');
    renameSync(tmp, this.file(c.name));
  }
  remove(name: string): void {
    rmSync(this.file(name), { force: true });
  }
}
