/**
 * A private Postfix 3.7 instance (`postfix -c DIR`) inside its own mount+UTS namespace: config, queue and
 * data in a temp folder, one smtpd on 127.0.0.1:<free port> and [::1]:<same port>, no chroot, everything
 * relayed to the recording sink, smtpd_milters pointed at milterd (TCP or Unix socket).
 */
import { chmod, chown, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { MtaNamespace, MTA_HOSTNAME } from './namespace.js';
import {
  isListening,
  MTA_MILTER_TIMEOUTS,
  readTail,
  type HeldMessage,
  type Mta,
  type MtaStartOptions,
} from './mta.js';
import { freePort, isAlive, stopPid, waitFor } from './proc.js';

const POSTFIX = '/usr/sbin/postfix';

/** {daemon_name} of the second smtpd a `submission` Postfix runs (the name milters see). */
export const SUBMISSION_DAEMON_NAME = 'submission';

export interface PostfixStartOptions extends MtaStartOptions {
  /**
   * Also run a second smtpd on 127.0.0.1:`submissionPort` whose milters see {daemon_name} `submission`, as a
   * real submission service (`-o milter_macro_daemon_name=…`); the first keeps Postfix's default ($myhostname).
   */
  submission?: boolean;
}

function userId(name: string): number {
  return Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
}

export class PostfixMta implements Mta {
  readonly kind = 'postfix' as const;
  port = 0;
  /** With `submission`: the port of the second smtpd ({daemon_name} `submission`); else 0. */
  submissionPort = 0;
  readonly dir: string;
  private ns: MtaNamespace | undefined;
  private readonly confDir: string;
  private readonly queueDir: string;
  private readonly maillog: string;

  private constructor(private readonly options: PostfixStartOptions) {
    this.dir = options.dir;
    this.confDir = path.join(this.dir, 'conf');
    this.queueDir = path.join(this.dir, 'queue');
    this.maillog = path.join(this.dir, 'maillog');
  }

  static async start(options: PostfixStartOptions): Promise<PostfixMta> {
    const mta = new PostfixMta(options);
    try {
      await mta.boot();
    } catch (error) {
      const log = await mta.log();
      await mta.stop().catch(() => undefined);
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`Postfix could not start: ${message}\n--- maillog ---\n${log}`, { cause: error });
    }
    return mta;
  }

  private milterSpec(): string {
    const m = this.options.milter;
    if (!m) return '';
    return m.kind === 'inet' ? `inet:127.0.0.1:${m.port}` : `unix:${m.path}`;
  }

  private async boot(): Promise<void> {
    try {
      await readFile(POSTFIX);
    } catch {
      throw new Error(`${POSTFIX} not found: run scripts/install-test-deps.sh (as root)`);
    }
    this.port = await freePort(true);
    if (this.options.submission) this.submissionPort = await freePort(false);
    const dataDir = path.join(this.dir, 'data');
    await mkdir(this.confDir, { recursive: true });
    await mkdir(this.queueDir, { recursive: true });
    await mkdir(dataDir, { recursive: true });
    // The daemons run as `postfix`: they must be able to traverse the temp folder; data_directory is theirs.
    await chmod(this.dir, 0o755);
    await chown(dataDir, userId('postfix'), 0);
    const t = MTA_MILTER_TIMEOUTS;
    const main = [
      'compatibility_level = 3.6',
      `config_directory = ${this.confDir}`,
      `queue_directory = ${this.queueDir}`,
      `data_directory = ${dataDir}`,
      `myhostname = ${MTA_HOSTNAME}`,
      'mydomain = test',
      `myorigin = ${MTA_HOSTNAME}`,
      'mydestination =',
      'local_recipient_maps =',
      'mynetworks = 127.0.0.0/8 [::1]/128',
      'inet_interfaces = loopback-only',
      'inet_protocols = all',
      `relayhost = [127.0.0.1]:${this.options.sinkPort}`,
      'smtpd_relay_restrictions = permit_mynetworks, reject',
      'smtpd_peername_lookup = no',
      // No flow-control wait: a rejected or discarded message returns no token, so cleanup would otherwise
      // pause up to 1 s before the next message (in_flow_delay), slowing the suite without testing anything.
      'in_flow_delay = 0s',
      'smtp_dns_support_level = disabled',
      `maillog_file = ${this.maillog}`,
      `maillog_file_prefixes = ${this.dir}`,
      'alias_maps =',
      'alias_database =',
      'biff = no',
      'smtputf8_enable = no',
      // XCLIENT lets the tests set a SASL login name ({auth_authen}) without a SASL server.
      'smtpd_authorized_xclient_hosts = 127.0.0.0/8 [::1]/128',
      'smtpd_client_event_limit_exceptions = 127.0.0.0/8 [::1]/128',
      'message_size_limit = 52428800',
      'queue_run_delay = 1s',
      'minimal_backoff_time = 1s',
      'maximal_backoff_time = 2s',
      `smtpd_milters = ${this.milterSpec()}`,
      'milter_protocol = 6',
      // MILTERD_E2E_POSTFIX_DEBUG=1: verbose smtpd/cleanup logging for loopback clients, in the maillog.
      process.env.MILTERD_E2E_POSTFIX_DEBUG === '1' ? 'debug_peer_list = 127.0.0.1, [::1]' : '',
      'milter_default_action = tempfail',
      `milter_connect_timeout = ${t.connectSeconds}s`,
      `milter_command_timeout = ${t.commandSeconds}s`,
      `milter_content_timeout = ${t.contentSeconds}s`,
      '',
    ].join('\n');
    const service = (name: string, type: string, priv: string, maxproc: string, command: string): string =>
      `${name}\t${type}\t${priv}\t-\tn\t-\t${maxproc}\t${command}`;
    const master = [
      service(`127.0.0.1:${this.port}`, 'inet', 'n', '-', 'smtpd'),
      service(`[::1]:${this.port}`, 'inet', 'n', '-', 'smtpd'),
      this.submissionPort === 0
        ? ''
        : service(
            `127.0.0.1:${this.submissionPort}`,
            'inet',
            'n',
            '-',
            `smtpd -o milter_macro_daemon_name=${SUBMISSION_DAEMON_NAME}`,
          ),
      service('pickup', 'unix', 'n', '1', 'pickup'),
      service('cleanup', 'unix', 'n', '0', 'cleanup'),
      service('qmgr', 'unix', 'n', '1', 'qmgr'),
      service('rewrite', 'unix', '-', '-', 'trivial-rewrite'),
      service('bounce', 'unix', '-', '0', 'bounce'),
      service('defer', 'unix', '-', '0', 'bounce'),
      service('trace', 'unix', '-', '0', 'bounce'),
      service('verify', 'unix', '-', '1', 'verify'),
      service('flush', 'unix', 'n', '0', 'flush'),
      service('proxymap', 'unix', '-', '-', 'proxymap'),
      service('smtp', 'unix', '-', '-', 'smtp'),
      service('relay', 'unix', '-', '-', 'smtp'),
      service('showq', 'unix', 'n', '-', 'showq'),
      service('error', 'unix', '-', '-', 'error'),
      service('retry', 'unix', '-', '-', 'error'),
      service('discard', 'unix', '-', '-', 'discard'),
      service('anvil', 'unix', '-', '1', 'anvil'),
      service('scache', 'unix', '-', '1', 'scache'),
      service('postlog', 'unix-dgram', 'n', '1', 'postlogd'),
      '',
    ].join('\n');
    await writeFile(path.join(this.confDir, 'main.cf'), main);
    await writeFile(path.join(this.confDir, 'master.cf'), master);
    this.ns = await MtaNamespace.create({ dir: path.join(this.dir, 'ns'), strace: this.options.strace });
    // `script` gives postfix(1) a terminal, so its fatal errors reach us (there is no syslog here). It is
    // spawned, not awaited: under `strace -f` the tracer lives as long as the daemons it follows.
    const starter = this.ns.spawn('script', ['-eqc', `${POSTFIX} -c ${this.confDir} start`, '/dev/null']);
    let output = '';
    starter.stdout?.on('data', (b: Buffer) => (output += b.toString()));
    starter.stderr?.on('data', (b: Buffer) => (output += b.toString()));
    await waitFor(
      `Postfix to listen on 127.0.0.1:${this.port} and [::1]:${this.port}`,
      async () => {
        if (starter.exitCode !== null && starter.exitCode !== 0) {
          throw new Error(`postfix start failed (exit ${starter.exitCode}):\n${output}`);
        }
        if (starter.signalCode !== null) throw new Error(`postfix start killed by ${starter.signalCode}`);
        const submission = this.submissionPort === 0 || (await isListening(this.submissionPort, 4));
        return (await isListening(this.port, 4)) && (await isListening(this.port, 6)) && submission
          ? true
          : undefined;
      },
      { timeoutMs: 30_000 },
    );
  }

  async masterPid(): Promise<number | undefined> {
    try {
      const pid = Number((await readFile(path.join(this.queueDir, 'pid', 'master.pid'), 'utf8')).trim());
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  private async listQueue(name: string): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (e.isDirectory() && depth < 3) await walk(path.join(dir, e.name), depth + 1);
        else if (e.isFile()) out.push(e.name);
      }
    };
    await walk(path.join(this.queueDir, name), 0);
    return out;
  }

  async pendingCount(): Promise<number> {
    let n = 0;
    // Order matters: a file moving maildrop → incoming → active → (gone) is seen at least once.
    for (const q of ['maildrop', 'incoming', 'active', 'deferred']) n += (await this.listQueue(q)).length;
    return n;
  }

  /** Hold queue, from `postqueue -j` (queue_name "hold"), cross-checked with the hold directory. */
  async held(): Promise<HeldMessage[]> {
    const files = (await this.listQueue('hold')).sort();
    const ids = (await this.queueJson())
      .filter((m) => m.queue_name === 'hold')
      .map((m) => String(m.queue_id))
      .sort();
    if (files.join(' ') !== ids.join(' ')) {
      throw new Error(`postqueue -j hold [${ids.join(' ')}] != queue/hold [${files.join(' ')}]`);
    }
    const out: HeldMessage[] = [];
    for (const id of ids) {
      const r = await this.ns?.exec('postcat', ['-c', this.confDir, '-h', '-q', id], {
        timeoutMs: 20_000,
        strace: false,
      });
      out.push({ queueId: id, reason: undefined, headerText: r?.stdout ?? '' });
    }
    return out;
  }

  /** `postqueue -j` view of the queue (one JSON object per message). */
  async queueJson(): Promise<Array<Record<string, unknown>>> {
    if (!this.ns) return [];
    const r = await this.ns.exec('postqueue', ['-c', this.confDir, '-j'], {
      timeoutMs: 20_000,
      strace: false,
    });
    return r.stdout
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  async clearHeld(): Promise<void> {
    if (!this.ns || (await this.listQueue('hold')).length === 0) return;
    await this.ns.exec('postsuper', ['-c', this.confDir, '-d', 'ALL', 'hold'], {
      timeoutMs: 20_000,
      strace: false,
    });
  }

  log(): Promise<string> {
    return readTail(this.maillog);
  }

  straceFiles(): readonly string[] {
    return this.ns?.straceFiles ?? [];
  }

  async stop(): Promise<void> {
    const ns = this.ns;
    if (!ns) return;
    const pid = await this.masterPid();
    if (pid !== undefined && isAlive(pid)) {
      await ns
        .exec('script', ['-eqc', `${POSTFIX} -c ${this.confDir} stop`, '/dev/null'], {
          timeoutMs: 30_000,
          strace: false,
        })
        .catch(() => undefined);
      await stopPid(pid, 5000);
    }
    await ns.close();
    this.ns = undefined;
  }
}
