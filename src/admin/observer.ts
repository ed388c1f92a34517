/**
 * The daemon's metrics: a {@link MilterObserver} that feeds a {@link Registry}, plus the daemon-level
 * series (policy firings, reloads, draining, build info). Every observer method is a couple of Map
 * lookups and never throws.
 */
import type { DecisionStage, MilterObserver, ObservedDecision } from '../observer.js';
import type { MilterCommandKind } from '../protocol/types.js';
import type { MilterErrorCode } from '../errors.js';
import { Registry, type Counter, type Gauge, type Histogram } from './metrics.js';

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
  logLinesDropped: 'milterd_log_lines_dropped_total',
  acceptErrors: 'milterd_accept_errors_total',
  draining: 'milterd_draining',
  buildInfo: 'milterd_build_info',
  startTime: 'milterd_start_time_seconds',
} as const;

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
      help: 'Milter commands received from the MTA, by command.',
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
      help: 'Log lines dropped because stdout was not read fast enough (the log buffer was full).',
    });
    this.acceptErrors = r.counter({
      name: n.acceptErrors,
      help:
        'Connections a listener could not accept or closed at once for lack of file descriptors, ' +
        'by listener (milter spec, or admin) and errno code.',
      labelNames: ['listener', 'code'],
    });
    this.draining = r.gauge({ name: n.draining, help: '1 while the daemon drains before exiting.' });
    // Export the unlabelled series and the reload results from the first scrape on.
    this.sessionsOpen.set(0);
    this.draining.set(0);
    this.sessionsTotal.init();
    this.sessionsRefused.init();
    this.bytesIn.init();
    this.bytesOut.init();
    this.logLinesDropped.init();
    this.reloads.init({ result: 'ok' });
    this.reloads.init({ result: 'error' });
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
        this.commands.inc({ command: kind });
        this.bytesIn.inc(undefined, bytes);
      },
      bytesWritten: (bytes: number) => this.bytesOut.inc(undefined, bytes),
      decision: (stage: DecisionStage, decision: ObservedDecision, seconds: number) => {
        this.decisions.inc({ stage, decision });
        this.callbackSeconds.observe(seconds, { stage });
      },
      error: (code: MilterErrorCode) => this.errors.inc({ code }),
      acceptError: (listener: string, code: string) => this.acceptErrors.inc({ listener, code }),
    };
  }

  /** A shutdown-policy rule fired (wired to the policy engine's decision event). */
  policyFired(reason: string): void {
    this.policyFirings.inc({ reason });
  }

  /** Render the whole exposition. */
  render(): string {
    return this.registry.render();
  }
}
