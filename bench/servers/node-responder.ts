/**
 * The C responder (bench/native/c-responder.c) in Node, on milterd's own socket layer: reads into the
 * shared buffer (src/server/shared-read.ts), replies written straight to the handle
 * (src/server/direct-write.ts), pre-built replies, no decoding, no session, no callbacks. What it costs per
 * message is the floor of any Node milter on this I/O path; milterd's CPU above it is milterd's own work.
 *
 *   node dist/bench/servers/node-responder.js --listen inet:0@127.0.0.1 | unix:/path
 *
 * Prints `READY <json addresses>` once listening.
 */
import net from 'node:net';
import { rmSync } from 'node:fs';
import { adoptSharedReads } from '../../src/server/shared-read.js';
import { writeDirect } from '../../src/server/direct-write.js';
import { parseSocketSpec } from '../../src/socket-spec.js';

function frame(command: string, payload: Buffer): Buffer {
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt32BE(1 + payload.length, 0);
  out.write(command, 4, 'latin1');
  payload.copy(out, 5);
  return out;
}

const OPTNEG_REPLY = frame('O', Buffer.from([0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0]));
const CONTINUE = frame('c', Buffer.alloc(0));
const EOM_REPLY = Buffer.concat([frame('h', Buffer.from('X-Bench\0milterd-bench\0', 'latin1')), CONTINUE]);

/** One connection: frames may straddle reads, so the unconsumed tail is kept (copied: the read buffer is shared). */
class Responder {
  private tail: Buffer | undefined;
  private socket!: net.Socket;

  attach(socket: net.Socket): void {
    const adopted = adoptSharedReads(socket, (n, shared) => this.onRead(shared, n));
    if (adopted === undefined) throw new Error('shared reads unavailable');
    this.socket = adopted;
    adopted.on('error', () => undefined);
  }

  private onRead(shared: Buffer, n: number): void {
    let buf = shared;
    let len = n;
    if (this.tail !== undefined) {
      buf = Buffer.concat([this.tail, shared.subarray(0, n)]);
      len = buf.length;
      this.tail = undefined;
    }
    let pos = 0;
    const replies: Buffer[] = [];
    while (len - pos >= 5) {
      const size = buf.readUInt32BE(pos);
      if (len - pos < 4 + size) break;
      const command = buf[pos + 4];
      pos += 4 + size;
      if (command === 0x4f /* O */) replies.push(OPTNEG_REPLY);
      else if (command === 0x44 /* D */ || command === 0x41 /* A */ || command === 0x4b /* K */) continue;
      else if (command === 0x51 /* Q */) {
        this.socket.end();
        return;
      } else if (command === 0x45 /* E */) replies.push(EOM_REPLY);
      else replies.push(CONTINUE);
    }
    if (pos < len) this.tail = Buffer.from(buf.subarray(pos, len));
    if (replies.length === 0) return;
    const out = replies.length === 1 ? (replies[0] as Buffer) : Buffer.concat(replies);
    if (writeDirect(this.socket, out, () => undefined) === 'unavailable') this.socket.write(out);
  }
}

function main(): void {
  const i = process.argv.indexOf('--listen');
  const spec = process.argv[i + 1];
  if (i < 0 || spec === undefined) throw new Error('--listen SPEC is needed');
  const parsed = parseSocketSpec(spec);
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
    if (parsed.kind === 'inet') socket.setNoDelay(true);
    new Responder().attach(socket);
  });
  const ready = (): void => {
    const a = server.address();
    const addr = typeof a === 'string' || a === null ? spec : `inet:${a.port}@${a.address}`;
    process.stdout.write(`READY ${JSON.stringify([addr])}\n`);
  };
  if (parsed.kind === 'unix') {
    rmSync(parsed.path, { force: true });
    server.listen({ path: parsed.path, backlog: 511 }, ready);
  } else server.listen({ host: parsed.host, port: parsed.port, backlog: 511 }, ready);
  const stop = (): void => process.exit(0);
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main();
