#!/usr/bin/env bash
# The paper's ablation ladder on one model: unedited, naive fine-tuning (whole
# sentence), + mask (conditional likelihood), + P (random prefixes), + R (unedited
# facts), + γ·LM (recipe `layers`), then the baselines FT-L, FT-M, ROME (also under the
# single protocol) and MEMIT; batch protocol over the first N CounterFact and zsRE dev
# records.
# CounterFact fluency (GE) is computed on the first 50 records of each run; the γ·LM rung
# is run on CounterFact only (it is there for GE, which zsRE does not measure).
#
#   bench/ablation.sh [model] [records]
#
# Environment: FTEDIT (a built binary; default: build ./target/release/ftedit), DEVICE
# (cpu | cuda, default cpu), THREADS (default 2), OUT_DIR (default runs/ablation-MODEL),
# FTEDIT_DATA (the data folder, default ../shared/data), DATASETS (default "counterfact
# zsre"), ONLY (a regular expression: run only the rungs it matches, e.g. 'ROME|MEMIT'),
# RESULTS (a file: one JSON line per finished run is written there, for bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2}"
N="${2:-200}"
OUT="${OUT_DIR:-runs/ablation-$(basename "$MODEL" .gguf)}"
DATA="${FTEDIT_DATA:-../shared/data}"
mkdir -p "$OUT"
if [ -z "${FTEDIT:-}" ]; then
  cargo build --release --quiet
  FTEDIT=./target/release/ftedit
fi
declare -A RUNG=(
  [0-unedited]="--method none"
  [1-naive]="--method ft-naive"
  [2-mask]="--method ft --set augment.prefixes=false --set augment.facts=none"
  # Control: E alone trained for as many steps as E+P+R gets (36 examples per edit), so
  # that the gain of P and R is not read as a gain of more steps.
  [2-mask@steps]="--method ft --set augment.prefixes=false --set augment.facts=none --set optim.min_steps=$(( (36 * N + 31) / 32 * 3 ))"
  [3-mask+P]="--method ft --set augment.facts=none"
  [4-mask+P+R]="--method ft"
  [5-mask+P+R+LM]="--method ft --set augment.lm_gamma=0.1"
)
# The baselines (issue 5), with their own defaults; BASELINES=0 skips them.
if [ "${BASELINES:-1}" = 1 ]; then
  RUNG[6-FT-L]="--method ft-l"
  RUNG[7-FT-M]="--method ft-m"
  RUNG[8-ROME]="--method rome"
  RUNG[8-ROME@single]="--method rome --protocol single"
  RUNG[9-MEMIT]="--method memit"
fi
# Rung by rung, so that a cut-short run still has the cheap rungs of both data sets.
for rung in $(printf '%s\n' "${!RUNG[@]}" | sort); do
  [[ "$rung" =~ ${ONLY:-.} ]] || continue
  for data in ${DATASETS:-counterfact zsre}; do
    file=$( [ "$data" = counterfact ] && echo "$DATA/counterfact/counterfact_rome_dev.json" || echo "$DATA/zsre/zsre_eval_dev.json" )
    dir="$OUT/$data-$rung"
    [ -f "$dir/summary.json" ] && continue
    [ "$data" = zsre ] && [[ "$rung" == *LM ]] && continue
    echo "== $data $rung"
    # shellcheck disable=SC2086
    proto="--protocol batch"
    [[ "${RUNG[$rung]}" == *--protocol* ]] && proto=""
    "$FTEDIT" eval --model "$MODEL" --data "$file" --n "$N" $proto \
      ${RUNG[$rung]} --generation-n 50 --device "${DEVICE:-cpu}" --threads "${THREADS:-2}" --quiet \
      --out "$dir" > /dev/null
  done
done
python3 - "$OUT" "${RESULTS:-}" "${DEVICE:-cpu}, ${THREADS:-2} threads" <<'PY'
import glob, json, os, sys
out, results, device = sys.argv[1:4]
# Finished runs only (OUT may hold logs and unfinished runs too).
done = sorted(os.path.dirname(p) for p in glob.glob(f"{out}/*/summary.json"))
def load(path):
    """A finished run's summary and its edit totals (from train_report.json, if any)."""
    s = json.load(open(os.path.join(path, "summary.json")))
    t = os.path.join(path, "train_report.json")
    runs = json.load(open(t))["runs"] if os.path.exists(t) else []
    return {
        "metrics": s["metrics"], "n": s["n"],
        "edits": sum(r.get("edits", 0) for r in runs),
        "seconds": sum(r.get("seconds", r.get("edit_seconds", 0)) for r in runs),
        "stats_seconds": sum(r.get("stats_seconds", 0) for r in runs),
        "layers": runs[0].get("layers", runs[0].get("trained_params")) if runs else None,
    }
f = lambda v: "—" if v is None else f"{v:.1f}"
label = lambda p: (os.path.basename(p).split("-", 2)[2].replace("@steps", " (E+P+R's steps)")
                   .replace("@single", ", single protocol"))
print("\n| CounterFact | S | ES | PS | NS | GE (50) | EM_exact | train s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for p in [p for p in done if os.path.basename(p).startswith("counterfact-")]:
    r = load(p); m = r["metrics"]
    print(f"| {label(p)} | {f(m['S'])} | {f(m['ES'])} | {f(m['PS'])} | {f(m['NS'])} | {f(m['GE'])} | {f(m['EM_exact'])} | {r['seconds']:.0f} |")
print("\n| zsRE | Score | Efficacy | Paraphrase | Specificity | efficacy_exact | train s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for p in [p for p in done if os.path.basename(p).startswith("zsre-")]:
    r = load(p); m = r["metrics"]
    print(f"| {label(p)} | {f(m['score'])} | {f(m['efficacy'])} | {f(m['paraphrase'])} | {f(m['specificity'])} | {f(m['efficacy_exact'])} | {r['seconds']:.0f} |")
base = [p for p in done if os.path.basename(p).split("-", 2)[-1].split("@")[0] in ("FT-L", "FT-M", "ROME", "MEMIT")]
if base:
    print("\n| baseline | data | key statistics s | seconds per edit |")
    print("|---|---|---:|---:|")
    for p in base:
        r = load(p)
        print(f"| {label(p)} | {os.path.basename(p).split('-')[0]} | {r['stats_seconds']:.1f} | {r['seconds'] / r['edits']:.2f} |")
if results:
    with open(results, "w") as out_file:
        for p in done:
            r = load(p)
            out_file.write(json.dumps({
                "run": os.path.basename(p), "device": device, "n": r["n"], "metrics": r["metrics"],
                "edit_seconds": r["seconds"], "stats_seconds": r["stats_seconds"],
                "seconds_per_edit": r["seconds"] / r["edits"] if r["edits"] else None,
                "layers": r["layers"],
            }) + "\n")
PY
