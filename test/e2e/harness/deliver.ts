/**
 * One SMTP transaction against an MTA under test, for the tests that are not scenario-driven (pipeline,
 * third-party milters): EHLO, MAIL, RCPT, DATA and the message; every reply is kept, nothing is asserted
 * here, so a test can expect a reject as well as a delivery.
 */
import { SmtpClient, type SmtpReply } from './smtp-client.js';
import { waitFor } from './proc.js';
import type { SinkMessage, SmtpSink } from './sink.js';

export interface Transaction {
  from: string;
  rcpts: readonly string[];
  /** Header and body lines joined with `\n` (sent with CRLF). */
  message: string;
}

export interface TransactionResult {
  greeting: SmtpReply;
  mail: SmtpReply;
  rcpts: SmtpReply[];
  data: SmtpReply | undefined;
  /** The reply to the message's final dot (undefined when DATA was refused). */
  eom: SmtpReply | undefined;
  transcript: string;
}

/** A plain message from `from`, with Date and Message-ID so the MTA adds no header of its own. */
export function testMessage(options: {
  from: string;
  to: string;
  subject: string;
  body: string;
  id: string;
}): string {
  return [
    `From: ${options.from}`,
    `To: ${options.to}`,
    `Subject: ${options.subject}`,
    'Date: Sun, 06 Dec 2026 05:00:00 +0000',
    `Message-ID: <${options.id}@example.com>`,
    '',
    options.body,
    '',
  ].join('\n');
}

/** Play one transaction on 127.0.0.1:`port` and QUIT. */
export async function sendMail(port: number, t: Transaction, timeoutMs = 60_000): Promise<TransactionResult> {
  const client = new SmtpClient();
  await client.connect('127.0.0.1', port);
  try {
    const greeting = await client.readReply(timeoutMs);
    await client.command('EHLO client.example.com', timeoutMs);
    const mail = await client.command(`MAIL FROM:<${t.from}>`, timeoutMs);
    const rcpts: SmtpReply[] = [];
    let data: SmtpReply | undefined;
    let eom: SmtpReply | undefined;
    if (mail.code === 250) {
      for (const r of t.rcpts) rcpts.push(await client.command(`RCPT TO:<${r}>`, timeoutMs));
      if (rcpts.some((r) => r.code === 250)) {
        data = await client.command('DATA', timeoutMs);
        if (data.code === 354) {
          eom = await client.content(Buffer.from(t.message.replace(/\r?\n/g, '\r\n'), 'latin1'), timeoutMs);
        }
      }
    }
    if (!client.isClosed) await client.command('QUIT', timeoutMs).catch(() => undefined);
    return { greeting, mail, rcpts, data, eom, transcript: client.transcript.join('\n') };
  } finally {
    client.close();
  }
}

/** The sink's message whose Message-ID contains `id` (waits, bounded). */
export function delivered(sink: SmtpSink, id: string, timeoutMs = 30_000): Promise<SinkMessage> {
  return waitFor(`the sink to receive <${id}@…>`, () => findDelivered(sink, id), { timeoutMs });
}

export function findDelivered(sink: SmtpSink, id: string): SinkMessage | undefined {
  return sink.messages.find((m) =>
    m.headers.some((h) => h.name.toLowerCase() === 'message-id' && h.value.includes(`<${id}@`)),
  );
}

/** The values of every header named `name` (case-insensitive), in order. */
export function headerValues(message: SinkMessage, name: string): string[] {
  return message.headers.filter((h) => h.name.toLowerCase() === name.toLowerCase()).map((h) => h.value);
}
