/**
 * A randomized MTA with a model of the protocol's reply rules (milter-protocol.md §7), for the "no reply
 * twice or out of turn" fuzz: it plays protocol-plausible conversations (random stage order within the
 * rules, random aborts, QUIT_NC, unknown commands), reacts to each reply the way Postfix does, and checks
 * that every command that owes a reply gets exactly one decision (EOM: modifications and progress first),
 * and that nothing else is written. A filter with random, partly asynchronous decisions drives it.
 */
import assert from 'node:assert/strict';
import {
  Decision,
  type BodyResult,
  type CallbackResult,
  type MaybePromise,
  type EomContext,
  type Filter,
  type NoReplyStage,
} from '../../src/filter.js';
import { SMFI_CURR_ACTS, SMFI_CURR_PROT, STAGE_BITS, type StageName } from '../../src/protocol/constants.js';
import type { MilterCommand, MilterResponse } from '../../src/protocol/types.js';
import { isDecision } from './raw-mta.js';

/** How the model reaches the filter: a session in memory or a server over a socket. */
export interface Transport {
  /**
   * Send `cmd`. When `owed`, resolve with every response up to and including the first decision;
   * otherwise resolve with what was written for it (a session knows; a socket returns [] and the final
   * count in `quit` catches strays).
   */
  exchange(cmd: MilterCommand, owed: boolean): Promise<MilterResponse[]>;
  /** Send SMFIC_QUIT, wait for the end of the connection and check that nothing unread was written. */
  quit(): Promise<void>;
}

/** Stages an MTA may be told not to wait for (all NR_* bits): the protocol's own table. */
export const NO_REPLY_STAGES = Object.keys(STAGE_BITS) as readonly NoReplyStage[];

const STAGE_OF: Partial<Record<MilterCommand['kind'], StageName>> = {
  connect: 'connect',
  helo: 'helo',
  mail: 'envfrom',
  rcpt: 'envrcpt',
  data: 'data',
  header: 'header',
  eoh: 'eoh',
  body: 'body',
  unknown: 'unknown',
};

/** What one conversation did, for the test's sanity checks. */
export interface ModelStats {
  commands: number;
  replies: number;
  unreplied: number;
  eoms: number;
  aborts: number;
  quitNewConnections: number;
}

/**
 * Play one random connection over `t`, offering `offer` as SMFIP_* bits, and check every exchange.
 * Rejects with an AssertionError naming the command whose answer broke the rules.
 */
export async function playRandomConnection(
  rand: () => number,
  t: Transport,
  offer: number,
): Promise<ModelStats> {
  const stats: ModelStats = {
    commands: 0,
    replies: 0,
    unreplied: 0,
    eoms: 0,
    aborts: 0,
    quitNewConnections: 0,
  };
  const trail: string[] = [];
  const chance = (p: number): boolean => rand() < p;

  const optneg = await t.exchange(
    { kind: 'optneg', version: 6, actions: SMFI_CURR_ACTS, protocol: offer },
    true,
  );
  assert.equal(optneg.length, 1, 'one OPTNEG reply');
  const reply = optneg[0];
  assert.equal(reply?.kind, 'optneg', 'OPTNEG answered with OPTNEG');
  const protocol = reply.kind === 'optneg' ? reply.protocol : 0;

  /** Send one command as an MTA would: not at all for NO bits; returns its decision or 'none'. */
  const send = async (cmd: MilterCommand): Promise<MilterResponse['kind'] | 'none'> => {
    const stage = STAGE_OF[cmd.kind];
    if (stage !== undefined && (protocol & STAGE_BITS[stage].no) !== 0) return 'none';
    const owed = cmd.kind === 'eom' || (stage !== undefined && (protocol & STAGE_BITS[stage].nr) === 0);
    trail.push(cmd.kind);
    stats.commands++;
    const what = `${cmd.kind} after ${trail.slice(-12, -1).join(' ')}`;
    const out = await t.exchange(cmd, owed);
    if (!owed) {
      stats.unreplied++;
      assert.deepEqual(out, [], `${what}: nothing may be written for a command without reply`);
      return 'none';
    }
    stats.replies++;
    const last = out.at(-1);
    assert.ok(last !== undefined && isDecision(last), `${what}: exactly one decision, last`);
    assert.equal(out.filter(isDecision).length, 1, `${what}: exactly one decision`);
    for (const r of out.slice(0, -1)) {
      assert.ok(
        cmd.kind === 'eom' && r.kind !== 'optneg',
        `${what}: ${r.kind} written before the decision of a command that is not EOM`,
      );
    }
    if (cmd.kind !== 'body') assert.notEqual(last.kind, 'skip', `${what}: SKIP only answers BODY`);
    return last.kind;
  };
  /** Commands without any reply (MACRO, ABORT, QUIT_NC): nothing may be written. */
  const silent = async (cmd: MilterCommand): Promise<void> => {
    trail.push(cmd.kind);
    stats.commands++;
    stats.unreplied++;
    const out = await t.exchange(cmd, false);
    assert.deepEqual(out, [], `${cmd.kind} after ${trail.slice(-12, -1).join(' ')}: no reply`);
  };
  const macro = (stage: string): Promise<void> =>
    chance(0.5) ? silent({ kind: 'macro', stage, macros: [['i', 'Q1']] }) : Promise.resolve();
  const goesOn = (kind: string): boolean => kind === 'continue' || kind === 'none';
  const abort = async (): Promise<void> => {
    stats.aborts++;
    await silent({ kind: 'abort' });
  };

  const sessions = 1 + Math.floor(rand() * 3);
  for (let s = 0; s < sessions; s++) {
    if (s > 0) {
      stats.quitNewConnections++;
      await silent({ kind: 'quitNewConnection' });
    }
    await macro('C');
    if (
      !goesOn(
        await send({
          kind: 'connect',
          hostname: 'c.example',
          family: 'inet',
          port: 25,
          address: '192.0.2.1',
        }),
      )
    )
      continue;
    if (chance(0.8)) {
      await macro('H');
      if (!goesOn(await send({ kind: 'helo', hostname: 'c.example' }))) continue;
    }
    const messages = Math.floor(rand() * 4);
    for (let m = 0; m < messages; m++) {
      if (chance(0.15)) await send({ kind: 'unknown', line: 'XFOO' });
      await playMessage();
      // Postfix sends ABORT after every transaction, even a finished one.
      if (chance(0.7)) await abort();
    }
  }
  await t.quit();
  return stats;

  async function playMessage(): Promise<void> {
    await macro('M');
    if (!goesOn(await send({ kind: 'mail', sender: '<a@example.org>', args: [] }))) return;
    let accepted = 0;
    const rcpts = 1 + Math.floor(rand() * 3);
    for (let r = 0; r < rcpts; r++) {
      await macro('R');
      const kind = await send({ kind: 'rcpt', recipient: `<r${r}@example.net>`, args: [] });
      if (goesOn(kind)) accepted++;
      else if (kind === 'accept' || kind === 'discard') return;
      if (chance(0.1)) await send({ kind: 'unknown', line: 'XBAR' });
    }
    if (accepted === 0 || chance(0.1)) return abort();
    if (!goesOn(await send({ kind: 'data' }))) return;
    const headers = Math.floor(rand() * 4);
    for (let h = 0; h < headers; h++) {
      if (!goesOn(await send({ kind: 'header', name: 'X-H', value: String(h) }))) return;
      if (chance(0.05)) return abort();
    }
    await macro('N');
    if (!goesOn(await send({ kind: 'eoh' }))) return;
    const chunks = Math.floor(rand() * 4);
    for (let c = 0; c < chunks; c++) {
      const kind = await send({ kind: 'body', chunk: Buffer.from(`line ${c}\r\n`) });
      if (kind === 'skip') break;
      if (!goesOn(kind)) return;
      if (chance(0.05)) return abort();
    }
    await macro('E');
    stats.eoms++;
    // libmilter lets EOM carry the last body chunk (Sendmail's smfi_ semantics; one decision all the same).
    await send({ kind: 'eom', chunk: chance(0.25) ? Buffer.from('tail\r\n') : Buffer.alloc(0) });
  }
}

/** A random SMFIP_* offer: everything, minus a random subset of NR bits and maybe SKIP. */
export function randomOffer(rand: () => number): number {
  let offer = SMFI_CURR_PROT;
  for (const stage of NO_REPLY_STAGES) if (rand() < 0.4) offer &= ~STAGE_BITS[stage].nr;
  if (rand() < 0.3) offer &= ~0x400; // SMFIP_SKIP
  return offer;
}

/** A random subset of the no-reply stages, for a filter's `noReply`. */
export function randomNoReply(rand: () => number): NoReplyStage[] {
  return NO_REPLY_STAGES.filter(() => rand() < 0.3);
}

/**
 * A filter that decides at random: mostly continue, sometimes reject/tempfail/accept/discard/a custom
 * reply/skip, sometimes throwing; a share of the answers come asynchronously (after setImmediate). At EOM
 * it may add headers and send progress before deciding. UNKNOWN only continues, rejects or tempfails.
 */
export function randomDecisionFilter(
  rand: () => number,
  noReply: NoReplyStage[],
  asyncShare: number,
): Filter {
  const later = <T>(v: T): T | Promise<T> =>
    rand() < asyncShare ? new Promise((resolve) => setImmediate(() => resolve(v))) : v;
  const decide = (stage: string): MaybePromise<BodyResult> => {
    const k = rand();
    if (k < 0.02) throw new Error('filter bug');
    if (k < 0.8) return later(undefined);
    const options =
      stage === 'unknown'
        ? [Decision.reject(), Decision.tempfail()]
        : [
            Decision.reject(),
            Decision.tempfail(),
            Decision.accept,
            Decision.discard,
            Decision.reject({ code: 550, xcode: '5.7.1', text: 'no' }),
            ...(stage === 'body' ? [Decision.skip, Decision.skip] : []),
          ];
    return later(options[Math.floor(rand() * options.length)]);
  };
  const eom = async (ctx: EomContext<unknown>): Promise<Decision | void | undefined> => {
    const steps = Math.floor(rand() * 4);
    for (let i = 0; i < steps; i++) {
      if (rand() < 0.5) ctx.addHeader('X-Model', String(i));
      else ctx.progress();
      if (rand() < asyncShare) await new Promise((resolve) => setImmediate(resolve));
    }
    return stageDecision('eom');
  };
  // Only 'body' draws a skip: every other stage's result is a CallbackResult.
  const stageDecision = (stage: string): MaybePromise<CallbackResult> =>
    decide(stage) as MaybePromise<CallbackResult>;
  return {
    noReply,
    connect: () => stageDecision('connect'),
    helo: () => stageDecision('helo'),
    envfrom: () => stageDecision('envfrom'),
    envrcpt: () => stageDecision('envrcpt'),
    data: () => stageDecision('data'),
    unknown: () => stageDecision('unknown'),
    header: () => stageDecision('header'),
    eoh: () => stageDecision('eoh'),
    body: () => decide('body'),
    eom: (ctx) => (rand() < 0.5 ? eom(ctx) : stageDecision('eom')),
    abort: () => (rand() < asyncShare ? new Promise((resolve) => setImmediate(resolve)) : undefined),
    close: () => undefined,
  };
}
