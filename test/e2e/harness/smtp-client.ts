/**
 * A step-by-step SMTP client for the scenarios: sends one command (or raw bytes) at a time and records,
 * per step, the reply code, its lines, and whether the server hung up.
 */
import net from 'node:net';

export interface SmtpReply {
  /** 0 when no reply came (connection closed first). */
  code: number;
  /** Full reply lines, e.g. `['550-5.7.1 first', '550 5.7.1 second']`. */
  lines: string[];
  /** The lines joined with `\n` (what text patterns are matched against). */
  text: string;
  /** The server closed the connection (after this reply, or instead of it). */
  hangup: boolean;
}

export class SmtpClient {
  private socket: net.Socket | undefined;
  private buffer = '';
  private closed = false;
  private waiters: Array<() => void> = [];
  /** Everything the server sent, for error messages. */
  transcript: string[] = [];

  /** `localAddress`: the loopback source address (e.g. 127.0.1.2), so that one test can be several clients. */
  async connect(host: string, port: number, timeoutMs = 15_000, localAddress?: string): Promise<void> {
    const socket = net.connect({ host, port, ...(localAddress === undefined ? {} : { localAddress }) });
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffer += d;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {
      this.closed = true;
      this.wake();
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`SMTP connect to ${host}:${port} timed out`)),
        timeoutMs,
      );
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The client's own local port (useful to correlate with the MTA's view of the connection). */
  get localPort(): number {
    return this.socket?.localPort ?? 0;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private waitChange(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Read one (possibly multi-line) reply; bounded by `timeoutMs`. */
  async readReply(timeoutMs = 60_000): Promise<SmtpReply> {
    const deadline = Date.now() + timeoutMs;
    const lines: string[] = [];
    for (;;) {
      const eol = this.buffer.indexOf('\r\n');
      if (eol >= 0) {
        const line = this.buffer.slice(0, eol);
        this.buffer = this.buffer.slice(eol + 2);
        this.transcript.push(`S: ${line}`);
        lines.push(line);
        if (!/^\d{3}-/.test(line)) {
          const code = Number(line.slice(0, 3)) || 0;
          return { code, lines, text: lines.join('\n'), hangup: this.closed && this.buffer === '' };
        }
        continue;
      }
      if (this.closed) {
        return { code: 0, lines, text: lines.join('\n'), hangup: true };
      }
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`no SMTP reply within ${timeoutMs} ms; transcript:\n${this.transcript.join('\n')}`);
      await this.waitChange(left);
    }
  }

  /** Wait (bounded) until the server has closed the connection; true if it did. */
  async waitHangup(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.waitChange(left);
    }
    return true;
  }

  write(data: string | Buffer): void {
    if (!this.socket || this.closed) return;
    this.socket.write(data);
  }

  /** Send one command line and read its reply. */
  async command(line: string, timeoutMs?: number): Promise<SmtpReply> {
    this.transcript.push(`C: ${line}`);
    // latin1: a "\xNN" escape in a scenario is one byte on the wire, as in message text.
    this.write(Buffer.from(`${line}\r\n`, 'latin1'));
    return this.readReply(timeoutMs);
  }

  /** Send a message's content (headers, blank line, body), dot-stuffed, then `.`; read the reply. */
  async content(message: Buffer, timeoutMs?: number): Promise<SmtpReply> {
    this.transcript.push(`C: <${message.length} bytes of content>`);
    this.write(dotStuff(message));
    this.write('.\r\n');
    return this.readReply(timeoutMs);
  }

  /** Close our side at once (RST-free: FIN), without QUIT. */
  close(): void {
    this.socket?.end();
    this.socket?.destroy();
  }
}

/** Dot-stuff CRLF text and make sure it ends with CRLF. */
export function dotStuff(message: Buffer): Buffer {
  let text = message.toString('latin1');
  if (!text.endsWith('\r\n')) text += '\r\n';
  text = text.replace(/(^|\r\n)\./g, '$1..');
  return Buffer.from(text, 'latin1');
}
