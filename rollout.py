"""KV-cached batched sampling for Qwen3, plus chat and evaluation (avg@n, pass@n) from the command line.

What: `generate` samples n completions per prompt from model.py's Qwen3. The log-prob it returns for each token is
log_softmax(logits / T) from the same model.py forward the trainer uses, so sampler and trainer agree to float
precision: there is no separate inference engine and no sampler/trainer mismatch to correct.

Design:
- One preallocated KV cache per call. Prompts are prefilled once, right-padded and ragged (the cache lengths are
  then set to the true lengths), in time chunks that bound activation memory; `cache.select` then repeats each
  prompt's rows n times, so the n samples of a prompt share its prefix.
- Batched decoding. The host reads the "finished" flags only every CHECK_EVERY steps; it then drops finished rows
  from the batch (`cache.select` of the live rows) once at least 1/8 of them are done, so cost follows live rows.
- Sampling: temperature, then top-k, then top-p (the smallest set of best tokens whose mass reaches top_p), drawn
  with an explicit torch.Generator seeded by `seed` (same inputs + seed = same samples; a sample also depends on
  the rest of its batch). Log-probs are under the tempered *unfiltered* distribution, which is what the trainer
  recomputes; greedy (temperature 0) returns log-probs at temperature 1.
- Per decode step: one model call, the LM head into a reused fp32 (B, V) buffer, the draw (exponential race), an
  in-place log-sum-exp for the log-probs; no device-to-host read between the flag reads (see KVCache.end).
- FSDP2: parameters are all-gathered once per `generate` call (`unshard`) and resharded afterwards, not per step,
  so gppo.py (under torchrun) samples from the policy it trains; ranks may decode different numbers of steps.

Run:
    python rollout.py --model DIR --prompt "What is 17 * 23?"
    python rollout.py --model DIR --eval ../shared/data/math/aime2024.jsonl --n 8 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 32768 --out results.jsonl [--limit 5] [--resume: after a crash, keep what --out holds]
    python rollout.py --bench        # CPU: decode tokens/s vs transformers' generate and a no-cache loop
    python rollout.py --bench-gpu    # CUDA: Qwen3-0.6B shape in bf16, batch 1 and 256, vs the bandwidth bound
    python -m pytest -q tests/test_rollout.py      # includes a 2-rank torchrun (gloo) FSDP2 check
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

import data
import rewards
from model import KVCache, Qwen3Config, _checkpoint_files, build_model, load_pretrained

CHECK_EVERY = 8  # decode steps between host reads of the finished flags (a device sync each)
PREFILL_TOKENS = 32768  # prompt tokens per prefill forward: bounds activation memory for long prompts
KV_BUDGET_BYTES = 16 * 2**30  # evaluate's default batch: as many tasks as fit a KV cache of this size


@dataclass
class Sample:
    prompt_index: int
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


def _check_inputs(cfg: Qwen3Config, prompts: list[list[int]], n: int, max_new_tokens: int) -> None:
    if not prompts:
        raise ValueError("generate: the prompt list is empty")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"generate: n ({n}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if len(p) + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} that "
                             f"exceeds the model's context (max_position_embeddings {cfg.max_position_embeddings})")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"generate: prompt {i} has a token id outside [0, {cfg.vocab_size})")


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """FSDP2: all-gather every fully_shard'ed module's parameters for the block, reshard after; else a no-op.

    On exit the default fully_shard policy is restored: the root keeps its parameters after forward, others reshard.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")  # a sharded model implies it was imported (slow import)
    mods = [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)] if fsdp else []
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)  # keep them gathered across the decode steps
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


def _prefill(model, prompts: list[list[int]], cache: KVCache) -> torch.Tensor:
    """Write all prompts into `cache` (ragged, right-padded); return each prompt's last hidden state (P, H)."""
    P, T, dev = len(prompts), max(map(len, prompts)), cache.lengths.device
    ids = torch.zeros(P, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    ids, lens, rows = ids.to(dev), torch.tensor([len(p) for p in prompts], device=dev), torch.arange(P, device=dev)
    chunk, last = max(1, PREFILL_TOKENS // P), None
    for t0 in range(0, T, chunk):
        h = model(ids[:, t0:t0 + chunk], cache=cache)  # (P, c, H); pad slots lie ahead of every later query
        j = lens - 1 - t0  # (P,) index of each row's last prompt token inside this chunk
        here = h[rows, j.clamp(0, h.shape[1] - 1)]  # (P, H)
        last = here if last is None else torch.where(((j >= 0) & (j < h.shape[1]))[:, None], here, last)
    cache.lengths = lens  # stale pad slots get overwritten by the first decode writes
    return last


def _logits(model, h: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """(B, H) -> fp32 logits (B, V) in a reused buffer: a fresh (B, V) tensor per step costs page faults on CPU."""
    w, out = model.lm_head.weight, buf[:h.shape[0]]
    if h.dtype == w.dtype == out.dtype:
        return torch.mm(h, w.t(), out=out)
    return out.copy_(model.lm_head(h))  # bf16 compute, fp32 log-probs


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator,
            noise: torch.Tensor):
    """logits (B, V) fp32 (overwritten) -> tokens (B,), log-probs (B,) under softmax(logits / T) before filtering."""
    if temperature <= 0:  # greedy: the best logit is both the token and the log-sum-exp shift
        top, tok = logits.max(-1, keepdim=True)  # (B, 1) each
        return tok.squeeze(1), logits.sub_(top).exp_().sum(-1).log_().neg_()
    elif 0 < top_k < logits.shape[-1] or top_p < 1:
        logits.div_(temperature)
        if 0 < top_k < logits.shape[-1]:
            vals, idx = logits.topk(top_k, -1)  # (B, k), sorted best first
        else:
            vals, idx = logits.sort(-1, descending=True)  # (B, V)
        probs = vals.softmax(-1)
        if top_p < 1:  # drop a token when the better ones already hold top_p of the mass
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
        j = (probs / torch.empty_like(probs).exponential_(generator=gen)).argmax(-1)  # exponential race: p_i / E_i
        tok = idx.gather(1, j[:, None]).squeeze(1)
    else:  # plain sampling, the same race in log space without a new (B, V) tensor: argmax(logits / T - log E)
        e = noise[:logits.shape[0]].exponential_(generator=gen).log_()
        tok = torch.sub(logits.div_(temperature), e, out=e).argmax(-1)
    picked = logits.gather(1, tok[:, None]).squeeze(1)
    top = logits.amax(-1, keepdim=True)  # log-sum-exp in place: logits is scratch from here on
    return tok, picked - logits.sub_(top).exp_().sum(-1).log_() - top.squeeze(1)


def _decode(model, cache: KVCache, h: torch.Tensor, max_new: int, sample, stops, on_token):
    """Batched decoding from last hidden states h (N, H) -> tokens (N, max_new) (-1 = never written), log-probs."""
    N, dev = h.shape[0], h.device
    out_tok = torch.full((N, max_new), -1, dtype=torch.long, device=dev)
    out_lp = torch.zeros(N, max_new, device=dev)
    live = torch.arange(N, device=dev)  # (B,) sample index of each row still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    buf = torch.empty(N, model.config.vocab_size, device=dev)  # (N, V) fp32 logits, reused every step
    every = 1 if on_token else CHECK_EVERY
    for t in range(max_new):
        tok, lp = sample(_logits(model, h, buf))  # (B,), (B,)
        out_tok[live, t], out_lp[live, t] = tok, lp
        if on_token:
            on_token(live, tok)
        if t == max_new - 1:
            break
        if stops is not None:
            done |= torch.isin(tok, stops)
            if (t + 1) % every == 0:
                fin = done.cpu()
                if fin.all():
                    break
                if 8 * int(fin.sum()) >= len(fin):  # compact: finished rows leave the batch
                    keep = (~fin).nonzero().squeeze(1).to(dev)
                    cache, live, done, tok = cache.select(keep), live[keep], done[keep], tok[keep]
        h = model(tok[:, None], cache=cache)[:, -1]  # (B, H)
    return out_tok, out_lp


def _to_samples(out_tok: torch.Tensor, out_lp: torch.Tensor, n: int, stops) -> list[Sample]:
    is_stop = torch.isin(out_tok, stops) if stops is not None else torch.zeros_like(out_tok, dtype=torch.bool)
    has, first = is_stop.any(1).tolist(), is_stop.byte().argmax(1).tolist()  # first stop of each row
    toks, lps, out = out_tok.tolist(), out_lp.tolist(), []
    for i, (t, lp) in enumerate(zip(toks, lps)):
        end = first[i] + 1 if has[i] else len(t)  # later tokens of a stopped row are discarded
        out.append(Sample(i // n, t[:end], lp[:end], "stop" if has[i] else "length"))
        assert min(t[:end]) >= 0, "a row left the batch before it stopped"
    return out


@torch.no_grad()
def generate(model, prompts: list[list[int]], n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=(), seed: int = 0, on_token=None) -> list[Sample]:
    """Sample n completions per prompt; prompt-major (sample i*n + j = j-th sample of prompt i).

    A stop token ends its sample and is its last token. `on_token(rows, tokens)` (optional, syncs every step) is
    called after each step with the sample indices (B,) of the batch rows and their new tokens (B,).
    """
    cfg = model.config
    _check_inputs(cfg, prompts, n, max_new_tokens)
    # FSDP2 gathers outside inference mode (its buffers are updated in place later); inference mode drops the
    # per-op autograd bookkeeping that no_grad keeps: ~10% faster decoding on CPU
    with gathered(model), torch.inference_mode():
        w = model.lm_head.weight
        gen = torch.Generator(device=w.device).manual_seed(seed)
        cache = KVCache.allocate(cfg, len(prompts), max(map(len, prompts)) + max_new_tokens, w.device, w.dtype)
        h = _prefill(model, prompts, cache)  # (P, H)
        if n > 1:  # prefix sharing: sample rows copy their prompt's cache rows
            rows = torch.arange(len(prompts), device=w.device).repeat_interleave(n)
            cache, h = cache.select(rows), h[rows]
        stops = torch.tensor(sorted(set(stop_ids)), device=w.device) if stop_ids else None
        plain = temperature > 0 and not 0 < top_k < cfg.vocab_size and top_p >= 1  # unfiltered sampling
        noise = torch.empty(len(h) if plain else 0, cfg.vocab_size, device=w.device)  # (N, V) scratch
        sample = lambda logits: _sample(logits, temperature, top_k, top_p, gen, noise)
        out = _decode(model, cache, h, max_new_tokens, sample, stops, on_token)
    return _to_samples(*out, n, stops)


# ------------------------------------------------------------------------------------------------- tasks
FUNCTION_PROMPT = ("{problem}\n\nComplete the following Python code. Give the complete solution in one ```python code "
                   "block at the end of your answer.\n```python\n{code}\n```")


def _layout(rec: dict, source: str) -> dict | None:
    """One record of any supported layout -> {"messages", "kind", "answer", "tests", "source"}; None if none fits.

    The simple layouts ({"problem", "answer"}, {"problem", "tests"}) are used verbatim as the user message: put
    any instruction ("put the final answer in \\boxed{}") into the data itself.
    """
    user = lambda text: [{"role": "user", "content": text}]
    source = rec.get("data_source") or source
    task = lambda messages, kind, answer=None, tests=None: dict(messages=messages, kind=kind, answer=answer,
                                                                tests=tests, source=source)
    if isinstance(rec.get("prompt"), list) and isinstance(rec.get("reward_model"), dict):  # Klear RL (RECIPE.md 5)
        gt = rec["reward_model"]["ground_truth"]
        ability = str(rec.get("ability") or "")
        code = "cod" in ability or not ability and (not isinstance(gt, str) or '"inputs"' in gt or '"functional"' in gt)
        return task(rec["prompt"], "code", tests=rewards.to_tests(gt)) if code else task(rec["prompt"], "math", str(gt))
    if "problem" in rec and "answer" in rec:  # math: ours, the demo, ../shared/data/math
        return task(user(str(rec["problem"])), "math", answer=str(rec["answer"]))
    if "problem" in rec and "test_code" in rec and "entry_point" in rec:  # shared leetcode_function
        return task(user(FUNCTION_PROMPT.format(problem=rec["problem"], code=rec.get("starter_code", ""))), "code",
                    tests=rewards.to_tests(rec))
    if "problem" in rec and "tests" in rec:  # stdin/stdout: ours, the demo, shared taco_stdin
        return task(user(str(rec["problem"])), "code", tests=rewards.to_tests(rec["tests"]))
    if "prompt" in rec and "test" in rec and "entry_point" in rec:  # shared HumanEval
        return task(user(FUNCTION_PROMPT.format(problem="Implement this function.", code=rec["prompt"])), "code",
                    tests=rewards.to_tests(rec))
    return None


def load_tasks(path, skip_bad: bool = False) -> list[dict]:
    """Tasks of a JSONL (or .jsonl.gz) file via data.read_jsonl: a bad record raises a ValueError naming file:line,
    or with skip_bad is skipped and counted. `source` is the record's data_source, else the file name."""
    source = Path(path).name.split(".")[0]

    def parse(rec: dict) -> dict:
        task = _layout(rec, source)
        if task is None:
            raise ValueError("record fits no task layout (Klear prompt+reward_model, problem+answer, "
                             f"problem+tests, ...); keys: {sorted(rec)[:12]}")
        if task["kind"] == "code" and not task["tests"]:
            raise ValueError("code record without usable tests (rewards.to_tests found none)")
        return task
    return data.read_jsonl(path, skip_bad, parse)


# -------------------------------------------------------------------------------------------- evaluation
def _scores(rows: list[dict], suffix: str = "") -> dict:
    """avg@n = mean correctness over samples; pass@n = share of tasks with at least one correct sample."""
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r["correct"])
    return {f"avg@n{suffix}": sum(r["correct"] for r in rows) / len(rows),
            f"pass@n{suffix}": sum(map(any, by_task.values())) / len(by_task), f"tasks{suffix}": len(by_task)}


def _auto_batch(model, n: int, max_len: int) -> int:
    cfg, w = model.config, model.lm_head.weight
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * w.element_size()  # K and V
    return max(1, min(64, KV_BUDGET_BYTES // (per_token * n * max_len)))


def summarise(rows: list[dict], n: int) -> dict:
    """evaluate's result from per-sample rows: avg@n, pass@n, tasks (overall and per source), mean_length,
    truncated (share of samples that hit max_new_tokens), n and the rows themselves."""
    out = {"n": n, **_scores(rows), "mean_length": sum(r["length"] for r in rows) / len(rows),
           "truncated": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}
    for src in sorted({r["source"] for r in rows}):
        out.update(_scores([r for r in rows if r["source"] == src], f"/{src}"))
    return {**out, "rows": rows}


def evaluate(model, tokenizer, tasks: list[dict], n: int = 1, temperature: float = 0.6, top_p: float = 0.95,
             top_k: int = 0, max_new_tokens: int | None = None, workers: int = 4, seed: int = 0,
             batch_size: int | None = None, done_rows: list[dict] = (), on_rows=None, **reward_opts) -> dict:
    """Sample n responses per task, score them with rewards.reward_many (correct = the reward is 1.0): summarise().

    max_new_tokens None = the rest of the context, at most 32768 (the recipe's budget); batch_size = tasks per
    generate call (None: as many as fit a KV cache of KV_BUDGET_BYTES). Batch [b, e) holds tasks b..e-1, is seeded
    with seed + b, and its rows record it ("batch"). Resuming: `done_rows` are whole batches of an earlier run with
    the same settings (read_rows); they are counted and their batches skipped, so the result equals the
    uninterrupted run's. `on_rows(rows)` gets each new batch's rows as soon as they are scored.
    """
    if not tasks:
        raise ValueError("evaluate: no tasks")
    prompts = [tokenizer.encode(data.render_chat(t["messages"], add_generation_prompt=True)) for t in tasks]
    longest = max(map(len, prompts))
    max_new_tokens = max_new_tokens or min(32768, model.config.max_position_embeddings - longest)
    bs = batch_size or _auto_batch(model, n, longest + max_new_tokens)
    batches = [(b, min(b + bs, len(tasks))) for b in range(0, len(tasks), bs)]
    done = {tuple(r.get("batch", ())) for r in done_rows}
    if not done <= set(batches):  # the automatic batch size follows the model, dtype and lengths
        b, e = min(done)
        raise ValueError(f"evaluate: the earlier rows were sampled {e - b} tasks per batch, this run would take {bs}: "
                         f"pass --batch-size {e - b}")
    todo = [be for be in batches if be not in done]
    stops = tuple(sorted({tokenizer.eos_id, tokenizer.pad_id}))
    rows, n_tokens, t0 = list(done_rows), 0, time.perf_counter()
    ran, left = 0, sum(e - b for b, e in todo)  # tasks sampled in this run, tasks still to sample
    for b, e in todo:
        samples = generate(model, prompts[b:e], n, max_new_tokens, temperature, top_p, top_k, stops, seed + b)
        texts = [tokenizer.decode(s.tokens[:-1] if s.finish_reason == "stop" else s.tokens) for s in samples]
        scores = rewards.reward_many([(x, tasks[b + s.prompt_index]) for x, s in zip(texts, samples)],
                                     workers=workers, **reward_opts)
        new = [dict(task=b + s.prompt_index, batch=[b, e], source=tasks[b + s.prompt_index]["source"],
                    kind=tasks[b + s.prompt_index]["kind"], reward=r, correct=r == 1.0, length=len(s.tokens),
                    finish_reason=s.finish_reason, response=x) for s, x, r in zip(samples, texts, scores)]
        rows += new
        if on_rows:
            on_rows(new)
        n_tokens += sum(len(s.tokens) for s in samples)
        ran, left, dt = ran + e - b, left - (e - b), time.perf_counter() - t0
        eta = dt * left / ran
        print(f"eval {len(rows)}/{len(tasks) * n} samples | {n_tokens / dt:.0f} tokens/s | ETA {eta:.0f}s",
              file=sys.stderr, flush=True)
    return summarise(rows, n)


def read_rows(path, n: int, tasks: list[dict]) -> list[dict]:
    """The rows of an earlier run's --out file, less its last batch if a crash cut that short (it is run again).
    Raises ValueError naming the file and line on rows that cannot be this run's."""
    lines, groups = Path(path).read_bytes().split(b"\n"), defaultdict(list)
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line.decode())
        except ValueError:  # bad JSON or UTF-8
            if k == len(lines):
                break  # the line a crash cut short (no newline after it)
            raise ValueError(f"{path}:{k}: not a JSON line") from None
        be = r.get("batch") if isinstance(r, dict) else None
        ok = isinstance(be, list) and len(be) == 2 and all(isinstance(x, int) for x in be + [r.get("task")])
        if not ok or not be[0] <= r["task"] < be[1] <= len(tasks) or r.get("source") != tasks[r["task"]]["source"]:
            raise ValueError(f"{path}:{k}: this row is not one of the {len(tasks)} tasks being evaluated")
        groups[tuple(be)].append(r)
    keep = []
    for i, ((b, e), rs) in enumerate(groups.items()):
        if len(rs) == n * (e - b):
            keep += rs
        elif i < len(groups) - 1 or len(rs) > n * (e - b):  # only the last batch can be short: a crash cut it
            raise ValueError(f"{path}: batch {[b, e]} has {len(rs)} rows, not {n * (e - b)}: edited, or written by "
                             "two runs at once?")
    return keep


# ---------------------------------------------------------------------------------------------- command line
def _chat(model, tok, a) -> None:
    """Stream one answer to stdout as it is generated."""
    ids = tok.encode(data.render_chat([{"role": "user", "content": a.prompt}], add_generation_prompt=True))
    got, shown = [], [""]

    def show(rows, tokens):
        got.append(int(tokens[0]))
        text = tok.decode(got, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown[0]):], end="", flush=True)
            shown[0] = text

    new = a.max_new_tokens or min(32768, model.config.max_position_embeddings - len(ids))
    s = generate(model, [ids], 1, new, a.temperature, a.top_p, a.top_k, (tok.eos_id, tok.pad_id), a.seed,
                 on_token=show)[0]
    print(f"\n[{len(s.tokens)} tokens, {s.finish_reason}]", file=sys.stderr)


def _fingerprint(folder) -> str:
    """A cheap identity of a checkpoint's weights (a re-export of the same weights keeps it): each safetensors
    file's name and size, and 64 KiB read at 8 offsets spread over it."""
    h = hashlib.sha1()
    for f in _checkpoint_files(Path(folder)):  # the files load_pretrained reads
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for k in range(8):
                fh.seek(size * k // 8)
                h.update(fh.read(1 << 16))
    return h.hexdigest()


def _json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _open_out(a, model, tasks: list[dict]) -> tuple[list[dict], object]:
    """--out: (rows kept from an earlier run, the file open for appending). Beside it, OUT.settings.json records
    what the rows depend on; --resume refuses other settings, and a non-empty --out is never overwritten."""
    out, meta = Path(a.out), Path(a.out + ".settings.json")
    w = model.lm_head.weight
    settings = {k: getattr(a, k) for k in ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")}
    settings |= {"dtype": str(w.dtype), "device": w.device.type, "weights": _fingerprint(a.model), "tasks": len(tasks),
                 "task_sha1": hashlib.sha1(json.dumps(tasks, sort_keys=True, default=str).encode()).hexdigest()}
    done = []
    if out.is_file() and out.stat().st_size:
        if not a.resume:
            raise ValueError(f"{out} already holds results: pass --resume to continue that run, or remove it")
        if not meta.is_file():
            raise ValueError(f"{meta} is missing, so {out} cannot be checked against these settings")
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise ValueError(f"{meta}: not a settings file of rollout.py")
        if old != settings:
            diff = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
            raise ValueError(f"{out} was written with other settings ({meta}: {', '.join(diff)} differ)")
        done = read_rows(out, a.n, tasks)
        print(f"resuming: {len({r['task'] for r in done})} of {len(tasks)} tasks already in {out}", file=sys.stderr)
    for path, text in ((meta, json.dumps(settings, indent=1) + "\n"),  # atomic rewrites; out less a cut batch
                       (out, _json_lines(done))):
        with open(f"{path}.tmp", "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(f"{path}.tmp", path)
    return done, open(out, "a", encoding="utf-8")


def _eval(model, tok, a) -> None:
    tasks = load_tasks(a.eval)[:a.limit]
    if not tasks:
        raise ValueError(f"{a.eval}: no tasks" + (f" (--limit {a.limit})" if a.limit is not None else ""))
    done, f = _open_out(a, model, tasks) if a.out else ([], None)
    with f or contextlib.nullcontext():
        def save(rows):  # each batch reaches the file as soon as it is scored: a crash loses no finished batch
            f.write(_json_lines(rows))
            f.flush()
            os.fsync(f.fileno())
        res = evaluate(model, tok, tasks, a.n, a.temperature, a.top_p, a.top_k, a.max_new_tokens, a.workers,
                       a.seed, a.batch_size, done, save if f else None)
    if a.summary:  # the numbers without the rows, plus the mean reward (train.sh builds its table from these)
        summary = {k: v for k, v in res.items() if k != "rows"}
        summary["reward"] = sum(r["reward"] for r in res["rows"]) / len(res["rows"])
        Path(a.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.eval}: avg@{a.n} {res['avg@n']:.4f} | pass@{a.n} {res['pass@n']:.4f} | tasks {res['tasks']} | "
          f"mean length {res['mean_length']:.0f} | truncated {res['truncated']:.3f}")
    for key in (k for k in res if k.startswith("avg@n/")):
        src = key.split("/", 1)[1]
        print(f"  {src}: avg@{a.n} {res[key]:.4f} | pass@{a.n} {res['pass@n/' + src]:.4f} | "
              f"tasks {res['tasks/' + src]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--model", help="checkpoint folder: config.json, *.safetensors, tokenizer.json(+_config)")
    g.add_argument("--prompt", help="chat: render this user message with the Qwen3 template, stream the answer")
    g.add_argument("--eval", help="JSONL of tasks (Klear RL layout, problem+answer, problem+tests, shared sets)")
    g.add_argument("--bench", action="store_true", help="CPU decode tokens/s vs transformers and a no-cache loop")
    g.add_argument("--bench-gpu", action="store_true", help="CUDA: Qwen3-0.6B shape bf16 vs the bandwidth bound")
    g = p.add_argument_group("sampling (defaults: the recipe's evaluation settings, RECIPE.md section 1)")
    g.add_argument("--n", type=int, default=1, help="samples per prompt (avg@n, pass@n)")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus mass kept")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: the rest of the context, <= 32768")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g = p.add_argument_group("evaluation")
    g.add_argument("--out", help="write one JSON line per sample here, batch by batch (never overwritten)")
    g.add_argument("--resume", action="store_true", help="keep the finished batches of an existing --out, run the "
                   "rest (same settings: the same result as one uninterrupted run)")
    g.add_argument("--summary", help="write avg@n, pass@n (overall, per source) and the mean reward as JSON here")
    g.add_argument("--limit", type=int, default=None, help="only the first K tasks")
    g.add_argument("--workers", type=int, default=4, help="reward worker processes")
    g.add_argument("--batch-size", type=int, default=None, help="tasks per generate call (default: KV budget)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on CUDA, else fp32")
    a = p.parse_args(argv)
    if a.bench or a.bench_gpu:
        return bench() if a.bench else bench_gpu()
    if not a.model or (a.prompt is None) == (a.eval is None):
        p.error("give --model DIR and one of --prompt TEXT / --eval FILE.jsonl (or --bench)")
    if a.resume and not a.out:
        p.error("--resume continues an --out file: give --out")
    if a.out and Path(a.out).is_dir():
        p.error(f"--out {a.out} is a folder: give a file name")
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be >= 1")
    for what, path, ok in (("model folder", a.model, Path(a.model).is_dir()),
                           ("eval file", a.eval, a.eval is None or Path(a.eval).is_file())):
        if not ok:
            p.error(f"{what} not found: {path}")
    print("rollout config: " + json.dumps(vars(a)), file=sys.stderr)
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    try:
        model, tok = load_pretrained(a.model, device=a.device, dtype=dtype), data.load_tokenizer(a.model)
        model.eval()
        _chat(model, tok, a) if a.prompt is not None else _eval(model, tok, a)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


# ------------------------------------------------------------------------------------------------ benchmarks
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


def bench(prompt_len: int = 32, threads: int = 1) -> None:
    """Greedy decode tokens/s on CPU: ours vs transformers' generate vs a no-cache loop, same weights, plus the
    rate of the matrix products alone (the ceiling of any ratio)."""
    torch.set_num_threads(threads)  # one thread: stable ratios on a shared machine
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
    runs = {"ours": lambda k: generate(model, ids.tolist(), 1, k, temperature=0), "gemm": _gemm_only(model, len(ids))}
    if hf is not None:
        runs["hf"] = lambda k: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                           min_new_tokens=k, do_sample=False, pad_token_id=0)
    if new <= 64:
        runs["no-cache"] = lambda k: _no_cache_greedy(model, ids, k)
    return runs


def qwen3_0_6b() -> Qwen3Config:
    """The Qwen3-0.6B shape: ../shared's config.json when present, else its published numbers (GPU nodes)."""
    path = Path(__file__).resolve().parent.parent / "shared/data/qwen3-configs/Qwen3-0.6B/config.json"
    return Qwen3Config.from_json(path) if path.is_file() else Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)


def bench_gpu(device: str = "cuda", batches=(1, 256), prompt_len: int = 1024, new: int = 256,
              bandwidth: float = 4.8e12) -> None:
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
        run = lambda k, prompts=prompts: generate(model, prompts, 1, k, temperature=0)  # returns on the host
        rate = _decode_rates({"ours": run}, batch, new, time.perf_counter, repeats=2)["ours"]
        bound = batch * bandwidth / (weights + batch * kv_token * (prompt_len + new / 2))
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"| {batch} | {rate:.0f} | {bound:.0f} | {rate / bound:.2f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
