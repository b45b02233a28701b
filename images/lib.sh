# Shared by images/*/build.sh (sourced): tool checks and the "already built" test.

# need_tools TOOL:PACKAGE...: stops with the package to install when a tool is missing.
need_tools() {
    local t
    for t in "$@"; do
        command -v "${t%%:*}" >/dev/null ||
            { echo "build.sh: ${t%%:*} missing (apt-get install ${t#*:})" >&2; exit 1; }
    done
}

# up_to_date INPUT... -- OUTPUT...: every output is non-empty and newer than every file
# among the inputs. Only the recipe's own files are inputs: editing a test rebuilds nothing.
up_to_date() {
    local inputs=() newest f
    while [ "$1" != -- ]; do inputs+=("$1"); shift; done
    shift
    newest=$(find "${inputs[@]}" -type f -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    for f in "$@"; do
        [ -s "$f" ] && [ "$f" -nt "$newest" ] || return 1
    done
}

# exit_if_built MESSAGE LOCKFILE FORCE INPUT... -- OUTPUT...: exits 0 with MESSAGE when
# the outputs are up to date (and FORCE is not 1). Otherwise takes LOCKFILE on fd 9 for
# the rest of the build, since concurrent builds share the download cache, and looks
# again: the build it waited for may have made the outputs.
exit_if_built() {
    local message=$1 lock=$2 force=$3
    shift 3
    if [ "$force" != 1 ] && up_to_date "$@"; then echo "$message"; exit 0; fi
    exec 9>"$lock"
    flock 9
    if [ "$force" != 1 ] && up_to_date "$@"; then echo "$message"; exit 0; fi
}
