#!/usr/bin/env bash
# The benchmark suite (bench/suite.py has the details): builds the release binaries, then
# prints one table of every case against the fabric ceiling and the null namespace, and
# the full-stripe write table.
#
#   bench/suite.sh [SECONDS]        every case, SECONDS per case (default 5)
#   SUITE=quick bench/suite.sh      null, RAID-0 and RAID-5 over RAM
#   REPEAT=3 bench/suite.sh         median of three runs per case
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v fio >/dev/null || { apt-get install -y -qq fio >/dev/null || { echo "suite: needs fio (apt-get install fio)" >&2; exit 1; }; }
cargo build --release --quiet --bins --benches
FABRIC=$(ls -t target/release/deps/fabric-* | grep -v '\.d$' | head -1)
export FABRIC
exec python3 bench/suite.py "$@"
