#!/usr/bin/env bash
# No-op `run` on a fully cached DAG: spo-pipe vs DVC, same machine, same sitting.
# Needs: hyperfine (apt), a DVC venv (bench/setup.sh), a release spo-pipe build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked -p spo-pipe
SPO="$CARGO_TARGET_DIR/release/spo-pipe"
DVC="${DVC:-$HOME/.cache/spo-pipe/dvc-venv/bin/dvc}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
export DVC_NO_ANALYTICS=1 GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b

# --- 3 stages -------------------------------------------------------------------------------
mkdir -p "$W/spo3" "$W/dvc3"
cat > "$W/spo3/pipeline.toml" <<'T'
[stage.a]
kind = "command"
params = { cmd = "echo a > $SPO_OUT/a.txt" }
[stage.b]
kind = "command"
needs = ["a"]
params = { cmd = "cat $SPO_INPUT_A/a.txt > $SPO_OUT/b.txt" }
[stage.c]
kind = "command"
needs = ["b"]
params = { cmd = "cat $SPO_INPUT_B/b.txt > $SPO_OUT/c.txt" }
T
cat > "$W/dvc3/dvc.yaml" <<'T'
stages:
  a:
    cmd: echo a > a.txt
    outs: [a.txt]
  b:
    cmd: cat a.txt > b.txt
    deps: [a.txt]
    outs: [b.txt]
  c:
    cmd: cat b.txt > c.txt
    deps: [b.txt]
    outs: [c.txt]
T

# --- 100 cells --------------------------------------------------------------------------------
mkdir -p "$W/spo100" "$W/dvc100"
{
  echo '[stage.gen]'; echo 'kind = "command"'; echo 'params = { cmd = "echo 0 > $SPO_OUT/o.txt" }'
  echo '[sweep.many]'; echo 'stage = "gen"'
  printf 'grid = { cmd = ['; for i in $(seq 0 99); do printf '"echo %d > $SPO_OUT/o.txt", ' "$i"; done; echo '] }'
  echo '[pipeline]'; echo 'default = "many"'
} > "$W/spo100/pipeline.toml"
{
  echo 'stages:'; echo '  gen:'; printf '    foreach: ['; for i in $(seq 0 99); do printf '%d, ' "$i"; done; echo ']'
  echo '    do:'; echo '      cmd: echo ${item} > o${item}.txt'; echo '      outs:'; echo '        - o${item}.txt'
} > "$W/dvc100/dvc.yaml"

for d in dvc3 dvc100; do
  (cd "$W/$d" && git init -q && "$DVC" init -q && "$DVC" config core.analytics false && "$DVC" repro -q >/dev/null && git add -A && git commit -qm init)
done
for d in spo3 spo100; do (cd "$W/$d" && "$SPO" run -q); done

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), spo-pipe $("$SPO" --version | cut -d' ' -f2), $("$DVC" --version | sed 's/^/DVC /')"
hyperfine -N --warmup 3 --runs 30 --export-markdown "$W/noop3.md" \
  -n "spo-pipe run (3 stages)" "sh -c 'cd $W/spo3 && $SPO run -q'" \
  -n "dvc repro (3 stages)" "sh -c 'cd $W/dvc3 && $DVC repro -q'"
hyperfine -N --warmup 2 --runs 10 --export-markdown "$W/noop100.md" \
  -n "spo-pipe run (100 cells)" "sh -c 'cd $W/spo100 && $SPO run -q'" \
  -n "dvc repro (100 stages)" "sh -c 'cd $W/dvc100 && $DVC repro -q'"
cat "$W/noop3.md" "$W/noop100.md"
