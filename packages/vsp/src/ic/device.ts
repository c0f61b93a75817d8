/**
 * An integration service as a virtual device: the provider is the device's VMBus capability, and
 * its saved state is the provider's (framework state plus the service's own).
 */
import type { DeviceClass } from '@hvlab/protocol';
import type { DeviceContext, VirtualDevice } from '../device.js';
import type { IcProvider } from './provider.js';

export interface IcService<S> extends IcProvider {
  saveState(): S;
  restoreState(s: S): void;
}

export function icDevice<S>(ctx: DeviceContext, provider: IcService<S>, decode: (v: unknown) => S | string): VirtualDevice<S> {
  provider.interfaceInstance = ctx.instance;
  return {
    class: ctx.entry.class as DeviceClass,
    id: ctx.entry.id,
    vmbus: provider,
    status: () => provider.statusInfo(),
    save: () => provider.saveState(),
    decode,
    restore: (s) => provider.restoreState(s),
    close: () => provider.close(),
  };
}
