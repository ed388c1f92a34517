/**
 * What Postfix 3.7 and Sendmail 8.17 send a milter, by default configuration: their offer, the macros
 * before each event and the packets around a message. Derived from the real captures in
 * fixtures/captures/{postfix,sendmail} (test/unit/bench/script.test.ts and test/cli compare) and from
 * `postconf -d milter_*_macros` / sendmail-cf's confMILTER_MACROS_* for what the captures cannot show
 * (AUTH). The one table: the load generator (bench/loadgen/script.ts) and `milterd test --mta` play it.
 */
import { SMFI_CURR_ACTS } from '../protocol/constants.js';
import type { MilterCommand } from '../protocol/types.js';

/** An MTA whose milter conversation is modelled. */
export type MtaName = 'postfix' | 'sendmail';
export const MTA_NAMES: readonly MtaName[] = ['postfix', 'sendmail'];

/** The offer of both Postfix 3.7 (milter_protocol = 6) and Sendmail 8.17. */
export const MTA_OFFER = { version: 6, actions: SMFI_CURR_ACTS, protocol: 0x1fffff } as const;

/** Macro name/value pairs in the order the MTA sends them. */
export type MacroPairs = Array<[string, string]>;

/** The values an MTA would fill its macros with. */
export interface MtaMacroValues {
  /** The MTA's own host name (`j`, Postfix's {daemon_name}, Sendmail's {if_name}). */
  myHostname: string;
  /** The address the MTA's daemon listens on ({daemon_addr}). */
  daemonAddr: string;
  /** The SMTP client's verified host name, undefined when it did not resolve. */
  clientName: string | undefined;
  clientAddr: string;
  queueId: string;
  /** Envelope addresses without angle brackets. */
  sender: string;
  recipient: string;
  /** Next hop of the sender/recipient (Postfix's form may carry `:port`; Sendmail's never does). */
  mailHost: string;
  rcptHost: string;
  /** SASL login and mechanism of an authenticated session, undefined without AUTH. */
  authUser?: string | undefined;
  authType?: string | undefined;
  /** The message's Message-ID (Sendmail's {msg_id} at EOM). */
  messageId: string;
}

/** Which macros an MTA sends before each event (undefined: no MACRO packet), and around a message. */
export interface MtaProfile {
  connect(v: MtaMacroValues): MacroPairs;
  helo(v: MtaMacroValues): MacroPairs;
  envfrom(v: MtaMacroValues): MacroPairs;
  /** `queued`: the queue file exists (Postfix opens it at the first accepted recipient: `i` from then). */
  envrcpt(v: MtaMacroValues, queued: boolean): MacroPairs;
  /** DATA, HEADER (before every one), EOH, BODY (before every chunk): the same list. */
  content(v: MtaMacroValues): MacroPairs | undefined;
  eom(v: MtaMacroValues): MacroPairs;
  /** Before SMFIC_UNKNOWN. */
  unknown(v: MtaMacroValues): MacroPairs | undefined;
  /** The SMFIC_UNKNOWN argument for an SMTP command line (Postfix: only the verb; Sendmail: all of it). */
  unknownLine(line: string): string;
  /** Packets after every message (Postfix's mail_reset: ABORT). */
  afterMessage: MilterCommand[];
  /** Packets before QUIT at the end of the connection. */
  beforeQuit: MilterCommand[];
  /** Packets needing no reply share the next write (buffered stream) instead of one write per packet. */
  coalesce: boolean;
}

/** SASL macros, present only for an authenticated session (neither MTA sends an empty one). */
function auth(v: MtaMacroValues): MacroPairs {
  return v.authUser === undefined
    ? []
    : [
        ['{auth_type}', v.authType ?? 'PLAIN'],
        ['{auth_authen}', v.authUser],
      ];
}

export const MTA_PROFILES: Record<MtaName, MtaProfile> = {
  // postconf -d: milter_connect_macros, milter_mail_macros, … as far as they have values without TLS.
  postfix: {
    connect: (v) => [
      ['j', v.myHostname],
      ['{daemon_name}', v.myHostname],
      ['{daemon_addr}', v.daemonAddr],
      ['v', 'Postfix 3.7.11'],
      ['_', `${v.clientName ?? 'unknown'} [${v.clientAddr}]`],
    ],
    helo: () => [],
    // i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}: no queue file yet.
    envfrom: (v) => [
      ...auth(v),
      ['{mail_addr}', v.sender],
      ['{mail_host}', v.mailHost],
      ['{mail_mailer}', 'smtp'],
    ],
    envrcpt: (v, queued) => [
      ...(queued ? ([['i', v.queueId]] as MacroPairs) : []),
      ['{rcpt_addr}', v.recipient],
      ['{rcpt_host}', v.rcptHost],
      ['{rcpt_mailer}', 'smtp'],
    ],
    content: (v) => [['i', v.queueId]],
    eom: (v) => [['i', v.queueId]],
    // milter_unknown_command_macros is empty: an empty MACRO packet all the same (the capture has `D U`).
    unknown: () => [],
    unknownLine: (line) => line.trim().split(/\s+/)[0] ?? '',
    afterMessage: [{ kind: 'abort' }],
    beforeQuit: [{ kind: 'abort' }],
    coalesce: true,
  },
  // sendmail-cf 8.17 confMILTER_MACROS_* defaults, as far as they have values without TLS ({if_addr}: not
  // for a loopback interface; {auth_ssf}: only with a SASL security layer).
  sendmail: {
    connect: (v) => [
      ['j', v.myHostname],
      ['_', v.clientName === undefined ? `[${v.clientAddr}]` : `${v.clientName} [${v.clientAddr}]`],
      ['{daemon_name}', 'MTA'],
      ['{if_name}', v.myHostname],
    ],
    helo: () => [],
    envfrom: (v) => [
      ['i', v.queueId],
      ...auth(v),
      ['{mail_mailer}', 'relay'],
      ['{mail_host}', v.mailHost.replace(/:\d+$/, '')],
      ['{mail_addr}', v.sender],
    ],
    envrcpt: (v) => [
      ['{rcpt_mailer}', 'relay'],
      ['{rcpt_host}', v.rcptHost.replace(/:\d+$/, '')],
      ['{rcpt_addr}', v.recipient],
    ],
    content: () => undefined,
    eom: (v) => [['{msg_id}', v.messageId]],
    unknown: () => undefined,
    unknownLine: (line) => line,
    afterMessage: [],
    beforeQuit: [],
    coalesce: false,
  },
};

/**
 * Events whose macros both MTAs send even when the filter negotiated the event itself away (SMFIP_NO*):
 * "send macros (regardless of whether we send cmd)" (Sendmail), "Send the macros for this event, even
 * when we're not reporting the event itself" (Postfix). Postfix does not even walk the headers/body for
 * a filter that turned them off, so no D L / D N / D B then.
 */
export const MACROS_WHEN_SKIPPED = {
  connect: true,
  helo: true,
  envfrom: true,
  envrcpt: true,
  data: true,
  header: false,
  eoh: false,
  body: false,
  unknown: true,
} as const satisfies Record<string, boolean>;
