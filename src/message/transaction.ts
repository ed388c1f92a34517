/**
 * The whole-message view of one mail transaction: envelope, macros, headers and body as received, changed
 * as an object, and turned back into the fewest milter actions, in an order both MTAs apply correctly.
 *
 * Header actions address headers by name and occurrence (SMFIR_CHGHEADER) or by position
 * (SMFIR_INSHEADER), each applied against the MTA's list as it is at that moment. So the changes are
 * emitted in passes: changes and deletions of received headers, bottom up (removing an occurrence never
 * renumbers one still to be addressed); then new headers, lowest final position first,
 * inserted at that position (everything before it is already in place; the index counts the MTA's own
 * hidden Received: header, see HIDDEN_TOP_HEADERS); new headers after the last received one are appended
 * (SMFIR_ADDHEADER). Received headers keep their order: a "move" is a delete
 * plus an insert.
 */
import type { BodySource, ConnectionInfo } from '../filter.js';
import { MilterUsageError } from '../errors.js';
import { wireBytes } from '../protocol/wire-string.js';
import type { BodyStore } from '../session/body-store.js';

/** One header as the filter sees it. */
export interface HeaderField {
  readonly name: string;
  /** The value as received (a wire string: bytes that are not UTF-8 are kept, see `wireBytes`). */
  readonly value: string;
}

/** The header list of a message: read, and changed in place. Names compare case-insensitively. */
export interface MessageHeaders extends Iterable<HeaderField> {
  /** Headers now in the list. */
  readonly length: number;
  /** The header at `index` (0 = top). */
  at(index: number): HeaderField | undefined;
  /** Value of the first header called `name`. */
  get(name: string): string | undefined;
  /** Values of every header called `name`, top first. */
  getAll(name: string): string[];
  has(name: string): boolean;
  /** Append a header after the last one. */
  add(name: string, value: string): void;
  /** Insert a header at `index` (0 = top; `length` = append). */
  insert(index: number, name: string, value: string): void;
  /** Set the value of the `occurrence`-th (1-based, default 1) header called `name`; add it when there is none. */
  set(name: string, value: string, occurrence?: number): void;
  /** Delete the `occurrence`-th header called `name`, or every one without `occurrence`. Returns how many went. */
  delete(name: string, occurrence?: number): number;
}

/** The recipients of a message: as received, changed in place. */
export interface MessageRecipients extends Iterable<string> {
  readonly length: number;
  has(address: string): boolean;
  /** Add a recipient (with ESMTP parameters: SMFIR_ADDRCPT_PAR). */
  add(address: string, args?: string): void;
  /** Remove a recipient, exactly as received in RCPT (or as added). Returns whether it was there. */
  remove(address: string): boolean;
}

/** One message, whole, at end of message. */
export interface Transaction {
  /** The SMTP client (SMFIC_CONNECT); undefined when the MTA skipped it. */
  readonly connection: ConnectionInfo | undefined;
  /** The latest HELO/EHLO argument. */
  readonly helo: string | undefined;
  /** A macro with libmilter's lookup rules (see `BaseContext.macro`). */
  macro(name: string): string | undefined;
  /** The envelope sender (as received, with brackets) or the one set by `setSender`. */
  readonly sender: string;
  readonly senderArgs: readonly string[];
  /** Change the envelope sender (SMFIR_CHGFROM); `args` are its ESMTP parameters. */
  setSender(address: string, args?: string): void;
  readonly recipients: MessageRecipients;
  readonly headers: MessageHeaders;
  /** Size of the received body in bytes. */
  readonly bodySize: number;
  /** The received body (CRLF line ends), in chunks; each call reads it from the start. */
  body(): AsyncIterable<Buffer>;
  /** The received body as one Buffer (for bodies you know to be small). */
  bodyBuffer(): Promise<Buffer>;
  /** Replace the body (SMFIR_REPLBODY); the last call wins. */
  replaceBody(body: BodySource): void;
  /** Put the message on hold (SMFIR_QUARANTINE). */
  quarantine(reason: string): void;
}

/** Where the actions go: the EOM context, or a recorder in tests. Subset of `EomContext`. */
export interface ModificationSink {
  addHeader(name: string, value: string): void;
  insertHeader(index: number, name: string, value: string): void;
  changeHeader(name: string, index: number, value: string | null): void;
  addRecipient(recipient: string, args?: string): void;
  deleteRecipient(recipient: string): void;
  changeFrom(sender: string, args?: string): void;
  quarantine(reason: string): void;
  replaceBody(body: BodySource): Promise<void>;
}

/** What a transaction starts from. */
export interface TransactionInput {
  connection: ConnectionInfo | undefined;
  helo: string | undefined;
  macro: (name: string) => string | undefined;
  sender: string;
  senderArgs: readonly string[];
  recipients: readonly string[];
  headers: ReadonlyArray<readonly [string, string]>;
  body: BodyStore;
}

/**
 * Headers above the ones the filter saw that an SMFIR_INSHEADER index still counts: the MTA's own
 * `Received:` header, which Postfix 3.7 and Sendmail 8.17 both add on top and do not send to the milter
 * (protocol doc §10.3; checked by fixtures/testcases/message-api-rewrite.yaml behind both). Sendmail also
 * counts other headers it generates itself (Date:, Message-Id: when the client sent none), wherever it put
 * them: positions there are exact relative to the headers the filter saw, not to those.
 */
const HIDDEN_TOP_HEADERS = 1;

interface Entry {
  name: string;
  value: string;
  /**
   * For received headers: the position in the received list, the occurrence (1-based, among same-named
   * received headers) and the value as received.
   */
  received: Received | undefined;
}

type Received = { position: number; occurrence: number; value: string };

const same = (a: string, b: string): boolean => a.length === b.length && a.toLowerCase() === b.toLowerCase();

const badArg = (message: string): MilterUsageError =>
  new MilterUsageError('ERR_MILTER_INVALID_ARGUMENT', message);

function checkHeader(name: string, value: string): void {
  // RFC 5322 field name: printable US-ASCII but colon; the MTAs would store anything else broken.
  if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) throw badArg(`invalid header name ${JSON.stringify(name)}`);
  if (value.includes('\0')) throw badArg(`header ${name}: the value contains NUL`);
}

class Headers implements MessageHeaders {
  /** Received headers, in order, as they were: the reference the diff is made against. */
  readonly entries: Entry[];
  /** Received headers that were deleted (kept for the diff). */
  readonly deleted: Array<{ name: string; received: Received }> = [];

  constructor(received: ReadonlyArray<readonly [string, string]>) {
    const seen = new Map<string, number>();
    this.entries = received.map(([name, value], position) => {
      const key = name.toLowerCase();
      const occurrence = (seen.get(key) ?? 0) + 1;
      seen.set(key, occurrence);
      return { name, value, received: { position, occurrence, value } };
    });
  }

  get length(): number {
    return this.entries.length;
  }

  *[Symbol.iterator](): Iterator<HeaderField> {
    for (const e of this.entries) yield { name: e.name, value: e.value };
  }

  at(index: number): HeaderField | undefined {
    const e = this.entries[index];
    return e === undefined ? undefined : { name: e.name, value: e.value };
  }

  get(name: string): string | undefined {
    return this.entries.find((e) => same(e.name, name))?.value;
  }

  getAll(name: string): string[] {
    return this.entries.filter((e) => same(e.name, name)).map((e) => e.value);
  }

  has(name: string): boolean {
    return this.entries.some((e) => same(e.name, name));
  }

  add(name: string, value: string): void {
    checkHeader(name, value);
    this.entries.push({ name, value, received: undefined });
  }

  insert(index: number, name: string, value: string): void {
    checkHeader(name, value);
    if (!Number.isInteger(index) || index < 0 || index > this.entries.length) {
      throw badArg(`header index ${index} outside 0..${this.entries.length}`);
    }
    this.entries.splice(index, 0, { name, value, received: undefined });
  }

  set(name: string, value: string, occurrence = 1): void {
    checkHeader(name, value);
    const i = this.indexOf(name, occurrence);
    if (i < 0) this.add(name, value);
    else (this.entries[i] as Entry).value = value;
  }

  delete(name: string, occurrence?: number): number {
    if (occurrence !== undefined) {
      const i = this.indexOf(name, occurrence);
      if (i < 0) return 0;
      this.remove(i);
      return 1;
    }
    let n = 0;
    for (let i = this.entries.length - 1; i >= 0; i--) {
      if (same((this.entries[i] as Entry).name, name)) {
        this.remove(i);
        n++;
      }
    }
    return n;
  }

  private remove(i: number): void {
    const [e] = this.entries.splice(i, 1);
    if (e?.received !== undefined) this.deleted.push({ name: e.name, received: e.received });
  }

  private indexOf(name: string, occurrence: number): number {
    if (!Number.isInteger(occurrence) || occurrence < 1) throw badArg(`occurrence ${occurrence} is not ≥ 1`);
    let n = 0;
    for (let i = 0; i < this.entries.length; i++) {
      if (same((this.entries[i] as Entry).name, name) && ++n === occurrence) return i;
    }
    return -1;
  }
}

class Recipients implements MessageRecipients {
  readonly current: Array<{ address: string; args: string | undefined; received: boolean }>;
  readonly removed: string[] = [];

  constructor(received: readonly string[]) {
    this.current = received.map((address) => ({ address, args: undefined, received: true }));
  }

  get length(): number {
    return this.current.length;
  }

  *[Symbol.iterator](): Iterator<string> {
    for (const r of this.current) yield r.address;
  }

  has(address: string): boolean {
    return this.current.some((r) => r.address === address);
  }

  add(address: string, args?: string): void {
    if (address.length === 0 || address.includes('\0')) throw badArg('invalid recipient');
    if (this.has(address)) return;
    const i = this.removed.indexOf(address);
    if (i >= 0) {
      // Removed, then added back: the received recipient simply stays (with new args, it is re-added).
      this.removed.splice(i, 1);
      this.current.push({ address, args, received: args === undefined });
      if (args !== undefined) this.removed.push(address);
      return;
    }
    this.current.push({ address, args, received: false });
  }

  remove(address: string): boolean {
    const i = this.current.findIndex((r) => r.address === address);
    if (i < 0) return false;
    const [r] = this.current.splice(i, 1);
    if (r?.received === true) this.removed.push(address);
    return true;
  }
}

/** A transaction over what the session collected; `applyTo` emits the difference. */
export class MessageTransaction implements Transaction {
  readonly connection: ConnectionInfo | undefined;
  readonly helo: string | undefined;
  readonly headers: Headers;
  readonly recipients: Recipients;
  readonly senderArgs: readonly string[];
  private senderNow: string;
  private newSender: { address: string; args: string | undefined } | undefined;
  private newBody: BodySource | undefined;
  private quarantineReason: string | undefined;
  private readonly input: TransactionInput;

  constructor(input: TransactionInput) {
    this.input = input;
    this.connection = input.connection;
    this.helo = input.helo;
    this.senderNow = input.sender;
    this.senderArgs = input.senderArgs;
    this.recipients = new Recipients(input.recipients);
    this.headers = new Headers(input.headers);
  }

  macro(name: string): string | undefined {
    return this.input.macro(name);
  }

  get sender(): string {
    return this.senderNow;
  }

  setSender(address: string, args?: string): void {
    if (address.includes('\0')) throw badArg('invalid sender');
    this.senderNow = address;
    this.newSender = { address, args };
  }

  get bodySize(): number {
    return this.input.body.size;
  }

  body(): AsyncIterable<Buffer> {
    return this.input.body.read();
  }

  bodyBuffer(): Promise<Buffer> {
    return this.input.body.buffer();
  }

  replaceBody(body: BodySource): void {
    this.newBody = body;
  }

  quarantine(reason: string): void {
    this.quarantineReason = reason;
  }

  /** Emit the difference between the message as received and as it is now, as milter actions. */
  async applyTo(sink: ModificationSink): Promise<void> {
    if (this.newSender !== undefined) sink.changeFrom(this.newSender.address, this.newSender.args);
    for (const address of this.recipients.removed) sink.deleteRecipient(address);
    for (const r of this.recipients.current) {
      if (!r.received) sink.addRecipient(r.address, r.args);
    }
    this.applyHeaders(sink);
    if (this.quarantineReason !== undefined) sink.quarantine(this.quarantineReason);
    if (this.newBody !== undefined) await sink.replaceBody(this.newBody);
  }

  private applyHeaders(sink: ModificationSink): void {
    const h = this.headers;
    // 1. Received headers changed or deleted, bottom up (so the last occurrence of each name first).
    const changes = [
      ...h.entries.flatMap((e) =>
        e.received !== undefined && e.value !== e.received.value
          ? [{ name: e.name, received: e.received, value: e.value as string | null }]
          : [],
      ),
      ...h.deleted.map((d) => ({ ...d, value: null })),
    ].sort((a, b) => b.received.position - a.received.position);
    for (const c of changes) sink.changeHeader(c.name, c.received.occurrence, c.value);
    // 2. New headers at their final positions, top first; after the last received header: appended.
    const lastReceived = h.entries.findLastIndex((e) => e.received !== undefined);
    h.entries.forEach((e, i) => {
      if (e.received !== undefined) return;
      if (i > lastReceived) sink.addHeader(e.name, e.value);
      else sink.insertHeader(i + HIDDEN_TOP_HEADERS, e.name, e.value);
    });
  }
}

/** The bytes of a header value as received (`wireBytes` of its value). */
export function headerBytes(field: HeaderField): Buffer {
  return wireBytes(field.value);
}
