#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU (planned for about 8 minutes on an H200):
# the CUDA tests (tests/test_cuda.py, the Triton kernel tests), then model.py, kernels.py and rollout.py
# with their GPU benchmarks. It installs nothing: it uses a python3 that already holds a CUDA build of torch
# (GPU nodes may be offline). Each step has a time limit, and a failed step does not stop the later ones.
# Logs go to $OUT (when set) or runs/gpu/. The README's "GPU checks" paragraph says where the numbers go.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-runs/gpu}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
# the 0.6B config: ../shared's file when it is there, else the published shape (rollout.qwen3_0_6b)
$PY -c "import json, rollout; print(json.dumps(rollout.qwen3_0_6b().to_dict()))" > "$LOG/qwen3-0.6b.json" || exit 1

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $LOG/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" = 0 ] || failed=1
}
step tests 150 $PY -m pytest -q -rs tests/test_cuda.py tests/test_kernels.py
step rollout 150 $PY rollout.py --bench-gpu
step kernels 90 $PY kernels.py --bench-gpu
step model 90 $PY model.py --bench --config "$LOG/qwen3-0.6b.json" --device cuda --dtype bfloat16
exit $failed
