/**
 * The context one pipeline member sees: the session's context seen through the member's own negotiation,
 * with its own `priv`/`messagePriv` and stored reply, and at end of message modifications that go to the
 * pipeline's working copy of the message (staged, applied only when the member's `eom` succeeded).
 */
import type { Logger } from 'pino';
import type {
  ActionName,
  BodySource,
  ConnectionInfo,
  EomContext,
  Envelope,
  NegotiatedOptions,
  StageContext,
} from '../filter.js';
import { MilterUsageError } from '../errors.js';
import { SMFIP_HDR_LEADSPC } from '../protocol/constants.js';
import type { MessageTransaction } from '../message/transaction.js';
import { BodyStore, bodyPiece, checkBodySource } from '../session/body-store.js';
import { badArg, checkHeaderName, checkIndex, checkString } from '../session/action-args.js';
import { ACTION_BITS } from '../session/negotiate.js';
import { formatReply, replyDecisionOf } from '../session/reply.js';

/** A reply a member stored with `setReply`, kept as its arguments for the session's own `setReply`. */
export interface StoredReplyArgs {
  code: number | string;
  xcode: string | undefined;
  lines: string[];
}

/** The message as members leave it at end of message, and what the current member staged. */
export interface EomWork {
  trx: MessageTransaction;
  /** The body later members see and the MTA gets, when a member replaced it. */
  replacement: BodyStore | undefined;
  /** The envelope members see at end of message (earlier members' sender/recipient changes included). */
  envelope(): Envelope;
  /** The pipeline negotiated SMFIP_HDR_LEADSPC: header values it stores keep their leading space. */
  leadingSpace: boolean;
  memoryLimit: number;
  tempDir: string;
}

/** Hooks of the pipeline a member context reports to. */
export interface MemberHooks {
  /** An action the member did not negotiate (dropped) or a dry-run member's change (not applied). */
  action(action: ActionName, applied: boolean, reason?: 'dry-run' | 'not-negotiated'): void;
}

/** Read a body source into a store (memory, then an unlinked temporary file). */
async function storeBody(
  body: BodySource,
  memoryLimit: number,
  tempDir: string | undefined,
): Promise<BodyStore> {
  // The same checks as the session's EOM context (a member fails where it would fail alone).
  const checked = checkBodySource(body);
  const store = new BodyStore(memoryLimit, tempDir);
  try {
    if (checked.kind === 'buffer') await store.append(checked.buffer);
    else for await (const piece of checked.stream) await store.append(bodyPiece(piece));
  } catch (err) {
    await store.dispose();
    throw err;
  }
  return store;
}

/** One member's view of the connection. One per member per SMTP session; `outer` follows the session. */
export class MemberContext implements EomContext<unknown> {
  priv: unknown = undefined;
  messagePriv: unknown = undefined;
  /** The session's context of the callback being run (the EOM context at end of message). */
  outer!: StageContext<unknown>;
  /** Set while the member's `eom` runs. */
  work: EomWork | undefined = undefined;
  stored: StoredReplyArgs | undefined = undefined;
  /** Changes staged by the running `eom`, applied in order when it succeeds. */
  staged: Array<(trx: MessageTransaction) => void> = [];
  stagedBody: BodyStore | undefined = undefined;
  pending: Array<Promise<void>> = [];
  private readonly droppedLogged = new Set<ActionName>();
  private loggerBase: Logger | undefined = undefined;
  private loggerChild: Logger | undefined = undefined;

  constructor(
    private readonly memberName: string,
    /** The member's negotiated options; undefined when it was not negotiated. */
    public options: NegotiatedOptions | undefined,
    /** The member's requested protocol bits (what it asked for). */
    public requested: number,
    private readonly dryRun: boolean,
    private readonly hooks: MemberHooks,
  ) {}

  get id(): string {
    return this.outer.id;
  }
  /** The session's logger with `{ member }` bound (rebuilt when the session's logger changes). */
  get logger(): Logger {
    const base = this.outer.logger;
    if (base !== this.loggerBase || this.loggerChild === undefined) {
      this.loggerBase = base;
      this.loggerChild = base.child({ member: this.memberName });
    }
    return this.loggerChild;
  }
  get negotiated(): NegotiatedOptions | undefined {
    return this.options;
  }
  get connection(): ConnectionInfo | undefined {
    return this.outer.connection;
  }
  get helo(): string | undefined {
    return this.outer.helo;
  }
  get envelope(): Envelope | undefined {
    return this.work?.envelope() ?? this.outer.envelope;
  }
  macro(name: string): string | undefined {
    return this.outer.macro(name);
  }
  macros(): Record<string, string> {
    return this.outer.macros();
  }
  setReply(code: number | string, xcode?: string, ...lines: string[]): void {
    // Checked now (a malformed reply throws in the member's callback, as in a session), sent by the pipeline.
    const decision = replyDecisionOf(code);
    const text = lines.length === 0 ? undefined : lines.length === 1 ? lines[0] : lines;
    formatReply(xcode === undefined ? { code, text } : { code, xcode, text }, decision);
    this.stored = { code, xcode, lines };
  }
  progress(): void {
    this.outer.progress();
  }

  // ---- end of message: changes to the working copy ----

  /** May this change be staged? Dropped (not negotiated) and dry-run changes are reported, not staged. */
  private allowed(action: ActionName): boolean {
    if (this.work === undefined) {
      throw new MilterUsageError('ERR_MILTER_WRONG_STAGE', `${action} outside the eom callback`);
    }
    if (((this.options?.actions ?? 0) & ACTION_BITS[action]) === 0) {
      this.hooks.action(action, false, 'not-negotiated');
      // Once per action and SMTP session: a member that insists must not flood the log.
      if (!this.droppedLogged.has(action)) {
        this.droppedLogged.add(action);
        this.logger.warn({ action }, 'pipeline member action not negotiated: dropped, not sent to the MTA');
      }
      return false;
    }
    if (this.dryRun) {
      this.hooks.action(action, false, 'dry-run');
      return false;
    }
    this.hooks.action(action, true);
    return true;
  }

  /** A header value as the pipeline stores it: with the leading space if the MTA expects it. */
  private value(v: string): string {
    const leading = this.work?.leadingSpace === true && (this.requested & SMFIP_HDR_LEADSPC) === 0;
    return leading ? ` ${v}` : v;
  }

  addHeader(name: string, value: string): void {
    const n = checkHeaderName(name);
    const v = checkString('header value', value, true);
    // The stored value is computed now: the staged change runs after `eom` returned, when `work` is gone.
    const stored = this.value(v);
    if (this.allowed('addHeader')) this.staged.push((t) => t.headers.add(n, stored));
  }

  insertHeader(index: number, name: string, value: string): void {
    const i = checkIndex(index);
    const n = checkHeaderName(name);
    const v = checkString('header value', value, true);
    if (!this.allowed('addHeader')) return;
    const stored = this.value(v);
    // The MTA's index counts its own Received: header on top, which the working copy does not hold.
    this.staged.push((t) => t.headers.insert(Math.min(Math.max(0, i - 1), t.headers.length), n, stored));
  }

  changeHeader(name: string, index: number, value: string | null): void {
    const n = checkHeaderName(name);
    const i = checkIndex(index);
    const v = value === null ? '' : checkString('header value', value, true);
    if (!this.allowed('changeHeader') || i === 0) return;
    const stored = this.value(v);
    this.staged.push((t) => {
      if (v === '') t.headers.delete(n, i);
      else t.headers.set(n, stored, i);
    });
  }

  deleteHeader(name: string, index: number): void {
    this.changeHeader(name, index, null);
  }

  addRecipient(recipient: string, args?: string): void {
    const r = checkString('recipient', recipient, false);
    if (args === undefined) {
      if (this.allowed('addRecipient')) this.staged.push((t) => t.recipients.add(r));
      return;
    }
    const a = checkString('args', args, true);
    if (this.allowed('addRecipientWithArgs')) this.staged.push((t) => t.recipients.add(r, a));
  }

  deleteRecipient(recipient: string): void {
    const r = checkString('recipient', recipient, false);
    if (this.allowed('deleteRecipient')) this.staged.push((t) => void t.recipients.remove(r));
  }

  changeFrom(sender: string, args?: string): void {
    const s = checkString('sender', sender, false);
    const a = args === undefined ? undefined : checkString('args', args, true);
    if (this.allowed('changeFrom')) this.staged.push((t) => t.setSender(s, a));
  }

  quarantine(reason: string): void {
    const r = checkString('quarantine reason', reason, false);
    if (/[\r\n]/.test(r)) throw badArg('quarantine reason must not contain CR or LF');
    if (this.allowed('quarantine')) this.staged.push((t) => t.quarantine(r));
  }

  replaceBody(body: BodySource): Promise<void> {
    if (body === null || typeof body !== 'object')
      throw badArg('body must be a Buffer, Uint8Array or iterable');
    const work = this.work;
    if (!this.allowed('replaceBody') || work === undefined) return Promise.resolve();
    const read = storeBody(body, work.memoryLimit, work.tempDir).then((store) => {
      // The last call wins; a late read (the eom is over) is dropped.
      if (this.work !== work) return store.dispose();
      void this.stagedBody?.dispose();
      this.stagedBody = store;
    });
    read.catch(() => undefined);
    this.pending.push(read);
    return read;
  }
}
