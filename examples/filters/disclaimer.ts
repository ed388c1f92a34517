/**
 * Appends a footer to plain-text mail (no Content-Type, or `text/plain`, and not base64 or
 * quoted-printable): the body is read and rewritten as a stream, so a 20 MiB message costs no more memory
 * than a small one (milterd keeps large bodies in an unlinked temporary file). Marks what it did with an
 * `X-Disclaimer: added` header, and leaves a message that already has one alone.
 */
import { messageFilter, type Filter, type Transaction } from 'milterd';

export interface DisclaimerOptions {
  /** The footer's lines (without line ends). */
  lines: readonly string[];
}

/** Can the footer be appended as text without breaking the message's MIME structure? */
export function isPlainText(trx: Transaction): boolean {
  const type = (trx.headers.get('Content-Type') ?? 'text/plain').trim().toLowerCase();
  const encoding = (trx.headers.get('Content-Transfer-Encoding') ?? '7bit').trim().toLowerCase();
  return type.startsWith('text/plain') && (encoding === '7bit' || encoding === '8bit');
}

async function* withFooter(body: AsyncIterable<Buffer>, footer: Buffer): AsyncGenerator<Buffer> {
  let last: number | undefined;
  for await (const chunk of body) {
    if (chunk.length > 0) last = chunk[chunk.length - 1];
    yield chunk;
  }
  // The body's last line may lack its CRLF; the footer starts on a line of its own.
  if (last !== undefined && last !== 0x0a) yield Buffer.from('\r\n');
  yield footer;
}

/** The change itself, on one transaction. */
export function disclaimerMessage(options: DisclaimerOptions): (trx: Transaction) => void {
  const footer = Buffer.from(['', '-- ', ...options.lines].map((l) => `${l}\r\n`).join(''), 'utf8');
  return (trx) => {
    if (!isPlainText(trx) || trx.headers.has('X-Disclaimer')) return;
    trx.replaceBody(withFooter(trx.body(), footer));
    trx.headers.add('X-Disclaimer', 'added');
  };
}

export function disclaimer(options: DisclaimerOptions): Filter {
  return messageFilter({ name: 'disclaimer', message: disclaimerMessage(options) });
}

export default (options: Partial<DisclaimerOptions> = {}): Filter =>
  disclaimer({ lines: options.lines ?? ['This message was sent through Example Org.'] });
