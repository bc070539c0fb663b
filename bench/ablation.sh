#!/usr/bin/env bash
# The paper's ablation ladder on one model: unedited, naive fine-tuning (whole
# sentence), + mask (conditional likelihood), + P (random prefixes), + R (unedited
# facts), + γ·LM; batch protocol over the first N CounterFact and zsRE dev records.
# CounterFact fluency (GE) is computed on the first 50 records of each run.
#
#   bench/ablation.sh [model] [records]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2}"
N="${2:-200}"
OUT="runs/ablation-$MODEL"
mkdir -p "$OUT"
cargo build --release --quiet
declare -A RUNG=(
  [0-unedited]="--method none"
  [1-naive]="--method ft-naive"
  [2-mask]="--method ft --set augment.prefixes=false --set augment.facts=none"
  [3-mask+P]="--method ft --set augment.facts=none"
  [4-mask+P+R]="--method ft"
  [5-mask+P+R+LM]="--method ft --set augment.lm_gamma=0.1"
)
for data in counterfact zsre; do
  file=$( [ "$data" = counterfact ] && echo ../shared/data/counterfact/counterfact_rome_dev.json || echo ../shared/data/zsre/zsre_eval_dev.json )
  for rung in $(printf '%s\n' "${!RUNG[@]}" | sort); do
    dir="$OUT/$data-$rung"
    [ -f "$dir/summary.json" ] && continue
    echo "== $data $rung"
    # shellcheck disable=SC2086
    ./target/release/ftedit eval --model "$MODEL" --data "$file" --n "$N" --protocol batch --recipe layers \
      ${RUNG[$rung]} --generation-n 50 --threads 2 --quiet --out "$dir" > /dev/null
  done
done
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def row(path):
    s = json.load(open(os.path.join(path, "summary.json")))
    t = os.path.join(path, "train_report.json")
    secs = sum(r["seconds"] for r in json.load(open(t))["runs"]) if os.path.exists(t) else 0
    return s["metrics"], secs
f = lambda v: "—" if v is None else f"{v:.1f}"
print("\n| CounterFact | S | ES | PS | NS | GE (50) | EM_exact | train s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for p in sorted(glob.glob(f"{out}/counterfact-*")):
    m, secs = row(p)
    print(f"| {p.split('counterfact-')[1][2:]} | {f(m['S'])} | {f(m['ES'])} | {f(m['PS'])} | {f(m['NS'])} | {f(m['GE'])} | {f(m['EM_exact'])} | {secs:.0f} |")
print("\n| zsRE | Score | Efficacy | Paraphrase | Specificity | efficacy_exact | train s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for p in sorted(glob.glob(f"{out}/zsre-*")):
    m, secs = row(p)
    print(f"| {p.split('zsre-')[1][2:]} | {f(m['score'])} | {f(m['efficacy'])} | {f(m['paraphrase'])} | {f(m['specificity'])} | {f(m['efficacy_exact'])} | {secs:.0f} |")
PY
