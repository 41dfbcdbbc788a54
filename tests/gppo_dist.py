"""Helpers for tests/test_gppo.py, and the script it launches with torchrun (2 ranks, gloo):
the sharded-gradient check against a one-process reference, then an end-to-end GPPO run.

  torchrun --nproc_per_node 2 tests/gppo_dist.py -- <gppo.py arguments>
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gppo  # noqa: E402
import kernels  # noqa: E402
import model as qwen3  # noqa: E402
import sft  # noqa: E402

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)


def tiny_model(seed: int = 0) -> qwen3.Qwen3:
    return qwen3.build_model(qwen3.Qwen3Config.from_dict(TINY), "cpu", torch.float32, seed=seed)


def make_items(model, n: int = 10, seed: int = 0) -> list[dict]:
    """Rollouts with random prompts/responses/advantages, some masked out, some 'correct' (NLL term); the old
    log-probs are the model's own plus noise, so ratios fall on both sides of the clip bounds."""
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi, k=1: torch.randint(lo, hi, (k,), generator=g).tolist()
    items = []
    for i in range(n):
        prompt, tokens = ri(0, 64, ri(2, 8)[0]), ri(0, 64, ri(1, 7)[0])
        it = dict(prompt=prompt, tokens=tokens, len=len(prompt) + len(tokens) - 1, logprobs=[0.0] * len(tokens),
                  adv=float(torch.randn(1, generator=g)), weight=float(i % 5 != 4), sft=float(i % 3 == 0))
        with torch.no_grad():
            lp = gppo.forward_logp(model, gppo.collate([it], 0, "cpu"), 1.0)[0]
        it["logprobs"] = (lp + 0.4 * torch.randn(len(tokens), generator=g)).tolist()
        items.append(it)
    return items


def reference_grads(model, items: list[dict], a) -> dict:
    """Independent reference: the whole mini-batch in one forward, plain token means, no FSDP."""
    b = gppo.collate(items, 0, "cpu")
    hidden = model(b["input_ids"])
    logp = kernels.token_logprobs(hidden[b["valid"]], model.lm_head.weight, b["targets"][b["valid"]], 1.0)
    pg, _ = gppo.policy_loss(logp, b["sampler_logp"], b["adv"], b["mask"], a.loss, a.eps_low, a.eps_high,
                             a.dual_clip, a.beta_low, a.beta_high)
    (pg + a.sft_alpha * -(logp * b["sft"]).sum() / b["sft"].sum()).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def gppo_grads(model, items: list[dict], a) -> dict:
    """gppo's own path: build_plan (micro-batches, dummies for equal counts over ranks), collate, accumulate."""
    ctx = gppo.Context(args=a, model=model)
    plan = gppo.build_plan(ctx, [[it] for it in items], items[0])
    assert len(plan) == 1
    mini = [gppo.collate(m, 0, "cpu") for m in plan[0]]
    for b in mini:
        b["old_logp"] = b["sampler_logp"]
    gppo.accumulate(ctx, mini, gppo.UpdateSums())
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t
    return {k: full(p.grad).clone() for k, p in model.named_parameters()}, len(mini)


def gradcheck_2ranks(dist) -> None:
    a = gppo.parse_args(["--model", "-", "--data", "-", "--micro-tokens", "20", "--mini-batch-prompts", "100"])
    base = tiny_model()
    items = make_items(base)
    ref = reference_grads(copy.deepcopy(base), items, a)
    mine = items[:7] if dist.rank == 0 else items[7:]  # uneven: rank 1 runs dummy micro-batches
    assert len(gppo.plan_micro(items[7:], a.micro_tokens)) < len(gppo.plan_micro(items[:7], a.micro_tokens))
    got, n_micro = gppo_grads(sft.shard_model(copy.deepcopy(base), dist), mine, a)
    diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
    scale = max(r.abs().max().item() for r in ref.values())
    assert diff < 1e-5 * max(scale, 1.0), f"rank {dist.rank}: sharded gradient differs from reference by {diff}"
    sft.print0(f"GRADCHECK OK max|diff| {diff:.2e} (grad scale {scale:.2e}, {n_micro} micro-batches)")


if __name__ == "__main__":
    with sft.distributed_run():
        gradcheck_2ranks(sft.init_distributed())
        argv = sys.argv[1:]
        gppo.train(gppo.parse_args(argv[1:] if argv[:1] == ["--"] else argv))
