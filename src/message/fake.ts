/**
 * An in-memory transaction for unit tests of `messageFilter` callbacks: build one from a message, run
 * the filter's `message` on it, and read the milter actions it would send, in order.
 */
import type { BodySource, ConnectionInfo } from '../filter.js';
import { BodyStore, bodyPiece, checkBodySource } from '../session/body-store.js';
import { MessageTransaction, type ModificationSink, type Transaction } from './transaction.js';

/** One milter action, as `fakeTransaction(...).actions()` lists them (protocol order). */
export type RecordedAction =
  | { action: 'changeFrom'; sender: string; args: string | undefined }
  | { action: 'addRecipient'; recipient: string; args: string | undefined }
  | { action: 'deleteRecipient'; recipient: string }
  | { action: 'changeHeader'; name: string; index: number; value: string | null }
  | { action: 'insertHeader'; index: number; name: string; value: string }
  | { action: 'addHeader'; name: string; value: string }
  | { action: 'quarantine'; reason: string }
  | { action: 'replaceBody'; body: Buffer };

/** The message a fake transaction starts from; everything is optional. */
export interface FakeMessage {
  sender?: string;
  senderArgs?: readonly string[];
  recipients?: readonly string[];
  /** Header values as the filter would receive them (leading space stripped unless you negotiate it). */
  headers?: ReadonlyArray<readonly [string, string]>;
  body?: string | Buffer;
  connection?: ConnectionInfo;
  helo?: string;
  macros?: Readonly<Record<string, string>>;
}

/** The body as the EOM context would take it: the same checks, so a test fails where production would. */
async function collect(body: BodySource): Promise<Buffer> {
  const checked = checkBodySource(body);
  if (checked.kind === 'buffer') return Buffer.from(checked.buffer);
  const parts: Buffer[] = [];
  for await (const piece of checked.stream) parts.push(Buffer.from(bodyPiece(piece)));
  return Buffer.concat(parts);
}

/** A transaction over `message`, and the actions the changes made to it amount to. */
export function fakeTransaction(message: FakeMessage = {}): {
  transaction: Transaction;
  actions(): Promise<RecordedAction[]>;
} {
  const store = new BodyStore(Number.MAX_SAFE_INTEGER);
  if (message.body !== undefined) {
    void store.append(typeof message.body === 'string' ? Buffer.from(message.body, 'latin1') : message.body);
  }
  const macros = message.macros ?? {};
  const trx = new MessageTransaction({
    connection: message.connection,
    helo: message.helo,
    macro: (name) => macros[name] ?? macros[name.startsWith('{') ? name.slice(1, -1) : `{${name}}`],
    sender: message.sender ?? '<sender@example.org>',
    senderArgs: message.senderArgs ?? [],
    recipients: message.recipients ?? ['<rcpt@example.net>'],
    headers: message.headers ?? [],
    body: store,
  });
  return {
    transaction: trx,
    async actions() {
      const out: RecordedAction[] = [];
      const sink: ModificationSink = {
        changeFrom: (sender, args) => void out.push({ action: 'changeFrom', sender, args }),
        addRecipient: (recipient, args) => void out.push({ action: 'addRecipient', recipient, args }),
        deleteRecipient: (recipient) => void out.push({ action: 'deleteRecipient', recipient }),
        changeHeader: (name, index, value) => void out.push({ action: 'changeHeader', name, index, value }),
        insertHeader: (index, name, value) => void out.push({ action: 'insertHeader', index, name, value }),
        addHeader: (name, value) => void out.push({ action: 'addHeader', name, value }),
        quarantine: (reason) => void out.push({ action: 'quarantine', reason }),
        replaceBody: async (body) => void out.push({ action: 'replaceBody', body: await collect(body) }),
      };
      await trx.applyTo(sink);
      return out;
    },
  };
}
