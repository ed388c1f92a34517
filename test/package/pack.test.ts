/**
 * The npm package as `npm pack` builds it from the repository (after the build): its file list, its entry
 * points, its source and declaration maps, its dependency ranges, and its types as a CommonJS project
 * without `esModuleInterop` sees them (compiled with the repository's tsc, then run).
 *
 * The consumer installs the unpacked tarball as node_modules/milterd, next to links to the repository's
 * copies of its dependencies: nothing is downloaded.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { cleanEnv, ROOT } from '../cli/helpers.js';

const exec = promisify(execFile);

interface PackResult {
  filename: string;
  files: Array<{ path: string }>;
}

interface Manifest {
  license: string;
  main: string;
  types: string;
  bin: Record<string, string>;
  exports: Record<string, Record<string, string>>;
  dependencies: Record<string, string>;
}

let work = '';
/** The unpacked package (the tarball's `package/`). */
let pkgDir = '';
let files: string[] = [];
let manifest: Manifest;

/** The environment of an inner npm: without the npm_* variables of an enclosing `npm test`. */
function npmEnv(): NodeJS.ProcessEnv {
  const env = cleanEnv();
  for (const key of Object.keys(env)) if (key.toLowerCase().startsWith('npm_')) delete env[key];
  return env;
}

before(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'milterd-pack-'));
  const { stdout } = await exec('npm', ['pack', '--json', '--pack-destination', work], {
    cwd: ROOT,
    env: npmEnv(),
    maxBuffer: 64 * 1024 * 1024,
  });
  const [result] = JSON.parse(stdout) as PackResult[];
  assert.ok(result, `npm pack --json printed no result: ${stdout}`);
  files = result.files.map((f) => f.path).sort();
  pkgDir = path.join(work, 'consumer', 'node_modules', 'milterd');
  await mkdir(pkgDir, { recursive: true });
  await exec('tar', ['-xzf', path.join(work, result.filename), '-C', pkgDir, '--strip-components=1']);
  manifest = JSON.parse(await readFile(path.join(pkgDir, 'package.json'), 'utf8')) as Manifest;
});

after(() => (work === '' ? undefined : rm(work, { recursive: true, force: true })));

test('npm pack: LICENSE, README, the binary, the library with its types and maps; no tests, benchmarks or fixtures', async () => {
  for (const f of [
    'package.json',
    'LICENSE',
    'README.md',
    'bin/milterd.js',
    'dist/src/index.js',
    'dist/src/index.d.ts',
    'dist/src/index.js.map',
    'dist/src/index.d.ts.map',
    'src/index.ts',
  ])
    assert.ok(files.includes(f), `${f} is in the package`);
  const stray = files.filter((f) =>
    /^(test|bench|fixtures|scripts|examples|docs|dist\/(test|bench))\//.test(f),
  );
  assert.deepEqual(stray, [], 'no test, benchmark, fixture or script files');
  assert.equal(manifest.license, 'MIT');
  const license = await readFile(path.join(pkgDir, 'LICENSE'), 'utf8');
  assert.match(license, /^MIT License\n\nCopyright \(c\) \d{4} the milterd authors\n/);
  // Every module has both maps.
  for (const f of files.filter((p) => p.startsWith('dist/src/') && p.endsWith('.js'))) {
    assert.ok(files.includes(`${f}.map`), `${f}.map`);
    assert.ok(files.includes(f.replace(/\.js$/, '.d.ts.map')), `${f}: its .d.ts.map`);
  }
});

test('npm pack: every entry point of package.json (main, types, bin, exports) is in the package', () => {
  const targets: string[] = [manifest.main, manifest.types, ...Object.values(manifest.bin)];
  for (const conditions of Object.values(manifest.exports)) targets.push(...Object.values(conditions));
  assert.ok(targets.length >= 7);
  for (const target of targets) {
    const rel = path.posix.normalize(target);
    assert.ok(files.includes(rel), `${target} is in the package`);
  }
});

test('npm pack: every source and declaration map resolves to sources in the package', async () => {
  const maps = files.filter((f) => f.endsWith('.map'));
  assert.ok(maps.length > 20);
  for (const map of maps) {
    const json = JSON.parse(await readFile(path.join(pkgDir, map), 'utf8')) as {
      file: string;
      sourceRoot?: string;
      sources: string[];
      sourcesContent?: Array<string | null>;
    };
    const dir = path.posix.dirname(map);
    assert.equal(path.posix.join(dir, json.file), map.slice(0, -'.map'.length), `${map}: its "file"`);
    assert.ok(json.sources.length > 0, `${map}: sources`);
    json.sources.forEach((source, i) => {
      const resolved = path.posix.normalize(path.posix.join(dir, json.sourceRoot ?? '', source));
      assert.ok(
        files.includes(resolved) || typeof json.sourcesContent?.[i] === 'string',
        `${map}: source ${source} (${resolved}) is neither in the package nor inlined`,
      );
    });
    // The generated file points at its map.
    const generated = await readFile(path.join(pkgDir, map.slice(0, -'.map'.length)), 'utf8');
    assert.ok(
      generated.trimEnd().endsWith(`//# sourceMappingURL=${path.posix.basename(map)}`),
      `${map}: referenced by its file`,
    );
  }
});

test('npm pack: dependencies are caret ranges that the locked versions satisfy (consumers can deduplicate)', async () => {
  const lock = JSON.parse(await readFile(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { version?: string; dependencies?: Record<string, string> }>;
  };
  assert.deepEqual(
    lock.packages['']?.dependencies,
    manifest.dependencies,
    'package-lock.json has the same ranges',
  );
  const deps = Object.entries(manifest.dependencies);
  assert.ok(deps.length > 0);
  for (const [name, range] of deps) {
    const m = /^\^(\d+)\.(\d+)\.(\d+)$/.exec(range);
    assert.ok(m, `${name}: ${range} is a caret range`);
    const locked = lock.packages[`node_modules/${name}`]?.version ?? '';
    const v = /^(\d+)\.(\d+)\.(\d+)$/.exec(locked);
    assert.ok(v, `${name}: locked version ${locked}`);
    const [, major, minor, patch] = m.map(Number) as [number, number, number, number];
    const [, lmajor, lminor, lpatch] = v.map(Number) as [number, number, number, number];
    assert.equal(lmajor, major, `${name}: locked ${locked} within ${range}`);
    assert.ok(
      lminor > minor || (lminor === minor && lpatch >= patch),
      `${name}: locked ${locked} within ${range}`,
    );
  }
});

test('npm pack: a CommonJS TypeScript project without esModuleInterop compiles against the types and runs', async (t) => {
  const consumer = path.join(work, 'consumer');
  // The package's dependencies (and Node's types) from the repository's node_modules.
  for (const name of [...Object.keys(manifest.dependencies), '@types']) {
    await mkdir(path.dirname(path.join(consumer, 'node_modules', name)), { recursive: true });
    await symlink(path.join(ROOT, 'node_modules', name), path.join(consumer, 'node_modules', name));
  }
  // No "type": "module": index.ts is a CommonJS module, and imports become require() (require(esm): Node
  // 20.19+, the engines range; TypeScript's "node20" module mode allows it).
  await writeFile(
    path.join(consumer, 'package.json'),
    '{ "name": "milterd-cjs-consumer", "private": true }\n',
  );
  await writeFile(
    path.join(consumer, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'node20',
        target: 'ES2022',
        strict: true,
        esModuleInterop: false,
        allowSyntheticDefaultImports: false,
        // The package's .d.ts files are checked too: that is the point.
        skipLibCheck: false,
        types: ['node'],
        outDir: 'out',
      },
      files: ['index.ts'],
    }),
  );
  await writeFile(
    path.join(consumer, 'index.ts'),
    `import { Decision, createLogger, createMilterServer, parseSocketSpec, type Filter, type MilterServer } from 'milterd';
import { testFilter, type Transcript } from 'milterd/testing';

interface Priv { rejected: number }
const filter: Filter<Priv> = {
  name: 'consumer',
  connect(ctx) {
    ctx.priv = { rejected: 0 };
  },
  envrcpt(ctx, recipient) {
    if (!recipient.includes('spamtrap')) return Decision.continue;
    if (ctx.priv) ctx.priv.rejected++;
    return Decision.reject({ code: 550, xcode: '5.7.1', text: 'No such user' });
  },
};
const server: MilterServer = createMilterServer({ filter, logger: createLogger({ level: 'silent' }) });
const transcript: Promise<Transcript<Priv>> = testFilter(filter, {
  messages: [{ sender: '<a@example.org>', recipients: ['<spamtrap@example.net>'], body: 'hi\\r\\n' }],
});
void transcript.then((tr) => {
  console.log(JSON.stringify({ spec: parseSocketSpec('inet:8890@127.0.0.1'), listen: typeof server.listen, rcpt: tr.messages[0]?.envrcpt[0] }));
});
`,
  );
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const out = await exec(process.execPath, [tsc, '-p', consumer], { cwd: consumer }).then(
    (r) => r.stdout,
    (err: { stdout?: string }) => err.stdout ?? String(err),
  );
  // tsc prints "FILE(LINE,COL): error TS…" with FILE relative to the consumer. Errors in the consumer's
  // own file or in milterd's declarations fail; errors inside other packages' declarations are theirs
  // (pino's own .d.ts default-imports thread-stream) and are only reported.
  const errors = out.split('\n').filter((l) => /^\S.*\(\d+,\d+\): error TS\d+/.test(l));
  const ours = errors.filter((l) => !l.includes('node_modules/') || l.startsWith('node_modules/milterd/'));
  assert.deepEqual(ours, [], `tsc on the CommonJS consumer:\n${out}`);
  for (const l of errors) t.diagnostic(`in a dependency's declarations (not milterd's): ${l}`);

  const js = await readFile(path.join(consumer, 'out', 'index.js'), 'utf8');
  assert.match(js, /require\("milterd"\)/, 'compiled to CommonJS');
  assert.ok(existsSync(path.join(consumer, 'out', 'index.js')));
  const run = await exec(process.execPath, ['--no-warnings', path.join(consumer, 'out', 'index.js')], {
    cwd: consumer,
    env: npmEnv(),
  });
  assert.deepEqual(JSON.parse(run.stdout), {
    spec: { kind: 'inet', port: 8890, host: '127.0.0.1', family: 4 },
    listen: 'function',
    rcpt: { kind: 'replyCode', text: '550 5.7.1 No such user' },
  });
});
