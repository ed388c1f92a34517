/**
 * The embedded default policy: what the daemon enforces when no policy file is given. Documented in
 * docs/policy.md (a unit test keeps the copy there identical to this text).
 */
import { parsePolicy } from './load.js';
import type { PolicyConfig } from './rules.js';

/** The default policy, as YAML (also a starting point for a custom file). */
export const DEFAULT_POLICY_YAML = `# milterd embedded default shutdown policy
version: 1
dry-run: false
hook-timeout: 1s
rules:
  # A legitimate MTA rarely sends more than 100 messages per connection; Postfix and Sendmail
  # clients reconnect after a 421 and deliver the rest.
  - name: max-messages
    max-messages: 100
  # Anti dictionary attack: the 11th rejected recipient is answered 421 and the connection closes.
  - name: max-rejected-recipients
    max-rejected-recipients: 10
  # Sessions older than one hour are closed after their current message.
  - name: max-session-age
    max-session-age: 1h
`;

/** A fresh copy of the parsed default policy. */
export function defaultPolicyConfig(): PolicyConfig {
  return parsePolicy(DEFAULT_POLICY_YAML, '<embedded default policy>');
}
