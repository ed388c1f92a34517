// Every scenario of fixtures/testcases behind a private Sendmail 8.17 (milter over TCP).
import { defineMtaSuite } from './harness/suite.js';

await defineMtaSuite('e2e: Sendmail 8.17, milter on inet:127.0.0.1', { kind: 'sendmail', transport: 'inet' });
