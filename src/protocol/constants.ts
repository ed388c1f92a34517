/**
 * Every number of the sendmail milter wire protocol, named after libmilter's mfapi.h / mfdef.h.
 * This is the only file where protocol numbers appear. See docs/milter-protocol.md.
 */

/** Size of the length prefix and of every 32-bit integer in payloads (MILTER_LEN_BYTES). */
export const MILTER_LEN_BYTES = 4;
/** Size of the three 32-bit words of an OPTNEG payload (MILTER_OPTLEN). */
export const MILTER_OPTLEN = 12;
/** Maximum body bytes per SMFIC_BODY / SMFIR_REPLBODY packet (MILTER_CHUNK_SIZE). */
export const MILTER_CHUNK_SIZE = 65535;
/** Default maximum payload either side accepts (MILTER_MAX_DATA_SIZE, MILTER_MDS_64K). */
export const MILTER_MDS_64K = 64 * 1024 - 1;
/** Payload limit selected by SMFIP_MDS_256K. */
export const MILTER_MDS_256K = 256 * 1024 - 1;
/** Payload limit selected by SMFIP_MDS_1M. */
export const MILTER_MDS_1M = 1024 * 1024 - 1;
/** Highest protocol version we speak (SMFI_PROT_VERSION). */
export const SMFI_PROT_VERSION = 6;
/** Lowest protocol version we accept (libmilter refuses 1). */
export const SMFI_PROT_VERSION_MIN = 2;

/** Commands, MTA → filter (SMFIC_*). */
export const Command = {
  ABORT: 0x41, // 'A' SMFIC_ABORT, v2, no reply
  BODY: 0x42, // 'B' SMFIC_BODY, v2
  CONNECT: 0x43, // 'C' SMFIC_CONNECT, v2
  MACRO: 0x44, // 'D' SMFIC_MACRO, v2, no reply
  BODYEOB: 0x45, // 'E' SMFIC_BODYEOB, v2, always replied to
  HELO: 0x48, // 'H' SMFIC_HELO, v2
  QUIT_NC: 0x4b, // 'K' SMFIC_QUIT_NC, v6, no reply
  HEADER: 0x4c, // 'L' SMFIC_HEADER, v2
  MAIL: 0x4d, // 'M' SMFIC_MAIL, v2
  EOH: 0x4e, // 'N' SMFIC_EOH, v2
  OPTNEG: 0x4f, // 'O' SMFIC_OPTNEG, v2, always replied to
  QUIT: 0x51, // 'Q' SMFIC_QUIT, v2, no reply
  RCPT: 0x52, // 'R' SMFIC_RCPT, v2
  DATA: 0x54, // 'T' SMFIC_DATA, v4
  UNKNOWN: 0x55, // 'U' SMFIC_UNKNOWN, v3
} as const;
export type CommandByte = (typeof Command)[keyof typeof Command];

export const SMFIC_ABORT = Command.ABORT;
export const SMFIC_BODY = Command.BODY;
export const SMFIC_CONNECT = Command.CONNECT;
export const SMFIC_MACRO = Command.MACRO;
export const SMFIC_BODYEOB = Command.BODYEOB;
export const SMFIC_HELO = Command.HELO;
export const SMFIC_QUIT_NC = Command.QUIT_NC;
export const SMFIC_HEADER = Command.HEADER;
export const SMFIC_MAIL = Command.MAIL;
export const SMFIC_EOH = Command.EOH;
export const SMFIC_OPTNEG = Command.OPTNEG;
export const SMFIC_QUIT = Command.QUIT;
export const SMFIC_RCPT = Command.RCPT;
export const SMFIC_DATA = Command.DATA;
export const SMFIC_UNKNOWN = Command.UNKNOWN;

/** Responses and actions, filter → MTA (SMFIR_*). */
export const Response = {
  ADDRCPT: 0x2b, // '+' SMFIR_ADDRCPT, v2, EOM only, SMFIF_ADDRCPT
  DELRCPT: 0x2d, // '-' SMFIR_DELRCPT, v2, EOM only, SMFIF_DELRCPT
  ADDRCPT_PAR: 0x32, // '2' SMFIR_ADDRCPT_PAR, v6, EOM only, SMFIF_ADDRCPT_PAR
  SHUTDOWN: 0x34, // '4' SMFIR_SHUTDOWN, v6 (Postfix only; unsafe, see §9)
  ACCEPT: 0x61, // 'a' SMFIR_ACCEPT
  REPLBODY: 0x62, // 'b' SMFIR_REPLBODY, EOM only, SMFIF_CHGBODY
  CONTINUE: 0x63, // 'c' SMFIR_CONTINUE
  DISCARD: 0x64, // 'd' SMFIR_DISCARD
  CHGFROM: 0x65, // 'e' SMFIR_CHGFROM, v6, EOM only, SMFIF_CHGFROM
  CONN_FAIL: 0x66, // 'f' SMFIR_CONN_FAIL (defined only; no MTA implements it)
  ADDHEADER: 0x68, // 'h' SMFIR_ADDHEADER, EOM only, SMFIF_ADDHDRS
  INSHEADER: 0x69, // 'i' SMFIR_INSHEADER, v6, EOM only, SMFIF_ADDHDRS
  SETSYMLIST: 0x6c, // 'l' SMFIR_SETSYMLIST (never sent as a packet)
  CHGHEADER: 0x6d, // 'm' SMFIR_CHGHEADER, EOM only, SMFIF_CHGHDRS
  PROGRESS: 0x70, // 'p' SMFIR_PROGRESS, EOM only (portable)
  QUARANTINE: 0x71, // 'q' SMFIR_QUARANTINE, EOM only, SMFIF_QUARANTINE
  REJECT: 0x72, // 'r' SMFIR_REJECT
  SKIP: 0x73, // 's' SMFIR_SKIP, v6, needs SMFIP_SKIP
  TEMPFAIL: 0x74, // 't' SMFIR_TEMPFAIL
  REPLYCODE: 0x79, // 'y' SMFIR_REPLYCODE
  OPTNEG: 0x4f, // 'O' the OPTNEG reply reuses SMFIC_OPTNEG
} as const;
export type ResponseByte = (typeof Response)[keyof typeof Response];

export const SMFIR_ADDRCPT = Response.ADDRCPT;
export const SMFIR_DELRCPT = Response.DELRCPT;
export const SMFIR_ADDRCPT_PAR = Response.ADDRCPT_PAR;
export const SMFIR_SHUTDOWN = Response.SHUTDOWN;
export const SMFIR_ACCEPT = Response.ACCEPT;
export const SMFIR_REPLBODY = Response.REPLBODY;
export const SMFIR_CONTINUE = Response.CONTINUE;
export const SMFIR_DISCARD = Response.DISCARD;
export const SMFIR_CHGFROM = Response.CHGFROM;
export const SMFIR_CONN_FAIL = Response.CONN_FAIL;
export const SMFIR_ADDHEADER = Response.ADDHEADER;
export const SMFIR_INSHEADER = Response.INSHEADER;
export const SMFIR_SETSYMLIST = Response.SETSYMLIST;
export const SMFIR_CHGHEADER = Response.CHGHEADER;
export const SMFIR_PROGRESS = Response.PROGRESS;
export const SMFIR_QUARANTINE = Response.QUARANTINE;
export const SMFIR_REJECT = Response.REJECT;
export const SMFIR_SKIP = Response.SKIP;
export const SMFIR_TEMPFAIL = Response.TEMPFAIL;
export const SMFIR_REPLYCODE = Response.REPLYCODE;

/** Address families in SMFIC_CONNECT (SMFIA_*). */
export const SMFIA_UNKNOWN = 0x55; // 'U': no port, no address follow
export const SMFIA_UNIX = 0x4c; // 'L'
export const SMFIA_INET = 0x34; // '4'
export const SMFIA_INET6 = 0x36; // '6'

/** Action flags (SMFIF_*): what the filter may do at EOM. */
export const SMFIF_NONE = 0x000;
export const SMFIF_ADDHDRS = 0x001; // v2: 'h' add header, 'i' insert header
export const SMFIF_CHGBODY = 0x002; // v2: 'b' replace body (alias SMFIF_MODBODY)
export const SMFIF_MODBODY = SMFIF_CHGBODY;
export const SMFIF_ADDRCPT = 0x004; // v2: '+' add recipient
export const SMFIF_DELRCPT = 0x008; // v2: '-' delete recipient
export const SMFIF_CHGHDRS = 0x010; // v2: 'm' change/delete header
export const SMFIF_QUARANTINE = 0x020; // v2 (8.13): 'q' quarantine
export const SMFIF_CHGFROM = 0x040; // v6: 'e' change envelope sender
export const SMFIF_ADDRCPT_PAR = 0x080; // v6: '2' add recipient with ESMTP args
export const SMFIF_SETSYMLIST = 0x100; // v6: macro lists in the OPTNEG reply
export const SMFI_V1_ACTS = 0x0f;
export const SMFI_V2_ACTS = 0x3f;
export const SMFI_CURR_ACTS = 0x1ff;

/** Protocol flags (SMFIP_*): NO = "don't send me", NR = "I won't reply", EXT = extension. */
export const SMFIP_NOCONNECT = 0x00000001; // NO, v2
export const SMFIP_NOHELO = 0x00000002; // NO, v2
export const SMFIP_NOMAIL = 0x00000004; // NO, v2
export const SMFIP_NORCPT = 0x00000008; // NO, v2
export const SMFIP_NOBODY = 0x00000010; // NO, v2
export const SMFIP_NOHDRS = 0x00000020; // NO, v2
export const SMFIP_NOEOH = 0x00000040; // NO, v2
export const SMFIP_NR_HDR = 0x00000080; // NR, v6 (alias SMFIP_NOHREPL)
export const SMFIP_NOHREPL = SMFIP_NR_HDR;
export const SMFIP_NOUNKNOWN = 0x00000100; // NO, v3
export const SMFIP_NODATA = 0x00000200; // NO, v4
export const SMFIP_SKIP = 0x00000400; // EXT, v6: MTA understands SMFIR_SKIP
export const SMFIP_RCPT_REJ = 0x00000800; // EXT, v6: MTA also sends rejected RCPTs
export const SMFIP_NR_CONN = 0x00001000; // NR, v6
export const SMFIP_NR_HELO = 0x00002000; // NR, v6
export const SMFIP_NR_MAIL = 0x00004000; // NR, v6
export const SMFIP_NR_RCPT = 0x00008000; // NR, v6
export const SMFIP_NR_DATA = 0x00010000; // NR, v6
export const SMFIP_NR_UNKN = 0x00020000; // NR, v6
export const SMFIP_NR_EOH = 0x00040000; // NR, v6
export const SMFIP_NR_BODY = 0x00080000; // NR, v6
export const SMFIP_HDR_LEADSPC = 0x00100000; // EXT, v6: header values keep leading space
export const SMFIP_MDS_256K = 0x10000000; // internal: 256K max data size
export const SMFIP_MDS_1M = 0x20000000; // internal: 1M max data size
export const SMFIP_TEST = 0x80000000; // _FFR_MILTER_CHECK builds only; ignored
export const SMFI_INTERNAL = 0x70000000;
export const SMFI_V1_PROT = 0x3f;
export const SMFI_V2_PROT = 0x7f;
export const SMFI_CURR_PROT = 0x1fffff;
/** All nine "no reply" bits. */
export const SMFIP_NR_ALL =
  SMFIP_NR_HDR |
  SMFIP_NR_CONN |
  SMFIP_NR_HELO |
  SMFIP_NR_MAIL |
  SMFIP_NR_RCPT |
  SMFIP_NR_DATA |
  SMFIP_NR_UNKN |
  SMFIP_NR_EOH |
  SMFIP_NR_BODY;

/** Macro stages in the OPTNEG reply's symbol lists (SMFIM_*). EOM (5) comes before EOH (6): do not "fix". */
export const SMFIM_CONNECT = 0;
export const SMFIM_HELO = 1;
export const SMFIM_ENVFROM = 2;
export const SMFIM_ENVRCPT = 3;
export const SMFIM_DATA = 4;
export const SMFIM_EOM = 5;
export const SMFIM_EOH = 6;

/** Filter API return statuses (SMFIS_*): not on the wire, kept for reference and mapping. */
export const SMFIS_CONTINUE = 0;
export const SMFIS_REJECT = 1;
export const SMFIS_DISCARD = 2;
export const SMFIS_ACCEPT = 3;
export const SMFIS_TEMPFAIL = 4;
export const SMFIS_NOREPLY = 7;
export const SMFIS_SKIP = 8;
export const SMFIS_ALL_OPTS = 10;

/** smfi_setmlreply limits. */
export const MAX_REPLY_LINES = 32;
export const MAX_REPLY_LINE_LENGTH = 980;

/**
 * Every reply-expecting event the MTA can skip or stop waiting for, named after its xxfi_* callback: its
 * SMFIP_NO* bit ("don't send it"), its SMFIP_NR* bit ("no reply to it"), its command byte and the first
 * protocol version that has it. The one table the session, the client and the policy derive theirs from.
 */
export const STAGE_BITS = {
  connect: { no: SMFIP_NOCONNECT, nr: SMFIP_NR_CONN, command: Command.CONNECT, minVersion: 2 },
  helo: { no: SMFIP_NOHELO, nr: SMFIP_NR_HELO, command: Command.HELO, minVersion: 2 },
  envfrom: { no: SMFIP_NOMAIL, nr: SMFIP_NR_MAIL, command: Command.MAIL, minVersion: 2 },
  envrcpt: { no: SMFIP_NORCPT, nr: SMFIP_NR_RCPT, command: Command.RCPT, minVersion: 2 },
  data: { no: SMFIP_NODATA, nr: SMFIP_NR_DATA, command: Command.DATA, minVersion: 4 },
  header: { no: SMFIP_NOHDRS, nr: SMFIP_NR_HDR, command: Command.HEADER, minVersion: 2 },
  eoh: { no: SMFIP_NOEOH, nr: SMFIP_NR_EOH, command: Command.EOH, minVersion: 2 },
  body: { no: SMFIP_NOBODY, nr: SMFIP_NR_BODY, command: Command.BODY, minVersion: 2 },
  unknown: { no: SMFIP_NOUNKNOWN, nr: SMFIP_NR_UNKN, command: Command.UNKNOWN, minVersion: 3 },
} as const;
export type StageName = keyof typeof STAGE_BITS;

/**
 * Macro stages by callback name: the SMFIM_* number used in OPTNEG macro lists and the command letter
 * used in SMFIC_MACRO packets (EOM is 5 and EOH 6, as in mfapi.h).
 */
export const MACRO_STAGES = {
  connect: { number: SMFIM_CONNECT, letter: 'C' },
  helo: { number: SMFIM_HELO, letter: 'H' },
  envfrom: { number: SMFIM_ENVFROM, letter: 'M' },
  envrcpt: { number: SMFIM_ENVRCPT, letter: 'R' },
  data: { number: SMFIM_DATA, letter: 'T' },
  eom: { number: SMFIM_EOM, letter: 'E' },
  eoh: { number: SMFIM_EOH, letter: 'N' },
} as const;

/**
 * The command letter a SMFIC_MACRO packet carries, by stage name: the SMFIM_* stages of MACRO_STAGES, and
 * the commands Postfix also sends macros before (HEADER, BODY, UNKNOWN: `D L`, `D B`, `D U`).
 */
export const MACRO_PACKET_LETTERS = {
  ...(Object.fromEntries(Object.entries(MACRO_STAGES).map(([stage, m]) => [stage, m.letter])) as {
    [S in keyof typeof MACRO_STAGES]: (typeof MACRO_STAGES)[S]['letter'];
  }),
  header: 'L',
  body: 'B',
  unknown: 'U',
} as const satisfies Record<string, string>;
/** A stage a SMFIC_MACRO packet can be sent for. */
export type MacroPacketStage = keyof typeof MACRO_PACKET_LETTERS;

const STAGE_BY_MACRO_LETTER: ReadonlyMap<string, MacroPacketStage> = new Map(
  Object.entries(MACRO_PACKET_LETTERS).map(([stage, letter]) => [letter, stage as MacroPacketStage]),
);

/** The stage of a SMFIC_MACRO packet's command letter; undefined for a letter no MTA sends. */
export function macroPacketStage(letter: string): MacroPacketStage | undefined {
  return STAGE_BY_MACRO_LETTER.get(letter);
}
