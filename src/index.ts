/**
 * milterd: what a filter author and an embedder of the server need.
 *
 * - `Filter` (typed callbacks mirroring libmilter's xxfi_*) or `messageFilter` (the whole message at once),
 *   run behind Postfix or Sendmail by `createMilterServer` on TCP or Unix sockets.
 * - `withShutdownPolicy` / `createShutdownPolicy` end SMTP sessions with a 421 when a policy says so.
 * - `pipeline(members)` runs several filters (and upstream milters) in order as one filter.
 *
 * Elsewhere: `milterd/protocol` (the codec and the SMFI* constants), `milterd/client` (the MTA side),
 * `milterd/policy` (the whole policy engine), `milterd/testing` (filters in memory, fake transactions).
 * test/package/exports.test.ts pins every entry point's names: a change here is always deliberate.
 */
export * from './errors.js';
export * from './filter.js';
export * from './message/index.js';
export { createMilterServer } from './server/server.js';
export type {
  MilterServer,
  MilterServerOptions,
  MilterServerTimeouts,
  ListenAddress,
} from './server/server.js';
export type { FailureDecision } from './session/types.js';
export { defaultNegotiation, actionNames } from './session/negotiate.js';
export type { MilterObserver, DecisionStage, ObservedDecision } from './observer.js';
export { createLogger, silentLogger } from './logging/logger.js';
export type { CreateLoggerOptions } from './logging/logger.js';
export type { Level, Logger } from 'pino';
export { fromWireBytes, wireBytes } from './protocol/wire-string.js';
export { parseSocketSpec, formatSocketSpec } from './socket-spec.js';
export type { SocketSpec, ParseSocketSpecOptions } from './socket-spec.js';
export { withShutdownPolicy, createShutdownPolicy, ShutdownPolicy } from './policy/index.js';
export type { PolicyConfig, ShutdownPolicyOptions, WithShutdownPolicyOptions } from './policy/index.js';
export * from './pipeline/index.js';
