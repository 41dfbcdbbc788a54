"""The built-in CPU demo that `bash train.sh` runs: its tokenizer, tiny Qwen3 config and task data,
the held-out evaluation of each stage, the continued-SFT control's budget, the summary table.

The task (why it shows real RL learning, not an SFT model that merely trained less):
- Two flavours of problems, both graded by the recipe's rewards: math, column addition of 2-3
  operands with a units-first carry trace, then `</think>\\boxed{sum}`; code, read x and print f(x)
  = a*x + b, judged by stdin/stdout tests in the sandbox.
- The SFT traces carry a teacher's systematic flaw, the way distilled data does (the recipe keeps
  incorrect samples on purpose): in 60% of the traces the carry out of a column summing to exactly
  10 is dropped, and the sign of a negative b is misread. SFT learns the flaw; samples at
  temperature 1 are sometimes right, and the RL reward (exact answers, passing tests) pulls them
  there.
- The control is the same SFT model trained further with SFT for as long as both RL stages ran: the
  gain claimed for RL is over the better of the two baselines.

Run (train.sh does all of this):
    python demo.py data FOLDER [--seed S]            # tokenizer, config.json, sft / rl_{math,code} / eval_* JSONL
    python demo.py eval MODEL NAME DATA OUT [LIMIT]  # held-out accuracy, greedy and at temperature 1
    python demo.py seconds METRICS.jsonl ...         # the RL stages' wall time (the control's budget)
    python demo.py summary OUT RUN                   # summary.json and the table
The experiments on this demo (docs/RESULTS.md) are in experiments.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import tokenizers

import data
import rollout

# printable ASCII, newline, tab; one token each
DEMO_CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
DEMO_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              # (token, special) as in Qwen3
              ("<think>", False), ("</think>", False), ("\\boxed{", False)]
MATH_SOURCE, CODE_SOURCE = "math_longcot_math_verify", "coder1_longcot"
MATH_WIDTH = 3  # demo operands have at most this many digits and are shown zero-padded to it


def demo_tokenizer() -> data.Tokenizer:
    """Character-level: every char its own token (unknown chars map to <unk>), plus Qwen3's special
    tokens."""
    # "<unk>" text itself splits into chars
    vocab = {c: i for i, c in enumerate(list(DEMO_CHARS) + ["<unk>"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = tokenizers.decoders.Fuse()  # join the characters back without spaces
    for text, special in DEMO_ADDED:
        added = tokenizers.AddedToken(text, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
    decoder = {str(i): {"content": a.content, "special": a.special} for i, a in tok.get_added_tokens_decoder().items()}
    config = {"added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False, "model_max_length": 512,
              "clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast"}
    return data.Tokenizer(tok, config, source="demo tokenizer")


def demo_config(tok: data.Tokenizer) -> dict:
    """The demo's 0.8M-parameter Qwen3 in HF config.json form."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": -(-tok.vocab_size // 16) * 16,
            "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": True, "hidden_act": "silu",
            "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": tok.pad_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "torch_dtype": "float32"}


def math_trace(ops: list[int], flawed: bool = False) -> tuple[str, int, bool]:
    """Units-first column trace `carry+digits=sum` over MATH_WIDTH columns, the sum, and whether a
    column (carry included) sums to exactly 10. Fixed widths (zero-padded operands, two-digit sums)
    put every digit a tiny model must read at a fixed distance from where it writes. flawed: the
    teacher's bug, the carry out of such a column is dropped (trace and answer both wrong)."""
    lines, digits, carry, ten = [], [], 0, False
    for col in range(MATH_WIDTH):
        ds = [o // 10**col % 10 for o in ops]
        s = carry + sum(ds)
        lines.append("+".join(map(str, [carry] + ds)) + f"={s:02d}")
        digits.append(s % 10)
        ten |= s == 10
        carry = 0 if flawed and s == 10 else s // 10
    return "\n".join(lines), int(str(carry) + "".join(map(str, reversed(digits)))), ten


def math_problem(rng: random.Random, p_ten: float = 0.4, max_digits: int = MATH_WIDTH) -> list[int]:
    """2-3 operands of 1..max_digits digits; a share p_ten has a column summing to 10 (the flaw)."""
    want = rng.random() < p_ten
    while True:  # rejection: about a quarter of uniform problems have such a column
        ds = [rng.randint(1, max_digits) for _ in range(rng.randint(2, 3))]
        ops = [rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1) for d in ds]
        if math_trace(ops)[2] == want:
            return ops


def code_problem(rng: random.Random) -> tuple[int, int]:
    """f(x) = a*x + b with a in +-1..15, b in -99..99; the flawed sub-class is b < 0."""
    return rng.choice([a for a in range(-15, 16) if a]), rng.randint(-99, 99)


def code_text(a: int, b: int) -> tuple[str, str, str]:
    """(prompt, reasoning, program) for f(x) = a*x + b."""
    ax, bx = {1: "x", -1: "-x"}.get(a, f"{a}*x"), (f"+{b}" if b > 0 else f"-{-b}" if b < 0 else "")
    prompt = f"Read an integer x, print f(x)={ax.replace('*', '')}{bx}"
    return prompt, f"a={a}, b={b}", f"x=int(input())\nprint({ax}{bx})"


def demo_record(kind: str, problem, split: str, rng: random.Random, flaw_rate: float) -> tuple[dict, bool]:
    """One record of a split ("sft" | "rl" | "eval") and whether the teacher's flaw was applied (sft
    only)."""
    if kind == "math":
        prompt = "+".join(f"{o:0{MATH_WIDTH}d}" for o in problem)
        flawed = split == "sft" and math_trace(problem)[2] and rng.random() < flaw_rate
        trace, answer, _ = math_trace(problem, flawed)
        content, gold, ability = f"\\boxed{{{answer}}}", str(answer), "math"
    else:
        a, b = problem
        # the teacher misreads the sign of b
        flawed = split == "sft" and b < 0 and rng.random() < flaw_rate
        prompt, (_, trace, program) = code_text(a, b)[0], code_text(a, -b if flawed else b)
        content, ability = f"```python\n{program}\n```", "code"
        xs = [rng.randint(-99, -1), rng.randint(0, 9), rng.randint(10, 99), rng.randint(-999, 999)]
        tests = [{"input": f"{x}\n", "output": f"{a * x + b}\n"} for x in xs]
        gold = json.dumps({"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]})
    user = {"role": "user", "content": prompt}
    if split == "sft":
        return {"messages": [user, {"role": "assistant", "reasoning_content": trace, "content": content}]}, flawed
    if split == "rl":
        source = MATH_SOURCE if kind == "math" else CODE_SOURCE
        rec = {"data_source": source, "prompt": [user], "ability": ability,
               "reward_model": {"style": "rule", "ground_truth": gold}}
        # code: the reference program
        return (rec if kind == "math" else rec | {"solution": program}), False
    return ({"problem": prompt, "answer": gold} if kind == "math" else {"problem": prompt, "tests": tests}), False


def _fresh(draw, seen: set):
    """A problem not drawn before (the splits must not overlap)."""
    for _ in range(100_000):
        problem = draw()
        if str(problem) not in seen:
            seen.add(str(problem))
            return problem
    raise ValueError("write_demo: ran out of distinct problems; lower the counts")


def write_demo(folder, seed: int = 0, n_sft: int = 2000, n_rl: int = 1000, n_eval: int = 200,
               flaw_rate: float = 0.6, p_ten: float = 0.4) -> dict:
    """Tokenizer, config.json and the JSONL files of the demo; counts are per flavour, problems are
    distinct across all splits (eval is held out from SFT and RL). Returns counts, including how
    many traces are flawed."""
    folder, rng = Path(folder), random.Random(seed)
    tok = demo_tokenizer()
    tok.save(folder)
    (folder / "config.json").write_text(json.dumps(demo_config(tok), indent=2))
    draw = {"math": lambda: math_problem(rng, p_ten), "code": lambda: code_problem(rng)}
    seen, stats = set(), {}
    # RL: one file per stage
    files = {"sft": [], "rl_math": [], "rl_code": [], "eval_math": [], "eval_code": []}
    for split, n in (("eval", n_eval), ("rl", n_rl), ("sft", n_sft)):
        for kind in ("math", "code"):
            recs = [demo_record(kind, _fresh(draw[kind], seen), split, rng, flaw_rate) for _ in range(n)]
            files[split if split == "sft" else f"{split}_{kind}"] += [r for r, _ in recs]
            stats[f"{split}_{kind}"], stats[f"{split}_{kind}_flawed"] = n, sum(bad for _, bad in recs)
    for name, recs in files.items():
        if name == "sft":
            rng.shuffle(recs)  # interleave the flavours
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return stats


# ----------------------------------------------------------------------------------- train.sh steps
def evaluate_stage(model: str, name: str, folder: str, out: str, limit: str | None = None) -> None:
    """Held-out accuracy of both flavours, greedy and with one sample at temperature 1, top-p 1
    (RL's sampling). A few seconds each: redone from scratch, never resumed."""
    for f in ("math", "code"):
        for t, suffix in (("0", ""), ("1", "_t1")):
            rows = f"{out}/eval_{name}_{f}{suffix}.jsonl"
            for old in (rows, rows + ".settings.json"):
                if os.path.exists(old):
                    os.remove(old)
            rollout.main(["--model", model, "--eval", f"{folder}/eval_{f}.jsonl", "--temperature", t, "--top-p", "1",
                          "--max-new-tokens", "96", "--out", rows, "--summary", f"{out}/eval_{name}_{f}{suffix}.json",
                          "--workers", "2"] + (["--limit", limit] if limit else []))


def rl_seconds(metrics: list[str]) -> int:
    """Wall time of the RL stages: t_step summed over each run's steps (a resumed step counts once)."""
    steps = {(f, m["step"]): m["t_step"] for f in metrics for m in map(json.loads, open(f)) if "t_step" in m}
    return round(sum(steps.values()))


def summary(out: str, run: str) -> None:
    """summary.json (held-out accuracy per stage; earlier runs' columns stay) and the table train.sh
    prints."""
    path = f"{out}/summary.json"
    old = json.load(open(path)) if os.path.exists(path) else {}
    table = {}
    for stage in dict.fromkeys(["sft", "sft_more", *old.get("math", {}), run]):
        for f in ("math", "code"):
            # flavour: greedy; flavour@t1: temperature 1
            for key, suffix in ((f, ""), (f + "@t1", "_t1")):
                if os.path.exists(p := f"{out}/eval_{stage}_{f}{suffix}.json"):
                    table.setdefault(key, {})[stage] = json.load(open(p))["avg@n"]
    Path(path).write_text(json.dumps(table, indent=1))
    stages = list(table["math"])
    w = [max(9, len(s) + 2) for s in stages]
    print(f"\nheld-out accuracy ({path}; @t1: one sample at temperature 1, otherwise greedy)")
    print(f"{'':8s}" + "".join(f"{s:>{n}s}" for s, n in zip(stages, w)))
    for f, accs in table.items():
        print(f"{f:8s}" + "".join(f"{accs[s]:{n}.3f}" if s in accs else " " * n for s, n in zip(stages, w)))
    for f in ("math", "code"):
        base = max(v for s, v in table[f].items() if s in ("sft", "sft_more"))
        print(f"{run} over the better of sft and sft_more (greedy), {f}: {100 * (table[f][run] - base):+.1f} points")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("data", help="write the demo's tokenizer, config and JSONL files")
    s.add_argument("folder", help="where the files go")
    s.add_argument("--seed", type=int, default=0, help="seeds the problems and the teacher's flaws")
    s = sub.add_parser("eval", help="held-out accuracy of a stage's model")
    for name in ("model", "name", "folder", "out"):
        s.add_argument(name, help="model folder, stage name, demo data folder, output folder")
    s.add_argument("limit", nargs="?", default=None, help="held-out problems per flavour (default: all)")
    s = sub.add_parser("seconds", help="the RL stages' wall time, from their metrics.jsonl")
    s.add_argument("metrics", nargs="+", help="metrics.jsonl of each RL stage")
    s = sub.add_parser("summary", help="summary.json and the table")
    s.add_argument("out", help="train.sh's demo folder")
    s.add_argument("run", help="the RL run's name (its eval_<run>_* files)")
    a = p.parse_args(argv)
    if a.cmd == "data":
        print(json.dumps(write_demo(a.folder, seed=a.seed)))
    elif a.cmd == "eval":
        evaluate_stage(a.model, a.name, a.folder, a.out, a.limit or None)
    elif a.cmd == "seconds":
        print(rl_seconds(a.metrics))
    else:
        summary(a.out, a.run)

if __name__ == "__main__":
    sys.exit(main())
