"""The experiments on the built-in demo (docs/RESULTS.md), each an RL stage from train.sh's SFT
checkpoint for several configurations x seeds: held-out accuracy and training statistics as rows of
docs/ablation.json (a rerun replaces its rows), a markdown table between markers in docs/RESULTS.md,
the curves of the first seed (plot.py) beside it.

Run (after `bash train.sh`, which writes runs/demo/sft/hf and runs/demo/data):
    python experiments.py ablate-loss runs/demo [--regime default|offpolicy]  # the loss kinds, math stage
    python experiments.py ablate-code runs/demo  # soft/hard code reward x group filter, faulty tests, code stage
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import data
import gppo
import model as qwen3
import rewards
import rollout

# the loss kinds compared (docs/ALGORITHM.md section 2): name -> (--loss, --beta-low, --beta-high)
LOSS_KINDS = {"gppo": ("gppo", 1.0, 1.0), "ce-gppo": ("gppo", 0.75, 1.0), "grpo": ("grpo", 1.0, 1.0),
              "dapo": ("dapo", 1.0, 1.0), "cispo": ("cispo", 1.0, 1.0)}
REGIMES = {"default": 2, "offpolicy": 8}  # optimizer steps (mini-batches) per RL step of 16 prompts
# (reward, group filter, faulty set, filter_problems applied): {soft, hard} x {accuracy, reward} on clean data;
# soft on the faulty set, without and with filter_problems, under both filters; and hard on the faulty set
# under the reward filter, the one place in the demo where partial credit exists (the demo's own errors fail
# every test or none)
CODE_RUNS = [("soft", "accuracy", False, False), ("hard", "accuracy", False, False), ("soft", "reward", False, False),
             ("hard", "reward", False, False), ("soft", "accuracy", True, False), ("soft", "accuracy", True, True),
             ("soft", "reward", True, False), ("soft", "reward", True, True), ("hard", "reward", True, False)]
CODE_TESTS = 4  # tests per demo code problem (demo_record)
ROW_KEY = ("experiment", "kind", "beta_low", "mini_batches", "reward", "filter", "faulty", "filtered_problems", "seed")


def need_demo(out: str, rl_file: str) -> None:
    """Stop with a clear message when train.sh's SFT checkpoint or RL data are not in `out`."""
    for f in (Path(out) / "sft" / "hf" / "config.json", Path(out) / "data" / rl_file):
        if not f.is_file():
            raise SystemExit(f"experiments.py: {f} not found: run `OUT={out} bash train.sh` first (its SFT stage "
                             "and data)")


def rl_run(out: str, run: str, data_file: str, flavour: str, seed: int, steps: int, lr: float, limit: int | None,
           *flags: str) -> tuple[list[dict], dict]:
    """An RL stage from out/sft/hf with train.sh's settings and `flags` (resumed where it stopped):
    its metrics per step and its held-out accuracy on `flavour`, greedy and at temperature 1, top-p
    1 ({flavour: greedy, flavour@t1: sampled})."""
    gppo.main(["--model", f"{out}/sft/hf", "--data", data_file, "--out", run, "--seed", str(seed), "--n", "8",
               "--lr", str(lr), "--warmup-steps", "2", "--max-response-tokens", "96", "--reward-workers", "2",
               "--save-every", "1000", "--steps", str(steps), "--resume", *flags])
    metrics = list({m["step"]: m for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "t_step" in m}.values())
    m, tok = qwen3.load_pretrained(f"{run}/hf").eval(), data.load_tokenizer(f"{run}/hf")
    tasks = rewards.load_tasks(f"{out}/data/eval_{flavour}.jsonl")[:limit]
    return metrics, {flavour + suffix: rollout.evaluate(m, tok, tasks, 1, t, 1.0, 0, 96, workers=2)["avg@n"]
                     for t, suffix in ((0.0, ""), (1.0, "@t1"))}


def save_rows(path: str, rows: list[dict]) -> list:
    """Add rows to the JSON list at `path`, replacing rows of the same ROW_KEY; returns the list."""
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else []
    new = {tuple(r.get(k) for k in ROW_KEY) for r in rows}
    out = [r for r in old if tuple(r.get(k) for k in ROW_KEY) not in new] + rows
    out.sort(key=lambda r: tuple(str(r.get(k)) for k in ROW_KEY))
    qwen3.atomic_write(path, json.dumps(out, indent=1) + "\n")
    return out


def _stat(rs: list[dict], k: str) -> tuple[float, float]:
    """Mean over seeds and range (max - min) of field k."""
    return sum(r[k] for r in rs) / len(rs), max(r[k] for r in rs) - min(r[k] for r in rs)


def _cell(rs: list[dict], k: str) -> str:
    """'mean ± half the range' of field k."""
    mean, spread = _stat(rs, k)
    return f"{mean:.3f} ± {spread / 2:.3f}"


def _vs(rs: list[dict], ref: list[dict] | None, k: str) -> str:
    """The difference from the reference configuration in points; within either's range it is a tie."""
    if not ref or rs is ref:
        return "-"
    (v, spread), (rv, ref_spread) = _stat(rs, k), _stat(ref, k)
    return f"{100 * (v - rv):+.1f} pts" + (" (tie)" if abs(v - rv) <= max(spread, ref_spread) else "")


def _groups(rows: list[dict], experiment: str, key) -> dict:
    groups: dict = {}
    for r in (r for r in rows if r["experiment"] == experiment):
        groups.setdefault(key(r), []).append(r)
    return groups


def loss_kinds_table(rows: list[dict]) -> str:
    """The loss-kinds experiment's markdown table: per regime and kind, means over seeds ± half
    their range."""
    groups = _groups(rows, "loss-kinds", lambda r: (r["mini_batches"], r["kind"]))
    lines = ["| mini-batches / RL step | kind | seeds | math greedy | math temp. 1 | vs gppo (greedy) | clipped tokens "
             "| entropy (end) | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for (mb, kind), rs in sorted(groups.items(), key=lambda x: (x[0][0], list(LOSS_KINDS).index(x[0][1]))):
        lines.append(f"| {mb} | {kind} | {len(rs)} | {_cell(rs, 'math')} | {_cell(rs, 'math@t1')} "
                     f"| {_vs(rs, groups.get((mb, 'gppo')), 'math')} | {100 * _stat(rs, 'clip_fraction')[0]:.2f}% "
                     f"| {_stat(rs, 'entropy')[0]:.3f} | {_stat(rs, 'seconds')[0]:.0f} |")
    return "\n".join(lines)


def code_reward_table(rows: list[dict]) -> str:
    """The code-reward experiment's markdown table: per configuration, means over seeds ± half their
    range."""
    groups = _groups(rows, "code-reward", lambda r: (r["faulty"], r["filtered_problems"] is not None, r["filter"],
                                                      r["reward"]))
    lines = ["| data | reward | group filter | seeds | code temp. 1 | vs clean soft/accuracy | code greedy "
             "| groups filtered | reward-only groups | rollouts on unpassable problems | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (faulty, cleaned, filt, reward), rs in sorted(groups.items(), key=lambda x: (*x[0][:3], x[0][3] == "hard")):
        name = "clean" if not faulty else f"{100 * faulty:.0f}% faulty" + (
            f", filter_problems dropped {rs[0]['filtered_problems']}" if cleaned else "")
        spent = sum(r["unpassable_rollouts"] for r in rs) / max(1, sum(r["rollouts"] for r in rs))
        lines.append(f"| {name} | {reward} | {filt} | {len(rs)} | {_cell(rs, 'code@t1')} "
                     f"| {_vs(rs, groups.get((0.0, False, 'accuracy', 'soft')), 'code@t1')} | {_cell(rs, 'code')} "
                     f"| {100 * _stat(rs, 'filtered_groups')[0]:.0f}% | {100 * _stat(rs, 'partial_groups')[0]:.1f}% "
                     f"| {100 * spent:.0f}% | {_stat(rs, 'seconds')[0]:.0f} |")
    return "\n".join(lines)


def put_table(path: str, name: str, title: str, table: str) -> None:
    """Write `table` between the `<!-- name: begin/end -->` markers of a markdown file (or a new
    section)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = Path(path).read_text() if Path(path).is_file() else ""
    block = f"{begin}\n{table}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n## {title}\n\n{block}\n"
    Path(path).write_text(text)


def plot_runs(runs: list[str], png) -> None:
    """plot.py's curves of these runs, when matplotlib is installed."""
    if subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True).returncode == 0:
        subprocess.run([sys.executable, str(Path(__file__).parent / "plot.py"), *runs, "--out", str(png)], check=True)


def ablate_loss(out: str, regime: str, kinds: list[str], seeds: list[int], steps: int, lr: float, results: str,
                table: str, limit: int | None = None) -> None:
    """The math RL stage from out/sft/hf for each loss kind and seed (docs/RESULTS.md, the loss
    kinds): held-out accuracy, the share of clipped tokens, the final entropy, the RL seconds; rows
    to `results`, the table between markers in `table`, the curves of the first seed next to it."""
    need_demo(out, "rl_math.jsonl")
    for name in kinds:
        kind, beta_low, beta_high = LOSS_KINDS[name]
        for seed in seeds:
            run = f"{out}/ablation/loss-kinds-{regime}/{name}_s{seed}"
            ms, acc = rl_run(out, run, f"{out}/data/rl_math.jsonl", "math", seed, steps, lr, limit, "--loss", kind,
                             "--beta-low", str(beta_low), "--beta-high", str(beta_high), "--prompts-per-step", "16",
                             "--mini-batch-prompts", str(16 // REGIMES[regime]))
            trained = [m for m in ms if "pg_tokens" in m]
            tokens = sum(m["pg_tokens"] for m in trained) or 1.0
            clip = sum((m["clip_low"] + m["clip_high"] + m["dual_clip"]) * m["pg_tokens"] for m in trained) / tokens
            save_rows(results, [dict(experiment="loss-kinds", kind=name, beta_low=beta_low, beta_high=beta_high,
                                     seed=seed, mini_batches=REGIMES[regime], steps=steps, lr=lr, **acc,
                                     clip_fraction=clip, entropy=trained[-1]["entropy"] if trained else float("nan"),
                                     seconds=round(sum(m["t_step"] for m in ms), 1))])
    put_table(table, "loss-kinds", "The loss kinds (`python experiments.py ablate-loss`)",
              loss_kinds_table(json.loads(Path(results).read_text())))
    plot_runs([f"{out}/ablation/loss-kinds-{regime}/{k}_s{seeds[0]}" for k in kinds],
              Path(table).parent / f"loss-kinds-{regime}.png")


def corrupt_tests(src: str, dst: str, share: float, seed: int = 0) -> list[int]:
    """Copy a demo code RL set, giving a `share` of its problems one test whose expected output is
    off by 1-9 (as scraped tests sometimes are); returns the corrupted problems' line indices."""
    # a seed stream of its own: random.Random(0).sample and the RL sampler's Random(0).shuffle are correlated
    rng, recs = random.Random(f"corrupt-tests-{seed}"), [json.loads(line) for line in open(src)]
    bad = sorted(rng.sample(range(len(recs)), round(share * len(recs))))
    for i in bad:
        gold = json.loads(recs[i]["reward_model"]["ground_truth"])
        j = rng.randrange(len(gold["outputs"]))
        gold["outputs"][j] = f"{int(gold['outputs'][j]) + rng.choice((-1, 1)) * rng.randint(1, 9)}\n"
        recs[i]["reward_model"]["ground_truth"] = json.dumps(gold)
    Path(dst).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return bad


def filter_code_set(src: str, dst: str, workers: int = 2) -> list[int]:
    """rewards.filter_problems over a demo code set (CODE_TESTS tests each, the reference program
    must pass them): the kept problems go to dst; returns the dropped line indices."""
    kept, report = rewards.filter_problems([json.loads(line) for line in open(src)], min_tests=CODE_TESTS,
                                           workers=workers, timeout_s=10.0)
    Path(dst).write_text("".join(json.dumps(r) + "\n" for r in kept))
    return [i for i, _, _ in report["dropped_list"]]


def drawn_problems(n_tasks: int, seed: int, steps: int, draw: int) -> list[int]:
    """The problems a one-rank gppo.py run draws in `steps` steps of `draw` prompts (its sampler,
    replayed)."""
    sampler = data.ShardedSampler(n_tasks, 0, 1, seed)
    return [i for _ in range(steps) for i in sampler.next_indices(draw)]


def ablate_code(out: str, seeds: list[int], steps: int, share: float, lr: float, results: str, table: str,
                limit: int | None = None, runs=CODE_RUNS) -> None:
    """The code RL stage from out/sft/hf for each configuration of CODE_RUNS and seed
    (docs/RESULTS.md, code rewards): held-out code accuracy, the shares of filtered and of
    reward-only groups, the rollouts spent on problems no program can fully pass, the reward curve,
    the RL seconds; rows, table and curves as in ablate_loss."""
    need_demo(out, "rl_code.jsonl")
    base, clean = Path(out) / "ablation" / "code-reward", f"{out}/data/rl_code.jsonl"
    base.mkdir(parents=True, exist_ok=True)
    faulty, cleaned = str(base / "rl_code_faulty.jsonl"), str(base / "rl_code_faulty_filtered.jsonl")
    corrupted = set(corrupt_tests(clean, faulty, share))
    t0 = time.perf_counter()
    dropped = set(filter_code_set(faulty, cleaned))
    n_problems = sum(1 for _ in open(faulty))
    print(f"filter_problems: {len(dropped)} of {n_problems} problems dropped in {time.perf_counter() - t0:.0f} s: "
          f"{len(dropped & corrupted)} of the {len(corrupted)} corrupted, {len(dropped - corrupted)} clean")
    kept = [i for i in range(n_problems) if i not in dropped]
    curves = []
    for reward, filt, is_faulty, filtered in runs:
        path = cleaned if filtered else faulty if is_faulty else clean
        # line indices, in the file this run trains on, of problems whose tests no program can all pass
        bad = {j for j, i in enumerate(kept) if i in corrupted} if filtered else corrupted if is_faulty else set()
        tag = f"{reward}-{filt}-" + ("clean" if not is_faulty else "faulty-filtered" if filtered else "faulty")
        for seed in seeds:
            run = str(base / f"{tag}_s{seed}")
            ms, acc = rl_run(out, run, path, "code", seed, steps, lr, limit, "--code-reward", reward, "--filter",
                             filt, "--prompts-per-step", "8", "--mini-batch-prompts", "4")
            # --prompts-per-step 8 x --oversample 2
            drawn = drawn_problems(len(kept) if filtered else n_problems, seed, steps, 16)
            save_rows(results, [dict(
                experiment="code-reward", reward=reward, filter=filt, faulty=share if is_faulty else 0.0,
                filtered_problems=len(dropped) if filtered else None, seed=seed, steps=steps, lr=lr, **acc,
                filtered_groups=sum(m["filtered"] for m in ms) / len(ms),
                partial_groups=sum(m["partial_groups"] for m in ms) / len(ms),
                unpassable_rollouts=8 * sum(i in bad for i in drawn), rollouts=8 * len(drawn),
                reward_curve=[round(m["reward"], 4) for m in ms], filtered_curve=[m["filtered"] for m in ms],
                seconds=round(sum(m["t_step"] for m in ms), 1))])
            curves += [run] if seed == seeds[0] else []
    put_table(table, "code-reward", "Code rewards and faulty tests (`python experiments.py ablate-code`)",
              code_reward_table(json.loads(Path(results).read_text())))
    plot_runs(curves, Path(table).parent / "code-reward.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    loss = sub.add_parser("ablate-loss", help="the loss kinds from one SFT checkpoint (math stage)")
    loss.add_argument("--regime", choices=tuple(REGIMES), default="default", help="mini-batches per RL step: "
                      + ", ".join(f"{k} {v}" for k, v in REGIMES.items()))
    loss.add_argument("--kinds", nargs="+", choices=tuple(LOSS_KINDS), default=list(LOSS_KINDS),
                      help="loss kinds to run")
    code = sub.add_parser("ablate-code", help="soft vs hard code rewards, and faulty tests (code stage)")
    code.add_argument("--share", type=float, default=0.3, help="share of problems with one corrupted test")
    code.add_argument("--configs", nargs="+", type=int, default=list(range(len(CODE_RUNS))),
                      help="indices into CODE_RUNS (default: all 9)")
    for s, steps in ((loss, 40), (code, 12)):
        s.add_argument("out", help="train.sh's demo folder: OUT/sft/hf and OUT/data")
        s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="RL seeds of every configuration")
        s.add_argument("--steps", type=int, default=steps, help=f"RL steps (train.sh's stage: {steps})")
        s.add_argument("--lr", type=float, default=5e-5, help="RL learning rate (train.sh's: 5e-5)")
        s.add_argument("--results", default="docs/ablation.json", help="JSON rows (same key: replaced)")
        s.add_argument("--table", default="docs/RESULTS.md", help="markdown file that gets the table")
        s.add_argument("--limit", type=int, default=None, help="held-out problems (default: all 200)")
    a = p.parse_args(argv)
    if a.cmd == "ablate-code":
        ablate_code(a.out, a.seeds, a.steps, a.share, a.lr, a.results, a.table, a.limit,
                    [CODE_RUNS[i] for i in a.configs])
    else:
        ablate_loss(a.out, a.regime, a.kinds, a.seeds, a.steps, a.lr, a.results, a.table, a.limit)


if __name__ == "__main__":
    sys.exit(main())
