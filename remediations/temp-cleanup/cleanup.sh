#!/bin/sh
# temp-cleanup: delete stale regular files from allow-listed temporary folders.
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_DIRS             folders to clean, separated by ':' (default /tmp:/var/tmp)
#   VIGIL_PARAM_MIN_AGE_MINUTES  only files unmodified this long are deleted (default 10080)
#   VIGIL_DRY_RUN                "1": only list what would be deleted
#
# Safety (the agent may run this as root):
#   * find -P never follows symlinks, and -type f selects regular files only, so a link
#     is neither deleted nor followed and its target is never touched;
#   * -xdev never crosses into another filesystem mounted below a folder;
#   * find's own -delete unlinks relative to the folder it is walking, so swapping a
#     subfolder for a symlink mid-run cannot redirect it (unlike "rm $path");
#   * each folder is resolved (symlinks included) and refused if it is a system folder;
#   * every path is one quoted argument: no word splitting, no globbing, no eval.
#
# Exit status: 0 done (also when nothing was stale), 1 some files could not be deleted,
# 3 refused (bad parameter; nothing was touched).

set -u

refuse() {
    printf 'temp-cleanup: refusing: %s\n' "$1" >&2
    exit 3
}

dirs=${VIGIL_PARAM_DIRS:-/tmp:/var/tmp}
age=${VIGIL_PARAM_MIN_AGE_MINUTES:-10080}
dry_run=${VIGIL_DRY_RUN:-0}

case $age in
    '' | *[!0-9]*) refuse "min_age_minutes must be a whole number of minutes: $age" ;;
esac
[ "$age" -ge 1 ] || refuse "min_age_minutes must be at least 1"

# Validate every folder before deleting anything, so one bad entry changes nothing.
# The resolved folders are kept one per line, so a name with a line break is refused.
newline='
'
reals=""
old_ifs=$IFS
IFS=:
for dir in $dirs; do
    IFS=$old_ifs
    case $dir in
        /*) ;;
        *) refuse "not an absolute path: '$dir'" ;;
    esac
    [ -d "$dir" ] || refuse "not a folder: $dir"
    # The trailing x keeps command substitution from eating newlines at the end of a name.
    real=$(CDPATH='' cd -P -- "$dir" && pwd -P && printf x) || refuse "cannot enter: $dir"
    real=${real%?x}
    case $real in
        *"$newline"*) refuse "folder names with a line break are not supported: $dir" ;;
    esac
    case $real in
        / | /bin | /boot | /dev | /etc | /home | /lib | /lib32 | /lib64 | /opt | /proc | \
            /root | /run | /sbin | /srv | /sys | /usr | /usr/* | /var | /System | /Users | \
            /Library | /Applications | /private | /private/var)
            refuse "will not clean a system folder: $dir ($real)" ;;
    esac
    reals="$reals$real
"
done
IFS=$old_ifs
[ -n "$reals" ] || refuse "no folders given"

if [ "$dry_run" = 1 ]; then verb="would remove"; else verb="removing"; fi
# Names go to stderr for the log; sizes (numbers only, immune to odd names) to a file.
# shellcheck disable=SC2016 # expanded by the sh -c that find runs, per file
describe='printf "%s %s\n" "$0" "$1" >&2 && wc -c < "$1"'
sizes=$(mktemp) || exit 1
trap 'rm -f -- "$sizes"' EXIT

status=0
# One resolved folder per line (names with a line break were refused above).
printf '%s' "$reals" | while IFS= read -r real; do
    [ -n "$real" ] || continue
    if [ "$dry_run" = 1 ]; then
        find -P "$real" -xdev -type f -mmin "+$age" -exec sh -c "$describe" "$verb" {} \; \
            >> "$sizes" || exit 1
    else
        # -delete runs only for files whose -exec succeeded, i.e. that were counted.
        find -P "$real" -xdev -type f -mmin "+$age" -exec sh -c "$describe" "$verb" {} \; \
            -delete >> "$sizes" || exit 1
    fi
done || status=1

summary=$(awk '{ n++; b += $1 } END { printf "%d files, %.0f bytes", n, b }' "$sizes")
if [ "$dry_run" = 1 ]; then
    printf 'temp-cleanup: dry run: would remove %s (older than %s minutes)\n' "$summary" "$age"
else
    printf 'temp-cleanup: removed %s (older than %s minutes)\n' "$summary" "$age"
fi
if [ "$status" -ne 0 ]; then
    printf 'temp-cleanup: some files could not be removed\n' >&2
    exit 1
fi
exit 0
