#!/usr/bin/env bash
# Remote-cache throughput: `spo-pipe push` / `pull` against moto's S3 server on loopback, beside
# `aws s3 cp --recursive` of the same files to and from the same server, same sitting.
# Needs moto_server and aws (scripts/install-s3.sh) and a release spo-pipe build.
# Usage: bash bench/remote.sh [FILES] [MIB_PER_FILE] [ROUNDS]   (default 32 8 3: 256 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
N="${1:-32}"; MIB="${2:-8}"; ROUNDS="${3:-3}"
SPO="${SPO:-$CARGO_TARGET_DIR/release/spo-pipe}"
venv="${SPO_S3_VENV:-$HOME/.cache/spo-pipe/s3-venv}"
PATH="$PATH:$venv/bin"
W="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$PORT" >"$W/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$W"' EXIT
export AWS_ENDPOINT="http://127.0.0.1:$PORT" AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT" && break; sleep 0.1; done

mkdir -p "$W/a"
cat > "$W/a/pipeline.toml" <<T
[stage.big]
kind = "command"
params = { cmd = "for i in \$(seq $N); do head -c ${MIB}M /dev/urandom > \$SPO_OUT/f\$i.bin; done" }
T
(cd "$W/a" && "$SPO" -q run big)
KEY="$(ls "$W/a/runs/store")"
BYTES="$(du -sb "$W/a/runs/store/$KEY" | cut -f1)"
now() { date +%s.%N; }
mibs() { python3 -c "print(f'{$BYTES/1048576/($2-$1):.0f}')"; }
echo "# $N files x $MIB MiB ($BYTES bytes incl. manifest); moto $(python3 -c "import moto; print(moto.__version__)" 2>/dev/null); $(aws --version 2>&1)"
echo -e "round\tspo push MiB/s\taws cp up MiB/s\tspo pull MiB/s\taws cp down MiB/s"
for r in $(seq "$ROUNDS"); do
    curl -s -X PUT -o /dev/null "$AWS_ENDPOINT/bench$r"
    t0=$(now); (cd "$W/a" && "$SPO" -q push big --remote "s3://bench$r/spo"); t1=$(now)
    aws s3 cp --quiet --recursive "$W/a/runs/store/$KEY" "s3://bench$r/awscp/"; t2=$(now)
    rm -rf "$W/b" "$W/dl"; mkdir -p "$W/b"; cp "$W/a/pipeline.toml" "$W/b/"
    t3=$(now); (cd "$W/b" && "$SPO" -q pull big --remote "s3://bench$r/spo"); t4=$(now)
    aws s3 cp --quiet --recursive "s3://bench$r/awscp/" "$W/dl/"; t5=$(now)
    cmp -s "$W/a/runs/store/$KEY/f1.bin" "$W/b/runs/store/$KEY/f1.bin"
    echo -e "$r\t$(mibs $t0 $t1)\t$(mibs $t1 $t2)\t$(mibs $t3 $t4)\t$(mibs $t4 $t5)"
    curl -s -X DELETE -o /dev/null "$AWS_ENDPOINT/moto-api/reset" || true
    curl -s -X POST -o /dev/null "$AWS_ENDPOINT/moto-api/reset"
done
