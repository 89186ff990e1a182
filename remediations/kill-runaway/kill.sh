#!/bin/sh
# kill-runaway: stop allow-listed processes that use too much CPU, gracefully then forcibly.
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_NAMES            comma-separated process names that may be stopped (required)
#   VIGIL_PARAM_MIN_CPU_PERCENT  only processes at or above this CPU percent (default 90)
#   VIGIL_PARAM_GRACE            seconds between SIGTERM and SIGKILL (default 10)
#   VIGIL_DRY_RUN                "1": list what would be stopped, stop nothing
#
# CPU percent is what ps reports: CPU time over the process's lifetime (Linux) or a
# recent decaying average (macOS). A process is matched by its exact name (the kernel's
# "comm", the file name it was started from, at most 15 characters on Linux).
#
# Exit status: 0 nothing matched or all matched processes stopped, 1 some survived
# SIGKILL, 3 refused (bad parameter).

set -u

refuse() {
    printf 'kill-runaway: refusing: %s\n' "$1" >&2
    exit 3
}

names=${VIGIL_PARAM_NAMES:-}
min_cpu=${VIGIL_PARAM_MIN_CPU_PERCENT:-90}
grace=${VIGIL_PARAM_GRACE:-10}
dry_run=${VIGIL_DRY_RUN:-0}

[ -n "$names" ] || refuse "VIGIL_PARAM_NAMES (the allow-list) is not set"
case $min_cpu in '' | *[!0-9]*) refuse "min_cpu_percent must be a whole number: $min_cpu" ;; esac
case $grace in '' | *[!0-9]*) refuse "grace must be a whole number of seconds: $grace" ;; esac

# Candidates: "pid name" for allow-listed names at or above the CPU limit. awk compares
# names exactly (no patterns), skips pid 1 and this script, and prints nothing else.
# On macOS comm is a path: compare its last component.
candidates=$(ps -A -o pid= -o pcpu= -o comm= | awk -v names="$names" -v min="$min_cpu" \
    -v self="$$" -v parent="$PPID" '
    BEGIN { n = split(names, list, ","); for (i = 1; i <= n; i++) allow[list[i]] = 1 }
    {
        pid = $1; cpu = $2; $1 = ""; $2 = ""; sub(/^ +/, "")
        name = $0; sub(/.*\//, "", name)
        if (pid <= 1 || pid == self || pid == parent) next
        if ((name in allow) && cpu + 0 >= min + 0) print pid, name, cpu
    }')

if [ -z "$candidates" ]; then
    printf 'kill-runaway: no allow-listed process (%s) at or above %s%% CPU\n' "$names" "$min_cpu"
    exit 0
fi

pids=$(printf '%s\n' "$candidates" | awk '{ print $1 }')
printf '%s\n' "$candidates" | while read -r pid name cpu; do
    printf 'kill-runaway: %s pid %s (%s, %s%% CPU)\n' \
        "$([ "$dry_run" = 1 ] && echo 'would stop' || echo stopping)" "$pid" "$name" "$cpu"
done
[ "$dry_run" = 1 ] && exit 0

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

for pid in $pids; do kill -TERM "$pid" 2> /dev/null; done
# Wait up to the grace period, in tenths of a second, for them to exit.
ticks=0
while [ "$ticks" -lt "$((grace * 10))" ]; do
    left=""
    for pid in $pids; do pid_alive "$pid" && left="$left $pid"; done
    [ -n "$left" ] || break
    sleep 0.1
    ticks=$((ticks + 1))
done
left=""
for pid in $pids; do pid_alive "$pid" && left="$left $pid"; done
if [ -n "$left" ]; then
    printf 'kill-runaway: still running after %ss, forcing:%s\n' "$grace" "$left"
    for pid in $left; do kill -KILL "$pid" 2> /dev/null; done
    sleep 0.5
fi
survivors=""
for pid in $pids; do pid_alive "$pid" && survivors="$survivors $pid"; done
if [ -n "$survivors" ]; then
    printf 'kill-runaway: could not stop:%s\n' "$survivors"
    exit 1
fi
printf 'kill-runaway: stopped %s process(es)\n' "$(printf '%s\n' "$pids" | wc -l | tr -d ' ')"
exit 0
