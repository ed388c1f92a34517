/**
 * Loader for the real MTA ↔ libmilter wire captures in fixtures/captures (see its README.md): per milter
 * connection a `.mta.bin` (MTA → milter bytes), a `.milter.bin` (milter → MTA bytes) and a `.hex` log with
 * one line per packet.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One packet line of a `.hex` log. */
export interface HexPacket {
  /** '>' MTA → milter, '<' milter → MTA. */
  dir: '>' | '<';
  /** The 4-byte length field (command byte + payload). */
  len: number;
  /** Command byte + payload. */
  bytes: Buffer;
}

/** One captured milter connection. */
export interface Capture {
  /** Path relative to fixtures/captures without extension, e.g. `postfix/plain/conn-0001`. */
  name: string;
  mta: Buffer;
  milter: Buffer;
  packets: HexPacket[];
}

/** Repository root: the nearest ancestor of this file holding package.json (works from src and dist). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 10; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
}

/** Absolute path of fixtures/captures. */
export function capturesDir(): string {
  return join(repoRoot(), 'fixtures', 'captures');
}

function parseHex(text: string): HexPacket[] {
  const packets: HexPacket[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(' ');
    const dir = fields[1];
    if (dir !== '>' && dir !== '<') throw new Error(`bad hex line: ${line}`);
    packets.push({ dir, len: Number(fields[2]), bytes: Buffer.from(fields[5] ?? '', 'hex') });
  }
  return packets;
}

/** Every capture set under fixtures/captures, sorted by name. */
export function loadCaptures(): Capture[] {
  const root = capturesDir();
  const out: Capture[] = [];
  const walk = (dir: string, depth: number): void => {
    if (depth > 5) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path, depth + 1);
      else if (entry.name.endsWith('.hex')) {
        const base = path.slice(0, -'.hex'.length);
        out.push({
          name: relative(root, base),
          mta: readFileSync(`${base}.mta.bin`),
          milter: readFileSync(`${base}.milter.bin`),
          packets: parseHex(readFileSync(path, 'latin1')),
        });
      }
    }
  };
  walk(root, 0);
  return out.sort((a, b) => a.name.localeCompare(b.name));
}
