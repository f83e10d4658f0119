#!/usr/bin/env bash
# End to end with the real Linux initiator: start nvmf-raid on the host (default target
# over a sparse file), boot the Debian test guest and run tests/e2e/guest-nvme.sh in it
# (nvme discover/connect with and without digests, nvme-cli admin commands, fio verify,
# ext4 across a reconnect). Exits with the guest script's status.
#
#   scripts/e2e-guest.sh [path/to/nvmf-raid]
#
# Env: E2E_PORT (default 14420), plus everything scripts/guest/run.sh accepts.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${1:-$REPO/target/release/nvmf-raid}
PORT=${E2E_PORT:-14420}
NQN=nqn.2026-11.io.nvmf-raid:default
OUT="$REPO/target/e2e"
mkdir -p "$OUT"
DATA=$(mktemp -d "$OUT/data.XXXXXX")

[[ -x $BIN ]] || { echo "e2e-guest: no binary at $BIN (cargo build --release first)" >&2; exit 2; }

METRICS=127.0.0.1:${E2E_METRICS_PORT:-14464}
"$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --cores 0 --socket "$OUT/mgmt.sock" --metrics "$METRICS" >"$OUT/target.log" 2>&1 &
TARGET_PID=$!
cleanup() {
    kill "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 50); do
    grep -q "nvme connect" "$OUT/target.log" && break
    kill -0 "$TARGET_PID" 2>/dev/null || { cat "$OUT/target.log"; echo "e2e-guest: target exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "nvme connect" "$OUT/target.log" || { cat "$OUT/target.log"; echo "e2e-guest: target did not start" >&2; exit 1; }

set +e
SUBNQN=$NQN TARGET_ADDR=10.0.2.2 TARGET_PORT=$PORT GUEST_LOG="$OUT/guest.log" \
    "$REPO/scripts/guest/run.sh" "$REPO/tests/e2e/guest-nvme.sh"
status=$?
set -e

# The guest's `nvme connect --disable-sqflow` must have reached the target as such.
if [[ " ${E2E_SKIP:-} " == *" sqflow "* ]]; then
    echo "e2e-guest: SKIPPED: check of the target's no-SQ-flow-control log line (sqflow listed in E2E_SKIP)"
elif ! grep -q "without SQ flow control" "$OUT/target.log"; then
    echo "e2e-guest: FAIL: no queue was connected without SQ flow control" >&2
    status=1
fi

# What the guest's fio left in the statistics: the table, a plot rendered to PNG, and the
# Prometheus exposition checked by promtool.
if kill -0 "$TARGET_PID" 2>/dev/null; then
    echo "e2e-guest: nvmf-raid stats after the guest run:"
    "$BIN" --socket "$OUT/mgmt.sock" stats --plot "$OUT/stats.svg" | tee "$OUT/stats.txt" || status=1
    if ! grep -q "ns 1 .*write" "$OUT/stats.txt"; then
        echo "e2e-guest: FAIL: the statistics show no writes from the guest" >&2
        status=1
    fi
    if rsvg-convert -o "$OUT/stats.png" "$OUT/stats.svg"; then
        echo "e2e-guest: plot $OUT/stats.svg rendered to $OUT/stats.png ($(stat -c %s "$OUT/stats.png") bytes)"
    else
        echo "e2e-guest: FAIL: rsvg-convert could not render the plot" >&2
        status=1
    fi
    if python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' "http://$METRICS/metrics" >"$OUT/metrics.txt" && promtool check metrics <"$OUT/metrics.txt"; then
        echo "e2e-guest: promtool check metrics: ok ($(grep -vc '^#' "$OUT/metrics.txt") samples)"
    else
        echo "e2e-guest: FAIL: metrics not served or rejected by promtool" >&2
        status=1
    fi
fi

# The target must have survived the run and must stop cleanly on SIGTERM.
if ! kill -0 "$TARGET_PID" 2>/dev/null; then
    echo "e2e-guest: the target died during the run" >&2
    status=1
else
    kill -TERM "$TARGET_PID"
    if ! wait "$TARGET_PID"; then
        echo "e2e-guest: the target did not exit cleanly on SIGTERM" >&2
        status=1
    fi
fi
grep -E "ERROR|panicked" "$OUT/target.log" && { echo "e2e-guest: the target logged errors" >&2; status=1; }
echo "e2e-guest: guest log $OUT/guest.log, target log $OUT/target.log"
exit $status
