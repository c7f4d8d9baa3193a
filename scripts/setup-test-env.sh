#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian 12 machine (run as root, as CI does):
#
#   1. system packages: dovecot-pop3d, dovecot-imapd and clamav-daemon (the tests start PRIVATE instances,
#      with their own configs and ports), clamav, openssl, chromium (headless: the status page test);
#      python3-venv if the venv needs it.
#      They are installed without starting the distribution's services, and those services are
#      stopped if they run: they would take port 110/995 and a CPU loading signatures.
#   2. the virtualenv (scripts/setup-dev.sh).
#   3. PostgreSQL (127.0.0.1:5432, db test) and MariaDB (127.0.0.1:3306, db test) answering.
#   4. popa3d, unpacked but NOT installed (its package conflicts with dovecot-pop3d: both provide
#      pop3-server): `apt-get download` into $POPA3D_CACHE, `dpkg-deb -x` into $POPA3D_PREFIX.
#      tests/support/popa3d.py runs $POPA3D_PREFIX/usr/sbin/popa3d and creates the users it needs.
#
# Idempotent: on a machine that already has everything it only checks, in about a second.
# Under CI=true a service that cannot be made to answer is an error; otherwise a warning (the tests
# that need it then fail or skip on their own terms).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
APT_PACKAGES=(dovecot-pop3d dovecot-imapd clamav-daemon clamav openssl chromium fonts-dejavu-core)
SYSTEM_SERVICES=(dovecot clamav-daemon clamav-freshclam)
POLICY_RC=/usr/sbin/policy-rc.d
POPA3D_CACHE=${POPA3D_CACHE:-/var/cache/popflow-test}
POPA3D_PREFIX=${POPA3D_PREFIX:-/opt/popflow-test/popa3d}
CREATED_POLICY=0

remove_policy() {
    if ((CREATED_POLICY)); then rm -f "$POLICY_RC"; CREATED_POLICY=0; fi
}
trap remove_policy EXIT
trap 'remove_policy; exit 130' INT TERM

say() { printf '[setup-test-env] %s\n' "$*" >&2; }
is_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }
fail_or_warn() {
    if is_ci; then say "ERROR: $*"; exit 1; fi
    say "WARNING: $*"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Debian's python3 creates a venv with pip only when python3-venv (ensurepip) is installed.
system_python_needs_venv_pkg() {
    [[ -x "$VENV/bin/python" ]] && return 1
    local python
    python=$(command -v "${PYTHON:-python3}" 2>/dev/null) || return 0
    [[ "$(readlink -f "$python")" == /usr/bin/* ]] || return 1
    ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1
}

install_system_packages() {
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        installed "$package" || missing+=("$package")
    done
    if system_python_needs_venv_pkg; then
        missing+=(python3-venv)
    fi
    ((${#missing[@]})) || return 0

    if ((EUID != 0)); then
        say "ERROR: missing system packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
        exit 1
    fi
    command -v apt-get >/dev/null || { say "ERROR: no apt-get; install by hand: ${missing[*]}"; exit 1; }

    say "installing ${missing[*]} (services not started)"
    # policy-rc.d exiting 101 tells invoke-rc.d "do not start": the packages' postinst scripts then
    # leave the daemons down. Only ours to remove if we created it.
    if [[ ! -e "$POLICY_RC" ]]; then
        CREATED_POLICY=1
        printf '#!/bin/sh\n# popflow setup-test-env: do not start services during install\nexit 101\n' \
            >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi
    local apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    remove_policy
}

# Keep the distribution's own dovecot/clamd/freshclam down: the tests run private instances.
stop_system_services() {
    local service pidfile
    for service in "${SYSTEM_SERVICES[@]}"; do
        [[ -x "/etc/init.d/$service" ]] || continue
        case "$service" in
            dovecot) pidfile=/run/dovecot/master.pid ;;
            clamav-daemon) pidfile=/run/clamav/clamd.pid ;;
            clamav-freshclam) pidfile=/run/clamav/freshclam.pid ;;
        esac
        if [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            if ((EUID != 0)); then
                say "WARNING: system service $service is running; stop it as root"
                continue
            fi
            say "stopping the system's $service service"
            service "$service" stop >/dev/null 2>&1 || /etc/init.d/"$service" stop >/dev/null 2>&1 || true
        fi
    done
}

# --- databases -------------------------------------------------------------------------------
db_answers() {  # $1 = postgres | mariadb; uses the drivers from the venv's dev extras
    "$VENV/bin/python" - "$1" <<'EOF' >/dev/null 2>&1
import sys
if sys.argv[1] == "postgres":
    import psycopg
    psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3").close()
else:
    import pymysql
    pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test",
                    connect_timeout=3).close()
EOF
}

start_db() {
    case "$1" in
        postgres)
            [[ -d /etc/postgresql ]] || return 1
            local version
            for version in /etc/postgresql/*; do
                pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start \
                    >/dev/null 2>&1 || true
            done
            ;;
        mariadb)
            [[ -x /usr/sbin/mariadbd ]] || return 1
            start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
            ;;
    esac
}

ensure_db() {
    local name=$1 waited=0
    db_answers "$name" && return 0
    if ((EUID != 0)); then
        fail_or_warn "$name on 127.0.0.1 does not answer (start it as root)"
        return 0
    fi
    say "$name does not answer; starting it"
    if ! start_db "$name"; then
        fail_or_warn "$name is not installed on this machine"
        return 0
    fi
    until db_answers "$name"; do
        if ((waited >= 60)); then
            fail_or_warn "$name still does not answer after 60 s"
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "$name is up"
}

# --- popa3d (unpacked, never installed) ------------------------------------------------------
popa3d_ready() {
    [[ -f "$POPA3D_PREFIX/.popflow-deb" && -x "$POPA3D_PREFIX/usr/sbin/popa3d" ]] \
        && "$POPA3D_PREFIX/usr/sbin/popa3d" -V >/dev/null 2>&1
}

# The newest popa3d .deb in the cache, downloading it (apt verifies its hash) if there is none.
popa3d_deb() {
    local deb apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -o APT::Sandbox::User=root)
    deb=$(find "$POPA3D_CACHE" -maxdepth 1 -name 'popa3d_*.deb' -print 2>/dev/null | sort -V | tail -n 1)
    if [[ -z "$deb" ]]; then
        mkdir -p "$POPA3D_CACHE"
        if ! (cd "$POPA3D_CACHE" && apt-get "${apt_opts[@]}" download -qq popa3d >/dev/null 2>&1); then
            # a fresh image may have no package lists at all
            DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 || true
            (cd "$POPA3D_CACHE" && apt-get "${apt_opts[@]}" download -qq popa3d >/dev/null) || return 1
        fi
        deb=$(find "$POPA3D_CACHE" -maxdepth 1 -name 'popa3d_*.deb' -print | sort -V | tail -n 1)
    fi
    [[ -n "$deb" ]] && printf '%s\n' "$deb"
}

ensure_popa3d() {
    popa3d_ready && return 0
    if ((EUID != 0)); then
        fail_or_warn "popa3d is not unpacked in $POPA3D_PREFIX (run this script as root)"
        return 0
    fi
    local deb staging
    if ! deb=$(popa3d_deb); then
        fail_or_warn "cannot download the popa3d package (apt-get download popa3d)"
        return 0
    fi
    say "unpacking $(basename "$deb") into $POPA3D_PREFIX (not installed)"
    mkdir -p "$(dirname "$POPA3D_PREFIX")"
    staging=$(mktemp -d "$POPA3D_PREFIX.new.XXXXXX")
    if ! dpkg-deb -x "$deb" "$staging" || ! "$staging/usr/sbin/popa3d" -V >/dev/null 2>&1; then
        rm -rf "$staging"
        rm -f "$deb"  # a damaged download: fetch it again next time
        fail_or_warn "$(basename "$deb") does not unpack into a working popa3d"
        return 0
    fi
    basename "$deb" >"$staging/.popflow-deb"
    chmod 755 "$staging"
    rm -rf "$POPA3D_PREFIX"
    mv "$staging" "$POPA3D_PREFIX"
}

install_system_packages
stop_system_services
scripts/setup-dev.sh
ensure_popa3d
ensure_db postgres
ensure_db mariadb
