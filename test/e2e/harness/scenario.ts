/**
 * Scenario files (fixtures/testcases/*.yaml): one SMTP conversation, what the scripted filter does, and
 * what each MTA is expected to show. See fixtures/testcases/README.md for the schema with examples.
 */
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { parse } from 'yaml';
import type { MtaKind } from './mta.js';

export const STAGES = [
  'connect',
  'helo',
  'envfrom',
  'envrcpt',
  'data',
  'unknown',
  'header',
  'eoh',
  'body',
  'eom',
] as const;
export type Stage = (typeof STAGES)[number];

export const RULE_DECISIONS = [
  'continue',
  'accept',
  'reject',
  'tempfail',
  'discard',
  'skip',
  'shutdown',
  'throw',
  'hang',
] as const;
export type RuleDecision = (typeof RULE_DECISIONS)[number];

export interface ReplySpec {
  code: number;
  xcode?: string;
  text?: string | string[];
}

export interface FilterRule {
  at: Stage;
  /** Case-insensitive substring of the callback's subject (see README); absent = always. */
  match?: string;
  decision: RuleDecision;
  reply?: ReplySpec;
  /** For `shutdown`: the 421 text. */
  text?: string;
  /** Apply `setReply` and then return a bare decision (the stage-context way). */
  viaSetReply?: boolean;
}

/** Generated content: `repeat` repeated (whole copies) until there are at least `bytes` bytes. */
export interface Generated {
  repeat: string;
  bytes: number;
}
export type Content = string | Generated;

export type EomAction =
  | { addHeader: [string, string] }
  | { insertHeader: [number, string, string] }
  | { changeHeader: [string, number, string] }
  | { deleteHeader: [string, number] }
  | { addRecipient: string | [string, string] }
  | { deleteRecipient: string }
  | { changeFrom: string | [string, string] }
  | { replaceBody: Content }
  | { quarantine: string };

export interface EomSpec {
  /** Substring of the message summary (envelope + headers) that selects the message; absent = every one. */
  when?: string;
  actions?: EomAction[];
  /** Work this long in the EOM callback (to outlast the MTA's timeout). */
  delayMs?: number;
  /** Call ctx.progress() this often while working. */
  progressEveryMs?: number;
}

export interface FilterSpec {
  rules?: FilterRule[];
  eom?: EomSpec[];
}

export interface ReplyExpect {
  code?: number;
  /** Regular expression matched against the whole reply (lines joined with \n). */
  text?: string;
  /** The server closed the connection after this reply. */
  hangup?: boolean;
}
export type StepExpect = number | (ReplyExpect & { postfix?: ReplyExpect; sendmail?: ReplyExpect });

export interface MessageSpec {
  subject?: string;
  /** Extra header lines in order, after From/To/Subject. */
  headers?: Array<[string, string]>;
  body?: Content;
  /** Leave out the default From/To/Subject headers. */
  noDefaultHeaders?: boolean;
}

export type Step =
  | { send: string; expect?: StepExpect }
  | { message: MessageSpec; expect?: StepExpect }
  | { raw: string }
  | { close: true }
  | {
      transaction: { from: string; mailArgs?: string; to: string[]; message?: MessageSpec };
      expect?: StepExpect;
    };

export interface SessionSpec {
  family?: 'ipv4' | 'ipv6';
  /** Read the 220 greeting first (default true) and check it. */
  greeting?: StepExpect | false;
  steps: Step[];
}

export interface DeliveredExpect {
  from?: string;
  fromParams?: string[];
  /** Exact set of envelope recipients (order ignored). */
  to?: string[];
  rcptParams?: Record<string, string[]>;
  /** Per header name (case-insensitive): exact value, `/regex/`, or the list of all its values in order. */
  headers?: Record<string, string | string[]>;
  /** Header names that must not be present. */
  absent?: string[];
  /** The first header's name (case-insensitive). */
  firstHeader?: string;
  /** Header names that must appear in this relative order. */
  order?: string[];
  body?: Content;
  bodyContains?: string;
}

export interface HeldExpect {
  /** Regex for the quarantine reason (Sendmail only; Postfix 3.7 does not store one). */
  reason?: string;
  /** Regex matched against the held message's header text. */
  headers?: string;
}

export interface FilterExpect {
  /** Milter connections (each must end with exactly one close, which is always checked). */
  connections?: number;
  /** Number of calls per callback over all connections: exact number or ">=N". */
  calls?: Record<string, number | string>;
  /** Macros seen at a stage, by name: regex for the value (any call of that stage may match). */
  macros?: Record<string, Record<string, string>>;
  /** Regexes each matched by the argument of some call of that stage. */
  args?: Record<string, string[]>;
}

export interface OutcomeExpect {
  /** Messages the sink received: count, or one entry per message (matched in any order). */
  delivered?: number | DeliveredExpect[];
  held?: number | HeldExpect[];
  filter?: FilterExpect;
}

export interface Scenario {
  name: string;
  file: string;
  description?: string;
  /** MTAs this scenario cannot apply to, with the reason: it is not part of their suites. */
  notApplicable?: Partial<Record<MtaKind, string>>;
  filter?: FilterSpec;
  sessions: SessionSpec[];
  expect: { both?: OutcomeExpect; postfix?: OutcomeExpect; sendmail?: OutcomeExpect };
}

const TOP_KEYS = ['name', 'description', 'notApplicable', 'filter', 'sessions', 'expect'];

function fail(file: string, message: string): never {
  throw new Error(`${file}: ${message}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(file: string, where: string, obj: Record<string, unknown>, allowed: string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) fail(file, `${where}: unknown key "${key}" (allowed: ${allowed.join(', ')})`);
  }
}

/** Parse and check one scenario file (structure only; values are checked when used). */
export function parseScenario(file: string, text: string): Scenario {
  const doc: unknown = parse(text);
  if (!isObject(doc)) fail(file, 'not a YAML mapping');
  checkKeys(file, 'top level', doc, TOP_KEYS);
  if (typeof doc.name !== 'string') fail(file, '"name" (string) is required');
  if (!Array.isArray(doc.sessions) || doc.sessions.length === 0) fail(file, '"sessions" (list) is required');
  doc.sessions.forEach((s: unknown, i: number) => {
    if (!isObject(s)) fail(file, `sessions[${i}] must be a mapping`);
    checkKeys(file, `sessions[${i}]`, s, ['family', 'greeting', 'steps']);
    if (!Array.isArray(s.steps)) fail(file, `sessions[${i}].steps (list) is required`);
    s.steps.forEach((step: unknown, j: number) => {
      if (!isObject(step)) fail(file, `sessions[${i}].steps[${j}] must be a mapping`);
      const kinds = ['send', 'message', 'raw', 'close', 'transaction'].filter((k) => k in step);
      if (kinds.length !== 1) {
        fail(file, `sessions[${i}].steps[${j}] needs exactly one of send/message/raw/close/transaction`);
      }
      checkKeys(file, `sessions[${i}].steps[${j}]`, step, [...kinds, 'expect']);
    });
  });
  const filter = doc.filter;
  if (filter !== undefined) {
    if (!isObject(filter)) fail(file, '"filter" must be a mapping');
    checkKeys(file, 'filter', filter, ['rules', 'eom']);
    for (const [i, rule] of ((filter.rules as unknown[] | undefined) ?? []).entries()) {
      if (!isObject(rule)) fail(file, `filter.rules[${i}] must be a mapping`);
      checkKeys(file, `filter.rules[${i}]`, rule, [
        'at',
        'match',
        'decision',
        'reply',
        'text',
        'viaSetReply',
      ]);
      if (!STAGES.includes(rule.at as Stage))
        fail(file, `filter.rules[${i}].at must be one of ${STAGES.join(', ')}`);
      if (!RULE_DECISIONS.includes(rule.decision as RuleDecision)) {
        fail(file, `filter.rules[${i}].decision must be one of ${RULE_DECISIONS.join(', ')}`);
      }
    }
    for (const [i, eom] of ((filter.eom as unknown[] | undefined) ?? []).entries()) {
      if (!isObject(eom)) fail(file, `filter.eom[${i}] must be a mapping`);
      checkKeys(file, `filter.eom[${i}]`, eom, ['when', 'actions', 'delayMs', 'progressEveryMs']);
    }
  }
  if (!isObject(doc.expect)) fail(file, '"expect" (mapping with both/postfix/sendmail) is required');
  checkKeys(file, 'expect', doc.expect, ['both', 'postfix', 'sendmail']);
  for (const [who, outcome] of Object.entries(doc.expect)) {
    if (!isObject(outcome)) fail(file, `expect.${who} must be a mapping`);
    checkKeys(file, `expect.${who}`, outcome, ['delivered', 'held', 'filter']);
    if (outcome.filter !== undefined) {
      if (!isObject(outcome.filter)) fail(file, `expect.${who}.filter must be a mapping`);
      checkKeys(file, `expect.${who}.filter`, outcome.filter, ['connections', 'calls', 'macros', 'args']);
    }
  }
  if (doc.notApplicable !== undefined) {
    if (!isObject(doc.notApplicable)) fail(file, '"notApplicable" must map postfix/sendmail to a reason');
    checkKeys(file, 'notApplicable', doc.notApplicable, ['postfix', 'sendmail']);
  }
  return { ...(doc as unknown as Omit<Scenario, 'file'>), file };
}

/** fixtures/testcases of the repository (found from this file, in test/ or in dist/test/). */
export function testcasesDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(path.join(dir, 'package.json'))) return path.join(dir, 'fixtures', 'testcases');
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the repository root from ${import.meta.url}`);
}

/** Every scenario file, sorted by file name. `MILTERD_E2E_ONLY=a,b` keeps those whose file name contains one of them. */
export async function loadScenarios(): Promise<Scenario[]> {
  const dir = testcasesDir();
  const only = (process.env.MILTERD_E2E_ONLY ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const files = (await readdir(dir))
    .filter((f) => f.endsWith('.yaml'))
    .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
    .sort();
  const out: Scenario[] = [];
  for (const f of files) out.push(parseScenario(f, await readFile(path.join(dir, f), 'utf8')));
  return out;
}

/** Materialise generated content. */
export function contentBytes(content: Content | undefined): Buffer {
  if (content === undefined) return Buffer.alloc(0);
  if (typeof content === 'string') return Buffer.from(content.replace(/\r?\n/g, '\r\n'), 'latin1');
  const unit = content.repeat.replace(/\r?\n/g, '\r\n');
  if (unit === '' || content.bytes < 0)
    throw new Error('generated content needs a non-empty repeat and bytes >= 0');
  return Buffer.from(unit.repeat(Math.ceil(content.bytes / unit.length)), 'latin1');
}
