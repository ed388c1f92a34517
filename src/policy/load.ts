/**
 * The YAML policy file: parse, validate and locate errors. Any problem (YAML syntax, unknown key, wrong
 * type, bad value) refuses the whole file with a MilterConfigError naming the file, the line and the
 * field (`rules[1].when.client[0]`). The format is documented in docs/policy.md.
 */
import { LineCounter, isAlias, isMap, isScalar, isSeq, type Document, type Node } from 'yaml';
import { MilterConfigError } from '../errors.js';
import { MAX_SHUTDOWN_TEXT_BYTES, replyTextBytes } from './chain.js';
import {
  LIMIT_KINDS,
  compileConditions,
  type PolicyConfig,
  type PolicyRule,
  type RuleLimit,
} from './rules.js';
import { MAX_PREFIX, parseCidr, parseDuration, parseSize, type Cidr } from './values.js';
import { checkYamlSize, parseYamlDocument, readYamlFile, YamlFileTooLargeError } from './yaml-file.js';

const TOP_KEYS = [
  'version',
  'dry-run',
  'hook-timeout',
  'reply-text',
  'track-bytes',
  'client-prefix',
  'rules',
] as const;
const PREFIX_KEYS = Object.keys(MAX_PREFIX) as ReadonlyArray<keyof typeof MAX_PREFIX>;
const RULE_KEYS = ['name', 'text', 'dry-run', 'when', 'min-attempts', 'window', ...LIMIT_KINDS] as const;
const WHEN_KEYS = ['client', 'not-client', 'authenticated', 'helo'] as const;

interface Entry {
  key: string;
  keyNode: Node;
  value: Node | null;
}

/** Walks the YAML AST with positions, so that every error can name its line. */
class Walker {
  constructor(
    private readonly file: string,
    private readonly lines: LineCounter,
    private readonly doc: Document,
  ) {}

  fail(node: Node | null | undefined, field: string, message: string, fallback?: Node | null): never {
    const at = node?.range?.[0] ?? fallback?.range?.[0];
    const line = at === undefined ? undefined : this.lines.linePos(at).line;
    const where = `${this.file}${line === undefined ? '' : `:${line}`}`;
    throw new MilterConfigError(`${where}: ${field || '(top level)'}: ${message}`, {
      file: this.file,
      line,
      field,
    });
  }

  deref(node: Node | null): Node | null {
    if (node !== null && isAlias(node)) return (node.resolve(this.doc) as Node | undefined) ?? null;
    return node;
  }

  /** A mapping's entries, checking that every key is a known string. */
  map(node: Node | null, field: string, allowed: readonly string[], parent?: Node | null): Entry[] {
    const n = this.deref(node);
    if (n === null || !isMap(n)) return this.fail(n, field, 'expected a mapping (key: value)', parent);
    return n.items.map((pair) => {
      const keyNode = pair.key as Node | null;
      const key = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
      const name = typeof key === 'string' ? key : String(key);
      const path = field ? `${field}.${name}` : name;
      if (typeof key !== 'string' || !allowed.includes(key)) {
        this.fail(keyNode, path, `unknown key "${name}" (expected one of: ${allowed.join(', ')})`, n);
      }
      return { key, keyNode: keyNode as Node, value: this.deref(pair.value as Node | null) };
    });
  }

  scalar(e: Entry, field: string): unknown {
    if (e.value === null || !isScalar(e.value))
      return this.fail(e.value, field, 'expected a single value', e.keyNode);
    return e.value.value;
  }

  bool(e: Entry, field: string): boolean {
    const v = this.scalar(e, field);
    return typeof v === 'boolean' ? v : this.fail(e.value, field, 'expected true or false');
  }

  int(e: Entry, field: string, min: number): number {
    const v = this.scalar(e, field);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
      return this.fail(e.value, field, `expected a whole number >= ${min}`);
    }
    return v;
  }

  text(e: Entry, field: string, replyLine = false): string {
    const v = this.scalar(e, field);
    if (typeof v !== 'string' || v.trim() === '')
      return this.fail(e.value, field, 'expected a non-empty string');
    if (/[\r\n\0]/.test(v)) return this.fail(e.value, field, 'a reply text must be one line');
    const text = v.trim();
    if (replyLine) {
      // What the MTA receives counts: UTF-8 bytes, each % doubled, after `421 4.7.0 `.
      const bytes = replyTextBytes(text);
      if (bytes > MAX_SHUTDOWN_TEXT_BYTES) {
        return this.fail(
          e.value,
          field,
          `a reply text must fit one reply line: ${bytes} bytes as sent (UTF-8, each % doubled), at most ${MAX_SHUTDOWN_TEXT_BYTES}`,
        );
      }
    } else if (v.length > 900)
      return this.fail(e.value, field, 'a reply text must be at most 900 characters');
    return text;
  }

  parsed<T>(e: Entry, field: string, parse: (v: unknown) => T, min = 0): T {
    const v = this.scalar(e, field);
    try {
      const out = parse(v);
      if (typeof out === 'number' && out <= min) throw new Error(`must be greater than ${min}`);
      return out;
    } catch (err) {
      return this.fail(e.value, field, (err as Error).message);
    }
  }

  cidrs(e: Entry, field: string): Cidr[] {
    const items =
      e.value !== null && isSeq(e.value) ? e.value.items.map((n) => this.deref(n as Node | null)) : [e.value];
    if (items.length === 0) this.fail(e.value, field, 'expected at least one CIDR block', e.keyNode);
    return items.map((n, i) => {
      const path = e.value !== null && isSeq(e.value) ? `${field}[${i}]` : field;
      if (n === null || !isScalar(n))
        return this.fail(n, path, 'expected a CIDR block such as 192.0.2.0/24', e.keyNode);
      try {
        return parseCidr(n.value);
      } catch (err) {
        return this.fail(n, path, (err as Error).message);
      }
    });
  }
}

/**
 * Parse and validate a policy document. `file` is only used in error messages (and kept in the result).
 * An empty document is a policy without rules. Throws MilterConfigError (code ERR_MILTER_CONFIG), also
 * for a text over MAX_YAML_FILE_BYTES or nested deeper than MAX_YAML_DEPTH (yaml-file.ts).
 */
export function parsePolicy(text: string, file = '<policy>'): PolicyConfig {
  try {
    checkYamlSize(text);
  } catch (err) {
    throw tooLarge(file, err as YamlFileTooLargeError);
  }
  const lines = new LineCounter();
  const doc = parseYamlDocument(text, lines);
  const w = new Walker(file, lines, doc);
  const syntax = doc.errors[0];
  if (syntax !== undefined) {
    const line = lines.linePos(syntax.pos[0]).line;
    const message = syntax.message.split('\n')[0] ?? syntax.code;
    throw new MilterConfigError(`${file}:${line}: YAML syntax error: ${message}`, { file, line, field: '' });
  }
  const config: PolicyConfig = { file, dryRun: false, rules: [] };
  const root = doc.contents as Node | null;
  if (root === null) return config;
  for (const e of w.map(root, '', TOP_KEYS)) {
    const f = e.key;
    switch (e.key) {
      case 'version':
        if (w.scalar(e, f) !== 1) w.fail(e.value, f, 'only version 1 is supported');
        break;
      case 'dry-run':
        config.dryRun = w.bool(e, f);
        break;
      case 'hook-timeout':
        config.hookTimeoutMs = w.parsed(e, f, parseDuration, -1);
        break;
      case 'reply-text':
        config.replyText = w.text(e, f, true);
        break;
      case 'track-bytes':
        config.trackBytes = w.bool(e, f);
        break;
      case 'client-prefix': {
        const prefix: { ipv4?: number; ipv6?: number } = {};
        for (const p of w.map(e.value, f, PREFIX_KEYS, e.keyNode)) {
          const family = p.key as keyof typeof MAX_PREFIX;
          const max = MAX_PREFIX[family];
          const bits = w.int(p, `${f}.${p.key}`, 0);
          if (bits > max) w.fail(p.value, `${f}.${p.key}`, `expected a prefix length 0..${max}`);
          prefix[family] = bits;
        }
        config.clientPrefix = prefix;
        break;
      }
      case 'rules': {
        const seq = e.value;
        if (seq === null || (isScalar(seq) && seq.value === null)) break;
        if (!isSeq(seq)) return w.fail(seq, f, 'expected a list of rules', e.keyNode);
        const names = new Set<string>();
        seq.items.forEach((item, i) => {
          const rule = parseRule(w, w.deref(item as Node | null), `rules[${i}]`, e.value, lines);
          if (names.has(rule.name)) {
            // Default names (the limit kind) get a suffix; explicit duplicates are an error.
            if (rule.explicitName)
              w.fail(rule.nameNode, `rules[${i}].name`, `duplicate rule name "${rule.name}"`);
            rule.rule.name = `${rule.name}-${i + 1}`;
          }
          names.add(rule.rule.name);
          config.rules.push(rule.rule);
        });
        break;
      }
    }
  }
  return config;
}

function parseRule(
  w: Walker,
  node: Node | null,
  field: string,
  parent: Node | null,
  lines: LineCounter,
): { rule: PolicyRule; name: string; explicitName: boolean; nameNode: Node | null } {
  const entries = w.map(node, field, RULE_KEYS, parent);
  const limits = entries.filter((e) => (LIMIT_KINDS as readonly string[]).includes(e.key));
  if (limits.length !== 1) {
    const at = limits[1]?.keyNode ?? node;
    w.fail(at, field, `a rule needs exactly one limit, one of: ${LIMIT_KINDS.join(', ')}`);
  }
  const limitEntry = limits[0] as Entry;
  const get = (key: string): Entry | undefined => entries.find((e) => e.key === key);
  const onlyWith = (key: string, kind: string): void => {
    const e = get(key);
    if (e !== undefined && limitEntry.key !== kind)
      w.fail(e.keyNode, `${field}.${key}`, `only allowed with ${kind}`);
  };
  onlyWith('min-attempts', 'max-failure-ratio');
  onlyWith('window', 'max-messages-per-client');
  const limit = parseLimit(w, limitEntry, `${field}.${limitEntry.key}`, get);
  const nameEntry = get('name');
  const name = nameEntry ? w.text(nameEntry, `${field}.name`) : limit.kind;
  const rule: PolicyRule = { name, limit, line: node?.range ? lines.linePos(node.range[0]).line : undefined };
  const textEntry = get('text');
  if (textEntry) rule.text = w.text(textEntry, `${field}.text`, true);
  const dry = get('dry-run');
  if (dry) rule.dryRun = w.bool(dry, `${field}.dry-run`);
  const when = get('when');
  if (when) {
    const wf = `${field}.when`;
    rule.when = {};
    for (const c of w.map(when.value, wf, WHEN_KEYS, when.keyNode)) {
      const cf = `${wf}.${c.key}`;
      if (c.key === 'client') rule.when.client = w.cidrs(c, cf);
      else if (c.key === 'not-client') rule.when.notClient = w.cidrs(c, cf);
      else if (c.key === 'authenticated') rule.when.authenticated = w.bool(c, cf);
      else {
        rule.when.helo = w.text(c, cf);
        try {
          compileConditions({ helo: rule.when.helo });
        } catch (err) {
          w.fail(c.value, cf, `invalid regular expression: ${(err as Error).message}`);
        }
      }
    }
  }
  return { rule, name, explicitName: nameEntry !== undefined, nameNode: nameEntry?.value ?? null };
}

function parseLimit(w: Walker, e: Entry, f: string, get: (key: string) => Entry | undefined): RuleLimit {
  const kind = e.key as RuleLimit['kind'];
  switch (kind) {
    case 'max-messages':
    case 'max-failed-messages':
    case 'max-concurrent-sessions':
      return { kind, max: w.int(e, f, 1) };
    case 'max-rejected-recipients':
      return { kind, max: w.int(e, f, 0) };
    case 'max-bytes':
      return { kind, max: w.parsed(e, f, parseSize) };
    case 'max-session-age':
      return { kind, maxMs: w.parsed(e, f, parseDuration) };
    case 'max-failure-ratio': {
      const ratio = w.scalar(e, f);
      if (typeof ratio !== 'number' || !(ratio >= 0 && ratio < 1))
        w.fail(e.value, f, 'expected a ratio in [0, 1)');
      const min = get('min-attempts');
      const fm = f.replace(/[^.]+$/, 'min-attempts');
      return { kind, ratio, minAttempts: min ? w.int(min, fm, 1) : 10 };
    }
    case 'max-messages-per-client': {
      const win = get('window');
      const fw = f.replace(/[^.]+$/, 'window');
      return { kind, max: w.int(e, f, 1), windowMs: win ? w.parsed(win, fw, parseDuration) : 3_600_000 };
    }
  }
}

function tooLarge(file: string, err: YamlFileTooLargeError): MilterConfigError {
  return new MilterConfigError(`${file}: policy file too large: ${err.message}`, { file }, { cause: err });
}

/**
 * Read and parse a policy file. Unreadable files, and files over MAX_YAML_FILE_BYTES (1 MiB, refused
 * before parsing), are refused with MilterConfigError too.
 */
export async function loadPolicyFile(path: string): Promise<PolicyConfig> {
  let text: string;
  try {
    text = await readYamlFile(path);
  } catch (err) {
    if (err instanceof YamlFileTooLargeError) throw tooLarge(path, err);
    throw new MilterConfigError(
      `${path}: cannot read policy file: ${(err as Error).message}`,
      { file: path },
      { cause: err },
    );
  }
  return parsePolicy(text, path);
}
