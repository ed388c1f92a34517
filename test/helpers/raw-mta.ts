/**
 * A bare-bones MTA over a real socket for server tests that must misbehave on purpose (garbage frames,
 * floods, silence), which the well-behaved MilterClient cannot do.
 */
import net from 'node:net';
import { decodeResponse } from '../../src/protocol/decode.js';
import { encodeCommands } from '../../src/protocol/encode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import { SMFI_CURR_ACTS, SMFI_CURR_PROT, STAGE_BITS } from '../../src/protocol/constants.js';
import type { ListenAddress } from '../../src/server/server.js';
import type { MilterCommand, MilterResponse, OptnegResponse } from '../../src/protocol/types.js';

/** A raw milter peer: send commands or bytes, await decoded responses, observe the close. */
export class RawMta {
  readonly socket: net.Socket;
  /** Resolves when the server closed the connection (or it broke). */
  readonly closed: Promise<void>;
  /** Every response received, in order. */
  readonly received: MilterResponse[] = [];
  private readonly decoder = new FrameDecoder(16 * 1024 * 1024);
  private waiters: Array<(r: MilterResponse | undefined) => void> = [];
  private cursor = 0;
  private ended = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk);
      for (let frame = this.decoder.next(); frame; frame = this.decoder.next()) {
        const response = decodeResponse({ command: frame.command, payload: Buffer.from(frame.payload) });
        this.received.push(response);
      }
      this.wake();
    });
    // Resets are expected in these tests (the server destroys misbehaving peers).
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      });
    });
  }

  /** Connect to a listen address (TCP or Unix), optionally from a given local address (TCP). */
  static connect(address: ListenAddress, localAddress?: string): Promise<RawMta> {
    return new Promise((resolve, reject) => {
      const socket =
        address.kind === 'unix'
          ? net.connect({ path: address.path as string })
          : net.connect({
              host: address.host as string,
              port: address.port as number,
              ...(localAddress === undefined ? {} : { localAddress }),
            });
      socket.once('connect', () => resolve(new RawMta(socket)));
      socket.once('error', reject);
    });
  }

  /** Encode and write commands in one write; returns socket.write()'s result. */
  send(...commands: MilterCommand[]): boolean {
    return this.socket.write(encodeCommands(commands));
  }

  /** Write raw bytes. */
  sendBytes(bytes: Buffer): boolean {
    return this.socket.write(bytes);
  }

  /** Next response not yet consumed; undefined when the connection closed first. */
  async next(): Promise<MilterResponse | undefined> {
    while (this.cursor >= this.received.length) {
      if (this.ended) return undefined;
      await new Promise<MilterResponse | undefined>((resolve) => this.waiters.push(resolve));
    }
    return this.received[this.cursor++];
  }

  /** Offer everything libmilter knows and return the filter's OPTNEG reply. */
  async negotiate(version = 6, actions = SMFI_CURR_ACTS, protocol = SMFI_CURR_PROT): Promise<OptnegResponse> {
    this.send({ kind: 'optneg', version, actions, protocol });
    const reply = await this.next();
    if (reply?.kind !== 'optneg') throw new Error(`expected an OPTNEG reply, got ${JSON.stringify(reply)}`);
    return reply;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w(undefined);
  }
}

/** A raw frame with any length field and command byte (for malformed and oversize frames). */
export function rawFrame(command: number, payload: Buffer, lengthField = payload.length + 1): Buffer {
  const buf = Buffer.alloc(5 + payload.length);
  buf.writeUInt32BE(lengthField, 0);
  buf[4] = command;
  payload.copy(buf, 5);
  return buf;
}

/** Per-command protocol bits: [SMFIP_NO*, SMFIP_NR*] (milter-protocol.md §2.5). */
const STEP_BITS = {
  connect: [STAGE_BITS.connect.no, STAGE_BITS.connect.nr],
  helo: [STAGE_BITS.helo.no, STAGE_BITS.helo.nr],
  mail: [STAGE_BITS.envfrom.no, STAGE_BITS.envfrom.nr],
  rcpt: [STAGE_BITS.envrcpt.no, STAGE_BITS.envrcpt.nr],
  data: [STAGE_BITS.data.no, STAGE_BITS.data.nr],
  header: [STAGE_BITS.header.no, STAGE_BITS.header.nr],
  eoh: [STAGE_BITS.eoh.no, STAGE_BITS.eoh.nr],
  body: [STAGE_BITS.body.no, STAGE_BITS.body.nr],
} as const;

const DECISIONS = new Set<MilterResponse['kind']>([
  'continue',
  'accept',
  'reject',
  'tempfail',
  'discard',
  'replyCode',
  'skip',
  'shutdown',
  'connFail',
]);

/** A response that answers a command (as opposed to a modification or progress). */
export function isDecision(r: MilterResponse): boolean {
  return DECISIONS.has(r.kind);
}

/**
 * Send one command the way an MTA does: not at all when its SMFIP_NO* bit was negotiated, without
 * waiting when its SMFIP_NR* bit was; otherwise return the reply.
 */
export async function step(
  mta: RawMta,
  protocol: number,
  command: MilterCommand & { kind: keyof typeof STEP_BITS },
): Promise<MilterResponse | 'skipped' | 'noreply' | undefined> {
  const [no, nr] = STEP_BITS[command.kind];
  if (protocol & no) return 'skipped';
  mta.send(command);
  if (protocol & nr) return 'noreply';
  return mta.next();
}

/** Send EOM and collect everything up to the final decision. */
export async function endOfMessage(
  mta: RawMta,
): Promise<{ final: MilterResponse | undefined; modifications: MilterResponse[]; progress: number }> {
  mta.send({ kind: 'eom', chunk: Buffer.alloc(0) });
  const modifications: MilterResponse[] = [];
  let progress = 0;
  for (;;) {
    const r = await mta.next();
    if (r === undefined || isDecision(r)) return { final: r, modifications, progress };
    if (r.kind === 'progress') progress++;
    else modifications.push(r);
  }
}

/**
 * One whole message over a raw connection (CONNECT included when `withConnect`), checking that every
 * step before EOM is answered with continue; returns the EOM outcome.
 */
export async function rawMessage(
  mta: RawMta,
  protocol: number,
  subject: string,
  withConnect: boolean,
): Promise<Awaited<ReturnType<typeof endOfMessage>>> {
  const steps: Array<MilterCommand & { kind: keyof typeof STEP_BITS }> = [];
  if (withConnect) {
    steps.push({
      kind: 'connect',
      hostname: 'client.example',
      family: 'inet',
      port: 4567,
      address: '192.0.2.1',
    });
    steps.push({ kind: 'helo', hostname: 'client.example' });
  }
  steps.push(
    { kind: 'mail', sender: '<sender@example.org>', args: [] },
    { kind: 'rcpt', recipient: '<user@example.net>', args: [] },
    { kind: 'data' },
    { kind: 'header', name: 'Subject', value: subject },
    { kind: 'eoh' },
    { kind: 'body', chunk: Buffer.from('hello\r\n') },
  );
  for (const command of steps) {
    const reply = await step(mta, protocol, command);
    if (typeof reply === 'object' && reply.kind !== 'continue') {
      throw new Error(`${command.kind}: unexpected ${JSON.stringify(reply)}`);
    }
    if (reply === undefined) throw new Error(`${command.kind}: connection closed`);
  }
  return endOfMessage(mta);
}
