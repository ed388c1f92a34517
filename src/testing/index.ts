/**
 * `milterd/testing`: helpers for filter and policy authors.
 *
 * - {@link testFilter} runs a filter in-process through the real session with a scripted MTA and returns a
 *   typed transcript (replies per step, EOM modifications, decisions, callback log). No socket, no timers.
 * - {@link MilterClient} and {@link playMessage} are the fake MTA for socket-level tests against a running
 *   server (`createMilterServer` + `listen('inet:0@127.0.0.1')`).
 */
export { testFilter, verdictOf } from './test-filter.js';
export { recordCallbacks } from './recorder.js';
export { fakeTransaction } from '../message/fake.js';
export type { FakeMessage, RecordedAction } from '../message/fake.js';
export type {
  AbortPoint,
  CallbackName,
  CallbackRecord,
  DecisionPoint,
  ScriptMacros,
  StageDecision,
  TestMessage,
  TestScript,
  TestSessionOptions,
  Transcript,
  TranscriptStep,
  Verdict,
} from './types.js';
export { MilterClient, playMessage } from '../client/index.js';
export type {
  ClientReply,
  EomResult,
  MessageResult,
  MessageScript,
  MessageStage,
  MilterClientOptions,
  NegotiatedClientOptions,
  ScriptRecipient,
} from '../client/index.js';
