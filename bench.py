"""Every benchmark of the stack, one function each; each prints a table with ratios against a baseline measured
in the same run (these machines are noisy: absolute times from two runs are not comparable).

Run:
    python bench.py NAME [NAME ...]     # e.g. python bench.py engine
    python bench.py all
Where a CPU time cannot show a GPU-side gain, a benchmark counts the work (forwards, KV slots read) and projects
it with the roofline formula it states.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import data
import demo
import gppo
import kernels
import rollout
import sft
from model import Qwen3Config, build_model, save_pretrained

BENCHES: dict = {}  # name -> function(argv: list[str]) -> None


def bench(fn):
    """Register a benchmark under its function name (less a leading `bench_`)."""
    BENCHES[fn.__name__.removeprefix("bench_")] = fn
    return fn


# ------------------------------------------------------------------------------------------------ engine
# Qwen3-8B in bf16 on one H200: weights read per decode step, KV bytes per token, HBM bandwidth
W8B, KV8B, HBM = 15.14e9, 147_456, 4.8e12


def _h200_seconds(forwards: float, kv_read: float, launch: float, scale: int = 64) -> float:
    """Projected seconds of one rank's generation of one RL step from a 1/scale replay's counters:
    scale * forwards * (weights / HBM + launch) + scale^2 * kv_slots_read * KV bytes / HBM (lengths scale by
    `scale`, so KV reads by scale^2)."""
    return scale * forwards * (W8B / HBM + launch) + scale ** 2 * kv_read * KV8B / HBM


def _old_schedule(prompt_lens, lengths, n: int, check_every: int = 8) -> tuple[int, int]:
    """(decode forwards, KV slots read) of main's sampler before the engine, run one prompt (n rows) per call so
    that it fits: each call lasts as long as its longest row; finished rows leave only at the flag reads every
    `check_every` steps; every live row reads the call's shared length."""
    forwards = kv = 0
    for i, P in enumerate(prompt_lens):
        rows = lengths[i * n:(i + 1) * n]
        for t in range(1, max(rows)):  # token 0 comes from the prefill
            seen = t - t % check_every  # the step of the last flag read
            live = sum(L > seen for L in rows)
            forwards, kv = forwards + 1, kv + live * (P + t)
    return forwards, kv


def _unlimited(prompt_lens, lengths, n: int) -> tuple[int, int]:
    """The bound of an unlimited budget: every sequence live from the first step, each reading its own length."""
    kv = sum(P + t for i, P in enumerate(prompt_lens) for L in lengths[i * n:(i + 1) * n] for t in range(1, L))
    return max(lengths) - 1, kv


@bench
def bench_engine(argv: list[str]) -> None:
    """The recipe's RL draw for one rank at 1/64 scale: 32 prompts x 8, prompt lengths lognormal (median 400/64),
    response lengths forced lognormal (median 8192/64, sigma 0.94, cap 32768/64), a KV budget of 110 GB of
    Qwen3-8B KV at the same scale (110e9 / 147456 / 64 = 11,650 slots). The engine's counters, projected to an
    H200 (see _h200_seconds), against (a) main's old schedule (one prompt per call) and (b) the unlimited bound;
    then CPU tokens/s of the same draw, one call vs one call per prompt, on the demo's model shape."""
    import numpy as np
    p = argparse.ArgumentParser(prog="bench.py engine")
    p.add_argument("--scale", type=int, default=64, help="lengths and budget divided by this")
    p.add_argument("--seed", type=int, default=0, help="seeds the model and the data")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rng, n, s = np.random.default_rng(a.seed), 8, a.scale
    prompt_lens = np.maximum(1, np.round(rng.lognormal(np.log(400 / s), 0.5, 32))).astype(int).tolist()
    lengths = np.clip(np.round(rng.lognormal(np.log(8192 / s), 0.94, 32 * n)), 1, 32768 // s).astype(int).tolist()
    budget = int(110e9 / KV8B / s)
    cfg = Qwen3Config(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    model = build_model(cfg, seed=0).eval()
    prompts = [rng.integers(0, cfg.vocab_size, P).tolist() for P in prompt_lens]
    kw = dict(max_new_tokens=32768 // s, temperature=1.0)
    stats, t0 = rollout.EngineStats(), time.process_time()
    out = rollout.generate(model, prompts, n, max_kv_tokens=budget, stats=stats, stop_after=lambda k: lengths[k], **kw)
    t_new = time.process_time() - t0
    assert [len(x.tokens) for x in out] == lengths
    t0 = time.process_time()
    for i, pr in enumerate(prompts):  # the old caller's schedule: one prompt per call, its own KV budget
        rollout.generate(model, [pr], n, stop_after=lambda k, i=i: lengths[i * n + k], **kw)
    t_old = time.process_time() - t0
    tokens = sum(lengths)
    rows = {"(a) main before: one prompt per call": _old_schedule(prompt_lens, lengths, n),
            "this engine, rows read the longest length": (stats.forwards, stats.kv_read_padded),
            "this engine": (stats.forwards, stats.kv_read), "(b) unlimited budget bound": _unlimited(prompt_lens,
                                                                                                    lengths, n)}
    print(f"1/{s} of one rank's RL draw: 32 prompts x {n}, {tokens} tokens, KV budget {budget} slots; engine: "
          f"{stats.forwards / tokens:.3f} forwards/token, {stats.rows / stats.forwards:.1f} live rows/forward, "
          f"peak KV {stats.peak_kv} = {stats.peak_kv / budget:.2f} of the budget, {stats.preemptions} evictions, "
          f"{stats.prefill} prefill tokens")
    print("| schedule | decode forwards | KV slots read / token | H200 s, CUDA graphs | H200 s, eager (5 ms) |\n"
          "|---|---|---|---|---|")
    proj = {}
    for name, (f, kv) in rows.items():
        proj[name] = (_h200_seconds(f, kv, 0.0, s), _h200_seconds(f, kv, 5e-3, s))
        print(f"| {name} | {f} | {kv / tokens:.1f} | {proj[name][0]:.0f} | {proj[name][1]:.0f} |")
    new, bound = proj["this engine"][0], proj["(b) unlimited budget bound"][0]
    print(f"engine with graphs / unlimited bound: {new / bound:.2f}x (aim <= 1.3x); old schedule eager / engine "
          f"with graphs: {proj['(a) main before: one prompt per call'][1] / new:.1f}x (aim >= 5x)")
    print(f"CPU, demo shape, 1 thread: one call {tokens / t_new:.0f} tokens/s, one call per prompt "
          f"{tokens / t_old:.0f} tokens/s: {t_old / t_new:.2f}x")


@bench
def bench_engine_gpu(argv: list[str]) -> None:
    """CUDA: the engine on the Qwen3-0.6B shape in bf16, 128 sequences with forced lognormal lengths (mean ~2K),
    one call, with and without CUDA graphs (FlexAttention decode both times): tokens/s and the share of the
    bandwidth bound (weights read per decode forward + each row's own KV slots, at HBM bytes/s)."""
    import numpy as np
    p = argparse.ArgumentParser(prog="bench.py engine_gpu")
    p.add_argument("--sequences", type=int, default=128, help="sequences per measurement")
    a = p.parse_args(argv)
    cfg = qwen3_0_6b()
    model = build_model(cfg, "cuda", torch.bfloat16, seed=0).eval()
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(1500), 0.8, a.sequences)), 1, 8192).astype(int).tolist()
    prompts = [rng.integers(0, cfg.vocab_size, 128).tolist() for _ in lengths]
    print(f"Qwen3-0.6B shape, bf16, {a.sequences} sequences, {sum(lengths)} tokens (mean {np.mean(lengths):.0f}), "
          f"{torch.cuda.get_device_name()}\n| decode | tokens/s | bound tokens/s | share of bound | peak GiB |\n"
          "|---|---|---|---|---|")
    for name, graphs in (("flex + CUDA graphs", True), ("flex, eager", False)):
        torch.cuda.reset_peak_memory_stats()
        stats = rollout.EngineStats()
        run = lambda stop: rollout.generate(model, prompts, 1, 8192, temperature=1.0, stop_after=stop, flex=True,
                                            graphs=graphs, stats=stats)  # noqa: B023
        run(lambda k: 1 + k % 48)  # warm-up: short rows that leave one by one compile every row count
        stats.__init__()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(lambda k: lengths[k])  # (CUDA graphs are captured again in each call: part of the measured time)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        bound = stats.generated / ((stats.forwards * weights + stats.kv_read * kv_token) / HBM)
        print(f"| {name} | {stats.generated / dt:.0f} | {bound:.0f} | {stats.generated / dt / bound:.2f} | "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |")


# ------------------------------------------------------------------------------------------------ decode
def _decode_rates(runs: dict, batch: int, new: int, clock=time.process_time, repeats: int = 3) -> dict:
    """Decode tokens/s of each run(k) (= generate k tokens): best time(new) - best time(1) removes the prefill.
    The runs take turns round by round, so a shared machine's slow drift hits them alike. On CPU the clock is this
    process's CPU time (one thread): robust to other load."""
    for run in runs.values():
        run(2)  # warm-up
    best = defaultdict(lambda: float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            for k in (1, new):
                t0 = clock()
                run(k)
                best[name, k] = min(best[name, k], clock() - t0)
    return {name: batch * (new - 1) / max(best[name, new] - best[name, 1], 1e-9) for name in runs}


def _no_cache_greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    for _ in range(new):  # the baseline: a full forward over the whole sequence for every token
        ids = torch.cat([ids, model.lm_head(model(ids)[:, -1]).argmax(-1, keepdim=True)], 1)
    return ids


def _gemm_only(model, batch: int):
    """run(k): the matrix products of k decode steps alone (every Linear of the model on a (batch, in) input),
    nothing else. No decoder that computes the same fp32 products can beat its rate: it bounds every ratio."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in weights}

    def run(k: int) -> None:
        for _ in range(k):
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)
    return run


@bench
def bench_decode(argv: list[str], prompt_len: int = 32) -> None:
    """Greedy decode tokens/s on CPU: ours vs transformers' generate vs a no-cache loop, same weights, plus the
    rate of the matrix products alone (the ceiling of any ratio)."""
    torch.set_num_threads(1)  # one thread: stable ratios on a shared machine
    try:
        import transformers
        transformers.logging.set_verbosity_error()
    except ImportError:
        transformers = None
    # the demo's shape (the model train.sh samples from) and a 4x larger one, where the products weigh more;
    # 64 new tokens weighs the fixed per-step costs, 256 is closer to RL rollouts (the quadratic no-cache loop is
    # left out there); the real vocabulary makes the LM head and sampling dominate
    shapes = {"demo shape": dict(hidden_size=128, intermediate_size=384, head_dim=32),
              "hidden 256": dict(hidden_size=256, intermediate_size=768, head_dim=64)}
    for name, vocab, new in (("demo shape", 2048, 64), ("demo shape", 2048, 256), ("hidden 256", 2048, 64),
                             ("hidden 256", 2048, 256), ("hidden 256", 151936, 16)):
        cfg = Qwen3Config(vocab_size=vocab, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          tie_word_embeddings=True, **shapes[name])
        model = build_model(cfg, seed=0).eval()
        hf = None
        if transformers is not None:
            hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**cfg.to_dict())).eval()
            hf.load_state_dict(model.state_dict())
        print(f"\n{name} (hidden {cfg.hidden_size}, 4 layers), vocab {vocab}, prompt {prompt_len}, {new} new tokens, "
              f"greedy, CPU time, {torch.get_num_threads()} thread(s)\n| batch | ours tok/s | transformers tok/s | "
              "ours / transformers | GEMM-only tok/s | GEMM-only / transformers | ours / no-cache |\n"
              "|---|---|---|---|---|---|---|")
        for batch in (1, 16, 64):
            ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                r = _decode_rates(_bench_runs(model, hf, ids, new), batch, new)
            print(_bench_row(batch, r))


def _bench_row(batch: int, r: dict) -> str:
    """One markdown row of the decode table; a run that was left out (no transformers, long no-cache) shows "-"."""
    rate = lambda a: f"{r[a]:.0f}" if a in r else "-"  # noqa: E731
    ratio = lambda a, b: f"{r[a] / r[b]:.2f}x" if a in r and b in r else "-"  # noqa: E731
    return (f"| {batch} | {rate('ours')} | {rate('hf')} | {ratio('ours', 'hf')} | {rate('gemm')} | "
            f"{ratio('gemm', 'hf')} | {ratio('ours', 'no-cache')} |")


def _bench_runs(model, hf, ids: torch.Tensor, new: int) -> dict:
    runs = {"ours": lambda k: rollout.generate(model, ids.tolist(), 1, k, temperature=0),
            "gemm": _gemm_only(model, len(ids))}
    if hf is not None:
        runs["hf"] = lambda k: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                           min_new_tokens=k, do_sample=False, pad_token_id=0)
    if new <= 64:
        runs["no-cache"] = lambda k: _no_cache_greedy(model, ids, k)
    return runs


def qwen3_0_6b() -> Qwen3Config:
    """The Qwen3-0.6B shape (its published config.json numbers)."""
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       tie_word_embeddings=True)


@bench
def bench_decode_gpu(argv: list[str], device: str = "cuda", batches=(1, 256), prompt_len: int = 1024,
                     new: int = 256, bandwidth: float = HBM) -> None:
    """Random Qwen3-0.6B shape, bf16: decode tokens/s at batch 1 and 256 vs the memory-bandwidth bound
    (bytes read per step = weights + the KV prefix of every row, at `bandwidth` bytes/s: H200 = 4.8 TB/s)."""
    cfg = qwen3_0_6b()
    model = build_model(cfg, device, torch.bfloat16, seed=0).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2  # K and V bytes, bf16
    cuda = device.startswith("cuda")
    print(f"Qwen3-0.6B shape, bf16, prompt {prompt_len}, {new} new tokens, greedy, "
          f"{torch.cuda.get_device_name() if cuda else device}\n"
          "| batch | tokens/s | bound tokens/s | share of bound | peak GiB |\n|---|---|---|---|---|")
    for batch in batches:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len)).tolist()
        run = lambda k, prompts=prompts: rollout.generate(model, prompts, 1, k, temperature=0)  # returns on the host
        rate = _decode_rates({"ours": run}, batch, new, time.perf_counter, repeats=2)["ours"]
        bound = batch * bandwidth / (weights + batch * kv_token * (prompt_len + new / 2))
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"| {batch} | {rate:.0f} | {bound:.0f} | {rate / bound:.2f} | {peak:.1f} |")


# ------------------------------------------------------------------------------------------------ model
@bench
def bench_model(argv: list[str]) -> None:
    """Forward+backward tokens/s of this model vs transformers' Qwen3 on the same config, weights and inputs."""
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM
    p = argparse.ArgumentParser(prog="bench.py model")
    p.add_argument("--config", default=None, help="config.json to use (default: a tiny 4-layer Qwen3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument("--batch", type=int, default=4, help="rows per forward")
    p.add_argument("--seq", type=int, default=256, help="tokens per row")
    p.add_argument("--iters", type=int, default=10, help="timed steps per model and mode")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Qwen3Config.from_json(args.config) if args.config else Qwen3Config(
        vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
    dtype = getattr(torch, args.dtype)
    ours = build_model(cfg, args.device, dtype, seed=0)
    theirs = Qwen3ForCausalLM(HFConfig(**cfg.to_dict(), attn_implementation="sdpa")).to(args.device, dtype)
    theirs.load_state_dict(ours.state_dict(), strict=False)  # missing lm_head when tied: tied in HF too
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    with torch.no_grad():
        a, b = ours.lm_head(ours(ids)).float(), theirs(ids).logits.float()
    print(f"config {cfg}\nlogits max abs diff {(a - b).abs().max().item():.3e}, max |logit| {b.abs().max().item():.2f}")
    steps = {"ours": lambda: ours.lm_head(ours(ids)), "transformers": lambda: theirs(ids).logits}
    for mode in ("forward", "forward+backward"):
        times = {k: [] for k in steps}
        for _ in range(args.iters + 2):  # interleaved so that load from other processes hits both alike
            for name, fn in steps.items():
                times[name].append(_time_step(fn, ids, mode == "forward", args.device))
        tps = {k: ids.numel() / sorted(v[2:])[len(v[2:]) // 2] for k, v in times.items()}  # median, no warm-up
        print(f"{mode}: ours {tps['ours']:.0f} tok/s | transformers {tps['transformers']:.0f} tok/s | "
              f"ratio {tps['ours'] / tps['transformers']:.2f}x")


def _time_step(fn, ids: torch.Tensor, forward_only: bool, device: str) -> float:
    t0 = time.perf_counter()
    with torch.set_grad_enabled(not forward_only):
        logits = fn()
        if not forward_only:
            torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ kernels
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def _fwd_bwd(backend: str, hidden, weight, targets) -> torch.Tensor:
    logp = kernels.token_logprobs(hidden, weight, targets, backend=backend)
    logp.sum().backward()
    return logp.detach()


def _bench_case(backend: str, n: int, h: int, v: int) -> dict:
    """One forward+backward in this (fresh) process: peak extra RSS and wall time."""
    _fwd_bwd(backend, torch.randn(64, h, requires_grad=True), torch.randn(512, h, requires_grad=True),
             torch.randint(0, 512, (64,)))  # warm up threads and allocator on a tiny case
    torch.manual_seed(0)
    hidden, weight = torch.randn(n, h, requires_grad=True), (torch.randn(v, h) * 0.02).requires_grad_()
    targets = torch.randint(0, v, (n,))
    base = _rss_bytes()
    # cap the address space so that a case too big for the machine fails here instead of waking the OOM killer
    limit = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + _mem_available()
    resource.setrlimit(resource.RLIMIT_AS, (limit - 2**30, resource.RLIM_INFINITY))
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    try:
        logp = _fwd_bwd(backend, hidden, weight, targets)
    except (RuntimeError, MemoryError) as err:
        return {"error": str(err).splitlines()[0][:200]}
    wall, ru = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = ru.ru_utime - ru0.ru_utime, ru.ru_stime - ru0.ru_stime  # sys: mostly page faults of fresh memory
    return {"peak": ru.ru_maxrss * 1024 - base, "time": wall, "cpu": user + sys_, "user": user,
            "logp_mean": logp.mean().item()}


def _run_case(backend: str, n: int, h: int, v: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "kernels", "--case", backend, str(n), str(h), str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if out.returncode == 0 and lines else {"error": out.stderr.strip()[-300:]}


@bench
def bench_kernels(argv: list[str], h=1024, v=151936) -> None:
    """CPU fp32, fused vs naive log-probs: memory and time. Every case runs in a fresh subprocess; peak extra =
    ru_maxrss after forward+backward minus the RSS just before it (inputs allocated, warmed up on a tiny case).
    Buffers above 32 MB are mmap'ed by glibc and unmapped on free, so RSS follows the live tensors. A naive case
    that MemAvailable cannot hold is extrapolated linearly in N from the two largest measured ones (labelled).
    Time: wall, process CPU seconds (fairer when other jobs share the cores) and user CPU seconds (without page
    faults: what a machine with cheap faults, e.g. transparent huge pages, would see)."""
    p = argparse.ArgumentParser(prog="bench.py kernels")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="token counts")
    p.add_argument("--case", nargs=4, help=argparse.SUPPRESS)  # internal: BACKEND N H V, in a fresh process
    a = p.parse_args(argv)
    if a.case:
        backend, *dims = a.case
        return print(json.dumps(_bench_case(backend, *map(int, dims))))
    sizes = a.sizes
    print(f"fp32 CPU, H={h}, V={v}, {torch.get_num_threads()} threads; forward + backward of logp.sum(). peak = extra "
          "RSS over the inputs, fresh process per case; cpu = process CPU seconds (robust on a shared machine); user = "
          "cpu without the kernel's page-fault time (the FLOP-bound ratio: 4 logits GEMMs vs 3, so about 4/3)")
    print("    N | naive peak MB | fused peak MB | mem ratio | naive wall/cpu s | fused wall/cpu s | wall ratio | "
          "cpu ratio | user ratio | |dlogp mean|")
    measured = []  # (n, naive result) for extrapolation
    for n in sizes:
        fused = _run_case("torch", n, h, v)
        need = 3.3 * n * v * 4 + 2 * v * h * 4  # logits, log_softmax output and its gradient live together
        naive = _run_case("naive", n, h, v) if need < _mem_available() - 2**31 else {"error": "not enough memory"}
        label = ""
        if "error" in naive and len(measured) >= 2:  # linear in N: extrapolate, clearly labelled
            (n0, r0), (n1, r1) = measured[-2:]
            label = f"  <- naive EXTRAPOLATED from N={n0},{n1} ({naive['error']})"
            naive = {k: r1[k] + (r1[k] - r0[k]) * (n - n1) / (n1 - n0) for k in ("peak", "time", "cpu", "user")}
            naive["logp_mean"] = float("nan")
        elif "error" not in naive:
            measured.append((n, naive))
        if "error" in fused or "error" in naive:
            print(f"{n:5d} | error: fused {fused.get('error')} naive {naive.get('error')}")
            continue
        print(f"{n:5d} | {naive['peak'] / 2**20:13.0f} | {fused['peak'] / 2**20:13.0f} | "
              f"{fused['peak'] / naive['peak']:9.3f} | {naive['time']:7.1f} /{naive['cpu']:7.1f} | "
              f"{fused['time']:7.1f} /{fused['cpu']:7.1f} | {fused['time'] / naive['time']:10.2f} | "
              f"{fused['cpu'] / naive['cpu']:9.2f} | {fused['user'] / naive['user']:10.2f} | "
              f"{abs(fused['logp_mean'] - naive['logp_mean']):.1e}{label}")


def _cuda_time(fn, iters=5) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _gpu_case(backend: str, hidden, weight, targets) -> tuple[float, float, int]:
    """(forward s, forward+backward s, peak extra bytes) of logp.sum() + 0.1 * entropy.sum()."""
    def step():
        hidden.grad = weight.grad = None
        logp, ent = kernels.token_logprobs(hidden, weight, targets, return_entropy=True, backend=backend)
        (logp.sum() + 0.1 * ent.sum()).backward()

    with torch.no_grad():
        fwd = lambda: kernels.token_logprobs(hidden, weight, targets, return_entropy=True, backend=backend)
        t_fwd = _cuda_time(fwd)
    t_step = _cuda_time(step)
    hidden.grad = weight.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return t_fwd, t_step, torch.cuda.max_memory_allocated() - base


def _gpu_check(hidden, weight, targets) -> None:
    """Triton vs naive at the benchmark shape, temperature 0.7: relative L2 errors of both outputs and grads."""
    outs = []
    for backend in ("triton", "naive"):
        h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        logp, ent = kernels.token_logprobs(h, w, targets, 0.7, return_entropy=True, backend=backend)
        (logp.sum() + 0.1 * ent.sum()).backward()
        outs.append([t.detach().float() for t in (logp, ent, h.grad, w.grad)])
    errs = [((a - b).norm() / b.norm()).item() for a, b in zip(*outs)]
    print("triton vs naive, relative L2 error: logp {:.1e} entropy {:.1e} dhidden {:.1e} dweight {:.1e}".format(*errs))


@bench
def bench_kernels_gpu(argv: list[str], n=8192, h=4096, v=151936, peak_tflops=989.0) -> None:
    """CUDA bf16: the Triton kernels' TFLOP/s and memory against naive, and their error at temperature 0.7."""
    torch.manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(v, h, device="cuda") * 0.02).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda")
    flops = 2 * n * v * h  # one (N, H) x (H, V) GEMM; fwd+bwd counts 3 (the backward's recompute is not counted)
    print(f"bf16 {torch.cuda.get_device_name()}, N={n}, H={h}, V={v}; TFLOP/s vs {peak_tflops:.0f} peak")
    _gpu_check(hidden, weight, targets)
    for backend in ("triton", "naive"):
        t_fwd, t_step, peak = _gpu_case(backend, hidden, weight, targets)
        print(f"{backend:6s} | fwd {t_fwd * 1e3:7.2f} ms {flops / t_fwd / 1e12:6.1f} TFLOP/s "
              f"({flops / t_fwd / 1e10 / peak_tflops:4.1f}%) | fwd+bwd {t_step * 1e3:7.2f} ms "
              f"{3 * flops / t_step / 1e12:6.1f} TFLOP/s ({3 * flops / t_step / 1e10 / peak_tflops:4.1f}%) | "
              f"peak extra {peak / 2**30:6.2f} GiB")


# ------------------------------------------------------------------------------------------------ trainers
@bench
def bench_sft(argv: list[str]) -> None:
    """Training tokens/s of our stack vs transformers' Qwen3 + a plain AdamW loop on the same packed demo rows
    (CPU, one thread, the demo config), and the packing efficiency of the demo SFT set."""
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM
    torch.set_num_threads(1)  # shared 2-core machines: threads spinning against other jobs make timings noise
    d = sft.init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        demo.write_demo(tmp, n_rl=1, n_eval=1)
        tok, cfg = data.load_tokenizer(tmp), Qwen3Config.from_json(Path(tmp) / "config.json")
        packed = sft.load_rows([str(Path(tmp) / "sft.jsonl")], tok, cfg.max_position_embeddings,
                               Path(tmp) / "tokens")
        rows, stats = packed.batch(range(len(packed))), packed.stats
    T = cfg.max_position_embeddings
    print(f"packing: {stats['docs']} demo SFT examples into {stats['rows']} rows of {T} tokens: "
          f"{100 * (1 - stats['pad_fraction']):.2f}% non-padding")
    ours = sft.shard_model(build_model(cfg, seed=0), d)
    theirs = Qwen3ForCausalLM(HFConfig(**cfg.to_dict(), attn_implementation="sdpa"))
    theirs.load_state_dict(ours.state_dict(), strict=False)  # lm_head is tied on both sides
    opt_ours = sft.build_optimizer(ours, 1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step_theirs(b: dict) -> float:  # HF shifts labels itself (labels[t + 1] = our targets[t])
        labels = torch.cat([torch.full_like(b["targets"][:, :1], kernels.IGNORE_INDEX), b["targets"][:, :-1]], 1)
        same_doc = b["doc_ids"][:, :, None] == b["doc_ids"][:, None, :]  # the same packed-document mask as ours
        mask = (torch.ones(T, T, dtype=torch.bool).tril() & same_doc)[:, None]  # (B, 1, T, T)
        loss = theirs(b["input_ids"], position_ids=b["position_ids"], attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss.item()

    n = 8  # rows per step, one micro-batch on both sides
    steps = {"ours": lambda b: sft.train_step(ours, opt_ours, b, n, 1e-4, 1.0)["loss"], "transformers": step_theirs}
    times, losses = {k: [] for k in steps}, {k: [] for k in steps}
    for it in range(10):  # interleaved, so load from other processes hits both alike
        batch = {k: v[it * n:(it + 1) * n] for k, v in rows.items()}
        for name, fn in steps.items():
            t0 = time.perf_counter()
            losses[name].append(fn(batch))
            times[name].append(time.perf_counter() - t0)
    tps = {k: n * T / sorted(v[2:])[len(v[2:]) // 2] for k, v in times.items()}  # median after 2 warm-up steps
    print("loss, steps 1-3: ours " + ", ".join(f"{x:.6f}" for x in losses["ours"][:3]) +
          " | transformers " + ", ".join(f"{x:.6f}" for x in losses["transformers"][:3]))
    print(f"training (fwd+bwd+clip+AdamW, {n} x {T} tokens, 1 thread): ours {tps['ours']:.0f} tok/s | "
          f"transformers {tps['transformers']:.0f} tok/s | ratio {tps['ours'] / tps['transformers']:.2f}x")


@bench
def bench_gppo(argv: list[str]) -> None:
    """A few steps of the demo's tiny Qwen3 on a one-token task ("answer 7": learnable from a random init, so every
    stage runs): the time per stage and the rollout share (generate + reward). Step 1 (reward helper start-up,
    first calls) is left out of the totals. Responses are one token, so the rollout share is a lower bound."""
    torch.set_num_threads(1)  # stable numbers on a shared CPU (two threads fighting for a core are much slower)
    steps, tmp = 6, tempfile.TemporaryDirectory(prefix="gppo-bench-")
    d = Path(tmp.name)
    demo.write_demo(d / "demo", n_sft=2, n_rl=2, n_eval=2)
    cfg = Qwen3Config.from_json(d / "demo" / "config.json")
    save_pretrained(build_model(cfg, "cpu", torch.float32, seed=0), d / "model")
    data.load_tokenizer(d / "demo").save(d / "model")
    (d / "seven.jsonl").write_text("".join(json.dumps({"problem": f"{i}: answer 7", "answer": "7"}) + "\n"
                                           for i in range(256)))
    gppo.train(gppo.parse_args(["--model", str(d / "model"), "--data", str(d / "seven.jsonl"), "--out", str(d / "run"),
                      "--steps", str(steps), "--prompts-per-step", "32", "--n", "8", "--mini-batch-prompts", "8",
                      "--lr", "4e-3", "--warmup-steps", "1", "--no-thinking", "--max-response-tokens", "1",
                      "--reward-workers", "2", "--save-every", "1000", "--no-export"]))
    rows = [json.loads(line) for line in open(d / "run" / "metrics.jsonl")][1:]
    tmp.cleanup()
    tot = {k: sum(r.get(k, 0.0) for r in rows) for k in ("t_generate", "t_reward", "t_old_logp", "t_update")}
    step_t = sum(r["t_step"] for r in rows)
    print(f"gppo bench: {cfg.num_hidden_layers} layers x {cfg.hidden_size}, 64 prompts x 8 samples drawn per step, "
          f"steps 2-{steps}, {torch.get_num_threads()} thread(s)")
    print(" | ".join(f"{k[2:]} {v / len(rows):.3f}s ({v / step_t:.0%})" for k, v in tot.items())
          + f" | step {step_t / len(rows):.3f}s | rollout share {(tot['t_generate'] + tot['t_reward']) / step_t:.0%}")


# ------------------------------------------------------------------------------------------------ rewards

# Recipe-scale generation for the reward arithmetic: Qwen3-8B bf16 weights and KV bytes per token, H200 HBM
_GEN = {"weights": 16.4e9, "kv_per_token": 36 * 8 * 128 * 2 * 2, "hbm": 4.8e12, "gpus": 8, "responses": 1024}


def _rewards_args(argv: list[str]):
    import argparse
    import os
    p = argparse.ArgumentParser(prog="bench.py rewards")
    p.add_argument("--data", required=True, help="shared data folder holding math/math500.jsonl and code/*.jsonl")
    p.add_argument("--part", choices=("math", "verdicts", "sandbox", "all"), default="all", help="which part")
    p.add_argument("--lc-tests", type=int, default=8, help="LeetCode asserts per problem (verdicts part)")
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
    """Math-Verify checks per second on pairs of distinct MATH-500 answers and on whole reference solutions
    (always through a helper: the integer shortcut is not counted), and what grading 1,024 responses costs
    against generating them."""
    import json
    import os
    import random
    import time

    import rewards
    recs = [json.loads(x) for x in open(os.path.join(a.data, "math", "math500.jsonl"))]
    answers, rng = sorted({str(r["answer"]) for r in recs}), random.Random(0)
    pairs = [tuple(rng.sample(answers, 2)) for _ in range(a.pairs)]
    solutions = [(r["solution"], str(r["answer"])) for r in rng.sample(recs, min(a.pairs, len(recs)))]
    _timed_pool(lambda _: rewards._ask("1", "1", 120.0), range(a.workers), a.workers)  # start-up is not check time

    def helper_cpu() -> float:  # the helpers are never reaped, so read their CPU time from /proc
        stat = [open(f"/proc/{h.proc.pid}/stat").read().rsplit(")", 1)[1].split() for h in rewards._IDLE]
        return sum(int(s[11]) + int(s[12]) for s in stat) / os.sysconf("SC_CLK_TCK")
    per_core = []
    for name, jobs in (("pairs of distinct MATH-500 answers", pairs), ("MATH-500 reference solutions (whole "
                       "texts, ~600 characters) against their answers", solutions)):
        c0 = helper_cpu()
        got, wall, _ = _timed_pool(lambda p: rewards._ask(p[0], p[1], 5.0), jobs, a.workers)
        rate, per_core = len(jobs) / wall, per_core + [len(jobs) / (helper_cpu() - c0)]
        print(f"math: {len(jobs)} {name}, {a.workers} threads: {rate:.1f} checks/s wall, {per_core[-1]:.1f} "
              f"checks per CPU second; called equal: {sum(got)}")
    per_core = min(per_core)
    ints = sum(bool(rewards._INT.fullmatch(x)) for x in answers) / len(answers)
    print(f"  integer golds (decided without a helper): {ints:.0%} of MATH-500's answers")
    demo = [(f"<think>\n1 + 2 = 3, carry 0\n</think>\\boxed{{{k % 97 + (k % 3 == 0)}}}", {"kind": "math",
             "answer": str(k % 97)}) for k in range(512)]  # the demo's form: 64 prompts x 8, integer answers
    t0 = time.perf_counter()
    rewards.reward_many(demo, workers=a.workers)
    t_demo = time.perf_counter() - t0
    print(f"  demo RL step (512 responses '</think>\\boxed{{n}}', integer golds): graded in {t_demo:.3f} s (every "
          f"one through a helper instead: {512 / per_core / a.workers:.1f} s); compare the step's generate time, "
          "bench.py gppo")
    g, n = _GEN, _GEN["responses"]
    per_gpu, L = n // g["gpus"], a.mean_tokens
    t_gen = (L * g["weights"] + per_gpu * g["kv_per_token"] * L * L / 2) / g["hbm"]
    for cores in (os.cpu_count(), a.node_cores):
        t_grade = n / (per_core * cores)
        print(f"  grading {n} responses on {cores} cores at the slower rate: {n} / ({per_core:.1f} x {cores}) = "
              f"{t_grade:.1f} s = {t_grade / t_gen:.1%} of generating them")
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
    """Per-test cost of the sandbox against a bare `python -I -S file`: TACO reference solutions, then a trivial
    program (the sandbox's fixed cost laid bare)."""
    import json
    import os

    import sandbox
    probs = [json.loads(x) for x in open(os.path.join(a.data, "code", "taco_stdin.jsonl"))]
    taco = [(p["solution"], [p["tests"][j % len(p["tests"])] for j in range(a.tests)])
            for p in (probs[i % len(probs)] for i in range(a.programs))]
    trivial = [("print(sum(map(int, input().split())))", [{"input": "1 2\n", "output": "3"}] * a.tests)] * a.programs
    print(sandbox.sandbox_info(), f"| workers {a.workers} | cpus {os.cpu_count()} | load {os.getloadavg()[0]:.1f}")
    print("| programs | run | ms wall / test | ms CPU / test |\n|---|---|---|---|")
    for label, jobs in (("TACO solutions", taco), ("trivial", trivial)):
        rows = {}
        for name in ("bare", "sandbox", "bare again"):  # the baseline twice: machine drift shows as their difference
            fn = (lambda j: sandbox.run_tests(j[0], j[1], max_tests=0)) if name == "sandbox" else (
                lambda j: _bare(j[0], j[1], ["-I", "-S"]))
            res, wall, cpu = _timed_pool(fn, jobs, a.workers)
            rows[name] = (wall / len(jobs) / a.tests, cpu / len(jobs) / a.tests)
            bad = [r.status for rs in res for r in rs or [] if not r.passed] if name == "sandbox" else []
            print(f"| {label} | {name} | {rows[name][0] * 1e3:.1f} | {rows[name][1] * 1e3:.1f} |"
                  + (f" failed: {bad[:3]}" if bad else ""))
        base = [(x + y) / 2 for x, y in zip(rows["bare"], rows["bare again"])]
        (w, c) = rows["sandbox"]
        print(f"{label}: sandbox / bare python -I -S: wall {w / base[0]:.2f}x, CPU {c / base[1]:.2f}x (aim < 1.3x)")


def _bench_verdicts(a) -> None:
    """Split function tests (results as data, verdict outside) against the in-sandbox assert path, per test, on
    the LeetCode reference solutions; and the share of function tests left on the in-sandbox path per data set."""
    import gzip
    import json
    import os

    import rewards
    import sandbox
    folder = os.path.join(a.data, "code")
    lc = [json.loads(x) for x in open(os.path.join(folder, "leetcode_function.jsonl"))]
    he = [json.loads(x) for x in gzip.open(os.path.join(folder, "humaneval.jsonl.gz"))]
    for name, probs in (("LeetCode", lc), ("HumanEval", he)):
        tests = [t for p in probs for t in rewards.to_tests(p)]
        print(f"{name}: {len(tests)} function tests, {sum('calls' not in t for t in tests)} on the in-sandbox "
              f"path ({sum('calls' not in t for t in tests) / len(tests):.1%})")
    jobs = [(p["solution"], rewards.to_tests(p)[::max(1, 100 // a.lc_tests)][:a.lc_tests]) for p in lc]
    old = [(c, [{"functional": t["functional"], "prefix": t["prefix"]} for t in ts]) for c, ts in jobs]
    rows, n = {}, sum(len(ts) for _, ts in jobs)
    for name, js in (("in-sandbox asserts", old), ("split calls", jobs), ("in-sandbox again", old)):
        res, wall, cpu = _timed_pool(lambda j: sandbox.run_tests(j[0], j[1], max_tests=0), js, a.workers)
        rows[name] = (wall / n, cpu / n, sum(r.passed for rs in res for r in rs))
    print("| path | ms wall / test | ms CPU / test | passed |\n|---|---|---|---|")
    for name, (w, c, ok) in rows.items():
        print(f"| {name} | {w * 1e3:.1f} | {c * 1e3:.1f} | {ok}/{n} |")
    base = [(x + y) / 2 for x, y in zip(rows["in-sandbox asserts"][:2], rows["in-sandbox again"][:2])]
    print(f"split / in-sandbox per test: wall {rows['split calls'][0] / base[0]:.2f}x, "
          f"CPU {rows['split calls'][1] / base[1]:.2f}x (aim <= 1.5x)")


@bench
def bench_rewards(argv: list[str]) -> None:
    """Grading and sandbox costs (--data: the shared data folder, required): Math-Verify checks/s with the RL-step
    arithmetic; split function tests against in-sandbox asserts; the sandbox's per-test overhead against bare
    `python -I -S`."""
    a = _rewards_args(argv)
    if a.part in ("math", "all"):
        _bench_math(a)
    if a.part in ("verdicts", "all"):
        _bench_verdicts(a)
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
