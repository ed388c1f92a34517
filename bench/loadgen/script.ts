/**
 * The conversation the load generator plays, shaped like Postfix 3.7's milter8 client:
 *
 *   OPTNEG (v6, actions 0x1FF, protocol 0x1FFFFF)
 *   MACRO C + CONNECT, MACRO H + HELO                                   once per milter connection
 *   MACRO M + MAIL, (MACRO R + RCPT) × R, MACRO T + DATA,
 *   HEADER × H, MACRO N + EOH, BODY × ceil(size / 65535), MACRO E + EOM   per message
 *   ABORT                                                               after every message (mail_reset)
 *   QUIT                                                                at the end of the connection
 *
 * Like Postfix, an event the filter negotiated away (SMFIP_NO*) is not sent at all (nor its macros), and
 * an event with SMFIP_NR_* is sent without waiting for a reply. Postfix decides which events exist from
 * its own protocol version (6), not from the version the filter answers (go-milter answers 2), so DATA is
 * sent to every candidate.
 */
import { MILTER_CHUNK_SIZE, SMFI_CURR_ACTS, STAGE_BITS } from '../../src/protocol/constants.js';
import { encodeCommand, encodeCommands } from '../../src/protocol/encode.js';
import type { MilterCommand } from '../../src/protocol/types.js';

/** Postfix 3.7's offer. */
export const OFFER_VERSION = 6;
export const OFFER_ACTIONS = SMFI_CURR_ACTS; // 0x1FF
export const OFFER_PROTOCOL = 0x1fffff;

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

/** One write and, unless `reply` is false, one awaited reply. */
export interface Step {
  stat: number;
  bytes: Buffer;
  reply: boolean;
  eom: boolean;
}

export interface Plan {
  /** CONNECT and HELO. */
  session: Step[];
  /** MAIL … EOM. */
  message: Step[];
  /** ABORT (sent after every message) and QUIT. */
  abort: Buffer;
  quit: Buffer;
}

export const OPTNEG_BYTES = encodeCommand({
  kind: 'optneg',
  version: OFFER_VERSION,
  actions: OFFER_ACTIONS,
  protocol: OFFER_PROTOCOL,
});

interface RawStep {
  stat: StatName;
  commands: MilterCommand[];
  no: number;
  nr: number;
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

function rawSession(unix: boolean): RawStep[] {
  const connect: MilterCommand = unix
    ? { kind: 'connect', hostname: 'localhost', family: 'unix', port: 0, address: '/var/run/bench.sock' }
    : { kind: 'connect', hostname: 'client.example.org', family: 'inet', port: 41234, address: '192.0.2.10' };
  return [
    {
      stat: 'connect',
      no: STAGE_BITS.connect.no,
      nr: STAGE_BITS.connect.nr,
      commands: [
        {
          kind: 'macro',
          stage: 'C',
          macros: [
            ['j', 'mx.example.net'],
            ['{daemon_name}', 'mx.example.net'],
            ['{daemon_addr}', '192.0.2.1'],
            ['v', 'Postfix 3.7.11'],
            ['_', 'client.example.org [192.0.2.10]'],
            ['{client_name}', 'client.example.org'],
          ],
        },
        connect,
      ],
    },
    {
      stat: 'helo',
      no: STAGE_BITS.helo.no,
      nr: STAGE_BITS.helo.nr,
      commands: [{ kind: 'helo', hostname: 'client.example.org' }],
    },
  ];
}

function rawMessage(shape: MessageShape, seq: number): RawStep[] {
  const queueId = `4Q${String(seq).padStart(8, '0')}`;
  const steps: RawStep[] = [
    {
      stat: 'mail',
      no: STAGE_BITS.envfrom.no,
      nr: STAGE_BITS.envfrom.nr,
      commands: [
        {
          kind: 'macro',
          stage: 'M',
          macros: [
            ['i', queueId],
            ['{mail_addr}', 'sender@example.org'],
            ['{mail_mailer}', 'smtp'],
          ],
        },
        { kind: 'mail', sender: '<sender@example.org>', args: ['SIZE=' + String(shape.bodySize)] },
      ],
    },
  ];
  for (let r = 0; r < shape.recipients; r++) {
    const rcpt = `rcpt${r}@example.net`;
    steps.push({
      stat: 'rcpt',
      no: STAGE_BITS.envrcpt.no,
      nr: STAGE_BITS.envrcpt.nr,
      commands: [
        {
          kind: 'macro',
          stage: 'R',
          macros: [
            ['{rcpt_addr}', rcpt],
            ['{rcpt_mailer}', 'local'],
          ],
        },
        { kind: 'rcpt', recipient: `<${rcpt}>`, args: [] },
      ],
    });
  }
  steps.push({
    stat: 'data',
    no: STAGE_BITS.data.no,
    nr: STAGE_BITS.data.nr,
    commands: [{ kind: 'macro', stage: 'T', macros: [['i', queueId]] }, { kind: 'data' }],
  });
  const headerNames = [
    'Received',
    'From',
    'To',
    'Subject',
    'Date',
    'Message-ID',
    'MIME-Version',
    'Content-Type',
  ];
  for (let h = 0; h < shape.headers; h++) {
    const name = headerNames[h % headerNames.length] ?? 'X-Header';
    steps.push({
      stat: 'header',
      no: STAGE_BITS.header.no,
      nr: STAGE_BITS.header.nr,
      commands: [
        {
          kind: 'header',
          name: h < headerNames.length ? name : `X-Bench-${h}`,
          value: ` value of header ${h}`,
        },
      ],
    });
  }
  steps.push({ stat: 'eoh', no: STAGE_BITS.eoh.no, nr: STAGE_BITS.eoh.nr, commands: [{ kind: 'eoh' }] });
  const body = makeBody(shape.bodySize);
  for (let o = 0; o < body.length; o += MILTER_CHUNK_SIZE) {
    steps.push({
      stat: 'body',
      no: STAGE_BITS.body.no,
      nr: STAGE_BITS.body.nr,
      commands: [{ kind: 'body', chunk: body.subarray(o, Math.min(o + MILTER_CHUNK_SIZE, body.length)) }],
    });
  }
  steps.push({
    stat: 'eom',
    no: 0,
    nr: 0,
    commands: [
      { kind: 'macro', stage: 'E', macros: [['i', queueId]] },
      { kind: 'eom', chunk: Buffer.alloc(0) },
    ],
  });
  return steps;
}

/**
 * Turn raw steps into writes for the negotiated protocol mask: drop NO steps, and glue every NR step
 * (sent without waiting) in front of the next awaited one, as the bytes would follow each other anyway.
 */
function compile(raw: readonly RawStep[], protocol: number): Step[] {
  const out: Step[] = [];
  let pending: Buffer[] = [];
  for (const r of raw) {
    if ((protocol & r.no) !== 0) continue;
    const bytes = encodeCommands(r.commands);
    if ((protocol & r.nr) !== 0) {
      pending.push(bytes);
      continue;
    }
    out.push({
      stat: STAT_INDEX[r.stat],
      bytes: pending.length > 0 ? Buffer.concat([...pending, bytes]) : bytes,
      reply: true,
      eom: r.stat === 'eom',
    });
    pending = [];
  }
  if (pending.length > 0) throw new Error('internal: no-reply steps after EOM');
  return out;
}

/** The plan for a negotiated protocol mask (cache it: it is the same for every connection). */
export function buildPlan(shape: MessageShape, protocol: number, unix: boolean): Plan {
  return {
    session: compile(rawSession(unix), protocol),
    message: compile(rawMessage(shape, 1), protocol),
    abort: encodeCommand({ kind: 'abort' }),
    quit: encodeCommand({ kind: 'quit' }),
  };
}
