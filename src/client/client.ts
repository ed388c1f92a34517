/**
 * MTA-side milter client: connects to a filter, negotiates, and plays SMTP events the way Postfix and
 * Sendmail do (milter-protocol.md §5, §7). Used by the tests, the benchmark and the CLI `check` command.
 *
 * Hot path: every write is one buffer (queued macros + command encoded together), and only a call that
 * awaits a reply creates a promise. One reply timer per client is re-armed with `refresh()`.
 */
import type net from 'node:net';
import { MilterError } from '../errors.js';
import {
  MILTER_CHUNK_SIZE,
  MILTER_MDS_1M,
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
  SMFI_PROT_VERSION,
  SMFIP_NR_BODY,
} from '../protocol/constants.js';
import { decodeResponse } from '../protocol/decode.js';
import { encodeCommand, encodeCommands } from '../protocol/encode.js';
import { FrameDecoder } from '../protocol/frame.js';
import type {
  MilterCommand,
  MilterResponse,
  ModificationResponse,
  OptnegResponse,
} from '../protocol/types.js';
import type { SocketSpec } from '../socket-spec.js';
import type { ConnectionInfo } from '../filter.js';
import { MACROS_WHEN_SKIPPED } from './mta-profiles.js';
import { STAGE, type Stage, validateNegotiation } from './negotiate.js';
import { closedError, openSocket } from './socket.js';
import type { ClientReply, EomResult, MilterClientOptions, NegotiatedClientOptions } from './types.js';

export type { ClientReply, EomResult, MilterClientOptions, NegotiatedClientOptions } from './types.js';

type WaitMode = 'optneg' | 'reply' | 'eom';
interface Waiter {
  mode: WaitMode;
  resolve: (value: never) => void;
  reject: (err: MilterError) => void;
  modifications: ModificationResponse[];
  progress: number;
}

const NOREPLY: ClientReply = Object.freeze({ kind: 'noreply' });
const SKIPPED: ClientReply = Object.freeze({ kind: 'skipped' });
/** Shared by non-EOM waiters, which never push to it (a modification there is a protocol error). */
const NO_MODIFICATIONS: ModificationResponse[] = [];
const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * One milter connection seen from the MTA side. Calls must not overlap: await each reply before the
 * next command (a second awaited call while one is pending rejects with ERR_MILTER_INVALID_ARGUMENT).
 * Fatal conditions (bad or unexpected packet, timeout, EOF) close the socket; the pending call rejects
 * with the coded error and every later call with ERR_MILTER_CONNECTION_CLOSED.
 */
export class MilterClient {
  private readonly socket: net.Socket;
  private readonly decoder: FrameDecoder;
  private timeoutMs: number;
  private timer: NodeJS.Timeout;
  private readonly onProgress: (() => void) | undefined;
  private readonly offer: { version: number; actions: number; protocol: number };
  private readonly macrosWhenSkipped: boolean;
  private waiter: Waiter | undefined;
  private queuedMacros: MilterCommand[] = [];
  private ended = false;
  private failure: MilterError | undefined;
  private closeWaiters: Array<() => void> = [];
  private agreed: NegotiatedClientOptions | undefined;

  private constructor(socket: net.Socket, options: MilterClientOptions) {
    this.socket = socket;
    this.decoder = new FrameDecoder(options.maxDataSize ?? MILTER_MDS_1M);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.offer = {
      version: options.version ?? SMFI_PROT_VERSION,
      actions: options.actions ?? SMFI_CURR_ACTS,
      protocol: options.protocol ?? SMFI_CURR_PROT,
    };
    this.macrosWhenSkipped = options.macrosWhenSkipped ?? false;
    this.onProgress = options.onProgress;
    this.timer = setTimeout(() => this.onTimer(), this.timeoutMs).unref();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(closedError(err)));
    socket.on('close', () => this.onClose());
  }

  /**
   * Open the socket (TCP with TCP_NODELAY, or Unix), send OPTNEG and validate the reply: version within
   * [2, offered], actions ⊆ offered, protocol ⊆ offered (MDS/reserved bits ignored). Rejects with
   * ERR_MILTER_NEGOTIATION (socket closed) when the filter asks for more, ERR_MILTER_TIMEOUT, or
   * ERR_MILTER_CONNECTION_CLOSED when the filter hangs up; a bad spec throws MilterConfigError.
   */
  static async connect(spec: string | SocketSpec, options: MilterClientOptions = {}): Promise<MilterClient> {
    const socket = await openSocket(spec, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const client = new MilterClient(socket, options);
    let reply: OptnegResponse;
    try {
      reply = await client.send<OptnegResponse>({ kind: 'optneg', ...client.offer }, 'optneg');
    } catch (err) {
      // Accepted, then closed before any reply: how milterd (and libmilter) turn a connection away while
      // draining or at the connection limit. Say so instead of a bare "connection closed".
      if (
        err instanceof MilterError &&
        err.code === 'ERR_MILTER_CONNECTION_CLOSED' &&
        client.decoder.bufferedBytes === 0
      ) {
        throw new MilterError(
          'ERR_MILTER_CONNECTION_CLOSED',
          'refused while draining (or at the connection limit): the milter closed the connection before negotiating',
          { cause: err },
        );
      }
      throw err;
    }
    try {
      client.agreed = validateNegotiation(client.offer, reply);
    } catch (err) {
      client.fail(err as MilterError);
      throw err;
    }
    return client;
  }

  /** True once the socket is gone (QUIT done, filter hung up, fatal error or close()). */
  get closed(): boolean {
    return this.ended;
  }

  /** What the filter agreed to. */
  get negotiated(): NegotiatedClientOptions {
    if (this.agreed === undefined) throw closedError();
    return this.agreed;
  }

  /**
   * Change the reply timeout for the calls that follow (a proxy gives end of message a longer budget than
   * the other commands). A reply already awaited gets the new budget from now.
   */
  setReplyTimeout(ms: number): void {
    if (ms === this.timeoutMs) return;
    this.timeoutMs = ms;
    clearTimeout(this.timer);
    if (!this.ended) this.timer = setTimeout(() => this.onTimer(), ms).unref();
  }

  /** Queue a SMFIC_MACRO packet for `stage` (command letter); it goes out in the same write as the next command. */
  macro(stage: string, macros: Record<string, string>): void {
    if (stage.length !== 1)
      throw new MilterError('ERR_MILTER_INVALID_ARGUMENT', `bad macro stage "${stage}"`);
    this.queuedMacros.push({ kind: 'macro', stage, macros: Object.entries(macros) });
  }

  /** SMFIC_CONNECT. */
  connect(info: ConnectionInfo): Promise<ClientReply> {
    return this.stageCommand('connect', { kind: 'connect', ...info });
  }
  /** SMFIC_HELO. */
  helo(hostname: string): Promise<ClientReply> {
    return this.stageCommand('helo', { kind: 'helo', hostname });
  }
  /** SMFIC_MAIL: sender with angle brackets, ESMTP args one per element. */
  mail(sender: string, args: string[] = []): Promise<ClientReply> {
    return this.stageCommand('mail', { kind: 'mail', sender, args });
  }
  /** SMFIC_RCPT. */
  rcpt(recipient: string, args: string[] = []): Promise<ClientReply> {
    return this.stageCommand('rcpt', { kind: 'rcpt', recipient, args });
  }
  /** SMFIC_DATA (skipped for protocol versions below 4). */
  data(): Promise<ClientReply> {
    return this.stageCommand('data', { kind: 'data' });
  }
  /** SMFIC_HEADER. */
  header(name: string, value: string): Promise<ClientReply> {
    return this.stageCommand('header', { kind: 'header', name, value });
  }
  /** SMFIC_EOH. */
  eoh(): Promise<ClientReply> {
    return this.stageCommand('eoh', { kind: 'eoh' });
  }
  /** SMFIC_UNKNOWN (skipped for protocol version 2). */
  unknown(line: string): Promise<ClientReply> {
    return this.stageCommand('unknown', { kind: 'unknown', line });
  }

  /**
   * SMFIC_BODY, split into 65535-byte packets like both MTAs. Stops at the first reply other than
   * continue and returns it (`skip` included). An empty chunk sends nothing and returns `skipped` (MTAs
   * never send an empty B: it kills libmilter sessions). With NR_BODY all packets go out in one write.
   * `macros`: a SMFIC_MACRO packet before every chunk, as Postfix sends (`D B i`).
   */
  async body(chunk: Buffer, macros?: Record<string, string>): Promise<ClientReply> {
    const skip = this.skipReason('body');
    if (skip !== undefined || chunk.length === 0) {
      this.queuedMacros.length = 0;
      return skip ?? SKIPPED;
    }
    const macro: MilterCommand[] =
      macros === undefined ? [] : [{ kind: 'macro', stage: 'B', macros: Object.entries(macros) }];
    const commands: MilterCommand[] = [];
    for (let off = 0; off < chunk.length; off += MILTER_CHUNK_SIZE) {
      commands.push({ kind: 'body', chunk: chunk.subarray(off, off + MILTER_CHUNK_SIZE) });
    }
    if ((this.negotiated.protocol & SMFIP_NR_BODY) !== 0) {
      this.write(commands.flatMap((c) => [...macro, c]));
      return NOREPLY;
    }
    let reply: ClientReply = NOREPLY;
    for (const command of commands) {
      this.queuedMacros.push(...macro);
      reply = await this.send<ClientReply>(command, 'reply');
      if (reply.kind !== 'continue') break;
    }
    return reply;
  }

  /**
   * SMFIC_BODYEOB (empty unless `chunk` is given, to test the libmilter data-in-EOM form; ≤ 65535 bytes).
   * Collects modification packets and counts progress packets until the final decision.
   */
  eom(chunk: Buffer = Buffer.alloc(0)): Promise<EomResult> {
    return this.send<EomResult>({ kind: 'eom', chunk }, 'eom');
  }

  /** SMFIC_ABORT: no reply. Throws ERR_MILTER_CONNECTION_CLOSED on a closed connection. */
  abort(): void {
    this.write([{ kind: 'abort' }]);
  }

  /** SMFIC_QUIT_NC: no reply; the connection stays open for a new CONNECT without renegotiation. */
  quitNewConnection(): void {
    this.queuedMacros.length = 0;
    this.write([{ kind: 'quitNewConnection' }]);
  }

  /**
   * SMFIC_QUIT, then half-close and wait for the filter to close the socket. If it does not within the
   * timeout the socket is destroyed and ERR_MILTER_TIMEOUT rejects. Resolves at once when already closed.
   */
  quit(): Promise<void> {
    if (this.ended) return Promise.resolve();
    this.queuedMacros.length = 0;
    const closedPromise = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    this.socket.end(encodeCommand({ kind: 'quit' }));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((_, reject) => {
      timer = setTimeout(() => {
        this.socket.destroy();
        reject(
          new MilterError('ERR_MILTER_TIMEOUT', `filter did not close within ${this.timeoutMs} ms of QUIT`),
        );
      }, this.timeoutMs);
    });
    return Promise.race([closedPromise, timeout]).finally(() => clearTimeout(timer));
  }

  /** Destroy the socket now; a pending call rejects with ERR_MILTER_CONNECTION_CLOSED. */
  close(): void {
    this.socket.destroy();
    this.onClose();
  }

  /** Skip by NO bit or version, else send and await (or not, with the NR bit). */
  private stageCommand(stage: Stage, command: MilterCommand): Promise<ClientReply> {
    const skip = this.skipReason(stage);
    if (skip !== undefined) {
      // Both MTAs send an envelope event's macros even when the filter turned the event off (NO bit):
      // they ride with the next write. Without `macrosWhenSkipped`, no macros for an event not sent.
      const keep =
        this.macrosWhenSkipped &&
        MACROS_WHEN_SKIPPED[stage] &&
        this.negotiated.version >= STAGE[stage].minVersion;
      if (!keep) this.queuedMacros.length = 0;
      return Promise.resolve(skip);
    }
    if ((this.negotiated.protocol & STAGE[stage].nr) !== 0) {
      this.write([command]);
      return Promise.resolve(NOREPLY);
    }
    return this.send<ClientReply>(command, 'reply');
  }

  private skipReason(stage: Stage): ClientReply | undefined {
    const { version, protocol } = this.negotiated;
    const facts = STAGE[stage];
    return (protocol & facts.no) !== 0 || version < facts.minVersion ? SKIPPED : undefined;
  }

  /** Write macros + commands as one buffer. Throws when closed or when a reply is pending. */
  private write(commands: MilterCommand[]): void {
    if (this.ended) throw closedError(this.failure);
    if (this.waiter !== undefined) {
      throw new MilterError(
        'ERR_MILTER_INVALID_ARGUMENT',
        'a reply is still awaited: calls must not overlap',
      );
    }
    let buf: Buffer;
    if (this.queuedMacros.length === 0) {
      buf = commands.length === 1 ? encodeCommand(commands[0] as MilterCommand) : encodeCommands(commands);
    } else {
      // Cleared before encoding: if the command cannot be encoded its macros must not leak to the next one.
      const all = this.queuedMacros.concat(commands);
      this.queuedMacros = [];
      buf = encodeCommands(all);
    }
    this.socket.write(buf);
  }

  /** Write one command and return the promise of its reply. */
  private send<T>(command: MilterCommand, mode: WaitMode): Promise<T> {
    try {
      this.write([command]);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      this.waiter = {
        mode,
        resolve: resolve as (v: never) => void,
        reject,
        modifications: mode === 'eom' ? [] : NO_MODIFICATIONS,
        progress: 0,
      };
      this.timer.refresh();
    });
  }

  private settle(value: unknown): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    (waiter?.resolve as ((v: unknown) => void) | undefined)?.(value);
  }

  private onData(chunk: Buffer): void {
    try {
      this.decoder.push(chunk);
      for (let frame = this.decoder.next(); frame !== undefined; frame = this.decoder.next()) {
        this.onResponse(decodeResponse(frame));
        if (this.ended) return;
      }
    } catch (err) {
      this.fail(err instanceof MilterError ? err : closedError(err));
    }
  }

  private onResponse(response: MilterResponse): void {
    const waiter = this.waiter;
    const unexpected = (): void =>
      this.fail(
        new MilterError(
          'ERR_MILTER_UNEXPECTED_RESPONSE',
          `unexpected '${response.kind}' packet while ${waiter === undefined ? 'no reply is awaited' : `awaiting ${waiter.mode}`}`,
        ),
      );
    if (waiter === undefined) return unexpected();
    if (waiter.mode === 'optneg') return response.kind === 'optneg' ? this.settle(response) : unexpected();
    switch (response.kind) {
      case 'optneg':
        return unexpected();
      case 'progress':
        // Sendmail calls progress outside EOM a bogus reply; Postfix restarts its timer on it.
        if (waiter.mode !== 'eom') return unexpected();
        waiter.progress++;
        this.timer.refresh();
        this.onProgress?.();
        return;
      case 'continue':
      case 'accept':
      case 'reject':
      case 'tempfail':
      case 'discard':
      case 'skip':
      case 'shutdown':
      case 'connFail':
      case 'replyCode':
        if (waiter.mode === 'eom') {
          this.settle({ reply: response, modifications: waiter.modifications, progress: waiter.progress });
        } else {
          this.settle(response);
        }
        // connFail is a filter failure for both MTAs: report it, then drop the connection.
        if (response.kind === 'connFail') this.close();
        return;
      default:
        if (waiter.mode !== 'eom') return unexpected();
        waiter.modifications.push(
          response.kind === 'replaceBody'
            ? { kind: 'replaceBody', chunk: Buffer.from(response.chunk) }
            : response,
        );
    }
  }

  private onTimer(): void {
    if (this.waiter === undefined || this.ended) return;
    this.fail(new MilterError('ERR_MILTER_TIMEOUT', `no reply within ${this.timeoutMs} ms`));
  }

  /** Fatal: remember the error, reject the pending call with it, close the socket. */
  private fail(err: MilterError): void {
    if (this.ended) return;
    this.failure ??= err;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(err);
    this.socket.destroy();
    this.onClose();
  }

  private onClose(): void {
    if (!this.ended) {
      this.ended = true;
      clearTimeout(this.timer);
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter?.reject(closedError(this.failure));
    }
    const waiters = this.closeWaiters;
    this.closeWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
