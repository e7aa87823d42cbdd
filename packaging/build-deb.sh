#!/usr/bin/env bash
# Builds the Debian package `pollux` (polluxd, polluxctl, pollux-agent, their systemd
# units, manual pages and shell completions) with dpkg-deb, from the workspace's binaries.
#
#   packaging/build-deb.sh [--out DIR] [--bin-dir DIR] [--gen-docs PATH] [--compress xz|gzip|none]
#
# Without --bin-dir it builds the three binaries and pollux-gen-docs in release mode
# first. --bin-dir takes polluxd, polluxctl and pollux-agent from DIR instead (the test
# packages the debug binaries its build already made), --gen-docs the page generator.
# Prints the path of the .deb on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/debian bin_dir= gen_docs= compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --gen-docs) gen_docs=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release -q -p pollux-control --bin polluxd --bin polluxctl \
        -p pollux-agent --bin pollux-agent -p pollux-packaging --bin pollux-gen-docs >&2
    bin_dir=target/release
    gen_docs=${gen_docs:-target/release/pollux-gen-docs}
fi
if [ -z "$gen_docs" ]; then
    echo "build-deb.sh: --bin-dir needs --gen-docs" >&2
    exit 2
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
root=$(mktemp -d "${TMPDIR:-/tmp}/pollux-deb.XXXXXX")
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
# dpkg-deb takes modes from the tree: make them the package's, whatever the umask.
umask 022

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/default" \
    "$root/usr/share/doc/pollux"
for bin in polluxd polluxctl pollux-agent; do
    # Line tables stay in the repository's release profile for panics' backtraces; the
    # package carries the code only, as Debian's own binaries.
    objcopy --strip-debug "$bin_dir/$bin" "$root/usr/bin/$bin"
    chmod 755 "$root/usr/bin/$bin"
done
install -m 644 packaging/debian/polluxd.service packaging/debian/pollux-agent.service \
    "$root/lib/systemd/system/"
install -m 644 packaging/debian/polluxd.default "$root/etc/default/polluxd"
install -m 644 packaging/debian/pollux-agent.default "$root/etc/default/pollux-agent"
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$root/DEBIAN/"
printf '/etc/default/polluxd\n/etc/default/pollux-agent\n' >"$root/DEBIAN/conffiles"

"$gen_docs" "$root"
find "$root/usr/share/man" -type f -name '*.1' -exec gzip -9n {} +
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: pollux"
    echo
    echo "Files: *"
    echo "License: Apache-2.0 or MIT"
    echo
    echo "License: Apache-2.0"
    echo " See /usr/share/common-licenses/Apache-2.0."
    echo
    echo "License: MIT"
    sed 's/^$/./; s/^/ /' LICENSE-MIT
} >"$root/usr/share/doc/pollux/copyright"
chmod 644 "$root/usr/share/doc/pollux/copyright"

# The newest glibc symbol version the binaries use is the libc6 they need.
glibc=$(objdump -T "$root"/usr/bin/* | sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -uV | tail -1)
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: pollux
Version: $version
Architecture: $arch
Maintainer: Pollux developers <pollux@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, adduser
Section: net
Priority: optional
Description: userspace poll-mode virtual switch and router for Neutron hosts
 polluxd switches and routes a host's VM traffic (AF_XDP, vhost-user, tap ports;
 VLAN and overlay networks; security groups, NAT, DHCP, metadata) in userspace.
 polluxctl drives it over its control socket; pollux-agent applies the host's
 share of Neutron's state, kept in etcd by the networking-pollux ML2 driver.
CONTROL

mkdir -p "$out"
deb="$out/pollux_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >&2
echo "$deb"
