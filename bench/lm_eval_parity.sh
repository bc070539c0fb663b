#!/usr/bin/env bash
# ftedit health's downstream-task scores against lm-evaluation-harness itself, on the
# same model, the same weights and the same local task files (../shared/data/general):
# per task lm-eval's acc / acc_norm beside ftedit's, their difference and n. A benchmark,
# never run in CI. MODEL is an ftedit model name (smollm2, gemma3) or path; LIMIT the
# items per task (`ftedit health --general LIMIT`, lm-eval's --limit; for MMLU the first
# ceil(LIMIT / 12) of each subject on both sides; a LIMIT over a file's size means all
# of it).
#
# ftedit writes the unedited model as a Hugging Face folder (f32) for lm-eval: an
# `edit` whose weight change is multiplied by 0 (`post.interpolate=0`; `--method none`
# writes nothing), so the folder holds the weights ftedit scores. lm-eval runs in
# LM_EVAL_PYTHON (default .venv/bin/python); the result goes to
# bench/results/<date>-lm-eval-parity-<model>-<limit>-cpu.json, the work files to
# bench/out/lm_eval_parity/.
#
#   bench/lm_eval_parity.sh smollm2 10
#   THREADS=1 LM_EVAL_PYTHON=.venv-lmeval/bin/python bench/lm_eval_parity.sh gemma3 100
#   TASKS=arc_easy,piqa bench/lm_eval_parity.sh smollm2 10000   # whole files
#   PER_DOC=1 THREADS=1 LM_EVAL_PYTHON=.venv-lmeval/bin/python bench/lm_eval_parity.sh smollm2 10
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/lm_eval_parity.sh MODEL [LIMIT]}
LIMIT=${2:-100}
BIN=${BIN:-./target/release/ftedit}
PY=${LM_EVAL_PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/data/general}
TASKS=${TASKS:-arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,mmlu,lambada_openai}
name=$(basename "$MODEL")
name=${name%.gguf}
OUT=${OUT:-bench/out/lm_eval_parity/$name-$LIMIT}
RESULTS=${RESULTS:-bench/results/$(date +%F)-lm-eval-parity-$name-$LIMIT-cpu.json}
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)

if ! "$PY" -c 'import lm_eval' 2>/dev/null; then
  echo "lm_eval_parity.sh: $PY cannot import lm_eval. Install the benchmark stack with" >&2
  echo "  ./setup.sh --bench   (lm-eval 0.4.9.2 among the comparison packages)" >&2
  echo "or point LM_EVAL_PYTHON at a Python that has lm-eval (e.g. .venv-lmeval/bin/python)." >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT" "$(dirname "$RESULTS")"

# 1. The unedited model as a Hugging Face folder, written by ftedit: one edit trained for
# one step and then scaled by 0 (W0 + 0·ΔW = W0), f32 tensors.
echo '{"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}' \
  > "$OUT/one-edit.jsonl"
"$BIN" edit --model "$MODEL" --method ft-naive --set post.interpolate=0 \
  --set optim.epochs=1 --set optim.min_steps=1 --set optim.max_steps=1 --precision f32 \
  --edits "$OUT/one-edit.jsonl" --no-health --out "$OUT/hf" --out-dtype f32 \
  --threads "$THREADS" --quiet > "$OUT/edit.log"

# 2. ftedit's scores (perplexity and known facts cut to the minimum `health` accepts; a
# private cache, so that nothing scored by an older binary is read back).
start=$(date +%s)
FTEDIT_CACHE="$OUT/cache" "$BIN" health --model "$MODEL" --general "$LIMIT" \
  --general-tasks "${TASKS//lambada_openai/lambada}" --general-dir "$DATA" \
  --health-tokens 16 --known-n 1 --json --threads "$THREADS" > "$OUT/ftedit-health.json"
ftedit_s=$(( $(date +%s) - start ))
# PER_DOC=1: also --general k for k = 1..LIMIT, from whose running counts the script
# reads ftedit's verdict on each doc (LIMIT more runs of health; small LIMITs only).
per_doc=()
if [ "${PER_DOC:-0}" = 1 ]; then
  for k in $(seq 1 "$LIMIT"); do
    FTEDIT_CACHE="$OUT/cache" "$BIN" health --model "$MODEL" --general "$k" \
      --general-tasks "${TASKS//lambada_openai/lambada}" --general-dir "$DATA" \
      --health-tokens 16 --known-n 1 --json --threads "$THREADS" > "$OUT/ftedit-health-k$k.json"
  done
  per_doc=(--ftedit-per-doc "$OUT/ftedit-health-k{k}.json")
fi

# 3. lm-eval on the folder, the table, the comparison as JSON.
OMP_NUM_THREADS="$THREADS" "$PY" bench/lm_eval_parity.py --model-dir "$OUT/hf" --data "$DATA" \
  --tasks "$TASKS" --limit "$LIMIT" --ftedit-json "$OUT/ftedit-health.json" \
  --out "$OUT/parity.json" --threads "$THREADS" "${per_doc[@]}" 2> "$OUT/lm_eval.log" | tee "$OUT/table.md" \
  || { tail -n 30 "$OUT/lm_eval.log" >&2; exit 1; }

python3 - "$OUT/parity.json" "$RESULTS" "$MODEL" "$LIMIT" "$cpu" "$THREADS" "$ftedit_s" \
  "$("$BIN" --version)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys
src, dst, model, limit, cpu, threads, secs, version, commit = sys.argv[1:]
r = json.load(open(src))
out = {"bench": "lm-eval-parity", "model": model, "limit": int(limit), "cpu": cpu,
       "threads": int(threads), "ftedit": {"version": version, "commit": commit, "seconds": int(secs)}}
out.update({k: v for k, v in r.items() if k not in ("bench", "limit")})
json.dump(out, open(dst, "w"), indent=1)
print(f"result in {dst}")
PY
