"""Tests for rewards.py: Math-Verify grading (our equivalence table, its own public test cases, shared gold
answers, distinct MATH-500 answers, the time bound), the Klear scheme, test layouts, batches with status counts,
the sandbox check, and faulty-problem filtering."""
import ast
import contextlib
import json
import random
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import need_shared
from math_cases import CASES

import rewards
import sandbox


def think(body: str) -> str:
    return f"<think>let me think</think>\n{body}"


def py(code: str) -> str:
    return think(f"Here is the program.\n```python\n{code}\n```\n")


def perturb(answer: str) -> str | None:
    """The answer with its first integer increased by one (None when it has no digits)."""
    m = re.search(r"\d+", answer)
    return answer[:m.start()] + str(int(m.group()) + 1) + answer[m.end():] if m else None


# ----------------------------------------------------------------------------------------------- math


def test_math_table():
    assert len(CASES) >= 150 and sum(e for *_, e in CASES) > 50 and sum(not e for *_, e in CASES) > 50
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda c: rewards.math_equal(c[0], c[1]), CASES))
    wrong = [(p, g, e) for (p, g, e), x in zip(CASES, got) if x != e]
    assert not wrong, f"{len(wrong)} wrong: {wrong}"


def test_shared_gold_answers_boxed_and_perturbed():
    folder = need_shared("math")
    golds = [str(json.loads(line)["answer"]) for f in sorted(folder.glob("*.jsonl")) for line in open(f)]
    assert len(golds) >= 500
    jobs = [(f"So the answer is $\\boxed{{{g}}}$.", g, True) for g in golds]
    jobs += [(f"\\boxed{{{perturb(g)}}}", g, False) for g in golds if perturb(g)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: rewards.math_equal(j[0], j[1]), jobs))
    wrong = [j for j, x in zip(jobs, got) if x != j[2]]
    assert not wrong, wrong


def test_math_reward_scheme():
    r = rewards.math_reward
    assert r("<think>hmm</think> so \\boxed{0.5}", "\\frac12") == 1.0
    assert r("<think>hmm</think> so \\boxed{0.6}", "\\frac12") == -1.0
    assert r("<think>hmm</think> no box at all, sorry about that", "1") == -1.0
    assert r("<think>hmm ... \\boxed{0.5}", "\\frac12") == -0.5  # never closed the reasoning
    assert r("no tags \\boxed{0.5}", "\\frac12") == -2.0
    assert r("hmm</think> \\boxed{0.5}", "\\frac12", check_think=False) == 1.0  # prompt held <think>
    assert r("\\boxed{0.5}", "\\frac12", check_think=False, no_close_think=None) == 1.0  # both checks off
    assert r("<think>\\boxed{9}</think>\\boxed{2}", "9") == -1.0  # only the text after </think> counts
    assert r("x \\boxed{1}", "1", correct=2.0, no_open_think=-3.0) == -3.0
    assert r("<think>.</think> The final answer is $\\frac{1}{2}$, with $x$ free.", "0.5") == 1.0  # no box


def test_integer_fast_path_agrees_with_math_verify():
    """Integers against integer golds are decided in the caller; Math-Verify in a helper says the same."""
    pairs = [("\\boxed{7}", "7"), ("007", "7"), ("-0", "0"), ("$\\boxed{12}$", "13"), ("12", "-12"), ("\n 5 ", "5")]
    assert all(rewards._INT.fullmatch(p) for p, _ in pairs)
    assert [rewards.math_equal(p, g) for p, g in pairs] == [rewards._ask(p, g, 5.0) for p, g in pairs]
    assert [rewards.math_equal(p, g) for p, g in pairs] == [True, True, True, False, False, True]


def test_math_time_bound():
    assert rewards.math_equal("\\sqrt{2}", "2^{1/2}")  # warm a helper
    before = {h.proc.pid for h in rewards._IDLE}
    t = time.monotonic()
    assert not rewards.math_equal("9^{9^{9^{9}}}", "1", timeout_s=1.0)
    assert time.monotonic() - t < 2.0
    after = {h.proc.pid for h in rewards._IDLE}
    assert len(before - after) == 1 and len(after) == len(before), "the helper that ran out of time was not replaced"
    assert rewards.math_equal("x^2-1", "(x-1)(x+1)")  # the replacement helper works
    assert "math_verify" not in sys.modules  # the caller never runs the grader itself




MV_SDIST = Path(__file__).resolve().parents[1] / ".cache" / "math-verify"  # tests/run.sh downloads it there


def _math_verify_cases() -> list[tuple[str, str, bool]]:
    """(gold, pred, expected) of every pytest.mark.parametrize("gold,pred,expected", [literal rows]) in
    Math-Verify's source distribution's tests (read from the archive, never copied into this repository)."""
    archives = sorted(MV_SDIST.glob("math_verify-*.tar.gz"))
    if not archives:
        pytest.skip(f"Math-Verify's source distribution is not in {MV_SDIST} (bash tests/run.sh downloads it)")
    rows = []
    with tarfile.open(archives[-1]) as tar:
        for member in tar.getmembers():
            if re.search(r"/tests/test_\w+\.py$", member.name):
                rows += _parametrized(ast.parse(tar.extractfile(member).read()))
    return rows


def _parametrized(tree: ast.Module) -> list[tuple[str, str, bool]]:
    rows = []
    for d in (d for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for d in f.decorator_list):
        if not (isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "parametrize" and len(d.args) == 2):
            continue
        names = [n.strip() for n in d.args[0].value.split(",")] if isinstance(d.args[0], ast.Constant) else []
        if {"gold", "pred", "expected"} <= set(names):
            with contextlib.suppress(ValueError):  # rows built with f-strings are not literals
                rows += [(r[names.index("gold")], r[names.index("pred")], bool(r[names.index("expected")]))
                         for r in ast.literal_eval(d.args[1])]
    return rows


def test_math_verify_public_cases():
    """Our grader, called as the issue says, agrees with Math-Verify's own expected verdicts >= 95% of the time."""
    cases = _math_verify_cases()
    assert len(cases) >= 250
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda c: rewards.math_equal(c[1], c[0], timeout_s=5.0), cases))
    agree = sum(g == c[2] for g, c in zip(got, cases)) / len(cases)
    print(f"agreement with Math-Verify's public cases: {agree:.3f} of {len(cases)}")
    assert agree >= 0.95, [c for g, c in zip(got, cases) if g != c[2]]


def test_distinct_math500_answers_never_equal():
    """Pairs of distinct MATH-500 answers that plain Math-Verify calls different are never equal for us (our
    pre-normalisation adds no false positive)."""
    mv = pytest.importorskip("math_verify")
    answers = sorted({str(json.loads(line)["answer"]) for line in open(need_shared("math", "math500.jsonl"))})
    rng = random.Random(0)
    pairs = [tuple(rng.sample(answers, 2)) for _ in range(120)]
    pairs = [(a, b) for a, b in pairs if not mv.verify(mv.parse(f"${b}$"), mv.parse(f"${a}$"))]
    assert len(pairs) >= 100
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: rewards.math_equal(*p), pairs))
    assert not any(got), [p for p, g in zip(pairs, got) if g]


# ----------------------------------------------------------------------------------------------- code


def test_to_tests_layouts():
    klear = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    assert rewards.to_tests(klear) == [{"input": "1 2\n", "output": "3\n"}, {"input": "3 4\n", "output": "7\n"}]
    assert rewards.to_tests({"reward_model": {"ground_truth": klear}}) == rewards.to_tests(klear)
    assert rewards.to_tests({"functional": "assert f(1) == 2"}) == [{"functional": "assert f(1) == 2"}]
    call = rewards.to_tests({"inputs": [[2, 3], [1, 1]], "outputs": [[5], [2]], "fn_name": "add"})
    assert call[0]["calls"] == ["candidate(*[2, 3])"] and call[0]["checks"] == [["eq_any", "[5]"]]
    res = sandbox.run_tests("def add(a, b):\n    return a + b", call, timeout_s=5)
    assert [r.passed for r in res] == [True, True] and not any(r.notes for r in res)
    legacy = [{"functional": t["functional"]} for t in call]  # the same checks as assert code, in the sandbox
    res = sandbox.run_tests("class Solution:\n    def add(self, a, b):\n        return (a + b,)", legacy, timeout_s=5)
    assert [r.passed for r in res] == [True, True] and all(r.notes == ("in-sandbox verdict",) for r in res)
    lc = {"test_code": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(\n        2) == 3\n",
          "entry_point": "f", "prompt_prefix": "import math"}
    tests = rewards.to_tests(lc)
    assert len(tests) == 2 and all(t["prefix"] == "import math" for t in tests)
    assert "candidate(1)" in tests[0]["functional"] and "candidate(1)" not in tests[1]["functional"]
    assert tests[1]["calls"] == ["candidate(2)"] and tests[1]["checks"] == [["eq", "3"]] and tests[1]["entry"] == "f"
    he = "import math\ndef check(candidate):\n    assert candidate(1)\n    assert abs(candidate(2) - 0.5) < 1e-6\n"
    assert rewards.to_tests({"test": he, "entry_point": "g"}) == [
        {"functional": he + "\ncheck(g)\n", "prefix": "", "calls": ["candidate(1)", "candidate(2)"],
         "checks": [["truthy"], ["abs<", "0.5", "1e-06"]], "entry": "g", "setup": "import math"}]
    loop = "def check(candidate):\n    for x in (1, 2):\n        assert candidate(x)\n"  # no split: in-sandbox
    assert rewards.to_tests({"test": loop, "entry_point": "g"}) == [{"functional": loop + "\ncheck(g)\n", "prefix": ""}]
    for junk in ("not json", "[1, 2]", None, 17, {"inputs": 5, "outputs": 3}, {"what": 1}, b"\xff"):
        assert rewards.to_tests(junk) == []


def test_extract_code():
    ex = rewards.extract_code
    assert ex("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert ex("<think>```python\nx = 1\n```</think>\n```\ny = 2\n```") == "y = 2\n"
    assert ex("<think>```python\nx = 1\n```</think> no code after thinking") is None
    assert ex("```cpp\nint main(){}\n```") is None and ex("plain text") is None and ex(None) is None


ADD = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in ((1, 2), (5, 7), (-3, 3), (10, 20))]


def test_partial_credit_soft_and_hard():
    wrong_branch = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"
    assert rewards.code_reward(py(wrong_branch), ADD, timeout_s=5) == pytest.approx(2 * 3 / 4 - 1)
    assert rewards.code_reward(py(wrong_branch), ADD, soft=False, timeout_s=5) == -1.0
    right = "a, b = map(int, input().split())\nprint(a + b)"
    assert rewards.code_reward(py(right), ADD, soft=False, timeout_s=5) == 1.0
    fn = rewards.to_tests({"test_code": "def check(candidate):\n" + "".join(
        f"    assert candidate({i}) == {i * i}\n" for i in range(4)), "entry_point": "sq", "prompt_prefix": ""})
    assert rewards.code_reward(py("def sq(x):\n    return x * x if x < 3 else 0"), fn, timeout_s=5) == 0.5
    assert rewards.code_reward("no tags ```python\nprint(1)\n```", ADD) == -2.0
    assert rewards.code_reward("<think>still thinking", ADD) == -0.5
    assert rewards.code_reward(think("I will not write code."), ADD) == -1.0


def test_reward_many_mixed_broken_and_hung():
    jobs = [(think("\\boxed{\\frac{1}{2}}"), {"kind": "math", "answer": "0.5"}),
            (think("\\boxed{3}"), {"kind": "math", "answer": "4"}),
            (py("a, b = map(int, input().split())\nprint(a + b)"), {"kind": "code", "tests": ADD[:2]}),
            (py("print(0)"), {"kind": "code", "tests": None}),
            ("x", {"kind": "poetry"}), ("x", None), ("only one item",),
            (py("import time\ntime.sleep(30)"), {"kind": "code", "tests": ADD[:1]})]
    t, seen = time.monotonic(), Counter()
    scores = rewards.reward_many(jobs, workers=3, job_timeout_s=4.0, statuses=seen, timeout_s=8.0)
    assert scores == [1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    assert time.monotonic() - t < 15
    assert seen == Counter({"pass": 2, "abandoned job": 1}), seen


def test_status_counts_and_sandbox_check(monkeypatch):
    """A batch with a right, a wrong, a timing-out and a crashing program counts one of each; a broken sandbox
    gives 'sandbox error' counts, and check_sandbox stops with a message saying what failed."""
    progs = ["a, b = map(int, input().split())\nprint(a + b)", "print(0)", "while True:\n    pass", "1 / 0"]
    seen = Counter()
    scores = rewards.reward_many([(py(p), {"kind": "code", "tests": ADD[:1]}) for p in progs], workers=2,
                                 statuses=seen, timeout_s=1.5)
    assert scores == [1.0, -1.0, -1.0, -1.0]
    assert seen == Counter({"pass": 1, "wrong answer": 1, "timeout": 1, "runtime error": 1}), seen
    rewards.check_sandbox(seen)  # a healthy batch passes
    monkeypatch.setattr(sandbox, "_BOOT", "import sys; sys.path.insert(0, '/nonexistent'); import sandbox")
    broken = Counter()
    rewards.reward_many([(py(progs[0]), {"kind": "code", "tests": ADD[:2]})] * 2, workers=2, statuses=broken)
    assert broken == Counter({"sandbox error": 4}), broken
    with pytest.raises(RuntimeError, match=r"4 of 4 code tests ended in 'sandbox error'.*No module named"):
        rewards.check_sandbox(broken)


def test_reward_many_scores_identical_jobs_once(monkeypatch):
    calls, score = [], rewards._score

    def spy(response, task, opts, statuses):
        calls.append(response)
        return score(response, task, opts, statuses)
    monkeypatch.setattr(rewards, "_score", spy)
    right, wrong = py("a, b = map(int, input().split())\nprint(a + b)"), py("print(0)")
    task, seen = {"kind": "code", "tests": ADD[:2]}, Counter()
    jobs = [(right, task), (wrong, task), (right, task), (right, dict(task, tests=ADD[:1])), (right, task)]
    assert rewards.reward_many(jobs, workers=2, statuses=seen, timeout_s=10) == [1.0, -1.0, 1.0, 1.0, 1.0]
    assert len(calls) == 3  # (right, 2 tests), (wrong, 2 tests), (right, 1 test)
    assert seen == Counter({"pass": 3 * 2 + 1, "wrong answer": 2}), seen  # counted per job, as if run each


def test_filter_problems():
    folder = need_shared("code")
    probs = [p for p in map(json.loads, open(folder / "taco_stdin.jsonl")) if len(p["tests"]) >= 2][:4]
    broken = dict(probs[0], id="broken", solution="print('nope')")
    few = dict(probs[1], id="few", tests=probs[1]["tests"][:1])
    no_ref = {"id": "noref", "tests": ADD}
    kept, report = rewards.filter_problems(probs[2:] + [broken, few, no_ref], min_tests=2, workers=2, timeout_s=10.0)
    assert [p["id"] for p in kept] == [p["id"] for p in probs[2:]] + ["noref"]
    n_tests = len(probs[0]["tests"])
    assert report == {"total": 5, "kept": 3, "dropped": {"reference fails": 1, "too few tests": 1}, "unverified": 1,
                      "dropped_list": [(2, "reference fails", f"{n_tests} of {n_tests} tests: {n_tests} wrong answer"),
                                       (3, "too few tests", "1 < 2")]}


def test_filter_command_line(tmp_path):
    data, out = tmp_path / "data.jsonl", tmp_path / "clean.jsonl"
    good = {"id": "good", "solution": "a, b = map(int, input().split())\nprint(a + b)", "tests": ADD}
    data.write_text("\n".join(json.dumps(p) for p in (good, dict(good, id="bad", solution="print(1)"))) + "\n")
    cmd = [sys.executable, "rewards.py", "--filter", str(data), "--out", str(out), "--min-tests", "2", "--workers", "2"]
    run = subprocess.run(cmd, cwd=Path(rewards.__file__).parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"dropped {data}:2 (bad): reference fails (4 of 4 tests: 4 wrong answer)" in run.stdout
    assert '"kept": 1' in run.stdout
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["good"]
    data.write_text(json.dumps(good) + "\n{oops\n")
    run = subprocess.run(cmd, cwd=Path(rewards.__file__).parent, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and f"{data}:2: not a JSON line" in run.stderr


def test_bad_input_gives_defined_results():
    assert rewards.code_reward(think("no code here"), ADD) == -1.0
    assert rewards.code_reward(py("print(1)"), []) == -1.0 and rewards.code_reward(None, ADD) == -2.0
    assert rewards.math_reward(None, "1") == -2.0 and not rewards.math_equal(None, "1")
    assert not rewards.math_equal("x" * 5000, "1") and not rewards.math_equal("\\frac{1}{\\", "\\")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
