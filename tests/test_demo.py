"""train.sh: a shortened demo pipeline end to end (seconds, not minutes), and its input checks for the real recipe."""
import json
import os
import subprocess
from pathlib import Path

import pytest

import demo
import model as qwen3

ROOT = Path(__file__).resolve().parents[1]


def train_sh(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKIP_SETUP": "1", "OUT": str(tmp_path / "demo"), **env}
    return subprocess.run(["bash", "train.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_short_demo_pipeline_writes_the_summary(tmp_path):
    p = train_sh(tmp_path, SFT_EPOCHS="0.02", MATH_STEPS="1", CODE_STEPS="1", EVAL_LIMIT="6")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"math", "code", "math@t1", "code@t1"}  # greedy and temperature 1
    for accs in summary.values():  # sft_more: the control, more SFT for the RL stages' wall time
        assert set(accs) == {"sft", "sft_more", "gppo"} and all(0.0 <= a <= 1.0 for a in accs.values())
    rl_seconds = sum(json.loads(line)["t_step"] for stage in ("math", "code")
                     for line in (out / "gppo" / stage / "metrics.jsonl").read_text().splitlines())
    control = [json.loads(line) for line in (out / "sft_more" / "metrics.jsonl").read_text().splitlines()]
    assert control and f"wall time ({round(rl_seconds)} s)" in p.stdout
    for stage in ("math", "code"):  # both RL stages ran, logged a step and exported a HF folder
        assert json.loads((out / "gppo" / stage / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
        assert (out / "gppo" / stage / "hf" / "config.json").is_file()
    assert "held-out accuracy" in p.stdout and "SFT from scratch" in p.stdout


def test_real_recipe_refuses_bad_inputs_before_work(tmp_path):
    p = train_sh(tmp_path, MODEL=str(tmp_path / "missing"))
    assert p.returncode == 2 and "MODEL folder not found" in p.stderr
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text(json.dumps(  # a config but no weights
        {"model_type": "qwen3", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}))
    p = train_sh(tmp_path, MODEL=str(incomplete))
    assert p.returncode == 2 and "model.safetensors" in p.stderr and "not a complete Qwen3 checkpoint" in p.stderr
    assert not (tmp_path / "demo").exists()  # nothing ran


def test_real_recipe_names_a_missing_data_file(tmp_path):
    cfg = qwen3.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    qwen3.save_pretrained(qwen3.build_model(cfg, seed=0), tmp_path / "ckpt")
    demo.demo_tokenizer().save(tmp_path / "ckpt")
    p = train_sh(tmp_path, MODEL=str(tmp_path / "ckpt"), SFT_DATA=str(tmp_path / "nope.jsonl"))
    assert p.returncode == 2 and "SFT_DATA not found" in p.stderr and "nope.jsonl" in p.stderr


def tiny_demo(out: Path, n_rl: int) -> None:
    """What the experiments need of train.sh's demo folder: its data and an (untrained) SFT checkpoint."""
    demo.write_demo(out / "data", n_sft=2, n_rl=n_rl, n_eval=4)
    cfg = qwen3.Qwen3Config.from_json(out / "data" / "config.json")
    qwen3.save_pretrained(qwen3.build_model(cfg, seed=0), out / "sft" / "hf")
    demo.demo_tokenizer().save(out / "sft" / "hf")


def test_loss_kinds_experiment_writes_rows_and_table(tmp_path):
    out = tmp_path / "demo"
    tiny_demo(out, n_rl=16)
    results, table = tmp_path / "ablation.json", tmp_path / "RESULTS.md"
    results.write_text(json.dumps([{"experiment": "code-reward", "kind": "gppo", "seed": 0}]))  # another experiment
    table.write_text("# Results\n\nsome text that stays\n")
    argv = ["ablate-loss", str(out), "--kinds", "gppo", "grpo", "--seeds", "0", "--steps", "1", "--limit", "2",
            "--results", str(results), "--table", str(table)]
    for _ in range(2):  # the second run replaces its rows (same experiment, kind, beta, seed, mini-batches)
        demo.main(argv)
    rows = json.loads(results.read_text())
    ours = [r for r in rows if r["experiment"] == "loss-kinds"]
    assert len(rows) == 3 and sorted(r["kind"] for r in ours) == ["gppo", "grpo"]
    for r in ours:
        assert r["mini_batches"] == 2 and r["seed"] == 0 and 0 <= r["math"] <= 1 and 0 <= r["math@t1"] <= 1
        assert 0 <= r["clip_fraction"] <= 1 and r["seconds"] > 0 and {"entropy", "beta_low", "beta_high"} <= set(r)
    text = table.read_text()
    assert text.startswith("# Results\n\nsome text that stays\n") and text.count("<!-- loss-kinds: begin -->") == 1
    assert "| 2 | gppo | 1 |" in text and "| 2 | grpo | 1 |" in text


def test_filter_problems_drops_exactly_the_corrupted_demo_problems(tmp_path):
    """Every corruption changes a test's verdict on the reference program, so the filter drops every corrupted
    problem and keeps every clean one; a change no verdict sees (trailing spaces) is kept."""
    demo.write_demo(tmp_path, n_sft=2, n_rl=40, n_eval=2)
    corrupted = demo.corrupt_tests(tmp_path / "rl_code.jsonl", tmp_path / "faulty.jsonl", share=0.3)
    recs = [json.loads(line) for line in (tmp_path / "faulty.jsonl").read_text().splitlines()]
    assert len(corrupted) == 12 and sum(r != json.loads(c) for r, c in zip(
        recs, (tmp_path / "rl_code.jsonl").read_text().splitlines())) == 12
    clean = next(i for i in range(40) if i not in corrupted)
    gold = json.loads(recs[clean]["reward_model"]["ground_truth"])
    gold["outputs"][0] = gold["outputs"][0].replace("\n", "  \n")
    recs[clean]["reward_model"]["ground_truth"] = json.dumps(gold)
    (tmp_path / "faulty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    dropped = demo.filter_code_set(tmp_path / "faulty.jsonl", tmp_path / "kept.jsonl")
    assert dropped == corrupted
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == [r for i, r in enumerate(recs) if i not in corrupted]


def test_code_reward_experiment_writes_rows_and_table(tmp_path, monkeypatch):
    import data
    import rewards
    out = tmp_path / "demo"
    tiny_demo(out, n_rl=20)
    results, table = tmp_path / "ablation.json", tmp_path / "RESULTS.md"
    table.write_text("# Results\n\n<!-- code-reward: begin -->\nold\n<!-- code-reward: end -->\ntail\n")
    softness, draws, reward_many, next_indices = [], [], rewards.reward_many, data.ShardedSampler.next_indices

    def spy_reward(jobs, **opts):  # what the RL steps ask of the reward
        softness.append(opts.get("soft"))
        return reward_many(jobs, **opts)

    def spy_draw(self, k):  # the problems the RL steps draw
        draws.append(next_indices(self, k))
        return draws[-1]
    monkeypatch.setattr(rewards, "reward_many", spy_reward)
    monkeypatch.setattr(data.ShardedSampler, "next_indices", spy_draw)
    demo.main(["ablate-code", str(out), "--configs", "1", "6", "--seeds", "3", "--steps", "2", "--limit", "2",
               "--results", str(results), "--table", str(table)])
    rows = json.loads(results.read_text())
    with pytest.raises(SystemExit, match=r"nowhere/sft/hf/config.json not found: run `OUT=.*nowhere bash train.sh"):
        demo.main(["ablate-code", str(tmp_path / "nowhere")])
    assert [(r["reward"], r["filter"], r["faulty"]) for r in rows] == [("hard", "accuracy", 0.0),
                                                                       ("soft", "reward", 0.3)]
    for r in rows:
        assert r["seed"] == 3 and len(r["reward_curve"]) == len(r["filtered_curve"]) == 2
        assert r["rollouts"] == 2 * 16 * 8
        assert 0 <= r["code"] <= 1 and 0 <= r["code@t1"] <= 1 and 0 <= r["filtered_groups"] <= 1
    # the hard run's steps, then the soft run's (evaluation calls leave the option unset)
    assert [x for x in softness if x is not None] == [False, False, True, True]
    corrupted = {i for i, (a, b) in enumerate(zip(
        (out / "data" / "rl_code.jsonl").read_text().splitlines(),
        (out / "ablation" / "code-reward" / "rl_code_faulty.jsonl").read_text().splitlines())) if a != b}
    # the faulty run's own two draws (each run is followed by the experiment's replay of its draws)
    faulty_draws = [i for d in draws[-4:-2] for i in d]
    assert faulty_draws == [i for d in draws[-2:] for i in d] == demo.drawn_problems(20, 3, 2, 16)
    assert rows[1]["unpassable_rollouts"] == 8 * sum(i in corrupted for i in faulty_draws) > 0
    assert rows[0]["unpassable_rollouts"] == 0 and rows[1]["filtered_problems"] is None
    text = table.read_text()
    assert text.startswith("# Results\n\n<!-- code-reward: begin -->\n| data |") and text.endswith("end -->\ntail\n")
    assert "| clean | hard | accuracy | 1 |" in text and "| 30% faulty | soft | reward | 1 |" in text
