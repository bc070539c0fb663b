#!/usr/bin/env bash
# Tests the Python module as a user gets it: builds the wheel (maturin, against the
# project's libtorch that ./setup.sh links), installs it with its pinned torch (the full
# PyPI wheel, whose CUDA libraries `import torch` needs; ~4 GB, cached by pip) and
# transformers into a fresh virtual environment, .venv-python, and runs pytest there.
# The tests also use the release binary and the default models (./setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
rm -rf .venv-python target/wheels
"$PYTHON" -m venv .venv-python
.venv-python/bin/pip install --quiet --disable-pip-version-check "maturin>=1.9,<2"
.venv-python/bin/maturin build --release --quiet --interpreter .venv-python/bin/python --out target/wheels
wheel="$(ls target/wheels/ftedit-*.whl)"
.venv-python/bin/pip install --quiet --disable-pip-version-check "$wheel[test]"
.venv-python/bin/python -m pytest -q python/tests "$@"
