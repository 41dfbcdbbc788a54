"""The run dashboard: the curves RL practitioners watch, drawn from the metrics.jsonl of one or more run folders.

What: one PNG with one panel per metric group. RL runs (gppo.py: rows with `reward`): reward and accuracy (with the
held-out eval/avg@n points), response length and truncation, entropy, clip fractions and the ratio range, the
sampler-trainer log-prob gap, time per stage, grad norm and loss. SFT runs (sft.py): loss, lr, grad norm, tokens/s.
Several runs are overlaid: one colour per run, one line style per metric.

Design:
- Reads only metrics.jsonl (a later line for a step wins, as after a resume; gppo's eval line joins its step's line),
  so it works on a live run, a finished one, or a copy of its folder. A panel is drawn when some run has one of its
  metrics; a metric on the right axis (truncation, ratio range, MFU) has its own scale.
- matplotlib is optional: nothing in the product imports this file, and without matplotlib it says so in one line.

Run:
  python plot.py runs/demo/gppo/math                            # -> runs/demo/gppo/math/dashboard.png
  python plot.py runs/demo/sft runs/demo/gppo/math runs/demo/gppo/code --out runs/demo/dashboard.png
  python -m pytest -q tests/test_trackers.py
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# (kind, title, metrics on the left axis, metrics on the right axis)
PANELS = [
    ("rl", "reward / accuracy", ["reward", "acc", "eval/avg@n"], []),
    ("rl", "response length / truncation", ["resp_len", "resp_len_max"], ["trunc"]),
    ("rl", "entropy", ["entropy"], []),
    ("rl", "clip fractions / ratio range", ["clip_low", "clip_high", "dual_clip"], ["ratio_min", "ratio_max"]),
    ("rl", "logp_diff (sampler vs trainer)", ["logp_diff"], []),
    ("rl", "time per stage (s)", ["t_generate", "t_reward", "t_old_logp", "t_update", "t_step"], []),
    ("rl", "grad norm / loss", ["grad_norm"], ["loss"]),
    ("sft", "loss", ["loss"], []),
    ("sft", "lr", ["lr"], []),
    ("sft", "grad norm", ["grad_norm"], []),
    ("sft", "tokens/s", ["tokens_per_s"], ["mfu"]),
]
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]  # one per metric of a panel


def read_metrics(run: Path) -> dict[int, dict]:
    """step -> the merged numeric metrics of that step (later lines win)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"plot.py: error: {path} not found (a run folder of sft.py or gppo.py holds one)")
    rows: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            step = int(r["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"plot.py: error: {path}:{n}: not a metrics line with a step ({e})") from None
        rows.setdefault(step, {}).update({k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "step"})
    return dict(sorted(rows.items()))


def run_kind(rows: dict[int, dict]) -> str:
    return "rl" if any("reward" in r for r in rows.values()) else "sft"


def series(rows: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(s, float(r[key])) for s, r in rows.items() if key in r and math.isfinite(r[key])]
    return [s for s, _ in pts], [v for _, v in pts]


def draw_panel(ax, title: str, left: list[str], right: list[str], runs: list[tuple[str, dict, str]]) -> None:
    """One metric group: every run's curves of `left` on ax and of `right` on a twin axis (its own scale)."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    has = lambda keys: any(k in r for _, rows, _ in runs for r in rows.values() for k in keys)
    axes = [(ax, left)] + ([(ax.twinx(), right)] if right and has(right) else [])
    handles = []
    for n, (axis, key) in enumerate((axis, k) for axis, keys in axes for k in keys):
        for label, rows, colour in runs:
            x, y = series(rows, key)
            if x:
                sparse = len(x) < max(2, len(rows) // 4)  # eval points: markers, not a line read as a curve
                handles += axis.plot(x, y, linestyle=STYLES[n % len(STYLES)], color=colour, linewidth=1.2,
                                     marker="o" if sparse or len(x) == 1 else None, markersize=3,
                                     label=f"{label}: {key}")
    for axis, _ in axes:
        axis.tick_params(labelsize=7)
        vals = [v for line in axis.get_lines() for v in line.get_ydata()]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
            axis.set_yscale("log")  # logp_diff, ratio ranges and grad norms can span decades
    ax.legend(handles=handles, fontsize=6, loc="best")


def dashboard(run_dirs: list[Path]):
    """The figure and the titles of its panels, in order."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot.py: error: the dashboard needs matplotlib, which is not installed: "
                         "pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = [(_label(p, run_dirs), read_metrics(p), colours[i % len(colours)]) for i, p in enumerate(run_dirs)]
    panels = []
    for kind, title, left, right in PANELS:
        mine = [r for r in runs if run_kind(r[1]) == kind]
        if any(k in row for _, rows, _ in mine for row in rows.values() for k in left + right):
            panels.append((title, left, right, mine))
    if not panels:
        raise SystemExit(f"plot.py: error: no metric to plot in {', '.join(str(p) for p in run_dirs)}")
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, (title, left, right, mine) in zip(axes.flat, panels):
        draw_panel(ax, title, left, right, mine)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(" | ".join(label for label, _, _ in runs), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title
    return fig, [p[0] for p in panels]


def _label(path: Path, all_paths: list[Path]) -> str:
    """The shortest tail of the path that tells the runs apart (e.g. gppo/math vs gppo/code)."""
    parts = Path(path).resolve().parts
    for n in range(1, len(parts) + 1):
        tails = [Path(*Path(p).resolve().parts[-n:]) for p in all_paths]
        if len(set(tails)) == len(tails):
            return str(Path(*parts[-n:]))
    return str(path)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders holding metrics.jsonl")
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN_DIR/dashboard.png of the first run)")
    a = p.parse_args(argv)
    out = a.out or a.runs[0] / "dashboard.png"
    fig, titles = dashboard(a.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot.py: {len(titles)} panels ({', '.join(titles)}) of {len(a.runs)} run(s) -> {out}")
    return out


if __name__ == "__main__":
    main()
