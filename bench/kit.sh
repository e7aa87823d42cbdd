# Sourced by the benchmark scripts: namespaces from the namespace kit (pollux-netns), and
# one cleanup for what a script starts.
#
#   kit_up PATH/TO/pollux-netns SPEC...   makes the topology (see pollux-netns --help) and
#                                         sets PREFIX and NS_<ROLE>; the kit deletes it
#                                         when the script closes its end or dies
#   pids+=("$pid")                        processes kit_down stops first
#   work=...                              a scratch directory kit_down removes
#   trap kit_down EXIT

pids=()
work=

kit_up() { # pollux-netns SPEC...
    coproc KIT { exec "$@"; }
    kit_pid=$KIT_PID
    local names
    read -r names <&"${KIT[0]}" || { echo "$0: the namespace kit made no topology" >&2; exit 1; }
    eval "$names"
}

kit_down() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${kit_pid:-}" ]; then
        exec {KIT[1]}>&-
        wait "$kit_pid" 2>/dev/null || true
    fi
    [ -z "$work" ] || rm -rf "$work"
}
