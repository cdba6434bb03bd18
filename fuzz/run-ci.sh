#!/usr/bin/env bash
# Runs each fuzz target briefly on its seed corpus (fuzz/corpus/<target>): about 15 s each,
# 45 s in all, after the build. New inputs go to fuzz/corpus-run/ (not committed), crashes to
# fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz (.ci/run installs both).
#   FUZZ_SECONDS=60 bash fuzz/run-ci.sh   # longer
set -Eeuo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${FUZZ_SECONDS:-15}"
TARGETS=(decode_stream handshake_response validation inflate)

# One build for all targets; -a: with debug assertions, as in the long runs.
cargo +nightly fuzz build -a

for target in "${TARGETS[@]}"; do
    mkdir -p "corpus-run/$target"
    echo "== fuzz $target for ${SECONDS_EACH} s"
    # -malloc_limit_mb: no single allocation over 64 MiB (the decoder's limits in
    # decode_stream go up to 16 MiB, and it reserves at most 1 MiB ahead of a payload).
    log="corpus-run/$target.log"
    status=0
    cargo +nightly fuzz run -a "$target" "corpus-run/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 -malloc_limit_mb=64 \
        -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done|^stat::number_of_executed_units' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz $target failed (exit $status): the crash input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz: no crash in ${#TARGETS[@]} targets"
