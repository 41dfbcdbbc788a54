"""Every benchmark of the stack, one function each; each prints a table with ratios against a baseline measured
in the same run (these machines are noisy: absolute times from two runs are not comparable).

Run:
    python bench.py NAME [NAME ...]     # e.g. python bench.py engine
    python bench.py all
Where a CPU time cannot show a GPU-side gain, a benchmark counts the work (forwards, KV slots read) and projects
it with the roofline formula it states.
"""
from __future__ import annotations

import sys

BENCHES: dict = {}  # name -> function(argv: list[str]) -> None


def bench(fn):
    """Register a benchmark under its function name (less a leading `bench_`)."""
    BENCHES[fn.__name__.removeprefix("bench_")] = fn
    return fn


# ------------------------------------------------------------------------------------------------ engine


# ------------------------------------------------------------------------------------------------ rewards


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    names = list(BENCHES) if argv[:1] == ["all"] else argv[:1]
    if not names or any(n not in BENCHES for n in names):
        sys.exit(f"usage: python bench.py NAME [options] | all; NAME one of {sorted(BENCHES)}")
    for name in names:
        print(f"\n## bench {name}")
        BENCHES[name](argv[1:])


if __name__ == "__main__":
    main()
