/**
 * The body of one message as the filter received it: in memory up to a bound, then in a temporary file.
 *
 * The file is unlinked as soon as it is opened, so it never outlives the process (not even a crash or a
 * SIGKILL) and nothing has to find and remove it; `dispose()` closes the descriptor, which frees the space.
 * Reads are positional, so the body can be read any number of times while more is appended.
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { MILTER_CHUNK_SIZE } from '../protocol/constants.js';
import type { MilterResponse, ReplaceBodyResponse } from '../protocol/types.js';
import type { HandleResult } from './types.js';
import type { BodySource } from '../filter.js';
import { MilterUsageError } from '../errors.js';
import { DEFAULTS } from '../defaults.js';

/** Default bytes kept in memory before the body spills to a temporary file. */
export const BODY_MEMORY_LIMIT: number = DEFAULTS.bodyMemoryLimit;

/** Read size when streaming a spilled body back. */
const READ_CHUNK = 64 * 1024;

export class BodyStore {
  private chunks: Buffer[] = [];
  private memoryBytes = 0;
  private file: FileHandle | undefined;
  private fileBytes = 0;
  private disposed = false;

  constructor(
    private readonly memoryLimit: number = BODY_MEMORY_LIMIT,
    private readonly dir: string = os.tmpdir(),
  ) {}

  /** Bytes stored so far. */
  get size(): number {
    return this.memoryBytes + this.fileBytes;
  }

  /** True once the body went to a file. */
  get spilled(): boolean {
    return this.file !== undefined;
  }

  /**
   * Append a chunk (copied: the session's chunk is valid only during its callback). Resolves at once
   * while the body fits in memory; writes to the file afterwards.
   */
  append(chunk: Buffer): void | Promise<void> {
    if (this.disposed) throw new Error('body store used after dispose');
    if (this.file === undefined && this.memoryBytes + chunk.length <= this.memoryLimit) {
      this.chunks.push(Buffer.from(chunk));
      this.memoryBytes += chunk.length;
      return;
    }
    const copy = Buffer.from(chunk);
    return this.spill().then(() => this.writeFile(copy));
  }

  /** The body from the start, in chunks; can be called again (each call reads it afresh). */
  async *read(): AsyncGenerator<Buffer> {
    if (this.file === undefined) {
      yield* this.chunks;
      return;
    }
    const file = this.file;
    const end = this.fileBytes;
    for (let pos = 0; pos < end;) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, end - pos));
      const { bytesRead } = await file.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) throw new Error('temporary body file ended early');
      pos += bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  }

  /** The whole body as one Buffer (for small bodies; a spilled body is read back from its file). */
  async buffer(): Promise<Buffer> {
    if (this.file === undefined) return Buffer.concat(this.chunks, this.memoryBytes);
    const parts: Buffer[] = [];
    for await (const c of this.read()) parts.push(c);
    return Buffer.concat(parts, this.fileBytes);
  }

  /** Forget the body and close the file (its space is freed: it was unlinked when created). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.chunks = [];
    this.memoryBytes = 0;
    const file = this.file;
    this.file = undefined;
    this.fileBytes = 0;
    await file?.close();
  }

  /** Move what is in memory to a new unlinked temporary file. */
  private async spill(): Promise<void> {
    if (this.file !== undefined) return;
    const dir = await mkdtemp(path.join(this.dir, 'milterd-body-'));
    const name = path.join(dir, 'body');
    let file: FileHandle;
    try {
      file = await open(name, 'w+', 0o600);
    } finally {
      // Unlinked at once: the open descriptor keeps the data, nothing is left behind on any exit.
      await rm(dir, { recursive: true, force: true });
    }
    if (this.disposed) {
      await file.close();
      throw new Error('body store used after dispose');
    }
    this.file = file;
    const held = this.chunks;
    this.chunks = [];
    this.memoryBytes = 0;
    for (const c of held) await this.writeFile(c);
  }

  private async writeFile(chunk: Buffer): Promise<void> {
    const file = this.file;
    if (file === undefined) throw new Error('internal: no body file');
    let off = 0;
    while (off < chunk.length) {
      const { bytesWritten } = await file.write(chunk, off, chunk.length - off, this.fileBytes);
      off += bytesWritten;
      this.fileBytes += bytesWritten;
    }
  }
}

/** Split a body into ≤ 65535-byte REPLBODY packets; an empty body is one empty packet (= empty body). */
export function chunkBody(body: Buffer): ReplaceBodyResponse[] {
  if (body.length === 0) return [{ kind: 'replaceBody', chunk: body }];
  const out: ReplaceBodyResponse[] = [];
  for (let off = 0; off < body.length; off += MILTER_CHUNK_SIZE) {
    out.push({ kind: 'replaceBody', chunk: body.subarray(off, off + MILTER_CHUNK_SIZE) });
  }
  return out;
}

/**
 * `result` with a streamed body replacement (`HandleResult.body`) read back and inlined as REPLBODY
 * responses before the decision, as they travel on the wire; the store is disposed. For in-memory
 * consumers (milterd/testing, tests); the server streams it instead.
 */
export async function inlineBody(result: HandleResult): Promise<HandleResult> {
  const body = result.body;
  if (body === undefined) return result;
  let whole: Buffer;
  try {
    whole = await body.buffer();
  } finally {
    await body.dispose();
  }
  const responses: MilterResponse[] = [...result.responses];
  responses.splice(responses.length - 1, 0, ...chunkBody(whole));
  return result.end === undefined ? { responses } : { responses, end: result.end };
}

/** A replacement body, checked: whole (a Buffer, or an iterable's pieces joined) or a stream to read. */
export type CheckedBody =
  { kind: 'buffer'; buffer: Buffer } | { kind: 'stream'; stream: AsyncIterable<unknown> };

function badBody(message: string): MilterUsageError {
  return new MilterUsageError('ERR_MILTER_INVALID_ARGUMENT', message);
}

/** One piece of a replacement body as a Buffer (no copy); anything but bytes is refused. */
export function bodyPiece(piece: unknown): Buffer {
  if (Buffer.isBuffer(piece)) return piece;
  if (piece instanceof Uint8Array) return Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
  throw badBody('body pieces must be Buffer or Uint8Array');
}

/**
 * What `replaceBody` accepts, checked once for the EOM context and the fake transaction alike: a Buffer or
 * Uint8Array, an iterable of them (joined now), or an async iterable (read later, piece by piece, each
 * piece checked with {@link bodyPiece}). Throws ERR_MILTER_INVALID_ARGUMENT otherwise.
 */
export function checkBodySource(body: BodySource): CheckedBody {
  const value: unknown = body;
  if (value === null || typeof value !== 'object') {
    throw badBody('body must be a Buffer, Uint8Array or iterable');
  }
  if (value instanceof Uint8Array) return { kind: 'buffer', buffer: bodyPiece(value) };
  if (typeof (value as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function') {
    const pieces: Buffer[] = [];
    for (const piece of value as Iterable<unknown>) pieces.push(bodyPiece(piece));
    return { kind: 'buffer', buffer: Buffer.concat(pieces) };
  }
  if (typeof (value as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator] !== 'function') {
    throw badBody('body must be a Buffer, Uint8Array or iterable');
  }
  return { kind: 'stream', stream: value as AsyncIterable<unknown> };
}
