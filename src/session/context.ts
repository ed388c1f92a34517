/**
 * Callback contexts (src/filter.ts). One `ConnectionContext` per milter connection serves every stage
 * callback (transaction state is reset in place); one `MessageEomContext` per message serves `eom`, so a
 * timed-out EOM callback that keeps running can never touch a later message: its context is closed.
 */
import type { Logger } from 'pino';
import type {
  BodySource,
  ConnectionInfo,
  EomContext,
  Envelope,
  NegotiatedOptions,
  StageContext,
} from '../filter.js';
import type { MilterResponse, ModificationResponse, ReplaceBodyResponse } from '../protocol/types.js';
import type { HandleResult, SessionIO } from './types.js';
import { isThenable } from './decision.js';
import type { MacroStore } from './macros.js';
import { MilterUsageError } from '../errors.js';
import {
  SMFIF_ADDHDRS,
  SMFIF_ADDRCPT,
  SMFIF_ADDRCPT_PAR,
  SMFIF_CHGBODY,
  SMFIF_CHGFROM,
  SMFIF_CHGHDRS,
  SMFIF_DELRCPT,
  SMFIF_QUARANTINE,
} from '../protocol/constants.js';
import { formatReply, replyDecisionOf, type ReplyDecision } from './reply.js';
import { BodyStore, bodyPiece, checkBodySource, chunkBody } from './body-store.js';
import { badArg, checkHeaderName, checkIndex, checkString } from './action-args.js';

/** A reply stored by `setReply`, already formatted. */
export interface StoredReply {
  text: string;
  decision: ReplyDecision;
}

/** Mutable envelope kept by the session; exposed read-only. */
export interface MutableEnvelope extends Envelope {
  recipients: Array<{ address: string; args: readonly string[] }>;
}

const PROGRESS = Object.freeze({ kind: 'progress' as const });

/** Context of every stage callback of one connection. Internal fields are session-owned. */
export class ConnectionContext implements StageContext<unknown> {
  priv: unknown = undefined;
  /** Per-message data; reset at MAIL, ABORT and after EOM (see StageContext.messagePriv). */
  messagePriv: unknown = undefined;
  negotiated: NegotiatedOptions | undefined = undefined;
  connection: ConnectionInfo | undefined = undefined;
  helo: string | undefined = undefined;
  /** Current transaction's envelope (undefined outside a transaction). */
  envelopeState: MutableEnvelope | undefined = undefined;
  /** Reply stored by setReply, consumed (and cleared) by the next decision. */
  storedReply: StoredReply | undefined = undefined;

  private txnSeq = 0;
  private txnLogger: Logger | undefined = undefined;
  private txnLoggerKey: string | undefined = undefined;

  /**
   * The connection logger, bound to `{ client }` once SMFIC_CONNECT told who the SMTP client is. Built on
   * first use: most connections never log, and a pino child per connection is measurable (Postfix opens
   * a milter connection per SMTP session).
   */
  private connLogger: Logger | undefined = undefined;

  constructor(
    readonly id: string,
    private readonly baseLogger: Logger,
    private readonly store: MacroStore,
  ) {}

  /** SMFIC_CONNECT: remember the SMTP client and put its address on every later log line. */
  bindClient(info: ConnectionInfo): void {
    this.connection = info;
    this.connLogger = undefined;
    this.txnLogger = undefined;
  }

  private get connectionLogger(): Logger {
    if (this.connLogger === undefined) {
      const info = this.connection;
      this.connLogger =
        info === undefined
          ? this.baseLogger
          : this.baseLogger.child({ client: info.address === '' ? info.hostname : info.address });
    }
    return this.connLogger;
  }

  /** The connection logger, or inside a transaction a child bound to `{ txn }` (queue id once known). */
  get logger(): Logger {
    if (this.envelopeState === undefined) return this.connectionLogger;
    // Postfix assigns the queue id only after the first accepted RCPT: re-check until it appears.
    const key = this.store.get('i') ?? `#${this.txnSeq}`;
    if (this.txnLogger === undefined || this.txnLoggerKey !== key) {
      this.txnLogger = this.connectionLogger.child({ txn: key });
      this.txnLoggerKey = key;
    }
    return this.txnLogger;
  }

  get envelope(): Envelope | undefined {
    return this.envelopeState;
  }

  macro(name: string): string | undefined {
    return this.store.get(name);
  }

  macros(): Record<string, string> {
    return this.store.all();
  }

  /** Start a transaction (MAIL, or the first transaction command when MAIL was negotiated away). */
  beginTransaction(sender: string, args: readonly string[]): void {
    this.txnSeq++;
    this.txnLogger = undefined;
    this.messagePriv = undefined;
    this.envelopeState = { sender, senderArgs: args, recipients: [] };
  }

  /** The single reset of transaction state, used at every message boundary. */
  resetTransaction(): void {
    this.envelopeState = undefined;
    this.messagePriv = undefined;
    this.txnLogger = undefined;
    this.storedReply = undefined;
  }

  /** Reset everything connection-level (QUIT_NC); negotiated options survive. */
  resetConnection(): void {
    this.resetTransaction();
    this.priv = undefined;
    this.connection = undefined;
    this.connLogger = undefined;
    this.txnLogger = undefined;
    this.helo = undefined;
  }

  setReply(code: number | string, xcode?: string, ...lines: string[]): void {
    const decision = replyDecisionOf(code);
    const text = lines.length === 0 ? undefined : lines.length === 1 ? lines[0] : lines;
    const reply = xcode === undefined ? { code, text } : { code, xcode, text };
    this.storedReply = { text: formatReply(reply, decision), decision };
  }

  progress(): void {
    // Sendmail treats progress outside EOM as a fatal bogus reply, so it is never sent from here.
    if (this.baseLogger.isLevelEnabled('debug')) this.baseLogger.debug('progress() outside eom ignored');
  }
}

/** Context of one message's `eom` callback: the only place modifications exist. */
export class MessageEomContext implements EomContext<unknown> {
  /** True while the EOM callback (and its replaceBody reads) run; closed afterwards for good. */
  open = true;
  /** Modifications in call order. */
  readonly modifications: ModificationResponse[] = [];
  /** Body replacement (last call wins), sent after the other modifications. */
  bodyReplacement: ReplaceBodyResponse[] | undefined = undefined;
  /** A body replacement read from a stream (last call wins): in memory up to a bound, then in a file. */
  bodyStore: BodyStore | undefined = undefined;
  /** replaceBody reads still running (streams). */
  readonly pending: Array<Promise<void>> = [];

  constructor(
    private readonly conn: ConnectionContext,
    private readonly io: SessionIO,
  ) {}

  get id(): string {
    return this.conn.id;
  }
  get logger(): Logger {
    return this.conn.logger;
  }
  get negotiated(): NegotiatedOptions | undefined {
    return this.conn.negotiated;
  }
  get connection(): ConnectionInfo | undefined {
    return this.conn.connection;
  }
  get priv(): unknown {
    return this.conn.priv;
  }
  set priv(value: unknown) {
    this.conn.priv = value;
  }
  get messagePriv(): unknown {
    return this.conn.messagePriv;
  }
  set messagePriv(value: unknown) {
    this.conn.messagePriv = value;
  }
  get helo(): string | undefined {
    return this.conn.helo;
  }
  get envelope(): Envelope | undefined {
    return this.conn.envelope;
  }
  macro(name: string): string | undefined {
    return this.conn.macro(name);
  }
  macros(): Record<string, string> {
    return this.conn.macros();
  }
  setReply(code: number | string, xcode?: string, ...lines: string[]): void {
    if (!this.open) throw new MilterUsageError('ERR_MILTER_WRONG_STAGE', 'setReply after eom returned');
    this.conn.setReply(code, xcode, ...lines);
  }

  progress(): void {
    if (this.open) this.io.sendNow(PROGRESS);
    else this.conn.progress();
  }

  /** The EOM callback's return value, delayed until replaceBody streams it did not await are read. */
  settle(r: unknown): unknown {
    if (!isThenable(r) && this.pending.length === 0) return r;
    return Promise.resolve(r).then((v) =>
      this.pending.length ? Promise.all(this.pending).then(() => v) : v,
    );
  }

  /**
   * The EOM answer (§10.10): modifications in call order, then the body replacement, then `decision`. A
   * streamed replacement travels as `HandleResult.body`, written between the two.
   */
  result(decision: MilterResponse): HandleResult {
    const body = this.bodyReplacement;
    const store = this.bodyStore;
    this.bodyStore = undefined;
    if (this.modifications.length === 0 && body === undefined && store === undefined) {
      return { responses: [decision] };
    }
    const responses: MilterResponse[] = this.modifications.slice();
    if (body) for (const piece of body) responses.push(piece);
    responses.push(decision);
    return store === undefined ? { responses } : { responses, body: store };
  }

  /** The EOM failed or was not answered with modifications: drop a streamed replacement. */
  discard(): void {
    const store = this.bodyStore;
    this.bodyStore = undefined;
    void store?.dispose();
  }

  /** Make `store` the replacement (last call wins), or drop it when the EOM is already over. */
  private replaceWith(store: BodyStore): void {
    if (!this.open) {
      void store.dispose();
      return;
    }
    void this.bodyStore?.dispose();
    this.bodyStore = store;
    this.bodyReplacement = undefined;
  }

  private require(flag: number, what: string): void {
    if (!this.open) {
      throw new MilterUsageError('ERR_MILTER_WRONG_STAGE', `${what} called after the eom callback returned`);
    }
    if (((this.conn.negotiated?.actions ?? 0) & flag) === 0) {
      throw new MilterUsageError('ERR_MILTER_ACTION_NOT_NEGOTIATED', `${what} was not negotiated`);
    }
  }

  addHeader(name: string, value: string): void {
    this.require(SMFIF_ADDHDRS, 'addHeader');
    const n = checkHeaderName(name);
    this.modifications.push({ kind: 'addHeader', name: n, value: checkString('header value', value, true) });
  }

  insertHeader(index: number, name: string, value: string): void {
    this.require(SMFIF_ADDHDRS, 'insertHeader');
    const i = checkIndex(index);
    const n = checkHeaderName(name);
    const v = checkString('header value', value, true);
    this.modifications.push({ kind: 'insertHeader', index: i, name: n, value: v });
  }

  changeHeader(name: string, index: number, value: string | null): void {
    this.require(SMFIF_CHGHDRS, 'changeHeader');
    const n = checkHeaderName(name);
    const i = checkIndex(index);
    const v = value === null ? '' : checkString('header value', value, true);
    this.modifications.push({ kind: 'changeHeader', index: i, name: n, value: v });
  }

  deleteHeader(name: string, index: number): void {
    this.changeHeader(name, index, '');
  }

  addRecipient(recipient: string, args?: string): void {
    if (args === undefined) {
      this.require(SMFIF_ADDRCPT, 'addRecipient');
      this.modifications.push({
        kind: 'addRecipient',
        recipient: checkString('recipient', recipient, false),
      });
      return;
    }
    this.require(SMFIF_ADDRCPT_PAR, 'addRecipient with args');
    const r = checkString('recipient', recipient, false);
    this.modifications.push({
      kind: 'addRecipientWithArgs',
      recipient: r,
      args: checkString('args', args, true),
    });
  }

  deleteRecipient(recipient: string): void {
    this.require(SMFIF_DELRCPT, 'deleteRecipient');
    this.modifications.push({
      kind: 'deleteRecipient',
      recipient: checkString('recipient', recipient, false),
    });
  }

  changeFrom(sender: string, args?: string): void {
    this.require(SMFIF_CHGFROM, 'changeFrom');
    const s = checkString('sender', sender, false);
    if (args === undefined) this.modifications.push({ kind: 'changeFrom', sender: s });
    else this.modifications.push({ kind: 'changeFrom', sender: s, args: checkString('args', args, true) });
  }

  quarantine(reason: string): void {
    this.require(SMFIF_QUARANTINE, 'quarantine');
    const r = checkString('quarantine reason', reason, false);
    if (/[\r\n]/.test(r)) throw badArg('quarantine reason must not contain CR or LF');
    this.modifications.push({ kind: 'quarantine', reason: r });
  }

  replaceBody(body: BodySource): Promise<void> {
    this.require(SMFIF_CHGBODY, 'replaceBody');
    const checked = checkBodySource(body);
    if (checked.kind === 'buffer') {
      // Fast path: no copy; the session encodes the chunks before the callback's caller regains control.
      this.bodyReplacement = chunkBody(checked.buffer);
      void this.bodyStore?.dispose();
      this.bodyStore = undefined;
      return Promise.resolve();
    }
    // A stream may be large: it goes to a BodyStore (memory up to a bound, then an unlinked temporary
    // file) and is streamed out to the MTA after the EOM callback succeeded, never held whole.
    const store = new BodyStore();
    const read = (async (): Promise<void> => {
      try {
        for await (const piece of checked.stream) await store.append(bodyPiece(piece));
      } catch (err) {
        await store.dispose();
        throw err;
      }
      // A timed-out or finished EOM must not pick up a late body.
      this.replaceWith(store);
    })();
    // The session awaits it; this branch only keeps an unawaited failure from being "unhandled".
    read.catch(() => undefined);
    this.pending.push(read);
    return read;
  }
}
