"""The run dashboard: one PNG, a panel per metric group, from the metrics.jsonl of one or more run
folders (overlaid: a colour per run, a line style per metric). RL runs (gppo.py): reward, accuracy,
eval/avg@n, length, entropy, clipping, logp_diff, stage times, grad norm, loss; SFT runs (sft.py):
loss, lr, grad norm, tokens/s. A later line for a step wins (a resume); live runs plot too.
matplotlib is optional: nothing in the product imports this file.

Run:
  python plot.py runs/demo/gppo/math                      # -> runs/demo/gppo/math/dashboard.png
  python plot.py runs/demo/sft runs/demo/gppo/math runs/demo/gppo/code --out runs/demo/dashboard.png
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# (kind, title, metrics on the left axis, metrics on the right axis: their own scale)
PANELS = [
    ("rl", "reward / accuracy", ["reward", "acc", "eval/avg@n"], []),
    ("rl", "groups filtered / reward-only groups", ["filtered", "partial_groups"], []),
    ("rl", "response length / truncation", ["resp_len", "resp_len_max"], ["trunc"]),
    ("rl", "entropy", ["entropy"], []),
    ("rl", "clip fractions / ratio range", ["clip_low", "clip_high", "dual_clip"],
     ["ratio_min", "ratio_max"]),
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
    path, rows = Path(run) / "metrics.jsonl", {}
    if not path.is_file():
        raise SystemExit(f"plot.py: error: {path} not found (sft.py and gppo.py runs hold one)")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            step = int(r["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"plot.py: error: {path}:{n}: not a metrics line with a step ({e})") from None
        nums = {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
        rows.setdefault(step, {}).update(nums)
    return dict(sorted(rows.items()))


def draw_panel(ax, title: str, left: list[str], right: list[str], runs: list[tuple]) -> None:
    """One metric group: every run's curves of `left` on ax and of `right` on a twin axis."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    has_right = any(k in r for _, rows, _ in runs for r in rows.values() for k in right)
    axes = [(ax, left)] + ([(ax.twinx(), right)] if has_right else [])
    handles, styles = [], {}
    for n, (axis, key) in enumerate((axis, k) for axis, keys in axes for k in keys):
        for label, rows, colour in runs:
            pts = [(s, float(r[key])) for s, r in rows.items() if key in r and math.isfinite(r[key])]
            if pts:
                # eval points: markers, not a line read as a curve
                sparse = len(pts) < max(2, len(rows) // 4) or len(pts) == 1
                styles[key] = STYLES[n % len(STYLES)]
                handles += axis.plot(*zip(*pts), linestyle=styles[key], color=colour,
                                     linewidth=1.2, marker="o" if sparse else None, markersize=3,
                                     label=f"{label}: {key}")
    if len(runs) > 1:  # the figure's legend names the runs' colours; a panel's, its metrics' styles
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color="0.3", linestyle=st, label=k) for k, st in styles.items()]
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
        raise SystemExit("plot.py: error: the dashboard needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = [(_label(p, run_dirs), read_metrics(p), colours[i % len(colours)])
            for i, p in enumerate(run_dirs)]
    panels = []
    for kind, title, left, right in PANELS:  # a run that logs a reward is an RL run
        mine = [r for r in runs if any("reward" in x for x in r[1].values()) == (kind == "rl")]
        if any(k in row for _, rows, _ in mine for row in rows.values() for k in left + right):
            panels.append((title, left, right, mine))
    if not panels:
        raise SystemExit(f"plot.py: error: no metric to plot in {', '.join(map(str, run_dirs))}")
    cols, nrows = min(3, len(panels)), math.ceil(len(panels) / 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, (title, left, right, mine) in zip(axes.flat, panels):
        draw_panel(ax, title, left, right, mine)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D
    ncol = min(3, len(runs))
    fig.legend(handles=[Line2D([], [], color=c, label=label) for label, _, c in runs], loc="upper center",
               ncol=ncol, fontsize=9, frameon=False)
    # room at the top for the legend of runs: a row of it takes about 0.25 inch
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 * math.ceil(len(runs) / ncol) / (3.6 * nrows)))
    return fig, [p[0] for p in panels]


def _label(path: Path, all_paths: list[Path]) -> str:
    """The shortest tail of the path that tells the runs apart (e.g. gppo/math vs gppo/code)."""
    parts = Path(path).resolve().parts
    for n in range(1, len(parts) + 1):
        if len({Path(*Path(p).resolve().parts[-n:]) for p in all_paths}) == len(all_paths):
            return str(Path(*parts[-n:]))
    return str(path)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders with metrics.jsonl")
    p.add_argument("--out", type=Path, help="PNG to write (default: the first RUN_DIR/dashboard.png)")
    a = p.parse_args(argv)
    out = a.out or a.runs[0] / "dashboard.png"
    fig, titles = dashboard(a.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot.py: {len(titles)} panels ({', '.join(titles)}) of {len(a.runs)} run(s) -> {out}")
    return out


if __name__ == "__main__":
    main()
