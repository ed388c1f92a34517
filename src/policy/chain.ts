/**
 * The should-shutdown hook chain (Momentum's `smtp_should_session_shutdown`, brought to the inbound side).
 *
 * Chain semantics:
 * - Hooks run one after the other in chain order: `registerFirst` puts a hook at the front (the latest
 *   registered first), `registerLast` at the back. Rules compiled from a policy file are registered with
 *   `registerLast` when the policy is built, so they sit after later `registerFirst` hooks and before
 *   later `registerLast` hooks.
 * - The first hook that asks for a shutdown wins and names the reason; the rest are not called.
 * - A dry-run hook (or any hook under a global dry-run) that asks for a shutdown is logged and emitted as
 *   a `dry-run` decision. With a per-hook dry-run the chain goes on (a rule being tried out must not hide
 *   the enforced ones); with the global dry-run the first such hook ends the chain, as it would have won.
 * - A hook that throws, rejects or exceeds its time budget is logged with ERR_MILTER_HOOK_FAILED /
 *   ERR_MILTER_HOOK_TIMEOUT and counts as "no shutdown": a broken policy must never cut mail. (This is
 *   deliberately not the session's failure decision of style rule 6: the safe default here is to do
 *   nothing.) An answer that arrives after the timeout is ignored and logged at debug level.
 * - The warnings every session can raise at once (a hook failing, a listener throwing, the store failing)
 *   go through one log rate limit (`logLimiter`): a broken hook or a dead Redis under traffic would
 *   otherwise write a line per session.
 */
import type { Logger } from 'pino';
import type { MaybePromise } from '../filter.js';
import { MilterConfigError, MilterFilterError } from '../errors.js';
import { silentLogger } from '../logging/logger.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import { MAX_REPLY_LINE_LENGTH } from '../protocol/constants.js';
import { isThenable } from '../session/decision.js';
import { GuardedStore } from './guarded-store.js';
import { MemoryPolicyStore, type PolicyStore } from './store.js';
import { clientKey, DEFAULT_CLIENT_PREFIX, MAX_PREFIX, type ClientPrefix } from './values.js';
import type {
  DeliveryRecord,
  HookOptions,
  HookResult,
  PolicyDecisionEvent,
  PolicyEventMap,
  ShouldShutdownHook,
} from './types.js';

/** How `evaluate` logs and what its decision events say of when a verdict fires. */
export interface EvaluateOptions {
  logger?: Logger | (() => Logger);
  firesAt?: PolicyDecisionEvent['firesAt'];
}

/** Reply text used when neither the verdict nor the hook names one. */
export const DEFAULT_SHUTDOWN_TEXT = 'Too much activity in this session, closing connection';

/** Options of a ShutdownPolicy. The policy never mutates them. */
export interface ShutdownPolicyOptions {
  /** Default time budget of one hook (ms). Default 1000; keep it well below the MTA's reply timeout. 0 = none. */
  hookTimeoutMs?: number;
  /** Global dry-run: decisions are logged and emitted, nothing is ever armed. */
  dryRun?: boolean;
  /** Default text of the `421 4.7.0` reply. */
  replyText?: string;
  /** The policy clock (ms). Default `Date.now`. Session age and client windows use it. */
  now?: () => number;
  /**
   * Cross-session store. Default: a new MemoryPolicyStore. Any other store is put behind a GuardedStore
   * (deadline `storeTimeoutMs`, circuit breaker) unless it is one already.
   */
  store?: PolicyStore;
  /** Deadline of one call to a store that is not in-process (ms). Default DEFAULTS.storeTimeoutMs (50). */
  storeTimeoutMs?: number;
  /**
   * How cross-session limits group clients (the store key): by IPv4 and IPv6 prefix length. Default
   * `{ ipv4: 32, ipv6: 64 }` (DEFAULT_CLIENT_PREFIX): a client cannot escape a limit by rotating the
   * addresses of its /64.
   */
  clientPrefix?: Partial<ClientPrefix>;
  /**
   * Count header and body bytes. This makes the wrapped filter receive headers and body (without
   * replying to them when the user's filter had no such callbacks). Default true.
   */
  trackBytes?: boolean;
  /** Shortcut for `on('decision', …)`. */
  onDecision?: (event: PolicyDecisionEvent) => void;
  /** Used when an evaluation is not given a connection logger. Default: none (silent). */
  logger?: Logger;
  /**
   * The rate limit of the warnings that every session may log at once (a failing hook, listener or store;
   * per kind, see LogRateLimiter), e.g. the server's own, so that one budget covers every line peers and
   * failures can cause. Default: one of the policy's own (LOG_RATE_LIMIT), its summaries to `logger`.
   */
  logLimiter?: LogRateLimiter;
}

/** The winning verdict of an enforcing evaluation. */
export interface EnforcedShutdown {
  readonly hook: string;
  readonly reason: string;
  readonly text: string;
}

interface HookEntry {
  readonly name: string;
  readonly hook: ShouldShutdownHook;
  readonly timeoutMs: number | undefined;
  readonly dryRun: boolean;
  readonly text: string | undefined;
  /** A verdict text of this hook was cut to fit a reply line (logged once per hook). */
  cutLogged: boolean;
}

type Listener<K extends keyof PolicyEventMap> = (event: PolicyEventMap[K]) => void;

const TIMEOUT = Symbol('timeout');
/** A hook's answer that lets the chain go on to the next hook. */
const NEXT_HOOK = Symbol('next hook');

/** What the session puts before the text of a shutdown reply (`Decision.shutdown(text, '4.7.0')`). */
const SHUTDOWN_PREFIX = '421 4.7.0 ';

/**
 * Most bytes a shutdown reply text may have, as sent: UTF-8, every `%` doubled (Sendmail reads the text as
 * a printf format), so that `421 4.7.0 <text>` fits one reply line (MAX_REPLY_LINE_LENGTH, 980 bytes).
 * A longer text would make the session refuse the reply and send a plain tempfail, which does not end
 * the SMTP session: the 421 would be lost.
 */
export const MAX_SHUTDOWN_TEXT_BYTES = MAX_REPLY_LINE_LENGTH - SHUTDOWN_PREFIX.length;

/** Bytes of one UTF-16 code unit (or pair) at `i` of `text` once escaped and encoded; [bytes, units]. */
function unitBytes(text: string, i: number): [number, number] {
  const c = text.charCodeAt(i);
  if (c === 0x25) return [2, 1]; // '%' is sent as '%%'
  if (c < 0x80) return [1, 1];
  if (c < 0x800) return [2, 1];
  if (c >= 0xd800 && c <= 0xdbff) {
    const next = text.charCodeAt(i + 1);
    if (next >= 0xdc00 && next <= 0xdfff) return [4, 2];
  }
  // Other BMP characters; a lone surrogate is counted as U+FFFD (3 bytes), the most it can become.
  return [3, 1];
}

/** The size of `text` in a reply line: UTF-8 bytes with every `%` doubled. */
export function replyTextBytes(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length;) {
    const [bytes, units] = unitBytes(text, i);
    n += bytes;
    i += units;
  }
  return n;
}

/** `text` cut to at most MAX_SHUTDOWN_TEXT_BYTES reply bytes, never inside a character or a `%%`. */
function fitReplyLine(text: string): string {
  // Fast path: no code unit costs more than 3 bytes (a doubled `%` is 2, a surrogate pair 4 for 2 units).
  if (text.length * 3 <= MAX_SHUTDOWN_TEXT_BYTES) return text;
  let n = 0;
  for (let i = 0; i < text.length;) {
    const [bytes, units] = unitBytes(text, i);
    if (n + bytes > MAX_SHUTDOWN_TEXT_BYTES) return text.slice(0, i).trimEnd();
    n += bytes;
    i += units;
  }
  return text;
}

/**
 * A session-shutdown policy: the hook chain, its options and the cross-session store. One instance is
 * shared by every connection of a server; wrap a filter with `withShutdownPolicy(filter, policy)`.
 */
/** Most addresses whose client key `ShutdownPolicy.clientKey` remembers. */
const CLIENT_KEY_CACHE = 4096;

export class ShutdownPolicy {
  readonly hookTimeoutMs: number;
  readonly dryRun: boolean;
  readonly replyText: string;
  readonly now: () => number;
  readonly store: PolicyStore;
  readonly clientPrefix: ClientPrefix;
  readonly trackBytes: boolean;
  /** Limits the warnings sessions log through the policy (see ShutdownPolicyOptions.logLimiter). */
  readonly logLimiter: LogRateLimiter;
  readonly #logger: Logger | undefined;
  #chain: HookEntry[] = [];
  readonly #windows = new Set<number>();
  #windowList: readonly number[] = Object.freeze([]);
  // clientKey per address: parsing and formatting an address on every CONNECT was measurable, and
  // clients come back. Bounded; emptied when full (a pure function of the address: nothing goes stale).
  readonly #keys = new Map<string, string | undefined>();
  readonly #listeners: { [K in keyof PolicyEventMap]: Set<Listener<K>> } = {
    decision: new Set(),
    fired: new Set(),
    hookError: new Set(),
  };

  constructor(options: ShutdownPolicyOptions = {}) {
    const timeout = options.hookTimeoutMs ?? 1000;
    if (!Number.isFinite(timeout) || timeout < 0) {
      throw new MilterConfigError('hookTimeoutMs must be a finite number >= 0', { field: 'hookTimeoutMs' });
    }
    this.hookTimeoutMs = timeout;
    this.dryRun = options.dryRun ?? false;
    this.#logger = options.logger;
    this.logLimiter = options.logLimiter ?? new LogRateLimiter({ logger: options.logger ?? silentLogger });
    this.replyText = this.#fit(options.replyText, 'replyText') ?? DEFAULT_SHUTDOWN_TEXT;
    this.now = options.now ?? Date.now;
    const store = options.store ?? new MemoryPolicyStore();
    this.store =
      store instanceof MemoryPolicyStore || store instanceof GuardedStore
        ? store
        : new GuardedStore(
            store,
            options.storeTimeoutMs === undefined ? {} : { timeoutMs: options.storeTimeoutMs },
          );
    this.clientPrefix = Object.freeze({ ...DEFAULT_CLIENT_PREFIX, ...definedOnly(options.clientPrefix) });
    for (const family of ['ipv4', 'ipv6'] as const) {
      const max = MAX_PREFIX[family];
      const bits = this.clientPrefix[family];
      if (!Number.isInteger(bits) || bits < 0 || bits > max) {
        throw new MilterConfigError(`clientPrefix.${family} must be a whole number 0..${max}`, {
          field: `clientPrefix.${family}`,
        });
      }
    }
    this.trackBytes = options.trackBytes ?? true;
    if (options.onDecision) this.on('decision', options.onDecision);
  }

  /**
   * Put a hook at the front of the chain. Throws ERR_MILTER_HOOK_INVALID for an empty or duplicate name,
   * a non-function hook or a bad timeout.
   */
  registerFirst(name: string, hook: ShouldShutdownHook, options: HookOptions = {}): this {
    this.#chain = [this.#entry(name, hook, options), ...this.#chain];
    return this;
  }

  /** Put a hook at the back of the chain. Same validation as `registerFirst`. */
  registerLast(name: string, hook: ShouldShutdownHook, options: HookOptions = {}): this {
    this.#chain = [...this.#chain, this.#entry(name, hook, options)];
    return this;
  }

  /** Remove a hook by name; false when there was none. An evaluation already running keeps its chain. */
  remove(name: string): boolean {
    const before = this.#chain.length;
    this.#chain = this.#chain.filter((e) => e.name !== name);
    return this.#chain.length !== before;
  }

  /** With a name: is that hook registered? Without: is any hook registered? */
  has(name?: string): boolean {
    return name === undefined ? this.#chain.length > 0 : this.#chain.some((e) => e.name === name);
  }

  /** Hook names in chain order. */
  list(): string[] {
    return this.#chain.map((e) => e.name);
  }

  /**
   * Ask the store for per-client message counts over windows of `windowMs` (rules of kind
   * `max-messages-per-client` do this); they then appear in `record.clientStats.messagesInWindow`.
   */
  trackClientWindow(windowMs: number): void {
    if (!Number.isInteger(windowMs) || windowMs <= 0) {
      throw new MilterConfigError('window must be a positive number of ms', { field: 'window' });
    }
    this.#windows.add(windowMs);
    this.#windowList = Object.freeze([...this.#windows]);
  }

  /**
   * The store key of a client address (SMFIC_CONNECT's): its network at `clientPrefix`, e.g.
   * `2001:db8:1:2::/64`, or the address at full length; undefined for '' (not tracked).
   */
  clientKey(address: string): string | undefined {
    const cached = this.#keys.get(address);
    if (cached !== undefined || this.#keys.has(address)) return cached;
    const key = clientKey(address, this.clientPrefix);
    if (this.#keys.size >= CLIENT_KEY_CACHE) this.#keys.clear();
    this.#keys.set(address, key);
    return key;
  }

  /** Window lengths tracked per client (ms). */
  get clientWindows(): readonly number[] {
    return this.#windowList;
  }

  /** Subscribe to decisions, fired shutdowns or hook errors. Returns the unsubscribe function. */
  on<K extends keyof PolicyEventMap>(event: K, listener: Listener<K>): () => void {
    const set = this.#listeners[event] as Set<Listener<K>>;
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Emit an event to listeners. Used by the wrapper; a listener that throws is logged and ignored
   * (metrics must never break a session).
   */
  emit<K extends keyof PolicyEventMap>(event: K, payload: PolicyEventMap[K], logger?: Logger): void {
    for (const listener of this.#listeners[event] as Set<Listener<K>>) {
      try {
        listener(payload);
      } catch (err) {
        if (this.logLimiter.allow(`policy listener ${event}`)) {
          (logger ?? this.#logger)?.warn({ err, event }, 'shutdown policy listener threw');
        }
      }
    }
  }

  /**
   * Run the chain over `record`. Logs one line and emits one `decision` event per verdict (enforced or
   * dry-run). Returns the enforced winner, or undefined. Never throws, never rejects. `logger` may be a
   * function returning it: it is then called only when a line is written (a pino child costs).
   */
  async evaluate(
    record: DeliveryRecord,
    options: EvaluateOptions = {},
  ): Promise<EnforcedShutdown | undefined> {
    return this.evaluateNow(record, options);
  }

  /**
   * `evaluate`, answered at once when every hook answers at once (the compiled rules do): the policy's
   * stage handlers then answer the session without a promise. A promise from the first hook that returns
   * one. Never throws, never rejects. @internal
   */
  evaluateNow(
    record: DeliveryRecord,
    options: EvaluateOptions = {},
  ): MaybePromise<EnforcedShutdown | undefined> {
    const given = options.logger;
    const lazy = (): Logger | undefined => (typeof given === 'function' ? given() : (given ?? this.#logger));
    // The chain as it is now: a hook may register or remove hooks (which replaces #chain) meanwhile.
    return this.#evaluateFrom(this.#chain, 0, record, lazy, options.firesAt ?? 'next-command');
  }

  #evaluateFrom(
    hooks: readonly HookEntry[],
    first: number,
    record: DeliveryRecord,
    lazy: () => Logger | undefined,
    firesAt: PolicyDecisionEvent['firesAt'],
  ): MaybePromise<EnforcedShutdown | undefined> {
    for (let i = first; i < hooks.length; i++) {
      const entry = hooks[i] as HookEntry;
      const result = this.#run(entry, record, lazy);
      if (result instanceof Promise) {
        return result.then((r) => {
          const end = this.#verdict(entry, r, record, lazy, firesAt);
          return end === NEXT_HOOK ? this.#evaluateFrom(hooks, i + 1, record, lazy, firesAt) : end;
        });
      }
      const end = this.#verdict(entry, result, record, lazy, firesAt);
      if (end !== NEXT_HOOK) return end;
    }
    return undefined;
  }

  /** One hook's answer: the chain's result (a shutdown, or undefined under the global dry-run), or NEXT_HOOK. */
  #verdict(
    entry: HookEntry,
    result: HookResult,
    record: DeliveryRecord,
    lazy: () => Logger | undefined,
    firesAt: PolicyDecisionEvent['firesAt'],
  ): EnforcedShutdown | undefined | typeof NEXT_HOOK {
    const verdict = toVerdict(result);
    if (verdict === undefined) return NEXT_HOOK;
    const logger = lazy();
    const reason = sanitizeText(verdict.reason) ?? entry.name;
    const own = sanitize(verdict.text);
    if (own.cut && !entry.cutLogged) {
      // A text the session would refuse would turn the 421 into a plain tempfail: cut it, say so once.
      entry.cutLogged = true;
      logger?.warn(
        { hook: entry.name, maxBytes: MAX_SHUTDOWN_TEXT_BYTES },
        'shutdown hook reply text longer than one reply line: cut to fit (logged once per hook)',
      );
    }
    const text = own.text ?? entry.text ?? this.replyText;
    const dryRun = this.dryRun || entry.dryRun;
    const event: PolicyDecisionEvent = {
      connectionId: record.connectionId,
      hook: entry.name,
      reason,
      mode: dryRun ? 'dry-run' : 'enforce',
      event: record.event,
      firesAt,
      text,
      clientAddress: record.client?.address,
      ageMs: record.ageMs,
      counters: record.counters,
    };
    logger?.info(
      { policy: event },
      dryRun ? 'shutdown policy decision (dry-run)' : 'shutdown policy decision',
    );
    this.emit('decision', event, logger);
    if (!dryRun) return { hook: entry.name, reason, text };
    return this.dryRun ? undefined : NEXT_HOOK;
  }

  /** One hook, at once when it answers at once; an asynchronous answer is raced against its budget. */
  #run(entry: HookEntry, record: DeliveryRecord, logger: () => Logger | undefined): MaybePromise<HookResult> {
    let pending: HookResult | PromiseLike<HookResult>;
    try {
      pending = entry.hook(record);
    } catch (err) {
      this.#hookFailed(entry, record, logger, 'ERR_MILTER_HOOK_FAILED', err);
      return undefined;
    }
    return isThenable(pending) ? this.#await(entry, record, logger, pending) : pending;
  }

  async #await(
    entry: HookEntry,
    record: DeliveryRecord,
    logger: () => Logger | undefined,
    pending: PromiseLike<HookResult>,
  ): Promise<HookResult> {
    const budget = entry.timeoutMs ?? this.hookTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout =
      budget > 0
        ? new Promise<typeof TIMEOUT>((resolve) => {
            timer = setTimeout(resolve, budget, TIMEOUT);
          })
        : undefined;
    try {
      const result = await (timeout ? Promise.race([pending, timeout]) : pending);
      if (result !== TIMEOUT) return result;
      this.#hookFailed(entry, record, logger, 'ERR_MILTER_HOOK_TIMEOUT', undefined, budget);
      // The chain has moved on: whatever the hook says now is only worth a debug line.
      pending.then(
        (late) =>
          logger()?.debug(
            { hook: entry.name, late: toVerdict(late) !== undefined },
            'late hook answer ignored',
          ),
        (err: unknown) => logger()?.debug({ hook: entry.name, err }, 'late hook failure ignored'),
      );
      return undefined;
    } catch (err) {
      this.#hookFailed(entry, record, logger, 'ERR_MILTER_HOOK_FAILED', err);
      return undefined;
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  #hookFailed(
    entry: HookEntry,
    record: DeliveryRecord,
    lazy: () => Logger | undefined,
    code: 'ERR_MILTER_HOOK_FAILED' | 'ERR_MILTER_HOOK_TIMEOUT',
    cause: unknown,
    budget?: number,
  ): void {
    const message =
      code === 'ERR_MILTER_HOOK_TIMEOUT'
        ? `shutdown hook "${entry.name}" did not answer within ${budget} ms`
        : `shutdown hook "${entry.name}" failed`;
    const error = new MilterFilterError(code, message, cause === undefined ? undefined : { cause });
    const logger = lazy();
    // Per hook (names come from the configuration, not from peers): one broken hook must not hide another.
    if (this.logLimiter.allow(`policy hook ${code} ${entry.name}`)) {
      logger?.warn({ err: error, hook: entry.name }, 'shutdown policy hook failed; counted as no shutdown');
    }
    this.emit('hookError', { connectionId: record.connectionId, hook: entry.name, error }, logger);
  }

  #entry(name: string, hook: ShouldShutdownHook, options: HookOptions): HookEntry {
    const invalid = (message: string): MilterConfigError =>
      new MilterConfigError(message, { field: String(name) }, { code: 'ERR_MILTER_HOOK_INVALID' });
    if (typeof name !== 'string' || name.trim() === '') throw invalid('hook name must be a non-empty string');
    if (typeof hook !== 'function') throw invalid(`hook "${name}" is not a function`);
    if (this.#chain.some((e) => e.name === name))
      throw invalid(`a hook named "${name}" is already registered`);
    const { timeoutMs } = options;
    if (timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs < 0)) {
      throw invalid(`hook "${name}": timeoutMs must be a finite number >= 0`);
    }
    const text = this.#fit(options.text, `hook "${name}" text`);
    return { name, hook, timeoutMs, dryRun: options.dryRun ?? false, text, cutLogged: false };
  }

  /** sanitizeText, with a warning when a configured text had to be cut to fit a reply line. */
  #fit(text: unknown, what: string): string | undefined {
    const { text: fit, cut } = sanitize(text);
    if (cut) {
      this.#logger?.warn(
        { text: what, maxBytes: MAX_SHUTDOWN_TEXT_BYTES },
        'shutdown reply text longer than one reply line: cut to fit',
      );
    }
    return fit;
  }
}

/** `o` without its undefined properties (so they do not override defaults when spread). */
function definedOnly<T extends object>(o: T | undefined): Partial<T> {
  return Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** A verdict object, or undefined for every "no shutdown" answer (falsy, or anything malformed). */
function toVerdict(result: unknown): { reason?: unknown; text?: unknown } | undefined {
  if (result === true) return {};
  if (typeof result === 'object' && result !== null && (result as { shutdown?: unknown }).shutdown === true) {
    return result as { reason?: unknown; text?: unknown };
  }
  return undefined;
}

/**
 * Make a string fit one SMTP reply line: CR/LF/NUL become spaces (a reply line cannot hold them), trimmed,
 * and cut at a character boundary to MAX_SHUTDOWN_TEXT_BYTES bytes as sent (UTF-8, `%` doubled), so that
 * `421 4.7.0 <text>` never exceeds the 980-byte reply line. Undefined when empty.
 */
export function sanitizeText(text: unknown): string | undefined {
  return sanitize(text).text;
}

/** sanitizeText, and whether the text had to be cut. */
function sanitize(text: unknown): { text: string | undefined; cut: boolean } {
  if (typeof text !== 'string') return { text: undefined, cut: false };
  const one = text.replace(/[\r\n\0]+/g, ' ').trim();
  const fit = fitReplyLine(one);
  return { text: fit === '' ? undefined : fit, cut: fit.length !== one.length };
}
