"""The CUDA-only code paths (FlexAttention document masks, masked SDPA with repeated KV heads, decoding on the
device, bf16 sampling) against the CPU fp32 reference, then the production shapes on the GPU: Qwen3-8B's attention
(32 / 8 heads, head_dim 128) over an 8K packed row with FlexAttention vs SDPA, the document mask's memory at 32K,
and the Triton LM head at N=4096, H=4096, V=151936 in bf16. Skipped without a GPU; tests/gpu.sh runs them on one.
CUDA_TEST_DEVICE=cpu runs the small comparisons on the CPU, which checks the tests themselves (the production
shapes need the GPU and are skipped there)."""
import copy
import dataclasses
import os
from unittest import mock

import pytest
import torch

import kernels
import model as M
import rollout
from model import Qwen3Config, build_model

DEV = os.environ.get("CUDA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU")
REAL = pytest.mark.skipif(not DEV.startswith("cuda"), reason="production shapes: CUDA only (FlexAttention, Triton)")

CFG = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False)
PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3]]


@pytest.fixture(scope="module")
def pair():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 products without TF32: comparable with the CPU to 1e-4
    cpu = build_model(CFG, seed=0)
    with torch.no_grad():  # untied: only the head is scaled, for clear argmaxes; the embeddings stay small, so
        cpu.lm_head.weight.mul_(25)  # the output depends on attention over the whole prompt
    yield cpu.eval(), copy.deepcopy(cpu).to(DEV).eval()
    torch.set_float32_matmul_precision(before)


def ids_and_docs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CFG.vocab_size, (2, 40), generator=g)
    docs = torch.tensor([[0] * 15 + [1] * 25, [0] * 7 + [1] * 20 + [2] * 13])  # packed rows, ragged documents
    return ids, docs


@pytest.mark.parametrize("packed", [False, True])  # True: FlexAttention's block mask on CUDA
def test_forward_and_backward_match_cpu(pair, packed):
    ids, docs = ids_and_docs()
    out = []
    for m, dev in zip(pair, ("cpu", DEV)):
        m.zero_grad()
        logits = m.lm_head(m(ids.to(dev), doc_ids=docs.to(dev) if packed else None)).float()
        logits.logsumexp(-1).mean().backward()
        grads = [p.grad.cpu() for p in (m.model.embed_tokens.weight, m.model.layers[0].self_attn.q_proj.weight)]
        out.append([logits.detach().cpu(), *grads])
    for ours, ref in zip(out[1], out[0]):
        assert ref.abs().max() > 1e-3  # not a trivially small comparison
        assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_greedy_generate_matches_cpu_and_trainer(pair):
    ref, got = (rollout.generate(m, PROMPTS, max_new_tokens=16, temperature=0) for m in pair)
    assert len({t for s in ref for t in s.tokens}) > 8  # not a model that repeats one token
    for a, b, p in zip(ref, got, PROMPTS):
        with torch.no_grad():  # a near-tie could flip on another device: make it a clear failure, not a flaky one
            top2 = pair[0].lm_head(pair[0](torch.tensor([p + a.tokens]))).float()[0, len(p) - 1:-1].topk(2).values
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-3
        assert b.tokens == a.tokens and len(b.tokens) == 16
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-4
        with torch.no_grad():  # the trainer's view on the device: one forward over prompt + completion
            seq = torch.tensor([p + b.tokens], device=DEV)
            lp = pair[1].lm_head(pair[1](seq)).float().log_softmax(-1)[0, len(p) - 1:-1]
        trainer = lp.gather(1, seq[0, len(p):, None]).squeeze(1).cpu()
        assert (trainer - torch.tensor(b.logprobs)).abs().max() <= 1e-4


@pytest.mark.parametrize("top_p", [1.0, 0.95])  # plain sampling (RL's) and the nucleus path
def test_bf16_sampling_runs_and_agrees_with_its_trainer(top_p):
    m = build_model(CFG, DEV, torch.bfloat16, seed=1).eval()  # unscaled head: small logits, small bf16 error
    with torch.no_grad():
        m.lm_head.weight.mul_(8)  # a distribution that top-p 0.95 really cuts
    stops = (7, 11, 13, 17, 19, 23)  # several samples stop, so finished rows leave the batch
    out = rollout.generate(m, PROMPTS, n=4, max_new_tokens=24, temperature=1.0, top_p=top_p, stop_ids=stops, seed=3)
    assert len(out) == 12 and [s.prompt_index for s in out] == [i // 4 for i in range(12)]
    assert sum(s.finish_reason == "stop" for s in out) >= 2
    diffs = []
    for s in out:
        p = PROMPTS[s.prompt_index]
        assert 1 <= len(s.tokens) <= 24 and (s.finish_reason == "stop") == (s.tokens[-1] in stops)
        assert all(0 <= t < CFG.vocab_size for t in s.tokens) and all(-30 < x <= 0 for x in s.logprobs)
        with torch.no_grad():
            seq = torch.tensor([p + s.tokens], device=DEV)
            lp = m.lm_head(m(seq)).float().log_softmax(-1)[0, len(p) - 1:-1]
        diffs.append((lp.gather(1, seq[0, len(p):, None]).squeeze(1).cpu() - torch.tensor(s.logprobs)).abs())
    diffs = torch.cat(diffs)
    print(f"bf16 sampler vs trainer log-probs: mean |diff| {diffs.mean():.2e}, max {diffs.max():.2e}")
    assert diffs.mean() < 0.02 and diffs.max() < 0.2  # bf16 rounding of two different kernel orders


# ------------------------------------------------------------------------------------- production shapes (CUDA)
# Qwen3-8B's attention (32 query heads, 8 KV heads, head_dim 128) in one layer; a narrow residual stream keeps the
# projections small: the kernels under test only see (B, heads, T, 128) tensors.
ATTN_8B = Qwen3Config(vocab_size=1024, hidden_size=1024, intermediate_size=1024, num_hidden_layers=1,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                      tie_word_embeddings=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def ragged_docs(T: int, seed: int) -> torch.Tensor:
    """(1, T) document ids of 6 documents with random lengths (block boundaries fall inside documents)."""
    cuts = sorted(torch.randint(1, T, (5,), generator=torch.Generator().manual_seed(seed)).tolist())
    return torch.cat([torch.full((b - a,), i) for i, (a, b) in enumerate(zip([0] + cuts, cuts + [T]))])[None]


def packed_step(model, ids, docs, flex: bool, probe) -> list[torch.Tensor]:
    """Forward + backward of a packed row through FlexAttention (flex) or SDPA with an explicit mask; returns the
    output and the q/k/v projection gradients (what the attention backward produces), in fp32."""
    model.zero_grad(set_to_none=True)
    with mock.patch.object(M, "doc_block_mask", M.doc_block_mask if flex else M.doc_mask):  # CUDA's or the CPU mask
        h = model(ids, doc_ids=docs)
    (h.float() * probe).sum().backward()
    att = model.model.layers[0].self_attn
    return [h.detach().float()] + [p.grad.float() for p in (att.q_proj.weight, att.k_proj.weight, att.v_proj.weight)]


@REAL
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flex_attention_matches_sdpa_at_8b_shapes_without_recompiles(dtype):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 without TF32 on both paths
    try:
        ref_model = build_model(ATTN_8B, DEV, torch.float32, seed=0)
        model = copy.deepcopy(ref_model).to(dtype)
        T, g = 8192, torch.Generator().manual_seed(0)
        ids = torch.randint(0, ATTN_8B.vocab_size, (1, T), generator=g).to(DEV)
        probe = torch.randn(1, T, ATTN_8B.hidden_size, generator=g).to(DEV)
        docs = ragged_docs(T, 0).to(DEV)
        ref = packed_step(ref_model, ids, docs, False, probe)  # fp32 SDPA: the reference
        flex, sdpa = packed_step(model, ids, docs, True, probe), packed_step(model, ids, docs, False, probe)
        for name, f, s, x in zip(("out", "grad q_proj", "grad k_proj", "grad v_proj"), flex, sdpa, ref):
            e_flex, e_sdpa = rel(f, x), rel(s, x)
            print(f"{dtype} {name}: relative L2 error vs fp32 SDPA: flex {e_flex:.2e}, sdpa {e_sdpa:.2e}")
            assert x.norm() > 0 and torch.isfinite(f).all()
            # fp32: the same maths in another order; bf16: no worse than SDPA's own bf16 rounding
            assert e_flex <= (1e-4 if dtype == torch.float32 else min(2 * e_sdpa + 1e-3, 0.05)), name
        # other document layouts of the same length reuse the compiled kernel (and the mask builder, if compiled)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for seed in (1, 2, 3):
                out = packed_step(model, ids, ragged_docs(T, seed).to(DEV), True, probe)
                assert torch.isfinite(out[0]).all()
    finally:
        torch.set_float32_matmul_precision(before)


@REAL
def test_document_mask_memory_at_32k():
    """SFT's 32K rows: the document mask must not hold per-(query, key) data (an eager create_block_mask holds ~10
    bytes per pair: 10 GiB at 32K). Peak memory of a packed forward minus a plain causal one of the same row (one
    layer with the 8B attention heads, bf16, no grad): what the mask costs."""
    cfg = dataclasses.replace(ATTN_8B, hidden_size=256, intermediate_size=256)
    model = build_model(cfg, DEV, torch.bfloat16, seed=0).eval()
    T = 32768
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(0)).to(DEV)
    docs = ragged_docs(T, 0).to(DEV)

    @torch.no_grad()
    def peak(**kw) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(ids, **kw)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    peak(doc_ids=docs)  # compiles (FlexAttention, and the mask builder if compiled) at this length
    causal, packed = peak(), peak(doc_ids=docs)
    print(f"T={T}: peak extra memory, causal forward {causal / 2**20:.0f} MiB, packed {packed / 2**20:.0f} MiB")
    assert packed - causal < 2**30, (causal, packed)


@REAL
def test_triton_lm_head_matches_naive_at_8b_shapes():
    """The fused LM head at a production shape (N=4096 tokens, H=4096, Qwen3's V=151936) in bf16, temperature 0.7,
    every 7th token ignored: log-probs, entropy and both gradients against fp32 logits of the same bf16 values."""
    N, H, V = 4096, 4096, 151936
    g = torch.Generator(device=DEV).manual_seed(0)
    hidden = torch.randn(N, H, device=DEV, generator=g).to(torch.bfloat16)
    weight = (torch.randn(V, H, device=DEV, generator=g) * 0.02).to(torch.bfloat16)
    targets = torch.randint(0, V, (N,), device=DEV, generator=g)
    targets[::7] = kernels.IGNORE_INDEX

    def run(backend: str, h: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        logp, ent = kernels.token_logprobs(h, w, targets, 0.7, return_entropy=True, backend=backend)
        (logp.sum() + 0.1 * ent.sum()).backward()
        return [t.detach().float() for t in (logp, ent, h.grad, w.grad)]

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        ref = run("naive", hidden.float(), weight.float())  # exact products of the bf16 values, fp32 sums
    finally:
        torch.set_float32_matmul_precision(before)
    tri, naive = run("triton", hidden, weight), run("naive", hidden, weight)  # naive bf16: a plain LM head's error
    for name, t, n, x in zip(("logp", "entropy", "grad hidden", "grad weight"), tri, naive, ref):
        print(f"{name}: relative L2 error vs fp32: triton {rel(t, x):.2e}, naive bf16 {rel(n, x):.2e}; "
              f"max abs triton {(t - x).abs().max():.2e}")
        assert x.norm() > 0 and torch.isfinite(t).all()
        assert rel(t, x) <= min(2 * rel(n, x) + 1e-3, 2e-2), name
    assert (tri[0] - ref[0]).abs().max() < 2e-3 and (tri[1] - ref[1]).abs().max() < 2e-3
    assert tri[0][::7].abs().max() == 0 and tri[2][::7].abs().max() == 0  # ignored tokens: no value, no gradient


# ------------------------------------------------------------------------------ the engine's device decode (CUDA)
@REAL
def test_flex_decode_and_cuda_graphs_equal_the_plain_decode_on_the_device(pair):
    """FlexAttention over the paged pool (each row its own pages) and its CUDA-graph replay against the gather
    path, with a KV budget that forces evictions and refills, in fp32 without TF32."""
    m = pair[1]
    prompts = [[1 + i, 2, 3, 4, 5][:1 + i % 5] * (1 + i % 3) for i in range(6)]
    kw = dict(n=2, max_new_tokens=24, temperature=1.0, seed=3, max_rows=4, max_kv_tokens=96)
    stats = rollout.EngineStats()
    plain = rollout.generate(m, prompts, flex=False, graphs=False, **kw)
    flex = rollout.generate(m, prompts, flex=True, graphs=False, **kw)
    graphs = rollout.generate(m, prompts, flex=True, graphs=True, stats=stats, **kw)
    assert stats.preemptions > 0 and not rollout._capture.failed  # every row count was captured
    for a, b, c in zip(plain, flex, graphs):
        assert a.tokens == b.tokens == c.tokens
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-5
        assert max(abs(x - y) for x, y in zip(b.logprobs, c.logprobs)) <= 1e-6  # the same kernels, replayed
