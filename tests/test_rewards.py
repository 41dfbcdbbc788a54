"""Tests for rewards.py: the math equivalence table, shared gold answers, the Klear scheme, and the code sandbox
(reference solutions, partial credit, outcomes, hostile programs, bad input, batches, filtering)."""
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import need_shared
from math_cases import CASES

import rewards


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
    jobs = [(rewards.extract_answer(f"So the answer is $\\boxed{{{g}}}$."), g, True) for g in golds]
    jobs += [(f"\\boxed{{{perturb(g)}}}", g, False) for g in golds if perturb(g)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: rewards.math_equal(j[0], j[1]), jobs))
    wrong = [j for j, x in zip(jobs, got) if x != j[2]]
    assert not wrong, wrong


def test_extract_answer():
    ex = rewards.extract_answer
    assert ex("so \\boxed{\\frac{1}{2}} and later \\boxed{\\{1, 2\\}}.") == "\\{1, 2\\}"
    assert ex("nested \\boxed{\\frac{\\sqrt{3}}{2}} end") == "\\frac{\\sqrt{3}}{2}"
    assert ex("$\\boxed 5$") == "5" and ex("\\fbox{7}") == "7"
    assert ex("Thus the final answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert ex("Answer: 42") == "42" and ex("17") == "17"
    assert ex("I could not decide between several long options here.\nSorry.") is None
    assert ex("unfinished \\boxed{\\frac{1}{2}") is None and ex(None) is None


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


def test_math_time_bound():
    assert rewards.math_equal("\\sqrt{2}", "2^{1/2}")  # warm a helper
    t = time.monotonic()
    assert not rewards.math_equal("9^{9^{9^{9}}}", "1", timeout_s=1.0)
    assert time.monotonic() - t < 2.5
    assert rewards.math_equal("x^2-1", "(x-1)(x+1)")  # the replacement helper works


# ----------------------------------------------------------------------------------------------- code data


def _shared_code_jobs() -> list[tuple[str, list[dict], str]]:
    folder = need_shared("code")
    jobs = []
    for p in map(json.loads, open(folder / "taco_stdin.jsonl")):
        jobs.append((p["solution"], rewards.to_tests(p), p["id"]))
    for p in map(json.loads, open(folder / "leetcode_function.jsonl")):  # 4 of its ~100 asserts: time budget
        jobs.append((p["solution"], rewards.to_tests(p)[::25][:4], p["question_id"]))
    for p in map(json.loads, gzip.open(folder / "humaneval.jsonl.gz")):
        jobs.append((p["prompt"] + p["canonical_solution"], rewards.to_tests(p), p["task_id"]))
    return jobs


def test_every_reference_solution_scores_one():
    jobs = _shared_code_jobs()
    assert len(jobs) == 45 + 40 + 164 and all(tests for _, tests, _ in jobs)
    scores = rewards.reward_many([(py(code), {"kind": "code", "tests": tests}) for code, tests, _ in jobs],
                                 workers=4, timeout_s=20.0)
    bad = [name for (_, _, name), s in zip(jobs, scores) if s != 1.0]
    assert not bad, bad


def test_to_tests_layouts():
    klear = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    assert rewards.to_tests(klear) == [{"input": "1 2\n", "output": "3\n"}, {"input": "3 4\n", "output": "7\n"}]
    assert rewards.to_tests({"reward_model": {"ground_truth": klear}}) == rewards.to_tests(klear)
    assert rewards.to_tests({"functional": "assert f(1) == 2"}) == [{"functional": "assert f(1) == 2"}]
    call = rewards.to_tests({"inputs": [[2, 3]], "outputs": [[5]], "fn_name": "add"})
    assert rewards.run_tests("def add(a, b):\n    return a + b", call, timeout_s=5)[0].passed
    lc = {"test_code": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(\n        2) == 3\n",
          "entry_point": "f", "prompt_prefix": "import math"}
    tests = rewards.to_tests(lc)
    assert len(tests) == 2 and all(t["prefix"] == "import math" for t in tests)
    assert "candidate(1)" in tests[0]["functional"] and "candidate(1)" not in tests[1]["functional"]
    assert rewards.to_tests({"test": "def check(candidate):\n    assert candidate(1)\n", "entry_point": "g"}) == [
        {"functional": "def check(candidate):\n    assert candidate(1)\n\ncheck(g)\n", "prefix": ""}]
    for junk in ("not json", "[1, 2]", None, 17, {"inputs": 5, "outputs": 3}, {"what": 1}, b"\xff"):
        assert rewards.to_tests(junk) == []


def test_extract_code():
    ex = rewards.extract_code
    assert ex("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert ex("<think>```python\nx = 1\n```</think>\n```\ny = 2\n```") == "y = 2\n"
    assert ex("<think>```python\nx = 1\n```</think> no code after thinking") is None
    assert ex("```cpp\nint main(){}\n```") is None and ex("plain text") is None and ex(None) is None


# ----------------------------------------------------------------------------------------------- outcomes

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


def test_four_basic_outcomes():
    t = [ADD[0]]
    runs = {"pass": "a, b = map(int, input().split())\nprint(a + b)", "wrong answer": "print(4)",
            "runtime error": "raise ValueError('boom')", "timeout": "while True:\n    pass"}
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(runs, pool.map(lambda c: rewards.run_tests(c, t, timeout_s=1.5)[0], runs.values())))
    for status, res in got.items():
        assert res.status == status and res.passed == (status == "pass"), (status, res)
    assert "boom" in got["runtime error"].detail


def test_output_comparison():
    same = rewards._same_output
    assert same("3 \n4\n\n", "3\n4") and same("1  2", "1 2") and same("0.3333333", "0.333333")
    assert not same("1\n2", "1 2") and not same("0.3334", "0.3333") and not same("10", "10.5")
    assert not same("1000000000000000001", "1000000000000000000") and not same("", "0")


def test_fallback_without_privileges(monkeypatch):
    """Where neither uid switching nor namespaces are available the audit hook is the guard; check it bites."""
    monkeypatch.setattr(rewards, "_jail", lambda: {"root": False, "prefix": [], "keeper": None})
    ok = "import numpy\na, b = map(int, input().split())\nprint(numpy.int64(a) + b)"
    runs = [ok, "import socket\nsocket.socket()", "import os\nos.fork()", "import os\nos.kill(os.getpid(), 0)",
            "import subprocess\nsubprocess.run(['true'])", "open('/tmp/rewards-fallback-test', 'w')"]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda c: rewards.run_tests(c, [ADD[0]], timeout_s=5)[0], runs))
    assert got[0].passed, got[0]
    assert all(r.status == "runtime error" and "sandbox refuses" in r.detail for r in got[1:]), got
    assert not os.path.exists("/tmp/rewards-fallback-test")


# ----------------------------------------------------------------------------------------------- hostile programs


def _processes_in(folder: str) -> list[int]:
    """Pids whose working directory lies under folder (sandbox children and anything they spawned)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(folder):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_hostile_programs(tmp_path, monkeypatch):
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    os.chmod(tmp_path, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(sandboxes))
    secret = tmp_path / "outside"
    secret.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    sentinel = subprocess.Popen(["sleep", "120"])  # must survive whatever the programs do
    io = [{"input": "", "output": "ok"}]
    fn = [{"functional": "assert f(1) == 1"}]
    programs = {  # name: (code, tests, timeout_s, acceptable statuses)
        "infinite loop": ("while True:\n    pass", io, 1.5, {"timeout"}),
        "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                      io, 1.5, {"timeout"}),
        "10 GB": ("x = bytearray(10 * 2**30)\nprint('ok')", io, 5, {"memory"}),
        "1 GB of output": ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", io, 5,
                           {"output limit"}),
        "sleep": ("import time\ntime.sleep(1e6)", io, 1.5, {"timeout"}),
        "kill parent": ("import os\nos.kill(os.getppid(), 9)\nprint('no')", io, 5, {"runtime error", "wrong answer"}),
        "killpg 0": ("import os\nos.killpg(0, 9)\nprint('no')", io, 5, {"runtime error", "wrong answer"}),
        "kill everything": ("import os\nos.kill(-1, 9)\nprint('no')", io, 5, {"runtime error", "wrong answer"}),
        "write outside": (f"import os\nos.system('touch {secret}/b')\nopen('{secret}/a', 'w').write('x')\n"
                          f"open('/tmp/pwned-{port}', 'w').write('x')", io, 5, {"runtime error"}),
        "tcp connect": (f"import os, socket\nos.system('bash -c \"echo pwned > /dev/tcp/127.0.0.1/{port}\"')\n"
                        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'pwned')",
                        io, 5, {"runtime error"}),
        "grandchild": ("import os, subprocess, time\nsubprocess.Popen(['sleep', '4321'], start_new_session=True)\n"
                       "if os.fork() == 0:\n    os.setsid()\n    time.sleep(4321)\nprint('no')", io, 5,
                       {"wrong answer", "runtime error"}),
        "exit(0) before assert": ("import sys\ndef f(x):\n    return 0\nsys.exit(0)", fn, 5, {"wrong answer"}),
        "os._exit(0)": ("import os\ndef f(x):\n    return 0\nos._exit(0)", fn, 5, {"wrong answer"}),
        "patched builtins": ("import atexit, builtins, os\nbuiltins.AssertionError = type('E', (BaseException,), {})\n"
                             "AssertionError = builtins.AssertionError\nbuiltins.print = lambda *a, **k: None\n"
                             "atexit.register(os._exit, 0)\ndef f(x):\n    return 0", fn, 5,
                             {"wrong answer", "runtime error"}),
    }

    def run(item):
        code, tests, limit, _ = item
        t = time.monotonic()
        return rewards.run_tests(code, tests, timeout_s=limit)[0], time.monotonic() - t

    with ThreadPoolExecutor(len(programs)) as pool:
        results = dict(zip(programs, pool.map(run, programs.values())))
    try:
        conn = listener.accept()[0]
        conn.settimeout(0.5)
        arrived = conn.recv(100)
    except OSError:
        arrived = b""
    for name, (res, elapsed) in results.items():
        assert not res.passed and res.status in programs[name][3], (name, res)
        assert elapsed < programs[name][2] + 6, (name, elapsed)
    assert arrived == b"", "a sandboxed program reached a port on 127.0.0.1"
    assert not any(secret.iterdir()) and not os.path.exists(f"/tmp/pwned-{port}")
    time.sleep(0.2)
    assert _processes_in(str(sandboxes)) == [], "a sandboxed process outlived its test"
    assert sentinel.poll() is None, "the parent's other processes were harmed"
    assert not any(sandboxes.iterdir()), "sandbox folders were left behind"
    sentinel.kill()
    sentinel.wait()
    listener.close()


# ----------------------------------------------------------------------------------------------- bad input, batches


def test_bad_input_gives_defined_results():
    res = rewards.run_tests("print(1)", [{"foo": 1}, {"input": 5, "output": "1"}, None, "str", {"functional": 3}])
    assert [r.status for r in res] == ["sandbox error"] * 5 and not any(r.passed for r in res)
    assert rewards.run_tests("print(1)", "not a list") == [] and rewards.run_tests("print(1)", None) == []
    bytes_out = rewards.run_tests("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\n')", [ADD[0]], timeout_s=5)
    assert bytes_out[0].status == "wrong answer"
    assert rewards.code_reward(think("no code here"), ADD) == -1.0
    assert rewards.code_reward(py("print(1)"), []) == -1.0 and rewards.code_reward(None, ADD) == -2.0
    assert rewards.math_reward(None, "1") == -2.0 and not rewards.math_equal(None, "1")
    assert not rewards.math_equal("x" * 5000, "1") and not rewards.math_equal("\\frac{1}{\\", "\\")


def test_reward_many_mixed_broken_and_hung():
    jobs = [(think("\\boxed{\\frac{1}{2}}"), {"kind": "math", "answer": "0.5"}),
            (think("\\boxed{3}"), {"kind": "math", "answer": "4"}),
            (py("a, b = map(int, input().split())\nprint(a + b)"), {"kind": "code", "tests": ADD[:2]}),
            (py("print(0)"), {"kind": "code", "tests": None}),
            ("x", {"kind": "poetry"}), ("x", None), ("only one item",),
            (py("import time\ntime.sleep(30)"), {"kind": "code", "tests": ADD[:1]})]
    t = time.monotonic()
    scores = rewards.reward_many(jobs, workers=3, job_timeout_s=4.0, timeout_s=8.0)
    assert scores == [1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    assert time.monotonic() - t < 15


def test_filter_problems():
    folder = need_shared("code")
    probs = [p for p in map(json.loads, open(folder / "taco_stdin.jsonl")) if len(p["tests"]) >= 2][:4]
    broken = dict(probs[0], id="broken", solution="print('nope')")
    few = dict(probs[1], id="few", tests=probs[1]["tests"][:1])
    no_ref = {"id": "noref", "tests": ADD}
    kept, report = rewards.filter_problems(probs[2:] + [broken, few, no_ref], min_tests=2, workers=2, timeout_s=10.0)
    assert [p["id"] for p in kept] == [p["id"] for p in probs[2:]] + ["noref"]
    assert report == {"total": 5, "kept": 3, "dropped": {"reference fails": 1, "too few tests": 1}, "unverified": 1}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
