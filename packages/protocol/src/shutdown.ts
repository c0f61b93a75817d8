/**
 * Shutdown integration service: the host asks the guest to shut down (or reboot), with a reason,
 * a time-out and a display message (UTF-8 in hvlab; Hyper-V sends a byte string).
 */
import { IcError } from './ic.js';
import { viewOf, checkUint, requireBytes, encodeText, decodeText } from './ic-bytes.js';

const ShutdownAt = { reason: 0, timeoutSeconds: 4, flags: 8, message: 12 } as const;
/** Shutdown flags: 0 shut down, 2 reboot, bit 0 force. */
export const ShutdownFlags = { Shutdown: 0, Force: 1, Reboot: 2 } as const;
const SHUTDOWN_FLAGS_KNOWN = ShutdownFlags.Force | ShutdownFlags.Reboot;
export const SHUTDOWN_MESSAGE_MAX_BYTES = 2048;
export interface ShutdownRequest { reason: number; timeoutSeconds: number; flags: number; message: string }

/** reason, timeout, flags, then the message in UTF-8 with a NUL when there is room for one. */
export function encodeShutdown(s: ShutdownRequest): Uint8Array {
  checkUint('Shutdown reason', s.reason, 0xffffffff);
  checkUint('Shutdown timeoutSeconds', s.timeoutSeconds, 0xffffffff);
  checkUint('Shutdown flags', s.flags, 0xffffffff);
  if ((s.flags & ~SHUTDOWN_FLAGS_KNOWN) !== 0) throw new RangeError(`Shutdown flags 0x${s.flags.toString(16)} has bits other than 0-1.`);
  const text = encodeText('Shutdown message', s.message, SHUTDOWN_MESSAGE_MAX_BYTES);
  if (text.includes(0)) throw new RangeError(`Shutdown message ${JSON.stringify(s.message)} contains a NUL character.`);
  const nul = text.length > 0 && text.length < SHUTDOWN_MESSAGE_MAX_BYTES ? 1 : 0;
  const out = new Uint8Array(ShutdownAt.message + text.length + nul);
  const v = viewOf(out);
  v.setUint32(ShutdownAt.reason, s.reason, true);
  v.setUint32(ShutdownAt.timeoutSeconds, s.timeoutSeconds, true);
  v.setUint32(ShutdownAt.flags, s.flags, true);
  out.set(text, ShutdownAt.message);
  return out;
}
export function decodeShutdown(b: Uint8Array): ShutdownRequest {
  const v = requireBytes('Shutdown body', b, ShutdownAt.message);
  const flags = v.getUint32(ShutdownAt.flags, true);
  if ((flags & ~SHUTDOWN_FLAGS_KNOWN) !== 0) throw new IcError(`Shutdown flags 0x${flags.toString(16)} has bits other than 0-1.`);
  const area = b.subarray(ShutdownAt.message, ShutdownAt.message + SHUTDOWN_MESSAGE_MAX_BYTES);
  const end = area.indexOf(0);
  return {
    reason: v.getUint32(ShutdownAt.reason, true),
    timeoutSeconds: v.getUint32(ShutdownAt.timeoutSeconds, true),
    flags,
    message: decodeText('Shutdown message', end < 0 ? area : area.subarray(0, end)),
  };
}
