/**
 * One milter connection: socket glue between the byte stream and one Session.
 *
 * Reading: into the process-wide shared buffer when the socket allows it (shared-read.ts), else with
 * 'data' events; both end in `receive()`. Shared bytes die with the read callback, so whatever outlives it
 * is copied there: chunks queued while a command runs, the decoder's leftover bytes, body payloads.
 * Backpressure is explicit `pause()`/`resume()` (a 'readable' + `read()` pull loop measured slower: a
 * nextTick and a `read()` call per chunk).
 *
 * Frames go to the session one command at a time: while a command is in flight, later socket chunks wait
 * in `pending` instead of the decoder, because pushing would invalidate the payload views the running
 * callback may still hold. Past a byte budget the socket is paused: the stream buffers at most its
 * high-water mark, then stops reading from the kernel, whose buffers fill so TCP flow control slows the
 * MTA down. A reply that does not flush (`write()` false) holds the next command until 'drain'.
 *
 * Data flows one way: socket → frames (FrameDecoder, ChunkQueue) → commands → session → responses →
 * socket (ReplyWriter; body-stream.ts for a streamed body replacement). Beside it: the timeouts
 * (connection-timers.ts), fairness between connections (fairness.ts), what an abnormal end logs
 * (connection-log.ts) and the debug counters (connection-stats.ts).
 */
import type net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Filter } from '../filter.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';
import type { MilterObserver } from '../observer.js';
import { decodeCommand } from '../protocol/decode.js';
import { encodeResponse, encodeResponses } from '../protocol/encode.js';
import { FrameDecoder } from '../protocol/frame.js';
import { SMFIC_BODY, SMFIC_BODYEOB, SMFIC_MACRO } from '../protocol/constants.js';
import type { BodyStore } from '../session/body-store.js';
import { PackedMacros } from '../protocol/packed-macros.js';
import type { Frame, MilterResponse } from '../protocol/types.js';
import { createSession } from '../session/session.js';
import type {
  FailureDecision,
  HandleResult,
  Session,
  SessionCommand,
  TerminationReason,
} from '../session/types.js';
import { writeBody } from './body-stream.js';
import { ChunkQueue } from './chunk-queue.js';
import { logFailure, logTimeout } from './connection-log.js';
import { connectionDebugStats } from './connection-stats.js';
import { ConnectionTimers, type TimedConnection } from './connection-timers.js';
import { currentTurn, TURN_COMMANDS } from './fairness.js';
import { ReplyWriter } from './reply-writer.js';
import { adoptSharedReads, type SharedReadRelay } from './shared-read.js';

/** Length prefix + command byte: added to a payload's size to get its size on the wire. */
const FRAME_OVERHEAD = 5;

/** Everything a connection needs; built by the server for each accepted socket. */
export interface ConnectionOptions {
  /** Process-unique connection id (also bound in the logger). */
  id: string;
  socket: net.Socket;
  /** The connection's child logger (`{ conn, peer }` bound). */
  logger: Logger;
  filter: Filter<unknown>;
  observer: MilterObserver | undefined;
  failureDecision: FailureDecision | undefined;
  maxDataSize: number;
  /** Time allowed from accept to the OPTNEG command; 0 = none. */
  negotiateTimeoutMs: number;
  /** Time allowed to complete a frame once part of it arrived; 0 = none. */
  frameTimeoutMs: number;
  /** Time allowed waiting for the next command; 0 = none. */
  idleTimeoutMs: number;
  /** Per-callback budget, passed to the session. */
  callbackTimeoutMs: number;
  /** Bytes of queued socket chunks above which reading pauses. */
  readBudgetBytes: number;
  /** Read into the process-wide shared buffer when the socket allows it (see shared-read.ts). */
  sharedReadBuffer: boolean;
  /** Set when the socket was accepted already reading into the shared buffer (acceptWithSharedReads). */
  sharedReadRelay?: SharedReadRelay;
  /** The server's limit on lines a peer can cause (protocol errors). */
  logLimiter: LogRateLimiter;
}

/**
 * Owns one accepted socket and its session. `closed` resolves once the socket is closed and the
 * session's termination (abort/close callbacks) has finished; it never rejects.
 */
export class MilterConnection {
  readonly id: string;
  readonly logger: Logger;
  /** Resolves when the socket is closed and the session is finished. */
  readonly closed: Promise<void>;
  /** Resolves when the socket is closed (the session may still be finishing a running callback). */
  readonly socketClosed: Promise<void>;

  /** Replaced once in start() when the socket is re-created for shared-buffer reads. */
  private socket: net.Socket;
  /** Reads arrive in the shared buffer: bytes that outlive the read callback must be copied. */
  private sharedReads = false;
  private readonly session: Session;
  private readonly decoder: FrameDecoder;
  private readonly observer: MilterObserver | undefined;
  private readonly options: ConnectionOptions;
  /** The write side; created in start(), once the socket is final. */
  private writer!: ReplyWriter;
  private readonly timers: ConnectionTimers;

  /** Socket chunks read while a command was in flight. */
  private readonly pending = new ChunkQueue();
  private paused = false;
  private inFlight = false;
  /** Stopped for this event-loop turn (TURN_COMMANDS reached); `onTurn` goes on. */
  private yielded = false;
  /** `framesHandled` when this turn's count started: the commands handled in it are the difference. */
  private turnStart = 0;
  /** `turn` when this connection started counting; -1: not counting. */
  private turnMark = -1;
  /** Frames handed to the session so far (a turn's command count, the partial frame the frame timer watches). */
  private framesHandled = 0;
  /** performance.now() of the last chunk read or command answered (idle timeout). */
  private lastActivity = 0;
  /** No more reading or dispatching: the connection is ending. */
  private dead = false;
  private eofSeen = false;
  private socketError = false;
  private quitSeen = false;
  private draining = false;
  private terminating: Promise<void> | undefined;
  private resolveClosed!: () => void;
  private resolveSocketClosed!: () => void;

  constructor(options: ConnectionOptions) {
    this.options = options;
    this.id = options.id;
    this.socket = options.socket;
    this.logger = options.logger;
    this.observer = options.observer;
    this.decoder = new FrameDecoder(options.maxDataSize);
    this.closed = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
    this.socketClosed = new Promise<void>((resolve) => {
      this.resolveSocketClosed = resolve;
    });
    this.session = createSession(
      {
        id: options.id,
        filter: options.filter,
        logger: options.logger,
        callbackTimeoutMs: options.callbackTimeoutMs,
        ...(options.failureDecision === undefined ? {} : { failureDecision: options.failureDecision }),
        ...(options.observer === undefined ? {} : { observer: options.observer }),
        maxDataSize: options.maxDataSize,
        logLimiter: options.logLimiter,
      },
      { sendNow: (response: MilterResponse) => this.sendNow(response) },
    );
    this.decoder.maxDataSize = this.session.maxDataSize;
    this.timers = new ConnectionTimers(this.timed(), {
      negotiateMs: options.negotiateTimeoutMs,
      frameMs: options.frameTimeoutMs,
      idleMs: options.idleTimeoutMs,
    });
  }

  /** What the timers read when they expire (read at expiry only, never on the command path). */
  private timed(): TimedConnection {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const conn = this;
    return {
      get dead() {
        return conn.dead;
      },
      get inFlight() {
        return conn.inFlight;
      },
      get busy() {
        return conn.inFlight || conn.writer.waitingDrain || conn.yielded;
      },
      get lastActivity() {
        return conn.lastActivity;
      },
      decoder: this.decoder,
      timedOut: (key, fields, msg) => this.timedOut(key, fields, msg),
    };
  }

  /** Attach the socket handlers and start reading. Called once, right after construction. */
  start(): void {
    const relay = this.options.sharedReadRelay;
    let adopted: net.Socket | undefined;
    if (relay !== undefined) {
      relay.onRead = this.onRead;
      adopted = this.socket;
    } else if (this.options.sharedReadBuffer) {
      adopted = adoptSharedReads(this.socket, this.onRead);
    }
    if (adopted !== undefined) {
      this.socket = adopted;
      this.sharedReads = true;
      connectionDebugStats.sharedReads++;
    }
    const socket = this.socket;
    this.writer = new ReplyWriter(socket, this.sharedReads, this.observer, this.onDrained);
    socket.setNoDelay(true);
    socket.setKeepAlive(true);
    if (adopted === undefined) {
      socket.on('data', this.onData);
      // Accepted sockets start paused (pauseOnConnect), and a paused stream does not resume on 'data'.
      socket.resume();
    }
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    this.timers.startNegotiate();
  }

  /**
   * True when ending this connection now loses nothing: no command running, session between QUIT_NC and
   * CONNECT. Not before the MTA's first frame: a connection it just opened is about to negotiate and
   * start a session, and closing it then fails that SMTP session ("read error in initial handshake").
   */
  get atSafePoint(): boolean {
    return !this.inFlight && this.framesHandled !== 0 && this.session.idle;
  }

  /** Bytes this connection holds for frames not yet handled: decoder memory plus queued chunks. @internal */
  get retainedBytes(): number {
    return this.decoder.capacity + this.pending.bytes;
  }

  /**
   * Graceful shutdown started: close now if at a safe point, otherwise when the session reaches one
   * (it normally ends at SMFIC_QUIT anyway).
   */
  drain(): void {
    this.draining = true;
    if (!this.dead && this.atSafePoint) this.endAfterFlush();
  }

  /** Shutdown deadline passed: terminate the session ('shutdown') and destroy the socket. */
  forceClose(): void {
    if (this.socket.destroyed) return;
    this.logger.warn('shutdown deadline passed; closing the connection');
    this.abort('shutdown');
  }

  private readonly onData = (chunk: Buffer): void => {
    this.receive(chunk, chunk.length, false);
  };

  private readonly onRead = (length: number, shared: Buffer): void => {
    this.receive(shared, length, true);
  };

  /**
   * One socket read: the first `length` bytes of `chunk`. `borrowed`: they live in the shared read buffer,
   * valid during this call only.
   */
  private receive(chunk: Buffer, length: number, borrowed: boolean): void {
    if (this.dead) return;
    if (this.inFlight || this.writer.waitingDrain || this.yielded) {
      this.lastActivity = performance.now();
      const pending = this.pending;
      pending.push(borrowed ? Buffer.from(chunk.subarray(0, length)) : chunk);
      if (pending.bytes > connectionDebugStats.maxPendingBytes) {
        connectionDebugStats.maxPendingBytes = pending.bytes;
      }
      if (pending.bytes >= this.options.readBudgetBytes && !this.paused) {
        this.paused = true;
        connectionDebugStats.pauses++;
        this.socket.pause();
      }
      return;
    }
    this.decoder.push(chunk, length);
    this.pump();
    // Frames left behind (a partial one, or queued behind an async command) must not see the next read.
    if (borrowed) this.decoder.retain();
    // After the chunk's commands ran: a long synchronous callback is not MTA idleness.
    this.lastActivity = performance.now();
  }

  /**
   * Dispatch every complete frame, one command at a time. Synchronous results continue in this loop
   * (no microtask per command); an async one stops it until the promise settles.
   */
  private pump(): void {
    const writer = this.writer;
    while (!this.dead && !this.inFlight && !writer.waitingDrain && !this.yielded) {
      if (this.framesHandled - this.turnStart >= TURN_COMMANDS && this.turnSpent()) {
        this.yieldTurn();
        return;
      }
      let frame: Frame | undefined;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.fail(err);
        return;
      }
      if (frame === undefined) {
        const chunk = this.pending.shift();
        if (chunk === undefined) break;
        this.decoder.push(chunk);
        continue;
      }
      this.framesHandled++;
      if (!this.dispatch(frame)) return;
    }
    if (this.dead || this.inFlight || writer.waitingDrain || this.yielded) return;
    if (this.eofSeen) {
      // The MTA closed its side and every complete frame was handled: end like libmilter at EOF.
      this.terminate('eof');
      this.endAfterFlush();
      return;
    }
    // Whatever the decoder still holds is the start of a frame the MTA has not finished sending.
    if (this.decoder.bufferedBytes !== 0) this.timers.watchPartialFrame(this.framesHandled);
    else if (this.decoder.capacity !== 0) this.timers.scheduleRelease();
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /**
   * TURN_COMMANDS reached: true when they were all handled in this event-loop turn (time to yield);
   * otherwise start counting this turn afresh.
   */
  private turnSpent(): boolean {
    const now = currentTurn();
    if (this.turnMark === now) return true;
    this.turnMark = now;
    this.turnStart = this.framesHandled;
    return false;
  }

  /** Let the other sockets' I/O run; go on after it (reads meanwhile queue up in `pending`). */
  private yieldTurn(): void {
    this.yielded = true;
    connectionDebugStats.turnYields++;
    setImmediate(this.onTurn);
  }

  private readonly onTurn = (): void => {
    this.yielded = false;
    this.turnStart = this.framesHandled;
    this.turnMark = currentTurn();
    if (!this.dead && !this.inFlight && !this.writer.waitingDrain) this.pump();
  };

  /** Decode and hand one frame to the session. Returns true when the loop may go on synchronously. */
  private dispatch(frame: Frame): boolean {
    let result: HandleResult | Promise<HandleResult>;
    try {
      const command: SessionCommand =
        frame.command === SMFIC_MACRO
          ? PackedMacros.fromPayload(frame.payload)
          : decodeCommand(this.sharedReads && this.decoder.borrowing ? ownBody(frame) : frame);
      this.observer?.command?.(command.kind, frame.payload.length + FRAME_OVERHEAD);
      this.timers.commandSeen();
      result = this.session.handle(command);
    } catch (err) {
      this.fail(err);
      return false;
    }
    if (result instanceof Promise) {
      this.inFlight = true;
      result.then(this.onAsyncResult, this.onAsyncError);
      return false;
    }
    if (result.body !== undefined) {
      void this.streamBody(result, result.body);
      return false;
    }
    return this.complete(result);
  }

  private readonly onAsyncResult = (result: HandleResult): void => {
    this.inFlight = false;
    // A late result after a timeout, shutdown or EOF: the session already terminated; drop it.
    if (this.dead) {
      void result.body?.dispose();
      return;
    }
    this.lastActivity = performance.now();
    if (result.body !== undefined) {
      void this.streamBody(result, result.body);
      return;
    }
    if (this.complete(result)) this.pump();
  };

  private readonly onAsyncError = (err: unknown): void => {
    this.inFlight = false;
    this.fail(err);
  };

  /**
   * An EOM answer with a streamed body replacement (body-stream.ts), then the decision. No command runs
   * meanwhile. A read or write failure ends the connection before the decision is sent.
   */
  private async streamBody(result: HandleResult, body: BodyStore): Promise<void> {
    this.inFlight = true;
    try {
      const responses = result.responses;
      const decision = responses[responses.length - 1] as MilterResponse;
      if (!(await writeBody(this.writer, responses.slice(0, -1), body, this.isDead))) return;
      this.inFlight = false;
      const rest: HandleResult =
        result.end === undefined ? { responses: [decision] } : { responses: [decision], end: result.end };
      if (this.complete(rest)) this.pump();
    } catch (err) {
      this.inFlight = false;
      this.fail(err);
    } finally {
      await body.dispose();
    }
  }

  private readonly isDead = (): boolean => this.dead;

  /** Write the command's responses in one write and decide whether to go on. */
  private complete(result: HandleResult): boolean {
    let flushed = true;
    try {
      this.decoder.maxDataSize = this.session.maxDataSize;
      const responses = result.responses;
      // One response is the common case; a payload-less one (CONTINUE…) is a shared preallocated frame.
      if (responses.length === 1) flushed = this.writer.write(encodeResponse(responses[0] as MilterResponse));
      else if (responses.length > 1) flushed = this.writer.write(encodeResponses(responses));
    } catch (err) {
      this.fail(err);
      return false;
    }
    if (result.end !== undefined) {
      if (result.end === 'quit') this.quitSeen = true;
      else this.terminate('protocol');
      this.endAfterFlush();
      return false;
    }
    if (this.draining && this.session.idle) {
      this.endAfterFlush();
      return false;
    }
    this.timers.armIdle();
    if (!flushed) {
      this.writer.waitForDrain();
      return false;
    }
    return true;
  }

  /** The replies queued by the writer are out: go on with the next command. */
  private readonly onDrained = (): void => {
    if (!this.dead && !this.inFlight) this.pump();
  };

  /** SessionIO.sendNow: progress packets go out at once, ahead of the running command's replies. */
  private sendNow(response: MilterResponse): void {
    if (this.dead || this.socket.destroyed) return;
    this.writer.write(encodeResponse(response));
  }

  /** End the connection on a timeout (connection-log.ts says and counts it). */
  private timedOut(key: string, fields: Record<string, number>, msg: string): void {
    logTimeout(this.logger, this.options.logLimiter, this.observer, key, fields, msg);
    this.abort('timeout');
  }

  /** A protocol error (or an internal bug) ends this connection only: log, count, no reply, destroy. */
  private fail(err: unknown): void {
    if (this.dead) return;
    this.abort(logFailure(this.logger, this.options.logLimiter, this.observer, err));
  }

  private terminate(reason: TerminationReason): void {
    if (this.terminating !== undefined) return;
    this.terminating = this.session.terminate(reason).catch((err: unknown) => {
      this.logger.error({ err }, 'session termination failed');
    });
  }

  /** End abruptly: terminate the session first (so 'close' does not pick another reason), then destroy. */
  private abort(reason: TerminationReason): void {
    this.stop();
    this.terminate(reason);
    this.socket.destroy();
  }

  /** End politely: stop reading, let queued writes flush, send FIN, then release the socket. */
  private endAfterFlush(): void {
    this.stop();
    this.socket.end(() => this.socket.destroy());
  }

  private stop(): void {
    this.dead = true;
    // Like the pull loop it replaces: no more reading once the connection is ending.
    this.socket.pause();
    this.pending.clear();
    this.timers.stop();
  }

  private readonly onEnd = (): void => {
    this.eofSeen = true;
    if (!this.dead && !this.inFlight && !this.writer.waitingDrain) this.pump();
  };

  private readonly onError = (err: Error): void => {
    this.socketError = true;
    // Resets and broken pipes are routine when an MTA gives up; 'close' follows and ends the session.
    this.logger.debug({ err }, 'socket error');
  };

  private readonly onClose = (): void => {
    this.stop();
    this.logger.debug({ quit: this.quitSeen, error: this.socketError }, 'connection closed');
    if (!this.quitSeen) this.terminate(this.socketError ? 'error' : 'eof');
    this.resolveSocketClosed();
    const done = this.terminating ?? Promise.resolve();
    void done.then(() => this.resolveClosed());
  };
}

/**
 * Body bytes reach the filter as a Buffer that an async callback may still read after later socket reads;
 * a frame borrowed from the shared read buffer gets its own copy (every other field is decoded to strings).
 */
function ownBody(frame: Frame): Frame {
  if ((frame.command !== SMFIC_BODY && frame.command !== SMFIC_BODYEOB) || frame.payload.length === 0) {
    return frame;
  }
  return { command: frame.command, payload: Buffer.from(frame.payload) };
}
