/**
 * Heartbeat integration service (REFERENCE.md "Integration services"): the host sends a sequence
 * number, the guest answers with it plus one. Body: sequence u64 and 32 reserved bytes.
 */
import { viewOf, checkU64, requireBytes } from './ic-bytes.js';

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
