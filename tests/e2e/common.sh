# Shared by the in-guest end-to-end scripts (sourced; busy-box ash): KEY=VALUE arguments,
# the target's address, and the STEP/PASS/FAIL reporting the host-side scripts read.
set -eu
set -o pipefail 2>/dev/null || true

for kv in "$@"; do
    case $kv in
        [A-Za-z_]*=*) export "${kv?}" ;;
        *) echo "usage: $0 [SUBNQN=nqn] [TARGET_ADDR=a] [TARGET_PORT=p] ..." >&2; exit 2 ;;
    esac
done
ADDR=${TARGET_ADDR:-10.0.2.2}
PORT=${TARGET_PORT:-4420}
NQN=${SUBNQN:-}
TMO=${E2E_STEP_TIMEOUT:-300}

CUR="setup"
T0=$(cut -d' ' -f1 /proc/uptime)
now() { cut -d' ' -f1 /proc/uptime; }
step() { CUR=$*; echo "STEP: $* (t=$(now)s)"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; exit 1; }
