#!/bin/sh
# clock-resync: detect clock drift and step the clock back through the existing time
# service.
#
#   VIGIL_PHASE=detect|verify  exit 1 if |offset| > max_offset_ms, 0 if not, 2 if unknown
#   VIGIL_PHASE=remediate      step the clock (exit 0) or fail (exit 1)
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_MAX_OFFSET_MS  drift limit in milliseconds (default 1000)
#   VIGIL_PARAM_SERVER         macOS only: NTP server for sntp (default time.apple.com)
#   VIGIL_DRY_RUN              "1": say what would be done, change nothing

set -u

say() { printf 'clock-resync: %s\n' "$*"; }
max_ms=${VIGIL_PARAM_MAX_OFFSET_MS:-1000}
server=${VIGIL_PARAM_SERVER:-time.apple.com}
phase=${VIGIL_PHASE:-remediate}
dry_run=${VIGIL_DRY_RUN:-0}
case $max_ms in '' | *[!0-9]*) say "refusing: max_offset_ms must be a whole number: $max_ms"; exit 3 ;; esac
case $server in -* | *[!A-Za-z0-9.:-]*) say "refusing: bad server name: $server"; exit 3 ;; esac
have() { command -v "$1" > /dev/null 2>&1; }
darwin=no
[ "$(uname -s)" = Darwin ] && darwin=yes

# offset_ms: print the absolute offset in whole milliseconds, or fail when unknown.
offset_ms() {
    if [ "$darwin" = yes ]; then
        # "sntp -t 2 server" prints "+0.012345 +/- ..." first; no clock change without -s.
        sntp -t 2 "$server" 2> /dev/null | awk '/^[+-][0-9.]+ / { v = $1; if (v < 0) v = -v;
            printf "%d\n", v * 1000; found = 1; exit } END { exit !found }'
    elif have chronyc; then
        # "System time     : 0.000012345 seconds fast of NTP time"
        chronyc tracking 2> /dev/null | awk -F': *' '/^System time/ { split($2, a, " ");
            v = a[1]; if (v < 0) v = -v; printf "%d\n", v * 1000; found = 1 } END { exit !found }'
    elif have timedatectl; then
        # timesyncd: "Offset: -12.345ms" / "+1.5s" in timedatectl timesync-status.
        timedatectl timesync-status 2> /dev/null | awk -F': *' '/Offset:/ { v = $2;
            unit = v; gsub(/[-+0-9.]/, "", unit); gsub(/[^-+0-9.]/, "", v); if (v < 0) v = -v;
            m = (unit == "us") ? 0.001 : (unit == "ms") ? 1 : (unit == "s") ? 1000 : (unit == "min") ? 60000 : -1;
            if (m < 0) exit 1; printf "%d\n", v * m; found = 1 } END { exit !found }'
    else
        return 1
    fi
}

case $phase in
    detect | verify)
        if ! off=$(offset_ms); then
            say "no time service reports an offset (chrony, systemd-timesyncd, sntp)"
            exit 2
        fi
        if [ "$off" -gt "$max_ms" ]; then
            say "clock is off by ${off} ms (limit ${max_ms} ms)"
            exit 1
        fi
        say "clock is off by ${off} ms (within ${max_ms} ms)"
        exit 0
        ;;
    remediate) ;;
    *) say "refusing: unknown VIGIL_PHASE: $phase"; exit 3 ;;
esac

step() {
    if [ "$dry_run" = 1 ]; then
        say "dry run: would run: $*"
        return 0
    fi
    say "running: $*"
    "$@"
}

if [ "$darwin" = yes ]; then
    step sntp -sS "$server" || exit 1
elif have chronyc; then
    step chronyc makestep || exit 1
elif have timedatectl && have systemctl; then
    step timedatectl set-ntp true || exit 1
    step systemctl restart systemd-timesyncd || exit 1
else
    say "no time service to resync with: install chrony or enable systemd-timesyncd"
    exit 1
fi
say "clock resynchronised"
exit 0
