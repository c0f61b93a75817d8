/**
 * Test helper: runs `body` with this process's uncaught exceptions collected into `errors` instead
 * of reaching mocha's handlers (a callback from native code rethrows its error that way), and puts
 * the handlers back afterwards, whatever happens.
 */
export async function withUncaughtCaptured(body: (errors: unknown[]) => Promise<void>): Promise<void> {
  const errors: unknown[] = [];
  const onErr = (e: unknown): void => void errors.push(e);
  process.prependListener('uncaughtException', onErr);
  const listeners = process.listeners('uncaughtException').filter((l) => l !== onErr);
  for (const l of listeners) process.off('uncaughtException', l);
  try {
    await body(errors);
  } finally {
    process.off('uncaughtException', onErr);
    for (const l of listeners) process.on('uncaughtException', l);
  }
}
