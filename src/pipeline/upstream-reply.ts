/**
 * An upstream's SMFIR_REPLYCODE text back to a decision with its reply, so that the session formats the
 * same text again (src/session/reply.ts): `550 5.7.1 text`, `550 text`, `550 5.7.1`, and the multi-line
 * `550-5.7.1 a` CRLF `550 5.7.1 b` of smfi_setmlreply. Pure.
 */
import type { SmtpReply } from '../filter.js';
import { formatReply } from '../session/reply.js';

/** The decision a reply text stands for, with the reply when the session can send it as it came. */
export interface ParsedReply {
  kind: 'reject' | 'tempfail';
  /** Undefined when the text breaks the session's reply rules (the decision then goes without it). */
  reply?: SmtpReply;
}

const XCODE = /^[245]\.\d{1,3}\.\d{1,3}$/;

interface Line {
  code: string;
  last: boolean;
  xcode: string | undefined;
  text: string | undefined;
}

/** `%%` is how the text reached the wire; the session doubles `%` itself. */
function unescape(text: string): string {
  return text.includes('%%') ? text.replace(/%%/g, '%') : text;
}

function parseLine(line: string): Line | undefined {
  const code = line.slice(0, 3);
  if (!/^\d{3}$/.test(code)) return undefined;
  if (line.length === 3) return { code, last: true, xcode: undefined, text: undefined };
  const sep = line[3];
  if (sep !== ' ' && sep !== '-') return undefined;
  const rest = line.slice(4);
  const space = rest.indexOf(' ');
  const first = space < 0 ? rest : rest.slice(0, space);
  if (XCODE.test(first)) {
    return {
      code,
      last: sep === ' ',
      xcode: first,
      text: space < 0 ? undefined : unescape(rest.slice(space + 1)),
    };
  }
  return { code, last: sep === ' ', xcode: undefined, text: unescape(rest) };
}

/**
 * The decision for `text`: 4xx tempfail, 5xx reject, with the parsed reply when the session accepts it
 * (otherwise without). Undefined when the text does not start with a 4xx or 5xx code: not a reply any MTA
 * takes.
 */
export function replyFromText(text: string): ParsedReply | undefined {
  const head = text[0];
  if (!/^[45]\d\d/.test(text)) return undefined;
  const kind = head === '4' ? 'tempfail' : 'reject';
  const lines = text.split('\r\n').map(parseLine);
  let reply: SmtpReply | undefined;
  const first = lines[0];
  if (lines.length === 1 && first !== undefined) {
    reply = { code: first.code };
    if (first.xcode !== undefined) reply.xcode = first.xcode;
    if (first.text !== undefined) reply.text = first.text;
  } else if (
    first?.xcode !== undefined &&
    lines.every(
      (l, i) =>
        l !== undefined &&
        l.code === first.code &&
        l.xcode === first.xcode &&
        l.text !== undefined &&
        l.last === (i === lines.length - 1),
    )
  ) {
    reply = { code: first.code, xcode: first.xcode, text: lines.map((l) => l?.text ?? '') };
  }
  if (reply === undefined) return { kind };
  try {
    formatReply(reply, kind);
  } catch {
    return { kind };
  }
  return { kind, reply };
}
