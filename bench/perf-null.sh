#!/usr/bin/env bash
# 4 KiB random reads at queue depth 32 against a null namespace: target reactor on core 0,
# `nvmf-raid perf` pinned to core 1, once with adaptive and once with busy polling.
#
#   bench/perf-null.sh [SECONDS]      (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-10}
BIN=target/release/nvmf-raid
cargo build --release --quiet
for mode in adaptive busy; do
    "$BIN" serve --config bench/null.toml --polling "$mode" --log warn >/tmp/nvmf-raid-bench-$mode.log 2>&1 &
    pid=$!
    sleep 0.5
    echo "== target polling: $mode"
    "$BIN" perf --addr 127.0.0.1:4421 --nqn nqn.2026-11.io.nvmf-raid:bench-null \
        -q 32 -o 4096 -w randread -t "$SECS" --core 1
    t0=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill -TERM $pid
    wait $pid
    echo "target CPU: $(awk -v t="$t0" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f s", t/hz}')"
done
