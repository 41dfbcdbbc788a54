"""GPPO reinforcement learning, Klear-Reasoner's RL stage (docs/ALGORITHM.md sections 2-4), on FSDP2
over any number of ranks. One RL step (`rl_step`): draw prompts -> rollout.generate (n samples each)
-> rewards -> `advantages_filter_cap` (group advantages, zero-variance filter, at most
--prompts-per-step groups) -> `old_logprobs` (recomputed by the trainer; the |sampler - trainer| gap
is logged as logp_diff) -> per mini-batch, `update`: `accumulate` (policy_loss + alpha * NLL of
correct rollouts, exact token means over all ranks) and one AdamW step. A step's randomness comes
from (seed, step, rank), so a resumed run replays the uninterrupted one. Each choice and why:
docs/ALGORITHM.md section 3, "How gppo.py runs a step".

Run (defaults = the math stage; `--stage code` = lr 5e-7 and 32-prompt mini-batches):
  python gppo.py --model runs/sft/hf --data math.jsonl --out runs/rl-math
  torchrun --nproc_per_node 8 gppo.py --model runs/sft/hf --data math.jsonl --out runs/rl-math \\
      --eval aime2024.jsonl --eval-every 50 --eval-n 8 [--resume]
  torchrun --nproc_per_node 8 gppo.py --stage code --model runs/rl-math/hf --data code.jsonl --out runs/rl-code
"""
import argparse
import json
import math
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

import data
import kernels
import model as qwen3
import rewards
import rollout
import sandbox
import sft

# sft.all_reduce's op for maxima over ranks
MAX = torch.distributed.ReduceOp.MAX
KINDS = ("gppo", "only-high", "grpo", "dapo", "cispo")
STAGES = {"math": {"lr": 1e-6, "mini_batch_prompts": 16}, "code": {"lr": 5e-7, "mini_batch_prompts": 32}}


@dataclass
class Context:
    """What one RL run holds from step to step (built by setup)."""
    args: argparse.Namespace
    model: torch.nn.Module
    opt: torch.optim.Optimizer | None = None
    dist: sft.Dist | None = None
    tok: data.Tokenizer | None = None
    # RL tasks and their rendered prompts, index-aligned
    tasks: list[dict] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    sampler: data.ShardedSampler | None = None
    draw: int = 0  # prompts drawn per rank and step (oversampled)
    reward_opts: dict = field(default_factory=dict)
    eval_tasks: list[dict] | None = None
    bad_in_row: int = 0  # non-finite optimizer steps in a row


@dataclass
class UpdateSums:
    """This rank's sums over an RL step's micro-batches and steps, for reduce_update_metrics."""
    clip_low: float = 0.0  # clipped-token counts and ratios, weighted by tokens
    clip_high: float = 0.0
    dual_clip: float = 0.0
    ratio_mean: float = 0.0
    entropy: float = 0.0
    tokens: float = 0.0
    nll: float = 0.0
    ratio_min: float = math.inf
    ratio_max: float = -math.inf
    grad_norm: float = 0.0  # summed over optimizer steps
    loss: float = 0.0
    opt_steps: int = 0
    bad_steps: int = 0


# ---------------------------------------------------------------------------------- section 2: loss
def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                kind: str = "gppo", eps_low: float = 0.2, eps_high: float = 0.28, dual_clip: float = 10.0,
                beta_low: float = 1.0, beta_high: float = 1.0, denom=None) -> tuple[torch.Tensor, dict]:
    """Token-level policy loss sum(l * mask) / denom, with d l / d theta = -F * A * grad log pi (the
    table of F: docs/ALGORITHM.md section 2). `denom`: the token count of the whole mini-batch over
    all ranks and micro-batches (default: mask.sum())."""
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {KINDS}")
    assert dual_clip > 1.0, "the dual clip c must exceed 1"
    m = mask.bool()
    A = advantages.float()
    logp = logp.float()
    # ratio; clamp: exp overflow -> nan through where
    r = torch.exp((logp - old_logp.float()).clamp(max=20.0))
    r_sg = r.detach()
    # value 1, gradient grad log pi: the "r / sg(r)" of section 2
    unit = torch.exp(logp - logp.detach())
    eps_high = eps_low if kind == "grpo" else eps_high
    if kind == "cispo":  # F = sg(clip(r, 1-eps_low, 1+eps_high)) on every token
        hi, lo = r_sg > 1 + eps_high, r_sg < 1 - eps_low
        s = r_sg.clamp(1 - eps_low, 1 + eps_high) * unit
        dual = torch.zeros_like(m)
    else:
        hi = (A > 0) & (r_sg > 1 + eps_high)
        lo = (A < 0) & (r_sg < 1 - eps_low)
        s_hi = beta_high * (1 + eps_high) * unit if kind in ("gppo", "only-high") else torch.full_like(r, 1 + eps_high)
        s_lo = beta_low * (1 - eps_low) * unit if kind == "gppo" else torch.full_like(r, 1 - eps_low)
        s = torch.where(hi, s_hi, torch.where(lo, s_lo, r))
        # min(-A s, -A c) for A < 0 (section 7: -A c, not -A)
        dual = (A < 0) & (s.detach() > dual_clip)
    l = torch.where(dual, -A * dual_clip, -A * s)
    n = m.sum()
    loss = torch.where(m, l, 0.0).sum() / (n.clamp(min=1) if denom is None else denom)
    nf = n.clamp(min=1).float()
    metrics = {"tokens": n.float(), "clip_low": (lo & m).sum() / nf, "clip_high": (hi & m).sum() / nf,
               "dual_clip": (dual & m).sum() / nf, "ratio_mean": torch.where(m, r_sg, 0.0).sum() / nf,
               "ratio_min": torch.where(m, r_sg, math.inf).min(), "ratio_max": torch.where(m, r_sg, -math.inf).max()}
    return loss, {k: v.detach() for k, v in metrics.items()}


# ---------------------------------------------------------------------------- section 3: advantages
def group_advantages(rewards, group_size: int, correct: float = 1.0, truncated=None, drop_truncated: bool = False,
                     keep_on: str = "accuracy") -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages A = (R - mean) / (std_unbiased + 1e-6) per group of `group_size` consecutive
    rollouts, and keep: False for groups without signal (keep_on="accuracy", the recipe: accuracy R
    == correct all 0 or all 1; "reward": rewards all equal, so partial credit trains), for groups of
    size 1 (no baseline), and with drop_truncated for truncated rollouts (they still count in their
    group's statistics)."""
    R = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if group_size < 1 or R.numel() % group_size:
        raise ValueError(f"{R.numel()} rewards do not split into groups of {group_size}")
    g = R.view(-1, group_size)  # (G, n)
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    adv = (g - g.mean(dim=1, keepdim=True)) / (std + 1e-6)
    varies = group_signal(g, correct)[keep_on == "accuracy"]
    keep = varies[:, None].expand_as(g).flatten().clone()
    if drop_truncated and truncated is not None:
        keep &= ~torch.as_tensor(truncated, dtype=torch.bool).flatten()
    return torch.where(keep, adv.flatten(), 0.0), keep


def group_signal(g: torch.Tensor, correct: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of rewards g (G, n): (the rewards differ, the accuracy R == correct differs)."""
    acc = g == correct
    return (g != g[:, :1]).any(dim=1), acc.any(dim=1) & ~acc.all(dim=1)


def cap_groups(kept: list[int], target: int) -> list[int]:
    """How many kept groups each rank trains on: the first `target` in rank round-robin order."""
    quota = [0] * len(kept)
    while sum(quota) < target and any(q < k for q, k in zip(quota, kept)):
        for r in range(len(kept)):
            if quota[r] < kept[r] and sum(quota) < target:
                quota[r] += 1
    return quota


# ------------------------------------------------------------------------------------ micro-batches
def plan_micro(items: list[dict], micro_tokens: int) -> list[list[dict]]:
    """Greedy micro-batches of length-sorted rollouts: rows * longest row <= micro_tokens (or one
    row)."""
    out, cur = [], []
    for it in sorted(items, key=lambda it: -it["len"]):
        if cur and (len(cur) + 1) * cur[0]["len"] > micro_tokens:
            out.append(cur)
            cur = []
        cur.append(it)
    return out + [cur] if cur else out


def collate(micro: list[dict], pad_id: int, device) -> dict:
    """Right-padded input_ids (B, T) and targets (B, T): each response token at the position that
    predicts it, -100 elsewhere; per-token vectors (N,) follow the row-major order of the N valid
    targets."""
    T = max(it["len"] for it in micro)
    ids = torch.full((len(micro), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(micro), T), kernels.IGNORE_INDEX, dtype=torch.long)
    for b, it in enumerate(micro):
        seq = it["prompt"] + it["tokens"][:-1]  # the last response token is only a target
        ids[b, :len(seq)] = torch.tensor(seq)
        P = len(it["prompt"])
        tgt[b, P - 1:P - 1 + len(it["tokens"])] = torch.tensor(it["tokens"])
    per_tok = lambda key: torch.tensor([float(it[key]) for it in micro for _ in it["tokens"]], device=device)
    return {"input_ids": ids.to(device), "targets": tgt.to(device), "valid": (tgt != kernels.IGNORE_INDEX).to(device),
            "adv": per_tok("adv"), "mask": per_tok("weight"), "sft": per_tok("sft"),
            "sampler_logp": torch.tensor([v for it in micro for v in it["logprobs"]], device=device)}


def forward_logp(model, b: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi and entropy (N,) of the response tokens at `temperature` (sft.batch_logprobs)."""
    logp, ent = sft.batch_logprobs(model, b, temperature, return_entropy=True)  # (B, T) each
    return logp[b["valid"]], ent[b["valid"]]


# -------------------------------------------------------------------------------------- the RL step
def rollouts(ctx: Context, step: int, met: dict) -> list[dict]:
    """Sample n responses per drawn prompt on this rank and score them (section 3 steps 1-2)."""
    a, model, tok = ctx.args, ctx.model, ctx.tok
    idx = ctx.sampler.next_indices(ctx.draw)
    t0 = time.perf_counter()
    model.eval()
    # the whole draw in one call: the engine schedules it within the KV budget
    stats = rollout.EngineStats()
    samples = rollout.generate(model, [ctx.prompts[i] for i in idx], n=a.n, max_new_tokens=a.max_response_tokens,
                               temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, stats=stats,
                               seed=a.seed * 1_000_003 + step * 1009 + ctx.dist.rank,
                               stop_ids=(tok.eos_id, tok.pad_id), max_kv_tokens=a.max_kv_tokens)
    t1 = time.perf_counter()
    totals = sft.all_reduce(torch.tensor(list(stats.as_dict().values()), dtype=torch.float64))
    met.update({k: v.item() for k, v in zip(stats.as_dict(), totals)})  # summed over ranks
    met["gen/peak_kv"] = sft.all_reduce(torch.tensor(float(stats.peak_kv)), MAX).item()
    statuses = Counter()
    # the tests sampled per problem (at most 16) change from step to step; a step's n samples share them
    _, scores = rollout.decode_and_score(tok, samples, [ctx.tasks[idx[s.prompt_index]] for s in samples],
                                         a.reward_workers, statuses, **ctx.reward_opts, seed=a.seed * 100_003 + step)
    test_statuses(statuses, met)
    met["t_generate"], met["t_reward"] = t1 - t0, time.perf_counter() - t1
    return [{"prompt": ctx.prompts[idx[s.prompt_index]], "tokens": s.tokens, "logprobs": s.logprobs,
             "len": len(ctx.prompts[idx[s.prompt_index]]) + len(s.tokens) - 1,  # model input length
             "reward": float(r), "truncated": s.finish_reason == "length"} for s, r in zip(samples, scores)]


def test_statuses(statuses: Counter, met: dict) -> None:
    """Log the code tests' statuses of this step over all ranks (tests/<status>); stop the run on
    every rank alike when more than half are 'sandbox error' (rewards.check_sandbox says what
    failed)."""
    names = sandbox.STATUSES + sandbox.NOTES + ("abandoned job",)
    totals = sft.all_reduce(torch.tensor([float(statuses[s]) for s in names]))
    met.update({f"tests/{s}": v.item() for s, v in zip(names, totals) if v})
    rewards.check_sandbox(Counter({s: int(v) for s, v in zip(names, totals.tolist())}))


def advantages_filter_cap(ctx: Context, items: list[dict], met: dict) -> list[list[dict]]:
    """Advantages, the zero-variance filter, then a cap of --prompts-per-step groups over all ranks
    (section 3); returns this rank's kept groups."""
    a, W = ctx.args, ctx.dist.world_size
    rewards_ = [it["reward"] for it in items]
    adv, keep = group_advantages(rewards_, a.n, a.correct, [it["truncated"] for it in items], a.drop_truncated,
                                 a.filter)
    # groups only a reward filter keeps: rewards differ, accuracy does not (partial credit, faulty tests, penalties)
    by_reward, by_accuracy = group_signal(torch.tensor(rewards_).view(-1, a.n), a.correct)
    partial = sft.all_reduce(float((by_reward & ~by_accuracy).sum())).item()
    for k, it in enumerate(items):
        # the NLL term (alpha) covers the correct rollouts of the groups that pass the filter
        it.update(adv=float(adv[k]), weight=float(keep[k]), sft=float(keep[k] and it["reward"] == a.correct))
    groups = [[it for it in items[g:g + a.n] if it["weight"]] for g in range(0, len(items), a.n)]
    groups = [grp for grp in groups if grp]
    counts = torch.zeros(W)
    counts[ctx.dist.rank] = len(groups)
    kept = [int(c) for c in sft.all_reduce(counts).round().tolist()]  # kept groups of every rank
    quota = cap_groups(kept, a.prompts_per_step)
    met["groups_kept"], met["filtered"] = float(sum(quota)), 1.0 - sum(kept) / max(ctx.draw * W, 1)
    met["partial_groups"] = partial / max(ctx.draw * W, 1)
    return groups[:quota[ctx.dist.rank]]


def build_plan(ctx: Context, groups: list[list[dict]], dummy: dict) -> list[list[list[dict]]]:
    """Mini-batches (list of micro-batches) identical in count on every rank; empty slots get a
    zero-weight dummy."""
    a = ctx.args
    n_mini = math.ceil(sft.all_reduce(float(len(groups))).item() / a.mini_batch_prompts)
    cuts = [round(i * len(groups) / n_mini) for i in range(n_mini + 1)]
    minis = [plan_micro([it for g in groups[cuts[i]:cuts[i + 1]] for it in g], a.micro_tokens) for i in range(n_mini)]
    n_micro = sft.all_reduce(torch.tensor([len(mb) for mb in minis]), MAX).tolist()
    dummy = dict(dummy, weight=0.0, sft=0.0, adv=0.0)
    return [mb + [[dummy]] * (k - len(mb)) for mb, k in zip(minis, n_micro)]


def old_logprobs(ctx: Context, plan: list, met: dict) -> list[list[dict]]:
    """Collate the plan and add old_logp (section 2): the training model's log-probs right before
    the update, at the sampling temperature, no grad; logs the mean |sampler - trainer| log-prob
    gap."""
    t0, diff, cnt, out = time.perf_counter(), 0.0, 0.0, []
    with torch.no_grad():
        for mb in plan:
            out.append([collate(micro, ctx.tok.pad_id, ctx.dist.device) for micro in mb])
            for b in out[-1]:
                b["old_logp"] = forward_logp(ctx.model, b, ctx.args.temperature)[0]
                diff += ((b["old_logp"] - b["sampler_logp"]).abs() * b["mask"]).sum().item()
                cnt += b["mask"].sum().item()
    totals = sft.all_reduce(torch.tensor([diff, cnt]))
    met["logp_diff"] = (totals[0] / totals[1].clamp(min=1)).item()
    met["t_old_logp"] = time.perf_counter() - t0
    return out


def accumulate(ctx: Context, mini: list[dict], acc: UpdateSums) -> float:
    """Forward/backward of one mini-batch's micro-batches: GPPO + alpha * NLL(correct rollouts),
    each an exact token mean over the whole mini-batch on all ranks (denominators all-reduced
    first). Returns the global loss."""
    a, model = ctx.args, ctx.model
    den = sft.all_reduce(torch.stack([sum(b["mask"].sum() for b in mini), sum(b["sft"].sum() for b in mini)]))
    den_pg, den_sft = max(den[0].item(), 1.0), max(den[1].item(), 1.0)
    local = 0.0
    # FSDP2 reduce-scatters after each backward into fp32 sharded grads (no unsharded fp32 copy)
    for b in mini:
        logp, ent = forward_logp(model, b, a.temperature)
        pg, m = policy_loss(logp, b["old_logp"], b["adv"], b["mask"], a.loss, a.eps_low, a.eps_high, a.dual_clip,
                            a.beta_low, a.beta_high, denom=den_pg)
        nll = -(logp * b["sft"]).sum() / den_sft
        loss = pg + a.sft_alpha * nll
        # the local share of a global mean: sft.shard_model sums gradients over ranks
        loss.backward()
        local += loss.item()
        for k in ("clip_low", "clip_high", "dual_clip", "ratio_mean"):
            setattr(acc, k, getattr(acc, k) + (m[k] * m["tokens"]).item())
        acc.entropy += (ent.detach() * b["mask"]).sum().item()
        acc.tokens += m["tokens"].item()
        acc.nll += nll.item()
        acc.ratio_min = min(acc.ratio_min, m["ratio_min"].item())
        acc.ratio_max = max(acc.ratio_max, m["ratio_max"].item())
    return sft.all_reduce(local).item()


def update(ctx: Context, mini: list[dict], acc: UpdateSums) -> None:
    """One optimizer step per mini-batch; a non-finite loss or grad norm skips it (--max-bad-steps
    in a row stop)."""
    a = ctx.args
    ctx.model.train()
    ctx.opt.zero_grad(set_to_none=True)
    loss = accumulate(ctx, mini, acc)
    grad_norm, stepped = sft.clip_and_step(ctx.model, ctx.opt, a.grad_clip, math.isfinite(loss))
    acc.grad_norm += grad_norm if math.isfinite(grad_norm) else 0.0
    acc.loss += loss
    if stepped:
        ctx.bad_in_row, acc.opt_steps = 0, acc.opt_steps + 1
        return
    ctx.bad_in_row, acc.bad_steps = ctx.bad_in_row + 1, acc.bad_steps + 1
    sft.print0(f"gppo: skipped an optimizer step: loss {loss}, grad norm {grad_norm}")
    if ctx.bad_in_row >= a.max_bad_steps:
        raise SystemExit(f"gppo: {ctx.bad_in_row} optimizer steps in a row had a non-finite loss or grad norm; "
                         f"stopping (--max-bad-steps {a.max_bad_steps})")


def rl_step(ctx: Context, step: int) -> dict:
    """One RL step (section 3); returns the metrics logged for it."""
    a, met = ctx.args, {}
    lr = sft.lr_at(step, a.lr, a.lr, a.warmup_steps, a.steps)  # floor = peak: constant after warmup
    for grp in ctx.opt.param_groups:
        grp["lr"] = lr
    items = rollouts(ctx, step, met)
    sums = sft.all_reduce(torch.tensor([[it["reward"], it["reward"] == a.correct, len(it["tokens"]),
                                             it["truncated"], 1.0] for it in items]).sum(0))
    reward, correct, length, truncated, n = sums.tolist()  # over all ranks
    met.update(lr=lr, reward=reward / n, acc=correct / n, resp_len=length / n, trunc=truncated / n)
    met["resp_len_max"] = sft.all_reduce(torch.tensor(float(max(len(it["tokens"]) for it in items))), MAX).item()
    groups = advantages_filter_cap(ctx, items, met)
    if met["groups_kept"] == 0:
        met["skipped"] = f"every group filtered (zero-variance {a.filter})"
        return met
    plan = old_logprobs(ctx, build_plan(ctx, groups, min(items, key=lambda it: it["len"])), met)
    t0, acc = time.perf_counter(), UpdateSums()
    for mini in plan:
        update(ctx, mini, acc)
    met["t_update"] = time.perf_counter() - t0
    return met | reduce_update_metrics(acc, len(plan))


def reduce_update_metrics(acc: UpdateSums, n_mini: int) -> dict:
    """Token-weighted means over all ranks and mini-batches; ratio min/max over all; grad norm and
    loss averaged."""
    keys = ("clip_low", "clip_high", "dual_clip", "ratio_mean", "entropy", "nll", "tokens")
    tot = dict(zip(keys, sft.all_reduce(torch.tensor([getattr(acc, k) for k in keys])).tolist()))
    out = {k: tot[k] / max(tot["tokens"], 1.0) for k in keys[:5]}
    low, high = sft.all_reduce(torch.tensor([-acc.ratio_min, acc.ratio_max]), MAX).tolist()
    return out | dict(ratio_min=-low, ratio_max=high, grad_norm=acc.grad_norm / n_mini, loss=acc.loss / n_mini,
                      nll=tot["nll"] / n_mini, opt_steps=acc.opt_steps, bad_steps=acc.bad_steps,
                      # response tokens the loss covered (weights the clip fractions)
                      pg_tokens=tot["tokens"])


# ----------------------------------------------------------------------------------- set-up and run
def context_split(a, context: int) -> None:
    """Split the model's context (docs/ALGORITHM.md section 3) and set both caps on `a`: responses
    up to --max-response-tokens, by default min(32,768, context - the prompt cap, which takes at
    most half), prompts up to min(--max-prompt-tokens, what responses leave); Qwen3-8B-Base (32,768)
    gets 4,096 + 28,672. No room for either is an error naming both flags and the config field."""
    if a.max_response_tokens is None:
        a.max_response_tokens = min(32768, context - min(a.max_prompt_tokens, context // 2))
    a.max_prompt_tokens = min(a.max_prompt_tokens, context - a.max_response_tokens)
    if min(a.max_prompt_tokens, a.max_response_tokens) < 1:
        raise SystemExit(f"gppo: --max-prompt-tokens {a.max_prompt_tokens} + --max-response-tokens "
                         f"{a.max_response_tokens} do not fit the model's context (max_position_embeddings "
                         f"{context} in its config.json): lower one of them, or extend the context with YaRN")
    sft.print0(f"gppo: context {context} = prompts <= {a.max_prompt_tokens} + responses <= {a.max_response_tokens}")


def load_prompts(a, tok) -> tuple[list[dict], list[list[int]]]:
    """Tasks from --data rendered with the chat template; prompts over --max-prompt-tokens are
    dropped and counted (context_split made sure that prompt + response fit the model's context)."""
    cap, every = a.max_prompt_tokens, rewards.load_tasks(a.data, skip_bad=a.skip_bad)
    tasks, prompts = [], []
    for t in every:
        ids = tok.encode(data.render_chat(t["messages"], add_generation_prompt=True, enable_thinking=not a.no_thinking))
        if len(ids) <= cap:
            tasks.append(t)
            prompts.append(ids)
    sft.print0(f"gppo: {len(tasks)} prompts from {a.data}, {len(every) - len(tasks)} over {cap} tokens dropped")
    if not tasks:
        raise SystemExit(f"gppo: no prompt of {a.data} fits --max-prompt-tokens {cap}")
    return tasks, prompts


def setup(a, dist) -> Context:
    # fp32 on the CPU (rank 0); shard_model shards it to the devices
    tok, model = sft.load_model(a, dist.rank)
    model = sft.shard_model(model, dist, checkpointing=a.checkpointing)  # gradients SUM over ranks
    context_split(a, model.config.max_position_embeddings)
    tasks, prompts = load_prompts(a, tok)
    reward_opts = {"correct": a.correct, "timeout_s": a.code_timeout, "soft": a.code_reward == "soft"}
    if a.no_thinking:  # the prompt already holds <think></think>: the reward's think checks are off
        reward_opts |= {"check_think": False, "no_close_think": None}
    if any(t["kind"] == "code" for t in tasks):  # before hours of training: how programs are confined
        sft.print0(f"gppo: sandbox: {sandbox.sandbox_info()}")
    return Context(args=a, model=model, opt=sft.build_optimizer(model, a.lr, a.weight_decay, (0.9, 0.999)),
                   dist=dist, tok=tok, tasks=tasks, prompts=prompts,
                   sampler=data.ShardedSampler(len(tasks), dist.rank, dist.world_size, a.seed),
                   draw=math.ceil(a.prompts_per_step * a.oversample / dist.world_size), reward_opts=reward_opts,
                   eval_tasks=rewards.load_tasks(a.eval) if a.eval else None)


def evaluate(ctx: Context, step: int) -> dict:
    a = ctx.args
    res = rollout.evaluate(ctx.model, ctx.tok, ctx.eval_tasks, n=a.eval_n, temperature=a.eval_temperature,
                           top_p=a.eval_top_p, max_new_tokens=a.eval_max_tokens or a.max_response_tokens,
                           workers=a.reward_workers, seed=a.seed + step, **ctx.reward_opts)
    return {f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))}


def train(a) -> None:
    dist = sft.init_distributed(a.dist_timeout_min)
    sft.print0("gppo config: " + json.dumps(vars(a), sort_keys=True))
    ctx = setup(a, dist)
    run = sft.RunDir(a.out, dist.rank, a)
    state = run.resume(ctx.model, ctx.opt, ctx.sampler)
    step, ctx.bad_in_row = state["step"], state.get("bad_in_row", 0)
    if step == 0 and ctx.eval_tasks:
        run.log(0, evaluate(ctx, 0))  # the starting point of the held-out curve
    while step < a.steps:
        t0 = time.perf_counter()
        met = rl_step(ctx, step)
        step += 1
        run.log(step, met | {"t_step": time.perf_counter() - t0})
        if ctx.eval_tasks and (step % a.eval_every == 0 or step == a.steps):
            run.log(step, evaluate(ctx, step))
        if step % a.save_every == 0 or step == a.steps:
            state = {"step": step, "bad_in_row": ctx.bad_in_row, "sampler": ctx.sampler.state_dict()}
            run.save(step, ctx.model, ctx.opt, state)
    if a.export:
        run.export_hf(ctx.model, ctx.tok)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPPO RL (Klear-Reasoner)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="SFT checkpoint folder in HF layout (config.json + safetensors + tokenizer)")
    g.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    g.add_argument("--data", help="RL prompts JSONL (Klear RL layout, {problem, answer} or {problem, tests})")
    g.add_argument("--skip-bad", action="store_true", help="skip malformed JSONL lines (counted) instead of failing")
    g.add_argument("--out", default="runs/gppo", help="run folder: metrics.jsonl, checkpoints, hf export")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    g.add_argument("--stage", choices=tuple(STAGES), default="math", help="sets --lr and --mini-batch-prompts")
    g.add_argument("--no-thinking", action="store_true", help="prompts rendered with enable_thinking=False "
                   "(they hold <think></think>, so the reward's <think> check is off)")
    g.add_argument("--max-prompt-tokens", type=int, default=4096, help="longer prompts are dropped")
    g.add_argument("--max-response-tokens", type=int, help="response cap (truncation = 'length'); default: "
                   "the model's context left after --max-prompt-tokens, at most 32768")
    g.add_argument("--seed", type=int, default=0, help="seeds prompt order, sampling and test samples")
    g = p.add_argument_group("rollouts and rewards (docs/ALGORITHM.md sections 3-4)")
    g.add_argument("--prompts-per-step", type=int, default=128, help="groups kept per RL step over all ranks")
    g.add_argument("--oversample", type=float, default=2.0, help="prompts drawn = oversample * prompts-per-step")
    g.add_argument("--n", type=int, default=8, help="samples per prompt (group size)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling and old/new log-prob temperature")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    g.add_argument("--max-kv-tokens", type=int, help="rollout engine's KV budget in token slots per rank "
                   "(default: 85%% of the free GPU memory; 1M slots on CPU)")
    g.add_argument("--correct", type=float, default=1.0, help="the score of a correct response")
    g.add_argument("--drop-truncated", action="store_true", help="mask truncated rollouts out of the loss")
    g.add_argument("--code-reward", choices=("soft", "hard"), default="soft",
                   help="soft: 2 * share of tests passed - 1 (the recipe); hard: 1 if every test passes, else -1")
    g.add_argument("--filter", choices=("accuracy", "reward"), default="accuracy",
                   help="drop groups whose accuracy is all 0 or all 1 (the recipe), or whose rewards are all equal")
    g.add_argument("--reward-workers", type=int, default=8, help="concurrent reward jobs per rank")
    g.add_argument("--code-timeout", type=float, default=35.0, help="seconds per code test (the paper's limit)")
    g = p.add_argument_group("loss (docs/ALGORITHM.md section 2)")
    g.add_argument("--loss", choices=KINDS, default="gppo", help="policy loss kind (section 2)")
    g.add_argument("--eps-low", type=float, default=0.2, help="clip range below: r < 1 - eps_low")
    g.add_argument("--eps-high", type=float, default=0.28, help="clip range above: r > 1 + eps_high")
    g.add_argument("--dual-clip", type=float, default=10.0, help="bound c of the loss when A < 0")
    g.add_argument("--beta-low", type=float, default=1.0, help="CE-GPPO lower-side gradient scale")
    g.add_argument("--beta-high", type=float, default=1.0, help="CE-GPPO upper-side gradient scale")
    g.add_argument("--sft-alpha", type=float, default=0.1, help="weight of the NLL of correct rollouts")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="constant lr after warmup (default: 1e-6 math, 5e-7 code)")
    g.add_argument("--warmup-steps", type=int, default=10, help="linear warmup, in RL steps")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip")
    g.add_argument("--mini-batch-prompts", type=int, help="prompts per optimizer step (default: 16 math, 32 code)")
    g.add_argument("--micro-tokens", type=int, default=32768, help="padded tokens per micro-batch and rank")
    g.add_argument("--steps", type=int, default=500, help="RL steps")
    g.add_argument("--max-bad-steps", type=int, default=5, help="stop after this many non-finite steps in a row")
    g.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval", help="held-out JSONL evaluated with rollout.evaluate")
    g.add_argument("--eval-every", type=int, default=50, help="RL steps between evaluations")
    g.add_argument("--eval-n", type=int, default=1, help="samples per eval prompt (avg@n, pass@n)")
    g.add_argument("--eval-temperature", type=float, default=0.6, help="evaluation sampling")
    g.add_argument("--eval-top-p", type=float, default=0.95, help="evaluation nucleus mass")
    g.add_argument("--eval-max-tokens", type=int, help="default: --max-response-tokens")
    g.add_argument("--save-every", type=int, default=50, help="RL steps between checkpoints")
    g.add_argument("--no-export", dest="export", action="store_false", help="skip the HF export at the end")
    g.add_argument("--preflight", action="store_true",
                   help="check the context split against --model's config.json (and that --data exists), exit")
    sft.add_run_args(p)  # the flags shared with sft.py: collective timeout, experiment trackers
    a = p.parse_args(argv)
    for k, v in STAGES[a.stage].items():
        setattr(a, k, v if getattr(a, k) is None else getattr(a, k))
    if a.preflight and not a.model:
        p.error("--preflight checks --model's config.json: give --model")
    if not a.preflight and not (a.model and a.data):
        p.error("--model and --data are required")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    # train.sh's check before any long work: the split fits the model, the data file exists
    if a.preflight:
        context_split(a, qwen3.Qwen3Config.from_json(Path(a.model) / "config.json").max_position_embeddings)
        if a.data and not Path(a.data).is_file():
            raise SystemExit(f"gppo: --data not found: {a.data}")
        return
    with sft.distributed_run():
        train(a)


if __name__ == "__main__":
    # torchrun and preemption stop a job with SIGTERM: exit through Python, so that atexit handlers run
    # (the sandbox's folders and processes, the math helpers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
