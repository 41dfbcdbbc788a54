"""experiments.py on a tiny demo folder: rows, tables, the faulty-test set and the replayed draws."""
import json
from pathlib import Path

import pytest

import demo
import experiments
import model as qwen3


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
        experiments.main(argv)
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
    corrupted = experiments.corrupt_tests(tmp_path / "rl_code.jsonl", tmp_path / "faulty.jsonl", share=0.3)
    recs = [json.loads(line) for line in (tmp_path / "faulty.jsonl").read_text().splitlines()]
    assert len(corrupted) == 12 and sum(r != json.loads(c) for r, c in zip(
        recs, (tmp_path / "rl_code.jsonl").read_text().splitlines())) == 12
    clean = next(i for i in range(40) if i not in corrupted)
    gold = json.loads(recs[clean]["reward_model"]["ground_truth"])
    gold["outputs"][0] = gold["outputs"][0].replace("\n", "  \n")
    recs[clean]["reward_model"]["ground_truth"] = json.dumps(gold)
    (tmp_path / "faulty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    dropped = experiments.filter_code_set(tmp_path / "faulty.jsonl", tmp_path / "kept.jsonl")
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
    experiments.main(["ablate-code", str(out), "--configs", "1", "6", "--seeds", "3", "--steps", "2", "--limit", "2",
               "--results", str(results), "--table", str(table)])
    rows = json.loads(results.read_text())
    with pytest.raises(SystemExit, match=r"nowhere/sft/hf/config.json not found: run `OUT=.*nowhere bash train.sh"):
        experiments.main(["ablate-code", str(tmp_path / "nowhere")])
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
    assert faulty_draws == [i for d in draws[-2:] for i in d] == experiments.drawn_problems(20, 3, 2, 16)
    assert rows[1]["unpassable_rollouts"] == 8 * sum(i in corrupted for i in faulty_draws) > 0
    assert rows[0]["unpassable_rollouts"] == 0 and rows[1]["filtered_problems"] is None
    text = table.read_text()
    assert text.startswith("# Results\n\n<!-- code-reward: begin -->\n| data |") and text.endswith("end -->\ntail\n")
    assert "| clean | hard | accuracy | 1 |" in text and "| 30% faulty | soft | reward | 1 |" in text
