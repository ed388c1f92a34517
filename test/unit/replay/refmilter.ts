/**
 * A TypeScript twin of the libmilter reference filter that fixtures/captures were recorded against
 * (fixtures/captures/README.md). Its behaviour was worked out from the captures themselves:
 *
 * - negotiation: every offered action, SMFIP_SKIP if offered, no macro lists (the captured OPTNEG replies
 *   are 13 bytes: `0x1ff/0x400` for Postfix, Sendmail and miltertest's first connection; `0xf/0x0` for
 *   miltertest's `actions=0 protocol=0x1ff` offer, which libmilter reads as V1 actions);
 * - HELO `helo-reject.example` / `helo-tempfail.example`: 550 / 451 with a custom reply;
 * - MAIL `blocked@`, `from-tempfail@`, `from-shutdown@`, and the third MAIL of a connection: 550 / 451 / 421;
 * - RCPT `reject@`, `tempfail@`, `discard@`, `rcpt-shutdown@`: 550 / 451 / discard / 421 (the transaction
 *   goes on after a rejected recipient);
 * - EOM, by header: `X-Shutdown` → 421; by Subject keyword: REJECTEOM, TEMPFAILEOM, MLREPLY (3-line 550),
 *   DISCARD end the message without modifications; otherwise `X-Ref-Milter: seen` is added, then CHANGE,
 *   INSHDR (and deletion of `X-Remove-Me`), ADDRCPT, RCPTPAR, DELRCPT, BODY, FROM, QUARANTINE apply in
 *   that order and ACCEPT answers accept instead of continue.
 *
 * Like the C filter it keeps per-connection data in `priv` (set at CONNECT), so `close` sees `undefined`
 * when CONNECT never came (miltertest conn-0002, whose log says `cb=close priv=NULL`).
 */
import type { Decision, EomContext, Filter, NegotiationOffer, StageContext } from '../../../src/filter.js';
import { Decision as D, FILTER_CALLBACKS } from '../../../src/filter.js';
import { SMFIP_SKIP } from '../../../src/protocol/constants.js';

/** The reference filter's private data: the C filter's `struct` per connection. */
export interface RefPriv {
  /** MAIL commands seen on this connection. */
  msgs: number;
  subject: string | undefined;
  shutdown: boolean;
  removeMe: boolean;
  bodyBytes: number;
}

/** One line of the callback log, in call order (like the C filter's `refmilter.log`). */
export interface RefLogEntry {
  cb: string;
  /** Short description of the arguments. */
  detail?: string;
  /** True when `priv` was set when the callback started. */
  privSet: boolean;
}

const REPLACED_BODY = 'This body was replaced by refmilter.\r\nSecond line.\r\n';

/** The local part of `<user@domain>`, lower-cased. */
function localPart(address: string): string {
  const bare = address.replace(/^<|>$/g, '');
  const at = bare.lastIndexOf('@');
  return (at < 0 ? bare : bare.slice(0, at)).toLowerCase();
}

function resetMessage(priv: RefPriv): void {
  priv.subject = undefined;
  priv.shutdown = false;
  priv.removeMe = false;
  priv.bodyBytes = 0;
}

/** The custom reply a 421 uses, as both MTAs show it. */
const shutdown = (): Decision => D.shutdown('refmilter closing connection', '4.7.0');

/**
 * Build a reference filter writing its callback log into `log`.
 *
 * `timing: 'sync'` (the C filter's shape) answers every callback synchronously, so the session answers
 * without a promise; `'async'` runs every callback one macrotask later (as a filter doing a DNS or
 * database lookup would), so every answer goes through the session's promise path. Both must give the
 * same bytes.
 */
export function referenceFilter(log: RefLogEntry[], timing: 'sync' | 'async' = 'sync'): Filter<RefPriv> {
  const filter = syncReferenceFilter(log);
  return timing === 'sync' ? filter : deferred(filter);
}

const CALLBACKS = FILTER_CALLBACKS;

/** `filter` with every callback started one macrotask later and answered through a promise. */
function deferred<P>(filter: Filter<P>): Filter<P> {
  const out: Filter<P> = { ...filter };
  const slots = out as Record<(typeof CALLBACKS)[number], unknown>;
  for (const name of CALLBACKS) {
    const fn = (filter as Record<(typeof CALLBACKS)[number], unknown>)[name];
    if (typeof fn !== 'function') continue;
    slots[name] = async (...args: unknown[]): Promise<unknown> => {
      await new Promise<void>((resolve) => setImmediate(resolve));
      return (fn as (...a: unknown[]) => unknown).apply(filter, args);
    };
  }
  return out;
}

function syncReferenceFilter(log: RefLogEntry[]): Filter<RefPriv> {
  const note = (ctx: { priv: RefPriv | undefined }, cb: string, detail?: string): void => {
    log.push(
      detail === undefined
        ? { cb, privSet: ctx.priv !== undefined }
        : { cb, detail, privSet: ctx.priv !== undefined },
    );
  };
  const priv = (ctx: StageContext<RefPriv>): RefPriv => {
    // Postfix/Sendmail always send CONNECT first; allocate lazily anyway, as a defensive C filter would.
    ctx.priv ??= { msgs: 0, subject: undefined, shutdown: false, removeMe: false, bodyBytes: 0 };
    return ctx.priv;
  };

  return {
    name: 'refmilter',
    negotiate(ctx, offer: NegotiationOffer) {
      note(
        ctx,
        'negotiate',
        `actions=0x${offer.actions.toString(16)} protocol=0x${offer.protocol.toString(16)}`,
      );
      // xxfi_negotiate: *pf0 = f0 (every offered action); *pf1 = f1 & SMFIP_SKIP; no SETSYMLIST lists.
      return { actions: offer.actions, protocol: offer.protocol & SMFIP_SKIP };
    },
    connect(ctx, info) {
      note(ctx, 'connect', `host=${info.hostname} addr=${info.address}`);
      priv(ctx);
    },
    helo(ctx, hostname) {
      note(ctx, 'helo', hostname);
      if (hostname === 'helo-reject.example') {
        ctx.setReply(550, '5.7.1', 'HELO rejected by refmilter');
        return 'reject';
      }
      if (hostname === 'helo-tempfail.example') {
        ctx.setReply(451, '4.7.1', 'HELO tempfailed by refmilter');
        return 'tempfail';
      }
      return 'continue';
    },
    envfrom(ctx, sender) {
      const p = priv(ctx);
      p.msgs++;
      resetMessage(p);
      note(ctx, 'envfrom', `${sender} msgno=${p.msgs}`);
      switch (localPart(sender)) {
        case 'blocked':
          ctx.setReply(550, '5.7.1', 'Sender blocked by refmilter');
          return 'reject';
        case 'from-tempfail':
          ctx.setReply(451, '4.7.1', 'Sender tempfailed by refmilter');
          return 'tempfail';
        case 'from-shutdown':
          return shutdown();
      }
      return p.msgs >= 3 ? shutdown() : 'continue';
    },
    envrcpt(ctx, recipient) {
      note(ctx, 'envrcpt', recipient);
      switch (localPart(recipient)) {
        case 'reject':
          return D.reject({ code: 550, xcode: '5.7.1', text: 'Recipient rejected by refmilter' });
        case 'tempfail':
          return D.tempfail({ code: 451, xcode: '4.7.1', text: 'Recipient tempfailed by refmilter' });
        case 'discard':
          return 'discard';
        case 'rcpt-shutdown':
          return shutdown();
      }
      return undefined;
    },
    data(ctx) {
      note(ctx, 'data');
    },
    header(ctx, name, value) {
      note(ctx, 'header', `${name}=${value}`);
      const p = priv(ctx);
      const lower = name.toLowerCase();
      if (lower === 'subject') p.subject = value;
      else if (lower === 'x-shutdown') p.shutdown = true;
      else if (lower === 'x-remove-me') p.removeMe = true;
    },
    eoh(ctx) {
      note(ctx, 'eoh');
    },
    body(ctx, chunk) {
      note(ctx, 'body', `len=${chunk.length}`);
      priv(ctx).bodyBytes += chunk.length;
    },
    eom: refEom(note, priv),
    abort(ctx) {
      note(ctx, 'abort');
      if (ctx.priv) resetMessage(ctx.priv);
    },
    unknown(ctx, line) {
      note(ctx, 'unknown', line);
    },
    close(ctx) {
      note(ctx, 'close', ctx.priv === undefined ? 'priv=NULL' : `priv=set msgs=${ctx.priv.msgs}`);
      ctx.priv = undefined;
    },
  };
}

function refEom(
  note: (ctx: { priv: RefPriv | undefined }, cb: string, detail?: string) => void,
  priv: (ctx: StageContext<RefPriv>) => RefPriv,
): (ctx: EomContext<RefPriv>) => Decision {
  return (ctx) => {
    const p = priv(ctx);
    const subject = p.subject ?? '';
    note(ctx, 'eom', `bodylen=${p.bodyBytes} subject=${subject}`);
    const has = (word: string): boolean => subject.includes(word);
    if (p.shutdown) return shutdown();
    if (has('REJECTEOM')) {
      ctx.setReply(550, '5.7.1', 'Message rejected by refmilter');
      return 'reject';
    }
    if (has('TEMPFAILEOM')) {
      ctx.setReply(451, '4.7.1', 'Message tempfailed by refmilter');
      return 'tempfail';
    }
    if (has('MLREPLY')) {
      ctx.setReply(550, '5.7.1', 'refmilter line one', 'refmilter line two', 'refmilter line three');
      return 'reject';
    }
    if (has('DISCARD')) return 'discard';

    ctx.addHeader('X-Ref-Milter', 'seen');
    // No SMFIP_HDR_LEADSPC: the C filter wrote " [changed by refmilter]%s" and the MTA keeps the space.
    if (has('CHANGE')) ctx.changeHeader('Subject', 1, ` [changed by refmilter]${subject}`);
    if (has('INSHDR')) {
      ctx.insertHeader(0, 'X-Ref-First', 'inserted at index 0');
      if (p.removeMe) ctx.deleteHeader('X-Remove-Me', 1);
    }
    if (has('ADDRCPT')) ctx.addRecipient('<extra@example.net>');
    if (has('RCPTPAR')) ctx.addRecipient('<extrapar@example.net>', 'NOTIFY=NEVER');
    if (has('DELRCPT')) {
      const first = ctx.envelope?.recipients[0];
      if (first) ctx.deleteRecipient(first.address);
    }
    // A Buffer is taken at once; only a stream source needs awaiting.
    if (has('BODY')) void ctx.replaceBody(Buffer.from(REPLACED_BODY, 'latin1'));
    if (has('FROM')) ctx.changeFrom('<changed-from@example.org>');
    if (has('QUARANTINE')) ctx.quarantine('refmilter quarantine');
    return has('ACCEPT') ? 'accept' : 'continue';
  };
}
