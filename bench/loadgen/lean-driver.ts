/**
 * The lean load driver: milterd's own codec (encodeCommand, FrameDecoder, decodeResponse) driving many
 * connections from one event loop. Every write is pre-encoded once per negotiated plan (script.ts: the
 * packets and write boundaries of Postfix or Sendmail); each connection keeps exactly one awaited command
 * in flight, as both MTAs do (write a command, then block on its reply). Every reply is checked:
 * CONTINUE after each command, and at EOM exactly one ADDHEADER `X-Bench` followed by CONTINUE (PROGRESS
 * is tolerated).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { MILTER_MDS_1M, Response, SMFIF_ADDHDRS } from '../../src/protocol/constants.js';
import { decodeResponse } from '../../src/protocol/decode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import { parseSocketSpec, type SocketSpec } from '../../src/socket-spec.js';
import { Histogram } from '../lib/histogram.js';
import { buildPlan, OPTNEG_BYTES, type Plan, STAT_INDEX, STAT_NAMES, type Step } from './script.js';
import type { LoadConfig, WorkerStats } from './types.js';

const MAX_ERROR_SAMPLES = 20;

/**
 * Every connection of this thread reads into one buffer (net's `onread`), as the server does: no fresh
 * ArrayBuffer and stream push per reply, so more of the two cores is left to the server under test.
 * Replies are checked synchronously; an unfinished frame is copied out (`retain`) before the next read.
 */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

export interface DriverHooks {
  /** The message budget is used up and every started message finished. */
  onLimit(): void;
  /** Idle mode: the number of held connections changed. */
  onHeld(held: number, errors: number): void;
}

export interface Driver {
  start(): void;
  mark(): void;
  /** Stop starting work; returns the stats since the last mark (snapshot taken at once). */
  stop(): Promise<WorkerStats>;
}

type Phase = 'connecting' | 'optneg' | 'session' | 'message' | 'held' | 'closing';

class LeanDriver implements Driver {
  private readonly spec: SocketSpec;
  private readonly unix: boolean;
  private readonly plans = new Map<number, Plan>();
  private readonly latency = STAT_NAMES.map(() => new Histogram());
  private readonly conns = new Set<LeanConnection>();
  private messages = 0;
  private errors = 0;
  private warmupErrors = 0;
  private marked = false;
  private readonly errorSamples: string[] = [];
  private started = 0;
  private inFlight = 0;
  private stopping = false;
  private limitSent = false;
  connectionsOpened = 0;
  connectRetries = 0;
  held = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly rampTimers: NodeJS.Timeout[] = [];

  constructor(
    readonly config: LoadConfig,
    private readonly hooks: DriverHooks,
  ) {
    this.spec = parseSocketSpec(config.spec);
    this.unix = this.spec.kind === 'unix';
  }

  start(): void {
    const n = this.config.connections;
    const step = n > 1 ? this.config.rampMs / n : 0;
    for (let i = 0; i < n; i++) {
      if (step === 0) this.openSlot();
      else this.rampTimers.push(setTimeout(() => this.openSlot(), Math.floor(i * step)));
    }
    // One timer for every reply timeout, instead of one per command.
    this.timer = setInterval(() => this.checkTimeouts(), Math.min(500, this.config.timeoutMs));
  }

  mark(): void {
    this.marked = true;
    this.messages = 0;
    this.errors = 0;
    for (const h of this.latency) h.reset();
  }

  async stop(): Promise<WorkerStats> {
    this.stopping = true;
    for (const t of this.rampTimers) clearTimeout(t);
    const stats: WorkerStats = {
      messages: this.messages,
      errors: this.errors,
      warmupErrors: this.warmupErrors,
      errorSamples: this.errorSamples.slice(),
      latency: this.latency.map((h) => h.toData()),
      connectionsOpened: this.connectionsOpened,
      connectRetries: this.connectRetries,
      held: this.held,
    };
    if (this.timer) clearInterval(this.timer);
    // Say goodbye like an MTA (QUIT), then make sure nothing lingers.
    const closing: Promise<void>[] = [];
    for (const c of this.conns) closing.push(c.quit());
    await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, 2000))]);
    for (const c of this.conns) c.destroy();
    return stats;
  }

  // ---- called by connections ----

  plan(protocol: number): Plan {
    let plan = this.plans.get(protocol);
    if (plan === undefined) {
      plan = buildPlan(this.config, protocol, this.unix, this.config.mta);
      this.plans.set(protocol, plan);
    }
    return plan;
  }

  /** Reserve one message of the budget; false when the run is over. */
  takeMessage(): boolean {
    if (this.stopping || this.started >= this.config.maxMessages) return false;
    this.started++;
    this.inFlight++;
    return true;
  }

  messageDone(ok: boolean): void {
    this.inFlight--;
    if (ok) this.messages++;
    if (!this.limitSent && this.started >= this.config.maxMessages && this.inFlight === 0) {
      this.limitSent = true;
      this.hooks.onLimit();
    }
  }

  record(stat: number, ns: number): void {
    this.latency[stat]!.record(ns);
  }

  error(what: string): void {
    if (this.marked) this.errors++;
    else this.warmupErrors++;
    if (this.errorSamples.length < MAX_ERROR_SAMPLES) this.errorSamples.push(what);
  }

  heldChanged(delta: number): void {
    this.held += delta;
    this.hooks.onHeld(this.held, this.errors + this.warmupErrors);
  }

  /** A connect() found the listen backlog full (Unix sockets): try again in a moment. */
  connectRetry(): void {
    this.connectRetries++;
    if (this.stopping) return;
    setTimeout(() => this.openSlot(), 2 + Math.floor(Math.random() * 8));
  }

  /** The connection's socket is gone. */
  release(conn: LeanConnection): void {
    this.conns.delete(conn);
  }

  /** A slot became free (QUIT sent, or a failure): open the next connection if there is work left. */
  reopen(delayMs: number): void {
    if (this.stopping || this.config.idle || this.started >= this.config.maxMessages) return;
    this.openSlot(delayMs);
  }

  openSlot(delayMs = 0): void {
    if (this.stopping) return;
    if (delayMs > 0) {
      setTimeout(() => this.openSlot(), delayMs);
      return;
    }
    const conn = new LeanConnection(this);
    this.conns.add(conn);
    this.connectionsOpened++;
    conn.open(this.spec);
  }

  private checkTimeouts(): void {
    const now = performance.now();
    for (const c of this.conns) c.checkTimeout(now, this.config.timeoutMs);
  }
}

class LeanConnection {
  private socket: net.Socket | undefined;
  private readonly decoder = new FrameDecoder(MILTER_MDS_1M);
  private phase: Phase = 'connecting';
  private plan: Plan | undefined;
  private steps: Step[] = [];
  private stepIndex = 0;
  private awaiting: Step | undefined;
  private sentAt = 0;
  private eomHeaders = 0;
  private messagesHere = 0;
  private inMessage = false;
  private done = false;
  private isHeld = false;
  private quitResolve: (() => void) | undefined;

  constructor(private readonly driver: LeanDriver) {}

  open(spec: SocketSpec): void {
    const onread = {
      buffer: READ_BUFFER,
      callback: (length: number): boolean => {
        this.onRead(length);
        return true;
      },
    };
    const socket =
      spec.kind === 'unix'
        ? net.createConnection({ path: spec.path, onread })
        : net.createConnection({ host: spec.host, port: spec.port, onread });
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('connect', () => {
      this.phase = 'optneg';
      this.sentAt = performance.now();
      socket.write(OPTNEG_BYTES);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (this.phase === 'connecting' && err.code === 'EAGAIN') {
        // Unix socket backlog full: libuv connects non-blocking and fails at once, where Postfix's
        // blocking connect() would simply wait. Retry shortly; counted apart, not as an error.
        this.done = true;
        this.finish();
        this.driver.connectRetry();
        return;
      }
      if (this.phase !== 'closing') this.fail(`socket error in ${this.phase}: ${err.code ?? err.message}`);
    });
    socket.on('close', () => {
      if (!this.done && this.phase !== 'closing')
        this.fail(`connection closed by the server in ${this.phase}`);
      this.finish();
    });
  }

  private onRead(length: number): void {
    this.decoder.push(READ_BUFFER, length);
    this.readFrames();
    this.decoder.retain();
  }

  private readFrames(): void {
    for (;;) {
      let frame;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.fail(`bad frame: ${err instanceof Error ? err.message : String(err)}`);
        return;
      }
      if (frame === undefined) return;
      if (!this.onFrame(frame.command, frame.payload)) return;
    }
  }

  /** Returns false once the connection is failed or closing. */
  private onFrame(command: number, payload: Buffer): boolean {
    const d = this.driver;
    if (this.phase === 'optneg') {
      if (command !== Response.OPTNEG) return this.fail(`OPTNEG answered with 0x${command.toString(16)}`);
      const reply = decodeResponse({ command, payload });
      if (reply.kind !== 'optneg') return this.fail('OPTNEG reply did not decode as optneg');
      if ((reply.actions & SMFIF_ADDHDRS) === 0) return this.fail('filter did not ask for SMFIF_ADDHDRS');
      d.record(STAT_INDEX.optneg, (performance.now() - this.sentAt) * 1e6);
      this.plan = d.plan(reply.protocol);
      this.phase = 'session';
      this.steps = this.plan.session;
      this.stepIndex = 0;
      this.advance();
      return !this.done;
    }
    const step = this.awaiting;
    if (step === undefined) return this.fail(`unsolicited reply 0x${command.toString(16)} in ${this.phase}`);
    if (step.eom) {
      if (command === Response.ADDHEADER) {
        const mod = decodeResponse({ command, payload });
        if (mod.kind !== 'addHeader' || mod.name !== 'X-Bench' || mod.value !== 'milterd-bench') {
          return this.fail('EOM: unexpected ADDHEADER payload');
        }
        this.eomHeaders++;
        return true;
      }
      if (command === Response.PROGRESS) return true;
      if (command !== Response.CONTINUE) return this.fail(`EOM answered with 0x${command.toString(16)}`);
      if (this.eomHeaders !== 1) return this.fail(`EOM brought ${this.eomHeaders} ADDHEADER, expected 1`);
      if (payload.length !== 0) return this.fail('CONTINUE with a payload');
      d.record(step.stat, (performance.now() - this.sentAt) * 1e6);
      this.awaiting = undefined;
      this.inMessage = false;
      this.messagesHere++;
      d.messageDone(true);
      this.nextMessage();
      return !this.done;
    }
    if (command !== Response.CONTINUE || payload.length !== 0) {
      return this.fail(`${STAT_NAMES[step.stat] ?? '?'} answered with 0x${command.toString(16)}`);
    }
    d.record(step.stat, (performance.now() - this.sentAt) * 1e6);
    this.awaiting = undefined;
    this.advance();
    return !this.done;
  }

  /** Write the next step, or move on when the step list is done. */
  private advance(): void {
    const step = this.steps[this.stepIndex++];
    if (step === undefined) {
      if (this.phase === 'session') this.nextMessage();
      return;
    }
    if (step.eom) this.eomHeaders = 0;
    this.awaiting = step;
    this.sentAt = performance.now();
    const socket = this.socket!;
    for (const bytes of step.writes) socket.write(bytes);
  }

  private nextMessage(): void {
    const d = this.driver;
    const plan = this.plan!;
    if (d.config.idle) {
      this.phase = 'held';
      if (!this.isHeld) {
        this.isHeld = true;
        d.heldChanged(+1);
      }
      return;
    }
    if (this.messagesHere >= d.config.messagesPerConnection || !d.takeMessage()) {
      this.close(true);
      return;
    }
    this.phase = 'message';
    this.inMessage = true;
    // The plan for later messages carries the packets the MTA sends between messages (Postfix: ABORT).
    this.steps = this.messagesHere > 0 ? plan.nextMessage : plan.firstMessage;
    this.stepIndex = 0;
    this.advance();
  }

  /** The MTA's goodbye (Postfix: ABORT … QUIT; Sendmail: QUIT), then end our side. */
  private close(reopen: boolean): void {
    this.phase = 'closing';
    this.done = true;
    this.endSocket(this.messagesHere > 0);
    // Like an MTA, the next SMTP session does not wait for this milter connection to be torn down.
    if (reopen) this.driver.reopen(0);
  }

  /** `afterMessage`: a message was started on this connection (Postfix then sends one more ABORT). */
  private endSocket(afterMessage: boolean): void {
    const socket = this.socket!;
    const plan = this.plan;
    if (plan !== undefined) {
      for (const bytes of afterMessage ? plan.endAfterMessage : plan.endWithoutMessage) socket.write(bytes);
    }
    socket.end();
  }

  private finished = false;

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.isHeld) {
      this.isHeld = false;
      this.driver.heldChanged(-1);
    }
    this.quitResolve?.();
    this.driver.release(this);
  }

  /** Count an error, drop the connection, and (unless stopping) open a replacement. Returns false. */
  private fail(what: string): boolean {
    if (this.done) return false;
    this.done = true;
    this.driver.error(what);
    if (this.inMessage) {
      this.inMessage = false;
      this.driver.messageDone(false);
    }
    this.phase = 'closing';
    this.socket?.destroy();
    this.finish();
    // Back off a little so a dead server does not turn into a hot reconnect loop.
    this.driver.reopen(50);
    return false;
  }

  checkTimeout(now: number, timeoutMs: number): void {
    if (this.done) return;
    if ((this.awaiting !== undefined || this.phase === 'optneg') && now - this.sentAt > timeoutMs) {
      this.fail(`timeout waiting for the ${this.awaiting ? STAT_NAMES[this.awaiting.stat] : 'optneg'} reply`);
    }
  }

  /** Orchestrated stop: QUIT whatever we are doing, resolve when the socket is closed. */
  quit(): Promise<void> {
    if (this.finished) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.quitResolve = resolve;
      const afterMessage = this.inMessage || this.messagesHere > 0;
      if (this.inMessage) {
        this.inMessage = false;
        this.driver.messageDone(false);
      }
      if (!this.done) {
        this.done = true;
        this.phase = 'closing';
        if (this.socket) this.endSocket(afterMessage);
      }
    });
  }

  destroy(): void {
    this.socket?.destroy();
  }
}

export function createLeanDriver(config: LoadConfig, hooks: DriverHooks): Driver {
  return new LeanDriver(config, hooks);
}
