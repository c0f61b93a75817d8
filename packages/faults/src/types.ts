/**
 * The nemesis's API as its clients (the CLI, the chaos runner, tests) see it: a fault is asked for
 * by kind, target and duration (`FaultRequest`), and from then on exists as a `FaultRecord` that
 * says what it hit, when it started and ended, and why it ended.
 *
 * Targets (resolved by the nemesis against the cluster as it is at injection time; a selector's
 * pick is drawn from the request's seed, so the same seed picks the same members):
 *   vm:NAME            one VM (its host is found)
 *   host:NAME          one host
 *   host-of:VM         the host a VM runs on ("the primary" of that VM)
 *   link:A-B           the link between hosts A and B
 *   cluster            every host (partition faults)
 *   vms:SEL, hosts:SEL a selection, SEL one of one | minority | majority | all
 * Process faults (kill, pause) take a `role`: partition (default for VMs), vmwp, root (default for
 * hosts) or hypervisor; `vm:web` with role root is the root of web's host.
 */
import type { FaultEndReason, FaultKind, ProcessRole, VmbusFaultCounters } from '@hvlab/protocol';

export const TARGET_SELECTORS = ['one', 'minority', 'majority', 'all'] as const;
export type TargetSelector = (typeof TARGET_SELECTORS)[number];

export const PARTITION_SHAPES = ['one', 'majority', 'ring', 'bridge', 'minority-third'] as const;
export type PartitionShape = (typeof PARTITION_SHAPES)[number];

export interface FaultRequest {
  kind: FaultKind;
  target: string;
  /** Process faults: which process of the target. */
  role?: ProcessRole;
  /** How long (ms); instantaneous kinds (kill, bitflip) take 0 or a window to measure recovery in. */
  forMs: number;
  /**
   * Per kind:
   *   kill: restart (boolean: a killed partition's or VMWP's VM is started again at the end)
   *   vmbus: channel, drop, delay, delayMs, duplicate, reorder, corrupt, signalDrop, signalDelay, signalDelayMs
   *   interrupt-delay: delayMs · clock: offsetMs, skewPpm · vp-stall: vps ("0,1" or absent: all)
   *   lp-shrink: lps · link: delayMs, jitterMs, rateBps, lossPercent, cut (boolean)
   *   partition: shape (PartitionShape) · bitflip: gpa, mask (absent gpa: a page of the workload's data)
   */
  params?: Record<string, unknown>;
  /** An experiment's or a CLI session's name: its faults end when it stops renewing its lease. */
  owner?: string | null;
  /** Draws (a selector's pick, a vmbus fault's fates) come from this seed (default: from the id). */
  seed?: number;
  /** A caller's id for the fault (default: the nemesis numbers them f1, f2, …). */
  id?: string;
}

/** One process a fault hit. */
export interface FaultProcess {
  host: string;
  role: ProcessRole;
  vm: string | null;
  pid: number;
}

export interface FaultResolved {
  /** One line: what was hit ("partition of web on h1", "links h1-h2, h1-h3"). */
  summary: string;
  hosts: string[];
  vms: Array<{ host: string; vm: string }>;
  processes: FaultProcess[];
  links: Array<[string, string]>;
}

export type FaultState = 'active' | 'ended' | 'failed';

export interface FaultRecord {
  id: string;
  kind: FaultKind;
  target: string;
  role: ProcessRole | null;
  params: Record<string, unknown>;
  owner: string | null;
  seed: number;
  forMs: number;
  resolved: FaultResolved;
  state: FaultState;
  /** Epoch ms. */
  startedAt: number;
  /** When it is due to end (epoch ms). */
  endsAt: number;
  endedAt: number | null;
  endReason: FaultEndReason | null;
  /** Why it failed to start (state failed), or what went wrong undoing it. */
  error: string | null;
  /** What the enforcer said it did (e.g. the channels a vmbus fault wraps, counters at the end). */
  effect: Record<string, unknown> | null;
  /**
   * A vmbus fault's counters per VM (`VM@HOST`): what its worker counted, so far (`fault list`
   * asks the roots while it is active) or at its end. Absent: none known (another kind, or no
   * answer yet).
   */
  counters?: Record<string, VmbusFaultCounters>;
  /**
   * What of its target vanished while it went on (a VM of several turned off or restarted, one of
   * several paused processes gone): the fault no longer acts there. Absent: nothing.
   */
  gone?: string[];
  /**
   * Held by a host, not by the nemesis (host-held.ts): an LP shrink set past it, or one that names
   * no fault. `fault list` shows it so marked; `fault clear` without an id ends it. Absent: the
   * nemesis's own.
   */
  unheld?: true;
}

/** How long an owner's lease lasts without a renewal (ms); owners renew every second. */
export const OWNER_LEASE_MS = 5000;
export const OWNER_RENEW_MS = 1000;
