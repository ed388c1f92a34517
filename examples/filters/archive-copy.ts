/**
 * Sends a copy of mail for chosen recipient domains to an archive address (an added envelope
 * recipient, SMFIR_ADDRCPT), and records it in an `X-Archived-To` header. The original recipients are
 * untouched; a message whose recipients are all outside those domains is not changed.
 */
import { messageFilter, type Filter, type Transaction } from 'milterd';

export interface ArchiveCopyOptions {
  /** The archive mailbox, with angle brackets: `<archive@example.org>`. */
  archive: string;
  /** Recipient domains whose mail is archived (lower case). */
  domains: readonly string[];
}

function domainOf(recipient: string): string {
  const address = recipient.replace(/^<|>$/g, '');
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/** The change itself, on one transaction. */
export function archiveCopyMessage(options: ArchiveCopyOptions): (trx: Transaction) => void {
  const domains = new Set(options.domains.map((d) => d.toLowerCase()));
  return (trx) => {
    if (![...trx.recipients].some((r) => domains.has(domainOf(r)))) return;
    if (trx.recipients.has(options.archive)) return;
    trx.recipients.add(options.archive);
    trx.headers.add('X-Archived-To', options.archive);
  };
}

export function archiveCopy(options: ArchiveCopyOptions): Filter {
  return messageFilter({ name: 'archive-copy', message: archiveCopyMessage(options) });
}

export default (options: Partial<ArchiveCopyOptions> = {}): Filter =>
  archiveCopy({
    archive: options.archive ?? '<archive@example.org>',
    domains: options.domains ?? ['example.org'],
  });
