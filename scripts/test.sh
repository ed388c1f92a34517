#!/usr/bin/env bash
# The whole test suite: lint + format check, type check, build, then every test under test/
# (unit, integration, CLI, interop with miltertest, end-to-end behind real Postfix and Sendmail).
# The end-to-end tests need root and Debian packages; scripts/install-test-deps.sh installs them
# (.ci/run calls it first). Missing packages make those tests fail, never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ "${MILTERD_SKIP_DEPS:-}" != 1 ]; then
  bash scripts/install-test-deps.sh --if-missing
fi
npx eslint .
npx prettier --check .
npx tsc -p tsconfig.json --noEmit
rm -rf dist && npx tsc -p tsconfig.json
# Only *.test.js files: given a directory, Node 20's runner would also load every helper module as a
# "test" with no assertions.
mapfile -t tests < <(find dist/test -name '*.test.js' | sort)
exec node --test --test-concurrency=1 --test-timeout=600000 "${tests[@]}"
