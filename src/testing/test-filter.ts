/**
 * `testFilter`: run a filter in-process through a real session (no socket) against a scripted MTA and get
 * a typed transcript back. The session, its negotiation, state machine, decision rules and EOM assembly
 * are the production ones; only the socket and the codec are left out.
 */
import type { ClientReply, MessageResult, MessageStage } from '../client/index.js';
import { emptyMessageResult } from '../client/transaction.js';
import type { ConnectionInfo, Filter } from '../filter.js';
import { MILTER_CHUNK_SIZE } from '../protocol/constants.js';
import { wireBytes } from '../protocol/wire-string.js';
import { Conversation, isFinal, isShutdown } from './conversation.js';
import type { CallbackRecord, TestMessage, TestScript, Transcript } from './types.js';

export { verdictOf } from './conversation.js';

const DEFAULT_CONNECT: ConnectionInfo = Object.freeze({
  hostname: 'client.example',
  family: 'inet',
  port: 40000,
  address: '192.0.2.1',
});

/** Body packets of at most 65535 bytes; none for an empty body. */
function bodyChunks(body: Buffer | string | undefined): Buffer[] {
  const buf = body === undefined ? Buffer.alloc(0) : typeof body === 'string' ? wireBytes(body) : body;
  const out: Buffer[] = [];
  for (let off = 0; off < buf.length; off += MILTER_CHUNK_SIZE)
    out.push(buf.subarray(off, off + MILTER_CHUNK_SIZE));
  return out;
}

/** One message, with the MTA's rules for which reply ends it (see TestScript). */
async function playScriptedMessage<P>(
  c: Conversation<P>,
  m: TestMessage,
  index: number,
): Promise<MessageResult> {
  const result = emptyMessageResult();
  const stop = (stage: MessageStage, reply: ClientReply): MessageResult => {
    result.stoppedAt = stage;
    result.reply = reply;
    return result;
  };
  const abortHere = async (point: TestMessage['abortAfter'], stage: MessageStage, reply: ClientReply) => {
    if (m.abortAfter !== point) return undefined;
    await c.send({ kind: 'abort' });
    result.aborted = true;
    return stop(stage, reply);
  };

  await c.macros('envfrom', m);
  const mail = await c.ask(
    'mail',
    'mail',
    { kind: 'mail', sender: m.sender, args: m.senderArgs ?? [] },
    index,
  );
  result.mail = mail;
  if (isFinal(mail)) return stop('mail', mail);
  const cut = await abortHere('mail', 'mail', mail);
  if (cut) return cut;

  let lastRejection: ClientReply | undefined;
  let lastReply: ClientReply = mail;
  for (const rcpt of m.recipients) {
    const address = typeof rcpt === 'string' ? rcpt : rcpt.address;
    const args = typeof rcpt === 'string' ? [] : (rcpt.args ?? []);
    await c.macros('envrcpt', m);
    const reply = await c.ask('rcpt', 'rcpt', { kind: 'rcpt', recipient: address, args }, index);
    result.rcpt.push(reply);
    lastReply = reply;
    if (reply.kind === 'reject' || reply.kind === 'tempfail' || reply.kind === 'replyCode') {
      lastRejection = reply;
      if (isShutdown(reply)) return stop('rcpt', reply);
    } else if (isFinal(reply)) return stop('rcpt', reply);
    else result.acceptedRecipients.push(address);
  }
  // No valid recipient: the MTA refuses DATA itself; the filter hears nothing more of this message.
  if (result.acceptedRecipients.length === 0) return stop('rcpt', lastRejection ?? { kind: 'reject' });
  const cutRcpt = await abortHere('rcpt', 'rcpt', lastReply);
  if (cutRcpt) return cutRcpt;

  await c.macros('data', m);
  const data = await c.ask('data', 'data', { kind: 'data' }, index);
  result.data = data;
  if (isFinal(data)) return stop('data', data);
  const cutData = await abortHere('data', 'data', data);
  if (cutData) return cutData;

  for (const [name, value] of m.headers ?? []) {
    const reply = await c.ask('header', 'header', { kind: 'header', name, value }, index);
    result.headers.push(reply);
    if (isFinal(reply)) return stop('header', reply);
  }
  const cutHeader = await abortHere('header', 'header', result.headers.at(-1) ?? data);
  if (cutHeader) return cutHeader;

  await c.macros('eoh', m);
  const eoh = await c.ask('eoh', 'eoh', { kind: 'eoh' }, index);
  result.eoh = eoh;
  if (isFinal(eoh)) return stop('eoh', eoh);
  const cutEoh = await abortHere('eoh', 'eoh', eoh);
  if (cutEoh) return cutEoh;

  for (const chunk of bodyChunks(m.body)) {
    const reply = await c.ask('body', 'body', { kind: 'body', chunk }, index);
    result.body = reply;
    if (reply.kind === 'skip') break;
    if (isFinal(reply)) return stop('body', reply);
  }
  const cutBody = await abortHere('body', 'body', result.body ?? eoh);
  if (cutBody) return cutBody;

  await c.macros('eom', m);
  result.eom = await c.eom(index);
  return stop('eom', result.eom.reply);
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
  const unknown: ClientReply[] = [];
  const transcript = (
    end: Transcript<P>['end'],
    connect?: ClientReply,
    helo?: ClientReply,
  ): Transcript<P> => {
    const t: Transcript<P> = {
      negotiated: c.negotiated,
      unknown,
      messages,
      decisions: c.decisions,
      steps: c.steps,
      callbacks,
      end,
    };
    if (connect !== undefined) t.connect = connect;
    if (helo !== undefined) t.helo = helo;
    return t;
  };
  if (!(await c.optneg())) return transcript('refused');

  let connect: ClientReply | undefined;
  let helo: ClientReply | undefined;
  const info = script.connect === undefined ? DEFAULT_CONNECT : script.connect;
  if (info !== null) {
    await c.macros('connect', undefined);
    connect = await c.ask('connect', 'connect', { kind: 'connect', ...info }, undefined);
    if (isFinal(connect)) c.done = true;
    const hostname = script.helo === undefined ? 'client.example' : script.helo;
    if (!c.done && hostname !== null) {
      await c.macros('helo', undefined);
      helo = await c.ask('helo', 'helo', { kind: 'helo', hostname }, undefined);
      if (isFinal(helo)) c.done = true;
    }
    for (const line of script.unknown ?? []) {
      if (c.done) break;
      const reply = await c.ask('unknown', 'unknown', { kind: 'unknown', line }, undefined);
      unknown.push(reply);
      if (isShutdown(reply)) c.done = true;
    }
    for (const [i, m] of (script.messages ?? []).entries()) {
      if (c.done) break;
      const result = await playScriptedMessage(c, m, i);
      messages.push(result);
      if (script.abortAfterMessage === true && !result.aborted) {
        await c.send({ kind: 'abort' });
        result.aborted = true;
      }
    }
  }

  if (script.end === 'eof') {
    await c.endWithEof();
    return transcript('eof', connect, helo);
  }
  await c.send({ kind: 'quit' });
  return transcript('quit', connect, helo);
}
