/** Reading `strace -e trace=connect,sendto,sendmsg,sendmmsg` output: every IP address contacted. */
import { readFile } from 'node:fs/promises';

export interface Contact {
  file: string;
  line: string;
  address: string;
}

/** Every IPv4/IPv6 address in a connect/sendto/sendmsg/sendmmsg call of these strace files. */
export async function contactedAddresses(files: readonly string[]): Promise<Contact[]> {
  const out: Contact[] = [];
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (!/\b(connect|sendto|sendmsg|sendmmsg)\(/.test(line)) continue;
      for (const m of line.matchAll(/inet_addr\("([^"]*)"\)/g)) out.push({ file, line, address: m[1] ?? '' });
      for (const m of line.matchAll(/inet_pton\(AF_INET6, "([^"]*)"/g))
        out.push({ file, line, address: m[1] ?? '' });
    }
  }
  return out;
}

export function isLoopback(address: string): boolean {
  return /^127\./.test(address) || address === '::1' || /^::ffff:127\./i.test(address);
}
