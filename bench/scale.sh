#!/usr/bin/env bash
# Scaling of every verb on a `command`-kind sweep of N values plus one downstream stage
# (2N cells), spo-pipe vs DVC (and Snakemake where present), same machine, same sitting.
#
#   bash bench/scale.sh [N ...]            default: 1000 10000 100000 (2k, 20k, 200k cells)
#   SPO=path/to/spo-pipe LABEL=before bash bench/scale.sh 1000   time another build
#   DVC_MAX=1000 SNAKE_MAX=1000                                  largest N the others run at
#
# Prints one TSV line per (tool, cells, verb): wall seconds (best of 3 below 200k cells), and
# where measured the tool's own CPU seconds, its children's (the stage commands, from
# bench/selfcpu.py) and its peak RSS in KiB. Results also go to $OUT (default bench/scale.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [ -z "${SPO:-}" ]; then
  cargo build --release --locked -p spo-pipe >&2
  SPO="$CARGO_TARGET_DIR/release/spo-pipe"
fi
DVC="${DVC:-/tmp/dvc-venv/bin/dvc}"
SNAKE="${SNAKE:-/tmp/dvc-venv/bin/snakemake}"
DVC_MAX="${DVC_MAX:-1000}"
SNAKE_MAX="${SNAKE_MAX:-1000}"
OUT="${OUT:-$PWD/bench/scale.tsv}"
LABEL="${LABEL:-spo-pipe}"
SELFCPU="$PWD/bench/selfcpu.py"
SIZES=("${@:-1000 10000 100000}")
read -r -a SIZES <<<"${SIZES[*]}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
export DVC_NO_ANALYTICS=1 GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b

# The spo-pipe pipeline: `gen` swept over N commands, `post` reading each one's output.
spo_pipeline() {
  local n=$1
  cat <<'T'
[stage.gen]
kind = "command"
params = { cmd = "echo 0 > $SPO_OUT/o.txt" }
[stage.post]
kind = "command"
needs = ["gen"]
params = { cmd = "echo '{\"v\": 1}' > $SPO_OUT/metrics.json" }
[table.t]
title = "scale"
sweep = "many"
stage = "post"
metrics = ["v"]
[pipeline]
default = ["many"]
T
  printf '[sweep.many]\nstage = "gen"\ngrid = { cmd = ['
  awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "\"echo %d > $SPO_OUT/o.txt\", ", i }'
  printf '] }\n'
}

# The same DAG for DVC: two `foreach` stages of N items.
dvc_pipeline() {
  local n=$1 items
  items=$(awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "%d, ", i }')
  cat <<T
stages:
  gen:
    foreach: [$items]
    do:
      cmd: echo \${item} > o\${item}.txt
      outs:
        - o\${item}.txt
  post:
    foreach: [$items]
    do:
      cmd: cat o\${item}.txt > p\${item}.txt
      deps:
        - o\${item}.txt
      outs:
        - p\${item}.txt
T
}

snake_pipeline() {
  cat <<T
N = range($1)
rule all:
    input: expand("p{i}.txt", i=N)
rule gen:
    output: "o{i}.txt"
    shell: "echo {wildcards.i} > {output}"
rule post:
    input: "o{i}.txt"
    output: "p{i}.txt"
    shell: "cat {input} > {output}"
T
}

# Wall seconds of one command (best of $REPS), its output discarded.
best() {
  local reps=$1 t b=""
  shift
  for _ in $(seq "$reps"); do
    /usr/bin/time -f '%e' -o "$W/best" "$@" >/dev/null 2>&1 || true
    t=$(tail -1 "$W/best")
    if [ -z "$b" ] || awk -v t="$t" -v b="$b" 'BEGIN { exit !(t < b) }'; then b=$t; fi
  done
  echo "$b"
}

# Wall, own CPU, children's CPU and peak RSS of one command.
measure() {
  python3 "$SELFCPU" "$@" >"$W/m" 2>"$W/err" || tail -3 "$W/err" >&2
  awk '{ printf "%s\t%s\t%s\t%s\n", $4, $1, $2, $3 }' "$W/m"
}

emit() { printf '%s\n' "$*" | tr ' ' '\t' | tee -a "$OUT"; }

echo "== $(date -u +%FT%TZ), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $("$SPO" --version)" | tee -a "$OUT"
printf 'tool\tcells\tverb\tseconds\town_cpu_s\tchildren_cpu_s\tpeak_kib\n' | tee -a "$OUT"
for n in "${SIZES[@]}"; do
  cells=$((2 * n))
  d="$W/spo$n"
  mkdir -p "$d"
  spo_pipeline "$n" >"$d/pipeline.toml"
  cd "$d"
  reps=3; [ "$n" -ge 100000 ] && reps=1
  emit "$LABEL" $cells "dag" "$(best "$reps" "$SPO" dag)"
  emit "$LABEL" $cells "first-run" $(measure "$SPO" run -q)
  emit "$LABEL" $cells "index-files" "$(find runs/index -name '*.parquet' | wc -l)"
  emit "$LABEL" $cells "no-op-run" $(measure "$SPO" run -q)
  emit "$LABEL" $cells "no-op-run(best)" "$(best "$reps" "$SPO" run -q)"
  emit "$LABEL" $cells "status" $(measure "$SPO" status)
  emit "$LABEL" $cells "status(best)" "$(best "$reps" "$SPO" status)"
  emit "$LABEL" $cells "tables" $(measure "$SPO" tables t)
  emit "$LABEL" $cells "tables(best)" "$(best "$reps" "$SPO" tables t)"
  emit "$LABEL" $cells "diff" "$(best "$reps" "$SPO" diff 'post@gen.cmd=echo 1 > $SPO_OUT/o.txt' 'post@gen.cmd=echo 2 > $SPO_OUT/o.txt')"
  emit "$LABEL" $cells "gc-dry-run" "$(best "$reps" "$SPO" gc --dry-run)"
  cd - >/dev/null
  rm -rf "$d"

  if [ -x "$DVC" ] && [ "$n" -le "$DVC_MAX" ]; then
    d="$W/dvc$n"
    mkdir -p "$d"
    dvc_pipeline "$n" >"$d/dvc.yaml"
    cd "$d"
    git init -q && "$DVC" init -q && "$DVC" config core.analytics false
    emit dvc $cells "first-run" $(measure "$DVC" repro -q)
    git add -A >/dev/null && git commit -qm run
    emit dvc $cells "no-op-run" $(measure "$DVC" repro -q)
    emit dvc $cells "dag" "$(best 1 "$DVC" dag --dot)"
    emit dvc $cells "status" "$(best 1 "$DVC" status)"
    cd - >/dev/null
    rm -rf "$d"
  fi
  if [ -x "$SNAKE" ] && [ "$n" -le "$SNAKE_MAX" ]; then
    d="$W/snake$n"
    mkdir -p "$d"
    snake_pipeline "$n" >"$d/Snakefile"
    cd "$d"
    emit snakemake $cells "first-run" $(measure "$SNAKE" -q -c2)
    emit snakemake $cells "no-op-run" $(measure "$SNAKE" -q -c2)
    emit snakemake $cells "dry-run" "$(best 1 "$SNAKE" -n -q)"
    cd - >/dev/null
    rm -rf "$d"
  fi
done
