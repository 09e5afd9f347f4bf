#!/usr/bin/env bash
# Commits the pretrained in-world weights: copies the cells that `spo-pipe run pretrain` made
# (the world, the text encoder, the two base models) into stages/assets/pretrained/, manifests
# included, for `weights = "embedded"` (stages/src/embedded.rs). Rebuild spo-pipe afterwards.
#
#   scripts/embed-pretrained.sh [DIR]   DIR: where `spo-pipe run pretrain` ran (default: .)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-.}"
bin="${SPO_PIPE:-spo-pipe}"
out="$repo/stages/assets/pretrained"
cell_dir() {
    local key
    key="$(cd "$dir" && "$bin" show "$1" | awk '$1 == "key" { print $2; exit }')"
    [ -n "$key" ] || { echo "no committed cell of stage \`$1\` in $dir: run \`spo-pipe run pretrain\` there first" >&2; exit 1; }
    echo "$dir/runs/store/$key"
}
world="$(cell_dir world)"
text="$(cell_dir text-encoder-train)"
mkdir -p "$out/text-encoder"
cp "$world/manifest.json" "$out/world.json"
cp "$text"/{clip.safetensors,clip_config.json,vocab.json,manifest.json} "$out/text-encoder/"
echo "embedded: $text (text encoder)"
# stage that trains it -> directory under assets/pretrained
for pair in base-train:base base-xl-train:base-xl; do
    base="$(cell_dir "${pair%%:*}")"
    mkdir -p "$out/${pair#*:}"
    cp "$base"/{unet.safetensors,unet_config.json,manifest.json} "$out/${pair#*:}/"
    echo "embedded: $base (${pair#*:})"
done
chmod 0644 "$out"/world.json "$out"/*/*
