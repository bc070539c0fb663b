#!/usr/bin/env bash
# Builds what bench/device.sh needs into .devbin/ (ignored by git, carried to the GPU
# machine): the architecture and editing test binaries, the benchmark binary, and the
# training batches that bench/foundation.sh wrote to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --tests --benches --quiet
mkdir -p .devbin
newest() { ls -t target/release/deps/$1-* | grep -v '\.d$' | head -1; }
cp "$(newest arch)" .devbin/arch
cp "$(newest edit)" .devbin/edit
cp "$(newest foundation)" .devbin/foundation
strip .devbin/arch .devbin/edit .devbin/foundation
for m in smollm2 gemma3; do cp "bench/out/$m-batch.json" ".devbin/$m-batch.json"; done
ls -la .devbin
