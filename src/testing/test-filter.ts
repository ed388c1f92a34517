/**
 * `testFilter`: run a filter in-process through a real session (no socket) against a scripted MTA and get
 * a typed transcript back. The session, its negotiation, state machine, decision rules and EOM assembly
 * are the production ones; only the socket and the codec are left out. The MTA is the client's
 * conversation engine (client/transaction.ts) driving the session through a {@link Conversation}.
 */
import type { MessageResult } from '../client/index.js';
import {
  emptyMessageResult,
  playGreeting,
  playTransaction,
  type MessageScript,
  type ScriptMacroStage,
} from '../client/transaction.js';
import type { ConnectionInfo, Filter, MacroStage } from '../filter.js';
import { MACRO_STAGES } from '../protocol/constants.js';
import { Conversation } from './conversation.js';
import type { CallbackRecord, ScriptMacros, TestMessage, TestScript, Transcript } from './types.js';

export { verdictOf } from './conversation.js';

const DEFAULT_CONNECT: ConnectionInfo = Object.freeze({
  hostname: 'client.example',
  family: 'inet',
  port: 40000,
  address: '192.0.2.1',
});

/** The script's macros per stage with the message's merged over them (the message's values win). */
function mergedMacros(
  script: ScriptMacros | undefined,
  message: ScriptMacros | undefined,
): Partial<Record<ScriptMacroStage, Record<string, string>>> {
  const out: Partial<Record<ScriptMacroStage, Record<string, string>>> = {};
  for (const stage of Object.keys(MACRO_STAGES) as MacroStage[]) {
    const values = { ...script?.[stage], ...message?.[stage] };
    if (Object.keys(values).length > 0) out[stage] = values;
  }
  return out;
}

/** A {@link TestMessage} as the engine's message script. */
function messageScript(script: TestScript, m: TestMessage): MessageScript {
  const s: MessageScript = {
    macros: mergedMacros(script.macros, m.macros),
    sender: m.sender,
    recipients: m.recipients,
    headers: m.headers ?? [],
    body: m.body ?? Buffer.alloc(0),
  };
  if (m.senderArgs !== undefined) s.senderArgs = m.senderArgs;
  if (m.abortAfter !== undefined) s.abortAfter = m.abortAfter;
  return s;
}

/**
 * Run `filter` through a real session against the scripted MTA conversation `script` and return the
 * transcript: the OPTNEG reply, each step's reply, each message's result (EOM modifications included),
 * every decision in order, every command with its responses, and the callback log.
 *
 * Filter misbehaviour is not an error here: it shows in the transcript as the session's failure decision
 * (and in the callback log's `error`). Rejects with a MilterError only when the session itself breaks the
 * protocol as an MTA sees it (ERR_MILTER_UNEXPECTED_RESPONSE, or ERR_MILTER_TIMEOUT for a missing reply),
 * or with the session's MilterProtocolError.
 *
 * @example
 * const t = await testFilter(myFilter, {
 *   messages: [{ sender: '<a@example.org>', recipients: ['<b@example.net>'], body: 'hi\r\n' }],
 * });
 * assert.deepEqual(t.messages[0]?.eom?.modifications, [{ kind: 'addHeader', name: 'X-Hi', value: '1' }]);
 */
export async function testFilter<P>(filter: Filter<P>, script: TestScript = {}): Promise<Transcript<P>> {
  const callbacks: Array<CallbackRecord<P>> = [];
  const c = new Conversation(filter, script, callbacks);
  const messages: MessageResult[] = [];
  const greeting = emptyMessageResult();
  const transcript = (end: Transcript<P>['end']): Transcript<P> => {
    const t: Transcript<P> = {
      negotiated: c.negotiated,
      unknown: greeting.unknown ?? [],
      messages,
      decisions: c.decisions,
      steps: c.steps,
      callbacks,
      end,
    };
    if (greeting.connect !== undefined) t.connect = greeting.connect;
    if (greeting.helo !== undefined) t.helo = greeting.helo;
    return t;
  };
  if (!(await c.optneg())) return transcript('refused');

  const info = script.connect === undefined ? DEFAULT_CONNECT : script.connect;
  if (info !== null) {
    const hostname = script.helo === undefined ? 'client.example' : script.helo;
    const connection: Pick<MessageScript, 'macros' | 'connect' | 'helo' | 'unknown'> = {
      macros: mergedMacros(script.macros, undefined),
      connect: info,
    };
    if (hostname !== null) connection.helo = hostname;
    if (script.unknown !== undefined) connection.unknown = script.unknown;
    if ((await playGreeting(c, connection, greeting)) !== undefined) c.done = true;
    for (const [i, m] of (script.messages ?? []).entries()) {
      if (c.done) break;
      c.message = i;
      const result = await playTransaction(c, messageScript(script, m), emptyMessageResult());
      messages.push(result);
      if (script.abortAfterMessage === true && !result.aborted) {
        await c.abort();
        result.aborted = true;
      }
    }
    c.message = undefined;
  }

  if (script.end === 'eof') {
    await c.endWithEof();
    return transcript('eof');
  }
  await c.send({ kind: 'quit' });
  return transcript('quit');
}
