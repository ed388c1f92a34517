/**
 * Test filters. `everyActionFilter` decides at EOM from the Subject header, so one filter covers every
 * EOM decision and every modification action, and it counts close() calls per connection id.
 */
import { Decision, type Filter } from '../../src/filter.js';

/** EOM behaviours selected by the message's Subject. */
export type EomCase = 'modify' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'continue';
export const EOM_CASES: readonly EomCase[] = [
  'modify',
  'accept',
  'reject',
  'tempfail',
  'discard',
  'continue',
];

/** What the filter saw. */
export interface FilterRecord {
  /** close() calls per connection id. */
  closes: Map<string, number>;
  eoms: number;
  aborts: number;
  bodyBytes: number;
}

interface Priv {
  subject: string | undefined;
}

/** The replacement body sent by the 'modify' case. */
export const REPLACED_BODY = 'replaced by milterd\r\n';

/** The modifications the 'modify' case sends, in order (as the MTA receives them). */
export const MODIFY_EXPECTED = [
  { kind: 'addHeader', name: 'X-Milterd', value: 'checked' },
  { kind: 'insertHeader', index: 0, name: 'X-First', value: 'top' },
  { kind: 'changeHeader', index: 1, name: 'Subject', value: 'modified' },
  { kind: 'changeHeader', index: 1, name: 'X-Remove', value: '' },
  { kind: 'addRecipient', recipient: '<added@example.net>' },
  { kind: 'addRecipientWithArgs', recipient: '<par@example.net>', args: 'NOTIFY=NEVER' },
  { kind: 'deleteRecipient', recipient: '<gone@example.net>' },
  { kind: 'changeFrom', sender: '<new@example.org>' },
  { kind: 'quarantine', reason: 'held for review' },
] as const;

/** A filter exercising every EOM decision and modification; `record` collects what it saw. */
export function everyActionFilter(record: FilterRecord = newRecord()): Filter<Priv> {
  return {
    name: 'every-action',
    connect(ctx) {
      ctx.priv = { subject: undefined };
    },
    envrcpt(_ctx, recipient) {
      if (recipient === '<reject@example.net>') {
        return Decision.reject({ code: 550, xcode: '5.7.1', text: 'Recipient rejected' });
      }
      return undefined;
    },
    header(ctx, name, value) {
      if (name.toLowerCase() === 'subject' && ctx.priv) ctx.priv.subject = value.trim();
    },
    body(_ctx, chunk) {
      record.bodyBytes += chunk.length;
    },
    async eom(ctx) {
      record.eoms++;
      const subject = (ctx.priv?.subject ?? 'continue') as EomCase;
      switch (subject) {
        case 'accept':
          return 'accept';
        case 'reject':
          return Decision.reject({ code: 554, xcode: '5.7.1', text: 'message rejected' });
        case 'tempfail':
          return 'tempfail';
        case 'discard':
          return 'discard';
        case 'modify':
          ctx.progress();
          ctx.addHeader('X-Milterd', 'checked');
          ctx.insertHeader(0, 'X-First', 'top');
          ctx.changeHeader('Subject', 1, 'modified');
          ctx.deleteHeader('X-Remove', 1);
          ctx.addRecipient('<added@example.net>');
          ctx.addRecipient('<par@example.net>', 'NOTIFY=NEVER');
          ctx.deleteRecipient('<gone@example.net>');
          ctx.changeFrom('<new@example.org>');
          ctx.quarantine('held for review');
          await ctx.replaceBody(Buffer.from(REPLACED_BODY));
          return 'continue';
        default:
          return 'continue';
      }
    },
    abort() {
      record.aborts++;
    },
    close(ctx) {
      record.closes.set(ctx.id, (record.closes.get(ctx.id) ?? 0) + 1);
    },
  };
}

/** An empty record. */
export function newRecord(): FilterRecord {
  return { closes: new Map(), eoms: 0, aborts: 0, bodyBytes: 0 };
}
