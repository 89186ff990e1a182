#!/bin/sh
# print-queue-clear: detect and clear a stuck CUPS print queue.
#
#   VIGIL_PHASE=detect|verify  exit 1 if a queue is disabled or has a job older than
#                              max_job_age_minutes, 0 if not, 2 if CUPS cannot be asked
#   VIGIL_PHASE=remediate      cancel the queue's jobs and re-enable it
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_QUEUE                CUPS printer name, or empty for every queue
#   VIGIL_PARAM_MAX_JOB_AGE_MINUTES  a job older than this is stuck (default 30)
#   VIGIL_PARAM_CUPS_SERVER          scheduler to ask (host[:port] or socket path), exported
#                                    as CUPS_SERVER when set; empty: the system's default
#   VIGIL_DRY_RUN                    "1": say what would be done, change nothing
#
# Exit status: 0 (not stuck / cleared), 1 (stuck / clearing failed), 2 unknown,
# 3 refused. Last line "vigil-outcome: needs_user" when jobs were cancelled.

set -u

say() { printf 'print-queue-clear: %s\n' "$*"; }
queue=${VIGIL_PARAM_QUEUE:-}
max_age=${VIGIL_PARAM_MAX_JOB_AGE_MINUTES:-30}
phase=${VIGIL_PHASE:-remediate}
dry_run=${VIGIL_DRY_RUN:-0}
case $queue in -* | *[!A-Za-z0-9_.@-]*) say "refusing: bad queue name: '$queue'"; exit 3 ;; esac
case $max_age in '' | *[!0-9]*) say "refusing: max_job_age_minutes must be a whole number"; exit 3 ;; esac
server=${VIGIL_PARAM_CUPS_SERVER:-}
case $server in -* | *[!]A-Za-z0-9_.:/[-]*) say "refusing: bad cups_server: '$server'"; exit 3 ;; esac
if [ -n "$server" ]; then CUPS_SERVER=$server; export CUPS_SERVER; fi
command -v lpstat > /dev/null 2>&1 || { say "CUPS is not installed (no lpstat)"; exit 2; }

# Queues to look at: the named one, or every printer CUPS knows.
if [ -n "$queue" ]; then
    queues=$queue
else
    queues=$(lpstat -p 2> /dev/null | awk '$1 == "printer" { print $2 }')
fi

# stuck QUEUE: succeed (and say why) if QUEUE is disabled or holds a job older than the limit.
stuck() {
    if lpstat -p "$1" 2> /dev/null | grep -q ' disabled'; then
        say "queue $1 is disabled"
        return 0
    fi
    # "lpstat -W not-completed -o Q" lines: "Q-12 user 1024 Tue 28 Nov 2026 03:00:00 UTC";
    # the job's date is everything after the size; date -d parses it (GNU), else skip.
    now=$(date +%s)
    lpstat -W not-completed -o "$1" 2> /dev/null | while read -r job _user _size when; do
        t=$(date -d "$when" +%s 2> /dev/null) || continue
        if [ "$((now - t))" -gt "$((max_age * 60))" ]; then
            say "job $job on $1 has waited $(((now - t) / 60)) minutes"
            exit 1
        fi
    done
    [ $? -eq 1 ]
}

case $phase in
    detect | verify)
        lpstat -r > /dev/null 2>&1 || { say "the CUPS scheduler is not answering"; exit 2; }
        found=1
        for q in $queues; do stuck "$q" && found=0; done
        if [ "$found" = 0 ]; then exit 1; fi
        say "no stuck queue"
        exit 0
        ;;
    remediate) ;;
    *) say "refusing: unknown VIGIL_PHASE: $phase"; exit 3 ;;
esac

cancelled=0
status=0
for q in $queues; do
    stuck "$q" || continue
    jobs=$(lpstat -W not-completed -o "$q" 2> /dev/null | wc -l | tr -d ' ')
    if [ "$dry_run" = 1 ]; then
        say "dry run: would cancel $jobs job(s) on $q and re-enable it"
        continue
    fi
    if cancel -a "$q"; then
        cancelled=$((cancelled + jobs))
        say "cancelled $jobs job(s) on $q"
    else
        say "could not cancel the jobs on $q"
        status=1
    fi
    if cupsenable "$q"; then say "re-enabled $q"; else say "could not re-enable $q"; status=1; fi
done
[ "$status" -eq 0 ] || exit 1
if [ "$cancelled" -gt 0 ]; then
    say "the owners of $cancelled cancelled job(s) must print again"
    printf 'vigil-outcome: needs_user\n'
fi
exit 0
