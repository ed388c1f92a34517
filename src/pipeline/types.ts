/**
 * Types of the pipeline: an ordered list of members (each an ordinary `Filter`) run as one `Filter`, and
 * the events it reports per member for metrics and debug logs.
 */
import type { ActionName, DecisionKind, Filter, FilterCallbackName } from '../filter.js';
import type { MilterErrorCode } from '../errors.js';
import type { Cidr } from '../policy/values.js';
import type { FailureDecision } from '../session/types.js';

/**
 * When a member takes part (every condition given must hold; none = always). `client`, `notClient`,
 * `authenticated` and `helo` are the policy file's `when:` vocabulary with the same meaning; the others
 * are the pipeline's own. Facts not known yet (the sender at HELO) do not exclude a member: it is judged
 * as soon as they are (connection facts at CONNECT, HELO at HELO, the sender and `authenticated` at MAIL,
 * recipients at the first content command after the last RCPT).
 */
export interface MemberCondition {
  /** Client address in one of these blocks. */
  client?: readonly (string | Cidr)[];
  /** Client address in none of these blocks. */
  notClient?: readonly (string | Cidr)[];
  /** true: only SASL-authenticated sessions (`{auth_authen}` set); false: only the others. */
  authenticated?: boolean;
  /** Regular expression (case-insensitive, linear time) the HELO name must match. */
  helo?: string;
  /** Envelope sender domain is one of these (case-insensitive, exact; `<>` has no domain). */
  senderDomain?: readonly string[];
  /** At least one recipient's domain is one of these (case-insensitive, exact). */
  recipientDomain?: readonly string[];
  /** The MTA's `{daemon_name}` macro is one of these (Postfix: the master.cf service name). */
  daemonName?: readonly string[];
  /** The MTA's `{daemon_port}` macro is one of these (e.g. 587 for submission). */
  daemonPort?: readonly number[];
}

/** One member of a pipeline. */
export interface PipelineMember {
  /** Unique in the pipeline; used in logs and events. */
  name: string;
  filter: Filter;
  when?: MemberCondition;
  /** Run it, log and count its decisions and changes, apply none of them. */
  dryRun?: boolean;
}

/** Stages a member is called at (its callback names). */
export type MemberStage = FilterCallbackName;

interface MemberEventBase {
  /** The member's name. */
  member: string;
  /** The milter connection (`ctx.id`). */
  connectionId: string;
  stage: MemberStage;
}

/**
 * A member's callback returned. `decision` is what it said (`noreply`: a stage it negotiated without
 * reply); `applied` is false for a dry-run member and for a decision at a stage where it was not asked.
 */
export interface MemberDecisionEvent extends MemberEventBase {
  type: 'decision';
  decision: DecisionKind | 'noreply';
  durationMs: number;
  dryRun: boolean;
  applied: boolean;
}

/**
 * A member's callback threw or rejected (a timeout is an error whose code says so:
 * ERR_MILTER_CALLBACK_TIMEOUT or ERR_MILTER_TIMEOUT); `decision` is what the pipeline did instead.
 */
export interface MemberErrorEvent extends MemberEventBase {
  type: 'error';
  code: MilterErrorCode;
  timeout: boolean;
  durationMs: number;
  decision: FailureDecision;
  error: unknown;
}

/**
 * A member asked for a message change at end of message. `applied` is false for a dry-run member
 * (`reason: 'dry-run'`) and for an action it did not negotiate (`reason: 'not-negotiated'`: dropped,
 * never sent, it would desync the MTA).
 */
export interface MemberActionEvent extends MemberEventBase {
  type: 'action';
  action: ActionName;
  applied: boolean;
  reason?: 'dry-run' | 'not-negotiated';
}

/** A member's `when` excluded it, for this message (`scope: 'message'`) or this connection. */
export interface MemberSkippedEvent extends MemberEventBase {
  type: 'skipped';
  scope: 'connection' | 'message';
}

/** What a pipeline reports per member (see `PipelineOptions.onMemberEvent`). */
export type MemberEvent = MemberDecisionEvent | MemberErrorEvent | MemberActionEvent | MemberSkippedEvent;

export interface PipelineOptions {
  /** Name of the pipeline filter (logs). Default `pipeline`. */
  name?: string;
  /**
   * Called synchronously for every member decision, error, dropped or dry-run change and condition skip.
   * Must be cheap and must not throw (a throw is caught and ignored).
   */
  onMemberEvent?(event: MemberEvent): void;
  /**
   * What a member's failure (throw, rejection) turns into: `tempfail` (default), `reject`, or `continue`
   * / `accept` (the member is passed over for the rest of the message).
   */
  failureDecision?: FailureDecision;
  /** Body bytes kept in memory per message (for members that see it at end of message) before spilling. */
  bodyMemoryLimit?: number;
  /** Directory of those temporary files (unlinked at once). Default `os.tmpdir()`. */
  tempDir?: string;
  /** How often the MTA is told "still working" (SMFIR_PROGRESS) while members run at end of message. */
  progressIntervalMs?: number;
}
