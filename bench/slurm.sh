#!/usr/bin/env bash
# Scale of the Slurm executor: a sweep of N cells (default 1000) submitted to the local
# single-node cluster (scripts/install-slurm.sh): time until every job is queued, squeue
# queries per minute while they run, then Ctrl-C (cancels the rest). Needs a release build.
# Usage: bash bench/slurm.sh [N] [SECONDS_TO_WATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
N="${1:-1000}"; WATCH="${2:-120}"
SPO="${SPO:-$CARGO_TARGET_DIR/release/spo-pipe}"
conf="${SPO_SLURM_DIR:-$HOME/.cache/spo-pipe/slurm}/slurm.conf"
[ -z "${SLURM_CONF:-}" ] && [ -f "$conf" ] && export SLURM_CONF="$conf"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
values="$(seq -s, 1 "$N" | sed 's/\([0-9]*\)/"echo \1 > $SPO_OUT\/o"/g')"
cat > "$W/pipeline.toml" <<T
[executor]
kind = "slurm"
cpus = 1
mem = "50M"
time = "5"
[stage.cell]
kind = "command"
params = { cmd = "echo 0 > \$SPO_OUT/o" }
[sweep.many]
stage = "cell"
grid = { cmd = [$values] }
T
cd "$W"
export SPO_PIPE_REPORT=0
start=$(date +%s.%N)
"$SPO" run many 2> "$W/err" &
pid=$!
while [ "$(grep -c 'queued' "$W/err" || true)" -lt "$N" ]; do sleep 0.2; done
queued=$(date +%s.%N)
echo "submitted $N jobs in $(python3 -c "print(f'{$queued-$start:.1f}')") s (planning included)"
sleep "$WATCH"
done_jobs=$(grep -c '✓ done' "$W/err" || true)
kill -INT "$pid"; wait "$pid" || true
grep 'interrupted' "$W/err"
echo "$done_jobs of $N cells committed by their jobs in the first $(python3 -c "print(f'{$(date +%s.%N)-$start:.0f}')") s"
