/**
 * `npm run bench`: milterd against libmilter, go-milter and a C responder with pre-built replies, same
 * filter everywhere (continue at every stage, add one header at EOM), same Postfix-shaped load.
 * See docs/benchmark.md. `node dist/bench/run.js --help` lists the options.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setupNative, type NativeBuild } from './setup.js';
import { startServer, type CandidateDef, type SocketKind, type StoreCalls } from './lib/candidates.js';
import {
  measure,
  startLoad,
  combine,
  type Cell,
  type GeneratorName,
  type Measurement,
  type MeasureOptions,
} from './lib/measure.js';
import { buildMilterload, measureWithMilterload } from './lib/milterload.js';
import { median, fmtNum, fmtUs, table } from './lib/stats.js';
import { logStall, logStallTable, type LogStallResult } from './lib/log-stall.js';
import { peakRssKiB, rssKiB, STEAL_WARN_PERCENT } from './lib/proc.js';
import { messageMemory } from './tools/message-memory.js';
import { MTA_NAMES, STAT_NAMES, type MtaName } from './loadgen/script.js';
import { postfixAvailable, postfixEndToEnd } from './e2e/postfix-e2e.js';
import { hostileExtras, type HostileArgs } from './lib/hostile.js';
import type { DriverName } from './loadgen/types.js';
import { FleetBench, fleetSample, fleetTargets, type FleetSample } from './lib/fleet.js';

interface Args {
  quick: boolean;
  candidates: string[];
  connections: number[];
  messages: number[];
  sockets: SocketKind[];
  recipients: number;
  headers: number;
  bodySize: number;
  bigBody: number;
  reps: number;
  warmupMs: number;
  durationMs: number;
  maxMessages: number;
  loadgenThreads: number;
  driver: DriverName;
  /** Whose packet pattern the node generator plays. */
  mta: MtaName;
  generators: GeneratorName[];
  /** Source of the independent generator (built with cc into bench/results/build). */
  milterloadSrc: string;
  timeoutMs: number;
  extras: string[];
  /** Seconds the logstall extra leaves the daemon's stdout unread. */
  stallSeconds: number;
  idleConnections: number;
  install: boolean;
  cpuProf: boolean;
  out: string | undefined;
  matrix: boolean;
  /** Extra node flags for the milterd candidates (e.g. `--max-semi-space-size=4`). */
  nodeFlags: string[];
  e2eCandidates: string[];
  e2eSessions: number;
  e2eMessages: number;
  e2ePerSession: number;
  /** Another build of bench/servers/milterd-server.js (A/B test of a patch), run as candidate `milterd-alt`. */
  altServer: string | undefined;
  /** The bigframes and flood extras (bench/lib/hostile.ts). */
  hostile: Omit<HostileArgs, 'extras'>;
}

const HELP = `usage: npm run bench -- [options]
  --quick                    short run: 1 repetition, 3 s windows, cells 1 and 128 connections x 10 messages
  --candidates a,b,...       milterd, libmilter, go-milter, c-responder (default), and optional
                             milterd-cluster (2 workers), milterd-async (async callbacks), libmilter-nodelay,
                             milterd-pipeline1 / milterd-pipeline3 (the filter in a pipeline of 1 / 3 members),
                             node-responder (milterd's socket layer with pre-built replies: the Node floor),
                             milterd-proxy-libmilter (milterd with the libmilter filter as its upstream member),
                             milterd-policy, milterd-redis, milterd-redis-unix (issue 15: cross-session
                             limits on the memory store, on Redis over TCP, on Redis over its Unix socket;
                             a private redis-server is started for the run)
  --connections 1,16,128,1000   concurrency values        --messages 1,10   messages per connection
  --sockets tcp,unix         transports                   --reps 3          repetitions (medians reported)
  --recipients 2 --headers 10 --body 4096                 message shape (body in bytes)
  --big-body 1048576         extra cell (16 conns x 10 messages) with this body size; 0 = none
  --warmup 2 --duration 10   seconds per measurement       --max-messages 1000000  bound per measurement
  --loadgen-threads 1        load generator worker threads --driver lean|client     load driver
  --mta postfix|sendmail     packet pattern of the node generator (default postfix: Postfix 3.7's)
  --generator node|milterload|both   who generates the load: this project's node generator (default),
                             the independent C milterload (Postfix pattern only), or both (one row each)
  --milterload-src PATH      milterload.c (default ../shared/bench/milterload.c), built with cc
  --timeout 10000            per-reply timeout (ms), a timeout counts as an error
  --extras idle,rss,cluster,bodymem,msgmem,postfix,logstall   extra measurements (default: all with the full run, none with --quick)
  --extras msgmem            peak RSS of a messageFilter server per body size (1, 20, 100 MiB), streamed vs read whole
  --extras logstall          the daemon under load with its stdout not read: EOM and /healthz latency, dropped lines
  --stall-seconds 60         how long stdout is not read (logstall extra)
  --idle-connections 10000   for the idle extra
  --extras postfix           end-to-end: private Postfix fed by smtp-source, discard transport
  --e2e-candidates milterd,c-responder,go-milter  --e2e-sessions 16  --e2e-messages 5000
  --e2e-per-session 1        messages per SMTP session (smtp-source -d when > 1)
  --extras bigframes         RSS of N idle connections after one maximum-size header / macro frame each
  --big-frame-connections 1000  --big-frame-size BYTES (default 65535, the largest frame milterd takes
                             without MDS; above that the peers offer SMFIP_MDS_256K/1M)
  --extras flood             a healthy session's EOM latency while peers pipeline without reading
  --flooders 20 --flood-burst 10000 (header frames per write) --flood-messages 200 --flood-seconds 20
                             (bigframes and flood also run on milterd-alt when --alt-server is given)
  --no-matrix                only the extras
  --alt-server PATH          another build's dist/bench/servers/milterd-server.js, as candidates milterd-alt and
                             milterd-alt-async (A/B), and the fleet cells as milterd-policy-alt, milterd-redis-alt,
                             milterd-redis-unix-alt
  --node-flags "..."         extra node flags for the milterd candidates (e.g. --max-semi-space-size=4)
  --cpu-prof                 run milterd under node --cpu-prof (profiles in bench/results/profiles)
  --no-install               never apt-get install; report what is missing
  --out FILE                 JSON output (default bench/results/bench-<time>.json)`;

function parseArgs(argv: readonly string[]): Args {
  const quick = argv.includes('--quick');
  const a: Args = {
    quick,
    candidates: ['milterd', 'libmilter', 'go-milter', 'c-responder'],
    connections: quick ? [1, 128] : [1, 16, 128, 1000],
    messages: quick ? [10] : [1, 10],
    sockets: ['tcp', 'unix'],
    recipients: 2,
    headers: 10,
    bodySize: 4096,
    bigBody: quick ? 0 : 1024 * 1024,
    reps: quick ? 1 : 3,
    warmupMs: quick ? 1000 : 2000,
    durationMs: quick ? 3000 : 10000,
    maxMessages: 1_000_000,
    loadgenThreads: 1,
    driver: 'lean',
    mta: 'postfix',
    generators: ['node'],
    milterloadSrc: path.resolve('../shared/bench/milterload.c'),
    timeoutMs: 10000,
    extras: quick
      ? []
      : ['idle', 'rss', 'cluster', 'bodymem', 'msgmem', 'postfix', 'logstall', 'bigframes', 'flood'],
    stallSeconds: 60,
    idleConnections: 10000,
    install: true,
    cpuProf: false,
    out: undefined,
    matrix: true,
    nodeFlags: [],
    e2eCandidates: ['milterd', 'c-responder', 'go-milter'],
    e2eSessions: 16,
    e2eMessages: quick ? 1000 : 5000,
    e2ePerSession: 1,
    altServer: undefined,
    hostile: {
      bigFrameConnections: 1000,
      bigFrameSize: undefined,
      flooders: 20,
      floodBurst: 10000,
      floodMessages: 200,
      floodMs: 20000,
    },
  };
  const nums = (s: string): number[] => s.split(',').filter(Boolean).map(Number);
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    switch (k) {
      case '--quick':
        break;
      case '--help':
      case '-h':
        process.stdout.write(HELP + '\n');
        process.exit(0);
        break;
      case '--candidates':
        a.candidates = v().split(',').filter(Boolean);
        break;
      case '--connections':
        a.connections = nums(v());
        break;
      case '--messages':
        a.messages = nums(v());
        break;
      case '--sockets':
        a.sockets = v()
          .split(',')
          .filter((s): s is SocketKind => s === 'tcp' || s === 'unix');
        break;
      case '--recipients':
        a.recipients = Number(v());
        break;
      case '--headers':
        a.headers = Number(v());
        break;
      case '--body':
        a.bodySize = Number(v());
        break;
      case '--big-body':
        a.bigBody = Number(v());
        break;
      case '--reps':
        a.reps = Number(v());
        break;
      case '--warmup':
        a.warmupMs = Number(v()) * 1000;
        break;
      case '--duration':
        a.durationMs = Number(v()) * 1000;
        break;
      case '--max-messages':
        a.maxMessages = Number(v());
        break;
      case '--loadgen-threads':
        a.loadgenThreads = Number(v());
        break;
      case '--driver':
        a.driver = v() === 'client' ? 'client' : 'lean';
        break;
      case '--mta': {
        const m = v();
        if (!MTA_NAMES.includes(m as MtaName)) throw new Error(`--mta: one of ${MTA_NAMES.join(', ')}`);
        a.mta = m as MtaName;
        break;
      }
      case '--generator': {
        const g = v();
        if (g === 'both') a.generators = ['node', 'milterload'];
        else if (g === 'node' || g === 'milterload') a.generators = [g];
        else throw new Error('--generator: node, milterload or both');
        break;
      }
      case '--milterload-src':
        a.milterloadSrc = path.resolve(v());
        break;
      case '--timeout':
        a.timeoutMs = Number(v());
        break;
      case '--extras':
        a.extras = v().split(',').filter(Boolean);
        break;
      case '--stall-seconds':
        a.stallSeconds = Number(v());
        break;
      case '--idle-connections':
        a.idleConnections = Number(v());
        break;
      case '--node-flags':
        a.nodeFlags = v().split(' ').filter(Boolean);
        break;
      case '--e2e-candidates':
        a.e2eCandidates = v().split(',').filter(Boolean);
        break;
      case '--e2e-sessions':
        a.e2eSessions = Number(v());
        break;
      case '--e2e-messages':
        a.e2eMessages = Number(v());
        break;
      case '--e2e-per-session':
        a.e2ePerSession = Number(v());
        break;
      case '--alt-server':
        a.altServer = path.resolve(v());
        break;
      case '--big-frame-connections':
        a.hostile.bigFrameConnections = Number(v());
        break;
      case '--big-frame-size':
        a.hostile.bigFrameSize = Number(v());
        break;
      case '--flooders':
        a.hostile.flooders = Number(v());
        break;
      case '--flood-burst':
        a.hostile.floodBurst = Number(v());
        break;
      case '--flood-messages':
        a.hostile.floodMessages = Number(v());
        break;
      case '--flood-seconds':
        a.hostile.floodMs = Number(v()) * 1000;
        break;
      case '--no-matrix':
        a.matrix = false;
        break;
      case '--cpu-prof':
        a.cpuProf = true;
        break;
      case '--no-install':
        a.install = false;
        break;
      case '--out':
        a.out = v();
        break;
      default:
        throw new Error(`unknown option ${String(k)} (see --help)`);
    }
  }
  if (a.mta !== 'postfix' && a.generators.includes('milterload')) {
    throw new Error('--generator milterload plays the Postfix pattern only: use --mta postfix');
  }
  return a;
}

const MILTERD_SERVER = path.resolve('dist/bench/servers/milterd-server.js');
const NODE_RESPONDER = path.resolve('dist/bench/servers/node-responder.js');
const PROXY_SERVER = path.resolve('dist/bench/servers/milterd-proxy-server.js');
const RESULTS = path.resolve('bench/results');

function candidateDefs(native: NativeBuild, args: Args, fleet: FleetBench): Map<string, CandidateDef> {
  const defs = new Map<string, CandidateDef>();
  const node =
    (extra: string[], server = MILTERD_SERVER): CandidateDef['command'] =>
    (spec) => ({
      cmd: process.execPath,
      args: [
        ...args.nodeFlags,
        ...(args.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${path.join(RESULTS, 'profiles')}`] : []),
        server,
        '--listen',
        spec,
        ...extra,
      ],
    });
  defs.set('milterd', {
    name: 'milterd',
    description: 'milterd, one process, sync callbacks',
    command: node([]),
  });
  defs.set('milterd-backlog', {
    name: 'milterd-backlog',
    description: 'milterd, one process, listen backlog 4096 (net.Server made by the bench)',
    command: node(['--backlog', '4096']),
  });
  if (args.altServer !== undefined) {
    defs.set('milterd-alt', {
      name: 'milterd-alt',
      description: `milterd from ${args.altServer}`,
      command: node([], args.altServer),
    });
    defs.set('milterd-alt-async', {
      name: 'milterd-alt-async',
      description: `milterd from ${args.altServer}, async callbacks`,
      command: node(['--async'], args.altServer),
    });
  }
  defs.set('milterd-async', {
    name: 'milterd-async',
    description: 'milterd, one process, async callbacks',
    command: node(['--async']),
  });
  defs.set('milterd-pipeline1', {
    name: 'milterd-pipeline1',
    description: 'milterd, the bench filter as the one member of an in-process pipeline()',
    command: node(['--pipeline', '1']),
  });
  defs.set('milterd-pipeline3', {
    name: 'milterd-pipeline3',
    description: 'milterd, in-process pipeline() of three members: two pass-through, then the bench filter',
    command: node(['--pipeline', '3']),
  });
  defs.set('node-responder', {
    name: 'node-responder',
    description:
      "Node on milterd's socket layer with pre-built replies (the Node floor: no decoding, no session)",
    command: node([], NODE_RESPONDER),
  });
  defs.set('milterd-cluster', {
    name: 'milterd-cluster',
    description: 'milterd, Node cluster: 2 workers sharing the listening socket (SCHED_NONE)',
    command: node(['--cluster', '2']),
  });
  for (const def of fleet.defs((extra) => node(extra))) defs.set(def.name, def);
  if (args.altServer !== undefined) {
    // The fleet cells on the other build too (A/B of the policy store's cost): NAME-alt.
    const alt = args.altServer;
    for (const def of fleet.defs((extra) => node(extra, alt))) {
      const name = `${def.name}-alt`;
      defs.set(name, { ...def, name, description: `${def.description}, from ${alt}` });
    }
  }
  const lm = native.binaries.libmilter;
  if (lm !== undefined) {
    defs.set('milterd-proxy-libmilter', {
      name: 'milterd-proxy-libmilter',
      description:
        'milterd proxying to the libmilter filter (a pipeline of one upstreamFilter, Unix socket); CPU and RSS of both',
      command: node(['--upstream', lm], PROXY_SERVER),
    });
    defs.set('libmilter', {
      name: 'libmilter',
      description: 'Sendmail libmilter 8.17 (Debian libmilter-dev), C, thread per connection',
      command: (spec) => ({ cmd: lm, args: [spec] }),
    });
    const preload = native.preload;
    if (preload !== undefined) {
      defs.set('libmilter-nodelay', {
        name: 'libmilter-nodelay',
        description: 'libmilter with TCP_NODELAY forced on accepted sockets (LD_PRELOAD shim)',
        command: (spec) => ({ cmd: lm, args: [spec], env: { LD_PRELOAD: preload } }),
      });
    }
  }
  const gm = native.binaries['go-milter'];
  if (gm !== undefined) {
    defs.set('go-milter', {
      name: 'go-milter',
      description: 'emersion/go-milter 0.3.3 (Debian), Go 1.19, goroutine per connection',
      command: (spec) => ({ cmd: gm, args: [spec] }),
    });
  }
  const cr = native.binaries['c-responder'];
  if (cr !== undefined) {
    defs.set('c-responder', {
      name: 'c-responder',
      description: 'minimal C epoll responder with pre-built replies (ceiling of this load generator)',
      command: (spec) => ({ cmd: cr, args: [spec] }),
    });
  }
  return defs;
}

let patternName = 'Postfix pattern';

function cellName(c: Cell): string {
  const body = c.bodySize >= 1024 * 1024 ? `${c.bodySize / 1024 / 1024} MiB` : `${c.bodySize / 1024} KiB`;
  return `${c.connections} conn × ${c.messagesPerConnection} msg, ${body}, ${c.socket}, ${patternName}`;
}

interface Summary {
  candidate: string;
  generator: GeneratorName;
  cell: Cell;
  reps: number;
  messagesPerSecond: number;
  eomP50: number;
  eomP99: number;
  eomP999: number;
  cpuUsPerMessage: number;
  peakRssMiB: number;
  errors: number;
  /** The most CPU time the hypervisor stole in one of its repetitions, percent (proc.ts stealPercent). */
  stealPercent: number;
  /** Fleet cells: the store calls of every repetition, summed (the targets check each sample's). */
  storeCalls?: StoreCalls;
  /** Median p50/p99 per command, ns. */
  commands: Record<string, { p50: number; p99: number }>;
  /** Each repetition's msg/s, EOM p99 and steal (the fleet targets pair them). */
  samples: FleetSample[];
}

function summarize(ms: readonly Measurement[]): Summary {
  const first = ms[0]!;
  const commands: Summary['commands'] = {};
  for (const name of STAT_NAMES) {
    commands[name] = {
      p50: median(ms.map((m) => m.latency[name]?.p50 ?? Number.NaN)),
      p99: median(ms.map((m) => m.latency[name]?.p99 ?? Number.NaN)),
    };
  }
  return {
    candidate: first.candidate,
    generator: first.generator,
    cell: first.cell,
    reps: ms.length,
    messagesPerSecond: median(ms.map((m) => m.messagesPerSecond)),
    eomP50: median(ms.map((m) => m.latency.eom?.p50 ?? Number.NaN)),
    eomP99: median(ms.map((m) => m.latency.eom?.p99 ?? Number.NaN)),
    eomP999: median(ms.map((m) => m.latency.eom?.p999 ?? Number.NaN)),
    cpuUsPerMessage: median(ms.map((m) => m.cpuUsPerMessage)),
    peakRssMiB: median(ms.map((m) => m.peakRssMiB)),
    errors: ms.reduce((a, m) => a + m.errors, 0),
    stealPercent: Math.max(...ms.map((m) => m.stealPercent)),
    ...storeCallsOf(ms),
    commands,
    samples: ms.map((m) => fleetSample(m)),
  };
}

function storeCallsOf(ms: readonly Measurement[]): { storeCalls?: StoreCalls } {
  const all = ms.flatMap((m) => (m.storeCalls === undefined ? [] : [m.storeCalls]));
  if (all.length === 0) return {};
  return {
    storeCalls: {
      total: all.reduce((a, c) => a + c.total, 0),
      failed: all.reduce((a, c) => a + c.failed, 0),
    },
  };
}

function cellTable(cell: Cell, sums: readonly Summary[]): string {
  const rows = sums.map((s) => [
    s.candidate,
    s.generator,
    fmtNum(s.messagesPerSecond),
    fmtUs(s.eomP50),
    fmtUs(s.eomP99),
    fmtUs(s.eomP999),
    fmtNum(s.cpuUsPerMessage, 0),
    fmtNum(s.peakRssMiB, 1),
    String(s.errors),
    fmtNum(s.stealPercent, 1),
  ]);
  return (
    `### ${cellName(cell)}\n\n` +
    table(
      [
        'candidate',
        'generator',
        'msg/s',
        'EOM p50',
        'EOM p99',
        'EOM p99.9',
        'CPU µs/msg',
        'peak RSS MiB',
        'errors',
        'steal % (max)',
      ],
      rows,
    )
  );
}

function commandTable(cell: Cell, sums: readonly Summary[]): string {
  const rows = sums.map((s) => [
    s.candidate,
    s.generator,
    ...STAT_NAMES.map(
      (n) => `${fmtUs(s.commands[n]?.p50 ?? Number.NaN)} / ${fmtUs(s.commands[n]?.p99 ?? Number.NaN)}`,
    ),
  ]);
  return (
    `Per-command latency p50 / p99, ${cellName(cell)}:\n\n` +
    table(['candidate', 'generator', ...STAT_NAMES], rows)
  );
}

interface TargetCheck {
  target: string;
  value: string;
  ok: boolean | undefined;
}

function targets(sums: readonly Summary[], args: Args, extras: Record<string, unknown>): TargetCheck[] {
  const out: TargetCheck[] = [...fleetTargets(sums)];
  const find = (cand: string, conns: number, msgs: number, socket: SocketKind): Summary | undefined =>
    sums.find(
      (s) =>
        s.candidate === cand &&
        s.cell.connections === conns &&
        s.cell.messagesPerConnection === msgs &&
        s.cell.socket === socket &&
        s.cell.bodySize === args.bodySize,
    );
  for (const socket of ['tcp', 'unix'] as const) {
    const m = find('milterd', 128, 10, socket);
    const lm = find('libmilter', 128, 10, socket);
    const gm = find('go-milter', 128, 10, socket);
    if (m && lm) {
      const r = m.messagesPerSecond / lm.messagesPerSecond;
      out.push({
        target: `128×10 ${socket}: milterd ≥ 2.0× libmilter msg/s`,
        value: `${r.toFixed(2)}×`,
        ok: r >= 2,
      });
    }
    if (m && gm) {
      const r = m.messagesPerSecond / gm.messagesPerSecond;
      out.push({
        target: `128×10 ${socket}: milterd ≥ 1.5× go-milter msg/s`,
        value: `${r.toFixed(2)}×`,
        ok: r >= 1.5,
      });
      out.push({
        target: `128 conns ${socket}: EOM p99 ≤ go-milter's`,
        value: `${fmtUs(m.eomP99)} vs ${fmtUs(gm.eomP99)}`,
        ok: m.eomP99 <= gm.eomP99,
      });
    }
    const one = find('milterd', 1, 10, socket) ?? find('milterd', 1, 1, socket);
    if (one) {
      out.push({
        target: `1 conn ${socket}: EOM p99 < 200 µs`,
        value: fmtUs(one.eomP99),
        ok: one.eomP99 < 200_000,
      });
    }
    if (m) {
      out.push({
        target: `128×10 ${socket}: server CPU/message ≤ 150 µs`,
        value: `${fmtNum(m.cpuUsPerMessage)} µs`,
        ok: m.cpuUsPerMessage <= 150,
      });
    }
  }
  const rss1000 = sums.filter((s) => s.candidate === 'milterd' && s.cell.connections === 1000);
  const idle = extras.rss1000 as { peakRssMiB: number } | undefined;
  if (idle) {
    out.push({
      target: 'peak RSS, 1000 idle connections ≤ 100 MiB',
      value: `${fmtNum(idle.peakRssMiB, 1)} MiB`,
      ok: idle.peakRssMiB <= 100,
    });
  }
  if (rss1000.length > 0) {
    const worst = Math.max(...rss1000.map((s) => s.peakRssMiB));
    out.push({
      target: 'peak RSS, 1000 busy connections ≤ 100 MiB',
      value: `${fmtNum(worst, 1)} MiB`,
      ok: worst <= 100,
    });
  }
  const idle10k = extras.idle as { held: number; requested: number; errors: number } | undefined;
  if (idle10k) {
    out.push({
      target: `${idle10k.requested} idle connections held without errors`,
      value: `${idle10k.held} held, ${idle10k.errors} errors`,
      ok: idle10k.held === idle10k.requested && idle10k.errors === 0,
    });
  }
  const stall = extras.logstall as LogStallResult | undefined;
  if (stall) {
    out.push({
      target: 'stdout stalled: no milter error, every /healthz answered, lines dropped and logging resumed',
      value: `${stall.stalled.errors} errors, ${stall.stalled.healthzFailures} failed probes, ${stall.droppedLines} dropped`,
      ok:
        stall.stalled.errors === 0 &&
        stall.stalled.healthzFailures === 0 &&
        stall.droppedLines > 0 &&
        stall.resumed,
    });
  }
  return out;
}

function machine(): Record<string, string | number> {
  const cpus = os.cpus();
  return {
    host: os.hostname(),
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    loadavg: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
  };
}

// ---------------------------------------------------------------- extras

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Hold N negotiated, idle connections (OPTNEG + CONNECT + HELO) on milterd; report held, errors, RSS. */
async function idleConnections(
  def: CandidateDef,
  n: number,
  socket: SocketKind,
  args: Args,
  logFile: string,
  log: (s: string) => void,
): Promise<{
  requested: number;
  held: number;
  errors: number;
  peakRssMiB: number;
  rssMiB: number;
  kibPerConnection: number;
  seconds: number;
}> {
  const server = await startServer(def, socket, logFile, fdHard());
  const base = rssKiB(server.pid);
  const t0 = performance.now();
  const load = startLoad(
    {
      spec: server.spec,
      connections: n,
      messagesPerConnection: 0,
      recipients: 0,
      headers: 0,
      bodySize: 0,
      maxMessages: 0,
      timeoutMs: 30000,
      driver: 'lean',
      mta: args.mta,
      idle: true,
      rampMs: Math.min(10000, n),
    },
    Math.min(2, Math.max(1, args.loadgenThreads)),
  );
  try {
    const deadline = performance.now() + 60000;
    while (load.held() < n && performance.now() < deadline) await sleep(200);
    const seconds = (performance.now() - t0) / 1000;
    await sleep(2000); // hold them a little
    const held = load.held();
    const rss = rssKiB(server.pid);
    const peak = peakRssKiB(server.pid);
    const stats = await load.stop();
    const c = combine(stats);
    const errors = c.errors + c.warmupErrors;
    if (c.errorSamples.length > 0) log(`  idle errors: ${c.errorSamples.slice(0, 3).join('; ')}`);
    return {
      requested: n,
      held,
      errors,
      peakRssMiB: peak / 1024,
      rssMiB: rss / 1024,
      kibPerConnection: (rss - base) / Math.max(1, held),
      seconds,
    };
  } finally {
    await server.stop();
  }
}

function fdHard(): number {
  const r = spawnSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) && n > 0 ? n : 4096;
}

function fdSoft(): number {
  const r = spawnSync('bash', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) && n > 0 ? n : 1024;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  patternName = args.mta === 'sendmail' ? 'Sendmail pattern' : 'Postfix pattern';
  // The load generator threads live in this process: with many connections they need more fds than the
  // usual soft limit. Raise it for the bench only, by re-running ourselves under `ulimit -n HARD`.
  const needFds =
    Math.max(
      ...args.connections,
      args.extras.includes('idle') ? args.idleConnections : 0,
      args.extras.includes('bigframes') ? args.hostile.bigFrameConnections : 0,
    ) + 256;
  if (fdSoft() < needFds && process.env.MILTERD_BENCH_ULIMIT !== '1') {
    const hard = fdHard();
    const r = spawnSync(
      'bash',
      [
        '-c',
        `ulimit -n ${hard} && exec "$0" "$@"`,
        process.execPath,
        ...process.execArgv,
        process.argv[1]!,
        ...process.argv.slice(2),
      ],
      {
        stdio: 'inherit',
        env: { ...process.env, MILTERD_BENCH_ULIMIT: '1' },
      },
    );
    process.exit(r.status ?? 1);
  }
  mkdirSync(RESULTS, { recursive: true });
  const fleet = await FleetBench.start(args.candidates, RESULTS);
  try {
    await measureAll(args, fleet);
  } finally {
    await fleet.stop();
  }
}

async function measureAll(args: Args, fleet: FleetBench): Promise<void> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const logFile = path.join(RESULTS, `servers-${stamp}.log`);
  const log = (s: string): void => {
    process.stderr.write(s + '\n');
  };
  const native = setupNative({ install: args.install, log });
  for (const m of native.missing) log(`setup: unavailable: ${m}`);
  const defs = candidateDefs(native, args, fleet);
  const candidates = args.candidates.filter((c) => {
    if (defs.has(c)) return true;
    log(`candidate ${c} is not available, skipped`);
    return false;
  });
  let milterload: string | undefined;
  if (args.generators.includes('milterload')) {
    const built = buildMilterload(args.milterloadSrc, path.join(RESULTS, 'build'), log);
    if ('binary' in built) milterload = built.binary;
    else log(`setup: unavailable: ${built.missing}; rows of generator milterload skipped`);
  }
  const generators = args.generators.filter((g) => g === 'node' || milterload !== undefined);
  const opts: MeasureOptions = {
    warmupMs: args.warmupMs,
    durationMs: args.durationMs,
    maxMessages: args.maxMessages,
    loadgenThreads: args.loadgenThreads,
    driver: args.driver,
    mta: args.mta,
    timeoutMs: args.timeoutMs,
    logFile,
    fdLimit: fdHard(),
  };
  const cells: Cell[] = [];
  if (args.matrix) {
    for (const socket of args.sockets) {
      for (const connections of args.connections) {
        for (const messagesPerConnection of args.messages) {
          cells.push({
            connections,
            messagesPerConnection,
            recipients: args.recipients,
            headers: args.headers,
            bodySize: args.bodySize,
            socket,
          });
        }
      }
      if (args.bigBody > 0) {
        cells.push({
          connections: 16,
          messagesPerConnection: 10,
          recipients: args.recipients,
          headers: args.headers,
          bodySize: args.bigBody,
          socket,
        });
      }
    }
  }
  const info = machine();
  log(`machine: ${JSON.stringify(info)}`);
  log(
    `plan: ${cells.length} cells × ${candidates.length} candidates × ${args.reps} reps, ` +
      `${args.warmupMs / 1000}+${args.durationMs / 1000} s each, ${args.mta} packet pattern, ` +
      `generator(s) ${generators.join(', ')}, driver ${args.driver}, ${args.loadgenThreads} load thread(s)`,
  );
  const measurements: Measurement[] = [];
  const summaries: Summary[] = [];
  const blocks: string[] = [];
  for (const cell of cells) {
    const mine: Measurement[] = [];
    for (let rep = 0; rep < args.reps; rep++) {
      // Alternate: rotate the starting candidate each repetition.
      const order = candidates.map((_, i) => candidates[(i + rep) % candidates.length]!);
      for (const [name, generator] of order.flatMap((n) => generators.map((g) => [n, g] as const))) {
        const def = defs.get(name)!;
        try {
          const m =
            generator === 'milterload'
              ? await measureWithMilterload(milterload!, def, cell, rep + 1, opts)
              : await measure(def, cell, rep + 1, opts);
          mine.push(m);
          measurements.push(m);
          log(
            `  ${cellName(cell)} rep ${rep + 1} ${name} (${generator}): ${fmtNum(m.messagesPerSecond)} msg/s, EOM p99 ${fmtUs(m.latency.eom?.p99 ?? Number.NaN)}, ` +
              `CPU ${fmtNum(m.cpuUsPerMessage)} µs/msg, RSS ${fmtNum(m.peakRssMiB, 1)} MiB, errors ${m.errors}, ` +
              `steal ${fmtNum(m.stealPercent, 1)} %` +
              (m.stealPercent > STEAL_WARN_PERCENT ? ' (the hypervisor took CPU: not comparable)' : '') +
              (m.connectRetries > 0 ? `, ${m.connectRetries} connect retries (backlog full)` : '') +
              (m.errorSamples.length > 0 ? ` (${m.errorSamples[0]})` : ''),
          );
        } catch (err) {
          log(
            `  ${cellName(cell)} rep ${rep + 1} ${name} (${generator}): FAILED ${err instanceof Error ? err.message : String(err)}`,
          );
        }
      }
    }
    const sums = candidates
      .flatMap((c) => generators.map((g) => mine.filter((m) => m.candidate === c && m.generator === g)))
      .filter((ms) => ms.length > 0)
      .map(summarize);
    summaries.push(...sums);
    const block = cellTable(cell, sums);
    blocks.push(block);
    process.stdout.write('\n' + block + '\n');
  }

  // ---- extras
  const extras: Record<string, unknown> = {};
  const hostileTargets: TargetCheck[] = [];
  const milterd = defs.get('milterd')!;
  if (args.extras.includes('rss')) {
    log('extra: peak RSS with 1000 open (idle) connections on milterd');
    try {
      extras.rss1000 = await idleConnections(milterd, 1000, 'tcp', args, logFile, log);
      log(`  ${JSON.stringify(extras.rss1000)}`);
    } catch (err) {
      log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (args.extras.includes('idle')) {
    log(`extra: ${args.idleConnections} concurrent idle connections on milterd`);
    try {
      extras.idle = await idleConnections(milterd, args.idleConnections, 'tcp', args, logFile, log);
      log(`  ${JSON.stringify(extras.idle)}`);
    } catch (err) {
      log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (args.extras.includes('cluster')) {
    log('extra: cluster mode (2 workers) vs one process, 128 conns × 10 msgs');
    const rows: Summary[] = [];
    for (const socket of args.sockets) {
      const cell: Cell = {
        connections: 128,
        messagesPerConnection: 10,
        recipients: args.recipients,
        headers: args.headers,
        bodySize: args.bodySize,
        socket,
      };
      const per: Measurement[] = [];
      for (let rep = 0; rep < args.reps; rep++) {
        for (const name of rep % 2 === 0 ? ['milterd', 'milterd-cluster'] : ['milterd-cluster', 'milterd']) {
          try {
            per.push(await measure(defs.get(name)!, cell, rep + 1, opts));
          } catch (err) {
            log(`  ${name} ${socket}: FAILED ${err instanceof Error ? err.message : String(err)}`);
          }
        }
      }
      for (const name of ['milterd', 'milterd-cluster']) {
        const ms = per.filter((m) => m.candidate === name);
        if (ms.length > 0) rows.push(summarize(ms));
      }
    }
    extras.cluster = rows;
    const block =
      '### cluster mode (milterd-cluster = 2 workers), 128 conn × 10 msg\n\n' +
      table(
        ['candidate', 'socket', 'msg/s', 'EOM p99', 'CPU µs/msg', 'peak RSS MiB'],
        rows.map((s) => [
          s.candidate,
          s.cell.socket,
          fmtNum(s.messagesPerSecond),
          fmtUs(s.eomP99),
          fmtNum(s.cpuUsPerMessage),
          fmtNum(s.peakRssMiB, 1),
        ]),
      );
    blocks.push(block);
    process.stdout.write('\n' + block + '\n');
  }
  if (args.extras.includes('bodymem')) {
    log('extra: body streaming memory (milterd, 4 conns × 10 msgs, growing body)');
    const rows: { bodySize: number; peakRssMiB: number; messagesPerSecond: number; errors: number }[] = [];
    for (const bodySize of [64 * 1024, 1024 * 1024, 8 * 1024 * 1024]) {
      const cell: Cell = {
        connections: 4,
        messagesPerConnection: 10,
        recipients: args.recipients,
        headers: args.headers,
        bodySize,
        socket: 'unix',
      };
      try {
        const m = await measure(milterd, cell, 1, { ...opts, durationMs: Math.min(opts.durationMs, 5000) });
        rows.push({
          bodySize,
          peakRssMiB: m.peakRssMiB,
          messagesPerSecond: m.messagesPerSecond,
          errors: m.errors,
        });
      } catch (err) {
        log(`  body ${bodySize}: FAILED ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    extras.bodymem = rows;
    const block =
      '### body streaming memory (milterd, 4 conn × 10 msg, unix)\n\n' +
      table(
        ['body', 'peak RSS MiB', 'msg/s', 'MiB/s', 'errors'],
        rows.map((r) => [
          `${r.bodySize / 1024} KiB`,
          fmtNum(r.peakRssMiB, 1),
          fmtNum(r.messagesPerSecond, 1),
          fmtNum((r.messagesPerSecond * r.bodySize) / 2 ** 20, 1),
          String(r.errors),
        ]),
      );
    blocks.push(block);
    process.stdout.write('\n' + block + '\n');
  }
  if (args.extras.includes('msgmem')) {
    log('extra: whole-message API memory (one message per body size, fresh server each)');
    try {
      const rows = await messageMemory([1, 20, 100], ['stream', 'buffer']);
      extras.msgmem = rows;
      const block =
        '### whole-message API memory (messageFilter: Subject + upper-cased body; peak RSS per server)\n\n' +
        table(
          ['filter', 'body MiB', 'peak RSS MiB', 'replaced MiB'],
          rows.map((r) => [r.mode, String(r.bodyMiB), fmtNum(r.peakRssMiB, 1), fmtNum(r.replacedMiB, 1)]),
        );
      blocks.push(block);
      process.stdout.write('\n' + block + '\n');
    } catch (err) {
      log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (args.extras.includes('postfix')) {
    const missing = await postfixAvailable();
    if (missing !== undefined) log(`extra postfix: skipped, ${missing}`);
    else {
      log(`extra: Postfix end to end (${args.e2eSessions} sessions, ${args.e2eMessages} messages per run)`);
      try {
        const rows = await postfixEndToEnd(
          args.e2eCandidates.map((c) => defs.get(c)).filter((d): d is CandidateDef => d !== undefined),
          {
            sessions: args.e2eSessions,
            messages: args.e2eMessages,
            bodySize: args.bodySize,
            perSession: args.e2ePerSession,
            reps: args.reps,
            logFile,
            fdLimit: fdHard(),
            log,
            keepLogAs: path.join(RESULTS, `postfix-maillog-${stamp}.log`),
          },
        );
        extras.postfix = rows;
        const base = rows.find((r) => r.variant === 'c-responder')?.messagesPerSecond;
        const block =
          `### Postfix end to end (smtp-source, ${args.e2eSessions} sessions, ${args.e2ePerSession} msg/session, ${args.bodySize / 1024} KiB, discard transport, TCP milter)\n\n` +
          table(
            ['milter', 'msg/s', 'vs C responder', 'milter CPU µs/msg', 'errors'],
            rows.map((r) => [
              r.variant,
              fmtNum(r.messagesPerSecond),
              base === undefined ? '-' : `${((100 * r.messagesPerSecond) / base).toFixed(0)} %`,
              r.milterCpuUsPerMessage === undefined ? '-' : fmtNum(r.milterCpuUsPerMessage),
              String(r.errors),
            ]),
          );
        blocks.push(block);
        process.stdout.write('\n' + block + '\n');
      } catch (err) {
        log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }
  if (args.extras.includes('logstall')) {
    log(`extra: milterd serve under load with its stdout not read for ${args.stallSeconds} s`);
    try {
      const r = await logStall({
        stallSeconds: args.stallSeconds,
        baselineSeconds: 10,
        connections: 16,
        logFile,
        fdLimit: fdHard(),
        log,
      });
      extras.logstall = { stallSeconds: args.stallSeconds, ...r };
      const block = logStallTable(r, args.stallSeconds);
      blocks.push(block);
      process.stdout.write('\n' + block + '\n');
    } catch (err) {
      log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (args.extras.includes('bigframes') || args.extras.includes('flood')) {
    const hostile = await hostileExtras(
      ['milterd', 'milterd-alt'].map((n) => defs.get(n)).filter((d): d is CandidateDef => d !== undefined),
      { extras: args.extras, ...args.hostile },
      logFile,
      fdHard(),
      log,
    );
    Object.assign(extras, hostile.extras);
    hostileTargets.push(...hostile.targets);
    for (const block of hostile.blocks) {
      blocks.push(block);
      process.stdout.write('\n' + block + '\n');
    }
  }
  if (extras.rss1000 !== undefined || extras.idle !== undefined) {
    const rowsIdle = (['rss1000', 'idle'] as const)
      .map(
        (k) =>
          extras[k] as
            | {
                requested: number;
                held: number;
                errors: number;
                peakRssMiB: number;
                kibPerConnection: number;
                seconds: number;
              }
            | undefined,
      )
      .filter((x): x is NonNullable<typeof x> => x !== undefined)
      .map((x) => [
        String(x.requested),
        String(x.held),
        String(x.errors),
        fmtNum(x.peakRssMiB, 1),
        fmtNum(x.kibPerConnection, 1),
        fmtNum(x.seconds, 1),
      ]);
    const block =
      '### idle connections on milterd (negotiated, CONNECT + HELO done, held open), tcp\n\n' +
      table(['connections', 'held', 'errors', 'peak RSS MiB', 'KiB/conn', 'ramp s'], rowsIdle);
    blocks.push(block);
    process.stdout.write('\n' + block + '\n');
  }

  // ---- per-command table for the headline cell, targets
  const headline = summaries.filter(
    (s) =>
      s.cell.connections === 128 && s.cell.messagesPerConnection === 10 && s.cell.bodySize === args.bodySize,
  );
  for (const socket of args.sockets) {
    const sums = headline.filter((s) => s.cell.socket === socket);
    if (sums.length > 0) {
      const block = commandTable(sums[0]!.cell, sums);
      blocks.push(block);
      process.stdout.write('\n' + block + '\n');
    }
  }
  // Targets per generator: each one's rows against each other, never a ratio across generators.
  const checks = [
    ...generators.flatMap((g) =>
      targets(
        summaries.filter((s) => s.generator === g),
        args,
        g === 'node' ? extras : {},
      ).map((c) => ({ ...c, generator: g })),
    ),
    ...hostileTargets.map((c) => ({ ...c, generator: 'node' })),
  ];
  if (checks.length > 0) {
    const block =
      `### targets (${args.mta} packet pattern)\n\n` +
      table(
        ['target', 'generator', 'measured', 'met'],
        checks.map((c) => [c.target, c.generator, c.value, c.ok === undefined ? '-' : c.ok ? 'yes' : 'NO']),
      );
    blocks.push(block);
    process.stdout.write('\n' + block + '\n');
  }
  const out = args.out ?? path.join(RESULTS, `bench-${stamp}.json`);
  const json = {
    date: new Date().toISOString(),
    machine: info,
    args,
    candidates: candidates.map((c) => ({ name: c, description: defs.get(c)!.description })),
    summaries,
    measurements,
    extras,
    targets: checks,
    markdown: blocks.join('\n\n'),
  };
  writeFileSync(
    out,
    JSON.stringify(json, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2),
  );
  writeFileSync(
    path.join(RESULTS, 'latest.md'),
    `machine: ${JSON.stringify(info)}\n\n` + blocks.join('\n\n') + '\n',
  );
  log(
    `\nJSON: ${path.relative(process.cwd(), out)}; Markdown: bench/results/latest.md; server logs: ${path.relative(process.cwd(), logFile)}`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
