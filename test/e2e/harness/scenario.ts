/**
 * Scenario files (fixtures/testcases/*.yaml): one SMTP conversation, what the scripted filter does, and
 * what each MTA is expected to show. See fixtures/testcases/README.md for the schema with examples.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { LineCounter, isNode, parse, parseDocument } from 'yaml';
import { parsePolicy, type PolicyConfig } from '../../../src/policy/index.js';
import { FILTER_CALLBACKS, type FilterCallbackName } from '../../../src/index.js';
import type { MtaKind } from './mta.js';

/** The stage callbacks a scenario rule can act at: every filter callback but negotiate, abort and close. */
export type Stage = Exclude<FilterCallbackName, 'negotiate' | 'abort' | 'close'>;
const NOT_STAGES: ReadonlySet<FilterCallbackName> = new Set(['negotiate', 'abort', 'close']);
export const STAGES: readonly Stage[] = FILTER_CALLBACKS.filter((c): c is Stage => !NOT_STAGES.has(c));

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

/**
 * A change the whole-message filter (`filter.message`, written with `messageFilter`) makes to each message.
 * Texts may use `{{header:Name}}` (the first received value of Name) and `{{bodySize}}`.
 */
export type MessageOp =
  | { setHeader: [string, string] }
  | { deleteHeader: string }
  | { insertHeader: [number, string, string] }
  /** Insert a header just above the first one called the first name. */
  | { insertBefore: [string, string, string] }
  | { addHeader: [string, string] }
  | { addRecipient: string }
  | { removeRecipient: string }
  | { setSender: string }
  | { replaceBody: Content }
  /** Replace the body by the received one with a-z made A-Z, streamed from `trx.body()`. */
  | { upperCaseBody: true };

export interface FilterSpec {
  rules?: FilterRule[];
  eom?: EomSpec[];
  /** Run a `messageFilter` with these changes instead of the scripted callbacks (rules and eom then unused). */
  message?: MessageOp[];
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
  headers?: Array<[string, Content]>;
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

/** A test-only should-shutdown hook, registered after the policy's rules are (`first`: before them). */
export interface PolicyHookSpec {
  name: string;
  at: 'first' | 'last';
  /** The hook throws at every evaluation (else it answers "no shutdown"). */
  throws?: boolean;
}

/** The `policy:` section: the scripted filter runs under `withShutdownPolicy` with this policy. */
export interface PolicySpec {
  /** A file of fixtures/policy. */
  file?: string;
  /** A policy written in the scenario (same format as a policy file). */
  inline?: Record<string, unknown>;
  hooks?: PolicyHookSpec[];
}

/** A count (`3`, `">=1"`) or one entry per event, in the order they were emitted (fields compared exactly, `/re/` for a regex). */
export type EventsExpect<T> = number | string | T[];

export interface PolicyDecisionExpect {
  hook?: string;
  reason?: string;
  mode?: 'enforce' | 'dry-run';
  event?: 'connect' | 'message' | 'recipient';
  firesAt?: 'this-reply' | 'next-command';
  text?: string;
  /** Counters of the record at the decision (only those given). */
  counters?: Record<string, number>;
}

export interface PolicyFiredExpect {
  hook?: string;
  reason?: string;
  stage?: string;
}

export interface PolicyHookErrorExpect {
  hook?: string;
  /** The coded error: ERR_MILTER_HOOK_FAILED or ERR_MILTER_HOOK_TIMEOUT. */
  code?: string;
}

/** What the policy emitted over the whole scenario (`decision`, `fired`, `hookError` events). */
export interface PolicyExpect {
  decisions?: EventsExpect<PolicyDecisionExpect>;
  fired?: EventsExpect<PolicyFiredExpect>;
  hookErrors?: EventsExpect<PolicyHookErrorExpect>;
}

export interface OutcomeExpect {
  /** Messages the sink received: count, or one entry per message (matched in any order). */
  delivered?: number | DeliveredExpect[];
  held?: number | HeldExpect[];
  filter?: FilterExpect;
  policy?: PolicyExpect;
}

export interface Scenario {
  name: string;
  file: string;
  description?: string;
  /** MTAs this scenario cannot apply to, with the reason: it is not part of their suites. */
  notApplicable?: Partial<Record<MtaKind, string>>;
  filter?: FilterSpec;
  policy?: PolicySpec;
  /** The policy of the `policy:` section, parsed and checked by `parsePolicy` when the scenario is loaded. */
  policyConfig?: PolicyConfig;
  sessions: SessionSpec[];
  expect: { both?: OutcomeExpect; postfix?: OutcomeExpect; sendmail?: OutcomeExpect };
}

const TOP_KEYS = ['name', 'description', 'notApplicable', 'filter', 'policy', 'sessions', 'expect'];
const POLICY_EXPECT_KEYS: Record<string, string[]> = {
  decisions: ['hook', 'reason', 'mode', 'event', 'firesAt', 'text', 'counters'],
  fired: ['hook', 'reason', 'stage'],
  hookErrors: ['hook', 'code'],
};

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
    checkKeys(file, 'filter', filter, ['rules', 'eom', 'message']);
    if (filter.message !== undefined && (filter.rules !== undefined || filter.eom !== undefined)) {
      fail(file, 'filter.message (the whole-message API) cannot be combined with rules or eom');
    }
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
    checkKeys(file, `expect.${who}`, outcome, ['delivered', 'held', 'filter', 'policy']);
    if (outcome.filter !== undefined) {
      if (!isObject(outcome.filter)) fail(file, `expect.${who}.filter must be a mapping`);
      checkKeys(file, `expect.${who}.filter`, outcome.filter, ['connections', 'calls', 'macros', 'args']);
    }
    if (outcome.policy !== undefined) checkPolicyExpect(file, `expect.${who}.policy`, outcome.policy);
  }
  let policyConfig: PolicyConfig | undefined;
  if (doc.policy !== undefined) policyConfig = parsePolicySection(file, text, doc.policy);
  if (doc.notApplicable !== undefined) {
    if (!isObject(doc.notApplicable)) fail(file, '"notApplicable" must map postfix/sendmail to a reason');
    checkKeys(file, 'notApplicable', doc.notApplicable, ['postfix', 'sendmail']);
  }
  return { ...(doc as unknown as Omit<Scenario, 'file' | 'policyConfig'>), file, policyConfig };
}

function checkPolicyExpect(file: string, where: string, expect: unknown): void {
  if (!isObject(expect)) fail(file, `${where} must be a mapping`);
  checkKeys(file, where, expect, Object.keys(POLICY_EXPECT_KEYS));
  for (const [key, value] of Object.entries(expect)) {
    if (typeof value === 'number' || typeof value === 'string') continue;
    if (!Array.isArray(value)) fail(file, `${where}.${key} must be a count or a list`);
    value.forEach((entry: unknown, i: number) => {
      if (!isObject(entry)) fail(file, `${where}.${key}[${i}] must be a mapping`);
      checkKeys(file, `${where}.${key}[${i}]`, entry, POLICY_EXPECT_KEYS[key] ?? []);
    });
  }
}

/**
 * Check the `policy:` section and parse its policy with `parsePolicy`, so that a bad policy is refused when
 * the scenario is loaded, with the file, line and field. An inline policy is parsed from the scenario's own
 * text (padded to its line and column), so the line numbers in errors are those of the scenario file.
 */
function parsePolicySection(file: string, text: string, section: unknown): PolicyConfig {
  if (!isObject(section)) fail(file, '"policy" must be a mapping');
  checkKeys(file, 'policy', section, ['file', 'inline', 'hooks']);
  const hooks: unknown = section.hooks ?? [];
  if (!Array.isArray(hooks)) fail(file, 'policy.hooks must be a list');
  const names = new Set<string>();
  hooks.forEach((hook: unknown, i: number) => {
    if (!isObject(hook)) fail(file, `policy.hooks[${i}] must be a mapping`);
    checkKeys(file, `policy.hooks[${i}]`, hook, ['name', 'at', 'throws']);
    if (typeof hook.name !== 'string' || hook.name === '' || names.has(hook.name)) {
      fail(file, `policy.hooks[${i}].name must be a unique non-empty string`);
    }
    names.add(hook.name);
    if (hook.at !== 'first' && hook.at !== 'last') fail(file, `policy.hooks[${i}].at must be first or last`);
    if (hook.throws !== undefined && typeof hook.throws !== 'boolean') {
      fail(file, `policy.hooks[${i}].throws must be a boolean`);
    }
  });
  if ((section.file === undefined) === (section.inline === undefined)) {
    fail(file, 'policy needs exactly one of file (a file of fixtures/policy) or inline (a policy mapping)');
  }
  if (section.file !== undefined) {
    if (typeof section.file !== 'string' || section.file.includes('/')) {
      fail(file, 'policy.file must be the name of a file in fixtures/policy');
    }
    const policyFile = path.join(fixturesDir(), 'policy', section.file);
    if (!existsSync(policyFile)) fail(file, `policy.file: ${policyFile} does not exist`);
    return parsePolicy(readFileSync(policyFile, 'utf8'), policyFile);
  }
  if (!isObject(section.inline))
    fail(file, 'policy.inline must be a mapping (a policy, as in a policy file)');
  const lines = new LineCounter();
  const node = parseDocument(text, { lineCounter: lines }).getIn(['policy', 'inline'], true);
  if (!isNode(node) || node.range == null) fail(file, 'policy.inline: cannot locate it in the file');
  const [start, end] = node.range;
  const { line, col } = lines.linePos(start);
  const source = '\n'.repeat(line - 1) + ' '.repeat(col - 1) + text.slice(start, end);
  return parsePolicy(source, `${file} (policy.inline)`);
}

/** fixtures/ of the repository (found from this file, in test/ or in dist/test/). */
export function fixturesDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(path.join(dir, 'package.json'))) return path.join(dir, 'fixtures');
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the repository root from ${import.meta.url}`);
}

/** fixtures/testcases of the repository. */
export function testcasesDir(): string {
  return path.join(fixturesDir(), 'testcases');
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
