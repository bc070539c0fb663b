#!/usr/bin/env bash
# The sweep that chooses ftedit's default recipe (issue 38): the paper's recipe
# (`layers`) with the remedies for what editing breaks, on records of EasyEdit's
# CounterFact edit split that the manual's tables do not use (1000..; the 1,000-edit mass
# and lifelong tables use 0..1000), every run with the full health check (perplexity,
# known facts and the general-ability sample). Stage 1 screens the combinations at a scale one session
# can run; stage 2 runs the best of them at the issue's scale, mass and in batches of 100.
#
#   bench/default-sweep.sh 1            # 2 x 2 x 2 combinations, 200 mass edits each
#   bench/default-sweep.sh 2 'SETS'     # one setting at 1,000 edits: mass, then sequential
#
# SETS: the --set flags of the setting, e.g. 'augment.subject=true post.rect=0.4'.
# The trade-off, one point per setting: ftedit report plot runs/default-sweep/stage1-200/*/
#   --x PPL_ratio --metrics S,known_retained,general.mean --out trade-off.svg
# Each sweep resumes where it stopped (rerun the same command); finished runs keep their
# summary.json in their folder. Environment: FTEDIT (default ./target/release/ftedit),
# MODEL (default smollm2), THREADS (default 2), OUT_DIR (default runs/default-sweep),
# FTEDIT_DATA (default ../shared/data), N1 (stage 1's edits, default 200), GENERAL (stage
# 2's general-ability items per task, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:?stage: 1 or 2}"
FTEDIT="${FTEDIT:-./target/release/ftedit}"
MODEL="${MODEL:-smollm2}"
DATA="${FTEDIT_DATA:-../shared/data}/counterfact/easyedit_mend_format/counterfact-edit.json"
OUT="${OUT_DIR:-runs/default-sweep}"
common=(--model "$MODEL" --data "$DATA" --recipe layers --no-generation --threads "${THREADS:-2}" --quiet)
case "$STAGE" in
  1)
    n="${N1:-200}"
    # The subject's spelling kept (chat answers name the Eiffel Tower whole), γ·LM on
    # WikiText, and RECT's 40 % of each matrix's update.
    "$FTEDIT" sweep "${common[@]}" --range "1000..$((1000 + n))" --protocol batch \
      --grid augment.subject=false,true --grid augment.lm_gamma=0,0.1 --grid post.rect=1,0.4 \
      --out "$OUT/stage1-$n"
    ;;
  2)
    read -r -a sets <<< "${2:?the --set flags of the setting, e.g. augment.subject=true}"
    flags=()
    for s in "${sets[@]}"; do flags+=(--set "$s"); done
    name="$(printf '%s' "${2}" | tr ' =' '_-')"
    # The general-ability check at health's sample (100 items per task): the sweep's
    # 10 move the mean by whole points between runs.
    flags+=(--general "${GENERAL:-100}")
    "$FTEDIT" eval "${common[@]}" "${flags[@]}" --range 1000..2000 --protocol batch \
      --out "$OUT/stage2-mass-$name"
    "$FTEDIT" eval "${common[@]}" "${flags[@]}" --range 1000..2000 --protocol sequential \
      --batch-size 100 --eval-every 1 --out "$OUT/stage2-seq-$name"
    ;;
  *) echo "default-sweep.sh: stage 1 or 2" >&2; exit 2 ;;
esac
