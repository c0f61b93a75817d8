/**
 * The hypervisor is the anchor of its host: every other process watches it and leaves when it is
 * gone (even after kill -9, which sends nobody a message). Polling a pid with signal 0 every
 * 200 ms is cheap and needs no socket; `process.kill(pid, 0)` throws ESRCH once it has exited.
 */
import { readFileSync } from 'node:fs';

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie (exited, not yet reaped) still answers signal 0; it is not alive. Orphans re-parented
  // to a PID 1 that never reaps would otherwise look alive forever.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const close = stat.lastIndexOf(')');
    return stat.charAt(close + 2) !== 'Z';
  } catch {
    return true;
  }
}

/** Calls onGone once when any of the pids stops existing. Returns a cancel function. */
export function watchPids(pids: number[], onGone: (pid: number) => void, periodMs = 200): () => void {
  let done = false;
  const t = setInterval(() => {
    if (done) return;
    for (const p of pids) {
      if (!pidAlive(p)) {
        done = true;
        clearInterval(t);
        onGone(p);
        return;
      }
    }
  }, periodMs);
  t.unref();
  return () => {
    done = true;
    clearInterval(t);
  };
}

/**
 * Reads the first line a parent wrote on this process's stdin (how secrets reach hvlab's processes:
 * a pipe, never the environment, which /proc/PID/environ shows), then lets go of stdin.
 */
export async function readStdinLine(what: string, maxBytes = 1 << 20): Promise<string> {
  let buf = '';
  for await (const chunk of process.stdin) {
    buf += (chunk as Buffer).toString('utf8');
    const nl = buf.indexOf('\n');
    if (nl >= 0) {
      process.stdin.destroy();
      return buf.slice(0, nl);
    }
    if (buf.length > maxBytes) break;
  }
  throw new Error(`${what} did not arrive on stdin`);
}
