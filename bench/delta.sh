#!/bin/sh
# Delta benchmark: two consecutive real release builds of
# agent-lib that differ by one small source change, then full / zstd /
# bsdiff+zstd / zstd-patch-from / elf-x86-64-bsdiff-zstd sizes and the time
# and peak memory to create and apply each delta. Paste the printed table
# into docs/benchmarks.md.
#
# Usage: bench/delta.sh [build|build-commits OLD NEW|build-bump|measure|measure-apply|all]
#   (default: all = build + measure)
#   build: A = HEAD, B = HEAD with a one-line change (a string constant)
#   build-commits OLD NEW: A = the library of commit OLD, B = that of NEW
#     (e.g. a ~500-line feature change, or two releases apart), each built
#     with this checkout's packaging/build and [profile.*] sections, so
#     only the source differs
#   build-bump: A = HEAD with one dependency moved back a few patch
#     releases (BUMP_CRATE, default serde_json, to BUMP_FROM, default
#     1.0.150), B = HEAD: what a routine dependency bump costs
#   measure-apply: only the apply runs, on the patches the last `measure` made
#   BENCH_DIR   work dir (default /tmp/outrider-delta-bench); never inside the repo
#   RUNS        runs per timed measurement (default 5)
#
# The builds happen in a `git archive` copy with its own CARGO_TARGET_DIR,
# so nothing in the working tree or the shared target dir is touched. They
# are the shipped build: `packaging/build --profile dist --only
# outrider-agent-lib` (the library on its own, portable, reproducible).
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/outrider-delta-bench}
RUNS=${RUNS:-5}
LIB=liboutrider_agent.so
# Every format outrider-delta makes (DeltaFormat in signing/src/manifest.rs).
FORMATS="bsdiff-zstd zstd-patch-from elf-x86-64-bsdiff-zstd"
BUMP_CRATE=${BUMP_CRATE:-serde_json}
BUMP_FROM=${BUMP_FROM:-1.0.150}
# Same level as `outrider release publish` (ZSTD_LEVEL in cli/src/release*).
PUBLISH_ZSTD_LEVEL=$(grep -rhs 'const ZSTD_LEVEL: i32 = ' "$REPO/cli/src" | sed -n 's/.*= \([0-9]*\);.*/\1/p' | head -n 1)

die() { echo "delta.sh: $*" >&2; exit 1; }

# checkout REV: a fresh copy of commit REV in $BENCH_DIR/src, with this
# checkout's build script and profiles (older commits may predate them).
# `tar -m`: files get the current time, not the commit's; with the commit's
# time cargo would take an older commit's files as unchanged and rebuild
# nothing.
checkout() {
    src="$BENCH_DIR/src"
    { rm -rf "$src" && mkdir -p "$src"; } || die "cannot create $src"
    (cd "$REPO" && git archive "$1") | tar -x -m -C "$src" || die "git archive $1 failed"
    cp "$REPO/packaging/build" "$src/packaging/build" || die "cannot copy packaging/build"
    sed -i '/^\[profile\./,$d' "$src/Cargo.toml"
    sed -n '/^\[profile\./,$p' "$REPO/Cargo.toml" >> "$src/Cargo.toml"
}

# build_lib NAME: the shipped library of $BENCH_DIR/src as $BENCH_DIR/NAME.so.
build_lib() {
    CARGO_TARGET_DIR="$BENCH_DIR/target" sh "$src/packaging/build" --profile dist \
        --only outrider-agent-lib --out "$BENCH_DIR/out" >/dev/null || die "build $1 failed"
    cp "$BENCH_DIR/out/$LIB" "$BENCH_DIR/$1.so"
}

build() {
    checkout HEAD
    build_lib A
    # The small source change: one user-visible string constant.
    sed -i 's/(no output returned from plugin)/(plugin returned no output)/' "$src/agent-lib/src/runner.rs"
    grep -q 'plugin returned no output' "$src/agent-lib/src/runner.rs" || die "source change not applied"
    build_lib B
    ls -l "$BENCH_DIR/A.so" "$BENCH_DIR/B.so"
}

build_bump() {
    checkout HEAD
    (cd "$src" && cargo update -q -p "$BUMP_CRATE" --precise "$BUMP_FROM") \
        || die "cannot move $BUMP_CRATE to $BUMP_FROM"
    build_lib A
    checkout HEAD
    build_lib B
    echo "A = HEAD with $BUMP_CRATE $BUMP_FROM, B = HEAD ($(grep -A1 "^name = \"$BUMP_CRATE\"$" "$REPO/Cargo.lock" | sed -n 's/version = //p'))"
    ls -l "$BENCH_DIR/A.so" "$BENCH_DIR/B.so"
}

build_commits() {
    [ $# -eq 2 ] || die "build-commits needs OLD and NEW"
    checkout "$1"
    build_lib A
    checkout "$2"
    build_lib B
    echo "A = $1, B = $2: $(cd "$REPO" && git diff --shortstat "$1" "$2" -- agent-lib/src protocol/src abi/src)"
    ls -l "$BENCH_DIR/A.so" "$BENCH_DIR/B.so"
}

# stats FILE: "median (min–max)" of the numbers in FILE, one per line.
stats() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%s (%s–%s)", m, v[1], v[NR] }'
}

# timed NAME CMD...: runs CMD under /usr/bin/time, appends seconds and max RSS (KiB).
timed() {
    name=$1; shift
    /usr/bin/time -f '%e %M' -o "$BENCH_DIR/time.out" "$@" || die "$name failed: $*"
    read -r secs rss < "$BENCH_DIR/time.out"
    echo "$secs" >> "$BENCH_DIR/$name.secs"
    echo "$rss" >> "$BENCH_DIR/$name.rss"
}

# apply_runs SIZE: one round of apply runs, interleaved across formats and
# code paths: `apply` = `apply_to` streaming into a BufWriter<File>,
# `apply-vec` = `apply` into a Vec, then one write.
apply_runs() {
    for mode in apply apply-vec; do
        for f in $FORMATS; do
            rm -f "$f.out"
            timed "$mode-$f" "$tool" "$mode" "$f" A.so "$f.patch" "$1" "$f.out"
            cmp -s "$f.out" B.so || die "$mode $f did not reproduce B.so"
        done
    done
}

# report_apply SIZE: the apply lines of the table.
report_apply() {
    for f in $FORMATS; do
        for mode in apply apply-vec; do
            echo "$f $mode: $(stats "$mode-$f.secs") s, max RSS $(stats "$mode-$f.rss") KiB" \
                "= $(awk "BEGIN { printf \"%.2f\", $(sort -n "$mode-$f.rss" | tail -1) * 1024 / $1 }")× library (worst run)"
        done
    done
}

build_tool() {
    { [ -f "$BENCH_DIR/A.so" ] && [ -f "$BENCH_DIR/B.so" ]; } || die "run 'bench/delta.sh build' first"
    (cd "$REPO" && cargo build --release -p outrider-delta --example deltatool \
        --target-dir "$BENCH_DIR/target") || die "building deltatool failed"
    tool="$BENCH_DIR/target/release/examples/deltatool"
    cd "$BENCH_DIR" || die "cannot enter $BENCH_DIR"
}

measure() {
    [ -n "$PUBLISH_ZSTD_LEVEL" ] || die "cannot find ZSTD_LEVEL in cli/src"
    build_tool
    rm -f ./*.secs ./*.rss
    size=$(wc -c < B.so)
    "$tool" zstd "$PUBLISH_ZSTD_LEVEL" B.so B.so.zst || die "zstd failed"
    zsize=$(wc -c < B.so.zst)
    i=0
    # Interleaved (A B A B …) so machine noise hits both formats alike.
    while [ "$i" -lt "$RUNS" ]; do
        for f in $FORMATS; do
            timed "create-$f" "$tool" create "$f" A.so B.so "$f.patch"
        done
        apply_runs "$size"
        i=$((i + 1))
    done
    echo "date: $(date -I); runs: $RUNS; $(nproc) cores"
    echo "full build B.so:              $size bytes (A.so: $(wc -c < A.so))"
    echo "zstd -$PUBLISH_ZSTD_LEVEL full build:        $zsize bytes"
    for f in $FORMATS; do
        p=$(wc -c < "$f.patch")
        echo "$f patch:  $p bytes = $(awk "BEGIN { printf \"%.2f\", 100 * $p / $zsize }")% of zstd full"
        echo "  create: $(stats "create-$f.secs") s, max RSS $(stats "create-$f.rss") KiB"
    done
    report_apply "$size"
}

measure_apply() {
    build_tool
    for f in $FORMATS; do
        [ -f "$f.patch" ] || die "no $f.patch; run 'bench/delta.sh measure' first"
    done
    rm -f ./apply*.secs ./apply*.rss
    size=$(wc -c < B.so)
    i=0
    while [ "$i" -lt "$RUNS" ]; do
        apply_runs "$size"
        i=$((i + 1))
    done
    echo "date: $(date -I); runs: $RUNS; $(nproc) cores; B.so: $size bytes"
    report_apply "$size"
}

main() {
    case "${1:-all}" in
        build) build ;;
        build-commits) shift; build_commits "$@" ;;
        build-bump) build_bump ;;
        measure) measure ;;
        measure-apply) measure_apply ;;
        all) build && measure ;;
        *) echo "usage: bench/delta.sh [build|build-commits OLD NEW|build-bump|measure|measure-apply|all]" >&2; exit 64 ;;
    esac
}

main "$@" || exit 1
