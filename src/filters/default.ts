/**
 * The filter `milterd serve` runs: it lets every message through, stamps it with an `X-Milterd` header so
 * operators can see that the milter saw it, and logs one `info` line per message with the queue id. In the
 * daemon it is the pipeline member `builtin: stamp`, the whole pipeline when none is configured; the
 * shutdown policy (the embedded default or a policy file) wraps the pipeline and makes the decisions.
 */
import type { Logger } from 'pino';
import type { Filter } from '../filter.js';

/** Name of the header the default filter adds at end of message. */
export const DEFAULT_FILTER_HEADER = 'X-Milterd';

/** Options of {@link createDefaultFilter}. */
export interface DefaultFilterOptions {
  /** Value of the `X-Milterd` header, e.g. `milterd 1.2.3`; `false` adds no header. */
  header?: string | false;
}

/** Per-transaction state of the default filter. */
interface DefaultPriv {
  /** Logger with the queue id bound, once the MTA told us (macro `i`). */
  log: Logger;
  queueId: string | undefined;
}

/** Macros the default filter asks for (the MTA sends them when it supports SMFIF_SETSYMLIST). */
export const DEFAULT_FILTER_MACROS = {
  connect: ['j', '{daemon_name}', '{client_addr}', '{client_name}'],
  envfrom: ['i', '{auth_type}', '{auth_authen}', '{mail_addr}'],
  eom: ['i'],
} as const;

/** `logger` with `queueId` bound, unless unknown or already bound (the session binds it as `txn`). */
function withQueueId(logger: Logger, queueId: string | undefined): Logger {
  if (queueId === undefined) return logger;
  const bound = logger.bindings();
  return bound.txn === queueId || bound.queueId === queueId ? logger : logger.child({ queueId });
}

/**
 * Create the daemon's default filter. Callbacks: `envfrom` binds the queue id to a transaction logger
 * (Postfix and Sendmail both send macro `i` with MAIL FROM by default), `eom` adds the header and logs
 * the message. Nothing here rejects; rejections and 421s come from the shutdown policy.
 */
export function createDefaultFilter(options: DefaultFilterOptions = {}): Filter<DefaultPriv> {
  const header = options.header ?? 'milterd';
  return {
    name: 'milterd-default',
    actions: header === false ? [] : ['addHeader'],
    macros: {
      connect: [...DEFAULT_FILTER_MACROS.connect],
      envfrom: [...DEFAULT_FILTER_MACROS.envfrom],
      eom: [...DEFAULT_FILTER_MACROS.eom],
    },
    envfrom(ctx) {
      const queueId = ctx.macro('i');
      ctx.priv = { queueId, log: withQueueId(ctx.logger, queueId) };
    },
    eom(ctx) {
      let priv = ctx.priv;
      const queueId = ctx.macro('i');
      if (priv === undefined || (priv.queueId === undefined && queueId !== undefined)) {
        priv = { queueId, log: withQueueId(ctx.logger, queueId) };
        ctx.priv = priv;
      }
      if (header !== false) ctx.addHeader(DEFAULT_FILTER_HEADER, header);
      priv.log.info(
        {
          from: ctx.envelope?.sender,
          rcpts: ctx.envelope?.recipients.length ?? 0,
        },
        'message passed',
      );
    },
    abort(ctx) {
      ctx.priv = undefined;
    },
  };
}
