/**
 * OPTNEG as libmilter does it (protocol doc §5.3), as a pure function: from the MTA's offer and the
 * filter's shape (or its explicit `negotiate` result) to the reply and the options in force.
 */
import type {
  ActionName,
  Filter,
  MacroStage,
  NegotiateResult,
  NegotiatedOptions,
  NegotiationOffer,
} from '../filter.js';
import type { MacroLists, OptnegResponse } from '../protocol/types.js';
import { MilterProtocolError } from '../errors.js';
import {
  MILTER_MDS_1M,
  MILTER_MDS_256K,
  MILTER_MDS_64K,
  SMFIF_ADDHDRS,
  SMFIF_ADDRCPT,
  SMFIF_ADDRCPT_PAR,
  SMFIF_CHGBODY,
  SMFIF_CHGFROM,
  SMFIF_CHGHDRS,
  SMFIF_DELRCPT,
  SMFIF_QUARANTINE,
  SMFIF_SETSYMLIST,
  SMFI_INTERNAL,
  SMFI_PROT_VERSION,
  SMFI_PROT_VERSION_MIN,
  SMFI_V1_ACTS,
  SMFI_V1_PROT,
  SMFIP_HDR_LEADSPC,
  SMFIP_MDS_1M,
  SMFIP_MDS_256K,
  SMFIP_NOBODY,
  SMFIP_NOCONNECT,
  SMFIP_NODATA,
  SMFIP_NOEOH,
  SMFIP_NOHDRS,
  SMFIP_NOHELO,
  SMFIP_NOMAIL,
  SMFIP_NORCPT,
  SMFIP_NOUNKNOWN,
  SMFIP_NR_ALL,
  SMFIP_RCPT_REJ,
  SMFIP_SKIP,
  SMFIP_TEST,
  MACRO_STAGES,
  STAGE_BITS,
  type StageName,
} from '../protocol/constants.js';

/** `filter.actions` names → SMFIF_* bits. */
export const ACTION_BITS: Readonly<Record<ActionName, number>> = {
  addHeader: SMFIF_ADDHDRS,
  changeHeader: SMFIF_CHGHDRS,
  replaceBody: SMFIF_CHGBODY,
  addRecipient: SMFIF_ADDRCPT,
  addRecipientWithArgs: SMFIF_ADDRCPT_PAR,
  deleteRecipient: SMFIF_DELRCPT,
  quarantine: SMFIF_QUARANTINE,
  changeFrom: SMFIF_CHGFROM,
  setSymbolList: SMFIF_SETSYMLIST,
};

const ACTION_ENTRIES = Object.entries(ACTION_BITS) as Array<[ActionName, number]>;

/** The names of the SMFIF_* bits in `mask` (unnamed bits are left out). */
export function actionNames(mask: number): ActionName[] {
  return ACTION_ENTRIES.filter(([, bit]) => (mask & bit) !== 0).map(([name]) => name);
}

/** Callback name → its NO/NR bits (the callback named after the stage). */
const STAGE_ENTRIES = Object.entries(STAGE_BITS) as Array<[StageName, (typeof STAGE_BITS)[StageName]]>;

/** Everything the session needs after a successful negotiation. */
export interface NegotiationOutcome {
  /** The OPTNEG reply to send. */
  response: OptnegResponse;
  /** What callbacks see as `ctx.negotiated` (`protocol` = bits sent to the MTA). */
  options: NegotiatedOptions;
  /** Protocol bits the filter asked for, before dropping unoffered ones (shapes the state machine). */
  requested: number;
  /** NR bits in force: the session never sends a decision for these stages. */
  noReply: number;
  /** NR bits the MTA did not offer: the session answers `c` itself (libmilter emulation). */
  emulatedNoReply: number;
}

function refuse(message: string): MilterProtocolError {
  return new MilterProtocolError('ERR_MILTER_NEGOTIATION', message);
}

function isWord(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

/** The offer as libmilter reads it: actions 0 means 0x0F, protocol 0 means 0x3F. */
export function normalizeOffer(offer: NegotiationOffer): NegotiationOffer {
  return {
    version: offer.version,
    actions: offer.actions === 0 ? SMFI_V1_ACTS : offer.actions >>> 0,
    protocol: offer.protocol === 0 ? SMFI_V1_PROT : offer.protocol >>> 0,
  };
}

/** SMFIF_* mask of `names`; throws on an unknown name. */
export function actionMask(names: readonly ActionName[]): number {
  let mask = 0;
  for (const name of names) {
    const b = ACTION_BITS[name];
    if (b === undefined) throw refuse(`unknown action ${String(name)}`);
    mask |= b;
  }
  return mask;
}

function macroLists(macros: Partial<Record<MacroStage, readonly string[]>>): MacroLists {
  const lists: MacroLists = {};
  for (const [stage, names] of Object.entries(macros) as Array<[MacroStage, readonly string[] | undefined]>) {
    // `stage` comes from user code at run time: check it is one of ours before indexing.
    const n = Object.hasOwn(MACRO_STAGES, stage) ? MACRO_STAGES[stage].number : undefined;
    if (n === undefined) throw refuse(`unknown macro stage ${stage}`);
    if (names === undefined) continue;
    if (!Array.isArray(names) || names.some((m) => typeof m !== 'string' || /[\s\0]/.test(m) || m === '')) {
      throw refuse(`invalid macro list for ${stage}`);
    }
    lists[n] = names.join(' ');
  }
  return lists;
}

/**
 * The request libmilter derives from a filter (§5.3 step 1): NO-bits for absent callbacks, NR bits for
 * `noReply` stages, SKIP when offered and the filter has `body`, LEADSPC/RCPT_REJ when asked and offered;
 * actions from `filter.actions` (default: every offered EOM action when `eom` exists, none otherwise).
 *
 * This is what milterd asks for when the filter has no `negotiate`. A `negotiate` callback can start from
 * it and change one thing:
 *
 * ```ts
 * negotiate(ctx, offer) {
 *   const d = defaultNegotiation(filter, offer);
 *   return { ...d, protocol: d.protocol | (offer.protocol & SMFIP_NR_HDR) };
 * },
 * ```
 */
export function defaultNegotiation(filter: Filter<unknown>, offer: NegotiationOffer): NegotiateResult {
  let protocol = 0;
  for (const [cb, bits] of STAGE_ENTRIES) if (typeof filter[cb] !== 'function') protocol |= bits.no;
  for (const stage of filter.noReply ?? []) {
    const bits = (STAGE_BITS as Readonly<Record<string, { nr: number } | undefined>>)[stage];
    if (bits === undefined) throw refuse(`unknown noReply stage ${String(stage)}`);
    protocol |= bits.nr;
  }
  if (typeof filter.body === 'function') protocol |= SMFIP_SKIP & offer.protocol;
  if (filter.headerLeadingSpace === true) protocol |= SMFIP_HDR_LEADSPC & offer.protocol;
  if (filter.rejectedRecipients === true) protocol |= SMFIP_RCPT_REJ & offer.protocol;
  // NO-bits for absent callbacks are a courtesy: if the MTA cannot skip a step we simply answer continue,
  // so an unoffered one is dropped instead of failing the session (libmilter would refuse).
  const noBits =
    SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY;
  protocol &= ~(noBits & ~offer.protocol);
  const actions =
    filter.actions !== undefined
      ? actionMask(filter.actions)
      : typeof filter.eom === 'function'
        ? offer.actions & ~SMFIF_SETSYMLIST
        : 0;
  return filter.macros ? { actions, protocol, macros: filter.macros } : { actions, protocol };
}

/**
 * Negotiate. `override` is the result of the filter's own `negotiate` callback, if it has one.
 *
 * @param maxDataSize payload floor configured for the session (default 64 KiB - 1, libmilter's); an
 *   MDS bit the MTA offers raises it to that size.
 * @throws MilterProtocolError `ERR_MILTER_NEGOTIATION` when the session must be refused (version < 2,
 *   actions or protocol bits requested that the MTA did not offer, malformed override).
 */
export function negotiate(
  filter: Filter<unknown>,
  rawOffer: NegotiationOffer,
  maxDataSize: number = MILTER_MDS_64K,
  override?: NegotiateResult,
): NegotiationOutcome {
  if (!isWord(rawOffer.version) || rawOffer.version < SMFI_PROT_VERSION_MIN) {
    throw refuse(`MTA protocol version ${String(rawOffer.version)} is older than 2`);
  }
  const offer = normalizeOffer(rawOffer);
  const version = Math.min(offer.version, SMFI_PROT_VERSION);
  const request = override ?? defaultNegotiation(filter, offer);
  if (!isWord(request.actions) || !isWord(request.protocol)) {
    throw refuse('negotiate result needs numeric actions and protocol');
  }
  // Filters never choose the internal bits (MDS, test); libmilter strips them and derives MDS itself.
  const requested = request.protocol & ~(SMFI_INTERNAL | SMFIP_TEST);
  const noReply = requested & SMFIP_NR_ALL;
  const emulatedNoReply = noReply & ~offer.protocol;
  let protocol = requested & ~emulatedNoReply;
  protocol &= ~((SMFIP_NODATA | SMFIP_NOUNKNOWN) & ~offer.protocol);
  if ((protocol & ~offer.protocol) !== 0) {
    throw refuse(`protocol bits 0x${(protocol & ~offer.protocol).toString(16)} not offered by the MTA`);
  }
  let actions = request.actions;
  const macros = request.macros ? macroLists(request.macros) : undefined;
  if (macros !== undefined) actions |= SMFIF_SETSYMLIST & offer.actions;
  if ((actions & ~offer.actions) !== 0) {
    throw refuse(`actions 0x${(actions & ~offer.actions).toString(16)} not offered by the MTA`);
  }
  let size = maxDataSize;
  if ((offer.protocol & SMFIP_MDS_1M) !== 0) {
    protocol |= SMFIP_MDS_1M;
    size = Math.max(size, MILTER_MDS_1M);
  } else if ((offer.protocol & SMFIP_MDS_256K) !== 0) {
    protocol |= SMFIP_MDS_256K;
    size = Math.max(size, MILTER_MDS_256K);
  }
  protocol >>>= 0;
  const response: OptnegResponse = { kind: 'optneg', version, actions, protocol };
  if (macros !== undefined) response.macroLists = macros;
  return {
    response,
    options: Object.freeze({
      version,
      actions,
      protocol,
      maxDataSize: size,
      actionNames: actionNames(actions),
    }),
    requested,
    noReply,
    emulatedNoReply,
  };
}
