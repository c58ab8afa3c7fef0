#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) on its saved corpus in
# fuzz/corpus/. cargo-fuzz on stable Rust: no sanitizer (-s none), so a
# crash is a Rust panic or abort. Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${SECONDS_EACH:-${1:-10}}
command -v cargo-fuzz >/dev/null || cargo install --quiet cargo-fuzz
cargo fuzz build -s none
for t in $(cargo fuzz list); do
    echo "== fuzz $t for ${SECONDS_EACH}s"
    mkdir -p "corpus/$t"
    cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 \
        | grep -E "^stat::number_of_executed_units|^Done|panicked|SUMMARY" || true
    # A crash leaves an artifact: fail.
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then echo "fuzz target $t crashed: see fuzz/artifacts/$t" >&2; exit 1; fi
done
