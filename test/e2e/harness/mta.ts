/** What the scenarios need from an MTA under test, whichever it is. */
import { readFile } from 'node:fs/promises';

export type MtaKind = 'postfix' | 'sendmail';

export type MilterEndpoint = { kind: 'inet'; port: number } | { kind: 'unix'; path: string };

/** Milter timeouts the MTAs are configured with (short, so timeout scenarios stay fast). */
export const MTA_MILTER_TIMEOUTS = {
  /** Postfix milter_connect_timeout / Sendmail T=C. */
  connectSeconds: 10,
  /** Postfix milter_command_timeout / Sendmail T=S (writes). */
  commandSeconds: 5,
  /** Postfix milter_content_timeout / Sendmail T=R (each read; progress restarts it). */
  contentSeconds: 5,
  /** Sendmail T=E: whole EOM exchange, not extended by progress. */
  eomTotalSeconds: 60,
} as const;

export interface MtaStartOptions {
  /** Work folder (config, queue, logs). */
  dir: string;
  /** Port of the recording sink on 127.0.0.1. */
  sinkPort: number;
  /** Where milterd listens; undefined = no milter at all. */
  milter: MilterEndpoint | undefined;
  /** Run the MTA under strace (connect/sendto) to prove no packet leaves loopback. */
  strace?: boolean;
}

export interface HeldMessage {
  queueId: string;
  /** Sendmail: the quarantine reason stored in the `hf` file. Postfix 3.7 does not keep one. */
  reason: string | undefined;
  /** Header lines of the held message as the MTA stored it. */
  headerText: string;
}

export interface Mta {
  readonly kind: MtaKind;
  /** SMTP port, on 127.0.0.1 and [::1]. */
  readonly port: number;
  readonly dir: string;
  /** Messages accepted but not yet delivered (held/quarantined ones excluded). */
  pendingCount(): Promise<number>;
  /** Held (Postfix hold queue) or quarantined (Sendmail `hf`) messages. */
  held(): Promise<HeldMessage[]>;
  /** Remove held/quarantined messages (between scenarios). */
  clearHeld(): Promise<void>;
  /** Log text for failure reports (Postfix maillog, Sendmail milter debug output). */
  log(): Promise<string>;
  /** Files written by strace, when started with `strace`. */
  straceFiles(): readonly string[];
  stop(): Promise<void>;
}

export async function readTail(file: string, maxChars = 20_000): Promise<string> {
  try {
    const text = await readFile(file, 'latin1');
    return text.length > maxChars ? text.slice(-maxChars) : text;
  } catch {
    return '';
  }
}

/** Is some socket LISTENing on this TCP port (127.0.0.1 or ::1)? Reads /proc/net/tcp{,6}. */
export async function isListening(port: number, family: 4 | 6 = 4): Promise<boolean> {
  const file = family === 4 ? '/proc/net/tcp' : '/proc/net/tcp6';
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const text = await readFile(file, 'utf8');
  return text.split('\n').some((line) => {
    const cols = line.trim().split(/\s+/);
    return cols[1]?.endsWith(`:${hexPort}`) === true && cols[3] === '0A';
  });
}

/**
 * Server-side TCP connections on `port` the MTA has not closed yet (ESTABLISHED, SYN_RECV, CLOSE_WAIT),
 * from /proc/net/tcp{,6}. Zero means the MTA has finished every SMTP session on that port.
 */
export async function openServerConnections(port: number): Promise<number> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  let n = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8');
    for (const line of text.split('\n')) {
      const cols = line.trim().split(/\s+/);
      if (cols[1]?.endsWith(`:${hexPort}`) && ['01', '03', '08'].includes(cols[3] ?? '')) n++;
    }
  }
  return n;
}
