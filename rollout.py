"""The generation engine for Qwen3 (paged KV memory, continuous batching, batch-independent
sampling; docs/ALGORITHM.md section 6), plus chat and evaluation (avg@n, pass@n). `generate` samples
with fp32 logits, so its log-probs equal the trainer's to float precision; `evaluate` scores each
task with rewards.py as soon as its samples are done.

Run:
    python rollout.py --model DIR --prompt "What is 17 * 23?"
    python rollout.py --model DIR --eval aime2024.jsonl --n 8 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 32768 --out results.jsonl [--limit 5] [--resume]
    python bench.py engine                       # the engine's schedule, projected to an H200
    python -m pytest -q tests/test_rollout.py    # includes a 2-rank torchrun (gloo) FSDP2 check
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

import data
import kernels
import rewards
from model import KVCache, atomic_write, load_pretrained

PAGE_SIZE = 16  # tokens per KV page: small pages waste little at a sequence's end
PREFILL_TOKENS = 32768  # prompt tokens per prefill forward: bounds activation memory
MAX_ROWS = 256  # default bound on the rows decoded together (their (rows, V) fp32 logits)
CPU_KV_TOKENS = 1 << 20  # default KV budget on CPU, in token slots
CUDA_KV_SHARE = 0.85  # default KV budget on CUDA: this share of the free memory, less the buffers


@dataclass
class Sample:
    prompt_index: int
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


@dataclass
class EngineStats:
    """Work counters of `generate` calls (they add up over calls)."""
    forwards: int = 0  # decode forwards
    rows: int = 0  # live rows summed over decode forwards
    kv_read: int = 0  # KV slots read by decode attention, each row its own length (FlexAttention)
    kv_read_padded: int = 0  # the same if every row read the longest row's length (the gather)
    peak_kv: int = 0  # most KV slots held at once (whole pages)
    generated: int = 0  # tokens sampled
    prefill: int = 0  # tokens prefilled, recomputed ones included
    preemptions: int = 0  # sequences evicted to free KV memory (recomputed later)

    def as_dict(self) -> dict:
        return {"gen/" + k: float(v) for k, v in asdict(self).items()}


def _pages(tokens: int) -> int:
    return -(-tokens // PAGE_SIZE)


def kv_budget(model, prompts: list[list[int]], n: int, max_new_tokens: int, max_kv_tokens: int | None,
              max_rows: int) -> int:
    """Check a `generate` call's inputs; return its KV token slots: `max_kv_tokens`, or by default
    CPU_KV_TOKENS on CPU and on CUDA CUDA_KV_SHARE of the free memory less the (max_rows, V) logits
    buffers; never more than the call can use, never less than its longest sequence."""
    cfg, w = model.config, model.lm_head.weight
    assert prompts and all(prompts), "generate: no prompts, or an empty one"
    if min(n, max_new_tokens, max_rows) < 1:
        raise ValueError(f"generate: n, max_new_tokens, max_rows ({n}, {max_new_tokens}, {max_rows}) must be >= 1")
    for i, p in enumerate(prompts):
        if len(p) + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} "
                             f"that exceeds the context of {cfg.max_position_embeddings}")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"generate: prompt {i} has a token id outside [0, {cfg.vocab_size})")
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * w.element_size()
    if max_kv_tokens is None and w.is_cuda:
        free = torch.cuda.mem_get_info(w.device)[0] - 3 * max_rows * cfg.vocab_size * 4
        max_kv_tokens = int(CUDA_KV_SHARE * free) // per_token
    budget = max_kv_tokens if max_kv_tokens is not None else CPU_KV_TOKENS
    longest = max(map(len, prompts)) + max_new_tokens
    if _pages(longest) * PAGE_SIZE > budget:
        raise ValueError(f"generate: a KV budget of {budget} token slots ({budget * per_token / 2**30:.2f} "
                         f"GiB) cannot hold the longest sequence ({longest} tokens): raise max_kv_tokens or "
                         "lower max_new_tokens")
    return min(budget, n * sum(_pages(len(p) + max_new_tokens) for p in prompts) * PAGE_SIZE)


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """FSDP2: all-gather the fully_shard'ed modules' parameters for the block, then restore the
    default (the root keeps them after forward, others reshard). Yields whether it is sharded."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # imported if the model is sharded
    mods = [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)] if fsdp else []
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)  # gathered across the decode steps
    try:
        yield bool(mods)
    finally:
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


# ------------------------------------------------------------------------------------------- engine
@dataclass
class _Seq:
    key: int  # place in the output: prompt index * n + sample index
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)  # KV pages in position order (first ones shared)
    cached: int = 0  # positions already in the KV cache


class Engine:
    """One `generate` call's scheduler: a waiting queue of groups (a prompt's samples, prefilled
    once, sharing its full pages), the running rows, and the KV pages (free list + reference counts;
    page 0 is the null page). Steps: reserve, admit + prefill, decode, sample, finish."""

    def __init__(self, model, prompts, n, max_new, pages, max_rows, stops, on_finish, stats, stop_after,
                 flex, graphs):
        cfg, w = model.config, model.lm_head.weight
        self.model, self.n, self.max_new, self.max_rows, self.stops = model, n, max_new, max_rows, stops
        self.on_finish, self.stats, self.stop_after, self.dev = on_finish, stats, stop_after, w.device
        self.cache = KVCache(cfg, pages, PAGE_SIZE, w.device, w.dtype, flex=flex)
        # every sequence's block table, on the host: a page given or freed is one element written
        self.tables = torch.zeros(len(prompts) * n, _pages(max(map(len, prompts)) + max_new), dtype=torch.long)
        self.graphs = {} if graphs else None  # rows -> a captured decode step (CUDA)
        self.refs = [0] * (pages + 1)
        self.free = list(range(pages, 0, -1))  # pop() hands out low pages first
        self.watermark = max(1, pages // 20)  # 5%: halves 1%'s evictions for +0.6% time (bench.py)
        self.waiting = deque((p, [_Seq(i * n + j, p) for j in range(n)]) for i, p in enumerate(prompts))
        self.running: list[_Seq] = []
        self.out: list[Sample | None] = [None] * (len(prompts) * n)

    def _give(self, s: _Seq, page: int | None = None) -> int:
        """Append a page to s: `page` (shared: one more reference) or a free one."""
        if page is None:
            page = self.free.pop()
            self.stats.peak_kv = max(self.stats.peak_kv, (len(self.refs) - 1 - len(self.free)) * PAGE_SIZE)
        self.refs[page] += 1
        self.tables[s.key, len(s.pages)] = page
        s.pages.append(page)
        return page

    def _release(self, s: _Seq) -> None:
        for p in s.pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free.append(p)
        self.tables[s.key].zero_()
        s.pages, s.cached = [], 0

    def reserve(self) -> int:
        """Room for one more token in every running row; when the pages run out, evict the newest
        rows to the head of the queue (to be recomputed from prompt + tokens). Returns how many."""
        i, evicted = 0, 0
        while i < len(self.running):
            s = self.running[i]
            if s.cached < len(s.pages) * PAGE_SIZE:
                i += 1
            elif self.free:
                self._give(s)
                i += 1
            else:  # the victim may be s; the oldest row always goes on, so every sequence ends
                victim = self.running.pop()
                self._release(victim)
                self.waiting.appendleft((victim.prompt, [victim]))
                self.stats.preemptions, evicted = self.stats.preemptions + 1, evicted + 1
        return evicted

    def admit(self) -> list[tuple[list[int], list[_Seq]]]:
        """Waiting groups (or parts of them) that fit the free rows and pages (less a watermark)."""
        rows, free = self.max_rows - len(self.running), len(self.free) - (self.watermark if self.running else 0)
        batch = []
        while self.waiting and rows > 0:
            prompt, seqs = self.waiting[0]
            L = len(prompt) + len(seqs[0].tokens)  # a recomputed sequence re-reads its own tokens
            base, extra = _pages(L), int(L % PAGE_SIZE > 0)  # more samples copy the last page
            k = min(len(seqs), rows, (free - base) // extra + 1 if extra else len(seqs)) if free >= base else 0
            if k < 1:
                break
            batch.append((prompt + seqs[0].tokens, seqs[:k]))
            if k == len(seqs):
                self.waiting.popleft()
            else:
                self.waiting[0] = (prompt, seqs[k:])
            rows, free = rows - k, free - base - (k - 1) * extra
        return batch

    def _view(self, seqs: list[_Seq], lengths: list[int], end: int, rows: int) -> None:
        """Point the cache at these sequences' block tables and lengths, padded to `rows` rows."""
        table = F.pad(self.tables[torch.tensor([s.key for s in seqs])], (0, 0, 0, rows - len(seqs)))
        lens = F.pad(torch.tensor(lengths, dtype=torch.long), (0, rows - len(seqs)))
        self.cache.view(table.to(self.dev), lens.to(self.dev), end)

    def prefill(self, batch) -> torch.Tensor:
        """Write each group's input into its pages (one ragged forward, chunked in time); fork the
        samples. Returns the last hidden state of every admitted sequence (N, H), in batch order."""
        ids = [x for x, _ in batch]
        for x, seqs in batch:
            for _ in range(_pages(len(x))):
                self._give(seqs[0])
        pad = pad_sequence([torch.tensor(x, dtype=torch.long) for x in ids], batch_first=True).to(self.dev)
        (P, T), lens = pad.shape, torch.tensor([len(x) for x in ids], device=self.dev)
        self._view([seqs[0] for _, seqs in batch], [0] * P, 0, P)
        chunk, rows, last = max(1, PREFILL_TOKENS // P), torch.arange(P, device=self.dev), None
        for t0 in range(0, T, chunk):
            h = self.model(pad[:, t0:t0 + chunk], cache=self.cache)  # (P, c, H); padding lies ahead
            j = lens - 1 - t0  # (P,) each row's last input token inside this chunk
            here = h[rows, j.clamp(0, h.shape[1] - 1)]  # (P, H)
            last = here if last is None else torch.where(((j >= 0) & (j < h.shape[1]))[:, None], here, last)
        self.stats.prefill += sum(map(len, ids))
        for x, seqs in batch:
            full = len(x) // PAGE_SIZE
            for s in seqs:
                if s is not seqs[0]:  # share the full pages, copy the partial one (written to)
                    for p in seqs[0].pages[:full]:
                        self._give(s, p)
                    if len(x) % PAGE_SIZE:
                        self.cache.copy_page(seqs[0].pages[full], self._give(s))
                s.cached = len(x)
        self.running += [s for _, seqs in batch for s in seqs]
        return last.repeat_interleave(torch.tensor([len(seqs) for _, seqs in batch], device=self.dev), 0)

    def decode(self, seqs: list[_Seq]) -> torch.Tensor:
        """One forward of the rows' last tokens (B, 1) -> hidden states (B, H). With FlexAttention
        the rows are padded to a power of two (one compiled kernel, or CUDA graph, per size)."""
        B, lens = len(seqs), [s.cached for s in seqs]
        rows = min(1 << (B - 1).bit_length(), max(self.max_rows, B)) if self.cache.flex else B
        self._view(seqs, lens, max(lens), rows)
        ids = F.pad(torch.tensor([[s.tokens[-1]] for s in seqs]), (0, 0, 0, rows - B))  # (rows, 1)
        h = self._forward(ids.to(self.dev))[:B]
        for s in seqs:
            s.cached += 1
        self.stats.forwards, self.stats.rows = self.stats.forwards + 1, self.stats.rows + len(seqs)
        self.stats.kv_read += sum(lens) + B
        self.stats.kv_read_padded += (max(lens) + 1) * B
        return h

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The decode forward (rows, 1) -> (rows, H): eager, or a CUDA graph per row count."""
        rows, c = ids.shape[0], self.cache
        if self.graphs is not None and rows not in self.graphs:
            self.graphs[rows] = _capture(self.model, c, ids)
        if self.graphs is None or self.graphs[rows] is None:  # eager, or a failed capture
            return self.model(ids, cache=c)[:, -1]
        graph, static, out = self.graphs[rows]
        for x, new in zip(static, (ids, c.block_table, c.lengths)):
            x.copy_(new)
        graph.replay()
        return out

    def finish(self, seqs: list[_Seq], tokens: list[int], logprobs: list[float]) -> None:
        """Append each row's new token; rows that stopped or reached their length leave."""
        for s, t, lp in zip(seqs, tokens, logprobs):
            s.tokens.append(t)
            s.logprobs.append(lp)
            limit = self.max_new if self.stop_after is None else min(self.max_new, self.stop_after(s.key))
            if t in self.stops or len(s.tokens) >= limit:
                self._release(s)
                self.out[s.key] = Sample(s.key // self.n, s.tokens, s.logprobs,
                                         "stop" if t in self.stops else "length")
                if self.on_finish:
                    self.on_finish(s.key, self.out[s.key])
        self.stats.generated += len(seqs)
        self.running = [s for s in self.running if self.out[s.key] is None]


def _capture(model, cache: KVCache, ids: torch.Tensor):
    """The decode forward for ids' row count as a CUDA graph over static inputs (ids, block table,
    lengths), after two warm-ups on a side stream (they compile FlexAttention): (graph, inputs,
    output), or None (logged once) if capture fails: then run eagerly."""
    static = (ids.clone(), cache.block_table.clone(), cache.lengths.clone())
    run = lambda: (cache.view(static[1], static[2], cache.end), model(static[0], cache=cache)[:, -1])[1]
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, static, out
    except Exception as e:  # noqa: BLE001 - any failure to capture means: run eagerly
        if not _capture.failed:
            print(f"rollout: CUDA graph capture failed, decoding eagerly ({type(e).__name__}: {e})", file=sys.stderr)
        _capture.failed = True
        return None


_capture.failed = False


@torch.no_grad()
def generate(model, prompts: list[list[int]], n: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_ids=(), seed: int = 0,
             on_token=None, on_finish=None, max_kv_tokens: int | None = None, max_rows: int = MAX_ROWS,
             keys: list[int] | None = None, stats: EngineStats | None = None, stop_after=None,
             flex: bool | None = None, graphs: bool | None = None) -> list[Sample]:
    """Sample n completions per prompt in one call, within `max_kv_tokens` KV slots (kv_budget) and
    `max_rows` rows; prompt-major (sample i*n + j = j-th sample of prompt i). A stop token ends its
    sample and is its last token. Sample j draws from (seed, keys[i] (default i), j, token index)
    alone. `on_token(keys, tokens)` gets each step's sample indices and tokens, `on_finish(key,
    sample)` each finished sample, `stats` the work counters; `stop_after(key)` (tests, benchmarks)
    ends sample `key` after that many tokens. `flex` (default: on CUDA) decodes through
    FlexAttention, else a gather; `graphs` (default: flex on CUDA, not FSDP) replays CUDA graphs."""
    keys = list(range(len(prompts))) if keys is None else keys
    stats = EngineStats() if stats is None else stats
    # FSDP2 gathers outside inference mode (its buffers are updated in place later); inference mode
    # drops the per-op autograd bookkeeping that no_grad keeps: ~10% faster decoding on CPU
    with gathered(model) as sharded, torch.inference_mode():
        w = model.lm_head.weight
        budget = kv_budget(model, prompts, n, max_new_tokens, max_kv_tokens, max_rows)
        flex = w.is_cuda if flex is None else flex
        graphs = flex and w.is_cuda and not sharded if graphs is None else graphs
        eng = Engine(model, prompts, n, max_new_tokens, budget // PAGE_SIZE, max_rows, set(stop_ids),
                     on_finish, stats, stop_after, flex, graphs)
        head = w if w.is_cuda or w.dtype == torch.float32 else w.float()  # see kernels.fp32_logits
        buf = torch.empty(min(max_rows, len(prompts) * n), model.config.vocab_size, device=w.device)
        while eng.waiting or eng.running:
            evicted = eng.reserve()
            old = list(eng.running)
            batch = [] if evicted else eng.admit()  # after an eviction, no room for newcomers
            parts = ([eng.decode(old)] if old else []) + ([eng.prefill(batch)] if batch else [])
            rows = old + [s for _, seqs in batch for s in seqs]
            assert rows, "the engine made no progress"
            seeds = kernels.row_seeds(seed, [keys[s.key // n] * n + s.key % n for s in rows],
                               [len(s.tokens) for s in rows], w.device)
            tok, lp = kernels.sample(kernels.fp32_logits(torch.cat(parts), head, buf), temperature, top_k, top_p, seeds)
            tok, lp = tok.tolist(), lp.tolist()  # one device read per step, to schedule on
            if on_token:
                on_token([s.key for s in rows], tok)
            eng.finish(rows, tok, lp)
    return eng.out


# --------------------------------------------------------------------------------------- evaluation
def _scores(rows: list[dict], suffix: str = "") -> dict:
    """avg@n = mean correctness over samples; pass@n = share of tasks with a correct sample."""
    tasks, solved = {r["task"] for r in rows}, {r["task"] for r in rows if r["correct"]}
    return {f"avg@n{suffix}": sum(r["correct"] for r in rows) / len(rows),
            f"pass@n{suffix}": len(solved) / len(tasks), f"tasks{suffix}": len(tasks)}


def decode_and_score(tokenizer, samples: list[Sample], tasks: list[dict], workers: int, statuses: Counter,
                     **reward_opts) -> tuple[list[str], list[float]]:
    """Each sample's text (stop token dropped) and reward against its task (rewards.reward_many);
    code tests' statuses add to `statuses`. The one path from samples to rewards (RL and eval)."""
    texts = [tokenizer.decode(s.tokens[:-1] if s.finish_reason == "stop" else s.tokens) for s in samples]
    return texts, rewards.reward_many(list(zip(texts, tasks)), workers=workers, statuses=statuses, **reward_opts)


def evaluate(model, tokenizer, tasks: list[dict], n: int = 1, temperature: float = 0.6, top_p: float = 0.95,
             top_k: int = 0, max_new_tokens: int | None = None, workers: int = 4, seed: int = 0,
             done_rows: list[dict] = (), on_rows=None, max_kv_tokens: int | None = None,
             stats: EngineStats | None = None, **reward_opts) -> dict:
    """Sample n responses per task in one `generate` call; score each task (correct = reward 1.0) in
    a background thread once its samples are done, then pass its rows to `on_rows(rows)`. Sample j
    of task i draws from (seed, i, j) alone, so `done_rows` (whole tasks of an earlier run, same
    settings) are kept, not rerun: the result is the uninterrupted run's. max_new_tokens None = the
    rest of the context, at most 32768. Returns n, avg@n, pass@n, tasks (overall and per source),
    mean_length, truncated (share of samples that hit max_new_tokens), rows, tests/STATUS counts."""
    assert tasks, "evaluate: no tasks"
    prompts = [tokenizer.encode(data.render_chat(t["messages"], add_generation_prompt=True)) for t in tasks]
    max_new_tokens = max_new_tokens or min(32768, model.config.max_position_embeddings - max(map(len, prompts)))
    todo = sorted(set(range(len(tasks))) - {r["task"] for r in done_rows})
    stops = tuple(sorted({tokenizer.eos_id, tokenizer.pad_id}))
    rows, pending, futures, t0 = list(done_rows), defaultdict(dict), [], time.perf_counter()
    statuses = Counter()  # the code tests' statuses (sandbox.STATUSES)
    progress = {"tokens": 0, "shown": t0}

    def score(task: int, samples: list[Sample]) -> None:  # runs in the scoring thread
        texts, scores = decode_and_score(tokenizer, samples, [tasks[task]] * n, workers, statuses, **reward_opts)
        new = [dict(task=task, sample=j, source=tasks[task]["source"], kind=tasks[task]["kind"], reward=r,
                    correct=r == 1.0, length=len(s.tokens), finish_reason=s.finish_reason, response=x)
               for j, (s, x, r) in enumerate(zip(samples, texts, scores))]
        rows.extend(new)
        if on_rows:
            on_rows(new)

    def finished(key: int, sample: Sample) -> None:  # called by generate as each sample ends
        task = todo[key // n]
        pending[task][key % n] = sample
        progress["tokens"] += len(sample.tokens)
        if len(pending[task]) == n:
            got = pending.pop(task)
            futures.append(pool.submit(score, task, [got[j] for j in range(n)]))
            now, k = time.perf_counter(), len(futures)
            if now - progress["shown"] > 10 or k == len(todo):
                progress["shown"], dt = now, now - t0
                print(f"eval {k}/{len(todo)} tasks | {progress['tokens'] / dt:.0f} tokens/s | "
                      f"ETA {dt * (len(todo) - k) / k:.0f}s", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(1) as pool:
        if todo:
            generate(model, [prompts[i] for i in todo], n, max_new_tokens, temperature, top_p, top_k, stops,
                     seed, on_finish=finished, max_kv_tokens=max_kv_tokens, keys=todo, stats=stats)
        for f in futures:
            f.result()  # a scoring error surfaces here
    rewards.check_sandbox(statuses)  # a sandbox that runs no program scores all code wrong
    rows.sort(key=lambda r: (r["task"], r["sample"]))
    res = {"n": n, **_scores(rows), "mean_length": sum(r["length"] for r in rows) / len(rows),
           "truncated": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}
    for src in sorted({r["source"] for r in rows}):
        res |= _scores([r for r in rows if r["source"] == src], f"/{src}")
    return res | {"rows": rows} | {f"tests/{s}": c for s, c in sorted(statuses.items())}


# ------------------------------------------------------------------------------------- command line
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
    stops = (tok.eos_id, tok.pad_id)
    s = generate(model, [ids], 1, new, a.temperature, a.top_p, a.top_k, stops, a.seed, on_token=show)[0]
    print(f"\n[{len(s.tokens)} tokens, {s.finish_reason}]", file=sys.stderr)


def _json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_rows(path, n: int) -> list[dict]:
    """The whole tasks (n rows each) of an earlier run's --out file. A crash only cuts its end: the
    text after the last newline and a task short of rows are left out (they run again)."""
    groups = defaultdict(list)
    for k, line in enumerate(Path(path).read_bytes().split(b"\n")[:-1], 1):
        try:
            r = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{k}: not a JSON line") from None
        groups[r["task"]].append(r)
    return [r for rs in groups.values() if sorted(r["sample"] for r in rs) == list(range(n)) for r in rs]


def _open_out(a, model, tasks: list[dict]):
    """--out: (the rows kept from an earlier run, a function appending rows durably). A non-empty
    --out is continued only with --resume and the same weights, tasks and settings
    (OUT.settings.json)."""
    out, meta, w = Path(a.out), Path(a.out + ".settings.json"), model.lm_head.weight
    # the weights as loaded: a strided sample of every parameter
    weights = torch.cat([p.detach().flatten()[::max(1, p.numel() // 4096)].float() for p in model.parameters()])
    settings = {k: getattr(a, k) for k in ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")}
    settings |= {"dtype": str(w.dtype), "device": w.device.type,
                 "weights": hashlib.sha1(weights.cpu().numpy()).hexdigest(),
                 "task_sha1": hashlib.sha1(json.dumps(tasks, sort_keys=True, default=str).encode()).hexdigest()}
    done = []
    if out.is_file() and out.stat().st_size:
        if not a.resume:
            raise ValueError(f"{out} already holds results: pass --resume to continue that run, or remove it")
        old = json.loads(meta.read_text()) if meta.is_file() else {}
        if old != settings:
            diff = ", ".join(k for k in settings if old.get(k) != settings[k])
            raise ValueError(f"{out} was written with other settings ({meta}: {diff} differ)")
        done = read_rows(out, a.n)
        print(f"resuming: {len({r['task'] for r in done})} of {len(tasks)} tasks already in {out}",
              file=sys.stderr)
    atomic_write(meta, json.dumps(settings, indent=1) + "\n")
    atomic_write(out, _json_lines(done))  # less a task a crash cut

    def save(rows: list[dict]) -> None:  # a crash loses no finished task
        with open(out, "a", encoding="utf-8") as f:
            f.write(_json_lines(rows))
            f.flush()
            os.fsync(f.fileno())

    return done, save


def _eval(model, tok, a, tasks: list[dict]) -> None:
    """Evaluate, print the numbers, write --out (task by task, as each is scored) and --summary."""
    done, save = _open_out(a, model, tasks) if a.out else ([], None)
    stats = EngineStats()
    res = evaluate(model, tok, tasks, a.n, a.temperature, a.top_p, a.top_k, a.max_new_tokens, a.workers,
                   a.seed, done, save, a.max_kv_tokens, stats)
    if a.summary:  # the numbers without the rows, plus the mean reward (train.sh's table)
        summary = {k: v for k, v in res.items() if k != "rows"}
        summary["reward"] = sum(r["reward"] for r in res["rows"]) / len(res["rows"])
        Path(a.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.eval}: avg@{a.n} {res['avg@n']:.4f} | pass@{a.n} {res['pass@n']:.4f} | "
          f"tasks {res['tasks']} | mean length {res['mean_length']:.0f} | truncated {res['truncated']:.3f}")
    print("engine: " + " | ".join(f"{k} {v}" for k, v in asdict(stats).items()))
    if any(k.startswith("tests/") for k in res):
        print("code tests: " + " | ".join(f"{k[6:]} {v}" for k, v in res.items() if k.startswith("tests/")))
    for src in (k[6:] for k in res if k.startswith("avg@n/")):
        print(f"  {src}: avg@{a.n} {res['avg@n/' + src]:.4f} | pass@{a.n} {res['pass@n/' + src]:.4f} | "
              f"tasks {res['tasks/' + src]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--model", help="checkpoint folder: config.json, safetensors, tokenizer files")
    g.add_argument("--prompt", help="chat: this user message in the Qwen3 template, answer streamed")
    g.add_argument("--eval", help="JSONL of tasks (Klear RL, problem+answer, problem+tests, shared sets)")
    g = p.add_argument_group("sampling (defaults: the recipe's evaluation, docs/ALGORITHM.md section 1)")
    g.add_argument("--n", type=int, default=1, help="samples per prompt (avg@n, pass@n)")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus mass kept")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: the rest of the context")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g = p.add_argument_group("evaluation")
    g.add_argument("--out", help="write one JSON line per sample here, task by task (never overwritten)")
    g.add_argument("--resume", action="store_true", help="keep the finished tasks of an existing --out, "
                   "run the rest (same settings: the same result as one uninterrupted run)")
    g.add_argument("--summary", help="write avg@n, pass@n (overall, per source), mean reward here (JSON)")
    g.add_argument("--limit", type=int, default=None, help="only the first K tasks")
    g.add_argument("--workers", type=int, default=4, help="reward worker processes")
    g.add_argument("--max-kv-tokens", type=int, default=None, help="KV cache budget in token slots "
                   f"(default: {CUDA_KV_SHARE:.0%}% of free GPU memory; {CPU_KV_TOKENS} on CPU)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bf16 on CUDA, else fp32")
    a = p.parse_args(argv)
    if not a.model or (a.prompt is None) == (a.eval is None):
        p.error("give --model DIR and one of --prompt TEXT / --eval FILE.jsonl")
    if a.resume and not a.out:
        p.error("--resume continues an --out file: give --out")
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be >= 1")
    print("rollout config: " + json.dumps(vars(a)), file=sys.stderr)
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    try:
        # fails before the model loads
        tasks = rewards.load_tasks(a.eval)[:a.limit] if a.eval else None
        model, tok = load_pretrained(a.model, device=a.device, dtype=dtype), data.load_tokenizer(a.model)
        model.eval()
        _chat(model, tok, a) if a.prompt is not None else _eval(model, tok, a, tasks)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
