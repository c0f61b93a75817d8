/**
 * Spawns a VM worker process (the VMWP entry), its stdin a pipe for the start-up input and its
 * stderr appended to the host's stderr log: a cold start (vmms.ts), the warm pool (warm.ts) and
 * the spare workers (spare.ts) start theirs through this.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { EAGER_COMPILE_ENV, entries, HV_ENDPOINT_ENV, vmProcessArgs, vmProcessEnv } from '@hvlab/runtime';

export function spawnVmwp(o: { stderrLog: string; hvEndpoint: string; stdout: 'ignore' | 'pipe'; env?: Record<string, string> }): ChildProcess {
  const errFd = openSync(o.stderrLog, 'a');
  try {
    return spawn(process.execPath, vmProcessArgs(entries.vmwp), { stdio: ['pipe', o.stdout, errFd], env: vmProcessEnv(process.env, { [EAGER_COMPILE_ENV]: '', ...o.env, [HV_ENDPOINT_ENV]: o.hvEndpoint }) });
  } finally {
    closeSync(errFd);
  }
}
