/**
 * hvlab — the command line. It mirrors the Hyper-V cmdlets (New-VM, Start-VM, Stop-VM, Get-VM…)
 * and talks only to a host's management API; `up`/`down` start and stop the host's processes.
 * Errors are one line naming the bad value, with exit code 1 (2 for usage errors).
 */
import { createReadStream, existsSync, readdirSync, readFileSync, statSync, writeFileSync, watch } from 'node:fs';
import { join } from 'node:path';
import { hostPaths, resolveHome, type HostPaths } from '@hvlab/runtime';
import { parseSize, type IcServiceInfo, type KvpEntry, type HostInfo, type ProcessInfo, type VmInfo, type DebugHypercallResult, formatBytes } from '@hvlab/protocol';
import { MgmtClient, MgmtCallError } from './client.js';
import { CliError, down, readHost, hostRunning, up } from './host.js';

const BOOL_FLAGS = new Set(['json', 'help', 'h', 'follow', 'f', 'force', 'once']);

interface Args {
  pos: string[];
  flags: Map<string, string | true>;
}

export function parseArgs(argv: string[]): Args {
  const pos: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      pos.push(...argv.slice(i + 1));
      break;
    }
    const m = /^--?([A-Za-z][\w-]*)(?:=(.*))?$/.exec(a);
    if (!m || /^-\d/.test(a)) {
      pos.push(a);
      continue;
    }
    const name = m[1];
    if (m[2] !== undefined) flags.set(name, m[2]);
    else if (BOOL_FLAGS.has(name)) flags.set(name, true);
    else if (i + 1 < argv.length) flags.set(name, argv[++i]);
    else throw new UsageError(`option --${name} needs a value`);
  }
  return { pos, flags };
}

class UsageError extends Error {}

const HELP = `hvlab — the Hyper-V architecture as real processes

Usage: hvlab [--home DIR] COMMAND [options]

Host
  up [--lps N] [--vmbus-transport shm|remote]
                                    start a host (hypervisor + root partition) in the background;
                                    remote carries every VMBus channel over ZeroMQ instead of rings
  down                              stop everything of this home; leaves no process, socket or shm file
  host info [--json]                host id, memory mode (shared/private), pids
  ps [--json]                       every process of the host: role, vm, pid
  logs [--role R] [--vm NAME] [-f]  the host's logs, readable (roles: hypervisor root vmwp partition)

VMs (Hyper-V: New-VM, Start-VM, Stop-VM, Suspend-VM, Resume-VM, Get-VM, Remove-VM)
  vm new NAME [--memory 64M] [--vps 1..64] [--workload W] [--rtc-offset SECONDS]
      workloads: counter[:RATE]  idle  spin (one CPU-bound task per VP)  sleep[:MS] (woken by a
      periodic timer every MS ms, default 50)  memdirty[:SIZE] (QEMU's migration-test guest, 16M)
  vm start|turn-off|pause|resume|delete NAME    (start continues a Saved VM; turn-off discards it)
  vm save NAME                      write memory, VP/APIC/SynIC/timer and device state; -> Saved
  vm set-processor NAME [--reserve R] [--maximum M] [--weight W]
                                    Set-VMProcessor: reserve/maximum in % of one LP per VP (0-100),
                                    relative weight 1-10000 (default 100); running or stopped VMs
  vm stop NAME [--timeout S] [--force]   shut down through the guest's shutdown service; returns when
                                    Off; without an answer in S s (default 30) it fails, or with
                                    --force turns the VM off
  vm list [--json]                  name, state, partition, VPs, memory, uptime, progress, CPU % (of one LP)
  vm status NAME [--json]           guest facts: progress, steps, LP occupancy, CMOS time, intercepts
  top [--once] [--interval S]       live table of VMs and their VPs: state, CPU %, run/ready/wait time
  vm peek NAME --gpa ADDR --len N [--out FILE]   read guest memory (hex dump, or raw bytes to FILE)

Integration services (Hyper-V: Get-/Enable-/Disable-VMIntegrationService, KVP exchange)
  vm ic NAME [--json]               heartbeat, shutdown, timesync, kvp: enabled, status
                                    (OK, NoContact, LostCommunication), heartbeat sequence, clock offset
  vm ic NAME --disable|--enable SERVICE   hot remove (rescind) or add (offer) a service's channel
  vm kvp NAME set KEY VALUE | get KEY | delete KEY | list  [--pool external|guest|auto] [--json]
                                    every operation asks the guest; the host writes only "external"

Debugging
  debug hypercall [--as VM] CALL [FIELD=VALUE …]  one hypercall as the root or as a VM's partition
      values: 12, 0x40, hex:00ff…, len:N (N zero bytes), text:abc, or a string
      e.g. hvlab debug hypercall --as vm1 PostMessage connectionId=1 messageType=1 payload=len:241

HVLAB_HOME (default ~/.hvlab) or --home selects the state directory.`;

function out(s: string): void {
  process.stdout.write(s.endsWith('\n') ? s : s + '\n');
}

function needHost(paths: HostPaths): MgmtClient {
  const rec = readHost(paths);
  if (!hostRunning(rec)) throw new CliError(`no host is up for ${paths.home}; run "hvlab up" first`);
  return new MgmtClient(paths.mgmtEndpoint);
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n');
}

function parseValue(v: string): unknown {
  if (/^-?\d+$/.test(v)) return Number(v);
  if (/^0x[0-9a-f]+$/i.test(v)) {
    const b = BigInt(v);
    return b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
  }
  if (v.startsWith('hex:')) {
    const h = v.slice(4);
    if (!/^([0-9a-f]{2})*$/i.test(h)) throw new UsageError(`"${v}" is not valid hex bytes`);
    return new Uint8Array(Buffer.from(h, 'hex'));
  }
  if (v.startsWith('len:')) {
    const n = Number(v.slice(4));
    if (!Number.isInteger(n) || n < 0 || n > 65536) throw new UsageError(`"${v}": len wants 0-65536`);
    return new Uint8Array(n);
  }
  if (v.startsWith('text:')) return new Uint8Array(Buffer.from(v.slice(5)));
  if (v === 'true' || v === 'false') return v === 'true';
  return v;
}

function hexdump(bytes: Uint8Array, base: number): string {
  const lines: string[] = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const chunk = bytes.subarray(i, i + 16);
    const hex = [...chunk].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const asc = [...chunk].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(base + i).toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join('\n');
}

function jsonReplacer(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
  return v;
}

async function followLogs(files: string[], filter: (line: string) => string | null): Promise<never> {
  const pos = new Map<string, number>(files.map((f) => [f, existsSync(f) ? statSync(f).size : 0]));
  const pump = (f: string): void => {
    const start = pos.get(f) ?? 0;
    const size = existsSync(f) ? statSync(f).size : 0;
    if (size <= start) return;
    pos.set(f, size);
    const s = createReadStream(f, { start, end: size - 1, encoding: 'utf8' });
    let buf = '';
    s.on('data', (d) => (buf += d));
    s.on('end', () => {
      for (const l of buf.split('\n')) {
        const o = l && filter(l);
        if (o) out(o);
      }
    });
  };
  for (const f of files) watch(f, () => pump(f));
  setInterval(() => files.forEach(pump), 500);
  return await new Promise<never>(() => {});
}

function formatLog(line: string): string | null {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    const lvl = ({ 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' } as Record<number, string>)[o.level as number] ?? String(o.level);
    const who = [o.role, o.vm].filter((x) => x !== undefined && x !== null).join('/');
    const skip = new Set(['level', 'time', 'msg', 'pid', 'host', 'role', 'vm', 'hostname']);
    const rest = Object.entries(o).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ');
    return `${String(o.time)} ${lvl.padEnd(5)} ${who.padEnd(18)} ${String(o.msg ?? '')}${rest ? '  ' + rest : ''}`;
  } catch {
    return null;
  }
}

export async function run(argv: string[]): Promise<number> {
  const a = parseArgs(argv);
  const flag = (n: string): string | undefined => {
    const v = a.flags.get(n);
    return v === true ? undefined : v;
  };
  const json = a.flags.has('json');
  const paths = hostPaths(resolveHome(flag('home') ?? null));
  const [cmd, sub, ...rest] = a.pos;
  if (!cmd || a.flags.has('help') || a.flags.has('h') || cmd === 'help') {
    out(HELP);
    return 0;
  }
  let client: MgmtClient | null = null;
  try {
    switch (cmd) {
      case 'up': {
        const lpsText = flag('lps');
        let lps: number | null = null;
        if (lpsText !== undefined) {
          lps = Number(lpsText);
          if (!/^\d+$/.test(lpsText) || lps < 1 || lps > 256) throw new CliError(`--lps ${lpsText} is invalid: 1 to 256 logical processors`);
        }
        const transport = flag('vmbus-transport') ?? 'shm';
        if (transport !== 'shm' && transport !== 'remote') throw new CliError(`--vmbus-transport ${transport} is invalid: use shm or remote`);
        const rec = await up(paths, lps, transport);
        client = new MgmtClient(paths.mgmtEndpoint);
        const info = await client.request<HostInfo>('hostInfo');
        if (json) out(JSON.stringify(info));
        else out(`host ${rec.hostId} is up: ${rec.lps} LPs, ${info.memoryMode} memory${info.memoryMode === 'private' ? ` (${info.memoryModeReason})` : ''}, VMBus over ${info.vmbusTransport === 'shm' ? 'shared-memory rings' : 'ZeroMQ'}, home ${paths.home}`);
        return 0;
      }
      case 'down': {
        const r = await down(paths);
        if (json) out(JSON.stringify(r));
        else out(r.hostId ? `host ${r.hostId} is down${r.graceful ? '' : ` (forced: killed ${r.killed} processes, removed ${r.shm} shm files)`}` : 'no host was up');
        return 0;
      }
      case 'host': {
        if (sub !== 'info') throw new UsageError(`unknown command "host ${sub ?? ''}": use "host info"`);
        client = needHost(paths);
        const info = await client.request<HostInfo>('hostInfo');
        if (json) out(JSON.stringify(info));
        else out(table([
          ['host', info.hostId], ['home', info.home], ['memory mode', `${info.memoryMode} (${info.memoryModeReason})`],
          ['logical processors', String(info.lps)], ['VMBus transport', info.vmbusTransport], ['hypervisor pid', String(info.pids.hypervisor)], ['root pid', String(info.pids.root)],
          ['VMs', String(info.vms)], ['started', info.startedAt], ['management API', `v${info.apiVersion}`],
        ]));
        return 0;
      }
      case 'top': {
        client = needHost(paths);
        const iv = flag('interval');
        const intervalS = iv === undefined ? 1 : Number(iv);
        if (!(intervalS >= 0.2 && intervalS <= 60)) throw new CliError(`--interval ${iv} is invalid: 0.2 to 60 seconds`);
        const once = a.flags.has('once') || !process.stdout.isTTY;
        for (;;) {
          const vms = await client.request<VmInfo[]>('vmList');
          const rows: string[][] = [['VM', 'VP', 'STATE', 'CPU%', 'RUN', 'READY', 'WAIT', 'WEIGHT', 'RES%', 'MAX%']];
          for (const v of vms) {
            rows.push([v.name, '*', v.state, v.cpu ? String(v.cpu.percent) : '-', '', '', '', String(v.processor.weight), String(v.processor.reserve), String(v.processor.maximum)]);
            for (const p of v.cpu?.vps ?? []) {
              const s = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;
              rows.push(['', String(p.index), p.state, String(p.cpuPercent), s(p.runMs), s(p.readyMs), s(p.waitMs), '', '', '']);
            }
          }
          const text = vms.length === 0 ? 'no VMs' : table(rows);
          if (once) {
            out(json ? JSON.stringify(vms) : text);
            return 0;
          }
          process.stdout.write(`\x1b[2J\x1b[H${new Date().toLocaleTimeString()}  hvlab top (Ctrl-C to quit)\n${text}\n`);
          await new Promise((r) => setTimeout(r, intervalS * 1000));
        }
      }
      case 'ps': {
        client = needHost(paths);
        const ps = await client.request<ProcessInfo[]>('ps');
        if (json) out(JSON.stringify(ps));
        else out(table([['ROLE', 'VM', 'PID'], ...ps.map((p) => [p.role, p.vm ?? '-', String(p.pid)])]));
        return 0;
      }
      case 'vm': {
        client = needHost(paths);
        const name = rest[0];
        const needName = (): string => {
          if (!name) throw new UsageError(`"vm ${sub}" needs a VM name`);
          return name;
        };
        switch (sub) {
          case 'new': {
            const r = await client.request<VmInfo>('vmNew', { name: needName(), memory: flag('memory'), vps: flag('vps'), workload: flag('workload'), rtcOffset: flag('rtc-offset') });
            out(json ? JSON.stringify(r) : `VM ${r.name} created (${formatBytes(r.memoryBytes)}, ${r.vps} VP, workload ${r.workload.name}), state Off`);
            return 0;
          }
          case 'stop': {
            const t = flag('timeout');
            if (t !== undefined && (!/^\d+(\.\d+)?$/.test(t) || Number(t) <= 0)) throw new CliError(`--timeout ${t} is invalid: seconds, more than 0`);
            const timeoutS = t === undefined ? 30 : Number(t);
            const r = await client.request<VmInfo>('vmStop', { name: needName(), timeoutS, force: a.flags.has('force') }, (timeoutS + 20) * 1000);
            out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}${r.lastStateReason ? ` (${r.lastStateReason})` : ''}`);
            return 0;
          }
          case 'ic': {
            const enable = flag('enable');
            const disable = flag('disable');
            const list = await client.request<IcServiceInfo[]>('vmIc', { name: needName(), enable, disable });
            if (json) out(JSON.stringify(list));
            else out(table([['SERVICE', 'ENABLED', 'STATUS', 'VERSION', 'DETAIL'], ...list.map((e) => [
              e.service, e.enabled ? 'yes' : 'no', e.status, e.version ?? '-',
              e.service === 'heartbeat' ? `sequence ${e.sequence ?? 0}` : e.service === 'timesync' && e.offsetMs !== null && e.offsetMs !== undefined ? `offset ${e.offsetMs} ms` : '',
            ])]));
            return 0;
          }
          case 'kvp': {
            const op = rest[1];
            if (!op || !['set', 'get', 'delete', 'list'].includes(op)) throw new UsageError('"vm kvp" needs NAME and one of: set KEY VALUE, get KEY, delete KEY, list');
            const key = rest[2];
            const value = rest[3];
            if (op !== 'list' && key === undefined) throw new UsageError(`"vm kvp ${op}" needs a KEY`);
            if (op === 'set' && value === undefined) throw new UsageError('"vm kvp set" needs KEY and VALUE');
            const pool = flag('pool');
            const r = await client.request<unknown>('vmKvp', { name: needName(), op, key, value, pool });
            if (json) out(JSON.stringify(r));
            else if (op === 'get') out((r as { value: string }).value);
            else if (op === 'list') {
              const rows = r as KvpEntry[];
              out(rows.length === 0 ? 'no keys' : table([['KEY', 'VALUE'], ...rows.map((e) => [e.key, e.value])]));
            } else if (op === 'set') out(`${key} set in the ${pool ?? 'external'} pool of ${name}`);
            else out(`${key} deleted from the ${pool ?? 'external'} pool of ${name}`);
            return 0;
          }
          case 'start':
          case 'turn-off':
          case 'pause':
          case 'resume': {
            const op = ({ start: 'vmStart', 'turn-off': 'vmTurnOff', pause: 'vmPause', resume: 'vmResume' } as const)[sub];
            const r = await client.request<VmInfo>(op, { name: needName() });
            out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}`);
            return 0;
          }
          case 'delete': {
            await client.request('vmDelete', { name: needName() });
            out(json ? JSON.stringify({ name, deleted: true }) : `VM ${name} deleted`);
            return 0;
          }
          case 'list': {
            const vms = await client.request<VmInfo[]>('vmList');
            if (json) out(JSON.stringify(vms));
            else if (vms.length === 0) out('no VMs');
            else out(table([['NAME', 'STATE', 'PARTITION', 'VPS', 'MEMORY', 'UPTIME', 'WORKLOAD', 'PROGRESS', 'CPU'], ...vms.map((v) => [
              v.name, v.state, v.partitionId === null ? '-' : String(v.partitionId), String(v.vps), formatBytes(v.memoryBytes),
              `${v.uptimeS}s`, v.workload.name, v.workload.progress === null ? '-' : String(v.workload.progress), v.cpu ? `${v.cpu.percent}%` : '-',
            ])]));
            return 0;
          }
          case 'save': {
            const r = await client.request<VmInfo>('vmSave', { name: needName() }, 180000);
            out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}`);
            return 0;
          }
          case 'set-processor': {
            const r = await client.request<VmInfo>('vmSetProcessor', { name: needName(), reserve: flag('reserve'), maximum: flag('maximum'), weight: flag('weight') });
            out(json ? JSON.stringify(r) : `VM ${r.name}: reserve ${r.processor.reserve}%, maximum ${r.processor.maximum}%, weight ${r.processor.weight}`);
            return 0;
          }
          case 'status': {
            const r = await client.request<Record<string, unknown>>('vmStatus', { name: needName() });
            out(json ? JSON.stringify(r) : Object.entries(r).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('\n'));
            return 0;
          }
          case 'peek': {
            const gpaText = flag('gpa');
            const lenText = flag('len');
            if (gpaText === undefined || lenText === undefined) throw new UsageError('"vm peek" needs --gpa ADDR and --len N');
            const gpa = Number(gpaText);
            if (!/^(0x[0-9a-f]+|\d+)$/i.test(gpaText) || !Number.isSafeInteger(gpa)) throw new CliError(`--gpa ${gpaText} is not an address`);
            const len = parseSize(lenText);
            if (len === null || len < 1) throw new CliError(`--len ${lenText} is not a length`);
            const bytes = new Uint8Array(await client.request<Uint8Array>('vmPeek', { name: needName(), gpa, len }));
            const file = flag('out');
            if (file) {
              writeFileSync(file, bytes);
              out(`${bytes.length} bytes written to ${file}`);
            } else out(hexdump(bytes, gpa));
            return 0;
          }
          default:
            throw new UsageError(`unknown command "vm ${sub ?? ''}"; see "hvlab --help"`);
        }
      }
      case 'debug': {
        if (sub !== 'hypercall') throw new UsageError(`unknown command "debug ${sub ?? ''}": use "debug hypercall"`);
        const call = rest[0];
        if (!call) throw new UsageError('"debug hypercall" needs a call name, e.g. CreatePartition');
        const input: Record<string, unknown> = {};
        for (const kv of rest.slice(1)) {
          const i = kv.indexOf('=');
          if (i <= 0) throw new UsageError(`"${kv}" is not FIELD=VALUE`);
          input[kv.slice(0, i)] = parseValue(kv.slice(i + 1));
        }
        client = needHost(paths);
        const r = await client.request<DebugHypercallResult>('debugHypercall', { call, as: flag('as') ?? null, input });
        if (json) out(JSON.stringify(r, jsonReplacer));
        else out(`${r.call} as ${r.as}: ${r.statusName} (0x${r.status.toString(16)})${r.output !== null && r.output !== undefined ? `  ${JSON.stringify(r.output, jsonReplacer)}` : ''}`);
        return r.status === 0 ? 0 : 3;
      }
      case 'logs': {
        const role = flag('role');
        const vm = flag('vm');
        if (role && !['hypervisor', 'root', 'vmwp', 'partition'].includes(role)) throw new CliError(`--role ${role} is unknown: use hypervisor, root, vmwp or partition`);
        if (!existsSync(paths.logDir)) throw new CliError(`no logs under ${paths.logDir}`);
        const files = readdirSync(paths.logDir).filter((f) => f.endsWith('.log') && f !== 'stderr.log').map((f) => join(paths.logDir, f));
        const filter = (line: string): string | null => {
          try {
            const o = JSON.parse(line) as { role?: string; vm?: string };
            if (role && o.role !== role) return null;
            if (vm && o.vm !== vm) return null;
          } catch {
            return null;
          }
          return formatLog(line);
        };
        const lines: Array<{ t: string; s: string }> = [];
        for (const f of files) {
          for (const l of readFileSync(f, 'utf8').split('\n')) {
            const s = l && filter(l);
            if (s) lines.push({ t: s.slice(0, 24), s });
          }
        }
        lines.sort((x, y) => (x.t < y.t ? -1 : x.t > y.t ? 1 : 0));
        for (const l of lines) out(l.s);
        if (a.flags.has('f') || a.flags.has('follow')) await followLogs(files, filter);
        return 0;
      }
      default:
        throw new UsageError(`unknown command "${cmd}"; see "hvlab --help"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`hvlab: ${e.message}\n`);
      return 2;
    }
    if (e instanceof CliError || e instanceof MgmtCallError) {
      process.stderr.write(`hvlab: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`hvlab: internal error: ${(e as Error).stack ?? String(e)}\n`);
    return 1;
  } finally {
    client?.close();
  }
}

const code = await run(process.argv.slice(2));
process.exit(code);
