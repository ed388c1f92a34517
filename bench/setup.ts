/**
 * Builds the comparators from Debian packages, offline:
 *   libmilter   cc + libmilter-dev                       -> bench/native/build/libmilter-filter
 *               (+ an LD_PRELOAD shim forcing TCP_NODELAY  -> bench/native/build/nodelay-preload.so)
 *   go-milter   golang-go + golang-github-emersion-go-milter-dev, GO111MODULE=off GOPATH=/usr/share/gocode
 *                                                        -> bench/native/build/go-milter-filter
 *   C responder cc                                       -> bench/native/build/c-responder
 * Missing packages are installed with apt-get when we are root (`--no-install` to only report them);
 * otherwise the exact `apt-get install` line is printed and the candidate is left out.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';

export const NATIVE_DIR = path.resolve('bench/native');
export const BUILD_DIR = path.join(NATIVE_DIR, 'build');
export const GOPATH_DEBIAN = '/usr/share/gocode';

export interface NativeBuild {
  /** Binary path per candidate, or the reason it is unavailable. */
  binaries: Partial<Record<'libmilter' | 'go-milter' | 'c-responder', string>>;
  preload?: string;
  missing: string[];
}

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function dpkgInstalled(pkg: string): boolean {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function newer(target: string, sources: readonly string[]): boolean {
  if (!existsSync(target)) return false;
  const t = statSync(target).mtimeMs;
  return sources.every((s) => statSync(s).mtimeMs <= t);
}

function run(cmd: string, args: readonly string[], env?: NodeJS.ProcessEnv): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...env } });
}

const PACKAGES: Record<string, string> = {
  cc: 'gcc',
  go: 'golang-go',
  libmilter: 'libmilter-dev',
  'go-milter': 'golang-github-emersion-go-milter-dev',
};

export function setupNative(options: { install: boolean; log: (s: string) => void }): NativeBuild {
  const wanted: string[] = [];
  if (!have('cc')) wanted.push(PACKAGES.cc!);
  if (!dpkgInstalled('libmilter-dev')) wanted.push(PACKAGES.libmilter!);
  if (!have('go')) wanted.push(PACKAGES.go!);
  if (!existsSync(path.join(GOPATH_DEBIAN, 'src/github.com/emersion/go-milter')))
    wanted.push(PACKAGES['go-milter']!);
  const missing: string[] = [];
  if (wanted.length > 0) {
    if (options.install && isRoot()) {
      options.log(`setup: installing ${wanted.join(' ')} with apt-get`);
      try {
        run('apt-get', ['install', '-y', '-q', '-o', 'DPkg::Lock::Timeout=600', ...wanted], {
          DEBIAN_FRONTEND: 'noninteractive',
        });
      } catch {
        try {
          run('apt-get', ['update', '-q']);
          run('apt-get', ['install', '-y', '-q', '-o', 'DPkg::Lock::Timeout=600', ...wanted], {
            DEBIAN_FRONTEND: 'noninteractive',
          });
        } catch (err) {
          options.log(`setup: apt-get failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    } else {
      options.log(`setup: missing Debian packages; run as root: apt-get install -y ${wanted.join(' ')}`);
    }
  }
  mkdirSync(BUILD_DIR, { recursive: true });
  const out: NativeBuild = { binaries: {}, missing };
  const build = (
    name: 'libmilter' | 'go-milter' | 'c-responder',
    target: string,
    sources: string[],
    fn: () => void,
  ): void => {
    try {
      if (!newer(target, sources)) {
        options.log(`setup: building ${name}`);
        fn();
      }
      out.binaries[name] = target;
    } catch (err) {
      missing.push(`${name}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
    }
  };
  const src = (f: string): string => path.join(NATIVE_DIR, f);
  if (have('cc')) {
    build('c-responder', path.join(BUILD_DIR, 'c-responder'), [src('c-responder.c')], () =>
      run('cc', ['-O2', '-o', path.join(BUILD_DIR, 'c-responder'), src('c-responder.c')]),
    );
    if (dpkgInstalled('libmilter-dev')) {
      build('libmilter', path.join(BUILD_DIR, 'libmilter-filter'), [src('libmilter-filter.c')], () =>
        run('cc', [
          '-O2',
          '-o',
          path.join(BUILD_DIR, 'libmilter-filter'),
          src('libmilter-filter.c'),
          '-lmilter',
          '-lpthread',
        ]),
      );
      const preload = path.join(BUILD_DIR, 'nodelay-preload.so');
      try {
        if (!newer(preload, [src('nodelay-preload.c')])) {
          run('cc', ['-O2', '-shared', '-fPIC', '-o', preload, src('nodelay-preload.c'), '-ldl']);
        }
        out.preload = preload;
      } catch {
        missing.push('nodelay-preload.so: build failed');
      }
    } else missing.push('libmilter: package libmilter-dev is not installed');
  } else missing.push('c-responder, libmilter: no C compiler (package gcc)');
  if (have('go') && existsSync(path.join(GOPATH_DEBIAN, 'src/github.com/emersion/go-milter'))) {
    build('go-milter', path.join(BUILD_DIR, 'go-milter-filter'), [src('go-milter/main.go')], () =>
      // Offline against the Debian-packaged source: GOPATH mode, no module download.
      run('go', ['build', '-o', path.join(BUILD_DIR, 'go-milter-filter'), src('go-milter/main.go')], {
        GO111MODULE: 'off',
        GOPATH: GOPATH_DEBIAN,
        GOFLAGS: '',
        GOCACHE: path.join(BUILD_DIR, 'gocache'),
        GOPROXY: 'off',
      }),
    );
  } else missing.push('go-milter: needs packages golang-go and golang-github-emersion-go-milter-dev');
  return out;
}
