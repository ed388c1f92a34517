/**
 * The report of `milterd test`: every step with the milter's reply, the modifications, and the outcome,
 * as a JSON document or as aligned text.
 */
import type { ClientReply, MessageResult, NegotiatedClientOptions } from '../client/index.js';
import type { ModificationResponse } from '../protocol/types.js';
import type { OutputMessageSummary } from './test-output.js';
import { unreachable } from '../unreachable.js';

export const ACTION_NAMES: Array<[number, string]> = [
  [0x001, 'addHeader'],
  [0x002, 'replaceBody'],
  [0x004, 'addRecipient'],
  [0x008, 'deleteRecipient'],
  [0x010, 'changeHeader'],
  [0x020, 'quarantine'],
  [0x040, 'changeFrom'],
  [0x080, 'addRecipientWithArgs'],
  [0x100, 'setMacroList'],
];

export const PROTOCOL_NAMES: Array<[number, string]> = [
  [0x1, 'noConnect'],
  [0x2, 'noHelo'],
  [0x4, 'noMail'],
  [0x8, 'noRcpt'],
  [0x10, 'noBody'],
  [0x20, 'noHeaders'],
  [0x40, 'noEoh'],
  [0x80, 'noReplyHeader'],
  [0x100, 'noUnknown'],
  [0x200, 'noData'],
  [0x400, 'skip'],
  [0x800, 'rejectedRecipients'],
  [0x1000, 'noReplyConnect'],
  [0x2000, 'noReplyHelo'],
  [0x4000, 'noReplyMail'],
  [0x8000, 'noReplyRcpt'],
  [0x10000, 'noReplyData'],
  [0x20000, 'noReplyUnknown'],
  [0x40000, 'noReplyEoh'],
  [0x80000, 'noReplyBody'],
  [0x100000, 'headerLeadingSpace'],
];

const names = (mask: number, table: Array<[number, string]>): string[] =>
  table.filter(([bit]) => (mask & bit) !== 0).map(([, n]) => n);

const hex = (n: number): string => '0x' + (n >>> 0).toString(16);

/** One step of the conversation. */
export interface TestStep {
  stage: string;
  /** What was sent, in SMTP-ish words. */
  sent: string;
  reply: ClientReply;
}

/** The whole report (the `--json` document). */
export interface TestReport {
  milter: string;
  negotiated: {
    version: number;
    actions: string[];
    actionsMask: string;
    protocol: string[];
    protocolMask: string;
    macros: Record<string, string>;
  };
  steps: TestStep[];
  modifications: Array<Record<string, unknown>>;
  result: {
    /** What the MTA would do with the message. */
    outcome: 'accepted' | 'rejected' | 'tempfailed' | 'discarded' | 'quarantined';
    stoppedAt: string;
    reply: ClientReply;
    acceptedRecipients: string[];
    progress: number;
  };
  /** `--output-message`: what was written, and the envelope after the milter's changes. */
  delivered?: OutputMessageSummary;
}

/** What the MTA does with the message given the deciding reply. */
function outcomeOf(
  reply: ClientReply,
  mods: readonly ModificationResponse[],
): TestReport['result']['outcome'] {
  switch (reply.kind) {
    case 'reject':
      return 'rejected';
    case 'tempfail':
    case 'shutdown':
    case 'connFail':
      return 'tempfailed';
    case 'discard':
      return 'discarded';
    case 'replyCode':
      return reply.text.startsWith('5') ? 'rejected' : reply.text.startsWith('4') ? 'tempfailed' : 'accepted';
    case 'continue':
    case 'accept':
    case 'skip':
    case 'noreply':
    case 'skipped':
      return mods.some((m) => m.kind === 'quarantine') ? 'quarantined' : 'accepted';
    default:
      return unreachable(reply, 'reply');
  }
}

/** A modification as a plain JSON object; replace-body chunks are merged into one. */
function modificationsJson(mods: readonly ModificationResponse[]): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  let body: Buffer[] | undefined;
  for (const m of mods) {
    if (m.kind === 'replaceBody') {
      if (body === undefined) {
        body = [];
        out.push({ kind: 'replaceBody' });
      }
      body.push(m.chunk);
      continue;
    }
    out.push({ ...m });
  }
  const rb = out.find((m) => m.kind === 'replaceBody');
  if (rb !== undefined && body !== undefined) {
    const all = Buffer.concat(body);
    rb.bytes = all.length;
    rb.body = all.toString('utf8');
  }
  return out;
}

/** Build the report from the client's negotiation and the played message. */
export function buildReport(
  milter: string,
  negotiated: NegotiatedClientOptions,
  steps: TestStep[],
  result: MessageResult,
): TestReport {
  const mods = result.eom?.modifications ?? [];
  const macros: Record<string, string> = {};
  for (const [k, v] of Object.entries(negotiated.macroLists)) if (v !== undefined) macros[k] = v;
  return {
    milter,
    negotiated: {
      version: negotiated.version,
      actions: names(negotiated.actions, ACTION_NAMES),
      actionsMask: hex(negotiated.actions),
      protocol: names(negotiated.protocol, PROTOCOL_NAMES),
      protocolMask: hex(negotiated.protocol),
      macros,
    },
    steps,
    modifications: modificationsJson(mods),
    result: {
      outcome: outcomeOf(result.reply, mods),
      stoppedAt: result.stoppedAt,
      reply: result.reply,
      acceptedRecipients: result.acceptedRecipients,
      progress: result.eom?.progress ?? 0,
    },
  };
}

/** A reply in words. */
export function describeReply(reply: ClientReply): string {
  switch (reply.kind) {
    case 'replyCode':
      return `replyCode ${JSON.stringify(reply.text)}`;
    case 'noreply':
      return '(no reply: NR negotiated)';
    case 'skipped':
      return '(not sent: the milter asked to skip this step)';
    default:
      return reply.kind;
  }
}

function describeModification(m: Record<string, unknown>): string {
  const s = (k: string): string =>
    String(m[k] ?? '')
      .replace(/\r/g, '\\r')
      .replace(/\n/g, '\\n');
  switch (m.kind) {
    case 'addHeader':
      return `add header      ${s('name')}: ${s('value')}`;
    case 'insertHeader':
      return `insert header   #${s('index')} ${s('name')}: ${s('value')}`;
    case 'changeHeader':
      return s('value') === ''
        ? `delete header   ${s('name')}[${s('index')}]`
        : `change header   ${s('name')}[${s('index')}]: ${s('value')}`;
    case 'addRecipient':
      return `add recipient   ${s('recipient')}`;
    case 'addRecipientWithArgs':
      return `add recipient   ${s('recipient')} ${s('args')}`.trimEnd();
    case 'deleteRecipient':
      return `delete recipient ${s('recipient')}`;
    case 'changeFrom':
      return `change sender   ${s('sender')} ${s('args')}`.trimEnd();
    case 'quarantine':
      return `quarantine      ${s('reason')}`;
    case 'replaceBody':
      return `replace body    (${s('bytes')} bytes)`;
    default:
      return JSON.stringify(m);
  }
}

/** The report as aligned text lines. */
export function formatReportText(r: TestReport): string {
  const lines: string[] = [];
  const n = r.negotiated;
  lines.push(`milter     ${r.milter} (protocol v${n.version})`);
  lines.push(`actions    ${n.actions.join(', ') || '(none)'} [${n.actionsMask}]`);
  lines.push(`protocol   ${n.protocol.join(', ') || '(none)'} [${n.protocolMask}]`);
  for (const [stage, list] of Object.entries(n.macros)) lines.push(`macros     stage ${stage}: ${list}`);
  lines.push('');
  const width = Math.min(60, Math.max(...r.steps.map((s) => s.sent.length), 10));
  for (const step of r.steps) {
    const sent = step.sent.length > width ? step.sent.slice(0, width - 1) + '…' : step.sent.padEnd(width);
    lines.push(`${step.stage.padEnd(8)}  ${sent}  -> ${describeReply(step.reply)}`);
  }
  lines.push('');
  if (r.modifications.length === 0) lines.push('modifications: none');
  else {
    lines.push(`modifications (${r.modifications.length}):`);
    for (const m of r.modifications) lines.push(`  ${describeModification(m)}`);
  }
  const res = r.result;
  lines.push('');
  lines.push(`result     ${res.outcome} (decided at ${res.stoppedAt}: ${describeReply(res.reply)})`);
  if (r.delivered !== undefined) lines.push(...deliveredLines(r.delivered));
  return lines.join('\n') + '\n';
}

/** The `--output-message` summary in words. */
function deliveredLines(d: OutputMessageSummary): string[] {
  const lines: string[] = [];
  const e = d.envelope;
  const was = e.originalSender === undefined ? '' : ` (changed, was ${e.originalSender})`;
  lines.push(`envelope   from ${e.sender}${e.senderArgs === undefined ? '' : ` ${e.senderArgs}`}${was}`);
  for (const rcpt of e.recipients)
    lines.push(
      `           to ${rcpt.address}${rcpt.args === undefined ? '' : ` ${rcpt.args}`}${rcpt.added ? ' (added)' : ''}`,
    );
  for (const gone of e.deleted) lines.push(`           deleted ${gone}`);
  lines.push(
    d.written
      ? `output     ${d.file === '-' ? 'stdout' : d.file} (${d.bytes ?? 0} bytes)`
      : `output     nothing written: ${d.reason ?? ''}`,
  );
  return lines;
}
