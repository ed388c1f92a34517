#!/usr/bin/env bash
# The whole test suite: lint + format check, type check, build, then every test under test/
# (unit, integration, CLI, interop with miltertest, end-to-end behind real Postfix and Sendmail) on the
# machine's Node, then the unit, integration and CLI tests again under each Node version pinned in
# scripts/test-nodes.sh (22, 24, 26; fetched once from the npm registry and cached).
# The end-to-end tests need root and Debian packages; scripts/install-test-deps.sh installs them
# (.ci/run calls it first). Missing packages make those tests fail, never skip.
# Every run goes to the end; the command fails if any of them failed. The last lines are one summary
# in the test runner's own format, added up over all runs, with a line per run above it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ "${MILTERD_SKIP_DEPS:-}" != 1 ]; then
  bash scripts/install-test-deps.sh --if-missing
fi
npx eslint .
npx prettier --check .
npx tsc -p tsconfig.json --noEmit
rm -rf dist && npx tsc -p tsconfig.json
# The example filters import 'milterd' by its package name, as users do: built after the package itself.
rm -rf examples/filters/dist && npx tsc -p examples/filters/tsconfig.json
# Only *.test.js files: given a directory, Node 20's runner would also load every helper module as a
# "test" with no assertions.
mapfile -t all < <(find dist/test examples/filters/dist/test -name '*.test.js' | sort)
mapfile -t matrix < <(find dist/test/unit dist/test/integration dist/test/cli examples/filters/dist/test -name '*.test.js' | sort)

# What node picks by itself on Node 20 and 22 (spec on a terminal, TAP otherwise), for every version;
# each run also writes TAP to a file, for the summary.
if [ -t 1 ]; then REPORTER=spec; else REPORTER=tap; fi
RUNS="$(mktemp -d)"
trap 'rm -rf "$RUNS"' EXIT
FAILED=0
LABELS=()

# run LABEL NODE FILE...
run() {
  local label="$1" node="$2"
  shift 2
  local n="${#LABELS[@]}"
  LABELS+=("$label")
  if ! "$node" --test --test-concurrency=1 --test-timeout=600000 \
    --test-reporter="$REPORTER" --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$RUNS/$n.tap" "$@"; then
    FAILED=1
  fi
}

run "Node $(node -p process.versions.node), every test" node "${all[@]}"
if nodes="$(bash scripts/test-nodes.sh)"; then
  while read -r version bin; do
    echo "# Node $version: unit, integration and CLI tests"
    run "Node $version, unit + integration + cli" "$bin" "${matrix[@]}"
  done <<<"$nodes"
else
  echo "# the pinned Node versions could not be fetched (scripts/test-nodes.sh): their runs are missing" >&2
  FAILED=1
fi

# The summary: one line per run, then the totals as the test runner prints them.
if [ "$REPORTER" = spec ]; then MARK="ℹ"; else MARK="#"; fi
KEYS=(tests suites pass fail cancelled skipped todo duration_ms)
declare -A TOTAL=()
for key in "${KEYS[@]}"; do TOTAL[$key]=0; done
for i in "${!LABELS[@]}"; do
  declare -A got=()
  while read -r key value; do got[$key]="$value"; done < <(
    sed -nE 's/^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ([0-9.]+)$/\1 \2/p' "$RUNS/$i.tap" 2>/dev/null
  )
  if [ -z "${got[tests]:-}" ]; then
    echo "$MARK ${LABELS[$i]}: no summary (the run did not finish)"
    FAILED=1
  else
    echo "$MARK ${LABELS[$i]}: tests ${got[tests]}, pass ${got[pass]}, fail ${got[fail]}, cancelled ${got[cancelled]}"
    for key in "${KEYS[@]}"; do
      TOTAL[$key]="$(awk -v a="${TOTAL[$key]}" -v b="${got[$key]:-0}" 'BEGIN { printf "%.10g", a + b }')"
    done
  fi
  unset got
done
for key in "${KEYS[@]}"; do echo "$MARK $key ${TOTAL[$key]}"; done
exit "$FAILED"
