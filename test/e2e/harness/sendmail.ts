/**
 * A private Sendmail 8.17 instance, unpacked by scripts/install-test-deps.sh (it conflicts with postfix as
 * a Debian package), inside its own mount+UTS namespace: a `.cf` built with m4 from sendmail-cf, queue,
 * pid, aliases and service switch in a temp folder, listening on 127.0.0.1:<free port> and [::1] (same
 * port), relaying everything to the recording sink, INPUT_MAIL_FILTER pointed at milterd. Runs in the
 * foreground (`sendmail -C cf -bD -D debug -d64.5`), so its pid is ours to stop.
 */
import type { ChildProcess } from 'node:child_process';
import { access, chmod, copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
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
import { freePort, runChecked, stopPid, waitExit, waitFor } from './proc.js';

export const SENDMAIL_ROOT = process.env.MILTERD_SENDMAIL_ROOT ?? '/opt/milterd-test/sendmail';
export const SENDMAIL_BIN = path.join(SENDMAIL_ROOT, 'usr/libexec/sendmail/sendmail');

/** SMTP AUTH users of the private Sendmail (AUTH PLAIN without TLS). */
export const SASL_USERS: Readonly<Record<string, string>> = { alice: 'secret' };

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

async function sendmailCfDir(): Promise<string> {
  for (const dir of ['/usr/share/sendmail/cf', path.join(SENDMAIL_ROOT, 'usr/share/sendmail/cf')]) {
    if (await exists(path.join(dir, 'm4/cf.m4'))) return dir;
  }
  throw new Error('sendmail-cf (m4/cf.m4) not found: run scripts/install-test-deps.sh (as root)');
}

export class SendmailMta implements Mta {
  readonly kind = 'sendmail' as const;
  port = 0;
  readonly dir: string;
  private ns: MtaNamespace | undefined;
  private child: ChildProcess | undefined;
  private output = '';
  private readonly queueDir: string;
  private readonly debugFile: string;

  private constructor(private readonly options: MtaStartOptions) {
    this.dir = options.dir;
    this.queueDir = path.join(this.dir, 'queue');
    this.debugFile = path.join(this.dir, 'sendmail-debug.txt');
  }

  static async start(options: MtaStartOptions): Promise<SendmailMta> {
    const mta = new SendmailMta(options);
    try {
      await mta.boot();
    } catch (error) {
      const log = await mta.log();
      await mta.stop().catch(() => undefined);
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(
        `Sendmail could not start: ${message}\n--- output ---\n${mta.output}\n--- debug ---\n${log}`,
        { cause: error },
      );
    }
    return mta;
  }

  private milterSocket(): string | undefined {
    const m = this.options.milter;
    if (!m) return undefined;
    return m.kind === 'inet' ? `inet:${m.port}@127.0.0.1` : `local:${m.path}`;
  }

  private async boot(): Promise<void> {
    if (!(await exists(SENDMAIL_BIN))) {
      throw new Error(`${SENDMAIL_BIN} not found: run scripts/install-test-deps.sh (as root)`);
    }
    const cfDir = await sendmailCfDir();
    this.port = await freePort(true);
    const d = this.dir;
    await mkdir(this.queueDir, { recursive: true });
    await chmod(d, 0o755);
    await chmod(this.queueDir, 0o700);
    await writeFile(path.join(d, 'service.switch'), 'hosts files\naliases files\n');
    await writeFile(path.join(d, 'aliases'), '');
    await writeFile(path.join(d, 'local-host-names'), `${MTA_HOSTNAME}\n`);
    const helpfile = path.join(SENDMAIL_ROOT, 'etc/mail/helpfile');
    if (await exists(helpfile)) await copyFile(helpfile, path.join(d, 'helpfile'));
    else await writeFile(path.join(d, 'helpfile'), '');
    // SMTP AUTH, so that {auth_authen} can be tested: Cyrus SASL reads Sendmail.conf from /usr/lib/sasl2,
    // which a private folder replaces inside the namespace only; the users live in a private sasldb
    // (saslpasswd2, package sasl2-bin).
    const saslDir = path.join(d, 'sasl2');
    const sasldb = path.join(d, 'sasldb2');
    await mkdir(saslDir, { recursive: true });
    await writeFile(
      path.join(saslDir, 'Sendmail.conf'),
      `pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: ${sasldb}\n`,
    );
    for (const [user, password] of Object.entries(SASL_USERS)) {
      await runChecked('saslpasswd2', ['-c', '-p', '-f', sasldb, '-u', MTA_HOSTNAME, user], {
        input: password,
        what: 'saslpasswd2 (package sasl2-bin)',
      });
    }
    await chmod(sasldb, 0o600);
    const t = MTA_MILTER_TIMEOUTS;
    const q = (s: string): string => `\`${s}'`;
    const define = (name: string, value: string): string => `define(${q(name)}, ${q(value)})dnl`;
    const lines = [
      'divert(-1)',
      'divert(0)dnl',
      `include(${q(path.join(cfDir, 'm4/cf.m4'))})dnl`,
      `VERSIONID(${q('milterd e2e')})dnl`,
      `OSTYPE(${q('linux')})dnl`,
      define('MAIL_SETTINGS_DIR', `${d}/`),
      define('QUEUE_DIR', this.queueDir),
      define('confPID_FILE', path.join(d, 'sendmail.pid')),
      define('ALIAS_FILE', path.join(d, 'aliases')),
      define('HELP_FILE', path.join(d, 'helpfile')),
      define('STATUS_FILE', path.join(d, 'statistics')),
      define('confCW_FILE', path.join(d, 'local-host-names')),
      define('confHOST_STATUS_DIRECTORY', ''),
      define('confSERVICE_SWITCH_FILE', path.join(d, 'service.switch')),
      define('confHOSTS_FILE', path.join(d, 'ns/etc/hosts')),
      define('confDONT_PROBE_INTERFACES', 'True'),
      define('confDOMAIN_NAME', MTA_HOSTNAME),
      define('confTO_IDENT', '0'),
      define('confQUEUE_LA', '500'),
      define('confREFUSE_LA', '500'),
      define('confDELAY_LA', '0'),
      define('confTO_QUEUEWARN', '1d'),
      define('confLOG_LEVEL', '14'),
      define('confMILTER_LOG_LEVEL', '14'),
      define('confMAX_MESSAGE_SIZE', '52428800'),
      define('confAUTH_MECHANISMS', 'PLAIN LOGIN'),
      define('confAUTH_OPTIONS', 'A'),
      `TRUST_AUTH_MECH(${q('PLAIN LOGIN')})dnl`,
      define('SMART_HOST', 'relay:[127.0.0.1]'),
      define('RELAY_MAILER_ARGS', `TCP $h ${this.options.sinkPort}`),
      `FEATURE(${q('no_default_msa')})dnl`,
      `FEATURE(${q('nocanonify')})dnl`,
      `FEATURE(${q('promiscuous_relay')})dnl`,
      `FEATURE(${q('accept_unresolvable_domains')})dnl`,
      `FEATURE(${q('accept_unqualified_senders')})dnl`,
      `DAEMON_OPTIONS(${q(`Port=${this.port}, Addr=127.0.0.1, Name=MTA`)})dnl`,
      `DAEMON_OPTIONS(${q(`Port=${this.port}, Addr=::1, Family=inet6, Name=MTA6`)})dnl`,
      `MAILER(${q('smtp')})dnl`,
    ];
    const socket = this.milterSocket();
    if (socket) {
      const timeouts = `C:${t.connectSeconds}s;S:${t.commandSeconds}s;R:${t.contentSeconds}s;E:${t.eomTotalSeconds}s`;
      lines.push(`INPUT_MAIL_FILTER(${q('milterd')}, ${q(`S=${socket}, F=T, T=${timeouts}`)})dnl`);
    }
    await writeFile(path.join(d, 'sendmail.mc'), lines.join('\n') + '\n');
    const m4 = await runChecked('m4', [path.join(d, 'sendmail.mc')], { what: 'm4 sendmail.mc' });
    await writeFile(path.join(d, 'sendmail.cf'), m4.stdout);

    this.ns = await MtaNamespace.create({
      dir: path.join(d, 'ns'),
      strace: this.options.strace,
      binds: [[saslDir, '/usr/lib/sasl2']],
    });
    const child = this.ns.spawn(SENDMAIL_BIN, [
      '-C',
      path.join(d, 'sendmail.cf'),
      '-bD',
      '-D',
      this.debugFile,
      '-d64.5',
      ...(process.env.MILTERD_E2E_SENDMAIL_DEBUG ?? '').split(' ').filter((a) => a !== ''),
    ]);
    this.child = child;
    child.stdout?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (this.output += b.toString()));
    await waitFor(
      `Sendmail to listen on 127.0.0.1:${this.port} and [::1]:${this.port}`,
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`sendmail exited (${child.exitCode ?? child.signalCode})`);
        }
        return (await isListening(this.port, 4)) && (await isListening(this.port, 6)) ? true : undefined;
      },
      { timeoutMs: 30_000 },
    );
  }

  private async queueFiles(): Promise<string[]> {
    try {
      return await readdir(this.queueDir);
    } catch {
      return [];
    }
  }

  async pendingCount(): Promise<number> {
    // qf = queued control file, tf = being written; hf = quarantined (not pending).
    return (await this.queueFiles()).filter((f) => /^(qf|tf)/.test(f)).length;
  }

  async held(): Promise<HeldMessage[]> {
    const out: HeldMessage[] = [];
    for (const f of await this.queueFiles()) {
      if (!f.startsWith('hf')) continue;
      const text = await readFile(path.join(this.queueDir, f), 'latin1');
      const lines = text.split('\n');
      const reason = lines.find((l) => l.startsWith('q'))?.slice(1);
      const headerText = lines
        .filter((l) => l.startsWith('H'))
        .map((l) => l.slice(1).replace(/^\?[^?]*\?/, ''))
        .join('\n');
      out.push({ queueId: f.slice(2), reason, headerText });
    }
    return out;
  }

  async clearHeld(): Promise<void> {
    for (const f of await this.queueFiles()) {
      if (f.startsWith('hf')) {
        await rm(path.join(this.queueDir, f), { force: true });
        await rm(path.join(this.queueDir, `df${f.slice(2)}`), { force: true });
      }
    }
  }

  log(): Promise<string> {
    return readTail(this.debugFile);
  }

  straceFiles(): readonly string[] {
    return this.ns?.straceFiles ?? [];
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      await stopPid(child.pid, 5000);
      await waitExit(child, 5000);
    }
    this.child = undefined;
    await this.ns?.close();
    this.ns = undefined;
  }
}
