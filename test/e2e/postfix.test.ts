// Every scenario of fixtures/testcases behind a private Postfix 3.7 (milter over TCP).
import { defineMtaSuite } from './harness/suite.js';

await defineMtaSuite('e2e: Postfix 3.7, milter on inet:127.0.0.1', { kind: 'postfix', transport: 'inet' });
