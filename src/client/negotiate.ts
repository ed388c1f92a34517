/**
 * The MTA's side of option negotiation (milter-protocol.md §5.2, §5.6): what a strict MTA (Sendmail)
 * accepts in the filter's OPTNEG reply, and which NO/NR bit governs each command.
 */
import { MilterProtocolError } from '../errors.js';
import {
  SMFI_INTERNAL,
  SMFI_PROT_VERSION_MIN,
  SMFIP_TEST,
  STAGE_BITS,
  type StageName,
} from '../protocol/constants.js';
import type { OptnegResponse } from '../protocol/types.js';
import type { NegotiatedClientOptions } from './types.js';

/** Protocol bits a filter may set without them being offered (§1.3: MDS bits, reserved, test). */
const IGNORED_PROTOCOL_BITS = SMFI_INTERNAL | SMFIP_TEST;

/** Per reply-expecting stage (callback names): its NO bit, its NR bit and the first version that has it. */
export const STAGE = STAGE_BITS;

/** A reply-expecting stage governed by NO/NR bits. */
export type Stage = StageName;

/**
 * Check the filter's OPTNEG reply against our offer like Sendmail does: version in [2, offered],
 * actions ⊆ offered, protocol ⊆ offered (MDS/reserved/test bits ignored). Throws ERR_MILTER_NEGOTIATION.
 */
export function validateNegotiation(
  offer: { version: number; actions: number; protocol: number },
  reply: OptnegResponse,
): NegotiatedClientOptions {
  let why: string | undefined;
  if (reply.version < SMFI_PROT_VERSION_MIN || reply.version > offer.version) {
    why = `version ${reply.version} outside [${SMFI_PROT_VERSION_MIN}, ${offer.version}]`;
  } else if ((reply.actions & ~offer.actions) !== 0) {
    why = `actions 0x${reply.actions.toString(16)} not a subset of 0x${offer.actions.toString(16)}`;
  } else if ((reply.protocol & ~(offer.protocol | IGNORED_PROTOCOL_BITS)) !== 0) {
    why = `protocol 0x${reply.protocol.toString(16)} not a subset of 0x${offer.protocol.toString(16)}`;
  }
  if (why !== undefined)
    throw new MilterProtocolError('ERR_MILTER_NEGOTIATION', `filter negotiation rejected: ${why}`);
  return {
    version: reply.version,
    actions: reply.actions,
    protocol: reply.protocol,
    macroLists: reply.macroLists ?? {},
  };
}
