/**
 * The whole-message filter of a scenario's `filter.message` section, written against the public
 * `messageFilter` API: each op changes the transaction, and milterd turns the changes into milter actions.
 */
import { messageFilter, type Filter, type Transaction } from '../../../src/index.js';
import { contentBytes, type MessageOp } from './scenario.js';

function expand(text: string, trx: Transaction): string {
  return text.replace(/\{\{(header:[^}]+|bodySize)\}\}/g, (_, ref: string) =>
    ref === 'bodySize' ? String(trx.bodySize) : (trx.headers.get(ref.slice(7)) ?? ''),
  );
}

/** a-z → A-Z, chunk by chunk, as the body streams from wherever the transaction keeps it. */
async function* upperCase(body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of body) {
    const out = Buffer.from(chunk);
    for (let i = 0; i < out.length; i++) {
      const b = out[i] as number;
      if (b >= 0x61 && b <= 0x7a) out[i] = b - 0x20;
    }
    yield out;
  }
}

/** `onClose` hears each connection's `close` (the runner checks it came once per connection). */
export function messageScenarioFilter<P>(
  ops: readonly MessageOp[],
  onClose: (ctx: { id: string; macros(): Record<string, string> }) => void,
): Filter<P> {
  return messageFilter<P>({
    name: 'message-e2e',
    close: (ctx) => onClose(ctx),
    message(trx) {
      const x = (text: string): string => expand(text, trx);
      for (const op of ops) {
        if ('setHeader' in op) trx.headers.set(op.setHeader[0], x(op.setHeader[1]));
        else if ('deleteHeader' in op) trx.headers.delete(op.deleteHeader);
        else if ('insertHeader' in op)
          trx.headers.insert(op.insertHeader[0], op.insertHeader[1], x(op.insertHeader[2]));
        else if ('insertBefore' in op) {
          const [before, name, value] = op.insertBefore;
          const at = [...trx.headers].findIndex((h) => h.name.toLowerCase() === before.toLowerCase());
          if (at < 0) throw new Error(`insertBefore: no ${before} header`);
          trx.headers.insert(at, name, x(value));
        } else if ('addHeader' in op) trx.headers.add(op.addHeader[0], x(op.addHeader[1]));
        else if ('addRecipient' in op) trx.recipients.add(op.addRecipient);
        else if ('removeRecipient' in op) trx.recipients.remove(op.removeRecipient);
        else if ('setSender' in op) trx.setSender(op.setSender);
        else if ('replaceBody' in op) trx.replaceBody(contentBytes(op.replaceBody));
        else if ('upperCaseBody' in op) trx.replaceBody(upperCase(trx.body()));
      }
    },
  });
}
