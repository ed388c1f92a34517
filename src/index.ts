/**
 * milterd: the public library API.
 *
 * - `createMilterServer` runs a `Filter` (typed async callbacks mirroring libmilter's xxfi_*) behind
 *   Postfix or Sendmail on TCP or Unix sockets.
 * - `ShutdownPolicy` / `withShutdownPolicy` decide when an SMTP session must end, and end it with a 421.
 * - `MilterClient` / `playMessage` speak the MTA side of the protocol (tests, benchmarks, the CLI).
 * - `milterd/testing` runs filters in memory (`testFilter`).
 */
export * from './errors.js';
export * from './filter.js';
export * as protocol from './protocol/constants.js';
export type * from './protocol/types.js';
export type { MilterObserver, DecisionStage, ObservedDecision } from './observer.js';
export { parseSocketSpec, formatSocketSpec } from './socket-spec.js';
export type { SocketSpec, ParseSocketSpecOptions } from './socket-spec.js';

export { createMilterServer } from './server/server.js';
export { defaultNegotiation, actionNames } from './session/negotiate.js';
export type { Level } from 'pino';
export * from './message/index.js';
export type {
  MilterServer,
  MilterServerOptions,
  MilterServerTimeouts,
  ListenAddress,
} from './server/server.js';
export type { FailureDecision } from './session/types.js';
export { formatReply } from './session/reply.js';
export { createLogger, silentLogger } from './logging/logger.js';
export type { CreateLoggerOptions } from './logging/logger.js';
export { LogRateLimiter, LOG_RATE_LIMIT } from './logging/rate-limit.js';
export type { LogRateLimitOptions } from './logging/rate-limit.js';
export { AsyncLogDestination, ASYNC_LOG_DEFAULTS } from './logging/async-destination.js';
export type { AsyncLogDestinationOptions } from './logging/async-destination.js';

export { MilterClient, playMessage } from './client/index.js';
export type {
  ClientReply,
  EomResult,
  MilterClientOptions,
  NegotiatedClientOptions,
  MessageResult,
  MessageScript,
  MessageStage,
  ScriptRecipient,
} from './client/index.js';

export * from './policy/index.js';

export { FrameDecoder } from './protocol/frame.js';
export { decodeCommand, decodeResponse } from './protocol/decode.js';
export { encodeCommand, encodeCommands, encodeResponse, encodeResponses } from './protocol/encode.js';
export { fromWireBytes, wireBytes } from './protocol/wire-string.js';
