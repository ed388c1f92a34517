/**
 * Splitting an RFC 5322 message file into what an MTA sends a milter: header fields (unfolded the way
 * Postfix does: continuation lines joined with a bare LF, their leading white space kept) and the body
 * with CRLF line ends.
 */

/** A message as the milter sees it. */
export interface ParsedMessage {
  /** `[name, value]` in file order; value without the one space after the colon. */
  headers: Array<[name: string, value: string]>;
  /** Body with CRLF line ends. */
  body: Buffer;
}

/**
 * Parse message bytes. Lines may end in LF or CRLF. A header line without a colon ends the header block
 * (the rest is body), as does the first empty line. Throws an Error for a file that has no header at all.
 */
export function parseEml(data: Buffer): ParsedMessage {
  const text = data.toString('latin1');
  const lines = text.split(/\r?\n/);
  const headers: Array<[string, string]> = [];
  let i = 0;
  for (; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line === '') {
      i++;
      break;
    }
    const last = headers[headers.length - 1];
    if (/^[ \t]/.test(line) && last !== undefined) {
      last[1] += '\n' + line;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0 || /[\s]/.test(line.slice(0, colon))) break;
    let value = line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    headers.push([line.slice(0, colon), value]);
  }
  if (headers.length === 0) throw new Error('no header fields found: is this an RFC 5322 message (.eml)?');
  // The file's final newline ends the last body line; it does not add an empty one.
  const bodyLines = lines.slice(i);
  if (bodyLines.length > 0 && bodyLines[bodyLines.length - 1] === '') bodyLines.pop();
  const body = bodyLines.length === 0 ? '' : bodyLines.join('\r\n') + '\r\n';
  // latin1 round-trips every byte, so 8-bit bodies and headers are sent exactly as they are in the file.
  return {
    headers: headers.map(([n, v]) => [
      Buffer.from(n, 'latin1').toString('utf8'),
      Buffer.from(v, 'latin1').toString('utf8'),
    ]),
    body: Buffer.from(body, 'latin1'),
  };
}
