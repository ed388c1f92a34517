/**
 * Third-party milters from Debian for the pipeline tests, each a private instance with its own config in a
 * temp folder, listening on loopback (TCP on 127.0.0.1 or a Unix socket), started and stopped by pid:
 *
 * - OpenDKIM signing for `example.com` with a key `opendkim-genkey` makes in the temp folder
 *   (KeyTable + SigningTable), and `verifyDkim()`: OpenDKIM's own test mode (`opendkim -t FILE -vvv`) with the
 *   public key served from a TestDNSData file, so verification needs no DNS at all;
 * - spamd (`--listen 127.0.0.1:PORT`, `--local`: no network tests; GTUBE is a local rule) and spamass-milter
 *   pointed at it (spamc arguments after `--`), rejecting at a score of 15;
 * - OpenDMARC, with `IgnoreHosts` emptied of 127.0.0.1 (it ignores loopback clients by default).
 *
 * They all run inside one private mount+UTS namespace (`MtaNamespace`): its /etc/resolv.conf names
 * 127.0.0.1, where nothing answers, so whatever DNS lookup they still try stays on loopback and fails at once
 * (OpenDMARC then reports `dmarc=none`). With `strace: true` every process is traced, for the loopback check.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { MtaNamespace, MTA_HOSTNAME } from './namespace.js';
import { isListening, type MilterEndpoint } from './mta.js';
import { freePort, runChecked, stopPid, waitExit, waitFor } from './proc.js';
import { access } from 'node:fs/promises';

/** The signing domain and selector of the test key. */
export const DKIM_DOMAIN = 'example.com';
export const DKIM_SELECTOR = 'test';
/** spamass-milter rejects at this score (GTUBE scores 1000). */
export const SPAM_REJECT_SCORE = 15;
/** What spamass-milter answers a rejected message with (its default reply, with code and status). */
export const SPAM_REJECT_REPLY = /^550 5\.7\.1 Blocked by SpamAssassin/;
/** The GTUBE test string: SpamAssassin scores a message carrying it 1000 without any network test. */
export const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

export type Transport = 'inet' | 'unix';

/** One running milter. */
export interface RunningMilter {
  readonly name: string;
  readonly endpoint: MilterEndpoint;
  /** The address in milterd's / Sendmail's syntax: `inet:PORT@127.0.0.1` or `unix:/path`. */
  readonly address: string;
  readonly pid: number;
  /** What the process wrote on stdout/stderr (bounded), for failure reports. */
  output(): string;
}

interface Proc {
  name: string;
  child: ChildProcess;
  out: string;
}

export interface DkimVerification {
  /** OpenDKIM's verdict line, e.g. `verification (s=test, d=example.com, 2048-bit key) succeeded`. */
  verdict: string;
  pass: boolean;
  /** The Authentication-Results value OpenDKIM would add. */
  authResults: string;
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

function addressOf(endpoint: MilterEndpoint): string {
  return endpoint.kind === 'inet' ? `inet:${endpoint.port}@127.0.0.1` : `unix:${endpoint.path}`;
}

/** The TXT record text of an `opendkim-genkey` `.txt` file (the quoted strings, joined). */
export function dkimTxtRecord(zoneText: string): string {
  const inParens = zoneText.slice(zoneText.indexOf('(') + 1, zoneText.lastIndexOf(')'));
  return [...inParens.matchAll(/"([^"]*)"/g)].map((m) => m[1] ?? '').join('');
}

export class ThirdPartyMilters {
  private ns: MtaNamespace | undefined;
  private readonly procs: Proc[] = [];
  private keyReady = false;

  private constructor(
    readonly dir: string,
    private readonly strace: boolean,
  ) {}

  /** A private namespace for the milters under `dir` (created). */
  static async create(dir: string, options: { strace?: boolean } = {}): Promise<ThirdPartyMilters> {
    await mkdir(dir, { recursive: true });
    // The MTAs' unprivileged users (postfix, smmsp) reach Unix sockets in here.
    await chmod(dir, 0o755);
    const host = new ThirdPartyMilters(dir, options.strace ?? false);
    host.ns = await MtaNamespace.create({ dir: path.join(dir, 'ns'), strace: host.strace });
    return host;
  }

  private get namespace(): MtaNamespace {
    if (!this.ns) throw new Error('the milters namespace is closed');
    return this.ns;
  }

  /** Files written by strace (with `strace: true`). */
  straceFiles(): readonly string[] {
    return this.ns?.straceFiles ?? [];
  }

  private async endpoint(name: string, transport: Transport, port?: number): Promise<MilterEndpoint> {
    if (transport === 'inet') return { kind: 'inet', port: port ?? (await freePort(false)) };
    const sockDir = path.join(this.dir, `${name}-sock`);
    await mkdir(sockDir, { recursive: true });
    await chmod(sockDir, 0o755);
    return { kind: 'unix', path: path.join(sockDir, `${name}.sock`) };
  }

  private spawn(name: string, command: string, args: readonly string[]): Proc {
    const child = this.namespace.spawn(command, args);
    const proc: Proc = { name, child, out: '' };
    const keep = (b: Buffer): void => {
      proc.out = (proc.out + b.toString('utf8')).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.procs.push(proc);
    return proc;
  }

  private async ready(proc: Proc, endpoint: MilterEndpoint, timeoutMs = 30_000): Promise<RunningMilter> {
    await this.listening(
      proc,
      `${addressOf(endpoint)}`,
      async () => (endpoint.kind === 'inet' ? isListening(endpoint.port) : exists(endpoint.path)),
      timeoutMs,
    );
    const pid = proc.child.pid;
    if (pid === undefined) throw new Error(`${proc.name} has no pid`);
    return {
      name: proc.name,
      endpoint,
      address: addressOf(endpoint),
      pid,
      output: () => proc.out,
    };
  }

  /** Wait (bounded) until `up()`; fails at once, with its output, when the process exits first. */
  private async listening(
    proc: Proc,
    where: string,
    up: () => Promise<boolean>,
    timeoutMs: number,
  ): Promise<void> {
    const exited = (): boolean => proc.child.exitCode !== null || proc.child.signalCode !== null;
    await waitFor(
      `${proc.name} to listen on ${where}`,
      async () => ((await up()) || exited() ? true : undefined),
      {
        timeoutMs,
        intervalMs: 100,
      },
    );
    if (exited()) {
      throw new Error(`${proc.name} exited (${proc.child.exitCode ?? proc.child.signalCode}):\n${proc.out}`);
    }
  }

  /** The DKIM key pair (`opendkim-genkey`, 2048 bits) and the TestDNSData file with its public key. */
  private async dkimKey(): Promise<{ privateKey: string; dnsData: string }> {
    const keyDir = path.join(this.dir, 'dkim-keys');
    const privateKey = path.join(keyDir, `${DKIM_SELECTOR}.private`);
    const dnsData = path.join(keyDir, 'dns-data');
    if (!this.keyReady) {
      await mkdir(keyDir, { recursive: true, mode: 0o700 });
      await runChecked(
        'opendkim-genkey',
        ['-b', '2048', '-D', keyDir, '-d', DKIM_DOMAIN, '-s', DKIM_SELECTOR],
        { what: 'opendkim-genkey (package opendkim-tools)' },
      );
      await chmod(privateKey, 0o600);
      const txt = dkimTxtRecord(await readFile(path.join(keyDir, `${DKIM_SELECTOR}.txt`), 'utf8'));
      if (!txt.includes('p=')) throw new Error(`no public key in opendkim-genkey's output: ${txt}`);
      // A data set file: the key is the DNS name, the rest of the line the TXT record's contents.
      await writeFile(dnsData, `${DKIM_SELECTOR}._domainkey.${DKIM_DOMAIN} ${txt}\n`);
      this.keyReady = true;
    }
    return { privateKey, dnsData };
  }

  /**
   * OpenDKIM signing every message from `@example.com` (relaxed/simple, rsa-sha256); `port` to restart one on
   * the port of an earlier one.
   */
  async startOpenDkimSigner(transport: Transport = 'inet', port?: number): Promise<RunningMilter> {
    const { privateKey } = await this.dkimKey();
    const endpoint = await this.endpoint('opendkim', transport, port);
    const conf = path.join(this.dir, 'opendkim-sign');
    await mkdir(conf, { recursive: true });
    const keyName = `${DKIM_SELECTOR}._domainkey.${DKIM_DOMAIN}`;
    await writeFile(
      path.join(conf, 'KeyTable'),
      `${keyName} ${DKIM_DOMAIN}:${DKIM_SELECTOR}:${privateKey}\n`,
    );
    await writeFile(path.join(conf, 'SigningTable'), `*@${DKIM_DOMAIN} ${keyName}\n`);
    await writeFile(
      path.join(conf, 'opendkim.conf'),
      [
        'Mode s',
        'Syslog no',
        'UMask 000',
        `Socket ${endpoint.kind === 'inet' ? addressOf(endpoint) : `local:${endpoint.path}`}`,
        `PidFile ${path.join(conf, 'opendkim.pid')}`,
        `KeyTable file:${path.join(conf, 'KeyTable')}`,
        `SigningTable refile:${path.join(conf, 'SigningTable')}`,
        'Canonicalization relaxed/simple',
        'SignatureAlgorithm rsa-sha256',
        // Clients on loopback are "internal": their mail is signed.
        'InternalHosts 127.0.0.1, ::1',
        // The key lies under /tmp (world-writable): the "safe key" check would refuse it and tempfail.
        'RequireSafeKeys no',
        '',
      ].join('\n'),
    );
    const proc = this.spawn('opendkim', '/usr/sbin/opendkim', ['-f', '-x', path.join(conf, 'opendkim.conf')]);
    return this.ready(proc, endpoint);
  }

  /**
   * Verify the DKIM signatures of `message` (as delivered, CRLF) with OpenDKIM's test mode; the public key
   * comes from the TestDNSData file, no DNS query is made.
   */
  async verifyDkim(message: Buffer, label: string): Promise<DkimVerification> {
    const { dnsData } = await this.dkimKey();
    const conf = path.join(this.dir, 'opendkim-verify.conf');
    await writeFile(
      conf,
      ['Mode v', 'Syslog no', `TestDNSData file:${dnsData}`, `AuthservID ${MTA_HOSTNAME}`, ''].join('\n'),
    );
    const file = path.join(this.dir, `${label}.eml`);
    await writeFile(file, message);
    const r = await this.namespace.exec('/usr/sbin/opendkim', ['-x', conf, '-t', file, '-vvv'], {
      timeoutMs: 30_000,
      strace: false,
    });
    const text = `${r.stdout}\n${r.stderr}`;
    const verdict = /verification \(.*$/m.exec(text)?.[0] ?? /message not signed/.exec(text)?.[0] ?? '';
    const authResults = /hname='Authentication-Results' hvalue='([^']*)'/.exec(text)?.[1] ?? '';
    if (verdict === '') throw new Error(`opendkim -t gave no verdict (exit ${r.code}):\n${text}`);
    return { verdict, pass: /\) succeeded$/.test(verdict) && /dkim=pass/.test(authResults), authResults };
  }

  /** spamd on 127.0.0.1 (local tests only), then spamass-milter using it through spamc. */
  async startSpamassMilter(transport: Transport = 'inet'): Promise<RunningMilter> {
    const spamdPort = await freePort(false);
    const home = path.join(this.dir, 'spamd');
    await mkdir(home, { recursive: true });
    await chmod(home, 0o777);
    const spamd = this.spawn('spamd', '/usr/sbin/spamd', [
      `--listen=127.0.0.1:${spamdPort}`,
      '--allowed-ips=127.0.0.1',
      '--local',
      '--nouser-config',
      '--username=debian-spamd',
      '--groupname=debian-spamd',
      `--helper-home-dir=${home}`,
      `--pidfile=${path.join(home, 'spamd.pid')}`,
      '--syslog=stderr',
      '--min-children=1',
      '--max-children=2',
    ]);
    // spamd compiles its rules before it listens: allow it a while on a busy machine.
    await this.listening(spamd, `127.0.0.1:${spamdPort}`, () => isListening(spamdPort), 120_000);
    const endpoint = await this.endpoint('spamass', transport);
    const proc = this.spawn('spamass-milter', '/usr/sbin/spamass-milter', [
      '-p',
      endpoint.kind === 'inet' ? addressOf(endpoint) : endpoint.path,
      '-r',
      String(SPAM_REJECT_SCORE),
      '--',
      '-d',
      '127.0.0.1',
      '-p',
      String(spamdPort),
    ]);
    const milter = await this.ready(proc, endpoint);
    if (endpoint.kind === 'unix') await chmod(endpoint.path, 0o666);
    return milter;
  }

  /** OpenDMARC adding `Authentication-Results: mta.test; dmarc=…` (no reports, no history, no rejects). */
  async startOpenDmarc(transport: Transport = 'inet'): Promise<RunningMilter> {
    const endpoint = await this.endpoint('opendmarc', transport);
    const conf = path.join(this.dir, 'opendmarc');
    await mkdir(conf, { recursive: true });
    // By default OpenDMARC ignores 127.0.0.1, where every test client connects from: ignore a TEST-NET one.
    await writeFile(path.join(conf, 'ignore-hosts'), '192.0.2.255\n');
    await writeFile(
      path.join(conf, 'opendmarc.conf'),
      [
        `Socket ${endpoint.kind === 'inet' ? addressOf(endpoint) : `local:${endpoint.path}`}`,
        'UMask 000',
        'Syslog false',
        `PidFile ${path.join(conf, 'opendmarc.pid')}`,
        `AuthservID ${MTA_HOSTNAME}`,
        `IgnoreHosts ${path.join(conf, 'ignore-hosts')}`,
        'RejectFailures false',
        'FailureReports false',
        'SPFIgnoreResults true',
        'SPFSelfValidate false',
        '',
      ].join('\n'),
    );
    const proc = this.spawn('opendmarc', '/usr/sbin/opendmarc', [
      '-f',
      '-c',
      path.join(conf, 'opendmarc.conf'),
    ]);
    return this.ready(proc, endpoint);
  }

  /** Stop one milter by pid (SIGTERM, then SIGKILL) and wait for it. */
  async stopOne(milter: RunningMilter): Promise<void> {
    const proc = this.procs.find((p) => p.child.pid === milter.pid);
    await stopPid(milter.pid, 5000);
    if (proc) await waitExit(proc.child, 5000);
  }

  /** Send `signal` to one milter's pid (SIGKILL, SIGSTOP, SIGCONT); after SIGKILL, wait until it is gone. */
  async signal(milter: RunningMilter, signal: NodeJS.Signals): Promise<void> {
    process.kill(milter.pid, signal);
    const proc = this.procs.find((p) => p.child.pid === milter.pid);
    if (signal === 'SIGKILL' && proc) await waitExit(proc.child, 5000);
  }

  /** Every process started here, by pid, then the namespace (and whatever is left in it). */
  async stop(): Promise<void> {
    for (const proc of this.procs.reverse()) {
      const pid = proc.child.pid;
      if (pid !== undefined && proc.child.exitCode === null && proc.child.signalCode === null) {
        process.kill(pid, 'SIGCONT'); // a test may have stopped it (SIGSTOP)
        await stopPid(pid, 5000);
        await waitExit(proc.child, 5000);
      }
    }
    this.procs.length = 0;
    await this.ns?.close();
    this.ns = undefined;
  }
}
