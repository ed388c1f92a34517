/**
 * The end-to-end environment (recording sink + milterd with the scripted filter + one real MTA) and the
 * scenario runner: plays a scenario's SMTP sessions, waits until the MTA has finished with every message
 * and every milter connection is closed, then checks the per-MTA expectations.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { pino, type Logger } from 'pino';
// The scenario filters use the package's public surface only (src/index.js is what `milterd` exports).
import {
  createMilterServer,
  type Filter,
  type MilterObserver,
  type MilterServer,
} from '../../../src/index.js';
import {
  createShutdownPolicy,
  withShutdownPolicy,
  type PolicyDecisionEvent,
  type PolicyFiredEvent,
  type PolicyHookErrorEvent,
} from '../../../src/policy/index.js';
import { PostfixMta } from './postfix.js';
import { SendmailMta } from './sendmail.js';
import { SmtpSink, type SinkMessage } from './sink.js';
import { SmtpClient, type SmtpReply } from './smtp-client.js';
import { messageScenarioFilter } from './message-scenario-filter.js';
import { ScriptedFilter, scriptedHook, type ScriptedPriv } from './scripted-filter.js';
import { openServerConnections, type Mta, type MtaKind } from './mta.js';
import { makeWorkDir, waitFor } from './proc.js';
import {
  contentBytes,
  type DeliveredExpect,
  type EventsExpect,
  type FilterExpect,
  type HeldExpect,
  type MessageSpec,
  type OutcomeExpect,
  type PolicyExpect,
  type ReplyExpect,
  type Scenario,
  type SessionSpec,
  type StepExpect,
} from './scenario.js';

export interface E2eOptions {
  kind: MtaKind;
  /** Milter transport between MTA and milterd. */
  transport?: 'inet' | 'unix';
  strace?: boolean;
}

/** Counts from the server's observer, to cross-check `close` against accepted connections. */
class ConnectionCounter implements MilterObserver {
  opened = 0;
  closed = 0;
  connectionOpened(): void {
    this.opened++;
  }
  connectionClosed(): void {
    this.closed++;
  }
}

/** The shutdown policy's events during one scenario, in the order they were emitted. */
export class PolicyLog {
  readonly decisions: PolicyDecisionEvent[] = [];
  readonly fired: PolicyFiredEvent[] = [];
  readonly hookErrors: PolicyHookErrorEvent[] = [];
  reset(): void {
    this.decisions.length = 0;
    this.fired.length = 0;
    this.hookErrors.length = 0;
  }
}

/**
 * The filter given to the milter server once: every property read goes to the current scenario's filter,
 * so a scenario can run the scripted filter as it is or under its own shutdown policy. The session reads
 * the filter's callbacks (and `negotiate`) per milter connection, and each scenario starts with none open.
 */
function switchableFilter(current: () => Filter<ScriptedPriv>): Filter<ScriptedPriv> {
  return new Proxy<Filter<ScriptedPriv>>(
    {},
    {
      get: (_target, key) => Reflect.get(current(), key) as unknown,
      has: (_target, key) => Reflect.has(current(), key),
    },
  );
}

export class E2eEnv {
  readonly sink = new SmtpSink();
  readonly scripted = new ScriptedFilter();
  readonly counter = new ConnectionCounter();
  readonly policyLog = new PolicyLog();
  server: MilterServer | undefined;
  mta: Mta | undefined;
  dir = '';
  private logger: Logger | undefined;
  private active: Filter<ScriptedPriv> = this.scripted.filter();

  constructor(readonly options: E2eOptions) {}

  static async start(options: E2eOptions): Promise<E2eEnv> {
    const env = new E2eEnv(options);
    try {
      await env.boot();
    } catch (error) {
      await env.stop();
      throw error;
    }
    return env;
  }

  private async boot(): Promise<void> {
    this.dir = await makeWorkDir(`milterd-e2e-${this.options.kind}-`);
    await this.sink.start();
    // MILTERD_E2E_LOG=1: milterd's own debug log goes to milterd.log in the work folder (keep it with MILTERD_E2E_KEEP=1).
    const logger =
      process.env.MILTERD_E2E_LOG === '1'
        ? pino({ level: 'trace' }, pino.destination({ dest: path.join(this.dir, 'milterd.log'), sync: true }))
        : undefined;
    this.logger = logger;
    this.server = createMilterServer({
      filter: switchableFilter(() => this.active),
      logger,
      observer: this.counter,
      // Longer than the MTAs' own milter timeouts, so that a hanging filter is timed out by the MTA.
      timeouts: { callbackMs: 30_000 },
      socketMode: 0o666,
    });
    let milter: { kind: 'inet'; port: number } | { kind: 'unix'; path: string };
    if (this.options.transport === 'unix') {
      const socketPath = path.join(this.dir, 'milterd.sock');
      await this.server.listen(`unix:${socketPath}`);
      milter = { kind: 'unix', path: socketPath };
    } else {
      const address = await this.server.listen('inet:0@127.0.0.1');
      milter = { kind: 'inet', port: address.port ?? 0 };
    }
    const mtaOptions = {
      dir: path.join(this.dir, this.options.kind),
      sinkPort: this.sink.port,
      milter,
      strace: this.options.strace,
    };
    this.mta =
      this.options.kind === 'postfix'
        ? await PostfixMta.start(mtaOptions)
        : await SendmailMta.start(mtaOptions);
  }

  /**
   * Set up the filter for a scenario: the scripted filter with the scenario's `filter:` section, wrapped
   * with `withShutdownPolicy` when the scenario has a `policy:` section (the policy file's rules, then the
   * test hooks registered first or last, in list order; every policy event is recorded in `policyLog`).
   */
  prepare(scenario: Scenario): void {
    this.scripted.reset(scenario.filter);
    this.policyLog.reset();
    const message = scenario.filter?.message;
    const scripted = message
      ? messageScenarioFilter<ScriptedPriv>(message, (ctx) => this.scripted.note(ctx, 'close', ''))
      : this.scripted.filter();
    if (!scenario.policyConfig) {
      this.active = scripted;
      return;
    }
    const policy = createShutdownPolicy(scenario.policyConfig, this.logger ? { logger: this.logger } : {});
    for (const hook of scenario.policy?.hooks ?? []) {
      if (hook.at === 'first') policy.registerFirst(hook.name, scriptedHook(hook));
      else policy.registerLast(hook.name, scriptedHook(hook));
    }
    policy.on('decision', (e) => this.policyLog.decisions.push(e));
    policy.on('fired', (e) => this.policyLog.fired.push(e));
    policy.on('hookError', (e) => this.policyLog.hookErrors.push(e));
    this.active = withShutdownPolicy(scripted, policy);
  }

  /** Stop the MTA (every process by pid), milterd and the sink. Safe to call after a failed start. */
  async stop(): Promise<void> {
    this.scripted.releaseHangs();
    const errors: unknown[] = [];
    await this.mta?.stop().catch((e: unknown) => errors.push(e));
    this.mta = undefined;
    await this.server?.close({ deadlineMs: 2000 }).catch((e: unknown) => errors.push(e));
    this.server = undefined;
    await this.sink.stop().catch((e: unknown) => errors.push(e));
    // Work folders (configs, queues, logs) are kept only on request, for debugging.
    if (this.dir && process.env.MILTERD_E2E_KEEP !== '1') {
      await rm(this.dir, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    }
    if (errors.length > 0) throw errors[0];
  }
}

// ---------------------------------------------------------------------------------------------------
// Playing a scenario

export interface StepResult {
  session: number;
  step: string;
  reply: SmtpReply | undefined;
}

function messageBytes(spec: MessageSpec | undefined, from: string, to: string[]): Buffer {
  const m = spec ?? {};
  const lines: string[] = [];
  if (!m.noDefaultHeaders) {
    lines.push(`From: ${from.replace(/^<|>$/g, '') || 'nobody@example.org'}`);
    lines.push(`To: ${to.map((t) => t.replace(/^<|>$/g, '')).join(', ') || 'nobody@example.net'}`);
    lines.push(`Subject: ${m.subject ?? 'milterd e2e'}`);
  }
  for (const [name, value] of m.headers ?? []) {
    // Generated values (long folded headers) end without their last fold.
    lines.push(
      `${name}: ${typeof value === 'string' ? value : contentBytes(value).toString('latin1').trimEnd()}`,
    );
  }
  const head = Buffer.from(lines.map((l) => `${l}\r\n`).join('') + '\r\n', 'latin1');
  const body = contentBytes(m.body ?? 'Hello from the milterd end-to-end tests.\n');
  return Buffer.concat([head, body]);
}

function resolveExpect(expect: StepExpect | undefined, kind: MtaKind): ReplyExpect | undefined {
  if (expect === undefined) return undefined;
  if (typeof expect === 'number') return { code: expect };
  const { postfix, sendmail, ...base } = expect;
  return { ...base, ...(kind === 'postfix' ? postfix : sendmail) };
}

class Checker {
  readonly failures: string[] = [];
  check(ok: boolean, message: string): void {
    if (!ok) this.failures.push(message);
  }
}

async function checkReply(
  c: Checker,
  client: SmtpClient,
  label: string,
  reply: SmtpReply,
  expect: ReplyExpect | undefined,
): Promise<void> {
  if (!expect) return;
  if (expect.code !== undefined) {
    c.check(
      reply.code === expect.code,
      `${label}: expected code ${expect.code}, got ${JSON.stringify(reply.text)}`,
    );
  }
  if (expect.text !== undefined) {
    c.check(
      new RegExp(expect.text).test(reply.text),
      `${label}: reply ${JSON.stringify(reply.text)} !~ /${expect.text}/`,
    );
  }
  if (expect.hangup === true) {
    const closed = reply.hangup || (await client.waitHangup(10_000));
    c.check(closed, `${label}: expected the server to hang up after ${JSON.stringify(reply.text)}`);
  } else if (expect.hangup === false) {
    c.check(!reply.hangup && !client.isClosed, `${label}: the server hung up unexpectedly`);
  }
}

async function playSession(
  c: Checker,
  env: E2eEnv,
  mta: Mta,
  session: SessionSpec,
  index: number,
  results: StepResult[],
): Promise<string[]> {
  const kind = mta.kind;
  const client = new SmtpClient();
  const host = session.family === 'ipv6' ? '::1' : '127.0.0.1';
  await client.connect(host, mta.port);
  const label = (s: string): string => `session ${index + 1} ${s}`;
  try {
    if (session.greeting !== false) {
      const reply = await client.readReply();
      results.push({ session: index, step: 'greeting', reply });
      await checkReply(c, client, label('greeting'), reply, resolveExpect(session.greeting ?? 220, kind));
    }
    for (const [j, step] of session.steps.entries()) {
      if ('send' in step) {
        const reply = await client.command(step.send);
        results.push({ session: index, step: step.send, reply });
        await checkReply(
          c,
          client,
          label(`step ${j + 1} "${step.send}"`),
          reply,
          resolveExpect(step.expect, kind),
        );
      } else if ('message' in step) {
        const reply = await client.content(messageBytes(step.message, '', []));
        results.push({ session: index, step: 'message', reply });
        await checkReply(c, client, label(`step ${j + 1} message`), reply, resolveExpect(step.expect, kind));
      } else if ('raw' in step) {
        client.write(Buffer.from(step.raw.replace(/\r?\n/g, '\r\n'), 'latin1'));
        results.push({ session: index, step: 'raw', reply: undefined });
      } else if ('close' in step) {
        client.close();
        results.push({ session: index, step: 'close', reply: undefined });
      } else {
        const t = step.transaction;
        const mail = await client.command(`MAIL FROM:${t.from}${t.mailArgs ? ` ${t.mailArgs}` : ''}`);
        results.push({ session: index, step: `MAIL FROM:${t.from}`, reply: mail });
        let final = mail;
        let ok = mail.code === 250;
        if (ok) {
          let accepted = 0;
          for (const rcpt of t.to) {
            const r = await client.command(`RCPT TO:${rcpt}`);
            results.push({ session: index, step: `RCPT TO:${rcpt}`, reply: r });
            final = r;
            if (r.code === 250) accepted++;
            if (r.code === 0 || r.code === 421) break;
          }
          ok = accepted > 0;
        }
        if (ok) {
          const data = await client.command('DATA');
          results.push({ session: index, step: 'DATA', reply: data });
          final = data;
          if (data.code === 354) {
            final = await client.content(messageBytes(t.message, t.from, t.to));
            results.push({ session: index, step: 'message', reply: final });
          }
        }
        await checkReply(
          c,
          client,
          label(`step ${j + 1} transaction from ${t.from}`),
          final,
          resolveExpect(step.expect, kind),
        );
      }
    }
  } finally {
    client.close();
  }
  return client.transcript;
}

function pattern(expected: string): (actual: string) => boolean {
  const m = /^\/(.*)\/([a-z]*)$/s.exec(expected);
  if (m) {
    const re = new RegExp(m[1] ?? '', m[2]);
    return (actual) => re.test(actual);
  }
  return (actual) => actual === expected;
}

function countMatches(expected: number | string, actual: number): boolean {
  if (typeof expected === 'number') return actual === expected;
  const m = /^>=\s*(\d+)$/.exec(expected.trim());
  if (m) return actual >= Number(m[1]);
  return String(actual) === expected.trim();
}

/** Why `message` does not satisfy `expect` (empty list = it does). */
function deliveredMismatches(expect: DeliveredExpect, message: SinkMessage): string[] {
  const out: string[] = [];
  if (expect.from !== undefined && message.from !== expect.from)
    out.push(`from ${message.from} != ${expect.from}`);
  for (const p of expect.fromParams ?? []) {
    if (!message.fromParams.includes(p))
      out.push(`MAIL param ${p} missing (${message.fromParams.join(' ')})`);
  }
  const rcpts = message.recipients.map((r) => r.address);
  if (expect.to !== undefined) {
    const a = [...rcpts].sort().join(' ');
    const e = [...expect.to].sort().join(' ');
    if (a !== e) out.push(`recipients [${a}] != [${e}]`);
  }
  for (const [addr, params] of Object.entries(expect.rcptParams ?? {})) {
    const r = message.recipients.find((x) => x.address === addr);
    for (const p of params) {
      if (!r?.params.includes(p))
        out.push(`RCPT ${addr} param ${p} missing (${r?.params.join(' ') ?? 'no such rcpt'})`);
    }
  }
  const valuesOf = (name: string): string[] =>
    message.headers.filter((h) => h.name.toLowerCase() === name.toLowerCase()).map((h) => h.value);
  for (const [name, want] of Object.entries(expect.headers ?? {})) {
    const values = valuesOf(name);
    if (Array.isArray(want)) {
      const ok = values.length === want.length && want.every((w, i) => pattern(w)(values[i] ?? ''));
      if (!ok) out.push(`header ${name}: ${JSON.stringify(values)} != ${JSON.stringify(want)}`);
    } else if (!values.some((v) => pattern(want)(v))) {
      out.push(`header ${name}: ${JSON.stringify(values)} has no ${JSON.stringify(want)}`);
    }
  }
  for (const name of expect.absent ?? []) {
    if (valuesOf(name).length > 0) out.push(`header ${name} present: ${JSON.stringify(valuesOf(name))}`);
  }
  if (expect.firstHeader !== undefined) {
    const first = message.headers[0]?.name ?? '';
    if (first.toLowerCase() !== expect.firstHeader.toLowerCase())
      out.push(`first header ${first} != ${expect.firstHeader}`);
  }
  if (expect.order !== undefined) {
    const names = message.headers.map((h) => h.name.toLowerCase());
    let from = 0;
    for (const name of expect.order) {
      const at = names.indexOf(name.toLowerCase(), from);
      if (at < 0) {
        out.push(`header order ${expect.order.join(',')} not found in ${names.join(',')}`);
        break;
      }
      from = at + 1;
    }
  }
  if (expect.body !== undefined) {
    const want = contentBytes(expect.body);
    if (!want.equals(message.body)) {
      const got =
        message.body.length > 200
          ? `${message.body.length} bytes`
          : JSON.stringify(message.body.toString('latin1'));
      out.push(
        `body differs: got ${got}, expected ${want.length > 200 ? `${want.length} bytes` : JSON.stringify(want.toString('latin1'))}`,
      );
    }
  }
  if (expect.bodyContains !== undefined && !message.body.toString('latin1').includes(expect.bodyContains)) {
    out.push(`body lacks ${JSON.stringify(expect.bodyContains)}`);
  }
  return out;
}

function checkDelivered(c: Checker, expected: OutcomeExpect['delivered'], messages: SinkMessage[]): void {
  if (expected === undefined) return;
  const list = typeof expected === 'number' ? undefined : expected;
  const count = typeof expected === 'number' ? expected : expected.length;
  c.check(messages.length === count, `sink received ${messages.length} message(s), expected ${count}`);
  if (!list) return;
  const left = [...messages];
  list.forEach((want, i) => {
    const reasons: string[] = [];
    const at = left.findIndex((m) => {
      const r = deliveredMismatches(want, m);
      reasons.push(`#${m.seq}: ${r.join('; ')}`);
      return r.length === 0;
    });
    if (at >= 0) left.splice(at, 1);
    else
      c.check(
        false,
        `delivered[${i}] matches no received message:\n    ${reasons.join('\n    ') || 'nothing received'}`,
      );
  });
}

function checkHeld(
  c: Checker,
  expected: OutcomeExpect['held'],
  held: Awaited<ReturnType<Mta['held']>>,
): void {
  const list: HeldExpect[] | undefined =
    typeof expected === 'number' || expected === undefined ? undefined : expected;
  const count = expected === undefined ? 0 : typeof expected === 'number' ? expected : expected.length;
  c.check(held.length === count, `held/quarantined: ${held.length}, expected ${count}`);
  for (const [i, want] of (list ?? []).entries()) {
    const ok = held.some(
      (h) =>
        (want.reason === undefined || new RegExp(want.reason).test(h.reason ?? '')) &&
        (want.headers === undefined || new RegExp(want.headers).test(h.headerText)),
    );
    c.check(
      ok,
      `held[${i}] ${JSON.stringify(want)} matches none of ${JSON.stringify(held.map((h) => h.reason))}`,
    );
  }
}

function checkFilter(c: Checker, env: E2eEnv, expected: FilterExpect | undefined): void {
  const s = env.scripted;
  const conns = s.connections();
  // Always: close exactly once per milter connection, and as its last callback.
  for (const conn of conns) {
    const calls = s.calls.filter((x) => x.conn === conn);
    c.check(s.closeCount(conn) === 1, `milter connection ${conn}: close called ${s.closeCount(conn)} times`);
    c.check(
      calls[calls.length - 1]?.cb === 'close',
      `milter connection ${conn}: close is not the last callback`,
    );
  }
  c.check(
    env.counter.opened === env.counter.closed,
    `milterd: ${env.counter.opened} connections opened, ${env.counter.closed} closed`,
  );
  const closes = s.calls.filter((x) => x.cb === 'close').length;
  c.check(
    closes === env.counter.opened,
    `close called ${closes} times for ${env.counter.opened} accepted connections`,
  );
  if (!expected) return;
  if (expected.connections !== undefined) {
    c.check(
      conns.length === expected.connections,
      `milter connections: ${conns.length}, expected ${expected.connections}`,
    );
  }
  for (const [cb, want] of Object.entries(expected.calls ?? {})) {
    const n = s.calls.filter((x) => x.cb === cb).length;
    c.check(countMatches(want, n), `filter ${cb} called ${n} times, expected ${want}`);
  }
  for (const [stage, macros] of Object.entries(expected.macros ?? {})) {
    const calls = s.calls.filter((x) => x.cb === stage);
    for (const [name, re] of Object.entries(macros)) {
      const seen = calls.map((x) => x.macros[name]);
      c.check(
        seen.some((v) => v !== undefined && new RegExp(re).test(v)),
        `macro ${name} at ${stage}: seen ${JSON.stringify(seen)}, expected /${re}/`,
      );
    }
  }
  for (const [stage, patterns] of Object.entries(expected.args ?? {})) {
    const args = s.calls.filter((x) => x.cb === stage).map((x) => x.arg);
    for (const re of patterns) {
      c.check(
        args.some((a) => new RegExp(re).test(a)),
        `no ${stage} call with argument /${re}/ in ${JSON.stringify(args)}`,
      );
    }
  }
  c.check(s.actionErrors.length === 0, `EOM actions failed in the filter: ${s.actionErrors.join('; ')}`);
}

/** Does `actual` have every field of `want` (exact, or `/regex/`; `counters` compared one by one)? */
function eventMismatches(want: object, actual: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [key, value] of Object.entries(want) as Array<[string, unknown]>) {
    const got = actual[key];
    if (key === 'counters' && typeof value === 'object' && value !== null) {
      const counters = (typeof got === 'object' && got !== null ? got : {}) as Record<string, unknown>;
      for (const [name, n] of Object.entries(value as Record<string, unknown>)) {
        if (counters[name] !== n) out.push(`counters.${name} ${String(counters[name])} != ${String(n)}`);
      }
    } else if (!pattern(String(value))(String(got))) {
      out.push(`${key} ${JSON.stringify(got)} != ${JSON.stringify(value)}`);
    }
  }
  return out;
}

function checkEvents<T extends object>(
  c: Checker,
  label: string,
  expected: EventsExpect<T> | undefined,
  actual: Array<Record<string, unknown>>,
): void {
  if (expected === undefined) return;
  const shown = actual.map((a) => JSON.stringify(a)).join('\n    ') || '(none)';
  if (!Array.isArray(expected)) {
    c.check(
      countMatches(expected, actual.length),
      `policy ${label}: ${actual.length} event(s), expected ${expected}:\n    ${shown}`,
    );
    return;
  }
  c.check(
    actual.length === expected.length,
    `policy ${label}: ${actual.length} event(s), expected ${expected.length}:\n    ${shown}`,
  );
  expected.forEach((want, i) => {
    const got = actual[i];
    if (got === undefined) return;
    const why = eventMismatches(want, got);
    c.check(why.length === 0, `policy ${label}[${i}]: ${why.join('; ')} (in ${JSON.stringify(got)})`);
  });
}

/** The policy events as the scenario names them (a hook error by its hook and coded error). */
function policyViews(log: PolicyLog): Record<keyof PolicyExpect, Array<Record<string, unknown>>> {
  return {
    decisions: log.decisions.map((e) => ({ ...e })),
    fired: log.fired.map((e) => ({ ...e })),
    hookErrors: log.hookErrors.map((e) => ({
      connectionId: e.connectionId,
      hook: e.hook,
      code: e.error.code,
      message: e.error.message,
    })),
  };
}

function checkPolicy(c: Checker, log: PolicyLog, expected: PolicyExpect | undefined): void {
  if (!expected) return;
  const views = policyViews(log);
  checkEvents(c, 'decisions', expected.decisions, views.decisions);
  checkEvents(c, 'fired', expected.fired, views.fired);
  checkEvents(c, 'hookErrors', expected.hookErrors, views.hookErrors);
}

/** The queue id in a 250 reply to the end of DATA (Postfix: `queued as ID`; Sendmail: `ID Message accepted`). */
export function queueIdOf(reply: string): string | undefined {
  return (
    /\bqueued as ([0-9A-Za-z]+)/.exec(reply)?.[1] ??
    /^250[ -]\d\.\d+\.\d+ ([0-9A-Za-z]+) Message accepted/m.exec(reply)?.[1]
  );
}

/**
 * Every message the client was told was accepted (250 to the end of DATA) is in the sink: the sink's
 * message carries the MTA's queue id in its Received header (`... with ESMTP id ID`).
 */
function checkAcceptedDelivered(c: Checker, results: StepResult[], messages: SinkMessage[]): void {
  for (const r of results) {
    if (r.step !== 'message' || r.reply?.code !== 250) continue;
    const label = `session ${r.session + 1}: ${JSON.stringify(r.reply.text)}`;
    const id = queueIdOf(r.reply.text);
    if (id === undefined) {
      c.check(false, `${label}: no queue id in this 250 reply`);
      continue;
    }
    const idRe = new RegExp(`\\bid ${id}\\b`);
    const found = messages.some((m) =>
      m.headers.some((h) => h.name.toLowerCase() === 'received' && idRe.test(h.value)),
    );
    c.check(
      found,
      `${label}: the client was told the message was accepted, but the sink has no message ${id}`,
    );
  }
}

function mergedOutcome(s: Scenario, kind: MtaKind): OutcomeExpect {
  const both = s.expect.both ?? {};
  const own = s.expect[kind] ?? {};
  return {
    ...both,
    ...own,
    filter: both.filter || own.filter ? { ...both.filter, ...own.filter } : undefined,
    policy: both.policy || own.policy ? { ...both.policy, ...own.policy } : undefined,
  };
}

/** Run one scenario against the environment's MTA; throws an Error listing every mismatch. */
export async function runScenario(env: E2eEnv, scenario: Scenario): Promise<void> {
  const mta = env.mta;
  if (!mta) throw new Error('the MTA is not running');
  env.sink.reset();
  await mta.clearHeld();
  env.prepare(scenario);
  env.counter.opened = 0;
  env.counter.closed = 0;
  const c = new Checker();
  const results: StepResult[] = [];
  const transcripts: string[] = [];
  try {
    for (const [i, session] of scenario.sessions.entries()) {
      transcripts.push(`--- session ${i + 1}`, ...(await playSession(c, env, mta, session, i, results)));
    }
    // The MTA is done with every accepted message once its queue is empty (held ones excepted).
    await waitFor(
      'the MTA queue to drain',
      async () => ((await mta.pendingCount()) === 0 ? true : undefined),
      {
        timeoutMs: 30_000,
      },
    );
    env.scripted.releaseHangs();
    // The MTA has closed every SMTP session (so it has opened every milter connection it was going to).
    await waitFor(
      'the MTA to close every SMTP session',
      async () => ((await openServerConnections(mta.port)) === 0 ? true : undefined),
      { timeoutMs: 30_000 },
    );
    // Every milter connection ends (the MTA sends QUIT or closes once the SMTP session is over).
    await waitFor(
      'every milter connection to close',
      () =>
        env.counter.opened === env.counter.closed &&
        env.scripted.connections().every((conn) => env.scripted.closeCount(conn) > 0)
          ? true
          : undefined,
      { timeoutMs: 30_000 },
    );
    const outcome = mergedOutcome(scenario, mta.kind);
    checkDelivered(c, outcome.delivered, env.sink.messages);
    checkHeld(c, outcome.held, await mta.held());
    checkFilter(c, env, outcome.filter);
    checkPolicy(c, env.policyLog, outcome.policy);
    // Under a shutdown policy, no message the client was told was accepted may be lost.
    if (scenario.policyConfig) checkAcceptedDelivered(c, results, env.sink.messages);
  } catch (error) {
    c.check(false, error instanceof Error ? error.message : String(error));
  } finally {
    env.scripted.releaseHangs();
  }
  if (process.env.MILTERD_E2E_TRANSCRIPT === '1') {
    console.log(`=== ${scenario.file} on ${mta.kind}\n${transcripts.join('\n')}`);
  }
  if (c.failures.length > 0) {
    const sink = env.sink.messages.map(
      (m) =>
        `#${m.seq} from ${m.from} ${m.fromParams.join(' ')} to ${m.recipients
          .map((r) => `${r.address} ${r.params.join(' ')}`)
          .join(
            ', ',
          )}\n  ${m.headers.map((h) => `${h.name}: ${h.value}`).join('\n  ')}\n  body ${m.body.length} bytes`,
    );
    const calls = env.scripted.calls.map(
      (x) => `${x.conn} ${x.cb} ${x.arg.slice(0, 80).replace(/\n/g, ' | ')} -> ${x.decision}`,
    );
    const views = policyViews(env.policyLog);
    const policy = scenario.policyConfig
      ? `--- policy events\n${(['decisions', 'fired', 'hookErrors'] as const)
          .flatMap((k) => views[k].map((e) => `${k}: ${JSON.stringify(e)}`))
          .join('\n')}\n`
      : '';
    throw new Error(
      `${scenario.file} on ${mta.kind}:\n- ${c.failures.join('\n- ')}\n` +
        `\n--- SMTP\n${transcripts.join('\n')}\n--- sink\n${sink.join('\n') || '(nothing)'}\n` +
        `--- filter\n${calls.join('\n')}\n${policy}--- ${mta.kind} log (tail)\n${(await mta.log()).slice(-4000)}`,
    );
  }
}
