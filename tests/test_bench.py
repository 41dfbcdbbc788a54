"""bench.py: the pieces its tables rest on (rates without the prefill, the schedule replicas' counts) and a
shortened engine benchmark."""
import pytest

import bench


def test_bench_rates_remove_the_prefill():
    # a fake clock: run(k) costs a 5 s "prefill" plus 0.25 s per token (0.5 s for "slow"); the rate must see only
    # the per-token part, for each runner, however the rounds interleave them
    now = [0.0]
    runs = {"fast": lambda k: now.__setitem__(0, now[0] + 5 + 0.25 * k),
            "slow": lambda k: now.__setitem__(0, now[0] + 5 + 0.5 * k)}
    r = bench._decode_rates(runs, batch=4, new=9, clock=lambda: now[0], repeats=2)
    assert r == pytest.approx({"fast": 16.0, "slow": 8.0})
    row = bench._bench_row(4, {"ours": r["fast"], "hf": r["slow"], "gemm": 32.0})  # no no-cache run: "-"
    assert row == "| 4 | 16 | 8 | 2.00x | 32 | 4.00x | - |"


def test_schedule_replicas_count_by_hand():
    # one prompt of 2 tokens, two samples of 3 and 10 tokens; flags read every 4 steps
    f, kv = bench._old_schedule([2], [3, 10], n=2, check_every=4)
    # steps 1..9; the 3-token row is seen finished at the read of step 4: live 2 rows for t = 1..3, then 1
    assert f == 9 and kv == sum(2 * (2 + t) for t in range(1, 4)) + sum(2 + t for t in range(4, 10))
    f, kv = bench._unlimited([2], [3, 10], n=2)
    assert f == 9 and kv == sum(2 + t for t in range(1, 3)) + sum(2 + t for t in range(1, 10))
    assert bench._h200_seconds(1, 0, 0.0, scale=1) == pytest.approx(bench.W8B / bench.HBM)


def test_engine_benchmark_runs_small(capsys):
    bench.main(["engine", "--scale", "1024"])
    out = capsys.readouterr().out
    assert "| this engine |" in out and "(aim <= 1.3x)" in out and "tokens/s" in out
