/**
 * Custom SMTP replies (`SMFIR_REPLYCODE`), validated and formatted like libmilter's `smfi_setreply` and
 * `smfi_setmlreply` (protocol doc §8), plus the class checks Postfix applies (§8.3) so that a reply we send
 * is never thrown away by the MTA.
 */
import type { SmtpReply } from '../filter.js';
import { MilterFilterError } from '../errors.js';
import { MAX_REPLY_LINES, MAX_REPLY_LINE_LENGTH } from '../protocol/constants.js';
import { wireByteLength } from '../protocol/wire-string.js';

/** The two decisions a custom reply can accompany. */
export type ReplyDecision = 'reject' | 'tempfail';

const CODE_RE = /^[45]\d\d$/;
const XCODE_RE = /^([245])\.\d{1,3}\.\d{1,3}$/;

function invalid(message: string): MilterFilterError {
  return new MilterFilterError('ERR_MILTER_INVALID_REPLY', message);
}

/** Validate one text line and double its `%` (Sendmail reads the text as a printf format, §8.3). */
function escapeLine(line: string): string {
  if (typeof line !== 'string') throw invalid('reply text lines must be strings');
  if (/[\r\n\0]/.test(line)) throw invalid('reply text must not contain CR, LF or NUL');
  const escaped = line.includes('%') ? line.replace(/%/g, '%%') : line;
  // Counted as sent: after the `%` doubling, in wire bytes (a raw 8-bit byte is one byte).
  if (wireByteLength(escaped) > MAX_REPLY_LINE_LENGTH) {
    throw invalid(`reply line longer than ${MAX_REPLY_LINE_LENGTH} bytes once % is doubled`);
  }
  return escaped;
}

/** The decision a reply code implies: 4xx → tempfail, 5xx → reject. Throws on a malformed code. */
export function replyDecisionOf(code: number | string): ReplyDecision {
  const rcode = typeof code === 'number' ? String(code) : code;
  if (typeof rcode !== 'string' || !CODE_RE.test(rcode)) {
    throw invalid('reply code must be three digits starting with 4 or 5');
  }
  return rcode[0] === '4' ? 'tempfail' : 'reject';
}

/**
 * Build the `SMFIR_REPLYCODE` text for `reply` sent with `decision`.
 *
 * Rules: `code` is 3 digits, 4xx for tempfail and 5xx for reject; `xcode` is `C.S.D` with C the code's first
 * digit; a string `text` is one line (`550 5.7.1 text`, or `550 text` without xcode), an array is 1..32
 * lines formatted `550-5.7.1 line` CRLF … `550 5.7.1 last` (xcode defaults to `4.0.0`/`5.0.0`); lines are at
 * most 980 bytes without CR/LF/NUL; every `%` is doubled.
 *
 * @throws MilterFilterError `ERR_MILTER_INVALID_REPLY` when any rule is broken.
 */
export function formatReply(reply: SmtpReply, decision: ReplyDecision): string {
  if (reply === null || typeof reply !== 'object') throw invalid('reply must be an object');
  const implied = replyDecisionOf(reply.code);
  if (implied !== decision) {
    throw invalid(`reply code ${String(reply.code)} does not match decision ${decision}`);
  }
  const rcode = String(reply.code);
  const xcode = reply.xcode;
  if (xcode !== undefined) {
    const m = typeof xcode === 'string' ? XCODE_RE.exec(xcode) : null;
    // Postfix refuses an enhanced code whose class differs from the reply class (§8.3).
    if (!m || m[1] !== rcode[0]) throw invalid('xcode must be C.S.D with C equal to the code class');
  }
  const text = reply.text;
  if (Array.isArray(text)) {
    const lines = text as readonly string[];
    if (lines.length < 1 || lines.length > MAX_REPLY_LINES) {
      throw invalid(`a multi-line reply has 1 to ${MAX_REPLY_LINES} lines`);
    }
    const x = xcode ?? `${rcode[0]}.0.0`;
    const last = lines.length - 1;
    let out = '';
    for (let i = 0; i <= last; i++) {
      out += `${rcode}${i === last ? ' ' : '-'}${x} ${escapeLine(lines[i] as string)}`;
      if (i !== last) out += '\r\n';
    }
    return out;
  }
  if (text !== undefined && typeof text !== 'string') throw invalid('reply text must be a string or lines');
  const line = text === undefined ? undefined : escapeLine(text);
  // Same shape as smfi_setreply: "550 " when both optional parts are absent.
  if (xcode === undefined) return `${rcode} ${line ?? ''}`;
  return line === undefined ? `${rcode} ${xcode}` : `${rcode} ${xcode} ${line}`;
}
