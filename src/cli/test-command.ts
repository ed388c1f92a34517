/**
 * `milterd test`: push a message file with an envelope through any milter (ours, or any libmilter
 * filter) as an MTA would, and report every reply and modification. A modern miltertest.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  MilterClient,
  playMessage,
  type ClientReply,
  type MessageResult,
  type MessageStage,
} from '../client/index.js';
import type { ConnectionInfo, MacroStage } from '../filter.js';
import { MilterConfigError, MilterError, isMilterError } from '../errors.js';
import { SMFIP_HDR_LEADSPC } from '../protocol/constants.js';
import { MESSAGE_STAGES } from '../client/transaction.js';
import { headerValueToSend, parseEml } from './eml.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { buildReport, formatReportText, type TestStep } from './test-report.js';
import { writeOutputMessage } from './test-output.js';
import { parseDuration, parseInteger, parseListenSpec } from './values.js';

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
  return program
    .command('test')
    .description(
      'push a message file through any milter as an MTA would, and print its reply at each step and ' +
        'every modification it asked for',
    )
    .argument('<file>', 'message file (.eml, RFC 5322; "-" reads stdin)')
    .addOption(
      new Option('-m, --milter <spec>', 'milter to test: inet:PORT@HOST, inet6:PORT@HOST or unix:/path')
        .default('inet:8890@127.0.0.1')
        .env('MILTERD_TEST_MILTER')
        .argParser((v) => wrap(() => parseListenSpec(v), postfixFormHint(v))),
    )
    .option('-f, --from <address>', 'envelope sender (default: the From: header, else <>)')
    .option('-r, --rcpt <address>', 'envelope recipient, repeatable (default: To: and Cc: headers)', collect)
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
    .addOption(
      new Option('--timeout <duration>', 'time to wait for each reply')
        .default(10_000, '10s')
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
    );
}

function wrap<T>(fn: () => T, hint = ''): T {
  try {
    return fn();
  } catch (err) {
    throw new InvalidArgumentError((err instanceof Error ? err.message : String(err)) + hint);
  }
}

/** The macros Postfix would send at each stage, plus `--macro` extras. */
function macrosFor(
  o: TestCommandOptions,
  conn: ConnectionInfo,
  queueId: string,
): Partial<Record<MacroStage, Record<string, string>>> {
  const out: Partial<Record<MacroStage, Record<string, string>>> = {
    connect: {
      j: 'milterd-test.localdomain',
      '{daemon_name}': 'milterd-test',
      '{daemon_addr}': '127.0.0.1',
      '{client_addr}': conn.address,
      '{client_port}': String(conn.port),
      '{client_name}': conn.hostname,
      _: `${conn.hostname} [${conn.address}]`,
      v: 'milterd test',
    },
    helo: {},
    envfrom: { i: queueId, '{mail_mailer}': 'smtp', '{mail_host}': 'milterd-test.localdomain' },
    envrcpt: { '{rcpt_mailer}': 'smtp' },
    data: { i: queueId },
    eoh: { i: queueId },
    eom: { i: queueId },
  };
  for (const [stage, name, value] of o.macro ?? []) (out[stage] ??= {})[name] = value;
  return out;
}

function stepsOf(
  r: MessageResult,
  env: { from: string; rcpts: string[]; helo: string; conn: ConnectionInfo },
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
  add('mail', `FROM:${env.from}`, r.mail);
  r.rcpt.forEach((reply, i) => add('rcpt', `TO:${env.rcpts[i] ?? ''}`, reply));
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

/**
 * Run `milterd test FILE` with parsed options and print the report with `write`. Resolves with 0 once the
 * conversation ran and every `--expect` held (whatever the milter decided without one), else with
 * EXIT.EXPECT after one `warn` line per unmet expectation. Rejects with MilterConfigError for bad input (file,
 * envelope) and with a MilterError (ERR_MILTER_TIMEOUT, ERR_MILTER_CONNECTION_CLOSED, a protocol code…)
 * when the milter cannot be reached or breaks the protocol.
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
  const queueId = o.queueId ?? randomBytes(5).toString('hex').toUpperCase();
  // As a real client: its own name, or an address literal (a bare "localhost" alone scores as spam).
  const helo = o.helo ?? o.connectName ?? `[${o.connectAddr}]`;

  let client: MilterClient;
  try {
    client = await MilterClient.connect(o.milter, { timeoutMs: o.timeout });
  } catch (err) {
    if (!isMilterError(err) || err instanceof MilterConfigError) throw err;
    throw new MilterError(err.code, `${o.milter}: ${err.message}`, { cause: err });
  }
  try {
    const leadSpace = (client.negotiated.protocol & SMFIP_HDR_LEADSPC) !== 0;
    const headers = message.headers.map(([n, v]): [string, string] => [n, headerValueToSend(v, leadSpace)]);
    const result = await playMessage(client, {
      macros: macrosFor(o, conn, queueId),
      connect: conn,
      helo,
      sender: from,
      recipients: rcpts,
      headers,
      body: message.body,
    });
    const steps = stepsOf(result, { from, rcpts, helo, conn }, message.headers, message.body.length);
    const report = buildReport(o.milter, client.negotiated, steps, result);
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
    await client.quit();
    const unmet = unmetExpectations(o.expect ?? [], steps, result);
    for (const line of unmet) warn(`milterd: ${line}\n`);
    return unmet.length === 0 ? EXIT.OK : EXIT.EXPECT;
  } catch (err) {
    client.close();
    if (!isMilterError(err) || err instanceof MilterConfigError) throw err; // an --output-message file error
    throw new MilterError(err.code, `conversation with ${o.milter} failed: ${err.message}`, { cause: err });
  }
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
