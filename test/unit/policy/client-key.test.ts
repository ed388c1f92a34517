import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientKey, formatIpAddress, parseIpAddress, NetworkSet } from '../../../src/policy/values.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { parsePolicy } from '../../../src/policy/load.js';
import { MilterConfigError } from '../../../src/errors.js';
import { prng } from '../../helpers/prng.js';

test('random IPv6 addresses in every notation: parsed and printed like the WHATWG URL parser (RFC 5952)', () => {
  const rand = prng(0x1b6_0064);
  for (let n = 0; n < 5000; n++) {
    // Groups biased towards 0 so that runs of zeros (the :: cases) are common.
    const groups = Array.from({ length: 8 }, () => (rand() < 0.5 ? 0 : Math.floor(rand() * 0x10000)));
    let text = groups.map((g) => g.toString(16).padStart(rand() < 0.5 ? 4 : 1, '0')).join(':');
    if (rand() < 0.3) text = text.toUpperCase();
    if (rand() < 0.2) text = `IPv6:${text}`;
    const ip = parseIpAddress(text);
    assert.ok(ip, text);
    const oracle = new URL(`http://[${text.replace(/^IPv6:/, '')}]/`).hostname.slice(1, -1);
    if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
      assert.equal(ip.type, 'ipv4', `${text} is IPv4-mapped`);
    } else {
      assert.equal(formatIpAddress(ip), oracle, text);
      // And the compressed form parses back to the same bytes.
      assert.deepEqual(parseIpAddress(oracle)?.bytes, ip.bytes);
    }
  }
});

test('clientKey: the network at the prefix, the address itself at full length', () => {
  const cases: Array<[string, string | undefined, string | undefined]> = [
    // address, default key (/32, /64), key with { ipv4: 24, ipv6: 56 }
    ['192.0.2.7', '192.0.2.7', '192.0.2.0/24'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64', '2001:db8:1::/56'],
    ['IPv6:2001:0db8:0001:00ff:0000:0000:0000:0005', '2001:db8:1:ff::/64', '2001:db8:1::/56'],
    ['ipv6:2001:DB8::1', '2001:db8::/64', '2001:db8::/56'],
    ['fe80::1%eth0', 'fe80::/64', 'fe80::/56'],
    ['[2001:db8::1]', '2001:db8::/64', '2001:db8::/56'],
    ['::ffff:192.0.2.7', '192.0.2.7', '192.0.2.0/24'],
    ['::FFFF:C000:0207', '192.0.2.7', '192.0.2.0/24'],
    ['0:0:0:0:0:ffff:192.0.2.7', '192.0.2.7', '192.0.2.0/24'],
    ['::1', '::/64', '::/56'],
    ['/run/milter/client.sock', '/run/milter/client.sock', '/run/milter/client.sock'],
    ['', undefined, undefined],
  ];
  for (const [address, byDefault, custom] of cases) {
    assert.equal(clientKey(address), byDefault, address);
    assert.equal(clientKey(address, { ipv4: 24, ipv6: 56 }), custom, address);
  }
  assert.equal(clientKey('2001:db8::1', { ipv4: 32, ipv6: 128 }), '2001:db8::1');
  assert.equal(clientKey('2001:db8:1:2:ffff::', { ipv4: 32, ipv6: 65 }), '2001:db8:1:2:8000::/65');
  assert.equal(clientKey('192.0.2.7', { ipv4: 0, ipv6: 0 }), '0.0.0.0/0');
  assert.equal(clientKey('2001:db8::1', { ipv4: 0, ipv6: 0 }), '::/0');
});

test('ShutdownPolicy.clientKey uses the configured prefix; bad prefixes are refused', () => {
  assert.deepEqual(new ShutdownPolicy().clientPrefix, { ipv4: 32, ipv6: 64 });
  const p = new ShutdownPolicy({ clientPrefix: { ipv6: 48 } });
  assert.deepEqual(p.clientPrefix, { ipv4: 32, ipv6: 48 });
  assert.equal(p.clientKey('2001:db8:1:2::1'), '2001:db8:1::/48');
  for (const bad of [{ ipv6: 129 }, { ipv4: 33 }, { ipv4: -1 }, { ipv6: 1.5 }]) {
    assert.throws(() => new ShutdownPolicy({ clientPrefix: bad }), MilterConfigError);
  }
});

test('policy file: client-prefix is parsed, and out-of-range or unknown keys are located', () => {
  assert.deepEqual(parsePolicy('client-prefix:\n  ipv4: 24\n  ipv6: 56\n').clientPrefix, {
    ipv4: 24,
    ipv6: 56,
  });
  const refusals: Array<[string, number, string]> = [
    ['client-prefix:\n  ipv6: 129\n', 2, 'client-prefix.ipv6'],
    ['client-prefix:\n  ipv4: 33\n', 2, 'client-prefix.ipv4'],
    ['client-prefix:\n  ipv4: -1\n', 2, 'client-prefix.ipv4'],
    ['client-prefix:\n  ipv5: 8\n', 2, 'client-prefix.ipv5'],
    ['client-prefix: 64\n', 1, 'client-prefix'],
  ];
  for (const [yaml, line, field] of refusals) {
    assert.throws(
      () => parsePolicy(yaml, 'p.yaml'),
      (err: unknown) => err instanceof MilterConfigError && err.line === line && err.field === field,
      yaml,
    );
  }
});

test('when.client matches zone ids, tags and every IPv4-mapped form', () => {
  const set = new NetworkSet(['192.0.2.0/24', 'fe80::/10', '2001:db8::/32']);
  for (const a of ['::ffff:192.0.2.9', '::ffff:c000:209', 'fe80::1%eth0', 'IPv6:2001:0db8:0:0:0:0:0:1']) {
    assert.equal(set.has(a), true, a);
  }
  for (const a of ['::ffff:198.51.100.1', '2001:db9::1', '/run/x.sock', '', undefined]) {
    assert.equal(set.has(a), false, String(a));
  }
});
