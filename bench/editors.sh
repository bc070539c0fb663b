#!/usr/bin/env bash
# What the trained editors cost on SmolLM2: MEND's training (seconds per step between
# steps 100 and STEPS, so that start-up and warm-up are left out; peak memory of the
# process) and the time to apply one edit afterwards (ftedit edit, one record, with the
# editor RECIPE trained by train-editor). One JSON line per measurement goes to
# bench/results.
#
#   RECIPE=runs/mend-cf-smollm2/recipe.toml bench/editors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/ftedit}
THREADS=${THREADS:-2}
STEPS=${STEPS:-300}
DATA=${DATA:-../shared/data/counterfact/easyedit_mend_format}
OUT=${OUT:-bench/out/editors}
RESULTS=${RESULTS:-bench/results/$(date +%F)-editors-smollm2-cpu.jsonl}
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
rm -rf "$OUT"
mkdir -p "$OUT"

peak_mib() { awk '/Maximum resident set size/ {printf "%.0f", $NF / 1024}' "$1"; }

# MEND training: a fresh run of STEPS steps, validation only at the end.
/usr/bin/time -v "$BIN" train-editor --method mend --model smollm2 --threads "$THREADS" --quiet \
  --data "$DATA/counterfact-train.json" --val "$DATA/counterfact-val.json" \
  --set train.steps="$STEPS" --set train.val_every="$STEPS" --set train.val_records=10 \
  --out "$OUT/mend" > /dev/null 2> "$OUT/mend.time"
python3 - "$OUT/mend/train_curve.jsonl" "$(peak_mib "$OUT/mend.time")" "$cpu" "$THREADS" "$STEPS" >> "$RESULTS" <<'PY'
import json, sys
curve, peak, cpu, threads, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t = {r["step"]: r["seconds"] for r in map(json.loads, open(curve)) if "seconds" in r}
per_step = (t[steps] - t[100]) / (steps - 100)
print(json.dumps({"bench": "mend-train", "model": "smollm2", "cpu": cpu, "threads": threads,
                  "steps": steps, "s_per_step": round(per_step, 3),
                  "steps_per_s": round(1 / per_step, 3), "peak_rss_mib": peak}))
PY

# One edit with the trained editor: the edit's own seconds as the report gives them
# (gradient, the network's pass, the weight change; not the load, the before/after
# table or the writing of the model), median of three runs.
if [ -n "${RECIPE:-}" ]; then
  rec="$OUT/one.jsonl"
  echo '{"subject":"The Eiffel Tower","prompt":"{} is located in the city of","target_new":"Rome"}' > "$rec"
  for i in 1 2 3; do
    rm -rf "$OUT/edited"
    /usr/bin/time -v "$BIN" edit --model smollm2 --recipe "$RECIPE" --edits "$rec" --no-health \
      --out "$OUT/edited" --threads "$THREADS" --quiet > /dev/null 2> "$OUT/edit.time"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["training"]["seconds"])' \
      "$OUT/edited/ftedit_report.json"
  done > "$OUT/edit.seconds"
  python3 - "$OUT/edit.seconds" "$(peak_mib "$OUT/edit.time")" "$cpu" "$THREADS" "$RECIPE" >> "$RESULTS" <<'PY'
import json, statistics, sys
secs = [float(l) for l in open(sys.argv[1])]
print(json.dumps({"bench": "mend-edit", "model": "smollm2", "cpu": sys.argv[3], "threads": int(sys.argv[4]),
                  "recipe": sys.argv[5], "runs": len(secs), "one_edit_s": round(statistics.median(secs), 3),
                  "peak_rss_mib": int(sys.argv[2])}))
PY
fi
tail -n 2 "$RESULTS"
