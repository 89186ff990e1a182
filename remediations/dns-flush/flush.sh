#!/bin/sh
# dns-flush: clear the local DNS cache, whichever the machine uses.
#
# Parameters: VIGIL_PARAM_DNSMASQ_PIDFILE absolute path of dnsmasq's pidfile (default
#   /run/dnsmasq/dnsmasq.pid); VIGIL_DRY_RUN "1" says which cache would be flushed and
#   flushes nothing.
# Exit status: 0 flushed (or no local cache exists), 1 the flush command failed (or the
#   pidfile names no running dnsmasq), 3 refused: bad parameter, nothing touched.

set -u

dry_run=${VIGIL_DRY_RUN:-0}
pidfile=${VIGIL_PARAM_DNSMASQ_PIDFILE-/run/dnsmasq/dnsmasq.pid}
have() { command -v "$1" > /dev/null 2>&1; }
refuse() {
    printf 'dns-flush: refusing: %s\n' "$1"
    exit 3
}

case $pidfile in
    /*) ;;
    *) refuse "dnsmasq_pidfile must be an absolute path (got '$pidfile')" ;;
esac

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
if [ -e "$pidfile" ] || [ -L "$pidfile" ]; then
    if [ -L "$pidfile" ] || [ ! -f "$pidfile" ]; then
        refuse "dnsmasq_pidfile is not a regular file: $pidfile"
    fi
    # The first line, at most 32 bytes, must be a pid and nothing else: never signal a
    # pid guessed from a damaged file, and never 0 (which would mean our process group).
    pid=$(head -n 1 -- "$pidfile" | head -c 32 | tr -d ' \t\r')
    case $pid in
        '' | *[!0-9]* | 0*)
            printf 'dns-flush: %s holds no valid pid; dnsmasq not flushed\n' "$pidfile"
            exit 1
            ;;
    esac
    # Signal only a running dnsmasq: a stale pidfile's pid may belong to anything now.
    comm=$(head -c 64 "/proc/$pid/comm" 2> /dev/null)
    if [ "$comm" != dnsmasq ]; then
        printf 'dns-flush: pid %s from %s is not a running dnsmasq (%s); not signalled\n' \
            "$pid" "$pidfile" "${comm:-no such process}"
        exit 1
    fi
    run dnsmasq kill -HUP "$pid"
    exit
fi
printf 'dns-flush: no local DNS cache found (systemd-resolved, nscd, dnsmasq at %s);' "$pidfile"
printf ' nothing to flush\n'
exit 0
