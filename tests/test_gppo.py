"""gppo.py: the loss against the table of docs/ALGORITHM.md section 2, advantages, token means, RL and resume."""
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gppo_dist
import pytest
import torch

import data
import demo
import gppo
import model as qwen3
import sft

EL, EH, C = 0.2, 0.28, 10.0
# ratios on both sides of every boundary (1 - eps_low, 1 + eps_low, 1 + eps_high, c) and far out
RATIOS = [0.05, 0.5, 1 - EL - 1e-3, 1 - EL + 1e-3, 0.9, 1.0, 1.1, 1 + EL - 1e-3, 1 + EL + 1e-3, 1.25,
          1 + EH - 1e-3, 1 + EH + 1e-3, 2.0, 5.0, C - 1e-3, C + 1e-3, 50.0, 1e12]


def expected(kind: str, r: float, A: float, bl: float = 1.0, bh: float = 1.0) -> tuple[float, float]:
    """(F, s): the table's gradient factor and the forward value l = -A * s."""
    eh = EL if kind == "grpo" else EH
    if kind == "cispo":
        w = min(max(r, 1 - EL), 1 + EH)
        return (0.0 if A == 0 else w), w
    if A > 0 and r > 1 + eh:
        keep = kind in ("gppo", "only-high")
        return (bh * (1 + eh) if keep else 0.0), (bh if keep else 1.0) * (1 + eh)
    if A < 0 and r < 1 - EL:
        keep = kind == "gppo"
        return (bl * (1 - EL) if keep else 0.0), (bl if keep else 1.0) * (1 - EL)
    if A < 0 and r > C:
        return 0.0, C
    return (0.0 if A == 0 else r), r


def grad_factor(kind, ratios, A, **kw):
    old = torch.randn(len(ratios), dtype=torch.float64).float()
    logp = (old + torch.tensor(ratios, dtype=torch.float64).log().float()).requires_grad_()
    adv = torch.full((len(ratios),), A)
    loss, met = gppo.policy_loss(logp, old, adv, torch.ones(len(ratios)), kind=kind, denom=1.0, **kw)
    loss.backward()
    ls = [gppo.policy_loss(logp[i:i + 1].detach(), old[i:i + 1], adv[i:i + 1], torch.ones(1), kind=kind, **kw)[0]
          for i in range(len(ratios))]
    return logp.grad, torch.stack(ls), loss, met


@pytest.mark.parametrize("kind,A", list(itertools.product(gppo.KINDS, [1.5, -0.7, 0.0])))
def test_gradient_factor_table(kind, A):
    g, ls, loss, _ = grad_factor(kind, RATIOS, A)
    for r, gi, li in zip(RATIOS, g.tolist(), ls.tolist()):
        F, s = expected(kind, r, A)
        assert math.isfinite(gi)
        # d l / d logp = -F * A  (d log pi = d logp)
        assert gi == pytest.approx(-F * A, rel=1e-4, abs=1e-6), (kind, r, A)
        if r < 1e6:
            assert li == pytest.approx(-A * s, rel=1e-4, abs=1e-6), (kind, r, A)
    assert loss.item() == pytest.approx(ls.sum().item(), rel=1e-5)


@pytest.mark.parametrize("bl,bh", [(0.5, 1.0), (0.75, 1.2)])
def test_ce_gppo_betas(bl, bh):
    for A in (1.3, -0.4):
        g, ls, _, _ = grad_factor("gppo", RATIOS, A, beta_low=bl, beta_high=bh)
        for r, gi, li in zip(RATIOS, g.tolist(), ls.tolist()):
            F, s = expected("gppo", r, A, bl, bh)
            assert gi == pytest.approx(-F * A, rel=1e-4, abs=1e-6), (r, A)
            if r < 1e6:
                assert li == pytest.approx(-A * s, rel=1e-4, abs=1e-6)


def test_beta_one_value_equals_dapo_clip():
    """With beta = 1 the GPPO forward value is PPO/DAPO clip-higher + dual clip; only gradients differ."""
    for A in (0.9, -0.9):
        _, gp, _, _ = grad_factor("gppo", RATIOS, A)
        _, dp, _, _ = grad_factor("dapo", RATIOS, A)
        ppo = [max(-A * r, -A * min(max(r, 1 - EL), 1 + EH)) for r in RATIOS]
        ppo = [min(v, -A * C) if A < 0 else v for v in ppo]
        assert torch.allclose(gp, dp) and torch.allclose(gp[:-1], torch.tensor(ppo[:-1]), rtol=1e-4)


def test_dual_clip_trap_not_reproduced():
    """docs/ALGORITHM.md section 7: min(l, -A) instead of min(l, -A c) zeroed every A < 0 token with r > 1."""
    for kind in ("gppo", "dapo", "grpo", "only-high"):
        g, ls, _, _ = grad_factor(kind, [1.5, 3.0, 9.0], -1.0)
        assert g.tolist() == pytest.approx([1.5, 3.0, 9.0], rel=1e-4)
        assert ls.tolist() == pytest.approx([1.5, 3.0, 9.0], rel=1e-4)


def test_metrics_mask_and_denom():
    r = torch.tensor([0.5, 1.0, 1.5, 20.0, 0.7, 3.0])
    A = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0, 2.0])
    mask = torch.tensor([1, 1, 1, 1, 1, 0])
    logp = r.log().requires_grad_()
    loss, met = gppo.policy_loss(logp, torch.zeros(6), A, mask)
    assert met["tokens"].item() == 5
    assert met["clip_low"].item() == pytest.approx(1 / 5) and met["clip_high"].item() == pytest.approx(1 / 5)
    assert met["dual_clip"].item() == pytest.approx(1 / 5)
    assert met["ratio_min"].item() == pytest.approx(0.5) and met["ratio_max"].item() == pytest.approx(20.0)
    assert met["ratio_mean"].item() == pytest.approx((0.5 + 1 + 1.5 + 20 + 0.7) / 5, rel=1e-5)
    # l = [0.8, -1, -1.28, 10, -0.7]; masked token ignored, mean over 5, or over an explicit denominator
    assert loss.item() == pytest.approx((0.8 - 1 - 1.28 + 10 - 0.7) / 5, rel=1e-5)
    loss.backward()
    assert logp.grad[5].item() == 0.0
    loss2, _ = gppo.policy_loss(r.log(), torch.zeros(6), A, mask, denom=20.0)
    assert loss2.item() == pytest.approx(loss.item() * 5 / 20, rel=1e-5)
    with pytest.raises(ValueError):
        gppo.policy_loss(r.log(), torch.zeros(6), A, mask, kind="ppo2")


def test_token_mean_independent_of_micro_batches():
    """A global denominator makes accumulated micro-batch gradients equal the whole mini-batch's gradient."""
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(8, 16, generator=g)
    h = torch.randn(37, 16, generator=g)
    tgt = torch.randint(0, 8, (37,), generator=g)
    old = torch.log_softmax(h @ (W0 + 0.3 * torch.randn(8, 16, generator=g)).T, -1).gather(1, tgt[:, None])[:, 0]
    A = torch.randn(37, generator=g)
    mask = (torch.rand(37, generator=g) > 0.2).float()

    def grad(splits):
        W = W0.clone().requires_grad_()
        logp = torch.log_softmax(h @ W.T, -1).gather(1, tgt[:, None])[:, 0]
        for idx in torch.tensor_split(torch.arange(37), splits):
            loss, _ = gppo.policy_loss(logp[idx], old[idx], A[idx], mask[idx], denom=mask.sum())
            loss.backward(retain_graph=True)
        return W.grad

    ref = grad(1)
    assert ref.abs().sum() > 0
    for splits in (2, 5, [3, 4, 30]):
        assert torch.allclose(grad(splits), ref, atol=1e-6)


# ------------------------------------------------------------------------------------------------- advantages
def test_group_advantages_hand_computed():
    R = [1.0, -1.0, -1.0, -1.0,   1.0, 1.0, 1.0, 1.0,   -1.0, -0.5, -1.0, -2.0,   1.0, -0.5, 1.0, -2.0]
    adv, keep = gppo.group_advantages(R, 4)
    # group 0: mean -0.5, unbiased std = 1 -> (1.5, -0.5, -0.5, -0.5); groups 1 and 2 have constant accuracy
    assert adv[:4].tolist() == pytest.approx([1.5 / (1 + 1e-6), -0.5 / (1 + 1e-6)] + [-0.5 / (1 + 1e-6)] * 2)
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4
    assert adv[4:12].abs().max() == 0
    g = torch.tensor([1.0, -0.5, 1.0, -2.0])
    assert adv[12:].tolist() == pytest.approx(((g - g.mean()) / (g.std() + 1e-6)).tolist())
    assert torch.tensor(R[12:]).std().item() == pytest.approx(math.sqrt(sum((x + 0.125) ** 2 for x in R[12:]) / 3))


def test_group_advantages_correct_score_and_size_one():
    adv, keep = gppo.group_advantages([0.5, 0.5, 0.2, 0.2], 2, correct=0.5)
    assert keep.tolist() == [False, False, False, False]  # all correct, then all wrong
    adv, keep = gppo.group_advantages([1.0, 0.0, -1.0], 1)  # no baseline: nothing kept, A = 0, no nan
    assert keep.tolist() == [False] * 3 and adv.tolist() == [0.0] * 3
    with pytest.raises(ValueError):
        gppo.group_advantages([1.0, 0.0, -1.0], 2)


def test_group_advantages_drop_truncated():
    R = [1.0, -1.0, -1.0, -1.0]
    trunc = [False, True, False, False]
    adv0, keep0 = gppo.group_advantages(R, 4, truncated=trunc)
    adv1, keep1 = gppo.group_advantages(R, 4, truncated=trunc, drop_truncated=True)
    assert keep0.all() and keep1.tolist() == [True, False, True, True]
    # masked out, not re-normalised: the remaining tokens keep their advantages
    assert adv1[[0, 2, 3]].tolist() == adv0[[0, 2, 3]].tolist() and adv1[1] == 0


def test_group_advantages_reward_filter_keeps_partial_credit():
    """Faulty tests or partial passes give rewards that differ while accuracy is all 0: only the reward filter
    keeps such a group; a group of equal rewards is dropped by both filters, a mixed-accuracy one kept by both."""
    R = [0.5, 0.5, -1.0, -1.0,   -1.0, -1.0, -1.0, -1.0,   1.0, -1.0, 1.0, 1.0]
    _, by_acc = gppo.group_advantages(R, 4)
    adv, by_reward = gppo.group_advantages(R, 4, keep_on="reward")
    assert by_acc.tolist() == [False] * 8 + [True] * 4
    assert by_reward.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    a = 0.75 / (math.sqrt(4 * 0.75 ** 2 / 3) + 1e-6)  # mean -0.25, deviations +-0.75, unbiased std
    assert adv[:4].tolist() == pytest.approx([a, a, -a, -a])


def test_cap_groups():
    assert gppo.cap_groups([5, 1, 3], 6) == [3, 1, 2]
    assert gppo.cap_groups([2, 0], 10) == [2, 0]
    assert gppo.cap_groups([4, 4], 3) == [2, 1]


# ----------------------------------------------------------------------------- gppo's mini-batch path, 1 process
@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores: one intra-op thread is several times faster than two fighting for a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_micro_batch_split_matches_reference(one_thread):
    """accumulate() over several micro-batches == one forward of the whole mini-batch with plain token means."""
    base = gppo_dist.tiny_model()
    items = gppo_dist.make_items(base)
    a = gppo.parse_args(["--model", "-", "--data", "-", "--micro-tokens", "16", "--mini-batch-prompts", "99"])
    ref = gppo_dist.reference_grads(copy.deepcopy(base), items, a)
    got, n_micro = gppo_dist.gppo_grads(copy.deepcopy(base), items, a)
    assert n_micro >= 3
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6, rtol=1e-4), k


def test_nonfinite_steps_are_skipped_then_stop(one_thread):
    model = gppo_dist.tiny_model()
    a = gppo.parse_args(["--model", "-", "--data", "-", "--max-bad-steps", "2", "--lr", "1e-2"])
    b = gppo.collate(gppo_dist.make_items(model, n=4), 0, "cpu")
    b["old_logp"] = b["sampler_logp"]
    bad = dict(b, adv=b["adv"] * math.nan)  # nan loss and gradients
    ctx, acc = gppo.Context(args=a, model=model, opt=sft.build_optimizer(model, 1e-2, 0.1)), gppo.UpdateSums()
    params = lambda: [p.detach().clone() for p in model.parameters()]
    gppo.update(ctx, [b], acc)
    before = params()
    gppo.update(ctx, [bad], acc)
    assert acc.bad_steps == 1 and ctx.bad_in_row == 1 and acc.opt_steps == 1
    assert all(torch.equal(x, y) for x, y in zip(before, params()))  # skipped: no update, no weight decay
    gppo.update(ctx, [b], acc)
    assert ctx.bad_in_row == 0 and acc.opt_steps == 2 and all(torch.isfinite(x).all() for x in params())
    gppo.update(ctx, [bad], acc)
    with pytest.raises(SystemExit, match="max-bad-steps 2"):
        gppo.update(ctx, [bad], acc)


# ------------------------------------------------------------------------------------- end to end (subprocesses)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Demo tokenizer + a fresh tiny Qwen3 saved in HF layout; the task: answer 7 (reward +1 iff the reply is 7).
    One response token (about 1% chance at init), so every group with a 7 carries the learning signal."""
    d = tmp_path_factory.mktemp("gppo")
    demo.write_demo(d / "demo", n_sft=2, n_rl=2, n_eval=2)
    cfg = dataclasses.replace(qwen3.Qwen3Config.from_json(d / "demo" / "config.json"), hidden_size=64,
                              intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    qwen3.save_pretrained(qwen3.build_model(cfg, "cpu", torch.float32, seed=0), d / "model")
    data.load_tokenizer(d / "demo").save(d / "model")
    for name, n in (("train", 64), ("eval", 8)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"problem": str(i), "answer": "7"}) + "\n"
                                                 for i in range(n)))
    args = ["--model", str(d / "model"), "--data", str(d / "train.jsonl"), "--no-thinking",
            "--max-response-tokens", "1", "--n", "8", "--prompts-per-step", "8", "--mini-batch-prompts", "4",
            "--lr", "4e-3", "--warmup-steps", "1", "--reward-workers", "2", "--no-export"]
    return d, args


def metrics(out: Path) -> dict[int, dict]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "reward" in r:  # a later line for a step wins (resume replays steps after the checkpoint)
            rows[r["step"]] = r
    return rows


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_gppo(args: list[str], timeout: float = 150) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "gppo.py"), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=ENV)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def assert_learns(rows: dict[int, dict], steps: int) -> None:
    r = [rows[s]["reward"] for s in sorted(rows)]
    assert len(r) == steps
    early, late = sum(r[:3]) / 3, sum(r[-3:]) / 3
    assert early < -0.7 and late > early + 1.0, r


def run_in_process(argv: list[str]) -> None:
    """gppo.main in this process (saves a start-up); it tears down the private 1-rank process group it creates."""
    gppo.main(argv)
    assert not torch.distributed.is_initialized()


def kill_after_lines(p: subprocess.Popen, log: Path, lines: int) -> threading.Thread:
    """SIGKILL p once its metrics file has `lines` lines (a watcher thread, so the test can work meanwhile)."""
    def watch():
        while p.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= lines:
                os.kill(p.pid, signal.SIGKILL)
                return
            time.sleep(0.02)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_end_to_end_learns_and_resumes_after_kill(tiny_run, capsys, one_thread):
    d, args = tiny_run
    # a run to be killed with -9 mid-way runs next to the uninterrupted one (2 cores: saves a start-up's wall time)
    part, cut = d / "part", 6
    cmd = [sys.executable, str(ROOT / "gppo.py"), *args, "--out", str(part), "--steps", str(cut), "--save-every", "2"]
    victim = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = kill_after_lines(victim, part / "metrics.jsonl", 3)
    steps = 12
    run_in_process(args + ["--out", str(d / "full"), "--steps", str(steps), "--save-every", "1000",
                           "--eval", str(d / "eval.jsonl"), "--eval-every", "6"])
    assert f"step {steps} | " in capsys.readouterr().out
    full = metrics(d / "full")
    assert_learns(full, steps)
    ev = [json.loads(x) for x in (d / "full" / "metrics.jsonl").read_text().splitlines() if "eval/avg@n" in x]
    assert [e["step"] for e in ev] == [0, 6, 12] and ev[0]["eval/avg@n"] < 0.2
    assert ev[-1]["eval/avg@n"] >= 0.5, ev  # eval samples at temperature 0.6: mostly '7' by now
    for k in ("acc", "filtered", "resp_len", "trunc", "clip_low", "clip_high", "ratio_max", "entropy", "grad_norm",
              "logp_diff", "t_generate", "t_reward", "t_old_logp", "t_update"):
        assert all(k in full[s] or "skipped" in full[s] for s in full), k
    assert max(full[s].get("logp_diff", 0.0) for s in full) < 1e-4  # sampler and trainer share model.py
    for r in full.values():  # the engine's counters: every sampled token counted, the KV memory within its budget
        assert r["gen/generated"] == round(r["resp_len"] * 16 * 8) and 0 < r["gen/peak_kv"] <= 1 << 20
        assert r["gen/prefill"] > 0 and r["gen/forwards"] == 0  # one-token answers come from the prefill alone
    for r in full.values():  # a step without any learning signal is skipped, with its reason
        assert (r["groups_kept"] == 0) == ("skipped" in r) == ("t_update" not in r)

    # --resume after the kill -9: step counter, sampler and optimizer continue as if never interrupted
    watcher.join(timeout=120)
    assert victim.wait(timeout=10) == -signal.SIGKILL, "the run finished before the kill"
    export = [x for x in args if x != "--no-export"]
    out = run_gppo(export + ["--out", str(part), "--steps", str(cut), "--save-every", "2", "--resume"])
    m = re.search(r"resumed from \S*step_0+(\d+) at step (\d+)", out)
    assert m and m[1] == m[2] and 2 <= int(m[1]) < cut, out[-2000:]
    resumed = metrics(part)
    assert sorted(resumed) == list(range(1, cut + 1))
    for s in resumed:
        skipped = "skipped" in full[s]  # no update ran: the step has a reward but no loss, grad norm or ratios
        assert ("skipped" in resumed[s]) == skipped, (s, full[s], resumed[s])
        keys = ("reward",) if skipped else ("reward", "loss", "grad_norm", "ratio_max")
        if skipped:
            assert not {"loss", "grad_norm", "ratio_max"} & (set(full[s]) | set(resumed[s])), s
        for k in keys:
            assert resumed[s][k] == pytest.approx(full[s][k], rel=1e-5, abs=1e-7), (s, k)
    hf = qwen3.load_pretrained(part / "hf")  # the final HF export (model + tokenizer) loads back
    assert hf.config.num_hidden_layers == 2 and data.load_tokenizer(part / "hf").eos_id is not None


def test_two_ranks_gradients_and_learning(tiny_run):
    d, args = tiny_run
    steps, out = 12, d / "dist"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(ROOT / "tests" / "gppo_dist.py"), "--",
           *args, "--out", str(out), "--steps", str(steps), "--save-every", "1000"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=ROOT, env=ENV)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "GRADCHECK OK" in p.stdout
    assert_learns(metrics(out), steps)


def test_recipe_context_split_on_qwen3_8b_base(tmp_path, capsys):
    from conftest import need_shared
    config = need_shared("qwen3-configs", "Qwen3-8B-Base", "config.json")
    aime, tokenizer = need_shared("math", "aime2024.jsonl"), need_shared("qwen3-tokenizer")
    (tmp_path / "config.json").write_text(config.read_text())
    gppo.main(["--preflight", "--model", str(tmp_path), "--data", str(aime)])
    assert "context 32768 = prompts <= 4096 + responses <= 28672" in capsys.readouterr().out
    for bad in (["--max-response-tokens", "32768"], ["--max-prompt-tokens", "0"]):
        with pytest.raises(SystemExit, match=r"\+ --max-response-tokens \d+ do not fit the model's context \("
                                             r"max_position_embeddings 32768"):
            gppo.main(["--preflight", "--model", str(tmp_path)] + bad)
    with pytest.raises(SystemExit, match="--data not found"):
        gppo.main(["--preflight", "--model", str(tmp_path), "--data", str(tmp_path / "none.jsonl")])
    # the prompts load with the recipe's defaults (before the split, a cap of 32768 - 32768 = 0 dropped them all)
    a = gppo.parse_args(["--model", str(tmp_path), "--data", str(aime)])
    gppo.context_split(a, 32768)
    tasks, prompts = gppo.load_prompts(a, data.load_tokenizer(tokenizer))
    assert len(tasks) == 30 and a.max_response_tokens == 28672 and max(map(len, prompts)) <= 4096


def test_train_sh_preflight_refuses_a_split_that_does_not_fit(tmp_path):
    cfg = qwen3.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=32768)
    qwen3.save_pretrained(qwen3.build_model(cfg, seed=0), tmp_path / "m")
    demo.demo_tokenizer().save(tmp_path / "m")
    for name in ("sft", "math", "code"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    env = dict(os.environ, MODEL=str(tmp_path / "m"), SFT_DATA=str(tmp_path / "sft.jsonl"), SKIP_SETUP="1",
               MATH_DATA=str(tmp_path / "math.jsonl"), CODE_DATA=str(tmp_path / "code.jsonl"), MAX_RESPONSE="32768",
               OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(Path(gppo.__file__).parent / "train.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--max-response-tokens 32768 do not fit the model's context" in r.stderr
    assert "the context split does not fit" in r.stderr and not (tmp_path / "out" / "sft").exists()


def test_rl_step_logs_test_statuses_and_stops_on_a_broken_sandbox(monkeypatch):
    from collections import Counter

    import rewards
    import sandbox
    task = {"kind": "code", "tests": [{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "6\n"}]}
    answer = lambda code: f"<think>\nok\n</think>\n```python\n{code}\n```"
    jobs = [(answer("print(int(input()) + 1)"), task), (answer("print(2)"), task), (answer("1/0"), task)]
    statuses, met = Counter(), {}
    rewards.reward_many(jobs, workers=2, statuses=statuses, timeout_s=10)
    gppo.test_statuses(statuses, met)  # a healthy sandbox: counted, the run goes on
    assert (met["tests/pass"], met["tests/wrong answer"], met["tests/runtime error"]) == (3, 1, 2)
    monkeypatch.setattr(sandbox, "_BOOT", "import sys; sys.path.insert(0, '/nonexistent'); import sandbox")
    statuses = Counter()  # the sandbox's own module missing: every test is a 'sandbox error', not a wrong answer
    rewards.reward_many(jobs, workers=2, statuses=statuses, timeout_s=10)
    with pytest.raises(RuntimeError, match=r"6 of 6 code tests ended in 'sandbox error'"):
        gppo.test_statuses(statuses, {})


def test_code_tests_are_sampled_afresh_each_step(tiny_run, monkeypatch, one_thread):
    import rewards
    d, args = tiny_run
    seeds, reward_many = [], rewards.reward_many

    def spy(jobs, **opts):  # the seed that picks each problem's (at most 16) tests this step
        seeds.append(opts["seed"])
        return reward_many(jobs, **opts)
    monkeypatch.setattr(rewards, "reward_many", spy)
    run_in_process(args + ["--out", str(d / "seeds"), "--steps", "3", "--save-every", "1000", "--seed", "5"])
    assert len(seeds) == 3 and len(set(seeds)) == 3  # one per step, never the same sample twice in a row


def test_sigterm_exits_through_python_and_leaves_no_sandbox_files(tiny_run, tmp_path):
    """torchrun and preemption stop a job with SIGTERM; the sandbox's folders must not outlive it."""
    d, args = tiny_run
    code = tmp_path / "code.jsonl"
    code.write_text("".join(json.dumps({"problem": f"print {i}", "tests": [{"input": "", "output": f"{i}\n"}]}) + "\n"
                            for i in range(16)))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = [x if x != str(d / "train.jsonl") else str(code) for x in args]
    p = subprocess.Popen([sys.executable, str(ROOT / "gppo.py"), *argv, "--out", str(tmp_path / "run"), "--steps",
                          "1000"], cwd=ROOT, env=dict(ENV, TMPDIR=str(tmp)), stdout=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not log.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert any(x.name.startswith("sandbox-") for x in tmp.iterdir()), "no sandbox files to clean up"
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 128 + signal.SIGTERM and "gppo: sandbox: uid switching" in out, out[-2000:]
    assert not [x.name for x in tmp.iterdir() if x.name.startswith("sandbox-")]
