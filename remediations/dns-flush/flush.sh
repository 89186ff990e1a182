#!/bin/sh
# dns-flush: clear the local DNS cache, whichever the machine uses.
#
# Parameters: VIGIL_DRY_RUN "1" says which cache would be flushed and flushes nothing.
# Exit status: 0 flushed (or no local cache exists), 1 the flush command failed.

set -u

dry_run=${VIGIL_DRY_RUN:-0}
have() { command -v "$1" > /dev/null 2>&1; }

# run CACHE COMMAND [ARG...]: run (or, in a dry run, describe) one flush command.
run() {
    cache=$1
    shift
    if [ "$dry_run" = 1 ]; then
        printf 'dns-flush: dry run: would flush %s with: %s\n' "$cache" "$*"
        return 0
    fi
    if "$@"; then
        printf 'dns-flush: flushed %s\n' "$cache"
        return 0
    fi
    printf 'dns-flush: flushing %s failed (%s)\n' "$cache" "$*"
    return 1
}

if [ "$(uname -s)" = Darwin ]; then
    run "the directory service cache" dscacheutil -flushcache || exit 1
    run mDNSResponder killall -HUP mDNSResponder || exit 1
    exit 0
fi

if have resolvectl; then
    run systemd-resolved resolvectl flush-caches
    exit
fi
if have systemd-resolve; then
    run systemd-resolved systemd-resolve --flush-caches
    exit
fi
if have nscd && { [ -e /run/nscd/socket ] || [ -e /var/run/nscd/socket ]; }; then
    run nscd nscd --invalidate=hosts
    exit
fi
if [ -f /run/dnsmasq/dnsmasq.pid ]; then
    pid=$(head -c 32 /run/dnsmasq/dnsmasq.pid | tr -cd '0-9')
    [ -n "$pid" ] && run dnsmasq kill -HUP "$pid"
    exit
fi
printf 'dns-flush: no local DNS cache found (systemd-resolved, nscd, dnsmasq); nothing to flush\n'
exit 0
