"""The generation engine for Qwen3 (paged KV memory, continuous batching), plus chat and evaluation (avg@n,
pass@n) from the command line.

What: `generate` samples n completions per prompt from model.py's Qwen3. The log-prob it returns for each token is
log_softmax(logits / T) from the same model.py forward the trainer uses, with logits kept in fp32, so sampler and
trainer agree to float precision: there is no separate inference engine and no sampler/trainer mismatch to correct.

Design (the vLLM / nano-vllm scheduling ideas, written for this model):
- One call takes the whole draw (every prompt x n) and schedules it itself (`Engine`). KV memory is paged
  (model.KVCache, pages of PAGE_SIZE tokens) inside an explicit budget (`max_kv_tokens`, see kv_budget): memory
  follows the tokens actually written, never max_new_tokens up front.
- Continuous batching: a finished sequence's pages and row go to the next waiting one at the next step. A prompt
  is prefilled once for its n samples, which share its full pages and copy its last partial page. Newcomers'
  prefills are batched. When the pages run out, the newest rows are evicted and later recomputed from
  prompt + tokens so far (tokens and log-probs already drawn are kept): nothing is lost or cut.
- Batch-independent sampling: temperature, then top-k, then top-p (the smallest set of best tokens whose mass
  reaches top_p), drawn by an exponential race whose noise is a hash of (seed, sequence key, token index, vocab
  id). A sample never depends on its batch, the budget or evictions (up to float-level differences of the matrix
  products at other batch sizes, which can flip a near-tie). Log-probs are under the tempered *unfiltered*
  distribution, which is what the trainer recomputes; greedy (temperature 0) returns log-probs at temperature 1.
- The host reads each step's tokens (one device read per step) and schedules on them; `EngineStats` counts the
  work (decode forwards, live rows, KV slots read, peak KV held, prefill tokens, evictions).
- FSDP2: parameters are all-gathered once per `generate` call (`unshard`) and resharded afterwards, not per step,
  so gppo.py (under torchrun) samples from the policy it trains; ranks may decode different numbers of steps.

Run:
    python rollout.py --model DIR --prompt "What is 17 * 23?"
    python rollout.py --model DIR --eval aime2024.jsonl --n 8 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 32768 --out results.jsonl [--limit 5] [--resume: after a crash, keep what --out holds]
    python bench.py engine           # the engine's schedule at 1/64 of the recipe's RL draw, projected to an H200
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
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import data
import rewards
from model import KVCache, Qwen3Config, _checkpoint_files, atomic_write, load_pretrained

PAGE_SIZE = 16  # tokens per KV page: small pages waste little at a sequence's end
PREFILL_TOKENS = 32768  # prompt tokens per prefill forward: bounds activation memory for long prompts
MAX_ROWS = 256  # default bound on the sequences decoded together (the (rows, V) fp32 logits live at once)
CPU_KV_TOKENS = 1 << 20  # default KV budget on CPU, in token slots (capped by what the call can ever need)
CUDA_KV_SHARE = 0.85  # default KV budget on CUDA: this share of the free memory after the model, less the buffers
M32 = 0xFFFFFFFF


@dataclass
class Sample:
    prompt_index: int
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


@dataclass
class EngineStats:
    """Work counters of `generate` calls (they add up over calls). kv_read counts the slots decode attention reads
    when each row reads only its own length (the FlexAttention path), kv_read_padded when every row reads the
    longest row's (the gather path)."""
    forwards: int = 0  # decode forwards
    rows: int = 0  # live rows summed over decode forwards
    kv_read: int = 0  # KV slots read by decode attention
    kv_read_padded: int = 0  # the same if every row read the longest row's length (the gather path's reads)
    peak_kv: int = 0  # most KV slots held at once (whole pages)
    generated: int = 0  # tokens sampled
    prefill: int = 0  # tokens prefilled, recomputed ones included
    preemptions: int = 0  # sequences evicted to free KV memory (recomputed later)

    def as_dict(self, prefix: str = "gen/") -> dict:
        return {prefix + k: float(v) for k, v in asdict(self).items()}


def _check_inputs(cfg: Qwen3Config, prompts: list[list[int]], n: int, max_new_tokens: int, max_rows: int
                  ) -> None:
    if not prompts:
        raise ValueError("generate: the prompt list is empty")
    if min(n, max_new_tokens, max_rows) < 1:
        raise ValueError(f"generate: n ({n}), max_new_tokens ({max_new_tokens}) and max_rows ({max_rows}) must be >= 1")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if len(p) + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} that "
                             f"exceeds the model's context (max_position_embeddings {cfg.max_position_embeddings})")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"generate: prompt {i} has a token id outside [0, {cfg.vocab_size})")


def kv_budget(model, prompts: list[list[int]], n: int, max_new_tokens: int, max_kv_tokens: int | None,
              max_rows: int) -> int:
    """KV token slots for one call: `max_kv_tokens`, or by default CPU_KV_TOKENS on CPU and on CUDA
    CUDA_KV_SHARE of the free memory less the (max_rows, V) logits buffers; never more than the call can use.
    Raises if the budget cannot hold the longest single sequence (prompt + max_new_tokens)."""
    cfg, w = model.config, model.lm_head.weight
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * w.element_size()
    if max_kv_tokens is None and w.is_cuda:
        free = torch.cuda.mem_get_info(w.device)[0] - 3 * max_rows * cfg.vocab_size * 4
        max_kv_tokens = int(CUDA_KV_SHARE * free) // per_token
    budget = max_kv_tokens if max_kv_tokens is not None else CPU_KV_TOKENS
    pages = lambda k: -(-k // PAGE_SIZE)
    longest = max(map(len, prompts)) + max_new_tokens
    if pages(longest) * PAGE_SIZE > budget:
        raise ValueError(f"generate: a KV budget of {budget} token slots ({budget * per_token / 2**30:.2f} GiB) cannot "
                         f"hold the longest sequence ({longest} tokens = prompt + max_new_tokens {max_new_tokens}, "
                         f"{pages(longest) * PAGE_SIZE} slots in pages of {PAGE_SIZE}): raise max_kv_tokens or "
                         "lower max_new_tokens")
    return min(budget, n * sum(pages(len(p) + max_new_tokens) for p in prompts) * PAGE_SIZE)


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


# ----------------------------------------------------------------------------------------------- sampling
def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, 2 rounds) on int64 tensors holding values in [0, 2^32)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    return (x >> 16) ^ x


def _noise(row_seed: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Exponential(1) noise (B, K) for rows (B,) at vocab ids (B or 1, K): a pure function of (row seed, id), so
    a sequence's draws never depend on which other sequences share its batch."""
    x = _mix((row_seed[:, None] + vocab_ids * 0x9E3779B1) & M32)  # (B, K) 32 random bits
    u = ((x >> 8).float() + 0.5) * 2.0 ** -24  # uniform in (0, 1), 24 bits
    return -torch.log(u)


def _row_seeds(seed: int, keys: list[int], steps: list[int], device) -> torch.Tensor:
    """One 32-bit seed per row from (seed, the sequence's key, its token index)."""
    base = int(_mix(_mix(torch.tensor(seed & M32)) ^ (seed >> 32 & M32)))  # both halves of a 64-bit seed
    k = torch.tensor([[key & M32, t] for key, t in zip(keys, steps)], dtype=torch.long).to(device)  # (B, 2)
    return _mix(_mix(base ^ k[:, 0]) ^ k[:, 1])


def _logits(h: torch.Tensor, head: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """(B, H) -> logits (B, V) accumulated AND kept in fp32 (bf16-rounded logits would put ~1e-3 between the
    sampler's log-probs and the trainer's). CUDA: bf16 products into fp32 output; elsewhere `head` is fp32."""
    if h.is_cuda and h.dtype != torch.float32:
        return torch.mm(h, head.t(), out_dtype=torch.float32)
    return torch.mm(h.float(), head.t(), out=buf[:h.shape[0]])  # a reused buffer: no page faults per step


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, row_seed: torch.Tensor):
    """logits (B, V) fp32 (overwritten) -> tokens (B,), log-probs (B,) under softmax(logits / T) before filtering.

    The draw is an exponential race, argmax p_i / E_i with E_i ~ Exp(1) from `_noise` (= Gumbel-max)."""
    if temperature <= 0:  # greedy: the best logit is both the token and the log-sum-exp shift
        top, tok = logits.max(-1, keepdim=True)  # (B, 1) each
        return tok.squeeze(1), logits.sub_(top).exp_().sum(-1).log_().neg_()
    logits.div_(temperature)
    if 0 < top_k < logits.shape[-1] or top_p < 1:
        if 0 < top_k < logits.shape[-1]:
            vals, idx = logits.topk(top_k, -1)  # (B, k), sorted best first
        else:
            vals, idx = logits.sort(-1, descending=True)  # (B, V)
        probs = vals.softmax(-1)
        if top_p < 1:  # drop a token when the better ones already hold top_p of the mass
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
        tok = idx.gather(1, (probs / _noise(row_seed, idx)).argmax(-1, keepdim=True)).squeeze(1)
    else:  # the same race in log space: argmax(logits / T - log E)
        ids = torch.arange(logits.shape[-1], device=logits.device)[None]
        tok = (logits - _noise(row_seed, ids).log_()).argmax(-1)
    picked = logits.gather(1, tok[:, None]).squeeze(1)
    top = logits.amax(-1, keepdim=True)  # log-sum-exp in place: logits is scratch from here on
    return tok, picked - logits.sub_(top).exp_().sum(-1).log_() - top.squeeze(1)


# ------------------------------------------------------------------------------------------------- engine
@dataclass
class _Seq:
    key: int  # place in the output: prompt index * n + sample index
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)  # KV pages in position order (the first ones may be shared)
    cached: int = 0  # positions already in the KV cache


class Engine:
    """One `generate` call's scheduler: a waiting queue of groups (a prompt's samples, prefilled once and sharing
    its full pages), the running rows, and the KV pages (free list + reference counts; page 0 is the null page).

    Each step: (1) give every running row room for its next token, evicting the newest rows when the pages run
    out (they wait at the head of the queue and are recomputed from prompt + tokens so far); (2) admit waiting
    groups while pages (less a 5% watermark) and rows last, prefilling them in one batch; (3) one decode forward
    of the running rows; (4) sample every row at once; finished rows free their pages for the next step."""

    def __init__(self, model, prompts, n, max_new, pages, max_rows, stops, on_finish, stats, stop_after, flex, graphs):
        cfg, w = model.config, model.lm_head.weight
        self.model, self.max_new, self.max_rows, self.stops, self.on_finish = model, max_new, max_rows, stops, on_finish
        self.stats, self.stop_after, self.dev = stats, stop_after, w.device
        self.cache = KVCache(cfg, pages, PAGE_SIZE, w.device, w.dtype, flex=flex)
        # every sequence's block table, on the host: a page given or freed is one element written
        self.tables = torch.zeros(len(prompts) * n, -(-(max(map(len, prompts)) + max_new) // PAGE_SIZE),
                                  dtype=torch.long)
        self.graphs = {} if graphs else None  # rows -> a captured decode step (CUDA)
        self.refs = [0] * (pages + 1)
        self.free = list(range(pages, 0, -1))  # pop() hands out low pages first
        self.watermark = max(1, pages // 20)  # 5%: half the evictions of 1%, +0.6% projected time (bench.py engine)
        self.waiting = deque((p, [_Seq(i * n + j, p) for j in range(n)]) for i, p in enumerate(prompts))
        self.running: list[_Seq] = []
        self.out: list[Sample | None] = [None] * (len(prompts) * n)
        self.n = n

    # ---- pages
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
        """Room for one more token in every running row; evict the newest rows (LIFO) when pages run out.
        Returns the number of rows evicted."""
        i, evicted = 0, 0
        while i < len(self.running):
            s = self.running[i]
            if s.cached < len(s.pages) * PAGE_SIZE:
                i += 1
            elif self.free:
                self._give(s)
                i += 1
            else:  # the victim may be s itself; the oldest row always keeps going, so every sequence finishes
                victim = self.running.pop()
                self._release(victim)
                self.waiting.appendleft((victim.prompt, [victim]))
                self.stats.preemptions, evicted = self.stats.preemptions + 1, evicted + 1
        return evicted

    def admit(self) -> list[tuple[list[int], list[_Seq]]]:
        """Waiting groups (or leading parts of them) that fit the free pages and rows, oldest first."""
        rows, free = self.max_rows - len(self.running), len(self.free) - (self.watermark if self.running else 0)
        batch = []
        while self.waiting and rows > 0:
            prompt, seqs = self.waiting[0]
            L = len(prompt) + len(seqs[0].tokens)  # a recomputed sequence re-reads its own tokens
            base, extra = -(-L // PAGE_SIZE), int(L % PAGE_SIZE > 0)  # each further sample copies the last page
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
        """Point the cache at these sequences' block tables and lengths, padded to `rows` with null rows."""
        keys = torch.tensor([s.key for s in seqs])
        table = torch.zeros(rows, self.tables.shape[1], dtype=torch.long)
        table[:len(seqs)] = self.tables.index_select(0, keys)
        lens = torch.zeros(rows, dtype=torch.long)
        lens[:len(seqs)] = torch.tensor(lengths)
        self.cache.view(table.to(self.dev), lens.to(self.dev), end)

    def prefill(self, batch) -> torch.Tensor:
        """Write each group's input into its pages (one ragged forward, chunked in time); fork the samples.
        Returns the last hidden state of every admitted sequence (N, H), in batch order."""
        ids = [x for x, _ in batch]
        for x, seqs in batch:
            for _ in range(-(-len(x) // PAGE_SIZE)):
                self._give(seqs[0])
        P, T = len(ids), max(map(len, ids))
        pad = torch.zeros(P, T, dtype=torch.long)
        for i, x in enumerate(ids):
            pad[i, :len(x)] = torch.tensor(x)
        pad, lens = pad.to(self.dev), torch.tensor([len(x) for x in ids], device=self.dev)
        self._view([seqs[0] for _, seqs in batch], [0] * P, 0, P)
        chunk, rows, last = max(1, PREFILL_TOKENS // P), torch.arange(P, device=self.dev), None
        for t0 in range(0, T, chunk):
            h = self.model(pad[:, t0:t0 + chunk], cache=self.cache)  # (P, c, H); padding only lies ahead
            j = lens - 1 - t0  # (P,) each row's last input token inside this chunk
            here = h[rows, j.clamp(0, h.shape[1] - 1)]  # (P, H)
            last = here if last is None else torch.where(((j >= 0) & (j < h.shape[1]))[:, None], here, last)
        self.stats.prefill += sum(map(len, ids))
        for x, seqs in batch:
            full = len(x) // PAGE_SIZE
            for s in seqs:
                if s is not seqs[0]:  # share the full pages, copy the partial one (the sample writes into it)
                    for p in seqs[0].pages[:full]:
                        self._give(s, p)
                    if len(x) % PAGE_SIZE:
                        self.cache.copy_page(seqs[0].pages[full], self._give(s))
                s.cached = len(x)
        self.running += [s for _, seqs in batch for s in seqs]
        return last.repeat_interleave(torch.tensor([len(seqs) for _, seqs in batch], device=self.dev), 0)

    def decode(self, seqs: list[_Seq]) -> torch.Tensor:
        """One forward of the rows' last sampled tokens (B, 1) -> hidden states (B, H). Through FlexAttention the
        rows are padded to a power of two (few shapes: one compiled kernel, or one CUDA graph, per size)."""
        B, lens = len(seqs), [s.cached for s in seqs]
        rows = min(1 << (B - 1).bit_length(), max(self.max_rows, B)) if self.cache.flex else B
        self._view(seqs, lens, max(lens), rows)
        ids = torch.zeros(rows, 1, dtype=torch.long)
        ids[:B, 0] = torch.tensor([s.tokens[-1] for s in seqs])
        h = self._forward(ids.to(self.dev))[:B]
        for s in seqs:
            s.cached += 1
        self.stats.forwards, self.stats.rows = self.stats.forwards + 1, self.stats.rows + len(seqs)
        self.stats.kv_read += sum(lens) + B
        self.stats.kv_read_padded += (max(lens) + 1) * B
        return h

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The decode forward (rows, 1) -> (rows, H): eager, or a CUDA graph captured once per row count and call."""
        if self.graphs is None:
            return self.model(ids, cache=self.cache)[:, -1]
        rows, c = ids.shape[0], self.cache
        if rows not in self.graphs:
            self.graphs[rows] = _capture(self.model, c, ids)
        if self.graphs[rows] is None:  # capture failed (logged once): eager
            return self.model(ids, cache=c)[:, -1]
        graph, (s_ids, s_table, s_lens), out = self.graphs[rows]
        s_ids.copy_(ids)
        s_table.copy_(c.block_table)
        s_lens.copy_(c.lengths)
        graph.replay()
        return out

    def finish(self, seqs: list[_Seq], tokens: list[int], logprobs: list[float]) -> None:
        """Append each row's new token; rows that stopped or reached their length leave and free their pages."""
        done = set()
        for s, t, lp in zip(seqs, tokens, logprobs):
            s.tokens.append(t)
            s.logprobs.append(lp)
            limit = self.max_new if self.stop_after is None else min(self.max_new, self.stop_after(s.key))
            if t in self.stops or len(s.tokens) >= limit:
                done.add(s.key)
                self._release(s)
                self.out[s.key] = Sample(s.key // self.n, s.tokens, s.logprobs,
                                         "stop" if t in self.stops else "length")
                if self.on_finish:
                    self.on_finish(s.key, self.out[s.key])
        self.stats.generated += len(seqs)
        if done:
            self.running = [s for s in self.running if s.key not in done]


def _capture(model, cache: KVCache, ids: torch.Tensor):
    """Capture the decode forward for ids' row count as a CUDA graph over static inputs (ids, block table,
    lengths), after two warm-up runs on a side stream (they compile FlexAttention). Returns (graph, inputs,
    output), or None (logged once) where capture fails: the caller then runs eagerly."""
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
def generate(model, prompts: list[list[int]], n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=(), seed: int = 0, on_token=None, on_finish=None,
             max_kv_tokens: int | None = None, max_rows: int = MAX_ROWS, keys: list[int] | None = None,
             stats: EngineStats | None = None, stop_after=None, flex: bool | None = None,
             graphs: bool | None = None) -> list[Sample]:
    """Sample n completions per prompt; prompt-major (sample i*n + j = j-th sample of prompt i).

    The whole draw goes in one call: the engine schedules it within `max_kv_tokens` KV slots (see kv_budget) and
    `max_rows` rows. A stop token ends its sample and is its last token. A sample's randomness depends only on
    (seed, keys[i] (default i), j, token index): any budget gives the same draws. `on_token(keys, tokens)` gets
    each step's sample indices and new tokens, `on_finish(key, sample)` each sample as it finishes, `stats` the
    work counters. `stop_after(key)` (tests, benchmarks) forces sample `key` to end after that many tokens.
    Decode attention: `flex` (default: on CUDA) reads each row's own pages through FlexAttention, else a gather
    of every row's first `end` slots; `graphs` (default: on CUDA with flex, unless the model is FSDP-sharded, whose
    hooks cannot be captured) replays the decode step as a CUDA graph.
    """
    cfg = model.config
    _check_inputs(cfg, prompts, n, max_new_tokens, max_rows)
    keys = list(range(len(prompts))) if keys is None else keys
    stats = EngineStats() if stats is None else stats
    # FSDP2 gathers outside inference mode (its buffers are updated in place later); inference mode drops the
    # per-op autograd bookkeeping that no_grad keeps: ~10% faster decoding on CPU
    with gathered(model), torch.inference_mode():
        w = model.lm_head.weight
        budget = kv_budget(model, prompts, n, max_new_tokens, max_kv_tokens, max_rows)
        flex = w.is_cuda if flex is None else flex
        sharded = any(type(m).__name__.startswith("FSDP") for m in model.modules())
        graphs = flex and w.is_cuda and not sharded if graphs is None else graphs
        eng = Engine(model, prompts, n, max_new_tokens, budget // PAGE_SIZE, max_rows, set(stop_ids), on_finish,
                     stats, stop_after, flex, graphs)
        head = w if w.is_cuda or w.dtype == torch.float32 else w.float()  # fp32 logits (see _logits)
        buf = torch.empty(min(max_rows, len(prompts) * n), cfg.vocab_size, device=w.device)  # reused fp32 logits
        while eng.waiting or eng.running:
            evicted = eng.reserve()
            old = list(eng.running)
            batch = [] if evicted else eng.admit()  # after an eviction, pages are too short to take newcomers
            parts = ([eng.decode(old)] if old else []) + ([eng.prefill(batch)] if batch else [])
            rows = old + [s for _, seqs in batch for s in seqs]
            assert rows, "the engine made no progress"
            seeds = _row_seeds(seed, [keys[s.key // n] * n + s.key % n for s in rows],
                               [len(s.tokens) for s in rows], w.device)
            tok, lp = _sample(_logits(torch.cat(parts), head, buf), temperature, top_k, top_p, seeds)
            tok, lp = tok.tolist(), lp.tolist()  # one device read per step: the host schedules on it
            if on_token:
                on_token([s.key for s in rows], tok)
            eng.finish(rows, tok, lp)
    return eng.out


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
    if isinstance(rec.get("prompt"), list) and isinstance(rec.get("reward_model"), dict):  # Klear RL (ALGORITHM.md 5)
        gt = rec["reward_model"]["ground_truth"]
        ability = str(rec.get("ability") or "")
        code = "cod" in ability or not ability and (not isinstance(gt, str) or '"inputs"' in gt or '"functional"' in gt)
        return task(rec["prompt"], "code", tests=rewards.to_tests(gt)) if code else task(rec["prompt"], "math", str(gt))
    if "problem" in rec and "answer" in rec:  # math: ours, the demo, AIME / MATH-500
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


def summarise(rows: list[dict], n: int) -> dict:
    """evaluate's result from per-sample rows: avg@n, pass@n, tasks (overall and per source), mean_length,
    truncated (share of samples that hit max_new_tokens), n and the rows themselves."""
    out = {"n": n, **_scores(rows), "mean_length": sum(r["length"] for r in rows) / len(rows),
           "truncated": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}
    for src in sorted({r["source"] for r in rows}):
        out.update(_scores([r for r in rows if r["source"] == src], f"/{src}"))
    return {**out, "rows": rows}


def decode_and_score(tokenizer, samples: list[Sample], tasks: list[dict], workers: int, statuses: Counter,
                     **reward_opts) -> tuple[list[str], list[float]]:
    """Each sample's text (its stop token dropped) and reward against its task (rewards.reward_many); the code
    tests' statuses are added to `statuses`. The one path from samples to rewards, for RL and evaluation alike."""
    texts = [tokenizer.decode(s.tokens[:-1] if s.finish_reason == "stop" else s.tokens) for s in samples]
    return texts, rewards.reward_many(list(zip(texts, tasks)), workers=workers, statuses=statuses, **reward_opts)


def evaluate(model, tokenizer, tasks: list[dict], n: int = 1, temperature: float = 0.6, top_p: float = 0.95,
             top_k: int = 0, max_new_tokens: int | None = None, workers: int = 4, seed: int = 0,
             done_rows: list[dict] = (), on_rows=None, max_kv_tokens: int | None = None,
             stats: EngineStats | None = None, **reward_opts) -> dict:
    """Sample n responses per task, score them with rewards.reward_many (correct = the reward is 1.0): summarise().

    Every task x n goes to one `generate` call; a task is scored (in a background thread, while decoding goes
    on) as soon as its n samples are done, and `on_rows(rows)` gets its rows. Sample j of task i draws from
    (seed, i, j) alone, so a task's samples do not depend on which other tasks run. Resuming: `done_rows` are the
    whole tasks of an earlier run with the same settings (read_rows); they are counted and not run again, and
    the result equals the uninterrupted run's. max_new_tokens None = the rest of the context, at most 32768.
    """
    if not tasks:
        raise ValueError("evaluate: no tasks")
    prompts = [tokenizer.encode(data.render_chat(t["messages"], add_generation_prompt=True)) for t in tasks]
    max_new_tokens = max_new_tokens or min(32768, model.config.max_position_embeddings - max(map(len, prompts)))
    todo = sorted(set(range(len(tasks))) - {r["task"] for r in done_rows})
    stops = tuple(sorted({tokenizer.eos_id, tokenizer.pad_id}))
    rows, pending, futures, t0 = list(done_rows), defaultdict(dict), [], time.perf_counter()
    statuses = Counter()  # the code tests' statuses (sandbox.STATUSES), printed by --eval
    progress = {"tasks": 0, "tokens": 0, "shown": t0}

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
            progress["tasks"] += 1
            now = time.perf_counter()
            if now - progress["shown"] > 10 or progress["tasks"] == len(todo):
                progress["shown"], dt = now, now - t0
                eta = dt * (len(todo) - progress["tasks"]) / progress["tasks"]
                print(f"eval {progress['tasks']}/{len(todo)} tasks | {progress['tokens'] / dt:.0f} tokens/s | "
                      f"ETA {eta:.0f}s", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(1) as pool:
        if todo:
            generate(model, [prompts[i] for i in todo], n, max_new_tokens, temperature, top_p, top_k, stops, seed,
                     on_finish=finished, max_kv_tokens=max_kv_tokens, keys=todo, stats=stats)
        for f in futures:
            f.result()  # a scoring error surfaces here
    rewards.check_sandbox(statuses)  # a sandbox that cannot run programs would score every code sample wrong
    res = summarise(sorted(rows, key=lambda r: (r["task"], r["sample"])), n)
    return res | {f"tests/{s}": c for s, c in sorted(statuses.items())}


def read_rows(path, n: int, tasks: list[dict]) -> list[dict]:
    """The rows of an earlier run's --out file: its whole tasks (a task's n rows are written at once; a crash
    can only cut the last one, which is run again). Raises ValueError naming the file and line on rows that cannot
    be this run's."""
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
        ok = isinstance(r, dict) and isinstance(r.get("task"), int) and 0 <= r["task"] < len(tasks)
        if not ok or r.get("source") != tasks[r["task"]]["source"] or r.get("sample") not in range(n):
            raise ValueError(f"{path}:{k}: this row is not one of the {len(tasks)} tasks x {n} samples being "
                             "evaluated")
        groups[r["task"]].append(r)
    keep = []
    for i, (task, rs) in enumerate(groups.items()):
        if len(rs) == n and {r["sample"] for r in rs} == set(range(n)):
            keep += rs
        elif i < len(groups) - 1 or len(rs) > n:  # only the last task can be short: a crash cut it
            raise ValueError(f"{path}: task {task} has {len(rs)} rows, not {n}: edited, or written by two runs at "
                             "once?")
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
    atomic_write(meta, json.dumps(settings, indent=1) + "\n")
    atomic_write(out, _json_lines(done))  # less a task a crash cut
    return done, open(out, "a", encoding="utf-8")


def _eval(model, tok, a) -> None:
    tasks = load_tasks(a.eval)[:a.limit]
    if not tasks:
        raise ValueError(f"{a.eval}: no tasks" + (f" (--limit {a.limit})" if a.limit is not None else ""))
    done, f = _open_out(a, model, tasks) if a.out else ([], None)
    with f or contextlib.nullcontext():
        def save(rows):  # each task reaches the file as soon as it is scored: a crash loses no finished task
            f.write(_json_lines(rows))
            f.flush()
            os.fsync(f.fileno())
        stats = EngineStats()
        res = evaluate(model, tok, tasks, a.n, a.temperature, a.top_p, a.top_k, a.max_new_tokens, a.workers,
                       a.seed, done, save if f else None, a.max_kv_tokens, stats)
    if a.summary:  # the numbers without the rows, plus the mean reward (train.sh builds its table from these)
        summary = {k: v for k, v in res.items() if k != "rows"}
        summary["reward"] = sum(r["reward"] for r in res["rows"]) / len(res["rows"])
        Path(a.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.eval}: avg@{a.n} {res['avg@n']:.4f} | pass@{a.n} {res['pass@n']:.4f} | tasks {res['tasks']} | "
          f"mean length {res['mean_length']:.0f} | truncated {res['truncated']:.3f}")
    print("engine: " + " | ".join(f"{k} {v}" for k, v in asdict(stats).items()))
    if any(k.startswith("tests/") for k in res):
        print("code tests: " + " | ".join(f"{k[6:]} {v}" for k, v in res.items() if k.startswith("tests/")))
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
    g = p.add_argument_group("sampling (defaults: the recipe's evaluation settings, docs/ALGORITHM.md section 1)")
    g.add_argument("--n", type=int, default=1, help="samples per prompt (avg@n, pass@n)")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus mass kept")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: the rest of the context, <= 32768")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g = p.add_argument_group("evaluation")
    g.add_argument("--out", help="write one JSON line per sample here, task by task (never overwritten)")
    g.add_argument("--resume", action="store_true", help="keep the finished tasks of an existing --out, run the "
                   "rest (same settings: the same result as one uninterrupted run)")
    g.add_argument("--summary", help="write avg@n, pass@n (overall, per source) and the mean reward as JSON here")
    g.add_argument("--limit", type=int, default=None, help="only the first K tasks")
    g.add_argument("--workers", type=int, default=4, help="reward worker processes")
    g.add_argument("--max-kv-tokens", type=int, default=None, help="KV cache budget in token slots (default: "
                   f"{CUDA_KV_SHARE:.0%}% of free GPU memory; {CPU_KV_TOKENS} on CPU)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on CUDA, else fp32")
    a = p.parse_args(argv)
    if not a.model or (a.prompt is None) == (a.eval is None):
        p.error("give --model DIR and one of --prompt TEXT / --eval FILE.jsonl")
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


if __name__ == "__main__":
    main()
