/**
 * `milterd test`: push a message file with an envelope through any milter (ours, or any libmilter
 * filter) as an MTA would, and report every reply and modification. A modern miltertest.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  MilterClient,
  MTA_NAMES,
  MTA_OFFER,
  MTA_PROFILES,
  playMessage,
  type ClientReply,
  type MessageResult,
  type MessageScript,
  type MessageStage,
  type MtaMacroValues,
  type MtaName,
  type MilterClientOptions,
} from '../client/index.js';
import type { ConnectionInfo, MacroStage } from '../filter.js';
import { MilterConfigError, isMilterError } from '../errors.js';
import { DEFAULTS } from '../defaults.js';
import { SMFIP_HDR_LEADSPC } from '../protocol/constants.js';
import { MESSAGE_STAGES } from '../client/transaction.js';
import { headerValueToSend, parseEml } from './eml.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import {
  ACTION_NAMES,
  PROTOCOL_NAMES,
  buildReport,
  formatReportText,
  type TestReport,
  type TestStep,
} from './test-report.js';
import { writeOutputMessage } from './test-output.js';
import { formatDuration, parseDuration, parseInteger, parseListenSpec } from './values.js';

/** Options of `milterd test`, as commander hands them over. */
export interface TestCommandOptions {
  milter: string;
  from?: string;
  rcpt?: string[];
  connectAddr: string;
  connectPort: number;
  connectName?: string;
  helo?: string;
  queueId?: string;
  macro?: Array<[MacroStage, string, string]>;
  timeout: number;
  json?: boolean;
  expect?: Expectation[];
  /** `--output-message FILE|-` (see test-output.ts). */
  outputMessage?: string;
  // The MTA's offer, macros and event order; more SMTP events; load (issue 16).
  mta?: MtaName;
  version?: number;
  actions?: number;
  protocol?: number;
  unknown?: string[];
  authUser?: string;
  rcptMacro?: RcptMacro[];
  repeat?: number;
  concurrency?: number;
}

/** `--rcpt-macro ADDRESS:NAME=VALUE`: a macro sent before that recipient's RCPT only. */
export interface RcptMacro {
  recipient: string;
  name: string;
  value: string;
}

/** The decisions `--expect` knows: the reply kinds of the report (replyCode 5xx/4xx count as reject/tempfail). */
type Decision = Exclude<ClientReply['kind'], 'replyCode'>;
const DECISIONS = [
  'continue',
  'accept',
  'reject',
  'tempfail',
  'discard',
  'skip',
  'shutdown',
  'connFail',
  'noreply',
  'skipped',
] as const satisfies readonly Decision[];
// Every reply kind is listed: a new one fails to compile here rather than being unknown to --expect.
const ALL_DECISIONS_LISTED: [Decision] extends [(typeof DECISIONS)[number]] ? true : never = true;
void ALL_DECISIONS_LISTED;
/** The stages of the report's steps. */
const STEP_STAGES: readonly MessageStage[] = MESSAGE_STAGES;

/**
 * `--expect DECISION[@STAGE]`: without a stage, the decision that ended the message (a continue at end of
 * message counts as accept, as for the MTA); with one, the reply at that stage (one of them, for rcpt/header).
 */
export interface Expectation {
  decision: Decision;
  stage?: MessageStage;
}

function parseExpectation(v: string): Expectation {
  const [d, stage, extra] = v.split('@');
  const decision = DECISIONS.find((x) => x === d);
  if (decision === undefined || extra !== undefined)
    throw new InvalidArgumentError(`expected DECISION[@STAGE], DECISION one of: ${DECISIONS.join(', ')}`);
  if (stage === undefined) return { decision };
  const st = STEP_STAGES.find((x) => x === stage);
  if (st === undefined)
    throw new InvalidArgumentError(`unknown stage "${stage}"; stages: ${STEP_STAGES.join(', ')}`);
  return { decision, stage: st };
}

/** A reply as a decision: what an MTA makes of a custom reply code. */
function decisionOf(reply: ClientReply): Decision | 'replyCode' {
  if (reply.kind !== 'replyCode') return reply.kind;
  return reply.text.startsWith('5') ? 'reject' : reply.text.startsWith('4') ? 'tempfail' : 'replyCode';
}

/** The unmet expectations, each as a line saying what the milter decided instead. */
function unmetExpectations(
  expect: readonly Expectation[],
  steps: readonly TestStep[],
  result: MessageResult,
): string[] {
  const out: string[] = [];
  for (const e of expect) {
    if (e.stage === undefined) {
      // At end of message the MTA treats continue as accept; so does the final decision.
      const raw = decisionOf(result.reply);
      const got = raw === 'continue' && result.stoppedAt === 'eom' ? 'accept' : raw;
      if (got !== e.decision)
        out.push(`expected ${e.decision}, the milter decided ${got} at ${result.stoppedAt}`);
      continue;
    }
    // A stage seen several times (rcpt, header) meets the expectation when one of its replies does.
    const got = steps.filter((s) => s.stage === e.stage).map((s) => decisionOf(s.reply));
    if (!got.includes(e.decision))
      out.push(
        `expected ${e.decision}@${e.stage}, the milter decided ${got.length === 0 ? 'nothing (not reached)' : got.join(', ')} at ${e.stage}`,
      );
  }
  return out;
}

/** Postfix writes `inet:HOST:PORT`; libmilter (and milterd) `inet:PORT@HOST`. */
function postfixFormHint(v: string): string {
  const m = /^inet6?:(.+):(\d+)$/i.exec(v);
  if (m === null || v.includes('@')) return '';
  const host = (m[1] as string).replace(/^\[(.*)\]$/, '$1');
  return ` (did you mean ${isIP(host) === 6 ? 'inet6' : 'inet'}:${m[2] as string}@${host}?)`;
}

const MACRO_STAGES: readonly MacroStage[] = ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'eoh', 'eom'];

const bracket = (a: string): string => (a.startsWith('<') ? a : `<${a}>`);

/** Addresses in an address-list header value (`"A" <a@x>, b@y`), bracketed. */
function addressesIn(value: string | undefined): string[] {
  if (value === undefined) return [];
  // Commas inside quoted display names do not separate addresses.
  const items = value.replace(/"[^"]*"/g, '""').split(',');
  const out: string[] = [];
  for (const item of items) {
    const angle = /<([^<>]*)>/.exec(item);
    const bare = /[^\s<>"]+@[^\s<>"]+/.exec(item);
    const found = angle?.[1] ?? bare?.[0];
    if (found !== undefined && found !== '') out.push(bracket(found));
  }
  return out;
}

/** Add the `test` command (options only; `main` attaches the action that calls {@link runTest}). */
export function addTestCommand(program: Command): Command {
  const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];
  return (
    program
      .command('test')
      .description(
        'push a message file through any milter as an MTA would, and print its reply at each step and ' +
          'every modification it asked for',
      )
      .argument('<file>', 'message file (.eml, RFC 5322; "-" reads stdin)')
      .addOption(
        new Option('-m, --milter <spec>', 'milter to test: inet:PORT@HOST, inet6:PORT@HOST or unix:/path')
          .default(DEFAULTS.listen)
          .env('MILTERD_TEST_MILTER')
          .argParser((v) => wrap(() => parseListenSpec(v), postfixFormHint(v))),
      )
      .option('-f, --from <address>', 'envelope sender (default: the From: header, else <>)')
      .option(
        '-r, --rcpt <address>',
        'envelope recipient, repeatable (default: To: and Cc: headers)',
        collect,
      )
      .option('--connect-addr <ip>', 'SMTP client IP address sent in SMFIC_CONNECT', '127.0.0.1')
      .addOption(
        new Option('--connect-port <port>', 'SMTP client port')
          .default(54321)
          .argParser((v) => wrap(() => parseInteger(v, 0))),
      )
      .option(
        '--connect-name <hostname>',
        'SMTP client host name (default: "[ADDR]", as for an unresolved client)',
      )
      .option('--helo <hostname>', 'HELO/EHLO argument (default: --connect-name, else "[ADDR]")')
      .option('--queue-id <id>', 'queue id sent as macro i (default: random, Postfix-style)')
      .addOption(
        new Option(
          '--macro <stage:name=value>',
          `extra macro, repeatable; stage: ${MACRO_STAGES.join(', ')}`,
        ).argParser((v: string, prev: Array<[MacroStage, string, string]> | undefined) => {
          const m = /^([a-z]+):([^=]+)=(.*)$/.exec(v);
          const stage = MACRO_STAGES.find((s) => s === m?.[1]);
          if (m === null || stage === undefined)
            throw new InvalidArgumentError(
              `expected stage:name=value, stage one of: ${MACRO_STAGES.join(', ')}`,
            );
          const entry: [MacroStage, string, string] = [stage, m[2] as string, m[3] as string];
          return [...(prev ?? []), entry];
        }),
      )
      // The MTA's offer, macros and event order; more SMTP events; load (issue 16).
      .addOption(
        new Option(
          '--mta <name>',
          'play the offer, the macros of each stage and the event order of this MTA as it really sends them ' +
            '(default: Postfix-like, with the client macros of both)',
        ).choices(MTA_NAMES),
      )
      .addOption(
        new Option(
          '--version <n>',
          `protocol version offered, 2 to 6 (default ${MTA_OFFER.version})`,
        ).argParser((v) =>
          wrap(() => {
            const n = parseInteger(v, 2);
            if (n > MTA_OFFER.version) throw new Error(`expected 2 to ${MTA_OFFER.version}`);
            return n;
          }),
        ),
      )
      .addOption(
        new Option(
          '--actions <list|0xhex>',
          `SMFIF_* actions offered (default 0x${MTA_OFFER.actions.toString(16)}): ${names(ACTION_NAMES)}`,
        ).argParser((v) => parseMask(v, ACTION_NAMES)),
      )
      .addOption(
        new Option(
          '--protocol <list|0xhex>',
          `SMFIP_* protocol flags offered (default 0x${MTA_OFFER.protocol.toString(16)}): ${names(PROTOCOL_NAMES)}`,
        ).argParser((v) => parseMask(v, PROTOCOL_NAMES)),
      )
      .option(
        '--unknown <command>',
        'SMTP command the client sends after HELO, passed on as SMFIC_UNKNOWN, repeatable (--mta postfix: ' +
          'the verb only, as Postfix)',
        collect,
      )
      .option(
        '--auth-user <name>',
        'SMTP AUTH login: {auth_authen} (and {auth_type} PLAIN) at MAIL, as the MTA sends them',
      )
      .addOption(
        new Option(
          '--rcpt-macro <address:name=value>',
          "macro sent before that recipient's RCPT only, repeatable",
        ).argParser((v: string, prev: RcptMacro[] | undefined) => [...(prev ?? []), parseRcptMacro(v)]),
      )
      .addOption(
        new Option('--repeat <n>', 'play the message N times, one milter connection each; report throughput')
          .default(1)
          .argParser((v) => wrap(() => parseInteger(v, 1))),
      )
      .addOption(
        new Option('--concurrency <c>', 'with --repeat: connections at a time')
          .default(1)
          .argParser((v) => wrap(() => parseInteger(v, 1))),
      )
      .addOption(
        new Option('--timeout <duration>', 'time to wait for each reply')
          .default(DEFAULTS.clientReplyMs, formatDuration(DEFAULTS.clientReplyMs))
          .argParser((v) => wrap(() => parseDuration(v))),
      )
      .option('--json', 'print a JSON report instead of text')
      .option(
        '--output-message <file>',
        'write the message as Postfix would deliver it after the milter\'s changes ("-": stdout, the report ' +
          'then goes to stderr); a changed envelope goes above it as X-Milterd-Envelope-* fields, or with ' +
          '--json into the report',
      )
      .addOption(
        new Option(
          '--expect <decision[@stage]>',
          `expected decision, repeatable; without @stage the one that ended the message; exit ${EXIT.EXPECT} ` +
            `when the milter decided otherwise. Decisions: ${DECISIONS.join(', ')} (a 5xx/4xx reply ` +
            `code counts as reject/tempfail, continue at end of message as accept); stages: ${STEP_STAGES.join(', ')}`,
        ).argParser((v: string, prev: Expectation[] | undefined) => [...(prev ?? []), parseExpectation(v)]),
      )
  );
}

const names = (table: Array<[number, string]>): string => table.map(([, n]) => n).join(', ');

/** `--actions`/`--protocol`: a 0xHEX (or decimal) mask, or a comma-separated list of the report's names. */
function parseMask(v: string, table: Array<[number, string]>): number {
  if (/^(0x[0-9a-f]+|\d+)$/i.test(v)) return Number(v) >>> 0;
  let mask = 0;
  for (const item of v.split(',')) {
    const bit = table.find(([, n]) => n.toLowerCase() === item.trim().toLowerCase())?.[0];
    if (bit === undefined)
      throw new InvalidArgumentError(`unknown flag "${item}"; expected 0xHEX or a list of: ${names(table)}`);
    mask |= bit;
  }
  return mask;
}

function parseRcptMacro(v: string): RcptMacro {
  // An address has no ':' (source routes aside); a value may have any.
  const m = /^([^:]+):([^=]+)=(.*)$/.exec(v);
  if (m === null) throw new InvalidArgumentError('expected ADDRESS:NAME=VALUE');
  return { recipient: bracket(m[1] as string), name: m[2] as string, value: m[3] as string };
}

function wrap<T>(fn: () => T, hint = ''): T {
  try {
    return fn();
  } catch (err) {
    throw new InvalidArgumentError((err instanceof Error ? err.message : String(err)) + hint);
  }
}

/** The MTA's own name in its macros (j, {daemon_name}, {if_name}). */
const MY_HOSTNAME = 'milterd-test.localdomain';

type ScriptMacros = NonNullable<MessageScript['macros']>;
const unbracket = (a: string): string => a.replace(/^<(.*)>$/, '$1');
const pairs = (list: Array<[string, string]> | undefined): Record<string, string> | undefined =>
  list === undefined ? undefined : Object.fromEntries(list);

/**
 * The macros of each stage: the `--mta` profile's, or without one the Postfix-like default (with the
 * {client_*} macros of both MTAs), plus `--auth-user`, `--macro` and `--rcpt-macro`.
 */
function macroScript(
  o: TestCommandOptions,
  conn: ConnectionInfo,
  queueId: string,
  env: { from: string; messageId: string | undefined },
): Pick<MessageScript, 'macros' | 'recipientMacros'> {
  const auth: Record<string, string> =
    o.authUser === undefined ? {} : { '{auth_type}': 'PLAIN', '{auth_authen}': o.authUser };
  let macros: ScriptMacros;
  let rcpt: (address: string, acceptedBefore: number) => Record<string, string>;
  if (o.mta === undefined) {
    macros = {
      connect: {
        j: MY_HOSTNAME,
        '{daemon_name}': 'milterd-test',
        '{daemon_addr}': '127.0.0.1',
        '{client_addr}': conn.address,
        '{client_port}': String(conn.port),
        '{client_name}': conn.hostname,
        _: `${conn.hostname} [${conn.address}]`,
        v: 'milterd test',
      },
      helo: {},
      envfrom: { i: queueId, ...auth, '{mail_mailer}': 'smtp', '{mail_host}': MY_HOSTNAME },
      data: { i: queueId },
      eoh: { i: queueId },
      eom: { i: queueId },
    };
    rcpt = () => ({ '{rcpt_mailer}': 'smtp' });
  } else {
    const profile = MTA_PROFILES[o.mta];
    // The next hop of an address: its domain (no relayhost / SMART_HOST configured).
    const hop = (address: string): string => {
      const a = unbracket(address);
      return a.includes('@') ? a.slice(a.lastIndexOf('@') + 1) : MY_HOSTNAME;
    };
    const values = (recipient: string): MtaMacroValues => ({
      myHostname: MY_HOSTNAME,
      daemonAddr: '127.0.0.1',
      clientName: o.connectName,
      clientAddr: conn.address,
      queueId,
      sender: unbracket(env.from),
      recipient: unbracket(recipient),
      mailHost: hop(env.from),
      rcptHost: hop(recipient),
      authUser: o.authUser,
      messageId: env.messageId ?? `<${queueId}@${MY_HOSTNAME}>`,
    });
    const v = values('');
    const content = (): Record<string, string> | undefined => pairs(profile.content(v));
    macros = {
      connect: pairs(profile.connect(v)),
      helo: pairs(profile.helo(v)),
      unknown: pairs(profile.unknown(v)),
      envfrom: pairs(profile.envfrom(v)),
      data: content(),
      header: content(),
      eoh: content(),
      body: content(),
      eom: pairs(profile.eom(v)),
    };
    rcpt = (address, acceptedBefore) =>
      Object.fromEntries(profile.envrcpt(values(address), acceptedBefore > 0));
  }
  for (const [stage, name, value] of o.macro ?? [])
    if (stage !== 'envrcpt') (macros[stage] ??= {})[name] = value;
  return {
    macros,
    recipientMacros: (address, _index, acceptedBefore) => {
      const out = rcpt(address, acceptedBefore);
      for (const [stage, name, value] of o.macro ?? []) if (stage === 'envrcpt') out[name] = value;
      for (const m of o.rcptMacro ?? []) if (m.recipient === address) out[m.name] = m.value;
      return out;
    },
  };
}

function stepsOf(
  r: MessageResult,
  env: { from: string; rcpts: string[]; helo: string; conn: ConnectionInfo; unknown: string[] },
  headers: Array<[string, string]>,
  bodyBytes: number,
): TestStep[] {
  const steps: TestStep[] = [];
  const add = (stage: string, sent: string, reply: ClientReply | undefined): void => {
    if (reply !== undefined) steps.push({ stage, sent, reply });
  };
  const client = `[${env.conn.address}]:${env.conn.port}`;
  add(
    'connect',
    env.conn.hostname === `[${env.conn.address}]` ? client : `${env.conn.hostname} ${client}`,
    r.connect,
  );
  add('helo', env.helo, r.helo);
  r.unknown?.forEach((reply, i) => add('unknown', env.unknown[i] ?? '', reply));
  add('envfrom', `FROM:${env.from}`, r.envfrom);
  r.envrcpt.forEach((reply, i) => add('envrcpt', `TO:${env.rcpts[i] ?? ''}`, reply));
  add('data', 'DATA', r.data);
  r.headers.forEach((reply, i) => {
    const h = headers[i];
    add('header', h === undefined ? '' : `${h[0]}:${h[1].replace(/\n/g, '\\n')}`, reply);
  });
  add('eoh', '(end of headers)', r.eoh);
  add('body', `${bodyBytes} bytes`, r.body);
  add('eom', '(end of message)', r.eom?.reply);
  return steps;
}

/** Everything one conversation needs, worked out once from the file and the options. */
interface Conversation {
  o: TestCommandOptions;
  message: ReturnType<typeof parseEml>;
  from: string;
  rcpts: string[];
  conn: ConnectionInfo;
  helo: string;
  messageId: string | undefined;
}

/** One conversation: negotiate, play the message as the MTA would, QUIT. Rejects with a MilterError. */
async function converse(
  c: Conversation,
  queueId: string,
): Promise<{ report: TestReport; steps: TestStep[]; result: MessageResult; leadSpace: boolean }> {
  const { o, message, from, rcpts, conn, helo } = c;
  const profile = o.mta === undefined ? undefined : MTA_PROFILES[o.mta];
  // Without --mta, the client's own default offer (the same as today's MTAs').
  const offer: Partial<typeof MTA_OFFER> = profile === undefined ? {} : MTA_OFFER;
  const options: MilterClientOptions = {
    timeoutMs: o.timeout,
    version: o.version ?? offer.version,
    actions: o.actions ?? offer.actions,
    protocol: o.protocol ?? offer.protocol,
    macrosWhenSkipped: profile !== undefined,
  };
  let client: MilterClient;
  try {
    client = await MilterClient.connect(o.milter, options);
  } catch (err) {
    if (!isMilterError(err) || err instanceof MilterConfigError) throw err;
    // libmilter hangs up on an offer that lacks what the filter needs (actions, protocol steps).
    const offerHint =
      err.code === 'ERR_MILTER_CONNECTION_CLOSED' &&
      (o.version !== undefined || o.actions !== undefined || o.protocol !== undefined)
        ? '; or it refused the offer of --version/--actions/--protocol'
        : '';
    // The same error (class and code), told where: the milter's address and what might have gone wrong.
    err.message = `${o.milter}: ${err.message}${offerHint}`;
    throw err;
  }
  try {
    const leadSpace = (client.negotiated.protocol & SMFIP_HDR_LEADSPC) !== 0;
    const headers = message.headers.map(([n, v]): [string, string] => [n, headerValueToSend(v, leadSpace)]);
    const unknown = (o.unknown ?? []).map((line) => profile?.unknownLine(line) ?? line);
    const result = await playMessage(client, {
      ...macroScript(o, conn, queueId, { from, messageId: c.messageId }),
      connect: conn,
      helo,
      unknown,
      sender: from,
      recipients: rcpts,
      headers,
      body: message.body,
      abortAfter: profile?.afterMessage.some((p) => p.kind === 'abort') ?? false,
    });
    const steps = stepsOf(result, { from, rcpts, helo, conn, unknown }, message.headers, message.body.length);
    const report = buildReport(o.milter, client.negotiated, steps, result);
    // Postfix ends with ABORT, QUIT (an ABORT the filter must take outside a message).
    if (!client.closed) for (const p of profile?.beforeQuit ?? []) if (p.kind === 'abort') client.abort();
    await client.quit();
    return { report, steps, result, leadSpace };
  } catch (err) {
    client.close();
    if (!isMilterError(err)) throw err;
    err.message = `conversation with ${o.milter} failed: ${err.message}`;
    throw err;
  }
}

const newQueueId = (): string => randomBytes(5).toString('hex').toUpperCase();

/**
 * Run `milterd test FILE` with parsed options and print the report with `write`. Resolves with 0 once the
 * conversation ran and every `--expect` held (whatever the milter decided without one), else with
 * EXIT.EXPECT after one `warn` line per unmet expectation. Rejects with MilterConfigError for bad input (file,
 * envelope) and with a MilterError (ERR_MILTER_TIMEOUT, ERR_MILTER_CONNECTION_CLOSED, a protocol code…)
 * when the milter cannot be reached or breaks the protocol. With `--repeat` see {@link runRepeated}.
 */
export async function runTest(
  file: string,
  o: TestCommandOptions,
  write: (text: string) => void,
  warn: (text: string) => void = write,
): Promise<ExitCode> {
  let data: Buffer;
  try {
    data = file === '-' ? await readStdin() : await readFile(file);
  } catch (err) {
    throw new MilterConfigError(
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      { file },
    );
  }
  let message: ReturnType<typeof parseEml>;
  try {
    message = parseEml(data);
  } catch (err) {
    throw new MilterConfigError(`${file}: ${(err as Error).message}`, { file });
  }
  const header = (name: string): string | undefined =>
    message.headers
      .filter(([n]) => n.toLowerCase() === name)
      .map(([, v]) => v)
      .join(', ') || undefined;
  const from = o.from !== undefined ? bracket(o.from) : (addressesIn(header('from'))[0] ?? '<>');
  const rcpts = o.rcpt?.map(bracket) ?? [...addressesIn(header('to')), ...addressesIn(header('cc'))];
  if (rcpts.length === 0)
    throw new MilterConfigError('no recipient: give --rcpt or a To: header', { field: 'rcpt' });
  for (const m of o.rcptMacro ?? [])
    if (!rcpts.includes(m.recipient))
      throw new MilterConfigError(
        `--rcpt-macro: ${m.recipient} is not a recipient (recipients: ${rcpts.join(', ')})`,
        { field: 'rcpt-macro' },
      );
  const family = isIP(o.connectAddr);
  if (family === 0)
    throw new MilterConfigError(`--connect-addr: not an IP address: ${o.connectAddr}`, {
      field: 'connect-addr',
    });
  const conn: ConnectionInfo = {
    hostname: o.connectName ?? `[${o.connectAddr}]`,
    family: family === 6 ? 'inet6' : 'inet',
    port: o.connectPort,
    address: o.connectAddr,
  };
  // As a real client: its own name, or an address literal (a bare "localhost" alone scores as spam).
  const helo = o.helo ?? o.connectName ?? `[${o.connectAddr}]`;
  const messageId = header('message-id')?.trim();
  const c: Conversation = { o, message, from, rcpts, conn, helo, messageId };
  // The delivered-message model is Postfix 3.7's (output-message.ts); Sendmail places headers otherwise.
  if (o.outputMessage !== undefined && (o.mta === 'sendmail' || (o.repeat ?? 1) > 1)) {
    throw new MilterConfigError(
      o.mta === 'sendmail'
        ? '--output-message models Postfix 3.7 delivery; it cannot be combined with --mta sendmail'
        : '--output-message writes one message; it cannot be combined with --repeat',
      { field: 'output-message' },
    );
  }

  if ((o.repeat ?? 1) > 1) return runRepeated(c, write, warn);
  const { report, steps, result, leadSpace } = await converse(c, o.queueId ?? newQueueId());
  if (o.outputMessage !== undefined) {
    const received = { message, sender: from, recipients: result.acceptedRecipients };
    const options = { leadingSpace: leadSpace, json: o.json === true };
    report.delivered = await writeOutputMessage(
      o.outputMessage,
      received,
      result,
      report.result.outcome,
      options,
    );
  }
  // With the message on stdout, the report goes to stderr.
  (o.outputMessage === '-' ? warn : write)(
    o.json === true ? JSON.stringify(report, null, 2) + '\n' : formatReportText(report),
  );
  const unmet = unmetExpectations(o.expect ?? [], steps, result);
  for (const line of unmet) warn(`milterd: ${line}\n`);
  return unmet.length === 0 ? EXIT.OK : EXIT.EXPECT;
}

/** Nearest-rank percentile of sorted values (0 for none). */
function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

/** The `--repeat` summary (the `--json` document then). */
export interface RepeatReport {
  milter: string;
  repeat: number;
  concurrency: number;
  /** Conversations that ran to the end, and those that failed (refused, timeout, protocol error). */
  completed: number;
  failed: number;
  /** Completed messages per outcome. */
  outcomes: Record<string, number>;
  elapsedMs: number;
  messagesPerSecond: number;
  /** Whole messages: from opening the connection to the filter having closed it after QUIT. */
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Distinct failures and unmet expectations, with how many runs had each. */
  errors: Array<{ message: string; count: number }>;
  unmetExpectations: Array<{ message: string; count: number }>;
}

/**
 * `--repeat N --concurrency C`: N conversations, C at a time, each its own connection (one SMTP session,
 * one message, as milter-test-server's threads). Prints the summary; resolves with EXIT.MILTER when a
 * conversation failed, else EXIT.EXPECT when an expectation missed in some run, else 0.
 */
async function runRepeated(
  c: Conversation,
  write: (text: string) => void,
  warn: (text: string) => void,
): Promise<ExitCode> {
  const n = c.o.repeat ?? 1;
  const concurrency = Math.min(n, c.o.concurrency ?? 1);
  const latencies: number[] = [];
  const outcomes: Record<string, number> = {};
  const errors = new Map<string, number>();
  const unmet = new Map<string, number>();
  const count = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
  let started = 0;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    while (started < n) {
      started++;
      const begin = performance.now();
      try {
        const { report, steps, result } = await converse(c, c.o.queueId ?? newQueueId());
        latencies.push(performance.now() - begin);
        outcomes[report.result.outcome] = (outcomes[report.result.outcome] ?? 0) + 1;
        for (const line of unmetExpectations(c.o.expect ?? [], steps, result)) count(unmet, line);
      } catch (err) {
        if (!isMilterError(err)) throw err;
        count(errors, err.message);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsedMs = performance.now() - t0;
  latencies.sort((a, b) => a - b);
  const ms = (x: number): number => Math.round(x * 1000) / 1000;
  const list = (m: Map<string, number>): Array<{ message: string; count: number }> =>
    [...m].map(([message, k]) => ({ message, count: k }));
  const failed = [...errors.values()].reduce((a, b) => a + b, 0);
  const report: RepeatReport = {
    milter: c.o.milter,
    repeat: n,
    concurrency,
    completed: latencies.length,
    failed,
    outcomes,
    elapsedMs: ms(elapsedMs),
    messagesPerSecond: Math.round((latencies.length / (elapsedMs / 1000)) * 10) / 10,
    latencyMs: {
      p50: ms(percentile(latencies, 50)),
      p90: ms(percentile(latencies, 90)),
      p99: ms(percentile(latencies, 99)),
      max: ms(latencies.at(-1) ?? 0),
    },
    errors: list(errors),
    unmetExpectations: list(unmet),
  };
  write(c.o.json === true ? JSON.stringify(report, null, 2) + '\n' : formatRepeatText(report));
  for (const e of report.errors) warn(`milterd: ${e.message} (${e.count} of ${n} runs)\n`);
  for (const e of report.unmetExpectations) warn(`milterd: ${e.message} (${e.count} of ${n} runs)\n`);
  return failed > 0 ? EXIT.MILTER : unmet.size > 0 ? EXIT.EXPECT : EXIT.OK;
}

function formatRepeatText(r: RepeatReport): string {
  const outcomes = Object.entries(r.outcomes).map(([k, v]) => `${k} ${v}`);
  const l = r.latencyMs;
  return [
    `milter     ${r.milter}`,
    `runs       ${r.repeat} (${r.concurrency} at a time): ${r.completed} completed, ${r.failed} failed`,
    `outcomes   ${outcomes.join(', ') || '(none)'}`,
    `elapsed    ${(r.elapsedMs / 1000).toFixed(3)} s, ${r.messagesPerSecond} msg/s`,
    `latency    p50 ${l.p50.toFixed(1)} ms, p90 ${l.p90.toFixed(1)} ms, p99 ${l.p99.toFixed(1)} ms, max ${l.max.toFixed(1)} ms`,
    '',
  ].join('\n');
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
