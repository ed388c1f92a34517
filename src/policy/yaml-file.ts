/**
 * Reading and parsing the daemon's YAML files (the config file and the policy file) with bounded work:
 * SIGHUP parses them on the event loop of a live daemon, so neither their size nor their shape may make
 * that take long, and nothing in them may bring the process down.
 *
 * - Files are read up to {@link MAX_YAML_FILE_BYTES}; a larger file is refused before parsing.
 * - Nesting deeper than {@link MAX_YAML_DEPTH} is refused before the document is composed: the `yaml`
 *   composer recurses per level, and a stack overflow inside it can hit V8 while it compiles a regular
 *   expression, which aborts the whole process ("RegExpCompiler Allocation failed") instead of throwing.
 * - Duplicate keys are found with one Set per mapping (linear). The `yaml` package's own `uniqueKeys`
 *   check compares each key with every earlier one: 20k keys took seconds, 200k keys minutes.
 */
import { open } from 'node:fs/promises';
import {
  Composer,
  Document,
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  Parser,
  YAMLParseError,
  type CST,
  type LineCounter,
  type Node,
} from 'yaml';

/** Largest config or policy file accepted (1 MiB); real ones are a few KiB. */
export const MAX_YAML_FILE_BYTES = 1024 * 1024;

/** Deepest nesting of mappings and sequences accepted; real files need 4 levels. */
export const MAX_YAML_DEPTH = 64;

/** A file (or text) larger than {@link MAX_YAML_FILE_BYTES}. */
export class YamlFileTooLargeError extends Error {
  constructor(
    /** Its size in bytes, or the bytes read before giving up when the size was not known up front. */
    readonly size: number,
    readonly limit: number,
    exact = true,
  ) {
    super(`${exact ? '' : 'more than '}${size} bytes, more than the limit of ${limit} bytes (1 MiB)`);
    this.name = 'YamlFileTooLargeError';
  }
}

/**
 * Read a UTF-8 text file of at most `limit` bytes. Throws YamlFileTooLargeError when it is larger (known
 * from its size, or found while reading a file that grows or has no size, such as a pipe), and the
 * file-system error when it cannot be read.
 */
export async function readYamlFile(path: string, limit = MAX_YAML_FILE_BYTES): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const { size } = await handle.stat();
    if (size > limit) throw new YamlFileTooLargeError(size, limit);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const want = Math.min(64 * 1024, limit + 1 - total);
      const { bytesRead, buffer } = await handle.read(Buffer.allocUnsafe(want), 0, want, null);
      if (bytesRead === 0) break;
      chunks.push(buffer.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new YamlFileTooLargeError(limit, limit, false);
    }
    return Buffer.concat(chunks, total).toString('utf8');
  } finally {
    await handle.close();
  }
}

/** Throws YamlFileTooLargeError when `text` is over the limit in UTF-8 bytes. */
export function checkYamlSize(text: string, limit = MAX_YAML_FILE_BYTES): void {
  // A UTF-16 code unit is at most 3 UTF-8 bytes: count bytes only when the length alone cannot decide.
  if (text.length * 3 <= limit) return;
  const size = Buffer.byteLength(text);
  if (size > limit) throw new YamlFileTooLargeError(size, limit);
}

/** The offset of the first collection nested deeper than `max` levels, or -1. Iterative. */
function tooDeep(tokens: readonly CST.Token[], max: number): number {
  const stack: Array<[CST.Token | null | undefined, number]> = tokens.map((t) => [t, 0]);
  while (stack.length > 0) {
    const [token, depth] = stack.pop() as [CST.Token | null | undefined, number];
    if (token === null || token === undefined) continue;
    if (token.type === 'document') stack.push([token.value, depth]);
    else if (token.type === 'block-map' || token.type === 'block-seq' || token.type === 'flow-collection') {
      if (depth + 1 > max) return token.offset;
      for (const item of token.items) {
        stack.push(['key' in item ? item.key : undefined, depth + 1], [item.value, depth + 1]);
      }
    }
  }
  return -1;
}

/** Append a DUPLICATE_KEY error for every key that repeats an earlier key of its mapping. */
function findDuplicateKeys(doc: Document): void {
  const stack: unknown[] = [doc.contents];
  while (stack.length > 0) {
    const node = stack.pop();
    if (isMap(node)) {
      const seen = new Set<unknown>();
      for (const pair of node.items) {
        const key = pair.key as Node | null;
        // Same equality as yaml's own check: scalars by value, other keys by identity.
        const id = isScalar(key) ? key.value : key;
        if (seen.has(id)) {
          const at = key?.range?.[0] ?? node.range?.[0] ?? 0;
          doc.errors.push(new YAMLParseError([at, at + 1], 'DUPLICATE_KEY', 'Map keys must be unique'));
        } else seen.add(id);
        if (key !== null && !isScalar(key) && !isAlias(key)) stack.push(key);
        stack.push(pair.value);
      }
    } else if (isSeq(node)) {
      for (const item of node.items) stack.push(isPair(item) ? item.value : item);
    }
  }
}

/**
 * Parse one YAML document like `parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys:
 * true })`, with bounded work (see the module comment). Problems end up in `doc.errors`, sorted by
 * position: YAML syntax errors, `RESOURCE_EXHAUSTION` for nesting over {@link MAX_YAML_DEPTH} (then the
 * document is empty), `DUPLICATE_KEY` for repeated keys. Does not check the size: see checkYamlSize.
 */
export function parseYamlDocument(text: string, lineCounter: LineCounter): Document {
  const tokens = [...new Parser(lineCounter.addNewLine).parse(text)];
  const deep = tooDeep(tokens, MAX_YAML_DEPTH);
  if (deep >= 0) {
    const doc = new Document(null);
    doc.errors.push(
      new YAMLParseError(
        [deep, deep + 1],
        'RESOURCE_EXHAUSTION',
        `mappings and lists nested deeper than ${MAX_YAML_DEPTH} levels`,
      ),
    );
    return doc;
  }
  const composer = new Composer({ uniqueKeys: false, prettyErrors: false });
  let doc: Document | undefined;
  for (const next of composer.compose(tokens, true, text.length)) {
    if (doc === undefined) doc = next;
    else {
      doc.errors.push(
        new YAMLParseError(
          (next.range ?? [0, 0]).slice(0, 2) as [number, number],
          'MULTIPLE_DOCS',
          'Source contains multiple documents; please use YAML.parseAllDocuments()',
        ),
      );
      break;
    }
  }
  const result = doc ?? new Document(null);
  findDuplicateKeys(result);
  result.errors.sort((a, b) => a.pos[0] - b.pos[0]);
  return result;
}

/**
 * Edit distance between two strings (optimal string alignment: insertions, deletions, substitutions and
 * swaps of two neighbours cost 1). Only ever called on short keys, so the O(n·m) table is fine.
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const prev = rows[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, ((rows[i - 2] as number[])[j - 2] as number) + 1);
      }
      row.push(d);
    }
    rows.push(row);
  }
  return (rows[a.length] as number[])[b.length] as number;
}

/**
 * The known key an unknown `key` was probably meant to be, for "did you mean" hints: one spelled the same
 * but for case, `-` and `_` (`max_connections`, `dryrun`), else the closest within an edit distance of a
 * quarter of its length (at least 1); undefined when nothing is that close.
 */
export function didYouMean(key: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replace(/[-_]/g, '');
  const same = known.find((k) => norm(k) === norm(key));
  if (same !== undefined) return same;
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance && d <= Math.max(1, Math.floor(Math.max(key.length, k.length) / 4))) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/** 1-based line and column of a source offset. */
export function positionAt(lines: LineCounter, offset: number): { line: number; column: number } {
  const { line, col } = lines.linePos(offset);
  return { line, column: col };
}
