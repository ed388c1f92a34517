/**
 * A Filter driven by a scenario's `filter:` section, written against the public API (src/filter.ts). It
 * logs every callback of every milter connection (stage, argument, macros) so scenarios can assert what
 * the MTA sent and that `close` came exactly once per connection.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Decision,
  type BodyDecision,
  type ConnectionInfo,
  type EomContext,
  type Filter,
  type StageContext,
} from '../../../src/index.js';
import type { ShouldShutdownHook } from '../../../src/policy/index.js';
import {
  contentBytes,
  type EomSpec,
  type FilterRule,
  type FilterSpec,
  type PolicyHookSpec,
  type Stage,
} from './scenario.js';

export type LoggedCallback = Stage | 'abort' | 'close';

export interface CallRecord {
  conn: string;
  cb: LoggedCallback;
  arg: string;
  macros: Record<string, string>;
  /** What the filter answered (or `throw`/`hang`). */
  decision: string;
}

export interface ScriptedPriv {
  sender: string;
  recipients: string[];
  headers: string[];
  /** Header values exactly as received, by name in message order (for `{{header:Name}}`). */
  values: Array<[name: string, value: string]>;
}

/** Upper bound of a `hang` rule: it is released by `releaseHangs()` at the latest after this. */
const HANG_LIMIT_MS = 60_000;

/**
 * An EOM action's text with `{{header:Name}}` (the first value received for Name), `{{sender}}` (the
 * envelope sender) and `{{macro:name}}` replaced by what the filter received, unchanged: the scenarios
 * that echo values back (byte transparency) use them.
 */
function expand(text: string, ctx: EomContext<ScriptedPriv>): string {
  return text.replace(/\{\{(header:[^}]+|sender|macro:[^}]+)\}\}/g, (_, ref: string) => {
    if (ref === 'sender') return ctx.priv?.sender ?? '';
    if (ref.startsWith('macro:')) return ctx.macro(ref.slice(6)) ?? '';
    const name = ref.slice(7).toLowerCase();
    return ctx.priv?.values.find(([n]) => n.toLowerCase() === name)?.[1] ?? '';
  });
}

function summary(priv: ScriptedPriv | undefined): string {
  if (!priv) return '';
  return `${priv.sender} ${priv.recipients.join(' ')}\n${priv.headers.join('\n')}`;
}

/** A test-only should-shutdown hook of a scenario's `policy.hooks`: it throws, or never asks for a shutdown. */
export function scriptedHook(spec: PolicyHookSpec): ShouldShutdownHook {
  return () => {
    if (spec.throws) throw new Error(`scripted hook ${spec.name}: thrown as the scenario asks`);
    return false;
  };
}

export class ScriptedFilter {
  spec: FilterSpec = {};
  readonly calls: CallRecord[] = [];
  /** Errors raised by EOM actions themselves (e.g. a rejected argument): reported by the runner. */
  readonly actionErrors: string[] = [];
  private releasers = new Set<() => void>();

  /** Use a new scenario's behaviour and forget the log. */
  reset(spec: FilterSpec | undefined): void {
    this.spec = spec ?? {};
    this.calls.length = 0;
    this.actionErrors.length = 0;
  }

  /** Let every `hang` callback finish now (with continue). */
  releaseHangs(): void {
    for (const release of this.releasers) release();
    this.releasers.clear();
  }

  /** Connection ids seen, in first-seen order. */
  connections(): string[] {
    return [...new Set(this.calls.map((c) => c.conn))];
  }

  closeCount(conn: string): number {
    return this.calls.filter((c) => c.conn === conn && c.cb === 'close').length;
  }

  /** Log a callback of a filter other than the scripted one (the whole-message filter's `close`). */
  note(ctx: { id: string; macros(): Record<string, string> }, cb: LoggedCallback, arg: string): void {
    this.log(ctx, cb, arg);
  }

  private log(
    ctx: { id: string; macros(): Record<string, string> },
    cb: LoggedCallback,
    arg: string,
  ): CallRecord {
    const record: CallRecord = { conn: ctx.id, cb, arg, macros: ctx.macros(), decision: 'continue' };
    this.calls.push(record);
    return record;
  }

  private rule(stage: Stage, subject: string): FilterRule | undefined {
    const lower = subject.toLowerCase();
    return (this.spec.rules ?? []).find(
      (r) => r.at === stage && (r.match === undefined || lower.includes(r.match.toLowerCase())),
    );
  }

  /** The scenario's decision at a stage other than body, where `skip` is not a legal decision. */
  private async decide(
    ctx: StageContext<ScriptedPriv>,
    stage: Stage,
    subject: string,
    record: CallRecord,
  ): Promise<Decision | undefined> {
    const d = await this.bodyDecide(ctx, stage, subject, record);
    if (d === 'skip' || (typeof d === 'object' && d.kind === 'skip')) {
      throw new Error(`scenario: skip is only a body decision, not ${stage}`);
    }
    return d;
  }

  private async bodyDecide(
    ctx: StageContext<ScriptedPriv>,
    stage: Stage,
    subject: string,
    record: CallRecord,
  ): Promise<BodyDecision | undefined> {
    const rule = this.rule(stage, subject);
    if (!rule) return undefined;
    record.decision = rule.decision;
    switch (rule.decision) {
      case 'throw':
        throw new Error(`scripted filter: thrown at ${stage} as the scenario asks`);
      case 'hang':
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, HANG_LIMIT_MS);
          this.releasers.add(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        return undefined;
      case 'shutdown':
        return Decision.shutdown(rule.text);
      case 'reject':
      case 'tempfail': {
        if (!rule.reply) return rule.decision;
        if (rule.viaSetReply) {
          const lines = rule.reply.text === undefined ? [] : [rule.reply.text].flat();
          ctx.setReply(rule.reply.code, rule.reply.xcode, ...lines);
          return rule.decision;
        }
        const reply = { code: rule.reply.code, xcode: rule.reply.xcode, text: rule.reply.text };
        return rule.decision === 'reject' ? Decision.reject(reply) : Decision.tempfail(reply);
      }
      default:
        return rule.decision;
    }
  }

  private eomSpecs(priv: ScriptedPriv | undefined): EomSpec[] {
    const text = summary(priv).toLowerCase();
    return (this.spec.eom ?? []).filter((e) => e.when === undefined || text.includes(e.when.toLowerCase()));
  }

  private async applyEom(ctx: EomContext<ScriptedPriv>, spec: EomSpec): Promise<void> {
    if (spec.delayMs !== undefined && spec.delayMs > 0) {
      const every = spec.progressEveryMs;
      const deadline = Date.now() + spec.delayMs;
      const steps = every ? Math.ceil(spec.delayMs / every) : 1;
      for (let i = 0; i < steps && Date.now() < deadline; i++) {
        await sleep(Math.min(every ?? spec.delayMs, Math.max(0, deadline - Date.now())));
        if (every) ctx.progress();
      }
    }
    const x = (text: string): string => expand(text, ctx);
    for (const action of spec.actions ?? []) {
      try {
        if ('addHeader' in action) ctx.addHeader(action.addHeader[0], x(action.addHeader[1]));
        else if ('insertHeader' in action) {
          const [index, name, value] = action.insertHeader;
          ctx.insertHeader(index, name, x(value));
        } else if ('changeHeader' in action) {
          const [name, index, value] = action.changeHeader;
          ctx.changeHeader(name, index, x(value));
        } else if ('deleteHeader' in action) ctx.deleteHeader(...action.deleteHeader);
        else if ('addRecipient' in action) {
          const [rcpt, args] =
            typeof action.addRecipient === 'string' ? [action.addRecipient] : action.addRecipient;
          ctx.addRecipient(x(rcpt), args === undefined ? undefined : x(args));
        } else if ('deleteRecipient' in action) ctx.deleteRecipient(action.deleteRecipient);
        else if ('changeFrom' in action) {
          const [from, args] =
            typeof action.changeFrom === 'string' ? [action.changeFrom] : action.changeFrom;
          ctx.changeFrom(x(from), args === undefined ? undefined : x(args));
        } else if ('replaceBody' in action) await ctx.replaceBody(contentBytes(action.replaceBody));
        else if ('quarantine' in action) ctx.quarantine(action.quarantine);
      } catch (error) {
        this.actionErrors.push(
          `${JSON.stringify(action)}: ${error instanceof Error ? error.message : String(error)}`,
        );
        throw error;
      }
    }
  }

  /** The Filter object to give createMilterServer. */
  filter(): Filter<ScriptedPriv> {
    const priv = (ctx: StageContext<ScriptedPriv>): ScriptedPriv => {
      ctx.priv ??= { sender: '', recipients: [], headers: [], values: [] };
      return ctx.priv;
    };
    const simple =
      (name: Stage) =>
      async (ctx: StageContext<ScriptedPriv>, arg: string): Promise<Decision | undefined> =>
        this.decide(ctx, name, arg, this.log(ctx, name, arg));
    return {
      name: 'scripted-e2e',
      // Asked for in the OPTNEG reply (SMFIF_SETSYMLIST): the macros the scenarios check.
      macros: {
        connect: ['j', '_', '{daemon_name}', '{client_addr}', '{client_name}', '{client_port}'],
        helo: ['{tls_version}', '{cipher}'],
        envfrom: ['i', '{mail_addr}', '{mail_host}', '{mail_mailer}', '{auth_type}', '{auth_authen}'],
        envrcpt: ['i', '{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}'],
        eom: ['i', '{msg_id}'],
      },
      connect: async (ctx, info: ConnectionInfo) => {
        priv(ctx);
        const arg = `${info.family} ${info.address} ${info.port} ${info.hostname}`;
        return this.decide(ctx, 'connect', arg, this.log(ctx, 'connect', arg));
      },
      helo: simple('helo'),
      envfrom: async (ctx, sender, args) => {
        const p = priv(ctx);
        p.sender = sender;
        p.recipients = [];
        p.headers = [];
        p.values = [];
        const arg = [sender, ...args].join(' ');
        return this.decide(ctx, 'envfrom', arg, this.log(ctx, 'envfrom', arg));
      },
      envrcpt: async (ctx, rcpt, args) => {
        priv(ctx).recipients.push(rcpt);
        const arg = [rcpt, ...args].join(' ');
        return this.decide(ctx, 'envrcpt', arg, this.log(ctx, 'envrcpt', arg));
      },
      data: async (ctx) => this.decide(ctx, 'data', summary(ctx.priv), this.log(ctx, 'data', '')),
      unknown: simple('unknown'),
      header: async (ctx, name, value) => {
        const arg = `${name}: ${value}`;
        priv(ctx).headers.push(arg);
        priv(ctx).values.push([name, value]);
        return this.decide(ctx, 'header', arg, this.log(ctx, 'header', arg));
      },
      eoh: async (ctx) => this.decide(ctx, 'eoh', summary(ctx.priv), this.log(ctx, 'eoh', '')),
      body: async (ctx, chunk) => {
        const arg = chunk.toString('latin1');
        const record = this.log(ctx, 'body', `${chunk.length} bytes`);
        return this.bodyDecide(ctx, 'body', arg, record);
      },
      eom: async (ctx) => {
        const text = summary(ctx.priv);
        const record = this.log(ctx, 'eom', text);
        const decided = await this.decide(ctx, 'eom', text, record);
        if (record.decision !== 'continue') return decided;
        for (const spec of this.eomSpecs(ctx.priv)) await this.applyEom(ctx, spec);
        return undefined;
      },
      abort: (ctx) => {
        this.log(ctx, 'abort', '');
        if (ctx.priv) {
          ctx.priv.headers = [];
          ctx.priv.values = [];
        }
      },
      close: (ctx) => {
        this.log(ctx, 'close', '');
      },
    };
  }
}
