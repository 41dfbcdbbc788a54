"""Long chain-of-thought SFT of Qwen3 (Klear-Reasoner stage one), and the trainer plumbing gppo.py
reuses: token NLL on the last assistant turn of packed chat rows (data.py), FSDP2 over any number of
ranks, AdamW with linear warmup + cosine decay to a floor (hyper-parameters: docs/ALGORITHM.md 1),
crash-safe sharded checkpoints. The loss is the summed NLL over the global count of loss tokens of
the step, so any split of a batch over ranks or micro-steps gives the same gradient. --max-steps
stops early without changing the schedule (a later --resume goes on).

Run (train.sh has the demo's and the recipe's commands):
  python sft.py --config config.json --tokenizer DIR --data sft.jsonl --out runs/sft [--resume]
  torchrun --nproc_per_node 8 sft.py --model Qwen3-8B-Base --data sft.jsonl --out runs/sft --checkpointing \\
      --resume [--wandb PROJECT [--wandb-offline]] [--tensorboard]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import json
import math
import os
import random
import shutil
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.state_dict as dcp_sd
from torch.distributed.tensor import DTensor

import data
import kernels
import model as qwen3


# ----------------------------------------------------------------------------- distributed plumbing
def print0(*args) -> None:
    if (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))) == 0:
        print(*args, flush=True)


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device


# Minutes a collective waits for the slowest rank (NCCL's default: 10). RL's worst wait on 8 GPUs:
# one rank generates 256 rollouts x 32K tokens (8.4M) of an 8B model, KV-bound at ~1,600 tokens/s
# on an H200 (87 min), then 19 min of code rewards: ~110 minutes; 180 leaves headroom.
DIST_TIMEOUT_MIN = 180.0


def init_distributed(timeout_min: float = DIST_TIMEOUT_MIN) -> Dist:
    """Process group from torchrun's env (gloo on CPU, nccl on CUDA), else a private 1-rank one, so
    collectives and DCP run the same code."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend, timeout = "nccl" if cuda else "gloo", datetime.timedelta(minutes=timeout_min)
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=device if cuda else None, timeout=timeout)
        else:  # `python sft.py`: an in-memory store, nothing to rendezvous with
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def all_reduce(x: float | torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Sum (or `op`, e.g. MAX) over ranks, in float64 (int stays int), on the device the backend
    needs."""
    t = x.detach().clone() if torch.is_tensor(x) else torch.tensor(float(x), dtype=torch.float64)
    t = t.double() if t.is_floating_point() else t
    if dist.is_initialized():
        if dist.get_backend() == "nccl" and not t.is_cuda:
            t = t.cuda()
        dist.all_reduce(t, op=op)
    return t


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def distributed_run():
    """A trainer's main: on success free the FSDP state while the interpreter is whole (at exit,
    gloo's pending work could abort a rank) and leave together; then end the process group."""
    try:
        yield
        gc.collect()
        _barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def shard_model(model: qwen3.Qwen3, dist_: Dist, checkpointing: bool = False,
                bf16: bool | None = None) -> qwen3.Qwen3:
    """FSDP2 per decoder layer, then the root (embeddings, norm, lm_head). bf16 (default: on CUDA):
    bf16 compute, fp32 gradient reduction and master weights. A meta-device model gets rank 0's
    weights."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    model.gradient_checkpointing = checkpointing
    bf16 = dist_.device.type == "cuda" if bf16 is None else bf16
    if dist_.world_size == 1 and dist_.device.type == "cpu" and not bf16:
        return model  # fp32 on one CPU process: nothing to shard or cast
    meta = any(p.is_meta for p in model.parameters())
    # some rank holds no weights: rank 0 sends its tensors, taken before sharding
    broadcast = bool(all_reduce(float(meta)) > 0)
    full = model.state_dict() if broadcast and dist_.rank == 0 else {}
    mesh = init_device_mesh(dist_.device.type, (dist_.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # The root keeps its params gathered from forward to backward (batch_logprobs reads lm_head).
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    # a plain SUM over ranks (the loss is already a global mean; gloo has no PREMUL_SUM)
    for unit in [*model.model.layers, model]:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    if broadcast:  # the FSDP2 meta-device flow: allocate the shards, then fill them from rank 0
        if meta:
            model.to_empty(device=dist_.device)
        opts = dcp_sd.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        dcp_sd.set_model_state_dict(model, full, options=opts)
    return model


# ------------------------------------------------------------------------------------- optimisation
def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over fp32 (sharded) params; weight decay on matrices only, not on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, foreach=True)


def lr_at(step: int, peak: float, floor: float, warmup: int, total: int) -> float:
    """lr of optimizer step `step` (0-based): linear warmup to peak, then cosine to floor at `total`
    (floor = peak: constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_and_step(model: torch.nn.Module, optimizer, max_norm: float, ok: bool = True) -> tuple[float, bool]:
    """Clip the grad norm over all ranks to max_norm (when > 0), step unless it is not finite (or
    not `ok`), clear the gradients; returns (grad norm, stepped)."""
    grads = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"), foreach=True)
    norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    stepped = ok and math.isfinite(norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, stepped


# ------------------------------------------------------------------------------------------ loss
def batch_logprobs(model: qwen3.Qwen3, batch: dict, temperature: float = 1.0, return_entropy: bool = False):
    """log p(targets) (B, T) fp32 of a packed batch (0 where targets == -100), and the entropy."""
    hidden = model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids"))
    # gathered: the FSDP2 root does not reshard after forward (see shard_model)
    weight = model.lm_head.weight
    assert not isinstance(weight, DTensor), "lm_head.weight is sharded: call this right after model(...)"
    targets = batch["targets"]
    out = kernels.token_logprobs(hidden.flatten(0, 1), weight, targets.flatten(), temperature=temperature,
                                 return_entropy=return_entropy)
    return tuple(o.view(targets.shape) for o in out) if return_entropy else out.view(targets.shape)


def token_nll(model: qwen3.Qwen3, batch: dict) -> torch.Tensor:
    """Summed NLL over the targets of a packed batch (input_ids, targets, doc_ids, position_ids)."""
    return -batch_logprobs(model, batch).sum()


# --------------------------------------------------------------------------------------- run folder
def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


class RunDir:
    """A run folder: args.json, metrics.jsonl, checkpoints/step_XXXXXXXX, the HF export; and on rank
    0 the trackers (--wandb, --tensorboard): the numbers of each metrics.jsonl line, and the config.
    A resume continues their runs (wandb: the id in OUT/wandb_id.txt; OUT/tensorboard: events from
    the first logged step on are purged), and replayed steps win, as in metrics.jsonl."""

    def __init__(self, path, rank: int, args: dict | argparse.Namespace | None = None, keep: int = 2):
        self.path, self.rank, self.keep, self.tb, self.wandb = Path(path), rank, keep, None, None
        self.args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.ckpts = self.path / "checkpoints"
        if rank == 0:
            self.ckpts.mkdir(parents=True, exist_ok=True)
            qwen3.atomic_write(self.path / "args.json", json.dumps(self.args, indent=2, default=str))

    def log(self, step: int, metrics: dict) -> None:
        """Rank 0: a `|` line, a metrics.jsonl line (a later one for a step wins), the trackers."""
        if self.rank != 0:
            return
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        print(" | ".join([f"step {step}"] + [f"{k} {fmt(v)}" for k, v in metrics.items()]), flush=True)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is None and self.wandb is None and (self.args.get("tensorboard") or self.args.get("wandb")):
            self._open_trackers(step)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()  # a crashed run keeps every logged step
        if self.wandb is not None:
            self.wandb.log({**scalars, "step": step})

    def _open_trackers(self, step: int) -> None:
        """At the first logged step; each closes when this object goes (train returns), or at exit."""
        config = json.loads(json.dumps(self.args, default=str))
        if self.args.get("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.path / "tensorboard"), purge_step=step)
            weakref.finalize(self, self.tb.close)
            # indented: markdown shows it as code
            self.tb.add_text("config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "), step)
        if self.args.get("wandb"):
            import wandb
            if wandb.run is not None:  # an earlier run of this process (tests, notebooks)
                wandb.run.finish()
            id_file = self.path / "wandb_id.txt"
            resume = bool(self.args.get("resume")) and id_file.is_file()
            self.wandb = wandb.init(project=self.args["wandb"], name=self.args.get("wandb_name"),
                                    id=id_file.read_text().strip() if resume else None, resume="allow",
                                    dir=str(self.path), mode="offline" if self.args.get("wandb_offline") else None)
            weakref.finalize(self, self.wandb.finish)
            qwen3.atomic_write(id_file, self.wandb.id)
            # a resume may change --steps and such
            self.wandb.config.update(config, allow_val_change=True)
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")

    def save(self, step: int, model, optimizer, state: dict) -> None:
        """DCP-sharded model + optimizer, this rank's `state` and RNG; atomic (tmp, then rename)."""
        final = self.ckpts / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a crash during an earlier write
            tmp.mkdir(parents=True)
        _barrier()
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp)
        with open(tmp / f"rank{self.rank:05d}.pt", "wb") as f:
            torch.save({"state": state, "rng": _rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        _barrier()  # every rank's shards are on disk before the folder can count as complete
        if self.rank == 0:
            meta = {"step": step, "world_size": dist.get_world_size()}
            qwen3.atomic_write(tmp / "meta.json", json.dumps(meta))
            qwen3.atomic_write(tmp / "args.json", json.dumps(self.args, indent=2, default=str))
            qwen3.atomic_write(tmp / "COMPLETE", "")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            qwen3.fsync_dir(self.ckpts)
            debris = list(self.ckpts.glob("step_*.tmp"))  # writes that crashed (saves run in order)
            for old in debris + (self._complete()[:-self.keep] if self.keep > 0 else []):
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    def _complete(self) -> list[Path]:
        found = [p for p in self.ckpts.glob("step_*") if p.suffix != ".tmp" and (p / "COMPLETE").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        done = self._complete() if self.ckpts.is_dir() else []
        return done[-1] if done else None

    def resume(self, model, optimizer, sampler) -> dict:
        """Under --resume, restore the latest complete checkpoint: model + optimizer (any sharding),
        this rank's RNG, the data `sampler`; returns the saved state (without one: {"step": 0})."""
        ckpt, wanted = self.latest(), bool(self.args.get("resume"))
        if ckpt is None or not wanted:
            if ckpt is not None or wanted:
                print0(f"starting at step 0 (resume: {wanted}; latest in {self.ckpts}: {ckpt})")
            return {"step": 0}
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta["world_size"] != dist.get_world_size():
            raise ValueError(f"{ckpt}: written by {meta['world_size']} ranks, resuming needs the same "
                             f"number (now {dist.get_world_size()}): the data position is per rank")
        sd = _sharded_state(model, optimizer)
        dcp.load(sd, checkpoint_id=ckpt)
        dcp_sd.set_model_state_dict(model, sd["model"])
        dcp_sd.set_optimizer_state_dict(model, optimizer, sd["optim"])
        extra = torch.load(ckpt / f"rank{self.rank:05d}.pt", weights_only=False)
        rng, state = extra["rng"], extra["state"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        sampler.load_state_dict(state["sampler"])
        print0(f"resumed from {ckpt} at step {state['step']}")
        return state

    def export_hf(self, model, tokenizer) -> Path:
        """Gather the full weights on rank 0's CPU: OUT/hf in HF layout (config, safetensors,
        tokenizer)."""
        opts = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        sd = dcp_sd.get_model_state_dict(model, options=opts)
        out, tmp = self.path / "hf", self.path / ".hf.export-tmp"
        if self.rank == 0:
            qwen3.save_pretrained(model, tmp, state_dict=sd)  # the tokenizer joins before rename
            tokenizer.save(tmp)
            qwen3.fsync_dir(tmp)
            qwen3.replace_dir(tmp, out)
        _barrier()
        return out


def _sharded_state(model, optimizer) -> dict:
    """This rank's DTensor shards (or plain tensors) under FQN keys: what DCP saves and loads."""
    optim = dcp_sd.get_optimizer_state_dict(model, optimizer)
    return {"model": dcp_sd.get_model_state_dict(model), "optim": optim}


# ------------------------------------------------------------------------------------------ SFT
def load_model(args, rank: int = 0) -> tuple[data.Tokenizer, qwen3.Qwen3]:
    """The tokenizer and an fp32 model on CPU. From a checkpoint only rank 0 reads the weights (one
    copy in host memory, not one per rank); other ranks build on the meta device for shard_model."""
    tok = data.load_tokenizer(args.tokenizer or args.model)
    if args.model and rank == 0:
        model = qwen3.load_pretrained(args.model)
    elif args.model:
        with torch.device("meta"):
            model = qwen3.Qwen3(qwen3.Qwen3Config.from_json(Path(args.model) / "config.json"))
    else:
        model = qwen3.build_model(qwen3.Qwen3Config.from_json(args.config), seed=args.seed)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    return tok, model


def load_rows(paths: list[str], tok: data.Tokenizer, seq_len: int, cache, overlong: str = "truncate",
              skip_bad: bool = False) -> data.PackedRows:
    """SFT JSONL files -> packed rows (the same on every rank) over a token store in `cache`, which
    local rank 0 of each node builds (once: reruns reuse it) while the other ranks wait for it."""
    store = data.build_token_store(paths, tok, cache, skip_bad, wait=int(os.environ.get("LOCAL_RANK", 0)) > 0)
    return data.PackedRows(store, seq_len, tok.pad_id, overlong)


def train_step(model, optimizer, batch: dict, micro_batch: int, lr: float, grad_clip: float) -> dict:
    """One optimizer step over this rank's rows `batch` ((R, T) tensors), micro_batch at a time."""
    device = next(model.parameters()).device
    # the loss tokens of all ranks and all micro-steps
    n_tokens = int(all_reduce((batch["targets"] != kernels.IGNORE_INDEX).sum()))
    for group in optimizer.param_groups:
        group["lr"] = lr
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for s in range(0, batch["input_ids"].shape[0], micro_batch):
        mb = {k: v[s:s + micro_batch].to(device, non_blocking=True) for k, v in batch.items()}
        loss = token_nll(model, mb)
        # One global denominator for every micro-step; FSDP2 reduce-scatters after each backward,
        # so memory does not grow with the number of micro-steps.
        (loss / max(n_tokens, 1)).backward()
        nll += loss.detach().double()
    grad_norm, _ = clip_and_step(model, optimizer, grad_clip, n_tokens > 0)
    return {"loss": float(all_reduce(nll)) / max(n_tokens, 1), "grad_norm": grad_norm,
            "skipped": int(not math.isfinite(grad_norm)), "loss_tokens": n_tokens}


def flops_per_token(cfg: qwen3.Qwen3Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params (lm_head, not the embedding) plus causal
    attention over the full row (an upper bound)."""
    H, L, hd = cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim
    attn = 2 * H * hd * (cfg.num_attention_heads + cfg.num_key_value_heads)
    matmul = L * (attn + 3 * H * cfg.intermediate_size) + cfg.vocab_size * H
    return 6 * matmul + 6 * L * cfg.num_attention_heads * hd * seq_len


# dense bf16 peak TFLOP/s of one device, by name (H200 before H20); other devices log no MFU
PEAK_TFLOPS = {"H200": 989, "H100": 989, "H800": 989, "H20": 148, "A100": 312, "A800": 312, "B200": 2250}


def plan(args, n_rows: int, world: int) -> tuple[int, int, int]:
    """Rows per rank per step, total steps over --epochs, warmup steps."""
    rows_per_step = max(1, round(args.tokens_per_step / args.max_length))
    rows_per_rank = -(-rows_per_step // world)  # the same on every rank (FSDP collectives)
    usable = n_rows // world * world  # the sampler drops the tail that does not split evenly
    total = max(1, math.ceil(args.epochs * usable / (rows_per_rank * world)))
    return rows_per_rank, total, math.ceil(args.warmup_ratio * total)


def train(args) -> None:
    d = init_distributed(args.dist_timeout_min)
    torch.manual_seed(args.seed)
    print0(json.dumps(vars(args), indent=2))
    tok, model = load_model(args, d.rank)
    rows = load_rows(args.data, tok, args.max_length, args.data_cache or Path(args.out) / "tokens", args.overlong,
                     args.skip_bad)
    print0(f"data {json.dumps(rows.stats)}")
    shard_model(model, d, args.checkpointing)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    rows_per_rank, total, warmup = plan(args, len(rows), d.world_size)
    step_tokens = rows_per_rank * d.world_size * args.max_length
    print0(f"plan: {rows_per_rank} rows x {d.world_size} ranks x {args.max_length} tokens per step, "
           f"{total} steps, {warmup} warmup")
    run = RunDir(args.out, d.rank, args, keep=args.keep)
    sampler = data.ShardedSampler(len(rows), d.rank, d.world_size, seed=args.seed)
    step = first = run.resume(model, optimizer, sampler)["step"]
    last = min(total, args.max_steps) if args.max_steps > 0 else total
    lr = lambda s: lr_at(s, args.lr, args.min_lr, warmup, total)
    gpu = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else ""
    peak = next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in gpu), 0.0) * d.world_size
    t_start = time.perf_counter()
    while step < last:
        t0 = time.perf_counter()
        idx = sampler.next_indices(rows_per_rank)
        m = train_step(model, optimizer, rows.batch(idx), args.micro_batch, lr(step), args.grad_clip)
        step += 1
        dt, per_step = time.perf_counter() - t0, (time.perf_counter() - t_start) / (step - first)
        # out of time on some rank: every rank stops here, with a checkpoint and the export
        if args.max_seconds > 0 and all_reduce(float(time.perf_counter() - t_start > args.max_seconds)) > 0:
            last = step
        mfu = {"mfu": flops_per_token(model.config, args.max_length) * step_tokens / dt / peak} if peak else {}
        eta = (last - step) * per_step
        if args.max_seconds > 0:  # the time budget may end the run first
            eta = min(eta, max(0.0, t_start + args.max_seconds - time.perf_counter()))
        run.log(step, {"loss": m.pop("loss"), "lr": lr(step - 1), "grad_norm": m.pop("grad_norm"),
                       "tokens_per_s": round(step_tokens / dt), **mfu, "eta_min": eta / 60,
                       "epoch": step * rows_per_rank / (len(rows) // d.world_size), **m})
        if step == last or (args.save_every > 0 and step % args.save_every == 0):
            run.save(step, model, optimizer, {"step": step, "sampler": sampler.state_dict()})
    print0(f"exported {run.export_hf(model, tok)}")


# ------------------------------------------------------------------------------------- command line
class _NeedsPackage(argparse.Action):
    """A flag named after the optional package it needs: a one-line error at parse time if it is
    missing."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            importlib.import_module(self.dest)
        except ImportError:
            parser.exit(2, f"{parser.prog}: error: {option_string} needs the optional package {self.dest}, "
                           f"which is not installed: pip install {self.dest} (or drop {option_string})\n")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags both trainers share: the collective timeout and the trackers (read by RunDir)."""
    g = p.add_argument_group("cluster and tracking")
    g.add_argument("--dist-timeout-min", type=float, default=DIST_TIMEOUT_MIN, help="minutes a collective waits "
                   "for the slowest rank before the job ends (default %(default)s: see sft.DIST_TIMEOUT_MIN)")
    g.add_argument("--wandb", metavar="PROJECT", action=_NeedsPackage, help="log metrics and the "
                   "config to this wandb project (rank 0; the wandb package is optional)")
    g.add_argument("--wandb-name", help="wandb run name (unset: wandb picks one)")
    g.add_argument("--wandb-offline", action="store_true", help="wandb offline: files stay in OUT/wandb to sync")
    g.add_argument("--tensorboard", nargs=0, default=False, action=_NeedsPackage,
                   help="TensorBoard event files in OUT/tensorboard (rank 0; the tensorboard package is optional)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="HF checkpoint folder to start from (weights, config, tokenizer)")
    g.add_argument("--config", help="config.json of a model to train from scratch (with --tokenizer)")
    g.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    g.add_argument("--data", nargs="+", help="SFT JSONL file(s): {messages} or {prompt, response} records")
    g.add_argument("--max-length", type=int, default=32768, help="tokens per packed row (= longest example)")
    g.add_argument("--overlong", choices=["truncate", "skip"], default="truncate", help="examples over max-length")
    g.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of failing")
    g.add_argument("--data-cache", help="token store folder (default: OUT/tokens), reused for the same data")
    g = p.add_argument_group("optimisation (Klear SFT: 8e-5 -> 4e-5 cosine, 4 epochs, 32K)")
    g.add_argument("--lr", type=float, default=8e-5, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=4e-5, help="cosine floor, reached at the end")
    g.add_argument("--warmup-ratio", type=float, default=0.03, help="share of all steps in linear warmup")
    g.add_argument("--epochs", type=float, default=4.0, help="passes over the packed rows")
    g.add_argument("--tokens-per-step", type=int, default=128 * 32768, help="global tokens per optimizer step")
    g.add_argument("--micro-batch", type=int, default=1, help="rows per forward/backward per rank")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm (0: no clip)")
    g.add_argument("--checkpointing", action="store_true", help="activation checkpointing per decoder layer")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/sft", help="run folder: metrics, checkpoints, HF export")
    g.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    g.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    g.add_argument("--max-steps", type=int, default=0, help="stop after this step (schedule still spans --epochs)")
    g.add_argument("--max-seconds", type=float, default=0.0, help="stop (saved, exported) after this much time")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep", type=int, default=2, help="complete checkpoints kept")
    add_run_args(p)
    args = p.parse_args(argv)
    if not (args.data and (args.model or (args.config and args.tokenizer))):
        p.error("need --data and either --model DIR or --config config.json --tokenizer DIR")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with distributed_run():
        train(args)


if __name__ == "__main__":
    main(sys.argv[1:])
