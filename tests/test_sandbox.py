"""Tests for sandbox.py: outcomes, hostile programs, the fallback without privileges, bad records, the declared
package set, a broken sandbox, and every shared reference solution through the reward path."""
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import need_shared

import rewards
import sandbox

ADD = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in ((1, 2), (5, 7), (-3, 3), (10, 20))]


def py(code: str) -> str:
    return f"<think>let me think</think>\nHere is the program.\n```python\n{code}\n```\n"


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


# ----------------------------------------------------------------------------------------------- outcomes


def test_four_basic_outcomes():
    t = [ADD[0]]
    runs = {"pass": "a, b = map(int, input().split())\nprint(a + b)", "wrong answer": "print(4)",
            "runtime error": "raise ValueError('boom')", "timeout": "while True:\n    pass"}
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(runs, pool.map(lambda c: sandbox.run_tests(c, t, timeout_s=1.5)[0], runs.values())))
    for status, res in got.items():
        assert res.status == status and res.passed == (status == "pass"), (status, res)
    assert "boom" in got["runtime error"].detail


def test_output_comparison():
    same = sandbox.same_output
    assert same("3 \n4\n\n", "3\n4") and same("1  2", "1 2") and same("0.3333333", "0.333333")
    assert not same("1\n2", "1 2") and not same("0.3334", "0.3333") and not same("10", "10.5")
    assert not same("1000000000000000001", "1000000000000000000") and not same("", "0")


def test_fallback_without_privileges(monkeypatch):
    """Where neither uid switching nor namespaces are available the audit hook is the guard; check it bites."""
    child = sandbox._jail()["child"]
    monkeypatch.setattr(sandbox, "_jail", lambda: {"root": False, "prefix": [], "keeper": None, "view": None,
                                                   "child": child})
    ok = "import sortedcontainers\na, b = map(int, input().split())\nprint(sum(sortedcontainers.SortedList([a, b])))"
    runs = [ok, "import socket\nsocket.socket()", "import os\nos.fork()", "import os\nos.kill(os.getpid(), 0)",
            "import subprocess\nsubprocess.run(['true'])", "open('/tmp/rewards-fallback-test', 'w')"]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda c: sandbox.run_tests(c, [ADD[0]], timeout_s=5)[0], runs))
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
        return sandbox.run_tests(code, tests, timeout_s=limit)[0], time.monotonic() - t

    with ThreadPoolExecutor(len(programs)) as pool:
        results = dict(zip(programs, pool.map(run, programs.values())))
    view = sandbox._jail()["view"]
    sandboxes = Path(view["work"]) if view else sandboxes  # the tests' folders live there when it exists
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


def test_bad_records_give_defined_results():
    res = sandbox.run_tests("print(1)", [{"foo": 1}, {"input": 5, "output": "1"}, None, "str", {"functional": 3}])
    assert [r.status for r in res] == ["sandbox error"] * 5 and not any(r.passed for r in res)
    assert sandbox.run_tests("print(1)", "not a list") == [] and sandbox.run_tests("print(1)", None) == []
    bytes_out = sandbox.run_tests("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\n')", [ADD[0]], timeout_s=5)
    assert bytes_out[0].status == "wrong answer"


def test_declared_packages_import_inside():
    """Each of sandbox.PACKAGES imports in the sandbox (they come with requirements.txt, not with the host)."""
    reqs = open(os.path.join(os.path.dirname(sandbox.__file__), "requirements.txt")).read()
    assert sandbox.PACKAGES and all(f"\n{name}==" in reqs for name in sandbox.PACKAGES), "pin them in requirements.txt"
    code = f"import importlib\nfor m in {sandbox.PACKAGES!r}:\n    importlib.import_module(m)\nprint('ok')"
    res = sandbox.run_tests(code, [{"input": "", "output": "ok"}], timeout_s=10)[0]
    assert res.passed, res
    missing = sandbox.run_tests("import not_a_declared_package_xyz", [ADD[0]], timeout_s=10)[0]
    assert missing.status == "runtime error" and "ModuleNotFoundError" in missing.detail


def test_broken_sandbox_is_a_sandbox_error(monkeypatch):
    """The child's module missing (a broken install) gives 'sandbox error' for every test, never 'wrong answer'."""
    monkeypatch.setattr(sandbox, "_BOOT", "import sys; sys.path.insert(0, '/nonexistent'); import sandbox")
    res = sandbox.run_tests("print(1)", [{"input": "", "output": "1"}, {"functional": "assert 1"}], timeout_s=5)
    assert [r.status for r in res] == ["sandbox error"] * 2 and "No module named" in res[0].detail


# ----------------------------------------------------------------------------------------------- split function tests

SPLIT = rewards.to_tests({"test_code": "def check(candidate):\n    assert candidate(3, 4) == 7\n"
                          "    assert candidate(10, 5) == 15\n    assert not candidate(-1, 1)\n",
                          "entry_point": "add", "prompt_prefix": ""})
FORGERS = {  # name: program that tries to pass `add` without adding
    "always-equal result": "class AnyEq:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                           "def add(a, b):\n    return AnyEq()",
    "frames walked, every string found written to every fd, exit 0":
        "import os, sys\nfound = []\nf = sys._getframe()\nwhile f:\n"
        "    found += [v for d in (f.f_locals, f.f_globals) for v in d.values() if isinstance(v, (str, bytes))]\n"
        "    f = f.f_back\nblob = '\\n'.join(x if isinstance(x, str) else x.decode('latin1') for x in found)\n"
        "for fd in range(1, 64):\n    try:\n        os.write(fd, blob.encode() + b'\\n=True\\n')\n    except OSError:\n"
        "        pass\nos._exit(0)",
    "__eq__ raises": "class R:\n    def __eq__(self, o):\n        raise AssertionError\ndef add(a, b):\n    return R()",
    "__class__ spoofing": "class Fake:\n    __class__ = int\n    def __eq__(self, o):\n        return True\n"
                          "def add(a, b):\n    return Fake()",
    "float subclass with a lying __eq__": "class F(float):\n    def __eq__(self, o):\n        return True\n"
                                          "def add(a, b):\n    return F(0.0)",
    "fake result lines, exit 0": "import os\nfor fd in range(1, 64):\n    try:\n"
                                 "        os.write(fd, b'=True\\n' * 3)\n    except OSError:\n        pass\n"
                                 "os._exit(0)",
    "kills the parent's reader": "import os\nfor pid in (os.getppid(), -1, 1):\n    try:\n        os.kill(pid, 9)\n"
                                 "    except OSError:\n        pass\ndef add(a, b):\n    return 1",
    "result too large to encode": "def add(a, b):\n    return ['x' * 1000] * 20000",
    "patched builtins": "import builtins\nclass AnyEq:\n    def __eq__(self, o):\n        return True\n"
                        "builtins.type = lambda x: int\nbuiltins.repr = lambda x: '7'\nbuiltins.isinstance = "
                        "lambda *a: True\ndef add(a, b):\n    return AnyEq()",
}


def test_split_tests_cannot_be_forged():
    """Expected values never enter the sandbox and results come back as plain data: every forger scores 0 on
    every split test, while the honest program scores 1."""
    assert len(SPLIT) == 3 and all("calls" in t for t in SPLIT)
    assert rewards.code_reward(py("def add(a, b):\n    return a + b"), SPLIT, timeout_s=5) == 1.0
    sentinel = subprocess.Popen(["sleep", "60"])
    with ThreadPoolExecutor(3) as pool:
        got = dict(zip(FORGERS, pool.map(lambda c: sandbox.run_tests(c, SPLIT, timeout_s=5), FORGERS.values())))
    for name, res in got.items():
        assert not any(r.passed for r in res), (name, res)
        assert all(r.status in ("wrong answer", "runtime error", "output limit") for r in res), (name, res)
    assert "has no plain value" in got["always-equal result"][0].detail
    assert sentinel.poll() is None
    sentinel.kill()
    sentinel.wait()


def test_literal_encoding_is_type_exact():
    enc = sandbox._encoder(1 << 20)
    values = [0, -7, 2**80, 1.5, -0.0, float("inf"), float("-inf"), 1e-300, 2 - 3j, "", "a'\"\n\x00é", b"\xff",
              True, False, None, [], (), (1,), [1, [2, (3, {4: "x"})]], {1: 2, "k": None, (1, 2): [3]}, set(),
              {1, 2.5}, frozenset(), frozenset({"a"}), {"t": (True, 1, 1.0)}]
    for v in values:
        back = sandbox.literal(enc(v))
        assert back == v and repr(back) == repr(v) and type(back) is type(v), (v, back)
    assert repr(sandbox.literal(enc(float("nan")))) == "nan"
    assert type(sandbox.literal(enc([True, 1, 1.0]))[0]) is bool  # a tuple stays a tuple, True stays a bool
    for bad in (type("I", (int,), {})(3), object(), [1, object()], {1: range(3)}, ["x" * 600_000] * 2):
        with pytest.raises((TypeError, ValueError)):
            enc(bad)
    for text in ("__import__('os')", "float('1e3')", "[x]", "(1).real", "f(1)", "1 + 2", "{**a}", "lambda: 1"):
        with pytest.raises((ValueError, SyntaxError)):
            sandbox.literal(text)


def test_expected_values_need_no_program_and_odd_shapes_stay_in_the_sandbox():
    """Non-literal expectations are evaluated once by a child that never runs the program; an assert of another
    shape runs in the sandbox and is counted as such."""
    prefix = "def sq_list(n):\n    return [i * i for i in range(n)]\n"
    tests = rewards.to_tests({"test_code": "def check(candidate):\n    assert candidate(4) == sq_list(4)\n"
                              "    assert sorted(candidate(3)) == [0, 1, 4]\n", "entry_point": "f",
                              "prompt_prefix": prefix})
    assert "calls" in tests[0] and "calls" not in tests[1]
    code = "def f(n):\n    return [i * i for i in range(n)]"
    seen = Counter()
    assert rewards.code_reward(py(code), tests, statuses=seen, timeout_s=5) == 1.0
    assert seen == Counter({"pass": 2, "in-sandbox verdict": 1}), seen
    assert sandbox._EXPECT[(prefix, "", "sq_list(4)")] == ("ok", [0, 1, 4, 9])


# ----------------------------------------------------------------------------------------------- private filesystem

PEEK = """import os, sys
for p in sys.argv[1:] or {paths!r}:
    try:
        got = os.listdir(p) if os.path.isdir(p) else open(p).read(1)
        print(p, 'read', len(got))
    except OSError:
        print(p, 'refused')
"""


def test_private_filesystem_view():
    """Open or list the project folder, its parent, a 0644 file outside the sandbox folder, /etc/passwd, /home,
    /root and this process's /proc entries: all fail inside, all succeed outside (so the test can fail)."""
    if not sandbox._jail()["view"]:
        pytest.skip("no private filesystem view here (needs root and mount namespaces): " + sandbox.sandbox_info())
    shared = Path(tempfile.mkdtemp(prefix="rewards-view-"))  # in /tmp: world-readable on the host, like RL data
    shared.chmod(0o755)
    secret = shared / "expected_output.txt"
    secret.write_text("42\n")
    secret.chmod(0o644)
    root = Path(sandbox.__file__).resolve().parent
    paths = [str(root), str(root / "sandbox.py"), str(root.parent), str(secret), "/etc/passwd", "/home", "/root",
             f"/proc/{os.getpid()}/status", f"/proc/{os.getpid()}/cwd"]
    code = PEEK.format(paths=paths)
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert outside.count(" read ") == len(paths), outside
    res = sandbox.run_tests(code, [{"input": "", "output": "\n".join(f"{p} refused" for p in paths)}], timeout_s=10)
    shutil.rmtree(shared)
    assert res[0].passed and not res[0].notes, res  # every attempt refused inside


def test_without_mount_namespaces_the_fallback_says_so(monkeypatch, capfd):
    """Where the private view cannot be built, children still run (pid/net namespaces, uid switch), one line
    says so, and every test counts 'no private filesystem'."""
    if not sandbox._jail()["view"]:
        pytest.skip("no private filesystem view to lose here")
    monkeypatch.setattr(sandbox, "_JAIL", {})
    monkeypatch.setattr(sandbox, "_view_script", lambda root, work: "echo 'mount: permission denied' >&2; exit 1")
    res = sandbox.run_tests("print(input())", [{"input": "1\n", "output": "1"}] * 2, timeout_s=10)
    assert [r.status for r in res] == ["pass"] * 2 and all(r.notes == ("no private filesystem",) for r in res)
    assert capfd.readouterr().err.count("sandbox: no private filesystem view (mount namespace refused: mount: "
                                        "permission denied)") == 1
    jail = sandbox._jail()
    assert jail["prefix"] and jail["view"] is None
    jail["keeper"].kill()  # this stand-in jail goes with the test; the module's own one comes back
    os.remove(jail["child"])


def test_a_process_with_many_open_files_still_judges():
    """A long training process can hold over 1,024 files; select() cannot wait on such fds, poll() can."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while (fd := os.open(os.devnull, os.O_RDONLY)) < 1100:  # the next pipes get fds above 1024
            held.append(fd)
        held.append(fd)
        results = sandbox.run_tests("a, b = map(int, input().split())\nprint(a + b)", ADD[:2], timeout_s=10)
        assert [r.status for r in results] == ["pass", "pass"], [r.detail for r in results]
        while rewards._IDLE:  # a fresh math helper, whose pipes are above 1024 too
            rewards._IDLE.pop().proc.kill()
        assert rewards.math_equal("\\frac{1}{2}", "0.5", timeout_s=60) is True
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_without_pidfd_the_wait_falls_back(monkeypatch):
    """Some Python builds (conda's, PyPy) lack os.pidfd_open even on new kernels: tests still run, and
    a timed-out child is still killed. readable() takes any timeout select() took."""
    monkeypatch.delattr(os, "pidfd_open")
    prog = "a, b = map(int, input().split())\nprint(a + b)"
    assert [r.status for r in sandbox.run_tests(prog, ADD[:2], timeout_s=10)] == ["pass", "pass"]
    assert sandbox.run_tests("while True:\n    pass", ADD[:1], timeout_s=1)[0].status == "timeout"
    r, w = os.pipe()
    try:
        assert not sandbox.readable(r, 0.01)
        os.write(w, b"x")
        assert sandbox.readable(r, 1e10) and sandbox.readable(r, None)
    finally:
        os.close(r)
        os.close(w)


def test_timed_out_tests_leave_no_zombies(tmp_path):
    """A trainer that is a container's pid 1 (or a subreaper) reaps no orphans: killing a timed-out test
    must not leave its pid namespace's init behind as a zombie (which would also hold one of the sandbox
    uid's 64 processes)."""
    if not sandbox._jail()["prefix"]:
        pytest.skip("no pid namespace here (needs root and unshare)")
    script = tmp_path / "reaper.py"
    script.write_text(f"""import ctypes, glob, os, sys, time
sys.path.insert(0, {str(Path(sandbox.__file__).parent)!r})
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to pid 1
import sandbox
for code in ("while True:\\n    pass", "import time\\ntime.sleep(60)", "import os, time\\nos.fork()\\ntime.sleep(60)"):
    res = sandbox.run_tests(code, [{{"input": "", "output": "x\\n"}}] * 3, timeout_s=0.5)
    assert [r.status for r in res] == ["timeout"] * 3, [(r.status, r.detail) for r in res]
time.sleep(0.5)
zombies = 0
for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
        state, ppid = open(stat).read().rsplit(")", 1)[1].split()[:2]
    except OSError:
        continue
    zombies += state == "Z" and int(ppid) == os.getpid()
print("zombies", zombies)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "zombies 0", (out.stdout, out.stderr[-2000:])
