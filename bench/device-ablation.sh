#!/usr/bin/env bash
# Runs on the GPU machine, once per part made by bench/ship-ablation.sh: keeps the
# carried part in /tmp/keep; once every part is there, joins the model and, if given
# arguments (records), runs bench/ablation.sh on CUDA and leaves the results in $OUT.
#
#   bash bench/device-ablation.sh [records]   (ONLY, DATASETS, BASELINES pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=/tmp/keep
mkdir -p "$KEEP"
for part in .devab[0-9]*; do [ -d "$part" ] && cp -r "$part"/. "$KEEP"/; done
[ -f "$KEEP/parts" ] || { echo "part 1 has not come yet"; exit 0; }
have=$(ls "$KEEP"/model.* 2>/dev/null | wc -l)
[ "$have" -eq "$(cat "$KEEP/parts")" ] || { echo "have $have of $(cat "$KEEP/parts") model parts"; exit 0; }
model="$KEEP/$(cat "$KEEP/model-name")"
[ -f "$model" ] || cat "$KEEP"/model.* > "$model"
[ $# -ge 1 ] || { echo "model ready: $model"; exit 0; }
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
nvidia-smi --query-gpu=name --format=csv,noheader
name=$(basename "$model" .gguf)
FTEDIT="$KEEP/ftedit" DEVICE=cuda THREADS=8 FTEDIT_DATA="$KEEP/data" FTEDIT_CACHE="$KEEP/cache" \
  OUT_DIR="$KEEP/ab-$name" timeout "${LIMIT:-540}" bash bench/ablation.sh "$model" "$1" || true
tar czf "${OUT:-/tmp}/ablation-$name.tgz" -C "$KEEP" "ab-$name"
