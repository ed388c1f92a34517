/** Large or deep YAML documents for the tests of the bounded config/policy parsing (yaml-file.ts). */

const LETTERS = 'abcdefghijklmnopqrstuvwxyz';

/** The `i`-th four-letter key (`aaaa`, `aaab`, …): plain strings, never read as numbers. */
function key(i: number): string {
  let s = '';
  for (let k = 0; k < 4; k++) {
    s = LETTERS[i % 26] + s;
    i = Math.floor(i / 26);
  }
  return s;
}

/**
 * A flow mapping of `n` distinct keys without values, ten per line, whose last key repeats the first
 * (so the document is refused for a duplicate key on its last line). 200 000 keys take 1 020 007 bytes,
 * under the 1 MiB limit. Returns the text and the 1-based line of the duplicate.
 */
export function manyKeysYaml(n: number): { text: string; duplicateLine: number } {
  const parts: string[] = ['{'];
  for (let i = 0; i <= n; i++) {
    parts.push(key(i === n ? 0 : i), i === n ? '}\n' : i % 10 === 9 ? ',\n' : ',');
  }
  return { text: parts.join(''), duplicateLine: Math.floor(n / 10) + 1 };
}

/** Documents nested `depth` levels deep: flow sequences, block sequences, flow mappings. */
export function deepYaml(depth: number): string[] {
  return ['['.repeat(depth), '- '.repeat(depth) + 'a\n', '{a: '.repeat(depth) + '\n'];
}
