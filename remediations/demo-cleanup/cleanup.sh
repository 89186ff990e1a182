#!/bin/sh
# demo-cleanup: delete the regular files under one spool folder, and nothing else.
#
# Parameters (environment, set by the Vigil agent from the check's remediation params):
#   VIGIL_PARAM_DIR  absolute path of the folder to empty (required; never "/")
#   VIGIL_DRY_RUN    "1" to only print what would be deleted
#
# Safety, because the agent may run this as root:
#   * only regular files are deleted (find -type f): never folders, sockets, devices, or
#     symlinks, and symlinks are never followed (find -P), so a link pointing outside
#     the folder cannot lead the deletion there;
#   * find -xdev never crosses into another filesystem mounted under the folder;
#   * deletion is find's own -delete, which unlinks relative to the folder it is
#     walking, so swapping a subfolder for a symlink mid-run cannot redirect it
#     (unlike "rm $path", which would follow the swapped link);
#   * every path is passed as one quoted argument: no word splitting, no globbing.
#
# Exit status: 0 done, 1 some files could not be deleted, 3 refused (bad parameter).

set -u

refuse() {
    printf 'demo-cleanup: refusing: %s\n' "$1" >&2
    exit 3
}

dir=${VIGIL_PARAM_DIR:-}
dry_run=${VIGIL_DRY_RUN:-0}

[ -n "$dir" ] || refuse "VIGIL_PARAM_DIR is not set"
case $dir in
    /*) ;;
    *) refuse "VIGIL_PARAM_DIR must be an absolute path: $dir" ;;
esac
[ -d "$dir" ] || refuse "not a folder: $dir"

# Resolve symlinks so "/tmp/link-to-root" is judged by where it really points. The
# trailing "x" keeps command substitution from eating newlines at the end of the name.
real=$(CDPATH='' cd -P -- "$dir" && pwd -P && printf x) || refuse "cannot enter: $dir"
real=${real%?x}
[ "$real" != "/" ] || refuse "will not clean the root folder: $dir"

if [ "$dry_run" = 1 ]; then
    verb="would remove"
else
    verb="removing"
fi

# One line per file with its size in bytes (only numbers, so odd file names cannot
# confuse the count); the names go to stderr for the log.
sizes=$(mktemp) || exit 1
trap 'rm -f -- "$sizes"' EXIT
# shellcheck disable=SC2016 # expanded by the sh -c that find runs, per file
describe='printf "%s %s\n" "$0" "$1" >&2 && wc -c < "$1"'

if [ "$dry_run" = 1 ]; then
    find -P "$real" -xdev -type f -exec sh -c "$describe" "$verb" {} \; > "$sizes"
else
    # -delete runs only for files whose -exec succeeded, i.e. that were counted.
    find -P "$real" -xdev -type f -exec sh -c "$describe" "$verb" {} \; -delete > "$sizes"
fi
status=$?

summary=$(awk '{ n++; b += $1 } END { printf "%d files, %.0f bytes", n, b }' "$sizes")
if [ "$dry_run" = 1 ]; then
    printf 'demo-cleanup: dry run: would remove %s from %s\n' "$summary" "$real"
else
    printf 'demo-cleanup: removed %s from %s\n' "$summary" "$real"
fi

if [ "$status" -ne 0 ]; then
    printf 'demo-cleanup: some files could not be removed (find exit %s)\n' "$status" >&2
    exit 1
fi
exit 0
