/**
 * The session-shutdown policy engine: a should-shutdown hook chain, declarative rules from a YAML file,
 * cross-session limits, and `withShutdownPolicy` to run any filter under a policy. See docs/policy.md.
 */
export {
  ShutdownPolicy,
  DEFAULT_SHUTDOWN_TEXT,
  MAX_SHUTDOWN_TEXT_BYTES,
  replyTextBytes,
  sanitizeText,
} from './chain.js';
export type { ShutdownPolicyOptions, EnforcedShutdown, EvaluateOptions } from './chain.js';
export { withShutdownPolicy } from './wrapper.js';
export type { WithShutdownPolicyOptions } from './wrapper.js';
export { MemoryPolicyStore } from './store.js';
export type { PolicyStore, MemoryPolicyStoreOptions, SessionOpening } from './store.js';
export { GuardedStore } from './guarded-store.js';
export type { GuardedStoreOptions, StoreCallEvent, StoreOp } from './guarded-store.js';
export { RedisPolicyStore, createRedisPolicyStore } from './redis-store.js';
export type { RedisPolicyStoreOptions, RedisStoreTls } from './redis-store.js';
export { parseStoreUrl, redactStoreUrl } from './store-url.js';
export type { StoreLocation, StoreNode } from './store-url.js';
export {
  createShutdownPolicy,
  compileRule,
  compileConditions,
  limitReached,
  registerRules,
  LIMIT_KINDS,
  ON_STORE_ERROR,
  DEFAULT_RULE_TEXT,
} from './rules.js';
export type { PolicyConfig, PolicyRule, RuleLimit, RuleConditions, OnStoreError } from './rules.js';
export { parsePolicy, loadPolicyFile } from './load.js';
export { compileLinearRegex, LinearRegex, RegexSyntaxError, MAX_REGEX_STATES } from './linear-regex.js';
export type { LinearRegexOptions } from './linear-regex.js';
export { DEFAULT_POLICY_YAML, defaultPolicyConfig } from './default-policy.js';
export {
  parseDuration,
  parseSize,
  parseCidr,
  NetworkSet,
  clientKey,
  parseIpAddress,
  formatIpAddress,
  DEFAULT_CLIENT_PREFIX,
} from './values.js';
export type { Cidr, ClientPrefix, IpAddress } from './values.js';
export type * from './types.js';
