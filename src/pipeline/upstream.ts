/**
 * An existing milter (OpenDKIM, spamass-milter, any libmilter filter) reached over the milter protocol and
 * presented as an ordinary {@link Filter}, so that a pipeline or a plain createMilterServer can host it.
 *
 * One upstream connection per MTA connection, opened in `negotiate` with the MTA's offer: what the upstream
 * agrees to (actions, steps, no-reply bits, macro lists) is what this filter asks the MTA for. Each event is
 * forwarded with the macros the upstream asked for (the MTA-side client skips what the upstream negotiated
 * away and does not wait where it asked for no reply); its answers become decisions (a SMFIR_REPLYCODE
 * becomes a decision with that reply) and its modifications become EomContext calls. A modification the
 * MTA did not grant is dropped and logged, never forwarded: that would desync the MTA.
 *
 * Faults (connect refused, timeout, the upstream hanging up) apply `onFailure` at the command that met
 * them and at every later one of the connection (like Postfix's milter default_action); `skip` instead
 * continues without this member. A circuit breaker shared by all connections fails sessions fast while
 * the upstream keeps failing, then lets one probe through.
 */
import type { Logger } from 'pino';
import { CircuitBreaker, type BreakerState, type CircuitBreakerOptions } from '../breaker.js';
import { MilterClient } from '../client/client.js';
import type { ClientReply, NegotiatedClientOptions } from '../client/types.js';
import { DEFAULTS } from '../defaults.js';
import { MilterError, MilterProtocolError, type MilterErrorCode } from '../errors.js';
import {
  Decision,
  type BaseContext,
  type EomContext,
  type Filter,
  type FilterCallbackName,
  type MacroStage,
  type NegotiateResult,
  type NegotiationOffer,
  type StageContext,
} from '../filter.js';
import { silentLogger } from '../logging/logger.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import {
  MACRO_STAGES,
  SMFI_INTERNAL,
  SMFIF_ADDHDRS,
  SMFIF_ADDRCPT,
  SMFIF_ADDRCPT_PAR,
  SMFIF_CHGBODY,
  SMFIF_CHGFROM,
  SMFIF_CHGHDRS,
  SMFIF_DELRCPT,
  SMFIF_QUARANTINE,
  SMFIP_NOBODY,
  SMFIP_NOCONNECT,
  SMFIP_NODATA,
  SMFIP_NOEOH,
  SMFIP_NOHDRS,
  SMFIP_NOHELO,
  SMFIP_NOMAIL,
  SMFIP_NORCPT,
  SMFIP_NOUNKNOWN,
  SMFIP_TEST,
} from '../protocol/constants.js';
import type { ModificationResponse } from '../protocol/types.js';
import { outsideBody } from '../session/decision.js';
import { formatSocketSpec, parseSocketSpec, type SocketSpec } from '../socket-spec.js';
import { replyFromText, type ParsedReply } from './upstream-reply.js';

/** What the MTA gets when the upstream fails: a decision, or `skip` (this member is left out for the rest of the connection). */
export type UpstreamFailureAction = 'tempfail' | 'accept' | 'reject' | 'skip';

/** Where an upstream event happened: the filter callback that talked to the upstream. */
export type UpstreamStage = FilterCallbackName;

/** Budgets for the upstream, in ms. Defaults: DEFAULTS.upstreamConnectMs / upstreamCommandMs / upstreamEomMs. */
export interface UpstreamTimeouts {
  /** Connecting and the OPTNEG reply. */
  connectMs?: number;
  /** Each reply before end of message. */
  commandMs?: number;
  /** The end-of-message reply; each progress packet restarts it. */
  eomMs?: number;
}

/**
 * What an upstream filter reports, for metrics (every event carries the upstream's `upstream` name):
 * `connect` (connected and negotiated, with its latency), `command` (one awaited reply and its latency),
 * `error` (a fault, by code: ERR_MILTER_TIMEOUT for a timeout), `failure` (the failure action applied,
 * after an error or because the breaker is open), `breaker` (a state change), `dropped` (a modification
 * the MTA did not grant, or one that was malformed).
 */
export type UpstreamEvent = { upstream: string } & (
  | { type: 'connect'; seconds: number }
  | { type: 'command'; stage: UpstreamStage; reply: ClientReply['kind']; seconds: number }
  | { type: 'error'; stage: UpstreamStage; code: MilterErrorCode }
  | {
      type: 'failure';
      stage: UpstreamStage;
      action: UpstreamFailureAction;
      cause: 'error' | 'breaker';
    }
  | { type: 'breaker'; state: BreakerState; previous: BreakerState }
  | { type: 'dropped'; action: ModificationResponse['kind']; reason: 'not-granted' | 'invalid' }
);

/** Options of {@link upstreamFilter}. */
export interface UpstreamOptions {
  /** Where the upstream listens: `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` (see socket-spec.ts). */
  address: string | SocketSpec;
  /** Used in logs and events. Default: the address. */
  name?: string;
  timeouts?: UpstreamTimeouts;
  /** Default DEFAULTS.upstreamOnFailure (tempfail). */
  onFailure?: UpstreamFailureAction;
  /** The breaker shared by every connection of this filter (failures, openMs, clock). */
  breaker?: CircuitBreakerOptions;
  /** Process-level lines (breaker changes, rate-limit summaries); per-connection lines go to ctx.logger. */
  logger?: Logger;
  /** Metrics hook; called synchronously, must not throw (a throw is swallowed). */
  onEvent?: (event: UpstreamEvent) => void;
}

/** A filter backed by an upstream milter; its breaker state is readable for health and metrics. */
export interface UpstreamFilter extends Filter {
  readonly name: string;
  readonly breakerState: BreakerState;
}

/** Every NO bit: a member that is skipped asks the MTA for nothing. */
const ALL_STEPS_OFF =
  SMFIP_NOCONNECT |
  SMFIP_NOHELO |
  SMFIP_NOMAIL |
  SMFIP_NORCPT |
  SMFIP_NOBODY |
  SMFIP_NOHDRS |
  SMFIP_NOEOH |
  SMFIP_NOUNKNOWN |
  SMFIP_NODATA;

/** The SMFIF_* bit each modification needs from the MTA. */
const ACTION_FLAG: Readonly<Record<ModificationResponse['kind'], number>> = {
  addHeader: SMFIF_ADDHDRS,
  insertHeader: SMFIF_ADDHDRS,
  changeHeader: SMFIF_CHGHDRS,
  addRecipient: SMFIF_ADDRCPT,
  addRecipientWithArgs: SMFIF_ADDRCPT_PAR,
  deleteRecipient: SMFIF_DELRCPT,
  replaceBody: SMFIF_CHGBODY,
  changeFrom: SMFIF_CHGFROM,
  quarantine: SMFIF_QUARANTINE,
};

const MACRO_STAGE_OF_NUMBER: ReadonlyMap<number, MacroStage> = new Map(
  (Object.entries(MACRO_STAGES) as Array<[MacroStage, { number: number }]>).map(([s, v]) => [v.number, s]),
);

/** The upstream's macro lists (by SMFIM_* number) as names per stage. */
function macrosByStage(agreed: NegotiatedClientOptions): Partial<Record<MacroStage, string[]>> {
  const out: Partial<Record<MacroStage, string[]>> = {};
  for (const [n, list] of Object.entries(agreed.macroLists)) {
    const stage = MACRO_STAGE_OF_NUMBER.get(Number(n));
    if (stage === undefined || typeof list !== 'string') continue;
    out[stage] = list.split(/[\s,]+/).filter((m) => m !== '');
  }
  return out;
}

/** One MTA connection's upstream. */
interface Conn {
  client: MilterClient | undefined;
  /** The upstream failed (or the breaker refused it): the failure action answers from now on. */
  failed: 'error' | 'breaker' | undefined;
  /** Left out for the rest of the connection (onFailure skip, or the upstream accepted/ended the connection). */
  skipped: boolean;
  /** The breaker let this session through and waits for its outcome (reported once). */
  owesOutcome: boolean;
  /** A message is open on the upstream (MAIL forwarded, not yet ended by EOM, a decision or ABORT). */
  inMessage: boolean;
  /** The upstream decided the current message (accept, reject…): nothing more of it goes there. */
  messageDone: boolean;
  macros: Partial<Record<MacroStage, string[]>>;
  /** The EOM context while the upstream works at end of message: its progress packets go there. */
  eom: EomContext<unknown> | undefined;
}

/**
 * An upstream milter as a Filter. See the module comment for the behaviour; README "Upstream milters".
 *
 * @example
 * createMilterServer({ filter: upstreamFilter({ address: 'inet:8891@127.0.0.1', onFailure: 'accept' }) });
 */
export function upstreamFilter(options: UpstreamOptions): UpstreamFilter {
  const spec = typeof options.address === 'string' ? parseSocketSpec(options.address) : options.address;
  const name = options.name ?? formatSocketSpec(spec);
  const connectMs = options.timeouts?.connectMs ?? DEFAULTS.upstreamConnectMs;
  const commandMs = options.timeouts?.commandMs ?? DEFAULTS.upstreamCommandMs;
  const eomMs = options.timeouts?.eomMs ?? DEFAULTS.upstreamEomMs;
  const onFailure: UpstreamFailureAction = options.onFailure ?? DEFAULTS.upstreamOnFailure;
  const logger = options.logger ?? silentLogger;
  const limiter = new LogRateLimiter({ logger });
  const conns = new Map<string, Conn>();

  const emit = (event: UpstreamEvent): void => {
    try {
      options.onEvent?.(event);
    } catch {
      // A metrics hook must not break mail flow.
    }
  };

  const breaker = new CircuitBreaker({
    ...options.breaker,
    onChange: (state, previous) => {
      logger.warn({ upstream: name, state, previous }, `upstream ${name}: circuit breaker ${state}`);
      emit({ upstream: name, type: 'breaker', state, previous });
      options.breaker?.onChange?.(state, previous);
    },
  });

  /** The session's outcome for the breaker, once: healthy after its first end of message or a clean close. */
  const settle = (conn: Conn, ok: boolean): void => {
    if (!conn.owesOutcome) return;
    conn.owesOutcome = false;
    if (ok) breaker.success();
    else breaker.failure();
  };

  /** Record a fault: log (rate-limited), count, drop the upstream connection, tell the breaker. */
  const fault = (conn: Conn, stage: UpstreamStage, err: unknown, log: Logger): void => {
    const code: MilterErrorCode = err instanceof MilterError ? err.code : 'ERR_MILTER_CONNECTION_CLOSED';
    emit({ upstream: name, type: 'error', stage, code });
    if (limiter.allow(code)) {
      log.warn(
        { upstream: name, stage, code, reason: err instanceof Error ? err.message : String(err) },
        `upstream ${name} failed at ${stage}: ${onFailure}`,
      );
    }
    conn.client?.close();
    conn.client = undefined;
    conn.failed = 'error';
    conn.eom = undefined;
    settle(conn, false);
  };

  /** The failure action for this command. */
  const failureDecision = (conn: Conn, stage: UpstreamStage): Decision | undefined => {
    emit({ upstream: name, type: 'failure', stage, action: onFailure, cause: conn.failed ?? 'error' });
    if (onFailure === 'skip') {
      conn.skipped = true;
      return undefined;
    }
    return onFailure;
  };

  /** Connect and negotiate with `offer` (unless the breaker is open); never throws. */
  const open = async (id: string, offer: NegotiationOffer, log: Logger): Promise<Conn> => {
    const conn: Conn = {
      client: undefined,
      failed: undefined,
      skipped: false,
      owesOutcome: false,
      inMessage: false,
      messageDone: false,
      macros: {},
      eom: undefined,
    };
    conns.set(id, conn);
    if (!breaker.allow()) {
      conn.failed = 'breaker';
      return conn;
    }
    conn.owesOutcome = true;
    const t0 = performance.now();
    try {
      const client = await MilterClient.connect(spec, {
        version: offer.version,
        actions: offer.actions,
        protocol: offer.protocol,
        timeoutMs: connectMs,
        onProgress: () => conn.eom?.progress(),
      });
      client.setReplyTimeout(commandMs);
      conn.client = client;
      conn.macros = macrosByStage(client.negotiated);
      emit({ upstream: name, type: 'connect', seconds: (performance.now() - t0) / 1000 });
    } catch (err) {
      fault(conn, 'negotiate', err, log);
    }
    return conn;
  };

  /**
   * This connection's upstream. Missing only after a QUIT_NC closed it: a new SMTP session on the same
   * MTA connection, which gets a new upstream connection offered what the MTA agreed to.
   */
  const connOf = async (ctx: BaseContext<unknown>): Promise<Conn> => {
    const conn = conns.get(ctx.id);
    if (conn !== undefined) return conn;
    const n = ctx.negotiated;
    const offer = { version: n?.version ?? 0, actions: n?.actions ?? 0, protocol: n?.protocol ?? 0 };
    return open(ctx.id, offer, ctx.logger);
  };

  /** Send the macros the upstream asked for at `stage` (all visible ones when it gave no list). */
  const forwardMacros = (
    ctx: BaseContext<unknown>,
    conn: Conn,
    client: MilterClient,
    stage: MacroStage,
  ): void => {
    const names = conn.macros[stage];
    let values: Record<string, string>;
    if (names === undefined) values = ctx.macros();
    else {
      values = {};
      for (const m of names) {
        const v = ctx.macro(m);
        if (v !== undefined) values[m] = v;
      }
    }
    for (const _ in values) {
      client.macro(stage, values);
      return;
    }
  };

  const replyDecision = (text: string, log: Logger): ParsedReply | undefined => {
    const parsed = replyFromText(text);
    if (parsed !== undefined && parsed.reply === undefined && limiter.allow('ERR_MILTER_INVALID_REPLY')) {
      log.warn({ upstream: name, text }, `upstream ${name}: reply text not valid here, sent without it`);
    }
    return parsed;
  };

  /** The upstream's answer as this filter's decision. */
  const decide = (
    conn: Conn,
    stage: UpstreamStage,
    reply: ClientReply,
    log: Logger,
  ): Decision | 'skip' | undefined => {
    let d: Decision | undefined;
    switch (reply.kind) {
      case 'continue':
      case 'noreply':
      case 'skipped':
        return undefined;
      case 'skip':
        return 'skip';
      case 'accept':
      case 'reject':
      case 'tempfail':
      case 'discard':
        d = reply.kind;
        break;
      case 'shutdown':
      case 'connFail':
        // The upstream wants the SMTP session ended: the portable form is a 421 (see Decision.shutdown).
        conn.skipped = true;
        return Decision.shutdown();
      case 'replyCode': {
        const parsed = replyDecision(reply.text, log);
        if (parsed === undefined) {
          fault(
            conn,
            stage,
            new MilterProtocolError(
              'ERR_MILTER_UNEXPECTED_RESPONSE',
              `reply code "${reply.text}" is not 4xx or 5xx`,
            ),
            log,
          );
          return failureDecision(conn, stage);
        }
        d = parsed.reply === undefined ? parsed.kind : { kind: parsed.kind, reply: parsed.reply };
        break;
      }
    }
    // A decision ends the message (or the connection) for the upstream, except a refused recipient or
    // unknown command.
    if (stage === 'envrcpt' || stage === 'unknown') return d === 'accept' ? endMessage(conn, d) : d;
    if (d === 'accept' && (stage === 'connect' || stage === 'helo')) conn.skipped = true;
    return endMessage(conn, d);
  };

  const endMessage = (conn: Conn, d: Decision): Decision => {
    conn.messageDone = true;
    conn.inMessage = false;
    return d;
  };

  /** One stage command: forward it (with its macros), map the answer; faults become the failure action. */
  const forward = async (
    ctx: StageContext<unknown>,
    stage: UpstreamStage,
    macroStage: MacroStage | undefined,
    send: (client: MilterClient) => Promise<ClientReply>,
  ): Promise<Decision | 'skip' | undefined> => {
    const conn = await connOf(ctx);
    if (conn.skipped) return undefined;
    if (stage === 'envfrom') conn.messageDone = false;
    if (conn.failed !== undefined || conn.client === undefined) return failureDecision(conn, stage);
    if (conn.messageDone) return undefined;
    const client = conn.client;
    const t0 = performance.now();
    let reply: ClientReply;
    try {
      if (macroStage !== undefined) forwardMacros(ctx, conn, client, macroStage);
      reply = await send(client);
    } catch (err) {
      fault(conn, stage, err, ctx.logger);
      return failureDecision(conn, stage);
    }
    if (stage === 'envfrom') conn.inMessage = true;
    if (reply.kind !== 'noreply' && reply.kind !== 'skipped') {
      emit({
        upstream: name,
        type: 'command',
        stage,
        reply: reply.kind,
        seconds: (performance.now() - t0) / 1000,
      });
    }
    return decide(conn, stage, reply, ctx.logger);
  };

  const drop = (
    log: Logger,
    m: ModificationResponse,
    reason: 'not-granted' | 'invalid',
    err?: unknown,
  ): void => {
    emit({ upstream: name, type: 'dropped', action: m.kind, reason });
    if (limiter.allow(`dropped:${reason}`)) {
      log.warn(
        { upstream: name, action: m.kind, reason, err: err instanceof Error ? err.message : undefined },
        reason === 'not-granted'
          ? `upstream ${name} sent ${m.kind}, which the MTA did not grant: dropped`
          : `upstream ${name} sent an invalid ${m.kind}: dropped`,
      );
    }
  };

  /** The upstream's modifications as EomContext calls, in its order; its body pieces become one body. */
  const apply = async (ctx: EomContext<unknown>, mods: readonly ModificationResponse[]): Promise<void> => {
    const granted = ctx.negotiated?.actions ?? 0;
    let body: Buffer[] | undefined;
    for (const m of mods) {
      if ((granted & ACTION_FLAG[m.kind]) === 0) {
        drop(ctx.logger, m, 'not-granted');
        continue;
      }
      try {
        switch (m.kind) {
          case 'addHeader':
            ctx.addHeader(m.name, m.value);
            break;
          case 'insertHeader':
            ctx.insertHeader(m.index, m.name, m.value);
            break;
          case 'changeHeader':
            ctx.changeHeader(m.name, m.index, m.value);
            break;
          case 'addRecipient':
            ctx.addRecipient(m.recipient);
            break;
          case 'addRecipientWithArgs':
            ctx.addRecipient(m.recipient, m.args ?? '');
            break;
          case 'deleteRecipient':
            ctx.deleteRecipient(m.recipient);
            break;
          case 'changeFrom':
            ctx.changeFrom(m.sender, m.args);
            break;
          case 'quarantine':
            ctx.quarantine(m.reason);
            break;
          case 'replaceBody':
            // libmilter's smfi_replacebody appends: every piece the upstream sent is the new body.
            (body ??= []).push(m.chunk);
            break;
        }
      } catch (err) {
        drop(ctx.logger, m, 'invalid', err);
      }
    }
    if (body !== undefined) await ctx.replaceBody(Buffer.concat(body));
  };

  return {
    name,
    get breakerState(): BreakerState {
      return breaker.state;
    },

    async negotiate(ctx, offer): Promise<NegotiateResult> {
      const conn = await open(ctx.id, offer, ctx.logger);
      const agreed = conn.client?.negotiated;
      if (agreed === undefined) {
        // Ask only for what applying the failure action needs: CONNECT (or nothing, for skip).
        const off = onFailure === 'skip' ? ALL_STEPS_OFF : ALL_STEPS_OFF & ~SMFIP_NOCONNECT;
        return { actions: 0, protocol: off & offer.protocol };
      }
      // MDS and test bits are the session's own business.
      const result: NegotiateResult = {
        actions: agreed.actions,
        protocol: agreed.protocol & ~(SMFI_INTERNAL | SMFIP_TEST),
      };
      if (Object.keys(conn.macros).length > 0) result.macros = conn.macros;
      return result;
    },
    connect: (ctx, info) => outsideBody(forward(ctx, 'connect', 'connect', (c) => c.connect(info))),
    helo: (ctx, host) => outsideBody(forward(ctx, 'helo', 'helo', (c) => c.helo(host))),
    envfrom: (ctx, sender, args) =>
      outsideBody(forward(ctx, 'envfrom', 'envfrom', (c) => c.envfrom(sender, [...args]))),
    envrcpt: (ctx, rcpt, args) =>
      outsideBody(forward(ctx, 'envrcpt', 'envrcpt', (c) => c.envrcpt(rcpt, [...args]))),
    data: (ctx) => outsideBody(forward(ctx, 'data', 'data', (c) => c.data())),
    unknown: (ctx, line) => outsideBody(forward(ctx, 'unknown', undefined, (c) => c.unknown(line))),
    header: (ctx, hname, value) =>
      outsideBody(forward(ctx, 'header', undefined, (c) => c.header(hname, value))),
    eoh: (ctx) => outsideBody(forward(ctx, 'eoh', 'eoh', (c) => c.eoh())),
    body: (ctx, chunk) => forward(ctx, 'body', undefined, (c) => c.body(chunk)),

    async eom(ctx): Promise<Decision | undefined> {
      const conn = await connOf(ctx);
      if (conn.skipped) return undefined;
      if (conn.failed !== undefined || conn.client === undefined) return failureDecision(conn, 'eom');
      if (conn.messageDone) return undefined;
      const client = conn.client;
      const t0 = performance.now();
      let result;
      try {
        forwardMacros(ctx, conn, client, 'eom');
        conn.eom = ctx;
        client.setReplyTimeout(eomMs);
        result = await client.eom();
      } catch (err) {
        fault(conn, 'eom', err, ctx.logger);
        return failureDecision(conn, 'eom');
      } finally {
        conn.eom = undefined;
        client.setReplyTimeout(commandMs);
      }
      conn.inMessage = false;
      settle(conn, true);
      emit({
        upstream: name,
        type: 'command',
        stage: 'eom',
        reply: result.reply.kind,
        seconds: (performance.now() - t0) / 1000,
      });
      await apply(ctx, result.modifications);
      const d = decide(conn, 'eom', result.reply, ctx.logger);
      conn.messageDone = false;
      return d === 'skip' ? undefined : d;
    },

    abort(ctx): void {
      const conn = conns.get(ctx.id);
      if (conn === undefined) return;
      const open = conn.inMessage && !conn.messageDone && !conn.skipped;
      conn.inMessage = false;
      conn.messageDone = false;
      if (!open || conn.client === undefined) return;
      try {
        conn.client.abort();
      } catch (err) {
        fault(conn, 'abort', err, ctx.logger);
      }
    },

    async close(ctx): Promise<void> {
      const conn = conns.get(ctx.id);
      if (conn === undefined) return;
      conns.delete(ctx.id);
      const client = conn.client;
      conn.client = undefined;
      settle(conn, conn.failed === undefined);
      if (client === undefined || client.closed) return;
      try {
        await client.quit();
      } catch {
        client.close();
      }
    },
  };
}
