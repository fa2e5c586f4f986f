#!/usr/bin/env bash
# Install the Debian packages of the services that tests run as their own processes, if missing.
#
#   scripts/service-packages.sh postgres   postgresql (initdb, pg_ctl under /usr/lib/postgresql/N/bin)
#   scripts/service-packages.sh nginx      nginx-light
#   scripts/service-packages.sh browser    chromium and chromium-driver (headless, for selenium)
#
# The tests start and stop their own servers and browsers in temporary folders
# (tests/postgres.py, tests/replicas.py, tests/router/test_status_page_browser.py); the
# services the packages register are neither wanted nor started: while installing, a policy-rc.d that refuses every start is put in place if none is.
set -euo pipefail

log() { echo "service-packages: $*" >&2; }

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_nginx() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }
have_browser() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

install_packages() {
    if [ "$(id -u)" != 0 ]; then
        log "$* missing; install as root: apt-get install -y $*"
        exit 1
    fi
    # One install at a time from this script (`make -j` runs both targets at once); apt's own
    # lock timeout covers other apt users such as scripts/local-slurm.sh.
    exec 9>/tmp/bundle-service-packages.lock
    flock 9
    local policy=/usr/sbin/policy-rc.d ours=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        ours=1
    fi
    log "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    local status=0
    { apt-get -o DPkg::Lock::Timeout=600 update -qq \
        && apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null; } || status=$?
    [ -z "$ours" ] || rm -f "$policy"
    return "$status"
}

case ${1:-} in
    postgres)
        have_postgres || install_packages postgresql
        have_postgres || { log "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"; exit 1; }
        ;;
    nginx)
        have_nginx || install_packages nginx-light
        have_nginx || { log "nginx-light installed but no nginx found"; exit 1; }
        ;;
    browser)
        have_browser || install_packages chromium chromium-driver
        have_browser || { log "chromium installed but no chromium or chromedriver found"; exit 1; }
        ;;
    *)
        echo "usage: $0 postgres|nginx|browser" >&2
        exit 2
        ;;
esac
