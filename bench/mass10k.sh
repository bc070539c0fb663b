#!/usr/bin/env bash
# The paper's headline (issue 39): all 10,000 edits of EasyEdit's CounterFact edit split
# at once into one model, by the paper's recipe (the default `layers`) and by MEMIT (its
# tuned λ and layers), each evaluated on all 10,000 records (teacher-forced metrics,
# exact match, health; no GE). Hours on a CPU: every part resumes. Run the same command
# again after a kill or at the next session and it continues: training from its resume
# point (train-resume/, saved every --checkpoint-every minutes and on SIGTERM), the
# evaluation after the records already written (the edited weights kept in checkpoint/).
#
#   bench/mass10k.sh [model] [method…]      # default: smollm2, ft then memit
#
# Environment: FTEDIT (default ./target/release/ftedit), THREADS (default 2), N (default
# 10000), OUT_DIR (default runs/mass10k-MODEL), FTEDIT_DATA (default ../shared/data).
# Each run's wall-clock seconds and peak memory (GNU time) are appended to
# OUT_DIR/METHOD.time.jsonl, one line per invocation (a resumed run has several).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2}"
shift || true
if [ $# -gt 0 ]; then METHODS=("$@"); else METHODS=(ft memit); fi
DATA="${FTEDIT_DATA:-../shared/data}"
FTEDIT="${FTEDIT:-./target/release/ftedit}"
N="${N:-10000}"
OUT="${OUT_DIR:-runs/mass10k-$(basename "$MODEL" .gguf)}"
file="$DATA/counterfact/easyedit_mend_format/counterfact-edit.json"
mkdir -p "$OUT"
for method in "${METHODS[@]}"; do
  dir="$OUT/$method"
  [ -f "$dir/summary.json" ] && { echo "== $method: done ($dir/summary.json)"; continue; }
  echo "== $method: $N edits at once, $(date -u +%FT%TZ)"
  start=$(date +%s)
  /usr/bin/time -f '%M' -o "$OUT/$method.maxrss" \
    "$FTEDIT" eval --model "$MODEL" --data "$file" --n "$N" --method "$method" \
    --protocol batch --no-generation --threads "${THREADS:-2}" --quiet --out "$dir" \
    > "$OUT/$method.log" 2>&1 || status=$?
  end=$(date +%s)
  printf '{"method": "%s", "start": %s, "seconds": %s, "max_rss_kb": %s, "exit": %s, "threads": %s}\n' \
    "$method" "$start" "$((end - start))" "$(tail -n1 "$OUT/$method.maxrss" | tr -dc 0-9)" \
    "${status:-0}" "${THREADS:-2}" >> "$OUT/$method.time.jsonl"
  [ "${status:-0}" = 0 ] || { echo "$method stopped (exit ${status}); run again to continue"; exit "$status"; }
done
