/**
 * Heartbeat integration service (REFERENCE.md "Integration services"): the host sends a sequence
 * number, the guest answers with it plus one. Body: sequence u64 and 32 reserved bytes.
 */
import { viewOf, checkU64, requireBytes } from './ic-bytes.js';

/**
 * Hyper-V's heartbeat settings and their defaults (Msvm_HeartbeatComponentSettingData): the host
 * asks every Interval ms, an answer may take Latency ms, and ErrorThreshold unanswered beats make
 * the service LostCommunication.
 */
export const HEARTBEAT_INTERVAL_MS = 2000;
export const HEARTBEAT_LATENCY_MS = 1000;
export const HEARTBEAT_ERROR_THRESHOLD = 2;

/**
 * How long after the last answer the service turns LostCommunication: ErrorThreshold missed
 * beats plus the next one's Latency (5 s with the defaults), never under 3 s, so that a short
 * interval set for a test does not call a guest on a busy host lost.
 */
export function heartbeatLostAfterMs(intervalMs: number): number {
  return Math.max(3000, intervalMs * HEARTBEAT_ERROR_THRESHOLD + HEARTBEAT_LATENCY_MS);
}

const HeartbeatAt = { sequence: 0, reserved: 8, size: 40 } as const;

export function encodeHeartbeat(sequence: bigint): Uint8Array {
  const out = new Uint8Array(HeartbeatAt.size);
  viewOf(out).setBigUint64(HeartbeatAt.sequence, checkU64('Heartbeat sequence', sequence), true);
  return out;
}
export function decodeHeartbeat(b: Uint8Array): { sequence: bigint } {
  const v = requireBytes('Heartbeat body', b, HeartbeatAt.size);
  return { sequence: v.getBigUint64(HeartbeatAt.sequence, true) };
}
