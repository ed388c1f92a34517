/**
 * `milterd test --output-message FILE|-`: write the message as the MTA would deliver it (output-message.ts)
 * and summarise what was written for the report.
 */
import { writeFile } from 'node:fs/promises';
import { MilterConfigError } from '../errors.js';
import type { MessageResult } from '../client/index.js';
import {
  deliveredMessage,
  envelopeHeaderBlock,
  type DeliveredEnvelope,
  type ReceivedMessage,
} from './output-message.js';
import type { TestReport } from './test-report.js';

/** What `--output-message` did, as shown in the report (`delivered` in the JSON document). */
export interface OutputMessageSummary {
  /** The FILE argument (`-` for stdout). */
  file: string;
  written: boolean;
  /** Bytes written. */
  bytes?: number;
  /** Why nothing was written. */
  reason?: string;
  /** The envelope after the milter's changes (without --json it is also above the message). */
  envelope: DeliveredEnvelope;
  /** Requests the MTA would refuse (nothing is written then). */
  problems: string[];
}

/**
 * Build the delivered message and write it to `file` (`-`: stdout, as raw bytes). Nothing is written
 * when the MTA would not deliver the message (rejected, tempfailed, discarded, or a request Postfix
 * refuses). Without `json` an envelope the milter changed is written above the message as
 * `X-Milterd-Envelope-*` header fields. Rejects with MilterConfigError when the file cannot be written.
 */
export async function writeOutputMessage(
  file: string,
  received: ReceivedMessage,
  result: MessageResult,
  outcome: TestReport['result']['outcome'],
  options: { leadingSpace: boolean; json: boolean },
): Promise<OutputMessageSummary> {
  const delivered = deliveredMessage(received, result.eom?.modifications ?? [], options.leadingSpace);
  const summary: OutputMessageSummary = {
    file,
    written: false,
    envelope: delivered.envelope,
    problems: delivered.problems,
  };
  if (outcome !== 'accepted' && outcome !== 'quarantined') {
    summary.reason = `the MTA would not deliver the message (${outcome})`;
    return summary;
  }
  if (delivered.problems.length > 0) {
    summary.reason = `the MTA would not deliver the message: ${delivered.problems.join('; ')}`;
    return summary;
  }
  const bytes = options.json
    ? delivered.bytes
    : Buffer.concat([envelopeHeaderBlock(delivered.envelope), delivered.bytes]);
  try {
    if (file === '-') await writeStdout(bytes);
    else await writeFile(file, bytes);
  } catch (err) {
    throw new MilterConfigError(
      `cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      { file },
    );
  }
  summary.written = true;
  summary.bytes = bytes.length;
  return summary;
}

/** Bytes to stdout unchanged (the CLI's text writer would re-encode them). */
function writeStdout(bytes: Buffer): Promise<void> {
  return new Promise((resolve, reject) =>
    process.stdout.write(bytes, (err) => (err ? reject(err) : resolve())),
  );
}
