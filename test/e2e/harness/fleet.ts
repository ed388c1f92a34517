/**
 * A small mail fleet on loopback for the shared-store tests (issue 15): one private `redis-server`, three
 * `milterd serve` daemons (the real binary, each its own process) sharing it through `--store`, and in
 * front of them two private Postfix instances and one Sendmail, all relaying to one recording sink:
 *
 *   postfix-a → milterd 0 ┐
 *   postfix-b → milterd 1 ├─ redis-server (127.0.0.1:P, unix socket)
 *   sendmail  → milterd 2 ┘
 *
 * Every process is started here and stopped by pid. One test process can be many SMTP clients: each
 * session connects from its own loopback source address (127.0.x.y), which the MTAs pass to milterd in
 * SMFIC_CONNECT, so the policy's per-client counts are per source address.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Daemon, httpGet, parsePrometheus, sampleValue } from '../../cli/helpers.js';
import { openServerConnections, type Mta } from './mta.js';
import { PostfixMta } from './postfix.js';
import { freePort, makeWorkDir, waitFor } from './proc.js';
import { RedisServer } from '../../helpers/redis.js';
import { SendmailMta } from './sendmail.js';
import { SmtpSink } from './sink.js';
import { SmtpClient, type SmtpReply } from './smtp-client.js';

export interface FleetOptions {
  /** The policy file every milterd reads. */
  policyYaml: string;
  /** `milterd serve` arguments for the store (the Redis URL is given), on top of listen/admin/policy. */
  storeArgs(redis: RedisServer): string[];
}

/** One `milterd serve` of the fleet: fixed ports, so that it can be killed and started again in place. */
export class FleetMilterd {
  daemon: Daemon | undefined;
  /** Every daemon this slot ran (for logs after a restart). */
  readonly runs: Daemon[] = [];

  constructor(
    readonly index: number,
    readonly port: number,
    readonly adminPort: number,
    private readonly args: readonly string[],
  ) {}

  get pid(): number {
    const pid = this.daemon?.child.pid;
    if (pid === undefined) throw new Error(`milterd ${this.index} is not running`);
    return pid;
  }

  async start(): Promise<void> {
    const daemon = new Daemon([
      '--listen',
      `inet:${this.port}@127.0.0.1`,
      '--admin',
      `inet:${this.adminPort}@127.0.0.1`,
      ...this.args,
    ]);
    this.daemon = daemon;
    this.runs.push(daemon);
    await daemon.started();
  }

  /** SIGKILL: no drain, no cleanup of any kind (what a crashed pod does). */
  async kill9(): Promise<void> {
    const daemon = this.daemon;
    this.daemon = undefined;
    if (!daemon) return;
    daemon.signal('SIGKILL');
    await daemon.exited;
  }

  /** SIGTERM and wait (bounded), then SIGKILL. */
  async stop(): Promise<void> {
    const daemon = this.daemon;
    this.daemon = undefined;
    if (!daemon) return;
    if (daemon.child.exitCode === null && daemon.child.signalCode === null) {
      daemon.signal('SIGTERM');
      const timer = setTimeout(() => daemon.signal('SIGKILL'), 5000);
      await daemon.exited;
      clearTimeout(timer);
    }
  }

  /** One series of this daemon's /metrics, summed over the samples matching `labels`. */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const res = await httpGet(this.adminPort, '/metrics');
    if (res.status !== 200) throw new Error(`milterd ${this.index} /metrics: ${res.status}`);
    return sampleValue(parsePrometheus(res.body), name, labels);
  }

  /** Log lines of every run of this slot. */
  lines(): Array<Record<string, unknown>> {
    return this.runs.flatMap((d) => d.lines);
  }
}

/** What one SMTP session with one message came to. */
export interface MessageOutcome {
  /** `accepted`: 250 after the content; `421`: the policy's shutdown, at whichever command it came. */
  kind: 'accepted' | '421' | 'other';
  /** The reply that decided it. */
  reply: SmtpReply | undefined;
  /** Whether the MTA closed the connection after a 421. */
  hangup: boolean;
  transcript: string[];
}

export const MTA_NAMES = ['postfix-a', 'postfix-b', 'sendmail'] as const;

export class Fleet {
  readonly sink = new SmtpSink();
  redis: RedisServer | undefined;
  readonly milterds: FleetMilterd[] = [];
  readonly mtas: Mta[] = [];
  dir = '';

  private constructor(private readonly options: FleetOptions) {}

  static async start(options: FleetOptions): Promise<Fleet> {
    const fleet = new Fleet(options);
    try {
      await fleet.boot();
    } catch (error) {
      await fleet.stop().catch(() => undefined);
      throw error;
    }
    return fleet;
  }

  private async boot(): Promise<void> {
    this.dir = await makeWorkDir('milterd-e2e-fleet-');
    await this.sink.start();
    this.redis = await RedisServer.start({ dir: path.join(this.dir, 'redis'), unixSocket: true });
    const policyFile = path.join(this.dir, 'policy.yaml');
    await writeFile(policyFile, this.options.policyYaml);
    const args = ['--policy', policyFile, ...this.options.storeArgs(this.redis)];
    for (let i = 0; i < 3; i++) {
      const m = new FleetMilterd(i, await freePort(false), await freePort(false), args);
      this.milterds.push(m);
      await m.start();
    }
    const milter = (i: number): { kind: 'inet'; port: number } => ({
      kind: 'inet',
      port: this.milterds[i]?.port ?? 0,
    });
    for (const [i, name] of MTA_NAMES.entries()) {
      const dir = path.join(this.dir, name);
      await mkdir(dir, { recursive: true });
      const options = { dir, sinkPort: this.sink.port, milter: milter(i) };
      this.mtas.push(
        name === 'sendmail' ? await SendmailMta.start(options) : await PostfixMta.start(options),
      );
    }
  }

  mta(i: number): Mta {
    const mta = this.mtas[i];
    if (!mta) throw new Error(`no MTA ${i}`);
    return mta;
  }

  milterd(i: number): FleetMilterd {
    const m = this.milterds[i];
    if (!m) throw new Error(`no milterd ${i}`);
    return m;
  }

  get redisServer(): RedisServer {
    if (!this.redis) throw new Error('redis-server not started');
    return this.redis;
  }

  /** An SMTP session to MTA `i` from loopback address `from`; the 220 greeting is read and checked. */
  async connect(i: number, from: string): Promise<SmtpClient> {
    const client = new SmtpClient();
    await client.connect('127.0.0.1', this.mta(i).port, 15_000, from);
    const greeting = await client.readReply(30_000);
    if (greeting.code !== 220) {
      client.close();
      throw new Error(`${MTA_NAMES[i]}: greeting ${greeting.text}`);
    }
    return client;
  }

  /**
   * EHLO and MAIL FROM on an open session (a session the policy counts from its CONNECT on). Returns the
   * first reply that is not 250 (the policy's 421 comes at HELO or MAIL), or the MAIL reply.
   */
  async open(client: SmtpClient): Promise<SmtpReply> {
    const ehlo = await client.command('EHLO client.fleet.test');
    if (ehlo.code !== 250) return ehlo;
    return client.command('MAIL FROM:<sender@fleet.example>');
  }

  /** Another message on a session that has sent EHLO: MAIL FROM, then `finish`. */
  async next(client: SmtpClient, id: string): Promise<SmtpReply> {
    const mail = await client.command('MAIL FROM:<sender@fleet.example>');
    return mail.code === 250 ? this.finish(client, id) : mail;
  }

  /** The rest of a message after a 250 to MAIL: RCPT, DATA, the content with `Subject: id`. */
  async finish(client: SmtpClient, id: string): Promise<SmtpReply> {
    const rcpt = await client.command('RCPT TO:<rcpt@fleet.example>');
    if (rcpt.code !== 250) return rcpt;
    const data = await client.command('DATA');
    if (data.code !== 354) return data;
    const content = `From: sender@fleet.example\r\nTo: rcpt@fleet.example\r\nSubject: ${id}\r\n\r\nfleet test ${id}\r\n`;
    return client.content(Buffer.from(content, 'latin1'));
  }

  /** One session with one message (`Subject: id`) from `from` through MTA `i`, then QUIT. */
  async message(i: number, from: string, id: string): Promise<MessageOutcome> {
    const client = await this.connect(i, from);
    try {
      let reply = await this.open(client);
      if (reply.code === 250) reply = await this.finish(client, id);
      const outcome = classify(reply, client);
      if (outcome.kind === '421') outcome.hangup = await client.waitHangup(15_000);
      else if (!client.isClosed) await client.command('QUIT').catch(() => undefined);
      return outcome;
    } finally {
      client.close();
    }
  }

  /** `milterd_store_errors_total{code}` summed over the running daemons. */
  async storeErrors(code: string): Promise<number> {
    let sum = 0;
    for (const m of this.milterds) {
      if (m.daemon) sum += await m.metric('milterd_store_errors_total', { code });
    }
    return sum;
  }

  /** Wait until every MTA has delivered its queue and closed every SMTP session. */
  async settle(): Promise<void> {
    for (const [i, mta] of this.mtas.entries()) {
      await waitFor(
        `${MTA_NAMES[i]} to deliver its queue`,
        async () => ((await mta.pendingCount()) === 0 ? true : undefined),
        { timeoutMs: 60_000, intervalMs: 100 },
      );
      await waitFor(
        `${MTA_NAMES[i]} to close its SMTP sessions`,
        async () => ((await openServerConnections(mta.port)) === 0 ? true : undefined),
        { timeoutMs: 30_000, intervalMs: 50 },
      );
    }
  }

  /** Wait until no MTA holds a milter connection to milterd `i` (its sessions have ended). */
  async milterIdle(i: number): Promise<void> {
    const port = this.milterd(i).port;
    await waitFor(
      `the milter connections to milterd ${i} to close`,
      async () => ((await openServerConnections(port)) === 0 ? true : undefined),
      { timeoutMs: 30_000, intervalMs: 50 },
    );
  }

  /** Subjects of the messages the sink received, in arrival order, that start with `prefix`. */
  delivered(prefix: string): string[] {
    return this.sink.messages
      .map((m) => m.headers.find((h) => h.name.toLowerCase() === 'subject')?.value ?? '')
      .filter((s) => s.startsWith(prefix));
  }

  /** The whole log of MTA `i`: Postfix's maillog, Sendmail's milter debug output (-d64.5). */
  async mtaLog(i: number): Promise<string> {
    const file = MTA_NAMES[i] === 'sendmail' ? 'sendmail-debug.txt' : 'maillog';
    return readFile(path.join(this.mta(i).dir, file), 'latin1').catch(() => '');
  }

  /** Where each MTA's log ends now, for `mtaLogsSince`. */
  async mtaLogMarks(): Promise<number[]> {
    return Promise.all(this.mtas.map(async (_, i) => (await this.mtaLog(i)).length));
  }

  /** What each MTA logged after `marks`. */
  async mtaLogsSince(marks: readonly number[]): Promise<string[]> {
    return Promise.all(this.mtas.map(async (_, i) => (await this.mtaLog(i)).slice(marks[i] ?? 0)));
  }

  redisLog(): string {
    return this.redis?.log() ?? '';
  }

  /** Stop every MTA, milterd and redis-server by pid, then the sink. Safe after a failed start. */
  async stop(): Promise<void> {
    const errors: unknown[] = [];
    for (const mta of this.mtas) await mta.stop().catch((e: unknown) => errors.push(e));
    this.mtas.length = 0;
    for (const m of this.milterds) await m.stop().catch((e: unknown) => errors.push(e));
    await this.redis?.stop().catch((e: unknown) => errors.push(e));
    this.redis = undefined;
    await this.sink.stop().catch((e: unknown) => errors.push(e));
    if (this.dir && process.env.MILTERD_E2E_KEEP !== '1') {
      await rm(this.dir, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    }
    if (errors.length > 0) throw errors[0];
  }
}

function classify(reply: SmtpReply, client: SmtpClient): MessageOutcome {
  const transcript = client.transcript;
  if (reply.code === 421) return { kind: '421', reply, hangup: reply.hangup, transcript };
  if (reply.code === 250) return { kind: 'accepted', reply, hangup: false, transcript };
  return { kind: 'other', reply, hangup: reply.hangup, transcript };
}
