/**
 * Baseline for the hypercall benchmark: a ROUTER that answers every message with a re-encoded copy
 * of it, built the way the hypervisor's server is (for-await over the socket, msgpack decode and
 * encode, sends through a SendQueue) but with no hypervisor behind it. Binds the ipc:// endpoint
 * given as argv[2], prints "ready" and serves until killed.
 */
import { decode, encode } from '../../packages/protocol/src/index.js';
import { router, SendQueue } from '../../packages/runtime/src/zmq.js';

const endpoint = process.argv[2];
if (!endpoint) {
  process.stderr.write('usage: zmq-echo.ts ipc://<path>\n');
  process.exit(2);
}
const sock = router();
const q = new SendQueue(sock);
const stop = (): void => {
  q.close();
  sock.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
await sock.bind(endpoint);
process.stdout.write('ready\n');
try {
  for await (const [id, body] of sock) {
    void q.send([id, encode(decode(body))]).catch(() => undefined);
  }
} catch (e) {
  if (!sock.closed) throw e;
}
