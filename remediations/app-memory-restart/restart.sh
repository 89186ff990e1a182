#!/bin/sh
# app-memory-restart: stop an application that outgrew its memory limit, then start it
# again (or declare that the user must).
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_NAME     exact process name (required)
#   VIGIL_PARAM_MAX_RSS  resident memory limit in bytes (default 2 GiB)
#   VIGIL_PARAM_GRACE    seconds between SIGTERM and SIGKILL (default 15)
#   VIGIL_PARAM_RESTART  absolute path of the program to start afterwards (optional)
#   VIGIL_DRY_RUN        "1": list what would be stopped, change nothing
#
# Exit status: 0 done (also when nothing was over the limit), 1 a process survived
# SIGKILL or the restart failed, 3 refused. Last line "vigil-outcome: needs_user" when
# the application was stopped and nothing restarted it.

set -u

refuse() {
    printf 'app-memory-restart: refusing: %s\n' "$1" >&2
    exit 3
}

name=${VIGIL_PARAM_NAME:-}
max_rss=${VIGIL_PARAM_MAX_RSS:-2147483648}
grace=${VIGIL_PARAM_GRACE:-15}
restart=${VIGIL_PARAM_RESTART:-}
dry_run=${VIGIL_DRY_RUN:-0}

[ -n "$name" ] || refuse "VIGIL_PARAM_NAME is not set"
case $name in */* | *[[:space:]]*) refuse "name must be a bare process name: '$name'" ;; esac
case $max_rss in '' | *[!0-9]*) refuse "max_rss must be a whole number of bytes: $max_rss" ;; esac
case $grace in '' | *[!0-9]*) refuse "grace must be a whole number of seconds: $grace" ;; esac
if [ -n "$restart" ]; then
    case $restart in /*) ;; *) refuse "restart must be an absolute path: '$restart'" ;; esac
    if [ ! -f "$restart" ] || [ ! -x "$restart" ]; then
        refuse "restart is not an executable file: $restart"
    fi
fi

# ps reports RSS in KiB. Only processes this user may signal are candidates anyway;
# running as the desktop user (run_as) keeps it to that user's applications.
over=$(ps -A -o pid= -o rss= -o comm= | awk -v want="$name" -v limit="$max_rss" \
    -v self="$$" '
    {
        pid = $1; rss = $2 * 1024; $1 = ""; $2 = ""; sub(/^ +/, "")
        comm = $0; sub(/.*\//, "", comm)
        if (pid > 1 && pid != self && comm == want && rss > limit + 0) print pid, rss
    }')

if [ -z "$over" ]; then
    printf 'app-memory-restart: no %s process above %s bytes\n' "$name" "$max_rss"
    exit 0
fi
printf '%s\n' "$over" | while read -r pid rss; do
    printf 'app-memory-restart: %s pid %s (%s bytes resident)\n' \
        "$([ "$dry_run" = 1 ] && echo 'would stop' || echo stopping)" "$pid" "$rss"
done
if [ "$dry_run" = 1 ]; then
    [ -n "$restart" ] && printf 'app-memory-restart: would start %s again\n' "$restart"
    exit 0
fi

# --- pid_alive (the same in every remediation that waits for a process; keep identical) ---
pid_alive() {
    # Whether process $1 still runs. kill -0 also succeeds for a zombie (exited, not yet
    # reaped: PID 1 in many containers never reaps), which ps shows in state Z; and a
    # process reaped between the two calls makes ps print nothing. Both are gone.
    kill -0 "$1" 2> /dev/null || return 1
    case $(ps -o stat= -p "$1" 2> /dev/null) in
        Z* | '') return 1 ;;
    esac
    return 0
}
# --- end pid_alive ---

pids=$(printf '%s\n' "$over" | awk '{ print $1 }')
for pid in $pids; do kill -TERM "$pid" 2> /dev/null; done
ticks=0
while [ "$ticks" -lt "$((grace * 10))" ]; do
    left=""
    for pid in $pids; do pid_alive "$pid" && left="$left $pid"; done
    [ -n "$left" ] || break
    sleep 0.1
    ticks=$((ticks + 1))
done
for pid in $pids; do
    if pid_alive "$pid"; then
        printf 'app-memory-restart: pid %s ignored SIGTERM for %ss; forcing\n' "$pid" "$grace"
        kill -KILL "$pid" 2> /dev/null
    fi
done
sleep 0.2
for pid in $pids; do
    if pid_alive "$pid"; then
        printf 'app-memory-restart: could not stop pid %s\n' "$pid"
        exit 1
    fi
done

if [ -z "$restart" ]; then
    printf 'app-memory-restart: stopped %s; the user must start it again\n' "$name"
    printf 'vigil-outcome: needs_user\n'
    exit 0
fi
# Its own session, so the agent's clean-up of this script's process group spares it.
setsid "$restart" < /dev/null > /dev/null 2>&1 &
sleep 0.5
if ! kill -0 "$!" 2> /dev/null; then
    printf 'app-memory-restart: %s exited at once after being started\n' "$restart"
    exit 1
fi
printf 'app-memory-restart: restarted %s (pid %s)\n' "$name" "$!"
exit 0
