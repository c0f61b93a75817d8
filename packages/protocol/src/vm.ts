import { WORKLOAD_DATA_GPA, MAX_MEMORY_BYTES } from './layout.js';
/** VM states as WMI Msvm_ComputerSystem.EnabledState numbers (REFERENCE / ARCHITECTURE §6). */
export const EnabledState = {
  Running: 2,
  Off: 3,
  Stopping: 4,
  Saved: 6,
  Paused: 9,
  Starting: 10,
  Saving: 32773,
  Pausing: 32776,
  Resuming: 32777,
  /**
   * hvlab's own: the VM's configuration file cannot be used (cut short, hand-edited wrongly); the
   * reason is the VM's lastStateReason. Hyper-V has no such EnabledState (a VM whose config it
   * cannot read is simply missing from Get-VM), so this takes CIM_EnabledLogicalElement's
   * 1 = "Other", which CIM defines for a state described elsewhere (OtherEnabledState).
   */
  Invalid: 1,
} as const;
export type VmStateName = keyof typeof EnabledState;
export function vmStateName(n: number): VmStateName | 'Unknown' {
  for (const [k, v] of Object.entries(EnabledState)) if (v === n) return k as VmStateName;
  return 'Unknown';
}

export const WORKLOADS = ['idle', 'counter', 'spin', 'sleep', 'memdirty'] as const;
export type WorkloadName = (typeof WORKLOADS)[number];
export const DEFAULT_SLEEP_PERIOD_MS = 50;
export const DEFAULT_MEMDIRTY_BYTES = 16 * 1024 * 1024;

/**
 * "counter[:RATE]" (increments per second), "idle", "spin" (one CPU-bound task per VP),
 * "sleep[:MS]" (woken by a periodic timer every MS ms), "memdirty[:SIZE]" (QEMU's migration-test
 * guest over SIZE bytes from GPA 0x100000, e.g. 16M). Returns null when malformed.
 */
export function parseWorkload(spec: string): { name: WorkloadName; arg: number } | null {
  const m = /^([a-z]+)(?::([0-9]+[KMG]?))?$/i.exec(spec);
  if (!m) return null;
  const name = m[1] as WorkloadName;
  if (!(WORKLOADS as readonly string[]).includes(name)) return null;
  const text = m[2];
  if (text === undefined) return { name, arg: name === 'memdirty' ? DEFAULT_MEMDIRTY_BYTES : name === 'sleep' ? DEFAULT_SLEEP_PERIOD_MS : 0 };
  if (name === 'idle' || name === 'spin') return null;
  if (name === 'memdirty') {
    const bytes = parseSize(text);
    if (bytes === null || bytes < 4096 || bytes % 4096 !== 0) return null;
    return { name, arg: bytes };
  }
  if (!/^\d+$/.test(text)) return null;
  const arg = Number(text);
  if (name === 'counter' && (arg < 1 || arg > 1_000_000)) return null;
  if (name === 'sleep' && (arg < 1 || arg > 10_000)) return null;
  return { name, arg };
}
export const DEFAULT_COUNTER_RATE = 1000;

/** "64M", "1G", "2097152", "512K" -> bytes. Null when malformed. */
export function parseSize(text: string): number | null {
  const m = /^(\d+)([KMG]i?B?|B)?$/i.exec(text.trim());
  if (!m) return null;
  const unit = (m[2] ?? 'B').toUpperCase()[0];
  const mul = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1;
  const v = Number(m[1]) * mul;
  return Number.isSafeInteger(v) ? v : null;
}
export function formatBytes(n: number): string {
  if (n % 1024 ** 3 === 0) return `${n / 1024 ** 3}G`;
  if (n % 1024 ** 2 === 0) return `${n / 1024 ** 2}M`;
  if (n % 1024 === 0) return `${n / 1024}K`;
  return `${n}B`;
}

export const VM_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Processor settings limits (Set-VMProcessor): reserve and maximum in %, a relative weight. */
export const PROCESSOR_LIMITS = {
  reserve: { min: 0, max: 100 },
  maximum: { min: 1, max: 100 },
  weight: { min: 1, max: 10000 },
} as const;

/**
 * Why a workload does not fit the VM's memory, or null. memdirty's pages start at
 * WORKLOAD_DATA_GPA and must stay below the device area (the top quarter of guest memory); the
 * advice never points past the largest VM.
 */
/**
 * Why `spec` is not a workload parseWorkload takes: its name unknown, or (a known name) its
 * parameter out of range, said for that workload. Null when it is one.
 */
export function workloadProblem(spec: string): string | null {
  if (parseWorkload(spec) !== null) return null;
  const colon = spec.indexOf(':');
  const name = colon < 0 ? spec : spec.slice(0, colon);
  const whole = colon < 0 ? '' : spec.slice(colon + 1);
  const arg = whole.length > 40 ? `${whole.slice(0, 40)}…` : whole;
  const shown = spec.length > 60 ? `${spec.slice(0, 60)}…` : spec;
  switch (name) {
    case 'idle':
    case 'spin':
      return `workload "${shown}": ${name} takes no parameter`;
    case 'counter':
      return `workload "${shown}": counter's rate "${arg}" is not a whole number of counts a second from 1 to 1000000`;
    case 'sleep':
      return `workload "${shown}": sleep's period "${arg}" is not a whole number of milliseconds from 1 to 10000`;
    case 'memdirty':
      return `workload "${shown}": memdirty's size "${arg}" is not a size of whole 4 KiB pages, such as 4K, 8M or 1G`;
    default:
      return `workload "${shown}" is unknown: use idle, counter[:RATE], spin, sleep[:MS] or memdirty[:SIZE]`;
  }
}

export function workloadFitError(workload: string, memoryBytes: number): string | null {
  const wl = parseWorkload(workload);
  if (!wl) return workloadProblem(workload);
  if (wl.name !== 'memdirty' || WORKLOAD_DATA_GPA + wl.arg <= memoryBytes - memoryBytes / 4) return null;
  const needs = `workload "${workload}" needs ${formatBytes(WORKLOAD_DATA_GPA + wl.arg)} of guest memory below the device area (the top quarter)`;
  const MiB = 1024 * 1024;
  const least = Math.ceil(((WORKLOAD_DATA_GPA + wl.arg) * 4) / 3 / MiB) * MiB;
  if (least > MAX_MEMORY_BYTES) {
    const most = MAX_MEMORY_BYTES - MAX_MEMORY_BYTES / 4 - WORKLOAD_DATA_GPA;
    return `${needs}, more than the largest VM (${formatBytes(MAX_MEMORY_BYTES)}) has: use at most memdirty:${formatBytes(most)}`;
  }
  return `${needs}; give the VM --memory ${formatBytes(least)} or more`;
}

