#!/usr/bin/env bash
# Unpack the real POP3 servers of `make interop` from Debian's packages, never installing them (they
# conflict with dovecot-pop3d: all provide pop3-server). Each server gets a private prefix
# $INTEROP_PREFIX/<server> holding its packages and the libraries the machine lacks; interop/servers.py
# runs the daemons with LD_LIBRARY_PATH into that prefix.
#
#   interop/fetch.sh                 # every server; idempotent (a stamp per server)
#   interop/fetch.sh mailutils solid # only these
#
# popa3d is unpacked by scripts/setup-test-env.sh into /opt/popflow-test/popa3d (make test uses it).
# Needs root (apt-get download into the cache, /opt). Debs are kept in $INTEROP_CACHE.
set -euo pipefail

INTEROP_PREFIX=${INTEROP_PREFIX:-/opt/popflow-interop}
INTEROP_CACHE=${INTEROP_CACHE:-/var/cache/popflow-interop}
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -o APT::Sandbox::User=root)

# The packages each server needs unpacked: the server, its own helpers, and the libraries that are not
# installed on a Debian 12 with popflow's test packages (found with ldd against the prefix).
declare -A PACKAGES=(
    [mailutils]="mailutils-pop3d libmailutils9 mailutils-common libmu-dbm9 libgsasl18 libgssglue1 libntlm0
                 libidn12 libkyotocabinet16v5 liblzo2-2 libltdl7"
    [solid]="solid-pop3d liblockfile1"
    [courier]="courier-pop courier-base courier-authlib courier-authlib-userdb courier-authdaemon
               libcourier-unicode4 libidn12 libgamin0 libltdl7 libpcre3"
    [cyrus]="cyrus-pop3d cyrus-common cyrus-admin sasl2-bin libical3 libxapian30 libzephyr4 libpcre3"
)

say() { printf '[interop-fetch] %s\n' "$*" >&2; }

deb_of() {  # the cached .deb of package $1 (apt-get download names it <name>_<version>_<arch>.deb)
    find "$INTEROP_CACHE" -maxdepth 1 -name "$1_*.deb" -print | sort -V | tail -n 1
}

fetch() {
    local server=$1 package deb missing=()
    local prefix="$INTEROP_PREFIX/$server"
    if [[ -f "$prefix/.popflow-interop" ]]; then return 0; fi
    for package in ${PACKAGES[$server]}; do
        [[ -n "$(deb_of "$package")" ]] || missing+=("$package")
    done
    if ((${#missing[@]})); then
        say "$server: downloading ${missing[*]}"
        (cd "$INTEROP_CACHE" && apt-get "${APT_OPTS[@]}" download -qq "${missing[@]}" >/dev/null)
    fi
    rm -rf "$prefix.tmp" && mkdir -p "$prefix.tmp"
    for package in ${PACKAGES[$server]}; do
        dpkg-deb -x "$(deb_of "$package")" "$prefix.tmp"
    done
    for package in ${PACKAGES[$server]}; do basename "$(deb_of "$package")"; done > "$prefix.tmp/.popflow-interop"
    rm -rf "$prefix" && mv "$prefix.tmp" "$prefix"
    say "$server: unpacked into $prefix"
}

if ((EUID != 0)); then say "needs root (apt-get download, $INTEROP_PREFIX)"; exit 1; fi
mkdir -p "$INTEROP_CACHE" "$INTEROP_PREFIX"
servers=("$@")
((${#servers[@]})) || servers=(mailutils solid courier cyrus)
for server in "${servers[@]}"; do
    [[ -n "${PACKAGES[$server]:-}" ]] || { say "unknown server $server (known: ${!PACKAGES[*]})"; exit 2; }
    fetch "$server" || say "WARNING: $server could not be fetched (the matrix will say so)"
done
