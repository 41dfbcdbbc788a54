"""sft.py: packed vs separate loss, 2 ranks vs 1 (+ a sharded resume, + the bf16 FSDP setup), kill -9 and resume,
a crash mid-checkpoint, the HF export in transformers, and learning a tiny set.

Runs share one tiny setup (demo tokenizer, a 2-layer hidden-64 Qwen3, 80 demo SFT examples packed into 256-token
rows) and one thread per process (2 shared cores). In-process runs call sft.main; the 2-rank checks share a single
torchrun launch (tests/dist_sft_check.py); the run that gets killed is a forked child (no interpreter start-up)."""
import datetime
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data
import demo
import gppo
import model as qwen3
import sft

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only spin against each other
    d = tmp_path_factory.mktemp("sft")
    demo.write_demo(d / "demo", n_sft=40, n_rl=1, n_eval=1)
    _even_rows(d / "demo", 256)
    cfg = json.loads((d / "demo" / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, head_dim=32, max_position_embeddings=256)
    (d / "tiny.json").write_text(json.dumps(cfg))
    args = ["--config", str(d / "tiny.json"), "--tokenizer", str(d / "demo"), "--data", str(d / "demo" / "sft.jsonl"),
            "--max-length", "256", "--tokens-per-step", "1024", "--micro-batch", "2", "--lr", "3e-3",
            "--min-lr", "3e-4", "--epochs", "2", "--save-every", "3", "--seed", "0"]
    sft.main(args + ["--out", str(d / "ref"), "--max-steps", "6"])  # the uninterrupted reference run
    yield d, args
    torch.set_num_threads(threads)


def _even_rows(demo: Path, seq_len: int) -> None:
    """Drop SFT examples until they pack into an even number of rows: 2 ranks then see exactly the rows (and so
    the lr schedule length) of 1 rank, since the sampler drops the rows that do not divide by the world size."""
    tok, lines = data.load_tokenizer(demo), (demo / "sft.jsonl").read_text().splitlines(keepends=True)
    while sft.load_rows([demo / "sft.jsonl"], tok, seq_len, demo.parent / "even_rows").stats["rows"] % 2:
        lines = lines[:-1]
        (demo / "sft.jsonl").write_text("".join(lines))


def curve(run: Path) -> dict:
    """step -> metrics; after a resume the later line for a step wins."""
    return {m["step"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def tiny(setup) -> tuple[data.Tokenizer, qwen3.Qwen3]:
    d, _ = setup
    return data.load_tokenizer(d / "demo"), qwen3.build_model(qwen3.Qwen3Config.from_json(d / "tiny.json"), seed=1)


def test_packed_row_loss_equals_separate_examples(setup, tmp_path):
    tok, model = tiny(setup)
    (tmp_path / "three.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in data.read_jsonl(setup[0] / "demo" / "sft.jsonl")[:3]))
    rows = sft.load_rows([tmp_path / "three.jsonl"], tok, 256, tmp_path / "tokens")
    packed = rows.batch([0])
    assert rows.stats["rows"] == 1 and rows.stats["docs"] == 3
    doc_ids = packed["doc_ids"][0]
    with torch.no_grad():
        together = sft.token_nll(model, packed)
        # each document alone: its own span of the row, positions from 0
        apart = sum(sft.token_nll(model, {k: v[:, doc_ids == d] for k, v in packed.items()}) for d in range(3))
    # each learned token is the target of the token before it
    assert int((packed["targets"] != -100).sum()) == int(rows.store.mask.sum())
    assert torch.allclose(together, apart, rtol=1e-5), (together, apart)


def test_two_ranks_match_one_rank_through_a_sharded_resume_and_bf16(setup):
    d, args = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "tests/dist_sft_check.py", str(d / "two"), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed from" in p.stdout and "step_00000003" in p.stdout
    one, two = curve(d / "ref"), curve(d / "two")
    assert sorted(two) == [1, 2, 3, 4, 5]
    for s in two:  # 1 rank x 2 micro-steps of 2 rows vs 2 ranks x 1 micro-step of 2 rows, same global batch
        assert abs(one[s]["loss"] - two[s]["loss"]) < 1e-5, (s, one[s], two[s])
        assert abs(one[s]["grad_norm"] - two[s]["grad_norm"]) < 1e-4 * one[s]["grad_norm"], (s, one[s], two[s])
        assert one[s]["loss_tokens"] == two[s]["loss_tokens"]
    assert (d / "two" / "hf" / "model.safetensors").is_file()
    err = float(p.stdout.split("bf16 grad rel err ")[1].split()[0])  # bf16 rounding, not a lost lm_head gradient
    assert 1e-4 < err < 0.03, err
    assert "broadcast load max diff 0.000e+00" in p.stdout  # rank 1 never read the checkpoint, yet holds it exactly


def _train_then_hang(argv: list[str]) -> None:
    """sft.main in a forked child that stops after logging step 4 (checkpoint 3 is on disk) to be killed there."""
    log = sft.RunDir.log

    def log_then_hang(self, step, metrics):
        log(self, step, metrics)
        if step == 4:
            time.sleep(600)
    sft.RunDir.log = log_then_hang
    sft.main(argv)


def logged_steps(run: Path) -> set:
    f = run / "metrics.jsonl"
    return set(curve(run)) if f.is_file() else set()


def test_kill9_then_resume_continues_the_same_curve(setup):
    d, args = setup
    # fork: the child starts with torch already imported (a fresh interpreter costs seconds on 2 shared cores)
    p = multiprocessing.get_context("fork").Process(target=_train_then_hang, args=(args + ["--out", str(d / "k")],))
    p.start()
    deadline = time.time() + 120
    while p.is_alive() and time.time() < deadline and 4 not in logged_steps(d / "k"):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert p.exitcode == -signal.SIGKILL
    assert max(curve(d / "k")) == 4  # killed mid-run: 16 steps in the schedule
    assert sft.RunDir(d / "k", 0).latest().name == "step_00000003"
    sft.main(args + ["--out", str(d / "k"), "--max-steps", "6", "--resume"])
    ref, resumed = curve(d / "ref"), curve(d / "k")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert abs(ref[s]["loss"] - resumed[s]["loss"]) <= 1e-6, (s, ref[s], resumed[s])
        assert ref[s]["lr"] == resumed[s]["lr"]


def test_crash_during_checkpoint_write_keeps_previous(setup, tmp_path, monkeypatch):
    tok, model = tiny(setup)
    dist_ = sft.init_distributed()
    sft.shard_model(model, dist_)
    opt = sft.build_optimizer(model, 1e-3)
    batch = sft.load_rows([setup[0] / "demo" / "sft.jsonl"], tok, 256, setup[0] / "ref" / "tokens").batch([0])
    run, sampler = sft.RunDir(tmp_path, 0, {"resume": True}), data.ShardedSampler(4, 0, 1, seed=0)
    state = lambda step: {"step": step, "sampler": sampler.state_dict()}
    sft.train_step(model, opt, batch, 1, 1e-3, 1.0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    run.save(1, model, opt, state(1))
    sft.train_step(model, opt, batch, 1, 1e-3, 1.0)

    def crash():
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(sft, "_rng_state", crash)  # dies after the DCP shards of step 2 are written
    with pytest.raises(RuntimeError, match="simulated"):
        run.save(2, model, opt, state(2))
    monkeypatch.undo()
    assert any((tmp_path / "checkpoints" / "step_00000002.tmp").iterdir())
    (tmp_path / "checkpoints" / "step_00000009").mkdir()  # a folder without COMPLETE (non-atomic file system)
    assert run.latest().name == "step_00000001"
    assert run.resume(model, opt, sampler) == state(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    run.save(3, model, opt, state(3))  # the next successful save clears the debris
    assert run.latest().name == "step_00000003" and not (tmp_path / "checkpoints" / "step_00000002.tmp").exists()
    # a non-finite gradient skips the step and leaves the weights alone
    nll = sft.token_nll
    monkeypatch.setattr(sft, "token_nll", lambda m, b: nll(m, b) * float("nan"))
    m = sft.train_step(model, opt, batch, 1, 1e-3, 1.0)
    assert m["skipped"] == 1
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    torch.distributed.destroy_process_group()


def test_export_loads_in_transformers_with_same_logits(setup):
    from transformers import Qwen3ForCausalLM
    hf = setup[0] / "ref" / "hf"
    ours = qwen3.load_pretrained(hf)
    theirs = Qwen3ForCausalLM.from_pretrained(hf)
    assert data.load_tokenizer(hf).vocab_size == data.load_tokenizer(setup[0] / "demo").vocab_size
    ids = torch.randint(0, ours.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.lm_head(ours(ids)), theirs(ids).logits
    assert (a - b).abs().max() < 1e-4


def test_trainer_learns_a_tiny_set(setup, tmp_path):
    d, _ = setup
    (tmp_path / "few.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in data.read_jsonl(d / "demo" / "sft.jsonl")[:6]))
    sft.main(["--model", str(d / "ref" / "hf"), "--data", str(tmp_path / "few.jsonl"),  # --model: our own export
              "--max-length", "256", "--tokens-per-step", "512", "--lr", "1e-2", "--min-lr", "1e-3",
              "--epochs", "120", "--warmup-ratio", "0.05", "--save-every", "0", "--out", str(tmp_path / "run")])
    losses = [m["loss"] for m in curve(tmp_path / "run").values()]
    assert losses[0] > 3.0 and max(losses[-3:]) < 0.1, losses[::10]


def test_max_seconds_stops_every_rank_with_a_checkpoint_and_export(setup, tmp_path):
    d, args = setup
    sft.main(args + ["--out", str(tmp_path / "timed"), "--max-seconds", "1e-9", "--save-every", "0"])
    assert sorted(curve(tmp_path / "timed")) == [1]  # over budget after the first step
    assert sft.RunDir(tmp_path / "timed", 1).latest().name == "step_00000001"
    assert (tmp_path / "timed" / "hf" / "model.safetensors").is_file()


def test_schedule():
    lrs = [sft.lr_at(s, 8e-5, 4e-5, 10, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(8e-6) and lrs[9] == pytest.approx(8e-5) and lrs[100] == pytest.approx(4e-5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert sft.lr_at(50, 1e-6, 1e-6, 10, 100) == 1e-6 and sft.lr_at(100, 1e-6, 1e-6, 10, 100) == 1e-6  # constant


def test_dist_timeout_flag_reaches_the_process_group(monkeypatch):
    """NCCL's default 10 minutes would end an RL job whose ranks wait for one rank's 32K-token rollouts."""
    assert sft.DIST_TIMEOUT_MIN >= 120  # the arithmetic in sft.py: ~110 minutes of the worst RL wait
    assert sft.parse_args(["--data", "-", "--model", "-"]).dist_timeout_min == sft.DIST_TIMEOUT_MIN
    assert gppo.parse_args(["--model", "-", "--data", "-"]).dist_timeout_min == sft.DIST_TIMEOUT_MIN
    seen = []

    def stop(timeout_min):
        seen.append(timeout_min)
        raise RuntimeError("stop here")
    with monkeypatch.context() as m:  # both trainers hand the flag to init_distributed
        m.setattr(sft, "init_distributed", stop)
        for main in (sft.main, gppo.main):
            with pytest.raises(RuntimeError, match="stop here"):
                main(["--model", "-", "--data", "-", "--dist-timeout-min", "7"])
    assert seen == [7.0, 7.0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for env in ({}, torchrun):  # the private 1-rank group, then torchrun's env:// rendezvous
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            d = sft.init_distributed(7)
            timeout = torch.distributed.group.WORLD._get_backend(d.device).options._timeout
            torch.distributed.destroy_process_group()
        assert timeout == datetime.timedelta(minutes=7), (env, timeout)
