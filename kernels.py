"""The LM head without (N, V) logits in memory: fused log-probs and entropy for training, and the
sampler.

- `token_logprobs(hidden (N, H), weight (V, H), targets (N,), temperature, return_entropy,
  backend)`: log softmax(hidden @ weight.T / temperature)[target] (fp32; fp64 for fp64 inputs) and
  the entropy, differentiable in hidden and weight; IGNORE_INDEX targets give 0. The forward keeps
  O(N) stats and the backward recomputes each chunk's logits: memory flat in N for one more logits
  GEMM.
- Backends: "torch" (chunked matmuls), "triton" (CUDA: online softmax over vocab blocks, dlogits
  tiles then two cuBLAS GEMMs), "naive" (full logits: tests, benchmarks), "auto" (triton on CUDA,
  else torch).
- `fp32_logits`, then `sample`: an exponential race whose noise hashes (row seed, vocab id), so a
  draw never depends on the batch (`row_seeds`).

    python bench.py kernels          # CPU: fused vs naive, memory and time
    python bench.py kernels_gpu      # GPU: Triton TFLOP/s and memory vs naive
    pytest tests/test_kernels.py     # Triton parts re-run in a subprocess under TRITON_INTERPRET=1
"""
from __future__ import annotations  # keeps `tl.constexpr` annotations lazy: imports without triton

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch backend still works
    triton = tl = None
_jit = triton.jit if triton is not None else lambda fn: fn

IGNORE_INDEX = -100
# (chunk, V) logits per torch chunk: 80M elements = 526 tokens at V = 151936 (320 MB fp32); on a
# 2-core CPU 512-token chunks beat 256 and 1024 on wall time (the GEMMs dominate either way)
TORCH_CHUNK_ELEMS = 80_000_000
TRITON_CHUNK_BYTES = 2**30  # the Triton backward's (chunk, V) dlogits buffer, in the input dtype


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False, backend: str = "auto"):
    """logp (N,) fp32 (fp64 for fp64 inputs), or (logp, entropy); 0 where the target is ignored."""
    assert backend in ("auto", "torch", "triton", "naive"), f"unknown backend {backend!r}"
    assert hidden.dim() == weight.dim() == 2 and hidden.shape[1] == weight.shape[1], "hidden (N, H), weight (V, H)"
    assert targets.shape == hidden.shape[:1] and targets.dtype == torch.long, "targets: (N,) torch.long"
    assert hidden.is_floating_point() and hidden.dtype == weight.dtype, "hidden and weight: one float dtype"
    assert temperature > 0, f"temperature must be > 0, got {temperature}"
    if backend == "auto":
        backend = "triton" if hidden.is_cuda and triton is not None else "torch"
    if backend == "naive":
        return naive_token_logprobs(hidden, weight, targets, temperature, return_entropy)
    idx = (targets != IGNORE_INDEX).nonzero().squeeze(1)  # (n_valid,)
    tgt = targets.index_select(0, idx)
    V = weight.shape[0]
    assert not tgt.numel() or (tgt.min() >= 0 and tgt.max() < V), f"targets outside [0, {V}) and not ignored"
    h = hidden.index_select(0, idx)  # (n_valid, H)
    logp, ent = _LogProbs.apply(h, weight.contiguous(), tgt, 1.0 / temperature, return_entropy, backend)
    logp = logp.new_zeros(targets.shape[0]).index_copy(0, idx, logp)
    return (logp, ent.new_zeros(targets.shape[0]).index_copy(0, idx, ent)) if return_entropy else logp


def naive_token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False):
    """Reference: full (N, V) logits, log_softmax, gather. Tests and benchmarks only."""
    # (N, V) fp32/fp64
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)  # (N, V)
    valid = targets != IGNORE_INDEX
    logp = torch.where(valid, logp_all.gather(1, targets.clamp(min=0)[:, None]).squeeze(1), 0.0)
    return (logp, torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), 0.0)) if return_entropy else logp


class _LogProbs(torch.autograd.Function):
    """(hidden (n, H), weight (V, H), targets (n,)) -> (logp (n,), entropy (n,)); saves O(n) stats.
    Per logit z (p = softmax(z), t = target, Hent = entropy): dlogp/dz = onehot_t - p and
    dHent/dz = -p (log p + Hent), both times 1/temperature on the way back to hidden @ weight.T."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_t, want_entropy, backend):
        fwd = _torch_forward if backend == "torch" else _triton_forward
        lse, z_tgt, ent = fwd(hidden, weight, targets, inv_t, want_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.cfg = (inv_t, backend)
        ctx.set_materialize_grads(False)  # an unused output gives None, and its terms are skipped
        return z_tgt - lse, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        inv_t, backend = ctx.cfg
        # fold 1/temperature (d z / d (h W^T)) into the per-row output grads; dz is linear in them
        gl = lse.new_zeros(lse.shape) if g_logp is None else g_logp.to(lse.dtype) * inv_t  # (n,)
        ge = None if g_ent is None else g_ent.to(lse.dtype) * inv_t  # (n,)
        bwd = _torch_backward if backend == "torch" else _triton_backward
        dh, dw = bwd(hidden, weight, targets, lse, ent, gl, ge, inv_t)
        return dh, dw, None, None, None, None


def _chunks(n: int, chunk: int):
    return ((s, min(s + chunk, n)) for s in range(0, n, chunk))


def _torch_logits(h, w, inv_t, out):
    """(C, H) x (V, H) -> (C, V) logits / temperature into `out`, scaling the small side."""
    h = h.to(w.dtype)
    return torch.mm(h if inv_t == 1.0 else h * inv_t, w.T, out=out[:h.shape[0]])


def _torch_buffers(n: int, w: torch.Tensor, count: int) -> tuple[int, list[torch.Tensor]]:
    """`count` (chunk, V) buffers, once per call: a fresh 300 MB tensor per chunk is mmap'ed,
    page-faulted and unmapped again by the allocator (~10% of the CPU time)."""
    chunk = max(1, min(n, TORCH_CHUNK_ELEMS // w.shape[0]))
    return chunk, [w.new_empty(chunk, w.shape[0]) for _ in range(count)]


def _torch_forward(hidden, weight, targets, inv_t, want_entropy):
    cdt = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    w = weight.to(cdt)  # (V, H); no copy for fp32 / fp64
    lse, z_tgt, ent = (hidden.new_zeros(hidden.shape[0], dtype=cdt) for _ in range(3))
    chunk, bufs = _torch_buffers(hidden.shape[0], w, 1 + want_entropy)
    for s, e in _chunks(hidden.shape[0], chunk):
        z = _torch_logits(hidden[s:e], w, inv_t, bufs[0])  # (C, V)
        z_tgt[s:e] = z.gather(1, targets[s:e, None]).squeeze(1)
        m = z.amax(1, keepdim=True)  # (C, 1)
        z.sub_(m)
        p = torch.exp(z, out=bufs[1][:e - s]) if want_entropy else z.exp_()  # exp(z - m)
        total = p.sum(1)  # (C,)
        lse[s:e] = m.squeeze(1) + total.log()
        # H = lse - sum_v p_v z_v = log total - sum_v exp(z_v - m) (z_v - m) / total
        if want_entropy:
            ent[s:e] = total.log() - p.mul_(z).sum(1) / total
    return lse, z_tgt, ent


def _torch_backward(hidden, weight, targets, lse, ent, gl, ge, inv_t):
    w = weight.to(lse.dtype)  # (V, H)
    dh = torch.empty(hidden.shape, dtype=w.dtype, device=w.device)  # (N, H)
    dw = torch.zeros_like(w)  # (V, H), accumulated over chunks
    chunk, bufs = _torch_buffers(hidden.shape[0], w, 1 + (ge is not None))
    for s, e in _chunks(hidden.shape[0], chunk):
        h = hidden[s:e].to(w.dtype)
        # in place: logits -> dz = gl (onehot - p) - ge p (log p + H), scaled by 1/temperature
        logp = _torch_logits(h, w, inv_t, bufs[0]).sub_(lse[s:e, None])  # (C, V)
        if ge is None:
            dz = logp.exp_().mul_(-gl[s:e, None])  # one (C, V) buffer
        else:
            p = torch.exp(logp, out=bufs[1][:e - s])
            dz = logp.add_(ent[s:e, None]).mul_(ge[s:e, None]).add_(gl[s:e, None]).mul_(p).neg_()
        dz.scatter_add_(1, targets[s:e, None], gl[s:e, None])
        torch.mm(dz, w, out=dh[s:e])
        dw.addmm_(dz.T, h)
    return dh.to(hidden.dtype), dw.to(weight.dtype)


@_jit
def _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    # (BN, BV) fp32 tile of hidden[rows] @ weight[cols].T, over H in BK steps on the tensor cores
    acc = tl.zeros((BN, BV), dtype=tl.float32)
    for k0 in range(0, H, BK):
        k = k0 + tl.arange(0, BK)
        a = tl.load(h_ptr + rows[:, None] * H + k[None, :], mask=(rows[:, None] < N) & (k[None, :] < H), other=0.0)
        b = tl.load(w_ptr + cols[:, None] * H + k[None, :], mask=(cols[:, None] < V) & (k[None, :] < H), other=0.0)
        if UPCAST:  # the CPU interpreter mis-computes bf16 tl.dot; real GPUs keep bf16 tiles
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    return acc


@_jit
def _fwd_kernel(h_ptr, w_ptr, tgt_ptr, stats_ptr, N, V, H, v_per_split, inv_t, BN: tl.constexpr,
                BV: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    # program (token block, vocab split) -> stats[:, split, rows] = running max m, sum exp(z - m),
    # sum exp(z - m) * z, and the target logit if the target lies in this split (else 0)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)  # (BN,)
    split = tl.program_id(1)
    tgt = tl.load(tgt_ptr + rows, mask=rows < N, other=-1)
    m = tl.full((BN,), float("-inf"), tl.float32)
    s, e, zt = tl.zeros((BN,), tl.float32), tl.zeros((BN,), tl.float32), tl.zeros((BN,), tl.float32)
    v_lo = split * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    for v0 in range(v_lo, v_hi, BV):
        cols = v0 + tl.arange(0, BV)  # (BV,)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, N, v_hi, H, BN, BV, BK, UPCAST, PREC) * inv_t
        valid = cols[None, :] < v_hi  # past the split's end z = 0 (masked loads); keep p = 0 there
        m_new = tl.maximum(m, tl.max(tl.where(valid, z, float("-inf")), 1))
        alpha = tl.exp(m - m_new)
        p = tl.where(valid, tl.exp(z - m_new[:, None]), 0.0)
        s = s * alpha + tl.sum(p, 1)
        e = e * alpha + tl.sum(p * z, 1)
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
        m = m_new
    out = stats_ptr + split * N + rows
    n_splits = tl.num_programs(1)
    tl.store(out, m, mask=rows < N)
    tl.store(out + n_splits * N, s, mask=rows < N)
    tl.store(out + 2 * n_splits * N, e, mask=rows < N)
    tl.store(out + 3 * n_splits * N, zt, mask=rows < N)


@_jit
def _dlogits_kernel(h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, gl_ptr, ge_ptr, dz_ptr, N, V, H, inv_t,
                    HAS_GE: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr,
                    UPCAST: tl.constexpr, PREC: tl.constexpr):
    # program (token block, vocab block): recompute the logits tile, write dz = gl (onehot - p)
    # - ge p (log p + H); token blocks vary fastest, so neighbours share a weight tile
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    rmask = rows < N
    z = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, BN, BV, BK, UPCAST, PREC) * inv_t
    logp = z - tl.load(lse_ptr + rows, mask=rmask, other=0.0)[:, None]
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0)[:, None]
    coef = gl  # (BN, 1), or (BN, BV) with the entropy term
    if HAS_GE:
        ge = tl.load(ge_ptr + rows, mask=rmask, other=0.0)[:, None]
        coef = gl + ge * (logp + tl.load(ent_ptr + rows, mask=rmask, other=0.0)[:, None])
    tgt = tl.load(tgt_ptr + rows, mask=rmask, other=-1)
    dz = tl.where(cols[None, :] == tgt[:, None], gl, 0.0) - tl.exp(logp) * coef
    mask = rmask[:, None] & (cols[None, :] < V)
    tl.store(dz_ptr + rows[:, None] * V + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)


def _triton_setup(hidden):
    """Launch config: H200-sized tiles on CUDA; tiny tiles, fp32 dots under TRITON_INTERPRET=1."""
    assert triton is not None, "backend='triton' needs the triton package"
    assert hidden.dtype in (torch.float32, torch.bfloat16, torch.float16), f"triton: no {hidden.dtype}"
    prec = "ieee" if hidden.dtype == torch.float32 else "tf32"  # fp32 stays exact; bf16 ignores it
    if hidden.is_cuda:
        return dict(BN=128, BV=128, BK=64, UPCAST=False, PREC=prec, num_warps=8, num_stages=3)
    assert os.environ.get("TRITON_INTERPRET") == "1", "backend='triton' needs CUDA, or TRITON_INTERPRET=1"
    return dict(BN=16, BV=64, BK=16, UPCAST=True, PREC=prec)


def _triton_forward(hidden, weight, targets, inv_t, want_entropy):
    cfg = _triton_setup(hidden)
    (n, h), v = hidden.shape, weight.shape[0]
    n_blocks, v_blocks = triton.cdiv(n, cfg["BN"]), triton.cdiv(v, cfg["BV"])
    # split the vocab so that token blocks x splits fill the GPU about twice; 2 in the interpreter
    sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count if hidden.is_cuda else 0
    splits = min(v_blocks, max(1, triton.cdiv(2 * sms, max(n_blocks, 1))) if sms else 2)
    v_per_split = triton.cdiv(v_blocks, splits) * cfg["BV"]
    splits = triton.cdiv(v, v_per_split)
    # m, sum exp, sum exp * z, z_tgt
    stats = torch.empty(4, splits, n, dtype=torch.float32, device=hidden.device)
    if n:
        _fwd_kernel[(n_blocks, splits)](hidden, weight, targets, stats, n, v, h, v_per_split, inv_t, **cfg)
    m, s, e, z_tgt = stats
    scale = torch.exp(m - m.max(0).values)  # (splits, n): merge the per-split online softmax states
    s_all, e_all = (s * scale).sum(0), (e * scale).sum(0)
    lse = m.max(0).values + s_all.log()
    return lse, z_tgt.sum(0), lse - e_all / s_all  # entropy = lse - sum p z


def _triton_backward(hidden, weight, targets, lse, ent, gl, ge, inv_t):
    cfg = _triton_setup(hidden)
    (n, h), v = hidden.shape, weight.shape[0]
    chunk = max(cfg["BN"], TRITON_CHUNK_BYTES // (v * hidden.element_size()) // cfg["BN"] * cfg["BN"])
    dz = torch.empty(min(chunk, n), v, dtype=hidden.dtype, device=hidden.device)
    dh, dw = torch.empty_like(hidden), torch.zeros_like(weight, dtype=torch.float32)  # dw: fp32 sum
    for s, e in _chunks(n, chunk):
        grid = (triton.cdiv(e - s, cfg["BN"]), triton.cdiv(v, cfg["BV"]))
        _dlogits_kernel[grid](hidden[s:e], weight, targets[s:e], lse[s:e], ent[s:e], gl[s:e],
                              gl[s:e] if ge is None else ge[s:e], dz, e - s, v, h, inv_t, HAS_GE=ge is not None,
                              **cfg)
        dh[s:e] = dz[: e - s] @ weight  # cuBLAS: (C, V) @ (V, H)
        dw += dz[: e - s].T @ hidden[s:e]  # (V, C) @ (C, H): fp32 inside, rounded once per chunk
    return dh, dw.to(weight.dtype)


# ------------------------------------------------------------------------------- sampling (rollout)
M32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, 2 rounds) on int64 tensors of [0, 2^32) values."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    return (x >> 16) ^ x


def _noise(row_seed: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Exponential(1) noise (B, K) for rows (B,) at vocab ids (B or 1, K): a pure function of (row
    seed, id), so a sequence's draws never depend on which other sequences share its batch."""
    x = _mix((row_seed[:, None] + vocab_ids * 0x9E3779B1) & M32)  # (B, K) 32 random bits
    u = ((x >> 8).float() + 0.5) * 2.0 ** -24  # uniform in (0, 1), 24 bits
    return -torch.log(u)


def row_seeds(seed: int, keys: list[int], steps: list[int], device) -> torch.Tensor:
    """One 32-bit seed per row from (seed, the sequence's key, its token index)."""
    base = int(_mix(_mix(torch.tensor(seed & M32)) ^ (seed >> 32 & M32)))  # both seed halves
    k = torch.tensor([[key & M32, t] for key, t in zip(keys, steps)], dtype=torch.long).to(device)
    return _mix(_mix(base ^ k[:, 0]) ^ k[:, 1])


def fp32_logits(h: torch.Tensor, head: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """(B, H) -> logits (B, V) accumulated and kept in fp32 (bf16-rounded logits would put ~1e-3
    between sampler and trainer log-probs). CUDA: bf16 products, fp32 out; else `head` is fp32."""
    if h.is_cuda and h.dtype != torch.float32:
        return torch.mm(h, head.t(), out_dtype=torch.float32)
    return torch.mm(h.float(), head.t(), out=buf[:h.shape[0]])  # reused: no page faults per step


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, row_seed):
    """logits (B, V) fp32 (overwritten) -> tokens (B,), log-probs (B,) under softmax(logits / T)
    before filtering. The draw is an exponential race: argmax p_i / E_i, E_i ~ Exp(1) (`_noise`)."""
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
