/**
 * The end-to-end variant: a private Postfix 3.7 (its own config, queue and data folders, inside the e2e
 * harness's mount+UTS namespace so it never asks an outside DNS server anything), fed by Postfix's own
 * `smtp-source`, delivering everything to the `discard` transport. One smtpd service per variant on its
 * own loopback port, each with `-o smtpd_milters=…`: no milter, milterd, the C responder (and whatever
 * else is asked for). Throughput is messages accepted per second over SMTP, measured by smtp-source's
 * wall time; the queue is drained between runs.
 *
 * Imports the e2e harness (test/e2e/harness) read-only: MtaNamespace and process helpers.
 */
import { chmod, chown, copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { MtaNamespace } from '../../test/e2e/harness/namespace.js';
import { freePort, makeWorkDir, stopPid, isAlive } from '../../test/e2e/harness/proc.js';
import { startServer, type CandidateDef, type RunningServer } from '../lib/candidates.js';
import { median } from '../lib/stats.js';
import { treeCpuTicks, ticksPerSecond } from '../lib/proc.js';

const POSTFIX = '/usr/sbin/postfix';
const SMTP_SOURCE = '/usr/sbin/smtp-source';

export interface E2eOptions {
  sessions: number;
  messages: number;
  bodySize: number;
  /** Messages per SMTP session (smtp-source -d keeps the session open when > 1). */
  perSession: number;
  reps: number;
  logFile: string;
  fdLimit: number;
  log: (s: string) => void;
  /** Where to keep a copy of Postfix's maillog. */
  keepLogAs: string;
}

export interface E2eRow {
  variant: string;
  reps: number;
  messagesPerSecond: number;
  /** Milter server CPU per message, µs (undefined for "none"). */
  milterCpuUsPerMessage: number | undefined;
  errors: number;
  runs: number[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function countFiles(dir: string): Promise<number> {
  let n = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    if (e.isDirectory()) n += await countFiles(path.join(dir, e.name));
    else n++;
  }
  return n;
}

export async function postfixAvailable(): Promise<string | undefined> {
  for (const f of [POSTFIX, SMTP_SOURCE, '/usr/bin/nsenter', '/usr/bin/script']) {
    try {
      await readFile(f);
    } catch {
      return `${f} not found (Debian packages postfix, util-linux, bsdutils)`;
    }
  }
  return undefined;
}

export async function postfixEndToEnd(variants: readonly CandidateDef[], o: E2eOptions): Promise<E2eRow[]> {
  const dir = await makeWorkDir('milterd-bench-postfix-');
  const servers: RunningServer[] = [];
  let ns: MtaNamespace | undefined;
  const confDir = path.join(dir, 'conf');
  const queueDir = path.join(dir, 'queue');
  const dataDir = path.join(dir, 'data');
  const maillog = path.join(dir, 'maillog');
  try {
    for (const v of variants) servers.push(await startServer(v, 'tcp', o.logFile, o.fdLimit));
    await mkdir(confDir, { recursive: true });
    await mkdir(queueDir, { recursive: true });
    await mkdir(dataDir, { recursive: true });
    await chmod(dir, 0o755);
    const postfixUid = Number(execFileSync('id', ['-u', 'postfix'], { encoding: 'utf8' }).trim());
    await chown(dataDir, postfixUid, 0);
    const ports = new Map<string, number>();
    ports.set('none', await freePort(false));
    for (const s of servers) ports.set(s.name, await freePort(false));
    const main = [
      'compatibility_level = 3.6',
      `config_directory = ${confDir}`,
      `queue_directory = ${queueDir}`,
      `data_directory = ${dataDir}`,
      'myhostname = mta.test',
      'mydomain = test',
      'mydestination =',
      'local_recipient_maps =',
      'mynetworks = 127.0.0.0/8',
      'inet_interfaces = loopback-only',
      'inet_protocols = ipv4',
      'default_transport = discard',
      'relay_transport = discard',
      'smtpd_relay_restrictions = permit_mynetworks, reject',
      'smtpd_peername_lookup = no',
      'smtp_dns_support_level = disabled',
      'smtpd_client_event_limit_exceptions = 127.0.0.0/8',
      // No flow-control pauses: measure what smtpd + milter can accept, not qmgr's pacing.
      'in_flow_delay = 0',
      `maillog_file = ${maillog}`,
      `maillog_file_prefixes = ${dir}`,
      'alias_maps =',
      'alias_database =',
      'biff = no',
      'smtputf8_enable = no',
      'milter_protocol = 6',
      'milter_default_action = tempfail',
      'smtpd_milters =',
      '',
    ].join('\n');
    const svc = (name: string, type: string, priv: string, maxproc: string, command: string): string =>
      `${name}\t${type}\t${priv}\t-\tn\t-\t${maxproc}\t${command}`;
    const smtpds: string[] = [svc(`127.0.0.1:${ports.get('none')!}`, 'inet', 'n', '-', 'smtpd')];
    for (const s of servers) {
      const milter = `inet:127.0.0.1:${s.spec.slice(5, s.spec.indexOf('@'))}`;
      smtpds.push(
        svc(`127.0.0.1:${ports.get(s.name)!}`, 'inet', 'n', '-', `smtpd -o smtpd_milters=${milter}`),
      );
    }
    const master = [
      ...smtpds,
      svc('pickup', 'unix', 'n', '1', 'pickup'),
      svc('cleanup', 'unix', 'n', '0', 'cleanup'),
      svc('qmgr', 'unix', 'n', '1', 'qmgr'),
      svc('rewrite', 'unix', '-', '-', 'trivial-rewrite'),
      svc('bounce', 'unix', '-', '0', 'bounce'),
      svc('defer', 'unix', '-', '0', 'bounce'),
      svc('trace', 'unix', '-', '0', 'bounce'),
      svc('verify', 'unix', '-', '1', 'verify'),
      svc('flush', 'unix', 'n', '0', 'flush'),
      svc('proxymap', 'unix', '-', '-', 'proxymap'),
      svc('smtp', 'unix', '-', '-', 'smtp'),
      svc('relay', 'unix', '-', '-', 'smtp'),
      svc('showq', 'unix', 'n', '-', 'showq'),
      svc('error', 'unix', '-', '-', 'error'),
      svc('retry', 'unix', '-', '-', 'error'),
      svc('discard', 'unix', '-', '-', 'discard'),
      svc('anvil', 'unix', '-', '1', 'anvil'),
      svc('scache', 'unix', '-', '1', 'scache'),
      svc('postlog', 'unix-dgram', 'n', '1', 'postlogd'),
      '',
    ].join('\n');
    await writeFile(path.join(confDir, 'main.cf'), main);
    await writeFile(path.join(confDir, 'master.cf'), master);
    ns = await MtaNamespace.create({ dir: path.join(dir, 'ns') });
    const started = await ns.exec('script', ['-eqc', `${POSTFIX} -c ${confDir} start`, '/dev/null'], {
      timeoutMs: 60_000,
    });
    if (started.code !== 0) throw new Error(`postfix start failed: ${started.stdout}${started.stderr}`);
    await sleep(1500);

    const order = ['none', ...servers.map((s) => s.name)];
    const runs = new Map<string, { rate: number; cpuUs: number | undefined; errors: number }[]>();
    for (let rep = 0; rep < o.reps; rep++) {
      const rotated = order.map((_, i) => order[(i + rep) % order.length]!);
      for (const variant of rotated) {
        const server = servers.find((s) => s.name === variant);
        const port = ports.get(variant)!;
        const args = [
          '-s',
          String(o.sessions),
          '-m',
          String(o.messages),
          '-l',
          String(o.bodySize),
          '-f',
          'sender@example.org',
          '-t',
          'rcpt@example.net',
          ...(o.perSession > 1 ? ['-d'] : []),
          `127.0.0.1:${port}`,
        ];
        const cpu0 = server ? treeCpuTicks(server.pids()) : 0;
        const t0 = performance.now();
        const r = await ns.exec(SMTP_SOURCE, args, { timeoutMs: 300_000 });
        const seconds = (performance.now() - t0) / 1000;
        const cpu1 = server ? treeCpuTicks(server.pids()) : 0;
        const errors = r.code === 0 ? 0 : 1;
        if (r.code !== 0) o.log(`  smtp-source ${variant}: exit ${String(r.code)} ${r.stderr.slice(0, 300)}`);
        const rate = o.messages / seconds;
        const cpuUs = server ? (((cpu1 - cpu0) / ticksPerSecond()) * 1e6) / o.messages : undefined;
        o.log(
          `  postfix e2e rep ${rep + 1} ${variant}: ${rate.toFixed(0)} msg/s` +
            (cpuUs === undefined ? '' : `, milter CPU ${cpuUs.toFixed(0)} µs/msg`),
        );
        runs.set(variant, [...(runs.get(variant) ?? []), { rate, cpuUs, errors }]);
        // Let the queue drain (discard delivery) before the next run.
        const deadline = performance.now() + 60_000;
        while (performance.now() < deadline) {
          let pending = 0;
          for (const q of ['maildrop', 'incoming', 'active'])
            pending += await countFiles(path.join(queueDir, q));
          if (pending === 0) break;
          await sleep(200);
        }
      }
    }
    const deferred = await countFiles(path.join(queueDir, 'deferred'));
    if (deferred > 0)
      o.log(`  postfix e2e: ${deferred} deferred messages (milter or delivery errors); see ${maillog}`);
    const log = await readFile(maillog, 'utf8').catch(() => '');
    const milterWarnings = log.split('\n').filter((l) => /warning: milter/.test(l));
    if (milterWarnings.length > 0)
      o.log(`  postfix e2e: ${milterWarnings.length} milter warnings, e.g. ${milterWarnings[0]}`);
    return order.map((variant) => {
      const rs = runs.get(variant) ?? [];
      const cpu = rs.map((r) => r.cpuUs).filter((x): x is number => x !== undefined);
      return {
        variant,
        reps: rs.length,
        messagesPerSecond: median(rs.map((r) => r.rate)),
        milterCpuUsPerMessage: cpu.length > 0 ? median(cpu) : undefined,
        errors: rs.reduce((a, r) => a + r.errors, 0),
        runs: rs.map((r) => r.rate),
      };
    });
  } finally {
    if (ns) {
      await ns
        .exec('script', ['-eqc', `${POSTFIX} -c ${confDir} stop`, '/dev/null'], { timeoutMs: 30_000 })
        .catch(() => undefined);
      try {
        const pid = Number((await readFile(path.join(queueDir, 'pid', 'master.pid'), 'utf8')).trim());
        if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) await stopPid(pid, 5000);
      } catch {
        // no pid file: not running
      }
      await ns.close().catch(() => undefined);
    }
    for (const s of servers) await s.stop();
    await copyFile(maillog, o.keepLogAs).catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
