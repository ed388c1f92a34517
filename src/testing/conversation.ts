/**
 * The scripted MTA's side of one in-process conversation with a session, as an {@link MtaSide} for the
 * client's conversation engine: send a command, collect what the session writes (out-of-band progress
 * first), and read replies the way an MTA does (NO bits: not sent; NR bits: no reply awaited; `y`: reject
 * or tempfail by its code). Every reply read is also logged as a decision.
 */
import { pino } from 'pino';
import type { ClientReply, EomResult } from '../client/index.js';
import { STAGE, type Stage } from '../client/negotiate.js';
import { isFinal, isShutdown, type MtaSide } from '../client/transaction.js';
import { MilterConnectionError, MilterProtocolError } from '../errors.js';
import type { ConnectionInfo, Filter } from '../filter.js';
import {
  MACRO_PACKET_LETTERS,
  MILTER_CHUNK_SIZE,
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
  SMFI_PROT_VERSION,
  type MacroPacketStage,
} from '../protocol/constants.js';
import type {
  MilterCommand,
  MilterResponse,
  ModificationResponse,
  OptnegResponse,
} from '../protocol/types.js';
import { createSession } from '../session/session.js';
import { inlineBody } from '../session/body-store.js';
import type { HandleResult, Session } from '../session/types.js';
import { recordCallbacks } from './recorder.js';
import type {
  CallbackRecord,
  DecisionPoint,
  StageDecision,
  TestScript,
  TranscriptStep,
  Verdict,
} from './types.js';

/** The verdict an MTA reads from a reply (`y`: 4xx tempfail, 5xx reject). */
export function verdictOf(reply: ClientReply): Verdict {
  if (reply.kind !== 'replyCode') return reply.kind;
  return reply.text.startsWith('4') ? 'tempfail' : 'reject';
}

function unexpected(what: string): MilterProtocolError {
  return new MilterProtocolError('ERR_MILTER_UNEXPECTED_RESPONSE', what);
}

function toReply(r: MilterResponse, stage: string): ClientReply {
  switch (r.kind) {
    case 'continue':
    case 'accept':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'skip':
    case 'shutdown':
    case 'connFail':
      return { kind: r.kind };
    case 'replyCode':
      return { kind: 'replyCode', text: r.text };
    default:
      throw unexpected(`the session answered ${stage} with ${r.kind}, not a decision`);
  }
}

function copyResponse(r: MilterResponse): MilterResponse {
  return r.kind === 'replaceBody' ? { kind: 'replaceBody', chunk: Buffer.from(r.chunk) } : r;
}

const SKIPPED: ClientReply = Object.freeze({ kind: 'skipped' });

/** One scripted conversation in progress. */
export class Conversation<P> implements MtaSide {
  readonly steps: TranscriptStep[] = [];
  readonly decisions: StageDecision[] = [];
  private readonly outOfBand: MilterResponse[] = [];
  private readonly session: Session;
  negotiated: OptnegResponse | undefined;
  /** The MTA has stopped playing (421, or a connection-level decision). */
  done = false;
  /** Index in the script's `messages` of the message being played; undefined outside one. */
  message: number | undefined;
  /** The session is in-process: nothing closes under the MTA. */
  readonly closed = false;

  constructor(
    filter: Filter<P>,
    readonly script: TestScript,
    readonly callbacks: Array<CallbackRecord<P>>,
  ) {
    const s = script.session ?? {};
    this.session = createSession(
      {
        id: s.id ?? 'test-1',
        filter: recordCallbacks(filter, callbacks) as Filter<unknown>,
        logger: s.logger ?? pino({ level: 'silent' }),
        callbackTimeoutMs: s.callbackTimeoutMs ?? 0,
        ...(s.failureDecision !== undefined ? { failureDecision: s.failureDecision } : {}),
        ...(s.maxDataSize !== undefined ? { maxDataSize: s.maxDataSize } : {}),
      },
      { sendNow: (r) => void this.outOfBand.push(copyResponse(r)) },
    );
  }

  /** Send one command; returns everything written for it and whether the session ended. */
  async send(
    command: MilterCommand,
  ): Promise<{ responses: MilterResponse[]; end: 'quit' | 'fatal' | undefined }> {
    let result: HandleResult;
    try {
      result = await this.session.handle(command);
    } catch (err) {
      await this.session.terminate('protocol');
      throw err;
    }
    const own = (await inlineBody(result)).responses.map(copyResponse);
    const responses = [...this.outOfBand.splice(0), ...own];
    this.steps.push({ command, responses });
    return { responses, end: result.end };
  }

  /** The MTA vanished: the server would call terminate('eof'). */
  async endWithEof(): Promise<void> {
    await this.session.terminate('eof');
  }

  async optneg(): Promise<boolean> {
    const offer = this.script.offer ?? {};
    const command: MilterCommand = {
      kind: 'optneg',
      version: offer.version ?? SMFI_PROT_VERSION,
      actions: offer.actions ?? SMFI_CURR_ACTS,
      protocol: offer.protocol ?? SMFI_CURR_PROT,
    };
    const { responses, end } = await this.send(command);
    if (end === 'fatal') return false;
    const reply = responses[0];
    if (responses.length !== 1 || reply?.kind !== 'optneg') throw unexpected('OPTNEG was not answered');
    this.negotiated = reply;
    return true;
  }

  async macro(stage: MacroPacketStage, macros: Record<string, string>): Promise<void> {
    const pairs = Object.entries(macros);
    if (pairs.length > 0)
      await this.send({ kind: 'macro', stage: MACRO_PACKET_LETTERS[stage], macros: pairs });
  }

  connect(info: ConnectionInfo): Promise<ClientReply> {
    return this.ask('connect', { kind: 'connect', ...info });
  }
  helo(hostname: string): Promise<ClientReply> {
    return this.ask('helo', { kind: 'helo', hostname });
  }
  unknown(line: string): Promise<ClientReply> {
    return this.ask('unknown', { kind: 'unknown', line });
  }
  envfrom(sender: string, args: string[]): Promise<ClientReply> {
    return this.ask('envfrom', { kind: 'mail', sender, args });
  }
  envrcpt(recipient: string, args: string[]): Promise<ClientReply> {
    return this.ask('envrcpt', { kind: 'rcpt', recipient, args });
  }
  data(): Promise<ClientReply> {
    return this.ask('data', { kind: 'data' });
  }
  header(name: string, value: string): Promise<ClientReply> {
    return this.ask('header', { kind: 'header', name, value });
  }
  eoh(): Promise<ClientReply> {
    return this.ask('eoh', { kind: 'eoh' });
  }
  /** One decision per packet of at most 65535 bytes, up to the first skip or final reply. */
  async body(chunk: Buffer): Promise<ClientReply> {
    let reply = SKIPPED;
    for (let off = 0; off < chunk.length; off += MILTER_CHUNK_SIZE) {
      reply = await this.ask('body', { kind: 'body', chunk: chunk.subarray(off, off + MILTER_CHUNK_SIZE) });
      if (reply.kind === 'skip' || isFinal(reply)) break;
    }
    return reply;
  }
  async abort(): Promise<void> {
    await this.send({ kind: 'abort' });
  }

  /** Send a reply-expecting command unless negotiated away; read its decision like the MTA would. */
  async ask(stage: Stage & DecisionPoint, command: MilterCommand): Promise<ClientReply> {
    const neg = this.negotiated;
    let reply: ClientReply;
    if (
      neg === undefined ||
      neg.version < STAGE[stage].minVersion ||
      (neg.protocol & STAGE[stage].no) !== 0
    ) {
      reply = { kind: 'skipped' };
    } else {
      const { responses } = await this.send(command);
      if ((neg.protocol & STAGE[stage].nr) !== 0) {
        if (responses.length !== 0) throw unexpected(`the session answered ${stage} despite SMFIP_NR`);
        reply = { kind: 'noreply' };
      } else {
        const r = responses[0];
        if (r === undefined) {
          throw new MilterConnectionError(
            'ERR_MILTER_TIMEOUT',
            `the session sent no reply to ${stage}: an MTA would time out`,
          );
        }
        if (responses.length !== 1)
          throw unexpected(`the session sent ${responses.length} packets for ${stage}`);
        reply = toReply(r, stage);
      }
    }
    this.decide(stage, reply);
    return reply;
  }

  decide(stage: DecisionPoint, reply: ClientReply): void {
    const d: StageDecision = { stage, reply, verdict: verdictOf(reply) };
    if (this.message !== undefined) d.message = this.message;
    if (reply.kind === 'replyCode') d.code = Number(reply.text.slice(0, 3));
    this.decisions.push(d);
    if (isShutdown(reply)) this.done = true;
  }

  async eom(): Promise<EomResult> {
    const { responses } = await this.send({ kind: 'eom', chunk: Buffer.alloc(0) });
    const modifications: ModificationResponse[] = [];
    let progress = 0;
    const last = responses[responses.length - 1];
    if (last === undefined)
      throw new MilterConnectionError('ERR_MILTER_TIMEOUT', 'the session sent no reply to EOM');
    for (const r of responses.slice(0, -1)) {
      if (r.kind === 'progress') progress++;
      else if (isModification(r)) modifications.push(r);
      else throw unexpected(`EOM answered with ${r.kind} before its final decision`);
    }
    const reply = toReply(last, 'eom');
    this.decide('eom', reply);
    return { reply, modifications, progress };
  }
}

const MODIFICATION_KINDS: ReadonlySet<MilterResponse['kind']> = new Set<ModificationResponse['kind']>([
  'addHeader',
  'insertHeader',
  'changeHeader',
  'addRecipient',
  'addRecipientWithArgs',
  'deleteRecipient',
  'replaceBody',
  'changeFrom',
  'quarantine',
]);

function isModification(r: MilterResponse): r is ModificationResponse {
  return MODIFICATION_KINDS.has(r.kind);
}
