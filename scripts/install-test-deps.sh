#!/usr/bin/env bash
# Installs what the interop and end-to-end tests need on Debian 12 (run as root; CI calls it on a
# clean machine):
#   * postfix 3.7 from Debian, with debconf "No configuration" and a policy-rc.d that forbids starting
#     services while it is installed (the system Postfix is never started; the tests run private
#     instances with `postfix -c DIR`);
#   * sendmail-bin 8.17 unpacked privately (apt-get download + dpkg -x) into $MILTERD_SENDMAIL_ROOT
#     (default /opt/milterd-test/sendmail) because it conflicts with postfix, plus the shared libraries
#     its binary needs (ordinary library packages, installed normally);
#   * sendmail-cf (m4 macros; installed normally unless apt would remove something for it, then it is
#     unpacked privately into the same folder), m4, swaks, strace, miltertest, libmilter-dev, gcc;
#   * sasl2-bin + SASL plugins (saslpasswd2 and the PLAIN/sasldb modules: the private Sendmail's SMTP AUTH);
#   * systemd, for systemd-analyze (test/package/systemd.test.ts checks examples/systemd/). Only the
#     package: it does not become init (that is systemd-sysv) and nothing is started;
#   * redis-server 7.0 (with redis-tools' redis-cli), for the policy store tests: they start private
#     servers and Clusters on loopback; the system service is never started (policy-rc.d); openssl makes
#     the private CA and certificates of the TLS (rediss://) tests;
#   * prometheus, for promtool (test/cli/promtool.test.ts checks examples/prometheus/ and a live scrape);
#     its service is never started (policy-rc.d);
#   * podman, runc, debootstrap, iptables, with their recommends (the container test builds and runs the
#     Dockerfile offline, docs in scripts/container-base.sh);
#   * opendkim, opendkim-tools, opendmarc, spamassassin, spamd, spamc, spamass-milter: the third-party
#     milters of the pipeline tests (test/e2e/pipeline*.test.ts). Their services are never started
#     (policy-rc.d); the tests run private instances on loopback (test/e2e/harness/milters.ts).
#
# Usage: scripts/install-test-deps.sh [--if-missing]
#   --if-missing  do nothing (quickly) when everything is already there.
# Idempotent: a second run changes nothing. Prints what it did. Nothing under /etc is edited by hand.
set -euo pipefail

SENDMAIL_ROOT="${MILTERD_SENDMAIL_ROOT:-/opt/milterd-test/sendmail}"
SENDMAIL_BIN="$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail"
IF_MISSING=0
for arg in "$@"; do
  case "$arg" in
    --if-missing) IF_MISSING=1 ;;
    -h | --help)
      sed -n '2,28p' "$0"
      exit 0
      ;;
    *)
      echo "install-test-deps: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

say() { echo "install-test-deps: $*"; }
die() {
  echo "install-test-deps: ERROR: $*" >&2
  exit 1
}

# Packages installed the ordinary way (binary we check for -> package).
# prometheus ships promtool (`check rules`, `check metrics` in test/cli); its service is never started
# (policy-rc.d below) and the tests run promtool only. python3 binds the Unix datagram socket the syslog
# test receives on (Node cannot); `logger` (bsdutils) is essential in Debian and always there.
APT_PACKAGES=(m4 swaks strace miltertest libmilter-dev gcc sasl2-bin libsasl2-modules libsasl2-modules-db systemd prometheus python3 redis-server redis-tools openssl
  opendkim opendkim-tools opendmarc spamassassin spamd spamc spamass-milter)
# Container tooling, installed with recommends as in the verified podman recipe (netavark, buildah...).
CONTAINER_PACKAGES=(podman runc debootstrap iptables)
have_pkg() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

sendmail_cf_dir() {
  if [ -f /usr/share/sendmail/cf/m4/cf.m4 ]; then
    echo /usr/share/sendmail/cf
  elif [ -f "$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4" ]; then
    echo "$SENDMAIL_ROOT/usr/share/sendmail/cf"
  else
    return 1
  fi
}

sendmail_ok() {
  [ -x "$SENDMAIL_BIN" ] || return 1
  ! ldd "$SENDMAIL_BIN" 2>/dev/null | grep -q 'not found'
}

missing() {
  local out=()
  have_pkg postfix && [ -x /usr/sbin/postfix ] || out+=(postfix)
  sendmail_ok || out+=(sendmail-bin)
  sendmail_cf_dir >/dev/null || out+=(sendmail-cf)
  command -v promtool >/dev/null || out+=(promtool)
  local p
  for p in "${APT_PACKAGES[@]}" "${CONTAINER_PACKAGES[@]}"; do have_pkg "$p" || out+=("$p"); done
  echo "${out[*]:-}"
}

MISSING="$(missing)"
if [ "$IF_MISSING" = 1 ] && [ -z "$MISSING" ]; then
  say "everything is already installed (postfix, private sendmail in $SENDMAIL_ROOT, sendmail-cf, ${APT_PACKAGES[*]} ${CONTAINER_PACKAGES[*]}); nothing to do"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (missing: ${MISSING:-nothing})"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian 12"
say "missing: ${MISSING:-nothing}"

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

UPDATED=0
apt_update_once() {
  if [ "$UPDATED" = 0 ]; then
    say "apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
    UPDATED=1
  fi
}

# --- policy-rc.d: forbid starting services while packages are installed --------------------------
POLICY="${MILTERD_POLICY_RC_D:-/usr/sbin/policy-rc.d}" # override only to test this script
POLICY_DONE=0
POLICY_BACKUP=""
POLICY_CREATED=0
WORK=""
on_exit() {
  if [ "$POLICY_CREATED" = 1 ]; then
    rm -f "$POLICY"
    say "removed the temporary $POLICY"
  fi
  if [ -n "$POLICY_BACKUP" ]; then
    mv -f "$POLICY_BACKUP" "$POLICY"
    say "restored the original $POLICY"
  fi
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap on_exit EXIT
forbid_service_start() {
  [ "$POLICY_DONE" = 0 ] || return 0
  POLICY_DONE=1
  if [ -e "$POLICY" ]; then
    local rc=0
    "$POLICY" postfix start >/dev/null 2>&1 || rc=$?
    if [ "$rc" = 101 ]; then
      say "the existing $POLICY already forbids starting services; keeping it"
      return 0
    fi
    POLICY_BACKUP="$(mktemp "$POLICY.milterd-backup.XXXXXX")"
    cp -p "$POLICY" "$POLICY_BACKUP"
    say "the existing $POLICY allows starting services: replaced it until the end of this script"
  else
    POLICY_CREATED=1
    say "created a temporary $POLICY (exit 101)"
  fi
  printf '#!/bin/sh\n# milterd scripts/install-test-deps.sh: never start services while installing\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
}

# --- postfix ---------------------------------------------------------------------------------------
if have_pkg postfix && [ -x /usr/sbin/postfix ]; then
  say "postfix $(dpkg-query -W -f '${Version}' postfix) already installed"
else
  apt_update_once
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  forbid_service_start
  say "installing postfix (debconf: No configuration; services are not started)"
  "${APT[@]}" install --no-install-recommends postfix >/dev/null
  say "installed postfix $(dpkg-query -W -f '${Version}' postfix)"
fi

# --- ordinary packages -----------------------------------------------------------------------------
TO_INSTALL=()
for p in "${APT_PACKAGES[@]}"; do have_pkg "$p" || TO_INSTALL+=("$p"); done
if [ "${#TO_INSTALL[@]}" -gt 0 ]; then
  apt_update_once
  forbid_service_start
  say "installing ${TO_INSTALL[*]}"
  "${APT[@]}" install --no-install-recommends "${TO_INSTALL[@]}" >/dev/null
else
  say "already installed: ${APT_PACKAGES[*]}"
fi
TO_INSTALL=()
for p in "${CONTAINER_PACKAGES[@]}"; do have_pkg "$p" || TO_INSTALL+=("$p"); done
if [ "${#TO_INSTALL[@]}" -gt 0 ]; then
  apt_update_once
  forbid_service_start
  say "installing ${TO_INSTALL[*]} (with recommends)"
  "${APT[@]}" install "${TO_INSTALL[@]}" >/dev/null
else
  say "already installed: ${CONTAINER_PACKAGES[*]}"
fi

# --- third-party milters: never run as services ---------------------------------------------------
# policy-rc.d kept them from starting during the install; disable their units too so that a machine whose
# init is systemd never starts them at boot (the tests run private instances on loopback), and stop the
# gpg-agent spamassassin's postinst leaves running for its sa-update keyring.
if command -v systemctl >/dev/null; then
  for unit in opendkim.service opendmarc.service spamd.service spamass-milter.service spamassassin-maintenance.timer; do
    if [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" = enabled ]; then
      systemctl disable "$unit" >/dev/null 2>&1 || die "systemctl disable $unit failed"
      say "disabled $unit (the tests start their own instances)"
    fi
  done
fi
if [ -d /var/lib/spamassassin/sa-update-keys ] && command -v gpgconf >/dev/null; then
  gpgconf --homedir /var/lib/spamassassin/sa-update-keys --kill gpg-agent 2>/dev/null || true
fi

# --- private sendmail (sendmail-bin conflicts with postfix) ------------------------------------------
download() {
  [ -n "$WORK" ] || WORK="$(mktemp -d /tmp/milterd-deps.XXXXXX)"
  (cd "$WORK" && apt-get -q -o APT::Sandbox::User=root download "$@" >/dev/null 2>&1)
}

if sendmail_ok; then
  say "private sendmail already unpacked: $SENDMAIL_BIN"
else
  apt_update_once
  download sendmail-bin || die "apt-get download sendmail-bin failed"
  DEB="$(ls "$WORK"/sendmail-bin_*.deb)"
  mkdir -p "$SENDMAIL_ROOT"
  dpkg -x "$DEB" "$SENDMAIL_ROOT"
  dpkg-deb -f "$DEB" Version >"$SENDMAIL_ROOT/.sendmail-bin-version"
  say "unpacked sendmail-bin $(cat "$SENDMAIL_ROOT/.sendmail-bin-version") into $SENDMAIL_ROOT"
  # The shared libraries its binary links against: the lib* packages of its Depends field.
  LIBS=()
  for dep in $(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed -E 's/\(.*\)//; s/\|.*//; s/[[:space:]]//g'); do
    case "$dep" in lib*) have_pkg "$dep" || LIBS+=("$dep") ;; esac
  done
  if [ "${#LIBS[@]}" -gt 0 ]; then
    forbid_service_start
    say "installing the libraries sendmail needs: ${LIBS[*]}"
    "${APT[@]}" install --no-install-recommends "${LIBS[@]}" >/dev/null
  fi
  if ldd "$SENDMAIL_BIN" | grep -q 'not found'; then
    ldd "$SENDMAIL_BIN" | grep 'not found' >&2
    die "the private sendmail still misses shared libraries"
  fi
fi

# --- sendmail-cf ----------------------------------------------------------------------------------
if CF="$(sendmail_cf_dir)"; then
  say "sendmail-cf present: $CF"
else
  apt_update_once
  if "${APT[@]}" -s install --no-install-recommends sendmail-cf 2>/dev/null | grep -q '^Remv'; then
    download sendmail-cf || die "apt-get download sendmail-cf failed"
    dpkg -x "$(ls "$WORK"/sendmail-cf_*.deb)" "$SENDMAIL_ROOT"
    say "sendmail-cf conflicts here: unpacked it into $SENDMAIL_ROOT"
  else
    forbid_service_start
    say "installing sendmail-cf (no conflict with postfix)"
    "${APT[@]}" install --no-install-recommends sendmail-cf >/dev/null
  fi
  CF="$(sendmail_cf_dir)" || die "sendmail-cf not found after installing it"
fi

MISSING="$(missing)"
[ -z "$MISSING" ] || die "still missing after installation: $MISSING"
# (sendmail itself is never run here: outside the tests' private namespace it would query DNS.)
say "done: postfix $(dpkg-query -W -f '${Version}' postfix); sendmail-bin $(cat "$SENDMAIL_ROOT/.sendmail-bin-version" 2>/dev/null || echo '?') at $SENDMAIL_BIN; sendmail-cf at $CF"
