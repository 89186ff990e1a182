#!/bin/sh
# log-rotate: gzip and truncate oversized log files in one folder (copytruncate).
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_DIR       absolute path of the folder holding the logs (required)
#   VIGIL_PARAM_PATTERN   file name glob, no '/' (default *.log)
#   VIGIL_PARAM_MAX_SIZE  rotate files larger than this many bytes (default 104857600)
#   VIGIL_PARAM_KEEP      rotations kept per file, 1-50 (default 5)
#   VIGIL_DRY_RUN         "1": list what would be rotated, change nothing
#
# Exit status: 0 done (also when nothing was oversized), 1 some file could not be
# rotated (it is left as it was), 3 refused (bad parameter; nothing touched).
#
# Run it as the folder's owner (run_as) when untrusted users can write the folder: a file
# swapped for a symlink between the check and the truncation would otherwise be followed
# with the agent's rights. A shell cannot open a file without following links.

set -u

refuse() {
    printf 'log-rotate: refusing: %s\n' "$1" >&2
    exit 3
}

dir=${VIGIL_PARAM_DIR:-}
pattern=${VIGIL_PARAM_PATTERN:-*.log}
max_size=${VIGIL_PARAM_MAX_SIZE:-104857600}
keep=${VIGIL_PARAM_KEEP:-5}
dry_run=${VIGIL_DRY_RUN:-0}

case $dir in /*) ;; *) refuse "VIGIL_PARAM_DIR must be an absolute path: '$dir'" ;; esac
[ -d "$dir" ] || refuse "not a folder: $dir"
case $pattern in '' | */*) refuse "pattern must be a file name glob without '/': '$pattern'" ;; esac
case $max_size in '' | *[!0-9]*) refuse "max_size must be a whole number of bytes: $max_size" ;; esac
case $keep in '' | *[!0-9]*) refuse "keep must be a whole number: $keep" ;; esac
if [ "$keep" -lt 1 ] || [ "$keep" -gt 50 ]; then refuse "keep must be between 1 and 50: $keep"; fi
real=$(CDPATH='' cd -P -- "$dir" && pwd -P && printf x) || refuse "cannot enter: $dir"
real=${real%?x}
case $real in
    / | /bin | /boot | /dev | /etc | /lib | /lib64 | /proc | /sbin | /sys | /usr | /usr/*)
        refuse "will not rotate files in a system folder: $real" ;;
esac

status=0
rotated=0
# -maxdepth 1 -type f: regular files directly in the folder; find -P never follows links.
# -size +Nc means strictly larger than N bytes. Names are NUL-safe via -exec, one per call.
list=$(mktemp) || exit 1
trap 'rm -f -- "$list"' EXIT
find -P "$real" -mindepth 1 -maxdepth 1 -type f -name "$pattern" -size "+${max_size}c" \
    -exec printf '%s\n' {} \; > "$list"

while IFS= read -r file; do
    # A name with a line break arrives in pieces: anything not under the folder is one.
    case $file in "$real"/*) ;; *) continue ;; esac
    if [ ! -f "$file" ] || [ -L "$file" ]; then continue; fi
    size=$(wc -c < "$file" | tr -d ' ')
    if [ "$dry_run" = 1 ]; then
        printf 'log-rotate: would rotate %s (%s bytes)\n' "$file" "$size"
        continue
    fi
    # Shift older rotations: NAME.(keep-1).gz -> NAME.keep.gz ... NAME.1.gz -> NAME.2.gz.
    i=$keep
    rm -f -- "$file.$keep.gz"
    while [ "$i" -gt 1 ]; do
        prev=$((i - 1))
        if [ -f "$file.$prev.gz" ] && [ ! -L "$file.$prev.gz" ]; then
            mv -f -- "$file.$prev.gz" "$file.$i.gz"
        fi
        i=$prev
    done
    tmp="$file.1.gz.tmp.$$"
    if gzip -c -- "$file" > "$tmp" && mv -f -- "$tmp" "$file.1.gz"; then
        # Truncate in place (same inode): the writer's open file keeps working.
        : > "$file"
        rotated=$((rotated + 1))
        printf 'log-rotate: rotated %s (%s bytes) to %s.1.gz\n' "$file" "$size" "$file"
    else
        rm -f -- "$tmp"
        printf 'log-rotate: could not compress %s; left as it was\n' "$file" >&2
        status=1
    fi
done < "$list"

[ "$dry_run" = 1 ] || printf 'log-rotate: %s file(s) rotated in %s\n' "$rotated" "$real"
exit "$status"
