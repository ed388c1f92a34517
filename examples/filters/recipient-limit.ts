/**
 * Refuses recipients beyond a limit per message with `452 4.5.3 Too many recipients` (RFC 5321: the
 * client sends the rest in another transaction), and counts them per message in `ctx.messagePriv`,
 * which milterd resets at every message boundary. Written with the streaming callbacks: it decides at
 * RCPT time, before any content is sent.
 */
import { Decision, type Filter } from 'milterd';

export interface RecipientLimitOptions {
  /** Recipients accepted per message. */
  max: number;
}

interface PerMessage {
  recipients: number;
}

export function recipientLimit(options: RecipientLimitOptions): Filter<undefined, PerMessage> {
  return {
    name: 'recipient-limit',
    // Only RCPT matters: every other step is negotiated away (the MTA does not send it).
    envrcpt(ctx) {
      const m = (ctx.messagePriv ??= { recipients: 0 });
      if (m.recipients >= options.max) {
        return Decision.tempfail({ code: 452, xcode: '4.5.3', text: 'Too many recipients' });
      }
      m.recipients++;
      return Decision.continue;
    },
  };
}

export default (options: Partial<RecipientLimitOptions> = {}): Filter =>
  recipientLimit({ max: options.max ?? 100 });
