#!/usr/bin/env bash
# Lifelong editing (issue 14): the same edits applied in sequential batches by the
# paper's recipe, LocFT-BF, AlphaEdit, MEMIT, ROME, GRACE, WISE, SERAC and MEND, each run's curve (metrics, the
# first batch's, perplexity and known facts at every checkpoint) in curve.jsonl, the same
# edits as one mass edit by the paper's recipe and by MEMIT beside them, and one plot per
# data set.
#
#   bench/lifelong.sh [model] [dataset] [edits] [batch]
#
# dataset: counterfact (EasyEdit's reduced CounterFact edit split, records 0..edits: none
# of them is among the dev records the sweeps tuned on) | zsre (the zsRE dev records
# from 300 on, after those the manual's results report and the sweeps used; 337 of them).
# Environment: FTEDIT (default ./target/release/ftedit), THREADS (default 2), DEVICE
# (default cpu), OUT_DIR (default runs/lifelong-MODEL), FTEDIT_DATA (default
# ../shared/data), ONLY (a regular expression over the run names, e.g. 'ft|locft'),
# PRECISION (f32 or bf16-mixed: how the fine-tuning runs train, the recipe's, LocFT-BF's
# and the recipe's mass edit; default the recipes' f32), SERAC_RECIPE and MEND_RECIPE
# (the recipe.toml that `ftedit train-editor` wrote; default runs/serac-cf-smollm2 and
# runs/mend-cf-smollm2: those runs are skipped when the file is missing).
# Finished runs are skipped; a sequential run that was cut short resumes from its last
# checkpoint (its folder's checkpoint/: the changed weights and the editor's state).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2}"
DATASET="${2:-counterfact}"
N="${3:-1000}"
B="${4:-100}"
DATA="${FTEDIT_DATA:-../shared/data}"
FTEDIT="${FTEDIT:-./target/release/ftedit}"
OUT="${OUT_DIR:-runs/lifelong-$(basename "$MODEL" .gguf)}"
case "$DATASET" in
  counterfact) file="$DATA/counterfact/easyedit_mend_format/counterfact-edit.json"; sel=(--n "$N") ;;
  zsre) file="$DATA/zsre/zsre_eval_dev.json"; sel=(--range "300..$((300 + N))") ;;
  *) echo "lifelong.sh: unknown data set '$DATASET'" >&2; exit 2 ;;
esac
# The fine-tuning runs are the ones that take a training precision.
ft_prec="${PRECISION:+--precision $PRECISION}"
declare -A RUN=(
  [1-ft]="--method ft $ft_prec"
  [2-locft]="--recipe locft $ft_prec"
  [3-alphaedit]="--method alphaedit"
  [4-memit]="--method memit"
  [5-rome]="--method rome"
  [6-grace]="--method grace"
  [7-wise]="--method wise"
  [8-serac]="--recipe ${SERAC_RECIPE:-runs/serac-cf-smollm2/recipe.toml}"
  [9-mend]="--recipe ${MEND_RECIPE:-runs/mend-cf-smollm2/recipe.toml}"
)
mkdir -p "$OUT"
for run in $(printf '%s\n' "${!RUN[@]}" | sort); do
  [[ "$run" =~ ${ONLY:-.} ]] || continue
  dir="$OUT/$DATASET-$run"
  [ -f "$dir/summary.json" ] && continue
  # The trained editors need their training first (ftedit train-editor).
  if [[ "${RUN[$run]}" == --recipe\ *.toml ]] && [ ! -f "${RUN[$run]#--recipe }" ]; then
    echo "== $DATASET $run: skipped, no ${RUN[$run]#--recipe } (train it with ftedit train-editor)"
    continue
  fi
  echo "== $DATASET $run: $N edits in batches of $B"
  # shellcheck disable=SC2086
  "$FTEDIT" eval --model "$MODEL" --data "$file" "${sel[@]}" ${RUN[$run]} \
    --protocol sequential --batch-size "$B" --eval-every 1 --generation-n 50 \
    --device "${DEVICE:-cpu}" --threads "${THREADS:-2}" --quiet --out "$dir" > /dev/null
done
# The same edits all at once, by the paper's recipe and by MEMIT.
declare -A MASS=(
  [ft]="--method ft $ft_prec"
  [memit]="--method memit"
)
for method in ft memit; do
  run="0-$method-mass"
  mass="$OUT/$DATASET-$run"
  [[ "$run" =~ ${ONLY:-.} ]] && [ ! -f "$mass/summary.json" ] || continue
  echo "== $DATASET $method, all $N edits at once"
  # shellcheck disable=SC2086
  "$FTEDIT" eval --model "$MODEL" --data "$file" "${sel[@]}" ${MASS[$method]} --protocol batch \
    --generation-n 50 --device "${DEVICE:-cpu}" --threads "${THREADS:-2}" --quiet --out "$mass" > /dev/null
done
runs=()
for d in "$OUT/$DATASET"-*; do [ -f "$d/summary.json" ] && runs+=("$d"); done
[ ${#runs[@]} -gt 0 ] && "$FTEDIT" report plot "${runs[@]}" --out "$OUT/$DATASET.svg" \
  --title "$MODEL, $DATASET: $N edits in batches of $B"
