/**
 * A member's `when:`: parsed from a config value, and judged with three values (true, false, not known
 * yet) as the facts arrive. The policy's part (client, not-client, authenticated, helo) is the policy's
 * own matcher (`compileConditions`); the pipeline adds sender/recipient domains and the MTA's
 * `{daemon_name}`/`{daemon_port}`.
 */
import { MilterConfigError } from '../errors.js';
import type { ConnectionInfo } from '../filter.js';
import { compileConditions } from '../policy/rules.js';
import { didYouMean } from '../policy/yaml-file.js';
import { parseCidr, type Cidr } from '../policy/values.js';
import type { MemberCondition } from './types.js';

/** The keys of a member's `when:` mapping, as written in a config file. */
export const MEMBER_CONDITION_KEYS = [
  'client',
  'not-client',
  'authenticated',
  'helo',
  'sender-domain',
  'recipient-domain',
  'daemon-name',
  'daemon-port',
] as const;

type Where = { file?: string; field?: string };

function fail(where: Where, key: string | undefined, message: string): never {
  const field = key === undefined ? where.field : where.field ? `${where.field}.${key}` : key;
  const prefix = [where.file, field].filter((s) => s !== undefined && s !== '').join(': ');
  throw new MilterConfigError(`${prefix === '' ? '' : `${prefix}: `}${message}`, {
    ...(where.file === undefined ? {} : { file: where.file }),
    ...(field === undefined ? {} : { field }),
  });
}

/** A list of strings (a single string is a list of one). */
function strings(v: unknown, where: Where, key: string): string[] {
  const list = Array.isArray(v) ? (v as unknown[]) : [v];
  if (list.length === 0) fail(where, key, 'expected at least one value');
  return list.map((x, i) => {
    if (typeof x !== 'string' || x.trim() === '') fail(where, `${key}[${i}]`, 'expected a non-empty string');
    return x.trim();
  });
}

function domains(v: unknown, where: Where, key: string): string[] {
  return strings(v, where, key).map((d, i) => {
    const bare = d.toLowerCase().replace(/^@/, '');
    if (!/^[a-z0-9._-]+$/.test(bare) && !/^\[[0-9a-f:.]+\]$/.test(bare)) {
      fail(where, `${key}[${i}]`, `"${d}" is not a domain name`);
    }
    return bare;
  });
}

/**
 * Parse a member's `when:` value (a mapping with the keys of MEMBER_CONDITION_KEYS, as loaded from YAML
 * or JSON). Throws MilterConfigError naming the file and the field.
 */
export function parseMemberCondition(raw: unknown, where: Where): MemberCondition {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    fail(where, undefined, 'expected a mapping (key: value)');
  }
  const out: MemberCondition = {};
  for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
    switch (key) {
      case 'client':
      case 'not-client': {
        const blocks: Cidr[] = strings(v, where, key).map((s, i) => {
          try {
            return parseCidr(s);
          } catch (err) {
            return fail(where, `${key}[${i}]`, (err as Error).message);
          }
        });
        if (key === 'client') out.client = blocks;
        else out.notClient = blocks;
        break;
      }
      case 'authenticated':
        if (typeof v !== 'boolean') fail(where, key, 'expected true or false');
        out.authenticated = v;
        break;
      case 'helo':
        if (typeof v !== 'string') fail(where, key, 'expected a regular expression');
        try {
          compileConditions({ helo: v });
        } catch (err) {
          fail(where, key, `invalid regular expression: ${(err as Error).message}`);
        }
        out.helo = v;
        break;
      case 'sender-domain':
        out.senderDomain = domains(v, where, key);
        break;
      case 'recipient-domain':
        out.recipientDomain = domains(v, where, key);
        break;
      case 'daemon-name':
        out.daemonName = strings(v, where, key);
        break;
      case 'daemon-port': {
        const list = Array.isArray(v) ? (v as unknown[]) : [v];
        if (list.length === 0) fail(where, key, 'expected at least one port');
        out.daemonPort = list.map((p, i) => {
          const n = typeof p === 'string' && /^\d+$/.test(p.trim()) ? Number(p) : p;
          if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65535) {
            fail(where, `${key}[${i}]`, 'expected a port number (0..65535)');
          }
          return n;
        });
        break;
      }
      default: {
        const guess = didYouMean(key, MEMBER_CONDITION_KEYS);
        fail(
          where,
          key,
          `unknown condition${guess === undefined ? '' : ` (did you mean ${guess}?)`}; known: ${MEMBER_CONDITION_KEYS.join(', ')}`,
        );
      }
    }
  }
  return out;
}

/** What a condition is judged on, as far as it is known at the current stage. */
export interface ConditionInput {
  connection: ConnectionInfo | undefined;
  macro(name: string): string | undefined;
  /** The HELO name; `helo` is judged once `heloKnown` (at HELO, or at MAIL without one). */
  helo: string | undefined;
  heloKnown: boolean;
  /** The envelope sender (with brackets), once MAIL came. */
  sender: string | undefined;
  /** The recipients, once all of them came (the first content command). */
  recipients: readonly string[] | undefined;
}

/** A compiled condition: true, false, or undefined while a fact it needs is not known yet. */
export type ConditionTest = (input: ConditionInput) => boolean | undefined;

/** The domain of `<local@domain>` (lower case), or undefined (`<>`, no `@`). */
export function domainOf(address: string): string | undefined {
  const bare = address.replace(/^<|>$/g, '');
  const at = bare.lastIndexOf('@');
  return at < 0 || at === bare.length - 1 ? undefined : bare.slice(at + 1).toLowerCase();
}

/** Compile a member's condition (its policy part with the policy's own matcher). */
export function compileMemberCondition(when: MemberCondition | undefined): ConditionTest | undefined {
  if (when === undefined || Object.keys(when).length === 0) return undefined;
  const client =
    when.client !== undefined || when.notClient !== undefined
      ? compileConditions({
          ...(when.client === undefined ? {} : { client: when.client }),
          ...(when.notClient === undefined ? {} : { notClient: when.notClient }),
        })
      : undefined;
  const helo = when.helo === undefined ? undefined : compileConditions({ helo: when.helo });
  const auth =
    when.authenticated === undefined ? undefined : compileConditions({ authenticated: when.authenticated });
  const senders = when.senderDomain === undefined ? undefined : new Set(when.senderDomain);
  const rcpts = when.recipientDomain === undefined ? undefined : new Set(when.recipientDomain);
  const names = when.daemonName === undefined ? undefined : new Set(when.daemonName);
  const ports = when.daemonPort === undefined ? undefined : new Set(when.daemonPort.map(String));
  return (input) => {
    let unknown = false;
    const facts = {
      client: input.connection,
      helo: input.helo,
      authenticated: input.macro('auth_authen') || undefined,
    };
    if (client !== undefined && !client(facts)) return false;
    if (names !== undefined && !names.has(input.macro('daemon_name') ?? '')) return false;
    if (ports !== undefined && !ports.has(input.macro('daemon_port') ?? '')) return false;
    if (helo !== undefined) {
      if (!input.heloKnown) unknown = true;
      else if (!helo(facts)) return false;
    }
    if (auth !== undefined || senders !== undefined) {
      if (input.sender === undefined) unknown = true;
      else {
        if (auth !== undefined && !auth(facts)) return false;
        if (senders !== undefined && !senders.has(domainOf(input.sender) ?? '')) return false;
      }
    }
    if (rcpts !== undefined) {
      if (input.recipients === undefined) unknown = true;
      else if (!input.recipients.some((r) => rcpts.has(domainOf(r) ?? ''))) return false;
    }
    return unknown ? undefined : true;
  };
}
