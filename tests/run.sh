#!/usr/bin/env bash
# Set-up and the whole test suite: bash tests/run.sh [pytest args]
# Installs missing dependencies into the current python3 (set PYTHON=... to use another interpreter, e.g. a
# virtual environment's). pip is a no-op when everything is already satisfied, so this is safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# One OpenMP thread per process: tests are small and run beside subprocesses (torchrun ranks, sandboxes) on
# few cores, where threads fighting over cores made some tests 30x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "== set-up: $($PY --version) at $(command -v "$PY")"
$PY -m pip install -q -r requirements.txt -r tests/requirements.txt
# Math-Verify's own test cases (tests/test_rewards.py reads them from its source archive; skipped without it)
MV=$(sed -n 's/^\(math-verify==[^ ]*\).*/\1/p' requirements.txt)
ls .cache/math-verify/math_verify-*.tar.gz >/dev/null 2>&1 ||
  $PY -m pip download -q --no-deps --no-binary :all: -d .cache/math-verify "$MV" || echo "(no $MV source archive)"
echo "== ruff"
$PY -m ruff check .
echo "== pytest"
$PY -m pytest -q tests "$@"
echo "== the CUDA tests' comparisons, run on the CPU (on a GPU: bash tests/gpu.sh)"
CUDA_TEST_DEVICE=cpu $PY -m pytest -q tests/test_cuda.py
