/**
 * What the policy wrapper negotiates instead of the user's filter, and what the user asked for (so the
 * wrapper calls the user's callbacks exactly where libmilter would have). What the user asks for is read
 * from the session's own negotiation of the user's filter (`defaultNegotiation`), or from the user's
 * `negotiate` result: the same protocol bits, one reading.
 */
import type { Filter, MacroStage, NegotiateResult, NegotiationOffer, NoReplyStage } from '../filter.js';
import {
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
  SMFI_PROT_VERSION,
  SMFIP_RCPT_REJ,
  STAGE_BITS,
} from '../protocol/constants.js';
import { defaultNegotiation } from '../session/negotiate.js';

/** Stages the wrapper may or may not forward to the user. */
export type WantStage = NoReplyStage | 'eom' | 'abort';

/** Per stage: is the user's callback called, and is its decision used (false = the user declared NR). */
export type StageWants = Record<WantStage, { call: boolean; reply: boolean }> & {
  rejectedRecipients: boolean;
};

/** Stages where an armed shutdown may fire: the policy needs them sent and replied to. */
export const FIRING_STAGES = [
  'helo',
  'envfrom',
  'envrcpt',
  'data',
  'unknown',
] as const satisfies NoReplyStage[];

const STAGES = Object.keys(STAGE_BITS) as NoReplyStage[];

/** Macros the policy reads, added to a user's explicit list for that stage (never creating a list). */
const POLICY_MACROS: Partial<Record<MacroStage, readonly string[]>> = {
  envfrom: ['{auth_authen}'],
  envrcpt: ['{rcpt_mailer}'],
};

/** An MTA that offers everything: what the user's filter asks for when nothing is refused. */
const FULL_OFFER: NegotiationOffer = {
  version: SMFI_PROT_VERSION,
  actions: SMFI_CURR_ACTS,
  protocol: SMFI_CURR_PROT,
};

/**
 * Where the user's callbacks are called and their decisions used, given the protocol bits the user's
 * filter asked for: a callback it has and did not turn off (NO bit) is called; its decision is used
 * unless it asked for no reply (NR bit).
 */
export function wantsOf<P>(user: Filter<P>, asked: number): StageWants {
  const wants = { rejectedRecipients: (asked & SMFIP_RCPT_REJ) !== 0 } as StageWants;
  for (const stage of STAGES) {
    wants[stage] = {
      call: typeof user[stage] === 'function' && (asked & STAGE_BITS[stage].no) === 0,
      reply: (asked & STAGE_BITS[stage].nr) === 0,
    };
  }
  wants.eom = { call: typeof user.eom === 'function', reply: true };
  wants.abort = { call: typeof user.abort === 'function', reply: true };
  return wants;
}

/** What the user's filter asks for without a negotiate callback: the session's default negotiation of it. */
export function staticWants<P>(user: Filter<P>): StageWants {
  return wantsOf(user, defaultNegotiation(user as Filter<unknown>, FULL_OFFER).protocol);
}

/**
 * Merge the policy's macros into the lists the user requested. A stage the user left alone keeps the
 * MTA's default list (a list replaces the default, and both MTAs' defaults already carry what we need).
 */
export function mergeMacros(
  macros: Partial<Record<MacroStage, readonly string[]>> | undefined,
): Partial<Record<MacroStage, readonly string[]>> | undefined {
  if (macros === undefined) return undefined;
  const out: Partial<Record<MacroStage, readonly string[]>> = { ...macros };
  for (const [stage, names] of Object.entries(POLICY_MACROS) as Array<[MacroStage, readonly string[]]>) {
    const list = out[stage];
    // An empty list means "no macros" in Sendmail but "the default list" in Postfix: leave it alone.
    if (list === undefined || list.length === 0) continue;
    out[stage] = [...list, ...names.filter((n) => !list.includes(n))];
  }
  return out;
}

/** Static negotiation fields of the wrapped filter, and which content callbacks it must define. */
export function wrappedFilterShape<P>(
  user: Filter<P>,
  trackBytes: boolean,
): {
  fields: Pick<
    Filter<P>,
    'name' | 'actions' | 'macros' | 'noReply' | 'headerLeadingSpace' | 'rejectedRecipients'
  >;
  header: boolean;
  body: boolean;
} {
  const header = typeof user.header === 'function' || trackBytes;
  const body = typeof user.body === 'function' || trackBytes;
  const noReply = new Set<NoReplyStage>(user.noReply ?? []);
  for (const stage of FIRING_STAGES) noReply.delete(stage);
  // Stages the wrapper adds only to watch: the MTA need not wait for a reply.
  if (typeof user.connect !== 'function') noReply.add('connect');
  if (typeof user.header !== 'function' && header) noReply.add('header');
  if (typeof user.body !== 'function' && body) noReply.add('body');
  const fields: Pick<
    Filter<P>,
    'name' | 'actions' | 'macros' | 'noReply' | 'headerLeadingSpace' | 'rejectedRecipients'
  > = {
    name: user.name,
    // The wrapper always defines eom; without this, "eom defined" would request every offered action.
    actions: user.actions ?? (typeof user.eom === 'function' ? undefined : []),
    macros: mergeMacros(user.macros),
    noReply: [...noReply],
    headerLeadingSpace: user.headerLeadingSpace,
    rejectedRecipients: true,
  };
  return { fields, header, body };
}

/**
 * Rewrite the result of the user's own `negotiate`: the firing stages are sent and replied to, CONNECT is
 * sent, headers/body are sent when bytes are tracked (NR when the user skipped them), RCPT_REJ is
 * requested when offered. Returns what the user asked for, to route callbacks.
 */
export function adjustNegotiation<P>(
  user: Filter<P>,
  result: NegotiateResult,
  offer: NegotiationOffer,
  trackBytes: boolean,
): { wants: StageWants; adjusted: NegotiateResult } {
  const asked = result.protocol;
  const wants = wantsOf(user, asked);
  let p = asked;
  for (const stage of FIRING_STAGES) p &= ~(STAGE_BITS[stage].no | STAGE_BITS[stage].nr);
  // Stages the policy must see but need not answer: a step the user skipped is sent, without a reply.
  const listenTo = (stage: NoReplyStage): void => {
    const { no, nr } = STAGE_BITS[stage];
    if ((asked & no) !== 0) p = (p & ~no) | nr;
  };
  listenTo('connect');
  if (trackBytes) {
    listenTo('header');
    listenTo('body');
  }
  if ((offer.protocol & SMFIP_RCPT_REJ) !== 0) p |= SMFIP_RCPT_REJ;
  const adjusted: NegotiateResult = { ...result, protocol: p >>> 0 };
  const macros = mergeMacros(result.macros);
  if (macros !== undefined) adjusted.macros = macros;
  return { wants, adjusted };
}
