/**
 * Saved state of the integration-services framework, host side (shared by every IC provider's
 * own state.ts): the negotiated versions, the transaction counters and the requests still waiting
 * for the guest's answer. A restored provider keeps its channel without negotiating again, and an
 * answer that was in the ring when the VM was saved still finds its request.
 */
import { fields, list, nullable, u64, uint, versioned, versionPair } from '@hvlab/protocol/state';
import type { IcVersion } from '@hvlab/protocol';

/** Most requests a provider keeps waiting (a heartbeat keeps one; KVP a few). */
export const IC_MAX_PENDING = 256;

export interface IcProviderState {
  version: 1;
  negotiated: { framework: IcVersion; message: IcVersion } | null;
  /** VMBus transaction id of the next request (decimal u64). */
  nextTransId: string;
  /** IC header transaction id of the next request (a byte). */
  nextIcTransaction: number;
  /** Requests the guest has not answered yet: VMBus transaction id (decimal u64) and IC message type. */
  pending: Array<{ transId: string; type: number }>;
  opens: number;
}

export function icStateFields(v: unknown, path: string): IcProviderState {
  const o = versioned(v, path, 1, ['negotiated', 'nextTransId', 'nextIcTransaction', 'pending', 'opens']);
  const negotiated = nullable(o.negotiated, `${path}.negotiated`, (x, p) => {
    const n = fields(x, p, ['framework', 'message']);
    return { framework: versionPair(n.framework, `${p}.framework`), message: versionPair(n.message, `${p}.message`) };
  });
  const nextTransId = u64(o.nextTransId, `${path}.nextTransId`).toString();
  const pending = list(o.pending, `${path}.pending`, IC_MAX_PENDING, (x, p) => {
    const e = fields(x, p, ['transId', 'type']);
    return { transId: u64(e.transId, `${p}.transId`).toString(), type: uint(e.type, `${p}.type`, 0xffff) };
  });
  return { version: 1, negotiated, nextTransId, nextIcTransaction: uint(o.nextIcTransaction, `${path}.nextIcTransaction`, 0xff), pending, opens: uint(o.opens, `${path}.opens`) };
}
