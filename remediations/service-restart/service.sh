#!/bin/sh
# service-restart: a small facade over the service managers, used for every phase.
#
#   VIGIL_PHASE=detect    exit 1 if the service is not running, 0 if it is
#   VIGIL_PHASE=remediate restart it and wait until it runs (exit 0), or exit 1
#   VIGIL_PHASE=verify    same as detect, inverted by the agent (0 = fixed)
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_SERVICE        service name (required)
#   VIGIL_PARAM_MANAGER        auto | systemd | systemd-user | openrc | sysv | launchd | pidfile
#   VIGIL_PARAM_PIDFILE        pidfile manager: file holding the service's pid
#   VIGIL_PARAM_START          pidfile manager: absolute path of the program to start
#   VIGIL_PARAM_START_TIMEOUT  seconds to wait for the service to run (default 10)
#   VIGIL_PARAM_WRITE_PIDFILE  pidfile manager: "yes" (default) the program stays in the
#                              foreground and this script writes its pid; "no" the program
#                              daemonizes and writes the pidfile itself
#   VIGIL_DRY_RUN              "1": say what would be done, change nothing
#
# The pidfile manager starts the program in its own session (setsid), detached from the
# agent (whose runner kills this script's process group when it ends), and writes its pid
# to the pidfile unless the program writes it itself. It is also how this script is tested
# where no service manager runs (containers, CI).
#
# Exit status: 0 running / restarted, 1 not running / restart failed, 3 refused.

set -u

say() { printf 'service-restart: %s\n' "$*"; }
refuse() {
    printf 'service-restart: refusing: %s\n' "$1" >&2
    exit 3
}

service=${VIGIL_PARAM_SERVICE:-}
manager=${VIGIL_PARAM_MANAGER:-auto}
pidfile=${VIGIL_PARAM_PIDFILE:-}
start=${VIGIL_PARAM_START:-}
start_timeout=${VIGIL_PARAM_START_TIMEOUT:-10}
write_pidfile=${VIGIL_PARAM_WRITE_PIDFILE:-yes}
phase=${VIGIL_PHASE:-remediate}
dry_run=${VIGIL_DRY_RUN:-0}

case $service in
    '' ) refuse "VIGIL_PARAM_SERVICE is not set" ;;
    -* | *[!A-Za-z0-9@._:+-]*) refuse "service name has characters a service name never has: '$service'" ;;
esac
case $write_pidfile in
    yes | no) ;;
    *) refuse "write_pidfile must be yes or no: $write_pidfile" ;;
esac
case $start_timeout in
    '' | *[!0-9]*) refuse "start_timeout must be a whole number of seconds: $start_timeout" ;;
esac

have() { command -v "$1" > /dev/null 2>&1; }

if [ "$manager" = auto ]; then
    if [ -n "$pidfile" ]; then manager=pidfile
    elif [ "$(uname -s)" = Darwin ]; then manager=launchd
    elif [ -d /run/systemd/system ] && have systemctl; then manager=systemd
    elif have rc-service; then manager=openrc
    elif have service; then manager=sysv
    else refuse "no service manager found (give manager: pidfile with pidfile and start)"
    fi
fi

need() { have "$1" || refuse "manager $manager needs '$1', which is not installed"; }

# --- the facade: is_running and restart, one implementation per manager -----------------

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

pidfile_alive() {
    # The pidfile names a running process: it holds a number above 1 whose process runs.
    [ -f "$pidfile" ] || return 1
    pid=$(head -c 32 -- "$pidfile" | tr -cd '0-9')
    [ -n "$pid" ] && [ "$pid" -gt 1 ] || return 1
    pid_alive "$pid"
}

case $manager in
    systemd)
        need systemctl
        is_running() { systemctl is-active --quiet -- "$service"; }
        restart() { systemctl restart -- "$service"; }
        ;;
    systemd-user)
        need systemctl
        is_running() { systemctl --user is-active --quiet -- "$service"; }
        restart() { systemctl --user restart -- "$service"; }
        ;;
    openrc)
        need rc-service
        is_running() { rc-service "$service" status > /dev/null 2>&1; }
        restart() { rc-service "$service" restart; }
        ;;
    sysv)
        need service
        is_running() { service "$service" status > /dev/null 2>&1; }
        restart() { service "$service" restart; }
        ;;
    launchd)
        need launchctl
        is_running() { launchctl print "system/$service" 2> /dev/null | grep -q 'state = running'; }
        restart() { launchctl kickstart -k "system/$service"; }
        ;;
    pidfile)
        case $pidfile in
            /*) ;;
            *) refuse "manager pidfile needs an absolute pidfile path: '$pidfile'" ;;
        esac
        case $start in
            /*) ;;
            *) refuse "manager pidfile needs the absolute path of the start program: '$start'" ;;
        esac
        if [ ! -f "$start" ] || [ ! -x "$start" ]; then
            refuse "start program is not an executable file: $start"
        fi
        is_running() { pidfile_alive; }
        restart() {
            # Detached in its own session: the agent kills this script's process group
            # when it ends, and the service must outlive it.
            setsid "$start" < /dev/null > /dev/null 2>&1 &
            # A program that stays in the foreground is the process we just started; one
            # that daemonizes writes its own pidfile (write_pidfile: no), which we wait for.
            if [ "$write_pidfile" = yes ]; then
                printf '%s\n' "$!" > "$pidfile.tmp.$$" && mv -f -- "$pidfile.tmp.$$" "$pidfile"
            fi
        }
        ;;
    *) refuse "unknown manager: $manager" ;;
esac

# --- phases ------------------------------------------------------------------------------

case $phase in
    detect | verify)
        if is_running; then
            say "$service is running ($manager)"
            exit 0
        fi
        say "$service is not running ($manager)"
        exit 1
        ;;
    remediate) ;;
    *) refuse "unknown VIGIL_PHASE: $phase" ;;
esac

if is_running; then
    say "$service is already running ($manager); nothing to do"
    exit 0
fi
if [ "$dry_run" = 1 ]; then
    say "dry run: would restart $service ($manager)"
    exit 0
fi
say "restarting $service ($manager)"
restart || {
    say "restart of $service failed"
    exit 1
}
# Wait (bounded) until the manager reports it running.
waited=0
while ! is_running; do
    if [ "$waited" -ge "$((start_timeout * 10))" ]; then
        say "$service did not start within ${start_timeout}s"
        exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
done
say "$service is running again"
exit 0
