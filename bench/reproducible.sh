#!/bin/sh
# Reproducibility check of the shipped build (docs/benchmarks.md, "Release
# builds"): the same commit, copied to two different directories, built by
# `packaging/build` with two different, empty target directories, must give
# byte-identical stub, library and CLI. Not a CI test: two full release
# builds take long on a small machine.
#
# Usage: bench/reproducible.sh [REV]     (default: HEAD)
#   BENCH_DIR     work dir (default /tmp/outrider-repro-bench); never inside the repo
#   PROFILE       cargo profile (default dist)
#   BUILD_FLAGS   extra packaging/build flags (e.g. --native)
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/outrider-repro-bench}
PROFILE=${PROFILE:-dist}
REV=${1:-HEAD}

die() { echo "reproducible.sh: $*" >&2; exit 1; }

# build_copy NAME: archive REV into BENCH_DIR/NAME/<a path of its own> and
# build it there with a fresh target dir.
build_copy() {
    dir="$BENCH_DIR/$1"
    src="$dir/checkout-$1-$$"
    { rm -rf "$dir" && mkdir -p "$src"; } || die "cannot create $src"
    (cd "$REPO" && git archive "$REV") | tar -x -C "$src" || die "git archive $REV failed"
    start=$(date +%s)
    # shellcheck disable=SC2086 # BUILD_FLAGS is a list of flags
    CARGO_TARGET_DIR="$dir/target-$1" sh "$src/packaging/build" --profile "$PROFILE" \
        ${BUILD_FLAGS:-} --out "$dir/out" >/dev/null || die "build $1 failed"
    echo "build $1: $(($(date +%s) - start)) s in $src"
}

main() {
    build_copy a
    build_copy b
    status=0
    for f in outrider-agent liboutrider_agent.so outrider; do
        a=$(sha256sum < "$BENCH_DIR/a/out/$f" | cut -d' ' -f1)
        b=$(sha256sum < "$BENCH_DIR/b/out/$f" | cut -d' ' -f1)
        if [ "$a" = "$b" ]; then
            echo "$f: identical ($a, $(wc -c < "$BENCH_DIR/a/out/$f") bytes)"
        else
            echo "$f: DIFFERENT: $a vs $b ($(cmp -l "$BENCH_DIR/a/out/$f" "$BENCH_DIR/b/out/$f" | wc -l) bytes differ)"
            status=1
        fi
    done
    echo "date: $(date -I); rev: $(cd "$REPO" && git rev-parse --short "$REV"); profile: $PROFILE; flags: ${BUILD_FLAGS:-none}"
    return "$status"
}

main "$@" || exit 1
