"""Rewards for RL (docs/ALGORITHM.md 4): the Klear score scheme, math graded by Math-Verify, code by
tests run in sandbox.py, and the faulty-problem filter.

- Math: `math_equal` asks Math-Verify (set/relation comparison on) after a few rewrites of ours
  (`_texts`), only in helper processes (`rewards.py --serve`, at most one per core): a check that
  outlives timeout_s kills its helper and is False. In the caller it could not be interrupted.
- Code: the last ```python block after `</think>`, judged on tests from `to_tests` (Klear, TACO,
  LeetCode, HumanEval layouts); `check_sandbox` stops a run whose sandbox cannot run programs.

Run: python rewards.py --filter data.jsonl --out clean.jsonl [--min-tests 16]
"""
from __future__ import annotations

import argparse
import ast
import atexit
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import data
import sandbox
from sandbox import run_tests


# --------------------------------------------------------------------------------------------- math
def _after_think(response, check_think: bool, no_close_think, no_open_think):
    """(text to grade, None) or (None, penalty). check_think=False skips the <think> rule (prompt
    holds it); no_close_think=None grades the whole text when </think> is missing."""
    response = response if isinstance(response, str) else ""
    if check_think and "<think>" not in response:
        return None, no_open_think
    if "</think>" not in response:
        return (response, None) if no_close_think is None else (None, no_close_think)
    return response.rsplit("</think>", 1)[1], None


_UNICODE = str.maketrans({"√": "\\sqrt ", "∞": "\\infty ", "π": "\\pi ", "°": "^\\circ ", "−": "-"})
_DELIMITED = re.compile(r"(?<!\\)\$|\\boxed|\\fbox|\\\[|\\\(")
# 1,000 / 1 000 000: Math-Verify's number reader
_GROUPED = re.compile(r"-?\d{1,3}(?:[ ,]\d{3})+(?:\.\d+)?")


def _texts(s: str) -> list[str]:
    """What Math-Verify is asked to parse for one side; the first that parses wins."""
    s = s.translate(_UNICODE).replace("\\$", "").replace("\\varnothing", "\\emptyset")
    # 1e3 = 10^3
    s = re.sub(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])", r"\1\\times 10^{\2}", s)
    if _DELIMITED.search(s) or _GROUPED.fullmatch(s.strip()):
        return [s]
    # a bare answer; prose without delimiters falls back to plain extraction
    return ["\\boxed{" + s + "}", s]


def _equal(pred: str, gold: str) -> bool:
    """Math-Verify's verdict (helper processes only: it imports sympy and cannot be interrupted)."""
    from math_verify import parse, verify

    def read(s: str) -> list:
        return next((got for t in _texts(s) if (got := parse(t, parsing_timeout=None))), [])
    g, p = read(gold), read(pred)
    return bool(g and p) and verify(g, p, allow_set_relation_comp=True, timeout_seconds=None)


class _Helper:
    """A `python rewards.py --serve` process: one JSON [pred, gold] line in, '1' or '0' out."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ready = False

    def _line(self, timeout_s: float) -> bytes:
        fd = self.proc.stdout.fileno()
        if not sandbox.readable(fd, timeout_s):
            raise TimeoutError("math check timed out")
        line = os.read(fd, 64).strip()
        if not line:
            raise EOFError("math helper died")
        return line

    def ask(self, pred: str, gold: str, timeout_s: float) -> bool:
        # start-up (imports) is not check time
        self.ready = self.ready or self._line(120.0) == b"ready"
        self.proc.stdin.write(json.dumps([pred, gold]).encode() + b"\n")
        self.proc.stdin.flush()
        return self._line(timeout_s) == b"1"


# idle helpers; a forked child forgets them (it must not share their pipes)
_IDLE: list[_Helper] = []
_IDLE_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_IDLE.clear)
# more helpers than cores would only queue
_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
atexit.register(lambda: [h.proc.kill() for h in _IDLE])


def _ask(pred: str, gold: str, timeout_s: float) -> bool:
    """_equal in a helper; on timeout or any failure the helper is killed and replaced, and it is
    False."""
    with _SLOTS:
        with _IDLE_LOCK:
            h = _IDLE.pop() if _IDLE else _Helper()
        try:
            ok = h.ask(pred, gold, timeout_s)
        except Exception:
            h.proc.kill()
            h.proc.wait()
            # start the replacement now so that it is warm for the next call
            h, ok = _Helper(), False
        with _IDLE_LOCK:
            _IDLE.append(h)
        return ok


def _serve() -> None:
    """The helper's loop; memory is capped so that a runaway expression cannot take the host down."""
    import logging
    logging.disable(logging.CRITICAL)  # Math-Verify logs every unparsable answer
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    _equal("x+1", "1+x")  # import Math-Verify and warm its parsers before announcing readiness
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        # backstop: a helper whose caller vanished mid-check must not compute forever
        signal.alarm(60)
        try:
            ok = _equal(*json.loads(line))
        except Exception:
            ok = False
        signal.alarm(0)
        out.write(b"1\n" if ok else b"0\n")
        out.flush()


_INT = re.compile(r"\s*(?:\$?\\boxed\{\s*(-?\d{1,50})\s*\}\$?|(-?\d{1,50}))\s*")


def math_equal(pred: str, gold: str, timeout_s: float = 3.0) -> bool:
    """Whether pred (an answer or a whole response) is equivalent to gold; never raises or hangs. An
    integer (alone or alone in a box) against an integer gold is decided here, as Math-Verify would."""
    if pred is None or gold is None or not str(pred).strip() or not str(gold).strip():
        return False
    a, b = _INT.fullmatch(str(pred)), _INT.fullmatch(str(gold))
    if a and b:
        return int(a.group(1) or a.group(2)) == int(b.group(1) or b.group(2))
    return _ask(str(pred), str(gold), timeout_s)


def math_reward(response: str, gold: str, correct: float = 1.0, wrong: float = -1.0, no_close_think=-0.5,
                no_open_think: float = -2.0, check_think: bool = True) -> float:
    """Klear scheme: no <think> -2, no </think> -0.5, else +1 / -1 for the text after the last
    </think>."""
    text, penalty = _after_think(response, check_think, no_close_think, no_open_think)
    if text is None:
        return penalty
    return correct if math_equal(text, str(gold)) else wrong


# --------------------------------------------------------------------------------------- code tests
def extract_code(response: str) -> str | None:
    """The last ```python (or untagged) fenced block after the last </think>."""
    text = response.rsplit("</think>", 1)[-1] if isinstance(response, str) else ""
    blocks = [c for lang, c in re.findall(r"```([^\n`]*)\n(.*?)```", text, re.S)
              if lang.strip().lower() in ("python", "py", "python3", "")]
    return blocks[-1] if blocks and blocks[-1].strip() else None


def _call_test(fn: str, args, out) -> dict:
    """A TACO call-based case (fn_name) as a split call, with the same check as assert code for the
    in-sandbox path: a tuple result compares as a list, a one-element list output may be the bare
    value."""
    args = args if isinstance(args, list) else [args]
    entry = f"Solution().{fn} if 'Solution' in globals() else {fn}"
    legacy = (f"_f = {entry}\n_r = _f(*{args!r})\n_r = list(_r) if isinstance(_r, tuple) else _r\n_o = {out!r}\n"
              "assert _r == _o or (isinstance(_o, list) and len(_o) == 1 and _r == _o[0])\n")
    return {"calls": [f"candidate(*{args!r})"], "checks": [["eq_any", repr(out)]], "entry": entry,
            "functional": legacy}


def _shape(t) -> tuple[ast.AST, list] | None:
    """(call node, check) of one assert's test: candidate(a) == x (either side), is True/False/None,
    not, bare, math.isclose(candidate(a), x, ...), abs(candidate(a) - x) < tol; else None."""
    src = ast.unparse
    uses = lambda n: any(isinstance(x, ast.Name) and x.id == "candidate" for x in ast.walk(n))
    # candidate(...) with no candidate inside its arguments
    is_call = lambda n: (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "candidate"
                         and not any(uses(a) for a in n.args + [k.value for k in n.keywords]))
    if isinstance(t, ast.Compare) and len(t.ops) == 1:
        op, a, b = t.ops[0], t.left, t.comparators[0]
        if isinstance(op, ast.Eq) and is_call(b) and not uses(a):
            a, b = b, a
        if isinstance(op, ast.Eq) and is_call(a) and not uses(b):
            return a, ["eq", src(b)]
        if isinstance(op, ast.Is) and is_call(a) and isinstance(b, ast.Constant) and any(
                b.value is v for v in (True, False, None)):
            return a, ["is", repr(b.value)]
        if (isinstance(op, (ast.Lt, ast.LtE)) and isinstance(a, ast.Call) and src(a.func) == "abs" and len(a.args) == 1
                and isinstance(a.args[0], ast.BinOp) and isinstance(a.args[0].op, ast.Sub)
                and is_call(a.args[0].left) and not uses(a.args[0].right) and not uses(b)):
            return a.args[0].left, ["abs<" if isinstance(op, ast.Lt) else "abs<=", src(a.args[0].right), src(b)]
    if (isinstance(t, ast.Call) and src(t.func) in ("math.isclose", "isclose") and len(t.args) == 2
            and is_call(t.args[0]) and not uses(t.args[1]) and {k.arg for k in t.keywords} <= {"rel_tol", "abs_tol"}
            and not any(uses(k.value) for k in t.keywords)):
        kw = {k.arg: src(k.value) for k in t.keywords}
        return t.args[0], ["isclose", src(t.args[1]), kw.get("rel_tol", "1e-09"), kw.get("abs_tol", "0.0")]
    if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not) and is_call(t.operand):
        return t.operand, ["falsy"]
    return (t, ["truthy"]) if is_call(t) else None


def _check_tests(code: str, entry: str, prefix: str = "", per_assert: bool = True) -> list[dict]:
    """`def check(candidate)` test code: one test per top-level assert (LeetCode layout), else one
    test. If check() holds only asserts, imports and docstrings, asserts of known shapes (_shape)
    also become split calls (setup: the code outside check() and its imports), keeping the assert
    code for the in-sandbox path."""
    call, whole = f"\ncheck({entry})\n", {"functional": f"{code}\ncheck({entry})\n", "prefix": prefix}
    try:
        tree = ast.parse(code)
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    except (SyntaxError, ValueError, StopIteration):
        return [whole]
    # per assert: (call, check) for a known shape, () for `assert True`, None for another shape
    setup, parts = [ast.unparse(n) for n in tree.body if n is not fn], []
    for st in fn.body:
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            setup.append(ast.unparse(st))
        elif isinstance(st, ast.Assert):
            got = () if isinstance(st.test, ast.Constant) and st.test.value is True else _shape(st.test)
            parts.append((ast.unparse(got[0]), got[1]) if got else got)
        elif not isinstance(st, ast.Pass) and not (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)):
            parts = [None]
            break
    spans = [(a.lineno - 1, a.end_lineno) for a in fn.body if isinstance(a, ast.Assert)]
    split = {"entry": entry, "setup": "\n".join(setup)}
    if not per_assert or not spans or any(s1 > t0 for (_, s1), (t0, _) in zip(spans, spans[1:])):
        if None not in parts and any(parts):
            parts = [p for p in parts if p]
            whole.update(calls=[c for c, _ in parts], checks=[k for _, k in parts], **split)
        return [whole]
    lines, tests = code.splitlines(), []
    for k in range(len(spans)):
        drop = {i for j, (t0, t1) in enumerate(spans) if j != k for i in range(t0, t1)}
        tests.append({"functional": "\n".join(x for i, x in enumerate(lines) if i not in drop) + call,
                      "prefix": prefix})
        if len(parts) == len(spans) and parts[k]:
            tests[-1].update(calls=[parts[k][0]], checks=[parts[k][1]], **split)
    return tests


def to_tests(ground_truth) -> list[dict]:
    """sandbox tests from Klear ground truth ({"inputs","outputs"[,"fn_name"]} / {"functional"}, as
    a JSON string or dict), a Klear RL record, a list of tests, or a record of the public code sets
    (TACO, LeetCode, HumanEval). Unreadable input gives []."""
    g, text = ground_truth, lambda x: "\n".join(map(str, x)) if isinstance(x, list) else str(x)
    try:
        g = json.loads(g) if isinstance(g, (str, bytes)) else g
        if isinstance(g, list):
            return [t for t in g if sandbox.valid_test(t)]
        if not isinstance(g, dict):
            return []
        if "reward_model" in g or "ground_truth" in g:
            return to_tests((g.get("reward_model") or g).get("ground_truth"))
        if "test_code" in g and "entry_point" in g:
            return _check_tests(g["test_code"], g["entry_point"], g.get("prompt_prefix", ""))
        if "test" in g and "entry_point" in g:
            return _check_tests(g["test"], g["entry_point"], per_assert=False)
        if "functional" in g:
            f = g["functional"]
            return [{"functional": x} for x in (f if isinstance(f, list) else [f]) if isinstance(x, str)]
        if "inputs" in g and "outputs" in g:
            fn = g.get("fn_name")
            if fn and not str(fn).isidentifier():
                return []
            return [_call_test(fn, i, o) if fn else {"input": text(i), "output": text(o)}
                    for i, o in zip(g["inputs"], g["outputs"])]
        return to_tests(g["tests"]) if "tests" in g else []
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def code_reward(response: str, tests, soft: bool = True, correct: float = 1.0, wrong: float = -1.0,
                no_close_think=-0.5, no_open_think: float = -2.0, check_think: bool = True,
                statuses: Counter | None = None, **run_opts) -> float:
    """Klear code reward: think-tag rules as math_reward; no code block or no tests -> wrong; soft =
    wrong + (correct - wrong) * pass rate, hard = correct only if every sampled test passes."""
    text, penalty = _after_think(response, check_think, no_close_think, no_open_think)
    if text is None:
        return penalty
    code = extract_code(text)
    if code is None or not tests:
        return wrong
    res = run_tests(code, tests, stop_on_fail=not soft, **run_opts)
    if statuses is not None:
        statuses.update([r.status for r in res] + [n for r in res for n in r.notes])
    rate = sum(r.passed for r in res) / max(1, len(res))
    if not soft:
        return correct if res and rate == 1 else wrong
    return wrong + (correct - wrong) * rate


# ------------------------------------------------------------------------------------------ tasks
FUNCTION_PROMPT = ("{problem}\n\nComplete the following Python code. Give the complete solution in one "
                   "```python code block at the end of your answer.\n```python\n{code}\n```")


def _layout(rec: dict, source: str) -> dict:
    """A record of any layout of docs/ALGORITHM.md 5 -> {"messages", "kind", "answer", "tests",
    "source"}; a simple layout's problem is the user message, verbatim. ValueError: not a task."""
    user = lambda text: [{"role": "user", "content": text}]

    def task(messages, kind, answer=None, tests=None) -> dict:
        if kind == "code" and not tests:
            raise ValueError("code record without usable tests (rewards.to_tests found none)")
        return dict(messages=messages, kind=kind, answer=answer, tests=tests,
                    source=rec.get("data_source") or source)
    if isinstance(rec.get("prompt"), list) and isinstance(rec.get("reward_model"), dict):  # Klear
        gt, ability = rec["reward_model"]["ground_truth"], str(rec.get("ability") or "")
        code = "cod" in ability or not ability and (not isinstance(gt, str) or '"inputs"' in gt or '"functional"' in gt)
        return task(rec["prompt"], "code", tests=to_tests(gt)) if code else task(rec["prompt"], "math", str(gt))
    if "problem" in rec and "answer" in rec:  # math: ours, the demo, AIME / MATH-500
        return task(user(str(rec["problem"])), "math", answer=str(rec["answer"]))
    if "problem" in rec and "test_code" in rec and "entry_point" in rec:  # shared leetcode_function
        text = FUNCTION_PROMPT.format(problem=rec["problem"], code=rec.get("starter_code", ""))
        return task(user(text), "code", tests=to_tests(rec))
    if "problem" in rec and "tests" in rec:  # stdin/stdout: ours, the demo, shared taco_stdin
        return task(user(str(rec["problem"])), "code", tests=to_tests(rec["tests"]))
    if "prompt" in rec and "test" in rec and "entry_point" in rec:  # shared HumanEval
        text = FUNCTION_PROMPT.format(problem="Implement this function.", code=rec["prompt"])
        return task(user(text), "code", tests=to_tests(rec))
    raise ValueError("record fits no task layout (Klear prompt+reward_model, problem+answer, problem+tests, "
                     f"...); keys: {sorted(rec)[:12]}")


def load_tasks(path, skip_bad: bool = False) -> list[dict]:
    """Tasks of a JSONL (or .jsonl.gz) file: a bad record raises a ValueError naming file:line (or
    is skipped). `source`: the record's data_source, else the file name."""
    source = Path(path).name.split(".")[0]
    return data.read_jsonl(path, skip_bad, lambda rec: _layout(rec, source))


# ------------------------------------------------------------------------------------------ batches
_MATH_OPTS = ("correct", "wrong", "no_close_think", "no_open_think", "check_think")
_CODE_OPTS = _MATH_OPTS + ("soft", "timeout_s", "memory_mb", "max_tests", "seed", "stop_on_fail", "output_mb")


def _score(response, task: dict, opts: dict, statuses: Counter) -> float:
    if task["kind"] == "math":
        return math_reward(response, task["answer"], **{k: v for k, v in opts.items() if k in _MATH_OPTS})
    if task["kind"] == "code":
        return code_reward(response, task["tests"], statuses=statuses, **opts)
    raise ValueError(f"unknown task kind {task['kind']!r}")


def reward_many(jobs, workers: int = 8, job_timeout_s: float | None = None, statuses: Counter | None = None,
                **opts) -> list[float]:
    """Rewards of (response, task) jobs on at most `workers` threads (sandboxes and math helpers are
    processes). Never raises: a job that raises or outlives job_timeout_s scores `wrong`; its thread
    is abandoned and frees its worker slot (statuses counts 'abandoned job'). statuses also gets
    each code test's status (sandbox.STATUSES). Identical jobs (common once a policy is confident)
    are scored once."""
    if set(opts) - set(_CODE_OPTS):  # a caller's typo must not silently score every job `wrong`
        raise TypeError(f"reward_many: unknown options {sorted(set(opts) - set(_CODE_OPTS))}")
    everyone = list(jobs)
    keys = [json.dumps(job, sort_keys=True, default=str) for job in everyone]
    distinct, copies, wrong = {}, Counter(keys), float(opts.get("wrong", -1.0))
    for k, job in zip(keys, everyone):
        distinct.setdefault(k, job)
    if job_timeout_s is None:
        job_timeout_s = (opts.get("max_tests") or 16) * (opts.get("timeout_s", 10.0) + 2) + 60
    # distinct jobs start in first-seen order
    scores, done, running, todo = dict.fromkeys(distinct, wrong), queue.Queue(), {}, deque(distinct)

    def work(k: str) -> None:
        seen = Counter()
        try:
            done.put((k, float(_score(distinct[k][0], distinct[k][1], opts, seen)), seen))
        except Exception:
            done.put((k, wrong, seen))

    while todo or running:
        while todo and len(running) < max(1, workers):
            k = todo.popleft()
            running[k] = time.monotonic() + job_timeout_s
            threading.Thread(target=work, args=(k,), daemon=True).start()
        try:
            k, s, seen = done.get(timeout=max(0.0, min(running.values()) - time.monotonic()))
            if running.pop(k, None) is not None:
                scores[k] = s
                if statuses is not None:
                    statuses.update({st: c * copies[k] for st, c in seen.items()})
        except queue.Empty:
            for k in [k for k, t in running.items() if t <= time.monotonic()]:
                running.pop(k)
                if statuses is not None:
                    statuses["abandoned job"] += copies[k]
    return [scores[k] for k in keys]


def check_sandbox(statuses: Counter) -> None:
    """Raise RuntimeError when more than half of the counted code tests ended in 'sandbox error':
    the sandbox cannot run programs here, and every code sample would score `wrong` for that alone."""
    total = sum(statuses[s] for s in sandbox.STATUSES if s != "skipped")
    bad = statuses["sandbox error"]
    if total and 2 * bad > total:
        probe = run_tests("print(1)", [{"input": "", "output": "1"}], timeout_s=10.0)[0]
        raise RuntimeError(f"sandbox: {bad} of {total} code tests ended in 'sandbox error' ({sandbox.sandbox_info()}"
                           f"); a probe program print(1) gave status {probe.status!r}: {probe.detail[-600:]!r}")


def filter_problems(problems, min_tests: int = 16, workers: int = 8, **run_opts) -> tuple[list, dict]:
    """Keep problems with >= min_tests tests that their reference solution (solution, or prompt +
    canonical_solution), when present, passes. Report: total, kept, dropped per reason, unverified
    (kept, no reference solution), and (index, reason, detail) per dropped problem in
    'dropped_list'."""
    problems = list(problems)
    run_opts.setdefault("max_tests", 0)

    def why(p) -> tuple[str | None, str]:
        tests = to_tests(p)
        if len(tests) < min_tests:
            return "too few tests", f"{len(tests)} < {min_tests}"
        p = p if isinstance(p, dict) else {}
        sol = p.get("solution")
        if not isinstance(sol, str) and isinstance(p.get("canonical_solution"), str):
            sol = p.get("prompt", "") + p["canonical_solution"]
        if not isinstance(sol, str):
            return "unverified", ""
        bad = Counter(r.status for r in run_tests(sol, tests, **run_opts) if not r.passed)
        return ("reference fails", f"{sum(bad.values())} of {len(tests)} tests: " + ", ".join(
            f"{n} {s}" for s, n in bad.most_common())) if bad else (None, "")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(why, problems))
    kept = [p for p, (r, _) in zip(problems, reasons) if r in (None, "unverified")]
    dropped = Counter(r for r, _ in reasons if r not in (None, "unverified"))
    listed = [(i, r, d) for i, (r, d) in enumerate(reasons) if r in dropped]
    return kept, {"total": len(problems), "kept": len(kept), "dropped": dict(dropped),
                  "unverified": sum(r == "unverified" for r, _ in reasons), "dropped_list": listed}


def _filter_cli(a: argparse.Namespace) -> None:
    """--filter: keep the good problems of a JSONL file in --out, print what was dropped and why."""
    problems = []
    with open(a.filter) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    problems.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    sys.exit(f"{a.filter}:{n}: not a JSON line ({e.msg})")
    kept, report = filter_problems([p for _, p in problems], a.min_tests, a.workers, timeout_s=a.timeout)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in kept)
    for i, reason, detail in report.pop("dropped_list"):
        n, p = problems[i]
        name = next((f" ({p[k]})" for k in ("id", "question_id", "task_id") if k in p), "") if isinstance(
            p, dict) else ""
        print(f"dropped {a.filter}:{n}{name}: {reason} ({detail})")
    print(json.dumps(report), f"-> {a.out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Rewards; --filter drops faulty code problems (docs/ALGORITHM.md 4).")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # math helper process
    ap.add_argument("--filter", metavar="DATA.jsonl", help="code problems, one JSON object a line")
    ap.add_argument("--out", metavar="CLEAN.jsonl", help="where the kept problems go")
    ap.add_argument("--min-tests", type=int, default=16, help="drop problems with fewer tests (recipe: 16)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="problems checked at once")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-test time limit (s)")
    args = ap.parse_args()
    if args.serve:
        _serve()
    elif args.filter and args.out:
        _filter_cli(args)
    else:
        ap.error("use --filter DATA.jsonl --out CLEAN.jsonl")
