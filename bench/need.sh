# Sourced by the benchmark scripts: installs the system packages a script needs on a fresh
# machine, as scripts/test.sh does (apt-get, as root), or says which are missing.
#
#   need COMMAND:PACKAGE...   e.g. need perfdhcp:kea-admin dnsmasq:dnsmasq-base nft:nftables
#
# A package is installed when its command is not found; as another user the script stops
# and names the packages (install them, or run it as root).

need() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: missing packages: ${missing[*]} (run as root to install them, or: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "$0: installing ${missing[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
}
