/**
 * A tiny scripted filter for client tests: decodes what the client sends, records it, and answers
 * through a per-test handler (default: an OPTNEG reply, then `continue` to every command that wants one).
 */
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeCommand } from '../../../src/protocol/decode.js';
import { encodeResponses } from '../../../src/protocol/encode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import type { MilterCommand, MilterResponse, OptnegResponse } from '../../../src/protocol/types.js';
import {
  SMFIP_NR_BODY,
  SMFIP_NR_CONN,
  SMFIP_NR_DATA,
  SMFIP_NR_EOH,
  SMFIP_NR_HDR,
  SMFIP_NR_HELO,
  SMFIP_NR_MAIL,
  SMFIP_NR_RCPT,
  SMFIP_NR_UNKN,
} from '../../../src/protocol/constants.js';

/** What the handler wants done: send these responses, send nothing, or hang up. */
export type Action = MilterResponse[] | 'silent' | 'hangup';
export type Handler = (command: MilterCommand, fallback: () => Action) => Action;

export interface FakeFilter {
  /** Spec to give MilterClient.connect. */
  spec: string;
  /** Every decoded command, in order (chunks copied). */
  commands: MilterCommand[];
  /** Raw socket chunks as received, per connection in order. */
  chunks: Buffer[];
  close(): Promise<void>;
}

const NR_BY_KIND: Partial<Record<MilterCommand['kind'], number>> = {
  connect: SMFIP_NR_CONN,
  helo: SMFIP_NR_HELO,
  mail: SMFIP_NR_MAIL,
  rcpt: SMFIP_NR_RCPT,
  data: SMFIP_NR_DATA,
  header: SMFIP_NR_HDR,
  eoh: SMFIP_NR_EOH,
  body: SMFIP_NR_BODY,
  unknown: SMFIP_NR_UNKN,
};

function copy(command: MilterCommand): MilterCommand {
  return command.kind === 'body' || command.kind === 'eom'
    ? { kind: command.kind, chunk: Buffer.from(command.chunk) }
    : command;
}

/** Start a fake filter on 127.0.0.1:0 (`unix: false`) or on a temp Unix socket. */
export async function startFakeFilter(
  optneg: OptnegResponse,
  handler: Handler = (_c, fallback) => fallback(),
  options: { unix?: boolean } = {},
): Promise<FakeFilter> {
  const commands: MilterCommand[] = [];
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const fallbackFor = (command: MilterCommand): Action => {
    switch (command.kind) {
      case 'optneg':
        return [optneg];
      case 'macro':
      case 'abort':
      case 'quitNewConnection':
        return 'silent';
      case 'quit':
        return 'hangup';
      case 'eom':
        return [{ kind: 'continue' }];
      default: {
        const nr = NR_BY_KIND[command.kind] ?? 0;
        return (optneg.protocol & nr) !== 0 ? 'silent' : [{ kind: 'continue' }];
      }
    }
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const decoder = new FrameDecoder(1 << 20);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(Buffer.from(chunk));
      decoder.push(chunk);
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
        const command = decodeCommand(f);
        commands.push(copy(command));
        const action = handler(command, () => fallbackFor(command));
        if (action === 'hangup') {
          socket.destroy();
          return;
        }
        if (action !== 'silent' && action.length > 0) socket.write(encodeResponses(action));
      }
    });
  });
  let dir: string | undefined;
  let spec: string;
  if (options.unix === true) {
    dir = mkdtempSync(join(tmpdir(), 'milterd-client-'));
    const path = join(dir, 'filter.sock');
    await new Promise<void>((resolve) => server.listen(path, resolve));
    spec = `unix:${path}`;
  } else {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    spec = `inet:${(server.address() as net.AddressInfo).port}@127.0.0.1`;
  }
  return {
    spec,
    commands,
    chunks,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}
