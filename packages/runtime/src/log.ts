/**
 * pino loggers for every process of a host, one JSON-lines file per process in the run
 * directory's logs/, with the bindings ARCHITECTURE §1 names (host, role, vm, partition, vp).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';

export type { Logger };

export function processLogger(logDir: string, file: string, bindings: Record<string, unknown>): Logger {
  mkdirSync(logDir, { recursive: true });
  const dest = pino.destination({ dest: join(logDir, file), sync: true, mkdir: true });
  return pino({ level: process.env.HVLAB_LOG_LEVEL ?? 'info', base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}
