/**
 * hvlab — the command line. It mirrors the Hyper-V cmdlets (New-VM, Start-VM, Stop-VM, Get-VM…)
 * and talks only to a host's management API; `up`/`down` start and stop the host's processes.
 *
 * Every command declares its arguments and options in COMMANDS below; the parser refuses anything
 * else (an unknown, misplaced, repeated or valueless option, a missing or extra argument) and
 * checks option values before anything is sent, so a typo never turns into a default. The help
 * text is generated from the same table, so it cannot drift from what is accepted.
 *
 * Errors are one line on stderr naming the thing and the value, never a stack trace
 * (HVLAB_DEBUG=1 adds stacks and traces requests); with --json on the command line, that line is
 * JSON: {"error":{"message","kind","exitCode"}} (kind usage, value, host, interrupted or internal), so a script
 * that asked for JSON reads its failures as JSON too. Exit codes: 0 done, 1 a value was invalid or
 * the host refused or failed, 2 the command line could not be understood, 3 `debug hypercall`
 * returned a status other than SUCCESS, 130 interrupted.
 */
import { closeSync, constants, existsSync, openSync, readdirSync, readSync, realpathSync, statSync, writeFileSync, watch } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClusterKeyError, displayWidth, FileShapeError, hostPaths, pathsForRecord, padEndColumns, pidAlive, printable, readRegularFile, readRegularTail, resolveHome, type HostPaths } from '@hvlab/runtime';
import {
  describeBlackout, migrationHasDowntime, reportedMigrationStats, formatBytes, MGMT_PEEK_MAX_BYTES, MGMT_OPS, CLUSTER_HOST_RE, CLOCK_MAX_OFFSET_MS, MAX_VPS_PER_PARTITION, type MigrationStats, parseSize, LINK_MAX_DELAY_MS, LINK_MAX_RATE_BPS,
  vmMigrationOf, type DebugHypercallResult, type MigrationOptions, type HostInfo, type HostMemory, type LinkProbeResult, type IcServiceInfo, type KvpEntry, type ProcessInfo, type VmInfo,
} from '@hvlab/protocol';
import { MgmtClient, MgmtCallError, HostError as CliError, down, readHost, up } from '@hvlab/host';
import { FAULT_KINDS, VMBUS_PACKET_COUNTERS, VMBUS_SIGNAL_COUNTERS, MIG_CANCEL_TOO_LATE, MIGRATION_MIN_BANDWIDTH_BPS, PROCESS_ROLES, VMBUS_DEVICE_CLASSES, durationHint, parseDurationMs, parseSignedDurationMs, parseSeed, parseWholeNumber, seedProblem, type FaultKind } from '@hvlab/protocol';
import {
  NemesisClient, NemesisError, OWNER_RENEW_MS, PARTITION_SHAPES, faultOrder, readHostShrinks, unheldHostFaults, unheldShrinkRecord, worldHosts, holdHomeLease, holdRunLease, sweepOrphanedRunHomes, activeFile, checkFaultRequest, homeAlive, heldLinks, heldLinkWarning, nemesisPid, pausedBy, parseTarget, stopNemesis, undoGoneNemesis, type FaultRecord, type FaultRequest,
  experimentKindOf, loadChaosExperiment, paramsText, ChaosExperimentError, runChaosExperiment, plannedMoves, plannedSchedule, existingClusterProblems, drawSchedule, chaosWorld, moveLine, scheduleLine, scheduleLines, chaosCheckRows, chaosFaultRows, chaosMoveRows,
} from '@hvlab/faults';
import {
  runExperiment, loadExperiment, ExperimentError, experimentSummaryRows, HVLAB_VERSION,
  parseTopology, fileText, fieldPlace, problemsText, type FileProblem, meshTopologySource, TopologyError, MAX_TOPOLOGY_BYTES, ClusterError, readCluster, topologyDot, topologySvg, impairmentsText, clusterHostTarget, clusterHostHome, clusterUp, clusterDown, clusterGoingDown, clusterStatus, clusterVms, clusterVmsAnswered, fabricStatus, formatBinaryBytes, joinHost, linkSet, linkCut, linkHeal, linkProbeStop, linkReset, ProbeStopped, stoppableProbe, parseDuration, parseRate, parseLoss, type Topology, type ClusterStatus, type RunLease,
} from '@hvlab/cluster';

/** The command line cannot be understood (exit code 2). */
export class UsageError extends Error {}
/** A value given on the command line is invalid (exit code 1), found before anything was sent. */
export class ValueError extends Error {}

// ---------------------------------------------------------------------------------------------
// The command table

export interface OptionSpec {
  /** Long name, without the dashes. */
  name: string;
  /** One-letter alias, without the dash. */
  short?: string;
  /** Present when the option takes a value: its placeholder in the help (e.g. "SIZE"). */
  value?: string;
  /** The command cannot run without it. */
  required?: boolean;
  help: string;
  /** Checks the value before anything is sent; returns the problem as a sentence, or null. */
  check?: (v: string) => string | null;
}

export interface CommandSpec {
  /** The command's words, e.g. ["vm", "new"]. */
  words: string[];
  /** Its arguments as shown in the usage, e.g. "NAME". */
  args: string;
  /** How many arguments it takes. */
  min: number;
  /** Names of the required arguments for messages, when `args` is not simply them in order. */
  needs?: string[];
  max: number;
  options: OptionSpec[];
  /** Whether it can print JSON (then it accepts --json). */
  json: boolean;
  group: string;
  help: string;
}

const wholeIn = (opt: string, lo: number, hi: number, what?: string) => (v: string): string | null =>
  /^\d+$/.test(v) && Number(v) >= lo && Number(v) <= hi ? null
    // A sentence of its own ("a VM has 1 to 64 virtual processors") said nothing of the form when that was what was wrong (0x2, 2.5).
    : `--${opt} ${v} is invalid: ${what === undefined ? `a whole number from ${lo} to ${hi}` : /^\d+$/.test(v) ? what : `${what}, as a whole decimal number`}`;
/** A whole-number option from `lo` to `hi`, decimal or 0x hex (parseWholeNumber), as every fault option and `--gpa` take them. */
const faultIntegerIn = (opt: string, lo: number, hi: number) => (v: string): string | null => {
  const n = parseWholeNumber(v);
  return n !== null && n >= lo && n <= hi ? null : `--${opt} ${v} is invalid: a whole number from ${lo} to ${hi} (decimal or 0x hex)`;
};
const oneOf = (opt: string, values: readonly string[], verb = 'is invalid: use') => (v: string): string | null =>
  values.includes(v) ? null : `--${opt} ${v} ${verb} ${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`;
const nonEmpty = (opt: string) => (v: string): string | null => (v === '' ? `--${opt} is empty` : null);
const probability = (opt: string) => (v: string): string | null => (/^(0(\.\d+)?|1(\.0+)?|\.\d+)$/.test(v) ? null : `--${opt} ${v} is invalid: a probability from 0 to 1, e.g. 0.2`);
const durationOpt = (opt: string) => (v: string): string | null => (parseDurationMs(v) === null ? `--${opt} ${v} is invalid: a duration such as 20ms or 1s${durationHint(v)}` : null);
const IC_SERVICES = ['heartbeat', 'shutdown', 'timesync', 'kvp'] as const;
const LOG_ROLES = ['hypervisor', 'root', 'vmwp', 'partition'] as const;
const TEN_YEARS_S = 10 * 365 * 86400;

const HOME_OPTION: OptionSpec = { name: 'home', value: 'DIR', help: 'the state directory (default: HVLAB_HOME, else ~/.hvlab)' };
const HELP_OPTION: OptionSpec = { name: 'help', short: 'h', help: 'show this help' };
const JSON_OPTION: OptionSpec = { name: 'json', help: 'print the result as JSON (and a failure as one JSON line on stderr)' };
const HOST_OPTION: OptionSpec = { name: 'host', value: 'NAME', help: 'aim the command at host NAME of the cluster that is up in this home', check: nonEmpty('host') };
/** Accepted before the command as well as after it. */
const GLOBAL_OPTIONS = [HOME_OPTION, HOST_OPTION, HELP_OPTION, JSON_OPTION];

const LISTEN_OPTION: OptionSpec = {
  name: 'listen', value: 'IP', check: nonEmpty('listen'),
  help: 'where the cluster\'s fabric listens: 0.0.0.0 (or an address of this machine) lets hosts of other machines join (default: this machine only)',
};
const FABRIC_PORT_OPTION: OptionSpec = {
  name: 'fabric-port', value: 'PORT', check: wholeIn('fabric-port', 1, 65535, 'a port from 1 to 65535'),
  help: 'the port the cluster\'s fabric listens on (default: 7740 with --listen, where other machines join; else any free port)',
};
const inRange = (n: number | null, lo: number, hi: number): boolean => n !== null && Number.isFinite(n) && n >= lo && n <= hi;
const durationCheck = (opt: string) => (v: string): string | null => (v === 'none' || inRange(parseDuration(v), 0, LINK_MAX_DELAY_MS) ? null : `--${opt} ${v} is invalid: a duration from 0 to 60s such as 20ms or 1.5s, or none${durationHint(v)}`);
/** A seed (`--seed`): what a file's `seed` takes (parseSeed: decimal or 0x-hex), said in the file's sentence. */
const seedCheck = (v: string): string | null => (parseSeed(v) === null ? `--seed ${seedProblem(v === '' ? 'nothing' : v)}` : null);
/** The value of a --seed its check passed. */
const seedOf = (v: string): number => parseSeed(v)!;
const LINK_IMPAIRMENT_OPTIONS: OptionSpec[] = [
  { name: 'delay', value: 'TIME', help: 'added to each round trip (half each way), e.g. 20ms; none clears it', check: durationCheck('delay') },
  { name: 'jitter', value: 'TIME', help: '± this on the round trip, e.g. 2ms; none clears it', check: durationCheck('jitter') },
  { name: 'rate', value: 'RATE', help: 'each direction\'s rate, e.g. 100mbit or 1gbit; none clears it', check: (v) => (v === 'none' || inRange(parseRate(v), 1, LINK_MAX_RATE_BPS) ? null : `--rate ${v} is invalid: a rate such as 100mbit, 1gbit or 500kbit, or none`) },
  { name: 'loss', value: 'PERCENT', help: 'chunks lost (and retransmitted, as TCP does), e.g. 0.1%; none clears it', check: (v) => (v === 'none' || inRange(parseLoss(v), 0, 100) ? null : `--loss ${v} is invalid: a percentage from 0 to 100 such as 0.1%, or none`) },
  { name: 'seed', value: 'N', help: 'restart the link\'s jitter and loss draws from seed N, so a run repeats', check: seedCheck },
];
const linkPair = (verb: string, help: string, options: OptionSpec[] = []): CommandSpec => ({ words: ['link', verb], args: 'HOST HOST', min: 2, max: 2, json: true, group: 'Clusters', options, help });

const vmName = (words: string[], help: string, options: OptionSpec[] = [], json = true): CommandSpec => ({ words, args: 'NAME', min: 1, max: 1, options, json, group: 'VMs', help });

export const COMMANDS: CommandSpec[] = [
  {
    words: ['up'], args: '', min: 0, max: 0, json: true, group: 'Host',
    help: 'start a host (hypervisor + root partition) in the background',
    options: [
      { name: 'lps', value: 'N', help: 'logical processors (default: every CPU)', check: wholeIn('lps', 1, 256, '1 to 256 logical processors') },
      { name: 'vmbus-transport', value: 'shm|remote', help: 'shm: shared-memory rings (default); remote: every VMBus channel over ZeroMQ', check: oneOf('vmbus-transport', ['shm', 'remote']) },
      { name: 'warm', value: 'N', help: 'keep N booted VMs without an owner: "vm start" of a VM of their shape (--warm-memory, 1 VP, the default devices) takes one instead of booting ("ps" shows them booting or ready; default 0)', check: wholeIn('warm', 0, 64, '0 to 64 warm workers') },
      { name: 'warm-memory', value: 'SIZE', help: 'with --warm: the memory of the warm VMs, as "vm new --memory" takes it (default 64M)', check: (v) => (parseSize(v) === null ? `memory size "${v}" is invalid: use a whole number with an optional K, M or G suffix, e.g. 64M` : null) },
      { name: 'spare', value: 'N', help: 'keep N VM workers with their code loaded and no VM: any "vm start", restore or incoming migration takes one instead of starting two processes ("ps" shows them as spare; default 1, 0 for none)', check: wholeIn('spare', 0, 8, '0 to 8 spare workers') },
      { name: 'hosts', value: 'N', help: 'a cluster of N hosts instead, h1..hN, fully linked, as "cluster up" of such a file (see "cluster status")', check: wholeIn('hosts', 1, 32, '1 to 32 hosts') },
      LISTEN_OPTION,
      FABRIC_PORT_OPTION,
      { name: 'join', value: 'ADDRESS[:PORT]', help: 'join the cluster whose fabric is there (see "cluster status" on its machine) as one more host; needs --key', check: nonEmpty('join') },
      { name: 'key', value: 'FILE', help: 'with --join: the cluster\'s key file (cluster/cluster.key of its home), copied there by you', check: nonEmpty('key') },
      { name: 'name', value: 'NAME', help: 'with --join: this host\'s name in the cluster (default: j and random letters)', check: nonEmpty('name') },
      { name: 'address', value: 'IP', help: 'with --join: the address the cluster reaches this host by (default: this machine\'s address towards the fabric)', check: nonEmpty('address') },
    ],
  },
  { words: ['down'], args: '', min: 0, max: 0, json: true, group: 'Host', options: [], help: 'stop everything of this home (a cluster\'s home: the whole cluster, as "cluster down"); leaves no process, socket or shm file' },
  { words: ['host', 'info'], args: '', min: 0, max: 0, json: true, group: 'Host', options: [], help: 'host id, memory mode (shared/private), pids' },
  {
    words: ['host', 'memory'], args: '', min: 0, max: 0, json: true, group: 'Host', help: "the root partition process's memory (RSS, V8 heap, memory outside it)",
    options: [{ name: 'collect', help: 'after a full garbage collection in the root: what it still holds, not what awaits collection (a leak shows here)' }],
  },
  { words: ['ps'], args: '', min: 0, max: 0, json: true, group: 'Host', options: [], help: 'every process of the host: role, vm, pid' },
  {
    words: ['logs'], args: '', min: 0, max: 0, json: false, group: 'Host', help: "the host's logs, readable",
    options: [
      { name: 'role', value: 'R', help: 'only this role: hypervisor, root, vmwp or partition', check: oneOf('role', LOG_ROLES, 'is unknown: use') },
      { name: 'vm', value: 'NAME', help: 'only this VM', check: nonEmpty('vm') },
      { name: 'follow', short: 'f', help: 'keep printing new lines' },
    ],
  },
  {
    words: ['top'], args: '', min: 0, max: 0, json: true, group: 'Host', help: 'live table of VMs and their VPs: state, CPU %, run/ready/wait time',
    options: [
      { name: 'once', help: 'print one table and exit (also when stdout is not a terminal)' },
      {
        name: 'interval', value: 'S', help: 'seconds between tables, 0.2 to 60 (default 1)',
        check: (v) => (/^\d+(\.\d+)?$/.test(v) && Number(v) >= 0.2 && Number(v) <= 60 ? null : `--interval ${v} is invalid: 0.2 to 60 seconds`),
      },
    ],
  },
  {
    words: ['cluster', 'check'], args: 'FILE', min: 1, max: 1, json: true, group: 'Clusters', options: [],
    help: 'check a topology file (YAML or JSON: hosts, links, VMs) and show what it describes; every problem is named with its line and field',
  },
  {
    words: ['cluster', 'up'], args: 'FILE', min: 1, max: 1, json: true, group: 'Clusters', options: [LISTEN_OPTION, FABRIC_PORT_OPTION],
    help: 'bring up every host of a topology file (each in its own network namespace where allowed) and start its VMs on the hosts it names; returns when all are Running',
  },
  {
    words: ['cluster', 'graph'], args: '[FILE]', min: 0, max: 1, json: false, group: 'Clusters',
    help: 'a picture of the hosts, links and VMs of the running cluster, or of FILE: SVG (default) or Graphviz DOT',
    options: [
      { name: 'out', value: 'PATH', help: 'write it to PATH instead of printing it', check: nonEmpty('out') },
      { name: 'dot', help: 'Graphviz DOT instead of SVG' },
    ],
  },
  { words: ['cluster', 'status'], args: '', min: 0, max: 0, json: true, group: 'Clusters', options: [], help: 'the cluster\'s hosts (state, address, namespace, LPs, VMs), its links and how hosts reach each other' },
  { words: ['cluster', 'down'], args: '', min: 0, max: 0, json: true, group: 'Clusters', options: [], help: 'bring down every host of the cluster; leaves no process, socket, shm file, namespace or interface' },
  linkPair('set', 'set impairments of the link between two hosts, each independently (what is not given keeps its value)', LINK_IMPAIRMENT_OPTIONS),
  linkPair('cut', 'cut the link between two hosts: nothing crosses it until "link heal" (what was sent waits, as TCP retransmits)'),
  linkPair('heal', 'heal a cut link: what waited flows on'),
  { words: ['link', 'reset'], args: '[HOST HOST]', min: 0, max: 2, json: true, group: 'Clusters', options: [], help: 'clear every impairment of a link (or of every link) and heal it' },
  linkPair('probe', 'measure the link from the first host to the second: round trips and a bulk transfer, through the link (or --direct past it); Ctrl-C stops it at the fabric (--direct: at its host)', [
    { name: 'pings', value: 'N', help: 'round trips (default 10)', check: wholeIn('pings', 0, 10000) },
    { name: 'bytes', value: 'SIZE', help: 'bytes of a bulk transfer, e.g. 4M (default 0: none)', check: (v) => (parseSize(v) === null ? `--bytes ${v} is invalid: a size such as 4M or 512K` : null) },
    { name: 'direct', help: 'to the peer\'s own address, past the link layer (a baseline)' },
  ]),
  {
    words: ['vm', 'new'], args: 'NAME', min: 1, max: 1, json: true, group: 'VMs', help: 'create a VM (New-VM); it starts Off',
    options: [
      { name: 'memory', value: 'SIZE', help: 'guest memory, e.g. 64M (default), 1G; from 2M to 4G', check: (v) => (parseSize(v) === null ? `memory size "${v}" is invalid: use a whole number with an optional K, M or G suffix, e.g. 64M` : null) },
      { name: 'vps', value: 'N', help: `virtual processors, 1 to ${MAX_VPS_PER_PARTITION} (default 1)`, check: wholeIn('vps', 1, MAX_VPS_PER_PARTITION, `a VM has 1 to ${MAX_VPS_PER_PARTITION} virtual processors`) },
      {
        name: 'workload', value: 'W', check: nonEmpty('workload'),
        help: 'counter[:RATE] (default), idle, spin (one CPU-bound task per VP), sleep[:MS] (woken by a periodic timer every MS ms, default 50), memdirty[:SIZE] (QEMU\'s migration-test guest, 16M)',
      },
      {
        name: 'rtc-offset', value: 'SECONDS', help: 'the guest CMOS clock minus host time (default 0)',
        check: (v) => (/^-?\d+$/.test(v) && Math.abs(Number(v)) <= TEN_YEARS_S ? null : `--rtc-offset ${v} is invalid: whole seconds within ±10 years`),
      },
    ],
  },
  vmName(['vm', 'start'], 'start an Off VM, or continue a Saved one exactly where it was saved (Start-VM)'),
  {
    ...vmName(['vm', 'stop'], 'shut down through the guest\'s shutdown service; returns when Off (Stop-VM)'),
    options: [
      // At most an hour: the longest stop the root accepts.
      { name: 'timeout', value: 'S', help: 'seconds to wait for the guest, at most 3600 (default 30); then it fails', check: (v) => (/^\d+(\.\d+)?$/.test(v) && Number(v) > 0 && Number(v) <= 3600 ? null : `--timeout ${v} is invalid: seconds, more than 0 and at most 3600`) },
      { name: 'force', help: 'turn the VM off when the guest does not answer in time' },
    ],
  },
  vmName(['vm', 'turn-off'], 'power off at once; a Saved VM loses its saved state (Stop-VM -TurnOff)'),
  vmName(['vm', 'pause'], 'suspend every VP (Suspend-VM)'),
  vmName(['vm', 'resume'], 'continue a paused VM (Resume-VM)'),
  vmName(['vm', 'save'], 'write memory, VP/APIC/SynIC/timer and device state; the VM becomes Saved (Save-VM)'),
  vmName(['vm', 'delete'], 'remove an Off or Saved VM and its files: config, saved state, logs (Remove-VM)'),
  {
    ...vmName(['vm', 'move'], 'live-migrate a running VM to another host of the cluster (Move-VM): pre-copy with kernel dirty tracking; shows passes, transferred/remaining, dirty rate, expected downtime'),
    group: 'Live migration',
    options: [
      { name: 'to', value: 'HOST', required: true, help: 'the destination host of the cluster', check: (v) => (CLUSTER_HOST_RE.test(v) ? null : `--to ${JSON.stringify(v)} is not a host name (a lower-case letter, then up to 9 lower-case letters, digits or dashes, as the cluster's hosts are named)`) },
      {
        name: 'bandwidth', value: 'SIZE', help: 'bytes per second the stream may use, e.g. 100M; at least 64K, or 0 for no limit (the default: as fast as the link allows)',
        check: (v) => {
          const n = parseSize(v);
          return n === null || (n > 0 && n < MIGRATION_MIN_BANDWIDTH_BPS) ? `--bandwidth ${v} is invalid: bytes per second from 64K, such as 100M or 512K, or 0 for no limit` : null;
        },
      },
      { name: 'downtime-limit', value: 'TIME', help: 'the blackout to aim for, e.g. 300ms (default, as QEMU)', check: (v) => (inRange(parseDuration(v), 1, 3_600_000) ? null : `--downtime-limit ${v} is invalid: a duration such as 300ms or 1s${durationHint(v)}`) },
      { name: 'max-passes', value: 'N', help: 'pre-copy passes at most before the blackout (default 10)', check: wholeIn('max-passes', 1, 1000) },
      { name: 'compress', help: 'compress pages (deflate); zero pages are never sent in full anyway' },
      { name: 'auto-converge', help: 'throttle the VM when a pass does not shrink the dirty set (20 %, +10 %, at most 99 %, as QEMU)' },
      { name: 'postcopy', help: 'switch to the destination after one full pass; the pages dirtied since come on demand (userfaultfd) and in the background. If either host dies before every page is there, the VM is lost' },
      { name: 'offline', help: 'stop-and-copy: suspend, copy everything once, resume there (the baseline)' },
    ],
  },
  {
    words: ['experiment', 'run'], args: 'FILE', min: 1, max: 1, json: true, group: 'Experiments',
    help: 'run an experiment file. kind: migration — methods × repetitions moved between two hosts, written as results.json, results.csv, results.md and SVG plots. '
      + 'kind: faults — workloads under a schedule of faults (explicit, or drawn from a seed), with checkers (liveness, progress, isolation, memory, cleanup, recovery time), written as results.json, results.md, timeline.svg and samples.csv. '
      + 'Either on a new cluster or the one up here',
    options: [
      { name: 'out', value: 'DIR', help: 'where the report goes (default ./experiment-NAME-TIMESTAMP)', check: nonEmpty('out') },
      { name: 'seed', value: 'N', help: 'kind: faults: draw the random schedule from this seed instead of the file\'s (the report names it, so a run replays)', check: seedCheck },
      { name: 'check', help: 'only check the file, naming the line and field of every problem; run nothing' },
    ],
  },
  { ...vmName(['vm', 'move-status'], 'the VM\'s current or last migration through this host, with QEMU\'s query-migrate names'), group: 'Live migration' },
  {
    ...vmName(['vm', 'move-cancel'], 'abort a migration safely in any phase before the switch-over: the VM stays where it was', [
      { name: 'force', help: 'only for a move in doubt (its commit sent, the destination silent since; move-status says so): resume the VM here without the destination\'s word (if the destination runs it, it then runs on both hosts)' },
    ]), group: 'Live migration',
  },
  {
    ...vmName(['vm', 'set-processor'], 'Set-VMProcessor, on a running or stopped VM'),
    options: [
      { name: 'reserve', value: 'R', help: '% of one LP guaranteed to each VP, 0-100', check: wholeIn('reserve', 0, 100) },
      { name: 'maximum', value: 'M', help: '% of one LP each VP may use at most, 1-100', check: wholeIn('maximum', 1, 100) },
      { name: 'weight', value: 'W', help: 'relative weight against other VMs, 1-10000 (default 100)', check: wholeIn('weight', 1, 10000) },
    ],
  },
  {
    words: ['vm', 'list'], args: '', min: 0, max: 0, json: true, group: 'VMs', help: 'name, state, partition, VPs, memory, uptime, progress, CPU % (of one LP) (Get-VM)',
    options: [{ name: 'all', help: 'every VM of every host of the cluster, with its host' }],
  },
  vmName(['vm', 'status'], 'guest facts: progress, steps, LP occupancy, CMOS time, intercepts'),
  {
    ...vmName(['vm', 'peek'], 'read guest memory: a hex dump, or the raw bytes into a file', [], false),
    options: [
      { name: 'gpa', value: 'ADDR', required: true, help: 'guest physical address, decimal or 0x hex', check: (v) => (parseWholeNumber(v) === null ? `--gpa ${v} is not an address` : null) },
      { name: 'len', value: 'N', required: true, help: 'bytes to read, e.g. 16 or 4M', check: (v) => { const n = parseSize(v); return n === null || n < 1 ? `--len ${v} is not a length` : n > MGMT_PEEK_MAX_BYTES ? `--len ${v} is more than one peek reads (at most ${formatBytes(MGMT_PEEK_MAX_BYTES)})` : null; } },
      { name: 'out', value: 'FILE', help: 'write the bytes to FILE instead of printing them', check: nonEmpty('out') },
    ],
  },
  {
    ...vmName(['vm', 'ic'], 'integration services: enabled, status (OK, NoContact, LostCommunication), heartbeat sequence, clock offset (Get-/Enable-/Disable-VMIntegrationService)'),
    group: 'Integration services',
    options: [
      { name: 'enable', value: 'SERVICE', help: 'add (offer) the service\'s channel: heartbeat, shutdown, timesync or kvp', check: oneOf('enable', IC_SERVICES) },
      { name: 'disable', value: 'SERVICE', help: 'hot remove (rescind) the service\'s channel', check: oneOf('disable', IC_SERVICES) },
    ],
  },
  {
    words: ['vm', 'kvp'], args: 'NAME set KEY VALUE | get KEY | delete KEY | list', min: 2, max: 4, needs: ['NAME', 'set|get|delete|list'], json: true, group: 'Integration services',
    help: 'KVP exchange: every operation asks the guest; the host writes only the "external" pool (put -- before a VALUE that starts with -)',
    options: [{ name: 'pool', value: 'external|guest|auto', help: 'the pool (default external)', check: oneOf('pool', ['external', 'guest', 'auto']) }],
  },
  {
    words: ['fault', 'inject'], args: 'KIND', min: 1, max: 1, json: true, group: 'Faults',
    help: `inject one fault for a while (it is undone at its end, by "fault clear", by "down", and when its target vanishes). KIND: ${FAULT_KINDS.join(', ')}. `
      + 'E.g. hvlab fault inject pause --target vm:web --for 5s; hvlab fault inject vmbus --target vm:web --channel heartbeat --drop 0.5 --for 10s; hvlab fault inject partition --target cluster --shape majority --for 20s',
    options: [
      { name: 'target', value: 'T', required: true, help: 'vm:NAME, host:NAME, host-of:VM, link:A-B, cluster, vms:SEL or hosts:SEL (SEL: one, minority, majority, all; drawn from --seed)', check: (v) => { const t = parseTarget(v); return t.ok ? null : t.message; } },
      { name: 'for', value: 'TIME', required: true, help: 'how long, e.g. 5s, 250ms, 2m (a fault without an end is refused; kill and bitflip take 0)', check: (v) => (parseDurationMs(v) === null ? `--for ${v} is invalid: a duration such as 5s or 250ms${durationHint(v)}` : null) },
      { name: 'role', value: 'ROLE', help: 'kill and pause: partition (default for VMs), vmwp, root (default for hosts), hypervisor, or fabric (the only one of --target cluster)', check: oneOf('role', [...PROCESS_ROLES]) },
      { name: 'restart', help: 'kill: start the killed VM again when the fault ends' },
      { name: 'channel', value: 'NAME', help: `vmbus: only this channel (${VMBUS_DEVICE_CLASSES.join(', ')}; default every channel)`, check: oneOf('channel', VMBUS_DEVICE_CLASSES, 'is not a VMBus channel: use') },
      { name: 'drop', value: 'P', help: 'vmbus: probability 0-1 of dropping a packet', check: probability('drop') },
      { name: 'duplicate', value: 'P', help: 'vmbus: probability of duplicating a packet', check: probability('duplicate') },
      { name: 'reorder', value: 'P', help: 'vmbus: probability of holding a packet back behind the next', check: probability('reorder') },
      { name: 'corrupt', value: 'P', help: 'vmbus: probability of flipping a byte of a packet', check: probability('corrupt') },
      { name: 'signal-drop', value: 'P', help: 'vmbus: probability of dropping a signal', check: probability('signal-drop') },
      { name: 'signal-delay', value: 'TIME', help: 'vmbus: delay every signal this long', check: durationOpt('signal-delay') },
      { name: 'delay', value: 'TIME', help: 'vmbus: delay every packet; interrupt-delay: delay every interrupt; link: round-trip delay (as ping shows it)', check: durationOpt('delay') },
      { name: 'jitter', value: 'TIME', help: 'link: delay jitter', check: durationOpt('jitter') },
      { name: 'rate', value: 'RATE', help: 'link: rate, e.g. 10mbit', check: (v) => (parseRate(v) === null ? `--rate ${v} is invalid: e.g. 10mbit, 1gbit` : null) },
      { name: 'loss', value: 'PCT', help: 'link: % of chunks lost (each retransmitted later)', check: (v) => (parseLoss(v) === null ? `--loss ${v} is invalid: a percentage such as 5%` : null) },
      { name: 'cut', help: 'link: cut it' },
      { name: 'shape', value: 'S', help: `partition: ${PARTITION_SHAPES.join(', ')} (default one)`, check: oneOf('shape', [...PARTITION_SHAPES]) },
      { name: 'offset', value: 'TIME', help: 'clock: step the guest\'s reference time by this much, e.g. 5s or -2s', check: (v) => (parseSignedDurationMs(v) === null ? `--offset ${v} is invalid: a duration such as 5s or -2s${durationHint(v.replace(/^[+-]/, ''))}` : null) },
      { name: 'skew', value: 'PPM', help: 'clock: run the guest\'s time this many ppm faster (negative: slower)', check: (v) => (parseWholeNumber(v, true) === null ? `--skew ${v} is invalid: whole ppm, e.g. 100000 or -50000` : null) },
      { name: 'vps', value: 'LIST', help: 'vp-stall: VP indexes, decimal or 0x hex, e.g. 0,1 (default all)', check: (v) => (v.split(',').every((x) => parseWholeNumber(x) !== null) ? null : `--vps ${v} is invalid: e.g. 0 or 0,1`) },
      { name: 'lps', value: 'N', help: 'lp-shrink: logical processors left', check: faultIntegerIn('lps', 1, 1024) },
      { name: 'gpa', value: 'ADDR', help: 'bitflip: the byte, decimal or 0x hex (default: the first byte of a page of the workload\'s data)', check: (v) => (parseWholeNumber(v) === null ? `--gpa ${v} is not an address` : null) },
      { name: 'mask', value: 'BITS', help: 'bitflip: the bits to flip, 1-255, decimal or 0x hex (default one bit drawn from --seed)', check: faultIntegerIn('mask', 1, 255) },
      { name: 'seed', value: 'N', help: 'draws (a selector\'s pick, packet fates) come from this seed', check: seedCheck },
      { name: 'id', value: 'ID', help: 'the fault\'s id (default f1, f2, …)', check: nonEmpty('id') },
      { name: 'wait', help: 'stay until the fault ends (Ctrl-C ends it at once)' },
    ],
  },
  {
    words: ['fault', 'list'], args: '', min: 0, max: 0, json: true, group: 'Faults', help: 'the faults active now: id, kind, target, what they hit, time left',
    options: [{ name: 'all', help: 'also the faults that ended (this nemesis\'s life; faults/log.jsonl has every one)' }],
  },
  { words: ['fault', 'clear'], args: '[ID]', min: 0, max: 1, json: true, group: 'Faults', options: [], help: 'end a fault (or every fault) now, undoing it; also undoes what a nemesis that died left behind, an LP shrink a host holds without a fault of the nemesis (of that ID; without ID, one naming no fault)' },
  {
    words: ['debug', 'hypercall'], args: 'CALL [FIELD=VALUE …]', min: 1, max: Infinity, json: true, group: 'Debugging',
    help: 'one hypercall as the root or as a VM\'s partition. Values: 12, 0x40, hex:00ff…, len:N (N zero bytes), text:abc, true, false, or a string. '
      + 'E.g. hvlab debug hypercall --as vm1 PostMessage connectionId=1 messageType=1 payload=len:241',
    options: [
      { name: 'as', value: 'VM', help: 'call as this VM\'s partition (default: the root)', check: nonEmpty('as') },
      { name: 'page', help: 'as the root, through its hypercall page where the call has a page form, as its hot-path calls go (a refusal then has no reason text)' },
    ],
  },
];

/**
 * The hosts of the cluster up in `home` (the fabric's members, or the topology's when the fabric
 * does not answer), or null when no cluster is up there.
 */
async function upClusterHosts(home: string): Promise<string[] | null> {
  const c = readCluster(home);
  if (!c) return null;
  try {
    return (await clusterStatus(home)).hosts.map((h) => h.name);
  } catch {
    return c.topology.hosts.map((h) => h.name);
  }
}

/** `experiment run FILE` for a file of kind: faults (the chaos runner of @hvlab/faults). */
async function runChaos(file: string, home: string, opt: (n: string) => string | undefined, flag: (n: string) => boolean, json: boolean): Promise<number> {
  const seed = opt('seed') === undefined ? undefined : seedOf(opt('seed')!);
  const spec = loadChaosExperiment(file);
  if (spec instanceof ChaosExperimentError) return refuseFile(spec, file, 'experiment', flag('check') ? '' : '; nothing was started', json);
  if (flag('check')) {
    const useSeed = seed ?? spec.seed;
    const fresh = spec.cluster === 'new';
    // On an existing cluster, the names the file gives must be the cluster's (when one is up here).
    const hosts = fresh ? null : await upClusterHosts(home);
    const wrong = hosts === null ? [] : existingClusterProblems(spec, hosts);
    if (wrong.length > 0) return refuseForCluster(file, wrong, json);
    if (json) out(JSON.stringify({ valid: true, spec, seed: useSeed, schedule: fresh ? plannedSchedule(spec, useSeed) : null, moves: fresh ? plannedMoves(spec, useSeed) : null }));
    else {
      out(`${file}: chaos experiment ${spec.name}: ${fresh ? `${spec.hosts ?? 0} new hosts` : 'the cluster up here'}, ${spec.workloads.length} VM${spec.workloads.length === 1 ? '' : 's'}, seed ${useSeed}, ${spec.durationMs / 1000} s`);
      if (fresh) {
        for (const l of scheduleLines(plannedSchedule(spec, useSeed))) out(`  ${l}`);
        for (const m of plannedMoves(spec, useSeed)) out(`  ${moveLine(m)}`);
      } else {
        // The file's own faults and moves, as they will run (they need no cluster to be said).
        for (const l of scheduleLines(drawSchedule(useSeed, { ...spec, random: null }, chaosWorld(spec, { hosts: [], links: [] })))) out(`  ${l}`);
        spec.moves.forEach((m, i) => out(`  m${i + 1} +${(m.atMs / 1000).toFixed(1)}s ${m.vm} → ${m.to} by ${m.method}`));
        if (spec.random) out('  (and the random part, drawn against the cluster when it runs)');
        out(hosts === null ? '  (no cluster is up here: its host names are checked when it runs)' : `  (its host names are those of the cluster up here: ${hosts.join(', ')})`);
      }
    }
    return 0;
  }
  // Ctrl-C or a kill ends the run: its faults are cleared, what it made is taken down, and the report is still written.
  const ac = new AbortController();
  const release = onInterrupt(() => ac.abort());
  let report;
  try {
    report = await clusterCall(() => runChaosExperiment(file, { out: opt('out'), progress: (l) => process.stderr.write(`${l}\n`), home: spec.cluster === 'existing' ? home : undefined, signal: ac.signal, seed }));
  } catch (e) {
    if (e instanceof ChaosExperimentError) return refuseFile(e, file, 'experiment', '; nothing was started', json);
    if (ac.signal.aborted) throw new Interrupted(`experiment was interrupted before its faults began: everything it had started was taken down, and no report was written`);
    throw e;
  } finally {
    release();
  }
  if (json) out(JSON.stringify(report));
  else {
    out(table(chaosCheckRows(report)));
    out('');
    out(table(chaosFaultRows(report)));
    if (report.moves.length > 0) {
      out('');
      out(table(chaosMoveRows(report)));
    }
    out(`seed ${report.seed} (replay: --seed ${report.seed}); report in ${report.out}: ${report.files.join(', ')}${report.aborted ? ' (stopped early)' : ''}`);
  }
  // Faults the file names that were refused did not happen: the run did not test what it says.
  // Said, and the run fails (refused random draws are said in the report and do not fail it).
  const listed = new Set(report.schedule.filter((f) => f.source !== 'random').map((f) => f.id));
  const refusedListed = report.refused.filter((r) => listed.has(r.id.slice(r.id.lastIndexOf('.') + 1)));
  if (refusedListed.length > 0) process.stderr.write(`hvlab: ${refusedListed.length} of the file's ${listed.size} fault${listed.size === 1 ? ' was' : 's were'} refused, so the run did not test what its file says: ${refusedListed.map((r) => `${r.id.slice(r.id.lastIndexOf('.') + 1)} (${r.error})`).join('; ')}\n`);
  // The cluster went down under the run: said last, as why it stopped (its checks say the rest).
  if (report.stoppedBy !== null) process.stderr.write(`hvlab: ${report.stoppedBy} (report in ${report.out})\n`);
  // Interrupted (Ctrl-C): 130, as every command; the report was written all the same.
  return report.aborted ? 130 : report.stoppedBy !== null ? 1 : report.held && refusedListed.length === 0 ? 0 : 1;
}

/** 1500 → "1.5s", 250 → "250ms". */
function formatMs(ms: number): string {
  return ms >= 1000 ? `${Number((ms / 1000).toFixed(1))}s` : `${Math.round(ms)}ms`;
}

/** The request `fault inject KIND` stands for; an option that KIND does not take is refused. */
export function faultRequestFromOptions(kind: FaultKind, opt: (n: string) => string | undefined, flag: (n: string) => boolean): FaultRequest {
  const takes: Record<FaultKind, string[]> = {
    kill: ['role', 'restart'], pause: ['role'],
    vmbus: ['channel', 'drop', 'duplicate', 'reorder', 'corrupt', 'signal-drop', 'signal-delay', 'delay'],
    'interrupt-delay': ['delay'], clock: ['offset', 'skew'], 'vp-stall': ['vps'], 'lp-shrink': ['lps'],
    link: ['delay', 'jitter', 'rate', 'loss', 'cut'], partition: ['shape'], bitflip: ['gpa', 'mask'],
  };
  const kindOptions = ['role', 'restart', 'channel', 'drop', 'duplicate', 'reorder', 'corrupt', 'signal-drop', 'signal-delay', 'delay', 'jitter', 'rate', 'loss', 'cut', 'shape', 'offset', 'skew', 'vps', 'lps', 'gpa', 'mask'];
  for (const o of kindOptions) {
    if ((opt(o) !== undefined || flag(o)) && !takes[kind].includes(o)) throw new UsageError(`a ${kind} fault takes no --${o}${takes[kind].length ? ` (it takes ${takes[kind].map((x) => `--${x}`).join(', ')})` : ''}`);
  }
  const params: Record<string, unknown> = {};
  const num = (o: string, key: string): void => {
    const v = opt(o);
    // Through the same reading as the option's check (Number() took 0xff but not -0x10).
    if (v !== undefined) params[key] = parseWholeNumber(v, true) ?? Number(v);
  };
  const dur = (o: string, key: string): void => {
    const v = opt(o);
    if (v !== undefined) params[key] = parseDurationMs(v)!;
  };
  switch (kind) {
    case 'kill':
      if (flag('restart')) params.restart = true;
      break;
    case 'vmbus':
      if (opt('channel') !== undefined) params.channel = opt('channel');
      num('drop', 'drop');
      num('duplicate', 'duplicate');
      num('reorder', 'reorder');
      num('corrupt', 'corrupt');
      num('signal-drop', 'signalDrop');
      dur('signal-delay', 'signalDelayMs');
      dur('delay', 'delayMs');
      // Said in the CLI's words (the nemesis names its fields: signalDrop, …).
      if (!['drop', 'duplicate', 'reorder', 'corrupt', 'signalDrop'].some((k) => ((params[k] as number | undefined) ?? 0) > 0) && params.delayMs === undefined && params.signalDelayMs === undefined) {
        throw new UsageError('a vmbus fault needs something to do to the packets: --drop, --duplicate, --reorder, --corrupt or --signal-drop with a probability above 0, or --delay or --signal-delay');
      }
      break;
    case 'interrupt-delay':
      dur('delay', 'delayMs');
      if (params.delayMs === undefined) throw new UsageError('an interrupt-delay fault needs --delay TIME');
      break;
    case 'clock':
      if (opt('offset') !== undefined) {
        const ms = parseSignedDurationMs(opt('offset')!);
        if (ms !== null && Math.abs(ms) > CLOCK_MAX_OFFSET_MS) throw new ValueError(`--offset ${opt('offset')} is more than a clock fault shifts (at most 7 days either way)`);
        params.offsetMs = ms;
      }
      num('skew', 'skewPpm');
      if (params.offsetMs === undefined && params.skewPpm === undefined) throw new UsageError('a clock fault needs --offset TIME and/or --skew PPM');
      break;
    case 'vp-stall':
      if (opt('vps') !== undefined) params.vps = opt('vps');
      break;
    case 'lp-shrink':
      num('lps', 'lps');
      if (params.lps === undefined) throw new UsageError('an lp-shrink fault needs --lps N');
      break;
    case 'link':
      if (!['delay', 'jitter', 'rate', 'loss'].some((o) => opt(o) !== undefined) && !flag('cut')) throw new UsageError('a link fault needs something to do to the link: --delay, --jitter, --rate, --loss or --cut');
      dur('delay', 'delayMs');
      dur('jitter', 'jitterMs');
      if (opt('rate') !== undefined) params.rateBps = parseRate(opt('rate')!);
      if (opt('loss') !== undefined) params.lossPercent = parseLoss(opt('loss')!);
      if (flag('cut')) params.cut = true;
      break;
    case 'partition':
      if (opt('shape') !== undefined) params.shape = opt('shape');
      break;
    case 'bitflip':
      num('gpa', 'gpa');
      num('mask', 'mask');
      break;
    case 'pause':
      break;
  }
  const req: FaultRequest = { kind, target: opt('target')!, forMs: parseDurationMs(opt('for')!)!, params };
  if (opt('role') !== undefined) req.role = opt('role') as FaultRequest['role'];
  if (opt('seed') !== undefined) req.seed = seedOf(opt('seed')!);
  if (opt('id') !== undefined) req.id = opt('id');
  // Checked here as the nemesis checks it, and said in the command line's words: the nemesis
  // names its fields ('clock: "skewPpm" must be …'), not the option and the value given, and its
  // refusal came back as the host's (exit kind host, not value).
  const checked = checkFaultRequest(req);
  if (!checked.ok) {
    const words = checked.message.replace(/"([A-Za-z]+)" must be (?:a whole number|a number) from (-?[\d.]+) to (-?[\d.]+)/g, (whole, field: string, lo: string, hi: string) => {
      // A time is given with its unit, and said with it: not "a whole number from 1 to 60000".
      const o = FAULT_PARAM_OPTIONS[field];
      if (o === undefined || !field.endsWith('Ms')) return whole;
      return `--${o} ${opt(o) ?? ''} must be from ${lo} ms to ${hi} ms`;
    }).replace(/"([A-Za-z]+)"/g, (whole, field: string) => {
      const o = FAULT_PARAM_OPTIONS[field];
      const v = o === undefined ? undefined : opt(o);
      return o === undefined ? whole : `--${o}${v === undefined ? '' : ` ${v}`}`;
    });
    throw new ValueError(words);
  }
  return req;
}

/** The option of each fault parameter the nemesis names (its request's `params`). */
const FAULT_PARAM_OPTIONS: Readonly<Record<string, string>> = {
  delayMs: 'delay', jitterMs: 'jitter', rateBps: 'rate', lossPercent: 'loss', offsetMs: 'offset', skewPpm: 'skew', signalDelayMs: 'signal-delay',
  signalDrop: 'signal-drop', drop: 'drop', duplicate: 'duplicate', reorder: 'reorder', corrupt: 'corrupt', vps: 'vps', lps: 'lps', gpa: 'gpa', mask: 'mask', channel: 'channel', shape: 'shape',
};

/**
 * A host's LPs, and the ones in effect while an lp-shrink lasts: "2 (1 while fault f3 lasts, 8 s
 * more)"; "2 (1 while an LP shrink naming no fault lasts, 8 s more)" for one that names none.
 */
export function lpsText(info: Pick<HostInfo, 'lps' | 'lpShrink'>): string {
  const s = info.lpShrink;
  if (!s) return String(info.lps);
  return `${info.lps} (${s.lps} while ${s.fault === null ? 'an LP shrink naming no fault' : `fault ${s.fault}`} lasts, ${Math.ceil(s.remainingMs / 1000)} s more)`;
}

/** A vmbus fault's counters, per VM: "web@h1: 36 of 120 packets dropped, 12 delayed; 4 of 40 signals dropped". */
export function faultCountersText(f: FaultRecord): string {
  const said = (n: number, what: string, c: Record<string, number>, names: readonly string[]): string => {
    const did = names.filter((k) => k !== 'seen' && (c[k] ?? 0) > 0).map((k) => `${c[k]} ${k}`);
    return did.length === 0 ? `${n} ${what}, none touched` : `${did[0]!.replace(/ /, ` of ${n} ${what} `)}${did.length > 1 ? `, ${did.slice(1).join(', ')}` : ''}`;
  };
  return Object.entries(f.counters ?? {}).map(([vm, c]) => `${vm}: ${said(c.packets.seen, 'packets', c.packets, VMBUS_PACKET_COUNTERS)}; ${said(c.signals.seen, 'signals', c.signals, VMBUS_SIGNAL_COUNTERS)}`).join('; ');
}

/** `fault list`: one row per fault, with what it does (its parameters, as the command line asked them) and, for vmbus faults, what it did so far. */
export function faultTable(list: FaultRecord[], now = Date.now()): string {
  const counted = list.some((f) => f.counters && Object.keys(f.counters).length > 0);
  return table([
    ['ID', 'KIND', 'PARAMS', 'TARGET', 'HIT', 'STATE', 'LEFT', 'OWNER', ...(counted ? ['COUNTED'] : [])],
    ...list.map((f) => [
      f.id, f.kind, paramsText(f.params) || '-', f.target + (f.role ? ` (${f.role})` : ''), (f.resolved.summary.length > 60 ? `${f.resolved.summary.slice(0, 59)}…` : f.resolved.summary) + (f.gone?.length ? `; gone: ${f.gone.join(', ')}` : ''),
      f.unheld && f.state === 'active' ? 'held by host' : f.state === 'active' || f.state === 'failed' || !f.endReason ? f.state : `${f.state}: ${f.endReason}`, f.state === 'active' ? formatMs(Math.max(0, f.endsAt - now)) : '-', f.owner ?? '-',
      ...(counted ? [faultCountersText(f) || '-'] : []),
    ]),
  ]);
}

/**
 * A link an active fault holds may still be changed by hand: by design, the hand's change wins
 * (the fault's end sets back only what it set and still holds). But the fault stays listed active
 * while its effect may be gone, so the change says so on stderr, naming the fault; a cut of a link
 * the fault cut is the exception, and is said as one (heldLinkWarning).
 */
function warnHeldLink(home: string, a: string | null, b: string | null, op: 'set' | 'cut' | 'heal' | 'reset'): void {
  const same = (x: string, y: string): boolean => a === null || (x === a && y === b) || (x === b && y === a);
  for (const f of heldLinks(home).filter((l) => same(l.a, l.b))) process.stderr.write(`hvlab: ${heldLinkWarning(f, op)}\n`);
}

/** Whether `home` holds a cluster's record (one is up, or its teardown is unfinished). */
function hasCluster(home: string): boolean {
  try {
    return readCluster(home) !== null;
  } catch {
    return true; // a record it cannot read: "cluster down" sweeps what it can
  }
}

/**
 * After a down: the temporary homes of runs that are gone (killed before their lease, or with
 * their nemesis), their clusters taken down; each said on stderr (stdout stays the down's own).
 */
async function sweepRunHomes(): Promise<void> {
  for (const h of await sweepOrphanedRunHomes()) process.stderr.write(`hvlab: removed the temporary home of a run that is gone, with anything it had running: ${h}\n`);
}

function clusterDownLine(r: Awaited<ReturnType<typeof clusterDown>>): string {
  if (r.name === null && r.hosts.length === 0) return 'no cluster was up';
  const n = r.network;
  return `cluster ${r.name ?? '?'} is down (${r.hosts.map((h) => `${h.name}${h.graceful ? '' : ' forced'}`).join(', ') || 'no hosts'}${n ? `; removed ${n} namespace${n === 1 ? '' : 's'} and interfaces` : ''})`;
}

/**
 * When HOME holds a cluster (its hosts have homes of their own below it), which one and what to do
 * instead of a command for a single host there ("cluster NAME: …"); null when it holds none.
 */
function clusterHint(home: string): string | null {
  let c: ReturnType<typeof readCluster> = null;
  try {
    c = readCluster(home);
  } catch {
    return null;
  }
  if (!c) return null;
  const hosts = c.topology.hosts.map((h) => h.name);
  return `cluster ${c.topology.name}: name one of its hosts with --host (${hosts.join(', ')}), or use "vm list --all", "cluster status" and "cluster down"`;
}

/** Commands on one VM (named first) that, in a cluster's home without --host, go to the host the VM is on. */
const VM_COMMANDS_BY_NAME: ReadonlySet<string> = new Set([
  'vm start', 'vm stop', 'vm turn-off', 'vm pause', 'vm resume', 'vm save', 'vm delete', 'vm status', 'vm ic', 'vm kvp', 'vm peek', 'vm set-processor',
  'vm move', 'vm move-status', 'vm move-cancel',
]);

/**
 * The host of cluster `home` that has VM `name` (every host is asked, as `vm list --all` asks).
 * While a VM moves, its destination lists it too until the commit (its `migration` incoming; a
 * root before that field says "incoming migration from …" until the VM runs there): the host it
 * moves from is the one. Throws a sentence when no host that answered has it, or when more than
 * one does (then --host says which).
 */
async function hostOfVmInCluster(home: string, name: string): Promise<string> {
  const vms = (await clusterVms(home)).filter((v) => v.name === name);
  const c = readCluster(home);
  const cluster = c ? `cluster ${c.topology.name}` : 'the cluster';
  // Once a pre-copy's VM runs at the destination its reason is "migrated from …", before the commit
  // as after it: only the mark tells the copy that is still the source's.
  const incoming = (v: VmInfo): boolean => {
    const m = vmMigrationOf(v);
    return m !== undefined ? m?.direction === 'incoming' : (v.lastStateReason ?? '').startsWith('incoming migration from ');
  };
  const settled = vms.filter((v) => !incoming(v));
  const hosts = [...new Set((settled.length > 0 ? settled : vms).map((v) => v.host))].sort();
  if (hosts.length === 1) return hosts[0]!;
  if (hosts.length === 0) throw new CliError(`VM "${name}" is on no host of ${cluster} that answered ("hvlab vm list --all" lists its VMs; --host aims at one host)`);
  throw new CliError(`VM "${name}" is on more than one host of ${cluster} (${hosts.join(', ')}): aim at one with --host`);
}

/**
 * A finished move's passes. A pre-copy's last pass is the blackout's (the last dirty pages, with the
 * VM stopped): said apart, so that `--max-passes 5` reads "5 pre-copy passes and the blackout's",
 * not "6 passes".
 */
function passesText(st: MigrationStats): string {
  const n = st.passes.length;
  if (st.method === 'precopy' && n >= 2) return `${n - 1} pre-copy pass${n - 1 === 1 ? '' : 'es'} and the blackout's`;
  return `${n} pass${n === 1 ? '' : 'es'}`;
}

/**
 * The line for a move that did not complete, saying where it left its VM: on its host only when
 * that host still runs it. A move cut short by "cluster down" (`clusterHome`: the cluster's home,
 * when the command was aimed at one of its hosts) or by its host going down said "it stays on h1"
 * of a host that was being taken down.
 */
async function moveFailure(c: MgmtClient, st: MigrationStats, clusterHome: string | null): Promise<string> {
  const head = `VM ${st.vm} was not moved (${st.status})`;
  const desc = st['error-desc'] ?? 'no reason given';
  if (/the VM is lost/.test(desc)) return `${head}: ${desc}`;
  if (clusterHome !== null && clusterGoingDown(clusterHome)) return `${head}: the move ended because the cluster is going down ("cluster down"), and VM ${st.vm} goes down with host ${st.from} (${desc})`;
  let vms: VmInfo[];
  try {
    vms = await c.request<VmInfo[]>('vmList', {}, 3000);
  } catch {
    return `${head}: the move ended because host ${st.from} went down, and VM ${st.vm} with it (${desc})`;
  }
  const vm = vms.find((v) => v.name === st.vm);
  if (!vm) return `${head}: ${desc}; VM ${st.vm} is no longer on ${st.from}`;
  if (vm.state === 'Running') return `${head}: ${desc}; it stays on ${st.from}`;
  return `${head}: ${desc}; it is ${vm.state} on ${st.from}${vm.lastStateReason ? ` (${vm.lastStateReason})` : ''}`;
}

/**
 * A VM's state as `vm list` and `top` show it: "Running (frozen by fault f3)" while its partition
 * process is stopped (a pause fault: the VM is frozen whatever its state says), "(worker frozen
 * …)" while only its worker is; `paused` maps the pids the home's pause faults stopped to them.
 */
function vmStateText(v: VmInfo, paused: Map<number, string>): string {
  const role = v.stopped?.includes('partition') ? 'partition' : v.stopped?.includes('vmwp') ? 'vmwp' : null;
  if (!role) return v.state;
  const pid = role === 'partition' ? v.pids.partition : v.pids.vmwp;
  const by = pid === null ? undefined : paused.get(pid);
  return `${v.state} (${role === 'partition' ? 'frozen' : 'worker frozen'}${by ? ` by fault ${by}` : ', stopped by a signal'})`;
}

/** The pids the pause faults of the nemesis serving `home` stopped (a cluster host's home: the cluster's). */
function pausedIn(home: string): Map<number, string> {
  return pausedBy(clusterOfHostHome(home)?.home ?? home);
}

/** The cluster home and host name of a cluster host's own home (HOME/cluster/hosts/NAME, HOME holding a cluster), or null. */
function clusterOfHostHome(home: string): { home: string; host: string } | null {
  const hostsDir = dirname(home);
  const clusterDir = dirname(hostsDir);
  if (basename(hostsDir) !== 'hosts' || basename(clusterDir) !== 'cluster') return null;
  const top = dirname(clusterDir);
  return hasCluster(top) && clusterHostHome(top, basename(home)) === home ? { home: top, host: basename(home) } : null;
}

/**
 * The rows of move-status's table. A move's downtime is there only once the VM runs at the
 * destination (a completed move, or post-copy past its switch-over), as QEMU's query-migrate has
 * it (migrationHasDowntime): not before, and not for a failed or cancelled move, whose "downtime
 * 0 ms" was the number its statistics started from.
 */
export function moveStatusRows(st: MigrationStats): string[][] {
  return [
    ['vm', st.vm], ['from → to', `${st.from} → ${st.to}`], ['method', st.method], ['status', st.status + (st['error-desc'] ? ` (${st['error-desc']})` : '')],
    ['total-time', `${st['total-time']} ms`], ['setup-time', `${st['setup-time']} ms`], ...(st.downtime === undefined || !migrationHasDowntime(st.status) ? [] : [['downtime', `${st.downtime} ms` + (typeof st['downtime-acked'] === 'number' && st['downtime-acked'] !== st.downtime ? ` (${st['downtime-acked']} ms until the source heard)` : '')]]), ['expected-downtime', `${st['expected-downtime']} ms`],
    ['pass', String(st.pass) + (typeof st['stop-reason'] === 'string' ? ` (pre-copy ended: ${st['stop-reason']})` : '')], ['dirty tracking', st['dirty-tracking']],
    ...(st.stream ? [['stream to the destination', st.stream === 'worker' ? 'its worker\'s own socket' : 'through its root']] : []),
    ...(st.blackout ? [['blackout', describeBlackout(st.blackout)]] : []),
    ['ram transferred', `${formatBinaryBytes(st.ram.transferred)} (${st.ram.transferred} B)`], ['ram remaining', `${formatBinaryBytes(st.ram.remaining)} (${st.ram.remaining} B)`], ['ram total', `${formatBinaryBytes(st.ram.total)} (${st.ram.total} B)`],
    ['zero pages (duplicate)', String(st.ram.duplicate)], ['normal pages', String(st.ram.normal)], ['dirty-pages-rate', `${st.ram['dirty-pages-rate']}/s`],
    ['mbps', String(st.ram.mbps)], ['dirty-sync-count', String(st.ram['dirty-sync-count'])], ['pages-per-second', String(st.ram['pages-per-second'])],
    ['postcopy-requests', String(st.ram['postcopy-requests'])],
    // Raw ÷ sent means something only when pages were compressed (zero pages and headers move it otherwise).
    ...(st.options?.compress ? [['compression ratio', String(st['compression-ratio'])]] : []),
    ['throttle', `${st['throttle-percentage']} %`],
  ];
}

/** A move's method with the options that change it, as experiments name methods: precopy+compress, precopy+autoconverge. */
function methodText(st: MigrationStats): string {
  const o = st.options as Partial<MigrationOptions> | undefined;
  return `${st.method}${o?.compress ? '+compress' : ''}${o?.autoConverge ? '+autoconverge' : ''}`;
}

/** The line of a completed move. */

export function movedText(st: MigrationStats): string {
  return `VM ${st.vm} moved from ${st.from} to ${st.to} (${methodText(st)}) in ${(st['total-time'] / 1000).toFixed(2)} s: downtime ${st.downtime === undefined ? 'not measured' : `${st.downtime} ms`}, ${passesText(st)}, ${formatBinaryBytes(st.ram.transferred)} sent for ${formatBinaryBytes(st.ram.total)} of memory (${st.ram.duplicate} zero pages)`;
}

/** One line of a migration's progress: pass, transferred/remaining, dirty rate, expected downtime. */
function migrationLine(st: MigrationStats): string {
  const total = Math.max(1, st.ram.total);
  const pct = Math.min(100, Math.round((st.ram['normal-bytes'] + st.ram.duplicate * st.ram['page-size']) / total * 100));
  const width = 20;
  const bar = '#'.repeat(Math.round((pct / 100) * width)).padEnd(width, '.');
  // A move in doubt says so instead of its progress (nothing moves until the destination answers).
  if (st.status === 'active' && st['error-desc']?.startsWith('in doubt')) return `${st.vm} → ${st.to} [${bar}] ${st['error-desc']}`;
  return `${st.vm} → ${st.to} [${bar}] ${st.status} pass ${st.pass}: sent ${formatBinaryBytes(st.ram.transferred)}, remaining ${formatBinaryBytes(st.ram.remaining)}, dirty ${st.ram['dirty-pages-rate']} pages/s, expected downtime ${st['expected-downtime']} ms${st['throttle-percentage'] ? `, throttle ${st['throttle-percentage']} %` : ''}`;
}

const GROUP_NOTES: Record<string, string> = {
  VMs: 'Hyper-V: New-VM, Start-VM, Stop-VM, Suspend-VM, Resume-VM, Save-VM, Get-VM, Remove-VM',
  'Integration services': 'Hyper-V: Get-/Enable-/Disable-VMIntegrationService, KVP exchange',
};

function commandName(spec: CommandSpec): string {
  return spec.words.join(' ');
}

function optionsOf(spec: CommandSpec): OptionSpec[] {
  return [...spec.options, ...(spec.json ? [JSON_OPTION] : []), HOME_OPTION, ...(spec.words[0] === 'cluster' || spec.words[0] === 'fault' ? [] : [HOST_OPTION]), HELP_OPTION];
}

function optionHead(o: OptionSpec): string {
  return `--${o.name}${o.short ? `, -${o.short}` : ''}${o.value ? ` ${o.value}` : ''}`;
}

function optionUsage(o: OptionSpec): string {
  const names = `--${o.name}${o.short ? `|-${o.short}` : ''}`;
  const text = o.value ? `${names} ${o.value}` : names;
  return o.required ? text : `[${text}]`;
}

export function usageOf(spec: CommandSpec): string {
  return ['hvlab', ...spec.words, spec.args, ...spec.options.map(optionUsage), ...(spec.json ? ['[--json]'] : [])].filter((s) => s !== '').join(' ');
}

/** `hvlab CMD --help`: usage, what it does, and every option. */
export function commandHelp(spec: CommandSpec): string {
  const opts = optionsOf(spec);
  const left = opts.map((o) => `  ${optionHead(o)}`);
  const w = Math.max(...left.map((l) => l.length)) + 2;
  return [`Usage: ${usageOf(spec)}`, '', wrap(spec.help, 98, ''), '', 'Options:', ...opts.map((o, i) => hanging(left[i].padEnd(w), `${o.help}${o.required ? ' (required)' : ''}`))].join('\n');
}

/** `head` followed by `text` wrapped so that continuation lines start under the text. */
function hanging(head: string, text: string): string {
  return head + wrap(text, 98, ' '.repeat(head.length)).slice(head.length);
}

function wrap(text: string, width: number, indent: string): string {
  const lines: string[] = [];
  let cur = '';
  for (const word of text.split(' ')) {
    if (cur && indent.length + cur.length + 1 + word.length > width) {
      lines.push(indent + cur);
      cur = word;
    } else cur = cur ? `${cur} ${word}` : word;
  }
  if (cur) lines.push(indent + cur);
  return lines.join('\n');
}

/** `hvlab --help`: every command with every option, grouped. */
export function fullHelp(): string {
  const out = ['hvlab — the Hyper-V architecture as real processes', '', 'Usage: hvlab [--home DIR] [--host NAME] COMMAND [ARGUMENTS] [OPTIONS]'];
  // Each group once, in the order groups first appear, its commands in their order.
  const groups = [...new Set(COMMANDS.map((c) => c.group))];
  for (const group of groups) {
    out.push('', GROUP_NOTES[group] ? `${group} (${GROUP_NOTES[group]})` : group);
    for (const spec of COMMANDS) {
      if (spec.group !== group) continue;
      out.push(`  ${usageOf(spec).slice('hvlab '.length)}`);
    out.push(wrap(spec.help, 98, '      '));
      const w = Math.max(0, ...spec.options.map((o) => optionHead(o).length)) + 2;
      for (const o of spec.options) out.push(hanging(`        ${optionHead(o).padEnd(w)}`, o.help));
    }
  }
  out.push(
    '',
    'Options go after the command; --home, --host, --json and --help may also come before it. Put --',
    'before arguments that start with a dash. "hvlab COMMAND --help" describes each option.',
    'HVLAB_HOME (default ~/.hvlab) or --home selects the state directory; --host NAME aims a command at',
    'one host of the cluster that is up there. HVLAB_DEBUG=1 shows stacks. "hvlab --version" prints',
    'the version of hvlab and of the Node that runs it.',
    'Exit codes: 0 done, 1 refused or failed, 2 the command line was not understood, 3 a debug',
    'hypercall returned a status other than SUCCESS, 130 interrupted. With --json, a failure is one',
    'JSON line on stderr: {"error":{"message":"…","kind":"usage|value|host|interrupted|internal","exitCode":N}}.',
  );
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Parsing

export type ParsedCommand =
  | { kind: 'help'; text: string }
  | {
    kind: 'run';
    spec: CommandSpec;
    /** The command's arguments (after its words). */
    args: string[];
    /** Options by long name: their value, or true for a flag. */
    options: Map<string, string | true>;
    home: string | null;
    json: boolean;
  };

/** Optimal string alignment distance (Levenshtein plus adjacent transpositions: memroy → memory is 1). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The nearest candidate when it is close enough to be a typo of `word`. */
function nearest(word: string, candidates: string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of candidates) {
    const dist = editDistance(word.toLowerCase(), c.toLowerCase());
    if (dist < bestD) {
      best = c;
      bestD = dist;
    }
  }
  const limit = word.length <= 3 ? 1 : 2;
  return best !== null && bestD <= limit ? best : null;
}

function listOr(items: string[]): string {
  return items.length <= 1 ? items.join('') : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

/** An option-looking token: -x or --name[=value], but not a negative number or a lone dash. */
const OPTION_RE = /^(?:--([A-Za-z][\w-]*)(?:=([\s\S]*))?|-([A-Za-z]))$/;
const looksLikeOption = (tok: string): boolean => tok.startsWith('-') && tok !== '-' && tok !== '--' && !/^-\d/.test(tok);

function lookup(opts: OptionSpec[], name: string, short: boolean): OptionSpec | undefined {
  return opts.find((o) => (short ? o.short === name : o.name === name));
}

/**
 * Reads the option at argv[i] against `known` into `seen`; returns the index after it. `spec` is
 * the command, for messages, or null while the command is still being read.
 */
function readOption(argv: string[], i: number, known: OptionSpec[], spec: CommandSpec | null, seen: Map<string, string | true>): number {
  const tok = argv[i];
  const m = OPTION_RE.exec(tok);
  const shown = m ? (m[3] ? `-${m[3]}` : `--${m[1]}`) : tok;
  const opt = m ? lookup(known, m[3] ?? m[1], m[3] !== undefined) : undefined;
  if (!opt) {
    const name = m ? (m[3] ?? m[1]) : tok.replace(/^-+/, '');
    const guess = nearest(name, known.map((o) => o.name));
    if (spec === null) {
      // Before the command only global options are read; a command's option there is misplaced.
      const owner = COMMANDS.find((c) => c.options.some((o) => o.name === name));
      if (owner) throw new UsageError(`option ${shown} goes after the command, e.g. "${usageOf(owner)}"`);
      throw new UsageError(`unknown option ${shown} before the command${guess ? ` (did you mean --${guess}?)` : ` (options here: ${listOr(known.map((o) => `--${o.name}`))})`}`);
    }
    const all = known.map((o) => `--${o.name}`);
    throw new UsageError(`unknown option ${shown} for "${commandName(spec)}"${guess ? ` (did you mean --${guess}?)` : ` (its options: ${all.join(', ')})`}`);
  }
  const of = spec ? ` of "${commandName(spec)}"` : '';
  if (seen.has(opt.name)) throw new UsageError(`option --${opt.name} is given twice`);
  const inline = m![2];
  if (!opt.value) {
    if (inline !== undefined) throw new UsageError(`option --${opt.name}${of} takes no value`);
    seen.set(opt.name, true);
    return i + 1;
  }
  if (inline !== undefined) {
    seen.set(opt.name, inline);
    return i + 1;
  }
  const next = argv[i + 1];
  if (next === undefined || looksLikeOption(next) || next === '--') throw new UsageError(`option --${opt.name}${of} needs a value (${opt.value})`);
  seen.set(opt.name, next);
  return i + 2;
}

function findSpec(words: string[]): CommandSpec | undefined {
  return COMMANDS.find((c) => c.words.length === words.length && c.words.every((w, i) => w === words[i]));
}

/** Subcommands of a group word ("vm" → new, start, …), or null when it is a command by itself. */
function subcommandsOf(word: string): string[] | null {
  const subs = COMMANDS.filter((c) => c.words.length === 2 && c.words[0] === word).map((c) => c.words[1]);
  return subs.length > 0 ? subs : null;
}

function unknownCommand(words: string[]): UsageError {
  const shown = words.join(' ');
  const guess = nearest(shown, COMMANDS.map(commandName));
  return new UsageError(`unknown command "${shown}"${guess ? ` (did you mean "${guess}"?)` : '; see "hvlab --help"'}`);
}

/** The help wanted by a command line that contains --help or -h (before any "--"), or null. */
function helpFor(argv: string[]): string | null {
  const end = argv.indexOf('--');
  const head = end < 0 ? argv : argv.slice(0, end);
  if (!head.includes('--help') && !head.includes('-h')) return null;
  const words = head.filter((t, i) => !looksLikeOption(t) && !(i > 0 && (head[i - 1] === '--home' || head[i - 1] === '--host')));
  if (words.length === 0 || (words[0] === 'help' && words.length === 1)) return fullHelp();
  const spec = findSpec(words.slice(0, 2)) ?? findSpec(words.slice(0, 1));
  if (spec) return commandHelp(spec);
  // A group alone ("vm --help"): its commands, one line each. Anything else is a command that is
  // not there, said as such (it printed the whole help, with exit code 0).
  const subs = subcommandsOf(words[0]!);
  if (subs && words.length === 1) return groupHelp(words[0]!);
  throw unknownCommand(subs ? words.slice(0, 2) : words.slice(0, 1));
}

/** `hvlab GROUP --help`: the group's commands, each with its usage and what it does. */
function groupHelp(word: string): string {
  const specs = COMMANDS.filter((c) => c.words[0] === word && c.words.length > 1);
  const out = [`Usage: hvlab ${word} SUBCOMMAND [ARGUMENTS] [OPTIONS]`, '', 'Subcommands:'];
  for (const spec of specs) {
    out.push(`  ${usageOf(spec).slice('hvlab '.length)}`);
    out.push(wrap(spec.help, 98, '      '));
  }
  out.push('', `"hvlab ${word} SUBCOMMAND --help" describes its options.`);
  return out.join('\n');
}

/** hvlab's version (@hvlab/cluster's, which reports record): packages/cli/package.json's (cli/test/args.test.ts checks that the two agree). */
export { HVLAB_VERSION };
/** What `hvlab --version` prints: hvlab's version and the Node that runs it (both matter in a bug report). */
export function versionText(): string {
  return `hvlab ${HVLAB_VERSION} (node ${process.version}, ${process.platform}-${process.arch})`;
}

/** Parses a command line against COMMANDS. Throws UsageError or ValueError; sends nothing. */
export function parseCommandLine(argv: string[]): ParsedCommand {
  const help = helpFor(argv);
  if (help !== null) return { kind: 'help', text: help };
  const options = new Map<string, string | true>();
  let i = 0;
  const words: string[] = [];
  let spec: CommandSpec | undefined;
  // The command's words come first; only global options may come before or between them.
  while (spec === undefined) {
    const tok = argv[i];
    if (tok === undefined) {
      if (words.length === 0) return { kind: 'help', text: fullHelp() };
      throw new UsageError(`"${words[0]}" needs a subcommand: ${listOr(subcommandsOf(words[0]) ?? [])}`);
    }
    if (tok === '--') throw words.length === 0 ? new UsageError('a command is missing before "--"; see "hvlab --help"') : new UsageError(`"${words[0]}" needs a subcommand before "--": ${listOr(subcommandsOf(words[0]) ?? [])}`);
    if (looksLikeOption(tok)) {
      // `hvlab --version` (or -V), alone, as every command-line tool answers it; after a command it is unknown.
      if (words.length === 0 && (tok === '--version' || tok === '-V')) {
        if (argv.length === 1) return { kind: 'help', text: versionText() };
        throw new UsageError(`${tok} goes alone: "hvlab --version"`);
      }
      i = readOption(argv, i, GLOBAL_OPTIONS, null, options);
      continue;
    }
    words.push(tok);
    i++;
    if (words.length === 1 && tok === 'help') return { kind: 'help', text: helpFor([...argv.slice(i), '--help']) ?? fullHelp() };
    if (words.length === 1 && subcommandsOf(tok) !== null) continue;
    spec = findSpec(words);
    if (!spec) throw unknownCommand(words);
  }
  const known = optionsOf(spec);
  // --json is global only for commands that can print JSON.
  if (options.has('json') && !spec.json) throw new UsageError(`unknown option --json for "${commandName(spec)}" (its options: ${known.map((o) => `--${o.name}`).join(', ')})`);
  const args: string[] = [];
  for (; i < argv.length;) {
    const tok = argv[i];
    if (tok === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (looksLikeOption(tok)) i = readOption(argv, i, known, spec, options);
    else {
      args.push(tok);
      i++;
    }
  }
  const name = commandName(spec);
  if (args.length > spec.max) throw new UsageError(`unexpected argument "${args[spec.max]}" for "${name}" (usage: ${usageOf(spec)})`);
  if (args.length < spec.min) throw new UsageError(`"${name}" needs ${(spec.needs ?? spec.args.split(' ')).slice(args.length, spec.min).join(' ')} (usage: ${usageOf(spec)})`);
  for (const o of spec.options) if (o.required && !options.has(o.name)) throw new UsageError(`"${name}" needs --${o.name} ${o.value} (usage: ${usageOf(spec)})`);
  const home = options.get('home');
  if (home === '') throw new UsageError('--home is empty: give a directory');
  // In the order they were given: the first message names the first wrong value on the line.
  for (const [n, v] of options) {
    const o = spec.options.find((x) => x.name === n);
    if (typeof v === 'string' && o?.check) {
      const problem = o.check(v);
      if (problem) throw new ValueError(problem);
    }
  }
  return { kind: 'run', spec, args, options, home: typeof home === 'string' ? home : null, json: options.has('json') };
}

// ---------------------------------------------------------------------------------------------
// Output helpers

function out(s: string): void {
  process.stdout.write(s.endsWith('\n') ? s : s + '\n');
}

/**
 * Rows as columns two spaces apart, each cell escaped (printable) and padded by the columns it
 * takes on a terminal, not by its UTF-16 length: a VM named 網站 or a KVP value with an emoji
 * pushed the columns after it out of line.
 */
export function table(rows: string[][]): string {
  const shown = rows.map((r) => r.map(printable));
  const w = shown[0].map((_, i) => Math.max(...shown.map((r) => displayWidth(r[i]))));
  return shown.map((r) => r.map((c, i) => padEndColumns(c, w[i])).join('  ').trimEnd()).join('\n');
}

function parseValue(v: string): unknown {
  if (/^-?\d+$/.test(v)) return Number(v);
  if (/^0x[0-9a-f]+$/i.test(v)) {
    const b = BigInt(v);
    return b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
  }
  if (v.startsWith('hex:')) {
    const h = v.slice(4);
    if (!/^([0-9a-f]{2})*$/i.test(h)) throw new ValueError(`"${v}" is not valid hex bytes`);
    return new Uint8Array(Buffer.from(h, 'hex'));
  }
  if (v.startsWith('len:')) {
    const n = Number(v.slice(4));
    if (!/^\d+$/.test(v.slice(4)) || n > 65536) throw new ValueError(`"${v}": len wants 0-65536`);
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

/** Why a file could not be written, as the end of a sentence. */
function writeProblem(file: string, e: unknown): string {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  const dir = dirname(resolve(file));
  switch (code) {
    case 'ENOENT': return `the directory ${dir} does not exist`;
    case 'ENOTDIR': return `a part of ${dir} is not a directory`;
    case 'EISDIR': return 'it is a directory';
    case 'EACCES':
    case 'EPERM': return 'permission denied';
    case 'ENOSPC': return 'no space is left on the device';
    case 'EROFS': return 'the file system is read-only';
    default: return e instanceof Error ? e.message : String(e);
  }
}

/** Refuses an --out path whose directory is missing before guest memory is read for nothing. */
function checkWritable(file: string): void {
  const dir = dirname(resolve(file));
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new CliError(`cannot write ${file}: ${writeProblem(file, e)}`);
  }
  if (!st.isDirectory()) throw new CliError(`cannot write ${file}: ${dir} is not a directory`);
  if (existsSync(file) && statSync(file).isDirectory()) throw new CliError(`cannot write ${file}: it is a directory`);
}

/** The log files of a log directory (the raw stderr capture is not one). */
function logFiles(dir: string): string[] {
  try {
    return readdirSync(dir).filter((f) => f.endsWith('.log') && f !== 'stderr.log').map((f) => join(dir, f));
  } catch {
    return [];
  }
}

/** How many printed lines `logs --follow` remembers, so that a line it meets again is not printed twice. */
const FOLLOW_SEEN_LINES = 20000;
/** The most of one log file `logs` reads at once (the tail of a larger one; --follow reads on in steps this size). */
const LOG_READ_MAX_BYTES = 64 * 1024 * 1024;

/**
 * `logs --follow`: prints each line appended to a log file of `dir` from now on, in files that
 * appear later too (a VM started after the command, a warm template's files taken over by the VM
 * that claimed it). Files are tracked by inode, so a file renamed or linked to another name (how
 * a claimed template's log becomes its VM's) goes on from where it was; and a line already
 * printed (`printed` seeds them) is not printed again, which covers a template's lines appended
 * to a VM's existing file when a link is not possible. Only whole lines are printed: a line still
 * being written waits for its newline.
 */
async function followLogs(dir: string, read0: Map<string, number>, printed: string[], filter: (line: string) => string | null): Promise<never> {
  const seen = new Set<string>(printed.slice(-FOLLOW_SEEN_LINES));
  const pos = new Map<string, number>(read0);
  const remember = (line: string): boolean => {
    if (seen.has(line)) return false;
    seen.add(line);
    if (seen.size > FOLLOW_SEEN_LINES) seen.delete(seen.values().next().value as string);
    return true;
  };
  const read = (f: string, key: string, start: number, size: number): void => {
    let fd: number | null = null;
    try {
      fd = openSync(f, constants.O_RDONLY | constants.O_NONBLOCK);
      // At most LOG_READ_MAX_BYTES a pass: the rest is read at the next.
      const buf = Buffer.alloc(Math.min(size - start, LOG_READ_MAX_BYTES));
      const n = readSync(fd, buf, 0, buf.length, start);
      const text = buf.subarray(0, n);
      const end = text.lastIndexOf(0x0a);
      if (end < 0) return;
      pos.set(key, start + end + 1);
      for (const l of text.subarray(0, end).toString('utf8').split('\n')) {
        if (!l || !remember(l)) continue;
        const o = filter(l);
        if (o) out(o);
      }
    } catch {
      // The file went away between the listing and the read: the next pass sees it gone.
    } finally {
      if (fd !== null) closeSync(fd);
    }
  };
  const pass = (): void => {
    for (const f of logFiles(dir)) {
      let st;
      try {
        st = statSync(f);
      } catch {
        continue;
      }
      if (!st.isFile()) continue;
      const key = `${st.dev}:${st.ino}`;
      // A file that was not there when the command started is read from its start.
      const start = pos.get(key) ?? 0;
      if (st.size !== start) read(f, key, st.size < start ? 0 : start, st.size);
    }
  };
  pass();
  try {
    watch(dir, () => pass()).on('error', () => undefined);
  } catch { /* polled below */ }
  setInterval(pass, 500);
  return await new Promise<never>(() => {});
}

function formatLog(line: string): string | null {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    if (typeof o !== 'object' || o === null) return null;
    const lvl = ({ 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' } as Record<number, string>)[o.level as number] ?? String(o.level);
    const who = [o.role, o.vm].filter((x) => x !== undefined && x !== null).join('/');
    const skip = new Set(['level', 'time', 'msg', 'pid', 'host', 'role', 'vm', 'hostname']);
    const rest = Object.entries(o).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ');
    // Escaped: a guest's debug message, say, may hold what a terminal would act on.
    return printable(`${String(o.time)} ${lvl.padEnd(5)} ${padEndColumns(who, 18)} ${String(o.msg ?? '')}${rest ? '  ' + rest : ''}`);
  } catch {
    return null;
  }
}

const debugOn = (): boolean => process.env.HVLAB_DEBUG === '1';

/**
 * Reads and checks a topology file once: the topology and the text it came from, or the
 * TopologyError naming every problem. CliError when the file cannot be read.
 */
export function loadTopology(file: string): { topology: Topology; source: string } | TopologyError {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(file, MAX_TOPOLOGY_BYTES);
  } catch (e) {
    if (e instanceof FileShapeError) throw new CliError(`${e.message}: not a topology file`);
    throw new CliError(`cannot read the topology file ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (e as Error).message}`);
  }
  // Not UTF-8: refused (the source kept in the cluster's record would not be its bytes).
  const source = fileText(bytes);
  if (typeof source !== 'string') return new TopologyError(file, [source]);
  try {
    return { topology: parseTopology(source, file), source };
  } catch (e) {
    if (e instanceof TopologyError) return e;
    throw e;
  }
}

/** Refuses a topology a compiler's way: one problem per line, each with file, line, column and field; exit 1. */
function refuseTopology(e: TopologyError, json: boolean, after = ''): number {
  if (json) out(JSON.stringify({ valid: false, problems: e.problems }));
  return refuseFile(e, e.file, 'topology', after);
}

/**
 * An experiment file that names what the cluster up here lacks: said as the file's own problems
 * are, each at its place in the file (line and column, field, message; as objects with --json).
 * They were plain strings without a place.
 */
function refuseForCluster(file: string, wrong: ReadonlyArray<{ field: string; path: ReadonlyArray<string | number>; message: string }>, json: boolean): number {
  let text = '';
  try {
    text = readRegularFile(file, 1024 * 1024).toString('utf8');
  } catch { /* read a moment ago; said without places */ }
  // In the file's order, as its own problems are said.
  const problems: FileProblem[] = wrong.map((w) => ({ ...fieldPlace(text, w.path), field: w.field, message: w.message })).sort((a, b) => a.line - b.line || a.column - b.column);
  return refuseFile({ problems, message: problemsText(file, problems) }, file, 'experiment', ' for the cluster up here', json);
}

/**
 * A file's problems (its error's message, one a line) after a line naming the file; with --json, one JSON line of them all. Returns 1.
 * `json`: also `{ valid: false, problems }` on stdout, as `--check --json` of a good file prints `{ valid: true, … }` there
 * (topologies said so already; an experiment's refusal said it only in the error line's text).
 */
function refuseFile(e: { problems: unknown[]; message: string }, file: string, what: 'topology' | 'experiment', after = '', json = false): number {
  if (json) out(JSON.stringify({ valid: false, problems: e.problems }));
  const n = e.problems.length;
  return sayFailure(`${file} is not a valid ${what} (${n} problem${n === 1 ? '' : 's'})${after}`, 'value', 1, e.message.split('\n'));
}

/** Runs a cluster operation; its ClusterError becomes a one-line CLI error. */
/**
 * Ctrl-C (or SIGTERM) stopped a command, and the message says what became of what it was doing
 * (taken down, cancelled, or left to finish at the host). Exit code 130, as a shell's.
 */
class Interrupted extends CliError {}

/** How many commands under way handle Ctrl-C themselves (onInterrupt); the default handler then stays out of it. */
let interruptOwners = 0;
/** What the default handler says of a command Ctrl-C ends (null: nothing; `top` and `logs --follow` end that way). */
let interruptSays: string | null = null;

/** What becomes of a request a Ctrl-C leaves behind, by command (see main's default handler). */
const LEFT_AT_HOST = 'the host may still carry out what was asked ("hvlab vm list" shows the VMs)';
const INTERRUPT_SAYS: Record<string, string> = {
  'vm new': LEFT_AT_HOST, 'vm start': LEFT_AT_HOST, 'vm stop': LEFT_AT_HOST, 'vm turn-off': LEFT_AT_HOST, 'vm pause': LEFT_AT_HOST,
  'vm resume': LEFT_AT_HOST, 'vm save': LEFT_AT_HOST, 'vm delete': LEFT_AT_HOST, 'vm set-processor': LEFT_AT_HOST, 'vm ic': LEFT_AT_HOST,
  down: 'the host may be half down: "hvlab down" again finishes it',
  'cluster down': 'the cluster may be half down: "hvlab cluster down" again finishes it',
  // Ctrl-C stops the probe at the fabric, or a --direct one at its host (stopProbeOnInterrupt); a second
  // Ctrl-C while that is asked ends the CLI with this.
  'link probe': 'the probe may not have been stopped, so its bytes may still be crossing to the peer',
  // Before their own handler is in place (its checks, the first instant) nothing has been started;
  // once the host or cluster is up the message is changed (interruptSays) to say so.
  up: 'nothing had been started yet',
  'cluster up': 'nothing had been started yet',
};

/**
 * Calls `fn` on the first Ctrl-C or SIGTERM, in place of the default (main's); a second one ends
 * the CLI at once, as Node does. Returns what stops listening.
 */
function onInterrupt(fn: () => void): () => void {
  let on = true;
  const handler = (): void => {
    release();
    fn();
  };
  const release = (): void => {
    if (!on) return;
    on = false;
    interruptOwners--;
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
  interruptOwners++;
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return release;
}

/**
 * Runs `fn` with a signal that Ctrl-C or SIGTERM aborts. `fn` sees it and winds down (what it made
 * taken down, a move cancelled); once it has settled, an aborted run throws Interrupted(`said`). A
 * second Ctrl-C ends the CLI at once, as Node does.
 */
async function interruptible<T>(said: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const release = onInterrupt(() => ac.abort());
  try {
    const v = await fn(ac.signal);
    if (ac.signal.aborted) throw new Interrupted(said);
    return v;
  } catch (e) {
    if (ac.signal.aborted) throw new Interrupted(said);
    throw e;
  } finally {
    release();
  }
}

/**
 * Awaits a `link probe` through the link; on Ctrl-C (or SIGTERM) stops it with `stop` (stoppableProbe)
 * and throws Interrupted saying whether it stopped. `where`: where `stop` stops it ("at the
 * fabric", "by h1"), for the messages.
 */
async function stopProbeOnInterrupt(probing: Promise<LinkProbeResult>, stop: () => Promise<number>, what: string, where: string): Promise<LinkProbeResult> {
  const ac = new AbortController();
  const release = onInterrupt(() => {
    // A second Ctrl-C ends the CLI at once (main's handler), saying so.
    interruptSays = `the probe from ${what} may not be stopped ${where}: its bytes may still be crossing the link`;
    ac.abort();
  });
  try {
    return await stoppableProbe(probing, stop, ac.signal);
  } catch (e) {
    if (!(e instanceof ProbeStopped)) throw e;
    if (e.problem !== null) throw new Interrupted(`link probe was interrupted, and its traffic from ${what} could not be stopped ${where} (${e.problem}): its bytes may still be crossing the link`);
    throw new Interrupted(`link probe was interrupted: its traffic from ${what} was stopped ${where}${e.settled ? '' : '; the host is still ending its probe'}`);
  } finally {
    release();
  }
}

/** Where a new cluster's fabric listens, as --listen and --fabric-port say (checked by their options). */
function fabricOptions(opt: (name: string) => string | undefined): { listen?: string; fabricPort?: number } {
  const port = opt('fabric-port');
  return { listen: opt('listen'), ...(port === undefined ? {} : { fabricPort: Number(port) }) };
}

async function clusterCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    // A key file that is wrong or missing is the user's to fix, as a bad topology is.
    if (e instanceof ClusterError || e instanceof ClusterKeyError) throw new CliError(e.message);
    throw e;
  }
}

function describeTopology(t: Topology): string {
  const mib = (n: number): string => formatBytes(n);
  const lines = [`cluster ${t.name}: ${t.hosts.length} host${t.hosts.length === 1 ? '' : 's'}, ${t.links.length} link${t.links.length === 1 ? '' : 's'}, ${t.vms.length} VM${t.vms.length === 1 ? '' : 's'}`, ''];
  lines.push(table([['HOST', 'LPS', 'MEMORY', 'VMS'], ...t.hosts.map((h) => [h.name, h.lps === null ? 'all' : String(h.lps), h.memoryBytes === null ? '-' : mib(h.memoryBytes), t.vms.filter((v) => v.host === h.name).map((v) => v.name).join(', ') || '-'])]));
  if (t.links.length > 0) lines.push('', table([['LINK', 'IMPAIRMENTS'], ...t.links.map((l) => [`${l.a} - ${l.b}`, impairmentsText(l.impairments) || 'unimpaired'])]));
  if (t.vms.length > 0) lines.push('', table([['VM', 'HOST', 'MEMORY', 'VPS', 'WORKLOAD'], ...t.vms.map((v) => [v.name, v.host, mib(v.memoryBytes), String(v.vps), v.workload])]));
  return lines.join('\n');
}

/** `cluster status` as tables: hosts, links with what the fabric applies now, heartbeats. */
function statusText(st: ClusterStatus): string {
  const lines = [`cluster ${st.name}: ${st.mode}${st.bridge ? ` on bridge ${st.bridge}` : ''}, ${st.subnet} (${st.modeReason})`];
  lines.push(`fabric: ${st.fabric.state}${st.fabric.state === 'up' ? ` at ${st.fabric.address}, pid ${st.fabric.pid}` : ` (${st.fabric.error})`}${st.fabric.restarts ? `; restarted ${st.fabric.restarts} time${st.fabric.restarts === 1 ? '' : 's'}${st.fabric.since ? `, last at ${st.fabric.since}` : ''}` : ''}${st.fabric.refused ? `; refused ${st.fabric.refused} connection${st.fabric.refused === 1 ? '' : 's'} without the key` : ''}`);
  if (st.join) lines.push(`join from another machine: hvlab up --join ${st.join} --key <a copy of ${st.keyFile}>`);
  lines.push('', table([['HOST', 'STATE', 'JOINED', 'HOST ID', 'ADDRESS', 'NAMESPACE', 'LPS', 'VMS', 'HEARTBEATS'], ...st.hosts.map((h) => [
    h.name, h.state, h.member ? `${h.memberFresh ? 'yes' : 'lost'}${h.origin === 'file' ? '' : ' (remote)'}` : 'no', h.hostId ?? '-', h.address, h.netns ?? '-', h.lps === null ? '-' : String(h.lps), h.state === 'up' ? String(h.vms) : '-',
    (h.info?.cluster?.peers ?? []).map((p) => `${p.name} ${p.state}${p.rttMs !== null && p.state === 'up' ? ` ${p.rttMs.toFixed(1)}ms` : p.missed ? ` (${p.missed} missed)` : ''}`).join(', ') || '-',
  ])]));
  if (st.links.length > 0) {
    lines.push('', table([['LINK', 'IMPAIRMENTS', 'STATE', 'SEED', 'BYTES A>B / B>A', 'APPLIED'], ...st.links.map((l) => [
      `${l.a} - ${l.b}`, impairmentsText(l) || 'unimpaired', l.cut ? 'cut' : 'up', String(l.seed), `${formatBytes(l.bytes[0])} / ${formatBytes(l.bytes[1])}`, l.applied ? 'yes' : 'no (the fabric does not answer)',
    ])]));
  }
  return lines.join('\n');
}

function debugLine(s: string): void {
  if (debugOn()) process.stderr.write(`hvlab: debug: ${s}\n`);
}

/**
 * A client for a running host, watching its hypervisor and root partition processes so that no
 * call waits on a dead one. A host whose process is already gone is refused here, naming it.
 */
function needHost(paths: HostPaths): MgmtClient {
  let rec = readHost(paths);
  // The root partition process may be between a crash and its restart by the hypervisor's
  // supervisor: wait a little for the record of the new one rather than fail.
  for (let i = 0; i < 50 && rec !== null && pidAlive(rec.pids.hypervisor) && !pidAlive(rec.pids.root); i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    rec = readHost(paths);
  }
  if (rec === null) {
    // A host of a cluster (--host NAME) that is down: "up" is refused there (its hosts come up with
    // the cluster), so that is not the advice.
    const ofCluster = /\/cluster\/hosts\/([^/]+)\/?$/.exec(paths.home);
    if (ofCluster) throw new CliError(`host ${ofCluster[1]} of the cluster is down; a host brought down alone stays down until the cluster is brought down ("hvlab cluster down") and up again`);
    const cluster = clusterHint(paths.home);
    throw new CliError(`no host is up for ${paths.home}; ${cluster ? `it holds ${cluster}` : 'run "hvlab up" first'}`);
  }
  const hv: unknown = rec.pids?.hypervisor;
  const root: unknown = rec.pids?.root;
  if (typeof hv !== 'number' || typeof root !== 'number') throw new CliError(`the host record ${paths.hostFile} names no hypervisor and root pids; run "hvlab down" to clean up`);
  if (!pidAlive(hv)) throw new CliError(`the host's hypervisor process (pid ${hv}) is not running; run "hvlab down" to clean up, then "hvlab up"`);
  // With the hypervisor alive the root may be on its way back (a supervisor restarts it): no advice.
  if (!pidAlive(root)) throw new CliError(`the host's root partition process (pid ${root}) is not running`);
  return new MgmtClient(pathsForRecord(paths, rec).mgmtEndpoint, {
    watch: rec, debug: debugOn() ? debugLine : undefined,
    onStopped: (what) => process.stderr.write(`hvlab: waiting: ${what} is stopped (a pause fault, or SIGSTOP); the command goes on once it runs again ("hvlab fault clear" ends a pause)\n`),
  });
}

// ---------------------------------------------------------------------------------------------
// Commands

/** Runs one command line; returns the exit code. Never throws. */
export async function run(argv: string[]): Promise<number> {
  let client: MgmtClient | null = null;
  jsonFailures = wantsJson(argv);
  /** A command on one VM aimed with --host at a host of a cluster: where else the VM is, when that host has none. */
  let vmElsewhere: (() => Promise<string | null>) | null = null;
  try {
    const p = parseCommandLine(argv);
    if (p.kind === 'help') {
      out(p.text);
      return 0;
    }
    if (p.home === null && process.env.HVLAB_HOME === '') throw new UsageError('HVLAB_HOME is set but empty: unset it or give a directory');
    let paths = hostPaths(resolveHome(p.home));
    if (commandName(p.spec) !== 'cluster check') checkHome(paths.home);
    const aimed = p.options.get('host');
    // A host that joined from another machine is reached over CURVE TCP (its management API).
    let remote: { name: string; endpoint: string; socket: Record<string, unknown> } | null = null;
    // In a cluster, a command on one VM without --host goes to the host the VM is on.
    if (typeof aimed === 'string' && typeof p.args[0] === 'string' && VM_COMMANDS_BY_NAME.has(commandName(p.spec)) && hasCluster(paths.home)) {
      const home = paths.home;
      const name = p.args[0];
      vmElsewhere = async () => {
        const on = [...new Set((await clusterVms(home)).filter((v) => v.name === name).map((v) => v.host))].filter((h) => h !== aimed).sort();
        return on.length > 0 ? `it is on ${on.join(', ')}` : null;
      };
    }
    // `debug hypercall --as VM` names its VM by an option.
    const vmNamed = VM_COMMANDS_BY_NAME.has(commandName(p.spec)) ? p.args[0] : commandName(p.spec) === 'debug hypercall' ? p.options.get('as') : undefined;
    const vmHost = aimed === undefined && typeof vmNamed === 'string' && hasCluster(paths.home)
      ? await clusterCall(() => hostOfVmInCluster(paths.home, vmNamed))
      : null;
    // Faults in a cluster go through its one nemesis, whatever --host says: a host's own nemesis
    // beside it could undo the other's fault on the same process (a 2 s pause through --host ended
    // a 12 s one of the cluster's). --host then names where the target is (vm:NAME@HOST).
    let faultOnHost = typeof aimed === 'string' && commandName(p.spec).startsWith('fault ') && hasCluster(paths.home) ? aimed : null;
    // So do the faults of a cluster host's own home (--home HOME/cluster/hosts/H): they go to the
    // cluster's nemesis as --home HOME --host H would (its own nemesis beside the cluster's brought
    // that conflict back). Only a nemesis left running there from before is still reached, so that
    // what it holds can be listed and cleared. What one that is gone left (its active.json: it was
    // killed with its warden) is undone here first, and said: that file kept every fault command
    // there, and the first started a nemesis of the host's own again, beside the cluster's.
    const member = commandName(p.spec).startsWith('fault ') && aimed === undefined ? clusterOfHostHome(paths.home) : null;
    if (member !== null && nemesisPid(paths.home) === null) {
      const left = await undoGoneNemesis(paths.home);
      // A fault whose root did not answer its clear is still ending there: said apart (it stays in
      // that home's active file, asked again by the next fault command given that home).
      const undone = left.filter((f) => f.state !== 'active');
      const ending = left.filter((f) => f.state === 'active');
      const said = (fs: FaultRecord[]): string => fs.map((f) => `${f.id} (${f.kind} on ${f.resolved.summary})`).join(', ');
      if (left.length > 0) {
        process.stderr.write(`hvlab: host ${member.host}'s own nemesis is gone; ${[undone.length ? `what it left was undone: ${said(undone)}` : '', ending.length ? `still ending (its root did not answer the clear; asked again by the next fault command given that home): ${said(ending)}` : ''].filter(Boolean).join('; ')}. Faults of ${member.host} go to the cluster's nemesis\n`);
      }
      paths = hostPaths(member.home);
      faultOnHost = member.host;
    }
    const hostName = faultOnHost !== null ? null : typeof aimed === 'string' ? aimed : vmHost;
    if (faultOnHost !== null) await clusterCall(() => clusterHostTarget(paths.home, faultOnHost));
    if (hostName !== null) {
      const target = await clusterCall(() => clusterHostTarget(paths.home, hostName));
      if (target.kind === 'local') paths = target.paths;
      else remote = target;
    }
    if (remote && ['up', 'down', 'logs'].includes(commandName(p.spec))) {
      throw new CliError(`${remote.name} joined the cluster from another machine: run "${commandName(p.spec)}" there`);
    }
    interruptSays = INTERRUPT_SAYS[commandName(p.spec)] ?? null;
    const json = p.json;
    const opt = (n: string): string | undefined => {
      const v = p.options.get(n);
      return typeof v === 'string' ? v : undefined;
    };
    const flag = (n: string): boolean => p.options.get(n) === true;
    const [name] = p.args;
    const connect = (): MgmtClient => (client = remote ? new MgmtClient(remote.endpoint, { socket: remote.socket, debug: debugOn() ? debugLine : undefined }) : needHost(paths));
    switch (commandName(p.spec)) {
      case 'up': {
        const lps = opt('lps');
        const transport = (opt('vmbus-transport') ?? 'shm') as 'shm' | 'remote';
        const warm = opt('warm');
        const warmMemory = opt('warm-memory');
        if (warmMemory !== undefined && warm === undefined) throw new UsageError('--warm-memory goes with --warm');
        const hostsN = opt('hosts');
        const joinAt = opt('join');
        for (const o of ['key', 'name', 'address']) if (opt(o) !== undefined && joinAt === undefined) throw new UsageError(`--${o} goes with --join`);
        for (const o of ['listen', 'fabric-port']) if (opt(o) !== undefined && hostsN === undefined) throw new UsageError(`--${o} goes with --hosts (or "cluster up")`);
        if (joinAt !== undefined) {
          if (hostsN !== undefined || transport !== 'shm' || warm !== undefined || opt('spare') !== undefined) throw new UsageError('--join brings up one host of a cluster: --hosts, --vmbus-transport, --warm and --spare do not go with it');
          const keyFile = opt('key');
          if (keyFile === undefined) throw new UsageError('--join needs --key FILE, the cluster\'s key file');
          const j = await clusterCall(() => joinHost(paths, { join: joinAt, keyFile, name: opt('name'), address: opt('address'), lps: lps === undefined ? null : Number(lps) }));
          if (json) out(JSON.stringify(j));
          else out(`host ${j.hostId} is up and joined the cluster at ${j.fabric} as ${j.name} (${j.address}); "hvlab down" here takes it out`);
          return 0;
        }
        if (hostsN !== undefined) {
          if (transport !== 'shm' || warm !== undefined || opt('spare') !== undefined) throw new UsageError('--hosts brings up a cluster: --vmbus-transport, --warm and --spare are for one host');
          const source = meshTopologySource(Number(hostsN), lps === undefined ? null : Number(lps));
          const t = parseTopology(source, `--hosts ${hostsN}`);
          await interruptible('up was interrupted: everything it had started was taken down', (signal) => clusterCall(() => clusterUp(paths.home, t, source, `--hosts ${hostsN}`, { progress: json ? undefined : (l) => out(l), ...fabricOptions(opt), signal })));
          interruptSays = 'the cluster is up ("hvlab cluster down" takes it down)';
          const st = await clusterCall(() => clusterStatus(paths.home));
          if (json) out(JSON.stringify(st));
          else out(`cluster ${t.name} is up: ${t.hosts.length} host${t.hosts.length === 1 ? '' : 's'} (${st.mode}); "hvlab cluster status" shows them, "hvlab --host h1 ..." aims at one, "hvlab cluster down" ends it`);
          return 0;
        }
        // One host per home: a home that holds a cluster has its hosts under it, and a host of a
        // cluster comes up with its cluster (its namespace, its LPs, its join). An 'up' in either
        // place started a stray host outside the cluster that "cluster down" then left running.
        if (typeof aimed === 'string') throw new CliError(`${aimed} is a host of the cluster in ${resolveHome(p.home)}: its hosts come up with the cluster ("hvlab cluster up"); one brought down alone stays down until the cluster is brought down and up again`);
        if (hasCluster(paths.home)) throw new CliError(`${paths.home} holds a cluster: one host per home ("hvlab cluster down" first, or --home elsewhere)`);
        // Its own home named with --home: the same host, the same refusal (it came up in no
        // namespace, outside the cluster, and "cluster status" showed it up there, not joined).
        const member = clusterOfHostHome(paths.home);
        if (member !== null) throw new CliError(`${paths.home} is the home of host ${member.host} of the cluster in ${member.home}: its hosts come up with the cluster ("hvlab cluster up"); one brought down alone stays down until the cluster is brought down and up again`);
        const spare = opt('spare');
        // Ctrl-C during the start: `up` stops where it is and takes what it started down (it was
        // left up without a word, then brought down only once it was ready); one that came in
        // the last instant, after the host was ready, brings it down here.
        const rec = await interruptible('up was interrupted: the host it started was brought down', async (signal) => {
          const r = await up(paths, { lps: lps === undefined ? null : Number(lps), vmbusTransport: transport, warm: warm === undefined ? 0 : Number(warm), warmMemory, ...(spare === undefined ? {} : { spare: Number(spare) }), signal });
          if (signal.aborted) await down(paths);
          return r;
        });
        interruptSays = 'the host is up ("hvlab down" takes it down)';
        // A "cluster up" that started beside this one claimed the home meanwhile: this host goes
        // (the cluster's side asks for a host after its claim, so one of the two always sees the other).
        if (hasCluster(paths.home)) {
          await down(paths);
          throw new CliError(`${paths.home} holds a cluster: one host per home ("hvlab cluster down" first, or --home elsewhere)`);
        }
        client = new MgmtClient(paths.mgmtEndpoint, { watch: rec, debug: debugOn() ? debugLine : undefined });
        const info = await client.request<HostInfo>('hostInfo');
        if (json) out(JSON.stringify(info));
        else out(`host ${rec.hostId} is up: ${rec.lps} LP${rec.lps === 1 ? '' : 's'}, ${info.memoryMode} memory${info.memoryMode === 'private' ? ` (${info.memoryModeReason})` : ''}, VMBus over ${info.vmbusTransport === 'shm' ? 'shared-memory rings' : 'ZeroMQ'}, home ${paths.home}`);
        return 0;
      }
      case 'down': {
        // Faults first: nothing stays injected (and no paused process holds the teardown up).
        await stopNemesis(paths.home);
        const r = await down(paths);
        // "down" in a cluster's home (one "up --hosts N" or "cluster up" made) has no host of its
        // own: everything of this home is the cluster, so it goes, as "cluster down" takes it.
        // A home that holds both (before "cluster up" and "up" refused each other) loses both.
        const cluster = hasCluster(paths.home) ? await clusterDown(paths.home) : null;
        if (json) out(JSON.stringify(cluster ? { ...r, cluster } : r));
        else if (cluster && r.hostId) out(`host ${r.hostId} is down; ${clusterDownLine(cluster)}`);
        else if (cluster) out(clusterDownLine(cluster));
        // Not graceful, with nothing left to kill or remove: another down, or its own end, came first.
        else out(r.hostId ? `host ${r.hostId} is down${r.graceful ? '' : r.killed === 0 && r.shm === 0 ? ' (nothing of it was left running)' : ` (forced: killed ${r.killed} processes, removed ${r.shm} shm files)`}` : 'no host was up');
        await sweepRunHomes();
        return 0;
      }
      case 'cluster check': {
        const r = loadTopology(name!);
        if (r instanceof TopologyError) return refuseTopology(r, json);
        if (json) out(JSON.stringify({ valid: true, topology: r.topology }));
        else out(describeTopology(r.topology));
        return 0;
      }
      case 'cluster up': {
        const r = loadTopology(name!);
        if (r instanceof TopologyError) return refuseTopology(r, json, '; nothing was started');
        const t = r.topology;
        const t0 = Date.now();
        await interruptible('cluster up was interrupted: everything it had started was taken down', (signal) => clusterCall(() => clusterUp(paths.home, t, r.source, resolve(name!), { progress: json ? undefined : (l) => out(l), ...fabricOptions(opt), signal })));
        interruptSays = 'the cluster is up ("hvlab cluster down" takes it down)';
        const st = await clusterCall(() => clusterStatus(paths.home));
        if (json) out(JSON.stringify(st));
        else out(`cluster ${t.name} is up: ${t.hosts.length} host${t.hosts.length === 1 ? '' : 's'}, ${t.vms.length} VM${t.vms.length === 1 ? '' : 's'} Running, in ${((Date.now() - t0) / 1000).toFixed(1)} s (${st.mode}: ${st.modeReason})`);
        return 0;
      }
      case 'cluster graph': {
        let t: Topology;
        let places: Map<string, { address: string; netns: string | null }> | undefined;
        if (name !== undefined) {
          const r = loadTopology(name);
          if (r instanceof TopologyError) return refuseTopology(r, false);
          t = r.topology;
        } else {
          const c = await clusterCall(async () => readCluster(paths.home));
          if (!c) throw new CliError(`no cluster is up for ${paths.home}: give a topology FILE, or run "hvlab cluster up FILE" first`);
          const st = await clusterCall(() => clusterStatus(paths.home));
          places = new Map(st.hosts.map((x) => [x.name, { address: x.address, netns: x.netns }]));
          // The VMs as they are now (made, moved or deleted since the file), from every host that answers.
          const live = await clusterCall(() => clusterVms(paths.home));
          t = {
            ...c.topology,
            vms: live.map((v) => ({ name: v.name, host: v.host, memoryBytes: v.memoryBytes, vps: v.vps, workload: v.workload.name, processor: v.processor, ha: false })),
          };
        }
        const picture = flag('dot') ? topologyDot(t, places) : topologySvg(t, places);
        const target = opt('out');
        if (target === undefined) process.stdout.write(picture);
        else {
          try {
            writeFileSync(target, picture);
          } catch (e) {
            throw new CliError(`cannot write ${target}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'its directory does not exist' : (e as Error).message}`);
          }
          out(`wrote ${flag('dot') ? 'DOT' : 'SVG'} of cluster ${t.name} to ${target}`);
        }
        return 0;
      }
      case 'cluster status': {
        const st = await clusterCall(() => clusterStatus(paths.home));
        if (json) out(JSON.stringify(st));
        else out(statusText(st));
        return 0;
      }
      case 'cluster down': {
        await stopNemesis(paths.home);
        const r = await clusterDown(paths.home);
        if (json) out(JSON.stringify(r));
        else out(clusterDownLine(r));
        await sweepRunHomes();
        return 0;
      }
      case 'fault inject': {
        const kind = name as FaultKind;
        if (!(FAULT_KINDS as readonly string[]).includes(kind)) throw new ValueError(`unknown fault kind "${name}": ${FAULT_KINDS.join(', ')}`);
        const req = faultRequestFromOptions(kind, opt, flag);
        if (faultOnHost !== null) {
          // --host in a cluster: the target on that host (a VM there, or that host for host:local).
          if (/^vm:[^@]+$/.test(req.target)) req.target = `${req.target}@${faultOnHost}`;
          else if (req.target === 'host:local') req.target = `host:${faultOnHost}`;
        }
        // Nothing up there (a --home mistyped, say): said here, as the nemesis would say it, before
        // a nemesis is started for it (it made the home and its faults directory, and left).
        if (!homeAlive(paths.home)) throw new CliError(`nothing is up in ${paths.home} ("hvlab up" or "hvlab cluster up" first)`);
        const nem = await NemesisClient.connect(paths.home);
        try {
          const owner = flag('wait') ? `cli-${process.pid}-${Date.now()}` : null;
          if (owner) req.owner = owner;
          const rec = await nem.inject(req).catch((e: unknown) => {
            throw e instanceof NemesisError ? new CliError(e.message) : e;
          });
          if (json && !owner) out(JSON.stringify(rec));
          else if (!json) {
            // An instant fault (a bitflip, a kill without a restart window) has no time to last and nothing to end.
            const instant = rec.forMs === 0 && (rec.kind === 'bitflip' || (rec.kind === 'kill' && rec.params.restart !== true));
            const lasting = instant ? ' (done: it lasts no time)' : ` for ${formatMs(rec.forMs)}${rec.kind === 'kill' || rec.kind === 'bitflip' ? '' : `, until ${new Date(rec.endsAt).toISOString().slice(11, 23)}`}${owner ? '' : ' ("hvlab fault list" shows it, "hvlab fault clear" ends it)'}`;
            out(`fault ${rec.id}: ${rec.kind}${Object.keys(rec.params).length ? ` (${paramsText(rec.params)})` : ''} on ${rec.resolved.summary}${lasting}`);
          }
          if (!owner) return 0;
          // --wait: hold the lease until the fault ends; Ctrl-C or a kill ends it (the lease lapses at worst).
          let stop = false;
          const release = onInterrupt(() => void (stop = true));
          try {
            for (;;) {
              await new Promise((r) => setTimeout(r, Math.min(OWNER_RENEW_MS, 200)));
              if (stop) {
                // Interrupted: the fault ends now, which is said, and the exit is 130 as every command's.
                const ended = await nem.clear(null, { owner });
                const me = ended.find((f) => f.id === rec.id) ?? rec;
                if (json) out(JSON.stringify(me));
                else process.stderr.write(`hvlab: interrupted: fault ${rec.id} ended (${me.endReason ?? 'cleared'})\n`);
                return 130;
              }
              await nem.renew(owner).catch(() => undefined);
              const all = await nem.list({ all: true });
              const me = all.find((f) => f.id === rec.id);
              if (!me || me.state !== 'active') {
                if (json) out(JSON.stringify(me ?? rec));
                else out(`fault ${rec.id} ended (${me?.endReason ?? 'gone'})${me?.error ? `: ${me.error}` : ''}`);
                break;
              }
            }
          } finally {
            release();
          }
          return 0;
        } finally {
          nem.close();
        }
      }
      case 'fault list': {
        // Faults injected in a host's own home (--home, or --host before it went to the cluster's) went to that host's own nemesis, which this list does
        // not hold: said below the list (on stderr), so they are not taken for none.
        const elsewhere = (): void => {
          if (!hasCluster(paths.home)) return;
          let hosts: string[] = [];
          try {
            hosts = readdirSync(join(paths.home, 'cluster', 'hosts')).sort();
          } catch { /* none */ }
          for (const hname of hosts) {
            if (nemesisPid(clusterHostHome(paths.home, hname)) !== null) process.stderr.write(`hvlab: host ${hname} has a nemesis of its own (faults injected in its home): "hvlab --home ${clusterHostHome(paths.home, hname)} fault list" shows them\n`);
          }
        };
        // What the hosts hold that no active fault of `list` accounts for (an LP shrink set past the
        // nemesis, or naming no fault), asked of their roots: only host info showed it.
        const withHostHeld = async (list: FaultRecord[]): Promise<FaultRecord[]> => {
          if (!homeAlive(paths.home)) return list;
          let hosts;
          try {
            hosts = worldHosts(paths.home).hosts;
          } catch {
            return list;
          }
          const active = new Set(list.filter((f) => f.state === 'active').map((f) => f.id));
          const held = (await readHostShrinks({ hosts })).filter((x) => unheldHostFaults([x.fault], (id) => active.has(id)).length > 0);
          return [...list, ...held.map((x) => unheldShrinkRecord(x.host, x.fault))].sort(faultOrder);
        };
        const show = (list: FaultRecord[], none: string): void => {
          if (json) out(JSON.stringify(list));
          else if (list.length === 0) out(none);
          else {
            out(faultTable(list));
            if (list.some((f) => f.unheld && f.state === 'active')) out('held by host: an LP shrink set past this nemesis (by the management API, or another nemesis: a cluster host\'s own) or naming no fault; "hvlab fault clear ID" ends it, "hvlab fault clear" only one naming no fault');
          }
          elsewhere();
        };
        // No nemesis and nothing it left: nothing is injected by it (and listing starts nothing),
        // but a host may hold a fault of its own.
        if (nemesisPid(paths.home) === null && !existsSync(activeFile(paths.home))) {
          const why = !homeAlive(paths.home) ? ` (no host or cluster is up for ${paths.home})` : flag('all') ? ` (no nemesis runs; ${join(paths.home, 'faults', 'log.jsonl')} has every fault there was)` : '';
          show(await withHostHeld([]), `no fault is active${why}`);
          return 0;
        }
        const nem = await NemesisClient.connect(paths.home);
        try {
          const list = await nem.list({ all: flag('all'), counters: true });
          show(await withHostHeld(list), flag('all') ? 'no fault since the nemesis started' : 'no fault is active');
          return 0;
        } finally {
          nem.close();
        }
      }
      case 'fault clear': {
        if (name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$/.test(name)) throw new ValueError(`"${name}" is not a fault's id ("hvlab fault list" shows them)`);
        // No nemesis, nothing it left and no host up: nothing to end (and clearing starts nothing).
        // With a host up the nemesis is asked: a host may hold an LP shrink of no fault it has.
        if (name === undefined && nemesisPid(paths.home) === null && !existsSync(activeFile(paths.home)) && !homeAlive(paths.home)) {
          out(json ? '[]' : 'no fault was active');
          return 0;
        }
        const nem = await NemesisClient.connect(paths.home);
        try {
          const ended = await nem.clear(name ?? null).catch((e: unknown) => {
            throw e instanceof NemesisError ? new CliError(e.message) : e;
          });
          if (json) out(JSON.stringify(ended));
          else {
            // One whose root did not answer its clear is still active there (the nemesis asks again): said apart.
            const said = (fs: FaultRecord[]): string => fs.map((f) => `${f.id} (${f.kind} on ${f.resolved.summary}${f.error ? `: ${f.error}` : ''})`).join(', ');
            const done = ended.filter((f) => f.state !== 'active');
            const ending = ended.filter((f) => f.state === 'active');
            out(ended.length === 0 ? 'no fault was active' : [done.length ? `ended ${said(done)}` : '', ending.length ? `ending ${said(ending)}` : ''].filter(Boolean).join('; '));
          }
          return 0;
        } finally {
          nem.close();
        }
      }
      case 'link set': {
        const change: Record<string, number | null> = {};
        const dur = (o: string): void => {
          const v = opt(o);
          if (v !== undefined) change[`${o}Ms`] = v === 'none' ? null : parseDuration(v)!;
        };
        dur('delay');
        dur('jitter');
        const rate = opt('rate');
        if (rate !== undefined) change.rateBps = rate === 'none' ? null : parseRate(rate)!;
        const loss = opt('loss');
        if (loss !== undefined) change.lossPercent = loss === 'none' ? null : parseLoss(loss)!;
        const seed = opt('seed');
        if (seed !== undefined) change.seed = seedOf(seed);
        if (Object.keys(change).length === 0) throw new UsageError('link set needs at least one of --delay, --jitter, --rate, --loss, --seed');
        warnHeldLink(paths.home, p.args[0]!, p.args[1]!, 'set');
        const l = await clusterCall(() => linkSet(paths.home, p.args[0]!, p.args[1]!, change));
        if (json) out(JSON.stringify(l));
        else out(`link ${l.a} - ${l.b}: ${impairmentsText(l) || 'unimpaired'}${l.cut ? ', cut' : ''} (seed ${l.seed})`);
        return 0;
      }
      case 'link cut':
      case 'link heal': {
        const cut = commandName(p.spec) === 'link cut';
        warnHeldLink(paths.home, p.args[0]!, p.args[1]!, cut ? 'cut' : 'heal');
        const l = await clusterCall(() => (cut ? linkCut : linkHeal)(paths.home, p.args[0]!, p.args[1]!));
        if (json) out(JSON.stringify(l));
        else out(`link ${l.a} - ${l.b} is ${l.cut ? 'cut' : 'up'}`);
        return 0;
      }
      case 'link reset': {
        if (p.args.length === 1) throw new UsageError('link reset takes both ends of a link, or none (every link)');
        warnHeldLink(paths.home, p.args[0] ?? null, p.args[1] ?? null, 'reset');
        const ls = await clusterCall(() => linkReset(paths.home, p.args[0] ?? null, p.args[1] ?? null));
        if (json) out(JSON.stringify(ls));
        else out(`reset ${ls.length} link${ls.length === 1 ? '' : 's'}: ${ls.map((l) => `${l.a} - ${l.b}`).join(', ') || 'none'}`);
        return 0;
      }
      case 'link probe': {
        const [from, to] = p.args as [string, string];
        const target = await clusterCall(() => clusterHostTarget(paths.home, from));
        client = target.kind === 'local' ? needHost(target.paths) : new MgmtClient(target.endpoint, { socket: target.socket });
        const bytes = opt('bytes') === undefined ? 0 : parseSize(opt('bytes')!)!;
        const pings = opt('pings') === undefined ? 10 : Number(opt('pings'));
        const probing = client.request<LinkProbeResult>('linkProbe', { peer: to, pings, bytes, direct: flag('direct') }, 600000);
        // Ctrl-C stops the probe's traffic at the fabric, where it crosses the link: its bulk bytes
        // flowed on after the CLI had gone (a 4 GiB probe at 1 mbit, for hours). --direct goes past
        // the fabric: its host stops it (linkProbeStop).
        const probeClient = client;
        const r = flag('direct')
          ? await stopProbeOnInterrupt(probing, async () => (await probeClient.request<{ stopped: number }>('linkProbeStop', { peer: to }, 5000)).stopped, `${from} to ${to}`, `by ${from}`)
          : await stopProbeOnInterrupt(probing, () => linkProbeStop(paths.home, from, to), `${from} to ${to}`, 'at the fabric');
        if (json) out(JSON.stringify(r));
        else {
          const sorted = [...r.rttMs].sort((a, b) => a - b);
          const q = (f: number): string => (sorted.length ? `${sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))]!.toFixed(2)} ms` : '-');
          out(`${r.from} -> ${r.peer} ${r.direct ? 'directly' : 'through the link'} (${r.via}):`);
          out(`  round trips: ${r.rttMs.length} of ${r.rttMs.length + r.lostPings}, p50 ${q(0.5)}, min ${q(0)}, max ${q(0.999)}`);
          if (r.bytes > 0) out(`  bulk: ${formatBytes(r.bytes)} in ${r.seconds.toFixed(3)} s = ${(r.bitsPerSecond / 1e6).toFixed(1)} Mbit/s`);
        }
        return 0;
      }
      case 'host info': {
        const info = await connect().request<HostInfo>('hostInfo');
        if (json) out(JSON.stringify(info));
        else out(table([
          ['host', info.hostId], ['home', info.home], ['memory mode', `${info.memoryMode} (${info.memoryModeReason})`],
          ['logical processors', lpsText(info)], ['VMBus transport', info.vmbusTransport], ['hypercalls', info.hypercallPath === 'page' ? `hypercall pages (shared memory)${info.hypercallWake === 'descriptor' ? ', events through a wake descriptor' : info.hypercallWake === 'word' ? ', events through a word watch' : ''}` : 'socket (ZeroMQ)'], ['hypervisor pid', String(info.pids.hypervisor)], ['root pid', String(info.pids.root)],
          ['root restarts', String(info.rootRestarts ?? 0)],
          ['VMs', String(info.vms)], ['started', info.startedAt], ['management API', `v${info.apiVersion}`],
          ...(info.code ? [['VM processes run', info.code === 'bundles' ? 'bundles (dist/bundle)' : info.code === 'sources' ? 'TypeScript sources (HVLAB_FROM_SOURCE=1)' : 'compiled modules (no fresh bundles: "pnpm build" makes them)']] : []),
          ...(info.dirtyTracking ? [['dirty-page tracking', info.dirtyTracking.mode === 'kernel' ? 'kernel (userfaultfd write-protect + PAGEMAP_SCAN)' : `guest bitmap (${info.dirtyTracking.reason ?? 'the kernel\'s is unavailable'})`]] : []),
        ]));
        return 0;
      }
      case 'host memory': {
        const collect = flag('collect');
        const m = await connect().request<HostMemory>('hostMemory', collect ? { collect } : {});
        if (json) out(JSON.stringify(m));
        else {
          const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
          out(table([
            ['root pid', String(m.pid)], ['resident (RSS)', mib(m.rss)], ['V8 heap used', `${mib(m.heapUsed)} of ${mib(m.heapTotal)}`],
            ['outside the heap', `${mib(m.external)} (array buffers ${mib(m.arrayBuffers)})`],
            ['garbage collection', m.collectedMs === null ? (collect ? 'not available in this process' : 'none first (--collect runs one)') : `a full one first, ${m.collectedMs.toFixed(1)} ms`],
          ]));
        }
        return 0;
      }
      case 'top': {
        const c = connect();
        const intervalS = Number(opt('interval') ?? '1');
        const once = flag('once') || json || !process.stdout.isTTY;
        for (;;) {
          const vms = await c.request<VmInfo[]>('vmList');
          const rows: string[][] = [['VM', 'VP', 'STATE', 'CPU%', 'RUN', 'READY', 'WAIT', 'WEIGHT', 'RES%', 'MAX%']];
          const paused = vms.some((v) => v.stopped?.length) ? pausedIn(paths.home) : new Map<number, string>();
          for (const v of vms) {
            rows.push([v.name, '*', vmStateText(v, paused), v.cpu ? String(v.cpu.percent) : '-', '', '', '', String(v.processor.weight), String(v.processor.reserve), String(v.processor.maximum)]);
            for (const vp of v.cpu?.vps ?? []) {
              const s = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;
              rows.push(['', String(vp.index), vp.state, String(vp.cpuPercent), s(vp.runMs), s(vp.readyMs), s(vp.waitMs), '', '', '']);
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
        const ps = await connect().request<ProcessInfo[]>('ps');
        if (json) out(JSON.stringify(ps));
        else out(table([['ROLE', 'VM', 'PID'], ...ps.map((x) => [x.role, x.vm ?? (x.warm === 'spare' ? '- (spare)' : x.warm ? `- (warm, ${x.warm})` : '-'), String(x.pid)])]));
        return 0;
      }
      case 'vm new': {
        const r = await connect().request<VmInfo>('vmNew', { name, memory: opt('memory'), vps: opt('vps'), workload: opt('workload'), rtcOffset: opt('rtc-offset') });
        out(json ? JSON.stringify(r) : `VM ${r.name} created (${formatBytes(r.memoryBytes)}, ${r.vps} VP${r.vps === 1 ? '' : 's'}, workload ${r.workload.name}), state Off`);
        return 0;
      }
      case 'vm stop': {
        const timeoutS = Number(opt('timeout') ?? '30');
        const r = await connect().request<VmInfo>('vmStop', { name, timeoutS, force: flag('force') }, (timeoutS + 20) * 1000);
        out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}${r.lastStateReason ? ` (${r.lastStateReason})` : ''}`);
        return 0;
      }
      case 'vm ic': {
        const enable = opt('enable');
        const disable = opt('disable');
        if (enable !== undefined && disable !== undefined) throw new UsageError('"vm ic" takes --enable or --disable, not both');
        const list = await connect().request<IcServiceInfo[]>('vmIc', { name, enable, disable });
        if (json) out(JSON.stringify(list));
        else out(table([['SERVICE', 'ENABLED', 'STATUS', 'VERSION', 'DETAIL'], ...list.map((e) => [
          e.service, e.enabled ? 'yes' : 'no', e.status, e.version ?? '-',
          e.service === 'heartbeat' ? `sequence ${e.sequence ?? 0}` : e.service === 'timesync' && e.offsetMs !== null && e.offsetMs !== undefined ? `offset ${e.offsetMs} ms` : '',
        ])]));
        return 0;
      }
      case 'vm kvp': {
        const [, op, key, value] = p.args;
        const wants: Record<string, string[]> = { set: ['KEY', 'VALUE'], get: ['KEY'], delete: ['KEY'], list: [] };
        const operands = wants[op];
        if (!operands) throw new UsageError(`"vm kvp" operation "${op}" is unknown: use set KEY VALUE, get KEY, delete KEY or list`);
        const given = p.args.slice(2);
        if (given.length > operands.length) throw new UsageError(`unexpected argument "${given[operands.length]}" for "vm kvp ${op}" (usage: hvlab vm kvp NAME ${[op, ...operands].join(' ')})`);
        if (given.length < operands.length) throw new UsageError(`"vm kvp ${op}" needs ${operands.slice(given.length).join(' ')} (usage: hvlab vm kvp NAME ${[op, ...operands].join(' ')})`);
        const pool = opt('pool');
        const r = await connect().request<unknown>('vmKvp', { name, op, key, value, pool });
        if (json) out(JSON.stringify(r));
        // As it is for a pipe (a script reads the value); escaped for a terminal, as in a table.
        else if (op === 'get') out(process.stdout.isTTY ? printable((r as { value: string }).value) : (r as { value: string }).value);
        else if (op === 'list') {
          const rows = r as KvpEntry[];
          out(rows.length === 0 ? 'no keys' : table([['KEY', 'VALUE'], ...rows.map((e) => [e.key, e.value])]));
        } else if (op === 'set') out(`${key} set in the ${pool ?? 'external'} pool of ${name}`);
        else out(`${key} deleted from the ${pool ?? 'external'} pool of ${name}`);
        return 0;
      }
      case 'vm start':
      case 'vm turn-off':
      case 'vm pause':
      case 'vm resume': {
        const op = ({ start: 'vmStart', 'turn-off': 'vmTurnOff', pause: 'vmPause', resume: 'vmResume' } as const)[p.spec.words[1] as 'start' | 'turn-off' | 'pause' | 'resume'];
        const r = await connect().request<VmInfo>(op, { name });
        out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}`);
        return 0;
      }
      case 'vm delete': {
        await connect().request('vmDelete', { name });
        out(json ? JSON.stringify({ name, deleted: true }) : `VM ${name} deleted`);
        return 0;
      }
      case 'vm list': {
        const all = flag('all');
        if (all && typeof aimed === 'string') throw new UsageError('--all lists every host of the cluster: give --all or --host, not both');
        const listed = all ? await clusterCall(() => clusterVmsAnswered(paths.home)) : null;
        const vms: Array<VmInfo & { host?: string }> = listed ? listed.vms : await connect().request<VmInfo[]>('vmList');
        // A host that did not answer is said (on stderr, so --json's stdout stays the list): its VMs
        // were left out without a word, as if it had none.
        for (const h of listed?.silent ?? []) process.stderr.write(`hvlab: host ${h} did not answer (down, or its root not answering within 5 s): its VMs are not listed\n`);
        if (json) out(JSON.stringify(vms));
        else if (vms.length === 0) out('no VMs');
        else {
          const hostCol = (v: { host?: string }): string[] => (all ? [v.host ?? '-'] : []);
          const paused = vms.some((v) => v.stopped?.length) ? pausedIn(paths.home) : new Map<number, string>();
          out(table([[...(all ? ['HOST'] : []), 'NAME', 'STATE', 'PARTITION', 'VPS', 'MEMORY', 'UPTIME', 'WORKLOAD', 'PROGRESS', 'CPU'], ...vms.map((v) => v.state === 'Invalid'
            ? [...hostCol(v), v.name, v.state, '-', '-', '-', '-', '-', '-', '-']
            : [
              ...hostCol(v), v.name, vmStateText(v, paused), v.partitionId === null ? '-' : String(v.partitionId), String(v.vps), formatBytes(v.memoryBytes),
              // A VM that does not run has no uptime ("0s" read as just started).
              v.partitionId === null && v.uptimeS === 0 ? '-' : `${v.uptimeS}s`, v.workload.name, v.workload.progress === null ? '-' : String(v.workload.progress), v.cpu ? `${v.cpu.percent}%` : '-',
            ])]));
          // A config VMMS could not read is kept, never overwritten: say why, one line each.
          for (const v of vms.filter((x) => x.state === 'Invalid')) out(`${v.name}: invalid configuration: ${v.lastStateReason ?? 'unreadable'}`);
        }
        return 0;
      }
      case 'vm move': {
        // A destination the cluster does not have is said as such (it was "no link to host … that
        // is up"), before the move is asked for and its record replaces the VM's last move-status.
        const home = resolveHome(p.home);
        const rec = hasCluster(home) ? readCluster(home) : null;
        const to = opt('to');
        if (rec && typeof to === 'string' && !rec.topology.hosts.some((x) => x.name === to)) {
          const st = await fabricStatus(home).catch(() => null);
          if (st && !st.members.some((m) => m.name === to)) throw new ValueError(`there is no host ${to} in cluster ${rec.topology.name} (its hosts: ${[...new Set([...rec.topology.hosts.map((x) => x.name), ...st.members.map((m) => m.name)])].sort().join(', ')})`);
        }
        const c = connect();
        const dl = opt('downtime-limit');
        const args = {
          name, to: opt('to'), bandwidthBps: opt('bandwidth') === undefined ? undefined : parseSize(opt('bandwidth')!)!,
          downtimeLimitMs: dl === undefined ? undefined : Math.max(1, Math.round(parseDuration(dl)!)), maxPasses: opt('max-passes') === undefined ? undefined : Number(opt('max-passes')),
          compress: flag('compress') || undefined, autoConverge: flag('auto-converge') || undefined, postcopy: flag('postcopy') || undefined, offline: flag('offline') || undefined,
        };
        let done = false;
        const moving = c.request<MigrationStats>('vmMove', args, 24 * 3600 * 1000).finally(() => {
          done = true;
        });
        // Ctrl-C cancels the move, as virsh's does (the VM stays where it is, move-cancel's rules);
        // a second one leaves it running at the host. Past the switch-over the host refuses the
        // cancel (the VM may run at the destination already): that is said, and the move goes on.
        let cancelled = false;
        const cancel = (): void => {
          cancelled = true;
          process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[K' : ''}hvlab: interrupted: cancelling the move of VM ${name} (Ctrl-C again leaves it to go on)\n`);
          void c.request('vmMoveCancel', { name }, 10000).catch((e: unknown) => {
            if (!(e instanceof MgmtCallError) || e.code !== MIG_CANCEL_TOO_LATE) return;
            cancelled = false;
            process.stderr.write(`hvlab: not cancelled: ${e.message} (Ctrl-C again leaves it to go on)\n`);
          });
        };
        const release = onInterrupt(cancel);
        moving.finally(release).catch(() => undefined);
        if (!json) {
          let last = '';
          const tty = process.stderr.isTTY;
          while (!done) {
            await Promise.race([moving.catch(() => undefined), new Promise((r) => setTimeout(r, 250))]);
            if (done) break;
            const st = await c.request<MigrationStats>('vmMoveStatus', { name }, 5000).catch(() => null);
            if (!st || st.status === 'completed') continue;
            const line = migrationLine(st);
            if (line === last) continue;
            last = line;
            if (tty) process.stderr.write(`\r\x1b[K${line}`);
            else process.stderr.write(`${line}\n`);
          }
          if (tty && last) process.stderr.write('\r\x1b[K');
        }
        const st = reportedMigrationStats(await moving);
        if (json) out(JSON.stringify(st));
        else if (st.status === 'completed') out(movedText(st));
        else process.stderr.write(`hvlab: ${await moveFailure(c, st, typeof aimed === 'string' ? resolveHome(p.home) : null)}\n`);
        return st.status === 'completed' ? 0 : cancelled ? 130 : 1;
      }
      case 'experiment run': {
        const file = name!;
        if (experimentKindOf(file) === 'faults') return await runChaos(file, paths.home, opt, flag, json);
        if (opt('seed') !== undefined) throw new UsageError('--seed is for experiments of kind: faults (a migration experiment takes its seed from the file)');
        if (flag('check')) {
          const spec = loadExperiment(file);
          if (spec instanceof ExperimentError) return refuseFile(spec, file, 'experiment', '', json);
          // On an existing cluster, from and to must be its hosts (when one is up here).
          const hosts = spec.cluster === 'existing' ? await upClusterHosts(paths.home) : null;
          const wrong = hosts === null ? [] : (['from', 'to'] as const).filter((f) => !hosts.includes(spec[f])).map((f) => ({ field: f, path: [f], message: `host ${spec[f]} is not a host of the cluster up here (its hosts: ${hosts.join(', ') || 'none'})` }));
          if (wrong.length > 0) return refuseForCluster(file, wrong, json);
          out(json ? JSON.stringify({ valid: true, spec }) : `${file}: experiment ${spec.name} (${spec.kind}): ${spec.methods.join(', ')} × ${spec.repetitions}, VM ${formatBytes(spec.vm.memoryBytes)} ${spec.vm.workload} on ${spec.from} → ${spec.to} (cluster: ${spec.cluster}${spec.cluster === 'existing' ? hosts === null ? ', none is up here: its host names are checked when it runs' : ', up here' : ''})`);
          return 0;
        }
        // Ctrl-C or a kill ends the run in flight, and everything it made is still taken down and reported.
        const ac = new AbortController();
        const release = onInterrupt(() => ac.abort());
        let report;
        try {
          // A new cluster goes in a temporary home of its own; an existing one is this home's.
          const spec = loadExperiment(file);
          const home = !(spec instanceof ExperimentError) && spec.cluster === 'existing' ? paths.home : undefined;
          // A lease on the temporary cluster, held by this process: killed (even with SIGKILL), it
          // leaves the cluster to the home's nemesis, which takes it down and removes the home.
          const leaseHome = async (h: string): Promise<{ handOver: () => Promise<boolean>; release: () => Promise<void> }> => {
            const lease = await holdHomeLease(h, `experiment-${process.pid}.home`);
            return {
              handOver: () => lease.handOver(),
              release: async () => {
                lease.end();
                await stopNemesis(h);
              },
            };
          };
          // On an existing cluster, the run's own lease on what it changes there (its VMs, the link).
          const leaseRun = (h: string): Promise<RunLease> => holdRunLease(h, `experiment-${process.pid}`);
          report = await clusterCall(() => runExperiment(file, { out: opt('out'), progress: (l) => process.stderr.write(`${l}\n`), home, signal: ac.signal, leaseHome, leaseRun }));
        } catch (e) {
          if (e instanceof ExperimentError) return refuseFile(e, file, 'experiment', '; nothing was started', json);
          if (ac.signal.aborted) throw new Interrupted(`experiment was interrupted before its first run: everything it had started was taken down, and no report was written`);
          throw e;
        } finally {
          release();
        }
        if (json) out(JSON.stringify(report));
        else {
          out(table(experimentSummaryRows(report)));
          out(`report in ${report.out}: ${report.files.join(', ')}${report.aborted ? ' (stopped early)' : ''}${report.cleanup.length ? `; cleanup problems: ${report.cleanup.join('; ')}` : ''}`);
        }
        // Interrupted (Ctrl-C): 130, as every command; the report was written all the same.
        return report.aborted ? 130 : report.cleanup.length > 0 ? 1 : 0;
      }
      case 'vm move-status': {
        // Through reportedMigrationStats: a host started before it kept a downtime of 0 for a move that did not complete.
        const st = reportedMigrationStats(await connect().request<MigrationStats>('vmMoveStatus', { name }));
        if (json) out(JSON.stringify(st));
        else {
          out(table(moveStatusRows(st)));
        }
        return 0;
      }
      case 'vm move-cancel': {
        const force = flag('force');
        const st = reportedMigrationStats(await connect().request<MigrationStats>('vmMoveCancel', force ? { name, force } : { name }));
        out(json ? JSON.stringify(st) : force ? `resuming VM ${st.vm} here without ${st.to}'s word (its move was in doubt); "hvlab vm move-status ${st.vm}" shows its end` : `cancelling the migration of VM ${st.vm} to ${st.to} (it was ${st.status}); "hvlab vm move-status ${st.vm}" shows its end`);
        return 0;
      }
      case 'vm save': {
        // Writing a large guest's memory takes a while; a dead host is still noticed at once.
        const r = await connect().request<VmInfo>('vmSave', { name }, 180000);
        out(json ? JSON.stringify(r) : `VM ${r.name} is ${r.state}`);
        return 0;
      }
      case 'vm set-processor': {
        const r = await connect().request<VmInfo>('vmSetProcessor', { name, reserve: opt('reserve'), maximum: opt('maximum'), weight: opt('weight') });
        out(json ? JSON.stringify(r) : `VM ${r.name}: reserve ${r.processor.reserve}%, maximum ${r.processor.maximum}%, weight ${r.processor.weight}`);
        return 0;
      }
      case 'vm status': {
        const r = await connect().request<Record<string, unknown>>('vmStatus', { name });
        out(json ? JSON.stringify(r) : Object.entries(r).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('\n'));
        return 0;
      }
      case 'vm peek': {
        const gpa = parseWholeNumber(opt('gpa')!)!;
        const len = parseSize(opt('len')!)!;
        const file = opt('out');
        if (file !== undefined) checkWritable(file);
        const bytes = new Uint8Array(await connect().request<Uint8Array>('vmPeek', { name, gpa, len }));
        if (file !== undefined) {
          try {
            writeFileSync(file, bytes);
          } catch (e) {
            throw new CliError(`cannot write ${file}: ${writeProblem(file, e)}`);
          }
          out(`${bytes.length} bytes written to ${file}`);
        } else out(hexdump(bytes, gpa));
        return 0;
      }
      case 'debug hypercall': {
        const [call, ...fields] = p.args;
        const input: Record<string, unknown> = {};
        for (const kv of fields) {
          const eq = kv.indexOf('=');
          if (eq <= 0) throw new UsageError(`"${kv}" is not FIELD=VALUE`);
          input[kv.slice(0, eq)] = parseValue(kv.slice(eq + 1));
        }
        if (flag('page') && opt('as') !== undefined) throw new UsageError('--page is for the root\'s own calls; leave out --as');
        const r = await connect().request<DebugHypercallResult>('debugHypercall', { call, as: opt('as') ?? null, input, ...(flag('page') ? { page: true } : {}) });
        if (json) out(JSON.stringify(r, jsonReplacer));
        else out(`${r.call} as ${r.as}: ${r.statusName} (0x${r.status.toString(16)})${r.output !== null && r.output !== undefined ? `  ${JSON.stringify(r.output, jsonReplacer)}` : ''}`);
        return r.status === 0 ? 0 : 3;
      }
      case 'logs': {
        const role = opt('role');
        const vm = opt('vm');
        if (!existsSync(paths.logDir)) {
          // A cluster's home has its hosts' logs under each host's home, not its own.
          const cluster = clusterHint(paths.home);
          throw new CliError(`no logs under ${paths.logDir}${cluster ? `: this home holds ${cluster}` : ''}`);
        }
        const files = logFiles(paths.logDir);
        if (vm !== undefined) {
          // A VM's lines are in its worker's and partition's files: with neither, there is no such VM's log (it printed nothing, with exit code 0).
          const withLogs = [...new Set(files.map((f) => /^(?:vmwp|partition)-(.+)\.log$/.exec(f.slice(f.lastIndexOf('/') + 1))?.[1]).filter((x): x is string => x !== undefined))].sort();
          const others = withLogs.length ? `VMs with logs: ${withLogs.join(', ')}` : 'no VM has logs';
          if (!withLogs.includes(vm) && !flag('follow')) throw new CliError(`no logs of VM ${JSON.stringify(vm)} under ${paths.logDir} (${others})`);
          // Following one that has none yet (one about to start, say) waits for its lines: said, as it waited without a word.
          if (!withLogs.includes(vm)) process.stderr.write(`hvlab: VM ${JSON.stringify(vm)} has no logs yet (${others}); waiting for its lines (Ctrl-C ends)\n`);
        }
        const filter = (line: string): string | null => {
          try {
            const o = JSON.parse(line) as { role?: unknown; vm?: unknown } | null;
            if (typeof o !== 'object' || o === null) return null;
            if (role && o.role !== role) return null;
            if (vm && o.vm !== vm) return null;
          } catch {
            return null;
          }
          return formatLog(line);
        };
        const lines: Array<{ t: string; s: string }> = [];
        const raw: string[] = [];
        // Where each file (by inode) was read to: its last whole line (--follow goes on from there).
        const readTo = new Map<string, number>();
        for (const f of files) {
          let buf: Buffer;
          let at: number;
          let key: string;
          try {
            const st = statSync(f);
            key = `${st.dev}:${st.ino}`;
            // Files only (a FIFO among the logs held the CLI), and each to its last LOG_READ_MAX_BYTES.
            ({ bytes: buf, start: at } = readRegularTail(f, LOG_READ_MAX_BYTES));
          } catch {
            continue; // gone since the listing, or not a file
          }
          // A tail starts with the rest of a line: from the next one.
          const from = at > 0 ? buf.indexOf(0x0a) + 1 : 0;
          const end = buf.lastIndexOf(0x0a) + 1;
          readTo.set(key, at + end);
          for (const l of buf.subarray(from, Math.max(from, end)).toString('utf8').split('\n')) {
            if (l) raw.push(l);
            const s = l && filter(l);
            if (s) lines.push({ t: s.slice(0, 24), s });
          }
        }
        lines.sort((x, y) => (x.t < y.t ? -1 : x.t > y.t ? 1 : 0));
        for (const l of lines) out(l.s);
        if (flag('follow')) await followLogs(paths.logDir, readTo, raw, filter);
        return 0;
      }
      default:
        // Every entry of COMMANDS has a case above; reaching here is a bug of this file.
        throw new Error(`command "${commandName(p.spec)}" has no implementation`);
    }
  } catch (e) {
    // "VM a does not exist" from a host the VM is not on: say where it is.
    if (e instanceof MgmtCallError && e.code === 'NotFound' && vmElsewhere) {
      const where = await (vmElsewhere as () => Promise<string | null>)().catch(() => null);
      if (where) return report(new MgmtCallError(e.code, `${e.message} (${where}: aim there with --host, or leave --host out)`));
    }
    return report(e);
  } finally {
    (client as MgmtClient | null)?.close();
  }
}

/**
 * A home that exists must be a directory, and its socket paths must fit a Unix socket's 107
 * bytes: said at once, in one line, rather than as an ENOTDIR from deep inside, or as a 30 s wait
 * for a hypervisor that could not bind its socket.
 */
function checkHome(home: string): void {
  let st: ReturnType<typeof statSync> | null = null;
  try {
    st = statSync(home);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENAMETOOLONG') throw new CliError(`the home ${home.slice(0, 60)}… is too long a path for this system`);
    if (code === 'ENOTDIR') throw new CliError(`the home ${home} is inside something that is not a directory`);
    // ENOENT: made by "up"; others come out where they are met.
  }
  if (st && !st.isDirectory()) throw new CliError(`the home ${home} is not a directory: HVLAB_HOME (or --home) names a directory`);
  // The socket names in that directory are short (hv, mgmt, w-HASH, vmbus-ID): 24 bytes cover them.
  const longest = join(hostPaths(home).sockDir, 'x'.repeat(24));
  if (Buffer.byteLength(longest) > MAX_IPC_PATH_BYTES) {
    throw new CliError(`the host's sockets go in ${hostPaths(home).sockDir}, too long a path for a Unix socket (at most ${MAX_IPC_PATH_BYTES} bytes with their names): use a shorter TMPDIR`);
  }
}

/** The longest path a Unix socket address holds on Linux (sun_path is 108 bytes with its NUL). */
const MAX_IPC_PATH_BYTES = 107;

const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ' ').trim();

/**
 * A file-system error that says what is wrong with the user's files (a home that is a regular
 * file, a path too long, no permission), as one line without "internal error": its Node message
 * names the call and the path ("ENOTDIR: not a directory, mkdir '…/run/logs'").
 */
const USER_FS_CODES = new Set(['ENOTDIR', 'EISDIR', 'ENAMETOOLONG', 'EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EDQUOT', 'ELOOP', 'EEXIST', 'ENOENT']);
function userFsError(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException | null)?.code;
  return e instanceof Error && typeof c === 'string' && USER_FS_CODES.has(c) && typeof (e as NodeJS.ErrnoException).path === 'string';
}

/** The command a management operation serves, for messages ("vmMoveStatus" is "vm move-status"). */
const OP_WORDS: Readonly<Record<string, string>> = { shutdown: 'down', faultSet: 'fault inject', faultClear: 'fault clear', faultList: 'fault list' };
function opCommand(op: string): string {
  if (OP_WORDS[op]) return OP_WORDS[op]!;
  const words = op.replace(/([A-Z])/g, ' $1').toLowerCase().split(' ');
  return words.length > 1 ? `${words[0]} ${words.slice(1).join('-')}` : words[0]!;
}

/**
 * A host's message in the CLI's words: the management API's operation names ("vmList") as the
 * commands that send them ("vm list"), and an operation's argument ("vmPeek argument \"len\"") as
 * the command's option ("vm peek: --len").
 */
export function userWords(message: string): string {
  const ops = (MGMT_OPS as readonly string[]).filter((o) => o !== 'ping');
  return message
    .replace(new RegExp(`\\b(${ops.join('|')}) argument "([A-Za-z]+)"`, 'g'), (_m, op: string, arg: string) => `${opCommand(op)}: --${arg.replace(/([A-Z])/g, '-$1').toLowerCase()}`)
    .replace(new RegExp(`"(${ops.join('|')})"`, 'g'), (_m, op: string) => `"${opCommand(op)}"`);
}

/**
 * What kind of failure a --json reader is told of: the command line (usage, exit 2), a value on it
 * or in a file it names (value), what a host or the system refused or failed at (host), Ctrl-C or
 * SIGTERM (interrupted, exit 130), or a bug of hvlab (internal).
 */
export type FailureKind = 'usage' | 'value' | 'host' | 'interrupted' | 'internal';

/** --json was on the command line (before any "--"): failures are said as JSON too. */
let jsonFailures = false;

/** Whether a command line asks for JSON, whatever else is wrong with it. */
export function wantsJson(argv: string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).some((t) => t === '--json' || t.startsWith('--json='));
}

/**
 * Says a failure on stderr and returns its exit code: "hvlab: MESSAGE" (and `lines` below it), or
 * with --json exactly one line, {"error":{"message","kind","exitCode"}} (`lines` joined into the
 * message with "; ").
 */
function sayFailure(message: string, kind: FailureKind, exitCode: number, lines: string[] = []): number {
  if (jsonFailures) process.stderr.write(`${JSON.stringify({ error: { message: lines.length ? `${message}: ${lines.join('; ')}` : message, kind, exitCode } })}\n`);
  else process.stderr.write(`hvlab: ${message}${lines.length ? `:\n${lines.join('\n')}` : ''}\n`);
  return exitCode;
}

/** Prints an error as one line (plus the stack with HVLAB_DEBUG=1) and returns the exit code. */
function report(e: unknown): number {
  const kind: FailureKind = e instanceof UsageError ? 'usage' : e instanceof ValueError ? 'value' : e instanceof Interrupted ? 'interrupted'
    : e instanceof CliError || e instanceof MgmtCallError || e instanceof NemesisError || userFsError(e) ? 'host' : 'internal';
  const msg = oneLine(e instanceof MgmtCallError || e instanceof CliError ? userWords(e.message) : e instanceof Error ? e.message : String(e));
  const code = e instanceof UsageError ? 2 : e instanceof Interrupted ? 130 : 1;
  sayFailure(kind !== 'internal' || jsonFailures ? msg : `internal error: ${msg}${debugOn() ? '' : ' (HVLAB_DEBUG=1 shows where)'}`, kind, code);
  if (debugOn() && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  return code;
}

/** The process entry: runs the command line and exits with its code; nothing escapes as a stack. */
export async function main(argv: string[]): Promise<never> {
  // A reader that goes away (hvlab logs | head) is not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => process.exit(e.code === 'EPIPE' ? 0 : 1));
  const lastResort = (e: unknown): void => process.exit(report(e));
  process.on('uncaughtException', lastResort);
  process.on('unhandledRejection', lastResort);
  // Ctrl-C where no command handles it: what was asked of a host goes on there (a VM's start, a
  // save), so say so rather than end without a word.
  const byDefault = (): void => {
    if (interruptOwners > 0) return;
    if (interruptSays) {
      if (process.stderr.isTTY) process.stderr.write('\n');
      sayFailure(`interrupted: ${interruptSays}`, 'interrupted', 130);
    }
    process.exit(130);
  };
  process.on('SIGINT', byDefault);
  process.on('SIGTERM', byDefault);
  const code = await run(argv);
  await drained();
  process.exit(code);
}

/**
 * Waits until what was written to stdout and stderr has left the process: to a pipe, Node writes
 * asynchronously, and process.exit() dropped all but the first 64 KiB (`vm peek --len 64K | wc -c`
 * gave 65536, `vm kvp NAME list --json | jq` an unterminated string), still with exit code 0.
 */
function drained(): Promise<void> {
  const one = (s: NodeJS.WriteStream): Promise<void> =>
    new Promise((resolve) => {
      if (s.destroyed || !s.writable) return resolve();
      s.write('', () => resolve());
    });
  return Promise.all([one(process.stdout), one(process.stderr)]).then(() => undefined);
}

/** True when this file is the program node was asked to run (not imported by bin/ or a test). */
function isEntry(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntry()) await main(process.argv.slice(2));
