/**
 * `messageFilter`: write a filter as "look at the whole message, then change it". The returned `Filter`
 * collects the envelope, the headers and the body (in memory up to a bound, then in an unlinked temporary
 * file) and calls `message(trx, ctx)` once at end of message; what the callback changed on `trx` is sent
 * to the MTA as the fewest milter actions (see transaction.ts). Earlier callbacks can still decide early.
 */
import type { CallbackResult, Filter, MaybePromise, StageContext } from '../filter.js';
import { decisionKind } from '../session/decision.js';
import { BodyStore, BODY_MEMORY_LIMIT } from '../session/body-store.js';
import { MessageTransaction, type Transaction } from './transaction.js';

/** A filter that sees each message whole. Every field but `message` is optional. */
export interface MessageFilter<P = unknown> {
  name?: string;
  /** Macros to request per stage, as in `Filter`. */
  macros?: Filter<P>['macros'];
  /** Ask for header values with their leading space (SMFIP_HDR_LEADSPC), as in `Filter`. */
  headerLeadingSpace?: boolean;
  /** Body bytes kept in memory per message before it goes to a temporary file. Default 1 MiB. */
  bodyMemoryLimit?: number;
  /** Directory for those temporary files (unlinked as soon as created). Default `os.tmpdir()`. */
  tempDir?: string;
  connect?: Filter<P>['connect'];
  helo?: Filter<P>['helo'];
  envfrom?: Filter<P>['envfrom'];
  /** A recipient this callback rejects (reject, tempfail) is not in `trx.recipients`. */
  envrcpt?: Filter<P>['envrcpt'];
  data?: Filter<P>['data'];
  /**
   * The whole message, once, at end of message. Change `trx` and return a decision (nothing = continue).
   * The changes are sent only with continue or accept: a rejected or discarded message is not changed.
   */
  message(trx: Transaction, ctx: StageContext<P>): MaybePromise<CallbackResult>;
  abort?: Filter<P>['abort'];
  close?: Filter<P>['close'];
}

/** What is collected for the message in progress on one connection. */
interface Collected {
  headers: Array<readonly [string, string]>;
  body: BodyStore;
  /** Recipients the filter's own `envrcpt` refused. */
  refused: Set<string>;
}

/** Turn a {@link MessageFilter} into a `Filter` for `createMilterServer` (or a pipeline). */
export function messageFilter<P = unknown>(def: MessageFilter<P>): Filter<P> {
  const memoryLimit = def.bodyMemoryLimit ?? BODY_MEMORY_LIMIT;
  // By connection id: callbacks of one connection never overlap, and `close` always comes.
  const open = new Map<string, Collected>();
  const current = (id: string): Collected => {
    let c = open.get(id);
    if (c === undefined) {
      c = { headers: [], body: new BodyStore(memoryLimit, def.tempDir), refused: new Set() };
      open.set(id, c);
    }
    return c;
  };
  const drop = async (id: string): Promise<void> => {
    const c = open.get(id);
    if (c === undefined) return;
    open.delete(id);
    await c.body.dispose();
  };

  const filter: Filter<P> = {
    ...(def.name === undefined ? {} : { name: def.name }),
    ...(def.macros === undefined ? {} : { macros: def.macros }),
    ...(def.headerLeadingSpace === undefined ? {} : { headerLeadingSpace: def.headerLeadingSpace }),
    ...(def.connect === undefined ? {} : { connect: def.connect }),
    ...(def.helo === undefined ? {} : { helo: def.helo }),
    ...(def.data === undefined ? {} : { data: def.data }),
    async envfrom(ctx, sender, args) {
      await drop(ctx.id); // a new MAIL starts a new message
      current(ctx.id);
      return def.envfrom?.(ctx, sender, args);
    },
    async envrcpt(ctx, recipient, args) {
      const d = await def.envrcpt?.(ctx, recipient, args);
      const kind = decisionKind(d);
      if (kind === 'reject' || kind === 'tempfail') current(ctx.id).refused.add(recipient);
      return d;
    },
    header(ctx, name, value) {
      current(ctx.id).headers.push([name, value]);
    },
    body(ctx, chunk) {
      return current(ctx.id).body.append(chunk);
    },
    async eom(ctx) {
      const c = current(ctx.id);
      open.delete(ctx.id);
      try {
        const env = ctx.envelope;
        const trx = new MessageTransaction({
          connection: ctx.connection,
          helo: ctx.helo,
          macro: (name) => ctx.macro(name),
          sender: env?.sender ?? '',
          senderArgs: env?.senderArgs ?? [],
          recipients: (env?.recipients ?? []).map((r) => r.address).filter((a) => !c.refused.has(a)),
          headers: c.headers,
          body: c.body,
        });
        const decision = await def.message(trx, ctx);
        const kind = decisionKind(decision);
        if (kind === 'continue' || kind === 'accept') await trx.applyTo(ctx);
        return decision;
      } finally {
        await c.body.dispose();
      }
    },
    async abort(ctx) {
      await drop(ctx.id);
      await def.abort?.(ctx);
    },
    async close(ctx) {
      await drop(ctx.id);
      await def.close?.(ctx);
    },
  };
  return filter;
}
