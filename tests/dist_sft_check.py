"""torchrun helper for tests/test_sft.py, so that one start-up covers these 2-rank checks:
1. train steps 1-3 with FSDP2, then --resume from the sharded checkpoint of step 3 and train steps 4-5;
2. the GPU configuration on CPU (bf16 params, fp32 reduce, activation checkpointing, tied lm_head read after the
   root forward): the gathered gradient vs an unsharded fp32 model on the same global batch, printed as
   `bf16 grad rel err X`;
3. --model on 2 ranks: rank 1 builds on the meta device and receives its shards from rank 0
   (`broadcast load max diff X`);
4. all_reduce with op=MAX.
Usage: torchrun --nproc_per_node 2 tests/dist_sft_check.py OUT [sft.py args...]"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import model as qwen3  # noqa: E402
import sft  # noqa: E402


def bf16_grad_error(args) -> float:
    d = sft.init_distributed()
    tok = data.load_tokenizer(args.tokenizer)
    packed = sft.load_rows(args.data, tok, args.max_length, Path(args.out) / "tokens")
    rows = packed.batch(range(len(packed)))
    cfg = qwen3.Qwen3Config.from_json(args.config)
    ours, ref = qwen3.build_model(cfg, seed=0), qwen3.build_model(cfg, seed=0)
    sft.shard_model(ours, d, checkpointing=True, bf16=True)
    n = 2 * d.world_size
    (sft.token_nll(ours, {k: v[2 * d.rank:2 * d.rank + 2] for k, v in rows.items()}) / n).backward()
    (sft.token_nll(ref, {k: v[:n] for k, v in rows.items()}) / n).backward()
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # tied: one DTensor, both uses in its gradient
    err = [(p.grad.full_tensor() - q.grad).norm() / q.grad.norm() for p, q in zip(ours.parameters(), ref.parameters())]
    return float(max(err))


def broadcast_load_error(args) -> float:
    """--model on 2 ranks: only rank 0 reads the checkpoint, rank 1 starts on the meta device and gets its shards."""
    d = sft.init_distributed()
    tok, model = sft.load_model(args, d.rank)
    assert all(p.is_meta for p in model.parameters()) == (d.rank == 1)
    sft.shard_model(model, d)
    ref = qwen3.load_pretrained(args.model).state_dict()
    return max((v.full_tensor() - ref[k]).abs().max().item() for k, v in model.state_dict().items())


if __name__ == "__main__":
    out, args = sys.argv[1], sys.argv[2:] + ["--out", sys.argv[1]]
    with sft.distributed_run():
        sft.train(sft.parse_args(args + ["--max-steps", "3"]))
        sft.train(sft.parse_args(args + ["--max-steps", "5", "--resume"]))
        sft.print0(f"bf16 grad rel err {bf16_grad_error(sft.parse_args(args)):.3e}")
        err = broadcast_load_error(sft.parse_args(args + ["--model", out + "/hf"]))
        sft.print0(f"broadcast load max diff {err:.3e}")
        top = sft.all_reduce(torch.tensor([float(sft.dist.get_rank()), -1.0]), op=sft.dist.ReduceOp.MAX)
        assert top.tolist() == [1.0, -1.0], top
