/**
 * A minimal in-memory StageContext/EomContext (src/filter.ts) and a tiny "MTA" that drives a filter's
 * callbacks the way the session layer would, so the policy wrapper can be tested without the session.
 */
import type { Logger } from 'pino';
import type {
  BodyDecision,
  BodyResult,
  MaybePromise,
  ConnectionInfo,
  Decision,
  EomContext,
  Envelope,
  Filter,
  NegotiatedOptions,
} from '../../../src/filter.js';
import { memoryLogger, type MemoryLog } from '../../helpers/logs.js';
import { createShutdownPolicy, type OnStoreError } from '../../../src/policy/rules.js';
import type { PolicyStore } from '../../../src/policy/store.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';

/** A fake context: macros are set by the test per stage, modifications are recorded. */
export class FakeContext<P = unknown> implements EomContext<P> {
  readonly id: string;
  readonly logger: Logger;
  negotiated: NegotiatedOptions | undefined = undefined;
  connection: ConnectionInfo | undefined;
  priv: P | undefined = undefined;
  messagePriv: unknown = undefined;
  helo: string | undefined = undefined;
  envelope: Envelope | undefined = undefined;
  /** Current macros (the test replaces them as an MTA's `D` packets would). */
  macroTable: Record<string, string> = {};
  readonly replies: Array<{ code: number | string; xcode?: string; lines: string[] }> = [];
  readonly modifications: string[] = [];

  constructor(id: string, logger: Logger, connection?: ConnectionInfo) {
    this.id = id;
    this.logger = logger;
    this.connection = connection;
  }

  macro(name: string): string | undefined {
    const bare = name.replace(/^\{(.*)\}$/, '$1');
    return this.macroTable[name] ?? this.macroTable[`{${bare}}`] ?? this.macroTable[bare];
  }
  macros(): Record<string, string> {
    return { ...this.macroTable };
  }
  setReply(code: number | string, xcode?: string, ...lines: string[]): void {
    this.replies.push({ code, xcode, lines });
  }
  progress(): void {}
  addHeader(name: string, value: string): void {
    this.modifications.push(`addHeader ${name}: ${value}`);
  }
  insertHeader(index: number, name: string, value: string): void {
    this.modifications.push(`insertHeader ${index} ${name}: ${value}`);
  }
  changeHeader(name: string, index: number, value: string | null): void {
    this.modifications.push(`changeHeader ${name} ${index} ${value}`);
  }
  deleteHeader(name: string, index: number): void {
    this.modifications.push(`deleteHeader ${name} ${index}`);
  }
  addRecipient(recipient: string): void {
    this.modifications.push(`addRecipient ${recipient}`);
  }
  deleteRecipient(recipient: string): void {
    this.modifications.push(`deleteRecipient ${recipient}`);
  }
  changeFrom(sender: string): void {
    this.modifications.push(`changeFrom ${sender}`);
  }
  quarantine(reason: string): void {
    this.modifications.push(`quarantine ${reason}`);
  }
  async replaceBody(): Promise<void> {
    this.modifications.push('replaceBody');
  }
}

/** Normalised decision, for assertions. */
export type Seen = 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'skip' | '421';

/** 'continue' for nothing, '421' for a shutdown (tempfail + 421 reply), else the kind. */
export function seen(d: BodyDecision | void | undefined): Seen {
  if (d === undefined) return 'continue';
  if (typeof d === 'string') return d;
  if (d.kind === 'tempfail' && Number(d.reply?.code) === 421) return '421';
  return d.kind;
}

/** The text of a 421 decision. */
export function shutdownText(d: Decision | void | undefined): string | undefined {
  return typeof d === 'object' && d !== null && Number(d.reply?.code) === 421
    ? String(d.reply?.text)
    : undefined;
}

/** One message for `FakeMta.message`. */
export interface FakeMessage {
  from?: string;
  /** Recipients; `{ mtaRejected: true }` ones carry `{rcpt_mailer}` = error (SMFIP_RCPT_REJ). */
  rcpts?: Array<string | { address: string; mtaRejected: true }>;
  headers?: Array<[string, string]>;
  body?: string;
  /** Simulate RSET after the recipients (ABORT instead of DATA). */
  abortAfterRcpt?: boolean;
  /** Postfix sends ABORT after every transaction, even a completed one. */
  postfixAbort?: boolean;
  auth?: string;
}

/** Results of one message: each stage's decision, in order. */
export interface MessageTrace {
  stages: Array<[stage: string, seen: Seen]>;
  /** The decision that ended the message ('continue' at EOM = accepted). */
  final: Seen;
  /** Where it ended. */
  endedAt: string;
}

/**
 * Drives a filter like an MTA: stops a message at the first decision other than continue (except at a
 * rejected RCPT, which only fails that recipient), as Postfix and Sendmail do.
 */
export class FakeMta<P = unknown> {
  readonly ctx: FakeContext<P>;
  readonly log: MemoryLog;
  closed = false;

  constructor(
    readonly filter: Filter<P>,
    id = 'conn-1',
    readonly info: ConnectionInfo = {
      hostname: 'client.example',
      family: 'inet',
      port: 40000,
      address: '192.0.2.10',
    },
    log: MemoryLog = memoryLogger(),
  ) {
    this.log = log;
    this.ctx = new FakeContext<P>(id, log.logger, info);
  }

  async connect(): Promise<Seen> {
    return seen(await this.filter.connect?.(this.ctx, this.info));
  }

  async helo(name = 'client.example'): Promise<Seen> {
    this.ctx.helo = name;
    return seen(await this.filter.helo?.(this.ctx, name));
  }

  async unknown(line = 'FOO'): Promise<Seen> {
    return seen(await this.filter.unknown?.(this.ctx, line));
  }

  async message(m: FakeMessage = {}): Promise<MessageTrace> {
    const stages: MessageTrace['stages'] = [];
    const step = async (stage: string, r: MaybePromise<BodyResult>): Promise<Seen> => {
      const s = seen(await r);
      stages.push([stage, s]);
      return s;
    };
    const end = (final: Seen, endedAt: string): MessageTrace => ({ stages, final, endedAt });
    const ctx = this.ctx;
    ctx.macroTable = m.auth ? { '{auth_authen}': m.auth } : {};
    const from = m.from ?? '<sender@example.org>';
    ctx.envelope = { sender: from, senderArgs: [], recipients: [] };
    let s = await step('envfrom', this.filter.envfrom?.(ctx, from, []));
    if (s !== 'continue') return end(s, 'envfrom');
    let accepted = 0;
    for (const r of m.rcpts ?? ['<rcpt@example.net>']) {
      const address = typeof r === 'string' ? r : r.address;
      ctx.macroTable = typeof r === 'string' ? { '{rcpt_mailer}': 'smtp' } : { '{rcpt_mailer}': 'error' };
      s = await step('envrcpt', this.filter.envrcpt?.(ctx, address, []));
      if (s === '421') return end(s, 'envrcpt');
      if (s === 'continue' && typeof r === 'string') accepted++;
    }
    if (m.abortAfterRcpt || accepted === 0) {
      await this.filter.abort?.(ctx);
      return end('continue', 'abort');
    }
    s = await step('data', this.filter.data?.(ctx));
    if (s !== 'continue') return end(s, 'data');
    for (const [name, value] of m.headers ?? [['Subject', 'test']]) {
      s = await step('header', this.filter.header?.(ctx, name, value));
      if (s !== 'continue') return end(s, 'header');
    }
    s = await step('eoh', this.filter.eoh?.(ctx));
    if (s !== 'continue') return end(s, 'eoh');
    const body = Buffer.from(m.body ?? 'hello\r\n');
    if (body.length > 0) {
      s = await step('body', this.filter.body?.(ctx, body));
      if (s !== 'continue' && s !== 'skip') return end(s, 'body');
    }
    s = await step('eom', this.filter.eom?.(ctx));
    if (m.postfixAbort) {
      await this.filter.abort?.(ctx);
      await this.filter.abort?.(ctx);
    }
    return end(s, 'eom');
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.filter.close?.(this.ctx);
  }
}

/**
 * `n` sessions of one client opened one after the other (CONNECT, HELO) and held: the HELO reply of each
 * (where a concurrent-session limit shows), and a function that closes them all.
 */
export async function heldSessions(
  filter: Filter<unknown>,
  address: string,
  n: number,
): Promise<{ helos: Seen[]; close: () => Promise<void> }> {
  const mtas: FakeMta[] = [];
  const helos: Seen[] = [];
  const close = async (): Promise<void> => {
    for (const m of mtas) await m.close();
  };
  try {
    for (let i = 0; i < n; i++) {
      const mta = new FakeMta(filter, `s${i}`, { hostname: 'c', family: 'inet', port: 1, address });
      mtas.push(mta);
      await mta.connect();
      helos.push(await mta.helo());
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { helos, close };
}

/** An empty filter under one rule: at most `max` concurrent sessions per client, counted in `store`. */
export function concurrencyLimited(
  store: PolicyStore,
  max: number,
  onStoreError?: OnStoreError,
): Filter<unknown> {
  const rule = { name: 'conc', limit: { kind: 'max-concurrent-sessions', max } as const };
  const policy = createShutdownPolicy(
    { dryRun: false, rules: [onStoreError === undefined ? rule : { ...rule, onStoreError }] },
    { store },
  );
  return withShutdownPolicy({}, policy);
}
