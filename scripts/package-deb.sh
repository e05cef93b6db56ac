#!/usr/bin/env bash
# Build the Debian package of spool with dpkg-deb (no other tool needed):
#   OUT_DIR/spool_VERSION_ARCH.deb   (OUT_DIR [target/debian], VERSION from Cargo.toml)
#
# It installs:
#   /usr/bin/spool                              the binary
#   /lib/systemd/system/spool.service           deploy/spool.service
#   /etc/spool/spool.toml                       deploy/spool.toml (a conffile: kept on upgrade)
#   /usr/share/bash-completion/completions/spool, zsh and fish completions
#   /usr/share/man/man1/spool.1.gz and one page per subcommand (spool-serve.1.gz, ...)
#   /usr/share/doc/spool/{copyright,CHANGELOG.md.gz}
# and on configure creates the system user `spool` and /var/lib/spool (0700), then
# enables and starts the unit where systemd runs (as Debian's services do).
#
# usage: scripts/package-deb.sh [OUT_DIR]
#   SPOOL_BIN  the binary to package [default: cargo build --release --locked, then
#              ${CARGO_TARGET_DIR:-target}/release/spool]. Tests pass the debug build.
#   DEB_COMPRESSION  dpkg-deb's -Z [xz]; the tests use none (a debug binary is large).
set -euo pipefail
umask 022
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-$ROOT/target/debian}"

command -v dpkg-deb >/dev/null || { echo "package-deb.sh: needs dpkg-deb (Debian's dpkg)" >&2; exit 1; }

# The version is the workspace's ([workspace.package] version in Cargo.toml).
VERSION="$(awk '/^\[workspace\.package\]/{s=1; next} /^\[/{s=0} s && /^version *=/{gsub(/[" ]/, "", $0); sub(/^version=/, "", $0); print; exit}' "$ROOT/Cargo.toml")"
[ -n "$VERSION" ] || { echo "package-deb.sh: no version in $ROOT/Cargo.toml" >&2; exit 1; }
ARCH="$(dpkg --print-architecture)"

if [ -z "${SPOOL_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -p spool)
  SPOOL_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/spool"
fi
[ -x "$SPOOL_BIN" ] || { echo "package-deb.sh: $SPOOL_BIN is not an executable" >&2; exit 1; }

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/spool-deb.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/spool"
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/spool" \
  "$PKG/usr/share/bash-completion/completions" "$PKG/usr/share/zsh/vendor-completions" \
  "$PKG/usr/share/fish/vendor_completions.d" "$PKG/usr/share/man/man1" "$PKG/usr/share/doc/spool"

install -m 0755 "$SPOOL_BIN" "$PKG/usr/bin/spool"
install -m 0644 "$ROOT/deploy/spool.service" "$PKG/lib/systemd/system/spool.service"
install -m 0644 "$ROOT/deploy/spool.toml" "$PKG/etc/spool/spool.toml"

# Completions and man pages come from the binary itself (clap), so they match it.
"$SPOOL_BIN" completions bash >"$PKG/usr/share/bash-completion/completions/spool"
"$SPOOL_BIN" completions zsh >"$PKG/usr/share/zsh/vendor-completions/_spool"
"$SPOOL_BIN" completions fish >"$PKG/usr/share/fish/vendor_completions.d/spool.fish"
"$SPOOL_BIN" man --out-dir "$PKG/usr/share/man/man1"
gzip -9n "$PKG"/usr/share/man/man1/*.1

cat >"$PKG/usr/share/doc/spool/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: spool

Files: *
Copyright: the Spool developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0 (the project's LICENSE file).
EOF
gzip -9nc "$ROOT/CHANGELOG.md" >"$PKG/usr/share/doc/spool/CHANGELOG.md.gz"

# The C library the binary was linked against: its newest GLIBC_ symbol version.
DEPENDS="libc6"
if command -v objdump >/dev/null; then
  GLIBC="$(objdump -T "$SPOOL_BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
  [ -n "$GLIBC" ] && DEPENDS="libc6 (>= $GLIBC)"
fi

cat >"$PKG/DEBIAN/control" <<EOF
Package: spool
Version: $VERSION
Architecture: $ARCH
Maintainer: Spool developers <spool-dev@localhost>
Section: database
Priority: optional
Depends: $DEPENDS, adduser
Installed-Size: $(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
Description: disk-persistent replicated log store
 Spool keeps named append-only logs on disk. One primary accepts appends; replicas
 follow it over gRPC (async, semi-sync or sync acks, delayed replicas) and serve
 reads; automatic failover runs on etcd. The package installs the spool binary, a
 hardened systemd unit (spool.service, user spool, data in /var/lib/spool) and an
 example configuration in /etc/spool/spool.toml listing every setting.
EOF

echo "/etc/spool/spool.toml" >"$PKG/DEBIAN/conffiles"

cat >"$PKG/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd spool >/dev/null; then
    adduser --system --group --home /var/lib/spool --no-create-home \
      --gecos "Spool log store" spool >/dev/null
  fi
  install -d -o spool -g spool -m 0700 /var/lib/spool
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable spool.service >/dev/null || true
    systemctl restart spool.service || echo "spool: the service did not start: journalctl -u spool" >&2
  fi
fi
exit 0
EOF

cat >"$PKG/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop spool.service || true
fi
exit 0
EOF

cat >"$PKG/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
# The data in /var/lib/spool and the user stay, even on purge: logs are the user's data.
if [ "$1" = purge ] && [ -d /run/systemd/system ]; then
  systemctl disable spool.service >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"

mkdir -p "$OUT_DIR"
DEB="$OUT_DIR/spool_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
