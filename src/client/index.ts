/** The MTA-side milter client: one connection ({@link MilterClient}) and whole messages ({@link playMessage}). */
export { MilterClient } from './client.js';
export type { ClientReply, EomResult, MilterClientOptions, NegotiatedClientOptions } from './types.js';
export { playMessage } from './transaction.js';
export type {
  AbortPoint,
  MessageResult,
  MessageScript,
  MessageStage,
  ScriptMacroStage,
  ScriptRecipient,
} from './transaction.js';
export { MTA_NAMES, MTA_OFFER, MTA_PROFILES } from './mta-profiles.js';
export type { MtaMacroValues, MtaName, MtaProfile } from './mta-profiles.js';
