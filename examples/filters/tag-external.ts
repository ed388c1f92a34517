/**
 * Marks mail from outside: `[EXTERNAL] ` before the Subject when the envelope sender's domain is not one of
 * yours, and removes `X-Internal-Only` headers from such mail (outsiders must not be able to forge them).
 * Written on the transaction API: the whole message at end of message, changed as an object.
 *
 *   milterd serve --filter ./examples/filters/dist/tag-external.js
 */
import { messageFilter, type Filter, type Transaction } from 'milterd';

export interface TagExternalOptions {
  /** Your domains (the sender's domain is compared case-insensitively; subdomains count as yours). */
  internalDomains: readonly string[];
  /** Default `[EXTERNAL] `. */
  prefix?: string;
}

/** The domain of an envelope address as the MTA sends it (`<user@Example.org>`), lower case; '' for `<>`. */
export function senderDomain(sender: string): string {
  const address = sender.replace(/^<|>$/g, '');
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

export function isInternal(domain: string, internalDomains: readonly string[]): boolean {
  return internalDomains.some((d) => {
    const own = d.toLowerCase();
    return domain === own || domain.endsWith(`.${own}`);
  });
}

/** The change itself, on one transaction: what a unit test calls with a `fakeTransaction`. */
export function tagExternalMessage(options: TagExternalOptions): (trx: Transaction) => void {
  const prefix = options.prefix ?? '[EXTERNAL] ';
  return (trx) => {
    if (isInternal(senderDomain(trx.sender), options.internalDomains)) return;
    trx.headers.delete('X-Internal-Only');
    const subject = trx.headers.get('Subject');
    if (subject === undefined) trx.headers.add('Subject', prefix.trimEnd());
    else if (!subject.startsWith(prefix)) trx.headers.set('Subject', prefix + subject);
  };
}

export function tagExternal(options: TagExternalOptions): Filter {
  return messageFilter({ name: 'tag-external', message: tagExternalMessage(options) });
}

/** A module for `milterd serve --filter`: its options come from the config file's `options:`. */
export default (options: Partial<TagExternalOptions> = {}): Filter =>
  tagExternal({ internalDomains: options.internalDomains ?? ['example.org'], prefix: options.prefix });
