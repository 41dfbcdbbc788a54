"""The CUDA-only code paths (FlexAttention document masks, masked SDPA with repeated KV heads, decoding on the
device, bf16 sampling) against the CPU fp32 reference. Skipped without a GPU; tests/gpu.sh runs them on one.
CUDA_TEST_DEVICE=cpu runs the same comparisons on the CPU, which checks the tests themselves."""
import copy
import os

import pytest
import torch

import rollout
from model import Qwen3Config, build_model

DEV = os.environ.get("CUDA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU")

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
