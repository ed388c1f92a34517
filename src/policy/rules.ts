/**
 * Declarative rules (the policy file's `rules:`) and their compilation into should-shutdown hooks.
 *
 * Thresholds follow one idea: the limit is what the client may have. Counters checked after a message
 * (messages, failures, bytes, age, per-client messages) fire when they *reach* the limit, so the next
 * command gets the 421 (with `max-messages: 2`, messages 1 and 2 are accepted, MAIL #3 gets 421).
 * Counters whose excess is itself refused fire when they *exceed* it: with `max-rejected-recipients: 3`
 * the 4th rejected recipient's own reply is the 421; with `max-concurrent-sessions: 5` the 6th session
 * gets it at its first command.
 */
import type { Logger } from 'pino';
import { ShutdownPolicy, type ShutdownPolicyOptions } from './chain.js';
import { compileLinearRegex } from './linear-regex.js';
import { NetworkSet, type Cidr, type ClientPrefix } from './values.js';
import type { DeliveryRecord, ShutdownVerdict } from './types.js';

/** The limit of one rule (exactly one per rule). */
export type RuleLimit =
  | { kind: 'max-messages'; max: number }
  | { kind: 'max-rejected-recipients'; max: number }
  | { kind: 'max-failed-messages'; max: number }
  | { kind: 'max-failure-ratio'; ratio: number; minAttempts: number }
  | { kind: 'max-bytes'; max: number }
  | { kind: 'max-session-age'; maxMs: number }
  | { kind: 'max-concurrent-sessions'; max: number }
  | { kind: 'max-messages-per-client'; max: number; windowMs: number };

/** Names of the limit kinds, in documentation order. */
export const LIMIT_KINDS = [
  'max-messages',
  'max-rejected-recipients',
  'max-failed-messages',
  'max-failure-ratio',
  'max-bytes',
  'max-session-age',
  'max-concurrent-sessions',
  'max-messages-per-client',
] as const satisfies readonly RuleLimit['kind'][];

/** When a rule applies. Every condition given must hold (AND); none given = always. */
export interface RuleConditions {
  /** Client address in one of these blocks. */
  client?: readonly (string | Cidr)[];
  /** Client address in none of these blocks (clients without an IP address pass). */
  notClient?: readonly (string | Cidr)[];
  /** true: only SASL-authenticated sessions; false: only unauthenticated ones. */
  authenticated?: boolean;
  /**
   * Regular expression (case-insensitive) the HELO name must match; no HELO = no match. JavaScript
   * syntax without backreferences and lookaround, matched in linear time (see linear-regex.ts).
   */
  helo?: string;
}

/** One compiled-from-YAML rule. */
export interface PolicyRule {
  /** Unique in the chain; logs use it as the hook name. */
  name: string;
  limit: RuleLimit;
  when?: RuleConditions;
  /** Text of the `421 4.7.0` reply; default per limit kind. */
  text?: string;
  /** Log, never arm. */
  dryRun?: boolean;
  /** Where the rule was defined (for logs). */
  line?: number;
}

/** A whole policy, as loaded from YAML (or built in code). */
export interface PolicyConfig {
  /** File it came from, when loaded from one. */
  file?: string;
  dryRun: boolean;
  hookTimeoutMs?: number;
  replyText?: string;
  /** Count header/body bytes; default: only when a rule needs them (max-bytes). */
  trackBytes?: boolean;
  /** How cross-session limits group client addresses; default `{ ipv4: 32, ipv6: 64 }`. */
  clientPrefix?: Partial<ClientPrefix>;
  rules: PolicyRule[];
}

/** Reply text of each limit kind when the rule gives none. */
export const DEFAULT_RULE_TEXT: Readonly<Record<RuleLimit['kind'], string>> = {
  'max-messages': 'Too many messages in this session, closing connection',
  'max-rejected-recipients': 'Too many invalid recipients, closing connection',
  'max-failed-messages': 'Too many failed messages in this session, closing connection',
  'max-failure-ratio': 'Too many failed messages in this session, closing connection',
  'max-bytes': 'Too much data in this session, closing connection',
  'max-session-age': 'Session open for too long, closing connection',
  'max-concurrent-sessions': 'Too many concurrent sessions from your address, try again later',
  'max-messages-per-client': 'Too many messages from your address, try again later',
};

/** True when the record's counter has hit the rule's limit. Exported for tests and custom hooks. */
export function limitReached(limit: RuleLimit, r: DeliveryRecord): boolean {
  const c = r.counters;
  switch (limit.kind) {
    case 'max-messages':
      // Discarded messages were "accepted" as far as the client knows: they count.
      return c.messagesAccepted + c.messagesDiscarded >= limit.max;
    case 'max-rejected-recipients':
      return c.recipientsRejected > limit.max;
    case 'max-failed-messages':
      return r.failures >= limit.max;
    case 'max-failure-ratio':
      return r.attempts >= limit.minAttempts && r.failures / r.attempts > limit.ratio;
    case 'max-bytes':
      return c.bytesReceived >= limit.max;
    case 'max-session-age':
      return r.ageMs >= limit.maxMs;
    case 'max-concurrent-sessions':
      return r.clientStats.concurrentSessions > limit.max;
    case 'max-messages-per-client':
      return (r.clientStats.messagesInWindow[limit.windowMs] ?? 0) >= limit.max;
  }
}

/** The part of a record conditions look at (the pipeline judges its members' `when` on these too). */
export type ConditionFacts = Pick<DeliveryRecord, 'client' | 'helo' | 'authenticated'>;

/**
 * Compile conditions into a predicate (throws a plain Error on a bad CIDR, a RegexSyntaxError on a regex
 * the linear-time matcher refuses).
 */
export function compileConditions(when: RuleConditions | undefined): (r: ConditionFacts) => boolean {
  if (when === undefined) return () => true;
  const tests: Array<(r: ConditionFacts) => boolean> = [];
  if (when.client !== undefined) {
    const set = new NetworkSet(when.client);
    tests.push((r) => set.has(r.client?.address));
  }
  if (when.notClient !== undefined) {
    const set = new NetworkSet(when.notClient);
    tests.push((r) => !set.has(r.client?.address));
  }
  if (when.authenticated !== undefined) {
    const wanted = when.authenticated;
    tests.push((r) => (r.authenticated !== undefined) === wanted);
  }
  if (when.helo !== undefined) {
    // Never a backtracking RegExp: the HELO is chosen by the SMTP client (see linear-regex.ts).
    const re = compileLinearRegex(when.helo, { ignoreCase: true });
    tests.push((r) => r.helo !== undefined && re.test(r.helo));
  }
  return (r) => tests.every((t) => t(r));
}

/** Compile one rule into a synchronous hook whose verdict reason is the limit kind. */
export function compileRule(rule: PolicyRule): (record: DeliveryRecord) => ShutdownVerdict | undefined {
  const applies = compileConditions(rule.when);
  const { limit } = rule;
  const text = rule.text ?? DEFAULT_RULE_TEXT[limit.kind];
  return (record) =>
    applies(record) && limitReached(limit, record) ? { shutdown: true, reason: limit.kind, text } : undefined;
}

/** Register the rules at the back of the chain, in order (and the client windows they need). */
export function registerRules(policy: ShutdownPolicy, rules: readonly PolicyRule[]): void {
  for (const rule of rules) {
    if (rule.limit.kind === 'max-messages-per-client') policy.trackClientWindow(rule.limit.windowMs);
    policy.registerLast(rule.name, compileRule(rule), { dryRun: rule.dryRun ?? false });
  }
}

/**
 * Build a ShutdownPolicy from a config (a loaded file or the embedded default). Options given here
 * (clock, store, listeners, logger) complete the config; `dryRun`, `hookTimeoutMs`, `replyText`,
 * `trackBytes` and `clientPrefix` from the config win unless set in `options`. Register your own hooks afterwards:
 * `registerFirst` ones run before the rules, `registerLast` ones after.
 */
export function createShutdownPolicy(
  config: PolicyConfig,
  options: ShutdownPolicyOptions & { logger?: Logger } = {},
): ShutdownPolicy {
  const policy = new ShutdownPolicy({
    ...options,
    dryRun: options.dryRun ?? config.dryRun,
    hookTimeoutMs: options.hookTimeoutMs ?? config.hookTimeoutMs,
    replyText: options.replyText ?? config.replyText,
    clientPrefix: { ...config.clientPrefix, ...options.clientPrefix },
    trackBytes:
      options.trackBytes ?? config.trackBytes ?? config.rules.some((r) => r.limit.kind === 'max-bytes'),
  });
  registerRules(policy, config.rules);
  return policy;
}
