/**
 * Socket chunks read while a command is in flight: they wait here instead of in the frame decoder,
 * because pushing would invalidate the payload views the running callback may still hold.
 */
const EMPTY = Buffer.alloc(0);

export class ChunkQueue {
  /** Chunks, oldest first from `head`. */
  private chunks: Buffer[] = [];
  private head = 0;
  /** Bytes queued. */
  bytes = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** The oldest chunk, or undefined when empty. */
  shift(): Buffer | undefined {
    if (this.head === this.chunks.length) return undefined;
    const chunk = this.chunks[this.head] as Buffer;
    this.chunks[this.head++] = EMPTY;
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
    }
    this.bytes -= chunk.length;
    return chunk;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.bytes = 0;
  }
}
