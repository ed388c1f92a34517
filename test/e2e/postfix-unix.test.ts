// The scenarios behind a private Postfix 3.7 talking to milterd over a Unix socket (smtpd_milters =
// unix:/path). The two slow timeout scenarios run on the TCP suite only: the transport does not change them.
import { defineMtaSuite } from './harness/suite.js';

const SLOW = ['progress-slow-eom.yaml', 'filter-hangs.yaml'];

await defineMtaSuite(
  'e2e: Postfix 3.7, milter on a Unix socket',
  { kind: 'postfix', transport: 'unix' },
  (s) => !SLOW.includes(s.file),
);
