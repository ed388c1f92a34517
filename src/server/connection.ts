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
 * Fairness: commands answered synchronously, and async callbacks completing in microtasks, run without
 * giving the event loop back, so one connection with pipelined commands could be served for its whole
 * read budget (and libuv reads a socket up to 32 times per wake-up) while every other socket waits.
 * After TURN_COMMANDS commands in one event-loop turn a connection yields: it goes on in setImmediate,
 * after the other sockets' I/O. One message's commands arriving in one read never get that far.
 */
import type net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { isMilterError, MilterProtocolError } from '../errors.js';
import type { Filter } from '../filter.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';
import type { MilterObserver } from '../observer.js';
import { decodeCommand } from '../protocol/decode.js';
import { encodeResponse, encodeResponses } from '../protocol/encode.js';
import { FrameDecoder } from '../protocol/frame.js';
import { MILTER_CHUNK_SIZE, SMFIC_BODY, SMFIC_BODYEOB, SMFIC_MACRO } from '../protocol/constants.js';
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
import { writeDirect } from './direct-write.js';
import { adoptSharedReads, type SharedReadRelay } from './shared-read.js';

/** Length prefix + command byte: added to a payload's size to get its size on the wire. */
const FRAME_OVERHEAD = 5;
const EMPTY = Buffer.alloc(0);

/**
 * Commands one connection handles in one event-loop turn before it lets the others run (see the module
 * comment). A whole Postfix message is about 25 frames; 64 keeps a flood's share of a turn near a
 * millisecond.
 * @internal
 */
export const TURN_COMMANDS = 64;

/**
 * Quiet time after which a connection gives its frame accumulator back (FrameDecoder.release): long
 * enough that a body streamed in chunks reuses one buffer, short enough that idle connections hold none.
 */
const RELEASE_AFTER_MS = 1000;

/**
 * Event-loop turn counter, advanced by a setImmediate scheduled only when a connection asks for it (when
 * it reaches TURN_COMMANDS): a connection whose mark still equals `turn` has not seen the loop turn.
 */
let turn = 0;
let turnTickPending = false;
const advanceTurn = (): void => {
  turn++;
  turnTickPending = false;
};
function currentTurn(): number {
  if (!turnTickPending) {
    turnTickPending = true;
    setImmediate(advanceTurn);
  }
  return turn;
}

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
 * Read-side counters shared by every connection of the process. Diagnostics only (tests use them to
 * prove that backpressure engages); plain increments, so cheap enough to keep on.
 * @internal
 */
export const connectionDebugStats = {
  /** Times a connection stopped reading because its pending chunks passed the budget. */
  pauses: 0,
  /** Largest number of pending (not yet decoded) bytes any connection held. */
  maxPendingBytes: 0,
  /** Times a connection waited for 'drain' before dispatching its next command. */
  drainWaits: 0,
  /** Times a connection stopped after TURN_COMMANDS commands to let other sockets run. */
  turnYields: 0,
  /** Connections that read into the shared buffer (the rest used ordinary stream reads). */
  sharedReads: 0,
  /** Direct writes (direct-write.ts) the kernel could not take at once: libuv queued them. */
  queuedDirectWrites: 0,
};

/** Reset {@link connectionDebugStats} (tests). @internal */
export function resetConnectionDebugStats(): void {
  connectionDebugStats.pauses = 0;
  connectionDebugStats.maxPendingBytes = 0;
  connectionDebugStats.drainWaits = 0;
  connectionDebugStats.turnYields = 0;
  connectionDebugStats.sharedReads = 0;
  connectionDebugStats.queuedDirectWrites = 0;
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

  /** Socket chunks read while a command was in flight, oldest first from `pendingHead`. */
  private pending: Buffer[] = [];
  private pendingHead = 0;
  private pendingBytes = 0;
  private paused = false;
  private inFlight = false;
  private waitingDrain = false;
  /** Awaiting `drained()` (a streamed body replacement). */
  private readonly drainWaiters: Array<() => void> = [];
  /** Stopped for this event-loop turn (TURN_COMMANDS reached); `onTurn` goes on. */
  private yielded = false;
  /** `framesHandled` when this turn's count started: the commands handled in it are the difference. */
  private turnStart = 0;
  /** `turn` when this connection started counting; -1: not counting. */
  private turnMark = -1;
  /** Frames handed to the session so far (a turn's command count, the partial frame the frame timer watches). */
  private framesHandled = 0;
  /** `framesHandled` when the current partial frame was first seen, and performance.now() then. */
  private partialSeq = -1;
  private partialSince = 0;
  private frameTimer: NodeJS.Timeout | undefined;
  /** Armed while the decoder keeps an accumulator with nothing in it (RELEASE_AFTER_MS). */
  private releaseTimer: NodeJS.Timeout | undefined;
  /** Replies written straight to the handle (direct-write.ts) that libuv still holds. */
  private directQueued = 0;
  /** performance.now() of the last chunk read or command answered (idle timeout). */
  private lastActivity = 0;
  /** No more reading or dispatching: the connection is ending. */
  private dead = false;
  private eofSeen = false;
  private socketError = false;
  private quitSeen = false;
  private draining = false;
  private terminating: Promise<void> | undefined;
  private negotiateTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
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
    if (this.options.negotiateTimeoutMs > 0) {
      this.negotiateTimer = setTimeout(this.onNegotiateTimeout, this.options.negotiateTimeoutMs);
      this.negotiateTimer.unref();
    }
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
    return this.decoder.capacity + this.pendingBytes;
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
    if (this.inFlight || this.waitingDrain || this.yielded) {
      this.lastActivity = performance.now();
      const kept = borrowed ? Buffer.from(chunk.subarray(0, length)) : chunk;
      this.pending.push(kept);
      this.pendingBytes += kept.length;
      if (this.pendingBytes > connectionDebugStats.maxPendingBytes) {
        connectionDebugStats.maxPendingBytes = this.pendingBytes;
      }
      if (this.pendingBytes >= this.options.readBudgetBytes && !this.paused) {
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
    while (!this.dead && !this.inFlight && !this.waitingDrain && !this.yielded) {
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
        if (this.pendingHead === this.pending.length) break;
        const chunk = this.pending[this.pendingHead] as Buffer;
        this.pending[this.pendingHead++] = EMPTY;
        if (this.pendingHead === this.pending.length) {
          this.pending = [];
          this.pendingHead = 0;
        }
        this.pendingBytes -= chunk.length;
        this.decoder.push(chunk);
        continue;
      }
      this.framesHandled++;
      if (!this.dispatch(frame)) return;
    }
    if (this.dead || this.inFlight || this.waitingDrain || this.yielded) return;
    if (this.eofSeen) {
      // The MTA closed its side and every complete frame was handled: end like libmilter at EOF.
      this.terminate('eof');
      this.endAfterFlush();
      return;
    }
    // Whatever the decoder still holds is the start of a frame the MTA has not finished sending.
    if (this.decoder.bufferedBytes !== 0) {
      if (this.options.frameTimeoutMs > 0) this.watchPartialFrame();
    } else if (this.decoder.capacity !== 0 && this.releaseTimer === undefined) {
      this.startReleaseTimer(RELEASE_AFTER_MS);
    }
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
    if (!this.dead && !this.inFlight && !this.waitingDrain) this.pump();
  };

  /**
   * A partial frame is held: make sure the frame timer runs, timed from when this frame's first bytes
   * were seen (a frame completed since then means a new partial frame, timed afresh).
   */
  private watchPartialFrame(): void {
    if (this.partialSeq !== this.framesHandled) {
      this.partialSeq = this.framesHandled;
      this.partialSince = performance.now();
    }
    if (this.frameTimer === undefined) this.startFrameTimer(this.options.frameTimeoutMs);
  }

  private startFrameTimer(ms: number): void {
    this.frameTimer = setTimeout(this.onFrameTimeout, ms);
    this.frameTimer.unref();
  }

  /** Lazy like the idle timer: re-armed for the time left while a (later) partial frame is held. */
  private readonly onFrameTimeout = (): void => {
    this.frameTimer = undefined;
    if (this.dead) return;
    const timeoutMs = this.options.frameTimeoutMs;
    // The bytes wait for us (a command running, a reply not flushed), not for the MTA.
    if (this.inFlight || this.waitingDrain || this.yielded) {
      this.startFrameTimer(timeoutMs);
      return;
    }
    if (this.decoder.bufferedBytes === 0) return; // completed, nothing new started
    const left = this.partialSince + timeoutMs - performance.now();
    if (left > 0) {
      this.startFrameTimer(Math.ceil(left));
      return;
    }
    this.timedOut(
      'frame-timeout',
      { timeoutMs, bufferedBytes: this.decoder.bufferedBytes },
      'frame not completed in time; closing',
    );
  };

  private startReleaseTimer(ms: number): void {
    this.releaseTimer = setTimeout(this.onReleaseTimer, ms);
    this.releaseTimer.unref();
  }

  /** Lazy like the idle timer: gives the accumulator back once the connection was quiet long enough. */
  private readonly onReleaseTimer = (): void => {
    this.releaseTimer = undefined;
    if (this.dead || this.decoder.capacity === 0) return;
    const left = this.lastActivity + RELEASE_AFTER_MS - performance.now();
    if (left > 0) this.startReleaseTimer(Math.ceil(left));
    else if (this.inFlight || this.waitingDrain || this.yielded || this.decoder.bufferedBytes !== 0) {
      this.startReleaseTimer(RELEASE_AFTER_MS); // in use: the bytes in it wait for us or for the MTA
    } else this.decoder.release();
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
      if (this.negotiateTimer !== undefined) {
        clearTimeout(this.negotiateTimer);
        this.negotiateTimer = undefined;
      }
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

  /**
   * An EOM answer with a streamed body replacement: the modifications, then the body in REPLBODY packets
   * read from its store one at a time (waiting for each write to drain, so a large body is never in
   * memory whole), then the decision. No command runs meanwhile. A read or write failure ends the
   * connection before the decision is sent, so the MTA applies its own failure action: a half-written body
   * is never accepted.
   */
  private async streamBody(result: HandleResult, body: BodyStore): Promise<void> {
    this.inFlight = true;
    try {
      const responses = result.responses;
      const decision = responses[responses.length - 1] as MilterResponse;
      const before = responses.slice(0, -1);
      if (before.length > 0 && !this.write(encodeResponses(before))) await this.drained();
      let sent = false;
      for await (const piece of body.read()) {
        for (let off = 0; off < piece.length; off += MILTER_CHUNK_SIZE) {
          if (this.dead) return;
          const chunk = piece.subarray(off, off + MILTER_CHUNK_SIZE);
          if (!this.write(encodeResponse({ kind: 'replaceBody', chunk }))) await this.drained();
          sent = true;
        }
      }
      // An empty replacement is one empty packet (= empty body), as chunkBody sends it.
      if (!sent && !this.dead && !this.write(encodeResponse({ kind: 'replaceBody', chunk: EMPTY }))) {
        await this.drained();
      }
      if (this.dead) return;
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

  /** Resolves when the writes queued so far are out (see `complete`'s backpressure). */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.drainWaiters.push(resolve);
      if (!this.waitingDrain) this.waitForDrain();
    });
  }

  /** A write was queued: hold further commands until it is out (`onDrain`). */
  private waitForDrain(): void {
    this.waitingDrain = true;
    connectionDebugStats.drainWaits++;
    // Direct writes still queued end the wait themselves (onDirectWritten); the Writable's with 'drain'.
    if (this.directQueued === 0) this.socket.once('drain', this.onDrain);
  }

  private readonly onAsyncError = (err: unknown): void => {
    this.inFlight = false;
    this.fail(err);
  };

  /** Write the command's responses in one write and decide whether to go on. */
  private complete(result: HandleResult): boolean {
    let flushed = true;
    try {
      this.decoder.maxDataSize = this.session.maxDataSize;
      const responses = result.responses;
      // One response is the common case; a payload-less one (CONTINUE…) is a shared preallocated frame.
      if (responses.length === 1) flushed = this.write(encodeResponse(responses[0] as MilterResponse));
      else if (responses.length > 1) flushed = this.write(encodeResponses(responses));
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
    this.armIdleTimer();
    if (!flushed) {
      this.waitForDrain();
      return false;
    }
    return true;
  }

  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    if (this.drainWaiters.length > 0) {
      for (const resolve of this.drainWaiters.splice(0)) resolve();
    }
    if (!this.dead && !this.inFlight) this.pump();
  };

  /** Write one buffer. False: the bytes are queued (backpressure); `onDrain` runs when they are out. */
  private write(buf: Buffer): boolean {
    this.observer?.bytesWritten?.(buf.length);
    if (this.sharedReads) {
      const outcome = writeDirect(this.socket, buf, this.onDirectWritten);
      if (outcome === 'written') return true;
      if (outcome === 'queued') {
        this.directQueued++;
        connectionDebugStats.queuedDirectWrites++;
        return false;
      }
    }
    return this.socket.write(buf);
  }

  /** A direct write that libuv had queued is out (or failed: the socket goes, like a failed write()). */
  private readonly onDirectWritten = (err: Error | undefined): void => {
    this.directQueued--;
    if (err !== undefined) {
      if (!this.socket.destroyed) this.socket.destroy(err);
      return;
    }
    if (this.directQueued === 0 && this.waitingDrain) this.onDrain();
  };

  /** SessionIO.sendNow: progress packets go out at once, ahead of the running command's replies. */
  private sendNow(response: MilterResponse): void {
    if (this.dead || this.socket.destroyed) return;
    this.write(encodeResponse(response));
  }

  /**
   * Armed once, at the first answer; not refreshed per command (a timer refresh is a list operation, twice
   * per command before): activity only stamps `lastActivity`, and the timer re-arms itself on expiry for
   * the time left, so it still fires `idleTimeoutMs` after the last chunk or answer.
   */
  private armIdleTimer(): void {
    if (this.idleTimer !== undefined || this.options.idleTimeoutMs <= 0) return;
    this.startIdleTimer(this.options.idleTimeoutMs);
  }

  private startIdleTimer(ms: number): void {
    this.idleTimer = setTimeout(this.onIdleTimeout, ms);
    this.idleTimer.unref();
  }

  private readonly onNegotiateTimeout = (): void => {
    this.negotiateTimer = undefined;
    if (this.dead) return;
    this.timedOut(
      'negotiate-timeout',
      { timeoutMs: this.options.negotiateTimeoutMs },
      'no option negotiation in time; closing',
    );
  };

  private readonly onIdleTimeout = (): void => {
    if (this.dead) return;
    const idleMs = this.options.idleTimeoutMs;
    // A callback still running is the session's business (callbackTimeoutMs); its completion stamps
    // `lastActivity`, so checking again one period later cannot expire early.
    if (this.inFlight) {
      this.startIdleTimer(idleMs);
      return;
    }
    const left = this.lastActivity + idleMs - performance.now();
    if (left > 0) {
      this.startIdleTimer(Math.ceil(left));
      return;
    }
    this.timedOut('idle-timeout', { timeoutMs: idleMs }, 'MTA idle for too long; closing');
  };

  /** End the connection on a timeout: a rate-limited line (a peer can cause timeouts at will), counted. */
  private timedOut(key: string, fields: Record<string, number>, msg: string): void {
    if (this.options.logLimiter.allow(key)) this.logger.warn(fields, msg);
    this.observer?.error?.('ERR_MILTER_TIMEOUT');
    this.abort('timeout');
  }

  /** A protocol error (or an internal bug) ends this connection only: log, count, no reply, destroy. */
  private fail(err: unknown): void {
    if (this.dead) return;
    if (err instanceof MilterProtocolError) {
      // The peer's fault: code and message only (a stack made a 5-byte bad frame cost 1 KB of log).
      if (this.options.logLimiter.allow(err.code)) {
        this.logger.error(
          { code: err.code, reason: err.message },
          'protocol error; closing the connection without a reply',
        );
      }
      this.observer?.error?.(err.code);
      this.abort('protocol');
      return;
    }
    const code = isMilterError(err) ? err.code : undefined;
    this.logger.error({ err, code }, 'internal error; closing the connection');
    if (code !== undefined) this.observer?.error?.(code);
    this.abort('error');
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
    this.pending = [];
    this.pendingHead = 0;
    this.pendingBytes = 0;
    if (this.negotiateTimer !== undefined) clearTimeout(this.negotiateTimer);
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    if (this.frameTimer !== undefined) clearTimeout(this.frameTimer);
    if (this.releaseTimer !== undefined) clearTimeout(this.releaseTimer);
    this.negotiateTimer = undefined;
    this.frameTimer = undefined;
    this.releaseTimer = undefined;
  }

  private readonly onEnd = (): void => {
    this.eofSeen = true;
    if (!this.dead && !this.inFlight && !this.waitingDrain) this.pump();
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
