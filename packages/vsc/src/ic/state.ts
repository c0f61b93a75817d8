/** Saved state of the integration-services framework, guest side: the versions it negotiated. */
import type { IcVersion } from '@hvlab/protocol';
import { fields, nullable, versioned, versionPair } from '@hvlab/protocol/state';

export interface IcClientState {
  version: 1;
  negotiated: { framework: IcVersion; message: IcVersion } | null;
}

export function icClientStateFields(v: unknown, path: string): IcClientState {
  const o = versioned(v, path, 1, ['negotiated']);
  const negotiated = nullable(o.negotiated, `${path}.negotiated`, (x, p) => {
    const n = fields(x, p, ['framework', 'message']);
    return { framework: versionPair(n.framework, `${p}.framework`), message: versionPair(n.message, `${p}.message`) };
  });
  return { version: 1, negotiated };
}
