#!/usr/bin/env bash
# The Klear-Reasoner pipeline end to end: set-up, long-CoT SFT, GPPO RL (math, then code), evaluation.
#
#   bash train.sh                          # built-in demo: a tiny Qwen3 from scratch on CPU, ~13 minutes (2 cores)
#   LOSS=grpo bash train.sh                # demo ablation: RL again from the same SFT checkpoint with another loss
#   RL_SEED=1 bash train.sh                # the RL stages again with another seed (same SFT checkpoint)
#   CONTROL=0 bash train.sh                # without the continued-SFT control
#   MODEL=/path/to/Qwen3-8B-Base SFT_DATA=sft.jsonl MATH_DATA=math.jsonl CODE_DATA=code.jsonl \
#     EVAL_DATA=aime24.jsonl NPROC=8 bash train.sh          # the real recipe on a GPU node
#
# Every knob is an environment variable whose default is the recipe's value (demo values when MODEL is unset).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
say() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }
die() { printf 'train.sh: error: %s\n' "$*" >&2; exit 2; }
need_file() { [ -f "$1" ] || die "$2 not found: $1"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then  # the tests set SKIP_SETUP=1: tests/run.sh has installed everything already
  say "set-up"
  PIP_DISABLE_PIP_VERSION_CHECK=1 $PY -m pip install -q -r requirements.txt
fi

if [ -z "${MODEL:-}" ]; then
  # ---------------- demo: tiny Qwen3, char tokenizer, math + code flavours, CPU ----------------
  OUT=${OUT:-runs/demo}; SEED=${SEED:-0}; LOSS=${LOSS:-gppo}; D=$OUT/data
  # RL_SEED: repeat only the RL stages from the same SFT checkpoint (seed-to-seed spread of RL)
  RUN=$LOSS${RL_SEED:+_seed$RL_SEED}
  mkdir -p "$OUT"
  say "demo data and tokenizer -> $D"
  $PY demo.py data "$D" --seed "$SEED"
  if [ ! -f "$OUT/sft/hf/config.json" ]; then
    say "SFT from scratch: tiny Qwen3 ($D/config.json) learns to think before answering"
    $PY sft.py --config "$D/config.json" --tokenizer "$D" --data "$D/sft.jsonl" --out "$OUT/sft" \
      --max-length 512 --tokens-per-step 4096 --micro-batch 8 --epochs "${SFT_EPOCHS:-8}" \
      --lr "${SFT_LR:-2e-3}" --min-lr "${SFT_MIN_LR:-2e-4}" --warmup-ratio 0.03 --weight-decay 0 \
      --seed "$SEED" --save-every 100 --resume
  fi
  evaluate() { $PY demo.py eval "$1" "$2" "$D" "$OUT" "${EVAL_LIMIT:-}"; }  # held-out, greedy and temperature 1
  [ -f "$OUT/eval_sft_code_t1.json" ] || { say "evaluate the SFT model (held-out)"; evaluate "$OUT/sft/hf" sft; }
  RL="--loss $LOSS --seed ${RL_SEED:-$SEED} --n 8 --lr ${RL_LR:-5e-5} --warmup-steps 2 --max-response-tokens 96 \
    --reward-workers 2 --save-every 10 --resume"
  say "RL stage 1, math: $RUN from the SFT checkpoint"
  $PY gppo.py --model "$OUT/sft/hf" --data "$D/rl_math.jsonl" --out "$OUT/$RUN/math" $RL \
    --steps "${MATH_STEPS:-40}" --prompts-per-step 16 --mini-batch-prompts 8
  say "RL stage 2, code: $RUN from the math-RL checkpoint"
  $PY gppo.py --model "$OUT/$RUN/math/hf" --data "$D/rl_code.jsonl" --out "$OUT/$RUN/code" $RL \
    --steps "${CODE_STEPS:-12}" --prompts-per-step 8 --mini-batch-prompts 4
  say "evaluate the RL model (held-out)"
  evaluate "$OUT/$RUN/code/hf" "$RUN"
  if [ "${CONTROL:-1}" = 1 ] && [ ! -f "$OUT/eval_sft_more_code_t1.json" ]; then
    # the control: more SFT (at the schedule's final lr) for as long as both RL stages ran, so that the RL
    # gain is claimed over the better of two baselines, not over a model that merely trained less
    secs=$($PY demo.py seconds "$OUT/$RUN/math/metrics.jsonl" "$OUT/$RUN/code/metrics.jsonl")
    say "control: the SFT model trained further with SFT for the RL stages' wall time (${secs} s)"
    $PY sft.py --model "$OUT/sft/hf" --data "$D/sft.jsonl" --out "$OUT/sft_more" --max-length 512 \
      --tokens-per-step 4096 --micro-batch 8 --epochs 1000 --lr "${SFT_MIN_LR:-2e-4}" --min-lr "${SFT_MIN_LR:-2e-4}" \
      --warmup-ratio 0 --weight-decay 0 --seed "$SEED" --save-every 0 --max-seconds "$secs"
    evaluate "$OUT/sft_more/hf" sft_more
  fi
  $PY demo.py summary "$OUT" "$RUN"
  if $PY -c "import matplotlib" 2>/dev/null; then  # the curves of every stage (plot.py), when matplotlib is there
    runs=("$OUT/sft" "$OUT/$RUN/math" "$OUT/$RUN/code")
    [ ! -f "$OUT/sft_more/metrics.jsonl" ] || runs+=("$OUT/sft_more")
    $PY plot.py "${runs[@]}" --out "$OUT/dashboard.png"
  fi
  exit 0
fi

# ---------------- the real recipe: Qwen3-8B-Base on a GPU node (docs/ALGORITHM.md) ----------------
OUT=${OUT:-runs/klear}; NPROC=${NPROC:-8}; NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}
SFT_DATA=${SFT_DATA:-}; MATH_DATA=${MATH_DATA:-}; CODE_DATA=${CODE_DATA:-}; EVAL_DATA=${EVAL_DATA:-}
say "checking inputs before any long work"
[ -d "$MODEL" ] || die "MODEL folder not found: $MODEL"
$PY model.py --check "$MODEL" || die "MODEL is not a complete Qwen3 checkpoint: $MODEL"
for f in tokenizer.json tokenizer_config.json; do need_file "$MODEL/$f" "tokenizer file (MODEL)"; done
for v in SFT_DATA MATH_DATA CODE_DATA; do
  [ -n "${!v}" ] || die "$v is not set (a JSONL file)"
  need_file "${!v}" "$v"
done
[ -z "$EVAL_DATA" ] || need_file "$EVAL_DATA" EVAL_DATA
# the context split: prompts <= 4096 + responses <= the rest of the model's context (28,672 on Qwen3-8B-Base)
SPLIT="--max-prompt-tokens ${MAX_PROMPT:-4096} ${MAX_RESPONSE:+--max-response-tokens $MAX_RESPONSE}"
$PY gppo.py --preflight --model "$MODEL" $SPLIT || die "the context split does not fit $MODEL/config.json"
LAUNCH="torchrun --nnodes $NNODES --node-rank $NODE_RANK --nproc-per-node $NPROC --master-addr $MASTER_ADDR \
  --master-port $MASTER_PORT"

say "SFT: lr 8e-5 -> 4e-5 cosine, ${SFT_EPOCHS:-4} epochs, ${MAX_LEN:-32768}-token rows"
$LAUNCH sft.py --model "$MODEL" --data "$SFT_DATA" --out "$OUT/sft" --resume --checkpointing \
  --max-length "${MAX_LEN:-32768}" --epochs "${SFT_EPOCHS:-4}" --lr "${SFT_LR:-8e-5}" --min-lr "${SFT_MIN_LR:-4e-5}" \
  --tokens-per-step "${SFT_TOKENS:-4194304}"
say "RL stage 1, math: GPPO lr 1e-6, 128 prompts x 8, mini-batch 16 prompts"
$LAUNCH gppo.py --stage math --model "$OUT/sft/hf" --data "$MATH_DATA" --out "$OUT/rl_math" --resume --checkpointing \
  --loss "${LOSS:-gppo}" --steps "${MATH_STEPS:-500}" $SPLIT ${EVAL_DATA:+--eval "$EVAL_DATA"}
say "RL stage 2, code: GPPO lr 5e-7, mini-batch 32 prompts"
$LAUNCH gppo.py --stage code --model "$OUT/rl_math/hf" --data "$CODE_DATA" --out "$OUT/rl_code" --resume \
  --checkpointing --loss "${LOSS:-gppo}" --steps "${CODE_STEPS:-500}" $SPLIT
if [ -n "$EVAL_DATA" ]; then
  say "evaluation: temperature 0.6, top-p 0.95, avg@${EVAL_N:-64}"
  $PY rollout.py --model "$OUT/rl_code/hf" --eval "$EVAL_DATA" --n "${EVAL_N:-64}" --temperature 0.6 --top-p 0.95 \
    ${MAX_RESPONSE:+--max-new-tokens $MAX_RESPONSE} --out "$OUT/eval.jsonl" --summary "$OUT/eval.json" --resume
fi
