/**
 * The daemon's metrics: a {@link MilterObserver} that feeds a {@link Registry}, plus the daemon-level
 * series (policy firings, reloads, draining, build info). Every observer method is a couple of Map
 * lookups and never throws.
 */
import type { BreakerState } from '../breaker.js';
import type { MemberEvent } from '../pipeline/index.js';
import type { UpstreamEvent } from '../pipeline/upstream.js';
import type { DecisionStage, MilterObserver, ObservedDecision } from '../observer.js';
import type { MilterCommandKind } from '../protocol/types.js';
import type { MilterErrorCode } from '../errors.js';
import {
  Registry,
  setBreakerState,
  StoreMetrics,
  type Counter,
  type Gauge,
  type Histogram,
} from './metrics.js';
import { ProcessMetrics } from './process-metrics.js';
import { commandName } from '../session/stages.js';
import { unreachable } from '../unreachable.js';

/** Names of every metric milterd exports (also documented in the README). */
export const METRIC_NAMES = {
  sessionsOpen: 'milterd_sessions_open',
  sessionsTotal: 'milterd_sessions_total',
  sessionsRefused: 'milterd_sessions_refused_total',
  commands: 'milterd_commands_total',
  decisions: 'milterd_decisions_total',
  callbackSeconds: 'milterd_callback_duration_seconds',
  policyFirings: 'milterd_policy_shutdowns_total',
  policyDecisions: 'milterd_policy_decisions_total',
  errors: 'milterd_errors_total',
  bytesIn: 'milterd_received_bytes_total',
  bytesOut: 'milterd_sent_bytes_total',
  reloads: 'milterd_config_reloads_total',
  reloadSuccessful: 'milterd_config_last_reload_successful',
  reloadSuccessTime: 'milterd_config_last_reload_success_timestamp_seconds',
  maxConnections: 'milterd_max_connections',
  messages: 'milterd_messages_total',
  logLinesDropped: 'milterd_log_lines_dropped_total',
  acceptErrors: 'milterd_accept_errors_total',
  draining: 'milterd_draining',
  buildInfo: 'milterd_build_info',
  startTime: 'milterd_start_time_seconds',
  memberDecisions: 'milterd_member_decisions_total',
  memberSeconds: 'milterd_member_duration_seconds',
  memberErrors: 'milterd_member_errors_total',
  memberTimeouts: 'milterd_member_timeouts_total',
  memberSkipped: 'milterd_member_skipped_total',
  memberActions: 'milterd_member_actions_total',
  memberBreaker: 'milterd_member_breaker_state',
} as const;

/** Values of `milterd_messages_total{outcome}`. */
export type MessageOutcome = 'accept' | 'reject' | 'tempfail' | 'discard';

/**
 * The outcome of a message when `decision` at `stage` ends it, else undefined. A message ends with any
 * decision at end-of-message (continue means accept there), or earlier with a decision that applies to the
 * whole message: accept (no more callbacks for it), discard, and reject/tempfail at MAIL FROM, DATA,
 * headers or body. At RCPT TO reject/tempfail refuse one recipient only, and connect/HELO/unknown are
 * before or outside any message.
 */
export function messageOutcome(stage: DecisionStage, decision: ObservedDecision): MessageOutcome | undefined {
  switch (stage) {
    case 'eom':
      if (decision === 'continue' || decision === 'accept') return 'accept';
      break;
    case 'envrcpt':
      if (decision === 'accept' || decision === 'discard') return decision;
      return undefined;
    case 'envfrom':
    case 'data':
    case 'header':
    case 'eoh':
    case 'body':
      if (decision === 'accept') return 'accept';
      break;
    case 'negotiate':
    case 'connect':
    case 'helo':
    case 'unknown':
      return undefined;
    default:
      return unreachable(stage, 'decision stage');
  }
  return decision === 'reject' || decision === 'tempfail' || decision === 'discard' ? decision : undefined;
}

/** Metrics of one daemon process. Create one per process; `observer` goes to `createMilterServer`. */
export class DaemonMetrics {
  readonly registry = new Registry();
  readonly sessionsOpen: Gauge;
  readonly sessionsTotal: Counter;
  readonly sessionsRefused: Counter;
  readonly commands: Counter;
  readonly decisions: Counter;
  readonly callbackSeconds: Histogram;
  readonly policyFirings: Counter;
  readonly policyDecisions: Counter;
  readonly errors: Counter;
  readonly bytesIn: Counter;
  readonly bytesOut: Counter;
  readonly reloads: Counter;
  readonly logLinesDropped: Counter;
  readonly acceptErrors: Counter;
  readonly draining: Gauge;
  readonly reloadSuccessful: Gauge;
  readonly reloadSuccessTime: Gauge;
  readonly maxConnections: Gauge;
  readonly messages: Counter;
  readonly memberDecisions: Counter;
  readonly memberSeconds: Histogram;
  readonly memberErrors: Counter;
  readonly memberTimeouts: Counter;
  readonly memberSkipped: Counter;
  readonly memberActions: Counter;
  readonly memberBreaker: Gauge;
  /** CPU, memory, descriptors, event loop, GC. */
  readonly process: ProcessMetrics;
  /** The policy store: call latency, errors, circuit breaker. */
  readonly store: StoreMetrics;
  /** The observer to hand to the milter server. */
  readonly observer: MilterObserver;

  constructor(info: { version: string }) {
    const r = this.registry;
    const n = METRIC_NAMES;
    r.gauge({
      name: n.buildInfo,
      help: 'Always 1; labelled with the milterd version.',
      labelNames: ['version'],
    }).set(1, { version: info.version });
    r.gauge({ name: n.startTime, help: 'Start time of the process, in seconds since the Unix epoch.' }).set(
      Math.floor(Date.now() / 1000),
    );
    this.sessionsOpen = r.gauge({ name: n.sessionsOpen, help: 'Milter connections open now.' });
    this.sessionsTotal = r.counter({ name: n.sessionsTotal, help: 'Milter connections accepted.' });
    this.sessionsRefused = r.counter({
      name: n.sessionsRefused,
      help: 'Milter connections refused at the connection limit.',
    });
    this.commands = r.counter({
      name: n.commands,
      help: 'Milter commands received from the MTA, by command (stage names: envfrom, envrcpt…).',
      labelNames: ['command'],
    });
    this.decisions = r.counter({
      name: n.decisions,
      help: 'Filter decisions sent to the MTA, by stage and decision.',
      labelNames: ['stage', 'decision'],
    });
    this.callbackSeconds = r.histogram({
      name: n.callbackSeconds,
      help: 'Time spent in filter callbacks, by stage.',
      labelNames: ['stage'],
    });
    this.policyFirings = r.counter({
      name: n.policyFirings,
      help: 'Shutdown-policy rules that ended an SMTP session, by reason.',
      labelNames: ['reason'],
    });
    this.policyDecisions = r.counter({
      name: n.policyDecisions,
      help: 'Shutdown-policy verdicts, by reason and mode (enforce: armed; dry-run: only logged).',
      labelNames: ['reason', 'mode'],
    });
    this.errors = r.counter({
      name: n.errors,
      help: 'Protocol errors that closed a connection and filter errors mapped to the failure decision, by code.',
      labelNames: ['code'],
    });
    this.bytesIn = r.counter({ name: n.bytesIn, help: 'Bytes received from MTAs (whole frames).' });
    this.bytesOut = r.counter({ name: n.bytesOut, help: 'Bytes sent to MTAs.' });
    this.reloads = r.counter({
      name: n.reloads,
      help: 'Configuration reloads (SIGHUP), by result.',
      labelNames: ['result'],
    });
    this.logLinesDropped = r.counter({
      name: n.logLinesDropped,
      help:
        'Log lines dropped because their output (stdout, or syslog with --log-syslog) did not take them ' +
        'fast enough (its log buffer was full), by output.',
      labelNames: ['output'],
    });
    this.acceptErrors = r.counter({
      name: n.acceptErrors,
      help:
        'Connections a listener could not accept or closed at once for lack of file descriptors, ' +
        'by listener (milter spec, or admin) and errno code.',
      labelNames: ['listener', 'code'],
    });
    this.draining = r.gauge({ name: n.draining, help: '1 while the daemon drains before exiting.' });
    this.reloadSuccessful = r.gauge({
      name: n.reloadSuccessful,
      help: '1 when the last configuration load (start or SIGHUP) succeeded, 0 when it was refused.',
    });
    this.reloadSuccessTime = r.gauge({
      name: n.reloadSuccessTime,
      help: 'Time of the last successful configuration load, in seconds since the Unix epoch.',
    });
    this.maxConnections = r.gauge({
      name: n.maxConnections,
      help: 'Milter connections allowed at once (--max-connections).',
    });
    this.messages = r.counter({
      name: n.messages,
      help: 'Messages by final outcome (accept, reject, tempfail, discard) as decided by the filter.',
      labelNames: ['outcome'],
    });
    this.memberDecisions = r.counter({
      name: n.memberDecisions,
      help:
        'Pipeline member decisions, by member, stage, decision and mode (enforce, or dry-run: logged, ' +
        'not applied).',
      labelNames: ['member', 'stage', 'decision', 'mode'],
    });
    this.memberSeconds = r.histogram({
      name: n.memberSeconds,
      help: 'Time a pipeline member took per callback (an upstream: its reply), by member and stage.',
      labelNames: ['member', 'stage'],
    });
    this.memberErrors = r.counter({
      name: n.memberErrors,
      help: 'Pipeline member failures (errors and timeouts) mapped to its failure action, by member and code.',
      labelNames: ['member', 'code'],
    });
    this.memberTimeouts = r.counter({
      name: n.memberTimeouts,
      help: 'Pipeline member failures that were timeouts, by member and stage.',
      labelNames: ['member', 'stage'],
    });
    this.memberSkipped = r.counter({
      name: n.memberSkipped,
      help: 'Pipeline members left out by their when: condition, by member and scope (connection, message).',
      labelNames: ['member', 'scope'],
    });
    this.memberActions = r.counter({
      name: n.memberActions,
      help:
        'Message changes pipeline members asked for at end of message, by member, action and result ' +
        '(applied, dry-run, not-negotiated: dropped).',
      labelNames: ['member', 'action', 'result'],
    });
    this.memberBreaker = r.gauge({
      name: n.memberBreaker,
      help: 'Circuit breaker of an upstream member: 1 for its current state (closed, open, half-open).',
      labelNames: ['member', 'state'],
    });
    this.process = new ProcessMetrics(r);
    this.store = new StoreMetrics(r);
    // Export the unlabelled series and the reload results from the first scrape on.
    this.sessionsOpen.set(0);
    this.draining.set(0);
    this.sessionsTotal.init();
    this.sessionsRefused.init();
    this.bytesIn.init();
    this.bytesOut.init();
    this.logLinesDropped.init({ output: 'stdout' });
    this.reloads.init({ result: 'ok' });
    this.reloads.init({ result: 'error' });
    // The daemon only starts with a valid configuration: that first load counts as a success.
    this.configLoaded(true);
    for (const outcome of ['accept', 'reject', 'tempfail', 'discard'] as const)
      this.messages.init({ outcome });
    this.observer = this.createObserver();
  }

  private createObserver(): MilterObserver {
    return {
      connectionOpened: () => {
        this.sessionsOpen.inc();
        this.sessionsTotal.inc();
      },
      connectionClosed: () => this.sessionsOpen.dec(),
      connectionRefused: () => this.sessionsRefused.inc(),
      command: (kind: MilterCommandKind, bytes: number) => {
        this.commands.inc({ command: commandName(kind) });
        this.bytesIn.inc(undefined, bytes);
      },
      bytesWritten: (bytes: number) => this.bytesOut.inc(undefined, bytes),
      decision: (stage: DecisionStage, decision: ObservedDecision, seconds: number) => {
        this.decisions.inc({ stage, decision });
        this.callbackSeconds.observe(seconds, { stage });
        const outcome = messageOutcome(stage, decision);
        if (outcome !== undefined) this.messages.inc({ outcome });
      },
      error: (code: MilterErrorCode) => this.errors.inc({ code }),
      acceptError: (listener: string, code: string) => this.acceptErrors.inc({ listener, code }),
    };
  }

  /** One pipeline member event (the pipeline's `onMemberEvent`). */
  memberEvent(event: MemberEvent): void {
    const member = event.member;
    switch (event.type) {
      case 'decision':
        this.memberDecisions.inc({
          member,
          stage: event.stage,
          decision: event.decision,
          mode: event.dryRun ? 'dry-run' : 'enforce',
        });
        this.memberSeconds.observe(event.durationMs / 1000, { member, stage: event.stage });
        break;
      case 'error':
        this.memberErrors.inc({ member, code: event.code });
        if (event.timeout) this.memberTimeouts.inc({ member, stage: event.stage });
        this.memberSeconds.observe(event.durationMs / 1000, { member, stage: event.stage });
        break;
      case 'skipped':
        this.memberSkipped.inc({ member, scope: event.scope });
        break;
      case 'action':
        this.memberActions.inc({
          member,
          action: event.action,
          result: event.applied ? 'applied' : (event.reason ?? 'dropped'),
        });
        break;
    }
  }

  /**
   * An upstream member's own event: its faults (the pipeline sees the failure action's decision, not the
   * fault), its breaker, and the modifications it sent that were dropped.
   */
  upstreamEvent(member: string, event: UpstreamEvent): void {
    switch (event.type) {
      case 'error':
        this.memberErrors.inc({ member, code: event.code });
        if (event.code === 'ERR_MILTER_TIMEOUT') this.memberTimeouts.inc({ member, stage: event.stage });
        break;
      case 'breaker':
        this.memberBreakerState(member, event.state);
        break;
      case 'dropped':
        this.memberActions.inc({
          member,
          action: event.action,
          result: event.reason === 'not-granted' ? 'not-negotiated' : event.reason,
        });
        break;
      default:
        break;
    }
  }

  /** An upstream member's breaker changed state (encoded as the store's, see setBreakerState). */
  memberBreakerState(member: string, state: BreakerState): void {
    setBreakerState(this.memberBreaker, state, { member });
  }

  /** A shutdown-policy rule fired (wired to the policy engine's decision event). */
  policyFired(reason: string): void {
    this.policyFirings.inc({ reason });
  }

  /** A configuration load (SIGHUP) succeeded or was refused. */
  configLoaded(ok: boolean): void {
    this.reloadSuccessful.set(ok ? 1 : 0);
    if (ok) this.reloadSuccessTime.set(Math.floor(Date.now() / 1000));
  }

  /** Render the whole exposition (the series computed at scrape time included). */
  render(): string {
    return this.registry.render();
  }

  /** What `/metrics` serves: refresh the series that need I/O, then render. */
  async scrape(): Promise<string> {
    await this.process.refresh();
    const text = this.render();
    this.process.afterRender();
    return text;
  }

  /** Stop the runtime samplers (at shutdown). */
  stop(): void {
    this.process.stop();
  }
}
