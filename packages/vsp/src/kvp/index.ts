/**
 * KVP exchange provider. The host writes the external pool (the guest stores it) and reads every
 * pool by asking the guest over the channel — there is no host-side cache, so a `get` shows what
 * the guest holds now. The guest pool is written by the guest only, and the auto pool is computed
 * by the guest (host name, OS name, uptime); both are read-only from the host.
 */
import { IcError, IcGuid, IcMessageType, IcStatus, type IcVersion } from '@hvlab/protocol';
import { decodeKvp, encodeKvp, kvpDecodedRanges, KvpOperation, KvpPool, KVP_MAX_KEY_BYTES, KVP_MAX_VALUE_BYTES } from '@hvlab/protocol/kvp';
import type { DeviceContext, VirtualDevice } from '../device.js';
import { icDevice, type IcService } from '../ic/device.js';
import { IcProvider, IcRequestError } from '../ic/provider.js';
import { decodeKvpState, type KvpState } from './state.js';

export type KvpPoolName = 'external' | 'guest' | 'auto';
export const KVP_POOLS: Record<KvpPoolName, number> = { external: KvpPool.External, guest: KvpPool.Guest, auto: KvpPool.Auto };

/** How long a KVP operation waits for the guest's answer; the request was sent, so the guest may still carry it out later. */
export const KVP_REQUEST_TIMEOUT_MS = 5000;

export class KvpInputError extends Error {
  override name = 'KvpInputError';
}

function checkKey(key: string): void {
  const n = Buffer.byteLength(key, 'utf8');
  if (n === 0 || n > KVP_MAX_KEY_BYTES) throw new KvpInputError(`KVP key of ${n} bytes is invalid: 1 to ${KVP_MAX_KEY_BYTES} bytes`);
}

export class KvpProvider extends IcProvider implements IcService<KvpState> {
  readonly service = 'kvp' as const;
  readonly interfaceType = IcGuid.kvp;
  readonly messageType = IcMessageType.Kvp;
  protected readonly messageVersions: IcVersion[] = [{ major: 5, minor: 0 }, { major: 4, minor: 0 }, { major: 3, minor: 0 }];
  // Negotiate messages share the channel: a body too short for KVP is all decoded bytes.
  protected override readonly decodedBodyRanges = kvpDecodedRanges;
  /** How long an operation waits for the guest's answer (KVP_REQUEST_TIMEOUT_MS; tests whose guest never answers shorten it). */
  requestTimeoutMs = KVP_REQUEST_TIMEOUT_MS;

  private async op(operation: number, pool: number, key: string, value: string, index = 0): Promise<{ status: number; key: string; value: string }> {
    if (!this.negotiated) throw new IcRequestError('the KVP integration service is not connected');
    const a = await this.request(IcMessageType.Kvp, encodeKvp({ operation, pool, index, key, value }), this.requestTimeoutMs);
    if (a.header.status !== IcStatus.OK) return { status: a.header.status, key, value: '' };
    let m;
    try {
      m = decodeKvp(a.body);
    } catch (e) {
      if (!(e instanceof IcError)) throw e;
      this.stats.rejected++;
      throw new IcRequestError(`the guest's KVP answer is malformed (${e.message})`);
    }
    return { status: IcStatus.OK, key: m.key, value: m.value };
  }

  async set(pool: KvpPoolName, key: string, value: string): Promise<void> {
    if (pool !== 'external') throw new KvpInputError(`the ${pool} pool is written by the guest; the host writes only the external pool`);
    checkKey(key);
    const n = Buffer.byteLength(value, 'utf8');
    if (n > KVP_MAX_VALUE_BYTES) throw new KvpInputError(`KVP value of ${n} bytes is too long: at most ${KVP_MAX_VALUE_BYTES} bytes`);
    const r = await this.op(KvpOperation.Set, KVP_POOLS[pool], key, value);
    if (r.status === IcStatus.Fail) throw new IcRequestError(`the guest refused to set "${key}": its pool is full (at most 4096 entries, in a quarter of the memory it keeps for devices)`, r.status);
    if (r.status !== IcStatus.OK) throw new IcRequestError(`the guest refused to set "${key}" (status 0x${r.status.toString(16)})`, r.status);
  }

  /** The value, or null when the guest has no such key. */
  async get(pool: KvpPoolName, key: string): Promise<string | null> {
    checkKey(key);
    const r = await this.op(KvpOperation.Get, KVP_POOLS[pool], key, '');
    if (r.status === IcStatus.NotFound) return null;
    if (r.status !== IcStatus.OK) throw new IcRequestError(`the guest could not get "${key}" (status 0x${r.status.toString(16)})`, r.status);
    return r.value;
  }

  /** True if the key existed. */
  async delete(pool: KvpPoolName, key: string): Promise<boolean> {
    if (pool !== 'external') throw new KvpInputError(`the ${pool} pool is written by the guest; the host deletes only from the external pool`);
    checkKey(key);
    const r = await this.op(KvpOperation.Delete, KVP_POOLS[pool], key, '');
    if (r.status === IcStatus.NotFound) return false;
    if (r.status !== IcStatus.OK) throw new IcRequestError(`the guest could not delete "${key}" (status 0x${r.status.toString(16)})`, r.status);
    return true;
  }

  /** Every pair of a pool, by enumerating index 0, 1, … until the guest says there are no more. */
  async list(pool: KvpPoolName): Promise<Array<{ key: string; value: string }>> {
    const out: Array<{ key: string; value: string }> = [];
    for (let i = 0; i < 10000; i++) {
      const r = await this.op(KvpOperation.Enumerate, KVP_POOLS[pool], '', '', i);
      if (r.status === IcStatus.NoMoreItems) return out;
      if (r.status !== IcStatus.OK) throw new IcRequestError(`the guest could not enumerate the ${pool} pool (status 0x${r.status.toString(16)})`, r.status);
      out.push({ key: r.key, value: r.value });
    }
    return out;
  }

  saveState(): KvpState {
    return { version: 1, ic: this.saveIc() };
  }

  restoreState(s: KvpState): void {
    this.restoreIc(s.ic);
  }
}

export function createDevice(ctx: DeviceContext): VirtualDevice<KvpState> {
  return icDevice(ctx, new KvpProvider(ctx.log), decodeKvpState);
}
