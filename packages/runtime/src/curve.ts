/**
 * CURVE for a cluster's host-to-host and remote management sockets. A cluster has one key pair
 * (`cluster up` makes it; `up --join` is given its file): every member's server sockets use it as
 * their server key, every member's clients use it as their client key, and a ZAP handler lets a
 * client in only when it proves it holds that key pair. So holding the key file is membership, and a
 * peer without it is refused: without CURVE it fails the handshake, with another key pair ZAP
 * answers 400 (the client sees `handshake:error:auth`).
 *
 * libzmq asks the ZAP handler of its context (one per process, at `inproc://zeromq.zap.01`)
 * about every connection to a socket that has a ZAP domain, and, once a handler exists, about
 * NULL-mechanism connections too: those (this process's own unix sockets, reachable only through
 * the host's socket directory) are let through as before; CURVE ones must be in the cluster's
 * domain and carry the cluster's key.
 */
import { timingSafeEqual } from 'node:crypto';
import { chmodSync } from 'node:fs';
import { decodeClusterKey, decodeZapRequest, z85Decode, CLUSTER_ZAP_DOMAIN, CLUSTER_KEY_MAX_BYTES, type ClusterKey } from '@hvlab/protocol';
import { zmq } from './zmq.js';
import { FileShapeError, readRegularFile, writeFileAtomic } from './files.js';

/**
 * Constant-time equality of two member secrets or pair credentials (hex, as the cluster decoders
 * check them: MEMBER_SECRET_RE), for every place that checks who a peer is.
 */
export function sameCredential(a: string, b: string): boolean {
  return a.length === b.length && timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));
}

export class ClusterKeyError extends Error {
  override name = 'ClusterKeyError';
}

/** A new key pair for cluster `cluster`. */
export function makeClusterKey(cluster: string): ClusterKey {
  const kp = zmq.curveKeyPair();
  return { version: 1, cluster, publicKey: kp.publicKey, secretKey: kp.secretKey };
}

/** Writes a key file readable by its owner only. */
export function writeClusterKey(file: string, key: ClusterKey): void {
  writeFileAtomic(file, JSON.stringify(key, null, 2) + '\n');
  chmodSync(file, 0o600);
}

/** Reads and checks a key file; a ClusterKeyError naming the file and what is wrong. */
export function readClusterKey(file: string): ClusterKey {
  let text: string;
  try {
    // A file only, and small (a FIFO as --key held the CLI; /dev/zero grew it without bound).
    text = readRegularFile(file, CLUSTER_KEY_MAX_BYTES).toString('utf8');
  } catch (e) {
    if (e instanceof FileShapeError) throw new ClusterKeyError(`${file} is not a cluster key file: ${e.message}`);
    const code = (e as NodeJS.ErrnoException).code;
    throw new ClusterKeyError(`cannot read the cluster key file ${file}: ${code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'no permission to read it' : (e as Error).message}`);
  }
  const d = decodeClusterKey(text);
  if (!d.ok) throw new ClusterKeyError(`${file} is not a cluster key file: ${d.message}`);
  return d.value;
}

/** Options of a CURVE server socket of the cluster. */
export function curveServerOptions(key: ClusterKey): { curveServer: true; curveSecretKey: string; curvePublicKey: string; zapDomain: string } {
  return { curveServer: true, curveSecretKey: key.secretKey, curvePublicKey: key.publicKey, zapDomain: CLUSTER_ZAP_DOMAIN };
}

/** Options of a CURVE client socket of the cluster (the server's key is the cluster's). */
export function curveClientOptions(key: ClusterKey): { curveServerKey: string; curvePublicKey: string; curveSecretKey: string } {
  return { curveServerKey: key.publicKey, curvePublicKey: key.publicKey, curveSecretKey: key.secretKey };
}

/** This process's ZAP handler, once started. */
let zap: { sock: zmq.Reply; allowed: Uint8Array; refused: number; onRefuse: ((address: string, why: string) => void) | null } | null = null;

/**
 * Starts this process's ZAP handler for `key` (once; a second call with the same key is a no-op).
 * `onRefuse` hears each refused connection (its address and why).
 */
export async function startZapHandler(key: ClusterKey, onRefuse?: (address: string, why: string) => void): Promise<void> {
  const allowed = z85Decode(key.publicKey);
  if (!allowed) throw new ClusterKeyError('the cluster key is not a Z85 CURVE key');
  if (zap) {
    zap.allowed = allowed;
    zap.onRefuse = onRefuse ?? zap.onRefuse;
    return;
  }
  const sock = new zmq.Reply({ linger: 0 });
  await sock.bind('inproc://zeromq.zap.01');
  zap = { sock, allowed, refused: 0, onRefuse: onRefuse ?? null };
  void serveZap(zap);
}

/** Refusals in the CURVE handshake itself, before ZAP is asked (watchKeyRefusals). */
let handshakeRefused = 0;
/** When a refusal from each address was last told to `onRefuse` (one a minute: a client retries every 100 ms). */
const toldAt = new Map<string, number>();

/**
 * Connections refused for want of the cluster's key by this process: by its ZAP handler (the
 * cluster's server key, another client key) and, on sockets given to watchKeyRefusals, in the
 * handshake before ZAP is asked (another cluster's key, or no CURVE at all).
 */
export function zapRefused(): number {
  return (zap?.refused ?? 0) + handshakeRefused;
}

/**
 * Counts (zapRefused) the connections a CURVE server socket refuses in the handshake: a client
 * with another cluster's key cannot even be decrypted (ERR_ZMTP_CRYPTOGRAPHIC) and one without
 * CURVE offers the wrong mechanism (ERR_ZMTP_MECHANISM_MISMATCH), and neither reaches ZAP, so the
 * count said 0 for a host using another cluster's key. Each attempt counts, as ZAP counts each
 * (such a client retries every ~100 ms); `onRefuse` of the ZAP handler hears of an address at
 * most once a minute. Other protocol errors (garbage on the port) are not refusals of a key.
 */
export function watchKeyRefusals(sock: zmq.Socket): void {
  sock.events.on('handshake:error:protocol', (e: { address?: string; error?: { code?: string } }) => {
    const code = e.error?.code;
    if (code !== 'ERR_ZMTP_CRYPTOGRAPHIC' && code !== 'ERR_ZMTP_MECHANISM_MISMATCH') return;
    handshakeRefused++;
    const address = typeof e.address === 'string' ? e.address : '?';
    const now = Date.now();
    if ((toldAt.get(address) ?? -Infinity) > now - 60_000) return;
    if (toldAt.size > 1024) toldAt.clear();
    toldAt.set(address, now);
    zap?.onRefuse?.(address, code === 'ERR_ZMTP_CRYPTOGRAPHIC' ? 'another key (the handshake does not decrypt)' : 'no CURVE');
  });
}

export function stopZapHandler(): void {
  zap?.sock.close();
  zap = null;
}

async function serveZap(z: NonNullable<typeof zap>): Promise<void> {
  const ok = (id: Uint8Array): Buffer[] => [Buffer.from('1.0'), Buffer.from(id), Buffer.from('200'), Buffer.from('OK'), Buffer.alloc(0), Buffer.alloc(0)];
  const no = (id: Uint8Array, why: string): Buffer[] => [Buffer.from('1.0'), Buffer.from(id), Buffer.from('400'), Buffer.from(why), Buffer.alloc(0), Buffer.alloc(0)];
  try {
    for await (const frames of z.sock) {
      const r = decodeZapRequest(frames);
      let answer: Buffer[];
      if (!r) {
        // Not a ZAP request: a REP socket must still answer; deny with an empty id.
        answer = no(new Uint8Array(0), 'malformed ZAP request');
      } else if (r.mechanism === 'NULL' && r.domain !== CLUSTER_ZAP_DOMAIN) {
        answer = ok(r.requestId);
      } else if (r.mechanism === 'CURVE' && r.domain === CLUSTER_ZAP_DOMAIN && r.clientKey !== null && Buffer.from(r.clientKey).equals(Buffer.from(z.allowed))) {
        answer = ok(r.requestId);
      } else {
        const why = r.mechanism !== 'CURVE' ? `${r.mechanism.slice(0, 16)} mechanism` : 'not the cluster\'s key';
        z.refused++;
        z.onRefuse?.(r.address, why);
        answer = no(r.requestId, why);
      }
      await z.sock.send(answer);
    }
  } catch {
    /* closed */
  }
}
