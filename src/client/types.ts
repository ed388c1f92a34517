/** Public types of the MTA-side client (see client.ts). */
import type { MacroLists, ModificationResponse } from '../protocol/types.js';

/** Options of {@link MilterClient.connect}; defaults offer what Postfix 3.x offers. */
export interface MilterClientOptions {
  /** Protocol version offered, default 6. */
  version?: number;
  /** SMFIF_* actions offered, default SMFI_CURR_ACTS (0x1FF). */
  actions?: number;
  /** SMFIP_* protocol bits offered, default SMFI_CURR_PROT (0x1FFFFF). */
  protocol?: number;
  /** Per reply (and for connecting), default 10000 ms. A progress packet restarts it. */
  timeoutMs?: number;
  /** Largest reply payload accepted, default 1 MiB - 1 (Postfix reads anything). */
  maxDataSize?: number;
  /**
   * Send the macros of an envelope event the filter negotiated away (SMFIP_NO*) with the next write, as
   * Postfix and Sendmail do (MACROS_WHEN_SKIPPED); default false: no macros for an event not sent.
   */
  macrosWhenSkipped?: boolean;
  /** Called for each SMFIR_PROGRESS during end of message, as it arrives (a proxy passes it on). */
  onProgress?: () => void;
}

/** The reply to one command, as the MTA sees it. */
export type ClientReply =
  | { kind: 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'skip' | 'shutdown' | 'connFail' }
  | { kind: 'replyCode'; text: string }
  /** NR bit negotiated: the command was sent and no reply awaited. */
  | { kind: 'noreply' }
  /** NO bit negotiated (or the version lacks the command): nothing was sent. */
  | { kind: 'skipped' };

/** Result of {@link MilterClient.eom}: the modifications in wire order, progress count, final decision. */
export interface EomResult {
  reply: ClientReply;
  /** Copies (replace-body chunks are copied out of the decoder). */
  modifications: ModificationResponse[];
  progress: number;
}

/** What the filter agreed to in its OPTNEG reply. */
export interface NegotiatedClientOptions {
  version: number;
  actions: number;
  protocol: number;
  macroLists: MacroLists;
}
