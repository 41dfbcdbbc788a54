"""Watching a run: --tensorboard event files hold exactly the numbers of metrics.jsonl (an SFT and a GPPO run),
a resume replaces the replayed steps, --wandb in offline mode writes its run files and logs those numbers (and
continues the same run on --resume), a missing optional package is a one-line error, no product file imports
an optional package, and plot.py draws the dashboard of finished runs.

Tiny runs (2-layer hidden-64 Qwen3 on the demo tokenizer), in process, one thread."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import demo
import gppo
import model as qwen3
import plot
import sft

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 3-step SFT run and a 4-step GPPO run (with held-out evals), both with --tensorboard."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("trackers")
    demo.write_demo(d / "demo", n_sft=12, n_rl=2, n_eval=2)
    cfg = dataclasses.replace(qwen3.Qwen3Config.from_json(d / "demo" / "config.json"), hidden_size=64,
                              intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=32, max_position_embeddings=256)
    (d / "tiny.json").write_text(json.dumps(cfg.to_dict()))
    sft_args = ["--config", str(d / "tiny.json"), "--tokenizer", str(d / "demo"), "--data",
                str(d / "demo" / "sft.jsonl"), "--max-length", "256", "--tokens-per-step", "512", "--lr", "3e-3",
                "--epochs", "1", "--save-every", "1", "--seed", "0"]
    sft.main(sft_args + ["--out", str(d / "sft"), "--max-steps", "3", "--tensorboard"])
    qwen3.save_pretrained(qwen3.build_model(cfg, "cpu", torch.float32, seed=0), d / "model")
    data.load_tokenizer(d / "demo").save(d / "model")
    for name, n in (("train", 16), ("eval", 4)):  # "answer 7": one response token, rewards from the start
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"problem": str(i), "answer": "7"}) + "\n"
                                                 for i in range(n)))
    gppo.main(["--model", str(d / "model"), "--data", str(d / "train.jsonl"), "--no-thinking",
               "--max-response-tokens", "1", "--n", "8", "--prompts-per-step", "8", "--mini-batch-prompts", "4",
               "--lr", "4e-3", "--warmup-steps", "1", "--reward-workers", "2", "--no-export", "--steps", "4",
               "--eval", str(d / "eval.jsonl"), "--eval-every", "4", "--out", str(d / "gppo"), "--tensorboard"])
    lines = [json.loads(x) for x in (d / "gppo" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in lines), "no GPPO update ran: every group was filtered"  # all panels have data
    yield d, sft_args
    torch.set_num_threads(threads)


def jsonl_numbers(run: Path) -> dict[str, dict[int, float]]:
    """metric -> step -> value of the numeric entries of metrics.jsonl (a later line for a step wins)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, {})[r["step"]] = float(v)
    return out


def event_scalars(run: Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    """tag -> step -> value of the TensorBoard events in run/tensorboard, and the other (tensor) tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}, acc.Tags()["tensors"]


@pytest.mark.parametrize("kind", ["sft", "gppo"])
def test_tensorboard_scalars_equal_metrics_jsonl(runs, kind):
    run = runs[0] / kind
    want, (got, texts) = jsonl_numbers(run), event_scalars(run)
    assert set(got) == set(want) and len(want) >= 8, sorted(set(got) ^ set(want))
    for k in want:
        assert sorted(got[k]) == sorted(want[k]), k
        for s, v in want[k].items():  # event files hold float32
            assert got[k][s] == pytest.approx(v, rel=1e-6, abs=1e-30) or (math.isnan(v) and math.isnan(got[k][s]))
    assert "config/text_summary" in texts  # the resolved config, once
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    strings = {k for r in lines for k, v in r.items() if isinstance(v, str)}
    assert not strings & set(got)  # e.g. gppo's skip reason stays in the text log
    if kind == "gppo":
        assert sorted(want["eval/avg@n"]) == [0, 4] and sorted(want["reward"]) == [1, 2, 3, 4]


def test_tensorboard_resume_replaces_replayed_steps(tmp_path):
    """A resume replays the steps after its checkpoint: their events replace the first run's, as in metrics.jsonl."""
    pytest.importorskip("tensorboard", reason="tensorboard is a test requirement (tests/requirements.txt)")
    first = sft.RunDir(tmp_path, 0, {"tensorboard": True})
    for s in range(1, 5):
        first.log(s, {"loss": float(s), "note": "text"})
    first.tb.close()
    again = sft.RunDir(tmp_path, 0, {"tensorboard": True, "resume": True})
    for s in range(3, 6):  # the checkpoint was at step 2
        again.log(s, {"loss": 10.0 * s})
    again.tb.close()
    got, _ = event_scalars(tmp_path)
    assert set(got) == {"loss"} and got["loss"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0, 5: 50.0}


def test_wandb_offline_writes_run_files_logs_the_metrics_and_resumes_the_same_run(runs, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb did not install here (it is in tests/requirements.txt)")
    d, sft_args = runs
    logged = []
    log = wandb.sdk.wandb_run.Run.log

    def spy(self, data_, *args, **kwargs):
        logged.append((self.id, dict(data_)))
        return log(self, data_, *args, **kwargs)
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, flags = tmp_path / "run", ["--wandb", "tiny-project", "--wandb-name", "tiny", "--wandb-offline"]
    sft.main(sft_args + ["--out", str(out), "--max-steps", "2", *flags])
    run_id = (out / "wandb_id.txt").read_text().strip()
    sft.main(sft_args + ["--out", str(out), "--max-steps", "3", "--resume", *flags])  # resumes at step 2
    assert (out / "wandb_id.txt").read_text().strip() == run_id
    assert [i for i, _ in logged] == [run_id] * 3  # one run: steps 1, 2, then 3 after the resume
    want = jsonl_numbers(out)
    assert [m["step"] for _, m in logged] == [1, 2, 3]
    for _, m in logged:
        assert m == {"step": m["step"], **{k: v[m["step"]] for k, v in want.items()}}
    folders = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert folders and all((f / f"run-{run_id}.wandb").stat().st_size > 0 for f in folders)
    assert wandb.run is None  # finished when the process group went: nothing left open


def test_missing_optional_package_is_a_one_line_error(monkeypatch, capsys):
    for parse, flag, package in ((sft.parse_args, ["--tensorboard"], "tensorboard"),
                                 (gppo.parse_args, ["--wandb", "p"], "wandb")):
        monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
        with pytest.raises(SystemExit) as e:
            parse(["--model", "-", "--data", "-", *flag])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"{flag[0]} needs the optional package {package}" in err and f"pip install {package}" in err


def test_no_product_file_imports_an_optional_package():
    code = ("import sys, sft, gppo, rollout, data, model, kernels, rewards, sandbox, demo; "
            "print(sorted({'wandb', 'tensorboard', 'matplotlib', 'plot'} & set(sys.modules)))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_plot_draws_one_panel_per_metric_group(runs, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is a test requirement (tests/requirements.txt)")
    d, _ = runs
    fig, titles = plot.dashboard([d / "sft", d / "gppo"])
    assert titles == [t for _, t, _, _ in plot.PANELS]  # both kinds of run: every RL and SFT group
    reward = fig.axes[titles.index("reward / accuracy")]
    lines = {ln.get_label(): ln for ln in reward.get_lines()}
    want = jsonl_numbers(d / "gppo")["reward"]
    assert list(lines["gppo: reward"].get_xdata()) == sorted(want)
    assert list(lines["gppo: reward"].get_ydata()) == [want[s] for s in sorted(want)]
    out = plot.main([str(d / "gppo"), str(d / "sft"), "--out", str(tmp_path / "dash.png")])
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    _, sft_only = plot.dashboard([d / "sft"])
    assert sft_only == ["loss", "lr", "grad norm", "tokens/s"]
    with pytest.raises(SystemExit, match="metrics.jsonl not found"):
        plot.main([str(tmp_path)])
