/**
 * The conversation the load generator plays: the MTA side of one milter connection, packet for packet
 * as Postfix 3.7 or Sendmail 8.17 send it (captured in fixtures/captures/{postfix,sendmail}/plain;
 * test/unit/bench/script.test.ts compares the two), with synthetic values.
 *
 * Postfix 3.7 (milter8.c), the default:
 *
 *   OPTNEG (v6, actions 0x1FF, protocol 0x1FFFFF)
 *   D C + CONNECT, D H (empty) + HELO                                        once per connection
 *   D M + MAIL, (D R + RCPT) × R, D T + DATA, (D L + HEADER) × H, D N + EOH,
 *   (D B + BODY) × ceil(size / 65535), D E + EOM                             per message
 *   ABORT                                                                    after every message
 *   ABORT + QUIT                                                             at the end
 *
 *   Postfix writes into a buffered stream and only flushes it when it reads a reply (or closes): every
 *   packet that needs no reply (MACRO, ABORT, an SMFIP_NR_* event) goes out in one write with the next
 *   packet that does, e.g. ABORT + D M + MAIL, and ABORT + ABORT + QUIT.
 *
 * Sendmail 8.17 (milter.c, `-bs`-less daemon defaults):
 *
 *   the same OPTNEG; D C + CONNECT, D H (empty) + HELO; D M + MAIL, (D R + RCPT) × R, DATA, HEADER × H,
 *   EOH, BODY × chunks, D E + EOM; no ABORT between messages; QUIT at the end. Every packet is its own
 *   write (Sendmail's milter_write() is one writev per packet; without MILTER_NO_NAGLE the capture
 *   shows the ~40 ms Nagle/delayed-ACK stall between a MACRO and its command, which this generator
 *   does not reproduce: it sets TCP_NODELAY, the stall measures the kernel, not the filter).
 *
 * Both MTAs send an event's macros even when the filter negotiated the event itself away (SMFIP_NO*):
 * "send macros (regardless of whether we send cmd)" (Sendmail), "Send the macros for this event, even
 * when we're not reporting the event itself" (Postfix). That holds for the envelope events; Postfix
 * does not even walk the headers/body for a filter that turned them off, so no D L / D N / D B then.
 * An event with SMFIP_NR_* is sent without waiting for a reply. Postfix decides which events exist from
 * its own protocol version (6), not from the version the filter answers (go-milter answers 2), so DATA
 * is sent to every candidate.
 */
import {
  MACROS_WHEN_SKIPPED,
  MTA_OFFER,
  MTA_PROFILES,
  type MacroPairs,
  type MtaMacroValues,
  type MtaName,
} from '../../src/client/mta-profiles.js';
import { MILTER_CHUNK_SIZE, STAGE_BITS } from '../../src/protocol/constants.js';
import { encodeCommand } from '../../src/protocol/encode.js';
import type { MacroCommand, MilterCommand } from '../../src/protocol/types.js';

export { MTA_NAMES, type MtaName } from '../../src/client/mta-profiles.js';

/** The offer of both Postfix 3.7 and Sendmail 8.17. */
export const OFFER_VERSION = MTA_OFFER.version;
export const OFFER_ACTIONS = MTA_OFFER.actions; // 0x1FF
export const OFFER_PROTOCOL = MTA_OFFER.protocol;

/** Commands whose latency is recorded, in table order. */
export const STAT_NAMES = [
  'optneg',
  'connect',
  'helo',
  'mail',
  'rcpt',
  'data',
  'header',
  'eoh',
  'body',
  'eom',
] as const;
export type StatName = (typeof STAT_NAMES)[number];
export const STAT_INDEX: Record<StatName, number> = Object.fromEntries(
  STAT_NAMES.map((name, i) => [name, i]),
) as Record<StatName, number>;

export interface MessageShape {
  recipients: number;
  headers: number;
  bodySize: number;
}

/** The writes up to and including one packet that needs a reply, then that one awaited reply. */
export interface Step {
  stat: number;
  /** Socket writes, in order: one for Postfix, one per packet for Sendmail. */
  writes: Buffer[];
  eom: boolean;
}

/** Everything one connection writes, for a negotiated protocol mask (cache it per mask). */
export interface Plan {
  mta: MtaName;
  /** CONNECT and HELO. */
  session: Step[];
  /** MAIL … EOM of the connection's first message (no-reply packets left from the session in front). */
  firstMessage: Step[];
  /** MAIL … EOM of every later message (Postfix: the previous message's ABORT in front). */
  nextMessage: Step[];
  /** The last writes of a connection that carried at least one message (Postfix: ABORT ABORT QUIT). */
  endAfterMessage: Buffer[];
  /** The last writes of a connection that carried none (idle connections; Postfix: ABORT QUIT). */
  endWithoutMessage: Buffer[];
}

export const OPTNEG_BYTES = encodeCommand({
  kind: 'optneg',
  version: OFFER_VERSION,
  actions: OFFER_ACTIONS,
  protocol: OFFER_PROTOCOL,
});

/** One SMTP-level event: its macro packet (if the MTA sends one) and its command. */
export interface ScriptEvent {
  stat: StatName;
  macro: MacroCommand | undefined;
  command: MilterCommand;
  /** SMFIP_NO* / SMFIP_NR_* bits of the event (0 for EOM, which is always sent and answered). */
  no: number;
  nr: number;
  /** The macro packet goes out even when the event is negotiated away (envelope events). */
  macroWhenSkipped: boolean;
}

/** The synthetic values of the macros (the MTA's profile says which it sends where). */
function macroValues(queueId: string, sender: string, recipient: string): MtaMacroValues {
  return {
    myHostname: 'mx.example.net',
    daemonAddr: '192.0.2.1',
    clientName: 'client.example.org',
    clientAddr: '192.0.2.10',
    queueId,
    sender,
    recipient,
    mailHost: '[192.0.2.10]:41234',
    rcptHost: '[192.0.2.10]:41234',
    messageId: `<${queueId}@example.org>`,
  };
}

/** A deterministic body of `size` bytes: 76-character lines and CRLF, like real mail. */
export function makeBody(size: number): Buffer {
  const body = Buffer.alloc(size);
  const line = Buffer.from(
    'The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu\r\n',
  );
  for (let o = 0; o < size; o += line.length) line.copy(body, o, 0, Math.min(line.length, size - o));
  return body;
}

function macro(stage: string, pairs: MacroPairs | undefined): MacroCommand | undefined {
  return pairs === undefined ? undefined : { kind: 'macro', stage, macros: pairs };
}

/** CONNECT and HELO events. */
export function sessionEvents(mta: MtaName, unix: boolean): ScriptEvent[] {
  const p = MTA_PROFILES[mta];
  const connect: MilterCommand = unix
    ? { kind: 'connect', hostname: 'localhost', family: 'unix', port: 0, address: '/var/run/bench.sock' }
    : { kind: 'connect', hostname: 'client.example.org', family: 'inet', port: 41234, address: '192.0.2.10' };
  return [
    {
      stat: 'connect',
      macro: macro('C', p.connect(macroValues('', '', ''))),
      command: connect,
      no: STAGE_BITS.connect.no,
      nr: STAGE_BITS.connect.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.connect,
    },
    {
      stat: 'helo',
      macro: macro('H', p.helo(macroValues('', '', ''))),
      command: { kind: 'helo', hostname: 'client.example.org' },
      no: STAGE_BITS.helo.no,
      nr: STAGE_BITS.helo.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.helo,
    },
  ];
}

/** MAIL … EOM events of message number `seq`. */
export function messageEvents(mta: MtaName, shape: MessageShape, seq: number): ScriptEvent[] {
  const p = MTA_PROFILES[mta];
  const queueId = `4Q${String(seq).padStart(8, '0')}`;
  const sender = 'sender@example.org';
  const values = (recipient: string): MtaMacroValues => macroValues(queueId, sender, recipient);
  const events: ScriptEvent[] = [
    {
      stat: 'mail',
      macro: macro('M', p.envfrom(values(''))),
      command: { kind: 'mail', sender: `<${sender}>`, args: ['SIZE=' + String(shape.bodySize)] },
      no: STAGE_BITS.envfrom.no,
      nr: STAGE_BITS.envfrom.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.envfrom,
    },
  ];
  for (let r = 0; r < shape.recipients; r++) {
    const rcpt = `rcpt${r}@example.net`;
    events.push({
      stat: 'rcpt',
      macro: macro('R', p.envrcpt(values(rcpt), false)),
      command: { kind: 'rcpt', recipient: `<${rcpt}>`, args: [] },
      no: STAGE_BITS.envrcpt.no,
      nr: STAGE_BITS.envrcpt.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.envrcpt,
    });
  }
  const c = p.content(values(''));
  events.push({
    stat: 'data',
    macro: macro('T', c),
    command: { kind: 'data' },
    no: STAGE_BITS.data.no,
    nr: STAGE_BITS.data.nr,
    macroWhenSkipped: MACROS_WHEN_SKIPPED.data,
  });
  const headerNames = ['From', 'To', 'Subject', 'Date', 'Message-ID', 'MIME-Version', 'Content-Type'];
  for (let h = 0; h < shape.headers; h++) {
    events.push({
      stat: 'header',
      macro: macro('L', c),
      command: { kind: 'header', name: headerNames[h] ?? `X-Bench-${h}`, value: `value of header ${h}` },
      no: STAGE_BITS.header.no,
      nr: STAGE_BITS.header.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.header,
    });
  }
  events.push({
    stat: 'eoh',
    macro: macro('N', c),
    command: { kind: 'eoh' },
    no: STAGE_BITS.eoh.no,
    nr: STAGE_BITS.eoh.nr,
    macroWhenSkipped: MACROS_WHEN_SKIPPED.eoh,
  });
  const body = makeBody(shape.bodySize);
  for (let o = 0; o < body.length; o += MILTER_CHUNK_SIZE) {
    events.push({
      stat: 'body',
      macro: macro('B', c),
      command: { kind: 'body', chunk: body.subarray(o, Math.min(o + MILTER_CHUNK_SIZE, body.length)) },
      no: STAGE_BITS.body.no,
      nr: STAGE_BITS.body.nr,
      macroWhenSkipped: MACROS_WHEN_SKIPPED.body,
    });
  }
  events.push({
    stat: 'eom',
    macro: macro('E', p.eom(values(''))),
    command: { kind: 'eom', chunk: Buffer.alloc(0) },
    no: 0,
    nr: 0,
    macroWhenSkipped: true,
  });
  return events;
}

/** One packet on the wire; `reply` says whether the MTA waits for an answer after it. */
interface Packet {
  bytes: Buffer;
  stat: number;
  reply: boolean;
}

function noReply(commands: readonly MilterCommand[]): Packet[] {
  return commands.map((c) => ({ bytes: encodeCommand(c), stat: -1, reply: false }));
}

/** The packets of `events` for a negotiated protocol mask: drop NO events, mark NR ones as not awaited. */
function packets(events: readonly ScriptEvent[], protocol: number): Packet[] {
  const out: Packet[] = [];
  for (const e of events) {
    const skipped = (protocol & e.no) !== 0;
    if (e.macro !== undefined && (!skipped || e.macroWhenSkipped)) out.push(...noReply([e.macro]));
    if (skipped) continue;
    out.push({ bytes: encodeCommand(e.command), stat: STAT_INDEX[e.stat], reply: (protocol & e.nr) === 0 });
  }
  return out;
}

function writesOf(group: readonly Packet[], coalesce: boolean): Buffer[] {
  if (group.length === 0) return [];
  if (!coalesce) return group.map((p) => p.bytes);
  return [group.length === 1 ? group[0]!.bytes : Buffer.concat(group.map((p) => p.bytes))];
}

/** Cut packets into steps that each end with an awaited packet; returns the unawaited tail apart. */
function steps(list: readonly Packet[], coalesce: boolean): { steps: Step[]; tail: Packet[] } {
  const out: Step[] = [];
  let group: Packet[] = [];
  for (const p of list) {
    group.push(p);
    if (!p.reply) continue;
    out.push({ stat: p.stat, writes: writesOf(group, coalesce), eom: p.stat === STAT_INDEX.eom });
    group = [];
  }
  return { steps: out, tail: group };
}

/** The plan for a negotiated protocol mask (cache it: it is the same for every connection). */
export function buildPlan(shape: MessageShape, protocol: number, unix: boolean, mta: MtaName): Plan {
  const p = MTA_PROFILES[mta];
  const session = steps(packets(sessionEvents(mta, unix), protocol), p.coalesce);
  const message = packets(messageEvents(mta, shape, 1), protocol);
  const after = noReply(p.afterMessage);
  const end = noReply([...p.beforeQuit, { kind: 'quit' }]);
  const first = steps([...session.tail, ...message], p.coalesce);
  const next = steps([...after, ...message], p.coalesce);
  // EOM always waits for its reply, so nothing is left over after a message.
  if (first.tail.length > 0 || next.tail.length > 0) throw new Error('internal: no-reply packets after EOM');
  return {
    mta,
    session: session.steps,
    firstMessage: first.steps,
    nextMessage: next.steps,
    endAfterMessage: writesOf([...after, ...end], p.coalesce),
    endWithoutMessage: writesOf([...session.tail, ...end], p.coalesce),
  };
}

/**
 * Every write of one whole connection carrying `messages` messages, in order, as the lean driver makes
 * them (OPTNEG, session, messages, end); each step's last write is followed by one awaited reply.
 */
export function connectionWrites(plan: Plan, messages: number): Buffer[] {
  const out: Buffer[] = [OPTNEG_BYTES];
  const add = (list: readonly Step[]): void => {
    for (const s of list) out.push(...s.writes);
  };
  add(plan.session);
  for (let m = 0; m < messages; m++) add(m === 0 ? plan.firstMessage : plan.nextMessage);
  out.push(...(messages > 0 ? plan.endAfterMessage : plan.endWithoutMessage));
  return out;
}
