/**
 * Type tests of the public filter API, compiled with the rest of the suite (`tsc`): every line marked
 * `@ts-expect-error` must fail to compile, and the build fails if one compiles (an unused directive is an
 * error). The other lines must compile.
 */
import { Decision, type CallbackResult, type EnvrcptCallback, type Filter } from '../../src/index.js';

// Compiles: a reply on reject and tempfail, bare kinds, kinds as objects without a reply.
export const ok: Decision[] = [
  'accept',
  { kind: 'reject', reply: { code: 550, text: 'no' } },
  { kind: 'tempfail', reply: { code: 451 } },
  { kind: 'discard' },
  Decision.shutdown(),
];

// @ts-expect-error a reply only goes with reject or tempfail (the MTA could not send it with accept)
export const acceptWithReply: Decision = { kind: 'accept', reply: { code: 250 } };

// @ts-expect-error not a decision
export const bogus: Decision = 'maybe';

// An async callback typed with the documented result type compiles, and so does a named callback type.
export const asyncFilter: Filter<{ n: number }, { sender: string }> = {
  async envfrom(ctx, sender): Promise<CallbackResult> {
    ctx.messagePriv = { sender };
    return Decision.continue;
  },
  async eom(ctx): Promise<CallbackResult> {
    ctx.addHeader('X-Sender', ctx.messagePriv?.sender ?? '');
    return undefined;
  },
};
export const onRcpt: EnvrcptCallback = (_ctx, recipient) =>
  recipient === '<x>' ? Decision.reject({ code: 550 }) : undefined;

// skip is a body decision only: Sendmail wedges on SKIP anywhere else.
export const skipper: Filter = {
  body: () => Decision.skip,
  // @ts-expect-error skip is not a header decision
  header: () => Decision.skip,
};
// @ts-expect-error skip is not a Decision (it is a BodyDecision)
export const skipDecision: Decision = 'skip';

// A Filter<Priv> is a Filter (what createMilterServer takes).
export const widened: Filter = asyncFilter;

export const wrongPriv: Filter<{ n: number }> = {
  connect(ctx) {
    // @ts-expect-error priv is { n: number } | undefined
    ctx.priv = { m: 1 };
  },
  close(ctx) {
    // @ts-expect-error close may come before connect: priv may be undefined
    const n: number = ctx.priv.n;
    void n;
  },
};

export const noModsOutsideEom: Filter = {
  header(ctx) {
    // @ts-expect-error modifications exist only on the EOM context
    ctx.addHeader('X', 'y');
  },
};
