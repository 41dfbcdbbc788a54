"""Every benchmark of the stack, one function each; each prints a table with ratios against a baseline measured
in the same run (these machines are noisy: absolute times from two runs are not comparable).

Run:
    python bench.py NAME [NAME ...]     # e.g. python bench.py engine
    python bench.py all
Where a CPU time cannot show a GPU-side gain, a benchmark counts the work (forwards, KV slots read) and projects
it with the roofline formula it states.
"""
from __future__ import annotations

import sys

BENCHES: dict = {}  # name -> function(argv: list[str]) -> None


def bench(fn):
    """Register a benchmark under its function name (less a leading `bench_`)."""
    BENCHES[fn.__name__.removeprefix("bench_")] = fn
    return fn


# ------------------------------------------------------------------------------------------------ engine


# ------------------------------------------------------------------------------------------------ rewards

# Recipe-scale generation for the reward arithmetic: Qwen3-8B bf16 weights and KV bytes per token, H200 HBM
_GEN = {"weights": 16.4e9, "kv_per_token": 36 * 8 * 128 * 2 * 2, "hbm": 4.8e12, "gpus": 8, "responses": 1024}


def _rewards_args(argv: list[str]):
    import argparse
    import os
    p = argparse.ArgumentParser(prog="bench.py rewards")
    p.add_argument("--data", required=True, help="shared data folder holding math/math500.jsonl and code/*.jsonl")
    p.add_argument("--part", choices=("math", "sandbox", "all"), default="all")
    p.add_argument("--pairs", type=int, default=200, help="MATH-500 answer pairs graded")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="threads (math helpers, sandboxes)")
    p.add_argument("--node-cores", type=int, default=128, help="CPU cores of an 8-GPU node, for the arithmetic")
    p.add_argument("--mean-tokens", type=int, default=8192, help="mean response length at the recipe's caps")
    p.add_argument("--programs", type=int, default=64, help="TACO reference solutions (sandbox part)")
    p.add_argument("--tests", type=int, default=8, help="stdin tests per program (sandbox part)")
    return p.parse_args(argv)


def _timed_pool(fn, jobs: list, workers: int) -> tuple[list, float, float]:
    """(results, wall s, CPU s of this process and its reaped children) of fn over jobs on a thread pool."""
    import resource
    import time
    from concurrent.futures import ThreadPoolExecutor
    cpu = lambda: sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                      for f in ("ru_utime", "ru_stime"))
    c0, t0 = cpu(), time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        out = list(pool.map(fn, jobs))
    return out, time.perf_counter() - t0, cpu() - c0


def _bench_math(a) -> None:
    """Math-Verify checks per second on pairs of distinct MATH-500 answers (always through a helper: the
    integer shortcut is not counted), and what grading 1,024 responses costs against generating them."""
    import json
    import os
    import random

    import rewards
    answers = sorted({str(json.loads(x)["answer"]) for x in open(os.path.join(a.data, "math", "math500.jsonl"))})
    rng = random.Random(0)
    pairs = [tuple(rng.sample(answers, 2)) for _ in range(a.pairs)]
    _timed_pool(lambda _: rewards._ask("1", "1", 120.0), range(a.workers), a.workers)  # start-up is not check time

    def helper_cpu() -> float:  # the helpers are never reaped, so read their CPU time from /proc
        stat = [open(f"/proc/{h.proc.pid}/stat").read().rsplit(")", 1)[1].split() for h in rewards._IDLE]
        return sum(int(s[11]) + int(s[12]) for s in stat) / os.sysconf("SC_CLK_TCK")
    c0 = helper_cpu()
    got, wall, _ = _timed_pool(lambda p: rewards._ask(p[0], p[1], 5.0), pairs, a.workers)
    cpu = helper_cpu() - c0
    ints = sum(bool(rewards._INT.fullmatch(x)) for x in answers) / len(answers)
    rate, per_core = len(pairs) / wall, len(pairs) / cpu
    print(f"math: {len(pairs)} pairs of distinct MATH-500 answers, {a.workers} threads: {rate:.1f} checks/s wall, "
          f"{per_core:.1f} checks per CPU second; called equal: {sum(got)}; integer golds (decided without a "
          f"helper): {ints:.0%}")
    g, n = _GEN, _GEN["responses"]
    per_gpu, L = n // g["gpus"], a.mean_tokens
    t_gen = (L * g["weights"] + per_gpu * g["kv_per_token"] * L * L / 2) / g["hbm"]
    for cores in (os.cpu_count(), a.node_cores):
        t_grade = n / (per_core * cores)
        print(f"  grading {n} responses on {cores} cores: {n} / ({per_core:.1f} x {cores}) = {t_grade:.1f} s = "
              f"{t_grade / t_gen:.1%} of generating them")
    print(f"  generation lower bound per RL step ({n} responses over {g['gpus']} H200s, {per_gpu} per GPU, mean "
          f"{L} tokens, every decode step reads the 8B weights once and each live row its KV):\n"
          f"  (L * W + B * kv * L^2 / 2) / HBM = ({L} * {g['weights']:.3g} + {per_gpu} * {g['kv_per_token']} * "
          f"{L}^2 / 2) / {g['hbm']:.2g} = {t_gen:.0f} s")


def _bare(code: str, tests: list[dict], flags: list[str]) -> None:
    """Baseline: subprocess.run([python, *flags, file]) per test, nothing else."""
    import os
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(code)
        for t in tests:
            subprocess.run([sys.executable, *flags, path], input=t["input"].encode(), capture_output=True, timeout=60)


def _bench_sandbox(a) -> None:
    """Per-test cost of the sandbox against a bare `python -I -S file` on TACO reference solutions."""
    import json
    import os

    import sandbox
    probs = [json.loads(x) for x in open(os.path.join(a.data, "code", "taco_stdin.jsonl"))]
    jobs = [(p["solution"], [p["tests"][j % len(p["tests"])] for j in range(a.tests)])
            for p in (probs[i % len(probs)] for i in range(a.programs))]
    print(sandbox.sandbox_info(), f"| workers {a.workers} | cpus {os.cpu_count()} | load {os.getloadavg()[0]:.1f}")
    rows = {}
    for name in ("bare", "sandbox", "bare again"):  # the baseline twice: machine drift shows as their difference
        fn = (lambda j: sandbox.run_tests(j[0], j[1], max_tests=0)) if name == "sandbox" else (
            lambda j: _bare(j[0], j[1], ["-I", "-S"]))
        res, wall, cpu = _timed_pool(fn, jobs, a.workers)
        rows[name] = (wall / len(jobs) / a.tests, cpu / len(jobs) / a.tests)
        if name == "sandbox":
            bad = [r.status for rs in res for r in rs if not r.passed]
            print(f"sandbox: {len(jobs)} programs x {a.tests} tests, failed {len(bad)}", bad[:5] or "")
    base = [(x + y) / 2 for x, y in zip(rows["bare"], rows["bare again"])]
    print("| run | ms wall / test | ms CPU / test |\n|---|---|---|")
    for name, (w, c) in rows.items():
        print(f"| {name} | {w * 1e3:.1f} | {c * 1e3:.1f} |")
    (w, c) = rows["sandbox"]
    print(f"sandbox / bare python -I -S: wall {w / base[0]:.2f}x, CPU {c / base[1]:.2f}x")


@bench
def bench_rewards(argv: list[str]) -> None:
    """Grading and sandbox costs (--data: the shared data folder, required): Math-Verify checks/s with the RL-step
    arithmetic; the sandbox's per-test overhead against bare `python -I -S`."""
    a = _rewards_args(argv)
    if a.part in ("math", "all"):
        _bench_math(a)
    if a.part in ("sandbox", "all"):
        _bench_sandbox(a)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    names = list(BENCHES) if argv[:1] == ["all"] else argv[:1]
    if not names or any(n not in BENCHES for n in names):
        sys.exit(f"usage: python bench.py NAME [options] | all; NAME one of {sorted(BENCHES)}")
    for name in names:
        print(f"\n## bench {name}")
        BENCHES[name](argv[1:])


if __name__ == "__main__":
    main()
