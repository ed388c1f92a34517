/**
 * libmilter's session state machine (protocol doc §7.2) as a table: states, the commands each state
 * allows next, stages the filter opted out of (skippable), and the stage metadata the dispatcher needs.
 */
import { STAGE_BITS as B, macroPacketStage } from '../protocol/constants.js';
import type {
  BodyResult,
  MaybePromise,
  ConnectionInfo,
  DecisionKind,
  Filter,
  StageContext,
} from '../filter.js';
import type { MilterCommand, MilterCommandKind } from '../protocol/types.js';
import type { DecisionStage } from '../observer.js';
import { PackedMacros } from '../protocol/packed-macros.js';
import type { SessionCommand } from './types.js';

/**
 * Session states, numbered in libmilter's order: the skip rule relies on MAIL…BODY being consecutive.
 * INIT = before OPTNEG, OPTS = negotiated, ENDM = after EOM, ABRT = after ABORT, UNKN = after UNKNOWN,
 * Q_NC = after QUIT_NC (waiting for a new CONNECT).
 */
export const State = {
  INIT: 0,
  OPTS: 1,
  CONN: 2,
  HELO: 3,
  MAIL: 4,
  RCPT: 5,
  DATA: 6,
  HDRS: 7,
  EOHS: 8,
  BODY: 9,
  ENDM: 10,
  QUIT: 11,
  ABRT: 12,
  UNKN: 13,
  Q_NC: 14,
} as const;
export type State = (typeof State)[keyof typeof State];

/** State names by number, for logs. */
export const STATE_NAMES: Readonly<Record<State, keyof typeof State>> = Object.fromEntries(
  Object.entries(State).map(([name, n]) => [n, name]),
) as Record<State, keyof typeof State>;

/** A macro packet's stage by name; a letter no MTA sends stays as it came. */
const macroStageName = (letter: string): string => macroPacketStage(letter) ?? letter;

/**
 * A command as a trace log line's fields: its name (the stage vocabulary, see commandName) and arguments;
 * a macro packet's stage name, names and values; body chunks by size only.
 */
export function describeCommand(cmd: SessionCommand): Record<string, unknown> {
  if (cmd instanceof PackedMacros) {
    return { command: 'macro', stage: macroStageName(cmd.stage), macros: Object.fromEntries(cmd.pairs()) };
  }
  switch (cmd.kind) {
    case 'macro':
      return { command: 'macro', stage: macroStageName(cmd.stage), macros: Object.fromEntries(cmd.macros) };
    case 'body':
    case 'eom':
      return { command: cmd.kind, bytes: cmd.chunk.length };
    default: {
      const { kind, ...args } = cmd;
      return { command: commandName(kind), ...args };
    }
  }
}

const bit = (s: State): number => 1 << s;

/** Commands allowed next from each state (bit masks of target states), libmilter's `next_states`. */
const NEXT: readonly number[] = [
  /* INIT */ bit(State.OPTS),
  /* OPTS */ bit(State.CONN) | bit(State.UNKN),
  /* CONN */ bit(State.HELO) | bit(State.MAIL) | bit(State.UNKN),
  /* HELO */ bit(State.HELO) | bit(State.MAIL) | bit(State.UNKN),
  /* MAIL */ bit(State.RCPT) | bit(State.ABRT) | bit(State.UNKN),
  /* RCPT */ bit(State.RCPT) |
    bit(State.DATA) |
    bit(State.HDRS) |
    bit(State.EOHS) |
    bit(State.BODY) |
    bit(State.ENDM) |
    bit(State.ABRT) |
    bit(State.UNKN),
  /* DATA */ bit(State.HDRS) | bit(State.EOHS) | bit(State.ABRT),
  /* HDRS */ bit(State.HDRS) | bit(State.EOHS) | bit(State.ABRT),
  /* EOHS */ bit(State.BODY) | bit(State.ENDM) | bit(State.ABRT),
  /* BODY */ bit(State.BODY) | bit(State.ENDM) | bit(State.ABRT),
  /* ENDM */ bit(State.QUIT) | bit(State.MAIL) | bit(State.UNKN) | bit(State.Q_NC),
  /* QUIT */ 0,
  /* ABRT */ 0,
  /* UNKN */ bit(State.HELO) |
    bit(State.MAIL) |
    bit(State.RCPT) |
    bit(State.DATA) |
    bit(State.BODY) |
    bit(State.UNKN) |
    bit(State.ABRT) |
    bit(State.QUIT) |
    bit(State.Q_NC),
  /* Q_NC */ bit(State.CONN) | bit(State.UNKN),
];

/** NO-bit → the state it makes skippable (libmilter's `fix_stm`). */
const SKIP_BY_FLAG: ReadonlyArray<readonly [number, State]> = [
  [B.connect.no, State.CONN],
  [B.helo.no, State.HELO],
  [B.envfrom.no, State.MAIL],
  [B.envrcpt.no, State.RCPT],
  [B.data.no, State.DATA],
  [B.header.no, State.HDRS],
  [B.eoh.no, State.EOHS],
  [B.body.no, State.BODY],
];

/** Bit mask of skippable states for the negotiated (requested) protocol flags. */
export function skippableStates(protocol: number): number {
  let mask = 0;
  for (const [flag, state] of SKIP_BY_FLAG) if ((protocol & flag) !== 0) mask |= bit(state);
  return mask;
}

/**
 * May the session go from `from` to `to`? Like libmilter's `trans_ok`: if not allowed directly, hop over
 * the following states as long as the filter opted out of them.
 */
export function transitionAllowed(from: State, to: State, skippable: number): boolean {
  let s: number = from;
  for (;;) {
    const next = NEXT[s];
    if (next === undefined) return false;
    if ((next & (1 << to)) !== 0) return true;
    const n = s + 1;
    if (n >= NEXT.length || (skippable & (1 << n)) === 0) return false;
    s = n;
  }
}

/** Callback stages that take a decision (observer names = callback names). */
export type CallbackStage = Exclude<DecisionStage, 'negotiate'>;

/** Static facts about one decision stage. */
export interface StageInfo {
  readonly stage: CallbackStage;
  /** State entered when the command is accepted. */
  readonly state: State;
  /** SMFIP_NR_* bit of the stage (0 for EOM, which is always replied to). */
  readonly noReplyBit: number;
  /** REJECT/TEMPFAIL/DISCARD keep the state (RCPT, UNKNOWN) instead of resetting to HELO. */
  readonly keepsStateOnReject: boolean;
  /** DISCARD is undefined here (CONNECT/HELO): Postfix ignores it, so we send continue. */
  readonly discardIllegal: boolean;
}

const info = (
  stage: CallbackStage,
  state: State,
  noReplyBit: number,
  keepsStateOnReject = false,
  discardIllegal = false,
): StageInfo => Object.freeze({ stage, state, noReplyBit, keepsStateOnReject, discardIllegal });

/** Stage table, keyed by command kind. */
export const STAGES = {
  connect: info('connect', State.CONN, B.connect.nr, false, true),
  helo: info('helo', State.HELO, B.helo.nr, false, true),
  mail: info('envfrom', State.MAIL, B.envfrom.nr),
  rcpt: info('envrcpt', State.RCPT, B.envrcpt.nr, true),
  data: info('data', State.DATA, B.data.nr),
  header: info('header', State.HDRS, B.header.nr),
  eoh: info('eoh', State.EOHS, B.eoh.nr),
  body: info('body', State.BODY, B.body.nr),
  eom: info('eom', State.ENDM, 0),
  unknown: info('unknown', State.UNKN, B.unknown.nr, true),
} as const satisfies Record<string, StageInfo>;

/** A command kind in the one stage vocabulary (the callback names): `mail` is `envfrom`, `rcpt` `envrcpt`. */
export type CommandName = CallbackStage | Exclude<MilterCommandKind, keyof typeof STAGES>;

/**
 * The name of a command kind for logs and metrics: the stage it runs (callback names) when it runs one,
 * else its own kind (`optneg`, `macro`, `abort`, `quit`, `quitNewConnection`).
 */
export function commandName(kind: MilterCommandKind): CommandName {
  return kind in STAGES ? STAGES[kind as keyof typeof STAGES].stage : (kind as CommandName);
}

/** Commands that run one decision callback. */
export type StageCommand = Extract<
  MilterCommand,
  { kind: 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' | 'unknown' }
>;

/** Call the filter's callback for `cmd` (a typed dispatch on the command kind). */
export function callStage(
  f: Filter<unknown>,
  ctx: StageContext<unknown>,
  cmd: StageCommand,
): MaybePromise<BodyResult> {
  switch (cmd.kind) {
    case 'connect':
      // The session has just set ctx.connection from this very command.
      return f.connect?.(ctx, ctx.connection as ConnectionInfo);
    case 'helo':
      return f.helo?.(ctx, cmd.hostname);
    case 'mail':
      return f.envfrom?.(ctx, cmd.sender, cmd.args);
    case 'rcpt':
      return f.envrcpt?.(ctx, cmd.recipient, cmd.args);
    case 'data':
      return f.data?.(ctx);
    case 'header':
      return f.header?.(ctx, cmd.name, cmd.value);
    case 'eoh':
      return f.eoh?.(ctx);
    case 'body':
      return f.body?.(ctx, cmd.chunk);
    case 'unknown':
      return f.unknown?.(ctx, cmd.line);
  }
}

const NO_DISCARD: ReadonlySet<DecisionKind> = new Set(['discard']);
const NO_ACCEPT_OR_DISCARD: ReadonlySet<DecisionKind> = new Set(['accept', 'discard']);

/**
 * Decisions the MTAs do not define at this point, which the session sends as continue: DISCARD at
 * CONNECT/HELO (Postfix ignores it), ACCEPT and DISCARD at UNKNOWN outside a transaction (Postfix 3.7
 * smtpd panics at the next MAIL, "milter8_mail_event: bad state 7"; Sendmail discards the next message).
 */
export function undefinedDecisions(
  info: StageInfo,
  inTransaction: boolean,
): ReadonlySet<DecisionKind> | undefined {
  if (info.discardIllegal) return NO_DISCARD;
  if (info.stage === 'unknown' && !inTransaction) return NO_ACCEPT_OR_DISCARD;
  return undefined;
}
