/**
 * `withShutdownPolicy`: wrap a filter so that a ShutdownPolicy watches every SMTP session and ends it
 * safely, on Postfix and Sendmail alike.
 *
 * How a shutdown ends a session (protocol doc §9): always as `Decision.shutdown(text)`, i.e. TEMPFAIL with
 * a `421 4.7.0` reply, which both MTAs send to the client before hanging up — never the raw
 * SMFIR_SHUTDOWN, which Sendmail treats as a broken filter and Postfix < 3.11 turns into a silent discard
 * at content stages. A verdict reached after a message outcome cannot take back what the client was
 * told, so it is armed and fires at the next command that expects a reply (HELO, MAIL, RCPT, DATA,
 * unknown). A verdict reached at a recipient the filter rejected fires on that recipient's own reply
 * (nothing of that transaction was accepted); at a recipient the MTA rejected itself (SMFIP_RCPT_REJ) the
 * MTA ignores our reply, so it fires at the next command.
 *
 * What the wrapper changes in the user's negotiation, and why:
 * - HELO/MAIL/RCPT/DATA/unknown are always sent and always replied to (no NO bit, no NR bit), so an
 *   armed shutdown can be delivered. The user's callback is still only called where the user asked for
 *   the stage, and its decision is ignored where the user declared `noReply` (as libmilter would).
 * - CONNECT, EOM and ABORT are always sent (the record needs them); CONNECT gets NR when the user had no
 *   connect callback. Headers and body are sent when the policy tracks bytes, with NR when the user had
 *   no such callback.
 * - SMFIP_RCPT_REJ is requested, to count recipients the MTA rejected; those are passed to the user only
 *   when the user asked for `rejectedRecipients`.
 * - ACCEPT before EOM would make the MTA stop talking to the milter (for the message, or for the whole
 *   session at CONNECT/HELO) and blind the policy. It is sent as CONTINUE instead, and the user's
 *   callbacks are no longer called for that message (or session): the outcome is the same (the message
 *   is accepted) and the policy keeps counting. This is the only user decision the wrapper rewrites,
 *   besides replacing a filter-rejected recipient's reply by the 421 when the policy fires there.
 */
import type { Filter } from '../filter.js';
import type { FailureDecision } from '../session/types.js';
import { wrapFilter } from '../wrap-filter.js';
import type { ShutdownPolicy } from './chain.js';
import { PolicyConnections } from './connections.js';
import { Enforcement } from './enforce.js';
import { wrappedFilterShape } from './negotiation.js';
import { PolicyStages } from './stage-handlers.js';

/** Options of `withShutdownPolicy`. */
export interface WithShutdownPolicyOptions {
  /**
   * The session's failure decision (MilterServerOptions.failureDecision), used to count the outcome when
   * a user callback throws. Default 'tempfail'.
   */
  failureDecision?: FailureDecision;
}

/**
 * Return a new filter that runs `filter` under `policy`. The user's filter is not modified; its private
 * data (`ctx.priv`) is untouched (the policy keeps its own per-connection state, keyed by `ctx.id` and
 * dropped at close). One policy may wrap several filters.
 */
export function withShutdownPolicy<P>(
  filter: Filter<P>,
  policy: ShutdownPolicy,
  options: WithShutdownPolicyOptions = {},
): Filter<P> {
  const enforcement = new Enforcement(policy, options.failureDecision ?? 'tempfail');
  const s = new PolicyStages(filter, policy, new PolicyConnections(policy, filter), enforcement);
  const shape = wrappedFilterShape(filter, policy.trackBytes);
  return wrapFilter(filter, {
    fields: shape.fields,
    callbacks: {
      connect: (ctx, info) => s.connect(ctx, info),
      helo: (ctx, hostname) => s.helo(ctx, hostname),
      envfrom: (ctx, sender, args) => s.envfrom(ctx, sender, args),
      envrcpt: (ctx, recipient, args) => s.envrcpt(ctx, recipient, args),
      data: (ctx) => s.data(ctx),
      unknown: (ctx, line) => s.unknown(ctx, line),
      eom: (ctx) => s.eom(ctx),
      abort: (ctx) => s.abort(ctx),
      close: (ctx) => s.close(ctx),
      // Only where the user or the byte count needs them: each one costs a packet per header or chunk.
      ...(shape.header ? { header: (ctx, name, value) => s.header(ctx, name, value) } : {}),
      ...(shape.body ? { body: (ctx, chunk) => s.body(ctx, chunk) } : {}),
      ...(filter.eoh ? { eoh: (ctx) => s.eoh(ctx) } : {}),
      ...(filter.negotiate ? { negotiate: (ctx, offer) => s.negotiate(ctx, offer) } : {}),
    },
  });
}
