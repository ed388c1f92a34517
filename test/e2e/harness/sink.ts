/**
 * A recording SMTP sink on 127.0.0.1 (port 0): the MTAs relay everything here. It answers 250 to every
 * transaction and records the envelope (MAIL FROM and RCPT TO with their ESMTP parameters), the headers
 * in order and the body of each message.
 */
import net from 'node:net';

export interface SinkRecipient {
  address: string;
  params: string[];
}

export interface SinkHeader {
  name: string;
  /** Value with folding removed (CRLF + WSP → the WSP) and the one leading space after the colon dropped. */
  value: string;
}

export interface SinkMessage {
  /** Sequence number in arrival order. */
  seq: number;
  helo: string;
  from: string;
  fromParams: string[];
  recipients: SinkRecipient[];
  headers: SinkHeader[];
  body: Buffer;
  /** The whole message as received (dot-unstuffed, CRLF). */
  raw: Buffer;
}

function parsePath(rest: string): { address: string; params: string[] } {
  const trimmed = rest.trim();
  const m = /^(<[^>]*>)\s*(.*)$/.exec(trimmed);
  if (m) {
    const params = (m[2] ?? '').split(/\s+/).filter((p) => p !== '');
    return { address: m[1] ?? '', params };
  }
  const [address = '', ...params] = trimmed.split(/\s+/);
  return { address, params };
}

/** Split a raw message into unfolded headers and body. */
export function parseMessage(raw: Buffer): { headers: SinkHeader[]; body: Buffer } {
  let split = raw.indexOf('\r\n\r\n');
  let headerText: string;
  let body: Buffer;
  if (raw.subarray(0, 2).toString() === '\r\n') {
    headerText = '';
    body = raw.subarray(2);
  } else if (split < 0) {
    headerText = raw.toString('latin1');
    body = Buffer.alloc(0);
  } else {
    headerText = raw.subarray(0, split + 2).toString('latin1');
    split += 4;
    body = raw.subarray(split);
  }
  const headers: SinkHeader[] = [];
  for (const line of headerText.split('\r\n')) {
    if (line === '') continue;
    const last = headers[headers.length - 1];
    if ((line.startsWith(' ') || line.startsWith('\t')) && last) {
      last.value += line;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    let value = line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    headers.push({ name: line.slice(0, colon), value });
  }
  return { headers, body };
}

export class SmtpSink {
  readonly messages: SinkMessage[] = [];
  /** SMTP sessions opened by MTAs (connections). */
  sessions = 0;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  async start(): Promise<void> {
    const server = net.createServer((socket) => this.handle(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    if (!address || typeof address !== 'object') throw new Error('sink has no address');
    this.port = address.port;
  }

  /** Forget what was received so far (between scenarios). */
  reset(): void {
    this.messages.length = 0;
    this.sessions = 0;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private handle(socket: net.Socket): void {
    this.sessions++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffer = Buffer.alloc(0);
    let inData = false;
    let dataChunks: Buffer[] = [];
    let helo = '';
    let from: { address: string; params: string[] } | undefined;
    let recipients: SinkRecipient[] = [];
    const reply = (text: string): void => {
      if (!socket.destroyed) socket.write(`${text}\r\n`);
    };
    socket.write('220 sink.test ESMTP recording sink\r\n');
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const eol = buffer.indexOf('\r\n');
        if (eol < 0) break;
        const lineBuf = buffer.subarray(0, eol);
        buffer = buffer.subarray(eol + 2);
        if (inData) {
          if (lineBuf.length === 1 && lineBuf[0] === 0x2e) {
            inData = false;
            const raw = Buffer.concat(dataChunks);
            dataChunks = [];
            const { headers, body } = parseMessage(raw);
            this.messages.push({
              seq: this.messages.length + 1,
              helo,
              from: from?.address ?? '',
              fromParams: from?.params ?? [],
              recipients,
              headers,
              body,
              raw,
            });
            from = undefined;
            recipients = [];
            reply('250 2.0.0 Ok: recorded');
            continue;
          }
          const unstuffed = lineBuf[0] === 0x2e ? lineBuf.subarray(1) : lineBuf;
          dataChunks.push(Buffer.from(unstuffed), Buffer.from('\r\n'));
          continue;
        }
        const line = lineBuf.toString('latin1');
        const verb = line.split(' ', 1)[0]?.toUpperCase() ?? '';
        switch (verb) {
          case 'EHLO':
            helo = line.slice(5).trim();
            socket.write(
              '250-sink.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-DSN\r\n' +
                '250 ENHANCEDSTATUSCODES\r\n',
            );
            break;
          case 'HELO':
            helo = line.slice(5).trim();
            reply('250 sink.test');
            break;
          case 'MAIL':
            from = parsePath(line.replace(/^MAIL FROM:/i, ''));
            recipients = [];
            reply('250 2.1.0 Ok');
            break;
          case 'RCPT':
            recipients.push(parsePath(line.replace(/^RCPT TO:/i, '')));
            reply('250 2.1.5 Ok');
            break;
          case 'DATA':
            inData = true;
            reply('354 End data with <CR><LF>.<CR><LF>');
            break;
          case 'RSET':
            from = undefined;
            recipients = [];
            reply('250 2.0.0 Ok');
            break;
          case 'QUIT':
            reply('221 2.0.0 Bye');
            socket.end();
            break;
          default:
            reply('250 2.0.0 Ok');
        }
      }
    });
  }
}

/**
 * A delivered message without the Received: header Postfix prepends itself (`from … by mta.test
 * (Postfix) with ESMTP id …`; ESMTPA after AUTH or XCLIENT LOGIN, ESMTPS with TLS), and how many such headers there were: the one difference between what
 * a milter saw and what Postfix delivered that no tool can predict (queue id, time).
 */
export function withoutPostfixReceived(raw: Buffer): { message: Buffer; removed: number } {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const head = end < 0 ? text : text.slice(0, end + 2);
  const fields = head.split(/\r\n(?![ \t])/).filter((f) => f !== '');
  const ours = /^Received: from [^\r\n]*\r\n\tby mta\.test \(Postfix\) with E?SMTPS?A? id [0-9A-Z]+/;
  const kept = fields.filter((f) => !ours.test(f));
  const rest = end < 0 ? '' : text.slice(end + 2);
  return {
    message: Buffer.from(kept.map((f) => `${f}\r\n`).join('') + rest, 'latin1'),
    removed: fields.length - kept.length,
  };
}
