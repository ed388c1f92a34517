/** The MTA-side milter client: one connection ({@link MilterClient}) and whole messages ({@link playMessage}). */
export { MilterClient } from './client.js';
export type { ClientReply, EomResult, MilterClientOptions, NegotiatedClientOptions } from './types.js';
export { playMessage } from './transaction.js';
export type { MessageResult, MessageScript, MessageStage, ScriptRecipient } from './transaction.js';
