"""rollout.py: greedy vs full-forward argmax and transformers, log-probs vs the trainer's, sampling statistics,
stop tokens, prefix sharing, compaction, bad input, task layouts, evaluation metrics, FSDP2 on 2 ranks."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, need_shared

import demo
import kernels
import rewards
import rollout
from model import Qwen3Config, build_model, save_pretrained

CFG = dict(vocab_size=61, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7]]


def tiny_model(**overrides):
    m = build_model(Qwen3Config(**{**CFG, **overrides}), seed=0)
    with torch.no_grad():
        m.lm_head.weight.mul_(25)  # peaked next-token distributions: clear argmaxes, filters that matter
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    """(T, V) logits of the full forward without a cache: the trainer's view."""
    return model.lm_head(model(torch.tensor([ids]))[0]).float()


@torch.no_grad()
def argmax_loop(model, prompt: list[int], new: int) -> list[int]:
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(logits_of(model, ids)[-1].argmax()))
    return ids[len(prompt):]


def test_greedy_equals_full_forward_argmax(model):
    out = rollout.generate(model, PROMPTS, n=2, max_new_tokens=12, temperature=0)
    assert [s.prompt_index for s in out] == [0, 0, 1, 1, 2, 2]
    for s in out:
        p = PROMPTS[s.prompt_index]
        assert s.tokens == argmax_loop(model, p, 12) and s.finish_reason == "length"
        lp = logits_of(model, p + s.tokens).log_softmax(-1)[len(p) - 1:-1]  # greedy: log-probs at T = 1
        assert torch.allclose(torch.tensor(s.logprobs), lp.gather(1, torch.tensor(s.tokens)[:, None])[:, 0],
                              atol=1e-4)
    assert len({tuple(s.tokens) for s in out}) == 3  # the prompts lead to different answers


def test_greedy_equals_transformers(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_pretrained(model, tmp_path)
    hf = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    out = rollout.generate(model, PROMPTS, max_new_tokens=12, temperature=0)
    for p, s in zip(PROMPTS, out):
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                          max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
        assert s.tokens == ref[0, len(p):].tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_trainer(model, temperature):
    out = rollout.generate(model, PROMPTS, n=3, max_new_tokens=10, temperature=temperature, seed=1)
    for s in out:
        p = PROMPTS[s.prompt_index]
        lp = (logits_of(model, p + s.tokens) / temperature).log_softmax(-1)[len(p) - 1:-1]
        ref = lp.gather(1, torch.tensor(s.tokens)[:, None])[:, 0]
        assert (torch.tensor(s.logprobs) - ref).abs().max() < 1e-4


def test_seeds(model):
    run = lambda seed: [s.tokens for s in rollout.generate(model, PROMPTS, n=4, max_new_tokens=16, seed=seed)]
    assert run(5) == run(5)
    assert run(5) != run(6)


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference: softmax(logits / T), keep the top_k best, renormalise, keep the smallest best set reaching top_p."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[:top_k] if top_k else order
    q = p[keep] / p[keep].sum()
    n_keep = int(np.searchsorted(np.cumsum(q), top_p) + 1) if top_p < 1 else len(keep)
    out = np.zeros_like(p)
    out[keep[:n_keep]] = q[:n_keep] / q[:n_keep].sum()
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 6, 1.0), (1.5, 0, 0.8), (1.0, 12, 0.85)])
def test_sampling_distribution(model, temperature, top_k, top_p):
    n, prompt = 10000, [7]
    out = rollout.generate(model, [prompt], n=n, max_new_tokens=1, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=0)
    freq = np.bincount([s.tokens[0] for s in out], minlength=CFG["vocab_size"]) / n
    logits = logits_of(model, prompt)[-1].double().numpy()
    want = filtered_probs(logits, temperature, top_k, top_p)
    assert 3 <= (want > 0).sum() <= CFG["vocab_size"] - 3 or (top_k, top_p) == (0, 1.0)  # the filter bites
    assert (freq[want == 0] == 0).all()  # never a filtered-out token
    assert np.abs(freq - want).max() < 0.02  # > 4 standard errors at n = 10000
    lp = torch.tensor(logits / temperature).log_softmax(-1)  # log-probs: tempered, unfiltered
    assert all(abs(s.logprobs[0] - lp[s.tokens[0]].item()) < 1e-4 for s in out[:50])


def test_stop_tokens_and_finished_rows_leave(model):
    prompts = [[i, (3 * i) % 61, 5] for i in range(1, 13)]
    ref = [s.tokens for s in rollout.generate(model, prompts, max_new_tokens=20, temperature=0)]  # no stops
    stop = int(np.bincount([t for r in ref for t in r[:10]]).argmax())  # a token many answers reach early
    stats = rollout.EngineStats()
    out = rollout.generate(model, prompts, max_new_tokens=20, temperature=0, stop_ids=(stop, 60), stats=stats)
    assert stats.rows == sum(len(s.tokens) for s in out) - len(out)  # a row is decoded only while it is live
    assert stats.rows < stats.forwards * len(prompts)  # finished rows left the batch
    reasons = {s.finish_reason for s in out}
    assert reasons == {"stop", "length"}
    for s, r in zip(out, ref):
        want = r[:r.index(stop) + 1] if stop in r else r
        assert s.tokens == want and s.finish_reason == ("stop" if stop in r else "length")
    sampled = rollout.generate(model, prompts, n=4, max_new_tokens=20, stop_ids=(stop,), seed=3)
    for s in sampled:
        assert len(s.tokens) == len(s.logprobs) <= 20 and s.tokens.count(stop) == (s.finish_reason == "stop")
        assert s.tokens[-1] == stop if s.finish_reason == "stop" else len(s.tokens) == 20


def test_prefix_is_shared(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    try:
        out = rollout.generate(model, PROMPTS, n=4, max_new_tokens=5)
    finally:
        handle.remove()
    assert calls[0] == (3, 8) and all(c == (12, 1) for c in calls[1:])  # one prefill of the 3 prompts
    assert len(calls) == 5 and all(len(s.tokens) == 5 for s in out)


def test_on_token_streams_the_same_tokens(model):
    seen = []
    (s,) = rollout.generate(model, [PROMPTS[0]], max_new_tokens=9, seed=2,
                            on_token=lambda keys, tok: seen.append((keys, tok)))
    assert seen == [([0], [t]) for t in s.tokens]


def test_budgets_give_the_same_samples(model):
    prompts = [[i % 60 + 1, (7 * i) % 61, 5] * (1 + i % 3) for i in range(12)]
    kw = dict(n=4, max_new_tokens=24, temperature=1.0, seed=11)
    runs = {}
    for name, extra in (("all at once", {}), ("64 slots", dict(max_kv_tokens=64)), ("3 rows", dict(max_rows=3))):
        stats = rollout.EngineStats()
        runs[name] = (rollout.generate(model, prompts, stats=stats, **kw, **extra), stats)
    (ref, big), (small_out, small), (few, _) = runs.values()
    assert big.preemptions == 0 and small.preemptions > 0 and small.peak_kv <= 64 < big.peak_kv
    assert big.forwards < small.forwards and big.prefill < small.prefill  # evicted rows were recomputed
    for out in (small_out, few):
        same = [a.tokens == b.tokens for a, b in zip(ref, out)]
        assert sum(same) >= 0.99 * len(ref)
        for a, b in zip(ref, out):
            k = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), len(a.tokens))
            assert np.abs(np.subtract(a.logprobs[:k], b.logprobs[:k])).max(initial=0) < 1e-4
    # a sample's draws come from (seed, prompt key, sample index, token index) alone, not from its company
    alone = rollout.generate(model, [prompts[5]], keys=[5], **kw)
    assert [s.tokens for s in alone] == [s.tokens for s in ref[20:24]]


def test_flex_decode_equals_plain_decode():
    from torch._dynamo.utils import counters
    # GQA 8/2 (the 32/8 ratio of the 8B) at head_dim 128; ragged prompts; a budget that forces evictions
    m = tiny_model(num_attention_heads=8, num_key_value_heads=2, head_dim=128, max_position_embeddings=128)
    prompts = [[1 + i, 2, 3, 4, 5][:1 + i % 5] * (1 + i % 3) for i in range(6)]
    kw = dict(n=2, max_new_tokens=24, temperature=1.0, seed=3, max_rows=4)
    ref = rollout.generate(m, prompts, **kw)
    stats, graphs = rollout.EngineStats(), counters["stats"]["unique_graphs"]
    got = rollout.generate(m, prompts, flex=True, stats=stats, max_kv_tokens=96, **kw)
    assert stats.preemptions > 0  # evicted rows were recomputed and refilled
    assert [s.tokens for s in got] == [s.tokens for s in ref]
    assert max(np.abs(np.subtract(a.logprobs, b.logprobs)).max() for a, b in zip(ref, got)) < 1e-5
    compiled = counters["stats"]["unique_graphs"] - graphs
    assert 1 <= compiled <= 3  # one kernel per row count (1, 2, 4), never one per step
    rollout.generate(m, prompts, flex=True, max_kv_tokens=96, **kw)
    assert counters["stats"]["unique_graphs"] - graphs == compiled  # a second call compiles nothing


def test_budget_too_small_is_an_error_up_front(model):
    with pytest.raises(ValueError, match=r"KV budget of 16 token slots .* cannot hold the longest sequence \(23 tok"):
        rollout.generate(model, [[1, 2, 3], [4]], max_new_tokens=20, max_kv_tokens=16)


@pytest.mark.parametrize("limit", ["rows", "kv"])
def test_live_rows_stay_at_the_limit_while_the_queue_has_work(model, limit):
    rng = np.random.default_rng(0)
    lengths = np.minimum(np.ceil(rng.lognormal(np.log(6), 0.94, 64)), 40).astype(int)  # long-tailed, forced
    prompts = [[1 + i % 50, 2, 3] for i in range(64)]
    steps, made = [], {}

    def on_token(keys, tokens):
        steps.append([(k, made.setdefault(k, 0)) for k in keys])
        for k in keys:
            made[k] += 1
    extra = dict(max_rows=8) if limit == "rows" else dict(max_kv_tokens=256)
    rollout.generate(model, prompts, max_new_tokens=40, stop_after=lambda k: lengths[k], on_token=on_token, **extra)
    last_new = max(i for i, s in enumerate(steps) if any(t == 0 for _, t in s))  # the queue's last admission
    if limit == "rows":
        assert all(len(s) == 8 for s in steps[:last_new])  # the last admission may empty the queue part-way
    else:  # the pages held (prompt + tokens so far, in pages of 16) fill the budget less the watermark
        held = [sum(-(-(3 + t) // 16) * 16 for _, t in s) for s in steps[:last_new]]
        assert min(held) >= 0.6 * 256 and np.mean(held) >= 0.75 * 256, held
    assert {k for s in steps for k, _ in s} == set(range(64))


def test_sampler_logits_are_fp32_from_bf16(model):
    w = model.lm_head.weight.detach().to(torch.bfloat16)
    h = torch.randn(5, w.shape[1]).to(torch.bfloat16)
    ref = h.float() @ w.float().t()
    got = kernels.fp32_logits(h, w.float(), torch.empty(8, w.shape[0]))  # what generate passes on a bf16 CPU model
    assert (got - ref).abs().max() < 1e-5
    assert ((h @ w.t()).float() - ref).abs().max() > 1e-3  # bf16-rounded logits, which this replaces, are not


def test_bad_input(model):
    for prompts in ([], [[1], []]):
        with pytest.raises(AssertionError, match="empty"):
            rollout.generate(model, prompts, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"n, max_new_tokens, max_rows \(2, 0, 256\) must be >= 1"):
        rollout.generate(model, [[1]], n=2, max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt 1 has 40 tokens.*max_new_tokens 30.*64"):
        rollout.generate(model, [[1], [2] * 40], max_new_tokens=30)
    with pytest.raises(ValueError, match="prompt 0 has a token id outside"):
        rollout.generate(model, [[61]], max_new_tokens=4)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_load_tasks_inline(tmp_path):
    user = [{"role": "user", "content": "1+1?"}]
    io = json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"data_source": "math_longcot_math_verify", "prompt": user, "ability": "math",
         "reward_model": {"ground_truth": "2"}},
        {"data_source": "coder1_longcot", "prompt": user, "ability": "code", "reward_model": {"ground_truth": io}},
        {"problem": "2+2?", "answer": 4},
        {"prompt": user, "reward_model": {"ground_truth": {"inputs": ["1\n"], "outputs": ["2\n"]}}},
        {"problem": "echo", "tests": [{"input": "1\n", "output": "1\n"}]}])
    t = rewards.load_tasks(path)
    assert [x["kind"] for x in t] == ["math", "code", "math", "code", "code"]
    assert [x["source"] for x in t] == ["math_longcot_math_verify", "coder1_longcot", "mix", "mix", "mix"]
    assert t[0]["answer"] == "2" and t[2]["answer"] == "4" and t[2]["messages"][0]["content"] == "2+2?"
    assert t[1]["tests"] == t[3]["tests"] == [{"input": "1\n", "output": "2\n"}]
    assert t[4]["tests"] == [{"input": "1\n", "output": "1\n"}] and t[0]["tests"] is None and t[1]["answer"] is None
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "x", "answer": "1"}, {"question": "x"}, "{not json"])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: record fits no task layout"):
        rewards.load_tasks(bad)
    assert len(rewards.load_tasks(bad, skip_bad=True)) == 1
    with pytest.raises(ValueError, match=r"none.jsonl:1: code record without usable tests"):
        rewards.load_tasks(write_jsonl(tmp_path / "none.jsonl", [{"problem": "x", "tests": []}]))
    with pytest.raises(FileNotFoundError):
        rewards.load_tasks(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name,kind,count", [("math/aime2024.jsonl", "math", 30), ("math/math500.jsonl", "math", 500),
                                             ("code/taco_stdin.jsonl", "code", 45),
                                             ("code/leetcode_function.jsonl", "code", 40),
                                             ("code/humaneval.jsonl.gz", "code", 164)])
def test_load_tasks_shared(name, kind, count):
    tasks = rewards.load_tasks(need_shared(*name.split("/")))
    assert len(tasks) == count and {t["kind"] for t in tasks} == {kind}
    assert all(t["answer"] if kind == "math" else t["tests"] for t in tasks)
    assert all(t["messages"][0]["role"] == "user" and t["messages"][0]["content"] for t in tasks)


def test_evaluate_metrics(monkeypatch):
    tok = demo.demo_tokenizer()
    m = tiny_model(vocab_size=-(-tok.vocab_size // 16) * 16)
    answers = ["<think>\nok\n</think>\n\n\\boxed{4}", "<think>\nok\n</think>\n\n\\boxed{5}"]
    fake = [rollout.Sample(i // 2, tok.encode(answers[i % 2 or i > 1]) + [tok.eos_id], [0.0], "stop")
            for i in range(4)]  # task 0: right, wrong; task 1: wrong, wrong

    def generate(*args, on_finish, **kw):  # samples finish out of order, as they do in the engine
        for key in (3, 0, 2, 1):
            on_finish(key, fake[key])
    monkeypatch.setattr(rollout, "generate", generate)
    tasks = [{"messages": [{"role": "user", "content": "2+2"}], "kind": "math", "answer": "4", "tests": None,
              "source": src} for src in ("a", "b")]
    res = rollout.evaluate(m, tok, tasks, n=2, max_new_tokens=8, workers=1)
    assert (res["avg@n"], res["pass@n"], res["avg@n/a"], res["pass@n/a"], res["pass@n/b"]) == (0.25, 0.5, 0.5, 1, 0)
    assert res["truncated"] == 0 and len(res["rows"]) == 4 and res["rows"][0]["correct"]
    assert [(r["task"], r["sample"]) for r in res["rows"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_evaluate_runs(tmp_path):
    tok = demo.demo_tokenizer()
    m = tiny_model(vocab_size=-(-tok.vocab_size // 16) * 16, max_position_embeddings=128)
    tasks = rewards.load_tasks(write_jsonl(tmp_path / "t.jsonl", [{"problem": "1+2", "answer": "3"}] * 3))
    parts, stats = [], rollout.EngineStats()  # what --out receives, task by task, as soon as each is scored
    res = rollout.evaluate(m, tok, tasks, n=2, max_new_tokens=6, workers=1, on_rows=parts.append, stats=stats)
    assert len(res["rows"]) == 6 and res["mean_length"] <= 6 and 0 <= res["avg@n"] <= res["pass@n"] <= 1
    assert sorted([r["task"] for r in p] for p in parts) == [[0, 0], [1, 1], [2, 2]]
    assert sorted(sum(parts, []), key=lambda r: (r["task"], r["sample"])) == res["rows"]
    assert stats.generated == sum(r["length"] for r in res["rows"]) and stats.prefill > 0


FSDP_SCRIPT = """
import gc, sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
import rewards
import rollout
from model import Qwen3Config, build_model
dist.init_process_group("gloo")
rank = dist.get_rank()
m = build_model(Qwen3Config(**{cfg!r}), seed=0)
prompts = {prompts!r}
new = 8 - 3 * rank  # ranks decode different numbers of steps: no collective may run per step
ref = [s.tokens for s in rollout.generate(m, prompts, max_new_tokens=new, temperature=0)]
mesh = init_device_mesh("cpu", (2,))
for layer in m.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(m, mesh=mesh, reshard_after_forward=False)
got = [s.tokens for s in rollout.generate(m, prompts, max_new_tokens=new, temperature=0)]
assert got == ref, (rank, got, ref)
assert all(isinstance(p, DTensor) for p in m.parameters()), "not resharded after generate"
m(torch.tensor([prompts[0]])).sum().backward()  # training still works afterwards
sys.stdout.write(f"ok-rank{{rank}}\\n")  # one write: the ranks share the pipe
del m  # free the FSDP state before exit (see sft.distributed_run), then leave together
gc.collect()
dist.barrier()
dist.destroy_process_group()
"""


def test_fsdp2_two_ranks(tmp_path):
    script = tmp_path / "fsdp_generate.py"
    script.write_text(FSDP_SCRIPT.format(root=str(ROOT), cfg=CFG, prompts=PROMPTS))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ok-rank0" in r.stdout and "ok-rank1" in r.stdout


def test_gzip_tasks(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_id": "x/0", "prompt": "def f():\n", "entry_point": "f",
                            "test": "def check(candidate):\n    assert candidate() == 1\n"}) + "\n")
    (t,) = rewards.load_tasks(path)
    assert t["kind"] == "code" and t["source"] == "he" and "def f():" in t["messages"][0]["content"]


def test_eval_out_is_written_per_task_and_resumes(tmp_path, capsys):
    tok = demo.demo_tokenizer()
    save_pretrained(tiny_model(vocab_size=-(-tok.vocab_size // 16) * 16, max_position_embeddings=128), tmp_path / "m")
    tok.save(tmp_path / "m")
    tasks = write_jsonl(tmp_path / "tπ.jsonl", [{"problem": f"{i}+1", "answer": str(i + 1)} for i in range(5)])
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    bare = ["--model", str(tmp_path / "m"), "--eval", str(tasks), "--n", "2", "--temperature", "1", "--top-p", "1",
            "--max-new-tokens", "6", "--workers", "1"]
    args = bare + ["--out", str(out), "--summary", str(summary)]
    rollout.main(args)
    full, full_summary = out.read_bytes().split(b"\n"), json.loads(summary.read_text())
    rows = [json.loads(x) for x in full if x]
    assert sorted((r["task"], r["sample"]) for r in rows) == [(t, j) for t in range(5) for j in range(2)]
    assert all(rows[k]["task"] == rows[k + 1]["task"] for k in range(0, 10, 2))  # a task's rows come together
    # crashes inside the third task: after its first row, inside its second row, inside a multi-byte character
    mid_pi = full[4][:full[4].index("π".encode()) + 1]  # the source "tπ" is in every row
    for cut in (full[:5] + [full[5][:7]], full[:5] + [full[5][:-2]], full[:4] + [mid_pi]):
        out.write_bytes(b"\n".join(cut))
        rollout.main(args + ["--resume"])
        assert sorted(out.read_bytes().split(b"\n")) == sorted(full)  # the same rows, whatever the order
        assert json.loads(summary.read_text()) == full_summary
        assert "resuming: 2 of 5 tasks" in capsys.readouterr().err
    rollout.main(args + ["--resume"])  # nothing left to run: the same rows, the same numbers
    assert sorted(out.read_bytes().split(b"\n")) == sorted(full) and json.loads(summary.read_text()) == full_summary
    kept = out.read_bytes()
    for bad, why in (([], "already holds results: pass --resume"), (["--resume", "--n", "3"], "n differ"),
                     (["--resume", "--limit", "2"], "task_sha1 differ"), (["--resume", "--seed", "1"], "seed")):
        with pytest.raises(SystemExit, match=why):
            rollout.main(args + bad)
        assert out.read_bytes() == kept  # a refused run leaves the rows as they were
    tasks.write_text(tasks.read_text().replace("3+1", "3+2"))  # same file, same count, one task changed
    with pytest.raises(SystemExit, match="task_sha1 differ"):
        rollout.main(args + ["--resume"])
    with pytest.raises(SystemExit):
        rollout.main(bare + ["--resume"])  # --resume without --out: an argparse error


def test_read_rows_keeps_whole_tasks(tmp_path):
    row = lambda task, sample=0: json.dumps({"task": task, "sample": sample})
    f = tmp_path / "out.jsonl"
    f.write_text("\n".join([row(0), "{", row(1)]) + "\n")
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        rollout.read_rows(f, 2)
    # task 1: sample 0 twice (two runs at once); task 0: its second row cut short by a crash
    f.write_text("\n".join([row(2), row(2, 1), row(1), row(1), row(0, 1), row(0)[:-3]]))
    assert [(r["task"], r["sample"]) for r in rollout.read_rows(f, 2)] == [(2, 0), (2, 1)]
