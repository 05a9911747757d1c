#!/usr/bin/env bash
# The import boundary: only SupervisorPlatform may import Glibc or the C shim
# (docs/architecture.md, "Modules"). Every other module of the supervisor
# reaches libc through SupervisorPlatform's wrappers, so the calls that can
# fail in system-specific ways sit in one place.
#
# Checked: every Swift file under Sources/, except
#   - Sources/SupervisorPlatform: the door itself;
#   - the worker programs (CellKit and the cells): separate static
#     executables that never link the supervisor's modules.
# Tests are not checked: a test that asks the kernel directly must not go
# through the code it tests.
#
# Files that still import Glibc or the shim are listed in
# tools/check-imports.allow, one path per line with a comment saying why; a
# listed file that no longer needs it is an error too, so the list only
# shrinks.
#
# Usage: tools/check-imports.sh   (from anywhere; exit 1 on a violation)
set -euo pipefail
cd "$(dirname "$0")/.."

allowlist=tools/check-imports.allow
# `import Glibc`, `@preconcurrency import Glibc`, `import func Glibc.read`, ...
pattern='^[[:space:]]*(@[A-Za-z_]+(\([^)]*\))?[[:space:]]+)*import[[:space:]]+((typealias|struct|class|enum|protocol|let|var|func)[[:space:]]+)?(Glibc|Musl|CSupervisorShim)([.[:space:]]|$)'
exempt='^Sources/(SupervisorPlatform|CellKit|echo-cell|fs-cell|probe-cell)/'

allowed=()
if [[ -f $allowlist ]]; then
    while read -r path _; do
        [[ -z $path || $path == \#* ]] && continue
        allowed+=("$path")
    done <"$allowlist"
fi
is_allowed() {
    local p
    for p in "${allowed[@]}"; do [[ $p == "$1" ]] && return 0; done
    return 1
}

status=0
declare -A seen=()
while IFS=: read -r file line text; do
    [[ $file =~ $exempt ]] && continue
    seen[$file]=1
    is_allowed "$file" && continue
    echo "$file:$line: only SupervisorPlatform may import Glibc or CSupervisorShim: ${text#"${text%%[![:space:]]*}"}" >&2
    echo "  move the libc call into a SupervisorPlatform wrapper named after its C function (Sources/SupervisorPlatform/Libc.swift)" >&2
    status=1
done < <(grep -rnE --include='*.swift' "$pattern" Sources || true)

for p in "${allowed[@]}"; do
    if [[ -z ${seen[$p]:-} ]]; then
        echo "$allowlist: $p no longer imports Glibc or the shim: remove it from the list" >&2
        status=1
    fi
done
exit $status
