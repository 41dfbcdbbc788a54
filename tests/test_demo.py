"""train.sh: a shortened demo pipeline end to end (seconds, not minutes), and its input checks for the real recipe."""
import json
import os
import subprocess
from pathlib import Path

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
