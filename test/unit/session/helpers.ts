/** In-memory harness for session tests: commands in, summarized responses and a callback log out. */
import { pino, type Logger } from 'pino';
import type { Filter } from '../../../src/filter.js';
import type { MilterCommand, MilterResponse } from '../../../src/protocol/types.js';
import type { HandleResult, Session, SessionOptions } from '../../../src/session/types.js';
import type { MilterObserver } from '../../../src/observer.js';
import { createSession } from '../../../src/session/session.js';
import { inlineBody } from '../../../src/session/body-store.js';

/** A pino logger writing parsed JSON lines into an array. */
export function memoryLogger(level = 'debug'): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level },
    { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
  );
  return { logger, lines };
}

/** Error codes found in log lines (`err.code` or `code`). */
export function loggedCodes(lines: ReadonlyArray<Record<string, unknown>>): string[] {
  const out: string[] = [];
  for (const l of lines) {
    const err = l['err'] as { code?: string } | undefined;
    if (err?.code) out.push(err.code);
    else if (typeof l['code'] === 'string') out.push(l['code']);
  }
  return out;
}

/** Compact text form of a response, for table rows. */
export function summarize(r: MilterResponse): string {
  switch (r.kind) {
    case 'continue':
      return 'c';
    case 'accept':
      return 'a';
    case 'reject':
      return 'r';
    case 'tempfail':
      return 't';
    case 'discard':
      return 'd';
    case 'skip':
      return 's';
    case 'progress':
      return 'p';
    case 'replyCode':
      return `y:${r.text}`;
    case 'optneg':
      return `O:${r.version}/0x${r.actions.toString(16)}/0x${r.protocol.toString(16)}`;
    case 'addHeader':
      return `h:${r.name}=${r.value}`;
    case 'insertHeader':
      return `i:${r.index}:${r.name}=${r.value}`;
    case 'changeHeader':
      return `m:${r.index}:${r.name}=${r.value}`;
    case 'addRecipient':
      return `+:${r.recipient}`;
    case 'addRecipientWithArgs':
      return `2:${r.recipient}:${r.args ?? ''}`;
    case 'deleteRecipient':
      return `-:${r.recipient}`;
    case 'changeFrom':
      return `e:${r.sender}:${r.args ?? ''}`;
    case 'quarantine':
      return `q:${r.reason}`;
    case 'replaceBody':
      return `b:${r.chunk.length}`;
    default:
      return r.kind;
  }
}

/** Command builders. */
export const C = {
  optneg: (version = 6, actions = 0x1ff, protocol = 0x1fffff): MilterCommand => ({
    kind: 'optneg',
    version,
    actions,
    protocol,
  }),
  macro: (stage: string, ...pairs: Array<[string, string]>): MilterCommand => ({
    kind: 'macro',
    stage,
    macros: pairs,
  }),
  connect: (hostname = 'mail.example.org'): MilterCommand => ({
    kind: 'connect',
    hostname,
    family: 'inet',
    port: 25,
    address: '192.0.2.7',
  }),
  helo: (hostname = 'client.example'): MilterCommand => ({ kind: 'helo', hostname }),
  mail: (sender = '<a@example.org>', args: string[] = []): MilterCommand => ({ kind: 'mail', sender, args }),
  rcpt: (recipient = '<b@example.net>', args: string[] = []): MilterCommand => ({
    kind: 'rcpt',
    recipient,
    args,
  }),
  data: (): MilterCommand => ({ kind: 'data' }),
  header: (name = 'Subject', value = 'hello'): MilterCommand => ({ kind: 'header', name, value }),
  eoh: (): MilterCommand => ({ kind: 'eoh' }),
  body: (text = 'hi\r\n'): MilterCommand => ({ kind: 'body', chunk: Buffer.from(text) }),
  eom: (text = ''): MilterCommand => ({ kind: 'eom', chunk: Buffer.from(text) }),
  abort: (): MilterCommand => ({ kind: 'abort' }),
  quit: (): MilterCommand => ({ kind: 'quit' }),
  quitNc: (): MilterCommand => ({ kind: 'quitNewConnection' }),
  unknown: (line = 'FOO'): MilterCommand => ({ kind: 'unknown', line }),
};

/** Every stage callback, each logging its name and returning `continue` unless overridden. */
export function recordingFilter(
  calls: string[],
  overrides: Partial<Filter<unknown>> = {},
  omit: ReadonlyArray<keyof Filter<unknown>> = [],
): Filter<unknown> {
  const rec =
    (name: string) =>
    (...args: unknown[]): undefined => {
      const detail = args.slice(1).filter((a) => typeof a === 'string');
      calls.push(detail.length ? `${name}:${detail.join(',')}` : name);
      return undefined;
    };
  const f: Filter<unknown> = {
    connect: rec('connect'),
    helo: rec('helo'),
    envfrom: rec('envfrom'),
    envrcpt: rec('envrcpt'),
    data: rec('data'),
    header: rec('header'),
    eoh: rec('eoh'),
    body: rec('body'),
    eom: rec('eom'),
    unknown: rec('unknown'),
    abort: rec('abort'),
    close: rec('close'),
  };
  for (const k of omit) delete f[k];
  // Wrap overrides so that they are logged too.
  for (const [k, v] of Object.entries(overrides)) {
    if (typeof v === 'function') {
      const fn = v as (...a: unknown[]) => unknown;
      (f as Record<string, unknown>)[k] = (...args: unknown[]) => {
        calls.push(k);
        return fn(...args);
      };
    } else {
      (f as Record<string, unknown>)[k] = v;
    }
  }
  return f;
}

/** A session plus everything it emitted. */
export interface Harness {
  session: Session;
  calls: string[];
  sentNow: MilterResponse[];
  lines: Array<Record<string, unknown>>;
  /** Handle one command and summarize its responses ('end:quit' / 'end:fatal' appended). */
  send(cmd: MilterCommand): Promise<string[]>;
  /** Handle commands in order, returning each one's summary. */
  run(cmds: MilterCommand[]): Promise<string[][]>;
}

export function summarizeResult(r: HandleResult): string[] {
  const out = r.responses.map(summarize);
  if (r.end) out.push(`end:${r.end}`);
  return out;
}

export function harness(
  filter: Filter<unknown> | ((calls: string[]) => Filter<unknown>),
  options: Partial<SessionOptions> & { observer?: MilterObserver } = {},
): Harness {
  const calls: string[] = [];
  const sentNow: MilterResponse[] = [];
  const { logger, lines } = memoryLogger();
  const f = typeof filter === 'function' ? filter(calls) : filter;
  const session = createSession(
    { id: 'conn-1', filter: f, logger, callbackTimeoutMs: 0, ...options },
    { sendNow: (r) => void sentNow.push(r) },
  );
  const send = async (cmd: MilterCommand): Promise<string[]> =>
    summarizeResult(await inlineBody(await session.handle(cmd)));
  return {
    session,
    calls,
    sentNow,
    lines,
    send,
    async run(cmds) {
      const out: string[][] = [];
      for (const c of cmds) out.push(await send(c));
      return out;
    },
  };
}
