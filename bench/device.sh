#!/usr/bin/env bash
# GPU check, run on a machine with a CUDA build of PyTorch 2.11 (no Rust there): the
# binaries are built on the development machine and carried in .devbin/ (see
# bench/prepare-device.sh). Runs the architecture tests and a three-fact edit of a tiny
# model on CUDA, then the foundation benchmark against PyTorch + transformers on random
# weights of the default models' shapes (the model files cannot travel) with the batches
# the CPU run tokenized.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
TORCH_LIB="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
RUNS="${RUNS:-20}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

echo "== architecture tests on CUDA"
FTEDIT_TEST_DEVICE=cuda .devbin/arch --test-threads 1 2>&1 | tee "$OUT/arch-cuda.log" | grep -E "^test |test result"

echo "== CUDA smoke test: the recipe edits three facts of a tiny model and they flip"
FTEDIT_TEST_DEVICE=cuda .devbin/edit the_recipe_flips_three_facts_of_a_tiny_model_on_the_test_device 2>&1 | tee "$OUT/edit-cuda.log" | grep -E "^test |test result"

echo "== foundation benchmark on CUDA"
: > "$OUT/device.jsonl"
for model in smollm2 gemma3; do
  for dtype in f32 bf16; do
    .devbin/foundation --config "bench/configs/$model.json" --batch-in ".devbin/$model-batch.json" \
      --device cuda --dtype "$dtype" --runs "$RUNS" --threads 8 | sed "s|bench/configs/$model.json|$model|" | tee -a "$OUT/device.jsonl"
    prompt16="$(tail -1 "$OUT/device.jsonl" | python3 -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['prompt16'])))")"
    python3 bench/foundation_torch.py --config "bench/configs/$model.json" --batch ".devbin/$model-batch.json" \
      --prompt16 "$prompt16" --device cuda --dtype "$dtype" --runs "$RUNS" --threads 8 --name "$model" 2>/dev/null | tee -a "$OUT/device.jsonl"
  done
done
python3 bench/table.py "$OUT/device.jsonl" | tee "$OUT/device-table.md"
