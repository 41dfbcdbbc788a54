#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU (planned for about 8 minutes on an H200):
#   1. preflight: a C compiler and the Python headers (Triton and inductor build kernels with them), `import triton`,
#      compute capability >= 8.0 (bf16, FlexAttention), and one tiny torch.compile that builds a kernel;
#   2. the CUDA tests: tests/test_cuda.py (the CUDA paths against the CPU reference, then the production shapes:
#      FlexAttention vs SDPA at 32/8 heads, head_dim 128, T=8192, bf16 and fp32, forward and backward, no recompile
#      across document layouts; the document mask's memory at 32K; the Triton LM head at N=4096, H=4096, V=151936
#      in bf16) and the Triton kernel tests;
#   3. one-GPU end to end through torchrun, NCCL, FSDP2 bf16 mixed precision and DCP checkpoints: sft.py on the
#      demo data for 6 steps and again as 3 steps + --resume (the same curve), then GPPO on the demo config
#      (a one-token task, so rewards come from the first step) for 4 steps + --resume to 6;
#   3b. the decode across 12 generate calls with other prompt lengths (as RL steps make them): no fall-back of
#      the compiled FlexAttention past dynamo's recompile limit;
#   4. the benchmarks, which print (bench.py: the engine and decode at the Qwen3-0.6B shape, kernels, model).
# It installs nothing: it uses a python3 that already holds a CUDA build of torch (GPU nodes may be offline). Each
# step has a time limit; a failed step is reported and the later ones still run; the exit status is 1 if any
# failed. Logs go to $OUT (when set) or runs/gpu/, one NAME.log per step. The README's "GPU checks" paragraph says
# where the numbers go.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-runs/gpu}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $LOG/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc, $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed=1
}

# ---- 1. preflight
step compiler 10 bash -c 'cc=${CC:-$(command -v cc || command -v gcc || command -v clang)}; [ -n "$cc" ] ||
  { echo "no C compiler (cc, gcc or clang): Triton and inductor compile their launchers with one"; exit 1; }; "$cc" --version | head -1'
step python-headers 10 $PY -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h')
assert os.path.isfile(h), f'{h} is missing: install the Python development headers (e.g. python3-dev)'; print(h)"
step triton 30 $PY -c "import torch, triton; cc = torch.cuda.get_device_capability()
print('triton', triton.__version__, 'compute capability', cc)
assert cc >= (8, 0), f'compute capability {cc}: bf16 and FlexAttention need 8.0 (A100) or newer'"
step compile 120 $PY -c "import torch
f = torch.compile(lambda x: torch.nn.functional.silu(x) * 2 + 1)
x = torch.randn(1000, device='cuda')
assert torch.allclose(f(x), torch.nn.functional.silu(x) * 2 + 1); print('torch.compile built and ran a kernel')"

# ---- 2. the CUDA tests (-rsP: skip reasons and the measured errors, which the tests print)
step tests 300 $PY -m pytest -q -rsP tests/test_cuda.py tests/test_kernels.py

# ---- 3. one GPU end to end: torchrun, NCCL, FSDP2 bf16, DCP checkpoints, --resume
export E2E=$LOG/e2e PY
export TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1"
rm -rf "$E2E"
sft_e2e() {  # the demo SFT: 6 steps straight, and 3 steps + --resume to 6; the same curve, an HF export
  set -e
  $PY demo.py data "$E2E/data" --seed 0 > /dev/null
  local sft="sft.py --config $E2E/data/config.json --tokenizer $E2E/data --data $E2E/data/sft.jsonl --max-length 512
    --tokens-per-step 4096 --micro-batch 4 --epochs 1 --lr 2e-3 --min-lr 2e-4 --weight-decay 0 --save-every 3"
  $TORCHRUN $sft --out "$E2E/sft" --max-steps 6
  $TORCHRUN $sft --out "$E2E/sft-cut" --max-steps 3
  $TORCHRUN $sft --out "$E2E/sft-cut" --max-steps 6 --resume | tee "$E2E/sft-resume.log"
  grep -q "resumed from .*step_00000003 at step 3" "$E2E/sft-resume.log"
  $PY - "$E2E" <<'EOF'
import json, math, sys
import model
e2e = sys.argv[1]
curve = lambda run: {m["step"]: m for m in map(json.loads, open(f"{e2e}/{run}/metrics.jsonl"))}
full, cut = curve("sft"), curve("sft-cut")
assert sorted(full) == sorted(cut) == [1, 2, 3, 4, 5, 6], (sorted(full), sorted(cut))
assert all(math.isfinite(m["loss"]) and m["skipped"] == 0 for m in [*full.values(), *cut.values()])
diff = max(abs(full[s]["loss"] - cut[s]["loss"]) / full[s]["loss"] for s in full)
print(f"sft: loss {full[1]['loss']:.3f} -> {full[6]['loss']:.3f}, {full[6]['tokens_per_s']} tokens/s; "
      f"resumed vs uninterrupted: max relative loss difference {diff:.1e}")
assert full[6]["loss"] < full[1]["loss"] and diff < 2e-2 and all(full[s]["lr"] == cut[s]["lr"] for s in full)
m = model.load_pretrained(f"{e2e}/sft/hf")  # the HF export, gathered from the FSDP2 shards
print(f"export: {m.config.num_hidden_layers} layers, hidden {m.config.hidden_size}")
EOF
}
gppo_e2e() {  # GPPO on the demo config from scratch, task "answer 7" (one token: rewards from the first steps)
  set -e
  $PY - "$E2E" <<'EOF'
import json, sys
import data, model
e2e = sys.argv[1]
model.save_pretrained(model.build_model(model.Qwen3Config.from_json(f"{e2e}/data/config.json"), seed=0), f"{e2e}/rl0")
data.load_tokenizer(f"{e2e}/data").save(f"{e2e}/rl0")
open(f"{e2e}/seven.jsonl", "w").writelines(json.dumps({"problem": f"{i}", "answer": "7"}) + "\n" for i in range(64))
EOF
  local gppo="gppo.py --model $E2E/rl0 --data $E2E/seven.jsonl --out $E2E/gppo --no-thinking --max-response-tokens 1
    --prompts-per-step 8 --mini-batch-prompts 4 --lr 4e-3 --warmup-steps 1 --reward-workers 4 --save-every 2"
  # (gppo's --n is left at its default 8: torchrun reads `--n` as an ambiguous abbreviation of its own flags)
  $TORCHRUN $gppo --steps 4
  $TORCHRUN $gppo --steps 6 --resume | tee "$E2E/gppo-resume.log"
  grep -q "resumed from .*step_00000004 at step 4" "$E2E/gppo-resume.log"
  $PY - "$E2E" <<'EOF'
import json, math, sys
rows = {}
for m in map(json.loads, open(f"{sys.argv[1]}/gppo/metrics.jsonl")):
    rows.setdefault(m["step"], {}).update(m)
assert sorted(rows) == [1, 2, 3, 4, 5, 6], sorted(rows)
for s, m in sorted(rows.items()):
    print(f"gppo step {s}: reward {m['reward']:.3f} logp_diff {m.get('logp_diff', math.nan):.2e} "
          f"t_generate {m['t_generate']:.2f} s t_update {m.get('t_update', math.nan):.2f} s {m.get('skipped', '')}")
    assert math.isfinite(m["reward"]) and ("skipped" in m or math.isfinite(m["loss"]))
assert rows[6]["reward"] > rows[1]["reward"] + 0.5, "the one-token task was not learned"  # CPU: -0.97 -> 0.75
assert max(m.get("logp_diff", 0.0) for m in rows.values()) < 5e-2  # bf16 sampler vs trainer, one model.py
EOF
}
decode_shapes() {  # generate as RL steps call it: other prompt lengths each call, so another KV pool size
  $PY - <<'EOF'
import logging, random
import torch
from torch._dynamo.utils import counters
import model, rollout
hits = []  # the decode's compiled FlexAttention past dynamo's recompile limit runs unfused (the full scores)
logging.getLogger("torch._dynamo").addHandler(type("Hits", (logging.Handler,), {"emit": lambda self, r: hits.append(
    r.getMessage().splitlines()[0]) if "recompile_limit" in r.getMessage() else None})())
cfg = model.Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024)
m = model.build_model(cfg, device="cuda", dtype=torch.bfloat16, seed=0).eval()
rng = random.Random(0)
for call in range(12):
    prompts = [[rng.randrange(1, 500) for _ in range(rng.randint(8, 120))] for _ in range(8)]
    rollout.generate(m, prompts, n=2, max_new_tokens=24, temperature=1.0, seed=call, max_rows=16)
    print(f"call {call}: compiled graphs {counters['stats']['unique_graphs']}, recompile-limit hits {len(hits)}")
# on the CPU (flex=True) the 11th call hits the limit: the pool's size is a shape of the compiled decode
assert not hits, f"the decode fell back to uncompiled FlexAttention: {hits[0]}"
EOF
}
export -f sft_e2e gppo_e2e decode_shapes
step sft-e2e 150 bash -c sft_e2e
step gppo-e2e 150 bash -c gppo_e2e
step decode-shapes 240 bash -c decode_shapes

# ---- 4. the benchmarks (they print; a crash still fails the step)
# the 0.6B config: its published shape (bench.qwen3_0_6b)
$PY -c "import json, bench; print(json.dumps(bench.qwen3_0_6b().to_dict()))" > "$LOG/qwen3-0.6b.json" || failed=1
step engine 150 $PY bench.py engine_gpu
step decode 90 $PY bench.py decode_gpu
step kernels 60 $PY bench.py kernels_gpu
step model 60 $PY bench.py model --config "$LOG/qwen3-0.6b.json" --device cuda --dtype bfloat16
[ "$failed" = 0 ] && echo "== gpu.sh: every step passed" || echo "== gpu.sh: some step FAILED (see the '== NAME: exit' lines)"
exit $failed
