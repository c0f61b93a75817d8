/**
 * The guest half of KVP exchange: holds the external pool (host-written) and the guest pool
 * (guest-written), and computes the auto pool (host name, OS name, uptime) when asked.
 */
import { IcGuid, IcMessageType, IcStatus, type IcHeader, type IcVersion } from '@hvlab/protocol';
import { decodeKvp, encodeKvp, KvpOperation, KvpPool } from '@hvlab/protocol/kvp';
import type { DriverContext, GuestDriver } from '../driver.js';
import { IcClient, type IcReply } from '../ic/client.js';
import { decodeKvpState, KVP_MAX_POOL_ENTRIES, type KvpState } from './state.js';

export interface KvpAutoValues {
  (): Record<string, string>;
}

export class KvpClient extends IcClient {
  readonly name = 'kvp';
  readonly interfaceType = IcGuid.kvp;
  readonly messageType = IcMessageType.Kvp;
  protected readonly messageVersions: IcVersion[] = [{ major: 5, minor: 0 }, { major: 4, minor: 0 }, { major: 3, minor: 0 }];
  readonly external = new Map<string, string>();
  readonly guest = new Map<string, string>();

  constructor(private readonly auto: KvpAutoValues, private readonly budget: () => number = () => Infinity) {
    super();
  }

  /** The bytes the pools take in a saved state (JSON text of each entry, near enough). */
  stateBytes(): number {
    let n = 0;
    for (const m of [this.external, this.guest]) for (const [k, v] of m) n += entryBytes(k, v);
    return n;
  }

  private pool(n: number): Map<string, string> | null {
    if (n === KvpPool.External) return this.external;
    if (n === KvpPool.Guest) return this.guest;
    if (n === KvpPool.Auto) return new Map(Object.entries(this.auto()));
    return null;
  }

  protected handle(_h: IcHeader, body: Uint8Array): IcReply {
    const m = decodeKvp(body);
    const pool = this.pool(m.pool);
    const answer = (status: number, key = m.key, value = ''): IcReply => ({ status, body: status === IcStatus.OK ? encodeKvp({ ...m, key, value }) : body.slice() });
    if (!pool) return answer(IcStatus.NotSupported);
    switch (m.operation) {
      case KvpOperation.Get: {
        const v = pool.get(m.key);
        return v === undefined ? answer(IcStatus.NotFound) : answer(IcStatus.OK, m.key, v);
      }
      case KvpOperation.Set:
        // The host writes only the external pool; a pool has a bounded number of entries.
        if (m.pool !== KvpPool.External || m.key.length === 0) return answer(IcStatus.NotSupported);
        if (!pool.has(m.key) && pool.size >= KVP_MAX_POOL_ENTRIES) return answer(IcStatus.Fail);
        // ... and as many bytes as the guest's device pages can hold at a save: 740 values of 2.5 KB
        // on a 2 MiB VM made every later save fail for want of pages.
        {
          const old = pool.get(m.key);
          const grows = entryBytes(m.key, m.value) - (old === undefined ? 0 : entryBytes(m.key, old));
          if (grows > 0 && this.stateBytes() + grows > this.budget()) return answer(IcStatus.Fail);
        }
        pool.set(m.key, m.value);
        return answer(IcStatus.OK, m.key, m.value);
      case KvpOperation.Delete:
        if (m.pool !== KvpPool.External) return answer(IcStatus.NotSupported);
        return pool.delete(m.key) ? answer(IcStatus.OK) : answer(IcStatus.NotFound);
      case KvpOperation.Enumerate: {
        const keys = [...pool.keys()].sort();
        if (m.index >= keys.length) return answer(IcStatus.NoMoreItems);
        const k = keys[m.index];
        return answer(IcStatus.OK, k, pool.get(k)!);
      }
      default:
        return answer(IcStatus.NotSupported);
    }
  }
}

/** An entry's bytes in a saved state: its JSON text, {"key":…,"value":…}. */
function entryBytes(key: string, value: string): number {
  return Buffer.byteLength(JSON.stringify(key)) + Buffer.byteLength(JSON.stringify(value)) + 20;
}

export function createDriver(ctx: DriverContext): GuestDriver<KvpState> {
  const c = new KvpClient(() => ctx.autoValues(), () => ctx.stateBudgetBytes?.() ?? Infinity);
  const entries = (m: Map<string, string>): KvpState['external'] => [...m].map(([key, value]) => ({ key, value }));
  return {
    class: 'kvp',
    vmbus: c,
    save: () => ({ version: 1, ic: c.saveIc(), external: entries(c.external), guest: entries(c.guest) }),
    decode: decodeKvpState,
    restore: (s) => {
      c.restoreIc(s.ic);
      c.external.clear();
      c.guest.clear();
      for (const e of s.external) c.external.set(e.key, e.value);
      for (const e of s.guest) c.guest.set(e.key, e.value);
    },
  };
}
