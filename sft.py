"""Long chain-of-thought SFT for Qwen3 (Klear-Reasoner stage one), and the trainer plumbing gppo.py reuses.

What: token-level NLL on the assistant turn (reasoning, answer, `<|im_end|>`) of packed chat examples, with FSDP2
over any number of ranks, AdamW with warmup + cosine decay to a floor, and crash-safe sharded checkpoints.

Design:
- torchrun or a single process: either way there is a process group (a private in-memory 1-rank one without
  torchrun), so collectives and DCP checkpoints run the same code. FSDP2 `fully_shard` per decoder layer, then the
  root (embeddings, final norm, lm_head: tied weights stay in one unit); bf16 params / fp32 gradient reduction
  (a plain sum: the loss is already a global mean) over fp32 master weights and AdamW states on CUDA; fp32 on
  CPU. One CPU process is not wrapped at all: nothing to shard or cast, and FSDP's hooks would only cost time.
- The LM head is not part of `model(...)` (it returns hidden states), so `batch_logprobs` reads lm_head.weight
  right after the forward: the FSDP2 root is built with reshard_after_forward=False, so its parameters stay
  gathered from its pre-forward until its post-backward and that weight's gradient goes through FSDP's
  reduce-scatter like any other. (A no-grad forward also leaves them gathered until the next backward; an
  optimizer step always follows a backward, so the gathered copy is never stale in training.)
- Loss = summed token NLL / the global number of loss tokens of the optimizer step (all ranks, all micro-steps,
  counted first with one all_reduce), so any split of the same batch over ranks or micro-steps gives the same
  gradient.
- Data: local rank 0 of each node tokenises the files once into a memory-mapped token store (OUT/tokens, reused
  by resumes and reruns); every rank plans the same best-fit rows of --max-length tokens and builds only the
  rows it trains on, so memory is O(documents), not O(tokens); the sampler gives each rank a strided shard of a
  per-epoch permutation of rows; a step takes --tokens-per-step tokens globally.
- Checkpoints: DCP-sharded model + optimizer, per-rank data position + RNG, meta and args JSON, written into
  `step_N.tmp` with a COMPLETE marker last, then renamed; latest() only sees complete folders; --keep kept.
- Klear SFT defaults (docs/ALGORITHM.md 1): lr 8e-5 -> 4e-5 cosine, 4 epochs, 32K tokens. Not published, chosen here:
  3% linear warmup, 4M tokens per step (128 rows of 32K), AdamW betas (0.9, 0.95), weight decay 0.1 (matrices
  only), grad clip 1.0 (a step whose norm is not finite is skipped).
- --max-steps stops early without changing the schedule (it still spans --epochs): a long run can be split into
  jobs with --resume, and the loss curve is that of one uninterrupted run.
- Watching a run (both trainers, rank 0): a `|` line and a metrics.jsonl line per step; --wandb PROJECT and
  --tensorboard send the same numbers to an experiment tracker (optional packages, imported only when asked for;
  a resume continues the same tracker run); `python plot.py OUT` draws the dashboard from metrics.jsonl.
- --dist-timeout-min (both trainers): how long a collective waits for the slowest rank, sized for RL's worst wait
  (DIST_TIMEOUT_MIN below).

Run:
  python sft.py --config runs/demo/data/config.json --tokenizer runs/demo/data --data runs/demo/data/sft.jsonl \\
      --out runs/demo/sft --max-length 512 --tokens-per-step 16384 --lr 1e-3 --min-lr 1e-4 --epochs 3
  torchrun --nproc_per_node 8 sft.py --model Qwen3-8B-Base --data sft.jsonl --out runs/sft --checkpointing
  torchrun --nproc_per_node 8 sft.py --model Qwen3-8B-Base --data sft.jsonl --out runs/sft --resume
  torchrun --nproc_per_node 8 sft.py ... --wandb klear-sft [--wandb-offline] --tensorboard   # + an experiment tracker
  python bench.py sft                    # CPU tokens/s vs transformers + AdamW, packing efficiency (demo data)
  python -m pytest -q tests/test_sft.py
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

IGNORE_INDEX = kernels.IGNORE_INDEX


# ------------------------------------------------------------------------------------------ distributed plumbing
def print0(*args) -> None:
    if (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))) == 0:
        print(*args, flush=True)


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


# Minutes a collective may wait for the slowest rank before the watchdog ends the job (NCCL's default: 10). RL's
# worst wait: ranks meet in the first all-reduce after their rollouts, so the others wait while one rank is still
# generating its whole draw at the cap. The recipe on 8 GPUs: 256 prompts drawn / 8 ranks x 8 samples = 256 rollouts
# x 32,768 tokens = 8.4M tokens on that rank. 8B bf16 decode: ~80 GB of KV cache at 144 KiB per token holds ~540K
# tokens (~33 rows at their mean length of 16K), and each step reads all of it (17 ms) plus the weights (3.4 ms) at
# 4.8 TB/s: ~1,600 tokens/s at best, 87 minutes; then code rewards (256 jobs x 35 s / 8 workers): 19 minutes.
# ~110 minutes in all; 180 leaves headroom for a slower engine.
DIST_TIMEOUT_MIN = 180.0


def init_distributed(timeout_min: float = DIST_TIMEOUT_MIN) -> Dist:
    """Process group from torchrun's env (gloo on CPU, nccl on CUDA), or a private 1-rank group without it.
    timeout_min: how long a collective waits for the other ranks (--dist-timeout-min)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend, timeout = "nccl" if cuda else "gloo", datetime.timedelta(minutes=timeout_min)
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=device if cuda else None, timeout=timeout)
        else:  # `python sft.py`: an in-memory store, nothing to rendezvous with
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return Dist(dist.get_rank(), dist.get_world_size(), local, device)


def all_reduce_sum(x: float | torch.Tensor) -> torch.Tensor:
    """Sum over ranks in float64 (int stays int); the result lives where the backend needs it."""
    t = x.detach().clone() if torch.is_tensor(x) else torch.tensor(float(x), dtype=torch.float64)
    t = t.double() if t.is_floating_point() else t
    if dist.is_initialized():
        if dist.get_backend() == "nccl" and not t.is_cuda:
            t = t.cuda()
        dist.all_reduce(t)
    return t


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def distributed_run():
    """The body of a trainer's main. On success the FSDP state of the finished run is freed while the interpreter
    is whole (its reference cycles otherwise die at exit, where gloo's pending work objects could abort a rank
    with 'terminate called' after all its work was saved), and the ranks leave together; then the group goes."""
    try:
        yield
        gc.collect()
        _barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def shard_model(model: qwen3.Qwen3, dist_: Dist, checkpointing: bool = False,
                bf16: bool | None = None) -> qwen3.Qwen3:
    """FSDP2 per decoder layer, then the root (embeddings + norm + lm_head, tied or not, in one unit).
    bf16 (default: on CUDA): bf16 compute params, fp32 gradient reduction, fp32 master weights.
    A model on the meta device (load_model on ranks > 0) receives its shards from rank 0's copy."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    model.gradient_checkpointing = checkpointing
    bf16 = dist_.device.type == "cuda" if bf16 is None else bf16
    if dist_.world_size == 1 and dist_.device.type == "cpu" and not bf16:
        return model  # fp32 on one CPU process: nothing to shard or cast, FSDP's hooks would only cost time
    meta = any(p.is_meta for p in model.parameters())
    broadcast = bool(all_reduce_sum(float(meta)) > 0)  # some rank holds no weights: rank 0 sends them
    full = model.state_dict() if broadcast and dist_.rank == 0 else {}  # rank 0's tensors, before sharding
    mesh = init_device_mesh(dist_.device.type, (dist_.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # The root keeps its params gathered between forward and backward: batch_logprobs reads lm_head.weight then.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    for unit in [*model.model.layers, model]:  # sum, not average, over ranks: the loss is already a global mean
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    if broadcast:  # the documented FSDP2 meta-device flow: allocate the shards, then fill them from rank 0
        if meta:
            model.to_empty(device=dist_.device)
        opts = dcp_sd.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        dcp_sd.set_model_state_dict(model, full, options=opts)
    return model


# ------------------------------------------------------------------------------------------ optimisation
def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over fp32 (sharded) params; weight decay on matrices only, not on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, foreach=True)


def lr_at(step: int, peak: float, floor: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """lr of optimizer step `step` (0-based): linear warmup to peak, then cosine to floor at `total` (or constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    assert kind == "cosine", kind
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_and_check(model: torch.nn.Module, max_norm: float) -> tuple[float, bool]:
    """Global grad norm over all ranks (clipped to max_norm when > 0) and whether it is finite."""
    grads = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    norm = float(norm)
    return norm, math.isfinite(norm)


# ------------------------------------------------------------------------------------------ loss
def batch_logprobs(model: qwen3.Qwen3, batch: dict, temperature: float = 1.0, return_entropy: bool = False):
    """log p(targets) (B, T) fp32 of a packed batch (0 where targets == -100), and the entropy (B, T) if asked."""
    hidden = model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids"))
    weight = model.lm_head.weight  # gathered: the FSDP2 root does not reshard after forward (see shard_model)
    assert not isinstance(weight, DTensor), "lm_head.weight is still sharded: call this right after model(...)"
    targets = batch["targets"]
    out = kernels.token_logprobs(hidden.flatten(0, 1), weight, targets.flatten(), temperature=temperature,
                                 return_entropy=return_entropy)
    if return_entropy:
        return out[0].view(targets.shape), out[1].view(targets.shape)
    return out.view(targets.shape)


def token_nll(model: qwen3.Qwen3, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """Summed NLL over the target tokens of a packed batch (input_ids, targets, doc_ids, position_ids)."""
    return -batch_logprobs(model, batch, temperature).sum()


# ------------------------------------------------------------------------------------------ run folder
def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class Trackers:
    """wandb and/or TensorBoard on rank 0 (--wandb, --tensorboard): the numeric entries of each metrics.jsonl line
    at its step (strings, e.g. a skip reason, stay in the text log) and the resolved config once per process.
    Opened at the first logged step; a resumed run continues the same tracker runs: wandb by the run id kept in
    OUT/wandb_id.txt (its x axis is our `step`, so a step replayed after a resume is logged again, like in
    metrics.jsonl), TensorBoard (OUT/tensorboard) by purging the events from that step on (the replay wins)."""

    def __init__(self, path: Path, args: dict):
        self.path, self.args, self.tb, self.wandb = path, args, None, None
        self.config = json.loads(json.dumps(args, default=str))

    def log(self, step: int, metrics: dict) -> None:
        if self.tb is None and self.wandb is None:
            self._open(step)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()  # a crashed run keeps every logged step
        if self.wandb is not None:
            self.wandb.log({**scalars, "step": step})

    def _open(self, step: int) -> None:
        if self.args.get("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.path / "tensorboard"), purge_step=step)
            text = json.dumps(self.config, indent=2).replace("\n", "\n    ")  # indented: markdown shows it as code
            self.tb.add_text("config", "    " + text, step)
        if self.args.get("wandb"):
            import wandb
            if wandb.run is not None:  # an earlier run of this process (tests, notebooks): one run at a time
                wandb.run.finish()
            id_file = self.path / "wandb_id.txt"
            resume = bool(self.args.get("resume")) and id_file.is_file()
            self.wandb = wandb.init(project=self.args["wandb"], name=self.args.get("wandb_name"),
                                    id=id_file.read_text().strip() if resume else None, resume="allow",
                                    dir=str(self.path), mode="offline" if self.args.get("wandb_offline") else None)
            # mode None: wandb's own settings (WANDB_MODE=offline, `wandb offline`)
            qwen3.atomic_write(id_file, self.wandb.id)
            self.wandb.config.update(self.config, allow_val_change=True)  # a resume may change --steps and such
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None


class RunDir:
    """A run folder: args.json, metrics.jsonl, checkpoints/step_XXXXXXXX (sharded), HF exports, tracker files."""

    def __init__(self, path, rank: int, args: dict | argparse.Namespace | None = None, keep: int = 2):
        self.path, self.rank, self.keep = Path(path), rank, keep
        self.args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.ckpts = self.path / "checkpoints"
        if rank == 0:
            self.ckpts.mkdir(parents=True, exist_ok=True)
            qwen3.atomic_write(self.path / "args.json", json.dumps(self.args, indent=2, default=str))
        tracked = rank == 0 and (self.args.get("wandb") or self.args.get("tensorboard"))
        self.trackers = Trackers(self.path, self.args) if tracked else None
        if self.trackers is not None:  # closed when the run folder's object goes (train returns), or at exit
            weakref.finalize(self, self.trackers.close)

    def log(self, step: int, metrics: dict) -> None:
        """One `|` line on rank 0 and a JSON line in metrics.jsonl (after a resume, a later line for a step wins);
        the numbers also go to the trackers asked for."""
        if self.rank != 0:
            return
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        print(" | ".join([f"step {step}"] + [f"{k} {fmt(v)}" for k, v in metrics.items()]), flush=True)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.trackers is not None:
            self.trackers.log(step, metrics)

    def save(self, step: int, model, optimizer, state: dict) -> Path:
        """Sharded checkpoint of model + optimizer (DCP), this rank's `state` and RNG; atomic (tmp + rename)."""
        final = self.ckpts / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a crash during an earlier write
            tmp.mkdir(parents=True)
        _barrier()
        sd = _sharded_state(model, optimizer)
        dcp.save(sd, checkpoint_id=tmp)
        with open(tmp / f"rank{self.rank:05d}.pt", "wb") as f:
            torch.save({"state": state, "rng": _rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        _barrier()  # every rank's shards are on disk before the folder can count as complete
        if self.rank == 0:
            qwen3.atomic_write(tmp / "meta.json", json.dumps({"step": step, "world_size": dist.get_world_size()}))
            qwen3.atomic_write(tmp / "args.json", json.dumps(self.args, indent=2, default=str))
            qwen3.atomic_write(tmp / "COMPLETE", "")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            qwen3.fsync_dir(self.ckpts)
            debris = list(self.ckpts.glob("step_*.tmp"))  # folders of writes that crashed (saves run in order)
            for old in debris + (self._complete()[:-self.keep] if self.keep > 0 else []):
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def _complete(self) -> list[Path]:
        found = [p for p in self.ckpts.glob("step_*") if p.suffix != ".tmp" and (p / "COMPLETE").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        done = self._complete() if self.ckpts.is_dir() else []
        return done[-1] if done else None

    def load(self, ckpt, model, optimizer) -> dict:
        """Restore model + optimizer (any sharding) and this rank's RNG; returns the `state` given to save()."""
        ckpt = Path(ckpt)
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta["world_size"] != dist.get_world_size():
            raise ValueError(f"{ckpt}: written by {meta['world_size']} ranks, resuming needs the same number "
                             f"(now {dist.get_world_size()}): the data position is per rank")
        sd = _sharded_state(model, optimizer)
        dcp.load(sd, checkpoint_id=ckpt)
        dcp_sd.set_model_state_dict(model, sd["model"])
        dcp_sd.set_optimizer_state_dict(model, optimizer, sd["optim"])
        extra = torch.load(ckpt / f"rank{self.rank:05d}.pt", weights_only=False)
        _set_rng_state(extra["rng"])
        return extra["state"]

    def export_hf(self, model, tokenizer, out, dtype: torch.dtype | None = None) -> Path:
        """Gather the full state dict to rank 0's CPU and write a HF folder (config, safetensors, tokenizer)."""
        opts = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it all, on CPU
        sd = dcp_sd.get_model_state_dict(model, options=opts)
        out = Path(out)
        if self.rank == 0:
            sd = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in sd.items()}
            tmp = out.with_name(f".{out.name}.export-tmp")
            qwen3.save_pretrained(model, tmp, state_dict=sd)  # itself atomic; the tokenizer joins before rename
            tokenizer.save(tmp)
            qwen3.fsync_dir(tmp)
            qwen3.replace_dir(tmp, out)
        _barrier()
        return out


def _sharded_state(model, optimizer) -> dict:
    """This rank's DTensor shards (or plain tensors) under FQN keys: what DCP saves and loads in place."""
    return {"model": dcp_sd.get_model_state_dict(model), "optim": dcp_sd.get_optimizer_state_dict(model, optimizer)}



# ------------------------------------------------------------------------------------------ SFT
def load_model(args, rank: int = 0) -> tuple[data.Tokenizer, qwen3.Qwen3]:
    """The tokenizer and an fp32 model on CPU (shard_model moves each rank's shards to its device). From a
    checkpoint only rank 0 reads the weights; other ranks build on the meta device and shard_model fills their
    shards from rank 0 (one copy of an 8B model in host memory instead of one per rank: 32 GB, not 256)."""
    if args.model:
        tok = data.load_tokenizer(args.tokenizer or args.model)
        if rank == 0:
            model = qwen3.load_pretrained(args.model)
        else:
            cfg = qwen3.Qwen3Config.from_json(Path(args.model) / "config.json")
            with torch.device("meta"):
                model = qwen3.Qwen3(cfg)
    else:
        tok = data.load_tokenizer(args.tokenizer)
        model = qwen3.build_model(qwen3.Qwen3Config.from_json(args.config), seed=args.seed)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    return tok, model


def load_rows(paths: list[str], tok: data.Tokenizer, seq_len: int, cache, overlong: str = "truncate",
              skip_bad: bool = False) -> data.PackedRows:
    """SFT JSONL files -> packed rows (the same on every rank) over a token store in `cache`. Local rank 0 of
    each node tokenises (once: later runs and resumes with the same files and tokenizer reuse the store), the
    other ranks wait for it and memory-map the same files."""
    store = data.build_token_store(paths, tok, cache, skip_bad, wait=int(os.environ.get("LOCAL_RANK", 0)) > 0)
    return data.PackedRows(store, seq_len, tok.pad_id, overlong)


def train_step(model, optimizer, batch: dict, micro_batch: int, lr: float, grad_clip: float) -> dict:
    """One optimizer step over this rank's rows `batch` ((R, T) tensors), in micro-batches of micro_batch rows."""
    device = next(model.parameters()).device
    n_tokens = int(all_reduce_sum((batch["targets"] != IGNORE_INDEX).sum()))  # all ranks, all micro-steps
    for group in optimizer.param_groups:
        group["lr"] = lr
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for s in range(0, batch["input_ids"].shape[0], micro_batch):
        mb = {k: v[s:s + micro_batch].to(device, non_blocking=True) for k, v in batch.items()}
        loss = token_nll(model, mb)
        # Every micro-step's sum shares the step's global denominator. FSDP2 reduce-scatters after each backward,
        # so gradients stay sharded: memory does not grow with the number of micro-steps.
        (loss / max(n_tokens, 1)).backward()
        nll += loss.detach().double()
    grad_norm, finite = clip_and_check(model, grad_clip)
    if finite and n_tokens > 0:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(all_reduce_sum(nll)) / max(n_tokens, 1), "grad_norm": grad_norm,
            "skipped": int(not finite), "loss_tokens": n_tokens}


def flops_per_token(cfg: qwen3.Qwen3Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params, plus causal attention over the full row (an upper bound)."""
    H, L, hd = cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim
    attn = 2 * H * hd * (cfg.num_attention_heads + cfg.num_key_value_heads)
    matmul = L * (attn + 3 * H * cfg.intermediate_size) + cfg.vocab_size * H  # lm_head counts, embedding does not
    return 6 * matmul + 6 * L * cfg.num_attention_heads * hd * seq_len


def peak_flops(device: torch.device, tflops: float = 0.0) -> float:
    """Dense bf16 peak FLOP/s of one device (0 when unknown: no MFU is logged)."""
    if tflops > 0 or device.type != "cuda":
        return tflops * 1e12
    name = torch.cuda.get_device_name(device)
    table = (("H200", 989), ("H100", 989), ("H800", 989), ("H20", 148), ("A100", 312), ("A800", 312), ("B200", 2250))
    return next((tf * 1e12 for key, tf in table if key in name), 0.0)


def plan(args, n_rows: int, world: int) -> tuple[int, int, int]:
    """Rows per rank per step, total steps over --epochs, warmup steps."""
    rows_per_step = max(1, round(args.tokens_per_step / args.max_length))
    rows_per_rank = -(-rows_per_step // world)  # every rank takes the same number of rows (FSDP collectives)
    usable = n_rows // world * world  # the sampler drops the tail that does not split evenly
    total = max(1, math.ceil(args.epochs * usable / (rows_per_rank * world)))
    return rows_per_rank, total, math.ceil(args.warmup_ratio * total)


def prepare(args, d: Dist) -> tuple[data.Tokenizer, qwen3.Qwen3, torch.optim.AdamW, data.PackedRows, dict]:
    """Tokenizer, sharded model, optimizer, packed rows and packing stats, with the resolved args printed."""
    torch.manual_seed(args.seed)
    print0(json.dumps(vars(args), indent=2))
    tok, model = load_model(args, d.rank)
    rows = load_rows(args.data, tok, args.max_length, args.data_cache or Path(args.out) / "tokens", args.overlong,
                     args.skip_bad)
    print0(f"data {json.dumps(rows.stats)}")
    shard_model(model, d, args.checkpointing)
    return tok, model, build_optimizer(model, args.lr, args.weight_decay, tuple(args.betas)), rows, rows.stats


def train(args) -> None:
    d = init_distributed(args.dist_timeout_min)
    tok, model, optimizer, rows, stats = prepare(args, d)
    rows_per_rank, total, warmup = plan(args, stats["rows"], d.world_size)
    step_tokens = rows_per_rank * d.world_size * args.max_length
    print0(f"plan: {rows_per_rank} rows x {d.world_size} ranks x {args.max_length} tokens per step, {total} steps, "
           f"{warmup} warmup")
    run = RunDir(args.out, d.rank, args, keep=args.keep)
    sampler, step, ckpt = data.ShardedSampler(stats["rows"], d.rank, d.world_size, seed=args.seed), 0, run.latest()
    if args.resume and ckpt is not None:
        state = run.load(ckpt, model, optimizer)
        step = state["step"]
        sampler.load_state_dict(state["sampler"])
        print0(f"resumed from {ckpt} at step {step}")
    elif ckpt is not None or args.resume:
        print0(f"starting at step 0 (resume: {args.resume}; latest complete checkpoint in {run.ckpts}: {ckpt})")
    last = min(total, args.max_steps) if args.max_steps > 0 else total
    lr = lambda s: lr_at(s, args.lr, args.min_lr, warmup, total)
    peak = peak_flops(d.device, args.peak_tflops) * d.world_size
    t_start, first = time.perf_counter(), step
    while step < last:
        t0 = time.perf_counter()
        idx = sampler.next_indices(rows_per_rank)
        m = train_step(model, optimizer, rows.batch(idx), args.micro_batch, lr(step), args.grad_clip)
        step += 1
        dt, per_step = time.perf_counter() - t0, (time.perf_counter() - t_start) / (step - first)
        if args.max_seconds > 0 and all_reduce_sum(float(time.perf_counter() - t_start > args.max_seconds)) > 0:
            last = step  # out of time on some rank: every rank stops here, with a checkpoint and the export
        mfu = {"mfu": flops_per_token(model.config, args.max_length) * step_tokens / dt / peak} if peak else {}
        eta = (last - step) * per_step
        if args.max_seconds > 0:  # the time budget may end the run first
            eta = min(eta, max(0.0, t_start + args.max_seconds - time.perf_counter()))
        run.log(step, {"loss": m.pop("loss"), "lr": lr(step - 1), "grad_norm": m.pop("grad_norm"),
                       "tokens_per_s": round(step_tokens / dt), **mfu, "eta_min": eta / 60,
                       "epoch": step * rows_per_rank / (stats["rows"] // d.world_size), **m})
        if step == last or (args.save_every > 0 and step % args.save_every == 0):
            run.save(step, model, optimizer, {"step": step, "sampler": sampler.state_dict()})
        if args.export_every > 0 and step % args.export_every == 0 and step != last:
            run.export_hf(model, tok, run.path / f"hf-step{step}", getattr(torch, args.export_dtype))
    print0(f"exported {run.export_hf(model, tok, run.path / 'hf', getattr(torch, args.export_dtype))}")


# ------------------------------------------------------------------------------------------ command line
class _NeedsPackage(argparse.Action):
    """A flag that needs an optional package: a one-line error at parse time when it is not installed."""

    def __init__(self, option_strings, dest, package: str, **kw):
        self.package = package
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            importlib.import_module(self.package)
        except ImportError:
            parser.exit(2, f"{parser.prog}: error: {option_string} needs the optional package {self.package}, "
                           f"which is not installed: pip install {self.package} (or drop {option_string})\n")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags both trainers share: the collective timeout and the experiment trackers (RunDir reads them)."""
    g = p.add_argument_group("cluster and tracking")
    g.add_argument("--dist-timeout-min", type=float, default=DIST_TIMEOUT_MIN, help="minutes a collective waits "
                   "for the slowest rank before the job is ended (NCCL's own: 10). Default %(default)s: RL ranks wait "
                   "for the slowest one's rollouts: 256 rollouts x 32K tokens of an 8B model at ~1,600 tokens/s "
                   "(KV-bound on an H200) = 87 min, + 19 min of code rewards, with headroom (sft.DIST_TIMEOUT_MIN)")
    g.add_argument("--wandb", metavar="PROJECT", action=_NeedsPackage, package="wandb", help="log metrics and the "
                   "config to this wandb project (rank 0; the wandb package is optional)")
    g.add_argument("--wandb-name", help="wandb run name (unset: wandb picks one)")
    g.add_argument("--wandb-offline", action="store_true", help="wandb offline mode: the run's files stay in "
                   "OUT/wandb for `wandb sync` (WANDB_MODE=offline does the same)")
    g.add_argument("--tensorboard", nargs=0, default=False, action=_NeedsPackage, package="tensorboard",
                   help="TensorBoard event files in OUT/tensorboard (rank 0; the tensorboard package is optional)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="HF checkpoint folder to start from (weights, config, tokenizer)")
    g.add_argument("--config", help="config.json of a model trained from scratch (with --tokenizer)")
    g.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    g.add_argument("--data", nargs="+", help="SFT JSONL file(s): {messages} or {prompt, response} records")
    g.add_argument("--max-length", type=int, default=32768, help="tokens per packed row (= longest example)")
    g.add_argument("--overlong", choices=["truncate", "skip"], default="truncate", help="examples over max-length")
    g.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of failing")
    g.add_argument("--data-cache", help="token store folder (default: OUT/tokens), reused while files and "
                   "tokenizer are unchanged")
    g = p.add_argument_group("optimisation (Klear SFT: 8e-5 -> 4e-5 cosine, 4 epochs, 32K)")
    g.add_argument("--lr", type=float, default=8e-5, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=4e-5, help="cosine floor reached at the last step")
    g.add_argument("--warmup-ratio", type=float, default=0.03, help="share of all steps in linear warmup")
    g.add_argument("--epochs", type=float, default=4.0, help="passes over the packed rows")
    g.add_argument("--tokens-per-step", type=int, default=128 * 32768, help="global tokens per optimizer step")
    g.add_argument("--micro-batch", type=int, default=1, help="rows per forward/backward on each rank")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices only)")
    g.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.95], help="AdamW betas")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm (0: no clipping)")
    g.add_argument("--checkpointing", action="store_true", help="activation checkpointing per decoder layer")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/sft", help="run folder: args, metrics, checkpoints, HF export")
    g.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    g.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    g.add_argument("--max-steps", type=int, default=0, help="stop after this step (schedule still spans --epochs)")
    g.add_argument("--max-seconds", type=float, default=0.0, help="stop once this run has trained this long "
                   "(the demo's continued-SFT control gets RL's wall time)")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep", type=int, default=2, help="complete checkpoints kept")
    g.add_argument("--export-every", type=int, default=0, help="also export a HF folder every N steps")
    g.add_argument("--export-dtype", choices=["float32", "bfloat16"], default="float32", help="HF export dtype")
    g.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (0: from the GPU name)")
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
