/**
 * VM configuration as VMMS persists it: one JSON file per VM, HVLAB_HOME/vms/NAME.json.
 *
 * A config file is input like any other (a user may edit it, a crash or a full disk may cut it),
 * so it is read through one checking decoder, `decodeVmConfig`: every field, its type and range,
 * no unknown field, a name equal to the file's name and an id that is a UUID (it names the VM's
 * sockets). A file that fails is reported with its reason, kept, and never overwritten.
 *
 * Writes are atomic and durable: a temporary file in the same directory is written, fsynced and
 * renamed over the config (or linked, for a new VM, which fails rather than overwrite), then the
 * directory is fsynced. A write that fails removes its temporary file and throws StorageFailed,
 * so the caller can leave memory as it was: memory and disk never disagree.
 */
import { randomUUID } from 'node:crypto';
import * as nodeFs from 'node:fs';
import { join } from 'node:path';
import {
  decodeDeviceEntries, defaultDevices, DEVICE_CLASSES, type DeviceEntry,
  MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, VM_ID_RE, MAX_VPS_PER_PARTITION, VM_NAME_RE, WORKLOAD_DATA_GPA, parseSize, parseWorkload, formatBytes, workloadFitError, PROCESSOR_LIMITS,
} from '@hvlab/protocol';
export { workloadFitError, PROCESSOR_LIMITS };
import { describeIoError, FileShapeError, readRegularFile } from '@hvlab/runtime';

export const VM_CONFIG_VERSION = 1;

/** The integration services a pre-device-model config could switch off. */
export const IC_CONFIG_NAMES = ['heartbeat', 'shutdown', 'timesync', 'kvp'] as const;
export type IcConfigName = (typeof IC_CONFIG_NAMES)[number];


export interface VmConfig {
  version: number;
  id: string;
  name: string;
  memoryBytes: number;
  vps: number;
  workload: string;
  processor: { reserve: number; maximum: number; weight: number };
  /** The VM's devices (protocol/src/devices.ts); absent in configs written before the device model. */
  devices?: DeviceEntry[];
  /** Configs written before the device model: which integration services are offered (absent = all). */
  integrationServices?: Partial<Record<IcConfigName, boolean>>;
  /** Seconds the firmware's real-time clock is off host time at power-on (a clock-skew knob). */
  rtcOffsetS?: number;
  /**
   * What the VM's device instance ids derive from (deviceInstanceId), when not its id: a VM
   * started from a booted warm worker keeps the instance ids that worker's guest was offered (its
   * template's seed), as a clone keeps its snapshot's devices; saves and moves keep them.
   */
  instanceSeed?: string;
  createdAt: string;
}

/**
 * The VM's devices: its `devices` list, or for a config written before the device model the
 * default devices with the integration services it had switched off disabled.
 */
export function vmDevices(c: Pick<VmConfig, 'devices' | 'integrationServices'>): DeviceEntry[] {
  if (c.devices) return c.devices.map((d) => ({ ...d }));
  const ics = c.integrationServices ?? {};
  return defaultDevices().map((d) => (DEVICE_CLASSES[d.class].integrationService ? { ...d, enabled: ics[d.class as IcConfigName] !== false } : d));
}

/** A config with one integration service switched on or off (written in the device model's form). */
export function withIntegrationService(c: VmConfig, service: string, on: boolean): VmConfig {
  const devices = vmDevices(c).map((d) => (d.class === service ? { ...d, enabled: on } : d));
  const { integrationServices: _legacy, ...rest } = c;
  return { ...rest, devices };
}

export class MgmtFailure extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

const invalid = (m: string): MgmtFailure => new MgmtFailure('InvalidArgument', m);

export const MAX_RTC_OFFSET_S = 10 * 365 * 86400;

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
  const fit = workloadFitError(workload, memoryBytes);
  if (fit) throw invalid(fit);
  const rtcText = args.rtcOffset === undefined ? '0' : String(args.rtcOffset);
  const rtcOffsetS = Number(rtcText);
  if (!/^-?\d+$/.test(rtcText) || Math.abs(rtcOffsetS) > MAX_RTC_OFFSET_S) throw invalid(`--rtc-offset ${rtcText} is invalid: whole seconds within ±10 years`);
  // The caller's id (checked by the management API's decoder) or a new one.
  const id = typeof args.id === 'string' && VM_ID_RE.test(args.id) ? args.id.toLowerCase() : randomUUID();
  return {
    version: VM_CONFIG_VERSION,
    id,
    name,
    memoryBytes,
    vps,
    workload,
    processor: { reserve: 0, maximum: 100, weight: 100 },
    devices: defaultDevices(),
    rtcOffsetS,
    createdAt: new Date().toISOString(),
  };
}

// ---- the checking decoder ----------------------------------------------------------------------

/** A value as an error message shows it (never calls a method of the value). */
export function shown(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return `a ${typeof v}`;
}

class ConfigFieldError extends Error {}

function plainMap(v: unknown, path: string, keys: readonly string[]): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ConfigFieldError(`${path} is ${shown(v)}, not a map`);
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) throw new ConfigFieldError(`${path} is not a plain map`);
  for (const k of Object.keys(v)) {
    if (!keys.includes(k)) throw new ConfigFieldError(`${path === 'the file' ? 'field' : `${path} has field`} "${k.slice(0, 40)}", which is unknown`);
  }
  return v as Record<string, unknown>;
}

function wholeNumber(o: Record<string, unknown>, k: string, path: string, min: number, max: number, what: string): number {
  const v = o[k];
  if (v === undefined) throw new ConfigFieldError(`field "${path}" is missing`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new ConfigFieldError(`field "${path}" is ${shown(v)}: ${what}`);
  return v;
}

function text(o: Record<string, unknown>, k: string, max = 256): string {
  const v = o[k];
  if (v === undefined) throw new ConfigFieldError(`field "${k}" is missing`);
  if (typeof v !== 'string' || v.length > max) throw new ConfigFieldError(`field "${k}" is ${shown(v)}, not a string of at most ${max} characters`);
  return v;
}

/**
 * Checks a parsed VM config (from `NAME.json`) and returns a fresh copy, or why it is invalid.
 * `fileName` is the file's name without `.json`; the config's name must equal it.
 */
export function decodeVmConfig(v: unknown, fileName: string): VmConfig | string {
  try {
    const o = plainMap(v, 'the file', ['version', 'id', 'name', 'memoryBytes', 'vps', 'workload', 'processor', 'devices', 'integrationServices', 'rtcOffsetS', 'instanceSeed', 'createdAt']);
    if (o.version === undefined) throw new ConfigFieldError('field "version" is missing');
    if (o.version !== VM_CONFIG_VERSION) throw new ConfigFieldError(`field "version" is ${shown(o.version)}; this host reads version ${VM_CONFIG_VERSION}`);
    const id = text(o, 'id', 64);
    if (!VM_ID_RE.test(id)) throw new ConfigFieldError(`field "id" is ${shown(id)}, not a UUID`);
    const name = text(o, 'name', 64);
    if (!VM_NAME_RE.test(name)) throw new ConfigFieldError(`field "name" is ${shown(name)}, not a VM name (1-63 letters, digits, '.', '_' or '-')`);
    if (name !== fileName) throw new ConfigFieldError(`field "name" says "${name}" but the file is named "${fileName}"`);
    const memoryBytes = wholeNumber(o, 'memoryBytes', 'memoryBytes', MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, `not a size from ${formatBytes(MIN_MEMORY_BYTES)} to ${formatBytes(MAX_MEMORY_BYTES)}`);
    if (memoryBytes % 4096 !== 0) throw new ConfigFieldError(`field "memoryBytes" is ${memoryBytes}, not a multiple of 4 KiB`);
    const vps = wholeNumber(o, 'vps', 'vps', 1, MAX_VPS_PER_PARTITION, `a VM has 1 to ${MAX_VPS_PER_PARTITION} virtual processors`);
    const workload = text(o, 'workload', 64);
    const fit = workloadFitError(workload, memoryBytes);
    if (fit) throw new ConfigFieldError(`field "workload": ${fit}`);
    if (o.processor === undefined) throw new ConfigFieldError('field "processor" is missing');
    const p = plainMap(o.processor, 'processor', ['reserve', 'maximum', 'weight']);
    const range = (k: keyof typeof PROCESSOR_LIMITS): number =>
      wholeNumber(p, k, `processor.${k}`, PROCESSOR_LIMITS[k].min, PROCESSOR_LIMITS[k].max, `a whole number from ${PROCESSOR_LIMITS[k].min} to ${PROCESSOR_LIMITS[k].max}`);
    const processor = { reserve: range('reserve'), maximum: range('maximum'), weight: range('weight') };
    if (processor.reserve > processor.maximum) throw new ConfigFieldError(`field "processor.reserve" (${processor.reserve}%) is above processor.maximum (${processor.maximum}%)`);
    const createdAt = text(o, 'createdAt', 64);
    if (!Number.isFinite(Date.parse(createdAt))) throw new ConfigFieldError(`field "createdAt" is ${shown(createdAt)}, not a date`);
    const out: VmConfig = { version: VM_CONFIG_VERSION, id, name, memoryBytes, vps, workload, processor, createdAt };
    if (o.integrationServices !== undefined) {
      const ics = plainMap(o.integrationServices, 'integrationServices', IC_CONFIG_NAMES);
      const copy: Partial<Record<IcConfigName, boolean>> = {};
      for (const k of IC_CONFIG_NAMES) {
        if (ics[k] === undefined) continue;
        if (typeof ics[k] !== 'boolean') throw new ConfigFieldError(`field "integrationServices.${k}" is ${shown(ics[k])}, not true or false`);
        copy[k] = ics[k];
      }
      out.integrationServices = copy;
    }
    if (o.devices !== undefined) {
      if (o.integrationServices !== undefined) throw new ConfigFieldError('fields "devices" and "integrationServices" are both given; "devices" replaces "integrationServices"');
      const d = decodeDeviceEntries(o.devices, 'devices');
      if (typeof d === 'string') throw new ConfigFieldError(`field ${d}`);
      out.devices = d;
    }
    if (o.rtcOffsetS !== undefined) out.rtcOffsetS = wholeNumber(o, 'rtcOffsetS', 'rtcOffsetS', -MAX_RTC_OFFSET_S, MAX_RTC_OFFSET_S, 'whole seconds within ±10 years');
    if (o.instanceSeed !== undefined) {
      const seed = text(o, 'instanceSeed', 64);
      if (!VM_ID_RE.test(seed)) throw new ConfigFieldError(`field "instanceSeed" is ${shown(seed)}, not a UUID`);
      out.instanceSeed = seed;
    }
    // Keep the file's key order, so a rewrite of an unchanged config is byte for byte the same.
    return Object.fromEntries(Object.keys(o).map((k) => [k, out[k as keyof VmConfig]])) as unknown as VmConfig;
  } catch (e) {
    if (e instanceof ConfigFieldError) return e.message;
    throw e;
  }
}

// ---- the store ---------------------------------------------------------------------------------

/** The file operations the store uses (node:fs; tests inject failing ones). */
export type ConfigIo = Pick<typeof nodeFs,
  'openSync' | 'writeSync' | 'fsyncSync' | 'closeSync' | 'renameSync' | 'linkSync' | 'unlinkSync' | 'rmSync' | 'readdirSync' | 'mkdirSync' | 'existsSync' | 'fstatSync' | 'readSync'>;

/** A VM's config is a few KiB; a larger file (or one that is no file) is not one. */
const VM_CONFIG_MAX_BYTES = 1024 * 1024;

export interface InvalidVmConfig {
  /** The VM name the file stands for (its name without `.json`). */
  name: string;
  file: string;
  reason: string;
}

export type LoadedVmConfig = { ok: true; config: VmConfig } | { ok: false; reason: string } | null;

const TMP_MARK = '.tmp-';
/**
 * A temporary file of `write`: NAME.json.tmp-PID-SEQ. Anchored at the end, so that a VM whose name
 * holds ".json.tmp-" (a valid name: its file still ends in .json) is not taken for one and removed
 * at the next load, as it was.
 */
const TMP_FILE_RE = /\.json\.tmp-\d+-\d+$/;

export class ConfigStore {
  private seq = 0;

  constructor(readonly dir: string, private readonly io: ConfigIo = nodeFs) {
    io.mkdirSync(dir, { recursive: true });
  }

  fileOf(name: string): string {
    return join(this.dir, `${name}.json`);
  }

  /** One VM's config: decoded, invalid with a reason, or null when there is no such file. */
  load(name: string): LoadedVmConfig {
    const file = this.fileOf(name);
    let raw: string;
    try {
      raw = readRegularFile(file, VM_CONFIG_MAX_BYTES, this.io).toString('utf8');
    } catch (e) {
      if (e instanceof FileShapeError) return { ok: false, reason: e.message.slice(file.length + 1) };
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      return { ok: false, reason: `it cannot be read: ${describeIoError(e).text}` };
    }
    if (raw.trim() === '') return { ok: false, reason: 'it is empty' };
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      return { ok: false, reason: `it is not JSON (${(e as Error).message})` };
    }
    const c = decodeVmConfig(v, name);
    return typeof c === 'string' ? { ok: false, reason: c } : { ok: true, config: c };
  }

  /**
   * Every `*.json` in the directory: the valid configs, and the invalid files with the reason
   * (read only: nothing is removed or rewritten). A second file with an id already taken is
   * invalid (a copied config would share the first VM's sockets). Temporary files of a writer
   * that died are removed.
   */
  loadAll(): { valid: VmConfig[]; invalid: InvalidVmConfig[] } {
    const valid: VmConfig[] = [];
    const invalidOnes: InvalidVmConfig[] = [];
    const ids = new Map<string, string>();
    for (const f of this.io.readdirSync(this.dir).sort()) {
      if (TMP_FILE_RE.test(f)) {
        // Writes are synchronous, so no temporary file here is in flight: it is a dead writer's.
        try { this.io.rmSync(join(this.dir, f), { force: true }); } catch { /* harmless */ }
        continue;
      }
      if (!f.endsWith('.json')) continue;
      const name = f.slice(0, -'.json'.length);
      const got = this.load(name);
      if (got === null) continue;
      if (!got.ok) {
        invalidOnes.push({ name, file: join(this.dir, f), reason: got.reason });
      } else if (ids.has(got.config.id)) {
        invalidOnes.push({ name, file: join(this.dir, f), reason: `field "id" is ${got.config.id}, the id of VM "${ids.get(got.config.id)}" (a copied config needs a new id)` });
      } else {
        ids.set(got.config.id, name);
        valid.push(got.config);
      }
    }
    return { valid, invalid: invalidOnes };
  }

  /** Replaces (or creates) a VM's config atomically; throws StorageFailed and changes nothing on failure. */
  save(c: VmConfig): void {
    this.write(c, true);
  }

  /** Creates a new VM's config; never overwrites a file of that name (AlreadyExists). */
  create(c: VmConfig): void {
    this.write(c, false);
  }

  /** Removes exactly `NAME.json` (a file that is already gone is fine). */
  remove(name: string): void {
    const file = this.fileOf(name);
    // Exactly a file: a directory in its place (listed as an Invalid VM) is not hvlab's to remove.
    let isDir = false;
    try {
      isDir = nodeFs.lstatSync(file).isDirectory();
    } catch { /* gone: fine */ }
    if (isDir) throw new MgmtFailure('InvalidState', `${file} is a directory, not a configuration hvlab wrote: it is left as it is (remove it yourself to forget VM "${name}")`);
    try {
      this.io.rmSync(file, { force: true });
    } catch (e) {
      throw new MgmtFailure('StorageFailed', `could not remove the configuration of VM "${name}" at ${file}: ${describeIoError(e).text}`);
    }
    this.syncDir();
  }

  private write(c: VmConfig, replace: boolean): void {
    const file = this.fileOf(c.name);
    const tmp = `${file}${TMP_MARK}${process.pid}-${++this.seq}`;
    let fd: number | null = null;
    try {
      fd = this.io.openSync(tmp, 'wx', 0o644);
      const buf = Buffer.from(JSON.stringify(c, null, 2) + '\n', 'utf8');
      for (let off = 0; off < buf.length;) {
        const n = this.io.writeSync(fd, buf, off, buf.length - off);
        if (n <= 0) throw Object.assign(new Error('EIO: write wrote nothing'), { code: 'EIO' });
        off += n;
      }
      this.io.fsyncSync(fd);
      this.io.closeSync(fd);
      fd = null;
      if (replace) {
        this.io.renameSync(tmp, file);
      } else {
        // link() fails with EEXIST instead of replacing: a file of that name, valid or not, stays.
        this.io.linkSync(tmp, file);
        this.io.unlinkSync(tmp);
      }
    } catch (e) {
      if (fd !== null) {
        try { this.io.closeSync(fd); } catch { /* closing is all we can do */ }
      }
      try { this.io.rmSync(tmp, { force: true }); } catch { /* loadAll removes it next time */ }
      if (!replace && (e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MgmtFailure('AlreadyExists', `a VM config for "${c.name}" already exists at ${file}`);
      }
      throw new MgmtFailure('StorageFailed', `could not write the configuration of VM "${c.name}" to ${file}: ${describeIoError(e).text}`);
    }
    this.syncDir();
  }

  /**
   * Makes the rename durable. The new file is already in place when this runs, so a failure here
   * is not reported as a failed write (memory must follow what the directory shows); a disk that
   * fails directory fsyncs fails the next file write too.
   */
  private syncDir(): void {
    let fd: number | null = null;
    try {
      fd = this.io.openSync(this.dir, 'r');
      this.io.fsyncSync(fd);
    } catch { /* see above */ } finally {
      if (fd !== null) {
        try { this.io.closeSync(fd); } catch { /* nothing more to do */ }
      }
    }
  }
}
