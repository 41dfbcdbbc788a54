"""Qwen3 from scratch: config, decoder, paged KV cache, packed-document masks, HF safetensors I/O.

- Parameter names are the HF checkpoint keys. `model(ids)` returns the final normed hidden states
  (B, T, H); kernels.token_logprobs applies `lm_head` to them without materialising the logits.
- Packed documents (`doc_ids`) attend within their document (FlexAttention on CUDA, an SDPA bool
  mask elsewhere); decoding goes through the paged `KVCache`.
- RoPE angles are fp32 (YaRN: docs/ALGORITHM.md section 1).
- atomic_write, fsync_dir and replace_dir are the stack's one copy of each.

    python model.py --check DIR     # validate a checkpoint folder without loading it
    python bench.py model           # fwd+bwd tokens/s vs transformers' Qwen3, tiny config, CPU
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# config.json keys that do not change the computation (or that from_dict checks by hand).
_IGNORED_KEYS = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
                 "use_cache", "initializer_range", "max_window_layers", "attention_dropout", "attention_bias",
                 "hidden_act", "sliding_window", "use_sliding_window", "layer_types", "rope_parameters",
                 "_name_or_path"}
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "beta_fast",
              "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate", "partial_rotary_factor"}


@dataclass
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    # None or {"rope_type": "yarn", "factor": f, "original_max_position_embeddings": n, ...}
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Qwen3Config:
        """Build from HF config.json content; what this model lacks raises a ValueError."""
        d = dict(d)
        expect = {"model_type": "qwen3", "hidden_act": "silu"}
        bad = {k: d[k] for k, v in expect.items() if d.get(k, v) != v}
        bad |= {k: d[k] for k in ("attention_bias", "use_sliding_window", "attention_dropout") if d.get(k)}
        if set(d.get("layer_types") or []) - {"full_attention"}:
            bad["layer_types"] = d["layer_types"]
        if set(d.get("architectures") or []) - {"Qwen3ForCausalLM", "Qwen3Model"}:
            bad["architectures"] = d["architectures"]
        names = {f.name for f in fields(cls)}
        unknown = {k: v for k, v in d.items()
                   if k not in names | _IGNORED_KEYS and v not in (None, False, 0, {}, [])}
        if bad or unknown:
            raise ValueError(f"unsupported Qwen3 config fields: {bad | unknown}")
        d.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
        d.setdefault("num_key_value_heads", d["num_attention_heads"])
        d["rope_scaling"] = d.get("rope_parameters") or d.get("rope_scaling")  # newer layout first
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    def __post_init__(self):
        """Either HF rope layout -> rope_theta (the rope dict's wins), rope_scaling None or yarn."""
        rope = dict(self.rope_scaling or {})
        self.rope_theta = float(rope.pop("rope_theta", None) or self.rope_theta)
        unknown = set(rope) - _ROPE_KEYS
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if unknown or rope_type not in ("default", "yarn") or rope.pop("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"unsupported rope_scaling/rope_parameters: type {rope_type!r}, "
                             f"fields {sorted(unknown)}")
        if rope_type == "yarn":
            rope.setdefault("original_max_position_embeddings", self.max_position_embeddings)
            if rope.get("factor") is None:  # as transformers: the context extension ratio
                rope["factor"] = self.max_position_embeddings / rope["original_max_position_embeddings"]
        self.rope_scaling = {"rope_type": "yarn", **rope} if rope_type == "yarn" else None

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3Config:
        path = Path(path)
        try:  # a missing file raises FileNotFoundError, naming it
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:  # bad JSON, a missing or unsupported field
            raise ValueError(f"{path}: {e if isinstance(e, ValueError) else repr(e)}") from e

    def to_dict(self) -> dict:
        """HF-style config.json content (loadable by transformers' AutoConfig)."""
        return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **asdict(self),
                "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
                "use_sliding_window": False, "sliding_window": None}


def rope_frequencies(cfg: Qwen3Config) -> tuple[Tensor, float]:
    """Inverse frequencies (head_dim/2,) fp32 on CPU and the cos/sin scale.
    YaRN: arXiv:2309.00071 sections 3.2-3.4, with transformers' defaults."""
    dim, base = cfg.head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    if not cfg.rope_scaling:
        return 1.0 / pos_freqs, 1.0
    rs = cfg.rope_scaling
    factor, orig = rs["factor"], rs["original_max_position_embeddings"]
    mscale = lambda s, m=1.0: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
    attn_factor = rs.get("attention_factor")
    if attn_factor is None:
        ms, ms_all = rs.get("mscale"), rs.get("mscale_all_dim")
        attn_factor = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
    # dims that rotate fewer than beta_slow times over the original context are interpolated, more
    # than beta_fast times extrapolated, with a linear ramp in between
    corr_dim = lambda rot: dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    low, high = corr_dim(rs.get("beta_fast") or 32), corr_dim(rs.get("beta_slow") or 1)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low + 0.001 * (low == high))
    extrap = 1 - ramp.clamp(0, 1)
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - extrap) + 1.0 / pos_freqs * extrap
    return inv_freq, float(attn_factor)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        # one call, same bits as the fp32 stats below
        if x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # HF's rotate-half, x * cos + cat(-x2, x1) * sin, with the minus sign folded into the first half
    # of `sin` (Qwen3.rope): cat(-x2, x1) * sin = roll(x) * sin, the same bits in two fewer ops
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin  # (B, heads, T, head_dim)


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.hd, self.nh, self.nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)  # per-head q/k norm (Qwen3)
        self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask, kv: tuple | None) -> Tensor:
        B, T, _ = x.shape
        # q (B, nh, T, hd), k and v (B, nkv, T, hd)
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nkv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:  # (cache, layer, slots written (B, T), positions read: end | None = all)
            cache, i, written, end = kv
            k, v = cache.write(i, k, v, written, end)
        gqa, sdpa = self.nh != self.nkv, F.scaled_dot_product_attention
        if mask is None:  # plain causal: flash kernels take GQA directly
            o = sdpa(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, nh, T, hd)
        elif not isinstance(mask, Tensor):  # a BlockMask: documents (CUDA), paged decode
            o = _flex_attention()(q, k, v, block_mask=mask, enable_gqa=gqa)
        elif gqa and T == 1:  # decode: each kv head's query heads become its query rows, no kv copy
            o = sdpa(q.reshape(B, self.nkv, -1, self.hd), k, v, attn_mask=mask).view(B, self.nh, 1, self.hd)
        elif gqa and q.is_cuda:
            # CUDA's masked fused kernels lack GQA (math would hold T x S scores): repeat kv
            k, v = k.repeat_interleave(self.nh // self.nkv, 1), v.repeat_interleave(self.nh // self.nkv, 1)
            o = sdpa(q, k, v, attn_mask=mask)
        else:  # an explicit mask on CPU, whose flash kernel takes it with GQA
            o = sdpa(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask, kv: tuple | None = None) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, kv)
        return h + self.mlp(self.post_attention_layernorm(h))


@functools.cache
def _flex_attention():  # compiled once per process (a graph per shape): CUDA training, paged decode
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def doc_positions(doc_ids: Tensor) -> Tensor:
    """(B, T) document ids of contiguous documents -> positions restarting at 0 in each document."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)  # (B, T)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.where(start, idx, 0).cummax(dim=1).values


def doc_mask(doc_ids: Tensor) -> Tensor:
    """The causal same-document bool mask (B, 1, T, T) of packed rows (B, T), for SDPA."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def doc_block_mask(doc_ids: Tensor, block: int = 128):
    """doc_mask as a FlexAttention BlockMask, built per block pair: (T / block)^2 memory, not T^2 as
    create_block_mask's (10 GiB at T = 32K uncompiled). Runs of one id are numbered in order, so a
    block pair is empty past the diagonal or when the key block ends before the query block's first
    run, full below the diagonal inside one run, else partial (mask_mod decides per pair)."""
    from torch.nn.attention.flex_attention import BlockMask
    B, T = doc_ids.shape
    run = torch.cat([torch.zeros_like(doc_ids[:, :1]), (doc_ids[:, 1:] != doc_ids[:, :-1]).long()], 1).cumsum(1)
    n = -(-T // block)
    first, last = run[:, ::block], run[:, torch.arange(1, n + 1, device=run.device).mul(block).clamp(max=T) - 1]
    # (B, n, n) each
    q_first, q_last, k_first, k_last = first[:, :, None], last[:, :, None], first[:, None], last[:, None]
    below = torch.ones(n, n, dtype=torch.bool, device=run.device).tril(-1)
    visit = (below | torch.eye(n, dtype=torch.bool, device=run.device)) & (k_last >= q_first)
    full = below & (k_first == k_last) & (q_first == q_last) & (k_first == q_first)
    partial = visit & ~full

    def indices(blocks: Tensor) -> tuple[Tensor, Tensor]:  # (B, n, n) -> counts (B, 1, n), columns
        order = blocks.int().argsort(dim=-1, descending=True, stable=True)
        return blocks.sum(-1).int()[:, None], order.int()[:, None]

    mask_mod = lambda b, h, q, k: (k <= q) & (doc_ids[b, q] == doc_ids[b, k])
    return BlockMask.from_kv_blocks(*indices(partial), *indices(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(T, T))


class KVCache:
    """Paged KV memory: per layer a pool of slots k[i], v[i] (n_kv, (pages + 1) * page_size, hd).
    Row b's position p lives in slot block_table[b, p // page_size] * page_size + p % page_size;
    rows may share pages (a prompt's prefix). Page 0 is the null page: padding writes there and it
    is only read under the mask. The scheduler (rollout.py) sets `block_table` (B, max_pages),
    `lengths` (B,) and `end`, a host-side bound of the lengths (a forward never reads the device).
    A forward writes its T tokens at positions lengths[b].. and adds T to lengths and end."""

    def __init__(self, config: Qwen3Config, pages: int, page_size: int, device, dtype, flex: bool = False):
        # + the null page
        shape = (config.num_key_value_heads, (pages + 1) * page_size, config.head_dim)
        # flex: decode steps through FlexAttention over the pool (decode_mask), not a gather
        self.flex, self.page_size = flex, page_size
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        empty = torch.zeros(0, 1, dtype=torch.long, device=device)
        self.view(empty, empty[:, 0])

    def view(self, block_table: Tensor, lengths: Tensor, end: int = 0) -> None:
        self.block_table, self.lengths, self.end = block_table, lengths, end

    def slots(self, pos: Tensor) -> Tensor:  # positions (B, T) -> slots (B, T)
        return self.block_table.gather(1, pos // self.page_size) * self.page_size + pos % self.page_size

    def copy_page(self, src: int, dst: int) -> None:
        """Copy one page in every layer (a shared partial page, before a row writes its tokens)."""
        a, b, ps = src * self.page_size, dst * self.page_size, self.page_size
        for buf in self.k + self.v:
            buf[:, b:b + ps] = buf[:, a:a + ps]

    def write(self, i: int, k: Tensor, v: Tensor, where: Tensor, end: int | None) -> tuple[Tensor, Tensor]:
        """Write k, v (B, n_kv, T, hd) of layer i into slots `where` (B, T). Return each row's
        positions < end as (B, n_kv, end, hd), gathered page by page, or with end None the whole
        pool (a view)."""
        flat = where.flatten()
        self.k[i].index_copy_(1, flat, k.transpose(0, 1).flatten(1, 2).to(self.k[i].dtype))
        self.v[i].index_copy_(1, flat, v.transpose(0, 1).flatten(1, 2).to(self.v[i].dtype))
        B = k.shape[0]
        if end is None:
            return self.k[i][None].expand(B, -1, -1, -1), self.v[i][None].expand(B, -1, -1, -1)
        pages = self.block_table[:, :-(-end // self.page_size)].flatten()  # (B * n,)
        read = lambda pool: pool.view(pool.shape[0], -1, self.page_size, pool.shape[-1]).index_select(1, pages)
        return tuple(read(p).view(p.shape[0], B, -1, p.shape[-1])[:, :, :end].transpose(0, 1)
                     for p in (self.k[i], self.v[i]))

    def decode_mask(self):
        """The BlockMask of one decode step over the whole pool: row b visits its own pages, in
        them the positions <= lengths[b]. Shapes depend only on (rows, pool, table width), so a
        compiled kernel or CUDA graph is reused step after step; the pages are read in place."""
        from torch.nn.attention.flex_attention import BlockMask
        table, lengths, ps = self.block_table, self.lengths, self.page_size
        B, width, pages = table.shape[0], table.shape[1], self.k[0].shape[1] // ps
        # logical[b, page] = the page's index in row b, or far past any length for pages not row b's
        # (the null page too, except for a padding row, whose table is all null: it sees its slot 0)
        far = torch.iinfo(torch.int32).max // (2 * ps)
        logical = torch.full((B, pages), far, dtype=torch.long, device=table.device)
        logical.scatter_(1, table, torch.arange(width, device=table.device).expand(B, -1))
        logical[:, 0] = torch.where(table[:, 0] == 0, 0, far)
        visible = lambda b, h, q, kv: logical[b, kv // ps] * ps + kv % ps <= lengths[b]
        indices = torch.zeros(B, 1, 1, pages, dtype=torch.int32, device=table.device)
        indices[:, 0, 0, :width] = table
        count = (lengths // ps + 1).to(torch.int32).view(B, 1, 1)  # pages of positions <= length
        return BlockMask.from_kv_blocks(count, indices, BLOCK_SIZE=(1, ps), mask_mod=visible,
                                        seq_lengths=(1, pages * ps), compute_q_blocks=False)


class Qwen3(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config, self.gradient_checkpointing = config, False
        self.model = nn.ModuleDict(dict(
            # _weight skips Embedding's normal_ init, whose meta-device path costs seconds
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size,
                                      _weight=torch.empty(config.vocab_size, config.hidden_size)),
            layers=nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps)))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        # a plain fp32 CPU tensor, not a buffer (`.to(bf16)` cannot round it), moved on first use
        self.inv_freq, self.rope_scale = rope_frequencies(config)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Fresh init (after `to_empty`): normal(0, 0.02) matrices, unit norms."""
        self.tie_weights()
        for name, p in self.named_parameters():
            g = None if seed is None else torch.Generator(p.device).manual_seed(seed + zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)

    def rope(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Positions (B or 1, T) -> cos, sin (B or 1, 1, T, hd): fp32 angles, sin's first half
        negated."""
        if self.inv_freq.device != pos.device:
            with torch.inference_mode(False):  # a normal tensor even when first reached in generate
                self.inv_freq = self.inv_freq.to(pos.device)
        freqs = pos[..., None].float() * self.inv_freq  # (B, T, hd/2)
        cos, sin = freqs.cos() * self.rope_scale, freqs.sin() * self.rope_scale
        return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, doc_ids: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """input_ids (B, T) -> final normed hidden states (B, T, H); see KVCache, doc_mask."""
        T, dev, mask = input_ids.shape[1], input_ids.device, None
        if cache is not None:
            assert doc_ids is None, "doc_ids with a KV cache is not supported"
            pos = cache.lengths[:, None] + torch.arange(T, device=dev)  # (B, T)
            end = cache.end + T  # positions past a row's own length are masked: a bound is enough
            room = cache.block_table.shape[1] * cache.page_size
            if end > room:
                raise ValueError(f"KV cache overflow: writing up to position {end}, the table holds {room}")
            if cache.flex and T == 1:  # each row reads its own pages in place
                mask, kv_slots = cache.decode_mask(), (cache.slots(pos), None)
            else:  # gather the rows' positions 0..end-1, mask those past each row's own length
                mask = torch.arange(end, device=dev) <= pos[:, None, :, None]  # (B, 1, T, end)
                kv_slots = (cache.slots(pos), end)  # slots written (B, T), positions read
            position_ids = pos if position_ids is None else position_ids
        elif doc_ids is not None:
            mask = doc_block_mask(doc_ids) if doc_ids.is_cuda else doc_mask(doc_ids)
            position_ids = doc_positions(doc_ids) if position_ids is None else position_ids
        elif position_ids is None:
            position_ids = torch.arange(T, device=dev)[None]  # (1, T): one table for all rows
        h = self.model.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = self.rope(position_ids, h.dtype)
        for i, layer in enumerate(self.model.layers):
            kv = None if cache is None else (cache, i, *kv_slots)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, cos, sin, mask, kv, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, kv)
        if cache is not None:
            cache.lengths, cache.end = cache.lengths + T, end
        return self.model.norm(h)


def build_model(config: Qwen3Config, device="cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = None) -> Qwen3:
    with torch.device("meta"):
        model = Qwen3(config).to(dtype)
    model.to_empty(device=device)
    model.init_weights(seed=seed)
    return model


def load_pretrained(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> Qwen3:
    """HF checkpoint folder (config.json + safetensors, single or sharded) -> Qwen3 on `device` in
    `dtype`. On device "meta" only the tensors' names and shapes are read."""
    from safetensors import safe_open
    path = Path(path)
    config = Qwen3Config.from_json(path / "config.json")
    index, files = path / "model.safetensors.index.json", [path / "model.safetensors"]
    if index.is_file():  # sharded: the files the index names
        try:
            files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError) as e:
            raise ValueError(f"bad checkpoint index {index}: {e!r}") from e
    sd = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {file}")
        try:
            with safe_open(str(file), framework="pt") as f:
                sd.update({k: torch.empty(f.get_slice(k).get_shape(), device="meta") if device == "meta"
                           else f.get_tensor(k) for k in f.keys()})
        except Exception as e:  # truncated or corrupt: safetensors raises its own error type
            raise ValueError(f"cannot read safetensors file {file} (truncated or corrupt?): {e}") from e
    if config.tie_word_embeddings:  # stored once or twice, the head is the embedding
        w = sd.get("model.embed_tokens.weight", sd.get("lm_head.weight"))
        if w is not None:
            sd["model.embed_tokens.weight"] = sd["lm_head.weight"] = w
    sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    with torch.device("meta"):
        model = Qwen3(config)
    try:  # strict: names every missing and unexpected tensor and every shape mismatch
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not match its config.json: {e}") from e
    model.tie_weights()  # assign=True made two Parameters; make them one again
    return model


def save_pretrained(model: Qwen3, path: str | Path, max_shard_size: int = 5 * 2**30,
                    state_dict: dict[str, Tensor] | None = None) -> None:
    """Write config.json + safetensors (sharded past max_shard_size bytes), atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    sd = model.state_dict() if state_dict is None else state_dict
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()
          if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    # greedy split in state-dict order; a tensor larger than max_shard_size gets a shard of its own
    shards, size = [{}], 0
    for k, v in sd.items():
        if shards[-1] and size + v.numel() * v.element_size() > max_shard_size:
            shards, size = shards + [{}], 0
        shards[-1][k], size = v, size + v.numel() * v.element_size()
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    dtype = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps({**model.config.to_dict(), "torch_dtype": dtype}, indent=2))
    fsync_dir(tmp)
    replace_dir(tmp, path)


def atomic_write(path: str | Path, text: str) -> None:
    """Write a file whole or not at all: a sibling temp file, flushed, renamed into place."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's files (not its subfolders) and the folder itself to disk."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the complete folder src to dst; an existing dst is moved aside, then removed."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] != ["--check"] or len(sys.argv) != 3:
        sys.exit("usage: python model.py --check DIR")
    try:  # the preflight train.sh runs: config, files, tensor names and shapes, no data read
        cfg = load_pretrained(sys.argv[2], device="meta").config
    except (OSError, ValueError) as e:
        sys.exit(f"model.py --check: {e}")
    print(f"{sys.argv[2]}: complete Qwen3 checkpoint ({cfg.num_hidden_layers} layers, "
          f"hidden {cfg.hidden_size})")
