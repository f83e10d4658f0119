#!/usr/bin/env bash
# nvmf-raid against SPDK's nvmf_tgt, side by side in one run (bench/peer.py has the
# details). SPDK is not part of this project: build it beside the project and point
# SPDK_DIR at the build (docs/performance.md, "Against SPDK").
#
#   SPDK_DIR=/path/to/spdk bench/peer.sh [SECONDS]    (default 10 s, REPEAT=3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet --bins --benches
FABRIC=$(ls -t target/release/deps/fabric-* | grep -v '\.d$' | head -1)
export FABRIC
exec python3 bench/peer.py "$@"
